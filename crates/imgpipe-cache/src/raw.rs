//! `mode = "raw"`: entries hold the decoded disk (like Nova's `force_raw_images`).
//!
//! A decoded disk cannot be checked against the image's digests or signature, so a raw entry
//! is trusted only through a key that does not live in the cache directory:
//!
//! - at fill, the run verifies the original bytes as in mode `original`; the decoded extents
//!   are written into the entry and hashed, in the same pass and in whatever order the decoder
//!   emits them, with BLAKE3 keyed by the cache key ([`RawTee`], [`crate::tree`]); the sidecar records what was verified on the original bytes plus that
//!   keyed digest, and is itself authenticated with a second key derived from the same secret
//!   ([`Sidecar::mac`]);
//! - at a hit, the sidecar's MAC is checked before anything else, the request's expectations
//!   are compared with what the fill verified, and the raw bytes stream through the keyed
//!   digest on their way to the sink ([`RawDigestCheck`]), so a changed byte, a rewritten
//!   sidecar or a sidecar copied from another entry is rejected before the sink publishes.
//!
//! Whoever can write the cache directory but cannot read the key file can neither forge an
//! entry nor change one unnoticed; hosts sharing an NFS cache share the key by configuration.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use imgpipe_core::{Chunk, Error, ErrorKind, Finding, Observer, Result};
use serde::{Deserialize, Serialize};

use crate::sidecar::{Sidecar, hex};
use crate::tree::{TreeError, TreeHasher};
use imgpipe_io::PositionalWriter;

/// Context strings of the two keys derived from the key file (BLAKE3 `derive_key`).
const DATA_CONTEXT: &str = "imgpipe-cache 2026-11 raw entry data digest";
const MAC_CONTEXT: &str = "imgpipe-cache 2026-11 raw entry sidecar mac";

/// The secret that authenticates raw entries (never logged, not `Debug`).
#[derive(Clone)]
pub struct RawKey {
    data: [u8; 32],
    mac: [u8; 32],
}

impl RawKey {
    /// Derive the two keys from key-file material (at least 32 bytes).
    pub fn from_secret(secret: &[u8]) -> Self {
        RawKey {
            data: blake3::derive_key(DATA_CONTEXT, secret),
            mac: blake3::derive_key(MAC_CONTEXT, secret),
        }
    }

    /// Load the key file, creating it (32 random bytes, mode 0600, parents 0700) when absent.
    /// Refused: a key file inside `cache_dir` (it would sit beside what it protects), one
    /// that group or others can access, one shorter than 32 bytes.
    ///
    /// # Errors
    /// `Spec` for the refusals above, `Io` when it cannot be read or created.
    pub fn load_or_create(path: &Path, cache_dir: &Path) -> Result<Self> {
        Self::load_inner(path, cache_dir, true)
    }

    /// [`Self::load_or_create`] without creating: a missing key file is an `Io` error.
    ///
    /// # Errors
    /// As [`Self::load_or_create`].
    pub fn load(path: &Path, cache_dir: &Path) -> Result<Self> {
        Self::load_inner(path, cache_dir, false)
    }

