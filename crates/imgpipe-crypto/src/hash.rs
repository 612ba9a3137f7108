//! Streaming hashers: md5, sha1, sha224, sha256, sha384, sha512 and blake3.
//!
//! Implementation choice (measured, see `docs/PERFORMANCE.md`): OpenSSL's assembly for the MD5
//! and SHA families (fastest SHA-512 on x86-64 without SHA-512 instructions; SHA-NI for SHA-1/256)
//! and the `blake3` crate (AVX-512) for BLAKE3.

use std::fmt;
use std::str::FromStr;

use openssl::hash::{Hasher as OsslHasher, MessageDigest};

/// A hash algorithm imgpipe can compute over a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// MD5 (Glance's legacy `checksum`).
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512 (Glance's default `os_hash_algo`).
    Sha512,
    /// BLAKE3 (256-bit output).
    Blake3,
}

impl Algorithm {
    /// Every algorithm, in a stable order.
    pub const ALL: [Algorithm; 7] = [
        Algorithm::Md5,
        Algorithm::Sha1,
        Algorithm::Sha224,
        Algorithm::Sha256,
        Algorithm::Sha384,
        Algorithm::Sha512,
        Algorithm::Blake3,
    ];

    /// The lowercase name, as Python's hashlib (and so Glance's `os_hash_algo`) spells it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha224 => "sha224",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
            Algorithm::Blake3 => "blake3",
        }
    }

    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
            Algorithm::Sha224 => 28,
            Algorithm::Sha256 => 32,
            Algorithm::Sha384 => 48,
            Algorithm::Sha512 => 64,
            Algorithm::Blake3 => 32,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A hash algorithm name imgpipe does not implement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hash algorithm {0:?} (supported: md5 sha1 sha224 sha256 sha384 sha512 blake3)")]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase().replace(['-', '_'], "");
        Algorithm::ALL
            .iter()
            .copied()
            .find(|a| a.name() == lower)
            .ok_or_else(|| UnknownAlgorithm(s.to_string()))
    }
}

enum Inner {
    Ossl(OsslHasher),
    Blake3(Box<blake3::Hasher>),
}

/// An incremental hasher: `update` any number of times, then consume with `finish`.
pub struct Hasher {
    algo: Algorithm,
    inner: Inner,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher").field("algo", &self.algo).finish()
    }
}

impl Hasher {
    /// A fresh hasher for `algo`.
    ///
    /// # Panics
    /// Only if the linked OpenSSL lacks a standard digest (MD5/SHA-1/SHA-2), which would be a
    /// broken installation rather than a runtime condition.
    pub fn new(algo: Algorithm) -> Self {
        let md = match algo {
            Algorithm::Md5 => MessageDigest::md5(),
            Algorithm::Sha1 => MessageDigest::sha1(),
            Algorithm::Sha224 => MessageDigest::sha224(),
            Algorithm::Sha256 => MessageDigest::sha256(),
            Algorithm::Sha384 => MessageDigest::sha384(),
            Algorithm::Sha512 => MessageDigest::sha512(),
            Algorithm::Blake3 => {
                return Hasher {
                    algo,
                    inner: Inner::Blake3(Box::default()),
                };
            }
        };
        #[allow(clippy::expect_used)]
        let h = OsslHasher::new(md).expect("OpenSSL provides MD5, SHA-1 and SHA-2");
        Hasher {
            algo,
            inner: Inner::Ossl(h),
        }
    }

    /// Which algorithm this hasher computes.
    pub fn algorithm(&self) -> Algorithm {
        self.algo
    }

    /// Feed more bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.inner {
            #[allow(clippy::expect_used)]
            Inner::Ossl(h) => h.update(data).expect("digest update cannot fail"),
            Inner::Blake3(h) => {
                // Large updates use blake3's SIMD tree hashing; it is deterministic in the input.
                h.update(data);
            }
        }
    }

    /// Finish and return the raw digest.
    pub fn finish(self) -> Vec<u8> {
        match self.inner {
            #[allow(clippy::expect_used)]
            Inner::Ossl(mut h) => h.finish().expect("digest finish cannot fail").to_vec(),
            Inner::Blake3(h) => h.finalize().as_bytes().to_vec(),
        }
    }

    /// Finish and return the digest as lowercase hex.
    pub fn finish_hex(self) -> String {
        hex::encode(self.finish())
    }
}

/// One-shot digest of a byte slice.
pub fn digest(algo: Algorithm, data: &[u8]) -> Vec<u8> {
    let mut h = Hasher::new(algo);
    h.update(data);
    h.finish()
}

/// Compare an expected hex digest (any case, surrounding whitespace ignored) with a computed one.
pub fn hex_eq(expected: &str, actual: &[u8]) -> bool {
    let e = expected.trim();
    e.len() == actual.len() * 2 && hex::decode(e).is_ok_and(|d| openssl::memcmp::eq(&d, actual))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers for "abc" (FIPS 180-4 examples, RFC 1321, BLAKE3 reference).
    const ABC: &[(Algorithm, &str)] = &[
        (Algorithm::Md5, "900150983cd24fb0d6963f7d28e17f72"),
        (Algorithm::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d"),
        (
            Algorithm::Sha224,
            "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7",
        ),
        (
            Algorithm::Sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            Algorithm::Sha384,
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7",
        ),
        (
            Algorithm::Sha512,
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        ),
        (
            Algorithm::Blake3,
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85",
        ),
    ];

    #[test]
    fn known_answers() {
        for (algo, want) in ABC {
            let mut h = Hasher::new(*algo);
            h.update(b"a");
            h.update(b"");
            h.update(b"bc");
            assert_eq!(h.finish_hex(), *want, "{algo}");
            assert_eq!(digest(*algo, b"abc").len(), algo.output_len());
        }
    }

    #[test]
    fn chunking_invariance() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for algo in Algorithm::ALL {
            let whole = digest(algo, &data);
            for size in [1usize, 7, 4096, 65536] {
                let mut h = Hasher::new(algo);
                for c in data.chunks(size) {
                    h.update(c);
                }
                assert_eq!(h.finish(), whole, "{algo} at chunk size {size}");
            }
        }
    }

    #[test]
    fn names_parse() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>(), Ok(a));
        }
        assert_eq!("SHA-512".parse::<Algorithm>(), Ok(Algorithm::Sha512));
        assert!("whirlpool".parse::<Algorithm>().is_err());
    }

    #[test]
    fn hex_comparison() {
        let d = digest(Algorithm::Md5, b"abc");
        assert!(hex_eq("900150983CD24FB0D6963F7D28E17F72", &d));
        assert!(hex_eq(" 900150983cd24fb0d6963f7d28e17f72\n", &d));
        assert!(!hex_eq("900150983cd24fb0d6963f7d28e17f73", &d));
        assert!(!hex_eq("900150983cd24fb0d6963f7d28e17f", &d));
        assert!(!hex_eq("zz", &d));
    }
}
