//! The sans-IO client engine: profile, contacts, sessions, messages, outbox.
//!
//! [`Engine`] owns a [`KvStore`] and the in-memory view of this device's profile. Every method
//! takes the current time (`now`, Unix seconds) and, where it needs randomness, a
//! [`CryptoRng`]; none does network I/O. A driver (the async [`Client`](crate::client) with the
//! `net` feature, or a test's in-memory mailbox) moves what the engine produces to the relay and
//! hands back what the relay returns.
//!
//! # Exactly-once delivery
//!
//! The relay delivers at least once: an envelope stays queued until the recipient acks it. The
//! engine turns that into exactly once for the application:
//!
//! - **Receiving** ([`Engine::receive`]): the envelope is opened, the sender verified and the
//!   message decrypted on copies of the state; then one [`WriteBatch`] stores the advanced
//!   session (and consumed prekeys), the delivered [`Message`], a dedupe marker for its
//!   `Content.message_id` and one for the envelope id. Only after that batch is applied may the
//!   driver ack the envelope. A crash before the batch leaves nothing behind (the relay
//!   redelivers and the message is decrypted then); a crash after the batch but before the ack
//!   makes the relay redeliver an envelope whose marker exists: [`Received::Duplicate`], and the
//!   driver acks it.
//! - **Sending** ([`Engine::send`] and friends): the session is advanced and the sealed envelope
//!   (id, destination, expiry, bytes) is written to the outbox in the same batch, before
//!   anything reaches the network. The driver sends outbox entries and removes each one only
//!   after the relay's `SendAccepted` ([`Engine::outbox_accepted`]). A crash before that resends
//!   the *same* envelope (same id, same ciphertext); if the relay had already stored it, the
//!   recipient sees the envelope twice and drops the second copy by its markers.
//!
//! Failures never change state: an envelope that fails any check (HPKE, padding, sender
//! certificate, session, ratchet) is reported as an error and leaves the store untouched.
//!
//! # Referrals and consent
//!
//! The engine persists [`referral`](crate::referral) records, consent receipts, the receipt
//! registry and the disclosure ledger, and applies a received offer, body, control message or
//! receipt inside [`Engine::receive`]'s batch, so a referral step is applied exactly once with
//! its message (docs/PROTOCOL.md §10.3). Operations: [`Engine::record_consent`],
//! [`Engine::send_referral_offer`], [`Engine::referral_act`], [`Engine::release_referral_body`],
//! [`Engine::change_consent`], [`Engine::purge_status`], [`Engine::sweep_referrals`],
//! [`Engine::referrals`], [`Engine::kantara_export`], [`Engine::survivor_copy`]; what happened is
//! reported as [`ReferralEvent`]s ([`Engine::take_referral_events`]).

mod records;
mod referrals;

pub use referrals::{OfferConsent, PurgeReport, ReferralEvent, ReferralSummary};

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use prost::Message as _;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use handover_proto::e2e::v1::content::Body;
use handover_proto::limits::{ID_LEN, KEY_LEN, MAX_CAPABILITIES};
use handover_proto::relay::v1 as relay;
use handover_proto::validate::Validate;

use crate::fanout::{self, FanoutError, FanoutPacket};
use crate::identity::{
    CertificateError, DeviceCertificate, DeviceId, DeviceKeys, DevicePublicKeys, OrgRootKey,
    OrgRootPublicKey, OrgTrust, Role, SafetyNumber,
};
use crate::pqxdh::{PrekeyBundle, PrekeyStore};
use crate::sealed::{self, MailboxSealingKey};
use crate::session::{Session, SessionError};
use crate::store::{KvStore, Namespace, StoreError, WriteBatch};

use records::{ContactRecord, IssuedCapability, ProfileRecord};

/// Default lifetime of an envelope at the relay: 7 days (the relay's default maximum is 30).
pub const DEFAULT_ENVELOPE_TTL: u64 = 7 * 24 * 3600;
/// One-time prekeys (of each kind) generated per [`Engine::prekey_publish`].
pub const ONE_TIME_PREKEY_BATCH: u32 = 20;
/// The scheme and fragment marker of an invitation link (docs/PROTOCOL.md, "Invitations").
pub const INVITATION_LINK_PREFIX: &str = "handover://invite#";
/// Signature label of a signed organisation profile (PROTOCOL.md §5.1).
pub const LABEL_ORG_PROFILE: &[u8] = b"handover/1 org-profile";
/// Domain-separation prefix of an organisation root fingerprint (PROTOCOL.md, "Invitations").
pub const LABEL_ORG_FINGERPRINT: &[u8] = b"handover/1 org-fingerprint";
/// Validity of a certificate issued by [`Engine::enrol_device`] and the founding admin device:
/// one year.
pub const DEFAULT_CERTIFICATE_VALIDITY: u64 = 365 * 24 * 3600;

const KEY_PROFILE: &[u8] = b"profile";
const KEY_PREKEYS: &[u8] = b"store";
const KEY_PUBLISHED: &[u8] = b"published";
const KEY_CAPS: &[u8] = b"caps";
const KEY_MSG_SEQ: &[u8] = b"msgseq";
const PREFIX_ORG: &[u8] = b"org/";
const PREFIX_DEVICE: &[u8] = b"dev/";
const PREFIX_VERIFIED: &[u8] = b"ver/";
const PREFIX_MESSAGE: &[u8] = b"m/";
const PREFIX_MESSAGE_ID: &[u8] = b"id/";
const PREFIX_ENVELOPE: &[u8] = b"e/";

/// Everything that can go wrong in the engine.
///
/// Messages say what went wrong and what to do; they never contain key material, ids,
/// addresses or message text. Every refusal of an inbound envelope that could reveal which
/// check failed is [`EngineError::CouldNotDecrypt`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store holds no profile.
    #[error("no profile exists in this store; create one first")]
    NoProfile,
    /// A profile already exists.
    #[error("a profile already exists in this store; open it instead of creating a new one")]
    ProfileExists,
    /// The local store failed.
    #[error("the local store failed: {0}")]
    Store(#[from] StoreError),
    /// A stored record is malformed.
    #[error(
        "stored client state is damaged and could not be read; restore a backup or re-enrol this device"
    )]
    CorruptState,
    /// An inbound envelope was refused: it failed to open, its sender failed verification, or
    /// it did not decrypt. Nothing changed; ack it to drop it.
    #[error("could not decrypt")]
    CouldNotDecrypt,
    /// The organisation is not trusted on this device.
    #[error(
        "the organisation is not trusted on this device; verify its root key fingerprint in person, then trust it"
    )]
    UntrustedOrganisation,
    /// A certificate or device list was refused.
    #[error("certificate or device list refused: {0}")]
    Certificate(#[from] CertificateError),
    /// No contact is known for that device.
    #[error("unknown contact; accept an invitation or import the organisation's profile first")]
    UnknownContact,
    /// No session exists with the device yet.
    #[error("no session with this device yet; fetch its prekey bundle and start one")]
    NoSession,
    /// The contact's address is not known yet.
    #[error("no address is known for this contact yet; wait for its contact card")]
    NoAddress,
    /// The device was revoked by its organisation.
    #[error("the device has been revoked by its organisation; nothing is sent to it")]
    Revoked,
    /// The operation needs the organisation root key.
    #[error(
        "this device does not hold the organisation root key; use the organisation's admin device"
    )]
    NotOrgKeyHolder,
    /// The operation needs an admin device.
    #[error("only an admin device of the organisation can do this")]
    NotAdmin,
    /// The invitation is malformed.
    #[error("the invitation is not valid; ask for a new link or QR code")]
    InvalidInvitation,
    /// The invitation has expired.
    #[error("the invitation has expired; ask for a new one")]
    InvitationExpired,
    /// The prekey bundle is malformed or belongs to another device.
    #[error("the prekey bundle from the relay is invalid or belongs to another device")]
    InvalidBundle,
    /// A session operation failed.
    #[error("session error: {0}")]
    Session(#[from] SessionError),
    /// The message does not fit in an envelope.
    #[error("the message is too large for an envelope; send the content as an attachment")]
    TooLarge,
    /// Too many capabilities are outstanding.
    #[error("too many invitations and contacts hold capabilities; revoke unused invitations first")]
    TooManyCapabilities,
    /// The organisation profile is invalid.
    #[error("the organisation profile is invalid or not signed by an admin of that organisation")]
    InvalidProfile,
    /// The safety number given as compared is not this contact's; nothing was marked.
    #[error(
        "the safety number does not match the one for this contact; nothing was marked verified. Compare it again group by group, in person or by phone; if it still differs, send no case details to this device and tell its organisation"
    )]
    SafetyNumberMismatch,
    /// The organisation fingerprint given as compared is not the organisation's; nothing was
    /// trusted or imported.
    #[error(
        "the fingerprint does not match this organisation's; nothing was trusted or imported. Compare it again with the organisation in person or by phone"
    )]
    FingerprintMismatch,
    /// A fan-out packet failed.
    #[error("organisation packet failed: {0}")]
    Fanout(#[from] FanoutError),
    /// An argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidInput(&'static str),
    /// A referral or consent step was refused (consent gate, lifecycle, signature, timeline,
    /// ambassador); nothing changed.
    #[error(transparent)]
    Referral(#[from] crate::referral::ReferralError),
}

/// Where a relay is: `host:port` and the SHA-256 pin of its certificate's public key.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayInfo {
    /// `host:port`.
    pub host_port: String,
    /// SHA-256 of the relay certificate's SubjectPublicKeyInfo.
    pub pin: [u8; 32],
}

impl fmt::Debug for RelayInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Configuration, not user data; the host is still left out of logs by default.
        f.write_str("RelayInfo(..)")
    }
}

/// The keys of a new mailbox: the Ed25519 key that proves ownership to the relay and the X25519
/// key envelopes are sealed to. Generate them, create the mailbox at the relay with
/// [`auth_public_key`](Self::auth_public_key), then pass both to [`Engine::create_profile`].
pub struct MailboxKeys {
    auth: Box<SigningKey>,
    sealing: MailboxSealingKey,
}

impl fmt::Debug for MailboxKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            auth: _,
            sealing: _,
        } = self;
        f.write_str("MailboxKeys(..)")
    }
}

impl MailboxKeys {
    /// Fresh random mailbox keys.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        Self {
            auth: Box::new(SigningKey::generate(rng)),
            sealing: MailboxSealingKey::generate(rng),
        }
    }

    /// The Ed25519 public key to register with `CreateMailbox`.
    pub fn auth_public_key(&self) -> [u8; 32] {
        self.auth.verifying_key().to_bytes()
    }

    /// The signing key the driver authenticates the mailbox with.
    pub fn auth_key(&self) -> &SigningKey {
        &self.auth
    }
}

