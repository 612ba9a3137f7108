//! AES-XTS sector encryption as dm-crypt and LUKS use it: `aes-xts-plain64`.
//!
//! A disk is cut into sectors of `sector_size` bytes (512, or 4096 for LUKS2 volumes formatted
//! with `--sector-size 4096`). Sector `n` is one XTS data unit whose 16-byte tweak is `n` as a
//! 64-bit little-endian integer followed by eight zero bytes ("plain64"). `n` counts sectors of
//! `sector_size` bytes: for LUKS this is from the payload start, for plain dm-crypt from the
//! start of the device (plus `--skip`). With 4096-byte sectors this is what LUKS2 and dm-crypt's
//! `iv_large_sectors` do; plain dm-crypt with 4096-byte sectors *without* `--iv-large-sectors`
//! counts the tweak in 512-byte units and is not what [`Xts`] computes.
//!
//! Keys are 32 bytes (AES-128-XTS, `--key-size 256`) or 64 bytes (AES-256-XTS,
//! `--key-size 512`, the default of cryptsetup, qemu and Nova). The first half is the data key,
//! the second half the tweak key; keys whose halves are equal are refused (IEEE 1619-2018 and
//! FIPS 140 IG A.9; OpenSSL and AWS-LC refuse them too).
//!
//! # Backends (chosen by measurement on the target machine class, see `benches/xts.rs`)
//! * AES-256-XTS: AWS-LC's `EVP_aes_256_xts`, whose x86-64 VAES/AVX-512 code path runs at
//!   about 0.2 ns/byte on 512-byte sectors. Reached through `aws-lc-sys`; the FFI is confined
//!   to the private `awslc` module below.
//! * AES-128-XTS: AWS-LC has no AES-128-XTS, so OpenSSL 3's (`openssl` crate, safe API) is
//!   used; only the IV is reset per sector, the key schedule is set up once.
//!
//! Key material is held in [`Zeroizing`] memory and in the backends' cipher contexts, which
//! both libraries cleanse when freed; it never appears in `Debug` output.
//!
//! ```
//! use imgpipe_crypto::xts::Xts;
//! let key: Vec<u8> = (0u8..64).collect();
//! let xts = Xts::new(&key, 512).unwrap();
//! let mut disk = vec![0u8; 4 * 512];
//! xts.encrypt_sectors(2048, &mut disk);
//! assert_ne!(disk, vec![0u8; 4 * 512]);
//! xts.decrypt_sectors(2048, &mut disk);
//! assert_eq!(disk, vec![0u8; 4 * 512]);
//! ```

use std::fmt;
use std::sync::Mutex;

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use zeroize::Zeroizing;

/// Why an [`Xts`] could not be built.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum XtsError {
    /// The key is neither 32 nor 64 bytes.
    #[error(
        "XTS key length check failed: got {got} bytes, allowed 32 (AES-128-XTS, key size 256 bits) or 64 (AES-256-XTS, key size 512 bits)"
    )]
    KeyLength {
        /// Length of the key given.
        got: usize,
    },
    /// The sector size is not supported.
    #[error("XTS sector size check failed: got {got} bytes, allowed 512 or 4096")]
    SectorSize {
        /// Sector size given.
        got: usize,
    },
    /// Both halves of the key are equal, which makes XTS insecure.
    #[error(
        "XTS key check failed: the data key and the tweak key (the two halves of the {key_len}-byte key) are identical; they must differ"
    )]
    DuplicateKeyHalves {
        /// Length of the key given.
        key_len: usize,
    },
    /// The cryptographic library refused to set up a cipher context.
    #[error("XTS backend {backend} failed to {op}")]
    Backend {
        /// `"aws-lc"` or `"openssl"`.
        backend: &'static str,
        /// What was being done.
        op: &'static str,
    },
}

/// AES-XTS-plain64 over fixed-size sectors. See the [module docs](self) for the tweak rule.
///
/// `Xts` is `Send + Sync`: several threads may encrypt through one `Xts` at once; each call
/// borrows a cipher context from a small internal pool (created on demand from the key).
pub struct Xts {
    key: Zeroizing<Vec<u8>>,
    sector_size: usize,
    pool: Mutex<Vec<Worker>>,
}

