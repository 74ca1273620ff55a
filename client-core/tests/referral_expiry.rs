//! Expiry with an injected clock: offers by priority, bodies at retain_until, messages by their
//! timers; content and keys are erased and the sender learns "expired undelivered".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod referral_support;

use handover_core::consent::ReceiptRegistry;
use handover_core::referral::{
    Action, Closed, ConsentInput, EMERGENCY_OFFER_TTL_SECS, Erasure, NORMAL_OFFER_TTL_SECS,
    ReceiverEvent, ReceiverReferral, ReferralError, ReferralState, SenderEvent, SenderReferral,
    TimedContent, URGENT_OFFER_TTL_SECS, offer_ttl,
};
use handover_proto::e2e::v1 as wire;
use referral_support::*;

#[test]
fn default_lifetimes_by_priority() {
    assert_eq!(EMERGENCY_OFFER_TTL_SECS, 24 * 3600);
    assert_eq!(URGENT_OFFER_TTL_SECS, 72 * 3600);
    assert_eq!(NORMAL_OFFER_TTL_SECS, 14 * 24 * 3600);
    assert_eq!(
        offer_ttl(wire::Priority::Emergency),
        EMERGENCY_OFFER_TTL_SECS
    );
    assert_eq!(offer_ttl(wire::Priority::Urgent), URGENT_OFFER_TTL_SECS);
    assert_eq!(offer_ttl(wire::Priority::Normal), NORMAL_OFFER_TTL_SECS);
}

#[test]
fn emergency_offer_expires_undelivered_after_24_hours() {
    let mut w = World::new(1);
    let mut draft = offer_draft(&w.sender, &w.receivers[0]);
    draft.priority = wire::Priority::Emergency;
    let receipt = w.receipt().signed().clone();
    let mut s = SenderReferral::prepare(
        &draft,
        &body_sections(),
        ConsentInput::Receipt(&receipt),
        &w.sender.trust,
        &w.registry,
        &w.caseworker.actor(),
        T0,
        &mut w.rng,
    )
    .unwrap();
    assert_eq!(s.offer().offer_expires_at, T0 + 24 * 3600);
    let (offer, receipt) = s.mark_sent(&w.caseworker.actor(), &mut w.ledger).unwrap();
    let actor = w.caseworker.actor();
    assert_eq!(s.tick(&actor, T0 + 24 * 3600 - 1).unwrap(), None);
    assert_eq!(s.held_sections(), 4);
    let event = s.tick(&actor, T0 + 24 * 3600).unwrap().unwrap();
    let SenderEvent::ExpiredUndelivered(expired) = event else {
        panic!("expected expired undelivered, got {event:?}");
    };
    assert_eq!(s.state(), &ReferralState::Expired);
    assert_eq!(s.held_sections(), 0, "section keys and ciphertexts erased");
    assert!(
        s.release_body(
            &w.intake[0].cert,
            &w.registry,
            &mut w.ledger,
            T0 + 24 * 3600
        )
        .is_err()
    );
    // A receiver that only now sees the offer refuses it.
    let err = ReceiverReferral::receive_offer(
        &offer,
        receipt.as_ref(),
        &w.sender.trust,
        &w.intake[0].cert,
        &ReceiptRegistry::new(),
        T0 + 24 * 3600,
    )
    .unwrap_err();
    assert!(matches!(err, ReferralError::OfferExpired { .. }));
    // The EXPIRED control itself is signed and chained.
    assert_eq!(s.timeline().len(), 2);
    assert!(!expired.signature.is_empty());
}

#[test]
fn relay_reports_expired_undelivered() {
    let mut w = World::new(1);
    let (mut s, _) = w.send(0);
    let event = s
        .envelope_expired(&w.caseworker.actor(), T0 + 3600)
        .unwrap();
    assert!(matches!(event, SenderEvent::ExpiredUndelivered(_)));
    assert_eq!(s.held_sections(), 0);
}

