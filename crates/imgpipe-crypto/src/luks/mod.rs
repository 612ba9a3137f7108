//! LUKS1 and LUKS2 headers: create a volume header for a fresh master key, and unlock headers
//! made by imgpipe, qemu-img or cryptsetup.
//!
//! Only `aes-xts-plain64` volumes are supported (the cipher of cryptsetup, qemu, Nova and Cinder
//! by default) with 256- or 512-bit keys. The payload that follows the header is encrypted
//! with [`Xts`] under the master key, sector numbers counted **from the payload start** in
//! units of the volume's sector size (LUKS2 with 4096-byte sectors uses "large sector" IVs).
//!
//! # Layout written by [`create`]
//! * LUKS1: the 592-byte header at 0, key slot 0 at 4096 bytes (sector 8), each slot's area
//!   (key size × 4000 stripes) rounded up to 4096 bytes, eight slots reserved (only slot 0
//!   used); payload at 2 MiB (4096 sectors) by default, as `cryptsetup luksFormat --type luks1`
//!   does with its 1 MiB alignment. qemu-img aligns the payload only to 4096 bytes (e.g. 4040
//!   sectors for a 512-bit key); both are valid and [`unlock`] reads whatever the header says.
//! * LUKS2: two 16 KiB header copies (binary header + JSON) at 0 and 16 KiB, each with its
//!   SHA-256 checksum, key slot 0's area at 32 KiB, payload at 16 MiB by default (cryptsetup's
//!   default); one keyslot (argon2id or pbkdf2), one `crypt` segment, one pbkdf2 digest.
//!   qemu-img cannot open LUKS2; cryptsetup can.
//!
//! The key-slot KDF cost is a parameter ([`Pbkdf`]); tests use tiny costs. The master-key
//! digest iterations default to 1000 (the master key is full-entropy, so this protects nothing
//! a larger count would).
//!
//! Passphrases are bytes. OpenStack (Cinder/os-brick, Nova) uses the lowercase hex string of
//! the key-manager key as the LUKS passphrase: see
//! [`crate::xts::plain::key_manager_passphrase`].
//!
//! ```
//! use imgpipe_crypto::luks::{self, LuksParams, LuksVersion, Pbkdf};
//! let mut p = LuksParams::new(LuksVersion::V1);
//! p.pbkdf = Pbkdf::Pbkdf2 { iterations: 1000 };
//! let vol = luks::create(&p, b"secret").unwrap();
//! assert_eq!(vol.header.len() as u64, vol.payload_offset);
//! let u = luks::unlock(&vol.header, b"secret").unwrap();
//! assert_eq!(u.master_key, vol.master_key);
//! assert!(luks::unlock(&vol.header, b"wrong").is_err());
//! ```

mod af;
mod v1;
mod v2;

use std::fmt;

use openssl::hash::MessageDigest;
use zeroize::Zeroizing;

use crate::xts::{Xts, XtsError};

/// Bytes per LUKS sector (header offsets and key-slot areas always use 512-byte sectors).
pub const LUKS_SECTOR: u64 = 512;
/// The only supported cipher specification.
pub const CIPHER_AES_XTS_PLAIN64: &str = "aes-xts-plain64";
/// Anti-forensic stripes cryptsetup and qemu use.
pub const AF_STRIPES: u32 = 4000;

/// LUKS on-disk version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LuksVersion {
    /// LUKS1: read and written by qemu-img and cryptsetup.
    V1,
    /// LUKS2: read and written by cryptsetup (qemu-img cannot open it).
    V2,
}

/// Key-slot key derivation.
#[derive(Clone, PartialEq, Eq)]
pub enum Pbkdf {
    /// PBKDF2-HMAC with the volume hash and a fixed iteration count (cryptsetup and qemu
    /// enforce at least 1000).
    Pbkdf2 {
        /// Iterations.
        iterations: u32,
    },
    /// PBKDF2 with the iteration count measured on this machine to take about `millis`
    /// milliseconds (cryptsetup's `--iter-time`, qemu's `iter-time`); at least 1000.
    Pbkdf2IterTime {
        /// Target time in milliseconds.
        millis: u32,
    },
    /// Argon2id (LUKS2 only; cryptsetup's LUKS2 default).
    Argon2id {
        /// Passes (`--pbkdf-force-iterations`; cryptsetup's minimum is 4).
        time: u32,
        /// Memory in KiB (`--pbkdf-memory`; at least 32).
        memory_kib: u32,
        /// Lanes (`--pbkdf-parallel`).
        parallelism: u32,
    },
}

