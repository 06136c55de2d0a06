//! Feeds arbitrary bytes to the remote protocol's frame decoder, as a stream.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    procq::__fuzz_decode_stream(data);
});
