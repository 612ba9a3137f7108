//! Who may write the cache and what its entry files may be, through the facade's real run
//! (`imgpipe::run`: cache lookup, pipeline, file sink, publish), plus what a hit reports as
//! passed. Digests are compared with `sha256sum`/`sha512sum`, not with imgpipe's own hasher.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use imgpipe::hash::Algorithm;
use imgpipe::spec::Spec;
use imgpipe::{Progress, RunReport, Status};
use imgpipe_cache::Cache;

/// `sha256sum`/`sha512sum` of a file: the outside reference.
fn coreutils_digest(tool: &str, path: &Path) -> String {
    let out = Command::new(tool).arg(path).output().expect(tool);
    assert!(out.status.success(), "{tool} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn run(spec: &Spec) -> RunReport {
    block_on(imgpipe::run(spec, Arc::new(Progress::default())))
}

fn cached_spec(src: &Path, out: &Path, cache: &Path) -> Spec {
    let mut s = file_spec(src, Some(out));
    s.cache = Some(cache_spec(cache));
    s
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file of the entry is a regular file (not followed through a symlink).
fn all_regular(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().all(|e| {
        std::fs::symlink_metadata(e.unwrap().path())
            .unwrap()
            .file_type()
            .is_file()
    })
}

fn entry_path(cache: &Path, ext: &str) -> PathBuf {
    std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with(&format!(".{ext}"))
                && p.file_name().unwrap().len() == 64 + 1 + ext.len()
        })
        .unwrap_or_else(|| panic!("no .{ext} in {:?}", names(cache)))
}

fn has_warning(r: &RunReport, needle: &str) -> bool {
    r.warnings.iter().any(|w| w.contains(needle))
}

