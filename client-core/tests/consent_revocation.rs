//! Revocation fan-out: withdrawing consent reaches every organisation that received data under
//! it; each erases and confirms; the sender sees who is still pending, including a receiver
//! that was offline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod referral_support;

use std::collections::BTreeMap;

use handover_core::consent::{ConsentEvent, DisclosureLedger, PurgeStatus};
use handover_core::referral::{
    Action, Closed, ReceiverEvent, ReceiverReferral, ReferralState, SenderEvent, SenderReferral,
    fan_out_consent_change,
};
use handover_proto::e2e::v1 as wire;
use referral_support::*;

struct Network {
    w: World,
    senders: BTreeMap<handover_core::referral::ReferralId, SenderReferral>,
    receivers: Vec<ReceiverReferral>,
    ledger: DisclosureLedger,
}

/// Three receiving organisations: two accepted (bodies released), one only offered.
fn network() -> Network {
    let mut w = World::new(3);
    let mut senders = BTreeMap::new();
    let mut receivers = Vec::new();
    for i in 0..3 {
        let (s, r) = if i < 2 { w.accepted(i) } else { w.send(i) };
        if i < 2 {
            assert_eq!(r.held_sections(), 4);
        }
        senders.insert(s.id(), s);
        receivers.push(r);
    }
    // The sender's client recorded who received what.
    let ledger = std::mem::take(&mut w.ledger);
    let disclosures = ledger.disclosures(&w.receipt().id());
    assert_eq!(disclosures.len(), 3);
    assert_eq!(disclosures[0].sections.len(), 4);
    assert!(disclosures[2].sections.is_empty(), "offer only");
    Network {
        w,
        senders,
        receivers,
        ledger,
    }
}

fn withdraw(
    n: &mut Network,
    now: u64,
) -> Vec<(handover_core::referral::ReferralId, wire::SignedControl)> {
    let consent = std::mem::replace(&mut n.w.consent, handover_core::consent::Consent::Requested);
    let withdrawn = consent
        .apply(
            ConsentEvent::Withdraw,
            &n.w.caseworker.actor(),
            now,
            &mut n.w.rng,
        )
        .unwrap();
    let new = withdrawn.current().unwrap().clone();
    n.w.registry.insert(new.clone()).unwrap();
    n.w.consent = withdrawn;
    fan_out_consent_change(
        &new,
        &mut n.ledger,
        &mut n.senders,
        &n.w.caseworker.actor(),
        now,
    )
    .unwrap()
}

/// Receiver `i` processes a CONSENT_CHANGED; the sender processes the confirmation.
fn process(n: &mut Network, i: usize, control: &wire::SignedControl, now: u64) -> SenderEvent {
    let event = n.receivers[i]
        .receive_control(
            control,
            &n.w.sender.trust,
            &n.w.receivers[i].trust,
            &mut handover_core::consent::ReceiptRegistry::new(),
            &n.w.intake[i].actor(),
            now,
        )
        .unwrap();
    let confirmation = match event {
        ReceiverEvent::Purged { confirmation, .. } | ReceiverEvent::Retained { confirmation } => {
            confirmation
        }
        other => panic!("expected a purge, got {other:?}"),
    };
    let id = n.receivers[i].id();
    let sender = n.senders.get_mut(&id).unwrap();
    let event = sender
        .receive_control(
            &confirmation,
            &n.w.sender.trust,
            &n.w.receivers[i].trust,
            now,
        )
        .unwrap();
    if let SenderEvent::PurgeConfirmed { at, retained_under } = &event {
        n.ledger.confirm_purge(&id, *at, retained_under.clone());
    }
    event
}

