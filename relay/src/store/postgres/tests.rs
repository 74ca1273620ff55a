//! What only a store shared by several processes must show: two [`PgStore`]s on one database
//! (two relay nodes), the schema version check and the connection string's redaction. The
//! contract every backend meets is in `store/tests.rs`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::testing::TestDatabase;
use super::*;

fn id(n: u8) -> Id {
    [n; 16]
}

fn mailbox(send: u8) -> Mailbox {
    Mailbox {
        send_id: id(send),
        auth_key: [7; 32],
        capability_hashes: vec![[9; 32]],
        queued_count: 0,
        queued_bytes: 0,
    }
}

fn env(n: u8) -> NewEnvelope {
    NewEnvelope {
        envelope_id: id(n),
        expires_at: 4_000_000_000,
        ciphertext: vec![n; 10],
    }
}

const QUOTA: MailboxQuota = MailboxQuota {
    max_envelopes: 100,
    max_bytes: 100_000,
};

fn two_nodes() -> (TestDatabase, PgStore, PgStore) {
    let db = TestDatabase::create()
        .expect("a PostgreSQL server for the tests (run scripts/ensure-postgres.sh)");
    let a = PgStore::connect(&db.url, 4).unwrap();
    let b = PgStore::connect(&db.url, 4).unwrap();
    (db, a, b)
}

#[test]
fn a_capability_replaced_on_one_node_is_refused_on_the_other_at_once() {
    let (_db, a, b) = two_nodes();
    assert!(a.create_mailbox(&id(1), &mailbox(2)).unwrap());
    let admit_9 = |hashes: &[[u8; 32]]| hashes.contains(&[9; 32]);
    assert!(matches!(
        b.enqueue_for_sender(&id(2), &admit_9, &env(1), QUOTA)
            .unwrap(),
        SenderEnqueued::Mailbox(_, Enqueued::Queued(1))
    ));
    // Revoked through node A: node B refuses the next send.
    assert!(a.set_capabilities(&id(1), &[[8; 32]]).unwrap());
    assert_eq!(
        b.enqueue_for_sender(&id(2), &admit_9, &env(2), QUOTA)
            .unwrap(),
        SenderEnqueued::Refused
    );
    // Deleted through node B: node A sees no mailbox.
    assert!(b.delete_mailbox(&id(1)).unwrap());
    assert_eq!(
        a.enqueue_for_sender(&id(2), &admit_9, &env(3), QUOTA)
            .unwrap(),
        SenderEnqueued::NoMailbox
    );
}

#[test]
fn a_one_time_prekey_taken_through_two_nodes_at_once_is_handed_out_once() {
    let (_db, a, b) = two_nodes();
    let r = id(1);
    assert!(a.create_mailbox(&r, &mailbox(2)).unwrap());
    let keys: Vec<Vec<u8>> = (0..60u8).map(|n| vec![n; 32]).collect();
    assert_eq!(
        a.prekey_publish(&r, b"bundle", &keys, &[], 100).unwrap(),
        Published::Stored
    );
    let nodes = [Arc::new(a), Arc::new(b)];
    let handles: Vec<_> = (0..6)
        .map(|t| {
            let node = nodes[t % 2].clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for _ in 0..15 {
                    if let Some(k) = node.prekey_take(&r).unwrap().unwrap().one_time {
                        got.push(k);
                    }
                }
                got
            })
        })
        .collect();
    let mut all: Vec<Vec<u8>> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(all.len(), 60);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 60, "a one-time prekey was handed out twice");
}

