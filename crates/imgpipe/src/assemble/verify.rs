//! The observer role: the checks on the image bytes (hashers with their expected digests and
//! the signature, size checks, the inspector when nothing is written), and what a cache hit
//! adds to them or puts in their place.

use std::path::Path;

use imgpipe_core::{Error, ErrorKind, Observer, Result};
use imgpipe_crypto::hash::Algorithm;
use imgpipe_crypto::multihash::{self, HashPolicy, ImageRecord};
use imgpipe_crypto::signature::{
    CertificatePolicy, SignatureError, SignatureProperties, SignatureVerifier, load_certificates,
};
use imgpipe_format::inspect::{DEFAULT_MAX_VIRTUAL_SIZE, Inspector, Policy};
use imgpipe_io::barbican::BarbicanClient;
use imgpipe_spec::{SignatureSpec, SourceSpec, Spec};

use super::Stream;
use super::cache::HitChecks;
use crate::observers::{HashObserver, InspectObserver, SizeObserver};

/// The image-byte observers of a run and the warnings to report: the request's checks, plus a
/// cache hit's pins; on a raw hit, the cached disk's own check in their place (the request was
/// checked against the entry's sidecar before streaming).
pub(super) async fn observers(
    spec: &Spec,
    barbican_token: Option<&str>,
    hit: Option<HitChecks>,
    content_md5: Option<String>,
) -> Result<(Vec<Box<dyn Observer>>, Vec<String>)> {
    match hit {
        Some(HitChecks::RawDisk { check, .. }) => Ok((vec![check], Vec::new())),
        Some(HitChecks::Pins(pins)) => {
            verification_pinned(spec, barbican_token, Some(&pins), content_md5).await
        }
        None => verification_pinned(spec, barbican_token, None, content_md5).await,
    }
}

/// The inspector as an observer, for a run that writes nothing (with a sink, the disk stage
/// holds the inspector). A raw disk from the cache is not an image: nothing to inspect.
pub(super) fn inspect_observer(
    spec: &Spec,
    stream_len: Option<u64>,
    stream: Stream,
) -> Option<Box<dyn Observer>> {
    (!spec.inspect.skip && stream == Stream::Image).then(|| {
        Box::new(InspectObserver::new(inspector(spec, stream_len), true)) as Box<dyn Observer>
    })
}

fn multihash_error(e: multihash::MultihashError) -> Error {
    let kind = match e.check {
        "multihash.size" => ErrorKind::SizeMismatch,
        _ => ErrorKind::DigestMismatch,
    };
    Error::check(kind, e.check, e.message)
}

pub(super) fn signature_error(e: SignatureError) -> Error {
    let kind = if e.check.starts_with("certificate") {
        ErrorKind::Certificate
    } else {
        ErrorKind::BadSignature
    };
    Error::check(kind, e.check, e.message).with_stage("signature")
}

pub(super) fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("cannot read {what} {}", path.display()), e))
}

