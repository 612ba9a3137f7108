//! The wired pipeline against real tools: qemu-img decodes and re-reads, cryptsetup and
//! pyca/cryptography check encryption, the openssl CLI signs. Every rejection is checked to
//! leave nothing at the target.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use imgpipe::spec::{EncryptFormat, EncryptSpec, SignatureSpec, SinkSpec, SinkTarget, SourceSpec};
use imgpipe::{Progress, RunReport, Spec, Status};

fn require(tool: &str) -> bool {
    let ok = Command::new(tool).arg("--version").output().is_ok();
    if !ok {
        assert!(
            std::env::var("IMGPIPE_REQUIRE_ORACLES").is_err(),
            "{tool} is required"
        );
        eprintln!("skipping: {tool} not installed");
    }
    ok
}

fn oracle_python() -> Option<PathBuf> {
    let p = std::env::var_os("IMGPIPE_ORACLE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"));
    if p.exists() {
        Some(p)
    } else {
        assert!(
            std::env::var("IMGPIPE_REQUIRE_ORACLES").is_err(),
            "oracle venv missing"
        );
        eprintln!("skipping: no oracle venv");
        None
    }
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pseudo-random raw disk with holes and a length that is not a cluster multiple.
fn raw_image(dir: &Path, len: usize) -> (PathBuf, Vec<u8>) {
    let mut s = 0x853c49e6748fea9bu64;
    let mut v = vec![0u8; len];
    for (i, c) in v.chunks_mut(8).enumerate() {
        if (i / 4096) % 4 == 1 {
            continue;
        }
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let b = s.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    let p = dir.join("src.raw");
    std::fs::write(&p, &v).unwrap();
    (p, v)
}

fn run(spec: &Spec) -> RunReport {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(imgpipe::run(spec, Arc::new(Progress::default())))
}

fn spec_for(src: &Path, out: &Path) -> Spec {
    let mut s = Spec::new(SourceSpec::File(src.to_path_buf()));
    s.sink = Some(SinkSpec {
        target: SinkTarget::File(out.to_path_buf()),
        zeroes: None,
    });
    s
}

#[test]
fn qcow2_is_decoded_in_one_pass_and_equals_qemu_img_convert() {
    if !require("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = raw_image(dir.path(), (6 << 20) + 4096);
    let q = dir.path().join("img.qcow2");
    sh(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-c"])
        .arg(&raw)
        .arg(&q));
    let out = dir.path().join("disk.raw");
    let mut spec = spec_for(&q, &out);
    spec.inspect.disk_format = Some(imgpipe::format::Format::Qcow2);
    spec.verify.report = vec![imgpipe::hash::Algorithm::Sha256];
    let r = run(&spec);
    assert_eq!(r.status, Status::Ok, "{:?}", r.reason);
    assert_eq!(r.format.as_deref(), Some("qcow2"));
    assert_eq!(r.virtual_size, Some(data.len() as u64));
    // The digest is of the qcow2 container bytes (what Glance hashes), not of the disk.
    let q_bytes = std::fs::read(&q).unwrap();
    let mut h = imgpipe::hash::Hasher::new(imgpipe::hash::Algorithm::Sha256);
    h.update(&q_bytes);
    assert_eq!(r.hashes["sha256"], h.finish_hex());
    assert_eq!(
        std::fs::read(&out).unwrap(),
        data,
        "decoded disk differs from the source"
    );
}

#[test]
fn unsafe_or_mismatched_images_are_rejected_before_anything_is_written() {
    if !require("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = raw_image(dir.path(), 1 << 20);
    let backed = dir.path().join("backed.qcow2");
    sh(Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&raw)
        .arg(&backed));
    let datafile = dir.path().join("ext.qcow2");
    sh(Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-o"])
        .arg(format!(
            "data_file={}",
            dir.path().join("ext.data").display()
        ))
        .arg(&datafile)
        .arg("1M"));
    let plain_q = dir.path().join("plain.qcow2");
    sh(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&plain_q));
    let cases: Vec<(&Path, Option<&str>, &str)> = vec![
        (&backed, Some("qcow2"), "qcow2.backing_file"),
        (&datafile, Some("qcow2"), "qcow2.data_file"),
        (&plain_q, Some("raw"), "policy.format_mismatch"),
    ];
    for (img, declared, check) in cases {
        let out = dir.path().join("disk.raw");
        let mut spec = spec_for(img, &out);
        spec.inspect.disk_format = declared.map(|d| d.parse().unwrap());
        let r = run(&spec);
        assert_eq!(
            r.status,
            Status::Rejected,
            "{}: {:?}",
            img.display(),
            r.reason
        );
        assert_eq!(r.exit_code(), 3);
        assert!(
            r.check
                .as_deref()
                .is_some_and(|c| c.starts_with(check.split('.').next().unwrap())),
            "{}: check {:?}, reason {:?}",
            img.display(),
            r.check,
            r.reason
        );
        assert!(
            r.reason.as_deref().unwrap().contains(check),
            "{:?}",
            r.reason
        );
        assert!(!out.exists());
        assert!(!dir.path().join("disk.raw.part").exists());
    }
}

/// What reached the sink, in order ("begin", "write", "finish", "abort").
type SinkCalls = Arc<std::sync::Mutex<Vec<&'static str>>>;

/// Wraps the real sink the spec built and records every call before passing it on. It
/// observes; every call still goes to the real sink. (`Sink` is an `async_trait` trait; this
/// crate has no `async-trait` dependency, so the methods are written in their expanded form.)
struct CountingSink {
    inner: Box<dyn imgpipe::core::Sink>,
    calls: SinkCalls,
}

type SinkFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = imgpipe::Result<T>> + Send + 'a>>;

impl imgpipe::core::Sink for CountingSink {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn begin<'s, 'i, 'f>(&'s mut self, info: &'i imgpipe::core::DiskInfo) -> SinkFuture<'f, ()>
    where
        's: 'f,
        'i: 'f,
        Self: 'f,
    {
        self.calls.lock().unwrap().push("begin");
        self.inner.begin(info)
    }
    fn write<'s, 'f>(&'s mut self, extent: imgpipe::core::DiskExtent) -> SinkFuture<'f, ()>
    where
        's: 'f,
        Self: 'f,
    {
        self.calls.lock().unwrap().push("write");
        self.inner.write(extent)
    }
    fn finish<'f>(self: Box<Self>) -> SinkFuture<'f, imgpipe::core::SinkReport>
    where
        Self: 'f,
    {
        self.calls.lock().unwrap().push("finish");
        self.inner.finish()
    }
    fn abort<'f>(self: Box<Self>) -> SinkFuture<'f, ()>
    where
        Self: 'f,
    {
        self.calls.lock().unwrap().push("abort");
        self.inner.abort()
    }
}

/// Build the spec's pipeline with the real stages, put a [`CountingSink`] around its sink, run.
fn run_counting(spec: &Spec) -> (imgpipe::core::RunOutcome, Vec<&'static str>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut p, _warnings) = imgpipe::assembly::build(spec).await.unwrap();
        let calls = SinkCalls::default();
        let (stage, sink) = p.disk.take().expect("the spec has a sink");
        p.disk = Some((
            stage,
            Box::new(CountingSink {
                inner: sink,
                calls: calls.clone(),
            }),
        ));
        let out = p.run(Arc::new(Progress::default())).await;
        let calls = calls.lock().unwrap().clone();
        (out, calls)
    })
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Images rejected at their header (a backing file, an external data file, a polyglot, a
/// declared format that is not the detected one), each carrying megabytes of data after the
/// header: through the real inspector, decoder and file sink, not one `begin` or `write`
/// reaches the sink, the sink is aborted, and the sink's directory holds nothing new. The
/// same harness on an accepted image and on one rejected at its last byte shows the wrapper
/// does see the writes when there are any.
#[test]
fn nothing_reaches_the_sink_before_the_provisional_verdict() {
    if !require("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = raw_image(dir.path(), 6 << 20);
    let zeros = dir.path().join("zeros.raw");
    std::fs::write(&zeros, vec![0u8; data.len()]).unwrap();
    // Data in the image, the rest from a backing file (qemu-img writes what differs).
    let backed = dir.path().join("backed.qcow2");
    sh(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-F", "raw", "-B"])
        .arg(&zeros)
        .arg(&raw)
        .arg(&backed));
    let datafile = dir.path().join("ext.qcow2");
    sh(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-o"])
        .arg(format!(
            "data_file={},data_file_raw=on",
            dir.path().join("ext.data").display()
        ))
        .arg(&raw)
        .arg(&datafile));
    let plain = dir.path().join("plain.qcow2");
    sh(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&plain));
    // A qcow2 that also carries an MBR boot signature at 510: a polyglot.
    let poly = dir.path().join("poly.qcow2");
    let mut bytes = std::fs::read(&plain).unwrap();
    bytes[510..512].copy_from_slice(&[0x55, 0xAA]);
    std::fs::write(&poly, &bytes).unwrap();
    assert!(
        bytes.len() > 4 << 20,
        "the images must carry data after the header"
    );

    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("disk.raw");
    let cases: Vec<(&Path, Option<&str>, &str)> = vec![
        (&backed, Some("qcow2"), "qcow2.backing_file"),
        (&backed, None, "qcow2.backing_file"),
        (&datafile, Some("qcow2"), "qcow2.data_file"),
        (&poly, Some("qcow2"), "polyglot"),
        (&poly, None, "polyglot"),
        (&plain, Some("raw"), "policy.format_mismatch"),
    ];
    for (img, declared, check) in cases {
        let mut spec = spec_for(img, &out);
        spec.inspect.disk_format = declared.map(|d| d.parse().unwrap());
        let (outcome, calls) = run_counting(&spec);
        let err = outcome.result.unwrap_err();
        assert!(err.kind().is_rejection(), "{}: {err}", img.display());
        assert!(
            err.to_string().contains(check),
            "{} ({declared:?}): expected {check}, got {err}",
            img.display()
        );
        assert_eq!(
            calls,
            vec!["abort"],
            "{} ({declared:?}): the sink saw {calls:?} before the verdict {check}",
            img.display()
        );
        assert!(
            dir_entries(&out_dir).is_empty(),
            "{:?}",
            dir_entries(&out_dir)
        );
    }

    // Control: the accepted image goes through the same wrapper with begin, writes, finish.
    let mut spec = spec_for(&plain, &out);
    spec.inspect.disk_format = Some(imgpipe::format::Format::Qcow2);
    let (outcome, calls) = run_counting(&spec);
    outcome.result.unwrap();
    assert_eq!(calls.first(), Some(&"begin"), "{calls:?}");
    assert_eq!(calls.last(), Some(&"finish"), "{calls:?}");
    assert!(calls.iter().filter(|c| **c == "write").count() > 1);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    std::fs::remove_file(&out).unwrap();
    // Control: a verdict at the last byte (wrong digest) lets writes through, then aborts.
    spec.verify
        .digests
        .push((imgpipe::hash::Algorithm::Sha256, "11".repeat(32)));
    let (outcome, calls) = run_counting(&spec);
    assert!(outcome.result.is_err());
    assert_eq!(calls.first(), Some(&"begin"), "{calls:?}");
    assert_eq!(calls.last(), Some(&"abort"), "{calls:?}");
    assert!(
        dir_entries(&out_dir).is_empty(),
        "{:?}",
        dir_entries(&out_dir)
    );
}

#[test]
fn luks1_output_opens_in_qemu_img_and_cryptsetup() {
    if !require("qemu-img") || !require("cryptsetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = raw_image(dir.path(), (3 << 20) + 512 * 3);
    let q = dir.path().join("img.qcow2");
    sh(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&q));
    let pass = dir.path().join("pass.txt");
    std::fs::write(&pass, "correct horse").unwrap();
    for (format, name) in [
        (EncryptFormat::Luks1, "luks1"),
        (EncryptFormat::Luks2, "luks2"),
    ] {
        let out = dir.path().join(format!("disk.{name}"));
        let mut spec = spec_for(&q, &out);
        spec.encrypt = Some(EncryptSpec {
            format,
            cipher: "aes-xts-plain64".into(),
            key_size: 512,
            passphrase_file: Some(pass.clone()),
            key_file: None,
            key_hex_file: None,
            sector_size: 512,
            pbkdf_iterations: Some(1000),
            pbkdf: Some("pbkdf2".into()),
        });
        let r = run(&spec);
        assert_eq!(r.status, Status::Ok, "{:?}", r.reason);
        sh(Command::new("cryptsetup").arg("luksDump").arg(&out));
        sh(Command::new("cryptsetup")
            .args(["open", "--test-passphrase", "--key-file"])
            .arg(&pass)
            .arg(&out));
        let wrong = dir.path().join("wrong.txt");
        std::fs::write(&wrong, "wrong horse").unwrap();
        let st = Command::new("cryptsetup")
            .args(["open", "--test-passphrase", "--key-file"])
            .arg(&wrong)
            .arg(&out)
            .output()
            .unwrap();
        assert!(!st.status.success(), "a wrong passphrase opened {name}");
        if format == EncryptFormat::Luks1 {
            let back = dir.path().join("back.raw");
            sh(Command::new("qemu-img")
                .args(["convert", "--object"])
                .arg(format!("secret,id=s0,file={}", pass.display()))
                .arg("--image-opts")
                .arg(format!(
                    "driver=luks,key-secret=s0,file.filename={}",
                    out.display()
                ))
                .args(["-O", "raw"])
                .arg(&back));
            let got = std::fs::read(&back).unwrap();
            // The payload is whole sectors: the source, then zero padding.
            assert_eq!(&got[..data.len()], &data[..]);
            assert!(got[data.len()..].iter().all(|b| *b == 0));
        }
    }
}

/// AES-256-XTS (512-bit key: AWS-LC) and AES-128-XTS (256-bit key: the bulk-ECB backend on
/// 512-byte sectors), each decrypted by pyca/cryptography.
#[test]
fn plain_dm_crypt_output_decrypts_with_pyca_cryptography() {
    for key_bits in [512u32, 256] {
        plain_dm_crypt_round_trip(key_bits);
    }
}

fn plain_dm_crypt_round_trip(key_bits: u32) {
    let Some(py) = oracle_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = raw_image(dir.path(), 2 << 20);
    let key_hex: String = (0..key_bits / 8)
        .map(|i| format!("{:02x}", (i * 37 + 11) as u8))
        .collect();
    let keyf = dir.path().join("key.hex");
    std::fs::write(&keyf, format!("{key_hex}\n")).unwrap();
    let out = dir.path().join("disk.plain");
    let mut spec = spec_for(&raw, &out);
    spec.encrypt = Some(EncryptSpec {
        format: EncryptFormat::Plain,
        cipher: "aes-xts-plain64".into(),
        key_size: key_bits,
        passphrase_file: None,
        key_file: None,
        key_hex_file: Some(keyf),
        sector_size: 512,
        pbkdf_iterations: None,
        pbkdf: None,
    });
    let r = run(&spec);
    assert_eq!(r.status, Status::Ok, "{:?}", r.reason);
    let enc = std::fs::read(&out).unwrap();
    assert_eq!(
        enc.len(),
        data.len(),
        "plain mode writes every sector, holes included"
    );
    assert_ne!(&enc[..4096], &data[..4096]);
    let back = dir.path().join("back.raw");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../imgpipe-crypto/tests/oracles/xts_cryptography.py");
    sh(Command::new(py)
        .arg(script)
        .args(["decrypt", &key_hex, "512", "0"])
        .arg(&out)
        .arg(&back));
    assert_eq!(std::fs::read(&back).unwrap(), data);
}

#[test]
fn signed_image_verifies_in_the_same_pass_and_tampering_is_rejected() {
    if !require("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = raw_image(dir.path(), 3 << 20);
    let key = dir.path().join("key.pem");
    let cert = dir.path().join("cert.pem");
    sh(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=signer",
            "-days",
            "2",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    // The recipe Glance documents: openssl dgst -sha256 -sign key -sigopt rsa_padding_mode:pss.
    let sig = dir.path().join("sig.bin");
    sh(Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key)
        .args(["-sigopt", "rsa_padding_mode:pss", "-out"])
        .arg(&sig)
        .arg(&raw));
    let b64 = Command::new("base64")
        .args(["-w", "0"])
        .arg(&sig)
        .output()
        .unwrap()
        .stdout;
    let signature = SignatureSpec {
        signature: String::from_utf8(b64).unwrap(),
        hash_method: "SHA-256".into(),
        key_type: "RSA-PSS".into(),
        certificate: Some(cert.clone()),
        ..Default::default()
    };
    let out = dir.path().join("disk.raw");
    let mut spec = spec_for(&raw, &out);
    spec.verify.signature = Some(signature.clone());
    spec.verify.report = vec![
        imgpipe::hash::Algorithm::Sha256,
        imgpipe::hash::Algorithm::Sha512,
    ];
    let r = run(&spec);
    assert_eq!(r.status, Status::Ok, "{:?}", r.reason);
    assert!(r.passed.iter().any(|p| p == "signature"), "{:?}", r.passed);
    // One sha256 hasher served both the report and the signature.
    assert_eq!(
        r.stages.iter().filter(|s| s.name == "hash:sha256").count(),
        1
    );
    std::fs::remove_file(&out).unwrap();

    // One flipped byte at the very end: rejected after streaming, nothing published.
    let mut bad = data.clone();
    *bad.last_mut().unwrap() ^= 1;
    let bad_path = dir.path().join("bad.raw");
    std::fs::write(&bad_path, &bad).unwrap();
    let mut spec = spec_for(&bad_path, &out);
    spec.verify.signature = Some(signature.clone());
    let r = run(&spec);
    assert_eq!(r.status, Status::Rejected);
    assert_eq!(
        r.kind,
        Some(imgpipe::ErrorKind::BadSignature),
        "{:?}",
        r.reason
    );
    assert_eq!(r.phase, Some("streaming"));
    assert!(!out.exists());

    // A wrong hash method is rejected too (after streaming: the digest differs).
    let mut spec = spec_for(&raw, &out);
    spec.verify.signature = Some(SignatureSpec {
        hash_method: "SHA-512".into(),
        ..signature.clone()
    });
    let r = run(&spec);
    assert_eq!(r.status, Status::Rejected, "{:?}", r.reason);
    assert!(!out.exists());

    // Invalid properties fail before streaming.
    let mut spec = spec_for(&raw, &out);
    spec.verify.signature = Some(SignatureSpec {
        key_type: "RSA-PKCS1".into(),
        ..signature
    });
    let r = run(&spec);
    assert_eq!(r.status, Status::Rejected);
    assert_eq!(
        r.bytes_read, 0,
        "a property error must stop the run before streaming"
    );
    assert_eq!(r.phase, Some("before_streaming"), "{:?}", r.reason);
    assert!(!out.exists());
}
