//! Sources backed by a blocking reader (file, stdin) on their own thread.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
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
                    let mut buf = BytesMut::zeroed(CHUNK_SIZE);
                    let mut filled = 0;
                    // Fill the whole chunk unless the stream ends (pipes give short reads).
                    let r = loop {
                        match reader.read(&mut buf[filled..]) {
                            Ok(0) => break Ok(()),
                            Ok(n) => {
                                filled += n;
                                if filled == buf.len() {
                                    break Ok(());
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                        }
                    };
                    let eof = filled < buf.len();
                    buf.truncate(filled);
                    let msg = match r {
                        Err(e) => Err(Error::io(format!("reading {label}"), e)),
                        Ok(()) if filled == 0 => break,
                        Ok(()) => Ok(buf.freeze()),
                    };
                    let failed = msg.is_err();
                    if tx.blocking_send(msg).is_err() || failed || eof {
                        break;
                    }
                }
            })
            .map_err(|e| Error::io("cannot start the reader thread", e))?;
        Ok(ReaderSource { name, len, rx })
    }
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
