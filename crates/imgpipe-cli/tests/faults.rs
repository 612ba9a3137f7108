//! Fault-injection suite: the real `imgpipe` binary downloads a 4 MiB raw image from the fault
//! HTTP server (`scripts/test-http-server.py --fault MODE`, the one hand-written fake in the
//! test suite: a real server cannot cut, reset, stall or change an answer at a chosen byte)
//! into a file sink and into a real loop block device, with and without an expected digest.
//! Every combination must end within a bounded time, with exit 1 or 3 as the README
//! documents (and the named check), publish nothing (no file at the target and no temporary
//! file left beside it; the device's first MiB untouched or wiped, never the image's), and
//! print no secret (URL user info, query, header token) on stdout or stderr, in the JSON
//! report (file sink) or the human one (block sink).
//!
//! Also through the binary: the spec edges of `source` (zero timeouts, a NUL in a path,
//! reserved headers: exit 2), a wrong `Content-MD5` on a plain URL (exit 3), and the URL
//! redaction of a successful run's report (plain text, not percent-encoded).
//!
//! Loop devices need root and `losetup`; without them the block-sink half is skipped, unless
//! `IMGPIPE_REQUIRE_ORACLES=1` (then it fails). `python3` is required likewise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every secret the runs carry: the URL's password and query, the header token, and the
/// Basic credentials reqwest derives from the user info (base64 of `u:s3cret-pw`).
const SECRETS: &[&str] = &["s3cret", "dTpzM2NyZXQtcHc"];

/// The image size and the fault offset (inside the second chunk, not on a boundary).
const IMAGE_LEN: usize = 4 << 20;
const FAULT_AT: usize = (1 << 20) + 12345;

/// Wall-time bound of one run (the spec's deadline is 6 s).
const RUN_LIMIT: Duration = Duration::from_secs(20);

fn require_oracles() -> bool {
    std::env::var("IMGPIPE_REQUIRE_ORACLES").as_deref() == Ok("1")
}

fn skip(why: &str) {
    assert!(!require_oracles(), "IMGPIPE_REQUIRE_ORACLES=1 and {why}");
    eprintln!("SKIP: {why}");
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(dir: &Path, extra: &[&str]) -> Option<Server> {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-http-server.py");
        let mut child = match Command::new("python3")
            .arg(script)
            .arg("--dir")
            .arg(dir)
            .arg("--fault-at")
            .arg(FAULT_AT.to_string())
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                skip(&format!("python3 cannot run: {e}"));
                return None;
            }
        };
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
        Some(Server { child, port })
    }

    /// The image URL with user info and a query string, both secret.
    fn secret_url(&self) -> String {
        format!(
            "http://u:s3cret-pw@127.0.0.1:{}/img.raw?sig=s3cret-sig",
            self.port
        )
    }
}

