//! Glance multihash: which digest a download must be checked against.
//!
//! The rules are python-glanceclient's (`Controller.data`, v2), decided once before the first
//! byte is streamed:
//!
//! 1. `os_hash_value` present → hash with `os_hash_algo` and compare with it. An algorithm
//!    imgpipe does not implement is a hard error, unless [`HashPolicy::allow_md5_fallback`] is
//!    set; then selection continues with step 2.
//! 2. else the image record's `checksum` (MD5, hex);
//! 3. else the download response's `Content-MD5` header — Glance sends it as **hex**, not as
//!    RFC 1864 base64;
//! 4. else nothing can be verified. glanceclient then silently returns the data; imgpipe makes
//!    that an error ([`MultihashError`] with check `multihash.unverified`) unless
//!    [`HashPolicy::require_hash`] is turned off.
//!
//! Where imgpipe is stricter or more lenient than glanceclient (see `docs/signatures.md`):
//! expected values are validated (hex of the algorithm's length) before streaming and compared
//! case-insensitively; the image size recorded by Glance can be checked with [`verify_size`]
//! (glanceclient never checks it); hashlib algorithms imgpipe lacks (`sha3_*`, `blake2*`,
//! `shake_*`) count as unknown.
//!
//! ```
//! use imgpipe_crypto::hash::{self, Algorithm};
//! use imgpipe_crypto::multihash::{select, HashPolicy, ImageRecord};
//! let data = b"image bytes";
//! let record = ImageRecord {
//!     os_hash_algo: Some("sha512".into()),
//!     os_hash_value: Some(hash::Hasher::new(Algorithm::Sha512).finish_hex()),
//!     ..ImageRecord::default()
//! };
//! let expected = select(&record, &HashPolicy::default()).unwrap();
//! assert_eq!(expected.len(), 1);
//! assert_eq!(expected[0].algorithm, Algorithm::Sha512);
//! assert_eq!(expected[0].origin, "os_hash_value");
//! assert!(expected[0].verify(&hash::digest(Algorithm::Sha512, b"")).is_ok());
//! assert!(expected[0].verify(&hash::digest(Algorithm::Sha512, data)).is_err());
//! ```

use std::fmt;

use crate::hash::{self, Algorithm};

/// The hash-relevant fields of a Glance image record plus the download's `Content-MD5` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageRecord {
    /// `os_hash_algo` (a Python hashlib name, Glance default `sha512`).
    pub os_hash_algo: Option<String>,
    /// `os_hash_value` (hex digest of the stored bytes).
    pub os_hash_value: Option<String>,
    /// Legacy `checksum` (MD5 hex of the stored bytes).
    pub checksum: Option<String>,
    /// `Content-MD5` response header of `GET /v2/images/{id}/file` (hex, whole image).
    pub content_md5: Option<String>,
    /// `size` of the stored bytes.
    pub size: Option<u64>,
}

/// How strictly to select the expected digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashPolicy {
    /// Fall back to MD5 (`checksum`, then `Content-MD5`) when `os_hash_algo` is not implemented
    /// (glanceclient's `allow_md5_fallback`). Default `false`.
    pub allow_md5_fallback: bool,
    /// Refuse an image for which no digest at all is available. Default `true` (glanceclient
    /// silently accepts such data).
    pub require_hash: bool,
}

impl Default for HashPolicy {
    fn default() -> Self {
        HashPolicy {
            allow_md5_fallback: false,
            require_hash: true,
        }
    }
}

/// A digest the streamed bytes must match at end of stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedDigest {
    /// The algorithm the engine must compute over the stored image bytes.
    pub algorithm: Algorithm,
    /// Expected value, normalised to lowercase hex of exactly `algorithm.output_len()` bytes.
    pub hex: String,
    /// Where it came from: `"os_hash_value"`, `"checksum"` or `"Content-MD5"`.
    pub origin: &'static str,
}

impl ExpectedDigest {
    /// Compare the computed raw digest with the expected one (constant time).
    ///
    /// # Errors
    /// `multihash.mismatch` naming the origin, both values and the algorithm.
    pub fn verify(&self, computed: &[u8]) -> Result<(), MultihashError> {
        if hash::hex_eq(&self.hex, computed) {
            Ok(())
        } else {
            Err(MultihashError::new(
                "multihash.mismatch",
                format!(
                    "{} digest of the image is {} but {} says {}",
                    self.algorithm,
                    hex::encode(computed),
                    self.origin,
                    self.hex
                ),
            ))
        }
    }
}

/// Why a digest could not be selected or did not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultihashError {
    /// Stable id of the failed check: `multihash.unknown_algorithm`, `multihash.malformed_value`,
    /// `multihash.unverified`, `multihash.mismatch` or `multihash.size`.
    pub check: &'static str,
    /// What was wrong, the value seen and what was allowed.
    pub message: String,
}

impl MultihashError {
    fn new(check: &'static str, message: String) -> Self {
        MultihashError { check, message }
    }
}

impl fmt::Display for MultihashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.message)
    }
}

impl std::error::Error for MultihashError {}

/// Longest expected-value string accepted (SHA-512 hex is 128 characters; allow whitespace).
const MAX_VALUE_LEN: usize = 1024;

