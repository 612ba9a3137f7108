//! End to end through the `imgpipe` binary with a `[source.glance]` spec, against a real
//! Glance 33.0.0 and a real Barbican 23.0.0 (both from PyPI, started on 127.0.0.1 by
//! `scripts/services/{glance,barbican}.sh`, stopped by PID on drop).
//!
//! The spec names only the image id and the endpoints: the declared format, size, Glance's
//! multihash/checksum and the `img_signature*` properties all come from the image record.
//!
//! - a signed qcow2 (RSA-PSS, certificate stored in Barbican) is verified, decoded and written;
//! - a tampered `img_signature` property → exit 3, nothing published;
//! - a corrupted file store (bytes overwritten under Glance's `images/` dir) → exit 3;
//! - a proxy that cuts the data connection 3 times → completes with `resumes` = 3 and fewer than
//!   1.1× the image bytes fetched (counted at the proxy).
//!
//! Services or tools missing → skip, unless `IMGPIPE_REQUIRE_ORACLES=1`.
//! `glance_vs_curl_1gib` (ignored) compares `imgpipe run` with `curl -o /dev/null`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../imgpipe-io/tests/support/glance.rs"]
mod support;

mod common;
use common::coreutils_sum;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use support::{FaultProxy, Service, add_image, http, patch_props, pseudo_random, skip};

struct Run {
    code: i32,
    json: serde_json::Value,
    stderr: String,
}

fn run_spec(dir: &Path, spec: &str) -> Run {
    let p = dir.join("spec.toml");
    std::fs::write(&p, spec).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imgpipe"))
        .args(["run", "--json", "--progress", "never"])
        .arg(&p)
        .env("OS_AUTH_TOKEN", "gAAAAA-e2e-token-must-not-leak")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !stdout.contains("e2e-token-must-not-leak") && !stderr.contains("e2e-token-must-not-leak"),
        "token leaked into the output"
    );
    Run {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}\nstderr: {stderr}")),
        stderr,
    }
}

fn spec(glance: &str, id: &str, barbican: Option<&str>, sink: &Path) -> String {
    let mut s = format!(
        "[source.glance]\nendpoint = \"{glance}\"\nimage_id = \"{id}\"\ntoken_env = \"OS_AUTH_TOKEN\"\n\
         [source.retry]\nattempts = 6\nbackoff = \"50ms\"\n"
    );
    if let Some(b) = barbican {
        s.push_str(&format!(
            "[verify.signature.barbican]\nendpoint = \"{b}\"\n"
        ));
    }
    s.push_str(&format!("[sink]\npath = \"{}\"\n", sink.display()));
    s
}

fn tool(cmd: &mut Command) -> Option<Vec<u8>> {
    match cmd.output() {
        Ok(o) if o.status.success() => Some(o.stdout),
        Ok(o) => panic!("{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => skip(&format!("{cmd:?}: {e}")),
    }
}

/// A qcow2 with data at a few offsets (written by qemu-io) and its raw conversion (by
/// qemu-img, the oracle).
fn make_qcow2(dir: &Path) -> Option<(Vec<u8>, Vec<u8>)> {
    let q = dir.join("img.qcow2");
    let r = dir.join("img.raw");
    tool(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&q)
            .arg("64M"),
    )?;
    for (pat, off, len) in [(0x5a, "0", "1M"), (0x11, "9M", "3M"), (0xc3, "40M", "64k")] {
        tool(
            Command::new("qemu-io")
                .args(["-f", "qcow2", "-c", &format!("write -P {pat} {off} {len}")])
                .arg(&q),
        )?;
    }
    tool(
        Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&q)
            .arg(&r),
    )?;
    Some((std::fs::read(&q).unwrap(), std::fs::read(&r).unwrap()))
}

/// RSA-3072 key + self-signed certificate; returns (key path, cert PEM).
fn make_rsa_cert(dir: &Path) -> Option<(std::path::PathBuf, Vec<u8>)> {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    tool(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:3072",
                "-nodes",
                "-subj",
                "/CN=imgpipe-e2e",
            ])
            .args(["-days", "2", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    )?;
    Some((key, std::fs::read(&cert).unwrap()))
}

/// `openssl dgst -sha256 -sign key -sigopt rsa_padding_mode:pss` (max salt), base64.
fn sign_pss(dir: &Path, key: &Path, data: &[u8]) -> Option<String> {
    let f = dir.join("to-sign");
    std::fs::write(&f, data).unwrap();
    let sig = tool(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(key)
            .args([
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:max",
            ])
            .arg(&f),
    )?;
    let sf = dir.join("sig.bin");
    std::fs::write(&sf, sig).unwrap();
    let b64 = tool(
        Command::new("openssl")
            .args(["base64", "-A", "-in"])
            .arg(&sf),
    )?;
    Some(String::from_utf8(b64).unwrap().trim().to_string())
}

