//! Referrals and consent through the engine over the in-memory relay: consent, the offer to
//! every device of the receiving organisation, acceptance, body release (never to an
//! ambassador), completion, consent withdrawal and every device's purge confirmation; plus
//! refusals that change nothing and exactly-once application of redelivered steps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod engine_support;

use engine_support::*;
use handover_core::consent::{
    DisclosureLedger, GateError, Language, PreferredTerm, PurgeStatus, ReceiptId, ReceiptRegistry,
};
use handover_core::engine::{EngineError, OfferConsent, ProfileDetails, Received, ReferralEvent};
use handover_core::identity::{DeviceId, Role};
use handover_core::referral::{
    Action, ConsentInput, OfferDraft, Outcome, ReceiverReferral, ReferralError, ReferralId,
    ReferralState, SenderReferral, Side,
};
use handover_core::store::{KvStore, Namespace, WriteBatch};
use handover_proto::e2e::v1 as wire;
use handover_proto::e2e::v1::content::Body;
use prost::Message as _;

const DAY: u64 = 86_400;
const PURPOSE: &str = "Safe accommodation and psychosocial support after leaving home";

fn receipt_draft(
    sender_name: &str,
    recipient: &[u8; 32],
    sections: &[wire::Section],
    now: u64,
) -> wire::ConsentReceipt {
    wire::ConsentReceipt {
        principal_ref: "P-7Q2X".to_owned(),
        expressed_by: wire::ExpressedBy::Survivor as i32,
        collection_method: wire::CollectionMethod::ViaInterpreter as i32,
        interpreter_language: "ar".to_owned(),
        consent_type: "EXPLICIT".to_owned(),
        event_time: now,
        valid_until: now + 180 * DAY,
        jurisdictions: vec!["BE".to_owned()],
        notice_ref: "https://example.org/privacy/v3".to_owned(),
        notice_language: "ar".to_owned(),
        controllers: vec![wire::Controller {
            name: sender_name.to_owned(),
            contact: "Data protection officer".to_owned(),
            address: "1 Rue Exemple, 1000 Bruxelles".to_owned(),
            email: "dpo@example.org".to_owned(),
            phone: "+32 2 000 00 00".to_owned(),
        }],
        legal_basis: Some(wire::LegalBasis {
            basis: "GDPR Art. 6(1)(a) and Art. 9(2)(a) explicit consent".to_owned(),
            justification: String::new(),
            is_override: false,
        }),
        purposes: vec![wire::Purpose {
            purpose: PURPOSE.to_owned(),
            category: "referral".to_owned(),
            primary: true,
        }],
        recipients: vec![wire::ConsentRecipient {
            org_root_key: recipient.to_vec(),
            org_name: "Shelter B".to_owned(),
            services: vec![
                wire::Service::Shelter as i32,
                wire::Service::Psychosocial as i32,
            ],
        }],
        data_categories: sections.iter().map(|s| *s as i32).collect(),
        sensitive: true,
        special_categories: vec!["health".to_owned()],
        retention_secs: 90 * DAY,
        storage_locations: vec!["EU (Belgium)".to_owned()],
        withdrawal_method: "Tell your caseworker or any staff member.".to_owned(),
        witness: Some(wire::Witness {
            caseworker_id: "CW-12".to_owned(),
            org_name: sender_name.to_owned(),
        }),
        principal_ack: Some(wire::PrincipalAck {
            method: wire::AckMethod::VerbalWitnessed as i32,
            detail: String::new(),
        }),
        ..Default::default()
    }
}

fn offer_draft(from: &[u8; 32], to: &[u8; 32]) -> OfferDraft {
    OfferDraft {
        kind: wire::ReferralKind::Referral,
        sender_case_ref: "HWC-2026-0193".to_owned(),
        from: wire::Party {
            org_root_key: from.to_vec(),
            org_name: "Harbour".to_owned(),
            worker_name: "Duty caseworker".to_owned(),
            role: wire::Role::Caseworker as i32,
            contact: "intake@example.org".to_owned(),
        },
        to: wire::Party {
            org_root_key: to.to_vec(),
            org_name: "Shelter B".to_owned(),
            ..Default::default()
        },
        services_requested: vec![wire::Service::Shelter, wire::Service::Psychosocial],
        priority: wire::Priority::Urgent,
        purpose: PURPOSE.to_owned(),
        languages: vec!["ar".to_owned()],
        interpreter_needed: true,
        age_band: wire::AgeBand::Adult,
        retain_until: T0 + 60 * DAY,
        retention_rule: "Erase 60 days after the offer".to_owned(),
        ..Default::default()
    }
}

