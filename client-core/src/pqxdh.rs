//! PQXDH key agreement, following Signal's PQXDH specification
//! (<https://signal.org/docs/specifications/pqxdh/>, which extends X3DH,
//! <https://signal.org/docs/specifications/x3dh/>), instantiated as
//! `Handover_X25519_SHA-256_ML-KEM-768`: curve X25519, hash SHA-256, KEM ML-KEM-768 (FIPS 203).
//!
//! ```text
//! DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)   DH4 = DH(EK_A, OPK_B)
//! (CT, SS) = ML-KEM-768.Encaps(PQPK_B)
//! SK = HKDF-SHA256(salt = 32 zero bytes, IKM = F || DH1 || DH2 || DH3 [|| DH4] || SS,
//!                  info = "Handover_X25519_SHA-256_ML-KEM-768", L = 32),  F = 32 bytes 0xFF
//! AD = IK_A || IK_B || CH(cert_A) || CH(cert_B)      (IK_*: the 32-byte X25519 u-coordinates;
//!      CH(cert) = SHA-256("handover/1 ad-certificate" || cert.certificate), see
//!      crate::session::session_ad)
//! ```
//!
//! Handover's one refinement (docs/PROTOCOL.md §6): prekey signatures are Ed25519 signatures by
//! the device's certified signing key, not XEdDSA signatures by the identity key; the
//! organisation certificate binds that signing key to the identity key.
//!
//! This module holds the receiving side's prekey secrets ([`PrekeyStore`]) and the key
//! derivation; [`crate::session::Session`] runs the protocol.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use handover_proto::e2e::v1 as wire;
use handover_proto::limits::{KEY_LEN, ML_KEM_768_CIPHERTEXT_LEN, ML_KEM_768_PUBLIC_KEY_LEN};
use handover_proto::validate::Validate;
use hkdf::Hkdf;
use ml_kem::kem::{Decapsulate, Encapsulate};
use ml_kem::{DecapsulationKey, EncapsulationKey, KeyExport, MlKem768, Seed};
use rand_core::CryptoRng;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::encoding::{Reader, Writer};
use crate::identity::{DeviceKeys, LABEL_KEM_PREKEY, LABEL_SIGNED_PREKEY, sign_labelled};
use crate::ratchet::Secret32;

/// HKDF info of the PQXDH key derivation (the protocol name, PQXDH spec §2.1 "info").
pub const INFO_PQXDH: &[u8] = b"Handover_X25519_SHA-256_ML-KEM-768";
/// `F`: 32 0xFF bytes prefixed to the key material (X3DH §2.2 for X25519).
pub const KDF_PREFIX: [u8; 32] = [0xFF; 32];
/// Age at which the signed prekey and the last-resort ML-KEM prekey are replaced: one week, the
/// interval Signal uses. A session set up without a one-time prekey depends on these two keys
/// for its forward secrecy, so they must not live for ever.
pub const PREKEY_ROTATION_SECS: u64 = 7 * 24 * 3600;
/// How long a replaced signed or last-resort prekey's private key is kept: 30 days, the relay's
/// default maximum envelope lifetime. An initial message was sealed while its prekey was
/// current, and receivers refuse an envelope past its `expires_at`, so none can use the key
/// after this; then the key (and its seen base keys) is deleted and zeroized.
pub const RETIRED_PREKEY_LIFETIME_SECS: u64 = 30 * 24 * 3600;
/// Most initial-message base keys (`PrekeyMessage.ephemeral_key`) remembered per signed
/// prekey. They are kept as long as the prekey itself, never evicted: once a prekey has this
/// many, further initial messages on it are refused.
pub const MAX_SEEN_BASE_KEYS_PER_PREKEY: usize = 65_536;

type Dk = DecapsulationKey<MlKem768>;
type Ek = EncapsulationKey<MlKem768>;

/// Errors from prekey handling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrekeyError {
    /// A prekey with this id already exists.
    #[error("prekey id already in use")]
    DuplicateId,
    /// Stored prekeys could not be read.
    #[error("malformed prekey store")]
    MalformedState,
}

