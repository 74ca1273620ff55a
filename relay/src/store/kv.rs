//! [`Store`] logic over an ordered key-value backend with an envelope log.
//!
//! Envelopes are not in the keyspace: each queued envelope is one [`LogOp::Enqueue`] record in
//! the backend's log (which keeps the ciphertext), its removal (ack, expiry, mailbox deletion)
//! one more record, and the queues are an in-memory index ([`Queues`]) rebuilt from those
//! records when the store opens. A `Send` therefore costs one log append and a share of the
//! group commit's sync, and no write to the keyspace. It reads the keyspace only the first time
//! a send id is used: what a send needs of its mailbox (receive id, capability hashes) is then
//! cached under the same mutex, and every change to those removes the entry
//! ([`Store::enqueue_for_sender`]).
//!
//! Everything else is in one ordered keyspace; the first key byte names the table. Each `Store`
//! method reads under a mutex, builds one batch of puts and deletes plus its log records and
//! hands them to the backend as one atomic unit ([`KvBackend::apply_logged`]), so every method
//! is atomic against concurrent callers and across crashes. The mutex is held only for
//! in-memory work, never across a disk sync.
//!
//! | table | key | value |
//! |---|---|---|
//! | `M` mailbox | recv_id | [`MailboxRec`] |
//! | `S` send index | send_id | recv_id |
//! | `X` expiry index (tombstones, blobs) | expires_at, kind, rest | empty |
//! | `T` tombstone | recv_id, envelope_id | until |
//! | `P` prekey bundle | recv_id | bundle |
//! | `O` one-time prekey | recv_id, kind, counter | prekey |
//! | `D` directory | org root key | [`DirRec`] |
//! | `B` blob meta | blob_id | [`BlobRec`] |
//! | `C` blob chunk | blob_id, chunk index | bytes |
//! | `G` global counters | name | u64 (bytes written to all blobs) |
//! | `Z` mailbox being deleted | recv_id | empty |
//!
//! Integers in keys are big-endian so that key order is numeric order.
//!
//! Sequence numbers are counted per mailbox (1, 2, 3, ...), so that they say nothing about
//! other mailboxes. They are never reused: a mailbox's next number is above its newest queued
//! envelope and at least the floor kept in its [`MailboxRec`] (`next_seq`), which is raised in
//! the same batch that removes the newest queued envelope (ack, expiry), the only moment the
//! log alone could forget the highest number handed out. Mailboxes created before numbering
//! was per mailbox (`own_seq` unset) start above the backend's [`KvBackend::seq_floor`], which
//! is above every number the old relay-wide counter handed out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use prost::Message;

use super::queue::{Admission, Entry, Queues};
use super::senders::SenderCache;
use super::{
    BlobAppended, BlobBegun, BlobMeta, Delivery, Enqueued, Id, LocalLog, Mailbox, MailboxExport,
    MailboxQuota, NewEnvelope, Published, Queued, SenderEnqueued, Store, StoreError, Swept,
    TakenPrekeys, Usage,
};

/// A batch of writes: `Some(value)` puts, `None` deletes.
pub type Batch = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Entries returned by [`KvBackend::scan`], in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Where an envelope body is kept in a backend's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BodyRef {
    /// Log segment number.
    pub segment: u64,
    /// Byte offset of the body in the segment.
    pub offset: u64,
    /// Body length in bytes.
    pub len: u32,
}

/// A record written to the backend's log only (never to the keyspace): the envelope queues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOp<'a> {
    /// An envelope queued (or, during compaction, a live one copied forward).
    Enqueue {
        /// Mailbox.
        recv_id: Id,
        /// Queue position.
        seq: u64,
        /// Sender-chosen id.
        envelope_id: Id,
        /// Expiry, Unix seconds.
        expires_at: u64,
        /// The body.
        ciphertext: &'a [u8],
    },
    /// An envelope acked or expired.
    Remove {
        /// Mailbox.
        recv_id: Id,
        /// Queue position.
        seq: u64,
    },
    /// A mailbox deleted with its whole queue.
    DropMailbox {
        /// Mailbox.
        recv_id: Id,
    },
}

/// A log record found when the backend opened, in log order, for rebuilding the queues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovered {
    /// See [`LogOp::Enqueue`]; the body stays in the log.
    Enqueue {
        /// Mailbox.
        recv_id: Id,
        /// Queue position.
        seq: u64,
        /// Sender-chosen id.
        envelope_id: Id,
        /// Expiry, Unix seconds.
        expires_at: u64,
        /// Where the body is.
        body: BodyRef,
    },
    /// See [`LogOp::Remove`].
    Remove {
        /// Mailbox.
        recv_id: Id,
        /// Queue position.
        seq: u64,
    },
    /// See [`LogOp::DropMailbox`].
    DropMailbox {
        /// Mailbox.
        recv_id: Id,
    },
}

/// The oldest log segment, offered for compaction by [`KvBackend::compaction_candidate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The oldest segment; it is no longer written to and its keyspace writes are checkpointed,
    /// so it can be deleted as soon as it holds no queued envelope.
    pub segment: u64,
    /// Segments on disk.
    pub segments: u64,
    /// Nominal size of a segment in bytes.
    pub segment_size: u64,
    /// Every segment below this one is sealed (no longer written to) and checkpointed: its
    /// live envelopes may be copied forward, and once none is left in it and every older
    /// segment, it is deleted.
    pub sealed_below: u64,
}

/// The log position that the envelope queues correspond to at one moment, for an index
/// checkpoint ([`KvBackend::index_position`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexPosition {
    /// Every batch up to this LSN (applied, maybe not yet synced) is reflected in the queues.
    pub lsn: u64,
    /// The log segment that the next batch goes to.
    pub segment: u64,
}

