//! The one error type of the local store.

/// Everything that can go wrong when opening, reading, writing or wiping the local store.
///
/// No variant carries user data, record names, key material or passphrases, and the messages are
/// deliberately opaque about *why* a record failed to decrypt (STYLE.md: "could not decrypt",
/// never which byte or which key).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The passphrase or keystore key did not unlock the store. Nothing was opened, created or
    /// modified. This is the only answer to a wrong credential: it does not say which slot, how
    /// close, or whether a duress passphrase is configured.
    #[error("could not unlock the store: wrong passphrase or key")]
    WrongCredential,
    /// There is no store at the given location (no header file).
    #[error("no store exists at this location")]
    NotFound,
    /// `create` was called where a store already exists.
    #[error("a store already exists at this location")]
    AlreadyExists,
    /// The header file is truncated, has the wrong magic or version, or carries key-derivation
    /// parameters outside the accepted range.
    #[error("the store header is malformed or unsupported")]
    CorruptHeader,
    /// A stored record (or the database belonging to the header) failed authentication or is
    /// malformed: the files were corrupted or tampered with, or records were swapped.
    #[error("a stored record could not be decrypted or is malformed")]
    CorruptRecord,
    /// Argon2id parameters outside the accepted range (see [`KdfParams`](super::KdfParams)).
    #[error("invalid key-derivation parameters")]
    InvalidKdfParams,
    /// Argon2id failed (for example it could not allocate its memory).
    #[error("key derivation failed")]
    KeyDerivation,
    /// A keystore key of the wrong length was supplied.
    #[error("a keystore key must be exactly 32 bytes")]
    InvalidKeyLength,
    /// A record name or value exceeds a named limit.
    #[error("{what} is longer than the limit of {limit} bytes")]
    TooLarge {
        /// What was too large ("record name" or "record value").
        what: &'static str,
        /// The limit in bytes.
        limit: usize,
    },
    /// The duress passphrase equals a passphrase that unlocks the real profile.
    #[error("the duress passphrase must differ from every passphrase that unlocks the store")]
    DuressMatchesCredential,
    /// Reading, writing, syncing or removing store files failed.
    #[error("storage I/O error")]
    Io(#[from] std::io::Error),
    /// The embedded database (sled) reported an error other than I/O.
    #[error("storage backend error")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => StoreError::Io(io),
            // sled's own checksums failed: the files were corrupted or tampered with.
            sled::Error::Corruption { .. } => StoreError::CorruptRecord,
            other => StoreError::Backend(Box::new(other)),
        }
    }
}
