//! LVM sink: create a logical volume the way Nova does (`lvcreate -L <bytes>b -n <name> <vg>`)
//! or take an existing one, then write the disk through [`BlockSink`] onto its device path.
//!
//! The LVM tools are driven through a [`CommandRunner`]: [`SystemRunner`] runs them for real;
//! [`RecordedRunner`] replays captured outputs in tests. The replay is the one documented
//! exception to "no mocks" in this project: the test machine has no device-mapper, so LVs cannot
//! be activated and the full create → write → remove path cannot run against real LVM here.
//!
//! Failure semantics: an LV this run created is removed (`lvremove -f vg/name`) on abort, after
//! the block sink wiped its first MiB (so a failed removal still leaves nothing bootable); an
//! existing LV only gets its first MiB wiped. A run killed with `SIGKILL` leaves a created LV
//! behind with its first MiB zeroed; the operator (or Nova's cleanup) removes it.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use imgpipe_core::{DiskExtent, DiskInfo, Error, ErrorKind, Result, Sink, SinkReport};

use super::block::{BlockSink, BlockZeroes};

/// What a command printed and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit status; `None` when killed by a signal.
    pub status: Option<i32>,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// An output that succeeded with `stdout` (for recorded runs).
    pub fn ok(stdout: &str) -> Self {
        CommandOutput {
            status: Some(0),
            stdout: stdout.as_bytes().to_vec(),
            stderr: Vec::new(),
        }
    }

    /// An output that failed with `status` and `stderr` (for recorded runs).
    pub fn failed(status: i32, stderr: &str) -> Self {
        CommandOutput {
            status: Some(status),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }
}

/// Runs an external command. `argv[0]` is the program.
///
/// Contract: `Err` only when the command could not be run at all (not found, I/O); a command
/// that ran and failed is an `Ok` output with a non-zero status.
pub trait CommandRunner: Send + Sync {
    /// Run `argv` with standard input closed and wait for it.
    fn run(&self, argv: &[String]) -> io::Result<CommandOutput>;
}

/// Runs commands with [`std::process::Command`] (stdin closed, `LVM_SUPPRESS_FD_WARNINGS=1`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, argv: &[String]) -> io::Result<CommandOutput> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let out = Command::new(prog)
            .args(args)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .stdin(Stdio::null())
            .output()?;
        Ok(CommandOutput {
            status: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

/// One expected command and the output captured from a real run of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedStep {
    /// The exact argv expected.
    pub argv: Vec<String>,
    /// The captured output to replay.
    pub output: CommandOutput,
}

/// Replays captured outputs, in order, for exactly the expected commands; any other command is
/// an error naming what was expected. For tests where the real tool cannot run (no
/// device-mapper on the test machine).
#[derive(Debug, Default)]
pub struct RecordedRunner {
    steps: Mutex<VecDeque<RecordedStep>>,
    calls: Mutex<Vec<Vec<String>>>,
}

impl RecordedRunner {
    /// A runner that expects `steps` in this order.
    pub fn new(steps: Vec<RecordedStep>) -> Self {
        RecordedRunner {
            steps: Mutex::new(steps.into()),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Every command run so far.
    pub fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// How many expected steps were not run.
    pub fn remaining(&self) -> usize {
        self.steps.lock().map(|s| s.len()).unwrap_or(0)
    }
}

impl CommandRunner for RecordedRunner {
    fn run(&self, argv: &[String]) -> io::Result<CommandOutput> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(argv.to_vec());
        }
        let next = self
            .steps
            .lock()
            .map_err(|_| io::Error::other("recorded runner poisoned"))?
            .pop_front();
        match next {
            Some(step) if step.argv == argv => Ok(step.output),
            Some(step) => Err(io::Error::other(format!(
                "recorded runner: expected {:?}, got {argv:?}",
                step.argv
            ))),
            None => Err(io::Error::other(format!(
                "recorded runner: no more steps, got {argv:?}"
            ))),
        }
    }
}

/// One logical volume as `lvs` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvInfo {
    /// LV name.
    pub lv_name: String,
    /// Volume group name.
    pub vg_name: String,
    /// Size in bytes.
    pub lv_size: u64,
    /// Device path (`/dev/vg/lv`); `None` when `lvs` reports none (hidden LVs).
    pub lv_path: Option<PathBuf>,
}

