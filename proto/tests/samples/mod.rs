//! Valid sample messages for every top-level decoder, shared by the wire tests.

#![allow(dead_code, unreachable_pub)]

use handover_proto::e2e::v1 as e2e;
use handover_proto::relay::v1 as relay;
use prost::Message;

pub fn id(b: u8) -> Vec<u8> {
    vec![b; 16]
}
pub fn key(b: u8) -> Vec<u8> {
    vec![b; 32]
}
pub fn sig(b: u8) -> Vec<u8> {
    vec![b; 64]
}

pub fn request(kind: relay::request::Kind) -> relay::Request {
    relay::Request {
        protocol_version: 1,
        kind: Some(kind),
    }
}

pub fn envelope() -> relay::Envelope {
    relay::Envelope {
        envelope_id: id(1),
        expires_at: 1_900_000_000,
        ciphertext: vec![7; 1024],
    }
}

/// One valid request of every kind.
pub fn requests() -> Vec<relay::Request> {
    use relay::request::Kind;
    vec![
        request(Kind::CreateMailbox(relay::CreateMailbox {
            auth_key: key(1),
            capability_hashes: vec![key(2), key(3)],
            creation_token: Vec::new(),
        })),
        request(Kind::DeleteMailbox(relay::DeleteMailbox { recv_id: id(1) })),
        request(Kind::Authenticate(relay::Authenticate {
            recv_id: id(1),
            signature: sig(2),
        })),
        request(Kind::SetCapabilities(relay::SetCapabilities {
            recv_id: id(1),
            capability_hashes: vec![key(4)],
        })),
        request(Kind::Send(relay::Send {
            send_id: id(2),
            capability: key(5),
            envelope: Some(envelope()),
        })),
        request(Kind::Fetch(relay::Fetch {
            recv_id: id(1),
            after_seq: 10,
            limit: 50,
        })),
        request(Kind::Ack(relay::Ack {
            recv_id: id(1),
            envelope_ids: vec![id(3), id(4)],
        })),
        request(Kind::Subscribe(relay::Subscribe {
            recv_ids: vec![id(1)],
        })),
        request(Kind::EnvelopeStatus(relay::EnvelopeStatus {
            send_id: id(2),
            capability: key(5),
            envelope_ids: vec![id(3)],
        })),
        request(Kind::PrekeyPublish(relay::PrekeyPublish {
            recv_id: id(1),
            bundle: vec![1; 1500],
            one_time_prekeys: vec![vec![2; 40]],
            one_time_kem_prekeys: vec![vec![3; 1260]],
        })),
        request(Kind::PrekeyTake(relay::PrekeyTake {
            send_id: id(2),
            capability: key(5),
        })),
        request(Kind::MemberAuth(relay::MemberAuth {
            device_certificate: vec![4; 200],
            signature: sig(6),
        })),
        request(Kind::DirectoryPublish(relay::DirectoryPublish {
            profile: vec![5; 900],
        })),
        request(Kind::DirectoryQuery(relay::DirectoryQuery {
            services: vec!["shelter".into()],
            languages: vec!["ar".into(), "uk".into()],
            regions: vec!["BE-BRU".into()],
            name_contains: "refuge".into(),
            limit: 20,
        })),
        request(Kind::BlobPut(relay::BlobPut {
            size: 1 << 20,
            expires_at: 1_900_000_000,
        })),
        request(Kind::BlobGet(relay::BlobGet {
            blob_id: id(9),
            offset: 0,
        })),
        request(Kind::Ping(relay::Ping {})),
    ]
}

fn response(kind: relay::response::Kind) -> relay::Response {
    relay::Response { kind: Some(kind) }
}

