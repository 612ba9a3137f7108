//! Atomic file sink: an unnamed temporary file beside the target → fsync → link under a unique
//! name → rename over the target → fsync directory.
//!
//! The temporary file belongs to this run alone. Where the filesystem supports it, it is an
//! `O_TMPFILE` (no name at all until publish, so a killed run leaves nothing behind); elsewhere
//! (NFS, FUSE) it is `NAME.imgpipe-<random>.part`, created with `O_CREAT|O_EXCL|O_NOFOLLOW`.
//! Either way a planted symlink or an existing file is never opened, and two runs on one
//! target never share an inode: each publishes only the bytes it wrote itself.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use imgpipe_core::{DiskExtent, DiskInfo, Error, ErrorKind, Result, Sink, SinkReport};

use super::direct::{ALIGN, Window as Staging};

/// Start write-back of this much dirty data at a time (buffered fallback only).
const WRITE_BEHIND: u64 = 32 << 20;
/// Largest zero buffer written at once when zeros must be written.
const ZERO_BUF: usize = 1 << 20;
/// Alignment of O_DIRECT buffers, offsets and lengths.
const DIO_ALIGN: u64 = ALIGN as u64;
/// Unique names tried before giving up (each collision is another run's live file).
const NAME_TRIES: u32 = 16;

/// How the file sink treats zero runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileZeroes {
    /// Leave holes (the temporary file is new, so holes read as zeros).
    Skip,
    /// Write zeros explicitly (fully allocated output).
    Write,
}

/// The run's temporary file.
enum Temp {
    /// Nothing created yet.
    None,
    /// An `O_TMPFILE`: no directory entry until [`link_unique`] gives it one at publish.
    Anonymous,
    /// A uniquely named file this run created with `O_EXCL|O_NOFOLLOW`.
    Named(PathBuf),
}

/// Writes a disk image to a new file published atomically at `target`.
pub struct FileSink {
    target: PathBuf,
    dir: PathBuf,
    name: std::ffi::OsString,
    temp: Temp,
    file: Option<Arc<File>>,
    /// The same file opened with O_DIRECT, when the filesystem supports it.
    direct: Option<Arc<File>>,
    staging: Option<Staging>,
    zeroes: FileZeroes,
    end: u64,
    report: SinkReport,
    flushed_to: u64,
    written_since_flush: u64,
    /// Try `O_TMPFILE` first (only the unit tests turn it off, to test the named fallback).
    try_tmpfile: bool,
}

