//! The consent gate on both clients: recipient, purpose, sections, validity, signatures and
//! overrides.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod referral_support;

use handover_core::consent::{
    ConsentError, ConsentEvent, GateError, ReceiptId, ReceiptRegistry, SignedReceipt,
};
use handover_core::identity::Role;
use handover_core::referral::{ConsentInput, ReceiverReferral, ReferralError, SenderReferral};
use handover_proto::e2e::v1 as wire;
use referral_support::*;

fn prepare(
    w: &mut World,
    draft: &handover_core::referral::OfferDraft,
    receipt: &wire::SignedConsentReceipt,
    now: u64,
) -> Result<SenderReferral, ReferralError> {
    SenderReferral::prepare(
        draft,
        &body_sections(),
        ConsentInput::Receipt(receipt),
        &w.sender.trust,
        &w.registry,
        &w.caseworker.actor(),
        now,
        &mut w.rng,
    )
}

fn gate(err: ReferralError) -> GateError {
    match err {
        ReferralError::Consent(g) => g,
        other => panic!("not a consent gate error: {other:?}"),
    }
}

/// Lets the receiver judge an offer the sender's client would have refused: the test re-signs
/// it with the sender device's key.
fn receiver_check(
    w: &World,
    offer: &wire::ReferralOffer,
    receipt: Option<&wire::SignedConsentReceipt>,
    signer: &Device,
    registry: &ReceiptRegistry,
) -> Result<ReceiverReferral, ReferralError> {
    let signed = forge_offer(signer, offer);
    ReceiverReferral::receive_offer(
        &signed,
        receipt,
        &w.sender.trust,
        &w.intake[0].cert,
        registry,
        T0 + 60,
    )
}

fn good_offer(w: &mut World) -> (wire::ReferralOffer, wire::SignedConsentReceipt) {
    let draft = offer_draft(&w.sender, &w.receivers[0]);
    let receipt = w.receipt().signed().clone();
    let mut s = prepare(w, &draft, &receipt, T0).unwrap();
    let (offer, _) = s.mark_sent(&w.caseworker.actor(), &mut w.ledger).unwrap();
    (open_offer(&offer), receipt)
}

#[test]
fn recipient_not_covered() {
    // Consent names receiver 0 only.
    let mut w = World::new(2);
    let refs = [&w.receivers[0]];
    let mut rng = rng(11);
    let consent = give_consent(&w.sender, &w.caseworker, &refs, &SECTIONS, T0, &mut rng);
    let receipt = consent.current().unwrap().clone();
    let short = receipt.id().short();
    let draft = offer_draft(&w.sender, &w.receivers[1]);
    let err = gate(prepare(&mut w, &draft, receipt.signed(), T0).unwrap_err());
    assert_eq!(err, GateError::RecipientNotCovered { receipt: short });
    assert_eq!(
        err.to_string(),
        format!("recipient organisation not covered by consent receipt {short}")
    );
    // Receiving side: an offer to receiver 0 naming receiver 0 in `to` but whose receipt does
    // not name it is refused there too.
    let (mut offer, _) = good_offer(&mut w);
    let refs1 = [&w.receivers[1]];
    let other = give_consent(&w.sender, &w.caseworker, &refs1, &SECTIONS, T0, &mut rng);
    let other = other.current().unwrap();
    offer.consent = Some(wire::ConsentRef {
        basis: Some(wire::consent_ref::Basis::Receipt(other.reference())),
    });
    let err = receiver_check(
        &w,
        &offer,
        Some(other.signed()),
        &w.caseworker,
        &ReceiptRegistry::new(),
    );
    assert_eq!(
        gate(err.unwrap_err()),
        GateError::RecipientNotCovered {
            receipt: other.id().short()
        }
    );
}

#[test]
fn purpose_not_covered() {
    let mut w = World::new(1);
    let mut draft = offer_draft(&w.sender, &w.receivers[0]);
    draft.purpose = "Police statement".to_owned();
    let receipt = w.receipt().signed().clone();
    let short = w.receipt().id().short();
    let err = gate(prepare(&mut w, &draft, &receipt, T0).unwrap_err());
    assert_eq!(err, GateError::PurposeNotCovered { receipt: short });
    // Receiver side.
    let (mut offer, receipt) = good_offer(&mut w);
    offer.purpose = "Police statement".to_owned();
    let err = receiver_check(
        &w,
        &offer,
        Some(&receipt),
        &w.caseworker,
        &ReceiptRegistry::new(),
    );
    assert_eq!(
        gate(err.unwrap_err()),
        GateError::PurposeNotCovered { receipt: short }
    );
}

