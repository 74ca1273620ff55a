//! Engine tests with a deterministic harness: in-memory stores, seeded RNGs, a fake clock and a
//! tiny in-memory relay (mailboxes, capabilities, prekeys, blobs) written for these tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use handover_core::engine::{
    self, Direction, Engine, EngineError, Message, PeerId, ProfileDetails, Received,
};
use handover_core::identity::{DeviceId, DeviceKeys, Role};
use handover_core::testing::TestRng;
use handover_proto::e2e::v1 as wire;
use handover_proto::e2e::v1::content::Body;

mod engine_support;

use engine_support::*;

fn text(m: &Message) -> &str {
    match &m.content.body {
        Some(Body::Chat(c)) => &c.text,
        other => panic!("not a chat message: {other:?}"),
    }
}

/// Alice (organisation A) invites Bob (organisation B); both organisations trust each other.
fn connected_pair(relay: &mut SimRelay) -> (Device, Device, PeerId, PeerId) {
    let mut alice = Device::new_org(relay, 1, "Alice");
    let mut bob = Device::new_org(relay, 2, "Bob");
    alice.engine.trust_organisation(&bob.root()).unwrap();
    bob.engine.trust_organisation(&alice.root()).unwrap();
    let link = alice.invite(relay, T0);
    assert!(link.starts_with("handover://invite#"));
    let alice_id = bob.accept(relay, &link, T0 + 1);
    let (got, _) = alice.sync(relay, T0 + 2);
    assert_eq!(got.len(), 1);
    assert!(matches!(got[0].content.body, Some(Body::ContactCard(_))));
    assert_eq!(got[0].peer, bob.id());
    let bob_id = bob.peer();
    assert_eq!(alice_id, alice.peer());
    (alice, bob, alice_id, bob_id)
}

#[test]
fn invitation_then_chat_both_ways() {
    let mut relay = SimRelay::default();
    let (mut alice, mut bob, alice_id, bob_id) = connected_pair(&mut relay);

    // The contact card gave Alice Bob's reply address; she can write first now.
    alice.chat(bob_id, "hello Bob", T0 + 10);
    alice.chat(bob_id, "are you there?", T0 + 11);
    assert_eq!(alice.flush(&mut relay), 2);
    let (got, dups) = bob.sync(&mut relay, T0 + 12);
    assert_eq!(dups, 0);
    let texts: Vec<_> = got.iter().map(text).collect();
    assert_eq!(texts, ["hello Bob", "are you there?"]);
    assert!(
        got.iter()
            .all(|m| m.peer == alice_id.device_id && m.direction == Direction::Incoming)
    );

    bob.chat(alice_id, "hi Alice", T0 + 20);
    bob.flush(&mut relay);
    let (got, _) = alice.sync(&mut relay, T0 + 21);
    assert_eq!(got.len(), 1);
    assert_eq!(text(&got[0]), "hi Alice");

    // Several rounds, then both histories hold every message once, in order.
    for i in 0..3 {
        alice.chat(bob_id, &format!("a{i}"), T0 + 30 + i);
        alice.flush(&mut relay);
        bob.sync(&mut relay, T0 + 30 + i);
        bob.chat(alice_id, &format!("b{i}"), T0 + 40 + i);
        bob.flush(&mut relay);
        alice.sync(&mut relay, T0 + 40 + i);
    }
    let alice_log: Vec<_> = alice
        .engine
        .messages(0, T0)
        .unwrap()
        .into_iter()
        .filter(|m| matches!(m.content.body, Some(Body::Chat(_))))
        .map(|m| (m.direction, text(&m).to_owned()))
        .collect();
    assert_eq!(alice_log.len(), 9);
    assert_eq!(alice_log[0], (Direction::Outgoing, "hello Bob".to_owned()));
    assert_eq!(alice_log[2], (Direction::Incoming, "hi Alice".to_owned()));

    // Safety numbers agree.
    let a = alice.engine.safety_number(bob_id, T0 + 50).unwrap();
    let b = bob.engine.safety_number(alice_id, T0 + 50).unwrap();
    assert_eq!(a.digits(), b.digits());
    assert!(b.matches_scanned(&a.qr_payload()));

    // Everything survives a restart, and the conversation goes on.
    let mut alice = alice.restart();
    let mut bob = bob.restart();
    alice.chat(bob_id, "after restart", T0 + 60);
    alice.flush(&mut relay);
    let (got, _) = bob.sync(&mut relay, T0 + 61);
    assert_eq!(text(&got[0]), "after restart");
}

