#![allow(clippy::unwrap_used)]

use super::*;

fn inspect(data: &[u8], policy: Policy) -> Verdict {
    let mut i = Inspector::new(policy);
    i.feed(data);
    i.finish()
}

fn luks2(json: &str) -> Vec<u8> {
    let mut h = vec![0u8; 16384 + 4096];
    h[..6].copy_from_slice(b"LUKS\xba\xbe");
    h[6..8].copy_from_slice(&2u16.to_be_bytes());
    h[8..16].copy_from_slice(&16384u64.to_be_bytes());
    h[4096..4096 + json.len()].copy_from_slice(json.as_bytes());
    h
}

#[test]
fn empty_and_tiny_streams_are_raw_and_safe() {
    for len in [0usize, 1, 3, 511, 512, 1000] {
        let v = inspect(&vec![0u8; len], Policy::default());
        assert_eq!(v.format, Format::Raw, "len {len}");
        // qemu reports raw sizes in whole sectors.
        assert_eq!(v.virtual_size, Some((len as u64).div_ceil(512) * 512));
        assert_eq!(v.stream_len, Some(len as u64));
        assert!(v.is_safe(), "{:?}", v.violations);
    }
}

#[test]
fn truncated_qcow2_header_is_malformed_not_raw() {
    let v = inspect(b"QFI\xfb\0\0\0\x03\0\0", Policy::default());
    assert_eq!(v.format, Format::Qcow2);
    assert!(
        v.violation("qcow2.truncated").is_some(),
        "{:?}",
        v.violations
    );
}

#[test]
fn luks2_payload_from_json_segment() {
    let mut img = luks2(
        r#"{"segments":{"0":{"type":"crypt","offset":"16384","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":512}}}"#,
    );
    img.resize(16384 + 65536, 7);
    let v = inspect(&img, Policy::default());
    assert_eq!(v.format, Format::Luks);
    assert_eq!(v.subformat, Some("luks2"));
    assert_eq!(v.virtual_size, Some(65536));
    assert!(v.is_safe(), "{:?}", v.violations);

    let bad = luks2(r#"{"segments":{"0":{"offset":"99999999","size":"dynamic"}}}"#);
    let v = inspect(&bad, Policy::default());
    assert!(
        v.violation("luks.payload_offset").is_some(),
        "{:?}",
        v.violations
    );
    let bad = luks2(r#"{"segments": nope"#);
    assert!(
        inspect(&bad, Policy::default())
            .violation("luks.metadata")
            .is_some()
    );
}

#[test]
fn pure_udf_volume_recognition_sequence_is_iso() {
    let mut img = vec![0u8; 40 * 1024];
    img[32768 + 1..32768 + 6].copy_from_slice(b"BEA01");
    img[34816 + 1..34816 + 6].copy_from_slice(b"NSR03");
    img[36864 + 1..36864 + 6].copy_from_slice(b"TEA01");
    let v = inspect(&img, Policy::default());
    assert_eq!((v.format, v.subformat), (Format::Iso, Some("udf")));
    // Without the NSR descriptor it is just raw.
    img[34816 + 1..34816 + 6].copy_from_slice(b"XXXXX");
    assert_eq!(inspect(&img, Policy::default()).format, Format::Raw);
}

#[test]
fn tail_ring_keeps_the_last_bytes_across_chunkings() {
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    for chunk in [1usize, 7, 100, 1535, 1536, 1537, 5000] {
        let mut t = Tail::new();
        for c in data.chunks(chunk) {
            t.push(c);
        }
        assert_eq!(t.bytes(), data[data.len() - TAIL..], "chunk {chunk}");
    }
    let mut t = Tail::new();
    t.push(&data[..10]);
    assert_eq!(t.bytes(), data[..10]);
}

#[test]
fn compressed_and_legacy_formats_are_never_raw() {
    let cases: [(&[u8], Format); 6] = [
        (b"\x1f\x8b\x08\0\0\0\0\0", Format::Gzip),
        (b"\xfd7zXZ\0\0\0", Format::Xz),
        (b"\x28\xb5\x2f\xfd\0\0", Format::Zstd),
        (b"Bochs Virtual HD Image\0\0\0", Format::Bochs),
        (b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop\n", Format::Cloop),
        (b"WithoutFreeSpace\0\0\0\0", Format::Parallels),
    ];
    for (magic, fmt) in cases {
        let mut img = magic.to_vec();
        img.resize(4096, 0);
        let v = inspect(&img, Policy::default());
        assert_eq!(v.format, fmt);
        assert!(v.violation("format.unsupported").is_some());
    }
    let mut dmg = vec![0u8; 8192];
    dmg[8192 - 512..8192 - 508].copy_from_slice(b"koly");
    let v = inspect(&dmg, Policy::default());
    assert_eq!(v.format, Format::Dmg);
    assert!(!v.is_safe());
}

#[test]
fn vhdx_metadata_beyond_lookahead_is_reported() {
    // Valid identifier + headers + region table pointing the metadata past the look-ahead.
    let mut img = vec![0u8; 320 * 1024];
    img[..8].copy_from_slice(b"vhdxfile");
    for off in [65536usize, 131072] {
        let h = &mut img[off..off + 4096];
        h[..4].copy_from_slice(b"head");
        h[66..68].copy_from_slice(&1u16.to_le_bytes());
        let c = vhdx::crc32c(&[&h[..]]);
        h[4..8].copy_from_slice(&c.to_le_bytes());
    }
    let rt = &mut img[196608..196608 + 65536];
    rt[..4].copy_from_slice(b"regi");
    rt[8..12].copy_from_slice(&1u32.to_le_bytes());
    rt[16..32].copy_from_slice(&[
        0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88,
        0x6e,
    ]);
    rt[32..40].copy_from_slice(&(1u64 << 40).to_le_bytes());
    rt[40..44].copy_from_slice(&(1u32 << 20).to_le_bytes());
    let c = vhdx::crc32c(&[&rt[..]]);
    rt[4..8].copy_from_slice(&c.to_le_bytes());
    let v = inspect(&img, Policy::default());
    assert_eq!(v.format, Format::Vhdx);
    assert!(
        v.violation("vhdx.lookahead").is_some(),
        "{:?}",
        v.violations
    );
    assert!(v.bytes_examined <= MAX_LOOKAHEAD);
}

#[test]
fn crc32c_known_answer() {
    // RFC 3720 B.4: 32 bytes of zeros → 0x8A9136AA.
    assert_eq!(vhdx::crc32c(&[&[0u8; 32]]), 0x8A91_36AA);
    assert_eq!(vhdx::crc32c(&[b"123456789"]), 0xE306_9283);
}

#[test]
fn fuzz_one_accepts_odd_inputs() {
    for data in [
        &b""[..],
        b"QFI\xfb",
        b"KDMV\x01\0\0\0",
        b"conectix",
        b"vhdxfile",
        b"LUKS\xba\xbe\0\x02",
    ] {
        fuzz_one(data);
    }
}