    fn load_inner(path: &Path, cache_dir: &Path, create: bool) -> Result<Self> {
        let spec_err = |msg: String| Error::new(ErrorKind::Spec, msg).with_check("cache.key_file");
        let parent = path.parent().unwrap_or(Path::new("/"));
        let abs_parent = parent
            .canonicalize()
            .unwrap_or_else(|_| parent.to_path_buf());
        let abs_dir = cache_dir
            .canonicalize()
            .unwrap_or_else(|_| cache_dir.to_path_buf());
        // The file itself too: a symlink outside the directory may point into it.
        let abs_file = path.canonicalize().ok();
        if abs_parent.starts_with(&abs_dir) || abs_file.is_some_and(|f| f.starts_with(&abs_dir)) {
            return Err(spec_err(format!(
                "cache key_file {} is inside the cache directory {}: the key must live where \
                 writers of the cache cannot read it",
                path.display(),
                abs_dir.display()
            )));
        }
        if create && !path.exists() {
            create_key_file(path)?;
        }
        let mut f = File::open(path).map_err(|e| key_io("cannot open", path, e))?;
        let meta = f.metadata().map_err(|e| key_io("cannot stat", path, e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(spec_err(format!(
                "cache key_file {} is accessible to group or others (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            )));
        }
        let mut secret = Vec::with_capacity(64);
        (&mut f)
            .take(4096)
            .read_to_end(&mut secret)
            .map_err(|e| key_io("cannot read", path, e))?;
        if secret.len() < 32 {
            return Err(spec_err(format!(
                "cache key_file {} holds {} bytes; at least 32 random bytes are needed",
                path.display(),
                secret.len()
            )));
        }
        let key = RawKey::from_secret(&secret);
        secret.iter_mut().for_each(|b| *b = 0);
        Ok(key)
    }

    /// A keyed hasher of raw entry data.
    pub(crate) fn data_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.data)
    }

    /// The MAC of a sidecar (its `mac` field excluded).
    pub(crate) fn mac_of(&self, sc: &Sidecar) -> String {
        let mut bare = sc.clone();
        bare.mac = None;
        let text = serde_json::to_vec(&bare).unwrap_or_default();
        hex(blake3::keyed_hash(&self.mac, &text).as_bytes())
    }

    /// Whether a sidecar carries this key's MAC.
    pub(crate) fn mac_ok(&self, sc: &Sidecar) -> bool {
        match &sc.mac {
            // Constant-time comparison of the 32-byte values.
            Some(m) => {
                blake3::Hash::from_hex(m.as_bytes()).ok()
                    == blake3::Hash::from_hex(self.mac_of(sc)).ok()
            }
            None => false,
        }
    }
}

fn key_io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("cache key_file: {what} {}", path.display()), e)
}

fn create_key_file(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| key_io("cannot create the directory of", path, e))?;
    }
    let mut secret = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(&mut secret))
        .map_err(|e| key_io("cannot get random bytes for", path, e))?;
    // Written whole under a temporary name, then linked into place: a concurrent first run
    // never reads a created but not yet written key file, and whoever links first wins.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{seq}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let res = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&secret).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::hard_link(&tmp, path));
    secret.iter_mut().for_each(|b| *b = 0);
    let _ = std::fs::remove_file(&tmp);
    match res {
        Ok(()) => Ok(()),
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(key_io("cannot create", path, e)),
    }
}

/// What the fill of a raw entry verified about the decoded disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRecord {
    /// Bytes of the decoded disk (the data file's length).
    pub virtual_size: u64,
    /// BLAKE3, keyed with the cache key, of the whole decoded disk (zeros included).
    pub keyed_blake3: String,
    /// Set when the fill could not compute the digest in its pass (output too fragmented for
    /// the in-pass tree's memory bounds) and read the entry back instead: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reread: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct RawTeeState {
    /// `Some` once the tee saw the end of the disk and its file is synced.
    pub done: Option<RawRecord>,
    pub error: Option<String>,
}

/// Writes the decoded disk into `<id>.part` (positional writes, O_DIRECT where possible, zero
/// extents and all-zero blocks left as holes) and computes its keyed BLAKE3 in the same pass,
/// whatever order the decoder emits extents in ([`crate::tree`]: aligned subtrees merged as
/// they complete; no re-read at the end). Only output too fragmented for the tree's memory
/// bounds makes the tee hash its file once at the end instead, and the fill says so. Failures
/// never fail the run: the entry is not published and a warning says why.
pub struct RawTee {
    out: PositionalWriter,
    path: PathBuf,
    key: RawKey,
    tree: Option<TreeHasher>,
    reread: Option<String>,
    end: u64,
    state: Arc<Mutex<RawTeeState>>,
    failed: bool,
}

impl RawTee {
    pub(crate) fn new(
        file: File,
        path: PathBuf,
        key: RawKey,
        state: Arc<Mutex<RawTeeState>>,
    ) -> Self {
        RawTee {
            out: PositionalWriter::new(file, &path),
            path,
            tree: Some(TreeHasher::new(key.data)),
            key,
            reread: None,
            end: 0,
            state,
            failed: false,
        }
    }

    fn fail(&mut self, why: String) {
        self.failed = true;
        if let Ok(mut s) = self.state.lock() {
            s.error.get_or_insert(why);
        }
    }

