//! [`Store`] on PostgreSQL, shared by any number of relay processes ("nodes").
//!
//! # Driver
//!
//! `tokio-postgres` with a `deadpool-postgres` pool: the maintained asynchronous driver of the
//! Rust ecosystem, with `LISTEN`/`NOTIFY` (which the cross-node wake-ups need) and a small
//! pool without a second runtime abstraction. Both are built with their minimal features (no
//! TLS: the database is reached over a trusted network or a Unix socket; put a TLS-terminating
//! proxy in between otherwise).
//!
//! The [`Store`] trait is synchronous: the relay calls it on tokio's blocking pool, never on
//! the async workers that drive QUIC (see the [module docs](super)). [`PgStore`] runs the
//! driver on a small runtime of its own (two threads) and each method waits for its
//! transaction there, so the connections are driven whatever the relay's runtime is doing, and
//! the store works from plain threads too (tests, the commit thread).
//! [`Store::try_enqueue_for_sender`] always answers `None`.
//!
//! # Transactions and locks
//!
//! Every method is one transaction at PostgreSQL's default isolation (READ COMMITTED) and
//! commits before it returns. What must be serialisable is serialised by row locks:
//!
//! - every change to a mailbox's queue, prekeys or capabilities first locks the mailbox row
//!   (`SELECT ... FOR UPDATE`); so does an enqueue, which allocates the sequence number from
//!   the row (`next_seq`) and holds the lock until it commits (see `handover_enqueue` in
//!   [`schema`]): a mailbox's envelopes become visible in sequence order, so `Fetch`'s
//!   `after_seq` paging never skips one that committed late;
//! - a one-time prekey is taken under the mailbox row's lock, so two nodes never hand out the
//!   same one;
//! - blob writes lock the blob row, then the `blob_bytes` counter row; the sweep locks the
//!   mailbox rows it changes in key order, then blob rows, then the counter: no cycle, no
//!   deadlock.
//!
//! Nothing another node can change is cached: capability hashes are read in the send's own
//! transaction, so a revocation takes effect on every node at its commit. Relay-wide totals
//! ([`Store::usage`]) are the one exception, documented there.
//!
//! # Durability
//!
//! A method returns after its transaction committed, so [`Store::sync`] has nothing to do.
//! This holds only with `synchronous_commit` `on` (or `local`, `remote_write`,
//! `remote_apply`): with `off`, PostgreSQL acknowledges commits before they are on disk and an
//! acknowledged envelope could be lost in a crash of the database server. The store refuses
//! to open when its sessions have `synchronous_commit = off`.
//!
//! # Expiry and the one clock
//!
//! [`Store::sweep`] deletes an item only when it is expired by the caller's `now` *and* by the
//! database server's clock (`least(now, statement_timestamp())`): a node whose clock runs fast
//! cannot delete an envelope early, whatever its skew. Reads ([`Store::fetch`],
//! [`Store::envelope_states`]) use the caller's `now`, so a skewed node only shows an item as
//! expired a little early or late. One node sweeps at a time (a transaction-level advisory
//! lock; the others' sweep steps do nothing).
//!
//! # Wake-ups across nodes
//!
//! Each enqueue sends `NOTIFY handover_wake` with its node's id and the mailbox's receive id,
//! delivered at commit. Each node listens on a connection of its own and hands the receive ids
//! that other nodes queued into to [`Store::watch_remote_enqueues`]'s callback, coalesced
//! (every notification that arrived together, once per mailbox). A node that loses that
//! connection reconnects every second; its subscribers may miss a wake-up meanwhile, as they
//! would across a relay restart, and learn of the envelope at their next fetch.
//!
//! # Blobs
//!
//! Blobs are stored in 256 KiB `bytea` chunks ([`BLOB_STORE_CHUNK`]). An upload belongs to
//! the node it arrived at; [`Store::discard_incomplete_blobs`] deletes the incomplete uploads
//! of its own node and of nodes no longer alive (each node holds a session advisory lock on
//! its id while it runs), never those another live node is receiving.

mod schema;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

pub use schema::SCHEMA_VERSION;

use super::{
    BLOB_STORE_CHUNK, BlobAppended, BlobBegun, BlobMeta, Delivery, Enqueued, Id,
    MAX_TOMBSTONES_PER_MAILBOX, Mailbox, MailboxExport, MailboxQuota, NewEnvelope, Published,
    Queued, SenderEnqueued, Store, StoreError, Swept, TakenPrekeys, Usage, Wake,
};

/// Connections a node keeps to the database by default (besides its listening connection).
/// Every request in flight on the blocking pool holds one for its transaction.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Advisory lock (transaction level) held while migrating.
const ADVISORY_MIGRATE: i64 = 0x6861_6e64_6f76_0001;
/// Advisory lock (transaction level) held by the node sweeping.
const ADVISORY_SWEEP: i64 = 0x6861_6e64_6f76_0002;
/// First key of the session advisory lock each live node holds on its id (the two-key form,
/// so it cannot meet the one-key locks above).
const ADVISORY_LIVE_CLASS: i32 = 0x686f;

/// The notification channel of cross-node wake-ups.
const WAKE_CHANNEL: &str = "handover_wake";
/// How long to wait for a connection from the pool, or to open one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts to reconnect the listening connection.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

const OT_X25519: i16 = 1;
const OT_KEM: i16 = 2;

/// A database error as a [`StoreError`]: connection-level failures (the server restarting,
/// failing over, refusing connections) are [`StoreError::Unavailable`] (retryable); others
/// name only their SQLSTATE, never a value (PostgreSQL's messages may quote keys).
fn pg_err(err: tokio_postgres::Error) -> StoreError {
    match err.code() {
        Some(code) => {
            let retryable = code.code().starts_with("08")
                || code.code().starts_with("57P")
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::TOO_MANY_CONNECTIONS;
            let message = format!("database error SQLSTATE {}", code.code());
            if retryable {
                StoreError::Unavailable(message)
            } else {
                StoreError::Backend(message)
            }
        }
        // The connection failed or closed (I/O, server gone): retryable. Anything else is a
        // mismatch between this relay and the database (a type, a protocol error).
        None if err.is_closed()
            || std::error::Error::source(&err).is_some_and(|s| s.is::<std::io::Error>()) =>
        {
            StoreError::Unavailable(format!("database connection: {err}"))
        }
        None => StoreError::Backend(format!("database client: {err}")),
    }
}

fn pool_err(err: deadpool_postgres::PoolError) -> StoreError {
    match err {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => StoreError::Unavailable(format!("database pool: {other}")),
    }
}

/// A `u64` as PostgreSQL's `bigint` (values past `i64::MAX`, never used, saturate).
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored `bigint` as `u64` (negative values, never stored, read as 0).
fn unbig(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn id_of(bytes: &[u8]) -> Result<Id, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt)
}

fn hash_of(bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt)
}

/// A connection string with its password replaced by `***`, for logs and errors: the URL
/// form (`postgres://user:password@host/db`) and the key-value form (`password=...`).
pub fn redact(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &rest[at..]
                );
            }
        }
        // A password may also be a query parameter.
        return redact_pairs(url, '&');
    }
    redact_pairs(url, ' ')
}

