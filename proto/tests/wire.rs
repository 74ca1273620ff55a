//! Round-trip, malformed-input and property tests for every top-level decoder.

// Test helpers outside #[test] functions may unwrap and panic too (clippy.toml covers only the
// test functions themselves).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod samples;

use handover_proto::e2e::v1 as e2e;
use handover_proto::limits::{MAX_ENVELOPE_LEN, MAX_FRAME_LEN, MAX_SHORT_STRING_LEN};
use handover_proto::relay::v1 as relay;
use handover_proto::{DecodeError, decode, frame};
use proptest::prelude::*;
use prost::Message;
use samples::*;

/// Encodes, frames, unframes and decodes `msg` with `decoder`; the result must equal `msg`.
fn round_trip<M, F>(msg: &M, decoder: F)
where
    M: Message + PartialEq + std::fmt::Debug,
    F: Fn(&[u8]) -> Result<M, DecodeError>,
{
    let framed = frame::encode(msg).unwrap();
    let (payload, rest) = frame::split(&framed, MAX_FRAME_LEN).unwrap();
    assert!(rest.is_empty());
    let back = decoder(payload).unwrap_or_else(|e| panic!("{msg:?} did not decode: {e}"));
    assert_eq!(&back, msg);
    // Re-encoding the decoded message gives the same bytes.
    assert_eq!(back.encode_to_vec(), payload);
}

