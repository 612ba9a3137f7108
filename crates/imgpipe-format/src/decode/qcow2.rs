//! qcow2 (v2 and v3) → raw.
//!
//! Reads the header and its extensions, the active L1 table, then each L2 table it names; data
//! clusters (standard or extended L2 with subclusters), zero clusters and compressed clusters
//! (zlib = raw deflate, or zstd, per the header's compression type) become extents. Refcounts,
//! snapshots and bitmaps are not read: only the active layer is decoded. A backing file, an
//! external data file, encryption, the corrupt bit and unknown incompatible bits are refused
//! with named errors.

use super::engine::{
    Codec, Core, Layout, MetaRanges, Tag, Want, field, malformed, rejected, unsupported,
};
use super::{DecodeError, DecodeOptions};
use crate::Format;

const F: Format = Format::Qcow2;

const TAG_HEADER: Tag = 0;
const TAG_HEADER_REST: Tag = 1;
const TAG_L1: Tag = 2;
const TAG_L2: Tag = 3;

/// QEMU's cap on the L1 table (`QCOW_MAX_L1_SIZE`).
const MAX_L1_BYTES: u64 = 32 << 20;
/// Host offset bits of L1 and standard L2 entries.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO_FLAG: u64 = 1;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

const EXT_END: u32 = 0;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_CRYPTO: u32 = 0x0537_be77;

#[derive(Debug, Clone, Copy)]
struct Header {
    cluster_bits: u32,
    cluster_size: u64,
    size: u64,
    l1_entries: u64,
    l1_offset: u64,
    /// Entries of the L1 table as the header sizes it (at least `l1_entries`).
    l1_size: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u64,
    ext_l2: bool,
    codec: Codec,
    /// Where header extensions start.
    ext_start: usize,
}

impl Header {
    fn l2_entries(&self) -> u64 {
        self.cluster_size / if self.ext_l2 { 16 } else { 8 }
    }
    fn l2_span(&self) -> u64 {
        self.l2_entries() << self.cluster_bits
    }
}

/// The qcow2 layout (see the module docs).
#[derive(Debug)]
pub(crate) struct Qcow2 {
    max_virtual_size: u64,
    header: Option<Header>,
    /// The first 512 bytes, kept until the rest of cluster 0 (header extensions) arrives.
    first: Vec<u8>,
    l1_done: bool,
    l2_outstanding: u64,
    /// Host ranges of the header cluster, L1 table, refcount table and L2 tables: no L1 or L2
    /// entry may point into them.
    meta: MetaRanges,
}

impl Qcow2 {
    pub(crate) fn new(opts: &DecodeOptions) -> Self {
        Qcow2 {
            max_virtual_size: opts.max_virtual_size,
            header: None,
            first: Vec::new(),
            l1_done: false,
            l2_outstanding: 0,
            meta: MetaRanges::default(),
        }
    }

