//! Unit tests of the log backend.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::commit::{LOG_CACHE_WINDOW, LOG_UNCACHE_STEP};
use super::format::{crc32, decode_batches};
use super::keyspace::{LSN_KEY, SLED_SEGMENT_SIZE};
use super::migrate::{
    OLD_T_ENV, OLD_T_EXPIRY, OLD_T_QUEUE, OLD_WAL_MAGIC, OLD_X_ENVELOPE, OldQueuedRec,
};
use super::segment::{RECORD_HEADER_LEN, listing, segment_id, segment_name};
use super::*;

/// Reopens a store dropped a moment ago: sled's worker threads may hold its file lock for
/// a short while after the `Db` handle is gone.
fn reopen(dir: &Path) -> LogBackend {
    try_reopen(dir).unwrap()
}

fn try_reopen(dir: &Path) -> Result<LogBackend, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match LogBackend::open_with_log_size(dir, MIN_WAL_SIZE) {
            Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn put(k: &[u8], v: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    (k.to_vec(), Some(v.to_vec()))
}

fn enqueue(n: u8, body: &[u8]) -> LogOp<'_> {
    LogOp::Enqueue {
        recv_id: [1; 16],
        seq: u64::from(n),
        envelope_id: [n; 16],
        expires_at: 1000,
        ciphertext: body,
    }
}

fn segments(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = listing(&StdFs, dir)
        .unwrap()
        .iter()
        .filter_map(|n| segment_id(n))
        .collect();
    ids.sort_unstable();
    ids
}

