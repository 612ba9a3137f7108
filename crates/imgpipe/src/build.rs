//! Spec → runnable pipeline: one `match` per stage role.

use std::path::Path;
use std::sync::Arc;

use imgpipe_core::{
    DiskStage, DriverOptions, Error, ErrorKind, Finding, Observer, Pipeline, Progress, Result,
    Sink, Source,
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
use imgpipe_io::lvm::{LvTarget, Lvm, LvmSink};
use imgpipe_io::{FileSink, FileZeroes, HttpOptions, HttpSource, ReaderSource};
use imgpipe_rbd::{RbdOptions, RbdSink, RbdZeroes};
use imgpipe_spec::{
    ConvertFormat, EncryptFormat, EncryptSpec, SignatureSpec, SinkTarget, SourceSpec, Spec,
    ZeroPolicy,
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
        SourceSpec::Http { url, headers } => {
            let mut s = HttpSource::new(
                url,
                HttpOptions {
                    headers: headers.clone(),
                    attempts: spec.retry.attempts,
                    stall_timeout: spec.retry.stall_timeout,
                    backoff: spec.retry.backoff,
                    ..Default::default()
                },
            )?;
            s.connect().await?;
            Box::new(s)
        }
        SourceSpec::Glance(_) => return Err(unsupported("the Glance source")),
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
            let token = std::env::var(b.token_env.as_deref().unwrap_or("OS_AUTH_TOKEN")).ok();
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
    let trusted = if s.trusted_certificates.is_empty() {
        None
    } else {
        Some(load_cert_paths(&s.trusted_certificates)?)
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
    let record = ImageRecord {
        os_hash_algo: v.os_hash_algo.clone(),
        os_hash_value: v.os_hash_value.clone(),
        checksum: v.checksum.clone(),
        content_md5: None,
        size: v.size,
    };
    let has_record = record.os_hash_value.is_some() || record.checksum.is_some();
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
        let verifier = signature_verifier(s, &mut warnings).await?;
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
    let mut observers: Vec<Box<dyn Observer>> = hashers
        .into_iter()
        .map(|h| Box::new(h) as Box<dyn Observer>)
        .collect();
    if let Some(size) = v.size {
        observers.push(Box::new(SizeObserver::new(size, "the spec")));
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

/// Assemble the pipeline a spec describes. Every check that can run before streaming
/// (properties, certificates, keys, paths) runs here.
pub async fn build(spec: &Spec) -> Result<(Pipeline, Vec<String>)> {
    if spec.cache.is_some() {
        return Err(unsupported("[cache]"));
    }
    let (mut observers, mut warnings) = verification(spec).await?;
    let encrypt = spec.encrypt.as_ref().map(encryptor).transpose()?;
    let source = open_source(spec).await?;
    let len = source.len_hint();
    let sink = open_sink(spec, &mut warnings).await?;
    let disk = match sink {
        Some(sink) => {
            let mut decode = DecodeOptions::default();
            decode.stream_len = len;
            if let Some(m) = spec.inspect.max_virtual_size {
                decode.max_virtual_size = m;
            }
            let stage = ImageToDisk::new(DiskOptions {
                inspector: (!spec.inspect.skip).then(|| inspector(spec, len)),
                preserve: spec.convert == ConvertFormat::Preserve,
                declared: spec.inspect.disk_format,
                decode,
                encrypt,
            });
            Some((Box::new(stage) as Box<dyn DiskStage>, sink))
        }
        None => {
            if !spec.inspect.skip {
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
pub async fn run(spec: &Spec, progress: Arc<Progress>) -> RunReport {
    let started = std::time::Instant::now();
    match build(spec).await {
        Ok((p, warnings)) => {
            let mut outcome = p.run(progress).await;
            outcome.findings.extend(
                warnings
                    .into_iter()
                    .map(|message| Finding::Warning { message }),
            );
            RunReport::from_outcome(&outcome)
        }
        Err(e) => {
            let source = match &spec.source {
                SourceSpec::File(p) => p.display().to_string(),
                SourceSpec::Stdin => "-".into(),
                SourceSpec::Http { url, .. } => url.clone(),
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
    }
}
