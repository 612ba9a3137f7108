//! The one VHD disk-size rule, shared by the inspector and the decoder, so that
//! `max_virtual_size` is checked against the size the decoder writes.
//!
//! It is qemu's rule (block/vpc.c `vpc_open`, qemu 10.0 and later, default options): the
//! footer's `current_size`, except for the two creator applications known to size disks by
//! their CHS geometry, Virtual PC (`vpc `) and old qemu (`qemu`), where the product of
//! cylinders × heads × sectors per track is used, unless that geometry is the maximum (then the
//! disk may be larger than CHS can say, and `current_size` is used again). Every other creator
//! (`win `, `qem2`, `d2v\0`, `tap\0`, `CTXS`, Azure's `wa\0\0`, unknown ones) uses
//! `current_size`, rounded down to whole sectors.

/// qemu's `VHD_MAX_GEOMETRY`: 65535 cylinders × 16 heads × 255 sectors per track.
pub(crate) const MAX_GEOMETRY: u64 = 65535 * 16 * 255;

/// Creator applications whose disks are sized by CHS geometry.
const CHS_CREATORS: [&[u8; 4]; 2] = [b"vpc ", b"qemu"];

/// The disk size in 512-byte sectors that a VHD footer describes (see the module docs).
/// Reads past the end of a short `footer` count as zero.
pub(crate) fn disk_sectors(footer: &[u8]) -> u64 {
    let byte = |i: usize| u64::from(footer.get(i).copied().unwrap_or(0));
    let creator = footer.get(28..32).unwrap_or_default();
    let current = (48..56).fold(0u64, |a, i| a << 8 | byte(i));
    let chs = (byte(56) << 8 | byte(57)) * byte(58) * byte(59);
    let by_chs = CHS_CREATORS.iter().any(|c| creator == c.as_slice());
    if by_chs && chs != MAX_GEOMETRY {
        chs
    } else {
        current / 512
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer(creator: &[u8; 4], current: u64, c: u16, h: u8, s: u8) -> [u8; 512] {
        let mut f = [0u8; 512];
        f[28..32].copy_from_slice(creator);
        f[48..56].copy_from_slice(&current.to_be_bytes());
        f[56..58].copy_from_slice(&c.to_be_bytes());
        f[58] = h;
        f[59] = s;
        f
    }

    #[test]
    fn chs_only_for_virtual_pc_and_old_qemu() {
        let (cur, c, h, s) = (10 << 20, 300u16, 4u8, 17u8);
        for cr in [b"vpc ", b"qemu"] {
            assert_eq!(disk_sectors(&footer(cr, cur, c, h, s)), 300 * 4 * 17);
        }
        for cr in [
            b"win ", b"qem2", b"d2v\0", b"d2v ", b"tap\0", b"CTXS", b"wa\0\0", b"vs  ",
        ] {
            assert_eq!(disk_sectors(&footer(cr, cur + 100, c, h, s)), cur / 512);
        }
        // Maximum geometry: current_size even for a CHS creator.
        assert_eq!(
            disk_sectors(&footer(b"vpc ", 3 << 40, 65535, 16, 255)),
            (3 << 40) / 512
        );
        assert_eq!(disk_sectors(&[0u8; 10]), 0);
    }
}
