//! VHDX → raw.
//!
//! Reads the file identifier, both headers (the valid one with the higher sequence number wins;
//! CRC-32C checked), the region table at 192 KiB (CRC-32C checked; BAT and metadata regions
//! required, unknown required regions refused), the metadata (file parameters, virtual disk
//! size, logical sector size; unknown required items and parents refused), then the BAT. The
//! BAT may precede the metadata that says how to read it (qemu-img puts it first): it is
//! collected whole and interpreted once both are in. The log must be empty (log GUID zero):
//! replaying it would mean rewriting the image. Payload states NOT_PRESENT, UNDEFINED, ZERO and
//! UNMAPPED read as zeros, FULLY_PRESENT blocks are data; PARTIALLY_PRESENT only exists in
//! differencing disks and is refused.

use super::engine::{
    Core, Layout, MetaRanges, Tag, Want, field, limit, malformed, rejected, unsupported,
};
use super::{DecodeError, DecodeOptions};
use crate::Format;

const F: Format = Format::Vhdx;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

const TAG_IDENT: Tag = 0;
const TAG_HEADER1: Tag = 1;
const TAG_HEADER2: Tag = 2;
const TAG_REGIONS: Tag = 3;
const TAG_BAT: Tag = 4;
const TAG_METADATA: Tag = 5;

/// GUIDs as stored on disk (first three fields little-endian).
const fn guid(s: [u8; 16]) -> [u8; 16] {
    [
        s[3], s[2], s[1], s[0], s[5], s[4], s[7], s[6], s[8], s[9], s[10], s[11], s[12], s[13],
        s[14], s[15],
    ]
}
const BAT_GUID: [u8; 16] = guid([
    0x2D, 0xC2, 0x77, 0x66, 0xF6, 0x23, 0x42, 0x00, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08,
]);
const METADATA_GUID: [u8; 16] = guid([
    0x8B, 0x7C, 0xA2, 0x06, 0x47, 0x90, 0x4B, 0x9A, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E,
]);
const FILE_PARAMS: [u8; 16] = guid([
    0xCA, 0xA1, 0x67, 0x37, 0xFA, 0x36, 0x4D, 0x43, 0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B,
]);
const DISK_SIZE: [u8; 16] = guid([
    0x2F, 0xA5, 0x42, 0x24, 0xCD, 0x1B, 0x48, 0x76, 0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8,
]);
const PAGE83: [u8; 16] = guid([
    0xBE, 0xCA, 0x12, 0xAB, 0xB2, 0xE6, 0x45, 0x23, 0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46,
]);
const LOGICAL_SECTOR: [u8; 16] = guid([
    0x81, 0x41, 0xBF, 0x1D, 0xA9, 0x6F, 0x47, 0x09, 0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F,
]);
const PHYSICAL_SECTOR: [u8; 16] = guid([
    0xCD, 0xA3, 0x48, 0xC7, 0x44, 0x5D, 0x44, 0x71, 0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56,
]);
const PARENT_LOCATOR: [u8; 16] = guid([
    0xA8, 0xD3, 0x5F, 0x2D, 0xB3, 0x0B, 0x45, 0x4D, 0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C,
]);

