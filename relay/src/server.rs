//! The QUIC driver: quinn endpoint, one task per connection and per stream, the group
//! commit thread, subscriptions, the expiry sweeper and graceful shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use handover_proto::limits::{ALPN, FRAME_HEADER_LEN, MAX_BLOB_CHUNK_LEN};
use handover_proto::relay::v1 as wire;
use handover_proto::{decode, frame};
use tokio::sync::{mpsc, oneshot, watch};

use crate::RelayError;
use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::config::StoreLocation;
use crate::handler::{
    Action, ChunkOutcome, EXPORTER_LEN, Handler, KeyingMaterial, Session, decode_request, error,
    error_retry,
};
use crate::metrics::{CodeLabel, Metrics, OpLabel};
use crate::ratelimit::{AddressLimits, TokenBucket};
use crate::store::{DiskStore, Id, LogBackend, PgStore, Store};
use crate::tls;

use wire::ErrorCode;

/// How long a client may take to send its request frame.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may pause between blob chunks.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long shutdown waits, once every answer is written, for the peers to acknowledge them.
const DELIVERY_GRACE: Duration = Duration::from_secs(2);
/// How often the free space of the data directory's file system is checked against
/// `min_free_bytes`.
const SPACE_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Items deleted per sweep step.
const SWEEP_BUDGET: usize = 1_000;
/// QUIC application error code used when closing connections on shutdown.
const CLOSE_GOING_AWAY: u32 = 1;
/// QUIC grants this many bidirectional streams per connection beyond `max_streams` (at least
/// [`MIN_STREAM_SLACK`]), so that a client over the limit gets a typed `RATE_LIMITED` answer
/// on the excess streams instead of silently waiting for stream credit. Only past
/// `max_streams` + slack does QUIC flow control make the client wait.
const STREAM_SLACK_DIVISOR: u32 = 4;
/// Smallest number of extra streams granted for typed refusals.
const MIN_STREAM_SLACK: u32 = 8;

/// Bytes a peer may have in flight on one stream before it must wait for the relay to read
/// (QUIC stream flow control). A request frame larger than this still arrives, as the relay
/// reads it. quinn's default (1.25 MB) was sized for bulk transfer.
pub const QUIC_STREAM_RECEIVE_WINDOW: u32 = 256 * 1024;
/// Bytes a peer may have in flight across all streams of one connection before it must wait
/// (QUIC connection flow control): with the stream window, it bounds what quinn buffers per
/// connection for data the relay has not read yet. quinn's default is unlimited, leaving only
/// the per-stream windows (`max_streams` of them) as a bound.
pub const QUIC_RECEIVE_WINDOW: u32 = 1024 * 1024;
/// Bytes of answers quinn buffers per connection until the peer acknowledges them; a writer
/// past it waits. quinn's default is 10 MB.
pub const QUIC_SEND_WINDOW: u64 = 1024 * 1024;

/// The QUIC transport parameters of every connection: bounded flow-control windows, no
/// unidirectional streams, no datagrams (the protocol uses none; quinn's default would buffer up
/// to 1.25 MB of them per connection, never read).
fn transport_config(config: &Config) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quic_stream_limit(config.max_streams).into())
        .max_concurrent_uni_streams(0u8.into())
        .stream_receive_window(QUIC_STREAM_RECEIVE_WINDOW.into())
        .receive_window(QUIC_RECEIVE_WINDOW.into())
        .send_window(QUIC_SEND_WINDOW)
        .datagram_receive_buffer_size(None)
        .datagram_send_buffer_size(0)
        .max_idle_timeout(
            Duration::from_secs(config.idle_timeout_secs.max(1))
                .try_into()
                .ok(),
        )
        .keep_alive_interval(None);
    transport
}

/// Streams QUIC grants per connection for a configured limit of `max_streams` served at once.
fn quic_stream_limit(max_streams: u32) -> u32 {
    max_streams.saturating_add((max_streams / STREAM_SLACK_DIVISOR).max(MIN_STREAM_SLACK))
}

/// Whether a new stream may be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    Allowed,
    /// The connection's request rate is over its token bucket.
    RateLimited,
    /// The request rate of the connection's client address is over its token bucket.
    AddressRateLimited,
    /// The connection already has `max_streams` streams being served.
    TooManyStreams,
}

