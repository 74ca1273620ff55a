//! Sessions end to end through the deterministic harness: negative tests, forward secrecy,
//! post-compromise security, limits, persistence, and property tests over random schedules.

// Test helpers outside #[test] functions may unwrap too (clippy.toml only covers the tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use handover_core::identity::{DeviceKeys, Role};
use handover_core::ratchet::{
    MAX_RECEIVING_CHAINS, MAX_SKIP, MAX_SKIPPED_KEYS, SKIPPED_KEY_LIFETIME,
};
use handover_core::sealed::{self, MailboxSealingKey, SealError};
use handover_core::session::{OutgoingMessage, Session, SessionError, SessionPhase};
use handover_core::testing::{CERT_LIFETIME, HarnessError, Pair, Side, TestEnvelope, TestRng};
use handover_proto::e2e::v1 as wire;
use proptest::prelude::*;

fn snapshot(pair: &Pair, side: Side) -> Vec<u8> {
    pair.party(side)
        .session
        .as_ref()
        .unwrap()
        .to_secret_bytes()
        .to_vec()
}

fn is_opaque_failure(r: &Result<Vec<u8>, HarnessError>) -> bool {
    matches!(
        r,
        Err(HarnessError::Session(SessionError::CouldNotDecrypt))
            | Err(HarnessError::Seal(SealError::CouldNotDecrypt))
    )
}

/// Encrypts on the session directly (no sealing) and returns the ratchet message.
fn ratchet_message(pair: &mut Pair, from: Side, plaintext: &[u8]) -> wire::RatchetMessage {
    match pair
        .party_mut(from)
        .session
        .as_mut()
        .unwrap()
        .encrypt(plaintext)
        .unwrap()
    {
        OutgoingMessage::Ratchet(m) => m,
        OutgoingMessage::Prekey(p) => p.message.unwrap(),
    }
}

fn decrypt(pair: &mut Pair, to: Side, m: &wire::RatchetMessage) -> Result<Vec<u8>, SessionError> {
    let now = pair.now;
    let mut rng = pair.rng.clone();
    let result = pair
        .party_mut(to)
        .session
        .as_mut()
        .unwrap()
        .decrypt(m, now, &mut rng);
    pair.rng = rng;
    result
}

#[test]
fn setup_phases_and_repeated_prekey_messages() {
    let mut pair = Pair::new(1);
    pair.initiate().unwrap();
    let alice = |p: &Pair| p.party(Side::Alice).session.as_ref().unwrap().phase();
    assert_eq!(alice(&pair), SessionPhase::AwaitingReply);
    // Alice sends three initial messages before any reply; Bob gets them out of order.
    let e1 = pair.send(Side::Alice, b"one").unwrap();
    let e2 = pair.send(Side::Alice, b"two").unwrap();
    let e3 = pair.send(Side::Alice, b"three").unwrap();
    assert_eq!(pair.receive(Side::Bob, &e2).unwrap(), b"two");
    assert_eq!(pair.receive(Side::Bob, &e3).unwrap(), b"three");
    assert_eq!(pair.receive(Side::Bob, &e1).unwrap(), b"one");
    let r = pair.send(Side::Bob, b"reply").unwrap();
    assert_eq!(pair.receive(Side::Alice, &r).unwrap(), b"reply");
    assert_eq!(alice(&pair), SessionPhase::Established);
    let e4 = pair.send(Side::Alice, b"four").unwrap();
    assert_eq!(pair.receive(Side::Bob, &e4).unwrap(), b"four");
    // Both sides agree on the associated data.
    let ad_a = pair
        .party(Side::Alice)
        .session
        .as_ref()
        .unwrap()
        .associated_data();
    let ad_b = pair
        .party(Side::Bob)
        .session
        .as_ref()
        .unwrap()
        .associated_data();
    assert_eq!(ad_a, ad_b);
}

