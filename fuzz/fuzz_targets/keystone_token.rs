//! Fuzz the Keystone token document reader and the catalog endpoint lookup.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgpipe_io::fuzzing::fuzz_token_document(data);
});
