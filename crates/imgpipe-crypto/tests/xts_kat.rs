//! IEEE 1619-2007 (Annex B) XTS-AES known-answer vectors through [`Xts`].
//!
//! The published vectors use 32-byte data units (vectors 2, 3) or 512-byte data units (4, 10,
//! 19). XTS without ciphertext stealing encrypts block `j` of a data unit from the key, the
//! tweak, `j` and plaintext block `j` only, so a 32-byte vector is checked as the first 32
//! bytes of a 512-byte sector whose remaining plaintext is arbitrary.
#![allow(clippy::unwrap_used)]

use imgpipe_crypto::xts::{Backend, Xts, XtsError};

/// (name, key1 ‖ key2, data-unit sequence number, plaintext, ciphertext); `None` plaintext =
/// the 512-byte pattern 00 01 … ff 00 01 … ff.
const VECTORS: &[(&str, &str, u64, Option<&str>, &str)] = &[
    (
        "vector 2 (AES-128, 32 B)",
        "1111111111111111111111111111111122222222222222222222222222222222",
        0x33_3333_3333,
        Some("4444444444444444444444444444444444444444444444444444444444444444"),
        "c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0",
    ),
    (
        "vector 3 (AES-128, 32 B)",
        "fffefdfcfbfaf9f8f7f6f5f4f3f2f1f022222222222222222222222222222222",
        0x33_3333_3333,
        Some("4444444444444444444444444444444444444444444444444444444444444444"),
        "af85336b597afc1a900b2eb21ec949d292df4c047e0b21532186a5971a227a89",
    ),
    (
        "vector 4 (AES-128, 512 B)",
        "2718281828459045235360287471352631415926535897932384626433832795",
        0,
        None,
        concat!(
            "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c",
            "c78cf7f5e543445f8333d8fa7f56000005279fa5d8b5e4ad40e736ddb4d35412",
            "328063fd2aab53e5ea1e0a9f332500a5df9487d07a5c92cc512c8866c7e860ce",
            "93fdf166a24912b422976146ae20ce846bb7dc9ba94a767aaef20c0d61ad0265",
            "5ea92dc4c4e41a8952c651d33174be51a10c421110e6d81588ede82103a252d8",
            "a750e8768defffed9122810aaeb99f9172af82b604dc4b8e51bcb08235a6f434",
            "1332e4ca60482a4ba1a03b3e65008fc5da76b70bf1690db4eae29c5f1badd03c",
            "5ccf2a55d705ddcd86d449511ceb7ec30bf12b1fa35b913f9f747a8afd1b130e",
            "94bff94effd01a91735ca1726acd0b197c4e5b03393697e126826fb6bbde8ecc",
            "1e08298516e2c9ed03ff3c1b7860f6de76d4cecd94c8119855ef5297ca67e9f3",
            "e7ff72b1e99785ca0a7e7720c5b36dc6d72cac9574c8cbbc2f801e23e56fd344",
            "b07f22154beba0f08ce8891e643ed995c94d9a69c9f1b5f499027a78572aeebd",
            "74d20cc39881c213ee770b1010e4bea718846977ae119f7a023ab58cca0ad752",
            "afe656bb3c17256a9f6e9bf19fdd5a38fc82bbe872c5539edb609ef4f79c203e",
            "bb140f2e583cb2ad15b4aa5b655016a8449277dbd477ef2c8d6c017db738b18d",
            "eb4a427d1923ce3ff262735779a418f20a282df920147beabe421ee5319d0568",
        ),
    ),
    (
        "vector 10 (AES-256, 512 B)",
        concat!(
            "2718281828459045235360287471352662497757247093699959574966967627",
            "3141592653589793238462643383279502884197169399375105820974944592",
        ),
        0xff,
        None,
        concat!(
            "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b",
            "5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd",
            "5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0",
            "c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca",
            "2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0",
            "b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f",
            "93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec",
            "583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a",
            "84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1",
            "505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae",
            "9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29",
            "a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac",
            "6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f",
            "645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385",
            "1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa",
            "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151",
        ),
    ),
    (
        "vector 19 (AES-128, first 512 B)",
        "e0e1e2e3e4e5e6e7e8e9eaebecedeeefc0c1c2c3c4c5c6c7c8c9cacbcccdcecf",
        0xa9_8765_4321,
        None,
        concat!(
            "38b45812ef43a05bd957e545907e223b954ab4aaf088303ad910eadf14b42be6",
            "8b2461149d8c8ba85f992be970bc621f1b06573f63e867bf5875acafa04e42cc",
            "bd7bd3c2a0fb1fff791ec5ec36c66ae4ac1e806d81fbf709dbe29e471fad3854",
            "9c8e66f5345d7c1eb94f405d1ec785cc6f6a68f6254dd8339f9d84057e01a177",
            "41990482999516b5611a38f41bb6478e6f173f320805dd71b1932fc333cb9ee3",
            "9936beea9ad96fa10fb4112b901734ddad40bc1878995f8e11aee7d141a2f5d4",
            "8b7a4e1e7f0b2c04830e69a4fd1378411c2f287edf48c6c4e5c247a19680f7fe",
            "41cefbd49b582106e3616cbbe4dfb2344b2ae9519391f3e0fb4922254b1d6d2d",
            "19c6d4d537b3a26f3bcc51588b32f3eca0829b6a5ac72578fb814fb43cf80d64",
            "a233e3f997a3f02683342f2b33d25b492536b93becb2f5e1a8b82f5b88334272",
            "9e8ae09d16938841a21a97fb543eea3bbff59f13c1a18449e398701c1ad51648",
            "346cbc04c27bb2da3b93a1372ccae548fb53bee476f9e9c91773b1bb19828394",
            "d55d3e1a20ed69113a860b6829ffa847224604435070221b257e8dff783615d2",
            "cae4803a93aa4334ab482a0afac9c0aeda70b45a481df5dec5df8cc0f423c77a",
            "5fd46cd312021d4b438862419a791be03bb4d97c0e59578542531ba466a83baf",
            "92cefc151b5cc1611a167893819b63fb8a6b18e86de60290fa72b797b0ce59f3",
        ),
    ),
];