/// `KDF(KM)` of X3DH/PQXDH: HKDF-SHA256 with a zero salt over `F || KM`, 32 bytes out.
pub(crate) fn kdf(
    dh1: &[u8; 32],
    dh2: &[u8; 32],
    dh3: &[u8; 32],
    dh4: Option<&[u8; 32]>,
    ss: &[u8],
) -> Secret32 {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * 6));
    ikm.extend_from_slice(&KDF_PREFIX);
    ikm.extend_from_slice(dh1);
    ikm.extend_from_slice(dh2);
    ikm.extend_from_slice(dh3);
    if let Some(dh4) = dh4 {
        ikm.extend_from_slice(dh4);
    }
    ikm.extend_from_slice(ss);
    let hk = Hkdf::<Sha256>::new(Some(&[0u8; 32]), &ikm);
    let mut sk = [0u8; 32];
    let _ = hk.expand(INFO_PQXDH, &mut sk);
    Secret32(sk)
}

/// X25519 with the all-zero (non-contributory) output rejected.
pub(crate) fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    shared
        .was_contributory()
        .then(|| Zeroizing::new(shared.to_bytes()))
}

/// ML-KEM-768 encapsulation to a 1184-byte encapsulation key.
pub(crate) fn kem_encapsulate(
    public_key: &[u8],
    rng: &mut impl CryptoRng,
) -> Option<(Vec<u8>, Zeroizing<[u8; 32]>)> {
    let key = ml_kem::Key::<Ek>::try_from(public_key).ok()?;
    let ek = Ek::new(&key).ok()?;
    let (ct, ss) = ek.encapsulate_with_rng(rng);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(ss.as_slice());
    Some((ct.to_vec(), out))
}

/// When a long-lived prekey was made and, once replaced, when it was retired (Unix seconds;
/// `created_at` 0 = unknown, from a store written before rotation existed).
#[derive(Clone, Copy, Default)]
struct Lifetime {
    created_at: u64,
    retired_at: Option<u64>,
}

impl Lifetime {
    fn new(created_at: u64) -> Self {
        Self {
            created_at,
            retired_at: None,
        }
    }

    fn is_current(&self) -> bool {
        self.retired_at.is_none()
    }

    fn rotation_due(&self, now: u64) -> bool {
        self.is_current() && self.created_at.saturating_add(PREKEY_ROTATION_SECS) <= now
    }

    fn expired(&self, now: u64) -> bool {
        self.retired_at
            .is_some_and(|r| r.saturating_add(RETIRED_PREKEY_LIFETIME_SECS) <= now)
    }

    fn write(&self, w: &mut Writer) {
        w.u64(self.created_at);
        match self.retired_at {
            Some(r) => {
                w.u8(1);
                w.u64(r);
            }
            None => w.u8(0),
        }
    }

    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let created_at = r.u64()?;
        let retired_at = match r.u8()? {
            0 => None,
            1 => Some(r.u64()?),
            _ => return None,
        };
        Some(Self {
            created_at,
            retired_at,
        })
    }
}

/// A signed X25519 prekey's secret, its lifetime and the base keys of the initial messages
/// accepted with it.
#[derive(Clone)]
struct SignedEntry {
    secret: StaticSecret,
    life: Lifetime,
    seen: BTreeSet<[u8; 32]>,
}

/// A stored ML-KEM prekey: its 64-byte seed (FIPS 203 `d || z`) and decapsulation key.
#[derive(Clone)]
struct KemPrekey {
    seed: Zeroizing<[u8; 64]>,
    key: Box<Dk>,
    last_resort: bool,
    life: Lifetime,
}

impl KemPrekey {
    fn from_seed(seed: [u8; 64], last_resort: bool, life: Lifetime) -> Self {
        let seed = Zeroizing::new(seed);
        let key = Box::new(Dk::from_seed(Seed::from(*seed)));
        Self {
            seed,
            key,
            last_resort,
            life,
        }
    }

