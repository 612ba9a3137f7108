//! Locating the oracle venv (cursive, castellan, cryptography, glanceclient) for the signature
//! and multihash differential tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn require() -> bool {
    std::env::var("IMGPIPE_REQUIRE_ORACLES").is_ok_and(|v| v == "1")
}

/// Skip (or, under `IMGPIPE_REQUIRE_ORACLES=1`, fail) because an oracle is unavailable.
pub fn unavailable(what: &str) -> Option<PathBuf> {
    if require() {
        panic!("oracle unavailable and IMGPIPE_REQUIRE_ORACLES=1: {what}");
    }
    eprintln!("SKIP: {what}");
    None
}

/// The oracle Python (`IMGPIPE_ORACLE_PYTHON`, else `<workspace>/.venv/bin/python`), if it
/// can import every module in `modules`.
pub fn oracle_python(modules: &[&str]) -> Option<PathBuf> {
    let python = std::env::var_os("IMGPIPE_ORACLE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    if !python.exists() {
        return unavailable(&format!(
            "{} not found (run scripts/oracle-venv.sh or set IMGPIPE_ORACLE_PYTHON)",
            python.display()
        ));
    }
    let import = format!("import {}", modules.join(", "));
    let ok = Command::new(&python)
        .args(["-c", &import])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return unavailable(&format!(
            "{} cannot `{import}` (see scripts/oracle-requirements.txt)",
            python.display()
        ));
    }
    Some(python)
}

/// Run `python args...`, panicking with its output on failure.
pub fn run(python: &Path, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(python)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "oracle failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
