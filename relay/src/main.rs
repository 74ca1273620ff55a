//! `handover-relay`: runs a Handover relay.

fn main() {}
