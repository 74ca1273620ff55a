//! Group commit: the buffer that batches collect in, the writer that puts each group into the
//! active segment with one `pwrite` and one `fdatasync`, segment rotation, and handing synced
//! log pages back to the kernel.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use super::super::StoreError;
use super::super::kv::BodyRef;
use super::fs::{LogFile, LogFs};
use super::segment::{RECORD_HEADER_LEN, SEG_HEADER_LEN, create_segment};
use super::{LogBackend, backend_err};

/// How much of the log behind the last group written stays in the page cache once synced.
/// Older pages are handed back to the kernel (see [`Wal::uncache`]).
pub(super) const LOG_CACHE_WINDOW: u64 = 4 * 1024 * 1024;
/// Pages are handed back in steps of at least this much, one system call per step.
pub(super) const LOG_UNCACHE_STEP: u64 = 256 * 1024;

/// Writes of one or more batches in apply order; the last write of a key wins.
pub(super) type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A group record being written.
pub(super) struct Inflight {
    pub(super) segment: u64,
    pub(super) start: u64,
    pub(super) record: Arc<Vec<u8>>,
}

impl Inflight {
    pub(super) fn body(&self, body: &BodyRef) -> Option<Vec<u8>> {
        slice_at(&self.record, self.segment, self.start, body)
    }
}

/// The bytes of `body` if it lies in a record (header included) written at (`segment`,
/// `start`).
pub(super) fn slice_at(record: &[u8], segment: u64, start: u64, body: &BodyRef) -> Option<Vec<u8>> {
    if body.segment != segment {
        return None;
    }
    let from = body.offset.checked_sub(start)?;
    let from = usize::try_from(from).ok()?;
    record
        .get(from..from.checked_add(body.len as usize)?)
        .map(<[u8]>::to_vec)
}

/// A record buffer's capacity kept for the next group after a write, at most: enough for the
/// groups of a busy relay (tens of envelopes), without holding on to the memory of a rare
/// large one.
pub(super) const SPARE_RECORD_BYTES: usize = 1 << 20;

/// An empty record buffer: room for the header, which [`Pending::freeze`] fills in.
pub(super) fn new_record(mut buf: Vec<u8>) -> Vec<u8> {
    buf.clear();
    buf.resize(RECORD_HEADER_LEN as usize, 0);
    buf
}

/// Everything between `apply_logged` and the disk, under one lock.
pub(super) struct Pending {
    /// The record of the group being collected: a header left blank until the group is
    /// frozen, then the payload. Built in place, so the log write copies nothing.
    pub(super) bytes: Vec<u8>,
    /// CRC-32 of the payload so far (the header's CRC covers `len | segment | payload`).
    pub(super) payload_crc: crc32fast::Hasher,
    /// An emptied record buffer from the last write, reused for the next group so that a
    /// busy relay does not grow a new buffer (and fault in its pages) for every group.
    pub(super) spare: Vec<u8>,
    /// Where that group's record will be written.
    pub(super) segment: u64,
    pub(super) start: u64,
    pub(super) next_lsn: u64,
    /// Keyspace writes of the group being collected.
    pub(super) active: Overlay,
    /// The group being written, until its `pwrite` has returned.
    pub(super) inflight: Option<Inflight>,
    /// Keyspace writes of groups taken by `sync` (oldest first, with the LSN of each group's
    /// last batch), until sled holds them; reads still see them here.
    pub(super) frozen: VecDeque<(u64, Arc<Overlay>)>,
    /// Set by a failed write, sync or sled apply; see the module docs.
    pub(super) failed: bool,
    pub(super) segment_size: u64,
}

/// A frozen group, ready to be written.
pub(super) struct Group {
    pub(super) segment: u64,
    pub(super) start: u64,
    /// The whole record, header included.
    pub(super) record: Arc<Vec<u8>>,
    pub(super) last_lsn: u64,
    pub(super) has_writes: bool,
}

impl Pending {
    /// The newest unapplied write of `key`, if any: `Some(None)` is a pending delete.
    pub(super) fn lookup(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if let Some(v) = self.active.get(key) {
            return Some(v.clone());
        }
        self.frozen
            .iter()
            .rev()
            .find_map(|(_, group)| group.get(key).cloned())
    }

