//! qcow2 → RBD in one pass against a real single-node Ceph (`scripts/services/ceph.sh`).
//! Needs `--features rbd`; without it this file is empty.
#![cfg(feature = "rbd")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use imgpipe::spec::{SinkSpec, SinkTarget, SourceSpec};
use imgpipe::{Progress, Spec, Status};

struct Ceph {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Drop for Ceph {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services/ceph.sh")
}

fn start() -> Option<Ceph> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(script())
        .arg("start")
        .arg(dir.path())
        .env("IMGPIPE_SERVICE_OWNER_PID", std::process::id().to_string())
        .env("IMGPIPE_CEPH_MON_PORT", "16789")
        .env("IMGPIPE_CEPH_MON_V2_PORT", "13300")
        .output()
        .unwrap();
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            std::env::var("IMGPIPE_REQUIRE_ORACLES").is_err(),
            "ceph did not start: {msg}"
        );
        eprintln!("skipping: ceph did not start: {msg}");
        return None;
    }
    let conf = String::from_utf8(out.stdout).unwrap();
    let conf = PathBuf::from(conf.lines().last().unwrap().trim());
    Some(Ceph { dir, conf })
}

fn rbd(conf: &Path, args: &[&str]) -> std::process::Output {
    Command::new("rbd")
        .arg("-c")
        .arg(conf)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn qcow2_to_rbd_in_one_pass_and_rejection_leaves_no_image() {
    let Some(ceph) = start() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A raw disk with holes → qcow2, and the qemu-img reference output.
    let mut s = 0x9E3779B97F4A7C15u64;
    let mut raw = vec![0u8; (9 << 20) + 512];
    for (i, c) in raw.chunks_mut(8).enumerate() {
        if (i / 65536) % 3 == 1 {
            continue;
        }
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let b = s.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    let raw_path = dir.path().join("src.raw");
    std::fs::write(&raw_path, &raw).unwrap();
    let q = dir.path().join("img.qcow2");
    assert!(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw_path)
            .arg(&q)
            .status()
            .unwrap()
            .success()
    );
    let reference = dir.path().join("ref.raw");
    assert!(
        Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&q)
            .arg(&reference)
            .status()
            .unwrap()
            .success()
    );

    let target = |image: &str| SinkSpec {
        target: SinkTarget::Rbd {
            pool: "rbd".into(),
            image: image.into(),
            conf: Some(ceph.conf.clone()),
            id: None,
        },
        zeroes: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut spec = Spec::new(SourceSpec::File(q.clone()));
    spec.inspect.disk_format = Some(imgpipe::format::Format::Qcow2);
    spec.sink = Some(target("disk-ok"));
    let r = rt.block_on(imgpipe::run(&spec, Arc::new(Progress::default())));
    assert_eq!(r.status, Status::Ok, "{:?}", r.reason);
    let exported = dir.path().join("export.raw");
    let out = rbd(
        &ceph.conf,
        &["export", "rbd/disk-ok", exported.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&exported).unwrap(),
        std::fs::read(&reference).unwrap()
    );

    // Rejected at the last byte (wrong digest): nothing under the final or a temporary name.
    let mut spec = Spec::new(SourceSpec::File(q));
    spec.verify
        .digests
        .push((imgpipe::hash::Algorithm::Sha256, "00".repeat(32)));
    spec.sink = Some(target("disk-bad"));
    let r = rt.block_on(imgpipe::run(&spec, Arc::new(Progress::default())));
    assert_eq!(r.status, Status::Rejected, "{:?}", r.reason);
    let ls = String::from_utf8(rbd(&ceph.conf, &["ls", "rbd"]).stdout).unwrap();
    assert!(!ls.contains("disk-bad"), "left behind: {ls}");
    assert_eq!(ls.lines().count(), 1, "only disk-ok should exist: {ls}");
}
