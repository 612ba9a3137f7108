//! End-to-end tests of `imgpipe run` / `hash` through the real binary: digests, sizes, exit
//! codes, nothing published on rejection, and an HTTP source against a real local server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::coreutils_sum;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn imgpipe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgpipe"))
}

/// Pseudo-random bytes with zero holes (so the sink's hole handling is exercised).
fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut v = vec![0u8; len];
    for (i, c) in v.chunks_mut(8).enumerate() {
        if (i / 8192) % 3 == 2 {
            continue; // 64 KiB holes
        }
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let b = s.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    v
}

/// The reference digest: coreutils for md5 … sha512; BLAKE3, which neither coreutils nor
/// openssl computes, by the upstream `blake3` crate directly.
fn sha(algo: &str, data: &[u8]) -> String {
    if algo == "blake3" {
        return blake3::hash(data).to_hex().to_string();
    }
    coreutils_sum(algo, data)
}

struct Run {
    code: i32,
    json: serde_json::Value,
    stderr: String,
}

fn run_spec(dir: &Path, spec: &str) -> Run {
    let p = dir.join("spec.toml");
    std::fs::write(&p, spec).unwrap();
    let out = imgpipe()
        .args(["run", "--json", "--progress", "never"])
        .arg(&p)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    Run {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}")),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".part"))
        .collect()
}

#[test]
fn file_to_file_with_every_digest() {
    let dir = tempfile::tempdir().unwrap();
    let data = image(3 << 20 | 12345, 7);
    std::fs::write(dir.path().join("img.raw"), &data).unwrap();
    let mut verify = String::new();
    for a in [
        "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "blake3",
    ] {
        verify.push_str(&format!("{a} = \"{}\"\n", sha(a, &data)));
    }
    let r = run_spec(
        dir.path(),
        &format!(
            "[source]\npath = \"img.raw\"\n[verify]\n{verify}size = {}\n[sink]\npath = \"out/disk.raw\"\n",
            data.len()
        ),
    );
    // The sink directory does not exist: that is an I/O error, exit 1, nothing left behind.
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.json["status"], "error");
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let r = run_spec(
        dir.path(),
        &format!(
            "[source]\npath = \"img.raw\"\n[verify]\n{verify}size = {}\n[sink]\npath = \"out/disk.raw\"\n",
            data.len()
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json["status"], "ok");
    assert_eq!(r.json["bytes_read"], data.len() as u64);
    for a in [
        "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "blake3",
    ] {
        assert_eq!(r.json["hashes"][a], sha(a, &data), "{a}");
    }
    let out = std::fs::read(dir.path().join("out/disk.raw")).unwrap();
    assert_eq!(out, data);
    // Holes were left as holes: fewer blocks allocated than the file length.
    let meta = std::fs::metadata(dir.path().join("out/disk.raw")).unwrap();
    assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < data.len() as u64);
    assert!(r.json["zero_bytes_skipped"].as_u64().unwrap() > 0);
    assert!(leftovers(&dir.path().join("out")).is_empty());
}

#[test]
fn wrong_digest_or_size_is_rejected_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = image(2 << 20, 11);
    std::fs::write(dir.path().join("img.raw"), &data).unwrap();
    let mut wrong = sha("sha512", &data).into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let cases = [
        (format!("sha512 = \"{wrong}\""), "digest.sha512"),
        (
            format!(
                "sha512 = \"{}\"\nsize = {}",
                sha("sha512", &data),
                data.len() + 1
            ),
            "size",
        ),
        (
            format!(
                "sha512 = \"{}\"\nsize = {}",
                sha("sha512", &data),
                data.len() - 1
            ),
            "size",
        ),
        (
            format!(
                "os_hash_algo = \"sha256\"\nos_hash_value = \"{}\"",
                sha("sha256", b"other")
            ),
            "digest.sha256",
        ),
    ];
    for (verify, check) in &cases {
        for preexisting in [false, true] {
            let target = dir.path().join("disk.raw");
            let _ = std::fs::remove_file(&target);
            if preexisting {
                std::fs::write(&target, b"the old disk").unwrap();
            }
            let r = run_spec(
                dir.path(),
                &format!(
                    "[source]\npath = \"img.raw\"\n[verify]\n{verify}\n[sink]\npath = \"disk.raw\"\n"
                ),
            );
            assert_eq!(r.code, 3, "{verify}: {}", r.stderr);
            assert_eq!(r.json["status"], "rejected");
            assert_eq!(r.json["check"], *check, "{}", r.json);
            assert!(r.json["reason"].as_str().unwrap().contains(check));
            if preexisting {
                assert_eq!(
                    std::fs::read(&target).unwrap(),
                    b"the old disk",
                    "the old target was changed"
                );
            } else {
                assert!(
                    !target.exists(),
                    "a rejected run published {}",
                    target.display()
                );
            }
            assert!(
                leftovers(dir.path()).is_empty(),
                "leftover .part: {:?}",
                leftovers(dir.path())
            );
        }
    }
}