#[test]
fn withdrawal_fans_out_and_every_recipient_confirms() {
    let mut n = network();
    let old = n.w.receipt().id();
    let controls = withdraw(&mut n, T0 + DAY);
    assert_eq!(controls.len(), 3);
    assert_eq!(n.ledger.pending(&old).len(), 3);
    for s in n.senders.values() {
        assert_eq!(s.state(), &ReferralState::ConsentRevoked);
        assert_eq!(s.held_sections(), 0, "sender keeps no sealed copy");
    }
    // Receivers 0 and 1 are online.
    for i in 0..2 {
        let (_, control) = controls
            .iter()
            .find(|(id, _)| *id == n.receivers[i].id())
            .unwrap();
        let event = process(&mut n, i, control, T0 + DAY + 60);
        assert_eq!(
            event,
            SenderEvent::PurgeConfirmed {
                at: T0 + DAY + 60,
                retained_under: None
            }
        );
        let r = &n.receivers[i];
        assert_eq!(r.held_sections(), 0);
        assert!(r.offer().is_none());
        assert!(r.section(wire::Section::Identity).is_none());
        assert_eq!(
            r.state(),
            &ReferralState::PurgeConfirmed(Closed::ConsentRevoked)
        );
    }
    // Receiver 2 was offline: still pending, also after the sender's client restarts.
    n.ledger = DisclosureLedger::from_bytes(&n.ledger.to_bytes()).unwrap();
    let registry =
        handover_core::consent::ReceiptRegistry::from_bytes(&n.w.registry.to_bytes()).unwrap();
    let old_receipt = registry.get(&n.w.sender.trust.root(), &old).unwrap();
    assert!(registry.superseded_by(old_receipt).is_some());
    let pending = n.ledger.pending(&old);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].referral_id, n.receivers[2].id());
    assert!(matches!(pending[0].purge, PurgeStatus::Pending { since } if since == T0 + DAY));
    assert!(n.receivers[2].offer().is_some());

    // It comes back five days later and processes the queued message.
    let (_, control) = controls
        .iter()
        .find(|(id, _)| *id == n.receivers[2].id())
        .unwrap()
        .clone();
    process(&mut n, 2, &control, T0 + 6 * DAY);
    assert!(n.receivers[2].offer().is_none());
    assert!(n.ledger.pending(&old).is_empty());
    // Everyone's timelines agree and verify, including the signed receipts inside.
    for (i, r) in n.receivers.iter().enumerate() {
        let s = &n.senders[&r.id()];
        assert_eq!(s.timeline().head(), r.timeline().head());
        s.timeline()
            .verify(
                &n.w.sender.root.public_key(),
                &n.w.receivers[i].root.public_key(),
            )
            .unwrap();
        assert_eq!(
            s.state(),
            &ReferralState::PurgeConfirmed(Closed::ConsentRevoked)
        );
    }
}

#[test]
fn a_legal_hold_is_answered_with_retained_under_exception() {
    let mut n = network();
    n.receivers[0].set_legal_hold(Some(
        "Criminal proceedings, court order 2026/114".to_owned(),
    ));
    let controls = withdraw(&mut n, T0 + DAY);
    let (_, control) = controls
        .iter()
        .find(|(id, _)| *id == n.receivers[0].id())
        .unwrap()
        .clone();
    let event = process(&mut n, 0, &control, T0 + DAY + 1);
    assert_eq!(
        event,
        SenderEvent::PurgeConfirmed {
            at: T0 + DAY + 1,
            retained_under: Some("Criminal proceedings, court order 2026/114".to_owned())
        }
    );
    assert!(matches!(
        n.receivers[0].state(),
        ReferralState::RetainedUnderException { .. }
    ));
    assert_eq!(n.receivers[0].held_sections(), 4);
}

#[test]
fn a_renewal_is_not_a_revocation() {
    let mut n = network();
    let consent = std::mem::replace(&mut n.w.consent, handover_core::consent::Consent::Requested);
    let refs: Vec<&Org> = n.w.receivers.iter().collect();
    let mut draft = receipt_draft(&n.w.sender, &refs, &SECTIONS, T0);
    draft.valid_until = T0 + 365 * DAY;
    let renewed = consent
        .apply(
            ConsentEvent::Renew(Box::new(draft)),
            &n.w.caseworker.actor(),
            T0 + DAY,
            &mut n.w.rng,
        )
        .unwrap();
    let new = renewed.current().unwrap().clone();
    assert_eq!(new.state(), wire::ConsentState::Renewed);
    let controls = fan_out_consent_change(
        &new,
        &mut n.ledger,
        &mut n.senders,
        &n.w.caseworker.actor(),
        T0 + DAY,
    )
    .unwrap();
    assert_eq!(controls.len(), 3);
    assert!(n.ledger.pending(&new.supersedes().unwrap()).is_empty());
    let (_, control) = &controls[0];
    let i = n
        .receivers
        .iter()
        .position(|r| r.id() == controls[0].0)
        .unwrap();
    let event = n.receivers[i]
        .receive_control(
            control,
            &n.w.sender.trust,
            &n.w.receivers[i].trust,
            &mut handover_core::consent::ReceiptRegistry::new(),
            &n.w.intake[i].actor(),
            T0 + DAY,
        )
        .unwrap();
    assert!(matches!(
        event,
        ReceiverEvent::StateChanged(ReferralState::Accepted | ReferralState::Sent)
    ));
}

#[test]
fn sender_withdrawal_is_confirmed_by_the_receiver() {
    let mut w = World::new(1);
    let (mut s, mut r) = w.accepted(0);
    let withdraw = s
        .act(
            Action::Withdraw {
                reason: "The person moved away".to_owned(),
            },
            &w.caseworker.actor(),
            T0 + DAY,
        )
        .unwrap();
    assert_eq!(s.held_sections(), 0);
    let event = r
        .receive_control(
            &withdraw,
            &w.sender.trust,
            &w.receivers[0].trust,
            &mut handover_core::consent::ReceiptRegistry::new(),
            &w.intake[0].actor(),
            T0 + DAY,
        )
        .unwrap();
    let ReceiverEvent::Purged { confirmation, .. } = event else {
        panic!("no purge");
    };
    assert_eq!(r.held_sections(), 0);
    s.receive_control(
        &confirmation,
        &w.sender.trust,
        &w.receivers[0].trust,
        T0 + DAY,
    )
    .unwrap();
    assert_eq!(s.state(), &ReferralState::PurgeConfirmed(Closed::Withdrawn));
}