/// One valid response of every kind.
pub fn responses() -> Vec<relay::Response> {
    use relay::response::Kind;
    vec![
        response(Kind::Error(relay::Error {
            code: relay::ErrorCode::QuotaExceeded as i32,
            message: "mailbox holds too many envelopes".into(),
            retry_after_secs: 0,
        })),
        response(Kind::Ok(relay::Ok {})),
        response(Kind::MailboxCreated(relay::MailboxCreated {
            recv_id: id(1),
            send_id: id(2),
        })),
        response(Kind::SendAccepted(relay::SendAccepted {
            accepted_at: 1_800_000_000,
        })),
        response(Kind::FetchResult(relay::FetchResult {
            envelopes: vec![relay::QueuedEnvelope {
                seq: 1,
                envelope: Some(envelope()),
            }],
            more: true,
        })),
        response(Kind::Subscribed(relay::Subscribed {})),
        response(Kind::EnvelopeStatusResult(relay::EnvelopeStatusResult {
            states: vec![
                relay::DeliveryState::Pending as i32,
                relay::DeliveryState::ExpiredUndelivered as i32,
            ],
        })),
        response(Kind::PrekeyBundle(relay::PrekeyBundleResult {
            bundle: vec![1; 1500],
            one_time_prekey: vec![2; 40],
            one_time_kem_prekey: vec![],
            one_time_remaining: 99,
        })),
        response(Kind::DirectoryResult(relay::DirectoryResult {
            profiles: vec![vec![3; 700]],
        })),
        response(Kind::BlobStored(relay::BlobStored { blob_id: id(9) })),
        response(Kind::BlobHeader(relay::BlobHeader {
            size: 5,
            expires_at: 1_900_000_000,
        })),
        response(Kind::Pong(relay::Pong { now: 1_800_000_000 })),
    ]
}

pub fn events() -> Vec<relay::Event> {
    vec![
        relay::Event {
            kind: Some(relay::event::Kind::NewEnvelopes(relay::NewEnvelopes {
                recv_id: id(1),
            })),
        },
        relay::Event {
            kind: Some(relay::event::Kind::GoingAway(relay::GoingAway {})),
        },
    ]
}

pub fn signed_cert() -> e2e::SignedDeviceCertificate {
    e2e::SignedDeviceCertificate {
        certificate: vec![1; 150],
        signature: sig(1),
    }
}

pub fn device_certificate() -> e2e::DeviceCertificate {
    e2e::DeviceCertificate {
        org_root_key: key(1),
        device_id: id(2),
        signing_key: key(3),
        identity_key: key(4),
        role: e2e::Role::Caseworker as i32,
        not_before: 1_700_000_000,
        not_after: 1_800_000_000,
        label: "Intake laptop 2".into(),
    }
}

pub fn device_list() -> e2e::DeviceList {
    e2e::DeviceList {
        org_root_key: key(1),
        version: 3,
        issued_at: 1_750_000_000,
        devices: vec![signed_cert(), signed_cert()],
        revoked_device_ids: vec![id(7)],
    }
}

pub fn signed_device_list() -> e2e::SignedDeviceList {
    e2e::SignedDeviceList {
        list: vec![2; 400],
        signature: sig(2),
    }
}

pub fn address() -> e2e::DeviceAddress {
    e2e::DeviceAddress {
        device_id: id(2),
        relay: "relay.example.org:4433".into(),
        relay_pin: key(9),
        send_id: id(3),
        capability: key(4),
        sealing_key: key(5),
    }
}

pub fn org_profile() -> e2e::OrgProfile {
    e2e::OrgProfile {
        org_root_key: key(1),
        name: "Safe Harbour Shelter".into(),
        services: vec!["shelter".into(), "psychosocial".into()],
        languages: vec!["en".into(), "ar".into()],
        regions: vec!["NL-NH".into()],
        description: "Women's shelter with 24 h intake.".into(),
        device_list: Some(signed_device_list()),
        intake: vec![address()],
        issued_at: 1_750_000_000,
    }
}

pub fn signed_org_profile() -> e2e::SignedOrgProfile {
    e2e::SignedOrgProfile {
        profile: vec![3; 800],
        signer: Some(signed_cert()),
        signature: sig(3),
    }
}

pub fn invitation() -> e2e::Invitation {
    e2e::Invitation {
        address: Some(address()),
        certificate: Some(signed_cert()),
        device_list: None,
        display_name: "Amal (community ambassador)".into(),
        expires_at: 1_900_000_000,
    }
}

pub fn published_prekeys() -> e2e::PublishedPrekeys {
    e2e::PublishedPrekeys {
        certificate: Some(signed_cert()),
        signed_prekey: Some(e2e::SignedPrekey {
            id: 1,
            public_key: key(5),
            signature: sig(5),
        }),
        last_resort_kem_prekey: Some(signed_kem_prekey()),
    }
}

