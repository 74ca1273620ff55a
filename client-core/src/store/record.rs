//! Per-record encryption: keyed-hash record ids, encrypted record names and values.
//!
//! On disk a record is `(id, sealed)`:
//!
//! ```text
//! id     = HMAC-SHA256(k_id, ns_id ‖ name)                                   32 bytes
//! sealed = version (1) ‖ nonce (24) ‖ len(name_ct) (u32 BE) ‖ name_ct ‖ value_ct
//! name_ct  = XChaCha20-Poly1305(k_name,  nonce, pad(ns_id ‖ name),  AD = "handover/store/v1/name"  ‖ version ‖ id)
//! value_ct = XChaCha20-Poly1305(k_value, nonce, pad(value),         AD = "handover/store/v1/value" ‖ version ‖ ns_id ‖ id)
//! pad(x)   = x ‖ 0x80 ‖ 0x00* up to a multiple of PAD_BLOCK (ISO/IEC 7816-4 padding)
//! ```
//!
//! The two ciphertexts share a random 192-bit nonce under two independent keys. The id in the
//! associated data binds each ciphertext to its namespace and name, so a value moved to another
//! record fails authentication.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::StoreError;
use super::keys::SecretKey;
use super::traits::{Namespace, Value};

/// Length of an on-disk record id.
pub(crate) const ID_LEN: usize = 32;
/// Record format version.
const RECORD_VERSION: u8 = 1;
/// XChaCha20-Poly1305 nonce length.
const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
const TAG_LEN: usize = 16;
/// Plaintexts are padded to a multiple of this many bytes.
const PAD_BLOCK: usize = 64;
/// Fixed-size prefix of a sealed record.
const SEALED_PREFIX: usize = 1 + NONCE_LEN + 4;

const INFO_ID: &[u8] = b"handover/store/v1/record-id";
const INFO_NAME: &[u8] = b"handover/store/v1/name-key";
const INFO_VALUE: &[u8] = b"handover/store/v1/value-key";
const INFO_BINDING: &[u8] = b"handover/store/v1/db-binding";
const AD_NAME: &[u8] = b"handover/store/v1/name";
const AD_VALUE: &[u8] = b"handover/store/v1/value";

/// The record keys derived from one master key. Zeroized on drop (the AEAD instances zeroize
/// their expanded keys themselves).
pub(crate) struct RecordCipher {
    id_key: SecretKey,
    name: XChaCha20Poly1305,
    value: XChaCha20Poly1305,
    binding: SecretKey,
}

impl core::fmt::Debug for RecordCipher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let RecordCipher { .. } = self;
        f.write_str("RecordCipher(<redacted>)")
    }
}

fn aead(key: &SecretKey) -> Result<XChaCha20Poly1305, StoreError> {
    XChaCha20Poly1305::new_from_slice(key.as_bytes()).map_err(|_| StoreError::KeyDerivation)
}

fn pad(data: &[u8], extra_front: Option<u8>) -> Zeroizing<Vec<u8>> {
    let len = data.len() + usize::from(extra_front.is_some()) + 1;
    let padded = len.div_ceil(PAD_BLOCK) * PAD_BLOCK;
    let mut out = Zeroizing::new(Vec::with_capacity(padded + TAG_LEN));
    if let Some(b) = extra_front {
        out.push(b);
    }
    out.extend_from_slice(data);
    out.push(0x80);
    out.resize(padded, 0);
    out
}

fn unpad(buf: &mut Zeroizing<Vec<u8>>) -> Result<(), StoreError> {
    while let Some(&last) = buf.last() {
        buf.pop();
        match last {
            0x00 => continue,
            0x80 => return Ok(()),
            _ => break,
        }
    }
    Err(StoreError::CorruptRecord)
}

impl RecordCipher {
    pub(crate) fn new(master: &SecretKey) -> Result<Self, StoreError> {
        Ok(RecordCipher {
            id_key: master.expand(&[INFO_ID])?,
            name: aead(&master.expand(&[INFO_NAME])?)?,
            value: aead(&master.expand(&[INFO_VALUE])?)?,
            binding: master.expand(&[INFO_BINDING])?,
        })
    }

    /// The tag stored in a database to bind it to this master key.
    pub(crate) fn binding_tag(&self) -> &[u8; 32] {
        self.binding.as_bytes()
    }

    /// Whether `tag` is this master key's binding tag (constant time).
    pub(crate) fn binding_matches(&self, tag: &[u8]) -> bool {
        bool::from(self.binding.as_bytes().as_slice().ct_eq(tag))
    }

