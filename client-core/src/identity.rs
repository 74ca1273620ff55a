//! Device identities, organisation root keys, device certificates and signed device lists.
//!
//! docs/PROTOCOL.md §5 is the normative description. In short:
//!
//! - an organisation has a root Ed25519 key ([`OrgRootKey`]) that signs device certificates and
//!   device lists;
//! - a device has an Ed25519 signing key and an X25519 identity key ([`DeviceKeys`]) and a
//!   certificate ([`DeviceCertificate`]) binding both to the organisation, a role and a validity
//!   period;
//! - the organisation publishes a signed device list with revocations and a monotonic version;
//!   [`OrgTrust`] tracks it per organisation, refuses rollbacks, and remembers every revocation
//!   forever.
//!
//! Every signature covers a domain-separation label followed by the exact encoded bytes carried
//! on the wire; verifiers check the signature before decoding those bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use handover_proto::limits::{ID_LEN, KEY_LEN, MAX_SHORT_STRING_LEN};
use handover_proto::validate::Validate;
use prost::Message;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use crate::encoding::{Reader, Writer};

/// Signature label of a device certificate (`SignedDeviceCertificate.signature`).
pub const LABEL_DEVICE_CERT: &[u8] = b"handover/1 device-cert";
/// Signature label of a device list (`SignedDeviceList.signature`).
pub const LABEL_DEVICE_LIST: &[u8] = b"handover/1 device-list";
/// Signature label of a signed X25519 prekey (`SignedPrekey.signature`).
pub const LABEL_SIGNED_PREKEY: &[u8] = b"handover/1 signed-prekey";
/// Signature label of a signed ML-KEM prekey (`SignedKemPrekey.signature`).
pub const LABEL_KEM_PREKEY: &[u8] = b"handover/1 kem-prekey";

/// Clock skew allowed when checking a certificate's `not_before`: a certificate is accepted
/// from `not_before - CERTIFICATE_CLOCK_SKEW` on, so a device whose clock is a few minutes
/// behind the issuer's can use a certificate issued just now (docs/PROTOCOL.md §5.2).
pub const CERTIFICATE_CLOCK_SKEW: u64 = 5 * 60;

/// Errors from issuing or checking certificates and device lists.
///
/// These are about public, signed data, so the variants say what was wrong; they never contain
/// key material or ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The structure is malformed (wrong lengths, missing fields, undecodable bytes).
    #[error("malformed certificate or device list")]
    Malformed,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Signed by, or naming, a different organisation root than the one trusted.
    #[error("certificate belongs to another organisation")]
    WrongOrganisation,
    /// `now` is before `not_before`.
    #[error("certificate not yet valid")]
    NotYetValid,
    /// `now` is at or after `not_after`.
    #[error("certificate expired")]
    Expired,
    /// The device was revoked by its organisation.
    #[error("device revoked")]
    Revoked,
    /// Issuing: `not_after` is not after `not_before`, or the label is too long.
    #[error("invalid certificate parameters")]
    InvalidParameters,
    /// A device list with a lower version than one already accepted.
    #[error("device list version rolled back")]
    Rollback,
    /// A different device list with the same version as one already accepted.
    #[error("conflicting device lists with the same version")]
    Equivocation,
    /// A device list lists a revoked device as active.
    #[error("device list lists a revoked device")]
    RevokedDeviceListed,
    /// The organisation's current device list holds a different certificate for this device
    /// (for example the device was re-certified with another role): only the listed one is
    /// accepted.
    #[error("certificate is not the one the organisation's current device list holds")]
    NotListed,
}

/// A 16-byte random device id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DeviceId(pub [u8; ID_LEN]);

impl DeviceId {
    /// A fresh random device id.
    pub fn random(rng: &mut impl CryptoRng) -> Self {
        let mut id = [0u8; ID_LEN];
        rng.fill_bytes(&mut id);
        Self(id)
    }

    fn from_slice(bytes: &[u8]) -> Result<Self, CertificateError> {
        Ok(Self(
            bytes.try_into().map_err(|_| CertificateError::Malformed)?,
        ))
    }
}

/// What a device may do on behalf of its organisation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// Enrols and revokes devices, publishes the profile.
    Admin,
    /// Sends and receives referrals, records consent.
    Caseworker,
    /// Chats and starts self-referral offers; never receives referral bodies.
    Ambassador,
}

