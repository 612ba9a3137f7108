//! The contract every format probe follows, and the small helpers they share.
//!
//! A probe is a pure function of the *prefix* of the stream seen so far (plus whether more prefix
//! can still come). It answers one of three things:
//!
//! - [`Probe::Need`]`(n)`: "I cannot tell until I have seen `n` bytes" (only while more can come);
//! - [`Probe::NotThis`]: the format's magic is absent — the probe retires;
//! - [`Probe::Found`]: the magic is present; the [`Found`] carries what was learned, including
//!   [`Finding`]s that are either *malformed* structure or *unsafe* content.
//!
//! Probes only read bytes they have asked for, so re-running one on a longer prefix gives the
//! same answer: this is what makes the inspector independent of how the stream is chunked.

use crate::Format;

use super::PartitionTable;

/// Whether more prefix bytes can still arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// More bytes may come: a probe short of data answers `Need`.
    More,
    /// The stream ended: the prefix is the whole stream.
    Eos,
    /// The inspector's look-ahead cap was reached: no more prefix will be buffered.
    Cap,
}

/// What a probe sees.
pub(crate) struct Ctx<'a> {
    pub data: &'a [u8],
    pub end: End,
}

/// Why a probe stopped reading.
#[derive(Debug)]
pub(crate) enum Stop {
    /// More bytes are needed (only when `End::More`).
    Need(u64),
    /// The bytes at `[at, at + len)` will never be available.
    Short { at: u64, len: u64, end: End },
}

impl<'a> Ctx<'a> {
    /// The bytes at `[off, off + len)`, or why they are not available.
    pub fn get(&self, off: u64, len: u64) -> Result<&'a [u8], Stop> {
        let end = off.checked_add(len).ok_or(Stop::Short {
            at: off,
            len,
            end: End::Cap,
        })?;
        let avail = self.data.len() as u64;
        if end <= avail {
            // Both bounds are <= data.len(), so they fit in usize.
            let (s, e) = (off as usize, end as usize);
            return Ok(self.data.get(s..e).unwrap_or(&[]));
        }
        match self.end {
            End::More if end <= super::MAX_LOOKAHEAD => Err(Stop::Need(end)),
            End::More => Err(Stop::Short {
                at: off,
                len,
                end: End::Cap,
            }),
            e => Err(Stop::Short {
                at: off,
                len,
                end: e,
            }),
        }
    }

    /// Whether the bytes at `off` equal `magic`; `Ok(false)` when they never can (stream too short).
    pub fn magic(&self, off: u64, magic: &[u8]) -> Result<bool, Stop> {
        match self.get(off, magic.len() as u64) {
            Ok(b) => Ok(b == magic),
            Err(Stop::Short { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn be32(&self, off: u64) -> Result<u32, Stop> {
        let b = self.get(off, 4)?;
        Ok(u32::from_be_bytes(arr(b)))
    }
    pub fn be64(&self, off: u64) -> Result<u64, Stop> {
        let b = self.get(off, 8)?;
        Ok(u64::from_be_bytes(arr(b)))
    }
    pub fn le32(&self, off: u64) -> Result<u32, Stop> {
        let b = self.get(off, 4)?;
        Ok(u32::from_le_bytes(arr(b)))
    }
    pub fn le64(&self, off: u64) -> Result<u64, Stop> {
        let b = self.get(off, 8)?;
        Ok(u64::from_le_bytes(arr(b)))
    }
}

/// A fixed-size array from a slice of exactly that size (zero-filled if it is not).
pub(crate) fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = b.get(..N) {
        out.copy_from_slice(src);
    }
    out
}

/// Big-endian u32 at `off` of a slice (0 when out of range; callers size their slices).
pub(crate) fn be32_at(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(arr(b.get(off..).unwrap_or(&[])))
}
/// Big-endian u64 at `off`.
pub(crate) fn be64_at(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(arr(b.get(off..).unwrap_or(&[])))
}
/// Little-endian u16 at `off`.
pub(crate) fn le16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(arr(b.get(off..).unwrap_or(&[])))
}
/// Little-endian u32 at `off`.
pub(crate) fn le32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(arr(b.get(off..).unwrap_or(&[])))
}
/// Little-endian u64 at `off`.
pub(crate) fn le64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(arr(b.get(off..).unwrap_or(&[])))
}

/// Whether a finding is about broken structure or about dangerous content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// The structure is inconsistent or out of range (a reader would fail or misbehave).
    Malformed,
    /// The structure is valid but makes the image unsafe to hand to qemu (references, features).
    Unsafe,
}

