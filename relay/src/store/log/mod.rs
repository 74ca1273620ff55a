//! The on-disk backend: an append-only log of segments that the relay `fdatasync`s itself and
//! that keeps the envelope bodies, plus sled for the small keyspace (mailboxes, prekeys,
//! directory, blobs, tombstones).
//!
//! # Why not sled's own flush
//!
//! sled 0.34's `Db::flush` writes its log buffers with `pwrite` and then, on Linux, calls
//! `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on the written range
//! (`pagecache/iobuf.rs`). `sync_file_range` starts and waits for write-back of those pages but
//! does not flush the drive's volatile write cache and does not persist file metadata such as a
//! grown file size, so data it "flushed" can be lost on power failure. Large pages (over
//! `segment_size / 4`) go to separate files under `blobs/` that sled writes without any sync
//! (`pagecache/blob_io.rs`), and snapshot renames are not followed by a directory sync.
//!
//! # What this backend does
//!
//! - Every [`KvBackend::apply_logged`] call gets a sequence number (LSN) and, under one lock, is
//!   encoded into the in-memory buffer of the next log record (its keyspace writes, and its
//!   envelope records with their ciphertexts) and its keyspace writes go into an in-memory
//!   overlay that reads consult before sled. The body of an envelope gets its final place in
//!   the log at this point ([`BodyRef`]: segment and offset), because records are written in
//!   order at known offsets; until then reads copy it from the buffer.
//! - [`KvBackend::sync`] (one call per group commit) freezes the buffer as one *group* record
//!   (`crc32 | len | segment | payload`; the buffer is that record, built in place), writes it
//!   into the active segment file with one `pwrite` and calls `fdatasync` once. Only then are
//!   the group's keyspace writes applied to sled (one atomic sled batch with the group's last
//!   LSN), so sled never holds anything the log does not; groups with no keyspace writes
//!   (sends, acks) skip sled entirely. The synced log more than [`LOG_CACHE_WINDOW`] behind
//!   the group is then dropped from the page cache (`Wal::uncache`).
//! - Segments (`seg-<16 hex digits>`) are created at their full size (sparse) in the
//!   background (under a temporary name, synced, renamed, directory synced), so a `fdatasync`
//!   never has to commit a size change except when a group spills past the nominal size.
//!   When a group would start past the end of the active segment, the next one becomes active
//!   and a background thread *checkpoints* sled (records the last LSN, `flush`, `fdatasync` of
//!   its files, `fsync` of directories whose entries changed); after that, the keyspace writes
//!   in the sealed segment are no longer needed for recovery.
//! - A sealed, checkpointed segment is deleted (and the directory synced, before the sync
//!   that deleted it returns) as soon as it and every older segment hold no queued
//!   envelope; deleting only from the oldest end keeps every removal record that an older
//!   enqueue record needs. The store copies the live envelopes of a mostly dead oldest
//!   segment forward ([`KvBackend::compaction_candidate`]). Dead segments in the middle of
//!   the log are not deleted even though an index checkpoint past them would no longer need
//!   their removal records: a recovery without a usable checkpoint (damaged, or deleted by a
//!   repair) reads the whole log, and that needs them; a gap would also look like a lost
//!   segment. Compaction already bounds the log at about twice the live bytes plus two
//!   segments.
//! - The envelope queues (the store's in-memory index) are checkpointed every few segments
//!   and at clean shutdown ([`KvBackend::write_index`], `index.rs`): a file holding every
//!   queued envelope with its body's place, tied to an LSN and the first segment a recovery
//!   must read, so that opening replays only the log after it.
//! - On open, sled recovers a prefix of its batches, and the newest valid index checkpoint is
//!   loaded (a damaged one falls back to the one before, then to the whole log). The log from
//!   the checkpoint's first segment on (the whole log without one) is then checked before
//!   anything is changed (`recovery.rs`), read from the disk (each segment's cached pages are
//!   dropped first: after a failed `fdatasync` the page cache holds data the disk does not):
//!   each segment's valid records (right segment number, length, CRC-32) in order, then the
//!   rest of the segment, searched at every byte offset for a valid record of that segment. Zeros are a clean end, and so is a zeroed record header
//!   with no valid record after it in the segment (a torn write that an earlier version cut by
//!   zeroing only the header). Other bytes holding no valid record are a torn write if nothing
//!   valid follows them in the whole log: only the very last write can be torn, and it was
//!   never acknowledged; it is zeroed and synced. Damage followed by any
//!   valid record (same segment or later) means acknowledged data was damaged:
//!   [`StoreError::Damaged`], on every start, with nothing changed, until an operator runs
//!   [`repair`] (`handover-relay repair`), which drops the log from the damage on (and
//!   leaves per-mailbox sequence floors above the dropped envelopes, applied at the next
//!   open: [`KvBackend::repair_seq_floors`]). Then keyspace batches newer than sled's LSN are
//!   replayed into sled, the checkpoint's envelopes and the envelope records after its LSN
//!   are handed to the store ([`KvBackend::take_recovered`]), sled is checkpointed and a
//!   fresh segment becomes active.
//!
//! A failed `pwrite`, `fdatasync`, sled apply, checkpoint (sled's flush, the `fdatasync` of its
//! files, a directory `fsync`) or segment creation poisons the backend: every later write, sync
//! and checkpoint fails ([`Store::writes_blocked`](super::Store::writes_blocked)) until the relay is restarted and
//! recovers from what is on disk. After a failed sync the kernel may have dropped the dirty
//! pages and marked them clean, so retrying would "succeed" without them (PostgreSQL's
//! "fsyncgate"); the page cache cannot be trusted to say what is durable.
//!
//! When `sync` returns, every batch applied before it is on stable storage, given a drive that
//! honours cache flushes (see docs/OPERATIONS.md, "Durability").

