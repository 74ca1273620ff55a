//! The in-memory twin of the encrypted store, for tests and benches.

use core::fmt;
use std::collections::BTreeMap;

use super::StoreError;
use super::traits::{BatchOp, Entry, KvStore, Namespace, Value, WriteBatch, check_key};

/// A [`KvStore`] held in memory with exactly the semantics of [`SledStore`](super::SledStore)
/// (ordering, limits, batch atomicity), minus encryption and durability. Values are zeroized when
/// overwritten, deleted or dropped.
#[derive(Default)]
pub struct InMemoryStore {
    trees: BTreeMap<Namespace, BTreeMap<Vec<u8>, Value>>,
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        InMemoryStore::default()
    }
}

impl fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let InMemoryStore { trees } = self;
        let records: usize = trees.values().map(BTreeMap::len).sum();
        f.debug_struct("InMemoryStore")
            .field("records", &records)
            .finish_non_exhaustive()
    }
}

impl KvStore for InMemoryStore {
    fn get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Value>, StoreError> {
        check_key(key)?;
        Ok(self
            .trees
            .get(&ns)
            .and_then(|t| t.get(key))
            .map(|v| Value::new(v.to_vec())))
    }

    fn contains(&self, ns: Namespace, key: &[u8]) -> Result<bool, StoreError> {
        check_key(key)?;
        Ok(self.trees.get(&ns).is_some_and(|t| t.contains_key(key)))
    }

    fn scan_prefix(&self, ns: Namespace, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        check_key(prefix)?;
        let Some(tree) = self.trees.get(&ns) else {
            return Ok(Vec::new());
        };
        Ok(tree
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), Value::new(v.to_vec())))
            .collect())
    }

    fn keys_with_prefix(&self, ns: Namespace, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        check_key(prefix)?;
        let Some(tree) = self.trees.get(&ns) else {
            return Ok(Vec::new());
        };
        Ok(tree
            .range(prefix.to_vec()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    fn apply_batch(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        batch.validate()?;
        for op in batch.ops() {
            match op {
                BatchOp::Put { ns, key, value } => {
                    self.trees
                        .entry(*ns)
                        .or_default()
                        .insert(key.clone(), Value::new(value.to_vec()));
                }
                BatchOp::Delete { ns, key } => {
                    if let Some(tree) = self.trees.get_mut(ns) {
                        tree.remove(key);
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}