impl Role {
    fn to_wire(self) -> wire::Role {
        match self {
            Role::Admin => wire::Role::Admin,
            Role::Caseworker => wire::Role::Caseworker,
            Role::Ambassador => wire::Role::Ambassador,
        }
    }

    fn from_wire(value: i32) -> Result<Self, CertificateError> {
        match wire::Role::try_from(value) {
            Ok(wire::Role::Admin) => Ok(Role::Admin),
            Ok(wire::Role::Caseworker) => Ok(Role::Caseworker),
            Ok(wire::Role::Ambassador) => Ok(Role::Ambassador),
            _ => Err(CertificateError::Malformed),
        }
    }
}

/// Signs `label || message` with `key`.
pub(crate) fn sign_labelled(key: &SigningKey, label: &[u8], message: &[u8]) -> [u8; 64] {
    let mut input = Vec::with_capacity(label.len() + message.len());
    input.extend_from_slice(label);
    input.extend_from_slice(message);
    key.sign(&input).to_bytes()
}

/// Verifies an Ed25519 signature (strict: no small-order keys, canonical encodings) over
/// `label || message`.
pub(crate) fn verify_labelled(
    key: &VerifyingKey,
    label: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    let Ok(signature) = Signature::from_slice(signature) else {
        return false;
    };
    let mut input = Vec::with_capacity(label.len() + message.len());
    input.extend_from_slice(label);
    input.extend_from_slice(message);
    key.verify_strict(&input, &signature).is_ok()
}

fn verifying_key(bytes: &[u8]) -> Result<VerifyingKey, CertificateError> {
    let bytes: &[u8; KEY_LEN] = bytes.try_into().map_err(|_| CertificateError::Malformed)?;
    VerifyingKey::from_bytes(bytes).map_err(|_| CertificateError::Malformed)
}

/// The public Ed25519 key of an organisation root: the trust anchor for its devices.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OrgRootPublicKey([u8; KEY_LEN], VerifyingKey);

impl OrgRootPublicKey {
    /// Parses a 32-byte Ed25519 public key (rejects invalid encodings).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertificateError> {
        let key = verifying_key(bytes)?;
        Ok(Self(key.to_bytes(), key))
    }

    /// The 32-byte encoding.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0
    }

    fn verifying_key(&self) -> &VerifyingKey {
        &self.1
    }
}

/// An organisation's root signing key. Keep it offline or on an admin device; it signs device
/// certificates and device lists.
pub struct OrgRootKey {
    key: Box<SigningKey>,
}

impl fmt::Debug for OrgRootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { key } = self;
        f.debug_struct("OrgRootKey")
            .field("public", &key.verifying_key().to_bytes())
            .finish_non_exhaustive()
    }
}

impl OrgRootKey {
    /// A fresh random root key.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        Self {
            key: Box::new(SigningKey::generate(rng)),
        }
    }

    /// Restores a root key from its 32-byte secret seed.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Self {
            key: Box::new(SigningKey::from_bytes(secret)),
        }
    }

    /// The 32-byte secret seed, for the encrypted local store.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The public key clients trust.
    pub fn public_key(&self) -> OrgRootPublicKey {
        let key = self.key.verifying_key();
        OrgRootPublicKey(key.to_bytes(), key)
    }

    /// Issues a certificate for a device.
    ///
    /// The validity period is `[not_before, not_after)`; `label` is staff-facing and at most
    /// `MAX_SHORT_STRING_LEN` bytes.
    pub fn issue_certificate(
        &self,
        device: &DevicePublicKeys,
        role: Role,
        not_before: u64,
        not_after: u64,
        label: &str,
    ) -> Result<wire::SignedDeviceCertificate, CertificateError> {
        if not_after <= not_before || label.len() > MAX_SHORT_STRING_LEN {
            return Err(CertificateError::InvalidParameters);
        }
        let certificate = wire::DeviceCertificate {
            org_root_key: self.public_key().0.to_vec(),
            device_id: device.device_id.0.to_vec(),
            signing_key: device.signing_key.to_vec(),
            identity_key: device.identity_key.to_vec(),
            role: role.to_wire() as i32,
            not_before,
            not_after,
            label: label.to_owned(),
        }
        .encode_to_vec();
        let signature = sign_labelled(&self.key, LABEL_DEVICE_CERT, &certificate);
        Ok(wire::SignedDeviceCertificate {
            certificate,
            signature: signature.to_vec(),
        })
    }

    /// Signs a device list. `version` must be higher than any list published before; revoked ids
    /// must include every id revoked before (clients enforce both).
    pub fn sign_device_list(
        &self,
        version: u64,
        issued_at: u64,
        devices: Vec<wire::SignedDeviceCertificate>,
        revoked: &[DeviceId],
    ) -> wire::SignedDeviceList {
        let list = wire::DeviceList {
            org_root_key: self.public_key().0.to_vec(),
            version,
            issued_at,
            devices,
            revoked_device_ids: revoked.iter().map(|id| id.0.to_vec()).collect(),
        }
        .encode_to_vec();
        let signature = sign_labelled(&self.key, LABEL_DEVICE_LIST, &list);
        wire::SignedDeviceList {
            list,
            signature: signature.to_vec(),
        }
    }
}

