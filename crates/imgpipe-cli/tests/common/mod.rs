//! Helpers shared by the CLI's end-to-end tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// The digest of `data` by coreutils `<algo>sum` (md5, sha1, sha224 … sha512): the outside
/// reference, not imgpipe's own hasher.
pub fn coreutils_sum(algo: &str, data: &[u8]) -> String {
    let tool = format!("{algo}sum");
    let mut c = Command::new(&tool)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    c.stdin.take().unwrap().write_all(data).unwrap();
    first_word(&tool, c.wait_with_output().unwrap())
}

/// The digest of a file by coreutils `<algo>sum`.
pub fn coreutils_sum_file(algo: &str, path: &Path) -> String {
    let tool = format!("{algo}sum");
    let out = Command::new(&tool)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    first_word(&tool, out)
}

fn first_word(tool: &str, out: std::process::Output) -> String {
    assert!(out.status.success(), "{tool} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
