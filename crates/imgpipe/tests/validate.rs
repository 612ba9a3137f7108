//! `imgpipe::run` validates a `Spec` built in code before it opens anything: an invalid one is
//! refused with every problem (the spec parser's key paths and messages), status `error`, kind
//! `spec`, and not one byte read. The sources prove it: a FIFO nobody writes to (opening it
//! would block the run) and a TCP listener that must see no connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use imgpipe::hash::Algorithm;
use imgpipe::spec::{SinkSpec, SinkTarget, SourceSpec};
use imgpipe::{ErrorKind, Progress, RunReport, Spec, Status};

/// Run `spec` with a time limit; on timeout, `unblock` frees whatever the run waits on, and
/// the test fails.
fn run_within(spec: &Spec, limit: Duration, unblock: impl FnOnce()) -> RunReport {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(async {
        tokio::time::timeout(limit, imgpipe::run(spec, Arc::new(Progress::default()))).await
    });
    match r {
        Ok(report) => report,
        Err(_) => {
            unblock();
            rt.shutdown_timeout(Duration::from_secs(5));
            panic!("the run did not return within {limit:?}: it opened the source");
        }
    }
}

fn sink(dir: &Path) -> Option<SinkSpec> {
    Some(SinkSpec {
        target: SinkTarget::File(dir.join("disk.raw")),
        zeroes: None,
    })
}

/// Every problem, each with its key path and the parser's message, and nothing touched.
fn assert_refused(r: &RunReport, problems: &[(&str, &str)], dir: &Path) {
    assert_eq!(r.status, Status::Error, "{r:?}");
    assert_eq!(r.kind, Some(ErrorKind::Spec), "{r:?}");
    assert_eq!(r.phase, Some("before_streaming"), "{r:?}");
    assert_eq!(r.bytes_read, 0, "{r:?}");
    assert_eq!(r.bytes_written, 0, "{r:?}");
    let reason = r.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains(&format!("{} problems", problems.len())),
        "{reason}"
    );
    for (path, message) in problems {
        assert!(
            reason.contains(&format!("\n  {path}: {message}")),
            "{path}: {message} not in {reason}"
        );
    }
    assert!(!reason.contains("line 0"), "{reason}");
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "image.fifo")
        .collect();
    assert!(left.is_empty(), "the run wrote {left:?}");
}

#[test]
fn an_invalid_spec_with_a_fifo_source_is_refused_without_opening_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("image.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let mut spec = Spec::new(SourceSpec::File(fifo.clone()));
    spec.verify.digests.push((Algorithm::Sha512, "ab".into()));
    spec.retry.stall_timeout = Duration::ZERO;
    spec.inspect.max_virtual_size = Some(0);
    spec.sink = sink(dir.path());
    let r = run_within(&spec, Duration::from_secs(20), || {
        // A writer frees a reader blocked in open(2); the thread is left to the process exit.
        let f = fifo.clone();
        std::thread::spawn(move || drop(std::fs::OpenOptions::new().write(true).open(f)));
    });
    assert_refused(
        &r,
        &[
            (
                "source.retry.stall_timeout",
                "stall_timeout must be more than zero",
            ),
            (
                "inspect.max_virtual_size",
                "max_virtual_size must be more than zero",
            ),
            (
                "verify.sha512",
                "expected 128 hex digits, found \"ab\" (2 characters)",
            ),
        ],
        dir.path(),
    );
}

#[test]
fn an_invalid_spec_with_a_url_source_is_refused_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut spec = Spec::new(SourceSpec::Http {
        url: format!("http://127.0.0.1:{port}/image.raw"),
        headers: vec![
            ("X-Auth-Token".into(), "s3cret-token".into()),
            ("Range".into(), "bytes=0-".into()),
        ],
    });
    spec.verify.digests.push((Algorithm::Sha256, "ab".into()));
    spec.retry.stall_timeout = Duration::ZERO;
    spec.sink = sink(dir.path());
    let r = run_within(&spec, Duration::from_secs(20), || {});
    assert_refused(
        &r,
        &[
            ("source.headers", "header \"Range\" may not be set"),
            (
                "source.retry.stall_timeout",
                "stall_timeout must be more than zero",
            ),
            (
                "verify.sha256",
                "expected 64 hex digits, found \"ab\" (2 characters)",
            ),
        ],
        dir.path(),
    );
    assert!(
        !r.reason.unwrap_or_default().contains("s3cret"),
        "a header value was shown"
    );
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the run connected to the source: {other:?}"),
    }
}

/// The same spec, valid, does run (so the refusals above come from the validation, not from
/// the sources).
#[test]
fn the_same_spec_made_valid_runs() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.raw");
    std::fs::write(&image, vec![7u8; 1 << 16]).unwrap();
    let mut spec = Spec::new(SourceSpec::File(image));
    spec.sink = Some(SinkSpec {
        target: SinkTarget::File(dir.path().join("out.raw")),
        zeroes: None,
    });
    spec.retry.stall_timeout = Duration::from_secs(1);
    let r = run_within(&spec, Duration::from_secs(60), || {});
    assert_eq!(r.status, Status::Ok, "{:?}", r.reason);
    assert_eq!(r.bytes_read, 1 << 16);
}
