//! `imgpipe inspect`: the inspector alone over a file, URL or stdin.

use std::sync::Arc;

use imgpipe::format::Format;
use imgpipe::{Progress, Spec};

/// A failure before any verdict: on stderr, and as a JSON object on stdout with `--json`
/// (`status` "error", `kind`, `reason`), so a JSON reader always gets one object.
fn failed(json: bool, kind: &str, msg: &str, code: i32) -> i32 {
    if json {
        outln!(
            "{:#}",
            serde_json::json!({"status": "error", "kind": kind, "reason": msg})
        );
    }
    errln!("imgpipe inspect: {msg}");
    code
}

/// Run the inspector; exit 0 accepted, 3 rejected, 2 usage, 1 I/O.
pub async fn run(
    input: &str,
    json: bool,
    expect: Option<String>,
    allow: Option<Vec<String>>,
    max_virtual_size: Option<String>,
) -> i32 {
    let mut spec = Spec::new(crate::source_of(input));
    if let Some(e) = expect {
        match e.parse::<Format>() {
            Ok(f) => spec.inspect.disk_format = Some(f),
            Err(err) => return failed(json, "spec", &err.to_string(), 2),
        }
    }
    if let Some(list) = allow {
        let mut v = Vec::new();
        for f in list {
            match f.parse::<Format>() {
                Ok(f) => v.push(f),
                Err(err) => return failed(json, "spec", &err.to_string(), 2),
            }
        }
        spec.inspect.allowed_formats = Some(v);
    }
    if let Some(m) = max_virtual_size {
        match imgpipe::spec::parse_size(&m) {
            Ok(n) => spec.inspect.max_virtual_size = Some(n),
            Err(err) => return failed(json, "spec", &err, 2),
        }
    }
    let v = match imgpipe::inspect(&spec, Arc::new(Progress::default())).await {
        Ok(v) => v,
        Err(e) => return failed(json, e.kind().name(), &e.to_string(), e.kind().exit_code()),
    };
    if json {
        let obj = imgpipe::verdict_json(&v);
        outln!("{obj:#}");
    } else {
        let sub = v.subformat.map(|s| format!(" ({s})")).unwrap_or_default();
        let vs = v
            .virtual_size
            .map(|s| format!(", virtual size {s} bytes"))
            .unwrap_or_default();
        outln!("{}: {}{sub}{vs}", crate::shown(input), v.format);
        if v.is_safe() {
            outln!("safe: yes (decided after {} bytes)", v.bytes_examined);
        }
        for x in &v.violations {
            outln!("REJECTED {}: {}", x.check, x.message);
        }
    }
    if v.is_safe() { 0 } else { 3 }
}
