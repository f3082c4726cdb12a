#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshfs_dserver::fuzz::data_handlers(data));