    /// The on-disk id of `ns`/`name`.
    pub(crate) fn record_id(&self, ns: Namespace, name: &[u8]) -> Result<[u8; ID_LEN], StoreError> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.id_key.as_bytes())
            .map_err(|_| StoreError::KeyDerivation)?;
        mac.update(&[ns.id()]);
        mac.update(name);
        Ok(mac.finalize().into_bytes().into())
    }

    /// Encrypts a record for storage under `id`.
    pub(crate) fn seal<R: CryptoRng + ?Sized>(
        &self,
        ns: Namespace,
        name: &[u8],
        id: &[u8; ID_LEN],
        value: &[u8],
        rng: &mut R,
    ) -> Result<Vec<u8>, StoreError> {
        let mut nonce_bytes = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce_bytes);
        let nonce = XNonce::from(nonce_bytes);

        let mut name_buf = pad(name, Some(ns.id()));
        self.name
            .encrypt_in_place(&nonce, &ad_name(id), &mut *name_buf)
            .map_err(|_| StoreError::CorruptRecord)?;
        let mut value_buf = pad(value, None);
        self.value
            .encrypt_in_place(&nonce, &ad_value(ns, id), &mut *value_buf)
            .map_err(|_| StoreError::CorruptRecord)?;

        let name_len = u32::try_from(name_buf.len()).map_err(|_| StoreError::TooLarge {
            what: "record name",
            limit: super::MAX_KEY_LEN,
        })?;
        let mut out = Vec::with_capacity(SEALED_PREFIX + name_buf.len() + value_buf.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&name_len.to_be_bytes());
        out.extend_from_slice(&name_buf);
        out.extend_from_slice(&value_buf);
        Ok(out)
    }

    /// Decrypts the name part of a stored record and checks that `id` really is its id.
    pub(crate) fn open_name(
        &self,
        id: &[u8],
        sealed: &[u8],
    ) -> Result<(Namespace, Zeroizing<Vec<u8>>), StoreError> {
        let id: &[u8; ID_LEN] = id.try_into().map_err(|_| StoreError::CorruptRecord)?;
        let (nonce, name_ct, _) = split(sealed)?;
        let mut buf = Zeroizing::new(name_ct.to_vec());
        self.name
            .decrypt_in_place(&nonce, &ad_name(id), &mut *buf)
            .map_err(|_| StoreError::CorruptRecord)?;
        unpad(&mut buf)?;
        let (&ns_id, name) = buf.split_first().ok_or(StoreError::CorruptRecord)?;
        let ns = Namespace::from_id(ns_id).ok_or(StoreError::CorruptRecord)?;
        let expected = self.record_id(ns, name)?;
        if !bool::from(expected.ct_eq(id)) {
            return Err(StoreError::CorruptRecord);
        }
        Ok((ns, Zeroizing::new(name.to_vec())))
    }

    /// Decrypts the value part of the record stored under `id` for `ns`.
    pub(crate) fn open_value(
        &self,
        ns: Namespace,
        id: &[u8; ID_LEN],
        sealed: &[u8],
    ) -> Result<Value, StoreError> {
        let (nonce, _, value_ct) = split(sealed)?;
        let mut buf = Zeroizing::new(value_ct.to_vec());
        self.value
            .decrypt_in_place(&nonce, &ad_value(ns, id), &mut *buf)
            .map_err(|_| StoreError::CorruptRecord)?;
        unpad(&mut buf)?;
        Ok(buf)
    }
}

fn ad_name(id: &[u8; ID_LEN]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_NAME.len() + 1 + ID_LEN);
    ad.extend_from_slice(AD_NAME);
    ad.push(RECORD_VERSION);
    ad.extend_from_slice(id);
    ad
}

fn ad_value(ns: Namespace, id: &[u8; ID_LEN]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_VALUE.len() + 2 + ID_LEN);
    ad.extend_from_slice(AD_VALUE);
    ad.push(RECORD_VERSION);
    ad.push(ns.id());
    ad.extend_from_slice(id);
    ad
}

