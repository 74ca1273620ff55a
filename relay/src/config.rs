//! Relay configuration: a TOML file, overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::RelayError;
use crate::handler::{CreationToken, Limits};

/// Default kernel buffer for the QUIC socket: 4 MiB (the kernel charges each datagram more
/// than its size against it). A busy relay whose receive buffer fills up, say
/// while the machine stalls for a few milliseconds, has the kernel drop datagrams; QUIC then
/// waits for loss detection and halves its sending rate, which turns a short stall into a long
/// latency tail (docs/PERFORMANCE.md). The operating system's default is often 208 KiB.
pub const DEFAULT_UDP_BUFFER: usize = 4 * 1024 * 1024;
/// Default `retry_above_handshakes`: handshakes in progress (each a TLS handshake's state, a
/// few KiB) from which clients must first prove their address with a QUIC Retry. A relay serving
/// its network sees a few at a time; a flood of spoofed Initial packets sees thousands.
pub const DEFAULT_RETRY_ABOVE_HANDSHAKES: usize = 64;
/// Default `min_free_bytes`: 256 MiB, room for the log segments and sled checkpoints that
/// acks, deletions and sweeps still write once new data is refused.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;
/// Smallest accepted `udp_buffer_bytes`.
const MIN_UDP_BUFFER: usize = 64 * 1024;
/// Largest accepted `udp_buffer_bytes`.
const MAX_UDP_BUFFER: usize = 1024 * 1024 * 1024;

/// A store URL as given on the command line or in the file; its `Debug` hides the password.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(pub String);

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StoreUrl")
            .field(&crate::store::postgres::redact(&self.0))
            .finish()
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Where the relay keeps its data.
#[derive(Clone, Default)]
pub enum StoreLocation {
    /// The embedded store in `data_dir/store` (the default; one relay process).
    #[default]
    Embedded,
    /// A PostgreSQL database shared by any number of relay processes: its connection string
    /// (`postgres://user:password@host:port/db`). Never printed with its password.
    Postgres(String),
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("Embedded"),
            Self::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&crate::store::postgres::redact(url))
                .finish(),
        }
    }
}

impl StoreLocation {
    /// Parses `--store`: a `postgres://` or `postgresql://` URL.
    pub fn parse(value: &str) -> Result<Self, RelayError> {
        let v = value.trim();
        if v.starts_with("postgres://") || v.starts_with("postgresql://") {
            Ok(Self::Postgres(v.to_owned()))
        } else {
            Err(RelayError::Config(
                "store must be a postgres:// URL (leave it out for the embedded store in \
                 data_dir)"
                    .into(),
            ))
        }
    }
}

/// Complete, validated relay configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// UDP address of the QUIC listener.
    pub listen: SocketAddr,
    /// Data directory (the embedded store, the generated certificate).
    pub data_dir: PathBuf,
    /// Where the data is kept: the embedded store in `data_dir` or PostgreSQL.
    pub store: StoreLocation,
    /// Connections to PostgreSQL each relay process uses for requests (plus one it listens
    /// on); unused by the embedded store.
    pub store_pool_size: usize,
    /// TCP address of the admin endpoint (metrics, health); `None` disables it.
    pub admin: Option<SocketAddr>,
    /// Certificate chain and private key PEM files; `None` uses the generated identity.
    pub pem: Option<(PathBuf, PathBuf)>,
    /// Root keys of admitted organisations.
    pub admitted_orgs: Vec<[u8; 32]>,
    /// Protocol limits and quotas.
    pub limits: Limits,
    /// Requests per second per connection (0 = unlimited).
    pub requests_per_sec: u32,
    /// Request burst per connection.
    pub request_burst: u32,
    /// Requests per second shared by all connections from one client address (an IPv4 address
    /// or an IPv6 /64), 0 = unlimited.
    pub address_requests_per_sec: u32,
    /// Request burst per client address.
    pub address_request_burst: u32,
    /// `CreateMailbox` requests per minute per connection, 0 = unlimited.
    pub connection_creations_per_min: u32,
    /// `CreateMailbox` burst per connection.
    pub connection_creation_burst: u32,
    /// `CreateMailbox` requests per minute per client address, 0 = unlimited.
    pub address_creations_per_min: u32,
    /// `CreateMailbox` burst per client address.
    pub address_creation_burst: u32,
    /// Concurrent bidirectional streams per connection.
    pub max_streams: u32,
    /// Open QUIC connections, handshakes in progress included; more are refused.
    pub max_connections: usize,
    /// Handshakes in progress from which a client that has not proved its address gets a QUIC
    /// Retry first (0 = always).
    pub retry_above_handshakes: usize,
    /// Largest request frame accepted, bytes.
    pub max_request_frame: usize,
    /// Seconds between expiry sweeps.
    pub sweep_interval_secs: u64,
    /// Seconds to wait for in-flight requests on shutdown.
    pub shutdown_grace_secs: u64,
    /// Connection idle timeout, seconds.
    pub idle_timeout_secs: u64,
    /// Size of each log segment of the store, MiB.
    pub wal_mib: u64,
    /// Kernel receive and send buffer asked for the QUIC socket, bytes (Linux caps it at
    /// `net.core.rmem_max` / `wmem_max`).
    pub udp_buffer_bytes: usize,
    /// Free-space watermark of the data directory's file system, bytes: below it, requests
    /// that add data are refused (`UNAVAILABLE`) while acks, deletions and sweeps go on.
    pub min_free_bytes: u64,
    /// If set, `CreateMailbox` must carry this token (a password shared with the relay's
    /// users); `None` lets anyone create mailboxes.
    pub creation_token: Option<CreationToken>,
}

