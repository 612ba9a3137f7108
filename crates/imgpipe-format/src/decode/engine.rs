//! The streaming machinery shared by the table-driven decoders.
//!
//! A format's [`Layout`] says which byte ranges of the stream it wants and what they are:
//! a table to hand back whole ([`Want::Meta`]), guest data to emit as it passes
//! ([`Want::Data`]), or a compressed cluster to inflate ([`Want::Compressed`]). The [`Core`]
//! sweeps the stream once: bytes of a wanted range go to it (ranges may overlap; each gets the
//! bytes), bytes nobody wants yet go to the spill store while the layout still has tables to
//! read, and are dropped once it has read them all. A range wanted *behind* the stream position
//! is served from the spill store, or is an error naming the range when its bytes were already
//! used for something else.
//!
//! Memory: pending ranges (a few dozen bytes each, runs of contiguous clusters merged by the
//! layouts) plus tables being collected are bounded by `metadata_limit`; the spill store by
//! `spill_limit`.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};

use super::raw::{is_zero, split_zeroes};
use super::spill::SpillStore;
use super::{DecodeError, DecodeOptions, Decoder, Extent};
use crate::Format;

/// Zero-detection block (matches [`super::raw`]).
const ZERO_BLOCK: u64 = 4096;
/// Sector size used by compressed-cluster descriptors.
const SECTOR: u64 = 512;
/// Bookkeeping cost charged per pending range against `metadata_limit`.
const PENDING_COST: u64 = 96;
/// Largest piece read back from the spill store at once for a data range.
const SPILL_PIECE: u64 = 1 << 20;

/// A layout-chosen label for a table range.
pub(crate) type Tag = u64;

/// A compression codec for compressed clusters or grains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Raw deflate (RFC 1951), as qcow2 stores zlib clusters.
    Deflate,
    /// zlib-wrapped deflate (RFC 1950), as VMDK stores grains.
    Zlib,
    /// A zstd frame, as qcow2 stores zstd clusters.
    Zstd,
}

/// What a range of the stream is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Want {
    /// A table: collected whole and handed to [`Layout::on_meta`].
    Meta(Tag),
    /// Guest data for `guest..guest + len`.
    Data {
        /// Guest offset of the first byte.
        guest: u64,
    },
    /// A qcow2 compressed cluster: inflated to exactly `out_len` bytes (a complete frame for
    /// zstd), of which the first `emit_len` are emitted at `guest`. Bytes of the range past the
    /// end of the stream read as zeros (as QEMU reads them).
    Compressed {
        /// Guest offset of the cluster.
        guest: u64,
        /// Cluster size.
        out_len: u32,
        /// Bytes to emit (less than `out_len` at the end of the disk).
        emit_len: u32,
        /// How the cluster is compressed.
        codec: Codec,
    },
}

/// The per-format half of a table-driven decoder.
pub(crate) trait Layout: Send {
    /// The format, for error messages.
    const FORMAT: Format;
    /// Register the first ranges (the header).
    fn start(&mut self, core: &mut Core) -> Result<(), DecodeError>;
    /// A wanted table arrived whole.
    fn on_meta(
        &mut self,
        core: &mut Core,
        tag: Tag,
        host: u64,
        bytes: Vec<u8>,
    ) -> Result<(), DecodeError>;
    /// Whether every table that maps guest data has been read (then unplaced bytes are
    /// garbage and are no longer kept).
    fn tables_complete(&self) -> bool;
    /// The stream ended and every wanted range was served: check completeness.
    fn finish(&mut self, core: &mut Core) -> Result<(), DecodeError>;
    /// The virtual disk size, once the header was read.
    fn virtual_size(&self) -> Option<u64>;
}

#[derive(Debug)]
struct Pending {
    start: u64,
    len: u64,
    want: Want,
}

