//! Two-phase referrals end to end with signed control messages: offer, acceptance, body
//! release with per-section keys and commitments, ambassadors, identifiers in offers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod referral_support;

use handover_core::consent::ReceiptRegistry;
use handover_core::identity::Role;
use handover_core::referral::{
    Action, ConsentInput, Outcome, ReceiverReferral, ReferralError, ReferralState, SenderEvent,
    SenderReferral,
};
use handover_proto::e2e::v1 as wire;
use referral_support::*;

#[test]
fn offer_accept_release_complete() {
    let mut w = World::new(1);
    let (mut s, mut r) = w.send(0);
    assert_eq!(s.state(), &ReferralState::Sent);
    assert_eq!(r.state(), &ReferralState::Sent);
    // The offer carries commitments, no body content.
    let offer = r.offer().unwrap();
    assert_eq!(offer.section_commitments.len(), 4);
    assert_eq!(offer.respond_by, T0 + 72 * 3600);

    w.receiver_acts(0, &mut s, &mut r, Action::Delivered, T0 + 120);
    w.receiver_acts(0, &mut s, &mut r, Action::Acknowledge, T0 + 130);
    w.receiver_acts(
        0,
        &mut s,
        &mut r,
        Action::RequestInfo {
            questions: vec!["Does she need a ground-floor room?".to_owned()],
        },
        T0 + 140,
    );
    let answer = s
        .act(
            Action::ProvideInfo {
                answers: vec!["Yes".to_owned()],
            },
            &w.caseworker.actor(),
            T0 + 150,
        )
        .unwrap();
    r.receive_control(
        &answer,
        &w.sender.trust,
        &w.receivers[0].trust,
        &mut handover_core::consent::ReceiptRegistry::new(),
        &w.intake[0].actor(),
        T0 + 150,
    )
    .unwrap();
    assert_eq!(r.state(), &ReferralState::Acknowledged);

    // No body before acceptance.
    let err = s
        .release_body(&w.intake[0].cert, &w.registry, &mut w.ledger, T0 + 155)
        .unwrap_err();
    assert!(matches!(err, ReferralError::BodyNotAllowed { .. }));

    let accept = r
        .act(Action::Accept, &w.intake[0].actor(), T0 + 160)
        .unwrap();
    let event = s
        .receive_control(&accept, &w.sender.trust, &w.receivers[0].trust, T0 + 160)
        .unwrap();
    assert_eq!(event, SenderEvent::ReleaseBody);
    let body = s
        .release_body(&w.intake[0].cert, &w.registry, &mut w.ledger, T0 + 170)
        .unwrap();
    // Each section has its own key.
    assert_eq!(body.keys.len(), 4);
    let mut keys: Vec<&Vec<u8>> = body.keys.iter().map(|k| &k.key).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 4);
    r.receive_body(
        &body,
        &w.intake[0].cert,
        &w.sender.trust,
        &ReceiptRegistry::new(),
        T0 + 170,
    )
    .unwrap();
    let identity = r.section(wire::Section::Identity).unwrap().unwrap();
    match identity.content {
        Some(wire::body_section::Content::Identity(i)) => {
            assert_eq!(i.name_or_alias, "Amina Haddad");
        }
        other => panic!("wrong section {other:?}"),
    }
    assert!(r.section(wire::Section::Location).is_none());

    w.receiver_acts(0, &mut s, &mut r, Action::StartService, T0 + DAY);
    w.receiver_acts(
        0,
        &mut s,
        &mut r,
        Action::Complete {
            outcome: Outcome::Successful,
            note: "Moved into shelter".to_owned(),
        },
        T0 + 10 * DAY,
    );
    assert_eq!(s.outcome(), Some(Outcome::Successful));
    assert_eq!(r.state(), s.state());
    // Both sides hold the same chain.
    assert_eq!(s.timeline().head(), r.timeline().head());
    s.timeline()
        .verify(
            &w.sender.root.public_key(),
            &w.receivers[0].root.public_key(),
        )
        .unwrap();
}