    fn public_key(&self) -> Vec<u8> {
        self.key.encapsulation_key().to_bytes().to_vec()
    }

    fn decapsulate(&self, ciphertext: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
        if ciphertext.len() != ML_KEM_768_CIPHERTEXT_LEN {
            return None;
        }
        let ct = ml_kem::Ciphertext::<MlKem768>::try_from(ciphertext).ok()?;
        let ss = self.key.decapsulate(&ct);
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(ss.as_slice());
        Some(out)
    }
}

/// A device's prekey secrets: signed prekeys, ML-KEM prekeys (one-time and last-resort) and
/// one-time prekeys, by id. Each signed prekey remembers the base keys of the initial messages
/// accepted with it for as long as it lives, so a replayed initial message is refused.
///
/// Rotation (docs/PROTOCOL.md §6.3): the current signed prekey and last-resort ML-KEM prekey
/// are replaced once [`PREKEY_ROTATION_SECS`] old ([`rotation_due`](Self::rotation_due),
/// [`retire_current`](Self::retire_current)); a replaced one is deleted
/// [`RETIRED_PREKEY_LIFETIME_SECS`] after its retirement
/// ([`delete_expired`](Self::delete_expired)).
#[derive(Clone, Default)]
pub struct PrekeyStore {
    signed: BTreeMap<u32, SignedEntry>,
    kem: BTreeMap<u32, KemPrekey>,
    one_time: BTreeMap<u32, StaticSecret>,
}

impl fmt::Debug for PrekeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            signed,
            kem,
            one_time,
        } = self;
        f.debug_struct("PrekeyStore")
            .field("signed", &signed.len())
            .field("kem", &kem.len())
            .field("one_time", &one_time.len())
            .field(
                "seen",
                &signed.values().map(|e| e.seen.len()).sum::<usize>(),
            )
            .finish()
    }
}

/// Version byte of [`PrekeyStore::to_secret_bytes`]. Version 1 (no lifetimes, one ring of seen
/// base keys) is still read.
const PREKEY_STORE_FORMAT: u8 = 2;
const PREKEY_STORE_FORMAT_V1: u8 = 1;
/// Version 1's ring size, the most seen keys a version-1 store holds.
const V1_MAX_SEEN: usize = 4096;