/// The public keys of a device, as certified.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DevicePublicKeys {
    /// Random device id.
    pub device_id: DeviceId,
    /// Ed25519 public key the device signs with.
    pub signing_key: [u8; KEY_LEN],
    /// X25519 public identity key used in PQXDH.
    pub identity_key: [u8; KEY_LEN],
}

struct DeviceKeysInner {
    device_id: DeviceId,
    signing: SigningKey,
    identity: StaticSecret,
    /// Cached public half of `identity` (a fixed-base scalar multiplication to recompute).
    identity_public: [u8; KEY_LEN],
}

/// A device's long-term secrets: its Ed25519 signing key and X25519 identity key.
///
/// Both zeroize on drop; the pair is boxed so moving a `DeviceKeys` never copies secrets.
pub struct DeviceKeys {
    inner: Box<DeviceKeysInner>,
}

impl fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { inner } = self;
        let DeviceKeysInner {
            device_id,
            signing: _,
            identity: _,
            identity_public: _,
        } = &**inner;
        f.debug_struct("DeviceKeys")
            .field("device_id", device_id)
            .finish_non_exhaustive()
    }
}

/// Version byte of the [`DeviceKeys::to_secret_bytes`] layout.
const DEVICE_KEYS_FORMAT: u8 = 1;

impl DeviceKeys {
    /// Fresh random device keys and id.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let device_id = DeviceId::random(rng);
        let signing = SigningKey::generate(rng);
        let identity = StaticSecret::random_from_rng(rng);
        let identity_public = X25519Public::from(&identity).to_bytes();
        Self {
            inner: Box::new(DeviceKeysInner {
                device_id,
                signing,
                identity,
                identity_public,
            }),
        }
    }

    /// The device's public keys (what its certificate binds).
    pub fn public_keys(&self) -> DevicePublicKeys {
        DevicePublicKeys {
            device_id: self.inner.device_id,
            signing_key: self.inner.signing.verifying_key().to_bytes(),
            identity_key: self.inner.identity_public,
        }
    }

    /// The device id.
    pub fn device_id(&self) -> DeviceId {
        self.inner.device_id
    }

    /// Serialises the secrets for the encrypted local store:
    /// `0x01 || device_id(16) || ed25519_seed(32) || x25519_secret(32)`.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new(DEVICE_KEYS_FORMAT);
        w.bytes(&self.inner.device_id.0);
        w.bytes(&Zeroizing::new(self.inner.signing.to_bytes())[..]);
        w.bytes(self.inner.identity.as_bytes());
        Zeroizing::new(w.finish())
    }

    /// Restores keys written by [`to_secret_bytes`](Self::to_secret_bytes).
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, CertificateError> {
        let mut r = Reader::new(bytes);
        if r.u8() != Some(DEVICE_KEYS_FORMAT) {
            return Err(CertificateError::Malformed);
        }
        let device_id = DeviceId(r.array().ok_or(CertificateError::Malformed)?);
        let seed = Zeroizing::new(r.array::<32>().ok_or(CertificateError::Malformed)?);
        let identity = Zeroizing::new(r.array::<32>().ok_or(CertificateError::Malformed)?);
        if !r.is_empty() {
            return Err(CertificateError::Malformed);
        }
        let identity = StaticSecret::from(*identity);
        let identity_public = X25519Public::from(&identity).to_bytes();
        Ok(Self {
            inner: Box::new(DeviceKeysInner {
                device_id,
                signing: SigningKey::from_bytes(&seed),
                identity,
                identity_public,
            }),
        })
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.inner.signing
    }

    pub(crate) fn identity_secret(&self) -> &StaticSecret {
        &self.inner.identity
    }

    pub(crate) fn identity_public(&self) -> [u8; KEY_LEN] {
        self.inner.identity_public
    }
}