#[test]
fn tampered_or_swapped_sections_are_refused() {
    let mut w = World::new(1);
    let (mut s, mut r) = w.send(0);
    w.receiver_acts(0, &mut s, &mut r, Action::Delivered, T0 + 120);
    w.receiver_acts(0, &mut s, &mut r, Action::Acknowledge, T0 + 130);
    w.receiver_acts(0, &mut s, &mut r, Action::Accept, T0 + 140);
    let body = s
        .release_body(&w.intake[0].cert, &w.registry, &mut w.ledger, T0 + 150)
        .unwrap();
    let empty = ReceiptRegistry::new();

    let mut tampered = body.clone();
    tampered.sections[1].ciphertext[0] ^= 1;
    let err = r
        .receive_body(
            &tampered,
            &w.intake[0].cert,
            &w.sender.trust,
            &empty,
            T0 + 150,
        )
        .unwrap_err();
    assert!(matches!(err, ReferralError::CommitmentMismatch { .. }));

    // A section relabelled as another one fails its commitment.
    let mut swapped = body.clone();
    swapped.sections[0].section = swapped.sections[1].section;
    assert!(
        r.receive_body(
            &swapped,
            &w.intake[0].cert,
            &w.sender.trust,
            &empty,
            T0 + 150
        )
        .is_err()
    );

    // A wrong key fails the offer's commitment, which covers the key (docs/PROTOCOL.md
    // §11.2), before anything is decrypted.
    let mut wrong_key = body.clone();
    wrong_key.keys[0].key = vec![7; 32];
    let err = r
        .receive_body(
            &wrong_key,
            &w.intake[0].cert,
            &w.sender.trust,
            &empty,
            T0 + 150,
        )
        .unwrap_err();
    assert!(matches!(err, ReferralError::CommitmentMismatch { .. }));
    assert_eq!(
        err.to_string(),
        "section IDENTITY does not match the offer's commitment"
    );

    // Nothing was kept from the failed attempts; the genuine body is accepted.
    assert_eq!(r.held_sections(), 0);
    r.receive_body(&body, &w.intake[0].cert, &w.sender.trust, &empty, T0 + 150)
        .unwrap();
    assert_eq!(r.held_sections(), 4);
}

#[test]
fn ambassadors_never_receive_bodies() {
    let mut w = World::new(1);
    let (mut s, mut r) = w.send(0);
    w.receiver_acts(0, &mut s, &mut r, Action::Delivered, T0 + 120);
    w.receiver_acts(0, &mut s, &mut r, Action::Acknowledge, T0 + 130);
    // An ambassador device cannot accept.
    let err = r
        .act(Action::Accept, &w.receiver_ambassadors[0].actor(), T0 + 135)
        .unwrap_err();
    assert!(matches!(err, ReferralError::Lifecycle(_)));
    w.receiver_acts(0, &mut s, &mut r, Action::Accept, T0 + 140);
    // The sender refuses to release to an ambassador device.
    let err = s
        .release_body(
            &w.receiver_ambassadors[0].cert,
            &w.registry,
            &mut w.ledger,
            T0 + 150,
        )
        .unwrap_err();
    assert_eq!(err, ReferralError::AmbassadorCannotReceiveBody);
    // The ambassador's client refuses a body it got anyway.
    let body = s
        .release_body(&w.intake[0].cert, &w.registry, &mut w.ledger, T0 + 150)
        .unwrap();
    let err = r
        .receive_body(
            &body,
            &w.receiver_ambassadors[0].cert,
            &w.sender.trust,
            &ReceiptRegistry::new(),
            T0 + 150,
        )
        .unwrap_err();
    assert_eq!(err, ReferralError::AmbassadorCannotReceiveBody);
    // And never to a device of another organisation.
    let other = Org::new("Elsewhere", &mut w.rng);
    let stranger = other.device(Role::Caseworker, &mut w.rng);
    assert!(matches!(
        s.release_body(&stranger.cert, &w.registry, &mut w.ledger, T0 + 150),
        Err(ReferralError::NotAddressedToUs { .. })
    ));
}

/// A change to an offer draft.
type Edit = Box<dyn Fn(&mut handover_core::referral::OfferDraft)>;

fn prepare_with(
    w: &mut World,
    draft: &handover_core::referral::OfferDraft,
    sections: &[wire::BodySection],
) -> Result<SenderReferral, ReferralError> {
    let receipt = w.receipt().signed().clone();
    SenderReferral::prepare(
        draft,
        sections,
        ConsentInput::Receipt(&receipt),
        &w.sender.trust,
        &w.registry,
        &w.caseworker.actor(),
        T0,
        &mut w.rng,
    )
}

