//! `[cache] mode = "raw"` through the real binary: a qcow2 is verified and decoded once, the
//! decoded disk is cached under a key kept outside the cache directory, and every hit streams
//! the cached disk through its keyed digest (no decode) — with qemu-img as the oracle for the
//! decoded bytes and openssl for the signing certificates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::coreutils_sum;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn imgpipe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgpipe"))
}

fn required(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg(if tool == "openssl" {
            "version"
        } else {
            "--version"
        })
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("IMGPIPE_REQUIRE_ORACLES").as_deref() != Ok("1"),
            "{tool} is required"
        );
        eprintln!("skip: {tool} not available");
    }
    ok
}

/// Pseudo-random bytes with 64 KiB holes.
fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut v = vec![0u8; len];
    for (i, c) in v.chunks_mut(8).enumerate() {
        if (i / 8192) % 3 == 2 {
            continue;
        }
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let b = s.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    v
}

fn sha512(data: &[u8]) -> String {
    coreutils_sum("sha512", data)
}

fn sh(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `[cache]` section every raw-mode spec here uses (key file next to the cache dir).
const RAW_CACHE: &str = "[cache]\ndir = \"cache\"\nmode = \"raw\"\nkey_file = \"cache.key\"\n";

/// A raw-mode spec: `source` path, the sections between `[source]` and `[sink]` (inspect,
/// verify, encrypt), the sink `disk`, and [`RAW_CACHE`].
fn raw_spec(source: &str, middle: &str, disk: &str) -> String {
    format!("[source]\npath = \"{source}\"\n{middle}[sink]\npath = \"{disk}\"\n{RAW_CACHE}")
}

struct Run {
    code: i32,
    json: serde_json::Value,
}

impl Run {
    fn passed(&self) -> Vec<String> {
        self.json["passed"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
    fn check(&self) -> String {
        self.json["check"].as_str().unwrap_or_default().to_string()
    }
}

fn run(dir: &Path, spec: &str) -> Run {
    let p = dir.join("spec.toml");
    std::fs::write(&p, spec).unwrap();
    let out = imgpipe()
        .current_dir(dir)
        .args(["run", "--json", "--progress", "never"])
        .arg(&p)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    Run {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "bad JSON ({e}): {stdout} / {}",
                String::from_utf8_lossy(&out.stderr)
            )
        }),
    }
}

fn entry_files(cache: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cache)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default()
}

