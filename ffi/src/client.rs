//! The messaging client: [`handover_core::client::Client`] behind an FFI object.
//!
//! Every method is a thin wrapper: convert the arguments, call the core client on the library's
//! runtime, convert the result. Read-only queries the core client does not wrap go through
//! [`handover_core::client::Client::with_engine`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use handover_core::client::{self as core, ClientEvent as CoreEvent};
use handover_core::engine::{self, Direction, IdentitySetup, RelayInfo};
use handover_core::identity::{self, DeviceId, DeviceKeys};
use handover_proto::e2e::v1 as wire;
use handover_proto::e2e::v1::content::Body;
use handover_proto::relay::v1 as relay_wire;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::HandoverError;
use crate::profile::{Credential, KdfSettings, kdf_params};
use crate::referrals::{ReferralEvent, referral_event};
use crate::relay::{ProgressListener, parse_pin};
use crate::runtime::{run, run_blocking, runtime};

/// How long dropping a client waits for its orderly shutdown (store flushed and closed).
const DROP_SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Ids: lowercase hex across the boundary.

/// Parses a 16-byte id (device, referral) given as 32 hex digits.
pub(crate) fn parse_id(what: &str, hex_id: &str) -> Result<[u8; 16], HandoverError> {
    hex::decode(hex_id.trim())
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| HandoverError::invalid(format!("{what} must be 32 hex digits")))
}

/// Parses a 32-byte public key (organisation root) given as 64 hex digits.
pub(crate) fn parse_key(what: &str, hex_key: &str) -> Result<[u8; 32], HandoverError> {
    hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| HandoverError::invalid(format!("{what} must be 64 hex digits")))
}

pub(crate) fn device_id(hex_id: &str) -> Result<DeviceId, HandoverError> {
    Ok(DeviceId(parse_id("a device id", hex_id)?))
}

/// A contact named across the boundary: its peer id (96 hex digits: organisation root, then
/// device id) or, when no other organisation's device shares it, its device id (32 hex digits).
enum ContactRef {
    Peer(engine::PeerId),
    Device(DeviceId),
}

fn contact_ref(hex_id: &str) -> Result<ContactRef, HandoverError> {
    let bytes = hex::decode(hex_id.trim()).unwrap_or_default();
    if bytes.len() == 48 {
        let root = parse_key("an organisation root", &hex::encode(&bytes[..32]))?;
        let id = parse_id("a device id", &hex::encode(&bytes[32..]))?;
        return Ok(ContactRef::Peer(engine::PeerId {
            org_root: root,
            device_id: DeviceId(id),
        }));
    }
    device_id(hex_id).map(ContactRef::Device).map_err(|_| {
        HandoverError::invalid(
            "a contact must be its device id (32 hex digits) or peer id (96 hex digits)",
        )
    })
}

/// The peer a [`ContactRef`] names.
async fn resolve(c: &core::Client, contact: ContactRef) -> Result<engine::PeerId, HandoverError> {
    match contact {
        ContactRef::Peer(p) => Ok(p),
        ContactRef::Device(d) => Ok(c
            .with_engine(move |e, _, _| e.peer_by_device_id(d))
            .await??),
    }
}

/// The peer id of a contact as 96 hex digits (organisation root, then device id).
fn peer_hex(peer: &engine::PeerId) -> String {
    let mut bytes = peer.org_root.to_vec();
    bytes.extend_from_slice(&peer.device_id.0);
    hex::encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// Records.

/// What a device may do for its organisation.
#[derive(uniffi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Enrols and revokes devices, publishes the organisation profile, may override consent.
    Admin,
    /// Sends and receives referrals, records consent.
    Caseworker,
    /// Chats; never receives referral bodies.
    Ambassador,
}

impl From<identity::Role> for Role {
    fn from(r: identity::Role) -> Self {
        match r {
            identity::Role::Admin => Self::Admin,
            identity::Role::Caseworker => Self::Caseworker,
            identity::Role::Ambassador => Self::Ambassador,
        }
    }
}

impl From<Role> for identity::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Admin => Self::Admin,
            Role::Caseworker => Self::Caseworker,
            Role::Ambassador => Self::Ambassador,
        }
    }
}

/// This device's identity (public data only).
#[derive(uniffi::Record, Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// This device's id (hex).
    pub device_id: String,
    /// The organisation root public key (hex): what others trust.
    pub org_root: String,
    /// The organisation fingerprint to compare in person (six groups of five digits).
    pub org_fingerprint: String,
    /// This device's role.
    pub role: Role,
    /// Whether this device holds the organisation root key (it can enrol and revoke devices).
    pub holds_org_key: bool,
    /// The relay this device's mailbox is on (`host:port`).
    pub relay_address: String,
}

/// A known remote device.
#[derive(uniffi::Record, Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Its device id (hex).
    pub device_id: String,
    /// Its peer id (hex: organisation root, then device id): names it even when a device of
    /// another organisation has the same device id.
    pub peer_id: String,
    /// Its organisation root (hex).
    pub org_root: String,
    /// Its organisation's fingerprint.
    pub org_fingerprint: String,
    /// Its role, if its certificate is known.
    pub role: Option<Role>,
    /// Name to show.
    pub display_name: String,
    /// Whether its reply address is known (it can be messaged).
    pub has_address: bool,
    /// Whether a session exists.
    pub has_session: bool,
    /// Whether the safety number with it was compared and marked verified
    /// ([`Client::mark_contact_verified`]) and still holds (its keys have not changed since,
    /// its organisation is trusted and has not revoked it).
    pub verified: bool,
    /// Whether its identity key changed since this device first saw it ("safety number
    /// changed"): show a warning, have the user verify it again
    /// ([`Client::mark_contact_verified`]) or acknowledge it
    /// ([`Client::acknowledge_identity_change`]).
    pub identity_changed: bool,
}