/// Counts a connection's streams being served; decrements on drop. Also holds the stream's
/// part of [`Drain::answers`] until its answer is written.
struct StreamSlot {
    served: Arc<std::sync::atomic::AtomicUsize>,
    _answer: mpsc::Sender<()>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.served.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What graceful shutdown waits for. Each is a channel whose receiver ends once every sender
/// clone is gone (no message is ever sent).
#[derive(Clone)]
struct Drain {
    /// Held by the accept loop, every connection and every stream until its final answer is
    /// written: shutdown waits for these for its whole grace period.
    answers: mpsc::Sender<()>,
    /// Held by every stream until the peer acknowledged its answer: shutdown waits for these
    /// at most [`DELIVERY_GRACE`] more, so that a peer that vanished does not hold it up.
    deliveries: mpsc::Sender<()>,
}

/// Current Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Binds a UDP socket at `addr` for QUIC, asking the kernel for `buffer` bytes of receive and
/// of send buffer (see [`crate::config::DEFAULT_UDP_BUFFER`] for why). Returns the socket and
/// the receive buffer the kernel granted, which Linux caps at `net.core.rmem_max`.
pub fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<(std::net::UdpSocket, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // A refused size leaves the system default, which the caller sees in what was granted.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    let reported = socket.recv_buffer_size()?;
    // Linux reports twice what it grants (it doubles the request for its own bookkeeping).
    let granted = if cfg!(target_os = "linux") {
        reported / 2
    } else {
        reported
    };
    Ok((socket.into(), granted))
}

struct QuinnExporter(quinn::Connection);

impl KeyingMaterial for QuinnExporter {
    fn export(&self, label: &[u8], context: &[u8]) -> Option<[u8; EXPORTER_LEN]> {
        let mut out = [0u8; EXPORTER_LEN];
        self.0
            .export_keying_material(&mut out, label, context)
            .ok()
            .map(|()| out)
    }
}

/// Group commit: writers enqueue a waiter after their store write returned; a thread of its
/// own syncs the store once for every waiter queued so far, hands them to a task that
/// releases them, and starts the next sync at once if more are waiting.
///
/// The sync loop is an OS thread rather than a tokio task handing each sync to the blocking
/// pool: a task woken by the blocking pool waits in the runtime's queues behind the other
/// runnable tasks, and under load that hand-off delayed the next sync by up to 15 ms after the
/// last one had ended, so every request behind it waited too (docs/PERFORMANCE.md). The
/// thread starts the next sync as soon as the last one ends, whatever the runtime is doing.
///
/// The waiters are released by a task (one wake-up from outside the runtime per round) rather
/// than by the thread (one per waiter): a task woken from outside the runtime enters it through
/// its global queue, and a waiter released that way waited 1.5-6.5 ms at p99 to run again
/// (docs/PERFORMANCE.md). Woken by the releasing task, the waiters queue on its worker.
struct Committer {
    shared: Arc<CommitShared>,
}

#[derive(Default)]
struct CommitShared {
    state: Mutex<CommitState>,
    wake: std::sync::Condvar,
    /// Set once a durable sync failed: the store's writes can no longer be trusted to reach
    /// the disk (a failed `fdatasync` is fatal), so `/healthz` reports the relay unhealthy
    /// until it is restarted.
    failed: Arc<AtomicBool>,
}

#[derive(Default)]
struct CommitState {
    waiters: Vec<oneshot::Sender<bool>>,
    /// The thread is blocked on `wake` (so a new waiter must notify it).
    idle: bool,
    closed: bool,
}

impl CommitShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, CommitState> {
        // Nothing panics while holding the lock; a poisoned one holds a consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the thread after its current sync; waiters not yet synced get `false`.
    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }
}

