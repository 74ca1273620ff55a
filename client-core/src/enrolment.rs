//! Joining an organisation: the request code, the enrolment code, the check code and the
//! pending join (docs/PROTOCOL.md §5.6).
//!
//! A new device joins in three steps, and no secret key ever leaves the device it was made on:
//!
//! 1. the new device generates its [`DeviceKeys`], keeps them in its encrypted store as a
//!    [`PendingJoin`] ([`Engine::begin_join`]) and shows its [`JoinRequest`] (public keys and
//!    the name it asks for) as a request code, with its [`check_code`];
//! 2. the device that holds the organisation root key compares the check code with the new
//!    device's screen, certifies the keys with a role ([`Engine::enrol_request`]) and hands
//!    back an [`EnrolmentCode`]: the certificate, the new device list and an invitation from
//!    itself, all public;
//! 3. the new device checks that the certificate names its own keys
//!    ([`EnrolmentCode::check_for`]), creates its mailbox and profile with it and accepts the
//!    invitation, so the two devices of the organisation can reach each other.
//!
//! Everything here is sans-IO: encoding, decoding and the store records. The async driver
//! (`Client::request_join`, `Client::enrol`, `Client::join`, feature `net`) does the relay
//! round trips.
//!
//! ```
//! use handover_core::enrolment::{JoinRequest, check_code};
//! use handover_core::identity::DeviceKeys;
//!
//! let keys = DeviceKeys::generate(&mut rand::rng());
//! let request = JoinRequest::new(keys.public_keys(), "Intake laptop 2")?;
//! let code = request.to_code();
//! assert!(code.starts_with("handover://enrol-request#"));
//! let parsed = JoinRequest::parse(&code)?;
//! assert_eq!(parsed, request);
//! assert_eq!(parsed.check_code(), check_code(&keys.public_keys()));
//! # Ok::<(), handover_core::enrolment::EnrolmentError>(())
//! ```

use std::fmt;

use base64::Engine as _;
use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use handover_proto::limits::{ID_LEN, KEY_LEN, MAX_SHORT_STRING_LEN};
use prost::Message as _;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::engine::{Engine, EngineError, RelayInfo, invitation_org_root, parse_invitation_link};
use crate::identity::{DeviceId, DeviceKeys, DevicePublicKeys, Role};
use crate::store::{KvStore, Namespace};

/// Link prefix of a request code (the new device's public keys and name).
pub const REQUEST_PREFIX: &str = "handover://enrol-request#";
/// Link prefix of an enrolment code (certificate, device list, invitation).
pub const ENROLMENT_PREFIX: &str = "handover://enrolment#";
/// Version byte of request and enrolment codes.
pub const CODE_FORMAT: u8 = 1;
/// Hash label of the check code (kept as the first implementation, the CLI, named it: codes
/// and check codes already shown keep matching).
pub const CHECK_CODE_LABEL: &[u8] = b"handover/1 cli enrolment check";
/// Bytes of the SHA-256 digest the check code shows: 10 bytes, 80 bits.
pub const CHECK_CODE_LEN: usize = 10;
/// How long the invitation inside an enrolment code stays valid: 7 days.
pub const ENROLMENT_INVITATION_TTL: u64 = 7 * 24 * 3600;
/// Longest device name a request may carry, in bytes (the certificate label's limit).
pub const MAX_NAME_LEN: usize = MAX_SHORT_STRING_LEN;
/// Where a pending join keeps the new device's keys: a record in the encrypted store's
/// settings (named after the CLI, which made the first ones; profiles pending since then keep
/// working).
pub const PENDING_KEY: &[u8] = b"cli/pending-enrolment";
/// Version byte of the pending record.
pub const PENDING_FORMAT: u8 = 1;

/// Bytes of a request code before the name: version, device id, signing key, identity key.
const REQUEST_FIXED_LEN: usize = 1 + ID_LEN + 2 * KEY_LEN;

