//! The cache as wrappers around the route. A lookup happens before the source is opened (a
//! request that waits for another filler never connects to the source) and decides how the
//! cache wraps the run:
//!
//! - a **hit** is a source over the entry plus its checks: on an image entry the request's own
//!   checks plus the sidecar's pins; on a raw entry (the decoded disk) the entry's own check,
//!   after the request was checked against the sidecar's record;
//! - a **fill** is a tee: an observer on the image bytes, or on a raw entry a tee of the disk
//!   stage's output;
//! - either way, [`Settle`] publishes, keeps or drops the entry once the run's outcome is known.

use imgpipe_cache::{Entry, Fill, Pins, RawTee};
use imgpipe_core::{Error, ErrorKind, Finding, Observer, Result, Source};
use imgpipe_format::inspect::DEFAULT_MAX_VIRTUAL_SIZE;
use imgpipe_spec::{ConvertFormat, Spec};

use super::Stream;
use super::verify::{signature_error, signature_verifier};

/// How the cache wraps one run's route.
pub(super) struct Wrapping {
    /// On a fill, the spec the route runs: the request plus what the entry needs (a sha256
    /// report digest when the request computes no strong digest). `None`: the request's.
    pub spec: Option<Spec>,
    /// On a hit, the source over the entry.
    pub hit: Option<HitSource>,
    /// On a fill, the tee into the entry.
    pub tee: Tee,
    /// What to do with the entry after the run.
    pub settle: Settle,
    /// Warnings for the run's report.
    pub warnings: Vec<String>,
}

/// A cache hit as a source: the entry's bytes and the checks they stream through.
pub(super) struct HitSource {
    /// The entry's bytes (held shared until the run ends).
    pub source: Box<dyn Source>,
    /// The checks the hit adds to the route's observers, or puts in their place.
    pub checks: HitChecks,
}

/// What a hit streams through.
pub(crate) enum HitChecks {
    /// An image entry: the request's checks plus the sidecar's pinned digest and size.
    Pins(Pins),
    /// A raw entry: the cached disk's own check replaces the image checks (which ran against
    /// the sidecar before streaming).
    RawDisk {
        /// The cached disk's check.
        check: Box<dyn Observer>,
        /// The disk's size.
        virtual_size: Option<u64>,
    },
}

impl HitChecks {
    /// What the entry's bytes are.
    pub(super) fn stream(&self) -> Stream {
        match self {
            HitChecks::Pins(_) => Stream::Image,
            HitChecks::RawDisk { virtual_size, .. } => Stream::RawDisk {
                virtual_size: *virtual_size,
            },
        }
    }
}

/// A cache fill's tee.
pub(super) enum Tee {
    /// Nothing is filled.
    None,
    /// The image bytes, as one more observer.
    Image(Box<dyn Observer>),
    /// The decoded disk, fed by the disk stage (mode raw).
    Disk(Box<RawTee>),
}

impl Tee {
    /// The tee as the observer and the disk-stage tee it is.
    pub(super) fn split(self) -> (Option<Box<dyn Observer>>, Option<RawTee>) {
        match self {
            Tee::None => (None, None),
            Tee::Image(o) => (Some(o), None),
            Tee::Disk(t) => (None, Some(*t)),
        }
    }
}

/// What the cache does after a run; see [`Settle::finish`].
pub(crate) enum Settle {
    /// No cache configured, or a source that cannot be cached (stdin).
    None,
    /// Streaming from a verified entry (held shared until the run ends).
    Hit(imgpipe_cache::HitDone),
    /// This run fills the entry; the spec is the request (after Glance preparation).
    Fill(Fill, Box<Spec>),
}

impl Wrapping {
    /// The cache does not take part.
    fn none(warnings: Vec<String>) -> Wrapping {
        Wrapping {
            spec: None,
            hit: None,
            tee: Tee::None,
            settle: Settle::None,
            warnings,
        }
    }
}

/// Look the request up in the spec's `[cache]` (if any) and say how the cache wraps the run.
/// `token` is the Glance token, for a raw hit's signature check.
pub(super) async fn wrap(spec: &Spec, token: Option<&str>) -> Result<Wrapping> {
    let Some(cs) = &spec.cache else {
        return Ok(Wrapping::none(Vec::new()));
    };
    let mut warnings = Vec::new();
    let mut w = match lookup(cs, spec, &mut warnings).await? {
        Some(Entry::Hit(hit)) if hit.sidecar().mode == "raw" => raw_hit(spec, hit, token).await?,
        Some(Entry::Hit(hit)) => image_hit(spec, hit)?,
        Some(Entry::Fill(fill)) => fill_tee(spec, fill)?,
        None => Wrapping::none(vec!["cache: standard input cannot be cached".to_string()]),
    };
    warnings.append(&mut w.warnings);
    w.warnings = warnings;
    Ok(w)
}