fn verified(device: &Device, contact: PeerId) -> bool {
    device
        .engine
        .contacts()
        .unwrap()
        .iter()
        .find(|c| c.peer() == contact)
        .unwrap()
        .verified
}

#[test]
fn a_contact_is_marked_verified_only_with_its_own_safety_number() {
    let mut relay = SimRelay::default();
    let (mut alice, mut bob, alice_id, bob_id) = connected_pair(&mut relay);
    let at_alice = alice.engine.safety_number(bob_id, T0 + 10).unwrap();
    let at_bob = bob.engine.safety_number(alice_id, T0 + 10).unwrap();
    assert_eq!(at_alice.digits(), at_bob.digits());

    // A third organisation's device has another safety number with Alice (the same on both
    // of their sides).
    let mut carol = Device::new_org(&mut relay, 3, "Carol");
    alice.engine.trust_organisation(&carol.root()).unwrap();
    carol.engine.trust_organisation(&alice.root()).unwrap();
    let link = alice.invite(&mut relay, T0 + 11);
    carol.accept(&mut relay, &link, T0 + 12);
    alice.sync(&mut relay, T0 + 13);
    let carol_id = carol.peer();
    let with_carol = alice.engine.safety_number(carol_id, T0 + 14).unwrap();
    assert_ne!(with_carol.digits(), at_alice.digits());
    assert_eq!(
        carol
            .engine
            .safety_number(alice_id, T0 + 14)
            .unwrap()
            .digits(),
        with_carol.digits()
    );

    // Nobody is verified until a number was compared; a number that is not Bob's marks nothing.
    assert!(!verified(&alice, bob_id) && !verified(&alice, carol_id));
    assert!(matches!(
        alice
            .engine
            .mark_contact_verified(bob_id, &with_carol.grouped(), T0 + 15),
        Err(EngineError::SafetyNumberMismatch)
    ));
    assert!(!verified(&alice, bob_id));
    // Bob's number as he reads it out, in groups.
    alice
        .engine
        .mark_contact_verified(bob_id, &at_bob.grouped(), T0 + 15)
        .unwrap();
    assert!(verified(&alice, bob_id));
    assert!(!verified(&alice, carol_id));

    // An unknown device has no safety number and cannot be marked.
    let stranger = PeerId {
        org_root: [9; 32],
        device_id: DeviceId([9; 16]),
    };
    assert!(matches!(
        alice.engine.safety_number(stranger, T0 + 15),
        Err(EngineError::UnknownContact)
    ));
    assert!(matches!(
        alice
            .engine
            .mark_contact_verified(stranger, &at_bob.digits(), T0 + 15),
        Err(EngineError::UnknownContact)
    ));

    // Bob scans the QR code on Alice's screen; the code on his own screen does not count.
    assert!(matches!(
        bob.engine
            .mark_contact_verified_scanned(alice_id, &at_bob.qr_payload(), T0 + 16),
        Err(EngineError::SafetyNumberMismatch)
    ));
    bob.engine
        .mark_contact_verified_scanned(alice_id, &at_alice.qr_payload(), T0 + 16)
        .unwrap();
    assert!(verified(&bob, alice_id));

    // The mark survives a restart; clearing it forgets it, also across a restart.
    let mut alice = alice.restart();
    assert!(verified(&alice, bob_id));
    alice.engine.clear_contact_verified(bob_id).unwrap();
    assert!(!verified(&alice, bob_id));
    let alice = alice.restart();
    assert!(!verified(&alice, bob_id));
}

#[test]
fn a_verified_device_stops_counting_as_verified_once_revoked() {
    let mut relay = SimRelay::default();
    let mut b1 = Device::new_org(&mut relay, 41, "Intake admin");
    let mut b2 = Device::enrol(&mut relay, &mut b1, 42, Role::Caseworker, "Caseworker");
    let mut alice = Device::new_org(&mut relay, 43, "Referrer");
    alice.engine.trust_organisation(&b1.root()).unwrap();
    b1.engine.trust_organisation(&alice.root()).unwrap();
    b2.engine.trust_organisation(&alice.root()).unwrap();
    let link = alice.invite(&mut relay, T0);
    let alice_id = b2.accept(&mut relay, &link, T0 + 1);
    let link = alice.invite(&mut relay, T0 + 2);
    b1.accept(&mut relay, &link, T0 + 3);
    alice.sync(&mut relay, T0 + 4);

    let b2_id = b2.peer();
    let number = b2.engine.safety_number(alice_id, T0 + 5).unwrap();
    alice
        .engine
        .mark_contact_verified(b2_id, &number.digits(), T0 + 5)
        .unwrap();
    assert!(verified(&alice, b2_id));

    b1.engine.revoke_device(b2_id.device_id, T0 + 6).unwrap();
    b1.engine
        .send_device_list(alice_id, T0 + 6, &mut b1.rng)
        .unwrap();
    b1.flush(&mut relay);
    alice.sync(&mut relay, T0 + 7);
    assert!(!verified(&alice, b2_id));
    assert!(matches!(
        alice.engine.safety_number(b2_id, T0 + 7),
        Err(EngineError::Revoked)
    ));
}