#[derive(Debug)]
enum Body {
    /// A table or compressed cluster being collected.
    Buf(Vec<u8>),
    /// Data: bytes held back until they end on a zero-block boundary.
    Data(BytesMut),
}

#[derive(Debug)]
struct Active {
    start: u64,
    len: u64,
    /// Bytes of the range received so far.
    got: u64,
    want: Want,
    body: Body,
}

impl Active {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// The shared half: stream position, wanted ranges, spill, output.
pub(crate) struct Core {
    format: Format,
    detect_zeroes: bool,
    stream_len: Option<u64>,
    pos: u64,
    pending: BTreeMap<(u64, u64), Pending>,
    seq: u64,
    active: Vec<Active>,
    ready: VecDeque<(Tag, u64, Vec<u8>)>,
    out: Vec<Extent>,
    spill: Box<dyn SpillStore>,
    /// Ranges held in the spill store: start → end, disjoint.
    spilled: BTreeMap<u64, u64>,
    spilled_bytes: u64,
    spill_limit: u64,
    metadata_limit: u64,
    /// Bytes of tables and compressed clusters being collected.
    buffered: u64,
    /// The layout read every table: nothing more is spilled.
    complete: bool,
    inflater: Option<flate2::Decompress>,
    zlib_inflater: Option<flate2::Decompress>,
    zstd: Option<zstd::stream::raw::Decoder<'static>>,
    /// Peak of spilled bytes, for reports and tests.
    spill_peak: u64,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("format", &self.format)
            .field("pos", &self.pos)
            .field("pending", &self.pending.len())
            .field("active", &self.active.len())
            .field("spilled_bytes", &self.spilled_bytes)
            .finish_non_exhaustive()
    }
}

pub(crate) fn malformed(format: Format, message: impl Into<String>) -> DecodeError {
    DecodeError::Malformed {
        format,
        message: message.into(),
    }
}

pub(crate) fn unsupported(format: Format, message: impl Into<String>) -> DecodeError {
    DecodeError::Unsupported {
        format,
        message: message.into(),
    }
}

pub(crate) fn rejected(
    format: Format,
    check: &'static str,
    message: impl Into<String>,
) -> DecodeError {
    DecodeError::Rejected {
        format,
        check,
        message: message.into(),
    }
}

/// Host byte ranges that hold an image's own metadata (header, descriptor, tables), so that a
/// table entry pointing into them is refused by name instead of being read as guest data (or
/// failing later because the bytes were already used as a table).
///
/// A few named ranges plus one family of same-length tables (qcow2 L2 tables, VMDK grain
/// tables) kept as sorted start offsets: 8 bytes per table, queried by binary search.
#[derive(Debug, Default)]
pub(crate) struct MetaRanges {
    named: Vec<(u64, u64, &'static str)>,
    tables: Vec<u64>,
    table_len: u64,
    table_what: &'static str,
}

impl MetaRanges {
    /// Record `what` at `start..start + len` (the end saturates).
    pub(crate) fn add(&mut self, what: &'static str, start: u64, len: u64) {
        if len > 0 {
            self.named.push((start, start.saturating_add(len), what));
        }
    }

    /// Record the family of tables of `len` bytes each at `starts`.
    pub(crate) fn set_tables(&mut self, what: &'static str, mut starts: Vec<u64>, len: u64) {
        starts.sort_unstable();
        starts.dedup();
        self.tables = starts;
        self.table_len = len;
        self.table_what = what;
    }