#[test]
fn replayed_initial_message_is_refused_after_session_is_gone() {
    let mut pair = Pair::new(2);
    pair.initiate().unwrap();
    let e1 = pair.send(Side::Alice, b"one").unwrap();
    pair.receive(Side::Bob, &e1).unwrap();
    // Bob loses the session (e.g. restored an old backup): the replay must not set up a new one.
    pair.party_mut(Side::Bob).session = None;
    assert!(is_opaque_failure(&pair.receive(Side::Bob, &e1)));
}

#[test]
fn tampered_envelope_header_ciphertext_and_aad_fail_and_leave_state() {
    let mut pair = Pair::established(3).unwrap();
    let env = pair.send(Side::Alice, b"secret").unwrap();
    let before = snapshot(&pair, Side::Bob);
    // Envelope bytes (HPKE enc, ciphertext, tag).
    for i in [0, 31, 32, 100, env.ciphertext.len() - 1] {
        let mut t = env.clone();
        t.ciphertext[i] ^= 0x01;
        assert!(is_opaque_failure(&pair.receive(Side::Bob, &t)));
    }
    // The relay changes envelope id or expiry (bound in the HPKE AAD).
    let mut t = env.clone();
    t.id[0] ^= 1;
    assert!(is_opaque_failure(&pair.receive(Side::Bob, &t)));
    let mut t = env.clone();
    t.expires_at += 1;
    assert!(is_opaque_failure(&pair.receive(Side::Bob, &t)));
    assert_eq!(snapshot(&pair, Side::Bob), before);
    assert_eq!(pair.receive(Side::Bob, &env).unwrap(), b"secret");

    // Ratchet level: header fields and ciphertext are authenticated.
    let m = ratchet_message(&mut pair, Side::Alice, b"inner");
    let before = snapshot(&pair, Side::Bob);
    let mut variants = Vec::new();
    let mut t = m.clone();
    t.message_number += 1;
    variants.push(t);
    let mut t = m.clone();
    t.previous_chain_length += 1;
    variants.push(t);
    let mut t = m.clone();
    t.ratchet_key[3] ^= 1;
    variants.push(t);
    let mut t = m.clone();
    t.ciphertext[0] ^= 1;
    variants.push(t);
    let mut t = m.clone();
    let last = t.ciphertext.len() - 1;
    t.ciphertext[last] ^= 0x80;
    variants.push(t);
    for v in &variants {
        assert_eq!(
            decrypt(&mut pair, Side::Bob, v),
            Err(SessionError::CouldNotDecrypt)
        );
        assert_eq!(
            snapshot(&pair, Side::Bob),
            before,
            "state changed after a failure"
        );
    }
    assert_eq!(decrypt(&mut pair, Side::Bob, &m).unwrap(), b"inner");
}

#[test]
fn wrong_session_associated_data_fails() {
    // A message from one session cannot be decrypted by another session (different AD/keys).
    let mut p1 = Pair::established(4).unwrap();
    let mut p2 = Pair::established(5).unwrap();
    let m = ratchet_message(&mut p1, Side::Alice, b"for p1");
    assert_eq!(
        decrypt(&mut p2, Side::Bob, &m),
        Err(SessionError::CouldNotDecrypt)
    );
}

#[test]
fn replay_is_refused_and_used_keys_are_gone() {
    let mut pair = Pair::established(6).unwrap();
    let e1 = pair.send(Side::Alice, b"m1").unwrap();
    let e2 = pair.send(Side::Alice, b"m2").unwrap();
    // Out of order: m2 first stores m1's key; m1 then uses and deletes it.
    assert_eq!(pair.receive(Side::Bob, &e2).unwrap(), b"m2");
    assert_eq!(
        pair.party(Side::Bob)
            .session
            .as_ref()
            .unwrap()
            .skipped_key_count(),
        1
    );
    assert_eq!(pair.receive(Side::Bob, &e1).unwrap(), b"m1");
    assert_eq!(
        pair.party(Side::Bob)
            .session
            .as_ref()
            .unwrap()
            .skipped_key_count(),
        0
    );
    let before = snapshot(&pair, Side::Bob);
    assert!(is_opaque_failure(&pair.receive(Side::Bob, &e1)));
    assert!(is_opaque_failure(&pair.receive(Side::Bob, &e2)));
    assert_eq!(snapshot(&pair, Side::Bob), before);
}