impl fmt::Debug for Pbkdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pbkdf::Pbkdf2 { iterations } => write!(f, "pbkdf2(iterations={iterations})"),
            Pbkdf::Pbkdf2IterTime { millis } => write!(f, "pbkdf2(iter-time={millis}ms)"),
            Pbkdf::Argon2id {
                time,
                memory_kib,
                parallelism,
            } => write!(
                f,
                "argon2id(time={time}, memory={memory_kib}KiB, parallel={parallelism})"
            ),
        }
    }
}

/// Hash used for PBKDF2, the AF diffuser and the master-key digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LuksHash {
    /// SHA-1 (old cryptsetup default; read support).
    Sha1,
    /// SHA-256 (cryptsetup and qemu default).
    Sha256,
    /// SHA-512.
    Sha512,
}

impl LuksHash {
    /// The name as written in headers.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            LuksHash::Sha1 => "sha1",
            LuksHash::Sha256 => "sha256",
            LuksHash::Sha512 => "sha512",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sha1" => Some(LuksHash::Sha1),
            "sha256" => Some(LuksHash::Sha256),
            "sha512" => Some(LuksHash::Sha512),
            _ => None,
        }
    }

    fn md(self) -> MessageDigest {
        match self {
            LuksHash::Sha1 => MessageDigest::sha1(),
            LuksHash::Sha256 => MessageDigest::sha256(),
            LuksHash::Sha512 => MessageDigest::sha512(),
        }
    }
}

/// What [`create`] builds. Start from [`LuksParams::new`] and change fields.
#[derive(Debug, Clone)]
pub struct LuksParams {
    /// LUKS1 or LUKS2.
    pub version: LuksVersion,
    /// Cipher specification; only `"aes-xts-plain64"`.
    pub cipher: String,
    /// Master key size in bits: 256 (AES-128-XTS) or 512 (AES-256-XTS, default).
    pub key_bits: u32,
    /// Payload sector size: 512, or 4096 for LUKS2.
    pub sector_size: u32,
    /// Hash for PBKDF2, the AF splitter and the digest (default SHA-256).
    pub hash: LuksHash,
    /// Key-slot KDF (default: PBKDF2 with 2000 ms for LUKS1, argon2id t=4 m=1 GiB p=4 for LUKS2,
    /// which are cryptsetup's defaults; tests should set something cheap).
    pub pbkdf: Pbkdf,
    /// Master-key digest PBKDF2 iterations (default 1000).
    pub digest_iterations: u32,
    /// Volume UUID (lowercase 8-4-4-4-12 form); random v4 when `None`.
    pub uuid: Option<String>,
    /// LUKS2 label (at most 47 bytes); ignored for LUKS1.
    pub label: Option<String>,
    /// Payload offset in bytes (a multiple of 4096 and of the sector size, after the key
    /// material). `None`: 2 MiB for LUKS1, 16 MiB for LUKS2.
    pub payload_offset: Option<u64>,
}

impl LuksParams {
    /// cryptsetup-like defaults for `version` (AES-256-XTS, SHA-256).
    #[must_use]
    pub fn new(version: LuksVersion) -> Self {
        Self {
            version,
            cipher: CIPHER_AES_XTS_PLAIN64.to_owned(),
            key_bits: 512,
            sector_size: 512,
            hash: LuksHash::Sha256,
            pbkdf: match version {
                LuksVersion::V1 => Pbkdf::Pbkdf2IterTime { millis: 2000 },
                LuksVersion::V2 => Pbkdf::Argon2id {
                    time: 4,
                    memory_kib: 1_048_576,
                    parallelism: 4,
                },
            },
            digest_iterations: 1000,
            uuid: None,
            label: None,
            payload_offset: None,
        }
    }
}

