//! The async client (feature `net`): the sans-IO [`Engine`] over an encrypted [`SledStore`],
//! driven against relays with [`RelayClient`].
//!
//! The tokio runtime belongs to the caller (an app, the FFI layer, a test): [`Client`] only
//! spawns its background task on the current runtime when [`Client::start`] is called, and
//! [`Client::shutdown`] stops it.
//!
//! Delivery rules (see [`crate::engine`] for why they give exactly-once delivery):
//!
//! - [`Client::sync`] fetches envelopes, lets the engine persist each one, and only then acks
//!   them. Envelopes that can never be processed (tampering, revoked senders) are acked too,
//!   so they do not block the queue; store failures are not acked, and neither are envelopes
//!   from an organisation not trusted yet ([`ClientEvent::UntrustedOrganisation`]).
//! - Every send goes through the engine's outbox; [`Client::flush_outbox`] sends each entry and
//!   removes it only after `SendAccepted`. Transient failures ([`NetError::is_transient`]) are
//!   retried with exponential backoff; the entry stays in the outbox across restarts.
//! - The background task subscribes to the mailbox, syncs when the relay pushes
//!   `NewEnvelopes`, retries the outbox, and reconnects with backoff.
//!
//! ```no_run
//! # async fn demo() -> Result<(), handover_core::client::ClientError> {
//! use handover_core::client::Client;
//! use handover_core::engine::{IdentitySetup, RelayInfo};
//! use handover_core::identity::DeviceKeys;
//! use handover_core::store::{Credential, KdfParams, Passphrase};
//!
//! let relay = RelayInfo { host_port: "relay.example.org:4433".into(), pin: [0; 32] };
//! let credential = Credential::from(Passphrase::from("correct horse battery staple"));
//! let device = DeviceKeys::generate(&mut rand::rng());
//! let identity = IdentitySetup::NewOrganisation { device_label: "Intake laptop".into() };
//! let client = Client::create(std::path::Path::new("/data/profile"), &credential,
//!     KdfParams::default(), relay, device, identity, "Intake").await?;
//! client.start();
//! let mut events = client.events();
//! let (_invitation, link) = client.create_invitation(24 * 3600).await?;
//! println!("share {link}");
//! while let Ok(event) = events.recv().await { /* show it */ let _ = event; }
//! client.shutdown().await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Mutex, broadcast, watch};
use tokio::task::JoinHandle;

mod files;
mod join;
mod referrals;
mod relay_move;
pub use join::Joined;
pub use referrals::TimelineCheck;
pub use relay_move::{RelayMoveReport, RelayStatus};

use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use handover_proto::e2e::v1::content::Body;
use handover_proto::limits::{ID_LEN, KEY_LEN};
use handover_proto::relay::v1 as relay;

use crate::attachment::{self, AttachmentError};
use crate::engine::{
    self, Contact, Engine, EngineError, FanoutSent, IdentitySetup, MailboxKeys, Message, PeerId,
    ProfileDetails, Received, ReferralEvent, RelayInfo, VerifiedProfile,
};
use crate::identity::{DeviceId, DeviceKeys, SafetyNumber};
use crate::net::{NetError, RelayAddress, RelayClient};
use crate::store::{Credential, KdfParams, SledStore, StoreError};

/// The store type the client uses.
pub type ClientStore = SledStore<StdRng>;

/// Attempts of one send before a transient failure is left to the background retry.
pub const SEND_ATTEMPTS: u32 = 4;
/// First retry delay; doubled after each failed attempt.
pub const RETRY_BASE_DELAY: Duration = Duration::from_millis(200);
/// Longest wait `flush_outbox` spends before one retry; longer `retry_after_secs` hints leave
/// the entry to the background task.
pub const MAX_INLINE_RETRY_WAIT: Duration = Duration::from_secs(5);
/// Longest delay between reconnection attempts of the background task.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(60);
/// How often the background task retries the outbox while connected.
pub const OUTBOX_RETRY_INTERVAL: Duration = Duration::from_secs(30);
/// Envelopes asked for per `Fetch`.
pub const FETCH_LIMIT: u32 = 100;
/// After a move to another relay, how long syncs leave the old relay alone once it could not
/// be reached (each attempt may wait the connection time-out).
pub const DRAIN_RETRY_INTERVAL: Duration = Duration::from_secs(300);
/// Lifetime of an uploaded attachment or organisation packet: 30 days.
pub const BLOB_TTL: u64 = 30 * 24 * 3600;

/// Everything that can go wrong in the client.
///
/// Messages say what went wrong and what to do; they never carry ids, keys or message text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The engine refused the operation.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Talking to a relay failed.
    #[error("relay: {0}")]
    Net(#[from] NetError),
    /// Opening, reading or writing the local store failed.
    #[error("local store: {0}")]
    Store(#[from] StoreError),
    /// An attachment could not be encrypted or decrypted.
    #[error("attachment: {0}")]
    Attachment(#[from] AttachmentError),
    /// No relay address with a pin is known for this destination.
    #[error(
        "no pinned relay address is known for this destination; it must be on a relay this device knows"
    )]
    UnknownRelay,
    /// The client was shut down.
    #[error("the client has been shut down")]
    Closed,
}

