//! VHD (Virtual PC / Hyper-V) dynamic and fixed → raw.
//!
//! The first 512 bytes decide: a `conectix` footer copy there of type 3 is a dynamic disk
//! (dynamic header, BAT, blocks of a sector bitmap then data); type 4 (differencing) is refused;
//! no footer copy means a fixed disk: raw data followed by a 512-byte footer, so the last 512
//! bytes seen are always held back until the end, then checked (magic, checksum, type 2, size
//! equal to the data length). The disk size is [`crate::vhd_size`]'s rule (qemu's), the one
//! the inspector reports. Like QEMU, sector bitmaps are not consulted (a present block is read
//! whole).

use bytes::{Bytes, BytesMut};

use super::engine::{
    Core, Engine, Layout, MetaRanges, Tag, Want, field, limit, malformed, rejected, unsupported,
};
use super::raw::RawDecoder;
use super::spill::SpillStore;
use super::{DecodeError, DecodeOptions, Decoder, Extent};
use crate::Format;

const F: Format = Format::Vhd;
const FOOTER: usize = 512;
const TYPE_FIXED: u32 = 2;
const TYPE_DYNAMIC: u32 = 3;
const TYPE_DIFFERENCING: u32 = 4;
/// QEMU's limit (2040 GiB).
const MAX_SECTORS: u64 = 0xff00_0000;
const UNALLOCATED: u32 = 0xffff_ffff;

const TAG_DYN_HEADER: Tag = 1;
const TAG_BAT: Tag = 2;

#[derive(Debug, Clone, Copy)]
struct Footer {
    disk_type: u32,
    data_offset: u64,
    size: u64,
}

fn parse_footer(b: &[u8], max_virtual_size: u64) -> Result<Footer, DecodeError> {
    if b.get(..8) != Some(b"conectix") {
        return Err(malformed(F, "no conectix footer"));
    }
    let stored = field::be32(b, 64);
    let sum = b
        .iter()
        .take(FOOTER)
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |a, (_, x)| a.wrapping_add(u32::from(*x)));
    if !sum != stored {
        return Err(malformed(
            F,
            format!(
                "footer checksum {stored:#010x}; the footer sums to {:#010x}",
                !sum
            ),
        ));
    }
    let sectors = crate::vhd_size::disk_sectors(b);
    if sectors > MAX_SECTORS || sectors * 512 > max_virtual_size {
        return Err(limit(
            F,
            format!(
                "disk of {sectors} sectors; at most {MAX_SECTORS} and max_virtual_size {max_virtual_size} bytes"
            ),
        ));
    }
    Ok(Footer {
        disk_type: field::be32(b, 60),
        data_offset: field::be64(b, 16),
        size: sectors * 512,
    })
}

/// Dynamic VHD layout.
#[derive(Debug)]
struct VhdDynamic {
    max_virtual_size: u64,
    footer: Option<Footer>,
    block_size: u64,
    bitmap_size: u64,
    bat_done: bool,
    /// Host ranges of the footer copy, dynamic header and BAT: no block may lie in them.
    meta: MetaRanges,
}

impl VhdDynamic {
    fn check_host(&self, what: &str, off: u64, len: u64) -> Result<(), DecodeError> {
        match self.meta.find(off, len) {
            None => Ok(()),
            Some((meta, s, e)) => Err(rejected(
                F,
                "vhd.block_table",
                format!(
                    "{what} at sector {} (bytes {off:#x}..{:#x}) overlaps {meta} at \
                     {s:#x}..{e:#x}; BAT entries may only point at data blocks",
                    off / 512,
                    off.saturating_add(len)
                ),
            )),
        }
    }
}

impl Layout for VhdDynamic {
    const FORMAT: Format = F;

    fn start(&mut self, core: &mut Core) -> Result<(), DecodeError> {
        core.want(0, FOOTER as u64, Want::Meta(0))
    }