#[test]
fn invalid_spec_exits_2_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let r = run_spec(
        dir.path(),
        "[source]\npath = \"x\"\nfoo = 1\n[verify]\nsha256 = \"zz\"\n",
    );
    assert_eq!(r.code, 2);
    assert_eq!(r.json["status"], "error");
    assert_eq!(
        r.json["problems"].as_array().unwrap().len(),
        2,
        "{}",
        r.json
    );
    assert!(
        r.stderr.contains("line 3: source.foo: unknown key"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("line 5: verify.sha256"), "{}", r.stderr);
    let out = imgpipe().args(["run", "--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn hash_command_and_stdin_spec() {
    let dir = tempfile::tempdir().unwrap();
    let data = image(1 << 20, 3);
    let img = dir.path().join("a.img");
    std::fs::write(&img, &data).unwrap();
    let out = imgpipe()
        .args(["hash", "--algo", "sha512,md5"])
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains(&sha("sha512", &data)) && s.contains(&sha("md5", &data)),
        "{s}"
    );
    let mut child = imgpipe()
        .args(["run", "--json", "-"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!(
                "{{\"source\": {{\"path\": \"a.img\"}}, \"verify\": {{\"md5\": \"{}\"}}}}",
                sha("md5", &data)
            )
            .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, extra: &[&str]) -> Server {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-http-server.py");
    let log = dir.join(format!(
        "requests-{}.log",
        extra.join("_").replace(['-', ' '], "")
    ));
    let mut child = Command::new("python3")
        .arg(script)
        .arg("--dir")
        .arg(dir)
        .arg("--log")
        .arg(&log)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the test HTTP server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
    Server { child, port, log }
}

#[test]
fn http_source_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = image(5 << 20, 5);
    std::fs::write(dir.path().join("img.raw"), &data).unwrap();
    let sha512 = sha("sha512", &data);
    let spec = |port: u16, attempts: u32| {
        format!(
            "[source]\nurl = \"http://127.0.0.1:{port}/img.raw\"\nheaders = {{ \"X-Auth-Token\" = \"t0k\" }}\n\
             [source.retry]\nattempts = {attempts}\nbackoff = \"10ms\"\n[verify]\nsha512 = \"{sha512}\"\nsize = {}\n[sink]\npath = \"disk.raw\"\n",
            data.len()
        )
    };
    // Plain download.
    let srv = serve(dir.path(), &[]);
    let r = run_spec(dir.path(), &spec(srv.port, 1));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(dir.path().join("disk.raw")).unwrap(), data);
    std::fs::remove_file(dir.path().join("disk.raw")).unwrap();

    // The server cuts every connection mid-body and we may not retry: clean error, nothing published.
    let srv = serve(dir.path(), &["--drop-after", "1500000"]);
    let r = run_spec(dir.path(), &spec(srv.port, 1));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.json["status"], "error");
    assert_eq!(r.json["kind"], "network");
    assert!(
        r.json["reason"].as_str().unwrap().contains("1500000"),
        "{}",
        r.json["reason"]
    );
    assert!(!dir.path().join("disk.raw").exists());
    assert!(leftovers(dir.path()).is_empty());

    // Three cuts, retries allowed: resumes with Range, every digest right, ~1x bytes fetched.
    let srv = serve(dir.path(), &["--drop-after", "1000000", "--drops", "3"]);
    let r = run_spec(dir.path(), &spec(srv.port, 5));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json["resumes"], 3);
    assert_eq!(r.json["hashes"]["sha512"], sha512);
    assert_eq!(std::fs::read(dir.path().join("disk.raw")).unwrap(), data);
    let log = std::fs::read_to_string(&srv.log).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains("bytes=")).count(),
        3,
        "{log}"
    );
    std::fs::remove_file(dir.path().join("disk.raw")).unwrap();

    // A server without range support: restart and skip what was already delivered.
    let srv = serve(
        dir.path(),
        &["--drop-after", "2000000", "--drops", "1", "--no-ranges"],
    );
    let r = run_spec(dir.path(), &spec(srv.port, 3));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json["hashes"]["sha512"], sha512);
    assert_eq!(std::fs::read(dir.path().join("disk.raw")).unwrap(), data);
    drop(srv);

    // 404 is an error naming the status.
    let srv = serve(dir.path(), &[]);
    let r = run_spec(
        dir.path(),
        &spec(srv.port, 1)
            .replace("img.raw\"", "missing.raw\"")
            .replace("path = \"disk.raw\"", "path = \"d2.raw\""),
    );
    assert_eq!(r.code, 1);
    assert!(
        r.json["reason"].as_str().unwrap().contains("404"),
        "{}",
        r.json["reason"]
    );
}

