//! VMDK sparse extents (monolithicSparse, streamOptimized) → raw.
//!
//! The embedded descriptor must name exactly one SPARSE extent of the header's capacity and
//! no parent. Two ways to find grains:
//!
//! - **Grain directory in the header** (monolithicSparse, and streamOptimized as qemu-img
//!   writes it): the GD names grain tables, which name grains (plain, or compressed behind a
//!   12-byte marker). Tables first means no spill; otherwise the shared spill applies.
//! - **Grain directory at the end** (`gdOffset` = `GD_AT_END`, streamOptimized as VMware writes
//!   it): the stream is a sequence of markers from `overHead` on; each grain marker carries its
//!   LBA and is emitted as it passes. The grain tables and directory that follow are then
//!   checked against what was emitted (every allocated entry must name exactly the grain seen
//!   for that LBA), and the footer must sit where QEMU reads it (1536 bytes before the end) and
//!   point at that directory, so the result is what a reader of the tables would see.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::engine::{
    Codec, Core, Layout, MetaRanges, Tag, Want, field, limit, malformed, rejected, unsupported,
};
use super::{DecodeError, DecodeOptions};
use crate::Format;

const F: Format = Format::Vmdk;
const SECTOR: u64 = 512;
const MAGIC: u32 = 0x564d_444b; // "KDMV"
const GD_AT_END: u64 = u64::MAX;

const FLAG_ZERO_GRAIN: u32 = 1 << 2;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;

const TAG_HEADER: Tag = 0;
const TAG_DESC: Tag = 1;
const TAG_GD: Tag = 2;
const TAG_GT: Tag = 3;
const TAG_GRAIN_HEAD: Tag = 4;
const TAG_GRAIN_REST: Tag = 5;
const TAG_MARKER: Tag = 6;
const TAG_MARKER_REST: Tag = 7;
const TAG_MARKER_BODY: Tag = 8;

const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// Largest descriptor read.
const MAX_DESC: u64 = 1 << 20;
/// Largest grain (sectors).
const MAX_GRAIN_SECTORS: u64 = 1 << 16;

#[derive(Debug, Clone, Copy)]
struct Header {
    flags: u32,
    capacity: u64,
    grain: u64,
    gtes: u64,
    rgd_offset: u64,
    gd_offset: u64,
    overhead: u64,
    desc_offset: u64,
    desc_size: u64,
}

impl Header {
    fn size(&self) -> u64 {
        self.capacity * SECTOR
    }
    fn grain_bytes(&self) -> u64 {
        self.grain * SECTOR
    }
    fn grains(&self) -> u64 {
        self.capacity.div_ceil(self.grain)
    }
    fn gt_span(&self) -> u64 {
        self.gtes * self.grain_bytes()
    }
    fn gd_entries(&self) -> u64 {
        self.size().div_ceil(self.gt_span())
    }
    fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
}

/// The VMDK layout (see the module docs).
#[derive(Debug)]
pub(crate) struct Vmdk {
    max_virtual_size: u64,
    header: Option<Header>,
    desc_done: bool,
    gd_done: bool,
    gt_outstanding: u64,
    /// First sector of compressed grains (GD mode), by grain index.
    grain_heads: BTreeMap<u64, Vec<u8>>,
    /// First sector of a marker whose body continues (marker mode).
    marker_head: Option<Vec<u8>>,
    /// Marker mode: grain index → sector of its marker.
    seen: BTreeMap<u64, u64>,
    /// Marker mode: grain tables by the sector their body starts at.
    gts: BTreeMap<u64, Vec<u8>>,
    /// Marker mode: (sector of the directory body, directory).
    gd: Option<(u64, Vec<u8>)>,
    /// Marker mode: footer's directory offset and the footer marker's position.
    footer: Option<(u64, u64)>,
    /// Marker mode: stream offset of the end-of-stream marker.
    eos: Option<u64>,
    /// GD mode: host ranges of the header, descriptor, grain directories and grain tables; no
    /// directory or table entry may point into them.
    meta: MetaRanges,
}

impl Vmdk {
    pub(crate) fn new(opts: &DecodeOptions) -> Self {
        Vmdk {
            max_virtual_size: opts.max_virtual_size,
            header: None,
            desc_done: false,
            gd_done: false,
            gt_outstanding: 0,
            grain_heads: BTreeMap::new(),
            marker_head: None,
            seen: BTreeMap::new(),
            gts: BTreeMap::new(),
            gd: None,
            footer: None,
            eos: None,
            meta: MetaRanges::default(),
        }
    }

