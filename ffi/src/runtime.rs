//! The tokio runtime that every async export runs on.
//!
//! Foreign callers (Kotlin coroutines, Swift concurrency, Python asyncio) poll UniFFI futures
//! from their own executors, which are not tokio. Every export therefore spawns its work on this
//! library-owned multi-thread runtime and awaits the `JoinHandle`, which any executor can poll.
//! quinn and the network driver always find the tokio context they need, and blocking work
//! (Argon2id, sled, file system) goes to the runtime's blocking pool, never to a UI thread.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

use crate::HandoverError;

/// Two workers: phones have few big cores and the work is I/O-bound; blocking work has its own
/// pool.
const WORKER_THREADS: usize = 2;

/// The runtime, created on first use and kept for the life of the process.
pub(crate) fn runtime() -> Result<&'static Runtime, HandoverError> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(WORKER_THREADS)
                .thread_name("handover-rt")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| HandoverError::Internal {
            detail: format!("could not start the runtime: {e}"),
        })
}

/// Aborts the task when the foreign side drops the future (a cancelled coroutine or task).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn join<T>(handle: JoinHandle<Result<T, HandoverError>>) -> Result<T, HandoverError> {
    let mut guard = AbortOnDrop(handle);
    match (&mut guard.0).await {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Err(HandoverError::Cancelled),
        Err(e) => Err(HandoverError::Internal {
            detail: format!("a background task failed: {e}"),
        }),
    }
}

/// Runs `future` on the library's runtime and waits for it from any executor.
pub(crate) async fn run<F, T>(future: F) -> Result<T, HandoverError>
where
    F: Future<Output = Result<T, HandoverError>> + Send + 'static,
    T: Send + 'static,
{
    join(runtime()?.spawn(future)).await
}

/// Runs blocking `work` (key derivation, disk) on the runtime's blocking pool.
pub(crate) async fn run_blocking<F, T>(work: F) -> Result<T, HandoverError>
where
    F: FnOnce() -> Result<T, HandoverError> + Send + 'static,
    T: Send + 'static,
{
    join(runtime()?.spawn_blocking(work)).await
}
