//! Block-device sink against real loop devices (root, `losetup`): published content, zero
//! policies over dirty devices, abort and SIGKILL leaving the first MiB zeroed, and refusal of
//! devices that are mounted, exclusively held or too small.
#![allow(clippy::unwrap_used)]

mod block_support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use block_support::{
    Loop, Mounted, Partitioned, Swapon, Tmpfs, first_diff, loop_available, pseudo_random,
    punch_hole, sh, tool_available,
};
use bytes::Bytes;
use imgpipe_core::{DiskExtent, DiskInfo, ErrorKind, Sink};
use imgpipe_io::block::{BlockSink, BlockZeroes, HELD_BACK, HostView, check_device_free};

const MIB: u64 = 1 << 20;
const DIRT: u8 = 0xA5;

fn data(offset: u64, bytes: Vec<u8>) -> DiskExtent {
    DiskExtent::Data {
        offset,
        data: Bytes::from(bytes),
    }
}

fn zero(offset: u64, len: u64) -> DiskExtent {
    DiskExtent::Zero { offset, len }
}

/// What the device must hold after `extents` were published over a device filled with DIRT:
/// the held-back first MiB starts as zeros (wiped in `begin`), the rest keeps the dirt where no
/// extent landed.
fn expected(dev_size: u64, extents: &[DiskExtent]) -> Vec<u8> {
    let mut want = vec![DIRT; dev_size as usize];
    want[..HELD_BACK as usize].fill(0);
    for e in extents {
        let o = e.offset() as usize;
        match e {
            DiskExtent::Data { data, .. } => want[o..o + data.len()].copy_from_slice(data),
            DiskExtent::Zero { len, .. } => want[o..o + *len as usize].fill(0),
        }
    }
    want
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Extents exercising every path: head, head boundary, unaligned small data merged, large zero
/// run over dirt (write-zeroes with unaligned edges), small zero run, data bigger than the
/// combining buffer, two extents sharing one sector arriving in reverse order, and a disk that
/// ends mid-sector.
fn scenario(disk: u64) -> Vec<DiskExtent> {
    let mut v = vec![
        data(0, pseudo_random(1, 64 << 10)),
        zero(256 << 10, 256 << 10),
        data(MIB - 4096, pseudo_random(2, 12288)),
    ];
    let mut off = 2 * MIB + 100;
    for i in 0..100 {
        v.push(data(off, pseudo_random(10 + i, 3000)));
        off += 3000;
    }
    v.push(zero(4 * MIB + 300, 8 * MIB - 223));
    v.push(zero(13 * MIB, 1024));
    v.push(zero(13 * MIB + 4096 + 7, 70_000));
    v.push(data(14 * MIB, pseudo_random(3, 5 * MIB as usize)));
    v.push(data(19 * MIB + 700, pseudo_random(4, 800)));
    v.push(data(19 * MIB, pseudo_random(5, 700)));
    v.push(data(disk - 1000, pseudo_random(6, 1000)));
    v
}

async fn run(
    dev: &Path,
    zeroes: BlockZeroes,
    info: DiskInfo,
    extents: &[DiskExtent],
) -> imgpipe_core::SinkReport {
    let mut sink = Box::new(BlockSink::open(dev, zeroes).unwrap());
    sink.begin(&info).await.unwrap();
    for e in extents {
        sink.write(e.clone()).await.unwrap();
    }
    sink.finish().await.unwrap()
}

#[test]
fn verified_run_publishes_exactly_the_extents() {
    if !loop_available("verified_run_publishes_exactly_the_extents") {
        return;
    }
    let lo = Loop::new(24 * MIB);
    lo.fill(DIRT);
    let disk = 20 * MIB + 1000; // ends mid-sector: the tail sector is read-modify-written
    let extents = scenario(disk);
    let info = DiskInfo {
        size: Some(disk),
        encrypted: false,
    };
    let report = rt().block_on(run(&lo.dev, BlockZeroes::WriteZeroes, info, &extents));

    let got = lo.read(0, lo.size() as usize);
    let want = expected(lo.size(), &extents);
    assert_eq!(first_diff(&got, &want), None, "device content differs");
    // The bytes after the disk's end were not touched (still dirt).
    assert!(got[disk as usize..].iter().all(|&b| b == DIRT));
    // Zero runs over dirt read back zero (the whole 8 MiB run, not just its aligned middle).
    assert!(
        got[(4 * MIB + 300) as usize..(12 * MIB + 77) as usize]
            .iter()
            .all(|&b| b == 0)
    );

    let data_bytes: u64 = extents
        .iter()
        .filter(|e| matches!(e, DiskExtent::Data { .. }))
        .map(|e| e.len())
        .sum();
    let zero_bytes: u64 = extents
        .iter()
        .filter(|e| matches!(e, DiskExtent::Zero { .. }))
        .map(|e| e.len())
        .sum();
    assert_eq!(report.bytes_written, data_bytes);
    assert_eq!(report.zero_bytes_written, zero_bytes);
    assert_eq!(report.zero_bytes_skipped, 0);
    assert_eq!(report.size, disk);
    assert_eq!(report.zero_policy, "write-zeroes");
    assert_eq!(report.target, lo.dev.display().to_string());
}

#[test]
fn extent_sizes_do_not_change_the_result() {
    if !loop_available("extent_sizes_do_not_change_the_result") {
        return;
    }
    // One region crossing the held-back boundary, starting unaligned, cut into pieces of
    // 7, 512, 4096, 65536 bytes and whole: the device must end up identical.
    let lo = Loop::new(8 * MIB);
    let start = MIB - 1000;
    let content = pseudo_random(42, 3 * MIB as usize + 333);
    let mut reference: Option<Vec<u8>> = None;
    for piece in [7usize, 512, 4096, 65536, content.len()] {
        lo.fill(DIRT);
        let extents: Vec<DiskExtent> = content
            .chunks(piece)
            .enumerate()
            .map(|(i, c)| data(start + (i * piece) as u64, c.to_vec()))
            .collect();
        let report = rt().block_on(run(
            &lo.dev,
            BlockZeroes::WriteZeroes,
            DiskInfo::default(),
            &extents,
        ));
        assert_eq!(report.bytes_written, content.len() as u64);
        let got = lo.read(0, lo.size() as usize);
        assert_eq!(
            first_diff(&got, &expected(lo.size(), &extents)),
            None,
            "piece size {piece}"
        );
        match &reference {
            None => reference = Some(got),
            Some(r) => assert!(r == &got, "piece size {piece} gives a different device"),
        }
    }
}

#[test]
fn writes_in_flight_do_not_change_the_result() {
    if !loop_available("writes_in_flight_do_not_change_the_result") {
        return;
    }
    // 28 MiB of 1 MiB extents (several 4 MiB writes in flight at once), then extents that
    // overlap what may still be in flight: unaligned data rewriting an earlier range (edge
    // reads + overlap), a zero run across three earlier writes (BLKZEROOUT), a rewrite inside
    // that run, and data crossing back into the held-back head. Later extents must win, the
    // same way for every number of writes in flight (0 = synchronous).
    let lo = Loop::new(32 * MIB);
    let mut extents: Vec<DiskExtent> = (0..28)
        .map(|i| data(2 * MIB + i * MIB, pseudo_random(200 + i, MIB as usize)))
        .collect();
    extents.push(data(5 * MIB + 123, pseudo_random(300, 2 * MIB as usize)));
    extents.push(zero(8 * MIB + 5, 9 * MIB));
    extents.push(data(9 * MIB + 4096, pseudo_random(301, 700_000)));
    extents.push(data(MIB - 512, pseudo_random(302, 2 * MIB as usize + 1)));
    extents.push(data(29 * MIB + 17, pseudo_random(303, MIB as usize)));
    // The same 4 MiB rewritten back to back: only the last version may remain.
    for i in 0..24 {
        extents.push(data(20 * MIB, pseudo_random(400 + i, 4 * MIB as usize)));
    }
    let want = expected(lo.size(), &extents);
    for depth in [0usize, 1, 2, 4, 16] {
        lo.fill(DIRT);
        let report = rt().block_on(async {
            let mut sink = Box::new(BlockSink::open(&lo.dev, BlockZeroes::WriteZeroes).unwrap());
            sink.set_writes_in_flight(depth);
            assert_eq!(sink.writes_in_flight(), depth);
            sink.begin(&DiskInfo::default()).await.unwrap();
            for e in &extents {
                sink.write(e.clone()).await.unwrap();
            }
            sink.finish().await.unwrap()
        });
        assert_eq!(report.zero_bytes_written, 9 * MIB, "depth {depth}");
        let got = lo.read(0, lo.size() as usize);
        assert_eq!(first_diff(&got, &want), None, "{depth} writes in flight");
    }
}

#[test]
fn skip_leaves_zero_runs_alone_and_discard_zeroes_them_on_loop() {
    if !loop_available("skip_leaves_zero_runs_alone_and_discard_zeroes_them_on_loop") {
        return;
    }
    let lo = Loop::new(16 * MIB);
    let extents = vec![
        data(2 * MIB, pseudo_random(7, 4096)),
        zero(3 * MIB, 4 * MIB),
        data(7 * MIB, pseudo_random(8, 4096)),
    ];

    // Skip: the caller vouched the device reads zeros; on a dirty device the dirt stays —
    // proof that skip really skips (and why it is only for known-zero targets).
    lo.fill(DIRT);
    let r = rt().block_on(run(
        &lo.dev,
        BlockZeroes::Skip,
        DiskInfo::default(),
        &extents,
    ));
    assert_eq!((r.zero_bytes_skipped, r.zero_bytes_written), (4 * MIB, 0));
    assert_eq!(r.zero_policy, "skip");
    assert!(
        lo.read(3 * MIB, 4 * MIB as usize)
            .iter()
            .all(|&b| b == DIRT)
    );

    // Discard on a loop device punches holes, which read zeros.
    lo.fill(DIRT);
    let sink = BlockSink::open(&lo.dev, BlockZeroes::Discard).unwrap();
    assert!(
        sink.warnings().is_empty(),
        "loop discard is known to zero: {:?}",
        sink.warnings()
    );
    drop(sink);
    let r = rt().block_on(run(
        &lo.dev,
        BlockZeroes::Discard,
        DiskInfo::default(),
        &extents,
    ));
    assert_eq!((r.zero_bytes_skipped, r.zero_bytes_written), (0, 4 * MIB));
    assert_eq!(r.zero_policy, "discard");
    let got = lo.read(0, lo.size() as usize);
    assert_eq!(first_diff(&got, &expected(lo.size(), &extents)), None);

    // Under encryption zero runs never arrive; if one does it is still made to read zeros.
    lo.fill(DIRT);
    let info = DiskInfo {
        size: None,
        encrypted: true,
    };
    let r = rt().block_on(run(&lo.dev, BlockZeroes::Skip, info, &extents));
    assert_eq!(r.zero_policy, "write-zeroes");
    assert_eq!(r.zero_bytes_skipped, 0);
    assert!(lo.read(3 * MIB, 4 * MIB as usize).iter().all(|&b| b == 0));
}

/// `Discard` on a device that cannot discard (a loop device over a ramfs file: no
/// `fallocate`, so no discard and no write-zeroes) falls back to write-zeroes, says so in a
/// warning, and the zero run still reads zeros over old data.
#[test]
fn discard_without_device_support_falls_back_to_write_zeroes_with_a_warning() {
    let test = "discard_without_device_support_falls_back_to_write_zeroes_with_a_warning";
    if !loop_available(test) {
        return;
    }
    let Some(fs) = Tmpfs::ramfs(test) else {
        return;
    };
    let backing = fs.path().join("dev.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(12 * MIB)
        .unwrap();
    let lo = Loop::attach_buffered(&backing);
    let name = lo.dev.file_name().unwrap().to_string_lossy().into_owned();
    let max = std::fs::read_to_string(format!("/sys/block/{name}/queue/discard_max_bytes"));
    assert_eq!(max.unwrap().trim(), "0", "this loop device can discard");
    lo.fill(DIRT);
    let extents = vec![
        data(2 * MIB, pseudo_random(13, 4096)),
        zero(3 * MIB, 4 * MIB),
        data(7 * MIB, pseudo_random(14, 4096)),
    ];
    let (report, warnings) = rt().block_on(async {
        let mut sink = Box::new(BlockSink::open(&lo.dev, BlockZeroes::Discard).unwrap());
        sink.begin(&DiskInfo::default()).await.unwrap();
        for e in &extents {
            sink.write(e.clone()).await.unwrap();
        }
        let warnings = sink.warnings();
        (sink.finish().await.unwrap(), warnings)
    });
    assert_eq!(report.zero_policy, "write-zeroes");
    assert_eq!(report.zero_bytes_written, 4 * MIB);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("does not support discard")),
        "{warnings:?}"
    );
    let got = lo.read(0, lo.size() as usize);
    assert_eq!(first_diff(&got, &expected(lo.size(), &extents)), None);
}