fn write_key(path: &Path) {
    std::fs::write(path, image(32, 99)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A qcow2 of `data` made by qemu-img.
fn qcow2_of(d: &Path, data: &[u8]) -> Vec<u8> {
    std::fs::write(d.join("img.raw"), data).unwrap();
    sh(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(d.join("img.raw"))
        .arg(d.join("img.qcow2")));
    std::fs::read(d.join("img.qcow2")).unwrap()
}

#[test]
fn raw_mode_fills_once_hits_without_decoding_and_rejects_tampering() {
    if !required("qemu-img") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let data = image((3 << 20) + 8192, 21);
    let qcow = qcow2_of(d, &data);
    let digest = sha512(&qcow);
    write_key(&d.join("cache.key"));
    let spec = |disk: &str, extra: &str| {
        let middle = format!(
            "[inspect]\ndisk_format = \"qcow2\"\n{extra}\n[verify]\nsha512 = \"{digest}\"\n"
        );
        raw_spec("img.qcow2", &middle, disk)
    };
    let cache = d.join("cache");

    // Fill: verified as qcow2, decoded; the entry holds the decoded disk.
    let r = run(d, &spec("disk1.raw", ""));
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(r.passed().contains(&"cache.fill".to_string()), "{}", r.json);
    assert!(r.passed().contains(&"digest.sha512".to_string()));
    assert_eq!(std::fs::read(d.join("disk1.raw")).unwrap(), data);
    let datafiles = entry_files(&cache, "data");
    assert_eq!(datafiles.len(), 1);
    assert_eq!(
        std::fs::read(&datafiles[0]).unwrap(),
        data,
        "entry = decoded disk"
    );
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&entry_files(&cache, "json")[0]).unwrap()).unwrap();
    assert_eq!(sidecar["mode"], "raw");
    assert_eq!(sidecar["format"], "qcow2");
    assert_eq!(sidecar["digests"]["sha512"], digest.as_str());
    assert!(sidecar["mac"].as_str().is_some_and(|m| m.len() == 64));

    // Hit: no decode, no image hash; the cached disk's keyed digest is checked instead.
    let r = run(d, &spec("disk2.raw", ""));
    assert_eq!(r.code, 0, "{}", r.json);
    let passed = r.passed();
    assert!(passed.contains(&"cache.hit".to_string()), "{}", r.json);
    assert!(passed.contains(&"cache.raw_digest".to_string()));
    assert!(!passed.contains(&"digest.sha512".to_string()), "{}", r.json);
    let stages = r.json["stages"].to_string();
    assert!(!stages.contains("qcow2"), "{stages}");
    assert_eq!(std::fs::read(d.join("disk2.raw")).unwrap(), data);

    // Operators: verify needs the key; with it the entry checks out.
    let verify = |key: Option<&str>| {
        let mut c = imgpipe();
        c.current_dir(d).args(["cache", "--dir", "cache"]);
        if let Some(k) = key {
            c.args(["--key-file", k]);
        }
        c.arg("verify").output().unwrap()
    };
    assert_eq!(verify(Some("cache.key")).status.code(), Some(0));
    let list = imgpipe()
        .current_dir(d)
        .args(["cache", "--dir", "cache", "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("raw"));

    // A request the entry does not satisfy is refused before streaming, and the entry kept:
    // another declared format, another size.
    let r = run(
        d,
        &spec("disk3.raw", "").replace("disk_format = \"qcow2\"", "disk_format = \"raw\""),
    );
    assert_eq!(
        (r.code, r.check().as_str()),
        (3, "cache.raw_format"),
        "{}",
        r.json
    );
    let r = run(
        d,
        &spec("disk3.raw", "").replace("[verify]\n", "[verify]\nsize = 12345\n"),
    );
    assert_eq!(
        (r.code, r.check().as_str()),
        (3, "cache.raw_record"),
        "{}",
        r.json
    );
    assert!(!d.join("disk3.raw").exists());
    assert_eq!(entry_files(&cache, "data").len(), 1);

    // One flipped byte of the cached disk: exit 3, nothing published, entry dropped.
    {
        let mut b = std::fs::read(&datafiles[0]).unwrap();
        b[100] ^= 0x40;
        std::fs::write(&datafiles[0], &b).unwrap();
    }
    assert_eq!(verify(Some("cache.key")).status.code(), Some(3));
    let r = run(d, &spec("disk4.raw", ""));
    assert_eq!(
        (r.code, r.check().as_str()),
        (3, "cache.raw_digest"),
        "{}",
        r.json
    );
    assert!(!d.join("disk4.raw").exists());
    assert!(
        entry_files(&cache, "json").is_empty(),
        "tampered entry dropped"
    );

    // The next run fills again.
    let r = run(d, &spec("disk5.raw", ""));
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(r.passed().contains(&"cache.fill".to_string()));

    // Tampered data with the sidecar rewritten to match it: the MAC catches the sidecar.
    let datafile = entry_files(&cache, "data").remove(0);
    let jsonfile = entry_files(&cache, "json").remove(0);
    let mut b = std::fs::read(&datafile).unwrap();
    b[200] ^= 1;
    std::fs::write(&datafile, &b).unwrap();
    let mut sc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&jsonfile).unwrap()).unwrap();
    sc["raw"]["keyed_blake3"] = blake3::hash(&b).to_hex().to_string().into();
    std::fs::write(&jsonfile, serde_json::to_vec(&sc).unwrap()).unwrap();
    let r = run(d, &spec("disk6.raw", ""));
    assert_eq!((r.code, r.check().as_str()), (3, "cache.mac"), "{}", r.json);
    assert!(!d.join("disk6.raw").exists());
    assert!(entry_files(&cache, "json").is_empty());

    // The same entry read with another key is not trusted either.
    let r = run(d, &spec("disk7.raw", ""));
    assert_eq!(r.code, 0);
    std::fs::write(d.join("other.key"), image(32, 7)).unwrap();
    std::fs::set_permissions(d.join("other.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = run(
        d,
        &spec("disk8.raw", "").replace("key_file = \"cache.key\"", "key_file = \"other.key\""),
    );
    assert_eq!((r.code, r.check().as_str()), (3, "cache.mac"), "{}", r.json);
    assert!(!d.join("disk8.raw").exists());
}

#[test]
fn raw_mode_key_file_rules() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(d.join("img.raw"), image(1 << 20, 3)).unwrap();
    std::fs::create_dir(d.join("cache")).unwrap();
    let spec = |key: &str| {
        format!(
            "[source]\npath = \"img.raw\"\n[sink]\npath = \"disk.raw\"\n\
             [cache]\ndir = \"cache\"\nmode = \"raw\"\nkey_file = \"{key}\"\n"
        )
    };
    // Inside the cache directory: refused.
    write_key(&d.join("cache/k"));
    let r = run(d, &spec("cache/k"));
    assert_eq!(
        (r.code, r.check().as_str()),
        (2, "cache.key_file"),
        "{}",
        r.json
    );
    // Readable by others: refused.
    std::fs::write(d.join("open.key"), image(32, 5)).unwrap();
    std::fs::set_permissions(d.join("open.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = run(d, &spec("open.key"));
    assert_eq!(
        (r.code, r.check().as_str()),
        (2, "cache.key_file"),
        "{}",
        r.json
    );
    // Too short: refused.
    std::fs::write(d.join("short.key"), b"0123").unwrap();
    std::fs::set_permissions(d.join("short.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = run(d, &spec("short.key"));
    assert_eq!(
        (r.code, r.check().as_str()),
        (2, "cache.key_file"),
        "{}",
        r.json
    );
    assert!(!d.join("disk.raw").exists());
    // Absent: created, 0600, and used.
    let r = run(d, &spec("keys/new.key"));
    assert_eq!(r.code, 0, "{}", r.json);
    let meta = std::fs::metadata(d.join("keys/new.key")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    assert!(r.passed().contains(&"cache.fill".to_string()), "{}", r.json);
}

/// A CA certificate (and its key).
fn make_ca(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    sh(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
        ])
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    (key, cert)
}

#[test]
fn raw_hits_enforce_each_requests_trusted_certificates_and_signature() {
    if !required("qemu-img") || !required("openssl") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let data = image(2 << 20, 8);
    let qcow = qcow2_of(d, &data);
    write_key(&d.join("cache.key"));
    let (ca_key, ca) = make_ca(d, "ca-a");
    let (_, _other_ca) = make_ca(d, "ca-b");
    sh(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=signer",
        ])
        .arg("-keyout")
        .arg(d.join("leaf.key"))
        .arg("-out")
        .arg(d.join("leaf.csr")));
    std::fs::write(d.join("leaf.ext"), "keyUsage=critical,digitalSignature\n").unwrap();
    sh(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(d.join("leaf.csr"))
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(d.join("leaf.ext"))
        .arg("-out")
        .arg(d.join("leaf.pem")));
    // Glance's scheme: RSA-PSS over SHA-256 of the image bytes (the qcow2).
    sh(Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(d.join("leaf.key"))
        .args(["-sigopt", "rsa_padding_mode:pss", "-out"])
        .arg(d.join("sig.bin"))
        .arg(d.join("img.qcow2")));
    use base64::Engine;
    let b64 =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(d.join("sig.bin")).unwrap());
    let spec = |disk: &str, trusted: &str, sig: &str| {
        let middle = format!(
            "[inspect]\ndisk_format = \"qcow2\"\n\
             [verify]\nsha512 = \"{}\"\n[verify.signature]\nsignature = \"{sig}\"\n\
             hash_method = \"SHA-256\"\nkey_type = \"RSA-PSS\"\ncertificate = \"leaf.pem\"\n\
             trusted_certificates = [\"{trusted}\"]\n",
            sha512(&qcow)
        );
        raw_spec("img.qcow2", &middle, disk)
    };
    let r = run(d, &spec("disk1.raw", "ca-a.pem", &b64));
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(r.passed().contains(&"signature".to_string()), "{}", r.json);
    assert!(r.passed().contains(&"cache.fill".to_string()));
    let r = run(d, &spec("disk2.raw", "ca-a.pem", &b64));
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(r.passed().contains(&"cache.hit".to_string()), "{}", r.json);
    assert_eq!(std::fs::read(d.join("disk2.raw")).unwrap(), data);

    // This request trusts only another CA: refused on the hit, before streaming; entry kept.
    let r = run(d, &spec("disk3.raw", "ca-b.pem", &b64));
    assert_eq!(r.code, 3, "{}", r.json);
    assert!(r.check().starts_with("certificate"), "{}", r.json);
    assert!(!d.join("disk3.raw").exists());
    assert_eq!(entry_files(&d.join("cache"), "data").len(), 1);
    // A signature the fill never verified is not served from the entry; checked on the image
    // itself, it fails.
    let mut bad = std::fs::read(d.join("sig.bin")).unwrap();
    bad[7] ^= 1;
    let bad = base64::engine::general_purpose::STANDARD.encode(bad);
    let r = run(d, &spec("disk4.raw", "ca-a.pem", &bad));
    assert_eq!(r.code, 3, "{}", r.json);
    assert!(!d.join("disk4.raw").exists());
}

/// A qcow2 whose clusters are stored out of guest order (written with qemu-io in reverse):
/// the decoder emits the disk out of order, and the fill still computes the entry's keyed
/// digest in its pass (no read-back warning); a wrong digest would make the next hit fail.
#[test]
fn raw_mode_with_clusters_out_of_guest_order() {
    if !required("qemu-img") || !required("qemu-io") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let img = d.join("ooo.qcow2");
    sh(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("4M"));
    sh(Command::new("qemu-io")
        .args(["-c", "write -P 0xab 3M 64k", "-c", "write -P 0xcd 0 64k"])
        .arg(&img));
    sh(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&img)
        .arg(d.join("expected.raw")));
    let expected = std::fs::read(d.join("expected.raw")).unwrap();
    write_key(&d.join("cache.key"));
    let verify = format!(
        "[verify]\nsha512 = \"{}\"\n",
        sha512(&std::fs::read(&img).unwrap())
    );
    let spec = |disk: &str| raw_spec("ooo.qcow2", &verify, disk);
    let r = run(d, &spec("disk1.raw"));
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(r.passed().contains(&"cache.fill".to_string()), "{}", r.json);
    assert!(
        !r.json["warnings"].to_string().contains("reading it back"),
        "hashed in the pass: {}",
        r.json
    );
    let r = run(d, &spec("disk2.raw"));
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(
        r.passed().contains(&"cache.raw_digest".to_string()),
        "{}",
        r.json
    );
    assert_eq!(std::fs::read(d.join("disk1.raw")).unwrap(), expected);
    assert_eq!(std::fs::read(d.join("disk2.raw")).unwrap(), expected);
}