#[test]
fn a_directory_profile_is_trusted_and_imported_only_with_its_fingerprint() {
    let mut relay = SimRelay::default();
    let mut shelter = Device::new_org(&mut relay, 51, "Shelter");
    let mut alice = Device::new_org(&mut relay, 52, "Referrer");
    let details = ProfileDetails {
        name: "Shelter B".into(),
        services: vec!["SHELTER".into()],
        ..ProfileDetails::default()
    };
    let profile = shelter
        .engine
        .signed_org_profile(details, T0, &mut shelter.rng)
        .unwrap();
    let root = shelter.root();
    assert!(
        !alice
            .engine
            .verify_org_profile(&profile, T0)
            .unwrap()
            .trusted
    );

    // Alice's own fingerprint, or one digit off, trusts and imports nothing.
    let theirs = engine::org_fingerprint(&root);
    let mut off = theirs.clone().into_bytes();
    off[0] = if off[0] == b'0' { b'1' } else { b'0' };
    for wrong in [
        engine::org_fingerprint(&alice.root()),
        String::from_utf8(off).unwrap(),
        String::new(),
    ] {
        assert!(matches!(
            alice
                .engine
                .trust_and_import_org_profile(&profile, &wrong, T0 + 1),
            Err(EngineError::FingerprintMismatch)
        ));
    }
    assert!(!alice.engine.trusts_organisation(&root).unwrap());
    assert!(alice.engine.contacts().unwrap().is_empty());

    // The fingerprint as read out (other separators) trusts the organisation and imports its
    // intake device.
    let spoken = theirs.replace(' ', "-");
    assert!(engine::org_fingerprint_matches(&root, &spoken));
    let added = alice
        .engine
        .trust_and_import_org_profile(&profile, &spoken, T0 + 1)
        .unwrap();
    assert_eq!(added, vec![shelter.peer()]);
    assert!(alice.engine.trusts_organisation(&root).unwrap());
    assert_eq!(alice.engine.contacts().unwrap()[0].peer(), shelter.peer());
}

#[test]
fn invitation_link_round_trips_and_rejects_garbage() {
    let mut relay = SimRelay::default();
    let mut alice = Device::new_org(&mut relay, 1, "Alice");
    let link = alice.invite(&mut relay, T0);
    let inv = engine::parse_invitation_link(&link).unwrap();
    assert_eq!(engine::invitation_link(&inv), link);
    assert_eq!(engine::invitation_org_root(&inv).unwrap(), alice.root());
    for bad in [
        "",
        "handover://invite#",
        "https://x/#abc",
        "handover://invite#!!!",
    ] {
        assert!(matches!(
            engine::parse_invitation_link(bad),
            Err(EngineError::InvalidInvitation)
        ));
    }
    // An untrusted inviter's organisation must be verified first; an expired one is refused.
    let bob = Device::new_org(&mut relay, 2, "Bob");
    assert!(matches!(
        bob.engine.check_invitation(&inv, T0 + 1),
        Err(EngineError::UntrustedOrganisation)
    ));
    let mut bob = bob;
    bob.engine.trust_organisation(&alice.root()).unwrap();
    assert_eq!(
        bob.engine.check_invitation(&inv, T0 + 1).unwrap(),
        alice.peer()
    );
    assert!(matches!(
        bob.engine.check_invitation(&inv, T0 + 3600),
        Err(EngineError::InvitationExpired)
    ));
}