/// A freshly created LUKS volume header and its master key.
pub struct LuksVolume {
    /// Bytes `[0, payload_offset)` to write at offset 0 of the target.
    pub header: Vec<u8>,
    /// Where the encrypted payload starts, in bytes.
    pub payload_offset: u64,
    /// The volume (master) key.
    pub master_key: Zeroizing<Vec<u8>>,
    /// Payload sector size in bytes.
    pub sector_size: u32,
    /// The volume UUID written in the header.
    pub uuid: String,
}

impl fmt::Debug for LuksVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LuksVolume")
            .field("header_len", &self.header.len())
            .field("payload_offset", &self.payload_offset)
            .field("master_key", &"<redacted>")
            .field("sector_size", &self.sector_size)
            .field("uuid", &self.uuid)
            .finish()
    }
}

impl LuksVolume {
    /// The payload cipher: sector 0 is the first `sector_size` bytes at `payload_offset`.
    ///
    /// # Errors
    /// As [`Xts::new`] (not expected for a volume made by [`create`]).
    pub fn xts(&self) -> Result<Xts, XtsError> {
        Xts::new(&self.master_key, self.sector_size as usize)
    }
}

/// The result of a successful [`unlock`].
pub struct Unlocked {
    /// LUKS version of the header.
    pub version: LuksVersion,
    /// The volume (master) key.
    pub master_key: Zeroizing<Vec<u8>>,
    /// Payload offset in bytes.
    pub payload_offset: u64,
    /// Cipher specification (always `"aes-xts-plain64"` today).
    pub cipher: String,
    /// Payload sector size in bytes.
    pub sector_size: u32,
    /// Which key slot opened.
    pub keyslot: usize,
    /// Volume UUID from the header.
    pub uuid: String,
}

impl fmt::Debug for Unlocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unlocked")
            .field("version", &self.version)
            .field("master_key", &"<redacted>")
            .field("payload_offset", &self.payload_offset)
            .field("cipher", &self.cipher)
            .field("sector_size", &self.sector_size)
            .field("keyslot", &self.keyslot)
            .field("uuid", &self.uuid)
            .finish()
    }
}

impl Unlocked {
    /// The payload cipher (sector 0 = first sector at `payload_offset`).
    ///
    /// # Errors
    /// As [`Xts::new`].
    pub fn xts(&self) -> Result<Xts, XtsError> {
        Xts::new(&self.master_key, self.sector_size as usize)
    }
}

/// Caps on the work and memory a header may demand from [`unlock_with_limits`]: headers are
/// untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnlockLimits {
    /// Largest PBKDF2 iteration count accepted (key slots and digests).
    pub max_pbkdf2_iterations: u32,
    /// Largest argon2 memory in KiB (cryptsetup's own maximum is 4 GiB).
    pub max_argon2_memory_kib: u32,
    /// Largest argon2 time cost.
    pub max_argon2_time: u32,
    /// Largest argon2 parallelism.
    pub max_argon2_parallelism: u32,
    /// Largest AF stripe count.
    pub max_stripes: u32,
}

impl Default for UnlockLimits {
    /// 50 M PBKDF2 iterations, argon2 ≤ 1 GiB / 64 passes / 16 lanes, ≤ 4000 × 16 stripes.
    fn default() -> Self {
        Self {
            max_pbkdf2_iterations: 50_000_000,
            max_argon2_memory_kib: 1_048_576,
            max_argon2_time: 64,
            max_argon2_parallelism: 16,
            max_stripes: 64_000,
        }
    }
}