/// Item 10(a): an entry file replaced by a directory, a symlink or a FIFO made every later run
/// exit 1 ("cannot remove … Is a directory") or was followed. Each is now quarantined with a
/// warning naming `cache.entry_file`, and the same run fills the entry again.
#[test]
fn an_entry_file_that_is_not_a_regular_file_is_quarantined_and_refilled() {
    let t = tempfile::tempdir().unwrap();
    let data = image_bytes(3 << 20, 41);
    let src = t.path().join("img.raw");
    std::fs::write(&src, &data).unwrap();
    let want = coreutils_digest("sha256sum", &src);
    let cdir = t.path().join("cache");
    let out = t.path().join("disk.raw");
    let spec = cached_spec(&src, &out, &cdir);
    let first = run(&spec);
    assert_eq!(first.status, Status::Ok, "{:?}", first.reason);
    assert!(first.passed.contains(&"cache.fill".to_string()));
    std::fs::remove_file(&out).unwrap();
    // A file outside the cache that a planted symlink points to: never read as the entry,
    // never removed or changed.
    let outside = t.path().join("outside");
    std::fs::write(&outside, &data).unwrap();

    type Plant = fn(&Path, &Path);
    let cases: [(&str, &str, Plant, &str); 7] = [
        (
            "data",
            "data: a directory with a file in it",
            |p, _| {
                std::fs::create_dir(p).unwrap();
                std::fs::write(p.join("x"), b"x").unwrap();
            },
            "a directory",
        ),
        (
            "data",
            "data: a symlink to a file with the right bytes",
            |p, outside| std::os::unix::fs::symlink(outside, p).unwrap(),
            "a symlink",
        ),
        ("data", "data: a FIFO", |p, _| nix_mkfifo(p), "a FIFO"),
        (
            "json",
            "sidecar: a FIFO (reading it would block forever)",
            |p, _| nix_mkfifo(p),
            "a FIFO",
        ),
        (
            "json",
            "sidecar: a directory",
            |p, _| std::fs::create_dir(p).unwrap(),
            "a directory",
        ),
        (
            "lock",
            "lock: a directory",
            |p, _| std::fs::create_dir(p).unwrap(),
            "a directory",
        ),
        (
            "lock",
            "lock: a symlink to a file outside",
            |p, outside| std::os::unix::fs::symlink(outside, p).unwrap(),
            "a symlink",
        ),
    ];
    for (ext, what, plant, kind) in cases {
        let victim = entry_path(&cdir, ext);
        std::fs::remove_file(&victim).unwrap();
        plant(&victim, &outside);
        let r = run(&spec);
        assert_eq!(
            r.status,
            Status::Ok,
            "{what}: {:?} (check {:?})",
            r.reason,
            r.check
        );
        assert!(
            has_warning(&r, "cache.entry_file") && has_warning(&r, kind),
            "{what}: no warning naming the check: {:?}",
            r.warnings
        );
        assert_eq!(std::fs::read(&out).unwrap(), data, "{what}");
        assert_eq!(r.hashes["sha256"], want, "{what}");
        if ext == "lock" {
            // Only the lock was odd: the complete entry still serves the run.
            assert!(r.passed.contains(&"cache.hit".to_string()), "{what}");
        } else {
            assert!(
                r.passed.contains(&"cache.fill".to_string()),
                "{what}: not refilled in the same run: {:?}",
                r.passed
            );
        }
        assert!(all_regular(&cdir), "{what}: left {:?}", names(&cdir));
        assert_eq!(
            std::fs::read(&outside).unwrap(),
            data,
            "{what}: target changed"
        );
        std::fs::remove_file(&out).unwrap();
        // And the entry serves the next run.
        let r = run(&spec);
        assert_eq!(r.status, Status::Ok, "{what}: {:?}", r.reason);
        assert!(r.passed.contains(&"cache.hit".to_string()), "{what}");
        assert!(!has_warning(&r, "cache.entry_file"), "{what}");
        std::fs::remove_file(&out).unwrap();
    }

    // A partial file left as a directory by whatever killed a fill: the next run's open
    // quarantines it and fills.
    let data_file = entry_path(&cdir, "data");
    let part = data_file.with_extension("part");
    std::fs::remove_file(entry_path(&cdir, "json")).unwrap();
    std::fs::remove_file(&data_file).unwrap();
    std::fs::create_dir(&part).unwrap();
    let r = run(&spec);
    assert_eq!(r.status, Status::Ok, "{:?}", r.reason);
    assert!(has_warning(&r, "cache.entry_file"), "{:?}", r.warnings);
    assert!(r.passed.contains(&"cache.fill".to_string()));
    assert!(all_regular(&cdir), "{:?}", names(&cdir));

    // The operator commands quarantine too (and report through take_warnings).
    let data_file = entry_path(&cdir, "data");
    std::fs::remove_file(&data_file).unwrap();
    std::fs::create_dir(&data_file).unwrap();
    let cache = Cache::open_dir(&cdir).unwrap();
    let v = block_on(cache.verify_all(true)).unwrap();
    assert!(v.is_empty(), "a directory is no complete entry: {v:?}");
    let pr = cache.prune().unwrap();
    assert_eq!(pr.removed.len(), 1, "{pr:?}");
    assert!(
        cache
            .take_warnings()
            .iter()
            .any(|w| w.contains("cache.entry_file")),
    );
    assert!(names(&cdir).is_empty(), "{:?}", names(&cdir));
}

fn nix_mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().expect("mkfifo");
    assert!(st.success());
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, owner: &str) -> bool {
    Command::new("chown")
        .arg(owner)
        .arg(p)
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        == 0
}

