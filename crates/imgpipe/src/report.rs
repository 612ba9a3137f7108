//! The run report: one JSON object per run (`imgpipe run --json`).

use std::collections::BTreeMap;

use imgpipe_core::{ErrorKind, Finding, RunOutcome};
use serde::Serialize;

/// Outcome class of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every check passed and the result was published.
    Ok,
    /// A check rejected the image; nothing was published.
    Rejected,
    /// Something else failed (I/O, network, spec); nothing was published.
    Error,
}

/// Per-stage telemetry.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// Stage name.
    pub name: String,
    /// Bytes processed.
    pub bytes: u64,
    /// Seconds spent working.
    pub busy_seconds: f64,
    /// Throughput while busy, MB/s (10^6).
    pub mb_per_s: f64,
    /// Busy time as a share of the run's wall time (0..1): the stage closest to 1 limits
    /// the run.
    pub busy_fraction: f64,
}

/// What `imgpipe run --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// ok / rejected / error.
    pub status: Status,
    /// Why it was not ok.
    pub reason: Option<String>,
    /// The failed check's name (`digest.sha512`, `qcow2.backing_file`, …).
    pub check: Option<String>,
    /// Error kind (`digest_mismatch`, …).
    pub kind: Option<ErrorKind>,
    /// When a failure happened: `before_streaming` (properties, certificates, keys, paths:
    /// no image byte was read) or `streaming` (during or at the end of the pass).
    pub phase: Option<&'static str>,
    /// Source description.
    pub source: String,
    /// Image bytes read.
    pub bytes_read: u64,
    /// Bytes handed to the sink (data written, excluding skipped zero runs).
    pub bytes_written: u64,
    /// Every digest computed, lowercase hex.
    pub hashes: BTreeMap<String, String>,
    /// Detected format.
    pub format: Option<String>,
    /// Virtual disk size.
    pub virtual_size: Option<u64>,
    /// Where the result was published.
    pub sink: Option<String>,
    /// Zero runs skipped (holes) on the sink.
    pub zero_bytes_skipped: u64,
    /// Wall time.
    pub seconds: f64,
    /// Checks that passed.
    pub passed: Vec<String>,
    /// Warnings.
    pub warnings: Vec<String>,
    /// Times the source resumed after a dropped connection.
    pub resumes: u32,
    /// Per-stage throughput.
    pub stages: Vec<StageReport>,
    /// The stage with the largest busy time: the one that limits the run's speed (for a
    /// source or sink this includes time spent waiting on the network or the device).
    pub limiting_stage: Option<String>,
}

impl RunReport {
    /// Build the report from the driver's outcome.
    pub fn from_outcome(o: &RunOutcome) -> Self {
        let mut r = RunReport {
            status: Status::Ok,
            reason: None,
            check: None,
            kind: None,
            phase: None,
            source: o.source.clone(),
            bytes_read: o.bytes_read,
            bytes_written: 0,
            hashes: BTreeMap::new(),
            format: None,
            virtual_size: None,
            sink: None,
            zero_bytes_skipped: 0,
            seconds: o.elapsed.as_secs_f64(),
            passed: vec![],
            warnings: vec![],
            resumes: o.resumes,
            stages: o
                .stages
                .iter()
                .map(|s| StageReport {
                    name: s.name.clone(),
                    bytes: s.bytes,
                    busy_seconds: s.busy.as_secs_f64(),
                    mb_per_s: s.throughput() / 1e6,
                    busy_fraction: if o.elapsed.is_zero() {
                        0.0
                    } else {
                        (s.busy.as_secs_f64() / o.elapsed.as_secs_f64()).min(1.0)
                    },
                })
                .collect(),
            limiting_stage: o
                .stages
                .iter()
                .filter(|s| !s.busy.is_zero())
                .max_by_key(|s| s.busy)
                .map(|s| s.name.clone()),
        };
        for f in &o.findings {
            match f {
                Finding::Digest { algorithm, hex } => {
                    r.hashes.insert(algorithm.clone(), hex.clone());
                }
                Finding::Format {
                    format,
                    virtual_size,
                } => {
                    r.format = Some(format.clone());
                    if virtual_size.is_some() {
                        r.virtual_size = *virtual_size;
                    }
                }
                Finding::Passed { check } => {
                    // One line per check, even when two expectations (the spec's and a cache
                    // sidecar's) passed on one hasher.
                    if !r.passed.contains(check) {
                        r.passed.push(check.clone());
                    }
                }
                Finding::Warning { message } => r.warnings.push(message.clone()),
            }
        }
        match &o.result {
            Ok(sink) => {
                if let Some(s) = sink {
                    r.sink = Some(s.target.clone());
                    r.bytes_written = s.bytes_written + s.zero_bytes_written;
                    r.zero_bytes_skipped = s.zero_bytes_skipped;
                }
            }
            Err(e) => {
                r.status = if e.kind().is_rejection() {
                    Status::Rejected
                } else {
                    Status::Error
                };
                r.reason = Some(e.to_string());
                r.check = e.check_name().map(str::to_string);
                r.kind = Some(e.kind());
                r.phase = Some("streaming");
            }
        }
        r
    }

    /// Process exit status: 0 ok, 3 rejected, 2 spec, 1 other.
    pub fn exit_code(&self) -> i32 {
        match (self.status, self.kind) {
            (Status::Ok, _) => 0,
            (_, Some(k)) => k.exit_code(),
            _ => 1,
        }
    }
}