/// Why a header could not be created or unlocked. Messages name the check, the value seen and
/// what was allowed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LuksError {
    /// The bytes do not start with a LUKS magic.
    #[error("LUKS magic check failed: got {got:02x?}, allowed \"LUKS\\xba\\xbe\"")]
    NotLuks {
        /// The first six bytes (or fewer).
        got: Vec<u8>,
    },
    /// The version field is neither 1 nor 2.
    #[error("LUKS version check failed: got {got}, allowed 1 or 2")]
    Version {
        /// Version seen.
        got: u16,
    },
    /// The buffer ends before a structure the header points to.
    #[error("LUKS header truncated: {what} needs bytes up to {need}, only {got} given")]
    Truncated {
        /// What was being read.
        what: String,
        /// End offset needed.
        need: u64,
        /// Bytes available.
        got: usize,
    },
    /// A field has a value the format does not allow.
    #[error("LUKS header field {field} check failed: got {got}, allowed {allowed}")]
    Malformed {
        /// Field name.
        field: String,
        /// Value seen.
        got: String,
        /// What the format allows.
        allowed: String,
    },
    /// A valid but unsupported feature (cipher, hash, KDF, …).
    #[error("LUKS {what} not supported: got {got}, supported {supported}")]
    Unsupported {
        /// What.
        what: String,
        /// Value seen.
        got: String,
        /// What imgpipe supports.
        supported: String,
    },
    /// A cost or size in the header exceeds [`UnlockLimits`].
    #[error("LUKS limit exceeded: {what} is {got}, limit {limit}")]
    LimitExceeded {
        /// What.
        what: String,
        /// Value seen.
        got: u64,
        /// Limit in force.
        limit: u64,
    },
    /// The LUKS2 header checksums did not verify (neither copy usable).
    #[error("LUKS2 header checksum check failed for {which}")]
    Checksum {
        /// Which header copies were tried.
        which: String,
    },
    /// No active key slot opened with this passphrase.
    #[error("LUKS passphrase check failed: no key slot opened ({tried} active slot(s) tried)")]
    WrongPassphrase {
        /// Active slots tried.
        tried: usize,
    },
    /// A [`LuksParams`] value is invalid.
    #[error("LUKS parameter {field} check failed: got {got}, allowed {allowed}")]
    Params {
        /// Field name.
        field: &'static str,
        /// Value given.
        got: String,
        /// What is allowed.
        allowed: String,
    },
    /// A cryptographic primitive failed.
    #[error("LUKS crypto operation failed: {op}")]
    Crypto {
        /// What was being done.
        op: &'static str,
    },
    /// The key-slot cipher could not be set up.
    #[error("LUKS key-slot cipher: {0}")]
    Xts(#[from] XtsError),
}

/// Creates a LUKS header with key slot 0 opened by `passphrase` and a fresh random master key.
///
/// # Errors
/// [`LuksError::Params`] for invalid parameters, [`LuksError::Crypto`] if randomness or a KDF
/// fails.
pub fn create(params: &LuksParams, passphrase: &[u8]) -> Result<LuksVolume, LuksError> {
    let key_bytes = check_key_bits(params.key_bits)?;
    if params.cipher != CIPHER_AES_XTS_PLAIN64 {
        return Err(LuksError::Params {
            field: "cipher",
            got: params.cipher.clone(),
            allowed: CIPHER_AES_XTS_PLAIN64.to_owned(),
        });
    }
    if params.digest_iterations < 1000 {
        return Err(LuksError::Params {
            field: "digest_iterations",
            got: params.digest_iterations.to_string(),
            allowed: "at least 1000".to_owned(),
        });
    }
    let uuid = match &params.uuid {
        Some(u) => {
            check_uuid(u)?;
            u.to_ascii_lowercase()
        }
        None => random_uuid()?,
    };
    let mut master_key = Zeroizing::new(vec![0u8; key_bytes]);
    loop {
        random(&mut master_key)?;
        let (a, b) = master_key.split_at(key_bytes / 2);
        if a != b {
            break;
        }
    }
    match params.version {
        LuksVersion::V1 => v1::create(params, passphrase, master_key, uuid),
        LuksVersion::V2 => v2::create(params, passphrase, master_key, uuid),
    }
}

/// Unlocks a LUKS1 or LUKS2 header with [`UnlockLimits::default`]. `header` must hold at least
/// the bytes up to the end of the key-slot areas; passing `[0, payload_offset)` or the whole
/// volume always works.
///
/// # Errors
/// [`LuksError::WrongPassphrase`] if no slot opens; format, limit and support errors otherwise.
pub fn unlock(header: &[u8], passphrase: &[u8]) -> Result<Unlocked, LuksError> {
    unlock_with_limits(header, passphrase, &UnlockLimits::default())
}