/// Why a code or the pending join was refused. Messages say what to do; they never carry the
/// code, keys or names.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnrolmentError {
    /// The text does not start with [`REQUEST_PREFIX`].
    #[error(
        "this is not a request code; copy the whole code the new device shows (it starts with handover://enrol-request#)"
    )]
    NotARequest,
    /// The text does not start with [`ENROLMENT_PREFIX`].
    #[error(
        "this is not an enrolment code; copy the whole code the admin device shows (it starts with handover://enrolment#)"
    )]
    NotAnEnrolmentCode,
    /// The text after the prefix is not unpadded base64url.
    #[error("the code is damaged (it is not base64url text); copy it again, completely")]
    NotBase64,
    /// The version byte is not [`CODE_FORMAT`].
    #[error(
        "the code has format {0}, which this version of Handover does not know; update Handover on both devices"
    )]
    UnsupportedVersion(u8),
    /// The code ends before its last field.
    #[error("the code is incomplete; copy it again, completely")]
    Truncated,
    /// Bytes follow the enrolment code's last field.
    #[error("the code has extra bytes at its end; copy exactly the code the admin device shows")]
    TrailingBytes,
    /// The requested name is not UTF-8, is empty or longer than [`MAX_NAME_LEN`] bytes.
    #[error("the device name must be 1 to 1024 bytes of text")]
    BadName,
    /// The certificate field does not decode as a `SignedDeviceCertificate`.
    #[error("the certificate in the enrolment code is damaged; ask the admin for the code again")]
    BadCertificate,
    /// The device list field does not decode as a `SignedDeviceList`.
    #[error("the device list in the enrolment code is damaged; ask the admin for the code again")]
    BadDeviceList,
    /// The invitation field is not an invitation link of the certificate's organisation.
    #[error(
        "the invitation in the enrolment code is damaged or from another organisation; ask the admin for the code again"
    )]
    BadInvitation,
    /// The certificate does not name this device's keys.
    #[error(
        "the enrolment code is for another device (its certificate does not name this device's keys); give the admin this device's request code again and use the code they make from it"
    )]
    NotForThisDevice,
    /// A field is longer than a u16 length prefix allows.
    #[error("a field is too long for an enrolment code; use a shorter name")]
    FieldTooLong,
    /// The device id of the request is already enrolled with other keys (or was revoked).
    #[error(
        "a device with this id is already enrolled with other keys, or was revoked; the new device must start again with a new profile"
    )]
    DeviceIdInUse,
    /// No join is pending in this profile.
    #[error("no join is pending in this profile: it was completed already, or never started")]
    NoPendingJoin,
    /// The pending join record does not decode.
    #[error("the pending join in this profile is damaged; wipe the profile and start again")]
    PendingDamaged,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Result<Vec<u8>, EnrolmentError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| EnrolmentError::NotBase64)
}

