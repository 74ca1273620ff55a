//! The client's encrypted local store.
//!
//! The engine programs against [`KvStore`]: namespaced records ([`Namespace`]), get / put /
//! delete, ordered prefix scans, atomic [`WriteBatch`]es and an explicit durable
//! [`KvStore::flush`]. Two implementations share one test suite:
//!
//! - [`SledStore`], on disk: every record name is replaced by an HMAC-SHA256 id and every
//!   record is encrypted with XChaCha20-Poly1305 under keys derived (HKDF-SHA256) from a random
//!   master key. The master key is wrapped in a small header file under a key-encryption key
//!   derived from a passphrase (Argon2id) or a platform-keystore key, so changing the passphrase
//!   rewrites only the header. A duress passphrase and a panic wipe protect against someone who
//!   takes the phone.
//! - [`InMemoryStore`], for tests and benches.
//!
//! docs/STORAGE.md is the specification: file layout, constructions, parameters, durability,
//! and what an adversary holding a disk image learns.
//!
//! ```no_run
//! use handover_core::store::{Credential, KdfParams, KvStore, Namespace, Passphrase, SledStore, WriteBatch};
//! # fn demo<R: rand_core::CryptoRng>(rng: R) -> Result<(), handover_core::store::StoreError> {
//! let dir = std::path::Path::new("/data/app/store");
//! let pass = Credential::from(Passphrase::from("a long passphrase"));
//! let mut store = SledStore::create(dir, &pass, KdfParams::default(), rng)?;
//! let mut batch = WriteBatch::new();
//! batch
//!     .put(Namespace::Messages, b"conv-1/0000000000000001", b"hello")
//!     .put(Namespace::Sessions, b"conv-1", b"ratchet state")
//!     .delete(Namespace::Outbox, b"conv-1/0000000000000001");
//! store.apply_batch(batch)?; // all three or none
//! store.flush()?;            // durable
//! # Ok(()) }
//! ```

mod error;
mod files;
mod header;
mod inmem;
mod keys;
mod record;
mod sled_store;
mod traits;

pub use error::StoreError;
pub use inmem::InMemoryStore;
pub use keys::{Credential, KdfParams, KeystoreKey, Passphrase};
pub use sled_store::{SledStore, panic_wipe};
pub use traits::{Entry, KvStore, MAX_KEY_LEN, MAX_VALUE_LEN, Namespace, Value, WriteBatch};
