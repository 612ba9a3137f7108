//! Shared helpers for the XTS/LUKS integration tests: locating external oracles (qemu-img,
//! cryptsetup, the Python venv) with the project's skip-or-panic rule, and test data.
//! (Compiled on its own as an empty test target too; the `mod xts_support;` users include it.)
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The missing-oracle rule: panic when `IMGPIPE_REQUIRE_ORACLES=1` (CI), else print a skip line
/// and return `None`.
pub fn missing(what: &str, test: &str) -> Option<PathBuf> {
    if std::env::var("IMGPIPE_REQUIRE_ORACLES").as_deref() == Ok("1") {
        panic!("{test}: required oracle {what} is missing (IMGPIPE_REQUIRE_ORACLES=1)");
    }
    eprintln!("SKIP {test}: oracle {what} not available");
    None
}

/// Finds an executable on PATH (also /usr/sbin and /sbin, where cryptsetup lives).
pub fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path.split(':').chain(["/usr/sbin", "/sbin", "/usr/bin"]) {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    missing(name, test)
}

/// The oracle Python (`IMGPIPE_ORACLE_PYTHON`, else `<root>/.venv/bin/python`) if it can import
/// `cryptography`.
pub fn python_with_cryptography(test: &str) -> Option<PathBuf> {
    let py = std::env::var_os("IMGPIPE_ORACLE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let ok = Command::new(&py)
        .args(["-c", "import cryptography.hazmat.primitives.ciphers"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        Some(py)
    } else {
        missing("python venv with `cryptography`", test)
    }
}

/// Path of an oracle script under tests/oracles/.
pub fn oracle_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/oracles")
        .join(name)
}

/// Runs a command, panicking with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Deterministic pseudo-random bytes (xorshift), with some all-zero and repeated sectors so
/// that "zeros stay zeros" and "equal sectors encrypt equally" bugs would show.
pub fn test_data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    for (i, chunk) in v.chunks_mut(512).enumerate() {
        match i % 7 {
            3 => chunk.fill(0),
            5 => chunk.fill(0x42),
            _ => {}
        }
    }
    v
}

/// Random key bytes from OpenSSL.
pub fn random_key(len: usize) -> Vec<u8> {
    let mut k = vec![0u8; len];
    openssl::rand::rand_bytes(&mut k).unwrap();
    k
}
