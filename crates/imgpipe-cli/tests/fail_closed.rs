//! Fail-closed guarantees of the release path, through the real `imgpipe` binary: the file
//! sink's temporary file (symlinks, existing files, two runs on one target, a source named
//! like the old temp name, SIGKILL), signals and closed pipes, an empty trusted-certificate
//! list, and `max_virtual_size` on an endless raw stream. Outside references: `sha512sum`
//! for digests, `openssl` for keys, certificates and signatures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn imgpipe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgpipe"))
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = vec![0u8; len];
    for c in v.chunks_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let b = s.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    v
}

/// SHA-512 of a file by `sha512sum` (the outside reference).
fn sha512sum(p: &Path) -> String {
    common::coreutils_sum_file("sha512", p)
}

/// The directory's entries, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

fn strs(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn write_spec(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn run(spec: &Path) -> (i32, serde_json::Value, String) {
    let out = imgpipe()
        .args(["run", "--json", "--progress", "never"])
        .arg(spec)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"));
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn raw_spec(src: &Path, sink: &Path, sha512: &str) -> String {
    format!(
        "[source]\npath = {:?}\n[inspect]\ndisk_format = \"raw\"\n[verify]\nsha512 = \"{sha512}\"\n\
         [sink]\npath = {:?}\n",
        src.display().to_string(),
        sink.display().to_string()
    )
}

/// A run that is streaming from a pipe the test controls, its sink file open.
struct Streaming {
    child: Child,
    feeder: Option<std::process::ChildStdin>,
}

/// Start `imgpipe run` on a stdin source, feed `first` bytes and wait until the sink's
/// temporary file is open (seen in `/proc/PID/fd`, pointing into `dir`).
fn start_streaming(dir: &Path, sink: &Path, first: &[u8]) -> Streaming {
    let spec = write_spec(
        dir,
        "stream.toml",
        &format!(
            "[source]\npath = \"-\"\n[inspect]\ndisk_format = \"raw\"\n[sink]\npath = {:?}\n",
            sink.display().to_string()
        ),
    );
    let mut child = imgpipe()
        .args(["run", "--json", "--progress", "never"])
        .arg(&spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut feeder = child.stdin.take().unwrap();
    feeder.write_all(first).unwrap();
    feeder.flush().unwrap();
    let canon = dir.canonicalize().unwrap();
    let t0 = Instant::now();
    loop {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", child.id())).unwrap();
        let open_in_dir = fds.filter_map(|e| e.ok()).any(|e| {
            std::fs::read_link(e.path())
                .map(|t| t.starts_with(&canon) && !t.ends_with("stream.toml"))
                .unwrap_or(false)
        });
        if open_in_dir {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the sink never opened its temporary file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Streaming {
        child,
        feeder: Some(feeder),
    }
}

#[test]
fn a_symlink_at_the_old_temp_name_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = image(3 << 20, 1);
    let src = d.join("img.raw");
    std::fs::write(&src, &data).unwrap();
    let victim = d.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let sink = d.join("disk.raw");
    std::os::unix::fs::symlink(&victim, d.join("disk.raw.part")).unwrap();
    let good = sha512sum(&src);

    // Rejected run: the victim is untouched.
    let spec = write_spec(d, "bad.toml", &raw_spec(&src, &sink, &"0".repeat(128)));
    let (code, json, _) = run(&spec);
    assert_eq!(code, 3, "{json}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!sink.exists());

    // Successful run: the victim is untouched and the target is a regular file of its own.
    let spec = write_spec(d, "good.toml", &raw_spec(&src, &sink, &good));
    let (code, json, _) = run(&spec);
    assert_eq!(code, 0, "{json}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let meta = std::fs::symlink_metadata(&sink).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the target is not a regular file"
    );
    assert_eq!(sha512sum(&sink), good);
    assert_eq!(
        entries(d),
        strs(&[
            "bad.toml",
            "disk.raw",
            "disk.raw.part",
            "good.toml",
            "img.raw",
            "victim"
        ])
    );
}

#[test]
fn a_source_named_like_the_old_temp_file_is_left_intact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = image(2 << 20, 2);
    let src = d.join("disk.raw.part");
    std::fs::write(&src, &data).unwrap();
    let good = sha512sum(&src);
    let sink = d.join("disk.raw");
    let spec = write_spec(d, "s.toml", &raw_spec(&src, &sink, &good));
    let (code, json, _) = run(&spec);
    assert_eq!(code, 0, "{json}");
    assert_eq!(sha512sum(&src), good, "the source was modified");
    assert_eq!(sha512sum(&sink), good);
}

#[test]
fn an_existing_target_survives_a_rejected_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("img.raw");
    std::fs::write(&src, image(1 << 20, 3)).unwrap();
    let sink = d.join("disk.raw");
    std::fs::write(&sink, b"the instance's disk").unwrap();
    let spec = write_spec(d, "s.toml", &raw_spec(&src, &sink, &"1".repeat(128)));
    let (code, json, _) = run(&spec);
    assert_eq!(code, 3, "{json}");
    assert_eq!(std::fs::read(&sink).unwrap(), b"the instance's disk");
    assert_eq!(entries(d), strs(&["disk.raw", "img.raw", "s.toml"]));
}

/// Two runs on one target at once, one rejected (other bytes, wrong digest) and one good: the
/// published disk is exactly the good run's image, whatever the interleaving.
#[test]
fn two_runs_on_one_target_never_mix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = d.join("a.raw");
    let b = d.join("b.raw");
    std::fs::write(&a, image(24 << 20, 4)).unwrap();
    std::fs::write(&b, image(24 << 20, 5)).unwrap();
    let good = sha512sum(&b);
    let sink = d.join("disk.raw");
    let bad_spec = write_spec(d, "a.toml", &raw_spec(&a, &sink, &"2".repeat(128)));
    let good_spec = write_spec(d, "b.toml", &raw_spec(&b, &sink, &good));
    for round in 0..3 {
        let _ = std::fs::remove_file(&sink);
        let bad = imgpipe()
            .args(["run", "--json", "--progress", "never"])
            .arg(&bad_spec)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let good_run = imgpipe()
            .args(["run", "--json", "--progress", "never"])
            .arg(&good_spec)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let bad = bad.wait_with_output().unwrap();
        let good_run = good_run.wait_with_output().unwrap();
        assert_eq!(bad.status.code(), Some(3), "round {round}");
        assert_eq!(good_run.status.code(), Some(0), "round {round}");
        assert_eq!(sha512sum(&sink), good, "round {round}: mixed disk");
        assert_eq!(
            entries(d),
            strs(&["a.raw", "a.toml", "b.raw", "b.toml", "disk.raw"]),
            "round {round}"
        );
    }
}

/// SIGKILL cannot be caught: the temporary file must be one that vanishes with the process.
#[test]
fn sigkill_mid_run_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sink = d.join("disk.raw");
    let mut s = start_streaming(d, &sink, &image(4 << 20, 6));
    s.child.kill().unwrap();
    let st = s.child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    drop(s.feeder.take());
    assert_eq!(entries(d), strs(&["stream.toml"]));
}

/// SIGTERM, SIGHUP and SIGINT mid-run: the run aborts, removes its temporary file, publishes
/// nothing, reports why, and exits 128 + the signal number.
#[test]
fn sigterm_sighup_sigint_mid_run_clean_up_and_exit_128_plus_signal() {
    for (sig, name) in [
        (libc_sig::TERM, "SIGTERM"),
        (libc_sig::HUP, "SIGHUP"),
        (libc_sig::INT, "SIGINT"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sink = d.join("disk.raw");
        let mut s = start_streaming(d, &sink, &image(4 << 20, 7));
        let t0 = Instant::now();
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(s.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
        let out = s.child.wait_with_output().unwrap();
        drop(s.feeder.take());
        assert!(t0.elapsed() < Duration::from_secs(20), "{name}: slow abort");
        assert_eq!(out.status.code(), Some(128 + sig), "{name}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["status"], "error", "{name}: {json}");
        assert!(
            json["reason"].as_str().unwrap_or("").contains(name),
            "{name}: {json}"
        );
        assert_eq!(entries(d), strs(&["stream.toml"]), "{name}");
    }
}

/// Signal numbers (Linux), without a libc dependency in the test.
mod libc_sig {
    pub const HUP: i32 = 1;
    pub const INT: i32 = 2;
    pub const TERM: i32 = 15;
}

/// `imgpipe run --json | head -c0`: the report cannot be delivered, but the run's outcome and
/// exit status stand, and nothing panics.
#[test]
fn a_closed_stdout_or_stderr_does_not_panic_or_change_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("img.raw");
    std::fs::write(&src, image(8 << 20, 8)).unwrap();
    let good = sha512sum(&src);
    for (i, (digest, want)) in [(good.clone(), 0), ("3".repeat(128), 3)]
        .into_iter()
        .enumerate()
    {
        let sink = d.join(format!("disk{i}.raw"));
        let spec = write_spec(d, &format!("s{i}.toml"), &raw_spec(&src, &sink, &digest));
        for json in [true, false] {
            let _ = std::fs::remove_file(&sink);
            let mut cmd = imgpipe();
            cmd.arg("run");
            if json {
                cmd.arg("--json");
            }
            let mut child = cmd
                .arg(&spec)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Close both read ends at once: every write the binary makes gets EPIPE.
            drop(child.stdout.take());
            drop(child.stderr.take());
            let st = child.wait().unwrap();
            assert_eq!(st.code(), Some(want), "json={json} digest ok={}", want == 0);
            assert_eq!(sink.exists(), want == 0);
            if want == 0 {
                assert_eq!(sha512sum(&sink), good);
            }
        }
    }
    // And with stderr captured, no panic message.
    let sink = d.join("disk0.raw");
    let _ = std::fs::remove_file(&sink);
    let mut cmd = imgpipe();
    cmd.args(["run", "--json"]).arg(d.join("s0.toml"));
    let (code, err) = with_stdout_closed(cmd);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// An endless raw stream with `max_virtual_size`: rejected as soon as it passes the cap
/// (exit 3, `policy.virtual_size`), nothing published, nothing left behind.
#[test]
fn an_endless_raw_stream_stops_at_max_virtual_size() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sink = d.join("disk.raw");
    for declared in ["", "disk_format = \"raw\"\n"] {
        let spec = write_spec(
            d,
            "s.toml",
            &format!(
                "[source]\npath = \"-\"\n[inspect]\n{declared}max_virtual_size = \"16MiB\"\n\
                 [sink]\npath = {:?}\n",
                sink.display().to_string()
            ),
        );
        let zero = std::fs::File::open("/dev/urandom").unwrap();
        let t0 = Instant::now();
        let out = imgpipe()
            .args(["run", "--json", "--progress", "never"])
            .arg(&spec)
            .stdin(Stdio::from(zero))
            .output()
            .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(60));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(3), "{json}");
        assert_eq!(json["check"], "policy.virtual_size", "{json}");
        let read = json["bytes_read"].as_u64().unwrap();
        assert!(read < 64 << 20, "read {read} bytes of an endless stream");
        assert_eq!(entries(d), strs(&["s.toml"]));
    }
}

/// `openssl` makes a self-signed CA-capable certificate and an RSA-PSS signature of `data`.
fn sign(dir: &Path, data_path: &Path) -> (PathBuf, String) {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args(["-subj", "/CN=imgpipe fail-closed test"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,digitalSignature"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let sig = dir.join("sig.bin");
    let ok = Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sign",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&sig)
        .arg(data_path)
        .status()
        .unwrap();
    assert!(ok.success());
    let out = Command::new("openssl")
        .args(["base64", "-A", "-in"])
        .arg(&sig)
        .output()
        .unwrap();
    (
        cert,
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

/// `trusted_certificates = []` trusts nothing (as cursive's `verify_certificate(.., [])`):
/// the run is rejected before streaming. An absent list leaves chain validation off, and a
/// list holding the certificate passes.
#[test]
fn an_empty_trusted_certificate_list_trusts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("img.raw");
    std::fs::write(&src, image(1 << 20, 9)).unwrap();
    let (cert, sig) = sign(d, &src);
    let sink = d.join("disk.raw");
    let spec_with = |trusted: &str| {
        format!(
            "[source]\npath = {:?}\n[inspect]\ndisk_format = \"raw\"\n[verify.signature]\n\
             signature = \"{sig}\"\nhash_method = \"SHA-256\"\nkey_type = \"RSA-PSS\"\n\
             certificate = {:?}\n{trusted}[sink]\npath = {:?}\n",
            src.display().to_string(),
            cert.display().to_string(),
            sink.display().to_string()
        )
    };
    let empty = write_spec(d, "empty.toml", &spec_with("trusted_certificates = []\n"));
    let (code, json, _) = run(&empty);
    assert_eq!(code, 3, "{json}");
    assert!(
        json["check"]
            .as_str()
            .unwrap_or("")
            .starts_with("certificate"),
        "{json}"
    );
    assert_eq!(json["phase"], "before_streaming", "{json}");
    assert!(!sink.exists());

    let listed = write_spec(
        d,
        "listed.toml",
        &spec_with(&format!(
            "trusted_certificates = [{:?}]\n",
            cert.display().to_string()
        )),
    );
    let (code, json, _) = run(&listed);
    assert_eq!(code, 0, "{json}");
    std::fs::remove_file(&sink).unwrap();

    let absent = write_spec(d, "absent.toml", &spec_with(""));
    let (code, json, _) = run(&absent);
    assert_eq!(code, 0, "{json}");
    assert!(
        json["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap_or("").contains("no trusted_certificates")),
        "{json}"
    );
}

/// Run `cmd` with its stdout closed from the start (every write gets EPIPE); its exit code
/// and stderr.
fn with_stdout_closed(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap().code(), err)
}

/// `imgpipe cache … | head -c0`: the cache commands never panic on a closed stdout either.
#[test]
fn cache_commands_survive_a_closed_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    for args in [vec!["list"], vec!["--json", "list"], vec!["verify"]] {
        let mut cmd = imgpipe();
        cmd.arg("cache").arg("--dir").arg(&cache).args(&args);
        let (code, err) = with_stdout_closed(cmd);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
