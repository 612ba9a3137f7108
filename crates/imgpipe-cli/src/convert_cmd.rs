//! `imgpipe convert`: the everyday conversion without a spec file. The flags become a TOML spec
//! (what `--print-spec` prints), which is then parsed and run exactly as `imgpipe run` would:
//! one code path, so the printed spec always means the same run as the flags.

use std::fmt::Write as _;
use std::path::PathBuf;

use imgpipe::Spec;

use crate::{ProgressMode, execute};

/// The arguments of `imgpipe convert`.
#[derive(clap::Args)]
pub struct ConvertArgs {
    /// The image: a file, an http(s) URL, or `-` (stdin).
    src: String,
    /// The disk: a file path, a block device `/dev/…`, `lvm:VG/NAME:SIZE` (a new or existing
    /// LV) or `rbd:POOL/IMAGE` (a new Ceph RBD image).
    dst: String,
    /// The image's declared format (Glance `disk_format`); the detected one must match.
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    format: Option<String>,
    /// Output format: `raw` (decode; the default) or `preserve` (copy the image bytes).
    #[arg(
        short = 'O',
        long = "target-format",
        value_name = "FMT",
        default_value = "raw"
    )]
    target_format: String,
    /// Copy the image bytes unchanged (same as `-O preserve`).
    #[arg(long)]
    preserve: bool,
    /// Expected SHA-512 of the image bytes (hex).
    #[arg(long, value_name = "HEX")]
    sha512: Option<String>,
    /// Expected SHA-256 of the image bytes (hex).
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// Glance multihash `ALGO:HEX` (`os_hash_algo`:`os_hash_value`).
    #[arg(long, value_name = "ALGO:HEX")]
    os_hash: Option<String>,
    /// Exact size of the image bytes (e.g. 1073741824 or 1GiB).
    #[arg(long, value_name = "SIZE")]
    size: Option<String>,
    /// Largest acceptable virtual size (default 64TiB).
    #[arg(long, value_name = "SIZE")]
    max_virtual_size: Option<String>,
    /// Encrypt the disk in the stream: `luks1`, `luks2` (with --passphrase-file) or `plain`
    /// (dm-crypt plain, with --key-file).
    #[arg(long, value_name = "FORMAT")]
    encrypt: Option<String>,
    /// LUKS passphrase file (the whole file, as `cryptsetup --key-file` reads it).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// dm-crypt plain key file (raw key bytes).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Show a progress bar (as `qemu-img convert -p`).
    #[arg(short = 'p')]
    progress_bar: bool,
    /// Quiet: no human report (the exit status says what happened).
    #[arg(short = 'q')]
    quiet: bool,
    /// Print one JSON report on stdout.
    #[arg(long)]
    json: bool,
    /// Print the equivalent spec (TOML) on stdout instead of running it.
    #[arg(long)]
    print_spec: bool,
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn qp(p: &std::path::Path) -> String {
    q(&p.to_string_lossy())
}

/// The spec the flags mean, as TOML.
pub fn spec_text(a: &ConvertArgs) -> Result<String, String> {
    let mut t = String::new();
    let w = &mut t;
    let _ = writeln!(w, "[source]");
    if a.src.starts_with("http://") || a.src.starts_with("https://") {
        let _ = writeln!(w, "url = {}", q(&a.src));
    } else {
        let _ = writeln!(w, "path = {}", q(&a.src));
    }
    let _ = writeln!(w, "\n[inspect]");
    if let Some(f) = &a.format {
        let _ = writeln!(w, "disk_format = {}", q(f));
    }
    if let Some(m) = &a.max_virtual_size {
        let _ = writeln!(w, "max_virtual_size = {}", q(m));
    }
    let _ = writeln!(w, "\n[verify]");
    if let Some(h) = &a.sha512 {
        let _ = writeln!(w, "sha512 = {}", q(h));
    }
    if let Some(h) = &a.sha256 {
        let _ = writeln!(w, "sha256 = {}", q(h));
    }
    if let Some(oh) = &a.os_hash {
        let (algo, hex) = oh
            .split_once(':')
            .ok_or_else(|| format!("--os-hash {oh:?}: expected ALGO:HEX, e.g. sha512:…"))?;
        let _ = writeln!(w, "os_hash_algo = {}\nos_hash_value = {}", q(algo), q(hex));
    }
    if let Some(s) = &a.size {
        match s.parse::<u64>() {
            Ok(n) => writeln!(w, "size = {n}"),
            Err(_) => writeln!(w, "size = {}", q(s)),
        }
        .map_err(|e| e.to_string())?;
    }
    let format = if a.preserve {
        "preserve"
    } else {
        a.target_format.as_str()
    };
    let _ = writeln!(w, "\n[convert]\nformat = {}", q(format));
    if let Some(e) = &a.encrypt {
        let _ = writeln!(w, "\n[encrypt]\nformat = {}", q(e));
        if let Some(p) = &a.passphrase_file {
            let _ = writeln!(w, "passphrase_file = {}", qp(p));
        }
        if let Some(k) = &a.key_file {
            let _ = writeln!(w, "key_file = {}", qp(k));
        }
    } else if a.passphrase_file.is_some() || a.key_file.is_some() {
        return Err("--passphrase-file and --key-file need --encrypt".into());
    }
    let _ = writeln!(w, "\n[sink]");
    if let Some(rest) = a.dst.strip_prefix("lvm:") {
        let (vg_name, size) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{:?}: expected lvm:VG/NAME:SIZE", a.dst))?;
        let (vg, name) = vg_name
            .split_once('/')
            .ok_or_else(|| format!("{:?}: expected lvm:VG/NAME:SIZE", a.dst))?;
        let _ = writeln!(
            w,
            "lvm = {{ vg = {}, name = {}, size = {} }}",
            q(vg),
            q(name),
            q(size)
        );
    } else if let Some(rest) = a.dst.strip_prefix("rbd:") {
        let (pool, image) = rest
            .split_once('/')
            .ok_or_else(|| format!("{:?}: expected rbd:POOL/IMAGE", a.dst))?;
        let _ = writeln!(w, "rbd = {{ pool = {}, image = {} }}", q(pool), q(image));
    } else if a.dst.starts_with("/dev/") {
        let _ = writeln!(w, "device = {}", q(&a.dst));
    } else {
        let _ = writeln!(w, "path = {}", q(&a.dst));
    }
    Ok(t)
}

/// Run `imgpipe convert`.
pub async fn run(a: ConvertArgs) -> i32 {
    let text = match spec_text(&a) {
        Ok(t) => t,
        Err(e) => {
            errln!("imgpipe convert: {e}");
            return 2;
        }
    };
    if a.print_spec {
        outln!("{text}");
        return 0;
    }
    let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let spec = match Spec::from_toml(&text, &base) {
        Ok(s) => s,
        Err(e) => {
            errln!("imgpipe convert: {e}");
            return 2;
        }
    };
    let progress = if a.progress_bar {
        ProgressMode::Always
    } else {
        ProgressMode::Never
    };
    if a.quiet && !a.json {
        let report = crate::run_with_progress(&spec, progress, false).await;
        if let Some(r) = report
            .reason
            .as_deref()
            .filter(|_| report.status != imgpipe::Status::Ok)
        {
            errln!("imgpipe convert: {r}");
        }
        return crate::exit_code(&report);
    }
    execute(&spec, a.json, progress).await
}