/// A device certificate whose signature, organisation and validity have been checked.
///
/// Obtain one from [`OrgTrust::verify_certificate`] (which also checks revocation) or
/// [`DeviceCertificate::verify`].
#[derive(Clone, PartialEq, Debug)]
pub struct DeviceCertificate {
    org_root_key: OrgRootPublicKey,
    device_id: DeviceId,
    signing_key: VerifyingKey,
    identity_key: [u8; KEY_LEN],
    role: Role,
    not_before: u64,
    not_after: u64,
    label: String,
    signed: wire::SignedDeviceCertificate,
}

impl DeviceCertificate {
    /// Checks a signed certificate against the trusted organisation root at time `now`
    /// (Unix seconds): structure, root signature over `LABEL_DEVICE_CERT || certificate`, the
    /// root named inside, and `not_before <= now < not_after`. Revocation is checked by
    /// [`OrgTrust::verify_certificate`].
    pub fn verify(
        signed: &wire::SignedDeviceCertificate,
        trusted_root: &OrgRootPublicKey,
        now: u64,
    ) -> Result<Self, CertificateError> {
        let cert = Self::check_signature_and_org(signed, trusted_root)?;
        if now.saturating_add(CERTIFICATE_CLOCK_SKEW) < cert.not_before {
            return Err(CertificateError::NotYetValid);
        }
        if now >= cert.not_after {
            return Err(CertificateError::Expired);
        }
        let identity_key: [u8; KEY_LEN] = cert
            .identity_key
            .as_slice()
            .try_into()
            .map_err(|_| CertificateError::Malformed)?;
        Ok(Self {
            org_root_key: *trusted_root,
            device_id: DeviceId::from_slice(&cert.device_id)?,
            signing_key: verifying_key(&cert.signing_key)?,
            identity_key,
            role: Role::from_wire(cert.role)?,
            not_before: cert.not_before,
            not_after: cert.not_after,
            label: cert.label,
            signed: signed.clone(),
        })
    }

    /// The organisation root that signed it.
    pub fn org_root_key(&self) -> OrgRootPublicKey {
        self.org_root_key
    }

    /// The device id.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// The device's Ed25519 signing key (32 bytes).
    pub fn signing_key(&self) -> [u8; KEY_LEN] {
        self.signing_key.to_bytes()
    }

    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.signing_key
    }

    /// The device's X25519 identity key (32 bytes).
    pub fn identity_key(&self) -> [u8; KEY_LEN] {
        self.identity_key
    }

    /// The device's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Validity start, Unix seconds.
    pub fn not_before(&self) -> u64 {
        self.not_before
    }

    /// Validity end (exclusive), Unix seconds.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }

    /// Staff-facing label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The signed wire form, exactly as received (to forward it, never re-encoded).
    pub fn signed(&self) -> &wire::SignedDeviceCertificate {
        &self.signed
    }
}

/// What a client knows about one organisation: the trusted root, the newest device list it has
/// accepted, and every device id ever revoked.
#[derive(Clone, Debug)]
pub struct OrgTrust {
    root: OrgRootPublicKey,
    version: Option<u64>,
    list_digest: [u8; 32],
    active: BTreeMap<DeviceId, wire::SignedDeviceCertificate>,
    revoked: BTreeSet<DeviceId>,
}

impl OrgTrust {
    /// Trust in an organisation root learnt out of band (invitation, QR code, directory).
    pub fn new(root: OrgRootPublicKey) -> Self {
        Self {
            root,
            version: None,
            list_digest: [0; 32],
            active: BTreeMap::new(),
            revoked: BTreeSet::new(),
        }
    }

    /// The trusted root.
    pub fn root(&self) -> OrgRootPublicKey {
        self.root
    }

    /// The version of the newest accepted device list, if any.
    pub fn device_list_version(&self) -> Option<u64> {
        self.version
    }

