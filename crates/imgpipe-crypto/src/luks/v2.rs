//! LUKS2 (on-disk format specification, version 1.1): two copies of a 4096-byte binary header
//! followed by a JSON metadata area, each copy checksummed; key slots, segments and digests are
//! described in the JSON.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use openssl::hash::{Hasher, MessageDigest};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::{
    AF_STRIPES, LUKS_SECTOR, LuksError, LuksHash, LuksParams, LuksVersion, LuksVolume, Pbkdf,
    UnlockLimits, Unlocked, af, af_area_len, argon2id, be16, be64, check_limit,
    check_payload_offset, crypt_area, cstr, pbkdf2, pbkdf2_slot_iterations, put_str, random,
    round_up, slice,
};

const MAGIC_PRIMARY: &[u8; 6] = b"LUKS\xba\xbe";
const MAGIC_SECONDARY: &[u8; 6] = b"SKUL\xba\xbe";
const BIN_LEN: usize = 4096;
/// Header size (binary + JSON) imgpipe writes: cryptsetup's default.
const HDR_SIZE: u64 = 16384;
/// Header sizes the specification allows (the secondary copy sits at one of these offsets).
const HDR_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];
const DEFAULT_PAYLOAD: u64 = 16 << 20;
const CSUM_OFF: usize = 448;