    fn marker_mode(&self) -> bool {
        self.header.is_some_and(|h| h.gd_offset == GD_AT_END)
    }

    fn parse_header(&self, b: &[u8], footer: bool) -> Result<Header, DecodeError> {
        let what = if footer { "footer" } else { "header" };
        if field::le32(b, 0) != MAGIC {
            return Err(malformed(F, format!("no KDMV magic in the sparse {what}")));
        }
        let version = field::le32(b, 4);
        if !(1..=3).contains(&version) {
            return Err(unsupported(
                F,
                format!("sparse {what} version {version}; known 1..=3"),
            ));
        }
        let flags = field::le32(b, 8);
        let capacity = field::le64(b, 12);
        let grain = field::le64(b, 20);
        let desc_offset = field::le64(b, 28);
        let desc_size = field::le64(b, 36);
        let gtes = u64::from(field::le32(b, 44));
        let gd_offset = field::le64(b, 56);
        let overhead = field::le64(b, 64);
        let algo = field::le16(b, 77);
        if grain == 0 || !grain.is_power_of_two() || grain > MAX_GRAIN_SECTORS {
            return Err(malformed(
                F,
                format!("grain size {grain} sectors; a power of two up to {MAX_GRAIN_SECTORS}"),
            ));
        }
        if gtes == 0 || gtes > 512 {
            return Err(malformed(
                F,
                format!("{gtes} entries per grain table; allowed 1..=512"),
            ));
        }
        let size = capacity
            .checked_mul(SECTOR)
            .filter(|s| *s <= self.max_virtual_size)
            .ok_or_else(|| {
                limit(
                    F,
                    format!(
                        "capacity {capacity} sectors exceeds max_virtual_size {}",
                        self.max_virtual_size
                    ),
                )
            })?;
        let _ = size;
        if flags & FLAG_COMPRESSED != 0 && algo != 1 {
            return Err(unsupported(
                F,
                format!("compression algorithm {algo}; only 1 (deflate) is known"),
            ));
        }
        if flags & FLAG_COMPRESSED != 0 && flags & FLAG_MARKERS == 0 {
            return Err(unsupported(F, "compressed grains without markers"));
        }
        if gd_offset == GD_AT_END && flags & FLAG_MARKERS == 0 {
            return Err(malformed(F, "grain directory at the end without markers"));
        }
        Ok(Header {
            flags,
            capacity,
            grain,
            gtes,
            rgd_offset: field::le64(b, 48),
            gd_offset,
            overhead,
            desc_offset,
            desc_size,
        })
    }

