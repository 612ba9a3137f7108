//! Listing, re-verification, eviction and pruning.

use std::path::Path;
use std::time::{Duration, SystemTime};

use imgpipe_core::{Error, ErrorKind, Result};
use imgpipe_crypto::hash::{Hasher, hex_eq};
use serde::Serialize;

use crate::lock::{self, Mode};
use crate::raw::RawKey;
use crate::sidecar::{Sidecar, hex};
use crate::{Cache, io_err, is_id};

/// The state of an entry found in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// Published: sidecar and data present.
    Complete,
    /// A fill holds it right now.
    Filling,
    /// Leftovers of a killed or failed fill (removed by [`Cache::prune`]).
    Stale,
}

/// One entry as listed.
#[derive(Debug, Clone, Serialize)]
pub struct EntryInfo {
    /// Entry id.
    pub id: String,
    /// State.
    pub state: EntryState,
    /// Bytes on disk (data file, else partial file).
    pub bytes: u64,
    /// Last use (the data file's mtime), seconds since the epoch.
    pub last_used_unix: Option<u64>,
    /// The sidecar of a complete entry.
    pub sidecar: Option<Sidecar>,
}

/// The result of re-hashing one entry against its sidecar.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyResult {
    /// Entry id.
    pub id: String,
    /// Key label from the sidecar.
    pub label: Option<String>,
    /// Every recorded digest and the size matched.
    pub ok: bool,
    /// Each mismatch: `check: what was seen, what the sidecar says`.
    pub problems: Vec<String>,
    /// The entry was removed because it did not match.
    pub removed: bool,
    /// Bytes re-hashed.
    pub bytes: u64,
}

/// Bounds for [`Cache::evict`].
#[derive(Debug, Clone)]
pub struct EvictPolicy {
    /// Remove least recently used entries until the total is at most this.
    pub max_size: Option<u64>,
    /// Remove entries not used for longer than this.
    pub max_age: Option<Duration>,
    /// The time ages are measured from.
    pub now: SystemTime,
}

/// What [`Cache::evict`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EvictReport {
    /// Removed entries: id and bytes.
    pub removed: Vec<(String, u64)>,
    /// Entries that should have gone but were in use (skipped).
    pub busy: Vec<String>,
    /// Bytes of complete entries left.
    pub remaining_bytes: u64,
}

/// What [`Cache::prune`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Ids whose leftover files were removed.
    pub removed: Vec<String>,
    /// Ids with fills in progress (left alone).
    pub in_progress: Vec<String>,
}

fn mtime_unix(t: SystemTime) -> Option<u64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Re-hash `path` with every algorithm the sidecar records and compare.
/// Mode `raw`: the sidecar's MAC, then the data file's keyed digest and length.
fn rehash_raw(
    path: &Path,
    sc: &Sidecar,
    key: Option<&RawKey>,
) -> std::io::Result<(u64, Vec<String>)> {
    let (Some(key), Some(rec)) = (key, &sc.raw) else {
        return Ok((
            0,
            vec![
                "cache.key: a raw entry can only be verified with the cache key (--key-file)"
                    .into(),
            ],
        ));
    };
    if !key.mac_ok(sc) {
        return Ok((
            0,
            vec!["cache.mac: the sidecar is not authenticated by this key".into()],
        ));
    }
    let (n, h) = crate::raw::keyed_file_digest(key, path)?;
    let mut problems = Vec::new();
    if n != rec.virtual_size {
        problems.push(format!(
            "cache.raw_size: the data file has {n} bytes, the sidecar says {}",
            rec.virtual_size
        ));
    }
    if hex(h.as_bytes()) != rec.keyed_blake3 {
        problems.push("cache.raw_digest: the data file no longer matches its keyed digest".into());
    }
    Ok((n, problems))
}

fn rehash(path: &Path, sc: &Sidecar, key: Option<&RawKey>) -> std::io::Result<(u64, Vec<String>)> {
    if sc.mode == "raw" {
        return rehash_raw(path, sc, key);
    }
    let digests = sc.known_digests();
    let mut hashers: Vec<Hasher> = digests.iter().map(|(a, _)| Hasher::new(*a)).collect();
    let n = crate::for_each_block(path, |part| {
        for h in &mut hashers {
            h.update(part);
        }
    })?;
    let mut problems = Vec::new();
    if n != sc.size {
        problems.push(format!(
            "size: the data file has {n} bytes, the sidecar says {}",
            sc.size
        ));
    }
    for (h, (algo, want)) in hashers.into_iter().zip(digests) {
        let got = h.finish();
        if !hex_eq(&want, &got) {
            problems.push(format!(
                "digest.{algo}: the data file hashes to {}, the sidecar says {want}",
                hex(&got)
            ));
        }
    }
    Ok((n, problems))
}

