//! The verified image cache.
//!
//! Nova's image cache trusts a file because it exists. Here verification is a property of
//! every use:
//!
//! - **Miss** ([`Entry::Fill`]): the source stream is teed into `<id>.part` by an extra
//!   [`Observer`](imgpipe_core::Observer) ([`Fill::tee`]) while the same pass inspects, hashes,
//!   verifies the signature, decodes and writes the instance disk. Only when the run succeeded
//!   does [`Fill::finish`] publish: fsync, rename to `<id>.data`, then write the sidecar
//!   `<id>.json` (format, virtual size, every digest, signature record) atomically. The sidecar
//!   is the commit point: without it an entry does not exist.
//! - **Hit** ([`Entry::Hit`]): the cached bytes stream through the same inspector, hashers and
//!   signature verifier on their way to the sink. [`Hit::spec`] adds the sidecar's strongest
//!   digest and size as expectations (on top of the request's own), so tampering or bit rot is
//!   rejected in the same pass before the sink publishes; the request's certificate policy is
//!   checked before streaming as on a miss, because the request's own signature settings build
//!   the verifier.
//! - **Single flight**: a per-entry lock (`flock` on `<id>.lock`, plus an in-process layer)
//!   makes concurrent requests for one image — threads or processes sharing the directory —
//!   download once; the others wait, then read the verified entry.
//! - **Crash safety**: a killed filler leaves at most `<id>.part`, `<id>.json.tmp` or a data
//!   file without sidecar; none is ever taken for an entry, and the next lock holder (or
//!   [`Cache::open`], [`Cache::prune`]) removes them.
//! - **Who may write it** ([`safety`]): a directory others can write, a symlinked directory
//!   or one owned by another user is refused (check `cache.dir`); an entry file that is not a
//!   regular file (a directory, symlink, FIFO) is quarantined and the entry filled again.
//! - **Eviction** by last use (the data file's mtime, set on every hit) and total size
//!   ([`Cache::evict`]), skipping entries in use.
//!
//! Mode `raw` (caching the decoded disk, like Nova's `force_raw_images`): the decoded disk
//! cannot be re-checked against the image's digests or signature, so raw entries are bound to
//! what their fill verified by a key kept outside the cache directory ([`raw`]).

mod entry;
mod lock;
mod maint;
pub mod raw;
pub mod safety;
mod sidecar;
mod tree;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imgpipe_core::{Error, ErrorKind, Result};
use imgpipe_crypto::hash::{self, Algorithm};
use imgpipe_spec::{CacheSpec, SourceSpec, Spec};

pub use entry::{CacheTee, CachedSource, Entry, Fill, FillOutcome, Hit, HitDone, HitOutcome, Pins};
pub use maint::{EntryInfo, EntryState, EvictPolicy, EvictReport, PruneReport, VerifyResult};
pub use raw::{RawDigestCheck, RawKey, RawRecord, RawTee};
pub use sidecar::{SIDECAR_VERSION, Sidecar, SignatureRecord, is_strong};

use lock::Mode;

/// The identity of a cached image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// Entry id: lowercase hex SHA-256 of the key material; names the files.
    pub id: String,
    /// Human label (`glance:<image id>`, the URL, the path), never credentials.
    pub label: String,
}

/// The files of one entry.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub lock: PathBuf,
    pub part: PathBuf,
    pub data: PathBuf,
    pub sidecar: PathBuf,
    pub sidecar_tmp: PathBuf,
}

/// A cache directory and its bounds.
#[derive(Clone)]
pub struct Cache {
    dir: PathBuf,
    max_size: Option<u64>,
    max_age: Option<Duration>,
    /// `Some` in mode `raw` (and for maintenance given a key): authenticates raw entries.
    raw_key: Option<RawKey>,
    /// Lookups fill and hit raw entries.
    raw: bool,
    /// Warnings for the run (quarantined entry files).
    notes: safety::Notes,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("dir", &self.dir)
            .field("raw", &self.raw)
            .finish_non_exhaustive()
    }
}

pub(crate) fn io_err(what: impl std::fmt::Display, path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("cache: {what} {}", path.display()), e)
}