#[test]
fn skipped_key_limit() {
    let mut pair = Pair::established(7).unwrap();
    let msgs: Vec<_> = (0..=MAX_SKIP + 1)
        .map(|i| ratchet_message(&mut pair, Side::Alice, &i.to_be_bytes()))
        .collect();
    // Jumping more than MAX_SKIP ahead is refused without changing anything.
    let before = snapshot(&pair, Side::Bob);
    let too_far = &msgs[(MAX_SKIP + 1) as usize];
    assert_eq!(
        decrypt(&mut pair, Side::Bob, too_far),
        Err(SessionError::CouldNotDecrypt)
    );
    assert_eq!(snapshot(&pair, Side::Bob), before);
    // Exactly MAX_SKIP ahead is fine, and then everything skipped still decrypts.
    let at_limit = &msgs[MAX_SKIP as usize];
    assert!(decrypt(&mut pair, Side::Bob, at_limit).is_ok());
    assert_eq!(
        pair.party(Side::Bob)
            .session
            .as_ref()
            .unwrap()
            .skipped_key_count(),
        MAX_SKIP as usize
    );
    assert_eq!(
        decrypt(&mut pair, Side::Bob, &msgs[17]).unwrap(),
        17u32.to_be_bytes()
    );
    assert!(decrypt(&mut pair, Side::Bob, too_far).is_ok());
}

#[test]
fn total_skipped_keys_are_capped_oldest_first() {
    let mut pair = Pair::established(20).unwrap();
    let rounds = MAX_SKIPPED_KEYS / MAX_SKIP as usize + 1;
    let mut first_of_round = Vec::new();
    for _ in 0..rounds {
        let msgs: Vec<_> = (0..=MAX_SKIP)
            .map(|i| ratchet_message(&mut pair, Side::Alice, &i.to_be_bytes()))
            .collect();
        // Only the last arrives: MAX_SKIP keys are stored for this chain.
        decrypt(&mut pair, Side::Bob, msgs.last().unwrap()).unwrap();
        first_of_round.push(msgs[0].clone());
        let r = ratchet_message(&mut pair, Side::Bob, b"r");
        decrypt(&mut pair, Side::Alice, &r).unwrap();
    }
    assert_eq!(
        pair.party(Side::Bob)
            .session
            .as_ref()
            .unwrap()
            .skipped_key_count(),
        MAX_SKIPPED_KEYS
    );
    // The oldest chain's keys went first; the newest are still there.
    assert!(decrypt(&mut pair, Side::Bob, &first_of_round[0]).is_err());
    assert!(decrypt(&mut pair, Side::Bob, first_of_round.last().unwrap()).is_ok());
}

#[test]
fn skipped_keys_expire() {
    let mut pair = Pair::established(8).unwrap();
    let m0 = ratchet_message(&mut pair, Side::Alice, b"late");
    let m1 = ratchet_message(&mut pair, Side::Alice, b"first");
    assert!(decrypt(&mut pair, Side::Bob, &m1).is_ok());
    pair.now += SKIPPED_KEY_LIFETIME;
    let now = pair.now;
    let session = pair.party_mut(Side::Bob).session.as_mut().unwrap();
    session.expire_skipped_keys(now);
    assert_eq!(session.skipped_key_count(), 0);
    assert_eq!(
        decrypt(&mut pair, Side::Bob, &m0),
        Err(SessionError::CouldNotDecrypt)
    );
}

