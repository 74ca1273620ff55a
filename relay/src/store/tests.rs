//! The store's contract suite, run unchanged against every backend: [`MemoryStore`],
//! [`DiskStore`] and [`PgStore`] (a database of its own per test on the PostgreSQL server at
//! `HANDOVER_TEST_PG`, default `postgres://postgres@127.0.0.1:5432/test`; the PostgreSQL tests
//! fail, not skip, when it cannot be reached: `scripts/ensure-postgres.sh` starts one). Then the
//! embedded store's own tests (reopen, log compaction).

use std::sync::Arc;

use super::*;

/// A store for one test, and what must outlive it (a directory, a database).
type Opened = (Arc<dyn Store>, Box<dyn std::any::Any>);

fn open_memory() -> Opened {
    (
        Arc::new(MemoryStore::new(MemoryBackend::new())),
        Box::new(()),
    )
}

fn open_disk() -> Opened {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::new(
        LogBackend::open_with_log_size(&dir.path().join("db"), MIN_WAL_SIZE).unwrap(),
    );
    (Arc::new(store), Box::new(dir))
}

fn open_postgres() -> Opened {
    let db = crate::store::postgres::testing::TestDatabase::create()
        .expect("a PostgreSQL server for the tests (run scripts/ensure-postgres.sh)");
    let store = PgStore::connect(&db.url, 8).unwrap();
    (Arc::new(store), Box::new(db))
}

/// One `#[test]` per contract test and backend.
macro_rules! contract_suite {
    ($($name:ident => $test:expr;)*) => {
        mod memory {
            use super::*;
            $(#[test] fn $name() { let (store, keep) = open_memory(); ($test)(store); drop(keep); })*
        }
        mod disk {
            use super::*;
            $(#[test] fn $name() { let (store, keep) = open_disk(); ($test)(store); drop(keep); })*
        }
        mod postgres {
            use super::*;
            $(#[test] fn $name() {
                let (store, keep) = open_postgres();
                ($test)(store);
                drop(keep);
            })*
        }
    };
}

contract_suite! {
    mailboxes => |s: Arc<dyn Store>| super::mailboxes(&*s);
    sends_by_send_id => |s: Arc<dyn Store>| super::sends_by_send_id(&*s);
    queue_order_ack_and_quota => |s: Arc<dyn Store>| super::queue_order_ack_and_quota(&*s);
    sequence_numbers_are_per_mailbox => |s: Arc<dyn Store>| super::sequence_numbers_are_per_mailbox(&*s);
    expiry_and_tombstones => |s: Arc<dyn Store>| super::expiry_and_tombstones(&*s);
    prekeys => |s: Arc<dyn Store>| super::prekeys(&*s);
    directory => |s: Arc<dyn Store>| super::directory(&*s);
    blobs => |s: Arc<dyn Store>| super::blobs(&*s);
    usage_totals => |s: Arc<dyn Store>| super::usage_totals(&*s);
    one_time_prekey_taken_concurrently_is_handed_out_once => super::concurrent_prekey_take;
    paging_never_skips_under_concurrent_senders => super::paging_under_concurrent_senders;
    tombstones_are_bounded_per_mailbox => |s: Arc<dyn Store>| super::tombstones_are_bounded(&*s);
}

/// Senders on several threads queue into one mailbox while a reader pages through it with
/// `after_seq`, as a client does: the reader sees every envelope exactly once, in strictly
/// increasing `seq` (an envelope whose write committed after a higher number was read would
/// be skipped).
fn paging_under_concurrent_senders(store: Arc<dyn Store>) {
    const SENDERS: u8 = 4;
    const EACH: u32 = 50;
    let r = id(70);
    assert!(store.create_mailbox(&r, &mailbox(71)).unwrap());
    let quota = MailboxQuota {
        max_envelopes: 100_000,
        max_bytes: u64::MAX,
    };
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for n in 0..EACH {
                    let mut e = env(t, 1_000, 16);
                    e.envelope_id[..4].copy_from_slice(&n.to_be_bytes());
                    let admit = |_: &[[u8; 32]]| true;
                    let outcome = if n % 2 == 0 {
                        store.enqueue(&r, &e, quota).unwrap()
                    } else {
                        match store
                            .enqueue_for_sender(&id(71), &admit, &e, quota)
                            .unwrap()
                        {
                            SenderEnqueued::Mailbox(_, outcome) => outcome,
                            other => panic!("{other:?}"),
                        }
                    };
                    assert!(matches!(outcome, Enqueued::Queued(_)), "{outcome:?}");
                }
            })
        })
        .collect();
    let reader = {
        let store = store.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut after = 0;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let (page, _) = store.fetch(&r, after, 7, 0).unwrap();
                for q in &page {
                    assert!(q.seq > after);
                    after = q.seq;
                    seen.push(q.envelope.envelope_id);
                }
                if finished && page.is_empty() {
                    return seen;
                }
            }
        })
    };
    for s in senders {
        s.join().unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut seen = reader.join().unwrap();
    assert_eq!(
        seen.len(),
        usize::from(SENDERS) * EACH as usize,
        "an envelope was skipped"
    );
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        usize::from(SENDERS) * EACH as usize,
        "seen twice"
    );
}

const QUOTA: MailboxQuota = MailboxQuota {
    max_envelopes: 5,
    max_bytes: 1000,
};

fn id(n: u8) -> Id {
    [n; 16]
}

