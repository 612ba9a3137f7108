//! qcow2 → a real loop block device in one pass; a run rejected at the last byte leaves the
//! first MiB (boot sector, partition table) zeroed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use imgpipe::spec::{SinkSpec, SinkTarget, SourceSpec};
use imgpipe::{Progress, Spec, Status};

struct Loop(PathBuf);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn attach(file: &Path) -> Option<Loop> {
    let out = Command::new("losetup")
        .args(["--find", "--show", "--direct-io=on"])
        .arg(file)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(Loop(PathBuf::from(
            String::from_utf8(o.stdout).unwrap().trim(),
        ))),
        other => {
            assert!(
                std::env::var("IMGPIPE_REQUIRE_ORACLES").is_err(),
                "loop devices are required: {other:?}"
            );
            eprintln!("skipping: no loop device ({other:?})");
            None
        }
    }
}

#[test]
fn qcow2_to_a_loop_device_and_rejection_wipes_the_first_mib() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = 0x2545F4914F6CDD1Du64;
    let mut raw = vec![0u8; 6 << 20];
    for (i, c) in raw.chunks_mut(8).enumerate() {
        if (i / 32768) % 3 == 1 {
            continue;
        }
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        c.copy_from_slice(&s.to_le_bytes());
    }
    let raw_path = dir.path().join("src.raw");
    std::fs::write(&raw_path, &raw).unwrap();
    let q = dir.path().join("img.qcow2");
    if Command::new("qemu-img").arg("--version").output().is_err() {
        assert!(std::env::var("IMGPIPE_REQUIRE_ORACLES").is_err());
        return;
    }
    assert!(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw_path)
            .arg(&q)
            .status()
            .unwrap()
            .success()
    );
    // A "used" device: old data everywhere, which zero runs must overwrite.
    let backing = dir.path().join("dev.img");
    std::fs::write(&backing, vec![0xA5u8; 8 << 20]).unwrap();
    let Some(dev) = attach(&backing) else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();

    let mut spec = Spec::new(SourceSpec::File(q.clone()));
    spec.inspect.disk_format = Some(imgpipe::format::Format::Qcow2);
    spec.sink = Some(SinkSpec {
        target: SinkTarget::Device(dev.0.clone()),
        zeroes: None,
    });
    let r = rt.block_on(imgpipe::run(&spec, Arc::new(Progress::default())));
    assert_eq!(r.status, Status::Ok, "{:?}", r.reason);
    let got = std::fs::read(&dev.0).unwrap();
    assert_eq!(
        &got[..raw.len()],
        &raw[..],
        "device content differs from the source disk"
    );
    assert!(
        got[raw.len()..].iter().all(|b| *b == 0xA5),
        "bytes past the disk were touched"
    );

    // Wrong digest: rejected after the last byte; the first MiB must read zero afterwards.
    let mut spec = Spec::new(SourceSpec::File(q));
    spec.verify
        .digests
        .push((imgpipe::hash::Algorithm::Sha256, "11".repeat(32)));
    spec.sink = Some(SinkSpec {
        target: SinkTarget::Device(dev.0.clone()),
        zeroes: None,
    });
    let r = rt.block_on(imgpipe::run(&spec, Arc::new(Progress::default())));
    assert_eq!(r.status, Status::Rejected, "{:?}", r.reason);
    let got = std::fs::read(&dev.0).unwrap();
    assert!(
        got[..1 << 20].iter().all(|b| *b == 0),
        "a rejected run left a bootable first MiB"
    );
}

/// An image rejected at its header (a qcow2 naming a backing file, megabytes of data after the
/// header) never reaches the device: `begin` is never called, so not even the first MiB is
/// wiped and the device reads exactly as before, old data everywhere.
#[test]
fn an_image_rejected_at_its_header_leaves_the_device_untouched() {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        assert!(std::env::var("IMGPIPE_REQUIRE_ORACLES").is_err());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s = 0x9E3779B97F4A7C15u64;
    let raw: Vec<u8> = (0..(6 << 20) / 8)
        .flat_map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s.to_le_bytes()
        })
        .collect();
    let raw_path = dir.path().join("src.raw");
    std::fs::write(&raw_path, &raw).unwrap();
    let zeros = dir.path().join("zeros.raw");
    std::fs::write(&zeros, vec![0u8; raw.len()]).unwrap();
    let backed = dir.path().join("backed.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-F", "raw", "-B"])
        .arg(&zeros)
        .arg(&raw_path)
        .arg(&backed)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(std::fs::metadata(&backed).unwrap().len() > 4 << 20);
    let backing = dir.path().join("dev.img");
    std::fs::write(&backing, vec![0xA5u8; 8 << 20]).unwrap();
    let Some(dev) = attach(&backing) else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    for declared in [Some(imgpipe::format::Format::Qcow2), None] {
        let mut spec = Spec::new(SourceSpec::File(backed.clone()));
        spec.inspect.disk_format = declared;
        spec.sink = Some(SinkSpec {
            target: SinkTarget::Device(dev.0.clone()),
            zeroes: None,
        });
        let r = rt.block_on(imgpipe::run(&spec, Arc::new(Progress::default())));
        assert_eq!(r.status, Status::Rejected, "{:?}", r.reason);
        assert!(
            r.reason
                .as_deref()
                .is_some_and(|m| m.contains("qcow2.backing_file")),
            "{:?}",
            r.reason
        );
        let got = std::fs::read(&dev.0).unwrap();
        assert!(
            got.iter().all(|b| *b == 0xA5),
            "a header rejection touched the device at byte {:?}",
            got.iter().position(|b| *b != 0xA5)
        );
    }
}
