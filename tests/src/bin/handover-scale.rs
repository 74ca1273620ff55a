//! Relay scale figures (issue 19), each next to a peer measured in the same run:
//!
//! 1. resident memory per idle QUIC connection at `--connections` connections, the relay's and
//!    a bare quinn server's (same TLS setup and ALPN), each server in a process of its own and
//!    one client endpoint opening the connections (`VmRSS` from `/proc/<pid>/status` before
//!    and after);
//! 2. resident memory per pending envelope at `--envelopes` pending, fetch p50 / p99 of a
//!    probe mailbox against the empty store and at that many pending (same relay), and the
//!    restart time with them pending (from the process start to its ready line), after a
//!    `SIGKILL` (recovery loads the newest index checkpoint the sweeper wrote and replays the
//!    log after it) and after a `SIGTERM` (shutdown writes an index checkpoint; recovery
//!    replays almost nothing);
//! 3. log size against live data after `--segments` log segments were written with one
//!    30-day envelope per segment and the rest acknowledged.
//!
//! The relay is the real one, as a separate process (`--relay-bin`, e.g.
//! `target/release/relay-under-test`), with its connection and rate limits raised for the
//! run. Loopback only; every phase is bounded in count and every wait in time.
//!
//! `cargo run --release -p handover-tests --bin handover-scale -- --help`

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use handover_proto::frame;
use handover_proto::limits::{MAX_FRAME_LEN, MAX_IDS_PER_REQUEST};
use handover_proto::relay::v1 as wire;
use handover_tests::Result;
use handover_tests::client::{
    Client, MailboxKeys, client_config, client_endpoint, read_frame, unix_now,
};

/// Scale figures for the Handover relay.
#[derive(Debug, Parser)]
#[command(name = "handover-scale")]
struct Args {
    /// The relay binary to measure (`relay-under-test` or `handover-relay`).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Directory for the relays' data (on the real disk, not a tmpfs).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Idle connections opened to each server.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Pending envelopes for the memory, fetch and restart figures.
    #[arg(long, default_value_t = 1_000_000)]
    envelopes: u64,
    /// Ciphertext bytes per envelope.
    #[arg(long, default_value_t = 256)]
    envelope_bytes: usize,
    /// Timed fetches of the probe mailbox, before and after the fill.
    #[arg(long, default_value_t = 2_000)]
    fetches: usize,
    /// 30-day envelopes kept in the log-size phase, at least one per log segment written.
    #[arg(long, default_value_t = 64)]
    segments: u64,
    /// Log segment size of the relays, MiB.
    #[arg(long, default_value_t = 64)]
    wal_mib: u64,
    /// Log segment size in the log-size phase, MiB.
    #[arg(long, default_value_t = 1)]
    log_phase_wal_mib: u64,
    /// Ciphertext bytes per envelope in the log-size phase.
    #[arg(long, default_value_t = 1024)]
    log_phase_envelope_bytes: usize,
    /// Run only as the bare quinn server of phase 1, with its data in this directory (used by
    /// the program itself: it starts a copy of itself in this mode).
    #[arg(long, hide = true)]
    bare_server: Option<PathBuf>,
}

/// How long a server may take to print its ready line (the restart with a million envelopes
/// pending included).
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// Most handshakes in flight while opening the idle connections.
const HANDSHAKES_IN_FLIGHT: usize = 64;
/// Most sends in flight while filling the store: connections × streams.
const FILL_CONNECTIONS: usize = 4;
const FILL_STREAMS: usize = 64;
/// Envelopes queued in the probe mailbox that the timed fetches read.
const PROBE_ENVELOPES: usize = 10;
/// Settling time before a server's memory is read.
const SETTLE: Duration = Duration::from_secs(1);
/// The longest time to live the relay accepts by default is 30 days; a minute less.
const THIRTY_DAYS: u64 = 30 * 86_400 - 60;

/// More than a log record adds to its envelope's ciphertext.
const RECORD_SLACK: u64 = 256;

/// A server in a process of its own, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    pin: [u8; 32],
    /// From the spawn to the ready line.
    started_in: Duration,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
}