/// 512-byte clusters written by qemu-io in descending guest order: the decoder emits extents
/// smaller than BLAKE3's 1 KiB chunk, out of order, so the in-pass digest has to assemble
/// chunks from halves arriving apart. The hit (a plain sequential keyed hash) must agree, and
/// the entry must equal qemu-img's conversion.
#[test]
fn raw_mode_with_small_clusters_in_reverse_order() {
    if !required("qemu-img") || !required("qemu-io") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let img = d.join("small.qcow2");
    sh(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", "cluster_size=512"])
        .arg(&img)
        .arg("1M"));
    let mut io = Command::new("qemu-io");
    // Descending offsets, odd 512-byte sectors first, then some even ones: halves of 1 KiB
    // chunks arrive far apart; a zero-filled write and untouched ranges leave holes.
    for k in (0..96u32).rev() {
        let off = 1024 * k + 512 + (k % 5) * 4096;
        io.args(["-c", &format!("write -P {} {off} 512", (k % 250) + 1)]);
    }
    for k in (0..64u32).rev().step_by(3) {
        io.args([
            "-c",
            &format!("write -P {} {} 512", k + 3, 1024 * k + 300 * 1024),
        ]);
    }
    io.args([
        "-c",
        "write -z 700k 64k",
        "-c",
        "write -P 0x5a 1047552 1024",
    ]);
    sh(io.arg(&img));
    sh(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&img)
        .arg(d.join("expected.raw")));
    let expected = std::fs::read(d.join("expected.raw")).unwrap();
    write_key(&d.join("cache.key"));
    let digest = sha512(&std::fs::read(&img).unwrap());
    // disk_format declared: an undeclared qcow2 that ends before the inspector decides is
    // decoded as raw and rejected at its end (inspect.final_format), with or without a cache —
    // a disk-stage issue outside this test's subject.
    let middle = format!("[inspect]\ndisk_format = \"qcow2\"\n[verify]\nsha512 = \"{digest}\"\n");
    let spec = |disk: &str| raw_spec("small.qcow2", &middle, disk);
    let r = run(d, &spec("disk1.raw"));
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(r.passed().contains(&"cache.fill".to_string()), "{}", r.json);
    assert!(
        !r.json["warnings"].to_string().contains("reading it back"),
        "{}",
        r.json
    );
    let entry = entry_files(&d.join("cache"), "data").remove(0);
    assert_eq!(std::fs::read(&entry).unwrap(), expected);
    let r = run(d, &spec("disk2.raw"));
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(r.passed().contains(&"cache.hit".to_string()), "{}", r.json);
    assert_eq!(std::fs::read(d.join("disk2.raw")).unwrap(), expected);
    let v = imgpipe()
        .current_dir(d)
        .args([
            "cache",
            "--dir",
            "cache",
            "--key-file",
            "cache.key",
            "verify",
        ])
        .output()
        .unwrap();
    assert_eq!(v.status.code(), Some(0));
}