/// Item 10(b): a cache directory others can write was used silently. Refused now, before any
/// source byte is read, with check `cache.dir` and exit status 2; nothing is published and
/// nothing is created in the directory. The maintenance commands refuse it too.
#[test]
fn a_cache_dir_others_can_write_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let data = image_bytes(1 << 20, 43);
    let src = t.path().join("img.raw");
    std::fs::write(&src, &data).unwrap();
    let out = t.path().join("disk.raw");

    let refused = |cdir: &Path, spec_dir: &Path, why: &str, needle: &str| {
        let before = names(cdir);
        let r = run(&cached_spec(&src, &out, spec_dir));
        assert_eq!(r.status, Status::Error, "{why}: accepted");
        assert_eq!(
            r.check.as_deref(),
            Some("cache.dir"),
            "{why}: {:?}",
            r.reason
        );
        assert_eq!(r.exit_code(), 2, "{why}");
        assert_eq!(r.bytes_read, 0, "{why}: the source was read");
        let reason = r.reason.clone().unwrap();
        assert!(reason.contains(needle), "{why}: {reason}");
        assert!(!out.exists(), "{why}: published");
        assert_eq!(names(cdir), before, "{why}: the directory was written");
        let e = Cache::open_dir(spec_dir).unwrap_err();
        assert_eq!(e.check_name(), Some("cache.dir"), "{why}");
    };

    let cdir = t.path().join("c");
    std::fs::create_dir(&cdir).unwrap();
    chmod(&cdir, 0o777);
    refused(&cdir, &cdir, "mode 0777", "writable by others");
    chmod(&cdir, 0o1777);
    refused(&cdir, &cdir, "mode 1777 (sticky)", "writable by others");
    chmod(&cdir, 0o757);
    refused(&cdir, &cdir, "mode 0757", "writable by others");
    chmod(&cdir, 0o755);

    // A symlinked cache directory (the link could be swapped under a running fill).
    let link = t.path().join("link");
    std::os::unix::fs::symlink(&cdir, &link).unwrap();
    refused(&cdir, &link, "symlinked dir", "is a symlink");

    // A parent others can write without the sticky bit (the directory could be replaced).
    let open_parent = t.path().join("open");
    std::fs::create_dir(&open_parent).unwrap();
    let inner = open_parent.join("cache");
    std::fs::create_dir(&inner).unwrap();
    chmod(&open_parent, 0o777);
    refused(&inner, &inner, "parent 0777", "without the sticky bit");
    // A sticky parent (like /tmp) is fine.
    chmod(&open_parent, 0o1777);
    let r = run(&cached_spec(&src, &out, &inner));
    assert_eq!(r.status, Status::Ok, "sticky parent: {:?}", r.reason);
    std::fs::remove_file(&out).unwrap();

    if is_root() {
        // Owned by another (non-root) user.
        let theirs = t.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        assert!(chown(&theirs, "65534"));
        refused(&theirs, &theirs, "owned by uid 65534", "owned by uid 65534");
        // Group-writable by a group this process is not running as.
        let grp = t.path().join("grp");
        std::fs::create_dir(&grp).unwrap();
        assert!(chown(&grp, "0:65534"));
        chmod(&grp, 0o775);
        refused(
            &grp,
            &grp,
            "group 65534 may write",
            "writable by group 65534",
        );
        // Group-writable by this process's own group: a group shared on purpose.
        assert!(chown(&grp, "0:0"));
        let r = run(&cached_spec(&src, &out, &grp));
        assert_eq!(r.status, Status::Ok, "own group: {:?}", r.reason);
        std::fs::remove_file(&out).unwrap();
    } else {
        eprintln!("not root: the other-owner and other-group cases need chown, skipped");
    }

    // The accepted directory still works, and a directory imgpipe creates is never one it
    // refuses, whatever the umask.
    chmod(&cdir, 0o755);
    let r = run(&cached_spec(&src, &out, &cdir));
    assert_eq!(r.status, Status::Ok, "{:?}", r.reason);
    std::fs::remove_file(&out).unwrap();
    // umask 0 in a child process (the umask is process-wide: changing it here would change
    // the mode of every directory the tests running in parallel create).
    let fresh = t.path().join("fresh/deeper/cache");
    let st = Command::new("sh")
        .arg("-c")
        .arg("umask 0 && exec \"$0\" --exact umask_child_entry --nocapture --test-threads=1")
        .arg(std::env::current_exe().unwrap())
        .env("SAFETY_FRESH_DIR", &fresh)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "Cache::open under umask 0 refused its own directory"
    );
    for d in [&fresh, &t.path().join("fresh")] {
        assert_eq!(
            std::fs::metadata(d).unwrap().mode() & 0o777,
            0o755,
            "{} created with umask 0",
            d.display()
        );
    }
}

/// Child entry point of the umask case (a no-op in a normal test run): open (creating) the
/// cache directory `$SAFETY_FRESH_DIR`; the parent runs it with umask 0.
#[test]
fn umask_child_entry() {
    let Ok(dir) = std::env::var("SAFETY_FRESH_DIR") else {
        return;
    };
    Cache::open(&cache_spec(Path::new(&dir))).unwrap();
}