fn redact_pairs(text: &str, separator: char) -> String {
    text.split(separator)
        .map(|part| {
            let lower = part.to_ascii_lowercase();
            match lower.find("password=") {
                Some(at) => format!("{}password=***", &part[..at]),
                None => part.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(&separator.to_string())
}

/// Relay-wide totals: the last recount plus this node's changes since
/// (see [`Store::usage`]).
#[derive(Default)]
struct Totals {
    mailboxes: AtomicU64,
    envelopes: AtomicU64,
    bytes: AtomicU64,
    /// Held (shared) by a change from before its commit until its delta is counted; held
    /// exclusively by a recount, so that no change is counted twice or lost by it.
    gate: RwLock<()>,
}

fn add(counter: &AtomicU64, delta: i64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(if delta >= 0 {
            v.saturating_add(delta.unsigned_abs())
        } else {
            v.saturating_sub(delta.unsigned_abs())
        })
    });
}

/// The store. See the module docs.
pub struct PgStore {
    /// The driver's runtime; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    /// Its handle.
    handle: tokio::runtime::Handle,
    pool: Pool,
    /// This node's id: in its wake-up notifications (to skip its own) and as the owner of the
    /// blob uploads it receives.
    node: i32,
    totals: Arc<Totals>,
    wake: Arc<Mutex<Option<Wake>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Possibly dropped on an async worker, where waiting for the runtime's threads is not
        // allowed; the listening connection and the pool's connections close with it.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl PgStore {
    /// Connects to the database at `url` (a libpq-style URL or key-value string), applies the
    /// missing schema migrations, starts listening for other nodes' wake-ups and counts the
    /// relay-wide totals. At most `pool_size` connections are used for requests, plus one
    /// for listening. Refuses a database whose schema is newer than this relay's
    /// ([`StoreError::SchemaTooNew`]) and sessions with `synchronous_commit = off`.
    pub fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let config: tokio_postgres::Config = url.parse().map_err(|_| {
            StoreError::Backend(format!(
                "not a PostgreSQL connection string: {}",
                redact(url)
            ))
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("handover-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("start the database runtime: {e}")))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Backend(format!("database pool: {e}")))?;
        let node = loop {
            let n = rand::random::<i32>() & i32::MAX;
            if n != 0 {
                break n;
            }
        };
        let store = Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            pool,
            node,
            totals: Arc::new(Totals::default()),
            wake: Arc::new(Mutex::new(None)),
        };
        store.block(async {
            let mut client = store.pool.get().await.map_err(pool_err)?;
            let commit: String = client
                .query_one("SHOW synchronous_commit", &[])
                .await
                .map_err(pg_err)?
                .get(0);
            if commit == "off" {
                return Err(StoreError::Backend(
                    "the database has synchronous_commit = off: acknowledged envelopes could be \
                     lost in a crash of the database server (see docs/OPERATIONS.md)"
                        .into(),
                ));
            }
            let before = schema::migrate(&mut client).await?;
            if before < SCHEMA_VERSION {
                tracing::info!(
                    from = before,
                    to = SCHEMA_VERSION,
                    "database schema migrated"
                );
            }
            Ok(())
        })?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        store
            .handle()
            .spawn(listen(config, node, store.wake.clone(), Some(ready_tx)));
        // The node's liveness lock is taken before it serves (its uploads are then never
        // mistaken for a dead node's).
        match ready_rx.recv_timeout(CONNECT_TIMEOUT * 2) {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err),
            Err(_) => {
                return Err(StoreError::Unavailable(
                    "the listening connection did not open in time".into(),
                ));
            }
        }
        store.recount()?;
        Ok(store)
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `f` on the driver's runtime and waits for it (the calling thread blocks).
    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.handle().block_on(f)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// This node's wake-up payload for a mailbox: `NODE:RECV` in hex.
    fn wake_payload(&self, recv_id: &Id) -> String {
        format!("{:08x}:{}", self.node, hex::encode(recv_id))
    }

    /// Recounts the relay-wide totals from the database.
    fn recount(&self) -> Result<(), StoreError> {
        let _gate = self.totals.gate.write().unwrap_or_else(|e| e.into_inner());
        let row = self.block(async {
            let client = self.client().await?;
            client
                .query_one(
                    "SELECT count(*), coalesce(sum(queued_count), 0)::bigint,
                            coalesce(sum(queued_bytes), 0)::bigint
                     FROM handover_mailboxes",
                    &[],
                )
                .await
                .map_err(pg_err)
        })?;
        let (m, e, b): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        self.totals.mailboxes.store(unbig(m), Ordering::Relaxed);
        self.totals.envelopes.store(unbig(e), Ordering::Relaxed);
        self.totals.bytes.store(unbig(b), Ordering::Relaxed);
        Ok(())
    }

    /// Runs a change that alters the totals by what it returns, counted once it committed.
    fn counted<T>(
        &self,
        f: impl std::future::Future<Output = Result<(T, [i64; 3]), StoreError>>,
    ) -> Result<T, StoreError> {
        let _gate = self.totals.gate.read().unwrap_or_else(|e| e.into_inner());
        let (out, [m, e, b]) = self.block(f)?;
        add(&self.totals.mailboxes, m);
        add(&self.totals.envelopes, e);
        add(&self.totals.bytes, b);
        Ok(out)
    }

    async fn enqueue_in(
        &self,
        client: &impl GenericClient,
        recv_id: &Id,
        envelope: &NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<Enqueued, StoreError> {
        let stmt = client
            .prepare_cached("SELECT handover_enqueue($1, $2, $3, $4, $5, $6, $7)")
            .await
            .map_err(pg_err)?;
        let seq: i64 = client
            .query_one(
                &stmt,
                &[
                    &recv_id.as_slice(),
                    &envelope.envelope_id.as_slice(),
                    &big(envelope.expires_at),
                    &envelope.ciphertext,
                    &big(quota.max_envelopes),
                    &big(quota.max_bytes),
                    &self.wake_payload(recv_id),
                ],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        Ok(match seq {
            -1 => Enqueued::NoMailbox,
            -2 => Enqueued::Duplicate,
            -3 => Enqueued::QuotaExceeded,
            s if s > 0 => Enqueued::Queued(unbig(s)),
            _ => return Err(StoreError::Corrupt),
        })
    }
}

/// The listening connection: `LISTEN handover_wake` plus the node's liveness lock; hands the
/// receive ids other nodes queued into to the wake callback, coalesced. Reconnects after
/// [`LISTEN_RETRY`] when the connection is lost, until the runtime shuts down.
async fn listen(
    config: tokio_postgres::Config,
    node: i32,
    wake: Arc<Mutex<Option<Wake>>>,
    mut ready: Option<std::sync::mpsc::Sender<Result<(), StoreError>>>,
) {
    let own = format!("{node:08x}:");
    loop {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls)).await;
        let (client, mut connection) = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(err)) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(pg_err(err)));
                    return;
                }
                tokio::time::sleep(LISTEN_RETRY).await;
                continue;
            }
            Err(_) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(StoreError::Unavailable(
                        "the listening connection did not open in time".into(),
                    )));
                    return;
                }
                tokio::time::sleep(LISTEN_RETRY).await;
                continue;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                }
            }
        });
        let setup = async {
            client
                .batch_execute(&format!("LISTEN {WAKE_CHANNEL}"))
                .await?;
            client
                .execute(
                    "SELECT pg_advisory_lock($1, $2)",
                    &[&ADVISORY_LIVE_CLASS, &node],
                )
                .await?;
            Ok::<_, tokio_postgres::Error>(())
        };
        match setup.await {
            Ok(()) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Ok(()));
                }
            }
            Err(err) => {
                driver.abort();
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(pg_err(err)));
                    return;
                }
                tokio::time::sleep(LISTEN_RETRY).await;
                continue;
            }
        }
        // Coalesced: everything that arrived together, one call per mailbox.
        while let Some(first) = rx.recv().await {
            let mut mailboxes = HashSet::new();
            let mut next = Some(first);
            while let Some(payload) = next {
                if !payload.starts_with(&own)
                    && let Some((_, recv)) = payload.split_once(':')
                    && let Ok(bytes) = hex::decode(recv)
                    && let Ok(recv_id) = Id::try_from(bytes.as_slice())
                {
                    mailboxes.insert(recv_id);
                }
                next = rx.try_recv().ok();
            }
            let callback = wake.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(callback) = callback {
                for recv_id in &mailboxes {
                    callback(recv_id);
                }
            }
        }
        drop(client);
        tracing::warn!("lost the database's listening connection; reconnecting");
        tokio::time::sleep(LISTEN_RETRY).await;
    }
}

