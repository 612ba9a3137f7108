//! The bridge from image bytes to disk operations: inspector gate → decoder → encryptor.
//!
//! Nothing is emitted before the inspector's provisional verdict: the first bytes are held
//! (at most [`MAX_LOOKAHEAD`]) until the format is known and found safe; then the decoder the
//! verdict selects consumes them. The final verdict at end of stream can still reject the run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use imgpipe_core::{
    Chunk, DiskExtent, DiskInfo, DiskStage, Error, ErrorKind, Finding, Result, SinkOp,
};
use imgpipe_crypto::xts::Xts;
use imgpipe_format::Format;
use imgpipe_format::decode::{self, DecodeError, DecodeOptions, Decoder, Extent};
use imgpipe_format::inspect::{Inspector, MAX_LOOKAHEAD, Verdict};

use crate::verdict::verdict_error;

/// Largest piece of ciphertext produced at once (bounds memory for long zero runs).
const ENCRYPT_PIECE: u64 = 1 << 20;

/// Plaintext of zero runs (encrypted, not copied: the ciphertext of zeros is not zeros).
static ZEROS: [u8; ENCRYPT_PIECE as usize] = [0; ENCRYPT_PIECE as usize];

/// Idle ciphertext buffers kept for reuse; beyond this, returned buffers are freed.
const POOL_MAX: usize = 16;

/// Ciphertext buffers of [`ENCRYPT_PIECE`] bytes, handed to the sink as [`Bytes`] and returned
/// here when the sink drops them. Reusing them spares the disk stage an allocation, its page
/// faults and a zero-fill per MiB (measured: these and the plaintext copy cost as much CPU as
/// XTS itself on the core the reader and sink share).
#[derive(Clone, Default)]
struct BufPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufPool {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_else(|| vec![0u8; ENCRYPT_PIECE as usize])
    }
}

/// The first `len` bytes of a pooled buffer; goes back to the pool when dropped.
struct Pooled {
    buf: Vec<u8>,
    len: usize,
    pool: BufPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut idle = self.pool.0.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < POOL_MAX {
            idle.push(buf);
        }
    }
}

/// Sector encryption of the decoded disk (dm-crypt plain or a LUKS payload).
pub struct Encryptor {
    xts: Xts,
    sector: u64,
    payload_offset: u64,
    header: Option<Vec<u8>>,
    /// Sectors seen only in part (extent edges not on a sector boundary): sector → (bytes, filled).
    partial: HashMap<u64, (Vec<u8>, usize)>,
    /// One past the last disk byte seen.
    end: u64,
    label: &'static str,
    pool: BufPool,
}

impl Encryptor {
    /// Headerless dm-crypt plain mode: sector 0 is the first sector of the target.
    pub fn plain(xts: Xts) -> Self {
        Self::new(xts, 0, None, "plain")
    }

    /// A LUKS payload: `header` is written at offset 0 last; payload sector 0 is at `payload_offset`.
    pub fn luks(xts: Xts, payload_offset: u64, header: Vec<u8>, label: &'static str) -> Self {
        Self::new(xts, payload_offset, Some(header), label)
    }

    fn new(xts: Xts, payload_offset: u64, header: Option<Vec<u8>>, label: &'static str) -> Self {
        Encryptor {
            sector: xts.sector_size() as u64,
            xts,
            payload_offset,
            header,
            partial: HashMap::new(),
            end: 0,
            label,
            pool: BufPool::default(),
        }
    }

    /// Encrypts whole sectors of `plain` (at most [`ENCRYPT_PIECE`] bytes) at disk offset
    /// `disk_off` straight from the caller's bytes into a pooled buffer, and queues the write.
    fn emit_sectors(&self, disk_off: u64, plain: &[u8], out: &mut Vec<SinkOp>) {
        let mut buf = self.pool.take();
        let len = plain.len();
        self.xts
            .encrypt_sectors_to(disk_off / self.sector, plain, &mut buf[..len]);
        out.push(SinkOp::Write(DiskExtent::Data {
            offset: self.payload_offset + disk_off,
            data: Bytes::from_owner(Pooled {
                buf,
                len,
                pool: self.pool.clone(),
            }),
        }));
    }

