//! VDI (VirtualBox) → raw: a 512-byte header, a block map of 32-bit entries, 1 MiB blocks.
//! Entries ≥ `0xfffffffe` (unallocated, discarded) read as zeros. The header checks are QEMU's
//! (version 1.1, sector-aligned map and data, 512-byte sectors, 1 MiB blocks, no link or parent
//! UUID), plus the usual caps.

use super::engine::{Core, Layout, Tag, Want, field, limit, malformed, rejected, unsupported};
use super::{DecodeError, DecodeOptions};
use crate::Format;

const F: Format = Format::Vdi;
const SIGNATURE: u32 = 0xbeda_107f;
const VERSION_1_1: u32 = 0x0001_0001;
const BLOCK: u64 = 1 << 20;
const BLOCKS_MAX: u64 = 0x1fff_ff80;

#[derive(Debug, Clone, Copy)]
struct Header {
    size: u64,
    bmap: u64,
    data: u64,
}

/// The VDI layout.
#[derive(Debug)]
pub(crate) struct Vdi {
    max_virtual_size: u64,
    header: Option<Header>,
    map_done: bool,
}

impl Vdi {
    pub(crate) fn new(opts: &DecodeOptions) -> Self {
        Vdi {
            max_virtual_size: opts.max_virtual_size,
            header: None,
            map_done: false,
        }
    }

    fn parse(&self, b: &[u8]) -> Result<Header, DecodeError> {
        let sig = field::le32(b, 64);
        if sig != SIGNATURE {
            return Err(malformed(
                F,
                format!("signature {sig:#010x}; expected {SIGNATURE:#010x}"),
            ));
        }
        let version = field::le32(b, 68);
        if version != VERSION_1_1 {
            return Err(unsupported(
                F,
                format!("version {}.{}; only 1.1", version >> 16, version & 0xffff),
            ));
        }
        let bmap = u64::from(field::le32(b, 340));
        let data = u64::from(field::le32(b, 344));
        let sector = field::le32(b, 360);
        let disk = field::le64(b, 368);
        let block = u64::from(field::le32(b, 376));
        let blocks = u64::from(field::le32(b, 384));
        if !bmap.is_multiple_of(512) || !data.is_multiple_of(512) {
            return Err(malformed(
                F,
                format!("block map offset {bmap} / data offset {data} not sector-aligned"),
            ));
        }
        if sector != 512 {
            return Err(unsupported(F, format!("sector size {sector}; only 512")));
        }
        if block != BLOCK {
            return Err(unsupported(F, format!("block size {block}; only {BLOCK}")));
        }
        if blocks > BLOCKS_MAX {
            return Err(limit(F, format!("{blocks} blocks; at most {BLOCKS_MAX}")));
        }
        let size = disk.div_ceil(512) * 512;
        if size > blocks * BLOCK {
            return Err(malformed(
                F,
                format!(
                    "disk size {disk}, block map has room for {}",
                    blocks * BLOCK
                ),
            ));
        }
        if size > self.max_virtual_size {
            return Err(limit(
                F,
                format!(
                    "disk size {size} exceeds max_virtual_size {}",
                    self.max_virtual_size
                ),
            ));
        }
        // Header, block map, data blocks: in that order, apart. Blocks are found at
        // `data + index * block size`, so a data area over the header or the block map would
        // make them read metadata as guest data.
        if bmap < 512 {
            return Err(rejected(
                F,
                "vdi.block_map",
                format!("block map at offset {bmap} overlaps the 512-byte header"),
            ));
        }
        let bmap_end = bmap + blocks * 4;
        if data < bmap_end {
            return Err(rejected(
                F,
                "vdi.data_offset",
                format!(
                    "data blocks start at offset {data}, inside the header or the block map \
                     ({bmap}..{bmap_end}); they must follow it"
                ),
            ));
        }
        if b.get(424..440).is_some_and(|u| u.iter().any(|x| *x != 0)) {
            return Err(unsupported(F, "non-null link UUID (differencing image)"));
        }
        if b.get(440..456).is_some_and(|u| u.iter().any(|x| *x != 0)) {
            return Err(unsupported(F, "non-null parent UUID (differencing image)"));
        }
        Ok(Header { size, bmap, data })
    }
}

impl Layout for Vdi {
    const FORMAT: Format = F;

    fn start(&mut self, core: &mut Core) -> Result<(), DecodeError> {
        core.want(0, 512, Want::Meta(0))
    }

    fn on_meta(
        &mut self,
        core: &mut Core,
        tag: Tag,
        _host: u64,
        b: Vec<u8>,
    ) -> Result<(), DecodeError> {
        if tag == 0 {
            let h = self.parse(&b)?;
            self.header = Some(h);
            return core.want(h.bmap, h.size.div_ceil(BLOCK) * 4, Want::Meta(1));
        }
        let h = self
            .header
            .ok_or_else(|| malformed(F, "block map before header"))?;
        let mut run: Option<(u64, u64, u64)> = None;
        for i in 0..h.size.div_ceil(BLOCK) {
            let e = field::le32(&b, (i * 4) as usize);
            let guest = i * BLOCK;
            let len = BLOCK.min(h.size - guest);
            if e >= 0xffff_fffe {
                core.zero(guest, len);
                continue;
            }
            let host = h.data + u64::from(e) * BLOCK;
            match run {
                Some((rh, rg, rl)) if rh + rl == host && rg + rl == guest => {
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
        if let Some((rh, rg, rl)) = run {
            core.want(rh, rl, Want::Data { guest: rg })?;
        }
        self.map_done = true;
        Ok(())
    }

    fn tables_complete(&self) -> bool {
        self.map_done
    }

    fn finish(&mut self, _core: &mut Core) -> Result<(), DecodeError> {
        if !self.map_done {
            return Err(malformed(F, "stream ended before the block map"));
        }
        Ok(())
    }

    fn virtual_size(&self) -> Option<u64> {
        self.header.map(|h| h.size)
    }
}
