//! qcow2 (v2, v3) and its ancestor qcow1 (recognised, never accepted).
//!
//! Facts from qemu `docs/interop/qcow2.txt`: big-endian header, extensions after the header up
//! to the end of the first cluster, terminated by type 0.

use crate::Format;

use super::probe::{Ctx, Deferred, Finding, Found, Probe, Stop, conclude, gate};

const MAGIC: &[u8] = b"QFI\xfb";
/// Incompatible feature bits qemu knows: 0 dirty, 1 corrupt, 2 external data file,
/// 3 compression type, 4 extended L2 entries.
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_ACCEPTED: u64 = INCOMPAT_DIRTY | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
/// Header extension holding the external data file name.
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Full-disk-encryption header pointer (only with crypt_method 2).
const EXT_CRYPTO: u32 = 0x0537_be77;
/// qemu's limits (block/qcow2.h): 32 MiB L1 table, 8 MiB refcount table, 65536 snapshots.
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
const MAX_SNAPSHOTS: u64 = 65536;
/// Smallest on-disk snapshot table entry (fixed part of QCowSnapshotHeader).
const MIN_SNAPSHOT_ENTRY: u64 = 40;
/// At most this many header extensions are walked.
const MAX_EXTENSIONS: usize = 64;

/// Probe for qcow1 (version 1 under the same magic): recognised so it is never taken for raw.
pub(crate) fn probe_qcow1(ctx: &Ctx<'_>) -> Probe {
    if let Some(p) = gate(ctx, 0, MAGIC) {
        return p;
    }
    match ctx.be32(4) {
        Ok(1) => {
            let mut f = Found::new(Format::Qcow1);
            f.virtual_size = ctx.be64(16).ok();
            Probe::Found(Box::new(f))
        }
        Ok(_) => Probe::NotThis,
        Err(Stop::Need(n)) => Probe::Need(n),
        Err(Stop::Short { .. }) => Probe::NotThis,
    }
}

/// Probe for qcow2.
pub(crate) fn probe(ctx: &Ctx<'_>) -> Probe {
    if let Some(p) = gate(ctx, 0, MAGIC) {
        return p;
    }
    match ctx.be32(4) {
        Ok(1) => return Probe::NotThis, // qcow1
        Ok(_) => {}
        Err(Stop::Need(n)) => return Probe::Need(n),
        Err(Stop::Short { .. }) => {}
    }
    let mut f = Found::new(Format::Qcow2);
    let r = body(ctx, &mut f);
    conclude(f, r)
}