/// [`unlock`] with explicit limits on the KDF cost and sizes a header may demand.
///
/// # Errors
/// As [`unlock`].
pub fn unlock_with_limits(
    header: &[u8],
    passphrase: &[u8],
    limits: &UnlockLimits,
) -> Result<Unlocked, LuksError> {
    let magic = header.get(..6).ok_or_else(|| LuksError::NotLuks {
        got: header.to_vec(),
    })?;
    if magic != v1::MAGIC {
        return Err(LuksError::NotLuks {
            got: magic.to_vec(),
        });
    }
    match be16(header, 6, "version")? {
        1 => v1::unlock(header, passphrase, limits),
        2 => v2::unlock(header, passphrase, limits),
        got => Err(LuksError::Version { got }),
    }
}

// ---- shared helpers -------------------------------------------------------------------------

fn check_key_bits(bits: u32) -> Result<usize, LuksError> {
    match bits {
        256 => Ok(32),
        512 => Ok(64),
        _ => Err(LuksError::Params {
            field: "key_bits",
            got: bits.to_string(),
            allowed: "256 or 512".to_owned(),
        }),
    }
}

fn random(buf: &mut [u8]) -> Result<(), LuksError> {
    openssl::rand::rand_bytes(buf).map_err(|_| LuksError::Crypto {
        op: "random bytes from OpenSSL",
    })
}

fn random_uuid() -> Result<String, LuksError> {
    let mut b = [0u8; 16];
    random(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn check_uuid(u: &str) -> Result<(), LuksError> {
    let ok = u.len() == 36
        && u.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    if ok {
        Ok(())
    } else {
        Err(LuksError::Params {
            field: "uuid",
            got: u.to_owned(),
            allowed: "8-4-4-4-12 hex digits".to_owned(),
        })
    }
}

fn pbkdf2(
    pass: &[u8],
    salt: &[u8],
    iterations: u32,
    hash: LuksHash,
    out: &mut [u8],
) -> Result<(), LuksError> {
    openssl::pkcs5::pbkdf2_hmac(pass, salt, iterations as usize, hash.md(), out).map_err(|_| {
        LuksError::Crypto {
            op: "PBKDF2 in OpenSSL",
        }
    })
}

fn argon2id(
    pass: &[u8],
    salt: &[u8],
    time: u32,
    memory_kib: u32,
    parallelism: u32,
    out: &mut [u8],
) -> Result<(), LuksError> {
    let params =
        argon2::Params::new(memory_kib, time, parallelism, Some(out.len())).map_err(|e| {
            LuksError::Malformed {
                field: "argon2 parameters".to_owned(),
                got: format!("time={time} memory={memory_kib}KiB parallel={parallelism} ({e})"),
                allowed: "values the argon2 specification accepts".to_owned(),
            }
        })?;
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(pass, salt, out)
        .map_err(|_| LuksError::Crypto {
            op: "argon2id key derivation",
        })
}

/// PBKDF2 iterations that take about `millis` ms here (cryptsetup's and qemu's iter-time).
fn pbkdf2_iterations_for(millis: u32, hash: LuksHash, key_len: usize) -> Result<u32, LuksError> {
    let probe = 20_000u32;
    let mut out = Zeroizing::new(vec![0u8; key_len]);
    let t = std::time::Instant::now();
    pbkdf2(b"imgpipe-benchmark", &[0u8; 32], probe, hash, &mut out)?;
    let ns = t.elapsed().as_nanos().max(1);
    let iters = u128::from(probe) * u128::from(millis) * 1_000_000 / ns;
    Ok(u32::try_from(iters).unwrap_or(u32::MAX).max(1000))
}

/// Encrypts (`encrypt`) or decrypts a key-slot area in place: `aes-xts-plain64` with the
/// derived key, 512-byte sectors numbered from 0 at the area start. `area` must be a whole
/// number of sectors.
fn crypt_area(key: &[u8], area: &mut [u8], encrypt: bool) -> Result<(), LuksError> {
    let xts = Xts::new(key, LUKS_SECTOR as usize)?;
    if encrypt {
        xts.encrypt_sectors(0, area);
    } else {
        xts.decrypt_sectors(0, area);
    }
    Ok(())
}

/// Size of the AF material for a key, rounded up to whole 512-byte sectors.
fn af_area_len(key_bytes: usize, stripes: u32) -> Option<usize> {
    let raw = key_bytes.checked_mul(stripes as usize)?;
    raw.checked_next_multiple_of(LUKS_SECTOR as usize)
}

fn round_up(v: u64, to: u64) -> Option<u64> {
    v.checked_next_multiple_of(to)
}

fn slice<'a>(buf: &'a [u8], off: u64, len: u64, what: &str) -> Result<&'a [u8], LuksError> {
    let end = off.checked_add(len).ok_or_else(|| LuksError::Malformed {
        field: what.to_owned(),
        got: format!("offset {off} + length {len}"),
        allowed: "a range below 2^64".to_owned(),
    })?;
    let (s, e) = (usize::try_from(off).ok(), usize::try_from(end).ok());
    match (s, e) {
        (Some(s), Some(e)) => buf.get(s..e),
        _ => None,
    }
    .ok_or_else(|| LuksError::Truncated {
        what: what.to_owned(),
        need: end,
        got: buf.len(),
    })
}