    /// The first metadata range that `start..start + len` overlaps: (what, start, end).
    pub(crate) fn find(&self, start: u64, len: u64) -> Option<(&'static str, u64, u64)> {
        let end = start.saturating_add(len);
        if len == 0 {
            return None;
        }
        if let Some(&(s, e, what)) = self.named.iter().find(|(s, e, _)| *s < end && *e > start) {
            return Some((what, s, e));
        }
        if self.table_len == 0 {
            return None;
        }
        // The first table ending after `start` overlaps if it begins before `end`.
        let len = self.table_len;
        let i = self
            .tables
            .partition_point(|t| t.saturating_add(len) <= start);
        let t = *self.tables.get(i)?;
        let t_end = t.saturating_add(self.table_len);
        (t < end && t_end > start).then_some((self.table_what, t, t_end))
    }
}

pub(crate) fn limit(format: Format, message: impl Into<String>) -> DecodeError {
    DecodeError::Limit {
        format,
        message: message.into(),
    }
}

/// Emit guest bytes, turning all-zero blocks into `Zero` extents when asked.
pub(crate) fn emit_data(out: &mut Vec<Extent>, detect: bool, offset: u64, data: Bytes) {
    if data.is_empty() {
        return;
    }
    if !detect {
        out.push(Extent::Data { offset, data });
    } else if (data.len() as u64) < ZERO_BLOCK && is_zero(&data) {
        push_zero(out, offset, data.len() as u64);
    } else {
        split_zeroes(offset, data, out);
    }
}

/// Push a `Zero` extent, merging it with a directly preceding one.
pub(crate) fn push_zero(out: &mut Vec<Extent>, offset: u64, len: u64) {
    if len == 0 {
        return;
    }
    if let Some(Extent::Zero { offset: o, len: l }) = out.last_mut()
        && *o + *l == offset
    {
        *l += len;
        return;
    }
    out.push(Extent::Zero { offset, len });
}

/// Feed the next bytes of a data range (`piece` starts at relative offset `got`).
fn data_piece(
    out: &mut Vec<Extent>,
    detect: bool,
    guest: u64,
    len: u64,
    got: &mut u64,
    carry: &mut BytesMut,
    piece: Bytes,
) {
    let carry_start = *got - carry.len() as u64;
    let end_rel = *got + piece.len() as u64;
    let cut = if end_rel == len {
        end_rel
    } else {
        let abs = (guest + end_rel) / ZERO_BLOCK * ZERO_BLOCK;
        if abs <= guest + carry_start {
            carry_start
        } else {
            abs - guest
        }
    };
    if carry.is_empty() {
        let k = (cut - *got) as usize;
        if k > 0 {
            emit_data(out, detect, guest + carry_start, piece.slice(..k));
        }
        if k < piece.len() {
            carry.extend_from_slice(&piece[k..]);
        }
    } else {
        carry.extend_from_slice(&piece);
        let k = (cut - carry_start) as usize;
        if k > 0 {
            let head = carry.split_to(k).freeze();
            emit_data(out, detect, guest + carry_start, head);
        }
    }
    *got = end_rel;
}

#[allow(dead_code)] // accessors used by formats still to come
impl Core {
    fn new(format: Format, opts: &DecodeOptions, spill: Box<dyn SpillStore>) -> Self {
        Core {
            format,
            detect_zeroes: opts.detect_zeroes,
            stream_len: opts.stream_len,
            pos: 0,
            pending: BTreeMap::new(),
            seq: 0,
            active: Vec::new(),
            ready: VecDeque::new(),
            out: Vec::new(),
            spill,
            spilled: BTreeMap::new(),
            spilled_bytes: 0,
            spill_limit: opts.spill_limit,
            metadata_limit: opts.metadata_limit,
            buffered: 0,
            complete: false,
            inflater: None,
            zlib_inflater: None,
            zstd: None,
            spill_peak: 0,
        }
    }

    /// Stream offset of the next byte to arrive.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// The stream length, if the caller gave it.
    pub(crate) fn stream_len(&self) -> Option<u64> {
        self.stream_len
    }

    /// Largest number of bytes held in the spill store at once so far.
    pub(crate) fn spill_peak(&self) -> u64 {
        self.spill_peak
    }

    /// Cap for one table or buffer a layout wants to allocate.
    pub(crate) fn metadata_limit(&self) -> u64 {
        self.metadata_limit
    }

