//! Storage behind the request handler.
//!
//! [`Store`] is the contract between the sans-IO [`Handler`](crate::handler::Handler) and a
//! storage backend. Three implementations ship:
//!
//! - [`DiskStore`]: embedded and durable, the default for a relay on one machine: an envelope
//!   log plus sled, a [`KvStore`] over the [`LogBackend`]. It is the only writer of its
//!   directory (one process).
//! - [`MemoryStore`]: its in-memory twin for tests and benches.
//! - [`PgStore`]: PostgreSQL, shared by any number of relay processes ("nodes") at once; each
//!   method is one transaction (see [`postgres`]).
//!
//! # Contract
//!
//! Every implementation must provide, for each method:
//!
//! - **Atomicity**: a method's effects are all-or-nothing, also across a crash. Concurrent calls
//!   behave as if run one after another (serialisable), in particular [`Store::enqueue`]'s quota
//!   check and [`Store::prekey_take`]'s removal of a one-time prekey. "Concurrent" means from
//!   any thread of any process sharing the store: a shared backend takes the row locks that
//!   make this so (PostgreSQL: `SELECT ... FOR UPDATE` on the mailbox row), it does not rely
//!   on a lock inside one process.
//! - **Sequence numbers under the mailbox's lock**: a mailbox's `seq` is allocated while the
//!   mailbox is locked against every other enqueue into it, and that lock is held until the
//!   envelope is visible (for a shared backend: until its transaction committed). So envelopes
//!   of one mailbox become visible in `seq` order, and a reader paging with
//!   [`Store::fetch`]'s `after_seq` never skips an envelope whose write was still in flight
//!   when it read a higher number. Numbers are per mailbox, strictly increasing and never
//!   reused (not after acks, expiry or a restart).
//! - **No stale cache**: a method's answer reflects every change that returned before it was
//!   called, from any node. An implementation may cache only what no other process can change
//!   (the embedded store, its directory's only writer, caches senders and the queue index); a
//!   shared backend caches nothing that another node could change, so a capability
//!   replacement, a mailbox deletion or a taken prekey takes effect on every node at once. The
//!   one exception is [`Store::usage`], documented there.
//! - **Visibility before durability**: once a mutating method returns, later reads (from any
//!   caller) see its effects, but they may not survive a crash or power loss yet.
//! - **Durability on [`Store::sync`]**: when `sync` returns `Ok`, the effects of every mutating
//!   call that *returned before `sync` was called* survive process crash and power loss. The
//!   relay acknowledges a `Send` or `BlobPut` only after such a `sync`; many writers share one
//!   `sync` (group commit). Effects become durable in the order they were made visible: if a
//!   later write survives a crash, every earlier one does too. A backend whose every method
//!   commits durably before returning (PostgreSQL with `synchronous_commit` on) has nothing
//!   left to do in `sync`.
//! - **Time is an argument**: methods that depend on expiry take `now` (Unix seconds); an item
//!   with `expires_at <= now` is expired and never returned. A shared backend deletes an item
//!   ([`Store::sweep`]) only once it is expired by the caller's `now` *and* by the backend's
//!   own clock (PostgreSQL: the database server's), so a node whose clock runs fast cannot
//!   delete anything early; one whose clock runs slow sweeps late, and a skewed clock only
//!   changes what that node shows, never what is deleted.
//! - **No history**: acknowledged envelopes are deleted, not marked. The only trace of an
//!   envelope that expired undelivered is a tombstone that itself expires.
//! - Errors are [`StoreError`]; they never contain stored data, ids or credentials.
//! - **Blocking**: methods are synchronous and may block on locks, disk or network round
//!   trips. They must therefore never run on the async workers that drive QUIC: the relay calls
//!   them on tokio's blocking pool (`spawn_blocking`) or on threads of its own (the commit
//!   thread). The one method called on the async workers, [`Store::try_enqueue_for_sender`],
//!   must answer `None` rather than block (a networked backend always answers `None`).
//!
//! What only the embedded store needs (its log's compaction and checkpoint) is not part of
//! [`Store`]: it is [`LocalLog`], reached through [`Store::local_log`].

mod kv;
mod log;
mod memory;
pub mod migrate;
pub mod postgres;
mod queue;
mod senders;