fn be16(buf: &[u8], off: u64, what: &str) -> Result<u16, LuksError> {
    let s = slice(buf, off, 2, what)?;
    Ok(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(buf: &[u8], off: u64, what: &str) -> Result<u32, LuksError> {
    let s = slice(buf, off, 4, what)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Ok(u32::from_be_bytes(a))
}

fn be64(buf: &[u8], off: u64, what: &str) -> Result<u64, LuksError> {
    let s = slice(buf, off, 8, what)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_be_bytes(a))
}

/// A NUL-padded fixed-size string field.
fn cstr(buf: &[u8], off: u64, len: u64, what: &str) -> Result<String, LuksError> {
    let s = slice(buf, off, len, what)?;
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    let v = s.get(..end).unwrap_or_default();
    String::from_utf8(v.to_vec()).map_err(|_| LuksError::Malformed {
        field: what.to_owned(),
        got: format!("{v:02x?}"),
        allowed: "an ASCII string".to_owned(),
    })
}

fn put_str(buf: &mut [u8], off: usize, field_len: usize, s: &str) -> Result<(), LuksError> {
    let b = s.as_bytes();
    if b.len() >= field_len {
        return Err(LuksError::Params {
            field: "string field",
            got: s.to_owned(),
            allowed: format!("at most {} bytes", field_len - 1),
        });
    }
    buf.get_mut(off..off + b.len())
        .ok_or(LuksError::Crypto {
            op: "header buffer too small",
        })?
        .copy_from_slice(b);
    Ok(())
}

fn check_limit(what: &str, got: u64, limit: u64) -> Result<(), LuksError> {
    if got > limit {
        Err(LuksError::LimitExceeded {
            what: what.to_owned(),
            got,
            limit,
        })
    } else {
        Ok(())
    }
}

fn check_payload_offset(params: &LuksParams, min: u64, default: u64) -> Result<u64, LuksError> {
    let off = params.payload_offset.unwrap_or(default.max(min));
    let align = 4096u64.max(u64::from(params.sector_size));
    if off < min || !off.is_multiple_of(align) {
        return Err(LuksError::Params {
            field: "payload_offset",
            got: off.to_string(),
            allowed: format!("a multiple of {align} that is at least {min}"),
        });
    }
    // The header is returned as one buffer: keep it to something sane.
    if off > 1 << 30 {
        return Err(LuksError::Params {
            field: "payload_offset",
            got: off.to_string(),
            allowed: "at most 1 GiB".to_owned(),
        });
    }
    Ok(off)
}

fn pbkdf2_slot_iterations(params: &LuksParams, key_bytes: usize) -> Result<u32, LuksError> {
    match params.pbkdf {
        Pbkdf::Pbkdf2 { iterations } if iterations >= 1000 => Ok(iterations),
        Pbkdf::Pbkdf2 { iterations } => Err(LuksError::Params {
            field: "pbkdf.iterations",
            got: iterations.to_string(),
            allowed: "at least 1000 (cryptsetup and qemu minimum)".to_owned(),
        }),
        Pbkdf::Pbkdf2IterTime { millis } => pbkdf2_iterations_for(millis, params.hash, key_bytes),
        Pbkdf::Argon2id { .. } => Err(LuksError::Params {
            field: "pbkdf",
            got: "argon2id".to_owned(),
            allowed: "pbkdf2 for LUKS1".to_owned(),
        }),
    }
}