impl PrekeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Generates a signed X25519 prekey; the signature is by the device signing key over
    /// `"handover/1 signed-prekey" || u32be(id) || public_key`. Its age is unknown (it is due
    /// for rotation at once); engines use [`generate_signed_prekey_at`](Self::generate_signed_prekey_at).
    pub fn generate_signed_prekey(
        &mut self,
        device: &DeviceKeys,
        id: u32,
        rng: &mut impl CryptoRng,
    ) -> Result<wire::SignedPrekey, PrekeyError> {
        self.generate_signed_prekey_at(device, id, 0, rng)
    }

    /// [`generate_signed_prekey`](Self::generate_signed_prekey) made at `now`.
    pub fn generate_signed_prekey_at(
        &mut self,
        device: &DeviceKeys,
        id: u32,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<wire::SignedPrekey, PrekeyError> {
        if self.signed.contains_key(&id) {
            return Err(PrekeyError::DuplicateId);
        }
        let secret = StaticSecret::random_from_rng(rng);
        let public_key = PublicKey::from(&secret).to_bytes();
        let mut msg = Vec::with_capacity(4 + KEY_LEN);
        msg.extend_from_slice(&id.to_be_bytes());
        msg.extend_from_slice(&public_key);
        let signature = sign_labelled(device.signing_key(), LABEL_SIGNED_PREKEY, &msg);
        self.signed.insert(
            id,
            SignedEntry {
                secret,
                life: Lifetime::new(now),
                seen: BTreeSet::new(),
            },
        );
        Ok(wire::SignedPrekey {
            id,
            public_key: public_key.to_vec(),
            signature: signature.to_vec(),
        })
    }

    /// Generates a signed ML-KEM-768 prekey (one-time, or the last-resort key kept until
    /// replaced); the signature is over `"handover/1 kem-prekey" || u32be(id) || public_key`.
    /// Its age is unknown; engines use [`generate_kem_prekey_at`](Self::generate_kem_prekey_at).
    pub fn generate_kem_prekey(
        &mut self,
        device: &DeviceKeys,
        id: u32,
        last_resort: bool,
        rng: &mut impl CryptoRng,
    ) -> Result<wire::SignedKemPrekey, PrekeyError> {
        self.generate_kem_prekey_at(device, id, last_resort, 0, rng)
    }

    /// [`generate_kem_prekey`](Self::generate_kem_prekey) made at `now`.
    pub fn generate_kem_prekey_at(
        &mut self,
        device: &DeviceKeys,
        id: u32,
        last_resort: bool,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<wire::SignedKemPrekey, PrekeyError> {
        if self.kem.contains_key(&id) {
            return Err(PrekeyError::DuplicateId);
        }
        let mut seed = Zeroizing::new([0u8; 64]);
        rng.fill_bytes(&mut seed[..]);
        let prekey = KemPrekey::from_seed(*seed, last_resort, Lifetime::new(now));
        let public_key = prekey.public_key();
        debug_assert_eq!(public_key.len(), ML_KEM_768_PUBLIC_KEY_LEN);
        let mut msg = Vec::with_capacity(4 + public_key.len());
        msg.extend_from_slice(&id.to_be_bytes());
        msg.extend_from_slice(&public_key);
        let signature = sign_labelled(device.signing_key(), LABEL_KEM_PREKEY, &msg);
        self.kem.insert(id, prekey);
        Ok(wire::SignedKemPrekey {
            id,
            public_key,
            signature: signature.to_vec(),
        })
    }

    /// Generates a one-time X25519 prekey.
    pub fn generate_one_time_prekey(
        &mut self,
        id: u32,
        rng: &mut impl CryptoRng,
    ) -> Result<wire::OneTimePrekey, PrekeyError> {
        if self.one_time.contains_key(&id) {
            return Err(PrekeyError::DuplicateId);
        }
        let secret = StaticSecret::random_from_rng(rng);
        let public_key = PublicKey::from(&secret).to_bytes().to_vec();
        self.one_time.insert(id, secret);
        Ok(wire::OneTimePrekey { id, public_key })
    }

    /// Deletes a signed prekey and its seen base keys at once (the secret zeroizes on drop).
    pub fn remove_signed_prekey(&mut self, id: u32) {
        self.signed.remove(&id);
    }

    /// Whether the current signed prekey or last-resort ML-KEM prekey is
    /// [`PREKEY_ROTATION_SECS`] old at `now` (or of unknown age), or either is missing.
    pub fn rotation_due(&self, now: u64) -> bool {
        let current_signed: Vec<_> = self
            .signed
            .values()
            .filter(|e| e.life.is_current())
            .collect();
        let current_kem: Vec<_> = self
            .kem
            .values()
            .filter(|k| k.last_resort && k.life.is_current())
            .collect();
        current_signed.is_empty()
            || current_kem.is_empty()
            || current_signed.iter().any(|e| e.life.rotation_due(now))
            || current_kem.iter().any(|k| k.life.rotation_due(now))
    }

    /// Marks the current signed prekey and last-resort ML-KEM prekey retired at `now`: they
    /// still answer initial messages sealed before (until
    /// [`delete_expired`](Self::delete_expired) removes them) but are no longer published.
    pub fn retire_current(&mut self, now: u64) {
        for e in self.signed.values_mut() {
            if e.life.is_current() {
                e.life.retired_at = Some(now);
            }
        }
        for k in self.kem.values_mut() {
            if k.last_resort && k.life.is_current() {
                k.life.retired_at = Some(now);
            }
        }
    }

    /// Deletes (and zeroizes) every retired prekey whose [`RETIRED_PREKEY_LIFETIME_SECS`] have
    /// passed at `now`, with its seen base keys. Returns how many were deleted.
    pub fn delete_expired(&mut self, now: u64) -> usize {
        let before = self.signed.len() + self.kem.len();
        self.signed.retain(|_, e| !e.life.expired(now));
        self.kem.retain(|_, k| !k.life.expired(now));
        before - self.signed.len() - self.kem.len()
    }

    /// Ids of the retired signed and ML-KEM prekeys still kept (for tests and diagnostics).
    pub fn retired_ids(&self) -> Vec<u32> {
        let signed = self
            .signed
            .iter()
            .filter(|(_, e)| !e.life.is_current())
            .map(|(id, _)| *id);
        let kem = self
            .kem
            .iter()
            .filter(|(_, k)| !k.life.is_current())
            .map(|(id, _)| *id);
        signed.chain(kem).collect()
    }

    /// Number of one-time X25519 prekeys left.
    pub fn one_time_count(&self) -> usize {
        self.one_time.len()
    }

    pub(crate) fn signed_prekey(&self, id: u32) -> Option<&StaticSecret> {
        self.signed.get(&id).map(|e| &e.secret)
    }

    pub(crate) fn one_time_prekey(&self, id: u32) -> Option<&StaticSecret> {
        self.one_time.get(&id)
    }

    pub(crate) fn kem_decapsulate(&self, id: u32, ct: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
        self.kem.get(&id)?.decapsulate(ct)
    }

    /// Whether an initial message with base key `ephemeral` on signed prekey `signed_id` must
    /// be refused: the key was already used with that prekey, or the prekey has remembered
    /// [`MAX_SEEN_BASE_KEYS_PER_PREKEY`] keys (it never forgets one while it lives), or the
    /// prekey is unknown.
    pub(crate) fn base_key_refused(&self, signed_id: u32, ephemeral: &[u8; 32]) -> bool {
        self.signed.get(&signed_id).is_none_or(|e| {
            e.seen.contains(ephemeral) || e.seen.len() >= MAX_SEEN_BASE_KEYS_PER_PREKEY
        })
    }

    /// Called after an initial message was accepted: deletes the one-time prekeys it used
    /// (PQXDH §3.4 "Bob deletes any one-time prekey private key that was used") and remembers
    /// its ephemeral key.
    pub(crate) fn consume(&mut self, msg: &wire::PrekeyMessage, ephemeral: [u8; 32]) {
        if let Some(id) = msg.one_time_prekey_id {
            self.one_time.remove(&id);
        }
        if self
            .kem
            .get(&msg.kem_prekey_id)
            .is_some_and(|k| !k.last_resort)
        {
            self.kem.remove(&msg.kem_prekey_id);
        }
        if let Some(e) = self.signed.get_mut(&msg.signed_prekey_id) {
            e.seen.insert(ephemeral);
        }
    }

    /// Serialises all secrets for the encrypted local store (private, versioned layout).
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new(PREKEY_STORE_FORMAT);
        let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        w.u32(len(self.signed.len()));
        for (id, e) in &self.signed {
            w.u32(*id);
            w.bytes(e.secret.as_bytes());
            e.life.write(&mut w);
            w.u32(len(e.seen.len()));
            for k in &e.seen {
                w.bytes(k);
            }
        }
        w.u32(len(self.kem.len()));
        for (id, k) in &self.kem {
            w.u32(*id);
            w.u8(u8::from(k.last_resort));
            w.bytes(&k.seed[..]);
            k.life.write(&mut w);
        }
        w.u32(len(self.one_time.len()));
        for (id, s) in &self.one_time {
            w.u32(*id);
            w.bytes(s.as_bytes());
        }
        Zeroizing::new(w.finish())
    }

    /// Restores a store written by [`to_secret_bytes`](Self::to_secret_bytes) (this version or
    /// version 1, whose keys get an unknown age and whose seen base keys go to its signed
    /// prekeys).
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, PrekeyError> {
        let e = PrekeyError::MalformedState;
        let mut r = Reader::new(bytes);
        let v1 = match r.u8() {
            Some(PREKEY_STORE_FORMAT) => false,
            Some(PREKEY_STORE_FORMAT_V1) => true,
            _ => return Err(e),
        };
        let mut store = Self::new();
        for _ in 0..r.u32().ok_or(e.clone())? {
            let id = r.u32().ok_or(e.clone())?;
            let s = Zeroizing::new(r.array::<32>().ok_or(e.clone())?);
            let mut entry = SignedEntry {
                secret: StaticSecret::from(*s),
                life: Lifetime::default(),
                seen: BTreeSet::new(),
            };
            if !v1 {
                entry.life = Lifetime::read(&mut r).ok_or(e.clone())?;
                let n = r.u32().ok_or(e.clone())? as usize;
                if n > MAX_SEEN_BASE_KEYS_PER_PREKEY {
                    return Err(e);
                }
                for _ in 0..n {
                    entry.seen.insert(r.array().ok_or(e.clone())?);
                }
            }
            store.signed.insert(id, entry);
        }
        for _ in 0..r.u32().ok_or(e.clone())? {
            let id = r.u32().ok_or(e.clone())?;
            let last_resort = match r.u8().ok_or(e.clone())? {
                0 => false,
                1 => true,
                _ => return Err(e),
            };
            let seed = Zeroizing::new(r.array::<64>().ok_or(e.clone())?);
            let life = if v1 {
                Lifetime::default()
            } else {
                Lifetime::read(&mut r).ok_or(e.clone())?
            };
            store
                .kem
                .insert(id, KemPrekey::from_seed(*seed, last_resort, life));
        }
        for _ in 0..r.u32().ok_or(e.clone())? {
            let id = r.u32().ok_or(e.clone())?;
            let s = Zeroizing::new(r.array::<32>().ok_or(e.clone())?);
            store.one_time.insert(id, StaticSecret::from(*s));
        }
        if v1 {
            let seen = r.u32().ok_or(e.clone())? as usize;
            if seen > V1_MAX_SEEN {
                return Err(e);
            }
            for _ in 0..seen {
                let k: [u8; 32] = r.array().ok_or(e.clone())?;
                for entry in store.signed.values_mut() {
                    entry.seen.insert(k);
                }
            }
        }
        if !r.is_empty() {
            return Err(e);
        }
        Ok(store)
    }
}

