//! End-to-end: the relay as a separate process, real QUIC on loopback.

// Test code: helpers outside #[test] functions may unwrap and panic too (clippy.toml allows
// it only inside test functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use handover_proto::relay::v1 as wire;
use handover_tests::client::{Client, Kind, error_code, unix_now};
use handover_tests::process::RelayProcess;
use wire::response::Kind as R;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_relay-under-test"))
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_send_subscribe_fetch_ack_blob_and_graceful_shutdown() {
    // Bounded: a hung relay fails the test instead of hanging the suite.
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        mailbox_send_subscribe_fetch_ack_blob_and_graceful_shutdown_scenario(),
    )
    .await
    .expect("test timed out");
}

async fn mailbox_send_subscribe_fetch_ack_blob_and_graceful_shutdown_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start(bin(), dir.path(), &[]).unwrap();
    let alice = Client::connect(relay.addr, relay.pin).await.unwrap();
    let bob = Client::connect(relay.addr, relay.pin).await.unwrap();

    // A wrong pin is refused.
    assert!(Client::connect(relay.addr, [0; 32]).await.is_err());

    let mb = alice.create_mailbox().await.unwrap();
    let auth = alice.authenticate(&mb).await.unwrap();
    assert!(matches!(auth.kind, Some(R::Ok(_))), "{auth:?}");
    let mut sub = alice.subscribe(vec![mb.recv_id.clone()]).await.unwrap();
    assert!(matches!(sub.response.kind, Some(R::Subscribed(_))));

    let expires = unix_now() + 3600;
    for n in 1..=3u8 {
        let r = bob
            .send(&mb.send_id, &mb.capability, [n; 16], expires, vec![n; 1024])
            .await
            .unwrap();
        let Some(R::SendAccepted(a)) = r.kind else {
            panic!("{r:?}")
        };
        assert_eq!(a.accepted_at % 60, 0);
    }
    // A request stream carries one frame and then ends, and each side reads the other's end
    // instead of stopping the stream: quinn sends STOP_SENDING for a stream dropped before its
    // end was read, a datagram and an acknowledgement per request. A few may still go out when
    // a stream's end arrives in a later packet than its frame, hence a bound rather than zero.
    let (rx, tx) = (bob.conn.stats().frame_rx, bob.conn.stats().frame_tx);
    for _ in 0..20 {
        let r = bob.call(Kind::Ping(wire::Ping {})).await.unwrap();
        assert!(matches!(r.kind, Some(R::Pong(_))), "{r:?}");
    }
    let stats = bob.conn.stats();
    let received = stats.frame_rx.stop_sending - rx.stop_sending;
    let sent = stats.frame_tx.stop_sending - tx.stop_sending;
    assert!(
        received < 10,
        "the relay stopped {received} of 20 finished requests"
    );
    assert!(
        sent < 10,
        "the client stopped {sent} of 20 finished answers"
    );

    let event = sub.next(Duration::from_secs(10)).await.unwrap().unwrap();
    assert!(matches!(
        event.kind,
        Some(wire::event::Kind::NewEnvelopes(ref e)) if e.recv_id == mb.recv_id
    ));
    let got = alice.fetch_all(&mb.recv_id).await.unwrap();
    let ids: Vec<u8> = got
        .iter()
        .map(|q| q.envelope.as_ref().unwrap().envelope_id[0])
        .collect();
    assert_eq!(ids, vec![1, 2, 3]);
    assert_eq!(got[0].envelope.as_ref().unwrap().ciphertext, vec![1; 1024]);
    let r = alice
        .ack(&mb.recv_id, vec![vec![1; 16], vec![2; 16]])
        .await
        .unwrap();
    assert!(matches!(r.kind, Some(R::Ok(_))));
    assert_eq!(alice.fetch_all(&mb.recv_id).await.unwrap().len(), 1);

    // Envelope status for the sender.
    let r = bob
        .call(Kind::EnvelopeStatus(wire::EnvelopeStatus {
            send_id: mb.send_id.clone(),
            capability: mb.capability.to_vec(),
            envelope_ids: vec![vec![1; 16], vec![3; 16]],
        }))
        .await
        .unwrap();
    let Some(R::EnvelopeStatusResult(s)) = r.kind else {
        panic!("{r:?}")
    };
    assert_eq!(
        s.states,
        vec![
            wire::DeliveryState::Unknown as i32,
            wire::DeliveryState::Pending as i32
        ]
    );

    // Prekeys: one-time prekeys are handed out once.
    let r = alice
        .call(Kind::PrekeyPublish(wire::PrekeyPublish {
            recv_id: mb.recv_id.clone(),
            bundle: b"bundle".to_vec(),
            one_time_prekeys: vec![vec![7; 32]],
            one_time_kem_prekeys: vec![],
        }))
        .await
        .unwrap();
    assert!(matches!(r.kind, Some(R::Ok(_))), "{r:?}");
    let take = || {
        Kind::PrekeyTake(wire::PrekeyTake {
            send_id: mb.send_id.clone(),
            capability: mb.capability.to_vec(),
        })
    };
    let Some(R::PrekeyBundle(first)) = bob.call(take()).await.unwrap().kind else {
        panic!()
    };
    let Some(R::PrekeyBundle(second)) = bob.call(take()).await.unwrap().kind else {
        panic!()
    };
    assert_eq!(first.one_time_prekey, vec![7; 32]);
    assert!(second.one_time_prekey.is_empty());

    // Blob: streaming upload and download of 600 KB.
    let data: Vec<u8> = (0..600_000u32).map(|n| (n % 253) as u8).collect();
    let (mut send, mut recv) = bob.conn.open_bi().await.unwrap();
    let put = handover_tests::client::request(Kind::BlobPut(wire::BlobPut {
        size: data.len() as u64,
        expires_at: expires,
    }));
    send.write_all(&handover_proto::frame::encode(&put).unwrap())
        .await
        .unwrap();
    let pieces: Vec<&[u8]> = data.chunks(200_000).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let chunk = wire::BlobChunk {
            data: piece.to_vec(),
            last: i + 1 == pieces.len(),
        };
        send.write_all(&handover_proto::frame::encode(&chunk).unwrap())
            .await
            .unwrap();
    }
    send.finish().unwrap();
    let payload = handover_tests::client::read_frame(&mut recv, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    let Some(R::BlobStored(stored)) = handover_proto::decode::response(&payload).unwrap().kind
    else {
        panic!()
    };
    let (mut send, mut recv) = alice.conn.open_bi().await.unwrap();
    let get = handover_tests::client::request(Kind::BlobGet(wire::BlobGet {
        blob_id: stored.blob_id.clone(),
        offset: 0,
    }));
    send.write_all(&handover_proto::frame::encode(&get).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let header = handover_tests::client::read_frame(&mut recv, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    let Some(R::BlobHeader(h)) = handover_proto::decode::response(&header).unwrap().kind else {
        panic!()
    };
    assert_eq!(h.size, data.len() as u64);
    let mut back = Vec::new();
    loop {
        let f = handover_tests::client::read_frame(&mut recv, 1 << 20)
            .await
            .unwrap()
            .unwrap();
        let chunk = handover_proto::decode::blob_chunk(&f).unwrap();
        back.extend_from_slice(&chunk.data);
        if chunk.last {
            break;
        }
    }
    assert_eq!(back, data);

    // Admin endpoint.
    let admin = relay.admin.unwrap();
    let health = tokio::task::spawn_blocking(move || http_get(admin, "/healthz"))
        .await
        .unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = tokio::task::spawn_blocking(move || http_get(admin, "/metrics"))
        .await
        .unwrap();
    assert!(
        metrics.contains("handover_relay_envelopes_accepted_total 3"),
        "{metrics}"
    );
    assert!(!metrics.contains("127.0.0.1"));
    // Every commit round so far synced successfully, and each is counted twice: as a round
    // and as the store's sync alone.
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
    };
    let rounds = count("handover_relay_commit_seconds_count");
    assert!(rounds >= 1, "{metrics}");
    assert_eq!(count("handover_relay_store_sync_seconds_count"), rounds);

    // Ping.
    let r = bob.call(Kind::Ping(wire::Ping {})).await.unwrap();
    assert!(matches!(r.kind, Some(R::Pong(_))));

    // Graceful shutdown: subscribers hear GoingAway, the process exits cleanly.
    relay.terminate().unwrap();
    let mut going_away = false;
    while let Ok(Some(event)) = sub.next(Duration::from_secs(10)).await {
        if matches!(event.kind, Some(wire::event::Kind::GoingAway(_))) {
            going_away = true;
            break;
        }
    }
    assert!(going_away);
    let status = tokio::task::spawn_blocking(move || {
        let s = relay.wait_exit(Duration::from_secs(30));
        (s, relay)
    })
    .await
    .unwrap();
    assert!(status.0.unwrap().success());

    // Everything acknowledged is still there after a restart.
    let relay = RelayProcess::start(bin(), dir.path(), &[]).unwrap();
    let alice = Client::connect(relay.addr, relay.pin).await.unwrap();
    alice.authenticate(&mb).await.unwrap();
    let left = alice.fetch_all(&mb.recv_id).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].envelope.as_ref().unwrap().envelope_id, vec![3; 16]);
    assert!(error_code(&alice.call(Kind::Ping(wire::Ping {})).await.unwrap()).is_none());
}