fn pattern512() -> Vec<u8> {
    (0..512u32).map(|i| (i % 256) as u8).collect()
}

const BACKENDS: [Backend; 3] = [Backend::Auto, Backend::LibraryXts, Backend::BulkEcb];

#[test]
fn ieee1619_vectors_encrypt_and_decrypt() {
    for backend in BACKENDS {
        ieee1619_vectors_on(backend);
    }
}

fn ieee1619_vectors_on(backend: Backend) {
    for &(name, key, seq, pt, ct) in VECTORS {
        let name = format!("{name} on {backend:?}");
        let key = hex::decode(key).unwrap();
        let want = hex::decode(ct).unwrap();
        let mut sector = match pt {
            Some(p) => {
                let mut s = hex::decode(p).unwrap();
                s.resize(512, 0xa5);
                s
            }
            None => pattern512(),
        };
        let plain = sector.clone();
        let xts = Xts::with_backend(&key, 512, backend).unwrap();
        xts.encrypt_sectors(seq, &mut sector);
        assert_eq!(
            hex::encode(&sector[..want.len()]),
            hex::encode(&want),
            "{name}: encryption"
        );
        xts.decrypt_sectors(seq, &mut sector);
        assert_eq!(sector, plain, "{name}: decryption");
        // Decrypting the published ciphertext (full data units only) gives the plaintext.
        if want.len() == 512 {
            let mut c = want.clone();
            xts.decrypt_sectors(seq, &mut c);
            assert_eq!(c, plain, "{name}: decryption of the published ciphertext");
        }
    }
}

#[test]
fn consecutive_sectors_use_consecutive_tweaks() {
    // Vector 10 at sector 0xff, placed as the second of three sectors starting at 0xfe.
    let (_, key, seq, _, ct) = VECTORS[3];
    let xts = Xts::new(&hex::decode(key).unwrap(), 512).unwrap();
    let mut buf = [pattern512(), pattern512(), pattern512()].concat();
    xts.encrypt_sectors(seq - 1, &mut buf);
    assert_eq!(hex::encode(&buf[512..1024]), ct);
    assert_ne!(buf[..512], buf[512..1024], "sector 0xfe must differ");
    assert_ne!(buf[1024..], buf[512..1024], "sector 0x100 must differ");
}

#[test]
fn ieee_vector_1_equal_key_halves_is_refused() {
    // Vector 1 (all-zero keys) has key1 == key2, which IEEE 1619-2018 forbids.
    assert_eq!(
        Xts::new(&[0u8; 32], 512).unwrap_err(),
        XtsError::DuplicateKeyHalves { key_len: 32 }
    );
    assert_eq!(
        Xts::new(&[7u8; 64], 512).unwrap_err(),
        XtsError::DuplicateKeyHalves { key_len: 64 }
    );
}

#[test]
fn bad_parameters_are_refused_with_the_value_seen() {
    let key: Vec<u8> = (0..64).collect();
    assert_eq!(
        Xts::new(&key[..48], 512).unwrap_err(),
        XtsError::KeyLength { got: 48 }
    );
    let e = Xts::new(&key, 1024).unwrap_err();
    assert_eq!(e, XtsError::SectorSize { got: 1024 });
    assert!(e.to_string().contains("1024") && e.to_string().contains("512 or 4096"));
}