    fn parse_header(&self, b: &[u8]) -> Result<Header, DecodeError> {
        if b.get(..4) != Some(b"QFI\xfb") {
            return Err(malformed(F, "no qcow2 magic QFI\\xfb at offset 0"));
        }
        let version = field::be32(b, 4);
        if version != 2 && version != 3 {
            return Err(unsupported(
                F,
                format!("version {version}; only 2 and 3 are known"),
            ));
        }
        let backing = field::be64(b, 8);
        if backing != 0 {
            return Err(unsupported(
                F,
                format!(
                    "backing file (name at header offset {backing}); images with a backing \
                     file are refused, nothing an image names is opened"
                ),
            ));
        }
        let cluster_bits = field::be32(b, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(malformed(
                F,
                format!("cluster_bits {cluster_bits}; allowed 9..=21"),
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        let size = field::be64(b, 24);
        if !size.is_multiple_of(512) {
            return Err(malformed(
                F,
                format!("virtual size {size} is not a multiple of 512"),
            ));
        }
        if size > self.max_virtual_size {
            return Err(super::engine::limit(
                F,
                format!(
                    "virtual size {size} exceeds max_virtual_size {}",
                    self.max_virtual_size
                ),
            ));
        }
        let crypt = field::be32(b, 32);
        if crypt != 0 {
            return Err(unsupported(
                F,
                format!("encryption (crypt_method {crypt}); only 0 (none) is decoded"),
            ));
        }
        let l1_size = u64::from(field::be32(b, 36));
        let l1_offset = field::be64(b, 40);
        let (incompat, header_len) = if version == 3 {
            (field::be64(b, 72), u64::from(field::be32(b, 100)))
        } else {
            (0, 72)
        };
        if version == 3 && !(104..=cluster_size).contains(&header_len) {
            return Err(malformed(
                F,
                format!("header_length {header_len}; allowed 104..={cluster_size}"),
            ));
        }
        if incompat & INCOMPAT_CORRUPT != 0 {
            return Err(unsupported(
                F,
                "image is marked corrupt (incompatible bit 1)",
            ));
        }
        if incompat & INCOMPAT_DATA_FILE != 0 {
            return Err(unsupported(
                F,
                "external data file (incompatible bit 2); the data is not in this stream",
            ));
        }
        let unknown = incompat & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(unsupported(
                F,
                format!(
                    "unknown incompatible feature bits {unknown:#x}; known {INCOMPAT_KNOWN:#x}"
                ),
            ));
        }
        let ext_l2 = incompat & INCOMPAT_EXTL2 != 0;
        if ext_l2 && cluster_bits < 14 {
            return Err(unsupported(
                F,
                format!(
                    "extended L2 with {cluster_size}-byte clusters: subclusters smaller than 512 \
                     bytes"
                ),
            ));
        }
        let ctype = if header_len > 104 {
            b.get(104).copied().unwrap_or(0)
        } else {
            0
        };
        let codec = match ctype {
            0 => Codec::Deflate,
            1 => Codec::Zstd,
            t => {
                return Err(unsupported(
                    F,
                    format!("compression type {t}; known 0 (zlib) and 1 (zstd)"),
                ));
            }
        };
        let bit3 = incompat & INCOMPAT_COMPRESSION != 0;
        if (ctype != 0) != bit3 {
            return Err(malformed(
                F,
                format!(
                    "compression type {ctype} with incompatible bit 3 {}; the bit must be set \
                     exactly when the type is not zlib",
                    if bit3 { "set" } else { "clear" }
                ),
            ));
        }
        let mut h = Header {
            cluster_bits,
            cluster_size,
            size,
            l1_entries: 0,
            l1_offset,
            l1_size,
            refcount_table_offset: field::be64(b, 48),
            refcount_table_clusters: u64::from(field::be32(b, 56)),
            ext_l2,
            codec,
            ext_start: header_len as usize,
        };
        let needed = size.div_ceil(h.l2_span());
        if l1_size < needed {
            return Err(malformed(
                F,
                format!(
                    "L1 table has {l1_size} entries; virtual size {size} needs {needed} with \
                     {cluster_size}-byte clusters"
                ),
            ));
        }
        if needed * 8 > MAX_L1_BYTES {
            return Err(super::engine::limit(
                F,
                format!("L1 table of {} bytes; at most {MAX_L1_BYTES}", needed * 8),
            ));
        }
        if needed > 0 && (l1_offset == 0 || !l1_offset.is_multiple_of(cluster_size)) {
            return Err(malformed(
                F,
                format!(
                    "L1 table offset {l1_offset} is not a non-zero multiple of the cluster size {cluster_size}"
                ),
            ));
        }
        h.l1_entries = needed;
        Ok(h)
    }

    fn parse_extensions(&self, h: &Header, c0: &[u8]) -> Result<(), DecodeError> {
        let end = c0.len();
        let mut off = h.ext_start;
        while off + 8 <= end {
            let typ = field::be32(c0, off);
            let len = field::be32(c0, off + 4) as usize;
            if typ == EXT_END {
                return Ok(());
            }
            let next = len
                .checked_add(7)
                .map(|l| l / 8 * 8)
                .and_then(|l| l.checked_add(off + 8))
                .filter(|n| *n <= end)
                .ok_or_else(|| {
                    malformed(
                        F,
                        format!(
                            "header extension {typ:#x} at offset {off} of {len} bytes runs past \
                             the first cluster ({end} bytes)"
                        ),
                    )
                })?;
            match typ {
                EXT_DATA_FILE => {
                    return Err(unsupported(
                        F,
                        "external data file header extension (0x44415441)",
                    ));
                }
                EXT_CRYPTO => {
                    return Err(unsupported(F, "full disk encryption header extension"));
                }
                _ => {}
            }
            off = next;
        }
        Ok(())
    }

    fn header_done(&mut self, core: &mut Core, c0: &[u8]) -> Result<(), DecodeError> {
        let Some(h) = self.header else {
            return Err(malformed(F, "header extensions before the header"));
        };
        self.parse_extensions(&h, c0)?;
        self.first = Vec::new();
        let cs = h.cluster_size;
        self.meta.add("the header cluster", 0, cs);
        // Whole clusters: qemu allocates tables cluster by cluster.
        let l1_bytes = (h.l1_size * 8).div_ceil(cs).saturating_mul(cs);
        self.meta.add("the L1 table", h.l1_offset, l1_bytes);
        if h.refcount_table_offset != 0 {
            self.meta.add(
                "the refcount table",
                h.refcount_table_offset,
                h.refcount_table_clusters.saturating_mul(cs),
            );
        }
        if h.l1_entries == 0 {
            self.l1_done = true;
            return Ok(());
        }
        core.want(h.l1_offset, h.l1_entries * 8, Want::Meta(TAG_L1))
    }

    /// Refuse a cluster (or compressed range) of guest data or an L2 table that lies in the
    /// image's own metadata: qemu would read it as data (or as a table), an attacker's way to
    /// make one structure mean two things.
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
                    "{what} at host offset {off:#x}..{:#x} overlaps {meta} at {s:#x}..{e:#x}; \
                     table entries may only point at data clusters",
                    off.saturating_add(len)
                ),
            )),
        }
    }

    fn on_l1(&mut self, core: &mut Core, h: Header, l1: &[u8]) -> Result<(), DecodeError> {
        let span = h.l2_span();
        let mut l2_tables = Vec::new();
        for i in 0..h.l1_entries {
            let e = field::be64(l1, (i * 8) as usize);
            let guest = i * span;
            let reserved = e & !(OFFSET_MASK | COPIED);
            if reserved != 0 {
                return Err(malformed(
                    F,
                    format!("L1 entry {i} ({e:#018x}) has reserved bits {reserved:#x} set"),
                ));
            }
            let off = e & OFFSET_MASK;
            if off == 0 {
                core.zero(guest, span.min(h.size - guest));
                continue;
            }
            if !off.is_multiple_of(h.cluster_size) {
                return Err(malformed(
                    F,
                    format!(
                        "L1 entry {i}: L2 table offset {off:#x} is not a multiple of the \
                         cluster size {}",
                        h.cluster_size
                    ),
                ));
            }
            self.check_host(
                "qcow2.l1_entry",
                &format!("L1 entry {i}: L2 table"),
                off,
                h.cluster_size,
            )?;
            l2_tables.push(off);
            self.l2_outstanding += 1;
            core.want(off, h.cluster_size, Want::Meta(TAG_L2 | (i << 8)))?;
        }
        self.meta
            .set_tables("an L2 table", l2_tables, h.cluster_size);
        self.l1_done = true;
        Ok(())
    }

    fn on_l2(
        &mut self,
        core: &mut Core,
        h: Header,
        index: u64,
        host: u64,
        l2: &[u8],
    ) -> Result<(), DecodeError> {
        let cs = h.cluster_size;
        let base = index * h.l2_span();
        let mut run = Run::default();
        for j in 0..h.l2_entries() {
            let guest = base + j * cs;
            if guest >= h.size {
                break;
            }
            let clen = cs.min(h.size - guest);
            let esz = if h.ext_l2 { 16 } else { 8 };
            let e = field::be64(l2, (j * esz) as usize);
            let bitmap = if h.ext_l2 {
                field::be64(l2, (j * esz + 8) as usize)
            } else {
                0
            };
            let at = || format!("L2 table at {host:#x} entry {j} (guest offset {guest})");
            if e & COMPRESSED != 0 {
                if h.ext_l2 && bitmap != 0 {
                    return Err(malformed(
                        F,
                        format!(
                            "{}: compressed cluster with subcluster bitmap {bitmap:#x}",
                            at()
                        ),
                    ));
                }
                let x = 62 - (h.cluster_bits - 8);
                let coff = e & ((1u64 << x) - 1);
                let nsec = ((e >> x) & ((1u64 << (62 - x)) - 1)) + 1;
                let csize = nsec * 512 - (coff & 511);
                self.check_host(
                    "qcow2.l2_entry",
                    &format!("{}: compressed cluster", at()),
                    coff,
                    csize,
                )?;
                run.flush(core)?;
                core.want(
                    coff,
                    csize,
                    Want::Compressed {
                        guest,
                        out_len: cs as u32,
                        emit_len: clen as u32,
                        codec: h.codec,
                    },
                )?;
                continue;
            }
            let reserved = e & !(OFFSET_MASK | COPIED | ZERO_FLAG);
            if reserved != 0 {
                return Err(malformed(
                    F,
                    format!(
                        "{}: entry {e:#018x} has reserved bits {reserved:#x} set",
                        at()
                    ),
                ));
            }
            let off = e & OFFSET_MASK;
            if !off.is_multiple_of(cs) {
                return Err(malformed(
                    F,
                    format!(
                        "{}: cluster offset {off:#x} is not a multiple of {cs}",
                        at()
                    ),
                ));
            }
            if off != 0 {
                self.check_host(
                    "qcow2.l2_entry",
                    &format!("{}: data cluster", at()),
                    off,
                    cs,
                )?;
            }
            if !h.ext_l2 {
                if e & ZERO_FLAG != 0 || off == 0 {
                    core.zero(guest, clen);
                } else {
                    run.add(core, off, guest, clen)?;
                }
                continue;
            }
            let alloc = bitmap & 0xffff_ffff;
            let zero = bitmap >> 32;
            if off == 0 && alloc != 0 {
                return Err(malformed(
                    F,
                    format!(
                        "{}: unallocated cluster with allocated subclusters {alloc:#x}",
                        at()
                    ),
                ));
            }
            if alloc & zero != 0 {
                return Err(malformed(
                    F,
                    format!(
                        "{}: subclusters {:#x} are marked both allocated and zero",
                        at(),
                        alloc & zero
                    ),
                ));
            }
            let sc = cs / 32;
            for k in 0..32u64 {
                let g = guest + k * sc;
                if g >= h.size {
                    break;
                }
                let len = sc.min(h.size - g);
                if alloc & (1 << k) != 0 {
                    run.add(core, off + k * sc, g, len)?;
                } else {
                    core.zero(g, len);
                }
            }
        }
        run.flush(core)?;
        Ok(())
    }
}