    /// Emit a zero run of the virtual disk.
    pub(crate) fn zero(&mut self, guest: u64, len: u64) {
        push_zero(&mut self.out, guest, len);
    }

    /// Emit guest data decoded by the layout itself (must follow the alignment contract).
    pub(crate) fn data(&mut self, guest: u64, data: Bytes) {
        emit_data(&mut self.out, self.detect_zeroes, guest, data);
    }

    fn charge(&mut self, bytes: u64, what: &str) -> Result<(), DecodeError> {
        let pending_cost = (self.pending.len() as u64).saturating_mul(PENDING_COST);
        let need = self
            .buffered
            .saturating_add(bytes)
            .saturating_add(pending_cost);
        if need > self.metadata_limit {
            return Err(limit(
                self.format,
                format!(
                    "metadata memory: {what} needs {bytes} more bytes on top of {} held; \
                     metadata_limit is {}",
                    self.buffered.saturating_add(pending_cost),
                    self.metadata_limit
                ),
            ));
        }
        self.buffered += bytes;
        Ok(())
    }

    /// Want `len` bytes at stream offset `start`.
    pub(crate) fn want(&mut self, start: u64, len: u64, want: Want) -> Result<(), DecodeError> {
        if start.checked_add(len).is_none() {
            return Err(malformed(
                self.format,
                format!("range at stream offset {start} of {len} bytes overflows"),
            ));
        }
        if len == 0 {
            if let Want::Meta(tag) = want {
                self.ready.push_back((tag, start, Vec::new()));
            }
            return Ok(());
        }
        if let Some(sl) = self.stream_len
            && start + len > sl
            && !matches!(want, Want::Compressed { .. })
        {
            return Err(malformed(
                self.format,
                format!(
                    "{} at stream offset {start}..{} lies past the end of the stream ({sl} bytes)",
                    describe(&want),
                    start + len
                ),
            ));
        }
        if start >= self.pos {
            let cost = (self.pending.len() as u64 + 1).saturating_mul(PENDING_COST);
            if self.buffered.saturating_add(cost) > self.metadata_limit {
                return Err(limit(
                    self.format,
                    format!(
                        "metadata memory: {} ranges pending; metadata_limit is {} bytes",
                        self.pending.len() + 1,
                        self.metadata_limit
                    ),
                ));
            }
            self.seq += 1;
            self.pending
                .insert((start, self.seq), Pending { start, len, want });
            return Ok(());
        }
        self.want_behind(start, len, want)
    }

    fn spill_has(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        while at < end {
            match self.spilled.range(..=at).next_back() {
                Some((_, e)) if *e > at => at = *e,
                _ => return false,
            }
        }
        true
    }

    fn want_behind(&mut self, start: u64, len: u64, want: Want) -> Result<(), DecodeError> {
        let end = start + len;
        let have_end = end.min(self.pos);
        if !self.spill_has(start, have_end) {
            return Err(unsupported(
                self.format,
                format!(
                    "{} at stream offset {start}..{end} is referenced by a table read at stream \
                     offset {}, after those bytes had passed and been used by another structure \
                     or dropped (only bytes no table had claimed are kept)",
                    describe(&want),
                    self.pos
                ),
            ));
        }
        let mut act = self.activate_one(start, len, want)?;
        // Serve the part behind the stream position from the spill store, in bounded pieces.
        let mut at = start;
        while at < have_end {
            let n = (have_end - at).min(SPILL_PIECE);
            let mut buf = vec![0u8; n as usize];
            self.spill.get(at, &mut buf)?;
            self.deliver(&mut act, Bytes::from(buf));
            at += n;
        }
        if act.got == act.len {
            self.complete_region(act)?;
        } else {
            self.active.push(act);
        }
        Ok(())
    }

