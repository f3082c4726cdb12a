#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshfs_net::fuzz::frame_decoder(data));
