//! Progress as events: phases move forward only, every run ends with a `done` event carrying
//! the final counters, and a cancelled run ends the same way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use imgpipe::spec::{SinkSpec, SinkTarget, SourceSpec};
use imgpipe::{Phase, Progress, ProgressEvent, Spec, Status};

async fn collect(mut rx: tokio::sync::mpsc::Receiver<ProgressEvent>) -> Vec<ProgressEvent> {
    let mut v = Vec::new();
    while let Some(e) = rx.recv().await {
        v.push(e);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_move_forward_and_end_with_the_final_counters() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("img.raw");
    let data: Vec<u8> = (0..(48u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let mut spec = Spec::new(SourceSpec::File(src));
    spec.sink = Some(SinkSpec {
        target: SinkTarget::File(dir.path().join("disk.raw")),
        zeroes: None,
    });
    let progress = Arc::new(Progress::default());
    let events = tokio::spawn(collect(progress.events(Duration::from_millis(2))));
    let report = imgpipe::run(&spec, progress.clone()).await;
    assert_eq!(report.status, Status::Ok, "{:?}", report.reason);
    let events = tokio::time::timeout(Duration::from_secs(10), events)
        .await
        .expect("the event stream ended")
        .unwrap();
    assert!(!events.is_empty());
    for w in events.windows(2) {
        assert!(w[0].phase <= w[1].phase, "phase went back: {w:?}");
        assert!(w[0].bytes_read <= w[1].bytes_read, "bytes went back: {w:?}");
    }
    let last = events.last().unwrap();
    assert_eq!(last.phase, Phase::Done);
    assert_eq!(last.bytes_read, data.len() as u64);
    assert_eq!(last.total, Some(data.len() as u64));
    assert_eq!(progress.phase(), Phase::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_also_ends_with_done() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("img.raw");
    std::fs::write(&src, vec![7u8; 8 << 20]).unwrap();
    let mut spec = Spec::new(SourceSpec::File(src));
    spec.sink = Some(SinkSpec {
        target: SinkTarget::File(dir.path().join("disk.raw")),
        zeroes: None,
    });
    let progress = Arc::new(Progress::default());
    progress.cancel();
    let events = tokio::spawn(collect(progress.events(Duration::from_millis(5))));
    let report = imgpipe::run(&spec, progress).await;
    assert_eq!(report.status, Status::Error);
    let events = tokio::time::timeout(Duration::from_secs(10), events)
        .await
        .expect("the event stream ended")
        .unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.phase, Phase::Done);
    assert!(last.cancelled);
    assert!(!dir.path().join("disk.raw").exists());
}
