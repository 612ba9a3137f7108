//! O_DIRECT writing of a second copy of a stream (the cache's entries): [`SequentialWriter`]
//! appends the image bytes as received, [`PositionalWriter`] writes a decoded disk whose
//! extents arrive in any order.
//!
//! Writing a multi-GiB copy through the page cache costs a memory copy into the cache, the
//! kernel's writeback work and a long final `fsync`, all on a machine whose other core is busy
//! hashing. [`SequentialWriter`] instead gathers the stream into an aligned 4 MiB window and
//! writes each full window with O_DIRECT; the unaligned tail goes through the page cache at
//! the end. Filesystems without O_DIRECT (tmpfs) get plain positional writes.
//!
//! All-zero 64 KiB blocks are not written: the file keeps them as holes (as sparse as the
//! image), which saves the write now and the read on every later use of the copy.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment of O_DIRECT buffers, offsets and lengths.
pub(crate) const ALIGN: usize = 4096;
/// Bytes gathered per O_DIRECT write.
pub(crate) const WINDOW: usize = 4 << 20;
/// Granularity of hole detection (a multiple of `ALIGN` dividing `WINDOW`).
const HOLE: usize = 64 << 10;

fn is_zero(block: &[u8]) -> bool {
    // OR-folding fixed-size pieces vectorises; the early exit is per piece.
    block
        .chunks(256)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Write `data` at `off`, skipping all-zero `HOLE`-sized blocks (left as holes).
fn write_sparse(f: &File, data: &[u8], off: u64) -> io::Result<()> {
    let mut run_start: Option<usize> = None;
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + HOLE).min(data.len());
        let zero = is_zero(&data[pos..end]);
        match (zero, run_start) {
            (true, Some(s)) => {
                f.write_all_at(&data[s..pos], off + s as u64)?;
                run_start = None;
            }
            (false, None) => run_start = Some(pos),
            _ => {}
        }
        pos = end;
    }
    if let Some(s) = run_start {
        f.write_all_at(&data[s..], off + s as u64)?;
    }
    Ok(())
}

/// A `WINDOW`-byte buffer aligned to `ALIGN` inside an over-allocated vector (no unsafe), with
/// the file offset its first byte belongs at.
pub(crate) struct Window {
    buf: Vec<u8>,
    start: usize,
    /// File offset of the first byte.
    pub(crate) off: u64,
    /// Bytes filled.
    pub(crate) len: usize,
}

