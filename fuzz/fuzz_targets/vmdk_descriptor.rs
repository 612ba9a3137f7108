//! Fuzz the VMDK embedded-descriptor parsers of the inspector and the decoder (the decoder
//! must not accept what the inspector finds unsafe; asserted inside `vmdk_descriptor`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgpipe_format::fuzzing::vmdk_descriptor(data);
});