    fn parse_descriptor(&self, h: &Header, d: &[u8]) -> Result<(), DecodeError> {
        let end = d.iter().position(|b| *b == 0).unwrap_or(d.len());
        let text = std::str::from_utf8(&d[..end])
            .map_err(|_| malformed(F, "descriptor is not UTF-8 text"))?;
        let mut extents = 0u32;
        let mut create_type = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Extent lines first (a quoted file name may contain `=`); keys and access words
            // are case-insensitive, as the inspector reads them.
            let mut tok = line.split_whitespace();
            let Some(access) = tok.next() else { continue };
            let is_extent = ["RW", "RDONLY", "NOACCESS"]
                .iter()
                .any(|a| access.eq_ignore_ascii_case(a));
            if !is_extent {
                if let Some((k, v)) = line.split_once('=') {
                    let (k, v) = (k.trim(), v.trim().trim_matches('"'));
                    if k.eq_ignore_ascii_case("createType") {
                        create_type = Some(v.to_string());
                    } else if k.eq_ignore_ascii_case("parentCID")
                        && !v.eq_ignore_ascii_case("ffffffff")
                    {
                        return Err(unsupported(
                            F,
                            format!("parent image (parentCID={v}); only standalone disks"),
                        ));
                    } else if k.eq_ignore_ascii_case("parentFileNameHint") {
                        return Err(unsupported(F, format!("parent image ({k}={v})")));
                    }
                }
                continue;
            }
            extents += 1;
            let sectors = tok.next().and_then(|s| s.parse::<u64>().ok());
            let typ = tok.next().unwrap_or("");
            if typ != "SPARSE" {
                return Err(unsupported(
                    F,
                    format!("extent type {typ:?}; only one SPARSE extent (this file) is decoded"),
                ));
            }
            if sectors != Some(h.capacity) {
                return Err(malformed(
                    F,
                    format!(
                        "extent of {sectors:?} sectors; the sparse header says {}",
                        h.capacity
                    ),
                ));
            }
        }
        match create_type.as_deref() {
            Some("monolithicSparse") | Some("streamOptimized") => {}
            other => {
                return Err(unsupported(
                    F,
                    format!("createType {other:?}; only monolithicSparse and streamOptimized"),
                ));
            }
        }
        if extents != 1 {
            return Err(unsupported(
                F,
                format!("{extents} extents in the descriptor; exactly one is decoded"),
            ));
        }
        Ok(())
    }

    fn on_header(&mut self, core: &mut Core, b: &[u8]) -> Result<(), DecodeError> {
        let h = self.parse_header(b, false)?;
        self.header = Some(h);
        if h.desc_offset == 0 || h.desc_size == 0 {
            return Err(unsupported(
                F,
                "no embedded descriptor (separate descriptor file)",
            ));
        }
        if h.desc_size > MAX_DESC / SECTOR {
            return Err(limit(
                F,
                format!(
                    "descriptor of {} sectors; at most {MAX_DESC} bytes",
                    h.desc_size
                ),
            ));
        }
        let sectors = |what: &str, n: u64| {
            n.checked_mul(SECTOR)
                .ok_or_else(|| malformed(F, format!("{what} at sector {n} overflows")))
        };
        core.want(
            sectors("descriptor", h.desc_offset)?,
            h.desc_size * SECTOR,
            Want::Meta(TAG_DESC),
        )?;
        if h.gd_offset == GD_AT_END {
            self.gd_done = true;
            return core.want(
                sectors("overhead", h.overhead)?,
                SECTOR,
                Want::Meta(TAG_MARKER),
            );
        }
        let gd = h.gd_offset.checked_mul(SECTOR).ok_or_else(|| {
            malformed(
                F,
                format!("grain directory sector {} overflows", h.gd_offset),
            )
        })?;
        let gd_len = (h.gd_entries() * 4).div_ceil(SECTOR) * SECTOR;
        self.meta.add("the sparse header", 0, SECTOR);
        self.meta.add(
            "the descriptor",
            h.desc_offset * SECTOR,
            h.desc_size * SECTOR,
        );
        self.meta.add("the grain directory", gd, gd_len);
        if h.rgd_offset != 0 && h.rgd_offset != GD_AT_END {
            self.meta.add(
                "the redundant grain directory",
                h.rgd_offset.saturating_mul(SECTOR),
                gd_len,
            );
        }
        core.want(gd, h.gd_entries() * 4, Want::Meta(TAG_GD))
    }

    /// Refuse a grain table or grain that lies in the image's own metadata (qemu would read
    /// the descriptor or a table as guest data).
    fn check_host(
        &self,
        check: &'static str,
        what: &str,
        off: u64,
        len: u64,
    ) -> Result<(), DecodeError> {
        match self.meta.find(off, len) {
            None => Ok(()),
            Some((meta, s, e)) => Err(rejected(
                F,
                check,
                format!(
                    "{what} at sector {} (bytes {off:#x}..{:#x}) overlaps {meta} at \
                     {s:#x}..{e:#x}; table entries may only point at grains",
                    off / SECTOR,
                    off.saturating_add(len)
                ),
            )),
        }
    }

    fn on_gd(&mut self, core: &mut Core, h: Header, gd: &[u8]) -> Result<(), DecodeError> {
        let gt_len = (h.gtes * 4).div_ceil(SECTOR) * SECTOR;
        let mut tables = Vec::new();
        for i in 0..h.gd_entries() {
            let gt = u64::from(field::le32(gd, (i * 4) as usize));
            let guest = i * h.gt_span();
            if gt == 0 {
                core.zero(guest, h.gt_span().min(h.size() - guest));
                continue;
            }
            self.check_host(
                "vmdk.grain_directory",
                &format!("grain directory entry {i}: grain table"),
                gt * SECTOR,
                gt_len,
            )?;
            tables.push(gt * SECTOR);
            self.gt_outstanding += 1;
            core.want(gt * SECTOR, h.gtes * 4, Want::Meta(TAG_GT | (i << 8)))?;
        }
        self.meta.set_tables("a grain table", tables, gt_len);
        self.gd_done = true;
        Ok(())
    }

    fn on_gt(&mut self, core: &mut Core, h: Header, i: u64, gt: &[u8]) -> Result<(), DecodeError> {
        let gb = h.grain_bytes();
        let mut run: Option<(u64, u64, u64)> = None; // host, guest, len
        for k in 0..h.gtes {
            let guest = i * h.gt_span() + k * gb;
            if guest >= h.size() {
                break;
            }
            let len = gb.min(h.size() - guest);
            let e = u64::from(field::le32(gt, (k * 4) as usize));
            if e == 0 || (e == 1 && h.flags & FLAG_ZERO_GRAIN != 0) {
                core.zero(guest, len);
                continue;
            }
            let host = e * SECTOR;
            self.check_host(
                "vmdk.grain_table",
                &format!("grain table {i} entry {k}: grain"),
                host,
                if h.compressed() { SECTOR } else { len },
            )?;
            if h.compressed() {
                core.want(
                    host,
                    SECTOR,
                    Want::Meta(TAG_GRAIN_HEAD | ((guest / gb) << 8)),
                )?;
                continue;
            }
            match run {
                Some((rh, rg, rl)) if rh + rl == host && rg + rl == guest => {
                    run = Some((rh, rg, rl + len));
                }
                _ => {
                    if let Some((rh, rg, rl)) = run {
                        core.want(rh, rl, Want::Data { guest: rg })?;
                    }
                    run = Some((host, guest, len));
                }
            }
        }
        if let Some((rh, rg, rl)) = run {
            core.want(rh, rl, Want::Data { guest: rg })?;
        }
        Ok(())
    }

    /// Inflate a grain's marker payload and emit it at grain `index`.
    fn emit_grain(
        &self,
        core: &mut Core,
        h: Header,
        index: u64,
        data: &[u8],
    ) -> Result<(), DecodeError> {
        let gb = h.grain_bytes();
        let guest = index * gb;
        let need = gb.min(h.size().saturating_sub(guest));
        let (buf, produced, ended) = core.decompress(Codec::Zlib, data, gb as usize)?;
        if !ended || (produced as u64) < need {
            return Err(malformed(
                F,
                format!(
                    "compressed grain for guest offset {guest} ({} bytes) inflates to {produced} \
                     bytes{}; {need} needed",
                    data.len(),
                    if ended {
                        ""
                    } else {
                        " without a complete stream"
                    }
                ),
            ));
        }
        let mut b = Bytes::from(buf);
        b.truncate(need as usize);
        core.data(guest, b);
        Ok(())
    }

    /// GD mode: a compressed grain's first sector (marker + start of data) arrived.
    fn on_grain_head(
        &mut self,
        core: &mut Core,
        h: Header,
        index: u64,
        host: u64,
        b: Vec<u8>,
    ) -> Result<(), DecodeError> {
        let size = u64::from(field::le32(&b, 8));
        let max = 2 * h.grain_bytes() + 4096;
        if size == 0 || size > max {
            return Err(malformed(
                F,
                format!("grain marker at {host} gives {size} compressed bytes; allowed 1..={max}"),
            ));
        }
        if 12 + size <= SECTOR {
            return self.emit_grain(core, h, index, &b[12..(12 + size) as usize]);
        }
        self.grain_heads.insert(index, b);
        core.want(
            host + SECTOR,
            12 + size - SECTOR,
            Want::Meta(TAG_GRAIN_REST | (index << 8)),
        )
    }

    /// Marker mode: the sector at `host` starts a marker.
    fn on_marker(
        &mut self,
        core: &mut Core,
        h: Header,
        host: u64,
        b: Vec<u8>,
    ) -> Result<(), DecodeError> {
        if self.eos.is_some() {
            return Ok(());
        }
        let val = field::le64(&b, 0);
        let size = u64::from(field::le32(&b, 8));
        if size > 0 {
            // A grain: `val` is its LBA.
            let max = 2 * h.grain_bytes() + 4096;
            if size > max {
                return Err(malformed(
                    F,
                    format!("grain marker at {host} gives {size} compressed bytes; at most {max}"),
                ));
            }
            if !val.is_multiple_of(h.grain) || val >= h.capacity {
                return Err(malformed(
                    F,
                    format!(
                        "grain marker at {host} names LBA {val}; grains start at multiples of {} \
                         below {}",
                        h.grain, h.capacity
                    ),
                ));
            }
            let index = val / h.grain;
            if let Some(prev) = self.seen.insert(index, host / SECTOR) {
                return Err(malformed(
                    F,
                    format!(
                        "LBA {val} has two grain markers (sectors {prev} and {})",
                        host / SECTOR
                    ),
                ));
            }
            let total = (12 + size).div_ceil(SECTOR) * SECTOR;
            if 12 + size <= SECTOR {
                self.emit_grain(core, h, index, &b[12..(12 + size) as usize])?;
            } else {
                self.marker_head = Some(b);
                core.want(
                    host + SECTOR,
                    12 + size - SECTOR,
                    Want::Meta(TAG_MARKER_REST | (index << 8)),
                )?;
            }
            return core.want(host + total, SECTOR, Want::Meta(TAG_MARKER));
        }
        let typ = field::le32(&b, 12);
        let body = host + SECTOR;
        match typ {
            MARKER_EOS => {
                self.eos = Some(host);
                Ok(())
            }
            MARKER_GT | MARKER_GD | MARKER_FOOTER => {
                let len = val
                    .checked_mul(SECTOR)
                    .filter(|l| *l <= core.metadata_limit())
                    .ok_or_else(|| {
                        limit(
                            F,
                            format!("metadata marker at {host} announces {val} sectors"),
                        )
                    })?;
                if typ == MARKER_FOOTER {
                    self.footer = Some((u64::MAX, host));
                }
                core.want(
                    body,
                    len,
                    Want::Meta(TAG_MARKER_BODY | (u64::from(typ) << 8)),
                )?;
                core.want(body + len, SECTOR, Want::Meta(TAG_MARKER))
            }
            t => Err(unsupported(
                F,
                format!("marker type {t} at stream offset {host}"),
            )),
        }
    }

    fn on_marker_body(&mut self, typ: u32, host: u64, b: Vec<u8>) -> Result<(), DecodeError> {
        match typ {
            MARKER_GT => {
                self.gts.insert(host / SECTOR, b);
            }
            MARKER_GD => {
                if self.gd.is_some() {
                    return Err(malformed(F, "two grain directory markers"));
                }
                self.gd = Some((host / SECTOR, b));
            }
            _ => {
                let f = self.parse_header(&b, true)?;
                let pos = self.footer.map_or(0, |(_, p)| p);
                self.footer = Some((f.gd_offset, pos));
            }
        }
        Ok(())
    }

    /// Marker mode, end of stream: the footer, directory and tables must describe exactly the
    /// grains that were emitted; unseen grains read as zeros.
    fn finish_markers(&mut self, core: &mut Core, h: Header) -> Result<(), DecodeError> {
        let end = core.pos();
        let eos = self
            .eos
            .ok_or_else(|| malformed(F, "stream ended without an end-of-stream marker"))?;
        if eos + SECTOR != end {
            return Err(malformed(
                F,
                format!(
                    "end-of-stream marker at {eos}; it must be the last sector (stream is {end} bytes)"
                ),
            ));
        }
        let (footer_gd, footer_pos) = self
            .footer
            .ok_or_else(|| malformed(F, "no footer marker"))?;
        if footer_pos + 1024 != eos {
            return Err(malformed(
                F,
                format!(
                    "footer marker at {footer_pos}; it must directly precede the end-of-stream marker at {eos}"
                ),
            ));
        }
        let (gd_sector, gd) = self
            .gd
            .take()
            .ok_or_else(|| malformed(F, "no grain directory marker"))?;
        if footer_gd != gd_sector {
            return Err(malformed(
                F,
                format!(
                    "footer names the grain directory at sector {footer_gd}; it is at {gd_sector}"
                ),
            ));
        }
        let zero_flag = h.flags & FLAG_ZERO_GRAIN != 0;
        for i in 0..h.gd_entries() {
            let gt_sector = u64::from(field::le32(&gd, (i * 4) as usize));
            let gt = if gt_sector == 0 {
                None
            } else {
                Some(self.gts.get(&gt_sector).ok_or_else(|| {
                    malformed(F, format!("grain directory entry {i} names sector {gt_sector}, which holds no grain table marker"))
                })?)
            };
            if gt.is_some_and(|t| (t.len() as u64) < h.gtes * 4) {
                return Err(malformed(
                    F,
                    format!(
                        "grain table at sector {gt_sector} is shorter than {} entries",
                        h.gtes
                    ),
                ));
            }
            for k in 0..h.gtes {
                let index = i * h.gtes + k;
                if index >= h.grains() {
                    break;
                }
                let e = gt.map_or(0, |t| u64::from(field::le32(t, (k * 4) as usize)));
                let allocated = !(e == 0 || (e == 1 && zero_flag));
                let seen = self.seen.get(&index).copied();
                match (allocated, seen) {
                    (false, None) => {}
                    (true, Some(s)) if s == e => {}
                    _ => {
                        return Err(malformed(
                            F,
                            format!(
                                "grain table entry for LBA {} is {e}, but the grain marker for it \
                                 was {}",
                                index * h.grain,
                                seen.map_or("absent".to_string(), |s| format!("at sector {s}"))
                            ),
                        ));
                    }
                }
            }
        }
        // Grains never seen read as zeros.
        let gb = h.grain_bytes();
        let mut next = 0u64;
        for index in self.seen.keys().copied().chain(std::iter::once(h.grains())) {
            if index > next {
                let start = next * gb;
                core.zero(start, (index * gb).min(h.size()) - start);
            }
            next = index + 1;
        }
        Ok(())
    }
}