impl From<engine::Contact> for Contact {
    fn from(c: engine::Contact) -> Self {
        Self {
            peer_id: peer_hex(&c.peer()),
            identity_changed: c.identity_changed,
            device_id: hex::encode(c.device_id.0),
            org_root: hex::encode(c.org_root),
            org_fingerprint: engine::org_fingerprint(&c.org_root),
            role: c.role.map(Role::from),
            display_name: c.display_name,
            has_address: c.has_address,
            has_session: c.has_session,
            verified: c.verified,
        }
    }
}

/// The safety number of this device and a contact (docs/PROTOCOL.md §5.4): both devices show
/// the same number. Public data, derived from the two devices' public keys.
#[derive(uniffi::Record, Debug, Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    /// The 60 digits, without spaces.
    pub digits: String,
    /// The same digits in twelve groups of five separated by spaces, for reading aloud.
    pub grouped: String,
    /// What this device shows as a QR code for the contact to scan (65 bytes; the contact
    /// passes it to [`Client::mark_contact_verified_by_qr`]).
    pub qr_payload: Vec<u8>,
}

/// What to search the members-only directory for; empty fields match everything.
#[derive(uniffi::Record, Debug, Clone, PartialEq, Eq, Default)]
pub struct DirectoryQuery {
    /// Part of the organisation's name (case-insensitive).
    pub name_contains: String,
    /// Organisations offering any of these services.
    pub services: Vec<String>,
    /// Organisations serving any of these languages (BCP 47).
    pub languages: Vec<String>,
    /// Organisations serving any of these regions.
    pub regions: Vec<String>,
}

/// An organisation's signed directory profile, kept inside Rust: it carries the send
/// capabilities of the organisation's intake devices. Pass it to [`Client::import_profile`].
#[derive(uniffi::Object)]
pub struct DirectoryProfile {
    signed: wire::SignedOrgProfile,
}

impl std::fmt::Debug for DirectoryProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The intake addresses carry capabilities: keep them out of logs.
        f.debug_struct("DirectoryProfile").finish_non_exhaustive()
    }
}

/// One organisation found in the directory, its signature checked. Show `org_fingerprint`
/// and let the user compare it with the organisation (in person or by phone) before
/// [`Client::import_profile`].
#[derive(uniffi::Record, Debug, Clone)]
pub struct DirectoryEntry {
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
    /// The organisation root (hex).
    pub org_root: String,
    /// The organisation's fingerprint, to compare with the organisation before importing.
    pub org_fingerprint: String,
    /// Whether this device already trusts the organisation.
    pub trusted: bool,
    /// How many intake devices the profile lists.
    pub intake_devices: u32,
    /// The signed profile, for [`Client::import_profile`].
    pub profile: Arc<DirectoryProfile>,
}

/// An invitation to share as a link or QR code. The link carries a send capability for this
/// device's mailbox: share it only with the intended person.
#[derive(uniffi::Record, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// `handover://invite#...`.
    pub link: String,
    /// The QR payload (the same string as the link).
    pub qr_payload: String,
    /// When it expires, Unix seconds.
    pub expires_at: u64,
}

impl std::fmt::Debug for Invitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The link carries a capability: keep it out of logs.
        f.debug_struct("Invitation")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What an invitation says about the inviter, to show before accepting it.
#[derive(uniffi::Record, Debug, Clone, PartialEq, Eq)]
pub struct InvitationInfo {
    /// The inviter's name.
    pub display_name: String,
    /// The inviter's organisation root (hex); trust it after comparing the fingerprint.
    pub org_root: String,
    /// The inviter's organisation fingerprint, to compare in person.
    pub org_fingerprint: String,
    /// When the invitation expires, Unix seconds.
    pub expires_at: u64,
}

/// Reads an invitation link or QR payload without accepting it.
#[uniffi::export]
pub fn invitation_info(link: String) -> Result<InvitationInfo, HandoverError> {
    let invitation = engine::parse_invitation_link(&link)?;
    let root = engine::invitation_org_root(&invitation)?;
    Ok(InvitationInfo {
        display_name: invitation.display_name,
        org_root: hex::encode(root),
        org_fingerprint: engine::org_fingerprint(&root),
        expires_at: invitation.expires_at,
    })
}

/// The fingerprint of an organisation root (hex) to compare in person.
#[uniffi::export]
pub fn org_fingerprint(org_root: String) -> Result<String, HandoverError> {
    Ok(engine::org_fingerprint(&parse_key(
        "an organisation root",
        &org_root,
    )?))
}

/// A QR code as a module matrix and as SVG.
#[derive(uniffi::Record, Debug, Clone, PartialEq, Eq)]
pub struct QrCode {
    /// Modules per side (without a quiet zone).
    pub size: u32,
    /// `size * size` modules, row by row; `true` is dark.
    pub modules: Vec<bool>,
    /// A standalone SVG image with a four-module quiet zone, one unit per module.
    pub svg: String,
}