pub(super) fn create(
    params: &LuksParams,
    passphrase: &[u8],
    master_key: Zeroizing<Vec<u8>>,
    uuid: String,
) -> Result<LuksVolume, LuksError> {
    if params.sector_size != 512 && params.sector_size != 4096 {
        return Err(LuksError::Params {
            field: "sector_size",
            got: params.sector_size.to_string(),
            allowed: "512 or 4096".to_owned(),
        });
    }
    let key_bytes = master_key.len();
    let area_len = af_area_len(key_bytes, AF_STRIPES).ok_or(LuksError::Crypto {
        op: "key material size",
    })?;
    let area_off = 2 * HDR_SIZE;
    let area_size = round_up(area_len as u64, 4096).ok_or(LuksError::Crypto { op: "layout" })?;
    let payload_offset = check_payload_offset(params, area_off + area_size, DEFAULT_PAYLOAD)?;

    // Key slot 0.
    let mut salt = [0u8; 32];
    random(&mut salt)?;
    let mut derived = Zeroizing::new(vec![0u8; key_bytes]);
    let kdf = match params.pbkdf {
        Pbkdf::Argon2id {
            time,
            memory_kib,
            parallelism,
        } => {
            argon2id(
                passphrase,
                &salt,
                time,
                memory_kib,
                parallelism,
                &mut derived,
            )?;
            json!({"type": "argon2id", "time": time, "memory": memory_kib,
                   "cpus": parallelism, "salt": B64.encode(salt)})
        }
        _ => {
            let iterations = pbkdf2_slot_iterations(params, key_bytes)?;
            pbkdf2(passphrase, &salt, iterations, params.hash, &mut derived)?;
            json!({"type": "pbkdf2", "hash": params.hash.name(), "iterations": iterations,
                   "salt": B64.encode(salt)})
        }
    };
    let mut material = af::split(&master_key, AF_STRIPES as usize, params.hash.md())?;
    material.resize(area_len, 0);
    crypt_area(&derived, &mut material, true)?;

    // Digest of the master key.
    let mut dsalt = [0u8; 32];
    random(&mut dsalt)?;
    let mut digest = vec![0u8; params.hash.md().size()];
    pbkdf2(
        &master_key,
        &dsalt,
        params.digest_iterations,
        params.hash,
        &mut digest,
    )?;

    let meta = json!({
        "keyslots": {"0": {
            "type": "luks2",
            "key_size": key_bytes,
            "af": {"type": "luks1", "stripes": AF_STRIPES, "hash": params.hash.name()},
            "area": {"type": "raw", "offset": area_off.to_string(), "size": area_size.to_string(),
                     "encryption": super::CIPHER_AES_XTS_PLAIN64, "key_size": key_bytes},
            "kdf": kdf,
        }},
        "tokens": {},
        "segments": {"0": {
            "type": "crypt", "offset": payload_offset.to_string(), "size": "dynamic",
            "iv_tweak": "0", "encryption": super::CIPHER_AES_XTS_PLAIN64,
            "sector_size": params.sector_size,
        }},
        "digests": {"0": {
            "type": "pbkdf2", "keyslots": ["0"], "segments": ["0"], "hash": params.hash.name(),
            "iterations": params.digest_iterations, "salt": B64.encode(dsalt),
            "digest": B64.encode(&digest),
        }},
        "config": {
            "json_size": (HDR_SIZE - BIN_LEN as u64).to_string(),
            "keyslots_size": (payload_offset - area_off).to_string(),
        },
    });
    let text = serde_json::to_vec(&meta).map_err(|_| LuksError::Crypto {
        op: "serialize LUKS2 JSON",
    })?;
    if text.len() >= HDR_SIZE as usize - BIN_LEN {
        return Err(LuksError::Crypto {
            op: "LUKS2 JSON does not fit the 12 KiB area",
        });
    }
    if let Some(l) = &params.label
        && l.len() >= 48
    {
        return Err(LuksError::Params {
            field: "label",
            got: l.clone(),
            allowed: "at most 47 bytes".to_owned(),
        });
    }

    let len = usize::try_from(payload_offset).map_err(|_| LuksError::Crypto { op: "layout" })?;
    let mut h = vec![0u8; len];
    for (copy, magic) in [(0u64, MAGIC_PRIMARY), (HDR_SIZE, MAGIC_SECONDARY)] {
        let o = copy as usize;
        let mut bin = [0u8; BIN_LEN];
        bin[..6].copy_from_slice(magic);
        bin[6..8].copy_from_slice(&2u16.to_be_bytes());
        bin[8..16].copy_from_slice(&HDR_SIZE.to_be_bytes());
        bin[16..24].copy_from_slice(&1u64.to_be_bytes());
        if let Some(l) = &params.label {
            put_str(&mut bin, 24, 48, l)?;
        }
        put_str(&mut bin, 72, 32, "sha256")?;
        random(&mut bin[104..168])?;
        put_str(&mut bin, 168, 40, &uuid)?;
        bin[256..264].copy_from_slice(&copy.to_be_bytes());
        let area = &mut h[o..o + HDR_SIZE as usize];
        area[..BIN_LEN].copy_from_slice(&bin);
        area[BIN_LEN..BIN_LEN + text.len()].copy_from_slice(&text);
        let csum = checksum(area)?;
        area[CSUM_OFF..CSUM_OFF + csum.len()].copy_from_slice(&csum);
    }
    let a = area_off as usize;
    h[a..a + area_len].copy_from_slice(&material);
    Ok(LuksVolume {
        header: h,
        payload_offset,
        master_key,
        sector_size: params.sector_size,
        uuid,
    })
}

/// SHA-256 over a whole header copy (binary header with the checksum field taken as zero,
/// then the JSON area).
fn checksum(copy: &[u8]) -> Result<Vec<u8>, LuksError> {
    let err = |_| LuksError::Crypto {
        op: "LUKS2 header checksum",
    };
    let mut h = Hasher::new(MessageDigest::sha256()).map_err(err)?;
    let (head, rest) = copy.split_at(CSUM_OFF.min(copy.len()));
    h.update(head).map_err(err)?;
    h.update(&[0u8; 64]).map_err(err)?;
    h.update(rest.get(64..).unwrap_or_default()).map_err(err)?;
    Ok(h.finish().map_err(err)?.to_vec())
}

