//! Drives two parties (Alice, Bob) through a seeded list of events: sends, reordered and
//! dropped deliveries, replays, bit flips and clock jumps, over real sealed envelopes. The
//! invariants (exact plaintext or a clean error; replays and tampering never decrypt) are
//! asserted by `handover_core::testing::drive_events` (feature `test-support`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    handover_core::testing::drive_events(data);
});