fn body_sections(with_location: bool) -> Vec<wire::BodySection> {
    use wire::body_section::Content;
    let mut out = vec![
        wire::BodySection {
            content: Some(Content::Identity(wire::IdentitySection {
                name_or_alias: "Amina Haddad".to_owned(),
                preferred_term: "survivor".to_owned(),
                ..Default::default()
            })),
        },
        wire::BodySection {
            content: Some(Content::SafeContact(wire::SafeContactSection {
                safe_to_contact: true,
                channels: vec!["phone".to_owned()],
                safe_times: "weekdays 10-12".to_owned(),
                ..Default::default()
            })),
        },
        wire::BodySection {
            content: Some(Content::Reason(wire::ReasonSection {
                reason: "Left a violent partner two days ago.".to_owned(),
            })),
        },
    ];
    out.push(wire::BodySection {
        content: Some(Content::Risk(wire::RiskSection {
            level: wire::RiskLevel::High as i32,
            ..Default::default()
        })),
    });
    if with_location {
        out.push(wire::BodySection {
            content: Some(Content::Location(wire::LocationSection {
                location: "Staying with a friend in the north district".to_owned(),
            })),
        });
    }
    out
}

const COVERED: [wire::Section; 4] = [
    wire::Section::Identity,
    wire::Section::SafeContact,
    wire::Section::Reason,
    wire::Section::Risk,
];

/// Makes `from` and `to` able to message each other (invitation from `to`, contact card back).
fn connect(relay: &mut SimRelay, from: &mut Device, to: &mut Device, now: u64) {
    let link = to.invite(relay, now);
    from.accept(relay, &link, now);
    to.sync(relay, now);
}

struct Net {
    relay: SimRelay,
    /// Caseworker at organisation A.
    cw: Device,
    /// Organisation B: intake admin, intake caseworker, ambassador.
    b: Vec<Device>,
}

fn setup() -> Net {
    let mut relay = SimRelay::default();
    let mut a_admin = Device::new_org(&mut relay, 31, "Harbour admin");
    let mut cw = Device::enrol(&mut relay, &mut a_admin, 32, Role::Caseworker, "Caseworker");
    let mut b1 = Device::new_org(&mut relay, 41, "Intake admin");
    let mut b2 = Device::enrol(&mut relay, &mut b1, 42, Role::Caseworker, "Intake");
    let mut b3 = Device::enrol(&mut relay, &mut b1, 43, Role::Ambassador, "Ambassador");
    connect(&mut relay, &mut b2, &mut b1, T0 + 1);
    connect(&mut relay, &mut b3, &mut b1, T0 + 1);
    cw.engine.trust_organisation(&b1.root()).unwrap();
    for b in [&mut b1, &mut b2, &mut b3] {
        b.engine.trust_organisation(&cw.root()).unwrap();
    }
    let details = ProfileDetails {
        name: "Shelter B".into(),
        services: vec!["SHELTER".into()],
        languages: vec!["en".into()],
        regions: vec!["North".into()],
        description: "Emergency accommodation".into(),
    };
    let profile = b1
        .engine
        .signed_org_profile(details, T0 + 2, &mut b1.rng)
        .unwrap();
    b1.sync_caps(&mut relay, T0 + 2);
    // The directory lists intake devices only (no ambassadors).
    let team = cw.engine.import_org_profile(&profile, T0 + 3).unwrap();
    assert_eq!(team.len(), 2);
    for device in team {
        let address = cw.engine.contact_address(device).unwrap();
        let bundle = handover_core::engine::bundle_from_result(&relay.take(&address)).unwrap();
        cw.engine
            .start_session(device, &bundle, T0 + 4, &mut cw.rng)
            .unwrap();
        cw.engine
            .send_contact_card(device, T0 + 4, &mut cw.rng)
            .unwrap();
    }
    cw.sync_caps(&mut relay, T0 + 4);
    cw.flush(&mut relay);
    // B's ambassador (an outreach worker) connects to the caseworker directly.
    connect(&mut relay, &mut b3, &mut cw, T0 + 4);
    cw.engine.take_referral_events();
    for b in [&mut b1, &mut b2, &mut b3] {
        b.sync(&mut relay, T0 + 5);
        b.engine.take_referral_events();
    }
    Net {
        relay,
        cw,
        b: vec![b1, b2, b3],
    }
}

fn states(events: &[ReferralEvent]) -> Vec<&'static str> {
    events
        .iter()
        .filter_map(|e| match e {
            ReferralEvent::StateChanged { state, .. } => Some(*state),
            _ => None,
        })
        .collect()
}

