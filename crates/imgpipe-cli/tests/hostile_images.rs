//! Hostile images through the real binary: table entries that point into the image's own
//! metadata are rejections (exit 3, the check named in the `--json` report), and nothing is
//! published at the sink path (a pre-existing target is left untouched, no temp file remains).
//! Images are made with qemu-img / qemu-io at test time and patched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn tool_ok(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("IMGPIPE_REQUIRE_ORACLES").as_deref() != Ok("1"),
            "{tool} is required (IMGPIPE_REQUIRE_ORACLES=1)"
        );
        eprintln!("skip: {tool} not available");
    }
    ok
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img create` + one 64 KiB write at 0, read back.
fn image(dir: &Path, fmt: &str, name: &str) -> Vec<u8> {
    let p = dir.join(name);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", fmt])
        .arg(&p)
        .arg("1M"));
    run(Command::new("qemu-io")
        .args(["-f", fmt, "-c", "write -P 7 0 64k"])
        .arg(&p));
    std::fs::read(&p).unwrap()
}

fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[test]
fn table_entries_into_metadata_exit_3_with_check_and_publish_nothing() {
    if !tool_ok("qemu-img") || !tool_ok("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // qcow2: the L2 entry for guest cluster 0 points at the L1 table.
    let mut q = image(d, "qcow2", "q.qcow2");
    let l1 = be64(&q, 40);
    let l2 = (be64(&q, l1 as usize) & 0x00ff_ffff_ffff_fe00) as usize;
    q[l2..l2 + 8].copy_from_slice(&((1u64 << 63) | l1).to_be_bytes());
    // VMDK: grain table entry 0 points at sector 1 (the embedded descriptor).
    let mut v = image(d, "vmdk", "v.vmdk");
    let gt = le32(&v, le64(&v, 56) as usize * 512) as usize * 512;
    v[gt..gt + 4].copy_from_slice(&1u32.to_le_bytes());
    // VHD: BAT entry 0 points at sector 0 (the footer copy).
    let mut h = image(d, "vpc", "h.vhd");
    let bat = be64(&h, be64(&h, 16) as usize + 16) as usize;
    h[bat..bat + 4].copy_from_slice(&0u32.to_be_bytes());

    for (name, fmt, bytes, check) in [
        ("q", "qcow2", q, "qcow2.l2_entry"),
        ("v", "vmdk", v, "vmdk.grain_table"),
        ("h", "vhd", h, "vhd.block_table"),
    ] {
        let img = d.join(format!("{name}.hostile"));
        std::fs::write(&img, &bytes).unwrap();
        for existing in [false, true] {
            let sink = d.join(format!("{name}-{existing}.raw"));
            if existing {
                std::fs::write(&sink, b"previous disk").unwrap();
            }
            let spec = d.join(format!("{name}.toml"));
            std::fs::write(
                &spec,
                format!(
                    "[source]\npath = {:?}\n[inspect]\ndisk_format = \"{fmt}\"\n[sink]\npath = {:?}\n",
                    img.to_str().unwrap(),
                    sink.to_str().unwrap()
                ),
            )
            .unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_imgpipe"))
                .args(["run", "--json", "--progress", "never"])
                .arg(&spec)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(3),
                "{fmt}: expected a rejection\nstdout: {stdout}\nstderr: {stderr}"
            );
            let json: serde_json::Value = serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{fmt}: bad JSON ({e}): {stdout}"));
            assert_eq!(json["status"], "rejected", "{fmt}: {json}");
            // The decoder's check id, in `check` and named in `reason`.
            assert_eq!(json["check"], check, "{fmt}: {json}");
            let reason = json["reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains(&format!("check {check}")),
                "{fmt}: reason does not name {check}: {json}"
            );
            if existing {
                assert_eq!(
                    std::fs::read(&sink).unwrap(),
                    b"previous disk",
                    "{fmt}: pre-existing target changed"
                );
            } else {
                assert!(!sink.exists(), "{fmt}: something was published at {sink:?}");
            }
            let left: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(&format!("{name}-")) && n != &format!("{name}-true.raw"))
                .collect();
            assert!(left.is_empty(), "{fmt}: temp files left behind: {left:?}");
        }
    }
}