/// Appends `u16be(len) || bytes`.
fn put_field(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), EnrolmentError> {
    let len = u16::try_from(bytes.len()).map_err(|_| EnrolmentError::FieldTooLong)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Reads fixed-size and u16-length-prefixed fields; every read past the end is
/// [`EnrolmentError::Truncated`].
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnrolmentError> {
        if self.0.len() < n {
            return Err(EnrolmentError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EnrolmentError> {
        self.take(N)?
            .try_into()
            .map_err(|_| EnrolmentError::Truncated)
    }

    fn field(&mut self) -> Result<&'a [u8], EnrolmentError> {
        let len = self.array::<2>()?;
        self.take(usize::from(u16::from_be_bytes(len)))
    }

    fn version(&mut self, expected: u8) -> Result<(), EnrolmentError> {
        match self.array::<1>()? {
            [v] if v == expected => Ok(()),
            [v] => Err(EnrolmentError::UnsupportedVersion(v)),
        }
    }
}

fn check_name(name: &str) -> Result<(), EnrolmentError> {
    if name.trim().is_empty() || name.len() > MAX_NAME_LEN {
        return Err(EnrolmentError::BadName);
    }
    Ok(())
}

/// The check code of a device's public keys, shown on the new device and on the enrolling
/// device to compare before enrolling: the first [`CHECK_CODE_LEN`] bytes of
/// `SHA-256(CHECK_CODE_LABEL || device_id || signing_key || identity_key)` as five groups of
/// four lowercase hex digits joined by `-`. A key or id swapped in a tampered request changes
/// it.
pub fn check_code(keys: &DevicePublicKeys) -> String {
    let mut h = Sha256::new();
    h.update(CHECK_CODE_LABEL);
    h.update(keys.device_id.0);
    h.update(keys.signing_key);
    h.update(keys.identity_key);
    let digest = h.finalize();
    digest[..CHECK_CODE_LEN]
        .chunks(2)
        .map(hex::encode)
        .collect::<Vec<_>>()
        .join("-")
}

/// A new device's request to join: its public keys and the name it asks to be known by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    keys: DevicePublicKeys,
    name: String,
}

impl JoinRequest {
    /// A request for `keys` under `name` (1 to [`MAX_NAME_LEN`] bytes, not only spaces).
    pub fn new(keys: DevicePublicKeys, name: &str) -> Result<Self, EnrolmentError> {
        check_name(name)?;
        Ok(Self {
            keys,
            name: name.to_owned(),
        })
    }

    /// The device's public keys.
    pub fn keys(&self) -> &DevicePublicKeys {
        &self.keys
    }

    /// The name the device asks for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The check code of the keys ([`check_code`]).
    pub fn check_code(&self) -> String {
        check_code(&self.keys)
    }

    /// The request code: [`REQUEST_PREFIX`] then the unpadded base64url of
    /// `CODE_FORMAT || device_id (16) || signing_key (32) || identity_key (32) || name (UTF-8,
    /// the rest)`.
    pub fn to_code(&self) -> String {
        let mut bytes = Vec::with_capacity(REQUEST_FIXED_LEN + self.name.len());
        bytes.push(CODE_FORMAT);
        bytes.extend_from_slice(&self.keys.device_id.0);
        bytes.extend_from_slice(&self.keys.signing_key);
        bytes.extend_from_slice(&self.keys.identity_key);
        bytes.extend_from_slice(self.name.as_bytes());
        format!("{REQUEST_PREFIX}{}", b64(&bytes))
    }

    /// Parses a request code (surrounding white space is ignored).
    pub fn parse(text: &str) -> Result<Self, EnrolmentError> {
        let payload = text
            .trim()
            .strip_prefix(REQUEST_PREFIX)
            .ok_or(EnrolmentError::NotARequest)?;
        let bytes = unb64(payload)?;
        let mut r = Fields(&bytes);
        r.version(CODE_FORMAT)?;
        let device_id = DeviceId(r.array()?);
        let signing_key = r.array()?;
        let identity_key = r.array()?;
        let name = std::str::from_utf8(r.0).map_err(|_| EnrolmentError::BadName)?;
        Self::new(
            DevicePublicKeys {
                device_id,
                signing_key,
                identity_key,
            },
            name,
        )
    }
}

/// What the enrolling device hands the new device: its certificate, the organisation's device
/// list that includes it, and an invitation link from the enrolling device. All public.
#[derive(Clone, Debug, PartialEq)]
pub struct EnrolmentCode {
    /// The new device's certificate.
    pub certificate: wire::SignedDeviceCertificate,
    /// The organisation's device list that lists the certificate.
    pub device_list: wire::SignedDeviceList,
    /// An invitation link (`handover://invite#...`) from the enrolling device.
    pub invitation: String,
}

impl EnrolmentCode {
    /// The enrolment code: [`ENROLMENT_PREFIX`] then the unpadded base64url of
    /// `CODE_FORMAT || field(certificate) || field(device_list) || field(invitation)`, each
    /// `field` being `u16be(len) || bytes`.
    pub fn to_code(&self) -> Result<String, EnrolmentError> {
        let mut bytes = vec![CODE_FORMAT];
        put_field(&mut bytes, &self.certificate.encode_to_vec())?;
        put_field(&mut bytes, &self.device_list.encode_to_vec())?;
        put_field(&mut bytes, self.invitation.as_bytes())?;
        Ok(format!("{ENROLMENT_PREFIX}{}", b64(&bytes)))
    }

    /// Parses an enrolment code and checks its parts structurally: the certificate and list
    /// decode (docs/PROTOCOL.md §3.1), the invitation is a link of the certificate's
    /// organisation, and nothing follows the last field. Signatures are checked when the
    /// profile is created with it.
    pub fn parse(text: &str) -> Result<Self, EnrolmentError> {
        let payload = text
            .trim()
            .strip_prefix(ENROLMENT_PREFIX)
            .ok_or(EnrolmentError::NotAnEnrolmentCode)?;
        let bytes = unb64(payload)?;
        let mut r = Fields(&bytes);
        r.version(CODE_FORMAT)?;
        let certificate = r.field()?;
        let device_list = r.field()?;
        let invitation = r.field()?;
        if !r.0.is_empty() {
            return Err(EnrolmentError::TrailingBytes);
        }
        let certificate = decode::signed_device_certificate(certificate)
            .map_err(|_| EnrolmentError::BadCertificate)?;
        let cert = decode::device_certificate(&certificate.certificate)
            .map_err(|_| EnrolmentError::BadCertificate)?;
        let device_list =
            decode::signed_device_list(device_list).map_err(|_| EnrolmentError::BadDeviceList)?;
        let invitation = std::str::from_utf8(invitation)
            .map_err(|_| EnrolmentError::BadInvitation)?
            .to_owned();
        let parsed =
            parse_invitation_link(&invitation).map_err(|_| EnrolmentError::BadInvitation)?;
        let root = invitation_org_root(&parsed).map_err(|_| EnrolmentError::BadInvitation)?;
        if root.as_slice() != cert.org_root_key.as_slice() {
            return Err(EnrolmentError::BadInvitation);
        }
        Ok(Self {
            certificate,
            device_list,
            invitation,
        })
    }

    /// Checks that the certificate names exactly `keys` (device id, signing key and identity
    /// key): an enrolment code made for another request is refused before anything is created.
    pub fn check_for(&self, keys: &DevicePublicKeys) -> Result<(), EnrolmentError> {
        let cert = decode::device_certificate(&self.certificate.certificate)
            .map_err(|_| EnrolmentError::BadCertificate)?;
        if cert.device_id.as_slice() != keys.device_id.0.as_slice()
            || cert.signing_key.as_slice() != keys.signing_key.as_slice()
            || cert.identity_key.as_slice() != keys.identity_key.as_slice()
        {
            return Err(EnrolmentError::NotForThisDevice);
        }
        Ok(())
    }

    /// The role the certificate grants (`None` if it names none).
    pub fn role(&self) -> Option<Role> {
        let cert = decode::device_certificate(&self.certificate.certificate).ok()?;
        match cert.role() {
            wire::Role::Admin => Some(Role::Admin),
            wire::Role::Caseworker => Some(Role::Caseworker),
            wire::Role::Ambassador => Some(Role::Ambassador),
            _ => None,
        }
    }

    /// The certificate's label (the device's name in the organisation).
    pub fn label(&self) -> String {
        decode::device_certificate(&self.certificate.certificate)
            .map(|c| c.label)
            .unwrap_or_default()
    }
}

/// A join in progress on the new device: its keys (secret), the relay it will create its
/// mailbox on and the name it asked for. Kept in the encrypted store under [`PENDING_KEY`]
/// until the join completes; never leaves the device.
pub struct PendingJoin {
    /// The new device's keys.
    pub keys: DeviceKeys,
    /// The relay the mailbox will be created on.
    pub relay: RelayInfo,
    /// The name the device asked for.
    pub name: String,
}

impl fmt::Debug for PendingJoin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            keys: _,
            relay: _,
            name: _,
        } = self;
        f.write_str("PendingJoin(..)")
    }
}

