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
//! # Backends (chosen by measurement on the target machine class, see `benches/xts.rs`;
//! figures are thread CPU time per byte)
//! * AES-256-XTS: AWS-LC's `EVP_aes_256_xts`, whose x86-64 VAES/AVX-512 code path runs at
//!   about 0.12 ns/byte on 512-byte sectors, 0.05 on 4096-byte sectors. Reached through
//!   `aws-lc-sys`; that FFI is confined to the private `awslc` module below.
//! * AES-128-XTS, 512-byte sectors: AWS-LC has no AES-128-XTS, and OpenSSL's, set up once per
//!   sector, spends more on the per-sector setup than on the cipher (0.29–0.34 ns/byte). So
//!   XTS is assembled here ([`Backend::BulkEcb`]) over OpenSSL's bulk AES-128-ECB (AES-NI,
//!   8 blocks in flight): the first tweaks of 16 KiB worth of sectors are encrypted in one ECB
//!   call, the per-block tweaks follow by multiplication by α (SSE2, four sectors side by
//!   side), and one ECB call encrypts the whitened run: about 0.18 ns/byte.
//! * AES-128-XTS, 4096-byte sectors: OpenSSL's XTS (0.12 ns/byte; the setup is amortised).
//!
//! [`Xts::encrypt_sectors_to`] encrypts from a shared input into a separate output, folding
//! the copy a caller would otherwise make into the cipher.
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

/// Which implementation an [`Xts`] runs on. [`Xts::new`] picks [`Backend::Auto`]; the others
/// exist so that benchmarks and tests can compare and cross-check the implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// The measured-fastest choice for the key length (see the module docs).
    Auto,
    /// The library's own XTS mode, set up once per sector: AWS-LC `EVP_aes_256_xts` for 64-byte
    /// keys, OpenSSL `aes-128-xts` for 32-byte keys.
    LibraryXts,
    /// XTS assembled here over OpenSSL's bulk AES-ECB: the tweaks of a run of sectors are
    /// computed together, then one ECB call encrypts the whole run (AES-NI, 8 blocks in flight).
    BulkEcb,
}

/// AES-XTS-plain64 over fixed-size sectors. See the [module docs](self) for the tweak rule.
///
/// `Xts` is `Send + Sync`: several threads may encrypt through one `Xts` at once; each call
/// borrows a cipher context from a small internal pool (created on demand from the key).
pub struct Xts {
    key: Zeroizing<Vec<u8>>,
    sector_size: usize,
    backend: Backend,
    pool: Mutex<Vec<Worker>>,
}