    fn activate_one(&mut self, start: u64, len: u64, want: Want) -> Result<Active, DecodeError> {
        let body = match want {
            Want::Data { .. } => Body::Data(BytesMut::new()),
            Want::Meta(_) | Want::Compressed { .. } => {
                self.charge(len, describe(&want))?;
                Body::Buf(Vec::with_capacity(len as usize))
            }
        };
        Ok(Active {
            start,
            len,
            got: 0,
            want,
            body,
        })
    }

    fn activate(&mut self) -> Result<(), DecodeError> {
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > self.pos {
                break;
            }
            let p = entry.remove();
            // `want` sends ranges behind the position elsewhere, so `p.start == self.pos`.
            let act = self.activate_one(p.start, p.len, p.want)?;
            self.active.push(act);
        }
        Ok(())
    }

    fn deliver(&mut self, act: &mut Active, piece: Bytes) {
        match (&mut act.body, act.want) {
            (Body::Data(carry), Want::Data { guest }) => data_piece(
                &mut self.out,
                self.detect_zeroes,
                guest,
                act.len,
                &mut act.got,
                carry,
                piece,
            ),
            (Body::Buf(buf), _) => {
                buf.extend_from_slice(&piece);
                act.got += piece.len() as u64;
            }
            // Bodies are created to match their wants.
            (Body::Data(_), _) => act.got += piece.len() as u64,
        }
    }

    fn complete_region(&mut self, act: Active) -> Result<(), DecodeError> {
        match (act.want, act.body) {
            (Want::Meta(tag), Body::Buf(buf)) => {
                self.ready.push_back((tag, act.start, buf));
            }
            (
                Want::Compressed {
                    guest,
                    out_len,
                    emit_len,
                    codec,
                },
                Body::Buf(buf),
            ) => {
                self.buffered = self.buffered.saturating_sub(act.len);
                let (out, produced, ended) = self.decompress(codec, &buf, out_len as usize)?;
                if produced != out_len as usize || (codec == Codec::Zstd && !ended) {
                    return Err(malformed(
                        self.format,
                        format!(
                            "compressed cluster for guest offset {guest} at stream offset {} \
                             ({} bytes) inflates to {produced} bytes{}; a cluster is {out_len}",
                            act.start,
                            act.len,
                            if ended {
                                ""
                            } else {
                                " without a complete frame"
                            }
                        ),
                    ));
                }
                let mut out = Bytes::from(out);
                out.truncate(emit_len as usize);
                emit_data(&mut self.out, self.detect_zeroes, guest, out);
            }
            (Want::Data { .. }, _) | (_, Body::Data(_)) => {}
        }
        Ok(())
    }

