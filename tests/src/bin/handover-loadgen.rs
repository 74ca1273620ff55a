//! Relay load generator: durable sends against the real relay (sled store, group commit) next
//! to a raw quinn echo of the same shape, in the same run and process, so the result is a
//! ratio rather than an absolute figure on a noisy shared machine.
//!
//! Phases (each bounded in time and count, loopback only):
//! 1. fdatasync rate, latency and on-CPU time per sync of this machine, in the data directory:
//!    1 KiB appends to a growing file, 1 KiB records written in order into a sparse file of
//!    fixed size (the relay's log segments), and 1 KiB overwrites of written blocks (the
//!    disk's best rate);
//! 2. raw echo: N connections × M concurrent streams, each stream one request-sized frame out
//!    and the same frame back (the transport's limit);
//! 3. relay: N × M concurrent durable `Send`s of 1 KiB envelopes (peak rate);
//! 4. relay at half the peak rate, paced, after a warm-up second at that rate: p50 / p99
//!    acknowledgement latency;
//! 5. relay, one sender, one stream at a time: the single-sender durable rate.
//!
//! Each latency phase (4, and the echo at the same rate) also prints what explains its tail:
//! CPU time and context switches per request, datagrams per request, packets QUIC declared
//! lost, UDP datagrams the kernel dropped for full socket buffers, and the stalls a bystander
//! thread saw (the machine taking the CPU away), and how many 100 ms windows of the phase had
//! a p99 over 5 ms (a few stalls, or a broad tail). Phases 3-5 print the group commits: commit
//! rounds, and the store's sync alone, with the number over 1.6 and 3.2 ms (a round is the
//! sync plus handing the round's waiters on for release).
//!
//! The servers (the relay and the echo server) run on a tokio runtime of their own unless
//! `--runtimes shared`.
//!
//! With `--store URL` the relay runs on PostgreSQL, in a fresh database created on that server
//! for the run (and dropped after it), optionally as several nodes sharing it (`--nodes`); after
//! the relay's peak phase, pgbench runs the relay's SQL per send (tests/bench/pg-send.sql) on
//! the same database and mailboxes, and the relay's peak is printed as a ratio to pgbench's
//! rate.
//!
//! `cargo run --release -p handover-tests --bin handover-loadgen -- --help`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use handover_proto::frame;
use handover_proto::limits::MAX_FRAME_LEN;
use handover_proto::relay::v1 as wire;
use handover_relay::config::{Config, StoreLocation};
use handover_relay::server::Relay;
use handover_relay::store::postgres::testing::TestDatabase;
use handover_tests::client::{
    Client, MailboxKeys, client_config, client_endpoint, read_frame, unix_now,
};
use handover_tests::{BoxError, Result};

/// Load generator for the Handover relay.
#[derive(Debug, Parser)]
#[command(name = "handover-loadgen")]
struct Args {
    /// Concurrent QUIC connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent streams (requests in flight) per connection.
    #[arg(long, default_value_t = 64)]
    streams: usize,
    /// Envelope ciphertext size in bytes.
    #[arg(long, default_value_t = 1024)]
    envelope_bytes: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Directory for the relay's data and the fdatasync probe (default: a temporary directory
    /// under the current directory, so that it is on a real disk rather than a tmpfs).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run the relay over the in-memory store instead of sled (no durability; shows the cost
    /// of the driver and handler alone).
    #[arg(long)]
    memory_store: bool,
    /// Size of the relay's write-ahead log files (log segments), MiB.
    #[arg(long, default_value_t = 64)]
    wal_mib: u64,
    /// Offered rate of the latency phase, sends per second (default: half of the measured
    /// peak). A fixed rate compares builds at the same load.
    #[arg(long)]
    rate: Option<f64>,
    /// How the latency phase paces its requests: `poisson` (open loop, Poisson arrivals from a
    /// pacer thread, latency from the scheduled arrival) or `ticks` (the N x M workers on
    /// tokio interval timers of 1 ms resolution, latency from the actual send; the arrivals
    /// come in synchronised bursts each millisecond).
    #[arg(long, value_enum, default_value_t = Pacing::Poisson)]
    pacing: Pacing,
    /// Seconds of load at the latency phase's rate and pacing just before it is measured, not
    /// counted (relay and echo alike): the latency phase follows the saturating peak phase,
    /// whose writes the disk is still absorbing for a few hundred milliseconds (syncs of
    /// 5-11 ms were seen there), and "latency at half of peak" means the steady state.
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
    /// Socket buffer of the relay and of the echo server, bytes (the relay's default; the
    /// kernel caps it at net.core.rmem_max). The clients always ask for the relay's default
    /// buffer, whatever this says.
    #[arg(long, default_value_t = handover_relay::config::DEFAULT_UDP_BUFFER)]
    udp_buffer_bytes: usize,
    /// Where the servers (the relay and the echo server) run: `separate` (a tokio runtime of
    /// their own, with as many workers as the clients' runtime, as a relay and its clients are
    /// separate processes in deployment) or `shared` (one runtime for clients and servers, the
    /// method of every figure before 2026-11-21 19:30 UTC; it holds the echo back more than
    /// the relay).
    #[arg(long, value_enum, default_value_t = Runtimes::Separate)]
    runtimes: Runtimes,
    /// Length of a round of the simulated group commit, microseconds (0: skip that phase).
    /// After the raw echo at the relay's rate, the same echo runs once more with each answer
    /// held until a round of a thread that sleeps this long per round (no disk, no store, no
    /// CPU) and hands the round to a task that releases it, as the relay's commit thread
    /// does. It shows what answering after a sync on another thread costs on this machine by
    /// itself. The default is about the relay's round at half of peak.
    #[arg(long, default_value_t = 250)]
    simulated_sync_us: u64,
    /// Run the relay on PostgreSQL instead of the embedded store: a connection string to any
    /// database of the server (such as `postgres://postgres@127.0.0.1:5432/test`). Each run
    /// creates a fresh database on that server for the relay, which creates its schema in it,
    /// and drops it at the end. After the relay's peak phase, pgbench runs the relay's SQL per
    /// send (tests/bench/pg-send.sql) on that database and the mailboxes the relay created.
    #[arg(long)]
    store: Option<String>,
    /// Connections to PostgreSQL of each relay node for requests (the relay's
    /// `--store-pool-size`): at most this many sends are in a transaction at once per node.
    #[arg(long, default_value_t = handover_relay::store::postgres::DEFAULT_POOL_SIZE)]
    store_pool_size: usize,
    /// Relay nodes on the same database (with `--store`), each in the servers' runtime with
    /// its own pool; connection c goes to node c % nodes.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// The pgbench binary run with `--store`.
    #[arg(long, default_value = "pgbench")]
    pgbench: PathBuf,
    /// pgbench client counts (comma-separated), each run for `--secs` (default: the relay's
    /// database connections, `--store-pool-size` x `--nodes`; 0 skips pgbench).
    #[arg(long, value_delimiter = ',')]
    pgbench_clients: Vec<usize>,
}