    /// Accepts a newer signed device list (docs/PROTOCOL.md §5.3).
    ///
    /// Refuses a lower version ([`CertificateError::Rollback`]), a different list with the same
    /// version ([`CertificateError::Equivocation`]), and a list naming as active a device that
    /// was ever revoked. Revocations accumulate: an id once revoked stays revoked even if a later
    /// list omits it. Device certificates in the list must verify against the root (expired
    /// ones are kept but fail [`verify_certificate`](Self::verify_certificate)). Nothing changes
    /// unless the whole list is accepted.
    pub fn apply_device_list(
        &mut self,
        signed: &wire::SignedDeviceList,
    ) -> Result<(), CertificateError> {
        signed.validate().map_err(|_| CertificateError::Malformed)?;
        if !verify_labelled(
            self.root.verifying_key(),
            LABEL_DEVICE_LIST,
            &signed.list,
            &signed.signature,
        ) {
            return Err(CertificateError::BadSignature);
        }
        let digest: [u8; 32] = Sha256::digest(&signed.list).into();
        let list = decode::device_list(&signed.list).map_err(|_| CertificateError::Malformed)?;
        if list.org_root_key != self.root.0 {
            return Err(CertificateError::WrongOrganisation);
        }
        match self.version {
            Some(v) if list.version < v => return Err(CertificateError::Rollback),
            Some(v) if list.version == v => {
                return if bool::from(digest.ct_eq(&self.list_digest)) {
                    Ok(())
                } else {
                    Err(CertificateError::Equivocation)
                };
            }
            _ => {}
        }
        let mut revoked = self.revoked.clone();
        for id in &list.revoked_device_ids {
            revoked.insert(DeviceId::from_slice(id)?);
        }
        let mut active = BTreeMap::new();
        for device in &list.devices {
            // Check signature and organisation; validity is checked at use.
            let cert = DeviceCertificate::verify_ignoring_time(device, &self.root)?;
            if revoked.contains(&cert) {
                return Err(CertificateError::RevokedDeviceListed);
            }
            active.insert(cert, device.clone());
        }
        self.version = Some(list.version);
        self.list_digest = digest;
        self.active = active;
        self.revoked = revoked;
        Ok(())
    }

    /// Checks a device certificate: signature by this organisation's root, validity at `now`,
    /// not revoked, and, if the newest accepted device list lists the device, the listed
    /// certificate byte for byte (docs/PROTOCOL.md §5.2 step 6).
    pub fn verify_certificate(
        &self,
        signed: &wire::SignedDeviceCertificate,
        now: u64,
    ) -> Result<DeviceCertificate, CertificateError> {
        let cert = DeviceCertificate::verify(signed, &self.root, now)?;
        if self.revoked.contains(&cert.device_id) {
            return Err(CertificateError::Revoked);
        }
        if let Some(listed) = self.active.get(&cert.device_id)
            && listed != signed
        {
            return Err(CertificateError::NotListed);
        }
        Ok(cert)
    }

    /// The certificate the newest accepted device list holds for `device_id`, if any.
    pub fn listed_certificate(
        &self,
        device_id: &DeviceId,
    ) -> Option<&wire::SignedDeviceCertificate> {
        self.active.get(device_id)
    }

    /// Whether `device_id` was ever revoked.
    pub fn is_revoked(&self, device_id: &DeviceId) -> bool {
        self.revoked.contains(device_id)
    }

    /// Certificates of the active devices in the newest accepted list that are valid at `now`
    /// (the fan-out targets of an organisation-addressed packet).
    pub fn active_devices(&self, now: u64) -> Vec<DeviceCertificate> {
        self.active
            .values()
            .filter_map(|signed| self.verify_certificate(signed, now).ok())
            .collect()
    }
}

impl DeviceCertificate {
    /// Signature and organisation checks only; returns the device id.
    fn verify_ignoring_time(
        signed: &wire::SignedDeviceCertificate,
        root: &OrgRootPublicKey,
    ) -> Result<DeviceId, CertificateError> {
        let cert = Self::check_signature_and_org(signed, root)?;
        DeviceId::from_slice(&cert.device_id)
    }

    /// Steps 1–3 of PROTOCOL.md §5.2: structure, the root's signature over the exact bytes,
    /// then the organisation named inside. Validity and revocation are the callers' steps.
    fn check_signature_and_org(
        signed: &wire::SignedDeviceCertificate,
        root: &OrgRootPublicKey,
    ) -> Result<wire::DeviceCertificate, CertificateError> {
        signed.validate().map_err(|_| CertificateError::Malformed)?;
        if !verify_labelled(
            root.verifying_key(),
            LABEL_DEVICE_CERT,
            &signed.certificate,
            &signed.signature,
        ) {
            return Err(CertificateError::BadSignature);
        }
        let cert = decode::device_certificate(&signed.certificate)
            .map_err(|_| CertificateError::Malformed)?;
        if cert.org_root_key != root.0 {
            return Err(CertificateError::WrongOrganisation);
        }
        Ok(cert)
    }
}