fn act(
    dev: &mut Device,
    id: &ReferralId,
    action: Action,
    now: u64,
) -> Result<ReferralState, EngineError> {
    let Device { engine, rng } = dev;
    engine.referral_act(id, action, now, rng).map(|(s, _)| s)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn state_of(dev: &Device, id: &ReferralId) -> ReferralState {
    dev.engine.referral(id).unwrap().unwrap().state
}

fn record_consent(cw: &mut Device, b_root: &[u8; 32], sections: &[wire::Section]) -> ReceiptId {
    let draft = receipt_draft("Harbour", b_root, sections, T0 + 10);
    let receipt = cw
        .engine
        .record_consent(draft, T0 + 10, &mut cw.rng)
        .unwrap();
    assert!(cw.engine.consent_receipt(&receipt.id()).unwrap().is_some());
    let kantara = cw.engine.kantara_export(&receipt.id()).unwrap();
    assert_eq!(kantara["version"], "KI-CR-v1.1.0");
    let copy = cw
        .engine
        .survivor_copy(
            &receipt.id(),
            Language::English,
            Some("Amina"),
            PreferredTerm::Survivor,
            Some("HWC-2026-0193"),
        )
        .unwrap();
    assert!(copy.contains("Harbour"));
    assert!(copy.contains("Amina"));
    receipt.id()
}

#[test]
fn consent_offer_accept_release_complete_withdraw_and_every_device_purges() {
    let Net {
        mut relay,
        mut cw,
        mut b,
    } = setup();
    let b_root = b[0].root();
    let a_root = cw.root();
    let receipt = record_consent(&mut cw, &b_root, &COVERED);

    // The offer (and the receipt it relies on) goes to every active device of B except the
    // ambassador: no case content is ever addressed to an ambassador device.
    let (id, items) = cw
        .engine
        .send_referral_offer(
            &offer_draft(&a_root, &b_root),
            &body_sections(false),
            &OfferConsent::Receipt(receipt),
            T0 + 20,
            &mut cw.rng,
        )
        .unwrap();
    assert_eq!(
        items.len(),
        4,
        "receipt + offer to each of the two intake devices"
    );
    let ambassador = b[2].id();
    assert!(items.iter().all(|i| i.recipient != ambassador));
    assert_eq!(state_of(&cw, &id), ReferralState::Sent);
    cw.flush(&mut relay);
    assert!(b[2].sync(&mut relay, T0 + 21).0.is_empty());
    assert!(b[2].engine.referral(&id).unwrap().is_none());
    for dev in b[..2].iter_mut() {
        let (got, _) = dev.sync(&mut relay, T0 + 21);
        assert_eq!(got.len(), 2);
        let events = dev.engine.take_referral_events();
        assert!(events.contains(&ReferralEvent::ConsentReceiptReceived { receipt }));
        assert!(events.contains(&ReferralEvent::OfferReceived { referral: id }));
        let summary = dev.engine.referral(&id).unwrap().unwrap();
        assert_eq!(summary.side, Side::Receiver);
        assert_eq!(summary.counterpart, a_root);
        assert!(dev.engine.received_offer(&id).unwrap().is_some());
    }
    cw.assert_referral_list();
    for dev in b.iter_mut() {
        dev.assert_referral_list();
    }

    // The intake admin acknowledges (DELIVERED + ACKNOWLEDGED); colleagues follow the timeline.
    let state = act(&mut b[0], &id, Action::Acknowledge, T0 + 30).unwrap();
    assert_eq!(state, ReferralState::Acknowledged);
    b[0].assert_referral_list();
    b[0].flush(&mut relay);
    b[1].sync(&mut relay, T0 + 31);
    assert_eq!(
        states(&b[1].engine.take_referral_events()),
        ["DELIVERED", "ACKNOWLEDGED"]
    );
    // The ambassador gets none of the team's steps either, and has nothing to act on.
    assert!(b[2].sync(&mut relay, T0 + 31).0.is_empty());
    let before = b[2].snapshot();
    let err = act(&mut b[2], &id, Action::Accept, T0 + 32).unwrap_err();
    assert!(matches!(err, EngineError::InvalidInput(_)), "{err:?}");
    assert!(before == b[2].snapshot());

    act(&mut b[0], &id, Action::Accept, T0 + 33).unwrap();
    b[0].flush(&mut relay);

    // A receives DELIVERED, ACKNOWLEDGED, ACCEPT. A crash before the ack makes the relay
    // redeliver: every step is applied once.
    let recv = cw.engine.recv_id().unwrap();
    let queued = relay.fetch(recv);
    assert_eq!(queued.len(), 3);
    for q in &queued {
        assert!(matches!(
            cw.engine.receive(q, T0 + 34, &mut cw.rng).unwrap(),
            Received::Delivered(_)
        ));
    }
    let first = cw.engine.take_referral_events();
    assert_eq!(states(&first), ["DELIVERED", "ACKNOWLEDGED", "ACCEPTED"]);
    assert!(first.contains(&ReferralEvent::ReleaseBody { referral: id }));
    let mut cw = cw.restart();
    for q in &queued {
        assert!(matches!(
            cw.engine.receive(q, T0 + 35, &mut cw.rng).unwrap(),
            Received::Duplicate
        ));
    }
    assert!(cw.engine.take_referral_events().is_empty());
    // The ReleaseBody event did not survive the restart; the pending release did.
    assert_eq!(cw.engine.pending_releases().unwrap(), vec![id]);
    cw.assert_referral_list();
    assert!(cw.engine.referral_list().unwrap()[0].awaiting_release);
    let ids: Vec<Vec<u8>> = queued
        .iter()
        .map(|q| q.envelope.as_ref().unwrap().envelope_id.clone())
        .collect();
    relay.ack(recv, &ids);
    assert_eq!(state_of(&cw, &id), ReferralState::Accepted);
    b[1].sync(&mut relay, T0 + 35);
    assert_eq!(states(&b[1].engine.take_referral_events()), ["ACCEPTED"]);

    // A releases the body: to the two intake devices, never to the ambassador.
    let items = cw
        .engine
        .release_referral_body(&id, T0 + 40, &mut cw.rng)
        .unwrap();
    let mut recipients: Vec<DeviceId> = items.iter().map(|i| i.recipient).collect();
    recipients.sort();
    let mut intake = vec![b[0].id(), b[1].id()];
    intake.sort();
    assert_eq!(recipients, intake);
    assert!(cw.engine.pending_releases().unwrap().is_empty());
    cw.flush(&mut relay);
    cw.assert_referral_list();
    assert!(!cw.engine.referral_list().unwrap()[0].awaiting_release);
    for dev in b[..2].iter_mut() {
        dev.sync(&mut relay, T0 + 41);
        assert_eq!(
            dev.engine.take_referral_events(),
            [ReferralEvent::BodyReceived { referral: id }]
        );
        let identity = dev
            .engine
            .received_section(&id, wire::Section::Identity)
            .unwrap()
            .unwrap();
        assert!(matches!(
            identity.content,
            Some(wire::body_section::Content::Identity(ref s)) if s.name_or_alias == "Amina Haddad"
        ));
    }
    assert!(b[2].sync(&mut relay, T0 + 41).0.is_empty());
    assert!(
        b[2].engine
            .received_section(&id, wire::Section::Identity)
            .unwrap()
            .is_none()
    );

    // B completes successfully; A and B's colleagues see COMPLETED.
    let complete = Action::Complete {
        outcome: Outcome::Successful,
        note: String::new(),
    };
    act(&mut b[0], &id, complete, T0 + 50).unwrap();
    b[0].flush(&mut relay);
    cw.sync(&mut relay, T0 + 51);
    assert_eq!(states(&cw.engine.take_referral_events()), ["COMPLETED"]);
    for dev in b[1..2].iter_mut() {
        dev.sync(&mut relay, T0 + 51);
        dev.engine.take_referral_events();
        assert_eq!(
            state_of(dev, &id),
            ReferralState::Completed(Outcome::Successful)
        );
    }
    let timeline = cw.engine.referral(&id).unwrap().unwrap().timeline;
    assert!(!timeline.to_string().contains("Amina"));
    cw.assert_referral_list();
    b[1].assert_referral_list();
    assert!(!cw.engine.erasure_pending(&receipt).unwrap());

    // The survivor withdraws consent: CONSENT_CHANGED to both B intake devices; all pending.
    let (withdrawn, items) = cw
        .engine
        .change_consent(
            &receipt,
            wire::ConsentState::Withdrawn,
            T0 + 60,
            &mut cw.rng,
        )
        .unwrap();
    assert_eq!(withdrawn.supersedes(), Some(receipt));
    assert_eq!(items.len(), 2);
    assert_eq!(state_of(&cw, &id), ReferralState::ConsentRevoked);
    let report = cw.engine.purge_status(&receipt).unwrap();
    assert_eq!(report.len(), 1);
    assert!(matches!(report[0].status, PurgeStatus::Pending { .. }));
    assert_eq!(report[0].pending.len(), 2);
    cw.flush(&mut relay);
    assert!(cw.engine.erasure_pending(&receipt).unwrap());
    assert!(cw.engine.erasure_pending(&withdrawn.id()).unwrap());
    cw.assert_referral_list();

    // Every B device that received it erases and confirms.
    for dev in b[..2].iter_mut() {
        dev.sync(&mut relay, T0 + 61);
        let events = dev.engine.take_referral_events();
        assert!(events.contains(&ReferralEvent::ConsentChanged { referral: id }));
        assert!(events.contains(&ReferralEvent::Erased { referral: id }));
        assert!(matches!(
            state_of(dev, &id),
            ReferralState::PurgeConfirmed(_)
        ));
        assert!(dev.engine.received_offer(&id).unwrap().is_none());
        dev.assert_referral_list();
        assert!(dev.engine.referral_list().unwrap()[0].offer.is_none());
        // No copy of the case content is left anywhere in the store (records, message log,
        // timeline export).
        for (_, _, value) in dev.snapshot() {
            assert!(!contains(&value, b"Amina Haddad"));
            assert!(!contains(&value, b"violent partner"));
        }
        for m in dev.engine.messages(0, T0).unwrap() {
            match &m.content.body {
                Some(Body::ReferralBody(b)) => assert!(b.keys.is_empty() && b.sections.is_empty()),
                Some(Body::SignedReferralOffer(o)) => assert!(o.offer.is_empty()),
                _ => {}
            }
        }
        assert!(
            dev.engine
                .received_section(&id, wire::Section::Identity)
                .unwrap()
                .is_none()
        );
        dev.flush(&mut relay);
    }

    // A sees both confirmations; nothing is pending.
    cw.sync(&mut relay, T0 + 62);
    let confirmations: Vec<DeviceId> = cw
        .engine
        .take_referral_events()
        .into_iter()
        .filter_map(|e| match e {
            ReferralEvent::PurgeConfirmed {
                device, retained, ..
            } => {
                assert!(!retained);
                Some(device)
            }
            _ => None,
        })
        .collect();
    assert_eq!(confirmations.len(), 2);
    assert!(matches!(
        state_of(&cw, &id),
        ReferralState::PurgeConfirmed(_)
    ));
    let report = cw.engine.purge_status(&withdrawn.id()).unwrap();
    assert!(matches!(report[0].status, PurgeStatus::Confirmed { .. }));
    assert_eq!(report[0].confirmed.len(), 2);
    assert!(report[0].pending.is_empty());
    assert!(!cw.engine.erasure_pending(&withdrawn.id()).unwrap());
    cw.assert_referral_list();
}

#[test]
fn a_missing_or_unreadable_list_summary_is_rebuilt_from_the_records() {
    let mut net = setup();
    let id = accepted_referral(&mut net);
    net.cw.assert_referral_list();
    let expected = net.cw.engine.referral_list().unwrap();
    assert_eq!(expected.len(), 1);
    assert!(expected[0].awaiting_release);
    assert_eq!(
        expected[0].offer.as_ref().unwrap().case_ref,
        offer_draft(&net.cw.root(), &net.b[0].root()).sender_case_ref
    );
    let mut summary_key = b"l/".to_vec();
    summary_key.extend_from_slice(id.as_bytes());

    // Missing (a profile written before summaries existed): rebuilt and stored.
    let mut batch = WriteBatch::new();
    batch.delete(Namespace::Referrals, &summary_key);
    net.cw.engine.store_mut().apply_batch(batch).unwrap();
    assert!(net.cw.list_summaries().is_empty());
    assert_eq!(net.cw.engine.referral_list().unwrap(), expected);
    assert_eq!(net.cw.list_summaries().len(), 1);
    net.cw.assert_referral_list();

    // Unreadable (another layout): rebuilt and stored.
    let receiver = net.b[0].engine.referral_list().unwrap();
    let mut batch = WriteBatch::new();
    batch.put(Namespace::Referrals, &summary_key, &[9, 9, 9]);
    net.b[0].engine.store_mut().apply_batch(batch).unwrap();
    assert_eq!(net.b[0].engine.referral_list().unwrap(), receiver);
    assert_ne!(net.b[0].list_summaries()[0].1, vec![9, 9, 9]);
    net.b[0].assert_referral_list();

    // Rebuilt summaries are kept up to date by later steps and survive a restart.
    net.cw
        .engine
        .release_referral_body(&id, T0 + 40, &mut net.cw.rng)
        .unwrap();
    net.cw.assert_referral_list();
    assert!(!net.cw.engine.referral_list().unwrap()[0].awaiting_release);
    let Net { relay, cw, b } = net;
    let mut cw = cw.restart();
    cw.assert_referral_list();
    drop((relay, b));
}

#[test]
fn offer_with_a_section_outside_the_consent_is_refused_and_nothing_changes() {
    let Net {
        mut relay,
        mut cw,
        b,
    } = setup();
    let b_root = b[0].root();
    let a_root = cw.root();
    let receipt = record_consent(&mut cw, &b_root, &COVERED);
    let before = cw.snapshot();
    let err = cw
        .engine
        .send_referral_offer(
            &offer_draft(&a_root, &b_root),
            &body_sections(true),
            &OfferConsent::Receipt(receipt),
            T0 + 20,
            &mut cw.rng,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        EngineError::Referral(ReferralError::Consent(GateError::SectionNotCovered { .. }))
    ));
    assert!(before == cw.snapshot());
    assert!(cw.engine.referrals().unwrap().is_empty());
    assert_eq!(cw.flush(&mut relay), 0);
}

