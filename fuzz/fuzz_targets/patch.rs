#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rk::fuzzing::patch(data));