#[test]
fn old_receiving_chains_are_dropped() {
    let mut pair = Pair::established(9).unwrap();
    let mut lost = Vec::new();
    // Each round: Alice sends a message that is delayed, then one that arrives, then Bob
    // replies (a DH ratchet step each way). The delayed messages stay as skipped keys.
    for round in 0..(MAX_RECEIVING_CHAINS + 2) {
        lost.push(ratchet_message(&mut pair, Side::Alice, &[round as u8]));
        let m = ratchet_message(&mut pair, Side::Alice, b"x");
        decrypt(&mut pair, Side::Bob, &m).unwrap();
        let r = ratchet_message(&mut pair, Side::Bob, b"y");
        decrypt(&mut pair, Side::Alice, &r).unwrap();
    }
    // The oldest chains' keys were deleted; the newest MAX_RECEIVING_CHAINS remain.
    assert_eq!(
        pair.party(Side::Bob)
            .session
            .as_ref()
            .unwrap()
            .skipped_key_count(),
        MAX_RECEIVING_CHAINS
    );
    assert!(decrypt(&mut pair, Side::Bob, &lost[0]).is_err());
    assert!(decrypt(&mut pair, Side::Bob, &lost[1]).is_err());
    assert_eq!(
        decrypt(&mut pair, Side::Bob, lost.last().unwrap()).unwrap(),
        [(MAX_RECEIVING_CHAINS + 1) as u8]
    );
}

#[test]
fn forward_secrecy_captured_state_cannot_read_earlier_messages() {
    let mut pair = Pair::established(10).unwrap();
    let m1 = ratchet_message(&mut pair, Side::Alice, b"before");
    assert!(decrypt(&mut pair, Side::Bob, &m1).is_ok());
    // Compromise after receipt: the used key is gone.
    let stolen = Session::from_secret_bytes(&snapshot(&pair, Side::Bob)).unwrap();
    let mut stolen = stolen;
    let mut rng = TestRng::seeded(99);
    assert_eq!(
        stolen.decrypt(&m1, pair.now, &mut rng),
        Err(SessionError::CouldNotDecrypt)
    );
}

#[test]
fn post_compromise_security_heals_after_dh_ratchet() {
    let mut pair = Pair::established(11).unwrap();
    // The attacker copies Alice's whole state at time T and follows the conversation passively
    // (it sees every ciphertext but cannot inject).
    let mut attacker = Session::from_secret_bytes(&snapshot(&pair, Side::Alice)).unwrap();
    let mut attacker_rng = TestRng::seeded(1234);
    // Until Alice generates a fresh ratchet key, the stolen state reads what Bob sends
    // (expected: Bob's new keys are combined with Alice's stolen one).
    let m1 = ratchet_message(&mut pair, Side::Bob, b"same chain");
    assert!(attacker.decrypt(&m1, pair.now, &mut attacker_rng).is_ok());
    assert!(decrypt(&mut pair, Side::Alice, &m1).is_ok());
    let m2 = ratchet_message(&mut pair, Side::Alice, b"a");
    assert!(decrypt(&mut pair, Side::Bob, &m2).is_ok());
    let m3 = ratchet_message(&mut pair, Side::Bob, b"new bob key");
    assert!(attacker.decrypt(&m3, pair.now, &mut attacker_rng).is_ok());
    // Alice's DH ratchet step on m3 creates a key the attacker does not have.
    assert!(decrypt(&mut pair, Side::Alice, &m3).is_ok());
    let m4 = ratchet_message(&mut pair, Side::Alice, b"fresh alice key");
    assert!(decrypt(&mut pair, Side::Bob, &m4).is_ok());
    let m5 = ratchet_message(&mut pair, Side::Bob, b"healed");
    assert_eq!(
        attacker.decrypt(&m5, pair.now, &mut attacker_rng),
        Err(SessionError::CouldNotDecrypt)
    );
    assert_eq!(decrypt(&mut pair, Side::Alice, &m5).unwrap(), b"healed");
}

#[test]
fn wrong_recipient_cannot_open() {
    let mut pair = Pair::established(12).unwrap();
    let env = pair.send(Side::Alice, b"for bob").unwrap();
    let mut rng = TestRng::seeded(5);
    let carol = MailboxSealingKey::generate(&mut rng);
    assert_eq!(
        sealed::open(&carol, &env.id, env.expires_at, &env.ciphertext),
        Err(SealError::CouldNotDecrypt)
    );
    // Alice's own mailbox key cannot open it either.
    let alice_key = &pair.party(Side::Alice).mailbox;
    assert!(sealed::open(alice_key, &env.id, env.expires_at, &env.ciphertext).is_err());
}