impl fmt::Debug for Xts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Xts")
            .field("cipher", &self.cipher_name())
            .field("sector_size", &self.sector_size)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Xts {
    /// Builds an XTS cipher from a 32- or 64-byte key (data key ‖ tweak key) for sectors of
    /// `sector_size` bytes (512 or 4096).
    ///
    /// # Errors
    /// [`XtsError::KeyLength`], [`XtsError::SectorSize`], [`XtsError::DuplicateKeyHalves`], or
    /// [`XtsError::Backend`] if the library could not set up the key.
    pub fn new(key: &[u8], sector_size: usize) -> Result<Self, XtsError> {
        if key.len() != 32 && key.len() != 64 {
            return Err(XtsError::KeyLength { got: key.len() });
        }
        if sector_size != 512 && sector_size != 4096 {
            return Err(XtsError::SectorSize { got: sector_size });
        }
        let (k1, k2) = key.split_at(key.len() / 2);
        if openssl::memcmp::eq(k1, k2) {
            return Err(XtsError::DuplicateKeyHalves { key_len: key.len() });
        }
        let key = Zeroizing::new(key.to_vec());
        // Build one worker now so that backend failures surface here, not mid-stream.
        let first = Worker::new(&key)?;
        Ok(Self {
            key,
            sector_size,
            pool: Mutex::new(vec![first]),
        })
    }

    /// Sector size in bytes.
    #[must_use]
    pub fn sector_size(&self) -> usize {
        self.sector_size
    }

    /// Key length in bytes (32 or 64).
    #[must_use]
    pub fn key_len(&self) -> usize {
        self.key.len()
    }

    /// `"aes-128-xts-plain64"` or `"aes-256-xts-plain64"` (descriptive, not a cryptsetup spec).
    #[must_use]
    pub fn cipher_name(&self) -> &'static str {
        if self.key.len() == 64 {
            "aes-256-xts-plain64"
        } else {
            "aes-128-xts-plain64"
        }
    }

    /// Encrypts `buf` in place: sector `first_sector` is `buf[..sector_size]`, the next sector
    /// number the next `sector_size` bytes, and so on (sector numbers wrap at 2^64, as plain64
    /// does).
    ///
    /// # Panics
    /// If `buf.len()` is not a multiple of the sector size (a caller bug), or if the backend
    /// fails on a context it accepted at construction (not expected to happen).
    pub fn encrypt_sectors(&self, first_sector: u64, buf: &mut [u8]) {
        self.run(first_sector, buf, true);
    }

    /// Decrypts `buf` in place; the inverse of [`Xts::encrypt_sectors`] with the same sector
    /// numbering.
    ///
    /// # Panics
    /// As [`Xts::encrypt_sectors`].
    pub fn decrypt_sectors(&self, first_sector: u64, buf: &mut [u8]) {
        self.run(first_sector, buf, false);
    }

    fn run(&self, first_sector: u64, buf: &mut [u8], encrypt: bool) {
        assert!(
            buf.len().is_multiple_of(self.sector_size),
            "XTS buffer length {} is not a multiple of the sector size {}",
            buf.len(),
            self.sector_size
        );
        if buf.is_empty() {
            return;
        }
        let mut worker = match self.take_worker() {
            Ok(w) => w,
            Err(e) => panic!("{e}"),
        };
        let mut sector = first_sector;
        for chunk in buf.chunks_exact_mut(self.sector_size) {
            let mut iv = [0u8; 16];
            iv[..8].copy_from_slice(&sector.to_le_bytes());
            if let Err(e) = worker.sector(&iv, chunk, encrypt) {
                panic!("{e}");
            }
            sector = sector.wrapping_add(1);
        }
        self.pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(worker);
    }

    fn take_worker(&self) -> Result<Worker, XtsError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match pooled {
            Some(w) => Ok(w),
            None => Worker::new(&self.key),
        }
    }
}

/// One encrypt and one decrypt context for the key (AWS-LC keeps separate key schedules).
enum Worker {
    AwsLc256 { enc: awslc::Ctx, dec: awslc::Ctx },
    OpenSsl128 { enc: CipherCtx, dec: CipherCtx },
}