/// Draws a QR code for a payload (an invitation's `qr_payload`). Apps may use their own QR
/// library on the payload instead.
#[uniffi::export]
pub fn qr_code(payload: String) -> Result<QrCode, HandoverError> {
    let code = qrcode::QrCode::new(payload.as_bytes())
        .map_err(|_| HandoverError::invalid("the payload is too long for a QR code"))?;
    let size = code.width();
    let modules: Vec<bool> = code
        .to_colors()
        .into_iter()
        .map(|c| c == qrcode::Color::Dark)
        .collect();
    const QUIET: usize = 4;
    let full = size + 2 * QUIET;
    let mut path = String::new();
    for (i, _) in modules.iter().enumerate().filter(|(_, dark)| **dark) {
        let (x, y) = (i % size + QUIET, i / size + QUIET);
        path.push_str(&format!("M{x} {y}h1v1h-1z"));
    }
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {full} {full}\" \
         shape-rendering=\"crispEdges\"><rect width=\"{full}\" height=\"{full}\" fill=\"#fff\"/>\
         <path fill=\"#000\" d=\"{path}\"/></svg>"
    );
    Ok(QrCode {
        size: u32::try_from(size).unwrap_or(u32::MAX),
        modules,
        svg,
    })
}

/// A device's public keys, which an admin certifies with [`Client::enrol_device`].
#[derive(uniffi::Record, Debug, Clone, PartialEq, Eq)]
pub struct DevicePublicKeys {
    /// Device id (hex).
    pub device_id: String,
    /// Ed25519 public key (32 bytes).
    pub signing_key: Vec<u8>,
    /// X25519 public identity key (32 bytes).
    pub identity_key: Vec<u8>,
}

/// What an admin device hands a new device: its certificate and the organisation's device list
/// (encoded protobuf messages; public data, transfer them by QR code or file).
#[derive(uniffi::Record, Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// Encoded `SignedDeviceCertificate`.
    pub certificate: Vec<u8>,
    /// Encoded `SignedDeviceList`.
    pub device_list: Vec<u8>,
}

/// A new device's keys, generated before it is enrolled: show
/// [`public_keys`](PendingDevice::public_keys) to an admin device, receive an [`Enrolment`],
/// then [`Client::create_enrolled`]. The secret keys never leave Rust; they are zeroized when
/// this object is dropped or moved into the new profile.
#[derive(uniffi::Object)]
pub struct PendingDevice {
    keys: Mutex<Option<DeviceKeys>>,
    public: identity::DevicePublicKeys,
}

impl std::fmt::Debug for PendingDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDevice").finish_non_exhaustive()
    }
}

#[uniffi::export]
impl PendingDevice {
    /// Generates fresh device keys.
    #[uniffi::constructor]
    pub fn generate() -> Arc<Self> {
        let keys = DeviceKeys::generate(&mut rand::rng());
        let public = keys.public_keys();
        Arc::new(Self {
            keys: Mutex::new(Some(keys)),
            public,
        })
    }

    /// The public keys to certify.
    pub fn public_keys(&self) -> DevicePublicKeys {
        DevicePublicKeys {
            device_id: hex::encode(self.public.device_id.0),
            signing_key: self.public.signing_key.to_vec(),
            identity_key: self.public.identity_key.to_vec(),
        }
    }
}

impl PendingDevice {
    fn take(&self) -> Result<DeviceKeys, HandoverError> {
        self.keys
            .lock()
            .map_err(|_| HandoverError::Internal {
                detail: "the pending device lock is poisoned".into(),
            })?
            .take()
            .ok_or_else(|| {
                HandoverError::invalid("this pending device was already used for a profile")
            })
    }
}

/// Descriptive fields of an organisation's directory profile.
#[derive(uniffi::Record, Debug, Clone, PartialEq, Eq, Default)]
pub struct OrgProfileDetails {
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

/// An encrypted file on a relay. Holds the file's key inside Rust (never exposed); pass it to
/// [`Client::send_text`], a referral's attachments section, or [`Client::download_attachment`].
#[derive(uniffi::Object)]
pub struct Attachment {
    pub(crate) inner: wire::Attachment,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The blob reference holds the file key.
        f.debug_struct("Attachment").finish_non_exhaustive()
    }
}

#[uniffi::export]
impl Attachment {
    /// The file name given at upload.
    pub fn file_name(&self) -> String {
        self.inner.file_name.clone()
    }

    /// The media type given at upload.
    pub fn media_type(&self) -> String {
        self.inner.media_type.clone()
    }

    /// The plaintext size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.blob.as_ref().map_or(0, |b| b.size)
    }
}

pub(crate) fn attachments(list: &[wire::Attachment]) -> Vec<Arc<Attachment>> {
    list.iter()
        .map(|a| Arc::new(Attachment { inner: a.clone() }))
        .collect()
}

/// Whether a message was received or sent by this device.
#[derive(uniffi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageDirection {
    /// Received.
    Incoming,
    /// Sent by this device.
    Outgoing,
}

/// What a message carries.
#[derive(uniffi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A chat message (`text`, `attachments`).
    Chat,
    /// A referral offer (see [`Client::referral`]).
    ReferralOffer,
    /// A released referral body (see [`Client::referral_body`]).
    ReferralBody,
    /// A referral lifecycle step.
    ReferralControl,
    /// A consent receipt.
    ConsentReceipt,
    /// An organisation packet that could not be opened yet.
    OrganisationPacket,
    /// A new device list of the sender's organisation.
    DeviceList,
    /// Delivery receipts.
    DeliveryReceipt,
    /// The sender's contact card.
    ContactCard,
    /// A sent referral shared by a colleague device of this organisation (see
    /// [`Client::referral`]; the message log keeps none of its content).
    SharedCase,
    /// A colleague device's release claim or reassignment of a sent referral.
    TeamStep,
    /// Something this version does not know.
    Other,
}

