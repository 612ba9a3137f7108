//! What a failed encrypted run leaves behind, through the real `imgpipe` binary, checked with
//! the real `cryptsetup`: the LUKS header is written last, so a run rejected at its last byte or
//! killed with `SIGKILL` mid-stream leaves nothing `cryptsetup` can open, on a file sink and on a
//! block device (a real loop device, whose first MiB must then read zero). LUKS1 and LUKS2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn imgpipe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgpipe"))
}

fn require_oracles() -> bool {
    std::env::var("IMGPIPE_REQUIRE_ORACLES").as_deref() == Ok("1")
}

/// Whether `tool` runs; if not, panics under `IMGPIPE_REQUIRE_ORACLES=1`, else says why.
fn have(test: &str, tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(!require_oracles(), "{test}: {tool} is required");
        eprintln!("SKIP {test}: {tool} not installed");
    }
    ok
}

/// Whether loop devices can be attached (root, losetup, /dev/loop-control).
fn have_loop(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let ok = root && have(test, "losetup") && Path::new("/dev/loop-control").exists();
    if !ok {
        assert!(!require_oracles(), "{test}: loop devices are required");
        eprintln!("SKIP {test}: no loop devices (root: {root})");
    }
    ok
}

/// A loop device over a file filled with 0xA5 (a used device); detached on drop.
struct Loop {
    dev: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new(size: usize) -> Loop {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dev.img");
        std::fs::write(&file, vec![0xA5u8; size]).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        Loop { dev, _dir: dir }
    }

    fn first_mib_is_zero(&self) -> bool {
        let mut f = std::fs::File::open(&self.dev).unwrap();
        let mut head = vec![0u8; MIB];
        std::io::Read::read_exact(&mut f, &mut head).unwrap();
        head.iter().all(|&b| b == 0)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Pseudo-random bytes (xorshift), no zero runs.
fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.extend_from_slice(&s.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// `cryptsetup luksDump` and `cryptsetup open --test-passphrase` on `target`: whether either
/// finds a LUKS header there (the passphrase is the right one).
fn luks_openable(target: &Path, pass: &Path) -> bool {
    let dump = Command::new("cryptsetup")
        .arg("luksDump")
        .arg(target)
        .output()
        .unwrap();
    let open = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(pass)
        .arg(target)
        .output()
        .unwrap();
    dump.status.success() || open.status.success()
}

#[derive(Clone, Copy, Debug)]
enum Target {
    File,
    Device,
}

/// A test directory: the passphrase and the spec live in `dir`, the file sink writes into
/// `dir/out` (created empty, so anything in it afterwards came from imgpipe).
struct Case {
    dir: tempfile::TempDir,
    pass: PathBuf,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pass.txt");
        std::fs::write(&pass, "correct horse battery").unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        Case { dir, pass }
    }

    fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn out_file(&self) -> PathBuf {
        self.out_dir().join("disk.luks")
    }

    fn out_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.out_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// A spec reading `source` (a path, or `-`), encrypting with `format` into the file sink or
    /// onto `dev`, optionally expecting a sha256.
    fn spec(&self, source: &str, format: &str, sink: &str, sha256: Option<&str>) -> PathBuf {
        let verify = sha256.map_or(String::new(), |h| format!("[verify]\nsha256 = \"{h}\"\n"));
        let spec = format!(
            "[source]\npath = \"{source}\"\n[inspect]\ndisk_format = \"raw\"\n{verify}\
             [encrypt]\nformat = \"{format}\"\ncipher = \"aes-xts-plain64\"\nkey_size = 512\n\
             passphrase_file = \"{}\"\npbkdf = \"pbkdf2\"\npbkdf_iterations = 1000\n[sink]\n{sink}\n",
            self.pass.display()
        );
        let p = self.dir.path().join(format!("spec-{format}.toml"));
        std::fs::write(&p, spec).unwrap();
        p
    }
}

fn sink_line(target: Target, case: &Case, dev: Option<&Loop>) -> String {
    match target {
        Target::File => format!("path = \"{}\"", case.out_file().display()),
        Target::Device => format!("device = \"{}\"", dev.unwrap().dev.display()),
    }
}

fn run(spec: &Path) -> (i32, String) {
    let out = imgpipe()
        .args(["run", "--json", "--progress", "never"])
        .arg(spec)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A run rejected at its last byte (wrong sha256) leaves no openable LUKS header: on a file sink
/// nothing at all in the target directory; on a block device (which held an openable LUKS disk
/// from an earlier verified run) the first MiB reads zero and `cryptsetup` finds no header. The
/// verified run of the same spec without the wrong digest does produce an openable header, so
/// the check would see one.
#[test]
fn a_rejected_encrypted_run_leaves_no_openable_luks_header() {
    let test = "a_rejected_encrypted_run_leaves_no_openable_luks_header";
    if !have(test, "cryptsetup") || !have_loop(test) {
        return;
    }
    let data = image(6 * MIB + 4096, 0x5eed);
    for format in ["luks1", "luks2"] {
        for target in [Target::File, Target::Device] {
            let case = Case::new();
            let src = case.dir.path().join("img.raw");
            std::fs::write(&src, &data).unwrap();
            let dev = matches!(target, Target::Device).then(|| Loop::new(32 * MIB));
            let sink = sink_line(target, &case, dev.as_ref());
            let what = format!("{format} on {target:?}");

            // The device first gets a verified disk: an openable header to be destroyed.
            if let Some(dev) = &dev {
                let (code, out) = run(&case.spec(src.to_str().unwrap(), format, &sink, None));
                assert_eq!(code, 0, "{what}: {out}");
                assert!(luks_openable(&dev.dev, &case.pass), "{what}: control");
            }

            let spec = case.spec(src.to_str().unwrap(), format, &sink, Some(&"11".repeat(32)));
            let (code, out) = run(&spec);
            assert_eq!(code, 3, "{what}: {out}");
            assert!(out.contains("digest"), "{what}: {out}");
            match &dev {
                None => {
                    assert!(
                        case.out_entries().is_empty(),
                        "{what}: left {:?}",
                        case.out_entries()
                    );
                    // Control: the same spec without the wrong digest publishes an openable disk.
                    let (code, out) = run(&case.spec(src.to_str().unwrap(), format, &sink, None));
                    assert_eq!(code, 0, "{what}: {out}");
                    assert!(
                        luks_openable(&case.out_file(), &case.pass),
                        "{what}: control"
                    );
                }
                Some(dev) => {
                    assert!(dev.first_mib_is_zero(), "{what}: first MiB not zero");
                    assert!(
                        !luks_openable(&dev.dev, &case.pass),
                        "{what}: a rejected run left an openable LUKS header"
                    );
                }
            }
        }
    }
}

/// Bytes the process wrote so far (`wchar` of `/proc/PID/io`: every `write`/`pwrite`).
fn written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The files the process has open under `dir` (an `O_TMPFILE` shows as `dir/#N (deleted)`),
/// as `/proc/PID/fd/N` paths that open the same file.
fn open_files_under(pid: u32, dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)))
        .map(|e| e.path())
        .collect()
}

