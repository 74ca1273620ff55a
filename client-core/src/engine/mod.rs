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
//! [`Engine::referrals`], [`Engine::kantara_export`], [`Engine::survivor_copy`],
//! [`Engine::consent_receipts`]; what happened is reported as [`ReferralEvent`]s
//! ([`Engine::take_referral_events`]).
//!
//! The sending organisation owns its cases (docs/PROTOCOL.md §11.9): each sent referral, its
//! receipts and every step are shared with the organisation's other caseworker and admin
//! devices, any of which can act; [`Engine::share_cases`] catches up devices enrolled later,
//! [`Engine::due_releases`] says which accepted referrals this device should release (the body
//! goes out once), and [`Engine::reassign_referral`] hands a case to a colleague.

mod contacts;
mod messages;
mod org;
mod prekeys;
mod profile;
mod records;
mod referrals;
mod relay_move;
mod sessions;

pub use referrals::{
    OfferConsent, OfferGlance, PurgeReport, RELEASE_HANDOFF_SECS, ReferralEvent, ReferralListEntry,
    ReferralSummary,
};
pub use relay_move::{RELAY_MOVE_DRAIN_SECS, RelayMove, RelayMovePhase};

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use prost::Message as _;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use handover_proto::e2e::v1::content::Body;
use handover_proto::limits::{ID_LEN, KEY_LEN, MAX_CAPABILITIES};
use handover_proto::relay::v1 as relay;

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
/// SHA-256 of the last bundle the relay accepted (`Namespace::Prekeys`).
const KEY_PUBLISHED_ACK: &[u8] = b"published-ack";
const KEY_CAPS: &[u8] = b"caps";
const KEY_MSG_SEQ: &[u8] = b"msgseq";
const PREFIX_ORG: &[u8] = b"org/";
const PREFIX_DEVICE: &[u8] = b"dev/";
const PREFIX_VERIFIED: &[u8] = b"ver/";
const PREFIX_MESSAGE: &[u8] = b"m/";
const PREFIX_MESSAGE_ID: &[u8] = b"id/";
const PREFIX_ENVELOPE: &[u8] = b"e/";
/// Contacts: marker (empty value) of a peer whose identity key changed since it was first seen,
/// until its safety number is verified again (or the change is acknowledged).
const PREFIX_IDENTITY_CHANGED: &[u8] = b"chg/";
/// Sessions: the previous sessions of a peer, newest first (see [`MAX_PREVIOUS_SESSIONS`]).
const PREFIX_PREVIOUS_SESSIONS: &[u8] = b"prev/";

/// Previous sessions kept per peer after a `PrekeyMessage` replaced its session (as Signal
/// keeps archived session states): a message that fails on the current session is tried on
/// these, newest first, so messages in flight during simultaneous initiation are not lost.
/// The oldest is deleted first (docs/PROTOCOL.md §6.4).
pub const MAX_PREVIOUS_SESSIONS: usize = 5;

/// A remote peer: the organisation root that certified it and the device id in that
/// certificate.
///
/// A device id is chosen by whoever signs the certificate, so it names a device only within
/// its organisation: every session, contact, verified mark and recipient record is keyed by
/// the pair (docs/PROTOCOL.md §5.5).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId {
    /// The organisation root key that certified the device.
    pub org_root: [u8; KEY_LEN],
    /// The device id in its certificate.
    pub device_id: DeviceId,
}

impl PeerId {
    /// The peer of a verified certificate.
    pub fn of(cert: &DeviceCertificate) -> Self {
        Self {
            org_root: cert.org_root_key().to_bytes(),
            device_id: cert.device_id(),
        }
    }

    /// The store key of the peer: `org_root (32) || device_id (16)`.
    fn storage_key(&self) -> [u8; KEY_LEN + ID_LEN] {
        let mut out = [0u8; KEY_LEN + ID_LEN];
        out[..KEY_LEN].copy_from_slice(&self.org_root);
        out[KEY_LEN..].copy_from_slice(&self.device_id.0);
        out
    }