#[test]
fn revoked_sender_is_refused() {
    let mut pair = Pair::established(13).unwrap();
    let alice_cert = pair.party(Side::Alice).certificate.clone();
    let alice_id = pair.party(Side::Alice).keys.device_id();
    let list = pair
        .party(Side::Alice)
        .org
        .sign_device_list(1, pair.now, vec![], &[alice_id]);
    let _ = alice_cert;
    pair.party_mut(Side::Bob)
        .peer_trust
        .apply_device_list(&list)
        .unwrap();
    let env = pair.send(Side::Alice, b"after revocation").unwrap();
    let before = snapshot(&pair, Side::Bob);
    assert!(is_opaque_failure(&pair.receive(Side::Bob, &env)));
    assert_eq!(snapshot(&pair, Side::Bob), before);
}

#[test]
fn expired_sender_certificate_is_refused() {
    let mut pair = Pair::established(14).unwrap();
    let env = pair.send(Side::Alice, b"late").unwrap();
    pair.now += CERT_LIFETIME + 1;
    assert!(is_opaque_failure(&pair.receive(Side::Bob, &env)));
}

#[test]
fn sender_certificate_must_match_session_identity() {
    let mut pair = Pair::established(15).unwrap();
    // Another valid device of Alice's organisation cannot speak in Alice's session.
    let mut rng = TestRng::seeded(77);
    let mallory = DeviceKeys::generate(&mut rng);
    let now = pair.now;
    let mallory_cert = pair
        .party(Side::Alice)
        .org
        .issue_certificate(
            &mallory.public_keys(),
            Role::Caseworker,
            now - 1,
            now + 1000,
            "m",
        )
        .unwrap();
    let m = ratchet_message(&mut pair, Side::Alice, b"hi");
    let sealed_msg = OutgoingMessage::Ratchet(m).into_sealed(mallory_cert);
    let bob_key = pair.party(Side::Bob).mailbox.public_key();
    let id = [9u8; 16];
    let ct = sealed::seal(&bob_key, &sealed_msg, &id, now + 100, &mut rng).unwrap();
    let env = TestEnvelope {
        id,
        expires_at: now + 100,
        ciphertext: ct,
    };
    assert!(is_opaque_failure(&pair.receive(Side::Bob, &env)));
}

#[test]
fn bad_prekey_signatures_and_certificates_are_refused() {
    let mut pair = Pair::new(16);
    let bundle = pair.bob_bundle().unwrap();
    let now = pair.now;
    let alice = pair.party(Side::Alice);
    let try_bundle = |b: &handover_core::pqxdh::PrekeyBundle| {
        let mut rng = TestRng::seeded(1);
        Session::initiate(
            &alice.keys,
            &alice.certificate,
            &alice.peer_trust,
            b,
            now,
            &mut rng,
        )
        .map(|_| ())
    };
    assert!(try_bundle(&bundle).is_ok());
    let mut b = bundle.clone();
    b.signed_prekey.signature[0] ^= 1;
    assert_eq!(try_bundle(&b), Err(SessionError::BadPrekeySignature));
    let mut b = bundle.clone();
    b.signed_prekey.public_key[0] ^= 1;
    assert_eq!(try_bundle(&b), Err(SessionError::BadPrekeySignature));
    let mut b = bundle.clone();
    b.kem_prekey.signature[10] ^= 1;
    assert_eq!(try_bundle(&b), Err(SessionError::BadPrekeySignature));
    let mut b = bundle.clone();
    b.kem_prekey.public_key[100] ^= 1;
    assert_eq!(try_bundle(&b), Err(SessionError::BadPrekeySignature));
    let mut b = bundle.clone();
    b.signed_prekey.id += 1;
    assert_eq!(try_bundle(&b), Err(SessionError::BadPrekeySignature));
    let mut b = bundle.clone();
    b.certificate.signature[0] ^= 1;
    assert!(matches!(try_bundle(&b), Err(SessionError::Certificate(_))));
    // A bundle of Alice's own org device, not Bob's, fails the trust check for Bob's org.
    let mut b = bundle.clone();
    b.certificate = alice.certificate.clone();
    assert!(matches!(try_bundle(&b), Err(SessionError::Certificate(_))));
}