// ---------------------------------------------------------------------------------------------
// Safety numbers.

/// Version of the safety-number derivation (docs/PROTOCOL.md §5.4).
pub const SAFETY_NUMBER_VERSION: u16 = 0;
/// SHA-512 iterations of the safety-number derivation.
pub const SAFETY_NUMBER_ITERATIONS: usize = 5200;
/// Version byte of the QR payload.
pub const SAFETY_QR_VERSION: u8 = 1;
/// Length of the QR payload: version, two 32-byte fingerprints.
pub const SAFETY_QR_LEN: usize = 1 + 32 + 32;

fn fingerprint(cert: &DeviceCertificate) -> [u8; 64] {
    use sha2::Sha512;
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(&cert.signing_key.to_bytes());
    key[32..].copy_from_slice(&cert.identity_key);
    let mut h = Sha512::new();
    h.update(SAFETY_NUMBER_VERSION.to_be_bytes());
    h.update(key);
    h.update(cert.org_root_key.0);
    h.update(cert.device_id.0);
    let mut out: [u8; 64] = h.finalize().into();
    for _ in 1..SAFETY_NUMBER_ITERATIONS {
        let mut h = Sha512::new();
        h.update(out);
        h.update(key);
        out = h.finalize().into();
    }
    out
}

fn digits(fp: &[u8; 64]) -> String {
    let mut s = String::with_capacity(30);
    for chunk in fp[..30].chunks_exact(5) {
        let mut v = 0u64;
        for b in chunk {
            v = (v << 8) | u64::from(*b);
        }
        s.push_str(&format!("{:05}", v % 100_000));
    }
    s
}

/// A safety number between two devices, for in-person verification (docs/PROTOCOL.md §5.4).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SafetyNumber {
    local: [u8; 64],
    remote: [u8; 64],
}

impl SafetyNumber {
    /// The safety number between our certificate and the peer's.
    pub fn new(local: &DeviceCertificate, remote: &DeviceCertificate) -> Self {
        Self {
            local: fingerprint(local),
            remote: fingerprint(remote),
        }
    }

    /// The 60 digits both people see (same on both sides), in twelve groups of five.
    pub fn digits(&self) -> String {
        let a = digits(&self.local);
        let b = digits(&self.remote);
        if a <= b { a + &b } else { b + &a }
    }

    /// The 60 digits in twelve groups of five separated by spaces, for reading aloud.
    pub fn grouped(&self) -> String {
        let digits = self.digits();
        let groups: Vec<&str> = digits
            .as_bytes()
            .chunks(5)
            .filter_map(|g| core::str::from_utf8(g).ok())
            .collect();
        groups.join(" ")
    }

    /// Whether `compared` (the number as read from the peer's screen; spaces and any other
    /// characters but the digits are ignored) is this safety number. Constant time in the
    /// digits.
    pub fn matches_digits(&self, compared: &str) -> bool {
        let given: Vec<u8> = compared.bytes().filter(u8::is_ascii_digit).collect();
        let ours = self.digits();
        given.len() == ours.len() && bool::from(given.as_slice().ct_eq(ours.as_bytes()))
    }

    /// What our screen shows as a QR code: `0x01 || local_fp[..32] || remote_fp[..32]`.
    pub fn qr_payload(&self) -> [u8; SAFETY_QR_LEN] {
        let mut out = [0u8; SAFETY_QR_LEN];
        out[0] = SAFETY_QR_VERSION;
        out[1..33].copy_from_slice(&self.local[..32]);
        out[33..].copy_from_slice(&self.remote[..32]);
        out
    }

    /// Whether a QR payload scanned from the peer's screen matches (their local is our remote
    /// and vice versa). Constant time.
    pub fn matches_scanned(&self, scanned: &[u8]) -> bool {
        if scanned.len() != SAFETY_QR_LEN || scanned[0] != SAFETY_QR_VERSION {
            return false;
        }
        let theirs_ok = scanned[1..33].ct_eq(&self.remote[..32]);
        let ours_ok = scanned[33..].ct_eq(&self.local[..32]);
        bool::from(theirs_ok & ours_ok)
    }
}
