//! Fuzzes `handover_proto::decode::signed_referral_offer`: any input must decode or give an error, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = handover_proto::decode::signed_referral_offer(data);
});
