#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshfs_core::fuzz::wire_message(data));
