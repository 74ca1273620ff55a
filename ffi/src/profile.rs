//! The encrypted local profile: [`handover_core::store::SledStore`] behind an FFI object.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use handover_core::store::{self, KdfParams, KeystoreKey, KvStore, Namespace, Passphrase};
use rand::rngs::StdRng;
use zeroize::Zeroize;

use crate::HandoverError;
use crate::runtime::run_blocking;

type Store = store::SledStore<StdRng>;

/// What unlocks a profile.
///
/// The keystore key is 32 bytes that the app keeps in the platform keystore (Android Keystore,
/// iOS Keychain / Secure Enclave-wrapped), see docs/FFI.md "Key handling". The library zeroizes
/// its own copies; the foreign runtime's copies (Kotlin `String`/`ByteArray`, Swift `String`/
/// `Data`, Python `str`/`bytes`) are the app's to clear where the platform allows it.
#[derive(uniffi::Enum)]
pub enum Credential {
    /// A passphrase the user types.
    Passphrase {
        /// The passphrase (UTF-8).
        passphrase: String,
    },
    /// A 32-byte key from the platform keystore (no user input).
    KeystoreKey {
        /// Exactly 32 bytes.
        key: Vec<u8>,
    },
    /// Both: the passphrase and the device-bound keystore key are needed together.
    PassphraseAndKeystoreKey {
        /// The passphrase (UTF-8).
        passphrase: String,
        /// Exactly 32 bytes.
        key: Vec<u8>,
    },
}

fn keystore_key(mut key: Vec<u8>) -> Result<KeystoreKey, HandoverError> {
    let parsed = KeystoreKey::try_from(key.as_slice())
        .map_err(|_| HandoverError::invalid("a keystore key must be exactly 32 bytes"));
    key.zeroize();
    parsed
}

impl Credential {
    pub(crate) fn into_core(self) -> Result<store::Credential, HandoverError> {
        Ok(match self {
            // `Passphrase::new` takes the Vec without copying it and zeroizes it on drop.
            Credential::Passphrase { passphrase } => {
                store::Credential::Passphrase(Passphrase::new(passphrase.into_bytes()))
            }
            Credential::KeystoreKey { key } => store::Credential::Keystore(keystore_key(key)?),
            Credential::PassphraseAndKeystoreKey { passphrase, key } => {
                store::Credential::PassphraseAndKeystore(
                    Passphrase::new(passphrase.into_bytes()),
                    keystore_key(key)?,
                )
            }
        })
    }
}

/// Argon2id cost of passphrase-derived keys. Only used when a passphrase is part of the
/// credential; ignored for keystore keys.
#[derive(uniffi::Record, Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfSettings {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

/// The production Argon2id settings (docs/STORAGE.md). Use these unless a device cannot afford
/// the memory.
#[uniffi::export]
pub fn default_kdf_settings() -> KdfSettings {
    let p = KdfParams::default();
    KdfSettings {
        memory_kib: p.m_cost_kib(),
        iterations: p.t_cost(),
        parallelism: p.p_cost(),
    }
}

/// The Argon2id parameters for `kdf` (`None` = the production defaults).
pub(crate) fn kdf_params(kdf: Option<KdfSettings>) -> Result<KdfParams, HandoverError> {
    Ok(match kdf {
        None => KdfParams::default(),
        Some(k) => KdfParams::new(k.memory_kib, k.iterations, k.parallelism)?,
    })
}

fn rng() -> StdRng {
    rand::make_rng()
}

/// Panic wipe of a profile that is not open (the app is locked): destroys the keys on disk and
/// removes the profile's files. Prefer [`Profile::panic_wipe`] when the profile is open. Wiping
/// a directory without a profile succeeds.
#[uniffi::export]
pub async fn panic_wipe_profile(dir: String) -> Result<(), HandoverError> {
    run_blocking(move || Ok(store::panic_wipe(&PathBuf::from(dir))?)).await
}

/// An open, unlocked profile: the encrypted store in one directory.
///
/// Holds the store's keys in memory while it is alive. Dropping it (Kotlin `close()`/`use {}`,
/// Swift release, Python `del` or garbage collection) closes the store and zeroizes the keys;
/// [`Profile::lock`] does the same and also flushes durably. Calls on a closed or wiped profile
/// fail with [`HandoverError::ProfileLocked`]. All methods are safe to call from any thread.
#[derive(uniffi::Object)]
pub struct Profile {
    dir: String,
    store: Mutex<Option<Store>>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile").finish_non_exhaustive()
    }
}