fn assert_invalid<M: std::fmt::Debug>(result: Result<M, DecodeError>, field: &str) {
    match result {
        Err(DecodeError::Invalid { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected invalid {field}, got {other:?}"),
    }
}

fn assert_malformed<M: std::fmt::Debug>(result: Result<M, DecodeError>) {
    assert!(
        matches!(result, Err(DecodeError::Malformed { .. })),
        "expected malformed, got {result:?}"
    );
}

/// A length-delimited field 1 claiming more bytes than follow: never valid protobuf.
const TRUNCATED_FIELD: &[u8] = &[0x0a, 0x7f, 0x01];

#[test]
fn every_request_kind_round_trips() {
    let requests = requests();
    assert_eq!(requests.len(), 17, "one sample per Request kind");
    for r in &requests {
        round_trip(r, decode::request);
    }
}

#[test]
fn every_response_kind_round_trips() {
    for r in &responses() {
        round_trip(r, decode::response);
    }
}

#[test]
fn events_and_chunks_round_trip() {
    for e in &events() {
        round_trip(e, decode::event);
    }
    let chunk = relay::BlobChunk {
        data: vec![1; 65_552],
        last: true,
    };
    round_trip(&chunk, decode::blob_chunk);
}

#[test]
fn e2e_messages_round_trip() {
    round_trip(&sealed_prekey(), decode::sealed);
    round_trip(&sealed_ratchet(), decode::sealed);
    round_trip(&content(), decode::content);
    round_trip(&invitation(), decode::invitation);
    round_trip(&signed_cert(), decode::signed_device_certificate);
    round_trip(&device_certificate(), decode::device_certificate);
    round_trip(&signed_device_list(), decode::signed_device_list);
    round_trip(&device_list(), decode::device_list);
    round_trip(&signed_org_profile(), decode::signed_org_profile);
    round_trip(&org_profile(), decode::org_profile);
    round_trip(&published_prekeys(), decode::published_prekeys);
    round_trip(&one_time_prekey(), decode::one_time_prekey);
    round_trip(&signed_kem_prekey(), decode::signed_kem_prekey);
    round_trip(&signed_control(), decode::signed_control);
    round_trip(&referral_control(), decode::referral_control);
    round_trip(&signed_consent_receipt(), decode::signed_consent_receipt);
    round_trip(&consent_receipt(), decode::consent_receipt);
    round_trip(&referral_offer(), decode::referral_offer);
    round_trip(&referral_body(), decode::referral_body);
    round_trip(&body_section(), decode::body_section);
    round_trip(&signed_referral_offer(), decode::signed_referral_offer);
}

#[test]
fn content_bodies_round_trip() {
    use e2e::content::Body;
    let bodies = vec![
        Body::ReferralOffer(referral_offer()),
        Body::ReferralBody(referral_body()),
        Body::ReferralControl(signed_control()),
        Body::ConsentReceipt(signed_consent_receipt()),
        Body::FanoutKey(e2e::FanoutKey {
            packet: Some(e2e::BlobRef {
                blob_id: id(1),
                relay: String::new(),
                key: key(2),
                plaintext_sha256: key(3),
                size: 4096,
            }),
        }),
        Body::DeviceList(signed_device_list()),
        Body::DeliveryReceipt(e2e::DeliveryReceipt {
            message_ids: vec![id(1), id(2)],
        }),
        Body::ContactCard(e2e::ContactCard {
            address: Some(address()),
            certificate: Some(signed_cert()),
            device_list: Some(signed_device_list()),
            display_name: "Intake".into(),
        }),
    ];
    for body in bodies {
        let mut c = content();
        c.body = Some(body);
        round_trip(&c, decode::content);
    }
}

#[test]
fn contact_card_requires_address_and_certificate() {
    use e2e::content::Body;
    for card in [
        e2e::ContactCard {
            address: None,
            certificate: Some(signed_cert()),
            device_list: None,
            display_name: String::new(),
        },
        e2e::ContactCard {
            address: Some(address()),
            certificate: None,
            device_list: None,
            display_name: String::new(),
        },
    ] {
        let mut c = content();
        c.body = Some(Body::ContactCard(card));
        assert!(matches!(
            decode::content(&c.encode_to_vec()),
            Err(DecodeError::Invalid { .. })
        ));
    }
}

#[test]
fn garbage_is_malformed_for_every_decoder() {
    assert_malformed(decode::request(TRUNCATED_FIELD));
    assert_malformed(decode::response(TRUNCATED_FIELD));
    assert_malformed(decode::event(TRUNCATED_FIELD));
    assert_malformed(decode::blob_chunk(TRUNCATED_FIELD));
    assert_malformed(decode::sealed(TRUNCATED_FIELD));
    assert_malformed(decode::content(TRUNCATED_FIELD));
    assert_malformed(decode::invitation(TRUNCATED_FIELD));
    assert_malformed(decode::signed_device_certificate(TRUNCATED_FIELD));
    assert_malformed(decode::device_certificate(TRUNCATED_FIELD));
    assert_malformed(decode::signed_device_list(TRUNCATED_FIELD));
    assert_malformed(decode::device_list(TRUNCATED_FIELD));
    assert_malformed(decode::signed_org_profile(TRUNCATED_FIELD));
    assert_malformed(decode::org_profile(TRUNCATED_FIELD));
    assert_malformed(decode::published_prekeys(TRUNCATED_FIELD));
    assert_malformed(decode::one_time_prekey(TRUNCATED_FIELD));
    assert_malformed(decode::signed_kem_prekey(TRUNCATED_FIELD));
    assert_malformed(decode::signed_control(TRUNCATED_FIELD));
    assert_malformed(decode::referral_control(TRUNCATED_FIELD));
    assert_malformed(decode::signed_consent_receipt(TRUNCATED_FIELD));
    assert_malformed(decode::consent_receipt(TRUNCATED_FIELD));
    assert_malformed(decode::referral_offer(TRUNCATED_FIELD));
    assert_malformed(decode::referral_body(TRUNCATED_FIELD));
    assert_malformed(decode::body_section(TRUNCATED_FIELD));
    assert_malformed(decode::signed_referral_offer(TRUNCATED_FIELD));
    // An invalid wire type (7) in a tag.
    assert_malformed(decode::request(&[0x0f]));
}

#[test]
fn prefixes_of_valid_requests_never_panic_or_pass_as_the_original() {
    // Every strict prefix either fails or decodes to a different, still valid message. It must
    // never panic, and a prefix that cuts inside a field must fail.
    for msg in requests() {
        let bytes = msg.encode_to_vec();
        for cut in 0..bytes.len() {
            if let Ok(decoded) = decode::request(&bytes[..cut]) {
                assert_ne!(decoded, msg);
            }
        }
    }
}

#[test]
fn empty_input_is_missing_the_required_oneof() {
    assert_invalid(decode::request(&[]), "Request.kind");
    assert_invalid(decode::response(&[]), "Response.kind");
    assert_invalid(decode::event(&[]), "Event.kind");
    assert_invalid(decode::sealed(&[]), "Sealed.sender");
    assert_invalid(decode::content(&[]), "Content.message_id");
    assert_invalid(decode::invitation(&[]), "Invitation.address");
    assert_invalid(decode::body_section(&[]), "BodySection.content");
}

#[test]
fn wrong_lengths_are_invalid() {
    use relay::request::Kind;
    let bad_send = request(Kind::Send(relay::Send {
        send_id: vec![1; 15],
        capability: key(5),
        envelope: Some(envelope()),
    }));
    assert_invalid(decode::request(&bad_send.encode_to_vec()), "Send.send_id");

    let mut env = envelope();
    env.envelope_id = vec![1; 17];
    let bad_env = request(Kind::Send(relay::Send {
        send_id: id(2),
        capability: key(5),
        envelope: Some(env),
    }));
    assert_invalid(
        decode::request(&bad_env.encode_to_vec()),
        "Envelope.envelope_id",
    );

    let bad_auth = request(Kind::Authenticate(relay::Authenticate {
        recv_id: id(1),
        signature: sig(1)[..63].to_vec(),
    }));
    assert_invalid(
        decode::request(&bad_auth.encode_to_vec()),
        "Authenticate.signature",
    );

    let mut kem = signed_kem_prekey();
    kem.public_key.pop();
    assert_invalid(
        decode::signed_kem_prekey(&kem.encode_to_vec()),
        "SignedKemPrekey.public_key",
    );

    let mut sealed = sealed_prekey();
    if let Some(e2e::sealed::Message::Prekey(p)) = &mut sealed.message {
        p.kem_ciphertext.push(0);
    }
    assert_invalid(
        decode::sealed(&sealed.encode_to_vec()),
        "PrekeyMessage.kem_ciphertext",
    );

    let mut control = referral_control();
    control.prev_hash = vec![];
    assert_invalid(
        decode::referral_control(&control.encode_to_vec()),
        "ReferralControl.prev_hash",
    );
}

#[test]
fn oversized_fields_are_invalid() {
    use relay::request::Kind;
    let mut env = envelope();
    env.ciphertext = vec![0; MAX_ENVELOPE_LEN + 1];
    let big = request(Kind::Send(relay::Send {
        send_id: id(2),
        capability: key(5),
        envelope: Some(env),
    }));
    assert_invalid(decode::request(&big.encode_to_vec()), "Envelope.ciphertext");

    let too_many = request(Kind::Ack(relay::Ack {
        recv_id: id(1),
        envelope_ids: vec![id(1); 1025],
    }));
    assert_invalid(
        decode::request(&too_many.encode_to_vec()),
        "Ack.envelope_ids",
    );

    let mut cert = device_certificate();
    cert.label = "x".repeat(MAX_SHORT_STRING_LEN + 1);
    assert_invalid(
        decode::device_certificate(&cert.encode_to_vec()),
        "DeviceCertificate.label",
    );

    let chunk = relay::BlobChunk {
        data: vec![0; 256 * 1024 + 1],
        last: false,
    };
    assert_invalid(decode::blob_chunk(&chunk.encode_to_vec()), "BlobChunk.data");
}

#[test]
fn unknown_and_unspecified_enums_are_invalid_where_required() {
    let mut cert = device_certificate();
    cert.role = 42;
    assert_invalid(
        decode::device_certificate(&cert.encode_to_vec()),
        "DeviceCertificate.role",
    );
    cert.role = 0;
    assert_invalid(
        decode::device_certificate(&cert.encode_to_vec()),
        "DeviceCertificate.role",
    );

    let err = relay::Response {
        kind: Some(relay::response::Kind::Error(relay::Error {
            code: 0,
            message: String::new(),
            retry_after_secs: 0,
        })),
    };
    assert_invalid(decode::response(&err.encode_to_vec()), "Error.code");

    let mut offer = referral_offer();
    offer.services_requested.push(1000);
    assert_invalid(
        decode::referral_offer(&offer.encode_to_vec()),
        "ReferralOffer.services_requested",
    );

    let mut control = referral_control();
    control.action = Some(e2e::referral_control::Action::Decline(e2e::Decline {
        reason: 0,
        note: String::new(),
    }));
    assert_invalid(
        decode::referral_control(&control.encode_to_vec()),
        "Decline.reason",
    );

    // Child assent may be unspecified (an adult), never unknown.
    let mut receipt = consent_receipt();
    receipt.child_assent = 0;
    assert!(decode::consent_receipt(&receipt.encode_to_vec()).is_ok());
    receipt.child_assent = 9;
    assert_invalid(
        decode::consent_receipt(&receipt.encode_to_vec()),
        "ConsentReceipt.child_assent",
    );
}

#[test]
fn semantic_rules_are_enforced() {
    let mut cert = device_certificate();
    cert.not_after = cert.not_before;
    assert_invalid(
        decode::device_certificate(&cert.encode_to_vec()),
        "DeviceCertificate.not_after",
    );

    let mut profile = org_profile();
    profile.name.clear();
    assert_invalid(
        decode::org_profile(&profile.encode_to_vec()),
        "OrgProfile.name",
    );

    let mut section = body_section();
    if let Some(e2e::body_section::Content::Identity(s)) = &mut section.content {
        s.name_or_alias.clear();
    }
    assert_invalid(
        decode::body_section(&section.encode_to_vec()),
        "IdentitySection.name_or_alias",
    );

    let mut offer = referral_offer();
    offer.consent = Some(e2e::ConsentRef {
        basis: Some(e2e::consent_ref::Basis::Override(e2e::ConsentOverride {
            legal_basis: String::new(),
            justification: "urgent".into(),
            authorised_by: "manager".into(),
        })),
    });
    assert_invalid(
        decode::referral_offer(&offer.encode_to_vec()),
        "ConsentOverride.legal_basis",
    );

    let mut env = envelope();
    env.ciphertext.clear();
    let empty = request(relay::request::Kind::Send(relay::Send {
        send_id: id(2),
        capability: key(5),
        envelope: Some(env),
    }));
    assert_invalid(
        decode::request(&empty.encode_to_vec()),
        "Envelope.ciphertext",
    );
}

#[test]
fn oversized_frames_are_refused() {
    let mut header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
    header.extend_from_slice(&[0; 16]);
    assert_eq!(
        frame::split(&header, MAX_FRAME_LEN),
        Err(DecodeError::FrameTooLarge {
            len: MAX_FRAME_LEN + 1,
            max: MAX_FRAME_LEN
        })
    );
    let big = relay::BlobChunk {
        data: vec![0; MAX_FRAME_LEN],
        last: true,
    };
    assert!(frame::encode(&big).is_err());
}

type Decoder = fn(&[u8]) -> Result<(), DecodeError>;

macro_rules! discard {
    ($($f:path),* $(,)?) => { [$(|b: &[u8]| $f(b).map(|_| ())),*] };
}

const DECODERS: [Decoder; 24] = discard![
    decode::request,
    decode::response,
    decode::event,
    decode::blob_chunk,
    decode::sealed,
    decode::content,
    decode::invitation,
    decode::signed_device_certificate,
    decode::device_certificate,
    decode::signed_device_list,
    decode::device_list,
    decode::signed_org_profile,
    decode::org_profile,
    decode::published_prekeys,
    decode::one_time_prekey,
    decode::signed_kem_prekey,
    decode::signed_control,
    decode::referral_control,
    decode::signed_consent_receipt,
    decode::consent_receipt,
    decode::referral_offer,
    decode::referral_body,
    decode::body_section,
    decode::signed_referral_offer,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic any decoder; they decode or yield an error value.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for decoder in DECODERS {
            let _ = decoder(&bytes);
        }
    }

    /// Mutating one byte of a valid message never panics a decoder.
    #[test]
    fn mutated_valid_messages_never_panic(index in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut samples: Vec<Vec<u8>> = requests().iter().map(Message::encode_to_vec).collect();
        samples.extend(responses().iter().map(Message::encode_to_vec));
        samples.push(sealed_prekey().encode_to_vec());
        samples.push(content().encode_to_vec());
        samples.push(consent_receipt().encode_to_vec());
        samples.push(referral_offer().encode_to_vec());
        for mut bytes in samples {
            let i = index.index(bytes.len());
            bytes[i] ^= byte;
            for decoder in DECODERS {
                let _ = decoder(&bytes);
            }
        }
    }

    /// The frame decoder yields exactly the frames written, however the stream is chunked.
    #[test]
    fn frames_survive_any_chunking(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
        chunk in 1usize..64,
    ) {
        let chunks: Vec<relay::BlobChunk> = payloads
            .iter()
            .map(|p| relay::BlobChunk { data: p.clone(), last: false })
            .collect();
        let mut stream = Vec::new();
        for c in &chunks {
            stream.extend(frame::encode(c).unwrap());
        }
        let mut decoder = frame::FrameDecoder::new(MAX_FRAME_LEN);
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            decoder.push(piece);
            while let Some(payload) = decoder.next_frame().unwrap() {
                got.push(decode::blob_chunk(&payload).unwrap());
            }
        }
        decoder.finish().unwrap();
        prop_assert_eq!(got, chunks);
    }

    /// Arbitrary bytes fed to the frame decoder never panic or buffer past the limit.
    #[test]
    fn frame_decoder_is_bounded(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut decoder = frame::FrameDecoder::new(1024);
        for piece in bytes.chunks(97) {
            decoder.push(piece);
            while let Ok(Some(frame)) = decoder.next_frame() {
                prop_assert!(frame.len() <= 1024);
            }
            prop_assert!(decoder.buffered() <= 1024 + 4 + 97);
        }
    }
}
