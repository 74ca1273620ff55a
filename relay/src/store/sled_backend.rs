//! The sled backend, made durable by a write-ahead log that the relay `fdatasync`s itself.
//!
//! # Why not sled's own flush
//!
//! sled 0.34's `Db::flush` writes its log buffers with `pwrite` and then, on Linux, calls
//! `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on the written range
//! (`pagecache/iobuf.rs`). `sync_file_range` starts and waits for write-back of those pages but
//! does not flush the drive's volatile write cache and does not persist file metadata such as a
//! grown file size, so data it "flushed" can be lost on power failure. Large pages (over
//! `segment_size / 4`) go to separate files under `blobs/` that sled writes without any sync
//! (`pagecache/blob_io.rs`), and snapshot renames are not followed by a directory sync. Calling
//! `flush` on every group commit is also slow (it blocks on write-back of whole buffers).
//!
//! # What this backend does
//!
//! - Every batch gets a sequence number, is applied to sled (in memory, atomically, together
//!   with that number under a reserved key) and, under the same lock, appended to an in-memory
//!   log buffer, so the log order is the apply order.
//! - [`KvBackend::sync`] (one call per group commit) frames the buffered batches as one record
//!   (`crc32 | len | epoch | payload`), writes it into the active one of two preallocated log
//!   files (`wal-0`, `wal-1`) and calls `fdatasync` on it. The files are preallocated with
//!   zeros on creation and written in place, so `fdatasync` never has to commit a size change.
//! - When the active file is full, the other file starts a new generation (a new epoch in its
//!   header, synced) and a background thread *checkpoints*: it makes sled's own files durable
//!   (`flush`, then `fdatasync` of `db`, of new files in the data directory and `blobs/`, and
//!   `fsync` of the directories whose entries changed). A file is reused only after the
//!   checkpoint covering it has finished. Open and shutdown checkpoint synchronously.
//! - On open, the records of both files (each up to its first torn or damaged record, which
//!   was never acknowledged) are replayed in sequence order, skipping the batches sled already
//!   holds: sled recovers a consistent prefix of its batches, which may end before or after the
//!   log's last durable record, and replaying only what it lacks keeps the state a consistent
//!   prefix that contains every acknowledged batch.
//!
//! When `sync` returns, every batch applied before it is on stable storage, given a drive that
//! honours cache flushes (see docs/OPERATIONS.md, "Durability").

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::StoreError;
use super::kv::{Batch, Entries, KvBackend};

/// sled segment size: large enough that envelopes and blob chunks (256 KiB) stay in sled's log
/// instead of its unsynced side files (the threshold is a quarter of a segment).
const SEGMENT_SIZE: usize = 4 * 1024 * 1024;

/// Default size of the preallocated write-ahead log. A full log forces a checkpoint.
pub const DEFAULT_WAL_SIZE: u64 = 64 * 1024 * 1024;
/// Smallest log size accepted.
pub const MIN_WAL_SIZE: u64 = 1024 * 1024;
/// Bytes reserved for the log header.
const WAL_HEADER_LEN: u64 = 4096;
/// Log header magic.
const WAL_MAGIC: &[u8; 8] = b"HOVRWAL1";
/// Record header: crc32, payload length, epoch.
const RECORD_HEADER_LEN: usize = 4 + 4 + 8;
/// Names of the two log files in the store directory.
const WAL_FILES: [&str; 2] = ["wal-0", "wal-1"];
/// sled key holding the sequence number of the last batch applied (outside every table).
const LSN_KEY: &[u8] = b"\xff~lsn";

