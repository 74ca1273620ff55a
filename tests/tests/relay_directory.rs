//! Membership, directory and concurrent prekey takes over real QUIC (relay as a process).

// Test code: helpers outside #[test] functions may unwrap and panic too (clippy.toml allows
// it only inside test functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::path::Path;

use ed25519_dalek::{Signer, SigningKey};
use handover_proto::e2e::v1 as e2e;
use handover_proto::relay::v1 as wire;
use handover_tests::client::{Client, ErrorCode, Kind, error_code, unix_now};
use handover_tests::process::RelayProcess;
use prost::Message;
use wire::response::Kind as R;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_relay-under-test"))
}

fn certificate(root: &SigningKey, device: &SigningKey, role: e2e::Role) -> Vec<u8> {
    let now = unix_now();
    let cert = e2e::DeviceCertificate {
        org_root_key: root.verifying_key().to_bytes().to_vec(),
        device_id: vec![1; 16],
        signing_key: device.verifying_key().to_bytes().to_vec(),
        identity_key: vec![2; 32],
        role: role as i32,
        not_before: now - 60,
        not_after: now + 3600,
        label: "intake laptop".into(),
    }
    .encode_to_vec();
    let signature = root
        .sign(&[b"handover/1 device-cert".as_slice(), &cert].concat())
        .to_bytes()
        .to_vec();
    e2e::SignedDeviceCertificate {
        certificate: cert,
        signature,
    }
    .encode_to_vec()
}

async fn member_auth(client: &Client, device: &SigningKey, cert: Vec<u8>) -> wire::Response {
    let exporter = client
        .exporter(b"EXPORTER-handover/1 member-auth", &[])
        .unwrap();
    let signature = device
        .sign(&[b"handover/1 member-auth".as_slice(), &exporter].concat())
        .to_bytes()
        .to_vec();
    client
        .call(Kind::MemberAuth(wire::MemberAuth {
            device_certificate: cert,
            signature,
        }))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_is_for_admitted_members_only() {
    // Bounded: a hung relay fails the test instead of hanging the suite.
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        directory_is_for_admitted_members_only_scenario(),
    )
    .await
    .expect("test timed out");
}

