//! Credentials (passphrase, platform-keystore key), Argon2id parameters and the key hierarchy.
//!
//! ```text
//! passphrase ──Argon2id(salt, params)──┐
//!                                      ├─> root ──HKDF-SHA256(info: slot-kek ‖ kind ‖ index)──> slot KEK
//! keystore key ──HKDF-SHA256(salt)─────┘
//! slot KEK ──XChaCha20-Poly1305──> wraps the random 32-byte master key (one header slot)
//! master key ──HKDF-SHA256──> record-name HMAC key, name encryption key, value encryption key,
//!                             database binding tag
//! ```

use core::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::StoreError;

/// Length of every symmetric key in the store (bytes).
pub(crate) const KEY_LEN: usize = 32;

/// A user passphrase. Zeroized on drop; its `Debug` prints nothing secret.
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl Passphrase {
    /// Wraps the UTF-8 (or any) bytes of a passphrase. The caller should normalise Unicode
    /// (for example NFC) before calling, so that the same passphrase typed on two keyboards
    /// gives the same bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Passphrase(Zeroizing::new(bytes.into()))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        let Passphrase(bytes) = self;
        bytes
    }
}

impl From<&str> for Passphrase {
    fn from(s: &str) -> Self {
        Passphrase::new(s.as_bytes())
    }
}

impl From<String> for Passphrase {
    fn from(s: String) -> Self {
        Passphrase::new(s.into_bytes())
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Passphrase(_) = self;
        f.write_str("Passphrase(<redacted>)")
    }
}

/// A 32-byte key held by the platform keystore (Android Keystore, iOS Keychain) and handed to the
/// core through FFI. Zeroized on drop; its `Debug` prints nothing secret.
pub struct KeystoreKey(Zeroizing<[u8; KEY_LEN]>);

impl KeystoreKey {
    /// Wraps 32 key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        KeystoreKey(Zeroizing::new(bytes))
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        let KeystoreKey(bytes) = self;
        bytes
    }
}

impl TryFrom<&[u8]> for KeystoreKey {
    type Error = StoreError;

    fn try_from(bytes: &[u8]) -> Result<Self, StoreError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(StoreError::InvalidKeyLength);
        }
        key.copy_from_slice(bytes);
        Ok(KeystoreKey(key))
    }
}

impl fmt::Debug for KeystoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let KeystoreKey(_) = self;
        f.write_str("KeystoreKey(<redacted>)")
    }
}

/// What unlocks a store: a passphrase (stretched with Argon2id), a keystore key (used directly
/// through HKDF-SHA256), or both together.
pub enum Credential {
    /// A user passphrase.
    Passphrase(Passphrase),
    /// A 32-byte key from the platform keystore.
    Keystore(KeystoreKey),
    /// A passphrase *and* a keystore key, both required: the root is
    /// HKDF-SHA256(salt, Argon2id(passphrase) ‖ key). A disk image alone then cannot be attacked
    /// offline, and deleting the keystore key makes every copy of the header useless.
    PassphraseAndKeystore(Passphrase, KeystoreKey),
}

impl Credential {
    /// The credential kind mixed into slot KEKs, so one kind can never open another's slot.
    pub(crate) fn kind(&self) -> u8 {
        match self {
            Credential::Passphrase(_) => 1,
            Credential::Keystore(_) => 2,
            Credential::PassphraseAndKeystore(..) => 3,
        }
    }
}

impl From<Passphrase> for Credential {
    fn from(p: Passphrase) -> Self {
        Credential::Passphrase(p)
    }
}

impl From<KeystoreKey> for Credential {
    fn from(k: KeystoreKey) -> Self {
        Credential::Keystore(k)
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Passphrase(p) => f.debug_tuple("Passphrase").field(p).finish(),
            Credential::Keystore(k) => f.debug_tuple("Keystore").field(k).finish(),
            Credential::PassphraseAndKeystore(p, k) => f
                .debug_tuple("PassphraseAndKeystore")
                .field(p)
                .field(k)
                .finish(),
        }
    }
}