/// An ordered byte-key store that applies batches atomically, with a log for envelope bodies.
pub trait KvBackend: Send + Sync + 'static {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` entries with `start <= key < end`, in key order.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError>;
    /// Applies all writes atomically (also across a crash), in order.
    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        self.apply_logged(batch, &[]).map(|_| ())
    }
    /// Applies `batch` and appends `ops` to the log as one atomic unit (also across a crash),
    /// in the order of calls. Returns the body location of each [`LogOp::Enqueue`], in order.
    fn apply_logged(&self, batch: Batch, ops: &[LogOp<'_>]) -> Result<Vec<BodyRef>, StoreError>;
    /// A body written by [`KvBackend::apply_logged`]; `None` if its segment was reclaimed
    /// meanwhile (the envelope was removed since the caller looked it up).
    fn read_body(&self, body: &BodyRef) -> Result<Option<Vec<u8>>, StoreError>;
    /// The log records found on open, in log order (taken once; empty afterwards).
    fn take_recovered(&self) -> Vec<Recovered>;
    /// A sequence number higher than any handed out before this backend was opened.
    fn seq_floor(&self) -> u64;
    /// Makes every applied batch and log record durable (see [`Store::sync`]). Log segments
    /// older than `oldest_live` (the oldest one holding a queued envelope, as of before this
    /// call) may be reclaimed.
    fn sync(&self, oldest_live: Option<u64>) -> Result<(), StoreError>;
    /// Makes everything durable and compacts recovery data (see [`LocalLog::checkpoint`]).
    fn checkpoint(&self, oldest_live: Option<u64>) -> Result<(), StoreError> {
        self.sync(oldest_live)
    }
    /// The oldest log segment if it could be reclaimed once empty (see [`Candidate`]).
    fn compaction_candidate(&self) -> Option<Candidate> {
        None
    }
    /// True once a failure made the backend refuse every further write until it is reopened
    /// (see [`Store::writes_blocked`]).
    fn writes_blocked(&self) -> bool {
        false
    }
    /// Where the log stands, if the backend keeps index checkpoints and one is due (with
    /// `force`, whenever it keeps them). Called under the store lock, so that the queues read
    /// in the same hold are the queues as of that position ([`KvBackend::write_index`]).
    fn index_position(&self, force: bool) -> Option<IndexPosition> {
        let _ = force;
        None
    }
    /// Makes the log durable up to `at` and persists `queues` (every queued envelope as a
    /// [`Recovered::Enqueue`], grouped by mailbox), the queues as of `at`, so that the next
    /// open reads them back ([`KvBackend::take_recovered`]) and replays only the log after
    /// `at`. A checkpoint that could not be written is reported, not fatal (the log still
    /// holds everything); an error means the store refuses writes from now on.
    fn write_index(&self, at: IndexPosition, queues: Vec<Recovered>) -> Result<(), StoreError> {
        let _ = (at, queues);
        Ok(())
    }
    /// Per-mailbox sequence numbers handed out by log records that a repair dropped
    /// (`handover-relay repair`): each mailbox's next number must be above its own. Read on
    /// open; applied by the store, which then calls [`KvBackend::seq_floors_applied`].
    fn repair_seq_floors(&self) -> Vec<(Id, u64)> {
        Vec::new()
    }
    /// The floors of [`KvBackend::repair_seq_floors`] are durable in the keyspace: forget them.
    fn seq_floors_applied(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A directory entry as exported: organisation root key, `issued_at`, profile.
pub type DirectoryEntry = ([u8; 32], u64, Vec<u8>);

/// Size of stored blob chunks; uploads are re-chunked to it so reads can seek by index.
pub const BLOB_STORE_CHUNK: usize = 256 * 1024;

const T_MAILBOX: u8 = b'M';
const T_SEND: u8 = b'S';
const T_EXPIRY: u8 = b'X';
const T_TOMB: u8 = b'T';
const T_BUNDLE: u8 = b'P';
const T_ONETIME: u8 = b'O';
const T_DIR: u8 = b'D';
const T_BLOB: u8 = b'B';
const T_CHUNK: u8 = b'C';
/// A deleted mailbox whose tombstones and one-time prekeys are still being deleted.
const T_PURGE: u8 = b'Z';
/// Key (table `G`, global counters) of the bytes written to all stored blobs, for the
/// blob-store quota (counted as bytes arrive, not when an upload is declared).
const G_BLOB_BYTES: &[u8] = b"Gblob-bytes";

const X_TOMBSTONE: u8 = 2;
const X_BLOB: u8 = 3;

const OT_X25519: u8 = 1;
const OT_KEM: u8 = 2;

#[derive(Clone, PartialEq, Message)]
struct MailboxRec {
    #[prost(bytes = "vec", tag = "1")]
    send_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    auth_key: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "3")]
    capability_hashes: Vec<Vec<u8>>,
    #[prost(uint64, tag = "4")]
    next_seq: u64,
    #[prost(uint64, tag = "5")]
    queued_count: u64,
    #[prost(uint64, tag = "6")]
    queued_bytes: u64,
    #[prost(uint64, tag = "7")]
    next_prekey: u64,
    #[prost(uint64, tag = "8")]
    one_time_count: u64,
    #[prost(uint64, tag = "9")]
    one_time_kem_count: u64,
    /// Set once `next_seq` is this mailbox's own floor (see the module docs).
    #[prost(bool, tag = "10")]
    own_seq: bool,
    /// Tombstones the mailbox holds (at most [`MAX_TOMBSTONES_PER_MAILBOX`]).
    #[prost(uint64, tag = "11")]
    tombstones: u64,
}

#[derive(Clone, PartialEq, Message)]
struct DirRec {
    #[prost(uint64, tag = "1")]
    issued_at: u64,
    #[prost(bytes = "vec", tag = "2")]
    profile: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct BlobRec {
    #[prost(uint64, tag = "1")]
    size: u64,
    #[prost(uint64, tag = "2")]
    expires_at: u64,
    #[prost(uint64, tag = "3")]
    written: u64,
    #[prost(bool, tag = "4")]
    complete: bool,
}

/// The newest queued sequence number of the mailbox, if `removed` includes it.
fn removes_newest(state: &State, recv_id: &Id, removed: &[u64]) -> Option<u64> {
    let newest = state
        .queues
        .queue(recv_id)?
        .entries
        .last_key_value()
        .map(|(&seq, _)| seq)?;
    removed.contains(&newest).then_some(newest)
}

fn key(table: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.push(table);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// Keys in `table`, counted in pages.
fn count_keys<B: KvBackend>(backend: &B, table: u8) -> Result<u64, StoreError> {
    const PAGE: usize = 4096;
    let end = prefix_end(&[table]);
    let mut from = vec![table];
    let mut count = 0u64;
    loop {
        let page = backend.scan(&from, &end, PAGE)?;
        count += page.len() as u64;
        match page.last() {
            Some((last, _)) if page.len() == PAGE => {
                from = last.clone();
                from.push(0);
            }
            _ => return Ok(count),
        }
    }
}

/// The exclusive upper bound of all keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|_| StoreError::Corrupt)
}

fn id_of(bytes: &[u8]) -> Result<Id, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt)
}

fn u64_of(bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt)?;
    Ok(u64::from_be_bytes(arr))
}

fn hash_of(bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt)
}

impl MailboxRec {
    fn to_mailbox(&self) -> Result<Mailbox, StoreError> {
        Ok(Mailbox {
            send_id: id_of(&self.send_id)?,
            auth_key: hash_of(&self.auth_key)?,
            capability_hashes: self
                .capability_hashes
                .iter()
                .map(|h| hash_of(h))
                .collect::<Result<_, _>>()?,
            queued_count: self.queued_count,
            queued_bytes: self.queued_bytes,
        })
    }
}

/// [`Store`] over any [`KvBackend`]; see the module docs for the layout.
pub struct KvStore<B> {
    backend: B,
    lock: Mutex<State>,
    totals: Totals,
}

/// The relay-wide totals of [`Store::usage`], published whenever the store lock is released
/// ([`Guard`]), so that reading them never waits for the lock.
#[derive(Debug, Default)]
struct Totals {
    mailboxes: AtomicU64,
    envelopes: AtomicU64,
    bytes: AtomicU64,
}

/// The store lock held: the [`State`], and on release the totals published to [`Totals`].
struct Guard<'a> {
    state: MutexGuard<'a, State>,
    totals: &'a Totals,
}

impl std::ops::Deref for Guard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let t = self.totals;
        t.mailboxes.store(self.state.mailboxes, Ordering::Relaxed);
        t.envelopes
            .store(self.state.queues.total_entries(), Ordering::Relaxed);
        t.bytes
            .store(self.state.queues.total_bytes(), Ordering::Relaxed);
    }
}

/// What the store lock guards besides the backend's atomic batches.
struct State {
    queues: Queues,
    /// Mailboxes stored (counted when the store opens, then kept up to date).
    mailboxes: u64,
    /// Send id → what a send needs of its mailbox, filled by sends. Every change to a
    /// mailbox's send id or capabilities (creation aside, which cannot meet a cached id)
    /// happens under the store lock and removes the entry, and every change to its sequence
    /// floor updates the entry, so a hit is never stale.
    senders: SenderCache<Sender>,
}

/// A mailbox as a sender sees it.
struct Sender {
    recv_id: Id,
    capability_hashes: Vec<[u8; 32]>,
    /// The mailbox's sequence floor ([`KvStore::seq_floor_of`]).
    seq_floor: u64,
}

/// Most cached senders; a full cache evicts one rarely used entry per new sender (CLOCK, see
/// [`SenderCache`]).
pub(super) const SENDER_CACHE_MAX: usize = 1 << 16;

/// Most tombstones one mailbox holds: an envelope that expires while its mailbox holds this
/// many leaves none (its state then reads as unknown, as after an ack). Equal to the default
/// queue limit, so that a full queue that expires at once leaves a tombstone for each.
pub const MAX_TOMBSTONES_PER_MAILBOX: u64 = 10_000;

