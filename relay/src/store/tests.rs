//! One store test suite, run against both [`MemoryStore`] and [`DiskStore`].

use std::sync::Arc;

use super::*;

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

fn suite(store: &dyn Store) {
    mailboxes(store);
    sends_by_send_id(store);
    queue_order_ack_and_quota(store);
    expiry_and_tombstones(store);
    prekeys(store);
    directory(store);
    blobs(store);
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
    assert_eq!(
        store.blob_begin(&id(42), 400_001, 500, max).unwrap(),
        BlobBegun::QuotaExceeded
    );
    for piece in data.chunks(100_000) {
        assert!(store.blob_append(&b, piece).unwrap());
    }
    assert!(!store.blob_append(&b, &[0]).unwrap(), "past declared size");
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
    assert!(store.blob_append(&short, &[1; 5]).unwrap());
    assert!(!store.blob_complete(&short).unwrap());
    store.blob_delete(&short).unwrap();
    assert!(store.blob_meta(&short).unwrap().is_none());
    // Deleting released its reservation.
    assert_eq!(
        store.blob_begin(&id(43), 400_000, 500, max).unwrap(),
        BlobBegun::Started
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
fn memory_store_suite() {
    suite(&MemoryStore::new(MemoryBackend::new()));
    concurrent_prekey_take(Arc::new(MemoryStore::new(MemoryBackend::new())));
}

#[test]
fn sled_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::new(
        LogBackend::open_with_log_size(&dir.path().join("db"), MIN_WAL_SIZE).unwrap(),
    );
    suite(&store);
    store.sync().unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    concurrent_prekey_take(Arc::new(DiskStore::new(
        LogBackend::open_with_log_size(dir2.path(), MIN_WAL_SIZE).unwrap(),
    )));
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
            let swept = store.sweep(0, 100, 50).unwrap();
            store.sync().unwrap();
            compacted += swept.compacted;
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
    usage_totals(&MemoryStore::new(MemoryBackend::new()));
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