    fn on_meta(
        &mut self,
        core: &mut Core,
        tag: Tag,
        _host: u64,
        b: Vec<u8>,
    ) -> Result<(), DecodeError> {
        match tag {
            0 => {
                let f = parse_footer(&b, self.max_virtual_size)?;
                if f.disk_type != TYPE_DYNAMIC {
                    return Err(malformed(
                        F,
                        format!("disk type {} at offset 0", f.disk_type),
                    ));
                }
                self.footer = Some(f);
                self.meta.add("the footer copy", 0, FOOTER as u64);
                if f.data_offset < FOOTER as u64 {
                    return Err(rejected(
                        F,
                        "vhd.dynamic_header",
                        format!(
                            "dynamic header offset {} overlaps the footer copy at 0..512",
                            f.data_offset
                        ),
                    ));
                }
                self.meta.add("the dynamic header", f.data_offset, 1024);
                core.want(f.data_offset, 1024, Want::Meta(TAG_DYN_HEADER))
            }
            TAG_DYN_HEADER => {
                let f = self
                    .footer
                    .ok_or_else(|| malformed(F, "header before footer"))?;
                if b.get(..8) != Some(b"cxsparse") {
                    return Err(malformed(
                        F,
                        format!("no cxsparse dynamic header at offset {}", f.data_offset),
                    ));
                }
                let bat = field::be64(&b, 16);
                let entries = u64::from(field::be32(&b, 28));
                let bs = u64::from(field::be32(&b, 32));
                if !bs.is_power_of_two() || bs < 512 {
                    return Err(malformed(
                        F,
                        format!("block size {bs}; a power of two of at least 512"),
                    ));
                }
                if f.size / bs > 0xffff_ffff || entries > MAX_SECTORS * 512 / bs {
                    return Err(malformed(
                        F,
                        format!("{entries} BAT entries of {bs}-byte blocks"),
                    ));
                }
                if entries * bs < f.size {
                    return Err(malformed(
                        F,
                        format!(
                            "BAT of {entries} entries of {bs}-byte blocks covers less than the \
                             disk size {}",
                            f.size
                        ),
                    ));
                }
                self.block_size = bs;
                self.bitmap_size = (bs / (8 * 512)).div_ceil(512) * 512;
                let needed = f.size.div_ceil(bs);
                self.check_host("the BAT", bat, needed * 4)?;
                self.meta
                    .add("the BAT", bat, (entries * 4).div_ceil(512) * 512);
                core.want(bat, needed * 4, Want::Meta(TAG_BAT))
            }
            TAG_BAT => {
                let f = self
                    .footer
                    .ok_or_else(|| malformed(F, "BAT before footer"))?;
                let bs = self.block_size;
                for i in 0..f.size.div_ceil(bs) {
                    let e = field::be32(&b, (i * 4) as usize);
                    let guest = i * bs;
                    let len = bs.min(f.size - guest);
                    if e == UNALLOCATED {
                        core.zero(guest, len);
                    } else {
                        let block = u64::from(e) * 512;
                        self.check_host(
                            &format!("BAT entry {i}: block"),
                            block,
                            self.bitmap_size + len,
                        )?;
                        let host = block + self.bitmap_size;
                        core.want(host, len, Want::Data { guest })?;
                    }
                }
                self.bat_done = true;
                Ok(())
            }
            _ => Err(malformed(F, format!("internal: unknown table tag {tag}"))),
        }
    }

    fn tables_complete(&self) -> bool {
        self.bat_done
    }

    fn finish(&mut self, _core: &mut Core) -> Result<(), DecodeError> {
        if !self.bat_done {
            return Err(malformed(F, "stream ended before the BAT"));
        }
        Ok(())
    }

    fn virtual_size(&self) -> Option<u64> {
        self.footer.map(|f| f.size)
    }
}

/// Fixed VHD: raw data, the last 512 bytes held back as the footer.
#[derive(Debug)]
struct Fixed {
    raw: RawDecoder,
    tail: BytesMut,
    data_len: u64,
    size: Option<u64>,
    max_virtual_size: u64,
}

