//! Fuzz the Glance image record reader (fields, hashes, signature properties, image ids).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgpipe_io::fuzzing::fuzz_image_record(data);
});
