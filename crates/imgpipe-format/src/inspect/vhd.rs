//! VHD (Virtual PC / "vpc"): a 512-byte big-endian footer, copied at offset 0 for dynamic and
//! differencing disks, present only at the end for fixed disks.

use crate::Format;

use super::probe::{Ctx, Deferred, Finding, Found, Probe, be32_at, be64_at, conclude, gate};

pub(crate) const COOKIE: &[u8] = b"conectix";
const DYN_COOKIE: &[u8] = b"cxsparse";
const TYPE_FIXED: u32 = 2;
const TYPE_DYNAMIC: u32 = 3;
const TYPE_DIFF: u32 = 4;
/// The dynamic header is only looked for this close to the start.
const MAX_DYN_HEADER_OFFSET: u64 = 64 * 1024;

/// The footer checksum: one's complement of the byte sum, the checksum field counted as zero.
pub(crate) fn checksum(footer: &[u8]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(u32::from(b)));
    !sum
}

/// The virtual size of the disk a footer describes: the rule the decoder uses too
/// ([`crate::vhd_size`], qemu's).
pub(crate) fn virtual_size(footer: &[u8]) -> u64 {
    crate::vhd_size::disk_sectors(footer) * 512
}

/// Footer findings common to the copy at 0 and the footer at the end.
pub(crate) fn footer_findings(footer: &[u8], f: &mut Found) {
    let stored = be32_at(footer, 64);
    let computed = checksum(footer);
    if stored != computed {
        f.findings.push(Finding::malformed(
            "vhd.checksum",
            format!("VHD footer checksum is {stored:#010x}; allowed: {computed:#010x} (computed)"),
        ));
    }
    match be32_at(footer, 60) {
        TYPE_FIXED => f.subformat = Some("fixed"),
        TYPE_DYNAMIC => f.subformat = Some("dynamic"),
        TYPE_DIFF => {
            f.subformat = Some("differencing");
            f.findings.push(Finding::unsafe_(
                "vhd.differencing",
                "VHD disk type is 4 (differencing: it has a parent disk); allowed: 2 (fixed) or 3 \
                 (dynamic)",
            ));
        }
        t => f.findings.push(Finding::malformed(
            "vhd.disk_type",
            format!("VHD disk type is {t}; allowed: 2 (fixed) or 3 (dynamic)"),
        )),
    }
    f.virtual_size = Some(virtual_size(footer));
}

/// Probe for a dynamic/differencing VHD (footer copy at offset 0).
pub(crate) fn probe(ctx: &Ctx<'_>) -> Probe {
    if let Some(p) = gate(ctx, 0, COOKIE) {
        return p;
    }
    let mut f = Found::new(Format::Vhd);
    let r = (|| {
        let footer = ctx.get(0, 512)?;
        footer_findings(footer, &mut f);
        let ty = be32_at(footer, 60);
        if ty == TYPE_FIXED {
            // A fixed disk has no footer copy at 0: this layout is not one qemu writes.
            f.findings.push(Finding::malformed(
                "vhd.disk_type",
                "VHD footer at offset 0 says fixed (2); a fixed disk keeps its footer only at the end",
            ));
        }
        if ty == TYPE_DYNAMIC || ty == TYPE_DIFF {
            let mut copy = Box::new([0u8; 512]);
            copy.copy_from_slice(footer);
            f.deferred.push(Deferred::VhdFooterCopy(copy));
            let dyn_off = be64_at(footer, 16);
            if !(512..=MAX_DYN_HEADER_OFFSET).contains(&dyn_off) {
                f.findings.push(Finding::malformed(
                    "vhd.dynamic_header",
                    format!(
                        "VHD dynamic header offset is {dyn_off}; allowed: 512..={MAX_DYN_HEADER_OFFSET}"
                    ),
                ));
                return Ok(());
            }
            let dh = ctx.get(dyn_off, 1024)?;
            if dh.get(..8) != Some(DYN_COOKIE) {
                f.findings.push(Finding::malformed(
                    "vhd.dynamic_header",
                    format!("VHD dynamic header at {dyn_off} does not start with cxsparse"),
                ));
            }
        }
        Ok(())
    })();
    conclude(f, r)
}

/// Whether the last 512 bytes of a stream are a VHD footer (cookie + valid checksum).
pub(crate) fn tail_is_footer(tail512: &[u8]) -> bool {
    tail512.len() == 512
        && tail512.get(..8) == Some(COOKIE)
        && be32_at(tail512, 64) == checksum(tail512)
}