pub use self::log::{
    DEFAULT_WAL_SIZE, KeyValue, Keyspace, LogBackend, LogFile, LogFs, MIN_WAL_SIZE, RepairPlan,
    StdFs, plan_repair, repair, sim,
};
pub use kv::{
    BLOB_STORE_CHUNK, Batch, BodyRef, Candidate, DirectoryEntry, Entries, IndexPosition, KvBackend,
    KvStore, LogOp, MAX_TOMBSTONES_PER_MAILBOX, PURGE_STEP, Recovered,
};
pub use memory::MemoryBackend;
pub use postgres::PgStore;

use thiserror::Error;

/// Length of ids (mailbox, envelope, blob).
pub type Id = [u8; handover_proto::limits::ID_LEN];

/// The embedded, durable store (envelope log segments plus sled; see docs/OPERATIONS.md).
pub type DiskStore = KvStore<LogBackend>;

/// The in-memory twin of [`DiskStore`] for tests and benches. `sync` is a no-op.
pub type MemoryStore = KvStore<MemoryBackend>;

/// A storage failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend cannot be reached or lost its connection (a shared database restarting or
    /// failing over). Nothing is known to have happened; the request may be retried.
    #[error("storage unavailable (retryable): {0}")]
    Unavailable(String),
    /// The database's schema is newer than this relay knows: a newer relay migrated it. This
    /// relay refuses to start rather than write to a schema it does not understand.
    #[error(
        "the database schema is at version {found}, newer than this relay's {supported}; \
         upgrade this relay (see docs/OPERATIONS.md, \"Relays on PostgreSQL\")"
    )]
    SchemaTooNew {
        /// The version found in the database.
        found: i64,
        /// The newest version this relay knows.
        supported: i64,
    },
    /// The backend failed (I/O error, corruption). The operation did not happen, or is not
    /// known to be durable.
    #[error("storage backend failure: {0}")]
    Backend(String),
    /// A stored record could not be decoded.
    #[error("stored record is corrupt")]
    Corrupt,
    /// The envelope log is damaged before records that were acknowledged: a record that does
    /// not read back (wrong CRC, length or segment number) with valid records after it, in
    /// its segment or a later one. The store refuses to open, on every start, until an
    /// operator repairs it (`handover-relay repair`, see docs/OPERATIONS.md).
    #[error(
        "the envelope log is damaged in segment {segment:016x} at byte {offset}, before \
         acknowledged records; refusing to start (see docs/OPERATIONS.md, \"A refused start\")"
    )]
    Damaged {
        /// The damaged segment.
        segment: u64,
        /// Where its valid records end.
        offset: u64,
    },
}

/// A mailbox as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    /// Send id (unlinked to the receive id).
    pub send_id: Id,
    /// Ed25519 public key of the owner.
    pub auth_key: [u8; 32],
    /// SHA-256 hashes of accepted send capabilities.
    pub capability_hashes: Vec<[u8; 32]>,
    /// Envelopes currently queued (including expired ones not yet swept).
    pub queued_count: u64,
    /// Ciphertext bytes currently queued.
    pub queued_bytes: u64,
}

/// An envelope to queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEnvelope {
    /// Sender-chosen random id.
    pub envelope_id: Id,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// Sealed ciphertext.
    pub ciphertext: Vec<u8>,
}

/// A queued envelope returned by [`Store::fetch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    /// Queue position, strictly increasing per mailbox.
    pub seq: u64,
    /// The envelope.
    pub envelope: NewEnvelope,
}

/// Per-mailbox quota applied by [`Store::enqueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxQuota {
    /// Most envelopes queued at once.
    pub max_envelopes: u64,
    /// Most ciphertext bytes queued at once.
    pub max_bytes: u64,
}

/// Outcome of [`Store::enqueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued at this sequence number.
    Queued(u64),
    /// An envelope with this id is already queued in the mailbox (a retried send); nothing
    /// changed.
    Duplicate,
    /// No such mailbox.
    NoMailbox,
    /// The mailbox's quota would be exceeded; nothing changed.
    QuotaExceeded,
}

/// Outcome of [`Store::enqueue_for_sender`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenderEnqueued {
    /// No mailbox has this send id.
    NoMailbox,
    /// The mailbox did not admit the sender; nothing changed.
    Refused,
    /// The mailbox with this receive id admitted the sender, and what its queue did.
    Mailbox(Id, Enqueued),
}