#[test]
fn section_not_covered() {
    let mut w = World::new(1);
    let refs = [&w.receivers[0]];
    let mut rng = rng(12);
    let without_risk = &SECTIONS[..3];
    let consent = give_consent(&w.sender, &w.caseworker, &refs, without_risk, T0, &mut rng);
    let receipt = consent.current().unwrap().clone();
    let short = receipt.id().short();
    let draft = offer_draft(&w.sender, &w.receivers[0]);
    let err = gate(prepare(&mut w, &draft, receipt.signed(), T0).unwrap_err());
    assert_eq!(
        err,
        GateError::SectionNotCovered {
            section: "RISK",
            receipt: short
        }
    );
    assert_eq!(
        err.to_string(),
        format!("section RISK not covered by consent receipt {short}")
    );
    // Receiver side: an offer that slips the RISK section under this receipt.
    let (mut offer, _) = good_offer(&mut w);
    offer.consent = Some(wire::ConsentRef {
        basis: Some(wire::consent_ref::Basis::Receipt(receipt.reference())),
    });
    let err = receiver_check(
        &w,
        &offer,
        Some(receipt.signed()),
        &w.caseworker,
        &ReceiptRegistry::new(),
    );
    assert_eq!(
        gate(err.unwrap_err()),
        GateError::SectionNotCovered {
            section: "RISK",
            receipt: short
        }
    );
}

#[test]
fn withheld_section_and_services_and_retention() {
    let mut w = World::new(1);
    let mut rng = rng(13);
    let mut draft_receipt = receipt_draft(&w.sender, &[&w.receivers[0]], &SECTIONS, T0);
    draft_receipt.withheld.push(wire::Withheld {
        section: wire::Section::Risk as i32,
        from_whom: w.receivers[0].name.clone(),
        reason: "Shared office with the perpetrator's relative".to_owned(),
    });
    let consent = handover_core::consent::Consent::Requested
        .apply(
            ConsentEvent::Give(Box::new(draft_receipt)),
            &w.caseworker.actor(),
            T0,
            &mut rng,
        )
        .unwrap();
    let receipt = consent.current().unwrap().clone();
    let draft = offer_draft(&w.sender, &w.receivers[0]);
    let err = gate(prepare(&mut w, &draft, receipt.signed(), T0).unwrap_err());
    assert!(matches!(
        err,
        GateError::SectionWithheld {
            section: "RISK",
            ..
        }
    ));

    let receipt = w.receipt().signed().clone();
    let mut draft = offer_draft(&w.sender, &w.receivers[0]);
    draft.services_requested.push(wire::Service::Legal);
    let err = gate(prepare(&mut w, &draft, &receipt, T0).unwrap_err());
    assert!(matches!(
        err,
        GateError::ServiceNotCovered {
            service: "LEGAL",
            ..
        }
    ));

    let mut draft = offer_draft(&w.sender, &w.receivers[0]);
    draft.retain_until = T0 + 365 * DAY;
    let err = gate(prepare(&mut w, &draft, &receipt, T0).unwrap_err());
    assert!(matches!(err, GateError::RetentionNotCovered { .. }));

    let mut draft = offer_draft(&w.sender, &w.receivers[0]);
    draft.onward_sharing_allowed = true;
    let err = gate(prepare(&mut w, &draft, &receipt, T0).unwrap_err());
    assert!(matches!(err, GateError::OnwardSharingNotCovered { .. }));
}

#[test]
fn expired_receipt() {
    let mut w = World::new(1);
    let receipt = w.receipt().signed().clone();
    let short = w.receipt().id().short();
    let now = T0 + 181 * DAY;
    let mut draft = offer_draft(&w.sender, &w.receivers[0]);
    draft.retain_until = now + 30 * DAY;
    let err = gate(prepare(&mut w, &draft, &receipt, now).unwrap_err());
    assert_eq!(err, GateError::Expired { receipt: short });
}