#[test]
fn abort_at_the_end_wipes_the_first_mib_and_keeps_the_rest() {
    if !loop_available("abort_at_the_end_wipes_the_first_mib_and_keeps_the_rest") {
        return;
    }
    let lo = Loop::new(16 * MIB);
    lo.fill(DIRT);
    let head = pseudo_random(11, HELD_BACK as usize);
    let body = pseudo_random(12, 6 * MIB as usize);
    rt().block_on(async {
        let mut sink = Box::new(BlockSink::open(&lo.dev, BlockZeroes::WriteZeroes).unwrap());
        sink.begin(&DiskInfo {
            size: Some(8 * MIB),
            encrypted: false,
        })
        .await
        .unwrap();
        sink.write(data(0, head.clone())).await.unwrap();
        sink.write(data(MIB, body.clone())).await.unwrap();
        // e.g. the digest did not match at the last byte
        sink.abort().await.unwrap();
    });
    assert!(
        lo.read(0, HELD_BACK as usize).iter().all(|&b| b == 0),
        "first MiB not wiped"
    );
    // Data written before the abort stays (4 MiB went out when the combining buffer filled;
    // what was still pending is dropped, never written) ...
    assert_eq!(
        first_diff(&lo.read(MIB, 4 * MIB as usize), &body[..4 * MIB as usize]),
        None
    );
    // ... and nothing else was touched.
    assert!(
        lo.read(8 * MIB, 8 * MIB as usize)
            .iter()
            .all(|&b| b == DIRT)
    );
}