/// The offer reaches all three B devices and B1 accepts; returns the referral.
fn accepted_referral(net: &mut Net) -> ReferralId {
    let b_root = net.b[0].root();
    let a_root = net.cw.root();
    let receipt = record_consent(&mut net.cw, &b_root, &COVERED);
    let (id, _) = net
        .cw
        .engine
        .send_referral_offer(
            &offer_draft(&a_root, &b_root),
            &body_sections(false),
            &OfferConsent::Receipt(receipt),
            T0 + 20,
            &mut net.cw.rng,
        )
        .unwrap();
    net.cw.flush(&mut net.relay);
    for dev in net.b.iter_mut() {
        dev.sync(&mut net.relay, T0 + 21);
    }
    act(&mut net.b[0], &id, Action::Acknowledge, T0 + 30).unwrap();
    act(&mut net.b[0], &id, Action::Accept, T0 + 31).unwrap();
    net.b[0].flush(&mut net.relay);
    for dev in net.b[1..].iter_mut() {
        dev.sync(&mut net.relay, T0 + 32);
    }
    net.cw.sync(&mut net.relay, T0 + 32);
    assert_eq!(state_of(&net.cw, &id), ReferralState::Accepted);
    for dev in net.b.iter_mut() {
        dev.engine.take_referral_events();
    }
    net.cw.engine.take_referral_events();
    id
}

