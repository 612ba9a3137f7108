//! Operator-facing conventions (issue 20, first part): a JSON reader of `inspect --json` always
//! gets one object, `cache --dir` goes before or after the verb, counts read as English,
//! `verify` does not claim to have withheld a publish, and an exact size is never rounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn imgpipe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgpipe"))
}

#[test]
fn inspect_json_on_a_missing_file_prints_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = imgpipe()
        .args(["inspect", "--json"])
        .arg(dir.path().join("missing.qcow2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["status"], "error");
    assert_eq!(v["kind"], "io");
    assert!(
        v["reason"].as_str().unwrap().contains("missing.qcow2"),
        "{v}"
    );
    // A usage problem is JSON too, with exit 2.
    let out = imgpipe()
        .args(["inspect", "--json", "--expect", "floppy", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "spec");
}

#[test]
fn cache_dir_before_or_after_the_verb_and_counts_in_english() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    for args in [
        vec!["cache", "--dir", cache.to_str().unwrap(), "list"],
        vec!["cache", "list", "--dir", cache.to_str().unwrap()],
    ] {
        let out = imgpipe().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("0 entries"), "{args:?}: {text}");
    }
    let out = imgpipe().args(["cache", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dir"));

    // One filled entry reads "1 entry".
    let img = dir.path().join("img.raw");
    std::fs::write(&img, vec![5u8; 1 << 20]).unwrap();
    let sum = Command::new("sha256sum").arg(&img).output().unwrap();
    let sha = String::from_utf8(sum.stdout).unwrap()[..64].to_string();
    let spec = dir.path().join("s.toml");
    std::fs::write(
        &spec,
        format!(
            "[source]\npath = {:?}\n[verify]\nsha256 = \"{sha}\"\n[sink]\npath = {:?}\n\
             [cache]\ndir = {:?}\n",
            img.display().to_string(),
            dir.path().join("disk.raw").display().to_string(),
            cache.display().to_string()
        ),
    )
    .unwrap();
    let run = imgpipe()
        .args(["run", "--progress", "never"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let out = imgpipe()
        .args(["cache", "list", "--dir", cache.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("1 entry,"), "{text}");
}

#[test]
fn verify_does_not_say_nothing_was_published() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.raw");
    std::fs::write(&img, vec![1u8; 4096]).unwrap();
    let spec = dir.path().join("s.toml");
    std::fs::write(
        &spec,
        format!(
            "[source]\npath = {:?}\n[verify]\nsha256 = \"{}\"\n[sink]\npath = {:?}\n",
            img.display().to_string(),
            "0".repeat(64),
            dir.path().join("disk.raw").display().to_string()
        ),
    )
    .unwrap();
    let v = imgpipe().arg("verify").arg(&spec).output().unwrap();
    assert_eq!(v.status.code(), Some(3));
    // The report is a result: on stdout, with nothing of it on stderr.
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(out.contains("REJECTED"), "{out}");
    assert!(!out.contains("nothing was published"), "{out}");
    assert!(!String::from_utf8_lossy(&v.stderr).contains("REJECTED"));
    // `run` of the same spec does say it.
    let r = imgpipe()
        .args(["run", "--progress", "never"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&r.stdout).contains("nothing was published"));
}

#[test]
fn an_exact_size_is_never_rounded() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("s.toml");
    std::fs::write(
        &spec,
        "[source]\npath = \"img.raw\"\n[verify]\nsize = \"4.3MiB\"\n",
    )
    .unwrap();
    let out = imgpipe()
        .args(["run", "--json"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = v["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["path"] == "verify.size"
            && p["message"]
                .as_str()
                .unwrap()
                .contains("not a whole number of bytes")),
        "{v}"
    );
}

fn sh(cmd: &str, dir: &std::path::Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{cmd}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `imgpipe hash` prints what coreutils prints (one algorithm: `sha256sum`; several:
/// `--tag`), for several files, and `--check` verifies the lists coreutils writes.
#[test]
fn hash_is_sha256sum_compatible_and_checks_lists() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.img"), vec![1u8; 300_000]).unwrap();
    std::fs::write(d.join("b.img"), b"second image").unwrap();
    let run = |args: &[&str]| {
        imgpipe()
            .arg("hash")
            .args(args)
            .current_dir(d)
            .output()
            .unwrap()
    };
    let out = run(&["a.img", "b.img"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        sh("sha256sum a.img b.img", d)
    );
    let out = run(&["--algo", "sha512,md5", "a.img"]);
    let text = String::from_utf8(out.stdout).unwrap();
    for tool in ["sha512sum", "md5sum"] {
        let line = sh(&format!("{tool} --tag a.img"), d);
        assert!(text.contains(&line), "{text} lacks {line}");
    }

    // --check: the lists coreutils writes, in both formats.
    sh("sha256sum a.img b.img > list.sha256", d);
    sh("sha512sum --tag a.img b.img > list.tag", d);
    for list in ["list.sha256", "list.tag"] {
        let out = run(&["--check", list]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "a.img: OK\nb.img: OK\n"
        );
    }
    std::fs::write(d.join("b.img"), b"changed image").unwrap();
    let out = run(&["--check", "list.sha256"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "a.img: OK\nb.img: FAILED\n"
    );
    std::fs::remove_file(d.join("b.img")).unwrap();
    let out = run(&["--check", "list.tag"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("b.img: FAILED open or read")
    );
    std::fs::write(d.join("junk"), "this is not a checksum list\n").unwrap();
    assert_eq!(run(&["--check", "junk"]).status.code(), Some(2));
    assert_eq!(run(&[]).status.code(), Some(2));
}

/// `imgpipe convert` writes what `qemu-img convert -O raw` writes; `--print-spec` prints a spec
/// that `imgpipe run` turns into the same disk and the same report; a wrong digest flag is a
/// rejection with nothing published; destinations map onto the sink kinds.
#[test]
fn convert_with_flags_and_the_printed_spec_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(d.join("src.raw"), &raw).unwrap();
    sh("qemu-img convert -f raw -O qcow2 src.raw img.qcow2", d);
    sh("qemu-img convert -f qcow2 -O raw img.qcow2 expected.raw", d);
    let sha = sh("sha512sum img.qcow2", d)[..128].to_string();
    let convert = |extra: &[&str]| {
        imgpipe()
            .args(["convert", "-f", "qcow2", "--sha512", &sha])
            .args(extra)
            .current_dir(d)
            .output()
            .unwrap()
    };
    let out = convert(&["--output=json", "img.qcow2", "by-flags.raw"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let by_flags: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        std::fs::read(d.join("by-flags.raw")).unwrap(),
        std::fs::read(d.join("expected.raw")).unwrap()
    );

    let printed = convert(&["--print-spec", "img.qcow2", "by-spec.raw"]);
    assert_eq!(printed.status.code(), Some(0));
    std::fs::write(d.join("printed.toml"), &printed.stdout).unwrap();
    assert!(!d.join("by-spec.raw").exists(), "--print-spec ran the job");
    let out = imgpipe()
        .args(["run", "--output", "json", "printed.toml"])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let by_spec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        std::fs::read(d.join("by-spec.raw")).unwrap(),
        std::fs::read(d.join("expected.raw")).unwrap()
    );
    for k in [
        "status",
        "hashes",
        "format",
        "virtual_size",
        "bytes_read",
        "passed",
    ] {
        assert_eq!(by_flags[k], by_spec[k], "{k}");
    }

    let bad = imgpipe()
        .args([
            "convert",
            "-q",
            "--sha512",
            &"0".repeat(128),
            "img.qcow2",
            "bad.raw",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(3));
    assert!(bad.stdout.is_empty());
    assert!(!d.join("bad.raw").exists());

    let spec = |dst: &str| {
        let out = imgpipe()
            .args(["convert", "--print-spec", "img.qcow2", dst])
            .current_dir(d)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{dst}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(
        spec("lvm:vg0/inst_disk:10GiB")
            .contains("lvm = { vg = \"vg0\", name = \"inst_disk\", size = \"10GiB\" }")
    );
    assert!(spec("rbd:vms/inst_disk").contains("rbd = { pool = \"vms\", image = \"inst_disk\" }"));
    assert!(spec("/dev/loop7").contains("device = \"/dev/loop7\""));
    let out = imgpipe()
        .args(["convert", "img.qcow2", "lvm:novg"])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Nothing in the repository names a path that exists on only one machine (a developer's
/// checkout, a home directory, a lock file or notes kept next to the checkout).
#[test]
fn the_repository_names_no_machine_specific_path() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let files = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(files.status.success(), "git ls-files failed");
    // Built at run time so that this file does not name them itself.
    let needles: Vec<String> = ["work", "home", "root", "Users"]
        .iter()
        .map(|s| format!("/{s}/"))
        .collect();
    let mut found = Vec::new();
    for name in files.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).to_string();
        if name.ends_with("Cargo.lock") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(root.join(&name)) else {
            continue; // binary or missing (a deleted file not yet committed)
        };
        for (i, line) in text.lines().enumerate() {
            if let Some(n) = needles.iter().find(|n| line.contains(n.as_str())) {
                found.push(format!("{name}:{}: {n}", i + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "machine-specific paths:\n{}",
        found.join("\n")
    );
}

/// `imgpipe info` agrees with `qemu-img info` (format, virtual size, disk size) and adds the
/// verdict; an unsafe image exits 3 with its check.
#[test]
fn info_agrees_with_qemu_img_info() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sh("qemu-img create -q -f qcow2 a.qcow2 3G", d);
    sh(
        "qemu-img create -q -f vpc -o subformat=dynamic b.vhd 100M",
        d,
    );
    sh("qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 c.qcow2", d);
    for name in ["a.qcow2", "b.vhd"] {
        let q: serde_json::Value =
            serde_json::from_str(&sh(&format!("qemu-img info --output=json {name}"), d)).unwrap();
        let out = imgpipe()
            .args(["info", "--output=json", name])
            .current_dir(d)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["virtual-size"], q["virtual-size"], "{name}");
        assert_eq!(v["actual-size"], q["actual-size"], "{name}");
        let qfmt = q["format"].as_str().unwrap().replace("vpc", "vhd");
        assert_eq!(v["format"], qfmt, "{name}");
        assert_eq!(v["imgpipe"]["safe"], true, "{name}");
    }
    let out = imgpipe()
        .args(["info", "--json", "c.qcow2"])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["imgpipe"]["violations"][0]["check"], "qcow2.backing_file");
}

/// Shell completions and the man page come from the clap definition: bash accepts the script
/// and it knows the subcommands; the man page is roff naming them.
#[test]
fn completions_and_man_page_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    let out = imgpipe().args(["completions", "bash"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let script = String::from_utf8(out.stdout).unwrap();
    for verb in ["convert", "info", "inspect", "hash", "cache", "run"] {
        assert!(script.contains(verb), "completion lacks {verb}");
    }
    std::fs::write(dir.path().join("imgpipe.bash"), &script).unwrap();
    sh("bash -n imgpipe.bash", dir.path());
    for shell in ["zsh", "fish"] {
        let out = imgpipe().args(["completions", shell]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(!out.stdout.is_empty(), "{shell}");
    }
    let out = imgpipe().arg("man").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let man = String::from_utf8(out.stdout).unwrap();
    assert!(man.contains(".TH imgpipe 1"), "{man}");
    for verb in ["convert", "info", "verify"] {
        assert!(man.contains(verb), "man page lacks {verb}");
    }
}