impl Worker {
    fn new(key: &[u8]) -> Result<Self, XtsError> {
        if let Ok(key64) = <&[u8; 64]>::try_from(key) {
            return Ok(Worker::AwsLc256 {
                enc: awslc::Ctx::new(key64, true)?,
                dec: awslc::Ctx::new(key64, false)?,
            });
        }
        let err = |op| {
            move |_| XtsError::Backend {
                backend: "openssl",
                op,
            }
        };
        let mut enc = CipherCtx::new().map_err(err("allocate a cipher context"))?;
        enc.encrypt_init(Some(Cipher::aes_128_xts()), Some(key), None)
            .map_err(err("set the AES-128-XTS encryption key"))?;
        let mut dec = CipherCtx::new().map_err(err("allocate a cipher context"))?;
        dec.decrypt_init(Some(Cipher::aes_128_xts()), Some(key), None)
            .map_err(err("set the AES-128-XTS decryption key"))?;
        Ok(Worker::OpenSsl128 { enc, dec })
    }

    fn sector(&mut self, iv: &[u8; 16], data: &mut [u8], encrypt: bool) -> Result<(), XtsError> {
        match self {
            Worker::AwsLc256 { enc, dec } => {
                let ctx = if encrypt { enc } else { dec };
                if ctx.sector(iv, data) {
                    Ok(())
                } else {
                    Err(XtsError::Backend {
                        backend: "aws-lc",
                        op: "process a sector",
                    })
                }
            }
            Worker::OpenSsl128 { enc, dec } => {
                let ctx = if encrypt { enc } else { dec };
                let fail = XtsError::Backend {
                    backend: "openssl",
                    op: "process a sector",
                };
                let err = |_: openssl::error::ErrorStack| fail.clone();
                // A new IV (key unchanged) starts a new XTS data unit.
                if encrypt {
                    ctx.encrypt_init(None, None, Some(iv)).map_err(err)?;
                } else {
                    ctx.decrypt_init(None, None, Some(iv)).map_err(err)?;
                }
                let len = data.len();
                let n = ctx.cipher_update_inplace(data, len).map_err(err)?;
                if n == len { Ok(()) } else { Err(fail) }
            }
        }
    }
}

/// The only FFI in this crate: AWS-LC's EVP AES-256-XTS.
mod awslc {
    use std::ptr::{self, NonNull};

    use aws_lc_sys as sys;

    use super::XtsError;

    /// An owned `EVP_CIPHER_CTX` set up with an AES-256-XTS key for one direction.
    pub(super) struct Ctx(NonNull<sys::EVP_CIPHER_CTX>);

    // SAFETY: an EVP_CIPHER_CTX has no thread affinity and holds no thread-local state; `Ctx`
    // only touches it through `&mut self` (or in `drop`), so moving it between threads is sound.
    unsafe impl Send for Ctx {}

    impl Ctx {
        pub(super) fn new(key: &[u8; 64], encrypt: bool) -> Result<Self, XtsError> {
            // SAFETY: EVP_CIPHER_CTX_new has no preconditions; it returns NULL on allocation
            // failure, which NonNull::new turns into an error.
            let raw = unsafe { sys::EVP_CIPHER_CTX_new() };
            let ctx = Ctx(NonNull::new(raw).ok_or(XtsError::Backend {
                backend: "aws-lc",
                op: "allocate a cipher context",
            })?);
            // SAFETY: `ctx.0` is a live context we own; EVP_aes_256_xts() returns a static
            // cipher; `key` points to 64 readable bytes, exactly EVP_aes_256_xts's key length;
            // a NULL engine and a NULL IV are allowed (the IV is set per sector).
            let ok = unsafe {
                sys::EVP_CipherInit_ex(
                    ctx.0.as_ptr(),
                    sys::EVP_aes_256_xts(),
                    ptr::null_mut(),
                    key.as_ptr(),
                    ptr::null(),
                    i32::from(encrypt),
                )
            };
            if ok == 1 {
                Ok(ctx)
            } else {
                // SAFETY: clearing the thread's error queue has no preconditions.
                unsafe { sys::ERR_clear_error() };
                Err(XtsError::Backend {
                    backend: "aws-lc",
                    op: "set the AES-256-XTS key",
                })
            }
        }

