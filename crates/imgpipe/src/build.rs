//! Spec → runnable pipeline: one `match` per stage role.

use std::path::Path;
use std::sync::Arc;

use imgpipe_core::{
    DiskStage, DriverOptions, Error, ErrorKind, Finding, Observer, Phase, Pipeline, Progress,
    Result, Sink, Source,
};
use imgpipe_crypto::hash::Algorithm;
use imgpipe_crypto::luks::{self, LuksParams, LuksVersion, Pbkdf};
use imgpipe_crypto::multihash::{self, HashPolicy, ImageRecord};
use imgpipe_crypto::signature::{
    CertificatePolicy, SignatureError, SignatureProperties, SignatureVerifier, load_certificates,
};
use imgpipe_crypto::xts::{self, Xts};
use imgpipe_format::decode::DecodeOptions;
use imgpipe_format::inspect::{DEFAULT_MAX_VIRTUAL_SIZE, Inspector, Policy};
use imgpipe_io::barbican::BarbicanClient;
use imgpipe_io::block::{BlockSink, BlockZeroes};
use imgpipe_io::glance::{GlanceClient, GlanceImage};
use imgpipe_io::keystone::PasswordAuth;
use imgpipe_io::lvm::{LvTarget, Lvm, LvmSink};
use imgpipe_io::{FileSink, FileZeroes, HttpOptions, HttpSource, ReaderSource};
use imgpipe_rbd::{RbdOptions, RbdSink, RbdZeroes};
use imgpipe_spec::{
    BarbicanSpec, ConvertFormat, EncryptFormat, EncryptSpec, GlanceSpec, SignatureSpec, SinkTarget,
    SourceSpec, Spec, ZeroPolicy,
};

use crate::disk::{DiskOptions, Encryptor, ImageToDisk};
use crate::observers::{HashObserver, InspectObserver, SizeObserver};
use crate::report::RunReport;

fn unsupported(what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!("{what} is not implemented yet in this build of imgpipe"),
    )
}

/// Open the source named by the spec.
pub async fn open_source(spec: &Spec) -> Result<Box<dyn Source>> {
    Ok(match &spec.source {
        SourceSpec::File(p) => Box::new(ReaderSource::open(p)?),
        SourceSpec::Stdin => Box::new(ReaderSource::stdin()?),
        SourceSpec::Http { url, headers } => Box::new(open_http(spec, url, headers).await?),
        SourceSpec::Glance(_) => {
            return Err(Error::new(
                ErrorKind::Internal,
                "a Glance source is opened by build() after its record is fetched",
            ));
        }
    })
}

/// A plain URL source, connected (its length and `Content-MD5` known).
async fn open_http(spec: &Spec, url: &str, headers: &[(String, String)]) -> Result<HttpSource> {
    let mut s = HttpSource::new(
        url,
        HttpOptions {
            headers: headers.to_vec(),
            ..http_options(spec)
        },
    )?;
    s.connect().await?;
    Ok(s)
}

fn http_options(spec: &Spec) -> HttpOptions {
    let v = &spec.verify;
    // Resuming without a validator may splice two versions of the image: allowed only when
    // the whole stream is checked against an expected digest or a signature (a Glance source
    // requires a hash unless the spec says otherwise).
    let digest_checked = !v.digests.is_empty()
        || v.os_hash_value.is_some()
        || v.checksum.is_some()
        || v.signature.is_some()
        || v.require_hash
            .unwrap_or(matches!(spec.source, SourceSpec::Glance(_)));
    HttpOptions {
        attempts: spec.retry.attempts,
        stall_timeout: spec.retry.stall_timeout,
        backoff: spec.retry.backoff,
        deadline: spec.retry.deadline,
        resume_without_validator: digest_checked,
        ..Default::default()
    }
}

/// A Glance source after its record was fetched: the client, the record, and the token (for
/// Barbican when it came from Keystone).
pub struct GlancePrepared {
    /// Client for the data.
    pub client: GlanceClient,
    /// The image record (active).
    pub image: GlanceImage,
    /// The spec with the record's declarations merged in.
    pub spec: Spec,
    /// The Glance token: also sent to Barbican unless `[verify.signature.barbican]` names
    /// its own `token_env`.
    pub token: Option<String>,
}

fn env_secret(var: &str, what: &str) -> Result<String> {
    std::env::var(var).map_err(|_| {
        Error::new(
            ErrorKind::Spec,
            format!("{what}: environment variable {var} is not set"),
        )
    })
}

