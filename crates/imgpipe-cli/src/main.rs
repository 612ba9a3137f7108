//! `imgpipe`: turn a cloud VM image into an instance disk in one verified pass.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use imgpipe::spec::{SinkSpec, SinkTarget, SourceSpec};
use imgpipe::{Progress, RunReport, Spec, Status};

/// `println!` that never panics: a closed stdout (`imgpipe run --json | head -1`) loses the
/// output, not the run's outcome or its exit status.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// `eprintln!` that never panics on a closed stderr.
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
    }};
}

mod cache_cmd;
mod convert_cmd;
mod demo;
mod hash_cmd;
mod inspect;

const EXAMPLES: &str = "\
Examples:
  imgpipe demo                                 # generate a local image and run the main job on it
  imgpipe run spec.toml                        # run a pipeline spec (TOML or JSON)
  imgpipe run spec.toml --json                 # ... and print one JSON report
  cat spec.json | imgpipe run -                # spec from stdin
  imgpipe hash disk.img --algo sha512,sha256   # digests in one pass
  imgpipe hash https://example.org/cirros.img
  imgpipe inspect --json --expect qcow2 image.qcow2
  imgpipe verify spec.toml --input image.qcow2   # checks only, writes nothing
  imgpipe cache --dir /var/lib/imgpipe/cache list   # cached images, re-verified on every use
  imgpipe cache --dir /var/lib/imgpipe/cache verify

Exit status: 0 success; 3 the image was rejected by a check (digest, size, format,
signature); 2 invalid spec or arguments; 1 any other failure (I/O, network).";

#[derive(Parser)]
#[command(name = "imgpipe", version, about = "Turn a cloud VM image into an instance disk in one verified pass", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ProgressMode {
    /// A progress bar when stderr is a terminal.
    Auto,
    /// Always a progress bar.
    Always,
    /// No progress output.
    Never,
    /// One JSON object per line on stderr (`stage`, `bytes_read`, `bytes_written`, `total`,
    /// `bytes_per_second`, `elapsed_seconds`, `cancelled`): at most every 500 ms and at each
    /// stage change, the last with `"stage": "done"`. Works off a terminal.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline spec (TOML or JSON; `-` reads it from stdin).
    Run {
        /// The spec file.
        spec: PathBuf,
        /// Print one JSON report on stdout.
        #[arg(long)]
        json: bool,
        /// Progress on stderr: a bar (auto: on a terminal), or JSON lines for drivers and logs.
        #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
        progress: ProgressMode,
    },
    /// Convert an image into a disk without a spec file (qemu-img-style flags); `--print-spec`
    /// shows the equivalent spec.
    Convert(convert_cmd::ConvertArgs),
    /// qemu-img-info-like fields (format, virtual size, image and disk size) plus imgpipe's
    /// verdict; exit 3 when the image is unsafe.
    Info {
        /// File path, http(s) URL, or `-`.
        input: String,
        /// Print one JSON object on stdout (also `--output=json`).
        #[arg(long)]
        json: bool,
    },
    /// Detect an image's format and check it is safe, without writing anything.
    Inspect {
        /// File path, http(s) URL, or `-`.
        input: String,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// The declared format (Glance `disk_format`): the detected format must match.
        #[arg(long, value_name = "FORMAT")]
        expect: Option<String>,
        /// Formats allowed at all, comma separated.
        #[arg(long, value_delimiter = ',', value_name = "F1,F2")]
        allow: Option<Vec<String>>,
        /// Largest acceptable virtual size (e.g. 64TiB).
        #[arg(long, value_name = "SIZE")]
        max_virtual_size: Option<String>,
    },
    /// Run only the verification stages of a spec (inspect, digests, size, signature): its
    /// [sink], [encrypt] and [convert] sections are ignored and nothing is written.
    Verify {
        /// The spec file (`-` for stdin).
        spec: PathBuf,
        /// Read the image from here instead of the spec's [source] (file, URL or `-`).
        #[arg(long)]
        input: Option<String>,
        /// Print one JSON report on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Compute digests of files, URLs or stdin (`-`), one pass each, printed as `sha256sum`
    /// prints them; `--check FILE` verifies such a list.
    Hash(hash_cmd::HashArgs),
    /// Look after a verified image cache directory: list, verify (re-hash against the
    /// sidecars), evict (by size/age), prune (leftovers of killed fills).
    Cache(cache_cmd::CacheArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout: `imgpipe man > imgpipe.1`.
    Man,
    /// Generate a small local image and run the main job on it (no server needed).
    Demo {
        /// Where to put the demo files (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Size of the generated image in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: u64,
        /// Print one JSON report on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// An input as printed: a URL without its user info and query (see [`imgpipe::redact_url`]).
pub(crate) fn shown(input: &str) -> String {
    match source_of(input) {
        SourceSpec::Http { url, .. } => imgpipe::redact_url(&url),
        _ => input.to_string(),
    }
}

pub(crate) fn source_of(input: &str) -> SourceSpec {
    SourceSpec::from_input(input)
}

/// qemu-img's `--output=json` (or `--output json`) is accepted wherever `--json` is, and
/// `--output=human` is the default; anything else is left for clap to refuse.
fn output_flag_as_json(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--output=json") => out.push("--json".into()),
            Some("--output=human") => {}
            Some("--output")
                if matches!(args.peek().and_then(|v| v.to_str()), Some("json" | "human")) =>
            {
                if args.next().is_some_and(|v| v == "json") {
                    out.push("--json".into());
                }
            }
            _ => out.push(a),
        }
    }
    out
}

fn main() {
    let cli = match Cli::try_parse_from(output_flag_as_json(std::env::args_os())) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("imgpipe: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async move {
        match cli.command {
            Command::Run { spec, json, progress } => match Spec::load(&spec) {
                Ok(s) => execute(&s, json, progress).await,
                Err(e) => {
                    if json {
                        outln!(
                            "{}",
                            serde_json::json!({"status": "error", "kind": "spec", "reason": e.to_string(),
                                "problems": e.problems.iter().map(|p| serde_json::json!({"path": p.path, "line": p.line, "message": p.message})).collect::<Vec<_>>()})
                        );
                    }
                    errln!("imgpipe: {e}");
                    2
                }
            },
            Command::Inspect { input, json, expect, allow, max_virtual_size } => {
                inspect::run(&input, json, expect, allow, max_virtual_size).await
            }
            Command::Verify { spec, input, json } => match Spec::load(&spec) {
                Ok(mut s) => {
                    if let Some(i) = input {
                        s.source = source_of(&i);
                    }
                    s.sink = None;
                    s.encrypt = None;
                    s.cache = None;
                    execute(&s, json, ProgressMode::Auto).await
                }
                Err(e) => {
                    errln!("imgpipe: {e}");
                    2
                }
            },
            Command::Hash(a) => hash_cmd::run(a).await,
            Command::Convert(a) => convert_cmd::run(a).await,
            Command::Info { input, json } => inspect::info(&input, json).await,
            Command::Completions { shell } => {
                use clap::CommandFactory;
                let mut buf = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "imgpipe", &mut buf);
                write_stdout(&buf)
            }
            Command::Man => {
                use clap::CommandFactory;
                let mut buf = Vec::new();
                match clap_mangen::Man::new(Cli::command()).render(&mut buf) {
                    Ok(()) => write_stdout(&buf),
                    Err(e) => {
                        errln!("imgpipe man: {e}");
                        1
                    }
                }
            }
            Command::Cache(a) => cache_cmd::run(a).await,
            Command::Demo { dir, size_mib, json } => match demo::prepare(dir.as_deref(), size_mib) {
                Ok(spec_path) => {
                    if !json {
                        errln!("imgpipe demo: spec {}", spec_path.display());
                    }
                    match Spec::load(&spec_path) {
                        Ok(s) => execute(&s, json, ProgressMode::Auto).await,
                        Err(e) => {
                            errln!("imgpipe: {e}");
                            2
                        }
                    }
                }
                Err(e) => {
                    errln!("imgpipe demo: {e:#}");
                    1
                }
            },
        }
    });
    std::process::exit(code);
}