    /// Inflate `input` into at most `out_len` bytes: (buffer, bytes produced, whether the
    /// stream/frame ended).
    pub(crate) fn decompress(
        &mut self,
        codec: Codec,
        input: &[u8],
        out_len: usize,
    ) -> Result<(Vec<u8>, usize, bool), DecodeError> {
        let format = self.format;
        let bad = |what: String| malformed(format, format!("corrupt compressed data: {what}"));
        let mut out = vec![0u8; out_len];
        match codec {
            Codec::Deflate | Codec::Zlib => {
                let slot = if codec == Codec::Deflate {
                    &mut self.inflater
                } else {
                    &mut self.zlib_inflater
                };
                let header = codec == Codec::Zlib;
                let d = slot.get_or_insert_with(|| flate2::Decompress::new(header));
                d.reset(header);
                let (mut ip, mut op) = (0usize, 0usize);
                loop {
                    let (tin, tout) = (d.total_in(), d.total_out());
                    let st = d
                        .decompress(
                            &input[ip..],
                            &mut out[op..],
                            flate2::FlushDecompress::Finish,
                        )
                        .map_err(|e| bad(e.to_string()))?;
                    let di = (d.total_in() - tin) as usize;
                    let dout = (d.total_out() - tout) as usize;
                    ip += di;
                    op += dout;
                    if st == flate2::Status::StreamEnd {
                        return Ok((out, op, true));
                    }
                    if op == out_len || (di == 0 && dout == 0) {
                        return Ok((out, op, false));
                    }
                }
            }
            Codec::Zstd => {
                use zstd::stream::raw::{DParameter, InBuffer, Operation, OutBuffer};
                if self.zstd.is_none() {
                    let mut z = zstd::stream::raw::Decoder::new()
                        .map_err(|e| bad(format!("zstd context: {e}")))?;
                    // Clusters are at most 2 MiB: refuse frames that ask for larger windows.
                    z.set_parameter(DParameter::WindowLogMax(22))
                        .map_err(|e| bad(format!("zstd window limit: {e}")))?;
                    self.zstd = Some(z);
                }
                let Some(z) = self.zstd.as_mut() else {
                    return Err(bad("zstd context unavailable".into()));
                };
                z.reinit().map_err(|e| bad(format!("zstd reset: {e}")))?;
                let mut inb = InBuffer::around(input);
                let mut outb = OutBuffer::around(&mut out[..]);
                let mut last = 1usize;
                while outb.pos() < out_len {
                    let (pi, po) = (inb.pos(), outb.pos());
                    last = z
                        .run(&mut inb, &mut outb)
                        .map_err(|e| bad(format!("zstd: {e}")))?;
                    if inb.pos() == pi && outb.pos() == po {
                        break;
                    }
                    if last == 0 {
                        break;
                    }
                }
                let produced = outb.pos();
                Ok((out, produced, last == 0))
            }
        }
    }

    fn spill_put(&mut self, start: u64, data: &[u8]) -> Result<(), DecodeError> {
        let end = start + data.len() as u64;
        // Only the parts not already held.
        let mut at = start;
        while at < end {
            if let Some((_, e)) = self.spilled.range(..=at).next_back()
                && *e > at
            {
                at = *e;
                continue;
            }
            let next = self.spilled.range(at..end).next().map_or(end, |(s, _)| *s);
            let n = next - at;
            if self.spilled_bytes.saturating_add(n) > self.spill_limit {
                return Err(limit(
                    self.format,
                    format!(
                        "spill area: {} bytes held for data that precedes the table mapping it, \
                         {n} more needed at stream offset {at}; spill_limit is {}",
                        self.spilled_bytes, self.spill_limit
                    ),
                ));
            }
            let lo = (at - start) as usize;
            let hi = (next - start) as usize;
            self.spill.put(at, &data[lo..hi])?;
            self.spilled_bytes += n;
            self.spill_peak = self.spill_peak.max(self.spilled_bytes);
            // Record, merging with a range that ends exactly here.
            let mut s = at;
            if let Some((ps, pe)) = self.spilled.range(..at).next_back()
                && *pe == at
            {
                s = *ps;
            }
            let mut e = next;
            if let Some(ne) = self.spilled.remove(&next) {
                e = ne;
            }
            self.spilled.insert(s, e);
            at = next;
        }
        Ok(())
    }

    fn set_complete(&mut self) -> Result<(), DecodeError> {
        if !self.complete {
            self.complete = true;
            self.spill.clear()?;
            self.spilled.clear();
            self.spilled_bytes = 0;
        }
        Ok(())
    }

    /// Length of the next piece to process from `avail` bytes at the current position.
    fn step_len(&self, avail: u64) -> u64 {
        let mut n = avail;
        if let Some(((s, _), _)) = self.pending.first_key_value() {
            n = n.min(s - self.pos);
        }
        for a in &self.active {
            n = n.min(a.end() - self.pos);
        }
        n
    }

