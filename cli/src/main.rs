//! `handover`: the command-line client for caseworkers and organisation admins, and the
//! end-to-end demo.
//!
//! The CLI is a thin shell over `handover-core`'s client API; it never implements protocol logic
//! itself. Only its `demo` command also starts a relay, in-process, to show the whole system.

fn main() {}