/// A run of host-contiguous, guest-contiguous data, registered as one range.
#[derive(Debug, Default)]
struct Run {
    host: u64,
    guest: u64,
    len: u64,
}

impl Run {
    fn add(&mut self, core: &mut Core, host: u64, guest: u64, len: u64) -> Result<(), DecodeError> {
        if self.len > 0 && self.host + self.len == host && self.guest + self.len == guest {
            self.len += len;
            return Ok(());
        }
        self.flush(core)?;
        *self = Run { host, guest, len };
        Ok(())
    }

    fn flush(&mut self, core: &mut Core) -> Result<(), DecodeError> {
        if self.len > 0 {
            core.want(self.host, self.len, Want::Data { guest: self.guest })?;
        }
        self.len = 0;
        Ok(())
    }
}

impl Layout for Qcow2 {
    const FORMAT: Format = F;

    fn start(&mut self, core: &mut Core) -> Result<(), DecodeError> {
        core.want(0, 512, Want::Meta(TAG_HEADER))
    }

    fn on_meta(
        &mut self,
        core: &mut Core,
        tag: Tag,
        host: u64,
        bytes: Vec<u8>,
    ) -> Result<(), DecodeError> {
        match tag & 0xff {
            TAG_HEADER => {
                let h = self.parse_header(&bytes)?;
                self.header = Some(h);
                if h.cluster_size > 512 {
                    self.first = bytes;
                    core.want(512, h.cluster_size - 512, Want::Meta(TAG_HEADER_REST))
                } else {
                    self.header_done(core, &bytes)
                }
            }
            TAG_HEADER_REST => {
                let mut c0 = std::mem::take(&mut self.first);
                c0.extend_from_slice(&bytes);
                self.header_done(core, &c0)
            }
            TAG_L1 => {
                let h = self
                    .header
                    .ok_or_else(|| malformed(F, "L1 before header"))?;
                self.on_l1(core, h, &bytes)
            }
            TAG_L2 => {
                let h = self
                    .header
                    .ok_or_else(|| malformed(F, "L2 before header"))?;
                self.l2_outstanding = self.l2_outstanding.saturating_sub(1);
                self.on_l2(core, h, tag >> 8, host, &bytes)
            }
            _ => Err(malformed(F, format!("internal: unknown table tag {tag}"))),
        }
    }

    fn tables_complete(&self) -> bool {
        self.l1_done && self.l2_outstanding == 0
    }

    fn finish(&mut self, _core: &mut Core) -> Result<(), DecodeError> {
        if self.header.is_none() {
            return Err(malformed(F, "stream ended before the qcow2 header"));
        }
        if !self.tables_complete() {
            return Err(malformed(
                F,
                format!(
                    "stream ended with the L1 table {} and {} L2 tables unread",
                    if self.l1_done { "read" } else { "unread" },
                    self.l2_outstanding
                ),
            ));
        }
        Ok(())
    }

    fn virtual_size(&self) -> Option<u64> {
        self.header.map(|h| h.size)
    }
}
