//! The `handover-relay` command line: flags, configuration file, logging, signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::config::{Config, FileConfig, parse_org_key, read_creation_token};
use crate::{RelayError, server};

/// Handover relay: stores and forwards sealed envelopes over QUIC (ALPN handover/1).
///
/// Settings come from the TOML file given with --config, then from flags, which win. On start
/// the relay prints one line to stdout:
/// `handover-relay ready quic=ADDR admin=ADDR|off pin=HEX`, where pin is the SHA-256 of the
/// certificate's SubjectPublicKeyInfo that clients pin.
#[derive(Debug, Parser)]
#[command(name = "handover-relay", version, about, long_about)]
pub struct Args {
    /// TOML configuration file (see docs/OPERATIONS.md).
    #[arg(long, short = 'c', env = "HANDOVER_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// UDP address for QUIC [default: 0.0.0.0:4433].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory for the store and the generated certificate [default: ./relay-data].
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Keep the data in PostgreSQL, shared by every relay process given the same URL
    /// (postgres://user[:password]@host[:port]/database) [default: the embedded store in the
    /// data directory]. The password, if any, is never printed.
    #[arg(
        long,
        value_name = "URL",
        env = "HANDOVER_RELAY_STORE",
        hide_env_values = true
    )]
    pub store: Option<crate::config::StoreUrl>,
    /// Connections to PostgreSQL this relay process uses for requests [default: 16].
    #[arg(long)]
    pub store_pool_size: Option<usize>,
    /// TCP address of the admin endpoint (/metrics, /healthz), or "off" [default: 127.0.0.1:9433].
    #[arg(long)]
    pub admin: Option<String>,
    /// Certificate chain PEM file (with --key); default: generate one in the data directory.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key PEM file (with --cert).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Hex Ed25519 root key of an organisation whose members may use the directory (repeatable;
    /// adds to the file's list).
    #[arg(long = "admit-org", value_name = "HEX")]
    pub admit_org: Vec<String>,
    /// Largest envelope ciphertext in bytes [default: 262144, the protocol maximum].
    #[arg(long)]
    pub max_envelope_bytes: Option<usize>,
    /// Largest blob in bytes [default: 104857600].
    #[arg(long)]
    pub max_blob_bytes: Option<u64>,
    /// Total size of all stored blobs in bytes [default: 21474836480 = 20 GiB].
    #[arg(long)]
    pub blob_store_max_bytes: Option<u64>,
    /// Longest time to live of envelopes and blobs, seconds [default: 2592000 = 30 days].
    #[arg(long)]
    pub max_ttl_secs: Option<u64>,
    /// Most envelopes queued per mailbox [default: 10000].
    #[arg(long)]
    pub mailbox_max_envelopes: Option<u64>,
    /// Most ciphertext bytes queued per mailbox [default: 268435456].
    #[arg(long)]
    pub mailbox_max_bytes: Option<u64>,
    /// Most one-time prekeys of each kind stored per mailbox [default: 1000].
    #[arg(long)]
    pub max_one_time_prekeys: Option<u64>,
    /// How long "expired undelivered" tombstones are kept, seconds [default: 604800].
    #[arg(long)]
    pub tombstone_secs: Option<u64>,
    /// Most mailboxes the relay stores [default: 1000000].
    #[arg(long)]
    pub relay_max_mailboxes: Option<u64>,
    /// Most envelopes queued in all mailboxes together [default: 2000000].
    #[arg(long)]
    pub relay_max_envelopes: Option<u64>,
    /// Most ciphertext bytes queued in all mailboxes together [default: 68719476736 = 64 GiB].
    #[arg(long)]
    pub relay_max_bytes: Option<u64>,
    /// Requests per second per connection, 0 = unlimited [default: 200].
    #[arg(long)]
    pub requests_per_sec: Option<u32>,
    /// Request burst per connection [default: 400].
    #[arg(long)]
    pub request_burst: Option<u32>,
    /// Requests per second shared by all connections from one client address (IPv4 address or
    /// IPv6 /64), 0 = unlimited [default: 1000].
    #[arg(long)]
    pub address_requests_per_sec: Option<u32>,
    /// Request burst per client address [default: 2000].
    #[arg(long)]
    pub address_request_burst: Option<u32>,
    /// Mailbox creations per minute per connection, 0 = unlimited [default: 10].
    #[arg(long)]
    pub connection_creations_per_min: Option<u32>,
    /// Mailbox creation burst per connection [default: 20].
    #[arg(long)]
    pub connection_creation_burst: Option<u32>,
    /// Mailbox creations per minute per client address, 0 = unlimited [default: 30].
    #[arg(long)]
    pub address_creations_per_min: Option<u32>,
    /// Mailbox creation burst per client address [default: 100].
    #[arg(long)]
    pub address_creation_burst: Option<u32>,
    /// Concurrent bidirectional streams per connection [default: 128].
    #[arg(long)]
    pub max_streams: Option<u32>,
    /// Open QUIC connections; further ones are refused [default: 10000].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// QUIC handshakes in progress from which a client must first prove its address with a
    /// QUIC Retry (one more round trip); 0 = always [default: 64].
    #[arg(long)]
    pub retry_above_handshakes: Option<usize>,
    /// Largest request frame in bytes [default: 524288].
    #[arg(long)]
    pub max_request_frame: Option<usize>,
    /// Seconds between expiry sweeps [default: 60].
    #[arg(long)]
    pub sweep_interval_secs: Option<u64>,
    /// Seconds to let in-flight requests finish on SIGTERM/SIGINT [default: 10].
    #[arg(long)]
    pub shutdown_grace_secs: Option<u64>,
    /// Idle timeout of QUIC connections, seconds [default: 60].
    #[arg(long)]
    pub idle_timeout_secs: Option<u64>,
    /// Size of each log segment of the store, MiB; a full segment starts the
    /// next one and a background checkpoint [default: 64].
    #[arg(long)]
    pub wal_mib: Option<u64>,
    /// Kernel receive and send buffer asked for the QUIC socket, bytes; Linux grants at most
    /// net.core.rmem_max / wmem_max (the relay logs a warning if it got less)
    /// [default: 4194304].
    #[arg(long)]
    pub udp_buffer_bytes: Option<usize>,
    /// File holding the relay's mailbox-creation token: if given, CreateMailbox must carry
    /// it (UNAUTHORISED otherwise). Hand it to your network's users like a password
    /// [default: anyone may create mailboxes].
    #[arg(long, value_name = "FILE")]
    pub creation_token_file: Option<PathBuf>,
    /// Free space the data directory's file system must keep, bytes: below it, requests that
    /// add data (sends, mailbox creation, prekeys, blobs) are refused with UNAVAILABLE while
    /// acks, deletions and expiry sweeps go on [default: 268435456 = 256 MiB].
    #[arg(long)]
    pub min_free_bytes: Option<u64>,
    /// Log filter (tracing EnvFilter syntax), also from RUST_LOG [default: info]. A bare level
    /// (`debug`, `trace`) applies to the relay's own crates; dependencies stay at `info` unless
    /// named (`quinn_proto=debug`), because their debug logs can print peer addresses.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
    /// A maintenance command instead of running the relay.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Maintenance commands (the relay must not be running).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Repairs a store whose log is damaged before acknowledged records (the relay refuses to
    /// start): prints what would be dropped, and with --confirm drops the damaged record and
    /// everything after it in the log. See docs/OPERATIONS.md, "A refused start".
    Repair {
        /// The only repair there is: drop everything in the log from the damage on.
        #[arg(long, required = true)]
        discard_after_damage: bool,
        /// Carry it out; without this flag nothing is changed.
        #[arg(long)]
        confirm: bool,
    },
    /// Moves the embedded store of a data directory (mailboxes with their queues, tombstones
    /// and prekeys, the directory, complete blobs) into PostgreSQL, then verifies the copy by
    /// counts and SHA-256 digests. Resumable: run it again after an interruption. The relay
    /// must be stopped. See docs/OPERATIONS.md, "Relays on PostgreSQL".
    Migrate {
        /// The data directory whose embedded store is moved.
        #[arg(long, value_name = "DIR")]
        from_dir: PathBuf,
        /// The PostgreSQL database to move it into (postgres://...).
        #[arg(long, value_name = "URL")]
        to: crate::config::StoreUrl,
    },
}

