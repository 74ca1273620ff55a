//! The send-id cache of [`KvStore`](super::KvStore): what a send needs of its mailbox, by send
//! id, so that the hot path of a `Send` reads nothing from the keyspace.
//!
//! Bounded, and evicting one entry at a time by CLOCK (second chance): every entry has a
//! reference bit, set when the entry is used; to make room, a hand moves through the entries in
//! key order, clearing set bits, and evicts the first entry whose bit is clear. Senders that
//! keep sending stay cached; one-off send ids go first. The hand looks at most
//! [`MAX_CLOCK_STEPS`] entries per eviction (then evicts the one under it), so an insert does
//! bounded work under the store lock.
//!
//! Hand-written rather than a crate: the cache lives under the store lock, and the common LRU
//! crates sit on a hash map, which grows by rehashing its whole table at once (the reason the
//! queue index uses B-trees, see `queue.rs`); this is a B-tree with one bit per entry.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::Id;

/// Most entries the clock hand passes over in one eviction.
const MAX_CLOCK_STEPS: usize = 64;

#[derive(Debug)]
struct Slot<V> {
    value: V,
    referenced: bool,
}

/// A bounded map from send id to `V` with CLOCK eviction.
#[derive(Debug)]
pub(super) struct SenderCache<V> {
    map: BTreeMap<Id, Slot<V>>,
    /// The entry the hand last passed; the next eviction starts after it.
    hand: Option<Id>,
    capacity: usize,
}

impl<V> SenderCache<V> {
    /// An empty cache of at most `capacity` entries (at least one).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            map: BTreeMap::new(),
            hand: None,
            capacity: capacity.max(1),
        }
    }

    /// The entry for `key`, marked as used.
    pub(super) fn get(&mut self, key: &Id) -> Option<&V> {
        let slot = self.map.get_mut(key)?;
        slot.referenced = true;
        Some(&slot.value)
    }

    /// Inserts or replaces an entry, evicting one other entry if the cache is full.
    pub(super) fn insert(&mut self, key: Id, value: V) {
        if !self.map.contains_key(&key) && self.map.len() >= self.capacity {
            self.evict_one();
        }
        self.map.insert(
            key,
            Slot {
                value,
                referenced: false,
            },
        );
    }

    /// Changes the entry for `key`, if there is one, without marking it as used.
    pub(super) fn update(&mut self, key: &Id, change: impl FnOnce(&mut V)) {
        if let Some(slot) = self.map.get_mut(key) {
            change(&mut slot.value);
        }
    }

    /// Removes an entry.
    pub(super) fn remove(&mut self, key: &Id) {
        self.map.remove(key);
    }

    /// Entries held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// The entry after `after` in key order, wrapping around.
    fn next_after(&self, after: Option<Id>) -> Option<Id> {
        let from = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        self.map
            .range((from, Bound::Unbounded))
            .next()
            .or_else(|| self.map.iter().next())
            .map(|(k, _)| *k)
    }

    fn evict_one(&mut self) {
        let mut at = self.hand;
        for step in 0..MAX_CLOCK_STEPS {
            let Some(key) = self.next_after(at) else {
                return;
            };
            at = Some(key);
            let Some(slot) = self.map.get_mut(&key) else {
                return;
            };
            if !slot.referenced || step + 1 == MAX_CLOCK_STEPS {
                self.map.remove(&key);
                self.hand = Some(key);
                return;
            }
            slot.referenced = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u16) -> Id {
        let mut id = [0u8; 16];
        id[..2].copy_from_slice(&n.to_be_bytes());
        id
    }

    #[test]
    fn a_full_cache_evicts_one_unused_entry() {
        let mut cache = SenderCache::new(4);
        for n in 0..4 {
            cache.insert(id(n), n);
        }
        // 0 and 2 are in use; 1 is the first unused one after the hand.
        assert_eq!(cache.get(&id(0)), Some(&0));
        assert_eq!(cache.get(&id(2)), Some(&2));
        cache.insert(id(9), 9);
        assert_eq!(cache.len(), 4);
        assert!(cache.get(&id(1)).is_none());
        for n in [0, 2, 3, 9] {
            assert_eq!(cache.get(&id(n)), Some(&n));
        }
        // Everything in use: the hand clears bits and still evicts exactly one.
        cache.insert(id(10), 10);
        assert_eq!(cache.len(), 4);
        // Replacing an entry evicts nothing.
        cache.insert(id(10), 11);
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.get(&id(10)), Some(&11));
        cache.update(&id(10), |v| *v = 12);
        cache.update(&id(77), |v| *v = 12);
        assert_eq!(cache.get(&id(10)), Some(&12));
        assert!(cache.get(&id(77)).is_none());
        cache.remove(&id(10));
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn an_eviction_looks_at_a_bounded_number_of_entries() {
        let n = (MAX_CLOCK_STEPS * 4) as u16;
        let mut cache = SenderCache::new(usize::from(n));
        for k in 0..n {
            cache.insert(id(k), k);
            cache.get(&id(k));
        }
        // Every entry in use: the hand stops after MAX_CLOCK_STEPS entries and evicts there.
        cache.insert(id(u16::MAX), 0);
        assert_eq!(cache.len(), usize::from(n));
        assert!(cache.get(&id(MAX_CLOCK_STEPS as u16 - 1)).is_none());
        assert!(cache.get(&id(MAX_CLOCK_STEPS as u16)).is_some());
    }
}
