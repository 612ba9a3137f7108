//! Fuzz the streaming format inspector: no panic on any input, and verdicts independent of how
//! the stream is chunked or whether its length is announced (asserted inside `fuzz_one`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    imgpipe_format::inspect::fuzz_one(data);
});