/// A random name beside the target: `NAME.imgpipe-<16 hex>.part`.
fn unique_name(name: &std::ffi::OsStr) -> std::ffi::OsString {
    let mut r = [0u8; 8];
    if openssl::rand::rand_bytes(&mut r).is_err() {
        // Not secret, only unique: fall back to the clock and the pid.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        r = (t ^ (u64::from(std::process::id()) << 32)).to_le_bytes();
    }
    let mut n = name.to_os_string();
    n.push(format!(".imgpipe-{}.part", hex_of(&r)));
    n
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Create a new, uniquely named file in `dir` (never following or reusing anything there).
fn create_named(dir: &Path, name: &std::ffi::OsStr) -> std::io::Result<(File, PathBuf)> {
    let mut last = None;
    for _ in 0..NAME_TRIES {
        let path = dir.join(unique_name(name));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no unique name found")))
}

/// Give the `O_TMPFILE` behind `file` a unique name in `dir` (`linkat` through `/proc`).
fn link_unique(file: &File, dir: &Path, name: &std::ffi::OsStr) -> std::io::Result<PathBuf> {
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(std::io::Error::other)?;
    let mut last = None;
    for _ in 0..NAME_TRIES {
        let path = dir.join(unique_name(name));
        let to = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: both arguments are valid NUL-terminated strings that outlive the call;
        // linkat only reads them. The fd named by `from` stays open because `file` is borrowed.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if rc == 0 {
            return Ok(path);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e);
        }
        last = Some(e);
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no unique name found")))
}

impl FileSink {
    /// A sink for `target`. Nothing is created until the first write.
    pub fn new(target: &Path, zeroes: FileZeroes) -> Result<Self> {
        let name = target.file_name().ok_or_else(|| {
            Error::new(
                ErrorKind::Spec,
                format!("sink path {} has no file name", target.display()),
            )
        })?;
        if target.is_dir() {
            return Err(Error::new(
                ErrorKind::Spec,
                format!(
                    "sink path {} is a directory; give a file name",
                    target.display()
                ),
            ));
        }
        let dir = target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Ok(FileSink {
            target: target.to_path_buf(),
            dir,
            name: name.to_os_string(),
            temp: Temp::None,
            file: None,
            direct: None,
            staging: None,
            zeroes,
            end: 0,
            report: SinkReport {
                target: target.display().to_string(),
                zero_policy: match zeroes {
                    FileZeroes::Skip => "skip".into(),
                    FileZeroes::Write => "write".into(),
                },
                ..Default::default()
            },
            flushed_to: 0,
            written_since_flush: 0,
            try_tmpfile: true,
        })
    }

    /// The temporary file's name, while it has one (`None` before the first write and for an
    /// unnamed `O_TMPFILE`).
    pub fn temp_path(&self) -> Option<&Path> {
        match &self.temp {
            Temp::Named(p) => Some(p),
            Temp::None | Temp::Anonymous => None,
        }
    }

    /// What messages call the temporary file.
    fn temp_shown(&self) -> String {
        match &self.temp {
            Temp::Named(p) => p.display().to_string(),
            Temp::None | Temp::Anonymous => {
                format!("the temporary file for {}", self.target.display())
            }
        }
    }

    fn open(&mut self) -> Result<Arc<File>> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        // The O_TMPFILE is named at publish through /proc/self/fd: without /proc, use a name.
        let anon = if self.try_tmpfile && Path::new("/proc/self/fd").is_dir() {
            OpenOptions::new()
                .write(true)
                .mode(0o666)
                .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
                .open(&self.dir)
        } else {
            Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        };
        let f = match anon {
            Ok(f) => {
                self.temp = Temp::Anonymous;
                f
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(Error::io(
                    format!("cannot create a file in {}", self.dir.display()),
                    e,
                ));
            }
            Err(_) => {
                let (f, p) = create_named(&self.dir, &self.name).map_err(|e| {
                    Error::io(format!("cannot create a file in {}", self.dir.display()), e)
                })?;
                self.temp = Temp::Named(p);
                f
            }
        };
        let f = Arc::new(f);
        self.file = Some(f.clone());
        // O_DIRECT keeps gigabytes of dirty pages (and a long final fsync) out of the picture;
        // filesystems without it (tmpfs) fall back to buffered writes with write-behind. The
        // second descriptor is opened through /proc, so it is this run's inode whatever now
        // stands at any path.
        self.direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", f.as_raw_fd()))
            .ok()
            .map(Arc::new);
        if self.direct.is_some() {
            self.staging = Some(Staging::new());
        }
        Ok(f)
    }

    /// Remove the named temporary file, if any (an `O_TMPFILE` vanishes with its descriptors).
    fn discard(&mut self) -> std::io::Result<()> {
        self.file = None;
        self.direct = None;
        match std::mem::replace(&mut self.temp, Temp::None) {
            Temp::Named(p) => match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Temp::None | Temp::Anonymous => Ok(()),
        }
    }

    /// Write the staged window: its aligned part with O_DIRECT, any unaligned tail buffered.
    async fn flush_stage(&mut self) -> Result<()> {
        let (Some(direct), Some(file)) = (self.direct.clone(), self.file.clone()) else {
            return Ok(());
        };
        let Some(stage) = self.staging.take() else {
            return Ok(());
        };
        if stage.len == 0 {
            self.staging = Some(stage);
            return Ok(());
        }
        let part = self.temp_shown();
        let what = format!("writing {part} at byte {}", stage.off);
        let mut stage = Self::blocking(
            move || {
                let w = stage.filled();
                let aligned = w.len() - w.len() % DIO_ALIGN as usize;
                if aligned > 0 {
                    direct.write_all_at(&w[..aligned], stage.off)?;
                }
                if aligned < w.len() {
                    file.write_all_at(&w[aligned..], stage.off + aligned as u64)?;
                }
                Ok(stage)
            },
            what,
        )
        .await?;
        stage.len = 0;
        self.staging = Some(stage);
        Ok(())
    }

    /// Stage `data` at `offset` for O_DIRECT writing (contiguous runs are coalesced).
    async fn write_direct(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let mut pos = 0usize;
        while pos < data.len() {
            let off = offset + pos as u64;
            let contiguous = self
                .staging
                .as_ref()
                .is_some_and(|s| s.len > 0 && s.off + s.len as u64 == off && s.room() > 0);
            if !contiguous {
                self.flush_stage().await?;
                if !off.is_multiple_of(DIO_ALIGN) {
                    // An unaligned start: write up to the next boundary through the page cache.
                    let n = ((DIO_ALIGN - off % DIO_ALIGN) as usize).min(data.len() - pos);
                    let file = self.open()?;
                    let head = data[pos..pos + n].to_vec();
                    Self::blocking(
                        move || file.write_all_at(&head, off),
                        format!("writing {} at byte {off}", self.temp_shown()),
                    )
                    .await?;
                    pos += n;
                    continue;
                }
                if let Some(s) = self.staging.as_mut() {
                    s.off = off;
                }
            }
            let Some(s) = self.staging.as_mut() else {
                return Err(Error::new(
                    ErrorKind::Internal,
                    "O_DIRECT staging buffer missing",
                ));
            };
            pos += s.push(&data[pos..]);
            if s.room() == 0 {
                self.flush_stage().await?;
            }
        }
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
        what: String,
    ) -> Result<T> {
        match tokio::task::spawn_blocking(f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::io(what, e)),
            Err(e) => Err(Error::new(
                ErrorKind::Internal,
                format!("{what}: worker failed: {e}"),
            )),
        }
    }

    /// Ask the kernel to start writing back what we wrote so far (not waiting for it).
    fn write_behind(file: &File, from: u64, to: u64) {
        if to <= from {
            return;
        }
        // SAFETY: sync_file_range only reads the arguments; the fd is open for the call's
        // duration because `file` is borrowed. Failure only loses an optimisation.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                from as libc::off64_t,
                (to - from) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
}

