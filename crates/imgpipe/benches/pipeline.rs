//! Criterion suite (issue 10): every stage alone, the driver's fan-out, and the realistic
//! configurations end to end through the library.
//!
//! - `hash/<algo>`: each hasher over 8 MiB in 1 MiB updates (one core).
//! - `inspect/<format>`: the format inspector over a whole small image (header decision plus
//!   the per-byte cost after the verdict).
//! - `decode/<format>`: each decoder over a qemu-img-made image of the same 64 MiB disk
//!   (random data with holes) — qcow2, vmdk, vhd, vhdx, vdi — fed in 1 MiB chunks; throughput
//!   counts the image bytes fed. Skipped (with a line on stderr) without `qemu-img`.
//! - `fanout/observers-N`: a file source (page cache) into N observers that only count bytes:
//!   the driver's per-observer cost, with no stage work.
//! - `e2e/…`: configurations (a)–(d) of `benches/compare.sh` at 64 MiB, file source → file
//!   sink, through `imgpipe::run`.
//!
//! AES-XTS is measured in `imgpipe-crypto`'s `xts` bench. Run with
//! `cargo bench -p imgpipe --bench pipeline [-- FILTER]`; add `-- --quick` for a fast check.
//! The 2 GiB comparison against the bound and the peers is `benches/compare.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use imgpipe::core::{Chunk, DriverOptions, Finding, Observer, Pipeline};
use imgpipe::format::Format;
use imgpipe::format::decode::{DecodeOptions, decoder_for};
use imgpipe::format::inspect::{Inspector, Policy};
use imgpipe::hash::{Algorithm, Hasher};
use imgpipe::spec::SourceSpec;
use imgpipe::{Progress, Spec, Status};

/// Disk size of the generated images.
const DISK: usize = 64 << 20;
/// Feed size for the sync stages (what the file source reads per chunk).
const FEED: usize = 1 << 20;

/// Deterministic pseudo-random bytes (xorshift64).
fn data(len: usize) -> Vec<u8> {
    let mut s = 0x2545F4914F6CDD1Du64;
    let mut v = vec![0u8; len];
    for c in v.chunks_exact_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        c.copy_from_slice(&s.to_le_bytes());
    }
    v
}

/// The benchmark disk: random data with holes (the last quarter of every 4 MiB is zero), like
/// `benches/mkimage.py` at a small size.
fn disk() -> Vec<u8> {
    let mut v = data(DISK);
    for block in v.chunks_mut(4 << 20) {
        let n = block.len();
        block[n * 3 / 4..].fill(0);
    }
    v
}

/// The scratch directory with `disk.raw` and, when qemu-img exists, the same disk in every
/// decodable container format.
struct Images {
    dir: tempfile::TempDir,
    containers: Vec<(Format, PathBuf)>,
}

impl Images {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("disk.raw"), disk()).unwrap();
        let mut containers = Vec::new();
        let have_qemu = Command::new("qemu-img").arg("--version").output().is_ok();
        if !have_qemu {
            eprintln!("skip: qemu-img not found; decode/* and e2e/c benches are skipped");
        }
        for (format, driver, opts, ext) in [
            (Format::Qcow2, "qcow2", "", "qcow2"),
            (Format::Vmdk, "vmdk", "", "vmdk"),
            (Format::Vhd, "vpc", "subformat=dynamic", "vhd"),
            (Format::Vhdx, "vhdx", "", "vhdx"),
            (Format::Vdi, "vdi", "", "vdi"),
        ] {
            if !have_qemu {
                break;
            }
            let out = dir.path().join(format!("disk.{ext}"));
            let mut cmd = Command::new("qemu-img");
            cmd.args(["convert", "-f", "raw", "-O", driver]);
            if !opts.is_empty() {
                cmd.args(["-o", opts]);
            }
            let st = cmd.arg(dir.path().join("disk.raw")).arg(&out).status();
            assert!(st.unwrap().success(), "qemu-img convert -O {driver}");
            containers.push((format, out));
        }
        Images { dir, containers }
    }

    fn raw(&self) -> PathBuf {
        self.dir.path().join("disk.raw")
    }

    fn container(&self, f: Format) -> Option<&Path> {
        self.containers
            .iter()
            .find(|(g, _)| *g == f)
            .map(|(_, p)| p.as_path())
    }
}