/// Writes a store in the previous format: envelopes in sled, two log files.
fn write_old_format(dir: &Path, unclean: bool) {
    {
        let db = sled::Config::new()
            .path(dir)
            .segment_size(SLED_SEGMENT_SIZE)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
            .unwrap();
        let recv = [5u8; 16];
        for (seq, n) in [(3u64, 7u8), (4, 8)] {
            let rec = OldQueuedRec {
                envelope_id: vec![n; 16],
                expires_at: 1_000 + u64::from(n),
                ciphertext: vec![n; 100],
            };
            let seq_be = seq.to_be_bytes();
            db.insert(
                [&[OLD_T_QUEUE][..], &recv, &seq_be].concat(),
                prost::Message::encode_to_vec(&rec),
            )
            .unwrap();
            db.insert([&[OLD_T_ENV][..], &recv, &[n; 16]].concat(), &seq_be)
                .unwrap();
            db.insert(
                [
                    &[OLD_T_EXPIRY][..],
                    &rec.expires_at.to_be_bytes(),
                    &[OLD_X_ENVELOPE],
                    &recv,
                    &seq_be,
                ]
                .concat(),
                b"",
            )
            .unwrap();
        }
        db.insert(b"Mmailbox", b"kept").unwrap();
        db.insert(LSN_KEY, &50u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    for (i, name) in OLD_WAL_FILES.iter().enumerate() {
        let mut h = OLD_WAL_MAGIC.to_vec();
        h.extend_from_slice(&(10 + i as u64).to_be_bytes());
        let crc = crc32(&[&h]);
        h.extend_from_slice(&crc.to_be_bytes());
        h.resize(8192, 0);
        if unclean && i == 1 {
            let payload = b"some batch";
            let mut rec = Vec::new();
            rec.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            rec.extend_from_slice(&11u64.to_be_bytes());
            rec.extend_from_slice(payload);
            let crc = crc32(&[&rec]);
            h[4096..4100].copy_from_slice(&crc.to_be_bytes());
            h[4100..4100 + rec.len()].copy_from_slice(&rec);
        }
        std::fs::write(dir.join(name), &h).unwrap();
    }
}

#[test]
fn old_format_is_migrated_into_the_log() {
    let dir = tempfile::tempdir().unwrap();
    write_old_format(dir.path(), false);
    let check = |backend: &LogBackend| {
        let recovered = backend.take_recovered();
        assert_eq!(recovered.len(), 2, "{recovered:?}");
        for (r, (seq, n)) in recovered.iter().zip([(3u64, 7u8), (4, 8)]) {
            let Recovered::Enqueue {
                recv_id,
                seq: s,
                envelope_id,
                expires_at,
                body,
            } = r
            else {
                panic!("{r:?}")
            };
            assert_eq!(
                (*recv_id, *s, *envelope_id, *expires_at),
                ([5; 16], seq, [n; 16], 1_000 + u64::from(n))
            );
            assert_eq!(backend.read_body(body).unwrap().unwrap(), vec![n; 100]);
        }
        // The old envelope keys are gone, the rest of the keyspace is kept.
        for table in [OLD_T_QUEUE, OLD_T_ENV, OLD_T_EXPIRY] {
            assert!(backend.scan(&[table], &[table + 1], 10).unwrap().is_empty());
        }
        assert_eq!(backend.get(b"Mmailbox").unwrap(), Some(b"kept".to_vec()));
        assert!(backend.seq_floor() > 50);
    };
    {
        let backend = reopen(dir.path());
        check(&backend);
        assert!(!dir.path().join("wal-0").exists());
        assert!(!dir.path().join("wal-1").exists());
    }
    // Once migrated, the envelopes come back from the log.
    check(&reopen(dir.path()));
}

#[test]
fn old_format_not_shut_down_cleanly_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_old_format(dir.path(), true);
    let err = try_reopen(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not shut down cleanly"), "{err}");
    assert!(dir.path().join("wal-0").exists());
}

#[test]
fn crc32_known_answer() {
    assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
    assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
}

proptest::proptest! {
    #[test]
    fn record_payload_decoding_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = decode_batches(&bytes, 1, SEG_HEADER_LEN);
    }

    #[test]
    fn record_payload_round_trips(
        batches in proptest::collection::vec(
            (
                proptest::collection::vec(
                    (
                        proptest::collection::vec(proptest::num::u8::ANY, 0..8),
                        proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..8)),
                    ),
                    0..4,
                ),
                proptest::collection::vec((0u8..3, proptest::num::u8::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..40)), 0..4),
            ),
            0..4,
        )
    ) {
        let mut out = Vec::new();
        let mut expected = Vec::new();
        let at = 5000;
        for (i, (kv, ops)) in batches.iter().enumerate() {
            let ops: Vec<LogOp<'_>> = ops
                .iter()
                .map(|(kind, n, body)| match kind {
                    0 => enqueue(*n, body),
                    1 => LogOp::Remove { recv_id: [*n; 16], seq: u64::from(*n) },
                    _ => LogOp::DropMailbox { recv_id: [*n; 16] },
                })
                .collect();
            let bodies = encode_batch(i as u64, kv, &ops, &mut out).unwrap();
            let mut bodies = bodies.into_iter();
            let recovered: Vec<Recovered> = ops
                .iter()
                .map(|op| match op {
                    LogOp::Enqueue { recv_id, seq, envelope_id, expires_at, ciphertext } => {
                        let (pos, len) = bodies.next().unwrap();
                        assert_eq!(len as usize, ciphertext.len());
                        Recovered::Enqueue {
                            recv_id: *recv_id,
                            seq: *seq,
                            envelope_id: *envelope_id,
                            expires_at: *expires_at,
                            body: BodyRef { segment: 7, offset: at + pos as u64, len },
                        }
                    }
                    LogOp::Remove { recv_id, seq } => Recovered::Remove { recv_id: *recv_id, seq: *seq },
                    LogOp::DropMailbox { recv_id } => Recovered::DropMailbox { recv_id: *recv_id },
                })
                .collect();
            expected.push((i as u64, kv.clone(), recovered));
        }
        let back = decode_batches(&out, 7, at).unwrap();
        proptest::prop_assert_eq!(back, expected);
    }
}

#[test]
fn bodies_are_readable_before_and_after_the_write_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let body = vec![0x42u8; 3000];
    let (first, second);
    {
        let backend = LogBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap();
        first = backend
            .apply_logged(vec![put(b"k", b"v")], &[enqueue(1, &body)])
            .unwrap()[0];
        // Visible from the buffer before the sync.
        assert_eq!(backend.read_body(&first).unwrap().unwrap(), body);
        backend.sync(None).unwrap();
        second = backend.apply_logged(vec![], &[enqueue(2, b"xyz")]).unwrap()[0];
        assert_eq!(backend.read_body(&first).unwrap().unwrap(), body);
        assert_eq!(backend.read_body(&second).unwrap().unwrap(), b"xyz");
        backend.sync(Some(first.segment)).unwrap();
        assert_eq!(backend.read_body(&second).unwrap().unwrap(), b"xyz");
        assert_eq!(backend.get(b"k").unwrap(), Some(b"v".to_vec()));
    }
    let backend = reopen(dir.path());
    let recovered = backend.take_recovered();
    assert_eq!(recovered.len(), 2);
    assert!(matches!(recovered[0], Recovered::Enqueue { body: b, seq: 1, .. } if b == first));
    assert!(matches!(recovered[1], Recovered::Enqueue { body: b, seq: 2, .. } if b == second));
    assert_eq!(backend.read_body(&first).unwrap().unwrap(), body);
    assert_eq!(backend.get(b"k").unwrap(), Some(b"v".to_vec()));
    assert!(backend.seq_floor() > 2);
}

