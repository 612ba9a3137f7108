//! Sources backed by a blocking reader (file, stdin) on their own thread.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use imgpipe_core::{Error, Result, Source};
use tokio::sync::mpsc;

use crate::CHUNK_SIZE;

/// A source reading a local file or stdin on a dedicated thread, a few chunks ahead.
pub struct ReaderSource {
    name: String,
    len: Option<u64>,
    rx: mpsc::Receiver<Result<Bytes>>,
}

impl ReaderSource {
    /// Open a local file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
        if meta.is_dir() {
            return Err(Error::new(
                imgpipe_core::ErrorKind::Io,
                format!("{} is a directory, not an image", path.display()),
            ));
        }
        let len = meta.is_file().then_some(meta.len());
        Self::spawn(path.display().to_string(), len, file)
    }

    /// Read standard input.
    pub fn stdin() -> Result<Self> {
        Self::spawn("-".into(), None, std::io::stdin())
    }

    /// Wrap any blocking reader.
    pub fn spawn<R: Read + Send + 'static>(
        name: String,
        len: Option<u64>,
        mut reader: R,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel(2);
        let label = name.clone();
        std::thread::Builder::new()
            .name("imgpipe-read".into())
            .spawn(move || {
                loop {
                    let (r, buf) = read_chunk(&mut reader);
                    let filled = buf.len();
                    let msg = match r {
                        Err(e) => Err(Error::io(format!("reading {label}"), e)),
                        Ok(()) if filled == 0 => break,
                        Ok(()) => Ok(Bytes::from(buf)),
                    };
                    let failed = msg.is_err();
                    if tx.blocking_send(msg).is_err() || failed || filled < CHUNK_SIZE {
                        break;
                    }
                }
            })
            .map_err(|e| Error::io("cannot start the reader thread", e))?;
        Ok(ReaderSource { name, len, rx })
    }
}

/// Read one chunk: [`CHUNK_SIZE`] bytes, fewer only at the end of the stream (pipes give short
/// reads, so it keeps reading until the chunk is full or the reader reports end of stream).
///
/// The buffer is not zero-filled first: `read_to_end` reads into the vector's spare capacity
/// through std's initialisation tracking (safe code, no `unsafe` here), and `take` stops it at
/// the chunk size, so the vector never grows past the capacity allocated here. On an error the
/// bytes read so far are returned with it (the caller drops them).
fn read_chunk<R: Read>(reader: &mut R) -> (std::io::Result<()>, Vec<u8>) {
    let mut buf = Vec::with_capacity(CHUNK_SIZE);
    let r = reader
        .by_ref()
        .take(CHUNK_SIZE as u64)
        .read_to_end(&mut buf)
        .map(drop);
    (r, buf)
}

#[async_trait]
impl Source for ReaderSource {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn len_hint(&self) -> Option<u64> {
        self.len
    }

    async fn read(&mut self) -> Result<Option<Bytes>> {
        match self.rx.recv().await {
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A reader over `data` that returns at most `step` bytes per call, and fails with `fail`
    /// once `fail_at` bytes were delivered (if set).
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        fail_at: Option<usize>,
        interrupted: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if !self.interrupted {
                // Every first call is interrupted (EINTR): it must be retried, not reported.
                self.interrupted = true;
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            if self.fail_at.is_some_and(|f| self.pos >= f) {
                return Err(std::io::Error::other("disk on fire"));
            }
            let end = self
                .data
                .len()
                .min(self.pos + self.step)
                .min(self.fail_at.map_or(usize::MAX, |f| f.max(self.pos + 1)));
            let n = (end - self.pos).min(out.len());
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    async fn drain(mut src: ReaderSource) -> (Vec<Bytes>, Option<Error>) {
        let mut chunks = Vec::new();
        loop {
            match src.read().await {
                Ok(Some(b)) => chunks.push(b),
                Ok(None) => return (chunks, None),
                Err(e) => return (chunks, Some(e)),
            }
        }
    }

    #[tokio::test]
    async fn chunks_are_full_and_identical_whatever_the_read_sizes() {
        let len = 2 * CHUNK_SIZE + 12_345;
        let data = pattern(len);
        for step in [1usize, 7, 512, 4096, 65536, len] {
            // Step 1 over 2 MiB is slow in debug builds: use a shorter stream for it.
            let data = if step == 1 {
                &data[..CHUNK_SIZE + 3]
            } else {
                &data[..]
            };
            let r = Trickle {
                data: data.to_vec(),
                pos: 0,
                step,
                fail_at: None,
                interrupted: false,
            };
            let src = ReaderSource::spawn("t".into(), None, r).unwrap();
            let (chunks, err) = drain(src).await;
            assert!(err.is_none(), "step {step}: {err:?}");
            let (last, full) = chunks.split_last().unwrap();
            assert!(full.iter().all(|c| c.len() == CHUNK_SIZE), "step {step}");
            assert!(!last.is_empty() && last.len() <= CHUNK_SIZE, "step {step}");
            assert_eq!(chunks.concat(), data, "step {step}");
        }
    }

    #[tokio::test]
    async fn exact_multiple_of_the_chunk_size_and_empty_stream() {
        let data = pattern(2 * CHUNK_SIZE);
        let src =
            ReaderSource::spawn("t".into(), None, std::io::Cursor::new(data.clone())).unwrap();
        let (chunks, err) = drain(src).await;
        assert!(err.is_none());
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks.concat(), data);

        let src = ReaderSource::spawn("t".into(), None, std::io::empty()).unwrap();
        let (chunks, err) = drain(src).await;
        assert!(err.is_none() && chunks.is_empty());
    }

    #[tokio::test]
    async fn a_read_error_is_reported_after_the_good_chunks() {
        let data = pattern(3 * CHUNK_SIZE);
        let r = Trickle {
            data,
            pos: 0,
            step: 65536,
            fail_at: Some(CHUNK_SIZE + 100),
            interrupted: false,
        };
        let src = ReaderSource::spawn("broken".into(), None, r).unwrap();
        let (chunks, err) = drain(src).await;
        assert_eq!(chunks.len(), 1, "only the chunk completed before the error");
        let err = err.expect("the read error must surface");
        assert!(err.to_string().contains("reading broken"), "{err}");
    }

    #[test]
    fn chunk_buffer_is_allocated_once_at_the_chunk_size() {
        // read_to_end must stop at the chunk size without growing the vector (which would
        // copy the chunk and double its memory).
        let mut r = std::io::Cursor::new(pattern(CHUNK_SIZE + 10));
        let (res, buf) = read_chunk(&mut r);
        res.unwrap();
        assert_eq!(buf.len(), CHUNK_SIZE);
        assert_eq!(buf.capacity(), CHUNK_SIZE);
        let (res, buf) = read_chunk(&mut r);
        res.unwrap();
        assert_eq!(buf.len(), 10);
    }
}
