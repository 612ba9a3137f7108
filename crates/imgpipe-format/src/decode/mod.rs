//! Streaming decoders: image bytes in stream order → raw disk extents.
//!
//! A [`Decoder`] consumes the image bytes exactly as stored (what Glance hashed and signed), in
//! arbitrary chunks, and emits [`Extent`]s of the *virtual disk*. Contract, for every decoder:
//!
//! - `feed` is called with consecutive chunks of the stream (the decoder tracks the stream
//!   offset itself); `finish` is called once after the last chunk.
//! - Across `feed` and `finish`, the emitted extents cover `[0, virtual_size)` exactly once:
//!   every byte of the virtual disk is in exactly one `Data` or `Zero` extent. Extents may be
//!   emitted in any order (sinks write positionally).
//! - `Data` extents start and end on multiples of [`ALIGN`] except an extent that ends at
//!   `virtual_size`; this lets sector-based encryption work on whole sectors.
//! - Nothing an image names (backing file, external data file, extent file) is ever opened.
//! - Errors name what was wrong and the value seen; after an error the decoder is not used again.
//!
//! Formats: raw and ISO (passthrough), qcow2 v2/v3, VMDK monolithicSparse and streamOptimized,
//! VHD dynamic and fixed, VHDX, VDI. Table-driven formats follow the tables as they stream by:
//! an image whose tables precede the data they map (what `qemu-img convert` writes) decodes
//! with memory proportional to its tables. Bytes that arrive before the table mapping them are
//! kept in a [`SpillStore`] until that table arrives or every table has been read.
//!
//! Bounds (all in [`DecodeOptions`], each exceeded bound is a [`DecodeError::Limit`]):
//! - memory for tables being collected and bookkeeping of wanted ranges: `metadata_limit`;
//! - spill store contents at any time: `spill_limit` bytes — in memory for [`MemorySpill`], on
//!   disk for [`FileSpill`] (a sparse file whose allocated size is the bytes put; cleared, i.e.
//!   truncated to 0, as soon as every table has been read);
//! - one compressed cluster/grain being inflated at a time per range (≤ 2 × cluster size);
//! - the virtual size: `max_virtual_size`.
//!
//! Extents produced by one `feed` are returned from that call; their total over the whole run
//! is the virtual size (each guest byte once), but one call may return many when a late table
//! resolves many spilled ranges at once.

mod engine;
mod qcow2;
mod raw;
mod spill;
mod vdi;
mod vhd;
mod vhdx;
mod vmdk;

use bytes::Bytes;

use crate::Format;

pub use raw::RawDecoder;
pub use spill::{FileSpill, MemorySpill, SpillStore};

/// Alignment, in bytes, of `Data` extent boundaries (except at the end of the disk).
pub const ALIGN: u64 = 512;

/// A piece of the virtual disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extent {
    /// Bytes at a guest offset.
    Data {
        /// Offset in the virtual disk.
        offset: u64,
        /// The bytes (a cheap reference-counted slice when possible).
        data: Bytes,
    },
    /// A run of the virtual disk that reads as zeros (unallocated, or allocated and all zero).
    Zero {
        /// Offset in the virtual disk.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl Extent {
    /// Offset in the virtual disk.
    pub fn offset(&self) -> u64 {
        match self {
            Extent::Data { offset, .. } | Extent::Zero { offset, .. } => *offset,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Extent::Data { data, .. } => data.len() as u64,
            Extent::Zero { len, .. } => *len,
        }
    }

    /// Whether the extent is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a decoder could not go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The image is malformed: a table or field is out of range or inconsistent.
    #[error("malformed {format} image: {message}")]
    Malformed {
        /// The format being decoded.
        format: Format,
        /// What was wrong, with the value seen and what was allowed.
        message: String,
    },
    /// The image is refused by a named check: its tables are inconsistent in a way a reader
    /// must not act on (e.g. a table entry that points into the image's own metadata).
    #[error("{format} image rejected by check {check}: {message}")]
    Rejected {
        /// The format being decoded.
        format: Format,
        /// Stable dotted check id, e.g. `qcow2.l2_entry`.
        check: &'static str,
        /// What was wrong, with the values seen.
        message: String,
    },
    /// The image uses a feature the decoder does not implement.
    #[error("unsupported {format} feature: {message}")]
    Unsupported {
        /// The format being decoded.
        format: Format,
        /// Which feature.
        message: String,
    },
    /// A configured memory or spill bound would be exceeded.
    #[error("limit exceeded while decoding {format}: {message}")]
    Limit {
        /// The format being decoded.
        format: Format,
        /// Which bound, its value and what was needed.
        message: String,
    },
    /// The spill area failed.
    #[error("spill area I/O error: {0}")]
    Spill(#[from] std::io::Error),
}

impl DecodeError {
    /// The stable check id of a [`DecodeError::Rejected`] error (`None` for the other kinds).
    pub fn check(&self) -> Option<&'static str> {
        match self {
            DecodeError::Rejected { check, .. } => Some(check),
            _ => None,
        }
    }
}