#[test]
fn withdrawn_superseded_and_refused_receipts() {
    let mut w = World::new(1);
    let old = w.receipt().clone();
    let consent = std::mem::replace(&mut w.consent, handover_core::consent::Consent::Requested);
    let withdrawn = consent
        .apply(
            ConsentEvent::Withdraw,
            &w.caseworker.actor(),
            T0 + 10,
            &mut w.rng,
        )
        .unwrap();
    let new = withdrawn.current().unwrap().clone();
    assert_eq!(new.supersedes(), Some(old.id()));
    w.registry.insert(new.clone()).unwrap();
    let draft = offer_draft(&w.sender, &w.receivers[0]);
    // The old receipt is known to be withdrawn.
    let err = gate(prepare(&mut w, &draft, old.signed(), T0 + 20).unwrap_err());
    assert_eq!(
        err,
        GateError::Revoked {
            receipt: old.id().short(),
            state: "WITHDRAWN"
        }
    );
    // The withdrawal receipt itself grants nothing.
    let err = gate(prepare(&mut w, &draft, new.signed(), T0 + 20).unwrap_err());
    assert!(matches!(
        err,
        GateError::ReceiptMismatch { .. } | GateError::Revoked { .. }
    ));

    // Renewed: the old receipt is superseded.
    let mut w = World::new(1);
    let old = w.receipt().clone();
    let consent = std::mem::replace(&mut w.consent, handover_core::consent::Consent::Requested);
    let mut renewal = receipt_draft(&w.sender, &[&w.receivers[0]], &SECTIONS, T0);
    renewal.valid_until = T0 + 365 * DAY;
    let renewed = consent
        .apply(
            ConsentEvent::Renew(Box::new(renewal)),
            &w.caseworker.actor(),
            T0 + 10,
            &mut w.rng,
        )
        .unwrap();
    let new = renewed.current().unwrap().clone();
    w.registry.insert(new.clone()).unwrap();
    let draft = offer_draft(&w.sender, &w.receivers[0]);
    let err = gate(prepare(&mut w, &draft, old.signed(), T0 + 20).unwrap_err());
    assert_eq!(
        err,
        GateError::Superseded {
            receipt: old.id().short(),
            by: new.id().short()
        }
    );
    prepare(&mut w, &draft, new.signed(), T0 + 20).unwrap();

    // Refused consent.
    let mut w = World::new(1);
    let refs = [&w.receivers[0]];
    let refused = handover_core::consent::Consent::Requested
        .apply(
            ConsentEvent::Refuse(Box::new(receipt_draft(&w.sender, &refs, &SECTIONS, T0))),
            &w.caseworker.actor(),
            T0,
            &mut w.rng,
        )
        .unwrap();
    let receipt = refused.current().unwrap().clone();
    let draft = offer_draft(&w.sender, &w.receivers[0]);
    let err = gate(prepare(&mut w, &draft, receipt.signed(), T0).unwrap_err());
    assert_eq!(
        err,
        GateError::NotGiven {
            receipt: receipt.id().short(),
            state: "REFUSED"
        }
    );
}

