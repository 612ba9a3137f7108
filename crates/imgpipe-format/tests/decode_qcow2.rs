//! qcow2 → raw decoding, checked against `qemu-img convert -f qcow2 -O raw` of the same image:
//! a matrix of compat levels, cluster sizes, compression types, extended L2, preallocation,
//! images written by qemu-io in host order ≠ guest order, and an image whose internal snapshot
//! was overwritten (data before the table that maps it). Plus chunking invariance, the spill
//! bound and named errors for crafted malformed tables.
#![allow(clippy::unwrap_used)]

#[path = "support/decode.rs"]
mod support;

use std::path::{Path, PathBuf};

use imgpipe_format::Format;
use imgpipe_format::decode::{DecodeError, DecodeOptions, FileSpill, MemorySpill};
use support::*;

const MIB: usize = 1 << 20;

fn src(dir: &Path, size: usize, seed: u64) -> PathBuf {
    write_source(dir, &format!("src-{seed}.raw"), size, seed)
}

fn convert(dir: &Path, src: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    args.extend_from_slice(extra);
    args.push(src.to_str().unwrap());
    args.push(out.to_str().unwrap());
    qemu_img(&args);
    out
}

fn check(img: &Path, chunks: &[usize]) {
    assert_matches_qemu(img, "qcow2", Format::Qcow2, chunks);
}

#[test]
fn converted_matrix_matches_qemu() {
    if !have_qemu("converted_matrix_matches_qemu") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = src(dir.path(), 3 * MIB + 7 * 512, 11);
    let cases: &[(&str, &[&str])] = &[
        ("v2-512.qcow2", &["-o", "compat=0.10,cluster_size=512"]),
        ("v2-4k.qcow2", &["-o", "compat=0.10,cluster_size=4096"]),
        ("v2-64k.qcow2", &["-o", "compat=0.10"]),
        ("v2-2m.qcow2", &["-o", "compat=0.10,cluster_size=2M"]),
        ("v3-512.qcow2", &["-o", "compat=1.1,cluster_size=512"]),
        ("v3-64k.qcow2", &["-o", "compat=1.1"]),
        ("v3-2m.qcow2", &["-o", "compat=1.1,cluster_size=2M"]),
        ("zlib-4k.qcow2", &["-c", "-o", "cluster_size=4096"]),
        ("zlib-64k.qcow2", &["-c"]),
        ("zlib-v2-64k.qcow2", &["-c", "-o", "compat=0.10"]),
        ("zstd-64k.qcow2", &["-c", "-o", "compression_type=zstd"]),
        (
            "zstd-1k.qcow2",
            &["-c", "-o", "compression_type=zstd,cluster_size=1024"],
        ),
        (
            "zstd-2m.qcow2",
            &["-c", "-o", "compression_type=zstd,cluster_size=2M"],
        ),
        ("extl2-64k.qcow2", &["-o", "extended_l2=on"]),
        ("extl2-2m.qcow2", &["-o", "extended_l2=on,cluster_size=2M"]),
        (
            "extl2-zlib-32k.qcow2",
            &["-c", "-o", "extended_l2=on,cluster_size=32768"],
        ),
        ("prealloc-meta.qcow2", &["-o", "preallocation=metadata"]),
        (
            "prealloc-full.qcow2",
            &["-o", "preallocation=full,cluster_size=4096"],
        ),
        (
            "prealloc-falloc-ext.qcow2",
            &["-o", "preallocation=falloc,extended_l2=on"],
        ),
    ];
    for (name, extra) in cases {
        let img = convert(dir.path(), &s, name, extra);
        check(&img, &[4096, 65536, 0]);
    }
}