impl PendingJoin {
    /// The request this join shows.
    pub fn request(&self) -> Result<JoinRequest, EnrolmentError> {
        JoinRequest::new(self.keys.public_keys(), &self.name)
    }

    /// The store record: `PENDING_FORMAT || relay pin (32) || field(host:port) || field(name)
    /// || field(device key secret bytes)`, zeroized on drop.
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, EnrolmentError> {
        let mut out = Zeroizing::new(vec![PENDING_FORMAT]);
        out.extend_from_slice(&self.relay.pin);
        put_field(&mut out, self.relay.host_port.as_bytes())?;
        put_field(&mut out, self.name.as_bytes())?;
        put_field(&mut out, &self.keys.to_secret_bytes())?;
        Ok(out)
    }

    /// Reads the store record; anything malformed is [`EnrolmentError::PendingDamaged`].
    pub fn decode(bytes: &[u8]) -> Result<Self, EnrolmentError> {
        let damaged = |_| EnrolmentError::PendingDamaged;
        let mut r = Fields(bytes);
        r.version(PENDING_FORMAT).map_err(damaged)?;
        let pin = r.array::<32>().map_err(damaged)?;
        let host_port = String::from_utf8(r.field().map_err(damaged)?.to_vec())
            .map_err(|_| EnrolmentError::PendingDamaged)?;
        let name = String::from_utf8(r.field().map_err(damaged)?.to_vec())
            .map_err(|_| EnrolmentError::PendingDamaged)?;
        let keys = DeviceKeys::from_secret_bytes(r.field().map_err(damaged)?)
            .map_err(|_| EnrolmentError::PendingDamaged)?;
        if !r.0.is_empty() {
            return Err(EnrolmentError::PendingDamaged);
        }
        Ok(Self {
            keys,
            relay: RelayInfo { host_port, pin },
            name,
        })
    }
}

impl From<EnrolmentError> for EngineError {
    fn from(e: EnrolmentError) -> Self {
        EngineError::Enrolment(e)
    }
}

