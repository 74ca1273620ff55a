//! The sending organisation as a team, through the engine over the in-memory relay
//! (docs/PROTOCOL.md §11.9): every caseworker and admin device of the sender holds the case and
//! can take every sender step; the body is released once; reassignment; a device enrolled
//! later catches up; ambassadors and revoked devices get nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod engine_support;

use engine_support::*;
use handover_core::consent::{PurgeStatus, ReceiptId};
use handover_core::engine::{
    EngineError, OfferConsent, ProfileDetails, RELEASE_HANDOFF_SECS, ReferralEvent,
};
use handover_core::identity::{DeviceId, Role};
use handover_core::referral::{
    Action, OfferDraft, Outcome, ReceiverReferral, ReferralError, ReferralId, ReferralState,
    SenderReferral, Side, TeamAction,
};
use handover_core::store::{KvStore, Namespace};
use handover_proto::e2e::v1 as wire;

const DAY: u64 = 86_400;
const PURPOSE: &str = "Safe accommodation and psychosocial support after leaving home";
const SECTIONS: [wire::Section; 4] = [
    wire::Section::Identity,
    wire::Section::SafeContact,
    wire::Section::Reason,
    wire::Section::Risk,
];

fn receipt_draft(recipient: &[u8; 32], now: u64) -> wire::ConsentReceipt {
    wire::ConsentReceipt {
        principal_ref: "P-7Q2X".to_owned(),
        expressed_by: wire::ExpressedBy::Survivor as i32,
        collection_method: wire::CollectionMethod::InPersonVerbal as i32,
        consent_type: "EXPLICIT".to_owned(),
        event_time: now,
        valid_until: now + 180 * DAY,
        jurisdictions: vec!["BE".to_owned()],
        notice_ref: "https://example.org/privacy/v3".to_owned(),
        notice_language: "en".to_owned(),
        controllers: vec![wire::Controller {
            name: "Harbour".to_owned(),
            contact: "Data protection officer".to_owned(),
            ..Default::default()
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
            services: vec![wire::Service::Shelter as i32],
        }],
        data_categories: SECTIONS.iter().map(|s| *s as i32).collect(),
        sensitive: true,
        retention_secs: 90 * DAY,
        storage_locations: vec!["EU (Belgium)".to_owned()],
        withdrawal_method: "Tell your caseworker or any staff member.".to_owned(),
        witness: Some(wire::Witness {
            caseworker_id: "CW-12".to_owned(),
            org_name: "Harbour".to_owned(),
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
        services_requested: vec![wire::Service::Shelter],
        priority: wire::Priority::Urgent,
        purpose: PURPOSE.to_owned(),
        languages: vec!["ar".to_owned()],
        age_band: wire::AgeBand::Adult,
        retain_until: T0 + 60 * DAY,
        retention_rule: "Erase 60 days after the offer".to_owned(),
        ..Default::default()
    }
}

fn body_sections() -> Vec<wire::BodySection> {
    use wire::body_section::Content;
    vec![
        wire::BodySection {
            content: Some(Content::Identity(wire::IdentitySection {
                name_or_alias: "Amina Haddad".to_owned(),
                ..Default::default()
            })),
        },
        wire::BodySection {
            content: Some(Content::SafeContact(wire::SafeContactSection {
                safe_to_contact: true,
                channels: vec!["phone".to_owned()],
                ..Default::default()
            })),
        },
        wire::BodySection {
            content: Some(Content::Reason(wire::ReasonSection {
                reason: "Left a violent partner two days ago.".to_owned(),
            })),
        },
        wire::BodySection {
            content: Some(Content::Risk(wire::RiskSection {
                level: wire::RiskLevel::High as i32,
                ..Default::default()
            })),
        },
    ]
}

/// Makes `from` and `to` able to message each other (invitation from `to`, contact card back).
fn connect(relay: &mut SimRelay, from: &mut Device, to: &mut Device, now: u64) {
    let link = to.invite(relay, now);
    from.accept(relay, &link, now);
    to.sync(relay, now);
}

/// Harbour (A): admin a0 (holds the root key), caseworkers a1 and a2, an ambassador. Shelter
/// B: admin b1 and caseworker b2. a1 and a2 reach each other and both of B's devices; the
/// ambassador reaches a1 and a2.
struct Net {
    relay: SimRelay,
    a0: Device,
    a1: Device,
    a2: Device,
    amb: Device,
    b: Vec<Device>,
}

fn setup() -> Net {
    let mut relay = SimRelay::default();
    let mut a0 = Device::new_org(&mut relay, 51, "Harbour admin");
    let mut a1 = Device::enrol(&mut relay, &mut a0, 52, Role::Caseworker, "Ana");
    let mut a2 = Device::enrol(&mut relay, &mut a0, 53, Role::Caseworker, "Ben");
    let mut amb = Device::enrol(&mut relay, &mut a0, 54, Role::Ambassador, "Outreach");
    // Every device of A holds the newest list (all four devices).
    let list = a0.engine.own_device_list().unwrap().unwrap();
    for d in [&mut a1, &mut a2, &mut amb] {
        d.engine.apply_device_list(&list).unwrap();
    }
    let mut b1 = Device::new_org(&mut relay, 61, "Intake admin");
    let mut b2 = Device::enrol(&mut relay, &mut b1, 62, Role::Caseworker, "Intake");
    connect(&mut relay, &mut b2, &mut b1, T0 + 1);
    connect(&mut relay, &mut a2, &mut a1, T0 + 1);
    connect(&mut relay, &mut amb, &mut a1, T0 + 1);
    connect(&mut relay, &mut amb, &mut a2, T0 + 1);
    for a in [&mut a1, &mut a2] {
        a.engine.trust_organisation(&b1.root()).unwrap();
    }
    for b in [&mut b1, &mut b2] {
        b.engine.trust_organisation(&a0.root()).unwrap();
        b.engine.apply_device_list(&list).unwrap();
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
    b2.sync_caps(&mut relay, T0 + 2);
    for a in [&mut a1, &mut a2] {
        for device in a.engine.import_org_profile(&profile, T0 + 3).unwrap() {
            let address = a.engine.contact_address(device).unwrap();
            let bundle = handover_core::engine::bundle_from_result(&relay.take(&address)).unwrap();
            a.engine
                .start_session(device, &bundle, T0 + 4, &mut a.rng)
                .unwrap();
            a.engine
                .send_contact_card(device, T0 + 4, &mut a.rng)
                .unwrap();
        }
        a.sync_caps(&mut relay, T0 + 4);
        a.flush(&mut relay);
    }
    for d in [&mut a1, &mut a2, &mut amb, &mut b1, &mut b2] {
        d.sync(&mut relay, T0 + 5);
        d.engine.take_referral_events();
    }
    Net {
        relay,
        a0,
        a1,
        a2,
        amb,
        b: vec![b1, b2],
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

fn act(dev: &mut Device, id: &ReferralId, action: Action, now: u64) -> Vec<DeviceId> {
    let Device { engine, rng } = dev;
    let (_, items) = engine.referral_act(id, action, now, rng).unwrap();
    items.iter().map(|i| i.recipient).collect()
}

fn state_of(dev: &Device, id: &ReferralId) -> ReferralState {
    dev.engine.referral(id).unwrap().unwrap().state
}

fn head(dev: &Device, id: &ReferralId) -> String {
    let summary = dev.engine.referral(id).unwrap().unwrap();
    summary.timeline["head"].as_str().unwrap().to_owned()
}

fn sorted(mut ids: Vec<DeviceId>) -> Vec<DeviceId> {
    ids.sort();
    ids.dedup();
    ids
}

/// a1 records consent and sends the referral; returns its id and receipt.
fn send(net: &mut Net, now: u64) -> (ReferralId, ReceiptId, Vec<DeviceId>) {
    let b_root = net.b[0].root();
    let a_root = net.a1.root();
    let receipt = net
        .a1
        .engine
        .record_consent(receipt_draft(&b_root, now), now, &mut net.a1.rng)
        .unwrap();
    let (id, items) = net
        .a1
        .engine
        .send_referral_offer(
            &offer_draft(&a_root, &b_root),
            &body_sections(),
            &OfferConsent::Receipt(receipt.id()),
            now,
            &mut net.a1.rng,
        )
        .unwrap();
    net.a1.flush(&mut net.relay);
    (
        id,
        receipt.id(),
        items.iter().map(|i| i.recipient).collect(),
    )
}

/// The stored timeline of a record of either side, verified in full.
fn verify_timeline(dev: &Device, id: &ReferralId, a_root: &[u8; 32], b_root: &[u8; 32]) {
    use handover_core::identity::OrgRootPublicKey;
    let mut key = b"s/".to_vec();
    key.extend_from_slice(id.as_bytes());
    let timeline = match dev.engine.store().get(Namespace::Referrals, &key).unwrap() {
        Some(b) => SenderReferral::from_bytes(&b).unwrap().timeline().clone(),
        None => {
            let mut key = b"r/".to_vec();
            key.extend_from_slice(id.as_bytes());
            let b = dev
                .engine
                .store()
                .get(Namespace::Referrals, &key)
                .unwrap()
                .unwrap();
            ReceiverReferral::from_bytes(&b).unwrap().timeline().clone()
        }
    };
    if timeline.entries().iter().any(|e| e.payload().is_none()) {
        // Case content erased on this device: the hash chain still verifies (signatures over
        // the erased bytes can no longer be rechecked).
        timeline.verify_chain().unwrap();
    } else {
        timeline
            .verify(
                &OrgRootPublicKey::from_bytes(a_root).unwrap(),
                &OrgRootPublicKey::from_bytes(b_root).unwrap(),
            )
            .unwrap();
    }
}

#[test]
fn a_colleague_releases_withdraws_and_follows_purges_after_the_sender_is_revoked() {
    let mut net = setup();
    let a_root = net.a1.root();
    let b_root = net.b[0].root();
    let (a1_id, a2_id, amb_id) = (net.a1.id(), net.a2.id(), net.amb.id());
    let (b1_id, b2_id) = (net.b[0].id(), net.b[1].id());

    // a1 sends: receipt and offer to both intake devices, the shared case to a2; nothing to
    // the ambassador.
    let (id, receipt, recipients) = send(&mut net, T0 + 20);
    assert_eq!(
        sorted(recipients.clone()),
        sorted(vec![a2_id, b1_id, b2_id])
    );
    assert!(!recipients.contains(&amb_id));
    net.a2.sync(&mut net.relay, T0 + 21);
    assert_eq!(
        net.a2.engine.take_referral_events(),
        [ReferralEvent::CaseShared { referral: id }]
    );
    let shared = net.a2.engine.referral(&id).unwrap().unwrap();
    assert_eq!(shared.side, Side::Sender);
    assert_eq!(shared.state, ReferralState::Sent);
    assert_eq!(shared.assignee, Some(a1_id));
    assert!(!shared.mine);
    net.a2.assert_referral_list();
    net.a1.assert_referral_list();
    assert_eq!(head(&net.a2, &id), head(&net.a1, &id));
    let receipts = net.a2.engine.consent_receipts().unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].id(), receipt);
    // The ambassador holds nothing of it.
    net.amb.sync(&mut net.relay, T0 + 21);
    assert!(net.amb.engine.referrals().unwrap().is_empty());
    assert!(net.amb.engine.consent_receipts().unwrap().is_empty());

    // B gets the offer; then a1 goes offline for good, the admin revokes it and the list
    // reaches a2 and B.
    for b in net.b.iter_mut() {
        b.sync(&mut net.relay, T0 + 22);
        b.engine.take_referral_events();
    }
    let list = net.a0.engine.revoke_device(a1_id, T0 + 25).unwrap();
    net.a2.engine.apply_device_list(&list).unwrap();
    for b in net.b.iter_mut() {
        b.engine.apply_device_list(&list).unwrap();
    }

    // B acknowledges and accepts: the steps go to a2 (and B's colleague), not to revoked a1.
    let to = act(&mut net.b[0], &id, Action::Acknowledge, T0 + 31);
    assert!(!to.contains(&a1_id));
    assert!(to.contains(&a2_id) && to.contains(&b2_id));
    let to = act(&mut net.b[0], &id, Action::Accept, T0 + 32);
    assert_eq!(sorted(to), sorted(vec![a2_id, b2_id]));
    net.b[0].flush(&mut net.relay);
    net.a2.sync(&mut net.relay, T0 + 33);
    let events = net.a2.engine.take_referral_events();
    assert_eq!(states(&events), ["DELIVERED", "ACKNOWLEDGED", "ACCEPTED"]);
    assert!(events.contains(&ReferralEvent::ReleaseBody { referral: id }));

    // The case's holder (a1) is revoked: a2 releases at once, to the two intake devices.
    assert_eq!(net.a2.engine.due_releases(T0 + 33).unwrap(), vec![id]);
    let items = net
        .a2
        .engine
        .release_referral_body(&id, T0 + 34, &mut net.a2.rng)
        .unwrap();
    assert_eq!(
        sorted(items.iter().map(|i| i.recipient).collect()),
        sorted(vec![b1_id, b2_id])
    );
    assert!(net.a2.engine.pending_releases().unwrap().is_empty());
    net.a2.assert_referral_list();
    let again = net
        .a2
        .engine
        .release_referral_body(&id, T0 + 35, &mut net.a2.rng)
        .unwrap_err();
    assert!(
        matches!(
            again,
            EngineError::Referral(ReferralError::AlreadyReleased { .. })
        ),
        "{again:?}"
    );
    net.a2.flush(&mut net.relay);
    for b in net.b.iter_mut() {
        b.sync(&mut net.relay, T0 + 36);
        let events = b.engine.take_referral_events();
        let bodies = events
            .iter()
            .filter(|e| matches!(e, ReferralEvent::BodyReceived { .. }))
            .count();
        assert_eq!(bodies, 1, "{events:?}");
        assert!(
            b.engine
                .received_section(&id, wire::Section::Identity)
                .unwrap()
                .is_some()
        );
    }

    // B completes; a2 follows.
    act(
        &mut net.b[0],
        &id,
        Action::Complete {
            outcome: Outcome::Successful,
            note: String::new(),
        },
        T0 + 40,
    );
    net.b[0].flush(&mut net.relay);
    net.a2.sync(&mut net.relay, T0 + 41);
    assert_eq!(states(&net.a2.engine.take_referral_events()), ["COMPLETED"]);
    net.b[1].sync(&mut net.relay, T0 + 41);

    // a2 withdraws the consent a1 recorded: CONSENT_CHANGED to both intake devices.
    let (_, items) = net
        .a2
        .engine
        .change_consent(
            &receipt,
            wire::ConsentState::Withdrawn,
            T0 + 50,
            &mut net.a2.rng,
        )
        .unwrap();
    assert_eq!(
        sorted(items.iter().map(|i| i.recipient).collect()),
        sorted(vec![b1_id, b2_id])
    );
    net.a2.flush(&mut net.relay);
    for b in net.b.iter_mut() {
        b.sync(&mut net.relay, T0 + 51);
        assert!(
            b.engine
                .take_referral_events()
                .contains(&ReferralEvent::Erased { referral: id })
        );
        b.flush(&mut net.relay);
    }
    net.a2.sync(&mut net.relay, T0 + 52);
    let confirmed: Vec<DeviceId> = net
        .a2
        .engine
        .take_referral_events()
        .into_iter()
        .filter_map(|e| match e {
            ReferralEvent::PurgeConfirmed { device, .. } => Some(device),
            _ => None,
        })
        .collect();
    assert_eq!(sorted(confirmed), sorted(vec![b1_id, b2_id]));
    let report = net.a2.engine.purge_status(&receipt).unwrap();
    assert_eq!(report.len(), 1);
    assert!(matches!(report[0].status, PurgeStatus::Confirmed { .. }));
    assert_eq!(report[0].pending, Vec::<DeviceId>::new());
    assert_eq!(
        sorted(report[0].confirmed.clone()),
        sorted(vec![b1_id, b2_id])
    );

    // The timeline verifies on a2 and on B, and names a2 as the device that withdrew consent.
    verify_timeline(&net.a2, &id, &a_root, &b_root);
    let withdrawn = net.a2.engine.referral(&id).unwrap().unwrap().timeline;
    let step = withdrawn["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "CONSENT_CHANGED")
        .unwrap()
        .clone();
    assert_eq!(step["actor"]["device_id"], hex::encode(a2_id.0));
    assert_eq!(step["actor"]["name"], "Ben");
    let release = &net.a2.engine.referral(&id).unwrap().unwrap().team;
    assert_eq!(release.len(), 1);
    assert_eq!(release[0].action, TeamAction::Released);
    assert_eq!(release[0].device, a2_id);
    // B erased the case content; each intake device's chain verifies, and up to the withdrawal
    // it is the chain a2 holds.
    let a2_entries = withdrawn["entries"].as_array().unwrap().clone();
    for b in &net.b {
        verify_timeline(b, &id, &a_root, &b_root);
        let theirs = b.engine.referral(&id).unwrap().unwrap().timeline;
        let theirs = theirs["entries"].as_array().unwrap();
        let consent = a2_entries
            .iter()
            .position(|e| e["action"] == "CONSENT_CHANGED")
            .unwrap();
        assert_eq!(theirs[consent]["hash"], a2_entries[consent]["hash"]);
    }
}

#[test]
fn two_online_sender_devices_release_the_body_once() {
    let mut net = setup();
    let (a1_id, a2_id) = (net.a1.id(), net.a2.id());
    let (b1_id, b2_id) = (net.b[0].id(), net.b[1].id());
    let (id, _, _) = send(&mut net, T0 + 20);
    net.a2.sync(&mut net.relay, T0 + 21);
    for b in net.b.iter_mut() {
        b.sync(&mut net.relay, T0 + 21);
    }
    act(&mut net.b[0], &id, Action::Acknowledge, T0 + 22);
    act(&mut net.b[0], &id, Action::Accept, T0 + 23);
    net.b[0].flush(&mut net.relay);
    net.a1.sync(&mut net.relay, T0 + 24);
    net.a2.sync(&mut net.relay, T0 + 24);
    for a in [&mut net.a1, &mut net.a2] {
        assert!(
            a.engine
                .take_referral_events()
                .contains(&ReferralEvent::ReleaseBody { referral: id })
        );
        assert_eq!(state_of(a, &id), ReferralState::Accepted);
        assert_eq!(a.engine.pending_releases().unwrap(), vec![id]);
    }
    // Only the case's holder releases at once.
    assert_eq!(net.a1.engine.due_releases(T0 + 24).unwrap(), vec![id]);
    assert!(net.a2.engine.due_releases(T0 + 24).unwrap().is_empty());
    let items = net
        .a1
        .engine
        .release_referral_body(&id, T0 + 25, &mut net.a1.rng)
        .unwrap();
    assert_eq!(
        sorted(items.iter().map(|i| i.recipient).collect()),
        sorted(vec![a2_id, b1_id, b2_id]),
        "the body to B, the release claim to a2"
    );
    net.a1.flush(&mut net.relay);
    net.a2.sync(&mut net.relay, T0 + 26);
    assert_eq!(
        net.a2.engine.take_referral_events(),
        [ReferralEvent::TeamStep {
            referral: id,
            device: a1_id,
            action: TeamAction::Released,
        }]
    );
    // The claim holds after the hand-off time too.
    assert!(net.a2.engine.pending_releases().unwrap().is_empty());
    net.a2.assert_referral_list();
    net.a1.assert_referral_list();
    let late = T0 + 26 + RELEASE_HANDOFF_SECS;
    assert!(net.a2.engine.due_releases(late).unwrap().is_empty());
    for b in net.b.iter_mut() {
        b.sync(&mut net.relay, T0 + 27);
        let events = b.engine.take_referral_events();
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, ReferralEvent::BodyReceived { .. }))
                .count(),
            1
        );
    }
}

#[test]
fn a_racing_second_release_is_applied_once_by_the_receiver() {
    let mut net = setup();
    let (id, _, _) = send(&mut net, T0 + 20);
    net.a2.sync(&mut net.relay, T0 + 21);
    for b in net.b.iter_mut() {
        b.sync(&mut net.relay, T0 + 21);
    }
    act(&mut net.b[0], &id, Action::Acknowledge, T0 + 22);
    act(&mut net.b[0], &id, Action::Accept, T0 + 23);
    net.b[0].flush(&mut net.relay);
    net.a1.sync(&mut net.relay, T0 + 24);
    net.a2.sync(&mut net.relay, T0 + 24);
    // a2 has waited the hand-off time without hearing from a1 (both release before either
    // hears of the other).
    let late = T0 + 24 + RELEASE_HANDOFF_SECS;
    assert_eq!(net.a2.engine.due_releases(late).unwrap(), vec![id]);
    net.a1
        .engine
        .release_referral_body(&id, late, &mut net.a1.rng)
        .unwrap();
    net.a2
        .engine
        .release_referral_body(&id, late, &mut net.a2.rng)
        .unwrap();
    net.a1.flush(&mut net.relay);
    net.a2.flush(&mut net.relay);
    for b in net.b.iter_mut() {
        let before = b
            .engine
            .received_section(&id, wire::Section::Reason)
            .unwrap();
        assert!(before.is_none());
        b.sync(&mut net.relay, late + 1);
        let events = b.engine.take_referral_events();
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, ReferralEvent::BodyReceived { .. }))
                .count(),
            1,
            "{events:?}"
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, ReferralEvent::Refused { .. }))
        );
    }
    // Each sender device records both claims.
    net.a1.sync(&mut net.relay, late + 2);
    net.a2.sync(&mut net.relay, late + 2);
    for a in [&net.a1, &net.a2] {
        assert_eq!(a.engine.referral(&id).unwrap().unwrap().team.len(), 2);
    }
}