impl Store for PgStore {
    fn create_mailbox(&self, recv_id: &Id, mailbox: &Mailbox) -> Result<bool, StoreError> {
        self.counted(async {
            let client = self.client().await?;
            let hashes: Vec<&[u8]> = mailbox
                .capability_hashes
                .iter()
                .map(|h| h.as_slice())
                .collect();
            let stmt = client
                .prepare_cached(
                    "INSERT INTO handover_mailboxes (recv_id, send_id, auth_key, capability_hashes)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .await
                .map_err(pg_err)?;
            let n = client
                .execute(
                    &stmt,
                    &[
                        &recv_id.as_slice(),
                        &mailbox.send_id.as_slice(),
                        &mailbox.auth_key.as_slice(),
                        &hashes,
                    ],
                )
                .await
                .map_err(pg_err)?;
            Ok((n == 1, [i64::from(n == 1), 0, 0]))
        })
    }

    fn mailbox(&self, recv_id: &Id) -> Result<Option<Mailbox>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT send_id, auth_key, capability_hashes, queued_count, queued_bytes
                     FROM handover_mailboxes WHERE recv_id = $1",
                )
                .await
                .map_err(pg_err)?;
            client
                .query_opt(&stmt, &[&recv_id.as_slice()])
                .await
                .map_err(pg_err)?
                .map(|row| mailbox_of(&row, 0))
                .transpose()
        })
    }

    fn mailbox_by_send_id(&self, send_id: &Id) -> Result<Option<(Id, Mailbox)>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT send_id, auth_key, capability_hashes, queued_count, queued_bytes,
                            recv_id
                     FROM handover_mailboxes WHERE send_id = $1",
                )
                .await
                .map_err(pg_err)?;
            let Some(row) = client
                .query_opt(&stmt, &[&send_id.as_slice()])
                .await
                .map_err(pg_err)?
            else {
                return Ok(None);
            };
            let recv: &[u8] = row.get(5);
            Ok(Some((id_of(recv)?, mailbox_of(&row, 0)?)))
        })
    }

    fn set_capabilities(&self, recv_id: &Id, hashes: &[[u8; 32]]) -> Result<bool, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let hashes: Vec<&[u8]> = hashes.iter().map(|h| h.as_slice()).collect();
            let stmt = client
                .prepare_cached(
                    "UPDATE handover_mailboxes SET capability_hashes = $2 WHERE recv_id = $1",
                )
                .await
                .map_err(pg_err)?;
            let n = client
                .execute(&stmt, &[&recv_id.as_slice(), &hashes])
                .await
                .map_err(pg_err)?;
            Ok(n == 1)
        })
    }

    fn delete_mailbox(&self, recv_id: &Id) -> Result<bool, StoreError> {
        // Its queue, tombstones and prekeys go with it (ON DELETE CASCADE), in one transaction.
        self.counted(async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "DELETE FROM handover_mailboxes WHERE recv_id = $1
                     RETURNING queued_count, queued_bytes",
                )
                .await
                .map_err(pg_err)?;
            Ok(
                match client
                    .query_opt(&stmt, &[&recv_id.as_slice()])
                    .await
                    .map_err(pg_err)?
                {
                    Some(row) => {
                        let (count, bytes): (i64, i64) = (row.get(0), row.get(1));
                        (true, [-1, -count, -bytes])
                    }
                    None => (false, [0, 0, 0]),
                },
            )
        })
    }

    fn enqueue(
        &self,
        recv_id: &Id,
        envelope: &NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<Enqueued, StoreError> {
        self.counted(async {
            let client = self.client().await?;
            let outcome = self.enqueue_in(&client, recv_id, envelope, quota).await?;
            let delta = match outcome {
                Enqueued::Queued(_) => [0, 1, big(envelope.ciphertext.len() as u64)],
                _ => [0, 0, 0],
            };
            Ok((outcome, delta))
        })
    }

    fn enqueue_for_sender(
        &self,
        send_id: &Id,
        admit: &dyn Fn(&[[u8; 32]]) -> bool,
        envelope: &NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<SenderEnqueued, StoreError> {
        self.counted(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            // The mailbox row stays locked until the commit: it cannot be deleted or its
            // capabilities replaced between the admission and the enqueue.
            let stmt = tx
                .prepare_cached(
                    "SELECT recv_id, capability_hashes FROM handover_mailboxes
                     WHERE send_id = $1 FOR UPDATE",
                )
                .await
                .map_err(pg_err)?;
            let Some(row) = tx
                .query_opt(&stmt, &[&send_id.as_slice()])
                .await
                .map_err(pg_err)?
            else {
                return Ok((SenderEnqueued::NoMailbox, [0, 0, 0]));
            };
            let recv_id = id_of(row.get::<_, &[u8]>(0))?;
            let hashes = hashes_of(&row, 1)?;
            if !admit(&hashes) {
                return Ok((SenderEnqueued::Refused, [0, 0, 0]));
            }
            let outcome = self.enqueue_in(&tx, &recv_id, envelope, quota).await?;
            tx.commit().await.map_err(pg_err)?;
            let delta = match outcome {
                Enqueued::Queued(_) => [0, 1, big(envelope.ciphertext.len() as u64)],
                _ => [0, 0, 0],
            };
            Ok((SenderEnqueued::Mailbox(recv_id, outcome), delta))
        })
    }

    fn fetch(
        &self,
        recv_id: &Id,
        after_seq: u64,
        limit: usize,
        now: u64,
    ) -> Result<(Vec<Queued>, bool), StoreError> {
        self.block(async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT seq, envelope_id, expires_at, body FROM handover_envelopes
                     WHERE recv_id = $1 AND seq > $2 AND expires_at > $3
                     ORDER BY seq LIMIT $4",
                )
                .await
                .map_err(pg_err)?;
            let rows = client
                .query(
                    &stmt,
                    &[
                        &recv_id.as_slice(),
                        &big(after_seq),
                        &big(now),
                        &big((limit as u64).saturating_add(1)),
                    ],
                )
                .await
                .map_err(pg_err)?;
            let more = rows.len() > limit;
            let mut out = Vec::with_capacity(rows.len().min(limit));
            for row in rows.iter().take(limit) {
                out.push(Queued {
                    seq: unbig(row.get(0)),
                    envelope: NewEnvelope {
                        envelope_id: id_of(row.get::<_, &[u8]>(1))?,
                        expires_at: unbig(row.get(2)),
                        ciphertext: row.get(3),
                    },
                });
            }
            Ok((out, more))
        })
    }

    fn ack(&self, recv_id: &Id, envelope_ids: &[Id]) -> Result<u64, StoreError> {
        if envelope_ids.is_empty() {
            return Ok(0);
        }
        self.counted(async {
            let client = self.client().await?;
            let ids: Vec<&[u8]> = envelope_ids.iter().map(|i| i.as_slice()).collect();
            let stmt = client
                .prepare_cached("SELECT n, b FROM handover_ack($1, $2)")
                .await
                .map_err(pg_err)?;
            let row = client
                .query_one(&stmt, &[&recv_id.as_slice(), &ids])
                .await
                .map_err(pg_err)?;
            let (n, b): (i64, i64) = (row.get(0), row.get(1));
            Ok((unbig(n), [0, -n, -b]))
        })
    }

    fn envelope_states(
        &self,
        recv_id: &Id,
        envelope_ids: &[Id],
        now: u64,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let ids: Vec<&[u8]> = envelope_ids.iter().map(|i| i.as_slice()).collect();
            let queued = client
                .prepare_cached(
                    "SELECT envelope_id, expires_at FROM handover_envelopes
                     WHERE recv_id = $1 AND envelope_id = ANY ($2)",
                )
                .await
                .map_err(pg_err)?;
            let tombs = client
                .prepare_cached(
                    "SELECT envelope_id, until FROM handover_tombstones
                     WHERE recv_id = $1 AND envelope_id = ANY ($2)",
                )
                .await
                .map_err(pg_err)?;
            let mut expiry: BTreeMap<Id, u64> = BTreeMap::new();
            for row in client
                .query(&queued, &[&recv_id.as_slice(), &ids])
                .await
                .map_err(pg_err)?
            {
                expiry.insert(id_of(row.get::<_, &[u8]>(0))?, unbig(row.get(1)));
            }
            let mut until: BTreeMap<Id, u64> = BTreeMap::new();
            for row in client
                .query(&tombs, &[&recv_id.as_slice(), &ids])
                .await
                .map_err(pg_err)?
            {
                until.insert(id_of(row.get::<_, &[u8]>(0))?, unbig(row.get(1)));
            }
            Ok(envelope_ids
                .iter()
                .map(|id| match expiry.get(id) {
                    Some(&at) if at <= now => Delivery::ExpiredUndelivered,
                    Some(_) => Delivery::Pending,
                    None => match until.get(id) {
                        Some(&u) if u > now => Delivery::ExpiredUndelivered,
                        _ => Delivery::Unknown,
                    },
                })
                .collect())
        })
    }

    fn prekey_publish(
        &self,
        recv_id: &Id,
        bundle: &[u8],
        one_time: &[Vec<u8>],
        one_time_kem: &[Vec<u8>],
        max_stored: u64,
    ) -> Result<Published, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let lock = tx
                .prepare_cached(
                    "SELECT next_prekey, one_time_count, one_time_kem_count
                     FROM handover_mailboxes WHERE recv_id = $1 FOR UPDATE",
                )
                .await
                .map_err(pg_err)?;
            let Some(row) = tx
                .query_opt(&lock, &[&recv_id.as_slice()])
                .await
                .map_err(pg_err)?
            else {
                return Ok(Published::NoMailbox);
            };
            let (mut next, count, kem_count): (i64, i64, i64) =
                (row.get(0), row.get(1), row.get(2));
            if unbig(count).saturating_add(one_time.len() as u64) > max_stored
                || unbig(kem_count).saturating_add(one_time_kem.len() as u64) > max_stored
            {
                return Ok(Published::QuotaExceeded);
            }
            let put_bundle = tx
                .prepare_cached(
                    "INSERT INTO handover_prekey_bundles (recv_id, bundle) VALUES ($1, $2)
                     ON CONFLICT (recv_id) DO UPDATE SET bundle = excluded.bundle",
                )
                .await
                .map_err(pg_err)?;
            tx.execute(&put_bundle, &[&recv_id.as_slice(), &bundle])
                .await
                .map_err(pg_err)?;
            let put_key = tx
                .prepare_cached(
                    "INSERT INTO handover_one_time_prekeys (recv_id, kind, n, prekey)
                     VALUES ($1, $2, $3, $4)",
                )
                .await
                .map_err(pg_err)?;
            for (kind, keys) in [(OT_X25519, one_time), (OT_KEM, one_time_kem)] {
                for key in keys {
                    tx.execute(&put_key, &[&recv_id.as_slice(), &kind, &next, key])
                        .await
                        .map_err(pg_err)?;
                    next += 1;
                }
            }
            let update = tx
                .prepare_cached(
                    "UPDATE handover_mailboxes SET next_prekey = $2,
                        one_time_count = one_time_count + $3,
                        one_time_kem_count = one_time_kem_count + $4
                     WHERE recv_id = $1",
                )
                .await
                .map_err(pg_err)?;
            tx.execute(
                &update,
                &[
                    &recv_id.as_slice(),
                    &next,
                    &big(one_time.len() as u64),
                    &big(one_time_kem.len() as u64),
                ],
            )
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            Ok(Published::Stored)
        })
    }

    fn prekey_take(&self, recv_id: &Id) -> Result<Option<TakenPrekeys>, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            // Under the mailbox row's lock: no one-time prekey is handed out twice, whichever
            // nodes ask at once.
            let lock = tx
                .prepare_cached(
                    "SELECT one_time_count FROM handover_mailboxes WHERE recv_id = $1 FOR UPDATE",
                )
                .await
                .map_err(pg_err)?;
            let Some(row) = tx
                .query_opt(&lock, &[&recv_id.as_slice()])
                .await
                .map_err(pg_err)?
            else {
                return Ok(None);
            };
            let mut remaining = unbig(row.get(0));
            let get_bundle = tx
                .prepare_cached("SELECT bundle FROM handover_prekey_bundles WHERE recv_id = $1")
                .await
                .map_err(pg_err)?;
            let Some(bundle) = tx
                .query_opt(&get_bundle, &[&recv_id.as_slice()])
                .await
                .map_err(pg_err)?
            else {
                return Ok(None);
            };
            let bundle: Vec<u8> = bundle.get(0);
            let take = tx
                .prepare_cached(
                    "DELETE FROM handover_one_time_prekeys WHERE (recv_id, kind, n) = (
                        SELECT recv_id, kind, n FROM handover_one_time_prekeys
                        WHERE recv_id = $1 AND kind = $2 ORDER BY n LIMIT 1)
                     RETURNING prekey",
                )
                .await
                .map_err(pg_err)?;
            let mut taken = [None, None];
            for (slot, kind) in taken.iter_mut().zip([OT_X25519, OT_KEM]) {
                *slot = tx
                    .query_opt(&take, &[&recv_id.as_slice(), &kind])
                    .await
                    .map_err(pg_err)?
                    .map(|row| row.get::<_, Vec<u8>>(0));
            }
            let [one_time, one_time_kem] = taken;
            if one_time.is_some() || one_time_kem.is_some() {
                let update = tx
                    .prepare_cached(
                        "UPDATE handover_mailboxes
                         SET one_time_count = greatest(one_time_count - $2, 0),
                             one_time_kem_count = greatest(one_time_kem_count - $3, 0)
                         WHERE recv_id = $1",
                    )
                    .await
                    .map_err(pg_err)?;
                let (dx, dk) = (
                    i64::from(one_time.is_some()),
                    i64::from(one_time_kem.is_some()),
                );
                tx.execute(&update, &[&recv_id.as_slice(), &dx, &dk])
                    .await
                    .map_err(pg_err)?;
                if one_time.is_some() {
                    remaining = remaining.saturating_sub(1);
                }
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(Some(TakenPrekeys {
                bundle,
                one_time,
                one_time_kem,
                remaining,
            }))
        })
    }

    fn directory_put(
        &self,
        org_root_key: &[u8; 32],
        issued_at: u64,
        profile: &[u8],
    ) -> Result<bool, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "INSERT INTO handover_directory (org_root_key, issued_at, profile)
                     VALUES ($1, $2, $3)
                     ON CONFLICT (org_root_key) DO UPDATE
                        SET issued_at = excluded.issued_at, profile = excluded.profile
                        WHERE handover_directory.issued_at < excluded.issued_at",
                )
                .await
                .map_err(pg_err)?;
            let n = client
                .execute(
                    &stmt,
                    &[&org_root_key.as_slice(), &big(issued_at), &profile],
                )
                .await
                .map_err(pg_err)?;
            Ok(n == 1)
        })
    }

    fn directory_all(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached("SELECT profile FROM handover_directory ORDER BY org_root_key")
                .await
                .map_err(pg_err)?;
            Ok(client
                .query(&stmt, &[])
                .await
                .map_err(pg_err)?
                .iter()
                .map(|row| row.get(0))
                .collect())
        })
    }

    fn blob_begin(
        &self,
        blob_id: &Id,
        size: u64,
        expires_at: u64,
        max_total: u64,
    ) -> Result<BlobBegun, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let total = blob_total(&tx, false).await?;
            if total.saturating_add(size) > max_total {
                // A taken id answers IdTaken whatever the quota, as in the embedded store.
                let taken = tx
                    .query_opt(
                        "SELECT 1 FROM handover_blobs WHERE blob_id = $1",
                        &[&blob_id.as_slice()],
                    )
                    .await
                    .map_err(pg_err)?;
                return Ok(if taken.is_some() {
                    BlobBegun::IdTaken
                } else {
                    BlobBegun::QuotaExceeded
                });
            }
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO handover_blobs (blob_id, size, expires_at, owner)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .await
                .map_err(pg_err)?;
            let n = tx
                .execute(
                    &stmt,
                    &[
                        &blob_id.as_slice(),
                        &big(size),
                        &big(expires_at),
                        &i64::from(self.node),
                    ],
                )
                .await
                .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            Ok(if n == 1 {
                BlobBegun::Started
            } else {
                BlobBegun::IdTaken
            })
        })
    }

    fn blob_append(
        &self,
        blob_id: &Id,
        data: &[u8],
        max_total: u64,
    ) -> Result<BlobAppended, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let Some(row) = tx
                .query_opt(
                    "SELECT size, written, complete FROM handover_blobs WHERE blob_id = $1
                     FOR UPDATE",
                    &[&blob_id.as_slice()],
                )
                .await
                .map_err(pg_err)?
            else {
                return Ok(BlobAppended::Refused);
            };
            let (size, mut written, complete): (i64, i64, bool) =
                (row.get(0), row.get(1), row.get(2));
            if complete || unbig(written).saturating_add(data.len() as u64) > unbig(size) {
                return Ok(BlobAppended::Refused);
            }
            let total = blob_total(&tx, true).await?;
            let total = total.saturating_add(data.len() as u64);
            if total > max_total {
                return Ok(BlobAppended::QuotaExceeded);
            }
            let chunk_len = BLOB_STORE_CHUNK as i64;
            let put = tx
                .prepare_cached(
                    "INSERT INTO handover_blob_chunks (blob_id, idx, data) VALUES ($1, $2, $3)
                     ON CONFLICT (blob_id, idx)
                        DO UPDATE SET data = handover_blob_chunks.data || excluded.data",
                )
                .await
                .map_err(pg_err)?;
            let mut rest = data;
            while !rest.is_empty() {
                let index = written / chunk_len;
                let within = usize::try_from(written % chunk_len).unwrap_or(0);
                let take = rest.len().min(BLOB_STORE_CHUNK - within);
                tx.execute(&put, &[&blob_id.as_slice(), &index, &&rest[..take]])
                    .await
                    .map_err(pg_err)?;
                written += big(take as u64);
                rest = &rest[take..];
            }
            tx.execute(
                "UPDATE handover_blobs SET written = $2 WHERE blob_id = $1",
                &[&blob_id.as_slice(), &written],
            )
            .await
            .map_err(pg_err)?;
            tx.execute(
                "UPDATE handover_counters SET value = $1 WHERE name = 'blob_bytes'",
                &[&big(total)],
            )
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            Ok(BlobAppended::Appended)
        })
    }

    fn blob_complete(&self, blob_id: &Id) -> Result<bool, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let n = client
                .execute(
                    "UPDATE handover_blobs SET complete = true
                     WHERE blob_id = $1 AND written = size",
                    &[&blob_id.as_slice()],
                )
                .await
                .map_err(pg_err)?;
            Ok(n == 1)
        })
    }

    fn blob_meta(&self, blob_id: &Id) -> Result<Option<BlobMeta>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT size, expires_at, written, complete FROM handover_blobs
                     WHERE blob_id = $1",
                )
                .await
                .map_err(pg_err)?;
            Ok(client
                .query_opt(&stmt, &[&blob_id.as_slice()])
                .await
                .map_err(pg_err)?
                .map(|row| BlobMeta {
                    size: unbig(row.get(0)),
                    expires_at: unbig(row.get(1)),
                    written: unbig(row.get(2)),
                    complete: row.get(3),
                }))
        })
    }

    fn blob_read(&self, blob_id: &Id, offset: u64, max: usize) -> Result<Vec<u8>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let chunk_len = BLOB_STORE_CHUNK as u64;
            let first = big(offset / chunk_len);
            let last = big(offset.saturating_add(max as u64) / chunk_len);
            let stmt = client
                .prepare_cached(
                    "SELECT idx, data FROM handover_blob_chunks
                     WHERE blob_id = $1 AND idx BETWEEN $2 AND $3 ORDER BY idx",
                )
                .await
                .map_err(pg_err)?;
            let rows = client
                .query(&stmt, &[&blob_id.as_slice(), &first, &last])
                .await
                .map_err(pg_err)?;
            let mut out = Vec::new();
            let mut pos = offset;
            for row in rows {
                if out.len() >= max {
                    break;
                }
                let index: i64 = row.get(0);
                let data: &[u8] = row.get(1);
                if unbig(index) != pos / chunk_len {
                    // A gap: the blob is shorter than asked (or was deleted meanwhile).
                    break;
                }
                let within = usize::try_from(pos % chunk_len).unwrap_or(usize::MAX);
                let avail = data.get(within..).ok_or(StoreError::Corrupt)?;
                let take = avail.len().min(max - out.len());
                if take == 0 {
                    break;
                }
                out.extend_from_slice(&avail[..take]);
                pos += take as u64;
            }
            Ok(out)
        })
    }

    fn blob_delete(&self, blob_id: &Id) -> Result<(), StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let deleted = tx
                .query_opt(
                    "DELETE FROM handover_blobs WHERE blob_id = $1 RETURNING written",
                    &[&blob_id.as_slice()],
                )
                .await
                .map_err(pg_err)?;
            if let Some(row) = deleted {
                let written: i64 = row.get(0);
                release_blob_bytes(&tx, written).await?;
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(())
        })
    }

    fn discard_incomplete_blobs(&self) -> Result<u64, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            // This node's own uploads, and those of nodes no longer holding their liveness
            // lock; never an upload another live node is receiving.
            let rows = tx
                .query(
                    "DELETE FROM handover_blobs b WHERE NOT b.complete AND (
                        b.owner = $1 OR NOT EXISTS (
                            SELECT 1 FROM pg_locks l
                            WHERE l.locktype = 'advisory' AND l.granted
                              AND l.classid::bigint = $2 AND l.objid::bigint = b.owner
                              AND l.objsubid = 2))
                     RETURNING written",
                    &[&i64::from(self.node), &i64::from(ADVISORY_LIVE_CLASS)],
                )
                .await
                .map_err(pg_err)?;
            let written: i64 = rows.iter().map(|r| r.get::<_, i64>(0)).sum();
            release_blob_bytes(&tx, written).await?;
            tx.commit().await.map_err(pg_err)?;
            Ok(rows.len() as u64)
        })
    }

    fn sweep(&self, now: u64, budget: usize, tombstone_secs: u64) -> Result<Swept, StoreError> {
        let swept = {
            let _gate = self.totals.gate.write().unwrap_or_else(|e| e.into_inner());
            self.block(self.sweep_step(now, budget, tombstone_secs))?
        };
        // Learn of the other nodes' changes to the totals.
        self.recount()?;
        Ok(swept)
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Every method committed (synchronous_commit checked at open) before it returned.
        Ok(())
    }

    fn watch_remote_enqueues(&self, wake: Wake) {
        *self.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake);
    }

    fn usage(&self) -> Usage {
        Usage {
            mailboxes: self.totals.mailboxes.load(Ordering::Relaxed),
            queued_envelopes: self.totals.envelopes.load(Ordering::Relaxed),
            queued_bytes: self.totals.bytes.load(Ordering::Relaxed),
        }
    }
}