/// Item 10(c): in mode `original`, a hit of a run that expects no digest listed
/// `digest.sha256` (and `size`) among the passed checks: the cache sidecar's own pins, which
/// say nothing about the image. The digest is now under `hashes` only; the pins are not
/// listed (`cache.hit` is), and a changed entry fails with check `cache.sidecar_digest`.
#[test]
fn a_hit_without_an_expected_digest_passes_no_digest_check() {
    let t = tempfile::tempdir().unwrap();
    let data = image_bytes(2 << 20, 47);
    let src = t.path().join("img.raw");
    std::fs::write(&src, &data).unwrap();
    let sha256 = coreutils_digest("sha256sum", &src);
    let sha512 = coreutils_digest("sha512sum", &src);
    let cdir = t.path().join("cache");
    let out = t.path().join("disk.raw");
    let spec = cached_spec(&src, &out, &cdir);
    let unverified = |r: &RunReport| {
        assert_eq!(r.status, Status::Ok, "{:?}", r.reason);
        assert!(
            !r.passed
                .iter()
                .any(|c| c.starts_with("digest.") || c == "size" || c == "signature"),
            "a computed digest is not a passed check: {:?}",
            r.passed
        );
        assert_eq!(r.hashes["sha256"], sha256);
        assert!(has_warning(r, "not verified"), "{:?}", r.warnings);
    };
    let r = run(&spec);
    unverified(&r);
    assert!(r.passed.contains(&"cache.fill".to_string()));
    std::fs::remove_file(&out).unwrap();
    let r = run(&spec);
    unverified(&r);
    assert_eq!(r.passed, ["cache.hit"]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    std::fs::remove_file(&out).unwrap();

    // A changed byte in the entry: rejected by the sidecar pin, by name; nothing published.
    let data_file = entry_path(&cdir, "data");
    let mut bad = data.clone();
    bad[12345] ^= 1;
    std::fs::write(&data_file, &bad).unwrap();
    let r = run(&spec);
    assert_eq!(r.status, Status::Rejected, "{:?}", r.reason);
    assert_eq!(r.check.as_deref(), Some("cache.sidecar_digest"));
    assert_eq!(r.exit_code(), 3);
    assert!(!out.exists());

    // With an expected digest the request's own check is reported (hit included).
    let mut expecting = spec.clone();
    expecting
        .verify
        .digests
        .push((Algorithm::Sha512, sha512.clone()));
    for way in ["cache.fill", "cache.hit"] {
        let r = run(&expecting);
        assert_eq!(r.status, Status::Ok, "{:?}", r.reason);
        assert!(
            r.passed.contains(&"digest.sha512".to_string()),
            "{:?}",
            r.passed
        );
        assert!(r.passed.contains(&way.to_string()), "{way}: {:?}", r.passed);
        assert_eq!(r.hashes["sha512"], sha512);
        std::fs::remove_file(&out).unwrap();
    }
}

/// An entry is only published pinned by a collision-resistant digest: a request that checks
/// only a weak one (MD5, as a Glance record with only `checksum`) gets a SHA-256 computed in
/// the same pass, recorded in the sidecar (equal to `sha256sum`'s) and pinned on the hit.
#[test]
fn a_fill_for_a_weak_digest_request_is_pinned_by_a_strong_one() {
    let t = tempfile::tempdir().unwrap();
    let data = image_bytes(1 << 20, 53);
    let src = t.path().join("img.raw");
    std::fs::write(&src, &data).unwrap();
    let md5 = coreutils_digest("md5sum", &src);
    let sha256 = coreutils_digest("sha256sum", &src);
    let cdir = t.path().join("cache");
    let out = t.path().join("disk.raw");
    let mut spec = cached_spec(&src, &out, &cdir);
    spec.verify.digests.push((Algorithm::Md5, md5));
    let r = run(&spec);
    assert_eq!(r.status, Status::Ok, "{:?}", r.reason);
    assert!(
        r.passed.contains(&"digest.md5".to_string()),
        "{:?}",
        r.passed
    );
    assert!(
        r.passed.contains(&"cache.fill".to_string()),
        "{:?}",
        r.passed
    );
    let sc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry_path(&cdir, "json")).unwrap()).unwrap();
    assert_eq!(sc["digests"]["sha256"], sha256.as_str(), "{sc}");
    std::fs::remove_file(&out).unwrap();
    // The hit is held to that SHA-256: a changed entry fails it.
    let mut bad = data.clone();
    bad[777] ^= 4;
    std::fs::write(entry_path(&cdir, "data"), &bad).unwrap();
    let r = run(&spec);
    assert_eq!(r.status, Status::Rejected);
    assert!(
        matches!(
            r.check.as_deref(),
            Some("cache.sidecar_digest" | "digest.md5")
        ),
        "{:?}",
        r.check
    );
    assert!(!out.exists());
}
