//! Handover relay.
//!
//! The relay stores and forwards sealed envelopes between mailboxes, hands out prekey bundles,
//! serves the members-only organisation directory and stores encrypted blobs. It never sees
//! content: everything it holds is ciphertext under keys it does not have, addressed by random
//! ids it cannot link to people.
//!
//! Layers, from the inside out:
//!
//! - [`store`]: the [`Store`](store::Store) trait (its contract is documented there), the
//!   embedded store (an envelope log plus sled, made durable with explicit file syncs), its
//!   in-memory twin, and a PostgreSQL store that several relay processes share.
//! - [`handler`]: the sans-IO request handler. Requests, the connection's [`Session`]
//!   (handler::Session), `now` and an RNG in; an [`Action`](handler::Action) out.
//! - [`server`]: the tokio + quinn driver with group commit, subscriptions, the expiry sweeper
//!   and graceful shutdown; [`admin`] metrics and health; [`cli`] the binary's entry point.
//!
//! This crate depends on `handover-proto` and never on `handover-core`: the relay verifies
//! signatures but must not be able to decrypt anything, so it does not link the client's
//! cryptography.
//!
//! ```no_run
//! # async fn demo() -> Result<(), handover_relay::RelayError> {
//! use handover_relay::{config::Config, server::Relay};
//! let mut config = Config::new("/var/lib/handover-relay".into());
//! config.listen = "127.0.0.1:4433".parse().map_err(|_| handover_relay::RelayError::Config("addr".into()))?;
//! let relay = Relay::start(config).await?;
//! println!("pin {}", hex::encode(relay.pin()));
//! relay.shutdown().await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod cli;
pub mod config;
pub mod handler;
pub mod metrics;
pub mod ratelimit;
pub mod server;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod tls;

use thiserror::Error;

/// Why the relay could not start or keep running.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The TLS identity could not be loaded or generated.
    #[error("TLS identity: {0}")]
    Tls(String),
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the relay was doing.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

impl RelayError {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { what, source }
    }
}