#[test]
fn redelivery_after_crash_before_ack_is_deduplicated() {
    let mut relay = SimRelay::default();
    let (mut alice, mut bob, alice_id, bob_id) = connected_pair(&mut relay);
    alice.chat(bob_id, "exactly once", T0 + 10);
    alice.flush(&mut relay);

    // Bob processes (persists) the envelope, then crashes before acking it.
    let recv = bob.engine.recv_id().unwrap();
    let queued = relay.fetch(recv);
    assert_eq!(queued.len(), 1);
    let r = bob
        .engine
        .receive(&queued[0], T0 + 11, &mut bob.rng)
        .unwrap();
    assert!(matches!(r, Received::Delivered(_)));
    let mut bob = bob.restart();

    // The relay redelivers; Bob recognises it and acks; the app saw it once.
    let (got, dups) = bob.sync(&mut relay, T0 + 12);
    assert!(got.is_empty());
    assert_eq!(dups, 1);
    let chats: Vec<_> = bob
        .engine
        .messages(0, T0)
        .unwrap()
        .into_iter()
        .filter(|m| matches!(m.content.body, Some(Body::Chat(_))))
        .collect();
    assert_eq!(chats.len(), 1);
    assert_eq!(text(&chats[0]), "exactly once");

    // The persisted session is the advanced one: the conversation continues both ways.
    alice.chat(bob_id, "next", T0 + 13);
    alice.flush(&mut relay);
    let (got, _) = bob.sync(&mut relay, T0 + 14);
    assert_eq!(text(&got[0]), "next");
    bob.chat(alice_id, "reply", T0 + 15);
    bob.flush(&mut relay);
    let (got, _) = alice.sync(&mut relay, T0 + 16);
    assert_eq!(text(&got[0]), "reply");
}

#[test]
fn resend_after_crash_before_send_accepted_is_deduplicated() {
    let mut relay = SimRelay::default();
    let (alice, mut bob, _alice_id, bob_id) = connected_pair(&mut relay);
    let mut alice = alice;
    alice.chat(bob_id, "sent once", T0 + 10);

    // The relay stores the envelope, but Alice crashes before seeing SendAccepted.
    let pending = alice.engine.outbox().unwrap();
    assert_eq!(pending.len(), 1);
    relay.send(&pending[0]).unwrap();
    let mut alice = alice.restart();

    // After the restart the outbox still holds the same envelope; she sends it again.
    let again = alice.engine.outbox().unwrap();
    assert_eq!(again.len(), 1);
    assert!(
        again[0] == pending[0],
        "the resent envelope must be byte-identical"
    );
    assert_eq!(alice.flush(&mut relay), 1);
    assert!(alice.engine.outbox().unwrap().is_empty());

    // Bob receives two copies and delivers one.
    let (got, dups) = bob.sync(&mut relay, T0 + 11);
    assert_eq!(got.len(), 1);
    assert_eq!(dups, 1);
    assert_eq!(text(&got[0]), "sent once");

    // An outbox entry persisted before a crash (never sent) goes out after the restart.
    alice.chat(bob_id, "offline", T0 + 12);
    let mut alice = alice.restart();
    assert_eq!(alice.flush(&mut relay), 1);
    let (got, _) = bob.sync(&mut relay, T0 + 13);
    assert_eq!(text(&got[0]), "offline");
}

