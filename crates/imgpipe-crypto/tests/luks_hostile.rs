//! Headers are attacker data: every malformed, truncated or costly header gives a named error
//! (never a panic, never an unbounded allocation or KDF), and LUKS2 falls back to the
//! secondary header copy when the primary's checksum fails.
#![allow(clippy::unwrap_used)]

use imgpipe_crypto::luks::{self, LuksError, LuksParams, LuksVersion, Pbkdf, UnlockLimits};
use openssl::sha::sha256;
use serde_json::Value;

const PASS: &[u8] = b"pw";

fn v1() -> luks::LuksVolume {
    let mut p = LuksParams::new(LuksVersion::V1);
    p.pbkdf = Pbkdf::Pbkdf2 { iterations: 1000 };
    luks::create(&p, PASS).unwrap()
}

fn v2(pbkdf: Pbkdf) -> luks::LuksVolume {
    let mut p = LuksParams::new(LuksVersion::V2);
    p.pbkdf = pbkdf;
    p.payload_offset = Some(1 << 20);
    luks::create(&p, PASS).unwrap()
}

fn cheap_limits() -> UnlockLimits {
    UnlockLimits {
        max_pbkdf2_iterations: 5000,
        max_argon2_memory_kib: 16384,
        max_argon2_time: 8,
        max_argon2_parallelism: 4,
        max_stripes: 8000,
    }
}

/// Rewrites the JSON of both LUKS2 header copies and fixes their checksums.
fn set_json(h: &mut [u8], json: &Value) {
    let text = serde_json::to_vec(json).unwrap();
    for off in [0usize, 16384] {
        let copy = &mut h[off..off + 16384];
        copy[4096..].fill(0);
        copy[4096..4096 + text.len()].copy_from_slice(&text);
        copy[448..512].fill(0);
        let c = sha256(copy);
        copy[448..480].copy_from_slice(&c);
    }
}

fn json_of(h: &[u8]) -> Value {
    let area = &h[4096..16384];
    let end = area.iter().position(|&b| b == 0).unwrap();
    serde_json::from_slice(&area[..end]).unwrap()
}

#[test]
fn not_luks_and_bad_version() {
    assert!(matches!(
        luks::unlock(&[], PASS),
        Err(LuksError::NotLuks { .. })
    ));
    assert!(matches!(
        luks::unlock(&[0u8; 4096], PASS),
        Err(LuksError::NotLuks { .. })
    ));
    let mut h = v1().header;
    h[7] = 3;
    let e = luks::unlock(&h, PASS).unwrap_err();
    assert!(matches!(e, LuksError::Version { got: 3 }), "{e}");
}