impl Window {
    pub(crate) fn new() -> Self {
        let buf = vec![0u8; WINDOW + ALIGN];
        let misalign = buf.as_ptr() as usize % ALIGN;
        let start = (ALIGN - misalign) % ALIGN;
        Window {
            buf,
            start,
            off: 0,
            len: 0,
        }
    }
    /// File offset just past the filled bytes.
    pub(crate) fn end(&self) -> u64 {
        self.off + self.len as u64
    }
    pub(crate) fn filled(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
    pub(crate) fn room(&self) -> usize {
        WINDOW - self.len
    }
    /// Copies as much of `data` as fits; returns how much.
    pub(crate) fn push(&mut self, data: &[u8]) -> usize {
        let n = self.room().min(data.len());
        let at = self.start + self.len;
        self.buf[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }
}

/// A second descriptor on `path` opened with O_DIRECT, and its window; `None` where the
/// filesystem refuses O_DIRECT (tmpfs).
fn open_direct(path: &Path) -> Option<(File, Window)> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
        .map(|f| (f, Window::new()))
}

/// Write out what the window holds: its `ALIGN`-multiple part through the O_DIRECT descriptor
/// (all-zero blocks skipped), the rest through `file`; the window is left empty at its end.
/// A filesystem that accepted O_DIRECT at open but refuses a write (`EINVAL`) gets the window
/// through `file` instead, and O_DIRECT is given up (`direct` becomes `None`).
fn flush_window(file: &File, direct: &mut Option<(File, Window)>) -> io::Result<()> {
    let Some((d, w)) = direct.as_mut() else {
        return Ok(());
    };
    let filled = w.filled();
    let aligned = filled.len() - filled.len() % ALIGN;
    match write_sparse(d, &filled[..aligned], w.off) {
        Ok(()) => {
            if aligned < filled.len() {
                file.write_all_at(&filled[aligned..], w.off + aligned as u64)?;
            }
            w.off = w.end();
            w.len = 0;
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            write_sparse(file, filled, w.off)?;
            *direct = None;
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Appends a stream to a file from offset 0, with O_DIRECT where the filesystem allows it.
pub struct SequentialWriter {
    file: File,
    /// The O_DIRECT descriptor and its window (whose offset is always a multiple of `WINDOW`).
    direct: Option<(File, Window)>,
    /// Bytes accepted so far (= the next offset expected).
    pos: u64,
}

impl SequentialWriter {
    /// Write through `file` (opened for writing, empty), using a second O_DIRECT descriptor on
    /// `path` (the same file) when the filesystem supports it.
    pub fn new(file: File, path: &Path) -> Self {
        SequentialWriter {
            file,
            direct: open_direct(path),
            pos: 0,
        }
    }

    /// Whether O_DIRECT is in use.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Bytes accepted so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Append `data`, which must start at [`Self::position`].
    ///
    /// # Errors
    /// `InvalidInput` for a non-sequential offset; the write's own error otherwise.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset != self.pos {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "sequential writer at byte {} was given byte {offset}",
                    self.pos
                ),
            ));
        }
        let mut rest = data;
        while !rest.is_empty() {
            let Some((_, window)) = self.direct.as_mut() else {
                write_sparse(&self.file, rest, offset + (data.len() - rest.len()) as u64)?;
                break;
            };
            let n = window.push(rest);
            rest = &rest[n..];
            if window.len == WINDOW {
                flush_window(&self.file, &mut self.direct)?;
            }
        }
        self.pos += data.len() as u64;
        Ok(())
    }

    /// Write what is still gathered (aligned part direct, tail buffered), give the file its
    /// full length (a trailing hole is not written), and `fdatasync`.
    ///
    /// # Errors
    /// The write's or the sync's error.
    pub fn finish(&mut self) -> io::Result<()> {
        flush_window(&self.file, &mut self.direct)?;
        if self.file.metadata()?.len() < self.pos {
            self.file.set_len(self.pos)?;
        }
        self.file.sync_data()
    }
}

/// Writes extents at their offsets, in any order, with O_DIRECT where the filesystem allows
/// it: a decoded disk whose extents come out of guest order (a qcow2's clusters are stored in
/// the order the guest wrote them).
///
/// Consecutive extents (the common case) are gathered in the aligned window and written with
/// O_DIRECT when it is full or when the next extent does not continue it; all-zero 64 KiB
/// blocks are left as holes. The bytes of an extent before the first 4 KiB boundary of a
/// window, and a window's unaligned tail, go through the page cache. Every 4 KiB block of the
/// file is therefore written either only directly or only through the page cache (extents
/// never overlap), so the two paths do not race. Without O_DIRECT (tmpfs) every write is a
/// plain positional write.
pub struct PositionalWriter {
    file: File,
    direct: Option<(File, Window)>,
}

impl PositionalWriter {
    /// `file` is opened for writing; `path` names it (a second, O_DIRECT descriptor is opened on
    /// it when possible).
    pub fn new(file: File, path: &Path) -> Self {
        PositionalWriter {
            file,
            direct: open_direct(path),
        }
    }

