//! The sidecar: what was verified when an entry was filled, written atomically next to the
//! data. Its presence is the commit point of an entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use imgpipe_core::Finding;
use imgpipe_crypto::hash::{self, Algorithm};
use imgpipe_crypto::signature::load_certificates;
use imgpipe_spec::SignatureSpec;
use serde::{Deserialize, Serialize};

/// Sidecar schema version written by this build.
pub const SIDECAR_VERSION: u32 = 1;

/// The record stored as `<id>.json` beside `<id>.data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    /// Schema version ([`SIDECAR_VERSION`]).
    pub version: u32,
    /// Entry id (hex of the key's SHA-256).
    pub id: String,
    /// Human label of the key (`glance:<image id>`, URL, path); no credentials.
    pub label: String,
    /// The source description the fill read from.
    pub source: String,
    /// `"original"`: the data file holds the image bytes exactly as the source stored them;
    /// `"raw"`: the decoded disk (see [`crate::raw`]).
    pub mode: String,
    /// Byte count of the data file.
    pub size: u64,
    /// Format detected by the inspector during the fill, if it ran.
    pub format: Option<String>,
    /// Virtual disk size reported by the inspector.
    pub virtual_size: Option<u64>,
    /// Every digest of the image bytes computed during the fill (algorithm → lowercase hex).
    pub digests: BTreeMap<String, String>,
    /// Every check that passed during the fill (`digest.sha512`, `signature`, `size`, …).
    pub checks_passed: Vec<String>,
    /// Signature properties and certificates the fill was verified with.
    pub signature: Option<SignatureRecord>,
    /// When the entry was published (seconds since the Unix epoch).
    pub created_unix: u64,
    /// The imgpipe-cache version that wrote it.
    pub writer: String,
    /// Mode `raw`: the decoded disk's length and keyed digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<crate::raw::RawRecord>,
    /// Mode `raw`: keyed BLAKE3 of this record (with `mac` absent) under the cache key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// What the fill's signature check used (an audit record: every hit re-verifies with the
/// request's own signature settings and trusted list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureRecord {
    /// `img_signature` (base64).
    pub signature: String,
    /// `img_signature_hash_method`.
    pub hash_method: String,
    /// `img_signature_key_type`.
    pub key_type: String,
    /// `img_signature_certificate_uuid`.
    pub certificate_uuid: Option<String>,
    /// `"passed"` when the run's `signature` check passed, else `"not checked"`.
    pub verdict: String,
    /// SHA-256 of the signing certificate's DER, when it came from a file.
    pub certificate_sha256: Option<String>,
    /// SHA-256 of the DER of every trusted certificate the chain was checked against
    /// (empty: no trusted list, no chain validation).
    pub trusted_sha256: Vec<String>,
}

fn der_fingerprints(path: &Path) -> Vec<String> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        for c in load_certificates(&bytes).unwrap_or_default() {
            if let Ok(der) = c.to_der() {
                out.push(hex(&hash::digest(Algorithm::Sha256, &der)));
            }
        }
    }
    out
}

impl SignatureRecord {
    /// Record a spec's signature settings; `passed` says whether the run's signature check
    /// passed. Certificates given as files are fingerprinted (SHA-256 of DER); unreadable ones
    /// are left out (the run itself already loaded and checked them).
    pub fn from_spec(s: &SignatureSpec, passed: bool) -> Self {
        SignatureRecord {
            signature: s.signature.clone(),
            hash_method: s.hash_method.clone(),
            key_type: s.key_type.clone(),
            certificate_uuid: s.certificate_uuid.clone(),
            verdict: if passed { "passed" } else { "not checked" }.into(),
            certificate_sha256: s
                .certificate
                .as_deref()
                .and_then(|p| der_fingerprints(p).into_iter().next()),
            trusted_sha256: s
                .trusted_certificates
                .iter()
                .flatten()
                .flat_map(|p| der_fingerprints(p))
                .collect(),
        }
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

/// Algorithms strong enough to pin an entry's bytes (collision resistant).
pub fn is_strong(a: Algorithm) -> bool {
    matches!(
        a,
        Algorithm::Sha256 | Algorithm::Sha384 | Algorithm::Sha512 | Algorithm::Blake3
    )
}

impl Sidecar {
    /// Digests parsed into algorithms imgpipe implements (unknown names are skipped).
    pub fn known_digests(&self) -> Vec<(Algorithm, String)> {
        self.digests
            .iter()
            .filter_map(|(a, h)| Some((a.parse::<Algorithm>().ok()?, h.clone())))
            .collect()
    }

    /// The strong digests, cheapest first (blake3, sha256, sha384, sha512).
    pub fn strong_digests(&self) -> Vec<(Algorithm, String)> {
        let mut v: Vec<(Algorithm, String)> = self
            .known_digests()
            .into_iter()
            .filter(|(a, _)| is_strong(*a))
            .collect();
        v.sort_by_key(|(a, _)| match a {
            Algorithm::Blake3 => 0,
            Algorithm::Sha256 => 1,
            Algorithm::Sha384 => 2,
            _ => 3,
        });
        v
    }

    /// Fill in format, digests and passed checks from a run's findings.
    pub(crate) fn absorb(&mut self, findings: &[Finding]) {
        for f in findings {
            match f {
                Finding::Digest { algorithm, hex } => {
                    self.digests
                        .insert(algorithm.clone(), hex.to_ascii_lowercase());
                }
                Finding::Format {
                    format,
                    virtual_size,
                } => {
                    self.format = Some(format.clone());
                    self.virtual_size = *virtual_size;
                }
                Finding::Passed { check } => self.checks_passed.push(check.clone()),
                Finding::Warning { .. } => {}
            }
        }
    }
}