/// Check a VG or LV name against LVM's rules: 1–127 characters from `[A-Za-z0-9+_.-]`, not
/// starting with `-`, not `.` or `..`. Keeps names from being read as options or paths.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'_' | b'.' | b'-'));
    if name.is_empty()
        || name.len() > 127
        || !ok_chars
        || name.starts_with('-')
        || name == "."
        || name == ".."
    {
        return Err(Error::check(
            ErrorKind::Spec,
            "lvm.name",
            format!(
                "invalid {what} name {name:?}: allowed are 1-127 characters from \
                 [A-Za-z0-9+_.-], not starting with '-', not '.' or '..'"
            ),
        ));
    }
    Ok(())
}

fn field<'a>(obj: &'a serde_json::Value, key: &str) -> Result<&'a str> {
    obj.get(key).and_then(|v| v.as_str()).ok_or_else(|| {
        Error::check(
            ErrorKind::Internal,
            "lvm.lvs_json",
            format!("lvs output: an lv entry lacks the string field {key:?}: {obj}"),
        )
    })
}

/// Parse `lvs --reportformat json --units b --nosuffix -o lv_name,lv_size,lv_path,vg_name`.
pub fn parse_lvs_json(json: &[u8]) -> Result<Vec<LvInfo>> {
    let bad = |msg: String| Error::check(ErrorKind::Internal, "lvm.lvs_json", msg);
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| bad(format!("lvs output is not JSON: {e}")))?;
    let reports = v
        .get("report")
        .and_then(|r| r.as_array())
        .ok_or_else(|| bad("lvs output has no \"report\" array".into()))?;
    let mut out = Vec::new();
    for r in reports {
        let Some(lvs) = r.get("lv") else { continue };
        let lvs = lvs
            .as_array()
            .ok_or_else(|| bad("lvs output: \"lv\" is not an array".into()))?;
        for lv in lvs {
            let size = field(lv, "lv_size")?;
            let lv_size = size.trim().parse::<u64>().map_err(|_| {
                bad(format!(
                    "lvs output: lv_size {size:?} is not a byte count (run with --units b \
                     --nosuffix)"
                ))
            })?;
            let path = field(lv, "lv_path")?;
            out.push(LvInfo {
                lv_name: field(lv, "lv_name")?.to_string(),
                vg_name: field(lv, "vg_name")?.to_string(),
                lv_size,
                lv_path: (!path.is_empty()).then(|| PathBuf::from(path)),
            });
        }
    }
    Ok(out)
}

/// The LVM commands imgpipe runs, built and parsed in one place.
#[derive(Clone)]
pub struct Lvm {
    runner: Arc<dyn CommandRunner>,
    create_args: Vec<String>,
}

impl std::fmt::Debug for Lvm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lvm")
            .field("create_args", &self.create_args)
            .finish_non_exhaustive()
    }
}

fn s(x: &str) -> String {
    x.to_string()
}

impl Lvm {
    /// Commands run by `runner`.
    pub fn new(runner: Arc<dyn CommandRunner>) -> Self {
        Lvm {
            runner,
            create_args: Vec::new(),
        }
    }

    /// Commands run for real.
    pub fn system() -> Self {
        Lvm::new(Arc::new(SystemRunner))
    }

    /// Extra `lvcreate` arguments placed right after `lvcreate` (e.g. `--driverloaded n -an
    /// -Zn` to write metadata only where device-mapper is missing, or `-y`).
    pub fn with_create_args(mut self, args: Vec<String>) -> Self {
        self.create_args = args;
        self
    }