    fn consume(&mut self, piece: Bytes) -> Result<(), DecodeError> {
        let a = self.pos;
        let b = a + piece.len() as u64;
        if self.active.is_empty() {
            if !self.complete {
                self.spill_put(a, &piece)?;
            }
        } else {
            let mut active = std::mem::take(&mut self.active);
            for act in &mut active {
                self.deliver(act, piece.clone());
            }
            if !self.complete {
                // A compressed cluster's first and last sectors may be shared with a
                // neighbour that a later table maps: keep those bytes too.
                for act in &active {
                    if let Want::Compressed { .. } = act.want {
                        let first = (
                            act.start / SECTOR * SECTOR,
                            act.start / SECTOR * SECTOR + SECTOR,
                        );
                        let last_s = (act.end() - 1) / SECTOR * SECTOR;
                        for (s, e) in [first, (last_s, last_s + SECTOR)] {
                            let (lo, hi) = (s.max(a), e.min(b));
                            if lo < hi {
                                self.spill_put(lo, &piece[(lo - a) as usize..(hi - a) as usize])?;
                            }
                        }
                    }
                }
            }
            self.active = active;
        }
        self.pos = b;
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].end() == self.pos {
                let act = self.active.swap_remove(i);
                self.complete_region(act)?;
            } else {
                i += 1;
            }
        }
        Ok(())
    }
}

fn describe(want: &Want) -> &'static str {
    match want {
        Want::Meta(_) => "table",
        Want::Data { .. } => "data cluster",
        Want::Compressed { .. } => "compressed cluster",
    }
}

/// A table-driven streaming decoder: a [`Core`] driven by a [`Layout`].
pub(crate) struct Engine<L: Layout> {
    core: Core,
    layout: L,
    started: bool,
    failed: bool,
}

impl<L: Layout> std::fmt::Debug for Engine<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("core", &self.core).finish()
    }
}

impl<L: Layout> Engine<L> {
    pub(crate) fn new(layout: L, opts: &DecodeOptions, spill: Box<dyn SpillStore>) -> Self {
        Engine {
            core: Core::new(L::FORMAT, opts, spill),
            layout,
            started: false,
            failed: false,
        }
    }

    /// Largest number of bytes held in the spill store at once so far.
    #[allow(dead_code)]
    pub(crate) fn spill_peak(&self) -> u64 {
        self.core.spill_peak()
    }

    fn ensure_started(&mut self) -> Result<(), DecodeError> {
        if !self.started {
            self.started = true;
            self.layout.start(&mut self.core)?;
        }
        Ok(())
    }

    /// Hand finished tables to the layout until none is left; then register new ranges.
    fn settle(&mut self) -> Result<(), DecodeError> {
        loop {
            while let Some((tag, host, bytes)) = self.core.ready.pop_front() {
                self.core.buffered = self.core.buffered.saturating_sub(bytes.len() as u64);
                self.layout.on_meta(&mut self.core, tag, host, bytes)?;
            }
            if self.layout.tables_complete() {
                self.core.set_complete()?;
            }
            self.core.activate()?;
            if self.core.ready.is_empty() {
                return Ok(());
            }
        }
    }

    fn feed_inner(&mut self, chunk: &Bytes) -> Result<(), DecodeError> {
        self.ensure_started()?;
        let mut off = 0usize;
        loop {
            self.settle()?;
            if off == chunk.len() {
                return Ok(());
            }
            let n = self.core.step_len((chunk.len() - off) as u64) as usize;
            self.core.consume(chunk.slice(off..off + n))?;
            off += n;
        }
    }