/// Argon2id cost parameters for passphrase stretching, recorded in the header file.
///
/// [`KdfParams::default`] is the production setting: m = 64 MiB, t = 3, p = 1 (RFC 9106 §4's
/// second recommended option, with one lane because the argon2 crate runs lanes sequentially
/// without its `parallel` feature; it exceeds the OWASP Password Storage Cheat Sheet minimum of
/// m = 19 MiB, t = 2, p = 1). Tests use [`KdfParams::new`] with tiny costs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
}

impl KdfParams {
    /// Production memory cost: 64 MiB, in KiB.
    pub const DEFAULT_M_COST_KIB: u32 = 64 * 1024;
    /// Production number of passes.
    pub const DEFAULT_T_COST: u32 = 3;
    /// Production parallelism (lanes).
    pub const DEFAULT_P_COST: u32 = 1;
    /// Largest accepted memory cost (1 GiB), so a crafted header cannot exhaust memory.
    pub const MAX_M_COST_KIB: u32 = 1024 * 1024;
    /// Largest accepted number of passes, so a crafted header cannot stall the app.
    pub const MAX_T_COST: u32 = 64;
    /// Largest accepted parallelism.
    pub const MAX_P_COST: u32 = 16;

    /// Custom costs. Fails with [`StoreError::InvalidKdfParams`] outside Argon2's minimums
    /// (m ≥ 8·p KiB, t ≥ 1, p ≥ 1) or above this type's maximums. Only lower the costs for
    /// tests: the passphrase is the only secret protecting a stolen device's data.
    pub fn new(m_cost_kib: u32, t_cost: u32, p_cost: u32) -> Result<Self, StoreError> {
        if m_cost_kib > Self::MAX_M_COST_KIB
            || t_cost > Self::MAX_T_COST
            || p_cost > Self::MAX_P_COST
        {
            return Err(StoreError::InvalidKdfParams);
        }
        Params::new(m_cost_kib, t_cost, p_cost, Some(KEY_LEN))
            .map_err(|_| StoreError::InvalidKdfParams)?;
        Ok(KdfParams {
            m_cost_kib,
            t_cost,
            p_cost,
        })
    }

    /// Memory cost in KiB.
    pub fn m_cost_kib(&self) -> u32 {
        self.m_cost_kib
    }

    /// Number of passes.
    pub fn t_cost(&self) -> u32 {
        self.t_cost
    }

    /// Parallelism (lanes).
    pub fn p_cost(&self) -> u32 {
        self.p_cost
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            m_cost_kib: Self::DEFAULT_M_COST_KIB,
            t_cost: Self::DEFAULT_T_COST,
            p_cost: Self::DEFAULT_P_COST,
        }
    }
}

impl fmt::Debug for KdfParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let KdfParams {
            m_cost_kib,
            t_cost,
            p_cost,
        } = self;
        f.debug_struct("KdfParams")
            .field("m_cost_kib", m_cost_kib)
            .field("t_cost", t_cost)
            .field("p_cost", p_cost)
            .finish()
    }
}