/// The referral records, registry, ledger and timelines of a device.
fn referral_records(dev: &Device) -> Vec<Vec<u8>> {
    dev.snapshot()
        .into_iter()
        .filter(|(ns, _, _)| {
            matches!(
                ns,
                Namespace::Referrals | Namespace::Consent | Namespace::Timeline
            )
        })
        .map(|(_, k, v)| [k, v].concat())
        .collect()
}

#[test]
fn a_body_sent_to_an_ambassador_and_a_forged_control_are_refused_without_state_change() {
    let mut net = setup();
    let id = accepted_referral(&mut net);
    let registry = ReceiptRegistry::from_bytes(
        &net.cw
            .engine
            .store()
            .get(Namespace::Consent, b"registry")
            .unwrap()
            .unwrap(),
    )
    .unwrap();

    // A body built for an intake device, pushed to the ambassador by hand (the engine never
    // sends one there): refused, nothing in the referral records changes.
    let mut record_key = b"s/".to_vec();
    record_key.extend_from_slice(id.as_bytes());
    let stored = net
        .cw
        .engine
        .store()
        .get(Namespace::Referrals, &record_key)
        .unwrap()
        .unwrap();
    let sender = SenderReferral::from_bytes(&stored).unwrap();
    let intake_cert = net.b[0].engine.certificate().unwrap().clone();
    let body = sender
        .release_body(
            &intake_cert,
            &registry,
            &mut DisclosureLedger::new(),
            T0 + 40,
        )
        .unwrap();
    let ambassador = net.b[2].peer();
    let Device { engine, rng } = &mut net.cw;
    engine
        .send(ambassador, Body::ReferralBody(body), T0 + 40, rng)
        .unwrap();
    net.cw.flush(&mut net.relay);
    let before = referral_records(&net.b[2]);
    let (got, _) = net.b[2].sync(&mut net.relay, T0 + 41);
    assert_eq!(got.len(), 1, "the message is delivered (and acked) once");
    assert_eq!(
        net.b[2].engine.take_referral_events(),
        [ReferralEvent::Refused {
            referral: Some(id),
            error: ReferralError::AmbassadorCannotReceiveBody,
        }]
    );
    assert!(before == referral_records(&net.b[2]));
    assert!(
        net.b[2]
            .engine
            .received_section(&id, wire::Section::Identity)
            .unwrap()
            .is_none()
    );

    // Review finding: free text in controls and receipts reached ambassador devices. A control
    // carrying answers and the consent receipt, pushed to the ambassador by hand (the engine
    // never addresses them there), are refused; the message log keeps no text of them.
    let answers = wire::ReferralControl {
        referral_id: id.as_bytes().to_vec(),
        sequence: 9,
        prev_hash: vec![0; 32],
        at: T0 + 42,
        action: Some(wire::referral_control::Action::ProvideInfo(
            wire::ProvideInfo {
                answers: vec!["She has two children at the Lindenstrasse school".into()],
            },
        )),
    };
    let signed_answers = wire::SignedControl {
        control: answers.encode_to_vec(),
        signer: Some(net.cw.engine.certificate().unwrap().signed().clone()),
        signature: vec![0; 64],
    };
    let receipt = registry.iter().next().unwrap().signed().clone();
    let Device { engine, rng } = &mut net.cw;
    engine
        .send(
            ambassador,
            Body::ReferralControl(signed_answers),
            T0 + 42,
            rng,
        )
        .unwrap();
    engine
        .send(ambassador, Body::ConsentReceipt(receipt), T0 + 42, rng)
        .unwrap();
    net.cw.flush(&mut net.relay);
    let (got, _) = net.b[2].sync(&mut net.relay, T0 + 43);
    assert_eq!(got.len(), 2);
    let refusal = ReferralEvent::Refused {
        referral: None,
        error: ReferralError::AmbassadorCannotReceiveCase,
    };
    assert_eq!(
        net.b[2].engine.take_referral_events(),
        [refusal.clone(), refusal]
    );
    assert!(before == referral_records(&net.b[2]));
    for (_, _, value) in net.b[2].snapshot() {
        assert!(!contains(&value, b"Lindenstrasse"));
        assert!(!contains(&value, PURPOSE.as_bytes()));
    }

    // A WITHDRAW on top of B2's timeline head with a signature that does not verify.
    let mut record_key = b"r/".to_vec();
    record_key.extend_from_slice(id.as_bytes());
    let stored = net.b[1]
        .engine
        .store()
        .get(Namespace::Referrals, &record_key)
        .unwrap()
        .unwrap();
    let timeline = ReceiverReferral::from_bytes(&stored)
        .unwrap()
        .timeline()
        .clone();
    let control = wire::ReferralControl {
        referral_id: id.as_bytes().to_vec(),
        sequence: timeline.len(),
        prev_hash: timeline.head().to_vec(),
        at: T0 + 50,
        action: Some(wire::referral_control::Action::Withdraw(wire::Withdraw {
            reason: "forged".into(),
        })),
    };
    let forged = wire::SignedControl {
        control: control.encode_to_vec(),
        signer: Some(net.cw.engine.certificate().unwrap().signed().clone()),
        signature: vec![0; 64],
    };
    let b2 = net.b[1].peer();
    let Device { engine, rng } = &mut net.cw;
    engine
        .send(b2, Body::ReferralControl(forged), T0 + 50, rng)
        .unwrap();
    net.cw.flush(&mut net.relay);
    let before = referral_records(&net.b[1]);
    net.b[1].sync(&mut net.relay, T0 + 51);
    assert_eq!(
        net.b[1].engine.take_referral_events(),
        [ReferralEvent::Refused {
            referral: Some(id),
            error: ReferralError::BadSignature {
                what: "control message"
            },
        }]
    );
    assert!(before == referral_records(&net.b[1]));
    assert_eq!(state_of(&net.b[1], &id), ReferralState::Accepted);
}