#[test]
fn an_envelope_queued_on_one_node_wakes_the_other_only() {
    let (_db, a, b) = two_nodes();
    let woken_a = Arc::new(Mutex::new(Vec::new()));
    let woken_b = Arc::new(Mutex::new(Vec::new()));
    {
        let w = woken_a.clone();
        a.watch_remote_enqueues(Arc::new(move |id: &Id| w.lock().unwrap().push(*id)));
        let w = woken_b.clone();
        b.watch_remote_enqueues(Arc::new(move |id: &Id| w.lock().unwrap().push(*id)));
    }
    assert!(a.create_mailbox(&id(1), &mailbox(2)).unwrap());
    assert!(matches!(
        a.enqueue(&id(1), &env(1), QUOTA).unwrap(),
        Enqueued::Queued(_)
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while woken_b.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "node B was not woken");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(*woken_b.lock().unwrap(), vec![id(1)]);
    // The envelope is there for node B's subscriber to fetch.
    assert_eq!(b.fetch(&id(1), 0, 10, 0).unwrap().0.len(), 1);
    // Node A's own subscribers are woken by the relay itself, not by the database.
    std::thread::sleep(Duration::from_millis(200));
    assert!(woken_a.lock().unwrap().is_empty());
}

#[test]
fn one_node_sweeps_at_a_time_and_expiry_follows_the_database_clock() {
    let (_db, a, b) = two_nodes();
    assert!(a.create_mailbox(&id(1), &mailbox(2)).unwrap());
    let db_now = crate::server::unix_now();
    let mut soon = env(1);
    soon.expires_at = db_now + 3_600;
    a.enqueue(&id(1), &soon, QUOTA).unwrap();
    // A node whose clock runs a day fast does not delete an envelope the database's clock
    // says is still live.
    let swept = b.sweep(db_now + 86_400, 1_000, 60).unwrap();
    assert_eq!(swept.envelopes, 0);
    assert_eq!(a.fetch(&id(1), 0, 10, db_now).unwrap().0.len(), 1);
    // While one node holds the sweeper's lock, the other's sweep does nothing.
    let mut expired = env(2);
    expired.expires_at = 100;
    a.enqueue(&id(1), &expired, QUOTA).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = _db.url.clone();
    let (client, driver) = rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        client.batch_execute("BEGIN").await.unwrap();
        client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&ADVISORY_SWEEP])
            .await
            .unwrap();
        (client, driver)
    });
    assert_eq!(b.sweep(db_now, 1_000, 60).unwrap(), Swept::default());
    rt.block_on(async {
        client.batch_execute("COMMIT").await.unwrap();
    });
    drop(client);
    let _ = rt.block_on(driver);
    assert_eq!(b.sweep(db_now, 1_000, 60).unwrap().envelopes, 1);
}

#[test]
fn a_relay_refuses_a_schema_newer_than_it_knows() {
    let db = TestDatabase::create().unwrap();
    drop(PgStore::connect(&db.url, 2).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        client
            .execute(
                "UPDATE handover_schema SET version = $1",
                &[&(SCHEMA_VERSION + 1)],
            )
            .await
            .unwrap();
        drop(client);
        let _ = driver.await;
    });
    match PgStore::connect(&db.url, 2) {
        Err(StoreError::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("{other:?}"),
    }
    // Starting again on the same version changes nothing.
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        client
            .execute(
                "UPDATE handover_schema SET version = $1",
                &[&SCHEMA_VERSION],
            )
            .await
            .unwrap();
        drop(client);
        let _ = driver.await;
    });
    drop(PgStore::connect(&db.url, 2).unwrap());
}

#[test]
fn an_unreachable_database_is_a_retryable_error_and_passwords_are_never_shown() {
    // Nothing listens on port 1.
    let err = PgStore::connect("postgres://handover:s3cret@127.0.0.1:1/none", 1).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert_eq!(
        redact("postgres://handover:s3cret@db.example:5432/relay"),
        "postgres://handover:***@db.example:5432/relay"
    );
    assert_eq!(
        redact("postgresql://db/relay?user=h&password=s3cret"),
        "postgresql://db/relay?user=h&password=***"
    );
    assert_eq!(
        redact("host=db user=h password=s3cret"),
        "host=db user=h password=***"
    );
    assert_eq!(
        redact("postgres://postgres@127.0.0.1/test"),
        "postgres://postgres@127.0.0.1/test"
    );
}
