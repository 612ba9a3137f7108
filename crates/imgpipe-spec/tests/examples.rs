//! Every example spec under docs/examples parses.
#![allow(clippy::unwrap_used)]

#[test]
fn every_example_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("toml" | "json")
        ) {
            imgpipe_spec::Spec::load(&p).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 3, "only {n} examples found");
}