// ---------------------------------------------------------------------------------------------
// Peer identity (docs/PROTOCOL.md §5.5): a peer is (organisation root, device id).

/// Organisation C (trusted by the caseworker) certifies a device that carries `victim`'s
/// device id. Returns C's admin and the impostor device.
fn impostor(relay: &mut SimRelay, victim: &Device, seed: u64) -> (Device, Device) {
    use handover_core::engine::IdentitySetup;
    use handover_core::identity::DeviceKeys;
    use handover_core::testing::TestRng;
    let mut c_admin = Device::new_org(relay, seed, "Org C admin");
    let mut rng = TestRng::seeded(seed + 1);
    let mut secret = DeviceKeys::generate(&mut rng).to_secret_bytes().to_vec();
    // Layout: format byte, then the 16-byte device id.
    secret[1..17].copy_from_slice(&victim.id().0);
    let keys = DeviceKeys::from_secret_bytes(&secret).unwrap();
    assert_eq!(keys.device_id(), victim.id());
    let (certificate, device_list) = c_admin
        .engine
        .enrol_device(&keys.public_keys(), Role::Caseworker, "Impostor", T0)
        .unwrap();
    let identity = IdentitySetup::Enrolled {
        certificate,
        device_list,
    };
    let m = Device::create(relay, keys, identity, "Impostor", rng);
    (c_admin, m)
}