fn hashers(c: &mut Criterion) {
    let buf = data(8 << 20);
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.sample_size(20);
    for algo in Algorithm::ALL {
        g.bench_function(algo.name(), |b| {
            b.iter(|| {
                let mut h = Hasher::new(algo);
                for chunk in buf.chunks(FEED) {
                    h.update(chunk);
                }
                h.finish()
            })
        });
    }
    g.finish();
}

fn inspector(c: &mut Criterion) {
    let imgs = Images::new();
    let mut g = c.benchmark_group("inspect");
    g.sample_size(20);
    let mut cases = vec![(Format::Raw, imgs.raw())];
    if let Some(q) = imgs.container(Format::Qcow2) {
        cases.push((Format::Qcow2, q.to_path_buf()));
    }
    for (format, path) in cases {
        let bytes = std::fs::read(&path).unwrap();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format.to_string(), |b| {
            b.iter(|| {
                let mut i =
                    Inspector::new(Policy::default()).with_stream_len(Some(bytes.len() as u64));
                for chunk in bytes.chunks(FEED) {
                    i.feed(chunk);
                }
                let v = i.finish();
                assert!(v.is_safe());
                v
            })
        });
    }
    g.finish();
}

fn decoders(c: &mut Criterion) {
    let imgs = Images::new();
    let mut g = c.benchmark_group("decode");
    g.sample_size(10);
    for (format, path) in &imgs.containers {
        let image = Bytes::from(std::fs::read(path).unwrap());
        g.throughput(Throughput::Bytes(image.len() as u64));
        let mut opts = DecodeOptions::default();
        opts.stream_len = Some(image.len() as u64);
        g.bench_function(format.to_string(), |b| {
            b.iter(|| {
                let mut dec = decoder_for(*format, &opts).unwrap();
                let mut out = Vec::new();
                let mut covered = 0u64;
                let mut off = 0;
                while off < image.len() {
                    let n = FEED.min(image.len() - off);
                    dec.feed(&image.slice(off..off + n), &mut out).unwrap();
                    covered += out.drain(..).map(|e| e.len()).sum::<u64>();
                    off += n;
                }
                dec.finish(&mut out).unwrap();
                covered += out.drain(..).map(|e| e.len()).sum::<u64>();
                // VHD rounds the disk up to a CHS geometry: compare with the decoder's size.
                let size = dec.virtual_size().unwrap();
                assert!(size >= DISK as u64, "{format}: virtual size {size}");
                assert_eq!(covered, size, "{format}: extents cover the disk");
                covered
            })
        });
    }
    g.finish();
}

/// An observer that only counts: what the driver's fan-out costs per observer.
struct Count(u64);

impl Observer for Count {
    fn name(&self) -> String {
        "count".into()
    }
    fn update(&mut self, chunk: &Chunk) -> imgpipe::Result<()> {
        self.0 += chunk.data.len() as u64;
        Ok(())
    }
    fn finish(self: Box<Self>, total: u64) -> imgpipe::Result<Vec<Finding>> {
        assert_eq!(self.0, total);
        Ok(vec![])
    }
}

fn fanout(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.raw");
    std::fs::write(&img, data(256 << 20)).unwrap();
    let spec = Spec::new(SourceSpec::File(img));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Bytes(256 << 20));
    g.sample_size(10);
    for n in [1usize, 2, 4, 8] {
        g.bench_with_input(BenchmarkId::new("observers", n), &n, |b, &n| {
            b.iter(|| {
                rt.block_on(async {
                    let p = Pipeline {
                        source: imgpipe::assembly::open_source(&spec).await.unwrap(),
                        observers: (0..n)
                            .map(|_| Box::new(Count(0)) as Box<dyn Observer>)
                            .collect(),
                        disk: None,
                        options: DriverOptions::default(),
                    };
                    let o = p.run(Arc::new(Progress::default())).await;
                    assert_eq!(o.bytes_read, 256 << 20);
                    o.result.unwrap();
                })
            })
        });
    }
    g.finish();
}