    /// One decoded extent: `data` for a data extent, `None` for `len` bytes of zeros.
    pub fn extent(&mut self, offset: u64, data: Option<&[u8]>, len: u64) {
        if self.failed {
            return;
        }
        if let Some(d) = data
            && let Err(e) = self.out.write_at(offset, d)
        {
            self.fail(format!("writing at offset {offset}: {e}"));
            return;
        }
        self.end = self.end.max(offset.saturating_add(len));
        if let Some(t) = self.tree.as_mut()
            && let Err(e) = t.add(offset, data, len)
        {
            match e {
                TreeError::TooFragmented => {
                    self.tree = None;
                    self.reread = Some(e.to_string());
                }
                e => self.fail(format!("the decoded extents are inconsistent: {e}")),
            }
        }
    }

    /// The disk ended at `virtual_size`: size the file, sync it, finish the digest.
    pub fn finish(mut self, virtual_size: u64) {
        if self.failed {
            return;
        }
        if self.end > virtual_size {
            self.fail(format!(
                "the decoder wrote up to {} but the disk has {virtual_size} bytes",
                self.end
            ));
            return;
        }
        if let Err(e) = self.out.finish(virtual_size) {
            self.fail(format!("sizing / syncing {}: {e}", self.path.display()));
            return;
        }
        let digest = match self.tree.take() {
            Some(t) => t.finish(virtual_size).map_err(|e| e.to_string()),
            None => keyed_file_digest(&self.key, &self.path)
                .map(|(_, h)| h)
                .map_err(|e| format!("hashing {}: {e}", self.path.display())),
        };
        match digest {
            Ok(h) => {
                if let Ok(mut s) = self.state.lock() {
                    s.done = Some(RawRecord {
                        virtual_size,
                        keyed_blake3: hex(h.as_bytes()),
                        reread: self.reread.take(),
                    });
                }
            }
            Err(e) => self.fail(e),
        }
    }
}

/// The keyed digest of a whole file and its length.
pub(crate) fn keyed_file_digest(key: &RawKey, path: &Path) -> std::io::Result<(u64, blake3::Hash)> {
    let mut h = key.data_hasher();
    let n = crate::for_each_block(path, |b| {
        h.update(b);
    })?;
    Ok((n, h.finalize()))
}

/// The check a raw hit streams its bytes through: keyed BLAKE3 and length against the
/// authenticated sidecar. Fails the run (`cache.raw_digest`, `cache.raw_size`) before the
/// sink publishes.
pub struct RawDigestCheck {
    hasher: blake3::Hasher,
    want: RawRecord,
}

impl RawDigestCheck {
    pub(crate) fn new(key: &RawKey, want: RawRecord) -> Self {
        RawDigestCheck {
            hasher: key.data_hasher(),
            want,
        }
    }
}

impl Observer for RawDigestCheck {
    fn name(&self) -> String {
        "cache:raw-digest".into()
    }

    fn update(&mut self, chunk: &Chunk) -> Result<()> {
        if chunk.end() > self.want.virtual_size {
            return Err(Error::check(
                ErrorKind::SizeMismatch,
                "cache.raw_size",
                format!(
                    "the cached raw disk is longer than the {} bytes its sidecar records",
                    self.want.virtual_size
                ),
            ));
        }
        self.hasher.update(&chunk.data);
        Ok(())
    }

    fn finish(self: Box<Self>, total: u64) -> Result<Vec<Finding>> {
        if total != self.want.virtual_size {
            return Err(Error::check(
                ErrorKind::SizeMismatch,
                "cache.raw_size",
                format!(
                    "the cached raw disk has {total} bytes, its sidecar records {}",
                    self.want.virtual_size
                ),
            ));
        }
        let got = hex(self.hasher.finalize().as_bytes());
        if got != self.want.keyed_blake3 {
            return Err(Error::check(
                ErrorKind::DigestMismatch,
                "cache.raw_digest",
                "the cached raw disk no longer matches the keyed digest its fill recorded \
                 (tampering or bit rot)",
            ));
        }
        Ok(vec![Finding::Passed {
            check: "cache.raw_digest".into(),
        }])
    }
}
