//! The in-memory index of queued envelopes.
//!
//! Envelope bodies live in the backend's log ([`BodyRef`]); this index holds, per mailbox, the
//! queue (sequence number → envelope id, expiry, body location), the envelope-id lookup used for
//! duplicate detection and acks, a global expiry index for the sweeper, and per-segment live
//! counts for log reclamation. It is rebuilt from the log when the store opens.
//!
//! Every map here is a B-tree, not a hash map, although lookups are by exact key: a hash map
//! grows by rehashing its whole table at once, and this index is changed under the store's
//! lock on every send. Under the load generator (quotas lifted, queues of some hundred
//! thousand envelopes) one such rehash held the lock for 28.6 ms while the other async worker
//! waited for it, and every request with them (docs/PERFORMANCE.md); a B-tree grows a node at
//! a time.

use std::collections::{BTreeMap, BTreeSet, btree_map};

use super::kv::{BodyRef, Recovered};
use super::{Id, StoreError};

/// One queued envelope, without its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) envelope_id: Id,
    pub(super) expires_at: u64,
    pub(super) body: BodyRef,
}

/// One mailbox's queue.
#[derive(Debug, Default)]
pub(super) struct Queue {
    pub(super) entries: BTreeMap<u64, Entry>,
    pub(super) by_id: BTreeMap<Id, u64>,
    pub(super) bytes: u64,
}

/// Live envelopes of one log segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Live {
    pub(super) count: u64,
    pub(super) bytes: u64,
}

/// What [`Queues::insert_new`] did with an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// Queued at this sequence number.
    Queued(u64),
    /// The mailbox already holds an envelope with this id.
    Duplicate,
    /// The quota check refused it.
    OverQuota,
}

/// All queues.
#[derive(Debug, Default)]
pub(super) struct Queues {
    queues: BTreeMap<Id, Queue>,
    /// (expires_at, recv_id, seq) of every queued envelope.
    expiry: BTreeSet<(u64, Id, u64)>,
    /// (segment, recv_id, seq) of every queued envelope.
    by_segment: BTreeSet<(u64, Id, u64)>,
    live: BTreeMap<u64, Live>,
    total_bytes: u64,
}

impl Queues {
    pub(super) fn queue(&self, recv_id: &Id) -> Option<&Queue> {
        self.queues.get(recv_id)
    }

    /// Every queued envelope as a [`Recovered::Enqueue`], grouped by mailbox, for an index
    /// checkpoint.
    pub(super) fn snapshot(&self) -> Vec<Recovered> {
        let mut out = Vec::with_capacity(self.total_entries() as usize);
        for (recv_id, q) in &self.queues {
            out.extend(q.entries.iter().map(|(&seq, e)| Recovered::Enqueue {
                recv_id: *recv_id,
                seq,
                envelope_id: e.envelope_id,
                expires_at: e.expires_at,
                body: e.body,
            }));
        }
        out
    }

    /// (count, bytes) queued in a mailbox.
    pub(super) fn usage(&self, recv_id: &Id) -> (u64, u64) {
        self.queues
            .get(recv_id)
            .map_or((0, 0), |q| (q.entries.len() as u64, q.bytes))
    }

    /// Inserts (or, for a rewritten copy, replaces) an entry.
    pub(super) fn insert(&mut self, recv_id: Id, seq: u64, entry: Entry) {
        self.remove(&recv_id, seq);
        let q = self.queues.entry(recv_id).or_default();
        q.entries.insert(seq, entry);
        q.by_id.insert(entry.envelope_id, seq);
        q.bytes += u64::from(entry.body.len);
        self.index(recv_id, seq, &entry);
    }

    /// Queues a new envelope at the mailbox's next sequence number (above every queued one
    /// and at least `floor`), unless the mailbox already holds one with the same id or
    /// `within_quota(count, bytes)` (what the mailbox holds now) refuses it. `place` writes the envelope to the log and says where its
    /// body went, given the sequence number; it runs only for an admitted envelope, and if it
    /// fails nothing is queued.
    /// One descent of the mailbox's envelope-id tree serves both the duplicate check and the
    /// insert (the send path; [`Self::insert`] is for replays and rewritten copies).
    pub(super) fn insert_new(
        &mut self,
        recv_id: Id,
        floor: u64,
        envelope_id: Id,
        expires_at: u64,
        within_quota: impl FnOnce(u64, u64) -> bool,
        place: impl FnOnce(u64) -> Result<BodyRef, StoreError>,
    ) -> Result<Admission, StoreError> {
        let entry = |body| Entry {
            envelope_id,
            expires_at,
            body,
        };
        let (seq, entry) = match self.queues.get_mut(&recv_id) {
            Some(Queue {
                entries,
                by_id,
                bytes,
            }) => {
                let btree_map::Entry::Vacant(slot) = by_id.entry(envelope_id) else {
                    return Ok(Admission::Duplicate);
                };
                if !within_quota(entries.len() as u64, *bytes) {
                    return Ok(Admission::OverQuota);
                }
                let seq = entries
                    .last_key_value()
                    .map_or(floor, |(&last, _)| floor.max(last.saturating_add(1)));
                let entry = entry(place(seq)?);
                slot.insert(seq);
                entries.insert(seq, entry);
                *bytes += u64::from(entry.body.len);
                (seq, entry)
            }
            None => {
                if !within_quota(0, 0) {
                    return Ok(Admission::OverQuota);
                }
                let seq = floor;
                let entry = entry(place(seq)?);
                let q = self.queues.entry(recv_id).or_default();
                q.entries.insert(seq, entry);
                q.by_id.insert(envelope_id, seq);
                q.bytes = u64::from(entry.body.len);
                (seq, entry)
            }
        };
        self.index(recv_id, seq, &entry);
        Ok(Admission::Queued(seq))
    }