#[test]
fn session_state_round_trips() {
    let mut pair = Pair::established(17).unwrap();
    let e = pair.send(Side::Alice, b"x").unwrap();
    let _skipped = pair.send(Side::Alice, b"y").unwrap();
    let e3 = pair.send(Side::Alice, b"z").unwrap();
    pair.receive(Side::Bob, &e3).unwrap();
    for side in [Side::Alice, Side::Bob] {
        let bytes = snapshot(&pair, side);
        let back = Session::from_secret_bytes(&bytes).unwrap();
        assert_eq!(back.to_secret_bytes().to_vec(), bytes);
        pair.party_mut(side).session = Some(back);
        assert!(Session::from_secret_bytes(&bytes[..bytes.len() - 1]).is_err());
    }
    assert_eq!(pair.receive(Side::Bob, &e).unwrap(), b"x");
    let r = pair.send(Side::Bob, b"r").unwrap();
    assert_eq!(pair.receive(Side::Alice, &r).unwrap(), b"r");
}

#[test]
fn content_round_trip() {
    let mut pair = Pair::established(18).unwrap();
    let content = wire::Content {
        message_id: vec![1; 16],
        sent_at: pair.now,
        expires_at: 0,
        body: Some(wire::content::Body::Chat(wire::ChatMessage {
            text: "hello".into(),
            attachments: vec![],
        })),
    };
    let now = pair.now;
    let out = pair
        .party_mut(Side::Alice)
        .session
        .as_mut()
        .unwrap()
        .encrypt_content(&content)
        .unwrap();
    let OutgoingMessage::Ratchet(m) = out else {
        panic!("expected a ratchet message")
    };
    let mut rng = TestRng::seeded(3);
    let got = pair
        .party_mut(Side::Bob)
        .session
        .as_mut()
        .unwrap()
        .decrypt_content(&m, now, &mut rng)
        .unwrap();
    assert_eq!(got, content);
}

#[test]
fn debug_output_has_no_secrets() {
    let pair = Pair::established(19).unwrap();
    let s = pair.party(Side::Alice).session.as_ref().unwrap();
    let dbg = format!("{s:?}");
    let bytes = s.to_secret_bytes();
    // The root key is at a fixed offset of the layout (after 1+64+32+32+16+32+1 bytes).
    let root_key = &bytes[178..210];
    let as_dbg = format!("{root_key:?}");
    assert!(!dbg.contains(&as_dbg[1..as_dbg.len() - 1]));
    assert!(!format!("{:?}", pair.party(Side::Bob).mailbox).contains("secret"));
}

// ---------------------------------------------------------------------------------------------
// Property tests.

#[derive(Clone, Debug)]
enum Event {
    Send(Side),
    Deliver { to: Side, pick: usize },
    Duplicate { to: Side, pick: usize },
    Drop { to: Side, pick: usize },
    Tick(u32),
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Alice), Just(Side::Bob)]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => side().prop_map(Event::Send),
        4 => (side(), any::<usize>()).prop_map(|(to, pick)| Event::Deliver { to, pick }),
        1 => (side(), any::<usize>()).prop_map(|(to, pick)| Event::Duplicate { to, pick }),
        1 => (side(), any::<usize>()).prop_map(|(to, pick)| Event::Drop { to, pick }),
        1 => (0u32..3600).prop_map(Event::Tick),
    ]
}

struct InFlight {
    envelope: TestEnvelope,
    plaintext: Vec<u8>,
    delivered: bool,
}

