//! Shared fixtures for the referral and consent tests: organisations, devices, receipts,
//! offers and a two-party driver.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unreachable_pub,
    missing_docs
)]

use handover_core::consent::{ConsentEvent, DisclosureLedger, ReceiptRegistry, SignedReceipt};
use handover_core::identity::{DeviceCertificate, DeviceKeys, OrgRootKey, OrgTrust, Role};
use handover_core::referral::{
    Action, Actor, ConsentInput, OfferDraft, ReceiverReferral, SenderReferral,
};
use handover_proto::e2e::v1 as wire;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// 2026-11-21T09:00:00Z.
pub const T0: u64 = 1_795_251_600;
pub const DAY: u64 = 86_400;
pub const PURPOSE: &str = "Safe accommodation and psychosocial support after leaving home";

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub struct Org {
    pub name: String,
    pub root: OrgRootKey,
    pub trust: OrgTrust,
}

impl Org {
    pub fn new(name: &str, rng: &mut StdRng) -> Self {
        let root = OrgRootKey::generate(rng);
        let trust = OrgTrust::new(root.public_key());
        Self {
            name: name.to_owned(),
            root,
            trust,
        }
    }

    pub fn key(&self) -> Vec<u8> {
        self.root.public_key().to_bytes().to_vec()
    }

    pub fn device(&self, role: Role, rng: &mut StdRng) -> Device {
        let keys = DeviceKeys::generate(rng);
        let signed = self
            .root
            .issue_certificate(&keys.public_keys(), role, T0 - DAY, T0 + 3650 * DAY, "test")
            .unwrap();
        let cert = DeviceCertificate::verify(&signed, &self.root.public_key(), T0).unwrap();
        Device { keys, cert }
    }

    pub fn party(&self, role: Role) -> wire::Party {
        wire::Party {
            org_root_key: self.key(),
            org_name: self.name.clone(),
            worker_name: "Duty caseworker".to_owned(),
            role: match role {
                Role::Admin => wire::Role::Admin as i32,
                Role::Caseworker => wire::Role::Caseworker as i32,
                _ => wire::Role::Ambassador as i32,
            },
            contact: "intake@example.org".to_owned(),
        }
    }
}

pub struct Device {
    pub keys: DeviceKeys,
    pub cert: DeviceCertificate,
}

impl Device {
    pub fn actor(&self) -> Actor<'_> {
        Actor::new(&self.keys, self.cert.clone()).unwrap()
    }
}

pub const SECTIONS: [wire::Section; 4] = [
    wire::Section::Identity,
    wire::Section::SafeContact,
    wire::Section::Reason,
    wire::Section::Risk,
];

pub fn receipt_draft(
    sender: &Org,
    recipients: &[&Org],
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
            name: sender.name.clone(),
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
        recipients: recipients
            .iter()
            .map(|o| wire::ConsentRecipient {
                org_root_key: o.key(),
                org_name: o.name.clone(),
                services: vec![
                    wire::Service::Shelter as i32,
                    wire::Service::Psychosocial as i32,
                ],
            })
            .collect(),
        data_categories: sections.iter().map(|s| *s as i32).collect(),
        sensitive: true,
        special_categories: vec!["health".to_owned(), "sex life".to_owned()],
        withheld: vec![],
        onward_sharing: false,
        retention_secs: 90 * DAY,
        storage_locations: vec!["EU (Belgium)".to_owned()],
        withdrawal_method:
            "Call or message your caseworker at Harbour Women's Centre, or tell any staff member."
                .to_owned(),
        witness: Some(wire::Witness {
            caseworker_id: "CW-12".to_owned(),
            org_name: sender.name.clone(),
        }),
        principal_ack: Some(wire::PrincipalAck {
            method: wire::AckMethod::VerbalWitnessed as i32,
            detail: String::new(),
        }),
        ..Default::default()
    }
}

/// A consent given now, covering `recipients` and `sections`.
pub fn give_consent(
    sender: &Org,
    caseworker: &Device,
    recipients: &[&Org],
    sections: &[wire::Section],
    now: u64,
    rng: &mut StdRng,
) -> handover_core::consent::Consent {
    let draft = receipt_draft(sender, recipients, sections, now);
    handover_core::consent::Consent::Requested
        .apply(
            ConsentEvent::Give(Box::new(draft)),
            &caseworker.actor(),
            now,
            rng,
        )
        .unwrap()
}

