//! VMDK (monolithicSparse, streamOptimized) → raw, checked against `qemu-img convert -f vmdk
//! -O raw`. Includes a streamOptimized stream built here the way VMware writes it (grain
//! directory and footer at the end, grains out of LBA order), which qemu-img also reads.
#![allow(clippy::unwrap_used)]

#[path = "support/decode.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};

use imgpipe_format::Format;
use imgpipe_format::decode::DecodeError;
use support::*;

fn convert(dir: &Path, src: &Path, name: &str, opts: &str) -> PathBuf {
    let out = dir.join(name);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        opts,
        src.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    out
}

fn check(img: &Path, chunks: &[usize]) {
    assert_matches_qemu(img, "vmdk", Format::Vmdk, chunks);
}

#[test]
fn converted_vmdks_match_qemu() {
    if !have_qemu("converted_vmdks_match_qemu") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = write_source(dir.path(), "src.raw", 3 * 1024 * 1024 + 4096, 7);
    for (name, opts) in [
        ("sparse.vmdk", "subformat=monolithicSparse"),
        (
            "sparse-zg.vmdk",
            "subformat=monolithicSparse,zeroed_grain=on",
        ),
        ("stream.vmdk", "subformat=streamOptimized"),
    ] {
        let img = convert(dir.path(), &s, name, opts);
        check(&img, CHUNKS);
    }
    let small = write_source(dir.path(), "small.raw", 200 * 1024, 9);
    for (name, opts) in [
        ("small-sparse.vmdk", "subformat=monolithicSparse"),
        ("small-stream.vmdk", "subformat=streamOptimized"),
    ] {
        let img = convert(dir.path(), &small, name, opts);
        check(&img, &[1, 7, 512, 4096, 65536, 0]);
    }
}

#[test]
fn qemu_io_written_sparse_out_of_order() {
    if !have_qemu("qemu_io_written_sparse_out_of_order") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("written.vmdk");
    qemu_img(&[
        "create",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on",
        img.to_str().unwrap(),
        "5M",
    ]);
    let mut cmds = Vec::new();
    for i in (0..30u64).rev() {
        cmds.push(format!("write -P {} {} 3k", i + 1, i * 170 * 1024 + 1024));
    }
    cmds.push("write -z 4M 128k".into());
    qemu_io("vmdk", &img, &cmds);
    check(&img, CHUNKS);
}

/// A VMware-style streamOptimized stream: header with GD_AT_END, grains (in the given LBA
/// order), grain table, grain directory, footer, end-of-stream marker.
fn vmware_stream(disk: &[u8], order: &[u64], tamper_gt: bool) -> Vec<u8> {
    let grain = 128u64; // sectors
    let gb = (grain * 512) as usize;
    let capacity = (disk.len() / 512) as u64;
    let header = |gd: u64| {
        let mut h = vec![0u8; 512];
        h[0..4].copy_from_slice(b"KDMV");
        h[4..8].copy_from_slice(&3u32.to_le_bytes());
        h[8..12].copy_from_slice(&(1u32 | 1 << 16 | 1 << 17).to_le_bytes());
        h[12..20].copy_from_slice(&capacity.to_le_bytes());
        h[20..28].copy_from_slice(&grain.to_le_bytes());
        h[28..36].copy_from_slice(&1u64.to_le_bytes());
        h[36..44].copy_from_slice(&20u64.to_le_bytes());
        h[44..48].copy_from_slice(&512u32.to_le_bytes());
        h[56..64].copy_from_slice(&gd.to_le_bytes());
        h[64..72].copy_from_slice(&128u64.to_le_bytes());
        h[73..77].copy_from_slice(b"\n \r\n");
        h[77..79].copy_from_slice(&1u16.to_le_bytes());
        h
    };
    let mut f = header(u64::MAX);
    let desc = format!(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\n# Extent description\nRW {capacity} SPARSE \"x.vmdk\"\n\n\
         ddb.adapterType = \"ide\"\n"
    );
    let mut d = desc.into_bytes();
    d.resize(20 * 512, 0);
    f.extend_from_slice(&d);
    f.resize(128 * 512, 0);
    let pad = |f: &mut Vec<u8>| {
        let n = f.len().div_ceil(512) * 512;
        f.resize(n, 0);
    };
    let grains = (capacity as usize * 512).div_ceil(gb);
    let mut gt = vec![0u32; 512];
    for &g in order {
        let g = g as usize;
        let chunk = &disk[g * gb..((g + 1) * gb).min(disk.len())];
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(chunk).unwrap();
        let c = z.finish().unwrap();
        gt[g] = (f.len() / 512) as u32;
        f.extend_from_slice(&(g as u64 * grain).to_le_bytes());
        f.extend_from_slice(&(c.len() as u32).to_le_bytes());
        f.extend_from_slice(&c);
        pad(&mut f);
    }
    assert!(grains <= 512);
    if tamper_gt {
        let g = order[0] as usize;
        gt[g] += 1;
    }
    let meta = |f: &mut Vec<u8>, sectors: u64, typ: u32| {
        f.extend_from_slice(&sectors.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&typ.to_le_bytes());
        pad(f);
    };
    meta(&mut f, 4, 1);
    let gt_sector = (f.len() / 512) as u32;
    for e in &gt {
        f.extend_from_slice(&e.to_le_bytes());
    }
    meta(&mut f, 1, 2);
    let gd_sector = (f.len() / 512) as u64;
    f.extend_from_slice(&gt_sector.to_le_bytes());
    pad(&mut f);
    meta(&mut f, 1, 3);
    f.extend_from_slice(&header(gd_sector));
    meta(&mut f, 0, 0);
    f
}