fn env(n: u8, expires_at: u64, len: usize) -> NewEnvelope {
    NewEnvelope {
        envelope_id: id(n),
        expires_at,
        ciphertext: vec![n; len],
    }
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

fn mailboxes(store: &dyn Store) {
    assert!(store.create_mailbox(&id(1), &mailbox(2)).unwrap());
    assert!(!store.create_mailbox(&id(1), &mailbox(3)).unwrap());
    assert!(!store.create_mailbox(&id(4), &mailbox(2)).unwrap());
    let (recv, m) = store.mailbox_by_send_id(&id(2)).unwrap().unwrap();
    assert_eq!(recv, id(1));
    assert_eq!(m, mailbox(2));
    assert!(store.set_capabilities(&id(1), &[[1; 32], [2; 32]]).unwrap());
    assert_eq!(
        store.mailbox(&id(1)).unwrap().unwrap().capability_hashes,
        vec![[1; 32], [2; 32]]
    );
    assert!(store.enqueue(&id(1), &env(1, 100, 10), QUOTA).is_ok());
    assert!(store.delete_mailbox(&id(1)).unwrap());
    assert!(store.mailbox(&id(1)).unwrap().is_none());
    assert!(store.mailbox_by_send_id(&id(2)).unwrap().is_none());
    assert!(!store.delete_mailbox(&id(1)).unwrap());
    assert!(!store.set_capabilities(&id(1), &[]).unwrap());
    assert_eq!(
        store.enqueue(&id(1), &env(1, 100, 10), QUOTA).unwrap(),
        Enqueued::NoMailbox
    );
}

/// `enqueue_for_sender` resolves the send id on every call: a mailbox whose capabilities were
/// replaced, or that was deleted and created again under the same send id, is seen as it is now
/// (the store may cache senders; this checks that the cache follows every change).
fn sends_by_send_id(store: &dyn Store) {
    let (recv, send, other) = (id(40), id(41), id(42));
    let admit_9 = |hashes: &[[u8; 32]]| hashes.contains(&[9; 32]);
    let send_one = |n: u8| store.enqueue_for_sender(&send, &admit_9, &env(n, 100, 10), QUOTA);
    assert_eq!(send_one(1).unwrap(), SenderEnqueued::NoMailbox);
    assert!(store.create_mailbox(&recv, &mailbox(41)).unwrap());
    let SenderEnqueued::Mailbox(to, Enqueued::Queued(seq)) = send_one(1).unwrap() else {
        panic!("first send not queued");
    };
    assert_eq!(to, recv);
    assert_eq!(
        send_one(1).unwrap(),
        SenderEnqueued::Mailbox(recv, Enqueued::Duplicate)
    );
    // The body reads back whole before the sync (from the record being collected) and after
    // it (from the log).
    for synced in [false, true] {
        if synced {
            store.sync().unwrap();
        }
        let (queued, _) = store.fetch(&recv, 0, 10, 0).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].seq, seq);
        assert_eq!(queued[0].envelope, env(1, 100, 10), "synced: {synced}");
    }
    let refuse_all = |_: &[[u8; 32]]| false;
    assert_eq!(
        store
            .enqueue_for_sender(&send, &refuse_all, &env(2, 100, 10), QUOTA)
            .unwrap(),
        SenderEnqueued::Refused
    );
    // Capabilities replaced: the old one is refused from the next send on.
    assert!(store.set_capabilities(&recv, &[[8; 32]]).unwrap());
    assert_eq!(send_one(2).unwrap(), SenderEnqueued::Refused);
    assert!(store.set_capabilities(&recv, &[[9; 32]]).unwrap());
    assert!(matches!(
        send_one(2).unwrap(),
        SenderEnqueued::Mailbox(_, Enqueued::Queued(_))
    ));
    // Deleted, then the send id taken by a new mailbox: sends go to the new one.
    assert!(store.delete_mailbox(&recv).unwrap());
    assert_eq!(send_one(3).unwrap(), SenderEnqueued::NoMailbox);
    assert!(store.create_mailbox(&other, &mailbox(41)).unwrap());
    let SenderEnqueued::Mailbox(to, Enqueued::Queued(_)) = send_one(3).unwrap() else {
        panic!("send to the new mailbox not queued");
    };
    assert_eq!(to, other);
    assert_eq!(store.fetch(&other, 0, 10, 0).unwrap().0.len(), 1);
    assert!(store.fetch(&recv, 0, 10, 0).unwrap().0.is_empty());
    assert!(store.delete_mailbox(&other).unwrap());
}