/// Options common to decoders.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DecodeOptions {
    /// Stream length in bytes, if known in advance (checked at the end; lets decoders reject
    /// ranges past the end early).
    pub stream_len: Option<u64>,
    /// Detect all-zero blocks inside data and emit them as `Zero` extents.
    pub detect_zeroes: bool,
    /// Most bytes the spill store may hold at once: image bytes that arrived before the table
    /// that maps them (default 256 MiB, sized for [`MemorySpill`]; raise it when supplying a
    /// [`FileSpill`]). Exceeding it is [`DecodeError::Limit`].
    pub spill_limit: u64,
    /// Most bytes of metadata a decoder holds at once: tables being collected, compressed
    /// clusters being inflated, and bookkeeping for wanted ranges (default 512 MiB).
    /// Exceeding it is [`DecodeError::Limit`].
    pub metadata_limit: u64,
    /// Largest virtual disk accepted (default 64 TiB). Larger is [`DecodeError::Limit`].
    pub max_virtual_size: u64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            stream_len: None,
            detect_zeroes: true,
            spill_limit: 256 << 20,
            metadata_limit: 512 << 20,
            max_virtual_size: 64 << 40,
        }
    }
}

/// A streaming decoder (see the module docs for the contract).
pub trait Decoder: Send {
    /// Consume the next chunk of image bytes; push any extents that became known to `out`.
    fn feed(&mut self, chunk: &Bytes, out: &mut Vec<Extent>) -> Result<(), DecodeError>;
    /// The stream ended: push the remaining extents and check completeness.
    fn finish(&mut self, out: &mut Vec<Extent>) -> Result<(), DecodeError>;
    /// The virtual disk size, once known.
    fn virtual_size(&self) -> Option<u64>;
}

/// The decoder that turns a stream of `format` into raw extents, spilling to memory
/// ([`MemorySpill`], bounded by `opts.spill_limit`).
pub fn decoder_for(format: Format, opts: &DecodeOptions) -> Result<Box<dyn Decoder>, DecodeError> {
    decoder_with_spill(format, opts, Box::new(MemorySpill::new()))
}

/// Like [`decoder_for`], with a caller-supplied spill store (e.g. a [`FileSpill`] on a temp
/// file). The store is used only by table-driven formats, bounded by `opts.spill_limit`.
pub fn decoder_with_spill(
    format: Format,
    opts: &DecodeOptions,
    spill: Box<dyn SpillStore>,
) -> Result<Box<dyn Decoder>, DecodeError> {
    match format {
        Format::Raw | Format::Iso => Ok(Box::new(RawDecoder::new(opts.detect_zeroes))),
        Format::Qcow2 => Ok(Box::new(engine::Engine::new(
            qcow2::Qcow2::new(opts),
            opts,
            spill,
        ))),
        Format::Vmdk => Ok(Box::new(engine::Engine::new(
            vmdk::Vmdk::new(opts),
            opts,
            spill,
        ))),
        Format::Vhd => Ok(Box::new(vhd::VhdDecoder::new(opts, spill))),
        Format::Vdi => Ok(Box::new(engine::Engine::new(
            vdi::Vdi::new(opts),
            opts,
            spill,
        ))),
        Format::Vhdx => Ok(Box::new(engine::Engine::new(
            vhdx::Vhdx::new(opts),
            opts,
            spill,
        ))),
        other => Err(DecodeError::Unsupported {
            format: other,
            message: format!("no decoder to raw for {other} images"),
        }),
    }
}

