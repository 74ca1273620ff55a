//! The application's state: the guard, the unlocked [`Desk`] (the open [`Client`]) or nothing
//! (locked), the idle timer, and the live-event channel the pages subscribe to.

use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use handover_core::client::{Client, ClientEvent};
use handover_core::engine::{EngineError, ReferralEvent};
use handover_core::identity::Role;
use tokio::sync::{RwLock, broadcast};
use tokio::task::JoinHandle;

use crate::i18n::I18n;
use crate::security::Guard;

/// Default idle time before the app locks itself.
pub const DEFAULT_LOCK_AFTER: Duration = Duration::from_secs(10 * 60);
/// Shortest idle lock `handover app --lock-after` and the settings accept.
pub const MIN_LOCK_AFTER: Duration = Duration::from_secs(60);
/// How often the idle timer is checked.
pub(crate) const IDLE_CHECK: Duration = Duration::from_secs(1);

/// What the pages are told live (names only: no content, no ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Live {
    /// A message was stored.
    Message,
    /// A referral or consent step happened.
    Referral,
    /// Contacts or trust changed (an organisation waits to be trusted).
    Contacts,
    /// Connected to the relay.
    Online,
    /// The relay connection is being retried.
    Offline,
    /// The app locked.
    Locked,
}

impl Live {
    /// The SSE event name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Live::Message => "message",
            Live::Referral => "referral",
            Live::Contacts => "contacts",
            Live::Online => "online",
            Live::Offline => "offline",
            Live::Locked => "locked",
        }
    }
}

/// The unlocked profile.
#[derive(Clone)]
pub(crate) struct Desk {
    /// The open client (background task running).
    pub(crate) client: Client,
    /// This device's role.
    pub(crate) role: Role,
    /// This device's name.
    pub(crate) name: String,
    /// Organisation roots whose messages wait at the relay until trusted.
    pub(crate) untrusted: Arc<StdMutex<Vec<[u8; 32]>>>,
    /// Whether the relay connection is up.
    pub(crate) online: Arc<StdMutex<bool>>,
    forwarder: Arc<StdMutex<Option<JoinHandle<()>>>>,
}

impl Desk {
    /// Whether this role may see referral and consent screens.
    pub(crate) fn handles_cases(&self) -> bool {
        !matches!(self.role, Role::Ambassador)
    }
}

/// Options fixed at start.
pub(crate) struct Options {
    /// The profile directory.
    pub(crate) profile: PathBuf,
    /// Cheap Argon2 for new profiles (tests only).
    pub(crate) fast_kdf: bool,
}

/// Everything the handlers share.
pub(crate) struct AppState {
    pub(crate) guard: Guard,
    pub(crate) options: Options,
    pub(crate) i18n: I18n,
    desk: RwLock<Option<Desk>>,
    /// A new device waiting for its enrolment code: the store is open (no profile yet, the
    /// client not started) and holds the pending keys.
    joining: RwLock<Option<Client>>,
    last_active: StdMutex<Instant>,
    lock_after: StdMutex<Duration>,
    live: broadcast::Sender<Live>,
}

/// The shared state handle.
pub(crate) type Shared = Arc<AppState>;

impl AppState {
    /// A locked state.
    pub(crate) fn new(guard: Guard, options: Options, i18n: I18n, lock_after: Duration) -> Self {
        let (live, _) = broadcast::channel(64);
        Self {
            guard,
            options,
            i18n,
            desk: RwLock::new(None),
            joining: RwLock::new(None),
            last_active: StdMutex::new(Instant::now()),
            lock_after: StdMutex::new(lock_after.max(Duration::from_secs(1))),
            live,
        }
    }

