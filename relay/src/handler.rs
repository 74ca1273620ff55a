//! The sans-IO request handler.
//!
//! [`Handler::handle`] takes one decoded request, the connection's [`Session`], the current time
//! and a random number generator, and returns an [`Action`] for the driver: a response to write
//! now, a response to write once the store is durable (group commit), or a streaming operation
//! (subscription, blob upload or download). It performs no I/O of its own beyond calls to the
//! [`Store`]; time, randomness and the TLS exporter come in as arguments, so every rule here is
//! testable with a fake clock and the in-memory store.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ed25519_dalek::{Signature, VerifyingKey};
use handover_proto::decode;
use handover_proto::e2e::v1 as e2e;
use handover_proto::limits::{
    ID_LEN, MAX_BLOB_CHUNK_LEN, MAX_ENVELOPE_LEN, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use handover_proto::relay::v1 as wire;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{
    BLOB_STORE_CHUNK, BlobAppended, BlobBegun, Delivery, Enqueued, Id, Mailbox, MailboxQuota,
    NewEnvelope, Published, SenderEnqueued, Store, StoreError, Swept,
};

use wire::ErrorCode;

/// Domain-separation prefix of the mailbox authentication signature.
pub const MAILBOX_AUTH_PREFIX: &[u8] = b"handover/1 mailbox-auth";
/// TLS exporter label of the mailbox authentication signature (context: the receive id).
pub const MAILBOX_AUTH_EXPORTER_LABEL: &[u8] = b"EXPORTER-handover/1 mailbox-auth";
/// Domain-separation prefix of the member authentication signature.
pub const MEMBER_AUTH_PREFIX: &[u8] = b"handover/1 member-auth";
/// TLS exporter label of the member authentication signature (empty context).
pub const MEMBER_AUTH_EXPORTER_LABEL: &[u8] = b"EXPORTER-handover/1 member-auth";
/// Prefix of the organisation root's signature on a device certificate.
pub const DEVICE_CERT_PREFIX: &[u8] = b"handover/1 device-cert";
/// Prefix of the organisation root's signature on a device list.
pub const DEVICE_LIST_PREFIX: &[u8] = b"handover/1 device-list";
/// Prefix of an admin device's signature on an organisation profile.
pub const ORG_PROFILE_PREFIX: &[u8] = b"handover/1 org-profile";
/// Length of the exporter values the signatures bind to.
pub const EXPORTER_LEN: usize = 32;

/// Largest encoded response the handler builds: the frame limit minus headroom for field
/// tags and lengths.
const RESPONSE_BUDGET: usize = MAX_FRAME_LEN - 64 * 1024;
/// Upper bound of the protobuf overhead of one repeated item (tags, lengths, small fields).
const PER_ITEM_OVERHEAD: usize = 64;

/// `retry_after_secs` of the refusal while the store's disk is below the free-space watermark.
pub const STORAGE_LOW_RETRY_SECS: u32 = 60;

/// Most mailboxes one connection may authenticate (bounds per-connection memory).
pub const MAX_AUTHENTICATED_PER_CONNECTION: usize = 1024;
/// Blob uploads one connection may have in progress at once (`RATE_LIMITED` beyond).
pub const MAX_UPLOADS_PER_CONNECTION: usize = 2;
/// Every blob upload must finish within this many seconds plus one second per
/// [`BLOB_UPLOAD_MIN_RATE`] bytes of its declared size (`BAD_REQUEST` after that).
pub const BLOB_UPLOAD_BASE_SECS: u64 = 60;
/// The slowest average upload rate, in bytes per second, an upload's deadline allows.
pub const BLOB_UPLOAD_MIN_RATE: u64 = 32 * 1024;

/// Operational limits of a relay. Each may be lowered from the protocol maximum by
/// configuration (docs/OPERATIONS.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest envelope ciphertext accepted (at most [`MAX_ENVELOPE_LEN`]).
    pub max_envelope_bytes: usize,
    /// Largest blob accepted.
    pub max_blob_bytes: u64,
    /// Total declared size of all stored blobs.
    pub blob_store_max_bytes: u64,
    /// Longest time to live of envelopes and blobs, seconds.
    pub max_ttl_secs: u64,
    /// Most envelopes queued per mailbox.
    pub mailbox_max_envelopes: u64,
    /// Most ciphertext bytes queued per mailbox.
    pub mailbox_max_bytes: u64,
    /// Most one-time prekeys (of each kind) stored per mailbox.
    pub max_one_time_prekeys: u64,
    /// Envelopes returned by a `Fetch` with `limit = 0`, and the cap on larger limits.
    pub fetch_max: usize,
    /// Most directory results returned.
    pub directory_max: usize,
    /// How long an "expired undelivered" tombstone is kept, seconds.
    pub tombstone_secs: u64,
    /// Most mailboxes the relay stores.
    pub relay_max_mailboxes: u64,
    /// Most envelopes queued in all mailboxes together (each costs a few hundred bytes of the
    /// relay's memory while queued).
    pub relay_max_envelopes: u64,
    /// Most ciphertext bytes queued in all mailboxes together.
    pub relay_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_envelope_bytes: MAX_ENVELOPE_LEN,
            max_blob_bytes: 100 * 1024 * 1024,
            blob_store_max_bytes: 20 * 1024 * 1024 * 1024,
            max_ttl_secs: 30 * 24 * 3600,
            mailbox_max_envelopes: 10_000,
            mailbox_max_bytes: 256 * 1024 * 1024,
            max_one_time_prekeys: 1000,
            fetch_max: 100,
            directory_max: 100,
            tombstone_secs: 7 * 24 * 3600,
            relay_max_mailboxes: 1_000_000,
            relay_max_envelopes: 2_000_000,
            relay_max_bytes: 64 * 1024 * 1024 * 1024,
        }
    }
}

/// Keying material exported from the connection's TLS session (RFC 8446 §7.5).
pub trait KeyingMaterial: Send + Sync {
    /// The exporter value for `label` and `context`, or `None` if the session cannot export.
    fn export(&self, label: &[u8], context: &[u8]) -> Option<[u8; EXPORTER_LEN]>;
}

/// A network member proved on a connection by `MemberAuth`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The organisation's root key.
    pub org_root_key: [u8; 32],
    /// The device's role.
    pub role: e2e::Role,
}