impl PgStore {
    /// Every byte string the relay stored (bodies, prekeys, profiles, blob chunks, mailbox
    /// keys), each with its table's name: for a scan of what the database holds, such as the
    /// demo's search for plaintexts.
    pub fn stored_bytes(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT 'handover_envelopes', envelope_id || body FROM handover_envelopes
                     UNION ALL SELECT 'handover_tombstones', envelope_id FROM handover_tombstones
                     UNION ALL SELECT 'handover_prekey_bundles', bundle FROM handover_prekey_bundles
                     UNION ALL SELECT 'handover_one_time_prekeys', prekey
                        FROM handover_one_time_prekeys
                     UNION ALL SELECT 'handover_directory', org_root_key || profile
                        FROM handover_directory
                     UNION ALL SELECT 'handover_blob_chunks', data FROM handover_blob_chunks
                     UNION ALL SELECT 'handover_mailboxes',
                        recv_id || send_id || auth_key || coalesce((
                            SELECT string_agg(h, ''::bytea) FROM unnest(capability_hashes) h
                        ), ''::bytea)
                        FROM handover_mailboxes",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    /// Stores a mailbox with everything it holds, as exported from another store, in one
    /// transaction. Returns `false` (and changes nothing) if its receive or send id is
    /// already taken: a migration that was interrupted resumes by skipping what it moved.
    pub fn import_mailbox(&self, m: &MailboxExport) -> Result<bool, StoreError> {
        let bytes: u64 = m
            .envelopes
            .iter()
            .map(|q| q.envelope.ciphertext.len() as u64)
            .sum();
        self.counted(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let hashes: Vec<&[u8]> = m.capability_hashes.iter().map(|h| h.as_slice()).collect();
            let keys = (m.one_time.len() + m.one_time_kem.len()) as u64;
            let n = tx
                .execute(
                    "INSERT INTO handover_mailboxes (recv_id, send_id, auth_key, capability_hashes,
                        next_seq, queued_count, queued_bytes, next_prekey, one_time_count,
                        one_time_kem_count, tombstones)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
                    &[
                        &m.recv_id.as_slice(),
                        &m.send_id.as_slice(),
                        &m.auth_key.as_slice(),
                        &hashes,
                        &big(m.next_seq.max(1)),
                        &big(m.envelopes.len() as u64),
                        &big(bytes),
                        &big(keys),
                        &big(m.one_time.len() as u64),
                        &big(m.one_time_kem.len() as u64),
                        &big(m.tombstones.len() as u64),
                    ],
                )
                .await
                .map_err(pg_err)?;
            if n == 0 {
                return Ok((false, [0, 0, 0]));
            }
            for q in &m.envelopes {
                tx.execute(
                    "INSERT INTO handover_envelopes (recv_id, seq, envelope_id, expires_at, body)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &m.recv_id.as_slice(),
                        &big(q.seq),
                        &q.envelope.envelope_id.as_slice(),
                        &big(q.envelope.expires_at),
                        &q.envelope.ciphertext,
                    ],
                )
                .await
                .map_err(pg_err)?;
            }
            for (id, until) in &m.tombstones {
                tx.execute(
                    "INSERT INTO handover_tombstones (recv_id, envelope_id, until)
                     VALUES ($1, $2, $3)",
                    &[&m.recv_id.as_slice(), &id.as_slice(), &big(*until)],
                )
                .await
                .map_err(pg_err)?;
            }
            if let Some(bundle) = &m.bundle {
                tx.execute(
                    "INSERT INTO handover_prekey_bundles (recv_id, bundle) VALUES ($1, $2)",
                    &[&m.recv_id.as_slice(), bundle],
                )
                .await
                .map_err(pg_err)?;
            }
            let mut n = 0i64;
            for (kind, keys) in [(OT_X25519, &m.one_time), (OT_KEM, &m.one_time_kem)] {
                for key in keys {
                    tx.execute(
                        "INSERT INTO handover_one_time_prekeys (recv_id, kind, n, prekey)
                         VALUES ($1, $2, $3, $4)",
                        &[&m.recv_id.as_slice(), &kind, &n, key],
                    )
                    .await
                    .map_err(pg_err)?;
                    n += 1;
                }
            }
            tx.commit().await.map_err(pg_err)?;
            Ok((true, [1, big(m.envelopes.len() as u64), big(bytes)]))
        })
    }

    /// A mailbox with everything it holds, in the shape [`PgStore::import_mailbox`] takes (to
    /// verify a migration).
    pub fn export_mailbox(&self, recv_id: &Id) -> Result<Option<MailboxExport>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let Some(row) = client
                .query_opt(
                    "SELECT send_id, auth_key, capability_hashes, next_seq
                     FROM handover_mailboxes WHERE recv_id = $1",
                    &[&recv_id.as_slice()],
                )
                .await
                .map_err(pg_err)?
            else {
                return Ok(None);
            };
            let r = recv_id.as_slice();
            let mut envelopes = Vec::new();
            for e in client
                .query(
                    "SELECT seq, envelope_id, expires_at, body FROM handover_envelopes
                     WHERE recv_id = $1 ORDER BY seq",
                    &[&r],
                )
                .await
                .map_err(pg_err)?
            {
                envelopes.push(Queued {
                    seq: unbig(e.get(0)),
                    envelope: NewEnvelope {
                        envelope_id: id_of(e.get::<_, &[u8]>(1))?,
                        expires_at: unbig(e.get(2)),
                        ciphertext: e.get(3),
                    },
                });
            }
            let mut tombstones = Vec::new();
            for t in client
                .query(
                    "SELECT envelope_id, until FROM handover_tombstones
                     WHERE recv_id = $1 ORDER BY envelope_id",
                    &[&r],
                )
                .await
                .map_err(pg_err)?
            {
                tombstones.push((id_of(t.get::<_, &[u8]>(0))?, unbig(t.get(1))));
            }
            let bundle = client
                .query_opt(
                    "SELECT bundle FROM handover_prekey_bundles WHERE recv_id = $1",
                    &[&r],
                )
                .await
                .map_err(pg_err)?
                .map(|b| b.get(0));
            let mut one_time = [Vec::new(), Vec::new()];
            for (slot, kind) in one_time.iter_mut().zip([OT_X25519, OT_KEM]) {
                *slot = client
                    .query(
                        "SELECT prekey FROM handover_one_time_prekeys
                         WHERE recv_id = $1 AND kind = $2 ORDER BY n",
                        &[&r, &kind],
                    )
                    .await
                    .map_err(pg_err)?
                    .iter()
                    .map(|k| k.get(0))
                    .collect();
            }
            let [one_time, one_time_kem] = one_time;
            Ok(Some(MailboxExport {
                recv_id: *recv_id,
                send_id: id_of(row.get::<_, &[u8]>(0))?,
                auth_key: hash_of(row.get::<_, &[u8]>(1))?,
                capability_hashes: hashes_of(&row, 2)?,
                next_seq: unbig(row.get(3)),
                envelopes,
                tombstones,
                bundle,
                one_time,
                one_time_kem,
            }))
        })
    }

    /// One sweep step in one transaction, if this node gets the sweeper's lock.
    async fn sweep_step(
        &self,
        now: u64,
        budget: usize,
        tombstone_secs: u64,
    ) -> Result<Swept, StoreError> {
        let mut swept = Swept::default();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let locked: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&ADVISORY_SWEEP])
            .await
            .map_err(pg_err)?
            .get(0);
        if !locked {
            // Another node is sweeping.
            return Ok(swept);
        }
        // The one clock rule: expired by the caller's clock and by the database's.
        let now: i64 = tx
            .query_one(
                "SELECT least($1::bigint, floor(extract(epoch FROM statement_timestamp()))::bigint)",
                &[&big(now)],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        let until = now.saturating_add(big(tombstone_secs));
        let budget = big(budget as u64);
        let expired = tx
            .query(
                "SELECT recv_id, seq FROM handover_envelopes WHERE expires_at <= $1
                 ORDER BY expires_at LIMIT $2",
                &[&now, &budget],
            )
            .await
            .map_err(pg_err)?;
        let old_tombs = tx
            .query(
                "SELECT recv_id, envelope_id FROM handover_tombstones WHERE until <= $1
                 ORDER BY until LIMIT $2",
                &[&now, &budget.saturating_sub(expired.len() as i64).max(0)],
            )
            .await
            .map_err(pg_err)?;
        let mut seqs: BTreeMap<Vec<u8>, Vec<i64>> = BTreeMap::new();
        for row in &expired {
            seqs.entry(row.get(0)).or_default().push(row.get(1));
        }
        let mut tomb_ids: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
        for row in &old_tombs {
            tomb_ids.entry(row.get(0)).or_default().push(row.get(1));
        }
        let mailboxes: BTreeSet<&Vec<u8>> = seqs.keys().chain(tomb_ids.keys()).collect();
        let mailboxes: Vec<&[u8]> = mailboxes.into_iter().map(|m| m.as_slice()).collect();
        // Mailbox rows locked in key order (as every other writer locks at most one).
        let locked_rows = tx
            .query(
                "SELECT recv_id, tombstones FROM handover_mailboxes
                 WHERE recv_id = ANY ($1) ORDER BY recv_id FOR UPDATE",
                &[&mailboxes],
            )
            .await
            .map_err(pg_err)?;
        for row in locked_rows {
            let recv: Vec<u8> = row.get(0);
            let mut tombstones: i64 = row.get(1);
            // Expired tombstones first, so that their room can be taken again.
            if let Some(ids) = tomb_ids.get(&recv) {
                let n = tx
                    .execute(
                        "DELETE FROM handover_tombstones
                         WHERE recv_id = $1 AND envelope_id = ANY ($2) AND until <= $3",
                        &[&recv, ids, &now],
                    )
                    .await
                    .map_err(pg_err)?;
                swept.tombstones += n;
                tombstones -= big(n);
            }
            let mut count = 0i64;
            let mut bytes = 0i64;
            if let Some(seqs) = seqs.get(&recv) {
                let gone = tx
                    .query(
                        "DELETE FROM handover_envelopes
                         WHERE recv_id = $1 AND seq = ANY ($2) AND expires_at <= $3
                         RETURNING envelope_id, octet_length(body)",
                        &[&recv, seqs, &now],
                    )
                    .await
                    .map_err(pg_err)?;
                let ids: Vec<Vec<u8>> = gone.iter().map(|r| r.get(0)).collect();
                count = gone.len() as i64;
                bytes = gone.iter().map(|r| i64::from(r.get::<_, i32>(1))).sum();
                swept.envelopes += gone.len() as u64;
                // A tombstone each while the mailbox holds fewer than its most; one rewritten
                // for a reused envelope id counts once.
                let existing: HashSet<Vec<u8>> = tx
                    .query(
                        "SELECT envelope_id FROM handover_tombstones
                         WHERE recv_id = $1 AND envelope_id = ANY ($2)",
                        &[&recv, &ids],
                    )
                    .await
                    .map_err(pg_err)?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let mut write: Vec<&Vec<u8>> = Vec::new();
                for id in &ids {
                    if existing.contains(id) || write.contains(&id) {
                        write.push(id);
                    } else if unbig(tombstones) < MAX_TOMBSTONES_PER_MAILBOX {
                        tombstones += 1;
                        write.push(id);
                    }
                }
                write.dedup();
                tx.execute(
                    "INSERT INTO handover_tombstones (recv_id, envelope_id, until)
                     SELECT $1, unnest($2::bytea[]), $3
                     ON CONFLICT (recv_id, envelope_id) DO UPDATE SET until = excluded.until",
                    &[&recv, &write, &until],
                )
                .await
                .map_err(pg_err)?;
            }
            tx.execute(
                "UPDATE handover_mailboxes SET tombstones = greatest($2::bigint, 0),
                    queued_count = queued_count - $3, queued_bytes = queued_bytes - $4
                 WHERE recv_id = $1",
                &[&recv, &tombstones, &count, &bytes],
            )
            .await
            .map_err(pg_err)?;
        }
        let room = budget
            .saturating_sub(big(swept.envelopes + swept.tombstones))
            .max(0);
        let blobs = tx
            .query(
                "DELETE FROM handover_blobs WHERE blob_id IN (
                    SELECT blob_id FROM handover_blobs WHERE expires_at <= $1 LIMIT $2
                    FOR UPDATE SKIP LOCKED)
                 RETURNING written",
                &[&now, &room],
            )
            .await
            .map_err(pg_err)?;
        swept.blobs = blobs.len() as u64;
        let freed: i64 = blobs.iter().map(|r| r.get::<_, i64>(0)).sum();
        release_blob_bytes(&tx, freed).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(swept)
    }
}