/// Most keys one step of a mailbox deletion deletes (tombstones with their expiry index
/// entries count one each, one-time prekeys one each), so that the store lock is held for a
/// bounded time.
pub const PURGE_STEP: usize = 1024;

/// Blob records looked at per step of [`Store::discard_incomplete_blobs`].
const BLOB_SCAN_PAGE: usize = 1024;

/// Most body bytes one compaction step copies forward (one hold of the store lock to plan,
/// one to record the copies).
const COMPACT_STEP_BYTES: u64 = 4 * 1024 * 1024;

/// Most body bytes one sweep copies forward; the sweeper calls again while copies are made.
const COMPACT_SWEEP_BYTES: u64 = 64 * 1024 * 1024;

/// What one [`KvStore::compact_step`] did.
struct CompactStep {
    /// Envelopes planned (0: the segment holds none).
    planned: u64,
    /// Their bytes (at least 1 if any were planned), counted against the sweep's budget.
    planned_bytes: u64,
    /// Envelopes copied.
    copied: u64,
    /// Some copy landed in the segment it was copied out of.
    stayed: bool,
}

impl<B: KvBackend> std::fmt::Debug for KvStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore").finish_non_exhaustive()
    }
}

impl<B: KvBackend> KvStore<B> {
    /// A store over `backend`; rebuilds the envelope queues from the backend's log.
    pub fn new(backend: B) -> Self {
        let mut queues = Queues::default();
        for record in backend.take_recovered() {
            match record {
                Recovered::Enqueue {
                    recv_id,
                    seq,
                    envelope_id,
                    expires_at,
                    body,
                } => {
                    queues.insert(
                        recv_id,
                        seq,
                        Entry {
                            envelope_id,
                            expires_at,
                            body,
                        },
                    );
                }
                Recovered::Remove { recv_id, seq } => {
                    queues.remove(&recv_id, seq);
                }
                Recovered::DropMailbox { recv_id } => {
                    queues.drop_mailbox(&recv_id);
                }
            }
        }
        let mailboxes = match count_keys(&backend, T_MAILBOX) {
            Ok(n) => n,
            Err(err) => {
                // The relay-wide mailbox cap then counts from zero; every other method reports
                // the backend's failure itself.
                tracing::error!(error = %err, "could not count the stored mailboxes");
                0
            }
        };
        let store = Self {
            backend,
            lock: Mutex::new(State {
                queues,
                mailboxes,
                senders: SenderCache::new(SENDER_CACHE_MAX),
            }),
            totals: Totals::default(),
        };
        drop(store.guard());
        store.apply_repair_floors();
        store
    }

    /// Raises the sequence floors that a repair left ([`KvBackend::repair_seq_floors`]): a
    /// mailbox whose newest envelopes the repair dropped must not hand their numbers out
    /// again. Durable before the backend forgets them; on failure they stay and the next open
    /// applies them again (raising is idempotent).
    fn apply_repair_floors(&self) {
        let floors = self.backend.repair_seq_floors();
        if floors.is_empty() {
            return;
        }
        let raised = (|| -> Result<usize, StoreError> {
            let state = self.guard();
            let mut batch = Batch::new();
            for (recv_id, seq) in &floors {
                if let Some(mut rec) = self.mailbox_rec(recv_id)?
                    && self.raise_seq_floor(&mut rec, *seq)
                {
                    batch.push((key(T_MAILBOX, &[recv_id]), Some(rec.encode_to_vec())));
                }
            }
            let raised = batch.len();
            self.backend.apply(batch)?;
            let oldest_live = state.queues.oldest_live_segment();
            drop(state);
            self.backend.sync(oldest_live)?;
            self.backend.seq_floors_applied()?;
            Ok(raised)
        })();
        match raised {
            Ok(n) => tracing::warn!(
                mailboxes = n,
                "sequence floors raised above the numbers of the records a repair dropped"
            ),
            Err(err) => tracing::error!(
                error = %err,
                "could not raise the sequence floors a repair left; the next start retries"
            ),
        }
    }

    /// Writes an index checkpoint of the queues if the backend keeps them and one is due
    /// (always with `force`), so that the next open replays only the log after it. The store
    /// lock is held only to copy the queues.
    fn checkpoint_index(&self, force: bool) -> Result<(), StoreError> {
        let (at, queues) = {
            let state = self.guard();
            let Some(at) = self.backend.index_position(force) else {
                return Ok(());
            };
            (at, state.queues.snapshot())
        };
        self.backend.write_index(at, queues)
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn guard(&self) -> Guard<'_> {
        // The backend's batches are atomic and the in-memory index is updated only after the
        // backend accepted a change, with no fallible step in between: a panic while the lock
        // was held cannot have left them half-written, so a poisoned lock is safe to reuse.
        Guard {
            state: self.lock.lock().unwrap_or_else(|e| e.into_inner()),
            totals: &self.totals,
        }
    }

