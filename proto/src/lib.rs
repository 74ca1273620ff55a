//! The Handover wire contract.
//!
//! This crate holds everything two independent Handover implementations must agree on byte for
//! byte:
//!
//! - the protobuf schema in `proto/handover/v1/*.proto`, compiled to Rust types by prost at build
//!   time (no system `protoc` needed): [`relay::v1`] for the client–relay protocol and [`e2e::v1`]
//!   for what travels end-to-end encrypted inside relay envelopes;
//! - [`frame`]: the length-delimited framing used on every QUIC stream, with a maximum frame size;
//! - [`limits`]: named limits and protocol constants;
//! - [`decode`] and [`validate`]: decoding that turns every malformed, truncated or oversized
//!   input into a [`DecodeError`] value instead of a panic or an unbounded allocation.
//!
//! The generated types are *wire* types: plain structs with public fields. Crates above this one
//! convert them into validated domain types and never hand wire types to applications.
//!
//! This crate must never depend on another Handover crate, on an async runtime, on a network or
//! storage library, or on cryptography: it is the contract, not an implementation.
//!
//! ```
//! use handover_proto::{decode, frame, relay::v1 as relay, PROTOCOL_VERSION};
//!
//! let request = relay::Request {
//!     protocol_version: PROTOCOL_VERSION,
//!     kind: Some(relay::request::Kind::Ping(relay::Ping {})),
//! };
//! let bytes = frame::encode(&request)?;
//! let mut decoder = frame::FrameDecoder::new(handover_proto::limits::MAX_FRAME_LEN);
//! decoder.push(&bytes);
//! let payload = decoder.next_frame()?.ok_or("need more bytes")?;
//! let back: relay::Request = decode::request(&payload)?;
//! assert_eq!(back, request);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod decode;
mod error;
pub mod frame;
pub mod limits;
mod redact;
pub mod validate;

pub use error::DecodeError;
pub use limits::{ALPN, PROTOCOL_VERSION};

/// Client–relay protocol types (`handover.relay.*`).
pub mod relay {
    /// Version 1 (`handover.relay.v1`), spoken over ALPN `handover/1`.
    ///
    /// Field docs come from the `.proto` comments; the generated modules for oneofs carry none.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/handover.relay.v1.rs"));
    }
}

/// End-to-end types (`handover.e2e.*`): identities, prekeys, sealed messages, referrals, consent.
pub mod e2e {
    /// Version 1 (`handover.e2e.v1`).
    ///
    /// Field docs come from the `.proto` comments; the generated modules for oneofs carry none.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/handover.e2e.v1.rs"));
    }
}