#[test]
fn inspect_and_verify_commands() {
    let dir = tempfile::tempdir().unwrap();
    let data = image(1 << 20, 9);
    let raw = dir.path().join("a.raw");
    std::fs::write(&raw, &data).unwrap();
    let have_qemu = Command::new("qemu-img").arg("--version").output().is_ok();
    if have_qemu {
        let backed = dir.path().join("b.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&raw)
            .arg(&backed)
            .output()
            .unwrap();
        assert!(st.status.success());
        let out = imgpipe()
            .args(["inspect", "--json"])
            .arg(&backed)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["format"], "qcow2");
        assert_eq!(v["safe"], false);
        assert_eq!(v["violations"][0]["check"], "qcow2.backing_file");
        assert!(v["bytes_examined"].as_u64().unwrap() > 0);
    } else {
        assert!(
            std::env::var("IMGPIPE_REQUIRE_ORACLES").is_err(),
            "qemu-img is required"
        );
    }
    let out = imgpipe()
        .args(["inspect", "--json", "--expect", "raw"])
        .arg(&raw)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["format"].as_str(), v["safe"].as_bool()),
        (Some("raw"), Some(true))
    );
    assert_eq!(v["virtual_size"], data.len() as u64);
    let out = imgpipe()
        .args(["inspect", "--expect", "qcow2"])
        .arg(&raw)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "declared qcow2 but raw");
    let out = imgpipe()
        .args(["inspect", "--expect", "floppy"])
        .arg(&raw)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = imgpipe()
        .args(["inspect"])
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // verify: checks only, the spec's sink is not written.
    let spec = dir.path().join("v.toml");
    std::fs::write(
        &spec,
        format!(
            "[source]\npath = \"nowhere.raw\"\n[verify]\nsha256 = \"{}\"\n[sink]\npath = \"disk.raw\"\n",
            sha("sha256", &data)
        ),
    )
    .unwrap();
    let out = imgpipe()
        .args(["verify", "--json", "--input"])
        .arg(&raw)
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("disk.raw").exists());
    let other = dir.path().join("other.raw");
    std::fs::write(&other, image(1 << 20, 10)).unwrap();
    let out = imgpipe()
        .args(["verify", "--json", "--input"])
        .arg(&other)
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