/// Store a PEM certificate in Barbican (base64 payload, as castellan needs); its UUID.
fn store_cert(barbican: &str, pem: &[u8], dir: &Path) -> Option<String> {
    let f = dir.join("cert-for-b64");
    std::fs::write(&f, pem).unwrap();
    let b64 = tool(
        Command::new("openssl")
            .args(["base64", "-A", "-in"])
            .arg(&f),
    )?;
    let body = serde_json::json!({
        "name": "imgpipe-e2e-signing-cert", "secret_type": "certificate",
        "payload": String::from_utf8(b64).unwrap().trim(),
        "payload_content_type": "application/octet-stream",
        "payload_content_encoding": "base64"});
    let (st, _, resp) = http(
        "POST",
        &format!("{barbican}/v1/secrets"),
        &[("Content-Type", "application/json")],
        &serde_json::to_vec(&body).unwrap(),
    );
    assert_eq!(st, 201, "{}", String::from_utf8_lossy(&resp));
    let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
    Some(
        v["secret_ref"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string(),
    )
}

fn parts(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".part"))
        .collect()
}

#[test]
fn glance_source_end_to_end() {
    let Some(glance) = Service::start("glance", &[]) else {
        return;
    };
    let Some(barbican) = Service::start("barbican", &[("IMGPIPE_BARBICAN_AUTH", "noauth")]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some((qcow2, raw)) = make_qcow2(d) else {
        return;
    };
    let Some((key, cert_pem)) = make_rsa_cert(d) else {
        return;
    };
    let Some(cert_uuid) = store_cert(&barbican.url, &cert_pem, d) else {
        return;
    };
    let Some(signature) = sign_pss(d, &key, &qcow2) else {
        return;
    };
    let g = glance.url.as_str();
    let sign = |id: &str, sig: &str| {
        patch_props(
            g,
            id,
            &[
                ("img_signature", sig),
                ("img_signature_hash_method", "SHA-256"),
                ("img_signature_key_type", "RSA-PSS"),
                ("img_signature_certificate_uuid", &cert_uuid),
            ],
        );
    };

    // 1. Signed qcow2: verified (signature + Glance's sha512 + size), decoded, written.
    let id = add_image(g, "qcow2", &qcow2);
    sign(&id, &signature);
    let out = d.join("disk.raw");
    let t = Instant::now();
    let r = run_spec(d, &spec(g, &id, Some(&barbican.url), &out));
    eprintln!("signed qcow2 run: {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(r.code, 0, "{}\n{}", r.json, r.stderr);
    let passed: Vec<&str> = r.json["passed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for check in ["signature", "digest.sha512", "size"] {
        assert!(passed.contains(&check), "{check} not in {passed:?}");
    }
    assert_eq!(r.json["format"], "qcow2");
    assert_eq!(r.json["bytes_read"], qcow2.len() as u64);
    assert_eq!(r.json["hashes"]["sha512"], coreutils_sum("sha512", &qcow2));
    assert!(
        std::fs::read(&out).unwrap() == raw,
        "written disk differs from qemu-img's"
    );
    std::fs::remove_file(&out).unwrap();

    // 2. Tampered signature property: a valid signature, but of other bytes → rejected.
    let Some(other_sig) = sign_pss(d, &key, b"not the image") else {
        return;
    };
    let id2 = add_image(g, "qcow2", &qcow2);
    sign(&id2, &other_sig);
    let r = run_spec(d, &spec(g, &id2, Some(&barbican.url), &out));
    assert_eq!(r.code, 3, "{}", r.json);
    assert_eq!(r.json["kind"], "bad_signature", "{}", r.json);
    assert!(!out.exists(), "a rejected image was published");
    assert!(parts(d).is_empty());

    // 3. Store corruption: same length, one byte flipped in a data cluster, directly in
    //    Glance's file store (the API cannot change an active image's data).
    let id3 = add_image(g, "qcow2", &qcow2);
    sign(&id3, &signature);
    let stored = support::store_path(&glance, &id3);
    let mut bad = std::fs::read(&stored).unwrap();
    assert!(bad == qcow2, "Glance's file store layout changed");
    let last = bad.len() - 100;
    bad[last] ^= 0x01;
    std::fs::write(&stored, &bad).unwrap();
    let r = run_spec(d, &spec(g, &id3, Some(&barbican.url), &out));
    assert_eq!(r.code, 3, "{}", r.json);
    assert!(
        ["bad_signature", "digest_mismatch"].contains(&r.json["kind"].as_str().unwrap()),
        "{}",
        r.json
    );
    assert!(!out.exists());
    assert!(parts(d).is_empty());

    // 4. Unsigned raw image through a proxy that cuts the data connection three times.
    let data = pseudo_random(12 << 20, 9);
    let id4 = add_image(g, "raw", &data);
    let proxy = FaultProxy::start(g, 2_500_000, 3);
    let r = run_spec(d, &spec(&proxy.url, &id4, None, &out));
    assert_eq!(r.code, 0, "{}\n{}", r.json, r.stderr);
    assert_eq!(r.json["resumes"], 3, "{}", r.json);
    assert!(r.json["resumes"].as_u64().unwrap() >= 2);
    assert_eq!(r.json["hashes"]["sha512"], coreutils_sum("sha512", &data));
    assert!(std::fs::read(&out).unwrap() == data);
    let stats = proxy.stats(4);
    let down = stats["down_bytes"].as_u64().unwrap();
    eprintln!(
        "resume run: proxy relayed {down} bytes (record + data) for a {} byte image ({:.3}x)",
        data.len(),
        down as f64 / data.len() as f64
    );
    assert!((down as f64) < 1.1 * data.len() as f64, "{stats}");

    // 5. A queued image (no data) fails before streaming, nothing published.
    std::fs::remove_file(&out).unwrap();
    let id5 = support::create_image(
        g,
        serde_json::json!({"name": "q", "disk_format": "raw", "container_format": "bare"}),
    );
    let r = run_spec(d, &spec(g, &id5, None, &out));
    assert_ne!(r.code, 0);
    assert_eq!(r.json["check"], "glance.status", "{}", r.json);
    assert!(!out.exists());
}

/// Change an image record's `os_hash_value` behind Glance's API (which never lets it change):
/// in the service's sqlite database, as a compromised or buggy Glance would serve it.
fn set_os_hash_value(glance: &Service, id: &str, value: &str) -> Option<()> {
    let db = glance.workdir.path().join("glance.sqlite");
    // Python's sqlite3 module (Python runs the services anyway): no sqlite3 CLI needed.
    tool(
        Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1])\n\
                 n = c.execute('UPDATE images SET os_hash_value = ? WHERE id = ?', \
                 (sys.argv[2], sys.argv[3])).rowcount\n\
                 c.commit()\n\
                 sys.exit(0 if n == 1 else 1)",
            )
            .arg(&db)
            .arg(value)
            .arg(id),
    )?;
    let (st, _, body) = http("GET", &format!("{}/v2/images/{id}", glance.url), &[], &[]);
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["os_hash_value"], value,
        "Glance does not serve the changed record"
    );
    Some(())
}

