//! VHD (vpc dynamic and fixed) and VDI → raw, checked against `qemu-img convert -f <fmt> -O
//! raw`, plus named errors for crafted headers.
#![allow(clippy::unwrap_used)]

#[path = "support/decode.rs"]
mod support;

use std::path::{Path, PathBuf};

use imgpipe_format::Format;
use support::*;

fn convert(dir: &Path, src: &Path, fmt: &str, name: &str, opts: &str) -> PathBuf {
    let out = dir.join(name);
    let mut args = vec!["convert", "-f", "raw", "-O", fmt];
    if !opts.is_empty() {
        args.extend_from_slice(&["-o", opts]);
    }
    args.push(src.to_str().unwrap());
    args.push(out.to_str().unwrap());
    qemu_img(&args);
    out
}

fn vhd_checksum(b: &mut [u8]) {
    b[64..68].fill(0);
    let s = !b[..512]
        .iter()
        .fold(0u32, |a, x| a.wrapping_add(u32::from(*x)));
    b[64..68].copy_from_slice(&s.to_be_bytes());
}

#[test]
fn vpc_dynamic_and_fixed_match_qemu() {
    if !have_qemu("vpc_dynamic_and_fixed_match_qemu") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = write_source(dir.path(), "src.raw", 3 * 1024 * 1024 + 7 * 512, 31);
    for (name, opts) in [
        ("dyn.vhd", "subformat=dynamic"),
        ("dyn-forced.vhd", "subformat=dynamic,force_size=on"),
        ("fixed.vhd", "subformat=fixed"),
        ("fixed-forced.vhd", "subformat=fixed,force_size=on"),
    ] {
        let img = convert(dir.path(), &s, "vpc", name, opts);
        assert_matches_qemu(&img, "vpc", Format::Vhd, CHUNKS);
    }
    let small = write_source(dir.path(), "small.raw", 100 * 1024, 4);
    for (name, opts) in [
        ("sdyn.vhd", "subformat=dynamic"),
        ("sfixed.vhd", "subformat=fixed"),
    ] {
        let img = convert(dir.path(), &small, "vpc", name, opts);
        assert_matches_qemu(&img, "vpc", Format::Vhd, &[1, 7, 511, 512, 513, 4096, 0]);
    }
    // Written out of order by qemu-io.
    let img = dir.path().join("written.vhd");
    qemu_img(&["create", "-f", "vpc", img.to_str().unwrap(), "9M"]);
    let cmds: Vec<String> = (0..8u64)
        .rev()
        .map(|i| format!("write -P {} {} 5k", i + 1, i * 1100 * 1024 + 512))
        .collect();
    qemu_io("vpc", &img, &cmds);
    assert_matches_qemu(&img, "vpc", Format::Vhd, CHUNKS);
}

#[test]
fn vdi_matches_qemu() {
    if !have_qemu("vdi_matches_qemu") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = write_source(dir.path(), "src.raw", 3 * 1024 * 1024 + 7 * 512, 41);
    for (name, opts) in [("dyn.vdi", ""), ("static.vdi", "static=on")] {
        let img = convert(dir.path(), &s, "vdi", name, opts);
        assert_matches_qemu(&img, "vdi", Format::Vdi, CHUNKS);
    }
    let small = write_source(dir.path(), "small.raw", 100 * 1024, 5);
    let img = convert(dir.path(), &small, "vdi", "small.vdi", "");
    assert_matches_qemu(&img, "vdi", Format::Vdi, &[1, 7, 4096, 0]);
    let img = dir.path().join("written.vdi");
    qemu_img(&["create", "-f", "vdi", img.to_str().unwrap(), "6M"]);
    let cmds: Vec<String> = (0..6u64)
        .rev()
        .map(|i| format!("write -P {} {} 3k", i + 1, i * 1024 * 1024 + 4096))
        .collect();
    qemu_io("vdi", &img, &cmds);
    assert_matches_qemu(&img, "vdi", Format::Vdi, CHUNKS);
}

fn err(format: Format, b: &[u8], needle: &str) {
    for chunk in [7usize, 4096, b.len().max(1)] {
        match decode(format, b, chunk) {
            Ok(_) => panic!("decoded although {needle:?} was expected"),
            Err(e) => assert!(e.to_string().contains(needle), "{e} lacks {needle:?}"),
        }
    }
}

#[test]
fn malformed_vpc_and_vdi_give_named_errors() {
    if !have_qemu("malformed_vpc_and_vdi_give_named_errors") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = write_source(dir.path(), "src.raw", 256 * 1024, 8);
    let dyn_ = std::fs::read(convert(dir.path(), &s, "vpc", "d.vhd", "subformat=dynamic")).unwrap();
    let fixed = std::fs::read(convert(dir.path(), &s, "vpc", "f.vhd", "subformat=fixed")).unwrap();
    let vdi = std::fs::read(convert(dir.path(), &s, "vdi", "v.vdi", "")).unwrap();

    let mut b = dyn_.clone();
    b[40] ^= 1;
    err(Format::Vhd, &b, "footer checksum");
    let mut b = dyn_.clone();
    b[60..64].copy_from_slice(&4u32.to_be_bytes());
    vhd_checksum(&mut b);
    err(Format::Vhd, &b, "differencing");
    let mut b = dyn_.clone();
    b[512..520].copy_from_slice(b"xxxxxxxx");
    err(Format::Vhd, &b, "cxsparse");
    // Block size not a power of two.
    let mut b = dyn_.clone();
    b[512 + 32..512 + 36].copy_from_slice(&3000u32.to_be_bytes());
    err(Format::Vhd, &b, "block size 3000");
    // Fixed disk with extra bytes before the footer.
    let mut b = fixed[..fixed.len() - 512].to_vec();
    b.extend_from_slice(&[1u8; 512]);
    b.extend_from_slice(&fixed[fixed.len() - 512..]);
    err(Format::Vhd, &b, "differs from the");
    // Fixed disk without a footer.
    err(Format::Vhd, &fixed[..fixed.len() - 512], "conectix");

    let mut b = vdi.clone();
    b[440] = 1;
    err(Format::Vdi, &b, "parent UUID");
    let mut b = vdi.clone();
    b[376..380].copy_from_slice(&4096u32.to_le_bytes());
    err(Format::Vdi, &b, "block size 4096");
    let mut b = vdi.clone();
    b[368..376].copy_from_slice(&(1u64 << 40).to_le_bytes());
    err(Format::Vdi, &b, "block map has room");
    let mut b = vdi.clone();
    let bmap = u32::from_le_bytes(b[340..344].try_into().unwrap()) as usize;
    b[bmap..bmap + 4].copy_from_slice(&0x00ff_0000u32.to_le_bytes());
    err(Format::Vdi, &b, "past the end of the stream");
}