/// Validates one header copy at `off`; returns its JSON metadata and UUID.
fn read_copy(
    h: &[u8],
    off: u64,
    magic: &[u8; 6],
) -> Result<(Map<String, Value>, String), LuksError> {
    let m = slice(h, off, 6, "LUKS2 header magic")?;
    if m != magic {
        return Err(LuksError::NotLuks { got: m.to_vec() });
    }
    let version = be16(h, off + 6, "LUKS2 version")?;
    if version != 2 {
        return Err(LuksError::Version { got: version });
    }
    let hdr_size = be64(h, off + 8, "LUKS2 hdr_size")?;
    if !HDR_SIZES.contains(&hdr_size) {
        return Err(LuksError::Malformed {
            field: "hdr_size".to_owned(),
            got: hdr_size.to_string(),
            allowed: "16 KiB, 32 KiB, … 4 MiB (powers of two)".to_owned(),
        });
    }
    let hdr_offset = be64(h, off + 256, "LUKS2 hdr_offset")?;
    if hdr_offset != off {
        return Err(LuksError::Malformed {
            field: "hdr_offset".to_owned(),
            got: hdr_offset.to_string(),
            allowed: format!("{off} (where this copy was found)"),
        });
    }
    let alg = cstr(h, off + 72, 32, "checksum_alg")?;
    if alg != "sha256" {
        return Err(LuksError::Unsupported {
            what: "LUKS2 checksum_alg".to_owned(),
            got: alg,
            supported: "sha256".to_owned(),
        });
    }
    let copy = slice(h, off, hdr_size, "LUKS2 header copy")?;
    let want = checksum(copy)?;
    let got = copy
        .get(CSUM_OFF..CSUM_OFF + want.len())
        .unwrap_or_default();
    if !openssl::memcmp::eq(&want, got) {
        return Err(LuksError::Checksum {
            which: format!("the copy at {off}"),
        });
    }
    let uuid = cstr(h, off + 168, 40, "uuid")?;
    let json_area = copy.get(BIN_LEN..).unwrap_or_default();
    let end = json_area
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(json_area.len());
    let v: Value =
        serde_json::from_slice(json_area.get(..end).unwrap_or_default()).map_err(|e| {
            LuksError::Malformed {
                field: "JSON metadata".to_owned(),
                got: e.to_string(),
                allowed: "a JSON object".to_owned(),
            }
        })?;
    match v {
        Value::Object(m) => Ok((m, uuid)),
        other => Err(LuksError::Malformed {
            field: "JSON metadata".to_owned(),
            got: type_name(&other).to_owned(),
            allowed: "a JSON object".to_owned(),
        }),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn malformed(field: &str, got: &Value, allowed: &str) -> LuksError {
    let mut g = got.to_string();
    g.truncate(80);
    LuksError::Malformed {
        field: field.to_owned(),
        got: g,
        allowed: allowed.to_owned(),
    }
}

fn obj<'a>(v: &'a Value, key: &str, ctx: &str) -> Result<&'a Map<String, Value>, LuksError> {
    let f = format!("{ctx}.{key}");
    match v.get(key) {
        Some(Value::Object(m)) => Ok(m),
        Some(o) => Err(malformed(&f, o, "an object")),
        None => Err(malformed(&f, &Value::Null, "an object")),
    }
}

fn string<'a>(v: &'a Value, key: &str, ctx: &str) -> Result<&'a str, LuksError> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s),
        other => Err(malformed(
            &format!("{ctx}.{key}"),
            other.unwrap_or(&Value::Null),
            "a string",
        )),
    }
}

/// A u64 written as a decimal string (LUKS2 encodes offsets and sizes this way).
fn u64_str(v: &Value, key: &str, ctx: &str) -> Result<u64, LuksError> {
    let s = string(v, key, ctx)?;
    s.parse::<u64>()
        .map_err(|_| malformed(&format!("{ctx}.{key}"), &Value::from(s), "a decimal u64"))
}