/// Whether the page holding `offset` is in the page cache: a read that must not wait
/// for the disk (`RWF_NOWAIT`) fails with `EAGAIN` when it is not.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn cached(file: &File, offset: u64) -> bool {
    let mut byte = [0u8; 1];
    let mut bufs = [std::io::IoSliceMut::new(&mut byte)];
    match rustix::io::preadv2(file, &mut bufs, offset, rustix::io::ReadWriteFlags::NOWAIT) {
        Ok(n) => n == 1,
        Err(rustix::io::Errno::AGAIN) => false,
        Err(err) => panic!("preadv2: {err}"),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn synced_log_behind_the_window_leaves_the_page_cache() {
    let body = vec![0x5au8; 64 * 1024];
    let groups = (LOG_CACHE_WINDOW + 2 * LOG_UNCACHE_STEP) / body.len() as u64 + 4;
    // Segments smaller than the window (the previous segment is handed back whole) and
    // larger (the active one is handed back behind the window).
    for segment_size in [MIN_WAL_SIZE, 4 * LOG_CACHE_WINDOW] {
        // On the disk: tmpfs keeps its pages whatever the advice.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let backend = LogBackend::open_with_log_size(dir.path(), segment_size).unwrap();
        let mut bodies = Vec::new();
        for n in 0..groups {
            let op = enqueue(n as u8, &body);
            bodies.push(backend.apply_logged(vec![], &[op]).unwrap()[0]);
            // Every body stays queued, so no segment is deleted.
            backend.sync(Some(bodies[0].segment)).unwrap();
        }
        // The page cache belongs to the file, so another descriptor sees the same pages.
        let file = |b: &BodyRef| File::open(dir.path().join(segment_name(b.segment))).unwrap();
        let (first, last) = (bodies[0], bodies[bodies.len() - 1]);
        assert!(
            !cached(&file(&first), first.offset),
            "segments of {segment_size} bytes: the first body is still cached"
        );
        assert!(
            cached(&file(&last), last.offset + u64::from(last.len) - 1),
            "segments of {segment_size} bytes: the last body is not cached"
        );
        // Nothing is lost: the bodies handed back are read from the disk.
        for b in [first, last] {
            assert_eq!(backend.read_body(&b).unwrap().unwrap(), body);
        }
    }
}

#[test]
fn torn_tail_is_ignored_and_later_writes_survive() {
    let dir = tempfile::tempdir().unwrap();
    {
        let backend = LogBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap();
        backend
            .apply_logged(vec![put(b"a", b"1")], &[enqueue(1, b"one")])
            .unwrap();
        backend.sync(None).unwrap();
        backend
            .apply_logged(vec![put(b"b", b"2"), (b"a".to_vec(), None)], &[])
            .unwrap();
        backend.sync(None).unwrap();
        // A torn record after the last good one: a header announcing more bytes than
        // arrived, then garbage (as if the write was cut short by a power loss).
        let wal = backend.lock_wal();
        let at = backend.lock_pending().start;
        let mut torn = Vec::new();
        torn.extend_from_slice(&0xDEAD_BEEFu32.to_be_bytes());
        torn.extend_from_slice(&200u32.to_be_bytes());
        torn.extend_from_slice(&wal.active.0.to_be_bytes());
        torn.extend_from_slice(&[0xAB; 40]);
        wal.active.1.write_all_at(&torn, at).unwrap();
    }
    {
        let backend = reopen(dir.path());
        assert_eq!(backend.get(b"a").unwrap(), None);
        assert_eq!(backend.get(b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(backend.take_recovered().len(), 1);
        backend
            .apply_logged(vec![put(b"c", b"3")], &[enqueue(2, b"two")])
            .unwrap();
        backend.sync(Some(0)).unwrap();
    }
    // The torn record does not make the later, acknowledged ones look like damage.
    let backend = reopen(dir.path());
    assert_eq!(backend.get(b"c").unwrap(), Some(b"3".to_vec()));
    assert_eq!(backend.take_recovered().len(), 2);
}

/// The previous version cut a torn write by zeroing only its record header, leaving the rest
/// of it; a store it wrote, with acknowledged records in later segments, still opens.
#[test]
fn a_torn_write_cut_by_the_previous_version_is_a_clean_end() {
    let dir = tempfile::tempdir().unwrap();
    let (first, at);
    {
        let backend = LogBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap();
        first = backend.lock_wal().active.0;
        backend.apply_logged(vec![], &[enqueue(1, b"one")]).unwrap();
        backend.sync(Some(0)).unwrap();
        at = backend.lock_pending().start;
    }
    {
        let backend = reopen(dir.path());
        assert_ne!(backend.lock_wal().active.0, first);
        backend.apply_logged(vec![], &[enqueue(2, b"two")]).unwrap();
        backend.sync(Some(0)).unwrap();
    }
    // What the previous version left of a torn record after the first one: the rest of it
    // behind a zeroed header.
    let mut remnant = vec![0u8; RECORD_HEADER_LEN as usize];
    remnant.extend_from_slice(&[0xAB; 300]);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(segment_name(first)))
        .unwrap();
    file.write_all_at(&remnant, at).unwrap();
    drop(file);
    let backend = reopen(dir.path());
    assert_eq!(backend.take_recovered().len(), 2);
}

#[test]
fn damage_before_acknowledged_records_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let first_segment;
    {
        let backend = LogBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap();
        first_segment = backend.lock_wal().active.0;
        backend.apply_logged(vec![], &[enqueue(1, b"one")]).unwrap();
        backend.sync(Some(0)).unwrap();
    }
    {
        let backend = reopen(dir.path());
        backend.apply_logged(vec![], &[enqueue(2, b"two")]).unwrap();
        backend.sync(Some(0)).unwrap();
    }
    // Flip a byte in the first segment's only record.
    let path = dir.path().join(segment_name(first_segment));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, SEG_HEADER_LEN + 20).unwrap();
    file.write_all_at(&[b[0] ^ 1], SEG_HEADER_LEN + 20).unwrap();
    drop(file);
    let err = try_reopen(dir.path()).unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
    // On the real file system too: refused again, then repaired.
    assert!(matches!(
        try_reopen(dir.path()),
        Err(StoreError::Damaged { segment, .. }) if segment == first_segment
    ));
    let plan = plan_repair(&StdFs, dir.path()).unwrap().unwrap();
    assert_eq!((plan.segment, plan.offset), (first_segment, SEG_HEADER_LEN));
    assert_eq!((plan.records, plan.envelopes), (1, 1));
    repair(&StdFs, dir.path(), &plan).unwrap();
    assert_eq!(plan_repair(&StdFs, dir.path()).unwrap(), None);
    let backend = reopen(dir.path());
    assert!(backend.take_recovered().is_empty());
}