/// Cache hits from a Glance source apply the image record, as misses do: the record is fetched
/// on every run, and a hit whose record now has another `os_hash_value`, or whose
/// `img_signature` does not verify over the cached bytes, is rejected (exit 3) and publishes
/// nothing; the entry itself still matches its sidecar and is kept, so the restored record
/// hits again. Digests are compared with `sha512sum`.
#[test]
fn glance_cache_hits_apply_the_records_hash_and_signature() {
    let Some(glance) = Service::start("glance", &[]) else {
        return;
    };
    let Some(barbican) = Service::start("barbican", &[("IMGPIPE_BARBICAN_AUTH", "noauth")]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some((qcow2, raw)) = make_qcow2(d) else {
        return;
    };
    let Some((key, cert_pem)) = make_rsa_cert(d) else {
        return;
    };
    let Some(cert_uuid) = store_cert(&barbican.url, &cert_pem, d) else {
        return;
    };
    let Some(signature) = sign_pss(d, &key, &qcow2) else {
        return;
    };
    let Some(other_sig) = sign_pss(d, &key, b"not the image") else {
        return;
    };
    let g = glance.url.as_str();
    let id = add_image(g, "qcow2", &qcow2);
    let sign = |sig: &str| {
        patch_props(
            g,
            &id,
            &[
                ("img_signature", sig),
                ("img_signature_hash_method", "SHA-256"),
                ("img_signature_key_type", "RSA-PSS"),
                ("img_signature_certificate_uuid", &cert_uuid),
            ],
        );
    };
    sign(&signature);
    let sha512 = coreutils_sum("sha512", &qcow2);
    let out = d.join("disk.raw");
    let cache = d.join("cache");
    let cached = format!(
        "{}[cache]\ndir = \"{}\"\n",
        spec(g, &id, Some(&barbican.url), &out),
        cache.display()
    );
    let passed = |r: &Run| -> Vec<String> {
        r.json["passed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let data_files = || {
        std::fs::read_dir(&cache)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "data")
            })
            .count()
    };
    let served = |what: &str, way: &str| {
        let r = run_spec(d, &cached);
        assert_eq!(r.code, 0, "{what}: {}\n{}", r.json, r.stderr);
        let p = passed(&r);
        for c in ["signature", "digest.sha512", way] {
            assert!(p.contains(&c.to_string()), "{what}: {c} not in {p:?}");
        }
        assert_eq!(r.json["hashes"]["sha512"], sha512.as_str(), "{what}");
        assert!(std::fs::read(&out).unwrap() == raw, "{what}: wrong disk");
        std::fs::remove_file(&out).unwrap();
        r
    };
    let rejected = |what: &str, kind: &str, check: &str| {
        let r = run_spec(d, &cached);
        assert_eq!(r.code, 3, "{what}: {}\n{}", r.json, r.stderr);
        assert_eq!(r.json["kind"], kind, "{what}: {}", r.json);
        assert_eq!(r.json["check"], check, "{what}: {}", r.json);
        assert!(
            r.json["source"].as_str().unwrap().starts_with("cache:"),
            "{what}: not a hit: {}",
            r.json
        );
        assert!(!out.exists(), "{what}: a rejected hit published the disk");
        assert!(parts(d).is_empty(), "{what}");
        assert_eq!(
            data_files(),
            1,
            "{what}: the entry matches its sidecar and stays"
        );
    };

    // Fill, then a hit: both verified against the record (Glance's sha512 and the signature).
    let r = served("fill", "cache.fill");
    assert!(!r.json["source"].as_str().unwrap().starts_with("cache:"));
    let r = served("hit", "cache.hit");
    assert!(
        r.json["source"].as_str().unwrap().starts_with("cache:"),
        "{}",
        r.json
    );

    // The record's signature now signs other bytes: the hit is rejected.
    sign(&other_sig);
    rejected(
        "signature of other bytes",
        "bad_signature",
        "signature.invalid",
    );
    sign(&signature);
    served("signature restored", "cache.hit");

    // The record's os_hash_value now names other bytes: the hit is rejected by that check.
    let Some(()) = set_os_hash_value(&glance, &id, &coreutils_sum("sha512", b"other bytes")) else {
        return;
    };
    rejected("another os_hash_value", "digest_mismatch", "digest.sha512");
    let Some(()) = set_os_hash_value(&glance, &id, &sha512) else {
        return;
    };
    served("os_hash_value restored", "cache.hit");
}

