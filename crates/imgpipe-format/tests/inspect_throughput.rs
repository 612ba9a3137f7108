//! Per-byte cost of the inspector after its verdict, on a 2 GiB qcow2 stream (the header made by
//! qemu-img, the clusters streamed from memory so that only the inspector is measured).
//! Run: `cargo test --release -p imgpipe-format --test inspect_throughput -- --ignored --nocapture`
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "support/inspect_corpus.rs"]
mod corpus;

use std::time::Instant;

use imgpipe_format::Format;
use imgpipe_format::inspect::{Inspector, Policy, Status};

#[test]
#[ignore = "timing; run by hand with --release"]
fn throughput_after_verdict_on_2gib_qcow2() {
    if !corpus::have_tool("qemu-img", "--version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.qcow2");
    corpus::run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", path.to_str().unwrap(), "2G"],
    );
    let header = std::fs::read(&path).unwrap();
    const TOTAL: u64 = 2 << 30;
    let body: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
    for chunk in [64 * 1024usize, 1 << 20] {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let mut i = Inspector::new(Policy::default()).with_stream_len(Some(TOTAL));
            assert_eq!(i.feed(&header), Status::Decided);
            assert_eq!(i.provisional().unwrap().format, Format::Qcow2);
            let mut n = header.len() as u64;
            let t = Instant::now();
            while n < TOTAL {
                for c in body.chunks(chunk) {
                    let take = (TOTAL - n).min(c.len() as u64) as usize;
                    i.feed(&c[..take]);
                    n += take as u64;
                }
            }
            let secs = t.elapsed().as_secs_f64();
            let v = i.finish();
            assert_eq!(v.stream_len, Some(TOTAL));
            best = best.min(secs);
        }
        let gbps = (TOTAL - header.len() as u64) as f64 / best / 1e9;
        eprintln!(
            "after-verdict feed, {chunk}-byte chunks: {gbps:.1} GB/s ({:.3} ms for 2 GiB; {:.1} ns per feed)",
            best * 1e3,
            best * 1e9 / (TOTAL / chunk as u64) as f64
        );
        assert!(gbps >= 5.0, "{gbps:.1} GB/s is below the 5 GB/s target");
    }
}