fn backend_err(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320).
fn crc32(parts: &[&[u8]]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for part in parts {
        for &b in *part {
            crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
        }
    }
    !crc
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Keys and values are bounded far below 4 GiB by the protocol limits.
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

fn encode_batch(lsn: u64, batch: &Batch, out: &mut Vec<u8>) {
    out.extend_from_slice(&lsn.to_be_bytes());
    put_u32(out, batch.len());
    for (k, v) in batch {
        put_u32(out, k.len());
        out.extend_from_slice(k);
        match v {
            Some(v) => {
                out.push(1);
                put_u32(out, v.len());
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(StoreError::Corrupt);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<usize, StoreError> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| StoreError::Corrupt)?;
        Ok(u32::from_be_bytes(b) as usize)
    }
}

/// Decodes the batches (with their sequence numbers) of one log record payload.
fn decode_batches(payload: &[u8]) -> Result<Vec<(u64, Batch)>, StoreError> {
    let mut r = Reader(payload);
    let mut batches = Vec::new();
    while !r.0.is_empty() {
        let lsn: [u8; 8] = r.take(8)?.try_into().map_err(|_| StoreError::Corrupt)?;
        let lsn = u64::from_be_bytes(lsn);
        let n = r.u32()?;
        let mut batch = Batch::with_capacity(n.min(4096));
        for _ in 0..n {
            let klen = r.u32()?;
            let key = r.take(klen)?.to_vec();
            let value = match r.take(1)?[0] {
                0 => None,
                1 => {
                    let vlen = r.u32()?;
                    Some(r.take(vlen)?.to_vec())
                }
                _ => return Err(StoreError::Corrupt),
            };
            batch.push((key, value));
        }
        batches.push((lsn, batch));
    }
    Ok(batches)
}

/// The on-disk [`KvBackend`]: one sled tree plus the write-ahead log.
pub struct SledBackend {
    db: sled::Db,
    /// Batches applied since the last log write, encoded, and the next batch sequence number.
    /// Appended under this lock together with the sled apply, so log order equals apply order.
    pending: Mutex<Pending>,
    wal: Mutex<WalFile>,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    next_lsn: u64,
}

/// One preallocated log file.
struct LogFile {
    file: File,
    epoch: u64,
}

/// The two log files: one receives records while the other's content is being checkpointed
/// into sled in the background, so a full log does not pause commits (unless the second fills
/// before the checkpoint ends).
struct WalFile {
    files: [LogFile; 2],
    active: usize,
    size: u64,
    offset: u64,
    sled_files: Arc<Mutex<SledFiles>>,
    /// The checkpoint covering the inactive file, if one is running.
    running: Option<std::thread::JoinHandle<Result<(), StoreError>>>,
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

impl SledFiles {
    /// Makes everything applied to sled so far durable.
    fn checkpoint(&mut self, db: &sled::Db) -> Result<(), StoreError> {
        db.flush().map_err(backend_err)?;
        self.log.sync_data().map_err(backend_err)?;
        let SyncedFiles { root, blobs } = &mut self.synced;
        sync_dir(&self.dir.join("blobs"), blobs)?;
        sync_dir(&self.dir, root)
    }
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

fn header(epoch: u64) -> Vec<u8> {
    let mut h = WAL_MAGIC.to_vec();
    h.extend_from_slice(&epoch.to_be_bytes());
    let crc = crc32(&[&h]);
    h.extend_from_slice(&crc.to_be_bytes());
    h
}

fn read_header(file: &File) -> Result<u64, StoreError> {
    let mut h = [0u8; 20];
    file.read_exact_at(&mut h, 0).map_err(backend_err)?;
    let (body, crc) = h.split_at(16);
    if &body[..8] != WAL_MAGIC || crc32(&[body]).to_be_bytes() != crc {
        return Err(StoreError::Backend(
            "write-ahead log header is damaged; refusing to start (see docs/OPERATIONS.md)".into(),
        ));
    }
    let epoch: [u8; 8] = body[8..16].try_into().map_err(|_| StoreError::Corrupt)?;
    Ok(u64::from_be_bytes(epoch))
}

impl LogFile {
    /// Opens (or creates and preallocates) one log file.
    fn open(dir: &Path, name: &str, size: u64) -> Result<Self, StoreError> {
        let path = dir.join(name);
        let exists = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(backend_err)?;
        let len = file.metadata().map_err(backend_err)?.len();
        if !exists || len < size {
            // Preallocate with real zero blocks (not a sparse file) so that later in-place
            // writes need no metadata commit.
            let zeros = vec![0u8; 1024 * 1024];
            let mut at = len;
            while at < size {
                file.write_all_at(&zeros, at).map_err(backend_err)?;
                at += zeros.len() as u64;
            }
            if !exists {
                file.write_all_at(&header(0), 0).map_err(backend_err)?;
            }
            file.sync_all().map_err(backend_err)?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(backend_err)?;
        }
        let epoch = read_header(&file)?;
        Ok(Self { file, epoch })
    }

    /// Records of this file's epoch, in order, up to the first torn or damaged one.
    fn records(&self, size: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        let mut at = WAL_HEADER_LEN;
        let mut head = [0u8; RECORD_HEADER_LEN];
        while at + RECORD_HEADER_LEN as u64 <= size {
            self.file
                .read_exact_at(&mut head, at)
                .map_err(backend_err)?;
            let crc = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as u64;
            let epoch: [u8; 8] = head[8..16].try_into().map_err(|_| StoreError::Corrupt)?;
            let end = at + RECORD_HEADER_LEN as u64 + len;
            if u64::from_be_bytes(epoch) != self.epoch || len == 0 || end > size {
                break;
            }
            let mut payload = vec![0u8; len as usize];
            self.file
                .read_exact_at(&mut payload, at + RECORD_HEADER_LEN as u64)
                .map_err(backend_err)?;
            if crc32(&[&head[4..], &payload]) != crc {
                break;
            }
            out.push(payload);
            at = end;
        }
        Ok(out)
    }

    /// Starts a new, empty generation of this file: older records no longer count.
    fn reset(&mut self, epoch: u64) -> Result<(), StoreError> {
        self.file
            .write_all_at(&header(epoch), 0)
            .map_err(backend_err)?;
        self.file.sync_data().map_err(backend_err)?;
        self.epoch = epoch;
        Ok(())
    }
}

impl WalFile {
    fn open(dir: &Path, log: File, size: u64) -> Result<Self, StoreError> {
        let size = size.max(MIN_WAL_SIZE);
        let files = [
            LogFile::open(dir, WAL_FILES[0], size)?,
            LogFile::open(dir, WAL_FILES[1], size)?,
        ];
        // Files are never shrunk: use the smaller actual size of the two.
        let actual = files
            .iter()
            .map(|f| f.file.metadata().map(|m| m.len()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend_err)?;
        let size = actual.into_iter().min().unwrap_or(size).max(MIN_WAL_SIZE);
        Ok(Self {
            files,
            active: 0,
            size,
            offset: WAL_HEADER_LEN,
            sled_files: Arc::new(Mutex::new(SledFiles {
                dir: dir.to_path_buf(),
                log,
                synced: SyncedFiles::default(),
            })),
            running: None,
        })
    }

    /// All batches in both files, ordered by sequence number.
    fn batches(&self) -> Result<Vec<(u64, Batch)>, StoreError> {
        let mut all = Vec::new();
        for file in &self.files {
            for payload in file.records(self.size)? {
                all.extend(decode_batches(&payload)?);
            }
        }
        all.sort_by_key(|(lsn, _)| *lsn);
        Ok(all)
    }

    fn next_epoch(&self) -> u64 {
        self.files[0].epoch.max(self.files[1].epoch) + 1
    }

    fn join_running(&mut self) -> Result<(), StoreError> {
        match self.running.take() {
            Some(handle) => handle
                .join()
                .map_err(|_| StoreError::Backend("checkpoint thread failed".into()))?,
            None => Ok(()),
        }
    }

    /// Synchronous checkpoint: sled made durable, both files emptied.
    fn checkpoint(&mut self, db: &sled::Db) -> Result<(), StoreError> {
        self.join_running()?;
        self.sled_files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .checkpoint(db)?;
        let epoch = self.next_epoch();
        let inactive = 1 - self.active;
        self.files[inactive].reset(epoch)?;
        self.files[self.active].reset(epoch + 1)?;
        self.offset = WAL_HEADER_LEN;
        Ok(())
    }

    /// Switches to the other file and checkpoints the one just filled in the background.
    fn rotate(&mut self, db: &sled::Db) -> Result<(), StoreError> {
        // The other file may be reused only once the checkpoint covering it has finished.
        self.join_running()?;
        let next = 1 - self.active;
        let epoch = self.next_epoch();
        self.files[next].reset(epoch)?;
        self.active = next;
        self.offset = WAL_HEADER_LEN;
        // Every batch in the file just left is already applied to sled, so a flush started now
        // covers all of it.
        let db = db.clone();
        let sled_files = self.sled_files.clone();
        let handle = std::thread::Builder::new()
            .name("handover-checkpoint".into())
            .spawn(move || {
                sled_files
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .checkpoint(&db)
            })
            .map_err(backend_err)?;
        self.running = Some(handle);
        Ok(())
    }

    /// Appends one record holding `payload` and syncs it.
    fn append(&mut self, db: &sled::Db, payload: &[u8]) -> Result<(), StoreError> {
        let total = (RECORD_HEADER_LEN + payload.len()) as u64;
        if self.offset + total > self.size {
            self.rotate(db)?;
            if self.offset + total > self.size {
                // Larger than a whole log file: the batches are in sled, so wait for the
                // checkpoint just started, which covers them.
                return self.join_running();
            }
        }
        let log = &self.files[self.active];
        let mut record = Vec::with_capacity(total as usize);
        record.extend_from_slice(&[0; 4]);
        put_u32(&mut record, payload.len());
        record.extend_from_slice(&log.epoch.to_be_bytes());
        record.extend_from_slice(payload);
        let crc = crc32(&[&record[4..]]);
        record[..4].copy_from_slice(&crc.to_be_bytes());
        log.file
            .write_all_at(&record, self.offset)
            .map_err(backend_err)?;
        log.file.sync_data().map_err(backend_err)?;
        self.offset += total;
        Ok(())
    }
}

impl SledBackend {
    /// Opens (or creates) the store in `dir` with the default log size.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_log_size(dir, DEFAULT_WAL_SIZE)
    }

    /// Opens (or creates) the store in `dir`, replays the write-ahead log and checkpoints. The
    /// log is preallocated to `wal_size` bytes (never shrunk).
    pub fn open_with_log_size(dir: &Path, wal_size: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend_err)?;
        let db = sled::Config::new()
            .path(dir)
            .segment_size(SEGMENT_SIZE)
            // Durability comes from the write-ahead log; sled's own periodic flush would only
            // add write-back work. Favour throughput over compactness (less rewriting).
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(backend_err)?;
        let log = File::open(dir.join("db")).map_err(backend_err)?;
        let mut wal = WalFile::open(dir, log, wal_size)?;
        // sled recovers a prefix of its own batch sequence; that prefix may end before or after
        // the log's last durable record (sled writes full buffers in the background). Replay
        // only the batches sled does not have, so the result is always a consistent prefix
        // that holds every acknowledged batch.
        let mut last = match db.get(LSN_KEY).map_err(backend_err)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt)?),
            None => 0,
        };
        let mut replayed = 0u64;
        for (lsn, batch) in wal.batches()? {
            if lsn > last {
                apply_to_sled(&db, lsn, batch)?;
                last = lsn;
                replayed += 1;
            }
        }
        wal.checkpoint(&db)?;
        if replayed > 0 {
            tracing::info!(batches = replayed, "replayed write-ahead log");
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(backend_err)?;
        }
        Ok(Self {
            db,
            pending: Mutex::new(Pending {
                bytes: Vec::new(),
                next_lsn: last + 1,
            }),
            wal: Mutex::new(wal),
        })
    }

    /// Makes sled's own files durable and empties the log (done on open and shutdown).
    fn checkpoint_now(&self) -> Result<(), StoreError> {
        let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        // Everything pending is already in sled; the checkpoint makes it durable.
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes
            .clear();
        wal.checkpoint(&self.db)
    }
}

