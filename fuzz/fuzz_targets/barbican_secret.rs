//! Fuzz the Barbican secret metadata and error document readers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgpipe_io::fuzzing::fuzz_secret_metadata(data);
});
