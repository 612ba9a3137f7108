//! AES-XTS-plain64 throughput: the chosen backend ([`Xts`]) against the candidates it was
//! chosen over. Each iteration encrypts 1 MiB in place as 512-byte (or 4096-byte) sectors.
//!
//! ```text
//! flock "$BENCH_LOCK" cargo bench -p imgpipe-crypto --bench xts
//! ```
//! Divide the reported time by 1 048 576 for ns/byte. Times are the benchmark thread's **CPU
//! time** (`CLOCK_THREAD_CPUTIME_ID`), not wall time, so that other load on a shared machine
//! does not inflate them. Key setup is outside the timed loop; the per-sector tweak (IV) setup
//! is inside, as it is in real use.
#![allow(clippy::unwrap_used, missing_docs)]

use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use imgpipe_crypto::xts::{Backend, Xts};
use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use std::hint::black_box;
use std::time::Duration;

/// CPU time consumed so far by the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always supported
    // on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Criterion `iter_custom` body timing `f` in thread CPU time.
fn cpu_timed(iters: u64, mut f: impl FnMut()) -> Duration {
    let t0 = thread_cpu();
    for _ in 0..iters {
        f();
    }
    thread_cpu() - t0
}

const LEN: usize = 1 << 20;

fn key(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(11))
        .collect()
}

/// Candidate: the `openssl` crate's safe `CipherCtx`, key set once, IV reset per sector.
struct OpensslCtx(CipherCtx);

impl OpensslCtx {
    fn new(key: &[u8]) -> Self {
        let cipher = if key.len() == 64 {
            Cipher::aes_256_xts()
        } else {
            Cipher::aes_128_xts()
        };
        let mut c = CipherCtx::new().unwrap();
        c.encrypt_init(Some(cipher), Some(key), None).unwrap();
        Self(c)
    }
    fn encrypt(&mut self, first: u64, buf: &mut [u8], ss: usize) {
        for (i, s) in buf.chunks_exact_mut(ss).enumerate() {
            let mut iv = [0u8; 16];
            iv[..8].copy_from_slice(&(first + i as u64).to_le_bytes());
            self.0.encrypt_init(None, None, Some(&iv)).unwrap();
            self.0.cipher_update_inplace(s, ss).unwrap();
        }
    }
}

/// Candidate: `openssl::symm::Crypter` created per sector (the simple, slow way).
fn openssl_crypter(key: &[u8], first: u64, buf: &mut [u8], ss: usize) {
    let mut out = vec![0u8; ss + 16];
    for (i, s) in buf.chunks_exact_mut(ss).enumerate() {
        let mut iv = [0u8; 16];
        iv[..8].copy_from_slice(&(first + i as u64).to_le_bytes());
        let mut c = openssl::symm::Crypter::new(
            openssl::symm::Cipher::aes_256_xts(),
            openssl::symm::Mode::Encrypt,
            key,
            Some(&iv),
        )
        .unwrap();
        let n = c.update(s, &mut out).unwrap();
        s.copy_from_slice(&out[..n]);
    }
}

/// Candidate: XTS written over RustCrypto `aes` (runtime AES-NI/VAES), all blocks of a sector
/// through one `encrypt_blocks` call. No unsafe.
struct SoftXts<C> {
    k1: C,
    k2: C,
}