impl Drop for SledBackend {
    fn drop(&mut self) {
        // Do not leave a checkpoint thread holding the database open behind us.
        let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = wal.join_running() {
            tracing::error!(error = %err, "background checkpoint failed");
        }
    }
}

fn apply_to_sled(db: &sled::Db, lsn: u64, batch: Batch) -> Result<(), StoreError> {
    let mut b = sled::Batch::default();
    b.insert(LSN_KEY, &lsn.to_be_bytes());
    for (k, v) in batch {
        match v {
            Some(v) => b.insert(k, v),
            None => b.remove(k),
        }
    }
    db.apply_batch(b).map_err(backend_err)
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
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let lsn = pending.next_lsn;
        let before = pending.bytes.len();
        encode_batch(lsn, &batch, &mut pending.bytes);
        if let Err(err) = apply_to_sled(&self.db, lsn, batch) {
            pending.bytes.truncate(before);
            return Err(err);
        }
        pending.next_lsn += 1;
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        // The log lock orders writers; the pending buffer is swapped under it so that records
        // reach the file in apply order.
        let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        let payload =
            std::mem::take(&mut self.pending.lock().unwrap_or_else(|e| e.into_inner()).bytes);
        if payload.is_empty() {
            return Ok(());
        }
        wal.append(&self.db, &payload)
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        self.checkpoint_now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reopens a store dropped a moment ago: sled's worker threads may hold its file lock for
    /// a short while after the `Db` handle is gone.
    fn reopen(dir: &Path) -> SledBackend {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledBackend::open_with_log_size(dir, MIN_WAL_SIZE) {
                Ok(b) => return b,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(e.to_string().contains("lock"), "{e}");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn crc32_known_answer() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }

    proptest::proptest! {
        #[test]
        fn log_payload_decoding_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_batches(&bytes);
        }

        #[test]
        fn log_payload_round_trips(
            batches in proptest::collection::vec(
                proptest::collection::vec(
                    (
                        proptest::collection::vec(proptest::num::u8::ANY, 0..8),
                        proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..8)),
                    ),
                    0..4,
                ),
                0..4,
            )
        ) {
            let mut out = Vec::new();
            for (i, b) in batches.iter().enumerate() {
                encode_batch(i as u64, b, &mut out);
            }
            let back = decode_batches(&out).unwrap();
            let expected: Vec<(u64, Batch)> =
                batches.into_iter().enumerate().map(|(i, b)| (i as u64, b)).collect();
            proptest::prop_assert_eq!(back, expected);
        }
    }

    #[test]
    fn batches_round_trip() {
        let a: Batch = vec![
            (b"k1".to_vec(), Some(b"v1".to_vec())),
            (b"k2".to_vec(), None),
        ];
        let b: Batch = vec![(vec![], Some(vec![]))];
        let mut out = Vec::new();
        encode_batch(1, &a, &mut out);
        encode_batch(2, &b, &mut out);
        assert_eq!(decode_batches(&out).unwrap(), vec![(1, a), (2, b)]);
        assert!(decode_batches(&out[..out.len() - 1]).is_err());
    }

    #[test]
    fn log_replay_ignores_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let backend = SledBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap();
            backend
                .apply(vec![(b"a".to_vec(), Some(b"1".to_vec()))])
                .unwrap();
            backend.sync().unwrap();
            backend
                .apply(vec![
                    (b"b".to_vec(), Some(b"2".to_vec())),
                    (b"a".to_vec(), None),
                ])
                .unwrap();
            backend.sync().unwrap();
            // A torn, never-acknowledged record after the last good one.
            let wal = backend.wal.lock().unwrap();
            wal.files[wal.active]
                .file
                .write_all_at(&[0xAB; 40], wal.offset)
                .unwrap();
        }
        // Reopening replays the log (only what sled does not already hold).
        let backend = reopen(dir.path());
        assert_eq!(backend.get(b"a").unwrap(), None);
        assert_eq!(backend.get(b"b").unwrap(), Some(b"2".to_vec()));
        // After the open checkpoint, old records are ignored.
        assert!(backend.wal.lock().unwrap().batches().unwrap().is_empty());
    }

    #[test]
    fn sled_ahead_of_the_log_is_not_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let backend = SledBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap();
            backend
                .apply(vec![(b"a".to_vec(), Some(b"1".to_vec()))])
                .unwrap();
            backend.sync().unwrap();
            // Later batches that reached sled's files but not the log (never acknowledged).
            backend
                .apply(vec![(b"a".to_vec(), Some(b"2".to_vec()))])
                .unwrap();
            backend
                .apply(vec![(b"b".to_vec(), Some(b"2".to_vec()))])
                .unwrap();
            backend.db.flush().unwrap();
        }
        let backend = reopen(dir.path());
        // A consistent prefix: not the old `a` next to the new `b`.
        assert_eq!(backend.get(b"a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(backend.get(b"b").unwrap(), Some(b"2".to_vec()));
    }

    #[test]
    fn full_log_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap();
        let epoch = backend.wal.lock().unwrap().next_epoch();
        let value = vec![7u8; 200 * 1024];
        for n in 0..20u32 {
            backend
                .apply(vec![(n.to_be_bytes().to_vec(), Some(value.clone()))])
                .unwrap();
            backend.sync().unwrap();
        }
        assert!(
            backend.wal.lock().unwrap().next_epoch() > epoch + 2,
            "log files rotated"
        );
        drop(backend);
        let backend = reopen(dir.path());
        for n in 0..20u32 {
            assert_eq!(
                backend.get(&n.to_be_bytes()).unwrap().as_ref(),
                Some(&value)
            );
        }
    }
}