/// `handover-relay migrate`: moves the embedded store of `dir` into PostgreSQL.
fn migrate(dir: &std::path::Path, url: &str) -> ExitCode {
    use crate::store::{DiskStore, LogBackend, PgStore, migrate};
    let store_dir = dir.join("store");
    if !store_dir.exists() {
        eprintln!("handover-relay: no embedded store in {}", dir.display());
        return ExitCode::from(2);
    }
    let from = match LogBackend::open(&store_dir) {
        Ok(backend) => DiskStore::new(backend),
        Err(err) => {
            eprintln!(
                "handover-relay: cannot open the embedded store (is the relay running?): {err}"
            );
            return ExitCode::FAILURE;
        }
    };
    let to = match PgStore::connect(url, 4) {
        Ok(to) => to,
        Err(err) => {
            eprintln!("handover-relay: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "Moving {} into {}",
        dir.display(),
        crate::store::postgres::redact(url)
    );
    match migrate::migrate(&from, &to, &mut |step| println!("  {step}")) {
        Ok(r) => {
            println!(
                "Moved and verified: {} mailboxes ({} already there), {} envelopes, {} \
                 tombstones, {} one-time prekeys, {} directory entries, {} blobs ({} bytes); \
                 digest {} on both sides.",
                r.mailboxes,
                r.already_there,
                r.envelopes,
                r.tombstones,
                r.one_time_prekeys,
                r.directory,
                r.blobs,
                r.blob_bytes,
                hex::encode(r.copy_digest)
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("handover-relay: migration stopped: {err}; run it again to resume");
            ExitCode::FAILURE
        }
    }
}

/// `handover-relay repair`: the exit code and what to print.
fn repair(dir: &std::path::Path, confirm: bool) -> ExitCode {
    let fs = crate::store::StdFs;
    let plan = match crate::store::plan_repair(&fs, dir) {
        Ok(Some(plan)) => plan,
        Ok(None) => {
            println!("{}: the log has no damage to repair", dir.display());
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("handover-relay repair: {err}");
            return ExitCode::FAILURE;
        }
    };
    let what = if plan.offset == 0 {
        format!("segment {:016x} (its header is damaged)", plan.segment)
    } else {
        format!("segment {:016x} from byte {} on", plan.segment, plan.offset)
    };
    println!(
        "{}: damage in {what}.\nDropping it and {} later segment(s) drops {} log record(s) \
         written after the damage: {} queued envelope(s) are lost and {} removal(s) (acks, \
         expiry, mailbox deletions) are undone, so those envelopes may be delivered again.",
        dir.display(),
        plan.later_segments.len(),
        plan.records,
        plan.envelopes,
        plan.removals,
    );
    if !confirm {
        println!("Nothing changed. Keep a copy of the data directory, then add --confirm.");
        return ExitCode::from(3);
    }
    match crate::store::repair(&fs, dir, &plan) {
        Ok(()) => {
            println!("Repaired; the relay can start.");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("handover-relay repair: {err}");
            ExitCode::FAILURE
        }
    }
}

fn parse_admin(value: &str) -> Result<Option<SocketAddr>, RelayError> {
    if value == "off" {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| RelayError::Config("admin must be an address or \"off\"".into()))
}

/// Builds the configuration from a file (if any) and flags.
pub fn config_from(args: &Args) -> Result<Config, RelayError> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("relay-data"));
    let mut c = Config::new(data_dir);
    macro_rules! set {
        ($field:expr, $flag:expr, $file:expr) => {
            if let Some(v) = $flag.or($file) {
                $field = v;
            }
        };
    }
    set!(c.listen, args.listen, file.listen);
    if let Some(store) = args.store.as_ref().or(file.store.as_ref()) {
        c.store = crate::config::StoreLocation::parse(&store.0)?;
    }
    set!(
        c.store_pool_size,
        args.store_pool_size,
        file.store_pool_size
    );
    if let Some(admin) = args.admin.as_deref().or(file.admin.as_deref()) {
        c.admin = parse_admin(admin)?;
    }
    match (
        args.cert.clone().or(file.cert.clone()),
        args.key.clone().or(file.key.clone()),
    ) {
        (Some(cert), Some(key)) => c.pem = Some((cert, key)),
        (None, None) => {}
        _ => {
            return Err(RelayError::Config(
                "cert and key must be given together".into(),
            ));
        }
    }
    for hex_key in file.admitted_orgs.iter().flatten().chain(&args.admit_org) {
        c.admitted_orgs.push(parse_org_key(hex_key)?);
    }
    let l = &file.limits;
    set!(
        c.limits.max_envelope_bytes,
        args.max_envelope_bytes,
        l.max_envelope_bytes
    );
    set!(
        c.limits.max_blob_bytes,
        args.max_blob_bytes,
        l.max_blob_bytes
    );
    set!(c.limits.max_ttl_secs, args.max_ttl_secs, l.max_ttl_secs);
    set!(
        c.limits.mailbox_max_envelopes,
        args.mailbox_max_envelopes,
        l.mailbox_max_envelopes
    );
    set!(
        c.limits.mailbox_max_bytes,
        args.mailbox_max_bytes,
        l.mailbox_max_bytes
    );
    set!(
        c.limits.max_one_time_prekeys,
        args.max_one_time_prekeys,
        l.max_one_time_prekeys
    );
    set!(
        c.limits.tombstone_secs,
        args.tombstone_secs,
        l.tombstone_secs
    );
    set!(
        c.limits.relay_max_mailboxes,
        args.relay_max_mailboxes,
        l.relay_max_mailboxes
    );
    set!(
        c.limits.relay_max_envelopes,
        args.relay_max_envelopes,
        l.relay_max_envelopes
    );
    set!(
        c.limits.relay_max_bytes,
        args.relay_max_bytes,
        l.relay_max_bytes
    );
    set!(
        c.requests_per_sec,
        args.requests_per_sec,
        file.requests_per_sec
    );
    set!(c.request_burst, args.request_burst, file.request_burst);
    set!(
        c.address_requests_per_sec,
        args.address_requests_per_sec,
        file.address_requests_per_sec
    );
    set!(
        c.address_request_burst,
        args.address_request_burst,
        file.address_request_burst
    );
    set!(
        c.connection_creations_per_min,
        args.connection_creations_per_min,
        file.connection_creations_per_min
    );
    set!(
        c.connection_creation_burst,
        args.connection_creation_burst,
        file.connection_creation_burst
    );
    set!(
        c.address_creations_per_min,
        args.address_creations_per_min,
        file.address_creations_per_min
    );
    set!(
        c.address_creation_burst,
        args.address_creation_burst,
        file.address_creation_burst
    );
    set!(c.max_streams, args.max_streams, file.max_streams);
    set!(
        c.max_connections,
        args.max_connections,
        file.max_connections
    );
    set!(
        c.retry_above_handshakes,
        args.retry_above_handshakes,
        file.retry_above_handshakes
    );
    set!(
        c.max_request_frame,
        args.max_request_frame,
        file.max_request_frame
    );
    set!(
        c.sweep_interval_secs,
        args.sweep_interval_secs,
        file.sweep_interval_secs
    );
    set!(
        c.shutdown_grace_secs,
        args.shutdown_grace_secs,
        file.shutdown_grace_secs
    );
    set!(
        c.idle_timeout_secs,
        args.idle_timeout_secs,
        file.idle_timeout_secs
    );
    set!(
        c.limits.blob_store_max_bytes,
        args.blob_store_max_bytes,
        l.blob_store_max_bytes
    );
    set!(c.wal_mib, args.wal_mib, file.wal_mib);
    set!(
        c.udp_buffer_bytes,
        args.udp_buffer_bytes,
        file.udp_buffer_bytes
    );
    set!(c.min_free_bytes, args.min_free_bytes, file.min_free_bytes);
    if let Some(path) = args
        .creation_token_file
        .as_ref()
        .or(file.creation_token_file.as_ref())
    {
        c.creation_token = Some(read_creation_token(path)?);
    }
    c.validate()?;
    Ok(c)
}

/// The relay's own crates, whose logs never carry addresses or ids at any level.
const OWN_LOG_TARGETS: [&str; 2] = ["handover_relay", "handover_proto"];

/// Turns the `--log` filter into the one installed: a directive without a target (a bare level
/// such as `debug`) sets that level for [`OWN_LOG_TARGETS`] only, and every other target at
/// most `info`. Dependencies log peer addresses at `debug` (quinn-proto's connection events, for
/// one), so they get a more verbose level only when a directive names them. Directives with a
/// target or a span filter are kept as written.
pub fn log_filter(spec: &str) -> String {
    use std::str::FromStr;
    use tracing_subscriber::filter::LevelFilter;
    let mut bare = None;
    let mut named = Vec::new();
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match LevelFilter::from_str(directive) {
            Ok(level) => bare = Some(level),
            Err(_) => named.push(directive),
        }
    }
    let mut out = Vec::new();
    if let Some(level) = bare {
        out.push(level.min(LevelFilter::INFO).to_string());
        for target in OWN_LOG_TARGETS {
            out.push(format!("{target}={level}"));
        }
    }
    out.extend(named.into_iter().map(str::to_owned));
    out.join(",")
}