#[test]
fn forged_or_tampered_receipt_signatures() {
    let mut w = World::new(1);
    let draft = offer_draft(&w.sender, &w.receivers[0]);
    let short = w.receipt().id().short();
    // Forged signature.
    let mut forged = w.receipt().signed().clone();
    forged.signature[5] ^= 0x40;
    let err = gate(prepare(&mut w, &draft, &forged, T0).unwrap_err());
    assert_eq!(err, GateError::BadReceiptSignature { receipt: short });
    // Tampered content: a byte of the encoded receipt changed, signature kept.
    let mut tampered = w.receipt().signed().clone();
    let n = tampered.receipt.len();
    tampered.receipt[n - 3] ^= 0x01;
    assert!(prepare(&mut w, &draft, &tampered, T0).is_err());
    // Signed by a device of another organisation.
    let mut rng = rng(14);
    let other = Org::new("Impostor", &mut rng);
    let impostor = other.device(Role::Caseworker, &mut rng);
    let refs = [&w.receivers[0]];
    let foreign = give_consent(&w.sender, &impostor, &refs, &SECTIONS, T0, &mut rng);
    let err = gate(prepare(&mut w, &draft, foreign.current().unwrap().signed(), T0).unwrap_err());
    assert!(matches!(err, GateError::BadReceiptSignature { .. }));

    // The receiving client checks the receipt the sender sends along.
    let (offer, _) = good_offer(&mut w);
    let err = receiver_check(
        &w,
        &offer,
        Some(&forged),
        &w.caseworker,
        &ReceiptRegistry::new(),
    );
    assert_eq!(
        gate(err.unwrap_err()),
        GateError::BadReceiptSignature { receipt: short }
    );
    let err = receiver_check(&w, &offer, None, &w.caseworker, &ReceiptRegistry::new());
    assert_eq!(gate(err.unwrap_err()), GateError::ReceiptMissing);
    // And a withdrawal it has learnt about.
    let mut known = ReceiptRegistry::new();
    let consent = std::mem::replace(&mut w.consent, handover_core::consent::Consent::Requested);
    let withdrawn = consent
        .apply(
            ConsentEvent::Withdraw,
            &w.caseworker.actor(),
            T0 + 5,
            &mut w.rng,
        )
        .unwrap();
    known.insert(withdrawn.current().unwrap().clone()).unwrap();
    let receipt = w
        .registry
        .get(
            &w.sender.trust.root(),
            &withdrawn.current().unwrap().supersedes().unwrap(),
        )
        .unwrap()
        .signed()
        .clone();
    let err = receiver_check(&w, &offer, Some(&receipt), &w.caseworker, &known);
    assert!(matches!(
        gate(err.unwrap_err()),
        GateError::Revoked {
            state: "WITHDRAWN",
            ..
        }
    ));
}

fn override_basis(justification: &str) -> wire::ConsentOverride {
    wire::ConsentOverride {
        legal_basis: "GDPR Art. 9(2)(c) vital interests".to_owned(),
        justification: justification.to_owned(),
        authorised_by: "Head of service".to_owned(),
    }
}

#[test]
fn override_needs_permission_basis_and_is_marked() {
    let mut w = World::new(1);
    let draft = offer_draft(&w.sender, &w.receivers[0]);
    let basis = override_basis("Imminent risk to life; the person cannot be reached");
    // A caseworker may not override.
    let err = SenderReferral::prepare(
        &draft,
        &body_sections(),
        ConsentInput::Override(&basis),
        &w.sender.trust,
        &w.registry,
        &w.caseworker.actor(),
        T0,
        &mut w.rng,
    )
    .unwrap_err();
    assert_eq!(gate(err), GateError::OverrideNotPermitted);
    // Nor an ambassador.
    let err = SenderReferral::prepare(
        &draft,
        &body_sections(),
        ConsentInput::Override(&basis),
        &w.sender.trust,
        &w.registry,
        &w.sender_ambassador.actor(),
        T0,
        &mut w.rng,
    )
    .unwrap_err();
    assert_eq!(gate(err), GateError::OverrideNotPermitted);
    // An admin without a justification may not either.
    let err = SenderReferral::prepare(
        &draft,
        &body_sections(),
        ConsentInput::Override(&override_basis(" ")),
        &w.sender.trust,
        &w.registry,
        &w.admin.actor(),
        T0,
        &mut w.rng,
    )
    .unwrap_err();
    assert_eq!(
        gate(err),
        GateError::OverrideIncomplete {
            missing: "justification"
        }
    );
    // An admin with basis and justification may; the override is visible.
    let mut s = SenderReferral::prepare(
        &draft,
        &body_sections(),
        ConsentInput::Override(&basis),
        &w.sender.trust,
        &w.registry,
        &w.admin.actor(),
        T0,
        &mut w.rng,
    )
    .unwrap();
    let (offer, receipt) = s.mark_sent(&w.admin.actor(), &mut w.ledger).unwrap();
    assert!(receipt.is_none());
    let r = ReceiverReferral::receive_offer(
        &offer,
        None,
        &w.sender.trust,
        &w.intake[0].cert,
        &ReceiptRegistry::new(),
        T0 + 60,
    )
    .unwrap();
    assert!(r.is_override());
    let export = r.timeline().export_json();
    assert_eq!(export["entries"][0]["consent"]["override"], true);
    assert_eq!(
        export["entries"][0]["consent"]["legal_basis"],
        "GDPR Art. 9(2)(c) vital interests"
    );
    // The justification is case content and stays out of the audit export.
    assert!(!export.to_string().contains("Imminent risk"));
    // The survivor's copy lists the override.
    let notice = handover_core::consent::OverrideNotice::from_offer(r.offer().unwrap()).unwrap();
    assert_eq!(notice.org_name, "Receiving Org 0");
    assert_eq!(notice.sections.len(), 4);
    let copy =
        handover_core::consent::render_survivor_copy(&handover_core::consent::SurvivorCopy {
            receipt: w.receipt(),
            language: handover_core::consent::Language::English,
            preferred_name: None,
            preferred_term: handover_core::consent::PreferredTerm::None,
            overrides: &[notice],
        });
    assert!(copy.contains("Shared without your consent:"));
    assert!(copy.contains("Receiving Org 0 received: Who you are"));
    assert!(copy.contains("Legal basis: GDPR Art. 9(2)(c) vital interests"));

    // The receiving client refuses an override signed by a caseworker device.
    let forged = forge_offer(&w.caseworker, &open_offer(&offer));
    let err = ReceiverReferral::receive_offer(
        &forged,
        None,
        &w.sender.trust,
        &w.intake[0].cert,
        &ReceiptRegistry::new(),
        T0 + 60,
    )
    .unwrap_err();
    assert_eq!(gate(err), GateError::OverrideNotPermitted);
}

