//! Shared helpers for the block and LVM sink tests: loop devices over sparse files (detached in
//! `Drop`), direct reads, and deterministic data.
#![allow(dead_code, clippy::unwrap_used)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether loop devices can be used here; if not, panics under `IMGPIPE_REQUIRE_ORACLES=1`,
/// else prints a skip line and returns false.
pub fn loop_available(test: &str) -> bool {
    let have_tool = Command::new("losetup")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = have_tool && root && Path::new("/dev/loop-control").exists();
    if !ok {
        let why = format!(
            "{test}: loop devices unavailable (losetup: {have_tool}, root: {root}, /dev/loop-control: {})",
            Path::new("/dev/loop-control").exists()
        );
        if std::env::var("IMGPIPE_REQUIRE_ORACLES").as_deref() == Ok("1") {
            panic!("{why} and IMGPIPE_REQUIRE_ORACLES=1");
        }
        eprintln!("SKIP {why}");
    }
    ok
}

/// A loop device over a sparse file; detached (and the file removed) on drop.
pub struct Loop {
    pub dev: PathBuf,
    pub file: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Loop {
    /// A new sparse file of `size` bytes behind `losetup --find --show --direct-io=on`.
    pub fn new(size: u64) -> Loop {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        File::create(&file).unwrap().set_len(size).unwrap();
        let mut l = Loop::attach(&file, &[]);
        l._dir = Some(dir);
        l
    }

    /// Attach `file` with extra losetup arguments (`--offset`, `--sizelimit`).
    pub fn attach(file: &Path, extra: &[String]) -> Loop {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .args(extra)
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        Loop {
            dev,
            file: file.to_path_buf(),
            _dir: None,
        }
    }

    pub fn size(&self) -> u64 {
        let f = File::open(&self.dev).unwrap();
        use std::io::Seek;
        (&f).seek(std::io::SeekFrom::End(0)).unwrap()
    }

    /// Overwrite the whole device with `byte` (a dirty, reused device).
    pub fn fill(&self, byte: u8) {
        let f = open_direct(&self.dev, true);
        let size = self.size();
        let mut buf = Aligned::new(4 << 20);
        buf.slice_mut().fill(byte);
        let mut pos = 0;
        while pos < size {
            let n = (size - pos).min(4 << 20) as usize;
            f.write_all_at(&buf.slice()[..n], pos).unwrap();
            pos += n as u64;
        }
        f.sync_all().unwrap();
    }

    /// Read `len` bytes at `off` with O_DIRECT (no page cache in the way). `off` and `len` must
    /// be multiples of 512.
    pub fn read(&self, off: u64, len: usize) -> Vec<u8> {
        read_direct(&self.dev, off, len)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

pub fn open_direct(p: &Path, write: bool) -> File {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(p)
        .unwrap()
}

pub fn read_direct(p: &Path, off: u64, len: usize) -> Vec<u8> {
    let f = open_direct(p, false);
    let mut buf = Aligned::new(len.div_ceil(512) * 512);
    let n = buf.slice().len();
    f.read_exact_at(&mut buf.slice_mut()[..n], off).unwrap();
    buf.slice()[..len].to_vec()
}

/// A 4096-aligned buffer.
pub struct Aligned {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    pub fn new(len: usize) -> Self {
        let raw = vec![0u8; len + 4096];
        let off = (4096 - raw.as_ptr() as usize % 4096) % 4096;
        Aligned { raw, off, len }
    }
    pub fn slice(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }
    pub fn slice_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), never all-zero blocks.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Index of the first differing byte, for readable assertion messages.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}
