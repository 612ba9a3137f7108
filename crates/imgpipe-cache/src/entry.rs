//! A lookup's result: a verified hit to stream from, or the single fill of a miss.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use imgpipe_core::{Chunk, Error, ErrorKind, Finding, Observer, Result, RunOutcome, Source};
use imgpipe_crypto::hash::Algorithm;
use imgpipe_crypto::multihash::{self, HashPolicy, ImageRecord};
use imgpipe_crypto::signature::parse_hash_method;
use imgpipe_io::{ReaderSource, SequentialWriter};
use imgpipe_spec::Spec;

use crate::lock::{EntryLock, Mode};
use crate::raw::{RawDigestCheck, RawTee, RawTeeState};
use crate::sidecar::{SIDECAR_VERSION, Sidecar, SignatureRecord, is_strong};
use crate::{Cache, CacheKey, Paths, io_err, sync_dir};

/// What [`Cache::lookup_or_fill`] found.
pub enum Entry {
    /// A published entry, held shared (not evictable) until its source is dropped.
    Hit(Hit),
    /// No entry: this caller is the one filler (others wait for it).
    Fill(Fill),
}

/// The algorithms `imgpipe::verification` will compute for a spec (best effort: anything it
/// would reject is ignored here; the run reports it).
pub(crate) fn planned_algorithms(spec: &Spec) -> Vec<Algorithm> {
    let v = &spec.verify;
    let mut out: Vec<Algorithm> = v.digests.iter().map(|(a, _)| *a).collect();
    out.extend(v.report.iter().copied());
    if let Some(s) = &v.signature
        && let Some(a) = parse_hash_method(&s.hash_method)
    {
        out.push(a);
    }
    let record = ImageRecord {
        os_hash_algo: v.os_hash_algo.clone(),
        os_hash_value: v.os_hash_value.clone(),
        checksum: v.checksum.clone(),
        content_md5: None,
        size: v.size,
    };
    if record.os_hash_value.is_some() || record.checksum.is_some() {
        let policy = HashPolicy {
            allow_md5_fallback: v.allow_md5_fallback,
            require_hash: false,
        };
        if let Ok(list) = multihash::select(&record, &policy) {
            out.extend(list.iter().map(|e| e.algorithm));
        }
    }
    if out.is_empty() {
        // verification() hashes sha256 when nothing else is asked.
        out.push(Algorithm::Sha256);
    }
    out.sort();
    out.dedup();
    out
}

/// The expectations a hit adds to the request's own checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    /// The sidecar digest to require (a strong one the request computes anyway when possible,
    /// so a hit costs no extra hashing).
    pub digest: (Algorithm, String),
    /// The data file's byte count per the sidecar.
    pub size: u64,
}

/// A published entry, held with a shared lock.
pub struct Hit {
    cache: Cache,
    key: CacheKey,
    paths: Paths,
    sidecar: Box<Sidecar>,
    lock: EntryLock,
}

impl Hit {
    pub(crate) fn new(
        cache: &Cache,
        key: CacheKey,
        paths: Paths,
        sidecar: Sidecar,
        lock: EntryLock,
    ) -> Self {
        debug_assert_eq!(lock.mode(), Mode::Shared);
        // Last use = the data file's mtime (eviction by age reads it). Best effort.
        if let Ok(f) = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&paths.data)
        {
            let _ = f.set_modified(SystemTime::now());
        }
        Hit {
            cache: cache.clone(),
            key,
            paths,
            sidecar: Box::new(sidecar),
            lock,
        }
    }

    /// The key.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// What the fill verified.
    pub fn sidecar(&self) -> &Sidecar {
        &self.sidecar
    }

    /// The data file.
    pub fn data_path(&self) -> &std::path::Path {
        &self.paths.data
    }

    /// Mode `raw`: the check the cached disk must stream through (keyed digest and length
    /// from the authenticated sidecar). `None` for an original entry.
    pub fn raw_check(&self) -> Option<Box<dyn Observer>> {
        let rec = self.sidecar.raw.clone()?;
        let key = self.cache.raw_key()?;
        Some(Box::new(RawDigestCheck::new(key, rec)))
    }

    /// The sidecar expectations to add to `request`'s checks: the strong sidecar digest that
    /// the request computes anyway if there is one (no extra hasher), else the cheapest strong
    /// one; and the size.
    pub fn pins(&self, request: &Spec) -> Pins {
        let planned = planned_algorithms(request);
        let strong = self.sidecar.strong_digests();
        let digest = strong
            .iter()
            .find(|(a, _)| planned.contains(a))
            .or(strong.first())
            .cloned()
            // read_complete() only accepts sidecars with a strong digest.
            .unwrap_or((Algorithm::Sha256, String::new()));
        Pins {
            digest,
            size: self.sidecar.size,
        }
    }

    /// `request` with the [`Self::pins`] added as ordinary expectations (`verify.digests`, and
    /// `verify.size` when the request gives none). For a facade without a pin hook: the
    /// mismatch message then names "the spec" rather than the cache sidecar, and a Glance
    /// request with `require_hash` but no hash metadata would pass the "some hash" rule thanks
    /// to the pin — prefer the pin hook described in the wiring note.
    pub fn spec(&self, request: &Spec) -> Spec {
        let pins = self.pins(request);
        let mut s = request.clone();
        s.verify.digests.push(pins.digest);
        if s.verify.size.is_none() {
            s.verify.size = Some(pins.size);
        }
        s
    }

    /// Start using the entry: a [`Source`] over the data file that keeps the shared lock until
    /// it is dropped (the pipeline drops it when the run ends), and the handle to report the
    /// run's outcome with.
    ///
    /// # Errors
    /// `Io` when the data file cannot be opened.
    pub fn open(self) -> Result<(Box<dyn Source>, HitDone)> {
        let inner = ReaderSource::open(&self.paths.data)?;
        let src = CachedSource {
            inner,
            name: format!("cache:{}", self.paths.data.display()),
            _lock: self.lock,
        };
        Ok((
            Box::new(src),
            HitDone {
                cache: self.cache,
                key: self.key,
                sidecar: self.sidecar,
            },
        ))
    }
}