        /// Processes one data unit (one sector) in place with tweak `iv`. Returns false if
        /// AWS-LC reported an error.
        pub(super) fn sector(&mut self, iv: &[u8; 16], data: &mut [u8]) -> bool {
            // SAFETY: `self.0` is a live context whose cipher and key were set in `new`; with
            // cipher, engine and key NULL and enc = -1, EVP_CipherInit_ex only installs the
            // 16-byte IV pointed to by `iv` (XTS has a 16-byte IV) and keeps the direction.
            let ok = unsafe {
                sys::EVP_CipherInit_ex(
                    self.0.as_ptr(),
                    ptr::null(),
                    ptr::null_mut(),
                    ptr::null(),
                    iv.as_ptr(),
                    -1,
                )
            };
            if ok != 1 {
                // SAFETY: no preconditions.
                unsafe { sys::ERR_clear_error() };
                return false;
            }
            // SAFETY: `data` is a valid, exclusively borrowed buffer of `data.len()` bytes used
            // as both input and output; AWS-LC's XTS supports exactly overlapping in/out, and
            // data.len() (a sector: 512 or 4096 bytes) is within XTS's 16-byte minimum and
            // 2^20-block maximum per data unit.
            let ok = unsafe {
                sys::EVP_Cipher(
                    self.0.as_ptr(),
                    data.as_mut_ptr(),
                    data.as_ptr(),
                    data.len(),
                )
            };
            if ok != 1 {
                // SAFETY: no preconditions.
                unsafe { sys::ERR_clear_error() };
                return false;
            }
            true
        }
    }

    impl Drop for Ctx {
        fn drop(&mut self) {
            // SAFETY: `self.0` was returned by EVP_CIPHER_CTX_new and is freed exactly once
            // here; EVP_CIPHER_CTX_free cleanses the key schedule before freeing it.
            unsafe { sys::EVP_CIPHER_CTX_free(self.0.as_ptr()) };
        }
    }
}

/// Plain dm-crypt (no header) keys, as `cryptsetup open --type plain` (alias `create`) derives
/// them, and the way Nova and Cinder feed key-manager keys to it.
///
/// * `--key-file=PATH` (a real file): no hashing; the key is the first `key_bytes` bytes of the
///   file ([`key_from_keyfile`]).
/// * Passphrase typed or read from stdin, **including `--key-file=-`**: the passphrase is hashed
///   with the plain-mode hash ([`key_from_passphrase`]). The default hash is compiled into
///   cryptsetup (`cryptsetup --help`, "Password hashing:"; `ripemd160` in cryptsetup 2.6.1 as
///   shipped by Debian 12); pass `--hash` to pin it.
/// * Nova's LVM ephemeral encryption runs `cryptsetup create --cipher=<c> --key-size=<n>
///   --key-file=- <target> <device>` with the **lowercase hex string** of the key-manager key on
///   stdin and no `--hash`, so its dm-crypt key is
///   `key_from_passphrase(hex(km_key), n/8, <host default hash>)` ([`nova_ephemeral_key`]).
/// * Cinder/os-brick LUKS volumes use the same hex string as the **LUKS passphrase**
///   ([`key_manager_passphrase`]); volumes created by old os-brick releases may still carry
///   the "mangled" variant (bug 1633518, [`cinder_mangled_passphrase`]).
pub mod plain {
    use openssl::hash::{Hasher, MessageDigest};
    use zeroize::Zeroizing;

    /// Why a plain dm-crypt key could not be derived.
    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum PlainKeyError {
        /// The key file is shorter than the key.
        #[error("plain key file length check failed: got {got} bytes, need at least {need}")]
        KeyFileTooShort {
            /// Bytes available.
            got: usize,
            /// Key size in bytes.
            need: usize,
        },
        /// The key size is not one of the XTS key sizes.
        #[error("plain key size check failed: got {got} bytes, allowed 32 or 64")]
        KeySize {
            /// Requested key size.
            got: usize,
        },
        /// The hash failed in OpenSSL (e.g. RIPEMD-160 unavailable).
        #[error("plain passphrase hashing with {hash} failed in OpenSSL")]
        Hash {
            /// Hash name.
            hash: &'static str,
        },
    }