    /// Adds a queued entry to the indexes across mailboxes.
    fn index(&mut self, recv_id: Id, seq: u64, entry: &Entry) {
        self.expiry.insert((entry.expires_at, recv_id, seq));
        self.by_segment.insert((entry.body.segment, recv_id, seq));
        let live = self.live.entry(entry.body.segment).or_default();
        live.count += 1;
        live.bytes += u64::from(entry.body.len);
        self.total_bytes += u64::from(entry.body.len);
    }

    /// Removes an entry; returns it if it was queued.
    pub(super) fn remove(&mut self, recv_id: &Id, seq: u64) -> Option<Entry> {
        let q = self.queues.get_mut(recv_id)?;
        let entry = q.entries.remove(&seq)?;
        if q.by_id.get(&entry.envelope_id) == Some(&seq) {
            q.by_id.remove(&entry.envelope_id);
        }
        let len = u64::from(entry.body.len);
        q.bytes = q.bytes.saturating_sub(len);
        if q.entries.is_empty() {
            self.queues.remove(recv_id);
        }
        self.expiry.remove(&(entry.expires_at, *recv_id, seq));
        self.by_segment.remove(&(entry.body.segment, *recv_id, seq));
        if let Some(live) = self.live.get_mut(&entry.body.segment) {
            live.count = live.count.saturating_sub(1);
            live.bytes = live.bytes.saturating_sub(len);
            if live.count == 0 {
                self.live.remove(&entry.body.segment);
            }
        }
        self.total_bytes = self.total_bytes.saturating_sub(len);
        Some(entry)
    }

    /// Removes a mailbox's whole queue; returns the removed sequence numbers.
    pub(super) fn drop_mailbox(&mut self, recv_id: &Id) -> Vec<u64> {
        let seqs: Vec<u64> = self
            .queues
            .get(recv_id)
            .map(|q| q.entries.keys().copied().collect())
            .unwrap_or_default();
        for seq in &seqs {
            self.remove(recv_id, *seq);
        }
        seqs
    }

    /// Up to `limit` (recv_id, seq, entry) of envelopes with `expires_at <= now`, soonest first.
    pub(super) fn expired(&self, now: u64, limit: usize) -> Vec<(Id, u64)> {
        self.expiry
            .range(..=(now, [0xff; 16], u64::MAX))
            .take(limit)
            .map(|(_, r, s)| (*r, *s))
            .collect()
    }

    /// The oldest log segment holding a queued envelope.
    pub(super) fn oldest_live_segment(&self) -> Option<u64> {
        self.live.keys().next().copied()
    }

