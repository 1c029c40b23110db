#![no_main]
//! Fuzzes `vmm::fuzzing::queue`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::fuzzing::queue(data));