#[test]
fn help_documents_every_flag() {
    let out = std::process::Command::new(bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--config",
        "--listen",
        "--data-dir",
        "--admin",
        "--store",
        "--store-pool-size",
        "--cert",
        "--key",
        "--admit-org",
        "--max-envelope-bytes",
        "--max-blob-bytes",
        "--max-ttl-secs",
        "--mailbox-max-envelopes",
        "--mailbox-max-bytes",
        "--requests-per-sec",
        "--max-streams",
        "--wal-mib",
        "--udp-buffer-bytes",
        "--retry-above-handshakes",
        "--address-requests-per-sec",
        "--address-request-burst",
        "--connection-creations-per-min",
        "--connection-creation-burst",
        "--address-creations-per-min",
        "--address-creation-burst",
        "--relay-max-mailboxes",
        "--relay-max-envelopes",
        "--relay-max-bytes",
        "--creation-token-file",
        "--min-free-bytes",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

/// An in-memory store backend whose syncs fail once `fail` is set, like a disk that returned
/// EIO from `fdatasync`.
struct FailingDisk {
    inner: handover_relay::store::MemoryBackend,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

mod failing_disk {
    use handover_relay::store::{Batch, BodyRef, Entries, KvBackend, LogOp, Recovered, StoreError};
    use std::sync::atomic::Ordering;

    impl KvBackend for super::FailingDisk {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
            self.inner.scan(start, end, limit)
        }
        fn apply_logged(
            &self,
            batch: Batch,
            ops: &[LogOp<'_>],
        ) -> Result<Vec<BodyRef>, StoreError> {
            self.inner.apply_logged(batch, ops)
        }
        fn read_body(&self, body: &BodyRef) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.read_body(body)
        }
        fn take_recovered(&self) -> Vec<Recovered> {
            self.inner.take_recovered()
        }
        fn seq_floor(&self) -> u64 {
            self.inner.seq_floor()
        }
        fn sync(&self, oldest_live: Option<u64>) -> Result<(), StoreError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Backend("fdatasync: input/output error".into()));
            }
            self.inner.sync(oldest_live)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_a_store_that_refuses_writes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let store: Arc<dyn handover_relay::store::Store> =
        Arc::new(handover_relay::store::KvStore::new(FailingDisk {
            inner: handover_relay::store::MemoryBackend::new(),
            fail: fail.clone(),
        }));
    let mut config = handover_relay::config::Config::new(dir.path().join("relay"));
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let relay = handover_relay::server::Relay::start_with_store(config, store)
        .await
        .unwrap();
    let admin = relay.admin_addr().unwrap();
    let health = || tokio::task::spawn_blocking(move || http_get(admin, "/healthz"));
    let ok = health().await.unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    let client = Client::connect(relay.local_addr(), relay.pin())
        .await
        .unwrap();
    let mailbox = client.create_mailbox().await.unwrap();
    fail.store(true, Ordering::SeqCst);
    let r = client
        .send(
            &mailbox.send_id,
            &mailbox.capability,
            [1; 16],
            unix_now() + 600,
            vec![1; 10],
        )
        .await
        .unwrap();
    assert_eq!(error_code(&r), Some(wire::ErrorCode::Unavailable));
    // Reads still work, but the store refuses writes: not healthy.
    let unhealthy = health().await.unwrap();
    assert!(
        unhealthy.starts_with("HTTP/1.1 503") && unhealthy.ends_with("storage\n"),
        "{unhealthy}"
    );
    relay.shutdown().await;
}
