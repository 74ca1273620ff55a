//! A connection to one relay: [`handover_core::net::RelayClient`] behind an FFI object.

use std::sync::Arc;
use std::time::{Duration, Instant};

use handover_core::net::{RelayAddress, RelayClient};

use crate::HandoverError;
use crate::runtime::{run, runtime};

/// Receives progress of a long operation. Implemented by the app (Kotlin/Swift/Python).
///
/// Called on a library thread, not the UI thread: post to the main thread before touching UI.
/// Keep implementations quick; they must not call back into the same object synchronously.
#[uniffi::export(with_foreign)]
pub trait ProgressListener: Send + Sync {
    /// `done` of `total` steps are complete.
    fn on_progress(&self, done: u64, total: u64);
}

/// Result of [`Relay::check_latency`].
#[derive(uniffi::Record, Debug, Clone, PartialEq)]
pub struct LatencyReport {
    /// Pings answered.
    pub pings: u32,
    /// Fastest round trip, milliseconds.
    pub min_ms: f64,
    /// Median round trip, milliseconds.
    pub median_ms: f64,
    /// Slowest round trip, milliseconds.
    pub max_ms: f64,
    /// The relay's clock (Unix seconds, minute precision) from the last answer.
    pub relay_time: u64,
}

pub(crate) fn parse_pin(pin_hex: &str) -> Result<[u8; 32], HandoverError> {
    let bytes = hex::decode(pin_hex.trim())
        .map_err(|_| HandoverError::invalid("the relay pin must be hex"))?;
    bytes
        .try_into()
        .map_err(|_| HandoverError::invalid("the relay pin must be 32 bytes (64 hex digits)"))
}

/// Most pings one latency check may send.
const MAX_PINGS: u32 = 100;

/// A QUIC connection to one relay, which is recognised by the SHA-256 pin of its certificate's
/// public key (printed by the relay at start as `pin=...`), never by a certificate authority.
///
/// Dropping the object closes the connection. Requests on one `Relay` may run concurrently.
#[derive(uniffi::Object)]
pub struct Relay {
    client: Option<RelayClient>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

impl Relay {
    fn client(&self) -> Result<RelayClient, HandoverError> {
        self.client.clone().ok_or_else(|| HandoverError::Internal {
            detail: "the relay connection is gone".into(),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The foreign side may release the object on any thread; quinn's endpoint driver lives
        // on the library's runtime, so drop (and thus close) the connection inside its context.
        if let (Some(client), Ok(rt)) = (self.client.take(), runtime()) {
            let _enter = rt.enter();
            drop(client);
        }
    }
}

#[uniffi::export]
impl Relay {
    /// Connects to the relay at `host_port` ("relay.example.org:4433", "127.0.0.1:4433"),
    /// accepting only a certificate whose public-key pin is `pin_hex` (64 hex digits).
    #[uniffi::constructor]
    pub async fn connect(host_port: String, pin_hex: String) -> Result<Arc<Self>, HandoverError> {
        let address = RelayAddress {
            host_port,
            pin: parse_pin(&pin_hex)?,
        };
        let client = run(async move { Ok(RelayClient::connect(&address).await?) }).await?;
        Ok(Arc::new(Self {
            client: Some(client),
        }))
    }

    /// Pings the relay; returns its clock (Unix seconds, minute precision).
    pub async fn ping(&self) -> Result<u64, HandoverError> {
        let client = self.client()?;
        run(async move { Ok(client.ping().await?) }).await
    }

    /// Sends `pings` pings (1 to 100) one after another, reporting progress after each, and
    /// returns round-trip statistics: a connection check for a settings screen.
    pub async fn check_latency(
        &self,
        pings: u32,
        listener: Arc<dyn ProgressListener>,
    ) -> Result<LatencyReport, HandoverError> {
        if pings == 0 || pings > MAX_PINGS {
            return Err(HandoverError::invalid(format!(
                "pings must be between 1 and {MAX_PINGS}"
            )));
        }
        let client = self.client()?;
        run(async move {
            let mut rtts = Vec::with_capacity(pings as usize);
            let mut relay_time = 0;
            for i in 0..pings {
                let start = Instant::now();
                relay_time = client.ping().await?;
                rtts.push(start.elapsed());
                listener.on_progress(u64::from(i) + 1, u64::from(pings));
            }
            rtts.sort();
            let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            Ok(LatencyReport {
                pings,
                min_ms: ms(rtts.first()),
                median_ms: ms(rtts.get(rtts.len() / 2)),
                max_ms: ms(rtts.last()),
                relay_time,
            })
        })
        .await
    }

    /// Whether the connection has closed (connect again to continue).
    pub fn is_closed(&self) -> bool {
        self.client.as_ref().is_none_or(RelayClient::is_closed)
    }

    /// Closes the connection politely (waits up to a second for the relay to see it). (Not
    /// `close`: Kotlin's `AutoCloseable.close()` destroys the object, which also closes it.)
    pub async fn disconnect(&self) -> Result<(), HandoverError> {
        let client = self.client()?;
        run(async move {
            client.close().await;
            Ok(())
        })
        .await
    }
}