    /// Bytes `data` (or `len` zeros when `data` is `None`) at disk offset `off`.
    fn put(&mut self, mut off: u64, data: Option<&[u8]>, len: u64, out: &mut Vec<SinkOp>) {
        let ss = self.sector;
        let end = off + len;
        self.end = self.end.max(end);
        let mut taken = 0u64;
        while off < end {
            let in_sector = off % ss;
            let sector_end = off - in_sector + ss;
            if in_sector != 0 || end < sector_end {
                // A partial sector: collect until every byte of it has arrived.
                let n = (sector_end.min(end) - off) as usize;
                let key = off / ss;
                let entry = self
                    .partial
                    .entry(key)
                    .or_insert_with(|| (vec![0u8; ss as usize], 0));
                if let Some(d) = data {
                    entry.0[in_sector as usize..in_sector as usize + n]
                        .copy_from_slice(&d[taken as usize..taken as usize + n]);
                }
                entry.1 += n;
                if entry.1 == ss as usize
                    && let Some((buf, _)) = self.partial.remove(&key)
                {
                    self.emit_sectors(key * ss, &buf, out);
                }
                off += n as u64;
                taken += n as u64;
                continue;
            }
            // Whole sectors, in pieces of at most ENCRYPT_PIECE.
            let whole = (end - off) / ss * ss;
            let n = whole.min(ENCRYPT_PIECE);
            let plain = match data {
                Some(d) => &d[taken as usize..(taken + n) as usize],
                None => &ZEROS[..n as usize],
            };
            self.emit_sectors(off, plain, out);
            off += n;
            taken += n;
        }
    }

    fn extent(&mut self, e: Extent, out: &mut Vec<SinkOp>) {
        match e {
            Extent::Data { offset, data } => self.put(offset, Some(&data), data.len() as u64, out),
            // Ciphertext of zeros is not zeros: every sector is written.
            Extent::Zero { offset, len } => self.put(offset, None, len, out),
        }
    }

    /// Flush the last (padded) sector and write the header.
    fn finish(&mut self, out: &mut Vec<SinkOp>) -> Result<()> {
        let ss = self.sector;
        let mut keys: Vec<u64> = self.partial.keys().copied().collect();
        keys.sort_unstable();
        let last = self.end.saturating_sub(1) / ss;
        for k in keys {
            if k != last {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!("encryption: sector {k} was only partly written by the decoder"),
                ));
            }
            if let Some((buf, _)) = self.partial.remove(&k) {
                // The disk ends inside this sector: the rest is zero padding.
                self.emit_sectors(k * ss, &buf, out);
            }
        }
        if let Some(h) = self.header.take() {
            out.push(SinkOp::Write(DiskExtent::Data {
                offset: 0,
                data: Bytes::from(h),
            }));
        }
        Ok(())
    }

    fn padded_size(&self, virtual_size: u64) -> u64 {
        self.payload_offset + virtual_size.div_ceil(self.sector) * self.sector
    }
}

/// A spill store on an anonymous temporary file: created in the system temp directory and
/// unlinked at once, so it disappears with the process whatever happens. Used only when an image
/// places data before the table that maps it, bounded by `DecodeOptions::spill_limit`.
fn spill_store() -> Result<Box<dyn decode::SpillStore>> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        ".imgpipe-spill-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let store = decode::FileSpill::create(&path).map_err(|e| {
        Error::io(
            format!("cannot create the spill file {}", path.display()),
            e,
        )
    })?;
    let _ = std::fs::remove_file(&path);
    Ok(Box::new(store))
}

/// Options of the disk stage.
pub struct DiskOptions {
    /// The inspector (with the caller's policy); `None` skips inspection (trusted input only).
    pub inspector: Option<Inspector>,
    /// Copy the image bytes unchanged instead of decoding.
    pub preserve: bool,
    /// The declared format (used when inspection is skipped, and to decode fixed VHDs).
    pub declared: Option<Format>,
    /// Decoder options.
    pub decode: DecodeOptions,
    /// In-stream encryption.
    pub encrypt: Option<Encryptor>,
    /// A raw cache fill: sees every decoded extent before encryption.
    pub raw_tee: Option<imgpipe_cache::RawTee>,
    /// The disk size when no inspector reports it (a raw cache hit: the sidecar's).
    pub size_hint: Option<u64>,
}