/// Whether the servers share the clients' tokio runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Runtimes {
    Separate,
    Shared,
}

/// Pacing of the latency phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Pacing {
    Poisson,
    Ticks,
}

/// One answered request of a latency phase: when it was due (µs since the phase started) and
/// its latency (µs).
#[derive(Clone, Copy)]
struct Sample {
    at: u64,
    latency: u64,
}

/// Width of the windows in which [`windows`] looks for stalls.
const WINDOW_US: u64 = 100_000;

/// The latency phase by windows of [`WINDOW_US`]: how many windows have a p99 over 5 ms, and
/// the worst window. A tail made of a few stalls shows as a few bad windows; a broad one as
/// many.
fn windows(samples: &[Sample]) -> String {
    let mut by_window: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for s in samples {
        by_window
            .entry(s.at / WINDOW_US)
            .or_default()
            .push(s.latency);
    }
    let mut over = 0;
    let mut worst: Option<(u64, f64)> = None;
    for (w, lat) in &mut by_window {
        lat.sort_unstable();
        let p99 = percentile(lat, 0.99);
        if p99 > 5.0 {
            over += 1;
        }
        if worst.is_none_or(|(_, p)| p99 > p) {
            worst = Some((*w, p99));
        }
    }
    let worst = worst.map_or_else(String::new, |(w, p)| {
        format!(
            "; worst p99 {p:.2} ms, in the window from {:.1} s",
            (w * WINDOW_US) as f64 / 1e6
        )
    });
    format!(
        "  windows of {} ms: {over} of {} with p99 over 5 ms{worst}",
        WINDOW_US / 1000,
        by_window.len()
    )
}

/// Latency phase at `rate` per second in the chosen pacing; the answered requests and the
/// number that failed.
#[allow(clippy::too_many_arguments)]
async fn latency_phase(
    pacing: Pacing,
    conns: &[quinn::Connection],
    mailboxes: &[MailboxKeys],
    streams: usize,
    len: usize,
    secs: u64,
    rate: f64,
    check_accepted: bool,
) -> Result<(Vec<Sample>, u64)> {
    match pacing {
        Pacing::Poisson => open_loop(conns, mailboxes, len, secs, rate, 1, check_accepted).await,
        Pacing::Ticks => paced(conns, mailboxes, streams, len, secs, rate, check_accepted).await,
    }
}

/// A latency phase as reported: `args.warmup_secs` of the same load first (not counted), then
/// `args.secs` at `rate`. Returns the sorted latencies in µs, the failures, and the lines that
/// explain the tail: the relay's group commits (if `relay`), CPU, transport, stalls and the
/// tail by windows of time.
async fn measured_latency(
    args: &Args,
    conns: &[quinn::Connection],
    mailboxes: &[MailboxKeys],
    rate: f64,
    relay: Option<&Relay>,
    check_accepted: bool,
) -> Result<(Vec<u64>, u64, Vec<String>)> {
    let phase = |secs| {
        latency_phase(
            args.pacing,
            conns,
            mailboxes,
            args.streams,
            args.envelope_bytes,
            secs,
            rate,
            check_accepted,
        )
    };
    if args.warmup_secs > 0 {
        phase(args.warmup_secs).await?;
    }
    let commits = relay.map(Commits::read);
    let cpu = CpuUsage::read();
    let side = SideCpu::read();
    let transport = Transport::read(conns);
    let stalls = StallWatch::start()?;
    let (samples, failed) = phase(args.secs).await?;
    let (cpu_after, side_after, transport_after) =
        (CpuUsage::read(), SideCpu::read(), Transport::read(conns));
    let mut lat: Vec<u64> = samples.iter().map(|s| s.latency).collect();
    lat.sort_unstable();
    let requests = lat.len() + failed as usize;
    let mut lines = Vec::new();
    if let (Some(relay), Some(before)) = (relay, commits) {
        lines.push(Commits::read(relay).since(before, args.secs as f64));
    }
    lines.push(CpuUsage::since(cpu_after, cpu, requests, args.secs as f64));
    lines.push(SideCpu::since(
        side_after,
        side,
        args.runtimes,
        requests as f64,
        relay.is_some(),
    ));
    lines.push(transport_after.since(transport, requests));
    lines.push(stalls.finish());
    lines.push(windows(&samples));
    Ok((lat, failed, lines))
}

/// The open-loop pacer wakes at most once per quantum and then starts every request that is due.
const PACER_QUANTUM: Duration = Duration::from_micros(250);

/// Upper bound on operations per phase, so that loops are bounded in count as well as time.
const MAX_OPS_PER_PHASE: u64 = 5_000_000;

/// One `fdatasync` pattern of the probe: syncs per second, p50 and p99 latency (ms), and the
/// calling thread's on-CPU time per sync (µs; on a virtual machine the disk's notifications
/// are exits to the hypervisor that the guest sees as CPU time).
struct SyncRate {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_us: Option<f64>,
}

impl SyncRate {
    fn line(&self, what: &str) -> String {
        format!(
            "fdatasync, {what:<33}{:>10.0} /s   p50 {:.2} ms  p99 {:.2} ms  on-CPU {} per sync",
            self.rate,
            self.p50,
            self.p99,
            self.cpu_us
                .map_or_else(|| "n/a".into(), |us| format!("{us:.0} us"))
        )
    }
}

/// The calling thread's on-CPU time so far, from `/proc/thread-self/schedstat` (Linux).
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(
        stat.split_whitespace().next()?.parse().ok()?,
    ))
}