impl Config {
    /// Defaults for a relay with data in `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            data_dir,
            store: StoreLocation::Embedded,
            store_pool_size: crate::store::postgres::DEFAULT_POOL_SIZE,
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9433))),
            pem: None,
            admitted_orgs: Vec::new(),
            limits: Limits::default(),
            requests_per_sec: 200,
            request_burst: 400,
            address_requests_per_sec: 1_000,
            address_request_burst: 2_000,
            connection_creations_per_min: 10,
            connection_creation_burst: 20,
            address_creations_per_min: 30,
            address_creation_burst: 100,
            max_streams: 128,
            max_connections: 10_000,
            retry_above_handshakes: DEFAULT_RETRY_ABOVE_HANDSHAKES,
            max_request_frame: 512 * 1024,
            sweep_interval_secs: 60,
            shutdown_grace_secs: 10,
            idle_timeout_secs: 60,
            wal_mib: 64,
            udp_buffer_bytes: DEFAULT_UDP_BUFFER,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            creation_token: None,
        }
    }

    /// Checks the configuration against protocol limits.
    pub fn validate(&self) -> Result<(), RelayError> {
        use handover_proto::limits::{MAX_ENVELOPE_LEN, MAX_FRAME_LEN};
        let bad = |m: &str| Err(RelayError::Config(m.to_owned()));
        if self.limits.max_envelope_bytes == 0 || self.limits.max_envelope_bytes > MAX_ENVELOPE_LEN
        {
            return bad("max_envelope_bytes must be between 1 and 262144");
        }
        if self.max_request_frame < 1024 || self.max_request_frame > MAX_FRAME_LEN {
            return bad("max_request_frame must be between 1024 and 4194304");
        }
        if self.max_request_frame < self.limits.max_envelope_bytes + 1024 {
            return bad("max_request_frame must exceed max_envelope_bytes by at least 1024");
        }
        if self.store_pool_size == 0 || self.store_pool_size > 1024 {
            return bad("store_pool_size must be between 1 and 1024");
        }
        if self.max_streams == 0 {
            return bad("max_streams must be at least 1");
        }
        if self.wal_mib == 0 || self.wal_mib > 4096 {
            return bad("wal_mib must be between 1 and 4096");
        }
        if !(MIN_UDP_BUFFER..=MAX_UDP_BUFFER).contains(&self.udp_buffer_bytes) {
            return bad("udp_buffer_bytes must be between 65536 and 1073741824");
        }
        if self.limits.max_ttl_secs == 0 {
            return bad("max_ttl_secs must be at least 1");
        }
        Ok(())
    }
}

/// Parses a hex-encoded 32-byte organisation root key.
pub fn parse_org_key(hex_key: &str) -> Result<[u8; 32], RelayError> {
    let bytes = hex::decode(hex_key.trim())
        .map_err(|_| RelayError::Config("admitted org key is not hex".into()))?;
    bytes
        .try_into()
        .map_err(|_| RelayError::Config("admitted org key must be 32 bytes".into()))
}