enum Gate {
    /// Holding the first bytes until the inspector decides.
    Waiting(Vec<Bytes>),
    /// Decoding.
    Open(Box<dyn Decoder>),
}

/// Turns image bytes into disk writes.
pub struct ImageToDisk {
    inspector: Option<Inspector>,
    gate: Gate,
    opts_preserve: bool,
    declared: Option<Format>,
    decode: DecodeOptions,
    encrypt: Option<Encryptor>,
    raw_tee: Option<imgpipe_cache::RawTee>,
    size_hint: Option<u64>,
    format: Option<Format>,
    virtual_size: Option<u64>,
    extents: Vec<Extent>,
    written_to: u64,
    begun: bool,
}

/// Map a decoder error onto the engine's error kinds.
pub(crate) fn map_decode(e: DecodeError) -> Error {
    let kind = match &e {
        DecodeError::Malformed { .. } => ErrorKind::InvalidImage,
        DecodeError::Unsupported { .. } => ErrorKind::Unsupported,
        DecodeError::Limit { .. } => ErrorKind::LimitExceeded,
        DecodeError::Spill(_) => ErrorKind::Io,
        DecodeError::Rejected { .. } => ErrorKind::InvalidImage,
        _ => ErrorKind::InvalidImage,
    };
    let check = e.check().unwrap_or("decode");
    Error::new(kind, e.to_string()).with_check(check)
}

impl ImageToDisk {
    /// A disk stage.
    pub fn new(opts: DiskOptions) -> Self {
        ImageToDisk {
            inspector: opts.inspector,
            gate: Gate::Waiting(Vec::new()),
            opts_preserve: opts.preserve,
            declared: opts.declared,
            decode: opts.decode,
            encrypt: opts.encrypt,
            raw_tee: opts.raw_tee,
            size_hint: opts.size_hint,
            format: None,
            virtual_size: None,
            extents: Vec::new(),
            written_to: 0,
            begun: false,
        }
    }

    /// Choose the decoder for a verdict (or the declared format when not inspecting).
    fn open(&mut self, v: Option<&Verdict>) -> Result<Box<dyn Decoder>> {
        let format = match v {
            Some(v) if v.footer_pending && self.declared == Some(Format::Vhd) => Format::Vhd,
            Some(v) => v.format,
            None => self.declared.unwrap_or(Format::Raw),
        };
        self.format = Some(format);
        self.virtual_size = v.and_then(|v| v.virtual_size).or(self.size_hint);
        if self.opts_preserve {
            return Ok(Box::new(decode::RawDecoder::new(self.encrypt.is_none())));
        }
        decode::decoder_with_spill(format, &self.decode, spill_store()?).map_err(map_decode)
    }

    fn emit(&mut self, out: &mut Vec<SinkOp>) {
        if !self.begun {
            self.begun = true;
            let vs = if self.opts_preserve {
                self.decode.stream_len
            } else {
                self.virtual_size
            };
            out.push(SinkOp::Begin(DiskInfo {
                size: match &self.encrypt {
                    Some(e) => vs.map(|v| e.padded_size(v)),
                    None => vs,
                },
                encrypted: self.encrypt.is_some(),
            }));
        }
        for e in self.extents.drain(..) {
            self.written_to = self.written_to.max(e.offset() + e.len());
            if let Some(t) = &mut self.raw_tee {
                match &e {
                    Extent::Data { offset, data } => {
                        t.extent(*offset, Some(&data[..]), data.len() as u64);
                    }
                    Extent::Zero { offset, len } => t.extent(*offset, None, *len),
                }
            }
            match &mut self.encrypt {
                Some(enc) => enc.extent(e, out),
                None => out.push(SinkOp::Write(match e {
                    Extent::Data { offset, data } => DiskExtent::Data { offset, data },
                    Extent::Zero { offset, len } => DiskExtent::Zero { offset, len },
                })),
            }
        }
    }

