//! The fault-injection suite: the store over the simulated disk, driven at random through
//! sends, acks, expiry, rotation, compaction, mailbox and prekey operations, with power cuts,
//! process exits and failing writes and syncs, checked against a model after every recovery.
//!
//! `cargo test -p handover-relay --lib simulated_power_loss` runs [`SEEDS`] seeds;
//! `HANDOVER_SIM_SEEDS=N` runs `N` (a soak; `HANDOVER_SIM_FIRST=F` starts at seed `F` instead
//! of 0), `HANDOVER_SIM_SEED=S` replays seed `S`. A failure names its seed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::super::{
    Delivery, DiskStore, Enqueued, Id, Mailbox, MailboxQuota, NewEnvelope, Store, StoreError,
};
use super::sim::{Fault, FaultOp, SimDisk, SimRng};
use super::*;

/// Seeds run by `cargo test`.
const SEEDS: u64 = 256;
/// Steps per seed.
const STEPS: u64 = 250;
const QUOTA: MailboxQuota = MailboxQuota {
    max_envelopes: 1000,
    max_bytes: 1 << 30,
};
const TOMBSTONE_SECS: u64 = 100;

fn dir() -> &'static Path {
    Path::new("/relay/store")
}

fn open(disk: &SimDisk) -> Result<DiskStore, StoreError> {
    LogBackend::open_simulated(disk, dir(), MIN_WAL_SIZE).map(DiskStore::new)
}

/// What is known about one envelope.
#[derive(Clone, Debug)]
struct Env {
    recv: Id,
    body: Vec<u8>,
    expires_at: u64,
    /// The send was followed by a successful sync (acknowledged to the sender).
    durable: bool,
    /// An ack, mailbox deletion or sweep may have removed it (issued, durable or not).
    maybe_removed: bool,
    /// Its removal was followed by a successful sync.
    removed_durably: bool,
}

#[derive(Default, Debug)]
struct Model {
    /// Mailboxes: created durably?, deleted (issued)?, deleted durably?
    mailboxes: BTreeMap<Id, (bool, bool, bool)>,
    envelopes: BTreeMap<Id, Env>,
    /// One-time prekeys published (durably or not).
    published: BTreeSet<Vec<u8>>,
    /// One-time prekeys handed out by a take that a successful sync followed.
    taken_durably: BTreeSet<Vec<u8>>,
    /// Taken since the last successful sync.
    taken_pending: BTreeSet<Vec<u8>>,
    /// Envelopes and mailboxes changed since the last successful sync.
    sent_pending: Vec<Id>,
    removed_pending: Vec<Id>,
    created_pending: Vec<Id>,
    deleted_pending: Vec<Id>,
}

impl Model {
    /// A successful sync: everything issued so far is durable.
    fn synced(&mut self) {
        for id in self.sent_pending.drain(..) {
            if let Some(e) = self.envelopes.get_mut(&id) {
                e.durable = true;
            }
        }
        for id in self.removed_pending.drain(..) {
            if let Some(e) = self.envelopes.get_mut(&id) {
                e.removed_durably = true;
            }
        }
        for id in self.created_pending.drain(..) {
            if let Some(m) = self.mailboxes.get_mut(&id) {
                m.0 = true;
            }
        }
        for id in self.deleted_pending.drain(..) {
            if let Some(m) = self.mailboxes.get_mut(&id) {
                m.2 = true;
            }
        }
        self.taken_durably.append(&mut self.taken_pending);
    }

    /// After a crash: what was not durable may or may not have happened; forget the pending
    /// lists (their effects stay "maybe").
    fn crashed(&mut self) {
        self.sent_pending.clear();
        self.removed_pending.clear();
        self.created_pending.clear();
        self.deleted_pending.clear();
        self.taken_pending.clear();
    }

    fn remove(&mut self, id: Id) {
        if let Some(e) = self.envelopes.get_mut(&id) {
            e.maybe_removed = true;
            self.removed_pending.push(id);
        }
    }
}

fn id(rng: &mut SimRng) -> Id {
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_be_bytes());
    }
    out
}

fn body(rng: &mut SimRng, id: &Id) -> Vec<u8> {
    // Mostly small, some large enough to rotate 1 MiB segments every few sends.
    let len = if rng.chance(150) {
        20_000 + rng.below(100_000)
    } else {
        16 + rng.below(2_000)
    } as usize;
    let mut b = id.repeat(len / 16 + 1);
    b.truncate(len);
    b
}

/// Every envelope the store has for `recv`, unexpired at `now`.
fn fetch_all(store: &DiskStore, recv: &Id, now: u64) -> BTreeMap<Id, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut after = 0;
    loop {
        let (batch, more) = store.fetch(recv, after, 100, now).expect("fetch");
        for q in &batch {
            after = q.seq;
            out.insert(q.envelope.envelope_id, q.envelope.ciphertext.clone());
        }
        if !more || batch.is_empty() {
            return out;
        }
    }
}

