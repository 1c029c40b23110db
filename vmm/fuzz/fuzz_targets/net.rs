#![no_main]
//! Fuzzes `vmm::fuzzing::net`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::fuzzing::net(data));