impl Committer {
    fn start(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, std::thread::JoinHandle<()>), RelayError> {
        let shared = Arc::new(CommitShared::default());
        let (release, mut rounds) = mpsc::unbounded_channel::<Round>();
        tokio::spawn(async move {
            while let Some((waiters, ok)) = rounds.recv().await {
                for waiter in waiters {
                    let _ = waiter.send(ok);
                }
            }
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("handover-commit".into())
                .spawn(move || commit_loop(&shared, store.as_ref(), &metrics, &release))
                .map_err(RelayError::io("start the commit thread"))?
        };
        Ok((Self { shared }, thread))
    }

    /// Waits until everything written before this call is durable.
    async fn durable(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            if state.closed {
                return false;
            }
            state.waiters.push(tx);
            if state.idle {
                state.idle = false;
                self.shared.wake.notify_one();
            }
        }
        rx.await.unwrap_or(false)
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// The waiters of one commit round, and whether their writes are durable.
type Round = (Vec<oneshot::Sender<bool>>, bool);

/// Hands a round to the releasing task, or releases it here if that task is gone (the
/// runtime is shutting down).
fn release(to: &mpsc::UnboundedSender<Round>, waiters: Vec<oneshot::Sender<bool>>, ok: bool) {
    if let Err(mpsc::error::SendError((waiters, ok))) = to.send((waiters, ok)) {
        for waiter in waiters {
            let _ = waiter.send(ok);
        }
    }
}

fn commit_loop(
    shared: &CommitShared,
    store: &dyn Store,
    metrics: &Metrics,
    to: &mpsc::UnboundedSender<Round>,
) {
    let mut batch = Vec::new();
    loop {
        {
            let mut state = shared.lock();
            while state.waiters.is_empty() && !state.closed {
                state.idle = true;
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            state.idle = false;
            std::mem::swap(&mut batch, &mut state.waiters);
            if state.closed {
                drop(state);
                release(to, std::mem::take(&mut batch), false);
                return;
            }
        }
        let started = Instant::now();
        let ok = match store.sync() {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(error = %err, "durable sync failed; requests answered UNAVAILABLE");
                shared.failed.store(true, Ordering::Relaxed);
                false
            }
        };
        if ok {
            metrics
                .store_sync_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        metrics.commit_batch.observe(batch.len() as f64);
        release(to, std::mem::take(&mut batch), ok);
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Subscriptions: mailbox → event channels of subscribed streams.
#[derive(Default)]
struct Hub {
    subs: Mutex<HashMap<Id, Vec<mpsc::Sender<Id>>>>,
}

impl Hub {
    fn subscribe(&self, ids: &[Id]) -> mpsc::Receiver<Id> {
        let (tx, rx) = mpsc::channel(64);
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            let list = subs.entry(*id).or_default();
            list.retain(|s| !s.is_closed());
            list.push(tx.clone());
        }
        rx
    }

    fn notify(&self, id: &Id) {
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = subs.get_mut(id) {
            // A full channel already has an event pending for the subscriber; dropping this
            // one loses nothing, since events say only "fetch this mailbox".
            list.retain(|s| !s.is_closed());
            for s in list.iter() {
                let _ = s.try_send(*id);
            }
            if list.is_empty() {
                subs.remove(id);
            }
        }
    }
}

struct Ctx {
    handler: Handler,
    /// Established connections being served.
    open_connections: std::sync::atomic::AtomicUsize,
    /// Connections accepted whose handshake has not ended yet.
    handshakes: std::sync::atomic::AtomicUsize,
    /// Request buckets per client address (in memory only, never logged).
    address_requests: Mutex<AddressLimits>,
    /// `CreateMailbox` buckets per client address (in memory only, never logged).
    address_creations: Mutex<AddressLimits>,
    /// The time base of the rate limits.
    started: Instant,
    config: Config,
    committer: Committer,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

/// A running relay.
pub struct Relay {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    pin: [u8; 32],
    shutdown: watch::Sender<bool>,
    draining: Arc<AtomicBool>,
    drained: mpsc::Receiver<()>,
    delivered: mpsc::Receiver<()>,
    accept_task: tokio::task::JoinHandle<()>,
    commit_thread: Option<std::thread::JoinHandle<()>>,
    commit_shared: Arc<CommitShared>,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    grace: Duration,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Opens the store, loads or generates the TLS identity and starts serving.
    pub async fn start(config: Config) -> Result<Self, RelayError> {
        config.validate()?;
        let data_dir = config.data_dir.clone();
        let store_dir = data_dir.join("store");
        let wal_size = config.wal_mib * 1024 * 1024;
        let location = config.store.clone();
        let pool_size = config.store_pool_size;
        let store: Arc<dyn Store> = tokio::task::spawn_blocking(move || {
            let store: Arc<dyn Store> = match location {
                StoreLocation::Embedded => Arc::new(DiskStore::new(
                    LogBackend::open_with_log_size(&store_dir, wal_size)?,
                )),
                StoreLocation::Postgres(url) => {
                    tracing::info!(
                        database = %crate::store::postgres::redact(&url),
                        "store on PostgreSQL"
                    );
                    Arc::new(PgStore::connect(&url, pool_size)?)
                }
            };
            // No upload survives a restart: what an interrupted one wrote is deleted.
            let discarded = store.discard_incomplete_blobs()?;
            if discarded > 0 {
                tracing::info!(blobs = discarded, "deleted incomplete blob uploads");
            }
            Ok::<_, crate::store::StoreError>(store)
        })
        .await
        .map_err(|e| RelayError::Config(e.to_string()))??;
        Self::start_with_store(config, store).await
    }

    /// Starts serving over an already opened store (for tests and benches).
    pub async fn start_with_store(
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<Self, RelayError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(RelayError::io("create data dir"))?;
        let pem = config.pem.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        let identity = tls::load_or_generate(&config.data_dir, pem)?;
        let pin = identity.pin;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| RelayError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(identity.certs, identity.key)
            .map_err(|e| RelayError::Tls(e.to_string()))?;
        tls_config.alpn_protocols = vec![ALPN.to_vec()];
        tls_config.max_early_data_size = 0;
        let quic_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls_config)
            .map_err(|e| RelayError::Tls(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_crypto));
        server_config.transport_config(Arc::new(transport_config(&config)));
        let (socket, granted) = bind_udp(config.listen, config.udp_buffer_bytes)
            .map_err(RelayError::io("bind QUIC listener"))?;
        if granted < config.udp_buffer_bytes {
            tracing::warn!(
                asked = config.udp_buffer_bytes,
                granted,
                "the kernel granted a smaller UDP buffer than configured; under load it may drop \
                 datagrams (raise net.core.rmem_max and wmem_max, see docs/OPERATIONS.md)"
            );
        } else {
            tracing::info!(bytes = granted, "UDP socket buffer");
        }
        let runtime = quinn::default_runtime()
            .ok_or_else(|| RelayError::Config("no async runtime for QUIC".into()))?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            runtime,
        )
        .map_err(RelayError::io("bind QUIC listener"))?;
        let local_addr = endpoint
            .local_addr()
            .map_err(RelayError::io("read listener address"))?;

        let metrics = Arc::new(Metrics::new());
        let (committer, commit_thread) = Committer::start(store.clone(), metrics.clone())?;
        let commit_shared = committer.shared.clone();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let draining = Arc::new(AtomicBool::new(false));

        let admin_addr = match config.admin {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(RelayError::io("bind admin listener"))?;
                let bound = listener
                    .local_addr()
                    .map_err(RelayError::io("read admin address"))?;
                let state = Arc::new(AdminState {
                    metrics: metrics.clone(),
                    store: store.clone(),
                    draining: draining.clone(),
                    sync_failed: commit_shared.failed.clone(),
                });
                tokio::spawn(admin::serve(listener, state, shutdown_rx.clone()));
                Some(bound)
            }
            None => None,
        };

        let handler = Handler::new(
            store.clone(),
            config.limits.clone(),
            config.admitted_orgs.clone(),
        )
        .with_creation_token(config.creation_token.clone());
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        // Envelopes queued through other relay processes sharing the store wake this one's
        // subscribers too.
        let hub = Arc::new(Hub::default());
        {
            let hub = hub.clone();
            store.watch_remote_enqueues(Arc::new(move |id: &Id| hub.notify(id)));
        }
        let ctx = Arc::new(Ctx {
            handler,
            open_connections: std::sync::atomic::AtomicUsize::new(0),
            handshakes: std::sync::atomic::AtomicUsize::new(0),
            address_requests: Mutex::new(AddressLimits::new(TokenBucket::new(
                config.address_requests_per_sec,
                config.address_request_burst,
            ))),
            address_creations: Mutex::new(AddressLimits::new(TokenBucket::per_minute(
                config.address_creations_per_min,
                config.address_creation_burst,
            ))),
            started: Instant::now(),
            config,
            committer,
            hub,
            metrics: metrics.clone(),
            shutdown: shutdown_rx,
        });

        // Free-space watermark: checked once before serving, then periodically.
        check_free_space(&ctx).await;
        {
            let ctx = ctx.clone();
            tokio::spawn(async move { space_watch(ctx).await });
        }

        // Sweeper.
        {
            let ctx = ctx.clone();
            tokio::spawn(async move { sweeper(ctx).await });
        }

        let (answers, drained) = mpsc::channel::<()>(1);
        let (deliveries, delivered) = mpsc::channel::<()>(1);
        let drain = Drain {
            answers,
            deliveries,
        };
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), ctx, drain));
        Ok(Self {
            endpoint,
            local_addr,
            admin_addr,
            pin,
            shutdown,
            draining,
            drained,
            delivered,
            accept_task,
            commit_thread: Some(commit_thread),
            commit_shared,
            metrics,
            store,
            grace,
        })
    }

    /// The bound QUIC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound admin address, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// SHA-256 of the certificate's SubjectPublicKeyInfo.
    pub fn pin(&self) -> [u8; 32] {
        self.pin
    }

    /// The relay's metrics (what the admin port's `/metrics` serves), for example the group
    /// commit histograms the load generator reports.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Graceful shutdown: stop accepting connections and streams, tell subscribers
    /// `GoingAway`, let in-flight requests finish (sends are committed and acknowledged) within
    /// the grace period, make the store durable and close all connections.
    pub async fn shutdown(mut self) {
        self.draining.store(true, Ordering::Relaxed);
        self.endpoint.set_server_config(None);
        let _ = self.shutdown.send(true);
        let _ = self.accept_task.await;
        if tokio::time::timeout(self.grace, self.drained.recv())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over with requests still in flight");
        }
        // Answers written but not yet acknowledged would be lost by closing the connections.
        let _ = tokio::time::timeout(DELIVERY_GRACE, self.delivered.recv()).await;
        let store = self.store.clone();
        let last = move || match store.local_log() {
            Some(log) => log.checkpoint(),
            None => store.sync(),
        };
        if let Ok(Err(err)) = tokio::task::spawn_blocking(last).await {
            tracing::error!(error = %err, "final checkpoint failed");
        }
        self.endpoint
            .close(CLOSE_GOING_AWAY.into(), b"relay shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        self.commit_shared.close();
        if let Some(thread) = self.commit_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// How often the sweeper checks whether the log needs compacting, between sweeps: so that a
/// fast writer cannot grow the log by more than a few seconds of writes before compaction
/// catches up. A check with nothing to copy looks only at the in-memory index.
const COMPACT_CHECK: Duration = Duration::from_secs(2);

/// Bytes available to the relay on the file system holding `path`; `None` if unknown (the
/// call failed, or a platform without `statvfs`).
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let stat = rustix::fs::statvfs(path).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = path;
        None
    }
}