impl Fixed {
    fn feed(&mut self, chunk: &Bytes, out: &mut Vec<Extent>) -> Result<(), DecodeError> {
        if chunk.len() >= FOOTER {
            let old = std::mem::take(&mut self.tail).freeze();
            let cut = chunk.len() - FOOTER;
            if !old.is_empty() {
                self.data_len += old.len() as u64;
                self.raw.feed(&old, out)?;
            }
            if cut > 0 {
                self.data_len += cut as u64;
                self.raw.feed(&chunk.slice(..cut), out)?;
            }
            self.tail.extend_from_slice(&chunk[cut..]);
        } else {
            self.tail.extend_from_slice(chunk);
            if self.tail.len() > FOOTER {
                let n = self.tail.len() - FOOTER;
                let head = self.tail.split_to(n).freeze();
                self.data_len += n as u64;
                self.raw.feed(&head, out)?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Extent>) -> Result<(), DecodeError> {
        if self.tail.len() < FOOTER {
            return Err(malformed(
                F,
                format!(
                    "stream of {} bytes is too short for a VHD footer",
                    self.tail.len()
                ),
            ));
        }
        let f = parse_footer(&self.tail, self.max_virtual_size)?;
        if f.disk_type != TYPE_FIXED {
            return Err(malformed(
                F,
                format!(
                    "footer at the end has disk type {}; a fixed disk is 2",
                    f.disk_type
                ),
            ));
        }
        if f.size != self.data_len {
            return Err(unsupported(
                F,
                format!(
                    "fixed disk size {} differs from the {} data bytes before the footer",
                    f.size, self.data_len
                ),
            ));
        }
        self.raw.finish(out)?;
        self.size = Some(f.size);
        Ok(())
    }
}

#[derive(Debug)]
enum State {
    Probe(BytesMut),
    Dynamic(Box<Engine<VhdDynamic>>),
    Fixed(Fixed),
    Failed,
}

/// The VHD decoder: decides dynamic or fixed from the first 512 bytes.
pub(crate) struct VhdDecoder {
    state: State,
    opts: DecodeOptions,
    spill: Option<Box<dyn SpillStore>>,
}

impl VhdDecoder {
    pub(crate) fn new(opts: &DecodeOptions, spill: Box<dyn SpillStore>) -> Self {
        VhdDecoder {
            state: State::Probe(BytesMut::new()),
            opts: opts.clone(),
            spill: Some(spill),
        }
    }

    /// Decide from the first bytes (fewer than 512 only at the end of the stream).
    fn decide(&mut self, first: Bytes, out: &mut Vec<Extent>) -> Result<(), DecodeError> {
        let dynamic = if first.len() >= FOOTER && first.starts_with(b"conectix") {
            let f = parse_footer(&first, self.opts.max_virtual_size)?;
            match f.disk_type {
                TYPE_DYNAMIC => true,
                TYPE_DIFFERENCING => {
                    return Err(unsupported(
                        F,
                        "differencing disk (type 4) refers to a parent image",
                    ));
                }
                TYPE_FIXED if first.len() == FOOTER => false,
                t => {
                    return Err(unsupported(
                        F,
                        format!("footer copy at offset 0 with disk type {t}; known: dynamic (3)"),
                    ));
                }
            }
        } else {
            false
        };
        let spill = self
            .spill
            .take()
            .unwrap_or_else(|| Box::new(super::MemorySpill::new()));
        if dynamic {
            let layout = VhdDynamic {
                max_virtual_size: self.opts.max_virtual_size,
                footer: None,
                block_size: 0,
                bitmap_size: 0,
                bat_done: false,
                meta: MetaRanges::default(),
            };
            let mut e = Box::new(Engine::new(layout, &self.opts, spill));
            e.feed(&first, out)?;
            self.state = State::Dynamic(e);
        } else {
            let mut fx = Fixed {
                raw: RawDecoder::new(self.opts.detect_zeroes),
                tail: BytesMut::new(),
                data_len: 0,
                size: None,
                max_virtual_size: self.opts.max_virtual_size,
            };
            fx.feed(&first, out)?;
            self.state = State::Fixed(fx);
        }
        Ok(())
    }

    fn feed_inner(&mut self, chunk: &Bytes, out: &mut Vec<Extent>) -> Result<(), DecodeError> {
        match &mut self.state {
            State::Probe(buf) => {
                let need = FOOTER - buf.len();
                if chunk.len() < need {
                    buf.extend_from_slice(chunk);
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..need]);
                let first = std::mem::take(buf).freeze();
                self.decide(first, out)?;
                if chunk.len() > need {
                    self.feed_inner(&chunk.slice(need..), out)?;
                }
                Ok(())
            }
            State::Dynamic(e) => e.feed(chunk, out),
            State::Fixed(f) => f.feed(chunk, out),
            State::Failed => Err(malformed(F, "decoder used after an error")),
        }
    }
}

impl std::fmt::Debug for VhdDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdDecoder")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Decoder for VhdDecoder {
    fn feed(&mut self, chunk: &Bytes, out: &mut Vec<Extent>) -> Result<(), DecodeError> {
        let r = self.feed_inner(chunk, out);
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    fn finish(&mut self, out: &mut Vec<Extent>) -> Result<(), DecodeError> {
        if let State::Probe(buf) = &mut self.state {
            let first = std::mem::take(buf).freeze();
            if let Err(e) = self.decide(first, out) {
                self.state = State::Failed;
                return Err(e);
            }
        }
        let r = match &mut self.state {
            State::Dynamic(e) => e.finish(out),
            State::Fixed(f) => f.finish(out),
            State::Probe(_) | State::Failed => Err(malformed(F, "decoder used after an error")),
        };
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    fn virtual_size(&self) -> Option<u64> {
        match &self.state {
            State::Dynamic(e) => e.virtual_size(),
            State::Fixed(f) => f.size,
            State::Probe(_) | State::Failed => None,
        }
    }
}