impl Server {
    /// Spawns `cmd` and waits for its ready line (one starting with `ready`).
    fn spawn(mut cmd: Command, ready: &'static str) -> Result<Self> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env("RUST_LOG", "warn");
        let started = Instant::now();
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.starts_with(ready) {
                    let _ = tx.send((line, started.elapsed()));
                }
            }
        });
        let Ok((line, started_in)) = rx.recv_timeout(START_TIMEOUT) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no {ready:?} line").into());
        };
        let addr = field(&line, "quic").ok_or("no quic address")?.parse()?;
        let pin: [u8; 32] = hex::decode(field(&line, "pin").ok_or("no pin")?)?
            .try_into()
            .map_err(|_| "pin is not 32 bytes")?;
        Ok(Self {
            child,
            addr,
            pin,
            started_in,
        })
    }

    /// The relay, with its limits raised for `connections` connections and, if `busy`, for
    /// `FILL_STREAMS` and more streams per connection. The idle-connection phase keeps the
    /// default stream limit: quinn keeps state per stream the peer may open, so a higher
    /// limit costs memory in every connection.
    fn relay(bin: &Path, dir: &Path, wal_mib: u64, connections: usize, busy: bool) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--admin", "off", "--data-dir"])
            .arg(dir)
            .args(["--wal-mib", &wal_mib.to_string()])
            .args(["--max-connections", &(connections + 100).to_string()])
            .args(["--retry-above-handshakes", "1000000"])
            .args(["--idle-timeout-secs", "600", "--sweep-interval-secs", "1"])
            .args(["--requests-per-sec", "0", "--address-requests-per-sec", "0"])
            .args(["--connection-creations-per-min", "0"])
            .args(["--address-creations-per-min", "0"])
            .args(["--mailbox-max-envelopes", "100000000"])
            .args(["--mailbox-max-bytes", "1000000000000"])
            .args(["--relay-max-envelopes", "100000000"])
            .args(["--relay-max-bytes", "1000000000000"]);
        if busy {
            cmd.args(["--max-streams", "1024"]);
        }
        Self::spawn(cmd, "handover-relay ready")
    }

    fn bare(dir: &Path) -> Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--bare-server").arg(dir);
        Self::spawn(cmd, "bare-quinn ready")
    }

    fn rss(&self) -> Result<u64> {
        rss_of(self.child.id())
    }

    /// SIGKILL, then waits for the exit.
    fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for the exit (at most `START_TIMEOUT`).
    fn stop(mut self) -> Result<()> {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("the relay did not stop".into())
    }
}

/// `VmRSS` of a process, bytes.
fn rss_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmRSS")?;
    Ok(kib * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The bare quinn server: the relay's TLS setup (its certificate generator, TLS 1.3 with
/// ring, the ALPN) and quinn's default transport; accepts connections and holds them.
/// Prints its ready line and runs until its standard input closes.
fn bare_server(dir: &Path) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let (config, pin) = handover_tests::client::bare_server_config(dir)?;
        let endpoint = quinn::Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let server = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    let _ = conn.closed().await;
                });
            }
        });
        println!(
            "bare-quinn ready quic={} pin={}",
            endpoint.local_addr()?,
            hex::encode(pin)
        );
        // Until the parent closes our standard input (or dies).
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        })
        .await?;
        Result::Ok(())
    })
}

/// Opens `n` connections to `server` from one client endpoint, `HANDSHAKES_IN_FLIGHT` at a
/// time; returns the connections and the RSS growth per connection.
async fn idle_connections(
    server: &Server,
    n: usize,
) -> Result<(quinn::Endpoint, Vec<quinn::Connection>, u64, u64)> {
    let mut endpoint = client_endpoint()?;
    let mut config = client_config(server.pin)?;
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Duration::from_secs(600).try_into().ok());
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    tokio::time::sleep(SETTLE).await;
    let before = server.rss()?;
    let mut conns = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    let mut started = 0;
    while conns.len() < n {
        while started < n && pending.len() < HANDSHAKES_IN_FLIGHT {
            let connecting = endpoint.connect(server.addr, "handover-relay")?;
            pending.spawn(connecting);
            started += 1;
        }
        match pending.join_next().await {
            Some(done) => conns.push(done??),
            None => break,
        }
    }
    tokio::time::sleep(SETTLE).await;
    let after = server.rss()?;
    Ok((endpoint, conns, before, after))
}

