//! The hash-chained timeline: end-to-end verification, tampering, reordering, dropping, wrong
//! organisations, and the content-free audit export.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod referral_support;

use handover_core::identity::Role;
use handover_core::referral::{
    Action, Outcome, ReceiverReferral, ReferralError, SenderReferral, Timeline,
};
use handover_proto::e2e::v1 as wire;
use referral_support::*;

fn completed(w: &mut World) -> (SenderReferral, ReceiverReferral) {
    let (mut s, mut r) = w.accepted(0);
    w.receiver_acts(0, &mut s, &mut r, Action::StartService, T0 + DAY);
    w.receiver_acts(
        0,
        &mut s,
        &mut r,
        Action::Complete {
            outcome: Outcome::NotSuccessful(wire::NotSuccessfulReason::NoLongerNeeded),
            note: "She found a place with her sister in Liège".to_owned(),
        },
        T0 + 2 * DAY,
    );
    (s, r)
}

fn verify(w: &World, t: &Timeline) -> Result<(), ReferralError> {
    t.verify(
        &w.sender.root.public_key(),
        &w.receivers[0].root.public_key(),
    )
}

fn broken_at(result: Result<(), ReferralError>) -> u64 {
    match result {
        Err(ReferralError::TimelineBroken { sequence, .. }) => sequence,
        other => panic!("expected a broken timeline, got {other:?}"),
    }
}

#[test]
fn verifies_end_to_end_on_both_sides() {
    let mut w = World::new(1);
    let (s, r) = completed(&mut w);
    assert_eq!(s.timeline().len(), 6);
    assert_eq!(s.timeline(), r.timeline());
    verify(&w, s.timeline()).unwrap();
    verify(&w, r.timeline()).unwrap();
    // Swapping the organisations fails.
    assert!(
        s.timeline()
            .verify(
                &w.receivers[0].root.public_key(),
                &w.sender.root.public_key()
            )
            .is_err()
    );
}

#[test]
fn tampering_with_any_entry_is_detected() {
    let mut w = World::new(1);
    let (s, _) = completed(&mut w);
    for k in 0..s.timeline().len() as usize {
        // Change the signed bytes.
        let mut t = s.timeline().clone();
        let mut payload = t.entries()[k].payload().unwrap().to_vec();
        let last = payload.len() - 1;
        payload[last] ^= 1;
        t.entries_mut()[k].tamper_payload(payload);
        assert_eq!(broken_at(verify(&w, &t)), k as u64, "payload of entry {k}");
        assert!(t.verify_chain().is_err());
    }
}

#[test]
fn reordering_or_dropping_entries_is_detected() {
    let mut w = World::new(1);
    let (s, _) = completed(&mut w);
    let mut swapped = s.timeline().clone();
    swapped.entries_mut().swap(2, 3);
    assert_eq!(broken_at(verify(&w, &swapped)), 2);

    for k in 0..s.timeline().len() as usize - 1 {
        let mut dropped = s.timeline().clone();
        dropped.entries_mut().remove(k);
        assert!(verify(&w, &dropped).is_err(), "dropping entry {k}");
    }
    // Dropping the tail is not detectable from one copy; the peer's head is the check.
    let mut truncated = s.timeline().clone();
    truncated.entries_mut().pop();
    assert_ne!(truncated.head(), s.timeline().head());
}

#[test]
fn a_device_of_the_wrong_organisation_is_rejected() {
    let mut w = World::new(1);
    let (mut s, mut r) = w.send(0);
    w.receiver_acts(0, &mut s, &mut r, Action::Delivered, T0 + 100);
    w.receiver_acts(0, &mut s, &mut r, Action::Acknowledge, T0 + 110);
    let id = s.id();
    let accept = |t: &Timeline| wire::ReferralControl {
        referral_id: id.as_bytes().to_vec(),
        sequence: t.len(),
        prev_hash: t.head().to_vec(),
        at: T0 + 120,
        action: Some(wire::referral_control::Action::Accept(wire::Accept {})),
    };
    // An outsider organisation's device.
    let outsider_org = Org::new("Outsider", &mut w.rng);
    let outsider = outsider_org.device(Role::Caseworker, &mut w.rng);
    let forged = forge_control(&outsider, &accept(s.timeline()));
    let before = s.state().clone();
    let err = s
        .receive_control(&forged, &w.sender.trust, &w.receivers[0].trust, T0 + 120)
        .unwrap_err();
    assert!(matches!(err, ReferralError::UntrustedSigner { .. }));
    assert_eq!(s.state(), &before);
    // The sender's own caseworker accepting on the receiver's behalf.
    let forged = forge_control(&w.caseworker, &accept(s.timeline()));
    let err = s
        .receive_control(&forged, &w.sender.trust, &w.receivers[0].trust, T0 + 120)
        .unwrap_err();
    assert!(matches!(err, ReferralError::UntrustedSigner { .. }));
    // The receiver's own client refuses an acting device of another organisation.
    let err = r
        .act(Action::Accept, &outsider.actor(), T0 + 120)
        .unwrap_err();
    assert!(matches!(err, ReferralError::UntrustedSigner { .. }));
    // A stored timeline with such an entry does not verify.
    let mut t = s.timeline().clone();
    let forged = forge_control(&outsider, &accept(&t));
    t.append_unverified(&forged);
    verify(&w, s.timeline()).unwrap();
    assert_eq!(broken_at(verify(&w, &t)), 3);
    // Nor one with an illegal step (complete right after acknowledge), even well signed.
    let mut t = s.timeline().clone();
    let complete = wire::ReferralControl {
        action: Some(wire::referral_control::Action::Complete(wire::Complete {
            successful: true,
            reason: 0,
            note: String::new(),
        })),
        ..accept(&t)
    };
    t.append_unverified(&forge_control(&w.intake[0], &complete));
    assert_eq!(broken_at(verify(&w, &t)), 3);
}