fn image(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The image's SHA-256 from coreutils (an outside reference, not imgpipe's hasher).
fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// A loop device over a file of 0xA5 bytes; detached on drop.
struct Loop {
    dev: PathBuf,
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn attach_loop(backing: &Path) -> Option<Loop> {
    std::fs::write(backing, vec![0xA5u8; 8 << 20]).unwrap();
    match Command::new("losetup")
        .args(["--find", "--show", "--direct-io=on"])
        .arg(backing)
        .output()
    {
        Ok(o) if o.status.success() => Some(Loop {
            dev: PathBuf::from(String::from_utf8(o.stdout).unwrap().trim()),
        }),
        other => {
            skip(&format!("no loop device: {other:?}"));
            None
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum SinkKind {
    File,
    Block,
}

/// What a combination must end with.
#[derive(Clone, Copy, Debug)]
struct Expect {
    code: i32,
    /// The report's `check` (JSON output), when the fault determines it.
    check: Option<&'static str>,
    /// A phrase of the reason (human output).
    phrase: Option<&'static str>,
}

const fn fails(check: &'static str, phrase: &'static str) -> Expect {
    Expect {
        code: 1,
        check: Some(check),
        phrase: Some(phrase),
    }
}

/// Run one fault × sink × digest combination and check every guarantee.
fn run_case(fault: &str, server_args: &[&str], sink: SinkKind, digest: bool, want: Expect) {
    let what = format!("fault {fault} {server_args:?}, {sink:?} sink, digest {digest}");
    let work = tempfile::tempdir().unwrap();
    let data = image(IMAGE_LEN);
    let img = work.path().join("img.raw");
    std::fs::write(&img, &data).unwrap();
    let mut args = vec!["--fault", fault];
    args.extend_from_slice(server_args);
    let Some(srv) = Server::start(work.path(), &args) else {
        return;
    };
    // The sink directory holds only what the test put there.
    let sink_dir = tempfile::tempdir().unwrap();
    std::fs::write(sink_dir.path().join("keep.txt"), b"the test's own file").unwrap();
    let target = sink_dir.path().join("disk.raw");
    let mut dev = None;
    let sink_line = match sink {
        SinkKind::File => format!("path = {:?}", target.display().to_string()),
        SinkKind::Block => {
            let Some(l) = attach_loop(&work.path().join("dev.img")) else {
                return;
            };
            let line = format!("device = {:?}", l.dev.display().to_string());
            dev = Some(l);
            line
        }
    };
    let verify = if digest {
        format!(
            "[verify]\nsha256 = \"{}\"\nsize = {IMAGE_LEN}\n",
            sha256sum(&img)
        )
    } else {
        String::new()
    };
    let spec = format!(
        "[source]\nurl = \"{}\"\n[source.headers]\nX-Auth-Token = \"s3cret-token\"\n\
         [source.retry]\nattempts = 3\nstall_timeout = \"500ms\"\nbackoff = \"20ms\"\n\
         deadline = \"6s\"\n[inspect]\ndisk_format = \"raw\"\nmax_virtual_size = \"6MiB\"\n\
         {verify}[sink]\n{sink_line}\n",
        srv.secret_url()
    );
    let spec_path = work.path().join("spec.toml");
    std::fs::write(&spec_path, &spec).unwrap();
    let json = sink == SinkKind::File;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgpipe"));
    cmd.args(["run", "--progress", "never"]);
    if json {
        cmd.arg("--json");
    }
    let started = Instant::now();
    let mut child = cmd
        .arg(&spec_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > RUN_LIMIT * 3 {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {:?}", started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    let all = format!("{stdout}\n{stderr}");
    let code = status.code().unwrap_or(-1);
    eprintln!("{what}: exit {code} in {took:.2?}");

    assert!(
        took < RUN_LIMIT,
        "{what}: took {took:?} (limit {RUN_LIMIT:?}): {all}"
    );
    for s in SECRETS {
        assert!(
            !all.contains(s),
            "{what}: secret {s:?} in the output: {all}"
        );
    }
    assert!(
        code == 1 || code == 3,
        "{what}: exit {code}, expected 1 or 3: {all}"
    );
    assert_eq!(code, want.code, "{what}: {all}");
    if json {
        let r: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{what}: bad JSON ({e}): {stdout}"));
        assert_ne!(r["status"], "ok", "{what}");
        assert!(
            r["source"]
                .as_str()
                .unwrap()
                .ends_with("/img.raw?[redacted]"),
            "{what}: {}",
            r["source"]
        );
        if let Some(c) = want.check {
            assert_eq!(r["check"], c, "{what}: {}", r["reason"]);
        }
    } else if let Some(p) = want.phrase {
        assert!(stdout.contains(p), "{what}: no {p:?} in {stdout}");
    }

    // Nothing published.
    let mut entries: Vec<String> = std::fs::read_dir(sink_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["keep.txt"],
        "{what}: the sink directory holds more than the test put there"
    );
    if let Some(l) = &dev {
        let got = std::fs::read(&l.dev).unwrap();
        let head = &got[..1 << 20];
        assert!(
            head != &data[..1 << 20],
            "{what}: the device starts with the image"
        );
        assert!(
            head.iter().all(|b| *b == 0) || head.iter().all(|b| *b == 0xA5),
            "{what}: the device's first MiB is neither untouched nor wiped"
        );
    }
}

/// One fault over both sinks, with and without an expected digest.
fn matrix(fault: &str, server_args: &[&str], no_digest: Expect, with_digest: Expect) {
    for sink in [SinkKind::File, SinkKind::Block] {
        run_case(fault, server_args, sink, false, no_digest);
        run_case(fault, server_args, sink, true, with_digest);
    }
}

/// Content-Length promises 4 MiB, every answer stops at the same offset with a clean close:
/// `attempts` dropped connections without new bytes, then exit 1.
#[test]
fn short_body() {
    let e = fails("http.attempts", "3 dropped connections in a row");
    matrix("short", &[], e, e);
}

/// A reset (RST) at the same offset on every answer.
#[test]
fn reset_mid_body() {
    let e = fails("http.attempts", "3 dropped connections in a row");
    matrix("reset", &[], e, e);
}

/// The server goes silent mid-body, every time: each stall is a failure.
#[test]
fn stall_mid_body() {
    let e = fails("http.attempts", "stalled");
    matrix("stall", &[], e, e);
}

/// The resume (with `If-Range`) is answered 206 with another ETag and other bytes.
#[test]
fn changed_etag_on_resume() {
    let e = fails("http.changed", "the image changed while downloading");
    matrix("etag-change", &[], e, e);
}

/// The resume is answered 200 with changed bytes of the same length: refused by the
/// validator when there is one; without validators refused as a drop unless a digest is
/// expected, and then the spliced image is rejected by the digest.
#[test]
fn changed_bytes_same_length_on_restart() {
    let e = fails("http.changed", "the image changed while downloading");
    matrix("changed-restart", &[], e, e);
    matrix(
        "changed-restart",
        &["--no-validators"],
        fails("http.validator", "not resuming"),
        Expect {
            code: 3,
            check: Some("digest.sha256"),
            phrase: Some("sha256 of the image bytes"),
        },
    );
}

/// `Range` ignored (200, whole image) and every answer cut at the same offset: re-read bytes
/// are not progress (the old code restarted forever).
#[test]
fn ok_200_to_a_range_request() {
    let e = fails("http.attempts", "3 dropped connections in a row");
    matrix("range-200", &[], e, e);
}

/// A 206 (half the image) to the first, plain request is never taken for the image.
#[test]
fn partial_206_to_a_plain_request() {
    let e = fails("http.partial", "206 Partial Content");
    matrix("partial-to-plain", &[], e, e);
}

/// An endless chunked body: the raw stream is capped by `max_virtual_size` (6 MiB) while
/// streaming (issue 16 item 5), and by `verify.size` when a digest is expected.
#[test]
fn endless_body() {
    let rejected = Expect {
        code: 3,
        check: None,
        phrase: None,
    };
    matrix("endless", &[], rejected, rejected);
}

/// Bytes slower than useful but never silent for the stall timeout: the overall deadline
/// ends the run.
#[test]
fn slow_trickle_and_deadline() {
    let e = fails("http.deadline", "overall deadline of 6s");
    matrix("trickle", &[], e, e);
}

/// `[source]` edges are spec errors (exit 2, every problem with its key path), and nothing is
/// sent: zero `stall_timeout`/`deadline`, a NUL byte in a path, reserved headers in any case.
#[test]
fn source_spec_edges_exit_2() {
    let work = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "[source]\nurl = \"http://127.0.0.1:1/x\"\n[source.retry]\nstall_timeout = \"0ms\"\n",
            "source.retry.stall_timeout",
        ),
        (
            "[source]\nurl = \"http://127.0.0.1:1/x\"\n[source.retry]\ndeadline = \"0s\"\n",
            "source.retry.deadline",
        ),
        (
            "[source]\npath = \"img\\u0000.raw\"\n[sink]\npath = \"out.raw\"\n",
            "source.path",
        ),
        (
            "[source]\npath = \"img.raw\"\n[sink]\npath = \"out\\u0000.raw\"\n",
            "sink.path",
        ),
        (
            "[source]\nurl = \"http://127.0.0.1:1/x\"\n[source.headers]\nhOST = \"s3cret-host\"\n",
            "source.headers",
        ),
        (
            "[source]\nurl = \"http://127.0.0.1:1/x\"\n[source.headers]\nTransfer-Encoding = \"chunked\"\n",
            "source.headers",
        ),
        (
            "[source]\nurl = \"http://127.0.0.1:1/x\"\n[source.headers]\nX-Auth-Token = \"s3cret\\r\\nHost: evil\"\n",
            "source.headers",
        ),
    ];
    for (spec, key) in cases {
        let p = work.path().join("spec.toml");
        std::fs::write(&p, spec).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_imgpipe"))
            .args(["run", "--json"])
            .arg(&p)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(2), "{spec}: {all}");
        assert!(all.contains(&format!("{key}:")), "{spec}: {all}");
        assert!(!all.contains("s3cret"), "{spec}: {all}");
    }
}

/// A plain URL's wrong `Content-MD5` is checked like Glance's: rejected (exit 3, `digest.md5`)
/// after the last byte, nothing published; a right one passes.
#[test]
fn a_wrong_content_md5_on_a_plain_url_is_a_rejection() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("img.raw"), image(IMAGE_LEN)).unwrap();
    for (form, code) in [("wrong-hex", 3), ("base64", 0)] {
        let Some(srv) = Server::start(work.path(), &["--content-md5", form]) else {
            return;
        };
        let out_dir = tempfile::tempdir().unwrap();
        let target = out_dir.path().join("disk.raw");
        let spec = format!(
            "[source]\nurl = \"http://127.0.0.1:{}/img.raw\"\n[sink]\npath = {:?}\n",
            srv.port,
            target.display().to_string()
        );
        let p = work.path().join("md5.toml");
        std::fs::write(&p, spec).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_imgpipe"))
            .args(["run", "--json", "--progress", "never"])
            .arg(&p)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(out.status.code(), Some(code), "{form}: {stdout}");
        if code == 3 {
            assert_eq!(r["check"], "digest.md5", "{stdout}");
            assert!(
                r["reason"].as_str().unwrap().contains("Content-MD5"),
                "{stdout}"
            );
            assert!(!target.exists());
        } else {
            assert!(
                r["passed"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c == "digest.md5"),
                "{stdout}"
            );
            assert!(std::fs::read(&target).unwrap() == image(IMAGE_LEN));
        }
    }
}

/// A successful run's report shows the URL without user info and with the query replaced by
/// a plain-text marker (the old code rendered `?%E2%80%A6` and kept nothing else secret only
/// by luck of the success path).
#[test]
fn a_successful_report_redacts_the_url_as_plain_text() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("img.raw"), image(1 << 20)).unwrap();
    let Some(srv) = Server::start(work.path(), &[]) else {
        return;
    };
    let p = work.path().join("ok.toml");
    std::fs::write(
        &p,
        format!(
            "[source]\nurl = \"{}\"\n[source.headers]\nX-Auth-Token = \"s3cret-token\"\n",
            srv.secret_url()
        ),
    )
    .unwrap();
    for json in [true, false] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgpipe"));
        cmd.args(["run", "--progress", "never"]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.arg(&p).output().unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{all}");
        let shown = format!("http://127.0.0.1:{}/img.raw?[redacted]", srv.port);
        assert!(all.contains(&shown), "{all}");
        assert!(!all.contains("%E2%80%A6"), "{all}");
        for s in SECRETS {
            assert!(!all.contains(s), "{s:?}: {all}");
        }
    }
}

/// `imgpipe hash URL` and `imgpipe inspect URL` print the URL they read, on success and on
/// failure, in text and JSON: never with its user info or query.
#[test]
fn hash_and_inspect_never_echo_url_secrets() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("img.raw"), image(1 << 20)).unwrap();
    let Some(srv) = Server::start(work.path(), &[]) else {
        return;
    };
    let ok = srv.secret_url();
    let missing = ok.replace("img.raw", "missing.raw");
    for cmd in ["hash", "inspect"] {
        for (url, code) in [(&ok, 0), (&missing, 1)] {
            for json in [false, true] {
                let mut c = Command::new(env!("CARGO_BIN_EXE_imgpipe"));
                c.arg(cmd);
                if json {
                    c.arg("--json");
                }
                let out = c.arg(url).output().unwrap();
                let all = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(out.status.code(), Some(code), "{cmd} {json}: {all}");
                for s in SECRETS {
                    assert!(!all.contains(s), "{cmd} (json {json}): {s:?} in {all}");
                }
            }
        }
    }
}
