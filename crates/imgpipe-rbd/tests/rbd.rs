//! The RBD sink against a real single-node Ceph (mon + bluestore OSD on 127.0.0.1) started by
//! `scripts/services/ceph.sh`. Needs the `librbd` feature:
//!
//! ```text
//! scripts/services/ceph.sh install
//! IMGPIPE_REQUIRE_ORACLES=1 cargo test -p imgpipe-rbd --features librbd
//! cargo test -p imgpipe-rbd --features librbd --release -- --ignored --nocapture   # 1 GiB bench
//! ```
//!
//! Without Ceph installed (or when it cannot start) the tests print a skip line, unless
//! `IMGPIPE_REQUIRE_ORACLES=1`, which turns that into a failure.
#![cfg(feature = "librbd")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use imgpipe_core::{DiskExtent, DiskInfo, ErrorKind, Sink};
use imgpipe_rbd::{RbdOptions, RbdSink};

const MIB: u64 = 1 << 20;
const POOL: &str = "rbd";

// ---------------------------------------------------------------------------------------------
// The cluster: one per test process while any test holds it; stopped by PID in Drop.

struct Ceph {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Drop for Ceph {
    fn drop(&mut self) {
        let st = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
        eprintln!(
            "ceph cluster in {} stopped: {st:?}",
            self.dir.path().display()
        );
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services/ceph.sh")
}

fn require() -> bool {
    std::env::var("IMGPIPE_REQUIRE_ORACLES").as_deref() == Ok("1")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The shared cluster, started on first use; `None` = skip this test.
fn ceph() -> Option<Arc<Ceph>> {
    static SHARED: Mutex<Weak<Ceph>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = shared.upgrade() {
        return Some(c);
    }
    let skip = |why: String| {
        if require() {
            panic!("IMGPIPE_REQUIRE_ORACLES=1 but {why}");
        }
        eprintln!("SKIP (no Ceph): {why}");
        None
    };
    for tool in ["ceph-mon", "ceph-osd", "rbd"] {
        if !on_path(tool) {
            return skip(format!(
                "{tool} is not installed (run scripts/services/ceph.sh install)"
            ));
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("imgpipe-ceph-")
        .tempdir()
        .unwrap();
    let (v1, v2) = (free_port(), free_port());
    let t = Instant::now();
    let out = Command::new("bash")
        .arg(script())
        .arg("start")
        .arg(dir.path())
        .env("IMGPIPE_CEPH_MON_PORT", v1.to_string())
        .env("IMGPIPE_CEPH_MON_V2_PORT", v2.to_string())
        .env("IMGPIPE_CEPH_OBJSTORE", "bluestore")
        .env("IMGPIPE_SERVICE_OWNER_PID", std::process::id().to_string())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    if !out.status.success() {
        return skip(format!("ceph.sh start failed ({})", out.status));
    }
    let conf = String::from_utf8(out.stdout).unwrap();
    let conf = PathBuf::from(conf.lines().last().unwrap_or_default().trim());
    eprintln!(
        "ceph cluster up in {:.1}s, conf {}",
        t.elapsed().as_secs_f64(),
        conf.display()
    );
    let c = Arc::new(Ceph { dir, conf });
    *shared = Arc::downgrade(&c);
    Some(c)
}

impl Ceph {
    fn rbd(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new("timeout")
            .arg("120")
            .arg("rbd")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rbd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ls(&self) -> Vec<String> {
        let out = self.rbd(&["ls", POOL]);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn export(&self, image: &str) -> Vec<u8> {
        self.rbd(&["export", "--no-progress", &format!("{POOL}/{image}"), "-"])
            .stdout
    }

    /// Bytes allocated per the object map (`rbd du`), object granularity.
    fn used(&self, image: &str) -> u64 {
        let out = self.rbd(&["du", "--format", "json", &format!("{POOL}/{image}")]);
        let s = String::from_utf8(out.stdout).unwrap();
        let key = "\"used_size\":";
        let at = s.find(key).unwrap() + key.len();
        s[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    }

    fn opts(&self, image: &str) -> RbdOptions {
        let mut o = RbdOptions::new(POOL, image);
        o.conf = Some(self.conf.clone());
        o
    }
}

fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------------------------
// Test data: a raw disk file with holes, turned into the extents a decoder would emit.

/// Deterministic incompressible bytes (xorshift64*), different per `seed`.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for w in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        w.copy_from_slice(&v[..w.len()]);
    }
}

/// A sparse raw disk of `size` bytes with data at `segments` (start, len), holes elsewhere.
fn make_raw(path: &Path, size: u64, segments: &[(u64, u64)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(start, len)) in segments.iter().enumerate() {
        let mut buf = vec![0u8; len as usize];
        fill(&mut buf, i as u64 + 1);
        f.write_all_at(&buf, start).unwrap();
    }
}

/// Read `path` in `cluster`-byte units; all-zero units become Zero extents (merged), others
/// Data extents merged up to `max_data` bytes.
fn extents(path: &Path, cluster: usize, max_data: usize) -> Vec<DiskExtent> {
    let data = std::fs::read(path).unwrap();
    let mut out: Vec<DiskExtent> = Vec::new();
    for (i, c) in data.chunks(cluster).enumerate() {
        let off = (i * cluster) as u64;
        let zero = c.iter().all(|&b| b == 0);
        match (out.last_mut(), zero) {
            (Some(DiskExtent::Zero { offset, len }), true) if *offset + *len == off => {
                *len += c.len() as u64
            }
            (Some(DiskExtent::Data { offset, data }), false)
                if *offset + data.len() as u64 == off && data.len() + c.len() <= max_data =>
            {
                let mut v = data.to_vec();
                v.extend_from_slice(c);
                *data = Bytes::from(v);
            }
            (_, true) => out.push(DiskExtent::Zero {
                offset: off,
                len: c.len() as u64,
            }),
            (_, false) => out.push(DiskExtent::Data {
                offset: off,
                data: Bytes::copy_from_slice(c),
            }),
        }
    }
    out
}

async fn feed(sink: &mut RbdSink, exts: Vec<DiskExtent>) {
    for e in exts {
        sink.write(e).await.unwrap();
    }
}

fn info(size: u64) -> DiskInfo {
    DiskInfo {
        size: Some(size),
        encrypted: false,
    }
}

/// 25 MiB + 512 B: data at the start, an unaligned run, a fully zero 4 MiB object (8..12 MiB),
/// big data runs and an odd-sized tail.
const SIZE: u64 = 25 * MIB + 512;
const SEGMENTS: &[(u64, u64)] = &[
    (0, MIB),
    (3 * MIB + 4096, 300 * 1024 + 512),
    (5 * MIB, 64 * 1024),
    (6 * MIB + 65536 * 3, 7 * 65536),
    (13 * MIB, 6 * MIB),
    (20 * MIB + 512, 4 * MIB),
    (25 * MIB - 4096, 4096 + 512),
];

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_image_exports_identical_to_the_source_and_holes_stay_unallocated() {
    let Some(ceph) = ceph() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("disk.raw");
    make_raw(&raw, SIZE, SEGMENTS);
    let source = std::fs::read(&raw).unwrap();
    let data_bytes: u64 = source
        .chunks(65536)
        .filter(|c| c.iter().any(|&b| b != 0))
        .map(|c| c.len() as u64)
        .sum();

    // Forward order with cluster-sized (64 KiB, coalesced) extents in the first half and up to
    // 5 MiB (direct) in the second; then the same disk in reverse order.
    let forward = {
        let mut e = extents(&raw, 65536, 65536);
        let split = e.iter().position(|x| x.offset() >= 12 * MIB).unwrap();
        e.truncate(split);
        e.extend(
            extents(&raw, 65536, 5 * MIB as usize)
                .into_iter()
                .filter(|x| x.offset() >= 12 * MIB),
        );
        e
    };
    let mut backward = extents(&raw, 65536, 2 * MIB as usize);
    backward.reverse();

    for (label, exts) in [("forward", forward), ("reverse", backward)] {
        let image = unique(&format!("roundtrip-{label}"));
        let mut sink = Box::new(RbdSink::connect(ceph.opts(&image)).await.unwrap());
        sink.begin(&info(SIZE)).await.unwrap();
        let temp = sink.temp_image().to_owned();
        assert!(temp.starts_with(&format!("{image}.imgpipe-tmp-")), "{temp}");
        feed(&mut sink, exts).await;
        // Not published before finish.
        let ls = ceph.ls();
        assert!(
            ls.contains(&temp) && !ls.contains(&image),
            "{label}: {ls:?}"
        );
        let report = sink.finish().await.unwrap();

        assert_eq!(report.target, format!("{POOL}/{image}"));
        assert_eq!(report.size, SIZE);
        assert_eq!(report.bytes_written, data_bytes, "{label}");
        assert_eq!(
            report.bytes_written + report.zero_bytes_skipped,
            SIZE,
            "{label}"
        );
        assert_eq!(report.zero_bytes_written, 0);
        assert_eq!(report.zero_policy, "skip");

        let ls = ceph.ls();
        assert!(ls.contains(&image), "{label}: {ls:?}");
        // (Other tests run in parallel: look only at this test's names.)
        assert!(
            !ls.iter()
                .any(|n| n.starts_with(&format!("{image}.imgpipe-tmp-")))
        );
        let exported = ceph.export(&image);
        assert_eq!(exported.len() as u64, SIZE, "{label}: exported size");
        assert!(
            exported == source,
            "{label}: rbd export differs from the source"
        );
        // Zero runs were skipped: the all-zero 4 MiB object 2 (8..12 MiB) was never written
        // (writing the zeros would allocate all 25 MiB).
        assert!(
            source[8 * MIB as usize..12 * MIB as usize]
                .iter()
                .all(|&b| b == 0)
        );
        let used = ceph.used(&image);
        assert!(used <= SIZE - 4 * MIB, "{label}: {used} bytes allocated");
        ceph.rbd(&["rm", "--no-progress", &format!("{POOL}/{image}")]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_extents_get_their_zero_runs_written() {
    let Some(ceph) = ceph() else { return };
    let image = unique("encrypted");
    let size = 8 * MIB;
    let mut sink = Box::new(RbdSink::new(ceph.opts(&image)).unwrap());
    sink.begin(&DiskInfo {
        size: Some(size),
        encrypted: true,
    })
    .await
    .unwrap();
    let mut head = vec![0u8; 4096];
    fill(&mut head, 7);
    sink.write(DiskExtent::Data {
        offset: 0,
        data: Bytes::from(head.clone()),
    })
    .await
    .unwrap();
    sink.write(DiskExtent::Zero {
        offset: 4096,
        len: size - 4096,
    })
    .await
    .unwrap();
    let report = sink.finish().await.unwrap();
    assert_eq!(report.zero_policy, "write");
    assert_eq!(report.zero_bytes_written, size - 4096);
    assert_eq!(report.zero_bytes_skipped, 0);
    // Both objects exist: the zeros were really written.
    assert_eq!(ceph.used(&image), size);
    let exported = ceph.export(&image);
    assert_eq!(&exported[..4096], &head[..]);
    assert!(exported[4096..].iter().all(|&b| b == 0));
    assert_eq!(exported.len() as u64, size);
    ceph.rbd(&["rm", "--no-progress", &format!("{POOL}/{image}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_leaves_no_image_under_either_name() {
    let Some(ceph) = ceph() else { return };
    let image = unique("aborted");
    let mut sink = Box::new(RbdSink::connect(ceph.opts(&image)).await.unwrap());
    sink.begin(&info(16 * MIB)).await.unwrap();
    let temp = sink.temp_image().to_owned();
    // Several writes still in flight when abort is called.
    for i in 0..12u64 {
        let mut b = vec![0u8; MIB as usize];
        fill(&mut b, 100 + i);
        sink.write(DiskExtent::Data {
            offset: i * MIB,
            data: Bytes::from(b),
        })
        .await
        .unwrap();
    }
    assert!(ceph.ls().contains(&temp), "temporary image was not created");
    sink.abort().await.unwrap();
    let ls = ceph.ls();
    assert!(!ls.contains(&temp), "temporary image left: {ls:?}");
    assert!(!ls.contains(&image), "final image exists: {ls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_final_image_is_refused_and_left_untouched() {
    let Some(ceph) = ceph() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let image = unique("existing");
    let original = tmp.path().join("orig.raw");
    let mut b = vec![0u8; 2 * MIB as usize];
    fill(&mut b, 42);
    File::create(&original).unwrap().write_all(&b).unwrap();
    ceph.rbd(&[
        "import",
        "--no-progress",
        "--image-format",
        "2",
        original.to_str().unwrap(),
        &format!("{POOL}/{image}"),
    ]);

    // 1. Found when connecting (before anything is written).
    let Err(e) = RbdSink::connect(ceph.opts(&image)).await else {
        panic!("connect accepted an existing target");
    };
    assert_eq!(e.check_name(), Some("rbd.target_exists"), "{e}");
    assert_eq!(e.kind(), ErrorKind::Spec);
    assert!(e.to_string().contains("already exists"), "{e}");

    // 2. Found at begin (sink made without connecting).
    let mut sink = Box::new(RbdSink::new(ceph.opts(&image)).unwrap());
    let e = sink.begin(&info(4 * MIB)).await.unwrap_err();
    assert_eq!(e.check_name(), Some("rbd.target_exists"), "{e}");
    sink.abort().await.unwrap();

    // 3. Created by someone else while this run was writing: the rename refuses, the
    //    temporary image is removed, the other image is not replaced.
    let racer = unique("racer");
    let mut sink = Box::new(RbdSink::connect(ceph.opts(&racer)).await.unwrap());
    sink.begin(&info(4 * MIB)).await.unwrap();
    let mut d = vec![0u8; 4 * MIB as usize];
    fill(&mut d, 9);
    sink.write(DiskExtent::Data {
        offset: 0,
        data: Bytes::from(d),
    })
    .await
    .unwrap();
    ceph.rbd(&[
        "import",
        "--no-progress",
        original.to_str().unwrap(),
        &format!("{POOL}/{racer}"),
    ]);
    let e = sink.finish().await.unwrap_err();
    assert_eq!(e.check_name(), Some("rbd.target_exists"), "{e}");
    assert!(e.to_string().contains("was removed"), "{e}");

    for name in [&image, &racer] {
        assert!(ceph.export(name) == b, "{name} was modified");
    }
    // Neither run left a temporary image (other tests run in parallel: look at ours only).
    let ls = ceph.ls();
    for name in [&image, &racer] {
        let prefix = format!("{name}.imgpipe-tmp-");
        assert!(!ls.iter().any(|n| n.starts_with(&prefix)), "{ls:?}");
    }
    for name in [&image, &racer] {
        ceph.rbd(&["rm", "--no-progress", &format!("{POOL}/{name}")]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_size_and_out_of_range_extents_are_clear_errors() {
    // Unknown size fails before any cluster I/O, so this part needs no Ceph.
    let mut sink = Box::new(RbdSink::new(RbdOptions::new(POOL, "never-created")).unwrap());
    let e = sink.begin(&DiskInfo::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(e.check_name(), Some("rbd.size"));
    assert!(e.to_string().contains("size is not known"), "{e}");
    sink.abort().await.unwrap();

    for bad in ["", "a/b", "snap@x"] {
        let e = RbdSink::new(RbdOptions::new(POOL, bad)).err().unwrap();
        assert_eq!(e.check_name(), Some("rbd.name"), "{bad:?}: {e}");
    }

    let Some(ceph) = ceph() else { return };
    let image = unique("bounds");
    let mut sink = Box::new(RbdSink::new(ceph.opts(&image)).unwrap());
    sink.begin(&info(MIB)).await.unwrap();
    let e = sink
        .write(DiskExtent::Data {
            offset: MIB - 100,
            data: Bytes::from(vec![1u8; 200]),
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SizeMismatch);
    assert_eq!(e.check_name(), Some("rbd.extent_end"));
    sink.abort().await.unwrap();
    assert!(!ceph.ls().iter().any(|n| n.starts_with(&image)));

    // A missing pool is a spec error naming the pool.
    let mut o = ceph.opts(&image);
    o.pool = "no-such-pool".into();
    let Err(e) = RbdSink::connect(o).await else {
        panic!("missing pool accepted")
    };
    assert_eq!(e.check_name(), Some("rbd.pool"), "{e}");
    assert_eq!(e.kind(), ErrorKind::Spec, "{e}");
}

/// 1 GiB of incompressible data: the sink (extents of IMGPIPE_RBD_BENCH_EXTENT bytes, default
/// 1 MiB, read from a file) vs `rbd import FILE`. Prints both rates and the ratio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "1 GiB throughput measurement; run with --ignored --nocapture"]
async fn throughput_vs_rbd_import_1gib() {
    let Some(ceph) = ceph() else { return };
    let size = 1024 * MIB;
    let extent: usize = std::env::var("IMGPIPE_RBD_BENCH_EXTENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MIB as usize);
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("bench.raw");
    {
        let mut f = File::create(&raw).unwrap();
        let mut b = vec![0u8; 4 * MIB as usize];
        for i in 0..size / (4 * MIB) {
            fill(&mut b, 1000 + i);
            f.write_all(&b).unwrap();
        }
    }
    // Warm the page cache for both runs.
    std::io::copy(&mut File::open(&raw).unwrap(), &mut std::io::sink()).unwrap();

    let image = unique("bench-sink");
    let t = Instant::now();
    let mut sink = Box::new(RbdSink::connect(ceph.opts(&image)).await.unwrap());
    sink.begin(&info(size)).await.unwrap();
    let mut f = File::open(&raw).unwrap();
    let mut off = 0u64;
    loop {
        let mut b = vec![0u8; extent];
        let n = f.read(&mut b).unwrap();
        if n == 0 {
            break;
        }
        b.truncate(n);
        sink.write(DiskExtent::Data {
            offset: off,
            data: Bytes::from(b),
        })
        .await
        .unwrap();
        off += n as u64;
    }
    sink.finish().await.unwrap();
    let sink_s = t.elapsed().as_secs_f64();

    let imported = unique("bench-import");
    let t = Instant::now();
    ceph.rbd(&[
        "import",
        "--no-progress",
        "--image-format",
        "2",
        raw.to_str().unwrap(),
        &format!("{POOL}/{imported}"),
    ]);
    let import_s = t.elapsed().as_secs_f64();

    // Correctness of the sink's image (compared in 64 MiB pieces via a file export).
    let out = tmp.path().join("export.raw");
    ceph.rbd(&[
        "export",
        "--no-progress",
        &format!("{POOL}/{image}"),
        out.to_str().unwrap(),
    ]);
    let (mut a, mut b) = (File::open(&raw).unwrap(), File::open(&out).unwrap());
    let (mut x, mut y) = (vec![0u8; 64 << 20], vec![0u8; 64 << 20]);
    loop {
        let n = a.read(&mut x).unwrap();
        b.read_exact(&mut y[..n]).unwrap();
        assert!(x[..n] == y[..n], "export differs");
        if n == 0 {
            break;
        }
    }
    let mib = size as f64 / MIB as f64;
    eprintln!(
        "RBD 1 GiB, extents of {extent} B: sink {sink_s:.2}s ({:.0} MiB/s), rbd import {import_s:.2}s ({:.0} MiB/s), sink/import throughput ratio {:.2}",
        mib / sink_s,
        mib / import_s,
        import_s / sink_s
    );
    for name in [&image, &imported] {
        ceph.rbd(&["rm", "--no-progress", &format!("{POOL}/{name}")]);
    }
}
