//! Handover relay.
//!
//! The relay stores and forwards sealed envelopes between mailboxes, hands out prekey bundles,
//! serves the members-only organisation directory and stores encrypted blobs. It never sees
//! content: everything it holds is ciphertext under keys it does not have, addressed by random
//! ids it cannot link to people.
//!
//! The request handler is sans-IO over a `Store` trait; QUIC (quinn) and storage (sled) sit at
//! the edges. This crate depends on `handover-proto` and never on `handover-core`: the relay
//! must not be able to decrypt anything, so it does not link the client's cryptography.

pub mod handler;
pub mod store;
