//! VHDX: file identifier at 0, two headers at 64 KiB and 128 KiB, region table at 192 KiB, and a
//! metadata region (wherever the region table says; qemu puts it at 3 MiB) holding the virtual
//! disk size, file parameters and, for differencing disks, a parent locator.

use crate::Format;

use super::probe::{Ctx, Finding, Found, Probe, Stop, conclude, gate, le16_at, le32_at, le64_at};

const MAGIC: &[u8] = b"vhdxfile";
const HEADER_OFFSETS: [u64; 2] = [64 * 1024, 128 * 1024];
const REGION_TABLE: u64 = 192 * 1024;
const REGION_TABLE_LEN: u64 = 64 * 1024;
const MAX_ENTRIES: u32 = 2047;
const METADATA_TABLE_LEN: u64 = 64 * 1024;

/// A GUID in its on-disk (mixed-endian) byte order.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

const BAT_REGION: [u8; 16] = guid(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
const METADATA_REGION: [u8; 16] = guid(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
const FILE_PARAMETERS: [u8; 16] = guid(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
const VIRTUAL_DISK_SIZE: [u8; 16] = guid(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
const PARENT_LOCATOR: [u8; 16] = guid(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
const LOGICAL_SECTOR: [u8; 16] = guid(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
const PHYSICAL_SECTOR: [u8; 16] = guid(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
const PAGE83: [u8; 16] = guid(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);

/// CRC-32C (Castagnoli), as VHDX checksums use.
pub(crate) fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for p in parts {
        for &b in *p {
            crc ^= u32::from(b);
            for _ in 0..8 {
                let mask = (crc & 1).wrapping_neg();
                crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
            }
        }
    }
    !crc
}

/// CRC-32C of `buf` with its 4-byte checksum field at `at` taken as zero.
fn crc_skipping(buf: &[u8], at: usize) -> u32 {
    let (a, rest) = buf.split_at(at.min(buf.len()));
    let b = rest.get(4..).unwrap_or(&[]);
    crc32c(&[a, &[0u8; 4], b])
}

/// Probe for VHDX.
pub(crate) fn probe(ctx: &Ctx<'_>) -> Probe {
    if let Some(p) = gate(ctx, 0, MAGIC) {
        return p;
    }
    let mut f = Found::new(Format::Vhdx);
    let r = body(ctx, &mut f);
    conclude(f, r)
}

fn body(ctx: &Ctx<'_>, f: &mut Found) -> Result<(), Stop> {
    // Current header: the valid one with the higher sequence number.
    let mut best: Option<(u64, &[u8])> = None;
    for off in HEADER_OFFSETS {
        let h = ctx.get(off, 4096)?;
        if h.get(..4) != Some(b"head") || le32_at(h, 4) != crc_skipping(h, 4) {
            continue;
        }
        let seq = le64_at(h, 8);
        if best.is_none_or(|(s, _)| seq > s) {
            best = Some((seq, h));
        }
    }
    let Some((_, h)) = best else {
        f.findings.push(Finding::malformed(
            "vhdx.header",
            "VHDX has no header with a valid signature and CRC-32C at 64 KiB or 128 KiB",
        ));
        return Ok(());
    };
    let log_guid = h.get(48..64).unwrap_or(&[]);
    let log_len = le32_at(h, 68);
    let log_off = le64_at(h, 72);
    if log_guid.iter().any(|&b| b != 0) {
        // LogGuid set: the log is non-empty if it holds an entry ("loge", 4 KiB aligned) carrying
        // that GUID; a reader would replay it, writing to the image.
        let log = ctx.get(log_off, u64::from(log_len))?;
        let live = log
            .chunks(4096)
            .any(|e| e.get(..4) == Some(b"loge") && e.get(32..48) == Some(log_guid));
        if live {
            f.findings.push(Finding::unsafe_(
                "vhdx.log",
                format!(
                    "VHDX log at {log_off} ({log_len} bytes) holds entries for the current LogGuid \
                     that a reader would replay; allowed: an empty log"
                ),
            ));
        }
    }
    let version = le16_at(h, 66);
    if version != 1 {
        f.findings.push(Finding::malformed(
            "vhdx.version",
            format!("VHDX header version is {version}; allowed: 1"),
        ));
    }

    // Region table.
    let rt = ctx.get(REGION_TABLE, REGION_TABLE_LEN)?;
    if rt.get(..4) != Some(b"regi") || le32_at(rt, 4) != crc_skipping(rt, 4) {
        f.findings.push(Finding::malformed(
            "vhdx.region_table",
            "VHDX region table at 192 KiB lacks the regi signature or its CRC-32C is wrong",
        ));
        return Ok(());
    }
    let count = le32_at(rt, 8);
    if count > MAX_ENTRIES {
        f.findings.push(Finding::malformed(
            "vhdx.region_table",
            format!("VHDX region table has {count} entries; allowed: at most {MAX_ENTRIES}"),
        ));
        return Ok(());
    }
    let mut meta: Option<(u64, u32)> = None;
    for i in 0..count as usize {
        let e = rt.get(16 + i * 32..16 + i * 32 + 32).unwrap_or(&[]);
        let id = e.get(..16).unwrap_or(&[]);
        let (off, len, req) = (le64_at(e, 16), le32_at(e, 24), le32_at(e, 28));
        if id == METADATA_REGION {
            meta = Some((off, len));
        } else if id != BAT_REGION && req & 1 != 0 {
            f.findings.push(Finding::malformed(
                "vhdx.region_table",
                format!("VHDX has an unknown required region {}", hex(id)),
            ));
        }
    }
    let Some((moff, mlen)) = meta else {
        f.findings.push(Finding::malformed(
            "vhdx.metadata",
            "VHDX region table has no metadata region",
        ));
        return Ok(());
    };
    let mt = ctx.get(moff, METADATA_TABLE_LEN.min(u64::from(mlen)).max(32))?;
    if mt.get(..8) != Some(b"metadata") {
        f.findings.push(Finding::malformed(
            "vhdx.metadata",
            format!("VHDX metadata table at {moff} lacks the metadata signature"),
        ));
        return Ok(());
    }
    let n = le16_at(mt, 10);
    if u32::from(n) > MAX_ENTRIES
        || 32 + u64::from(n) * 32 > u64::from(mlen).min(METADATA_TABLE_LEN)
    {
        f.findings.push(Finding::malformed(
            "vhdx.metadata",
            format!("VHDX metadata table has {n} entries, more than fit in it"),
        ));
        return Ok(());
    }
    let mut size: Option<u64> = None;
    let mut flags: Option<u32> = None;
    for i in 0..usize::from(n) {
        let e = mt.get(32 + i * 32..64 + i * 32).unwrap_or(&[]);
        let id = e.get(..16).unwrap_or(&[]);
        let (ioff, ilen, iflags) = (le32_at(e, 16), le32_at(e, 20), le32_at(e, 24));
        if u64::from(ioff) + u64::from(ilen) > u64::from(mlen) {
            f.findings.push(Finding::malformed(
                "vhdx.metadata",
                format!(
                    "VHDX metadata item {} at {ioff}+{ilen} runs past the metadata region ({mlen} bytes)",
                    hex(id)
                ),
            ));
            continue;
        }
        let at = moff + u64::from(ioff);
        if id == VIRTUAL_DISK_SIZE {
            size = Some(ctx.le64(at)?);
        } else if id == FILE_PARAMETERS {
            flags = Some(ctx.le32(at + 4)?);
        } else if id == PARENT_LOCATOR {
            f.findings.push(Finding::unsafe_(
                "vhdx.parent",
                "VHDX has a parent locator metadata item (differencing disk); allowed: none",
            ));
        } else if id != LOGICAL_SECTOR && id != PHYSICAL_SECTOR && id != PAGE83 && iflags & 4 != 0 {
            f.findings.push(Finding::malformed(
                "vhdx.metadata",
                format!("VHDX has an unknown required metadata item {}", hex(id)),
            ));
        }
    }
    if let Some(fl) = flags
        && fl & 2 != 0
    {
        f.findings.push(Finding::unsafe_(
            "vhdx.parent",
            format!(
                "VHDX file parameters flags {fl:#x} have HasParent (bit 1) set; allowed: clear"
            ),
        ));
    }
    match size {
        Some(s) => f.virtual_size = Some(s),
        None => f.findings.push(Finding::malformed(
            "vhdx.metadata",
            "VHDX metadata has no virtual disk size item",
        )),
    }
    if flags.is_none() {
        f.findings.push(Finding::malformed(
            "vhdx.metadata",
            "VHDX metadata has no file parameters item",
        ));
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