async fn directory_is_for_admitted_members_only_scenario() {
    let mut rng = rand::rng();
    let root = SigningKey::generate(&mut rng);
    let stranger_root = SigningKey::generate(&mut rng);
    let admin = SigningKey::generate(&mut rng);
    let dir = tempfile::tempdir().unwrap();
    let org_hex = hex::encode(root.verifying_key().to_bytes());
    let relay = RelayProcess::start(bin(), dir.path(), &["--admit-org", &org_hex]).unwrap();

    let public = Client::connect(relay.addr, relay.pin).await.unwrap();
    let query = || Kind::DirectoryQuery(wire::DirectoryQuery::default());
    assert_eq!(
        error_code(&public.call(query()).await.unwrap()),
        Some(ErrorCode::Unauthorised)
    );
    // A certificate from an organisation the relay does not admit.
    let foreign = certificate(&stranger_root, &admin, e2e::Role::Admin);
    assert_eq!(
        error_code(&member_auth(&public, &admin, foreign).await),
        Some(ErrorCode::Unauthorised)
    );

    let cert = certificate(&root, &admin, e2e::Role::Admin);
    let member = Client::connect(relay.addr, relay.pin).await.unwrap();
    // A member-auth signature made for another connection is refused.
    let exporter = public
        .exporter(b"EXPORTER-handover/1 member-auth", &[])
        .unwrap();
    let replayed = admin
        .sign(&[b"handover/1 member-auth".as_slice(), &exporter].concat())
        .to_bytes()
        .to_vec();
    let r = member
        .call(Kind::MemberAuth(wire::MemberAuth {
            device_certificate: cert.clone(),
            signature: replayed,
        }))
        .await
        .unwrap();
    assert_eq!(error_code(&r), Some(ErrorCode::Unauthorised));
    let r = member_auth(&member, &admin, cert.clone()).await;
    assert!(matches!(r.kind, Some(R::Ok(_))), "{r:?}");

    let profile = e2e::OrgProfile {
        org_root_key: root.verifying_key().to_bytes().to_vec(),
        name: "Northside Refuge".into(),
        services: vec!["refuge".into()],
        languages: vec!["en".into(), "pl".into()],
        regions: vec!["GB-MAN".into()],
        device_list: Some(e2e::SignedDeviceList {
            list: b"device list".to_vec(),
            signature: root
                .sign(b"handover/1 device-listdevice list")
                .to_bytes()
                .to_vec(),
        }),
        issued_at: unix_now(),
        ..Default::default()
    }
    .encode_to_vec();
    let signed = e2e::SignedOrgProfile {
        signature: admin
            .sign(&[b"handover/1 org-profile".as_slice(), &profile].concat())
            .to_bytes()
            .to_vec(),
        profile,
        signer: Some(handover_proto::decode::signed_device_certificate(&cert).unwrap()),
    }
    .encode_to_vec();
    let r = member
        .call(Kind::DirectoryPublish(wire::DirectoryPublish {
            profile: signed.clone(),
        }))
        .await
        .unwrap();
    assert!(matches!(r.kind, Some(R::Ok(_))), "{r:?}");
    let r = member
        .call(Kind::DirectoryQuery(wire::DirectoryQuery {
            languages: vec!["PL".into()],
            ..Default::default()
        }))
        .await
        .unwrap();
    let Some(R::DirectoryResult(found)) = r.kind else {
        panic!("{r:?}")
    };
    assert_eq!(found.profiles, vec![signed]);
    // Still nothing for the public connection.
    assert_eq!(
        error_code(&public.call(query()).await.unwrap()),
        Some(ErrorCode::Unauthorised)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_prekey_takes_never_share_a_one_time_prekey() {
    // Bounded: a hung relay fails the test instead of hanging the suite.
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        concurrent_prekey_takes_never_share_a_one_time_prekey_scenario(),
    )
    .await
    .expect("test timed out");
}

async fn concurrent_prekey_takes_never_share_a_one_time_prekey_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(bin(), dir.path(), &["--requests-per-sec", "0"]).unwrap();
    let owner = Client::connect(relay.addr, relay.pin).await.unwrap();
    let mb = owner.create_mailbox().await.unwrap();
    owner.authenticate(&mb).await.unwrap();
    let keys: Vec<Vec<u8>> = (0..50u8).map(|n| vec![n; 32]).collect();
    let r = owner
        .call(Kind::PrekeyPublish(wire::PrekeyPublish {
            recv_id: mb.recv_id.clone(),
            bundle: b"bundle".to_vec(),
            one_time_prekeys: keys,
            one_time_kem_prekeys: vec![],
        }))
        .await
        .unwrap();
    assert!(matches!(r.kind, Some(R::Ok(_))));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = Client::connect(relay.addr, relay.pin).await.unwrap();
        let mb = mb.clone();
        tasks.push(tokio::spawn(async move {
            let takes = (0..20).map(|_| {
                let c = c.clone();
                let take = Kind::PrekeyTake(wire::PrekeyTake {
                    send_id: mb.send_id.clone(),
                    capability: mb.capability.to_vec(),
                });
                async move { c.call(take).await }
            });
            let mut got = Vec::new();
            for r in futures_join(takes).await {
                let Some(R::PrekeyBundle(b)) = r.unwrap().kind else {
                    panic!()
                };
                if !b.one_time_prekey.is_empty() {
                    got.push(b.one_time_prekey);
                }
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 50, "every one-time prekey handed out once");
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), 50, "a one-time prekey was handed out twice");
}

/// Runs futures concurrently on the current task (no extra dependency).
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