    /// The unapplied writes with `start <= key < end`, newest write per key.
    pub(super) fn range(&self, start: &[u8], end: &[u8]) -> Overlay {
        let mut out = Overlay::new();
        let groups = self.frozen.iter().map(|(_, g)| g.as_ref());
        for group in groups.chain(std::iter::once(&self.active)) {
            for (k, v) in group.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end))) {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }

    /// Takes the collected batches as one group, with its record header filled in, and
    /// decides where the next group goes.
    pub(super) fn freeze(&mut self) -> Result<Option<Group>, StoreError> {
        let header = RECORD_HEADER_LEN as usize;
        if self.bytes.len() <= header {
            return Ok(None);
        }
        let Ok(len) = u32::try_from(self.bytes.len() - header) else {
            // Never reached: segments and envelopes are far smaller. Like a failed write, it
            // stops the store, since the group cannot be written as one record.
            self.failed = true;
            return Err(StoreError::Backend("log record too large".into()));
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len.to_be_bytes());
        crc.update(&self.segment.to_be_bytes());
        crc.combine(&std::mem::take(&mut self.payload_crc));
        self.bytes[..4].copy_from_slice(&crc.finalize().to_be_bytes());
        self.bytes[4..8].copy_from_slice(&len.to_be_bytes());
        self.bytes[8..16].copy_from_slice(&self.segment.to_be_bytes());
        let next = new_record(std::mem::take(&mut self.spare));
        let record = Arc::new(std::mem::replace(&mut self.bytes, next));
        let last_lsn = self.next_lsn - 1;
        let has_writes = !self.active.is_empty();
        if has_writes {
            let group = Arc::new(std::mem::take(&mut self.active));
            self.frozen.push_back((last_lsn, group));
        }
        let group = Group {
            segment: self.segment,
            start: self.start,
            record: record.clone(),
            last_lsn,
            has_writes,
        };
        self.inflight = Some(Inflight {
            segment: self.segment,
            start: self.start,
            record,
        });
        let end = self.start + group.record.len() as u64;
        if end >= self.segment_size {
            self.segment += 1;
            self.start = SEG_HEADER_LEN;
        } else {
            self.start = end;
        }
        Ok(Some(group))
    }

    /// Ends the write of the in-flight group, keeping its record buffer for a later group.
    pub(super) fn written(&mut self, record: Arc<Vec<u8>>) {
        self.inflight = None;
        if let Ok(buf) = Arc::try_unwrap(record)
            && buf.capacity() <= SPARE_RECORD_BYTES
        {
            self.spare = buf;
        }
    }
}

/// A checkpoint started by [`Wal::start_checkpoint`].
pub(super) enum Checkpointing {
    /// Running on a background thread.
    Thread(JoinHandle<Result<(), StoreError>>),
    /// Run at once (under simulation); its result, reported when joined.
    Done(Result<(), StoreError>),
}

/// What the thread creating the next segment returns.
pub(super) type SpareResult = Result<(u64, Arc<dyn LogFile>), StoreError>;

/// The open segments, by number, for reading bodies.
pub(super) type Files = RwLock<BTreeMap<u64, Arc<dyn LogFile>>>;

/// The writer's side of the log, under the log lock (which orders group writes).
pub(super) struct Wal {
    pub(super) fs: Arc<dyn LogFs>,
    /// Whether segment creation and checkpoints run on background threads (not under
    /// simulation, which runs them inline to stay deterministic).
    pub(super) background: bool,
    pub(super) dir: PathBuf,
    pub(super) segment_size: u64,
    /// The segment being written.
    pub(super) active: (u64, Arc<dyn LogFile>),
    /// The next segment, being created.
    pub(super) spare: Option<JoinHandle<SpareResult>>,
    /// The running background checkpoint and the segment number below which it covers.
    pub(super) running: Option<(u64, Checkpointing)>,
    /// LSN of the last group written.
    pub(super) last_written: u64,
    /// Offset below which the active segment's pages were handed back to the kernel.
    pub(super) uncached_below: u64,
    /// The segment before the active one, and the offset below which its pages were handed
    /// back, until the active segment has a window's worth of groups.
    pub(super) previous: Option<(Arc<dyn LogFile>, u64)>,
}