impl fmt::Debug for Xts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Xts")
            .field("cipher", &self.cipher_name())
            .field("sector_size", &self.sector_size)
            .field("backend", &self.backend)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Xts {
    /// Builds an XTS cipher from a 32- or 64-byte key (data key ‖ tweak key) for sectors of
    /// `sector_size` bytes (512 or 4096), on the measured-fastest backend.
    ///
    /// # Errors
    /// [`XtsError::KeyLength`], [`XtsError::SectorSize`], [`XtsError::DuplicateKeyHalves`], or
    /// [`XtsError::Backend`] if the library could not set up the key.
    pub fn new(key: &[u8], sector_size: usize) -> Result<Self, XtsError> {
        Self::with_backend(key, sector_size, Backend::Auto)
    }

    /// As [`Xts::new`] on a chosen [`Backend`]. Every backend computes the same bytes.
    ///
    /// # Errors
    /// As [`Xts::new`].
    pub fn with_backend(
        key: &[u8],
        sector_size: usize,
        backend: Backend,
    ) -> Result<Self, XtsError> {
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
        let backend = match backend {
            // Measured (module docs): the bulk construction wins only where OpenSSL's
            // per-sector setup dominates, i.e. AES-128 on 512-byte sectors.
            Backend::Auto if key.len() == 32 && sector_size == 512 => Backend::BulkEcb,
            Backend::Auto => Backend::LibraryXts,
            b => b,
        };
        let key = Zeroizing::new(key.to_vec());
        // Build one worker now so that backend failures surface here, not mid-stream.
        let first = Worker::new(&key, backend)?;
        Ok(Self {
            key,
            sector_size,
            backend,
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

    /// The backend in use ([`Backend::Auto`] resolved).
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
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
        self.run(first_sector, None, buf, true);
    }

    /// Encrypts `src` into `dst` (same numbering as [`Xts::encrypt_sectors`]), without first
    /// copying the plaintext: the copy a caller would otherwise make is folded into the cipher.
    /// `dst`'s previous contents are ignored.
    ///
    /// # Panics
    /// If the lengths differ or are not a multiple of the sector size, or as
    /// [`Xts::encrypt_sectors`].
    pub fn encrypt_sectors_to(&self, first_sector: u64, src: &[u8], dst: &mut [u8]) {
        assert_eq!(
            src.len(),
            dst.len(),
            "XTS source and destination lengths differ"
        );
        self.run(first_sector, Some(src), dst, true);
    }

    /// Decrypts `buf` in place; the inverse of [`Xts::encrypt_sectors`] with the same sector
    /// numbering.
    ///
    /// # Panics
    /// As [`Xts::encrypt_sectors`].
    pub fn decrypt_sectors(&self, first_sector: u64, buf: &mut [u8]) {
        self.run(first_sector, None, buf, false);
    }

    fn run(&self, first_sector: u64, src: Option<&[u8]>, dst: &mut [u8], encrypt: bool) {
        assert!(
            dst.len().is_multiple_of(self.sector_size),
            "XTS buffer length {} is not a multiple of the sector size {}",
            dst.len(),
            self.sector_size
        );
        if dst.is_empty() {
            return;
        }
        let mut worker = match self.take_worker() {
            Ok(w) => w,
            Err(e) => panic!("{e}"),
        };
        if let Err(e) = worker.run(first_sector, self.sector_size, src, dst, encrypt) {
            panic!("{e}");
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
            None => Worker::new(&self.key, self.backend),
        }
    }
}

/// Cipher contexts for one thread at a time.
enum Worker {
    /// AWS-LC keeps separate encrypt and decrypt key schedules.
    AwsLc256 {
        enc: awslc::Ctx,
        dec: awslc::Ctx,
    },
    OpenSsl128 {
        enc: CipherCtx,
        dec: CipherCtx,
    },
    Bulk(Box<bulk::Bulk>),
}

impl Worker {
    fn new(key: &[u8], backend: Backend) -> Result<Self, XtsError> {
        if backend == Backend::BulkEcb {
            return Ok(Worker::Bulk(Box::new(bulk::Bulk::new(key)?)));
        }
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

    /// Processes whole sectors: `src` (or `dst` itself when `None`) into `dst`.
    fn run(
        &mut self,
        first_sector: u64,
        ss: usize,
        src: Option<&[u8]>,
        dst: &mut [u8],
        encrypt: bool,
    ) -> Result<(), XtsError> {
        match self {
            Worker::Bulk(b) => b.run(first_sector, ss, src, dst, encrypt),
            Worker::AwsLc256 { enc, dec } => {
                let ctx = if encrypt { enc } else { dec };
                let mut sector = first_sector;
                for (i, out) in dst.chunks_exact_mut(ss).enumerate() {
                    let input = src.and_then(|s| s.get(i * ss..(i + 1) * ss));
                    if !ctx.sector(&plain64(sector), input, out) {
                        return Err(XtsError::Backend {
                            backend: "aws-lc",
                            op: "process a sector",
                        });
                    }
                    sector = sector.wrapping_add(1);
                }
                Ok(())
            }
            Worker::OpenSsl128 { enc, dec } => {
                if let Some(s) = src {
                    dst.copy_from_slice(s);
                }
                let ctx = if encrypt { enc } else { dec };
                let fail = XtsError::Backend {
                    backend: "openssl",
                    op: "process a sector",
                };
                let err = |_: openssl::error::ErrorStack| fail.clone();
                let mut sector = first_sector;
                for data in dst.chunks_exact_mut(ss) {
                    let iv = plain64(sector);
                    // A new IV (key unchanged) starts a new XTS data unit.
                    if encrypt {
                        ctx.encrypt_init(None, None, Some(&iv)).map_err(err)?;
                    } else {
                        ctx.decrypt_init(None, None, Some(&iv)).map_err(err)?;
                    }
                    let n = ctx.cipher_update_inplace(data, ss).map_err(err)?;
                    if n != ss {
                        return Err(fail);
                    }
                    sector = sector.wrapping_add(1);
                }
                Ok(())
            }
        }
    }
}

/// The plain64 IV of a sector: its number as 64-bit little-endian, then eight zero bytes.
fn plain64(sector: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&sector.to_le_bytes());
    iv
}

/// XTS (IEEE 1619, no ciphertext stealing: sectors are whole blocks) over bulk AES-ECB.
///
/// For data unit (sector) `n` with blocks `P_j`: `T_0 = AES_K2(plain64(n))`,
/// `T_{j+1} = T_j · α` in GF(2^128) (little-endian: shift left by one, fold the carry out of
/// bit 127 back in as 0x87), `C_j = AES_K1(P_j ⊕ T_j) ⊕ T_j`. Decryption uses `AES⁻¹_K1` with
/// the same tweaks. Work is done in groups of [`bulk::GROUP`] bytes so that the tweaks and the
/// data stay in the L1/L2 cache between the three passes.
mod bulk {
    use openssl::cipher::Cipher;
    use openssl::cipher_ctx::CipherCtx;
    use zeroize::Zeroizing;

    use super::{XtsError, plain64};

    /// Bytes of data per group (a multiple of both sector sizes).
    pub(super) const GROUP: usize = 16 << 10;
    /// Most sectors in one group (512-byte sectors).
    const MAX_SECTORS: usize = GROUP / 512;

    pub(super) struct Bulk {
        /// `AES_K1` and `AES⁻¹_K1`, ECB without padding.
        data_enc: CipherCtx,
        data_dec: CipherCtx,
        /// `AES_K2`, ECB without padding.
        tweak: CipherCtx,
        /// The tweak of every block of the current group (key-derived: zeroized on drop).
        tweaks: Zeroizing<Vec<[u8; 16]>>,
        /// Plaintext ⊕ tweak for the current group (+16: OpenSSL's output-size rule).
        xored: Zeroizing<Vec<u8>>,
        /// plain64 IVs of the group's sectors, and their encryptions (+16 as above).
        ivs: Vec<u8>,
        enc_ivs: Zeroizing<Vec<u8>>,
    }

    fn ecb(key: &[u8], encrypt: bool) -> Result<CipherCtx, XtsError> {
        let err = |op| {
            move |_| XtsError::Backend {
                backend: "openssl",
                op,
            }
        };
        let cipher = if key.len() == 32 {
            Cipher::aes_256_ecb()
        } else {
            Cipher::aes_128_ecb()
        };
        let mut c = CipherCtx::new().map_err(err("allocate a cipher context"))?;
        if encrypt {
            c.encrypt_init(Some(cipher), Some(key), None)
        } else {
            c.decrypt_init(Some(cipher), Some(key), None)
        }
        .map_err(err("set an AES-ECB key"))?;
        c.set_padding(false);
        Ok(c)
    }

    fn fail() -> XtsError {
        XtsError::Backend {
            backend: "openssl",
            op: "run AES-ECB over a group of sectors",
        }
    }

    /// Sectors whose tweak chains are advanced side by side (independent dependency chains).
    const LANES: usize = 4;

    /// For every sector `s` of the group (first tweak `T_0` = `t0[s]`, encrypted) and block
    /// `j`: `tweaks[s, j] = T_j` and `xored[s, j] = plain[s, j] ⊕ T_j`.
    fn whiten(
        t0: &[u8],
        per_sector: usize,
        plain: &[u8],
        tweaks: &mut [[u8; 16]],
        xored: &mut [u8],
    ) {
        let (t0, _) = t0.as_chunks::<16>();
        let (p, _) = plain.as_chunks::<16>();
        let (x, _) = xored.as_chunks_mut::<16>();
        let mut s = 0;
        while s < t0.len() {
            let span = s * per_sector..;
            if s + LANES <= t0.len() {
                lanes::<LANES>(
                    &t0[s..],
                    per_sector,
                    &p[span.clone()],
                    &mut tweaks[span.clone()],
                    &mut x[span],
                );
                s += LANES;
            } else {
                lanes::<1>(
                    &t0[s..],
                    per_sector,
                    &p[span.clone()],
                    &mut tweaks[span.clone()],
                    &mut x[span],
                );
                s += 1;
            }
        }
    }

    /// [`whiten`] for `L` consecutive sectors, their chains kept in registers.
    #[inline(always)]
    fn lanes<const L: usize>(
        t0: &[[u8; 16]],
        per_sector: usize,
        p: &[[u8; 16]],
        tw: &mut [[u8; 16]],
        x: &mut [[u8; 16]],
    ) {
        let n = L * per_sector;
        let (t0, p, tw, x) = (&t0[..L], &p[..n], &mut tw[..n], &mut x[..n]);
        let mut t = [v::zero(); L];
        for (tl, b) in t.iter_mut().zip(t0) {
            *tl = v::load(b);
        }
        for j in 0..per_sector {
            for (l, tl) in t.iter_mut().enumerate() {
                let i = l * per_sector + j;
                v::store(&mut tw[i], *tl);
                v::store(&mut x[i], v::xor(v::load(&p[i]), *tl));
                *tl = v::mul_alpha(*tl);
            }
        }
    }

    /// `t · α` in GF(2^128) as IEEE 1619 defines it on the little-endian tweak: shift left by
    /// one bit, and fold the bit shifted out of bit 127 back in as 0x87.
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    #[inline(always)]
    pub(super) fn mul_alpha_u128(t: u128) -> u128 {
        (t << 1) ^ (0u128.wrapping_sub(t >> 127) & 0x87)
    }

    /// 128-bit block operations: SSE2 (baseline on x86-64) or plain `u128` elsewhere.
    #[cfg(target_arch = "x86_64")]
    pub(super) mod v {
        use std::arch::x86_64::{
            __m128i, _mm_and_si128, _mm_loadu_si128, _mm_set_epi32, _mm_setzero_si128,
            _mm_shuffle_epi32, _mm_slli_epi32, _mm_srai_epi32, _mm_storeu_si128, _mm_xor_si128,
        };

        pub(crate) type V = __m128i;

        #[inline(always)]
        pub(crate) fn zero() -> V {
            // SAFETY: SSE2 is part of the x86-64 baseline: these intrinsics are always available.
            unsafe { _mm_setzero_si128() }
        }

        #[inline(always)]
        pub(crate) fn load(b: &[u8; 16]) -> V {
            // SAFETY: `b` is 16 readable bytes; `_mm_loadu_si128` has no alignment requirement.
            unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
        }

        #[inline(always)]
        pub(crate) fn store(b: &mut [u8; 16], v: V) {
            // SAFETY: `b` is 16 writable bytes; `_mm_storeu_si128` has no alignment requirement.
            unsafe { _mm_storeu_si128(b.as_mut_ptr().cast(), v) }
        }

        #[inline(always)]
        pub(crate) fn xor(a: V, b: V) -> V {
            // SAFETY: SSE2 is part of the x86-64 baseline: these intrinsics are always available.
            unsafe { _mm_xor_si128(a, b) }
        }

        /// [`super::mul_alpha_u128`] on 32-bit lanes: each lane shifts left by one and takes
        /// the bit shifted out of the lane below (lane 0 takes bit 127 as 0x87).
        #[inline(always)]
        pub(crate) fn mul_alpha(t: V) -> V {
            // Lane k of `rot` is lane k-1 of `t` (lane 0 is lane 3): 0x93 = [3, 0, 1, 2].
            // SAFETY: SSE2 is part of the x86-64 baseline: these intrinsics are always available.
            unsafe {
                let rot = _mm_shuffle_epi32::<0x93>(t);
                let carries =
                    _mm_and_si128(_mm_srai_epi32::<31>(rot), _mm_set_epi32(1, 1, 1, 0x87));
                _mm_xor_si128(_mm_slli_epi32::<1>(t), carries)
            }
        }
    }

    /// 128-bit block operations: SSE2 (baseline on x86-64) or plain `u128` elsewhere.
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) mod v {
        pub(crate) type V = u128;

        #[inline(always)]
        pub(crate) fn zero() -> V {
            0
        }

        #[inline(always)]
        pub(crate) fn load(b: &[u8; 16]) -> V {
            u128::from_le_bytes(*b)
        }

        #[inline(always)]
        pub(crate) fn store(b: &mut [u8; 16], v: V) {
            *b = v.to_le_bytes();
        }

        #[inline(always)]
        pub(crate) fn xor(a: V, b: V) -> V {
            a ^ b
        }

        #[inline(always)]
        pub(crate) fn mul_alpha(t: V) -> V {
            super::mul_alpha_u128(t)
        }
    }

    impl Bulk {
        pub(super) fn new(key: &[u8]) -> Result<Self, XtsError> {
            let (k1, k2) = key.split_at(key.len() / 2);
            Ok(Bulk {
                data_enc: ecb(k1, true)?,
                data_dec: ecb(k1, false)?,
                tweak: ecb(k2, true)?,
                tweaks: Zeroizing::new(vec![[0u8; 16]; GROUP / 16]),
                xored: Zeroizing::new(vec![0u8; GROUP + 16]),
                ivs: vec![0u8; MAX_SECTORS * 16],
                enc_ivs: Zeroizing::new(vec![0u8; MAX_SECTORS * 16 + 16]),
            })
        }

        pub(super) fn run(
            &mut self,
            first_sector: u64,
            ss: usize,
            src: Option<&[u8]>,
            dst: &mut [u8],
            encrypt: bool,
        ) -> Result<(), XtsError> {
            let mut sector = first_sector;
            for (g, out) in dst.chunks_mut(GROUP).enumerate() {
                let input = src.and_then(|s| s.get(g * GROUP..g * GROUP + out.len()));
                self.group(sector, ss, input, out, encrypt)?;
                sector = sector.wrapping_add((out.len() / ss) as u64);
            }
            Ok(())
        }

        /// One group: `out.len()` is a multiple of `ss` and at most [`GROUP`].
        fn group(
            &mut self,
            first_sector: u64,
            ss: usize,
            input: Option<&[u8]>,
            out: &mut [u8],
            encrypt: bool,
        ) -> Result<(), XtsError> {
            let len = out.len();
            let sectors = len / ss;
            let per_sector = ss / 16;
            // T_0 of every sector: one ECB call over the group's IVs.
            let ivs = &mut self.ivs[..sectors * 16];
            for (i, iv) in ivs.chunks_exact_mut(16).enumerate() {
                iv.copy_from_slice(&plain64(first_sector.wrapping_add(i as u64)));
            }
            let n = self
                .tweak
                .cipher_update(ivs, Some(&mut self.enc_ivs[..sectors * 16 + 16]))
                .map_err(|_| fail())?;
            if n != sectors * 16 {
                return Err(fail());
            }
            // T_j and X_j = P_j ⊕ T_j of every block.
            let tweaks = &mut self.tweaks[..len / 16];
            let xored = &mut self.xored[..len];
            let plain: &[u8] = input.unwrap_or(out);
            whiten(
                &self.enc_ivs[..sectors * 16],
                per_sector,
                plain,
                tweaks,
                xored,
            );
            // Y = AES_K1(X) (or its inverse) straight into `out`.
            let ctx = if encrypt {
                &mut self.data_enc
            } else {
                &mut self.data_dec
            };
            // SAFETY: `cipher_update_unchecked` requires `out` to hold every byte OpenSSL
            // writes. The context is AES-ECB with padding disabled and `xored.len()` (= len) is
            // a multiple of 16 with no partial block buffered from an earlier call (every call
            // passes whole blocks), so EVP_CipherUpdate writes exactly `len` bytes, and `out`
            // is `len` bytes long. Input and output are distinct buffers.
            let n = unsafe { ctx.cipher_update_unchecked(xored, Some(out)) }.map_err(|_| fail())?;
            if n != len {
                return Err(fail());
            }
            // C_j = Y_j ⊕ T_j.
            let (c_blocks, _) = out.as_chunks_mut::<16>();
            for (c, tw) in c_blocks.iter_mut().zip(self.tweaks.iter()) {
                v::store(c, v::xor(v::load(c), v::load(tw)));
            }
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::{mul_alpha_u128, v};

        /// The block-operation `mul_alpha` agrees with the `u128` definition, including the
        /// carries across every 32-bit lane boundary and out of bit 127.
        #[test]
        fn mul_alpha_matches_the_u128_definition() {
            let mut t: u128 = 0x8000_0001_8000_0000_ffff_ffff_8000_0001;
            for i in 0..10_000u32 {
                let mut b = t.to_le_bytes();
                let m = v::mul_alpha(v::load(&b));
                v::store(&mut b, m);
                assert_eq!(
                    u128::from_le_bytes(b),
                    mul_alpha_u128(t),
                    "step {i} from {t:#x}"
                );
                t = mul_alpha_u128(t) ^ u128::from(i).rotate_left(i % 128);
            }
            assert_eq!(mul_alpha_u128(1u128 << 127), 0x87);
            assert_eq!(mul_alpha_u128(1u128 << 63), 1u128 << 64);
        }
    }
}

/// The only direct FFI in this crate: AWS-LC's EVP AES-256-XTS.
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

        /// Processes one data unit (one sector) with tweak `iv`: `input` (or `out` itself when
        /// `None`) into `out`. Returns false if AWS-LC reported an error.
        pub(super) fn sector(
            &mut self,
            iv: &[u8; 16],
            input: Option<&[u8]>,
            out: &mut [u8],
        ) -> bool {
            let len = out.len();
            let out_ptr = out.as_mut_ptr();
            let in_ptr = match input {
                Some(i) if i.len() == len => i.as_ptr(),
                Some(_) => return false,
                None => out_ptr.cast_const(),
            };
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
            // SAFETY: `out_ptr` is `out`, a valid, exclusively borrowed buffer of `len` bytes; `in_ptr`
            // points to `len` readable bytes, either a distinct shared borrow (`input`, whose
            // length was checked) or `out` itself, and AWS-LC's XTS supports exactly
            // overlapping in/out. `len` (a sector: 512 or 4096 bytes) is within XTS's 16-byte
            // minimum and 2^20-block maximum per data unit.
            let ok = unsafe { sys::EVP_Cipher(self.0.as_ptr(), out_ptr, in_ptr, len) };
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
