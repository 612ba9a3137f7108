//! Table entries that point into the image's own metadata (header, descriptor, L1/L2 tables,
//! refcount table, grain directory/tables, VHD footer copy, dynamic header, BAT) are refused by
//! a named check (`DecodeError::Rejected`), at every chunk size, whether the metadata they name
//! lies behind the entry in the stream or ahead of it. Images are made by qemu-img / qemu-io at
//! test time and then patched.
#![allow(clippy::unwrap_used)]

#[path = "support/decode.rs"]
mod support;

use std::path::Path;

use imgpipe_format::Format;
use imgpipe_format::decode::DecodeError;
use support::*;

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Decode `b` at several chunk sizes; every run must fail with `Rejected { check }`.
fn assert_rejected(format: Format, b: &[u8], check: &str, case: &str) {
    for chunk in [7usize, 512, 4096, b.len()] {
        match decode(format, b, chunk) {
            Ok(_) => panic!("{case}: decoded at chunk {chunk}; expected check {check}"),
            Err(e @ DecodeError::Rejected { .. }) => {
                assert_eq!(e.check(), Some(check), "{case}: {e}");
                assert!(e.to_string().contains(check), "{case}: {e}");
            }
            Err(e) => panic!("{case}: at chunk {chunk}: {e} ({e:?}); expected check {check}"),
        }
    }
}

fn make(dir: &Path, fmt: &str, name: &str, opts: &str, size: &str, writes: &[&str]) -> Vec<u8> {
    let p = dir.join(name);
    let mut args = vec!["create", "-f", fmt];
    if !opts.is_empty() {
        args.extend_from_slice(&["-o", opts]);
    }
    args.extend_from_slice(&[p.to_str().unwrap(), size]);
    qemu_img(&args);
    let cmds: Vec<String> = writes.iter().map(|w| format!("write -P 7 {w}")).collect();
    if !cmds.is_empty() {
        qemu_io(fmt, &p, &cmds);
    }
    std::fs::read(&p).unwrap()
}

const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;