/// Delivery state of an envelope, from [`Store::envelope_states`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Not known: acknowledged, or never sent.
    Unknown,
    /// Queued and unexpired.
    Pending,
    /// Expired before it was acknowledged (a tombstone or an unswept expired entry).
    ExpiredUndelivered,
}

/// A prekey bundle handed out by [`Store::prekey_take`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakenPrekeys {
    /// The published bundle.
    pub bundle: Vec<u8>,
    /// One one-time X25519 prekey, removed from the store.
    pub one_time: Option<Vec<u8>>,
    /// One one-time KEM prekey, removed from the store.
    pub one_time_kem: Option<Vec<u8>>,
    /// One-time X25519 prekeys left.
    pub remaining: u64,
}

/// Outcome of [`Store::prekey_publish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// Stored.
    Stored,
    /// No such mailbox.
    NoMailbox,
    /// More one-time prekeys than the limit would be stored; nothing changed.
    QuotaExceeded,
}

/// Metadata of a stored blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobMeta {
    /// Declared size in bytes.
    pub size: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// Bytes written so far.
    pub written: u64,
    /// True once the upload finished; only complete blobs are served.
    pub complete: bool,
}

/// Outcome of [`Store::blob_append`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobAppended {
    /// Written.
    Appended,
    /// The blob is unknown or complete, or would grow past its declared size; nothing changed.
    Refused,
    /// The bytes written to all blobs would exceed the blob store's limit; nothing changed.
    QuotaExceeded,
}

/// Outcome of [`Store::blob_begin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobBegun {
    /// The upload may proceed.
    Started,
    /// The id is taken; nothing changed.
    IdTaken,
    /// The blob store's total size limit would be exceeded; nothing changed.
    QuotaExceeded,
}

/// Relay-wide totals, from [`Store::usage`], for the relay-wide caps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Mailboxes stored.
    pub mailboxes: u64,
    /// Envelopes queued in all mailboxes (including expired ones not yet swept).
    pub queued_envelopes: u64,
    /// Ciphertext bytes queued in all mailboxes.
    pub queued_bytes: u64,
}

/// What one [`Store::sweep`] call removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Expired envelopes deleted (each leaves a tombstone while its mailbox holds fewer than
    /// [`MAX_TOMBSTONES_PER_MAILBOX`]).
    pub envelopes: u64,
    /// Tombstones deleted: expired ones, and those of a deleted mailbox whose deletion was
    /// interrupted.
    pub tombstones: u64,
    /// Expired (or abandoned) blobs deleted.
    pub blobs: u64,
}

/// One mailbox with everything it holds, as `handover-relay migrate` moves it from the
/// embedded store into PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxExport {
    /// Receive id.
    pub recv_id: Id,
    /// Send id.
    pub send_id: Id,
    /// Owner's Ed25519 key.
    pub auth_key: [u8; 32],
    /// Hashes of accepted send capabilities.
    pub capability_hashes: Vec<[u8; 32]>,
    /// The next sequence number it hands out (above every one handed out).
    pub next_seq: u64,
    /// Queued envelopes (expired ones not yet swept included), oldest first.
    pub envelopes: Vec<Queued>,
    /// Tombstones: envelope id and until when (Unix seconds).
    pub tombstones: Vec<(Id, u64)>,
    /// Its prekey bundle.
    pub bundle: Option<Vec<u8>>,
    /// One-time X25519 prekeys, in the order they are handed out.
    pub one_time: Vec<Vec<u8>>,
    /// One-time KEM prekeys, in the order they are handed out.
    pub one_time_kem: Vec<Vec<u8>>,
}

impl MailboxExport {
    /// SHA-256 over every field, length-prefixed: equal on both sides of a migration.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut put = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        put(&self.recv_id);
        put(&self.send_id);
        put(&self.auth_key);
        for c in &self.capability_hashes {
            put(c);
        }
        put(&self.next_seq.to_be_bytes());
        for q in &self.envelopes {
            put(&q.seq.to_be_bytes());
            put(&q.envelope.envelope_id);
            put(&q.envelope.expires_at.to_be_bytes());
            put(&q.envelope.ciphertext);
        }
        for (id, until) in &self.tombstones {
            put(id);
            put(&until.to_be_bytes());
        }
        put(self.bundle.as_deref().unwrap_or_default());
        for k in self.one_time.iter().chain(&self.one_time_kem) {
            put(k);
        }
        put(&[u8::from(self.bundle.is_some())]);
        h.finalize().into()
    }
}

