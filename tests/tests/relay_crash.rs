//! Crash test: the relay process is killed with SIGKILL repeatedly while clients send. After
//! every restart, every acknowledged envelope is still fetchable, and none is delivered again
//! after the recipient's ack was acknowledged.

// Test code: helpers outside #[test] functions may unwrap and panic too (clippy.toml allows
// it only inside test functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use handover_proto::relay::v1::response::Kind as R;
use handover_tests::client::{Client, MailboxKeys, unix_now};
use handover_tests::process::RelayProcess;

const ROUNDS: usize = 8;
const SENDERS: usize = 2;
const STREAMS_PER_SENDER: usize = 16;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_relay-under-test"))
}

/// Sends until the connection breaks; records the ids the relay acknowledged.
async fn send_until_killed(
    client: Client,
    mailbox: MailboxKeys,
    round: usize,
    sender: usize,
    acked: Arc<Mutex<HashSet<[u8; 16]>>>,
) {
    let mut tasks = Vec::new();
    for stream in 0..STREAMS_PER_SENDER {
        let client = client.clone();
        let mailbox = mailbox.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0u32..100_000 {
                let mut id = [0u8; 16];
                id[0] = round as u8;
                id[1] = sender as u8;
                id[2] = stream as u8;
                id[4..8].copy_from_slice(&n.to_be_bytes());
                let sent = client
                    .send(
                        &mailbox.send_id,
                        &mailbox.capability,
                        id,
                        unix_now() + 3600,
                        vec![0xAB; 512],
                    )
                    .await;
                match sent {
                    Ok(r) if matches!(r.kind, Some(R::SendAccepted(_))) => {
                        acked.lock().unwrap().insert(id);
                    }
                    Ok(r) => panic!("unexpected answer {r:?}"),
                    // The relay died under us.
                    Err(_) => return,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_envelopes_survive_repeated_sigkill() {
    // Bounded: a hung relay fails the test instead of hanging the suite.
    tokio::time::timeout(
        std::time::Duration::from_secs(180),
        acknowledged_envelopes_survive_repeated_sigkill_scenario(),
    )
    .await
    .expect("test timed out");
}

async fn acknowledged_envelopes_survive_repeated_sigkill_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Arc<Mutex<HashSet<[u8; 16]>>> = Arc::default();
    let mut delivered_and_acked: HashSet<[u8; 16]> = HashSet::new();
    let mut mailbox: Option<MailboxKeys> = None;
    let mut total_acked_sends = 0;

    for round in 0..ROUNDS {
        let relay = RelayProcess::start(
            bin(),
            dir.path(),
            &[
                "--mailbox-max-envelopes",
                "1000000",
                "--requests-per-sec",
                "0",
                "--address-requests-per-sec",
                "0",
                // A fast sweeper (expiry and log compaction) runs during the load and the
                // kills; RelayProcess uses 2 MiB log segments, so segments rotate, and are
                // reclaimed once acked, between the kills.
                "--sweep-interval-secs",
                "1",
            ],
        )
        .unwrap();
        let owner = Client::connect(relay.addr, relay.pin).await.unwrap();
        let mb = match &mailbox {
            Some(mb) => mb.clone(),
            None => {
                let mb = owner.create_mailbox().await.unwrap();
                mailbox = Some(mb.clone());
                mb
            }
        };
        let auth = owner.authenticate(&mb).await.unwrap();
        assert!(
            matches!(auth.kind, Some(R::Ok(_))),
            "mailbox lost: {auth:?}"
        );

        // Everything acknowledged so far and not acked by the recipient must be here, once;
        // nothing the recipient acked may come back.
        let queued = owner.fetch_all(&mb.recv_id).await.unwrap();
        let mut seen = HashSet::new();
        for q in &queued {
            let id: [u8; 16] = q
                .envelope
                .as_ref()
                .unwrap()
                .envelope_id
                .clone()
                .try_into()
                .unwrap();
            assert!(seen.insert(id), "envelope returned twice in one fetch");
            assert!(
                !delivered_and_acked.contains(&id),
                "an envelope came back after its ack was acknowledged"
            );
        }
        {
            let acked = acked.lock().unwrap();
            total_acked_sends = acked.len();
            for id in acked.iter() {
                assert!(
                    seen.contains(id) || delivered_and_acked.contains(id),
                    "an acknowledged envelope was lost in round {round}"
                );
            }
        }
        // Ack half of what is queued (the recipient's acks must be durable too).
        let to_ack: Vec<[u8; 16]> = seen.iter().copied().filter(|id| id[7] % 2 == 0).collect();
        for chunk in to_ack.chunks(1000) {
            let r = owner
                .ack(&mb.recv_id, chunk.iter().map(|i| i.to_vec()).collect())
                .await
                .unwrap();
            assert!(matches!(r.kind, Some(R::Ok(_))));
            delivered_and_acked.extend(chunk.iter().copied());
        }
        acked
            .lock()
            .unwrap()
            .retain(|id| !delivered_and_acked.contains(id));

        if round + 1 == ROUNDS {
            break;
        }
        // Load, then SIGKILL mid-load.
        let mut senders = Vec::new();
        let mut clients = Vec::new();
        for s in 0..SENDERS {
            let c = Client::connect(relay.addr, relay.pin).await.unwrap();
            clients.push(c.clone());
            senders.push(tokio::spawn(send_until_killed(
                c,
                mb.clone(),
                round,
                s,
                acked.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(300 + 100 * round as u64)).await;
        tokio::task::spawn_blocking(move || relay.kill().unwrap())
            .await
            .unwrap();
        // A killed process sends no CONNECTION_CLOSE; end the clients' side at once instead of
        // waiting for the idle timeout. Requests in flight fail and are not counted.
        for c in &clients {
            c.conn.close(0u8.into(), b"relay killed");
        }
        drop(owner);
        for s in senders {
            tokio::time::timeout(Duration::from_secs(60), s)
                .await
                .expect("senders stop once the relay is gone")
                .unwrap();
        }
    }
    assert!(total_acked_sends > 0, "the test sent nothing");
    eprintln!(
        "crash test: {total_acked_sends} acknowledged sends outstanding at the end, {} acked by the recipient",
        delivered_and_acked.len()
    );
}
