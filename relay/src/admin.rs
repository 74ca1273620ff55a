//! The admin endpoint: `GET /metrics` (Prometheus text) and `GET /healthz`.
//!
//! A deliberately tiny HTTP/1.1 responder over tokio instead of an HTTP framework: two fixed
//! routes, `Connection: close`, a bounded request head (8 KiB) read under a timeout, a cap on
//! concurrent admin connections. It should listen on a loopback or management address only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::metrics::Metrics;
use crate::store::Store;

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 16;

/// State the admin endpoint reports on.
pub(crate) struct AdminState {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) draining: Arc<AtomicBool>,
    /// Set once a durable sync failed (see `server::CommitShared`).
    pub(crate) sync_failed: Arc<AtomicBool>,
}

pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _peer)) = accepted else {
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(READ_TIMEOUT * 2, answer(stream, &state)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, state: &AdminState) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
        let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok(()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e),
        };
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if method != b"GET" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", "").await;
    }
    match path {
        b"/metrics" => {
            let body = state.metrics.encode();
            respond(
                &mut stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
            )
            .await
        }
        b"/healthz" => {
            let store = state.store.clone();
            let readable = tokio::task::spawn_blocking(move || store.mailbox(&[0; 16]).is_ok())
                .await
                .unwrap_or(false);
            // A store that answers reads but refuses writes is not healthy: sends would all
            // fail with UNAVAILABLE.
            let writable =
                !state.sync_failed.load(Ordering::Relaxed) && !state.store.writes_blocked();
            if state.draining.load(Ordering::Relaxed) {
                respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    "draining\n",
                )
                .await
            } else if readable && writable {
                respond(&mut stream, "200 OK", "text/plain", "ok\n").await
            } else {
                respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    "storage\n",
                )
                .await
            }
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", "").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
