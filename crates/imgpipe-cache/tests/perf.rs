//! Cost of the cache, measured at the library level with the same wiring the facade uses:
//! `cargo test -p imgpipe-cache --test perf -- --ignored --nocapture` (env IMGPIPE_PERF_MIB
//! sets the image size, default 512).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Instant;

use common::*;
use imgpipe::hash::Algorithm;
use imgpipe_cache::Cache;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
#[ignore = "measurement; run explicitly"]
fn cold_and_warm_cost_of_the_cache() {
    let mib: usize = std::env::var("IMGPIPE_PERF_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let t = tempfile::Builder::new()
        .prefix("imgpipe-cache-perf")
        .tempdir_in(std::env::var("IMGPIPE_PERF_DIR").unwrap_or_else(|_| "/var/tmp".into()))
        .unwrap();
    let data = image_bytes(mib << 20, 31);
    let src = t.path().join("img.raw");
    std::fs::write(&src, &data).unwrap();
    let sha512 = common::coreutils_sum("sha512", &data);
    drop(data);
    let out = t.path().join("disk.raw");
    // IMGPIPE_PERF_SINK=0: verify-only runs (the cache copy is then the only write).
    let with_sink = std::env::var("IMGPIPE_PERF_SINK").map_or(true, |v| v != "0");
    let mut spec = file_spec(&src, with_sink.then_some(out.as_path()));
    // Glance's default check: sha512 only.
    spec.verify.digests.push((Algorithm::Sha512, sha512));
    let (mut plain, mut cold, mut warm) = (vec![], vec![], vec![]);
    block_on(async {
        // Warm the page cache for the source.
        let r = run_cached(None, &spec).await;
        assert!(r.ok());
        let _ = std::fs::remove_file(&out);
        for i in 0..7 {
            let s = Instant::now();
            let r = run_cached(None, &spec).await;
            plain.push(s.elapsed().as_secs_f64());
            assert!(r.ok());
            let _ = std::fs::remove_file(&out);

            let cdir = t.path().join(format!("cache{i}"));
            let s = Instant::now();
            let cache = Cache::open(&cache_spec(&cdir)).unwrap();
            let r = run_cached(Some(&cache), &spec).await;
            cold.push(s.elapsed().as_secs_f64());
            assert!(r.published());
            let _ = std::fs::remove_file(&out);

            let s = Instant::now();
            let r = run_cached(Some(&cache), &spec).await;
            warm.push(s.elapsed().as_secs_f64());
            assert!(r.is_hit() && r.ok());
            let _ = std::fs::remove_file(&out);
            std::fs::remove_dir_all(&cdir).unwrap();
        }
    });
    let (p, c, w) = (
        median(plain.clone()),
        median(cold.clone()),
        median(warm.clone()),
    );
    let mb = (mib << 20) as f64 / 1e6;
    eprintln!(
        "image {mib} MiB raw, sha512 expected, file source (page cache) -> {}",
        if with_sink { "file sink" } else { "no sink" }
    );
    eprintln!(
        "no cache : median {p:.3} s ({:.0} MB/s) {plain:.3?}",
        mb / p
    );
    eprintln!("cold miss: median {c:.3} s ({:.0} MB/s) {cold:.3?}", mb / c);
    eprintln!("warm hit : median {w:.3} s ({:.0} MB/s) {warm:.3?}", mb / w);
    eprintln!(
        "cold/no-cache ratio {:.3}, warm/no-cache {:.3}",
        c / p,
        w / p
    );
}