fn expected(
    algorithm: Algorithm,
    value: &str,
    origin: &'static str,
) -> Result<ExpectedDigest, MultihashError> {
    let want = algorithm.output_len() * 2;
    let shown: String = value.chars().take(160).collect();
    if value.len() > MAX_VALUE_LEN {
        return Err(MultihashError::new(
            "multihash.malformed_value",
            format!(
                "{origin} is {} characters long; a {algorithm} hex digest has {want}",
                value.len()
            ),
        ));
    }
    let trimmed = value.trim();
    if trimmed.len() != want || !trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(MultihashError::new(
            "multihash.malformed_value",
            format!(
                "{origin} {shown:?} is not a {algorithm} hex digest ({want} hex digits expected)"
            ),
        ));
    }
    Ok(ExpectedDigest {
        algorithm,
        hex: trimmed.to_ascii_lowercase(),
        origin,
    })
}

/// Map a Python hashlib name (as Glance stores it in `os_hash_algo`) to an implemented
/// algorithm. hashlib (OpenSSL) names are case-insensitive; `sha-512` style names are
/// accepted by OpenSSL too. Returns `None` for anything imgpipe does not implement.
pub fn hashlib_algorithm(name: &str) -> Option<Algorithm> {
    let lower = name.to_ascii_lowercase();
    let canonical = match lower.as_str() {
        "sha-1" => "sha1",
        "sha-224" => "sha224",
        "sha-256" => "sha256",
        "sha-384" => "sha384",
        "sha-512" => "sha512",
        other => other,
    };
    Algorithm::ALL
        .iter()
        .copied()
        // hashlib has no blake3; a record naming it was not written by Glance's hashlib.
        .filter(|a| *a != Algorithm::Blake3)
        .find(|a| a.name() == canonical)
}

/// Decide which digest(s) the download must match, following glanceclient's order.
///
/// Returns the digests to compute (at most one with these rules; empty only when nothing is
/// available and `policy.require_hash` is off).
///
/// # Errors
/// - `multihash.unknown_algorithm`: `os_hash_value` is set but `os_hash_algo` is missing or
///   not implemented, and MD5 fallback is not allowed;
/// - `multihash.malformed_value`: the selected expected value is not hex of the right length
///   (glanceclient would only fail at end of stream; the verdict is the same);
/// - `multihash.unverified`: nothing to verify against and `policy.require_hash` is on.
pub fn select(
    record: &ImageRecord,
    policy: &HashPolicy,
) -> Result<Vec<ExpectedDigest>, MultihashError> {
    if let Some(value) = &record.os_hash_value {
        match record.os_hash_algo.as_deref().and_then(hashlib_algorithm) {
            Some(algo) => return Ok(vec![expected(algo, value, "os_hash_value")?]),
            None if policy.allow_md5_fallback => {}
            None => {
                return Err(MultihashError::new(
                    "multihash.unknown_algorithm",
                    format!(
                        "os_hash_algo {:?} is not implemented (supported: md5 sha1 sha224 \
                         sha256 sha384 sha512) and MD5 fallback is not allowed",
                        record.os_hash_algo.as_deref().unwrap_or("<absent>")
                    ),
                ));
            }
        }
    }
    if let Some(value) = &record.checksum {
        return Ok(vec![expected(Algorithm::Md5, value, "checksum")?]);
    }
    if let Some(value) = &record.content_md5 {
        return Ok(vec![expected(Algorithm::Md5, value, "Content-MD5")?]);
    }
    if policy.require_hash {
        Err(MultihashError::new(
            "multihash.unverified",
            "the image has no os_hash_value (with an implemented os_hash_algo), no checksum \
             and the download no Content-MD5: its integrity cannot be verified, and the \
             policy requires a hash"
                .to_string(),
        ))
    } else {
        Ok(Vec::new())
    }
}

/// Check the number of bytes streamed against the record's `size` (a no-op when Glance did
/// not report one).
///
/// # Errors
/// `multihash.size` with both values.
pub fn verify_size(record: &ImageRecord, streamed: u64) -> Result<(), MultihashError> {
    match record.size {
        Some(size) if size != streamed => Err(MultihashError::new(
            "multihash.size",
            format!("the image record says size {size} but {streamed} bytes were received"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hashlib_names() {
        assert_eq!(hashlib_algorithm("SHA512"), Some(Algorithm::Sha512));
        assert_eq!(hashlib_algorithm("sha-256"), Some(Algorithm::Sha256));
        assert_eq!(hashlib_algorithm("md5"), Some(Algorithm::Md5));
        assert_eq!(hashlib_algorithm("sha3_512"), None);
        assert_eq!(hashlib_algorithm("blake3"), None);
        assert_eq!(hashlib_algorithm(""), None);
    }

    #[test]
    fn size_check() {
        let r = ImageRecord {
            size: Some(10),
            ..Default::default()
        };
        assert!(verify_size(&r, 10).is_ok());
        assert_eq!(verify_size(&r, 11).unwrap_err().check, "multihash.size");
        assert!(verify_size(&ImageRecord::default(), 11).is_ok());
    }
}