/// An image entry: streamed through the request's checks plus the sidecar's pins.
fn image_hit(spec: &Spec, hit: imgpipe_cache::Hit) -> Result<Wrapping> {
    let pins = hit.pins(spec);
    let (source, done) = hit.open()?;
    Ok(Wrapping {
        hit: Some(HitSource {
            source,
            checks: HitChecks::Pins(pins),
        }),
        settle: Settle::Hit(done),
        ..Wrapping::none(Vec::new())
    })
}

/// A raw entry: served when the request's checks agree with what the fill verified, bypassed
/// when it lacks something they need.
async fn raw_hit(spec: &Spec, hit: imgpipe_cache::Hit, token: Option<&str>) -> Result<Wrapping> {
    match raw_hit_checks(spec, hit.sidecar(), token).await? {
        RawHit::Serve(warnings) => {
            let check = hit
                .raw_check()
                .ok_or_else(|| Error::new(ErrorKind::Internal, "raw hit without a raw record"))?;
            let virtual_size = hit.sidecar().raw.as_ref().map(|r| r.virtual_size);
            let (source, done) = hit.open()?;
            Ok(Wrapping {
                hit: Some(HitSource {
                    source,
                    checks: HitChecks::RawDisk {
                        check,
                        virtual_size,
                    },
                }),
                settle: Settle::Hit(done),
                ..Wrapping::none(warnings)
            })
        }
        RawHit::Bypass(why) => {
            drop(hit);
            Ok(Wrapping::none(vec![format!(
                "cache: raw entry not used ({why})"
            )]))
        }
    }
}

/// A miss: the run fills the entry through a tee (image bytes, or the decoded disk in mode
/// raw, which needs a sink and a conversion; without them the fill is abandoned now).
fn fill_tee(request: &Spec, mut fill: Fill) -> Result<Wrapping> {
    // Adds a sha256 report digest when the request computes no strong digest.
    let spec = Some(fill.spec(request));
    if !fill.is_raw() {
        let tee = Tee::Image(fill.tee()?);
        return Ok(Wrapping {
            spec,
            tee,
            settle: Settle::Fill(fill, Box::new(request.clone())),
            ..Wrapping::none(Vec::new())
        });
    }
    if request.sink.is_some() && request.convert != ConvertFormat::Preserve {
        let tee = Tee::Disk(Box::new(fill.raw_tee()?));
        return Ok(Wrapping {
            spec,
            tee,
            settle: Settle::Fill(fill, Box::new(request.clone())),
            ..Wrapping::none(Vec::new())
        });
    }
    fill.abandon()?;
    Ok(Wrapping {
        spec,
        ..Wrapping::none(vec![
            "cache: mode raw stores the decoded disk; a run without a sink or with \
             format = \"preserve\" is not cached"
                .to_string(),
        ])
    })
}

/// Open the cache (refusing a directory others can write, check `cache.dir`) and look the
/// request up; entry files found not to be regular files were quarantined: their warnings
/// (check `cache.entry_file`) go to the run's report.
async fn lookup(
    cs: &imgpipe_spec::CacheSpec,
    spec: &Spec,
    warnings: &mut Vec<String>,
) -> Result<Option<imgpipe_cache::Entry>> {
    let cache = imgpipe_cache::Cache::open(cs)?;
    let entry = cache.lookup(spec).await;
    warnings.extend(cache.take_warnings());
    entry
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

impl Settle {
    /// Release a fill when the run failed before streaming (dropping it is also safe: the
    /// next lookup removes the partial file).
    pub(super) fn abandon(self) {
        if let Settle::Fill(f, _) = self {
            let _ = f.abandon();
        }
    }

    /// Settle the cache after a run: publish or abandon a fill; after a rejected hit, drop
    /// the entry if its bytes no longer match the sidecar. Cache trouble never changes the
    /// run's result: it is reported as findings.
    pub(crate) async fn finish(self, outcome: &imgpipe_core::RunOutcome) -> Vec<Finding> {
        use imgpipe_cache::{FillOutcome, HitOutcome};
        let warn = |message: String| Finding::Warning { message };
        match self {
            Settle::None => vec![],
            Settle::Hit(done) => {
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
            Settle::Fill(fill, request) => match fill.finish(&request, outcome).await {
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
}
