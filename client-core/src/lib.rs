//! Handover client core.
//!
//! Everything a Handover client does that needs secrets lives here: device and organisation
//! keys, PQXDH session setup, the Double Ratchet, sealed-sender envelopes, attachments, referrals,
//! consent receipts, expiry and the encrypted local store. The core is sans-IO: callers pass in
//! the current time and a random number generator and get outputs back; the optional `net`
//! feature adds the quinn driver that talks to a relay.
//!
//! This crate depends on `handover-proto` (the wire contract) and never on `handover-relay`: a
//! client must be implementable from docs/PROTOCOL.md alone, without relay code.

pub mod identity;

pub mod attachment;
pub mod consent;
mod encoding;
pub mod fanout;
pub mod pqxdh;
pub mod ratchet;
pub mod referral;
pub mod sealed;
pub mod session;
#[cfg(feature = "test-support")]
pub mod testing;