async fn phase_connections(args: &Args, bin: &Path, base: &Path) -> Result<()> {
    let n = args.connections;
    let mut per = Vec::new();
    for name in ["relay", "bare quinn"] {
        let dir = base.join(format!("conns-{}", per.len()));
        let server = if per.is_empty() {
            Server::relay(bin, &dir, args.wal_mib, n, false)?
        } else {
            Server::bare(&dir)?
        };
        let started = Instant::now();
        let (endpoint, conns, before, after) =
            tokio::time::timeout(START_TIMEOUT, idle_connections(&server, n)).await??;
        let bytes = after.saturating_sub(before) / n.max(1) as u64;
        println!(
            "idle connections, {name}: {n} open in {:.1} s, RSS {:.1} -> {:.1} MiB, {bytes} B per connection",
            started.elapsed().as_secs_f64(),
            mib(before),
            mib(after),
        );
        endpoint.close(0u32.into(), b"done");
        drop(conns);
        per.push(bytes);
    }
    println!(
        "idle connections: relay / bare quinn per connection {:.2}",
        per[0] as f64 / per[1].max(1) as f64
    );
    Ok(())
}

/// A `Send` request frame.
fn send_frame(mailbox: &MailboxKeys, id: u64, len: usize, expires_at: u64) -> Result<Vec<u8>> {
    let mut envelope_id = [0u8; 16];
    envelope_id[..8].copy_from_slice(&id.to_be_bytes());
    rand::Rng::fill_bytes(&mut rand::rng(), &mut envelope_id[8..]);
    let request = handover_tests::client::request(wire::request::Kind::Send(wire::Send {
        send_id: mailbox.send_id.clone(),
        capability: mailbox.capability.to_vec(),
        envelope: Some(wire::Envelope {
            envelope_id: envelope_id.to_vec(),
            expires_at,
            ciphertext: vec![0xc5; len],
        }),
    }));
    Ok(frame::encode(&request)?)
}

/// One request on a fresh stream; an error unless the relay answered `SendAccepted`.
async fn accepted(conn: &quinn::Connection, bytes: &[u8]) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    let _ = send.finish();
    let payload = read_frame(&mut recv, MAX_FRAME_LEN)
        .await?
        .ok_or("no response")?;
    match handover_proto::decode::response(&payload)?.kind {
        Some(wire::response::Kind::SendAccepted(_)) => Ok(()),
        other => Err(format!("a send was refused: {other:?}").into()),
    }
}

/// Sends `total` envelopes into `mailboxes` (round robin), `FILL_CONNECTIONS` ×
/// `FILL_STREAMS` in flight.
async fn fill(
    clients: &[Client],
    mailboxes: &[MailboxKeys],
    total: u64,
    len: usize,
) -> Result<Duration> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        for s in 0..FILL_STREAMS {
            let conn = client.conn.clone();
            let mailbox = mailboxes[(c * FILL_STREAMS + s) % mailboxes.len()].clone();
            let next = next.clone();
            workers.spawn(async move {
                loop {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    if id >= total {
                        return Result::Ok(());
                    }
                    let bytes = send_frame(&mailbox, id, len, unix_now() + THIRTY_DAYS)?;
                    accepted(&conn, &bytes).await?;
                }
            });
        }
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(started.elapsed())
}

/// `n` timed fetches (first page) of the probe mailbox; sorted latencies, µs.
async fn fetch_latencies(client: &Client, probe: &MailboxKeys, n: usize) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let response = client
            .call(wire::request::Kind::Fetch(wire::Fetch {
                recv_id: probe.recv_id.clone(),
                after_seq: 0,
                limit: 0,
            }))
            .await?;
        let elapsed = started.elapsed();
        match response.kind {
            Some(wire::response::Kind::FetchResult(page))
                if page.envelopes.len() == PROBE_ENVELOPES => {}
            other => return Err(format!("unexpected fetch answer {other:?}").into()),
        }
        out.push(elapsed.as_micros() as u64);
    }
    out.sort_unstable();
    Ok(out)
}

fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// Connects `FILL_CONNECTIONS` clients, a probe mailbox holding `PROBE_ENVELOPES` and
/// authenticated on the first client, and `FILL_CONNECTIONS * FILL_STREAMS` fill mailboxes.
async fn clients_and_mailboxes(
    server: &Server,
    fill_mailboxes: usize,
) -> Result<(Vec<Client>, MailboxKeys, Vec<MailboxKeys>)> {
    let mut clients = Vec::new();
    for _ in 0..FILL_CONNECTIONS {
        clients.push(Client::connect(server.addr, server.pin).await?);
    }
    let probe = clients[0].create_mailbox().await?;
    clients[0].authenticate(&probe).await?;
    for i in 0..PROBE_ENVELOPES {
        let bytes = send_frame(&probe, i as u64, 256, unix_now() + THIRTY_DAYS)?;
        accepted(&clients[0].conn, &bytes).await?;
    }
    let mut mailboxes = Vec::new();
    for i in 0..fill_mailboxes {
        mailboxes.push(clients[i % clients.len()].create_mailbox().await?);
    }
    Ok((clients, probe, mailboxes))
}

async fn phase_pending(args: &Args, bin: &Path, base: &Path) -> Result<()> {
    let dir = base.join("pending");
    let server = Server::relay(bin, &dir, args.wal_mib, 100, true)?;
    let (clients, probe, mailboxes) =
        clients_and_mailboxes(&server, FILL_CONNECTIONS * FILL_STREAMS).await?;
    let empty = fetch_latencies(&clients[0], &probe, args.fetches).await?;
    tokio::time::sleep(SETTLE).await;
    let before = server.rss()?;
    let took = fill(&clients, &mailboxes, args.envelopes, args.envelope_bytes).await?;
    tokio::time::sleep(SETTLE).await;
    let after = server.rss()?;
    let n = args.envelopes;
    println!(
        "pending envelopes: {n} of {} B sent in {:.1} s, RSS {:.1} -> {:.1} MiB, {} B per pending envelope",
        args.envelope_bytes,
        took.as_secs_f64(),
        mib(before),
        mib(after),
        after.saturating_sub(before) / n.max(1)
    );
    let full = fetch_latencies(&clients[0], &probe, args.fetches).await?;
    let (p99_empty, p99_full) = (percentile_ms(&empty, 0.99), percentile_ms(&full, 0.99));
    println!(
        "fetch of {PROBE_ENVELOPES} envelopes, {} times: empty store p50 / p99 {:.3} / {:.3} ms, at {n} pending {:.3} / {:.3} ms, p99 ratio {:.2}",
        args.fetches,
        percentile_ms(&empty, 0.5),
        p99_empty,
        percentile_ms(&full, 0.5),
        p99_full,
        p99_full / p99_empty.max(f64::MIN_POSITIVE)
    );
    for c in &clients {
        c.conn.close(0u32.into(), b"done");
    }
    drop(clients);
    // A crash: the restart loads the newest index checkpoint (if the relay writes them) and
    // replays the log after it.
    server.kill()?;
    let (log, index) = (log_bytes(&dir)?, index_bytes(&dir)?);
    let crashed = Server::relay(bin, &dir, args.wal_mib, 100, true)?;
    println!(
        "restart after SIGKILL with {n} pending: ready in {:.2} s ({:.1} MiB of log allocated, {:.1} MiB of index checkpoints), RSS {:.1} MiB",
        crashed.started_in.as_secs_f64(),
        mib(log.1),
        mib(index),
        mib(crashed.rss()?)
    );
    // A clean stop writes an index checkpoint as of the end of the log.
    crashed.stop()?;
    let (log, index) = (log_bytes(&dir)?, index_bytes(&dir)?);
    let restarted = Server::relay(bin, &dir, args.wal_mib, 100, true)?;
    println!(
        "restart with {n} pending: ready in {:.2} s after SIGTERM ({:.1} MiB of log allocated, {:.1} MiB of index checkpoints), RSS {:.1} MiB",
        restarted.started_in.as_secs_f64(),
        mib(log.1),
        mib(index),
        mib(restarted.rss()?)
    );
    // The probe mailbox came back whole.
    let client = Client::connect(restarted.addr, restarted.pin).await?;
    client.authenticate(&probe).await?;
    fetch_latencies(&client, &probe, 1).await?;
    Ok(())
}