/// Something the application should know about.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A new message was stored (for an organisation packet, after it was downloaded and
    /// opened).
    Message(Box<Message>),
    /// An envelope was refused (tampered, from an untrusted or revoked sender) and dropped, or
    /// an organisation packet could not be opened or carried a referral or consent step
    /// (docs/PROTOCOL.md §10; its key message is kept unopened).
    Refused,
    /// A message from a device of an organisation this device does not trust yet is waiting
    /// at the relay. Show the root's [`engine::org_fingerprint`], verify it in person, then
    /// [`Client::trust_organisation`] and [`Client::sync`]. Carries the organisation root.
    UntrustedOrganisation([u8; KEY_LEN]),
    /// The relay refused an outgoing envelope for good (expired, capability withdrawn); it was
    /// removed from the outbox. Carries the `Content.message_id`.
    SendFailed([u8; ID_LEN]),
    /// The background task is connected and subscribed.
    Connected,
    /// The background task lost its connection and will retry.
    Disconnected,
    /// A referral or consent step was applied or refused (carried by a received message or
    /// by [`Client::sweep_referrals`]).
    Referral(ReferralEvent),
}

struct Inner {
    engine: Mutex<Option<Engine<ClientStore>>>,
    rng: StdMutex<StdRng>,
    relays: Mutex<HashMap<String, RelayClient>>,
    /// During a move to another relay: the connection authenticated for the old mailbox.
    drain: Mutex<Option<RelayClient>>,
    /// When connecting to the old relay of a move last failed: syncs do not try again for
    /// [`DRAIN_RETRY_INTERVAL`].
    drain_failed_at: StdMutex<Option<std::time::Instant>>,
    events: broadcast::Sender<ClientEvent>,
    shutdown: watch::Sender<bool>,
    task: StdMutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
}

/// A Handover client: one profile on disk, connected to its relay.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A relay to create a profile's mailbox on and, if the relay requires one, its
/// mailbox-creation token (docs/PROTOCOL.md §4.2), which the relay's operator hands out like a
/// password. The token is only sent with `CreateMailbox`, never stored; it is zeroized on drop
/// and `Debug` does not show it.
pub struct RelayAccess {
    /// The relay.
    pub relay: RelayInfo,
    creation_token: zeroize::Zeroizing<Vec<u8>>,
}

impl RelayAccess {
    /// `relay`, with its creation token if it requires one.
    pub fn new(relay: RelayInfo, creation_token: Option<Vec<u8>>) -> Self {
        Self {
            relay,
            creation_token: zeroize::Zeroizing::new(creation_token.unwrap_or_default()),
        }
    }
}

impl fmt::Debug for RelayAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            relay,
            creation_token: _,
        } = self;
        f.debug_struct("RelayAccess")
            .field("relay", relay)
            .finish_non_exhaustive()
    }
}

fn fresh_rng() -> StdRng {
    StdRng::from_rng(&mut rand::rng())
}

fn address_of(info: &RelayInfo) -> RelayAddress {
    RelayAddress {
        host_port: info.host_port.clone(),
        pin: info.pin,
    }
}

fn relay_of(address: &wire::DeviceAddress) -> Result<RelayInfo, ClientError> {
    Ok(RelayInfo {
        host_port: address.relay.clone(),
        pin: address
            .relay_pin
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::UnknownRelay)?,
    })
}

/// Creates the mailbox on the access's relay, the profile in `engine` and publishes the first
/// prekeys; returns the authenticated connection.
async fn create_on_relay(
    engine: &mut Engine<ClientStore>,
    access: RelayAccess,
    device: DeviceKeys,
    identity: IdentitySetup,
    display_name: &str,
) -> Result<RelayClient, ClientError> {
    let RelayAccess {
        relay,
        creation_token,
    } = access;
    if engine.has_profile() {
        return Err(EngineError::ProfileExists.into());
    }
    let mut rng = fresh_rng();
    let mailbox = MailboxKeys::generate(&mut rng);
    let connection = RelayClient::connect(&address_of(&relay)).await?;
    let ids = connection
        .create_mailbox(mailbox.auth_key(), Vec::new(), &creation_token)
        .await?;
    drop(creation_token);
    engine.create_profile(
        device,
        mailbox,
        ids.recv_id,
        ids.send_id,
        relay,
        identity,
        display_name,
        now(),
        &mut rng,
    )?;
    connection
        .authenticate(&ids.recv_id, engine.mailbox_auth_key()?)
        .await?;
    let publish = engine.prekey_publish(now(), &mut rng)?;
    connection.prekey_publish(publish.clone()).await?;
    engine.prekey_bundle_published(&publish)?;
    Ok(connection)
}

/// Whether the relay will never accept this envelope, so it leaves the outbox.
fn refused_for_good(err: &NetError) -> bool {
    use relay::ErrorCode as C;
    matches!(
        err.relay_code(),
        Some(
            C::Expired
                | C::Unauthorised
                | C::NotFound
                | C::TooLarge
                | C::BadRequest
                | C::UnsupportedVersion
        )
    )
}

fn id16(bytes: &[u8]) -> Result<[u8; ID_LEN], ClientError> {
    bytes
        .try_into()
        .map_err(|_| ClientError::Engine(EngineError::InvalidInput("malformed id")))
}

