//! Peer identity through the engine (docs/PROTOCOL.md §5.5, §6.3): an identity key change is
//! surfaced and drops the verified mark, nothing is released to a device whose certificate or
//! session is not the listed one, a demoted admin's old certificate is refused, and
//! simultaneous initiation loses no message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod engine_support;

use engine_support::*;
use handover_core::engine::{self, EngineError, IdentitySetup, ProfileDetails};
use handover_core::identity::{CertificateError, DeviceKeys, Role};
use handover_core::testing::TestRng;
use handover_proto::e2e::v1 as wire;
use handover_proto::e2e::v1::content::Body;

fn contact(dev: &Device, peer: engine::PeerId) -> engine::Contact {
    dev.engine
        .contacts()
        .unwrap()
        .into_iter()
        .find(|c| c.peer() == peer)
        .unwrap()
}

/// New keys for an existing device id (the device was re-installed and re-enrolled).
fn keys_with_id(seed: u64, of: &Device) -> (DeviceKeys, TestRng) {
    let mut rng = TestRng::seeded(seed);
    let mut secret = DeviceKeys::generate(&mut rng).to_secret_bytes().to_vec();
    secret[1..17].copy_from_slice(&of.id().0);
    (DeviceKeys::from_secret_bytes(&secret).unwrap(), rng)
}

/// Alice (org A) and Bob (caseworker of org B, whose admin is returned too), connected through
/// Bob's invitation.
fn alice_and_bob(relay: &mut SimRelay) -> (Device, Device, Device) {
    let mut alice = Device::new_org(relay, 1, "Alice");
    let mut b_admin = Device::new_org(relay, 2, "B admin");
    let mut bob = Device::enrol(relay, &mut b_admin, 3, Role::Caseworker, "Bob");
    alice.engine.trust_organisation(&bob.root()).unwrap();
    bob.engine.trust_organisation(&alice.root()).unwrap();
    let link = bob.invite(relay, T0);
    alice.accept(relay, &link, T0 + 1);
    bob.sync(relay, T0 + 2);
    (alice, bob, b_admin)
}

#[test]
fn an_identity_key_change_is_surfaced_and_drops_the_verified_mark() {
    let mut relay = SimRelay::default();
    let (mut alice, bob, mut b_admin) = alice_and_bob(&mut relay);
    let number = bob.engine.safety_number(alice.peer(), T0 + 3).unwrap();
    alice
        .engine
        .mark_contact_verified(bob.peer(), &number.digits(), T0 + 3)
        .unwrap();
    assert!(contact(&alice, bob.peer()).verified);
    assert!(!contact(&alice, bob.peer()).identity_changed);

    // Bob's device is re-installed: same device id, new identity key, re-enrolled by B.
    let (keys, rng) = keys_with_id(30, &bob);
    let (certificate, device_list) = b_admin
        .engine
        .enrol_device(&keys.public_keys(), Role::Caseworker, "Bob", T0 + 4)
        .unwrap();
    alice.engine.apply_device_list(&device_list).unwrap();
    let identity = IdentitySetup::Enrolled {
        certificate,
        device_list,
    };
    let mut bob2 = Device::create(&mut relay, keys, identity, "Bob", rng);
    bob2.engine.trust_organisation(&alice.root()).unwrap();
    assert_eq!(bob2.peer(), bob.peer());
    let link = alice.invite(&mut relay, T0 + 5);
    bob2.accept(&mut relay, &link, T0 + 5);
    let (got, _) = alice.sync(&mut relay, T0 + 6);
    assert_eq!(got.len(), 1);

    // Same peer, new identity key: surfaced, no longer verified.
    let c = contact(&alice, bob.peer());
    assert!(c.identity_changed);
    assert!(!c.verified);
    // The mark stays gone across a restart.
    let mut alice = alice.restart();
    let c = contact(&alice, bob.peer());
    assert!(c.identity_changed && !c.verified);
    // Acknowledging clears the warning but does not verify.
    alice
        .engine
        .acknowledge_identity_change(bob.peer())
        .unwrap();
    let c = contact(&alice, bob.peer());
    assert!(!c.identity_changed && !c.verified);
    // Verifying the new safety number verifies again.
    let number = bob2.engine.safety_number(alice.peer(), T0 + 7).unwrap();
    alice
        .engine
        .mark_contact_verified(bob.peer(), &number.digits(), T0 + 7)
        .unwrap();
    assert!(contact(&alice, bob.peer()).verified);
}