/// Bytes of the index checkpoints (`index-*`) under `dir`.
fn index_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            total += index_bytes(&entry.path())?;
        } else if entry.file_name().to_string_lossy().starts_with("index-") {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Sizes of the log segments under `dir`: (apparent bytes, allocated bytes).
fn log_bytes(dir: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let sub = log_bytes(&entry.path())?;
            total = (total.0 + sub.0, total.1 + sub.1);
        } else if entry.file_name().to_string_lossy().starts_with("seg-") {
            total = (total.0 + meta.len(), total.1 + meta.blocks() * 512);
        }
    }
    Ok(total)
}

async fn phase_log(args: &Args, bin: &Path, base: &Path) -> Result<()> {
    let dir = base.join("log");
    let server = Server::relay(bin, &dir, args.log_phase_wal_mib, 100, true)?;
    let client = Client::connect(server.addr, server.pin).await?;
    let kept = client.create_mailbox().await?;
    let acked = client.create_mailbox().await?;
    client.authenticate(&acked).await?;
    let len = args.log_phase_envelope_bytes;
    // One kept envelope in every `per_segment` sends: a record takes more than its ciphertext
    // (its ids, expiry and checksum, less than `RECORD_SLACK`), so that at least one envelope
    // is kept in each segment written.
    let per_segment = (args.log_phase_wal_mib * 1024 * 1024 / (len as u64 + RECORD_SLACK)).max(2);
    let mut id = 0u64;
    for _ in 0..args.segments {
        let bytes = send_frame(&kept, id, len, unix_now() + THIRTY_DAYS)?;
        id += 1;
        accepted(&client.conn, &bytes).await?;
        let mut left = per_segment - 1;
        while left > 0 {
            let batch = left.min(MAX_IDS_PER_REQUEST as u64 / 4);
            let mut sends = tokio::task::JoinSet::new();
            for _ in 0..batch {
                let bytes = send_frame(&acked, id, len, unix_now() + 600)?;
                id += 1;
                let conn = client.conn.clone();
                sends.spawn(async move { accepted(&conn, &bytes).await });
            }
            while let Some(done) = sends.join_next().await {
                done??;
            }
            left -= batch;
            let ids: Vec<Vec<u8>> = client
                .fetch_all(&acked.recv_id)
                .await?
                .into_iter()
                .filter_map(|q| q.envelope.map(|e| e.envelope_id))
                .collect();
            for chunk in ids.chunks(MAX_IDS_PER_REQUEST) {
                client.ack(&acked.recv_id, chunk.to_vec()).await?;
            }
        }
    }
    // The sweeper compacts every 2 s; give it a few rounds to settle.
    let written = id;
    let mut last = log_bytes(&dir)?;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = log_bytes(&dir)?;
        if now == last {
            break;
        }
        last = now;
    }
    let live = args.segments * len as u64;
    println!(
        "log size: {written} envelopes of {len} B, {} of them 30-day ones (one every {per_segment} sends, at least one per {} MiB segment), the rest acked: log {:.2} MiB ({:.2} MiB allocated), live {:.3} MiB, log / live {:.1} (allocated {:.1})",
        args.segments,
        args.log_phase_wal_mib,
        mib(last.0),
        mib(last.1),
        mib(live),
        last.0 as f64 / live.max(1) as f64,
        last.1 as f64 / live.max(1) as f64,
    );
    drop(server);
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let bin = args
        .relay_bin
        .clone()
        .ok_or("--relay-bin is required (e.g. target/release/relay-under-test)")?;
    let base = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir_in(".")?,
    };
    println!(
        "handover-scale: {} connections, {} pending envelopes of {} B, {} kept envelopes in the log phase, loopback, {} CPUs",
        args.connections,
        args.envelopes,
        args.envelope_bytes,
        args.segments,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    phase_connections(&args, &bin, base.path()).await?;
    phase_pending(&args, &bin, base.path()).await?;
    phase_log(&args, &bin, base.path()).await?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match &args.bare_server {
        Some(dir) => bare_server(&dir.clone()),
        None => tokio::runtime::Runtime::new()
            .map_err(Into::into)
            .and_then(|rt| rt.block_on(run(args))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("handover-scale: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
