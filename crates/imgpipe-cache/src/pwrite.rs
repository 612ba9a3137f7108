//! Positional writing of a decoded disk into a raw entry, with O_DIRECT where the filesystem
//! allows it (the raw counterpart of `imgpipe_io::SequentialWriter`, which only appends).
//!
//! Decoders emit extents in any order. Consecutive extents (the common case) are gathered in
//! an aligned 4 MiB window and written with O_DIRECT when it is full, or when the next extent
//! does not continue it; all-zero 64 KiB blocks of the window are not written (holes, as zero
//! extents are). Bytes before the first 4 KiB boundary of a window and after its last one go
//! through the page cache. Every 4 KiB block of the file is therefore written either only
//! directly or only through the page cache (extents never overlap), so the two paths do not
//! race. Without O_DIRECT (tmpfs) every write is a plain positional write. `finish` sizes the
//! file and fsyncs it (covering both descriptors: fsync is per inode).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

const ALIGN: u64 = 4096;
const WINDOW: usize = 4 << 20;
const HOLE: usize = 64 << 10;

fn is_zero(block: &[u8]) -> bool {
    block
        .chunks(256)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// An `ALIGN`-aligned `WINDOW` inside an over-allocated vector (no unsafe).
struct Window {
    buf: Vec<u8>,
    start: usize,
    /// File offset of the first byte (a multiple of `ALIGN`).
    off: u64,
    len: usize,
}

impl Window {
    fn new() -> Self {
        let buf = vec![0u8; WINDOW + ALIGN as usize];
        let misalign = buf.as_ptr() as usize % ALIGN as usize;
        Window {
            start: (ALIGN as usize - misalign) % ALIGN as usize,
            buf,
            off: 0,
            len: 0,
        }
    }
    fn end(&self) -> u64 {
        self.off + self.len as u64
    }
}

/// Writes extents at their offsets (see the module documentation).
pub(crate) struct PositionalWriter {
    file: File,
    direct: Option<(File, Window)>,
}

impl PositionalWriter {
    /// `file` is the entry's partial file opened for writing; `path` names it (a second,
    /// O_DIRECT descriptor is opened on it when possible).
    pub(crate) fn new(file: File, path: &Path) -> Self {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
            .map(|f| (f, Window::new()));
        PositionalWriter { file, direct }
    }

    /// Write `data` at `offset`.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.direct.is_none() {
            return self.file.write_all_at(data, offset);
        }
        let continues = self
            .direct
            .as_ref()
            .is_some_and(|(_, w)| w.len > 0 && w.end() == offset);
        if !continues {
            self.flush()?;
        }
        let mut rest = data;
        let mut at = offset;
        let Some((_, w)) = self.direct.as_mut() else {
            return self.file.write_all_at(data, offset);
        };
        if w.len == 0 {
            // A new window starts at the next 4 KiB boundary; the bytes before it are buffered.
            let head = ((ALIGN - at % ALIGN) % ALIGN).min(rest.len() as u64) as usize;
            if head > 0 {
                self.file.write_all_at(&rest[..head], at)?;
                rest = &rest[head..];
                at += head as u64;
            }
            if let Some((_, w)) = self.direct.as_mut() {
                w.off = at;
            }
        }
        while !rest.is_empty() {
            let Some((_, w)) = self.direct.as_mut() else {
                // O_DIRECT was given up during a flush: the rest goes through the page cache.
                return self.file.write_all_at(rest, at);
            };
            let n = (WINDOW - w.len).min(rest.len());
            let p = w.start + w.len;
            w.buf[p..p + n].copy_from_slice(&rest[..n]);
            w.len += n;
            rest = &rest[n..];
            at += n as u64;
            if w.len == WINDOW {
                self.flush()?;
                if let Some((_, w)) = self.direct.as_mut() {
                    w.off += WINDOW as u64;
                }
            }
        }
        Ok(())
    }

    /// Write out the window: its aligned part directly (zero blocks skipped), the rest
    /// buffered. The window is left empty, `off` unchanged.
    fn flush(&mut self) -> io::Result<()> {
        let Some((direct, w)) = self.direct.as_mut() else {
            return Ok(());
        };
        if w.len == 0 {
            return Ok(());
        }
        let filled = &w.buf[w.start..w.start + w.len];
        let aligned = w.len - w.len % ALIGN as usize;
        let mut direct_failed = None;
        let mut pos = 0;
        while pos < aligned {
            let end = (pos + HOLE).min(aligned);
            if !is_zero(&filled[pos..end])
                && let Err(e) = direct.write_all_at(&filled[pos..end], w.off + pos as u64)
            {
                direct_failed = Some((pos, e));
                break;
            }
            pos = end;
        }
        if let Some((pos, e)) = direct_failed {
            // A filesystem that accepted O_DIRECT at open but not this write: go buffered.
            if e.kind() != io::ErrorKind::InvalidInput {
                return Err(e);
            }
            self.file.write_all_at(&filled[pos..], w.off + pos as u64)?;
            self.direct = None;
            return Ok(());
        }
        if aligned < w.len {
            self.file
                .write_all_at(&filled[aligned..], w.off + aligned as u64)?;
        }
        w.len = 0;
        Ok(())
    }

    /// Flush, give the file `len` bytes (trailing holes included) and fsync it.
    pub(crate) fn finish(&mut self, len: u64) -> io::Result<()> {
        self.flush()?;
        self.file.set_len(len)?;
        self.file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn any_order_and_alignment_writes_the_same_file() {
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
                let f = File::create(&path).unwrap();
                let mut w = PositionalWriter::new(f, &path);
                let pieces: Vec<(usize, &[u8])> = data
                    .chunks(piece)
                    .enumerate()
                    .map(|(i, c)| (i * piece, c))
                    .collect();
                // In order, then every other piece in reverse (gaps and restarts).
                let (evens, odds): (Vec<_>, Vec<_>) =
                    pieces.iter().enumerate().partition(|(i, _)| i % 2 == 0);
                for (_, (o, c)) in evens.iter() {
                    w.write(*o as u64, c).unwrap();
                }
                for (_, (o, c)) in odds.iter().rev() {
                    w.write(*o as u64, c).unwrap();
                }
                w.finish(len as u64).unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), data, "piece {piece}");
            }
        }
    }
}