#[test]
fn abort_before_begin_leaves_the_device_untouched() {
    if !loop_available("abort_before_begin_leaves_the_device_untouched") {
        return;
    }
    let lo = Loop::new(4 * MIB);
    lo.fill(DIRT);
    let sink = Box::new(BlockSink::open(&lo.dev, BlockZeroes::WriteZeroes).unwrap());
    rt().block_on(sink.abort()).unwrap();
    assert!(lo.read(0, 4 * MIB as usize).iter().all(|&b| b == DIRT));
}

/// A loop device whose backing file sits on a small tmpfs: writes to blocks the file has not
/// allocated fail with `ENOSPC` once the tmpfs is full (the real fault of a thin or full
/// backing store). Declared in this order, the device is detached before the tmpfs unmounts.
struct FullableDevice {
    lo: Loop,
    backing: std::path::PathBuf,
    fs: Tmpfs,
}
// (Writes that find *no* space fail at their first byte, so a full tmpfs gives deterministic
// failures; see a_failed_finish_wipes_the_first_mib_again for partly-full.)

impl FullableDevice {
    /// `dev_size` bytes of device (sparse) on a tmpfs of `fs_size` bytes.
    fn new(test: &str, fs_size: u64, dev_size: u64) -> Option<FullableDevice> {
        if !loop_available(test) || !tool_available(test, "fallocate") {
            return None;
        }
        let fs = Tmpfs::mount(test, fs_size)?;
        let backing = fs.path().join("dev.img");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(dev_size)
            .unwrap();
        let lo = Loop::attach(&backing, &[]);
        Some(FullableDevice { lo, backing, fs })
    }
}