impl Profile {
    fn new(dir: String, store: Store) -> Arc<Self> {
        Arc::new(Self {
            dir,
            store: Mutex::new(Some(store)),
        })
    }

    fn slot(&self) -> Result<MutexGuard<'_, Option<Store>>, HandoverError> {
        self.store.lock().map_err(|_| HandoverError::Internal {
            detail: "the profile lock is poisoned".into(),
        })
    }

    /// Runs `f` on the open store, on the blocking pool.
    async fn with_store<T, F>(self: Arc<Self>, f: F) -> Result<T, HandoverError>
    where
        F: FnOnce(&mut Store) -> Result<T, HandoverError> + Send + 'static,
        T: Send + 'static,
    {
        run_blocking(move || {
            let mut slot = self.slot()?;
            let store = slot.as_mut().ok_or(HandoverError::ProfileLocked)?;
            f(store)
        })
        .await
    }

    /// Takes the store out (closing the profile for every other call) and runs `f` on it.
    async fn take_store<T, F>(self: Arc<Self>, f: F) -> Result<T, HandoverError>
    where
        F: FnOnce(Store) -> Result<T, HandoverError> + Send + 'static,
        T: Send + 'static,
    {
        run_blocking(move || {
            let store = self.slot()?.take().ok_or(HandoverError::ProfileLocked)?;
            f(store)
        })
        .await
    }
}

fn setting_key(key: &str) -> Result<&[u8], HandoverError> {
    if key.is_empty() {
        return Err(HandoverError::invalid("a setting name must not be empty"));
    }
    Ok(key.as_bytes())
}

#[uniffi::export]
impl Profile {
    /// Creates a new, empty profile in `dir` (created if missing), unlocked by `credential`.
    /// `kdf` is the Argon2id cost for passphrases; `None` means [`default_kdf_settings`].
    /// Fails with `ProfileExists` if `dir` already holds one.
    #[uniffi::constructor]
    pub async fn create(
        dir: String,
        credential: Credential,
        kdf: Option<KdfSettings>,
    ) -> Result<Arc<Self>, HandoverError> {
        let credential = credential.into_core()?;
        let params = kdf_params(kdf)?;
        run_blocking(move || {
            let store = Store::create(&PathBuf::from(&dir), &credential, params, rng())?;
            Ok(Self::new(dir, store))
        })
        .await
    }

    /// Opens the profile in `dir`. A wrong credential fails with `WrongCredential` and changes
    /// nothing. The duress passphrase opens an empty profile after destroying the real one,
    /// indistinguishable from a normal open (see [`Profile::set_duress_passphrase`]).
    #[uniffi::constructor]
    pub async fn open(dir: String, credential: Credential) -> Result<Arc<Self>, HandoverError> {
        let credential = credential.into_core()?;
        run_blocking(move || {
            let store = Store::open(&PathBuf::from(&dir), &credential, rng())?;
            Ok(Self::new(dir, store))
        })
        .await
    }

    /// The directory this profile lives in.
    pub fn dir(&self) -> String {
        self.dir.clone()
    }

    /// Whether the profile is open (not closed or wiped).
    pub fn is_open(&self) -> bool {
        self.slot().map(|s| s.is_some()).unwrap_or(false)
    }