/// Bytes written to all blobs (the `blob_bytes` counter), locked for update if `lock`.
async fn blob_total(
    tx: &deadpool_postgres::Transaction<'_>,
    lock: bool,
) -> Result<u64, StoreError> {
    let sql = if lock {
        "SELECT value FROM handover_counters WHERE name = 'blob_bytes' FOR UPDATE"
    } else {
        "SELECT value FROM handover_counters WHERE name = 'blob_bytes'"
    };
    let row = tx.query_one(sql, &[]).await.map_err(pg_err)?;
    Ok(unbig(row.get(0)))
}

async fn release_blob_bytes(
    tx: &deadpool_postgres::Transaction<'_>,
    written: i64,
) -> Result<(), StoreError> {
    if written > 0 {
        tx.execute(
            "UPDATE handover_counters SET value = greatest(value - $1, 0)
             WHERE name = 'blob_bytes'",
            &[&written],
        )
        .await
        .map_err(pg_err)?;
    }
    Ok(())
}

fn hashes_of(row: &tokio_postgres::Row, at: usize) -> Result<Vec<[u8; 32]>, StoreError> {
    row.get::<_, Vec<Vec<u8>>>(at)
        .iter()
        .map(|h| hash_of(h))
        .collect()
}

/// A [`Mailbox`] from columns `at..at + 5`: send_id, auth_key, capability_hashes,
/// queued_count, queued_bytes.
fn mailbox_of(row: &tokio_postgres::Row, at: usize) -> Result<Mailbox, StoreError> {
    Ok(Mailbox {
        send_id: id_of(row.get::<_, &[u8]>(at))?,
        auth_key: hash_of(row.get::<_, &[u8]>(at + 1))?,
        capability_hashes: hashes_of(row, at + 2)?,
        queued_count: unbig(row.get(at + 3)),
        queued_bytes: unbig(row.get(at + 4)),
    })
}

