//! The decoder fuzz harness over the committed seed corpus (`fuzz/corpus/decode/`) and every
//! input a fuzzing run found to crash (each a named case below).
#![allow(clippy::unwrap_used)]

use imgpipe_format::decode::fuzz_one;

#[test]
fn seed_corpus_passes_the_harness() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        // Every chunk-size pair.
        for ch in 0..48u8 {
            let mut d = data.clone();
            d[1] = ch;
            fuzz_one(&d);
        }
        n += 1;
    }
    assert!(n >= 8, "seed corpus has only {n} files");
}

/// A VMDK sparse header with the given descriptor offset/size (sectors).
fn vmdk_header(desc_offset: u64, desc_size: u64, gd: u64, overhead: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[0..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&(3u32 | 3 << 16).to_le_bytes());
    h[12..20].copy_from_slice(&48u64.to_le_bytes());
    h[20..28].copy_from_slice(&128u64.to_le_bytes());
    h[28..36].copy_from_slice(&desc_offset.to_le_bytes());
    h[36..44].copy_from_slice(&desc_size.to_le_bytes());
    h[44..48].copy_from_slice(&512u32.to_le_bytes());
    h[56..64].copy_from_slice(&gd.to_le_bytes());
    h[64..72].copy_from_slice(&overhead.to_le_bytes());
    h[77..79].copy_from_slice(&1u16.to_le_bytes());
    h
}

/// Fuzz find (crash-144aac44…): a descriptor size in sectors whose byte size overflows u64
/// panicked in the size check; now a Limit error.
#[test]
fn fuzz_vmdk_descriptor_size_overflow() {
    for (off, size, gd, overhead) in [
        (1u64, 1u64 << 60, 1u64, 1u64),
        (1 << 60, 1, 1, 1),
        (1, 20, u64::MAX, 1 << 60),
        (1, 20, 1 << 60, 1),
    ] {
        let mut input = vec![2u8, 0x1b];
        input.extend_from_slice(&vmdk_header(off, size, gd, overhead));
        input.resize(input.len() + 4096, 0);
        fuzz_one(&input);
        let r =
            imgpipe_format::decode::decoder_for(imgpipe_format::Format::Vmdk, &Default::default())
                .unwrap()
                .feed(&bytes::Bytes::copy_from_slice(&input[2..]), &mut Vec::new());
        assert!(r.is_err(), "header {off} {size} {gd} {overhead} accepted");
    }
}

/// Descriptors the inspector finds unsafe (a parent, a second extent) that the decoder
/// accepted: keys and access words are case-insensitive to the inspector, and an extent line
/// containing `=` was taken for a `key=value` line by the decoder. Found by the
/// `vmdk_descriptor` fuzz target's invariant.
#[test]
fn fuzz_vmdk_descriptor_decoder_as_strict_as_inspector() {
    for d in [
        "createType=\"monolithicSparse\"\nRW 8 SPARSE \"a\"\nPARENTCID=1234abcd\n",
        "createType=\"monolithicSparse\"\nRW 8 SPARSE \"a\"\nparentfilenamehint=\"b\"\n",
        "createType=\"monolithicSparse\"\nRW 8 SPARSE \"a\"\nrw 8 SPARSE \"b\"\n",
        "createType=\"monolithicSparse\"\nRW 8 SPARSE \"a\"\nRW 8 SPARSE \"b=c\"\n",
    ] {
        imgpipe_format::fuzzing::vmdk_descriptor(d.as_bytes());
    }
    // The harness still accepts a plain descriptor.
    imgpipe_format::fuzzing::vmdk_descriptor(
        b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
          createType=\"monolithicSparse\"\nRW 8 SPARSE \"a.vmdk\"\n",
    );
}

/// The `vmdk_descriptor` harness over its committed seed corpus (`fuzz/corpus/vmdk_descriptor/`).
#[test]
fn vmdk_descriptor_seed_corpus_passes_the_harness() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/vmdk_descriptor");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        imgpipe_format::fuzzing::vmdk_descriptor(&std::fs::read(e.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n >= 3, "seed corpus has only {n} files");
}