/// Sends an offer from the caseworker to B, has B's intake admin accept it and releases the
/// body; asserts that B's intake caseworker `b[1]` gets offer and body and the impostor gets
/// nothing.
fn offer_and_body_reach_b_only(
    relay: &mut SimRelay,
    cw: &mut Device,
    b: &mut [Device],
    impostor: &mut Device,
    now: u64,
) {
    let b_root = b[0].root();
    let a_root = cw.root();
    let receipt = record_consent(cw, &b_root, &COVERED);
    let (id, _) = cw
        .engine
        .send_referral_offer(
            &offer_draft(&a_root, &b_root),
            &body_sections(false),
            &OfferConsent::Receipt(receipt),
            now,
            &mut cw.rng,
        )
        .unwrap();
    cw.flush(relay);
    for dev in b[..2].iter_mut() {
        dev.sync(relay, now + 1);
        assert!(
            dev.engine
                .take_referral_events()
                .contains(&ReferralEvent::OfferReceived { referral: id })
        );
    }
    act(&mut b[0], &id, Action::Acknowledge, now + 2).unwrap();
    act(&mut b[0], &id, Action::Accept, now + 3).unwrap();
    b[0].flush(relay);
    cw.sync(relay, now + 4);
    cw.engine
        .release_referral_body(&id, now + 5, &mut cw.rng)
        .unwrap();
    cw.flush(relay);
    b[1].sync(relay, now + 6);
    assert!(
        b[1].engine
            .take_referral_events()
            .contains(&ReferralEvent::BodyReceived { referral: id })
    );
    assert!(
        b[1].engine
            .received_section(&id, wire::Section::Identity)
            .unwrap()
            .is_some()
    );
    // The impostor's mailbox received nothing of it.
    let (got, _) = impostor.sync(relay, now + 6);
    assert!(got.is_empty());
    assert!(impostor.engine.take_referral_events().is_empty());
    assert!(impostor.engine.referral(&id).unwrap().is_none());
}

#[test]
fn a_prekey_message_from_another_organisation_never_takes_over_a_device() {
    let Net {
        mut relay,
        mut cw,
        mut b,
    } = setup();
    let (c_admin, mut m) = impostor(&mut relay, &b[1], 91);
    cw.engine.trust_organisation(&c_admin.root()).unwrap();
    m.engine.trust_organisation(&cw.root()).unwrap();
    // The impostor sends a PrekeyMessage carrying a contact card with B's device id.
    connect(&mut relay, &mut m, &mut cw, T0 + 6);

    // Two contacts share the device id; each keeps its own organisation and session.
    let contacts = cw.engine.contacts().unwrap();
    let same_id: Vec<_> = contacts
        .iter()
        .filter(|c| c.device_id == b[1].id())
        .collect();
    assert_eq!(same_id.len(), 2);
    assert!(same_id.iter().all(|c| c.has_session));
    assert!(same_id.iter().any(|c| c.peer() == b[1].peer()));
    assert!(same_id.iter().any(|c| c.peer() == m.peer()));

    // B's real device still reaches the caseworker on its session, and back.
    b[1].chat(cw.peer(), "still the real intake device", T0 + 7);
    b[1].flush(&mut relay);
    let (got, _) = cw.sync(&mut relay, T0 + 8);
    assert_eq!(got.len(), 1);
    cw.chat(b[1].peer(), "hello B", T0 + 9);
    cw.flush(&mut relay);
    assert_eq!(b[1].sync(&mut relay, T0 + 10).0.len(), 1);
    assert!(m.sync(&mut relay, T0 + 10).0.is_empty());

    offer_and_body_reach_b_only(&mut relay, &mut cw, &mut b, &mut m, T0 + 20);
}