pub fn signed_kem_prekey() -> e2e::SignedKemPrekey {
    e2e::SignedKemPrekey {
        id: 2,
        public_key: vec![6; 1184],
        signature: sig(6),
    }
}

pub fn one_time_prekey() -> e2e::OneTimePrekey {
    e2e::OneTimePrekey {
        id: 77,
        public_key: key(7),
    }
}

pub fn ratchet_message() -> e2e::RatchetMessage {
    e2e::RatchetMessage {
        ratchet_key: key(8),
        previous_chain_length: 3,
        message_number: 4,
        ciphertext: vec![9; 1040],
    }
}

pub fn sealed_prekey() -> e2e::Sealed {
    e2e::Sealed {
        sender: Some(signed_cert()),
        message: Some(e2e::sealed::Message::Prekey(e2e::PrekeyMessage {
            identity_key: key(1),
            ephemeral_key: key(2),
            signed_prekey_id: 1,
            kem_prekey_id: 2,
            kem_ciphertext: vec![3; 1088],
            one_time_prekey_id: Some(77),
            message: Some(ratchet_message()),
        })),
    }
}

pub fn sealed_ratchet() -> e2e::Sealed {
    e2e::Sealed {
        sender: Some(signed_cert()),
        message: Some(e2e::sealed::Message::Ratchet(ratchet_message())),
    }
}

pub fn party(org: u8) -> e2e::Party {
    e2e::Party {
        org_root_key: key(org),
        org_name: "Victim Support North".into(),
        worker_name: "Sam".into(),
        role: e2e::Role::Caseworker as i32,
        contact: "+31 20 000 0000".into(),
    }
}

pub fn referral_offer() -> e2e::ReferralOffer {
    e2e::ReferralOffer {
        referral_id: id(4),
        kind: e2e::ReferralKind::Referral as i32,
        sender_case_ref: "VSN-2026-0042".into(),
        from: Some(party(1)),
        to: Some(party(2)),
        services_requested: vec![e2e::Service::Shelter as i32, e2e::Service::Legal as i32],
        other_services: vec![],
        priority: e2e::Priority::Urgent as i32,
        respond_by: 1_800_259_200,
        purpose: "Safe accommodation and legal advice after leaving a violent partner.".into(),
        sections_included: vec![e2e::Section::Identity as i32, e2e::Section::Risk as i32],
        consent: Some(e2e::ConsentRef {
            basis: Some(e2e::consent_ref::Basis::Receipt(e2e::ReceiptRef {
                receipt_id: id(5),
                receipt_sha256: key(6),
            })),
        }),
        languages: vec!["ar".into()],
        interpreter_needed: true,
        preferred_worker_gender: "female".into(),
        age_band: e2e::AgeBand::Adult as i32,
        is_minor: false,
        onward_sharing_allowed: false,
        retain_until: 1_830_000_000,
        retention_rule: "erase 12 months after closure".into(),
        offer_expires_at: 1_800_259_200,
        created_at: 1_800_000_000,
        section_commitments: vec![e2e::SectionCommitment {
            section: e2e::Section::Identity as i32,
            sealed_sha256: key(7),
        }],
    }
}

pub fn signed_consent_receipt() -> e2e::SignedConsentReceipt {
    e2e::SignedConsentReceipt {
        receipt: vec![4; 600],
        signer: Some(signed_cert()),
        signature: sig(4),
    }
}

pub fn referral_body() -> e2e::ReferralBody {
    e2e::ReferralBody {
        referral_id: id(4),
        sections: vec![e2e::SealedSection {
            section: e2e::Section::Identity as i32,
            ciphertext: vec![5; 120],
        }],
        keys: vec![e2e::SectionKey {
            section: e2e::Section::Identity as i32,
            key: key(5),
        }],
        consent_receipt: Some(signed_consent_receipt()),
    }
}

pub fn referral_control() -> e2e::ReferralControl {
    e2e::ReferralControl {
        referral_id: id(4),
        sequence: 3,
        prev_hash: key(9),
        at: 1_800_000_100,
        action: Some(e2e::referral_control::Action::Decline(e2e::Decline {
            reason: e2e::DeclineReason::NoCapacity as i32,
            note: "Full until next month.".into(),
        })),
    }
}

