//! The sled backend, with the file syncs that make sled's data survive power loss.
//!
//! sled 0.34's `Db::flush` writes its log buffers with `pwrite` and then, on Linux, calls
//! `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on the written range
//! (`pagecache/iobuf.rs`). `sync_file_range` starts and waits for write-back of those pages but
//! does not flush the drive's volatile write cache and does not persist file metadata such as a
//! grown file size, so acknowledged data can be lost on power failure. Large pages (over
//! `segment_size / 4`) go to separate files under `blobs/` that sled writes without any sync
//! (`pagecache/blob_io.rs`), and snapshot renames are not followed by a directory sync.
//!
//! [`SledBackend::sync`] therefore, after `flush`, calls `fdatasync` on the log file `db`,
//! `fdatasync` on every file that appeared in the data directory or `blobs/` since the last
//! sync, and `fsync` on each of those directories whose entries changed. When it returns, every
//! batch applied before the call is on stable storage (given a drive that honours flushes).

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::StoreError;
use super::kv::{Batch, Entries, KvBackend};

/// sled segment size: large enough that envelopes and blob chunks (256 KiB) stay in the log
/// instead of sled's unsynced side files (the threshold is a quarter of a segment).
const SEGMENT_SIZE: usize = 4 * 1024 * 1024;

fn backend_err(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// The on-disk [`KvBackend`] (one sled tree).
pub struct SledBackend {
    db: sled::Db,
    dir: PathBuf,
    log: File,
    synced: Mutex<SyncedFiles>,
}

#[derive(Default)]
struct SyncedFiles {
    root: BTreeSet<String>,
    blobs: BTreeSet<String>,
}

impl std::fmt::Debug for SledBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledBackend").finish_non_exhaustive()
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

/// `fdatasync`s new regular files in `dir` and `fsync`s `dir` if its entries changed.
fn sync_dir(dir: &Path, known: &mut BTreeSet<String>) -> Result<(), StoreError> {
    let now = listing(dir)?;
    if now == *known {
        return Ok(());
    }
    for name in now.difference(known) {
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

impl SledBackend {
    /// Opens (or creates) the store in `dir`, and makes its creation durable.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend_err)?;
        let db = sled::Config::new()
            .path(dir)
            .segment_size(SEGMENT_SIZE)
            .open()
            .map_err(backend_err)?;
        let log = File::open(dir.join("db")).map_err(backend_err)?;
        let backend = Self {
            db,
            dir: dir.to_path_buf(),
            log,
            synced: Mutex::new(SyncedFiles::default()),
        };
        backend.sync()?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(backend_err)?;
        }
        Ok(backend)
    }

    /// Bytes sled reports on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

impl KvBackend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(backend_err)?.map(|v| v.to_vec()))
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.db
            .range(start..end)
            .take(limit)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(backend_err)
            })
            .collect()
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.db.apply_batch(b).map_err(backend_err)
    }

    fn sync(&self) -> Result<(), StoreError> {
        // One sync at a time: the group committer is the only regular caller.
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        self.db.flush().map_err(backend_err)?;
        self.log.sync_data().map_err(backend_err)?;
        let SyncedFiles { root, blobs } = &mut *synced;
        sync_dir(&self.dir.join("blobs"), blobs)?;
        sync_dir(&self.dir, root)?;
        Ok(())
    }
}