fn run(seed: u64, events: &[Event], in_order: bool) -> Result<(), TestCaseError> {
    let mut pair = Pair::new(seed);
    pair.initiate()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    // queues[i]: messages travelling to side i.
    let mut queues: [Vec<InFlight>; 2] = [Vec::new(), Vec::new()];
    let idx = |s: Side| if s == Side::Alice { 0 } else { 1 };
    let mut counter = 0u32;
    for ev in events {
        match ev {
            Event::Send(from) => {
                counter += 1;
                let plaintext = format!("{from:?} {counter}").into_bytes();
                match pair.send(*from, &plaintext) {
                    Ok(envelope) => queues[idx(from.other())].push(InFlight {
                        envelope,
                        plaintext,
                        delivered: false,
                    }),
                    // Bob has no session before the first message arrives.
                    Err(HarnessError::NoSession) => prop_assert_eq!(*from, Side::Bob),
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
            Event::Deliver { to, pick } | Event::Duplicate { to, pick } => {
                let q = &mut queues[idx(*to)];
                if q.is_empty() {
                    continue;
                }
                let i = if in_order {
                    q.iter().position(|m| !m.delivered).unwrap_or(0)
                } else {
                    pick % q.len()
                };
                let was_delivered = q[i].delivered;
                let result = pair.receive(*to, &q[i].envelope);
                if was_delivered {
                    prop_assert!(result.is_err(), "a message decrypted twice");
                } else {
                    match result {
                        Ok(p) => prop_assert_eq!(&p, &q[i].plaintext),
                        Err(e) => {
                            prop_assert!(!in_order, "in-order delivery failed: {e}");
                            prop_assert!(is_opaque_failure(&Err(e)));
                        }
                    }
                }
                q[i].delivered = true;
                if matches!(ev, Event::Deliver { .. }) {
                    q.remove(i);
                }
            }
            Event::Drop { to, pick } => {
                let q = &mut queues[idx(*to)];
                if !q.is_empty() && !in_order {
                    let i = pick % q.len();
                    q.remove(i);
                }
            }
            Event::Tick(s) => pair.now += u64::from(*s),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random interleavings, reordering, drops and duplicates: every first delivery yields the
    /// exact plaintext or a clean opaque error; no message decrypts twice.
    #[test]
    fn random_schedules(seed in any::<u64>(), events in prop::collection::vec(event(), 1..48)) {
        run(seed, &events, false)?;
    }

    /// Arbitrary interleaving of the two directions, each delivered in order (duplicates
    /// allowed): everything decrypts.
    #[test]
    fn in_order_per_direction_always_decrypts(
        seed in any::<u64>(),
        events in prop::collection::vec(event(), 1..48),
    ) {
        run(seed, &events, true)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The fuzz target's driver on random inputs.
    #[test]
    fn fuzz_driver_holds_invariants(data in prop::collection::vec(any::<u8>(), 0..96)) {
        handover_core::testing::drive_events(&data);
    }
}

#[test]
fn certificate_swap_with_the_same_identity_key_cannot_decrypt() {
    // The session's associated data binds both certificates (docs/PROTOCOL.md §6): Alice sets
    // up the session under her caseworker certificate, then her organisation re-certifies the
    // same keys as an admin and her initial message carries that certificate. Bob verifies it
    // (it is valid and carries the identity key of the message) but computes a different AD,
    // so nothing decrypts.
    let mut pair = Pair::new(41);
    pair.initiate().unwrap();
    let alice = pair.party_mut(Side::Alice);
    let original = alice.certificate.clone();
    let admin = alice
        .org
        .issue_certificate(
            &alice.keys.public_keys(),
            Role::Admin,
            handover_core::testing::START_TIME - 60,
            handover_core::testing::START_TIME + CERT_LIFETIME,
            "harness device",
        )
        .unwrap();
    alice.certificate = admin;
    let swapped = pair.send(Side::Alice, b"as admin").unwrap();
    assert!(is_opaque_failure(&pair.receive(Side::Bob, &swapped)));
    assert!(pair.party(Side::Bob).session.is_none());
    // The certificate the session was set up with still works: the failure was the swap.
    pair.party_mut(Side::Alice).certificate = original;
    let env = pair.send(Side::Alice, b"as caseworker").unwrap();
    assert_eq!(pair.receive(Side::Bob, &env).unwrap(), b"as caseworker");
}