    /// Whether the profile holds no records at all (a new profile, or one opened with the duress
    /// passphrase): the app should show onboarding.
    pub async fn is_empty(self: Arc<Self>) -> Result<bool, HandoverError> {
        self.with_store(|s| {
            for ns in Namespace::ALL {
                if !s.keys_with_prefix(ns, b"")?.is_empty() {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await
    }

    /// Reads an app setting (stored encrypted in the profile), or `None` if it is not set.
    pub async fn get_setting(
        self: Arc<Self>,
        key: String,
    ) -> Result<Option<Vec<u8>>, HandoverError> {
        self.with_store(move |s| {
            Ok(s.get(Namespace::Settings, setting_key(&key)?)?
                .map(|v| v.to_vec()))
        })
        .await
    }

    /// Stores an app setting durably (encrypted, flushed before returning).
    pub async fn set_setting(
        self: Arc<Self>,
        key: String,
        mut value: Vec<u8>,
    ) -> Result<(), HandoverError> {
        self.with_store(move |s| {
            let result = s.put(Namespace::Settings, setting_key(&key)?, &value);
            value.zeroize();
            result?;
            Ok(s.flush()?)
        })
        .await
    }

    /// Deletes an app setting; returns whether it existed.
    pub async fn delete_setting(self: Arc<Self>, key: String) -> Result<bool, HandoverError> {
        self.with_store(move |s| {
            let existed = s.delete(Namespace::Settings, setting_key(&key)?)?;
            s.flush()?;
            Ok(existed)
        })
        .await
    }

    /// Replaces the credential this profile was opened with (passphrase change, new keystore
    /// key, or switching between them). Only the header is rewritten.
    pub async fn change_credential(
        self: Arc<Self>,
        new_credential: Credential,
    ) -> Result<(), HandoverError> {
        let credential = new_credential.into_core()?;
        self.with_store(move |s| Ok(s.change_credential(&credential)?))
            .await
    }

    /// Sets (or replaces) the duress credential: opening the profile with it later destroys the
    /// real profile and opens an empty one. It must have the same form as the normal credential
    /// (a `PassphraseAndKeystoreKey` app sets a `PassphraseAndKeystoreKey` duress credential
    /// with the same keystore key). Fails with `DuressMatchesCredential` if it would unlock the
    /// real profile. Nothing on disk reveals whether a duress credential is set.
    pub async fn set_duress_credential(
        self: Arc<Self>,
        duress: Credential,
    ) -> Result<(), HandoverError> {
        let credential = duress.into_core()?;
        self.with_store(move |s| Ok(s.set_duress_credential(&credential)?))
            .await
    }

    /// Shorthand for [`Profile::set_duress_credential`] with a plain passphrase.
    pub async fn set_duress_passphrase(
        self: Arc<Self>,
        passphrase: String,
    ) -> Result<(), HandoverError> {
        self.set_duress_credential(Credential::Passphrase { passphrase })
            .await
    }

    /// Removes the duress credential, if one is set.
    pub async fn clear_duress(self: Arc<Self>) -> Result<(), HandoverError> {
        self.with_store(|s| Ok(s.clear_duress_passphrase()?)).await
    }

    /// Re-encrypts everything under a fresh master key and destroys the old one (cryptographic
    /// erase of deleted data). `credential` must be the one the profile was opened with.
    pub async fn rekey(self: Arc<Self>, credential: Credential) -> Result<(), HandoverError> {
        let credential = credential.into_core()?;
        let this = Arc::clone(&self);
        run_blocking(move || {
            let mut slot = this.slot()?;
            let store = slot.take().ok_or(HandoverError::ProfileLocked)?;
            // On error the store has been consumed; the profile stays closed and the app opens
            // it again (an interrupted re-key is completed or rolled back at open).
            *slot = Some(store.rekey(&credential)?);
            Ok(())
        })
        .await
    }

    /// Locks the profile: flushes durably, closes the store and zeroizes its keys; open it
    /// again with the credential. Idempotent. (Named `lock`, not `close`, because Kotlin's
    /// `AutoCloseable.close()` already destroys the object, which also closes the store.)
    pub async fn lock(self: Arc<Self>) -> Result<(), HandoverError> {
        match self.take_store(|s| Ok(s.close()?)).await {
            Err(HandoverError::ProfileLocked) => Ok(()),
            other => other,
        }
    }

    /// Panic wipe: shreds the key header first (nothing can be decrypted after that), zeroizes
    /// the in-memory keys and removes the profile's files. The profile is closed afterwards.
    /// Works on a closed profile too (then it wipes the directory like [`panic_wipe_profile`]).
    pub async fn panic_wipe(self: Arc<Self>) -> Result<(), HandoverError> {
        run_blocking(move || {
            let store = self.slot()?.take();
            match store {
                Some(s) => Ok(s.panic_wipe()?),
                None => Ok(store::panic_wipe(&PathBuf::from(&self.dir))?),
            }
        })
        .await
    }
}
