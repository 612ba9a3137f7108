//! Inspector throughput: header decision cost, and per-byte cost after the verdict.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imgpipe_format::inspect::{Inspector, Policy};

fn qcow2_header() -> Vec<u8> {
    let mut h = vec![0u8; 65536];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&16u32.to_be_bytes());
    h[24..32].copy_from_slice(&(2u64 << 30).to_be_bytes());
    h[36..40].copy_from_slice(&4u32.to_be_bytes());
    h[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
    h[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes());
    h[56..60].copy_from_slice(&1u32.to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes());
    h[100..104].copy_from_slice(&112u32.to_be_bytes());
    h
}

fn bench(c: &mut Criterion) {
    let header = qcow2_header();
    let body = vec![0x5au8; 1 << 20];
    let mut g = c.benchmark_group("inspect");
    g.throughput(Throughput::Bytes(header.len() as u64));
    g.bench_function("decide_qcow2_header", |b| {
        b.iter(|| {
            let mut i = Inspector::new(Policy::default());
            i.feed(&header);
            i.finish()
        })
    });
    // After the verdict: 256 MiB of 64 KiB chunks.
    const TOTAL: u64 = 256 << 20;
    g.throughput(Throughput::Bytes(TOTAL));
    g.bench_function("after_verdict_64k_chunks", |b| {
        b.iter(|| {
            let mut i = Inspector::new(Policy::default());
            i.feed(&header);
            let mut n = header.len() as u64;
            while n < TOTAL {
                for c in body.chunks(64 * 1024) {
                    i.feed(c);
                }
                n += body.len() as u64;
            }
            i.finish()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
