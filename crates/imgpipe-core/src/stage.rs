//! The data types that move between stages and the traits each stage role implements.
//!
//! Two domains are kept apart in types:
//! - **image bytes** ([`Chunk`]): the bytes exactly as the source stores them (what Glance hashed
//!   and signed). Sources produce them; [`Observer`]s (inspector, hashers, signature digest,
//!   cache tee) consume them; a [`DiskStage`] turns them into disk operations.
//! - **disk extents** ([`DiskExtent`]): positional pieces of the virtual disk after decoding (and
//!   encryption), consumed by a [`Sink`].

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;

/// A piece of the image byte stream. Cloning is a reference-count bump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of `data[0]` in the image byte stream.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
}

impl Chunk {
    /// Offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

/// A positional piece of the virtual disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskExtent {
    /// Bytes to write at `offset`.
    Data {
        /// Offset on the target.
        offset: u64,
        /// The bytes.
        data: Bytes,
    },
    /// A run that must read back as zeros. Each sink decides how (skip on a known-zero target,
    /// write-zeroes, or plain writes).
    Zero {
        /// Offset on the target.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl DiskExtent {
    /// Offset on the target.
    pub fn offset(&self) -> u64 {
        match self {
            DiskExtent::Data { offset, .. } | DiskExtent::Zero { offset, .. } => *offset,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            DiskExtent::Data { data, .. } => data.len() as u64,
            DiskExtent::Zero { len, .. } => *len,
        }
    }

    /// Whether the extent covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset() + self.len()
    }
}

/// What the sink learns before the first write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size of the target content in bytes (virtual size, plus any encryption header), if known.
    pub size: Option<u64>,
    /// Whether the extents are ciphertext (zero runs must then be written, never skipped).
    pub encrypted: bool,
}

/// An operation the disk stage asks of the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkOp {
    /// Sent once, before any write, when the geometry becomes known.
    Begin(DiskInfo),
    /// A positional write.
    Write(DiskExtent),
}

/// Something a stage learned, reported in the run report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Finding {
    /// A digest of the image bytes (lowercase hex).
    Digest {
        /// Algorithm name (`sha512`, …).
        algorithm: String,
        /// Lowercase hex digest.
        hex: String,
    },
    /// The detected format.
    Format {
        /// Format name (`qcow2`, …).
        format: String,
        /// Virtual disk size, if known.
        virtual_size: Option<u64>,
    },
    /// A check that passed (e.g. `digest.sha512`, `signature`).
    Passed {
        /// The check's name.
        check: String,
    },
    /// Something the operator should know that did not fail the run.
    Warning {
        /// The text.
        message: String,
    },
}

/// A source of image bytes.
///
/// Contract: the driver calls [`Source::read`] until it returns `Ok(None)` (end of stream) or an
/// error. Chunks are consecutive; their sizes are the source's choice. A source that can resume
/// (HTTP ranges) does so inside `read`; the stream it returns is still exactly the image bytes.
#[async_trait]
pub trait Source: Send {
    /// A short human description (path, URL without credentials).
    fn describe(&self) -> String;
    /// Total length in bytes if known in advance (Content-Length, file size).
    fn len_hint(&self) -> Option<u64>;
    /// The next bytes, or `None` at the end of the stream.
    async fn read(&mut self) -> Result<Option<Bytes>>;
    /// How many times the source resumed after a dropped connection.
    fn resumes(&self) -> u32 {
        0
    }
}

/// A consumer of image bytes that does not transform them (inspector, hasher, signature digest).
///
/// Contract: `update` is called with every chunk in order; `finish` once after the last chunk,
/// with the total byte count. An `Err` from either is a verdict: the run is rejected and the sink
/// is aborted. Observers run on their own threads and must be cheap per byte.
pub trait Observer: Send {
    /// The stage name used in reports and errors (`hash:sha512`, `inspect`, …).
    fn name(&self) -> String;
    /// Consume the next chunk.
    fn update(&mut self, chunk: &Chunk) -> Result<()>;
    /// The stream ended after `total` bytes: give the verdict.
    fn finish(self: Box<Self>, total: u64) -> Result<Vec<Finding>>;
}

/// The bridge from image bytes to disk operations (inspector gate, decoder, encryptor).
///
/// Contract: `feed` is called with every chunk in order; it may push [`SinkOp`]s to `out`.
/// It must not emit any write before it has decided the image may be written (the inspector
/// gate). `finish` is called once after the last chunk; it may push final ops (e.g. an
/// encryption header) and gives its verdict. Any `Err` rejects the run.
pub trait DiskStage: Send {
    /// The stage name.
    fn name(&self) -> String;
    /// Consume the next chunk of image bytes.
    fn feed(&mut self, chunk: &Chunk, out: &mut Vec<SinkOp>) -> Result<()>;
    /// The stream ended: push the remaining ops and give the verdict.
    fn finish(&mut self, out: &mut Vec<SinkOp>) -> Result<Vec<Finding>>;
}

/// What a sink reports after publishing.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkReport {
    /// Where the result was published (path, device, pool/image).
    pub target: String,
    /// Bytes written (data, not skipped zeros).
    pub bytes_written: u64,
    /// Bytes of zero runs skipped (target known to read zeros).
    pub zero_bytes_skipped: u64,
    /// Bytes of zero runs written (explicitly, or with write-zeroes).
    pub zero_bytes_written: u64,
    /// Final size of the target content.
    pub size: u64,
    /// How zero runs were handled (`skip`, `write`, `write-zeroes`, `discard`).
    pub zero_policy: String,
}

/// A destination for disk extents, with transactional publish.
///
/// Contract: `begin` at most once before the first write; `write` any number of times with
/// extents in any order; then exactly one of `finish` (every verdict passed: flush, sync and
/// publish atomically) or `abort` (remove or wipe anything written, leave a pre-existing target
/// as it was). Nothing is cleaned up in `Drop`.
#[async_trait]
pub trait Sink: Send {
    /// A short human description.
    fn describe(&self) -> String;
    /// The disk geometry became known (always called before the first write).
    async fn begin(&mut self, info: &DiskInfo) -> Result<()>;
    /// Write one extent.
    async fn write(&mut self, extent: DiskExtent) -> Result<()>;
    /// Every verdict passed: make the result durable and visible.
    async fn finish(self: Box<Self>) -> Result<SinkReport>;
    /// The run failed: remove or wipe what was written.
    async fn abort(self: Box<Self>) -> Result<()>;
}
