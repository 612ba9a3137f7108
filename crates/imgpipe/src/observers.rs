//! Observers of the image bytes: hashers (with expected digests and an optional signature
//! verifier sharing the same digest), the size check, and the inspector when nothing is written.

use std::sync::{Arc, Mutex};

use imgpipe_core::{Chunk, Error, ErrorKind, Finding, Observer, Result};
use imgpipe_crypto::hash::{self, Algorithm, Hasher};
use imgpipe_crypto::signature::SignatureVerifier;
use imgpipe_format::inspect::{Inspector, Verdict};

use crate::verdict::verdict_error;

/// Computes one digest over the image bytes; checks every expected value for that algorithm
/// and, when given, the image signature over the same digest (no second hashing pass).
pub struct HashObserver {
    hasher: Hasher,
    /// (hex, origin, check name, listed among the passed checks).
    expected: Vec<(String, String, String, bool)>,
    signature: Option<SignatureVerifier>,
}

impl HashObserver {
    /// A hasher for `algo` with no expectations (report only).
    pub fn new(algo: Algorithm) -> Self {
        HashObserver {
            hasher: Hasher::new(algo),
            expected: vec![],
            signature: None,
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.hasher.algorithm()
    }

    /// Also require the digest to equal `hex` (`origin` says where the value came from).
    pub fn expect(&mut self, hex: &str, origin: &str) {
        let check = format!("digest.{}", self.hasher.algorithm());
        self.expected.push((
            hex.trim().to_ascii_lowercase(),
            origin.to_string(),
            check,
            true,
        ));
    }

    /// Require the digest to equal `hex` as an integrity pin, not a verification of the
    /// image: a mismatch fails with check `check`, a match is not listed among the passed
    /// checks (a cache hit's sidecar pin, `cache.sidecar_digest`: with no expectation of the
    /// request's own, the image is as unverified as on the fill; `cache.hit` says the entry
    /// matched).
    pub fn pin(&mut self, hex: &str, origin: &str, check: &str) {
        self.expected.push((
            hex.trim().to_ascii_lowercase(),
            origin.to_string(),
            check.to_string(),
            false,
        ));
    }

    /// Also verify the image signature over this digest.
    pub fn verify_signature(&mut self, v: SignatureVerifier) {
        self.signature = Some(v);
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
        let hex = hex::encode(&digest);
        let mut out = vec![Finding::Digest {
            algorithm: algo.name().into(),
            hex: hex.clone(),
        }];
        for (want, origin, check, listed) in &self.expected {
            if !hash::hex_eq(want, &digest) {
                return Err(Error::check(
                    ErrorKind::DigestMismatch,
                    check.clone(),
                    format!("{algo} of the image bytes is {hex}, but {origin} says {want}"),
                ));
            }
            if *listed {
                out.push(Finding::Passed {
                    check: check.clone(),
                });
            }
        }
        if let Some(v) = &self.signature {
            v.verify_digest(&digest).map_err(|e| {
                Error::check(
                    ErrorKind::BadSignature,
                    e.check,
                    format!(
                        "image signature ({algo} digest) does not verify: {}",
                        e.message
                    ),
                )
            })?;
            out.push(Finding::Passed {
                check: "signature".into(),
            });
        }
        Ok(out)
    }
}

/// Checks the exact byte count; rejects as soon as the stream is longer than expected.
pub struct SizeObserver {
    expected: u64,
    seen: u64,
    origin: String,
    check: String,
    listed: bool,
}

impl SizeObserver {
    /// Expect exactly `expected` bytes (`origin`: where the value came from).
    pub fn new(expected: u64, origin: &str) -> Self {
        SizeObserver {
            expected,
            seen: 0,
            origin: origin.to_string(),
            check: "size".into(),
            listed: true,
        }
    }

    /// An integrity pin (a cache hit's sidecar size, `cache.sidecar_size`): a mismatch fails
    /// with check `check`, a match is not listed among the passed checks (see
    /// [`HashObserver::pin`]).
    pub fn pin(expected: u64, origin: &str, check: &str) -> Self {
        SizeObserver {
            check: check.to_string(),
            listed: false,
            ..SizeObserver::new(expected, origin)
        }
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
                self.check.clone(),
                format!(
                    "the image is longer than the {} bytes {} says",
                    self.expected, self.origin
                ),
            ));
        }
        Ok(())
    }

    fn finish(self: Box<Self>, total: u64) -> Result<Vec<Finding>> {
        if total != self.expected {
            return Err(Error::check(
                ErrorKind::SizeMismatch,
                self.check.clone(),
                format!(
                    "the image has {total} bytes, but {} says {}",
                    self.origin, self.expected
                ),
            ));
        }
        Ok(if self.listed {
            vec![Finding::Passed { check: self.check }]
        } else {
            vec![]
        })
    }
}

/// Runs the inspector over the image bytes when nothing is written (verify-only runs and
/// `imgpipe inspect`). Rejects as soon as a provisional verdict has a violation.
pub struct InspectObserver {
    inspector: Option<Inspector>,
    /// The final verdict, for callers that want all of it.
    pub verdict: Arc<Mutex<Option<Verdict>>>,
    reject: bool,
}

impl InspectObserver {
    /// Inspect with `inspector`; `reject` = fail the run on a violation (else only record).
    pub fn new(inspector: Inspector, reject: bool) -> Self {
        InspectObserver {
            inspector: Some(inspector),
            verdict: Arc::new(Mutex::new(None)),
            reject,
        }
    }
}

impl Observer for InspectObserver {
    fn name(&self) -> String {
        "inspect".into()
    }

    fn update(&mut self, chunk: &Chunk) -> Result<()> {
        if let Some(i) = self.inspector.as_mut() {
            i.feed(&chunk.data);
            if self.reject
                && let Some(v) = i.provisional()
                && !v.is_safe()
            {
                return Err(verdict_error(v));
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, _total: u64) -> Result<Vec<Finding>> {
        let Some(i) = self.inspector.take() else {
            return Ok(vec![]);
        };
        let v = i.finish();
        let finding = Finding::Format {
            format: v.format.name().into(),
            virtual_size: v.virtual_size,
        };
        let err = (!v.is_safe()).then(|| verdict_error(&v));
        if let Ok(mut slot) = self.verdict.lock() {
            *slot = Some(v);
        }
        match err {
            Some(e) if self.reject => Err(e),
            _ => Ok(vec![finding]),
        }
    }
}