/// Reads a mailbox-creation token from `path`: the file's bytes without a final line break
/// (`\n` or `\r\n`). An empty token is refused.
pub fn read_creation_token(path: &Path) -> Result<CreationToken, RelayError> {
    let mut bytes = std::fs::read(path).map_err(RelayError::io("read creation token file"))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(RelayError::Config(
            "the creation token file is empty".into(),
        ));
    }
    if bytes.len() > handover_proto::limits::MAX_CREATION_TOKEN_LEN {
        return Err(RelayError::Config(
            "the creation token is longer than 256 bytes".into(),
        ));
    }
    let token = CreationToken::new(&bytes);
    bytes.fill(0);
    Ok(token)
}

/// The TOML configuration file. Every key is optional; flags override it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// QUIC listen address.
    pub listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// `postgres://` URL of a shared store; absent: the embedded store in `data_dir`.
    pub store: Option<StoreUrl>,
    /// Connections to PostgreSQL per relay process.
    pub store_pool_size: Option<usize>,
    /// Admin address, or "off".
    pub admin: Option<String>,
    /// Certificate chain PEM.
    pub cert: Option<PathBuf>,
    /// Private key PEM.
    pub key: Option<PathBuf>,
    /// Hex root keys of admitted organisations.
    pub admitted_orgs: Option<Vec<String>>,
    /// Requests per second per connection.
    pub requests_per_sec: Option<u32>,
    /// Request burst per connection.
    pub request_burst: Option<u32>,
    /// Requests per second per client address.
    pub address_requests_per_sec: Option<u32>,
    /// Request burst per client address.
    pub address_request_burst: Option<u32>,
    /// Mailbox creations per minute per connection.
    pub connection_creations_per_min: Option<u32>,
    /// Mailbox creation burst per connection.
    pub connection_creation_burst: Option<u32>,
    /// Mailbox creations per minute per client address.
    pub address_creations_per_min: Option<u32>,
    /// Mailbox creation burst per client address.
    pub address_creation_burst: Option<u32>,
    /// Concurrent streams per connection.
    pub max_streams: Option<u32>,
    /// Open connections.
    pub max_connections: Option<usize>,
    /// Handshakes in progress above which clients get a QUIC Retry.
    pub retry_above_handshakes: Option<usize>,
    /// Largest request frame.
    pub max_request_frame: Option<usize>,
    /// Seconds between sweeps.
    pub sweep_interval_secs: Option<u64>,
    /// Shutdown grace, seconds.
    pub shutdown_grace_secs: Option<u64>,
    /// Idle timeout, seconds.
    pub idle_timeout_secs: Option<u64>,
    /// Log segment size, MiB.
    pub wal_mib: Option<u64>,
    /// QUIC socket buffer, bytes.
    pub udp_buffer_bytes: Option<usize>,
    /// Free-space watermark, bytes.
    pub min_free_bytes: Option<u64>,
    /// File holding the mailbox-creation token.
    pub creation_token_file: Option<PathBuf>,
    /// Limits and quotas.
    #[serde(default)]
    pub limits: FileLimits,
}

/// `[limits]` table of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Largest envelope ciphertext.
    pub max_envelope_bytes: Option<usize>,
    /// Largest blob.
    pub max_blob_bytes: Option<u64>,
    /// Total size of all stored blobs.
    pub blob_store_max_bytes: Option<u64>,
    /// Longest time to live.
    pub max_ttl_secs: Option<u64>,
    /// Envelopes per mailbox.
    pub mailbox_max_envelopes: Option<u64>,
    /// Bytes per mailbox.
    pub mailbox_max_bytes: Option<u64>,
    /// One-time prekeys per mailbox and kind.
    pub max_one_time_prekeys: Option<u64>,
    /// Tombstone lifetime.
    pub tombstone_secs: Option<u64>,
    /// Mailboxes in the whole relay.
    pub relay_max_mailboxes: Option<u64>,
    /// Envelopes queued in the whole relay.
    pub relay_max_envelopes: Option<u64>,
    /// Ciphertext bytes queued in the whole relay.
    pub relay_max_bytes: Option<u64>,
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, RelayError> {
        let text = std::fs::read_to_string(path).map_err(RelayError::io("read config file"))?;
        toml::from_str(&text).map_err(|e| RelayError::Config(format!("config file: {e}")))
    }
}