fn sha_hex(algo: Algorithm, path: &Path) -> String {
    let mut h = Hasher::new(algo);
    h.update(&std::fs::read(path).unwrap());
    h.finish_hex()
}

fn e2e(c: &mut Criterion) {
    let imgs = Images::new();
    let d = imgs.dir.path();
    let raw = imgs.raw();
    let sha512 = sha_hex(Algorithm::Sha512, &raw);
    // A throwaway RSA key and certificate for the signed configurations, as compare.sh does.
    let key = openssl::rsa::Rsa::generate(2048).unwrap();
    let pkey = openssl::pkey::PKey::from_rsa(key).unwrap();
    let mut name = openssl::x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "imgpipe-bench").unwrap();
    let name = name.build();
    let mut cert = openssl::x509::X509Builder::new().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&pkey).unwrap();
    cert.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&openssl::asn1::Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    cert.sign(&pkey, openssl::hash::MessageDigest::sha256())
        .unwrap();
    std::fs::write(d.join("cert.pem"), cert.build().to_pem().unwrap()).unwrap();
    let mut signer =
        openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey).unwrap();
    signer
        .set_rsa_padding(openssl::rsa::Padding::PKCS1_PSS)
        .unwrap();
    signer
        .set_rsa_pss_saltlen(openssl::sign::RsaPssSaltlen::MAXIMUM_LENGTH)
        .unwrap();
    signer.update(&std::fs::read(&raw).unwrap()).unwrap();
    let sig = openssl::base64::encode_block(&signer.sign_to_vec().unwrap());
    std::fs::write(d.join("pass.txt"), "bench-passphrase").unwrap();

    let glance = |src: &Path, format: &str, sha512: &str, size: u64| {
        format!(
            "[source]\npath = {src:?}\n[inspect]\ndisk_format = \"{format}\"\n\
             [verify]\nos_hash_algo = \"sha512\"\nos_hash_value = \"{sha512}\"\nsize = {size}\n"
        )
    };
    let signature = format!(
        "[verify.signature]\nsignature = \"{sig}\"\nhash_method = \"SHA-256\"\n\
         key_type = \"RSA-PSS\"\ncertificate = \"cert.pem\"\n"
    );
    let luks = "[encrypt]\nformat = \"luks1\"\npassphrase_file = \"pass.txt\"\n\
                pbkdf_iterations = 1000\n";
    let sink = "[sink]\npath = \"out.raw\"\n";
    let a = glance(&raw, "raw", &sha512, DISK as u64);
    let mut configs = vec![
        ("a-raw-sha512-inspect", format!("{a}{sink}")),
        ("b-signed", format!("{a}{signature}{sink}")),
        ("d-signed-luks1", format!("{a}{signature}{luks}{sink}")),
    ];
    if let Some(q) = imgs.container(Format::Qcow2) {
        let qlen = std::fs::metadata(q).unwrap().len();
        let qsha = sha_hex(Algorithm::Sha512, q);
        configs.insert(
            2,
            (
                "c-qcow2-raw-sha512",
                format!("{}{sink}", glance(q, "qcow2", &qsha, qlen)),
            ),
        );
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("e2e");
    g.throughput(Throughput::Bytes(DISK as u64));
    g.sample_size(10);
    for (name, toml) in configs {
        let spec = Spec::from_toml(&toml, d).unwrap_or_else(|e| panic!("{name}: {e}"));
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = rt.block_on(imgpipe::run(&spec, Arc::new(Progress::default())));
                assert_eq!(r.status, Status::Ok, "{name}: {:?}", r.reason);
                std::fs::remove_file(d.join("out.raw")).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, hashers, inspector, decoders, fanout, e2e);
criterion_main!(benches);
