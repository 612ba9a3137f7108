//! The single-pass pipeline driver.
//!
//! ```text
//!              ┌─► observer thread (hash:sha512) ──┐
//! source task ─┼─► observer thread (hash:sha256) ──┼─► verdicts ─┐
//!  (async)     └─► disk-stage thread (inspect → decode → encrypt)│
//!                         │ SinkOps (bounded)                    ▼
//!                         └──────────────► sink task ──► finish() only if every verdict passed
//! ```
//!
//! Each chunk is read once and handed to every consumer as a reference-counted [`Chunk`]
//! (no copies). Every link is a bounded channel, so a slow stage slows the source
//! (backpressure) and memory stays bounded by `queue_depth × chunk size` whatever the image
//! size. CPU stages run on their own OS threads; the source and the sink are async.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, ErrorKind, Result};
use crate::stage::{
    Chunk, DiskInfo, DiskStage, Finding, Observer, Sink, SinkOp, SinkReport, Source,
};

/// Tuning knobs of the driver. The defaults keep memory well under 64 MiB.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// Chunks queued per consumer before the source waits.
    pub queue_depth: usize,
    /// Sink operations queued before the disk stage waits.
    pub sink_queue_depth: usize,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            queue_depth: 4,
            sink_queue_depth: 8,
        }
    }
}

/// Where a run stands. Phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Phase {
    /// Building the pipeline: record, keys, certificates, cache lookup, first request.
    Preparing,
    /// Bytes flow: read, inspected, hashed, decoded, encrypted, written.
    Streaming,
    /// Every byte was read: final verdicts, then the sink publishes (fsync, rename) or aborts.
    Finishing,
    /// The run has ended; its report is ready.
    Done,
}

impl Phase {
    /// The phase's name as reports and events spell it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Preparing => "preparing",
            Phase::Streaming => "streaming",
            Phase::Finishing => "finishing",
            Phase::Done => "done",
        }
    }
}

/// One progress snapshot: what [`Progress::events`] delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ProgressEvent {
    /// Where the run stands.
    pub phase: Phase,
    /// Image bytes read from the source so far.
    pub bytes_read: u64,
    /// Bytes handed to the sink so far.
    pub bytes_written: u64,
    /// Expected total image bytes, if the source knows it.
    pub total: Option<u64>,
    /// Whether cancellation was requested.
    pub cancelled: bool,
}

/// Live counters a caller can poll for progress while a run goes on, the run's [`Phase`], a
/// stream of [`ProgressEvent`]s, and the cancel switch.
#[derive(Debug)]
pub struct Progress {
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    total: AtomicU64,
    cancel: watch::Sender<bool>,
    phase: watch::Sender<Phase>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            total: AtomicU64::new(u64::MAX),
            cancel: watch::Sender::new(false),
            phase: watch::Sender::new(Phase::Preparing),
        }
    }
}

impl Progress {
    /// Image bytes read from the source so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }
    /// Bytes handed to the sink so far (data and zero runs).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }
    /// Expected total image bytes, if the source knows it.
    pub fn total(&self) -> Option<u64> {
        match self.total.load(Ordering::Relaxed) {
            u64::MAX => None,
            t => Some(t),
        }
    }
    /// Ask the run to stop; it aborts the sink and ends with [`ErrorKind::Cancelled`].
    pub fn cancel(&self) {
        self.cancel.send_replace(true);
    }
    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }
    /// Where the run stands.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }
    /// Move the run to `phase` (the engine does this; a phase never moves backwards).
    pub fn set_phase(&self, phase: Phase) {
        self.phase.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }
    /// The counters and the phase, now.
    pub fn snapshot(&self) -> ProgressEvent {
        ProgressEvent {
            phase: self.phase(),
            bytes_read: self.bytes_read(),
            bytes_written: self.bytes_written(),
            total: self.total(),
            cancelled: self.is_cancelled(),
        }
    }
    /// Progress as events: a snapshot whenever the phase changed (always delivered; changes in
    /// quick succession may arrive as one) and every `every` in between (dropped when the
    /// receiver lags), ending with the [`Phase::Done`] snapshot. Needs a tokio runtime; nothing on the data path waits for the receiver.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use imgpipe_core::{Phase, Progress};
    /// let progress = Arc::new(Progress::default());
    /// let mut events = progress.events(Duration::from_millis(100));
    /// progress.set_phase(Phase::Done); // the engine does this at the end of a run
    /// let mut last = None;
    /// while let Some(e) = events.recv().await {
    ///     last = Some(e.phase);
    /// }
    /// assert_eq!(last, Some(Phase::Done));
    /// # }
    /// ```
    pub fn events(self: &Arc<Self>, every: Duration) -> tokio::sync::mpsc::Receiver<ProgressEvent> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let me = self.clone();
        let mut phases = self.phase.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let changed = tokio::select! {
                    r = phases.changed() => r.is_ok(),
                    _ = tick.tick() => false,
                };
                let e = me.snapshot();
                if changed || e.phase == Phase::Done {
                    if tx.send(e).await.is_err() || e.phase == Phase::Done {
                        return;
                    }
                } else if tx.try_send(e).is_err() && tx.is_closed() {
                    return;
                }
            }
        });
        rx
    }
    /// Resolves once cancellation is requested (at once if it already was).
    pub async fn cancelled(&self) {
        let mut rx = self.cancel.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// Time and bytes spent in one stage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StageStats {
    /// Stage name.
    pub name: String,
    /// Bytes the stage processed.
    pub bytes: u64,
    /// Time the stage spent working (not waiting for input).
    pub busy: Duration,
}

