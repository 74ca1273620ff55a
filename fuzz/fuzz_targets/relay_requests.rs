//! Drives the relay's request handler (in-memory store, injected clock) through a list of
//! operations read from the input: mailboxes created and authenticated, sends with the right
//! and a wrong capability, retries, fetches and acknowledgements on authenticated and
//! unauthenticated connections, clock steps, sweeps, and arbitrary bytes decoded as requests.
//! `handover_relay::testing::drive_requests` (feature `test-support`) checks every answer
//! against a model of the queues: nothing accepted is lost, nothing acknowledged or expired
//! comes back, refusals are typed and change nothing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    handover_relay::testing::drive_requests(data);
});
