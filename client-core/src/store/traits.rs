//! The storage trait the client engine programs against, its namespaces, batches and limits.

use core::fmt;

use zeroize::Zeroizing;

use super::StoreError;

/// Longest accepted record name (the engine's key within a namespace), in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Largest accepted record value, in bytes. Attachments do not live in the store (they are
/// blobs); the largest values are referral packets and serialized ratchet states.
pub const MAX_VALUE_LEN: usize = 16 * 1024 * 1024;

/// A decrypted value. Zeroized when dropped.
pub type Value = Zeroizing<Vec<u8>>;

/// One result row of a prefix scan: the record name and its value.
pub type Entry = (Vec<u8>, Value);

/// The namespaces (trees) of the client store.
///
/// A namespace is a separate key space: the same record name in two namespaces names two
/// records. On disk (sled implementation) namespaces are not visible: they are mixed into the
/// keyed hash of every record name. The numeric [`Namespace::id`] is part of the on-disk format
/// and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Namespace {
    /// This device's identity and organisation keys and certificates.
    Identity,
    /// Own prekeys (signed, one-time, ML-KEM) not yet consumed.
    Prekeys,
    /// Double Ratchet session states.
    Sessions,
    /// Contacts, verified safety numbers, organisation directory entries.
    Contacts,
    /// Decrypted messages.
    Messages,
    /// Referral packets and their lifecycle state.
    Referrals,
    /// Consent receipts.
    Consent,
    /// Hash-chained referral timelines (audit trail without content).
    Timeline,
    /// Attachment metadata and file keys (the encrypted blobs live elsewhere).
    Attachments,
    /// Outgoing messages waiting for the relay.
    Outbox,
    /// The expiry index (record names ordered by expiry time).
    Expiry,
    /// Application settings.
    Settings,
}

impl Namespace {
    /// Every namespace, in id order.
    pub const ALL: [Namespace; 12] = [
        Namespace::Identity,
        Namespace::Prekeys,
        Namespace::Sessions,
        Namespace::Contacts,
        Namespace::Messages,
        Namespace::Referrals,
        Namespace::Consent,
        Namespace::Timeline,
        Namespace::Attachments,
        Namespace::Outbox,
        Namespace::Expiry,
        Namespace::Settings,
    ];

    /// The stable one-byte id used in the on-disk format.
    pub const fn id(self) -> u8 {
        match self {
            Namespace::Identity => 1,
            Namespace::Prekeys => 2,
            Namespace::Sessions => 3,
            Namespace::Contacts => 4,
            Namespace::Messages => 5,
            Namespace::Referrals => 6,
            Namespace::Consent => 7,
            Namespace::Timeline => 8,
            Namespace::Attachments => 9,
            Namespace::Outbox => 10,
            Namespace::Expiry => 11,
            Namespace::Settings => 12,
        }
    }

    /// The namespace with this on-disk id, if any.
    pub fn from_id(id: u8) -> Option<Namespace> {
        Namespace::ALL.iter().copied().find(|ns| ns.id() == id)
    }
}

/// One operation of a [`WriteBatch`].
pub(crate) enum BatchOp {
    Put {
        ns: Namespace,
        key: Vec<u8>,
        value: Value,
    },
    Delete {
        ns: Namespace,
        key: Vec<u8>,
    },
}

