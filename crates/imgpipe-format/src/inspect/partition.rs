//! MBR and GPT partition tables: not a format of their own (a partitioned disk is raw), but noted
//! in the verdict, and an MBR signature inside another format's header makes it a polyglot.

use crate::Format;

use super::PartitionTable;
use super::probe::{Ctx, Found, Probe, Stop, gate};

/// Probe for an MBR boot signature (`55 AA` at 510), and for a protective MBR + GPT header.
pub(crate) fn probe(ctx: &Ctx<'_>) -> Probe {
    if let Some(p) = gate(ctx, 510, &[0x55, 0xAA]) {
        return p;
    }
    let Ok(mbr) = ctx.get(0, 512) else {
        return Probe::NotThis;
    };
    // A FAT volume boot record carries the same signature (two FATs, fixed-disk media byte).
    if mbr.get(0x10) == Some(&2) && mbr.get(0x15) == Some(&0xF8) {
        return Probe::NotThis;
    }
    let protective = (0..4).any(|i| mbr.get(446 + 16 * i + 4) == Some(&0xEE));
    let mut f = Found::new(Format::Raw);
    f.partition = Some(PartitionTable::Mbr);
    if protective {
        // The GPT header is at LBA 1: 512 for 512-byte sectors, 4096 for 4 KiB sectors.
        for lba1 in [512u64, 4096] {
            match ctx.get(lba1, 8) {
                Ok(b"EFI PART") => {
                    f.partition = Some(PartitionTable::Gpt);
                    break;
                }
                Ok(_) => {}
                Err(Stop::Need(n)) => return Probe::Need(n),
                Err(Stop::Short { .. }) => break,
            }
        }
    }
    Probe::Found(Box::new(f))
}
