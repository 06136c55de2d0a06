//! Feeds arbitrary bytes to the datagram decoder a receiver runs on every datagram:
//! header and frame validation, then item decoding. Must never panic, hang or allocate
//! from an unchecked length.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    procq::__fuzz_decode_datagram(data);
});