/// `finish` fails while writing the held-back head, after part of it reached the device: the
/// device shrinks under the run (`losetup --set-capacity` after the backing file was cut to
/// 256 KiB, as when an LV is reduced or a LUN resized), so the head's `pwrite` writes 256 KiB
/// and the next one fails with `ENOSPC`. The first MiB must be wiped again, so no boot sector
/// or LUKS header from the half-written head stays readable.
///
/// (A full tmpfs under the loop device is no good here: the loop driver reports a *short*
/// write of a request as success, so a head write that finds a little space left may pass.)
#[test]
fn a_failed_finish_wipes_the_first_mib_again() {
    let test = "a_failed_finish_wipes_the_first_mib_again";
    if !loop_available(test) {
        return;
    }
    let lo = Loop::new(12 * MIB);
    lo.fill(DIRT);
    let head = pseudo_random(21, HELD_BACK as usize);
    let err = rt().block_on(async {
        let mut sink = Box::new(BlockSink::open(&lo.dev, BlockZeroes::WriteZeroes).unwrap());
        // Synchronous writes: the body is on the device before the device shrinks.
        sink.set_writes_in_flight(0);
        sink.begin(&DiskInfo {
            size: Some(5 * MIB),
            encrypted: false,
        })
        .await
        .unwrap();
        sink.write(data(0, head.clone())).await.unwrap();
        // Exactly one full 4 MiB buffer: written now, nothing left pending for finish.
        sink.write(data(MIB, pseudo_random(22, 4 * MIB as usize)))
            .await
            .unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&lo.file)
            .unwrap()
            .set_len(256 << 10)
            .unwrap();
        sh(Command::new("losetup").arg("--set-capacity").arg(&lo.dev));
        sink.finish().await.unwrap_err()
    });
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert_eq!(err.offset(), Some(0), "the head write should fail: {err}");
    assert!(err.message().contains("No space left"), "{err}");
    // The head's first 256 KiB did reach the device, and were wiped again.
    assert_eq!(lo.size(), 256 << 10);
    let got = lo.read(0, 256 << 10);
    assert!(
        got.iter().all(|&b| b == 0),
        "first MiB not wiped after a failed finish: nonzero at byte {:?}",
        got.iter().position(|&b| b != 0)
    );
}