/// How this device gets its organisation identity.
#[derive(Clone, Debug)]
pub enum IdentitySetup {
    /// Found a new organisation: generate its root key on this device, which becomes its first
    /// admin device.
    NewOrganisation {
        /// Staff-facing label of this device.
        device_label: String,
    },
    /// Join an organisation whose admin issued `certificate` for this device's keys
    /// ([`Engine::enrol_device`]).
    Enrolled {
        /// This device's certificate.
        certificate: wire::SignedDeviceCertificate,
        /// The organisation's current device list (listing this device).
        device_list: wire::SignedDeviceList,
    },
}

/// Whether a message was received or sent by this device.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    /// Received from `peer`.
    Incoming,
    /// Sent to `peer`.
    Outgoing,
}

/// A message delivered to, or sent by, this device.
#[derive(Clone, PartialEq)]
pub struct Message {
    /// Local sequence number (delivery order on this device).
    pub seq: u64,
    /// Received or sent.
    pub direction: Direction,
    /// The other device (for an organisation packet: the first recipient device).
    pub peer: DeviceId,
    /// `Content.message_id`.
    pub message_id: [u8; ID_LEN],
    /// The sender's clock when sent, Unix seconds.
    pub sent_at: u64,
    /// When this device stored it, Unix seconds.
    pub stored_at: u64,
    /// The decrypted content.
    pub content: wire::Content,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No content, no ids: debug output may reach logs.
        f.debug_struct("Message")
            .field("seq", &self.seq)
            .field("direction", &self.direction)
            .finish_non_exhaustive()
    }
}

/// The outcome of [`Engine::receive`]. Either way the driver may now ack the envelope.
#[derive(Debug)]
#[non_exhaustive]
pub enum Received {
    /// A new message, now stored.
    Delivered(Box<Message>),
    /// The envelope or message was delivered before (a redelivery or a resend).
    Duplicate,
}

/// A sealed envelope waiting in the outbox for the relay's `SendAccepted`.
#[derive(Clone, PartialEq)]
pub struct OutboxItem {
    /// The envelope id (also inside `envelope`).
    pub envelope_id: [u8; ID_LEN],
    /// The recipient's relay.
    pub relay: RelayInfo,
    /// The recipient mailbox's send id.
    pub send_id: [u8; ID_LEN],
    capability: Zeroizing<[u8; KEY_LEN]>,
    /// `Content.message_id` of what it carries.
    pub message_id: [u8; ID_LEN],
    /// The recipient device.
    pub recipient: DeviceId,
    /// The envelope to send, exactly as persisted.
    pub envelope: relay::Envelope,
}

impl OutboxItem {
    /// The send capability for the recipient mailbox.
    pub fn capability(&self) -> &[u8; KEY_LEN] {
        &self.capability
    }
}

impl fmt::Debug for OutboxItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxItem")
            .field("expires_at", &self.envelope.expires_at)
            .finish_non_exhaustive()
    }
}

/// A known remote device.
#[derive(Clone, PartialEq)]
pub struct Contact {
    /// The device id.
    pub device_id: DeviceId,
    /// Its organisation root.
    pub org_root: [u8; KEY_LEN],
    /// Its role.
    pub role: Option<Role>,
    /// Name to show.
    pub display_name: String,
    /// Whether a reply address is known.
    pub has_address: bool,
    /// Whether a session exists.
    pub has_session: bool,
    /// Whether the safety number with this device was compared and marked verified
    /// ([`Engine::mark_contact_verified`]) and still holds: the device's keys have not changed
    /// since, its organisation is trusted and has not revoked it.
    pub verified: bool,
}

impl fmt::Debug for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contact")
            .field("role", &self.role)
            .field("has_address", &self.has_address)
            .field("has_session", &self.has_session)
            .field("verified", &self.verified)
            .finish_non_exhaustive()
    }
}

/// An organisation packet encrypted once, to upload as a blob before
/// [`Engine::send_fanout_keys`].
pub struct PreparedPacket {
    packet: FanoutPacket,
    content: wire::Content,
    org_root: [u8; KEY_LEN],
}

impl fmt::Debug for PreparedPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Holds the plaintext content and the packet key: debug output may reach logs.
        let Self { packet, .. } = self;
        f.debug_struct("PreparedPacket")
            .field("ciphertext_len", &packet.ciphertext.len())
            .finish_non_exhaustive()
    }
}

impl PreparedPacket {
    /// The STREAM ciphertext to upload with `BlobPut`.
    pub fn ciphertext(&self) -> &[u8] {
        &self.packet.ciphertext
    }

    /// `Content.message_id` of the packet.
    pub fn message_id(&self) -> [u8; ID_LEN] {
        let mut id = [0; ID_LEN];
        if self.content.message_id.len() == ID_LEN {
            id.copy_from_slice(&self.content.message_id);
        }
        id
    }
}

/// The result of [`Engine::send_fanout_keys`].
#[derive(Debug)]
pub struct FanoutSent {
    /// The sender's own copy of the packet.
    pub message: Message,
    /// One outbox entry per active device reached.
    pub items: Vec<OutboxItem>,
    /// Active devices of the organisation that could not be reached yet (no address or no
    /// session): start sessions and call again for them.
    pub unreached: Vec<DeviceId>,
}

/// A directory entry checked by [`Engine::verify_org_profile`].
#[derive(Clone)]
pub struct VerifiedProfile {
    /// The profile (signature and signer checked).
    pub profile: wire::OrgProfile,
    /// Whether this device trusts the profile's organisation root.
    pub trusted: bool,
    /// The organisation root fingerprint to compare in person before trusting it.
    pub fingerprint: String,
}

impl fmt::Debug for VerifiedProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The intake addresses carry send capabilities: keep them out of logs.
        f.debug_struct("VerifiedProfile")
            .field("name", &self.profile.name)
            .field("intake_devices", &self.profile.intake.len())
            .field("trusted", &self.trusted)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Descriptive fields of an organisation profile to publish.
#[derive(Clone, Debug, Default)]
pub struct ProfileDetails {
    /// Display name.
    pub name: String,
    /// Services offered.
    pub services: Vec<String>,
    /// Languages served (BCP 47).
    pub languages: Vec<String>,
    /// Regions served.
    pub regions: Vec<String>,
    /// Free-text description.
    pub description: String,
}

struct OrgEntry {
    trust: OrgTrust,
    lists: Vec<wire::SignedDeviceList>,
}

struct State {
    profile: ProfileRecord,
    own_cert: DeviceCertificate,
    orgs: BTreeMap<[u8; KEY_LEN], OrgEntry>,
    contacts: BTreeMap<DeviceId, ContactRecord>,
    /// Contacts whose safety number was compared, with the keys it was compared for.
    verified: BTreeMap<DeviceId, [u8; records::VERIFIED_LEN]>,
    prekeys: PrekeyStore,
    published: Option<wire::PublishedPrekeys>,
    caps: Vec<IssuedCapability>,
    next_seq: u64,
    /// Next outbox key: entries are keyed `u64be(counter) || envelope_id` so the driver sends
    /// them in the order they were queued.
    next_outbox: std::cell::Cell<u64>,
}

/// The sans-IO client engine over a [`KvStore`].
pub struct Engine<S: KvStore> {
    store: S,
    state: Option<Box<State>>,
    envelope_ttl: u64,
    referral_events: Vec<ReferralEvent>,
}

impl<S: KvStore> fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("has_profile", &self.state.is_some())
            .finish_non_exhaustive()
    }
}

fn key(prefix: &[u8], id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + id.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(id);
    k
}

fn random_id(rng: &mut impl CryptoRng) -> [u8; ID_LEN] {
    let mut id = [0u8; ID_LEN];
    rng.fill_bytes(&mut id);
    id
}

fn cert_root(signed: &wire::SignedDeviceCertificate) -> Option<[u8; KEY_LEN]> {
    let cert = decode::device_certificate(&signed.certificate).ok()?;
    cert.org_root_key.as_slice().try_into().ok()
}

fn to_id(bytes: &[u8]) -> Option<[u8; ID_LEN]> {
    bytes.try_into().ok()
}

/// The keys a contact's safety number depends on, besides its device id: signing key, identity
/// key, organisation root (see [`records::encode_verified`]).
fn safety_binding(signed: &wire::SignedDeviceCertificate) -> Option<[u8; records::VERIFIED_LEN]> {
    let cert = decode::device_certificate(&signed.certificate).ok()?;
    let mut out = [0u8; records::VERIFIED_LEN];
    for (slot, part) in out.chunks_exact_mut(KEY_LEN).zip([
        &cert.signing_key,
        &cert.identity_key,
        &cert.org_root_key,
    ]) {
        if part.len() != KEY_LEN {
            return None;
        }
        slot.copy_from_slice(part);
    }
    Some(out)
}

/// The fingerprint of an organisation root to compare in person (docs/PROTOCOL.md,
/// "Invitations"): the first 30 bytes of `SHA-256("handover/1 org-fingerprint" || root)` as six
/// groups of five digits.
pub fn org_fingerprint(root: &[u8; KEY_LEN]) -> String {
    let mut h = Sha256::new();
    h.update(LABEL_ORG_FINGERPRINT);
    h.update(root);
    let digest = h.finalize();
    let mut groups = Vec::with_capacity(6);
    for chunk in digest[..30].chunks(5) {
        let mut v = 0u64;
        for b in chunk {
            v = (v << 8) | u64::from(*b);
        }
        groups.push(format!("{:05}", v % 100_000));
    }
    groups.join(" ")
}

/// Whether `compared` (a fingerprint as read out by the organisation; case, spaces and
/// punctuation are ignored) is the fingerprint of `root`. Constant time in the fingerprint.
pub fn org_fingerprint_matches(root: &[u8; KEY_LEN], compared: &str) -> bool {
    use subtle::ConstantTimeEq;
    let norm = |s: &str| -> Vec<u8> {
        s.bytes()
            .filter(u8::is_ascii_alphanumeric)
            .map(|b| b.to_ascii_lowercase())
            .collect()
    };
    let (want, given) = (norm(&org_fingerprint(root)), norm(compared));
    want.len() == given.len() && bool::from(want.as_slice().ct_eq(given.as_slice()))
}

/// Encodes an invitation as a link: `handover://invite#` followed by the unpadded base64url of
/// the encoded `Invitation`. The same string is the QR payload.
pub fn invitation_link(invitation: &wire::Invitation) -> String {
    let encoded =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(invitation.encode_to_vec());
    format!("{INVITATION_LINK_PREFIX}{encoded}")
}

/// Parses and structurally validates an invitation link (or QR payload).
pub fn parse_invitation_link(link: &str) -> Result<wire::Invitation, EngineError> {
    let payload = link
        .trim()
        .strip_prefix(INVITATION_LINK_PREFIX)
        .ok_or(EngineError::InvalidInvitation)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| EngineError::InvalidInvitation)?;
    decode::invitation(&bytes).map_err(|_| EngineError::InvalidInvitation)
}

