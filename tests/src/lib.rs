//! Shared helpers for Handover's end-to-end tests: starting relay processes, temporary profiles,
//! and deterministic multi-party harnesses. The tests themselves live in `tests/tests/`.
//!
//! This crate may depend on every other Handover crate; nothing may depend on it.
//!
//! - [`app`]: `handover app` (the caseworker's desk) run as a separate process.
//! - [`cli`]: the `handover` CLI run as a separate process.
//! - [`client`]: a raw-protocol QUIC client (quinn + `handover-proto` frames) that pins the
//!   relay's SPKI, used by the relay tests and the load generator.
//! - [`process`]: a relay running as a separate OS process on loopback with a temporary data
//!   directory.

pub mod app;
pub mod cli;
pub mod client;
pub mod process;

/// Errors of the helpers: tests unwrap them, the load generator prints them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Result of the helpers.
pub type Result<T> = std::result::Result<T, BoxError>;