impl<S: KvStore> Engine<S> {
    /// The join pending in this store, if any (none once the profile exists).
    pub fn pending_join(&self) -> Result<Option<PendingJoin>, EngineError> {
        if self.has_profile() {
            return Ok(None);
        }
        match self.store().get(Namespace::Settings, PENDING_KEY)? {
            Some(bytes) => Ok(Some(PendingJoin::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Starts joining an organisation on this new device: generates its keys and keeps them
    /// in the store with `relay` and `name` (flushed). If a join is already pending, its
    /// request is returned unchanged (the enrolling device may have used it already).
    /// Refused with [`EngineError::ProfileExists`] once the device has a profile.
    pub fn begin_join(
        &mut self,
        relay: RelayInfo,
        name: &str,
        rng: &mut impl CryptoRng,
    ) -> Result<JoinRequest, EngineError> {
        if self.has_profile() {
            return Err(EngineError::ProfileExists);
        }
        if let Some(pending) = self.pending_join()? {
            return Ok(pending.request()?);
        }
        let name = name.trim();
        check_name(name)?;
        let pending = PendingJoin {
            keys: DeviceKeys::generate(rng),
            relay,
            name: name.to_owned(),
        };
        let request = pending.request()?;
        self.store_mut()
            .put(Namespace::Settings, PENDING_KEY, &pending.encode()?)?;
        self.store_mut().flush()?;
        Ok(request)
    }

    /// Forgets the pending join (once the profile exists, or to start again).
    pub fn clear_pending_join(&mut self) -> Result<(), EngineError> {
        self.store_mut().delete(Namespace::Settings, PENDING_KEY)?;
        self.store_mut().flush()?;
        Ok(())
    }

    /// Certifies the device of `request` with `role` and `label` (this device must hold the
    /// root key) and signs a device list that includes it. Idempotent: a device already
    /// listed with exactly these keys gets its listed certificate and the current list back
    /// (`fresh` is false), so a lost enrolment code can be made again. A device id already
    /// listed with other keys, or revoked, is refused ([`EnrolmentError::DeviceIdInUse`]): a
    /// request must never replace a colleague's certificate.
    pub fn enrol_request(
        &mut self,
        request: &JoinRequest,
        role: Role,
        label: &str,
        now: u64,
    ) -> Result<Enrolled, EngineError> {
        if !self.holds_org_key()? {
            return Err(EngineError::NotOrgKeyHolder);
        }
        let root = self.org_root()?;
        let keys = *request.keys();
        let trust = self.org_trust(&root)?;
        if trust.is_revoked(&keys.device_id) || keys.device_id == self.device_id()? {
            return Err(EnrolmentError::DeviceIdInUse.into());
        }
        if let Some(listed) = trust.listed_certificate(&keys.device_id).cloned() {
            let cert = decode::device_certificate(&listed.certificate)
                .map_err(|_| EngineError::CorruptState)?;
            if cert.signing_key.as_slice() != keys.signing_key.as_slice()
                || cert.identity_key.as_slice() != keys.identity_key.as_slice()
            {
                return Err(EnrolmentError::DeviceIdInUse.into());
            }
            let list = self.own_device_list()?.ok_or(EngineError::CorruptState)?;
            return Ok(Enrolled {
                certificate: listed,
                device_list: list,
                fresh: false,
            });
        }
        let (certificate, device_list) = self.enrol_device(&keys, role, label, now)?;
        Ok(Enrolled {
            certificate,
            device_list,
            fresh: true,
        })
    }
}

/// The result of [`Engine::enrol_request`].
#[derive(Clone, Debug)]
pub struct Enrolled {
    /// The device's certificate.
    pub certificate: wire::SignedDeviceCertificate,
    /// The device list that lists it.
    pub device_list: wire::SignedDeviceList,
    /// Whether the device was enrolled now (false: it was listed already).
    pub fresh: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::engine::{IdentitySetup, MailboxKeys, invitation_link};
    use crate::identity::OrgRootKey;
    use crate::store::InMemoryStore as MemStore;

    const NOW: u64 = 1_800_000_000;

    fn keys() -> DeviceKeys {
        DeviceKeys::generate(&mut rand::rng())
    }

    fn request_bytes(code: &str) -> Vec<u8> {
        unb64(code.strip_prefix(REQUEST_PREFIX).unwrap()).unwrap()
    }

    fn enrolment_bytes(code: &str) -> Vec<u8> {
        unb64(code.strip_prefix(ENROLMENT_PREFIX).unwrap()).unwrap()
    }

    /// An admin engine (holds the root key) over an in-memory store.
    fn admin() -> Engine<MemStore> {
        let rng = &mut rand::rng();
        let mut e = Engine::open(MemStore::new()).unwrap();
        e.create_profile(
            keys(),
            MailboxKeys::generate(rng),
            [1; 16],
            [2; 16],
            RelayInfo {
                host_port: "relay.example.org:4433".into(),
                pin: [3; 32],
            },
            IdentitySetup::NewOrganisation {
                device_label: "Admin".into(),
            },
            "Admin",
            NOW,
            rng,
        )
        .unwrap();
        e
    }

    /// A structurally valid enrolment code for `keys` from `org` (invitation from `org`).
    fn code_for(org: &OrgRootKey, inviter: &DeviceKeys, keys: &DevicePublicKeys) -> EnrolmentCode {
        let cert = org
            .issue_certificate(keys, Role::Caseworker, NOW, NOW + 86_400, "New")
            .unwrap();
        let inviter_cert = org
            .issue_certificate(&inviter.public_keys(), Role::Admin, NOW, NOW + 86_400, "")
            .unwrap();
        let list = org.sign_device_list(2, NOW, vec![inviter_cert.clone(), cert.clone()], &[]);
        let invitation = wire::Invitation {
            address: Some(wire::DeviceAddress {
                relay: "relay.example.org:4433".into(),
                relay_pin: vec![3; 32],
                send_id: vec![4; 16],
                capability: vec![5; 32],
                device_id: inviter.device_id().0.to_vec(),
                sealing_key: vec![6; 32],
            }),
            certificate: Some(inviter_cert),
            device_list: Some(list.clone()),
            display_name: "Admin".into(),
            expires_at: NOW + ENROLMENT_INVITATION_TTL,
        };
        EnrolmentCode {
            certificate: cert,
            device_list: list,
            invitation: invitation_link(&invitation),
        }
    }

    #[test]
    fn request_round_trips_and_keeps_the_byte_layout() {
        let k = keys();
        let request = JoinRequest::new(k.public_keys(), "Intake laptop 2").unwrap();
        let code = request.to_code();
        let bytes = request_bytes(&code);
        assert_eq!(bytes[0], CODE_FORMAT);
        assert_eq!(&bytes[1..17], &k.device_id().0);
        assert_eq!(&bytes[17..49], &k.public_keys().signing_key);
        assert_eq!(&bytes[49..81], &k.public_keys().identity_key);
        assert_eq!(&bytes[81..], b"Intake laptop 2");
        assert_eq!(JoinRequest::parse(&format!("  {code}\n")).unwrap(), request);
    }

    #[test]
    fn every_truncated_request_is_refused() {
        let code = JoinRequest::new(keys().public_keys(), "N")
            .unwrap()
            .to_code();
        let bytes = request_bytes(&code);
        for n in 0..bytes.len() {
            let cut = format!("{REQUEST_PREFIX}{}", b64(&bytes[..n]));
            let e = JoinRequest::parse(&cut).unwrap_err();
            let expected = if n == REQUEST_FIXED_LEN {
                EnrolmentError::BadName
            } else {
                EnrolmentError::Truncated
            };
            assert_eq!(e, expected, "cut at {n}");
        }
    }

    #[test]
    fn garbage_requests_are_refused_with_their_reason() {
        let good = JoinRequest::new(keys().public_keys(), "N")
            .unwrap()
            .to_code();
        assert_eq!(
            JoinRequest::parse("hello").unwrap_err(),
            EnrolmentError::NotARequest
        );
        let enrolment = good.replace(REQUEST_PREFIX, ENROLMENT_PREFIX);
        assert_eq!(
            JoinRequest::parse(&enrolment).unwrap_err(),
            EnrolmentError::NotARequest
        );
        assert_eq!(
            JoinRequest::parse(&format!("{REQUEST_PREFIX}%%%")).unwrap_err(),
            EnrolmentError::NotBase64
        );
        // Padded base64 is not the unpadded variant.
        assert_eq!(
            JoinRequest::parse(&format!("{good}==")).unwrap_err(),
            EnrolmentError::NotBase64
        );
        let mut bytes = request_bytes(&good);
        bytes[0] = 2;
        assert_eq!(
            JoinRequest::parse(&format!("{REQUEST_PREFIX}{}", b64(&bytes))).unwrap_err(),
            EnrolmentError::UnsupportedVersion(2)
        );
        let mut bytes = request_bytes(&good);
        bytes[0] = CODE_FORMAT;
        bytes.truncate(REQUEST_FIXED_LEN);
        bytes.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(
            JoinRequest::parse(&format!("{REQUEST_PREFIX}{}", b64(&bytes))).unwrap_err(),
            EnrolmentError::BadName
        );
        bytes.truncate(REQUEST_FIXED_LEN);
        bytes.extend(std::iter::repeat_n(b'a', MAX_NAME_LEN + 1));
        assert_eq!(
            JoinRequest::parse(&format!("{REQUEST_PREFIX}{}", b64(&bytes))).unwrap_err(),
            EnrolmentError::BadName
        );
        assert_eq!(
            JoinRequest::new(keys().public_keys(), "   ").unwrap_err(),
            EnrolmentError::BadName
        );
    }

    #[test]
    fn check_code_has_its_shape_and_changes_with_every_key() {
        let k = keys().public_keys();
        let code = check_code(&k);
        assert_eq!(code.len(), 5 * 4 + 4);
        assert!(code.split('-').all(|g| {
            g.len() == 4
                && g.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        }));
        // The construction, spelled out as docs/PROTOCOL.md §5.6 gives it.
        let mut input = b"handover/1 cli enrolment check".to_vec();
        input.extend_from_slice(&k.device_id.0);
        input.extend_from_slice(&k.signing_key);
        input.extend_from_slice(&k.identity_key);
        let digest = Sha256::digest(&input);
        assert_eq!(code.replace('-', ""), hex::encode(&digest[..10]));
        let mut t = k;
        t.signing_key[0] ^= 1;
        assert_ne!(check_code(&t), code);
        let mut t = k;
        t.identity_key[31] ^= 0x80;
        assert_ne!(check_code(&t), code);
        let mut t = k;
        t.device_id.0[5] ^= 4;
        assert_ne!(check_code(&t), code);
        // A tampered request code shows another check code.
        let request = JoinRequest::new(k, "N").unwrap();
        let mut bytes = request_bytes(&request.to_code());
        bytes[20] ^= 1;
        let tampered = JoinRequest::parse(&format!("{REQUEST_PREFIX}{}", b64(&bytes))).unwrap();
        assert_ne!(tampered.check_code(), request.check_code());
    }

    #[test]
    fn enrolment_code_round_trips_and_every_truncation_is_refused() {
        let org = OrgRootKey::generate(&mut rand::rng());
        let new = keys();
        let code = code_for(&org, &keys(), &new.public_keys());
        let text = code.to_code().unwrap();
        let parsed = EnrolmentCode::parse(&text).unwrap();
        assert_eq!(parsed, code);
        assert_eq!(parsed.role(), Some(Role::Caseworker));
        assert_eq!(parsed.label(), "New");
        parsed.check_for(&new.public_keys()).unwrap();
        let bytes = enrolment_bytes(&text);
        for n in 0..bytes.len() {
            let cut = format!("{ENROLMENT_PREFIX}{}", b64(&bytes[..n]));
            assert_eq!(
                EnrolmentCode::parse(&cut).unwrap_err(),
                EnrolmentError::Truncated,
                "cut at {n}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            EnrolmentCode::parse(&format!("{ENROLMENT_PREFIX}{}", b64(&longer))).unwrap_err(),
            EnrolmentError::TrailingBytes
        );
    }

    #[test]
    fn garbage_enrolment_codes_are_refused_with_their_reason() {
        let org = OrgRootKey::generate(&mut rand::rng());
        let inviter = keys();
        let new = keys().public_keys();
        let code = code_for(&org, &inviter, &new);
        let parse = |bytes: &[u8]| {
            EnrolmentCode::parse(&format!("{ENROLMENT_PREFIX}{}", b64(bytes))).unwrap_err()
        };
        let build = |cert: &[u8], list: &[u8], inv: &[u8]| {
            let mut b = vec![CODE_FORMAT];
            put_field(&mut b, cert).unwrap();
            put_field(&mut b, list).unwrap();
            put_field(&mut b, inv).unwrap();
            b
        };
        let cert = code.certificate.encode_to_vec();
        let list = code.device_list.encode_to_vec();
        let inv = code.invitation.as_bytes();
        assert_eq!(
            EnrolmentCode::parse("handover://invite#abc").unwrap_err(),
            EnrolmentError::NotAnEnrolmentCode
        );
        assert_eq!(
            EnrolmentCode::parse(&format!("{ENROLMENT_PREFIX}a b")).unwrap_err(),
            EnrolmentError::NotBase64
        );
        let mut v = build(&cert, &list, inv);
        v[0] = 0;
        assert_eq!(parse(&v), EnrolmentError::UnsupportedVersion(0));
        assert_eq!(
            parse(&build(b"garbage", &list, inv)),
            EnrolmentError::BadCertificate
        );
        assert_eq!(
            parse(&build(&cert, b"garbage", inv)),
            EnrolmentError::BadDeviceList
        );
        assert_eq!(
            parse(&build(&cert, &list, b"handover://invite#AAAA")),
            EnrolmentError::BadInvitation
        );
        assert_eq!(
            parse(&build(&cert, &list, &[0xff, 0xff])),
            EnrolmentError::BadInvitation
        );
        // An invitation of another organisation.
        let other = code_for(&OrgRootKey::generate(&mut rand::rng()), &inviter, &new);
        assert_eq!(
            parse(&build(&cert, &list, other.invitation.as_bytes())),
            EnrolmentError::BadInvitation
        );
        // The code of another device.
        assert_eq!(
            code.check_for(&keys().public_keys()).unwrap_err(),
            EnrolmentError::NotForThisDevice
        );
        let mut swapped = new;
        swapped.signing_key[3] ^= 1;
        assert_eq!(
            code.check_for(&swapped).unwrap_err(),
            EnrolmentError::NotForThisDevice
        );
    }

    #[test]
    fn pending_join_round_trips_and_damage_is_refused() {
        let pending = PendingJoin {
            keys: keys(),
            relay: RelayInfo {
                host_port: "relay.example.org:4433".into(),
                pin: [9; 32],
            },
            name: "Laptop".into(),
        };
        let bytes = pending.encode().unwrap();
        let back = PendingJoin::decode(&bytes).unwrap();
        assert_eq!(back.keys.public_keys(), pending.keys.public_keys());
        assert_eq!(back.relay, pending.relay);
        assert_eq!(back.name, "Laptop");
        assert_eq!(format!("{back:?}"), "PendingJoin(..)");
        for n in 0..bytes.len() {
            assert_eq!(
                PendingJoin::decode(&bytes[..n]).unwrap_err(),
                EnrolmentError::PendingDamaged,
                "cut at {n}"
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(1);
        assert_eq!(
            PendingJoin::decode(&longer).unwrap_err(),
            EnrolmentError::PendingDamaged
        );
    }

    #[test]
    fn a_pending_join_is_kept_and_shown_again() {
        let rng = &mut rand::rng();
        let mut e = Engine::open(MemStore::new()).unwrap();
        assert!(e.pending_join().unwrap().is_none());
        let relay = RelayInfo {
            host_port: "relay.example.org:4433".into(),
            pin: [3; 32],
        };
        let first = e.begin_join(relay.clone(), " Laptop ", rng).unwrap();
        assert_eq!(first.name(), "Laptop");
        let again = e.begin_join(relay, "Other", rng).unwrap();
        assert_eq!(again, first);
        assert_eq!(e.pending_join().unwrap().unwrap().request().unwrap(), first);
        e.clear_pending_join().unwrap();
        assert!(e.pending_join().unwrap().is_none());
        let mut a = admin();
        let relay = a.relay().unwrap().clone();
        assert!(matches!(
            a.begin_join(relay, "x", rng),
            Err(EngineError::ProfileExists)
        ));
    }

    #[test]
    fn enrolling_is_idempotent_and_never_replaces_a_listed_device() {
        let mut a = admin();
        let new = keys();
        let request = JoinRequest::new(new.public_keys(), "Laptop").unwrap();
        let first = a
            .enrol_request(&request, Role::Caseworker, "Laptop", NOW)
            .unwrap();
        assert!(first.fresh);
        let again = a
            .enrol_request(&request, Role::Admin, "Other", NOW + 5)
            .unwrap();
        assert!(!again.fresh);
        assert_eq!(again.certificate, first.certificate);
        // Same device id, other keys: refused, the listed certificate stays.
        let mut forged = new.public_keys();
        forged.identity_key = keys().public_keys().identity_key;
        let forged = JoinRequest::new(forged, "Laptop").unwrap();
        assert!(matches!(
            a.enrol_request(&forged, Role::Admin, "x", NOW + 10),
            Err(EngineError::Enrolment(EnrolmentError::DeviceIdInUse))
        ));
        let own = JoinRequest::new(a.device_public_keys().unwrap(), "me").unwrap();
        assert!(matches!(
            a.enrol_request(&own, Role::Admin, "x", NOW + 10),
            Err(EngineError::Enrolment(EnrolmentError::DeviceIdInUse))
        ));
        // The new device accepts the certificate for its keys only.
        let root = a.org_root().unwrap();
        let trust = a.org_trust(&root).unwrap();
        assert_eq!(
            trust.listed_certificate(&new.device_id()),
            Some(&first.certificate)
        );
    }
}