/// Wakes the subscribers of a mailbox on this node (see [`Store::watch_remote_enqueues`]).
pub type Wake = std::sync::Arc<dyn Fn(&Id) + Send + Sync>;

/// Maintenance of the embedded store's log, which a shared backend has no use for. Reached
/// through [`Store::local_log`].
pub trait LocalLog: Send + Sync {
    /// Copies live envelopes out of mostly dead log segments so that they can be reclaimed;
    /// the copies become durable with the next [`Store::sync`]. Returns how many were copied.
    fn compact(&self) -> Result<u64, StoreError>;
    /// Like [`Store::sync`], and also compacts whatever the backend keeps for recovery (for
    /// the sled keyspace: a checkpoint that empties its write-ahead log). Called on shutdown.
    fn checkpoint(&self) -> Result<(), StoreError>;
}

/// The storage contract of the relay. See the [module docs](self) for the guarantees every
/// implementation gives.
pub trait Store: Send + Sync + 'static {
    /// Creates a mailbox. Returns `false` (and changes nothing) if either id is taken.
    fn create_mailbox(&self, recv_id: &Id, mailbox: &Mailbox) -> Result<bool, StoreError>;
    /// Reads a mailbox by receive id.
    fn mailbox(&self, recv_id: &Id) -> Result<Option<Mailbox>, StoreError>;
    /// Resolves a send id to its mailbox.
    fn mailbox_by_send_id(&self, send_id: &Id) -> Result<Option<(Id, Mailbox)>, StoreError>;
    /// Replaces a mailbox's capability set. Returns `false` if there is no such mailbox.
    fn set_capabilities(&self, recv_id: &Id, hashes: &[[u8; 32]]) -> Result<bool, StoreError>;
    /// Deletes a mailbox with its queue, tombstones and prekeys. Returns `false` if absent.
    fn delete_mailbox(&self, recv_id: &Id) -> Result<bool, StoreError>;

    /// Appends an envelope to a mailbox queue, enforcing `quota` atomically.
    fn enqueue(
        &self,
        recv_id: &Id,
        envelope: &NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<Enqueued, StoreError>;
    /// A send in one step: resolves `send_id` to its mailbox, asks `admit` whether the sender
    /// may send there (given the mailbox's capability hashes), and if so appends the envelope
    /// as [`Store::enqueue`] does. Equivalent to [`Store::mailbox_by_send_id`] followed by
    /// `enqueue`, except that the mailbox cannot be deleted or its capabilities replaced in
    /// between. `admit` may run under the store's lock: it should only compare.
    fn enqueue_for_sender(
        &self,
        send_id: &Id,
        admit: &dyn Fn(&[[u8; 32]]) -> bool,
        envelope: &NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<SenderEnqueued, StoreError>;
    /// [`Store::enqueue_for_sender`] if it can be done without storage I/O that may block
    /// (for [`KvStore`]: the send id is in its sender cache); otherwise `None`, and nothing
    /// changed. The relay calls it on the async workers that drive QUIC and, on `None`, calls
    /// `enqueue_for_sender` on the blocking pool. The default always says `None`.
    fn try_enqueue_for_sender(
        &self,
        _send_id: &Id,
        _admit: &dyn Fn(&[[u8; 32]]) -> bool,
        _envelope: &NewEnvelope,
        _quota: MailboxQuota,
    ) -> Option<Result<SenderEnqueued, StoreError>> {
        None
    }
    /// Up to `limit` unexpired envelopes with `seq > after_seq`, oldest first, and whether more
    /// follow.
    fn fetch(
        &self,
        recv_id: &Id,
        after_seq: u64,
        limit: usize,
        now: u64,
    ) -> Result<(Vec<Queued>, bool), StoreError>;
    /// Deletes the named envelopes; unknown ids are ignored. Returns how many were deleted.
    fn ack(&self, recv_id: &Id, envelope_ids: &[Id]) -> Result<u64, StoreError>;
    /// Delivery state of each envelope id, in order.
    fn envelope_states(
        &self,
        recv_id: &Id,
        envelope_ids: &[Id],
        now: u64,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Replaces the mailbox's prekey bundle and adds one-time prekeys, refusing to hold more
    /// than `max_stored` of either kind.
    fn prekey_publish(
        &self,
        recv_id: &Id,
        bundle: &[u8],
        one_time: &[Vec<u8>],
        one_time_kem: &[Vec<u8>],
        max_stored: u64,
    ) -> Result<Published, StoreError>;
    /// The bundle plus at most one one-time prekey of each kind, which are removed atomically:
    /// no prekey is ever returned twice, also under concurrent calls.
    fn prekey_take(&self, recv_id: &Id) -> Result<Option<TakenPrekeys>, StoreError>;

    /// Stores a directory profile for an organisation if `issued_at` is newer than the stored
    /// one. Returns `false` if a newer or equal profile is already stored.
    fn directory_put(
        &self,
        org_root_key: &[u8; 32],
        issued_at: u64,
        profile: &[u8],
    ) -> Result<bool, StoreError>;
    /// All directory profiles (the directory of one network is small).
    fn directory_all(&self) -> Result<Vec<Vec<u8>>, StoreError>;

    /// Starts a blob upload of `size` bytes. Refused if the bytes written to all blobs plus
    /// `size` exceed `max_total`; nothing is reserved: [`Store::blob_append`] counts bytes as
    /// they arrive, so a slow or abandoned upload holds only what it wrote.
    fn blob_begin(
        &self,
        blob_id: &Id,
        size: u64,
        expires_at: u64,
        max_total: u64,
    ) -> Result<BlobBegun, StoreError>;
    /// Appends bytes to an incomplete blob, keeping the bytes written to all blobs within
    /// `max_total`.
    fn blob_append(
        &self,
        blob_id: &Id,
        data: &[u8],
        max_total: u64,
    ) -> Result<BlobAppended, StoreError>;
    /// Marks a blob complete. Returns `false` unless exactly the declared size was written.
    fn blob_complete(&self, blob_id: &Id) -> Result<bool, StoreError>;
    /// A blob's metadata.
    fn blob_meta(&self, blob_id: &Id) -> Result<Option<BlobMeta>, StoreError>;
    /// Up to `max` bytes of a blob from `offset`.
    fn blob_read(&self, blob_id: &Id, offset: u64, max: usize) -> Result<Vec<u8>, StoreError>;
    /// Deletes a blob (for example an abandoned upload).
    fn blob_delete(&self, blob_id: &Id) -> Result<(), StoreError>;
    /// Deletes every incomplete blob: called once when the relay starts, before it serves, since
    /// no upload survives a restart. Returns how many were deleted.
    fn discard_incomplete_blobs(&self) -> Result<u64, StoreError>;

    /// Deletes up to `budget` expired items through the expiry index. Expired envelopes leave a
    /// tombstone until `now + tombstone_secs`.
    fn sweep(&self, now: u64, budget: usize, tombstone_secs: u64) -> Result<Swept, StoreError>;
    /// Makes every mutation that returned before this call durable (see the module docs).
    fn sync(&self) -> Result<(), StoreError>;
    /// The embedded log's maintenance, for a store that has one; `None` (the default) for a
    /// shared backend.
    fn local_log(&self) -> Option<&dyn LocalLog> {
        None
    }
    /// Asks a store shared by several relay processes to call `wake` with a mailbox's receive
    /// id whenever an envelope was queued into it through *another* process, so that this
    /// node can tell its subscribers. Calls may be coalesced (several enqueues, one call) and
    /// come from a thread of the store's own. A store only one process uses never calls it
    /// (the default): the relay wakes its own subscribers.
    fn watch_remote_enqueues(&self, wake: Wake) {
        let _ = wake;
    }
    /// Relay-wide totals, for the relay-wide caps. Cheap (no lock, no I/O): the handler reads
    /// it on every send, so a cap may be overshot by the requests in flight at once. The
    /// embedded stores count every mutating call that returned; a shared backend counts its
    /// own node's calls exactly and learns of the other nodes' when it recounts (at least once
    /// per [`Store::sweep`]), so N nodes may overshoot a cap by what the others added since.
    fn usage(&self) -> Usage;
    /// Whether a failed write, sync or checkpoint has made the store refuse every write until
    /// the relay restarts (it never retries a failed sync; see docs/OPERATIONS.md,
    /// "Failures"). The relay then reports itself unhealthy (`/healthz` answers 503), so that
    /// its supervisor restarts it and it recovers from what is on disk.
    fn writes_blocked(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests;
