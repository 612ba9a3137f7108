//! One VHD size rule: the inspector's virtual size (what `max_virtual_size` is checked against)
//! and the decoder's are the same number, and it is the one `qemu-img info -f vpc` reports, for
//! images made by qemu-img and for the same images with other creator applications patched in
//! (footer checksums recomputed).
#![allow(clippy::unwrap_used)]

#[path = "support/decode.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use imgpipe_format::Format;
use imgpipe_format::inspect::{Inspector, Policy};
use support::*;

/// Not a whole number of CHS cylinders: `current_size` and the CHS product differ.
const SIZE: u64 = 10_489_344;
/// A geometry below `SIZE` (20400 sectors) that is not qemu's maximum.
const CHS: (u16, u8, u8) = (300, 4, 17);

fn qemu_size(p: &Path) -> u64 {
    let out = run(Command::new("qemu-img")
        .args(["info", "-f", "vpc", "--output=json"])
        .arg(p));
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

fn set_checksum(f: &mut [u8]) {
    f[64..68].fill(0);
    let s = !f.iter().fold(0u32, |a, x| a.wrapping_add(u32::from(*x)));
    f[64..68].copy_from_slice(&s.to_be_bytes());
}

/// Patch creator (and geometry) into the footer at the end and, for a dynamic disk, its copy
/// at 0; recompute both checksums.
fn patch(img: &[u8], creator: &[u8; 4], chs: Option<(u16, u8, u8)>) -> Vec<u8> {
    let mut b = img.to_vec();
    let end = b.len() - 512;
    let copies: Vec<usize> = if b.starts_with(b"conectix") {
        vec![0, end]
    } else {
        vec![end]
    };
    for at in copies {
        let f = &mut b[at..at + 512];
        f[28..32].copy_from_slice(creator);
        if let Some((c, h, s)) = chs {
            f[56..58].copy_from_slice(&c.to_be_bytes());
            f[58] = h;
            f[59] = s;
        }
        set_checksum(f);
    }
    b
}

fn inspect(b: &[u8], max: u64) -> imgpipe_format::inspect::Verdict {
    let mut i = Inspector::new(Policy {
        max_virtual_size: max,
        ..Policy::default()
    });
    i.feed(b);
    i.finish()
}

#[test]
fn inspector_decoder_and_qemu_agree_on_vhd_size() {
    if !have_qemu("inspector_decoder_and_qemu_agree_on_vhd_size") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for sub in ["dynamic", "fixed"] {
        for force in ["off", "on"] {
            let p = dir.path().join(format!("{sub}-{force}.vhd"));
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "vpc",
                "-o",
                &format!("subformat={sub},force_size={force}"),
                p.to_str().unwrap(),
                &SIZE.to_string(),
            ]);
            qemu_io("vpc", &p, &["write -P 9 1M 64k".to_string()]);
            let img = std::fs::read(&p).unwrap();
            cases.push((format!("{sub}, force_size={force}, as made"), img.clone()));
            if force == "off" {
                continue;
            }
            // force_size=on writes creator qem2 and the maximum geometry.
            cases.push((format!("{sub}: vpc , max CHS"), patch(&img, b"vpc ", None)));
            for creator in [
                b"wa\0\0", b"win ", b"qem2", b"vpc ", b"vs  ", b"d2v\0", b"d2v ", b"qemu",
                b"tap\0", b"CTXS",
            ] {
                cases.push((
                    format!("{sub}: {:?}, CHS {CHS:?}", String::from_utf8_lossy(creator)),
                    patch(&img, creator, Some(CHS)),
                ));
            }
        }
    }
    for (i, (case, img)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("case{i}.vhd"));
        std::fs::write(&p, img).unwrap();
        let want = qemu_size(&p);
        let v = inspect(img, u64::MAX);
        assert_eq!(v.format, Format::Vhd, "{case}");
        assert!(v.is_safe(), "{case}: {:?}", v.violations);
        assert_eq!(
            v.virtual_size,
            Some(want),
            "{case}: inspector vs qemu-img info"
        );
        // max_virtual_size is checked against that number.
        let tight = inspect(img, want - 512);
        assert!(
            tight
                .violations
                .iter()
                .any(|x| x.check == "policy.virtual_size"),
            "{case}: {:?}",
            tight.violations
        );
        assert!(inspect(img, want).is_safe(), "{case}");
        let data_len = img.len() as u64 - 512;
        match decode(Format::Vhd, img, img.len()) {
            Ok(d) => {
                assert_eq!(d.virtual_size, want, "{case}: decoder vs qemu-img info");
                assert_eq!(sha256(&d.disk), sha256(&qemu_raw(&p, "vpc")), "{case}");
            }
            // A fixed disk whose size is not its data length is refused by the decoder (it
            // streams the data before it sees the footer).
            Err(e) => assert!(
                !img.starts_with(b"conectix")
                    && want != data_len
                    && e.to_string().contains("differs from the"),
                "{case}: {e}"
            ),
        }
    }
}
