#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshfs_group::fuzz::group_message(data));
