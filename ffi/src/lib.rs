//! Handover FFI: thin UniFFI wrappers over the `handover-core` client API for Kotlin, Swift and
//! Python apps.
//!
//! This crate is not an API of its own: each export is a one- or two-line wrapper, objects release
//! their resources on drop, errors are one flattened enum, and the tokio runtime stays inside
//! Rust. It depends only on `handover-core` and must never depend on the relay.