//!
//! # Files
//!
//! - `segment.rs`: segment files (names, headers, creation, reading records back);
//! - `format.rs`: the payload of a record (batches, keyspace writes, envelope records);
//! - `commit.rs`: group commit (the pending buffer, the writer, rotation, page cache);
//! - `keyspace.rs`: sled (applying groups, checkpoints);
//! - `recovery.rs`: reading the log back on open;
//! - `compaction.rs`: deleting dead segments and offering the oldest to compaction;
//! - `index.rs`: index checkpoints (writing, loading, their format);
//! - `migrate.rs`: migration from the previous store format;
//! - `fs.rs`: the file layer ([`LogFs`], [`LogFile`]) every file and directory operation of
//!   the log goes through; [`StdFs`] is the real file system;
//! - `sim.rs`: the simulated disk and keyspace ([`sim`]); `sim_tests.rs`: the fault-injection
//!   suite.
//!
//! # Testing under power loss and disk faults
//!
//! Killing the process (the SIGKILL test in `tests/tests/relay_crash.rs`) keeps the page cache,
//! so it cannot show what a power cut or a failing disk does. For that the log store runs on
//! [`sim::SimDisk`] ([`LogBackend::open_simulated`]): an in-memory disk that, at a power cut,
//! keeps only what a completed `fdatasync`/`fsync` covered, directory entries (create, rename,
//! unlink) only as of the last directory `fsync`, lets each unsynced write survive whole, not at
//! all, or torn at 512-byte sectors, and fails a chosen (or random) write, sync, directory sync
//! or keyspace checkpoint with `EIO` or `ENOSPC`, with Linux's semantics for a failed sync (the
//! pages are marked clean; the cache keeps data the disk does not have). Everything random comes
//! from one seed, and the store runs its background work (segment creation, checkpoints)
//! inline, so a seed replays exactly.
//!
//! `sim_tests.rs` drives the store through sends, acks, expiry sweeps, segment rotation,
//! compaction, mailbox creation and deletion, prekey publication and takes, syncs and
//! checkpoints, with random power cuts, process exits and faults, and after every recovery
//! checks a model: every acknowledged effect (one a successful sync followed) is there, no
//! acknowledged removal (ack, expiry, mailbox deletion) or prekey take is undone, no expired
//! envelope is served, and recovery never refuses a log that only lost unsynced writes.
//! `cargo test` runs 256 seeds; `HANDOVER_SIM_SEEDS=N` runs `N` (a soak, from seed
//! `HANDOVER_SIM_FIRST` if set) and `HANDOVER_SIM_SEED=S` replays seed `S`.
//!
//! **What the harness does not reach.** sled opens and writes its own files, so they are not
//! behind [`LogFs`]. Under simulation sled is replaced by a model of what the log store relies
//! on ([`Keyspace`]): atomic batches, a recovered prefix of them after a crash, and everything
//! applied before a successful checkpoint durable. Whether sled 0.34 itself keeps that
//! contract under power loss (its flush uses `sync_file_range`, see above; the checkpoint adds
//! an `fdatasync` of its file and directory syncs) is not tested by the harness; the
//! real-process SIGKILL test exercises the real sled, but not a power cut.