#[test]
fn release_is_refused_after_consent_is_withdrawn() {
    let mut w = World::new(1);
    let (mut s, mut r) = w.send(0);
    use handover_core::referral::Action;
    w.receiver_acts(0, &mut s, &mut r, Action::Delivered, T0 + 100);
    w.receiver_acts(0, &mut s, &mut r, Action::Acknowledge, T0 + 110);
    w.receiver_acts(0, &mut s, &mut r, Action::Accept, T0 + 120);
    let consent = std::mem::replace(&mut w.consent, handover_core::consent::Consent::Requested);
    let withdrawn = consent
        .apply(
            ConsentEvent::Withdraw,
            &w.caseworker.actor(),
            T0 + 125,
            &mut w.rng,
        )
        .unwrap();
    w.registry
        .insert(withdrawn.current().unwrap().clone())
        .unwrap();
    let err = s
        .release_body(&w.intake[0].cert, &w.registry, &mut w.ledger, T0 + 130)
        .unwrap_err();
    assert!(matches!(gate(err), GateError::Revoked { .. }));
}

/// A minor's consent: the receipt for a 13-year-old, given by a guardian with the child's
/// assent unless a test changes it.
fn minor_receipt_draft(w: &World) -> wire::ConsentReceipt {
    let mut sections = SECTIONS.to_vec();
    sections.push(wire::Section::Guardian);
    let mut draft = receipt_draft(&w.sender, &[&w.receivers[0]], &sections, T0);
    draft.principal_is_minor = true;
    draft.expressed_by = wire::ExpressedBy::Guardian as i32;
    draft.child_assent = wire::ChildAssent::Given as i32;
    draft
}

fn record(
    w: &World,
    draft: wire::ConsentReceipt,
    seed: u64,
) -> Result<handover_core::consent::Consent, handover_core::consent::ConsentError> {
    handover_core::consent::Consent::Requested
        .apply(
            ConsentEvent::Give(Box::new(draft)),
            &w.caseworker.actor(),
            T0,
            &mut rng(seed),
        )
        .map_err(|(_, e)| e)
}

fn minor_offer_draft(w: &World) -> handover_core::referral::OfferDraft {
    let mut draft = offer_draft(&w.sender, &w.receivers[0]);
    draft.is_minor = true;
    draft.age_band = wire::AgeBand::Child;
    draft
}

fn minor_body() -> Vec<wire::BodySection> {
    let mut body = body_sections();
    body.push(wire::BodySection {
        content: Some(wire::body_section::Content::Guardian(
            wire::GuardianSection {
                caregiver: "Aunt".to_owned(),
                relationship: "aunt".to_owned(),
                contact: "via the school social worker".to_owned(),
                unaccompanied: false,
                caregiver_informed: true,
                not_informed_reason: String::new(),
            },
        )),
    });
    body
}

