//! The driver's contract: every byte reaches every consumer once; the sink is finished only when
//! every verdict passed and aborted otherwise; the first real failure is the reported one.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use imgpipe_core::*;

struct VecSource {
    chunks: std::vec::IntoIter<Bytes>,
    fail_after: Option<usize>,
    served: usize,
}

fn source(data: &[u8], chunk: usize) -> VecSource {
    let chunks: Vec<Bytes> = data.chunks(chunk).map(Bytes::copy_from_slice).collect();
    VecSource {
        chunks: chunks.into_iter(),
        fail_after: None,
        served: 0,
    }
}

#[async_trait]
impl Source for VecSource {
    fn describe(&self) -> String {
        "vec".into()
    }
    fn len_hint(&self) -> Option<u64> {
        None
    }
    async fn read(&mut self) -> Result<Option<Bytes>> {
        if self.fail_after == Some(self.served) {
            return Err(Error::new(ErrorKind::Network, "connection reset"));
        }
        self.served += 1;
        Ok(self.chunks.next())
    }
}

/// Sums the bytes it sees; rejects when it has seen more than `limit`.
struct Summer {
    seen: Vec<u8>,
    limit: usize,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Observer for Summer {
    fn name(&self) -> String {
        "summer".into()
    }
    fn update(&mut self, chunk: &Chunk) -> Result<()> {
        assert_eq!(
            chunk.offset as usize,
            self.seen.len(),
            "chunks arrive in order"
        );
        self.seen.extend_from_slice(&chunk.data);
        if self.seen.len() > self.limit {
            return Err(Error::check(
                ErrorKind::SizeMismatch,
                "size",
                "too many bytes",
            ));
        }
        Ok(())
    }
    fn finish(self: Box<Self>, total: u64) -> Result<Vec<Finding>> {
        assert_eq!(total as usize, self.seen.len());
        *self.out.lock().unwrap() = self.seen;
        Ok(vec![Finding::Passed {
            check: "summer".into(),
        }])
    }
}

/// Passes bytes through as extents; fails at finish when asked (a verdict at the last byte).
struct Passthrough {
    fail_at_end: bool,
}

impl DiskStage for Passthrough {
    fn name(&self) -> String {
        "pass".into()
    }
    fn feed(&mut self, chunk: &Chunk, out: &mut Vec<SinkOp>) -> Result<()> {
        if chunk.offset == 0 {
            out.push(SinkOp::Begin(DiskInfo::default()));
        }
        out.push(SinkOp::Write(DiskExtent::Data {
            offset: chunk.offset,
            data: chunk.data.clone(),
        }));
        Ok(())
    }
    fn finish(&mut self, _out: &mut Vec<SinkOp>) -> Result<Vec<Finding>> {
        if self.fail_at_end {
            Err(Error::check(
                ErrorKind::InvalidImage,
                "footer",
                "bad footer",
            ))
        } else {
            Ok(vec![])
        }
    }
}

#[derive(Default, Clone)]
struct SinkLog(Arc<Mutex<(Vec<u8>, Vec<&'static str>)>>);

struct MemSink(SinkLog);

#[async_trait]
impl Sink for MemSink {
    fn describe(&self) -> String {
        "mem".into()
    }
    async fn begin(&mut self, _info: &DiskInfo) -> Result<()> {
        self.0.0.lock().unwrap().1.push("begin");
        Ok(())
    }
    async fn write(&mut self, extent: DiskExtent) -> Result<()> {
        let mut g = self.0.0.lock().unwrap();
        if let DiskExtent::Data { offset, data } = extent {
            let end = offset as usize + data.len();
            if g.0.len() < end {
                g.0.resize(end, 0);
            }
            g.0[offset as usize..end].copy_from_slice(&data);
        }
        Ok(())
    }
    async fn finish(self: Box<Self>) -> Result<SinkReport> {
        self.0.0.lock().unwrap().1.push("finish");
        Ok(SinkReport::default())
    }
    async fn abort(self: Box<Self>) -> Result<()> {
        self.0.0.lock().unwrap().1.push("abort");
        Ok(())
    }
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

async fn run(src: VecSource, limit: usize, fail_at_end: bool) -> (RunOutcome, Vec<u8>, SinkLog) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = SinkLog::default();
    let p = Pipeline {
        source: Box::new(src),
        observers: vec![Box::new(Summer {
            seen: vec![],
            limit,
            out: seen.clone(),
        })],
        disk: Some((
            Box::new(Passthrough { fail_at_end }),
            Box::new(MemSink(log.clone())),
        )),
        options: DriverOptions {
            queue_depth: 2,
            sink_queue_depth: 2,
        },
    };
    let out = p.run(Arc::new(Progress::default())).await;
    let seen = seen.lock().unwrap().clone();
    (out, seen, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_byte_reaches_every_consumer_and_the_sink_is_finished() {
    let d = data(1_000_003);
    for chunk in [1usize << 10, 7919, 65536, d.len()] {
        let (out, seen, log) = run(source(&d, chunk), usize::MAX, false).await;
        out.result.unwrap();
        assert_eq!(out.bytes_read, d.len() as u64);
        assert_eq!(seen, d);
        let g = log.0.lock().unwrap();
        assert_eq!(g.0, d);
        assert_eq!(g.1, vec!["begin", "finish"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_rejection_aborts_the_sink_and_stops_reading() {
    let d = data(4 << 20);
    let (out, _, log) = run(source(&d, 4096), 100_000, false).await;
    let err = out.result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SizeMismatch);
    assert_eq!(err.check_name(), Some("size"));
    assert_eq!(err.stage(), Some("summer"));
    assert!(
        out.bytes_read < d.len() as u64,
        "the source kept going after a rejection"
    );
    assert_eq!(log.0.lock().unwrap().1.last(), Some(&"abort"));
    assert!(!log.0.lock().unwrap().1.contains(&"finish"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_at_the_last_byte_aborts() {
    let d = data(300_000);
    let (out, _, log) = run(source(&d, 4096), usize::MAX, true).await;
    let err = out.result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidImage);
    assert_eq!(err.check_name(), Some("footer"));
    assert_eq!(log.0.lock().unwrap().1, vec!["begin", "abort"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_error_aborts_and_is_the_reason() {
    let d = data(300_000);
    let mut s = source(&d, 4096);
    s.fail_after = Some(10);
    let (out, _, log) = run(s, usize::MAX, false).await;
    let err = out.result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network);
    assert_eq!(err.stage(), Some("source"));
    assert_eq!(err.offset(), Some(10 * 4096));
    assert_eq!(log.0.lock().unwrap().1, vec!["begin", "abort"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_aborts() {
    struct Endless;
    #[async_trait]
    impl Source for Endless {
        fn describe(&self) -> String {
            "endless".into()
        }
        fn len_hint(&self) -> Option<u64> {
            None
        }
        async fn read(&mut self) -> Result<Option<Bytes>> {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            Ok(Some(Bytes::from_static(&[1u8; 512])))
        }
    }
    let log = SinkLog::default();
    let progress = Arc::new(Progress::default());
    let p = Pipeline {
        source: Box::new(Endless),
        observers: vec![],
        disk: Some((
            Box::new(Passthrough { fail_at_end: false }),
            Box::new(MemSink(log.clone())),
        )),
        options: DriverOptions::default(),
    };
    let pr = progress.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        pr.cancel();
    });
    let out = p.run(progress).await;
    assert_eq!(out.result.unwrap_err().kind(), ErrorKind::Cancelled);
    assert_eq!(log.0.lock().unwrap().1.last(), Some(&"abort"));
}