    fn mailbox_rec(&self, recv_id: &Id) -> Result<Option<MailboxRec>, StoreError> {
        self.backend
            .get(&key(T_MAILBOX, &[recv_id]))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// The lowest sequence number the mailbox may hand out next (see the module docs).
    fn seq_floor_of(&self, rec: &MailboxRec) -> u64 {
        if rec.own_seq {
            rec.next_seq.max(1)
        } else {
            rec.next_seq.max(self.backend.seq_floor()).max(1)
        }
    }

    /// Raises `rec`'s sequence floor above `newest`, the newest queued envelope of its
    /// mailbox, which is being removed (see the module docs). Returns whether `rec` changed.
    fn raise_seq_floor(&self, rec: &mut MailboxRec, newest: u64) -> bool {
        let floor = self.seq_floor_of(rec).max(newest.saturating_add(1));
        if rec.own_seq && rec.next_seq == floor {
            return false;
        }
        rec.next_seq = floor;
        rec.own_seq = true;
        true
    }

    /// A mailbox record read once per sweep, from `recs` or the backend.
    fn cached_rec<'a>(
        &self,
        recs: &'a mut BTreeMap<Id, Option<MailboxRec>>,
        recv_id: &Id,
    ) -> Result<Option<&'a mut MailboxRec>, StoreError> {
        let rec = match recs.entry(*recv_id) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(self.mailbox_rec(recv_id)?),
        };
        Ok(rec.as_mut())
    }

    /// One bounded step of a mailbox deletion: deletes up to [`PURGE_STEP`] of the deleted
    /// mailbox's tombstones and one-time prekeys, and its deletion marker once none are left.
    /// Returns how many tombstones went, and whether the deletion is finished.
    fn purge_step(&self, recv_id: &Id) -> Result<(u64, bool), StoreError> {
        let _g = self.guard();
        let mut batch = Batch::new();
        let mut tombstones = 0;
        let mut room = PURGE_STEP;
        for table in [T_TOMB, T_ONETIME] {
            let p = key(table, &[recv_id]);
            let found = self.backend.scan(&p, &prefix_end(&p), room)?;
            room -= found.len();
            for (k, v) in found {
                if table == T_TOMB {
                    let until = u64_of(&v)?;
                    let env = k.get(1 + 16..).ok_or(StoreError::Corrupt)?;
                    batch.push((
                        key(
                            T_EXPIRY,
                            &[&until.to_be_bytes(), &[X_TOMBSTONE], recv_id, env],
                        ),
                        None,
                    ));
                    tombstones += 1;
                }
                batch.push((k, None));
            }
        }
        // A full step may have left more; the next step (which finds none) ends it.
        let done = room > 0;
        if done {
            batch.push((key(T_PURGE, &[recv_id]), None));
        }
        self.backend.apply(batch)?;
        Ok((tombstones, done))
    }

    /// Finishes the deletions of mailboxes marked in table `Z` (left by a crash during
    /// [`Store::delete_mailbox`]), a bounded step at a time. Returns the tombstones deleted.
    fn resume_purges(&self) -> Result<u64, StoreError> {
        let p = [T_PURGE];
        let mut tombstones = 0;
        for (k, _) in self.backend.scan(&p, &prefix_end(&p), 16)? {
            let recv_id = id_of(k.get(1..).ok_or(StoreError::Corrupt)?)?;
            loop {
                let (n, done) = self.purge_step(&recv_id)?;
                tombstones += n;
                if done {
                    break;
                }
            }
        }
        Ok(tombstones)
    }

    /// [`Store::enqueue`] into a mailbox known to exist, whose sequence floor is `floor`,
    /// under the store lock.
    fn enqueue_locked(
        &self,
        state: &mut State,
        recv_id: &Id,
        floor: u64,
        envelope: &NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<Enqueued, StoreError> {
        let len = envelope.ciphertext.len() as u64;
        let admitted = state.queues.insert_new(
            *recv_id,
            floor,
            envelope.envelope_id,
            envelope.expires_at,
            |count, bytes| {
                count < quota.max_envelopes && bytes.saturating_add(len) <= quota.max_bytes
            },
            |seq| {
                let op = LogOp::Enqueue {
                    recv_id: *recv_id,
                    seq,
                    envelope_id: envelope.envelope_id,
                    expires_at: envelope.expires_at,
                    ciphertext: &envelope.ciphertext,
                };
                self.backend
                    .apply_logged(Batch::new(), &[op])?
                    .pop()
                    .ok_or(StoreError::Corrupt)
            },
        )?;
        Ok(match admitted {
            Admission::Queued(seq) => Enqueued::Queued(seq),
            Admission::Duplicate => Enqueued::Duplicate,
            Admission::OverQuota => Enqueued::QuotaExceeded,
        })
    }

    fn with_usage(&self, recv_id: &Id, rec: &MailboxRec) -> Result<Mailbox, StoreError> {
        let mut m = rec.to_mailbox()?;
        (m.queued_count, m.queued_bytes) = self.guard().queues.usage(recv_id);
        Ok(m)
    }

    /// The sealed segments whose live envelopes one sweep copies forward, oldest first (see
    /// [`Self::compact_log`]).
    fn compaction_plan(&self, c: &Candidate) -> Vec<u64> {
        let state = self.guard();
        let size = c.segment_size.max(1);
        let log_bytes = c.segments.saturating_mul(size);
        // Beyond this the log is bloated: twice the live bytes plus two segments.
        let bound = state
            .queues
            .total_bytes()
            .saturating_mul(2)
            .saturating_add(size.saturating_mul(2));
        let mut excess = log_bytes.saturating_sub(bound);
        let mut freed_up_to = c.segment;
        let mut plan = Vec::new();
        let mut planned_bytes = 0u64;
        for (segment, live) in state.queues.live_segments() {
            if segment >= c.sealed_below || planned_bytes >= COMPACT_SWEEP_BYTES {
                break;
            }
            let mostly_dead = live.bytes.saturating_mul(2) <= size;
            if !mostly_dead && excess == 0 {
                // Segments are deleted from the oldest end: copying out of younger ones
                // behind this one would free nothing.
                break;
            }
            // Copying this one out frees it and the dead segments before it.
            let frees = segment.saturating_add(1).saturating_sub(freed_up_to);
            excess = excess.saturating_sub(frees.saturating_mul(size));
            freed_up_to = segment.saturating_add(1);
            planned_bytes = planned_bytes.saturating_add(live.bytes);
            plan.push(segment);
        }
        plan
    }

    /// Copies the live envelopes of the oldest sealed segments forward, so that the next sync
    /// can delete those segments: every segment of the oldest-end run that is at most half
    /// live, and, while the log is larger than twice the live bytes plus two segments, the
    /// oldest segments whatever their live share. At most [`COMPACT_SWEEP_BYTES`] per call,
    /// in steps of at most [`COMPACT_STEP_BYTES`], each holding the store lock only to plan
    /// and to record; bodies are read without it. Returns how many envelopes were copied.
    ///
    /// So the log stays within about twice the live bytes plus a few segments, plus what is
    /// written between two sweeps, whatever the pattern: a long-lived envelope costs one copy
    /// when its segment is mostly dead, not the whole log behind it.
    ///
    /// Also writes an index checkpoint when one is due ([`KvBackend::index_position`]).
    fn compact_log(&self) -> Result<u64, StoreError> {
        self.checkpoint_index(false)?;
        let Some(c) = self.backend.compaction_candidate() else {
            return Ok(0);
        };
        let plan = self.compaction_plan(&c);
        let mut copied = 0u64;
        let mut budget = COMPACT_SWEEP_BYTES;
        for segment in plan {
            loop {
                let step = self.compact_step(segment, budget.min(COMPACT_STEP_BYTES))?;
                copied += step.copied;
                budget = budget.saturating_sub(step.planned_bytes);
                // A backend that writes copies into the segment they came from (none of ours
                // does: copies go to the active segment) would make no progress.
                if step.planned == 0 || budget == 0 || step.stayed {
                    break;
                }
            }
            if budget == 0 {
                break;
            }
        }
        Ok(copied)
    }

    /// Copies up to `max_bytes` of the live envelopes of `segment` forward.
    fn compact_step(&self, segment: u64, max_bytes: u64) -> Result<CompactStep, StoreError> {
        let planned: Vec<(Id, u64, Entry)> = {
            let state = self.guard();
            let mut bytes = 0u64;
            let mut planned = Vec::new();
            for (recv_id, seq) in state.queues.in_segment(segment, 65_536) {
                if bytes >= max_bytes {
                    break;
                }
                if let Some(entry) = state
                    .queues
                    .queue(&recv_id)
                    .and_then(|q| q.entries.get(&seq))
                {
                    bytes += u64::from(entry.body.len);
                    planned.push((recv_id, seq, *entry));
                }
            }
            planned
        };
        let mut step = CompactStep {
            planned: planned.len() as u64,
            planned_bytes: planned
                .iter()
                .map(|(_, _, e)| u64::from(e.body.len))
                .sum::<u64>()
                .max(1),
            copied: 0,
            stayed: false,
        };
        if planned.is_empty() {
            return Ok(step);
        }
        let mut read = Vec::with_capacity(planned.len());
        for (recv_id, seq, entry) in planned {
            // `None`: removed meanwhile and its segment already reclaimed.
            if let Some(body) = self.backend.read_body(&entry.body)? {
                read.push((recv_id, seq, entry, body));
            }
        }
        let mut state = self.guard();
        // Copy only what is still queued unchanged (not acked, expired or moved meanwhile).
        read.retain(|(recv_id, seq, entry, _)| {
            state.queues.queue(recv_id).and_then(|q| q.entries.get(seq)) == Some(entry)
        });
        if read.is_empty() {
            return Ok(step);
        }
        let ops: Vec<LogOp<'_>> = read
            .iter()
            .map(|(recv_id, seq, entry, body)| LogOp::Enqueue {
                recv_id: *recv_id,
                seq: *seq,
                envelope_id: entry.envelope_id,
                expires_at: entry.expires_at,
                ciphertext: body,
            })
            .collect();
        let refs = self.backend.apply_logged(Batch::new(), &ops)?;
        for ((recv_id, seq, entry, _), body) in read.iter().zip(refs) {
            step.stayed |= body.segment == segment;
            state
                .queues
                .insert(*recv_id, *seq, Entry { body, ..*entry });
        }
        step.copied = read.len() as u64;
        Ok(step)
    }

    fn blob_rec(&self, blob_id: &Id) -> Result<Option<BlobRec>, StoreError> {
        self.backend
            .get(&key(T_BLOB, &[blob_id]))?
            .map(|v| decode(&v))
            .transpose()
    }

    fn blob_total(&self) -> Result<u64, StoreError> {
        match self.backend.get(G_BLOB_BYTES)? {
            Some(v) => u64_of(&v),
            None => Ok(0),
        }
    }

    fn delete_blob_batch(&self, batch: &mut Batch, blob_id: &Id, rec: &BlobRec) {
        batch.push((key(T_BLOB, &[blob_id]), None));
        batch.push((
            key(
                T_EXPIRY,
                &[&rec.expires_at.to_be_bytes(), &[X_BLOB], blob_id],
            ),
            None,
        ));
        let chunks = rec.written.div_ceil(BLOB_STORE_CHUNK as u64);
        for index in 0..chunks {
            batch.push((key(T_CHUNK, &[blob_id, &index.to_be_bytes()]), None));
        }
    }

    fn take_one_time(
        &self,
        batch: &mut Batch,
        recv_id: &Id,
        kind: u8,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let prefix = key(T_ONETIME, &[recv_id, &[kind]]);
        let mut found = self.backend.scan(&prefix, &prefix_end(&prefix), 1)?;
        Ok(found.pop().map(|(k, v)| {
            batch.push((k, None));
            v
        }))
    }
}