#[test]
fn debug_output_never_shows_the_key() {
    let key: Vec<u8> = (0x40..0x80).collect();
    let xts = Xts::new(&key, 4096).unwrap();
    let dbg = format!("{xts:?}");
    assert!(dbg.contains("redacted") && dbg.contains("4096"), "{dbg}");
    assert!(!dbg.contains(&hex::encode(&key[..8])) && !dbg.contains("64, 65, 66"));
}

#[test]
#[should_panic(expected = "not a multiple of the sector size")]
fn partial_sector_is_a_caller_bug() {
    let key: Vec<u8> = (0..64).collect();
    let xts = Xts::new(&key, 512).unwrap();
    xts.encrypt_sectors(0, &mut [0u8; 700]);
}

#[test]
fn one_xts_is_shared_by_threads() {
    let key: Vec<u8> = (0..64).map(|i| i * 3).collect();
    let xts = Xts::new(&key, 512).unwrap();
    let mut want = vec![0x5au8; 512 * 64];
    xts.encrypt_sectors(1000, &mut want);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..50 {
                    let mut b = vec![0x5au8; 512 * 64];
                    xts.encrypt_sectors(1000, &mut b);
                    assert_eq!(b, want);
                }
            });
        }
    });
}

/// Every backend, in place or from a separate input, whole or in pieces that cut the bulk
/// backend's 16 KiB groups and four-sector lanes anywhere, computes the same bytes; decryption
/// inverts it. The library's own XTS (checked against the IEEE vectors above) is the reference.
#[test]
fn every_backend_and_call_shape_computes_the_same_bytes() {
    for (klen, ss) in [(32usize, 512usize), (32, 4096), (64, 512), (64, 4096)] {
        let key: Vec<u8> = (0..klen as u8).map(|i| i.wrapping_mul(73) ^ 0x5c).collect();
        // 45 sectors: 22.5 KiB (one whole group and a ragged one) or 180 KiB (11 groups of
        // 4 sectors, then 1).
        let plain: Vec<u8> = (0..ss * 45).map(|i| (i * 7 + i / 511) as u8).collect();
        for first in [3u64, u64::MAX - 20] {
            let mut want = plain.clone();
            Xts::with_backend(&key, ss, Backend::LibraryXts)
                .unwrap()
                .encrypt_sectors(first, &mut want);
            for backend in BACKENDS {
                let what =
                    format!("{klen}-byte key, {ss}-byte sectors, first {first}, {backend:?}");
                let xts = Xts::with_backend(&key, ss, backend).unwrap();
                let mut inplace = plain.clone();
                xts.encrypt_sectors(first, &mut inplace);
                assert!(inplace == want, "in place: {what}");
                let mut to = vec![0xeeu8; plain.len()];
                xts.encrypt_sectors_to(first, &plain, &mut to);
                assert!(to == want, "encrypt_sectors_to: {what}");
                for per in [1usize, 3, 5, 33] {
                    let mut pieces = vec![0u8; plain.len()];
                    for (i, (o, p)) in pieces
                        .chunks_mut(ss * per)
                        .zip(plain.chunks(ss * per))
                        .enumerate()
                    {
                        xts.encrypt_sectors_to(first.wrapping_add((i * per) as u64), p, o);
                    }
                    assert!(pieces == want, "pieces of {per} sectors: {what}");
                }
                xts.decrypt_sectors(first, &mut to);
                assert!(to == plain, "decryption: {what}");
            }
        }
    }
}

#[test]
fn auto_picks_the_measured_backends() {
    let k64: Vec<u8> = (0..64).collect();
    let k32: Vec<u8> = (0..32).collect();
    assert_eq!(Xts::new(&k64, 512).unwrap().backend(), Backend::LibraryXts);
    assert_eq!(Xts::new(&k32, 512).unwrap().backend(), Backend::BulkEcb);
    assert_eq!(Xts::new(&k64, 4096).unwrap().backend(), Backend::LibraryXts);
    assert_eq!(Xts::new(&k32, 4096).unwrap().backend(), Backend::LibraryXts);
}

#[test]
#[should_panic(expected = "lengths differ")]
fn encrypt_to_with_unequal_lengths_is_a_caller_bug() {
    let key: Vec<u8> = (0..32).collect();
    let xts = Xts::new(&key, 512).unwrap();
    xts.encrypt_sectors_to(0, &[0u8; 1024], &mut [0u8; 512]);
}
