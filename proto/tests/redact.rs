//! The wire types that carry a key or a send capability never print it through `Debug`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use handover_proto::e2e::v1 as e2e;
use handover_proto::relay::v1 as relay;

/// The secret byte: 0xEE (238) appears in no other field of the messages below.
const SECRET: u8 = 0xEE;

fn secret() -> Vec<u8> {
    vec![SECRET; 32]
}

fn other(b: u8) -> Vec<u8> {
    vec![b; 16]
}

/// Formats `value` with `{:?}`, `{:#?}` and `{:x?}` and asserts that no rendering shows the
/// secret bytes, and that each names the redacted field.
fn assert_redacted<T: std::fmt::Debug>(value: &T, field: &str) {
    for text in [
        format!("{value:?}"),
        format!("{value:#?}"),
        format!("{value:x?}"),
        format!("{value:#x?}"),
    ] {
        assert!(!text.contains("238"), "secret printed in decimal: {text}");
        assert!(
            !text.to_ascii_lowercase().contains("ee,")
                && !text.to_ascii_lowercase().contains("ee]"),
            "secret printed in hex: {text}"
        );
        assert!(
            text.contains(&format!("{field}: <redacted 32 bytes>")),
            "{field} not shown as redacted: {text}"
        );
    }
}

fn address() -> e2e::DeviceAddress {
    e2e::DeviceAddress {
        device_id: other(1),
        relay: "relay.example.org:4433".into(),
        relay_pin: other(2),
        send_id: other(3),
        capability: secret(),
        sealing_key: other(4),
    }
}

fn blob() -> e2e::BlobRef {
    e2e::BlobRef {
        blob_id: other(5),
        relay: String::new(),
        key: secret(),
        plaintext_sha256: other(6),
        size: 12,
    }
}

fn content(body: e2e::content::Body) -> e2e::Content {
    e2e::Content {
        message_id: other(7),
        sent_at: 1_750_000_000,
        expires_at: 0,
        body: Some(body),
    }
}

fn request(kind: relay::request::Kind) -> relay::Request {
    relay::Request {
        protocol_version: 1,
        kind: Some(kind),
    }
}

#[test]
fn e2e_secrets_are_redacted() {
    use e2e::content::Body;
    assert_redacted(&address(), "capability");
    assert_redacted(
        &e2e::Invitation {
            address: Some(address()),
            certificate: None,
            device_list: None,
            display_name: "Amal".into(),
            expires_at: 1_900_000_000,
        },
        "capability",
    );
    assert_redacted(
        &content(Body::ContactCard(e2e::ContactCard {
            address: Some(address()),
            certificate: None,
            device_list: None,
            display_name: "Amal".into(),
        })),
        "capability",
    );
    assert_redacted(&blob(), "key");
    assert_redacted(
        &content(Body::FanoutKey(e2e::FanoutKey {
            packet: Some(blob()),
        })),
        "key",
    );
    assert_redacted(
        &content(Body::Chat(e2e::ChatMessage {
            text: "hello".into(),
            attachments: vec![e2e::Attachment {
                blob: Some(blob()),
                media_type: "application/pdf".into(),
                file_name: "letter.pdf".into(),
            }],
        })),
        "key",
    );
    let section_key = e2e::SectionKey {
        section: e2e::Section::Identity as i32,
        key: secret(),
    };
    assert_redacted(&section_key, "key");
    assert_redacted(
        &content(Body::ReferralBody(e2e::ReferralBody {
            referral_id: other(8),
            sections: Vec::new(),
            keys: vec![section_key],
            consent_receipt: None,
        })),
        "key",
    );
}

#[test]
fn relay_capabilities_are_redacted() {
    use relay::request::Kind;
    assert_redacted(
        &request(Kind::Send(relay::Send {
            send_id: other(1),
            capability: secret(),
            envelope: Some(relay::Envelope {
                envelope_id: other(2),
                expires_at: 1_900_000_000,
                ciphertext: vec![3; 64],
            }),
        })),
        "capability",
    );
    assert_redacted(
        &request(Kind::EnvelopeStatus(relay::EnvelopeStatus {
            send_id: other(1),
            capability: secret(),
            envelope_ids: vec![other(2)],
        })),
        "capability",
    );
    assert_redacted(
        &request(Kind::PrekeyTake(relay::PrekeyTake {
            send_id: other(1),
            capability: secret(),
        })),
        "capability",
    );
    assert_redacted(
        &request(Kind::CreateMailbox(relay::CreateMailbox {
            auth_key: other(1),
            capability_hashes: vec![other(2)],
            creation_token: secret(),
        })),
        "creation_token",
    );
}

#[test]
fn public_fields_are_still_shown() {
    let text = format!("{:?}", address());
    assert!(text.contains("relay.example.org:4433"), "{text}");
    assert!(text.contains("send_id: [3, 3,"), "{text}");
}