#[test]
fn luks1_truncated_key_material_is_named() {
    let vol = v1();
    let e = luks::unlock(&vol.header[..4096], PASS).unwrap_err();
    match &e {
        LuksError::Truncated { need, got, what } => {
            assert_eq!(*got, 4096);
            assert_eq!(*need, 4096 + 256_000, "{what}");
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("key material"), "{e}");
}

#[test]
fn luks1_costs_and_sizes_over_limits_are_refused_before_work() {
    let vol = v1();
    let limits = UnlockLimits {
        max_pbkdf2_iterations: 999,
        ..UnlockLimits::default()
    };
    let e = luks::unlock_with_limits(&vol.header, PASS, &limits).unwrap_err();
    assert!(
        matches!(
            &e,
            LuksError::LimitExceeded {
                got: 1000,
                limit: 999,
                ..
            }
        ),
        "{e}"
    );

    let mut h = vol.header.clone();
    h[208 + 44..208 + 48].copy_from_slice(&u32::MAX.to_be_bytes()); // slot 0 stripes
    let e = luks::unlock(&h, PASS).unwrap_err();
    assert!(
        matches!(&e, LuksError::LimitExceeded { got, .. } if *got == u64::from(u32::MAX)),
        "{e}"
    );

    let mut h = vol.header.clone();
    h[108..112].copy_from_slice(&48u32.to_be_bytes()); // key-bytes
    let e = luks::unlock(&h, PASS).unwrap_err();
    assert!(
        matches!(&e, LuksError::Unsupported { got, .. } if got == "48"),
        "{e}"
    );

    let mut h = vol.header.clone();
    h[208..212].copy_from_slice(&0x1234u32.to_be_bytes()); // slot 0 state
    let e = luks::unlock(&h, PASS).unwrap_err();
    assert!(matches!(&e, LuksError::Malformed { .. }), "{e}");
    assert!(e.to_string().contains("0x00001234"), "{e}");

    let mut h = vol.header.clone();
    h[40..52].copy_from_slice(b"cbc-essiv:sh");
    assert!(matches!(
        luks::unlock(&h, PASS),
        Err(LuksError::Unsupported { .. })
    ));
}

#[test]
fn luks2_falls_back_to_the_secondary_copy_and_names_double_failure() {
    let vol = v2(Pbkdf::Pbkdf2 { iterations: 1000 });
    let mut h = vol.header.clone();
    h[4096 + 10] ^= 0x20; // primary JSON damaged
    let u = luks::unlock(&h, PASS).unwrap();
    assert_eq!(u.master_key, vol.master_key);
    h[16384 + 4096 + 10] ^= 0x20; // secondary too
    let e = luks::unlock(&h, PASS).unwrap_err();
    assert!(matches!(e, LuksError::Checksum { .. }), "{e}");
}

#[test]
fn luks2_argon2_memory_over_limit_is_refused() {
    let vol = v2(Pbkdf::Argon2id {
        time: 4,
        memory_kib: 32768,
        parallelism: 1,
    });
    let e = luks::unlock_with_limits(&vol.header, PASS, &cheap_limits()).unwrap_err();
    assert!(
        matches!(
            &e,
            LuksError::LimitExceeded {
                got: 32768,
                limit: 16384,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        luks::unlock(&vol.header, PASS).unwrap().master_key,
        vol.master_key
    );
}

#[test]
fn luks2_hostile_json_values_are_named() {
    let vol = v2(Pbkdf::Pbkdf2 { iterations: 1000 });
    let base = json_of(&vol.header);
    let cases: [(&str, Value, &str); 5] = [
        ("/segments/0/offset", Value::from("12abc"), "offset"),
        (
            "/keyslots/0/area/offset",
            Value::from("999999999488"),
            "key material",
        ),
        (
            "/keyslots/0/af/stripes",
            Value::from(4_000_000_000u64),
            "stripes",
        ),
        ("/keyslots/0/kdf/type", Value::from("scrypt"), "scrypt"),
        ("/digests/0/salt", Value::from("%%%"), "base64"),
    ];
    for (ptr, val, needle) in cases {
        let mut j = base.clone();
        *j.pointer_mut(ptr).unwrap() = val;
        let mut h = vol.header.clone();
        set_json(&mut h, &j);
        let e = luks::unlock(&h, PASS).unwrap_err();
        assert!(e.to_string().contains(needle), "{ptr}: {e}");
    }
}

fn leaves(v: &Value, path: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, x)| leaves(x, format!("{path}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| leaves(x, format!("{path}/{i}"), out)),
        _ => out.push(path),
    }
}

#[test]
fn mutated_headers_never_panic() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let limits = cheap_limits();
    // LUKS1: random bytes of the 592-byte header.
    let vol = v1();
    for _ in 0..150 {
        let mut h = vol.header.clone();
        for _ in 0..1 + rnd() % 3 {
            let i = (rnd() % 592) as usize;
            h[i] = rnd() as u8;
        }
        if let Ok(u) = luks::unlock_with_limits(&h, PASS, &limits) {
            assert_eq!(u.master_key, vol.master_key);
        }
    }
    // LUKS2: structured JSON mutations (re-checksummed so they reach the parser).
    let vol = v2(Pbkdf::Pbkdf2 { iterations: 1000 });
    let base = json_of(&vol.header);
    let mut paths = Vec::new();
    leaves(&base, String::new(), &mut paths);
    let evil = [
        Value::Null,
        Value::from(-1),
        Value::from(0),
        Value::from(u64::MAX),
        Value::from("18446744073709551615"),
        Value::from("0"),
        Value::from("x"),
        Value::Array(vec![]),
        Value::Object(serde_json::Map::new()),
    ];
    for _ in 0..200 {
        let mut j = base.clone();
        let p = &paths[(rnd() as usize) % paths.len()];
        *j.pointer_mut(p).unwrap() = evil[(rnd() as usize) % evil.len()].clone();
        let mut h = vol.header.clone();
        set_json(&mut h, &j);
        if let Ok(u) = luks::unlock_with_limits(&h, PASS, &limits) {
            assert_eq!(u.master_key, vol.master_key, "{p}");
        }
    }
}

#[test]
fn iter_time_mode_calibrates_pbkdf2_and_argon2_is_refused_for_luks1() {
    let mut p = LuksParams::new(LuksVersion::V1);
    p.pbkdf = Pbkdf::Pbkdf2IterTime { millis: 40 };
    let vol = luks::create(&p, PASS).unwrap();
    let iters = u32::from_be_bytes(vol.header[212..216].try_into().unwrap());
    assert!(iters >= 1000, "{iters}");
    let t = std::time::Instant::now();
    assert_eq!(
        luks::unlock(&vol.header, PASS).unwrap().master_key,
        vol.master_key
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );

    p.pbkdf = Pbkdf::Argon2id {
        time: 4,
        memory_kib: 1024,
        parallelism: 1,
    };
    let e = luks::create(&p, PASS).unwrap_err();
    assert!(matches!(e, LuksError::Params { field: "pbkdf", .. }), "{e}");
    p.pbkdf = Pbkdf::Pbkdf2 { iterations: 10 };
    assert!(matches!(
        luks::create(&p, PASS),
        Err(LuksError::Params {
            field: "pbkdf.iterations",
            ..
        })
    ));
    p.pbkdf = Pbkdf::Pbkdf2 { iterations: 1000 };
    p.payload_offset = Some(4096 * 3);
    assert!(matches!(
        luks::create(&p, PASS),
        Err(LuksError::Params {
            field: "payload_offset",
            ..
        })
    ));
    p.payload_offset = None;
    p.sector_size = 4096;
    assert!(matches!(
        luks::create(&p, PASS),
        Err(LuksError::Params {
            field: "sector_size",
            ..
        })
    ));
}
