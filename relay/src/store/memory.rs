//! The in-memory backend: a `BTreeMap` behind a lock. Nothing survives the process.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use super::StoreError;
use super::kv::{Batch, Entries, KvBackend};

/// An in-memory [`KvBackend`] for tests and benches; [`KvBackend::sync`] does nothing.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }
}

impl KvBackend for MemoryBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        Ok(map.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        Ok(map
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for (k, v) in batch {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