/// Every other format qemu-img writes: the fill decodes it into the entry, the hit serves the
/// same disk as `qemu-img convert -O raw`.
#[test]
fn raw_mode_fill_and_hit_for_each_format() {
    if !required("qemu-img") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write_key(&d.join("cache.key"));
    let data = image((2 << 20) + 65536, 13);
    std::fs::write(d.join("src.raw"), &data).unwrap();
    for (fmt, opts) in [
        ("vmdk", "subformat=monolithicSparse"),
        ("vmdk", "subformat=streamOptimized"),
        ("vpc", "subformat=dynamic"),
        ("vhdx", "subformat=dynamic"),
        ("vdi", "static=off"),
    ] {
        let img = d.join(format!("img-{fmt}-{}", opts.len()));
        sh(Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", fmt, "-o", opts])
            .arg(d.join("src.raw"))
            .arg(&img));
        let exp = d.join("expected.raw");
        sh(Command::new("qemu-img")
            .args(["convert", "-q", "-f", fmt, "-O", "raw"])
            .arg(&img)
            .arg(&exp));
        let expected = std::fs::read(&exp).unwrap();
        let verify = format!(
            "[verify]\nsha512 = \"{}\"\n",
            sha512(&std::fs::read(&img).unwrap())
        );
        let source = img.display().to_string();
        let spec = |disk: &str| raw_spec(&source, &verify, disk);
        let r = run(d, &spec("fill.raw"));
        assert_eq!(r.code, 0, "{fmt} {opts}: {}", r.json);
        assert!(
            r.passed().contains(&"cache.fill".to_string()),
            "{fmt}: {}",
            r.json
        );
        let r = run(d, &spec("hit.raw"));
        assert_eq!(r.code, 0, "{fmt} {opts}: {}", r.json);
        assert!(
            r.passed().contains(&"cache.hit".to_string()),
            "{fmt}: {}",
            r.json
        );
        assert_eq!(
            std::fs::read(d.join("fill.raw")).unwrap(),
            expected,
            "{fmt}"
        );
        assert_eq!(std::fs::read(d.join("hit.raw")).unwrap(), expected, "{fmt}");
        std::fs::remove_file(d.join("fill.raw")).unwrap();
        std::fs::remove_file(d.join("hit.raw")).unwrap();
    }
}

