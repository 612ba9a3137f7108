//! Entry locks: an in-process reader/writer lock per entry, then `flock(2)` on `<id>.lock`.
//!
//! `flock` locks belong to the open file description, so two `open`s in one process conflict
//! like two processes do on a local file system. The in-process layer keeps that true where
//! `flock` is emulated with POSIX record locks (Linux NFS clients since 2.6.12), which do not
//! conflict between threads of one process. Lock files may be unlinked by eviction while their
//! holder has them locked; [`acquire`] re-checks after locking that the path still names the
//! file it locked, so a waiter never ends up holding a lock on an orphaned inode.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// Shared (readers of a published entry) or exclusive (filler, evictor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Shared,
    Exclusive,
}

enum Local {
    Read(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Write(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

/// A held entry lock. Dropping it releases both layers (closing the file drops the flock).
pub(crate) struct EntryLock {
    _file: File,
    _local: Local,
    mode: Mode,
}

impl EntryLock {
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }
}

fn local_lock(path: &Path) -> Arc<RwLock<()>> {
    static TABLE: OnceLock<Mutex<HashMap<PathBuf, Arc<RwLock<()>>>>> = OnceLock::new();
    let table = TABLE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut t = match table.lock() {
        Ok(t) => t,
        Err(poisoned) => poisoned.into_inner(),
    };
    t.entry(path.to_path_buf())
        .or_insert_with(|| Arc::new(RwLock::new(())))
        .clone()
}

fn flock(file: &File, mode: Mode, block: bool) -> io::Result<bool> {
    let mut op = match mode {
        Mode::Shared => libc::LOCK_SH,
        Mode::Exclusive => libc::LOCK_EX,
    };
    if !block {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: `file` owns a valid open descriptor for the duration of the call; flock only
        // reads the descriptor number and the operation flags.
        let r = unsafe { libc::flock(file.as_raw_fd(), op) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !block => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Open (creating) and flock `path`, retrying when the file was unlinked or replaced between
/// our `open` and the moment the lock was granted. `Ok(None)`: not blocking and busy.
/// A symlink is not followed (`ELOOP`), and anything but a regular file is an error (the
/// cache quarantines such a path before locking it).
fn lock_file(path: &Path, mode: Mode, block: bool) -> io::Result<Option<File>> {
    loop {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        if !f.metadata()?.is_file() {
            return Err(io::Error::other(
                "cache.entry_file: the lock path is not a regular file",
            ));
        }
        if !flock(&f, mode, block)? {
            return Ok(None);
        }
        let held = f.metadata()?;
        match std::fs::symlink_metadata(path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(Some(f)),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Take the entry lock at `path`, waiting as long as needed (the wait does not block the
/// async runtime: the `flock` runs on the blocking pool).
pub(crate) async fn acquire(path: &Path, mode: Mode) -> io::Result<EntryLock> {
    let local = local_lock(path);
    let local = match mode {
        Mode::Shared => Local::Read(local.read_owned().await),
        Mode::Exclusive => Local::Write(local.write_owned().await),
    };
    let p = path.to_path_buf();
    let file = tokio::task::spawn_blocking(move || lock_file(&p, mode, true))
        .await
        .map_err(|e| io::Error::other(format!("lock task failed: {e}")))??;
    match file {
        Some(f) => Ok(EntryLock {
            _file: f,
            _local: local,
            mode,
        }),
        None => Err(io::Error::other("a blocking flock returned busy")),
    }
}

/// Take the entry lock only if nobody holds a conflicting one right now.
pub(crate) fn try_acquire(path: &Path, mode: Mode) -> io::Result<Option<EntryLock>> {
    let local = local_lock(path);
    let local = match mode {
        Mode::Shared => match local.try_read_owned() {
            Ok(g) => Local::Read(g),
            Err(_) => return Ok(None),
        },
        Mode::Exclusive => match local.try_write_owned() {
            Ok(g) => Local::Write(g),
            Err(_) => return Ok(None),
        },
    };
    Ok(lock_file(path, mode, false)?.map(|f| EntryLock {
        _file: f,
        _local: local,
        mode,
    }))
}