    /// Write `data` at `offset` (extents must not overlap earlier ones).
    ///
    /// # Errors
    /// The write's error.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let continues = self
            .direct
            .as_ref()
            .is_some_and(|(_, w)| w.len > 0 && w.end() == offset);
        if !continues {
            flush_window(&self.file, &mut self.direct)?;
        }
        let mut rest = data;
        let mut at = offset;
        while !rest.is_empty() {
            let Some((_, w)) = self.direct.as_mut() else {
                return self.file.write_all_at(rest, at);
            };
            if w.len == 0 {
                // A window starts at a 4 KiB boundary: the bytes before it go buffered.
                let head = ((ALIGN - (at % ALIGN as u64) as usize) % ALIGN).min(rest.len());
                w.off = at + head as u64;
                if head > 0 {
                    self.file.write_all_at(&rest[..head], at)?;
                    rest = &rest[head..];
                    at += head as u64;
                    continue;
                }
            }
            let n = w.push(rest);
            rest = &rest[n..];
            at += n as u64;
            if w.len == WINDOW {
                flush_window(&self.file, &mut self.direct)?;
            }
        }
        Ok(())
    }

    /// Write what is still gathered, give the file `len` bytes (trailing holes included) and
    /// fsync it.
    ///
    /// # Errors
    /// The write's, the resize's or the sync's error.
    pub fn finish(&mut self, len: u64) -> io::Result<()> {
        flush_window(&self.file, &mut self.direct)?;
        self.file.set_len(len)?;
        self.file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn any_chunking_writes_the_same_file() {
        let data: Vec<u8> = (0..(9 << 20) + 1234).map(|i| (i * 7 % 251) as u8).collect();
        // Under the temp directory (a real filesystem here, O_DIRECT) and under /dev/shm
        // (tmpfs: the buffered fallback) when present.
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if let Ok(d) = tempfile::tempdir_in("/dev/shm") {
            dirs.push(d);
        }
        for dir in &dirs {
            for chunk in [1 << 20, 65536 + 3, 4 << 20, 5 << 20, data.len()] {
                let p = dir.path().join(format!("out{chunk}"));
                let f = File::create(&p).unwrap();
                let mut w = SequentialWriter::new(f, &p);
                for (i, c) in data.chunks(chunk).enumerate() {
                    w.write_at((i * chunk) as u64, c).unwrap();
                }
                w.finish().unwrap();
                assert_eq!(w.position(), data.len() as u64);
                assert_eq!(std::fs::read(&p).unwrap(), data, "chunk {chunk}");
            }
        }
    }

    #[test]
    fn zero_blocks_become_holes_and_read_back_as_zeros() {
        use std::os::unix::fs::MetadataExt;
        // 3 MiB data, 8 MiB zeros, 1 MiB data, then 5 MiB of trailing zeros (+ an odd tail).
        let mut data = vec![0u8; (17 << 20) + 100];
        for (i, b) in data[..3 << 20].iter_mut().enumerate() {
            *b = (i % 249) as u8 | 1;
        }
        for b in &mut data[11 << 20..12 << 20] {
            *b = 0x5a;
        }
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if let Ok(d) = tempfile::tempdir_in("/dev/shm") {
            dirs.push(d);
        }
        for dir in &dirs {
            let p = dir.path().join("sparse");
            let mut w = SequentialWriter::new(File::create(&p).unwrap(), &p);
            for (i, c) in data.chunks(1 << 20).enumerate() {
                w.write_at((i << 20) as u64, c).unwrap();
            }
            w.finish().unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), data);
            let allocated = std::fs::metadata(&p).unwrap().blocks() * 512;
            assert!(
                allocated < (6 << 20),
                "{allocated} bytes allocated for 4 MiB of data in {}",
                dir.path().display()
            );
        }
    }

    #[test]
    fn a_gap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let mut w = SequentialWriter::new(File::create(&p).unwrap(), &p);
        w.write_at(0, b"abc").unwrap();
        let e = w.write_at(10, b"def").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn positional_writes_in_any_order_and_alignment_make_the_same_file() {
        let len = (9 << 20) + 1234;
        let data: Vec<u8> = (0..len)
            .map(|i| {
                if (i / 70000) % 3 == 1 {
                    0
                } else {
                    (i * 7 % 251) as u8
                }
            })
            .collect();
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if let Ok(d) = tempfile::tempdir_in("/dev/shm") {
            dirs.push(d);
        }
        for d in &dirs {
            for (case, piece) in [512usize, 4096 + 512, 65536, 1 << 20, 5 << 20]
                .into_iter()
                .enumerate()
            {
                let path = d.path().join(format!("f{case}"));
                let mut w = PositionalWriter::new(File::create(&path).unwrap(), &path);
                let pieces: Vec<(usize, &[u8])> = data
                    .chunks(piece)
                    .enumerate()
                    .map(|(i, c)| (i * piece, c))
                    .collect();
                // In order, then every other piece in reverse (gaps and restarts).
                let (evens, odds): (Vec<_>, Vec<_>) =
                    pieces.iter().enumerate().partition(|(i, _)| i % 2 == 0);
                for (_, (o, c)) in evens.iter() {
                    w.write_at(*o as u64, c).unwrap();
                }
                for (_, (o, c)) in odds.iter().rev() {
                    w.write_at(*o as u64, c).unwrap();
                }
                w.finish(len as u64).unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), data, "piece {piece}");
            }
        }
    }
}
