//! Who may write the cache, and what an entry's files may be.
//!
//! A cache directory that someone else can write is a cache someone else can fill: in mode
//! `original` a planted `<id>.json` + `<id>.data` pair is a hit for a request that expects no
//! digest, and a lock file replaced under a waiter breaks single flight. So the directory is
//! checked before every use ([`check_dir`], check `cache.dir`), and refused (exit 2, like an
//! unusable key file) when:
//!
//! - the configured path is a symlink (its last component; symlinks higher up are resolved);
//! - it is not a directory;
//! - it is owned by a user other than the effective user or root;
//! - others can write it (sticky bit or not: a sticky directory still lets anyone create the
//!   files of an entry that does not exist yet);
//! - its group can write it and that group is not the process's effective group (a group
//!   shared on purpose, e.g. `nova`, is allowed);
//! - an ancestor directory is writable by others without the sticky bit (whoever can write it
//!   can rename the cache directory away and put another one in its place).
//!
//! Entries are flat: `<id>.data`, `<id>.json`, `<id>.part`, `<id>.json.tmp`, `<id>.lock`, all
//! regular files. Anything else found at one of those names (a directory, a symlink, a FIFO,
//! a socket, a device) is quarantined: removed (a directory with its contents, a symlink
//! itself and never what it points to), or, when it cannot be removed, renamed aside to
//! `quarantine.<name>.<nanoseconds>`; a warning names the check (`cache.entry_file`) and the
//! entry is filled again in the same run.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use imgpipe_core::{Error, ErrorKind, Result};

/// Check name of a refused cache directory.
pub const CHECK_DIR: &str = "cache.dir";
/// Check name of an entry file that was not a regular file.
pub const CHECK_ENTRY_FILE: &str = "cache.entry_file";

fn refuse(msg: String) -> Error {
    Error::check(ErrorKind::Spec, CHECK_DIR, msg)
}

/// What a non-regular file type is called in messages; `None` for a regular file.
pub(crate) fn odd_type(meta: &std::fs::Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_symlink() {
        Some("a symlink")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_block_device() || t.is_char_device() {
        Some("a device node")
    } else {
        Some("not a regular file")
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn egid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

/// Refuse a cache directory others can write (the rules are in the module docs).
/// `given` is the path as configured, `canonical` the same directory resolved.
///
/// # Errors
/// `Spec` with check `cache.dir` for each refusal; `Io` when the directory cannot be examined.
pub fn check_dir(given: &Path, canonical: &Path) -> Result<()> {
    let lmeta =
        std::fs::symlink_metadata(given).map_err(|e| crate::io_err("cannot examine", given, e))?;
    if lmeta.file_type().is_symlink() {
        return Err(refuse(format!(
            "cache dir {} is a symlink (to {}): configure the directory itself, so nobody can \
             redirect the cache by replacing the link",
            given.display(),
            canonical.display()
        )));
    }
    if !lmeta.is_dir() {
        return Err(refuse(format!(
            "cache dir {} is {}, not a directory",
            given.display(),
            odd_type(&lmeta).unwrap_or("not a directory")
        )));
    }
    let mode = lmeta.mode() & 0o7777;
    let (uid, gid) = (lmeta.uid(), lmeta.gid());
    if uid != euid() && uid != 0 {
        return Err(refuse(format!(
            "cache dir {} is owned by uid {uid}, not by this user (uid {}) or root: its owner \
             could plant entries",
            given.display(),
            euid()
        )));
    }
    if mode & 0o002 != 0 {
        return Err(refuse(format!(
            "cache dir {} is writable by others (mode {mode:o}); anyone could plant entries \
             (the sticky bit does not prevent that): chmod o-w it",
            given.display()
        )));
    }
    if mode & 0o020 != 0 && gid != egid() {
        return Err(refuse(format!(
            "cache dir {} is writable by group {gid}, which is not this process's group ({}): \
             chmod g-w it, or run imgpipe with that group",
            given.display(),
            egid()
        )));
    }
    for a in canonical.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(a) else {
            continue;
        };
        let am = m.mode() & 0o7777;
        if am & 0o002 != 0 && am & 0o1000 == 0 {
            return Err(refuse(format!(
                "cache dir {}: its parent {} is writable by others without the sticky bit \
                 (mode {am:o}); anyone could replace the cache directory",
                given.display(),
                a.display()
            )));
        }
    }
    Ok(())
}

/// Warnings collected while a [`crate::Cache`] works (quarantined entry files), for the run's
/// report.
#[derive(Clone, Default)]
pub(crate) struct Notes(Arc<Mutex<Vec<String>>>);

impl Notes {
    pub(crate) fn push(&self, s: String) {
        if let Ok(mut v) = self.0.lock() {
            v.push(s);
        }
    }

    pub(crate) fn take(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// Remove whatever is at `path` when it is not a regular file (the caller decides when that
/// is safe: under the entry's exclusive lock, or for a lock path, which nobody can hold while
/// it is not a regular file). `Ok(Some(warning))` when something was quarantined.
///
/// # Errors
/// `Io` when it can be neither removed nor renamed aside.
pub(crate) fn quarantine_odd(path: &Path) -> Result<Option<String>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::io_err("cannot examine", path, e)),
    };
    let Some(what) = odd_type(&meta) else {
        return Ok(None);
    };
    // A directory goes with its contents (remove_dir_all never follows symlinks inside it);
    // anything else is unlinked itself (a symlink's target is never touched).
    let removed = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    let done = match removed {
        Ok(()) => "removed".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "removed".to_string(),
        // Replaced by a regular file meanwhile (a concurrent run quarantined it and created
        // the lock file): nothing left to do, and that file must not be moved.
        Err(_)
            if std::fs::symlink_metadata(path)
                .map(|m| m.is_file())
                .unwrap_or(true) =>
        {
            "removed".to_string()
        }
        Err(e) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let aside = path.with_file_name(format!("quarantine.{name}.{nanos}"));
            std::fs::rename(path, &aside).map_err(|e2| {
                crate::io_err(
                    format!(
                        "{CHECK_ENTRY_FILE}: {what} where a regular file belongs could be \
                         neither removed ({e}) nor renamed aside ({e2}):"
                    ),
                    path,
                    e2,
                )
            })?;
            format!("moved to {} (removing it failed: {e})", aside.display())
        }
    };
    Ok(Some(format!(
        "cache: {} was {what}, not a regular file (check {CHECK_ENTRY_FILE}); it was {done} \
         (an entry whose files are not regular files is filled again)",
        path.display()
    )))
}