impl StageStats {
    /// Throughput while busy, bytes per second.
    pub fn throughput(&self) -> f64 {
        let s = self.busy.as_secs_f64();
        if s > 0.0 { self.bytes as f64 / s } else { 0.0 }
    }
}

/// A fully assembled pipeline, ready to run.
pub struct Pipeline {
    /// Where the image bytes come from.
    pub source: Box<dyn Source>,
    /// Consumers of the image bytes (hashers, inspector when nothing is written, …).
    pub observers: Vec<Box<dyn Observer>>,
    /// The path to a disk: the bridge stage and the sink. `None` for verify-only runs.
    pub disk: Option<(Box<dyn DiskStage>, Box<dyn Sink>)>,
    /// Driver tuning.
    pub options: DriverOptions,
}

/// Everything a run produced, success or not.
#[derive(Debug)]
pub struct RunOutcome {
    /// `Ok` with the sink's report (or `None` without a sink) when every verdict passed and the
    /// result was published; otherwise the first failure (the sink was aborted).
    pub result: Result<Option<SinkReport>>,
    /// Image bytes read from the source.
    pub bytes_read: u64,
    /// What the stages found (digests, format, passed checks, warnings), in stage order.
    pub findings: Vec<Finding>,
    /// Per-stage time and bytes.
    pub stages: Vec<StageStats>,
    /// Source description.
    pub source: String,
    /// Sink description.
    pub sink: Option<String>,
    /// Times the source resumed after a dropped connection.
    pub resumes: u32,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Failures collected from all stages; the first real one (not a consequence) wins.
#[derive(Default)]
struct Failures {
    list: Mutex<Vec<(u64, Error)>>,
    seq: AtomicU64,
    failed: AtomicBool,
}

impl Failures {
    fn record(&self, e: Error) {
        self.failed.store(true, Ordering::SeqCst);
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut l) = self.list.lock() {
            l.push((n, e));
        }
    }
    fn any(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
    fn take_first(&self) -> Option<Error> {
        let mut l = self.list.lock().ok()?;
        let mut v: Vec<(u64, Error)> = std::mem::take(&mut *l);
        v.sort_by_key(|(n, _)| *n);
        let pos = v
            .iter()
            .position(|(_, e)| e.kind() != ErrorKind::Cancelled)
            .unwrap_or(0);
        if v.is_empty() {
            None
        } else {
            Some(v.swap_remove(pos).1)
        }
    }
}

/// State shared by the driver and its threads.
struct Shared {
    failures: Failures,
    /// Set to the total byte count when the source reached its end normally.
    eof_total: OnceLock<u64>,
    progress: Arc<Progress>,
}

type StageResult = (StageStats, Option<Vec<Finding>>);

fn spawn_observer(
    mut obs: Box<dyn Observer>,
    mut rx: mpsc::Receiver<Chunk>,
    shared: Arc<Shared>,
) -> Result<oneshot::Receiver<StageResult>> {
    let (tx, done) = oneshot::channel();
    let name = obs.name();
    std::thread::Builder::new()
        .name(format!("imgpipe-{name}"))
        .spawn(move || {
            let mut stats = StageStats {
                name: name.clone(),
                bytes: 0,
                busy: Duration::ZERO,
            };
            let mut ok = true;
            while let Some(chunk) = rx.blocking_recv() {
                let t = Instant::now();
                let r = obs.update(&chunk);
                stats.busy += t.elapsed();
                stats.bytes += chunk.data.len() as u64;
                if let Err(e) = r {
                    shared
                        .failures
                        .record(e.with_stage(&name).with_offset(chunk.offset));
                    ok = false;
                    break;
                }
            }
            drop(rx);
            let findings = match (ok, shared.eof_total.get()) {
                (true, Some(total)) => {
                    let t = Instant::now();
                    let r = obs.finish(*total);
                    stats.busy += t.elapsed();
                    match r {
                        Ok(f) => Some(f),
                        Err(e) => {
                            shared.failures.record(e.with_stage(&name));
                            None
                        }
                    }
                }
                _ => None,
            };
            let _ = tx.send((stats, findings));
        })
        .map_err(|e| Error::io("cannot start a stage thread", e))?;
    Ok(done)
}

fn spawn_disk_stage(
    mut stage: Box<dyn DiskStage>,
    mut rx: mpsc::Receiver<Chunk>,
    ops: mpsc::Sender<SinkOp>,
    shared: Arc<Shared>,
) -> Result<oneshot::Receiver<StageResult>> {
    let (tx, done) = oneshot::channel();
    let name = stage.name();
    std::thread::Builder::new()
        .name("imgpipe-disk".into())
        .spawn(move || {
            let mut stats = StageStats {
                name: name.clone(),
                bytes: 0,
                busy: Duration::ZERO,
            };
            let mut out = Vec::new();
            let mut ok = true;
            // Hand ops to the sink; false when the sink is gone (it recorded why).
            let send_all = |out: &mut Vec<SinkOp>| -> bool {
                out.drain(..).all(|op| ops.blocking_send(op).is_ok())
            };
            while let Some(chunk) = rx.blocking_recv() {
                let t = Instant::now();
                let r = stage.feed(&chunk, &mut out);
                stats.busy += t.elapsed();
                stats.bytes += chunk.data.len() as u64;
                if let Err(e) = r {
                    shared
                        .failures
                        .record(e.with_stage(&name).with_offset(chunk.offset));
                    ok = false;
                    break;
                }
                if !send_all(&mut out) {
                    ok = false;
                    break;
                }
            }
            drop(rx);
            let findings = if ok && shared.eof_total.get().is_some() && !shared.failures.any() {
                let t = Instant::now();
                let r = stage.finish(&mut out);
                stats.busy += t.elapsed();
                match r {
                    Ok(f) => send_all(&mut out).then_some(f),
                    Err(e) => {
                        shared.failures.record(e.with_stage(&name));
                        None
                    }
                }
            } else {
                None
            };
            drop(ops);
            let _ = tx.send((stats, findings));
        })
        .map_err(|e| Error::io("cannot start the disk stage thread", e))?;
    Ok(done)
}

/// The sink, shared with the driver so that it can still be aborted when a sink method
/// panics (the lock is released while the panic unwinds the task).
type SharedSink = Arc<tokio::sync::Mutex<Option<Box<dyn Sink>>>>;

async fn sink_task(
    slot: SharedSink,
    mut rx: mpsc::Receiver<SinkOp>,
    shared: Arc<Shared>,
) -> StageStats {
    let mut guard = slot.lock().await;
    let Some(sink) = guard.as_mut() else {
        return StageStats {
            name: "sink".into(),
            bytes: 0,
            busy: Duration::ZERO,
        };
    };
    let name = format!("sink:{}", sink.describe());
    let mut stats = StageStats {
        name: name.clone(),
        bytes: 0,
        busy: Duration::ZERO,
    };
    let mut begun = false;
    while let Some(op) = rx.recv().await {
        let t = Instant::now();
        let r = match op {
            SinkOp::Begin(info) if !begun => {
                begun = true;
                sink.begin(&info).await
            }
            SinkOp::Begin(_) => Err(Error::new(
                ErrorKind::Internal,
                "the disk stage announced the disk geometry twice",
            )),
            SinkOp::Write(ext) => {
                let r = if begun {
                    Ok(())
                } else {
                    begun = true;
                    sink.begin(&DiskInfo::default()).await
                };
                let n = ext.len();
                let r = match r {
                    Ok(()) => sink.write(ext).await,
                    Err(e) => Err(e),
                };
                stats.bytes += n;
                shared
                    .progress
                    .bytes_written
                    .fetch_add(n, Ordering::Relaxed);
                r
            }
        };
        stats.busy += t.elapsed();
        if let Err(e) = r {
            shared.failures.record(e.with_stage(&name));
            break;
        }
    }
    stats
}

impl Pipeline {
    /// Run the pipeline to the end: read every byte once, fan it out, and publish only when
    /// every verdict passed. Never panics on stage failures; see [`RunOutcome::result`].
    pub async fn run(self, progress: Arc<Progress>) -> RunOutcome {
        let start = Instant::now();
        let Pipeline {
            mut source,
            observers,
            disk,
            options,
        } = self;
        let shared = Arc::new(Shared {
            failures: Failures::default(),
            eof_total: OnceLock::new(),
            progress: progress.clone(),
        });
        let source_name = source.describe();
        if let Some(t) = source.len_hint() {
            progress.total.store(t, Ordering::Relaxed);
        }
        let depth = options.queue_depth.max(1);

        let mut senders: Vec<mpsc::Sender<Chunk>> = Vec::new();
        let mut waits: Vec<oneshot::Receiver<StageResult>> = Vec::new();
        let mut startup_error = None;
        for obs in observers {
            let (tx, rx) = mpsc::channel(depth);
            match spawn_observer(obs, rx, shared.clone()) {
                Ok(w) => {
                    senders.push(tx);
                    waits.push(w);
                }
                Err(e) => startup_error = Some(e),
            }
        }
        let mut sink_name = None;
        let mut disk_wait = None;
        let mut sink_join = None;
        if let Some((stage, sink)) = disk {
            sink_name = Some(sink.describe());
            let (tx, rx) = mpsc::channel(depth);
            let (op_tx, op_rx) = mpsc::channel(options.sink_queue_depth.max(1));
            match spawn_disk_stage(stage, rx, op_tx, shared.clone()) {
                Ok(w) => {
                    senders.push(tx);
                    disk_wait = Some(w);
                }
                Err(e) => startup_error = Some(e),
            }
            let slot: SharedSink = Arc::new(tokio::sync::Mutex::new(Some(sink)));
            sink_join = Some((
                slot.clone(),
                tokio::spawn(sink_task(slot, op_rx, shared.clone())),
            ));
        }
        if let Some(e) = startup_error {
            shared.failures.record(e);
        }

        // The source loop: the only place bytes enter the pipeline.
        let mut offset = 0u64;
        let mut source_stats = StageStats {
            name: format!("source:{source_name}"),
            bytes: 0,
            busy: Duration::ZERO,
        };
        let mut cancel = progress.cancel.subscribe();
        progress.set_phase(Phase::Streaming);
        while !shared.failures.any() {
            let t = Instant::now();
            let next = tokio::select! {
                r = source.read() => r,
                _ = cancel.wait_for(|c| *c) => Err(Error::new(ErrorKind::Cancelled, "the run was cancelled")),
            };
            source_stats.busy += t.elapsed();
            match next {
                Ok(Some(data)) => {
                    if data.is_empty() {
                        continue;
                    }
                    let chunk = Chunk { offset, data };
                    offset = chunk.end();
                    source_stats.bytes = offset;
                    progress.bytes_read.store(offset, Ordering::Relaxed);
                    for tx in &senders {
                        // A closed channel means that consumer failed and recorded why. A
                        // consumer that cannot keep up (a hung device) does not delay a cancel.
                        tokio::select! {
                            _ = tx.send(chunk.clone()) => {}
                            _ = cancel.wait_for(|c| *c) => {
                                shared.failures.record(
                                    Error::new(ErrorKind::Cancelled, "the run was cancelled")
                                        .with_stage("source")
                                        .with_offset(offset),
                                );
                                break;
                            }
                        }
                    }
                }
                Ok(None) => {
                    let _ = shared.eof_total.set(offset);
                    break;
                }
                Err(e) => {
                    shared
                        .failures
                        .record(e.with_stage("source").with_offset(offset));
                    break;
                }
            }
        }
        drop(senders);
        progress.set_phase(Phase::Finishing);
        let resumes = source.resumes();

        let mut stages = vec![source_stats];
        let mut findings = Vec::new();
        for w in waits.into_iter().chain(disk_wait) {
            match w.await {
                Ok((stats, f)) => {
                    stages.push(stats);
                    findings.extend(f.unwrap_or_default());
                }
                Err(_) => shared.failures.record(Error::new(
                    ErrorKind::Internal,
                    "a stage thread ended without reporting (it panicked)",
                )),
            }
        }
        let mut sink = None;
        if let Some((slot, j)) = sink_join {
            match j.await {
                Ok(stats) => stages.push(stats),
                Err(e) => shared.failures.record(Error::new(
                    ErrorKind::Internal,
                    format!("the sink task failed: {e}"),
                )),
            }
            // Also after a panic: the sink is still there to be aborted.
            sink = slot.lock().await.take();
        }

        let result = match shared.failures.take_first() {
            Some(err) => {
                // The original failure stays the reason; an abort failure is added to it.
                if let Some(s) = sink
                    && let Err(abort_err) = s.abort().await
                {
                    findings.push(Finding::Warning {
                        message: format!("cleaning up the sink failed too: {abort_err}"),
                    });
                }
                Err(err)
            }
            None => match sink {
                Some(s) => s.finish().await.map(Some),
                None => Ok(None),
            },
        };
        RunOutcome {
            result,
            bytes_read: offset,
            findings,
            stages,
            source: source_name,
            sink: sink_name,
            resumes,
            elapsed: start.elapsed(),
        }
    }
}