impl<B: KvBackend> KvStore<B> {
    /// Copies live envelopes out of mostly dead log segments ([`LocalLog::compact`]).
    pub fn compact(&self) -> Result<u64, StoreError> {
        self.compact_log()
    }

    /// Syncs and checkpoints the backend ([`LocalLog::checkpoint`]).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let oldest_live = self.guard().queues.oldest_live_segment();
        self.backend.checkpoint(oldest_live)?;
        self.checkpoint_index(true)
    }
}

impl<B: KvBackend> KvStore<B> {
    /// Up to `limit` mailboxes with a receive id above `after`, in id order, each with
    /// everything it holds (for `handover-relay migrate`).
    pub fn export_mailboxes(
        &self,
        after: Option<&Id>,
        limit: usize,
    ) -> Result<Vec<MailboxExport>, StoreError> {
        let start = match after {
            Some(id) => {
                let mut k = key(T_MAILBOX, &[id]);
                k.push(0);
                k
            }
            None => vec![T_MAILBOX],
        };
        let mut out = Vec::new();
        for (k, v) in self.backend.scan(&start, &[T_MAILBOX + 1], limit)? {
            let recv_id = id_of(k.get(1..).ok_or(StoreError::Corrupt)?)?;
            let rec: MailboxRec = decode(&v)?;
            let m = rec.to_mailbox()?;
            let (envelopes, _) = self.fetch(&recv_id, 0, usize::MAX - 1, 0)?;
            let next_seq = envelopes
                .last()
                .map_or(0, |q| q.seq.saturating_add(1))
                .max(self.seq_floor_of(&rec));
            let p = key(T_TOMB, &[&recv_id]);
            let tombstones = self
                .backend
                .scan(&p, &prefix_end(&p), usize::MAX)?
                .into_iter()
                .map(|(k, v)| Ok((id_of(k.get(17..).ok_or(StoreError::Corrupt)?)?, u64_of(&v)?)))
                .collect::<Result<_, StoreError>>()?;
            let mut one_time = [Vec::new(), Vec::new()];
            for (slot, kind) in one_time.iter_mut().zip([OT_X25519, OT_KEM]) {
                let p = key(T_ONETIME, &[&recv_id, &[kind]]);
                *slot = self
                    .backend
                    .scan(&p, &prefix_end(&p), usize::MAX)?
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect();
            }
            let [one_time, one_time_kem] = one_time;
            out.push(MailboxExport {
                recv_id,
                send_id: m.send_id,
                auth_key: m.auth_key,
                capability_hashes: m.capability_hashes,
                next_seq,
                envelopes,
                tombstones,
                bundle: self.backend.get(&key(T_BUNDLE, &[&recv_id]))?,
                one_time,
                one_time_kem,
            });
        }
        Ok(out)
    }

    /// Every directory entry: organisation root key, `issued_at`, profile; in key order.
    pub fn export_directory(&self) -> Result<Vec<DirectoryEntry>, StoreError> {
        self.backend
            .scan(&[T_DIR], &[T_DIR + 1], usize::MAX)?
            .into_iter()
            .map(|(k, v)| {
                let rec: DirRec = decode(&v)?;
                Ok((
                    hash_of(k.get(1..).ok_or(StoreError::Corrupt)?)?,
                    rec.issued_at,
                    rec.profile,
                ))
            })
            .collect()
    }

    /// The ids of every complete blob, in id order.
    pub fn export_blob_ids(&self) -> Result<Vec<Id>, StoreError> {
        let mut out = Vec::new();
        for (k, v) in self.backend.scan(&[T_BLOB], &[T_BLOB + 1], usize::MAX)? {
            let rec: BlobRec = decode(&v)?;
            if rec.complete {
                out.push(id_of(k.get(1..).ok_or(StoreError::Corrupt)?)?);
            }
        }
        Ok(out)
    }
}

impl<B: KvBackend> LocalLog for KvStore<B> {
    fn compact(&self) -> Result<u64, StoreError> {
        KvStore::compact(self)
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        KvStore::checkpoint(self)
    }
}

impl<B: KvBackend> Store for KvStore<B> {
    fn create_mailbox(&self, recv_id: &Id, mailbox: &Mailbox) -> Result<bool, StoreError> {
        let mut state = self.guard();
        let send_key = key(T_SEND, &[&mailbox.send_id]);
        let mailbox_key = key(T_MAILBOX, &[recv_id]);
        if self.backend.get(&mailbox_key)?.is_some()
            || self.backend.get(&send_key)?.is_some()
            || self.backend.get(&key(T_PURGE, &[recv_id]))?.is_some()
        {
            return Ok(false);
        }
        let rec = MailboxRec {
            send_id: mailbox.send_id.to_vec(),
            auth_key: mailbox.auth_key.to_vec(),
            capability_hashes: mailbox
                .capability_hashes
                .iter()
                .map(|h| h.to_vec())
                .collect(),
            next_seq: 1,
            own_seq: true,
            ..MailboxRec::default()
        };
        self.backend.apply(vec![
            (mailbox_key, Some(rec.encode_to_vec())),
            (send_key, Some(recv_id.to_vec())),
        ])?;
        state.mailboxes += 1;
        Ok(true)
    }

    fn mailbox(&self, recv_id: &Id) -> Result<Option<Mailbox>, StoreError> {
        self.mailbox_rec(recv_id)?
            .map(|r| self.with_usage(recv_id, &r))
            .transpose()
    }

    fn mailbox_by_send_id(&self, send_id: &Id) -> Result<Option<(Id, Mailbox)>, StoreError> {
        let Some(recv) = self.backend.get(&key(T_SEND, &[send_id]))? else {
            return Ok(None);
        };
        let recv_id = id_of(&recv)?;
        Ok(self.mailbox(&recv_id)?.map(|m| (recv_id, m)))
    }

    fn set_capabilities(&self, recv_id: &Id, hashes: &[[u8; 32]]) -> Result<bool, StoreError> {
        let mut state = self.guard();
        let Some(mut rec) = self.mailbox_rec(recv_id)? else {
            return Ok(false);
        };
        rec.capability_hashes = hashes.iter().map(|h| h.to_vec()).collect();
        self.backend.apply(vec![(
            key(T_MAILBOX, &[recv_id]),
            Some(rec.encode_to_vec()),
        )])?;
        state.senders.remove(&id_of(&rec.send_id)?);
        Ok(true)
    }