impl<C: BlockCipherEncrypt<BlockSize = aes::cipher::consts::U16> + KeyInit> SoftXts<C> {
    fn new(key: &[u8]) -> Self {
        let (a, b) = key.split_at(key.len() / 2);
        Self {
            k1: C::new_from_slice(a).unwrap(),
            k2: C::new_from_slice(b).unwrap(),
        }
    }
    fn encrypt(&self, first: u64, buf: &mut [u8], ss: usize) {
        let mut tweaks = vec![0u128; ss / 16];
        for (i, s) in buf.chunks_exact_mut(ss).enumerate() {
            let mut t = Array::from([0u8; 16]);
            t[..8].copy_from_slice(&(first + i as u64).to_le_bytes());
            self.k2.encrypt_block(&mut t);
            let mut t = u128::from_le_bytes(t.into());
            for tw in tweaks.iter_mut() {
                *tw = t;
                t = (t << 1) ^ ((t >> 127) * 0x87);
            }
            let (blocks, _) = Array::<u8, aes::cipher::consts::U16>::slice_as_chunks_mut(s);
            for (b, tw) in blocks.iter_mut().zip(&tweaks) {
                let v = u128::from_le_bytes((*b).into()) ^ tw;
                *b = Array::from(v.to_le_bytes());
            }
            self.k1.encrypt_blocks(blocks);
            for (b, tw) in blocks.iter_mut().zip(&tweaks) {
                let v = u128::from_le_bytes((*b).into()) ^ tw;
                *b = Array::from(v.to_le_bytes());
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("xts_encrypt_1MiB");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(30);
    let mut buf = vec![0x5au8; LEN];
    let src = vec![0xa5u8; LEN];

    for (klen, ss) in [(64usize, 512usize), (64, 4096), (32, 512), (32, 4096)] {
        let k = key(klen);
        let id = |name: &str| BenchmarkId::new(name, format!("key{}_sector{ss}", klen * 8));

        for (name, backend) in [
            ("imgpipe_Xts", Backend::Auto),
            ("Xts_library_xts", Backend::LibraryXts),
            ("Xts_bulk_ecb", Backend::BulkEcb),
        ] {
            let xts = Xts::with_backend(&k, ss, backend).unwrap();
            g.bench_function(id(name), |b| {
                b.iter_custom(|n| {
                    cpu_timed(n, || xts.encrypt_sectors(black_box(0), black_box(&mut buf)))
                })
            });
            // What the disk stage does with a shared input chunk: copy, then encrypt in place,
            // against encrypting straight from the input into the output buffer.
            g.bench_function(id(&format!("{name}_copy_then_inplace")), |b| {
                b.iter_custom(|n| {
                    cpu_timed(n, || {
                        buf.copy_from_slice(black_box(&src));
                        xts.encrypt_sectors(black_box(0), black_box(&mut buf))
                    })
                })
            });
            g.bench_function(id(&format!("{name}_to")), |b| {
                b.iter_custom(|n| {
                    cpu_timed(n, || {
                        xts.encrypt_sectors_to(black_box(0), black_box(&src), black_box(&mut buf))
                    })
                })
            });
        }

        let mut o = OpensslCtx::new(&k);
        g.bench_function(id("openssl_ctx_iv_reset"), |b| {
            b.iter_custom(|n| cpu_timed(n, || o.encrypt(black_box(0), black_box(&mut buf), ss)))
        });

        if klen == 64 {
            let s = SoftXts::<aes::Aes256>::new(&k);
            g.bench_function(id("rustcrypto_aes_handwritten"), |b| {
                b.iter_custom(|n| cpu_timed(n, || s.encrypt(black_box(0), black_box(&mut buf), ss)))
            });
            if ss == 512 {
                g.bench_function(id("openssl_crypter_per_sector"), |b| {
                    b.iter_custom(|n| {
                        cpu_timed(n, || {
                            openssl_crypter(&k, black_box(0), black_box(&mut buf), ss)
                        })
                    })
                });
            }
        } else {
            let s = SoftXts::<aes::Aes128>::new(&k);
            g.bench_function(id("rustcrypto_aes_handwritten"), |b| {
                b.iter_custom(|n| cpu_timed(n, || s.encrypt(black_box(0), black_box(&mut buf), ss)))
            });
        }
    }
    g.finish();
}

/// Cross-check outside the timing: every candidate computes the same ciphertext as [`Xts`].
fn agree(_: &mut Criterion) {
    for klen in [32usize, 64] {
        let k = key(klen);
        let mut a = vec![7u8; 8192];
        let mut b = a.clone();
        Xts::new(&k, 512).unwrap().encrypt_sectors(5, &mut a);
        if klen == 64 {
            SoftXts::<aes::Aes256>::new(&k).encrypt(5, &mut b, 512);
        } else {
            SoftXts::<aes::Aes128>::new(&k).encrypt(5, &mut b, 512);
        }
        assert_eq!(a, b, "hand-written XTS disagrees ({klen}-byte key)");
        let mut o = vec![7u8; 8192];
        OpensslCtx::new(&k).encrypt(5, &mut o, 512);
        assert_eq!(a, o, "openssl ctx disagrees ({klen}-byte key)");
        for backend in [Backend::LibraryXts, Backend::BulkEcb] {
            let mut x = vec![7u8; 8192];
            Xts::with_backend(&k, 512, backend)
                .unwrap()
                .encrypt_sectors(5, &mut x);
            assert_eq!(a, x, "{backend:?} disagrees ({klen}-byte key)");
        }
    }
}

criterion_group!(benches, agree, bench);
criterion_main!(benches);