/// A set of puts and deletes applied atomically by [`KvStore::apply_batch`]: after a crash or an
/// error either all of them are visible or none is. Operations apply in insertion order, so a
/// later operation on the same record wins. Values are zeroized when the batch is dropped.
#[derive(Default)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        WriteBatch::default()
    }

    /// Adds "set `ns`/`key` to `value`".
    pub fn put(&mut self, ns: Namespace, key: &[u8], value: &[u8]) -> &mut Self {
        self.ops.push(BatchOp::Put {
            ns,
            key: key.to_vec(),
            value: Zeroizing::new(value.to_vec()),
        });
        self
    }

    /// Adds "erase `ns`/`key`" (no error if it does not exist).
    pub fn delete(&mut self, ns: Namespace, key: &[u8]) -> &mut Self {
        self.ops.push(BatchOp::Delete {
            ns,
            key: key.to_vec(),
        });
        self
    }

    /// Appends every operation of `other`, in its order, after this batch's.
    pub fn append(&mut self, other: WriteBatch) -> &mut Self {
        let WriteBatch { ops } = other;
        self.ops.extend(ops);
        self
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub(crate) fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// What this batch will leave at `ns`/`key`: `Some(Some(value))` after a put,
    /// `Some(None)` after a delete (the last operation wins), `None` if it does not touch it.
    pub(crate) fn staged(&self, ns: Namespace, key: &[u8]) -> Option<Option<&[u8]>> {
        self.ops.iter().rev().find_map(|op| match op {
            BatchOp::Put {
                ns: n,
                key: k,
                value,
            } if *n == ns && k.as_slice() == key => Some(Some(value.as_slice())),
            BatchOp::Delete { ns: n, key: k } if *n == ns && k.as_slice() == key => Some(None),
            _ => None,
        })
    }

    /// The names of the records in `ns` this batch puts or deletes, in operation order.
    pub(crate) fn touched(&self, ns: Namespace) -> impl Iterator<Item = &[u8]> {
        self.ops.iter().filter_map(move |op| match op {
            BatchOp::Put { ns: n, key, .. } | BatchOp::Delete { ns: n, key } if *n == ns => {
                Some(key.as_slice())
            }
            _ => None,
        })
    }

    /// Checks every operation against the named limits, so an invalid batch is rejected before
    /// anything is written.
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        for op in &self.ops {
            match op {
                BatchOp::Put { key, value, .. } => {
                    check_key(key)?;
                    check_value(value)?;
                }
                BatchOp::Delete { key, .. } => check_key(key)?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let WriteBatch { ops } = self;
        f.debug_struct("WriteBatch")
            .field("ops", &ops.len())
            .finish_non_exhaustive()
    }
}

pub(crate) fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::TooLarge {
            what: "record name",
            limit: MAX_KEY_LEN,
        });
    }
    Ok(())
}

pub(crate) fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(StoreError::TooLarge {
            what: "record value",
            limit: MAX_VALUE_LEN,
        });
    }
    Ok(())
}

/// The client's local key–value store.
///
/// Implemented by [`SledStore`](super::SledStore) (encrypted, on disk) and
/// [`InMemoryStore`](super::InMemoryStore) (tests, benches); both have the same semantics and run
/// the same test suite. Record names within a namespace are ordered bytewise, so big-endian
/// integers in names give chronological scans.
///
/// Writes are visible to later reads at once; they are durable only after [`KvStore::flush`]
/// returns (see docs/STORAGE.md for what that means on each platform).
pub trait KvStore {
    /// The value of `ns`/`key`, or `None` if there is no such record.
    fn get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Value>, StoreError>;

    /// Whether `ns`/`key` exists (no decryption needed).
    fn contains(&self, ns: Namespace, key: &[u8]) -> Result<bool, StoreError>;

    /// Every record of `ns` whose name starts with `prefix`, in ascending name order.
    fn scan_prefix(&self, ns: Namespace, prefix: &[u8]) -> Result<Vec<Entry>, StoreError>;

    /// The names of every record of `ns` starting with `prefix`, in ascending order, without
    /// reading the values.
    fn keys_with_prefix(&self, ns: Namespace, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError>;

    /// Applies every operation of `batch` atomically. An invalid operation (over a limit)
    /// rejects the whole batch and nothing is written.
    fn apply_batch(&mut self, batch: WriteBatch) -> Result<(), StoreError>;

    /// Makes every write so far durable (it survives a crash and, where the platform allows,
    /// power loss).
    fn flush(&mut self) -> Result<(), StoreError>;

    /// Sets `ns`/`key` to `value`.
    fn put(&mut self, ns: Namespace, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        batch.put(ns, key, value);
        self.apply_batch(batch)
    }

    /// Erases `ns`/`key` and reports whether it existed. After this the record is gone from
    /// every read; see docs/STORAGE.md for what remains on disk until the next re-key or wipe.
    fn delete(&mut self, ns: Namespace, key: &[u8]) -> Result<bool, StoreError> {
        check_key(key)?;
        let existed = self.contains(ns, key)?;
        let mut batch = WriteBatch::new();
        batch.delete(ns, key);
        self.apply_batch(batch)?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_ids_are_unique_and_round_trip() {
        for (i, ns) in Namespace::ALL.iter().enumerate() {
            assert_eq!(Namespace::from_id(ns.id()), Some(*ns));
            assert_eq!(usize::from(ns.id()), i + 1);
        }
        assert_eq!(Namespace::from_id(0), None);
        assert_eq!(Namespace::from_id(200), None);
    }
}