#[test]
fn an_organisation_profile_never_replaces_another_organisations_contact() {
    let Net {
        mut relay,
        mut cw,
        mut b,
    } = setup();
    let (mut c_admin, mut m) = impostor(&mut relay, &b[1], 93);
    // C's admin holds the impostor's address and lists it as an intake device.
    connect(&mut relay, &mut m, &mut c_admin, T0 + 6);
    let details = ProfileDetails {
        name: "Org C".into(),
        ..Default::default()
    };
    let profile = c_admin
        .engine
        .signed_org_profile(details, T0 + 7, &mut c_admin.rng)
        .unwrap();
    c_admin.sync_caps(&mut relay, T0 + 7);
    cw.engine.trust_organisation(&c_admin.root()).unwrap();
    let added = cw.engine.import_org_profile(&profile, T0 + 8).unwrap();
    assert!(added.contains(&m.peer()));
    assert!(!added.contains(&b[1].peer()));

    // B's contact record is untouched: its address and session still lead to B.
    let contact = cw
        .engine
        .contacts()
        .unwrap()
        .into_iter()
        .find(|c| c.peer() == b[1].peer())
        .unwrap();
    assert!(contact.has_session && contact.has_address);
    assert_ne!(
        cw.engine.contact_address(b[1].peer()).unwrap(),
        cw.engine.contact_address(m.peer()).unwrap()
    );
    b[1].chat(cw.peer(), "still me", T0 + 9);
    b[1].flush(&mut relay);
    assert_eq!(cw.sync(&mut relay, T0 + 10).0.len(), 1);

    offer_and_body_reach_b_only(&mut relay, &mut cw, &mut b, &mut m, T0 + 20);
}

/// Independent-implementation finding: a valid signed offer inside an organisation packet
/// (docs/PROTOCOL.md §10) was decrypted, shown as "(a referral offer)" and dropped without a
/// word. Referral and consent steps travel pairwise only: the sender refuses to build such a
/// packet, and a receiving device refuses to open one, applying nothing.
#[test]
fn a_referral_offer_in_an_organisation_packet_is_refused_at_both_ends() {
    use handover_core::fanout::FanoutError;
    let Net {
        mut relay,
        mut cw,
        mut b,
    } = setup();
    let b_root = b[0].root();
    let a_root = cw.root();
    record_consent(&mut cw, &b_root, &COVERED);
    // A genuine signed offer, as the engine would send it pairwise.
    let registry = ReceiptRegistry::from_bytes(
        &cw.engine
            .store()
            .get(Namespace::Consent, b"registry")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let signed_receipt = registry.iter().next().unwrap().signed().clone();
    let offer = {
        let Device { engine, rng } = &mut cw;
        let actor = engine.actor().unwrap();
        let mut referral = SenderReferral::prepare(
            &offer_draft(&a_root, &b_root),
            &body_sections(false),
            ConsentInput::Receipt(&signed_receipt),
            engine.org_trust(&a_root).unwrap(),
            &registry,
            &actor,
            T0 + 20,
            rng,
        )
        .unwrap();
        referral
            .mark_sent(&actor, &mut DisclosureLedger::new())
            .unwrap()
            .0
    };

    // Sending end: refused, nothing stored or sent.
    let before = cw.snapshot();
    let err = cw
        .engine
        .prepare_org_packet(
            &b_root,
            Body::SignedReferralOffer(offer.clone()),
            T0 + 22,
            &mut cw.rng,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        EngineError::Fanout(FanoutError::NotAllowedInPacket)
    ));
    assert!(before == cw.snapshot());

    // Receiving end: a packet built by hand around the offer.
    let content = wire::Content {
        message_id: vec![5; 16],
        sent_at: T0 + 22,
        body: Some(Body::SignedReferralOffer(offer)),
        ..Default::default()
    };
    let mut ciphertext = Vec::new();
    let file = handover_core::attachment::encrypt(
        &mut cw.rng,
        &mut content.encode_to_vec().as_slice(),
        &mut ciphertext,
        |_| {},
    )
    .unwrap();
    let blob_id = relay.blob_put(&ciphertext);
    let key = wire::FanoutKey {
        packet: Some(file.blob_ref(blob_id, "relay.test:4433".into())),
    };
    let intake = b[0].peer();
    let Device { engine, rng } = &mut cw;
    engine
        .send(intake, Body::FanoutKey(key), T0 + 22, rng)
        .unwrap();
    cw.flush(&mut relay);
    // B's intake admin receives the key message, then opens the packet.
    let (got, _) = b[0].sync(&mut relay, T0 + 23);
    let key_message = got
        .iter()
        .find(|m| matches!(m.content.body, Some(Body::FanoutKey(_))))
        .unwrap()
        .clone();
    let records = referral_records(&b[0]);
    let err = b[0]
        .engine
        .open_org_packet(key_message.seq, &ciphertext)
        .unwrap_err();
    assert!(matches!(
        err,
        EngineError::Fanout(FanoutError::NotAllowedInPacket)
    ));
    assert_eq!(
        err.to_string(),
        "organisation packet failed: referral and consent steps are sent to each device \
         pairwise, never in an organisation packet"
    );
    assert!(b[0].engine.message(key_message.seq).unwrap().unwrap() == key_message);
    assert!(records == referral_records(&b[0]));
    assert!(b[0].engine.referrals().unwrap().is_empty());
}
