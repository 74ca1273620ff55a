//! sled, which holds the small keyspace (mailboxes, prekeys, directory, blobs, tombstones):
//! applying a group's writes, and checkpoints that make sled durable so that sealed segments
//! are no longer needed for its recovery.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::super::StoreError;
use super::backend_err;
use super::commit::{Overlay, Wal};
use super::segment::{listing, segment_id, sync_dir_entries};

/// sled segment size: large enough that blob chunks (256 KiB) stay in sled's log instead of its
/// unsynced side files (the threshold is a quarter of a segment).
pub(super) const SLED_SEGMENT_SIZE: usize = 4 * 1024 * 1024;

/// sled key holding the LSN of the last batch sled holds (outside every table).
pub(super) const LSN_KEY: &[u8] = b"\xff~lsn";

/// What a checkpoint syncs besides sled's flush.
pub(super) struct SledFiles {
    pub(super) dir: PathBuf,
    pub(super) log: File,
    pub(super) synced: SyncedFiles,
}

#[derive(Default)]
pub(super) struct SyncedFiles {
    pub(super) root: BTreeSet<String>,
    pub(super) blobs: BTreeSet<String>,
}

impl SledFiles {
    /// Makes everything applied to sled so far durable, recording `lsn` as covered.
    pub(super) fn checkpoint(&mut self, db: &sled::Db, lsn: u64) -> Result<(), StoreError> {
        // The LSN only grows: group applies write larger ones, and this one is at most the
        // last LSN applied when the checkpoint started.
        let current = read_lsn(db)?;
        if lsn > current {
            db.insert(LSN_KEY, &lsn.to_be_bytes())
                .map_err(backend_err)?;
        }
        db.flush().map_err(backend_err)?;
        self.log.sync_data().map_err(backend_err)?;
        let SyncedFiles { root, blobs } = &mut self.synced;
        sync_dir(&self.dir.join("blobs"), blobs)?;
        sync_dir(&self.dir, root)
    }
}

pub(super) fn read_lsn(db: &sled::Db) -> Result<u64, StoreError> {
    Ok(match db.get(LSN_KEY).map_err(backend_err)? {
        Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt)?),
        None => 0,
    })
}

/// `fdatasync`s new regular files in `dir` and `fsync`s `dir` if its entries changed.
pub(super) fn sync_dir(dir: &Path, known: &mut BTreeSet<String>) -> Result<(), StoreError> {
    let now = listing(dir)?;
    if now == *known {
        return Ok(());
    }
    for name in now.difference(known) {
        // Log segments are synced by the log itself.
        if segment_id(name).is_some() {
            continue;
        }
        let path = dir.join(name);
        if path.is_file() {
            match File::open(&path) {
                Ok(f) => f.sync_data().map_err(backend_err)?,
                // sled may delete a file between listing and opening it; nothing to sync.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(backend_err(err)),
            }
        }
    }
    sync_dir_entries(dir)?;
    *known = now;
    Ok(())
}

pub(super) fn apply_to_sled(db: &sled::Db, lsn: u64, writes: &Overlay) -> Result<(), StoreError> {
    let mut b = sled::Batch::default();
    b.insert(LSN_KEY, &lsn.to_be_bytes());
    for (k, v) in writes {
        match v {
            Some(v) => b.insert(k.as_slice(), v.as_slice()),
            None => b.remove(k.as_slice()),
        }
    }
    db.apply_batch(b).map_err(backend_err)
}

impl Wal {
    /// Starts a background checkpoint covering every segment below `below` (all their groups
    /// are applied to sled).
    pub(super) fn start_checkpoint(
        &mut self,
        db: &sled::Db,
        below: u64,
        done: &Arc<AtomicU64>,
    ) -> Result<(), StoreError> {
        self.join_checkpoint(done)?;
        let db = db.clone();
        let sled_files = self.sled_files.clone();
        let lsn = self.last_written;
        let done = done.clone();
        let handle = std::thread::Builder::new()
            .name("handover-checkpoint".into())
            .spawn(move || {
                sled_files
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .checkpoint(&db, lsn)?;
                done.fetch_max(below, Ordering::SeqCst);
                Ok(())
            })
            .map_err(backend_err)?;
        self.running = Some((below, handle));
        Ok(())
    }

    pub(super) fn join_checkpoint(&mut self, done: &AtomicU64) -> Result<(), StoreError> {
        match self.running.take() {
            Some((below, handle)) => {
                handle.join().unwrap_or_else(|_| {
                    Err(StoreError::Backend("checkpoint thread failed".into()))
                })?;
                done.fetch_max(below, Ordering::SeqCst);
                Ok(())
            }
            None => Ok(()),
        }
    }
}