/// Builds a [`PrekeyBundle`] from the relay's answer to `PrekeyTake`.
pub fn bundle_from_result(result: &relay::PrekeyBundleResult) -> Result<PrekeyBundle, EngineError> {
    let bad = |_| EngineError::InvalidBundle;
    let published = decode::published_prekeys(&result.bundle).map_err(bad)?;
    let otpk = if result.one_time_prekey.is_empty() {
        None
    } else {
        Some(decode::one_time_prekey(&result.one_time_prekey).map_err(bad)?)
    };
    let kem = if result.one_time_kem_prekey.is_empty() {
        None
    } else {
        Some(decode::signed_kem_prekey(&result.one_time_kem_prekey).map_err(bad)?)
    };
    PrekeyBundle::from_parts(published, otpk, kem).ok_or(EngineError::InvalidBundle)
}

impl<S: KvStore> Engine<S> {
    /// Opens the engine over `store`, loading the profile if one exists
    /// ([`has_profile`](Self::has_profile)).
    pub fn open(store: S) -> Result<Self, EngineError> {
        let mut engine = Self {
            store,
            state: None,
            envelope_ttl: DEFAULT_ENVELOPE_TTL,
            referral_events: Vec::new(),
        };
        engine.state = engine.load()?.map(Box::new);
        Ok(engine)
    }

    /// Sets the lifetime of envelopes sent from now on (at most the relay's maximum TTL).
    pub fn set_envelope_ttl(&mut self, secs: u64) {
        self.envelope_ttl = secs.max(1);
    }

