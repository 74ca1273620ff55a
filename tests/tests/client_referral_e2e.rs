//! End-to-end referral over the relay process and real QUIC on loopback: a referrer's client
//! records consent and refers to an organisation with two devices; one accepts, the body is
//! released to both, the referral completes, consent is withdrawn and both devices erase and
//! confirm; the referrer's client sees both confirmations.

// Test code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use handover_core::client::Client;
use handover_core::consent::PurgeStatus;
use handover_core::engine::{IdentitySetup, OfferConsent, RelayInfo};
use handover_core::identity::{DeviceKeys, Role};
use handover_core::referral::{Action, OfferDraft, Outcome, ReferralId, ReferralState};
use handover_core::store::{Credential, KdfParams, Passphrase};
use handover_proto::e2e::v1 as wire;
use handover_proto::e2e::v1::content::Body;
use handover_tests::process::RelayProcess;

const DAY: u64 = 86_400;
const PURPOSE: &str = "Safe accommodation after leaving home";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_relay-under-test"))
}

fn cred(who: &str) -> Credential {
    Credential::from(Passphrase::from(format!("{who} passphrase")))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn root(client: &Client) -> [u8; 32] {
    client
        .with_engine(|e, _, _| e.org_root().unwrap())
        .await
        .unwrap()
}

fn receipt_draft(recipient: &[u8; 32], now: u64) -> wire::ConsentReceipt {
    wire::ConsentReceipt {
        principal_ref: "P-7Q2X".into(),
        expressed_by: wire::ExpressedBy::Survivor as i32,
        collection_method: wire::CollectionMethod::InPersonVerbal as i32,
        consent_type: "EXPLICIT".into(),
        event_time: now,
        valid_until: now + 180 * DAY,
        jurisdictions: vec!["BE".into()],
        notice_ref: "https://example.org/privacy/v3".into(),
        notice_language: "en".into(),
        controllers: vec![wire::Controller {
            name: "Harbour".into(),
            contact: "Data protection officer".into(),
            email: "dpo@example.org".into(),
            ..Default::default()
        }],
        legal_basis: Some(wire::LegalBasis {
            basis: "GDPR Art. 9(2)(a) explicit consent".into(),
            ..Default::default()
        }),
        purposes: vec![wire::Purpose {
            purpose: PURPOSE.into(),
            category: "referral".into(),
            primary: true,
        }],
        recipients: vec![wire::ConsentRecipient {
            org_root_key: recipient.to_vec(),
            org_name: "Shelter B".into(),
            services: vec![wire::Service::Shelter as i32],
        }],
        data_categories: [
            wire::Section::Identity,
            wire::Section::SafeContact,
            wire::Section::Reason,
            wire::Section::Risk,
        ]
        .iter()
        .map(|s| *s as i32)
        .collect(),
        sensitive: true,
        retention_secs: 90 * DAY,
        storage_locations: vec!["EU".into()],
        withdrawal_method: "Tell your caseworker.".into(),
        witness: Some(wire::Witness {
            caseworker_id: "CW-1".into(),
            org_name: "Harbour".into(),
        }),
        principal_ack: Some(wire::PrincipalAck {
            method: wire::AckMethod::VerbalWitnessed as i32,
            detail: String::new(),
        }),
        ..Default::default()
    }
}

fn offer(from: &[u8; 32], to: &[u8; 32], now: u64) -> (OfferDraft, Vec<wire::BodySection>) {
    use wire::body_section::Content;
    let draft = OfferDraft {
        kind: wire::ReferralKind::Referral,
        sender_case_ref: "HWC-0001".into(),
        from: wire::Party {
            org_root_key: from.to_vec(),
            org_name: "Harbour".into(),
            worker_name: "Duty caseworker".into(),
            role: wire::Role::Admin as i32,
            contact: "intake@example.org".into(),
        },
        to: wire::Party {
            org_root_key: to.to_vec(),
            org_name: "Shelter B".into(),
            ..Default::default()
        },
        services_requested: vec![wire::Service::Shelter],
        priority: wire::Priority::Urgent,
        purpose: PURPOSE.into(),
        languages: vec!["en".into()],
        age_band: wire::AgeBand::Adult,
        retain_until: now + 60 * DAY,
        retention_rule: "Erase after 60 days".into(),
        ..Default::default()
    };
    let sections = vec![
        wire::BodySection {
            content: Some(Content::Identity(wire::IdentitySection {
                name_or_alias: "Amina".into(),
                ..Default::default()
            })),
        },
        wire::BodySection {
            content: Some(Content::SafeContact(wire::SafeContactSection {
                safe_to_contact: true,
                ..Default::default()
            })),
        },
        wire::BodySection {
            content: Some(Content::Reason(wire::ReasonSection {
                reason: "Needs a safe place tonight.".into(),
            })),
        },
        wire::BodySection {
            content: Some(Content::Risk(wire::RiskSection {
                level: wire::RiskLevel::High as i32,
                ..Default::default()
            })),
        },
    ];
    (draft, sections)
}

/// Syncs until the referral exists on `client` and satisfies `pred`.
async fn wait_state(client: &Client, id: ReferralId, pred: impl Fn(&ReferralState) -> bool) {
    loop {
        client.sync().await.unwrap();
        if let Some(r) = client.referral(id).await.unwrap()
            && pred(&r.state)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_contact_card(client: &Client) {
    loop {
        if client
            .sync()
            .await
            .unwrap()
            .iter()
            .any(|m| matches!(m.content.body, Some(Body::ContactCard(_))))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referral_consent_withdrawal_and_purge_confirmations_over_the_relay() {
    tokio::time::timeout(Duration::from_secs(180), scenario())
        .await
        .expect("test timed out");
}

async fn scenario() {
    let tmp = tempfile::tempdir().unwrap();
    let process = RelayProcess::start(bin(), &tmp.path().join("relay"), &[]).unwrap();
    let relay = RelayInfo {
        host_port: process.addr.to_string(),
        pin: process.pin,
    };
    let dir = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let create = |name: &'static str, identity: IdentitySetup, keys: DeviceKeys| {
        let d = dir(name);
        let relay = relay.clone();
        async move {
            Client::create(
                &d,
                &cred(name),
                KdfParams::new(8, 1, 1).unwrap(),
                relay,
                keys,
                identity,
                name,
            )
            .await
            .unwrap()
        }
    };
    let new_org = |label: &str| IdentitySetup::NewOrganisation {
        device_label: label.into(),
    };

    // Organisation B: intake admin and an enrolled intake caseworker; they know each other.
    let b1 = create(
        "b1",
        new_org("intake"),
        DeviceKeys::generate(&mut rand::rng()),
    )
    .await;
    let b2_keys = DeviceKeys::generate(&mut rand::rng());
    let (certificate, device_list) = b1
        .enrol_device(b2_keys.public_keys(), Role::Caseworker, "Caseworker".into())
        .await
        .unwrap();
    let enrolled = IdentitySetup::Enrolled {
        certificate,
        device_list,
    };
    let b2 = create("b2", enrolled, b2_keys).await;
    let (_, link) = b1.create_invitation(3600).await.unwrap();
    b2.accept_invitation(&link).await.unwrap();
    wait_contact_card(&b1).await;

    // The referrer's organisation A; the organisations trust each other; A connects to both.
    let alice = create(
        "alice",
        new_org("referrer"),
        DeviceKeys::generate(&mut rand::rng()),
    )
    .await;
    let (a_root, b_root) = (root(&alice).await, root(&b1).await);
    alice.trust_organisation(b_root).await.unwrap();
    b1.trust_organisation(a_root).await.unwrap();
    b2.trust_organisation(a_root).await.unwrap();
    for b in [&b1, &b2] {
        let (_, link) = b.create_invitation(3600).await.unwrap();
        alice.accept_invitation(&link).await.unwrap();
        wait_contact_card(b).await;
    }

    // Consent, then the offer to both devices.
    let now = unix_now();
    let receipt = alice
        .record_consent(receipt_draft(&b_root, now))
        .await
        .unwrap();
    let (draft, sections) = offer(&a_root, &b_root, now);
    let id = alice
        .send_referral(draft, sections, OfferConsent::Receipt(receipt.id()))
        .await
        .unwrap();
    for b in [&b1, &b2] {
        wait_state(b, id, |s| *s == ReferralState::Sent).await;
    }

    // B1 acknowledges and accepts; B2 follows the timeline; A sees ACCEPTED.
    b1.referral_act(id, Action::Acknowledge).await.unwrap();
    b1.referral_act(id, Action::Accept).await.unwrap();
    wait_state(&alice, id, |s| *s == ReferralState::Accepted).await;
    wait_state(&b2, id, |s| *s == ReferralState::Accepted).await;

    // The body goes to both intake devices.
    assert_eq!(alice.release_referral_body(id).await.unwrap(), 2);
    for b in [&b1, &b2] {
        loop {
            b.sync().await.unwrap();
            let section = b
                .with_engine(|e, _, _| e.received_section(&id, wire::Section::Identity))
                .await
                .unwrap()
                .unwrap();
            if section.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    b1.referral_act(
        id,
        Action::Complete {
            outcome: Outcome::Successful,
            note: String::new(),
        },
    )
    .await
    .unwrap();
    let completed = |s: &ReferralState| *s == ReferralState::Completed(Outcome::Successful);
    wait_state(&alice, id, completed).await;
    wait_state(&b2, id, completed).await;

    // Consent withdrawn: both devices erase and confirm; A sees both confirmations.
    alice
        .change_consent(receipt.id(), wire::ConsentState::Withdrawn)
        .await
        .unwrap();
    for b in [&b1, &b2] {
        wait_state(b, id, |s| matches!(s, ReferralState::PurgeConfirmed(_))).await;
    }
    loop {
        alice.sync().await.unwrap();
        let report = alice.purge_status(receipt.id()).await.unwrap();
        if report[0].confirmed.len() == 2 {
            assert!(report[0].pending.is_empty());
            assert!(matches!(report[0].status, PurgeStatus::Confirmed { .. }));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kantara = alice.kantara_export(receipt.id()).await.unwrap();
    assert_eq!(kantara["version"], "KI-CR-v1.1.0");

    for c in [alice, b1, b2] {
        c.shutdown().await.unwrap();
    }
    drop(process);
}
