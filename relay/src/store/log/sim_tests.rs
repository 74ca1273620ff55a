//! The fault-injection suite: the store over the simulated disk, driven at random through
//! sends, acks, expiry, rotation, compaction, mailbox and prekey operations, with power cuts,
//! process exits and failing writes and syncs, checked against a model after every recovery.
//!
//! `cargo test -p handover-relay --lib simulated_power_loss` runs [`SEEDS`] seeds;
//! `HANDOVER_SIM_SEEDS=N` runs `N` (a soak), `HANDOVER_SIM_SEED=S` replays seed `S`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::super::{
    Delivery, DiskStore, Enqueued, Id, Mailbox, MailboxQuota, NewEnvelope, Store, StoreError,
};
use super::sim::{SimDisk, SimRng};
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

/// One seed: a random run with crashes; returns how many power cuts and faults it had.
fn run(seed: u64) -> (u64, u64) {
    let mut rng = SimRng::new(seed);
    let disk = SimDisk::new(seed ^ 0x5eed);
    let faulty = rng.chance(300);
    let mut store = Some(open(&disk).expect("fresh store"));
    let mut model = Model::default();
    let mut now = 1_000u64;
    let mut recvs: Vec<(Id, Id)> = Vec::new();
    let mut cuts = 0;
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
                if let Ok(swept) = s.sweep(now, 1000, TOMBSTONE_SECS) {
                    let _ = swept;
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
    for (recv, _) in &recvs {
        while let Ok(Some(taken)) = store.prekey_take(recv) {
            let Some(k) = taken.one_time else { break };
            assert!(
                !model.taken_durably.contains(&k),
                "seed {seed}: a one-time prekey came back after it was taken"
            );
        }
    }
    (cuts + 1, disk.failed_ops())
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("HANDOVER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("HANDOVER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS);
    (0..n).collect()
}

#[test]
fn simulated_power_loss_and_disk_faults_keep_every_acknowledged_effect() {
    let (mut cuts, mut faults) = (0, 0);
    for seed in seeds() {
        let (c, f) = run(seed);
        cuts += c;
        faults += f;
    }
    eprintln!(
        "simulation: {} seeds, {cuts} power cuts and restarts, {faults} injected faults",
        seeds().len()
    );
    // The runs did cut power and fail operations (the suite is not vacuous).
    assert!(cuts > 0);
    if seeds().len() > 20 {
        assert!(faults > 0);
    }
}