#[async_trait]
impl Sink for FileSink {
    fn describe(&self) -> String {
        self.target.display().to_string()
    }

    async fn begin(&mut self, info: &DiskInfo) -> Result<()> {
        self.open()?;
        if info.encrypted {
            // Ciphertext of zeros is not zeros: the encryptor never emits Zero extents, but be
            // explicit about what this sink would do with one.
            self.zeroes = FileZeroes::Write;
            self.report.zero_policy = "write".into();
        }
        Ok(())
    }

    async fn write(&mut self, extent: DiskExtent) -> Result<()> {
        let file = self.open()?;
        self.end = self.end.max(extent.end());
        match extent {
            DiskExtent::Data { offset, data } => {
                let n = data.len() as u64;
                if self.direct.is_some() {
                    self.write_direct(offset, &data).await?;
                } else {
                    let part = self.temp_shown();
                    Self::blocking(
                        move || file.write_all_at(&data, offset),
                        format!("writing {part} at byte {offset}"),
                    )
                    .await?;
                }
                self.report.bytes_written += n;
                self.written_since_flush += n;
            }
            DiskExtent::Zero { offset, len } => match self.zeroes {
                FileZeroes::Skip => self.report.zero_bytes_skipped += len,
                FileZeroes::Write => {
                    self.flush_stage().await?;
                    let part = self.temp_shown();
                    Self::blocking(
                        move || {
                            let zeros = vec![0u8; ZERO_BUF.min(len as usize)];
                            let mut pos = offset;
                            while pos < offset + len {
                                let n = (offset + len - pos).min(zeros.len() as u64) as usize;
                                file.write_all_at(&zeros[..n], pos)?;
                                pos += n as u64;
                            }
                            Ok(())
                        },
                        format!("writing zeros to {part} at byte {offset}"),
                    )
                    .await?;
                    self.report.zero_bytes_written += len;
                    self.written_since_flush += len;
                }
            },
        }
        if self.written_since_flush >= WRITE_BEHIND
            && self.direct.is_none()
            && let Some(f) = &self.file
        {
            Self::write_behind(f, self.flushed_to, self.end);
            self.flushed_to = self.end;
            self.written_since_flush = 0;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<SinkReport> {
        let file = self.open()?;
        if let Err(e) = self.flush_stage().await {
            let _ = self.discard();
            return Err(e);
        }
        self.direct = None;
        let end = self.end;
        let named = match &self.temp {
            Temp::Named(p) => Some(p.clone()),
            Temp::None | Temp::Anonymous => None,
        };
        let (dir, name, target) = (self.dir.clone(), self.name.clone(), self.target.clone());
        let what = format!("publishing {}", target.display());
        let r = Self::blocking(
            move || {
                // Trailing zero runs were skipped: extend to the full size (reads as zeros).
                file.set_len(end)?;
                file.sync_all()?;
                let temp = match named {
                    Some(p) => p,
                    None => link_unique(&file, &dir, &name)?,
                };
                if let Err(e) = std::fs::rename(&temp, &target) {
                    let _ = std::fs::remove_file(&temp);
                    return Err(e);
                }
                File::open(&dir)?.sync_all()?;
                Ok(())
            },
            what,
        )
        .await;
        if let Err(e) = r {
            let _ = self.discard();
            return Err(e);
        }
        self.report.size = end;
        Ok(self.report.clone())
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        let shown = self.temp_shown();
        self.discard()
            .map_err(|e| Error::io(format!("cannot remove {shown}"), e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    async fn write_some(sink: &mut FileSink, seed: u8) {
        sink.begin(&DiskInfo::default()).await.unwrap();
        let data: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i as u8) ^ seed).collect();
        sink.write(DiskExtent::Data {
            offset: 0,
            data: Bytes::from(data),
        })
        .await
        .unwrap();
    }

    /// The `O_TMPFILE` path: no directory entry exists until publish.
    #[tokio::test]
    async fn tmpfile_has_no_name_until_published() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.raw");
        let mut sink = FileSink::new(&target, FileZeroes::Skip).unwrap();
        write_some(&mut sink, 1).await;
        assert!(
            matches!(sink.temp, Temp::Anonymous),
            "the test directory (ext4, xfs, btrfs or tmpfs) supports O_TMPFILE"
        );
        assert!(names(dir.path()).is_empty());
        Box::new(sink).finish().await.unwrap();
        assert_eq!(names(dir.path()), vec!["disk.raw"]);

        let mut sink = FileSink::new(&target, FileZeroes::Skip).unwrap();
        write_some(&mut sink, 2).await;
        Box::new(sink).abort().await.unwrap();
        assert_eq!(names(dir.path()), vec!["disk.raw"]);
        assert_eq!(std::fs::read(&target).unwrap()[1], 1 ^ 1);
    }

    /// The named fallback (filesystems without `O_TMPFILE`): a unique name per run, created
    /// exclusively; the old predictable name, even as a symlink, is never touched.
    #[tokio::test]
    async fn named_fallback_is_unique_exclusive_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let target = d.join("disk.raw");
        let victim = d.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, d.join("disk.raw.part")).unwrap();
        let mut a = FileSink::new(&target, FileZeroes::Skip).unwrap();
        a.try_tmpfile = false;
        let mut b = FileSink::new(&target, FileZeroes::Skip).unwrap();
        b.try_tmpfile = false;
        write_some(&mut a, 3).await;
        write_some(&mut b, 4).await;
        let (pa, pb) = (
            a.temp_path().unwrap().to_path_buf(),
            b.temp_path().unwrap().to_path_buf(),
        );
        assert_ne!(pa, pb, "two runs share a temporary file");
        for p in [&pa, &pb] {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            assert!(
                n.starts_with("disk.raw.imgpipe-") && n.ends_with(".part"),
                "{n}"
            );
            assert!(std::fs::symlink_metadata(p).unwrap().file_type().is_file());
        }
        Box::new(a).abort().await.unwrap();
        assert!(!pa.exists());
        Box::new(b).finish().await.unwrap();
        assert!(!pb.exists());
        assert_eq!(names(d), vec!["disk.raw", "disk.raw.part", "victim"]);
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&target).unwrap()[1], 1 ^ 4);
    }

    /// Exclusive creation refuses an existing name (a symlink included) instead of opening it.
    #[test]
    fn exclusive_create_never_opens_an_existing_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("victim"), b"keep").unwrap();
        let p = d.join("x");
        std::os::unix::fs::symlink(d.join("victim"), &p).unwrap();
        let e = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&p)
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        let (_, q) = create_named(d, std::ffi::OsStr::new("x")).unwrap();
        assert_ne!(q, p);
        assert_eq!(std::fs::read(d.join("victim")).unwrap(), b"keep");
    }
}