#[test]
fn tampered_misaddressed_and_unknown_sender_envelopes_change_nothing() {
    let mut relay = SimRelay::default();
    let (mut alice, mut bob, _alice_id, bob_id) = connected_pair(&mut relay);
    alice.chat(bob_id, "genuine", T0 + 10);
    alice.flush(&mut relay);
    let recv = bob.engine.recv_id().unwrap();
    let genuine = relay.fetch(recv).remove(0);
    let before = bob.snapshot();

    // Flipped ciphertext bytes anywhere, a changed expiry or id (bound into the AAD).
    let env = genuine.envelope.clone().unwrap();
    for i in [0, 40, env.ciphertext.len() - 1] {
        let mut bad = genuine.clone();
        bad.envelope.as_mut().unwrap().ciphertext[i] ^= 1;
        let r = bob.engine.receive(&bad, T0 + 11, &mut bob.rng);
        assert!(matches!(r, Err(EngineError::CouldNotDecrypt)), "byte {i}");
    }
    let mut bad = genuine.clone();
    bad.envelope.as_mut().unwrap().expires_at += 1;
    assert!(matches!(
        bob.engine.receive(&bad, T0 + 11, &mut bob.rng),
        Err(EngineError::CouldNotDecrypt)
    ));
    let mut bad = genuine.clone();
    bad.envelope.as_mut().unwrap().envelope_id[0] ^= 1;
    assert!(matches!(
        bob.engine.receive(&bad, T0 + 11, &mut bob.rng),
        Err(EngineError::CouldNotDecrypt)
    ));
    // Sealed to someone else's mailbox.
    let mut carol_same_org = Device::new_org(&mut relay, 9, "Mallory");
    let _ = &mut carol_same_org;
    assert!(matches!(
        carol_same_org
            .engine
            .receive(&genuine, T0 + 11, &mut TestRng::seeded(99)),
        Err(EngineError::CouldNotDecrypt)
    ));
    assert!(before == bob.snapshot(), "a refused envelope changed state");

    // A sender from an organisation Bob does not trust.
    let mut carol = Device::new_org(&mut relay, 3, "Carol");
    carol.engine.trust_organisation(&bob.root()).unwrap();
    let link = bob.invite(&mut relay, T0 + 12);
    let before = bob.snapshot();
    carol.accept(&mut relay, &link, T0 + 13);
    let queued = relay.fetch(recv);
    let from_carol = queued
        .iter()
        .find(|q| q.envelope != genuine.envelope)
        .unwrap()
        .clone();
    assert!(matches!(
        bob.engine.receive(&from_carol, T0 + 14, &mut bob.rng),
        Err(EngineError::UntrustedOrganisation)
    ));
    assert!(before == bob.snapshot(), "an unknown sender changed state");
    // The driver leaves it queued and shows the organisation to verify; once trusted, it is
    // delivered.
    assert_eq!(
        bob.engine.envelope_sender_org(&from_carol).unwrap(),
        carol.root()
    );
    bob.engine.trust_organisation(&carol.root()).unwrap();
    let r = bob
        .engine
        .receive(&from_carol, T0 + 14, &mut bob.rng)
        .unwrap();
    let Received::Delivered(card) = r else {
        panic!("expected delivery")
    };
    assert!(matches!(card.content.body, Some(Body::ContactCard(_))));
    assert_eq!(card.peer, carol.id());

    // The genuine envelope still decrypts after all that.
    let r = bob.engine.receive(&genuine, T0 + 15, &mut bob.rng).unwrap();
    let Received::Delivered(m) = r else {
        panic!("expected delivery")
    };
    assert_eq!(text(&m), "genuine");
}

#[test]
fn expired_envelopes_are_refused_unread() {
    let mut relay = SimRelay::default();
    let (mut alice, mut bob, _alice_id, bob_id) = connected_pair(&mut relay);
    alice.engine.set_envelope_ttl(100);
    alice.chat(bob_id, "too late", T0 + 10);
    alice.flush(&mut relay);
    let recv = bob.engine.recv_id().unwrap();
    let queued = relay.fetch(recv).remove(0);
    let expires_at = queued.envelope.as_ref().unwrap().expires_at;
    assert_eq!(expires_at, T0 + 110);
    let before = bob.snapshot();
    // At its expiry and after (a relay that kept it, or a replay after the dedupe marker was
    // swept): refused with a typed error, nothing changed.
    for now in [expires_at, expires_at + 1, expires_at + 86_400] {
        assert!(matches!(
            bob.engine.receive(&queued, now, &mut bob.rng),
            Err(EngineError::EnvelopeExpired)
        ));
        assert!(
            before == bob.snapshot(),
            "an expired envelope changed state"
        );
    }
    // One second earlier it is read.
    let r = bob
        .engine
        .receive(&queued, expires_at - 1, &mut bob.rng)
        .unwrap();
    let Received::Delivered(m) = r else {
        panic!("expected delivery")
    };
    assert_eq!(text(&m), "too late");
}

fn chat_body(text: &str) -> Body {
    Body::Chat(wire::ChatMessage {
        text: text.into(),
        attachments: vec![],
    })
}

fn chat_texts(device: &Device, now: u64) -> Vec<String> {
    device
        .engine
        .messages(0, now)
        .unwrap()
        .iter()
        .filter(|m| matches!(m.content.body, Some(Body::Chat(_))))
        .map(|m| text(m).to_owned())
        .collect()
}

#[test]
fn disappearing_messages_are_deleted_at_their_timer_on_both_sides() {
    let mut relay = SimRelay::default();
    let (mut alice, mut bob, _alice_id, bob_id) = connected_pair(&mut relay);
    let send_at = T0 + 10;
    let timer = send_at + 10;
    alice
        .engine
        .send_disappearing(
            bob_id,
            chat_body("gone soon"),
            timer,
            send_at,
            &mut alice.rng,
        )
        .unwrap();
    alice.chat(bob_id, "stays", send_at);
    alice.flush(&mut relay);
    let (got, _) = bob.sync(&mut relay, send_at + 1);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].content.expires_at, timer);
    assert_eq!(chat_texts(&bob, timer - 1), ["gone soon", "stays"]);
    assert_eq!(chat_texts(&alice, timer - 1), ["gone soon", "stays"]);

    // Once the timer fires the listing never shows it, even before a sweep ...
    assert_eq!(chat_texts(&bob, timer), ["stays"]);
    assert_eq!(chat_texts(&alice, timer), ["stays"]);
    // ... and the sweep deletes it from the store: no copy of the text is left.
    for device in [&mut alice, &mut bob] {
        device.engine.sweep(timer).unwrap();
        assert_eq!(chat_texts(device, 0), ["stays"]);
        for (_, _, value) in device.snapshot() {
            assert!(
                !value.windows(9).any(|w| w == b"gone soon"),
                "the expired message is still stored"
            );
        }
    }
}