/// A message delivered to, or sent by, this device.
#[derive(uniffi::Record, Clone)]
pub struct Message {
    /// Local sequence number (delivery order on this device).
    pub seq: u64,
    /// Received or sent.
    pub direction: MessageDirection,
    /// The other device (hex).
    pub peer: String,
    /// The message id (hex); the app sees each id once.
    pub message_id: String,
    /// The sender's clock when sent, Unix seconds.
    pub sent_at: u64,
    /// When this device stored it, Unix seconds.
    pub stored_at: u64,
    /// What it carries.
    pub kind: MessageKind,
    /// The chat text (chat messages only).
    pub text: Option<String>,
    /// The chat attachments (chat messages only).
    pub attachments: Vec<Arc<Attachment>>,
    /// The referral it belongs to (offers, bodies, lifecycle steps), hex.
    pub referral_id: Option<String>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No content and no ids: debug output may reach logs.
        f.debug_struct("Message")
            .field("seq", &self.seq)
            .field("direction", &self.direction)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

pub(crate) fn message(m: &engine::Message) -> Message {
    let (kind, text, files, referral_id) = match &m.content.body {
        Some(Body::Chat(c)) => (
            MessageKind::Chat,
            Some(c.text.clone()),
            attachments(&c.attachments),
            None,
        ),
        Some(Body::SignedReferralOffer(o)) => {
            let id = handover_proto::decode::message::<wire::ReferralOffer>(&o.offer)
                .ok()
                .map(|offer| hex::encode(offer.referral_id));
            (MessageKind::ReferralOffer, None, Vec::new(), id)
        }
        Some(Body::ReferralOffer(o)) => (
            MessageKind::ReferralOffer,
            None,
            Vec::new(),
            Some(hex::encode(&o.referral_id)),
        ),
        Some(Body::ReferralBody(b)) => (
            MessageKind::ReferralBody,
            None,
            Vec::new(),
            Some(hex::encode(&b.referral_id)),
        ),
        Some(Body::ReferralControl(c)) => {
            let id = handover_proto::decode::message::<wire::ReferralControl>(&c.control)
                .ok()
                .map(|control| hex::encode(control.referral_id));
            (MessageKind::ReferralControl, None, Vec::new(), id)
        }
        Some(Body::ConsentReceipt(_)) => (MessageKind::ConsentReceipt, None, Vec::new(), None),
        Some(Body::FanoutKey(_)) => (MessageKind::OrganisationPacket, None, Vec::new(), None),
        Some(Body::DeviceList(_)) => (MessageKind::DeviceList, None, Vec::new(), None),
        Some(Body::DeliveryReceipt(_)) => (MessageKind::DeliveryReceipt, None, Vec::new(), None),
        Some(Body::ContactCard(_)) => (MessageKind::ContactCard, None, Vec::new(), None),
        Some(Body::SenderCase(_)) => (MessageKind::SharedCase, None, Vec::new(), None),
        Some(Body::TeamStep(t)) => {
            let id = handover_proto::decode::message::<wire::TeamStep>(&t.step)
                .ok()
                .map(|step| hex::encode(step.referral_id));
            (MessageKind::TeamStep, None, Vec::new(), id)
        }
        None => (MessageKind::Other, None, Vec::new(), None),
    };
    Message {
        seq: m.seq,
        direction: match m.direction {
            Direction::Incoming => MessageDirection::Incoming,
            Direction::Outgoing => MessageDirection::Outgoing,
        },
        peer: hex::encode(m.peer.0),
        message_id: hex::encode(m.message_id),
        sent_at: m.sent_at,
        stored_at: m.stored_at,
        kind,
        text,
        attachments: files,
        referral_id,
    }
}

/// Something the app should know about, other than a new message.
#[derive(uniffi::Enum, Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// An incoming envelope was refused (tampered, revoked or unknown sender) and dropped.
    Refused,
    /// A device of an organisation this device does not trust wrote; its message waits at the
    /// relay. Compare the fingerprint in person, `trust_organisation`, then `sync`.
    UntrustedOrganisation {
        /// The organisation root (hex).
        org_root: String,
        /// Its fingerprint.
        org_fingerprint: String,
    },
    /// The relay refused an outgoing message for good; it was removed from the outbox.
    SendFailed {
        /// The message id (hex).
        message_id: String,
    },
    /// The background task is connected and subscribed to new messages.
    Connected,
    /// The background task lost its connection and will reconnect.
    Disconnected,
    /// A referral or consent step was applied or refused.
    Referral {
        /// What happened.
        event: ReferralEvent,
    },
    /// The listener fell behind and `missed` events were dropped: re-read `inbox` and
    /// `referrals`.
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
}

/// Receives new messages and events of a [`Client`]. Implemented by the app.
///
/// Called on a library thread (tokio's blocking pool), one call at a time and in order, never
/// on the UI thread: post to the main thread before touching UI. A slow listener delays later
/// calls but not the client.
#[uniffi::export(with_foreign)]
pub trait MessageListener: Send + Sync {
    /// A new message was stored (chat, referral steps, consent receipts, ...).
    fn on_message(&self, message: Message);
    /// Something else happened.
    fn on_event(&self, event: ClientEvent);
}

enum Delivery {
    Message(Message),
    Event(ClientEvent),
}

