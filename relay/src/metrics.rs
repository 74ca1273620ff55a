//! Prometheus metrics. Labels are operation names and error codes only: never ids or addresses.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of a request operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// Operation name, for example `send`.
    pub op: &'static str,
}

/// Label of an error code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// Error code name, for example `UNAUTHORISED`.
    pub code: &'static str,
}

/// The relay's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// The registry holding everything below.
    pub registry: Registry,
    /// Requests by operation.
    pub requests: Family<OpLabel, Counter>,
    /// Error responses by code.
    pub errors: Family<CodeLabel, Counter>,
    /// Envelopes acknowledged as durable.
    pub envelopes_accepted: Counter,
    /// Open QUIC connections.
    pub connections: Gauge,
    /// QUIC handshakes in progress.
    pub handshakes: Gauge,
    /// Connection attempts answered with a QUIC Retry.
    pub quic_retries: Counter,
    /// Waiters released per group commit.
    pub commit_batch: Histogram,
    /// Duration of one group commit round on the commit thread (the store's sync, then
    /// handing the round's waiters to the task that releases them), seconds.
    pub commit_seconds: Histogram,
    /// Duration of the store's sync itself (log write and `fdatasync`), seconds.
    pub store_sync_seconds: Histogram,
    /// Items removed by the expiry sweeper.
    pub swept: Counter,
    /// 1 while the data directory's free space is below `min_free_bytes` (new data refused).
    pub storage_low: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers all metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("handover_relay");
        let requests = Family::<OpLabel, Counter>::default();
        let errors = Family::<CodeLabel, Counter>::default();
        let envelopes_accepted = Counter::default();
        let connections = Gauge::default();
        let handshakes = Gauge::default();
        let quic_retries = Counter::default();
        let commit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let commit_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let store_sync_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let swept = Counter::default();
        let storage_low = Gauge::default();
        registry.register("requests", "Requests by operation", requests.clone());
        registry.register("errors", "Error responses by code", errors.clone());
        registry.register(
            "envelopes_accepted",
            "Envelopes acknowledged as durable",
            envelopes_accepted.clone(),
        );
        registry.register("connections", "Open QUIC connections", connections.clone());
        registry.register(
            "handshakes",
            "QUIC handshakes in progress",
            handshakes.clone(),
        );
        registry.register(
            "quic_retries",
            "Connection attempts answered with a QUIC Retry",
            quic_retries.clone(),
        );
        registry.register(
            "commit_batch_size",
            "Requests made durable by one group commit",
            commit_batch.clone(),
        );
        registry.register(
            "commit_seconds",
            "Duration of one group commit: the store's sync, then handing its waiters on for release",
            commit_seconds.clone(),
        );
        registry.register(
            "store_sync_seconds",
            "Duration of the store's sync itself: log write and fdatasync",
            store_sync_seconds.clone(),
        );
        registry.register("swept", "Expired items removed", swept.clone());
        registry.register(
            "storage_low",
            "1 while free disk space is below min_free_bytes and new data is refused",
            storage_low.clone(),
        );
        Self {
            registry,
            requests,
            errors,
            envelopes_accepted,
            connections,
            handshakes,
            quic_retries,
            commit_batch,
            commit_seconds,
            store_sync_seconds,
            swept,
            storage_low,
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
