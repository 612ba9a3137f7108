//! Regenerates the committed fuzz seed corpus `fuzz/corpus/inspect/` from the test corpus: the
//! first 4 KiB of every image (36 KiB for ISO, whose descriptors start at 32 KiB), deduplicated.
//! Run with `cargo test -p imgpipe-format --test inspect_fuzz_seeds -- --ignored`.
//! The non-ignored test checks that every committed seed still inspects without panicking.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "support/inspect_corpus.rs"]
mod corpus;

use std::collections::HashSet;
use std::path::PathBuf;

use imgpipe_format::Format;
use imgpipe_format::inspect::fuzz_one;

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/inspect")
}

#[test]
#[ignore = "writes fuzz/corpus/inspect; run by hand"]
fn regenerate_seed_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cases) = corpus::build(dir.path()) else {
        return;
    };
    let out = seed_dir();
    std::fs::create_dir_all(&out).unwrap();
    let mut seen = HashSet::new();
    for c in &cases {
        let data = std::fs::read(&c.path).unwrap();
        let iso = matches!(
            c.expect,
            corpus::Expect::Accept {
                format: Format::Iso,
                ..
            }
        ) || c.name.contains("ISO");
        let n = if iso { 36 * 1024 } else { 4096 }.min(data.len());
        let seed = &data[..n];
        if !seen.insert(seed.to_vec()) {
            continue;
        }
        let name: String = c
            .name
            .chars()
            .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' })
            .collect();
        std::fs::write(out.join(name), seed).unwrap();
    }
}

#[test]
fn committed_seeds_inspect_cleanly() {
    let Ok(rd) = std::fs::read_dir(seed_dir()) else {
        eprintln!("SKIP: no seed corpus");
        return;
    };
    let mut n = 0;
    for e in rd {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        fuzz_one(&data);
        n += 1;
    }
    assert!(n > 0);
}
