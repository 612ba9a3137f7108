//! Spill stores: where a decoder keeps image bytes whose meaning is not known yet.
//!
//! A table-driven format (qcow2, VMDK, VHD, VDI, VHDX) may store data *before* the table that
//! maps it (a qcow2 image whose internal snapshot was overwritten, an L1 table relocated to the
//! end of the file). A streaming decoder cannot seek back, so it keeps every byte it cannot
//! place yet in a [`SpillStore`], keyed by stream offset, until either a table claims it or the
//! decoder learns that every table has been read (then the store is cleared and unplaced bytes
//! are dropped as they pass).
//!
//! The decoder, not the store, enforces the bound ([`super::DecodeOptions::spill_limit`]): the
//! number of bytes put since the last [`SpillStore::clear`] never exceeds it, and exceeding it
//! is a [`super::DecodeError::Limit`]. Stores only hold bytes.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Keyed storage for image bytes by stream offset.
///
/// Contract (the decoder keeps it): `put` is never called twice for overlapping ranges without
/// a `clear` in between; `get` only asks for bytes that were put and not cleared; `clear`
/// forgets everything and should release the space.
pub trait SpillStore: Send {
    /// Keep `data`, which sits at stream offset `offset`.
    fn put(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Fill `buf` with the bytes previously put at `offset..offset + buf.len()`.
    fn get(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Forget everything put so far and release the space.
    fn clear(&mut self) -> io::Result<()>;
}

/// A spill store in memory (the default). Memory bound: the decoder's `spill_limit`.
#[derive(Debug, Default)]
pub struct MemorySpill {
    segments: BTreeMap<u64, Vec<u8>>,
}

impl MemorySpill {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn missing(offset: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("spill store holds no byte at stream offset {offset}"),
    )
}

impl SpillStore for MemorySpill {
    fn put(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if !data.is_empty() {
            self.segments.insert(offset, data.to_vec());
        }
        Ok(())
    }

    fn get(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (start, seg) = self
                .segments
                .range(..=at)
                .next_back()
                .ok_or_else(|| missing(at))?;
            let skip = usize::try_from(at - start).map_err(|_| missing(at))?;
            if skip >= seg.len() {
                return Err(missing(at));
            }
            let n = (seg.len() - skip).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&seg[skip..skip + n]);
            done += n;
        }
        Ok(())
    }

    fn clear(&mut self) -> io::Result<()> {
        self.segments.clear();
        Ok(())
    }
}

/// A spill store in a sparse file at a caller-given path (uses only `std::fs` and positional
/// reads/writes from `std::os::unix::fs::FileExt`). The file is created (truncated if it
/// exists) and holds byte `n` of the stream at file offset `n`, so its allocated size is the
/// number of bytes put (bounded by the decoder's `spill_limit`); `clear` truncates it to zero.
/// The caller owns the path: it is not removed on drop.
#[derive(Debug)]
pub struct FileSpill {
    file: File,
    path: PathBuf,
}

impl FileSpill {
    /// Create (or truncate) the spill file at `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(FileSpill {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Where the spill file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SpillStore for FileSpill {
    fn put(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn get(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn clear(&mut self) -> io::Result<()> {
        self.file.set_len(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn exercise(store: &mut dyn SpillStore) {
        store.put(100, &[1, 2, 3]).unwrap();
        store.put(103, &[4, 5]).unwrap();
        store.put(1000, &[9]).unwrap();
        let mut buf = [0u8; 4];
        store.get(101, &mut buf).unwrap();
        assert_eq!(buf, [2, 3, 4, 5]);
        let mut one = [0u8; 1];
        store.get(1000, &mut one).unwrap();
        assert_eq!(one, [9]);
        store.clear().unwrap();
    }

    #[test]
    fn memory_spill_spans_segments() {
        let mut m = MemorySpill::new();
        exercise(&mut m);
        let mut buf = [0u8; 2];
        assert!(m.get(100, &mut buf).is_err());
        m.put(0, &[7]).unwrap();
        assert!(m.get(0, &mut buf).is_err(), "a gap must not read as zeros");
    }

    #[test]
    fn file_spill_round_trips_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill");
        let mut f = FileSpill::create(&path).unwrap();
        exercise(&mut f);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
