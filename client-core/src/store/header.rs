//! The header file: Argon2id parameters, salt and a fixed number of key slots.
//!
//! ```text
//! offset  len  field
//!      0    8  magic "HOVSTORE"
//!      8    2  format version (u16 BE) = 1
//!     10    2  reserved, zero
//!     12    4  Argon2id m_cost in KiB (u32 BE)
//!     16    4  Argon2id t_cost (u32 BE)
//!     20    4  Argon2id p_cost (u32 BE)
//!     24   32  salt (random)
//!     56  4×72 slots: nonce (24) ‖ XChaCha20-Poly1305(slot KEK, master key (32), AD) (48)
//!    344       end (the file is exactly this long)
//! ```
//!
//! Slot `i` is wrapped under `KEK_i = HKDF-SHA256(root, info = "handover/store/v1/slot-kek" ‖
//! kind ‖ i)` where `root` comes from the credential (see `keys.rs`) and `kind` is 1 for a
//! passphrase, 2 for a keystore key; its associated data is the 56-byte prefix ‖ `i`, which binds
//! the parameters and salt. Unused slots are 72 random bytes, indistinguishable from used ones.
//! Slot roles are fixed by position: 0 primary credential, 1 secondary credential, 2 duress
//! passphrase, 3 spare (always random in format version 1).

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::XNonce;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::StoreError;
use super::keys::{KEY_LEN, KdfParams, SecretKey};

const MAGIC: &[u8; 8] = b"HOVSTORE";
const VERSION: u16 = 1;
const SALT_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes of one key slot.
const SLOT_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;
/// Number of key slots.
pub(crate) const SLOT_COUNT: usize = 4;
/// Bytes before the slots (authenticated as associated data by every slot).
const PREFIX_LEN: usize = 8 + 2 + 2 + 4 + 4 + 4 + SALT_LEN;
/// Exact length of the header file.
pub(crate) const HEADER_LEN: usize = PREFIX_LEN + SLOT_COUNT * SLOT_LEN;

/// Slot of the credential given at creation.
pub(crate) const SLOT_PRIMARY: usize = 0;
/// Slot of an optional second credential (for example the keystore key next to a passphrase).
pub(crate) const SLOT_SECONDARY: usize = 1;
/// Slot of the duress passphrase.
pub(crate) const SLOT_DURESS: usize = 2;

const INFO_SLOT_KEK: &[u8] = b"handover/store/v1/slot-kek";

/// A parsed header. Holds only public data (wrapped keys are ciphertext).
#[derive(Clone)]
pub(crate) struct Header {
    params: KdfParams,
    salt: [u8; SALT_LEN],
    slots: [[u8; SLOT_LEN]; SLOT_COUNT],
}

impl core::fmt::Debug for Header {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let Header { params, .. } = self;
        f.debug_struct("Header")
            .field("params", params)
            .finish_non_exhaustive()
    }
}