    fn feed_decoder(&mut self, data: &Bytes, out: &mut Vec<SinkOp>) -> Result<()> {
        if let Gate::Open(d) = &mut self.gate {
            d.feed(data, &mut self.extents).map_err(map_decode)?;
            self.emit(out);
        }
        Ok(())
    }

    /// Open the gate: pick the decoder and replay the held bytes.
    fn release(&mut self, out: &mut Vec<SinkOp>) -> Result<()> {
        let verdict = self
            .inspector
            .as_ref()
            .and_then(|i| i.provisional().cloned());
        if let Some(v) = &verdict
            && !v.is_safe()
        {
            return Err(verdict_error(v));
        }
        let decoder = self.open(verdict.as_ref())?;
        let held = match std::mem::replace(&mut self.gate, Gate::Open(decoder)) {
            Gate::Waiting(h) => h,
            Gate::Open(_) => Vec::new(),
        };
        for b in held {
            self.feed_decoder(&b, out)?;
        }
        Ok(())
    }
}

impl DiskStage for ImageToDisk {
    fn name(&self) -> String {
        match (&self.format, &self.encrypt) {
            (Some(f), Some(e)) => format!("decode:{f}+encrypt:{}", e.label),
            (Some(f), None) => format!("decode:{f}"),
            (None, _) => "inspect+decode".into(),
        }
    }

    fn feed(&mut self, chunk: &Chunk, out: &mut Vec<SinkOp>) -> Result<()> {
        if let Some(i) = self.inspector.as_mut() {
            i.feed(&chunk.data);
        }
        match &mut self.gate {
            Gate::Open(_) => {
                if let Some(v) = self.inspector.as_ref().and_then(|i| i.provisional())
                    && !v.is_safe()
                {
                    // A deep check after the decision found a problem: stop now.
                    return Err(verdict_error(v));
                }
                self.feed_decoder(&chunk.data, out)
            }
            Gate::Waiting(held) => {
                held.push(chunk.data.clone());
                let decided = match &self.inspector {
                    Some(i) => i.is_decided(),
                    None => true,
                };
                if decided {
                    self.release(out)
                } else if chunk.end() > MAX_LOOKAHEAD + (4 << 20) {
                    Err(Error::new(
                        ErrorKind::Internal,
                        "the inspector did not decide within its lookahead",
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<SinkOp>) -> Result<Vec<Finding>> {
        if matches!(self.gate, Gate::Waiting(_)) {
            // Short stream: the inspector decides at end of stream.
            self.release(out)?;
        }
        let mut findings = Vec::new();
        if let Some(i) = self.inspector.take() {
            let v = i.finish();
            if !v.is_safe() {
                return Err(verdict_error(&v));
            }
            if !self.opts_preserve && Some(v.format) != self.format && !v.footer_pending {
                // e.g. a provisional raw stream turned out to be a fixed VHD at the end.
                return Err(Error::check(
                    ErrorKind::FormatMismatch,
                    "inspect.final_format",
                    format!(
                        "the stream was decoded as {} but its end shows it is {}",
                        self.format.map_or("?", |f| f.name()),
                        v.format
                    ),
                ));
            }
            self.virtual_size = v.virtual_size.or(self.virtual_size);
            findings.push(Finding::Format {
                format: v.format.name().into(),
                virtual_size: v.virtual_size,
            });
        }
        if let Gate::Open(d) = &mut self.gate {
            d.finish(&mut self.extents).map_err(map_decode)?;
            if self.virtual_size.is_none() {
                self.virtual_size = d.virtual_size();
            }
        }
        self.emit(out);
        if let Some(t) = self.raw_tee.take() {
            t.finish(self.virtual_size.unwrap_or(self.written_to));
        }
        if let Some(e) = &mut self.encrypt {
            e.finish(out)?;
        }
        if findings.is_empty() {
            findings.push(Finding::Format {
                format: self.format.map_or("raw", |f| f.name()).into(),
                virtual_size: self.virtual_size.or(Some(self.written_to)),
            });
        }
        Ok(findings)
    }
}