pub fn offer_draft(sender: &Org, receiver: &Org) -> OfferDraft {
    OfferDraft {
        kind: wire::ReferralKind::Referral,
        sender_case_ref: "HWC-2026-0193".to_owned(),
        from: sender.party(Role::Caseworker),
        to: wire::Party {
            org_root_key: receiver.key(),
            org_name: receiver.name.clone(),
            ..Default::default()
        },
        services_requested: vec![wire::Service::Shelter, wire::Service::Psychosocial],
        other_services: vec![],
        priority: wire::Priority::Urgent,
        purpose: PURPOSE.to_owned(),
        languages: vec!["ar".to_owned(), "fr".to_owned()],
        interpreter_needed: true,
        preferred_worker_gender: "female".to_owned(),
        age_band: wire::AgeBand::Adult,
        is_minor: false,
        onward_sharing_allowed: false,
        retain_until: T0 + 60 * DAY,
        retention_rule: "Erase 60 days after the offer unless the person asks otherwise".to_owned(),
        offer_ttl_secs: None,
    }
}

pub fn body_sections() -> Vec<wire::BodySection> {
    use wire::body_section::Content;
    vec![
        wire::BodySection {
            content: Some(Content::Identity(wire::IdentitySection {
                name_or_alias: "Amina Haddad".to_owned(),
                preferred_name: "Amina".to_owned(),
                preferred_term: "survivor".to_owned(),
                pronouns: "she/her".to_owned(),
                ..Default::default()
            })),
        },
        wire::BodySection {
            content: Some(Content::SafeContact(wire::SafeContactSection {
                safe_to_contact: true,
                channels: vec!["phone".to_owned()],
                safe_times: "weekdays 10-12".to_owned(),
                code_word: "bluebird".to_owned(),
                voicemail_ok: false,
                others_may_answer: false,
                details: "+32 470 12 34 56".to_owned(),
            })),
        },
        wire::BodySection {
            content: Some(Content::Reason(wire::ReasonSection {
                reason: "Left a violent partner two days ago; staying with a friend.".to_owned(),
            })),
        },
        wire::BodySection {
            content: Some(Content::Risk(wire::RiskSection {
                level: wire::RiskLevel::High as i32,
                immediate_concerns: "Partner is searching for her".to_owned(),
                safety_plan_exists: true,
                escape_plan_exists: false,
                perpetrator_knows_location: false,
            })),
        },
    ]
}

/// A sender organisation, one or more receivers, devices and a given consent.
pub struct World {
    pub sender: Org,
    pub receivers: Vec<Org>,
    pub caseworker: Device,
    pub admin: Device,
    pub sender_ambassador: Device,
    pub intake: Vec<Device>,
    pub receiver_ambassadors: Vec<Device>,
    pub consent: handover_core::consent::Consent,
    pub registry: ReceiptRegistry,
    pub ledger: DisclosureLedger,
    pub rng: StdRng,
}

impl World {
    pub fn new(receivers: usize) -> Self {
        let mut rng = rng(7);
        let sender = Org::new("Harbour Women's Centre", &mut rng);
        let receivers: Vec<Org> = (0..receivers)
            .map(|i| Org::new(&format!("Receiving Org {i}"), &mut rng))
            .collect();
        let caseworker = sender.device(Role::Caseworker, &mut rng);
        let admin = sender.device(Role::Admin, &mut rng);
        let sender_ambassador = sender.device(Role::Ambassador, &mut rng);
        let intake = receivers
            .iter()
            .map(|o| o.device(Role::Caseworker, &mut rng))
            .collect();
        let receiver_ambassadors = receivers
            .iter()
            .map(|o| o.device(Role::Ambassador, &mut rng))
            .collect();
        let refs: Vec<&Org> = receivers.iter().collect();
        let consent = give_consent(&sender, &caseworker, &refs, &SECTIONS, T0, &mut rng);
        let mut registry = ReceiptRegistry::new();
        registry.insert(consent.current().unwrap().clone()).unwrap();
        Self {
            sender,
            receivers,
            caseworker,
            admin,
            sender_ambassador,
            intake,
            receiver_ambassadors,
            consent,
            registry,
            ledger: DisclosureLedger::new(),
            rng,
        }
    }

    pub fn receipt(&self) -> &SignedReceipt {
        self.consent.current().unwrap()
    }