fn slot_kek(root: &SecretKey, kind: u8, index: usize) -> Result<XChaCha20Poly1305, StoreError> {
    let index = u8::try_from(index).map_err(|_| StoreError::KeyDerivation)?;
    let kek = root.expand(&[INFO_SLOT_KEK, &[kind], &[index]])?;
    XChaCha20Poly1305::new_from_slice(kek.as_bytes()).map_err(|_| StoreError::KeyDerivation)
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, StoreError> {
    let b: [u8; 4] = bytes
        .get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .ok_or(StoreError::CorruptHeader)?;
    Ok(u32::from_be_bytes(b))
}

impl Header {
    /// A header with a fresh salt and every slot random.
    pub(crate) fn new_random<R: CryptoRng + ?Sized>(params: KdfParams, rng: &mut R) -> Self {
        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        let mut slots = [[0u8; SLOT_LEN]; SLOT_COUNT];
        for slot in &mut slots {
            rng.fill_bytes(slot);
        }
        Header {
            params,
            salt,
            slots,
        }
    }

    pub(crate) fn params(&self) -> &KdfParams {
        &self.params
    }

    pub(crate) fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// Whether `other` has the same parameters and salt (so the same root key applies).
    pub(crate) fn same_kdf_input(&self, other: &Header) -> bool {
        self.params == other.params && self.salt == other.salt
    }

    fn prefix(&self) -> [u8; PREFIX_LEN] {
        let mut p = [0u8; PREFIX_LEN];
        p[..8].copy_from_slice(MAGIC);
        p[8..10].copy_from_slice(&VERSION.to_be_bytes());
        p[12..16].copy_from_slice(&self.params.m_cost_kib().to_be_bytes());
        p[16..20].copy_from_slice(&self.params.t_cost().to_be_bytes());
        p[20..24].copy_from_slice(&self.params.p_cost().to_be_bytes());
        p[24..].copy_from_slice(&self.salt);
        p
    }

    fn slot_ad(&self, index: usize) -> Result<Vec<u8>, StoreError> {
        let mut ad = self.prefix().to_vec();
        ad.push(u8::try_from(index).map_err(|_| StoreError::KeyDerivation)?);
        Ok(ad)
    }

    /// The exact bytes of the header file.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.extend_from_slice(&self.prefix());
        for slot in &self.slots {
            out.extend_from_slice(slot);
        }
        out
    }

    /// Parses a header file; any deviation from the format is [`StoreError::CorruptHeader`].
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() != HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(StoreError::CorruptHeader);
        }
        if bytes[8..10] != VERSION.to_be_bytes() || bytes[10..12] != [0, 0] {
            return Err(StoreError::CorruptHeader);
        }
        let params = KdfParams::new(
            read_u32(bytes, 12)?,
            read_u32(bytes, 16)?,
            read_u32(bytes, 20)?,
        )
        .map_err(|_| StoreError::CorruptHeader)?;
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&bytes[24..PREFIX_LEN]);
        let mut slots = [[0u8; SLOT_LEN]; SLOT_COUNT];
        for (i, slot) in slots.iter_mut().enumerate() {
            let at = PREFIX_LEN + i * SLOT_LEN;
            slot.copy_from_slice(&bytes[at..at + SLOT_LEN]);
        }
        Ok(Header {
            params,
            salt,
            slots,
        })
    }

    /// Wraps `key` into slot `index` under the KEK derived from `root`.
    pub(crate) fn seal_slot<R: CryptoRng + ?Sized>(
        &mut self,
        index: usize,
        root: &SecretKey,
        kind: u8,
        key: &SecretKey,
        rng: &mut R,
    ) -> Result<(), StoreError> {
        let kek = slot_kek(root, kind, index)?;
        let ad = self.slot_ad(index)?;
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut buf = Zeroizing::new(Vec::with_capacity(KEY_LEN + TAG_LEN));
        buf.extend_from_slice(key.as_bytes());
        kek.encrypt_in_place(&XNonce::from(nonce), &ad, &mut *buf)
            .map_err(|_| StoreError::KeyDerivation)?;
        let slot = self.slots.get_mut(index).ok_or(StoreError::KeyDerivation)?;
        slot[..NONCE_LEN].copy_from_slice(&nonce);
        slot[NONCE_LEN..].copy_from_slice(&buf);
        Ok(())
    }

    /// Replaces slot `index` with random bytes (the key it wrapped is gone from this header).
    pub(crate) fn randomize_slot<R: CryptoRng + ?Sized>(&mut self, index: usize, rng: &mut R) {
        if let Some(slot) = self.slots.get_mut(index) {
            rng.fill_bytes(slot);
        }
    }

    /// Tries `root` on every slot and returns every slot it opens, with the key each wraps.
    /// All slots are always tried, so the work does not depend on which slot matches.
    pub(crate) fn matching_slots(
        &self,
        root: &SecretKey,
        kind: u8,
    ) -> Result<Vec<(usize, SecretKey)>, StoreError> {
        let mut found = Vec::new();
        for (index, slot) in self.slots.iter().enumerate() {
            let kek = slot_kek(root, kind, index)?;
            let ad = self.slot_ad(index)?;
            let (nonce, ct) = slot.split_at(NONCE_LEN);
            let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| StoreError::CorruptHeader)?;
            let mut buf = Zeroizing::new(ct.to_vec());
            if kek
                .decrypt_in_place(&XNonce::from(nonce), &ad, &mut *buf)
                .is_ok()
                && buf.len() == KEY_LEN
            {
                let mut key = SecretKey::zero();
                key.as_mut().copy_from_slice(&buf);
                found.push((index, key));
            }
        }
        Ok(found)
    }

    /// The first slot `root` opens, with the key it wraps.
    pub(crate) fn unlock(
        &self,
        root: &SecretKey,
        kind: u8,
    ) -> Result<Option<(usize, SecretKey)>, StoreError> {
        Ok(self.matching_slots(root, kind)?.into_iter().next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn cheap() -> KdfParams {
        KdfParams::new(8, 1, 1).unwrap()
    }

    #[test]
    fn encode_decode_round_trip_and_fixed_length() {
        let mut rng = StdRng::seed_from_u64(7);
        let h = Header::new_random(cheap(), &mut rng);
        let bytes = h.encode();
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(HEADER_LEN, 344);
        let h2 = Header::decode(&bytes).unwrap();
        assert_eq!(h2.encode(), bytes);
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let mut rng = StdRng::seed_from_u64(8);
        let bytes = Header::new_random(cheap(), &mut rng).encode();
        for cut in 0..bytes.len() {
            assert!(Header::decode(&bytes[..cut]).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Header::decode(&long).is_err());
        for at in [0usize, 8, 9, 10, 11] {
            let mut b = bytes.clone();
            b[at] ^= 0x40;
            assert!(Header::decode(&b).is_err(), "byte {at}");
        }
        // Absurd memory cost from a crafted header.
        let mut b = bytes.clone();
        b[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Header::decode(&b), Err(StoreError::CorruptHeader)));
    }

    #[test]
    fn slot_unlocks_only_with_its_root_kind_and_params() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut h = Header::new_random(cheap(), &mut rng);
        let root = SecretKey::generate(&mut rng);
        let other = SecretKey::generate(&mut rng);
        let master = SecretKey::generate(&mut rng);
        h.seal_slot(SLOT_DURESS, &root, 1, &master, &mut rng)
            .unwrap();
        let (i, k) = h.unlock(&root, 1).unwrap().unwrap();
        assert_eq!(i, SLOT_DURESS);
        assert_eq!(k.as_bytes(), master.as_bytes());
        assert!(h.unlock(&root, 2).unwrap().is_none());
        assert!(h.unlock(&other, 1).unwrap().is_none());
        // Changing the recorded parameters invalidates every slot.
        let mut bytes = h.encode();
        bytes[15] ^= 1; // m_cost 8 KiB -> 9 KiB
        let h2 = Header::decode(&bytes).unwrap();
        assert!(h2.unlock(&root, 1).unwrap().is_none());
        // Moving a slot to another position invalidates it.
        let mut bytes = h.encode();
        let (a, b) = (PREFIX_LEN + SLOT_DURESS * SLOT_LEN, PREFIX_LEN);
        let moved: Vec<u8> = bytes[a..a + SLOT_LEN].to_vec();
        bytes[b..b + SLOT_LEN].copy_from_slice(&moved);
        h.randomize_slot(SLOT_DURESS, &mut rng);
        assert!(h.unlock(&root, 1).unwrap().is_none());
        let h3 = Header::decode(&bytes).unwrap();
        // Only the original (still present) copy at the duress position opens.
        assert_eq!(h3.unlock(&root, 1).unwrap().unwrap().0, SLOT_DURESS);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes never panic the header parser, and whatever parses re-encodes to the
        /// same bytes.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(h) = Header::decode(&bytes) {
                prop_assert_eq!(h.encode(), bytes);
            }
        }

        /// A valid prefix with arbitrary slots parses, and a random root opens no slot.
        #[test]
        fn random_slots_open_nothing(slots in proptest::collection::vec(any::<u8>(), 288), root in any::<[u8; 32]>()) {
            let mut bytes = b"HOVSTORE\x00\x01\x00\x00".to_vec();
            for v in [8u32, 1, 1] {
                bytes.extend_from_slice(&v.to_be_bytes());
            }
            bytes.extend_from_slice(&[0x11; 32]);
            bytes.extend_from_slice(&slots);
            let h = Header::decode(&bytes).unwrap();
            let mut key = SecretKey::zero();
            key.as_mut().copy_from_slice(&root);
            prop_assert!(h.unlock(&key, 1).unwrap().is_none());
        }
    }
}
