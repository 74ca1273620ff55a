//! The small keyspace (mailboxes, prekeys, directory, blobs, tombstones) behind [`Keyspace`]:
//! sled in production ([`SledKeyspace`]), a model of it on the simulated disk in tests
//! ([`SimKeyspace`](super::sim::SimKeyspace)). Applying a group's writes, and checkpoints
//! that make the keyspace durable so that sealed segments are no longer needed for its
//! recovery.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::super::StoreError;
use super::backend_err;
use super::commit::{Checkpointing, Overlay, Wal};
use super::segment::segment_id;

/// sled segment size: large enough that blob chunks (256 KiB) stay in sled's log instead of its
/// unsynced side files (the threshold is a quarter of a segment).
pub(super) const SLED_SEGMENT_SIZE: usize = 4 * 1024 * 1024;

/// Key holding the LSN of the last batch the keyspace holds (outside every table).
pub(super) const LSN_KEY: &[u8] = b"\xff~lsn";

/// One key-value pair read from the keyspace.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// An ordered key-value store that applies batches atomically and recovers, after a crash, a
/// prefix of them that includes every batch applied before the last successful
/// [`Keyspace::checkpoint`]. This is what the log store needs of sled.
pub trait Keyspace: Send + Sync {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The entries with `start <= key < end`, in key order.
    fn range(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> Box<dyn Iterator<Item = Result<KeyValue, StoreError>> + '_>;
    /// Applies `writes` atomically, and stores `lsn` as the LSN of the last batch applied (at
    /// a key outside every table).
    fn apply(&self, lsn: u64, writes: &Overlay) -> Result<(), StoreError>;
    /// Makes every batch applied so far durable.
    fn checkpoint(&self) -> Result<(), StoreError>;
}

/// The LSN of the last batch the keyspace holds.
pub(super) fn read_lsn(ks: &dyn Keyspace) -> Result<u64, StoreError> {
    Ok(match ks.get(LSN_KEY)? {
        Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| StoreError::Corrupt)?),
        None => 0,
    })
}

/// Makes everything applied to the keyspace so far durable, recording `lsn` as covered.
pub(super) fn checkpoint(ks: &dyn Keyspace, lsn: u64) -> Result<(), StoreError> {
    // The LSN only grows: group applies write larger ones, and this one is at most the last
    // LSN applied when the checkpoint started.
    if lsn > read_lsn(ks)? {
        ks.apply(lsn, &Overlay::new())?;
    }
    ks.checkpoint()
}

/// sled, with the files a checkpoint syncs besides sled's flush.
pub(super) struct SledKeyspace {
    db: sled::Db,
    files: Mutex<SledFiles>,
}

/// What a checkpoint syncs besides sled's flush.
struct SledFiles {
    dir: PathBuf,
    log: File,
    synced: SyncedFiles,
}

#[derive(Default)]
struct SyncedFiles {
    root: BTreeSet<String>,
    blobs: BTreeSet<String>,
}

impl SledKeyspace {
    /// Opens (or creates) sled in `dir`.
    pub(super) fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .segment_size(SLED_SEGMENT_SIZE)
            // Durability comes from the log; sled's own periodic flush would only add
            // write-back work.
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(backend_err)?;
        let log = File::open(dir.join("db")).map_err(backend_err)?;
        Ok(Self {
            db,
            files: Mutex::new(SledFiles {
                dir: dir.to_path_buf(),
                log,
                synced: SyncedFiles::default(),
            }),
        })
    }
}

impl Keyspace for SledKeyspace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(backend_err)?.map(|v| v.to_vec()))
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> Box<dyn Iterator<Item = Result<KeyValue, StoreError>> + '_> {
        Box::new(self.db.range(start..end).map(|e| {
            e.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(backend_err)
        }))
    }

    fn apply(&self, lsn: u64, writes: &Overlay) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        b.insert(LSN_KEY, &lsn.to_be_bytes());
        for (k, v) in writes {
            match v {
                Some(v) => b.insert(k.as_slice(), v.as_slice()),
                None => b.remove(k.as_slice()),
            }
        }
        self.db.apply_batch(b).map_err(backend_err)
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        self.db.flush().map_err(backend_err)?;
        files.log.sync_data().map_err(backend_err)?;
        let SledFiles { dir, synced, .. } = &mut *files;
        let SyncedFiles { root, blobs } = synced;
        sync_dir(&dir.join("blobs"), blobs)?;
        sync_dir(dir, root)
    }
}

fn listing(dir: &Path) -> Result<BTreeSet<String>, StoreError> {
    let mut names = BTreeSet::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(backend_err)?;
                names.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(backend_err(err)),
    }
    Ok(names)
}

/// `fdatasync`s new regular files of sled in `dir` and `fsync`s `dir` if its entries changed.
/// sled's files are outside [`LogFs`](super::fs::LogFs): this uses the real file system.
fn sync_dir(dir: &Path, known: &mut BTreeSet<String>) -> Result<(), StoreError> {
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
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(backend_err)?;
    *known = now;
    Ok(())
}

impl Wal {
    /// Starts a checkpoint covering every segment below `below` (all their groups are applied
    /// to the keyspace): on a background thread, or at once under simulation (its result is
    /// then reported when it is joined, as a thread's would be).
    pub(super) fn start_checkpoint(
        &mut self,
        ks: &Arc<dyn Keyspace>,
        below: u64,
        done: &Arc<AtomicU64>,
    ) -> Result<(), StoreError> {
        self.join_checkpoint(done)?;
        let lsn = self.last_written;
        if !self.background {
            let result = checkpoint(ks.as_ref(), lsn);
            self.running = Some((below, Checkpointing::Done(result)));
            return Ok(());
        }
        let ks = ks.clone();
        let done = done.clone();
        let handle = std::thread::Builder::new()
            .name("handover-checkpoint".into())
            .spawn(move || {
                checkpoint(ks.as_ref(), lsn)?;
                done.fetch_max(below, Ordering::SeqCst);
                Ok(())
            })
            .map_err(backend_err)?;
        self.running = Some((below, Checkpointing::Thread(handle)));
        Ok(())
    }

    /// Whether a started checkpoint has ended.
    pub(super) fn checkpoint_finished(&self) -> bool {
        match &self.running {
            Some((_, Checkpointing::Thread(handle))) => handle.is_finished(),
            Some((_, Checkpointing::Done(_))) => true,
            None => false,
        }
    }

    pub(super) fn join_checkpoint(&mut self, done: &AtomicU64) -> Result<(), StoreError> {
        match self.running.take() {
            Some((below, running)) => {
                match running {
                    Checkpointing::Thread(handle) => handle.join().unwrap_or_else(|_| {
                        Err(StoreError::Backend("checkpoint thread failed".into()))
                    })?,
                    Checkpointing::Done(result) => result?,
                }
                done.fetch_max(below, Ordering::SeqCst);
                Ok(())
            }
            None => Ok(()),
        }
    }
}