fn uint(v: &Value, key: &str, ctx: &str) -> Result<u32, LuksError> {
    match v.get(key) {
        Some(n) if n.as_u64().is_some_and(|x| x <= u64::from(u32::MAX)) => {
            Ok(n.as_u64().unwrap_or_default() as u32)
        }
        other => Err(malformed(
            &format!("{ctx}.{key}"),
            other.unwrap_or(&Value::Null),
            "an integer 0..2^32",
        )),
    }
}

fn b64(v: &Value, key: &str, ctx: &str, max: usize) -> Result<Vec<u8>, LuksError> {
    let s = string(v, key, ctx)?;
    let f = format!("{ctx}.{key}");
    if s.len() > max.div_ceil(3) * 4 {
        return Err(malformed(
            &f,
            &Value::from(s),
            &format!("base64 of at most {max} bytes"),
        ));
    }
    B64.decode(s)
        .map_err(|_| malformed(&f, &Value::from(s), "standard base64"))
}

fn check_cipher(spec: &str, field: &str) -> Result<(), LuksError> {
    if spec == super::CIPHER_AES_XTS_PLAIN64 {
        Ok(())
    } else {
        Err(LuksError::Unsupported {
            what: field.to_owned(),
            got: spec.to_owned(),
            supported: super::CIPHER_AES_XTS_PLAIN64.to_owned(),
        })
    }
}

fn hash_of(name: &str, field: &str) -> Result<LuksHash, LuksError> {
    LuksHash::from_name(name).ok_or_else(|| LuksError::Unsupported {
        what: field.to_owned(),
        got: name.to_owned(),
        supported: "sha1, sha256, sha512".to_owned(),
    })
}

/// Entries of a JSON object sorted by their numeric id.
fn sorted(m: &Map<String, Value>) -> Vec<(u32, &Value)> {
    let mut v: Vec<_> = m
        .iter()
        .filter_map(|(k, v)| k.parse::<u32>().ok().map(|n| (n, v)))
        .collect();
    v.sort_by_key(|(n, _)| *n);
    v
}

