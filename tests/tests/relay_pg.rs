//! Relays on PostgreSQL as separate processes, real QUIC on loopback: one relay end to end, and
//! two relay processes ("nodes") sharing one database. Each test has a database of its own on
//! the server at `HANDOVER_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/test`); the
//! tests fail, not skip, when it cannot be reached (`scripts/ensure-postgres.sh` starts one).

// Test code: helpers outside #[test] functions may unwrap and panic too (clippy.toml allows
// it only inside test functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use handover_proto::relay::v1 as wire;
use handover_relay::store::postgres::testing::TestDatabase;
use handover_tests::client::{Client, Kind, unix_now};
use handover_tests::process::RelayProcess;
use wire::response::Kind as R;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_relay-under-test"))
}

fn database() -> TestDatabase {
    TestDatabase::create()
        .expect("a PostgreSQL server for the tests (run scripts/ensure-postgres.sh)")
}

/// Two relay processes on one database serving the same certificate: node 1 generates it in
/// its data directory, node 2 is given those files (`--cert`, `--key`).
fn two_nodes(db: &TestDatabase, dirs: &[tempfile::TempDir; 2]) -> (RelayProcess, RelayProcess) {
    let one = RelayProcess::start_with(bin(), dirs[0].path(), Some(&db.url), UNLIMITED).unwrap();
    let cert = dirs[0].path().join(handover_relay::tls::CERT_FILE);
    let key = dirs[0].path().join(handover_relay::tls::KEY_FILE);
    let two = RelayProcess::start_with(
        bin(),
        dirs[1].path(),
        Some(&db.url),
        &[
            UNLIMITED,
            &[
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
        ]
        .concat(),
    )
    .unwrap();
    assert_eq!(one.pin, two.pin, "both nodes serve the same certificate");
    (one, two)
}

/// No request rate limits: the load tests send as fast as they can.
const UNLIMITED: &[&str] = &["--requests-per-sec", "0", "--address-requests-per-sec", "0"];

fn dirs() -> [tempfile::TempDir; 2] {
    [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()]
}

async fn send_ok(client: &Client, mb: &handover_tests::client::MailboxKeys, id: [u8; 16]) -> bool {
    let r = client
        .send(
            &mb.send_id,
            &mb.capability,
            id,
            unix_now() + 3600,
            vec![id[0]; 512],
        )
        .await;
    matches!(
        r,
        Ok(wire::Response {
            kind: Some(R::SendAccepted(_))
        })
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_on_postgres_serves_mailboxes_prekeys_and_blobs() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let db = database();
        let dir = tempfile::tempdir().unwrap();
        let relay = RelayProcess::start_with(bin(), dir.path(), Some(&db.url), &[]).unwrap();
        let alice = Client::connect(relay.addr, relay.pin).await.unwrap();
        let bob = Client::connect(relay.addr, relay.pin).await.unwrap();
        let mb = alice.create_mailbox().await.unwrap();
        let auth = alice.authenticate(&mb).await.unwrap();
        assert!(matches!(auth.kind, Some(R::Ok(_))), "{auth:?}");
        let mut sub = alice.subscribe(vec![mb.recv_id.clone()]).await.unwrap();
        assert!(matches!(sub.response.kind, Some(R::Subscribed(_))));
        for n in 1..=3u8 {
            assert!(send_ok(&bob, &mb, [n; 16]).await);
        }
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
        let seqs: Vec<u64> = got.iter().map(|q| q.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let r = alice
            .ack(&mb.recv_id, vec![vec![1; 16], vec![2; 16]])
            .await
            .unwrap();
        assert!(matches!(r.kind, Some(R::Ok(_))));
        assert_eq!(alice.fetch_all(&mb.recv_id).await.unwrap().len(), 1);

        // Prekeys: a one-time prekey is handed out once.
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

        // A blob of 600 KB: up through chunks, down again.
        let data: Vec<u8> = (0..600_000u32).map(|n| (n % 253) as u8).collect();
        let (mut send, mut recv) = bob.conn.open_bi().await.unwrap();
        let put = handover_tests::client::request(Kind::BlobPut(wire::BlobPut {
            size: data.len() as u64,
            expires_at: unix_now() + 3600,
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
        drop(relay);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_node_two_hears_of_an_envelope_sent_through_node_one() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let db = database();
        let dirs = dirs();
        let (one, two) = two_nodes(&db, &dirs);
        let alice = Client::connect(two.addr, two.pin).await.unwrap();
        let bob = Client::connect(one.addr, one.pin).await.unwrap();
        let mb = alice.create_mailbox().await.unwrap();
        assert!(matches!(
            alice.authenticate(&mb).await.unwrap().kind,
            Some(R::Ok(_))
        ));
        let mut sub = alice.subscribe(vec![mb.recv_id.clone()]).await.unwrap();
        assert!(matches!(sub.response.kind, Some(R::Subscribed(_))));
        assert!(send_ok(&bob, &mb, [5; 16]).await);
        let event = sub.next(Duration::from_secs(10)).await.unwrap().unwrap();
        assert!(matches!(
            event.kind,
            Some(wire::event::Kind::NewEnvelopes(ref e)) if e.recv_id == mb.recv_id
        ));
        let got = alice.fetch_all(&mb.recv_id).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].envelope.as_ref().unwrap().ciphertext, vec![5; 512]);
        drop((one, two));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_prekey_taken_through_both_nodes_at_once_is_handed_out_once() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let db = database();
        let dirs = dirs();
        let (one, two) = two_nodes(&db, &dirs);
        let owner = Client::connect(one.addr, one.pin).await.unwrap();
        let mb = owner.create_mailbox().await.unwrap();
        assert!(matches!(
            owner.authenticate(&mb).await.unwrap().kind,
            Some(R::Ok(_))
        ));
        let keys: Vec<Vec<u8>> = (0..40u8).map(|n| vec![n; 32]).collect();
        let r = owner
            .call(Kind::PrekeyPublish(wire::PrekeyPublish {
                recv_id: mb.recv_id.clone(),
                bundle: b"bundle".to_vec(),
                one_time_prekeys: keys,
                one_time_kem_prekeys: vec![],
            }))
            .await
            .unwrap();
        assert!(matches!(r.kind, Some(R::Ok(_))), "{r:?}");
        let mut takers = Vec::new();
        for n in 0..4 {
            let node = if n % 2 == 0 { &one } else { &two };
            let client = Client::connect(node.addr, node.pin).await.unwrap();
            let mb = mb.clone();
            takers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..15 {
                    let r = client
                        .call(Kind::PrekeyTake(wire::PrekeyTake {
                            send_id: mb.send_id.clone(),
                            capability: mb.capability.to_vec(),
                        }))
                        .await
                        .unwrap();
                    let Some(R::PrekeyBundle(b)) = r.kind else {
                        panic!("{r:?}")
                    };
                    if !b.one_time_prekey.is_empty() {
                        got.push(b.one_time_prekey);
                    }
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in takers {
            all.extend(t.await.unwrap());
        }
        assert_eq!(all.len(), 40);
        let unique: BTreeSet<Vec<u8>> = all.into_iter().collect();
        assert_eq!(unique.len(), 40, "a one-time prekey was handed out twice");
        drop((one, two));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_envelope_node_one_acknowledged_before_it_was_killed_is_fetched_through_node_two() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let db = database();
        let dirs = dirs();
        let (one, two) = two_nodes(&db, &dirs);
        let owner = Client::connect(two.addr, two.pin).await.unwrap();
        let mb = owner.create_mailbox().await.unwrap();
        assert!(matches!(
            owner.authenticate(&mb).await.unwrap().kind,
            Some(R::Ok(_))
        ));
        // Senders on node 1 until it dies; each keeps the ids the relay acknowledged.
        let stop = Arc::new(AtomicBool::new(false));
        let mut senders = Vec::new();
        for t in 0..4u8 {
            let client = Client::connect(one.addr, one.pin).await.unwrap();
            let mb = mb.clone();
            let stop = stop.clone();
            senders.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for n in 0..10_000u32 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let mut id = [t; 16];
                    id[1..5].copy_from_slice(&n.to_be_bytes());
                    let sent =
                        tokio::time::timeout(Duration::from_secs(5), send_ok(&client, &mb, id));
                    match sent.await {
                        Ok(true) => acked.push(id),
                        // The node died (or refused): nothing more is acknowledged.
                        _ => break,
                    }
                }
                acked
            }));
        }
        // Under load, node 1 dies.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::spawn_blocking(move || one.kill().unwrap())
            .await
            .unwrap();
        stop.store(true, Ordering::SeqCst);
        let mut acked = BTreeSet::new();
        for s in senders {
            acked.extend(s.await.unwrap());
        }
        assert!(acked.len() > 20, "only {} sends acknowledged", acked.len());
        eprintln!(
            "{} sends acknowledged by node 1 before SIGKILL",
            acked.len()
        );
        // Node 2 has every acknowledged envelope, each once.
        let got = owner.fetch_all(&mb.recv_id).await.unwrap();
        let ids: Vec<[u8; 16]> = got
            .iter()
            .map(|q| {
                q.envelope
                    .as_ref()
                    .unwrap()
                    .envelope_id
                    .clone()
                    .try_into()
                    .unwrap()
            })
            .collect();
        let fetched: BTreeSet<[u8; 16]> = ids.iter().copied().collect();
        assert_eq!(fetched.len(), ids.len(), "an envelope was fetched twice");
        let missing: Vec<_> = acked.difference(&fetched).collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged envelopes lost",
            missing.len()
        );
        // Acknowledged by the recipient through node 2: never fetched again.
        for page in ids.chunks(100) {
            let r = owner
                .ack(&mb.recv_id, page.iter().map(|i| i.to_vec()).collect())
                .await
                .unwrap();
            assert!(matches!(r.kind, Some(R::Ok(_))), "{r:?}");
        }
        assert!(owner.fetch_all(&mb.recv_id).await.unwrap().is_empty());
        drop(two);
    })
    .await
    .expect("test timed out");
}

