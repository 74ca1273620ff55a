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
//! AD = IK_A || IK_B       (each the 32-byte X25519 u-coordinate)
//! ```
//!
//! Handover's one refinement (docs/PROTOCOL.md §6): prekey signatures are Ed25519 signatures by
//! the device's certified signing key, not XEdDSA signatures by the identity key; the
//! organisation certificate binds that signing key to the identity key.
//!
//! This module holds the receiving side's prekey secrets ([`PrekeyStore`]) and the key
//! derivation; [`crate::session::Session`] runs the protocol.

use std::collections::{BTreeMap, VecDeque};
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
/// Most PrekeyMessage ephemeral keys remembered to refuse replays of an initial message.
pub const MAX_SEEN_EPHEMERAL_KEYS: usize = 4096;

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

/// A stored ML-KEM prekey: its 64-byte seed (FIPS 203 `d || z`) and decapsulation key.
#[derive(Clone)]
struct KemPrekey {
    seed: Zeroizing<[u8; 64]>,
    key: Box<Dk>,
    last_resort: bool,
}

impl KemPrekey {
    fn from_seed(seed: [u8; 64], last_resort: bool) -> Self {
        let seed = Zeroizing::new(seed);
        let key = Box::new(Dk::from_seed(Seed::from(*seed)));
        Self {
            seed,
            key,
            last_resort,
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
/// one-time prekeys, by id; plus the ephemeral keys of initial messages already accepted, so a
/// replayed initial message is refused.
#[derive(Clone, Default)]
pub struct PrekeyStore {
    signed: BTreeMap<u32, StaticSecret>,
    kem: BTreeMap<u32, KemPrekey>,
    one_time: BTreeMap<u32, StaticSecret>,
    seen: VecDeque<[u8; 32]>,
}

impl fmt::Debug for PrekeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            signed,
            kem,
            one_time,
            seen,
        } = self;
        f.debug_struct("PrekeyStore")
            .field("signed", &signed.len())
            .field("kem", &kem.len())
            .field("one_time", &one_time.len())
            .field("seen", &seen.len())
            .finish()
    }
}

/// Version byte of [`PrekeyStore::to_secret_bytes`].
const PREKEY_STORE_FORMAT: u8 = 1;

impl PrekeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Generates a signed X25519 prekey; the signature is by the device signing key over
    /// `"handover/1 signed-prekey" || u32be(id) || public_key`.
    pub fn generate_signed_prekey(
        &mut self,
        device: &DeviceKeys,
        id: u32,
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
        self.signed.insert(id, secret);
        Ok(wire::SignedPrekey {
            id,
            public_key: public_key.to_vec(),
            signature: signature.to_vec(),
        })
    }

    /// Generates a signed ML-KEM-768 prekey (one-time, or the last-resort key kept until
    /// replaced); the signature is over `"handover/1 kem-prekey" || u32be(id) || public_key`.
    pub fn generate_kem_prekey(
        &mut self,
        device: &DeviceKeys,
        id: u32,
        last_resort: bool,
        rng: &mut impl CryptoRng,
    ) -> Result<wire::SignedKemPrekey, PrekeyError> {
        if self.kem.contains_key(&id) {
            return Err(PrekeyError::DuplicateId);
        }
        let mut seed = Zeroizing::new([0u8; 64]);
        rng.fill_bytes(&mut seed[..]);
        let prekey = KemPrekey::from_seed(*seed, last_resort);
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

    /// Deletes a signed prekey (after rotation, once in-flight initial messages had time to
    /// arrive).
    pub fn remove_signed_prekey(&mut self, id: u32) {
        self.signed.remove(&id);
    }

    /// Number of one-time X25519 prekeys left.
    pub fn one_time_count(&self) -> usize {
        self.one_time.len()
    }

    pub(crate) fn signed_prekey(&self, id: u32) -> Option<&StaticSecret> {
        self.signed.get(&id)
    }

    pub(crate) fn one_time_prekey(&self, id: u32) -> Option<&StaticSecret> {
        self.one_time.get(&id)
    }

    pub(crate) fn kem_decapsulate(&self, id: u32, ct: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
        self.kem.get(&id)?.decapsulate(ct)
    }

    pub(crate) fn was_seen(&self, ephemeral: &[u8; 32]) -> bool {
        self.seen.contains(ephemeral)
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
        self.seen.push_back(ephemeral);
        while self.seen.len() > MAX_SEEN_EPHEMERAL_KEYS {
            self.seen.pop_front();
        }
    }

    /// Serialises all secrets for the encrypted local store (private, versioned layout).
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new(PREKEY_STORE_FORMAT);
        let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        w.u32(len(self.signed.len()));
        for (id, s) in &self.signed {
            w.u32(*id);
            w.bytes(s.as_bytes());
        }
        w.u32(len(self.kem.len()));
        for (id, k) in &self.kem {
            w.u32(*id);
            w.u8(u8::from(k.last_resort));
            w.bytes(&k.seed[..]);
        }
        w.u32(len(self.one_time.len()));
        for (id, s) in &self.one_time {
            w.u32(*id);
            w.bytes(s.as_bytes());
        }
        w.u32(len(self.seen.len()));
        for e in &self.seen {
            w.bytes(e);
        }
        Zeroizing::new(w.finish())
    }

    /// Restores a store written by [`to_secret_bytes`](Self::to_secret_bytes).
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, PrekeyError> {
        let e = PrekeyError::MalformedState;
        let mut r = Reader::new(bytes);
        if r.u8() != Some(PREKEY_STORE_FORMAT) {
            return Err(e);
        }
        let mut store = Self::new();
        for _ in 0..r.u32().ok_or(e.clone())? {
            let id = r.u32().ok_or(e.clone())?;
            let s = Zeroizing::new(r.array::<32>().ok_or(e.clone())?);
            store.signed.insert(id, StaticSecret::from(*s));
        }
        for _ in 0..r.u32().ok_or(e.clone())? {
            let id = r.u32().ok_or(e.clone())?;
            let last_resort = match r.u8().ok_or(e.clone())? {
                0 => false,
                1 => true,
                _ => return Err(e),
            };
            let seed = Zeroizing::new(r.array::<64>().ok_or(e.clone())?);
            store
                .kem
                .insert(id, KemPrekey::from_seed(*seed, last_resort));
        }
        for _ in 0..r.u32().ok_or(e.clone())? {
            let id = r.u32().ok_or(e.clone())?;
            let s = Zeroizing::new(r.array::<32>().ok_or(e.clone())?);
            store.one_time.insert(id, StaticSecret::from(*s));
        }
        let seen = r.u32().ok_or(e.clone())? as usize;
        if seen > MAX_SEEN_EPHEMERAL_KEYS {
            return Err(e);
        }
        for _ in 0..seen {
            store.seen.push_back(r.array().ok_or(e.clone())?);
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