#[cfg(any(test, feature = "test-support"))]
pub mod testing {
    //! A database of its own per test, on the PostgreSQL server the tests use.

    use super::{NoTls, StoreError, pg_err};

    /// The server tests use: `HANDOVER_TEST_PG`, or else the local server at
    /// `postgres://postgres@127.0.0.1:5432/test`, which `scripts/ensure-postgres.sh` makes sure
    /// of first (once per test process: it starts an installed server, or installs one), so
    /// that `cargo test --workspace` needs no step before it. A failure of the script is a test
    /// failure, never a skip.
    pub fn server_url() -> String {
        if let Ok(url) = std::env::var("HANDOVER_TEST_PG") {
            return url;
        }
        static ENSURED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        let ensured = ENSURED.get_or_init(|| {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ensure-postgres.sh");
            match std::process::Command::new("bash").arg(script).status() {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(format!("{script} failed ({status})")),
                Err(err) => Err(format!("{script} could not run: {err}")),
            }
        });
        if let Err(why) = ensured {
            // Test support only: the PostgreSQL tests must fail, not skip, without a server.
            #[allow(clippy::panic)]
            {
                panic!("no PostgreSQL server for the tests: {why}");
            }
        }
        "postgres://postgres@127.0.0.1:5432/test".to_owned()
    }