    fn finish_inner(&mut self) -> Result<(), DecodeError> {
        self.ensure_started()?;
        self.settle()?;
        let format = self.core.format;
        let end = self.core.pos;
        if let Some(sl) = self.core.stream_len
            && sl != end
        {
            return Err(malformed(
                format,
                format!("stream ended after {end} bytes; its length was given as {sl}"),
            ));
        }
        // Compressed clusters may run past the end of the file: the rest reads as zeros.
        let active = std::mem::take(&mut self.core.active);
        for mut act in active {
            if let Want::Compressed { .. } = act.want {
                let missing = act.len - act.got;
                self.core
                    .deliver(&mut act, Bytes::from(vec![0u8; missing as usize]));
                self.core.complete_region(act)?;
            } else {
                return Err(malformed(
                    format,
                    format!(
                        "{} at stream offset {}..{} is cut off by the end of the stream at {end}",
                        describe(&act.want),
                        act.start,
                        act.end()
                    ),
                ));
            }
        }
        let pending = std::mem::take(&mut self.core.pending);
        for p in pending.into_values() {
            if let Want::Compressed { .. } = p.want {
                let mut act = self.core.activate_one(p.start, p.len, p.want)?;
                self.core
                    .deliver(&mut act, Bytes::from(vec![0u8; p.len as usize]));
                self.core.complete_region(act)?;
                continue;
            }
            return Err(malformed(
                format,
                format!(
                    "{} at stream offset {}..{} lies past the end of the stream at {end}",
                    describe(&p.want),
                    p.start,
                    p.start + p.len
                ),
            ));
        }
        self.settle()?;
        self.layout.finish(&mut self.core)
    }
}

impl<L: Layout> Decoder for Engine<L> {
    fn feed(&mut self, chunk: &Bytes, out: &mut Vec<Extent>) -> Result<(), DecodeError> {
        if self.failed {
            return Err(malformed(L::FORMAT, "decoder used after an error"));
        }
        let r = self.feed_inner(chunk);
        out.append(&mut self.core.out);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn finish(&mut self, out: &mut Vec<Extent>) -> Result<(), DecodeError> {
        if self.failed {
            return Err(malformed(L::FORMAT, "decoder used after an error"));
        }
        let r = self.finish_inner();
        out.append(&mut self.core.out);
        self.failed = true;
        r
    }

    fn virtual_size(&self) -> Option<u64> {
        self.layout.virtual_size()
    }
}

/// Big-endian and little-endian field readers that never panic: out-of-range reads give 0
/// (callers only read within buffers whose length they checked; the fallback keeps attacker
/// data from reaching a panic path).
#[allow(dead_code)] // readers for the formats still to come
pub(crate) mod field {
    fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
        let mut a = [0u8; N];
        if let Some(s) = off.checked_add(N).and_then(|e| b.get(off..e)) {
            a.copy_from_slice(s);
        }
        a
    }
    pub(crate) fn be16(b: &[u8], off: usize) -> u16 {
        u16::from_be_bytes(arr(b, off))
    }
    pub(crate) fn be32(b: &[u8], off: usize) -> u32 {
        u32::from_be_bytes(arr(b, off))
    }
    pub(crate) fn be64(b: &[u8], off: usize) -> u64 {
        u64::from_be_bytes(arr(b, off))
    }
    pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(arr(b, off))
    }
    pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(arr(b, off))
    }
    pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(arr(b, off))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn data_piece_keeps_alignment_for_any_split() {
        let region: Vec<u8> = (0..20_000u32).map(|i| (i % 7) as u8 + 1).collect();
        for split in [1usize, 7, 512, 4095, 4096, 9000] {
            let mut out = Vec::new();
            let mut got = 0u64;
            let mut carry = BytesMut::new();
            for c in region.chunks(split) {
                data_piece(
                    &mut out,
                    false,
                    8192,
                    region.len() as u64,
                    &mut got,
                    &mut carry,
                    Bytes::copy_from_slice(c),
                );
            }
            assert!(carry.is_empty());
            let mut rebuilt = Vec::new();
            for e in &out {
                let Extent::Data { offset, data } = e else {
                    panic!("no zero detection asked")
                };
                assert_eq!(*offset, 8192 + rebuilt.len() as u64);
                assert_eq!(offset % 4096, 0, "split {split}");
                rebuilt.extend_from_slice(data);
            }
            assert_eq!(rebuilt, region);
        }
    }
}