/// 32 secret bytes, zeroized on drop, never printed.
pub(crate) struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    pub(crate) fn zero() -> Self {
        SecretKey(Zeroizing::new([0u8; KEY_LEN]))
    }

    pub(crate) fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut k = Self::zero();
        rng.fill_bytes(k.as_mut());
        k
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        let SecretKey(bytes) = self;
        bytes
    }

    pub(crate) fn as_mut(&mut self) -> &mut [u8; KEY_LEN] {
        let SecretKey(bytes) = self;
        bytes
    }

    /// HKDF-SHA256 with this key as input keying material, no salt, and `info`.
    pub(crate) fn expand(&self, info: &[&[u8]]) -> Result<SecretKey, StoreError> {
        let mut out = SecretKey::zero();
        Hkdf::<Sha256>::new(None, self.as_bytes())
            .expand_multi_info(info, out.as_mut())
            .map_err(|_| StoreError::KeyDerivation)?;
        Ok(out)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SecretKey(_) = self;
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Info string for the keystore root (HKDF-SHA256, salt = header salt).
const INFO_KEYSTORE_ROOT: &[u8] = b"handover/store/v1/keystore-root";
/// Info string for the combined passphrase-and-keystore root.
const INFO_COMBINED_ROOT: &[u8] = b"handover/store/v1/combined-root";

fn argon2id(p: &Passphrase, params: &KdfParams, salt: &[u8]) -> Result<SecretKey, StoreError> {
    let mut out = SecretKey::zero();
    let argon_params = Params::new(
        params.m_cost_kib,
        params.t_cost,
        params.p_cost,
        Some(KEY_LEN),
    )
    .map_err(|_| StoreError::InvalidKdfParams)?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params)
        .hash_password_into(p.as_bytes(), salt, out.as_mut())
        .map_err(|_| StoreError::KeyDerivation)?;
    Ok(out)
}

fn hkdf_root(salt: &[u8], ikm: &[u8], info: &[u8]) -> Result<SecretKey, StoreError> {
    let mut root = SecretKey::zero();
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, root.as_mut())
        .map_err(|_| StoreError::KeyDerivation)?;
    Ok(root)
}

/// The per-credential root key from which the slot KEKs are expanded.
pub(crate) fn derive_root(
    credential: &Credential,
    params: &KdfParams,
    salt: &[u8],
) -> Result<SecretKey, StoreError> {
    match credential {
        Credential::Passphrase(p) => argon2id(p, params, salt),
        Credential::Keystore(k) => hkdf_root(salt, k.as_bytes(), INFO_KEYSTORE_ROOT),
        Credential::PassphraseAndKeystore(p, k) => {
            let stretched = argon2id(p, params, salt)?;
            let mut ikm = Zeroizing::new([0u8; 2 * KEY_LEN]);
            ikm[..KEY_LEN].copy_from_slice(stretched.as_bytes());
            ikm[KEY_LEN..].copy_from_slice(k.as_bytes());
            hkdf_root(salt, &ikm[..], INFO_COMBINED_ROOT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_defaults_are_the_documented_ones() {
        let p = KdfParams::default();
        assert_eq!(p.m_cost_kib(), 65536);
        assert_eq!(p.t_cost(), 3);
        assert_eq!(p.p_cost(), 1);
        assert!(KdfParams::new(65536, 3, 1).is_ok());
    }

    #[test]
    fn params_out_of_range_are_rejected() {
        assert!(KdfParams::new(4, 1, 1).is_err());
        assert!(KdfParams::new(8, 0, 1).is_err());
        assert!(KdfParams::new(8, 1, 0).is_err());
        assert!(KdfParams::new(KdfParams::MAX_M_COST_KIB + 1, 1, 1).is_err());
        assert!(KdfParams::new(8, KdfParams::MAX_T_COST + 1, 1).is_err());
    }

    #[test]
    fn debug_prints_no_secrets() {
        let p = Passphrase::from("correct horse");
        let k = KeystoreKey::from_bytes([0x41; 32]);
        let s = format!(
            "{p:?} {k:?} {:?}",
            Credential::from(Passphrase::from("xyzzy"))
        );
        assert!(!s.contains("correct"));
        assert!(!s.contains("xyzzy"));
        assert!(!s.contains("65") && !s.contains("AAAA"));
    }

    #[test]
    fn keystore_key_length_is_checked() {
        assert!(matches!(
            KeystoreKey::try_from(&[0u8; 31][..]),
            Err(StoreError::InvalidKeyLength)
        ));
        assert!(KeystoreKey::try_from(&[0u8; 32][..]).is_ok());
    }
}
