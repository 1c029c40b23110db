#![no_main]
//! Fuzzes `vmm::fuzzing::block`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::fuzzing::block(data));