/// Fuzzing entry point: the first byte selects the decoder, the second the chunk size; the
/// rest is the image. Decodes with tight limits at two chunk sizes, and checks the extent
/// contract (coverage exactly once, alignment) and chunking invariance (same verdict, same disk
/// for small disks). Panics only on a contract violation.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    const FORMATS: [Format; 6] = [
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Vhd,
        Format::Vhdx,
        Format::Vdi,
    ];
    const CHUNKS: [usize; 6] = [1, 7, 512, 4096, 65536, usize::MAX];
    let (Some(&sel), Some(&ch)) = (data.first(), data.get(1)) else {
        return;
    };
    let format = FORMATS[usize::from(sel) % FORMATS.len()];
    let image = Bytes::copy_from_slice(&data[2..]);
    let opts = DecodeOptions {
        spill_limit: 32 << 20,
        metadata_limit: 64 << 20,
        max_virtual_size: 64 << 20,
        ..DecodeOptions::default()
    };
    let run = |chunk: usize| -> Result<(Vec<Extent>, u64), DecodeError> {
        let mut dec = decoder_for(format, &opts)?;
        let mut out = Vec::new();
        let chunk = chunk.clamp(1, image.len().max(1));
        let mut off = 0;
        while off < image.len() {
            let n = chunk.min(image.len() - off);
            dec.feed(&image.slice(off..off + n), &mut out)?;
            off += n;
        }
        dec.finish(&mut out)?;
        let size = dec.virtual_size().unwrap_or(image.len() as u64);
        Ok((out, size))
    };
    let a = run(CHUNKS[usize::from(ch) % CHUNKS.len()]);
    let b = run(CHUNKS[usize::from(ch / 8) % CHUNKS.len()]);
    match (&a, &b) {
        (Ok((ea, sa)), Ok((eb, sb))) => {
            assert_eq!(sa, sb, "virtual size depends on chunking");
            let da = fuzz_check(ea, *sa);
            let db = fuzz_check(eb, *sb);
            assert_eq!(da, db, "decoded disk depends on chunking");
        }
        (Err(_), Err(_)) => {}
        _ => panic!(
            "verdict depends on chunking: {:?} vs {:?}",
            a.as_ref().err(),
            b.as_ref().err()
        ),
    }
}

/// Fuzzing: the VMDK decoder's descriptor check (see [`crate::fuzzing`]).
pub(crate) fn fuzz_vmdk_descriptor(text: &[u8], capacity: u64) -> Result<(), DecodeError> {
    vmdk::check_descriptor(text, capacity)
}

/// Check the extent contract; return the disk when it is small (≤ 1 MiB).
fn fuzz_check(extents: &[Extent], size: u64) -> Option<Vec<u8>> {
    let mut spans: Vec<(u64, u64, usize)> = extents
        .iter()
        .enumerate()
        .map(|(i, e)| (e.offset(), e.len(), i))
        .collect();
    spans.sort_unstable();
    let mut at = 0u64;
    for &(off, len, i) in &spans {
        assert_eq!(
            off, at,
            "extents leave a gap or overlap at {at} (next at {off})"
        );
        at = off.saturating_add(len);
        if let Some(Extent::Data { .. }) = extents.get(i) {
            assert!(
                off.is_multiple_of(ALIGN),
                "data extent starts unaligned at {off}"
            );
            assert!(
                at.is_multiple_of(ALIGN) || at == size,
                "data extent ends unaligned at {at}"
            );
        }
    }
    assert_eq!(at, size, "extents end at {at}, virtual size {size}");
    if size > 1 << 20 {
        return None;
    }
    let mut disk = vec![0u8; size as usize];
    for e in extents {
        if let Extent::Data { offset, data } = e {
            let o = *offset as usize;
            if let Some(d) = disk.get_mut(o..o + data.len()) {
                d.copy_from_slice(data);
            }
        }
    }
    Some(disk)
}