/// Splits a sealed record into nonce, name ciphertext and value ciphertext.
fn split(sealed: &[u8]) -> Result<(XNonce, &[u8], &[u8]), StoreError> {
    if sealed.len() < SEALED_PREFIX || sealed[0] != RECORD_VERSION {
        return Err(StoreError::CorruptRecord);
    }
    let (head, rest) = sealed.split_at(SEALED_PREFIX);
    let nonce_bytes: [u8; NONCE_LEN] = head[1..1 + NONCE_LEN]
        .try_into()
        .map_err(|_| StoreError::CorruptRecord)?;
    let len_bytes: [u8; 4] = head[1 + NONCE_LEN..]
        .try_into()
        .map_err(|_| StoreError::CorruptRecord)?;
    let name_len =
        usize::try_from(u32::from_be_bytes(len_bytes)).map_err(|_| StoreError::CorruptRecord)?;
    if name_len < TAG_LEN || rest.len() < name_len + TAG_LEN {
        return Err(StoreError::CorruptRecord);
    }
    let (name_ct, value_ct) = rest.split_at(name_len);
    Ok((XNonce::from(nonce_bytes), name_ct, value_ct))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn cipher(seed: u64) -> (RecordCipher, StdRng) {
        let mut rng = StdRng::seed_from_u64(seed);
        let master = SecretKey::generate(&mut rng);
        (RecordCipher::new(&master).unwrap(), rng)
    }

    #[test]
    fn round_trip_and_padding_hide_exact_lengths() {
        let (c, mut rng) = cipher(1);
        let id = c.record_id(Namespace::Messages, b"conv/1").unwrap();
        let a = c
            .seal(Namespace::Messages, b"conv/1", &id, b"hi", &mut rng)
            .unwrap();
        let b = c
            .seal(
                Namespace::Messages,
                b"conv/1",
                &id,
                b"hello there",
                &mut rng,
            )
            .unwrap();
        assert_eq!(a.len(), b.len());
        let (ns, name) = c.open_name(&id, &a).unwrap();
        assert_eq!((ns, name.as_slice()), (Namespace::Messages, &b"conv/1"[..]));
        assert_eq!(
            c.open_value(ns, &id, &b).unwrap().as_slice(),
            b"hello there"
        );
        // Every length 0..200 round-trips (padding boundary cases).
        for n in 0..200usize {
            let v = vec![0u8; n];
            let s = c.seal(Namespace::Settings, b"", &id, &v, &mut rng).unwrap();
            assert_eq!(c.open_value(Namespace::Settings, &id, &s).unwrap().len(), n);
        }
    }

    #[test]
    fn wrong_namespace_id_or_key_fails() {
        let (c, mut rng) = cipher(2);
        let id = c.record_id(Namespace::Messages, b"k").unwrap();
        let other = c.record_id(Namespace::Contacts, b"k").unwrap();
        assert_ne!(id, other);
        let s = c
            .seal(Namespace::Messages, b"k", &id, b"v", &mut rng)
            .unwrap();
        assert!(c.open_value(Namespace::Contacts, &id, &s).is_err());
        assert!(c.open_value(Namespace::Messages, &other, &s).is_err());
        assert!(c.open_name(&other, &s).is_err());
        let (c2, _) = cipher(3);
        assert!(c2.open_value(Namespace::Messages, &id, &s).is_err());
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let (c, mut rng) = cipher(4);
        let id = c.record_id(Namespace::Messages, b"k").unwrap();
        let s = c
            .seal(Namespace::Messages, b"k", &id, b"value", &mut rng)
            .unwrap();
        for cut in 0..s.len() {
            assert!(c.open_name(&id, &s[..cut]).is_err() || cut > SEALED_PREFIX);
            assert!(c.open_value(Namespace::Messages, &id, &s[..cut]).is_err());
        }
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 0x01;
            let name_ok = c.open_name(&id, &t).is_ok();
            let value_ok = c.open_value(Namespace::Messages, &id, &t).is_ok();
            assert!(!(name_ok && value_ok), "flip at {i} went unnoticed");
        }
        assert!(c.open_name(&id[..31], &s).is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    proptest! {
        /// Arbitrary stored bytes never panic the record parser and never authenticate.
        #[test]
        fn arbitrary_records_are_rejected(id in any::<[u8; 32]>(), sealed in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut rng = StdRng::seed_from_u64(5);
            let c = RecordCipher::new(&SecretKey::generate(&mut rng)).unwrap();
            prop_assert!(c.open_name(&id, &sealed).is_err());
            prop_assert!(c.open_value(Namespace::Messages, &id, &sealed).is_err());
        }

        /// Any name and value round-trip.
        #[test]
        fn round_trip(name in proptest::collection::vec(any::<u8>(), 0..80), value in proptest::collection::vec(any::<u8>(), 0..300), seed in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            let c = RecordCipher::new(&SecretKey::generate(&mut rng)).unwrap();
            let id = c.record_id(Namespace::Consent, &name).unwrap();
            let sealed = c.seal(Namespace::Consent, &name, &id, &value, &mut rng).unwrap();
            let (ns, got_name) = c.open_name(&id, &sealed).unwrap();
            prop_assert_eq!(ns, Namespace::Consent);
            prop_assert_eq!(got_name.as_slice(), name.as_slice());
            let got_value = c.open_value(ns, &id, &sealed).unwrap();
            prop_assert_eq!(got_value.as_slice(), value.as_slice());
        }
    }
}