fn queue_order_ack_and_quota(store: &dyn Store) {
    let r = id(10);
    assert!(store.create_mailbox(&r, &mailbox(11)).unwrap());
    // Sequence numbers are strictly increasing per mailbox (not necessarily dense).
    let mut seqs = Vec::new();
    for n in 1..=5 {
        match store.enqueue(&r, &env(n, 100, 10), QUOTA).unwrap() {
            Enqueued::Queued(seq) => seqs.push(seq),
            other => panic!("{other:?}"),
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(
        store.enqueue(&r, &env(3, 100, 10), QUOTA).unwrap(),
        Enqueued::Duplicate
    );
    assert_eq!(
        store.enqueue(&r, &env(6, 100, 10), QUOTA).unwrap(),
        Enqueued::QuotaExceeded
    );
    let (page, more) = store.fetch(&r, 0, 2, 50).unwrap();
    assert_eq!(page.iter().map(|q| q.seq).collect::<Vec<_>>(), seqs[..2]);
    assert!(more);
    assert_eq!(page[0].envelope, env(1, 100, 10));
    let (page, more) = store.fetch(&r, seqs[1], 10, 50).unwrap();
    assert_eq!(page.iter().map(|q| q.seq).collect::<Vec<_>>(), seqs[2..]);
    assert!(!more);
    assert_eq!(store.ack(&r, &[id(1), id(2), id(2), id(99)]).unwrap(), 2);
    assert_eq!(store.ack(&r, &[id(1)]).unwrap(), 0);
    let m = store.mailbox(&r).unwrap().unwrap();
    assert_eq!((m.queued_count, m.queued_bytes), (3, 30));
    // Sequence numbers keep increasing after acks.
    assert!(matches!(
        store.enqueue(&r, &env(6, 100, 10), QUOTA).unwrap(),
        Enqueued::Queued(seq) if seq > seqs[4]
    ));
    // Byte quota.
    assert_eq!(
        store.enqueue(&r, &env(7, 100, 2000), QUOTA).unwrap(),
        Enqueued::QuotaExceeded
    );
    assert_eq!(
        store.envelope_states(&r, &[id(1), id(3)], 50).unwrap(),
        vec![Delivery::Unknown, Delivery::Pending]
    );
}

fn sequence_numbers_are_per_mailbox(store: &dyn Store) {
    let (a, b) = (id(60), id(62));
    assert!(store.create_mailbox(&a, &mailbox(61)).unwrap());
    assert!(store.create_mailbox(&b, &mailbox(63)).unwrap());
    let seq = |r: &Id, n: u8, expires_at: u64| match store
        .enqueue(r, &env(n, expires_at, 10), QUOTA)
        .unwrap()
    {
        Enqueued::Queued(s) => s,
        other => panic!("{other:?}"),
    };
    // Each mailbox counts its own envelopes from 1: a number says nothing about the others.
    let interleaved = [
        seq(&a, 1, 100),
        seq(&b, 1, 100),
        seq(&a, 2, 100),
        seq(&b, 2, 100),
        seq(&a, 3, 100),
    ];
    assert_eq!(interleaved, [1, 1, 2, 2, 3]);
    // Never reused: not after the newest envelope is acked, nor after all of them are.
    assert_eq!(store.ack(&a, &[id(3)]).unwrap(), 1);
    assert_eq!(seq(&a, 4, 100), 4);
    assert_eq!(store.ack(&a, &[id(1), id(2), id(4)]).unwrap(), 3);
    assert_eq!(seq(&a, 5, 100), 5);
    // Nor through the sender cache, which holds the mailbox's floor.
    let admit = |_: &[[u8; 32]]| true;
    let by_sender = |n: u8| match store
        .enqueue_for_sender(&id(61), &admit, &env(n, 100, 10), QUOTA)
        .unwrap()
    {
        SenderEnqueued::Mailbox(_, Enqueued::Queued(s)) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(by_sender(6), 6);
    assert_eq!(store.ack(&a, &[id(5), id(6)]).unwrap(), 2);
    assert_eq!(by_sender(7), 7);
    // Nor after the newest one expired and was swept.
    assert_eq!(seq(&b, 3, 30), 3);
    assert!(store.sweep(30, 1000, 50).unwrap().envelopes >= 1);
    assert_eq!(seq(&b, 4, 100), 4);
    assert!(store.delete_mailbox(&a).unwrap());
    assert!(store.delete_mailbox(&b).unwrap());
}

fn expiry_and_tombstones(store: &dyn Store) {
    let r = id(20);
    assert!(store.create_mailbox(&r, &mailbox(21)).unwrap());
    store.enqueue(&r, &env(1, 100, 10), QUOTA).unwrap();
    store.enqueue(&r, &env(2, 200, 10), QUOTA).unwrap();
    store.enqueue(&r, &env(3, 100, 10), QUOTA).unwrap();
    // Expired items are never returned, even before the sweep.
    let (page, _) = store.fetch(&r, 0, 10, 100).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].envelope.envelope_id, id(2));
    assert_eq!(
        store.envelope_states(&r, &[id(1), id(2)], 100).unwrap(),
        vec![Delivery::ExpiredUndelivered, Delivery::Pending]
    );
    let swept = store.sweep(100, 1000, 50).unwrap();
    assert!(swept.envelopes >= 2, "{swept:?}");
    assert_eq!(store.mailbox(&r).unwrap().unwrap().queued_count, 1);
    // The tombstone answers until it expires, then the relay forgets.
    assert_eq!(
        store.envelope_states(&r, &[id(1)], 120).unwrap(),
        vec![Delivery::ExpiredUndelivered]
    );
    store.sweep(150, 1000, 50).unwrap();
    assert_eq!(
        store.envelope_states(&r, &[id(1)], 150).unwrap(),
        vec![Delivery::Unknown]
    );
    // Acked envelopes leave nothing behind.
    store.ack(&r, &[id(2)]).unwrap();
    store.sweep(10_000, 1000, 50).unwrap();
    assert_eq!(
        store.envelope_states(&r, &[id(2)], 150).unwrap(),
        vec![Delivery::Unknown]
    );
}

fn prekeys(store: &dyn Store) {
    let r = id(30);
    assert!(store.prekey_take(&r).unwrap().is_none());
    assert!(store.create_mailbox(&r, &mailbox(31)).unwrap());
    assert!(store.prekey_take(&r).unwrap().is_none());
    let ot: Vec<Vec<u8>> = (0..3u8).map(|n| vec![n; 32]).collect();
    assert_eq!(
        store
            .prekey_publish(&r, b"bundle", &ot, &[vec![9; 40]], 3)
            .unwrap(),
        Published::Stored
    );
    assert_eq!(
        store
            .prekey_publish(&r, b"bundle", &[vec![5; 32]], &[], 3)
            .unwrap(),
        Published::QuotaExceeded
    );
    let first = store.prekey_take(&r).unwrap().unwrap();
    assert_eq!(first.bundle, b"bundle");
    assert_eq!(first.one_time, Some(vec![0; 32]));
    assert_eq!(first.one_time_kem, Some(vec![9; 40]));
    assert_eq!(first.remaining, 2);
    let second = store.prekey_take(&r).unwrap().unwrap();
    assert_eq!(second.one_time, Some(vec![1; 32]));
    assert_eq!(second.one_time_kem, None);
    store.prekey_take(&r).unwrap();
    let last = store.prekey_take(&r).unwrap().unwrap();
    assert_eq!((last.one_time, last.remaining), (None, 0));
}

fn directory(store: &dyn Store) {
    assert!(store.directory_put(&[1; 32], 10, b"a1").unwrap());
    assert!(!store.directory_put(&[1; 32], 10, b"a0").unwrap());
    assert!(store.directory_put(&[1; 32], 11, b"a2").unwrap());
    assert!(store.directory_put(&[2; 32], 1, b"b").unwrap());
    assert_eq!(
        store.directory_all().unwrap(),
        vec![b"a2".to_vec(), b"b".to_vec()]
    );
}

fn blobs(store: &dyn Store) {
    let b = id(40);
    let data: Vec<u8> = (0..600_000u32).map(|n| (n % 251) as u8).collect();
    let max = 1_000_000;
    assert_eq!(
        store.blob_begin(&b, data.len() as u64, 500, max).unwrap(),
        BlobBegun::Started
    );
    assert_eq!(
        store.blob_begin(&b, 1, 500, max).unwrap(),
        BlobBegun::IdTaken
    );
    // Nothing is reserved before bytes arrive.
    let racing = id(42);
    assert_eq!(
        store.blob_begin(&racing, 400_001, 500, max).unwrap(),
        BlobBegun::Started
    );
    for piece in data.chunks(100_000) {
        assert_eq!(
            store.blob_append(&b, piece, max).unwrap(),
            BlobAppended::Appended
        );
    }
    assert_eq!(
        store.blob_append(&b, &[0], max).unwrap(),
        BlobAppended::Refused,
        "past declared size"
    );
    // The limit is on bytes written to all blobs together.
    assert_eq!(
        store.blob_append(&racing, &[3; 300_000], max).unwrap(),
        BlobAppended::Appended
    );
    assert_eq!(
        store.blob_append(&racing, &[3; 100_001], max).unwrap(),
        BlobAppended::QuotaExceeded
    );
    assert_eq!(
        store.blob_begin(&id(45), 100_001, 500, max).unwrap(),
        BlobBegun::QuotaExceeded
    );
    store.blob_delete(&racing).unwrap();
    assert!(store.blob_complete(&b).unwrap());
    let meta = store.blob_meta(&b).unwrap().unwrap();
    assert!(meta.complete);
    assert_eq!(meta.size, 600_000);
    assert_eq!(store.blob_read(&b, 0, 1_000_000).unwrap(), data);
    assert_eq!(
        store.blob_read(&b, 262_100, 100).unwrap(),
        data[262_100..262_200]
    );
    // Incomplete uploads cannot be completed.
    let short = id(41);
    assert_eq!(
        store.blob_begin(&short, 10, 500, max).unwrap(),
        BlobBegun::Started
    );
    assert_eq!(
        store.blob_append(&short, &[1; 5], max).unwrap(),
        BlobAppended::Appended
    );
    assert!(!store.blob_complete(&short).unwrap());
    store.blob_delete(&short).unwrap();
    assert!(store.blob_meta(&short).unwrap().is_none());
    // Deleting released what they wrote.
    assert_eq!(
        store.blob_begin(&id(43), 400_000, 500, max).unwrap(),
        BlobBegun::Started
    );
    // An upload in progress does not survive a restart: the relay discards incomplete
    // blobs when it starts, and recounts the total from the blobs that stay.
    assert_eq!(
        store.blob_append(&id(43), &[4; 1000], max).unwrap(),
        BlobAppended::Appended
    );
    assert_eq!(store.discard_incomplete_blobs().unwrap(), 1);
    assert!(store.blob_meta(&id(43)).unwrap().is_none());
    assert!(store.blob_meta(&b).unwrap().is_some());
    assert_eq!(
        store.blob_begin(&id(43), 400_000, 500, max).unwrap(),
        BlobBegun::Started
    );
    assert_eq!(
        store.blob_begin(&id(46), 400_001, 500, max).unwrap(),
        BlobBegun::QuotaExceeded
    );
    // Expiry removes blobs.
    let swept = store.sweep(500, 1000, 50).unwrap();
    assert_eq!(swept.blobs, 2);
    assert!(store.blob_meta(&b).unwrap().is_none());
    // Sweeping released the reservations.
    assert_eq!(
        store.blob_begin(&id(44), max, 900, max).unwrap(),
        BlobBegun::Started
    );
}

fn concurrent_prekey_take(store: Arc<dyn Store>) {
    let r = id(50);
    assert!(store.create_mailbox(&r, &mailbox(51)).unwrap());
    let ot: Vec<Vec<u8>> = (0..100u8).map(|n| vec![n; 32]).collect();
    store.prekey_publish(&r, b"b", &ot, &[], 200).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for _ in 0..20 {
                    if let Some(k) = store.prekey_take(&r).unwrap().unwrap().one_time {
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
    assert_eq!(all.len(), 100);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 100, "a one-time prekey was handed out twice");
}

#[test]
fn sled_store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store =
            DiskStore::new(LogBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap());
        store.create_mailbox(&id(1), &mailbox(2)).unwrap();
        store
            .enqueue(
                &id(1),
                &env(1, 100, 300_000),
                MailboxQuota {
                    max_envelopes: 10,
                    max_bytes: 1 << 20,
                },
            )
            .unwrap();
        store.sync().unwrap();
    }
    // sled's worker threads may hold the file lock a moment after the first store is dropped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let backend = loop {
        match LogBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE) {
            Ok(b) => break b,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let store = DiskStore::new(backend);
    let (page, _) = store.fetch(&id(1), 0, 10, 0).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].envelope.ciphertext.len(), 300_000);
}