    /// `lvcreate [extra] -L <bytes>b -n <name> <vg>` (Nova's command). `bytes` is rounded up to
    /// a multiple of 512, which LVM requires; LVM itself rounds up to whole extents.
    pub fn lvcreate_argv(&self, vg: &str, name: &str, bytes: u64) -> Result<Vec<String>> {
        validate_name("volume group", vg)?;
        validate_name("logical volume", name)?;
        if bytes == 0 {
            return Err(Error::check(
                ErrorKind::Spec,
                "lvm.size",
                format!("cannot create {vg}/{name} with size 0"),
            ));
        }
        let bytes = bytes.checked_next_multiple_of(512).ok_or_else(|| {
            Error::check(
                ErrorKind::Spec,
                "lvm.size",
                format!("LV size {bytes} overflows"),
            )
        })?;
        let mut v = vec![s("lvcreate")];
        v.extend(self.create_args.iter().cloned());
        v.extend([s("-L"), format!("{bytes}b"), s("-n"), s(name), s(vg)]);
        Ok(v)
    }

    /// `lvs --reportformat json --units b --nosuffix -o lv_name,lv_size,lv_path,vg_name <vg>`.
    pub fn lvs_argv(vg: &str) -> Result<Vec<String>> {
        validate_name("volume group", vg)?;
        Ok(vec![
            s("lvs"),
            s("--reportformat"),
            s("json"),
            s("--units"),
            s("b"),
            s("--nosuffix"),
            s("-o"),
            s("lv_name,lv_size,lv_path,vg_name"),
            s(vg),
        ])
    }

    /// `lvremove -f <vg>/<name>`.
    pub fn lvremove_argv(vg: &str, name: &str) -> Result<Vec<String>> {
        validate_name("volume group", vg)?;
        validate_name("logical volume", name)?;
        Ok(vec![s("lvremove"), s("-f"), format!("{vg}/{name}")])
    }

    fn run(&self, argv: &[String]) -> Result<CommandOutput> {
        self.runner
            .run(argv)
            .map_err(|e| Error::io(format!("cannot run {}", argv.join(" ")), e))
    }

    fn failed(argv: &[String], out: &CommandOutput, kind: ErrorKind, check: &str) -> Error {
        Error::check(
            kind,
            check,
            format!(
                "`{}` failed (status {}): {}",
                argv.join(" "),
                out.status
                    .map_or_else(|| "killed".to_string(), |s| s.to_string()),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
    }

    /// Create `vg/name` of at least `bytes` bytes.
    pub fn create(&self, vg: &str, name: &str, bytes: u64) -> Result<()> {
        let argv = self.lvcreate_argv(vg, name, bytes)?;
        let out = self.run(&argv)?;
        if !out.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let kind = if err.contains("insufficient free space") {
                ErrorKind::LimitExceeded
            } else if err.contains("already exists") || err.contains("not found") {
                ErrorKind::Spec
            } else {
                ErrorKind::Io
            };
            return Err(Self::failed(&argv, &out, kind, "lvm.lvcreate"));
        }
        Ok(())
    }

    /// Every LV of `vg`.
    pub fn list(&self, vg: &str) -> Result<Vec<LvInfo>> {
        let argv = Self::lvs_argv(vg)?;
        let out = self.run(&argv)?;
        if !out.success() {
            let kind = if String::from_utf8_lossy(&out.stderr).contains("not found") {
                ErrorKind::Spec
            } else {
                ErrorKind::Io
            };
            return Err(Self::failed(&argv, &out, kind, "lvm.lvs"));
        }
        parse_lvs_json(&out.stdout)
    }

    /// `vg/name` if it exists.
    pub fn find(&self, vg: &str, name: &str) -> Result<Option<LvInfo>> {
        validate_name("logical volume", name)?;
        Ok(self.list(vg)?.into_iter().find(|lv| lv.lv_name == name))
    }

    /// Remove `vg/name` (forced: no prompt).
    pub fn remove(&self, vg: &str, name: &str) -> Result<()> {
        let argv = Self::lvremove_argv(vg, name)?;
        let out = self.run(&argv)?;
        if !out.success() {
            return Err(Self::failed(&argv, &out, ErrorKind::Io, "lvm.lvremove"));
        }
        Ok(())
    }
}

/// Which LV the sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LvTarget {
    /// Create `vg/name` in `begin`; refused if it already exists. `size` defaults to the disk
    /// size from `DiskInfo`.
    New {
        /// Volume group.
        vg: String,
        /// LV name (Nova: `<instance uuid>_disk`).
        name: String,
        /// Size in bytes.
        size: Option<u64>,
    },
    /// Write an LV that exists already (never removed; its first MiB is wiped on abort).
    Existing {
        /// Volume group.
        vg: String,
        /// LV name.
        name: String,
    },
}

