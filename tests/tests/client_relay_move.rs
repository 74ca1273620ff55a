//! Moving a device's mailbox to another relay (docs/PROTOCOL.md §10.4), with two relay
//! processes on loopback: a wrong pin changes nothing; after a move the contact learns the new
//! address from a contact card, what it sent to the old address before is still collected,
//! the old mailbox ends deleted; a move interrupted after its durable switch is resumed by the
//! next sync after a restart.

// Test code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use handover_core::client::{Client, ClientError, RelayAccess};
use handover_core::engine::{IdentitySetup, Message, PeerId, RelayInfo, RelayMovePhase};
use handover_core::identity::DeviceKeys;
use handover_core::net::{NetError, RelayAddress, RelayClient};
use handover_core::store::{Credential, KdfParams, Passphrase};
use handover_proto::e2e::v1::content::Body;
use handover_proto::relay::v1::ErrorCode;
use handover_tests::process::RelayProcess;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_relay-under-test"))
}

fn cred(who: &str) -> Credential {
    Credential::from(Passphrase::from(format!("{who} passphrase")))
}

fn info(process: &RelayProcess) -> RelayInfo {
    RelayInfo {
        host_port: process.addr.to_string(),
        pin: process.pin,
    }
}

async fn create(dir: &Path, relay: &RelayInfo, who: &str) -> Client {
    std::fs::create_dir_all(dir).unwrap();
    Client::create(
        dir,
        &cred(who),
        KdfParams::new(8, 1, 1).unwrap(),
        relay.clone(),
        DeviceKeys::generate(&mut rand::rng()),
        IdentitySetup::NewOrganisation {
            device_label: format!("{who} laptop"),
        },
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

/// Syncs until a chat message with `text` arrived (bounded by the test's time-out).
async fn wait_for_chat(client: &Client, text: &str) {
    loop {
        if client
            .sync()
            .await
            .unwrap()
            .iter()
            .any(|m| chat_text(m) == Some(text))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Syncs until a contact card arrived.
async fn wait_for_card(client: &Client) {
    loop {
        if client
            .sync()
            .await
            .unwrap()
            .iter()
            .any(|m| matches!(m.content.body, Some(Body::ContactCard(_))))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Alice and Bob on `relay`, each trusting the other's organisation, connected by invitation
/// (Alice knows Bob's address from his card); returns their peer ids as the other knows them.
async fn pair(tmp: &Path, relay: &RelayInfo) -> (Client, Client, PeerId, PeerId) {
    let alice = create(&tmp.join("alice"), relay, "Alice").await;
    let bob = create(&tmp.join("bob"), relay, "Bob").await;
    alice.trust_organisation(root(&bob).await).await.unwrap();
    bob.trust_organisation(root(&alice).await).await.unwrap();
    let (_, link) = alice.create_invitation(3600).await.unwrap();
    let alice_id = bob.accept_invitation(&link).await.unwrap();
    wait_for_card(&alice).await;
    let bob_id = bob
        .with_engine(|e, _, _| e.peer_id().unwrap())
        .await
        .unwrap();
    (alice, bob, alice_id, bob_id)
}

/// Whether the mailbox (`recv_id`, `auth`) still exists at `relay`: authentication succeeds.
async fn mailbox_exists(
    relay: &RelayInfo,
    recv_id: &[u8; 16],
    auth: &ed25519_dalek::SigningKey,
) -> bool {
    let raw = RelayClient::connect(&RelayAddress {
        host_port: relay.host_port.clone(),
        pin: relay.pin,
    })
    .await
    .unwrap();
    let result = raw.authenticate(recv_id, auth).await;
    raw.close().await;
    match result {
        Ok(()) => true,
        Err(e) if e.relay_code() == Some(ErrorCode::Unauthorised) => false,
        Err(e) => panic!("unexpected answer: {e}"),
    }
}

async fn own_mailbox(client: &Client) -> ([u8; 16], ed25519_dalek::SigningKey) {
    client
        .with_engine(|e, _, _| (e.recv_id().unwrap(), e.mailbox_auth_key().unwrap().clone()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_to_another_relay_keeps_the_conversation_and_deletes_the_old_mailbox() {
    tokio::time::timeout(Duration::from_secs(180), move_scenario())
        .await
        .expect("test timed out");
}

async fn move_scenario() {
    let tmp = tempfile::tempdir().unwrap();
    let r1 = RelayProcess::start(bin(), &tmp.path().join("relay1"), &[]).unwrap();
    let r2 = RelayProcess::start(bin(), &tmp.path().join("relay2"), &[]).unwrap();
    let (relay1, relay2) = (info(&r1), info(&r2));
    let (alice, bob, alice_id, bob_id) = pair(tmp.path(), &relay1).await;

    alice.send_text(bob_id, "hello Bob", vec![]).await.unwrap();
    wait_for_chat(&bob, "hello Bob").await;
    bob.send_text(alice_id, "hi Alice", vec![]).await.unwrap();
    wait_for_chat(&alice, "hi Alice").await;
    let (old_recv_id, old_auth) = own_mailbox(&alice).await;

    // A wrong pin: refused as such, and nothing changed.
    let mut wrong = relay2.clone();
    wrong.pin[0] ^= 1;
    let err = alice
        .move_relay(RelayAccess::new(wrong, None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Net(NetError::WrongPin)),
        "got {err:?}"
    );
    let status = alice.relay_status().await.unwrap();
    assert_eq!(status.relay, relay1);
    assert!(status.draining.is_none());
    assert_eq!(own_mailbox(&alice).await.0, old_recv_id);
    assert!(
        alice
            .with_engine(|e, _, _| e.outbox().unwrap().is_empty())
            .await
            .unwrap()
    );

    // The move.
    let report = alice
        .move_relay(RelayAccess::new(relay2.clone(), None))
        .await
        .unwrap();
    assert_eq!(report.cards_queued, Some(1));
    let status = alice.relay_status().await.unwrap();
    assert_eq!(status.relay, relay2);
    assert_eq!(
        status.draining.as_ref().map(|(r, _)| r.clone()),
        Some(relay1.clone())
    );
    assert_ne!(own_mailbox(&alice).await.0, old_recv_id);
    assert!(mailbox_exists(&relay1, &old_recv_id, &old_auth).await);
    // A second move is refused while the first drains.
    assert!(matches!(
        alice
            .move_relay(RelayAccess::new(relay1.clone(), None))
            .await,
        Err(ClientError::Engine(
            handover_core::engine::EngineError::RelayMoveInProgress
        ))
    ));

    // Bob writes before he has read the card: to the old address, collected by the drain.
    bob.send_text(alice_id, "to the old address", vec![])
        .await
        .unwrap();
    let old_address = bob
        .with_engine(move |e, _, _| e.contact_address(alice_id).unwrap().relay)
        .await
        .unwrap();
    assert_eq!(old_address, relay1.host_port);
    wait_for_chat(&alice, "to the old address").await;

    // Bob reads the card: his contact now points at relay 2, and so does what he sends.
    wait_for_card(&bob).await;
    let address = bob
        .with_engine(move |e, _, _| e.contact_address(alice_id).unwrap())
        .await
        .unwrap();
    assert_eq!(address.relay, relay2.host_port);
    assert_eq!(address.relay_pin, relay2.pin.to_vec());
    bob.send_text(alice_id, "via relay 2", vec![])
        .await
        .unwrap();
    wait_for_chat(&alice, "via relay 2").await;

    // Ending the drain deletes the old mailbox.
    assert!(alice.finish_relay_move().await.unwrap());
    assert!(alice.relay_status().await.unwrap().draining.is_none());
    assert!(!mailbox_exists(&relay1, &old_recv_id, &old_auth).await);

    // Alice's mailbox lives on relay 2 alone now: with relay 1 stopped, Bob (whose own mailbox
    // is on relay 1) can still write to her.
    bob.send_text(alice_id, "relay 2 only", vec![])
        .await
        .unwrap();
    drop(r1);
    wait_for_chat(&alice, "relay 2 only").await;
    let texts: Vec<String> = alice
        .messages(0)
        .await
        .unwrap()
        .iter()
        .filter_map(|m| chat_text(m).map(str::to_owned))
        .collect();
    assert_eq!(
        texts,
        [
            "hello Bob",
            "hi Alice",
            "to the old address",
            "via relay 2",
            "relay 2 only"
        ]
    );
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_interrupted_after_the_switch_is_resumed_after_a_restart() {
    tokio::time::timeout(Duration::from_secs(180), crash_scenario())
        .await
        .expect("test timed out");
}

async fn crash_scenario() {
    let tmp = tempfile::tempdir().unwrap();
    let r1 = RelayProcess::start(bin(), &tmp.path().join("relay1"), &[]).unwrap();
    let r2 = RelayProcess::start(bin(), &tmp.path().join("relay2"), &[]).unwrap();
    let (relay1, relay2) = (info(&r1), info(&r2));
    let (alice, bob, alice_id, _) = pair(tmp.path(), &relay1).await;
    let (old_recv_id, old_auth) = own_mailbox(&alice).await;

    // The first steps of `move_relay`, then the process dies: the mailbox exists on relay 2
    // and the switch is durable, but no prekeys were published there and no card was queued.
    let new_auth = ed25519_dalek::SigningKey::generate(&mut rand::rng());
    let connection = RelayClient::connect(&RelayAddress {
        host_port: relay2.host_port.clone(),
        pin: relay2.pin,
    })
    .await
    .unwrap();
    let hashes = alice
        .with_engine(|e, _, now| e.capability_hashes(now).unwrap())
        .await
        .unwrap();
    let ids = connection
        .create_mailbox(&new_auth, hashes, &[])
        .await
        .unwrap();
    connection.close().await;
    let target = relay2.clone();
    alice
        .with_engine(move |e, _, now| {
            // A drain period of 0: the first sync that finds the old mailbox empty deletes it.
            e.switch_relay(target, new_auth, ids.recv_id, ids.send_id, now)
                .unwrap()
        })
        .await
        .unwrap();
    alice.shutdown().await.unwrap();

    let alice = Client::open(&tmp.path().join("alice"), &cred("Alice"))
        .await
        .unwrap();
    let status = alice.relay_status().await.unwrap();
    assert_eq!(status.relay, relay2);
    let phase = alice
        .with_engine(|e, _, _| e.relay_move().unwrap().map(|m| m.phase))
        .await
        .unwrap();
    assert_eq!(phase, Some(RelayMovePhase::Switched));

    // The next sync publishes the prekeys, sends the card, collects and deletes the (empty)
    // old mailbox.
    alice.sync().await.unwrap();
    assert!(alice.relay_status().await.unwrap().draining.is_none());
    assert!(!mailbox_exists(&relay1, &old_recv_id, &old_auth).await);
    wait_for_card(&bob).await;
    let address = bob
        .with_engine(move |e, _, _| e.contact_address(alice_id).unwrap())
        .await
        .unwrap();
    assert_eq!(address.relay, relay2.host_port);
    bob.send_text(alice_id, "after the restart", vec![])
        .await
        .unwrap();
    wait_for_chat(&alice, "after the restart").await;
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
}
