//! LUKS1 (on-disk format specification 1.2.3): a 592-byte big-endian header with eight key
//! slots, each pointing at AF-split key material encrypted with the volume cipher.

use zeroize::Zeroizing;

use super::{
    AF_STRIPES, LUKS_SECTOR, LuksError, LuksHash, LuksParams, LuksVersion, LuksVolume,
    UnlockLimits, Unlocked, af, af_area_len, be32, check_limit, check_payload_offset, crypt_area,
    cstr, pbkdf2, pbkdf2_slot_iterations, put_str, random, round_up, slice,
};

pub(super) const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
const HEADER_LEN: usize = 592;
const SLOTS: usize = 8;
const SLOT_BASE: usize = 208;
const SLOT_LEN: usize = 48;
const ACTIVE: u32 = 0x00AC_71F3;
const DISABLED: u32 = 0x0000_DEAD;
const DIGEST_LEN: usize = 20;
const SALT_LEN: usize = 32;
/// Key material areas are aligned to 4096 bytes (8 sectors) as cryptsetup and qemu do.
const ALIGN_SECTORS: u64 = 8;
/// Default payload offset: 2 MiB (cryptsetup's LUKS1 result with 1 MiB alignment).
const DEFAULT_PAYLOAD: u64 = 2 << 20;

pub(super) fn create(
    params: &LuksParams,
    passphrase: &[u8],
    master_key: Zeroizing<Vec<u8>>,
    uuid: String,
) -> Result<LuksVolume, LuksError> {
    if params.sector_size != 512 {
        return Err(LuksError::Params {
            field: "sector_size",
            got: params.sector_size.to_string(),
            allowed: "512 for LUKS1".to_owned(),
        });
    }
    let key_bytes = master_key.len();
    let iterations = pbkdf2_slot_iterations(params, key_bytes)?;
    let area = af_area_len(key_bytes, AF_STRIPES).ok_or(LuksError::Crypto {
        op: "key material size",
    })?;
    let area_sectors = area as u64 / LUKS_SECTOR;
    let slot_stride =
        round_up(area_sectors, ALIGN_SECTORS).ok_or(LuksError::Crypto { op: "slot stride" })?;
    let first = ALIGN_SECTORS; // 592-byte header rounded up to 4096 bytes
    let min_payload = (first + SLOTS as u64 * slot_stride) * LUKS_SECTOR;
    let min_payload = round_up(min_payload, 4096).ok_or(LuksError::Crypto { op: "layout" })?;
    let payload_offset = check_payload_offset(params, min_payload, DEFAULT_PAYLOAD)?;
    let payload_sectors =
        u32::try_from(payload_offset / LUKS_SECTOR).map_err(|_| LuksError::Params {
            field: "payload_offset",
            got: payload_offset.to_string(),
            allowed: "below 2 TiB for LUKS1".to_owned(),
        })?;

    let len = usize::try_from(payload_offset).map_err(|_| LuksError::Crypto { op: "layout" })?;
    let mut h = vec![0u8; len];
    h[..6].copy_from_slice(MAGIC);
    h[6..8].copy_from_slice(&1u16.to_be_bytes());
    put_str(&mut h, 8, 32, "aes")?;
    put_str(&mut h, 40, 32, "xts-plain64")?;
    put_str(&mut h, 72, 32, params.hash.name())?;
    h[104..108].copy_from_slice(&payload_sectors.to_be_bytes());
    h[108..112].copy_from_slice(&(key_bytes as u32).to_be_bytes());
    let mut digest_salt = [0u8; SALT_LEN];
    random(&mut digest_salt)?;
    let mut digest = [0u8; DIGEST_LEN];
    pbkdf2(
        &master_key,
        &digest_salt,
        params.digest_iterations,
        params.hash,
        &mut digest,
    )?;
    h[112..132].copy_from_slice(&digest);
    h[132..164].copy_from_slice(&digest_salt);
    h[164..168].copy_from_slice(&params.digest_iterations.to_be_bytes());
    put_str(&mut h, 168, 40, &uuid)?;

    for slot in 0..SLOTS {
        let o = SLOT_BASE + slot * SLOT_LEN;
        let km_sector = first + slot as u64 * slot_stride;
        let km = u32::try_from(km_sector).map_err(|_| LuksError::Crypto { op: "layout" })?;
        h[o + 40..o + 44].copy_from_slice(&km.to_be_bytes());
        h[o + 44..o + 48].copy_from_slice(&AF_STRIPES.to_be_bytes());
        if slot != 0 {
            h[o..o + 4].copy_from_slice(&DISABLED.to_be_bytes());
            continue;
        }
        let mut salt = [0u8; SALT_LEN];
        random(&mut salt)?;
        let mut derived = Zeroizing::new(vec![0u8; key_bytes]);
        pbkdf2(passphrase, &salt, iterations, params.hash, &mut derived)?;
        let mut material = af::split(&master_key, AF_STRIPES as usize, params.hash.md())?;
        material.resize(area, 0);
        crypt_area(&derived, &mut material, true)?;
        let start = (km_sector * LUKS_SECTOR) as usize;
        h[start..start + area].copy_from_slice(&material);
        h[o..o + 4].copy_from_slice(&ACTIVE.to_be_bytes());
        h[o + 4..o + 8].copy_from_slice(&iterations.to_be_bytes());
        h[o + 8..o + 40].copy_from_slice(&salt);
    }
    Ok(LuksVolume {
        header: h,
        payload_offset,
        master_key,
        sector_size: 512,
        uuid,
    })
}

