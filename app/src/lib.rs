//! `handover app`: the caseworker's desk, a local web application.
//!
//! The process that holds the keys (the async [`Client`](handover_core::client::Client) over
//! the encrypted profile) serves the person's interface to their own browser on a loopback
//! address, as Syncthing's and Jupyter's interfaces do. Nothing of a case leaves the machine
//! except through the end-to-end protocol; the browser only ever talks to this process.
//!
//! # Why this stack
//!
//! - **axum on the caller's tokio runtime**: the client core is already async on tokio, so the
//!   server, the client's relay subscription and the idle lock share one runtime and no second
//!   event loop or thread pool; axum is hyper with typed extractors and a middleware layer
//!   where the security checks sit in one place ([`security`]). HTTP/1 only, no request
//!   tracing (nothing of a case reaches a log).
//! - **Server-rendered HTML with askama**: templates are checked and compiled into the binary
//!   (a typo in a template is a build error), and every value is HTML-escaped unless marked
//!   otherwise; askama is already built for the uniffi bindgen. Pages work without script.
//! - **A small plain JavaScript file and Server-Sent Events**: the one live need is "something
//!   changed, refresh this part"; SSE is one-way, plain HTTP (covered by the same cookie and
//!   Host checks) and reconnects by itself. No framework, no bundler, so no build step that
//!   needs the network, and the Content-Security-Policy can forbid inline script entirely.
//! - **Assets embedded** with `include_str!`/`include_bytes!`: the binary is the application;
//!   no file next to it can be swapped.
//! - **Project Fluent** ([`fluent-bundle`](fluent_bundle)) for the interface's words: one
//!   `.ftl` file per language under `app/locales/LANG/`, embedded at build time; an
//!   organisation adds a language by adding a folder. Pages carry `lang` and `dir`; right-to-
//!   left languages (the Arabic consent receipt) are laid out right to left.
//!
//! # Security
//!
//! Loopback only; a per-launch secret in the printed URL, exchanged once for an HttpOnly,
//! SameSite=Strict cookie; `Host` and `Origin` checked on every request (DNS rebinding and
//! cross-site requests are refused); a strict CSP, `X-Frame-Options: DENY` and
//! `Cache-Control: no-store` on every response. The app locks after an idle time and on demand:
//! the client is shut down and dropped (its store keys are zeroized), every open page is told
//! to show the unlock screen. See [`security`] and docs/APP.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod cases;
mod compose;
mod directory;
mod i18n;
mod org;
mod pages;
pub mod security;
mod state;
mod views;

pub use state::{DEFAULT_LOCK_AFTER, MIN_LOCK_AFTER};

/// Options of `handover app`.
#[derive(Debug, Clone, clap::Args)]
pub struct AppArgs {
    /// Address to serve the app on: a loopback address and port (port 0 picks a free one).
    #[arg(long, value_name = "127.0.0.1:PORT", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Do not open a browser; only print the address to open.
    #[arg(long)]
    pub no_browser: bool,
    /// Lock after this many seconds without activity (at least 60).
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_LOCK_AFTER.as_secs())]
    pub lock_after: u64,
    /// Use very cheap passphrase hashing for profiles created in the app. Only for automated
    /// tests: a stolen profile made with this can be opened by guessing quickly.
    #[arg(long, hide = true)]
    pub insecure_fast_kdf: bool,
}

impl AppArgs {
    /// Options for a server on `listen` that opens no browser.
    pub fn headless(listen: SocketAddr) -> Self {
        Self {
            listen,
            no_browser: true,
            lock_after: DEFAULT_LOCK_AFTER.as_secs(),
            insecure_fast_kdf: false,
        }
    }
}

/// Why the app could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// No profile directory was given.
    #[error(
        "no profile directory given. Pass --profile DIR or set HANDOVER_PROFILE (a new directory creates a profile in the app)"
    )]
    NoProfile,
    /// The listen address is not a loopback address.
    #[error(
        "the app listens only on this machine: {0} is not a loopback address. Use 127.0.0.1:PORT"
    )]
    NotLoopback(SocketAddr),
    /// The address could not be bound.
    #[error("could not listen on the address ({0}). Choose another port with --listen")]
    Listen(std::io::Error),
    /// The embedded translation files are broken.
    #[error("the interface texts could not be loaded ({0}). Report this")]
    Locales(String),
    /// The server stopped with an error.
    #[error("the server stopped: {0}")]
    Serve(std::io::Error),
}