#[test]
fn unanswered_offer_expires_on_both_sides() {
    let mut w = World::new(1);
    let (mut s, mut r) = w.send(0);
    w.receiver_acts(0, &mut s, &mut r, Action::Delivered, T0 + 100);
    w.receiver_acts(0, &mut s, &mut r, Action::Acknowledge, T0 + 200);
    let due = T0 + URGENT_OFFER_TTL_SECS;
    // The receiver's clock gets there first: it erases locally without a message.
    assert_eq!(r.tick(&w.intake[0].actor(), due - 1).unwrap(), None);
    let event = r.tick(&w.intake[0].actor(), due).unwrap().unwrap();
    assert_eq!(event, ReceiverEvent::OfferExpired(Erasure::Offer(r.id())));
    assert!(r.offer().is_none());
    assert_eq!(r.state(), &ReferralState::Expired);
    // Too late to accept.
    assert!(
        r.act(Action::Accept, &w.intake[0].actor(), due + 1)
            .is_err()
    );
    // The sender's signed EXPIRED arrives and is chained on both sides.
    let event = s.tick(&w.caseworker.actor(), due + 5).unwrap().unwrap();
    let SenderEvent::ExpiredUnanswered(expired) = event else {
        panic!("expected expired unanswered, got {event:?}");
    };
    r.receive_control(
        &expired,
        &w.sender.trust,
        &w.receivers[0].trust,
        &mut handover_core::consent::ReceiptRegistry::new(),
        &w.intake[0].actor(),
        due + 6,
    )
    .unwrap();
    assert_eq!(s.timeline().head(), r.timeline().head());
    // Nothing else can happen to the expired offer.
    let err = r
        .act(Action::Delivered, &w.intake[0].actor(), due + 7)
        .unwrap_err();
    assert!(matches!(err, ReferralError::Lifecycle(_)));
}

#[test]
fn accepted_body_is_erased_at_retain_until() {
    let mut w = World::new(1);
    let (mut s, mut r) = w.accepted(0);
    let retain_until = r.offer().unwrap().retain_until;
    assert_eq!(r.held_sections(), 4);
    let actor = w.intake[0].actor();
    assert_eq!(r.tick(&actor, retain_until - 1).unwrap(), None);
    let event = r.tick(&actor, retain_until).unwrap().unwrap();
    let ReceiverEvent::Purged {
        erasure,
        confirmation,
    } = event
    else {
        panic!("expected a purge, got {event:?}");
    };
    assert_eq!(erasure, Erasure::Body(r.id()));
    assert_eq!(r.held_sections(), 0);
    assert!(r.section(wire::Section::Risk).is_none());
    assert!(r.offer().is_none());
    let event = s
        .receive_control(
            &confirmation,
            &w.sender.trust,
            &w.receivers[0].trust,
            retain_until,
        )
        .unwrap();
    assert!(matches!(event, SenderEvent::PurgeConfirmed { .. }));
    assert_eq!(
        s.state(),
        &ReferralState::PurgeConfirmed(Closed::RetentionEnded)
    );
    s.timeline()
        .verify(
            &w.sender.root.public_key(),
            &w.receivers[0].root.public_key(),
        )
        .unwrap();
}

#[test]
fn messages_disappear_at_their_timer() {
    let mut m = TimedContent::new([9; 16], T0 + 3600, b"see you at 3".to_vec());
    let mut forever = TimedContent::new([8; 16], 0, b"no timer".to_vec());
    assert_eq!(m.read(T0), Some(&b"see you at 3"[..]));
    assert_eq!(m.tick(T0 + 3599), None);
    // Unreadable from the moment the timer fires, even before the sweep.
    assert_eq!(m.read(T0 + 3600), None);
    assert_eq!(m.tick(T0 + 3600), Some(Erasure::Message([9; 16])));
    assert!(m.is_erased());
    assert_eq!(m.tick(T0 + 7200), None);
    assert_eq!(forever.tick(u64::MAX), None);
    assert!(forever.read(u64::MAX).is_some());
}