/// What an initiator fetched from the relay to start a session with a device.
#[derive(Clone, Debug, PartialEq)]
pub struct PrekeyBundle {
    /// The device's certificate.
    pub certificate: wire::SignedDeviceCertificate,
    /// Its current signed X25519 prekey.
    pub signed_prekey: wire::SignedPrekey,
    /// A one-time ML-KEM prekey, or the last-resort one when none was left.
    pub kem_prekey: wire::SignedKemPrekey,
    /// A one-time X25519 prekey, if one was left.
    pub one_time_prekey: Option<wire::OneTimePrekey>,
}

impl PrekeyBundle {
    /// Assembles a bundle from what the relay returns (`PrekeyBundleResult`): the published
    /// prekeys and, if present, a one-time prekey and a one-time ML-KEM prekey.
    pub fn from_parts(
        published: wire::PublishedPrekeys,
        one_time_prekey: Option<wire::OneTimePrekey>,
        one_time_kem_prekey: Option<wire::SignedKemPrekey>,
    ) -> Option<Self> {
        published.validate().ok()?;
        if let Some(otpk) = &one_time_prekey {
            otpk.validate().ok()?;
        }
        if let Some(k) = &one_time_kem_prekey {
            k.validate().ok()?;
        }
        let wire::PublishedPrekeys {
            certificate,
            signed_prekey,
            last_resort_kem_prekey,
        } = published;
        Some(Self {
            certificate: certificate?,
            signed_prekey: signed_prekey?,
            kem_prekey: one_time_kem_prekey.or(last_resort_kem_prekey)?,
            one_time_prekey,
        })
    }
}
