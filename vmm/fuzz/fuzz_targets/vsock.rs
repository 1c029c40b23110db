#![no_main]
//! Fuzzes `vmm::fuzzing::vsock`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::fuzzing::vsock(data));