/// `imgpipe run` of a 1 GiB raw image from the real Glance vs `curl -o /dev/null` of the same
/// data URL, one run each (a quick look). The measurement of record is
/// `benches/glance-vs-curl.sh` (release build, alternating contenders, medians, under the
/// bench lock). Run with `cargo test --release -p imgpipe-cli --test glance_e2e -- --ignored
/// --nocapture`.
#[test]
#[ignore = "benchmark: 1 GiB through a real Glance"]
fn glance_vs_curl_1gib() {
    let Some(glance) = Service::start("glance", &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = pseudo_random(1 << 30, 11);
    let id = add_image(&glance.url, "raw", &data);
    drop(data);
    let url = format!("{}/v2/images/{id}/file", glance.url);
    let t = Instant::now();
    let st = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-H", "X-Auth-Token: x"])
        .arg(&url)
        .status()
        .unwrap();
    let curl = t.elapsed().as_secs_f64();
    assert!(st.success());
    // The same work done by standard tools: download, write a file, sha512 the bytes.
    let piped = d.join("curl.raw");
    let t = Instant::now();
    let st = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; curl -sf -H 'X-Auth-Token: x' '{url}' | tee '{}' | sha512sum \
             >/dev/null && sync '{}'",
            piped.display(),
            piped.display()
        ))
        .status()
        .unwrap();
    let curl_tools = t.elapsed().as_secs_f64();
    assert!(st.success());
    std::fs::remove_file(&piped).unwrap();
    let out = d.join("disk.raw");
    let t = Instant::now();
    let r = run_spec(d, &spec(&glance.url, &id, None, &out));
    let ours = t.elapsed().as_secs_f64();
    assert_eq!(r.code, 0, "{}", r.json);
    let mb = |s: f64| (1u64 << 30) as f64 / s / 1e6;
    eprintln!(
        "1 GiB from Glance: curl -o /dev/null {curl:.2} s ({:.0} MB/s); \
         curl | tee file | sha512sum + sync {curl_tools:.2} s ({:.0} MB/s); imgpipe run \
         (sha512 + size verify, inspect, file sink with fsync) {ours:.2} s ({:.0} MB/s); \
         ratio vs curl -o /dev/null {:.2}, vs curl|tee|sha512sum {:.2}",
        mb(curl),
        mb(curl_tools),
        mb(ours),
        ours / curl,
        ours / curl_tools
    );
}