/// Compares the data directory's free space with `min_free_bytes` and tells the handler.
async fn check_free_space(ctx: &Ctx) {
    let dir = ctx.config.data_dir.clone();
    let free = tokio::task::spawn_blocking(move || free_bytes(&dir))
        .await
        .ok()
        .flatten();
    // Unknown free space refuses nothing: the store's own write errors still protect the log.
    let low = free.is_some_and(|free| free < ctx.config.min_free_bytes);
    if low != ctx.handler.storage_low() {
        if low {
            tracing::warn!(
                free_bytes = free,
                min_free_bytes = ctx.config.min_free_bytes,
                "free disk space is below min_free_bytes: new data is refused, acks and \
                 deletions go on"
            );
        } else {
            tracing::info!("free disk space is above min_free_bytes again: new data accepted");
        }
        ctx.handler.set_storage_low(low);
    }
    ctx.metrics.storage_low.set(i64::from(low));
}

async fn space_watch(ctx: Arc<Ctx>) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SPACE_CHECK_INTERVAL) => {},
            _ = shutdown.changed() => return,
        }
        check_free_space(&ctx).await;
    }
}

async fn sweeper(ctx: Arc<Ctx>) {
    let mut shutdown = ctx.shutdown.clone();
    let period = Duration::from_secs(ctx.config.sweep_interval_secs.max(1));
    let mut next_sweep = Instant::now() + period;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(COMPACT_CHECK.min(period)) => {},
            _ = shutdown.changed() => return,
        }
        if Instant::now() < next_sweep {
            compact(&ctx).await;
            continue;
        }
        next_sweep = Instant::now() + period;
        loop {
            let step = {
                let ctx = ctx.clone();
                tokio::task::spawn_blocking(move || ctx.handler.sweep(unix_now(), SWEEP_BUDGET))
                    .await
            };
            match step {
                Ok(Ok(swept)) => {
                    let n = swept.envelopes + swept.tombstones + swept.blobs;
                    ctx.metrics.swept.inc_by(n);
                    if n > 0 {
                        // Make tombstones durable (sweeping is otherwise idempotent).
                        ctx.committer.durable().await;
                    }
                    // Go on while there is more to expire: each step is bounded, the sweeper
                    // keeps pace with the writes.
                    if n < SWEEP_BUDGET as u64 {
                        break;
                    }
                }
                Ok(Err(err)) => {
                    tracing::error!(error = %err, "expiry sweep failed");
                    break;
                }
                Err(_) => break,
            }
        }
        // The embedded log: copy live envelopes out of old segments (nothing to do for a
        // shared backend).
        compact(&ctx).await;
    }
}

/// Compacts the log until nothing is left to copy, syncing after each call so that the
/// segments the copies left are deleted.
async fn compact(ctx: &Arc<Ctx>) {
    loop {
        let ctx2 = ctx.clone();
        match tokio::task::spawn_blocking(move || ctx2.handler.compact()).await {
            Ok(Ok(0)) | Err(_) => return,
            Ok(Ok(_)) => {
                ctx.committer.durable().await;
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "log compaction failed");
                return;
            }
        }
    }
}

/// Counts a handshake in progress (in [`Ctx::handshakes`] and the `handshakes` gauge) until
/// dropped.
struct HandshakeSlot(Arc<Ctx>);