#[test]
fn overlay_reads_merge_with_sled() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LogBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap();
    backend
        .apply(vec![put(b"k1", b"a"), put(b"k3", b"a"), put(b"k5", b"a")])
        .unwrap();
    backend.sync(None).unwrap();
    assert!(backend.lock_pending().active.is_empty());
    assert!(backend.lock_pending().frozen.is_empty());
    backend
        .apply(vec![
            put(b"k2", b"b"),
            (b"k3".to_vec(), None),
            put(b"k5", b"b"),
        ])
        .unwrap();
    // A frozen group not yet in sled, and newer writes on top.
    let _group = backend.lock_pending().freeze();
    backend
        .apply(vec![
            put(b"k4", b"c"),
            (b"k5".to_vec(), None),
            put(b"k2", b"c"),
        ])
        .unwrap();
    let expect: Entries = vec![
        (b"k1".to_vec(), b"a".to_vec()),
        (b"k2".to_vec(), b"c".to_vec()),
        (b"k4".to_vec(), b"c".to_vec()),
    ];
    assert_eq!(backend.scan(b"k", b"l", 10).unwrap(), expect);
    assert_eq!(backend.scan(b"k", b"l", 2).unwrap(), expect[..2].to_vec());
    assert_eq!(
        backend.scan(b"k2", b"k5", 10).unwrap(),
        expect[1..].to_vec()
    );
    assert_eq!(backend.get(b"k3").unwrap(), None);
    assert_eq!(backend.get(b"k5").unwrap(), None);
    assert_eq!(backend.get(b"k1").unwrap(), Some(b"a".to_vec()));
}