/// A request that expects other image bytes than the entry's fill verified is never served
/// from the entry: it is checked against the image itself (and fails there), and the entry
/// stays for requests it does satisfy.
#[test]
fn raw_entry_is_not_served_to_a_request_expecting_another_digest() {
    if !required("qemu-img") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let data = image(1 << 20, 4);
    let qcow = qcow2_of(d, &data);
    write_key(&d.join("cache.key"));
    let spec = |disk: &str, digest: &str| {
        raw_spec(
            "img.qcow2",
            &format!("[verify]\nsha512 = \"{digest}\"\n"),
            disk,
        )
    };
    let good = sha512(&qcow);
    let r = run(d, &spec("disk1.raw", &good));
    assert!(r.passed().contains(&"cache.fill".to_string()), "{}", r.json);
    let other = sha512(b"some other image");
    let r = run(d, &spec("disk2.raw", &other));
    assert_eq!(
        (r.code, r.check().as_str()),
        (3, "digest.sha512"),
        "{}",
        r.json
    );
    assert!(!r.passed().contains(&"cache.hit".to_string()), "{}", r.json);
    assert!(
        r.json["stages"].to_string().contains("qcow2"),
        "the image itself was read and decoded: {}",
        r.json
    );
    assert!(!d.join("disk2.raw").exists());
    assert_eq!(entry_files(&d.join("cache"), "data").len(), 1);
    let r = run(d, &spec("disk3.raw", &good));
    assert!(r.passed().contains(&"cache.hit".to_string()), "{}", r.json);
    assert_eq!(std::fs::read(d.join("disk3.raw")).unwrap(), data);
}