#[test]
fn offers_refuse_direct_identifiers() {
    let mut w = World::new(1);
    let base = offer_draft(&w.sender, &w.receivers[0]);
    let sections = body_sections();
    let cases: Vec<(&str, Edit)> = vec![
        (
            "purpose",
            Box::new(|d| d.purpose = format!("{PURPOSE} for Amina Haddad")),
        ),
        (
            "purpose",
            Box::new(|d| d.purpose = "Call her on +32 470 12 34 56".to_owned()),
        ),
        (
            "purpose",
            Box::new(|d| d.purpose = "Write to amina@example.com".to_owned()),
        ),
        (
            "sender_case_ref",
            Box::new(|d| d.sender_case_ref = "amina haddad".to_owned()),
        ),
        (
            "retention_rule",
            Box::new(|d| d.retention_rule = "Passport 12345678".to_owned()),
        ),
        (
            "purpose",
            Box::new(|d| d.purpose = "Code word is bluebird".to_owned()),
        ),
    ];
    for (field, edit) in cases {
        let mut draft = base.clone();
        edit(&mut draft);
        let err = prepare_with(&mut w, &draft, &sections).unwrap_err();
        assert_eq!(err, ReferralError::IdentifierInOffer { field }, "{field}");
        // The error text carries no content.
        assert!(!err.to_string().to_lowercase().contains("amina"));
    }
}

