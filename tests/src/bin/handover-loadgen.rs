//! Relay load generator (placeholder, replaced below).
fn main() {}