/// A background (writer-thread) write fails: the run fails, at the latest in `finish`, and the
/// held-back head is never attempted (the failure reported is the body write's, not the
/// head's, and the device's first MiB stays zero). Synchronous writes (0 in flight) alike.
#[test]
fn a_failed_background_write_fails_the_run_before_the_head_is_written() {
    let test = "a_failed_background_write_fails_the_run_before_the_head_is_written";
    for depth in [4usize, 1, 0] {
        let Some(d) = FullableDevice::new(test, 8 * MIB, 32 * MIB) else {
            return;
        };
        let head = pseudo_random(31, HELD_BACK as usize);
        let err = rt().block_on(async {
            let mut sink = Box::new(BlockSink::open(&d.lo.dev, BlockZeroes::WriteZeroes).unwrap());
            sink.set_writes_in_flight(depth);
            sink.begin(&DiskInfo {
                size: Some(6 * MIB),
                encrypted: false,
            })
            .await
            .unwrap();
            // From here on, no block the device has not written yet can be stored, and the
            // head's own blocks are gone too: a head write would fail at byte 0.
            punch_hole(&d.backing, 0, HELD_BACK);
            d.fs.fill_leaving(0);
            sink.write(data(0, head.clone())).await.unwrap();
            // 4 MiB + 1 MiB of body: one full buffer goes to a writer thread at once, the
            // rest is flushed by finish.
            match sink
                .write(data(MIB, pseudo_random(32, 5 * MIB as usize)))
                .await
            {
                // Synchronous writes fail right here; the run is over (the driver aborts).
                Err(e) => {
                    sink.abort().await.unwrap_err();
                    e
                }
                Ok(()) => sink.finish().await.unwrap_err(),
            }
        });
        assert_eq!(err.kind(), ErrorKind::Io, "depth {depth}: {err}");
        let at = err.offset().unwrap_or(0);
        assert!(
            at >= MIB,
            "depth {depth}: the failure reported is at byte {at}, not the body's: {err}"
        );
        assert!(
            err.message().contains("No space left"),
            "depth {depth}: {err}"
        );
        assert!(
            d.lo.read(0, HELD_BACK as usize).iter().all(|&b| b == 0),
            "depth {depth}: head written after a failed body write"
        );
    }
}

/// With writes in flight, a failed write fails the run at the next flush (a later `write`),
/// not only in `finish`: a long run stops early instead of streaming to the end.
#[test]
fn a_failed_background_write_fails_a_later_write() {
    let test = "a_failed_background_write_fails_a_later_write";
    let Some(d) = FullableDevice::new(test, 8 * MIB, 96 * MIB) else {
        return;
    };
    let failed_at = rt().block_on(async {
        let mut sink = Box::new(BlockSink::open(&d.lo.dev, BlockZeroes::WriteZeroes).unwrap());
        sink.set_writes_in_flight(2);
        sink.begin(&DiskInfo::default()).await.unwrap();
        d.fs.fill_leaving(0);
        let mut failed_at = None;
        for i in 1..90u64 {
            if let Err(e) = sink.write(data(i * MIB, vec![0x77; MIB as usize])).await {
                assert_eq!(e.kind(), ErrorKind::Io, "{e}");
                failed_at = Some(i);
                break;
            }
        }
        sink.abort().await.unwrap();
        failed_at
    });
    let i = failed_at.expect("no write failed although every device write did");
    // Depth 2: at most 2 buffers in flight + 1 filling (4 MiB each) before a flush sees it.
    assert!(i <= 1 + 4 * 4, "the failure surfaced only at MiB {i}");
    assert!(d.lo.read(0, HELD_BACK as usize).iter().all(|&b| b == 0));
}

const CHILD_ENV: &str = "IMGPIPE_BLOCK_SIGKILL_CHILD";
const READY: &str = "IMGPIPE-CHILD-READY";

