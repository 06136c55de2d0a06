//! Feeds arbitrary bytes to the remote protocol's decoder (length-delimited frames of
//! postcard messages), as a server reading a client would.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    procq::__fuzz_decode_stream(data);
});
