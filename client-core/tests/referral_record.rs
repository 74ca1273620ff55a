//! Sender and receiver records survive a round trip through bytes (for the encrypted store)
//! and keep working afterwards; corrupted records are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod referral_support;

use handover_core::referral::{Action, ReceiverReferral, ReferralError, SenderReferral};
use handover_proto::e2e::v1 as wire;
use referral_support::*;

#[test]
fn records_round_trip_and_continue() {
    let mut w = World::new(1);
    let (s, r) = w.accepted(0);
    let s_bytes = s.to_bytes();
    let r_bytes = r.to_bytes();
    let mut s2 = SenderReferral::from_bytes(&s_bytes).unwrap();
    let mut r2 = ReceiverReferral::from_bytes(&r_bytes).unwrap();
    assert_eq!(s2.state(), s.state());
    assert_eq!(r2.state(), r.state());
    assert_eq!(s2.timeline(), s.timeline());
    assert_eq!(r2.timeline(), r.timeline());
    assert_eq!(s2.held_sections(), 4);
    assert_eq!(r2.held_sections(), 4);
    assert_eq!(
        r2.section(wire::Section::Reason).unwrap().unwrap(),
        r.section(wire::Section::Reason).unwrap().unwrap()
    );
    // The restored sender can still release the body, and the pair can carry on.
    s2.release_body(&w.intake[0].cert, &w.registry, &mut w.ledger, T0 + 400)
        .unwrap();
    w.receiver_acts(0, &mut s2, &mut r2, Action::StartService, T0 + 500);
    s2.timeline()
        .verify(
            &w.sender.root.public_key(),
            &w.receivers[0].root.public_key(),
        )
        .unwrap();
}

#[test]
fn erased_and_closed_records_round_trip() {
    let mut w = World::new(1);
    let (mut s, mut r) = w.send(0);
    w.receiver_acts(0, &mut s, &mut r, Action::Delivered, T0 + 100);
    w.receiver_acts(0, &mut s, &mut r, Action::Acknowledge, T0 + 110);
    w.receiver_acts(
        0,
        &mut s,
        &mut r,
        Action::Decline {
            reason: wire::DeclineReason::OutOfMandate,
            note: String::new(),
        },
        T0 + 120,
    );
    let r2 = ReceiverReferral::from_bytes(&r.to_bytes()).unwrap();
    assert!(r2.offer().is_none());
    assert_eq!(r2.state(), r.state());
    r2.timeline().verify_chain().unwrap();
}

#[test]
fn corrupted_records_are_refused() {
    let mut w = World::new(1);
    let (s, r) = w.accepted(0);
    assert!(matches!(
        SenderReferral::from_bytes(&r.to_bytes()),
        Err(ReferralError::Malformed { .. })
    ));
    assert!(ReceiverReferral::from_bytes(b"\x08\x02garbage").is_err());
    // Flip every byte of a sender record in turn: no panic, and never a silently different
    // timeline.
    let bytes = s.to_bytes();
    for i in (0..bytes.len()).step_by(7) {
        let mut b = bytes.to_vec();
        b[i] ^= 0x55;
        if let Ok(restored) = SenderReferral::from_bytes(&b) {
            restored.timeline().verify_chain().unwrap();
        }
    }
}

mod arbitrary_bytes {
    use handover_core::consent::{DisclosureLedger, ReceiptRegistry};
    use handover_core::referral::{ReceiverReferral, SenderReferral};
    use proptest::prelude::*;

    proptest! {
        /// Store decoders never panic on arbitrary bytes.
        #[test]
        fn store_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = SenderReferral::from_bytes(&bytes);
            let _ = ReceiverReferral::from_bytes(&bytes);
            let _ = ReceiptRegistry::from_bytes(&bytes);
            let _ = DisclosureLedger::from_bytes(&bytes);
        }
    }
}
