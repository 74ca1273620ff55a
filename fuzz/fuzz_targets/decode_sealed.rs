//! Fuzzes `handover_proto::decode::sealed`: any input must decode or give an error, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = handover_proto::decode::sealed(data);
});
