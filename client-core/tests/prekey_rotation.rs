//! Prekey rotation with a fake clock: the signed prekey and the last-resort ML-KEM prekey are
//! replaced weekly and published; a replaced pair still answers initial messages sealed before
//! the rotation, and is deleted once the longest envelope lifetime has passed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use handover_core::engine::{self, EngineError, Received};
use handover_core::pqxdh::{PREKEY_ROTATION_SECS, PrekeyBundle, RETIRED_PREKEY_LIFETIME_SECS};
use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use handover_proto::e2e::v1::content::Body;

mod engine_support;

use engine_support::*;

const WEEK: u64 = PREKEY_ROTATION_SECS;
const KEEP: u64 = RETIRED_PREKEY_LIFETIME_SECS;
const DAY: u64 = 24 * 3600;

/// An invitation from `bob` valid for 90 days, and the bundle an inviter's peer takes for it
/// now, stripped of one-time prekeys (so a session rests on the signed and last-resort keys).
fn invitation_and_bundle(
    relay: &mut SimRelay,
    bob: &mut Device,
    now: u64,
) -> (wire::Invitation, PrekeyBundle) {
    let inv = bob
        .engine
        .create_invitation(now + 90 * DAY, now, &mut bob.rng)
        .unwrap();
    bob.sync_caps(relay, now);
    let mut taken = relay.take(inv.address.as_ref().unwrap());
    taken.one_time_prekey.clear();
    taken.one_time_kem_prekey.clear();
    (inv, engine::bundle_from_result(&taken).unwrap())
}

#[test]
fn signed_and_last_resort_prekeys_rotate_weekly_and_are_published() {
    let mut relay = SimRelay::default();
    let mut bob = Device::new_org(&mut relay, 2, "Bob");
    let (spk0, kem0) = bob.engine.current_prekey_ids().unwrap().unwrap();

    // Not due yet: nothing to publish.
    assert!(
        bob.engine
            .rotate_prekeys(T0 + WEEK - 1, &mut bob.rng)
            .unwrap()
            .is_none()
    );
    assert_eq!(bob.engine.current_prekey_ids().unwrap(), Some((spk0, kem0)));

    // A week old: both are replaced, with fresh ids, and the new bundle is to be published.
    let publish = bob
        .engine
        .rotate_prekeys(T0 + WEEK, &mut bob.rng)
        .unwrap()
        .expect("rotation is due");
    let (spk1, kem1) = bob.engine.current_prekey_ids().unwrap().unwrap();
    assert!(spk1 != spk0 && spk1 != kem0 && kem1 != spk0 && kem1 != kem0 && spk1 != kem1);
    let bundle = decode::published_prekeys(&publish.bundle).unwrap();
    assert_eq!(bundle.signed_prekey.as_ref().unwrap().id, spk1);
    assert_eq!(bundle.last_resort_kem_prekey.as_ref().unwrap().id, kem1);
    assert!(publish.one_time_prekeys.is_empty() && publish.one_time_kem_prekeys.is_empty());
    let mut retired = bob.engine.retired_prekey_ids().unwrap();
    retired.sort_unstable();
    let mut expected = vec![spk0, kem0];
    expected.sort_unstable();
    assert_eq!(retired, expected);

    // Until the relay confirms it, the same bundle is offered again; then nothing.
    let again = bob
        .engine
        .rotate_prekeys(T0 + WEEK + 60, &mut bob.rng)
        .unwrap()
        .expect("unconfirmed publish is repeated");
    assert_eq!(again.bundle, publish.bundle);
    bob.engine.prekey_bundle_published(&again).unwrap();
    relay.publish(again);
    assert!(
        bob.engine
            .rotate_prekeys(T0 + WEEK + 120, &mut bob.rng)
            .unwrap()
            .is_none()
    );

    // The rotation and the kept keys survive a restart; the next rotation is a week later.
    let mut bob = bob.restart();
    assert_eq!(bob.engine.current_prekey_ids().unwrap(), Some((spk1, kem1)));
    assert_eq!(bob.engine.retired_prekey_ids().unwrap().len(), 2);
    assert!(
        bob.engine
            .rotate_prekeys(T0 + 2 * WEEK - 1, &mut bob.rng)
            .unwrap()
            .is_none()
    );
    assert!(
        bob.engine
            .rotate_prekeys(T0 + 2 * WEEK, &mut bob.rng)
            .unwrap()
            .is_some()
    );
    assert_eq!(bob.engine.retired_prekey_ids().unwrap().len(), 4);
}