#[test]
fn sequence_numbers_are_not_reused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = reopen_sled(dir.path(), MIN_WAL_SIZE);
        assert!(store.create_mailbox(&id(1), &mailbox(2)).unwrap());
        for n in 1..=3 {
            assert_eq!(
                store.enqueue(&id(1), &env(n, 100, 10), QUOTA).unwrap(),
                Enqueued::Queued(u64::from(n))
            );
        }
        // Every envelope acked: nothing in the log's queue remembers the numbers.
        assert_eq!(store.ack(&id(1), &[id(1), id(2), id(3)]).unwrap(), 3);
        store.checkpoint().unwrap();
    }
    let store = reopen_sled(dir.path(), MIN_WAL_SIZE);
    assert_eq!(
        store.enqueue(&id(1), &env(4, 100, 10), QUOTA).unwrap(),
        Enqueued::Queued(4)
    );
}

fn reopen_sled(dir: &std::path::Path, segment_size: u64) -> DiskStore {
    // sled's worker threads may hold the file lock a moment after the first store is dropped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match LogBackend::open_with_log_size(dir, segment_size) {
            Ok(b) => return DiskStore::new(b),
            Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn segment_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("seg-") && !name.ends_with(".tmp")
        })
        .count()
}

#[test]
fn queues_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let quota = MailboxQuota {
        max_envelopes: 100,
        max_bytes: 1 << 20,
    };
    let seqs: Vec<u64>;
    {
        let store = reopen_sled(dir.path(), MIN_WAL_SIZE);
        assert!(store.create_mailbox(&id(1), &mailbox(2)).unwrap());
        assert!(store.create_mailbox(&id(3), &mailbox(4)).unwrap());
        seqs = (1..=6)
            .map(
                |n| match store.enqueue(&id(1), &env(n, 100, 50), quota).unwrap() {
                    Enqueued::Queued(s) => s,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        store.enqueue(&id(3), &env(9, 100, 50), quota).unwrap();
        store.ack(&id(1), &[id(2), id(4)]).unwrap();
        store.sweep(0, 10, 50).unwrap();
        // Deleting and re-creating a mailbox: the old queue stays gone.
        assert!(store.delete_mailbox(&id(3)).unwrap());
        assert!(store.create_mailbox(&id(3), &mailbox(4)).unwrap());
        store.enqueue(&id(3), &env(8, 100, 50), quota).unwrap();
        store.sync().unwrap();
    }
    let store = reopen_sled(dir.path(), MIN_WAL_SIZE);
    let (page, more) = store.fetch(&id(1), 0, 10, 50).unwrap();
    assert!(!more);
    assert_eq!(
        page.iter().map(|q| q.seq).collect::<Vec<_>>(),
        vec![seqs[0], seqs[2], seqs[4], seqs[5]]
    );
    assert_eq!(page[1].envelope, env(3, 100, 50));
    let m = store.mailbox(&id(1)).unwrap().unwrap();
    assert_eq!((m.queued_count, m.queued_bytes), (4, 200));
    let (page, _) = store.fetch(&id(3), 0, 10, 50).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].envelope.envelope_id, id(8));
    // Sequence numbers never go back after a restart.
    assert!(matches!(
        store.enqueue(&id(1), &env(7, 100, 50), quota).unwrap(),
        Enqueued::Queued(s) if s > seqs[5]
    ));
    assert_eq!(
        store.enqueue(&id(1), &env(3, 100, 50), quota).unwrap(),
        Enqueued::Duplicate
    );
}