impl HandshakeSlot {
    fn new(ctx: Arc<Ctx>) -> Self {
        ctx.handshakes.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.handshakes.inc();
        Self(ctx)
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.handshakes.dec();
    }
}

/// What to do with a connection attempt, given the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arrival {
    Accept,
    /// Over `max_connections`, counting handshakes in progress.
    Refuse,
    /// Handshakes in progress reached `retry_above_handshakes` and the client has not proved
    /// its address yet: answer with a QUIC Retry (a token it must echo, costing the relay no
    /// connection state), so a flood of spoofed Initial packets creates no handshakes.
    Retry,
}

fn arrival(open: usize, handshakes: usize, address_validated: bool, config: &Config) -> Arrival {
    if open.saturating_add(handshakes) >= config.max_connections {
        Arrival::Refuse
    } else if handshakes >= config.retry_above_handshakes && !address_validated {
        Arrival::Retry
    } else {
        Arrival::Accept
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, ctx: Arc<Ctx>, drain: Drain) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.changed() => return,
        };
        let Some(incoming) = incoming else {
            return;
        };
        match arrival(
            ctx.open_connections.load(Ordering::Relaxed),
            ctx.handshakes.load(Ordering::Relaxed),
            incoming.remote_address_validated(),
            &ctx.config,
        ) {
            Arrival::Accept => {}
            Arrival::Refuse => {
                tracing::warn!("connection refused: max_connections reached");
                incoming.refuse();
                continue;
            }
            Arrival::Retry => {
                if let Err(err) = incoming.retry() {
                    // Not retryable (it already echoed a token): treat it as a refusal.
                    err.into_incoming().refuse();
                } else {
                    ctx.metrics.quic_retries.inc();
                }
                continue;
            }
        }
        let handshake = HandshakeSlot::new(ctx.clone());
        let ctx = ctx.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(err) => {
                    tracing::debug!(error = %err, "refused connection");
                    return;
                }
            };
            match tokio::time::timeout(Duration::from_secs(10), connecting).await {
                Ok(Ok(conn)) => {
                    // Counted as open before it stops counting as a handshake.
                    ctx.metrics.connections.inc();
                    ctx.open_connections.fetch_add(1, Ordering::Relaxed);
                    drop(handshake);
                    serve_connection(ctx, conn, drain).await;
                }
                Ok(Err(err)) => tracing::debug!(error = %err, "handshake failed"),
                Err(_) => tracing::debug!("handshake timed out"),
            }
        });
    }
}

/// Serves an established connection, already counted in [`Ctx::open_connections`], until it
/// ends; then uncounts it.
async fn serve_connection(ctx: Arc<Ctx>, conn: quinn::Connection, drain: Drain) {
    let session = Arc::new(Session::new(Box::new(QuinnExporter(conn.clone()))));
    let bucket = Arc::new(Mutex::new(TokenBucket::new(
        ctx.config.requests_per_sec,
        ctx.config.request_burst,
    )));
    // The client's address, for the limits shared per address; kept in memory only, never
    // logged.
    let peer = Arc::new(Peer {
        address: conn.remote_address().ip(),
        creations: Mutex::new(TokenBucket::per_minute(
            ctx.config.connection_creations_per_min,
            ctx.config.connection_creation_burst,
        )),
    });
    let in_service = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut shutdown = ctx.shutdown.clone();
    // One shutdown future for the connection's life, not one per stream: creating and dropping
    // it registers and unregisters a waiter under the watch channel's lock each time.
    let stopping = shutdown.changed();
    tokio::pin!(stopping);
    loop {
        let stream = tokio::select! {
            s = conn.accept_bi() => s,
            _ = &mut stopping => break,
        };
        let (send, recv) = match stream {
            Ok(s) => s,
            Err(err) => {
                tracing::debug!(error = %err, "connection ended");
                break;
            }
        };
        let ctx = ctx.clone();
        let session = session.clone();
        let bucket = bucket.clone();
        let peer = peer.clone();
        let delivery = drain.deliveries.clone();
        let slot = StreamSlot {
            served: in_service.clone(),
            _answer: drain.answers.clone(),
        };
        let served = in_service.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::spawn(async move {
            let _delivery = delivery;
            let mut stream = Stream {
                send,
                recv,
                slot: Some(slot),
            };
            let now_ms = ctx.now_ms();
            let admission = if served > ctx.config.max_streams as usize {
                Admission::TooManyStreams
            } else if !bucket
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(now_ms)
            {
                Admission::RateLimited
            } else if !ctx
                .address_requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(peer.address, now_ms)
            {
                Admission::AddressRateLimited
            } else {
                Admission::Allowed
            };
            serve_stream(&ctx, session, &peer, &mut stream, admission).await;
        });
    }
    ctx.metrics.connections.dec();
    ctx.open_connections.fetch_sub(1, Ordering::Relaxed);
}

/// Whether the peer has already ended `recv` just after what was read, checked without waiting.
/// Reading the end marks the stream fully read, so dropping or stopping it sends nothing;
/// otherwise quinn sends a STOP_SENDING frame, which on a request stream costs a datagram and
/// an acknowledgement per request for nothing. `false` if the end has not arrived yet or more
/// data follows (of which this consumes up to a byte).
pub fn recv_ended_now(recv: &mut quinn::RecvStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut byte = [0u8; 1];
    let read = std::pin::pin!(recv.read(&mut byte));
    matches!(read.poll(&mut cx), std::task::Poll::Ready(Ok(None)))
}

/// What the limits shared per connection or per client address need to know of a connection.
struct Peer {
    /// The client's IP address: in memory only, never logged.
    address: std::net::IpAddr,
    /// The connection's `CreateMailbox` bucket.
    creations: Mutex<TokenBucket>,
}