#[test]
fn qcow2_entries_into_metadata_are_rejected() {
    if !have_qemu("qcow2_entries_into_metadata_are_rejected") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 64 KiB clusters: header 0, refcount table, refcount block, L1, L2, data.
    let img = make(dir.path(), "qcow2", "a.qcow2", "", "1M", &["0 64k"]);
    assert!(decode(Format::Qcow2, &img, img.len()).is_ok());
    let l1 = be64(&img, 40) as usize;
    let rt = be64(&img, 48);
    let l2 = (be64(&img, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let data = be64(&img, l2) & 0x00ff_ffff_ffff_fe00;
    assert!(rt < l1 as u64 && (l1 as u64) < l2 as u64 && (l2 as u64) < data);

    let patch_l2 = |v: u64| {
        let mut b = img.clone();
        b[l2..l2 + 8].copy_from_slice(&v.to_be_bytes());
        b
    };
    for (what, entry) in [
        ("L2 entry -> L1 table", COPIED | l1 as u64),
        ("L2 entry -> its own L2 table", COPIED | l2 as u64),
        ("L2 entry -> refcount table", COPIED | rt),
        // Compressed: offset 0 (the header), one sector.
        ("compressed L2 entry -> header", COMPRESSED),
    ] {
        assert_rejected(Format::Qcow2, &patch_l2(entry), "qcow2.l2_entry", what);
    }
    let patch_l1 = |v: u64| {
        let mut b = img.clone();
        b[l1..l1 + 8].copy_from_slice(&v.to_be_bytes());
        b
    };
    for (what, entry) in [
        ("L1 entry -> refcount table", COPIED | rt),
        ("L1 entry -> L1 table", COPIED | l1 as u64),
    ] {
        assert_rejected(Format::Qcow2, &patch_l1(entry), "qcow2.l1_entry", what);
    }
}

#[test]
fn qcow2_entry_into_a_later_l2_table_is_rejected() {
    if !have_qemu("qcow2_entry_into_a_later_l2_table_is_rejected") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 4 KiB clusters: one L2 table maps 2 MiB, so writes at 0 and 6 MiB allocate two L2
    // tables, the second after the first data cluster.
    let img = make(
        dir.path(),
        "qcow2",
        "b.qcow2",
        "cluster_size=4096",
        "8M",
        &["0 4k", "6M 4k"],
    );
    assert!(decode(Format::Qcow2, &img, img.len()).is_ok());
    let l1 = be64(&img, 40) as usize;
    let first = (be64(&img, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let second = be64(&img, l1 + 3 * 8) & 0x00ff_ffff_ffff_fe00;
    assert!(
        second > first as u64 + 4096,
        "second L2 table after the first data"
    );
    // Before the fix this decoded "fine": the second L2 table's bytes became guest data.
    let mut b = img.clone();
    b[first..first + 8].copy_from_slice(&(COPIED | second).to_be_bytes());
    assert_rejected(
        Format::Qcow2,
        &b,
        "qcow2.l2_entry",
        "L2 entry -> later L2 table",
    );
}

#[test]
fn vmdk_entries_into_metadata_are_rejected() {
    if !have_qemu("vmdk_entries_into_metadata_are_rejected") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, opts) in [("a.vmdk", ""), ("s.vmdk", "subformat=streamOptimized")] {
        let img = make(dir.path(), "vmdk", name, opts, "1M", &["0 64k"]);
        assert!(decode(Format::Vmdk, &img, img.len()).is_ok());
        let gd = le64(&img, 56) as usize * 512;
        let gt = le32(&img, gd) as usize * 512;
        let desc = le64(&img, 28) as u32;
        assert_eq!(desc, 1);
        let patch_gt = |sector: u32| {
            let mut b = img.clone();
            b[gt..gt + 4].copy_from_slice(&sector.to_le_bytes());
            b
        };
        for (what, sector) in [
            ("grain -> descriptor (sector 1)", 1u32),
            ("grain -> grain directory", (gd / 512) as u32),
            ("grain -> its own grain table", (gt / 512) as u32),
        ] {
            assert_rejected(
                Format::Vmdk,
                &patch_gt(sector),
                "vmdk.grain_table",
                &format!("{name}: {what}"),
            );
        }
        let mut b = img.clone();
        b[gd..gd + 4].copy_from_slice(&1u32.to_le_bytes());
        assert_rejected(
            Format::Vmdk,
            &b,
            "vmdk.grain_directory",
            &format!("{name}: grain table -> descriptor"),
        );
    }
}

#[test]
fn vhd_entries_into_metadata_are_rejected() {
    if !have_qemu("vhd_entries_into_metadata_are_rejected") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "vpc", "a.vhd", "", "4M", &["0 64k"]);
    assert!(decode(Format::Vhd, &img, img.len()).is_ok());
    let dh = be64(&img, 16) as usize;
    let bat = be64(&img, dh + 16) as usize;
    assert_ne!(be32(&img, bat), u32::MAX);
    for (what, sector) in [
        ("block -> footer copy (sector 0)", 0u32),
        ("block -> dynamic header", (dh / 512) as u32),
        ("block -> BAT", (bat / 512) as u32),
    ] {
        let mut b = img.clone();
        b[bat..bat + 4].copy_from_slice(&sector.to_be_bytes());
        assert_rejected(Format::Vhd, &b, "vhd.block_table", what);
    }
    // The BAT itself placed over the footer copy (the dynamic header has its own checksum,
    // which the decoder, like qemu, does not check).
    let mut b = img.clone();
    b[dh + 16..dh + 24].copy_from_slice(&0u64.to_be_bytes());
    assert_rejected(Format::Vhd, &b, "vhd.block_table", "BAT -> footer copy");
}

#[test]
fn vhdx_entries_into_metadata_are_rejected() {
    if !have_qemu("vhdx_entries_into_metadata_are_rejected") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "vhdx", "a.vhdx", "", "8M", &["0 64k"]);
    assert!(decode(Format::Vhdx, &img, img.len()).is_ok());
    // Region table at 192 KiB: find the BAT and metadata regions by GUID.
    let rt = 192 * 1024;
    let bat_guid = [
        0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a,
        0x08,
    ];
    let (mut bat, mut meta) = (0usize, 0u64);
    for i in 0..le32(&img, rt + 8) as usize {
        let e = rt + 16 + i * 32;
        if img[e..e + 16] == bat_guid {
            bat = le64(&img, e + 16) as usize;
        } else {
            meta = le64(&img, e + 16);
        }
    }
    assert!(bat > 0 && meta > 0);
    let log = le64(&img, 64 * 1024 + 72);
    assert_eq!(le64(&img, bat) & 7, 6, "block 0 is present");
    for (what, off) in [
        ("block -> log", log),
        ("block -> BAT", bat as u64),
        ("block -> metadata region", meta),
    ] {
        let mut b = img.clone();
        b[bat..bat + 8].copy_from_slice(&(off | 6).to_le_bytes());
        assert_rejected(Format::Vhdx, &b, "vhdx.bat_entry", what);
    }
}

#[test]
fn vdi_data_area_over_metadata_is_rejected() {
    if !have_qemu("vdi_data_area_over_metadata_is_rejected") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "vdi", "a.vdi", "", "4M", &["0 64k"]);
    assert!(decode(Format::Vdi, &img, img.len()).is_ok());
    let bmap = le32(&img, 340);
    assert!(bmap >= 512);
    // Data blocks starting on the block map: block 0 would be the map itself.
    let mut b = img.clone();
    b[344..348].copy_from_slice(&bmap.to_le_bytes());
    assert_rejected(Format::Vdi, &b, "vdi.data_offset", "data area -> block map");
    let mut b = img.clone();
    b[340..344].copy_from_slice(&0u32.to_le_bytes());
    assert_rejected(Format::Vdi, &b, "vdi.block_map", "block map -> header");
}