    /// A database created for one test and dropped (with its connections) when this is.
    #[derive(Debug)]
    pub struct TestDatabase {
        admin: String,
        name: String,
        /// Its connection string.
        pub url: String,
    }

    /// Test databases older than this are dropped by the next [`TestDatabase::create`]: those
    /// of test runs that were killed, and those a test keeps for a whole run.
    const STALE_SECS: u64 = 2 * 3600;

    /// Runs `f` on its own thread and runtime (callers may be inside an async test).
    fn blocking<T: Send>(
        f: impl std::future::Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| StoreError::Backend(e.to_string()))?
                        .block_on(f)
                })
                .join()
                .unwrap_or_else(|_| Err(StoreError::Backend("test database thread".into())))
        })
    }

    async fn connect(
        url: &str,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(pg_err)?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((client, driver))
    }

    /// Drops stale test databases, then creates `name`.
    async fn create_database(url: &str, name: &str, now: u64) -> Result<(), StoreError> {
        let (client, driver) = connect(url).await?;
        let rows = client
            .query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'handover\\_pgt\\_%'",
                &[],
            )
            .await
            .map_err(pg_err)?;
        for row in rows {
            let old: String = row.get(0);
            let created = old
                .split('_')
                .nth(2)
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0);
            if created.saturating_add(STALE_SECS) < now {
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {old} WITH (FORCE)"))
                    .await;
            }
        }
        let result = client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(pg_err);
        drop(client);
        let _ = driver.await;
        result
    }

    impl TestDatabase {
        /// Creates `handover_pgt_<unix seconds>_<random>` on [`server_url`]'s server (and drops
        /// test databases older than two hours). Fails (the tests fail, they do not skip) when
        /// the server cannot be reached.
        pub fn create() -> Result<Self, StoreError> {
            Self::create_on(&server_url())
        }

        /// As [`TestDatabase::create`], on the server of `admin` (a connection string to any
        /// database of it, such as `postgres://postgres@127.0.0.1:5432/test`): for a
        /// benchmark's run given its server on the command line.
        pub fn create_on(admin: &str) -> Result<Self, StoreError> {
            let admin = admin.to_owned();
            let now = crate::server::unix_now();
            let name = format!("handover_pgt_{now}_{:08x}", rand::random::<u32>());
            blocking(create_database(&admin, &name, now))?;
            let base = match admin.rfind('/') {
                Some(slash) if slash > "postgres://".len() => &admin[..slash],
                _ => admin.as_str(),
            };
            let url = format!("{base}/{name}");
            Ok(Self { admin, name, url })
        }
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let _ = blocking(async {
                let (client, driver) = connect(&self.admin).await?;
                let result = client.batch_execute(&sql).await.map_err(pg_err);
                drop(client);
                let _ = driver.await;
                result
            });
        }
    }
}