#[test]
fn nothing_is_released_to_a_contact_that_is_not_the_listed_device() {
    let mut relay = SimRelay::default();
    let (mut alice, bob, mut b_admin) = alice_and_bob(&mut relay);
    alice.chat(bob.peer(), "before", T0 + 3);
    // B re-certifies Bob's device id with other keys; Alice learns the new list, but her
    // contact record and session are still those of the old keys.
    let (keys, _) = keys_with_id(31, &bob);
    let (_, device_list) = b_admin
        .engine
        .enrol_device(&keys.public_keys(), Role::Caseworker, "Bob", T0 + 4)
        .unwrap();
    alice.engine.apply_device_list(&device_list).unwrap();
    let before = alice.snapshot();
    let err = alice
        .engine
        .send_chat(bob.peer(), "after", vec![], T0 + 5, &mut alice.rng)
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::NotListed | EngineError::Certificate(CertificateError::NotListed)
        ),
        "{err:?}"
    );
    let err = alice
        .engine
        .send(
            bob.peer(),
            Body::Chat(wire::ChatMessage::default()),
            T0 + 5,
            &mut alice.rng,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        EngineError::NotListed | EngineError::Certificate(CertificateError::NotListed)
    ));
    assert!(before == alice.snapshot(), "a refused send changes nothing");
}

#[test]
fn a_demoted_admins_old_certificate_is_refused() {
    let mut relay = SimRelay::default();
    let mut alice = Device::new_org(&mut relay, 5, "Alice");
    let mut b_admin = Device::new_org(&mut relay, 6, "B admin");
    let mut deputy = Device::enrol(&mut relay, &mut b_admin, 7, Role::Admin, "Deputy");
    alice.engine.trust_organisation(&deputy.root()).unwrap();
    deputy.engine.trust_organisation(&alice.root()).unwrap();
    let link = alice.invite(&mut relay, T0);
    deputy.accept(&mut relay, &link, T0 + 1);
    assert_eq!(alice.sync(&mut relay, T0 + 2).0.len(), 1);

    // B demotes the deputy: same keys, caseworker certificate, new list.
    let keys = deputy.engine.device_public_keys().unwrap();
    let (_, list) = b_admin
        .engine
        .enrol_device(&keys, Role::Caseworker, "Deputy", T0 + 3)
        .unwrap();
    alice.engine.apply_device_list(&list).unwrap();
    // The deputy still presents its admin certificate: refused, nothing changes.
    deputy.chat(alice.peer(), "acting as admin", T0 + 4);
    deputy.flush(&mut relay);
    let before = alice.snapshot();
    let queued = relay.fetch(alice.engine.recv_id().unwrap());
    assert_eq!(queued.len(), 1);
    assert!(matches!(
        alice.engine.receive(&queued[0], T0 + 5, &mut alice.rng),
        Err(EngineError::CouldNotDecrypt)
    ));
    assert!(before == alice.snapshot());
}

