//! The in-memory backend: a `BTreeMap` behind a lock. Nothing survives the process.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, RwLock};

use super::StoreError;
use super::kv::{Batch, BodyRef, Entries, KvBackend, LogOp, Recovered};

/// An in-memory [`KvBackend`] for tests and benches; [`KvBackend::sync`] does nothing. Its
/// maps are B-trees so that growing them never stalls a caller to rehash a whole table.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Envelope bodies by the `offset` of their [`BodyRef`] (segment 0); removed with their
    /// envelope.
    bodies: Mutex<Bodies>,
}

#[derive(Debug, Default)]
struct Bodies {
    next: u64,
    by_offset: BTreeMap<u64, Vec<u8>>,
    /// (recv_id, seq) → offset, to free a body when its envelope is removed.
    by_envelope: BTreeMap<([u8; 16], u64), u64>,
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

    fn apply_logged(&self, batch: Batch, ops: &[LogOp<'_>]) -> Result<Vec<BodyRef>, StoreError> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in batch {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        let mut refs = Vec::new();
        for op in ops {
            match op {
                LogOp::Enqueue {
                    recv_id,
                    seq,
                    ciphertext,
                    ..
                } => {
                    let offset = bodies.next;
                    bodies.next += 1;
                    bodies.by_offset.insert(offset, ciphertext.to_vec());
                    if let Some(old) = bodies.by_envelope.insert((*recv_id, *seq), offset) {
                        bodies.by_offset.remove(&old);
                    }
                    refs.push(BodyRef {
                        segment: 0,
                        offset,
                        len: u32::try_from(ciphertext.len()).map_err(|_| StoreError::Corrupt)?,
                    });
                }
                LogOp::Remove { recv_id, seq } => {
                    if let Some(old) = bodies.by_envelope.remove(&(*recv_id, *seq)) {
                        bodies.by_offset.remove(&old);
                    }
                }
                LogOp::DropMailbox { recv_id } => {
                    let Bodies {
                        by_offset,
                        by_envelope,
                        ..
                    } = &mut *bodies;
                    by_envelope.retain(|(r, _), offset| {
                        let keep = r != recv_id;
                        if !keep {
                            by_offset.remove(offset);
                        }
                        keep
                    });
                }
            }
        }
        Ok(refs)
    }

    fn read_body(&self, body: &BodyRef) -> Result<Option<Vec<u8>>, StoreError> {
        let bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        Ok(bodies.by_offset.get(&body.offset).cloned())
    }

    fn take_recovered(&self) -> Vec<Recovered> {
        Vec::new()
    }

    fn seq_floor(&self) -> u64 {
        1
    }

    fn sync(&self, _oldest_live: Option<u64>) -> Result<(), StoreError> {
        Ok(())
    }
}
