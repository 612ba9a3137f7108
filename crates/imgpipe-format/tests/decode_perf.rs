//! Measurements (ignored by default; run in release):
//!
//! ```text
//! cargo test --release -p imgpipe-format --test decode_perf -- --ignored --nocapture --test-threads=1
//! ```
//!
//! - `throughput_1gib_in_order_qcow2`: a ~1 GiB qcow2 written by `qemu-img convert` (tables
//!   before data); wall time of this decoder (read 1 MiB chunks → decode → pwrite data extents
//!   into a sparse raw file) against `qemu-img convert -f qcow2 -O raw` of the same file, in the
//!   same run, plus decode-only time.
//! - `peak_memory_8gib_virtual`: VmHWM growth while decoding 8 GiB-virtual qcow2 images whose
//!   tables scale (64 KiB and 4 KiB clusters, preallocation=metadata, so every L2 table is
//!   present and precedes the data). One case per process:
//!   `IMGPIPE_PERF_CASE=c4k cargo test --release ... peak_memory -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)]

#[path = "support/decode.rs"]
mod support;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use imgpipe_format::Format;
use imgpipe_format::decode::{DecodeOptions, Extent, decoder_for};
use support::*;

fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Stream `img` through the decoder; write data extents to `out` if given. Returns seconds and
/// decoded data bytes.
fn decode_file(img: &Path, out: Option<&Path>) -> (f64, u64) {
    let t = Instant::now();
    let mut f = std::fs::File::open(img).unwrap();
    let sink = out.map(|p| std::fs::File::create(p).unwrap());
    let mut dec = decoder_for(Format::Qcow2, &DecodeOptions::default()).unwrap();
    let mut exts = Vec::new();
    let mut data_bytes = 0u64;
    let mut drain = |exts: &mut Vec<Extent>| {
        for e in exts.drain(..) {
            if let Extent::Data { offset, data } = e {
                data_bytes += data.len() as u64;
                if let Some(s) = &sink {
                    s.write_all_at(&data, offset).unwrap();
                }
            }
        }
    };
    loop {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        while n < buf.len() {
            let r = f.read(&mut buf[n..]).unwrap();
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            break;
        }
        buf.truncate(n);
        dec.feed(&Bytes::from(buf), &mut exts).unwrap();
        drain(&mut exts);
    }
    dec.finish(&mut exts).unwrap();
    drain(&mut exts);
    if let Some(s) = &sink {
        s.set_len(dec.virtual_size().unwrap()).unwrap();
    }
    (t.elapsed().as_secs_f64(), data_bytes)
}

#[test]
#[ignore = "measurement: ~1 GiB of temp files, run in release"]
fn throughput_1gib_in_order_qcow2() {
    if !have_qemu("throughput_1gib_in_order_qcow2") {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let src = dir.path().join("src.raw");
    std::fs::write(&src, raw_source(1 << 30, 99)).unwrap();
    let img = dir.path().join("big.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        src.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    std::fs::remove_file(&src).unwrap();
    let len = std::fs::metadata(&img).unwrap().len();
    // Warm the page cache for both readers.
    let _ = std::fs::read(&img).unwrap();
    let out_q = dir.path().join("qemu.raw");
    let out_d = dir.path().join("ours.raw");
    for round in 0..2 {
        let t = Instant::now();
        qemu_img(&[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            img.to_str().unwrap(),
            out_q.to_str().unwrap(),
        ]);
        let q = t.elapsed().as_secs_f64();
        let (d, data) = decode_file(&img, Some(&out_d));
        let (only, _) = decode_file(&img, None);
        println!(
            "round {round}: qcow2 {len} bytes ({data} data bytes decoded): qemu-img convert -O raw \
             {q:.2} s ({:.0} MB/s); imgpipe decode+pwrite {d:.2} s ({:.0} MB/s); decode only \
             {only:.2} s ({:.0} MB/s)",
            len as f64 / q / 1e6,
            len as f64 / d / 1e6,
            len as f64 / only / 1e6
        );
        assert_eq!(
            sha256(&std::fs::read(&out_q).unwrap()),
            sha256(&std::fs::read(&out_d).unwrap())
        );
    }
}

#[test]
#[ignore = "measurement: decodes 8 GiB-virtual images, run in release"]
fn peak_memory_8gib_virtual() {
    if !have_qemu("peak_memory_8gib_virtual") {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    for (name, opts) in [
        ("c64k.qcow2", "cluster_size=65536,preallocation=metadata"),
        ("c4k.qcow2", "cluster_size=4096,preallocation=metadata"),
    ] {
        // IMGPIPE_PERF_CASE=c4k (or c64k) measures one case per process (VmHWM is a peak).
        if std::env::var("IMGPIPE_PERF_CASE").is_ok_and(|c| !name.starts_with(c.as_str())) {
            continue;
        }
        let img = dir.path().join(name);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            opts,
            img.to_str().unwrap(),
            "8G",
        ]);
        let cmds: Vec<String> = (0..64u64)
            .map(|i| format!("write -P {} {} 64k", i + 1, i * 127 * 1024 * 1024 + 4096))
            .collect();
        qemu_io("qcow2", &img, &cmds);
        let before = vm_hwm_kib();
        let (t, data) = decode_file(&img, None);
        let after = vm_hwm_kib();
        println!(
            "{name} ({opts}): stream {} bytes, {data} data bytes, {t:.1} s; VmHWM {before} → \
             {after} KiB (+{} KiB)",
            std::fs::metadata(&img).unwrap().len(),
            after - before
        );
    }
}