pub(super) fn unlock(
    h: &[u8],
    passphrase: &[u8],
    limits: &UnlockLimits,
) -> Result<Unlocked, LuksError> {
    let (meta, uuid) = match read_copy(h, 0, MAGIC_PRIMARY) {
        Ok(x) => x,
        Err(primary) => {
            let mut found = None;
            for off in HDR_SIZES {
                if let Ok(x) = read_copy(h, off, MAGIC_SECONDARY) {
                    found = Some(x);
                    break;
                }
            }
            found.ok_or_else(|| LuksError::Checksum {
                which: format!("the primary copy ({primary}) and every secondary offset"),
            })?
        }
    };
    let meta = Value::Object(meta);
    let keyslots = obj(&meta, "keyslots", "")?;
    let segments = obj(&meta, "segments", "")?;
    let digests = obj(&meta, "digests", "")?;

    let (seg_id, seg) = sorted(segments)
        .into_iter()
        .next()
        .ok_or_else(|| malformed("segments", &Value::Null, "at least one segment"))?;
    let sctx = format!("segments.{seg_id}");
    let stype = string(seg, "type", &sctx)?;
    if stype != "crypt" {
        return Err(LuksError::Unsupported {
            what: format!("{sctx}.type"),
            got: stype.to_owned(),
            supported: "crypt".to_owned(),
        });
    }
    let payload_offset = u64_str(seg, "offset", &sctx)?;
    check_cipher(
        string(seg, "encryption", &sctx)?,
        &format!("{sctx}.encryption"),
    )?;
    let sector_size = uint(seg, "sector_size", &sctx)?;
    if sector_size != 512 && sector_size != 4096 {
        return Err(LuksError::Unsupported {
            what: format!("{sctx}.sector_size"),
            got: sector_size.to_string(),
            supported: "512 or 4096".to_owned(),
        });
    }
    let tweak = string(seg, "iv_tweak", &sctx)?;
    if tweak != "0" {
        return Err(LuksError::Unsupported {
            what: format!("{sctx}.iv_tweak"),
            got: tweak.to_owned(),
            supported: "0".to_owned(),
        });
    }

    let mut tried = 0;
    for (id, ks) in sorted(keyslots) {
        let ctx = format!("keyslots.{id}");
        if string(ks, "type", &ctx)? != "luks2" {
            continue;
        }
        // The digest that covers this key slot (and must cover the segment).
        let ids = Value::from(id.to_string());
        let Some((did, dg)) = sorted(digests).into_iter().find(|(_, d)| {
            d.get("keyslots")
                .and_then(Value::as_array)
                .is_some_and(|a| a.contains(&ids))
        }) else {
            continue;
        };
        tried += 1;
        let mk = open_slot(h, ks, &ctx, passphrase, limits)?;
        let dctx = format!("digests.{did}");
        if string(dg, "type", &dctx)? != "pbkdf2" {
            return Err(LuksError::Unsupported {
                what: format!("{dctx}.type"),
                got: string(dg, "type", &dctx)?.to_owned(),
                supported: "pbkdf2".to_owned(),
            });
        }
        let dhash = hash_of(string(dg, "hash", &dctx)?, &format!("{dctx}.hash"))?;
        let diter = uint(dg, "iterations", &dctx)?;
        check_limit(
            &format!("{dctx}.iterations"),
            u64::from(diter),
            u64::from(limits.max_pbkdf2_iterations),
        )?;
        if diter == 0 {
            return Err(malformed(
                &format!("{dctx}.iterations"),
                &Value::from(0),
                "at least 1",
            ));
        }
        let dsalt = b64(dg, "salt", &dctx, 1024)?;
        let want = b64(dg, "digest", &dctx, 1024)?;
        if want.is_empty() {
            return Err(malformed(
                &format!("{dctx}.digest"),
                &Value::from(""),
                "a non-empty digest",
            ));
        }
        let mut got = vec![0u8; want.len()];
        pbkdf2(&mk, &dsalt, diter, dhash, &mut got)?;
        if openssl::memcmp::eq(&got, &want) {
            return Ok(Unlocked {
                version: LuksVersion::V2,
                master_key: mk,
                payload_offset,
                cipher: super::CIPHER_AES_XTS_PLAIN64.to_owned(),
                sector_size,
                keyslot: id as usize,
                uuid,
            });
        }
    }
    Err(LuksError::WrongPassphrase { tried })
}