const CRC32C_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32C of `b` with the 4 bytes at `skip` read as zero.
fn crc32c_skip(b: &[u8], skip: usize) -> u32 {
    let mut c = !0u32;
    for (i, x) in b.iter().enumerate() {
        let x = if (skip..skip + 4).contains(&i) { 0 } else { *x };
        c = CRC32C_TABLE[((c ^ u32::from(x)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[derive(Debug, Clone, Copy)]
struct Params {
    size: u64,
    block: u64,
    chunk_ratio: u64,
}

/// The VHDX layout.
#[derive(Debug)]
pub(crate) struct Vhdx {
    max_virtual_size: u64,
    headers: [Option<Vec<u8>>; 2],
    bat: Option<Vec<u8>>,
    params: Option<Params>,
    mapped: bool,
    /// File ranges of the header area (first MiB), log, metadata region and BAT: no payload
    /// block may lie in them.
    meta: MetaRanges,
}

impl Vhdx {
    pub(crate) fn new(opts: &DecodeOptions) -> Self {
        Vhdx {
            max_virtual_size: opts.max_virtual_size,
            headers: [None, None],
            bat: None,
            params: None,
            mapped: false,
            meta: MetaRanges::default(),
        }
    }

    fn current_header(&self) -> Result<Vec<u8>, DecodeError> {
        let mut best: Option<(u64, &Vec<u8>)> = None;
        for h in self.headers.iter().flatten() {
            let valid = h.get(..4) == Some(b"head")
                && crc32c_skip(h, 4) == field::le32(h, 4)
                && field::le16(h, 66) == 1;
            let seq = field::le64(h, 8);
            if valid && best.is_none_or(|(s, _)| seq > s) {
                best = Some((seq, h));
            }
        }
        best.map(|(_, h)| h.clone()).ok_or_else(|| {
            malformed(
                F,
                "neither header at 64 KiB nor at 128 KiB is valid (signature, CRC-32C, version 1)",
            )
        })
    }

    fn on_regions(&mut self, core: &mut Core, r: &[u8]) -> Result<(), DecodeError> {
        let h = self.current_header()?;
        if h.get(48..64).is_some_and(|g| g.iter().any(|x| *x != 0)) {
            return Err(unsupported(
                F,
                "log is not empty (non-zero log GUID): replaying it would modify the image",
            ));
        }
        if r.get(..4) != Some(b"regi") || crc32c_skip(r, 4) != field::le32(r, 4) {
            return Err(malformed(
                F,
                "region table at 192 KiB: bad signature or CRC-32C",
            ));
        }
        let count = u64::from(field::le32(r, 8));
        if count > 2047 {
            return Err(malformed(
                F,
                format!("{count} region entries; at most 2047"),
            ));
        }
        let (mut bat, mut meta) = (None, None);
        for i in 0..count as usize {
            let e = 16 + i * 32;
            let g = r.get(e..e + 16).unwrap_or_default();
            let off = field::le64(r, e + 16);
            let len = u64::from(field::le32(r, e + 24));
            let required = field::le32(r, e + 28) & 1 != 0;
            let slot = if g == BAT_GUID {
                &mut bat
            } else if g == METADATA_GUID {
                &mut meta
            } else if required {
                return Err(unsupported(
                    F,
                    format!("unknown required region {}", hex(g)),
                ));
            } else {
                continue;
            };
            if slot.is_some() {
                return Err(malformed(F, format!("region {} listed twice", hex(g))));
            }
            if off < MIB || !off.is_multiple_of(MIB) || len == 0 || !len.is_multiple_of(MIB) {
                return Err(malformed(
                    F,
                    format!(
                        "region {} at {off} of {len} bytes: must be whole MiB from 1 MiB on",
                        hex(g)
                    ),
                ));
            }
            *slot = Some((off, len));
        }
        let (Some((bo, bl)), Some((mo, ml))) = (bat, meta) else {
            return Err(malformed(
                F,
                "region table lacks the BAT or the metadata region",
            ));
        };
        self.meta.add("the header area", 0, MIB);
        self.meta.add(
            "the log",
            field::le64(&h, 72),
            u64::from(field::le32(&h, 68)),
        );
        self.meta.add("the metadata region", mo, ml);
        self.meta.add("the BAT region", bo, bl);
        core.want(mo, ml, Want::Meta(TAG_METADATA))?;
        core.want(bo, bl, Want::Meta(TAG_BAT))
    }

    fn on_metadata(&mut self, m: &[u8]) -> Result<(), DecodeError> {
        if m.get(..8) != Some(b"metadata") {
            return Err(malformed(F, "metadata table signature is not \"metadata\""));
        }
        let count = usize::from(field::le16(m, 10));
        if count > 2047 {
            return Err(malformed(
                F,
                format!("{count} metadata entries; at most 2047"),
            ));
        }
        let item = |e: usize, want: usize| -> Result<&[u8], DecodeError> {
            let off = field::le32(m, e + 16) as usize;
            let len = field::le32(m, e + 20) as usize;
            if len < want {
                return Err(malformed(
                    F,
                    format!("metadata item of {len} bytes; needs {want}"),
                ));
            }
            off.checked_add(len)
                .and_then(|end| m.get(off..end))
                .filter(|_| off >= 64 * KIB as usize)
                .ok_or_else(|| {
                    malformed(
                        F,
                        format!("metadata item at {off} of {len} bytes lies outside the region"),
                    )
                })
        };
        let (mut block, mut flags, mut size, mut lss) = (None, 0u32, None, None);
        for i in 0..count {
            let e = 32 + i * 32;
            let g = m.get(e..e + 16).unwrap_or_default();
            let required = field::le32(m, e + 24) & 4 != 0;
            if g == FILE_PARAMS {
                let d = item(e, 8)?;
                block = Some(u64::from(field::le32(d, 0)));
                flags = field::le32(d, 4);
            } else if g == DISK_SIZE {
                size = Some(field::le64(item(e, 8)?, 0));
            } else if g == LOGICAL_SECTOR {
                lss = Some(u64::from(field::le32(item(e, 4)?, 0)));
            } else if g == PARENT_LOCATOR {
                return Err(unsupported(F, "parent locator: differencing disk"));
            } else if g == PAGE83 || g == PHYSICAL_SECTOR || !required {
                continue;
            } else {
                return Err(unsupported(
                    F,
                    format!("unknown required metadata item {}", hex(g)),
                ));
            }
        }
        let (Some(block), Some(size), Some(lss)) = (block, size, lss) else {
            return Err(malformed(
                F,
                "metadata lacks file parameters, virtual disk size or logical sector size",
            ));
        };
        if flags & 2 != 0 {
            return Err(unsupported(F, "HasParent: differencing disk"));
        }
        if !block.is_power_of_two() || !(MIB..=256 * MIB).contains(&block) {
            return Err(malformed(
                F,
                format!("block size {block}; a power of two in 1..=256 MiB"),
            ));
        }
        if lss != 512 && lss != 4096 {
            return Err(malformed(
                F,
                format!("logical sector size {lss}; 512 or 4096"),
            ));
        }
        if !size.is_multiple_of(lss) || size > self.max_virtual_size.min(64 << 40) {
            return Err(limit(
                F,
                format!(
                    "virtual size {size}: must be a multiple of {lss} and at most {}",
                    self.max_virtual_size.min(64 << 40)
                ),
            ));
        }
        self.params = Some(Params {
            size,
            block,
            chunk_ratio: (8 * MIB * lss) / block,
        });
        Ok(())
    }

    fn map(&mut self, core: &mut Core) -> Result<(), DecodeError> {
        if self.params.is_none() || self.bat.is_none() {
            return Ok(());
        }
        let (Some(p), Some(bat)) = (self.params, self.bat.take()) else {
            return Ok(());
        };
        let blocks = p.size.div_ceil(p.block);
        let mut run: Option<(u64, u64, u64)> = None;
        for i in 0..blocks {
            let idx = i + i / p.chunk_ratio;
            let at = idx
                .checked_mul(8)
                .filter(|a| a + 8 <= bat.len() as u64)
                .ok_or_else(|| {
                    malformed(
                        F,
                        format!("BAT of {} bytes lacks entry {idx} for block {i}", bat.len()),
                    )
                })?;
            let e = field::le64(&bat, at as usize);
            let guest = i * p.block;
            let len = p.block.min(p.size - guest);
            match e & 7 {
                0..=3 => core.zero(guest, len),
                6 => {
                    let host = e & !0xF_FFFF;
                    if host == 0 {
                        return Err(malformed(
                            F,
                            format!("block {i} is FULLY_PRESENT at file offset 0"),
                        ));
                    }
                    if let Some((what, s, e)) = self.meta.find(host, len) {
                        return Err(rejected(
                            F,
                            "vhdx.bat_entry",
                            format!(
                                "block {i} at file offset {host:#x}..{:#x} overlaps {what} at \
                                 {s:#x}..{e:#x}; BAT entries may only point at payload blocks",
                                host.saturating_add(len)
                            ),
                        ));
                    }
                    match run {
                        Some((rh, rg, rl))
                            if rh.checked_add(rl) == Some(host) && rg + rl == guest =>
                        {
                            run = Some((rh, rg, rl + len))
                        }
                        _ => {
                            if let Some((rh, rg, rl)) = run {
                                core.want(rh, rl, Want::Data { guest: rg })?;
                            }
                            run = Some((host, guest, len));
                        }
                    }
                }
                7 => {
                    return Err(unsupported(
                        F,
                        format!("block {i} is PARTIALLY_PRESENT (differencing)"),
                    ));
                }
                s => {
                    return Err(malformed(
                        F,
                        format!("block {i} has BAT state {s}; known 0-3, 6, 7"),
                    ));
                }
            }
        }
        if let Some((rh, rg, rl)) = run {
            core.want(rh, rl, Want::Data { guest: rg })?;
        }
        self.mapped = true;
        Ok(())
    }
}

fn hex(g: &[u8]) -> String {
    g.iter().map(|b| format!("{b:02x}")).collect()
}

impl Layout for Vhdx {
    const FORMAT: Format = F;

    fn start(&mut self, core: &mut Core) -> Result<(), DecodeError> {
        core.want(0, 8, Want::Meta(TAG_IDENT))?;
        core.want(64 * KIB, 4 * KIB, Want::Meta(TAG_HEADER1))?;
        core.want(128 * KIB, 4 * KIB, Want::Meta(TAG_HEADER2))?;
        core.want(192 * KIB, 64 * KIB, Want::Meta(TAG_REGIONS))
    }

    fn on_meta(
        &mut self,
        core: &mut Core,
        tag: Tag,
        _host: u64,
        b: Vec<u8>,
    ) -> Result<(), DecodeError> {
        match tag {
            TAG_IDENT => {
                if b != b"vhdxfile" {
                    return Err(malformed(F, "no vhdxfile signature at offset 0"));
                }
                Ok(())
            }
            TAG_HEADER1 => {
                self.headers[0] = Some(b);
                Ok(())
            }
            TAG_HEADER2 => {
                self.headers[1] = Some(b);
                Ok(())
            }
            TAG_REGIONS => self.on_regions(core, &b),
            TAG_BAT => {
                self.bat = Some(b);
                self.map(core)
            }
            TAG_METADATA => {
                self.on_metadata(&b)?;
                self.map(core)
            }
            _ => Err(malformed(F, format!("internal: unknown table tag {tag}"))),
        }
    }

    fn tables_complete(&self) -> bool {
        self.mapped
    }

    fn finish(&mut self, _core: &mut Core) -> Result<(), DecodeError> {
        if !self.mapped {
            return Err(malformed(
                F,
                "stream ended before the BAT and metadata were read",
            ));
        }
        Ok(())
    }

    fn virtual_size(&self) -> Option<u64> {
        self.params.map(|p| p.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answer() {
        // RFC 3720 B.4: 32 bytes of zeros → 0x8a9136aa; "123456789" → 0xe3069283.
        assert_eq!(crc32c_skip(&[0u8; 32], usize::MAX - 4), 0x8a91_36aa);
        assert_eq!(crc32c_skip(b"123456789", usize::MAX - 4), 0xe306_9283);
    }
}