#[test]
fn full_segments_rotate_and_dead_ones_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LogBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap();
    let first = backend.lock_wal().active.0;
    let body = vec![7u8; 100 * 1024];
    let mut refs = Vec::new();
    for n in 0..30u8 {
        refs.push(
            backend
                .apply_logged(vec![put(&[n], b"v")], &[enqueue(n, &body)])
                .unwrap()[0],
        );
        // Envelope 0 is still queued: nothing may be reclaimed.
        backend.sync(Some(first)).unwrap();
    }
    assert!(backend.lock_wal().active.0 >= first + 2, "segments rotated");
    assert_eq!(segments(dir.path())[0], first);
    for r in &refs {
        assert_eq!(backend.read_body(r).unwrap().unwrap(), body);
    }
    // Everything removed: all sealed, checkpointed segments go.
    let ops: Vec<LogOp<'_>> = (0..30u8)
        .map(|n| LogOp::Remove {
            recv_id: [1; 16],
            seq: u64::from(n),
        })
        .collect();
    backend.apply_logged(vec![], &ops).unwrap();
    backend.checkpoint(None).unwrap();
    let active = backend.lock_wal().active.0;
    assert_eq!(segments(dir.path()).first(), Some(&active));
    assert_eq!(backend.read_body(&refs[0]).unwrap(), None);
    drop(backend);
    let backend = reopen(dir.path());
    for n in 0..30u8 {
        assert_eq!(backend.get(&[n]).unwrap(), Some(b"v".to_vec()));
    }
    // Whatever records remain, replaying them leaves no envelope queued.
    let mut live = std::collections::HashSet::new();
    for r in backend.take_recovered() {
        match r {
            Recovered::Enqueue { seq, .. } => {
                live.insert(seq);
            }
            Recovered::Remove { seq, .. } => {
                live.remove(&seq);
            }
            Recovered::DropMailbox { .. } => live.clear(),
        }
    }
    assert!(live.is_empty(), "{live:?}");
    assert!(backend.seq_floor() > 30);
}

/// On the real file system with sled: a clean checkpoint writes an index checkpoint that the
/// next open starts from, the sweeper's compaction step writes one when due, and without them
/// (deleted) the whole log gives the same queues.
#[test]
fn index_checkpoints_on_the_real_file_system_give_the_same_queues_as_the_whole_log() {
    use super::super::{DiskStore, Enqueued, Mailbox, MailboxQuota, NewEnvelope, Store};
    let dir = tempfile::tempdir().unwrap();
    let quota = MailboxQuota {
        max_envelopes: 1000,
        max_bytes: 1 << 30,
    };
    let open = |dir: &Path| DiskStore::new(reopen(dir));
    let fetch = |store: &DiskStore| {
        let (page, _) = store.fetch(&[1; 16], 0, 1000, 0).unwrap();
        page.into_iter()
            .map(|q| (q.seq, q.envelope.envelope_id, q.envelope.ciphertext))
            .collect::<Vec<_>>()
    };
    let expected = {
        let store = open(dir.path());
        let mailbox = Mailbox {
            send_id: [2; 16],
            auth_key: [3; 32],
            capability_hashes: Vec::new(),
            queued_count: 0,
            queued_bytes: 0,
        };
        assert!(store.create_mailbox(&[1; 16], &mailbox).unwrap());
        // Enough 100 KB envelopes to fill a few 1 MiB segments; every third one acked.
        for n in 0..40u8 {
            let env = NewEnvelope {
                envelope_id: [n; 16],
                expires_at: 1_000_000,
                ciphertext: vec![n; 100_000],
            };
            assert!(matches!(
                store.enqueue(&[1; 16], &env, quota).unwrap(),
                Enqueued::Queued(_)
            ));
            store.sync().unwrap();
            if n % 3 == 0 {
                store.ack(&[1; 16], &[[n; 16]]).unwrap();
            }
            if n == 20 {
                // Due (none written yet): the sweeper's compaction step after its sweep
                // writes one, as the relay's sweeper task does.
                store.sweep(0, 10, 0).unwrap();
                store.compact().unwrap();
            }
        }
        store.checkpoint().unwrap();
        fetch(&store)
    };
    let names = |dir: &Path| -> Vec<String> {
        listing(&StdFs, dir)
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with("index-"))
            .collect()
    };
    assert_eq!(names(dir.path()).len(), 2, "the sweep's and the shutdown's");
    {
        let store = open(dir.path());
        assert!(store.backend().index_checkpoint_loaded().is_some());
        assert_eq!(fetch(&store), expected);
    }
    for name in names(dir.path()) {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.backend().index_checkpoint_loaded(), None);
    assert_eq!(fetch(&store), expected);
}