fn body(ctx: &Ctx<'_>, f: &mut Found) -> Result<(), Stop> {
    let version = ctx.be32(4)?;
    let backing_offset = ctx.be64(8)?;
    let backing_size = ctx.be32(16)?;
    let cluster_bits = ctx.be32(20)?;
    let size = ctx.be64(24)?;
    let crypt_method = ctx.be32(32)?;
    let l1_size = u64::from(ctx.be32(36)?);
    let l1_offset = ctx.be64(40)?;
    let rt_offset = ctx.be64(48)?;
    let rt_clusters = u64::from(ctx.be32(56)?);
    let nb_snapshots = u64::from(ctx.be32(60)?);
    let snap_offset = ctx.be64(64)?;
    f.virtual_size = Some(size);

    if version != 2 && version != 3 {
        f.findings.push(Finding::unsafe_(
            "qcow2.version",
            format!("qcow2 version is {version}; allowed: 2 or 3"),
        ));
        return Ok(());
    }
    f.subformat = Some(if version == 2 { "v2" } else { "v3" });
    if backing_offset != 0 {
        f.findings.push(Finding::unsafe_(
            "qcow2.backing_file",
            format!(
                "qcow2 names a backing file (offset {backing_offset}, {backing_size} bytes); \
                 allowed: none (backing_file_offset 0)"
            ),
        ));
    }
    if crypt_method != 0 {
        f.findings.push(Finding::unsafe_(
            "qcow2.encryption",
            format!("qcow2 crypt_method is {crypt_method}; allowed: 0 (unencrypted)"),
        ));
    }
    if !(9..=21).contains(&cluster_bits) {
        f.findings.push(Finding::malformed(
            "qcow2.cluster_bits",
            format!("qcow2 cluster_bits is {cluster_bits}; allowed: 9..=21"),
        ));
        return Ok(());
    }
    let cluster = 1u64 << cluster_bits;

    let (incompat, header_len) = if version == 3 {
        let incompat = ctx.be64(72)?;
        let refcount_order = ctx.be32(96)?;
        let header_len = ctx.be32(100)?;
        if refcount_order > 6 {
            f.findings.push(Finding::malformed(
                "qcow2.refcount_order",
                format!("qcow2 refcount_order is {refcount_order}; allowed: 0..=6"),
            ));
        }
        if header_len < 104 || u64::from(header_len) > cluster || header_len % 8 != 0 {
            f.findings.push(Finding::malformed(
                "qcow2.header_length",
                format!(
                    "qcow2 header_length is {header_len}; allowed: a multiple of 8 in 104..={cluster}"
                ),
            ));
            return Ok(());
        }
        (incompat, u64::from(header_len))
    } else {
        (0, 72)
    };
    if incompat & INCOMPAT_CORRUPT != 0 {
        f.findings.push(Finding::unsafe_(
            "qcow2.corrupt",
            format!("qcow2 incompatible_features {incompat:#x} has the corrupt bit (1) set; allowed: clear"),
        ));
    }
    if incompat & INCOMPAT_DATA_FILE != 0 {
        f.findings.push(Finding::unsafe_(
            "qcow2.data_file",
            format!(
                "qcow2 incompatible_features {incompat:#x} has the external data file bit (2) set; \
                 allowed: clear"
            ),
        ));
    }
    let unknown = incompat & !(INCOMPAT_ACCEPTED | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE);
    if unknown != 0 {
        f.findings.push(Finding::unsafe_(
            "qcow2.unknown_incompatible",
            format!(
                "qcow2 incompatible_features {incompat:#x} has unknown bits {unknown:#x}; \
                 allowed: dirty (0), compression type (3), extended L2 (4)"
            ),
        ));
    }
    let extended_l2 = incompat & INCOMPAT_EXTL2 != 0;

    // Geometry: the L1 table must be able to map the virtual size.
    let l2_entries = cluster / if extended_l2 { 16 } else { 8 };
    let per_l1 = l2_entries.saturating_mul(cluster);
    let needed_l1 = size.div_ceil(per_l1);
    if l1_size.saturating_mul(8) > MAX_L1_BYTES {
        f.findings.push(Finding::malformed(
            "qcow2.l1_table",
            format!(
                "qcow2 l1_size is {l1_size} entries ({} bytes); allowed: at most {MAX_L1_BYTES} bytes",
                l1_size.saturating_mul(8)
            ),
        ));
    } else if l1_size < needed_l1 {
        f.findings.push(Finding::malformed(
            "qcow2.l1_table",
            format!(
                "qcow2 l1_size is {l1_size} but virtual size {size} needs at least {needed_l1} entries"
            ),
        ));
    }
    let rt_bytes = rt_clusters.saturating_mul(cluster);
    if rt_bytes > MAX_REFTABLE_BYTES {
        f.findings.push(Finding::malformed(
            "qcow2.refcount_table",
            format!(
                "qcow2 refcount table is {rt_clusters} clusters ({rt_bytes} bytes); allowed: at most \
                 {MAX_REFTABLE_BYTES} bytes"
            ),
        ));
    }
    if nb_snapshots > MAX_SNAPSHOTS {
        f.findings.push(Finding::malformed(
            "qcow2.snapshot_table",
            format!("qcow2 has {nb_snapshots} snapshots; allowed: at most {MAX_SNAPSHOTS}"),
        ));
    }

    // Table placement: aligned, non-overlapping, and (deferred) within the file.
    let mut tables: Vec<(&'static str, &'static str, u64, u64)> = Vec::new();
    tables.push(("header cluster", "qcow2.header", 0, cluster));
    if l1_size > 0 {
        tables.push((
            "L1 table",
            "qcow2.l1_table",
            l1_offset,
            l1_size.saturating_mul(8),
        ));
    }
    tables.push((
        "refcount table",
        "qcow2.refcount_table",
        rt_offset,
        rt_bytes,
    ));
    if nb_snapshots > 0 {
        tables.push((
            "snapshot table",
            "qcow2.snapshot_table",
            snap_offset,
            nb_snapshots.saturating_mul(MIN_SNAPSHOT_ENTRY),
        ));
    }
    for &(name, check, off, len) in &tables[1..] {
        if off % cluster != 0 || off == 0 {
            f.findings.push(Finding::malformed(
                check,
                format!(
                    "qcow2 {name} offset is {off}; allowed: a non-zero multiple of the cluster size {cluster}"
                ),
            ));
        }
        if off.checked_add(len).is_none() {
            f.findings.push(Finding::malformed(
                check,
                format!("qcow2 {name} at offset {off} with {len} bytes overflows 64 bits"),
            ));
        }
    }
    for (i, a) in tables.iter().enumerate() {
        for b in tables.iter().skip(i + 1) {
            if a.3 > 0 && b.3 > 0 && overlap(a.2, a.3, b.2, b.3) {
                f.findings.push(Finding::malformed(
                    b.1,
                    format!(
                        "qcow2 {} [{}, +{}) overlaps the {} [{}, +{})",
                        b.0, b.2, b.3, a.0, a.2, a.3
                    ),
                ));
            }
        }
    }
    f.deferred.push(Deferred::WithinFile(tables));

    // Header extensions, within the first cluster.
    let mut off = header_len;
    for _ in 0..MAX_EXTENSIONS {
        if off.saturating_add(8) > cluster {
            break;
        }
        let ty = ctx.be32(off)?;
        let len = u64::from(ctx.be32(off + 4)?);
        if ty == 0 {
            break;
        }
        let data_end = off + 8 + len;
        if data_end > cluster {
            f.findings.push(Finding::malformed(
                "qcow2.header_extension",
                format!(
                    "qcow2 header extension {ty:#010x} at {off} with {len} bytes runs past the \
                     first cluster ({cluster} bytes)"
                ),
            ));
            break;
        }
        match ty {
            EXT_DATA_FILE => {
                let name = ctx.get(off + 8, len.min(1024))?;
                f.findings.push(Finding::unsafe_(
                    "qcow2.data_file",
                    format!(
                        "qcow2 has an external data file header extension naming {:?}; allowed: none",
                        String::from_utf8_lossy(name)
                    ),
                ));
            }
            EXT_CRYPTO if crypt_method == 0 => {
                f.findings.push(Finding::malformed(
                    "qcow2.header_extension",
                    "qcow2 has a full-disk-encryption header extension but crypt_method 0",
                ));
            }
            _ => {}
        }
        off = data_end.div_ceil(8) * 8;
    }
    Ok(())
}

fn overlap(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    let ae = a.saturating_add(alen);
    let be = b.saturating_add(blen);
    a < be && b < ae
}