/// The machine's `fdatasync` in three patterns, `secs` each: appending 1 KiB blocks to a file
/// that grows (each sync also commits the size); 1 KiB records one after another into a sparse
/// file of fixed size (the relay's log: its segments are created sparse, so a sync also
/// commits the blocks it allocated); and 1 KiB overwrites of blocks written and synced before
/// (no metadata at all: the disk's best rate).
fn fdatasync_rates(dir: &std::path::Path, secs: u64) -> Result<[SyncRate; 3]> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fdatasync-probe");
    let block = [0x5au8; 1024];
    // The sparse file costs no space and is never written to its end; the written one is
    // overwritten round and round.
    let (sparse_size, written_size): (u64, u64) = (1 << 30, 16 * 1024 * 1024);
    let measure = |f: &std::fs::File, wrap: u64| -> Result<SyncRate> {
        let mut lat = Vec::new();
        let cpu = thread_cpu();
        let start = Instant::now();
        let mut offset = 0u64;
        while start.elapsed() < Duration::from_secs(secs) && (lat.len() as u64) < MAX_OPS_PER_PHASE
        {
            let t = Instant::now();
            f.write_all_at(&block, offset)?;
            f.sync_data()?;
            lat.push(t.elapsed().as_micros() as u64);
            offset = (offset + block.len() as u64) % wrap;
        }
        let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
        let cpu_us = cpu
            .zip(thread_cpu())
            .map(|(a, b)| b.saturating_sub(a).as_secs_f64() * 1e6 / lat.len().max(1) as f64);
        lat.sort_unstable();
        Ok(SyncRate {
            rate,
            p50: percentile(&lat, 0.50),
            p99: percentile(&lat, 0.99),
            cpu_us,
        })
    };
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(&path)
    };

    // Appends: offsets run on past the end, so the file grows with every write.
    let f = open()?;
    let append = measure(&f, u64::MAX)?;
    drop(f);
    std::fs::remove_file(&path)?;

    // A sparse file of fixed size, written front to back.
    let f = open()?;
    f.set_len(sparse_size)?;
    f.sync_all()?;
    let sparse = measure(&f, sparse_size)?;
    drop(f);
    std::fs::remove_file(&path)?;

    // Blocks written and synced beforehand, overwritten in place.
    let f = open()?;
    let zeros = vec![0u8; 1024 * 1024];
    let mut at = 0;
    while at < written_size {
        f.write_all_at(&zeros, at)?;
        at += zeros.len() as u64;
    }
    f.sync_all()?;
    let in_place = measure(&f, written_size)?;
    drop(f);
    std::fs::remove_file(&path)?;
    Ok([append, sparse, in_place])
}

/// A request frame of the same shape as a relay `Send` with an envelope of `len` bytes.
fn send_frame(mailbox: &MailboxKeys, id: u64, len: usize) -> Result<Vec<u8>> {
    let mut envelope_id = [0u8; 16];
    envelope_id[..8].copy_from_slice(&id.to_be_bytes());
    envelope_id[8..].copy_from_slice(&rand_tail());
    let request = handover_tests::client::request(wire::request::Kind::Send(wire::Send {
        send_id: mailbox.send_id.clone(),
        capability: mailbox.capability.to_vec(),
        envelope: Some(wire::Envelope {
            envelope_id: envelope_id.to_vec(),
            expires_at: unix_now() + 600,
            ciphertext: vec![0xc5; len],
        }),
    }));
    Ok(frame::encode(&request)?)
}

fn rand_tail() -> [u8; 8] {
    let mut tail = [0u8; 8];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut tail);
    tail
}

/// One request on a fresh stream; returns the response payload.
async fn round_trip(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    let _ = send.finish();
    let response = read_frame(&mut recv, MAX_FRAME_LEN)
        .await?
        .ok_or("no response")?;
    // The answer ends the stream: reading the end now spares a STOP_SENDING (as the relay's
    // client does).
    handover_relay::server::recv_ended_now(&mut recv);
    Ok(response)
}

/// One request on a fresh stream; whether it was answered (with `SendAccepted`, if
/// `check_accepted`).
async fn answered(conn: &quinn::Connection, bytes: &[u8], check_accepted: bool) -> bool {
    match round_trip(conn, bytes).await {
        Ok(payload) => {
            !check_accepted
                || matches!(
                    handover_proto::decode::response(&payload).map(|r| r.kind),
                    Ok(Some(wire::response::Kind::SendAccepted(_)))
                )
        }
        Err(_) => false,
    }
}

/// The relay's group commit without its work: a thread takes every waiter queued so far,
/// sleeps for the round (where the relay writes and syncs its log), hands the round to a task
/// that releases the waiters, and starts the next round at once if more are waiting.
struct SimulatedCommit {
    state: std::sync::Mutex<SimulatedState>,
    wake: std::sync::Condvar,
}

#[derive(Default)]
struct SimulatedState {
    waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    /// The thread is blocked on `wake`.
    idle: bool,
    closed: bool,
}

impl SimulatedCommit {
    /// Starts the thread (named as a server thread, so that the CPU split counts it there) and
    /// the releasing task, on the current runtime.
    fn start(round: Duration) -> Result<Arc<Self>> {
        let commit = Arc::new(Self {
            state: std::sync::Mutex::new(SimulatedState::default()),
            wake: std::sync::Condvar::new(),
        });
        let (release, mut rounds) =
            tokio::sync::mpsc::unbounded_channel::<Vec<tokio::sync::oneshot::Sender<()>>>();
        tokio::spawn(async move {
            while let Some(waiters) = rounds.recv().await {
                for waiter in waiters {
                    let _ = waiter.send(());
                }
            }
        });
        let shared = commit.clone();
        std::thread::Builder::new()
            .name("handover-simcommit".into())
            .spawn(move || {
                loop {
                    let round_waiters = {
                        let mut state = shared.lock();
                        while state.waiters.is_empty() && !state.closed {
                            state.idle = true;
                            state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                        }
                        state.idle = false;
                        if state.closed {
                            return;
                        }
                        std::mem::take(&mut state.waiters)
                    };
                    std::thread::sleep(round);
                    if release.send(round_waiters).is_err() {
                        return;
                    }
                }
            })?;
        Ok(commit)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimulatedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the end of the next round.
    async fn durable(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut state = self.lock();
            state.waiters.push(tx);
            if state.idle {
                state.idle = false;
                self.wake.notify_one();
            }
        }
        let _ = rx.await;
    }

    /// Ends the thread after its current round.
    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }
}

/// The raw quinn echo server: reads one frame per stream and writes it back, after a round of
/// `commit` if given.
async fn echo_server(
    dir: &std::path::Path,
    udp_buffer: usize,
    commit: Option<Arc<SimulatedCommit>>,
) -> Result<(quinn::Endpoint, [u8; 32])> {
    let (mut config, pin) = handover_tests::client::bare_server_config(dir)?;
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(1024u32.into());
    config.transport_config(Arc::new(transport));
    // The relay's socket buffer, so that both drop datagrams alike.
    let (socket, _) =
        handover_relay::server::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0)), udp_buffer)?;
    let runtime = quinn::default_runtime().ok_or("no async runtime for QUIC")?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime,
    )?;
    let server = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let commit = commit.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let commit = commit.clone();
                    tokio::spawn(async move {
                        if let Ok(Some(payload)) = read_frame(&mut recv, MAX_FRAME_LEN).await {
                            handover_relay::server::recv_ended_now(&mut recv);
                            if let Some(commit) = &commit {
                                commit.durable().await;
                            }
                            let mut out = (payload.len() as u32).to_be_bytes().to_vec();
                            out.extend_from_slice(&payload);
                            if send.write_all(&out).await.is_ok() {
                                let _ = send.finish();
                                let _ = send.stopped().await;
                            }
                        }
                    });
                }
            });
        }
    });
    Ok((endpoint, pin))
}

