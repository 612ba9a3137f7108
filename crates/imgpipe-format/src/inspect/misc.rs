//! Formats recognised only so they are never passed off as raw: QED, Parallels, Bochs, cloop,
//! gzip, xz, zstd (by their leading magic) and DMG (by its trailing `koly` block).

use crate::Format;

use super::probe::{Ctx, Found, Probe, gate, le64_at};

/// `(format, offset, magic)` for the prefix-recognised formats.
const MAGICS: [(Format, u64, &[u8]); 8] = [
    (Format::Qed, 0, b"QED\0"),
    (Format::Parallels, 0, b"WithoutFreeSpace"),
    (Format::Parallels, 0, b"WithouFreSpacExt"),
    (Format::Bochs, 0, b"Bochs Virtual HD Image\0"),
    (Format::Cloop, 0, b"#!/bin/sh\n#V2.0 Format\n"),
    (Format::Gzip, 0, b"\x1f\x8b\x08"),
    (Format::Xz, 0, b"\xfd7zXZ\0"),
    (Format::Zstd, 0, b"\x28\xb5\x2f\xfd"),
];

/// One probe per entry of [`MAGICS`].
pub(crate) fn probe(ctx: &Ctx<'_>, index: usize) -> Probe {
    let Some(&(format, off, magic)) = MAGICS.get(index) else {
        return Probe::NotThis;
    };
    if let Some(p) = gate(ctx, off, magic) {
        return p;
    }
    let mut f = Found::new(format);
    if format == Format::Qed {
        // QED: image_size at 48 (little-endian), reported for the record.
        f.virtual_size = ctx.get(0, 56).ok().map(|h| le64_at(h, 48));
    }
    Probe::Found(Box::new(f))
}

/// How many prefix probes [`probe`] offers.
pub(crate) const COUNT: usize = MAGICS.len();

/// Whether the last 512 bytes are a DMG `koly` trailer.
pub(crate) fn tail_is_dmg(tail512: &[u8]) -> bool {
    tail512.len() == 512 && tail512.get(..4) == Some(b"koly")
}