pub(crate) fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Cache {
    /// Open (creating) the cache directory and remove stale partial files left by killed
    /// fillers (only those whose entry lock is free).
    ///
    /// In mode `raw` the key file (`key_file`, default
    /// [`imgpipe_spec::DEFAULT_CACHE_KEY_FILE`]) is loaded, or created when absent.
    ///
    /// # Errors
    /// `Io` when the directory cannot be created or read; `Spec`/`Io` for an unusable key file
    /// ([`RawKey::load_or_create`]).
    pub fn open(spec: &CacheSpec) -> Result<Cache> {
        // 0755 at most (the umask may take more): a directory this creates is never one that
        // check_dir refuses.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&spec.dir)
            .map_err(|e| io_err("cannot create", &spec.dir, e))?;
        let dir = spec
            .dir
            .canonicalize()
            .map_err(|e| io_err("cannot resolve", &spec.dir, e))?;
        safety::check_dir(&spec.dir, &dir)?;
        let raw_key = if spec.raw {
            let default = PathBuf::from(imgpipe_spec::DEFAULT_CACHE_KEY_FILE);
            let path = spec.key_file.as_ref().unwrap_or(&default);
            Some(RawKey::load_or_create(path, &dir)?)
        } else {
            None
        };
        let cache = Cache {
            dir,
            max_size: spec.max_size,
            max_age: spec.max_age,
            raw_key,
            raw: spec.raw,
            notes: safety::Notes::default(),
        };
        cache.prune()?;
        Ok(cache)
    }

    /// Use an existing cache directory as it is (no creation, no pruning): for inspection
    /// tools (`imgpipe cache list`) that must show stale leftovers rather than remove them.
    ///
    /// # Errors
    /// `Io` when the directory does not exist; `Spec` (check `cache.dir`) when others can
    /// write it ([`safety::check_dir`]).
    pub fn open_dir(dir: &Path) -> Result<Cache> {
        let given = dir;
        let dir = dir
            .canonicalize()
            .map_err(|e| io_err("cannot open cache directory", dir, e))?;
        safety::check_dir(given, &dir)?;
        Ok(Cache {
            dir,
            max_size: None,
            max_age: None,
            raw_key: None,
            raw: false,
            notes: safety::Notes::default(),
        })
    }

    /// Warnings since the last call (entry files that were not regular files and were
    /// quarantined, check `cache.entry_file`), for the run's report.
    pub fn take_warnings(&self) -> Vec<String> {
        self.notes.take()
    }

    /// Take an entry's lock. A lock path that is not a regular file (a directory, symlink,
    /// FIFO) is quarantined first: nobody can hold a lock on it, and the lock file is opened
    /// without following symlinks.
    pub(crate) async fn lock(&self, p: &Paths, mode: Mode) -> Result<lock::EntryLock> {
        if let Some(w) = safety::quarantine_odd(&p.lock)? {
            self.notes.push(w);
        }
        lock::acquire(&p.lock, mode)
            .await
            .map_err(|e| io_err("cannot lock", &p.lock, e))
    }

    /// Use `key` to check raw entries (maintenance: `verify` of raw entries needs it).
    pub fn with_raw_key(mut self, key: RawKey) -> Self {
        self.raw_key = Some(key);
        self
    }

    /// Whether lookups use raw entries.
    pub fn is_raw(&self) -> bool {
        self.raw
    }

    /// The key of raw entries, when known.
    pub fn raw_key(&self) -> Option<&RawKey> {
        self.raw_key.as_ref()
    }

    /// The (canonical) cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configured bounds as an eviction policy (now = the current time).
    pub fn policy(&self) -> EvictPolicy {
        EvictPolicy {
            max_size: self.max_size,
            max_age: self.max_age,
            now: std::time::SystemTime::now(),
        }
    }

    pub(crate) fn paths(&self, id: &str) -> Paths {
        let f = |ext: &str| self.dir.join(format!("{id}.{ext}"));
        Paths {
            lock: f("lock"),
            part: f("part"),
            data: f("data"),
            sidecar: f("json"),
            sidecar_tmp: f("json.tmp"),
        }
    }

    /// The key of the image a spec reads, or `None` when it cannot be cached (stdin).
    ///
    /// - Glance: the image id alone (Glance image data is immutable once active; endpoint and
    ///   token do not change the bytes), as Nova keys `_base`.
    /// - URL / path: the URL (query included) or canonical path, plus every expected digest the
    ///   spec gives (`[verify]` digests, `os_hash_value`, `checksum`), so a new expectation
    ///   makes a new entry rather than a permanently failing hit. Without any expected digest
    ///   the first fill's bytes are pinned under that name.
    pub fn key_for(&self, spec: &Spec) -> Option<CacheKey> {
        let (mut material, label) = match &spec.source {
            SourceSpec::Stdin => return None,
            SourceSpec::Glance(g) => (
                format!("glance\n{}\n", g.image_id),
                format!("glance:{}", g.image_id),
            ),
            SourceSpec::Http { url, .. } => (format!("url\n{url}\n"), url.clone()),
            SourceSpec::File(p) => {
                let c = p.canonicalize().unwrap_or_else(|_| p.clone());
                (format!("file\n{}\n", c.display()), c.display().to_string())
            }
        };
        if !matches!(spec.source, SourceSpec::Glance(_)) {
            let v = &spec.verify;
            let mut d: Vec<String> = v
                .digests
                .iter()
                .map(|(a, h)| format!("{a} {}", h.trim().to_ascii_lowercase()))
                .collect();
            if let Some(h) = &v.os_hash_value {
                d.push(format!(
                    "os_hash {} {}",
                    v.os_hash_algo.as_deref().unwrap_or("sha512"),
                    h.trim().to_ascii_lowercase()
                ));
            }
            if let Some(h) = &v.checksum {
                d.push(format!("checksum {}", h.trim().to_ascii_lowercase()));
            }
            d.sort();
            d.dedup();
            for x in d {
                material.push_str(&x);
                material.push('\n');
            }
        }
        let mode = if self.raw { "raw" } else { "original" };
        let id = sidecar::hex(&hash::digest(
            Algorithm::Sha256,
            format!("imgpipe-cache/1 {mode}\n{material}").as_bytes(),
        ));
        Some(CacheKey { id, label })
    }

    /// Find a published entry (and hold it shared for the run) or become the one filler.
    ///
    /// Waits while another thread or process fills the same key; when that fill published,
    /// returns a [`Entry::Hit`] on its result; when it was abandoned, one waiter becomes the
    /// next filler. Stale partial files of the key are removed before a fill starts.
    ///
    /// # Errors
    /// `Io` when the lock or the entry's files cannot be used.
    pub async fn lookup_or_fill(&self, key: &CacheKey) -> Result<Entry> {
        let p = self.paths(&key.id);
        loop {
            let shared = self.lock(&p, Mode::Shared).await?;
            if let Some(sc) = self.read_complete(&p, &key.id) {
                if self.raw && !self.raw_sidecar_ok(&sc) {
                    drop(shared);
                    return Err(self.reject_raw_sidecar(&p, &key.id).await);
                }
                return Ok(Entry::Hit(Hit::new(self, key.clone(), p, sc, shared)));
            }
            drop(shared);
            let excl = self.lock(&p, Mode::Exclusive).await?;
            if self.read_complete(&p, &key.id).is_some() {
                // Someone published while we waited: read it under a shared lock.
                drop(excl);
                continue;
            }
            self.clear_files(&p, false)?;
            return Fill::new(self, key.clone(), p, excl).map(Entry::Fill);
        }
    }

    /// [`Self::key_for`] then [`Self::lookup_or_fill`]; `None` when the source cannot be cached.
    ///
    /// # Errors
    /// As [`Self::lookup_or_fill`].
    pub async fn lookup(&self, spec: &Spec) -> Result<Option<Entry>> {
        match self.key_for(spec) {
            Some(k) => self.lookup_or_fill(&k).await.map(Some),
            None => Ok(None),
        }
    }

    /// A raw sidecar this cache may trust: mode raw, a raw record, and this key's MAC.
    pub(crate) fn raw_sidecar_ok(&self, sc: &Sidecar) -> bool {
        sc.mode == "raw" && sc.raw.is_some() && self.raw_key.as_ref().is_some_and(|k| k.mac_ok(sc))
    }

    /// A raw hit's sidecar must carry this cache's MAC. When it does not (rewritten, copied
    /// from another entry, written with another key), the entry is removed under the exclusive
    /// lock and the run is rejected with `cache.mac`.
    async fn reject_raw_sidecar(&self, p: &Paths, id: &str) -> Error {
        let mut note = "the entry was removed";
        match self.lock(p, Mode::Exclusive).await {
            Ok(excl) => {
                if let Some(sc) = self.read_complete(p, id)
                    && !self.raw_sidecar_ok(&sc)
                    && self.clear_files(p, false).is_err()
                {
                    note = "removing the entry failed";
                }
                drop(excl);
            }
            Err(_) => note = "the entry could not be locked for removal",
        }
        Error::check(
            ErrorKind::DigestMismatch,
            "cache.mac",
            format!(
                "cache entry {id}: its sidecar is not authenticated by this cache's key \
                 (rewritten, copied, or written with another key); {note}"
            ),
        )
    }

    /// The sidecar when the entry is complete: sidecar parses, names this id, and the data file
    /// exists; both are regular files (a symlink is not followed, a FIFO is never opened).
    /// Anything else is "no entry" (a filler under the exclusive lock cleans it up).
    /// Completeness is structural and does not depend on the key (pruning must not remove a
    /// raw entry because the key is not at hand); raw hits check the MAC separately.
    pub(crate) fn read_complete(&self, p: &Paths, id: &str) -> Option<Sidecar> {
        if !std::fs::symlink_metadata(&p.sidecar).ok()?.is_file() {
            return None;
        }
        let text = std::fs::read(&p.sidecar).ok()?;
        let sc: Sidecar = serde_json::from_slice(&text).ok()?;
        let shape_ok = match sc.mode.as_str() {
            "original" => !sc.strong_digests().is_empty(),
            "raw" => sc.raw.is_some(),
            _ => false,
        };
        if sc.id != id || sc.version != SIDECAR_VERSION || !shape_ok {
            return None;
        }
        let meta = std::fs::symlink_metadata(&p.data).ok()?;
        meta.is_file().then_some(sc)
    }

    /// Remove an entry's files (the caller holds its exclusive lock). The sidecar goes first,
    /// so a crash midway leaves an incomplete entry, never a complete one with missing data.
    /// Whatever is not a regular file is quarantined ([`safety::quarantine_odd`]), with a
    /// warning.
    pub(crate) fn clear_files(&self, p: &Paths, lock_too: bool) -> Result<()> {
        let mut list = vec![&p.sidecar, &p.sidecar_tmp, &p.data, &p.part];
        if lock_too {
            list.push(&p.lock);
        }
        for f in list {
            if let Some(w) = safety::quarantine_odd(f)? {
                self.notes.push(w);
                continue;
            }
            match std::fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("cannot remove", f, e)),
            }
        }
        Ok(())
    }

    /// Remove one entry now, waiting for its current users. `Ok(false)`: there was none.
    ///
    /// # Errors
    /// `Io` when its files cannot be removed.
    pub async fn discard(&self, id: &str) -> Result<bool> {
        if !is_id(id) {
            return Ok(false);
        }
        let p = self.paths(id);
        if !p.lock.exists() && !p.sidecar.exists() && !p.data.exists() {
            return Ok(false);
        }
        let l = self.lock(&p, Mode::Exclusive).await?;
        let existed = p.sidecar.exists() || p.data.exists() || p.part.exists();
        self.clear_files(&p, true)?;
        drop(l);
        Ok(existed)
    }
}

/// Read a whole file in 1 MiB blocks, handing each to `f`; returns the byte count.
pub(crate) fn for_each_block(path: &Path, mut f: impl FnMut(&[u8])) -> std::io::Result<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = file.read(&mut buf)?;
        if k == 0 {
            return Ok(n);
        }
        f(buf.get(..k).unwrap_or_default());
        n += k as u64;
    }
}

/// fsync a directory so renames and unlinks in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync directory", dir, e))
}
