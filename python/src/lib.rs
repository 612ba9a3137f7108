//! `imgpipe._imgpipe`: the native half of the `imgpipe` Python package.
//!
//! The Python layer (`python/imgpipe/__init__.py`) turns a spec argument into text or a path,
//! calls one of the functions here, and maps the outcome onto `Report` and the exception
//! classes. This module does three things only:
//!
//! - parse the spec with the library's parser (so problems read exactly like the CLI's);
//! - run the engine on its own thread and tokio runtime while the calling thread waits with
//!   the GIL released, waking every [`TICK`] to call `progress`, poll the `cancel` event and
//!   run Python's signal handlers (`KeyboardInterrupt` cancels the run);
//! - hand back plain data (tuples, JSON text): no Rust error or panic crosses into Python
//!   other than as a Python exception.
//!
//! A cancel (event, `KeyboardInterrupt`, an exception raised by `progress`) goes through
//! [`Progress::cancel`], so it has the same outcome as a failed run: the engine aborts the
//! sink and nothing is published. The calling thread always waits for the run to end before
//! it returns or raises, so no run outlives its call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use imgpipe::format::Format;
use imgpipe::spec::{SourceSpec, SpecError};
use imgpipe::{Progress, RunReport, Spec};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// How often the waiting thread takes the GIL back (progress, cancel, signals).
const TICK: Duration = Duration::from_millis(100);

/// The counters handed to a `progress` callback.
#[pyclass(frozen, module = "imgpipe", name = "ProgressInfo")]
struct ProgressInfo {
    /// Image bytes read from the source so far.
    #[pyo3(get)]
    bytes_read: u64,
    /// Bytes handed to the sink so far (data and zero runs).
    #[pyo3(get)]
    bytes_written: u64,
    /// Expected image bytes, when the source knows them.
    #[pyo3(get)]
    total: Option<u64>,
    /// `preparing` (no byte read yet: records, certificates, keys), `streaming`,
    /// `finishing` (every byte read; final checks, flush, publish), `cancelling`, `done`.
    #[pyo3(get)]
    stage: &'static str,
    /// Seconds since the call started.
    #[pyo3(get)]
    elapsed: f64,
}

#[pymethods]
impl ProgressInfo {
    fn __repr__(&self) -> String {
        let total = self
            .total
            .map_or_else(|| "None".to_string(), |t| t.to_string());
        format!(
            "ProgressInfo(stage={:?}, bytes_read={}, bytes_written={}, total={total}, elapsed={:.3})",
            self.stage, self.bytes_read, self.bytes_written, self.elapsed
        )
    }
}

/// What a finished call hands to the Python layer.
enum Outcome {
    /// The run ended (any status): its `--json` report and the CLI's exit status.
    Report(String, i32),
    /// `inspect`: the CLI's `inspect --json` object (safe or not).
    Inspection(String),
    /// The job could not run (no runtime, unreadable input for `inspect`): why.
    Failed(String),
}

/// A spec problem list as Python data: `("spec", origin, [(path, line, message), …])`.
fn spec_problems(py: Python<'_>, e: SpecError) -> PyResult<Py<PyAny>> {
    let problems: Vec<(String, usize, String)> = e
        .problems
        .into_iter()
        .map(|p| (p.path, p.line, p.message))
        .collect();
    Ok(("spec", e.origin, problems)
        .into_pyobject(py)?
        .into_any()
        .unbind())
}

/// One usage problem (an `inspect` argument) in the same shape as a spec's.
fn usage_problem(py: Python<'_>, key: &str, message: String) -> PyResult<Py<PyAny>> {
    spec_problems(
        py,
        SpecError {
            origin: "arguments".into(),
            problems: vec![imgpipe::spec::Problem {
                path: key.into(),
                line: 0,
                message,
            }],
        },
    )
}

/// The source for an `inspect`/`verify --input` argument, as the CLI reads it.
fn source_of(input: &str) -> SourceSpec {
    SourceSpec::from_input(input)
}

/// Parse a spec given as a path (`is_path`) or as TOML/JSON text; text resolves relative
/// paths against `base` (the caller's current directory), a file against its own directory.
fn parse_spec(spec: &str, is_path: bool, base: &Path) -> Result<Spec, SpecError> {
    if is_path {
        Spec::load(Path::new(spec))
    } else {
        Spec::from_text(spec, base).map_err(|mut e| {
            e.origin = "<text>".into();
            e
        })
    }
}

