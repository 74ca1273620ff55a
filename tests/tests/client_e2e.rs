//! End-to-end: two client profiles on sled in temporary directories, the relay as a separate
//! process, real QUIC on loopback. Invitation, chat both ways woken by the relay's push,
//! attachments, and a client restart in the middle of a sync with exactly-once delivery.

// Test code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use handover_core::client::{Client, ClientEvent};
use handover_core::engine::{IdentitySetup, Message, RelayInfo};
use handover_core::identity::{DeviceId, DeviceKeys};
use handover_core::net::{RelayAddress, RelayClient};
use handover_core::store::{Credential, KdfParams, Passphrase};
use handover_proto::e2e::v1::content::Body;
use handover_tests::process::RelayProcess;
use tokio::sync::broadcast;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_relay-under-test"))
}

fn cred(who: &str) -> Credential {
    Credential::from(Passphrase::from(format!("{who} passphrase")))
}

async fn create(dir: &Path, relay: &RelayInfo, who: &str) -> Client {
    let device = DeviceKeys::generate(&mut rand::rng());
    let identity = IdentitySetup::NewOrganisation {
        device_label: format!("{who} laptop"),
    };
    Client::create(
        dir,
        &cred(who),
        KdfParams::new(8, 1, 1).unwrap(),
        relay.clone(),
        device,
        identity,
        who,
    )
    .await
    .unwrap()
}

async fn root(client: &Client) -> [u8; 32] {
    client
        .with_engine(|e, _, _| e.org_root().unwrap())
        .await
        .unwrap()
}

fn chat_text(m: &Message) -> Option<&str> {
    match &m.content.body {
        Some(Body::Chat(c)) => Some(&c.text),
        _ => None,
    }
}

/// Waits for the next chat message event (woken by the relay's push, not by polling).
async fn next_chat(events: &mut broadcast::Receiver<ClientEvent>) -> Message {
    loop {
        match events.recv().await.unwrap() {
            ClientEvent::Message(m) if chat_text(&m).is_some() => return *m,
            _ => {}
        }
    }
}

