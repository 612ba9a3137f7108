//! Fuzz the spec readers: TOML and JSON parsing and validation (every problem collected, no
//! panic), on the same text.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = imgpipe_spec::Spec::from_text(text, std::path::Path::new("/fuzz"));
});