    /// The hash cryptsetup applies to a plain-mode passphrase (`--hash`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum PlainHash {
        /// `--hash plain`: no hashing; the passphrase is truncated or zero-padded to the key size.
        Plain,
        /// `ripemd160` (cryptsetup's historical default).
        Ripemd160,
        /// `sha1`.
        Sha1,
        /// `sha256`.
        Sha256,
        /// `sha512`.
        Sha512,
    }

    impl PlainHash {
        fn digest(self) -> Option<(MessageDigest, &'static str)> {
            match self {
                PlainHash::Plain => None,
                PlainHash::Ripemd160 => Some((MessageDigest::ripemd160(), "ripemd160")),
                PlainHash::Sha1 => Some((MessageDigest::sha1(), "sha1")),
                PlainHash::Sha256 => Some((MessageDigest::sha256(), "sha256")),
                PlainHash::Sha512 => Some((MessageDigest::sha512(), "sha512")),
            }
        }
    }

    fn check_size(key_bytes: usize) -> Result<(), PlainKeyError> {
        if key_bytes == 32 || key_bytes == 64 {
            Ok(())
        } else {
            Err(PlainKeyError::KeySize { got: key_bytes })
        }
    }

    /// The key `cryptsetup open --type plain --key-file PATH --key-size <8*key_bytes>` uses: the
    /// first `key_bytes` bytes of the file, unhashed.
    ///
    /// # Errors
    /// [`PlainKeyError::KeyFileTooShort`] or [`PlainKeyError::KeySize`].
    pub fn key_from_keyfile(
        keyfile: &[u8],
        key_bytes: usize,
    ) -> Result<Zeroizing<Vec<u8>>, PlainKeyError> {
        check_size(key_bytes)?;
        match keyfile.get(..key_bytes) {
            Some(k) => Ok(Zeroizing::new(k.to_vec())),
            None => Err(PlainKeyError::KeyFileTooShort {
                got: keyfile.len(),
                need: key_bytes,
            }),
        }
    }

    /// The key cryptsetup derives from a plain-mode passphrase: digest rounds
    /// `H("A"*i ‖ passphrase)` for i = 0, 1, … concatenated and cut at `key_bytes` (the
    /// "hashalot" scheme), or the passphrase itself zero-padded for [`PlainHash::Plain`].
    ///
    /// # Errors
    /// [`PlainKeyError::KeySize`] or [`PlainKeyError::Hash`].
    pub fn key_from_passphrase(
        passphrase: &[u8],
        key_bytes: usize,
        hash: PlainHash,
    ) -> Result<Zeroizing<Vec<u8>>, PlainKeyError> {
        check_size(key_bytes)?;
        let mut key = Zeroizing::new(Vec::with_capacity(key_bytes));
        let Some((md, name)) = hash.digest() else {
            let take = passphrase.len().min(key_bytes);
            key.extend_from_slice(passphrase.get(..take).unwrap_or_default());
            key.resize(key_bytes, 0);
            return Ok(key);
        };
        let err = |_| PlainKeyError::Hash { hash: name };
        let mut round = 0usize;
        while key.len() < key_bytes {
            let mut h = Hasher::new(md).map_err(err)?;
            for _ in 0..round {
                h.update(b"A").map_err(err)?;
            }
            h.update(passphrase).map_err(err)?;
            let d = h.finish().map_err(err)?;
            let take = d.len().min(key_bytes - key.len());
            key.extend_from_slice(d.get(..take).unwrap_or_default());
            round += 1;
        }
        Ok(key)
    }

    /// The passphrase Nova and Cinder/os-brick hand to cryptsetup for a key-manager key: its
    /// lowercase hex string (`binascii.hexlify(key)`), as ASCII bytes.
    #[must_use]
    pub fn key_manager_passphrase(km_key: &[u8]) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(hex::encode(km_key).into_bytes())
    }

    /// The passphrase old os-brick releases set on LUKS volumes (bug 1633518): each byte in hex
    /// *without* its leading zero (`0x07` → `"7"`, `0x0b` → `"b"`, `0x00` → `"0"`).
    #[must_use]
    pub fn cinder_mangled_passphrase(km_key: &[u8]) -> Zeroizing<Vec<u8>> {
        let mut s = Zeroizing::new(Vec::with_capacity(km_key.len() * 2));
        for b in km_key {
            s.extend_from_slice(format!("{b:x}").as_bytes());
        }
        s
    }

    /// The dm-crypt key of a Nova LVM ephemeral disk (`cryptsetup create --key-file=-` with the
    /// hex string of `km_key` on stdin): [`key_from_passphrase`] of
    /// [`key_manager_passphrase`]. `host_default_hash` must be the compute host's cryptsetup
    /// plain-mode default (see the module docs), since Nova passes no `--hash`.
    ///
    /// # Errors
    /// As [`key_from_passphrase`].
    pub fn nova_ephemeral_key(
        km_key: &[u8],
        key_bytes: usize,
        host_default_hash: PlainHash,
    ) -> Result<Zeroizing<Vec<u8>>, PlainKeyError> {
        key_from_passphrase(
            &key_manager_passphrase(km_key),
            key_bytes,
            host_default_hash,
        )
    }
}