impl LvTarget {
    fn names(&self) -> (&str, &str) {
        match self {
            LvTarget::New { vg, name, .. } | LvTarget::Existing { vg, name } => (vg, name),
        }
    }
}

/// Maps an LV to the block device to write (default: its `lv_path`).
pub type DeviceResolver = Box<dyn Fn(&LvInfo) -> Result<PathBuf> + Send + Sync>;

/// Creates (or takes) an LV and writes the disk onto it through [`BlockSink`].
pub struct LvmSink {
    lvm: Lvm,
    target: LvTarget,
    zeroes: BlockZeroes,
    resolver: Option<DeviceResolver>,
    created: bool,
    block: Option<Box<BlockSink>>,
}

impl std::fmt::Debug for LvmSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LvmSink")
            .field("target", &self.target)
            .field("zeroes", &self.zeroes)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl LvmSink {
    /// Validate names and check (with `lvs`, a blocking call) that a `New` LV does not exist
    /// yet and an `Existing` one does. Nothing is created until `begin`.
    ///
    /// `zeroes`: a freshly created thick LV holds whatever the PV held before, so
    /// [`BlockZeroes::WriteZeroes`] is the safe choice; [`BlockZeroes::Skip`] only for LVs
    /// known to read zeros (thin LVs).
    pub fn open(lvm: Lvm, target: LvTarget, zeroes: BlockZeroes) -> Result<Self> {
        let (vg, name) = target.names();
        validate_name("volume group", vg)?;
        validate_name("logical volume", name)?;
        let found = lvm.find(vg, name)?;
        match (&target, found) {
            (LvTarget::New { .. }, Some(lv)) => {
                return Err(Error::check(
                    ErrorKind::Spec,
                    "lvm.exists",
                    format!(
                        "logical volume {vg}/{name} already exists ({} bytes); refusing to \
                         create over it (write an existing LV as a device sink instead)",
                        lv.lv_size
                    ),
                ));
            }
            (LvTarget::Existing { .. }, None) => {
                return Err(Error::check(
                    ErrorKind::Spec,
                    "lvm.missing",
                    format!("logical volume {vg}/{name} does not exist"),
                ));
            }
            _ => {}
        }
        Ok(LvmSink {
            lvm,
            target,
            zeroes,
            resolver: None,
            created: false,
            block: None,
        })
    }

    /// Write to the device `f` returns for the LV instead of its `lv_path`. For environments
    /// where LVs cannot be activated (tests expose the LV's extents as a loop device).
    pub fn with_device_resolver(mut self, f: DeviceResolver) -> Self {
        self.resolver = Some(f);
        self
    }

    /// Whether this run created the LV (and will remove it on abort).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Warnings of the underlying block sink (after `begin`).
    pub fn warnings(&self) -> Vec<String> {
        self.block
            .as_ref()
            .map(|b| b.warnings())
            .unwrap_or_default()
    }

    /// Blocking part of `begin`: create the LV if asked, resolve and open its device.
    fn prepare(&mut self, info: &DiskInfo) -> Result<BlockSink> {
        let (vg, name) = {
            let (v, n) = self.target.names();
            (v.to_string(), n.to_string())
        };
        if let LvTarget::New { size, .. } = &self.target {
            let bytes = size.or(info.size).ok_or_else(|| {
                Error::check(
                    ErrorKind::Spec,
                    "lvm.size",
                    format!(
                        "cannot create {vg}/{name}: no size given and the disk size is not \
                         known before writing"
                    ),
                )
            })?;
            self.lvm.create(&vg, &name, bytes)?;
            self.created = true;
        }
        let lv = self.lvm.find(&vg, &name)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Io,
                format!("logical volume {vg}/{name} is not listed by lvs after lvcreate"),
            )
        })?;
        let path = match &self.resolver {
            Some(f) => f(&lv)?,
            None => lv.lv_path.clone().ok_or_else(|| {
                Error::new(
                    ErrorKind::Io,
                    format!("lvs reports no device path for {vg}/{name}"),
                )
            })?,
        };
        BlockSink::open(&path, self.zeroes)
    }

    fn lv_name(&self) -> String {
        let (vg, name) = self.target.names();
        format!("{vg}/{name}")
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("LVM worker failed: {e}")))?
}

