//! Spec → runnable pipeline, as a plan: the Glance record and the cache lookup first (both
//! decide what the route is), then one straight route, one function per stage role:
//! source ([`source`]) → observers ([`verify`]) → disk stage ([`disk`]) → sink ([`sink`]).
//! The cache takes part as wrappers the route composes ([`cache`]): on a hit a source over the
//! entry plus its checks, on a fill a tee on the image bytes or on the decoded disk.

mod cache;
mod disk;
mod sink;
mod source;
mod verify;

use imgpipe_core::{DriverOptions, Error, ErrorKind, Pipeline, Result};
use imgpipe_spec::Spec;

pub(crate) use cache::Settle;
pub use source::open_source;
pub use verify::{inspector, verification};

use source::GlancePrepared;

/// What the route streams: an image, or a raw disk from the cache (nothing to inspect or
/// decode).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Image bytes, as the source serves them.
    Image,
    /// A raw cache entry's decoded disk.
    RawDisk {
        /// The disk's size.
        virtual_size: Option<u64>,
    },
}

/// Assemble the pipeline a spec describes. Every check that can run before streaming
/// (properties, certificates, keys, paths) runs here.
///
/// A spec with `[cache]` is refused here: a cache fill must be published (or abandoned) after
/// the run, which [`run`](crate::run) does.
pub async fn build(spec: &Spec) -> Result<(Pipeline, Vec<String>)> {
    if spec.cache.is_some() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "[cache] through build() (use run()) is not implemented yet in this build of imgpipe",
        ));
    }
    let (p, w, _) = plan(spec).await?;
    Ok((p, w))
}

/// The plan: the spec's `[cache]` applied around the route. Glance metadata is fetched before
/// the lookup either way, so the record's hashes, signature and certificate policy apply to
/// hits too. Pass the returned [`Settle`] the run's outcome.
pub(crate) async fn plan(spec: &Spec) -> Result<(Pipeline, Vec<String>, Settle)> {
    let glance = source::glance_record(spec).await?;
    let spec = glance.as_ref().map_or(spec, |g| &g.spec);
    let token = glance.as_ref().and_then(|g| g.token.as_deref());
    let cache = cache::wrap(spec, token).await?;
    let spec = cache.spec.as_ref().unwrap_or(spec);
    match route(spec, glance.as_ref(), token, cache.hit, cache.tee).await {
        Ok((p, mut warnings)) => {
            warnings.extend(cache.warnings);
            Ok((p, warnings, cache.settle))
        }
        Err(e) => {
            cache.settle.abandon();
            Err(e)
        }
    }
}

/// The route: source → observers → disk stage → sink, with the cache's wrappers (a hit's
/// source and checks, a fill's tee) in their places. Network sources connect first (a
/// download's `Content-MD5` is part of the hash rules; connecting reads headers only); local
/// ones open after every pre-stream check has passed.
async fn route(
    spec: &Spec,
    glance: Option<&GlancePrepared>,
    token: Option<&str>,
    hit: Option<cache::HitSource>,
    tee: cache::Tee,
) -> Result<(Pipeline, Vec<String>)> {
    let (cached, checks) = match hit {
        Some(h) => (Some(h.source), Some(h.checks)),
        None => (None, None),
    };
    let stream = checks
        .as_ref()
        .map_or(Stream::Image, cache::HitChecks::stream);
    let pending = source::connect(spec, glance, cached).await?;
    let (mut observers, mut warnings) =
        verify::observers(spec, token, checks, pending.content_md5()).await?;
    let (image_tee, disk_tee) = tee.split();
    observers.extend(image_tee);
    let encrypt = spec.encrypt.as_ref().map(disk::encryptor).transpose()?;
    let source = pending.open(spec).await?;
    let len = source.len_hint();
    let disk = match sink::open(spec, &mut warnings).await? {
        Some(sink) => Some((disk::stage(spec, len, stream, encrypt, disk_tee), sink)),
        None => {
            observers.extend(verify::inspect_observer(spec, len, stream));
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