    /// Whether the store holds a profile.
    pub fn has_profile(&self) -> bool {
        self.state.is_some()
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The underlying store, mutably (for flushing or wiping it).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Gives the store back.
    pub fn into_store(self) -> S {
        self.store
    }

    fn load(&self) -> Result<Option<State>, EngineError> {
        let Some(bytes) = self.store.get(Namespace::Identity, KEY_PROFILE)? else {
            return Ok(None);
        };
        let profile = ProfileRecord::decode(&bytes)?;
        let root = cert_root(&profile.certificate).ok_or(EngineError::CorruptState)?;
        let root_key =
            OrgRootPublicKey::from_bytes(&root).map_err(|_| EngineError::CorruptState)?;
        // Our own certificate is checked for signature and organisation; validity is the
        // organisation's business (an expired device can still read its store).
        let own_cert = DeviceCertificate::verify(&profile.certificate, &root_key, 0)
            .or_else(|_| {
                let nb = decode::device_certificate(&profile.certificate.certificate)
                    .map(|c| c.not_before)
                    .unwrap_or(0);
                DeviceCertificate::verify(&profile.certificate, &root_key, nb)
            })
            .map_err(|_| EngineError::CorruptState)?;
        let mut orgs = BTreeMap::new();
        for (_, value) in self.store.scan_prefix(Namespace::Contacts, PREFIX_ORG)? {
            let (root, lists) = records::decode_org(&value)?;
            let pk = OrgRootPublicKey::from_bytes(&root).map_err(|_| EngineError::CorruptState)?;
            let mut trust = OrgTrust::new(pk);
            for list in &lists {
                trust
                    .apply_device_list(list)
                    .map_err(|_| EngineError::CorruptState)?;
            }
            orgs.insert(root, OrgEntry { trust, lists });
        }
        let mut contacts = BTreeMap::new();
        for (k, value) in self.store.scan_prefix(Namespace::Contacts, PREFIX_DEVICE)? {
            let id = to_id(&k[PREFIX_DEVICE.len()..]).ok_or(EngineError::CorruptState)?;
            contacts.insert(DeviceId(id), ContactRecord::decode(&value)?);
        }
        let mut verified = BTreeMap::new();
        for (k, value) in self
            .store
            .scan_prefix(Namespace::Contacts, PREFIX_VERIFIED)?
        {
            let id = to_id(&k[PREFIX_VERIFIED.len()..]).ok_or(EngineError::CorruptState)?;
            verified.insert(DeviceId(id), records::decode_verified(&value)?);
        }
        let prekeys = match self.store.get(Namespace::Prekeys, KEY_PREKEYS)? {
            Some(b) => PrekeyStore::from_secret_bytes(&b).map_err(|_| EngineError::CorruptState)?,
            None => PrekeyStore::new(),
        };
        let published = match self.store.get(Namespace::Prekeys, KEY_PUBLISHED)? {
            Some(b) => Some(decode::published_prekeys(&b).map_err(|_| EngineError::CorruptState)?),
            None => None,
        };
        let caps = match self.store.get(Namespace::Settings, KEY_CAPS)? {
            Some(b) => records::decode_caps(&b)?,
            None => Vec::new(),
        };
        let next_seq = match self.store.get(Namespace::Settings, KEY_MSG_SEQ)? {
            Some(b) => u64::from_be_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| EngineError::CorruptState)?,
            ),
            None => 1,
        };
        let next_outbox = self
            .store
            .keys_with_prefix(Namespace::Outbox, b"")?
            .iter()
            .filter_map(|k| k.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()))
            .map(u64::from_be_bytes)
            .max()
            .unwrap_or(0)
            + 1;
        Ok(Some(State {
            profile,
            own_cert,
            orgs,
            contacts,
            verified,
            prekeys,
            published,
            caps,
            next_seq,
            next_outbox: std::cell::Cell::new(next_outbox),
        }))
    }

    fn state(&self) -> Result<&State, EngineError> {
        self.state.as_deref().ok_or(EngineError::NoProfile)
    }

    fn state_mut(&mut self) -> Result<&mut State, EngineError> {
        self.state.as_deref_mut().ok_or(EngineError::NoProfile)
    }

    // -----------------------------------------------------------------------------------------
    // Profile and organisation setup.

    /// Creates this device's profile once its mailbox exists at the relay.
    ///
    /// `device` are this device's keys (for [`IdentitySetup::Enrolled`], the keys the admin
    /// certified); `recv_id` and `send_id` come from the relay's `MailboxCreated`.
    #[allow(clippy::too_many_arguments)]
    pub fn create_profile(
        &mut self,
        device: DeviceKeys,
        mailbox: MailboxKeys,
        recv_id: [u8; ID_LEN],
        send_id: [u8; ID_LEN],
        relay: RelayInfo,
        identity: IdentitySetup,
        display_name: &str,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(), EngineError> {
        if self.state.is_some() || self.store.contains(Namespace::Identity, KEY_PROFILE)? {
            return Err(EngineError::ProfileExists);
        }
        if display_name.len() > handover_proto::limits::MAX_SHORT_STRING_LEN {
            return Err(EngineError::InvalidInput("display name too long"));
        }
        let (certificate, org_key, list) = match identity {
            IdentitySetup::NewOrganisation { device_label } => {
                let org = OrgRootKey::generate(rng);
                let cert = org.issue_certificate(
                    &device.public_keys(),
                    Role::Admin,
                    now,
                    now.saturating_add(DEFAULT_CERTIFICATE_VALIDITY),
                    &device_label,
                )?;
                let list = org.sign_device_list(1, now, vec![cert.clone()], &[]);
                (cert, Some(org), list)
            }
            IdentitySetup::Enrolled {
                certificate,
                device_list,
            } => (certificate, None, device_list),
        };
        let root =
            cert_root(&certificate).ok_or(EngineError::Certificate(CertificateError::Malformed))?;
        let root_key = OrgRootPublicKey::from_bytes(&root)?;
        let mut trust = OrgTrust::new(root_key);
        trust.apply_device_list(&list)?;
        let own_cert = trust.verify_certificate(&certificate, now)?;
        if own_cert.identity_key() != device.public_keys().identity_key
            || own_cert.device_id() != device.device_id()
        {
            return Err(EngineError::Certificate(CertificateError::Malformed));
        }
        let profile = ProfileRecord {
            device,
            certificate,
            org_key,
            relay,
            recv_id,
            send_id,
            auth: mailbox.auth,
            sealing: mailbox.sealing,
            display_name: display_name.to_owned(),
            next_prekey_id: 1,
        };
        let lists = vec![list];
        let mut batch = WriteBatch::new();
        batch.put(Namespace::Identity, KEY_PROFILE, &profile.encode());
        batch.put(
            Namespace::Contacts,
            &key(PREFIX_ORG, &root),
            &records::encode_org(&root, &lists),
        );
        self.store.apply_batch(batch)?;
        self.store.flush()?;
        let mut orgs = BTreeMap::new();
        orgs.insert(root, OrgEntry { trust, lists });
        self.state = Some(Box::new(State {
            profile,
            own_cert,
            orgs,
            contacts: BTreeMap::new(),
            verified: BTreeMap::new(),
            prekeys: PrekeyStore::new(),
            published: None,
            caps: Vec::new(),
            next_seq: 1,
            next_outbox: std::cell::Cell::new(1),
        }));
        Ok(())
    }

    /// This device's id.
    pub fn device_id(&self) -> Result<DeviceId, EngineError> {
        Ok(self.state()?.own_cert.device_id())
    }

    /// This device's verified certificate.
    pub fn certificate(&self) -> Result<&DeviceCertificate, EngineError> {
        Ok(&self.state()?.own_cert)
    }

    /// This device's organisation root.
    pub fn org_root(&self) -> Result<[u8; KEY_LEN], EngineError> {
        Ok(self.state()?.own_cert.org_root_key().to_bytes())
    }

    /// Whether this device holds its organisation's root key.
    pub fn holds_org_key(&self) -> Result<bool, EngineError> {
        Ok(self.state()?.profile.org_key.is_some())
    }

    /// The mailbox receive id (for `Authenticate`, `Fetch`, `Ack`, `Subscribe`).
    pub fn recv_id(&self) -> Result<[u8; ID_LEN], EngineError> {
        Ok(self.state()?.profile.recv_id)
    }

    /// The mailbox authentication key.
    pub fn mailbox_auth_key(&self) -> Result<&SigningKey, EngineError> {
        Ok(&self.state()?.profile.auth)
    }

    /// The device signing key (for `MemberAuth`).
    pub fn device_signing_key(&self) -> Result<&SigningKey, EngineError> {
        Ok(self.state()?.profile.device.signing_key())
    }

    /// This device's relay.
    pub fn relay(&self) -> Result<&RelayInfo, EngineError> {
        Ok(&self.state()?.profile.relay)
    }

    /// This device's public keys (what an admin certifies when enrolling it).
    pub fn device_public_keys(&self) -> Result<DevicePublicKeys, EngineError> {
        Ok(self.state()?.profile.device.public_keys())
    }

    /// The newest accepted device list of this device's organisation.
    pub fn own_device_list(&self) -> Result<Option<wire::SignedDeviceList>, EngineError> {
        let st = self.state()?;
        let root = st.own_cert.org_root_key().to_bytes();
        Ok(st.orgs.get(&root).and_then(|o| o.lists.last().cloned()))
    }

    /// Trusts an organisation root (after comparing its [`org_fingerprint`] in person or
    /// scanning it from a QR code shown by one of its devices). Idempotent.
    pub fn trust_organisation(&mut self, root: &[u8; KEY_LEN]) -> Result<(), EngineError> {
        let pk = OrgRootPublicKey::from_bytes(root)?;
        let st = self.state_mut()?;
        if st.orgs.contains_key(root) {
            return Ok(());
        }
        self.store.put(
            Namespace::Contacts,
            &key(PREFIX_ORG, root),
            &records::encode_org(root, &[]),
        )?;
        let st = self.state_mut()?;
        st.orgs.insert(
            *root,
            OrgEntry {
                trust: OrgTrust::new(pk),
                lists: Vec::new(),
            },
        );
        Ok(())
    }

    /// Whether an organisation root is trusted.
    pub fn trusts_organisation(&self, root: &[u8; KEY_LEN]) -> Result<bool, EngineError> {
        Ok(self.state()?.orgs.contains_key(root))
    }

    /// Applies a device list for a trusted organisation (also done automatically for lists
    /// received in messages, contact cards and profiles).
    pub fn apply_device_list(&mut self, list: &wire::SignedDeviceList) -> Result<(), EngineError> {
        let root = decode::device_list(&list.list)
            .ok()
            .and_then(|l| <[u8; KEY_LEN]>::try_from(l.org_root_key.as_slice()).ok())
            .ok_or(EngineError::Certificate(CertificateError::Malformed))?;
        let mut batch = WriteBatch::new();
        let staged = self.stage_device_list(&root, list, &mut batch)?;
        self.store.apply_batch(batch)?;
        if let Some(entry) = staged {
            self.state_mut()?.orgs.insert(root, entry);
        }
        Ok(())
    }

    /// Checks a device list against a trusted organisation and, if it is new, stages its
    /// storage in `batch`; returns the new entry to install after the batch is applied.
    fn stage_device_list(
        &self,
        root: &[u8; KEY_LEN],
        list: &wire::SignedDeviceList,
        batch: &mut WriteBatch,
    ) -> Result<Option<OrgEntry>, EngineError> {
        let st = self.state()?;
        let entry = st
            .orgs
            .get(root)
            .ok_or(EngineError::UntrustedOrganisation)?;
        let mut trust = entry.trust.clone();
        let before = trust.device_list_version();
        trust.apply_device_list(list)?;
        if before == trust.device_list_version() {
            return Ok(None); // The same list again.
        }
        let mut lists = entry.lists.clone();
        lists.push(list.clone());
        batch.put(
            Namespace::Contacts,
            &key(PREFIX_ORG, root),
            &records::encode_org(root, &lists),
        );
        Ok(Some(OrgEntry { trust, lists }))
    }

    /// Stages a device list that came with an invitation, profile or contact card: a bad or
    /// old list is ignored (it changes no trust), a new one is staged in `batch`.
    fn stage_carried_list(
        &self,
        root: &[u8; KEY_LEN],
        list: Option<&wire::SignedDeviceList>,
        batch: &mut WriteBatch,
    ) -> Option<OrgEntry> {
        list.and_then(|list| self.stage_device_list(root, list, batch).ok().flatten())
    }

    /// The organisation's trust as it will be once `staged` (if any) is installed.
    fn trust_after<'a>(
        &'a self,
        root: &[u8; KEY_LEN],
        staged: Option<&'a OrgEntry>,
    ) -> Result<&'a OrgTrust, EngineError> {
        let st = self.state()?;
        staged
            .map(|o| &o.trust)
            .or_else(|| st.orgs.get(root).map(|o| &o.trust))
            .ok_or(EngineError::UntrustedOrganisation)
    }

    /// Issues a certificate for a new device of this organisation (this device must hold the
    /// root key) and signs a new device list that includes it. Distribute the list to contacts
    /// with [`send_device_list`](Self::send_device_list).
    pub fn enrol_device(
        &mut self,
        device: &DevicePublicKeys,
        role: Role,
        label: &str,
        now: u64,
    ) -> Result<(wire::SignedDeviceCertificate, wire::SignedDeviceList), EngineError> {
        let st = self.state()?;
        let org = st
            .profile
            .org_key
            .as_ref()
            .ok_or(EngineError::NotOrgKeyHolder)?;
        let cert = org.issue_certificate(
            device,
            role,
            now,
            now.saturating_add(DEFAULT_CERTIFICATE_VALIDITY),
            label,
        )?;
        let list = self.next_device_list(now, Some(cert.clone()), None)?;
        self.apply_device_list(&list)?;
        Ok((cert, list))
    }

    /// Revokes a device of this organisation (this device must hold the root key): signs a new
    /// device list without it and with its id revoked. Returns the list to distribute.
    pub fn revoke_device(
        &mut self,
        device_id: DeviceId,
        now: u64,
    ) -> Result<wire::SignedDeviceList, EngineError> {
        if device_id == self.device_id()? {
            return Err(EngineError::InvalidInput("a device cannot revoke itself"));
        }
        let list = self.next_device_list(now, None, Some(device_id))?;
        self.apply_device_list(&list)?;
        Ok(list)
    }

    fn next_device_list(
        &self,
        now: u64,
        add: Option<wire::SignedDeviceCertificate>,
        revoke: Option<DeviceId>,
    ) -> Result<wire::SignedDeviceList, EngineError> {
        let st = self.state()?;
        let org = st
            .profile
            .org_key
            .as_ref()
            .ok_or(EngineError::NotOrgKeyHolder)?;
        let root = st.own_cert.org_root_key().to_bytes();
        let entry = st.orgs.get(&root).ok_or(EngineError::CorruptState)?;
        let mut revoked: Vec<DeviceId> = Vec::new();
        for list in &entry.lists {
            let decoded = decode::device_list(&list.list).map_err(|_| EngineError::CorruptState)?;
            for id in decoded.revoked_device_ids {
                let id = DeviceId(to_id(&id).ok_or(EngineError::CorruptState)?);
                if !revoked.contains(&id) {
                    revoked.push(id);
                }
            }
        }
        if let Some(id) = revoke
            && !revoked.contains(&id)
        {
            revoked.push(id);
        }
        let mut devices: Vec<wire::SignedDeviceCertificate> = entry
            .trust
            .active_devices(now)
            .into_iter()
            .filter(|c| Some(c.device_id()) != revoke)
            .map(|c| c.signed().clone())
            .collect();
        devices.extend(add);
        let version = entry.trust.device_list_version().unwrap_or(0) + 1;
        Ok(org.sign_device_list(version, now, devices, &revoked))
    }

    /// Sends this organisation's newest device list to a contact (a `Content.device_list`).
    pub fn send_device_list(
        &mut self,
        to: DeviceId,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<OutboxItem, EngineError> {
        let list = self.own_device_list()?.ok_or(EngineError::CorruptState)?;
        let (_, item) = self.send_inner(to, Body::DeviceList(list), false, now, rng)?;
        Ok(item)
    }

    /// The safety number of this device and a contact, to compare in person.
    pub fn safety_number(&self, contact: DeviceId, now: u64) -> Result<SafetyNumber, EngineError> {
        let st = self.state()?;
        let cert = self.verified_contact_cert(contact, now)?;
        Ok(SafetyNumber::new(&st.own_cert, &cert))
    }

    /// Records that the user compared the safety number with `contact` (in person or by phone)
    /// and it matched. `compared` is the number as read from the contact's screen (only its
    /// digits count); if it is not the contact's current safety number nothing is recorded
    /// ([`EngineError::SafetyNumberMismatch`]). The record holds the contact's keys: should they
    /// change, [`Contact::verified`] turns false again.
    pub fn mark_contact_verified(
        &mut self,
        contact: DeviceId,
        compared: &str,
        now: u64,
    ) -> Result<(), EngineError> {
        if !self.safety_number(contact, now)?.matches_digits(compared) {
            return Err(EngineError::SafetyNumberMismatch);
        }
        self.store_verified(contact)
    }

    /// Like [`mark_contact_verified`](Self::mark_contact_verified) with the QR payload scanned
    /// from the contact's screen ([`SafetyNumber::qr_payload`] on their side).
    pub fn mark_contact_verified_scanned(
        &mut self,
        contact: DeviceId,
        scanned: &[u8],
        now: u64,
    ) -> Result<(), EngineError> {
        if !self.safety_number(contact, now)?.matches_scanned(scanned) {
            return Err(EngineError::SafetyNumberMismatch);
        }
        self.store_verified(contact)
    }

    /// Forgets that a contact was verified (for example after marking the wrong one).
    pub fn clear_contact_verified(&mut self, contact: DeviceId) -> Result<(), EngineError> {
        if !self.state()?.contacts.contains_key(&contact) {
            return Err(EngineError::UnknownContact);
        }
        self.store
            .delete(Namespace::Contacts, &key(PREFIX_VERIFIED, &contact.0))?;
        self.state_mut()?.verified.remove(&contact);
        Ok(())
    }

    fn store_verified(&mut self, contact: DeviceId) -> Result<(), EngineError> {
        let st = self.state()?;
        let c = st
            .contacts
            .get(&contact)
            .ok_or(EngineError::UnknownContact)?;
        let binding = safety_binding(&c.certificate).ok_or(EngineError::CorruptState)?;
        self.store.put(
            Namespace::Contacts,
            &key(PREFIX_VERIFIED, &contact.0),
            &records::encode_verified(&binding),
        )?;
        self.state_mut()?.verified.insert(contact, binding);
        Ok(())
    }

    /// Whether a contact's safety number was compared for the keys its certificate has now, and
    /// its organisation is trusted and has not revoked it.
    fn contact_verified(st: &State, id: &DeviceId, contact: &ContactRecord) -> bool {
        let Some(stored) = st.verified.get(id) else {
            return false;
        };
        let active = cert_root(&contact.certificate)
            .and_then(|root| st.orgs.get(&root))
            .is_some_and(|org| !org.trust.is_revoked(id));
        active && safety_binding(&contact.certificate).as_ref() == Some(stored)
    }

    // -----------------------------------------------------------------------------------------
    // Prekeys and capabilities.

    /// Generates prekeys (a signed prekey and a last-resort ML-KEM prekey the first time, then
    /// [`ONE_TIME_PREKEY_BATCH`] one-time prekeys of each kind), persists their secrets, and
    /// returns the `PrekeyPublish` request for the relay.
    pub fn prekey_publish(
        &mut self,
        rng: &mut impl CryptoRng,
    ) -> Result<relay::PrekeyPublish, EngineError> {
        let st = self.state()?;
        let mut prekeys = st.prekeys.clone();
        let mut next = st.profile.next_prekey_id;
        let device = &st.profile.device;
        let mut take_id = || {
            let id = next;
            next = next.wrapping_add(1).max(1);
            id
        };
        let published = match &st.published {
            Some(p) => p.clone(),
            None => wire::PublishedPrekeys {
                certificate: Some(st.profile.certificate.clone()),
                signed_prekey: Some(
                    prekeys
                        .generate_signed_prekey(device, take_id(), rng)
                        .map_err(|_| EngineError::CorruptState)?,
                ),
                last_resort_kem_prekey: Some(
                    prekeys
                        .generate_kem_prekey(device, take_id(), true, rng)
                        .map_err(|_| EngineError::CorruptState)?,
                ),
            },
        };
        let mut one_time = Vec::new();
        let mut one_time_kem = Vec::new();
        for _ in 0..ONE_TIME_PREKEY_BATCH {
            let otpk = prekeys
                .generate_one_time_prekey(take_id(), rng)
                .map_err(|_| EngineError::CorruptState)?;
            one_time.push(otpk.encode_to_vec());
            let kem = prekeys
                .generate_kem_prekey(device, take_id(), false, rng)
                .map_err(|_| EngineError::CorruptState)?;
            one_time_kem.push(kem.encode_to_vec());
        }
        let mut batch = WriteBatch::new();
        batch.put(Namespace::Prekeys, KEY_PREKEYS, &prekeys.to_secret_bytes());
        batch.put(
            Namespace::Prekeys,
            KEY_PUBLISHED,
            &published.encode_to_vec(),
        );
        // Persist the id counter with the secrets so ids are never reused.
        let st = self.state_mut()?;
        let old_next = st.profile.next_prekey_id;
        st.profile.next_prekey_id = next;
        batch.put(Namespace::Identity, KEY_PROFILE, &st.profile.encode());
        if let Err(e) = self.store.apply_batch(batch) {
            self.state_mut()?.profile.next_prekey_id = old_next;
            return Err(e.into());
        }
        let st = self.state_mut()?;
        st.prekeys = prekeys;
        st.published = Some(published.clone());
        Ok(relay::PrekeyPublish {
            recv_id: st.profile.recv_id.to_vec(),
            bundle: published.encode_to_vec(),
            one_time_prekeys: one_time,
            one_time_kem_prekeys: one_time_kem,
        })
    }

    /// One-time X25519 prekeys left on this device; publish more with
    /// [`prekey_publish`](Self::prekey_publish) when it runs low.
    pub fn one_time_prekeys_left(&self) -> Result<usize, EngineError> {
        Ok(self.state()?.prekeys.one_time_count())
    }

    /// SHA-256 hashes of the send capabilities currently issued and not expired at `now`: the
    /// set to register with `SetCapabilities` (or `CreateMailbox`).
    pub fn capability_hashes(&self, now: u64) -> Result<Vec<[u8; KEY_LEN]>, EngineError> {
        Ok(self
            .state()?
            .caps
            .iter()
            .filter(|c| c.expires_at > now)
            .map(|c| Sha256::digest(&c.capability[..]).into())
            .collect())
    }

    fn issue_capability(
        &self,
        caps: &mut Vec<IssuedCapability>,
        expires_at: u64,
        contact: Option<DeviceId>,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<[u8; KEY_LEN], EngineError> {
        caps.retain(|c| c.expires_at > now);
        if caps.len() >= MAX_CAPABILITIES {
            return Err(EngineError::TooManyCapabilities);
        }
        let mut cap = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut cap[..]);
        let out = *cap;
        caps.push(IssuedCapability {
            capability: cap,
            expires_at,
            contact,
        });
        Ok(out)
    }

    fn own_address(&self, capability: [u8; KEY_LEN]) -> Result<wire::DeviceAddress, EngineError> {
        let st = self.state()?;
        Ok(wire::DeviceAddress {
            device_id: st.own_cert.device_id().0.to_vec(),
            relay: st.profile.relay.host_port.clone(),
            relay_pin: st.profile.relay.pin.to_vec(),
            send_id: st.profile.send_id.to_vec(),
            capability: capability.to_vec(),
            sealing_key: st.profile.sealing.public_key().to_vec(),
        })
    }

    // -----------------------------------------------------------------------------------------
    // Invitations.

    /// Creates an invitation with a fresh send capability valid until `expires_at` for the
    /// first contact, plus the contact's reply. Register the new
    /// [`capability_hashes`](Self::capability_hashes) with the relay (`SetCapabilities`) before
    /// sharing it, then share [`invitation_link`] as a link or QR code.
    pub fn create_invitation(
        &mut self,
        expires_at: u64,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<wire::Invitation, EngineError> {
        if expires_at <= now {
            return Err(EngineError::InvalidInput(
                "invitation expiry must be in the future",
            ));
        }
        let mut caps = self.clone_caps()?;
        // The capability outlives the invitation: the acceptor's first message may still be in
        // flight when the invitation expires; it is replaced once the contact card arrives.
        let cap = self.issue_capability(
            &mut caps,
            expires_at.saturating_add(self.envelope_ttl),
            None,
            now,
            rng,
        )?;
        let address = self.own_address(cap)?;
        self.store
            .put(Namespace::Settings, KEY_CAPS, &records::encode_caps(&caps))?;
        let st = self.state_mut()?;
        st.caps = caps;
        let st = self.state()?;
        Ok(wire::Invitation {
            address: Some(address),
            certificate: Some(st.profile.certificate.clone()),
            device_list: self.own_device_list()?,
            display_name: st.profile.display_name.clone(),
            expires_at,
        })
    }

    fn clone_caps(&self) -> Result<Vec<IssuedCapability>, EngineError> {
        Ok(self
            .state()?
            .caps
            .iter()
            .map(|c| IssuedCapability {
                capability: c.capability.clone(),
                expires_at: c.expires_at,
                contact: c.contact,
            })
            .collect())
    }

    /// The device and organisation an invitation comes from, checked against the trusted
    /// organisations: returns the inviter's device id, or
    /// [`EngineError::UntrustedOrganisation`] with the root the user must verify first
    /// (see [`invitation_org_root`]).
    pub fn check_invitation(
        &self,
        invitation: &wire::Invitation,
        now: u64,
    ) -> Result<DeviceId, EngineError> {
        invitation
            .validate()
            .map_err(|_| EngineError::InvalidInvitation)?;
        if invitation.expires_at <= now {
            return Err(EngineError::InvitationExpired);
        }
        let signed = invitation
            .certificate
            .as_ref()
            .ok_or(EngineError::InvalidInvitation)?;
        let root = cert_root(signed).ok_or(EngineError::InvalidInvitation)?;
        let st = self.state()?;
        let org = st
            .orgs
            .get(&root)
            .ok_or(EngineError::UntrustedOrganisation)?;
        let mut trust = org.trust.clone();
        if let Some(list) = &invitation.device_list {
            // A newer list may revoke devices; an older or foreign one is ignored.
            let _ = trust.apply_device_list(list);
        }
        let cert = trust.verify_certificate(signed, now)?;
        let address = invitation
            .address
            .as_ref()
            .ok_or(EngineError::InvalidInvitation)?;
        if address.device_id != cert.device_id().0 || cert.device_id() == st.own_cert.device_id() {
            return Err(EngineError::InvalidInvitation);
        }
        Ok(cert.device_id())
    }

    /// Accepts an invitation: stores the inviter as a contact, starts a session from the
    /// prekey bundle the driver took with the invitation's address (`PrekeyTake` with its send
    /// id and capability), and queues a first message carrying this device's
    /// [`ContactCard`](wire::ContactCard) with a fresh capability for the inviter. Register the
    /// new capability hashes with the relay before sending the returned outbox entry.
    pub fn accept_invitation(
        &mut self,
        invitation: &wire::Invitation,
        bundle: &PrekeyBundle,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(DeviceId, OutboxItem), EngineError> {
        let inviter = self.check_invitation(invitation, now)?;
        let signed = invitation
            .certificate
            .clone()
            .ok_or(EngineError::InvalidInvitation)?;
        let root = cert_root(&signed).ok_or(EngineError::InvalidInvitation)?;
        let mut batch = WriteBatch::new();
        let staged_org =
            self.stage_carried_list(&root, invitation.device_list.as_ref(), &mut batch);
        let trust = self.trust_after(&root, staged_org.as_ref())?;
        let st = self.state()?;
        let (session, peer) = Session::initiate(&st.profile.device, trust, bundle, now, rng)?;
        if peer.device_id() != inviter {
            return Err(EngineError::InvalidBundle);
        }
        let contact = ContactRecord {
            certificate: signed,
            address: invitation.address.clone(),
            display_name: invitation.display_name.clone(),
        };
        let (item, caps) =
            self.stage_contact_card(&mut batch, inviter, &contact, session, now, rng)?;
        batch.put(
            Namespace::Contacts,
            &key(PREFIX_DEVICE, &inviter.0),
            &contact.encode(),
        );
        self.store.apply_batch(batch)?;
        let st = self.state_mut()?;
        st.caps = caps;
        st.contacts.insert(inviter, contact);
        if let Some(entry) = staged_org {
            st.orgs.insert(root, entry);
        }
        Ok((inviter, item))
    }

    /// Sends this device's [`ContactCard`](wire::ContactCard) (reply address with a fresh
    /// capability, certificate, device list, display name) to a contact it already has a
    /// session with, for example an intake device found in the directory, so it can answer.
    /// Register the new capability hashes with the relay before sending the entry.
    pub fn send_contact_card(
        &mut self,
        to: DeviceId,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<OutboxItem, EngineError> {
        self.verified_contact_cert(to, now)?;
        let st = self.state()?;
        let contact = st.contacts.get(&to).ok_or(EngineError::UnknownContact)?;
        let session = self.load_session(to)?.ok_or(EngineError::NoSession)?;
        let mut batch = WriteBatch::new();
        let (item, caps) = self.stage_contact_card(&mut batch, to, contact, session, now, rng)?;
        self.store.apply_batch(batch)?;
        self.state_mut()?.caps = caps;
        Ok(item)
    }

    /// Stages (session, outbox entry, capability set) for a contact card to `to`.
    fn stage_contact_card(
        &self,
        batch: &mut WriteBatch,
        to: DeviceId,
        contact: &ContactRecord,
        mut session: Session,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(OutboxItem, Vec<IssuedCapability>), EngineError> {
        let mut caps = self.clone_caps()?;
        let cap = self.issue_capability(&mut caps, u64::MAX, Some(to), now, rng)?;
        let st = self.state()?;
        let card = wire::ContactCard {
            address: Some(self.own_address(cap)?),
            certificate: Some(st.profile.certificate.clone()),
            device_list: self.own_device_list()?,
            display_name: st.profile.display_name.clone(),
        };
        let content = self.new_content(Body::ContactCard(card), now, rng);
        let address = contact.address.as_ref().ok_or(EngineError::NoAddress)?;
        let item = self.seal_to(&mut session, address, to, &content, now, rng)?;
        batch.put(Namespace::Sessions, &to.0, &session.to_secret_bytes());
        batch.put(Namespace::Outbox, &self.outbox_key(&item)?, &item.encode());
        batch.put(Namespace::Settings, KEY_CAPS, &records::encode_caps(&caps));
        Ok((item, caps))
    }

    // -----------------------------------------------------------------------------------------
    // Contacts and sessions.

    /// The known contacts.
    pub fn contacts(&self) -> Result<Vec<Contact>, EngineError> {
        let st = self.state()?;
        let mut out = Vec::new();
        for (id, c) in &st.contacts {
            let cert = decode::device_certificate(&c.certificate.certificate).ok();
            out.push(Contact {
                device_id: *id,
                org_root: cert_root(&c.certificate).unwrap_or([0; KEY_LEN]),
                role: cert.and_then(|c| match c.role {
                    1 => Some(Role::Admin),
                    2 => Some(Role::Caseworker),
                    3 => Some(Role::Ambassador),
                    _ => None,
                }),
                display_name: c.display_name.clone(),
                has_address: c.address.is_some(),
                has_session: self.store.contains(Namespace::Sessions, &id.0)?,
                verified: Self::contact_verified(st, id, c),
            });
        }
        Ok(out)
    }

    /// The address of a contact (to take its prekey bundle with `PrekeyTake`).
    pub fn contact_address(&self, contact: DeviceId) -> Result<wire::DeviceAddress, EngineError> {
        let st = self.state()?;
        st.contacts
            .get(&contact)
            .ok_or(EngineError::UnknownContact)?
            .address
            .clone()
            .ok_or(EngineError::NoAddress)
    }

    fn verified_contact_cert(
        &self,
        contact: DeviceId,
        now: u64,
    ) -> Result<DeviceCertificate, EngineError> {
        let st = self.state()?;
        let c = st
            .contacts
            .get(&contact)
            .ok_or(EngineError::UnknownContact)?;
        let root = cert_root(&c.certificate).ok_or(EngineError::CorruptState)?;
        let org = st
            .orgs
            .get(&root)
            .ok_or(EngineError::UntrustedOrganisation)?;
        if org.trust.is_revoked(&contact) {
            return Err(EngineError::Revoked);
        }
        Ok(org.trust.verify_certificate(&c.certificate, now)?)
    }

    /// Starts a session with a contact from the prekey bundle the driver took from the relay
    /// with the contact's address. The first message sent on it carries the PQXDH initial
    /// message.
    pub fn start_session(
        &mut self,
        contact: DeviceId,
        bundle: &PrekeyBundle,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(), EngineError> {
        let cert = self.verified_contact_cert(contact, now)?;
        let st = self.state()?;
        let root = cert.org_root_key().to_bytes();
        let org = st
            .orgs
            .get(&root)
            .ok_or(EngineError::UntrustedOrganisation)?;
        let (session, peer) = Session::initiate(&st.profile.device, &org.trust, bundle, now, rng)?;
        if peer.device_id() != contact {
            return Err(EngineError::InvalidBundle);
        }
        self.store
            .put(Namespace::Sessions, &contact.0, &session.to_secret_bytes())?;
        Ok(())
    }

    /// Whether a session exists with a contact.
    pub fn has_session(&self, contact: DeviceId) -> Result<bool, EngineError> {
        Ok(self.store.contains(Namespace::Sessions, &contact.0)?)
    }

    fn load_session(&self, contact: DeviceId) -> Result<Option<Session>, EngineError> {
        match self.store.get(Namespace::Sessions, &contact.0)? {
            Some(b) => Ok(Some(
                Session::from_secret_bytes(&b).map_err(|_| EngineError::CorruptState)?,
            )),
            None => Ok(None),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Sending.

    fn new_content(&self, body: Body, now: u64, rng: &mut impl CryptoRng) -> wire::Content {
        wire::Content {
            message_id: random_id(rng).to_vec(),
            sent_at: now,
            expires_at: 0,
            body: Some(body),
        }
    }

    fn seal_to(
        &self,
        session: &mut Session,
        address: &wire::DeviceAddress,
        to: DeviceId,
        content: &wire::Content,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<OutboxItem, EngineError> {
        let st = self.state()?;
        let sealing_key: [u8; KEY_LEN] = address
            .sealing_key
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::CorruptState)?;
        let send_id = to_id(&address.send_id).ok_or(EngineError::CorruptState)?;
        let capability: [u8; KEY_LEN] = address
            .capability
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::CorruptState)?;
        let pin: [u8; KEY_LEN] = address
            .relay_pin
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::CorruptState)?;
        let outgoing = session.encrypt_content(content)?;
        let sealed_msg = outgoing.into_sealed(st.profile.certificate.clone());
        let envelope_id = random_id(rng);
        let expires_at = now.saturating_add(self.envelope_ttl);
        let ciphertext = sealed::seal(&sealing_key, &sealed_msg, &envelope_id, expires_at, rng)
            .map_err(|e| match e {
                sealed::SealError::TooLarge => EngineError::TooLarge,
                _ => EngineError::InvalidInput("the contact's sealing key is invalid"),
            })?;
        Ok(OutboxItem {
            envelope_id,
            relay: RelayInfo {
                host_port: address.relay.clone(),
                pin,
            },
            send_id,
            capability: Zeroizing::new(capability),
            message_id: to_id(&content.message_id).ok_or(EngineError::CorruptState)?,
            recipient: to,
            envelope: relay::Envelope {
                envelope_id: envelope_id.to_vec(),
                expires_at,
                ciphertext,
            },
        })
    }

    /// Sends a `Content` body to a contact: encrypts it, and stores the advanced session, the
    /// outbox entry and this device's copy of the message in one batch. Returns the stored
    /// message and the outbox entry for the driver to send.
    pub fn send(
        &mut self,
        to: DeviceId,
        body: Body,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(Message, OutboxItem), EngineError> {
        let (message, item) = self.send_inner(to, body, true, now, rng)?;
        message.map(|m| (m, item)).ok_or(EngineError::CorruptState)
    }

    /// Sends a chat message (text and attachments) to a contact.
    pub fn send_chat(
        &mut self,
        to: DeviceId,
        text: &str,
        attachments: Vec<wire::Attachment>,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(Message, OutboxItem), EngineError> {
        let body = Body::Chat(wire::ChatMessage {
            text: text.to_owned(),
            attachments,
        });
        self.send(to, body, now, rng)
    }

    fn send_inner(
        &mut self,
        to: DeviceId,
        body: Body,
        keep_copy: bool,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(Option<Message>, OutboxItem), EngineError> {
        let content = self.new_content(body, now, rng);
        content
            .validate()
            .map_err(|_| EngineError::InvalidInput("the message is malformed or too long"))?;
        let mut batch = WriteBatch::new();
        let item = self.stage_send(&mut batch, to, &content, now, rng)?;
        let message = if keep_copy {
            Some(self.stage_message(&mut batch, Direction::Outgoing, to, content, now)?)
        } else {
            None
        };
        self.store.apply_batch(batch)?;
        if message.is_some() {
            self.state_mut()?.next_seq += 1;
        }
        Ok((message, item))
    }

    fn stage_send(
        &self,
        batch: &mut WriteBatch,
        to: DeviceId,
        content: &wire::Content,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<OutboxItem, EngineError> {
        self.verified_contact_cert(to, now)?;
        let address = self.contact_address(to)?;
        let mut session = self.load_session(to)?.ok_or(EngineError::NoSession)?;
        let item = self.seal_to(&mut session, &address, to, content, now, rng)?;
        batch.put(Namespace::Sessions, &to.0, &session.to_secret_bytes());
        batch.put(Namespace::Outbox, &self.outbox_key(&item)?, &item.encode());
        Ok(item)
    }

    /// Stages a message record (and its id marker and the sequence counter); the caller bumps
    /// `next_seq` after applying the batch.
    fn stage_message(
        &self,
        batch: &mut WriteBatch,
        direction: Direction,
        peer: DeviceId,
        content: wire::Content,
        now: u64,
    ) -> Result<Message, EngineError> {
        let st = self.state()?;
        let seq = st.next_seq;
        let message_id = to_id(&content.message_id).ok_or(EngineError::CouldNotDecrypt)?;
        let message = Message {
            seq,
            direction,
            peer,
            message_id,
            sent_at: content.sent_at,
            stored_at: now,
            content,
        };
        batch.put(
            Namespace::Messages,
            &key(PREFIX_MESSAGE, &seq.to_be_bytes()),
            &message.encode(),
        );
        batch.put(
            Namespace::Messages,
            &key(PREFIX_MESSAGE_ID, &message_id),
            &seq.to_be_bytes(),
        );
        batch.put(Namespace::Settings, KEY_MSG_SEQ, &(seq + 1).to_be_bytes());
        Ok(message)
    }

    fn outbox_key(&self, item: &OutboxItem) -> Result<Vec<u8>, EngineError> {
        let st = self.state()?;
        let n = st.next_outbox.get();
        st.next_outbox.set(n + 1);
        Ok(key(&n.to_be_bytes(), &item.envelope_id))
    }

    /// The outbox: envelopes persisted but not yet accepted by a relay, in the order they
    /// were queued.
    pub fn outbox(&self) -> Result<Vec<OutboxItem>, EngineError> {
        self.store
            .scan_prefix(Namespace::Outbox, b"")?
            .iter()
            .map(|(_, v)| OutboxItem::decode(v))
            .collect()
    }

    /// Removes an outbox entry after the relay's `SendAccepted` (or after the relay refused it
    /// for good, for example because the envelope expired).
    pub fn outbox_accepted(&mut self, envelope_id: &[u8; ID_LEN]) -> Result<(), EngineError> {
        for k in self.store.keys_with_prefix(Namespace::Outbox, b"")? {
            if k.len() == 8 + ID_LEN && k[8..] == envelope_id[..] {
                self.store.delete(Namespace::Outbox, &k)?;
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Receiving.

    /// Processes one envelope fetched from this device's mailbox (see the module docs for the
    /// exactly-once rules). On `Ok` the driver acks the envelope; on
    /// [`EngineError::CouldNotDecrypt`] or [`EngineError::UntrustedOrganisation`] nothing
    /// changed and the envelope can never be processed (ack it to drop it); on
    /// [`EngineError::Store`] do not ack (retry later).
    pub fn receive(
        &mut self,
        queued: &relay::QueuedEnvelope,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Received, EngineError> {
        let envelope = queued
            .envelope
            .as_ref()
            .ok_or(EngineError::CouldNotDecrypt)?;
        let envelope_id = to_id(&envelope.envelope_id).ok_or(EngineError::CouldNotDecrypt)?;
        let env_key = key(PREFIX_ENVELOPE, &envelope_id);
        if self.store.contains(Namespace::Messages, &env_key)? {
            return Ok(Received::Duplicate);
        }
        let st = self.state()?;
        let opened = sealed::open(
            &st.profile.sealing,
            &envelope_id,
            envelope.expires_at,
            &envelope.ciphertext,
        )
        .map_err(|_| EngineError::CouldNotDecrypt)?;
        let sender_signed = opened.sender.as_ref().ok_or(EngineError::CouldNotDecrypt)?;
        let root = cert_root(sender_signed).ok_or(EngineError::CouldNotDecrypt)?;
        let org = st
            .orgs
            .get(&root)
            .ok_or(EngineError::UntrustedOrganisation)?;
        let sender = org
            .trust
            .verify_certificate(sender_signed, now)
            .map_err(|_| EngineError::CouldNotDecrypt)?;
        let sender_id = sender.device_id();
        if sender_id == st.own_cert.device_id() {
            return Err(EngineError::CouldNotDecrypt);
        }
        let existing = self.load_session(sender_id)?;
        let mut new_prekeys = None;
        let (session, content) = match opened.message.as_ref() {
            Some(wire::sealed::Message::Ratchet(m)) => {
                let mut session = existing.ok_or(EngineError::CouldNotDecrypt)?;
                session
                    .check_sender(&org.trust, sender_signed, now)
                    .map_err(|_| EngineError::CouldNotDecrypt)?;
                let content = session
                    .decrypt_content(m, now, rng)
                    .map_err(|_| EngineError::CouldNotDecrypt)?;
                (session, content)
            }
            Some(wire::sealed::Message::Prekey(m)) => match existing {
                Some(mut session) if session.matches_prekey_message(m) => {
                    session
                        .check_sender(&org.trust, sender_signed, now)
                        .map_err(|_| EngineError::CouldNotDecrypt)?;
                    let inner = m.message.as_ref().ok_or(EngineError::CouldNotDecrypt)?;
                    let content = session
                        .decrypt_content(inner, now, rng)
                        .map_err(|_| EngineError::CouldNotDecrypt)?;
                    (session, content)
                }
                _ => {
                    let mut prekeys = st.prekeys.clone();
                    let (session, plaintext) =
                        Session::respond(&st.profile.device, &mut prekeys, &sender, m, now, rng)
                            .map_err(|_| EngineError::CouldNotDecrypt)?;
                    let plaintext = Zeroizing::new(plaintext);
                    let content =
                        decode::content(&plaintext).map_err(|_| EngineError::CouldNotDecrypt)?;
                    new_prekeys = Some(prekeys);
                    (session, content)
                }
            },
            None => return Err(EngineError::CouldNotDecrypt),
        };
        let message_id = to_id(&content.message_id).ok_or(EngineError::CouldNotDecrypt)?;

        let mut batch = WriteBatch::new();
        batch.put(
            Namespace::Sessions,
            &sender_id.0,
            &session.to_secret_bytes(),
        );
        if let Some(p) = &new_prekeys {
            batch.put(Namespace::Prekeys, KEY_PREKEYS, &p.to_secret_bytes());
        }
        batch.put(
            Namespace::Messages,
            &env_key,
            &envelope.expires_at.to_be_bytes(),
        );
        let duplicate = self
            .store
            .contains(Namespace::Messages, &key(PREFIX_MESSAGE_ID, &message_id))?;

        // Side effects of control content, staged in the same batch.
        let mut staged_org = None;
        let mut referral_events = Vec::new();
        let mut contact = st.contacts.get(&sender_id).map(|c| ContactRecord {
            certificate: sender_signed.clone(),
            address: c.address.clone(),
            display_name: c.display_name.clone(),
        });
        if !duplicate {
            match &content.body {
                Some(Body::ContactCard(card)) => {
                    let same_cert = card.certificate.as_ref() == Some(sender_signed);
                    let address = card.address.as_ref();
                    if !same_cert
                        || address.map(|a| a.device_id.as_slice()) != Some(&sender_id.0[..])
                    {
                        return Err(EngineError::CouldNotDecrypt);
                    }
                    if card.device_list.is_some() {
                        staged_org =
                            self.stage_carried_list(&root, card.device_list.as_ref(), &mut batch);
                    }
                    contact = Some(ContactRecord {
                        certificate: sender_signed.clone(),
                        address: card.address.clone(),
                        display_name: card.display_name.clone(),
                    });
                }
                Some(Body::DeviceList(list)) => {
                    // Only a list of the sender's own organisation; a bad or old one is kept
                    // as a message but changes no trust.
                    staged_org = self.stage_carried_list(&root, Some(list), &mut batch);
                }
                Some(
                    body @ (Body::SignedReferralOffer(_)
                    | Body::ReferralBody(_)
                    | Body::ReferralControl(_)
                    | Body::ConsentReceipt(_)),
                ) => {
                    // Referral and consent steps apply in this batch (docs/PROTOCOL.md §10.3):
                    // exactly once, together with the message and its markers.
                    referral_events = self.stage_referral_content(
                        body, sender_id, &root, &mut batch, &session, now, rng,
                    )?;
                }
                _ => {}
            }
        }
        let contact = contact.unwrap_or(ContactRecord {
            certificate: sender_signed.clone(),
            address: None,
            display_name: String::new(),
        });
        batch.put(
            Namespace::Contacts,
            &key(PREFIX_DEVICE, &sender_id.0),
            &contact.encode(),
        );
        let message = if duplicate {
            None
        } else {
            // The referral record holds the offer and body (and erases them); the message log
            // keeps only a redacted copy.
            let mut content = content;
            referrals::redact(&mut content);
            Some(self.stage_message(&mut batch, Direction::Incoming, sender_id, content, now)?)
        };
        self.store.apply_batch(batch)?;
        self.referral_events.extend(referral_events);

        let st = self.state_mut()?;
        if let Some(p) = new_prekeys {
            st.prekeys = p;
        }
        if let Some(entry) = staged_org {
            st.orgs.insert(root, entry);
        }
        st.contacts.insert(sender_id, contact);
        match message {
            Some(m) => {
                st.next_seq += 1;
                Ok(Received::Delivered(Box::new(m)))
            }
            None => Ok(Received::Duplicate),
        }
    }

    /// The organisation root named by the sender certificate of an envelope sealed to this
    /// device (after [`receive`](Self::receive) answered
    /// [`EngineError::UntrustedOrganisation`]), so the application can show that
    /// organisation's [`org_fingerprint`] and ask the user to verify it. Nothing is verified
    /// or stored.
    pub fn envelope_sender_org(
        &self,
        queued: &relay::QueuedEnvelope,
    ) -> Result<[u8; KEY_LEN], EngineError> {
        let envelope = queued
            .envelope
            .as_ref()
            .ok_or(EngineError::CouldNotDecrypt)?;
        let envelope_id = to_id(&envelope.envelope_id).ok_or(EngineError::CouldNotDecrypt)?;
        let opened = sealed::open(
            &self.state()?.profile.sealing,
            &envelope_id,
            envelope.expires_at,
            &envelope.ciphertext,
        )
        .map_err(|_| EngineError::CouldNotDecrypt)?;
        opened
            .sender
            .as_ref()
            .and_then(cert_root)
            .ok_or(EngineError::CouldNotDecrypt)
    }

    /// The acting device for the [`referral`](crate::referral) and
    /// [`consent`](crate::consent) APIs (signs offers, controls and receipts).
    pub fn actor(&self) -> Result<crate::referral::Actor<'_>, EngineError> {
        let st = self.state()?;
        crate::referral::Actor::new(&st.profile.device, st.own_cert.clone())
            .ok_or(EngineError::CorruptState)
    }

    /// What this device knows about a trusted organisation (its root, newest device list and
    /// revocations), for the referral and consent APIs.
    pub fn org_trust(&self, root: &[u8; KEY_LEN]) -> Result<&OrgTrust, EngineError> {
        self.state()?
            .orgs
            .get(root)
            .map(|o| &o.trust)
            .ok_or(EngineError::UntrustedOrganisation)
    }

    /// Messages stored on this device with a sequence number of at least `from_seq`, in order.
    pub fn messages(&self, from_seq: u64) -> Result<Vec<Message>, EngineError> {
        let mut out = Vec::new();
        for (k, v) in self
            .store
            .scan_prefix(Namespace::Messages, PREFIX_MESSAGE)?
        {
            let seq_bytes: [u8; 8] = k[PREFIX_MESSAGE.len()..]
                .try_into()
                .map_err(|_| EngineError::CorruptState)?;
            if u64::from_be_bytes(seq_bytes) >= from_seq {
                out.push(Message::decode(&v)?);
            }
        }
        out.sort_by_key(|m| m.seq);
        Ok(out)
    }

    /// One stored message by sequence number.
    pub fn message(&self, seq: u64) -> Result<Option<Message>, EngineError> {
        match self.store.get(
            Namespace::Messages,
            &key(PREFIX_MESSAGE, &seq.to_be_bytes()),
        )? {
            Some(v) => Ok(Some(Message::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Deletes envelope dedupe markers whose envelopes expired (the relay never returns an
    /// expired envelope) and capabilities past their expiry. Returns the markers deleted.
    pub fn sweep(&mut self, now: u64) -> Result<usize, EngineError> {
        let mut batch = WriteBatch::new();
        for (k, v) in self
            .store
            .scan_prefix(Namespace::Messages, PREFIX_ENVELOPE)?
        {
            let exp = <[u8; 8]>::try_from(v.as_slice()).map(u64::from_be_bytes);
            if exp.map(|e| e < now).unwrap_or(true) {
                batch.delete(Namespace::Messages, &k);
            }
        }
        let swept = batch.len();
        let mut caps = self.clone_caps()?;
        let before = caps.len();
        caps.retain(|c| c.expires_at > now);
        if caps.len() != before {
            batch.put(Namespace::Settings, KEY_CAPS, &records::encode_caps(&caps));
        }
        self.store.apply_batch(batch)?;
        self.state_mut()?.caps = caps;
        Ok(swept)
    }

    // -----------------------------------------------------------------------------------------
    // Organisation fan-out.

    /// Active devices of a trusted organisation at `now` (revoked and expired devices never
    /// appear), excluding this device.
    pub fn org_devices(
        &self,
        org_root: &[u8; KEY_LEN],
        now: u64,
    ) -> Result<Vec<DeviceId>, EngineError> {
        let st = self.state()?;
        let org = st
            .orgs
            .get(org_root)
            .ok_or(EngineError::UntrustedOrganisation)?;
        let own = st.own_cert.device_id();
        Ok(org
            .trust
            .active_devices(now)
            .into_iter()
            .map(|c| c.device_id())
            .filter(|id| *id != own)
            .collect())
    }

    /// Encrypts a packet for an organisation once (docs/PROTOCOL.md §10). Upload
    /// [`PreparedPacket::ciphertext`] as a blob, then call
    /// [`send_fanout_keys`](Self::send_fanout_keys).
    pub fn prepare_org_packet(
        &self,
        org_root: &[u8; KEY_LEN],
        body: Body,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<PreparedPacket, EngineError> {
        let st = self.state()?;
        if !st.orgs.contains_key(org_root) {
            return Err(EngineError::UntrustedOrganisation);
        }
        let content = self.new_content(body, now, rng);
        content
            .validate()
            .map_err(|_| EngineError::InvalidInput("the packet is malformed or too long"))?;
        let packet = fanout::encrypt_packet(&content, rng)?;
        Ok(PreparedPacket {
            packet,
            content,
            org_root: *org_root,
        })
    }

    /// Sends the packet's `FanoutKey` through the pairwise session with every active device of
    /// the organisation that has an address and a session, and stores this device's copy; all
    /// in one batch. Revoked devices receive nothing.
    pub fn send_fanout_keys(
        &mut self,
        packet: &PreparedPacket,
        blob_id: [u8; ID_LEN],
        blob_relay: &str,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<FanoutSent, EngineError> {
        let devices = self.org_devices(&packet.org_root, now)?;
        let key_body = Body::FanoutKey(packet.packet.fanout_key(blob_id, blob_relay.to_owned()));
        let mut batch = WriteBatch::new();
        let mut items = Vec::new();
        let mut unreached = Vec::new();
        for device in devices {
            let reachable = self
                .state()?
                .contacts
                .get(&device)
                .is_some_and(|c| c.address.is_some())
                && self.has_session(device)?;
            if !reachable {
                unreached.push(device);
                continue;
            }
            let content = self.new_content(key_body.clone(), now, rng);
            items.push(self.stage_send(&mut batch, device, &content, now, rng)?);
        }
        let first = items
            .first()
            .map(|i| i.recipient)
            .unwrap_or(DeviceId([0; ID_LEN]));
        let message = self.stage_message(
            &mut batch,
            Direction::Outgoing,
            first,
            packet.content.clone(),
            now,
        )?;
        self.store.apply_batch(batch)?;
        self.state_mut()?.next_seq += 1;
        Ok(FanoutSent {
            message,
            items,
            unreached,
        })
    }

    /// Opens the organisation packet a delivered `FanoutKey` message points to, given the blob
    /// the driver downloaded, and replaces the stored message's content with the packet's.
    pub fn open_org_packet(&mut self, seq: u64, ciphertext: &[u8]) -> Result<Message, EngineError> {
        let mut message = self
            .message(seq)?
            .ok_or(EngineError::InvalidInput("no such message"))?;
        let Some(Body::FanoutKey(fk)) = &message.content.body else {
            return Err(EngineError::InvalidInput(
                "the message is not an organisation packet key",
            ));
        };
        let content = fanout::decrypt_packet(fk, ciphertext)?;
        // The packet's own id is the same on every device of the team.
        message.message_id = to_id(&content.message_id).ok_or(EngineError::CouldNotDecrypt)?;
        message.sent_at = content.sent_at;
        message.content = content;
        let mut batch = WriteBatch::new();
        batch.put(
            Namespace::Messages,
            &key(PREFIX_MESSAGE, &seq.to_be_bytes()),
            &message.encode(),
        );
        batch.put(
            Namespace::Messages,
            &key(PREFIX_MESSAGE_ID, &message.message_id),
            &seq.to_be_bytes(),
        );
        self.store.apply_batch(batch)?;
        Ok(message)
    }

    // -----------------------------------------------------------------------------------------
    // Directory.

    /// Signs this organisation's profile for the directory (admin devices only). The intake
    /// address is this device's, with a long-lived capability; register the new capability
    /// hashes with the relay before publishing.
    pub fn signed_org_profile(
        &mut self,
        details: ProfileDetails,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<wire::SignedOrgProfile, EngineError> {
        let st = self.state()?;
        if st.own_cert.role() != Role::Admin {
            return Err(EngineError::NotAdmin);
        }
        let mut caps = self.clone_caps()?;
        let cap = self.issue_capability(&mut caps, u64::MAX, None, now, rng)?;
        // Intake: this device, plus the other active admin and caseworker devices of the
        // organisation whose addresses this device holds (from their contact cards).
        let root = st.own_cert.org_root_key().to_bytes();
        let mut intake = vec![self.own_address(cap)?];
        if let Some(org) = st.orgs.get(&root) {
            for cert in org.trust.active_devices(now) {
                if cert.role() == Role::Ambassador {
                    continue;
                }
                if let Some(address) = st
                    .contacts
                    .get(&cert.device_id())
                    .and_then(|c| c.address.clone())
                {
                    intake.push(address);
                }
            }
        }
        let profile = wire::OrgProfile {
            org_root_key: st.own_cert.org_root_key().to_bytes().to_vec(),
            name: details.name,
            services: details.services,
            languages: details.languages,
            regions: details.regions,
            description: details.description,
            device_list: self.own_device_list()?,
            intake,
            issued_at: now,
        };
        profile
            .validate()
            .map_err(|_| EngineError::InvalidInput("the profile is malformed or too long"))?;
        let bytes = profile.encode_to_vec();
        let mut msg = Vec::with_capacity(LABEL_ORG_PROFILE.len() + bytes.len());
        msg.extend_from_slice(LABEL_ORG_PROFILE);
        msg.extend_from_slice(&bytes);
        let signature = st.profile.device.signing_key().sign(&msg);
        let signed = wire::SignedOrgProfile {
            profile: bytes,
            signer: Some(st.profile.certificate.clone()),
            signature: signature.to_bytes().to_vec(),
        };
        self.store
            .put(Namespace::Settings, KEY_CAPS, &records::encode_caps(&caps))?;
        self.state_mut()?.caps = caps;
        Ok(signed)
    }

    /// Checks a signed organisation profile (from the directory): an admin device certified by
    /// the profile's own root signed it. Says whether this device trusts that root.
    pub fn verify_org_profile(
        &self,
        signed: &wire::SignedOrgProfile,
        now: u64,
    ) -> Result<VerifiedProfile, EngineError> {
        signed.validate().map_err(|_| EngineError::InvalidProfile)?;
        let profile =
            decode::org_profile(&signed.profile).map_err(|_| EngineError::InvalidProfile)?;
        let root: [u8; KEY_LEN] = profile
            .org_root_key
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::InvalidProfile)?;
        let root_key =
            OrgRootPublicKey::from_bytes(&root).map_err(|_| EngineError::InvalidProfile)?;
        let st = self.state()?;
        let mut trust = st
            .orgs
            .get(&root)
            .map(|o| o.trust.clone())
            .unwrap_or_else(|| OrgTrust::new(root_key));
        if let Some(list) = &profile.device_list {
            let _ = trust.apply_device_list(list);
        }
        let signer_signed = signed.signer.as_ref().ok_or(EngineError::InvalidProfile)?;
        let signer = trust
            .verify_certificate(signer_signed, now)
            .map_err(|_| EngineError::InvalidProfile)?;
        if signer.role() != Role::Admin {
            return Err(EngineError::InvalidProfile);
        }
        let mut msg = Vec::with_capacity(LABEL_ORG_PROFILE.len() + signed.profile.len());
        msg.extend_from_slice(LABEL_ORG_PROFILE);
        msg.extend_from_slice(&signed.profile);
        let signature = ed25519_dalek::Signature::from_slice(&signed.signature)
            .map_err(|_| EngineError::InvalidProfile)?;
        signer
            .verifying_key()
            .verify_strict(&msg, &signature)
            .map_err(|_| EngineError::InvalidProfile)?;
        Ok(VerifiedProfile {
            trusted: st.orgs.contains_key(&root),
            fingerprint: org_fingerprint(&root),
            profile,
        })
    }

    /// Imports a profile of a trusted organisation: applies its device list and stores its
    /// intake devices as contacts (targets of [`send_fanout_keys`](Self::send_fanout_keys)).
    pub fn import_org_profile(
        &mut self,
        signed: &wire::SignedOrgProfile,
        now: u64,
    ) -> Result<Vec<DeviceId>, EngineError> {
        let verified = self.verify_org_profile(signed, now)?;
        if !verified.trusted {
            return Err(EngineError::UntrustedOrganisation);
        }
        let profile = verified.profile;
        let root: [u8; KEY_LEN] = profile
            .org_root_key
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::InvalidProfile)?;
        let mut batch = WriteBatch::new();
        let staged = self.stage_carried_list(&root, profile.device_list.as_ref(), &mut batch);
        let trust = self.trust_after(&root, staged.as_ref())?;
        let active = trust.active_devices(now);
        let mut added = Vec::new();
        let mut new_contacts = Vec::new();
        for address in &profile.intake {
            let Some(cert) = active
                .iter()
                .find(|c| c.device_id().0[..] == address.device_id[..])
            else {
                continue;
            };
            let record = ContactRecord {
                certificate: cert.signed().clone(),
                address: Some(address.clone()),
                display_name: profile.name.clone(),
            };
            batch.put(
                Namespace::Contacts,
                &key(PREFIX_DEVICE, &cert.device_id().0),
                &record.encode(),
            );
            added.push(cert.device_id());
            new_contacts.push((cert.device_id(), record));
        }
        self.store.apply_batch(batch)?;
        let st = self.state_mut()?;
        if let Some(entry) = staged {
            st.orgs.insert(root, entry);
        }
        for (id, record) in new_contacts {
            st.contacts.insert(id, record);
        }
        Ok(added)
    }

    /// Trusts the organisation of a directory profile after the user compared its fingerprint
    /// with the organisation in person or by phone (`compared`, as read out; see
    /// [`org_fingerprint_matches`]), then imports the profile as
    /// [`import_org_profile`](Self::import_org_profile) does. A fingerprint that does not match
    /// trusts and imports nothing ([`EngineError::FingerprintMismatch`]).
    pub fn trust_and_import_org_profile(
        &mut self,
        signed: &wire::SignedOrgProfile,
        compared: &str,
        now: u64,
    ) -> Result<Vec<DeviceId>, EngineError> {
        let verified = self.verify_org_profile(signed, now)?;
        let root: [u8; KEY_LEN] = verified
            .profile
            .org_root_key
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::InvalidProfile)?;
        if !org_fingerprint_matches(&root, compared) {
            return Err(EngineError::FingerprintMismatch);
        }
        self.trust_organisation(&root)?;
        self.import_org_profile(signed, now)
    }
}

/// The organisation root an invitation names (to show its [`org_fingerprint`] before trusting
/// it).
pub fn invitation_org_root(invitation: &wire::Invitation) -> Result<[u8; KEY_LEN], EngineError> {
    invitation
        .certificate
        .as_ref()
        .and_then(cert_root)
        .ok_or(EngineError::InvalidInvitation)
}
