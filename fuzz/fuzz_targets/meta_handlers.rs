#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshfs_mserver::fuzz::meta_handlers(data));
