#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cyphonic_fuzz::channel_payloads(data));