fn prepare_minor(
    w: &mut World,
    draft: &handover_core::referral::OfferDraft,
    receipt: &wire::SignedConsentReceipt,
) -> Result<SenderReferral, ReferralError> {
    SenderReferral::prepare(
        draft,
        &minor_body(),
        ConsentInput::Receipt(receipt),
        &w.sender.trust,
        &w.registry,
        &w.caseworker.actor(),
        T0,
        &mut w.rng,
    )
}

#[test]
fn a_minors_receipt_must_record_assent_and_who_consented() {
    use handover_core::consent::ConsentError;
    let w = World::new(1);
    let missing = |field| ConsentError::MissingField { field };

    let mut no_assent = minor_receipt_draft(&w);
    no_assent.child_assent = wire::ChildAssent::Unspecified as i32;
    assert_eq!(
        record(&w, no_assent, 31).unwrap_err(),
        missing("child_assent")
    );

    let mut not_applicable = minor_receipt_draft(&w);
    not_applicable.child_assent = wire::ChildAssent::NotApplicable as i32;
    assert_eq!(
        record(&w, not_applicable.clone(), 32).unwrap_err(),
        missing("minor_note")
    );
    not_applicable.minor_note = "The child is 4 years old.".to_owned();
    assert!(record(&w, not_applicable, 33).is_ok());

    // Consent expressed by the child alone needs the reason no caregiver or guardian did.
    let mut by_child = minor_receipt_draft(&w);
    by_child.expressed_by = wire::ExpressedBy::Survivor as i32;
    assert_eq!(
        record(&w, by_child.clone(), 34).unwrap_err(),
        missing("minor_note")
    );
    by_child.minor_note =
        "The caregiver is the alleged perpetrator; best-interest decision by the supervisor."
            .to_owned();
    assert!(record(&w, by_child, 35).is_ok());

    // An adult's receipt carries no assent.
    let mut adult = receipt_draft(&w.sender, &[&w.receivers[0]], &SECTIONS, T0);
    adult.child_assent = wire::ChildAssent::Given as i32;
    assert_eq!(record(&w, adult, 36).unwrap_err(), missing("child_assent"));
}

#[test]
fn a_minors_referral_needs_a_minors_receipt_with_assent() {
    let mut w = World::new(1);
    let minor = record(&w, minor_receipt_draft(&w), 41).unwrap();
    let minor = minor.current().unwrap().clone();
    let short = minor.id().short();
    let draft = minor_offer_draft(&w);

    // Guardian's consent and the child's assent: the offer passes.
    assert!(prepare_minor(&mut w, &draft, minor.signed()).is_ok());

    // The child's own consent with the reason recorded also passes.
    let mut by_child = minor_receipt_draft(&w);
    by_child.expressed_by = wire::ExpressedBy::Survivor as i32;
    by_child.minor_note = "Unaccompanied; no guardian appointed yet.".to_owned();
    let by_child = record(&w, by_child, 42).unwrap();
    assert!(prepare_minor(&mut w, &draft, by_child.current().unwrap().signed()).is_ok());

    // A minor's receipt cannot cover an offer that calls the person an adult.
    let adult_draft = offer_draft(&w.sender, &w.receivers[0]);
    let err = gate(prepare(&mut w, &adult_draft, minor.signed(), T0).unwrap_err());
    assert_eq!(err, GateError::MinorMismatch { receipt: short });
    assert_eq!(
        err.to_string(),
        format!("the offer and consent receipt {short} disagree on whether the person is a minor")
    );

    // An adult's receipt cannot cover a child's referral.
    let adult = w.receipt().signed().clone();
    let adult_short = w.receipt().id().short();
    let err = gate(prepare_minor(&mut w, &draft, &adult).unwrap_err());
    assert_eq!(
        err,
        GateError::MinorMismatch {
            receipt: adult_short
        }
    );

    // The child said no.
    let mut refused = minor_receipt_draft(&w);
    refused.child_assent = wire::ChildAssent::Refused as i32;
    let refused = record(&w, refused, 43).unwrap();
    let refused = refused.current().unwrap().clone();
    let err = gate(prepare_minor(&mut w, &draft, refused.signed()).unwrap_err());
    assert_eq!(
        err,
        GateError::ChildAssentRefused {
            receipt: refused.id().short()
        }
    );
    assert!(err.to_string().contains("the child did not assent"));
}