impl Ctx {
    /// Milliseconds since the relay started (the rate limits' clock).
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes a `CreateMailbox` token from the connection's bucket and its address's bucket;
    /// the refusal if either is empty.
    fn admit_creation(&self, peer: &Peer) -> Result<(), wire::Response> {
        let now_ms = self.now_ms();
        // Seconds until a bucket refilling at `per_min` a minute has a token again.
        let retry = |per_min: u32| 60u32.div_ceil(per_min.max(1));
        if !peer
            .creations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(now_ms)
        {
            return Err(error_retry(
                ErrorCode::RateLimited,
                "too many mailboxes created on this connection",
                retry(self.config.connection_creations_per_min),
            ));
        }
        if !self
            .address_creations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(peer.address, now_ms)
        {
            return Err(error_retry(
                ErrorCode::RateLimited,
                "too many mailboxes created from this network address",
                retry(self.config.address_creations_per_min),
            ));
        }
        Ok(())
    }
}

struct Stream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Counts this stream as being served until its final answer is written.
    slot: Option<StreamSlot>,
}

enum ReadError {
    /// The stream ended cleanly before a frame started.
    End,
    TooLarge,
    Truncated,
    TimedOut,
    Io,
}

impl Stream {
    async fn read_frame(&mut self, max: usize, timeout: Duration) -> Result<Vec<u8>, ReadError> {
        let read = async {
            let mut header = [0u8; FRAME_HEADER_LEN];
            match self.recv.read_exact(&mut header).await {
                Ok(()) => {}
                Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(ReadError::End),
                Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(ReadError::Truncated),
                Err(quinn::ReadExactError::ReadError(_)) => return Err(ReadError::Io),
            }
            let len = frame::header_len(header);
            if len > max {
                return Err(ReadError::TooLarge);
            }
            // Memory grows with the bytes that arrived, not with the length a header claims:
            // a peer cannot make the relay allocate `max` bytes per stream by sending headers.
            let mut payload = Vec::new();
            while payload.len() < len {
                match self.recv.read_chunk(len - payload.len(), true).await {
                    Ok(Some(chunk)) => payload.extend_from_slice(&chunk.bytes),
                    Ok(None) => return Err(ReadError::Truncated),
                    Err(_) => return Err(ReadError::Io),
                }
            }
            Ok(payload)
        };
        let mut read = std::pin::pin!(read);
        // A request frame usually arrives whole with its stream: read it without arming a
        // timer (one per request otherwise, registered and cancelled on the runtime's timer
        // wheel). Polling here registers this task's waker, as awaiting would.
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx)));
        if let std::task::Poll::Ready(result) = first.await {
            return result;
        }
        tokio::time::timeout(timeout, read)
            .await
            .unwrap_or(Err(ReadError::TimedOut))
    }

    async fn write<M: prost::Message>(&mut self, message: &M) -> bool {
        let bytes = match frame::encode(message) {
            Ok(bytes) => bytes,
            Err(_) => {
                // The handler keeps answers within a frame; if one still is not, say so.
                tracing::error!("response exceeds the frame limit");
                let fallback = error(ErrorCode::Unavailable, "response too large");
                match frame::encode(&fallback) {
                    Ok(bytes) => bytes,
                    Err(_) => return false,
                }
            }
        };
        self.send.write_all(&bytes).await.is_ok()
    }

    /// Writes a final response, finishes the stream, and stops reading further input.
    async fn reply(&mut self, ctx: &Ctx, response: &wire::Response) {
        if let Some(wire::response::Kind::Error(e)) = &response.kind {
            let code = ErrorCode::try_from(e.code).map_or("UNKNOWN", |c| c.as_str_name());
            ctx.metrics
                .errors
                .get_or_create(&CodeLabel {
                    code: code.trim_start_matches("ERROR_CODE_"),
                })
                .inc();
        }
        self.stop_reading();
        let written = self.write(response).await;
        // Answered: waiting for the peer to acknowledge delivery does not count against the
        // connection's limit of streams being served, nor against shutdown's grace period.
        self.slot = None;
        if written {
            self.finish().await;
        }
    }

    /// Stops reading further input (a request stream carries one frame, then ends).
    fn stop_reading(&mut self) {
        if !recv_ended_now(&mut self.recv) {
            let _ = self.recv.stop(0u8.into());
        }
    }

    /// Finishes the send side and waits until the peer has acknowledged everything, so that
    /// closing the connection on shutdown cannot discard an answer already written.
    ///
    /// No timer bounds the wait: it ends when the peer acknowledges, stops the stream or
    /// loses the connection (idle timeout). A peer that never acknowledges cannot pile up
    /// such waits, because QUIC returns a stream's credit only once its answer is
    /// acknowledged, so a connection has at most its stream limit of them; and shutdown
    /// bounds them by its grace period.
    async fn finish(&mut self) {
        if self.send.finish().is_ok() {
            let _ = self.send.stopped().await;
        }
    }
}

fn op_name(request: &wire::Request) -> &'static str {
    use wire::request::Kind;
    match &request.kind {
        Some(Kind::CreateMailbox(_)) => "create_mailbox",
        Some(Kind::DeleteMailbox(_)) => "delete_mailbox",
        Some(Kind::Authenticate(_)) => "authenticate",
        Some(Kind::SetCapabilities(_)) => "set_capabilities",
        Some(Kind::Send(_)) => "send",
        Some(Kind::Fetch(_)) => "fetch",
        Some(Kind::Ack(_)) => "ack",
        Some(Kind::Subscribe(_)) => "subscribe",
        Some(Kind::EnvelopeStatus(_)) => "envelope_status",
        Some(Kind::PrekeyPublish(_)) => "prekey_publish",
        Some(Kind::PrekeyTake(_)) => "prekey_take",
        Some(Kind::MemberAuth(_)) => "member_auth",
        Some(Kind::DirectoryPublish(_)) => "directory_publish",
        Some(Kind::DirectoryQuery(_)) => "directory_query",
        Some(Kind::BlobPut(_)) => "blob_put",
        Some(Kind::BlobGet(_)) => "blob_get",
        Some(Kind::Ping(_)) => "ping",
        None => "none",
    }
}

