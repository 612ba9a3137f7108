//! The closed set of formats imgpipe can name.

use std::fmt;
use std::str::FromStr;

/// A disk-image (or wrapper) format, named as Glance names it where Glance has a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Format {
    /// A raw disk image (including a partitioned raw disk with an MBR or GPT).
    Raw,
    /// QEMU copy-on-write v2 or v3.
    Qcow2,
    /// QEMU enhanced disk (always rejected).
    Qed,
    /// VMware sparse disk (monolithicSparse or streamOptimized).
    Vmdk,
    /// Microsoft Virtual PC / Hyper-V VHD (dynamic or fixed).
    Vhd,
    /// Microsoft Hyper-V VHDX.
    Vhdx,
    /// VirtualBox disk image.
    Vdi,
    /// ISO 9660 / UDF optical image.
    Iso,
    /// LUKS (v1 or v2) encrypted volume.
    Luks,
    /// QEMU copy-on-write v1 (never accepted as raw).
    Qcow1,
    /// Parallels disk image.
    Parallels,
    /// Bochs disk image.
    Bochs,
    /// cloop compressed loopback image.
    Cloop,
    /// Apple disk image.
    Dmg,
    /// gzip-compressed stream.
    Gzip,
    /// xz-compressed stream.
    Xz,
    /// zstd-compressed stream.
    Zstd,
}

impl Format {
    /// Every format, in a stable order.
    pub const ALL: [Format; 17] = [
        Format::Raw,
        Format::Qcow2,
        Format::Qed,
        Format::Vmdk,
        Format::Vhd,
        Format::Vhdx,
        Format::Vdi,
        Format::Iso,
        Format::Luks,
        Format::Qcow1,
        Format::Parallels,
        Format::Bochs,
        Format::Cloop,
        Format::Dmg,
        Format::Gzip,
        Format::Xz,
        Format::Zstd,
    ];

    /// The name used by Glance's `disk_format` (and by imgpipe for the extra formats).
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Qed => "qed",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
            Format::Iso => "iso",
            Format::Luks => "luks",
            Format::Qcow1 => "qcow1",
            Format::Parallels => "parallels",
            Format::Bochs => "bochs",
            Format::Cloop => "cloop",
            Format::Dmg => "dmg",
            Format::Gzip => "gzip",
            Format::Xz => "xz",
            Format::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A format name that imgpipe does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown disk format {0:?} (known: raw qcow2 vmdk vhd vhdx vdi iso luks qed qcow1 parallels bochs cloop dmg gzip xz zstd)"
)]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Glance's "vhdx" and "vhd" are distinct; "ami"/"ari"/"aki" are raw kernels/ramdisks/images.
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "ami" | "ari" | "aki" | "img" => Ok(Format::Raw),
            "vpc" => Ok(Format::Vhd),
            "qcow" => Ok(Format::Qcow1),
            _ => Format::ALL
                .iter()
                .copied()
                .find(|f| f.name() == lower)
                .ok_or(UnknownFormat(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>(), Ok(f));
        }
        assert_eq!("VPC".parse::<Format>(), Ok(Format::Vhd));
        assert!("floppy".parse::<Format>().is_err());
    }
}