#[test]
fn the_receiver_refuses_a_childs_referral_under_an_adults_receipt() {
    // A modified sender client labels the person a minor but relies on an adult's receipt.
    let mut w = World::new(1);
    let (mut offer, receipt) = good_offer(&mut w);
    offer.is_minor = true;
    offer.age_band = wire::AgeBand::Child as i32;
    let err = receiver_check(
        &w,
        &offer,
        Some(&receipt),
        &w.caseworker,
        &ReceiptRegistry::new(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        ReferralError::Consent(GateError::MinorMismatch {
            receipt: w.receipt().id().short()
        })
    );
}

/// Review finding: receipts were indexed by id alone, so any trusted organisation could send a
/// receipt with the victim organisation's receipt id (replacing it) or one that "supersedes"
/// it as withdrawn, and the gate then refused the victim's referrals. Receipts are keyed by
/// (organisation, id) now; only the same organisation, for the same person, supersedes.
#[test]
fn another_organisations_receipt_neither_replaces_nor_supersedes_ours() {
    let mut w = World::new(2);
    let victim = w.receipt().clone();
    let (offer, receipt) = good_offer(&mut w);
    // Organisation 1 is trusted by the receiver (it is a network member) but hostile.
    let attacker_org = &w.receivers[1];
    let attacker = &w.intake[1];
    let mut same_id = receipt_draft(attacker_org, &[&w.receivers[0]], &SECTIONS, T0);
    same_id.schema_version = "handover-consent/1".to_owned();
    same_id.state = wire::ConsentState::Given as i32;
    same_id.receipt_id = victim.id().as_bytes().to_vec();
    let same_id = SignedReceipt::verify(
        &forge_receipt(attacker, &same_id),
        &attacker_org.trust,
        T0 + 30,
    )
    .unwrap();
    let mut withdrawal = receipt_draft(attacker_org, &[&w.receivers[0]], &SECTIONS, T0);
    withdrawal.schema_version = "handover-consent/1".to_owned();
    withdrawal.state = wire::ConsentState::Withdrawn as i32;
    withdrawal.receipt_id = ReceiptId::random(&mut w.rng).as_bytes().to_vec();
    withdrawal.supersedes = victim.id().as_bytes().to_vec();
    let withdrawal = SignedReceipt::verify(
        &forge_receipt(attacker, &withdrawal),
        &attacker_org.trust,
        T0 + 30,
    )
    .unwrap();

    // The receiving client knows the victim's receipt, then gets the attacker's two.
    let mut known = ReceiptRegistry::new();
    known.insert(victim.clone()).unwrap();
    known.insert(same_id.clone()).unwrap();
    known.insert(withdrawal.clone()).unwrap();
    let victim_root = w.sender.trust.root();
    assert_eq!(
        known.get(&victim_root, &victim.id()).unwrap().hash(),
        victim.hash()
    );
    assert!(known.superseded_by(&victim).is_none());
    assert_eq!(
        known.latest(&victim_root, &victim.id()).unwrap().hash(),
        victim.hash()
    );
    // The victim's referral still passes the gate on the receiving side.
    receiver_check(&w, &offer, Some(&receipt), &w.caseworker, &known).unwrap();

    // Within one organisation a different receipt under a known id is refused, and the first
    // is kept.
    let mut twin = receipt_draft(&w.sender, &[&w.receivers[0]], &SECTIONS, T0);
    twin.schema_version = "handover-consent/1".to_owned();
    twin.state = wire::ConsentState::Given as i32;
    twin.receipt_id = victim.id().as_bytes().to_vec();
    twin.purposes[0].purpose = "Something else entirely".to_owned();
    let twin = SignedReceipt::verify(
        &forge_receipt(&w.caseworker, &twin),
        &w.sender.trust,
        T0 + 30,
    )
    .unwrap();
    assert_eq!(
        known.insert(twin),
        Err(ConsentError::Conflict {
            receipt: victim.id().short()
        })
    );
    assert_eq!(
        known.get(&victim_root, &victim.id()).unwrap().hash(),
        victim.hash()
    );
    // The same receipt again is a no-op.
    known.insert(victim.clone()).unwrap();

    // Nor may the same organisation supersede it with a receipt for another person.
    let mut other_person = receipt_draft(&w.sender, &[&w.receivers[0]], &SECTIONS, T0);
    other_person.schema_version = "handover-consent/1".to_owned();
    other_person.state = wire::ConsentState::Withdrawn as i32;
    other_person.principal_ref = "P-OTHER".to_owned();
    other_person.receipt_id = ReceiptId::random(&mut w.rng).as_bytes().to_vec();
    other_person.supersedes = victim.id().as_bytes().to_vec();
    let other_person = SignedReceipt::verify(
        &forge_receipt(&w.caseworker, &other_person),
        &w.sender.trust,
        T0 + 30,
    )
    .unwrap();
    let short = other_person.id().short();
    assert_eq!(
        known.insert(other_person),
        Err(ConsentError::SupersedesAnotherPrincipal { receipt: short })
    );
    assert!(known.superseded_by(&victim).is_none());
    receiver_check(&w, &offer, Some(&receipt), &w.caseworker, &known).unwrap();
}

/// Review finding: a receipt was checked against its signer's certificate at the receipt's own,
/// signer-chosen `event_time`, so a device whose certificate had expired could backdate a
/// receipt into its validity window. Receipts are checked at arrival.
#[test]
fn a_receipt_backdated_past_its_signers_certificate_expiry_is_refused() {
    use handover_core::identity::{DeviceCertificate, DeviceKeys};
    let mut w = World::new(1);
    let keys = DeviceKeys::generate(&mut w.rng);
    let signed_cert = w
        .sender
        .root
        .issue_certificate(
            &keys.public_keys(),
            Role::Caseworker,
            T0 - 30 * DAY,
            T0,
            "old",
        )
        .unwrap();
    let expired = Device {
        cert: DeviceCertificate::verify(&signed_cert, &w.sender.root.public_key(), T0 - DAY)
            .unwrap(),
        keys,
    };
    let mut draft = receipt_draft(&w.sender, &[&w.receivers[0]], &SECTIONS, T0 - DAY);
    draft.schema_version = "handover-consent/1".to_owned();
    draft.state = wire::ConsentState::Given as i32;
    draft.receipt_id = ReceiptId::random(&mut w.rng).as_bytes().to_vec();
    let backdated = forge_receipt(&expired, &draft);
    let short = ReceiptId::from_slice(&draft.receipt_id).unwrap().short();
    // At arrival (T0 + 60) the certificate has expired.
    assert_eq!(
        SignedReceipt::verify(&backdated, &w.sender.trust, T0 + 60).unwrap_err(),
        ConsentError::BadSignature { receipt: short }
    );
    // While the certificate was valid it verified.
    SignedReceipt::verify(&backdated, &w.sender.trust, T0 - 60).unwrap();
    // An offer relying on it is refused by the receiver at arrival.
    let (mut offer, _) = good_offer(&mut w);
    let reference = SignedReceipt::verify(&backdated, &w.sender.trust, T0 - 60)
        .unwrap()
        .reference();
    offer.consent = Some(wire::ConsentRef {
        basis: Some(wire::consent_ref::Basis::Receipt(reference)),
    });
    let err = receiver_check(
        &w,
        &offer,
        Some(&backdated),
        &w.caseworker,
        &ReceiptRegistry::new(),
    );
    assert_eq!(
        gate(err.unwrap_err()),
        GateError::BadReceiptSignature { receipt: short }
    );
    // A receipt dated after its arrival (beyond the clock-skew allowance) is refused too.
    let mut future = receipt_draft(&w.sender, &[&w.receivers[0]], &SECTIONS, T0 + DAY);
    future.schema_version = "handover-consent/1".to_owned();
    future.state = wire::ConsentState::Given as i32;
    future.receipt_id = ReceiptId::random(&mut w.rng).as_bytes().to_vec();
    let short = ReceiptId::from_slice(&future.receipt_id).unwrap().short();
    assert_eq!(
        SignedReceipt::verify(&forge_receipt(&w.caseworker, &future), &w.sender.trust, T0)
            .unwrap_err(),
        ConsentError::FromTheFuture { receipt: short }
    );
}