impl Wal {
    pub(super) fn spawn_spare(&mut self, id: u64) {
        if !self.background {
            return;
        }
        let fs = self.fs.clone();
        let dir = self.dir.clone();
        let size = self.segment_size;
        let spawned = std::thread::Builder::new()
            .name("handover-segment".into())
            .spawn(move || create_segment(fs.as_ref(), &dir, id, size).map(|f| (id, f)));
        // Without a thread the next rotation creates the segment itself.
        self.spare = spawned.ok();
    }

    /// Makes segment `id` the active one.
    pub(super) fn rotate(&mut self, id: u64, files: &Files) -> Result<(), StoreError> {
        let spare = match self.spare.take() {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(StoreError::Backend("segment thread failed".into())))
                .ok()
                .filter(|(spare_id, _)| *spare_id == id),
            None => None,
        };
        let file = match spare {
            Some((_, f)) => f,
            None => create_segment(self.fs.as_ref(), &self.dir, id, self.segment_size)?,
        };
        files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, file.clone());
        let left = std::mem::replace(&mut self.active, (id, file));
        if let Some((older, from)) = self.previous.replace((left.1, self.uncached_below)) {
            older.drop_cache(from, None);
        }
        self.uncached_below = 0;
        self.spawn_spare(id + 1);
        Ok(())
    }

    /// Writes one group record at its place and syncs it.
    pub(super) fn write(&mut self, group: &Group) -> Result<(), StoreError> {
        let file = &self.active.1;
        file.write_all_at(&group.record, group.start)
            .map_err(backend_err)?;
        file.sync_data().map_err(backend_err)?;
        self.last_written = group.last_lsn;
        self.uncache(group.start + group.record.len() as u64);
        Ok(())
    }

    /// Hands the kernel back the page-cache pages of the synced log more than
    /// [`LOG_CACHE_WINDOW`] behind `end`, the end of the group just written.
    ///
    /// Every group goes to log pages never written before, so without this the page cache
    /// grows by the whole log and each group takes fresh pages from the kernel. On a virtual
    /// machine that hands free memory back to its host (a balloon with free page reporting,
    /// as on the machine in docs/PERFORMANCE.md), a fresh page costs a fault in the host on
    /// first write; handed back, the same pages serve the next groups. The window keeps
    /// recent envelopes in memory for the fetch that usually follows their event. Synced
    /// pages are clean, so this drops nothing that is not on disk; reading an older body
    /// reads the disk.
    pub(super) fn uncache(&mut self, end: u64) {
        let below = end.saturating_sub(LOG_CACHE_WINDOW);
        if below >= self.uncached_below + LOG_UNCACHE_STEP {
            self.active
                .1
                .drop_cache(self.uncached_below, Some(below - self.uncached_below));
            self.uncached_below = below;
        }
        if end >= LOG_CACHE_WINDOW
            && let Some((older, from)) = self.previous.take()
        {
            older.drop_cache(from, None);
        }
    }
}

impl LogBackend {
    /// Writes and syncs the collected group, then applies its keyspace writes to sled.
    pub(super) fn commit(&self, wal: &mut Wal) -> Result<(), StoreError> {
        let group = {
            let mut pending = self.lock_pending();
            if pending.failed {
                return Err(StoreError::Backend(
                    "an earlier log write failed; restart the relay".into(),
                ));
            }
            pending.freeze()?
        };
        let Some(group) = group else {
            return Ok(());
        };
        if group.segment != wal.active.0 {
            // Every group of the segment being left is in sled: checkpoint it in the
            // background, then write to the next segment.
            let left = wal.active.0;
            wal.rotate(group.segment, &self.files)
                .and_then(|()| wal.start_checkpoint(&self.db, left + 1, &self.checkpointed_below))
                .map_err(|e| self.fail(e))?;
            self.active_segment.store(group.segment, Ordering::SeqCst);
        }
        wal.write(&group).map_err(|e| self.fail(e))?;
        let Group {
            record, has_writes, ..
        } = group;
        self.lock_pending().written(record);
        if has_writes {
            loop {
                let Some((lsn, writes)) = self.lock_pending().frozen.front().cloned() else {
                    break;
                };
                self.db.apply(lsn, &writes).map_err(|e| self.fail(e))?;
                self.lock_pending().frozen.pop_front();
            }
        }
        Ok(())
    }
}
