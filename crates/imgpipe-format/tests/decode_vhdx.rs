//! VHDX → raw, checked against `qemu-img convert -f vhdx -O raw`, plus named errors.
#![allow(clippy::unwrap_used)]

#[path = "support/decode.rs"]
mod support;

use std::path::{Path, PathBuf};

use imgpipe_format::Format;
use support::*;

fn convert(dir: &Path, src: &Path, name: &str, opts: &str) -> PathBuf {
    let out = dir.join(name);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vhdx",
        "-o",
        opts,
        src.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    out
}

/// A fresh CRC-32C over a patched header (4 KiB) or region table (64 KiB).
fn crc32c(b: &[u8]) -> u32 {
    let mut c = !0u32;
    for x in b {
        c ^= u32::from(*x);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn refresh(b: &mut [u8], at: usize, len: usize) {
    b[at + 4..at + 8].fill(0);
    let c = crc32c(&b[at..at + len]);
    b[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
}

#[test]
fn vhdx_matches_qemu() {
    if !have_qemu("vhdx_matches_qemu") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = write_source(dir.path(), "src.raw", 5 * 1024 * 1024 + 7 * 512, 51);
    for (name, opts) in [
        ("dyn.vhdx", "subformat=dynamic"),
        ("dyn-1m.vhdx", "subformat=dynamic,block_size=1M"),
        (
            "dyn-nozero.vhdx",
            "subformat=dynamic,block_size=1M,block_state_zero=off",
        ),
        ("fixed.vhdx", "subformat=fixed,block_size=1M"),
    ] {
        let img = convert(dir.path(), &s, name, opts);
        assert_matches_qemu(&img, "vhdx", Format::Vhdx, &[7, 4096, 65536, 0]);
    }
    // Written out of order by qemu-io.
    let img = dir.path().join("written.vhdx");
    qemu_img(&[
        "create",
        "-f",
        "vhdx",
        "-o",
        "block_size=1M",
        img.to_str().unwrap(),
        "8M",
    ]);
    let cmds: Vec<String> = (0..7u64)
        .rev()
        .map(|i| format!("write -P {} {} 3k", i + 1, i * 1100 * 1024 + 512))
        .collect();
    qemu_io("vhdx", &img, &cmds);
    assert_matches_qemu(&img, "vhdx", Format::Vhdx, CHUNKS);
}

#[test]
fn malformed_vhdx_give_named_errors() {
    if !have_qemu("malformed_vhdx_give_named_errors") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = write_source(dir.path(), "src.raw", 2 * 1024 * 1024, 6);
    let good = std::fs::read(convert(dir.path(), &s, "g.vhdx", "block_size=1M")).unwrap();
    decode(Format::Vhdx, &good, 65536).unwrap();
    let err = |b: &[u8], needle: &str| {
        let e = decode(Format::Vhdx, b, 4096).err().unwrap();
        assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
    };
    // Non-empty log in both headers.
    let mut b = good.clone();
    for h in [64 * 1024, 128 * 1024] {
        b[h + 48] = 1;
        refresh(&mut b, h, 4096);
    }
    err(&b, "log is not empty");
    // Both headers corrupt.
    let mut b = good.clone();
    b[64 * 1024 + 100] ^= 1;
    b[128 * 1024 + 100] ^= 1;
    err(&b, "neither header");
    // One header corrupt: the other is used.
    let mut b = good.clone();
    b[64 * 1024 + 100] ^= 1;
    decode(Format::Vhdx, &b, 4096).unwrap();
    // Region table checksum.
    let mut b = good.clone();
    b[192 * 1024 + 40] ^= 1;
    err(&b, "region table");
    // Unknown required region.
    let mut b = good.clone();
    let r = 192 * 1024;
    let n = u32::from_le_bytes(b[r + 8..r + 12].try_into().unwrap()) as usize;
    let e = r + 16 + n * 32;
    b[e..e + 16].copy_from_slice(&[0x42; 16]);
    b[e + 16..e + 24].copy_from_slice(&(32u64 << 20).to_le_bytes());
    b[e + 24..e + 28].copy_from_slice(&(1u32 << 20).to_le_bytes());
    b[e + 28..e + 32].copy_from_slice(&1u32.to_le_bytes());
    b[r + 8..r + 12].copy_from_slice(&(n as u32 + 1).to_le_bytes());
    refresh(&mut b, r, 64 * 1024);
    err(&b, "unknown required region");
    // HasParent in the file parameters.
    let meta = (0..n)
        .map(|i| r + 16 + i * 32)
        .find(|&e| b[e..e + 4] == [0x06, 0xA2, 0x7C, 0x8B])
        .map(|e| u64::from_le_bytes(good[e + 16..e + 24].try_into().unwrap()) as usize)
        .unwrap();
    let mut b = good.clone();
    let fp = (0..8)
        .map(|i| meta + 32 + i * 32)
        .find(|&e| b[e..e + 4] == [0x37, 0x67, 0xA1, 0xCA])
        .unwrap();
    let off = meta + u32::from_le_bytes(b[fp + 16..fp + 20].try_into().unwrap()) as usize;
    b[off + 4] |= 2;
    err(&b, "HasParent");
    // Not VHDX.
    err(&vec![0u8; 300 * 1024], "vhdxfile");
}