    fn delete_mailbox(&self, recv_id: &Id) -> Result<bool, StoreError> {
        // First the mailbox, its send id, bundle and queue, with a marker, in one atomic step;
        // then its tombstones and one-time prekeys in bounded steps (finished by the sweeper
        // if the relay stops meanwhile). A re-created mailbox cannot take the id before the
        // marker is gone.
        {
            let mut state = self.guard();
            let Some(rec) = self.mailbox_rec(recv_id)? else {
                return Ok(false);
            };
            let batch: Batch = vec![
                (key(T_MAILBOX, &[recv_id]), None),
                (key(T_SEND, &[&rec.send_id]), None),
                (key(T_BUNDLE, &[recv_id]), None),
                (key(T_PURGE, &[recv_id]), Some(Vec::new())),
            ];
            self.backend
                .apply_logged(batch, &[LogOp::DropMailbox { recv_id: *recv_id }])?;
            state.queues.drop_mailbox(recv_id);
            state.mailboxes = state.mailboxes.saturating_sub(1);
            state.senders.remove(&id_of(&rec.send_id)?);
        }
        while !self.purge_step(recv_id)?.1 {}
        Ok(true)
    }

    fn enqueue(
        &self,
        recv_id: &Id,
        envelope: &NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<Enqueued, StoreError> {
        let mut state = self.guard();
        let Some(rec) = self.mailbox_rec(recv_id)? else {
            return Ok(Enqueued::NoMailbox);
        };
        let floor = self.seq_floor_of(&rec);
        self.enqueue_locked(&mut state, recv_id, floor, envelope, quota)
    }

    fn enqueue_for_sender(
        &self,
        send_id: &Id,
        admit: &dyn Fn(&[[u8; 32]]) -> bool,
        envelope: &NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<SenderEnqueued, StoreError> {
        let mut state = self.guard();
        let (recv_id, floor, admitted) = match state.senders.get(send_id) {
            Some(sender) => (
                sender.recv_id,
                sender.seq_floor,
                admit(&sender.capability_hashes),
            ),
            None => {
                let Some(recv) = self.backend.get(&key(T_SEND, &[send_id]))? else {
                    return Ok(SenderEnqueued::NoMailbox);
                };
                let recv_id = id_of(&recv)?;
                let Some(rec) = self.mailbox_rec(&recv_id)? else {
                    return Ok(SenderEnqueued::NoMailbox);
                };
                let sender = Sender {
                    recv_id,
                    capability_hashes: rec.to_mailbox()?.capability_hashes,
                    seq_floor: self.seq_floor_of(&rec),
                };
                let floor = sender.seq_floor;
                let admitted = admit(&sender.capability_hashes);
                state.senders.insert(*send_id, sender);
                (recv_id, floor, admitted)
            }
        };
        if !admitted {
            return Ok(SenderEnqueued::Refused);
        }
        let outcome = self.enqueue_locked(&mut state, &recv_id, floor, envelope, quota)?;
        Ok(SenderEnqueued::Mailbox(recv_id, outcome))
    }

    fn try_enqueue_for_sender(
        &self,
        send_id: &Id,
        admit: &dyn Fn(&[[u8; 32]]) -> bool,
        envelope: &NewEnvelope,
        quota: MailboxQuota,
    ) -> Option<Result<SenderEnqueued, StoreError>> {
        let mut state = self.guard();
        let sender = state.senders.get(send_id)?;
        let (recv_id, floor) = (sender.recv_id, sender.seq_floor);
        if !admit(&sender.capability_hashes) {
            return Some(Ok(SenderEnqueued::Refused));
        }
        // Appends to the backend's in-memory log buffer; the disk write is the commit's.
        Some(
            self.enqueue_locked(&mut state, &recv_id, floor, envelope, quota)
                .map(|outcome| SenderEnqueued::Mailbox(recv_id, outcome)),
        )
    }

    fn fetch(
        &self,
        recv_id: &Id,
        after_seq: u64,
        limit: usize,
        now: u64,
    ) -> Result<(Vec<Queued>, bool), StoreError> {
        // Expired entries not yet swept are skipped. One more than `limit` tells whether more
        // follow.
        let found: Vec<(u64, Entry)> = {
            let state = self.guard();
            let Some(q) = state.queues.queue(recv_id) else {
                return Ok((Vec::new(), false));
            };
            q.entries
                .range(after_seq.saturating_add(1)..)
                .filter(|(_, e)| e.expires_at > now)
                .take(limit.saturating_add(1))
                .map(|(s, e)| (*s, *e))
                .collect()
        };
        let more = found.len() > limit;
        let mut out = Vec::with_capacity(found.len().min(limit));
        for (seq, mut entry) in found.into_iter().take(limit) {
            // Bodies are read outside the lock. A body whose segment was reclaimed meanwhile
            // was either removed (acked, expired, mailbox deleted: skipped) or copied forward
            // by compaction before its old segment went: then the index holds its new place,
            // and the body is read from there.
            let ciphertext = loop {
                if let Some(body) = self.backend.read_body(&entry.body)? {
                    break Some(body);
                }
                let moved = self
                    .guard()
                    .queues
                    .queue(recv_id)
                    .and_then(|q| q.entries.get(&seq))
                    .copied();
                match moved {
                    Some(now_at) if now_at.body != entry.body => entry = now_at,
                    _ => break None,
                }
            };
            let Some(ciphertext) = ciphertext else {
                continue;
            };
            out.push(Queued {
                seq,
                envelope: NewEnvelope {
                    envelope_id: entry.envelope_id,
                    expires_at: entry.expires_at,
                    ciphertext,
                },
            });
        }
        Ok((out, more))
    }

    fn ack(&self, recv_id: &Id, envelope_ids: &[Id]) -> Result<u64, StoreError> {
        let mut state = self.guard();
        let Some(q) = state.queues.queue(recv_id) else {
            return Ok(0);
        };
        let mut seqs: Vec<u64> = envelope_ids
            .iter()
            .filter_map(|id| q.by_id.get(id).copied())
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        if seqs.is_empty() {
            return Ok(0);
        }
        let mut batch = Batch::new();
        if let Some(newest) = removes_newest(&state, recv_id, &seqs)
            && let Some(mut rec) = self.mailbox_rec(recv_id)?
            && self.raise_seq_floor(&mut rec, newest)
        {
            batch.push((key(T_MAILBOX, &[recv_id]), Some(rec.encode_to_vec())));
            // The cached sender, if any, gets the new floor.
            let floor = rec.next_seq;
            state
                .senders
                .update(&id_of(&rec.send_id)?, |s| s.seq_floor = floor);
        }
        let ops: Vec<LogOp<'_>> = seqs
            .iter()
            .map(|seq| LogOp::Remove {
                recv_id: *recv_id,
                seq: *seq,
            })
            .collect();
        self.backend.apply_logged(batch, &ops)?;
        for seq in &seqs {
            state.queues.remove(recv_id, *seq);
        }
        Ok(seqs.len() as u64)
    }

    fn envelope_states(
        &self,
        recv_id: &Id,
        envelope_ids: &[Id],
        now: u64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let queued: Vec<Option<u64>> = {
            let state = self.guard();
            let q = state.queues.queue(recv_id);
            envelope_ids
                .iter()
                .map(|id| {
                    q.and_then(|q| q.by_id.get(id))
                        .and_then(|seq| q.and_then(|q| q.entries.get(seq)))
                        .map(|e| e.expires_at)
                })
                .collect()
        };
        let mut out = Vec::with_capacity(envelope_ids.len());
        for (id, expires_at) in envelope_ids.iter().zip(queued) {
            let state = match expires_at {
                Some(at) if at <= now => Delivery::ExpiredUndelivered,
                Some(_) => Delivery::Pending,
                None => match self.backend.get(&key(T_TOMB, &[recv_id, id]))? {
                    Some(until) if u64_of(&until)? > now => Delivery::ExpiredUndelivered,
                    _ => Delivery::Unknown,
                },
            };
            out.push(state);
        }
        Ok(out)
    }

    fn prekey_publish(
        &self,
        recv_id: &Id,
        bundle: &[u8],
        one_time: &[Vec<u8>],
        one_time_kem: &[Vec<u8>],
        max_stored: u64,
    ) -> Result<Published, StoreError> {
        let _g = self.guard();
        let Some(mut rec) = self.mailbox_rec(recv_id)? else {
            return Ok(Published::NoMailbox);
        };
        if rec.one_time_count + one_time.len() as u64 > max_stored
            || rec.one_time_kem_count + one_time_kem.len() as u64 > max_stored
        {
            return Ok(Published::QuotaExceeded);
        }
        let mut batch: Batch = vec![(key(T_BUNDLE, &[recv_id]), Some(bundle.to_vec()))];
        for (kind, keys) in [(OT_X25519, one_time), (OT_KEM, one_time_kem)] {
            for k in keys {
                let n = rec.next_prekey;
                rec.next_prekey += 1;
                batch.push((
                    key(T_ONETIME, &[recv_id, &[kind], &n.to_be_bytes()]),
                    Some(k.clone()),
                ));
            }
        }
        rec.one_time_count += one_time.len() as u64;
        rec.one_time_kem_count += one_time_kem.len() as u64;
        batch.push((key(T_MAILBOX, &[recv_id]), Some(rec.encode_to_vec())));
        self.backend.apply(batch)?;
        Ok(Published::Stored)
    }

    fn prekey_take(&self, recv_id: &Id) -> Result<Option<TakenPrekeys>, StoreError> {
        let _g = self.guard();
        let Some(mut rec) = self.mailbox_rec(recv_id)? else {
            return Ok(None);
        };
        let Some(bundle) = self.backend.get(&key(T_BUNDLE, &[recv_id]))? else {
            return Ok(None);
        };
        let mut batch = Batch::new();
        let one_time = self.take_one_time(&mut batch, recv_id, OT_X25519)?;
        let one_time_kem = self.take_one_time(&mut batch, recv_id, OT_KEM)?;
        if one_time.is_some() {
            rec.one_time_count = rec.one_time_count.saturating_sub(1);
        }
        if one_time_kem.is_some() {
            rec.one_time_kem_count = rec.one_time_kem_count.saturating_sub(1);
        }
        if !batch.is_empty() {
            batch.push((key(T_MAILBOX, &[recv_id]), Some(rec.encode_to_vec())));
            self.backend.apply(batch)?;
        }
        Ok(Some(TakenPrekeys {
            bundle,
            one_time,
            one_time_kem,
            remaining: rec.one_time_count,
        }))
    }

    fn directory_put(
        &self,
        org_root_key: &[u8; 32],
        issued_at: u64,
        profile: &[u8],
    ) -> Result<bool, StoreError> {
        let _g = self.guard();
        let k = key(T_DIR, &[org_root_key]);
        if let Some(old) = self.backend.get(&k)? {
            let old: DirRec = decode(&old)?;
            if old.issued_at >= issued_at {
                return Ok(false);
            }
        }
        let rec = DirRec {
            issued_at,
            profile: profile.to_vec(),
        };
        self.backend.apply(vec![(k, Some(rec.encode_to_vec()))])?;
        Ok(true)
    }

    fn directory_all(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let p = [T_DIR];
        self.backend
            .scan(&p, &prefix_end(&p), usize::MAX)?
            .into_iter()
            .map(|(_, v)| decode::<DirRec>(&v).map(|r| r.profile))
            .collect()
    }

    fn blob_begin(
        &self,
        blob_id: &Id,
        size: u64,
        expires_at: u64,
        max_total: u64,
    ) -> Result<BlobBegun, StoreError> {
        let _g = self.guard();
        let k = key(T_BLOB, &[blob_id]);
        if self.backend.get(&k)?.is_some() {
            return Ok(BlobBegun::IdTaken);
        }
        // Refused early if it could not fit now; nothing is reserved until bytes arrive.
        let total = self.blob_total()?;
        if total.saturating_add(size) > max_total {
            return Ok(BlobBegun::QuotaExceeded);
        }
        let rec = BlobRec {
            size,
            expires_at,
            written: 0,
            complete: false,
        };
        self.backend.apply(vec![
            (k, Some(rec.encode_to_vec())),
            (
                key(T_EXPIRY, &[&expires_at.to_be_bytes(), &[X_BLOB], blob_id]),
                Some(Vec::new()),
            ),
        ])?;
        Ok(BlobBegun::Started)
    }

    fn blob_append(
        &self,
        blob_id: &Id,
        data: &[u8],
        max_total: u64,
    ) -> Result<BlobAppended, StoreError> {
        let _g = self.guard();
        let Some(mut rec) = self.blob_rec(blob_id)? else {
            return Ok(BlobAppended::Refused);
        };
        if rec.complete || rec.written.saturating_add(data.len() as u64) > rec.size {
            return Ok(BlobAppended::Refused);
        }
        let total = self.blob_total()?.saturating_add(data.len() as u64);
        if total > max_total {
            return Ok(BlobAppended::QuotaExceeded);
        }
        let chunk_len = BLOB_STORE_CHUNK as u64;
        let mut batch = Batch::new();
        let mut rest = data;
        while !rest.is_empty() {
            let index = rec.written / chunk_len;
            let within = (rec.written % chunk_len) as usize;
            let take = rest.len().min(BLOB_STORE_CHUNK - within);
            let chunk_key = key(T_CHUNK, &[blob_id, &index.to_be_bytes()]);
            let mut chunk = if within == 0 {
                Vec::new()
            } else {
                match batch.iter().rev().find(|(k, _)| *k == chunk_key) {
                    Some((_, Some(v))) => v.clone(),
                    _ => self.backend.get(&chunk_key)?.ok_or(StoreError::Corrupt)?,
                }
            };
            chunk.extend_from_slice(&rest[..take]);
            batch.push((chunk_key, Some(chunk)));
            rec.written += take as u64;
            rest = &rest[take..];
        }
        batch.push((key(T_BLOB, &[blob_id]), Some(rec.encode_to_vec())));
        batch.push((G_BLOB_BYTES.to_vec(), Some(total.to_be_bytes().to_vec())));
        self.backend.apply(batch)?;
        Ok(BlobAppended::Appended)
    }

    fn blob_complete(&self, blob_id: &Id) -> Result<bool, StoreError> {
        let _g = self.guard();
        let Some(mut rec) = self.blob_rec(blob_id)? else {
            return Ok(false);
        };
        if rec.written != rec.size {
            return Ok(false);
        }
        rec.complete = true;
        self.backend
            .apply(vec![(key(T_BLOB, &[blob_id]), Some(rec.encode_to_vec()))])?;
        Ok(true)
    }

    fn blob_meta(&self, blob_id: &Id) -> Result<Option<BlobMeta>, StoreError> {
        Ok(self.blob_rec(blob_id)?.map(|r| BlobMeta {
            size: r.size,
            expires_at: r.expires_at,
            written: r.written,
            complete: r.complete,
        }))
    }

    fn blob_read(&self, blob_id: &Id, offset: u64, max: usize) -> Result<Vec<u8>, StoreError> {
        let Some(rec) = self.blob_rec(blob_id)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut pos = offset;
        let chunk_len = BLOB_STORE_CHUNK as u64;
        while out.len() < max && pos < rec.written {
            let index = pos / chunk_len;
            let within = (pos % chunk_len) as usize;
            let chunk = self
                .backend
                .get(&key(T_CHUNK, &[blob_id, &index.to_be_bytes()]))?
                .ok_or(StoreError::Corrupt)?;
            let avail = chunk.get(within..).ok_or(StoreError::Corrupt)?;
            let take = avail.len().min(max - out.len());
            if take == 0 {
                return Err(StoreError::Corrupt);
            }
            out.extend_from_slice(&avail[..take]);
            pos += take as u64;
        }
        Ok(out)
    }

    fn blob_delete(&self, blob_id: &Id) -> Result<(), StoreError> {
        let _g = self.guard();
        if let Some(rec) = self.blob_rec(blob_id)? {
            let mut batch = Batch::new();
            self.delete_blob_batch(&mut batch, blob_id, &rec);
            let total = self.blob_total()?.saturating_sub(rec.written);
            batch.push((G_BLOB_BYTES.to_vec(), Some(total.to_be_bytes().to_vec())));
            self.backend.apply(batch)?;
        }
        Ok(())
    }

    fn discard_incomplete_blobs(&self) -> Result<u64, StoreError> {
        // In pages, each under the lock for a bounded time. The total is recounted from the
        // blobs that stay, which also corrects a total kept by an older version (which
        // counted declared sizes from the start of each upload).
        let mut discarded = 0;
        let mut total = 0u64;
        let end = [T_BLOB + 1];
        let mut from = vec![T_BLOB];
        loop {
            let _g = self.guard();
            let page = self.backend.scan(&from, &end, BLOB_SCAN_PAGE)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            from = last.clone();
            from.push(0);
            let mut batch = Batch::new();
            for (k, v) in &page {
                let rec: BlobRec = decode(v)?;
                if rec.complete {
                    total = total.saturating_add(rec.written);
                } else {
                    let blob_id = id_of(k.get(1..).ok_or(StoreError::Corrupt)?)?;
                    self.delete_blob_batch(&mut batch, &blob_id, &rec);
                    discarded += 1;
                }
            }
            if !batch.is_empty() {
                self.backend.apply(batch)?;
            }
        }
        let _g = self.guard();
        self.backend.apply(vec![(
            G_BLOB_BYTES.to_vec(),
            Some(total.to_be_bytes().to_vec()),
        )])?;
        Ok(discarded)
    }

    fn sweep(&self, now: u64, budget: usize, tombstone_secs: u64) -> Result<Swept, StoreError> {
        let mut swept = Swept::default();
        // A mailbox deletion interrupted by a crash is finished here, a step at a time.
        swept.tombstones += self.resume_purges()?;
        let mut state = self.guard();
        let mut batch = Batch::new();
        let mut ops = Vec::new();
        // Mailbox records this sweep changes (sequence floor, tombstone count), written once
        // each at the end; `None`: deleted.
        let mut recs: BTreeMap<Id, Option<MailboxRec>> = BTreeMap::new();
        let mut changed: BTreeSet<Id> = BTreeSet::new();
        // Tombstone keys this sweep writes.
        let mut tombs_written: BTreeSet<Vec<u8>> = BTreeSet::new();
        let until = now.saturating_add(tombstone_secs);
        let expired = state.queues.expired(now, budget);
        let mut by_mailbox: BTreeMap<Id, Vec<u64>> = BTreeMap::new();
        for (recv_id, seq) in &expired {
            by_mailbox.entry(*recv_id).or_default().push(*seq);
        }
        for (recv_id, seqs) in &by_mailbox {
            if let Some(newest) = removes_newest(&state, recv_id, seqs) {
                let rec = self.cached_rec(&mut recs, recv_id)?;
                if let Some(rec) = rec
                    && self.raise_seq_floor(rec, newest)
                {
                    changed.insert(*recv_id);
                }
            }
        }
        for (recv_id, seq) in &expired {
            let Some(entry) = state.queues.queue(recv_id).and_then(|q| q.entries.get(seq)) else {
                continue;
            };
            ops.push(LogOp::Remove {
                recv_id: *recv_id,
                seq: *seq,
            });
            swept.envelopes += 1;
            // A tombstone, unless the mailbox holds its most already (then the envelope's
            // state reads as unknown, as after an ack). A tombstone rewritten for a reused
            // envelope id counts once.
            let tomb = key(T_TOMB, &[recv_id, &entry.envelope_id]);
            let Some(rec) = self.cached_rec(&mut recs, recv_id)? else {
                continue;
            };
            let rewritten = tombs_written.contains(&tomb) || self.backend.get(&tomb)?.is_some();
            if !rewritten {
                if rec.tombstones >= MAX_TOMBSTONES_PER_MAILBOX {
                    continue;
                }
                rec.tombstones += 1;
                changed.insert(*recv_id);
            }
            tombs_written.insert(tomb.clone());
            batch.push((tomb, Some(until.to_be_bytes().to_vec())));
            batch.push((
                key(
                    T_EXPIRY,
                    &[
                        &until.to_be_bytes(),
                        &[X_TOMBSTONE],
                        recv_id,
                        &entry.envelope_id,
                    ],
                ),
                Some(Vec::new()),
            ));
        }
        let start = [T_EXPIRY];
        let end = key(T_EXPIRY, &[&now.saturating_add(1).to_be_bytes()]);
        let mut blob_bytes_freed = 0u64;
        let rest_budget = budget.saturating_sub(expired.len());
        for (k, _) in self.backend.scan(&start, &end, rest_budget)? {
            batch.push((k.clone(), None));
            let kind = *k.get(9).ok_or(StoreError::Corrupt)?;
            let rest = k.get(10..).ok_or(StoreError::Corrupt)?;
            match kind {
                X_TOMBSTONE => {
                    let tomb = key(T_TOMB, &[rest]);
                    // Only delete the tombstone this index entry belongs to.
                    if let Some(until) = self.backend.get(&tomb)?
                        && until.as_slice() == k.get(1..9).unwrap_or_default()
                    {
                        batch.push((tomb, None));
                        swept.tombstones += 1;
                        let recv_id = id_of(rest.get(..16).ok_or(StoreError::Corrupt)?)?;
                        if let Some(rec) = self.cached_rec(&mut recs, &recv_id)? {
                            rec.tombstones = rec.tombstones.saturating_sub(1);
                            changed.insert(recv_id);
                        }
                    }
                }
                X_BLOB => {
                    let blob_id = id_of(rest)?;
                    if let Some(rec) = self.blob_rec(&blob_id)? {
                        self.delete_blob_batch(&mut batch, &blob_id, &rec);
                        blob_bytes_freed += rec.written;
                        swept.blobs += 1;
                    }
                }
                _ => return Err(StoreError::Corrupt),
            }
        }
        if blob_bytes_freed > 0 {
            let total = self.blob_total()?.saturating_sub(blob_bytes_freed);
            batch.push((G_BLOB_BYTES.to_vec(), Some(total.to_be_bytes().to_vec())));
        }
        for recv_id in &changed {
            if let Some(Some(rec)) = recs.get(recv_id) {
                batch.push((key(T_MAILBOX, &[recv_id]), Some(rec.encode_to_vec())));
                // The cached sender, if any, gets the new sequence floor.
                let floor = self.seq_floor_of(rec);
                state
                    .senders
                    .update(&id_of(&rec.send_id)?, |s| s.seq_floor = floor);
            }
        }
        if !batch.is_empty() || !ops.is_empty() {
            self.backend.apply_logged(batch, &ops)?;
            for (recv_id, seq) in &expired {
                state.queues.remove(recv_id, *seq);
            }
        }
        drop(state);
        Ok(swept)
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Read before the backend freezes its pending records: every removal visible now is in
        // what this sync makes durable, so segments older than this are safe to reclaim.
        let oldest_live = self.guard().queues.oldest_live_segment();
        self.backend.sync(oldest_live)
    }

    fn local_log(&self) -> Option<&dyn LocalLog> {
        Some(self)
    }

    fn usage(&self) -> Usage {
        Usage {
            mailboxes: self.totals.mailboxes.load(Ordering::Relaxed),
            queued_envelopes: self.totals.envelopes.load(Ordering::Relaxed),
            queued_bytes: self.totals.bytes.load(Ordering::Relaxed),
        }
    }

    fn writes_blocked(&self) -> bool {
        self.backend.writes_blocked()
    }
}