impl Cache {
    /// Ids present in the directory (from `<id>.<ext>` names), sorted.
    fn ids(&self) -> Result<Vec<String>> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| io_err("cannot list", &self.dir, e))?;
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (id, _) = name.split_once('.')?;
                is_id(id).then(|| id.to_string())
            })
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Every entry in the directory, complete or not.
    ///
    /// # Errors
    /// `Io` when the directory cannot be read.
    pub fn list(&self) -> Result<Vec<EntryInfo>> {
        let mut out = Vec::new();
        for id in self.ids()? {
            let p = self.paths(&id);
            let sidecar = self.read_complete(&p, &id);
            let data = std::fs::symlink_metadata(&p.data).ok();
            let state = if sidecar.is_some() {
                EntryState::Complete
            } else {
                match lock::try_acquire(&p.lock, Mode::Shared) {
                    Ok(Some(_)) => EntryState::Stale,
                    _ => EntryState::Filling,
                }
            };
            if data.is_none() && !p.part.exists() && !p.sidecar.exists() {
                // Only a lock file (or a temporary sidecar): nothing to list.
                continue;
            }
            let bytes = data
                .as_ref()
                .or(std::fs::symlink_metadata(&p.part).ok().as_ref())
                .map(|m| m.len())
                .unwrap_or(0);
            out.push(EntryInfo {
                id,
                state,
                bytes,
                last_used_unix: data.and_then(|m| m.modified().ok()).and_then(mtime_unix),
                sidecar,
            });
        }
        Ok(out)
    }

    /// Re-hash one entry against its sidecar (waiting for a fill in progress). With
    /// `remove_bad`, an entry that does not match (or is incomplete) is removed; a raw entry
    /// this cache has no key for is reported (`cache.key`) but kept.
    ///
    /// # Errors
    /// `Io` when the data file cannot be read or removed.
    pub async fn verify_entry(&self, id: &str, remove_bad: bool) -> Result<VerifyResult> {
        if !is_id(id) {
            return Err(Error::new(
                ErrorKind::Spec,
                format!("{id:?} is not a cache entry id (64 lowercase hex digits)"),
            ));
        }
        let p = self.paths(id);
        let mode = if remove_bad {
            Mode::Exclusive
        } else {
            Mode::Shared
        };
        let held = self.lock(&p, mode).await?;
        let mut r = VerifyResult {
            id: id.to_string(),
            label: None,
            ok: false,
            problems: vec![],
            removed: false,
            bytes: 0,
        };
        match self.read_complete(&p, id) {
            None => {
                r.problems
                    .push("entry.incomplete: no valid sidecar with a data file".into());
            }
            Some(sc) => {
                r.label = Some(sc.label.clone());
                let data = p.data.clone();
                let key = self.raw_key().cloned();
                let (n, problems) =
                    tokio::task::spawn_blocking(move || rehash(&data, &sc, key.as_ref()))
                        .await
                        .map_err(|e| Error::new(ErrorKind::Internal, format!("rehash task: {e}")))?
                        .map_err(|e| io_err("cannot read", &p.data, e))?;
                r.bytes = n;
                r.ok = problems.is_empty();
                r.problems = problems;
            }
        }
        // A raw entry that could not be checked for want of the key is not known to be bad:
        // report it, never remove it.
        let unverifiable =
            !r.problems.is_empty() && r.problems.iter().all(|x| x.starts_with("cache.key:"));
        if !r.ok && remove_bad && !unverifiable {
            self.clear_files(&p, true)?;
            r.removed = true;
        }
        drop(held);
        Ok(r)
    }

    /// [`Self::verify_entry`] for every complete entry.
    ///
    /// # Errors
    /// As [`Self::verify_entry`].
    pub async fn verify_all(&self, remove_bad: bool) -> Result<Vec<VerifyResult>> {
        let mut out = Vec::new();
        for e in self.list()? {
            if e.state == EntryState::Complete {
                out.push(self.verify_entry(&e.id, remove_bad).await?);
            }
        }
        Ok(out)
    }

    /// Remove entries unused for longer than `max_age`, then least recently used ones until
    /// the complete entries total at most `max_size`. Entries in use (a hit streaming from
    /// them, a fill) are skipped and reported as busy.
    ///
    /// # Errors
    /// `Io` when the directory cannot be read or a file cannot be removed.
    pub fn evict(&self, policy: &EvictPolicy) -> Result<EvictReport> {
        let mut entries: Vec<(String, u64, SystemTime)> = Vec::new();
        for id in self.ids()? {
            let p = self.paths(&id);
            if self.read_complete(&p, &id).is_none() {
                continue;
            }
            if let Ok(m) = std::fs::symlink_metadata(&p.data) {
                let t = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                entries.push((id, m.len(), t));
            }
        }
        entries.sort_by_key(|(_, _, t)| *t);
        let mut report = EvictReport::default();
        let mut total: u64 = entries.iter().map(|(_, n, _)| n).sum();
        for (id, n, t) in entries {
            let too_old = policy
                .max_age
                .is_some_and(|age| policy.now.duration_since(t).unwrap_or_default() > age);
            let too_big = policy.max_size.is_some_and(|max| total > max);
            if !(too_old || too_big) {
                continue;
            }
            let p = self.paths(&id);
            match lock::try_acquire(&p.lock, Mode::Exclusive) {
                Ok(Some(l)) => {
                    self.clear_files(&p, true)?;
                    drop(l);
                    total = total.saturating_sub(n);
                    report.removed.push((id, n));
                }
                _ => report.busy.push(id),
            }
        }
        report.remaining_bytes = total;
        Ok(report)
    }

    /// Remove the leftovers of killed or failed fills (partial data, temporary sidecars, data
    /// without a sidecar, unreadable sidecars, lone lock files). Entries being filled right now
    /// are left alone; complete entries are never touched.
    ///
    /// # Errors
    /// `Io` when the directory cannot be read or a file cannot be removed.
    pub fn prune(&self) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        for id in self.ids()? {
            let p = self.paths(&id);
            if self.read_complete(&p, &id).is_some() {
                continue;
            }
            // Nobody holds a lock on a lock path that is not a regular file.
            if let Some(w) = crate::safety::quarantine_odd(&p.lock)? {
                self.notes.push(w);
            }
            match lock::try_acquire(&p.lock, Mode::Exclusive) {
                Ok(Some(l)) => {
                    // Re-check under the lock: a fill may have published meanwhile.
                    if self.read_complete(&p, &id).is_none() {
                        self.clear_files(&p, true)?;
                        report.removed.push(id);
                    }
                    drop(l);
                }
                _ => report.in_progress.push(id),
            }
        }
        Ok(report)
    }
}
