//! Shared helpers for Handover's end-to-end tests: starting relay processes, temporary profiles,
//! and deterministic multi-party harnesses. The tests themselves live in `tests/tests/`.
//!
//! This crate may depend on every other Handover crate; nothing may depend on it.
