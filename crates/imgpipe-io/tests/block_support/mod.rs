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
        Self::attach_io(file, extra, "--direct-io=on")
    }

    /// Attach `file` without direct I/O (for filesystems without `O_DIRECT`, such as ramfs).
    pub fn attach_buffered(file: &Path) -> Loop {
        Self::attach_io(file, &[], "--direct-io=off")
    }

    fn attach_io(file: &Path, extra: &[String], dio: &str) -> Loop {
        let out = Command::new("losetup")
            .args(["--find", "--show", dio])
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

/// Whether `tool` runs (`tool --version`, or `tool -V` for util-linux tools that lack it); if
/// not, panics under `IMGPIPE_REQUIRE_ORACLES=1`, else prints a skip line and returns false.
pub fn tool_available(test: &str, tool: &str) -> bool {
    let runs = |arg: &str| {
        Command::new(tool)
            .arg(arg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok()
    };
    let ok = runs("--version") || runs("-V");
    if !ok {
        skip_or_panic(test, &format!("{tool} is not installed"));
    }
    ok
}

/// A test cannot run here: panic under `IMGPIPE_REQUIRE_ORACLES=1`, else print a skip line.
pub fn skip_or_panic(test: &str, why: &str) {
    if std::env::var("IMGPIPE_REQUIRE_ORACLES").as_deref() == Ok("1") {
        panic!("{test}: {why} and IMGPIPE_REQUIRE_ORACLES=1");
    }
    eprintln!("SKIP {test}: {why}");
}

/// Run a command that must succeed; its stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tmpfs of a fixed size mounted on a new temporary directory; unmounted on drop (after the
/// loop devices over files in it were detached: declare it before them).
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (after `skip_or_panic`) when mounting is not possible here.
    pub fn mount(test: &str, bytes: u64) -> Option<Tmpfs> {
        Self::mount_type(test, "tmpfs", &format!("size={bytes}"))
    }

    /// A ramfs (no size limit, no `fallocate`: a loop device over a file in it supports
    /// neither discard nor write-zeroes).
    pub fn ramfs(test: &str) -> Option<Tmpfs> {
        Self::mount_type(test, "ramfs", "mode=0700")
    }

    fn mount_type(test: &str, fstype: &str, options: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", fstype, "-o", options, fstype])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            skip_or_panic(test, &format!("cannot mount a {fstype}"));
            return None;
        }
        Some(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill the filesystem until only `leave` bytes (a multiple of the page size) are free:
    /// write a filler file until `ENOSPC`, then give `leave` bytes back.
    pub fn fill_leaving(&self, leave: u64) {
        use std::io::Write;
        let p = self.path().join("filler");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        let block = vec![0x5Au8; 64 << 10];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let len = f.metadata().unwrap().len();
        assert!(len >= leave, "tmpfs had less than {leave} bytes free");
        f.set_len(len - leave).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(self.dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Free the byte range `[off, off+len)` of a file (`fallocate(PUNCH_HOLE)`): on tmpfs this
/// gives the pages back, so writing there again needs new space.
pub fn punch_hole(file: &Path, off: u64, len: u64) {
    sh(Command::new("fallocate")
        .args(["--punch-hole", "--keep-size"])
        .args(["--offset", &off.to_string(), "--length", &len.to_string()])
        .arg(file));
}

/// A loop device with a partition table and its partition nodes. `partx -a` adds the
/// partitions to the kernel (`BLKRRPART` on a `--partscan` loop device returns 0 on this kernel
/// but adds nothing); where no udev creates `/dev/loopNpK`, the node is made here with `mknod`
/// from `/sys/block/loopN/loopNpK/dev`. On drop the nodes made here are removed and `partx -d`
/// deletes the partitions before the device is detached (a detach alone leaves them behind on
/// the loop device).
pub struct Partitioned {
    pub parts: Vec<PathBuf>,
    made: Vec<PathBuf>,
    // Declared last: detached after the nodes above are gone.
    pub lo: Loop,
}

impl Partitioned {
    /// A sparse loop device of `size` bytes with the `sfdisk` script `table`, expecting
    /// `count` partitions.
    pub fn new(size: u64, table: &str, count: usize) -> Partitioned {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        File::create(&file).unwrap().set_len(size).unwrap();
        let mut lo = Loop::attach(&file, &[]);
        lo._dir = Some(dir);
        let mut child = Command::new("sfdisk")
            .args(["-q", "--no-reread", "--no-tell-kernel"])
            .arg(&lo.dev)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(table.as_bytes())
                .unwrap();
        }
        assert!(child.wait().unwrap().success(), "sfdisk failed");
        sh(Command::new("partx").arg("-a").arg(&lo.dev));
        let name = lo.dev.file_name().unwrap().to_string_lossy().into_owned();
        let mut p = Partitioned {
            parts: Vec::new(),
            made: Vec::new(),
            lo,
        };
        for k in 1..=count {
            let pname = format!("{name}p{k}");
            let sys = PathBuf::from(format!("/sys/block/{name}/{pname}/dev"));
            let mut dev = None;
            for _ in 0..100 {
                if let Ok(s) = std::fs::read_to_string(&sys) {
                    dev = Some(s.trim().to_string());
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let dev = dev.unwrap_or_else(|| panic!("the kernel did not add {pname}"));
            let (maj, min) = dev.split_once(':').unwrap();
            let (maj, min): (u32, u32) = (maj.parse().unwrap(), min.parse().unwrap());
            let node = PathBuf::from(format!("/dev/{pname}"));
            let want = libc::makedev(maj, min);
            let have = std::fs::metadata(&node).ok().map(|m| {
                use std::os::unix::fs::{FileTypeExt, MetadataExt};
                (m.file_type().is_block_device(), m.rdev())
            });
            if have != Some((true, want)) {
                // No udev here, or a stale node from an earlier device: make the right one.
                let _ = std::fs::remove_file(&node);
                sh(Command::new("mknod")
                    .arg(&node)
                    .arg("b")
                    .arg(maj.to_string())
                    .arg(min.to_string()));
                p.made.push(node.clone());
            }
            p.parts.push(node);
        }
        p
    }
}

impl Drop for Partitioned {
    fn drop(&mut self) {
        for n in &self.made {
            let _ = std::fs::remove_file(n);
        }
        let _ = Command::new("partx").arg("-d").arg(&self.lo.dev).status();
    }
}

/// Unmounts on drop.
pub struct Mounted(pub PathBuf);

impl Mounted {
    /// Mount `dev` on `dir`; panics if mount fails.
    pub fn new(dev: &Path, dir: &Path) -> Mounted {
        sh(Command::new("mount").arg(dev).arg(dir));
        Mounted(dir.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Swap enabled on a device; `swapoff` on drop.
pub struct Swapon(pub PathBuf);

impl Swapon {
    /// `mkswap` + `swapon` on `dev`; panics if either fails.
    pub fn new(dev: &Path) -> Swapon {
        sh(Command::new("mkswap").arg(dev));
        sh(Command::new("swapon").arg(dev));
        Swapon(dev.to_path_buf())
    }
}

impl Drop for Swapon {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg(&self.0).status();
    }
}