/// The raw entry holds the plaintext disk: a hit encrypts it on the way out exactly as the
/// fill did (dm-crypt plain is deterministic for one key), and the request's limits apply.
#[test]
fn raw_mode_with_encryption_and_limits() {
    if !required("qemu-img") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let data = image(2 << 20, 31);
    let qcow = qcow2_of(d, &data);
    write_key(&d.join("cache.key"));
    std::fs::write(d.join("xts.key"), image(64, 77)).unwrap();
    let spec = |disk: &str, extra: &str| {
        let middle = format!(
            "[inspect]\n{extra}\n[verify]\nsha512 = \"{}\"\n\
             [encrypt]\nformat = \"plain\"\nkey_file = \"xts.key\"\n",
            sha512(&qcow)
        );
        raw_spec("img.qcow2", &middle, disk)
    };
    let r = run(d, &spec("enc1.raw", ""));
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(r.passed().contains(&"cache.fill".to_string()), "{}", r.json);
    let entry = entry_files(&d.join("cache"), "data").remove(0);
    assert_eq!(
        std::fs::read(&entry).unwrap(),
        data,
        "the entry is the plaintext disk"
    );
    let r = run(d, &spec("enc2.raw", ""));
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(r.passed().contains(&"cache.hit".to_string()), "{}", r.json);
    let (c1, c2) = (
        std::fs::read(d.join("enc1.raw")).unwrap(),
        std::fs::read(d.join("enc2.raw")).unwrap(),
    );
    assert_eq!(c1, c2);
    assert_eq!(c1.len(), data.len());
    assert_ne!(c1, data);

    let r = run(d, &spec("enc3.raw", "max_virtual_size = 1048576"));
    assert_eq!(
        (r.code, r.check().as_str()),
        (3, "cache.raw_virtual_size"),
        "{}",
        r.json
    );
    assert!(!d.join("enc3.raw").exists());
}

