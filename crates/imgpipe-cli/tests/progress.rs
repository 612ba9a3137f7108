//! `--progress json`: machine-readable progress on stderr (a pipe here, not a terminal), one
//! JSON object per line, ending with `"stage": "done"` and the final counters; the report stays
//! alone on stdout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn progress_json_lines_end_with_done_and_the_final_counters() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("img.raw");
    let len = 512u64 << 20;
    // A sparse 512 MiB raw image: cheap to create, read and hashed in full.
    std::fs::File::create(&src).unwrap().set_len(len).unwrap();
    let spec = dir.path().join("s.toml");
    std::fs::write(
        &spec,
        format!(
            "[source]\npath = {:?}\n[verify]\nreport = [\"sha512\", \"sha256\", \"md5\"]\n\
             [sink]\npath = {:?}\n",
            src.display().to_string(),
            dir.path().join("disk.raw").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imgpipe"))
        .args(["run", "--json", "--progress", "json"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "ok");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(events.len() >= 3, "fewer than 3 progress lines: {stderr}");
    let order = ["preparing", "streaming", "finishing", "done"];
    let rank = |e: &serde_json::Value| {
        order
            .iter()
            .position(|p| e["stage"] == *p)
            .unwrap_or_else(|| panic!("unknown phase {e}"))
    };
    for w in events.windows(2) {
        assert!(rank(&w[0]) <= rank(&w[1]), "{stderr}");
    }
    let last = events.last().unwrap();
    assert_eq!(last["stage"], "done", "{stderr}");
    assert!(last["bytes_per_second"].as_f64().unwrap() > 0.0, "{stderr}");
    assert_eq!(last["bytes_read"], len);
    assert_eq!(last["total"], len);
    assert_eq!(last["cancelled"], false);
}