#[test]
fn a_device_enrolled_later_gets_the_open_cases_and_can_take_one_over() {
    let mut net = setup();
    let a_root = net.a1.root();
    let b_root = net.b[0].root();
    let (id, receipt, _) = send(&mut net, T0 + 20);
    net.a2.sync(&mut net.relay, T0 + 21);

    // a3 joins the organisation a day later and reaches a1.
    let mut a3 = Device::enrol(&mut net.relay, &mut net.a0, 55, Role::Caseworker, "Cleo");
    let a3_id = a3.id();
    let list = net.a0.engine.own_device_list().unwrap().unwrap();
    for d in [&mut net.a1, &mut net.a2, &mut a3] {
        d.engine.apply_device_list(&list).unwrap();
    }
    for b in net.b.iter_mut() {
        b.engine.apply_device_list(&list).unwrap();
    }
    let later = T0 + DAY;
    connect(&mut net.relay, &mut a3, &mut net.a1, later);
    // a3 does not trust B yet: it still takes the case (B's root comes from the offer its own
    // organisation signed).
    assert!(!a3.engine.trusts_organisation(&b_root).unwrap());
    // Nothing was shared yet; a1 catches a3 up: the receipt and the case, once.
    assert!(a3.engine.referrals().unwrap().is_empty());
    let items = net.a1.engine.share_cases(later, &mut net.a1.rng).unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| i.recipient == a3_id));
    assert!(
        net.a1
            .engine
            .share_cases(later, &mut net.a1.rng)
            .unwrap()
            .is_empty()
    );
    // a2 has it already and does not reach a3: nothing either. The ambassador gets nothing.
    assert!(
        net.a2
            .engine
            .share_cases(later, &mut net.a2.rng)
            .unwrap()
            .is_empty()
    );
    net.a1.flush(&mut net.relay);
    a3.sync(&mut net.relay, later + 1);
    let events = a3.engine.take_referral_events();
    assert!(events.contains(&ReferralEvent::ConsentReceiptReceived { receipt }));
    assert!(events.contains(&ReferralEvent::CaseShared { referral: id }));
    assert_eq!(head(&a3, &id), head(&net.a1, &id));
    assert_eq!(a3.engine.consent_receipts().unwrap().len(), 1);
    verify_timeline(&a3, &id, &a_root, &b_root);
    net.amb.sync(&mut net.relay, later + 1);
    assert!(net.amb.engine.referrals().unwrap().is_empty());

    // a1 hands the case to a3.
    let items = net
        .a1
        .engine
        .reassign_referral(&id, a3_id, later + 2, &mut net.a1.rng)
        .unwrap();
    assert_eq!(
        sorted(items.iter().map(|i| i.recipient).collect()),
        sorted(vec![net.a2.id(), a3_id])
    );
    // Never to an ambassador.
    let err = net
        .a1
        .engine
        .reassign_referral(&id, net.amb.id(), later + 2, &mut net.a1.rng)
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidInput(_)), "{err:?}");
    net.a1.flush(&mut net.relay);
    a3.sync(&mut net.relay, later + 3);
    net.a2.sync(&mut net.relay, later + 3);
    for d in [&mut a3, &mut net.a2] {
        let events = d.engine.take_referral_events();
        assert!(events.contains(&ReferralEvent::TeamStep {
            referral: id,
            device: net.a1.id(),
            action: TeamAction::Reassigned { assignee: a3_id },
        }));
    }
    let mine = a3.engine.referral(&id).unwrap().unwrap();
    assert!(mine.mine);
    assert_eq!(mine.assignee, Some(a3_id));
    let theirs = net.a1.engine.referral(&id).unwrap().unwrap();
    assert!(!theirs.mine);
    assert_eq!(theirs.assignee, Some(a3_id));
    a3.assert_referral_list();
    net.a1.assert_referral_list();
    net.a2.assert_referral_list();
    let listed = a3.engine.referral_list().unwrap();
    assert!(listed[0].mine);
    assert_eq!(listed[0].assignee, Some(a3_id));
    assert!(!net.a1.engine.referral_list().unwrap()[0].mine);

    // a3 withdraws the referral: to both intake devices and its colleagues; the step names a3.
    a3.engine.trust_organisation(&b_root).ok();
    for b in net.b.iter_mut() {
        b.sync(&mut net.relay, later + 4);
    }
    // a3 needs sessions with B: it imports B's directory entry like its colleagues did.
    let b_devices = [net.b[0].peer(), net.b[1].peer()];
    for b in net.b.iter_mut() {
        let link = b.invite(&mut net.relay, later + 4);
        a3.accept(&mut net.relay, &link, later + 4);
        b.sync(&mut net.relay, later + 4);
    }
    a3.sync(&mut net.relay, later + 4);
    let to = act(
        &mut a3,
        &id,
        Action::Withdraw {
            reason: String::new(),
        },
        later + 5,
    );
    assert!(to.contains(&b_devices[0].device_id) && to.contains(&b_devices[1].device_id));
    assert!(to.contains(&net.a1.id()));
    a3.flush(&mut net.relay);
    net.b[0].sync(&mut net.relay, later + 6);
    let summary = net.b[0].engine.referral(&id).unwrap().unwrap();
    let last = summary.timeline["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "WITHDRAW")
        .unwrap()
        .clone();
    assert_eq!(last["actor"]["device_id"], hex::encode(a3_id.0));
    net.a1.sync(&mut net.relay, later + 6);
    assert_eq!(state_of(&net.a1, &id), ReferralState::Withdrawn);
    net.a1.assert_referral_list();
    net.b[0].assert_referral_list();

    // A withdrawn (erased) case is not shared with a device enrolled after it.
    let mut a4 = Device::enrol(&mut net.relay, &mut net.a0, 56, Role::Caseworker, "Dan");
    let list = net.a0.engine.own_device_list().unwrap().unwrap();
    for d in [&mut net.a1, &mut a4] {
        d.engine.apply_device_list(&list).unwrap();
    }
    connect(&mut net.relay, &mut a4, &mut net.a1, later + 7);
    let items = net
        .a1
        .engine
        .share_cases(later + 7, &mut net.a1.rng)
        .unwrap();
    assert_eq!(items.len(), 1, "the receipt only");
}