/// The source of a hit: the cached bytes, read once, holding the entry shared.
pub struct CachedSource {
    inner: ReaderSource,
    name: String,
    _lock: EntryLock,
}

#[async_trait]
impl Source for CachedSource {
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn len_hint(&self) -> Option<u64> {
        self.inner.len_hint()
    }
    async fn read(&mut self) -> Result<Option<Bytes>> {
        self.inner.read().await
    }
}

/// What happened to an entry after a run that used it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HitOutcome {
    /// The run succeeded.
    Used,
    /// The run failed for a reason that does not implicate the entry, or the entry still
    /// matches its sidecar: it was kept.
    Kept,
    /// The run failed a digest or size check and the entry no longer matches its sidecar
    /// (tampering, bit rot): it was removed, so the next use fills it again.
    Discarded {
        /// The mismatches found.
        problems: Vec<String>,
    },
}

/// Reports a hit's outcome (after the run, when the source and its lock are gone).
pub struct HitDone {
    cache: Cache,
    key: CacheKey,
    sidecar: Box<Sidecar>,
}

impl HitDone {
    /// The key.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// What the fill verified.
    pub fn sidecar(&self) -> &Sidecar {
        &self.sidecar
    }

    /// After the run: on a digest or size rejection, re-hash the entry against its sidecar
    /// (under the exclusive lock) and remove it when it no longer matches.
    ///
    /// # Errors
    /// `Io` when the entry cannot be re-read or removed.
    pub async fn finish(self, outcome: &RunOutcome) -> Result<HitOutcome> {
        let kind = match &outcome.result {
            Ok(_) => return Ok(HitOutcome::Used),
            Err(e) => e.kind(),
        };
        if !matches!(kind, ErrorKind::DigestMismatch | ErrorKind::SizeMismatch) {
            return Ok(HitOutcome::Kept);
        }
        let r = self.cache.verify_entry(&self.key.id, true).await?;
        Ok(if r.ok || r.problems.is_empty() && !r.removed {
            HitOutcome::Kept
        } else {
            HitOutcome::Discarded {
                problems: r.problems,
            }
        })
    }
}

#[derive(Debug, Default)]
struct TeeState {
    finished: bool,
    bytes: u64,
    error: Option<String>,
}

/// The observer that writes every image chunk into `<id>.part`, gathered into 4 MiB O_DIRECT
/// writes ([`SequentialWriter`]): a buffered copy plus a final fsync made a cold run 1.2-1.5x
/// slower than an uncached one on two cores, because the page-cache copy and writeback landed
/// on the core the decoder and sink share. A write failure never fails the run: it is reported
/// as a warning and the entry is not published.
pub struct CacheTee {
    out: SequentialWriter,
    state: Arc<Mutex<TeeState>>,
    failed: bool,
}

impl CacheTee {
    fn fail(&mut self, why: String) {
        self.failed = true;
        if let Ok(mut s) = self.state.lock() {
            s.error.get_or_insert(why);
        }
    }
}

impl Observer for CacheTee {
    fn name(&self) -> String {
        "cache-tee".into()
    }