mod commit;
mod compaction;
mod format;
mod fs;
mod index;
mod keyspace;
mod migrate;
mod recovery;
mod segment;
pub mod sim;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::kv::{Batch, BodyRef, Candidate, Entries, IndexPosition, KvBackend, LogOp, Recovered};
use super::{Id, StoreError};
use commit::{Files, Overlay, Pending, Wal, new_record, slice_at};
use format::encode_batch;
pub use fs::{LogFile, LogFs, StdFs};
use keyspace::SledKeyspace;
pub use keyspace::{KeyValue, Keyspace};
use keyspace::{checkpoint as checkpoint_keyspace, read_lsn};
use migrate::{OLD_WAL_FILES, old_format_is_clean};
use recovery::{RecoveredLog, read_seq_floors, recover_log, remove_seq_floors};
pub use recovery::{RepairPlan, plan_repair, repair};
use segment::{SEG_HEADER_LEN, create_segment, sync_dir_entries};

/// Default nominal size of a log segment.
pub const DEFAULT_WAL_SIZE: u64 = 64 * 1024 * 1024;
/// Smallest segment size accepted.
pub const MIN_WAL_SIZE: u64 = 1024 * 1024;

fn backend_err(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// The on-disk [`KvBackend`]: sled plus the segment log.
pub struct LogBackend {
    db: Arc<dyn Keyspace>,
    fs: Arc<dyn LogFs>,
    pending: Mutex<Pending>,
    wal: Mutex<Wal>,
    /// Open segments, for reading bodies.
    files: Files,
    /// Segments below this number have their keyspace writes checkpointed into sled.
    checkpointed_below: Arc<AtomicU64>,
    /// The segment being written.
    active_segment: AtomicU64,
    recovered: Mutex<Vec<Recovered>>,
    seq_floor: u64,
    segment_size: u64,
    /// The store's directory.
    dir: PathBuf,
    /// LSN of the newest index checkpoint written or loaded (0: none).
    index_lsn: AtomicU64,
    /// The active segment from which the next index checkpoint is due.
    index_due: AtomicU64,
    /// Held while an index checkpoint is written (one at a time).
    index_writer: Mutex<()>,
    /// Sequence floors left by a repair, until the store has made them durable.
    repair_floors: Vec<(Id, u64)>,
    /// LSN of the index checkpoint this open loaded, if any.
    index_loaded: Option<u64>,
}

impl std::fmt::Debug for LogBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogBackend").finish_non_exhaustive()
    }
}