async fn chats(client: &Client) -> Vec<String> {
    client
        .messages(0)
        .await
        .unwrap()
        .iter()
        .filter_map(|m| chat_text(m).map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitation_chat_attachment_and_restart_mid_sync_exactly_once() {
    tokio::time::timeout(Duration::from_secs(180), scenario())
        .await
        .expect("test timed out");
}

async fn scenario() {
    let tmp = tempfile::tempdir().unwrap();
    let process = RelayProcess::start(bin(), &tmp.path().join("relay"), &[]).unwrap();
    let relay = RelayInfo {
        host_port: process.addr.to_string(),
        pin: process.pin,
    };
    let (a_dir, b_dir) = (tmp.path().join("alice"), tmp.path().join("bob"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();

    let alice = create(&a_dir, &relay, "Alice").await;
    let bob = create(&b_dir, &relay, "Bob").await;
    alice.trust_organisation(root(&bob).await).await.unwrap();
    bob.trust_organisation(root(&alice).await).await.unwrap();
    let mut alice_events = alice.events();
    let mut bob_events = bob.events();
    alice.start();
    bob.start();

    // Invitation as a link; Bob accepts; Alice learns Bob's address from his contact card.
    let (_inv, link) = alice.create_invitation(3600).await.unwrap();
    let alice_id = bob.accept_invitation(&link).await.unwrap();
    let bob_device: DeviceId = loop {
        if let ClientEvent::Message(m) = alice_events.recv().await.unwrap()
            && matches!(m.content.body, Some(Body::ContactCard(_)))
        {
            break m.peer;
        }
    };
    let bob_id = bob
        .with_engine(|e, _, _| e.peer_id().unwrap())
        .await
        .unwrap();
    assert_eq!(bob_id.device_id, bob_device);

    // Chat both ways; each side is woken by the relay's NewEnvelopes push.
    alice.send_text(bob_id, "hello Bob", vec![]).await.unwrap();
    let m = next_chat(&mut bob_events).await;
    assert_eq!(chat_text(&m), Some("hello Bob"));
    assert_eq!(m.peer, alice_id.device_id);
    bob.send_text(alice_id, "hi Alice", vec![]).await.unwrap();
    assert_eq!(
        chat_text(&next_chat(&mut alice_events).await),
        Some("hi Alice")
    );

    // An attachment, with progress both ways, verified on download.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut uploaded = 0;
    let att = alice
        .upload_attachment(&data, "application/pdf", "letter.pdf", |n| uploaded = n)
        .await
        .unwrap();
    assert!(uploaded as usize >= data.len());
    alice
        .send_text(bob_id, "see attached", vec![att])
        .await
        .unwrap();
    let m = next_chat(&mut bob_events).await;
    let Some(Body::Chat(chat)) = &m.content.body else {
        panic!("expected chat")
    };
    let mut downloaded = 0;
    let got = bob
        .download_attachment(&chat.attachments[0], |n| downloaded = n)
        .await
        .unwrap();
    assert_eq!(got, data);
    assert_eq!(downloaded as usize, data.len());

    // The same as files, streamed (1.2 MiB: several 256 KiB chunks and a short last segment),
    // and a tampered reference leaves no file behind.
    let big: Vec<u8> = (0..1_250_000u32).map(|i| (i % 253) as u8).collect();
    let files = tempfile::tempdir().unwrap();
    let source = files.path().join("scan.pdf");
    std::fs::write(&source, &big).unwrap();
    let file_att = alice
        .upload_attachment_file(&source, "application/pdf", "scan.pdf", |_| {})
        .await
        .unwrap();
    let target = files.path().join("received.pdf");
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = written.clone();
    let n = bob
        .download_attachment_to_file(&file_att, &target, move |n| {
            seen.store(n, std::sync::atomic::Ordering::Relaxed)
        })
        .await
        .unwrap();
    assert_eq!(n, big.len() as u64);
    assert_eq!(std::fs::read(&target).unwrap(), big);
    assert_eq!(
        written.load(std::sync::atomic::Ordering::Relaxed),
        big.len() as u64
    );
    let mut forged = file_att.clone();
    forged.blob.as_mut().unwrap().plaintext_sha256[0] ^= 1;
    let bad = files.path().join("forged.pdf");
    assert!(
        bob.download_attachment_to_file(&forged, &bad, |_| {})
            .await
            .is_err()
    );
    assert!(!bad.exists());
    assert!(!files.path().join("forged.pdf.partial").exists());

    // Bob goes offline; Alice writes three messages (they wait at the relay).
    bob.shutdown().await.unwrap();
    for i in 0..3 {
        alice
            .send_text(bob_id, &format!("offline {i}"), vec![])
            .await
            .unwrap();
    }

    // Bob's client restarts and dies in the middle of a sync: two envelopes processed and
    // persisted, none acked.
    let bob = Client::open(&b_dir, &cred("Bob")).await.unwrap();
    let (recv_id, auth) = bob
        .with_engine(|e, _, _| (e.recv_id().unwrap(), e.mailbox_auth_key().unwrap().clone()))
        .await
        .unwrap();
    let raw = RelayClient::connect(&RelayAddress {
        host_port: relay.host_port.clone(),
        pin: relay.pin,
    })
    .await
    .unwrap();
    raw.authenticate(&recv_id, &auth).await.unwrap();
    let queued = raw.fetch(&recv_id, 0, 100).await.unwrap().envelopes;
    assert_eq!(queued.len(), 3);
    for q in &queued[..2] {
        bob.with_engine(|e, rng, now| e.receive(q, now, rng).unwrap())
            .await
            .unwrap();
    }
    raw.close().await;
    bob.shutdown().await.unwrap();

    // After the next restart, one sync delivers the third message once and acks all three.
    let bob = Client::open(&b_dir, &cred("Bob")).await.unwrap();
    let delivered = bob.sync().await.unwrap();
    assert_eq!(delivered.len(), 1);
    assert_eq!(chat_text(&delivered[0]), Some("offline 2"));
    assert!(bob.sync().await.unwrap().is_empty(), "all acked");
    assert_eq!(
        chats(&bob).await,
        [
            "hello Bob",
            "hi Alice",
            "see attached",
            "offline 0",
            "offline 1",
            "offline 2"
        ]
    );

    // The conversation continues from the restored sessions.
    let mut alice_events = alice.events();
    bob.send_text(alice_id, "back online", vec![])
        .await
        .unwrap();
    assert_eq!(
        chat_text(&next_chat(&mut alice_events).await),
        Some("back online")
    );

    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
    drop(process);
}

/// Waits until `client` has stored a message matching `pred` (syncing explicitly, bounded by
/// the test's timeout).
async fn wait_for(client: &Client, pred: impl Fn(&Message) -> bool) -> Message {
    loop {
        for m in client.sync().await.unwrap() {
            if pred(&m) {
                return m;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_fanout_revocation_and_resend_after_crash() {
    tokio::time::timeout(Duration::from_secs(180), fanout_scenario())
        .await
        .expect("test timed out");
}

async fn fanout_scenario() {
    let tmp = tempfile::tempdir().unwrap();
    let process = RelayProcess::start(bin(), &tmp.path().join("relay"), &[]).unwrap();
    let relay = RelayInfo {
        host_port: process.addr.to_string(),
        pin: process.pin,
    };
    let dir = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };

    // Organisation B: an admin device and an enrolled caseworker device.
    let b1 = create(&dir("b1"), &relay, "Intake").await;
    let b2_keys = DeviceKeys::generate(&mut rand::rng());
    let (certificate, device_list) = b1
        .enrol_device(
            b2_keys.public_keys(),
            handover_core::identity::Role::Caseworker,
            "Caseworker".into(),
        )
        .await
        .unwrap();
    let b2 = Client::create(
        &dir("b2"),
        &cred("B2"),
        KdfParams::new(8, 1, 1).unwrap(),
        relay.clone(),
        b2_keys,
        IdentitySetup::Enrolled {
            certificate,
            device_list,
        },
        "Caseworker",
    )
    .await
    .unwrap();
    let alice = create(&dir("alice"), &relay, "Referrer").await;
    let b_root = root(&b1).await;
    alice.trust_organisation(b_root).await.unwrap();
    b1.trust_organisation(root(&alice).await).await.unwrap();
    b2.trust_organisation(root(&alice).await).await.unwrap();

    // Alice connects to both team devices by invitation (their contact cards reach her).
    let (_, link) = b1.create_invitation(3600).await.unwrap();
    let b1_id = alice.accept_invitation(&link).await.unwrap();
    let (_, link) = b2.create_invitation(3600).await.unwrap();
    let b2_id = alice.accept_invitation(&link).await.unwrap();
    wait_for(&b1, |m| {
        matches!(m.content.body, Some(Body::ContactCard(_)))
    })
    .await;
    wait_for(&b2, |m| {
        matches!(m.content.body, Some(Body::ContactCard(_)))
    })
    .await;

    // One packet for the team: uploaded once, a key to each active device.
    let body = |text: &str| {
        Body::Chat(handover_proto::e2e::v1::ChatMessage {
            text: text.into(),
            attachments: vec![],
        })
    };
    let sent = alice
        .send_to_organisation(b_root, body("for the intake team"))
        .await
        .unwrap();
    assert_eq!(sent.items.len(), 2);
    assert!(sent.unreached.is_empty());
    for device in [&b1, &b2] {
        let m = wait_for(device, |m| chat_text(m).is_some()).await;
        assert_eq!(chat_text(&m), Some("for the intake team"));
        assert_eq!(m.peer, alice_device(&alice).await);
    }

    // B's admin revokes B2; the new device list reaches Alice; B2 receives nothing new.
    b1.revoke_device(b2_id.device_id).await.unwrap();
    wait_for(&alice, |m| {
        matches!(m.content.body, Some(Body::DeviceList(_)))
    })
    .await;
    let sent = alice
        .send_to_organisation(b_root, body("second packet"))
        .await
        .unwrap();
    assert_eq!(sent.items.len(), 1);
    assert_eq!(sent.items[0].recipient, b1_id.device_id);
    let m = wait_for(&b1, |m| chat_text(m).is_some()).await;
    assert_eq!(chat_text(&m), Some("second packet"));
    assert!(b2.sync().await.unwrap().is_empty());

    // Alice queues a message, the relay stores it, and she crashes before SendAccepted: the
    // restarted client resends the same envelope, and B1 sees the message once.
    let (_, item) = alice
        .with_engine(|e, rng, now| {
            e.send_chat(b1_id, "exactly once", vec![], now, rng)
                .unwrap()
        })
        .await
        .unwrap();
    let raw = RelayClient::connect(&RelayAddress {
        host_port: relay.host_port.clone(),
        pin: relay.pin,
    })
    .await
    .unwrap();
    raw.send(&item.send_id, item.capability(), item.envelope.clone())
        .await
        .unwrap();
    raw.close().await;
    alice.shutdown().await.unwrap();
    let alice = Client::open(&tmp.path().join("alice"), &cred("Referrer"))
        .await
        .unwrap();
    assert_eq!(alice.flush_outbox().await.unwrap(), 1);
    let m = wait_for(&b1, |m| chat_text(m).is_some()).await;
    assert_eq!(chat_text(&m), Some("exactly once"));
    assert!(b1.sync().await.unwrap().is_empty());
    let count = chats(&b1)
        .await
        .iter()
        .filter(|t| t.as_str() == "exactly once")
        .count();
    assert_eq!(count, 1);

    for c in [alice, b1, b2] {
        c.shutdown().await.unwrap();
    }
    drop(process);
}

async fn alice_device(client: &Client) -> DeviceId {
    client
        .with_engine(|e, _, _| e.device_id().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_is_created_on_a_relay_that_requires_a_creation_token() {
    use handover_core::client::RelayAccess;

    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("creation-token");
    std::fs::write(&token_file, "network password").unwrap();
    let process = RelayProcess::start(
        bin(),
        &tmp.path().join("relay"),
        &["--creation-token-file", token_file.to_str().unwrap()],
    )
    .unwrap();
    let relay = RelayInfo {
        host_port: process.addr.to_string(),
        pin: process.pin,
    };
    let setup = |who: &str| {
        (
            DeviceKeys::generate(&mut rand::rng()),
            IdentitySetup::NewOrganisation {
                device_label: format!("{who} laptop"),
            },
        )
    };
    // Without the token the relay refuses to create the mailbox.
    let dir = tmp.path().join("without");
    std::fs::create_dir_all(&dir).unwrap();
    let (device, identity) = setup("Carol");
    let refused = Client::create(
        &dir,
        &cred("Carol"),
        KdfParams::new(8, 1, 1).unwrap(),
        relay.clone(),
        device,
        identity,
        "Carol",
    )
    .await;
    assert!(refused.is_err());
    // With it, the profile is created.
    let dir = tmp.path().join("with");
    std::fs::create_dir_all(&dir).unwrap();
    let (device, identity) = setup("Dan");
    let access = RelayAccess::new(relay, Some(b"network password".to_vec()));
    assert!(!format!("{access:?}").contains("password"));
    let client = Client::create_with_access(
        &dir,
        &cred("Dan"),
        KdfParams::new(8, 1, 1).unwrap(),
        access,
        device,
        identity,
        "Dan",
    )
    .await
    .unwrap();
    assert!(client.has_profile().await);
    client.shutdown().await.unwrap();
}