/// Run `job` on a new thread with its own tokio runtime and wait for it with the GIL
/// released, waking every [`TICK`] to report progress, poll `cancel` and run signal handlers.
///
/// Returns the job's outcome, or the Python exception that stopped it (`KeyboardInterrupt`,
/// an exception from `progress` or from `cancel.is_set()`), raised only after the job ended
/// (so the sink was aborted before the exception reaches the caller). A job that cannot start
/// or that panicked is an [`Outcome::Failed`] (raised as `imgpipe.PipelineError`).
fn drive<F, Fut>(
    py: Python<'_>,
    progress_cb: Option<Bound<'_, PyAny>>,
    cancel: Option<Bound<'_, PyAny>>,
    job: F,
) -> PyResult<Outcome>
where
    F: FnOnce(Arc<Progress>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Outcome>,
{
    let progress = Arc::new(Progress::default());
    let (tx, mut rx) = mpsc::sync_channel::<Outcome>(1);
    let started = std::time::Instant::now();
    let spawned = {
        let progress = progress.clone();
        std::thread::Builder::new()
            .name("imgpipe-run".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("imgpipe-worker")
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Outcome::Failed(format!(
                            "cannot start the tokio runtime: {e}"
                        )));
                        return;
                    }
                };
                let out = rt.block_on(job(progress));
                // Dropping the runtime waits for the blocking writer threads to finish.
                drop(rt);
                let _ = tx.send(out);
            })
    };
    let worker = match spawned {
        Ok(w) => w,
        Err(e) => return Ok(Outcome::Failed(format!("cannot start the run thread: {e}"))),
    };

    // The Python exception that made this thread cancel the run, raised once it ended.
    let mut interrupt: Option<PyErr> = None;
    let mut cancelled = false;
    let outcome = loop {
        // The receiver is Send but not Sync: move it through the detached closure and back.
        let (got, back) = py.detach(move || (rx.recv_timeout(TICK), rx));
        rx = back;
        match got {
            Ok(o) => break Some(o),
            Err(RecvTimeoutError::Disconnected) => break None,
            Err(RecvTimeoutError::Timeout) => {}
        }
        // Signals first: Ctrl-C must work even when a callback misbehaves.
        if let Err(e) = py.check_signals() {
            if interrupt.is_none() {
                interrupt = Some(e);
            }
            // A second signal while the abort runs is dropped: the cleanup finishes first.
            progress.cancel();
            cancelled = true;
        }
        if !cancelled && let Some(ev) = &cancel {
            match ev.call_method0("is_set").and_then(|v| v.is_truthy()) {
                Ok(true) => {
                    progress.cancel();
                    cancelled = true;
                }
                Ok(false) => {}
                Err(e) => {
                    interrupt = Some(e);
                    progress.cancel();
                    cancelled = true;
                }
            }
        }
        if !cancelled && let Some(cb) = &progress_cb {
            let info = snapshot(&progress, started, false);
            if let Err(e) = Py::new(py, info).and_then(|i| cb.call1((i,))) {
                interrupt = Some(e);
                progress.cancel();
                cancelled = true;
            }
        }
    };
    // The worker sent its outcome (or died): wait for it without holding the GIL.
    let joined = py.detach(|| worker.join());
    let outcome = match (outcome, joined) {
        (Some(o), _) => o,
        (None, Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Outcome::Failed(format!("internal error: the run thread panicked ({what})"))
        }
        (None, Ok(())) => {
            Outcome::Failed("internal error: the run thread ended without an outcome".into())
        }
    };
    if let Some(e) = interrupt {
        return Err(e);
    }
    if let Some(cb) = &progress_cb {
        let info = snapshot(&progress, started, true);
        Py::new(py, info).and_then(|i| cb.call1((i,)))?;
    }
    Ok(outcome)
}

fn snapshot(p: &Progress, started: std::time::Instant, done: bool) -> ProgressInfo {
    let (bytes_read, total) = (p.bytes_read(), p.total());
    // The engine's own phase; `cancelling` while a cancelled run aborts its sink.
    let stage = if done {
        "done"
    } else if p.is_cancelled() {
        "cancelling"
    } else {
        p.phase().name()
    };
    ProgressInfo {
        bytes_read,
        bytes_written: p.bytes_written(),
        total,
        stage,
        elapsed: started.elapsed().as_secs_f64(),
    }
}