async fn connect_raw(addr: SocketAddr, pin: [u8; 32]) -> Result<quinn::Connection> {
    let mut endpoint = client_endpoint()?;
    endpoint.set_default_client_config(client_config(pin)?);
    Ok(endpoint.connect(addr, "handover-relay")?.await?)
}

/// Runs `workers` closed loops over `conns` for `secs`; returns completed operations per second.
async fn closed_loop(
    conns: &[quinn::Connection],
    mailboxes: &[MailboxKeys],
    streams: usize,
    len: usize,
    secs: u64,
    check_accepted: bool,
) -> Result<(f64, u64)> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, conn) in conns.iter().enumerate() {
        for s in 0..streams {
            let conn = conn.clone();
            let mailbox = mailboxes[c].clone();
            let done = done.clone();
            let failed = failed.clone();
            let worker = (c * streams + s) as u64;
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline && done.load(Ordering::Relaxed) < MAX_OPS_PER_PHASE
                {
                    let Ok(bytes) = send_frame(&mailbox, (worker << 40) | n, len) else {
                        break;
                    };
                    n += 1;
                    if answered(&conn, &bytes, check_accepted).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await?;
    }
    let failures = failed.load(Ordering::Relaxed);
    if failures > 0 {
        println!("  ({failures} requests failed or were refused)");
    }
    let done = done.load(Ordering::Relaxed);
    Ok((done as f64 / start.elapsed().as_secs_f64(), done))
}

/// Paced open-ish loop at `rate` ops/s over all workers; returns the answered requests and
/// the number that failed or were refused.
async fn paced(
    conns: &[quinn::Connection],
    mailboxes: &[MailboxKeys],
    streams: usize,
    len: usize,
    secs: u64,
    rate: f64,
    check_accepted: bool,
) -> Result<(Vec<Sample>, u64)> {
    let workers = conns.len() * streams;
    let start = Instant::now();
    let per_worker = rate / workers as f64;
    let period = Duration::from_secs_f64(1.0 / per_worker.max(0.001));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (c, conn) in conns.iter().enumerate() {
        for s in 0..streams {
            let conn = conn.clone();
            let mailbox = mailboxes[c].clone();
            let worker = (c * streams + s) as u64;
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut failed = 0u64;
                // Spread the workers' phases over one period.
                let offset = period.mul_f64(worker as f64 / workers as f64);
                let mut ticker =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = 0u64;
                while Instant::now() < deadline && n < MAX_OPS_PER_PHASE {
                    ticker.tick().await;
                    let Ok(bytes) = send_frame(&mailbox, (1 << 62) | (worker << 40) | n, len)
                    else {
                        break;
                    };
                    n += 1;
                    let t = Instant::now();
                    let accepted = answered(&conn, &bytes, check_accepted).await;
                    if accepted {
                        lat.push(Sample {
                            at: (t - start).as_micros() as u64,
                            latency: t.elapsed().as_micros() as u64,
                        });
                    } else {
                        failed += 1;
                    }
                }
                (lat, failed)
            }));
        }
    }
    let mut all = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (lat, f) = t.await?;
        all.extend(lat);
        failed += f;
    }
    Ok((all, failed))
}

/// Group-commit totals from the relay's metrics: syncs, writers released, seconds syncing,
/// and syncs that took longer than [`SLOW_SYNC_SECONDS`] and twice that.
#[derive(Clone, Copy, Default)]
struct Commits {
    syncs: f64,
    writers: f64,
    seconds: f64,
    slow: f64,
    slower: f64,
    disk_seconds: f64,
    disk_slow: f64,
    disk_slower: f64,
}

/// A sync slower than this (a bound of the relay's `commit_seconds` histogram) counts as slow.
const SLOW_SYNC_SECONDS: f64 = 0.0016;

impl Commits {
    fn read(relay: &Relay) -> Self {
        let text = relay.metrics().encode();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        // Syncs above `bound`: the total minus the cumulative count of the bucket whose upper
        // bound is `bound` (bounds are printed as floats, so compare with a tolerance).
        let above = |metric: &str, bound: f64| -> f64 {
            let bucket = format!("handover_relay_{metric}_bucket{{le=\"");
            let within = text
                .lines()
                .filter_map(|l| l.strip_prefix(bucket.as_str()))
                .filter_map(|l| {
                    let (le, count) = l.split_once("\"} ")?;
                    Some((le.parse::<f64>().ok()?, count.trim().parse::<f64>().ok()?))
                })
                .find(|(le, _)| (le / bound - 1.0).abs() < 1e-6)
                .map(|(_, count)| count)
                .unwrap_or(f64::NAN);
            value(&format!("handover_relay_{metric}_count")) - within
        };
        Self {
            syncs: value("handover_relay_commit_batch_size_count"),
            writers: value("handover_relay_commit_batch_size_sum"),
            seconds: value("handover_relay_commit_seconds_sum"),
            slow: above("commit_seconds", SLOW_SYNC_SECONDS),
            slower: above("commit_seconds", 2.0 * SLOW_SYNC_SECONDS),
            disk_seconds: value("handover_relay_store_sync_seconds_sum"),
            disk_slow: above("store_sync_seconds", SLOW_SYNC_SECONDS),
            disk_slower: above("store_sync_seconds", 2.0 * SLOW_SYNC_SECONDS),
        }
    }

    /// One line on the group commits since `before`, over `secs` of wall time.
    fn since(self, before: Self, secs: f64) -> String {
        let syncs = self.syncs - before.syncs;
        if syncs < 1.0 {
            return "  group commit: no syncs".into();
        }
        format!(
            "  group commit: {:.0} syncs/s, {:.1} sends per sync, {:.3} ms per sync; \
             {:.0} rounds over {} ms, {:.0} over {} ms",
            syncs / secs,
            (self.writers - before.writers) / syncs,
            (self.seconds - before.seconds) * 1000.0 / syncs,
            self.slow - before.slow,
            SLOW_SYNC_SECONDS * 1000.0,
            self.slower - before.slower,
            2.0 * SLOW_SYNC_SECONDS * 1000.0,
        ) + &format!(
            "\n  store sync alone: {:.3} ms per sync; {:.0} syncs over {} ms, {:.0} over {} ms",
            (self.disk_seconds - before.disk_seconds) * 1000.0 / syncs,
            self.disk_slow - before.disk_slow,
            SLOW_SYNC_SECONDS * 1000.0,
            self.disk_slower - before.disk_slower,
            2.0 * SLOW_SYNC_SECONDS * 1000.0,
        )
    }
}

