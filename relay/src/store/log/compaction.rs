//! Reclaiming space: deleting segments that no queued envelope and no un-checkpointed keyspace
//! write needs, and offering the oldest segment to the store's compaction, which copies its
//! live envelopes forward ([`KvStore`](super::super::KvStore)).

use std::sync::atomic::Ordering;

use super::super::StoreError;
use super::super::kv::Candidate;
use super::commit::Wal;
use super::segment::segment_name;
use super::{LogBackend, backend_err};

impl LogBackend {
    /// Deletes segments older than every queued envelope, the checkpoint and the active one.
    pub(super) fn reclaim(
        &self,
        wal: &mut Wal,
        oldest_live: Option<u64>,
    ) -> Result<(), StoreError> {
        if wal.checkpoint_finished() {
            // A failed checkpoint is as fatal as a failed log sync: the keyspace writes it
            // should have made durable may be gone from the page cache, and a later
            // checkpoint on the same files could "succeed" without them.
            wal.join_checkpoint(&self.checkpointed_below)
                .map_err(|e| self.fail(e))?;
        }
        let below = oldest_live
            .unwrap_or(u64::MAX)
            .min(self.checkpointed_below.load(Ordering::SeqCst))
            .min(wal.active.0);
        let doomed: Vec<u64> = self
            .files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .range(..below)
            .map(|(id, _)| *id)
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        for id in &doomed {
            wal.fs
                .remove(&wal.dir.join(segment_name(*id)))
                .map_err(|e| self.fail(backend_err(e)))?;
            self.files
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
        }
        // The deletions are durable before the sync that made them returns. A failed
        // directory sync is fatal like a failed log sync: the directory's state on disk is
        // unknown, and a retry could "succeed" without the lost update.
        wal.fs
            .sync_dir(&wal.dir)
            .map_err(|e| self.fail(backend_err(e)))
    }

    /// The oldest segment if it is sealed and checkpointed (see
    /// [`KvBackend::compaction_candidate`](super::super::KvBackend::compaction_candidate)).
    pub(super) fn oldest_sealed(&self) -> Option<Candidate> {
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        let (&segment, _) = files.iter().next()?;
        let sealed_below = self
            .checkpointed_below
            .load(Ordering::SeqCst)
            .min(self.active_segment.load(Ordering::SeqCst));
        (segment < sealed_below).then(|| Candidate {
            segment,
            segments: files.len() as u64,
            segment_size: self.segment_size,
            sealed_below,
        })
    }
}