impl LogBackend {
    /// Opens (or creates) the store in `dir` with the default segment size.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_log_size(dir, DEFAULT_WAL_SIZE)
    }

    /// Opens (or creates) the store in `dir`: recovers sled and the log (see the module docs)
    /// and starts a fresh segment of `segment_size` bytes.
    pub fn open_with_log_size(dir: &Path, segment_size: u64) -> Result<Self, StoreError> {
        Self::open_on(Arc::new(StdFs), dir, segment_size, true, |dir| {
            Ok(Arc::new(SledKeyspace::open(dir)?))
        })
    }

    /// Opens (or creates) the store in `dir` on a simulated disk, with the simulated keyspace
    /// in place of sled and no background threads (see [`sim`]).
    pub fn open_simulated(
        disk: &sim::SimDisk,
        dir: &Path,
        segment_size: u64,
    ) -> Result<Self, StoreError> {
        Self::open_on(Arc::new(disk.clone()), dir, segment_size, false, |_| {
            Ok(Arc::new(disk.keyspace()))
        })
    }

    fn open_on(
        fs: Arc<dyn LogFs>,
        dir: &Path,
        segment_size: u64,
        background: bool,
        keyspace: impl FnOnce(&Path) -> Result<Arc<dyn Keyspace>, StoreError>,
    ) -> Result<Self, StoreError> {
        let segment_size = segment_size.max(MIN_WAL_SIZE);
        fs.create_dir_all(dir).map_err(backend_err)?;
        let old_format = fs.exists(&dir.join(OLD_WAL_FILES[0]));
        if old_format {
            old_format_is_clean(fs.as_ref(), dir)?;
        }
        let db = keyspace(dir)?;
        let sled_lsn = read_lsn(db.as_ref())?;
        let repair_floors = read_seq_floors(fs.as_ref(), dir)?;
        let index = if old_format {
            None
        } else {
            index::load_newest(fs.as_ref(), dir)?
        };
        let index_loaded = index.as_ref().map(|i| i.lsn);
        let (index_lsn, index_due) = index.as_ref().map_or((0, 0), |i| {
            (i.lsn, index::next_due(i.segment, i.bytes, segment_size))
        });
        let RecoveredLog {
            ids,
            mut files,
            recovered,
            max_lsn,
            empty_last,
        } = recover_log(fs.as_ref(), dir, db.as_ref(), sled_lsn, index)?;

        checkpoint_keyspace(db.as_ref(), max_lsn)?;
        let (active_id, active) = match empty_last.and_then(|id| files.get(&id).map(|f| (id, f))) {
            Some((id, f)) => (id, f.clone()),
            None => {
                let id = ids.last().map_or(1, |id| id + 1);
                let f = create_segment(fs.as_ref(), dir, id, segment_size)?;
                files.insert(id, f.clone());
                (id, f)
            }
        };
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir_entries(fs.as_ref(), parent)?;
        }
        let mut wal = Wal {
            fs: fs.clone(),
            background,
            dir: dir.to_path_buf(),
            segment_size,
            active: (active_id, active),
            spare: None,
            running: None,
            last_written: max_lsn,
            uncached_below: 0,
            previous: None,
        };
        wal.spawn_spare(active_id + 1);
        let backend = Self {
            db,
            fs,
            pending: Mutex::new(Pending {
                bytes: new_record(Vec::new()),
                payload_crc: crc32fast::Hasher::new(),
                spare: Vec::new(),
                segment: active_id,
                start: SEG_HEADER_LEN,
                next_lsn: max_lsn + 1,
                active: Overlay::new(),
                inflight: None,
                frozen: VecDeque::new(),
                failed: false,
                segment_size,
            }),
            wal: Mutex::new(wal),
            files: RwLock::new(files),
            checkpointed_below: Arc::new(AtomicU64::new(active_id)),
            active_segment: AtomicU64::new(active_id),
            recovered: Mutex::new(recovered),
            seq_floor: max_lsn + 1,
            segment_size,
            dir: dir.to_path_buf(),
            index_lsn: AtomicU64::new(index_lsn),
            index_due: AtomicU64::new(index_due),
            index_writer: Mutex::new(()),
            repair_floors,
            index_loaded,
        };
        if old_format {
            backend.migrate_old_format(dir)?;
        }
        Ok(backend)
    }

    /// The LSN of the index checkpoint this open started from (`None`: it read the whole log).
    pub fn index_checkpoint_loaded(&self) -> Option<u64> {
        self.index_loaded
    }

    /// The segment being written.
    pub fn active_segment(&self) -> u64 {
        self.active_segment.load(Ordering::SeqCst)
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        // Every change under this lock is completed before it is released (no fallible step
        // leaves it half-done), so a poisoned lock is safe to reuse.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_wal(&self) -> MutexGuard<'_, Wal> {
        // A failure while the lock was held poisons the backend (`Pending::failed`) instead.
        self.wal.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, err: StoreError) -> StoreError {
        tracing::error!(
            error = %err,
            "a log write, sync or checkpoint failed; the store refuses further writes until restarted"
        );
        self.lock_pending().failed = true;
        err
    }
}