/// Write generated text to stdout; a closed stdout is not an error worth a panic.
fn write_stdout(buf: &[u8]) -> i32 {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(buf).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            errln!("imgpipe: cannot write to stdout: {e}");
            1
        }
    }
}

fn print_json(report: &RunReport) {
    match serde_json::to_string_pretty(report) {
        Ok(s) => outln!("{s}"),
        Err(e) => errln!("imgpipe: cannot serialise the report: {e}"),
    }
}

async fn execute(spec: &Spec, json: bool, progress: ProgressMode) -> i32 {
    let report = run_with_progress(spec, progress, json).await;
    if json {
        print_json(&report);
    } else {
        print_text(&report, spec.sink.is_some());
    }
    exit_code(&report)
}

async fn run_with_progress(spec: &Spec, mode: ProgressMode, json: bool) -> RunReport {
    let progress = Arc::new(Progress::default());
    let show = match mode {
        ProgressMode::Always => true,
        ProgressMode::Never | ProgressMode::Json => false,
        ProgressMode::Auto => std::io::stderr().is_terminal(),
    };
    let _ = json;
    let signals = spawn_signal_watch(progress.clone());
    let json_lines = (mode == ProgressMode::Json).then(|| {
        let mut events = progress.events(Duration::from_millis(500));
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                let secs = started.elapsed().as_secs_f64();
                let line = serde_json::json!({
                    "stage": e.phase.name(),
                    "bytes_read": e.bytes_read,
                    "bytes_written": e.bytes_written,
                    "total": e.total,
                    "bytes_per_second": if secs > 0.0 { (e.bytes_read as f64 / secs).round() } else { 0.0 },
                    "elapsed_seconds": (secs * 1000.0).round() / 1000.0,
                    "cancelled": e.cancelled,
                });
                errln!("{line}");
            }
        })
    });
    let bar_task = show.then(|| {
        let pr = progress.clone();
        tokio::spawn(async move {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            loop {
                if let Some(t) = pr.total() {
                    bar.set_length(t);
                }
                bar.set_position(pr.bytes_read());
                bar.set_message(format!("written {}", indicatif::HumanBytes(pr.bytes_written())));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let mut report = imgpipe::run(spec, progress).await;
    signals.abort();
    if let Some(t) = json_lines {
        // The run is Done: the task prints the last line and ends.
        let _ = t.await;
    }
    if let Some((_, name)) = *CAUGHT.lock().unwrap_or_else(|e| e.into_inner())
        && report.status != Status::Ok
        && let Some(r) = report.reason.as_mut()
    {
        r.push_str(&format!(" ({name})"));
    }
    if let Some(b) = bar_task {
        b.abort();
        {
            use std::io::Write as _;
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }
    report
}

/// SIGINT, SIGTERM (systemd, Nova) and SIGHUP (a closed terminal) cancel the run the same
/// way: every stage stops, the sink is aborted, nothing is published, and the process exits
/// with 128 + the signal number once the cleanup is done. A second signal while the abort runs
/// is noted, not obeyed: the cleanup finishes first.
fn spawn_signal_watch(progress: Arc<Progress>) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            errln!("imgpipe: cannot watch for signals; SIGINT/SIGTERM/SIGHUP would not clean up");
            return;
        };
        loop {
            let (n, name) = tokio::select! {
                _ = int.recv() => (2, "SIGINT"),
                _ = term.recv() => (15, "SIGTERM"),
                _ = hup.recv() => (1, "SIGHUP"),
            };
            let mut caught = CAUGHT.lock().unwrap_or_else(|e| e.into_inner());
            if caught.is_none() {
                *caught = Some((n, name));
                errln!("imgpipe: {name} received; aborting (nothing will be published)");
                progress.cancel();
            } else {
                errln!("imgpipe: {name} received; still cleaning up");
            }
        }
    })
}

/// The signal that cancelled the run, if one did: (number, name).
static CAUGHT: std::sync::Mutex<Option<(i32, &'static str)>> = std::sync::Mutex::new(None);

/// The process exit status for a report: the report's own, or 128 + the signal number when a
/// signal cancelled the run (a run that had already passed every check when the signal came
/// keeps its success).
fn exit_code(report: &RunReport) -> i32 {
    match *CAUGHT.lock().unwrap_or_else(|e| e.into_inner()) {
        Some((n, _)) if report.status != Status::Ok => 128 + n,
        _ => report.exit_code(),
    }
}

/// The human report, on stdout like every result (diagnostics and progress go to stderr);
/// `writes`: the run had a sink (a verify-only run publishes nothing anyway).
fn print_text(r: &RunReport, writes: bool) {
    let status = match r.status {
        Status::Ok => "ok",
        Status::Rejected => "REJECTED",
        Status::Error => "ERROR",
    };
    outln!("status:   {status}");
    if let Some(reason) = &r.reason {
        outln!("reason:   {reason}");
        if r.status != Status::Ok && writes {
            outln!("          nothing was published");
        }
    }
    outln!("source:   {} ({} bytes read)", r.source, r.bytes_read);
    if let Some(f) = &r.format {
        let vs = r
            .virtual_size
            .map(|v| format!(", virtual size {v} bytes"))
            .unwrap_or_default();
        outln!("format:   {f}{vs}");
    }
    for (a, h) in &r.hashes {
        outln!("{a:<9} {h}");
    }
    for p in &r.passed {
        outln!("passed:   {p}");
    }
    for w in &r.warnings {
        outln!("WARNING:  {w}");
    }
    if let Some(s) = &r.sink {
        outln!(
            "sink:     {s} ({} bytes written, {} bytes of zeros left as holes)",
            r.bytes_written,
            r.zero_bytes_skipped
        );
    }
    let rate = if r.seconds > 0.0 {
        r.bytes_read as f64 / r.seconds / 1e6
    } else {
        0.0
    };
    outln!("time:     {:.2} s ({rate:.0} MB/s)", r.seconds);
    for st in &r.stages {
        outln!(
            "  stage {:<40} {:>12} bytes {:>9.0} MB/s busy {:.2} s ({:>3.0}% of the run)",
            st.name,
            st.bytes,
            st.mb_per_s,
            st.busy_seconds,
            st.busy_fraction * 100.0
        );
    }
    if let Some(l) = &r.limiting_stage {
        outln!("limited by: {l}");
    }
}

/// Used by the demo to refer to the sink path.
pub(crate) fn file_sink(path: &Path) -> SinkSpec {
    SinkSpec {
        target: SinkTarget::File(path.to_path_buf()),
        zeroes: None,
    }
}