/// Log timestamps rounded down to the minute (metadata hygiene).
struct MinuteClock;

impl tracing_subscriber::fmt::time::FormatTime for MinuteClock {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let secs = server::unix_now();
        let days = secs / 86_400;
        let (y, m, d) = civil_from_days(days as i64);
        let rem = secs % 86_400;
        write!(
            w,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60
        )
    }
}

/// Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Entry point of the `handover-relay` binary: parses flags, runs until SIGTERM/SIGINT.
pub fn run() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(&args.log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(MinuteClock)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let config = match config_from(&args) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("handover-relay: {err}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Migrate { from_dir, to }) = &args.command {
        return migrate(from_dir, &to.0);
    }
    if let Some(Command::Repair { confirm, .. }) = &args.command {
        return repair(&config.data_dir.join("store"), *confirm);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("handover-relay: cannot start runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve_until_signal(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "relay failed");
            eprintln!("handover-relay: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_until_signal(config: Config) -> Result<(), RelayError> {
    let relay = server::Relay::start(config).await?;
    let admin = relay
        .admin_addr()
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    println!(
        "handover-relay ready quic={} admin={admin} pin={}",
        relay.local_addr(),
        hex::encode(relay.pin())
    );
    tracing::info!(pin = %hex::encode(relay.pin()), "relay ready");
    wait_for_signal().await?;
    tracing::info!("shutting down: draining in-flight requests");
    relay.shutdown().await;
    tracing::info!("shut down");
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() -> Result<(), RelayError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(RelayError::io("install SIGTERM"))?;
    tokio::select! {
        _ = term.recv() => {},
        r = tokio::signal::ctrl_c() => r.map_err(RelayError::io("install SIGINT"))?,
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> Result<(), RelayError> {
    tokio::signal::ctrl_c()
        .await
        .map_err(RelayError::io("install Ctrl-C handler"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_833), (2027, 1, 15));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    /// Whether `filter` (a `--log` value) lets an event of `level` from `target` through.
    fn logs(filter: &str, target: &str, level: tracing::Level) -> bool {
        let filter = tracing_subscriber::EnvFilter::try_new(log_filter(filter)).unwrap();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || match (target, level) {
            ("quinn_proto", tracing::Level::DEBUG) => {
                tracing::enabled!(target: "quinn_proto", tracing::Level::DEBUG)
            }
            ("quinn_proto", tracing::Level::INFO) => {
                tracing::enabled!(target: "quinn_proto", tracing::Level::INFO)
            }
            ("rustls", tracing::Level::TRACE) => {
                tracing::enabled!(target: "rustls", tracing::Level::TRACE)
            }
            ("handover_relay::server", tracing::Level::DEBUG) => {
                tracing::enabled!(target: "handover_relay::server", tracing::Level::DEBUG)
            }
            ("handover_relay::server", tracing::Level::INFO) => {
                tracing::enabled!(target: "handover_relay::server", tracing::Level::INFO)
            }
            other => panic!("no callsite for {other:?}"),
        })
    }

    #[test]
    fn a_bare_debug_level_keeps_dependencies_at_info() {
        use tracing::Level;
        // quinn-proto prints peer addresses at debug: only naming it turns that on.
        assert!(logs("debug", "handover_relay::server", Level::DEBUG));
        assert!(!logs("debug", "quinn_proto", Level::DEBUG));
        assert!(logs("debug", "quinn_proto", Level::INFO));
        assert!(!logs("trace", "rustls", Level::TRACE));
        assert!(logs("info,quinn_proto=debug", "quinn_proto", Level::DEBUG));
        assert!(logs("debug,quinn_proto=debug", "quinn_proto", Level::DEBUG));
        assert!(!logs("info", "handover_relay::server", Level::DEBUG));
        // A quieter bare level applies to everything.
        assert!(!logs("warn", "quinn_proto", Level::INFO));
        assert!(!logs("warn", "handover_relay::server", Level::INFO));
        assert_eq!(
            log_filter("debug"),
            "info,handover_relay=debug,handover_proto=debug"
        );
    }

    #[test]
    fn the_store_comes_from_the_file_or_the_flag_and_its_password_is_never_shown() {
        use crate::config::StoreLocation;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "store = \"postgres://relay:s3cret@db:5432/handover\"\nstore_pool_size = 4\n",
        )
        .unwrap();
        let args = Args::parse_from(["handover-relay", "--config", path.to_str().unwrap()]);
        assert!(!format!("{args:?}").contains("s3cret"));
        let c = config_from(&args).unwrap();
        assert!(matches!(&c.store, StoreLocation::Postgres(url) if url.contains("@db:5432")));
        assert_eq!(c.store_pool_size, 4);
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cret") && debug.contains("relay:***@db"),
            "{debug}"
        );
        let flag = Args::parse_from([
            "handover-relay",
            "--config",
            path.to_str().unwrap(),
            "--store",
            "postgresql://other@db2/h",
        ]);
        assert!(!format!("{flag:?}").contains("s3cret"));
        let c = config_from(&flag).unwrap();
        assert!(
            matches!(&c.store, StoreLocation::Postgres(url) if url == "postgresql://other@db2/h")
        );
        // The default stays the embedded store; anything but a PostgreSQL URL is refused.
        let none = Args::parse_from(["handover-relay"]);
        assert!(matches!(
            config_from(&none).unwrap().store,
            StoreLocation::Embedded
        ));
        let bad = Args::parse_from(["handover-relay", "--store", "mysql://db/h"]);
        assert!(config_from(&bad).is_err());
    }

    #[test]
    fn migrate_takes_a_data_dir_and_a_postgres_url() {
        let args = Args::parse_from([
            "handover-relay",
            "migrate",
            "--from-dir",
            "/srv/relay",
            "--to",
            "postgres://relay:s3cret@db/handover",
        ]);
        assert!(matches!(
            &args.command,
            Some(Command::Migrate { from_dir, to })
                if from_dir == std::path::Path::new("/srv/relay") && to.0.ends_with("@db/handover")
        ));
        assert!(!format!("{args:?}").contains("s3cret"));
        assert!(Args::try_parse_from(["handover-relay", "migrate", "--from-dir", "/x"]).is_err());
        // Nothing to move: a clear refusal, not an empty migration.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            migrate(empty.path(), "postgres://postgres@127.0.0.1:1/none"),
            ExitCode::from(2)
        );
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:5000\"\nadmin = \"off\"\nmax_streams = 9\nwal_mib = 8\n\
             udp_buffer_bytes = 100000\n[limits]\nmax_ttl_secs = 77\nblob_store_max_bytes = 5000\n",
        )
        .unwrap();
        let args = Args::parse_from([
            "handover-relay",
            "--config",
            path.to_str().unwrap(),
            "--max-streams",
            "5",
        ]);
        let c = config_from(&args).unwrap();
        assert_eq!(c.listen.port(), 5000);
        assert_eq!(c.admin, None);
        assert_eq!(c.max_streams, 5);
        assert_eq!(c.limits.max_ttl_secs, 77);
        assert_eq!(c.limits.blob_store_max_bytes, 5000);
        assert_eq!(c.wal_mib, 8);
        assert_eq!(c.udp_buffer_bytes, 100_000);
        let flags = Args::parse_from([
            "handover-relay",
            "--config",
            path.to_str().unwrap(),
            "--wal-mib",
            "16",
            "--blob-store-max-bytes",
            "6000",
            "--udp-buffer-bytes",
            "200000",
        ]);
        let c = config_from(&flags).unwrap();
        assert_eq!(
            (c.wal_mib, c.limits.blob_store_max_bytes, c.udp_buffer_bytes),
            (16, 6000, 200_000)
        );
        let small = Args::parse_from(["handover-relay", "--udp-buffer-bytes", "1000"]);
        assert!(config_from(&small).is_err());
        let bad = Args::parse_from(["handover-relay", "--max-envelope-bytes", "999999"]);
        assert!(config_from(&bad).is_err());
    }

    #[test]
    fn abuse_limits_come_from_the_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "secret\r\n").unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            format!(
                "address_requests_per_sec = 7\naddress_creation_burst = 3\n\
                 retry_above_handshakes = 5\nmin_free_bytes = 1000\n\
                 creation_token_file = {:?}\n[limits]\nrelay_max_mailboxes = 9\n\
                 relay_max_envelopes = 10\nrelay_max_bytes = 11\n",
                token.to_str().unwrap()
            ),
        )
        .unwrap();
        let args = Args::parse_from([
            "handover-relay",
            "--config",
            path.to_str().unwrap(),
            "--relay-max-bytes",
            "12",
        ]);
        let c = config_from(&args).unwrap();
        assert_eq!(
            (
                c.address_requests_per_sec,
                c.address_creation_burst,
                c.retry_above_handshakes,
                c.min_free_bytes
            ),
            (7, 3, 5, 1000)
        );
        assert_eq!(
            (
                c.limits.relay_max_mailboxes,
                c.limits.relay_max_envelopes,
                c.limits.relay_max_bytes
            ),
            (9, 10, 12)
        );
        let handler = crate::handler::Handler::new(
            std::sync::Arc::new(crate::store::MemoryStore::new(
                crate::store::MemoryBackend::new(),
            )),
            c.limits.clone(),
            Vec::new(),
        )
        .with_creation_token(c.creation_token.clone());
        // The file's final line break is not part of the token.
        let session = crate::handler::Session::new(Box::new(crate::testing::Exporter(1)));
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let create = |token: &[u8]| {
            crate::testing::request(handover_proto::relay::v1::request::Kind::CreateMailbox(
                handover_proto::relay::v1::CreateMailbox {
                    auth_key: key.verifying_key().to_bytes().to_vec(),
                    capability_hashes: Vec::new(),
                    creation_token: token.to_vec(),
                },
            ))
        };
        let mut rng = rand::rng();
        let created =
            crate::testing::answer(handler.handle(&session, create(b"secret"), 1, &mut rng));
        assert!(
            matches!(
                created.kind,
                Some(handover_proto::relay::v1::response::Kind::MailboxCreated(_))
            ),
            "{created:?}"
        );
        std::fs::write(&token, "\n").unwrap();
        assert!(config_from(&args).is_err(), "an empty token is refused");
    }

    #[test]
    fn repair_needs_the_discard_flag_and_takes_the_data_dir_after_it() {
        let args = Args::try_parse_from([
            "handover-relay",
            "repair",
            "--data-dir",
            "/srv/relay",
            "--discard-after-damage",
        ])
        .unwrap();
        assert!(matches!(
            args.command,
            Some(Command::Repair { confirm: false, .. })
        ));
        assert_eq!(
            config_from(&args).unwrap().data_dir,
            PathBuf::from("/srv/relay")
        );
        assert!(Args::try_parse_from(["handover-relay", "repair", "--confirm"]).is_err());
    }
}