/// Not a test on its own: with `IMGPIPE_BLOCK_SIGKILL_CHILD=<device>` it is the child process
/// of `sigkill_mid_run_leaves_the_first_mib_zeroed`: it writes a disk slowly and waits to be
/// killed.
#[test]
fn sigkill_child() {
    let Ok(dev) = std::env::var(CHILD_ENV) else {
        return;
    };
    rt().block_on(async {
        let mut sink =
            Box::new(BlockSink::open(Path::new(&dev), BlockZeroes::WriteZeroes).unwrap());
        sink.begin(&DiskInfo {
            size: Some(12 * MIB),
            encrypted: false,
        })
        .await
        .unwrap();
        // A boot sector and partition table: held back, never reaches the device.
        sink.write(data(0, vec![0x11; HELD_BACK as usize]))
            .await
            .unwrap();
        // 8 MiB of body: at least 4 MiB is flushed to the device when the buffer fills.
        for i in 0..8 {
            sink.write(data(MIB + i * MIB, vec![0x22; MIB as usize]))
                .await
                .unwrap();
        }
        println!("{READY}");
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn sigkill_mid_run_leaves_the_first_mib_zeroed() {
    if !loop_available("sigkill_mid_run_leaves_the_first_mib_zeroed") {
        return;
    }
    let lo = Loop::new(16 * MIB);
    lo.fill(DIRT); // a previous, "bootable" disk
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &lo.dev)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().contains(READY) {
            ready = true;
            break;
        }
    }
    assert!(ready, "child ended without writing");
    child.kill().unwrap(); // SIGKILL: no destructor, no abort runs
    let status = child.wait().unwrap();
    assert!(!status.success());

    let head = lo.read(0, HELD_BACK as usize);
    assert!(
        head.iter().all(|&b| b == 0),
        "first MiB not zero after SIGKILL"
    );
    // The child did write the body: the held-back head is the only reason the disk is unusable.
    assert!(lo.read(MIB, 4 * MIB as usize).iter().all(|&b| b == 0x22));
    assert!(
        lo.read(12 * MIB, 4 * MIB as usize)
            .iter()
            .all(|&b| b == DIRT)
    );
}

#[test]
fn refuses_a_mounted_device() {
    let test = "refuses_a_mounted_device";
    if !loop_available(test) || !tool_available(test, "mkfs.ext4") {
        return;
    }
    let lo = Loop::new(16 * MIB);
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&lo.dev));
    let dir = tempfile::tempdir().unwrap();
    let _m = Mounted::new(&lo.dev, dir.path());
    let err = BlockSink::open(&lo.dev, BlockZeroes::WriteZeroes).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spec);
    assert_eq!(err.check_name(), Some("block.mounted"));
    assert!(err.message().contains("mounted at"), "{err}");
    assert!(
        err.message().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

/// A partition of the device is mounted: the whole device is refused, naming the partition.
#[test]
fn refuses_a_device_whose_partition_is_mounted() {
    let test = "refuses_a_device_whose_partition_is_mounted";
    if !loop_available(test)
        || !tool_available(test, "sfdisk")
        || !tool_available(test, "partx")
        || !tool_available(test, "mkfs.ext4")
    {
        return;
    }
    let disk = Partitioned::new(32 * MIB, "label: dos\nstart=2048, type=83\n", 1);
    let part = &disk.parts[0];
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(part));
    let dir = tempfile::tempdir().unwrap();
    let _m = Mounted::new(part, dir.path());
    let err = BlockSink::open(&disk.lo.dev, BlockZeroes::WriteZeroes).unwrap_err();
    assert_eq!(err.check_name(), Some("block.mounted"), "{err}");
    let pname = part.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.message().contains(&pname), "{err}");
}

/// A device in use as swap is refused by the swap check (`/proc/swaps`), before the exclusive
/// open (which swap's claim would also fail, as `block.exclusive`); so is a device one of whose
/// partitions is swap.
#[test]
fn refuses_a_device_used_as_swap() {
    let test = "refuses_a_device_used_as_swap";
    if !loop_available(test)
        || !tool_available(test, "mkswap")
        || !tool_available(test, "swapon")
        || !tool_available(test, "sfdisk")
        || !tool_available(test, "partx")
    {
        return;
    }
    let lo = Loop::new(16 * MIB);
    lo.fill(DIRT);
    {
        let _swap = Swapon::new(&lo.dev);
        let err = BlockSink::open(&lo.dev, BlockZeroes::WriteZeroes).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Spec);
        assert_eq!(err.check_name(), Some("block.swap"), "{err}");
        assert!(err.message().contains("swap"), "{err}");
        let err = check_device_free(&lo.dev, &HostView::default()).unwrap_err();
        assert_eq!(err.check_name(), Some("block.swap"), "{err}");
    }
    // swapoff: the same device is accepted again.
    BlockSink::open(&lo.dev, BlockZeroes::WriteZeroes).unwrap();

    let disk = Partitioned::new(
        32 * MIB,
        "label: dos\nstart=2048, size=8192, type=83\ntype=82\n",
        2,
    );
    let _swap = Swapon::new(&disk.parts[1]);
    let err = BlockSink::open(&disk.lo.dev, BlockZeroes::WriteZeroes).unwrap_err();
    assert_eq!(err.check_name(), Some("block.swap"), "{err}");
    // The other partition is not in use and is accepted.
    BlockSink::open(&disk.parts[0], BlockZeroes::WriteZeroes).unwrap();
}