    /// Segments holding queued envelopes, oldest first, with what each holds.
    pub(super) fn live_segments(&self) -> impl Iterator<Item = (u64, Live)> + '_ {
        self.live.iter().map(|(s, l)| (*s, *l))
    }

    /// Live envelopes in `segment`.
    #[cfg(test)]
    pub(super) fn live_in(&self, segment: u64) -> Live {
        self.live.get(&segment).copied().unwrap_or_default()
    }

    /// Envelopes queued in all mailboxes.
    pub(super) fn total_entries(&self) -> u64 {
        self.expiry.len() as u64
    }

    /// Total bytes of all queued bodies.
    pub(super) fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Up to `limit` (recv_id, seq) of envelopes whose body is in `segment`.
    pub(super) fn in_segment(&self, segment: u64, limit: usize) -> Vec<(Id, u64)> {
        self.by_segment
            .range((segment, [0; 16], 0)..=(segment, [0xff; 16], u64::MAX))
            .take(limit)
            .map(|(_, r, s)| (*r, *s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, expires_at: u64, segment: u64) -> Entry {
        Entry {
            envelope_id: [n; 16],
            expires_at,
            body: BodyRef {
                segment,
                offset: u64::from(n) * 100,
                len: 10,
            },
        }
    }

    #[test]
    fn accounting_follows_inserts_and_removals() {
        let mut q = Queues::default();
        let a = [1u8; 16];
        let b = [2u8; 16];
        q.insert(a, 1, entry(1, 50, 3));
        q.insert(a, 2, entry(2, 40, 4));
        q.insert(b, 3, entry(3, 60, 4));
        assert_eq!(q.usage(&a), (2, 20));
        assert_eq!(q.oldest_live_segment(), Some(3));
        assert_eq!(
            q.live_in(4),
            Live {
                count: 2,
                bytes: 20
            }
        );
        assert_eq!(q.expired(50, 10), vec![(a, 2), (a, 1)]);
        // A rewritten copy replaces the entry and moves it to its new segment.
        q.insert(a, 1, entry(1, 50, 5));
        assert_eq!(q.oldest_live_segment(), Some(4));
        assert_eq!(q.usage(&a), (2, 20));
        assert_eq!(q.total_bytes(), 30);
        assert_eq!(q.in_segment(4, 10), vec![(a, 2), (b, 3)]);
        assert_eq!(q.remove(&a, 2).map(|e| e.envelope_id), Some([2; 16]));
        assert!(q.remove(&a, 2).is_none());
        assert_eq!(q.drop_mailbox(&b), vec![3]);
        assert_eq!(q.oldest_live_segment(), Some(5));
        assert_eq!(q.total_bytes(), 10);
        assert_eq!(q.drop_mailbox(&a), vec![1]);
        assert_eq!(q.oldest_live_segment(), None);
        assert!(q.queue(&a).is_none());
        assert!(q.expired(u64::MAX, 10).is_empty());
    }

    #[test]
    fn new_envelopes_are_checked_and_placed_once() {
        let mut q = Queues::default();
        let a = [1u8; 16];
        let placed = |n: u8, segment: u64| {
            move |_seq: u64| {
                Ok(BodyRef {
                    segment,
                    offset: u64::from(n) * 100,
                    len: 10,
                })
            }
        };
        let never = |_: u64| -> Result<BodyRef, StoreError> { panic!("placed a refused envelope") };
        let failing = |_: u64| -> Result<BodyRef, StoreError> { Err(StoreError::Corrupt) };

        // A failed log write queues nothing, not even an empty queue for the mailbox.
        assert!(
            q.insert_new(a, 1, [1; 16], 50, |_, _| true, failing)
                .is_err()
        );
        assert!(q.queue(&a).is_none());
        // The quota sees what the mailbox holds now.
        let mut seen = Vec::new();
        let mut quota = |count, bytes| {
            seen.push((count, bytes));
            true
        };
        assert_eq!(
            q.insert_new(a, 1, [1; 16], 50, &mut quota, placed(1, 3))
                .unwrap(),
            Admission::Queued(1)
        );
        // The next sequence number is above the last queued one, whatever the floor says.
        assert_eq!(
            q.insert_new(a, 0, [2; 16], 40, &mut quota, placed(2, 4))
                .unwrap(),
            Admission::Queued(2)
        );
        assert_eq!(seen, vec![(0, 0), (1, 10)]);
        assert_eq!(q.usage(&a), (2, 20));
        // A duplicate id or a refusal by the quota is not placed and changes nothing.
        assert_eq!(
            q.insert_new(a, 3, [1; 16], 60, |_, _| true, never).unwrap(),
            Admission::Duplicate
        );
        assert_eq!(
            q.insert_new(a, 3, [3; 16], 60, |_, _| false, never)
                .unwrap(),
            Admission::OverQuota
        );
        assert_eq!(
            q.insert_new([2; 16], 3, [3; 16], 60, |_, _| false, never)
                .unwrap(),
            Admission::OverQuota
        );
        assert!(q.queue(&[2; 16]).is_none());
        // A failed write into an existing queue leaves the id free for a retry.
        assert!(
            q.insert_new(a, 3, [3; 16], 60, |_, _| true, failing)
                .is_err()
        );
        assert_eq!(
            q.insert_new(a, 3, [3; 16], 60, |_, _| true, placed(3, 4))
                .unwrap(),
            Admission::Queued(3)
        );
        // A floor above the queue wins; a new queue starts at its floor.
        assert_eq!(
            q.insert_new(a, 9, [4; 16], 60, |_, _| true, placed(4, 4))
                .unwrap(),
            Admission::Queued(9)
        );
        assert_eq!(q.remove(&a, 9).map(|e| e.envelope_id), Some([4; 16]));
        assert_eq!(
            q.insert_new([5; 16], 7, [4; 16], 60, |_, _| true, placed(5, 4))
                .unwrap(),
            Admission::Queued(7)
        );
        assert_eq!(q.remove(&[5; 16], 7).map(|e| e.envelope_id), Some([4; 16]));
        // The indexes across mailboxes follow, as for `insert`.
        assert_eq!(q.usage(&a), (3, 30));
        assert_eq!(q.total_bytes(), 30);
        assert_eq!(q.oldest_live_segment(), Some(3));
        assert_eq!(q.live_in(4).count, 2);
        assert_eq!(q.in_segment(4, 10), vec![(a, 2), (a, 3)]);
        assert_eq!(q.expired(50, 10), vec![(a, 2), (a, 1)]);
        assert_eq!(q.queue(&a).unwrap().by_id.get(&[3; 16]), Some(&3));
        assert_eq!(q.remove(&a, 1).map(|e| e.envelope_id), Some([1; 16]));
        assert_eq!(q.oldest_live_segment(), Some(4));
    }
}