/// Checks the recovered store against the model.
fn check(seed: u64, store: &DiskStore, model: &Model, now: u64) {
    for (recv, (created, deleted, deleted_durably)) in &model.mailboxes {
        let exists = store.mailbox(recv).expect("mailbox").is_some();
        if *created && !*deleted {
            assert!(exists, "seed {seed}: an acknowledged mailbox is gone");
        }
        if *deleted_durably {
            assert!(!exists, "seed {seed}: a deleted mailbox came back");
        }
        if !exists {
            continue;
        }
        let have = fetch_all(store, recv, now);
        for (eid, b) in &have {
            let env = model.envelopes.get(eid);
            let env = env.unwrap_or_else(|| panic!("seed {seed}: an envelope never sent"));
            assert_eq!(
                &env.recv, recv,
                "seed {seed}: envelope in the wrong mailbox"
            );
            assert_eq!(&env.body, b, "seed {seed}: envelope body changed");
            assert!(
                !env.removed_durably,
                "seed {seed}: an acknowledged removal was undone"
            );
            assert!(
                env.expires_at > now,
                "seed {seed}: an expired envelope came back"
            );
        }
        for (eid, env) in &model.envelopes {
            if &env.recv == recv && env.durable && !env.maybe_removed && env.expires_at > now {
                assert!(
                    have.contains_key(eid),
                    "seed {seed}: an acknowledged envelope is gone"
                );
            }
        }
        let ids: Vec<Id> = model
            .envelopes
            .iter()
            .filter(|(_, e)| &e.recv == recv && e.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for state in store.envelope_states(recv, &ids, now).expect("states") {
            assert_ne!(
                state,
                Delivery::Pending,
                "seed {seed}: an expired envelope is pending"
            );
        }
    }
}

/// What the runs exercised.
#[derive(Default, Debug)]
struct Coverage {
    power_cuts: u64,
    faults: u64,
    compacted: u64,
    /// Sum over seeds of the last segment number (each rotation or restart starts one).
    segments: u64,
    /// Restarts that loaded an index checkpoint (and replayed only the log after it).
    index_loads: u64,
}

/// One seed: a random run with crashes; returns what it exercised.
fn run(seed: u64) -> Coverage {
    let mut rng = SimRng::new(seed);
    let disk = SimDisk::new(seed ^ 0x5eed);
    let faulty = rng.chance(300);
    let mut store = Some(open(&disk).expect("fresh store"));
    let mut model = Model::default();
    let mut now = 1_000u64;
    let mut recvs: Vec<(Id, Id)> = Vec::new();
    let mut cuts = 0;
    let mut compacted = 0;
    let mut index_loads = 0;

    if faulty {
        disk.set_random_faults(20);
    }
    for _ in 0..STEPS {
        let s = store.as_ref().expect("store");
        let live: Vec<(Id, Id)> = recvs
            .iter()
            .copied()
            .filter(|(r, _)| model.mailboxes.get(r).is_some_and(|m| !m.1))
            .collect();
        // A failure leaves the store refusing writes until the next start: any result is
        // allowed then, and the model treats the operation as not acknowledged.
        match rng.below(100) {
            0..=7 => {
                let (recv, send) = (id(&mut rng), id(&mut rng));
                let mailbox = Mailbox {
                    send_id: send,
                    auth_key: [1; 32],
                    capability_hashes: Vec::new(),
                    queued_count: 0,
                    queued_bytes: 0,
                };
                if let Ok(true) = s.create_mailbox(&recv, &mailbox) {
                    model.mailboxes.insert(recv, (false, false, false));
                    model.created_pending.push(recv);
                    recvs.push((recv, send));
                }
            }
            8..=49 if !live.is_empty() => {
                let (recv, _) = live[rng.below(live.len() as u64) as usize];
                let eid = id(&mut rng);
                let env = NewEnvelope {
                    envelope_id: eid,
                    expires_at: now + 1 + rng.below(400),
                    ciphertext: body(&mut rng, &eid),
                };
                if let Ok(Enqueued::Queued(_)) = s.enqueue(&recv, &env, QUOTA) {
                    model.envelopes.insert(
                        eid,
                        Env {
                            recv,
                            body: env.ciphertext,
                            expires_at: env.expires_at,
                            durable: false,
                            maybe_removed: false,
                            removed_durably: false,
                        },
                    );
                    model.sent_pending.push(eid);
                }
            }
            50..=64 if !live.is_empty() => {
                let (recv, _) = live[rng.below(live.len() as u64) as usize];
                let queued: Vec<Id> = model
                    .envelopes
                    .iter()
                    .filter(|(_, e)| e.recv == recv && !e.maybe_removed)
                    .map(|(id, _)| *id)
                    .collect();
                let n = rng.below(queued.len() as u64 + 1) as usize;
                let ids: Vec<Id> = queued.into_iter().take(n).collect();
                // Issued: whether it fails or not, it may have happened.
                let _ = s.ack(&recv, &ids);
                for eid in ids {
                    model.remove(eid);
                }
            }
            65..=66 if !live.is_empty() => {
                let (recv, _) = live[rng.below(live.len() as u64) as usize];
                let _ = s.delete_mailbox(&recv);
                if let Some(m) = model.mailboxes.get_mut(&recv) {
                    m.1 = true;
                }
                model.deleted_pending.push(recv);
                let ids: Vec<Id> = model
                    .envelopes
                    .iter()
                    .filter(|(_, e)| e.recv == recv)
                    .map(|(id, _)| *id)
                    .collect();
                for eid in ids {
                    model.remove(eid);
                }
            }
            67..=71 if !live.is_empty() => {
                let (recv, _) = live[rng.below(live.len() as u64) as usize];
                let keys: Vec<Vec<u8>> = (0..1 + rng.below(3))
                    .map(|_| id(&mut rng).to_vec())
                    .collect();
                if s.prekey_publish(&recv, b"bundle", &keys, &[], 1000).is_ok() {
                    model.published.extend(keys);
                }
            }
            72..=75 if !live.is_empty() => {
                let (recv, _) = live[rng.below(live.len() as u64) as usize];
                if let Ok(Some(taken)) = s.prekey_take(&recv)
                    && let Some(k) = taken.one_time
                {
                    assert!(
                        !model.taken_durably.contains(&k) && !model.taken_pending.contains(&k),
                        "seed {seed}: a one-time prekey was handed out twice"
                    );
                    assert!(model.published.contains(&k), "seed {seed}: unknown prekey");
                    model.taken_pending.insert(k);
                }
            }
            76..=79 => {
                now += rng.below(200);
                if s.sweep(now, 1000, TOMBSTONE_SECS).is_ok()
                    && let Ok(copied) = s.compact()
                {
                    compacted += copied;
                }
                // The sweep may have removed every expired envelope.
                let expired: Vec<Id> = model
                    .envelopes
                    .iter()
                    .filter(|(_, e)| e.expires_at <= now)
                    .map(|(id, _)| *id)
                    .collect();
                for eid in expired {
                    model.remove(eid);
                }
            }
            80..=93 => {
                if s.sync().is_ok() {
                    model.synced();
                }
            }
            94..=95 => {
                if s.checkpoint().is_ok() {
                    model.synced();
                }
            }
            _ => {
                // A crash: a power cut, or the process ending with the page cache kept.
                let power = rng.chance(700);
                drop(store.take());
                if power {
                    disk.power_cut();
                    cuts += 1;
                } else {
                    disk.process_exit();
                }
                model.crashed();
                disk.clear_faults();
                let reopened =
                    open(&disk).unwrap_or_else(|e| panic!("seed {seed}: restart refused: {e}"));
                check(seed, &reopened, &model, now);
                index_loads += u64::from(reopened.backend().index_checkpoint_loaded().is_some());
                if faulty {
                    disk.set_random_faults(20);
                }
                store = Some(reopened);
            }
        }
    }
    // A last power cut, recovery and check, then the prekeys.
    drop(store.take());
    disk.power_cut();
    disk.clear_faults();
    model.crashed();
    let store = open(&disk).unwrap_or_else(|e| panic!("seed {seed}: restart refused: {e}"));
    check(seed, &store, &model, now);
    index_loads += u64::from(store.backend().index_checkpoint_loaded().is_some());
    for (recv, _) in &recvs {
        while let Ok(Some(taken)) = store.prekey_take(recv) {
            let Some(k) = taken.one_time else { break };
            assert!(
                !model.taken_durably.contains(&k),
                "seed {seed}: a one-time prekey came back after it was taken"
            );
        }
    }
    let segments = store.backend().active_segment();
    Coverage {
        power_cuts: cuts + 1,
        faults: disk.failed_ops(),
        compacted,
        segments,
        index_loads,
    }
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("HANDOVER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let n = var("HANDOVER_SIM_SEEDS").unwrap_or(SEEDS);
    let first = var("HANDOVER_SIM_FIRST").unwrap_or(0);
    (first..first.saturating_add(n)).collect()
}

#[test]
fn simulated_power_loss_and_disk_faults_keep_every_acknowledged_effect() {
    let mut all = Coverage::default();
    for seed in seeds() {
        let c = run(seed);
        all.power_cuts += c.power_cuts;
        all.faults += c.faults;
        all.compacted += c.compacted;
        all.segments += c.segments;
        all.index_loads += c.index_loads;
    }
    eprintln!("simulation: {} seeds, {all:?}", seeds().len());
    // The runs did cut power, fail operations, rotate and compact (the suite is not vacuous).
    assert!(all.power_cuts > 0);
    if seeds().len() > 20 {
        assert!(
            // Compaction copies from a sealed segment: the log rotated. Restarts loaded index
            // checkpoints (written by checkpoints and sweeps, some cut by the power).
            all.faults > 0 && all.compacted > 0 && all.index_loads > 0,
            "{all:?}"
        );
    }
}

/// A store on `disk` with one mailbox and `n` envelopes, each synced on its own (one record
/// each); returns the mailbox.
fn filled(disk: &SimDisk, rng: &mut SimRng, n: u64) -> Id {
    let store = open(disk).unwrap();
    let recv = new_mailbox(&store, rng);
    store.sync().unwrap();
    for _ in 0..n {
        let eid = id(rng);
        let env = NewEnvelope {
            envelope_id: eid,
            expires_at: 1_000_000,
            ciphertext: body(rng, &eid),
        };
        store.enqueue(&recv, &env, QUOTA).unwrap();
        store.sync().unwrap();
    }
    recv
}

/// Flips one byte of the `index`-th record of segment `seg` (its payload, past the header).
fn damage_record(disk: &SimDisk, seg: u64, index: usize) {
    let segments = disk_segments(disk);
    let (_, records) = segments.iter().find(|(s, _)| *s == seg).unwrap();
    let (at, _) = records[index];
    let path = dir().join(segment::segment_name(seg));
    let offset = at + 20;
    let image = disk.disk_image(&path).unwrap();
    disk.corrupt(&path, offset, &[image[offset as usize] ^ 0x01])
        .unwrap();
}

#[test]
fn damage_followed_by_records_in_the_same_segment_refuses_to_start() {
    let disk = SimDisk::new(1);
    let mut rng = SimRng::new(1);
    filled(&disk, &mut rng, 5);
    disk.power_cut();
    let (seg, records) = disk_segments(&disk)
        .into_iter()
        .find(|(_, r)| r.len() >= 4)
        .unwrap();
    damage_record(&disk, seg, 1);
    match open(&disk) {
        Err(StoreError::Damaged { segment, offset }) => {
            assert_eq!((segment, offset), (seg, records[1].0));
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("damage before acknowledged records was cut away as a torn tail"),
    }
}

#[test]
fn a_refused_start_is_refused_again_and_changes_nothing() {
    let disk = SimDisk::new(2);
    let mut rng = SimRng::new(2);
    filled(&disk, &mut rng, 3);
    disk.process_exit();
    // A second run writes to the next segment.
    filled(&disk, &mut rng, 1);
    let segments = disk_segments(&disk);
    let (first, _) = segments.iter().find(|(_, r)| r.len() >= 3).unwrap();
    let first = *first;
    assert!(
        segments.iter().any(|(s, r)| *s > first && !r.is_empty()),
        "later records"
    );
    damage_record(&disk, first, 2);
    let before: Vec<_> = segments
        .iter()
        .map(|(s, _)| disk.disk_image(&dir().join(segment::segment_name(*s))))
        .collect();
    for attempt in 0..3 {
        match open(&disk) {
            Err(StoreError::Damaged { segment, .. }) => assert_eq!(segment, first),
            Err(e) if e.to_string().contains("damaged") => {}
            Err(e) => panic!("start {attempt}: unexpected error {e}"),
            Ok(_) => panic!("start {attempt}: a damaged log was opened"),
        }
        disk.process_exit();
    }
    let after: Vec<_> = segments
        .iter()
        .map(|(s, _)| disk.disk_image(&dir().join(segment::segment_name(*s))))
        .collect();
    assert!(before == after, "a refused start changed the log");
}

/// Damage to an acknowledged record that later acknowledged records follow is never cut
/// away silently: the store refuses to open, on every try.
#[test]
fn simulated_damage_before_acknowledged_records_is_refused_at_every_start() {
    for seed in 0..20u64 {
        let mut rng = SimRng::new(seed);
        let disk = SimDisk::new(seed);
        {
            let store = open(&disk).unwrap();
            let recv = id(&mut rng);
            let mailbox = Mailbox {
                send_id: id(&mut rng),
                auth_key: [1; 32],
                capability_hashes: Vec::new(),
                queued_count: 0,
                queued_bytes: 0,
            };
            assert!(store.create_mailbox(&recv, &mailbox).unwrap());
            for _ in 0..3 + rng.below(20) {
                let eid = id(&mut rng);
                let env = NewEnvelope {
                    envelope_id: eid,
                    expires_at: 1_000_000,
                    ciphertext: body(&mut rng, &eid),
                };
                store.enqueue(&recv, &env, QUOTA).unwrap();
                store.sync().unwrap();
            }
        }
        disk.power_cut();
        // Damage one byte of a record that is not the last one.
        let segments = disk_segments(&disk);
        let (seg, records) = &segments[rng.below(segments.len() as u64) as usize];
        let last_seg = segments.last().map(|(s, _)| *s);
        let candidates: Vec<(u64, u64)> = records
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*seg) != last_seg || *i + 1 < records.len())
            .map(|(_, r)| *r)
            .collect();
        if candidates.is_empty() {
            continue;
        }
        let (at, len) = candidates[rng.below(candidates.len() as u64) as usize];
        let offset = at + rng.below(len);
        let path = dir().join(segment::segment_name(*seg));
        let image = disk.disk_image(&path).unwrap();
        disk.corrupt(&path, offset, &[image[offset as usize] ^ 0x40])
            .unwrap();
        for attempt in 0..2 {
            match open(&disk) {
                Err(StoreError::Damaged { .. }) => {}
                Err(e) => panic!("seed {seed}: unexpected error {e}"),
                Ok(_) => panic!("seed {seed}, start {attempt}: damage was cut away silently"),
            }
            disk.process_exit();
        }
    }
}

/// The segments on the disk with their records (offset, length including the header).
fn disk_segments(disk: &SimDisk) -> Vec<(u64, Vec<(u64, u64)>)> {
    let mut out = Vec::new();
    let mut names = LogFs::list(disk, dir()).unwrap();
    names.sort();
    for name in names {
        let Some(seg) = segment::segment_id(&name) else {
            continue;
        };
        let image = disk.disk_image(&dir().join(&name)).unwrap();
        let mut records = Vec::new();
        let mut at = segment::SEG_HEADER_LEN as usize;
        while at + 16 <= image.len() {
            let len = u32::from_be_bytes(image[at + 4..at + 8].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            records.push((at as u64, 16 + len as u64));
            at += 16 + len;
        }
        out.push((seg, records));
    }
    out
}

#[test]
fn repair_drops_the_log_from_the_damage_on_and_the_store_opens_again() {
    let disk = SimDisk::new(3);
    let mut rng = SimRng::new(3);
    let recv = filled(&disk, &mut rng, 4);
    disk.process_exit();
    filled(&disk, &mut rng, 2);
    disk.process_exit();
    let segments = disk_segments(&disk);
    let (first, records) = segments.iter().find(|(_, r)| r.len() >= 5).unwrap();
    let first = *first;
    // Record 0 creates the mailbox, 1..=4 queue envelopes: damage the third envelope's.
    damage_record(&disk, first, 3);
    assert!(matches!(open(&disk), Err(StoreError::Damaged { .. })));
    let plan = plan_repair(&disk, dir()).unwrap().unwrap();
    assert_eq!((plan.segment, plan.offset), (first, records[3].0));
    // The damaged record is not valid any more: the fourth envelope, and the second run's
    // mailbox and two envelopes in later segments.
    assert_eq!((plan.records, plan.envelopes, plan.removals), (4, 3, 0));
    assert!(!plan.later_segments.is_empty());
    disk.process_exit();
    repair(&disk, dir(), &plan).unwrap();
    // Durable: also after a power cut.
    disk.power_cut();
    assert_eq!(plan_repair(&disk, dir()).unwrap(), None);
    let store = open(&disk).unwrap();
    assert_eq!(fetch_all(&store, &recv, 0).len(), 2);
}

fn new_mailbox(store: &DiskStore, rng: &mut SimRng) -> Id {
    let recv = id(rng);
    let mailbox = Mailbox {
        send_id: id(rng),
        auth_key: [1; 32],
        capability_hashes: Vec::new(),
        queued_count: 0,
        queued_bytes: 0,
    };
    assert!(store.create_mailbox(&recv, &mailbox).unwrap());
    recv
}

/// Queues one envelope of 100 000 bytes in `recv` and syncs; returns its id.
fn send_large(store: &DiskStore, recv: &Id, rng: &mut SimRng) -> Result<Id, StoreError> {
    let eid = id(rng);
    let env = NewEnvelope {
        envelope_id: eid,
        expires_at: 1_000_000,
        ciphertext: vec![7; 100_000],
    };
    store.enqueue(recv, &env, QUOTA)?;
    store.sync()?;
    Ok(eid)
}

/// Sends large envelopes until the log has rotated `segments` times; returns their ids.
fn fill_segments(store: &DiskStore, recv: &Id, rng: &mut SimRng, segments: u64) -> Vec<Id> {
    let first = store.backend().active_segment();
    let mut sent = Vec::new();
    while store.backend().active_segment() < first + segments {
        sent.push(send_large(store, recv, rng).unwrap());
    }
    sent
}

/// After `failed`, the store must refuse every write and sync until it is reopened.
fn assert_writes_blocked(store: &DiskStore, recv: &Id, what: &str) {
    assert!(store.writes_blocked(), "{what}: the store does not say so");
    let env = NewEnvelope {
        envelope_id: [9; 16],
        expires_at: 1_000_000,
        ciphertext: vec![1; 10],
    };
    let sent = store.enqueue(recv, &env, QUOTA).and_then(|_| store.sync());
    assert!(sent.is_err(), "{what}: a later send was acknowledged");
    assert!(store.sync().is_err(), "{what}: a later sync succeeded");
    assert!(
        store.checkpoint().is_err(),
        "{what}: a later checkpoint succeeded"
    );
}

#[test]
fn a_failed_background_checkpoint_blocks_every_later_write() {
    for fault in [Fault::Io, Fault::NoSpace] {
        let disk = SimDisk::new(4);
        let mut rng = SimRng::new(4);
        let store = open(&disk).unwrap();
        let recv = new_mailbox(&store, &mut rng);
        store.sync().unwrap();
        // The checkpoint that the next rotation starts fails; it is reported when the
        // checkpoint is joined (under simulation by the same sync, else by a later one).
        assert!(!store.writes_blocked());
        disk.inject(FaultOp::Checkpoint, 0, fault);
        let first = store.backend().active_segment();
        let mut failed = false;
        for _ in 0..64 {
            if send_large(&store, &recv, &mut rng).is_err() {
                failed = true;
                break;
            }
        }
        assert!(store.backend().active_segment() > first, "rotated");
        assert!(
            failed,
            "{fault:?}: the failed checkpoint was never reported"
        );
        assert_writes_blocked(&store, &recv, "after a failed background checkpoint");
        assert_eq!(disk.failed_ops(), 1);
    }
}

#[test]
fn a_failed_checkpoint_call_blocks_every_later_write() {
    let disk = SimDisk::new(5);
    let mut rng = SimRng::new(5);
    let store = open(&disk).unwrap();
    let recv = new_mailbox(&store, &mut rng);
    store.sync().unwrap();
    disk.inject(FaultOp::Checkpoint, 0, Fault::Io);
    assert!(store.checkpoint().is_err());
    assert_writes_blocked(&store, &recv, "after a failed checkpoint");
}

/// The segment numbers on the disk (current directory entries).
fn segment_names(disk: &SimDisk) -> BTreeSet<u64> {
    LogFs::list(disk, dir())
        .unwrap()
        .iter()
        .filter_map(|n| segment::segment_id(n))
        .collect()
}

#[test]
fn reclaimed_segments_stay_deleted_after_a_power_cut() {
    let disk = SimDisk::new(6);
    let mut rng = SimRng::new(6);
    let store = open(&disk).unwrap();
    let recv = new_mailbox(&store, &mut rng);
    let sent = fill_segments(&store, &recv, &mut rng, 3);
    let before = segment_names(&disk);
    assert_eq!(store.ack(&recv, &sent).unwrap(), sent.len() as u64);
    // Syncs the acks, checkpoints and reclaims every segment below the active one.
    store.checkpoint().unwrap();
    let after = segment_names(&disk);
    let reclaimed: Vec<u64> = before.difference(&after).copied().collect();
    assert!(!reclaimed.is_empty(), "segments were reclaimed");
    drop(store);
    disk.power_cut();
    let back: Vec<u64> = segment_names(&disk)
        .intersection(&reclaimed.iter().copied().collect())
        .copied()
        .collect();
    assert!(back.is_empty(), "reclaimed segments came back: {back:?}");
}

#[test]
fn a_failed_directory_sync_after_reclaim_blocks_every_later_write() {
    let disk = SimDisk::new(7);
    let mut rng = SimRng::new(7);
    let store = open(&disk).unwrap();
    let recv = new_mailbox(&store, &mut rng);
    let sent = fill_segments(&store, &recv, &mut rng, 2);
    store.ack(&recv, &sent).unwrap();
    disk.inject(FaultOp::SyncDir, 0, Fault::Io);
    assert!(
        store.checkpoint().is_err(),
        "the failed directory sync was reported"
    );
    assert!(store.writes_blocked());
    assert_writes_blocked(&store, &recv, "after a failed directory sync");
}

/// After a failed `fdatasync` the page cache holds data the disk does not: a restarted
/// process (no power cut) must not recover from it. Otherwise a retried send of an envelope
/// seen only in the cache is taken for a duplicate and acknowledged, and a power cut loses it.
#[test]
fn recovery_after_a_failed_sync_reads_the_disk_not_the_page_cache() {
    let disk = SimDisk::new(8);
    let mut rng = SimRng::new(8);
    let store = open(&disk).unwrap();
    let recv = new_mailbox(&store, &mut rng);
    store.sync().unwrap();
    let env = NewEnvelope {
        envelope_id: [0xb0; 16],
        expires_at: 1_000_000,
        ciphertext: vec![0xb0; 3_000],
    };
    store.enqueue(&recv, &env, QUOTA).unwrap();
    disk.inject(FaultOp::SyncFile, 0, Fault::Io);
    assert!(store.sync().is_err());
    drop(store);
    // The relay exits and its supervisor starts it again; the page cache stays.
    disk.process_exit();
    let store = open(&disk).unwrap();
    // The sender retries the send it got no answer for.
    let retried = store.enqueue(&recv, &env, QUOTA).unwrap();
    store.sync().unwrap();
    assert!(matches!(retried, Enqueued::Queued(_) | Enqueued::Duplicate));
    drop(store);
    disk.power_cut();
    let store = open(&disk).unwrap();
    assert_eq!(
        fetch_all(&store, &recv, 0).get(&env.envelope_id),
        Some(&env.ciphertext),
        "an acknowledged retry was lost"
    );
}

/// The index checkpoint files on the disk (current directory entries), by name.
fn index_names(disk: &SimDisk) -> Vec<String> {
    let mut names: Vec<String> = LogFs::list(disk, dir())
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("index-"))
        .collect();
    names.sort();
    names
}

/// A store with one mailbox and envelopes over a few segments, some acknowledged; returns
/// the mailbox and the envelopes still queued (all acknowledged to their senders).
fn with_history(disk: &SimDisk, rng: &mut SimRng) -> (DiskStore, Id, BTreeMap<Id, Vec<u8>>) {
    let store = open(disk).unwrap();
    let recv = new_mailbox(&store, rng);
    store.sync().unwrap();
    let mut queued = BTreeMap::new();
    for round in 0..3 {
        let first = store.backend().active_segment();
        while store.backend().active_segment() < first + 1 {
            let eid = id(rng);
            let env = NewEnvelope {
                envelope_id: eid,
                expires_at: 1_000_000,
                ciphertext: body(rng, &eid),
            };
            store.enqueue(&recv, &env, QUOTA).unwrap();
            store.sync().unwrap();
            queued.insert(eid, env.ciphertext);
        }
        // Ack every other one.
        let acked: Vec<Id> = queued.keys().copied().step_by(2).collect();
        store.ack(&recv, &acked).unwrap();
        store.sync().unwrap();
        for eid in acked {
            queued.remove(&eid);
        }
        if round == 1 {
            store.checkpoint().unwrap();
        }
    }
    (store, recv, queued)
}

/// An index checkpoint cut short at any of its writes and syncs (by a failure, then a power
/// cut) loses nothing and brings nothing back: the start uses an older checkpoint or the log.
#[test]
fn a_power_cut_at_any_point_of_an_index_checkpoint_loses_nothing() {
    let mut cut_before_rename = 0;
    for (op, k) in (0..4)
        .map(|k| (FaultOp::Write, k))
        .chain((0..4).map(|k| (FaultOp::SyncFile, k)))
        .chain((0..3).map(|k| (FaultOp::SyncDir, k)))
    {
        let disk = SimDisk::new(100 + k);
        let mut rng = SimRng::new(100 + k);
        let (store, recv, queued) = with_history(&disk, &mut rng);
        // One more acknowledged removal after the last checkpoint.
        let last = *queued.keys().next().unwrap();
        store.ack(&recv, &[last]).unwrap();
        store.sync().unwrap();
        let before = index_names(&disk);
        disk.inject(op, k, Fault::Io);
        let result = store.checkpoint();
        let after = index_names(&disk);
        if result.is_ok() && after == before {
            cut_before_rename += 1;
        }
        drop(store);
        disk.clear_faults();
        disk.power_cut();
        let store = open(&disk).unwrap_or_else(|e| panic!("{op:?} {k}: refused: {e}"));
        let mut expect = queued.clone();
        expect.remove(&last);
        assert_eq!(fetch_all(&store, &recv, 0), expect, "{op:?} {k}");
        // The next checkpoint is written whole and used.
        store.checkpoint().unwrap();
        drop(store);
        disk.power_cut();
        let store = open(&disk).unwrap();
        assert!(
            store.backend().index_checkpoint_loaded().is_some(),
            "{op:?} {k}"
        );
        assert_eq!(fetch_all(&store, &recv, 0), expect, "{op:?} {k}");
    }
    // Some of the faults hit the index checkpoint's own file before its rename.
    assert!(cut_before_rename > 0);
}

/// A damaged newest index checkpoint falls back to the older one; with both damaged (or
/// gone), the whole log is read. The result is the same.
#[test]
fn a_damaged_index_checkpoint_falls_back_to_an_older_one_then_to_the_whole_log() {
    let disk = SimDisk::new(11);
    let mut rng = SimRng::new(11);
    let (store, recv, mut queued) = with_history(&disk, &mut rng);
    store.checkpoint().unwrap();
    // After the newest checkpoint: a send and an ack, in the log only.
    let eid = id(&mut rng);
    let env = NewEnvelope {
        envelope_id: eid,
        expires_at: 1_000_000,
        ciphertext: body(&mut rng, &eid),
    };
    store.enqueue(&recv, &env, QUOTA).unwrap();
    let gone = *queued.keys().next().unwrap();
    store.ack(&recv, &[gone]).unwrap();
    store.sync().unwrap();
    queued.insert(eid, env.ciphertext);
    queued.remove(&gone);
    drop(store);
    disk.power_cut();
    let names = index_names(&disk);
    assert_eq!(names.len(), index::KEEP, "{names:?}");
    let newest = index::index_name(
        open(&disk)
            .unwrap()
            .backend()
            .index_checkpoint_loaded()
            .unwrap(),
    );
    assert_eq!(names.last(), Some(&newest));
    disk.process_exit();
    for (i, name) in names.iter().rev().enumerate() {
        let path = dir().join(name);
        let image = disk.disk_image(&path).unwrap();
        let at = rng.below(image.len() as u64);
        disk.corrupt(&path, at, &[image[at as usize] ^ 0x04])
            .unwrap();
        let store = open(&disk).unwrap();
        let loaded = store
            .backend()
            .index_checkpoint_loaded()
            .map(index::index_name);
        let expect_loaded = names.iter().rev().nth(i + 1).cloned();
        assert_eq!(loaded, expect_loaded, "after damaging {name}");
        assert_eq!(fetch_all(&store, &recv, 0), queued, "after damaging {name}");
        drop(store);
        disk.process_exit();
    }
}

/// A repair that drops queued envelopes raises their mailbox's sequence floor: the numbers
/// they had (which a recipient may have fetched) are never handed out again, also after a
/// power cut right after the repair.
#[test]
fn repair_raises_the_sequence_floor_above_the_dropped_envelopes() {
    let disk = SimDisk::new(12);
    let mut rng = SimRng::new(12);
    let recv = filled(&disk, &mut rng, 6);
    disk.process_exit();
    let segments = disk_segments(&disk);
    let (seg, records) = segments.iter().find(|(_, r)| r.len() >= 7).unwrap();
    let _ = records;
    // Record 0 creates the mailbox, 1..=6 queue envelopes 1..=6: drop from the third on.
    damage_record(&disk, *seg, 3);
    let plan = plan_repair(&disk, dir()).unwrap().unwrap();
    assert_eq!(plan.seq_floors.get(&recv), Some(&6));
    repair(&disk, dir(), &plan).unwrap();
    disk.power_cut();
    let store = open(&disk).unwrap();
    assert_eq!(fetch_all(&store, &recv, 0).len(), 2);
    let env = NewEnvelope {
        envelope_id: [0xee; 16],
        expires_at: 1_000_000,
        ciphertext: vec![1; 100],
    };
    assert_eq!(
        store.enqueue(&recv, &env, QUOTA).unwrap(),
        Enqueued::Queued(7)
    );
    store.sync().unwrap();
    // The floor is in the keyspace now and the floors file is gone.
    assert!(!LogFs::exists(&disk, &dir().join("seq-floors")));
    drop(store);
    disk.power_cut();
    let store = open(&disk).unwrap();
    store.ack(&recv, &[[0xee; 16]]).unwrap();
    let env = NewEnvelope {
        envelope_id: [0xef; 16],
        ..env
    };
    assert_eq!(
        store.enqueue(&recv, &env, QUOTA).unwrap(),
        Enqueued::Queued(8)
    );
}

/// A segment that holds queued envelopes of an index checkpoint and disappears by other means
/// than the relay's reclaim (older segments still exist) refuses the start like damage, on
/// every start, instead of dropping those envelopes silently.
#[test]
fn a_lost_segment_that_the_index_checkpoint_needs_refuses_the_start() {
    let disk = SimDisk::new(13);
    let mut rng = SimRng::new(13);
    let (store, _, _) = with_history(&disk, &mut rng);
    store.checkpoint().unwrap();
    drop(store);
    let live: BTreeSet<u64> = disk_segments(&disk)
        .into_iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(s, _)| s)
        .collect();
    // The second oldest segment with records: an older one stays.
    let lost = *live.iter().nth(1).unwrap();
    LogFs::remove(&disk, &dir().join(segment::segment_name(lost))).unwrap();
    LogFs::sync_dir(&disk, dir()).unwrap();
    for _ in 0..2 {
        match open(&disk) {
            Err(StoreError::Damaged { segment, offset }) => {
                assert_eq!((segment, offset), (lost, 0))
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("envelopes of a lost segment were dropped silently"),
        }
        disk.process_exit();
    }
}