/// `holders/` is only populated by device-mapper, md and bcache, none of which this kernel has
/// (no dm/md in /proc/misc or /proc/devices, no modules): no real holder can be created here.
/// So the check reads a directory tree shaped exactly like sysfs (`dev/block/M:m` → the
/// device directory, its partitions with `partition` and `dev`, each with `holders/`), built
/// from a real loop device's sysfs entries, with the holder links the kernel would add.
#[test]
fn refuses_a_device_held_by_another_device() {
    let test = "refuses_a_device_held_by_another_device";
    if !loop_available(test) {
        return;
    }
    let lo = Loop::new(8 * MIB);
    let rdev = std::fs::metadata(&lo.dev).unwrap().rdev();
    let (maj, min) = (libc::major(rdev), libc::minor(rdev));
    let name = lo.dev.file_name().unwrap().to_string_lossy().into_owned();
    let real = Path::new("/sys/dev/block").join(format!("{maj}:{min}"));
    let root = tempfile::tempdir().unwrap();
    let sys = root.path().join("sys");
    let devdir = sys.join("devices/virtual/block").join(&name);
    std::fs::create_dir_all(devdir.join("holders")).unwrap();
    std::fs::copy(real.join("dev"), devdir.join("dev")).unwrap();
    std::fs::create_dir_all(sys.join("dev/block")).unwrap();
    std::os::unix::fs::symlink(
        format!("../../devices/virtual/block/{name}"),
        sys.join("dev/block").join(format!("{maj}:{min}")),
    )
    .unwrap();
    // A partition (as partx -a would add it), with its own holders directory.
    let pname = format!("{name}p1");
    let pdir = devdir.join(&pname);
    std::fs::create_dir_all(pdir.join("holders")).unwrap();
    std::fs::write(pdir.join("partition"), "1\n").unwrap();
    std::fs::write(pdir.join("dev"), "259:250\n").unwrap();
    let host = HostView {
        sysfs: sys.clone(),
        ..HostView::default()
    };

    // Nothing holds it: the tree itself is not a reason to refuse.
    check_device_free(&lo.dev, &host).unwrap();
    check_device_free(&lo.dev, &HostView::default()).unwrap();

    // device-mapper holds the device (the kernel links holders/dm-0 -> ../../dm-0).
    std::os::unix::fs::symlink("../../dm-0", devdir.join("holders/dm-0")).unwrap();
    let err = check_device_free(&lo.dev, &host).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spec);
    assert_eq!(err.check_name(), Some("block.holders"), "{err}");
    assert!(err.message().contains("dm-0"), "{err}");
    std::fs::remove_file(devdir.join("holders/dm-0")).unwrap();

    // md holds a partition of it: the whole device is refused, naming the partition.
    std::os::unix::fs::symlink("../../../md0", pdir.join("holders/md0")).unwrap();
    let err = check_device_free(&lo.dev, &host).unwrap_err();
    assert_eq!(err.check_name(), Some("block.holders"), "{err}");
    assert!(
        err.message().contains(&pname) && err.message().contains("md0"),
        "{err}"
    );
}

#[test]
fn refuses_a_device_held_exclusively() {
    if !loop_available("refuses_a_device_held_exclusively") {
        return;
    }
    let lo = Loop::new(4 * MIB);
    // A running imgpipe holds the device with O_EXCL: a second run must not write it too.
    let first = BlockSink::open(&lo.dev, BlockZeroes::WriteZeroes).unwrap();
    let err = BlockSink::open(&lo.dev, BlockZeroes::WriteZeroes).unwrap_err();
    assert_eq!(err.check_name(), Some("block.exclusive"), "{err}");
    drop(first);
    // Someone else's exclusive open (as mount or device-mapper would hold it).
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&lo.dev)
        .unwrap();
    let err = BlockSink::open(&lo.dev, BlockZeroes::WriteZeroes).unwrap_err();
    assert_eq!(err.check_name(), Some("block.exclusive"), "{err}");
    assert!(err.message().contains("in use"), "{err}");
    drop(holder);
    BlockSink::open(&lo.dev, BlockZeroes::WriteZeroes).unwrap();
}