#[test]
fn a_consent_change_must_supersede_the_referrals_receipt() {
    let mut n = network();
    // A receipt for something else entirely, withdrawn: it does not supersede this referral's.
    let refs = [&n.w.receivers[0]];
    let mut rng = rng(21);
    let other = give_consent(&n.w.sender, &n.w.caseworker, &refs, &SECTIONS, T0, &mut rng);
    let other_withdrawn = other
        .apply(
            ConsentEvent::Withdraw,
            &n.w.caseworker.actor(),
            T0 + 1,
            &mut rng,
        )
        .unwrap();
    let id = n.receivers[0].id();
    let unrelated = n
        .senders
        .get_mut(&id)
        .unwrap()
        .consent_changed(
            other_withdrawn.current().unwrap(),
            &n.w.caseworker.actor(),
            T0 + 2,
        )
        .unwrap_err();
    assert!(matches!(
        unrelated,
        handover_core::referral::ReferralError::Consent(
            handover_core::consent::GateError::ReceiptMismatch { .. }
        )
    ));
    // Forged by hand, the receiving client refuses it and nothing changes.
    let control = wire::ReferralControl {
        referral_id: id.as_bytes().to_vec(),
        sequence: n.receivers[0].timeline().len(),
        prev_hash: n.receivers[0].timeline().head().to_vec(),
        at: T0 + 2,
        action: Some(wire::referral_control::Action::ConsentChanged(
            wire::ConsentChanged {
                receipt: Some(other_withdrawn.current().unwrap().signed().clone()),
            },
        )),
    };
    let forged = forge_control(&n.w.caseworker, &control);
    let before = n.receivers[0].state().clone();
    let err = n.receivers[0]
        .receive_control(
            &forged,
            &n.w.sender.trust,
            &n.w.receivers[0].trust,
            &mut handover_core::consent::ReceiptRegistry::new(),
            &n.w.intake[0].actor(),
            T0 + 2,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        handover_core::referral::ReferralError::Consent(
            handover_core::consent::GateError::ReceiptMismatch { .. }
        )
    ));
    assert_eq!(n.receivers[0].state(), &before);
    assert_eq!(n.receivers[0].held_sections(), 4);
}

#[test]
fn after_a_withdrawal_the_receiver_refuses_new_offers_under_the_old_receipt() {
    let mut n = network();
    let old = n.w.receipt().signed().clone();
    // An offer prepared before the withdrawal, delivered (or replayed) after it.
    let (late, _) = n.w.send(0);
    let controls = withdraw(&mut n, T0 + DAY);
    let mut known = handover_core::consent::ReceiptRegistry::new();
    let (_, control) = controls
        .iter()
        .find(|(id, _)| *id == n.receivers[0].id())
        .unwrap();
    n.receivers[0]
        .receive_control(
            control,
            &n.w.sender.trust,
            &n.w.receivers[0].trust,
            &mut known,
            &n.w.intake[0].actor(),
            T0 + DAY,
        )
        .unwrap();
    let err = ReceiverReferral::receive_offer(
        &forge_offer(&n.w.caseworker, late.offer()),
        Some(&old),
        &n.w.sender.trust,
        &n.w.intake[0].cert,
        &known,
        T0 + DAY + 10,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        handover_core::referral::ReferralError::Consent(
            handover_core::consent::GateError::Revoked {
                state: "WITHDRAWN",
                ..
            }
        )
    ));
}

#[test]
fn declined_offers_are_purged_and_confirmed() {
    let mut w = World::new(1);
    let (mut s, mut r) = w.send(0);
    w.receiver_acts(0, &mut s, &mut r, Action::Delivered, T0 + 100);
    w.receiver_acts(0, &mut s, &mut r, Action::Acknowledge, T0 + 110);
    w.receiver_acts(
        0,
        &mut s,
        &mut r,
        Action::Decline {
            reason: wire::DeclineReason::ConflictOfInterest,
            note: String::new(),
        },
        T0 + 120,
    );
    assert!(r.offer().is_none());
    let ReceiverEvent::Purged { confirmation, .. } =
        r.confirm_purge(&w.intake[0].actor(), T0 + 130).unwrap()
    else {
        panic!("expected a purge confirmation");
    };
    s.receive_control(
        &confirmation,
        &w.sender.trust,
        &w.receivers[0].trust,
        T0 + 130,
    )
    .unwrap();
    assert_eq!(s.state(), &ReferralState::PurgeConfirmed(Closed::Declined));
}
