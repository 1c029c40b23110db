#![no_main]
//! Fuzzes `crius_proto::fuzzing::agent_host`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| crius_proto::fuzzing::agent_host(data));