    /// Prepares and sends an offer to receiver `i`; the receiver receives it.
    pub fn send(&mut self, i: usize) -> (SenderReferral, ReceiverReferral) {
        let draft = offer_draft(&self.sender, &self.receivers[i]);
        let signed_receipt = self.receipt().signed().clone();
        let mut sender = SenderReferral::prepare(
            &draft,
            &body_sections(),
            ConsentInput::Receipt(&signed_receipt),
            &self.sender.trust,
            &self.registry,
            &self.caseworker.actor(),
            T0,
            &mut self.rng,
        )
        .unwrap();
        let (offer, receipt) = sender
            .mark_sent(&self.caseworker.actor(), &mut self.ledger)
            .unwrap();
        let receiver = ReceiverReferral::receive_offer(
            &offer,
            receipt.as_ref(),
            &self.sender.trust,
            &self.intake[i].cert,
            &ReceiptRegistry::new(),
            T0 + 60,
        )
        .unwrap();
        (sender, receiver)
    }

    /// Receiver `i` takes `action`; the sender applies the signed control.
    pub fn receiver_acts(
        &self,
        i: usize,
        sender: &mut SenderReferral,
        receiver: &mut ReceiverReferral,
        action: Action,
        now: u64,
    ) -> wire::SignedControl {
        let control = receiver.act(action, &self.intake[i].actor(), now).unwrap();
        sender
            .receive_control(&control, &self.sender.trust, &self.receivers[i].trust, now)
            .unwrap();
        control
    }

    /// Drives a referral to ACCEPTED and releases the body to receiver `i`'s intake device.
    pub fn accepted(&mut self, i: usize) -> (SenderReferral, ReceiverReferral) {
        let (mut s, mut r) = self.send(i);
        self.receiver_acts(i, &mut s, &mut r, Action::Delivered, T0 + 120);
        self.receiver_acts(i, &mut s, &mut r, Action::Acknowledge, T0 + 180);
        self.receiver_acts(i, &mut s, &mut r, Action::Accept, T0 + 240);
        let body = s
            .release_body(
                &self.intake[i].cert,
                &self.registry,
                &mut self.ledger,
                T0 + 300,
            )
            .unwrap();
        r.receive_body(
            &body,
            &self.intake[i].cert,
            &self.sender.trust,
            &ReceiptRegistry::new(),
            T0 + 300,
        )
        .unwrap();
        (s, r)
    }
}

/// Signs an offer with a device's key directly, bypassing the sender's checks (to test what a
/// receiving client does with an offer from a faulty or malicious sender).
pub fn forge_offer(device: &Device, offer: &wire::ReferralOffer) -> wire::SignedReferralOffer {
    use ed25519_dalek::Signer;
    use prost::Message;
    let secret = device.keys.to_secret_bytes();
    let seed: [u8; 32] = secret[17..49].try_into().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let bytes = offer.encode_to_vec();
    let mut input = b"handover/1 referral-offer".to_vec();
    input.extend_from_slice(&bytes);
    wire::SignedReferralOffer {
        offer: bytes,
        signer: Some(device.cert.signed().clone()),
        signature: key.sign(&input).to_bytes().to_vec(),
    }
}

/// Signs a consent receipt with a device's key directly, keeping every field as given (the
/// receipt id and `supersedes` included): what a malicious but trusted organisation can send.
pub fn forge_receipt(
    device: &Device,
    receipt: &wire::ConsentReceipt,
) -> wire::SignedConsentReceipt {
    use ed25519_dalek::Signer;
    use prost::Message;
    let secret = device.keys.to_secret_bytes();
    let seed: [u8; 32] = secret[17..49].try_into().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let bytes = receipt.encode_to_vec();
    let mut input = b"handover/1 consent-receipt".to_vec();
    input.extend_from_slice(&bytes);
    wire::SignedConsentReceipt {
        receipt: bytes,
        signer: Some(device.cert.signed().clone()),
        signature: key.sign(&input).to_bytes().to_vec(),
    }
}

/// Decodes the offer inside a signed offer.
pub fn open_offer(signed: &wire::SignedReferralOffer) -> wire::ReferralOffer {
    handover_proto::decode::referral_offer(&signed.offer).unwrap()
}

/// Signs a control message with a device's key directly (bypassing every client check).
pub fn forge_control(device: &Device, control: &wire::ReferralControl) -> wire::SignedControl {
    use ed25519_dalek::Signer;
    use prost::Message;
    let secret = device.keys.to_secret_bytes();
    let seed: [u8; 32] = secret[17..49].try_into().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let bytes = control.encode_to_vec();
    let mut input = b"handover/1 referral-control".to_vec();
    input.extend_from_slice(&bytes);
    wire::SignedControl {
        control: bytes,
        signer: Some(device.cert.signed().clone()),
        signature: key.sign(&input).to_bytes().to_vec(),
    }
}
