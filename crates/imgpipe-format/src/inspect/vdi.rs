//! VirtualBox VDI: a little-endian header whose signature sits at 0x40.

use crate::Format;

use super::probe::{Ctx, Finding, Found, Probe, conclude, gate};

const SIGNATURE: &[u8] = &0xBEDA_107Fu32.to_le_bytes();
const TYPE_NORMAL: u32 = 1;
const TYPE_FIXED: u32 = 2;
/// qemu's VDI_BLOCKS_IN_IMAGE_MAX (0x3fffffff / 4 blocks of 1 MiB).
const MAX_BLOCKS: u64 = 0x3fff_ffff / 4;

/// Probe for VDI.
pub(crate) fn probe(ctx: &Ctx<'_>) -> Probe {
    if let Some(p) = gate(ctx, 0x40, SIGNATURE) {
        return p;
    }
    let mut f = Found::new(Format::Vdi);
    let r = (|| {
        let version = ctx.le32(0x44)?;
        let image_type = ctx.le32(0x4c)?;
        let offset_bmap = u64::from(ctx.le32(0x154)?);
        let offset_data = u64::from(ctx.le32(0x158)?);
        let size = ctx.le64(0x170)?;
        let block_size = u64::from(ctx.le32(0x178)?);
        let blocks = u64::from(ctx.le32(0x180)?);
        f.virtual_size = Some(size);
        if version >> 16 != 1 {
            f.findings.push(Finding::malformed(
                "vdi.version",
                format!("VDI version is {version:#010x}; allowed: 1.x"),
            ));
        }
        match image_type {
            TYPE_NORMAL => f.subformat = Some("dynamic"),
            TYPE_FIXED => f.subformat = Some("fixed"),
            t => f.findings.push(Finding::unsafe_(
                "vdi.image_type",
                format!(
                    "VDI image type is {t} (3 undo / 4 differencing refer to other images); \
                     allowed: 1 (normal) or 2 (fixed)"
                ),
            )),
        }
        if blocks > MAX_BLOCKS || block_size == 0 || blocks.saturating_mul(block_size) < size {
            f.findings.push(Finding::malformed(
                "vdi.blocks",
                format!(
                    "VDI has {blocks} blocks of {block_size} bytes for a {size}-byte disk; allowed: \
                     at most {MAX_BLOCKS} blocks covering the disk"
                ),
            ));
        }
        let bmap_end = offset_bmap.saturating_add(blocks.saturating_mul(4));
        if offset_bmap < 512 || bmap_end > offset_data {
            f.findings.push(Finding::malformed(
                "vdi.block_map",
                format!(
                    "VDI block map at {offset_bmap}..{bmap_end} with data at {offset_data}; allowed: \
                     after the header and before the data"
                ),
            ));
        }
        Ok(())
    })();
    conclude(f, r)
}