#[test]
fn a_message_that_arrives_already_expired_is_never_stored_or_shown() {
    let mut relay = SimRelay::default();
    let (mut alice, mut bob, _alice_id, bob_id) = connected_pair(&mut relay);
    let send_at = T0 + 10;
    alice
        .engine
        .send_disappearing(
            bob_id,
            chat_body("stale"),
            send_at + 5,
            send_at,
            &mut alice.rng,
        )
        .unwrap();
    alice.flush(&mut relay);
    // Bob syncs after the timer fired (the envelope itself is still valid).
    let recv = bob.engine.recv_id().unwrap();
    let queued = relay.fetch(recv).remove(0);
    let r = bob
        .engine
        .receive(&queued, send_at + 5, &mut bob.rng)
        .unwrap();
    assert!(matches!(r, Received::Expired), "{r:?}");
    assert!(chat_texts(&bob, 0).is_empty());
    for (_, _, value) in bob.snapshot() {
        assert!(!value.windows(5).any(|w| w == b"stale"));
    }
    // A redelivery changes nothing either; the session still works afterwards.
    assert!(matches!(
        bob.engine
            .receive(&queued, send_at + 6, &mut bob.rng)
            .unwrap(),
        Received::Duplicate
    ));
    alice.chat(bob_id, "fresh", send_at + 7);
    alice.flush(&mut relay);
    let (got, _) = bob.sync(&mut relay, send_at + 8);
    assert_eq!(got.len(), 1);
    assert_eq!(chat_texts(&bob, send_at + 8), ["fresh"]);
    // A timer in the past is refused at the sender.
    assert!(matches!(
        alice
            .engine
            .send_disappearing(bob_id, chat_body("x"), send_at, send_at, &mut alice.rng),
        Err(EngineError::InvalidInput(_))
    ));
}