    fn from_storage_key(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != KEY_LEN + ID_LEN {
            return None;
        }
        Some(Self {
            org_root: bytes[..KEY_LEN].try_into().ok()?,
            device_id: DeviceId(bytes[KEY_LEN..].try_into().ok()?),
        })
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids stay out of debug output, which may reach logs.
        f.write_str("PeerId(..)")
    }
}
/// Disappearing-timer index: `x/` || u64be(Content.expires_at) || u64be(seq), empty value.
const PREFIX_MESSAGE_EXPIRY: &[u8] = b"x/";

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
    /// An inbound envelope's `expires_at` (authenticated by the sealed-sender layer) is not
    /// after the receiver's clock: it is refused unread. Nothing changed; ack it to drop it.
    #[error("the envelope expired before it was read; it was dropped")]
    EnvelopeExpired,
    /// The organisation is not trusted on this device.
    #[error(
        "the organisation is not trusted on this device; verify its root key fingerprint in person, then trust it"
    )]
    UntrustedOrganisation,
    /// A certificate or device list was refused.
    #[error("certificate or device list refused: {0}")]
    Certificate(#[from] CertificateError),
    /// The peer's certificate or session is not the certificate its organisation's current
    /// device list holds for it (or no device list of its organisation is known): nothing is
    /// released to it. Fetch the organisation's newest device list, then start a new session.
    #[error(
        "this device's certificate or session does not match its organisation's current device list; nothing was sent"
    )]
    NotListed,
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
    /// An earlier move to another relay is still draining the old mailbox; nothing changed.
    #[error(
        "an earlier move to another relay is still collecting messages from the old relay; finish it first"
    )]
    RelayMoveInProgress,
    /// A referral or consent step was refused (consent gate, lifecycle, signature, timeline,
    /// ambassador); nothing changed.
    #[error(transparent)]
    Referral(#[from] crate::referral::ReferralError),
    /// A request code, enrolment code or pending join was refused (docs/PROTOCOL.md §5.6).
    #[error(transparent)]
    Enrolment(crate::enrolment::EnrolmentError),
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
    /// The content's disappearing timer (`Content.expires_at`) had fired when it arrived: it
    /// was not stored, not shown and had no effect (the session still advanced).
    Expired,
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
    /// Whether the device's identity key changed since this device first saw it (Signal's
    /// "safety number changed"): its verified mark was dropped; compare the safety number
    /// again ([`Engine::mark_contact_verified`]) or acknowledge the change
    /// ([`Engine::acknowledge_identity_change`]).
    pub identity_changed: bool,
}

impl Contact {
    /// The contact's peer id (organisation root and device id).
    pub fn peer(&self) -> PeerId {
        PeerId {
            org_root: self.org_root,
            device_id: self.device_id,
        }
    }
}