/// A run killed with `SIGKILL` mid-stream (stdin source, half the image sent, the sink has
/// written megabytes of ciphertext) leaves no openable LUKS header. While the run is still
/// going, the file it writes (reached through `/proc/PID/fd`, since an `O_TMPFILE` has no
/// name) and the device hold no header; after the kill the target path does not exist, nothing
/// left in its directory opens, and the device's first MiB (which held a verified LUKS disk
/// before) reads zero.
#[test]
fn a_killed_encrypted_run_leaves_no_openable_luks_header() {
    let test = "a_killed_encrypted_run_leaves_no_openable_luks_header";
    if !have(test, "cryptsetup") || !have_loop(test) {
        return;
    }
    let data = image(16 * MIB, 0xdead);
    for format in ["luks1", "luks2"] {
        for target in [Target::File, Target::Device] {
            let case = Case::new();
            let dev = matches!(target, Target::Device).then(|| Loop::new(40 * MIB));
            let sink = sink_line(target, &case, dev.as_ref());
            let what = format!("{format} on {target:?}");
            if let Some(dev) = &dev {
                let src = case.dir.path().join("img.raw");
                std::fs::write(&src, &data[..4 * MIB]).unwrap();
                let (code, out) = run(&case.spec(src.to_str().unwrap(), format, &sink, None));
                assert_eq!(code, 0, "{what}: {out}");
                assert!(luks_openable(&dev.dev, &case.pass), "{what}: control");
            }

            let spec = case.spec("-", format, &sink, None);
            let mut child = imgpipe()
                .args(["run", "--json", "--progress", "never"])
                .arg(&spec)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let pid = child.id();
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(&data[..data.len() / 2]).unwrap();
            // Wait until the sink has written several MiB (the pipe stays open: no EOF, so no
            // verdict and no header can come).
            let t = Instant::now();
            while written(pid) < 5 * MIB as u64 {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "{what}: the run wrote only {} bytes",
                    written(pid)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            match &dev {
                None => {
                    let open = open_files_under(pid, &case.out_dir());
                    assert!(
                        !open.is_empty(),
                        "{what}: no open file under the target dir"
                    );
                    for f in &open {
                        assert!(
                            !luks_openable(f, &case.pass),
                            "{what}: mid-run, {} already holds an openable header",
                            f.display()
                        );
                    }
                }
                Some(dev) => {
                    assert!(dev.first_mib_is_zero(), "{what}: mid-run first MiB");
                    assert!(!luks_openable(&dev.dev, &case.pass), "{what}: mid-run");
                }
            }
            child.kill().unwrap(); // SIGKILL: no abort, no destructor
            let status = child.wait().unwrap();
            assert!(!status.success(), "{what}");
            drop(stdin);
            match &dev {
                None => {
                    assert!(!case.out_file().exists(), "{what}: published after a kill");
                    for name in case.out_entries() {
                        assert!(
                            !luks_openable(&case.out_dir().join(&name), &case.pass),
                            "{what}: the killed run left an openable header in {name}"
                        );
                    }
                }
                Some(dev) => {
                    assert!(dev.first_mib_is_zero(), "{what}: first MiB not zero");
                    assert!(
                        !luks_openable(&dev.dev, &case.pass),
                        "{what}: a killed run left an openable LUKS header"
                    );
                }
            }
        }
    }
}