async fn serve_stream(
    ctx: &Arc<Ctx>,
    session: Arc<Session>,
    peer: &Peer,
    stream: &mut Stream,
    admission: Admission,
) {
    let payload = match stream
        .read_frame(ctx.config.max_request_frame, REQUEST_TIMEOUT)
        .await
    {
        Ok(p) => p,
        Err(ReadError::End) | Err(ReadError::Io) => return,
        Err(ReadError::TooLarge) => {
            let r = error(
                ErrorCode::TooLarge,
                "request frame is larger than this relay accepts",
            );
            return stream.reply(ctx, &r).await;
        }
        Err(ReadError::Truncated) => {
            let r = error(ErrorCode::BadRequest, "stream ended inside a frame");
            return stream.reply(ctx, &r).await;
        }
        Err(ReadError::TimedOut) => {
            let r = error(ErrorCode::BadRequest, "request not received in time");
            return stream.reply(ctx, &r).await;
        }
    };
    match admission {
        Admission::Allowed => {}
        Admission::RateLimited => {
            let r = error_retry(
                ErrorCode::RateLimited,
                "too many requests on this connection",
                1,
            );
            return stream.reply(ctx, &r).await;
        }
        Admission::AddressRateLimited => {
            let r = error_retry(
                ErrorCode::RateLimited,
                "too many requests from this network address",
                1,
            );
            return stream.reply(ctx, &r).await;
        }
        Admission::TooManyStreams => {
            let message = format!(
                "too many concurrent streams on this connection (this relay serves at most {} \
                 at once, subscriptions included); wait for answers before opening more \
                 streams, or use another connection",
                ctx.config.max_streams
            );
            let r = error_retry(ErrorCode::RateLimited, &message, 1);
            return stream.reply(ctx, &r).await;
        }
    }
    let request = match decode_request(&payload) {
        Ok(r) => r,
        Err(r) => return stream.reply(ctx, &r).await,
    };
    ctx.metrics
        .requests
        .get_or_create(&OpLabel {
            op: op_name(&request),
        })
        .inc();
    if matches!(request.kind, Some(wire::request::Kind::CreateMailbox(_)))
        && let Err(r) = ctx.admit_creation(peer)
    {
        return stream.reply(ctx, &r).await;
    }
    let is_send = matches!(request.kind, Some(wire::request::Kind::Send(_)));
    // Store calls may block (locks, disk reads): keep them off the async workers that drive
    // QUIC. Except a `Ping`, and a `Send` whose send id is in the store's sender cache: it
    // appends to the in-memory log buffer, and the disk sync happens in the committer.
    // Handing the hottest request to the blocking pool costs two thread hand-offs each; a send
    // id the cache misses (a keyspace read) goes there.
    let action = match ctx.handler.handle_nonblocking(request, unix_now()) {
        Ok(action) => Ok(action),
        Err(request) => {
            let ctx = ctx.clone();
            tokio::task::spawn_blocking(move || {
                let mut rng = rand::rng();
                ctx.handler.handle(&session, request, unix_now(), &mut rng)
            })
            .await
        }
    };
    let Ok(action) = action else {
        let r = error_retry(ErrorCode::Unavailable, "request failed", 1);
        return stream.reply(ctx, &r).await;
    };
    match action {
        Action::Reply(response) => stream.reply(ctx, &response).await,
        Action::ReplyWhenDurable { response, notify } => {
            if ctx.committer.durable().await {
                if is_send && matches!(response.kind, Some(wire::response::Kind::SendAccepted(_))) {
                    ctx.metrics.envelopes_accepted.inc();
                }
                // Wake the recipient as soon as the envelope is durable: the sender's answer
                // may take long to write and be acknowledged (a slow or vanished sender), and
                // the recipient must not wait for that.
                if let Some(id) = notify {
                    ctx.hub.notify(&id);
                }
                stream.reply(ctx, &response).await;
            } else {
                let r = error_retry(ErrorCode::Unavailable, "storage unavailable", 5);
                stream.reply(ctx, &r).await;
            }
        }
        Action::Subscribe(ids) => subscription(ctx, stream, &ids).await,
        Action::BlobUpload(upload) => blob_upload(ctx, stream, upload).await,
        Action::BlobDownload(download) => blob_download(ctx, stream, download).await,
    }
}

async fn subscription(ctx: &Ctx, stream: &mut Stream, ids: &[Id]) {
    let mut events = ctx.hub.subscribe(ids);
    let subscribed = wire::Response {
        kind: Some(wire::response::Kind::Subscribed(wire::Subscribed {})),
    };
    if !stream.write(&subscribed).await {
        return;
    }
    let mut shutdown = ctx.shutdown.clone();
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(id) = event else { return };
                let e = wire::Event {
                    kind: Some(wire::event::Kind::NewEnvelopes(wire::NewEnvelopes {
                        recv_id: id.to_vec(),
                    })),
                };
                if !stream.write(&e).await {
                    return;
                }
            }
            _ = shutdown.changed() => {
                let e = wire::Event {
                    kind: Some(wire::event::Kind::GoingAway(wire::GoingAway {})),
                };
                if stream.write(&e).await {
                    stream.finish().await;
                }
                return;
            }
            _ = stream.send.stopped() => return,
        }
    }
}

/// Runs a handler call that may block (storage I/O) on the blocking pool, off the async
/// workers that drive QUIC. `None` if the call panicked.
async fn blocking<T: Send + 'static>(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&crate::handler::Handler) -> T + Send + 'static,
) -> Option<T> {
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || f(&ctx.handler))
        .await
        .ok()
}

