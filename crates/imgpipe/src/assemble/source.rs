//! The source role: the spec's source, or a Glance image after its record was fetched and
//! merged into the spec. A cache hit's source comes from [`super::cache`].

use imgpipe_core::{Error, ErrorKind, Result, Source};
use imgpipe_crypto::hash::Algorithm;
use imgpipe_io::glance::{GlanceClient, GlanceImage};
use imgpipe_io::keystone::PasswordAuth;
use imgpipe_io::{HttpOptions, HttpSource, ReaderSource};
use imgpipe_spec::{BarbicanSpec, GlanceSpec, SignatureSpec, SourceSpec, Spec};

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
pub(super) async fn prepare_glance(spec: &Spec, g: &GlanceSpec) -> Result<GlancePrepared> {
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

/// The Glance record merged into the spec, when the source is Glance (fetched before the cache
/// lookup, so the record's hashes, signature and certificate policy apply to hits too).
pub(super) async fn glance_record(spec: &Spec) -> Result<Option<GlancePrepared>> {
    match &spec.source {
        SourceSpec::Glance(g) => Ok(Some(prepare_glance(spec, g).await?)),
        _ => Ok(None),
    }
}

/// A source on its way to the pipeline: network sources are connected before the checks are
/// built (a download's `Content-MD5` header is part of the hash rules; connecting reads headers
/// only), local ones are opened after them.
pub(super) enum Pending {
    /// Connected or cached: ready to stream.
    Ready {
        /// The source.
        source: Box<dyn Source>,
        /// The download's `Content-MD5` header (hex), if any.
        content_md5: Option<String>,
    },
    /// A file or standard input, opened by [`Pending::open`].
    Later,
}

/// Connect the source unless a cache hit already supplies one (no image byte is read here).
pub(super) async fn connect(
    spec: &Spec,
    glance: Option<&GlancePrepared>,
    cached: Option<Box<dyn Source>>,
) -> Result<Pending> {
    if let Some(source) = cached {
        return Ok(Pending::Ready {
            source,
            content_md5: None,
        });
    }
    if let Some(g) = glance {
        let mut s = g.client.source(&g.image.id)?;
        s.connect().await?;
        let content_md5 = s.content_md5_hex();
        return Ok(Pending::Ready {
            source: Box::new(s),
            content_md5,
        });
    }
    if let SourceSpec::Http { url, headers } = &spec.source {
        let s = open_http(spec, url, headers).await?;
        let content_md5 = s.content_md5_hex();
        return Ok(Pending::Ready {
            source: Box::new(s),
            content_md5,
        });
    }
    Ok(Pending::Later)
}

impl Pending {
    /// The download's `Content-MD5` header (hex), if the source is connected and sent one.
    pub(super) fn content_md5(&self) -> Option<String> {
        match self {
            Pending::Ready { content_md5, .. } => content_md5.clone(),
            Pending::Later => None,
        }
    }

    /// The source, opening a local one now (after every pre-stream check has passed).
    pub(super) async fn open(self, spec: &Spec) -> Result<Box<dyn Source>> {
        match self {
            Pending::Ready { source, .. } => Ok(source),
            Pending::Later => open_source(spec).await,
        }
    }
}
