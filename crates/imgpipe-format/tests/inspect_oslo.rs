//! Differential test against the real oslo.utils `format_inspector` (the inspector Glance, Nova
//! and Cinder run), over the whole corpus. Agreement is required everywhere except the cases
//! annotated with a documented deliberate difference (docs/security.md, "Deliberate differences
//! from oslo.utils"); for those the test asserts that the outcomes really differ.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "support/inspect_corpus.rs"]
mod corpus;

use std::path::PathBuf;
use std::process::Command;

use imgpipe_format::Format;
use imgpipe_format::inspect::{Policy, Verdict};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn oracle_python() -> Option<PathBuf> {
    let py = std::env::var_os("IMGPIPE_ORACLE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let ok = Command::new(&py)
        .args(["-c", "import oslo_utils.imageutils.format_inspector"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if corpus::require_oracles() {
            panic!("oslo.utils oracle venv missing at {py:?} (IMGPIPE_REQUIRE_ORACLES=1)");
        }
        eprintln!("SKIP: oslo.utils venv not found at {py:?}");
        return None;
    }
    Some(py)
}

/// How oslo names what we found: a partitioned raw disk is oslo's "gpt" inspector.
fn our_name(v: &Verdict) -> String {
    match (v.format, v.partition_table) {
        (Format::Raw, Some(_)) => "gpt".into(),
        (f, _) => f.name().into(),
    }
}

#[test]
fn oslo_utils_agrees_except_documented_differences() {
    let Some(py) = oracle_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(cases) = corpus::build(dir.path()) else {
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oracles/oslo_inspect.py");
    let mut cmd = Command::new(&py);
    cmd.arg(&script);
    for c in &cases {
        cmd.arg(&c.path);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let oslo: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let doc = std::fs::read_to_string(workspace_root().join("docs/security.md")).unwrap();

    let mut problems = Vec::new();
    let mut differ = 0;
    for c in &cases {
        let o = &oslo[c.path.to_str().unwrap()];
        let (_, v) = corpus::inspect_file(&c.path, Policy::default(), 65536);
        let o_name = o["format"].as_str().unwrap_or("-").to_string();
        let o_outcome = o["outcome"].as_str().unwrap().to_string();
        let o_size = o["virtual_size"].as_u64().unwrap_or(0);
        // Both refuse, or both accept the same format with the same virtual size. Sizes are
        // compared for header formats; raw/ISO/LUKS sizes are stream lengths (oslo reports the
        // bytes it read, qemu and imgpipe whole sectors; oslo's ISO size is the PVD's).
        let size_ok = !matches!(
            v.format,
            Format::Qcow2 | Format::Vmdk | Format::Vhd | Format::Vhdx | Format::Vdi
        ) || v.virtual_size == Some(o_size);
        let agree = match (v.is_safe(), o_outcome.as_str()) {
            (false, "rejected") => true,
            (true, "accepted") => our_name(&v) == o_name && size_ok,
            _ => false,
        };
        let o_safe = o_outcome.as_str();
        let line = format!(
            "{}: imgpipe {} safe={} size={:?} {:?} | oslo {} {} size={} failures={} error={}",
            c.name,
            our_name(&v),
            v.is_safe(),
            v.virtual_size,
            v.violations.iter().map(|x| x.check).collect::<Vec<_>>(),
            o_name,
            o_safe,
            o_size,
            o["failures"],
            o["error"],
        );
        eprintln!("{line}");
        match c.oslo_diff {
            None if !agree => problems.push(format!("unexpected difference: {line}")),
            Some(key) if agree => {
                problems.push(format!("documented difference {key} did not occur: {line}"))
            }
            Some(key) if !doc.contains(&format!("`{key}`")) => problems.push(format!(
                "difference {key} is not documented in docs/security.md"
            )),
            Some(_) => differ += 1,
            None => {}
        }
    }
    eprintln!("{} cases, {differ} documented differences", cases.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