/// Fetch the Glance record before streaming and merge it into the spec: the declared
/// `disk_format`, `size`, `os_hash_algo`/`os_hash_value`, `checksum` and the `img_signature*`
/// properties. Spec values win where given; a record value the spec contradicts is still
/// checked (never weakened) or refused up front.
pub async fn prepare_glance(spec: &Spec, g: &GlanceSpec) -> Result<GlancePrepared> {
    let opts = http_options(spec);
    let mut token = match &g.token_env {
        Some(var) => Some(env_secret(var, "[source.glance] token_env")?),
        None => None,
    };
    let mut key_manager: Option<String> = None;
    let client = match (&g.keystone, token.is_some()) {
        (Some(k), false) => {
            let auth = PasswordAuth {
                auth_url: k.auth_url.clone(),
                username: k.username.clone(),
                password: env_secret(&k.password_env, "[source.glance.keystone] password_env")?,
                project_name: k.project_name.clone(),
                user_domain_name: k.user_domain_name.clone(),
                project_domain_name: k.project_domain_name.clone(),
            };
            let (c, catalog, t) =
                GlanceClient::from_keystone(&auth, g.endpoint.as_deref(), opts).await?;
            key_manager = catalog
                .endpoint("key-manager", "public", None)
                .map(str::to_string);
            token = Some(t.into_string());
            c
        }
        _ => {
            let ep = g.endpoint.as_deref().ok_or_else(|| {
                Error::new(
                    ErrorKind::Spec,
                    "[source.glance] needs endpoint or keystone",
                )
            })?;
            GlanceClient::with_options(ep, token.clone(), opts)?
        }
    };
    let image = client.image(&g.image_id).await?;
    let mut eff = spec.clone();

    // Declared format: the record's unless the spec names one; a contradiction is refused.
    if let Some(df) = &image.disk_format {
        let declared: imgpipe_format::Format = df.parse().map_err(|_| {
            Error::check(
                ErrorKind::FormatMismatch,
                "glance.disk_format",
                format!(
                    "Glance image {} has disk_format {df:?}, which imgpipe cannot handle",
                    image.id
                ),
            )
        })?;
        match eff.inspect.disk_format {
            None => eff.inspect.disk_format = Some(declared),
            Some(f) if f != declared => {
                return Err(Error::check(
                    ErrorKind::FormatMismatch,
                    "glance.disk_format",
                    format!(
                        "the spec declares {} but Glance image {} has disk_format {df:?}",
                        f.name(),
                        image.id
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    // Size: checked at the end of the stream; a contradiction is refused now.
    match (eff.verify.size, image.size) {
        (None, s) => eff.verify.size = s,
        (Some(a), Some(b)) if a != b => {
            return Err(Error::check(
                ErrorKind::SizeMismatch,
                "glance.size",
                format!(
                    "the spec expects {a} bytes but Glance image {} has size {b}",
                    image.id
                ),
            ));
        }
        _ => {}
    }
    // Multihash: the record's unless the spec gives its own; then the record's is checked too.
    match (
        &eff.verify.os_hash_value,
        &image.os_hash_algo,
        &image.os_hash_value,
    ) {
        (None, a, v) => {
            eff.verify.os_hash_algo = a.clone();
            eff.verify.os_hash_value = v.clone();
        }
        (Some(_), Some(a), Some(v)) => {
            if let Ok(algo) = a.parse::<Algorithm>() {
                eff.verify.digests.push((algo, v.clone()));
            }
        }
        _ => {}
    }
    match (&eff.verify.checksum, &image.checksum) {
        (None, c) => eff.verify.checksum = c.clone(),
        (Some(mine), Some(c)) if mine != c => {
            eff.verify.digests.push((Algorithm::Md5, c.clone()));
        }
        _ => {}
    }
    // Signature: the record's properties fill a [verify.signature] that gives none; with no
    // [verify.signature] table, a signed image is still verified when a key manager is known.
    let barbican_default = || -> Option<BarbicanSpec> {
        key_manager.clone().map(|endpoint| BarbicanSpec {
            endpoint,
            token_env: None,
        })
    };
    let record_sig = image.signature()?;
    match (&mut eff.verify.signature, record_sig) {
        (Some(s), Some(r)) if s.signature.is_empty() => {
            s.signature = r.signature;
            s.hash_method = r.hash_method;
            s.key_type = r.key_type;
            if s.certificate.is_none() && s.certificate_uuid.is_none() {
                s.certificate_uuid = Some(r.certificate_uuid);
            }
            if s.barbican.is_none() {
                s.barbican = barbican_default();
            }
        }
        (Some(s), None) if s.signature.is_empty() => {
            return Err(Error::check(
                ErrorKind::BadSignature,
                "signature.missing",
                format!(
                    "[verify.signature] asks for a signature check but Glance image {} has no \
                     img_signature properties",
                    image.id
                ),
            ));
        }
        (None, Some(r)) => {
            eff.verify.signature = Some(SignatureSpec {
                signature: r.signature,
                hash_method: r.hash_method,
                key_type: r.key_type,
                certificate_uuid: Some(r.certificate_uuid),
                barbican: barbican_default(),
                ..Default::default()
            });
        }
        _ => {}
    }
    Ok(GlancePrepared {
        client,
        image,
        spec: eff,
        token,
    })
}

fn multihash_error(e: multihash::MultihashError) -> Error {
    let kind = match e.check {
        "multihash.size" => ErrorKind::SizeMismatch,
        _ => ErrorKind::DigestMismatch,
    };
    Error::check(kind, e.check, e.message)
}

fn signature_error(e: SignatureError) -> Error {
    let kind = if e.check.starts_with("certificate") {
        ErrorKind::Certificate
    } else {
        ErrorKind::BadSignature
    };
    Error::check(kind, e.check, e.message).with_stage("signature")
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
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
async fn signature_verifier(
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
pub async fn verification_with_token(
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
pub async fn verification_pinned(
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

fn hex_key(text: &str, path: &Path) -> Result<Vec<u8>> {
    let t = text.trim();
    if !t.len().is_multiple_of(2) || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::new(
            ErrorKind::Spec,
            format!("{} does not hold a hex key", path.display()),
        ));
    }
    (0..t.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&t[i..i + 2], 16)
                .map_err(|_| Error::new(ErrorKind::Spec, "bad hex digit"))
        })
        .collect()
}

fn xts_error(e: xts::XtsError) -> Error {
    Error::new(ErrorKind::Spec, format!("encryption key: {e}"))
}

/// Build the encryptor: derive or read the key, and for LUKS create the header now (its key
/// slot PBKDF runs before streaming, not inside the throughput figures).
pub fn encryptor(e: &EncryptSpec) -> Result<Encryptor> {
    let key_bytes = (e.key_size / 8) as usize;
    match e.format {
        EncryptFormat::Plain => {
            let key = match (&e.key_file, &e.key_hex_file) {
                (Some(p), _) => xts::plain::key_from_keyfile(&read_file(p, "key file")?, key_bytes)
                    .map_err(|err| Error::new(ErrorKind::Spec, format!("{}: {err}", p.display())))?
                    .to_vec(),
                (None, Some(p)) => {
                    let text = String::from_utf8(read_file(p, "hex key file")?).map_err(|_| {
                        Error::new(ErrorKind::Spec, format!("{} is not text", p.display()))
                    })?;
                    let k = hex_key(&text, p)?;
                    if k.len() != key_bytes {
                        return Err(Error::new(
                            ErrorKind::Spec,
                            format!(
                                "{} holds a {}-bit key, key_size is {}",
                                p.display(),
                                k.len() * 8,
                                e.key_size
                            ),
                        ));
                    }
                    k
                }
                (None, None) => {
                    return Err(Error::new(ErrorKind::Spec, "plain encryption needs a key"));
                }
            };
            let x = Xts::new(&key, e.sector_size as usize).map_err(xts_error)?;
            Ok(Encryptor::plain(x))
        }
        EncryptFormat::Luks1 | EncryptFormat::Luks2 => {
            let Some(pf) = &e.passphrase_file else {
                return Err(Error::new(ErrorKind::Spec, "LUKS needs passphrase_file"));
            };
            // The whole file is the passphrase, as `cryptsetup --key-file` and qemu's
            // `secret,file=` read it.
            let pass = read_file(pf, "passphrase file")?;
            let version = if e.format == EncryptFormat::Luks1 {
                LuksVersion::V1
            } else {
                LuksVersion::V2
            };
            let mut params = LuksParams::new(version);
            params.key_bits = e.key_size;
            params.sector_size = e.sector_size;
            let argon = e.pbkdf.as_deref() == Some("argon2id")
                || (version == LuksVersion::V2 && e.pbkdf.is_none());
            if let Some(it) = e.pbkdf_iterations {
                params.pbkdf = if argon {
                    Pbkdf::Argon2id {
                        time: it.max(4),
                        memory_kib: 65536,
                        parallelism: 1,
                    }
                } else {
                    Pbkdf::Pbkdf2 {
                        iterations: it.max(1000),
                    }
                };
            } else if !argon {
                params.pbkdf = Pbkdf::Pbkdf2IterTime { millis: 2000 };
            }
            let vol = luks::create(&params, &pass).map_err(|err| {
                Error::new(ErrorKind::Spec, format!("creating the LUKS header: {err}"))
            })?;
            let x = vol.xts().map_err(xts_error)?;
            let label = if version == LuksVersion::V1 {
                "luks1"
            } else {
                "luks2"
            };
            Ok(Encryptor::luks(
                x,
                vol.payload_offset,
                vol.header.clone(),
                label,
            ))
        }
    }
}

/// Zero policy of block targets: a device or thick LV holds old data, so an unset policy means
/// write-zeroes (unlike new files and RBD images, which read zeros where unwritten).
fn block_zeroes(z: Option<ZeroPolicy>) -> BlockZeroes {
    match z {
        None | Some(ZeroPolicy::Write) => BlockZeroes::WriteZeroes,
        Some(ZeroPolicy::Skip) => BlockZeroes::Skip,
        Some(ZeroPolicy::Discard) => BlockZeroes::Discard,
    }
}

async fn open_sink(spec: &Spec, warnings: &mut Vec<String>) -> Result<Option<Box<dyn Sink>>> {
    let Some(sink) = &spec.sink else {
        return Ok(None);
    };
    Ok(Some(match &sink.target {
        SinkTarget::File(p) => {
            let z = match sink.zeroes {
                Some(ZeroPolicy::Write) => FileZeroes::Write,
                _ => FileZeroes::Skip,
            };
            Box::new(FileSink::new(p, z)?)
        }
        SinkTarget::Device(p) => {
            let s = BlockSink::open(p, block_zeroes(sink.zeroes))?;
            warnings.extend(s.warnings());
            Box::new(s)
        }
        SinkTarget::Lvm { vg, name, size } => {
            let target = LvTarget::New {
                vg: vg.clone(),
                name: name.clone(),
                size: *size,
            };
            let z = block_zeroes(sink.zeroes);
            let s = tokio::task::spawn_blocking(move || LvmSink::open(Lvm::system(), target, z))
                .await
                .map_err(|e| {
                    Error::new(ErrorKind::Internal, format!("LVM worker failed: {e}"))
                })??;
            Box::new(s)
        }
        SinkTarget::Rbd {
            pool,
            image,
            conf,
            id,
        } => {
            let mut o = RbdOptions::new(pool.clone(), image.clone());
            o.conf = conf.clone();
            o.id = id.clone();
            // A new RBD image reads zeros where unwritten: skip and discard both leave them
            // unwritten (ciphertext is always written by the sink).
            o.zeroes = match sink.zeroes {
                Some(ZeroPolicy::Write) => RbdZeroes::Write,
                Some(ZeroPolicy::Skip | ZeroPolicy::Discard) | None => RbdZeroes::Skip,
            };
            Box::new(RbdSink::connect(o).await?)
        }
    }))
}

/// What the cache does for one run; settled by [`finish_cache`] after the run.
pub enum CacheUse {
    /// No cache configured, or a source that cannot be cached (stdin).
    None,
    /// Streaming from a verified entry (held shared until the run ends).
    Hit(imgpipe_cache::HitDone),
    /// This run fills the entry; the spec is the request (after Glance preparation).
    Fill(imgpipe_cache::Fill, Box<Spec>),
}

/// Assemble the pipeline a spec describes. Every check that can run before streaming
/// (properties, certificates, keys, paths) runs here.
///
/// A spec with `[cache]` is refused here: a cache fill must be published (or abandoned)
/// after the run, which [`run`] (or [`build_cached`] + [`finish_cache`]) does.
pub async fn build(spec: &Spec) -> Result<(Pipeline, Vec<String>)> {
    if spec.cache.is_some() {
        return Err(unsupported(
            "[cache] through build() (use run(), or build_cached() and finish_cache())",
        ));
    }
    let (p, w, _) = build_cached(spec).await?;
    Ok((p, w))
}

/// [`build`], with the spec's `[cache]` applied: the lookup happens before the source is
/// opened (a request that waits for another filler never connects to the source). On a hit
/// the pipeline streams the cached bytes through the request's checks plus the sidecar's
/// pins; on a miss the source stream is teed into the entry. Glance metadata is fetched
/// either way, so the record's hashes, signature and certificate policy apply to hits too.
/// Pass the returned [`CacheUse`] and the run's outcome to [`finish_cache`].
pub async fn build_cached(spec: &Spec) -> Result<(Pipeline, Vec<String>, CacheUse)> {
    let glance = match &spec.source {
        SourceSpec::Glance(g) => Some(prepare_glance(spec, g).await?),
        _ => None,
    };
    let spec = glance.as_ref().map_or(spec, |g| &g.spec);
    let token = glance.as_ref().and_then(|g| g.token.as_deref());

    let mut cache_use = CacheUse::None;
    let mut cached_source: Option<Box<dyn Source>> = None;
    let mut pins = None;
    let mut extra: Vec<Box<dyn Observer>> = Vec::new();
    let mut early_warnings = Vec::new();
    let fill_spec;
    let mut raw_tee = None;
    let mut raw_check = None;
    let mut size_hint = None;
    let spec = match &spec.cache {
        None => spec,
        Some(cs) => match cache_lookup(cs, spec, &mut early_warnings).await? {
            Some(imgpipe_cache::Entry::Hit(hit)) if hit.sidecar().mode == "raw" => {
                match raw_hit_checks(spec, hit.sidecar(), token).await? {
                    RawHit::Serve(w) => {
                        early_warnings.extend(w);
                        raw_check = Some(hit.raw_check().ok_or_else(|| {
                            Error::new(ErrorKind::Internal, "raw hit without a raw record")
                        })?);
                        size_hint = hit.sidecar().raw.as_ref().map(|r| r.virtual_size);
                        let (src, done) = hit.open()?;
                        cached_source = Some(src);
                        cache_use = CacheUse::Hit(done);
                    }
                    RawHit::Bypass(why) => {
                        drop(hit);
                        early_warnings.push(format!("cache: raw entry not used ({why})"));
                    }
                }
                spec
            }
            Some(imgpipe_cache::Entry::Hit(hit)) => {
                pins = Some(hit.pins(spec));
                let (src, done) = hit.open()?;
                cached_source = Some(src);
                cache_use = CacheUse::Hit(done);
                spec
            }
            Some(imgpipe_cache::Entry::Fill(mut fill)) => {
                // Adds a sha256 report digest when the request computes no strong digest.
                fill_spec = fill.spec(spec);
                if !fill.is_raw() {
                    extra.push(fill.tee()?);
                    cache_use = CacheUse::Fill(fill, Box::new(spec.clone()));
                } else if spec.sink.is_some() && spec.convert != ConvertFormat::Preserve {
                    raw_tee = Some(fill.raw_tee()?);
                    cache_use = CacheUse::Fill(fill, Box::new(spec.clone()));
                } else {
                    fill.abandon()?;
                    early_warnings.push(
                        "cache: mode raw stores the decoded disk; a run without a sink or with \
                         format = \"preserve\" is not cached"
                            .to_string(),
                    );
                }
                &fill_spec
            }
            None => {
                early_warnings.push("cache: standard input cannot be cached".to_string());
                spec
            }
        },
    };
    let parts = Parts {
        token,
        glance: glance.as_ref(),
        cached_source,
        pins: pins.as_ref(),
        extra,
        raw_tee,
        raw_check,
        size_hint,
    };
    match build_rest(spec, parts).await {
        Ok((p, mut w)) => {
            w.extend(early_warnings);
            Ok((p, w, cache_use))
        }
        Err(e) => {
            // Failed before streaming: release the fill now (dropping it is also safe: the
            // next lookup removes the partial file).
            if let CacheUse::Fill(f, _) = cache_use {
                let _ = f.abandon();
            }
            Err(e)
        }
    }
}

/// Open the cache (refusing a directory others can write, check `cache.dir`) and look the
/// request up; entry files found not to be regular files were quarantined: their warnings
/// (check `cache.entry_file`) go to the run's report.
async fn cache_lookup(
    cs: &imgpipe_spec::CacheSpec,
    spec: &Spec,
    warnings: &mut Vec<String>,
) -> Result<Option<imgpipe_cache::Entry>> {
    let cache = imgpipe_cache::Cache::open(cs)?;
    let entry = cache.lookup(spec).await;
    warnings.extend(cache.take_warnings());
    entry
}

/// What [`build_cached`] hands to the common assembly.
struct Parts<'a> {
    token: Option<&'a str>,
    glance: Option<&'a GlancePrepared>,
    cached_source: Option<Box<dyn Source>>,
    pins: Option<&'a imgpipe_cache::Pins>,
    extra: Vec<Box<dyn Observer>>,
    /// A raw cache fill's tee (fed the decoded extents by the disk stage).
    raw_tee: Option<imgpipe_cache::RawTee>,
    /// A raw cache hit: the cached disk's check replaces the image checks (which ran against
    /// the sidecar before streaming), and the bytes are a raw disk, not an image.
    raw_check: Option<Box<dyn Observer>>,
    /// A raw hit's disk size.
    size_hint: Option<u64>,
}

/// Whether a raw cache entry may serve a request.
enum RawHit {
    /// Yes (with warnings from the signature check).
    Serve(Vec<String>),
    /// The entry lacks something the request checks (e.g. a digest algorithm the fill did not
    /// compute): run without the cache.
    Bypass(String),
}

/// A raw hit cannot stream the image through the request's checks (the entry holds the
/// decoded disk), so the request is checked against what the fill verified, as recorded in
/// the MAC-authenticated sidecar: every expected digest and the size must equal the recorded
/// ones, the declared and allowed formats must admit the recorded format, and a signature is
/// verified again — certificate, trust chain against this request's trusted list, dates, and
/// the signature itself over the digest the fill computed. Any difference rejects the run.
async fn raw_hit_checks(
    spec: &Spec,
    sc: &imgpipe_cache::Sidecar,
    token: Option<&str>,
) -> Result<RawHit> {
    let mismatch = |what: String| {
        Error::check(
            ErrorKind::DigestMismatch,
            "cache.raw_record",
            format!("raw cache entry {}: {what}", sc.id),
        )
    };
    if spec.convert == ConvertFormat::Preserve {
        return Ok(RawHit::Bypass(
            "format = \"preserve\" needs the image bytes, the entry holds the decoded disk".into(),
        ));
    }
    let recorded = |a: &str| sc.digests.get(&a.to_ascii_lowercase()).cloned();
    let mut expected: Vec<(String, String, &str)> = spec
        .verify
        .digests
        .iter()
        .map(|(a, h)| (a.name().to_string(), h.clone(), "the spec"))
        .collect();
    if let Some(h) = &spec.verify.os_hash_value {
        let algo = spec.verify.os_hash_algo.as_deref().unwrap_or("sha512");
        expected.push((algo.to_string(), h.clone(), "os_hash_value"));
    }
    if let Some(h) = &spec.verify.checksum
        && (spec.verify.os_hash_value.is_none() || recorded("md5").is_some())
    {
        expected.push(("md5".into(), h.clone(), "checksum"));
    }
    for (algo, want, from) in &expected {
        match recorded(algo) {
            None => {
                return Ok(RawHit::Bypass(format!(
                    "{from} expects {algo}, which the fill did not compute"
                )));
            }
            Some(got) if !got.eq_ignore_ascii_case(want.trim()) => {
                return Err(mismatch(format!(
                    "{from} expects {algo} {want}, the fill verified {got}"
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(n) = spec.verify.size
        && n != sc.size
    {
        return Err(mismatch(format!(
            "the request expects {n} bytes, the fill verified {}",
            sc.size
        )));
    }
    let format = sc.format.as_deref().unwrap_or("raw");
    let admitted = spec.inspect.disk_format.is_none_or(|f| f.name() == format)
        && spec
            .inspect
            .allowed_formats
            .as_ref()
            .is_none_or(|l| l.iter().any(|f| f.name() == format));
    if !admitted {
        return Err(Error::check(
            ErrorKind::FormatMismatch,
            "cache.raw_format",
            format!(
                "raw cache entry {}: the image was {format}, which this request's format \
                 policy does not admit",
                sc.id
            ),
        ));
    }
    let max = spec
        .inspect
        .max_virtual_size
        .unwrap_or(DEFAULT_MAX_VIRTUAL_SIZE);
    if let Some(v) = sc.raw.as_ref().map(|r| r.virtual_size)
        && v > max
    {
        return Err(Error::check(
            ErrorKind::LimitExceeded,
            "cache.raw_virtual_size",
            format!(
                "raw cache entry {}: the disk has {v} bytes, over this request's \
                 max_virtual_size {max}",
                sc.id
            ),
        ));
    }
    let mut warnings = Vec::new();
    if let Some(s) = &spec.verify.signature {
        let same = sc.signature.as_ref().is_some_and(|r| {
            r.verdict == "passed"
                && r.signature == s.signature
                && r.hash_method == s.hash_method
                && r.key_type == s.key_type
                && r.certificate_uuid == s.certificate_uuid
        });
        if !same {
            return Ok(RawHit::Bypass(
                "the fill did not verify this signature".into(),
            ));
        }
        let v = signature_verifier(s, &mut warnings, token).await?;
        let Some(digest) = recorded(v.hash_algorithm().name()) else {
            return Ok(RawHit::Bypass(format!(
                "the fill did not record the {} digest the signature covers",
                v.hash_algorithm().name()
            )));
        };
        let bytes = hex::decode(&digest).map_err(|_| mismatch("a malformed digest".into()))?;
        v.verify_digest(&bytes).map_err(signature_error)?;
    }
    Ok(RawHit::Serve(warnings))
}

async fn build_rest(spec: &Spec, parts: Parts<'_>) -> Result<(Pipeline, Vec<String>)> {
    // A Glance download is connected first: its Content-MD5 header is part of the record's
    // hash rules. Connecting reads headers only; no image byte is consumed before every
    // pre-stream check below has passed. Other sources open after those checks.
    let mut content_md5 = None;
    let mut source: Option<Box<dyn Source>> = parts.cached_source;
    if let (None, Some(g)) = (&source, parts.glance) {
        let mut s = g.client.source(&g.image.id)?;
        s.connect().await?;
        content_md5 = s.content_md5_hex();
        source = Some(Box::new(s));
    } else if let (None, SourceSpec::Http { url, headers }) = (&source, &spec.source) {
        let s = open_http(spec, url, headers).await?;
        content_md5 = s.content_md5_hex();
        source = Some(Box::new(s));
    }
    let raw_hit = parts.raw_check.is_some();
    let (mut observers, mut warnings) = match parts.raw_check {
        Some(check) => (vec![check], Vec::new()),
        None => verification_pinned(spec, parts.token, parts.pins, content_md5).await?,
    };
    observers.extend(parts.extra);
    let encrypt = spec.encrypt.as_ref().map(encryptor).transpose()?;
    let source = match source {
        Some(s) => s,
        None => open_source(spec).await?,
    };
    let len = source.len_hint();
    let sink = open_sink(spec, &mut warnings).await?;
    let disk = match sink {
        Some(sink) => {
            let mut decode = DecodeOptions::default();
            decode.stream_len = len;
            if let Some(m) = spec.inspect.max_virtual_size {
                decode.max_virtual_size = m;
            }
            // A raw hit streams a disk, not an image: nothing to inspect or decode.
            let stage = ImageToDisk::new(DiskOptions {
                inspector: (!spec.inspect.skip && !raw_hit).then(|| inspector(spec, len)),
                preserve: spec.convert == ConvertFormat::Preserve && !raw_hit,
                declared: if raw_hit {
                    Some(imgpipe_format::Format::Raw)
                } else {
                    spec.inspect.disk_format
                },
                decode,
                encrypt,
                raw_tee: parts.raw_tee,
                size_hint: parts.size_hint,
            });
            Some((Box::new(stage) as Box<dyn DiskStage>, sink))
        }
        None => {
            if !spec.inspect.skip && !raw_hit {
                observers.push(Box::new(InspectObserver::new(inspector(spec, len), true)));
            }
            None
        }
    };
    Ok((
        Pipeline {
            source,
            observers,
            disk,
            options: DriverOptions::default(),
        },
        warnings,
    ))
}

/// Build and run a spec; the report says what happened (failures included).
///
/// Cancel-safe: the run goes on a task of the current tokio runtime, so dropping this future
/// (a `tokio::time::timeout`, a lost `select!` branch) cancels it exactly as
/// [`Progress::cancel`] does: every stage stops and the sink is aborted (temporary file
/// removed, block device head wiped, RBD temporary image removed, cache fill abandoned), in
/// the background, and nothing is published. Must be called within a tokio runtime.
pub async fn run(spec: &Spec, progress: Arc<Progress>) -> RunReport {
    /// Cancels the run when the caller stops waiting for it (a no-op after completion).
    struct CancelOnDrop {
        progress: Arc<Progress>,
        armed: bool,
    }
    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            if self.armed {
                self.progress.cancel();
            }
        }
    }
    let started = std::time::Instant::now();
    let owned = spec.clone();
    let mut guard = CancelOnDrop {
        progress: progress.clone(),
        armed: true,
    };
    let task = tokio::spawn(async move { run_here(&owned, progress).await });
    let joined = task.await;
    guard.armed = false;
    let report = match joined {
        Ok(report) => report,
        Err(e) => failed_before_streaming(
            spec,
            Error::new(ErrorKind::Internal, format!("the run failed: {e}")),
            started,
        ),
    };
    guard.progress.set_phase(Phase::Done);
    report
}

/// [`run`] on the calling task; the progress ends in [`Phase::Done`] whatever happens.
async fn run_here(spec: &Spec, progress: Arc<Progress>) -> RunReport {
    let report = run_phases(spec, progress.clone()).await;
    progress.set_phase(Phase::Done);
    report
}

async fn run_phases(spec: &Spec, progress: Arc<Progress>) -> RunReport {
    let started = std::time::Instant::now();
    // A spec built in code gets the spec file's checks, every problem listed, before anything
    // is opened or read.
    if let Err(e) = spec.validate() {
        return failed_before_streaming(spec, Error::new(ErrorKind::Spec, e.to_string()), started);
    }
    let built = tokio::select! {
        b = build_cached(spec) => b,
        _ = progress.cancelled() => Err(Error::new(ErrorKind::Cancelled, "the run was cancelled")),
    };
    match built {
        Ok((p, warnings, cache_use)) => {
            let mut outcome = p.run(progress).await;
            let cache_findings = finish_cache(cache_use, &outcome).await;
            outcome.findings.extend(cache_findings);
            outcome.findings.extend(
                warnings
                    .into_iter()
                    .map(|message| Finding::Warning { message }),
            );
            RunReport::from_outcome(&outcome)
        }
        Err(e) => failed_before_streaming(spec, e, started),
    }
}

/// The report of a run that failed before its first byte.
fn failed_before_streaming(spec: &Spec, e: Error, started: std::time::Instant) -> RunReport {
    let source = match &spec.source {
        SourceSpec::File(p) => p.display().to_string(),
        SourceSpec::Stdin => "-".into(),
        SourceSpec::Http { url, .. } => imgpipe_io::redact_url(url),
        SourceSpec::Glance(g) => format!("glance:{}", g.image_id),
    };
    let outcome = imgpipe_core::RunOutcome {
        result: Err(e),
        bytes_read: 0,
        findings: vec![],
        stages: vec![],
        source,
        sink: None,
        resumes: 0,
        elapsed: started.elapsed(),
    };
    let mut r = RunReport::from_outcome(&outcome);
    r.phase = Some("before_streaming");
    r
}

/// Settle the cache after a run: publish or abandon a fill; after a rejected hit, drop the
/// entry if its bytes no longer match the sidecar. Cache trouble never changes the run's
/// result: it is reported as findings.
pub async fn finish_cache(c: CacheUse, outcome: &imgpipe_core::RunOutcome) -> Vec<Finding> {
    use imgpipe_cache::{FillOutcome, HitOutcome};
    let warn = |message: String| Finding::Warning { message };
    match c {
        CacheUse::None => vec![],
        CacheUse::Hit(done) => {
            let id = done.key().id.clone();
            match done.finish(outcome).await {
                Ok(HitOutcome::Used) => vec![Finding::Passed {
                    check: "cache.hit".into(),
                }],
                Ok(HitOutcome::Kept) => vec![],
                Ok(HitOutcome::Discarded { problems }) => vec![warn(format!(
                    "cache: entry {id} no longer matches its sidecar and was removed: {}",
                    problems.join("; ")
                ))],
                Err(e) => vec![warn(format!("cache: {e}"))],
            }
        }
        CacheUse::Fill(fill, request) => match fill.finish(&request, outcome).await {
            Ok(FillOutcome::Published(sc)) => {
                let mut f = vec![Finding::Passed {
                    check: "cache.fill".into(),
                }];
                if let Some(why) = sc.raw.as_ref().and_then(|r| r.reread.as_ref()) {
                    f.push(warn(format!(
                        "cache: the raw entry was hashed by reading it back after the run                          ({why})"
                    )));
                }
                f
            }
            Ok(FillOutcome::Abandoned { reason }) if outcome.result.is_ok() => {
                vec![warn(format!("cache: entry not published: {reason}"))]
            }
            Ok(FillOutcome::Abandoned { .. }) => vec![],
            Err(e) => vec![warn(format!("cache: publishing failed: {e}"))],
        },
    }
}
