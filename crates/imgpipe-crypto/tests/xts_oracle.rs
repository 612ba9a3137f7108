//! Differential test of [`Xts`] against an independent implementation: pyca/cryptography's AES
//! XTS (tests/oracles/xts_cryptography.py), in both directions, for both key sizes and both
//! sector sizes, plus chunking invariance of the sector numbering.
#![allow(clippy::unwrap_used)]

mod xts_support;

use std::process::Command;

use imgpipe_crypto::xts::Xts;
use xts_support::{oracle_script, python_with_cryptography, random_key, run_ok, test_data};

fn oracle(
    py: &std::path::Path,
    op: &str,
    key: &[u8],
    ss: usize,
    first: u64,
    data: &[u8],
) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (i, o) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::write(&i, data).unwrap();
    run_ok(
        Command::new(py)
            .arg(oracle_script("xts_cryptography.py"))
            .args([op, &hex::encode(key), &ss.to_string(), &first.to_string()])
            .arg(&i)
            .arg(&o),
    );
    std::fs::read(&o).unwrap()
}

#[test]
fn xts_matches_python_cryptography_both_directions() {
    let Some(py) = python_with_cryptography("xts_matches_python_cryptography_both_directions")
    else {
        return;
    };
    // first sectors chosen to exercise the high tweak bytes and the 2^64 wrap.
    for (key_len, ss, first) in [
        (64, 512, 0u64),
        (64, 512, 0x0123_4567_89ab_cdef),
        (32, 512, 4096),
        (64, 4096, 7),
        (32, 4096, u64::MAX - 2),
    ] {
        let key = random_key(key_len);
        let plain = test_data(ss * 37, (key_len as u64 * 31).wrapping_add(first));
        let xts = Xts::new(&key, ss).unwrap();

        // imgpipe encrypts, the oracle decrypts.
        let mut ours = plain.clone();
        xts.encrypt_sectors(first, &mut ours);
        assert_ne!(ours, plain);
        let theirs = oracle(&py, "encrypt", &key, ss, first, &plain);
        assert!(
            ours == theirs,
            "ciphertext differs: key {key_len} B, sector {ss}, first {first}"
        );
        assert!(oracle(&py, "decrypt", &key, ss, first, &ours) == plain);

        // The oracle encrypts, imgpipe decrypts.
        let mut back = theirs.clone();
        xts.decrypt_sectors(first, &mut back);
        assert!(
            back == plain,
            "decryption differs: key {key_len} B, sector {ss}, first {first}"
        );
    }
}

#[test]
fn encryption_is_invariant_under_chunking() {
    // Feeding the same disk in pieces of 1, 7, 8, 128 sectors or whole gives identical bytes.
    let key = random_key(64);
    let xts = Xts::new(&key, 512).unwrap();
    let plain = test_data(512 * 256, 9);
    let mut whole = plain.clone();
    xts.encrypt_sectors(100, &mut whole);
    for per in [1usize, 7, 8, 128] {
        let mut pieces = plain.clone();
        for (i, c) in pieces.chunks_mut(512 * per).enumerate() {
            xts.encrypt_sectors(100 + (i * per) as u64, c);
        }
        assert!(pieces == whole, "chunks of {per} sectors");
    }
    // Equal plaintext sectors at different positions encrypt differently (tweak is used) and
    // zero sectors do not stay zero.
    assert_ne!(whole[3 * 512..4 * 512], whole[10 * 512..11 * 512]);
    assert!(whole[3 * 512..4 * 512].iter().any(|&b| b != 0));
}
