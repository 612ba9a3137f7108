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
