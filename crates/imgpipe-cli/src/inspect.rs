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

/// `imgpipe info`: what `qemu-img info` reports (file name, format, virtual size, image and
/// allocated size) plus imgpipe's verdict, from the same single read as `inspect`; the image is
/// never opened by anything else, and nothing it names is followed.
pub async fn info(input: &str, json: bool) -> i32 {
    let spec = Spec::new(crate::source_of(input));
    let v = match imgpipe::inspect(&spec, Arc::new(Progress::default())).await {
        Ok(v) => v,
        Err(e) => return failed(json, e.kind().name(), &e.to_string(), e.kind().exit_code()),
    };
    let meta = std::fs::metadata(input).ok().filter(|m| m.is_file());
    let image_size = meta.as_ref().map(|m| m.len());
    let actual_size = meta
        .as_ref()
        .map(|m| std::os::unix::fs::MetadataExt::blocks(m) * 512);
    let name = crate::shown(input);
    if json {
        outln!(
            "{:#}",
            serde_json::json!({
                "filename": name,
                "format": v.format.name(),
                "virtual-size": v.virtual_size,
                "image-size": image_size,
                "actual-size": actual_size,
                "imgpipe": imgpipe::verdict_json(&v),
            })
        );
    } else {
        outln!("image: {name}");
        outln!(
            "file format: {}{}",
            v.format,
            v.subformat.map(|s| format!(" ({s})")).unwrap_or_default()
        );
        match v.virtual_size {
            Some(vs) => outln!("virtual size: {} ({vs} bytes)", human(vs)),
            None => outln!("virtual size: unknown"),
        }
        if let Some(n) = image_size {
            outln!("image size: {} ({n} bytes)", human(n));
        }
        if let Some(n) = actual_size {
            outln!("disk size: {}", human(n));
        }
        if v.is_safe() {
            outln!("safe: yes (decided after {} bytes)", v.bytes_examined);
        }
        for x in &v.violations {
            outln!("REJECTED {}: {}", x.check, x.message);
        }
    }
    if v.is_safe() { 0 } else { 3 }
}

/// Binary units as qemu-img prints them (`1 GiB`, `512 KiB`).
fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 {
        format!("{v} {}", UNITS[u])
    } else {
        format!("{v:.3} {}", UNITS[u])
    }
}