impl Client {
    fn from_engine(engine: Engine<ClientStore>, dir: &Path) -> Self {
        let (events, _) = broadcast::channel(256);
        let (shutdown, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                engine: Mutex::new(Some(engine)),
                rng: StdMutex::new(fresh_rng()),
                relays: Mutex::new(HashMap::new()),
                drain: Mutex::new(None),
                drain_failed_at: StdMutex::new(None),
                events,
                shutdown,
                task: StdMutex::new(None),
                dir: dir.to_owned(),
            }),
        }
    }

    /// Opens an existing profile. A duress passphrase opens an empty store (and wipes the real
    /// one, see docs/STORAGE.md): then [`has_profile`](Self::has_profile) is false.
    pub async fn open(dir: &Path, credential: &Credential) -> Result<Self, ClientError> {
        let store = SledStore::open(dir, credential, fresh_rng())?;
        let engine = Engine::open(store)?;
        Ok(Self::from_engine(engine, dir))
    }

    /// Creates a profile: a new encrypted store in `dir` (or the existing one, if an earlier
    /// attempt created the store but not the profile), a mailbox on `relay`, the identity
    /// (`device` must be the keys an admin certified for [`IdentitySetup::Enrolled`]), and
    /// the first prekeys.
    pub async fn create(
        dir: &Path,
        credential: &Credential,
        kdf: KdfParams,
        relay: RelayInfo,
        device: DeviceKeys,
        identity: IdentitySetup,
        display_name: &str,
    ) -> Result<Self, ClientError> {
        let access = RelayAccess::new(relay, None);
        Self::create_with_access(dir, credential, kdf, access, device, identity, display_name).await
    }

    /// [`Client::create`] on a relay that may require a mailbox-creation token.
    pub async fn create_with_access(
        dir: &Path,
        credential: &Credential,
        kdf: KdfParams,
        access: RelayAccess,
        device: DeviceKeys,
        identity: IdentitySetup,
        display_name: &str,
    ) -> Result<Self, ClientError> {
        let store = match SledStore::open(dir, credential, fresh_rng()) {
            Ok(store) => store,
            Err(StoreError::NotFound) => SledStore::create(dir, credential, kdf, fresh_rng())?,
            Err(e) => return Err(e.into()),
        };
        let mut engine = Engine::open(store)?;
        let host_port = access.relay.host_port.clone();
        let connection =
            create_on_relay(&mut engine, access, device, identity, display_name).await?;
        let client = Self::from_engine(engine, dir);
        client
            .inner
            .relays
            .lock()
            .await
            .insert(host_port, connection);
        Ok(client)
    }

    /// Whether the store holds a profile.
    pub async fn has_profile(&self) -> bool {
        self.inner
            .engine
            .lock()
            .await
            .as_ref()
            .is_some_and(|e| e.has_profile())
    }

    /// Runs `f` on the engine with a fresh `now` and the client's RNG: the seam for operations
    /// this API does not wrap yet (referrals and consent are added this way). Do not block in
    /// `f`; it holds the engine lock.
    pub async fn with_engine<T>(
        &self,
        f: impl FnOnce(&mut Engine<ClientStore>, &mut StdRng, u64) -> T,
    ) -> Result<T, ClientError> {
        let mut guard = self.inner.engine.lock().await;
        let engine = guard.as_mut().ok_or(ClientError::Closed)?;
        let mut rng = self.inner.rng.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(engine, &mut rng, now()))
    }

    async fn engine_op<T>(
        &self,
        f: impl FnOnce(&mut Engine<ClientStore>, &mut StdRng, u64) -> Result<T, EngineError>,
    ) -> Result<T, ClientError> {
        Ok(self.with_engine(f).await??)
    }

    /// A subscription to client events.
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.inner.events.subscribe()
    }

    // -----------------------------------------------------------------------------------------
    // Connections.

    /// A connection to `info`, reusing a live one; the own relay's connection is authenticated
    /// for the mailbox.
    async fn relay_for(&self, info: &RelayInfo) -> Result<RelayClient, ClientError> {
        let mut relays = self.inner.relays.lock().await;
        if let Some(c) = relays.get(&info.host_port)
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let connection = RelayClient::connect(&address_of(info)).await?;
        let own = self.engine_op(|e, _, _| Ok(e.relay()?.clone())).await?;
        if own == *info {
            let (recv_id, auth) = self
                .engine_op(|e, _, _| Ok((e.recv_id()?, e.mailbox_auth_key()?.clone())))
                .await?;
            connection.authenticate(&recv_id, &auth).await?;
        }
        relays.insert(info.host_port.clone(), connection.clone());
        Ok(connection)
    }

    async fn own_relay(&self) -> Result<RelayClient, ClientError> {
        let own = self.engine_op(|e, _, _| Ok(e.relay()?.clone())).await?;
        self.relay_for(&own).await
    }

    async fn forget_relay(&self, info: &RelayInfo) {
        self.inner.relays.lock().await.remove(&info.host_port);
    }

    /// Registers the current capability set with the relay (after invitations, contact cards
    /// and profiles issue new ones; idempotent).
    pub async fn sync_capabilities(&self) -> Result<(), ClientError> {
        let (recv_id, hashes) = self
            .engine_op(|e, _, now| Ok((e.recv_id()?, e.capability_hashes(now)?)))
            .await?;
        self.own_relay()
            .await?
            .set_capabilities(&recv_id, hashes)
            .await?;
        Ok(())
    }

    /// Publishes a new batch of one-time prekeys.
    pub async fn replenish_prekeys(&self) -> Result<(), ClientError> {
        let publish = self
            .engine_op(|e, rng, now| e.prekey_publish(now, rng))
            .await?;
        self.own_relay()
            .await?
            .prekey_publish(publish.clone())
            .await?;
        self.engine_op(move |e, _, _| e.prekey_bundle_published(&publish))
            .await?;
        Ok(())
    }

    /// Rotates the signed and last-resort prekeys when due, deletes expired retired ones, and
    /// publishes the current bundle if the relay does not hold it yet (run after every sync).
    pub async fn rotate_prekeys(&self) -> Result<(), ClientError> {
        let publish = self
            .engine_op(|e, rng, now| e.rotate_prekeys(now, rng))
            .await?;
        if let Some(publish) = publish {
            self.own_relay()
                .await?
                .prekey_publish(publish.clone())
                .await?;
            self.engine_op(move |e, _, _| e.prekey_bundle_published(&publish))
                .await?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Sync and outbox.

    /// Fetches and processes every queued envelope; returns the messages delivered.
    pub async fn sync(&self) -> Result<Vec<Message>, ClientError> {
        let own = self.engine_op(|e, _, _| Ok(e.relay()?.clone())).await?;
        match self.sync_inner().await {
            Err(ClientError::Net(e)) if e.is_transient() => {
                self.forget_relay(&own).await;
                Err(ClientError::Net(e))
            }
            other => other,
        }
    }

    async fn sync_inner(&self) -> Result<Vec<Message>, ClientError> {
        let mut delivered = Vec::new();
        let mut referral_steps = 0;
        // A move to another relay: finish its steps, then collect what still arrives at the
        // old mailbox (docs/PROTOCOL.md §10.4).
        match self
            .continue_relay_move(false, &mut delivered, &mut referral_steps)
            .await
        {
            // A relay that cannot be reached now is tried again at the next sync.
            Ok(_) | Err(ClientError::Net(_)) => {}
            Err(e) => return Err(e),
        }
        let connection = self.own_relay().await?;
        let recv_id = self.engine_op(|e, _, _| e.recv_id()).await?;
        self.fetch_mailbox(&connection, &recv_id, &mut delivered, &mut referral_steps)
            .await?;
        self.after_fetch(delivered, referral_steps).await
    }

    /// Fetches, processes and acks every envelope queued in mailbox `recv_id` on `connection`
    /// (authenticated for it), adding the delivered messages to `delivered`. Returns how many
    /// envelopes were left queued (from organisations not trusted yet).
    async fn fetch_mailbox(
        &self,
        connection: &RelayClient,
        recv_id: &[u8; ID_LEN],
        delivered: &mut Vec<Message>,
        referral_steps: &mut usize,
    ) -> Result<usize, ClientError> {
        let mut left = 0;
        let mut after_seq = 0;
        loop {
            let batch = connection.fetch(recv_id, after_seq, FETCH_LIMIT).await?;
            let mut acks = Vec::new();
            for queued in &batch.envelopes {
                after_seq = after_seq.max(queued.seq);
                let Some(envelope_id) = queued.envelope.as_ref().map(|e| e.envelope_id.clone())
                else {
                    continue;
                };
                let outcome = self
                    .with_engine(|e, rng, now| e.receive(queued, now, rng))
                    .await?;
                let referral_events = self.with_engine(|e, _, _| e.take_referral_events()).await?;
                *referral_steps += referral_events.len();
                for event in referral_events {
                    let _ = self.inner.events.send(ClientEvent::Referral(event));
                }
                match outcome {
                    Ok(Received::Delivered(m)) => delivered.push(*m),
                    Ok(_) => {}
                    Err(EngineError::Store(e)) => return Err(e.into()),
                    Err(EngineError::NoProfile) => return Err(ClientError::Closed),
                    Err(EngineError::UntrustedOrganisation) => {
                        // Left queued at the relay (until it expires) so it is delivered once
                        // the user has verified and trusted the sender's organisation.
                        if let Ok(root) = self
                            .with_engine(|e, _, _| e.envelope_sender_org(queued))
                            .await?
                        {
                            let _ = self
                                .inner
                                .events
                                .send(ClientEvent::UntrustedOrganisation(root));
                        }
                        left += 1;
                        continue;
                    }
                    Err(_) => {
                        let _ = self.inner.events.send(ClientEvent::Refused);
                    }
                }
                // Persisted (or never processable): now the relay may forget it.
                acks.push(envelope_id);
            }
            if !acks.is_empty() {
                connection.ack(recv_id, acks).await?;
            }
            if !batch.more || batch.envelopes.is_empty() {
                break;
            }
        }
        Ok(left)
    }

    /// The housekeeping after a sync's fetches, then the delivered messages (organisation
    /// packets opened) reported to the application.
    async fn after_fetch(
        &self,
        delivered: Vec<Message>,
        referral_steps: usize,
    ) -> Result<Vec<Message>, ClientError> {
        // Dedupe markers of expired envelopes are no longer needed (the relay never returns
        // an expired envelope), nor are expired capabilities.
        self.engine_op(|e, _, now| e.sweep(now)).await?;
        // Referral expiry; answers staged while receiving (PURGE_CONFIRMED) go out now.
        self.sweep_referrals().await?;
        // Colleague devices enrolled or reachable since catch up on the organisation's cases.
        self.share_cases().await?;
        if referral_steps > 0 {
            self.flush_after_send().await?;
        }
        // The signed and last-resort prekeys are replaced weekly and old ones deleted after
        // the longest envelope lifetime (docs/PROTOCOL.md §6.3).
        self.rotate_prekeys().await?;
        // Sessions started by others consume one-time prekeys: top them up.
        let left = self.engine_op(|e, _, _| e.one_time_prekeys_left()).await?;
        if left < (engine::ONE_TIME_PREKEY_BATCH as usize) / 2 {
            self.replenish_prekeys().await?;
        }
        let mut out = Vec::with_capacity(delivered.len());
        for message in delivered {
            let message = match &message.content.body {
                Some(Body::FanoutKey(_)) => match self.open_packet(&message).await {
                    Ok(opened) => opened,
                    Err(ClientError::Net(e)) if !e.is_transient() => message,
                    // A packet that does not decrypt, or carries what packets may not (a
                    // referral or consent step, docs/PROTOCOL.md §10): the key message stays
                    // as it was, the application is told, and the other messages still arrive.
                    Err(ClientError::Engine(EngineError::Fanout(_))) => {
                        let _ = self.inner.events.send(ClientEvent::Refused);
                        message
                    }
                    Err(e) => return Err(e),
                },
                _ => message,
            };
            let _ = self
                .inner
                .events
                .send(ClientEvent::Message(Box::new(message.clone())));
            out.push(message);
        }
        Ok(out)
    }

    /// Downloads and opens the organisation packet a `FanoutKey` message points to.
    pub async fn open_packet(&self, message: &Message) -> Result<Message, ClientError> {
        let Some(Body::FanoutKey(fk)) = &message.content.body else {
            return Err(EngineError::InvalidInput("not an organisation packet key").into());
        };
        let blob = fk
            .packet
            .as_ref()
            .ok_or(EngineError::InvalidInput("missing packet reference"))?;
        let blob_id = id16(&blob.blob_id)?;
        let size = attachment::download_len(blob, crate::fanout::MAX_PACKET_LEN)?;
        let relay = self.blob_relay(&blob.relay).await?;
        let mut ciphertext = Vec::new();
        self.relay_for(&relay)
            .await?
            .blob_get(&blob_id, 0, size, &mut ciphertext, |_| {})
            .await?;
        let seq = message.seq;
        self.engine_op(move |e, _, _| e.open_org_packet(seq, &ciphertext))
            .await
    }

    /// The pinned relay for a blob reference: the own relay (empty or same host) or a relay of
    /// a known contact.
    async fn blob_relay(&self, host_port: &str) -> Result<RelayInfo, ClientError> {
        let own = self.engine_op(|e, _, _| Ok(e.relay()?.clone())).await?;
        if host_port.is_empty() || host_port == own.host_port {
            return Ok(own);
        }
        let known = self
            .engine_op(|e, _, _| {
                let mut found = None;
                for c in e.contacts()? {
                    if let Ok(a) = e.contact_address(c.peer())
                        && a.relay == host_port
                    {
                        found = Some(a);
                    }
                }
                Ok(found)
            })
            .await?;
        match known {
            Some(a) => relay_of(&a),
            None => Err(ClientError::UnknownRelay),
        }
    }

    /// Sends every outbox entry, retrying transient failures with exponential backoff; returns
    /// how many the relays accepted. Entries that still fail transiently stay for later.
    pub async fn flush_outbox(&self) -> Result<usize, ClientError> {
        let items = self.engine_op(|e, _, _| e.outbox()).await?;
        let mut accepted = 0;
        let mut last_err = None;
        // Relays that could not be reached in this flush: their items stay in the outbox for
        // the background task instead of each paying its own connect time-out.
        let mut unreachable: Vec<String> = Vec::new();
        for item in items {
            if unreachable.contains(&item.relay.host_port) {
                continue;
            }
            let mut delay = RETRY_BASE_DELAY;
            for attempt in 1..=SEND_ATTEMPTS {
                let result = match self.relay_for(&item.relay).await {
                    Ok(c) => c
                        .send(&item.send_id, item.capability(), item.envelope.clone())
                        .await
                        .map_err(ClientError::from),
                    Err(ClientError::Net(e)) if e.is_transient() => {
                        unreachable.push(item.relay.host_port.clone());
                        last_err = Some(ClientError::Net(e));
                        break;
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(_) => {
                        let id = item.envelope_id;
                        self.engine_op(move |e, _, _| e.outbox_accepted(&id))
                            .await?;
                        accepted += 1;
                        break;
                    }
                    Err(ClientError::Net(e)) if e.is_transient() => {
                        let wait = match &e {
                            NetError::Relay {
                                retry_after_secs, ..
                            } if *retry_after_secs > 0 => {
                                Duration::from_secs(u64::from(*retry_after_secs)).max(delay)
                            }
                            NetError::Relay { .. } => delay,
                            // The connection itself failed: reconnect next time.
                            _ => {
                                self.forget_relay(&item.relay).await;
                                delay
                            }
                        };
                        if attempt == SEND_ATTEMPTS || wait > MAX_INLINE_RETRY_WAIT {
                            // Left in the outbox for the background task.
                            last_err = Some(ClientError::Net(e));
                            break;
                        }
                        tokio::time::sleep(wait).await;
                        delay *= 2;
                    }
                    Err(ClientError::Net(e)) if !refused_for_good(&e) => {
                        // For example a full mailbox: keep it for the background retry.
                        last_err = Some(ClientError::Net(e));
                        break;
                    }
                    Err(ClientError::Net(_)) => {
                        // Refused for good (expired, capability withdrawn, too large).
                        let id = item.envelope_id;
                        self.engine_op(move |e, _, _| e.outbox_accepted(&id))
                            .await?;
                        let _ = self
                            .inner
                            .events
                            .send(ClientEvent::SendFailed(item.message_id));
                        break;
                    }
                    Err(e) => {
                        last_err = Some(e);
                        break;
                    }
                }
            }
        }
        match (accepted, last_err) {
            (0, Some(e)) => Err(e),
            _ => Ok(accepted),
        }
    }

    /// Starts the background task on the current tokio runtime: subscribe, sync on
    /// `NewEnvelopes`, retry the outbox, reconnect with backoff. Idempotent.
    pub fn start(&self) {
        let mut task = self.inner.task.lock().unwrap_or_else(|p| p.into_inner());
        if task.is_some() {
            return;
        }
        let client = self.clone();
        let mut stop = self.inner.shutdown.subscribe();
        *task = Some(tokio::spawn(async move {
            let mut backoff = RETRY_BASE_DELAY;
            loop {
                if *stop.borrow() {
                    return;
                }
                let stopped = tokio::select! {
                    _ = stop.changed() => true,
                    result = client.run_connected(&mut backoff) => {
                        let _ = result;
                        false
                    }
                };
                if stopped {
                    return;
                }
                let _ = client.inner.events.send(ClientEvent::Disconnected);
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_RECONNECT_DELAY);
            }
        }));
    }

    async fn run_connected(&self, backoff: &mut Duration) -> Result<(), ClientError> {
        let connection = self.own_relay().await?;
        let recv_id = self.engine_op(|e, _, _| e.recv_id()).await?;
        let mut subscription = connection.subscribe(vec![recv_id.to_vec()]).await?;
        let _ = self.inner.events.send(ClientEvent::Connected);
        *backoff = RETRY_BASE_DELAY;
        self.sync().await?;
        let _ = self.flush_outbox().await;
        loop {
            tokio::select! {
                event = subscription.next() => match event? {
                    Some(relay::event::Kind::NewEnvelopes(_)) => {
                        self.sync().await?;
                    }
                    // GoingAway or the stream ended: reconnect.
                    _ => {
                        self.forget_relay(&self.engine_op(|e, _, _| Ok(e.relay()?.clone())).await?).await;
                        return Ok(());
                    }
                },
                _ = tokio::time::sleep(OUTBOX_RETRY_INTERVAL) => {
                    // During a move the old mailbox pushes nothing here: collect it now.
                    if self.engine_op(|e, _, _| Ok(e.relay_move()?.is_some())).await? {
                        self.sync().await?;
                    }
                    let _ = self.flush_outbox().await;
                }
            }
        }
    }

    /// Stops the background task, closes connections and the store (flushed).
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.stop_task().await;
        for (_, c) in self.inner.relays.lock().await.drain() {
            c.close().await;
        }
        if let Some(c) = self.inner.drain.lock().await.take() {
            c.close().await;
        }
        let engine = self.inner.engine.lock().await.take();
        if let Some(engine) = engine {
            engine.into_store().close()?;
        }
        Ok(())
    }

    async fn stop_task(&self) {
        let _ = self.inner.shutdown.send(true);
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Panic wipe: stops everything, shreds the store keys and removes the profile's files at
    /// once (docs/STORAGE.md). The client is unusable afterwards.
    pub async fn panic_wipe(&self) -> Result<(), ClientError> {
        self.stop_task().await;
        self.inner.relays.lock().await.clear();
        self.inner.drain.lock().await.take();
        let engine = self.inner.engine.lock().await.take();
        match engine {
            Some(engine) => engine.into_store().panic_wipe()?,
            None => crate::store::panic_wipe(&self.inner.dir)?,
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Identity, organisations, invitations.

    /// Trusts an organisation root after its fingerprint was compared in person.
    pub async fn trust_organisation(&self, root: [u8; KEY_LEN]) -> Result<(), ClientError> {
        self.engine_op(move |e, _, _| e.trust_organisation(&root))
            .await
    }

    /// Creates an invitation valid for `ttl_secs`, registers its capability with the relay,
    /// and returns it with its link (also the QR payload).
    pub async fn create_invitation(
        &self,
        ttl_secs: u64,
    ) -> Result<(wire::Invitation, String), ClientError> {
        let invitation = self
            .engine_op(move |e, rng, now| {
                e.create_invitation(now.saturating_add(ttl_secs), now, rng)
            })
            .await?;
        self.sync_capabilities().await?;
        let link = engine::invitation_link(&invitation);
        Ok((invitation, link))
    }

    /// Accepts an invitation link: the inviter's organisation must be trusted
    /// ([`EngineError::UntrustedOrganisation`] otherwise; show
    /// [`engine::org_fingerprint`] of [`engine::invitation_org_root`] and trust it after an
    /// in-person check). Sends the first message with this device's reply address.
    pub async fn accept_invitation(&self, link: &str) -> Result<PeerId, ClientError> {
        let invitation = engine::parse_invitation_link(link)?;
        self.engine_op({
            let invitation = invitation.clone();
            move |e, _, now| e.check_invitation(&invitation, now)
        })
        .await?;
        let address = invitation
            .address
            .clone()
            .ok_or(EngineError::InvalidInvitation)?;
        let bundle = self.take_bundle(&address).await?;
        let (peer, _) = self
            .engine_op(move |e, rng, now| e.accept_invitation(&invitation, &bundle, now, rng))
            .await?;
        self.sync_capabilities().await?;
        self.flush_outbox().await?;
        Ok(peer)
    }

    async fn take_bundle(
        &self,
        address: &wire::DeviceAddress,
    ) -> Result<crate::pqxdh::PrekeyBundle, ClientError> {
        let info = relay_of(address)?;
        let send_id = id16(&address.send_id)?;
        let capability: [u8; KEY_LEN] = address
            .capability
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::InvalidBundle)?;
        let result = self
            .relay_for(&info)
            .await?
            .prekey_take(&send_id, &capability)
            .await?;
        Ok(engine::bundle_from_result(&result)?)
    }

    /// Starts a session with a contact if none exists (taking its prekey bundle).
    pub async fn ensure_session(&self, contact: PeerId) -> Result<(), ClientError> {
        if self
            .engine_op(move |e, _, _| e.has_session(contact))
            .await?
        {
            return Ok(());
        }
        let address = self
            .engine_op(move |e, _, _| e.contact_address(contact))
            .await?;
        let bundle = self.take_bundle(&address).await?;
        self.engine_op(move |e, rng, now| e.start_session(contact, &bundle, now, rng))
            .await
    }

    /// The known contacts.
    pub async fn contacts(&self) -> Result<Vec<Contact>, ClientError> {
        self.engine_op(|e, _, _| e.contacts()).await
    }

    /// The safety number of this device and a contact, to compare in person or by phone
    /// (docs/PROTOCOL.md §5.4): both sides compute the same number.
    pub async fn safety_number(&self, contact: PeerId) -> Result<SafetyNumber, ClientError> {
        self.engine_op(move |e, _, now| e.safety_number(contact, now))
            .await
    }

    /// Marks a contact verified after the safety number was compared: `compared` is the
    /// number as read from the contact's screen ([`EngineError::SafetyNumberMismatch`] if it
    /// is not theirs; nothing is recorded then). See [`Engine::mark_contact_verified`].
    pub async fn mark_contact_verified(
        &self,
        contact: PeerId,
        compared: String,
    ) -> Result<(), ClientError> {
        self.engine_op(move |e, _, now| e.mark_contact_verified(contact, &compared, now))
            .await
    }

    /// Marks a contact verified from the safety-number QR payload scanned from its screen.
    pub async fn mark_contact_verified_scanned(
        &self,
        contact: PeerId,
        scanned: Vec<u8>,
    ) -> Result<(), ClientError> {
        self.engine_op(move |e, _, now| e.mark_contact_verified_scanned(contact, &scanned, now))
            .await
    }

    /// Forgets that a contact was verified.
    pub async fn clear_contact_verified(&self, contact: PeerId) -> Result<(), ClientError> {
        self.engine_op(move |e, _, _| e.clear_contact_verified(contact))
            .await
    }

    /// Acknowledges a contact's identity key change without verifying it
    /// ([`Engine::acknowledge_identity_change`]).
    pub async fn acknowledge_identity_change(&self, contact: PeerId) -> Result<(), ClientError> {
        self.engine_op(move |e, _, _| e.acknowledge_identity_change(contact))
            .await
    }

    /// Stored messages from sequence number `from_seq` on.
    pub async fn messages(&self, from_seq: u64) -> Result<Vec<Message>, ClientError> {
        self.engine_op(move |e, _, now| e.messages(from_seq, now))
            .await
    }

    /// Enrols a device of this organisation (this device holds the root key); returns its
    /// certificate and the new device list, and sends the list to every contact with a session.
    pub async fn enrol_device(
        &self,
        device: crate::identity::DevicePublicKeys,
        role: crate::identity::Role,
        label: String,
    ) -> Result<(wire::SignedDeviceCertificate, wire::SignedDeviceList), ClientError> {
        let out = self
            .engine_op(move |e, _, now| e.enrol_device(&device, role, &label, now))
            .await?;
        self.distribute_device_list().await?;
        Ok(out)
    }

    /// Revokes a device of this organisation and distributes the new device list.
    pub async fn revoke_device(
        &self,
        device: DeviceId,
    ) -> Result<wire::SignedDeviceList, ClientError> {
        let list = self
            .engine_op(move |e, _, now| e.revoke_device(device, now))
            .await?;
        self.distribute_device_list().await?;
        Ok(list)
    }

    /// Sends this organisation's newest device list to every contact with a session and an
    /// address.
    pub async fn distribute_device_list(&self) -> Result<usize, ClientError> {
        let queued = self
            .engine_op(|e, rng, now| {
                let mut n = 0;
                for c in e.contacts()? {
                    if c.has_session
                        && c.has_address
                        && e.send_device_list(c.peer(), now, rng).is_ok()
                    {
                        n += 1;
                    }
                }
                Ok(n)
            })
            .await?;
        let _ = self.flush_outbox().await;
        Ok(queued)
    }

    // -----------------------------------------------------------------------------------------
    // Messages, organisations, attachments, directory.

    /// Sends a chat message (text and attachments) to a contact, starting a session first if
    /// needed. The message is in the outbox when this returns `Ok`; if the relay is unreachable
    /// it is sent by the background task later.
    pub async fn send_text(
        &self,
        to: PeerId,
        text: &str,
        attachments: Vec<wire::Attachment>,
    ) -> Result<Message, ClientError> {
        self.ensure_session(to).await?;
        let text = text.to_owned();
        let (message, _) = self
            .engine_op(move |e, rng, now| e.send_chat(to, &text, attachments, now, rng))
            .await?;
        self.flush_after_send().await?;
        Ok(message)
    }

    /// Sends a chat message that both devices delete `after_secs` seconds from now (a
    /// disappearing timer, `Content.expires_at`; docs/PROTOCOL.md §11.7).
    pub async fn send_text_disappearing(
        &self,
        to: PeerId,
        text: &str,
        after_secs: u64,
    ) -> Result<Message, ClientError> {
        self.ensure_session(to).await?;
        let body = Body::Chat(wire::ChatMessage {
            text: text.to_owned(),
            attachments: Vec::new(),
        });
        let (message, _) = self
            .engine_op(move |e, rng, now| {
                e.send_disappearing(to, body, now.saturating_add(after_secs), now, rng)
            })
            .await?;
        self.flush_after_send().await?;
        Ok(message)
    }

    /// Sends any `Content` body to a contact (the seam for referral and consent messages).
    pub async fn send_body(&self, to: PeerId, body: Body) -> Result<Message, ClientError> {
        self.ensure_session(to).await?;
        let (message, _) = self
            .engine_op(move |e, rng, now| e.send(to, body, now, rng))
            .await?;
        self.flush_after_send().await?;
        Ok(message)
    }

    async fn flush_after_send(&self) -> Result<(), ClientError> {
        match self.flush_outbox().await {
            Ok(_) => Ok(()),
            // Persisted in the outbox: the background task retries.
            Err(ClientError::Net(e)) if e.is_transient() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends a packet to an organisation's team: starts sessions with its active devices that
    /// have addresses, encrypts the packet once, uploads it, and sends each device its key.
    pub async fn send_to_organisation(
        &self,
        org_root: [u8; KEY_LEN],
        body: Body,
    ) -> Result<FanoutSent, ClientError> {
        let devices = self
            .engine_op(move |e, _, now| e.org_devices(&org_root, now))
            .await?;
        for device in devices {
            // Devices without an address or bundle are reported as unreached below.
            let peer = crate::engine::PeerId {
                org_root,
                device_id: device,
            };
            let _ = self.ensure_session(peer).await;
        }
        let packet = self
            .engine_op(move |e, rng, now| e.prepare_org_packet(&org_root, body, now, rng))
            .await?;
        let own = self.engine_op(|e, _, _| Ok(e.relay()?.clone())).await?;
        let ciphertext = packet.ciphertext().to_vec();
        let size = ciphertext.len() as u64;
        let blob_id = self
            .own_relay()
            .await?
            .blob_put(
                &ciphertext[..],
                size,
                now().saturating_add(BLOB_TTL),
                |_| {},
            )
            .await?;
        let sent = self
            .engine_op(move |e, rng, now| {
                e.send_fanout_keys(&packet, blob_id, &own.host_port, now, rng)
            })
            .await?;
        self.flush_after_send().await?;
        Ok(sent)
    }

    /// Encrypts a file (STREAM, fresh key) and uploads it to this device's relay, reporting
    /// uploaded ciphertext bytes to `progress`. Attach the result to a message.
    pub async fn upload_attachment(
        &self,
        data: &[u8],
        media_type: &str,
        file_name: &str,
        progress: impl FnMut(u64) + Send,
    ) -> Result<wire::Attachment, ClientError> {
        let (file, ciphertext) = self
            .with_engine(|_, rng, _| {
                let mut ciphertext =
                    Vec::with_capacity(attachment::ciphertext_len(data.len() as u64) as usize);
                attachment::encrypt(rng, &mut &data[..], &mut ciphertext, |_| {})
                    .map(|f| (f, ciphertext))
            })
            .await??;
        self.put_encrypted(file, &ciphertext[..], media_type, file_name, progress)
            .await
    }

    /// Downloads an attachment, decrypts it and verifies size and hash, reporting decrypted
    /// bytes to `progress`. Nothing is returned unless the whole file verified.
    pub async fn download_attachment(
        &self,
        attachment: &wire::Attachment,
        progress: impl FnMut(u64),
    ) -> Result<Vec<u8>, ClientError> {
        let blob = attachment
            .blob
            .as_ref()
            .ok_or(EngineError::InvalidInput("missing blob reference"))?;
        let blob_id = id16(&blob.blob_id)?;
        // Checked before anything is fetched or allocated: `size` is the peer's claim.
        let size = attachment::download_len(blob, attachment::MAX_ATTACHMENT_LEN)?;
        let relay = self.blob_relay(&blob.relay).await?;
        let mut ciphertext = Vec::new();
        self.relay_for(&relay)
            .await?
            .blob_get(&blob_id, 0, size, &mut ciphertext, |_| {})
            .await?;
        // At most MAX_ATTACHMENT_LEN, and its ciphertext has arrived in full.
        let mut plaintext = Vec::with_capacity(usize::try_from(blob.size).unwrap_or(0));
        attachment::decrypt(blob, &mut &ciphertext[..], &mut plaintext, progress)?;
        Ok(plaintext)
    }

    /// Signs and publishes this organisation's directory profile (admin devices only).
    pub async fn publish_profile(&self, details: ProfileDetails) -> Result<(), ClientError> {
        let signed = self
            .engine_op(move |e, rng, now| e.signed_org_profile(details, now, rng))
            .await?;
        self.sync_capabilities().await?;
        let connection = self.member_connection().await?;
        connection
            .directory_publish(prost::Message::encode_to_vec(&signed))
            .await?;
        Ok(())
    }

    async fn member_connection(&self) -> Result<RelayClient, ClientError> {
        let connection = self.own_relay().await?;
        let (cert, key) = self
            .engine_op(|e, _, _| {
                Ok((
                    prost::Message::encode_to_vec(e.certificate()?.signed()),
                    e.device_signing_key()?.clone(),
                ))
            })
            .await?;
        connection.member_auth(cert, &key).await?;
        Ok(connection)
    }

    /// Searches the members-only directory; returns the profiles whose signatures verify.
    pub async fn search_directory(
        &self,
        query: relay::DirectoryQuery,
    ) -> Result<Vec<(wire::SignedOrgProfile, VerifiedProfile)>, ClientError> {
        let connection = self.member_connection().await?;
        let found = connection.directory_query(query).await?;
        self.engine_op(move |e, _, now| {
            Ok(found
                .iter()
                .filter_map(|bytes| decode::signed_org_profile(bytes).ok())
                .filter_map(|signed| {
                    let verified = e.verify_org_profile(&signed, now).ok()?;
                    Some((signed, verified))
                })
                .collect())
        })
        .await
    }

    /// Imports a trusted organisation's profile (device list and intake devices).
    pub async fn import_profile(
        &self,
        signed: wire::SignedOrgProfile,
    ) -> Result<Vec<PeerId>, ClientError> {
        self.engine_op(move |e, _, now| e.import_org_profile(&signed, now))
            .await
    }

    /// Trusts a directory profile's organisation after its fingerprint was compared with the
    /// organisation (`compared`, as read out), then imports the profile
    /// ([`EngineError::FingerprintMismatch`] if it does not match: nothing is trusted or
    /// imported). Returns the intake devices added to the contacts; send each a contact card.
    pub async fn trust_and_import_profile(
        &self,
        signed: wire::SignedOrgProfile,
        compared: String,
    ) -> Result<Vec<PeerId>, ClientError> {
        self.engine_op(move |e, _, now| e.trust_and_import_org_profile(&signed, &compared, now))
            .await
    }

    /// Sends this device's contact card to a contact (for example an intake device found in the
    /// directory), so it can reply.
    pub async fn send_contact_card(&self, to: PeerId) -> Result<(), ClientError> {
        self.ensure_session(to).await?;
        self.engine_op(move |e, rng, now| e.send_contact_card(to, now, rng))
            .await?;
        self.sync_capabilities().await?;
        self.flush_after_send().await
    }
}