/// Certificates from files or directories (every file in a directory, not recursing).
fn load_cert_paths(paths: &[std::path::PathBuf]) -> Result<Vec<openssl::x509::X509>> {
    let mut out = Vec::new();
    for p in paths {
        let files: Vec<std::path::PathBuf> = if p.is_dir() {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .map_err(|e| Error::io(format!("cannot list {}", p.display()), e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file())
                .collect();
            v.sort();
            v
        } else {
            vec![p.clone()]
        };
        for f in files {
            let bytes = read_file(&f, "certificate")?;
            out.extend(load_certificates(&bytes).map_err(signature_error)?);
        }
    }
    Ok(out)
}

/// Every pre-stream signature check: properties, certificate (file or Barbican), trust chain.
pub(super) async fn signature_verifier(
    s: &SignatureSpec,
    warnings: &mut Vec<String>,
    default_token: Option<&str>,
) -> Result<SignatureVerifier> {
    let props = SignatureProperties {
        signature: s.signature.clone(),
        hash_method: s.hash_method.clone(),
        key_type: s.key_type.clone(),
        certificate_uuid: s.certificate_uuid.clone(),
    };
    let certs = match (&s.certificate, &s.certificate_uuid, &s.barbican) {
        (Some(path), _, _) => load_cert_paths(std::slice::from_ref(path))?,
        (None, Some(uuid), Some(b)) => {
            let token = match (&b.token_env, default_token) {
                (Some(var), _) => std::env::var(var).ok(),
                (None, Some(t)) => Some(t.to_string()),
                (None, None) => std::env::var("OS_AUTH_TOKEN").ok(),
            };
            BarbicanClient::new(&b.endpoint, token)?
                .fetch_certificate(uuid)
                .await?
        }
        _ => {
            return Err(Error::check(
                ErrorKind::Certificate,
                "certificate.missing",
                "no signing certificate: give certificate or certificate_uuid with barbican",
            ));
        }
    };
    let Some(cert) = certs.first() else {
        return Err(Error::check(
            ErrorKind::Certificate,
            "certificate.empty",
            "the signing certificate source holds no certificate",
        ));
    };
    // An empty list trusts nothing (the chain check then fails), as with cursive; only an
    // absent list leaves chain validation off.
    let trusted = match &s.trusted_certificates {
        None => {
            warnings.push(
                "no trusted_certificates: the signing certificate's chain was not validated \
                 (any certificate whose key verifies the signature is accepted)"
                    .into(),
            );
            None
        }
        Some(paths) => Some(load_cert_paths(paths)?),
    };
    let policy = CertificatePolicy {
        trusted,
        now: std::time::SystemTime::now(),
    };
    let v = SignatureVerifier::new(&props, cert, &policy).map_err(signature_error)?;
    warnings.extend(v.warnings().iter().cloned());
    Ok(v)
}

/// The image-byte observers a spec asks for: one hasher per algorithm (shared by expected
/// digests and the signature), the size check, and warnings to report.
pub async fn verification(spec: &Spec) -> Result<(Vec<Box<dyn Observer>>, Vec<String>)> {
    verification_with_token(spec, None).await
}

/// [`verification`], with the token to send to Barbican when the spec names no `token_env`
/// (the Glance token).
async fn verification_with_token(
    spec: &Spec,
    barbican_token: Option<&str>,
) -> Result<(Vec<Box<dyn Observer>>, Vec<String>)> {
    verification_pinned(spec, barbican_token, None, None).await
}

/// As [`verification_with_token`], plus a cache hit's sidecar pins: the pinned digest is
/// added to the hasher of its algorithm (computed anyway when the request asks for it, so a
/// hit costs no extra hashing), and the pinned size gets its own size check. Mismatches name
/// "the cache sidecar". The pins only add checks: the request's own rules (`require_hash`,
/// the "not verified" warning) are applied as on a miss.
///
/// `content_md5` is the Glance download's `Content-MD5` header (hex): glanceclient's last
/// resort, used only when the record has neither a usable `os_hash_value` nor a `checksum`.
async fn verification_pinned(
    spec: &Spec,
    barbican_token: Option<&str>,
    pins: Option<&imgpipe_cache::Pins>,
    content_md5: Option<String>,
) -> Result<(Vec<Box<dyn Observer>>, Vec<String>)> {
    let v = &spec.verify;
    let mut warnings = Vec::new();
    let mut hashers: Vec<HashObserver> = Vec::new();
    fn hasher(hs: &mut Vec<HashObserver>, a: Algorithm) -> &mut HashObserver {
        if let Some(i) = hs.iter().position(|h| h.algorithm() == a) {
            &mut hs[i]
        } else {
            hs.push(HashObserver::new(a));
            let n = hs.len() - 1;
            &mut hs[n]
        }
    }
    for (algo, hex) in &v.digests {
        hasher(&mut hashers, *algo).expect(hex, "the spec");
    }
    let glance = matches!(spec.source, SourceSpec::Glance(_));
    // A plain URL's Content-MD5 is always checked (check `digest.md5`); for Glance it is
    // glanceclient's last resort in the record's rules.
    let (content_md5, header_md5) = if glance {
        (content_md5, None)
    } else {
        (None, content_md5)
    };
    let record = ImageRecord {
        os_hash_algo: v.os_hash_algo.clone(),
        os_hash_value: v.os_hash_value.clone(),
        checksum: v.checksum.clone(),
        content_md5,
        size: v.size,
    };
    let has_record =
        record.os_hash_value.is_some() || record.checksum.is_some() || record.content_md5.is_some();
    let require = v.require_hash.unwrap_or(glance);
    if has_record || (require && v.digests.is_empty()) {
        let policy = HashPolicy {
            allow_md5_fallback: v.allow_md5_fallback,
            require_hash: require,
        };
        for e in multihash::select(&record, &policy).map_err(multihash_error)? {
            hasher(&mut hashers, e.algorithm).expect(&e.hex, e.origin);
        }
    }
    if let Some(s) = &v.signature {
        let verifier = signature_verifier(s, &mut warnings, barbican_token).await?;
        hasher(&mut hashers, verifier.hash_algorithm()).verify_signature(verifier);
    }
    for a in &v.report {
        hasher(&mut hashers, *a);
    }
    if hashers.is_empty() {
        // Nothing to check: still record a digest of what was read.
        hashers.push(HashObserver::new(Algorithm::Sha256));
        warnings.push(
            "no expected digest or signature was given: the image bytes were not verified".into(),
        );
    }
    if let Some(m) = header_md5 {
        hasher(&mut hashers, Algorithm::Md5).expect(&m, "the server's Content-MD5 header");
    }
    // The pins check the entry against its own sidecar: they fail as cache checks and are
    // not listed as passed (`cache.hit` is), never as `digest.*`/`size` (with no expectation
    // of the request's own, the image is unverified).
    if let Some(p) = pins {
        hasher(&mut hashers, p.digest.0).pin(
            &p.digest.1,
            "the cache sidecar",
            "cache.sidecar_digest",
        );
    }
    let mut observers: Vec<Box<dyn Observer>> = hashers
        .into_iter()
        .map(|h| Box::new(h) as Box<dyn Observer>)
        .collect();
    if let Some(size) = v.size {
        observers.push(Box::new(SizeObserver::new(size, "the spec")));
    }
    if let Some(p) = pins {
        observers.push(Box::new(SizeObserver::pin(
            p.size,
            "the cache sidecar",
            "cache.sidecar_size",
        )));
    }
    Ok((observers, warnings))
}

/// The inspector for a spec's policy.
pub fn inspector(spec: &Spec, stream_len: Option<u64>) -> Inspector {
    let i = &spec.inspect;
    Inspector::new(Policy {
        declared: i.disk_format,
        allowed: i.allowed_formats.clone(),
        max_virtual_size: i.max_virtual_size.unwrap_or(DEFAULT_MAX_VIRTUAL_SIZE),
    })
    .with_stream_len(stream_len)
}
