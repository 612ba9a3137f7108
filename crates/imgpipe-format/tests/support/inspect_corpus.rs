//! Test corpus for the inspector: real images made by qemu-img / qemu-io / genisoimage / xorriso /
//! sgdisk / sfdisk at test time, plus crafted unsafe variants (qemu-img options and small byte
//! patches). Shared by `inspect_corpus.rs` and `inspect_oslo.rs`.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use imgpipe_format::Format;
use imgpipe_format::inspect::{Inspector, PartitionTable, Policy, Verdict};

/// What the inspector must say about a case.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Safe, with this format/subformat/partition table; the virtual size must equal
    /// `qemu-img info -f <qemu_fmt>`.
    Accept {
        format: Format,
        subformat: Option<&'static str>,
        partition: Option<PartitionTable>,
    },
    /// Rejected with (at least) this check id, reporting this format.
    Reject { format: Format, check: &'static str },
}

/// One image of the corpus.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub path: PathBuf,
    /// The `-f` to give `qemu-img info` for the virtual size (accepted cases).
    pub qemu_fmt: Option<&'static str>,
    pub expect: Expect,
    /// Key of the documented deliberate difference from oslo.utils (docs/security.md), if any.
    pub oslo_diff: Option<&'static str>,
}

/// Whether external oracles are required (CI) or may be skipped.
pub fn require_oracles() -> bool {
    std::env::var("IMGPIPE_REQUIRE_ORACLES").is_ok_and(|v| v == "1")
}

/// `true` when `tool` runs; otherwise panics under IMGPIPE_REQUIRE_ORACLES=1, or prints a skip line.
pub fn have_tool(tool: &str, arg: &str) -> bool {
    let ok = Command::new(tool)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success() || !o.stdout.is_empty() || !o.stderr.is_empty());
    if !ok {
        if require_oracles() {
            panic!("{tool} is required (IMGPIPE_REQUIRE_ORACLES=1) but not runnable");
        }
        eprintln!("SKIP: {tool} not available");
    }
    ok
}

pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qimg(args: &[&str]) {
    run("qemu-img", args);
}

fn qio(fmt: &str, path: &Path, cmd: &str) {
    run("qemu-io", &["-f", fmt, "-c", cmd, path.to_str().unwrap()]);
}

/// `qemu-img info --output=json -f <fmt>` top-level virtual size.
pub fn qemu_virtual_size(fmt: &str, path: &Path) -> u64 {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", fmt, path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

pub fn patch(path: &Path, off: usize, bytes: &[u8]) {
    let mut d = std::fs::read(path).unwrap();
    if d.len() < off + bytes.len() {
        d.resize(off + bytes.len(), 0);
    }
    d[off..off + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, d).unwrap();
}

fn copy(dir: &Path, from: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::copy(from, &p).unwrap();
    p
}

/// Feed a whole file in chunks of `chunk` bytes.
pub fn inspect_file(path: &Path, policy: Policy, chunk: usize) -> (Option<Verdict>, Verdict) {
    let data = std::fs::read(path).unwrap();
    inspect_bytes(&data, policy, chunk)
}

pub fn inspect_bytes(data: &[u8], policy: Policy, chunk: usize) -> (Option<Verdict>, Verdict) {
    let mut i = Inspector::new(policy);
    for c in data.chunks(chunk.max(1)) {
        i.feed(c);
    }
    (i.provisional().cloned(), i.finish())
}

fn vmdk_rewrite_descriptor(path: &Path, f: impl Fn(&str) -> String) {
    let mut d = std::fs::read(path).unwrap();
    let size = u64::from_le_bytes(d[36..44].try_into().unwrap()) as usize * 512;
    let area = &mut d[512..512 + size];
    let end = area.iter().position(|&b| b == 0).unwrap_or(size);
    let text = std::str::from_utf8(&area[..end]).unwrap().to_string();
    let new = f(&text);
    assert!(new.len() < size, "descriptor too long");
    area.fill(0);
    area[..new.len()].copy_from_slice(new.as_bytes());
    std::fs::write(path, d).unwrap();
}

fn vhd_fix_checksum(footer: &mut [u8]) {
    footer[64..68].fill(0);
    let sum: u32 = footer
        .iter()
        .fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
    footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
}

/// CRC-32C for VHDX test patches.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn vhdx_file_parameters_offset(d: &[u8]) -> usize {
    // Region table at 192 KiB → metadata region → file parameters item.
    let rt = &d[196608..];
    let n = u32::from_le_bytes(rt[8..12].try_into().unwrap()) as usize;
    let meta_guid = [
        0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88,
        0x6e,
    ];
    let fp_guid = [
        0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7,
        0x6b,
    ];
    for i in 0..n {
        let e = &rt[16 + i * 32..48 + i * 32];
        if e[..16] == meta_guid {
            let moff = u64::from_le_bytes(e[16..24].try_into().unwrap()) as usize;
            let mt = &d[moff..];
            let cnt = u16::from_le_bytes(mt[10..12].try_into().unwrap()) as usize;
            for j in 0..cnt {
                let me = &mt[32 + j * 32..64 + j * 32];
                if me[..16] == fp_guid {
                    return moff + u32::from_le_bytes(me[16..20].try_into().unwrap()) as usize;
                }
            }
        }
    }
    panic!("no file parameters item");
}