/// Transport counters of the client connections so far (quinn's): datagrams sent and received,
/// packets declared lost and congestion events.
#[derive(Clone, Copy, Default)]
struct Transport {
    sent: u64,
    received: u64,
    lost: u64,
    congestion: u64,
    /// Datagrams the kernel dropped for a full socket receive buffer, machine-wide (`None`
    /// where `/proc/net/snmp` is not available).
    dropped: Option<u64>,
}

/// The kernel's count of UDP datagrams dropped for a full receive buffer (`RcvbufErrors` in
/// `/proc/net/snmp`, Linux).
fn udp_receive_drops() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

impl Transport {
    fn read(conns: &[quinn::Connection]) -> Self {
        conns.iter().map(quinn::Connection::stats).fold(
            Self {
                dropped: udp_receive_drops(),
                ..Self::default()
            },
            |t, s| Self {
                sent: t.sent + s.udp_tx.datagrams,
                received: t.received + s.udp_rx.datagrams,
                lost: t.lost + s.path.lost_packets,
                congestion: t.congestion + s.path.congestion_events,
                dropped: t.dropped,
            },
        )
    }

    /// One line on the transport since `before`, per request.
    fn since(self, before: Self, requests: usize) -> String {
        let n = requests.max(1) as f64;
        format!(
            "  quic (client side): {:.2} datagrams sent and {:.2} received per request; {} packets \
             declared lost, {} congestion events; {} datagrams dropped by full UDP buffers",
            self.sent.saturating_sub(before.sent) as f64 / n,
            self.received.saturating_sub(before.received) as f64 / n,
            self.lost.saturating_sub(before.lost),
            self.congestion.saturating_sub(before.congestion),
            match (self.dropped, before.dropped) {
                (Some(a), Some(b)) => a.saturating_sub(b).to_string(),
                _ => "n/a".into(),
            }
        )
    }
}

/// A bystander thread that sleeps 1 ms at a time and records how much later than asked it woke
/// up: what the machine (other work, the hypervisor) takes from a thread that wants to run. A
/// phase's latency tail next to its stalls tells the relay's own delays from the machine's.
struct StallWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Duration>>,
}

/// Oversleep that counts as a stall.
const STALL: Duration = Duration::from_millis(2);

impl StallWatch {
    fn start() -> Result<Self> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("loadgen-stalls".into())
            .spawn(move || {
                let mut stalls = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    let asked = Duration::from_millis(1);
                    let t = Instant::now();
                    std::thread::sleep(asked);
                    let late = t.elapsed().saturating_sub(asked);
                    if late >= STALL {
                        stalls.push(late);
                    }
                }
                stalls
            })?;
        Ok(Self { stop, thread })
    }

    /// Stops the thread; one line on the stalls it saw.
    fn finish(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        let stalls = self.thread.join().unwrap_or_default();
        let longest = stalls.iter().max().copied().unwrap_or_default();
        let total: Duration = stalls.iter().sum();
        format!(
            "  stalls: an idle thread woke {} times over {} ms late (longest {:.1} ms, {:.0} ms in all)",
            stalls.len(),
            STALL.as_millis(),
            longest.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3
        )
    }
}

/// The process's CPU time and context switches, from `/proc` (Linux; `None` elsewhere). The
/// relay and the load generator share the process, so a phase's figures cover both ends, as
/// do the echo's: their difference is what the relay adds.
#[derive(Clone, Copy)]
struct CpuUsage {
    /// User and system CPU seconds of all threads.
    user: f64,
    system: f64,
    /// Voluntary (blocked or yielded) and involuntary (preempted) switches of the live threads.
    voluntary: u64,
    involuntary: u64,
    /// Page faults that needed no disk read: on this kind of virtual machine, mostly memory
    /// the process touches for the first time (docs/PERFORMANCE.md, "Machine").
    minor_faults: u64,
}

impl CpuUsage {
    fn read() -> Option<Self> {
        // Fields after the command name's closing parenthesis: state is field 3, minflt 10,
        // utime 14, stime 15 (man 5 proc), times in clock ticks of 1/100 s on Linux.
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks =
            |i: usize| -> Option<f64> { Some(fields.get(i - 3)?.parse::<f64>().ok()? / 100.0) };
        let (mut voluntary, mut involuntary) = (0, 0);
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue; // the thread ended meanwhile
            };
            for line in status.lines() {
                let count = |prefix: &str| -> u64 {
                    line.strip_prefix(prefix)
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0)
                };
                voluntary += count("voluntary_ctxt_switches:");
                involuntary += count("nonvoluntary_ctxt_switches:");
            }
        }
        Some(Self {
            user: ticks(14)?,
            system: ticks(15)?,
            voluntary,
            involuntary,
            minor_faults: fields.get(10 - 3)?.parse().ok()?,
        })
    }

    /// One line on the CPU used per request since `before`.
    fn since(after: Option<Self>, before: Option<Self>, requests: usize, secs: f64) -> String {
        let (Some(a), Some(b)) = (after, before) else {
            return "  cpu: not available on this system".into();
        };
        let n = requests.max(1) as f64;
        let per = |x: f64| x * 1e6 / n;
        format!(
            "  cpu: {:.0} us per request (user {:.0}, system {:.0}), {:.0}% of {} cores; \
             context switches per request: {:.2} voluntary, {:.2} involuntary; \
             minor page faults per request: {:.3}",
            per(a.user - b.user + a.system - b.system),
            per(a.user - b.user),
            per(a.system - b.system),
            (a.user - b.user + a.system - b.system) * 100.0
                / (secs * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64),
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            a.voluntary.saturating_sub(b.voluntary) as f64 / n,
            a.involuntary.saturating_sub(b.involuntary) as f64 / n,
            a.minor_faults.saturating_sub(b.minor_faults) as f64 / n,
        )
    }
}