/// A running app server.
pub struct App {
    addr: SocketAddr,
    launch_url: String,
    shared: state::Shared,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), std::io::Error>>,
    idle: JoinHandle<()>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The launch URL holds the secret: never in Debug.
        f.debug_struct("App")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Binds `args.listen` (loopback only) and starts serving the profile in `profile` on the
    /// current tokio runtime. The app starts locked.
    pub async fn start(profile: PathBuf, args: &AppArgs) -> Result<Self, AppError> {
        security::check_listen(args.listen)?;
        let i18n = i18n::I18n::load().map_err(AppError::Locales)?;
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(AppError::Listen)?;
        let addr = listener.local_addr().map_err(AppError::Listen)?;
        let (guard, launch_url) = security::Guard::new(addr, &mut rand::rng());
        let options = state::Options {
            profile,
            fast_kdf: args.insecure_fast_kdf,
        };
        let shared = Arc::new(state::AppState::new(
            guard,
            options,
            i18n,
            Duration::from_secs(args.lock_after),
        ));
        let router = pages::router(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        let idle = tokio::spawn(Arc::clone(&shared).idle_lock());
        Ok(Self {
            addr,
            launch_url,
            shared,
            stop: Some(stop),
            server,
            idle,
        })
    }

    /// The address the app serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The one-time launch URL (holds the launch secret: show it only to the person).
    pub fn launch_url(&self) -> &str {
        &self.launch_url
    }

    /// Whether a profile is unlocked.
    pub async fn is_unlocked(&self) -> bool {
        self.shared.desk().await.is_some()
    }

    /// Whether a new device's join waits for its enrolment code (the join screen is open).
    pub async fn is_joining(&self) -> bool {
        self.shared.joining().await.is_some()
    }

    /// Locks the profile now (as the Lock button does).
    pub async fn lock(&self) {
        self.shared.lock().await;
    }

    /// Waits until the server stops (it does not stop by itself).
    pub async fn wait(mut self) -> Result<(), AppError> {
        let result = (&mut self.server).await;
        self.shared.lock().await;
        self.idle.abort();
        match result {
            Ok(r) => r.map_err(AppError::Serve),
            Err(e) => Err(AppError::Serve(std::io::Error::other(e))),
        }
    }

    /// Locks the profile and stops the server.
    pub async fn stop(mut self) -> Result<(), AppError> {
        self.shared.lock().await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.idle.abort();
        match (&mut self.server).await {
            Ok(r) => r.map_err(AppError::Serve),
            Err(e) => Err(AppError::Serve(std::io::Error::other(e))),
        }
    }
}

/// Runs `handover app` until interrupted (Ctrl-C): serves the profile, prints the address
/// (`handover app ready url=...`) and opens the browser unless `--no-browser`.
pub async fn run(profile: Option<PathBuf>, args: AppArgs) -> Result<(), AppError> {
    let profile = profile.ok_or(AppError::NoProfile)?;
    let mut args = args;
    args.lock_after = args.lock_after.max(MIN_LOCK_AFTER.as_secs());
    let app = App::start(profile, &args).await?;
    println!("handover app ready url={}", app.launch_url());
    println!(
        "Open this address in your browser on this machine (it works once). Stop the app \
         with Ctrl-C; it locks after {} seconds without activity.",
        args.lock_after
    );
    if !args.no_browser && !open_browser(app.launch_url()) {
        println!("Could not open a browser: open the address above yourself.");
    }
    // Whether Ctrl-C arrived or could not be listened for, stop cleanly (lock first).
    let _ = tokio::signal::ctrl_c().await;
    app.stop().await
}

/// Opens `url` in the desktop's browser; false if no opener could be started.
fn open_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}
