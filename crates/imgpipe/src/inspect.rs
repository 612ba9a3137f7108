//! Inspection alone: what `imgpipe inspect` and Python's `imgpipe.inspect` run.

use std::sync::Arc;

use imgpipe_core::{DriverOptions, Error, ErrorKind, Pipeline, Progress, Result};
use imgpipe_format::inspect::Verdict;
use imgpipe_spec::Spec;

use crate::assemble::{inspector, open_source};
use crate::observers::InspectObserver;

/// Read `spec.source` once through the inspector (with `spec.inspect`'s policy) and return its
/// final verdict. Nothing is written; the spec's sink, digests and signature are ignored. `Err`
/// only when the source cannot be read (a rejection is a verdict with violations).
///
/// ```no_run
/// # async fn demo() -> imgpipe::Result<()> {
/// use std::sync::Arc;
/// use imgpipe::{Progress, Spec, inspect};
/// use imgpipe::spec::SourceSpec;
/// let spec = Spec::new(SourceSpec::File("image.qcow2".into()));
/// let v = inspect(&spec, Arc::new(Progress::default())).await?;
/// println!("{} safe={}", v.format, v.is_safe());
/// println!("{}", imgpipe::verdict_json(&v));
/// # Ok(()) }
/// ```
pub async fn inspect(spec: &Spec, progress: Arc<Progress>) -> Result<Verdict> {
    let source = open_source(spec).await?;
    let obs = InspectObserver::new(inspector(spec, source.len_hint()), false);
    let slot = obs.verdict.clone();
    let outcome = Pipeline {
        source,
        observers: vec![Box::new(obs)],
        disk: None,
        options: DriverOptions::default(),
    }
    .run(progress)
    .await;
    outcome.result?;
    let verdict = slot.lock().ok().and_then(|mut g| g.take());
    verdict.ok_or_else(|| Error::new(ErrorKind::Internal, "the inspector gave no verdict"))
}

/// A verdict as the JSON object `imgpipe inspect --json` prints: `format`, `subformat`,
/// `virtual_size`, `safe`, `violations` (`check`, `message`), `bytes_examined`,
/// `partition_table`.
pub fn verdict_json(v: &Verdict) -> serde_json::Value {
    serde_json::json!({
        "format": v.format.name(),
        "subformat": v.subformat,
        "virtual_size": v.virtual_size,
        "safe": v.is_safe(),
        "violations": v.violations.iter().map(|x| serde_json::json!({
            "check": x.check,
            "message": x.message,
        })).collect::<Vec<_>>(),
        "bytes_examined": v.bytes_examined,
        "partition_table": v.partition_table.map(|p| format!("{p:?}").to_ascii_lowercase()),
    })
}