/// One thing a probe found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    pub class: Class,
    pub check: &'static str,
    pub message: String,
}

impl Finding {
    pub fn malformed(check: &'static str, message: impl Into<String>) -> Self {
        Finding {
            class: Class::Malformed,
            check,
            message: message.into(),
        }
    }
    pub fn unsafe_(check: &'static str, message: impl Into<String>) -> Self {
        Finding {
            class: Class::Unsafe,
            check,
            message: message.into(),
        }
    }
}

/// Checks that can only run once the stream length or its last bytes are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Deferred {
    /// qcow2 metadata tables must lie within the file: `(name, check, offset, length)`.
    WithinFile(Vec<(&'static str, &'static str, u64, u64)>),
    /// The virtual size is the stream length minus a payload offset (LUKS), or `size` if fixed.
    Payload {
        format: Format,
        offset: u64,
        size: Option<u64>,
    },
    /// A VMDK with its grain directory at the end: footer rules on the last 1536 bytes.
    VmdkFooter(super::vmdk::FooterExpect),
    /// A dynamic VHD: the footer copy at the end must match the one at offset 0.
    VhdFooterCopy(Box<[u8; 512]>),
    /// The virtual size is the stream length (raw, ISO).
    StreamLen,
}

/// What a probe learned about a stream whose magic matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub format: Format,
    /// A short subformat label (`"v3"`, `"streamOptimized"`, `"dynamic"`, `"luks1"`, …).
    pub subformat: Option<&'static str>,
    pub virtual_size: Option<u64>,
    pub findings: Vec<Finding>,
    /// Only set by the partition-table probe.
    pub partition: Option<PartitionTable>,
    pub deferred: Vec<Deferred>,
}

impl Found {
    pub fn new(format: Format) -> Self {
        Found {
            format,
            subformat: None,
            virtual_size: None,
            findings: Vec::new(),
            partition: None,
            deferred: Vec::new(),
        }
    }
}

/// A probe's answer.
#[derive(Debug)]
pub(crate) enum Probe {
    Need(u64),
    NotThis,
    Found(Box<Found>),
}

/// Gate on a magic: `Some(probe)` to return at once (retire, or wait for more bytes), `None` when
/// the magic matched.
pub(crate) fn gate(ctx: &Ctx<'_>, off: u64, magic: &[u8]) -> Option<Probe> {
    match ctx.magic(off, magic) {
        Ok(true) => None,
        Ok(false) => Some(Probe::NotThis),
        Err(Stop::Need(n)) => Some(Probe::Need(n)),
        Err(Stop::Short { .. }) => Some(Probe::NotThis),
    }
}

/// Turn a probe body's result into a `Probe`. A `Stop::Short` after the magic matched becomes a
/// malformed finding (truncated stream, or a structure beyond the look-ahead) on what was found.
pub(crate) fn conclude(mut f: Found, r: Result<(), Stop>) -> Probe {
    match r {
        Ok(()) => Probe::Found(Box::new(f)),
        Err(Stop::Need(n)) => Probe::Need(n),
        Err(Stop::Short { at, len, end }) => {
            let format = f.format;
            let (check, why) = if end == End::Eos {
                (truncated_id(format), "the stream ends first")
            } else {
                (
                    lookahead_id(format),
                    "that is beyond the inspector's look-ahead",
                )
            };
            f.findings.push(Finding::malformed(
                check,
                format!(
                    "{format} structure needs bytes {at}..{} but {why} (look-ahead is {} bytes)",
                    at.saturating_add(len),
                    super::MAX_LOOKAHEAD
                ),
            ));
            Probe::Found(Box::new(f))
        }
    }
}

fn truncated_id(f: Format) -> &'static str {
    match f {
        Format::Qcow2 => "qcow2.truncated",
        Format::Vmdk => "vmdk.truncated",
        Format::Vhd => "vhd.truncated",
        Format::Vhdx => "vhdx.truncated",
        Format::Vdi => "vdi.truncated",
        Format::Iso => "iso.truncated",
        Format::Luks => "luks.truncated",
        _ => "format.truncated",
    }
}

fn lookahead_id(f: Format) -> &'static str {
    match f {
        Format::Qcow2 => "qcow2.lookahead",
        Format::Vmdk => "vmdk.lookahead",
        Format::Vhd => "vhd.lookahead",
        Format::Vhdx => "vhdx.lookahead",
        Format::Vdi => "vdi.lookahead",
        Format::Iso => "iso.lookahead",
        Format::Luks => "luks.lookahead",
        _ => "format.lookahead",
    }
}