/// The verified cache through `imgpipe run` and `imgpipe cache`: a miss fills the entry and
/// the disk in one pass (the source is fetched once even by concurrent runs), a hit streams
/// the entry through the same checks, a flipped byte in the entry is rejected (exit 3,
/// nothing published, entry dropped), and the operator commands see it all.
#[test]
fn cache_fill_hit_tamper_and_operator_commands() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = image(4 << 20 | 4096, 11);
    std::fs::write(d.join("img.raw"), &data).unwrap();
    // The cached bytes are the original qcow2; the disk is the decoded raw.
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(d.join("img.raw"))
        .arg(d.join("img.qcow2"))
        .status();
    match st {
        Ok(s) => assert!(s.success()),
        Err(e) => {
            assert!(
                std::env::var("IMGPIPE_REQUIRE_ORACLES").as_deref() != Ok("1"),
                "qemu-img: {e}"
            );
            eprintln!("skip: qemu-img not available ({e})");
            return;
        }
    }
    let qcow = std::fs::read(d.join("img.qcow2")).unwrap();
    let sha512 = sha("sha512", &qcow);
    let srv = serve(d, &[]);
    let spec = |disk: &str| {
        format!(
            "[source]\nurl = \"http://127.0.0.1:{}/img.qcow2\"\n[inspect]\ndisk_format = \"qcow2\"\n\
             [verify]\nsha512 = \"{sha512}\"\n[sink]\npath = \"{disk}\"\n[cache]\ndir = \"cache\"\n",
            srv.port
        )
    };
    let fetches = || {
        std::fs::read_to_string(&srv.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("img.qcow2"))
            .count()
    };

    // Sixteen concurrent cold runs (separate processes): one fetch, sixteen right disks.
    std::fs::create_dir(d.join("cache")).unwrap();
    let children: Vec<_> = (0..16)
        .map(|i| {
            let p = d.join(format!("spec{i}.toml"));
            std::fs::write(&p, spec(&format!("disk{i}.raw"))).unwrap();
            imgpipe()
                .current_dir(d)
                .args(["run", "--json", "--progress", "never"])
                .arg(&p)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut passed = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        passed.extend(
            j["passed"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .filter(|c| c.starts_with("cache.")),
        );
    }
    passed.sort();
    let mut expected = vec!["cache.fill"];
    expected.extend(["cache.hit"; 15]);
    assert_eq!(passed, expected);
    assert_eq!(fetches(), 1, "the source is fetched once");
    for i in 0..16 {
        assert_eq!(std::fs::read(d.join(format!("disk{i}.raw"))).unwrap(), data);
    }

    // Operators see one complete, verifiable entry holding the original qcow2 bytes.
    let out = imgpipe()
        .current_dir(d)
        .args(["cache", "--dir", "cache", "--json", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let list = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        list.contains("qcow2") && list.contains("img.qcow2"),
        "{list}"
    );
    let data_file = std::fs::read_dir(d.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "data"))
        .unwrap();
    assert_eq!(std::fs::read(&data_file).unwrap(), qcow);
    let verify = |code: i32| {
        let out = imgpipe()
            .current_dir(d)
            .args(["cache", "--dir", "cache", "verify"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    verify(0);

    // Bit rot / tampering on the cache storage: flip one byte in the data area.
    let mut bad = qcow.clone();
    let at = bad.len() - 5000;
    bad[at] ^= 0x40;
    std::fs::write(&data_file, &bad).unwrap();
    verify(3);
    let r = run_spec(d, &spec("tampered.raw"));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(r.json["kind"], "digest_mismatch");
    assert!(
        r.json["source"].as_str().unwrap().starts_with("cache:"),
        "{}",
        r.json
    );
    assert!(!d.join("tampered.raw").exists());
    assert!(leftovers(d).is_empty());
    assert!(
        r.json["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("no longer matches its sidecar")),
        "{}",
        r.json
    );
    assert!(!data_file.exists(), "the bad entry is dropped");

    // The next run fetches again and refills.
    let r = run_spec(d, &spec("again.raw"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(fetches(), 2);
    assert_eq!(std::fs::read(d.join("again.raw")).unwrap(), data);
    assert_eq!(std::fs::read(&data_file).unwrap(), qcow);
}