#[test]
fn offers_need_the_required_fields() {
    let mut w = World::new(1);
    let base = offer_draft(&w.sender, &w.receivers[0]);
    let sections = body_sections();
    let cases: Vec<(&str, Edit)> = vec![
        (
            "kind",
            Box::new(|d| d.kind = wire::ReferralKind::Unspecified),
        ),
        ("sender_case_ref", Box::new(|d| d.sender_case_ref.clear())),
        (
            "services_requested",
            Box::new(|d| d.services_requested.clear()),
        ),
        (
            "priority",
            Box::new(|d| d.priority = wire::Priority::Unspecified),
        ),
        ("purpose", Box::new(|d| d.purpose.clear())),
        ("languages", Box::new(|d| d.languages.clear())),
        (
            "age_band",
            Box::new(|d| d.age_band = wire::AgeBand::Unspecified),
        ),
        ("retain_until", Box::new(|d| d.retain_until = T0)),
        ("to", Box::new(|d| d.to.org_root_key.clear())),
        ("guardian", Box::new(|d| d.is_minor = true)),
    ];
    for (field, edit) in cases {
        let mut draft = base.clone();
        edit(&mut draft);
        match prepare_with(&mut w, &draft, &sections) {
            Err(ReferralError::InvalidDraft { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    // Required body sections.
    let mut missing_risk = sections.clone();
    missing_risk.pop();
    assert!(matches!(
        prepare_with(&mut w, &base, &missing_risk),
        Err(ReferralError::InvalidDraft { field: "risk", .. })
    ));
    // The draft is intact after every refusal and still works.
    prepare_with(&mut w, &base, &sections).unwrap();
}

#[test]
fn offer_for_another_organisation_or_from_an_untrusted_one_is_refused() {
    let mut w = World::new(2);
    let (mut s, _) = w.send(0);
    let _ = &mut s;
    let draft = offer_draft(&w.sender, &w.receivers[0]);
    let receipt = w.receipt().signed().clone();
    let mut s = SenderReferral::prepare(
        &draft,
        &body_sections(),
        handover_core::referral::ConsentInput::Receipt(&receipt),
        &w.sender.trust,
        &w.registry,
        &w.caseworker.actor(),
        T0,
        &mut w.rng,
    )
    .unwrap();
    let (offer, receipt) = s.mark_sent(&w.caseworker.actor(), &mut w.ledger).unwrap();
    // Receiver 1 is not the addressee.
    let err = ReceiverReferral::receive_offer(
        &offer,
        receipt.as_ref(),
        &w.sender.trust,
        &w.intake[1].cert,
        &ReceiptRegistry::new(),
        T0 + 60,
    )
    .unwrap_err();
    assert!(matches!(err, ReferralError::NotAddressedToUs { .. }));
    // Claimed to come from receiver 1's organisation: the signature does not verify there.
    let err = ReceiverReferral::receive_offer(
        &offer,
        receipt.as_ref(),
        &w.receivers[1].trust,
        &w.intake[0].cert,
        &ReceiptRegistry::new(),
        T0 + 60,
    )
    .unwrap_err();
    assert!(matches!(err, ReferralError::UntrustedSigner { .. }));
    // A tampered offer fails its signature.
    let mut tampered = offer.clone();
    let last = tampered.offer.len() - 1;
    tampered.offer[last] ^= 1;
    assert!(
        ReceiverReferral::receive_offer(
            &tampered,
            receipt.as_ref(),
            &w.sender.trust,
            &w.intake[0].cert,
            &ReceiptRegistry::new(),
            T0 + 60,
        )
        .is_err()
    );
}

#[test]
fn replayed_or_out_of_order_controls_are_refused() {
    let mut w = World::new(1);
    let (mut s, mut r) = w.send(0);
    let delivered = w.receiver_acts(0, &mut s, &mut r, Action::Delivered, T0 + 120);
    let state = s.state().clone();
    let err = s
        .receive_control(&delivered, &w.sender.trust, &w.receivers[0].trust, T0 + 130)
        .unwrap_err();
    assert!(matches!(err, ReferralError::OutOfOrder { expected: 2 }));
    assert_eq!(s.state(), &state);
    // A control dated in the future.
    let ack = r
        .act(Action::Acknowledge, &w.intake[0].actor(), T0 + 10_000)
        .unwrap();
    assert_eq!(
        s.receive_control(&ack, &w.sender.trust, &w.receivers[0].trust, T0 + 200),
        Err(ReferralError::FromTheFuture)
    );
    s.receive_control(&ack, &w.sender.trust, &w.receivers[0].trust, T0 + 10_000)
        .unwrap();
}

#[test]
fn an_accepted_transfer_moves_ownership() {
    let mut w = World::new(1);
    let mut draft = offer_draft(&w.sender, &w.receivers[0]);
    draft.kind = wire::ReferralKind::Transfer;
    let mut s = prepare_with(&mut w, &draft, &body_sections()).unwrap();
    let (offer, receipt) = s.mark_sent(&w.caseworker.actor(), &mut w.ledger).unwrap();
    let mut r = ReceiverReferral::receive_offer(
        &offer,
        receipt.as_ref(),
        &w.sender.trust,
        &w.intake[0].cert,
        &ReceiptRegistry::new(),
        T0 + 60,
    )
    .unwrap();
    w.receiver_acts(0, &mut s, &mut r, Action::Delivered, T0 + 100);
    w.receiver_acts(0, &mut s, &mut r, Action::Acknowledge, T0 + 110);
    assert!(!s.ownership_transferred());
    w.receiver_acts(0, &mut s, &mut r, Action::Accept, T0 + 120);
    assert!(s.ownership_transferred());
    let err = s
        .act(
            Action::Withdraw {
                reason: String::new(),
            },
            &w.caseworker.actor(),
            T0 + 130,
        )
        .unwrap_err();
    assert!(matches!(err, ReferralError::Lifecycle(_)));
}

#[test]
fn timelines_are_bounded_and_offers_from_the_future_refused() {
    let mut w = World::new(1);
    let (_, mut r) = w.accepted(0);
    let update = || {
        Action::Update(wire::Update {
            update: Some(wire::update::Update::ContactMadeAt(T0)),
        })
    };
    let mut n = r.timeline().len();
    loop {
        match r.act(update(), &w.intake[0].actor(), T0 + 1000) {
            Ok(_) => n += 1,
            Err(ReferralError::TimelineFull) => break,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(n, handover_core::referral::MAX_TIMELINE_ENTRIES);

    let (s, _) = w.send(0);
    let mut offer = open_offer(&forge_offer(&w.caseworker, s.offer()));
    offer.created_at = T0 + 10_000;
    let err = ReceiverReferral::receive_offer(
        &forge_offer(&w.caseworker, &offer),
        Some(w.receipt().signed()),
        &w.sender.trust,
        &w.intake[0].cert,
        &ReceiptRegistry::new(),
        T0 + 60,
    )
    .unwrap_err();
    assert_eq!(err, ReferralError::FromTheFuture);
}

#[test]
fn signed_offers_travel_in_content() {
    use prost::Message;
    let mut w = World::new(1);
    let draft = offer_draft(&w.sender, &w.receivers[0]);
    let mut s = prepare_with(&mut w, &draft, &body_sections()).unwrap();
    let (offer, _) = s.mark_sent(&w.caseworker.actor(), &mut w.ledger).unwrap();
    let content = wire::Content {
        message_id: vec![1; 16],
        sent_at: T0,
        expires_at: 0,
        body: Some(wire::content::Body::SignedReferralOffer(offer.clone())),
    };
    let back = handover_proto::decode::content(&content.encode_to_vec()).unwrap();
    assert_eq!(back, content);
    let mut bad = offer;
    bad.signature.pop();
    assert!(handover_proto::decode::signed_referral_offer(&bad.encode_to_vec()).is_err());
}