fn accept(
    name: &str,
    path: PathBuf,
    qemu_fmt: &'static str,
    format: Format,
    subformat: Option<&'static str>,
) -> Case {
    Case {
        name: name.into(),
        path,
        qemu_fmt: Some(qemu_fmt),
        expect: Expect::Accept {
            format,
            subformat,
            partition: None,
        },
        oslo_diff: None,
    }
}

fn reject(name: &str, path: PathBuf, format: Format, check: &'static str) -> Case {
    Case {
        name: name.into(),
        path,
        qemu_fmt: None,
        expect: Expect::Reject { format, check },
        oslo_diff: None,
    }
}

trait Diff {
    fn oslo(self, key: &'static str) -> Self;
}
impl Diff for Case {
    fn oslo(mut self, key: &'static str) -> Self {
        self.oslo_diff = Some(key);
        self
    }
}

/// Build the corpus in `dir`. Returns `None` (after a skip line) when qemu-img is missing.
pub fn build(dir: &Path) -> Option<Vec<Case>> {
    if !have_tool("qemu-img", "--version") || !have_tool("qemu-io", "--version") {
        return None;
    }
    let p = |n: &str| dir.join(n);
    let s = |x: &Path| x.to_str().unwrap().to_string();
    let mut cases = Vec::new();

    // ---------- qcow2 ----------
    let q = |name: &str, opts: &str, size: &str| -> PathBuf {
        let path = p(name);
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        let ps = s(&path);
        args.extend([ps.as_str(), size]);
        qimg(&args);
        path
    };
    let v2 = q("v2.qcow2", "compat=0.10", "8M");
    qio("qcow2", &v2, "write -P 0x11 1M 64k");
    cases.push(accept(
        "qcow2 v2",
        v2.clone(),
        "qcow2",
        Format::Qcow2,
        Some("v2"),
    ));
    let v3 = q("v3.qcow2", "compat=1.1", "8M");
    cases.push(accept(
        "qcow2 v3 empty",
        v3.clone(),
        "qcow2",
        Format::Qcow2,
        Some("v3"),
    ));
    let v3d = q("v3-data.qcow2", "", "16M");
    qio("qcow2", &v3d, "write -P 0xab 0 1M");
    qio("qcow2", &v3d, "write -P 0xcd 9M 512k");
    cases.push(accept(
        "qcow2 v3 data",
        v3d.clone(),
        "qcow2",
        Format::Qcow2,
        Some("v3"),
    ));
    for (cs, sz) in [("4k", "4M"), ("16k", "6M"), ("512k", "8M"), ("2M", "12M")] {
        let path = q(&format!("cs{cs}.qcow2"), &format!("cluster_size={cs}"), sz);
        qio("qcow2", &path, "write -P 0x22 0 128k");
        cases.push(accept(
            &format!("qcow2 cluster {cs}"),
            path,
            "qcow2",
            Format::Qcow2,
            Some("v3"),
        ));
    }
    for (name, opts) in [
        ("extl2", "extended_l2=on"),
        ("extl2-2M", "extended_l2=on,cluster_size=2M"),
    ] {
        let path = q(&format!("{name}.qcow2"), opts, "8M");
        qio("qcow2", &path, "write -P 0x33 64k 64k");
        cases.push(
            accept(
                &format!("qcow2 {name}"),
                path,
                "qcow2",
                Format::Qcow2,
                Some("v3"),
            )
            .oslo("oslo-extended-l2"),
        );
    }
    for (name, opts) in [
        ("lazy", "lazy_refcounts=on"),
        ("refbits1", "refcount_bits=1"),
        ("refbits64", "refcount_bits=64"),
        ("prealloc", "preallocation=metadata"),
    ] {
        let path = q(&format!("{name}.qcow2"), opts, "4M");
        cases.push(accept(
            &format!("qcow2 {name}"),
            path,
            "qcow2",
            Format::Qcow2,
            Some("v3"),
        ));
    }
    let odd = q("odd.qcow2", "", "3145728");
    cases.push(accept(
        "qcow2 odd size",
        odd,
        "qcow2",
        Format::Qcow2,
        Some("v3"),
    ));
    let snap = q("snap.qcow2", "", "4M");
    qio("qcow2", &snap, "write -P 0x44 0 64k");
    qimg(&["snapshot", "-q", "-c", "s1", &s(&snap)]);
    cases.push(accept(
        "qcow2 internal snapshot",
        snap,
        "qcow2",
        Format::Qcow2,
        Some("v3"),
    ));
    let zlib = p("zlib.qcow2");
    qimg(&[
        "convert",
        "-q",
        "-c",
        "-f",
        "qcow2",
        "-O",
        "qcow2",
        &s(&v3d),
        &s(&zlib),
    ]);
    cases.push(accept(
        "qcow2 compressed zlib",
        zlib,
        "qcow2",
        Format::Qcow2,
        Some("v3"),
    ));
    let zstd = p("zstd.qcow2");
    qimg(&[
        "convert",
        "-q",
        "-c",
        "-f",
        "qcow2",
        "-O",
        "qcow2",
        "-o",
        "compression_type=zstd",
        &s(&v3d),
        &s(&zstd),
    ]);
    cases.push(accept(
        "qcow2 compressed zstd",
        zstd,
        "qcow2",
        Format::Qcow2,
        Some("v3"),
    ));

    // ---------- vmdk ----------
    let vm = |name: &str, opts: &str| -> PathBuf {
        let path = p(name);
        qimg(&["create", "-q", "-f", "vmdk", "-o", opts, &s(&path), "8M"]);
        path
    };
    let ms = vm("ms.vmdk", "subformat=monolithicSparse");
    cases.push(accept(
        "vmdk monolithicSparse",
        ms.clone(),
        "vmdk",
        Format::Vmdk,
        Some("monolithicSparse"),
    ));
    let msd = vm(
        "ms-data.vmdk",
        "subformat=monolithicSparse,adapter_type=lsilogic",
    );
    qio("vmdk", &msd, "write -P 0x55 2M 256k");
    cases.push(accept(
        "vmdk monolithicSparse data",
        msd,
        "vmdk",
        Format::Vmdk,
        Some("monolithicSparse"),
    ));
    let c6 = vm("compat6.vmdk", "compat6=on");
    cases.push(accept(
        "vmdk compat6",
        c6,
        "vmdk",
        Format::Vmdk,
        Some("monolithicSparse"),
    ));
    let so = p("so.vmdk");
    qimg(&[
        "convert",
        "-q",
        "-f",
        "qcow2",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        &s(&v3d),
        &s(&so),
    ]);
    cases.push(accept(
        "vmdk streamOptimized",
        so.clone(),
        "vmdk",
        Format::Vmdk,
        Some("streamOptimized"),
    ));
    // streamOptimized with the grain directory in a footer (as VMware writes it).
    let so_end = p("so-footer.vmdk");
    {
        let mut d = std::fs::read(&so).unwrap();
        let header: Vec<u8> = d[..512].to_vec();
        assert_eq!(
            &d[d.len() - 512..],
            &[0u8; 512][..],
            "qemu ends with an EOS marker"
        );
        d.truncate(d.len() - 512);
        let mut marker = vec![0u8; 512];
        marker[0..8].copy_from_slice(&1u64.to_le_bytes());
        marker[12..16].copy_from_slice(&3u32.to_le_bytes());
        d.extend_from_slice(&marker);
        d.extend_from_slice(&header);
        d.extend_from_slice(&[0u8; 512]);
        d[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&so_end, d).unwrap();
    }
    cases.push(accept(
        "vmdk streamOptimized footer",
        so_end.clone(),
        "vmdk",
        Format::Vmdk,
        Some("streamOptimized"),
    ));

    // ---------- vpc ----------
    let vpc = |name: &str, opts: &str, size: &str| -> PathBuf {
        let path = p(name);
        qimg(&["create", "-q", "-f", "vpc", "-o", opts, &s(&path), size]);
        path
    };
    let vd = vpc("dyn.vhd", "subformat=dynamic", "10M");
    cases.push(accept(
        "vhd dynamic",
        vd.clone(),
        "vpc",
        Format::Vhd,
        Some("dynamic"),
    ));
    let vdd = vpc("dyn-data.vhd", "subformat=dynamic", "20M");
    qio("vpc", &vdd, "write -P 0x66 4M 1M");
    cases.push(accept(
        "vhd dynamic data",
        vdd,
        "vpc",
        Format::Vhd,
        Some("dynamic"),
    ));
    let vdf = vpc("dyn-force.vhd", "subformat=dynamic,force_size=on", "10M");
    cases.push(accept(
        "vhd dynamic force_size",
        vdf,
        "vpc",
        Format::Vhd,
        Some("dynamic"),
    ));
    let vf = vpc("fixed.vhd", "subformat=fixed", "10M");
    qio("vpc", &vf, "write -P 0x77 0 64k");
    cases.push(
        accept("vhd fixed", vf.clone(), "vpc", Format::Vhd, Some("fixed")).oslo("oslo-fixed-vhd"),
    );
    let vff = vpc("fixed-force.vhd", "subformat=fixed,force_size=on", "5M");
    cases.push(
        accept(
            "vhd fixed force_size",
            vff,
            "vpc",
            Format::Vhd,
            Some("fixed"),
        )
        .oslo("oslo-fixed-vhd"),
    );

    // ---------- vhdx ----------
    let vx = |name: &str, opts: &str, size: &str| -> PathBuf {
        let path = p(name);
        let mut args = vec!["create", "-q", "-f", "vhdx"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        let ps = s(&path);
        args.extend([ps.as_str(), size]);
        qimg(&args);
        path
    };
    let vx1 = vx("a.vhdx", "", "16M");
    cases.push(accept(
        "vhdx dynamic",
        vx1.clone(),
        "vhdx",
        Format::Vhdx,
        None,
    ));
    let vx2 = vx("data.vhdx", "block_size=1M", "24M");
    qio("vhdx", &vx2, "write -P 0x88 3M 1M");
    cases.push(accept("vhdx data", vx2, "vhdx", Format::Vhdx, None));
    let vx3 = vx("fixed.vhdx", "subformat=fixed", "8M");
    cases.push(accept("vhdx fixed", vx3, "vhdx", Format::Vhdx, None));
    let vx4 = vx("log.vhdx", "log_size=2M,block_size=8M", "40M");
    cases.push(accept("vhdx log_size", vx4, "vhdx", Format::Vhdx, None));

    // ---------- vdi ----------
    let vdi = p("d.vdi");
    qimg(&["create", "-q", "-f", "vdi", &s(&vdi), "10M"]);
    qio("vdi", &vdi, "write -P 0x99 1M 1M");
    cases.push(accept(
        "vdi dynamic",
        vdi.clone(),
        "vdi",
        Format::Vdi,
        Some("dynamic"),
    ));
    let vdis = p("s.vdi");
    qimg(&[
        "create",
        "-q",
        "-f",
        "vdi",
        "-o",
        "static=on",
        &s(&vdis),
        "4M",
    ]);
    cases.push(accept(
        "vdi static",
        vdis,
        "vdi",
        Format::Vdi,
        Some("fixed"),
    ));

    // ---------- luks ----------
    for (name, opts) in [
        ("a.luks", "key-secret=s0,iter-time=10"),
        (
            "b.luks",
            "key-secret=s0,iter-time=10,cipher-alg=aes-128,hash-alg=sha1",
        ),
    ] {
        let path = p(name);
        qimg(&[
            "create",
            "-q",
            "-f",
            "luks",
            "--object",
            "secret,id=s0,data=pw",
            "-o",
            opts,
            &s(&path),
            "4M",
        ]);
        cases.push(accept(
            &format!("luks1 {name}"),
            path,
            "luks",
            Format::Luks,
            Some("luks1"),
        ));
    }

    // ---------- raw, mbr, gpt ----------
    let raw0 = p("zero.raw");
    std::fs::write(&raw0, vec![0u8; 3 << 20]).unwrap();
    cases.push(accept("raw zeros", raw0.clone(), "raw", Format::Raw, None));
    let rawr = p("random.raw");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let rnd: Vec<u8> = (0..(1 << 20) + 4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(&rawr, &rnd).unwrap();
    cases.push(accept("raw pseudo-random", rawr, "raw", Format::Raw, None));
    let rawodd = p("odd.raw");
    std::fs::write(&rawodd, vec![0x42u8; 100_000]).unwrap();
    cases.push(accept(
        "raw odd length",
        rawodd.clone(),
        "raw",
        Format::Raw,
        None,
    ));
    let boot = p("bootsector.raw");
    {
        let mut d = vec![0u8; 1 << 20];
        d[0] = 0xEB; // a jump, as boot code starts
        d[510] = 0x55;
        d[511] = 0xAA;
        std::fs::write(&boot, d).unwrap();
    }
    cases.push(
        Case {
            expect: Expect::Accept {
                format: Format::Raw,
                subformat: None,
                partition: Some(PartitionTable::Mbr),
            },
            ..accept(
                "raw boot sector without partitions",
                boot,
                "raw",
                Format::Raw,
                None,
            )
        }
        .oslo("oslo-mbr-content"),
    );
    if have_tool("sfdisk", "--version") {
        let mbr = p("mbr.raw");
        std::fs::write(&mbr, vec![0u8; 8 << 20]).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf 'label: dos\\n,4M,83\\n,,83\\n' | sfdisk -q {}",
                s(&mbr)
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cases.push(Case {
            expect: Expect::Accept {
                format: Format::Raw,
                subformat: None,
                partition: Some(PartitionTable::Mbr),
            },
            ..accept("mbr disk", mbr, "raw", Format::Raw, None)
        });
    }
    if have_tool("sgdisk", "--version") {
        let gpt = p("gpt.raw");
        std::fs::write(&gpt, vec![0u8; 8 << 20]).unwrap();
        run(
            "sgdisk",
            &["-n", "1:2048:+2M", "-t", "1:ef00", "-n", "2:0:0", &s(&gpt)],
        );
        cases.push(Case {
            expect: Expect::Accept {
                format: Format::Raw,
                subformat: None,
                partition: Some(PartitionTable::Gpt),
            },
            ..accept("gpt disk", gpt, "raw", Format::Raw, None)
        });
    }

    // ---------- iso ----------
    let tree = dir.join("isotree");
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    std::fs::write(tree.join("hello.txt"), b"hello from imgpipe\n").unwrap();
    std::fs::write(tree.join("boot/blob.bin"), vec![0xA5u8; 200_000]).unwrap();
    let efi = dir.join("efi.img");
    std::fs::write(&efi, vec![0u8; 1 << 20]).unwrap();
    let mut iso_plain = None;
    if have_tool("genisoimage", "-version") {
        let iso = p("g.iso");
        run(
            "genisoimage",
            &["-quiet", "-R", "-J", "-o", &s(&iso), &s(&tree)],
        );
        cases.push(accept(
            "iso genisoimage",
            iso.clone(),
            "raw",
            Format::Iso,
            Some("iso9660"),
        ));
        iso_plain = Some(iso);
        let udf = p("udf.iso");
        run(
            "genisoimage",
            &["-quiet", "-udf", "-R", "-o", &s(&udf), &s(&tree)],
        );
        cases.push(accept(
            "iso genisoimage udf",
            udf,
            "raw",
            Format::Iso,
            Some("iso9660"),
        ));
    }
    if have_tool("xorriso", "-version") {
        let xi = p("x.iso");
        run(
            "xorriso",
            &["-as", "mkisofs", "-quiet", "-R", "-o", &s(&xi), &s(&tree)],
        );
        cases.push(accept(
            "iso xorriso",
            xi,
            "raw",
            Format::Iso,
            Some("iso9660"),
        ));
        let hy = p("hybrid.iso");
        run(
            "xorriso",
            &[
                "-as",
                "mkisofs",
                "-quiet",
                "-R",
                "-append_partition",
                "2",
                "0xef",
                &s(&efi),
                "-appended_part_as_gpt",
                "-o",
                &s(&hy),
                &s(&tree),
            ],
        );
        cases.push(Case {
            expect: Expect::Accept {
                format: Format::Iso,
                subformat: Some("iso9660"),
                partition: Some(PartitionTable::Gpt),
            },
            ..accept("iso hybrid gpt", hy, "raw", Format::Iso, Some("iso9660"))
        });
        let hm = p("hybrid-mbr.iso");
        run(
            "xorriso",
            &[
                "-as",
                "mkisofs",
                "-quiet",
                "-R",
                "-append_partition",
                "2",
                "0x83",
                &s(&efi),
                "-o",
                &s(&hm),
                &s(&tree),
            ],
        );
        cases.push(Case {
            expect: Expect::Accept {
                format: Format::Iso,
                subformat: Some("iso9660"),
                partition: Some(PartitionTable::Mbr),
            },
            ..accept("iso hybrid mbr", hm, "raw", Format::Iso, Some("iso9660"))
        });
    }

    // ================= crafted, rejected =================
    let back = p("backing.qcow2");
    qimg(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        &s(&v3),
        "-F",
        "qcow2",
        &s(&back),
        "8M",
    ]);
    cases.push(reject(
        "qcow2 backing file",
        back,
        Format::Qcow2,
        "qcow2.backing_file",
    ));
    let back2 = p("backing-v2.qcow2");
    qimg(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "-b",
        &s(&v2),
        "-F",
        "qcow2",
        &s(&back2),
        "8M",
    ]);
    cases.push(reject(
        "qcow2 v2 backing file",
        back2,
        Format::Qcow2,
        "qcow2.backing_file",
    ));
    let df = p("datafile.qcow2");
    qimg(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", s(&p("datafile.raw"))),
        &s(&df),
        "8M",
    ]);
    cases.push(reject(
        "qcow2 external data file",
        df.clone(),
        Format::Qcow2,
        "qcow2.data_file",
    ));
    // Extension only (bit cleared): still refused.
    let dfe = copy(dir, &df, "datafile-ext-only.qcow2");
    {
        let d = std::fs::read(&dfe).unwrap();
        let mut b = d[79];
        b &= !4;
        patch(&dfe, 79, &[b]);
    }
    cases.push(
        reject(
            "qcow2 data file extension only",
            dfe,
            Format::Qcow2,
            "qcow2.data_file",
        )
        .oslo("oslo-data-file-extension"),
    );
    let qpatch = |name: &str, off: usize, bytes: &[u8]| -> PathBuf {
        let path = copy(dir, &v3d, name);
        patch(&path, off, bytes);
        path
    };
    cases.push(
        reject(
            "qcow2 corrupt bit",
            qpatch("corrupt.qcow2", 79, &[2]),
            Format::Qcow2,
            "qcow2.corrupt",
        )
        .oslo("oslo-corrupt-bit"),
    );
    cases.push(reject(
        "qcow2 unknown incompatible bit 5",
        qpatch("unk5.qcow2", 79, &[0x20]),
        Format::Qcow2,
        "qcow2.unknown_incompatible",
    ));
    cases.push(reject(
        "qcow2 unknown incompatible bit 40",
        qpatch("unk40.qcow2", 74, &[1]),
        Format::Qcow2,
        "qcow2.unknown_incompatible",
    ));
    cases.push(reject(
        "qcow2 version 4",
        qpatch("ver4.qcow2", 4, &4u32.to_be_bytes()),
        Format::Qcow2,
        "qcow2.version",
    ));
    cases.push(
        reject(
            "qcow2 cluster_bits 22",
            qpatch("cb22.qcow2", 20, &22u32.to_be_bytes()),
            Format::Qcow2,
            "qcow2.cluster_bits",
        )
        .oslo("oslo-structure"),
    );
    cases.push(
        reject(
            "qcow2 cluster_bits 8",
            qpatch("cb8.qcow2", 20, &8u32.to_be_bytes()),
            Format::Qcow2,
            "qcow2.cluster_bits",
        )
        .oslo("oslo-structure"),
    );
    cases.push(
        reject(
            "qcow2 crypt_method aes",
            qpatch("aes.qcow2", 32, &1u32.to_be_bytes()),
            Format::Qcow2,
            "qcow2.encryption",
        )
        .oslo("oslo-encryption"),
    );
    let enc = p("enc.qcow2");
    qimg(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=s0,data=pw",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
        &s(&enc),
        "4M",
    ]);
    cases.push(
        reject(
            "qcow2 luks encryption",
            enc,
            Format::Qcow2,
            "qcow2.encryption",
        )
        .oslo("oslo-encryption"),
    );
    cases.push(
        reject(
            "qcow2 L1 beyond file",
            qpatch("l1far.qcow2", 40, &(1u64 << 40).to_be_bytes()),
            Format::Qcow2,
            "qcow2.l1_table",
        )
        .oslo("oslo-structure"),
    );
    {
        let d = std::fs::read(&v3d).unwrap();
        let l1 = d[40..48].to_vec();
        cases.push(
            reject(
                "qcow2 refcount table overlaps L1",
                qpatch("overlap.qcow2", 48, &l1),
                Format::Qcow2,
                "qcow2.refcount_table",
            )
            .oslo("oslo-structure"),
        );
    }
    let snapfar = qpatch("snapfar.qcow2", 60, &1u32.to_be_bytes());
    patch(&snapfar, 64, &(1u64 << 40).to_be_bytes());
    cases.push(
        reject(
            "qcow2 snapshot table beyond file",
            snapfar,
            Format::Qcow2,
            "qcow2.snapshot_table",
        )
        .oslo("oslo-structure"),
    );
    let huge = p("huge.qcow2");
    qimg(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=2M",
        &s(&huge),
        "100T",
    ]);
    cases.push(
        reject(
            "qcow2 virtual size above cap",
            huge,
            Format::Qcow2,
            "policy.virtual_size",
        )
        .oslo("oslo-absurd-size"),
    );
    cases.push(
        reject(
            "qcow2 absurd virtual size",
            qpatch("absurd.qcow2", 24, &(1u64 << 62).to_be_bytes()),
            Format::Qcow2,
            "policy.virtual_size",
        )
        .oslo("oslo-absurd-size"),
    );
    cases.push(reject(
        "qcow2 + MBR signature",
        qpatch("mbr-poly.qcow2", 510, &[0x55, 0xAA]),
        Format::Qcow2,
        "polyglot",
    ));
    if let Some(iso) = &iso_plain {
        let poly = copy(dir, iso, "qcow2-in-iso.iso");
        let hdr = std::fs::read(&v3).unwrap()[..512].to_vec();
        patch(&poly, 0, &hdr);
        cases.push(reject(
            "qcow2 header in ISO system area",
            poly,
            Format::Qcow2,
            "polyglot",
        ));
    }

    let vpatch = |name: &str, f: &dyn Fn(&str) -> String| -> PathBuf {
        let path = copy(dir, &ms, name);
        vmdk_rewrite_descriptor(&path, f);
        path
    };
    cases.push(reject(
        "vmdk createType twoGbMaxExtentSparse",
        vpatch("ct.vmdk", &|t| {
            t.replace("monolithicSparse", "twoGbMaxExtentSparse")
        }),
        Format::Vmdk,
        "vmdk.create_type",
    ));
    cases.push(reject(
        "vmdk FLAT extent to /etc/passwd (CVE-2022-47951)",
        vpatch("flat.vmdk", &|t| {
            let start = t.find("RW ").unwrap();
            let end = start + t[start..].find('\n').unwrap();
            format!(
                "{}RW 16384 FLAT \"/etc/passwd\" 0{}",
                &t[..start],
                &t[end..]
            )
        }),
        Format::Vmdk,
        "vmdk.extent_type",
    ));
    cases.push(
        reject(
            "vmdk FLAT extent with a bare name",
            vpatch("flat-bare.vmdk", &|t| {
                let start = t.find("RW ").unwrap();
                let end = start + t[start..].find('\n').unwrap();
                format!(
                    "{}RW 16384 FLAT \"disk-flat.vmdk\" 0{}",
                    &t[..start],
                    &t[end..]
                )
            }),
            Format::Vmdk,
            "vmdk.extent_type",
        )
        .oslo("oslo-vmdk-extent-type"),
    );
    cases.push(
        reject(
            "vmdk second extent",
            vpatch("two.vmdk", &|t| {
                t.replace(
                    "# The Disk Data Base",
                    "RW 16 SPARSE \"other.vmdk\"\n# The Disk Data Base",
                )
            }),
            Format::Vmdk,
            "vmdk.extents",
        )
        .oslo("oslo-vmdk-extent-type"),
    );
    cases.push(reject(
        "vmdk relative path extent",
        vpatch("dotdot.vmdk", &|t| {
            let a = t.find("SPARSE \"").unwrap() + 8;
            let b = a + t[a..].find('"').unwrap();
            format!("{}../../x.vmdk{}", &t[..a], &t[b..])
        }),
        Format::Vmdk,
        "vmdk.extent_path",
    ));
    cases.push(
        reject(
            "vmdk parentCID",
            vpatch("pcid.vmdk", &|t| {
                t.replace("parentCID=ffffffff", "parentCID=12345678")
            }),
            Format::Vmdk,
            "vmdk.parent_cid",
        )
        .oslo("oslo-vmdk-parent"),
    );
    cases.push(
        reject(
            "vmdk parentFileNameHint",
            vpatch("phint.vmdk", &|t| {
                t.replace(
                    "parentCID=ffffffff",
                    "parentCID=ffffffff\nparentFileNameHint=\"base.vmdk\"",
                )
            }),
            Format::Vmdk,
            "vmdk.parent_hint",
        )
        .oslo("oslo-vmdk-parent"),
    );
    let dr = copy(dir, &ms, "descoff.vmdk");
    patch(&dr, 28, &2u64.to_le_bytes());
    cases.push(reject(
        "vmdk descriptor offset",
        dr,
        Format::Vmdk,
        "vmdk.descriptor_range",
    ));
    let ds = copy(dir, &ms, "descsize.vmdk");
    patch(&ds, 36, &100_000u64.to_le_bytes());
    cases.push(reject(
        "vmdk descriptor size",
        ds,
        Format::Vmdk,
        "vmdk.descriptor_range",
    ));
    let cz = copy(dir, &ms, "cap0.vmdk");
    patch(&cz, 12, &0u64.to_le_bytes());
    cases.push(
        reject("vmdk capacity 0", cz, Format::Vmdk, "vmdk.capacity_zero").oslo("oslo-structure"),
    );
    let flat = p("flat-desc.vmdk");
    qimg(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        &s(&flat),
        "1M",
    ]);
    cases.push(reject(
        "vmdk text-only descriptor",
        flat,
        Format::Vmdk,
        "vmdk.text_descriptor",
    ));
    // A text-only descriptor that claims monolithicSparse and names another file's extent.
    let textsparse = p("text-sparse.vmdk");
    std::fs::write(
        &textsparse,
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
         createType=\"monolithicSparse\"\n\n# Extent description\nRW 16384 SPARSE \"other.vmdk\"\n\n\
         ddb.virtualHWVersion = \"4\"\n",
    )
    .unwrap();
    cases.push(
        reject(
            "vmdk text-only monolithicSparse descriptor",
            textsparse,
            Format::Vmdk,
            "vmdk.text_descriptor",
        )
        .oslo("oslo-text-descriptor"),
    );
    let sobad = copy(dir, &so_end, "so-badfooter.vmdk");
    {
        let n = std::fs::metadata(&sobad).unwrap().len() as usize;
        patch(&sobad, n - 1024 + 4, &9u32.to_le_bytes()); // footer version ≠ header version
    }
    cases.push(reject(
        "vmdk streamOptimized footer mismatch",
        sobad,
        Format::Vmdk,
        "vmdk.footer",
    ));
    let sonoeos = copy(dir, &so_end, "so-noeos.vmdk");
    {
        let n = std::fs::metadata(&sonoeos).unwrap().len() as usize;
        patch(&sonoeos, n - 500, &[1]);
    }
    cases.push(reject(
        "vmdk streamOptimized bad EOS marker",
        sonoeos,
        Format::Vmdk,
        "vmdk.footer",
    ));

    let diff = copy(dir, &vd, "diff.vhd");
    {
        let mut d = std::fs::read(&diff).unwrap();
        let n = d.len();
        for off in [0, n - 512] {
            d[off + 60..off + 64].copy_from_slice(&4u32.to_be_bytes());
            vhd_fix_checksum(&mut d[off..off + 512]);
        }
        std::fs::write(&diff, d).unwrap();
    }
    cases.push(reject("vhd differencing", diff, Format::Vhd, "vhd.differencing").oslo("oslo-vhd"));
    let badck = copy(dir, &vd, "badck.vhd");
    patch(&badck, 64, &[0xde, 0xad, 0xbe, 0xef]);
    cases.push(
        reject(
            "vhd bad footer checksum",
            badck,
            Format::Vhd,
            "vhd.checksum",
        )
        .oslo("oslo-vhd"),
    );
    let fbad = copy(dir, &vf, "fixed-badck.vhd");
    {
        let n = std::fs::metadata(&fbad).unwrap().len() as usize;
        patch(&fbad, n - 512 + 64, &[1, 2, 3, 4]);
    }
    cases.push(
        reject("vhd fixed bad checksum", fbad, Format::Vhd, "vhd.checksum").oslo("oslo-fixed-vhd"),
    );

    let hp = copy(dir, &vx1, "hasparent.vhdx");
    {
        let d = std::fs::read(&hp).unwrap();
        let fp = vhdx_file_parameters_offset(&d);
        let flags = u32::from_le_bytes(d[fp + 4..fp + 8].try_into().unwrap()) | 2;
        patch(&hp, fp + 4, &flags.to_le_bytes());
    }
    cases.push(reject("vhdx HasParent", hp, Format::Vhdx, "vhdx.parent").oslo("oslo-vhdx"));
    let lg = copy(dir, &vx1, "nonempty-log.vhdx");
    {
        let mut d = std::fs::read(&lg).unwrap();
        for off in [65536usize, 131072] {
            let h = &mut d[off..off + 4096];
            h[48..64].copy_from_slice(&[0x42; 16]);
            h[4..8].fill(0);
            let c = crc32c(h);
            h[4..8].copy_from_slice(&c.to_le_bytes());
        }
        // One log entry header for that GUID at the log offset.
        let log_off = u64::from_le_bytes(d[65536 + 72..65536 + 80].try_into().unwrap()) as usize;
        d[log_off..log_off + 4].copy_from_slice(b"loge");
        d[log_off + 8..log_off + 12].copy_from_slice(&4096u32.to_le_bytes());
        d[log_off + 32..log_off + 48].copy_from_slice(&[0x42; 16]);
        std::fs::write(&lg, d).unwrap();
    }
    cases.push(reject("vhdx non-empty log", lg, Format::Vhdx, "vhdx.log").oslo("oslo-vhdx"));

    let vdid = copy(dir, &vdi, "diff.vdi");
    patch(&vdid, 0x4c, &4u32.to_le_bytes());
    cases.push(
        reject("vdi differencing type", vdid, Format::Vdi, "vdi.image_type").oslo("oslo-vdi"),
    );

    for (fmt, name, f) in [
        ("qed", "x.qed", Format::Qed),
        ("qcow", "x.qcow", Format::Qcow1),
        ("parallels", "x.parallels", Format::Parallels),
    ] {
        let path = p(name);
        qimg(&["create", "-q", "-f", fmt, &s(&path), "4M"]);
        let key = match f {
            Format::Parallels => Some("oslo-unknown-formats"),
            _ => None,
        };
        let c = reject(&format!("{fmt} unsupported"), path, f, "format.unsupported");
        cases.push(Case {
            oslo_diff: key,
            ..c
        });
    }
    for (tool, ext, f) in [
        ("gzip", "gz", Format::Gzip),
        ("xz", "xz", Format::Xz),
        ("zstd", "zst", Format::Zstd),
    ] {
        if have_tool(tool, "--version") {
            let src = copy(dir, &rawodd, &format!("c.{ext}.src"));
            let out = Command::new(tool).arg("-c").arg(&src).output().unwrap();
            let path = p(&format!("raw.{ext}"));
            std::fs::write(&path, out.stdout).unwrap();
            cases.push(
                reject(&format!("{tool} wrapper"), path, f, "format.unsupported")
                    .oslo("oslo-unknown-formats"),
            );
        }
    }
    Some(cases)
}

/// Every chunk size the invariance test uses (0 = whole).
pub const CHUNKS: [usize; 6] = [1, 7, 512, 4096, 65536, 0];