#[test]
fn refuses_a_device_too_small_for_the_disk() {
    if !loop_available("refuses_a_device_too_small_for_the_disk") {
        return;
    }
    let lo = Loop::new(8 * MIB);
    lo.fill(DIRT);
    let err = rt().block_on(async {
        let mut sink = Box::new(BlockSink::open(&lo.dev, BlockZeroes::WriteZeroes).unwrap());
        assert_eq!(sink.device_size(), Some(8 * MIB));
        assert_eq!(sink.logical_block_size(), Some(512));
        let err = sink
            .begin(&DiskInfo {
                size: Some(16 * MIB),
                encrypted: false,
            })
            .await
            .unwrap_err();
        sink.abort().await.unwrap();
        err
    });
    assert_eq!(err.kind(), ErrorKind::LimitExceeded);
    assert_eq!(err.check_name(), Some("block.device_size"));
    assert!(
        err.message().contains("16777216") && err.message().contains("8388608"),
        "{err}"
    );
    // Refused before anything was written: not even the first MiB was wiped.
    assert!(lo.read(0, 8 * MIB as usize).iter().all(|&b| b == DIRT));

    // Size unknown up front: an extent past the end is refused when it arrives.
    let err = rt().block_on(async {
        let mut sink = Box::new(BlockSink::open(&lo.dev, BlockZeroes::WriteZeroes).unwrap());
        sink.begin(&DiskInfo::default()).await.unwrap();
        let err = sink
            .write(data(8 * MIB - 512, vec![1; 1024]))
            .await
            .unwrap_err();
        sink.abort().await.unwrap();
        err
    });
    assert_eq!(err.check_name(), Some("block.device_size"), "{err}");
}

#[test]
fn refuses_a_regular_file() {
    let f = tempfile::NamedTempFile::new().unwrap();
    let err = BlockSink::open(f.path(), BlockZeroes::WriteZeroes).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spec);
    assert_eq!(err.check_name(), Some("block.not_block_device"));
}

/// Throughput of the sink vs `dd ... bs=4M oflag=direct` writing the same 1 GiB to the same
/// loop device. Run with `cargo test -p imgpipe-io --test block_sink -- --ignored --nocapture`.
#[test]
#[ignore = "measurement: 1 GiB, prints figures"]
fn throughput_vs_dd() {
    if !loop_available("throughput_vs_dd") {
        return;
    }
    use std::io::{Read, Write};
    let size = 1u64 << 30;
    let lo = Loop::new(size);
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("src.raw");
    {
        let mut f = std::fs::File::create(&src).unwrap();
        for i in 0..(size / (64 * MIB)) {
            f.write_all(&pseudo_random(100 + i, 64 * MIB as usize))
                .unwrap();
        }
    }
    let chunk = std::env::var("IMGPIPE_BENCH_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MIB as usize);
    for round in 0..2 {
        // Sink: read the (page-cached) file in chunks, write extents, finish (incl. syncs).
        let t = std::time::Instant::now();
        rt().block_on(async {
            let mut sink = Box::new(BlockSink::open(&lo.dev, BlockZeroes::WriteZeroes).unwrap());
            sink.begin(&DiskInfo {
                size: Some(size),
                encrypted: false,
            })
            .await
            .unwrap();
            let mut f = std::fs::File::open(&src).unwrap();
            let mut off = 0u64;
            loop {
                let mut buf = vec![0u8; chunk];
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                sink.write(data(off, buf)).await.unwrap();
                off += n as u64;
            }
            sink.finish().await.unwrap();
        });
        let sink_s = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let st = Command::new("dd")
            .arg(format!("if={}", src.display()))
            .arg(format!("of={}", lo.dev.display()))
            .args(["bs=4M", "oflag=direct", "conv=fsync", "status=none"])
            .status()
            .unwrap();
        assert!(st.success());
        let dd_s = t.elapsed().as_secs_f64();
        let mib = size as f64 / MIB as f64;
        println!(
            "round {round}: sink {:.0} MiB/s ({sink_s:.2} s, {chunk}-byte extents), dd bs=4M oflag=direct conv=fsync {:.0} MiB/s ({dd_s:.2} s), sink/dd = {:.2}",
            mib / sink_s,
            mib / dd_s,
            dd_s / sink_s
        );
    }
}