#[test]
fn chunking_invariance_including_single_bytes() {
    if !have_qemu("chunking_invariance_including_single_bytes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = src(dir.path(), 300 * 1024, 5);
    for (name, extra) in [
        ("small-64k.qcow2", vec!["-o", "compat=1.1"]),
        ("small-512.qcow2", vec!["-o", "cluster_size=512"]),
        ("small-zlib-4k.qcow2", vec!["-c", "-o", "cluster_size=4096"]),
        (
            "small-zstd.qcow2",
            vec!["-c", "-o", "compression_type=zstd"],
        ),
    ] {
        let img = convert(dir.path(), &s, name, &extra);
        check(&img, &[1, 7, 512, 4096, 65536, 0]);
        // Identical extents' meaning at every chunk size, and identical zero detection.
        let bytes = std::fs::read(&img).unwrap();
        let base = decode(Format::Qcow2, &bytes, bytes.len()).unwrap();
        for chunk in [1usize, 7, 4096] {
            let d = decode(Format::Qcow2, &bytes, chunk).unwrap();
            assert_eq!(d.disk, base.disk, "{name} chunk {chunk}");
            assert_eq!(
                d.zero_bytes, base.zero_bytes,
                "{name} zero bytes at chunk {chunk}"
            );
        }
        assert!(
            base.zero_bytes > 0,
            "{name}: holes must come out as Zero extents"
        );
    }
}

/// Writes at descending and random guest offsets: host order ≠ guest order.
#[test]
fn qemu_io_written_out_of_order() {
    if !have_qemu("qemu_io_written_out_of_order") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, opts) in [
        ("desc-64k.qcow2", "cluster_size=65536"),
        ("desc-4k-v2.qcow2", "cluster_size=4096,compat=0.10"),
        ("desc-extl2.qcow2", "extended_l2=on,cluster_size=65536"),
    ] {
        let img = dir.path().join(name);
        qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            opts,
            img.to_str().unwrap(),
            "4M",
        ]);
        let mut cmds = Vec::new();
        for i in (0..40u64).rev() {
            let off = i * 100 * 1024 + 512;
            cmds.push(format!("write -P {} {off} {}", 0x10 + i, 4096 + i * 512));
        }
        cmds.push("write -z 1M 128k".into());
        qemu_io("qcow2", &img, &cmds);
        check(&img, CHUNKS);
    }
    // Random offsets.
    let img = dir.path().join("random.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        img.to_str().unwrap(),
        "6M",
    ]);
    let mut rng = Rng(0xfeed);
    let cmds: Vec<String> = (0..120)
        .map(|i| {
            let off = rng.below(6 * 1024 * 1024 - 20_000) / 512 * 512;
            let len = (1 + rng.below(24)) * 512;
            format!("write -P {} {off} {len}", i % 250 + 1)
        })
        .collect();
    qemu_io("qcow2", &img, &cmds);
    check(&img, CHUNKS);
}

/// An internal snapshot, then overwrites: the active L2 tables are copied to the end of the
/// file and map data clusters that precede them, so the decoder must spill.
#[test]
fn snapshot_then_overwrite_uses_the_spill() {
    if !have_qemu("snapshot_then_overwrite_uses_the_spill") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = src(dir.path(), 2 * MIB, 21);
    for (name, extra) in [
        ("snap-64k.qcow2", vec!["-o", "compat=1.1"]),
        ("snap-zlib.qcow2", vec!["-c", "-o", "cluster_size=4096"]),
        ("snap-extl2.qcow2", vec!["-o", "extended_l2=on"]),
    ] {
        let img = convert(dir.path(), &s, name, &extra);
        qemu_img(&["snapshot", "-c", "first", img.to_str().unwrap()]);
        qemu_io(
            "qcow2",
            &img,
            &[
                "write -P 0x5a 64k 4k".into(),
                "write -P 0x5b 1M 8k".into(),
                "write -z 1536k 64k".into(),
            ],
        );
        check(&img, CHUNKS);

        let bytes = std::fs::read(&img).unwrap();
        // It needs the spill: with a tiny bound it fails with a Limit error naming the bound.
        let mut tight = DecodeOptions::default();
        tight.spill_limit = 4096;
        match decode_with(Format::Qcow2, &bytes, 65536, &tight, None) {
            Err(DecodeError::Limit { message, .. }) => {
                assert!(message.contains("spill_limit is 4096"), "{message}")
            }
            Err(e) => panic!("{name}: expected a spill Limit error, got {e}"),
            Ok(_) => panic!("{name}: decoded within a 4 KiB spill; the case does not exercise it"),
        }
        // A file-backed spill store gives the same disk.
        let want = qemu_raw(&img, "qcow2");
        let fs = FileSpill::create(&dir.path().join(format!("{name}.spill"))).unwrap();
        let d = decode_with(
            Format::Qcow2,
            &bytes,
            4096,
            &DecodeOptions::default(),
            Some(Box::new(fs)),
        )
        .unwrap();
        assert_eq!(sha256(&d.disk), sha256(&want), "{name} with FileSpill");
        let d = decode_with(
            Format::Qcow2,
            &bytes,
            7,
            &DecodeOptions::default(),
            Some(Box::new(MemorySpill::new())),
        )
        .unwrap();
        assert_eq!(
            sha256(&d.disk),
            sha256(&want),
            "{name} with MemorySpill at chunk 7"
        );
    }
}

/// The L1 table grows (resize) and moves behind the L2 tables it names.
#[test]
fn relocated_l1_after_resize() {
    if !have_qemu("relocated_l1_after_resize") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("resized.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        img.to_str().unwrap(),
        "1M",
    ]);
    qemu_io(
        "qcow2",
        &img,
        &[
            "write -P 0x31 0 300k".into(),
            "write -P 0x32 700k 4k".into(),
        ],
    );
    qemu_img(&["resize", "-f", "qcow2", img.to_str().unwrap(), "64M"]);
    qemu_io("qcow2", &img, &["write -P 0x33 60M 8k".into()]);
    check(&img, CHUNKS);
}