/// A PostgreSQL server of this test's own (initdb and pg_ctl into a temporary directory, on a
/// port of its own), so that restarting it disturbs no other test. Stopped on drop.
struct PrivatePostgres {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries under /usr/lib/postgresql (scripts/ensure-postgres.sh)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("pg_ctl").exists())
            .max()
            .expect("pg_ctl under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self { bin, dir, port };
        // PostgreSQL refuses to run as root: as root, it runs as the `postgres` user.
        let root = pg.run_as_owner(&["id", "-u"]).trim() == "0";
        if root {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = pg.data();
        pg.ctl(&[
            pg.bin.join("initdb").to_str().unwrap(),
            "-D",
            &data,
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ]);
        pg.pg_ctl("start");
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_str().unwrap().to_owned()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run_as_owner(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a server command, as `postgres` when this test runs as root.
    fn ctl(&self, args: &[&str]) {
        let root = self.run_as_owner(&["id", "-u"]).trim() == "0";
        let mut cmd = if root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).args(args);
            c
        } else {
            let mut c = std::process::Command::new(args[0]);
            c.args(&args[1..]);
            c
        };
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().to_str().unwrap()
        );
        let log = self.dir.path().join("server.log");
        self.ctl(&[
            self.bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            &self.data(),
            "-o",
            &options,
            "-l",
            log.to_str().unwrap(),
            "-m",
            "fast",
            "-w",
            action,
        ]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.pg_ctl("stop")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_during_a_postgres_restart_get_a_retryable_error_and_nothing_acknowledged_is_lost() {
    let pg = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .unwrap();
    let pg = Arc::new(pg);
    tokio::time::timeout(Duration::from_secs(180), async {
        let dir = tempfile::tempdir().unwrap();
        let relay =
            RelayProcess::start_with(bin(), dir.path(), Some(&pg.url()), UNLIMITED).unwrap();
        let owner = Client::connect(relay.addr, relay.pin).await.unwrap();
        let mb = owner.create_mailbox().await.unwrap();
        assert!(matches!(
            owner.authenticate(&mb).await.unwrap().kind,
            Some(R::Ok(_))
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let mut senders = Vec::new();
        for t in 0..3u8 {
            let client = Client::connect(relay.addr, relay.pin).await.unwrap();
            let mb = mb.clone();
            let stop = stop.clone();
            senders.push(tokio::spawn(async move {
                let (mut acked, mut unavailable, mut other) = (Vec::new(), 0u32, Vec::new());
                let mut n = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let mut id = [t; 16];
                    id[1..5].copy_from_slice(&n.to_be_bytes());
                    let r = client
                        .send(
                            &mb.send_id,
                            &mb.capability,
                            id,
                            unix_now() + 3600,
                            vec![t; 256],
                        )
                        .await
                        .unwrap();
                    match &r.kind {
                        Some(R::SendAccepted(_)) => acked.push(id),
                        Some(R::Error(e))
                            if e.code == wire::ErrorCode::Unavailable as i32
                                && e.retry_after_secs > 0 =>
                        {
                            unavailable += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        _ => other.push(format!("{r:?}")),
                    }
                }
                (acked, unavailable, other)
            }));
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        {
            let pg = pg.clone();
            tokio::task::spawn_blocking(move || {
                pg.pg_ctl("stop");
                std::thread::sleep(Duration::from_millis(1500));
                pg.pg_ctl("start");
            })
            .await
            .unwrap();
        }
        // Sends succeed again once the database is back.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        stop.store(true, Ordering::SeqCst);
        let mut acked = BTreeSet::new();
        let mut unavailable = 0;
        for s in senders {
            let (a, u, other) = s.await.unwrap();
            assert!(other.is_empty(), "unexpected answers: {other:?}");
            acked.extend(a);
            unavailable += u;
        }
        assert!(unavailable > 0, "no send met the restart");
        let after_restart = assert_sends_work(&owner, &mb).await;
        assert!(after_restart);
        let got = owner.fetch_all(&mb.recv_id).await.unwrap();
        let fetched: BTreeSet<[u8; 16]> = got
            .iter()
            .map(|q| {
                q.envelope
                    .as_ref()
                    .unwrap()
                    .envelope_id
                    .clone()
                    .try_into()
                    .unwrap()
            })
            .collect();
        assert_eq!(fetched.len(), got.len(), "an envelope was fetched twice");
        let missing = acked.difference(&fetched).count();
        assert_eq!(missing, 0, "{missing} acknowledged envelopes lost");
        eprintln!(
            "{} sends acknowledged, {unavailable} answered UNAVAILABLE during the restart",
            acked.len()
        );
        drop(relay);
    })
    .await
    .expect("test timed out");
    drop(pg);
}

async fn assert_sends_work(client: &Client, mb: &handover_tests::client::MailboxKeys) -> bool {
    send_ok(client, mb, [0xee; 16]).await
}