pub(super) fn unlock(
    h: &[u8],
    passphrase: &[u8],
    limits: &UnlockLimits,
) -> Result<Unlocked, LuksError> {
    slice(h, 0, HEADER_LEN as u64, "LUKS1 header")?;
    let cipher_name = cstr(h, 8, 32, "cipher-name")?;
    let cipher_mode = cstr(h, 40, 32, "cipher-mode")?;
    if !cipher_name.eq_ignore_ascii_case("aes") || cipher_mode != "xts-plain64" {
        return Err(LuksError::Unsupported {
            what: "LUKS1 cipher".to_owned(),
            got: format!("{cipher_name}-{cipher_mode}"),
            supported: "aes-xts-plain64".to_owned(),
        });
    }
    let hash_spec = cstr(h, 72, 32, "hash-spec")?;
    let hash = LuksHash::from_name(&hash_spec).ok_or_else(|| LuksError::Unsupported {
        what: "LUKS1 hash-spec".to_owned(),
        got: hash_spec.clone(),
        supported: "sha1, sha256, sha512".to_owned(),
    })?;
    let payload_sectors = be32(h, 104, "payload-offset")?;
    let key_bytes = be32(h, 108, "key-bytes")?;
    if key_bytes != 32 && key_bytes != 64 {
        return Err(LuksError::Unsupported {
            what: "LUKS1 key-bytes".to_owned(),
            got: key_bytes.to_string(),
            supported: "32 or 64 (aes-xts-plain64 with 256- or 512-bit keys)".to_owned(),
        });
    }
    let key_bytes = key_bytes as usize;
    let mk_digest = slice(h, 112, DIGEST_LEN as u64, "mk-digest")?;
    let mk_salt = slice(h, 132, SALT_LEN as u64, "mk-digest-salt")?;
    let mk_iter = be32(h, 164, "mk-digest-iter")?;
    check_limit(
        "LUKS1 mk-digest-iter",
        u64::from(mk_iter),
        u64::from(limits.max_pbkdf2_iterations),
    )?;
    if mk_iter == 0 {
        return Err(LuksError::Malformed {
            field: "mk-digest-iter".to_owned(),
            got: "0".to_owned(),
            allowed: "at least 1".to_owned(),
        });
    }
    let uuid = cstr(h, 168, 40, "uuid")?;

    let mut tried = 0;
    for slot in 0..SLOTS {
        let o = (SLOT_BASE + slot * SLOT_LEN) as u64;
        let state = be32(h, o, "key slot active")?;
        match state {
            ACTIVE => {}
            DISABLED => continue,
            other => {
                return Err(LuksError::Malformed {
                    field: format!("key slot {slot} active"),
                    got: format!("{other:#010x}"),
                    allowed: "0x00ac71f3 (enabled) or 0x0000dead (disabled)".to_owned(),
                });
            }
        }
        tried += 1;
        let iterations = be32(h, o + 4, "key slot iterations")?;
        check_limit(
            &format!("LUKS1 key slot {slot} iterations"),
            u64::from(iterations),
            u64::from(limits.max_pbkdf2_iterations),
        )?;
        if iterations == 0 {
            return Err(LuksError::Malformed {
                field: format!("key slot {slot} iterations"),
                got: "0".to_owned(),
                allowed: "at least 1".to_owned(),
            });
        }
        let salt = slice(h, o + 8, SALT_LEN as u64, "key slot salt")?;
        let km_sector = be32(h, o + 40, "key slot key-material-offset")?;
        let stripes = be32(h, o + 44, "key slot stripes")?;
        check_limit(
            &format!("LUKS1 key slot {slot} stripes"),
            u64::from(stripes),
            u64::from(limits.max_stripes),
        )?;
        if stripes == 0 {
            return Err(LuksError::Malformed {
                field: format!("key slot {slot} stripes"),
                got: "0".to_owned(),
                allowed: "at least 1".to_owned(),
            });
        }
        let area = af_area_len(key_bytes, stripes).ok_or(LuksError::Crypto {
            op: "key material size",
        })?;
        let km_off = u64::from(km_sector) * LUKS_SECTOR;
        if km_off < HEADER_LEN as u64 {
            return Err(LuksError::Malformed {
                field: format!("key slot {slot} key-material-offset"),
                got: km_sector.to_string(),
                allowed: "a sector after the 592-byte header".to_owned(),
            });
        }
        let enc = slice(
            h,
            km_off,
            area as u64,
            &format!("LUKS1 key slot {slot} key material"),
        )?;

        let mut derived = Zeroizing::new(vec![0u8; key_bytes]);
        pbkdf2(passphrase, salt, iterations, hash, &mut derived)?;
        let mut material = Zeroizing::new(enc.to_vec());
        crypt_area(&derived, &mut material, false)?;
        let mk = af::merge(&material, key_bytes, stripes as usize, hash.md())?;
        let mut check = [0u8; DIGEST_LEN];
        pbkdf2(&mk, mk_salt, mk_iter, hash, &mut check)?;
        if openssl::memcmp::eq(&check, mk_digest) {
            return Ok(Unlocked {
                version: LuksVersion::V1,
                master_key: mk,
                payload_offset: u64::from(payload_sectors) * LUKS_SECTOR,
                cipher: super::CIPHER_AES_XTS_PLAIN64.to_owned(),
                sector_size: 512,
                keyslot: slot,
                uuid,
            });
        }
    }
    Err(LuksError::WrongPassphrase { tried })
}