impl Drop for LogBackend {
    fn drop(&mut self) {
        // Do not leave background threads holding the database open behind us. Batches not
        // yet synced were never acknowledged and are dropped.
        let mut wal = self.lock_wal();
        if let Err(err) = wal.join_checkpoint(&self.checkpointed_below) {
            tracing::error!(error = %err, "background checkpoint failed");
        }
        if let Some(handle) = wal.spare.take() {
            let _ = handle.join();
        }
    }
}

impl KvBackend for LogBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        // If the overlay misses, the key's newest write is in sled: a group leaves the overlay
        // only after sled holds it.
        if let Some(v) = self.lock_pending().lookup(key) {
            return Ok(v);
        }
        self.db.get(key)
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        // Snapshot of the unapplied writes first: a group applied to sled after this point is
        // also in the snapshot (with the same values), and the snapshot takes precedence.
        let overlay = self.lock_pending().range(start, end);
        let mut disk = self.db.range(start, end);
        let mut next_disk = || -> Result<Option<KeyValue>, StoreError> { disk.next().transpose() };
        let mut out = Vec::new();
        let mut over = overlay.into_iter().peekable();
        let mut on_disk = next_disk()?;
        while out.len() < limit {
            let take_overlay = match (&on_disk, over.peek()) {
                (None, None) => break,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some((dk, _)), Some((ok, _))) => ok <= dk,
            };
            if take_overlay {
                let Some((k, v)) = over.next() else { break };
                if on_disk.as_ref().is_some_and(|(dk, _)| *dk == k) {
                    on_disk = next_disk()?;
                }
                if let Some(v) = v {
                    out.push((k, v));
                }
            } else if let Some(entry) = on_disk.take() {
                out.push(entry);
                on_disk = next_disk()?;
            }
        }
        Ok(out)
    }

    fn apply_logged(&self, batch: Batch, ops: &[LogOp<'_>]) -> Result<Vec<BodyRef>, StoreError> {
        let mut pending = self.lock_pending();
        if pending.failed {
            return Err(StoreError::Backend(
                "an earlier log write failed; restart the relay".into(),
            ));
        }
        let lsn = pending.next_lsn;
        let base = pending.bytes.len();
        let bodies = match encode_batch(lsn, &batch, ops, &mut pending.bytes) {
            Ok(b) => b,
            Err(err) => {
                pending.bytes.truncate(base);
                return Err(err);
            }
        };
        let Pending {
            bytes, payload_crc, ..
        } = &mut *pending;
        payload_crc.update(&bytes[base..]);
        pending.next_lsn += 1;
        for (k, v) in batch {
            pending.active.insert(k, v);
        }
        let (segment, start) = (pending.segment, pending.start);
        Ok(bodies
            .into_iter()
            .map(|(pos, len)| BodyRef {
                segment,
                offset: start + pos as u64,
                len,
            })
            .collect())
    }

    fn read_body(&self, body: &BodyRef) -> Result<Option<Vec<u8>>, StoreError> {
        {
            let pending = self.lock_pending();
            if let Some(b) = slice_at(&pending.bytes, pending.segment, pending.start, body) {
                return Ok(Some(b));
            }
            if let Some(b) = pending.inflight.as_ref().and_then(|i| i.body(body)) {
                return Ok(Some(b));
            }
        }
        let file = self
            .files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&body.segment)
            .cloned();
        let Some(file) = file else {
            return Ok(None);
        };
        let mut out = vec![0u8; body.len as usize];
        file.read_exact_at(&mut out, body.offset)
            .map_err(backend_err)?;
        Ok(Some(out))
    }

    fn take_recovered(&self) -> Vec<Recovered> {
        std::mem::take(&mut *self.recovered.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn seq_floor(&self) -> u64 {
        self.seq_floor
    }

    fn sync(&self, oldest_live: Option<u64>) -> Result<(), StoreError> {
        // The log lock orders writers: groups reach the file, and sled, in apply order.
        let mut wal = self.lock_wal();
        self.commit(&mut wal)?;
        self.reclaim(&mut wal, oldest_live)
    }

    fn checkpoint(&self, oldest_live: Option<u64>) -> Result<(), StoreError> {
        let mut wal = self.lock_wal();
        self.commit(&mut wal)?;
        wal.join_checkpoint(&self.checkpointed_below)
            .map_err(|e| self.fail(e))?;
        let lsn = wal.last_written;
        checkpoint_keyspace(self.db.as_ref(), lsn).map_err(|e| self.fail(e))?;
        self.checkpointed_below
            .fetch_max(wal.active.0, Ordering::SeqCst);
        self.reclaim(&mut wal, oldest_live)
    }

    fn compaction_candidate(&self) -> Option<Candidate> {
        self.oldest_sealed()
    }

    fn writes_blocked(&self) -> bool {
        self.lock_pending().failed
    }

    fn index_position(&self, force: bool) -> Option<IndexPosition> {
        if !force && self.active_segment() < self.index_due.load(Ordering::SeqCst) {
            return None;
        }
        let pending = self.lock_pending();
        let lsn = pending.next_lsn - 1;
        (!pending.failed && lsn > self.index_lsn.load(Ordering::SeqCst)).then_some(IndexPosition {
            lsn,
            segment: pending.segment,
        })
    }

    fn write_index(&self, at: IndexPosition, queues: Vec<Recovered>) -> Result<(), StoreError> {
        let _writer = self.index_writer.lock().unwrap_or_else(|e| e.into_inner());
        if at.lsn <= self.index_lsn.load(Ordering::SeqCst) {
            return Ok(());
        }
        // The log up to `at` is durable before the checkpoint can be found; the replay starts
        // no later than the first segment whose keyspace writes are not checkpointed, so
        // that the keyspace batches sled may have lost are replayed too.
        let segment = {
            let mut wal = self.lock_wal();
            self.commit(&mut wal)?;
            if wal.last_written < at.lsn {
                return Ok(());
            }
            at.segment
                .min(self.checkpointed_below.load(Ordering::SeqCst))
        };
        let envelopes = queues.len();
        let bytes = index::encode(at.lsn, segment, &queues);
        drop(queues);
        match index::write(self.fs.as_ref(), &self.dir, at.lsn, &bytes) {
            Ok(()) => {
                self.index_lsn.store(at.lsn, Ordering::SeqCst);
                self.index_due.store(
                    index::next_due(segment, bytes.len() as u64, self.segment_size),
                    Ordering::SeqCst,
                );
                tracing::debug!(
                    envelopes,
                    bytes = bytes.len(),
                    lsn = at.lsn,
                    segment,
                    "index checkpoint written"
                );
                Ok(())
            }
            Err(index::WriteError::NotWritten(err)) => {
                // The older checkpoints and the log still hold everything; try again later.
                tracing::warn!(error = %err, "index checkpoint not written");
                self.index_due.store(
                    index::next_due(self.active_segment(), 0, self.segment_size),
                    Ordering::SeqCst,
                );
                Ok(())
            }
            Err(index::WriteError::Directory(err)) => Err(self.fail(err)),
        }
    }

    fn repair_seq_floors(&self) -> Vec<(Id, u64)> {
        self.repair_floors.clone()
    }

    fn seq_floors_applied(&self) -> Result<(), StoreError> {
        remove_seq_floors(self.fs.as_ref(), &self.dir)
    }
}