impl fmt::Debug for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contact")
            .field("role", &self.role)
            .field("has_address", &self.has_address)
            .field("has_session", &self.has_session)
            .field("verified", &self.verified)
            .field("identity_changed", &self.identity_changed)
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
    contacts: BTreeMap<PeerId, ContactRecord>,
    /// Contacts whose safety number was compared, with the keys it was compared for.
    verified: BTreeMap<PeerId, [u8; records::VERIFIED_LEN]>,
    /// Contacts whose identity key changed since they were first seen, until re-verified.
    identity_changed: std::collections::BTreeSet<PeerId>,
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
        engine.state = match engine.load()? {
            Some((state, migration)) => {
                if !migration.is_empty() {
                    engine.store.apply_batch(migration)?;
                    engine.store.flush()?;
                }
                Some(Box::new(state))
            }
            None => None,
        };
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

    /// Loads the state; the returned batch migrates records written before peers were keyed by
    /// (organisation root, device id) (docs/STORAGE.md, "Peer keys").
    fn load(&self) -> Result<Option<(State, WriteBatch)>, EngineError> {
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
        let mut migration = WriteBatch::new();
        let mut contacts = BTreeMap::new();
        // Legacy contacts were keyed by device id alone: the id is unique among them, and the
        // organisation is the root in the stored certificate.
        let mut legacy_roots: BTreeMap<DeviceId, [u8; KEY_LEN]> = BTreeMap::new();
        for (k, value) in self.store.scan_prefix(Namespace::Contacts, PREFIX_DEVICE)? {
            let suffix = &k[PREFIX_DEVICE.len()..];
            let record = ContactRecord::decode(&value)?;
            let peer = match PeerId::from_storage_key(suffix) {
                Some(peer) => peer,
                None => {
                    let id = DeviceId(to_id(suffix).ok_or(EngineError::CorruptState)?);
                    let root = cert_root(&record.certificate).ok_or(EngineError::CorruptState)?;
                    legacy_roots.insert(id, root);
                    let peer = PeerId {
                        org_root: root,
                        device_id: id,
                    };
                    migration.delete(Namespace::Contacts, &k);
                    migration.put(
                        Namespace::Contacts,
                        &key(PREFIX_DEVICE, &peer.storage_key()),
                        &value,
                    );
                    peer
                }
            };
            contacts.insert(peer, record);
        }
        let mut verified = BTreeMap::new();
        for (k, value) in self
            .store
            .scan_prefix(Namespace::Contacts, PREFIX_VERIFIED)?
        {
            let suffix = &k[PREFIX_VERIFIED.len()..];
            let binding = records::decode_verified(&value)?;
            let peer = match PeerId::from_storage_key(suffix) {
                Some(peer) => peer,
                None => {
                    // The binding ends with the organisation root it was verified for.
                    let id = DeviceId(to_id(suffix).ok_or(EngineError::CorruptState)?);
                    let root: [u8; KEY_LEN] = binding[2 * KEY_LEN..]
                        .try_into()
                        .map_err(|_| EngineError::CorruptState)?;
                    let peer = PeerId {
                        org_root: root,
                        device_id: id,
                    };
                    migration.delete(Namespace::Contacts, &k);
                    migration.put(
                        Namespace::Contacts,
                        &key(PREFIX_VERIFIED, &peer.storage_key()),
                        &value,
                    );
                    peer
                }
            };
            verified.insert(peer, binding);
        }
        let mut identity_changed = std::collections::BTreeSet::new();
        for k in self
            .store
            .keys_with_prefix(Namespace::Contacts, PREFIX_IDENTITY_CHANGED)?
        {
            let peer = PeerId::from_storage_key(&k[PREFIX_IDENTITY_CHANGED.len()..])
                .ok_or(EngineError::CorruptState)?;
            identity_changed.insert(peer);
        }
        // Legacy sessions (keyed by the 16-byte device id) belong to the contact with that id;
        // one without a contact could never be used and is deleted.
        for (k, value) in self.store.scan_prefix(Namespace::Sessions, b"")? {
            if k.len() != ID_LEN {
                continue;
            }
            migration.delete(Namespace::Sessions, &k);
            let id = DeviceId(to_id(&k).ok_or(EngineError::CorruptState)?);
            if let Some(root) = legacy_roots.get(&id) {
                let peer = PeerId {
                    org_root: *root,
                    device_id: id,
                };
                migration.put(Namespace::Sessions, &peer.storage_key(), &value);
            }
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
        Ok(Some((
            State {
                profile,
                own_cert,
                orgs,
                contacts,
                verified,
                identity_changed,
                prekeys,
                published,
                caps,
                next_seq,
                next_outbox: std::cell::Cell::new(next_outbox),
            },
            migration,
        )))
    }

    fn state(&self) -> Result<&State, EngineError> {
        self.state.as_deref().ok_or(EngineError::NoProfile)
    }

    fn state_mut(&mut self) -> Result<&mut State, EngineError> {
        self.state.as_deref_mut().ok_or(EngineError::NoProfile)
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