/// Per-connection state: what the connection has proved.
pub struct Session {
    exporter: Box<dyn KeyingMaterial>,
    state: Mutex<SessionState>,
    /// Blob uploads in progress on the connection.
    uploads: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Default)]
struct SessionState {
    authenticated: HashSet<Id>,
    member: Option<Member>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// A fresh session over a connection's keying material.
    pub fn new(exporter: Box<dyn KeyingMaterial>) -> Self {
        Self {
            exporter,
            state: Mutex::new(SessionState::default()),
            uploads: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if `recv_id` was authenticated on this connection.
    pub fn is_authenticated(&self, recv_id: &Id) -> bool {
        self.state().authenticated.contains(recv_id)
    }

    /// The member proved on this connection, if any.
    pub fn member(&self) -> Option<Member> {
        self.state().member.clone()
    }
}

/// What the driver must do with a request.
#[derive(Debug)]
pub enum Action {
    /// Write this response now.
    Reply(wire::Response),
    /// Make the store durable (`Store::sync`, shared with other writers), then write the
    /// response; then, if set, notify subscribers of this mailbox.
    ReplyWhenDurable {
        /// The response to write after the sync.
        response: wire::Response,
        /// Mailbox with new envelopes.
        notify: Option<Id>,
    },
    /// Answer `Subscribed`, then push events for these mailboxes until the stream closes.
    Subscribe(Vec<Id>),
    /// Read `BlobChunk` frames into [`Handler::blob_chunk`].
    BlobUpload(BlobUpload),
    /// Answer `BlobHeader`, then stream chunks from [`Handler::blob_read`].
    BlobDownload(BlobDownload),
}

/// A blob upload in progress.
#[derive(Debug)]
pub struct BlobUpload {
    /// The relay-chosen blob id.
    pub blob_id: Id,
    /// Declared size.
    pub size: u64,
    /// The upload must be complete before this time (Unix seconds; see
    /// [`BLOB_UPLOAD_BASE_SECS`]).
    pub deadline: u64,
    /// Holds one of the connection's [`MAX_UPLOADS_PER_CONNECTION`] places until dropped.
    _slot: UploadSlot,
    received: u64,
    /// Received bytes not yet written: the store is written in whole
    /// [`BLOB_STORE_CHUNK`]-sized pieces, so tiny chunks cannot force a rewrite per byte.
    buffered: Vec<u8>,
}

/// One of a connection's upload places, given back on drop.
#[derive(Debug)]
struct UploadSlot(Arc<std::sync::atomic::AtomicUsize>);

impl UploadSlot {
    /// Takes a place if fewer than [`MAX_UPLOADS_PER_CONNECTION`] are taken.
    fn take(uploads: &Arc<std::sync::atomic::AtomicUsize>) -> Option<Self> {
        use std::sync::atomic::Ordering;
        uploads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_UPLOADS_PER_CONNECTION).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(uploads.clone()))
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What a `BlobChunk` did to an upload.
#[derive(Debug)]
pub enum ChunkOutcome {
    /// More chunks are expected.
    More,
    /// The upload is complete: sync, then write this response.
    Complete(wire::Response),
}

/// A blob download.
#[derive(Debug, Clone, Copy)]
pub struct BlobDownload {
    /// The blob.
    pub blob_id: Id,
    /// Next byte to send.
    pub offset: u64,
    /// Total size.
    pub size: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

/// Builds an error response. Messages must not contain ids, addresses or user data.
pub fn error(code: ErrorCode, message: &str) -> wire::Response {
    error_retry(code, message, 0)
}

/// Builds an error response with a retry hint.
pub fn error_retry(code: ErrorCode, message: &str, retry_after_secs: u32) -> wire::Response {
    wire::Response {
        kind: Some(wire::response::Kind::Error(wire::Error {
            code: code as i32,
            message: message.to_owned(),
            retry_after_secs,
        })),
    }
}

/// Decodes a request frame's payload: `protocol_version` first, then the version-1 schema and
/// validation rules. A request of another version gets `ERROR_CODE_UNSUPPORTED_VERSION` whatever
/// else it holds; bytes that are not a request, or a version-1 request that breaks a rule, get
/// `ERROR_CODE_BAD_REQUEST`. The `Err` value is the response to send.
pub fn decode_request(payload: &[u8]) -> Result<wire::Request, wire::Response> {
    // Decode errors name fields and rules, never data.
    let version = decode::request_version(payload)
        .map_err(|e| error(ErrorCode::BadRequest, &e.to_string()))?;
    if version != PROTOCOL_VERSION {
        return Err(error(ErrorCode::UnsupportedVersion, UNSUPPORTED_VERSION));
    }
    decode::request(payload).map_err(|e| error(ErrorCode::BadRequest, &e.to_string()))
}

const UNSUPPORTED_VERSION: &str = "this relay speaks protocol version 1";

fn reply(kind: wire::response::Kind) -> Action {
    Action::Reply(wire::Response { kind: Some(kind) })
}

fn fail(code: ErrorCode, message: &str) -> Action {
    Action::Reply(error(code, message))
}

fn ok() -> Action {
    reply(wire::response::Kind::Ok(wire::Ok {}))
}

/// `Ok`, written only once the change is durable (group commit).
fn ok_when_durable() -> Action {
    Action::ReplyWhenDurable {
        response: wire::Response {
            kind: Some(wire::response::Kind::Ok(wire::Ok {})),
        },
        notify: None,
    }
}

fn storage_failed(err: &StoreError) -> Action {
    tracing::error!(error = %err, "storage failure");
    Action::Reply(error_retry(
        ErrorCode::Unavailable,
        "storage unavailable",
        5,
    ))
}

/// Unix seconds rounded down to the minute (coarse timestamps leak less timing).
pub fn coarse(now: u64) -> u64 {
    now - now % 60
}

fn to_id(bytes: &[u8]) -> Option<Id> {
    bytes.try_into().ok()
}

fn to_key(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

/// Verifies an Ed25519 signature over `prefix || message` (strict verification: no malleable or
/// small-order encodings).
fn verify(key: &[u8], prefix: &[u8], parts: &[&[u8]], signature: &[u8]) -> bool {
    let (Some(key), Ok(sig)) = (to_key(key), Signature::from_slice(signature)) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&key) else {
        return false;
    };
    let mut msg = prefix.to_vec();
    for p in parts {
        msg.extend_from_slice(p);
    }
    key.verify_strict(&msg, &sig).is_ok()
}

/// A send id from the wire, or the answer to a malformed one.
fn send_id_of(bytes: &[u8]) -> Result<Id, Action> {
    to_id(bytes).ok_or_else(|| fail(ErrorCode::BadRequest, "send id must be 16 bytes"))
}

/// The answer to a sender whose capability the mailbox does not accept.
fn capability_refused() -> Action {
    fail(
        ErrorCode::Unauthorised,
        "capability not accepted by this mailbox",
    )
}

/// True if SHA-256(`capability`) is in `capability_hashes`, compared in constant time over the
/// whole set.
fn capability_ok(capability_hashes: &[[u8; 32]], capability: &[u8]) -> bool {
    digest_admitted(capability_hashes, &Sha256::digest(capability).into())
}

/// True if `digest` is in `capability_hashes`, compared in constant time over the whole set.
fn digest_admitted(capability_hashes: &[[u8; 32]], digest: &[u8; 32]) -> bool {
    let mut found = subtle::Choice::from(0u8);
    for h in capability_hashes {
        found |= h.ct_eq(digest);
    }
    found.into()
}

/// A device certificate whose root signature and validity were checked.
struct VerifiedCert {
    cert: e2e::DeviceCertificate,
}

/// Checks a signed device certificate against `admitted` roots at `now`.
fn verify_certificate(
    signed: &e2e::SignedDeviceCertificate,
    admitted: &[[u8; 32]],
    now: u64,
) -> Result<VerifiedCert, &'static str> {
    let cert = decode::device_certificate(&signed.certificate)
        .map_err(|_| "device certificate is malformed")?;
    if !admitted.iter().any(|k| k[..] == cert.org_root_key[..]) {
        return Err("organisation is not admitted by this relay");
    }
    if !verify(
        &cert.org_root_key,
        DEVICE_CERT_PREFIX,
        &[&signed.certificate],
        &signed.signature,
    ) {
        return Err("device certificate signature is invalid");
    }
    if now < cert.not_before || now >= cert.not_after {
        return Err("device certificate is not valid now");
    }
    Ok(VerifiedCert { cert })
}

/// The request handler: protocol rules over a [`Store`].
pub struct Handler {
    store: Arc<dyn Store>,
    limits: Limits,
    admitted_orgs: Vec<[u8; 32]>,
    /// The store's file system has less free space than the relay's watermark (set by the
    /// driver, [`Handler::set_storage_low`]).
    storage_low: AtomicBool,
    /// If set, `CreateMailbox` must carry the token whose SHA-256 this is.
    creation_token: Option<CreationToken>,
}

/// The SHA-256 of a relay's mailbox-creation token (docs/PROTOCOL.md §4.2). The relay keeps
/// only this digest and compares digests in constant time, so neither the comparison's timing
/// nor the token's length leaks. Its `Debug` shows nothing.
#[derive(Clone)]
pub struct CreationToken([u8; 32]);

impl CreationToken {
    /// The digest of `token`.
    pub fn new(token: &[u8]) -> Self {
        Self(Sha256::digest(token).into())
    }

    /// True if `presented` is the token, compared in constant time.
    fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        self.0.ct_eq(&digest).into()
    }
}

impl std::fmt::Debug for CreationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CreationToken(..)")
    }
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Handler {
    /// A handler over `store` with `limits`, admitting members of the organisations whose root
    /// keys are in `admitted_orgs`.
    pub fn new(store: Arc<dyn Store>, limits: Limits, admitted_orgs: Vec<[u8; 32]>) -> Self {
        Self {
            store,
            limits,
            admitted_orgs,
            storage_low: AtomicBool::new(false),
            creation_token: None,
        }
    }

    /// Requires `CreateMailbox` to carry `token` (`None`: anyone may create mailboxes).
    pub fn with_creation_token(mut self, token: Option<CreationToken>) -> Self {
        self.creation_token = token;
        self
    }

    /// Tells the handler whether the store's file system is below the free-space watermark.
    /// While it is, requests that add data (`Send`, `CreateMailbox`, `PrekeyPublish`,
    /// `BlobPut`) are refused with `UNAVAILABLE`; everything that frees space (acks, mailbox
    /// deletion, the sweeper) and reads go on.
    pub fn set_storage_low(&self, low: bool) {
        self.storage_low.store(low, Ordering::Relaxed);
    }

    /// Whether requests that add data are refused for lack of free space.
    pub fn storage_low(&self) -> bool {
        self.storage_low.load(Ordering::Relaxed)
    }

    /// The refusal of a request that would add data while free space is below the watermark.
    fn refuse_if_storage_low(&self) -> Result<(), Action> {
        if self.storage_low() {
            return Err(Action::Reply(error_retry(
                ErrorCode::Unavailable,
                "the relay's disk is nearly full: new data is refused until space is freed",
                STORAGE_LOW_RETRY_SECS,
            )));
        }
        Ok(())
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Handles `request` at once if that needs no storage I/O that may block (a `Ping`; a
    /// `Send` whose send id is in the store's sender cache, or that fails validation);
    /// otherwise gives it back, unchanged, for [`Handler::handle`] on a thread that may block.
    /// The driver calls this on its async workers, so that the hottest request skips the hand-
    /// off to the blocking pool without ever waiting for the disk there.
    pub fn handle_nonblocking(
        &self,
        request: wire::Request,
        now: u64,
    ) -> Result<Action, wire::Request> {
        use wire::request::Kind;
        let wire::Request {
            protocol_version,
            kind,
        } = request;
        if protocol_version != PROTOCOL_VERSION {
            return Err(wire::Request {
                protocol_version,
                kind,
            });
        }
        match kind {
            Some(Kind::Ping(_)) => Ok(reply(wire::response::Kind::Pong(wire::Pong {
                now: coarse(now),
            }))),
            Some(Kind::Send(m)) => self.send(m, now, true).map_err(|m| wire::Request {
                protocol_version,
                kind: Some(Kind::Send(m)),
            }),
            kind => Err(wire::Request {
                protocol_version,
                kind,
            }),
        }
    }

    /// Handles one request at time `now` (Unix seconds).
    pub fn handle<R: CryptoRng + ?Sized>(
        &self,
        session: &Session,
        request: wire::Request,
        now: u64,
        rng: &mut R,
    ) -> Action {
        use wire::request::Kind;
        if request.protocol_version != PROTOCOL_VERSION {
            return fail(ErrorCode::UnsupportedVersion, UNSUPPORTED_VERSION);
        }
        let Some(kind) = request.kind else {
            return fail(ErrorCode::BadRequest, "request has no operation");
        };
        match kind {
            Kind::CreateMailbox(m) => self.create_mailbox(m, rng),
            Kind::DeleteMailbox(m) => self.delete_mailbox(session, &m.recv_id),
            Kind::Authenticate(m) => self.authenticate(session, &m),
            Kind::SetCapabilities(m) => self.set_capabilities(session, &m),
            // Only a nonblocking send gives its request back.
            Kind::Send(m) => self
                .send(m, now, false)
                .unwrap_or_else(|_| fail(ErrorCode::Unavailable, "send not handled")),
            Kind::Fetch(m) => self.fetch(session, &m, now),
            Kind::Ack(m) => self.ack(session, &m),
            Kind::Subscribe(m) => self.subscribe(session, &m),
            Kind::EnvelopeStatus(m) => self.envelope_status(&m, now),
            Kind::PrekeyPublish(m) => self.prekey_publish(session, &m),
            Kind::PrekeyTake(m) => self.prekey_take(&m),
            Kind::MemberAuth(m) => self.member_auth(session, &m, now),
            Kind::DirectoryPublish(m) => self.directory_publish(session, &m, now),
            Kind::DirectoryQuery(m) => self.directory_query(session, &m),
            Kind::BlobPut(m) => self.blob_put(session, &m, now, rng),
            Kind::BlobGet(m) => self.blob_get(&m, now),
            Kind::Ping(_) => reply(wire::response::Kind::Pong(wire::Pong { now: coarse(now) })),
        }
    }

    fn create_mailbox<R: CryptoRng + ?Sized>(&self, m: wire::CreateMailbox, rng: &mut R) -> Action {
        if let Some(token) = &self.creation_token
            && !token.matches(&m.creation_token)
        {
            return fail(
                ErrorCode::Unauthorised,
                "this relay creates mailboxes only with its creation token",
            );
        }
        if let Err(action) = self.refuse_if_storage_low() {
            return action;
        }
        if self.store.usage().mailboxes >= self.limits.relay_max_mailboxes {
            return fail(
                ErrorCode::QuotaExceeded,
                "this relay holds as many mailboxes as it allows",
            );
        }
        let Some(auth_key) = to_key(&m.auth_key) else {
            return fail(ErrorCode::BadRequest, "auth key must be 32 bytes");
        };
        if VerifyingKey::from_bytes(&auth_key).is_err() {
            return fail(
                ErrorCode::BadRequest,
                "auth key is not an Ed25519 public key",
            );
        }
        let Some(hashes) = m
            .capability_hashes
            .iter()
            .map(|h| to_key(h))
            .collect::<Option<Vec<_>>>()
        else {
            return fail(ErrorCode::BadRequest, "capability hashes must be 32 bytes");
        };
        // Collisions of 128-bit random ids do not happen; the retry only guards against a
        // broken RNG turning into a silent overwrite.
        for _ in 0..3 {
            let mut recv_id = [0u8; ID_LEN];
            let mut send_id = [0u8; ID_LEN];
            rng.fill_bytes(&mut recv_id);
            rng.fill_bytes(&mut send_id);
            let mailbox = Mailbox {
                send_id,
                auth_key,
                capability_hashes: hashes.clone(),
                queued_count: 0,
                queued_bytes: 0,
            };
            match self.store.create_mailbox(&recv_id, &mailbox) {
                Ok(true) => {
                    return Action::ReplyWhenDurable {
                        response: wire::Response {
                            kind: Some(wire::response::Kind::MailboxCreated(
                                wire::MailboxCreated {
                                    recv_id: recv_id.to_vec(),
                                    send_id: send_id.to_vec(),
                                },
                            )),
                        },
                        notify: None,
                    };
                }
                Ok(false) => continue,
                Err(err) => return storage_failed(&err),
            }
        }
        fail(ErrorCode::Unavailable, "could not allocate mailbox ids")
    }

    /// The receive id if it is authenticated on this session.
    fn authed(&self, session: &Session, recv_id: &[u8]) -> Result<Id, Action> {
        match to_id(recv_id) {
            Some(id) if session.is_authenticated(&id) => Ok(id),
            _ => Err(fail(
                ErrorCode::Unauthorised,
                "mailbox is not authenticated on this connection",
            )),
        }
    }

    fn authenticate(&self, session: &Session, m: &wire::Authenticate) -> Action {
        const DENIED: &str = "mailbox authentication failed";
        let Some(recv_id) = to_id(&m.recv_id) else {
            return fail(ErrorCode::BadRequest, "receive id must be 16 bytes");
        };
        let mailbox = match self.store.mailbox(&recv_id) {
            Ok(Some(mailbox)) => mailbox,
            // Unknown mailboxes fail like bad signatures: no existence oracle.
            Ok(None) => return fail(ErrorCode::Unauthorised, DENIED),
            Err(err) => return storage_failed(&err),
        };
        let Some(exporter) = session
            .exporter
            .export(MAILBOX_AUTH_EXPORTER_LABEL, &recv_id)
        else {
            return fail(
                ErrorCode::Unavailable,
                "connection cannot export keying material",
            );
        };
        if !verify(
            &mailbox.auth_key,
            MAILBOX_AUTH_PREFIX,
            &[&recv_id, &exporter],
            &m.signature,
        ) {
            return fail(ErrorCode::Unauthorised, DENIED);
        }
        let mut state = session.state();
        if !state.authenticated.contains(&recv_id)
            && state.authenticated.len() >= MAX_AUTHENTICATED_PER_CONNECTION
        {
            return fail(
                ErrorCode::QuotaExceeded,
                "too many mailboxes authenticated on this connection",
            );
        }
        state.authenticated.insert(recv_id);
        ok()
    }

    fn delete_mailbox(&self, session: &Session, recv_id: &[u8]) -> Action {
        let recv_id = match self.authed(session, recv_id) {
            Ok(id) => id,
            Err(action) => return action,
        };
        match self.store.delete_mailbox(&recv_id) {
            Ok(_) => {
                session.state().authenticated.remove(&recv_id);
                ok_when_durable()
            }
            Err(err) => storage_failed(&err),
        }
    }

    fn set_capabilities(&self, session: &Session, m: &wire::SetCapabilities) -> Action {
        let recv_id = match self.authed(session, &m.recv_id) {
            Ok(id) => id,
            Err(action) => return action,
        };
        let Some(hashes) = m
            .capability_hashes
            .iter()
            .map(|h| to_key(h))
            .collect::<Option<Vec<_>>>()
        else {
            return fail(ErrorCode::BadRequest, "capability hashes must be 32 bytes");
        };
        match self.store.set_capabilities(&recv_id, &hashes) {
            Ok(true) => ok_when_durable(),
            Ok(false) => fail(ErrorCode::NotFound, "mailbox no longer exists"),
            Err(err) => storage_failed(&err),
        }
    }

    /// Resolves a send id and checks the capability.
    fn sender_mailbox(&self, send_id: &[u8], capability: &[u8]) -> Result<Id, Action> {
        let send_id = send_id_of(send_id)?;
        match self.store.mailbox_by_send_id(&send_id) {
            Ok(Some((recv_id, mailbox)))
                if capability_ok(&mailbox.capability_hashes, capability) =>
            {
                Ok(recv_id)
            }
            Ok(Some(_)) => Err(capability_refused()),
            Ok(None) => Err(fail(ErrorCode::NotFound, "no such mailbox")),
            Err(err) => Err(storage_failed(&err)),
        }
    }

    /// Checks an expiry against `now` and the maximum time to live.
    fn check_expiry(&self, expires_at: u64, now: u64) -> Result<(), Action> {
        if expires_at <= now {
            return Err(fail(ErrorCode::Expired, "expiry is in the past"));
        }
        if expires_at - now > self.limits.max_ttl_secs {
            return Err(fail(
                ErrorCode::Expired,
                "time to live is longer than this relay allows",
            ));
        }
        Ok(())
    }

    /// A `Send`. With `nonblocking`, a send id missing from the store's sender cache is not
    /// looked up: the request comes back unchanged as the error.
    fn send(&self, m: wire::Send, now: u64, nonblocking: bool) -> Result<Action, wire::Send> {
        if let Err(action) = self.refuse_if_storage_low() {
            return Ok(action);
        }
        let Some(envelope) = m.envelope else {
            return Ok(fail(ErrorCode::BadRequest, "send has no envelope"));
        };
        let Some(envelope_id) = to_id(&envelope.envelope_id) else {
            return Ok(fail(ErrorCode::BadRequest, "envelope id must be 16 bytes"));
        };
        if envelope.ciphertext.is_empty() {
            return Ok(fail(ErrorCode::BadRequest, "envelope is empty"));
        }
        if envelope.ciphertext.len() > self.limits.max_envelope_bytes {
            return Ok(fail(
                ErrorCode::TooLarge,
                "envelope is larger than this relay accepts",
            ));
        }
        if let Err(action) = self.check_expiry(envelope.expires_at, now) {
            return Ok(action);
        }
        let send_id = match send_id_of(&m.send_id) {
            Ok(id) => id,
            Err(action) => return Ok(action),
        };
        let usage = self.store.usage();
        if usage.queued_envelopes >= self.limits.relay_max_envelopes
            || usage
                .queued_bytes
                .saturating_add(envelope.ciphertext.len() as u64)
                > self.limits.relay_max_bytes
        {
            return Ok(fail(
                ErrorCode::QuotaExceeded,
                "this relay is full: too many envelopes or bytes queued relay-wide",
            ));
        }
        let quota = MailboxQuota {
            max_envelopes: self.limits.mailbox_max_envelopes,
            max_bytes: self.limits.mailbox_max_bytes,
        };
        let new = NewEnvelope {
            envelope_id,
            expires_at: envelope.expires_at,
            ciphertext: envelope.ciphertext,
        };
        let accepted = wire::Response {
            kind: Some(wire::response::Kind::SendAccepted(wire::SendAccepted {
                accepted_at: coarse(now),
            })),
        };
        // Hashed here, so that only the comparison runs under the store's lock.
        let digest: [u8; 32] = Sha256::digest(&m.capability).into();
        let admit = |hashes: &[[u8; 32]]| digest_admitted(hashes, &digest);
        let outcome = if nonblocking {
            match self
                .store
                .try_enqueue_for_sender(&send_id, &admit, &new, quota)
            {
                Some(outcome) => outcome,
                None => {
                    let back = wire::Send {
                        send_id: m.send_id,
                        capability: m.capability,
                        envelope: Some(wire::Envelope {
                            envelope_id: envelope.envelope_id,
                            expires_at: new.expires_at,
                            ciphertext: new.ciphertext,
                        }),
                    };
                    return Err(back);
                }
            }
        } else {
            self.store.enqueue_for_sender(&send_id, &admit, &new, quota)
        };
        Ok(match outcome {
            Ok(SenderEnqueued::Mailbox(recv_id, Enqueued::Queued(_))) => Action::ReplyWhenDurable {
                response: accepted,
                notify: Some(recv_id),
            },
            // A retried send: the first copy may not be durable yet, so wait for the sync too.
            Ok(SenderEnqueued::Mailbox(_, Enqueued::Duplicate)) => Action::ReplyWhenDurable {
                response: accepted,
                notify: None,
            },
            Ok(SenderEnqueued::NoMailbox | SenderEnqueued::Mailbox(_, Enqueued::NoMailbox)) => {
                fail(ErrorCode::NotFound, "no such mailbox")
            }
            Ok(SenderEnqueued::Refused) => capability_refused(),
            Ok(SenderEnqueued::Mailbox(_, Enqueued::QuotaExceeded)) => fail(
                ErrorCode::QuotaExceeded,
                "mailbox is full: too many envelopes or bytes queued",
            ),
            Err(err) => storage_failed(&err),
        })
    }

    fn fetch(&self, session: &Session, m: &wire::Fetch, now: u64) -> Action {
        let recv_id = match self.authed(session, &m.recv_id) {
            Ok(id) => id,
            Err(action) => return action,
        };
        let max = self.limits.fetch_max.max(1);
        let limit = match m.limit {
            0 => max,
            n => (n as usize).min(max),
        };
        match self.store.fetch(&recv_id, m.after_seq, limit, now) {
            Ok((queued, mut more)) => {
                // Keep the answer within one frame: stop before the page would outgrow it (the
                // first envelope always fits, MAX_ENVELOPE_LEN is far below the frame limit).
                let mut envelopes = Vec::with_capacity(queued.len());
                let mut bytes = 0usize;
                for q in queued {
                    let cost = q.envelope.ciphertext.len() + PER_ITEM_OVERHEAD;
                    if !envelopes.is_empty() && bytes + cost > RESPONSE_BUDGET {
                        more = true;
                        break;
                    }
                    bytes += cost;
                    envelopes.push(wire::QueuedEnvelope {
                        seq: q.seq,
                        envelope: Some(wire::Envelope {
                            envelope_id: q.envelope.envelope_id.to_vec(),
                            expires_at: q.envelope.expires_at,
                            ciphertext: q.envelope.ciphertext,
                        }),
                    });
                }
                reply(wire::response::Kind::FetchResult(wire::FetchResult {
                    envelopes,
                    more,
                }))
            }
            Err(err) => storage_failed(&err),
        }
    }

    fn ack(&self, session: &Session, m: &wire::Ack) -> Action {
        let recv_id = match self.authed(session, &m.recv_id) {
            Ok(id) => id,
            Err(action) => return action,
        };
        let Some(ids) = m
            .envelope_ids
            .iter()
            .map(|i| to_id(i))
            .collect::<Option<Vec<_>>>()
        else {
            return fail(ErrorCode::BadRequest, "envelope ids must be 16 bytes");
        };
        match self.store.ack(&recv_id, &ids) {
            // The deletion is durable before the client hears Ok: once acknowledged, an
            // envelope is never delivered again, even after a crash.
            Ok(_) => ok_when_durable(),
            Err(err) => storage_failed(&err),
        }
    }

    fn subscribe(&self, session: &Session, m: &wire::Subscribe) -> Action {
        let mut ids = Vec::with_capacity(m.recv_ids.len());
        for raw in &m.recv_ids {
            match self.authed(session, raw) {
                Ok(id) => ids.push(id),
                Err(action) => return action,
            }
        }
        if ids.is_empty() {
            return fail(
                ErrorCode::BadRequest,
                "subscribe needs at least one mailbox",
            );
        }
        Action::Subscribe(ids)
    }

    fn envelope_status(&self, m: &wire::EnvelopeStatus, now: u64) -> Action {
        let recv_id = match self.sender_mailbox(&m.send_id, &m.capability) {
            Ok(id) => id,
            Err(action) => return action,
        };
        let Some(ids) = m
            .envelope_ids
            .iter()
            .map(|i| to_id(i))
            .collect::<Option<Vec<_>>>()
        else {
            return fail(ErrorCode::BadRequest, "envelope ids must be 16 bytes");
        };
        match self.store.envelope_states(&recv_id, &ids, now) {
            Ok(states) => reply(wire::response::Kind::EnvelopeStatusResult(
                wire::EnvelopeStatusResult {
                    states: states
                        .into_iter()
                        .map(|s| {
                            (match s {
                                Delivery::Unknown => wire::DeliveryState::Unknown,
                                Delivery::Pending => wire::DeliveryState::Pending,
                                Delivery::ExpiredUndelivered => {
                                    wire::DeliveryState::ExpiredUndelivered
                                }
                            }) as i32
                        })
                        .collect(),
                },
            )),
            Err(err) => storage_failed(&err),
        }
    }

    fn prekey_publish(&self, session: &Session, m: &wire::PrekeyPublish) -> Action {
        let recv_id = match self.authed(session, &m.recv_id) {
            Ok(id) => id,
            Err(action) => return action,
        };
        if m.bundle.is_empty() {
            return fail(ErrorCode::BadRequest, "prekey bundle is empty");
        }
        if let Err(action) = self.refuse_if_storage_low() {
            return action;
        }
        match self.store.prekey_publish(
            &recv_id,
            &m.bundle,
            &m.one_time_prekeys,
            &m.one_time_kem_prekeys,
            self.limits.max_one_time_prekeys,
        ) {
            Ok(Published::Stored) => ok_when_durable(),
            Ok(Published::NoMailbox) => fail(ErrorCode::NotFound, "mailbox no longer exists"),
            Ok(Published::QuotaExceeded) => fail(
                ErrorCode::QuotaExceeded,
                "too many one-time prekeys stored for this device",
            ),
            Err(err) => storage_failed(&err),
        }
    }

    fn prekey_take(&self, m: &wire::PrekeyTake) -> Action {
        let recv_id = match self.sender_mailbox(&m.send_id, &m.capability) {
            Ok(id) => id,
            Err(action) => return action,
        };
        match self.store.prekey_take(&recv_id) {
            // The removal must be durable before the key is handed out, or a crash could hand
            // the same one-time prekey to a second peer.
            Ok(Some(taken)) => Action::ReplyWhenDurable {
                response: wire::Response {
                    kind: Some(wire::response::Kind::PrekeyBundle(
                        wire::PrekeyBundleResult {
                            bundle: taken.bundle,
                            one_time_prekey: taken.one_time.unwrap_or_default(),
                            one_time_kem_prekey: taken.one_time_kem.unwrap_or_default(),
                            one_time_remaining: u32::try_from(taken.remaining).unwrap_or(u32::MAX),
                        },
                    )),
                },
                notify: None,
            },
            Ok(None) => fail(ErrorCode::NotFound, "no prekey bundle published"),
            Err(err) => storage_failed(&err),
        }
    }

    fn member_auth(&self, session: &Session, m: &wire::MemberAuth, now: u64) -> Action {
        let Ok(signed) = decode::signed_device_certificate(&m.device_certificate) else {
            return fail(ErrorCode::BadRequest, "device certificate is malformed");
        };
        let verified = match verify_certificate(&signed, &self.admitted_orgs, now) {
            Ok(v) => v,
            Err(reason) => return fail(ErrorCode::Unauthorised, reason),
        };
        let Some(exporter) = session.exporter.export(MEMBER_AUTH_EXPORTER_LABEL, &[]) else {
            return fail(
                ErrorCode::Unavailable,
                "connection cannot export keying material",
            );
        };
        if !verify(
            &verified.cert.signing_key,
            MEMBER_AUTH_PREFIX,
            &[&exporter],
            &m.signature,
        ) {
            return fail(ErrorCode::Unauthorised, "member authentication failed");
        }
        let (Some(org_root_key), Ok(role)) = (
            to_key(&verified.cert.org_root_key),
            e2e::Role::try_from(verified.cert.role),
        ) else {
            return fail(ErrorCode::BadRequest, "device certificate is malformed");
        };
        match self.is_revoked(&org_root_key, &verified.cert.device_id) {
            Ok(false) => {}
            Ok(true) => return fail(ErrorCode::Unauthorised, "device has been revoked"),
            Err(err) => return storage_failed(&err),
        }
        session.state().member = Some(Member { org_root_key, role });
        ok()
    }

    /// True if the organisation's published (root-signed, verified at publish time) device
    /// list revokes `device_id`.
    fn is_revoked(&self, org_root_key: &[u8; 32], device_id: &[u8]) -> Result<bool, StoreError> {
        for bytes in self.store.directory_all()? {
            let Ok(signed) = decode::signed_org_profile(&bytes) else {
                continue;
            };
            let Ok(profile) = decode::org_profile(&signed.profile) else {
                continue;
            };
            if profile.org_root_key[..] != org_root_key[..] {
                continue;
            }
            let Some(list) = profile.device_list else {
                return Ok(false);
            };
            let Ok(list) = decode::device_list(&list.list) else {
                return Ok(false);
            };
            return Ok(list
                .revoked_device_ids
                .iter()
                .any(|id| id[..] == device_id[..]));
        }
        Ok(false)
    }

    fn directory_publish(&self, session: &Session, m: &wire::DirectoryPublish, now: u64) -> Action {
        let Some(member) = session.member() else {
            return fail(
                ErrorCode::Unauthorised,
                "directory needs member authentication",
            );
        };
        if member.role != e2e::Role::Admin {
            return fail(ErrorCode::Unauthorised, "publishing needs an admin device");
        }
        let Ok(signed) = decode::signed_org_profile(&m.profile) else {
            return fail(ErrorCode::BadRequest, "organisation profile is malformed");
        };
        let Some(signer) = &signed.signer else {
            return fail(ErrorCode::BadRequest, "organisation profile has no signer");
        };
        let signer = match verify_certificate(signer, &[member.org_root_key], now) {
            Ok(v) => v,
            Err(reason) => return fail(ErrorCode::Unauthorised, reason),
        };
        if signer.cert.role != e2e::Role::Admin as i32 {
            return fail(
                ErrorCode::Unauthorised,
                "profile signer is not an admin device",
            );
        }
        if !verify(
            &signer.cert.signing_key,
            ORG_PROFILE_PREFIX,
            &[&signed.profile],
            &signed.signature,
        ) {
            return fail(ErrorCode::Unauthorised, "profile signature is invalid");
        }
        let Ok(profile) = decode::org_profile(&signed.profile) else {
            return fail(ErrorCode::BadRequest, "organisation profile is malformed");
        };
        if profile.org_root_key[..] != member.org_root_key[..] {
            return fail(
                ErrorCode::Unauthorised,
                "profile belongs to another organisation",
            );
        }
        if let Some(list) = &profile.device_list
            && !verify(
                &member.org_root_key,
                DEVICE_LIST_PREFIX,
                &[&list.list],
                &list.signature,
            )
        {
            return fail(ErrorCode::BadRequest, "device list signature is invalid");
        }
        match self
            .store
            .directory_put(&member.org_root_key, profile.issued_at, &m.profile)
        {
            Ok(true) => ok_when_durable(),
            Ok(false) => fail(
                ErrorCode::BadRequest,
                "a profile at least as new is already published",
            ),
            Err(err) => storage_failed(&err),
        }
    }

    fn directory_query(&self, session: &Session, m: &wire::DirectoryQuery) -> Action {
        if session.member().is_none() {
            return fail(
                ErrorCode::Unauthorised,
                "directory needs member authentication",
            );
        }
        let all = match self.store.directory_all() {
            Ok(all) => all,
            Err(err) => return storage_failed(&err),
        };
        let max = self.limits.directory_max.max(1);
        let limit = match m.limit {
            0 => max,
            n => (n as usize).min(max),
        };
        let any = |filter: &[String], have: &[String]| {
            filter.is_empty()
                || filter
                    .iter()
                    .any(|f| have.iter().any(|h| h.eq_ignore_ascii_case(f)))
        };
        let needle = m.name_contains.to_lowercase();
        let profiles = all
            .into_iter()
            .filter(|bytes| {
                let Ok(signed) = decode::signed_org_profile(bytes) else {
                    return false;
                };
                let Ok(p) = decode::org_profile(&signed.profile) else {
                    return false;
                };
                any(&m.services, &p.services)
                    && any(&m.languages, &p.languages)
                    && any(&m.regions, &p.regions)
                    && (needle.is_empty() || p.name.to_lowercase().contains(&needle))
            })
            .take(limit)
            .scan(0usize, |bytes, p| {
                *bytes += p.len() + PER_ITEM_OVERHEAD;
                (*bytes <= RESPONSE_BUDGET).then_some(p)
            })
            .collect();
        reply(wire::response::Kind::DirectoryResult(
            wire::DirectoryResult { profiles },
        ))
    }

    fn blob_put<R: CryptoRng + ?Sized>(
        &self,
        session: &Session,
        m: &wire::BlobPut,
        now: u64,
        rng: &mut R,
    ) -> Action {
        if let Err(action) = self.refuse_if_storage_low() {
            return action;
        }
        if m.size == 0 {
            return fail(ErrorCode::BadRequest, "blob is empty");
        }
        if m.size > self.limits.max_blob_bytes {
            return fail(
                ErrorCode::TooLarge,
                "blob is larger than this relay accepts",
            );
        }
        if let Err(action) = self.check_expiry(m.expires_at, now) {
            return action;
        }
        let Some(slot) = UploadSlot::take(&session.uploads) else {
            return Action::Reply(error_retry(
                ErrorCode::RateLimited,
                "too many blob uploads in progress on this connection",
                1,
            ));
        };
        let deadline = now
            .saturating_add(BLOB_UPLOAD_BASE_SECS)
            .saturating_add(m.size / BLOB_UPLOAD_MIN_RATE);
        for _ in 0..3 {
            let mut blob_id = [0u8; ID_LEN];
            rng.fill_bytes(&mut blob_id);
            match self.store.blob_begin(
                &blob_id,
                m.size,
                m.expires_at,
                self.limits.blob_store_max_bytes,
            ) {
                Ok(BlobBegun::Started) => {
                    return Action::BlobUpload(BlobUpload {
                        blob_id,
                        size: m.size,
                        deadline,
                        _slot: slot,
                        received: 0,
                        buffered: Vec::new(),
                    });
                }
                Ok(BlobBegun::QuotaExceeded) => {
                    return fail(ErrorCode::QuotaExceeded, "the relay's blob store is full");
                }
                Ok(BlobBegun::IdTaken) => continue,
                Err(err) => return storage_failed(&err),
            }
        }
        fail(ErrorCode::Unavailable, "could not allocate a blob id")
    }

    /// Feeds one uploaded chunk. On error the driver writes the response and calls
    /// [`Handler::blob_abort`].
    pub fn blob_chunk(
        &self,
        upload: &mut BlobUpload,
        chunk: wire::BlobChunk,
        now: u64,
    ) -> Result<ChunkOutcome, wire::Response> {
        if now >= upload.deadline {
            return Err(error(
                ErrorCode::BadRequest,
                "blob upload took longer than this relay allows",
            ));
        }
        if chunk.data.len() > MAX_BLOB_CHUNK_LEN {
            return Err(error(ErrorCode::TooLarge, "blob chunk is too large"));
        }
        let total = upload.received.saturating_add(chunk.data.len() as u64);
        if total > upload.size {
            return Err(error(
                ErrorCode::BadRequest,
                "blob chunks exceed the declared size",
            ));
        }
        upload.buffered.extend_from_slice(&chunk.data);
        upload.received = total;
        while upload.buffered.len() >= BLOB_STORE_CHUNK
            || (chunk.last && !upload.buffered.is_empty())
        {
            let take = upload.buffered.len().min(BLOB_STORE_CHUNK);
            let piece: Vec<u8> = upload.buffered.drain(..take).collect();
            match self
                .store
                .blob_append(&upload.blob_id, &piece, self.limits.blob_store_max_bytes)
            {
                Ok(BlobAppended::Appended) => {}
                Ok(BlobAppended::Refused) => {
                    return Err(error(ErrorCode::BadRequest, "blob upload rejected"));
                }
                Ok(BlobAppended::QuotaExceeded) => {
                    return Err(error(
                        ErrorCode::QuotaExceeded,
                        "the relay's blob store is full",
                    ));
                }
                Err(err) => {
                    tracing::error!(error = %err, "storage failure");
                    return Err(error_retry(
                        ErrorCode::Unavailable,
                        "storage unavailable",
                        5,
                    ));
                }
            }
        }
        if !chunk.last {
            return Ok(ChunkOutcome::More);
        }
        if upload.received != upload.size {
            return Err(error(
                ErrorCode::BadRequest,
                "blob ended before its declared size",
            ));
        }
        match self.store.blob_complete(&upload.blob_id) {
            Ok(true) => Ok(ChunkOutcome::Complete(wire::Response {
                kind: Some(wire::response::Kind::BlobStored(wire::BlobStored {
                    blob_id: upload.blob_id.to_vec(),
                })),
            })),
            Ok(false) => Err(error(ErrorCode::BadRequest, "blob upload rejected")),
            Err(err) => {
                tracing::error!(error = %err, "storage failure");
                Err(error_retry(
                    ErrorCode::Unavailable,
                    "storage unavailable",
                    5,
                ))
            }
        }
    }

    /// Discards an upload that failed or was abandoned.
    pub fn blob_abort(&self, upload: BlobUpload) {
        if let Err(err) = self.store.blob_delete(&upload.blob_id) {
            tracing::warn!(error = %err, "could not discard an abandoned blob; the sweeper will");
        }
    }

    fn blob_get(&self, m: &wire::BlobGet, now: u64) -> Action {
        let Some(blob_id) = to_id(&m.blob_id) else {
            return fail(ErrorCode::BadRequest, "blob id must be 16 bytes");
        };
        match self.store.blob_meta(&blob_id) {
            Ok(Some(meta)) if meta.complete && meta.expires_at > now => {
                if m.offset > meta.size {
                    return fail(ErrorCode::BadRequest, "offset is past the end of the blob");
                }
                Action::BlobDownload(BlobDownload {
                    blob_id,
                    offset: m.offset,
                    size: meta.size,
                    expires_at: meta.expires_at,
                })
            }
            Ok(_) => fail(ErrorCode::NotFound, "no such blob"),
            Err(err) => storage_failed(&err),
        }
    }

    /// The next chunk of a download (at most [`MAX_BLOB_CHUNK_LEN`] bytes); `last` is set on
    /// the final one.
    pub fn blob_read(&self, download: &mut BlobDownload) -> Result<wire::BlobChunk, StoreError> {
        let data = self
            .store
            .blob_read(&download.blob_id, download.offset, MAX_BLOB_CHUNK_LEN)?;
        download.offset += data.len() as u64;
        if data.is_empty() && download.offset < download.size {
            return Err(StoreError::Corrupt);
        }
        Ok(wire::BlobChunk {
            data,
            last: download.offset >= download.size,
        })
    }

    /// Copies live envelopes out of mostly dead log segments ([`LocalLog::compact`]
    /// (crate::store::LocalLog::compact)); 0 for a store without a local log.
    pub fn compact(&self) -> Result<u64, StoreError> {
        self.store.local_log().map_or(Ok(0), |log| log.compact())
    }

    /// Deletes up to `budget` expired items at `now`.
    pub fn sweep(&self, now: u64, budget: usize) -> Result<Swept, StoreError> {
        self.store.sweep(now, budget, self.limits.tombstone_secs)
    }
}

#[cfg(test)]
mod tests;