pub fn signed_control() -> e2e::SignedControl {
    e2e::SignedControl {
        control: vec![6; 90],
        signer: Some(signed_cert()),
        signature: sig(6),
    }
}

pub fn consent_receipt() -> e2e::ConsentReceipt {
    e2e::ConsentReceipt {
        schema_version: "handover-consent/1".into(),
        receipt_id: id(5),
        supersedes: vec![],
        principal_ref: "P-7f3a".into(),
        expressed_by: e2e::ExpressedBy::Survivor as i32,
        expressed_by_other: String::new(),
        collection_method: e2e::CollectionMethod::ViaInterpreter as i32,
        interpreter_language: "ar".into(),
        consent_type: "explicit".into(),
        event_time: 1_800_000_000,
        state: e2e::ConsentState::Given as i32,
        valid_until: 1_830_000_000,
        jurisdictions: vec!["NL".into()],
        notice_ref: "https://vsn.example/privacy".into(),
        notice_language: "ar".into(),
        controllers: vec![e2e::Controller {
            name: "Victim Support North".into(),
            contact: "Data protection officer".into(),
            address: "Main St 1".into(),
            email: "dpo@vsn.example".into(),
            phone: "+31 20 000 0001".into(),
        }],
        legal_basis: Some(e2e::LegalBasis {
            basis: "GDPR Art. 6(1)(a), Art. 9(2)(a)".into(),
            justification: String::new(),
            is_override: false,
        }),
        purposes: vec![e2e::Purpose {
            purpose: "Referral for shelter".into(),
            category: "service provision".into(),
            primary: true,
        }],
        recipients: vec![e2e::ConsentRecipient {
            org_root_key: key(2),
            org_name: "Safe Harbour Shelter".into(),
            services: vec![e2e::Service::Shelter as i32],
        }],
        data_categories: vec![e2e::Section::Identity as i32, e2e::Section::Risk as i32],
        sensitive: true,
        special_categories: vec!["health".into()],
        withheld: vec![e2e::Withheld {
            section: e2e::Section::Location as i32,
            from_whom: "all".into(),
            reason: "perpetrator works there".into(),
        }],
        onward_sharing: false,
        retention_secs: 31_536_000,
        storage_locations: vec!["EU (NL)".into()],
        withdrawal_method: "Tell your caseworker or use the app.".into(),
        witness: Some(e2e::Witness {
            caseworker_id: "cw-12".into(),
            org_name: "Victim Support North".into(),
        }),
        principal_ack: Some(e2e::PrincipalAck {
            method: e2e::AckMethod::VerbalWitnessed as i32,
            detail: String::new(),
        }),
        principal_is_minor: true,
        child_assent: e2e::ChildAssent::Given as i32,
        minor_note: "Unaccompanied; guardian appointment pending".to_owned(),
    }
}

pub fn body_section() -> e2e::BodySection {
    e2e::BodySection {
        content: Some(e2e::body_section::Content::Identity(e2e::IdentitySection {
            name_or_alias: "L.".into(),
            preferred_name: "Lina".into(),
            preferred_term: "survivor".into(),
            pronouns: "she/her".into(),
            age_or_birth_date: "34".into(),
            gender: "woman".into(),
            disability: String::new(),
            nationality: String::new(),
            id_numbers: vec![],
        })),
    }
}

pub fn content() -> e2e::Content {
    e2e::Content {
        message_id: id(6),
        sent_at: 1_800_000_000,
        expires_at: 0,
        body: Some(e2e::content::Body::Chat(e2e::ChatMessage {
            text: "Hello, I can meet on Tuesday.".into(),
            attachments: vec![e2e::Attachment {
                blob: Some(e2e::BlobRef {
                    blob_id: id(9),
                    relay: String::new(),
                    key: key(9),
                    plaintext_sha256: key(8),
                    size: 12_345,
                }),
                media_type: "application/pdf".into(),
                file_name: "letter.pdf".into(),
            }],
        })),
    }
}

pub fn signed_referral_offer() -> e2e::SignedReferralOffer {
    e2e::SignedReferralOffer {
        offer: referral_offer().encode_to_vec(),
        signer: Some(signed_cert()),
        signature: sig(7),
    }
}