#[test]
fn organisation_fanout_reaches_active_devices_and_not_revoked_ones() {
    let mut relay = SimRelay::default();
    // Organisation B: an admin device holding the root key and an enrolled caseworker device.
    let mut b1 = Device::new_org(&mut relay, 21, "Intake admin");
    let mut b2 = Device::enrol(&mut relay, &mut b1, 22, Role::Caseworker, "Caseworker");
    // B2 sends B1 its contact card (same organisation, trusted by construction).
    let link = b1.invite(&mut relay, T0);
    b2.accept(&mut relay, &link, T0 + 1);
    b1.sync(&mut relay, T0 + 2);

    // Organisation A trusts B (and B trusts A); B's admin publishes the profile.
    let mut alice = Device::new_org(&mut relay, 23, "Referrer");
    alice.engine.trust_organisation(&b1.root()).unwrap();
    b1.engine.trust_organisation(&alice.root()).unwrap();
    b2.engine.trust_organisation(&alice.root()).unwrap();
    let details = ProfileDetails {
        name: "Shelter B".into(),
        services: vec!["SHELTER".into()],
        languages: vec!["en".into(), "uk".into()],
        regions: vec!["North".into()],
        description: "Emergency accommodation".into(),
    };
    let profile = b1
        .engine
        .signed_org_profile(details.clone(), T0 + 3, &mut b1.rng)
        .unwrap();
    b1.sync_caps(&mut relay, T0 + 3);
    let verified = alice.engine.verify_org_profile(&profile, T0 + 4).unwrap();
    assert!(verified.trusted);
    assert_eq!(verified.profile.name, "Shelter B");
    let mut intake = alice.engine.import_org_profile(&profile, T0 + 4).unwrap();
    intake.sort();
    let mut team = vec![b1.peer(), b2.peer()];
    team.sort();
    assert_eq!(intake, team);

    // Alice starts a session with each device and sends the packet once.
    for device in &team {
        let address = alice.engine.contact_address(*device).unwrap();
        let bundle = engine::bundle_from_result(&relay.take(&address)).unwrap();
        alice
            .engine
            .start_session(*device, &bundle, T0 + 5, &mut alice.rng)
            .unwrap();
    }
    let body = Body::Chat(wire::ChatMessage {
        text: "referral for the intake team".into(),
        attachments: vec![],
    });
    let packet = alice
        .engine
        .prepare_org_packet(&b1.root(), body, T0 + 6, &mut alice.rng)
        .unwrap();
    let blob_id = relay.blob_put(packet.ciphertext());
    let sent = alice
        .engine
        .send_fanout_keys(&packet, blob_id, "relay.test:4433", T0 + 6, &mut alice.rng)
        .unwrap();
    assert_eq!(sent.items.len(), 2);
    assert!(sent.unreached.is_empty());
    alice.flush(&mut relay);
    assert_eq!(relay.blobs.len(), 1, "the packet is uploaded once");

    for dev in [&mut b1, &mut b2] {
        let (got, _) = dev.sync(&mut relay, T0 + 7);
        assert_eq!(got.len(), 1);
        let Some(Body::FanoutKey(fk)) = &got[0].content.body else {
            panic!("expected a fan-out key")
        };
        let id: [u8; 16] = fk
            .packet
            .as_ref()
            .unwrap()
            .blob_id
            .as_slice()
            .try_into()
            .unwrap();
        let blob = relay.blobs[&id].clone();
        // A relay that alters the blob is caught; the stored key message stays as it was.
        let mut tampered = blob.clone();
        tampered[5] ^= 1;
        assert!(matches!(
            dev.engine.open_org_packet(got[0].seq, &tampered),
            Err(EngineError::Fanout(_))
        ));
        assert!(dev.engine.message(got[0].seq).unwrap().unwrap() == got[0]);
        let opened = dev.engine.open_org_packet(got[0].seq, &blob).unwrap();
        assert_eq!(text(&opened), "referral for the intake team");
        assert_eq!(opened.message_id, packet.message_id());
    }

    // Alice sends both B devices her contact card so they can answer.
    for device in &team {
        alice
            .engine
            .send_contact_card(*device, T0 + 8, &mut alice.rng)
            .unwrap();
    }
    alice.sync_caps(&mut relay, T0 + 8);
    alice.flush(&mut relay);
    b1.sync(&mut relay, T0 + 9);
    b2.sync(&mut relay, T0 + 9);

    // B's admin revokes B2 and distributes the new device list to Alice.
    let b2_id = b2.peer();
    b1.engine.revoke_device(b2_id.device_id, T0 + 10).unwrap();
    b1.engine
        .send_device_list(alice.peer(), T0 + 10, &mut b1.rng)
        .unwrap();
    b1.flush(&mut relay);
    let (got, _) = alice.sync(&mut relay, T0 + 11);
    assert!(matches!(got[0].content.body, Some(Body::DeviceList(_))));
    assert_eq!(
        alice.engine.org_devices(&b1.root(), T0 + 11).unwrap(),
        vec![b1.id()]
    );

    // The next packet reaches B1 only; B2 receives nothing new.
    let body = Body::Chat(wire::ChatMessage {
        text: "second referral".into(),
        attachments: vec![],
    });
    let packet = alice
        .engine
        .prepare_org_packet(&b1.root(), body, T0 + 12, &mut alice.rng)
        .unwrap();
    let blob_id = relay.blob_put(packet.ciphertext());
    let sent = alice
        .engine
        .send_fanout_keys(&packet, blob_id, "relay.test:4433", T0 + 12, &mut alice.rng)
        .unwrap();
    assert_eq!(sent.items.len(), 1);
    assert_eq!(sent.items[0].recipient, b1.id());
    alice.flush(&mut relay);
    assert!(b2.sync(&mut relay, T0 + 13).0.is_empty());
    assert_eq!(b1.sync(&mut relay, T0 + 13).0.len(), 1);
    // Direct messages to the revoked device are refused too.
    assert!(matches!(
        alice
            .engine
            .send_chat(b2_id, "x", vec![], T0 + 14, &mut alice.rng),
        Err(EngineError::Revoked)
    ));

    // And Alice refuses anything the revoked device still sends, without state change.
    b2.chat(alice.peer(), "still here", T0 + 15);
    b2.flush(&mut relay);
    let before = alice.snapshot();
    let recv = alice.engine.recv_id().unwrap();
    let queued = relay.fetch(recv);
    assert_eq!(queued.len(), 1);
    assert!(matches!(
        alice.engine.receive(&queued[0], T0 + 16, &mut alice.rng),
        Err(EngineError::CouldNotDecrypt)
    ));
    assert!(before == alice.snapshot());

    // The org profile published after the revocation lists B1 only.
    let profile = b1
        .engine
        .signed_org_profile(details, T0 + 17, &mut b1.rng)
        .unwrap();
    let verified = alice.engine.verify_org_profile(&profile, T0 + 17).unwrap();
    assert_eq!(verified.profile.intake.len(), 1);
}

