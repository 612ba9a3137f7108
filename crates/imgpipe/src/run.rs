//! Running a spec: validate it, assemble the plan, stream, settle the cache, report; on a task
//! of its own, so a dropped future cancels the run.

use std::sync::Arc;

use imgpipe_core::{Error, ErrorKind, Finding, Phase, Progress};
use imgpipe_spec::{SourceSpec, Spec};

use crate::assemble;
use crate::report::RunReport;

/// Build and run a spec; the report says what happened (failures included).
///
/// Cancel-safe: the run goes on a task of the current tokio runtime, so dropping this future
/// (a `tokio::time::timeout`, a lost `select!` branch) cancels it exactly as
/// [`Progress::cancel`] does: every stage stops and the sink is aborted (temporary file
/// removed, block device head wiped, RBD temporary image removed, cache fill abandoned), in
/// the background, and nothing is published. Must be called within a tokio runtime.
pub async fn run(spec: &Spec, progress: Arc<Progress>) -> RunReport {
    /// Cancels the run when the caller stops waiting for it (a no-op after completion).
    struct CancelOnDrop {
        progress: Arc<Progress>,
        armed: bool,
    }
    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            if self.armed {
                self.progress.cancel();
            }
        }
    }
    let started = std::time::Instant::now();
    let owned = spec.clone();
    let mut guard = CancelOnDrop {
        progress: progress.clone(),
        armed: true,
    };
    let task = tokio::spawn(async move { run_here(&owned, progress).await });
    let joined = task.await;
    guard.armed = false;
    let report = match joined {
        Ok(report) => report,
        Err(e) => failed_before_streaming(
            spec,
            Error::new(ErrorKind::Internal, format!("the run failed: {e}")),
            started,
        ),
    };
    guard.progress.set_phase(Phase::Done);
    report
}

/// [`run`] on the calling task; the progress ends in [`Phase::Done`] whatever happens.
async fn run_here(spec: &Spec, progress: Arc<Progress>) -> RunReport {
    let report = run_phases(spec, progress.clone()).await;
    progress.set_phase(Phase::Done);
    report
}

async fn run_phases(spec: &Spec, progress: Arc<Progress>) -> RunReport {
    let started = std::time::Instant::now();
    // A spec built in code gets the spec file's checks, every problem listed, before anything
    // is opened or read.
    if let Err(e) = spec.validate() {
        return failed_before_streaming(spec, Error::new(ErrorKind::Spec, e.to_string()), started);
    }
    let built = tokio::select! {
        b = assemble::plan(spec) => b,
        _ = progress.cancelled() => Err(Error::new(ErrorKind::Cancelled, "the run was cancelled")),
    };
    match built {
        Ok((p, warnings, cache_use)) => {
            let mut outcome = p.run(progress).await;
            let cache_findings = cache_use.finish(&outcome).await;
            outcome.findings.extend(cache_findings);
            outcome.findings.extend(
                warnings
                    .into_iter()
                    .map(|message| Finding::Warning { message }),
            );
            RunReport::from_outcome(&outcome)
        }
        Err(e) => failed_before_streaming(spec, e, started),
    }
}

/// The report of a run that failed before its first byte.
fn failed_before_streaming(spec: &Spec, e: Error, started: std::time::Instant) -> RunReport {
    let source = match &spec.source {
        SourceSpec::File(p) => p.display().to_string(),
        SourceSpec::Stdin => "-".into(),
        SourceSpec::Http { url, .. } => imgpipe_io::redact_url(url),
        SourceSpec::Glance(g) => format!("glance:{}", g.image_id),
    };
    let outcome = imgpipe_core::RunOutcome {
        result: Err(e),
        bytes_read: 0,
        findings: vec![],
        stages: vec![],
        source,
        sink: None,
        resumes: 0,
        elapsed: started.elapsed(),
    };
    let mut r = RunReport::from_outcome(&outcome);
    r.phase = Some("before_streaming");
    r
}