/// Fuzzing: the decoder's descriptor check on `text` for a disk of `capacity` sectors.
pub(crate) fn check_descriptor(text: &[u8], capacity: u64) -> Result<(), DecodeError> {
    let v = Vmdk::new(&DecodeOptions::default());
    let h = Header {
        flags: 0,
        capacity,
        grain: 128,
        gtes: 512,
        rgd_offset: 0,
        gd_offset: 0,
        overhead: 0,
        desc_offset: 1,
        desc_size: 20,
    };
    v.parse_descriptor(&h, text)
}

impl Layout for Vmdk {
    const FORMAT: Format = F;

    fn start(&mut self, core: &mut Core) -> Result<(), DecodeError> {
        core.want(0, SECTOR, Want::Meta(TAG_HEADER))
    }

    fn on_meta(
        &mut self,
        core: &mut Core,
        tag: Tag,
        host: u64,
        bytes: Vec<u8>,
    ) -> Result<(), DecodeError> {
        if tag == TAG_HEADER {
            return self.on_header(core, &bytes);
        }
        let h = self
            .header
            .ok_or_else(|| malformed(F, "table before the header"))?;
        let index = tag >> 8;
        match tag & 0xff {
            TAG_DESC => {
                self.parse_descriptor(&h, &bytes)?;
                self.desc_done = true;
                Ok(())
            }
            TAG_GD => self.on_gd(core, h, &bytes),
            TAG_GT => {
                self.gt_outstanding = self.gt_outstanding.saturating_sub(1);
                self.on_gt(core, h, index, &bytes)
            }
            TAG_GRAIN_HEAD => self.on_grain_head(core, h, index, host, bytes),
            TAG_GRAIN_REST => {
                let mut all = self.grain_heads.remove(&index).unwrap_or_default();
                all.extend_from_slice(&bytes);
                self.emit_grain(core, h, index, all.get(12..).unwrap_or_default())
            }
            TAG_MARKER => self.on_marker(core, h, host, bytes),
            TAG_MARKER_REST => {
                let mut all = self.marker_head.take().unwrap_or_default();
                all.extend_from_slice(&bytes);
                self.emit_grain(core, h, index, all.get(12..).unwrap_or_default())
            }
            TAG_MARKER_BODY => self.on_marker_body(index as u32, host, bytes),
            _ => Err(malformed(F, format!("internal: unknown table tag {tag}"))),
        }
    }

    fn tables_complete(&self) -> bool {
        self.marker_mode() || (self.gd_done && self.gt_outstanding == 0)
    }

    fn finish(&mut self, core: &mut Core) -> Result<(), DecodeError> {
        let h = self
            .header
            .ok_or_else(|| malformed(F, "stream ended before the sparse header"))?;
        if !self.desc_done {
            return Err(malformed(F, "stream ended before the descriptor"));
        }
        if self.marker_mode() {
            return self.finish_markers(core, h);
        }
        if !self.tables_complete() {
            return Err(malformed(
                F,
                "stream ended before every grain table was read",
            ));
        }
        Ok(())
    }

    fn virtual_size(&self) -> Option<u64> {
        self.header.map(|h| h.size())
    }
}