fn report_outcome(report: &RunReport) -> Outcome {
    match serde_json::to_string(report) {
        Ok(s) => Outcome::Report(s, report.exit_code()),
        // Serialising plain data cannot fail; if it ever does, say so instead of panicking.
        Err(e) => Outcome::Failed(format!("cannot serialise the report: {e}")),
    }
}

fn outcome_to_py(py: Python<'_>, o: Outcome) -> PyResult<Py<PyAny>> {
    let t = match o {
        Outcome::Report(json, code) => ("report", json, code).into_pyobject(py)?.into_any(),
        Outcome::Inspection(json) => ("inspection", json, 0).into_pyobject(py)?.into_any(),
        Outcome::Failed(msg) => ("error", msg, 1).into_pyobject(py)?.into_any(),
    };
    Ok(t.unbind())
}

/// Run a spec (`mode` "run") or only its checks (`mode` "verify": sink, encryption and cache
/// dropped, the source optionally replaced by `input`).
///
/// Returns `("spec", origin, problems)` when the spec is invalid, `("report", json,
/// exit_status)` when the run ended, `("error", message, 1)` when it could not start.
#[pyfunction]
#[pyo3(signature = (spec, is_path, base, mode, input=None, progress=None, cancel=None))]
#[allow(clippy::too_many_arguments)]
fn run_spec(
    py: Python<'_>,
    spec: &str,
    is_path: bool,
    base: PathBuf,
    mode: &str,
    input: Option<String>,
    progress: Option<Bound<'_, PyAny>>,
    cancel: Option<Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let spec_text = spec.to_string();
    let parsed = py.detach(|| parse_spec(&spec_text, is_path, &base));
    let mut spec = match parsed {
        Ok(s) => s,
        Err(e) => return spec_problems(py, e),
    };
    match mode {
        "run" => {}
        "verify" => {
            if let Some(i) = input {
                spec.source = source_of(&i);
            }
            spec.sink = None;
            spec.encrypt = None;
            spec.cache = None;
        }
        other => {
            return Err(PyRuntimeError::new_err(format!(
                "imgpipe: unknown mode {other:?} (run or verify)"
            )));
        }
    }
    let out = drive(py, progress, cancel, move |p| async move {
        let report = imgpipe::run(&spec, p).await;
        report_outcome(&report)
    })?;
    outcome_to_py(py, out)
}

/// The inspector alone over a file, URL or `-`, as `imgpipe inspect --json` does it.
///
/// Returns `("spec", origin, problems)` for a bad argument, `("inspection", json, 0)` with
/// the verdict (safe or not), `("error", message, 1)` when the bytes could not be read.
#[pyfunction]
#[pyo3(signature = (input, expect=None, allow=None, max_virtual_size=None, progress=None, cancel=None))]
fn inspect(
    py: Python<'_>,
    input: &str,
    expect: Option<String>,
    allow: Option<Vec<String>>,
    max_virtual_size: Option<String>,
    progress: Option<Bound<'_, PyAny>>,
    cancel: Option<Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let mut spec = Spec::new(source_of(input));
    if let Some(e) = expect {
        match e.parse::<Format>() {
            Ok(f) => spec.inspect.disk_format = Some(f),
            Err(err) => return usage_problem(py, "expect", err.to_string()),
        }
    }
    if let Some(list) = allow {
        let mut v = Vec::new();
        for f in list {
            match f.parse::<Format>() {
                Ok(f) => v.push(f),
                Err(err) => return usage_problem(py, "allow", err.to_string()),
            }
        }
        spec.inspect.allowed_formats = Some(v);
    }
    if let Some(m) = max_virtual_size {
        match imgpipe::spec::parse_size(&m) {
            Ok(n) => spec.inspect.max_virtual_size = Some(n),
            Err(err) => return usage_problem(py, "max_virtual_size", err),
        }
    }
    let out = drive(py, progress, cancel, move |p| async move {
        match inspect_job(&spec, p).await {
            Ok(json) => Outcome::Inspection(json),
            Err(msg) => Outcome::Failed(msg),
        }
    })?;
    outcome_to_py(py, out)
}

async fn inspect_job(spec: &Spec, progress: Arc<Progress>) -> Result<String, String> {
    let v = imgpipe::inspect(spec, progress)
        .await
        .map_err(|e| e.to_string())?;
    Ok(imgpipe::verdict_json(&v).to_string())
}

/// The native module; the public API is the `imgpipe` package around it.
#[pymodule]
fn _imgpipe(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run_spec, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_class::<ProgressInfo>()?;
    Ok(())
}
