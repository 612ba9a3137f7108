//! Observers of the image bytes: hashers with their expected digests, and the size check.

use imgpipe_core::{Chunk, Error, ErrorKind, Finding, Observer, Result};
use imgpipe_crypto::hash::{self, Algorithm, Hasher};

/// Computes one digest over the image bytes and, when an expected value is given, checks it.
pub struct HashObserver {
    hasher: Hasher,
    expected: Option<(String, &'static str)>,
}

impl HashObserver {
    /// A hasher for `algo`; `expected` is `(hex, where the value came from)`.
    pub fn new(algo: Algorithm, expected: Option<(String, &'static str)>) -> Self {
        HashObserver {
            hasher: Hasher::new(algo),
            expected,
        }
    }
}

impl Observer for HashObserver {
    fn name(&self) -> String {
        format!("hash:{}", self.hasher.algorithm())
    }

    fn update(&mut self, chunk: &Chunk) -> Result<()> {
        self.hasher.update(&chunk.data);
        Ok(())
    }

    fn finish(self: Box<Self>, _total: u64) -> Result<Vec<Finding>> {
        let algo = self.hasher.algorithm();
        let digest = self.hasher.finish();
        let hex = hex_lower(&digest);
        let mut out = vec![Finding::Digest {
            algorithm: algo.name().into(),
            hex: hex.clone(),
        }];
        if let Some((want, origin)) = self.expected {
            if !hash::hex_eq(&want, &digest) {
                return Err(Error::check(
                    ErrorKind::DigestMismatch,
                    format!("digest.{algo}"),
                    format!(
                        "{algo} of the image bytes is {hex}, but {origin} says {}",
                        want.trim().to_ascii_lowercase()
                    ),
                ));
            }
            out.push(Finding::Passed {
                check: format!("digest.{algo}"),
            });
        }
        Ok(out)
    }
}

fn hex_lower(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

/// Checks the exact byte count; rejects as soon as the stream is longer than expected.
pub struct SizeObserver {
    expected: u64,
    seen: u64,
}

impl SizeObserver {
    /// Expect exactly `expected` bytes.
    pub fn new(expected: u64) -> Self {
        SizeObserver { expected, seen: 0 }
    }
}

impl Observer for SizeObserver {
    fn name(&self) -> String {
        "size".into()
    }

    fn update(&mut self, chunk: &Chunk) -> Result<()> {
        self.seen += chunk.data.len() as u64;
        if self.seen > self.expected {
            return Err(Error::check(
                ErrorKind::SizeMismatch,
                "size",
                format!(
                    "the image is longer than the expected {} bytes",
                    self.expected
                ),
            ));
        }
        Ok(())
    }

    fn finish(self: Box<Self>, total: u64) -> Result<Vec<Finding>> {
        if total != self.expected {
            return Err(Error::check(
                ErrorKind::SizeMismatch,
                "size",
                format!("the image has {total} bytes, expected {}", self.expected),
            ));
        }
        Ok(vec![Finding::Passed {
            check: "size".into(),
        }])
    }
}