#[test]
fn compaction_moves_live_envelopes_out_of_dead_segments() {
    let dir = tempfile::tempdir().unwrap();
    let quota = MailboxQuota {
        max_envelopes: 1_000_000,
        max_bytes: u64::MAX,
    };
    let keep = NewEnvelope {
        envelope_id: [0xEE; 16],
        expires_at: 1_000,
        ciphertext: vec![0xEE; 5_000],
    };
    let kept_seq;
    {
        let store = reopen_sled(dir.path(), MIN_WAL_SIZE);
        assert!(store.create_mailbox(&id(1), &mailbox(2)).unwrap());
        kept_seq = match store.enqueue(&id(1), &keep, quota).unwrap() {
            Enqueued::Queued(s) => s,
            other => panic!("{other:?}"),
        };
        store.sync().unwrap();
        // Fill several segments with envelopes that are acked at once.
        for n in 0..40u32 {
            let mut e = env(0, 1_000, 100 * 1024);
            e.envelope_id[..4].copy_from_slice(&n.to_be_bytes());
            store.enqueue(&id(1), &e, quota).unwrap();
            store.sync().unwrap();
            store.ack(&id(1), &[e.envelope_id]).unwrap();
            store.sync().unwrap();
        }
        // The first segment holds only the kept envelope; the log keeps growing behind it.
        let before = segment_files(dir.path());
        assert!(before >= 4, "{before} segments");
        let mut compacted = 0;
        for _ in 0..10 {
            store.sweep(0, 100, 50).unwrap();
            compacted += store.compact().unwrap();
            store.sync().unwrap();
        }
        assert_eq!(compacted, 1);
        store.checkpoint().unwrap();
        let after = segment_files(dir.path());
        assert!(
            after < before,
            "{after} segments after compaction, {before} before"
        );
    }
    let store = reopen_sled(dir.path(), MIN_WAL_SIZE);
    let (page, _) = store.fetch(&id(1), 0, 10, 50).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq, kept_seq);
    assert_eq!(page[0].envelope, keep);
}