    /// Records a person's activity (resets the idle timer).
    pub(crate) fn touch(&self) {
        *self.last_active.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// The idle time before locking.
    pub(crate) fn lock_after(&self) -> Duration {
        *self.lock_after.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the idle time before locking (at least [`MIN_LOCK_AFTER`]).
    pub(crate) fn set_lock_after(&self, d: Duration) {
        *self.lock_after.lock().unwrap_or_else(|p| p.into_inner()) = d.max(MIN_LOCK_AFTER);
    }

    fn idle_for(&self) -> Duration {
        self.last_active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// A subscription to live events.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.live.subscribe()
    }

    pub(crate) fn notify(&self, event: Live) {
        let _ = self.live.send(event);
    }

    /// The unlocked desk, if any.
    pub(crate) async fn desk(&self) -> Option<Desk> {
        self.desk.read().await.clone()
    }

    /// The client of a join waiting for its enrolment code, if any.
    pub(crate) async fn joining(&self) -> Option<Client> {
        self.joining.read().await.clone()
    }

    /// Keeps `client` (a store with a pending join) until the join completes or the app locks.
    pub(crate) async fn set_joining(&self, client: Client) {
        let old = self.joining.write().await.replace(client);
        if let Some(old) = old {
            let _ = old.shutdown().await;
        }
        self.touch();
    }

    /// Hands over the waiting join's client (once it has joined), leaving none.
    pub(crate) async fn take_joining(&self) -> Option<Client> {
        self.joining.write().await.take()
    }

    /// Installs an opened client: starts its background task and the event forwarder, and
    /// releases bodies already waiting for release.
    pub(crate) async fn unlock(self: &Arc<Self>, client: Client) -> Result<(), EngineError> {
        let (role, name) = client
            .with_engine(|e, _, _| {
                let cert = e.certificate()?;
                Ok::<_, EngineError>((cert.role(), cert.label().to_owned()))
            })
            .await
            .map_err(|_| EngineError::NoProfile)??;
        let desk = Desk {
            client: client.clone(),
            role,
            name,
            untrusted: Arc::new(StdMutex::new(Vec::new())),
            online: Arc::new(StdMutex::new(false)),
            forwarder: Arc::new(StdMutex::new(None)),
        };
        let events = client.events();
        let task = tokio::spawn(forward(Arc::clone(self), desk.clone(), events));
        *desk.forwarder.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        client.start();
        let old = self.desk.write().await.replace(desk);
        if let Some(old) = old {
            close(old).await;
        }
        self.touch();
        // Bodies whose release was announced while the app was closed.
        release_due(&client).await;
        Ok(())
    }

    /// Locks: stops the client and closes the store (its keys are zeroized as they drop);
    /// pages are told to show the unlock screen.
    pub(crate) async fn lock(&self) {
        let desk = self.desk.write().await.take();
        if let Some(desk) = desk {
            close(desk).await;
        }
        let joining = self.joining.write().await.take();
        if let Some(client) = joining {
            let _ = client.shutdown().await;
        }
        self.notify(Live::Locked);
    }

    /// Locks when idle longer than the lock time; runs until the server stops.
    pub(crate) async fn idle_lock(self: Arc<Self>) {
        let mut tick = tokio::time::interval(IDLE_CHECK);
        loop {
            tick.tick().await;
            let open = self.desk.read().await.is_some() || self.joining.read().await.is_some();
            if self.idle_for() >= self.lock_after() && open {
                self.lock().await;
            }
        }
    }
}

async fn close(desk: Desk) {
    let task = desk
        .forwarder
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(task) = task {
        task.abort();
    }
    let _ = desk.client.shutdown().await;
}

/// Releases the case details this device should release now: those of the cases it holds at
/// once, a colleague's only when nobody of the organisation has released them within the
/// core's hand-off time (`Client::due_releases`), so the body goes out once.
async fn release_due(client: &Client) -> bool {
    let mut released = false;
    if let Ok(ids) = client.due_releases().await {
        for id in ids {
            released |= client.release_referral_body(id).await.is_ok();
        }
    }
    released
}

/// How often an open app looks for accepted referrals a colleague device has not released (the
/// core's hand-off time is ten minutes; this is well within it).
const RELEASE_CHECK: Duration = Duration::from_secs(60);

/// Turns client events into page notifications, and releases a referral's body as soon as the
/// receiver's acceptance arrives (the sender's app does not wait for anyone to press sync).
async fn forward(shared: Shared, desk: Desk, mut events: broadcast::Receiver<ClientEvent>) {
    use broadcast::error::RecvError;
    let mut check = tokio::time::interval(RELEASE_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            received = events.recv() => received,
            _ = check.tick() => {
                let client = desk.client.clone();
                let notify = Arc::clone(&shared);
                tokio::spawn(async move {
                    if release_due(&client).await {
                        notify.notify(Live::Referral);
                    }
                });
                continue;
            }
        };
        let event = match received {
            Ok(e) => e,
            Err(RecvError::Lagged(_)) => {
                shared.notify(Live::Message);
                shared.notify(Live::Referral);
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        match event {
            ClientEvent::Message(_) => shared.notify(Live::Message),
            ClientEvent::Referral(ReferralEvent::ReleaseBody { .. }) => {
                let client = desk.client.clone();
                let notify = Arc::clone(&shared);
                // Not inline: the release sends through the client, which may itself be
                // waiting to deliver the next event to this loop.
                // Only if it is this device's turn (it holds the case, or the holder is gone).
                tokio::spawn(async move {
                    release_due(&client).await;
                    notify.notify(Live::Referral);
                });
                shared.notify(Live::Referral);
            }
            ClientEvent::Referral(_) => shared.notify(Live::Referral),
            ClientEvent::UntrustedOrganisation(root) => {
                {
                    let mut list = desk.untrusted.lock().unwrap_or_else(|p| p.into_inner());
                    if !list.contains(&root) {
                        list.push(root);
                    }
                }
                shared.notify(Live::Contacts);
            }
            ClientEvent::Connected => {
                *desk.online.lock().unwrap_or_else(|p| p.into_inner()) = true;
                shared.notify(Live::Online);
            }
            ClientEvent::Disconnected => {
                *desk.online.lock().unwrap_or_else(|p| p.into_inner()) = false;
                shared.notify(Live::Offline);
            }
            _ => {}
        }
    }
}
