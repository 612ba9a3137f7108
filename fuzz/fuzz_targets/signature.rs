//! Fuzz the signature-side parsers: lenient base64 `img_signature`, property names and JSON,
//! certificate PEM/DER and the DER walk, and signature bytes through verification.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgpipe_crypto::fuzzing::signature_inputs(data);
});
