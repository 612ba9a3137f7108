//! Plain dm-crypt key derivation against cryptsetup's own published expectations
//! (cryptsetup `tests/password-hash-test`: the dm table key for a passphrase or key file), and
//! the OpenStack passphrase encodings (os-brick's unit test for the bug-1633518 mangling).
#![allow(clippy::unwrap_used)]

use imgpipe_crypto::xts::plain::{
    PlainHash, PlainKeyError, cinder_mangled_passphrase, key_from_keyfile, key_from_passphrase,
    key_manager_passphrase, nova_ephemeral_key,
};

#[test]
fn passphrase_hashing_matches_cryptsetup_expectations() {
    // (hash, passphrase, expected 256-bit key) from cryptsetup's password-hash-test.
    let cases: [(PlainHash, &[u8], &str); 4] = [
        (
            PlainHash::Ripemd160,
            b"xxx",
            // 20 bytes of RIPEMD160("xxx") then 12 of RIPEMD160("A" + "xxx"): exercises rounds.
            "aeb26d1f69eb6dddfb9381eed4d7299f091e99aa5d3ff06866d4ce9f620f7aca",
        ),
        (
            PlainHash::Sha1,
            b"xxx",
            "b60d121b438a380c343d5ec3c2037564b82ffef30b1e0a6ad9af7a73aa91c197",
        ),
        (
            PlainHash::Sha256,
            b"xxx",
            "cd2eb0837c9b4c962c22d2ff8b5441b7b45805887f051d39bf133b583baf6860",
        ),
        (
            // --key-file=- keeps the trailing newline (stdin is not a terminal prompt).
            PlainHash::Ripemd160,
            b"xxx\n",
            "625ce2a8dbdf08f1de400dba7ab9fab246f2a55ad6136e6cafd6703732dab8cf",
        ),
    ];
    for (hash, pass, want) in cases {
        let key = key_from_passphrase(pass, 32, hash).unwrap();
        assert_eq!(hex::encode(&*key), want, "{hash:?} {pass:?}");
    }
}

#[test]
fn key_file_is_used_raw_and_truncated_to_the_key_size() {
    // The 80-byte key file of cryptsetup's password-hash-test and the keys it expects.
    let mut file = b"0123456789abcdef\n\x01\x00\x03\xff\xff\r\xff\xff\n\r".to_vec();
    file.extend_from_slice(b" 2352j3rkjhadcfasc823rqaw7e1 3dq sdq3d 2dkjqw3h2=====");
    let full = "303132333435363738396162636465660a010003ffff0dffff0a0d20323335326a33726b6a686164636661736338323372716177376531203364712073647133";
    assert_eq!(
        hex::encode(&*key_from_keyfile(&file, 32).unwrap()),
        full[..64]
    );
    assert_eq!(hex::encode(&*key_from_keyfile(&file, 64).unwrap()), full);
    assert_eq!(
        key_from_keyfile(&file[..40], 64).unwrap_err(),
        PlainKeyError::KeyFileTooShort { got: 40, need: 64 }
    );
    assert_eq!(
        key_from_keyfile(&file, 48).unwrap_err(),
        PlainKeyError::KeySize { got: 48 }
    );
}

#[test]
fn plain_hash_plain_pads_or_truncates() {
    let k = key_from_passphrase(b"short", 32, PlainHash::Plain).unwrap();
    assert_eq!(&k[..5], b"short");
    assert!(k[5..].iter().all(|&b| b == 0));
    let long = [7u8; 100];
    assert_eq!(
        &*key_from_passphrase(&long, 64, PlainHash::Plain).unwrap(),
        &long[..64]
    );
}

#[test]
fn openstack_passphrase_encodings() {
    let km = hex::decode("0725230b00ff").unwrap();
    // binascii.hexlify(key).decode(): lowercase, zero-padded.
    assert_eq!(&*key_manager_passphrase(&km), b"0725230b00ff");
    // os-brick test_get_mangled_passphrase: 0725230b -> "72523b"; 0x00 -> "0".
    assert_eq!(&*cinder_mangled_passphrase(&km[..4]), b"72523b");
    assert_eq!(&*cinder_mangled_passphrase(&km), b"72523b0ff");
    // Nova ephemeral: the hex string hashed as a plain passphrase (here 64-byte key, 4 rounds
    // of RIPEMD-160), i.e. exactly what key_from_passphrase gives for the hex string.
    let nova = nova_ephemeral_key(&km, 64, PlainHash::Ripemd160).unwrap();
    assert_eq!(nova.len(), 64);
    assert_eq!(
        nova,
        key_from_passphrase(b"0725230b00ff", 64, PlainHash::Ripemd160).unwrap()
    );
    assert_ne!(
        &nova[..20],
        &nova[20..40],
        "rounds must differ (the 'A' prefix)"
    );
}