#[test]
fn non_holders_cannot_enrol_and_fingerprints_are_stable() {
    let mut relay = SimRelay::default();
    let mut admin = Device::new_org(&mut relay, 31, "Admin");
    let mut member = Device::enrol(&mut relay, &mut admin, 32, Role::Ambassador, "Ambassador");
    let pk = DeviceKeys::generate(&mut TestRng::seeded(33)).public_keys();
    assert!(matches!(
        member.engine.enrol_device(&pk, Role::Caseworker, "", T0),
        Err(EngineError::NotOrgKeyHolder)
    ));
    assert!(matches!(
        member
            .engine
            .signed_org_profile(ProfileDetails::default(), T0, &mut TestRng::seeded(1)),
        Err(EngineError::NotAdmin)
    ));
    let fp = engine::org_fingerprint(&admin.root());
    assert_eq!(fp.len(), 6 * 5 + 5);
    assert_eq!(fp, engine::org_fingerprint(&member.root()));
    assert!(admin.engine.holds_org_key().unwrap());
    assert!(!member.engine.holds_org_key().unwrap());
    // The admin's state, including the root key, survives a restart.
    let mut admin = admin.restart();
    admin
        .engine
        .enrol_device(&pk, Role::Caseworker, "", T0)
        .unwrap();
}

#[test]
fn sled_profiles_survive_restart_mid_sync_exactly_once() {
    use handover_core::store::{Credential, KdfParams, Passphrase, SledStore};
    let cheap = || KdfParams::new(8, 1, 1).unwrap();
    let cred = |who: &str| Credential::from(Passphrase::from(format!("{who} passphrase")));
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("alice"), dir.path().join("bob"));
    let mut relay = SimRelay::default();

    let store = SledStore::create(&a_dir, &cred("alice"), cheap(), TestRng::seeded(100)).unwrap();
    let mut alice = Device::new_org_in(store, &mut relay, 101, "Alice");
    let store = SledStore::create(&b_dir, &cred("bob"), cheap(), TestRng::seeded(102)).unwrap();
    let mut bob = Device::new_org_in(store, &mut relay, 103, "Bob");
    alice.engine.trust_organisation(&bob.root()).unwrap();
    bob.engine.trust_organisation(&alice.root()).unwrap();
    let link = alice.invite(&mut relay, T0);
    let alice_id = bob.accept(&mut relay, &link, T0 + 1);
    alice.sync(&mut relay, T0 + 2);
    let bob_id = bob.peer();

    for i in 0..5 {
        alice.chat(bob_id, &format!("m{i}"), T0 + 10 + i);
    }
    alice.flush(&mut relay);

    // Bob processes three of five envelopes, acks none, and his process dies.
    let recv = bob.engine.recv_id().unwrap();
    let queued = relay.fetch(recv);
    assert_eq!(queued.len(), 5);
    for q in &queued[..3] {
        bob.engine.receive(q, T0 + 20, &mut bob.rng).unwrap();
    }
    let rng = bob.rng.clone();
    bob.engine.into_store().close().unwrap();
    let store = SledStore::open(&b_dir, &cred("bob"), TestRng::seeded(104)).unwrap();
    let mut bob = Device {
        engine: Engine::open(store).unwrap(),
        rng,
    };

    // After the restart every message is delivered once, in order.
    let (got, dups) = bob.sync(&mut relay, T0 + 21);
    assert_eq!(dups, 3);
    assert_eq!(got.len(), 2);
    let texts: Vec<String> = bob
        .engine
        .messages(0, T0)
        .unwrap()
        .iter()
        .filter(|m| matches!(m.content.body, Some(Body::Chat(_))))
        .map(|m| text(m).to_owned())
        .collect();
    assert_eq!(texts, ["m0", "m1", "m2", "m3", "m4"]);

    // And the reply path still works from the reopened store.
    bob.chat(alice_id, "all five", T0 + 22);
    bob.flush(&mut relay);
    let (got, _) = alice.sync(&mut relay, T0 + 23);
    assert_eq!(text(&got[0]), "all five");
    alice.engine.into_store().close().unwrap();
    bob.engine.into_store().close().unwrap();
}