/// Derives the slot key, decrypts the area and merges the AF stripes: the candidate master key.
fn open_slot(
    h: &[u8],
    ks: &Value,
    ctx: &str,
    passphrase: &[u8],
    limits: &UnlockLimits,
) -> Result<Zeroizing<Vec<u8>>, LuksError> {
    let key_size = uint(ks, "key_size", ctx)? as usize;
    if key_size != 32 && key_size != 64 {
        return Err(LuksError::Unsupported {
            what: format!("{ctx}.key_size"),
            got: key_size.to_string(),
            supported: "32 or 64".to_owned(),
        });
    }
    let ks_v = Value::Object(obj(ks, "area", ctx)?.clone());
    let actx = format!("{ctx}.area");
    if string(&ks_v, "type", &actx)? != "raw" {
        return Err(LuksError::Unsupported {
            what: format!("{actx}.type"),
            got: string(&ks_v, "type", &actx)?.to_owned(),
            supported: "raw".to_owned(),
        });
    }
    check_cipher(
        string(&ks_v, "encryption", &actx)?,
        &format!("{actx}.encryption"),
    )?;
    let area_key = uint(&ks_v, "key_size", &actx)? as usize;
    if area_key != 32 && area_key != 64 {
        return Err(LuksError::Unsupported {
            what: format!("{actx}.key_size"),
            got: area_key.to_string(),
            supported: "32 or 64".to_owned(),
        });
    }
    let area_off = u64_str(&ks_v, "offset", &actx)?;

    let af_v = Value::Object(obj(ks, "af", ctx)?.clone());
    let afctx = format!("{ctx}.af");
    if string(&af_v, "type", &afctx)? != "luks1" {
        return Err(LuksError::Unsupported {
            what: format!("{afctx}.type"),
            got: string(&af_v, "type", &afctx)?.to_owned(),
            supported: "luks1".to_owned(),
        });
    }
    let stripes = uint(&af_v, "stripes", &afctx)?;
    check_limit(
        &format!("{afctx}.stripes"),
        u64::from(stripes),
        u64::from(limits.max_stripes),
    )?;
    if stripes == 0 {
        return Err(malformed(
            &format!("{afctx}.stripes"),
            &Value::from(0),
            "at least 1",
        ));
    }
    let af_hash = hash_of(string(&af_v, "hash", &afctx)?, &format!("{afctx}.hash"))?;
    let area_len = af_area_len(key_size, stripes).ok_or(LuksError::Crypto {
        op: "key material size",
    })?;
    let area_size = u64_str(&ks_v, "size", &actx)?;
    if area_size < area_len as u64 {
        return Err(LuksError::Malformed {
            field: format!("{actx}.size"),
            got: area_size.to_string(),
            allowed: format!("at least key_size × stripes rounded to sectors = {area_len}"),
        });
    }
    if area_off < 2 * HDR_SIZES[0] || !area_off.is_multiple_of(LUKS_SECTOR) {
        return Err(LuksError::Malformed {
            field: format!("{actx}.offset"),
            got: area_off.to_string(),
            allowed: "a sector-aligned offset after both header copies".to_owned(),
        });
    }
    let enc = slice(h, area_off, area_len as u64, &format!("{ctx} key material"))?;

    let kdf = Value::Object(obj(ks, "kdf", ctx)?.clone());
    let kctx = format!("{ctx}.kdf");
    let salt = b64(&kdf, "salt", &kctx, 1024)?;
    let mut derived = Zeroizing::new(vec![0u8; area_key]);
    match string(&kdf, "type", &kctx)? {
        "pbkdf2" => {
            let hash = hash_of(string(&kdf, "hash", &kctx)?, &format!("{kctx}.hash"))?;
            let it = uint(&kdf, "iterations", &kctx)?;
            check_limit(
                &format!("{kctx}.iterations"),
                u64::from(it),
                u64::from(limits.max_pbkdf2_iterations),
            )?;
            if it == 0 {
                return Err(malformed(
                    &format!("{kctx}.iterations"),
                    &Value::from(0),
                    "at least 1",
                ));
            }
            pbkdf2(passphrase, &salt, it, hash, &mut derived)?;
        }
        "argon2id" => {
            let time = uint(&kdf, "time", &kctx)?;
            let mem = uint(&kdf, "memory", &kctx)?;
            let cpus = uint(&kdf, "cpus", &kctx)?;
            check_limit(
                &format!("{kctx}.time"),
                u64::from(time),
                u64::from(limits.max_argon2_time),
            )?;
            check_limit(
                &format!("{kctx}.memory (KiB)"),
                u64::from(mem),
                u64::from(limits.max_argon2_memory_kib),
            )?;
            check_limit(
                &format!("{kctx}.cpus"),
                u64::from(cpus),
                u64::from(limits.max_argon2_parallelism),
            )?;
            argon2id(passphrase, &salt, time, mem, cpus, &mut derived)?;
        }
        other => {
            return Err(LuksError::Unsupported {
                what: format!("{kctx}.type"),
                got: other.to_owned(),
                supported: "pbkdf2, argon2id".to_owned(),
            });
        }
    }
    let mut material = Zeroizing::new(enc.to_vec());
    crypt_area(&derived, &mut material, false)?;
    af::merge(&material, key_size, stripes as usize, af_hash.md())
}