#[test]
fn simultaneous_initiation_loses_no_message() {
    let mut relay = SimRelay::default();
    let mut alice = Device::new_org(&mut relay, 8, "Alice");
    let mut bob = Device::new_org(&mut relay, 9, "Bob");
    // Each imports the other's directory profile: contacts with addresses, no sessions.
    let publish = |from: &mut Device, relay: &mut SimRelay| {
        let details = ProfileDetails {
            name: "Org".into(),
            ..Default::default()
        };
        let profile = from
            .engine
            .signed_org_profile(details, T0, &mut from.rng)
            .unwrap();
        from.sync_caps(relay, T0);
        profile
    };
    let alice_profile = publish(&mut alice, &mut relay);
    let bob_profile = publish(&mut bob, &mut relay);
    alice.engine.trust_organisation(&bob.root()).unwrap();
    alice.engine.import_org_profile(&bob_profile, T0).unwrap();
    bob.engine.trust_organisation(&alice.root()).unwrap();
    bob.engine.import_org_profile(&alice_profile, T0).unwrap();
    // Both start a session and send before either hears from the other.
    let (alice_peer, bob_peer) = (alice.peer(), bob.peer());
    for (from, to) in [(&mut alice, bob_peer), (&mut bob, alice_peer)] {
        let address = from.engine.contact_address(to).unwrap();
        let bundle = engine::bundle_from_result(&relay.take(&address)).unwrap();
        from.engine
            .start_session(to, &bundle, T0 + 1, &mut from.rng)
            .unwrap();
        from.engine
            .send_contact_card(to, T0 + 1, &mut from.rng)
            .unwrap();
        from.sync_caps(&mut relay, T0 + 1);
    }
    alice.chat(bob.peer(), "a1", T0 + 2);
    bob.chat(alice.peer(), "b1", T0 + 2);
    alice.flush(&mut relay);
    bob.flush(&mut relay);
    // Alice's second message is sent after she answered Bob's session, but before Bob's
    // first reply on hers arrives; it is in flight together with her first ones.
    assert_eq!(alice.sync(&mut relay, T0 + 3).0.len(), 2);
    alice.chat(bob.peer(), "a2", T0 + 4);
    alice.flush(&mut relay);
    assert_eq!(bob.sync(&mut relay, T0 + 5).0.len(), 3);
    // And the conversation goes on both ways.
    for i in 0..3 {
        bob.chat(alice.peer(), &format!("b{}", i + 2), T0 + 6 + i);
        bob.flush(&mut relay);
        assert_eq!(alice.sync(&mut relay, T0 + 6 + i).0.len(), 1);
        alice.chat(bob.peer(), &format!("a{}", i + 3), T0 + 6 + i);
        alice.flush(&mut relay);
        assert_eq!(bob.sync(&mut relay, T0 + 6 + i).0.len(), 1);
    }
}

#[test]
fn profiles_written_before_peer_keys_are_migrated_at_open() {
    use handover_core::store::{KvStore, Namespace};
    let mut relay = SimRelay::default();
    let (mut alice, mut bob, _) = alice_and_bob(&mut relay);
    let number = bob.engine.safety_number(alice.peer(), T0 + 3).unwrap();
    alice
        .engine
        .mark_contact_verified(bob.peer(), &number.digits(), T0 + 3)
        .unwrap();
    // Rewrite Alice's store in the layout before peer keys: contact, verified mark and
    // session keyed by the 16-byte device id alone.
    let store = alice.engine.store_mut();
    let mut legacy = 0;
    for (ns, prefix) in [
        (Namespace::Contacts, &b"dev/"[..]),
        (Namespace::Contacts, &b"ver/"[..]),
        (Namespace::Sessions, &b""[..]),
    ] {
        for (k, v) in store.scan_prefix(ns, prefix).unwrap() {
            if k.len() != prefix.len() + 48 {
                continue;
            }
            let old = [prefix, &k[prefix.len() + 32..]].concat();
            store.delete(ns, &k).unwrap();
            store.put(ns, &old, &v).unwrap();
            legacy += 1;
        }
    }
    assert_eq!(legacy, 3);
    let mut alice = alice.restart();
    let c = contact(&alice, bob.peer());
    assert!(c.has_session && c.has_address && c.verified && !c.identity_changed);
    // The session still works both ways.
    alice.chat(bob.peer(), "after the migration", T0 + 4);
    alice.flush(&mut relay);
    assert_eq!(bob.sync(&mut relay, T0 + 5).0.len(), 1);
    bob.chat(alice.peer(), "got it", T0 + 6);
    bob.flush(&mut relay);
    assert_eq!(alice.sync(&mut relay, T0 + 7).0.len(), 1);
    // Nothing is left in the old layout.
    let after = alice.engine.store();
    assert!(
        after
            .scan_prefix(Namespace::Sessions, b"")
            .unwrap()
            .iter()
            .all(|(k, _)| k.len() != 16)
    );
}