/// A [`MemoryBackend`] that offers its log for compaction, runs a hook (once) on the next body
/// read (to run a store call between a fetch's index read and its body read), records the
/// largest atomic write and can be told to fail writes.
#[derive(Default)]
struct Probe {
    inner: MemoryBackend,
    hook: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    largest_write: std::sync::atomic::AtomicUsize,
    /// `Some(n)`: n more writes succeed, then every write fails.
    writes_left: std::sync::Mutex<Option<usize>>,
    /// Keyspace reads.
    gets: std::sync::atomic::AtomicUsize,
}

impl KvBackend for Probe {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.get(key)
    }
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        self.inner.scan(start, end, limit)
    }
    fn apply_logged(&self, batch: Batch, ops: &[LogOp<'_>]) -> Result<Vec<BodyRef>, StoreError> {
        if let Some(left) = self.writes_left.lock().unwrap().as_mut() {
            if *left == 0 {
                return Err(StoreError::Backend("injected".into()));
            }
            *left -= 1;
        }
        self.largest_write
            .fetch_max(batch.len() + ops.len(), std::sync::atomic::Ordering::SeqCst);
        self.inner.apply_logged(batch, ops)
    }
    fn read_body(&self, body: &BodyRef) -> Result<Option<Vec<u8>>, StoreError> {
        let hook = self.hook.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        self.inner.read_body(body)
    }
    fn take_recovered(&self) -> Vec<Recovered> {
        self.inner.take_recovered()
    }
    fn seq_floor(&self) -> u64 {
        self.inner.seq_floor()
    }
    fn sync(&self, oldest_live: Option<u64>) -> Result<(), StoreError> {
        self.inner.sync(oldest_live)
    }
    fn compaction_candidate(&self) -> Option<Candidate> {
        // The memory backend keeps every body in "segment 0": always worth compacting.
        Some(Candidate {
            segment: 0,
            segments: 1,
            segment_size: 1 << 30,
            sealed_below: 1,
        })
    }
}

fn keys_with_prefix(store: &KvStore<Probe>, prefix: &[u8]) -> usize {
    let mut end = prefix.to_vec();
    end.push(0xff);
    end.push(0xff);
    store
        .backend()
        .scan(prefix, &end, usize::MAX)
        .unwrap()
        .len()
}

#[test]
fn tombstones_are_bounded_and_a_mailbox_is_deleted_in_bounded_steps() {
    use std::sync::atomic::Ordering;
    let store = KvStore::new(Probe::default());
    let r = id(1);
    assert!(store.create_mailbox(&r, &mailbox(2)).unwrap());
    let quota = MailboxQuota {
        max_envelopes: 1_000,
        max_bytes: u64::MAX,
    };
    // More envelopes expire undelivered than a mailbox may keep tombstones for.
    let rounds = MAX_TOMBSTONES_PER_MAILBOX / 1_000 + 2;
    for round in 0..rounds {
        for n in 0..1_000u32 {
            let mut e = env(0, 10 + round, 10);
            e.envelope_id[..4].copy_from_slice(&(round as u32 * 1_000 + n).to_be_bytes());
            assert!(matches!(
                store.enqueue(&r, &e, quota).unwrap(),
                Enqueued::Queued(_)
            ));
        }
        store.sweep(10 + round, 100_000, 1_000_000).unwrap();
    }
    let tombs = [&[b'T'][..], &r].concat();
    assert_eq!(
        keys_with_prefix(&store, &tombs) as u64,
        MAX_TOMBSTONES_PER_MAILBOX
    );
    // Many one-time prekeys too.
    let prekeys: Vec<Vec<u8>> = (0..3_000u32).map(|n| n.to_be_bytes().to_vec()).collect();
    assert_eq!(
        store
            .prekey_publish(&r, b"bundle", &prekeys, &prekeys, 5_000)
            .unwrap(),
        Published::Stored
    );
    // The relay stops after the first step of the deletion (the mailbox, its queue and the
    // deletion marker): the mailbox is gone, its id stays taken until the rest is deleted,
    // and the sweeper finishes the job, in bounded steps too.
    store.backend().largest_write.store(0, Ordering::SeqCst);
    *store.backend().writes_left.lock().unwrap() = Some(1);
    assert!(store.delete_mailbox(&r).is_err());
    *store.backend().writes_left.lock().unwrap() = None;
    assert!(store.mailbox(&r).unwrap().is_none());
    assert!(keys_with_prefix(&store, &tombs) > 0);
    assert!(!store.create_mailbox(&r, &mailbox(3)).unwrap(), "id taken");
    store.sweep(0, 10, 0).unwrap();
    let largest = store.backend().largest_write.load(Ordering::SeqCst);
    assert!(largest <= 2 * PURGE_STEP + 1, "a write of {largest} keys");
    for table in [b'T', b'O', b'Z'] {
        assert_eq!(keys_with_prefix(&store, &[&[table][..], &r].concat()), 0);
    }
    assert_eq!(keys_with_prefix(&store, b"X"), 0);
    assert!(store.create_mailbox(&r, &mailbox(3)).unwrap());
}