    fn update(&mut self, chunk: &Chunk) -> Result<()> {
        if self.failed {
            return Ok(());
        }
        if let Err(e) = self.out.write_at(chunk.offset, &chunk.data) {
            self.fail(format!("writing at offset {}: {e}", chunk.offset));
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, total: u64) -> Result<Vec<Finding>> {
        if !self.failed {
            if self.out.position() != total {
                self.fail(format!("wrote {} bytes of {total}", self.out.position()));
            } else if let Err(e) = self.out.finish() {
                self.fail(format!("fsync: {e}"));
            } else if let Ok(mut s) = self.state.lock() {
                s.finished = true;
                s.bytes = total;
            }
        }
        let err = self.state.lock().ok().and_then(|s| s.error.clone());
        Ok(match err {
            Some(e) => vec![Finding::Warning {
                message: format!("cache: the entry was not written ({e}); the run is unaffected"),
            }],
            None => vec![],
        })
    }
}

/// The result of a fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillOutcome {
    /// Published; later requests hit it.
    Published(Box<Sidecar>),
    /// Not published (the run failed, or the cache copy is unusable); nothing left behind.
    Abandoned {
        /// Why.
        reason: String,
    },
}

/// The one filler of a missing entry, holding it exclusively until [`Fill::finish`].
pub struct Fill {
    cache: Cache,
    key: CacheKey,
    paths: Paths,
    lock: EntryLock,
    file: Option<File>,
    state: Arc<Mutex<TeeState>>,
    raw_state: Option<Arc<Mutex<RawTeeState>>>,
}

impl Fill {
    pub(crate) fn new(cache: &Cache, key: CacheKey, paths: Paths, lock: EntryLock) -> Result<Fill> {
        debug_assert_eq!(lock.mode(), Mode::Exclusive);
        // The caller cleared the entry's files under the exclusive lock: the partial file is
        // new, and never opened through a symlink.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&paths.part)
            .map_err(|e| io_err("cannot create", &paths.part, e))?;
        Ok(Fill {
            cache: cache.clone(),
            key,
            paths,
            lock,
            file: Some(file),
            state: Arc::new(Mutex::new(TeeState::default())),
            raw_state: None,
        })
    }

    /// Whether this fill stores the decoded disk (`mode = "raw"`): use [`Self::raw_tee`] on
    /// the disk stage instead of [`Self::tee`].
    pub fn is_raw(&self) -> bool {
        self.cache.is_raw()
    }

