//! Upgrade from the previous store format (envelopes in sled, `wal-0`/`wal-1`): a relay binary
//! of that version writes a store and shuts down cleanly; this version must serve every queued
//! envelope, the mailbox and its prekeys.
//!
//! Needs the old binary, so it is ignored by default:
//!
//! ```sh
//! mkdir /tmp/old && git archive a59e8af | tar -x -C /tmp/old   # last commit with the old format
//! (cd /tmp/old && cargo build --release -p handover-relay --bin handover-relay)
//! HANDOVER_OLD_RELAY=/tmp/old/target/release/handover-relay \
//!     cargo test -p handover-tests --test relay_upgrade -- --ignored
//! ```

// Test code: helpers outside #[test] functions may unwrap and panic too (clippy.toml allows
// it only inside test functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use handover_proto::relay::v1::response::Kind as R;
use handover_tests::client::{Client, unix_now};
use handover_tests::process::RelayProcess;

fn new_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_relay-under-test"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs HANDOVER_OLD_RELAY, a relay binary of the previous store format"]
async fn store_of_the_previous_format_is_migrated() {
    tokio::time::timeout(Duration::from_secs(120), scenario())
        .await
        .expect("test timed out");
}

async fn scenario() {
    let old_bin = std::env::var_os("HANDOVER_OLD_RELAY").expect("HANDOVER_OLD_RELAY not set");
    let dir = tempfile::tempdir().unwrap();
    let mut old = RelayProcess::start(Path::new(&old_bin), dir.path(), &[]).unwrap();
    let client = Client::connect(old.addr, old.pin).await.unwrap();
    let mb = client.create_mailbox().await.unwrap();
    let mut queued = HashSet::new();
    for n in 0u32..300 {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        let r = client
            .send(
                &mb.send_id,
                &mb.capability,
                id,
                unix_now() + 3600,
                vec![n as u8; 700],
            )
            .await
            .unwrap();
        assert!(matches!(r.kind, Some(R::SendAccepted(_))), "{r:?}");
        queued.insert(id);
    }
    assert!(matches!(
        client.authenticate(&mb).await.unwrap().kind,
        Some(R::Ok(_))
    ));
    let acked: Vec<[u8; 16]> = queued.iter().copied().filter(|id| id[3] % 3 == 0).collect();
    let r = client
        .ack(&mb.recv_id, acked.iter().map(|i| i.to_vec()).collect())
        .await
        .unwrap();
    assert!(matches!(r.kind, Some(R::Ok(_))));
    for id in &acked {
        queued.remove(id);
    }
    client.conn.close(0u8.into(), b"done");
    old.terminate().unwrap();
    assert!(old.wait_exit(Duration::from_secs(30)).unwrap().success());
    assert!(
        dir.path().join("store/wal-0").exists(),
        "not the old format"
    );

    for round in 0..2 {
        let mut relay = RelayProcess::start(new_bin(), dir.path(), &[]).unwrap();
        assert!(!dir.path().join("store/wal-0").exists());
        let client = Client::connect(relay.addr, relay.pin).await.unwrap();
        let auth = client.authenticate(&mb).await.unwrap();
        assert!(
            matches!(auth.kind, Some(R::Ok(_))),
            "mailbox lost: {auth:?}"
        );
        let all = client.fetch_all(&mb.recv_id).await.unwrap();
        let got: HashSet<[u8; 16]> = all
            .iter()
            .map(|q| {
                let e = q.envelope.as_ref().unwrap();
                let id: [u8; 16] = e.envelope_id.clone().try_into().unwrap();
                assert_eq!(e.ciphertext, vec![id[3]; 700]);
                id
            })
            .collect();
        assert_eq!(got, queued, "round {round}");
        let seqs: Vec<u64> = all.iter().map(|q| q.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        // New sends land after the migrated ones.
        let r = client
            .send(
                &mb.send_id,
                &mb.capability,
                [0xEE; 16],
                unix_now() + 3600,
                vec![1; 10],
            )
            .await
            .unwrap();
        assert!(matches!(r.kind, Some(R::SendAccepted(_))));
        let all = client.fetch_all(&mb.recv_id).await.unwrap();
        let last = all.last().unwrap();
        assert_eq!(last.envelope.as_ref().unwrap().envelope_id, vec![0xEE; 16]);
        assert!(seqs.iter().all(|s| *s < last.seq));
        client.ack(&mb.recv_id, vec![vec![0xEE; 16]]).await.unwrap();
        client.conn.close(0u8.into(), b"done");
        relay.terminate().unwrap();
        assert!(relay.wait_exit(Duration::from_secs(30)).unwrap().success());
    }
}