#[test]
fn replaced_prekeys_answer_until_their_retention_ends_then_are_deleted() {
    let mut relay = SimRelay::default();
    let mut alice = Device::new_org(&mut relay, 1, "Alice");
    let mut carol = Device::new_org(&mut relay, 3, "Carol");
    let mut bob = Device::new_org(&mut relay, 2, "Bob");
    for peer in [&mut alice, &mut carol] {
        peer.engine.trust_organisation(&bob.root()).unwrap();
        bob.engine.trust_organisation(&peer.root()).unwrap();
        // Long envelopes, so only the prekey's deletion can refuse the late one below.
        peer.engine.set_envelope_ttl(90 * DAY);
    }
    let (spk0, kem0) = bob.engine.current_prekey_ids().unwrap().unwrap();
    // Both fetch Bob's bundle before his rotation.
    let (inv_a, bundle_a) = invitation_and_bundle(&mut relay, &mut bob, T0 + 1);
    let (inv_c, bundle_c) = invitation_and_bundle(&mut relay, &mut bob, T0 + 2);

    let rotated_at = T0 + WEEK;
    let publish = bob
        .engine
        .rotate_prekeys(rotated_at, &mut bob.rng)
        .unwrap()
        .unwrap();
    bob.engine.prekey_bundle_published(&publish).unwrap();
    relay.publish(publish);

    // Alice's initial message, made with the old keys, arrives after the rotation: accepted.
    alice
        .engine
        .accept_invitation(&inv_a, &bundle_a, rotated_at + 1, &mut alice.rng)
        .unwrap();
    alice.sync_caps(&mut relay, rotated_at + 1);
    alice.flush(&mut relay);
    let (got, _) = bob.sync(&mut relay, rotated_at + 2);
    assert_eq!(got.len(), 1);
    assert!(matches!(got[0].content.body, Some(Body::ContactCard(_))));

    // Carol's, made with the old keys too, is still in flight when their retention ends.
    carol
        .engine
        .accept_invitation(&inv_c, &bundle_c, rotated_at + KEEP - 1, &mut carol.rng)
        .unwrap();
    carol.sync_caps(&mut relay, rotated_at + KEEP - 1);
    carol.flush(&mut relay);
    let deleted_at = rotated_at + KEEP;
    bob.engine.rotate_prekeys(deleted_at, &mut bob.rng).unwrap();
    let retired = bob.engine.retired_prekey_ids().unwrap();
    assert!(
        !retired.contains(&spk0) && !retired.contains(&kem0),
        "the replaced keys must be deleted once their retention ended: {retired:?}"
    );
    let recv = bob.engine.recv_id().unwrap();
    let queued = relay.fetch(recv);
    assert_eq!(queued.len(), 1);
    let before = bob.snapshot();
    assert!(matches!(
        bob.engine.receive(&queued[0], deleted_at + 1, &mut bob.rng),
        Err(EngineError::CouldNotDecrypt)
    ));
    assert!(before == bob.snapshot());

    // A session set up with the current keys works as before.
    let (inv_new, bundle_new) = invitation_and_bundle(&mut relay, &mut bob, deleted_at + 2);
    relay.ack(recv, &[queued[0].envelope.clone().unwrap().envelope_id]);
    carol
        .engine
        .accept_invitation(&inv_new, &bundle_new, deleted_at + 3, &mut carol.rng)
        .unwrap();
    carol.flush(&mut relay);
    let fresh = relay.fetch(recv);
    let r = bob
        .engine
        .receive(&fresh[0], deleted_at + 4, &mut bob.rng)
        .unwrap();
    assert!(matches!(r, Received::Delivered(_)));
}
