//! A panic in any stage (observer thread, disk stage thread, sink task) ends the run with an
//! error and reaches the sink's `abort`, never its `finish`; cancelling while a consumer is
//! stuck on a full queue ends the run too. The stages here are test doubles of the engine's own
//! traits (no outside peer is involved): they count calls and panic on demand.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use imgpipe_core::*;

/// Serves `n` chunks of 64 KiB, then the end (or never ends when `endless`).
struct Chunks {
    left: usize,
    endless: bool,
}

#[async_trait]
impl Source for Chunks {
    fn describe(&self) -> String {
        "chunks".into()
    }
    fn len_hint(&self) -> Option<u64> {
        None
    }
    async fn read(&mut self) -> Result<Option<Bytes>> {
        if self.left == 0 && !self.endless {
            return Ok(None);
        }
        self.left = self.left.saturating_sub(1);
        Ok(Some(Bytes::from(vec![7u8; 64 << 10])))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Where {
    Nowhere,
    Observer,
    DiskStage,
    SinkWrite,
}

struct PanicObserver(Where);

impl Observer for PanicObserver {
    fn name(&self) -> String {
        "panicky".into()
    }
    fn update(&mut self, chunk: &Chunk) -> Result<()> {
        if self.0 == Where::Observer && chunk.offset > 0 {
            panic!("observer panics on purpose");
        }
        Ok(())
    }
    fn finish(self: Box<Self>, _total: u64) -> Result<Vec<Finding>> {
        Ok(vec![])
    }
}

struct PassThrough(Where);

impl DiskStage for PassThrough {
    fn name(&self) -> String {
        "pass".into()
    }
    fn feed(&mut self, chunk: &Chunk, out: &mut Vec<SinkOp>) -> Result<()> {
        if self.0 == Where::DiskStage && chunk.offset > 0 {
            panic!("disk stage panics on purpose");
        }
        out.push(SinkOp::Write(DiskExtent::Data {
            offset: chunk.offset,
            data: chunk.data.clone(),
        }));
        Ok(())
    }
    fn finish(&mut self, _out: &mut Vec<SinkOp>) -> Result<Vec<Finding>> {
        Ok(vec![])
    }
}

#[derive(Default)]
struct Calls {
    writes: AtomicUsize,
    finished: AtomicBool,
    aborted: AtomicBool,
}

struct CountingSink {
    calls: Arc<Calls>,
    panic_on_write: bool,
    /// Block every write until cancelled from outside (a hung device).
    hang: Option<Arc<tokio::sync::Notify>>,
}

#[async_trait]
impl Sink for CountingSink {
    fn describe(&self) -> String {
        "counting".into()
    }
    async fn begin(&mut self, _info: &DiskInfo) -> Result<()> {
        Ok(())
    }
    async fn write(&mut self, _extent: DiskExtent) -> Result<()> {
        let n = self.calls.writes.fetch_add(1, Ordering::SeqCst);
        if self.panic_on_write && n > 0 {
            panic!("sink panics on purpose");
        }
        if let Some(h) = &self.hang {
            h.notified().await;
        }
        Ok(())
    }
    async fn finish(self: Box<Self>) -> Result<SinkReport> {
        self.calls.finished.store(true, Ordering::SeqCst);
        Ok(SinkReport::default())
    }
    async fn abort(self: Box<Self>) -> Result<()> {
        self.calls.aborted.store(true, Ordering::SeqCst);
        Ok(())
    }
}

async fn run_with_panic(w: Where) -> (RunOutcome, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let p = Pipeline {
        source: Box::new(Chunks {
            left: 64,
            endless: false,
        }),
        observers: vec![Box::new(PanicObserver(w))],
        disk: Some((
            Box::new(PassThrough(w)),
            Box::new(CountingSink {
                calls: calls.clone(),
                panic_on_write: w == Where::SinkWrite,
                hang: None,
            }),
        )),
        options: DriverOptions::default(),
    };
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        p.run(Arc::new(Progress::default())),
    )
    .await
    .expect("the run ended");
    (out, calls)
}

#[tokio::test]
async fn a_panic_in_any_stage_aborts_the_sink() {
    let (ok, calls) = run_with_panic(Where::Nowhere).await;
    assert!(ok.result.is_ok());
    assert!(calls.finished.load(Ordering::SeqCst));
    assert!(!calls.aborted.load(Ordering::SeqCst));

    for w in [Where::Observer, Where::DiskStage, Where::SinkWrite] {
        let (out, calls) = run_with_panic(w).await;
        let e = out.result.expect_err("a panicking stage fails the run");
        assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
        assert!(
            calls.aborted.load(Ordering::SeqCst),
            "abort not reached: {e}"
        );
        assert!(!calls.finished.load(Ordering::SeqCst));
    }
}

/// A sink stuck in a write (a hung device) with the queues full: a cancel still ends the source
/// loop, and once the write returns the sink is aborted, not finished.
#[tokio::test]
async fn cancel_is_seen_while_a_consumer_is_stuck() {
    let calls = Arc::new(Calls::default());
    let hang = Arc::new(tokio::sync::Notify::new());
    let p = Pipeline {
        source: Box::new(Chunks {
            left: 0,
            endless: true,
        }),
        observers: vec![],
        disk: Some((
            Box::new(PassThrough(Where::Nowhere)),
            Box::new(CountingSink {
                calls: calls.clone(),
                panic_on_write: false,
                hang: Some(hang.clone()),
            }),
        )),
        options: DriverOptions::default(),
    };
    let progress = Arc::new(Progress::default());
    let run = tokio::spawn(p.run(progress.clone()));
    // Let the queues fill up behind the stuck write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read_before = progress.bytes_read();
    progress.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Release the device: the sink task sees the closed queue (or more writes) and returns.
    let releaser = {
        let hang = hang.clone();
        tokio::spawn(async move {
            loop {
                hang.notify_waiters();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the cancelled run ended")
        .unwrap();
    releaser.abort();
    let e = out.result.expect_err("cancelled");
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    assert!(calls.aborted.load(Ordering::SeqCst));
    assert!(!calls.finished.load(Ordering::SeqCst));
    assert!(
        out.bytes_read <= read_before + (64 << 10),
        "the source went on reading"
    );
}