/// Runs the cache cannot serve say so and leave no entry: standard input (any mode), and in
/// mode raw a run without a sink or with `format = "preserve"` (the entry would be the
/// decoded disk, which such a run never produces).
#[test]
fn runs_the_cache_cannot_serve_are_not_cached_and_say_so() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let data = image(1 << 20, 57);
    std::fs::write(d.join("img.raw"), &data).unwrap();
    write_key(&d.join("cache.key"));
    let digest = sha512(&data);
    let verify = format!("[verify]\nsha512 = \"{digest}\"\n");
    let no_entry = |what: &str, r: &Run, warning: &str| {
        assert_eq!(r.code, 0, "{what}: {}", r.json);
        assert!(
            r.json["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w.as_str().unwrap().contains(warning)),
            "{what}: {}",
            r.json
        );
        assert!(
            !r.passed().iter().any(|c| c.starts_with("cache.")),
            "{what}: {}",
            r.json
        );
        assert!(
            entry_files(&d.join("cache"), "data").is_empty()
                && entry_files(&d.join("cache"), "json").is_empty()
                && entry_files(&d.join("cache"), "part").is_empty(),
            "{what}: an entry was written"
        );
        assert_eq!(r.json["hashes"]["sha512"], digest.as_str(), "{what}");
    };
    let r = run(
        d,
        &format!("[source]\npath = \"img.raw\"\n{verify}{RAW_CACHE}"),
    );
    no_entry("raw mode, no sink", &r, "is not cached");
    let r = run(
        d,
        &raw_spec(
            "img.raw",
            &format!("{verify}[convert]\nformat = \"preserve\"\n"),
            "preserved.raw",
        ),
    );
    no_entry("raw mode, preserve", &r, "is not cached");
    assert_eq!(std::fs::read(d.join("preserved.raw")).unwrap(), data);

    // Standard input, mode original.
    let spec = d.join("stdin.toml");
    std::fs::write(
        &spec,
        format!(
            "[source]\npath = \"-\"\n{verify}[sink]\npath = \"from-stdin.raw\"\n\
             [cache]\ndir = \"cache\"\n"
        ),
    )
    .unwrap();
    let out = imgpipe()
        .current_dir(d)
        .args(["run", "--json", "--progress", "never"])
        .arg(&spec)
        .stdin(std::fs::File::open(d.join("img.raw")).unwrap())
        .output()
        .unwrap();
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_slice(&out.stdout).unwrap(),
    };
    no_entry("standard input", &r, "standard input cannot be cached");
    assert_eq!(std::fs::read(d.join("from-stdin.raw")).unwrap(), data);
}

/// Through the binary: a cache directory others can write is refused by `imgpipe run` and by
/// `imgpipe cache` alike (exit 2, check `cache.dir`, nothing published), and an entry file
/// that is not a regular file is quarantined by `imgpipe cache prune` with a warning naming
/// `cache.entry_file` on stderr.
#[test]
fn the_binary_refuses_an_open_cache_dir_and_reports_quarantine() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let data = image(1 << 20, 61);
    std::fs::write(d.join("img.raw"), &data).unwrap();
    let spec = format!(
        "[source]\npath = \"img.raw\"\n[verify]\nsha512 = \"{}\"\n[sink]\npath = \"disk.raw\"\n\
         [cache]\ndir = \"cache\"\n",
        sha512(&data)
    );
    let r = run(d, &spec);
    assert_eq!(r.code, 0, "{}", r.json);
    std::fs::remove_file(d.join("disk.raw")).unwrap();
    let cache = d.join("cache");
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = run(d, &spec);
    assert_eq!((r.code, r.check().as_str()), (2, "cache.dir"), "{}", r.json);
    assert!(!d.join("disk.raw").exists());
    for args in [&["list"][..], &["verify"], &["prune"], &["evict", "--all"]] {
        let out = imgpipe()
            .current_dir(d)
            .args(["cache", "--dir", "cache"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "cache {args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("cache.dir"),
            "cache {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(entry_files(&cache, "data").len(), 1, "nothing was removed");

    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_file = entry_files(&cache, "data").remove(0);
    std::fs::remove_file(entry_files(&cache, "json").remove(0)).unwrap();
    std::fs::remove_file(&data_file).unwrap();
    std::fs::create_dir(&data_file).unwrap();
    let out = imgpipe()
        .current_dir(d)
        .args(["cache", "--dir", "cache", "prune"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cache.entry_file") && err.contains("a directory"),
        "{err}"
    );
    assert!(!data_file.exists());
    let r = run(d, &spec);
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(r.passed().contains(&"cache.fill".to_string()), "{}", r.json);
    assert_eq!(std::fs::read(d.join("disk.raw")).unwrap(), data);
}