#[test]
fn audit_export_has_states_times_actors_and_no_content() {
    let mut w = World::new(1);
    let (mut s, mut r) = w.send(0);
    w.receiver_acts(0, &mut s, &mut r, Action::Delivered, T0 + 100);
    w.receiver_acts(0, &mut s, &mut r, Action::Acknowledge, T0 + 110);
    w.receiver_acts(
        0,
        &mut s,
        &mut r,
        Action::RequestInfo {
            questions: vec!["Is the partner still in Namur?".to_owned()],
        },
        T0 + 120,
    );
    w.receiver_acts(
        0,
        &mut s,
        &mut r,
        Action::Decline {
            reason: wire::DeclineReason::NoCapacity,
            note: "Amina should try the Namur shelter".to_owned(),
        },
        T0 + 130,
    );
    let json = s.timeline().export_json();
    let text = json.to_string();
    assert_eq!(json["format"], "handover-timeline/1");
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    assert_eq!(entries[0]["action"], "OFFER");
    assert_eq!(entries[0]["priority"], "URGENT");
    assert_eq!(entries[0]["sections"][0], "IDENTITY");
    assert_eq!(entries[0]["at"], T0);
    assert_eq!(entries[1]["action"], "DELIVERED");
    assert_eq!(entries[3]["action"], "REQUEST_INFO");
    assert_eq!(entries[3]["questions"], 1);
    assert_eq!(entries[4]["action"], "DECLINE");
    assert_eq!(entries[4]["reason"], "NO_CAPACITY");
    assert_eq!(entries[4]["at"], T0 + 130);
    assert_eq!(entries[4]["actor"]["role"], "CASEWORKER");
    assert_eq!(entries[4]["prev_hash"], entries[3]["hash"]);
    for content in ["Namur", "Amina", "Safe accommodation", "HWC-2026", "Liège"] {
        assert!(
            !text.contains(content),
            "{content} leaked into the audit export"
        );
    }
    // The receiver erased the declined offer; its chain and summaries remain.
    assert!(r.offer().is_none());
    assert!(r.timeline().is_erased());
    r.timeline().verify_chain().unwrap();
    let erased = r.timeline().export_json();
    assert_eq!(erased["entries"][4]["reason"], "NO_CAPACITY");
    assert_eq!(erased["entries"][0]["content_erased"], true);
    assert_eq!(erased["head"], json["head"]);
}

mod mutations {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any single-byte change to a signed control (its bytes or signature) is refused and
        /// leaves the record unchanged.
        #[test]
        fn mutated_controls_are_refused(index in any::<prop::sample::Index>(), flip in 1u8..=255, in_sig in any::<bool>()) {
            let mut w = World::new(1);
            let (mut s, mut r) = w.send(0);
            let delivered = r.act(Action::Delivered, &w.intake[0].actor(), T0 + 100).unwrap();
            let mut bad = delivered.clone();
            let target = if in_sig { &mut bad.signature } else { &mut bad.control };
            let i = index.index(target.len());
            target[i] ^= flip;
            let before = s.timeline().clone();
            let result = s.receive_control(&bad, &w.sender.trust, &w.receivers[0].trust, T0 + 100);
            prop_assert!(result.is_err());
            prop_assert_eq!(s.timeline(), &before);
            // The genuine one still applies afterwards.
            s.receive_control(&delivered, &w.sender.trust, &w.receivers[0].trust, T0 + 100).unwrap();
        }
    }
}