#[test]
fn fetch_finds_an_envelope_that_compaction_moved_meanwhile() {
    let store = Arc::new(KvStore::new(Probe::default()));
    assert!(store.create_mailbox(&id(1), &mailbox(2)).unwrap());
    store.enqueue(&id(1), &env(1, 100, 10), QUOTA).unwrap();
    // Between the fetch's index read and its body read, compaction copies the envelope
    // forward and its old place is reclaimed.
    let weak = Arc::downgrade(&store);
    *store.backend().hook.lock().unwrap() = Some(Box::new(move || {
        let copied = weak.upgrade().unwrap().compact().unwrap();
        assert_eq!(copied, 1);
    }));
    let (page, more) = store.fetch(&id(1), 0, 10, 50).unwrap();
    assert!(store.backend().hook.lock().unwrap().is_none(), "hook ran");
    assert!(!more);
    assert_eq!(page.len(), 1, "a live envelope was skipped");
    assert_eq!(page[0].envelope, env(1, 100, 10));
}

#[test]
fn a_full_sender_cache_evicts_one_sender_and_misses_are_left_to_the_blocking_path() {
    use std::sync::atomic::Ordering;
    let cap = super::kv::SENDER_CACHE_MAX;
    let store = KvStore::new(Probe::default());
    let quota = MailboxQuota {
        max_envelopes: 10,
        max_bytes: u64::MAX,
    };
    let admit = |_: &[[u8; 32]]| true;
    let ids = |i: usize| {
        let mut send = [1u8; 16];
        send[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let mut recv = send;
        recv[15] = 2;
        (recv, send)
    };
    for i in 0..=cap {
        let (recv, send) = ids(i);
        let m = Mailbox {
            send_id: send,
            ..mailbox(0)
        };
        assert!(store.create_mailbox(&recv, &m).unwrap());
    }
    let send = |i: usize, n: u8| {
        store
            .enqueue_for_sender(&ids(i).1, &admit, &env(n, 100, 10), quota)
            .unwrap()
    };
    // Fill the cache; one sender keeps sending.
    for i in 0..cap {
        assert!(matches!(
            send(i, 1),
            SenderEnqueued::Mailbox(_, Enqueued::Queued(1))
        ));
    }
    assert!(matches!(
        send(0, 2),
        SenderEnqueued::Mailbox(_, Enqueued::Queued(2))
    ));
    // A new sender when the cache is full evicts one rarely used sender, not all of them.
    assert!(matches!(
        send(cap, 1),
        SenderEnqueued::Mailbox(_, Enqueued::Queued(1))
    ));
    let gets = store.backend().gets.load(Ordering::SeqCst);
    assert!(matches!(
        send(0, 3),
        SenderEnqueued::Mailbox(_, Enqueued::Queued(3))
    ));
    assert!(matches!(
        send(cap, 2),
        SenderEnqueued::Mailbox(_, Enqueued::Queued(2))
    ));
    assert_eq!(
        store.backend().gets.load(Ordering::SeqCst),
        gets,
        "a cached sender was read from the keyspace"
    );
    // The nonblocking path serves cached senders and leaves a miss, untouched, to the
    // blocking one: exactly one of the first senders was evicted.
    let mut misses = 0;
    for i in 1..cap {
        let before = store.backend().gets.load(Ordering::SeqCst);
        match store.try_enqueue_for_sender(&ids(i).1, &admit, &env(2, 100, 10), quota) {
            Some(outcome) => assert!(matches!(
                outcome.unwrap(),
                SenderEnqueued::Mailbox(_, Enqueued::Queued(2))
            )),
            None => {
                misses += 1;
                assert_eq!(store.backend().gets.load(Ordering::SeqCst), before);
                assert_eq!(store.mailbox(&ids(i).0).unwrap().unwrap().queued_count, 1);
            }
        }
    }
    assert_eq!(misses, 1);
}

#[test]
fn one_long_lived_envelope_per_segment_does_not_grow_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen_sled(dir.path(), MIN_WAL_SIZE);
    let quota = MailboxQuota {
        max_envelopes: 1_000_000,
        max_bytes: u64::MAX,
    };
    let (keep, churn) = (id(1), id(3));
    assert!(store.create_mailbox(&keep, &mailbox(2)).unwrap());
    assert!(store.create_mailbox(&churn, &mailbox(4)).unwrap());
    let mut n = 0u32;
    let mut kept = Vec::new();
    // Each round writes about three segments of envelopes that are acked at once and leaves
    // one long-lived envelope in each (an offline recipient), then runs one sweep: the
    // sweeper's pace, slower than the writes.
    for round in 0..12 {
        for _segment in 0..3 {
            let mut long = env(0, 1_000_000, 1_000);
            long.envelope_id[..4].copy_from_slice(&n.to_be_bytes());
            n += 1;
            assert!(matches!(
                store.enqueue(&keep, &long, quota).unwrap(),
                Enqueued::Queued(_)
            ));
            kept.push(long);
            for _ in 0..10 {
                let mut e = env(0, 1_000_000, 100 * 1024);
                e.envelope_id[..4].copy_from_slice(&n.to_be_bytes());
                n += 1;
                store.enqueue(&churn, &e, quota).unwrap();
                store.sync().unwrap();
                store.ack(&churn, &[e.envelope_id]).unwrap();
                store.sync().unwrap();
            }
        }
        // The sweeper's sweep (which compacts after expiring), or its compaction check
        // between sweeps.
        if round % 2 == 0 {
            store.sweep(0, 100, 50).unwrap();
        }
        store.compact().unwrap();
        store.sync().unwrap();
    }
    // Live data is 36 kB; the log may hold it twice plus a few segments (the active one,
    // the one being checkpointed, the spare) and what one round wrote since the last sweep.
    let files = segment_files(dir.path());
    assert!(
        files <= 8,
        "{files} segments of 1 MiB for {} kB live",
        kept.len()
    );
    drop(store);
    // Nothing live was lost on the way.
    let store = reopen_sled(dir.path(), MIN_WAL_SIZE);
    let (page, _) = store.fetch(&keep, 0, 100, 50).unwrap();
    assert_eq!(
        page.into_iter().map(|q| q.envelope).collect::<Vec<_>>(),
        kept
    );
    assert!(store.fetch(&churn, 0, 100, 50).unwrap().0.is_empty());
}