    /// Mode `raw`: the writer of decoded extents (call once; feed it every extent before
    /// encryption, then [`RawTee::finish`] with the virtual size).
    ///
    /// # Errors
    /// `Internal` on a second call, or when the cache has no raw key.
    pub fn raw_tee(&mut self) -> Result<RawTee> {
        let key = self.cache.raw_key().cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                "Fill::raw_tee on a cache without a raw key",
            )
        })?;
        let file = self
            .file
            .take()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "the fill's file was already taken"))?;
        let state = Arc::new(Mutex::new(RawTeeState::default()));
        self.raw_state = Some(state.clone());
        Ok(RawTee::new(file, self.paths.part.clone(), key, state))
    }

    /// The key.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// `request`, plus a SHA-256 report digest when the request computes no collision-resistant
    /// digest (e.g. only Glance's MD5 `checksum`): an entry is only published when a strong
    /// digest pins its bytes.
    pub fn spec(&self, request: &Spec) -> Spec {
        let mut s = request.clone();
        if !planned_algorithms(request).into_iter().any(is_strong) {
            s.verify.report.push(Algorithm::Sha256);
        }
        s
    }

    /// The observer to add to the run's observers (call once).
    ///
    /// # Errors
    /// `Internal` on a second call.
    pub fn tee(&mut self) -> Result<Box<dyn Observer>> {
        let file = self.file.take().ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                "Fill::tee was called twice for one fill",
            )
        })?;
        Ok(Box::new(CacheTee {
            out: SequentialWriter::new(file, &self.paths.part),
            state: self.state.clone(),
            failed: false,
        }))
    }

    /// After the run: publish when it succeeded (and the tee wrote and synced every byte),
    /// else remove the partial file. Then apply the cache's size/age bounds to other entries.
    /// `request` is the spec the run was built from (its signature settings are recorded).
    ///
    /// # Errors
    /// `Io` when publishing or cleaning up fails (the instance run itself is unaffected).
    pub async fn finish(self, request: &Spec, outcome: &RunOutcome) -> Result<FillOutcome> {
        if let Some(rs) = self.raw_state.clone() {
            return self.finish_raw(request, outcome, &rs);
        }
        let state = match self.state.lock() {
            Ok(s) => (s.finished, s.bytes, s.error.clone()),
            Err(_) => (false, 0, Some("tee state poisoned".into())),
        };
        let reason = match (&outcome.result, state) {
            (Err(e), _) => Some(format!("the run failed: {e}")),
            (Ok(_), (_, _, Some(err))) => Some(format!("writing the cache copy failed: {err}")),
            (Ok(_), (false, _, None)) => Some("the cache tee did not see the whole image".into()),
            (Ok(_), (true, n, None)) if n != outcome.bytes_read => Some(format!(
                "the cache copy has {n} bytes, the run read {}",
                outcome.bytes_read
            )),
            _ => None,
        };
        if let Some(reason) = reason {
            self.abandon()?;
            return Ok(FillOutcome::Abandoned { reason });
        }
        let mut sc = self.new_sidecar("original", outcome);
        sc.absorb(&outcome.findings);
        if sc.strong_digests().is_empty() {
            self.abandon()?;
            return Ok(FillOutcome::Abandoned {
                reason: "no collision-resistant digest was computed (build the run from \
                         Fill::spec)"
                    .into(),
            });
        }
        self.finish_publish(request, sc)
    }

    fn new_sidecar(&self, mode: &str, outcome: &RunOutcome) -> Sidecar {
        Sidecar {
            version: SIDECAR_VERSION,
            id: self.key.id.clone(),
            label: self.key.label.clone(),
            source: outcome.source.clone(),
            mode: mode.into(),
            size: outcome.bytes_read,
            format: None,
            virtual_size: None,
            digests: Default::default(),
            checks_passed: vec![],
            signature: None,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            writer: format!("imgpipe-cache {}", env!("CARGO_PKG_VERSION")),
            raw: None,
            mac: None,
        }
    }

    /// Mode `raw`: publish when the run succeeded and the raw tee hashed and synced the whole
    /// disk; the sidecar carries the keyed digest and the MAC.
    fn finish_raw(
        self,
        request: &Spec,
        outcome: &RunOutcome,
        rs: &Mutex<RawTeeState>,
    ) -> Result<FillOutcome> {
        let (done, error) = match rs.lock() {
            Ok(s) => (s.done.clone(), s.error.clone()),
            Err(_) => (None, Some("raw tee state poisoned".into())),
        };
        let mut sc = self.new_sidecar("raw", outcome);
        sc.absorb(&outcome.findings);
        let reason = match (&outcome.result, done, error) {
            (Err(e), _, _) => Some(format!("the run failed: {e}")),
            (Ok(_), _, Some(err)) => Some(format!("writing the raw cache copy failed: {err}")),
            (Ok(_), None, None) => Some("the raw cache tee did not see the whole disk".into()),
            (Ok(_), Some(rec), None) => match sc.virtual_size {
                Some(v) if v != rec.virtual_size => Some(format!(
                    "the raw cache copy has {} bytes, the disk {v}",
                    rec.virtual_size
                )),
                _ => {
                    sc.virtual_size = Some(rec.virtual_size);
                    sc.raw = Some(rec);
                    None
                }
            },
        };
        if let Some(reason) = reason {
            self.abandon()?;
            return Ok(FillOutcome::Abandoned { reason });
        }
        self.finish_publish(request, sc)
    }

    fn finish_publish(self, request: &Spec, mut sc: Sidecar) -> Result<FillOutcome> {
        if let Some(s) = &request.verify.signature {
            let passed = sc.checks_passed.iter().any(|c| c == "signature");
            sc.signature = Some(SignatureRecord::from_spec(s, passed));
        }
        if sc.mode == "raw" {
            let Some(key) = self.cache.raw_key() else {
                self.abandon()?;
                return Ok(FillOutcome::Abandoned {
                    reason: "no raw key".into(),
                });
            };
            sc.mac = Some(key.mac_of(&sc));
        }
        if let Err(e) = self.publish(&sc) {
            let _ = self.cache.clear_files(&self.paths, false);
            return Err(e);
        }
        // Bounds: this entry is skipped (we still hold it exclusively).
        let _ = self.cache.evict(&self.cache.policy());
        drop(self.lock);
        Ok(FillOutcome::Published(Box::new(sc)))
    }

    fn publish(&self, sc: &Sidecar) -> Result<()> {
        let p = &self.paths;
        std::fs::rename(&p.part, &p.data).map_err(|e| io_err("cannot publish", &p.data, e))?;
        sync_dir(self.cache.dir())?;
        let text = serde_json::to_vec_pretty(sc)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("sidecar: {e}")))?;
        {
            use std::io::Write;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p.sidecar_tmp)
                .map_err(|e| io_err("cannot create", &p.sidecar_tmp, e))?;
            f.write_all(&text)
                .and_then(|()| f.sync_all())
                .map_err(|e| io_err("cannot write", &p.sidecar_tmp, e))?;
        }
        std::fs::rename(&p.sidecar_tmp, &p.sidecar)
            .map_err(|e| io_err("cannot publish", &p.sidecar, e))?;
        sync_dir(self.cache.dir())
    }

    /// Give up: remove the partial file and release the entry (a waiter may fill it next).
    ///
    /// # Errors
    /// `Io` when the partial file cannot be removed.
    pub fn abandon(self) -> Result<()> {
        drop(self.file);
        self.cache.clear_files(&self.paths, false)
    }
}