/// On-CPU time of the servers' threads (the server runtime's workers and blocking threads,
/// named `handover-server`, and the relay's own threads, `handover-commit` and the like) and of
/// everything else (the clients), from each thread's `schedstat` (Linux, nanoseconds). Threads
/// that exit during a phase take their time with them, so the split can miss some of a
/// blocking thread's work; the relay's send path does not use the blocking pool. In the echo's
/// latency phase the relay is running too, idle; its threads count as servers there.
#[derive(Clone, Copy)]
struct SideCpu {
    servers: f64,
    /// The relay's commit thread, counted in `servers` too.
    commit: f64,
    clients: f64,
    /// Time the same threads were runnable but waited for a CPU (`schedstat`'s second field,
    /// the scheduler's run-queue delay): on two cores shared by both ends, each hand-off
    /// between threads can wait there.
    servers_wait: f64,
    commit_wait: f64,
    clients_wait: f64,
    /// How many times those threads were put on a CPU (`schedstat`'s third field).
    servers_runs: f64,
    commit_runs: f64,
    clients_runs: f64,
}

impl SideCpu {
    fn read() -> Option<Self> {
        let mut sum = Self {
            servers: 0.0,
            commit: 0.0,
            clients: 0.0,
            servers_wait: 0.0,
            commit_wait: 0.0,
            clients_wait: 0.0,
            servers_runs: 0.0,
            commit_runs: 0.0,
            clients_runs: 0.0,
        };
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let (Ok(comm), Ok(sched)) = (
                std::fs::read_to_string(task.path().join("comm")),
                std::fs::read_to_string(task.path().join("schedstat")),
            ) else {
                continue; // the thread ended meanwhile
            };
            let mut fields = sched.split_whitespace().map(|v| v.parse::<f64>().ok());
            let (Some(Some(run)), Some(Some(wait)), Some(Some(runs))) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let (run, wait) = (run / 1e9, wait / 1e9);
            if comm.starts_with("handover-") {
                sum.servers += run;
                sum.servers_wait += wait;
                sum.servers_runs += runs;
                if comm.trim_end() == "handover-commit" {
                    sum.commit += run;
                    sum.commit_wait += wait;
                    sum.commit_runs += runs;
                }
            } else {
                sum.clients += run;
                sum.clients_wait += wait;
                sum.clients_runs += runs;
            }
        }
        Some(sum)
    }

    /// One line on the CPU the servers and the clients used per request since `before`, with
    /// the commit thread's share if `relay` (the phase sent to the relay, not the echo).
    fn since(
        after: Option<Self>,
        before: Option<Self>,
        runtimes: Runtimes,
        requests: f64,
        relay: bool,
    ) -> String {
        let (Some(a), Some(b)) = (after, before) else {
            return "  cpu by side: not available on this system".into();
        };
        let per = |x: f64| x * 1e6 / requests.max(1.0);
        // Run-queue waits: per request, and per time a thread was put on a CPU.
        let waits = |wait: f64, runs: f64| {
            format!(
                "{:.1} us per request ({:.2} runs of {:.1} us wait each)",
                per(wait),
                runs / requests.max(1.0),
                wait * 1e6 / runs.max(1.0)
            )
        };
        match runtimes {
            Runtimes::Separate => format!(
                "  cpu by side: servers {:.1} us per request{}, clients {:.1} us\n  \
                 waiting for a CPU: servers {}{}, clients {}",
                per(a.servers - b.servers),
                if relay {
                    format!(
                        " (of which the commit thread {:.1})",
                        per(a.commit - b.commit)
                    )
                } else {
                    String::new()
                },
                per(a.clients - b.clients),
                waits(
                    a.servers_wait - b.servers_wait,
                    a.servers_runs - b.servers_runs
                ),
                if relay {
                    format!(
                        " (the commit thread {})",
                        waits(a.commit_wait - b.commit_wait, a.commit_runs - b.commit_runs)
                    )
                } else {
                    String::new()
                },
                waits(
                    a.clients_wait - b.clients_wait,
                    a.clients_runs - b.clients_runs
                ),
            ),
            Runtimes::Shared => format!(
                "  cpu by side: {:.1} us per request (servers and clients share threads)\n  \
                 waiting for a CPU: {}",
                per(a.servers - b.servers + a.clients - b.clients),
                waits(
                    a.servers_wait - b.servers_wait + a.clients_wait - b.clients_wait,
                    a.servers_runs - b.servers_runs + a.clients_runs - b.clients_runs
                ),
            ),
        }
    }
}