// ---- malformed images: crafted byte patches give named errors ----

fn small_image(dir: &Path, extra: &[&str]) -> Vec<u8> {
    let s = src(dir, 256 * 1024, 3);
    let img = convert(dir, &s, "base.qcow2", extra);
    std::fs::read(img).unwrap()
}

fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().unwrap())
}

fn expect_err(bytes: &[u8], needle: &str) -> DecodeError {
    for chunk in [7usize, 65536, bytes.len()] {
        match decode(Format::Qcow2, bytes, chunk) {
            Ok(_) => panic!("decoded although {needle:?} was expected"),
            Err(e) => assert!(
                e.to_string().contains(needle),
                "error {e} does not mention {needle:?}"
            ),
        }
    }
    decode(Format::Qcow2, bytes, bytes.len()).err().unwrap()
}

#[test]
fn malformed_tables_give_named_errors() {
    if !have_qemu("malformed_tables_give_named_errors") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = small_image(dir.path(), &["-o", "compat=1.1"]);
    decode(Format::Qcow2, &good, 4096).unwrap();
    let l1_off = be64(&good, 40) as usize;
    let l2_off = (be64(&good, l1_off) & 0x00ff_ffff_ffff_fe00) as usize;

    // Backing file.
    let mut b = good.clone();
    b[8..16].copy_from_slice(&0x200u64.to_be_bytes());
    assert!(matches!(
        expect_err(&b, "backing file"),
        DecodeError::Unsupported { .. }
    ));
    // Encryption.
    let mut b = good.clone();
    b[32..36].copy_from_slice(&1u32.to_be_bytes());
    expect_err(&b, "encryption");
    // External data file bit, corrupt bit, unknown bit.
    for (bit, needle) in [
        (4u64, "external data file"),
        (2, "corrupt"),
        (1 << 9, "unknown incompatible"),
    ] {
        let mut b = good.clone();
        let v = be64(&b, 72) | bit;
        b[72..80].copy_from_slice(&v.to_be_bytes());
        expect_err(&b, needle);
    }
    // Cluster bits out of range.
    let mut b = good.clone();
    b[20..24].copy_from_slice(&22u32.to_be_bytes());
    assert!(matches!(
        expect_err(&b, "cluster_bits 22"),
        DecodeError::Malformed { .. }
    ));
    // L1 too small for the virtual size.
    let mut b = good.clone();
    b[24..32].copy_from_slice(&(1u64 << 40).to_be_bytes());
    expect_err(&b, "L1 table has");
    // Unaligned L2 offset in the L1 table.
    let mut b = good.clone();
    let v = be64(&b, l1_off) + 512;
    b[l1_off..l1_off + 8].copy_from_slice(&v.to_be_bytes());
    expect_err(&b, "not a multiple of the cluster size");
    // Reserved bits in an L2 entry.
    let mut b = good.clone();
    let first_alloc = (0..8192)
        .map(|j| l2_off + j * 8)
        .find(|&o| be64(&b, o) != 0)
        .unwrap();
    b[first_alloc] |= 0x02; // bit 57
    expect_err(&b, "reserved bits");
    // A data cluster past the end of the stream.
    let mut b = good.clone();
    let far = (be64(&b, first_alloc) & (1 << 63)) | (1u64 << 40);
    b[first_alloc..first_alloc + 8].copy_from_slice(&far.to_be_bytes());
    expect_err(&b, "past the end of the stream");
    // Truncated stream.
    expect_err(
        &good[..good.len() - 1000],
        "cut off by the end of the stream",
    );
    // A header extension running past the first cluster.
    let mut b = good.clone();
    let hl = u32::from_be_bytes(b[100..104].try_into().unwrap()) as usize;
    b[hl..hl + 4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    b[hl + 4..hl + 8].copy_from_slice(&0x10_0000u32.to_be_bytes());
    expect_err(&b, "runs past the first cluster");
    // Not qcow2 at all.
    expect_err(&[0u8; 4096], "no qcow2 magic");
}

#[test]
fn corrupt_compressed_cluster_is_named() {
    if !have_qemu("corrupt_compressed_cluster_is_named") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for ct in ["zlib", "zstd"] {
        let good = small_image(dir.path(), &["-c", "-o", &format!("compression_type={ct}")]);
        let l1_off = be64(&good, 40) as usize;
        let l2_off = (be64(&good, l1_off) & 0x00ff_ffff_ffff_fe00) as usize;
        let e = (0..8192)
            .map(|j| be64(&good, l2_off + j * 8))
            .find(|e| e & (1 << 62) != 0)
            .unwrap();
        let coff = (e & ((1u64 << 54) - 1)) as usize;
        let mut b = good.clone();
        for x in &mut b[coff..coff + 64] {
            *x ^= 0xff;
        }
        expect_err(&b, "compressed");
    }
}