/// The relay-wide totals follow creations, deletions, sends, acks and expiry, in both stores.
fn usage_totals(store: &dyn Store) {
    assert_eq!(store.usage(), Usage::default());
    for n in 1..=3 {
        assert!(store.create_mailbox(&id(n), &mailbox(n + 100)).unwrap());
    }
    for (n, len) in [(1u8, 10usize), (2, 20), (3, 30)] {
        let queued = store.enqueue(&id(n), &env(n, 100, len), QUOTA).unwrap();
        assert!(matches!(queued, Enqueued::Queued(_)));
    }
    let usage = |mailboxes, queued_envelopes, queued_bytes| Usage {
        mailboxes,
        queued_envelopes,
        queued_bytes,
    };
    assert_eq!(store.usage(), usage(3, 3, 60));
    assert_eq!(store.ack(&id(2), &[id(2)]).unwrap(), 1);
    assert_eq!(store.usage(), usage(3, 2, 40));
    assert!(store.delete_mailbox(&id(3)).unwrap());
    assert_eq!(store.usage(), usage(2, 1, 10));
    store.sweep(200, 100, 10).unwrap();
    assert_eq!(store.usage(), usage(2, 0, 0));
}

#[test]
fn usage_counts_mailboxes_and_queued_envelopes_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store =
            DiskStore::new(LogBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap());
        usage_totals(&store);
        assert!(store.enqueue(&id(1), &env(9, 500, 7), QUOTA).is_ok());
        store.sync().unwrap();
    }
    // Counted again when the store opens: mailboxes from the keyspace, envelopes from the log.
    let store = reopen_sled(dir.path(), MIN_WAL_SIZE);
    assert_eq!(
        store.usage(),
        Usage {
            mailboxes: 2,
            queued_envelopes: 1,
            queued_bytes: 7,
        }
    );
}

/// A mailbox keeps at most [`MAX_TOMBSTONES_PER_MAILBOX`] tombstones: the envelopes that expire
/// beyond them read as unknown, as after an ack.
fn tombstones_are_bounded(store: &dyn Store) {
    let r = id(80);
    assert!(store.create_mailbox(&r, &mailbox(81)).unwrap());
    let quota = MailboxQuota {
        max_envelopes: 1_000_000,
        max_bytes: u64::MAX,
    };
    let total = MAX_TOMBSTONES_PER_MAILBOX as u32 + 300;
    let ids: Vec<Id> = (0..total)
        .map(|n| {
            let mut e = env(0, 10, 4);
            e.envelope_id[..4].copy_from_slice(&n.to_be_bytes());
            assert!(matches!(
                store.enqueue(&r, &e, quota).unwrap(),
                Enqueued::Queued(_)
            ));
            e.envelope_id
        })
        .collect();
    let mut swept = 0;
    loop {
        let s = store.sweep(10, 4_096, 1_000_000).unwrap();
        if s.envelopes == 0 {
            break;
        }
        swept += s.envelopes;
    }
    assert_eq!(swept, u64::from(total));
    let mut remembered = 0;
    for chunk in ids.chunks(1_000) {
        remembered += store
            .envelope_states(&r, chunk, 20)
            .unwrap()
            .into_iter()
            .filter(|d| *d == Delivery::ExpiredUndelivered)
            .count() as u64;
    }
    assert_eq!(remembered, MAX_TOMBSTONES_PER_MAILBOX);
    assert_eq!(store.mailbox(&r).unwrap().unwrap().queued_count, 0);
}