async fn blob_upload(ctx: &Arc<Ctx>, stream: &mut Stream, mut upload: crate::handler::BlobUpload) {
    // A chunk frame carries at most MAX_BLOB_CHUNK_LEN data bytes plus a few bytes of protobuf.
    let max = MAX_BLOB_CHUNK_LEN + 16;
    loop {
        let failure = match stream.read_frame(max, CHUNK_TIMEOUT).await {
            Ok(payload) => match decode::blob_chunk(&payload) {
                Ok(chunk) => {
                    let fed = blocking(ctx, move |h| {
                        let outcome = h.blob_chunk(&mut upload, chunk, unix_now());
                        (upload, outcome)
                    })
                    .await;
                    let Some((back, outcome)) = fed else {
                        // The upload went with the failed call; the sweeper removes the
                        // incomplete blob.
                        let r = error_retry(ErrorCode::Unavailable, "storage unavailable", 5);
                        return stream.reply(ctx, &r).await;
                    };
                    upload = back;
                    match outcome {
                        Ok(ChunkOutcome::More) => continue,
                        Ok(ChunkOutcome::Complete(response)) => {
                            if ctx.committer.durable().await {
                                return stream.reply(ctx, &response).await;
                            }
                            error_retry(ErrorCode::Unavailable, "storage unavailable", 5)
                        }
                        Err(response) => response,
                    }
                }
                Err(err) => error(ErrorCode::BadRequest, &err.to_string()),
            },
            Err(ReadError::TooLarge) => error(ErrorCode::TooLarge, "blob chunk frame is too large"),
            Err(ReadError::End) | Err(ReadError::Truncated) => error(
                ErrorCode::BadRequest,
                "blob upload ended before the last chunk",
            ),
            Err(ReadError::TimedOut) => error(ErrorCode::BadRequest, "blob upload stalled"),
            Err(ReadError::Io) => {
                blocking(ctx, move |h| h.blob_abort(upload)).await;
                return;
            }
        };
        blocking(ctx, move |h| h.blob_abort(upload)).await;
        return stream.reply(ctx, &failure).await;
    }
}

async fn blob_download(
    ctx: &Arc<Ctx>,
    stream: &mut Stream,
    mut download: crate::handler::BlobDownload,
) {
    let header = wire::Response {
        kind: Some(wire::response::Kind::BlobHeader(wire::BlobHeader {
            size: download.size,
            expires_at: download.expires_at,
        })),
    };
    if !stream.write(&header).await {
        return;
    }
    loop {
        let read = blocking(ctx, move |h| {
            let chunk = h.blob_read(&mut download);
            (download, chunk)
        })
        .await;
        let Some((back, chunk)) = read else {
            let _ = stream.send.reset(1u8.into());
            return;
        };
        download = back;
        match chunk {
            Ok(chunk) => {
                let last = chunk.last;
                if !stream.write(&chunk).await {
                    return;
                }
                if last {
                    stream.stop_reading();
                    stream.finish().await;
                    return;
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "blob read failed");
                let _ = stream.send.reset(1u8.into());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field of quinn's `Debug` output of a transport config, e.g. `receive_window: 5` gives
    /// `5`.
    fn field<'a>(debug: &'a str, name: &str) -> &'a str {
        let start = debug.find(&format!(" {name}: ")).unwrap() + name.len() + 3;
        let rest = &debug[start..];
        let end = rest.find(", ").unwrap_or(rest.len());
        &rest[..end]
    }

    #[test]
    fn connections_have_bounded_windows_and_no_datagrams() {
        let config = Config::new(std::path::PathBuf::from("unused"));
        let debug = format!("{:?}", transport_config(&config));
        // quinn's defaults: an unlimited connection window, a 1.25 MB datagram buffer.
        assert_eq!(
            field(&debug, "receive_window"),
            QUIC_RECEIVE_WINDOW.to_string()
        );
        assert_eq!(
            field(&debug, "stream_receive_window"),
            QUIC_STREAM_RECEIVE_WINDOW.to_string()
        );
        assert_eq!(field(&debug, "send_window"), QUIC_SEND_WINDOW.to_string());
        assert_eq!(field(&debug, "datagram_receive_buffer_size"), "None");
        assert_eq!(field(&debug, "datagram_send_buffer_size"), "0");
        // What quinn may buffer per connection stays within a few MiB.
        let windows = u64::from(QUIC_RECEIVE_WINDOW) + QUIC_SEND_WINDOW;
        assert!(windows <= 4 * 1024 * 1024);
    }

    #[test]
    fn handshakes_count_against_the_connection_limit_and_trigger_retry() {
        let mut config = Config::new(std::path::PathBuf::from("unused"));
        config.max_connections = 10;
        config.retry_above_handshakes = 3;
        assert_eq!(arrival(0, 0, false, &config), Arrival::Accept);
        assert_eq!(arrival(5, 2, false, &config), Arrival::Accept);
        // Handshakes in progress count as connections.
        assert_eq!(arrival(5, 5, true, &config), Arrival::Refuse);
        assert_eq!(arrival(9, 1, true, &config), Arrival::Refuse);
        // Above the threshold, an address not yet proved gets a Retry; a proved one is served.
        assert_eq!(arrival(0, 3, false, &config), Arrival::Retry);
        assert_eq!(arrival(0, 3, true, &config), Arrival::Accept);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_quic_socket_gets_the_buffer_asked_for() {
        // Both sizes are below Linux's usual cap (net.core.rmem_max, 212992 by default), so
        // the kernel grants them exactly.
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        for asked in [100_000, 150_000] {
            let (socket, granted) = bind_udp(local, asked).unwrap();
            assert_eq!(granted, asked);
            assert!(socket.local_addr().unwrap().port() != 0);
        }
    }
}