fn delivery(event: CoreEvent) -> Option<Delivery> {
    Some(match event {
        CoreEvent::Message(m) => Delivery::Message(message(&m)),
        CoreEvent::Refused => Delivery::Event(ClientEvent::Refused),
        CoreEvent::UntrustedOrganisation(root) => {
            Delivery::Event(ClientEvent::UntrustedOrganisation {
                org_root: hex::encode(root),
                org_fingerprint: engine::org_fingerprint(&root),
            })
        }
        CoreEvent::SendFailed(id) => Delivery::Event(ClientEvent::SendFailed {
            message_id: hex::encode(id),
        }),
        CoreEvent::Connected => Delivery::Event(ClientEvent::Connected),
        CoreEvent::Disconnected => Delivery::Event(ClientEvent::Disconnected),
        CoreEvent::Referral(e) => Delivery::Event(ClientEvent::Referral {
            event: referral_event(e)?,
        }),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// The client.

/// A Handover client: one profile on disk, its identity and its relay.
///
/// Open or create it with the constructors; [`start`](Client::start) the background task to
/// receive messages as they arrive and register a [`MessageListener`]. Dropping the object (or
/// [`shutdown`](Client::shutdown)) stops the background task, unregisters the listener,
/// closes the connections and closes the store. All methods are safe to call from any thread.
#[derive(uniffi::Object)]
pub struct Client {
    pub(crate) inner: core::Client,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop_listener();
        let Ok(rt) = runtime() else { return };
        let inner = self.inner.clone();
        let shutdown = async move {
            let _ = tokio::time::timeout(DROP_SHUTDOWN_WAIT, inner.shutdown()).await;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // Dropped on a runtime thread: blocking here could deadlock; finish in the
            // background.
            rt.spawn(shutdown);
        } else {
            // Dropped by the foreign side: wait, so the profile can be reopened at once.
            rt.block_on(shutdown);
        }
    }
}

fn relay_info(relay_address: String, relay_pin: &str) -> Result<RelayInfo, HandoverError> {
    Ok(RelayInfo {
        host_port: relay_address,
        pin: parse_pin(relay_pin)?,
    })
}

impl Client {
    fn wrap(inner: core::Client) -> Arc<Self> {
        Arc::new(Self {
            inner,
            listener: Mutex::new(None),
        })
    }

    fn stop_listener(&self) {
        let task = match self.listener.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(task) = task {
            task.abort();
        }
    }

    /// Runs `f(core client)` on the library's runtime.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, HandoverError>
    where
        F: FnOnce(core::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, HandoverError>> + Send + 'static,
        T: Send + 'static,
    {
        run(f(self.inner.clone())).await
    }

    async fn create(
        dir: String,
        credential: Credential,
        kdf: Option<KdfSettings>,
        relay: RelayInfo,
        device: DeviceKeys,
        setup: IdentitySetup,
        display_name: String,
    ) -> Result<Arc<Self>, HandoverError> {
        let credential = credential.into_core()?;
        let kdf = kdf_params(kdf)?;
        // The core client derives the store key (Argon2id) and opens sled inside its async
        // call: run it on the blocking pool, driving its network steps from there.
        run_blocking(move || {
            let client = runtime()?.block_on(core::Client::create(
                &PathBuf::from(dir),
                &credential,
                kdf,
                relay,
                device,
                setup,
                &display_name,
            ))?;
            Ok(Self::wrap(client))
        })
        .await
    }
}

#[uniffi::export]
impl Client {
    /// Creates a profile in `dir` for the first device of a new organisation (it holds the
    /// organisation root key and is an admin), with a mailbox on the relay at `relay_address`
    /// whose certificate has the SPKI pin `relay_pin` (64 hex digits). `kdf` as in
    /// [`Profile::create`](crate::Profile::create).
    #[uniffi::constructor]
    pub async fn create_organisation(
        dir: String,
        credential: Credential,
        kdf: Option<KdfSettings>,
        relay_address: String,
        relay_pin: String,
        device_label: String,
        display_name: String,
    ) -> Result<Arc<Self>, HandoverError> {
        let relay = relay_info(relay_address, &relay_pin)?;
        let device = DeviceKeys::generate(&mut rand::rng());
        let setup = IdentitySetup::NewOrganisation { device_label };
        Self::create(dir, credential, kdf, relay, device, setup, display_name).await
    }

    /// Creates a profile in `dir` for a device that an admin enrolled
    /// ([`Client::enrol_device`] with `device`'s public keys). Consumes `device`'s keys.
    #[uniffi::constructor]
    #[allow(clippy::too_many_arguments)]
    pub async fn create_enrolled(
        dir: String,
        credential: Credential,
        kdf: Option<KdfSettings>,
        relay_address: String,
        relay_pin: String,
        device: Arc<PendingDevice>,
        enrolment: Enrolment,
        display_name: String,
    ) -> Result<Arc<Self>, HandoverError> {
        let relay = relay_info(relay_address, &relay_pin)?;
        let bad =
            |what: &str| HandoverError::invalid(format!("the enrolment's {what} is malformed"));
        let setup = IdentitySetup::Enrolled {
            certificate: handover_proto::decode::message(&enrolment.certificate)
                .map_err(|_| bad("certificate"))?,
            device_list: handover_proto::decode::message(&enrolment.device_list)
                .map_err(|_| bad("device list"))?,
        };
        let keys = device.take()?;
        Self::create(dir, credential, kdf, relay, keys, setup, display_name).await
    }

    /// Opens the profile in `dir`. A wrong credential fails with `WrongCredential`. The duress
    /// credential opens an empty profile after destroying the real one: then
    /// [`has_identity`](Client::has_identity) is false (show onboarding).
    #[uniffi::constructor]
    pub async fn open(dir: String, credential: Credential) -> Result<Arc<Self>, HandoverError> {
        let credential = credential.into_core()?;
        // Key derivation and sled: on the blocking pool (see `create`).
        run_blocking(move || {
            let client =
                runtime()?.block_on(core::Client::open(&PathBuf::from(dir), &credential))?;
            Ok(Self::wrap(client))
        })
        .await
    }

    /// Whether the profile holds an identity (false after opening with the duress credential).
    pub async fn has_identity(&self) -> Result<bool, HandoverError> {
        self.call(|c| async move { Ok(c.has_profile().await) })
            .await
    }

    /// This device's identity.
    pub async fn identity(&self) -> Result<Identity, HandoverError> {
        self.call(|c| async move {
            c.with_engine(|e, _, _| {
                let root = e.org_root()?;
                Ok::<_, engine::EngineError>(Identity {
                    device_id: hex::encode(e.device_id()?.0),
                    org_root: hex::encode(root),
                    org_fingerprint: engine::org_fingerprint(&root),
                    role: e.certificate()?.role().into(),
                    holds_org_key: e.holds_org_key()?,
                    relay_address: e.relay()?.host_port.clone(),
                })
            })
            .await?
            .map_err(HandoverError::from)
        })
        .await
    }

    /// Starts the background task: it keeps a connection to the relay, receives new messages
    /// as the relay announces them (delivered to the [`MessageListener`]), retries the outbox
    /// and reconnects with backoff. Idempotent.
    pub fn start(&self) -> Result<(), HandoverError> {
        let _context = runtime()?.enter();
        self.inner.start();
        Ok(())
    }

    /// Stops the background task, unregisters the listener, closes the connections and closes
    /// the store (flushed). The object is unusable afterwards (`ProfileLocked`); dropping it
    /// does the same.
    pub async fn shutdown(&self) -> Result<(), HandoverError> {
        self.stop_listener();
        self.call(|c| async move { Ok(c.shutdown().await?) }).await
    }

    /// Registers the listener for new messages and events, replacing any earlier one. Events
    /// from this call on are delivered; read older messages with [`inbox`](Client::inbox).
    pub fn set_message_listener(
        &self,
        listener: Arc<dyn MessageListener>,
    ) -> Result<(), HandoverError> {
        let rt = runtime()?;
        let mut events = self.inner.events();
        let task = rt.spawn(async move {
            loop {
                let item = match events.recv().await {
                    Ok(event) => match delivery(event) {
                        Some(item) => item,
                        None => continue,
                    },
                    Err(RecvError::Lagged(missed)) => {
                        Delivery::Event(ClientEvent::Lagged { missed })
                    }
                    Err(RecvError::Closed) => return,
                };
                let listener = Arc::clone(&listener);
                // Foreign code may block (it takes the GIL, a lock): keep it off the workers.
                let _ = tokio::task::spawn_blocking(move || match item {
                    Delivery::Message(m) => listener.on_message(m),
                    Delivery::Event(e) => listener.on_event(e),
                })
                .await;
            }
        });
        let previous = match self.listener.lock() {
            Ok(mut slot) => slot.replace(task),
            Err(poisoned) => poisoned.into_inner().replace(task),
        };
        if let Some(previous) = previous {
            previous.abort();
        }
        Ok(())
    }

    /// Unregisters the listener (a call already running finishes). Idempotent.
    pub fn clear_message_listener(&self) {
        self.stop_listener();
    }

    // -----------------------------------------------------------------------------------------
    // Organisations and devices.

    /// Trusts an organisation root (hex) after its fingerprint was compared in person.
    pub async fn trust_organisation(&self, org_root: String) -> Result<(), HandoverError> {
        let root = parse_key("an organisation root", &org_root)?;
        self.call(|c| async move { Ok(c.trust_organisation(root).await?) })
            .await
    }

    /// Enrols a new device of this organisation (this device must hold the organisation root
    /// key) and sends the new device list to every contact. Hand the result to the new device.
    pub async fn enrol_device(
        &self,
        device: DevicePublicKeys,
        role: Role,
        label: String,
    ) -> Result<Enrolment, HandoverError> {
        let key = |what: &str, bytes: &[u8]| {
            <[u8; 32]>::try_from(bytes)
                .map_err(|_| HandoverError::invalid(format!("the {what} must be 32 bytes")))
        };
        let keys = identity::DevicePublicKeys {
            device_id: self::device_id(&device.device_id)?,
            signing_key: key("signing key", &device.signing_key)?,
            identity_key: key("identity key", &device.identity_key)?,
        };
        self.call(|c| async move {
            let (certificate, list) = c.enrol_device(keys, role.into(), label).await?;
            Ok(Enrolment {
                certificate: prost::Message::encode_to_vec(&certificate),
                device_list: prost::Message::encode_to_vec(&list),
            })
        })
        .await
    }

    /// Revokes a device of this organisation (a lost phone, a leaver) and sends the new device
    /// list to every contact; nothing more is sent to it.
    pub async fn revoke_device(&self, device_id: String) -> Result<(), HandoverError> {
        let id = self::device_id(&device_id)?;
        self.call(|c| async move {
            c.revoke_device(id).await?;
            Ok(())
        })
        .await
    }

    /// Signs and publishes this organisation's profile to the relay's members-only directory
    /// (admin devices only).
    pub async fn publish_profile(&self, details: OrgProfileDetails) -> Result<(), HandoverError> {
        let details = engine::ProfileDetails {
            name: details.name,
            services: details.services,
            languages: details.languages,
            regions: details.regions,
            description: details.description,
        };
        self.call(|c| async move { Ok(c.publish_profile(details).await?) })
            .await
    }

    // -----------------------------------------------------------------------------------------
    // Invitations and contacts.

    /// Creates an invitation valid for `ttl_secs` and registers it with the relay.
    pub async fn create_invitation(&self, ttl_secs: u64) -> Result<Invitation, HandoverError> {
        self.call(|c| async move {
            let (invitation, link) = c.create_invitation(ttl_secs).await?;
            Ok(Invitation {
                qr_payload: link.clone(),
                link,
                expires_at: invitation.expires_at,
            })
        })
        .await
    }

    /// Accepts an invitation link or scanned QR payload: the inviter's organisation must be
    /// trusted first (`UntrustedOrganisation`; see [`invitation_info`]). Returns the
    /// inviter's device id (hex), now a contact.
    pub async fn accept_invitation(&self, link: String) -> Result<String, HandoverError> {
        self.call(|c| async move {
            let peer = c.accept_invitation(&link).await?;
            Ok(hex::encode(peer.device_id.0))
        })
        .await
    }

    /// The known contacts.
    pub async fn contacts(&self) -> Result<Vec<Contact>, HandoverError> {
        self.call(
            |c| async move { Ok(c.contacts().await?.into_iter().map(Contact::from).collect()) },
        )
        .await
    }

    /// The safety number of this device and a contact (device id, hex), to compare in person
    /// or by phone: read aloud `grouped`, or let the contact scan `qr_payload`.
    pub async fn safety_number(&self, contact: String) -> Result<SafetyNumber, HandoverError> {
        let id = contact_ref(&contact)?;
        self.call(|c| async move {
            let number = c.safety_number(resolve(&c, id).await?).await?;
            Ok(SafetyNumber {
                digits: number.digits(),
                grouped: number.grouped(),
                qr_payload: number.qr_payload().to_vec(),
            })
        })
        .await
    }

    /// Marks a contact verified after the user compared the safety number: `safety_number` is
    /// the number as the contact read it out (only digits count). Fails with
    /// `SafetyNumberMismatch`, marking nothing, if it is not this contact's number.
    pub async fn mark_contact_verified(
        &self,
        contact: String,
        safety_number: String,
    ) -> Result<(), HandoverError> {
        let id = contact_ref(&contact)?;
        self.call(|c| async move {
            let peer = resolve(&c, id).await?;
            Ok(c.mark_contact_verified(peer, safety_number).await?)
        })
        .await
    }

    /// Marks a contact verified from the QR payload scanned from the contact's screen (their
    /// `safety_number(...).qr_payload`); `SafetyNumberMismatch` if it does not match.
    pub async fn mark_contact_verified_by_qr(
        &self,
        contact: String,
        scanned: Vec<u8>,
    ) -> Result<(), HandoverError> {
        let id = contact_ref(&contact)?;
        self.call(|c| async move {
            let peer = resolve(&c, id).await?;
            Ok(c.mark_contact_verified_scanned(peer, scanned).await?)
        })
        .await
    }

    /// Forgets that a contact was verified.
    pub async fn clear_contact_verified(&self, contact: String) -> Result<(), HandoverError> {
        let id = contact_ref(&contact)?;
        self.call(|c| async move { Ok(c.clear_contact_verified(resolve(&c, id).await?).await?) })
            .await
    }

    /// Acknowledges that a contact's identity key changed (`Contact.identity_changed`) without
    /// verifying it: the warning is cleared, the contact stays unverified.
    pub async fn acknowledge_identity_change(&self, contact: String) -> Result<(), HandoverError> {
        let id = contact_ref(&contact)?;
        self.call(|c| async move {
            Ok(c.acknowledge_identity_change(resolve(&c, id).await?)
                .await?)
        })
        .await
    }

    /// Searches the relay's members-only directory; returns the profiles whose signatures
    /// verify. The relay answers only devices of organisations its operator admitted
    /// (`RelayRefused` with code `UNAUTHORISED` otherwise).
    pub async fn search_directory(
        &self,
        query: DirectoryQuery,
    ) -> Result<Vec<DirectoryEntry>, HandoverError> {
        let query = relay_wire::DirectoryQuery {
            services: query.services,
            languages: query.languages,
            regions: query.regions,
            name_contains: query.name_contains,
            limit: 0,
        };
        self.call(|c| async move {
            Ok(c.search_directory(query)
                .await?
                .into_iter()
                .map(|(signed, verified)| {
                    let p = verified.profile;
                    DirectoryEntry {
                        org_root: hex::encode(&p.org_root_key),
                        org_fingerprint: verified.fingerprint,
                        trusted: verified.trusted,
                        intake_devices: u32::try_from(p.intake.len()).unwrap_or(u32::MAX),
                        name: p.name,
                        services: p.services,
                        languages: p.languages,
                        regions: p.regions,
                        description: p.description,
                        profile: Arc::new(DirectoryProfile { signed }),
                    }
                })
                .collect())
        })
        .await
    }

    /// Imports an organisation found with [`search_directory`](Client::search_directory):
    /// `org_fingerprint` is the fingerprint as the organisation read it out to the user (show
    /// the entry's `org_fingerprint` and have them compare it in person or by phone). If it
    /// matches, the organisation is trusted and its intake devices become contacts (returned,
    /// hex); send each a [`send_contact_card`](Client::send_contact_card) so it can reply. If
    /// not, nothing is trusted or imported (`FingerprintMismatch`).
    pub async fn import_profile(
        &self,
        profile: Arc<DirectoryProfile>,
        org_fingerprint: String,
    ) -> Result<Vec<String>, HandoverError> {
        let signed = profile.signed.clone();
        self.call(|c| async move {
            let added = c.trust_and_import_profile(signed, org_fingerprint).await?;
            Ok(added.iter().map(|d| hex::encode(d.device_id.0)).collect())
        })
        .await
    }

    /// Sends this device's contact card (its reply address) to a contact, for example an
    /// intake device imported from the directory, so it can answer.
    pub async fn send_contact_card(&self, contact: String) -> Result<(), HandoverError> {
        let id = contact_ref(&contact)?;
        self.call(|c| async move { Ok(c.send_contact_card(resolve(&c, id).await?).await?) })
            .await
    }

    // -----------------------------------------------------------------------------------------
    // Messages.

    /// Sends a chat message to a contact (device id, hex). It is in the outbox when this
    /// returns; if the relay is unreachable the background task sends it later.
    pub async fn send_text(
        &self,
        to: String,
        text: String,
        attachments: Vec<Arc<Attachment>>,
    ) -> Result<Message, HandoverError> {
        let to = contact_ref(&to)?;
        let files = attachments.iter().map(|a| a.inner.clone()).collect();
        self.call(|c| async move {
            let to = resolve(&c, to).await?;
            Ok(message(&c.send_text(to, &text, files).await?))
        })
        .await
    }

    /// Fetches and processes every queued message now; returns the new ones (they also go to
    /// the listener).
    pub async fn sync(&self) -> Result<Vec<Message>, HandoverError> {
        self.call(|c| async move { Ok(c.sync().await?.iter().map(message).collect()) })
            .await
    }

    /// Stored messages (sent and received) from sequence number `from_seq` on, in order.
    pub async fn inbox(&self, from_seq: u64) -> Result<Vec<Message>, HandoverError> {
        self.call(|c| async move { Ok(c.messages(from_seq).await?.iter().map(message).collect()) })
            .await
    }

    // -----------------------------------------------------------------------------------------
    // Attachments.

    /// Encrypts `data` under a fresh key and uploads it to this device's relay; `listener`
    /// (optional) hears uploaded bytes of the ciphertext (`total` is the ciphertext size).
    pub async fn upload_attachment(
        &self,
        data: Vec<u8>,
        media_type: String,
        file_name: String,
        listener: Option<Arc<dyn ProgressListener>>,
    ) -> Result<Arc<Attachment>, HandoverError> {
        let total = handover_core::attachment::ciphertext_len(data.len() as u64);
        self.call(|c| async move {
            let inner = c
                .upload_attachment(&data, &media_type, &file_name, move |done| {
                    if let Some(l) = &listener {
                        l.on_progress(done, total);
                    }
                })
                .await?;
            Ok(Arc::new(Attachment { inner }))
        })
        .await
    }

    /// Downloads, decrypts and verifies an attachment; `listener` (optional) hears decrypted
    /// bytes (`total` is the file size). Nothing is returned unless the whole file verified.
    pub async fn download_attachment(
        &self,
        attachment: Arc<Attachment>,
        listener: Option<Arc<dyn ProgressListener>>,
    ) -> Result<Vec<u8>, HandoverError> {
        let total = attachment.size();
        self.call(|c| async move {
            Ok(c.download_attachment(&attachment.inner, move |done| {
                if let Some(l) = &listener {
                    l.on_progress(done, total);
                }
            })
            .await?)
        })
        .await
    }

    /// Like [`upload_attachment`](Self::upload_attachment) for a file on disk, streamed: the
    /// file is encrypted in 64 KiB segments and never held whole in memory (use this for
    /// photos, scans and recordings).
    pub async fn upload_attachment_file(
        &self,
        path: String,
        media_type: String,
        file_name: String,
        listener: Option<Arc<dyn ProgressListener>>,
    ) -> Result<Arc<Attachment>, HandoverError> {
        let size = std::fs::metadata(&path)
            .map_err(|e| HandoverError::invalid(format!("cannot read the file: {e}")))?
            .len();
        let total = handover_core::attachment::ciphertext_len(size);
        self.call(|c| async move {
            let inner = c
                .upload_attachment_file(
                    std::path::Path::new(&path),
                    &media_type,
                    &file_name,
                    move |done| {
                        if let Some(l) = &listener {
                            l.on_progress(done, total);
                        }
                    },
                )
                .await?;
            Ok(Arc::new(Attachment { inner }))
        })
        .await
    }

    /// Like [`download_attachment`](Self::download_attachment) into the file `path`, streamed.
    /// The file appears under `path` only once it has verified completely (it is written as
    /// `path.partial` and renamed); on failure nothing is left. Returns the size.
    pub async fn download_attachment_to_file(
        &self,
        attachment: Arc<Attachment>,
        path: String,
        listener: Option<Arc<dyn ProgressListener>>,
    ) -> Result<u64, HandoverError> {
        let total = attachment.size();
        self.call(|c| async move {
            Ok(c.download_attachment_to_file(
                &attachment.inner,
                std::path::Path::new(&path),
                move |done| {
                    if let Some(l) = &listener {
                        l.on_progress(done, total);
                    }
                },
            )
            .await?)
        })
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Safety.

    /// Panic wipe: stops everything, shreds the store keys and removes the profile's files at
    /// once. The client is unusable afterwards; delete the keystore entry too.
    pub async fn panic_wipe(&self) -> Result<(), HandoverError> {
        self.stop_listener();
        self.call(|c| async move { Ok(c.panic_wipe().await?) })
            .await
    }

    /// Sets (or replaces) the duress credential, as [`Profile::set_duress_credential`](crate::Profile::set_duress_credential).
    pub async fn set_duress_credential(&self, duress: Credential) -> Result<(), HandoverError> {
        let duress = duress.into_core()?;
        self.call(|c| async move {
            c.with_engine(|e, _, _| {
                // Key derivation: let tokio move other work off this worker meanwhile.
                tokio::task::block_in_place(|| e.store_mut().set_duress_credential(&duress))
            })
            .await??;
            Ok(())
        })
        .await
    }

    /// Removes the duress credential, if one is set.
    pub async fn clear_duress(&self) -> Result<(), HandoverError> {
        self.call(|c| async move {
            c.with_engine(|e, _, _| e.store_mut().clear_duress_passphrase())
                .await??;
            Ok(())
        })
        .await
    }
}
