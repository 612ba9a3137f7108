//! Fuzz the streaming decoders (first byte: format, second: chunk sizes, rest: the image).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgpipe_format::decode::fuzz_one(data);
});