/// Open loop: requests arrive as a Poisson process at `rate` per second (exponential gaps from
/// a generator seeded with `seed`), each on a task of its own, round-robin over the connections.
/// A request's latency runs from its *scheduled* arrival, so a client or pacer that falls behind
/// counts against the result (no coordinated omission). The pacer is an OS thread sleeping
/// until the next arrival (tens of microseconds late at most, counted in the latency), because
/// tokio's timer has a resolution of 1 ms: timer-driven workers fire in synchronised bursts of
/// `rate` / 1000 requests (the `--pacing ticks` mode below). Returns the answered requests
/// and the number that failed or were refused.
async fn open_loop(
    conns: &[quinn::Connection],
    mailboxes: &[MailboxKeys],
    len: usize,
    secs: u64,
    rate: f64,
    seed: u64,
    check_accepted: bool,
) -> Result<(Vec<Sample>, u64)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<Sample>>();
    let runtime = tokio::runtime::Handle::current();
    let conns = conns.to_vec();
    let mailboxes = mailboxes.to_vec();
    let pacer = std::thread::Builder::new()
        .name("loadgen-pacer".into())
        .spawn(move || {
            use rand::SeedableRng;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let start = Instant::now();
            let end = Duration::from_secs(secs);
            let mut at = Duration::ZERO;
            let mut n = 0u64;
            while at < end && n < MAX_OPS_PER_PHASE {
                // Every arrival that is due, then sleep until the next one, but at least one
                // quantum: arrivals are never early, and at most a quantum (plus the wake-up
                // delay) late; the lateness counts in their latency.
                let now = Instant::now();
                while start + at <= now && at < end && n < MAX_OPS_PER_PHASE {
                    let due = start + at;
                    let c = (n as usize) % conns.len();
                    let (conn, mailbox, tx) = (conns[c].clone(), mailboxes[c].clone(), tx.clone());
                    runtime.spawn(async move {
                        let Ok(bytes) = send_frame(&mailbox, (2 << 62) | n, len) else {
                            let _ = tx.send(None);
                            return;
                        };
                        let accepted = answered(&conn, &bytes, check_accepted).await;
                        let sample = Sample {
                            at: at.as_micros() as u64,
                            latency: due.elapsed().as_micros() as u64,
                        };
                        let _ = tx.send(accepted.then_some(sample));
                    });
                    n += 1;
                    // Exponential gap: -ln(U) / rate with U uniform in (0, 1].
                    let u =
                        ((rand::Rng::next_u64(&mut rng) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                    at += Duration::from_secs_f64(-u.ln() / rate.max(0.001));
                }
                let next = (start + at).max(now + PACER_QUANTUM);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })?;
    let mut latencies = Vec::new();
    let mut failed = 0u64;
    // Ends once the pacer and every request task have dropped their senders.
    while let Some(result) = rx.recv().await {
        match result {
            Some(sample) => latencies.push(sample),
            None => failed += 1,
        }
    }
    pacer.join().map_err(|_| "the pacer thread panicked")?;
    Ok((latencies, failed))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Prints a latency phase of an echo server: its percentiles after `label`, then the lines that
/// explain its tail.
fn report_latency(label: &str, sorted: &[u64], lines: Vec<String>) {
    println!(
        "{label} p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms",
        percentile(sorted, 0.50),
        percentile(sorted, 0.99),
        percentile(sorted, 0.999)
    );
    for line in lines {
        println!("{line}");
    }
}

/// Closes an echo server's client connections and its endpoint.
fn close_echo(endpoint: &quinn::Endpoint, conns: &[quinn::Connection]) {
    for c in conns {
        c.close(0u8.into(), b"done");
    }
    endpoint.close(0u8.into(), b"done");
}

/// The relay's configuration for the load: loopback, no admin endpoint, rate limits off and
/// quotas lifted.
fn relay_limits(mut config: Config, args: &Args) -> Config {
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin = None;
    config.requests_per_sec = 0;
    config.address_requests_per_sec = 0;
    config.connection_creations_per_min = 0;
    config.address_creations_per_min = 0;
    config.wal_mib = args.wal_mib;
    config.udp_buffer_bytes = args.udp_buffer_bytes;
    config.max_streams = (args.streams as u32).max(1) * 2;
    config.limits.mailbox_max_envelopes = u64::MAX;
    config.limits.mailbox_max_bytes = u64::MAX;
    config.limits.relay_max_envelopes = u64::MAX;
    config.limits.relay_max_bytes = u64::MAX;
    config
}

/// The relay's SQL per send (tests/bench/pg-send.sql) run by pgbench with `clients` clients
/// for `args.secs`, on the relay's database and the load's mailboxes (client c sends to
/// mailbox c % mailboxes, bodies of `--envelope-bytes`, quotas lifted as in the relay's run).
/// Returns the transactions per second (without connection time) and pgbench's summary lines.
async fn pgbench(
    args: &Args,
    url: &str,
    mailboxes: &[MailboxKeys],
    dir: &std::path::Path,
    clients: usize,
) -> Result<(f64, Vec<String>)> {
    const SCRIPT: &str = include_str!("../../bench/pg-send.sql");
    let script = dir.join("pg-send.sql");
    std::fs::write(&script, SCRIPT)?;
    let mut cmd = std::process::Command::new(&args.pgbench);
    cmd.args(["-n", "-M", "prepared"])
        .arg(format!("--client={clients}"))
        .arg(format!("--jobs={}", clients.min(2)))
        .arg(format!("--time={}", args.secs))
        .arg("-f")
        .arg(&script)
        .arg(format!("--define=mailboxes={}", mailboxes.len()));
    for (i, m) in mailboxes.iter().enumerate() {
        cmd.arg(format!("--define=send{i}=\\x{}", hex::encode(&m.send_id)));
    }
    let recv = mailboxes.first().map(|m| hex::encode(&m.recv_id));
    cmd.arg(format!(
        "--define=body=\\x{}",
        "c5".repeat(args.envelope_bytes)
    ))
    .arg(format!("--define=expires={}", unix_now() + 600))
    // Another node's id (the relay's is never 0), a receive id's length.
    .arg(format!(
        "--define=wake=00000000:{}",
        recv.unwrap_or_default()
    ))
    .arg(format!("--define=quota={}", i64::MAX))
    .arg(url);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "pgbench failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("no tps in pgbench's output: {stdout}"))?;
    let lines = stdout
        .lines()
        .filter(|l| {
            l.starts_with("number of transactions actually processed")
                || l.starts_with("number of failed transactions")
                || l.starts_with("latency average")
        })
        .map(str::to_owned)
        .collect();
    Ok((tps, lines))
}

/// Runs every phase; the relay and the echo server are started on `servers`.
async fn run(args: Args, servers: tokio::runtime::Handle) -> Result<()> {
    let base = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir_in(".")?,
    };
    println!(
        "handover-loadgen: {} connections x {} streams, {} B envelopes, {} s per phase, loopback, {} CPUs, servers in {} runtime",
        args.connections,
        args.streams,
        args.envelope_bytes,
        args.secs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        match args.runtimes {
            Runtimes::Separate => "a separate",
            Runtimes::Shared => "the clients'",
        }
    );

    let [append, sparse, in_place] = fdatasync_rates(base.path(), args.secs.min(2))?;
    println!("{}", append.line("1 KiB appends:"));
    println!("{}", sparse.line("1 KiB into a sparse file (the log):"));
    println!("{}", in_place.line("1 KiB in place:"));

    // Raw echo of the same shape.
    let echo_dir = base.path().join("echo");
    let udp_buffer_bytes = args.udp_buffer_bytes;
    let (echo, echo_pin) = servers
        .spawn(async move { echo_server(&echo_dir, udp_buffer_bytes, None).await })
        .await??;
    let echo_addr = echo.local_addr()?;
    let mut echo_conns = Vec::new();
    for _ in 0..args.connections {
        echo_conns.push(connect_raw(echo_addr, echo_pin).await?);
    }
    let fake = MailboxKeys {
        key: ed25519_dalek::SigningKey::from_bytes(&[1; 32]),
        recv_id: vec![0; 16],
        send_id: vec![0; 16],
        capability: [0; 32],
    };
    let fakes = vec![fake; args.connections];
    let cpu = SideCpu::read();
    let (echo_rate, echoed) = closed_loop(
        &echo_conns,
        &fakes,
        args.streams,
        args.envelope_bytes,
        args.secs,
        false,
    )
    .await?;
    println!(
        "raw quinn echo ({}x{}):                  {echo_rate:>10.0} req/s",
        args.connections, args.streams
    );
    println!(
        "{}",
        SideCpu::since(SideCpu::read(), cpu, args.runtimes, echoed as f64, false)
    );

    // The relay, in process, over the real sled store (or a fresh PostgreSQL database).
    if args.memory_store && args.store.is_some() {
        return Err("--memory-store and --store exclude each other".into());
    }
    if args.nodes == 0 || (args.nodes > 1 && args.store.is_none()) {
        return Err("--nodes above 1 needs --store (the nodes share a database)".into());
    }
    if args.store.is_some() && args.connections > 8 {
        return Err(
            "--store runs pgbench over at most 8 mailboxes: --connections 8 at most".into(),
        );
    }
    let database = match &args.store {
        Some(server) => Some(TestDatabase::create_on(server)?),
        None => None,
    };
    let relay_config = |node: usize| {
        let mut config = Config::new(base.path().join(format!("relay{node}")));
        if let Some(db) = &database {
            config.store = StoreLocation::Postgres(db.url.clone());
            config.store_pool_size = args.store_pool_size;
        }
        relay_limits(config, &args)
    };
    let relay = if args.memory_store {
        let store: Arc<dyn handover_relay::store::Store> = Arc::new(
            handover_relay::store::MemoryStore::new(handover_relay::store::MemoryBackend::new()),
        );
        println!("(relay over the in-memory store: NOT durable)");
        servers
            .spawn(Relay::start_with_store(relay_config(0), store))
            .await??
    } else {
        servers.spawn(Relay::start(relay_config(0))).await??
    };
    let mut others = Vec::new();
    for node in 1..args.nodes {
        others.push(servers.spawn(Relay::start(relay_config(node))).await??);
    }
    if database.is_some() {
        println!(
            "(relay on PostgreSQL, a fresh database: {} node(s), each with {} connections for requests)",
            args.nodes, args.store_pool_size
        );
    }
    let mut clients = Vec::new();
    let mut mailboxes = Vec::new();
    for c in 0..args.connections {
        let node = match c % args.nodes {
            0 => &relay,
            n => &others[n - 1],
        };
        let c = Client::connect(node.local_addr(), node.pin()).await?;
        mailboxes.push(c.create_mailbox().await?);
        clients.push(c);
    }
    let conns: Vec<quinn::Connection> = clients.iter().map(|c| c.conn.clone()).collect();
    let secs = args.secs as f64;
    let before = Commits::read(&relay);
    let cpu = SideCpu::read();
    let (peak, sent) = closed_loop(
        &conns,
        &mailboxes,
        args.streams,
        args.envelope_bytes,
        args.secs,
        true,
    )
    .await?;
    println!(
        "relay {} sends ({}x{}):              {peak:>10.0} /s   ratio to echo {:.2} (target >= 0.5)",
        if args.memory_store {
            "in-memory"
        } else {
            "durable"
        },
        args.connections,
        args.streams,
        peak / echo_rate
    );
    let side = SideCpu::read();
    let after = Commits::read(&relay);
    println!("{}", after.since(before, secs));
    println!(
        "{}",
        SideCpu::since(side, cpu, args.runtimes, sent as f64, true)
    );

    if let Some(db) = &database {
        let counts = if args.pgbench_clients.is_empty() {
            vec![args.store_pool_size * args.nodes]
        } else {
            args.pgbench_clients.clone()
        };
        for clients in counts.into_iter().filter(|&c| c > 0) {
            let (tps, lines) = pgbench(&args, &db.url, &mailboxes, base.path(), clients).await?;
            println!(
                "pgbench, the relay's SQL per send ({clients} clients): {tps:>10.0} tps   relay / pgbench {:.2} (target >= 0.5)",
                peak / tps
            );
            for line in lines {
                println!("  pgbench: {line}");
            }
        }
    }

    let half = args.rate.unwrap_or(peak / 2.0);
    let (lat, failed, lines) =
        measured_latency(&args, &conns, &mailboxes, half, Some(&relay), true).await?;
    let achieved = lat.len() as f64 / args.secs as f64;
    println!(
        "relay at {} ({half:.0}/s offered, {achieved:.0}/s done, {:?} pacing): p50 {:.2} ms  p99 {:.2} ms  (target p99 <= 5 ms)  p99.9 {:.2} ms",
        if args.rate.is_some() {
            "fixed rate"
        } else {
            "half peak"
        },
        args.pacing,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999)
    );
    if failed > 0 {
        println!("  ({failed} requests failed or were refused)");
    }
    for line in lines {
        println!("{line}");
    }

    let (echo_lat, _, lines) =
        measured_latency(&args, &echo_conns, &fakes, half, None, false).await?;
    report_latency(
        "raw echo at the same rate and pacing:     ",
        &echo_lat,
        lines,
    );
    close_echo(&echo, &echo_conns);

    if args.simulated_sync_us > 0 {
        let round = Duration::from_micros(args.simulated_sync_us);
        let dir = base.path().join("echo-simulated");
        let (endpoint, pin, commit) = servers
            .spawn(async move {
                let commit = SimulatedCommit::start(round)?;
                let (endpoint, pin) =
                    echo_server(&dir, udp_buffer_bytes, Some(commit.clone())).await?;
                Ok::<_, BoxError>((endpoint, pin, commit))
            })
            .await??;
        let addr = endpoint.local_addr()?;
        let mut conns = Vec::new();
        for _ in 0..args.connections {
            conns.push(connect_raw(addr, pin).await?);
        }
        let (lat, _, lines) = measured_latency(&args, &conns, &fakes, half, None, false).await?;
        let label = format!(
            "echo behind a simulated group commit ({} us rounds, same rate):",
            args.simulated_sync_us
        );
        report_latency(&label, &lat, lines);
        close_echo(&endpoint, &conns);
        commit.close();
    }

    let before = Commits::read(&relay);
    let (single, _) = closed_loop(
        &conns[..1],
        &mailboxes[..1],
        1,
        args.envelope_bytes,
        args.secs,
        true,
    )
    .await?;
    println!(
        "relay single sender, 1 stream:           {single:>10.0} /s   ratio to in-place fdatasync {:.2}, to the sparse file's {:.2}",
        single / in_place.rate,
        single / sparse.rate
    );
    println!("{}", Commits::read(&relay).since(before, secs));
    for c in &clients {
        c.conn.close(0u8.into(), b"done");
    }
    for other in others {
        servers.spawn(other.shutdown()).await?;
    }
    servers.spawn(relay.shutdown()).await?;
    // The fresh database, if any, is dropped here, after the relays.
    drop(database);
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("handover-loadgen: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let servers = match args.runtimes {
        Runtimes::Shared => None,
        Runtimes::Separate => match tokio::runtime::Builder::new_multi_thread()
            .thread_name("handover-server")
            .enable_all()
            .build()
        {
            Ok(rt) => Some(rt),
            Err(err) => {
                eprintln!("handover-loadgen: {err}");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    let handle = servers
        .as_ref()
        .map_or_else(|| runtime.handle().clone(), |rt| rt.handle().clone());
    let result: std::result::Result<(), BoxError> = runtime.block_on(run(args, handle));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("handover-loadgen: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
