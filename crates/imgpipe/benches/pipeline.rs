//! Criterion benches: each hasher alone, fan-out to N hashers through the driver, and the
//! end-to-end file → {sha512, sha256} → file pipeline.
//!
//! `cargo bench -p imgpipe --bench pipeline`; sizes are small so the suite stays quick; the
//! 2 GiB comparison against the physical bound is `benches/compare.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imgpipe::hash::{Algorithm, Hasher};
use imgpipe::spec::{SinkSpec, SinkTarget, SourceSpec};
use imgpipe::{Progress, Spec, Status};

fn data(len: usize) -> Vec<u8> {
    let mut s = 0x2545F4914F6CDD1Du64;
    let mut v = vec![0u8; len];
    for c in v.chunks_exact_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        c.copy_from_slice(&s.to_le_bytes());
    }
    v
}

fn hashers(c: &mut Criterion) {
    let buf = data(8 << 20);
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.sample_size(20);
    for algo in Algorithm::ALL {
        g.bench_function(algo.name(), |b| {
            b.iter(|| {
                let mut h = Hasher::new(algo);
                for chunk in buf.chunks(1 << 20) {
                    h.update(chunk);
                }
                h.finish()
            })
        });
    }
    g.finish();
}

fn pipelines(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let len = 256usize << 20;
    let img = dir.path().join("img.raw");
    std::fs::write(&img, data(len)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(len as u64));
    g.sample_size(10);
    for (name, algos) in [
        ("fanout-1", vec![Algorithm::Sha256]),
        (
            "fanout-3",
            vec![Algorithm::Sha256, Algorithm::Md5, Algorithm::Blake3],
        ),
        (
            "fanout-sha512+sha256",
            vec![Algorithm::Sha512, Algorithm::Sha256],
        ),
    ] {
        let mut spec = Spec::new(SourceSpec::File(img.clone()));
        spec.verify.report = algos;
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = rt.block_on(imgpipe::run(&spec, Arc::new(Progress::default())));
                assert_eq!(r.status, Status::Ok);
            })
        });
    }
    let mut spec = Spec::new(SourceSpec::File(img.clone()));
    spec.verify.report = vec![Algorithm::Sha512, Algorithm::Sha256];
    spec.sink = Some(SinkSpec {
        target: SinkTarget::File(dir.path().join("out.raw")),
        zeroes: None,
    });
    g.bench_function("file-sha512+sha256-file", |b| {
        b.iter(|| {
            let r = rt.block_on(imgpipe::run(&spec, Arc::new(Progress::default())));
            assert_eq!(r.status, Status::Ok, "{:?}", r.reason);
        })
    });
    g.finish();
}

criterion_group!(benches, hashers, pipelines);
criterion_main!(benches);