#[async_trait]
impl Sink for LvmSink {
    fn describe(&self) -> String {
        format!("lvm:{}", self.lv_name())
    }

    async fn begin(&mut self, info: &DiskInfo) -> Result<()> {
        let mut me = LvmSink {
            lvm: self.lvm.clone(),
            target: self.target.clone(),
            zeroes: self.zeroes,
            resolver: self.resolver.take(),
            created: false,
            block: None,
        };
        let i = info.clone();
        let (me, r) = tokio::task::spawn_blocking(move || {
            let r = me.prepare(&i);
            (me, r)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("LVM worker failed: {e}")))?;
        self.resolver = me.resolver;
        self.created = me.created;
        let mut block = Box::new(r?);
        block.begin(info).await?;
        self.block = Some(block);
        Ok(())
    }

    async fn write(&mut self, extent: DiskExtent) -> Result<()> {
        match self.block.as_mut() {
            Some(b) => b.write(extent).await,
            None => Err(Error::new(
                ErrorKind::Internal,
                format!("LVM sink {} written before begin", self.lv_name()),
            )),
        }
    }

    async fn finish(self: Box<Self>) -> Result<SinkReport> {
        let name = self.lv_name();
        let Some(block) = self.block else {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("LVM sink {name} finished before begin"),
            ));
        };
        match block.finish().await {
            Ok(mut report) => {
                report.target = format!("lvm:{name} ({})", report.target);
                Ok(report)
            }
            Err(e) if self.created => {
                // finish failed: the disk is not published; do not leave the new LV behind.
                let (lvm, (vg, lv)) = (self.lvm.clone(), self.target.names());
                let (vg, lv) = (vg.to_string(), lv.to_string());
                Err(match blocking(move || lvm.remove(&vg, &lv)).await {
                    Ok(()) => e,
                    Err(r) => super::block::with_note(
                        e,
                        &format!("removing the logical volume {name} it created failed too: {r}"),
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        let wiped = match self.block {
            Some(b) => b.abort().await,
            None => Ok(()),
        };
        if self.created {
            let (vg, lv) = self.target.names();
            let (vg, lv, lvm) = (vg.to_string(), lv.to_string(), self.lvm.clone());
            blocking(move || lvm.remove(&vg, &lv)).await?;
        }
        wiped
    }
}

/// The device path LVM gives `vg/name` (`/dev/<vg>/<name>`), for callers that already know the
/// LV exists and want a [`BlockSink`] directly.
pub fn lv_device_path(vg: &str, name: &str) -> Result<PathBuf> {
    validate_name("volume group", vg)?;
    validate_name("logical volume", name)?;
    Ok(Path::new("/dev").join(vg).join(name))
}