#[test]
fn vmware_style_stream_with_directory_at_the_end() {
    if !have_qemu("vmware_style_stream_with_directory_at_the_end") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = raw_source(40 * 65536 + 3 * 512, 77);
    // Grains out of order, all-zero grains skipped.
    let gb = 65536;
    let mut order: Vec<u64> = (0..disk.len().div_ceil(gb) as u64)
        .filter(|g| {
            let s = *g as usize * gb;
            disk[s..(s + gb).min(disk.len())].iter().any(|b| *b != 0)
        })
        .collect();
    let mut rng = Rng(3);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let bytes = vmware_stream(&disk, &order, false);
    let img = dir.path().join("vmware.vmdk");
    std::fs::write(&img, &bytes).unwrap();
    let want = qemu_raw(&img, "vmdk");
    assert_eq!(
        want, disk,
        "qemu-img must read the crafted stream as the source disk"
    );
    check(&img, &[1, 7, 4096, 65536, 0]);

    // A grain table that disagrees with the grain markers is refused.
    let bad = vmware_stream(&disk, &order, true);
    let e = decode(Format::Vmdk, &bad, 4096).err().unwrap();
    assert!(e.to_string().contains("grain table entry for LBA"), "{e}");
    // Missing end-of-stream marker.
    let e = decode(Format::Vmdk, &bytes[..bytes.len() - 512], 4096)
        .err()
        .unwrap();
    assert!(e.to_string().contains("end of the stream"), "{e}");
}

#[test]
fn malformed_vmdks_give_named_errors() {
    if !have_qemu("malformed_vmdks_give_named_errors") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = write_source(dir.path(), "src.raw", 512 * 1024, 2);
    let good = std::fs::read(convert(
        dir.path(),
        &s,
        "g.vmdk",
        "subformat=monolithicSparse",
    ))
    .unwrap();
    decode(Format::Vmdk, &good, 4096).unwrap();
    let desc_at = 512usize;
    let desc_text = |b: &[u8]| {
        let d = &b[desc_at..desc_at + 20 * 512];
        String::from_utf8_lossy(&d[..d.iter().position(|c| *c == 0).unwrap()]).into_owned()
    };
    let with_desc = |text: &str| {
        let mut b = good.clone();
        b[desc_at..desc_at + 20 * 512].fill(0);
        b[desc_at..desc_at + text.len()].copy_from_slice(text.as_bytes());
        b
    };
    let text = desc_text(&good);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            with_desc(&text.replace("parentCID=ffffffff", "parentCID=12345678")),
            "parent image",
        ),
        (
            with_desc(&format!("{text}\nparentFileNameHint=\"base.vmdk\"\n")),
            "parentFileNameHint",
        ),
        (
            with_desc(&text.replace("SPARSE", "FLAT")),
            "extent type \"FLAT\"",
        ),
        (
            with_desc(&text.replace("# The Disk Data Base", "RW 10 SPARSE \"other.vmdk\"\n")),
            "extent",
        ),
        (
            with_desc(&text.replace("monolithicSparse", "twoGbMaxExtentSparse")),
            "createType",
        ),
    ];
    for (b, needle) in cases {
        let e = decode(Format::Vmdk, &b, 4096).err().unwrap();
        assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
    }
    // Grain size not a power of two.
    let mut b = good.clone();
    b[20..28].copy_from_slice(&100u64.to_le_bytes());
    assert!(matches!(
        decode(Format::Vmdk, &b, 4096),
        Err(DecodeError::Malformed { .. })
    ));
    // A grain table entry past the end of the stream.
    let gd = u64::from_le_bytes(b[56..64].try_into().unwrap()) as usize * 512;
    let gt = u32::from_le_bytes(good[gd..gd + 4].try_into().unwrap()) as usize * 512;
    let mut b = good.clone();
    b[gt..gt + 4].copy_from_slice(&0x0100_0000u32.to_le_bytes());
    let e = decode(Format::Vmdk, &b, 4096).err().unwrap();
    assert!(e.to_string().contains("past the end of the stream"), "{e}");
}
