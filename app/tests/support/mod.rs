//! Profiles built through the client core for the browser test and the referral-list
//! benchmark: two organisations on a real relay that trust each other, the referrer connected
//! to the receiver, one consent receipt, and offers sent at a chosen time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unreachable_pub,
    missing_docs
)]

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use handover_core::client::Client;
use handover_core::consent::ReceiptId;
use handover_core::engine::{IdentitySetup, OfferConsent, RelayInfo};
use handover_core::identity::DeviceKeys;
use handover_core::referral::{OfferDraft, ReferralId};
use handover_core::store::{Credential, KdfParams, Passphrase};
use handover_proto::e2e::v1 as wire;

pub const PASSPHRASE: &str = "correct horse battery staple";

pub const DAY: u64 = 86_400;
pub const PURPOSE: &str = "Safe accommodation after leaving home";

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub async fn root(client: &Client) -> [u8; 32] {
    client
        .with_engine(|e, _, _| e.org_root().unwrap())
        .await
        .unwrap()
}

pub fn receipt_draft(recipient: &[u8; 32], now: u64) -> wire::ConsentReceipt {
    wire::ConsentReceipt {
        principal_ref: "P-BENCH".into(),
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
            org_name: "Riverside".into(),
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

pub fn offer(from: &[u8; 32], to: &[u8; 32], n: usize, now: u64) -> OfferDraft {
    let priority = [
        wire::Priority::Normal,
        wire::Priority::Urgent,
        wire::Priority::Emergency,
    ][n % 3];
    OfferDraft {
        kind: wire::ReferralKind::Referral,
        sender_case_ref: format!("HWC-{n:05}"),
        from: wire::Party {
            org_root_key: from.to_vec(),
            org_name: "Harbour".into(),
            worker_name: "Duty caseworker".into(),
            role: wire::Role::Admin as i32,
            contact: "intake@example.org".into(),
        },
        to: wire::Party {
            org_root_key: to.to_vec(),
            org_name: "Riverside".into(),
            ..Default::default()
        },
        services_requested: vec![wire::Service::Shelter],
        priority,
        purpose: PURPOSE.into(),
        languages: vec!["en".into()],
        age_band: wire::AgeBand::Adult,
        retain_until: now + 60 * DAY,
        retention_rule: "Erase after 60 days".into(),
        ..Default::default()
    }
}

pub fn sections() -> Vec<wire::BodySection> {
    use wire::body_section::Content;
    vec![
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
    ]
}

/// A new organisation (this device its admin) in `dir/name`, built through the client core;
/// returns its root key.
pub async fn organisation(dir: &Path, name: &str, relay: &RelayInfo) -> [u8; 32] {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let client = Client::create(
        &d,
        &Credential::from(Passphrase::from(PASSPHRASE)),
        KdfParams::new(1024, 1, 1).unwrap(),
        relay.clone(),
        DeviceKeys::generate(&mut rand::rng()),
        IdentitySetup::NewOrganisation {
            device_label: format!("{name} desk"),
        },
        &format!("{name} desk"),
    )
    .await
    .unwrap();
    let root = root(&client).await;
    client.shutdown().await.unwrap();
    root
}

/// Two organisations, Harbour (the referrer, in `dir/harbour`) and Riverside (in
/// `dir/riverside`), each a new organisation with one admin device, trusting each other, with
/// Harbour holding a session with Riverside's device and a consent receipt for Riverside.
pub struct Pair {
    pub harbour: Client,
    pub riverside: Client,
    pub a_root: [u8; 32],
    pub b_root: [u8; 32],
    pub receipt: ReceiptId,
}

impl Pair {
    pub async fn create(dir: &Path, relay: RelayInfo) -> Self {
        let create = |name: &'static str| {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).unwrap();
            let relay = relay.clone();
            async move {
                Client::create(
                    &d,
                    &Credential::from(Passphrase::from(PASSPHRASE)),
                    KdfParams::new(1024, 1, 1).unwrap(),
                    relay,
                    DeviceKeys::generate(&mut rand::rng()),
                    IdentitySetup::NewOrganisation {
                        device_label: name.into(),
                    },
                    name,
                )
                .await
                .unwrap()
            }
        };
        let harbour = create("harbour").await;
        let riverside = create("riverside").await;
        let (a_root, b_root) = (root(&harbour).await, root(&riverside).await);
        harbour.trust_organisation(b_root).await.unwrap();
        riverside.trust_organisation(a_root).await.unwrap();
        let (_, link) = riverside.create_invitation(3600).await.unwrap();
        harbour.accept_invitation(&link).await.unwrap();
        let receipt = harbour
            .record_consent(receipt_draft(&b_root, unix_now()))
            .await
            .unwrap()
            .id();
        Self {
            harbour,
            riverside,
            a_root,
            b_root,
            receipt,
        }
    }

    /// Harbour's offer number `n` to Riverside, stored and queued in the outbox (not flushed),
    /// as if sent at `now`, living `ttl` seconds when given.
    pub async fn offer(&self, n: usize, now: u64, ttl: Option<u64>) -> ReferralId {
        let mut draft = offer(&self.a_root, &self.b_root, n, now);
        draft.offer_ttl_secs = ttl;
        let consent = OfferConsent::Receipt(self.receipt);
        let body = sections();
        self.harbour
            .with_engine(move |e, rng, _| e.send_referral_offer(&draft, &body, &consent, now, rng))
            .await
            .unwrap()
            .unwrap()
            .0
    }

    pub async fn shutdown(self) {
        self.harbour.shutdown().await.unwrap();
        self.riverside.shutdown().await.unwrap();
    }
}
