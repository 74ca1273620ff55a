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
//! - A sealed, checkpointed segment is deleted as soon as it and every older segment hold no
//!   queued envelope; deleting only from the oldest end keeps every removal record that an
//!   older enqueue record needs. The store copies the live envelopes of a mostly dead oldest
//!   segment forward ([`KvBackend::compaction_candidate`]).
//! - On open, sled recovers a prefix of its batches; every segment is read in order up to its
//!   first torn or damaged record (only the very last record written can be torn: it was never
//!   acknowledged), keyspace batches newer than sled's LSN are replayed into sled, the envelope
//!   records are handed to the store ([`KvBackend::take_recovered`]), sled is checkpointed and a
//!   fresh segment becomes active. A damaged record followed by valid ones in a later segment
//!   means acknowledged data was damaged: the relay refuses to start.
//!
//! A failed `pwrite`, `fdatasync` or sled apply poisons the backend: every later call fails
//! until the relay is restarted and recovers from what is on disk (after a failed `fdatasync`
//! the page cache cannot be trusted to say what is durable).
//!
//! When `sync` returns, every batch applied before it is on stable storage, given a drive that
//! honours cache flushes (see docs/OPERATIONS.md, "Durability").

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use super::kv::{Batch, BodyRef, Candidate, Entries, KvBackend, LogOp, Recovered};
use super::{Id, StoreError};

/// sled segment size: large enough that blob chunks (256 KiB) stay in sled's log instead of its
/// unsynced side files (the threshold is a quarter of a segment).
const SLED_SEGMENT_SIZE: usize = 4 * 1024 * 1024;

/// Default nominal size of a log segment.
pub const DEFAULT_WAL_SIZE: u64 = 64 * 1024 * 1024;
/// Smallest segment size accepted.
pub const MIN_WAL_SIZE: u64 = 1024 * 1024;
/// Bytes reserved for a segment header; records start here.
const SEG_HEADER_LEN: u64 = 4096;
/// Segment header magic.
const SEG_MAGIC: &[u8; 8] = b"HOVRSEG1";
/// Encoded header: magic, segment number, crc32.
const SEG_HEADER_BYTES: usize = 8 + 8 + 4;
/// Record header: crc32, payload length, segment number.
const RECORD_HEADER_LEN: u64 = 4 + 4 + 8;
/// How much of the log behind the last group written stays in the page cache once synced.
/// Older pages are handed back to the kernel (see [`Wal::uncache`]).
const LOG_CACHE_WINDOW: u64 = 4 * 1024 * 1024;
/// Pages are handed back in steps of at least this much, one system call per step.
const LOG_UNCACHE_STEP: u64 = 256 * 1024;
/// sled key holding the LSN of the last batch sled holds (outside every table).
const LSN_KEY: &[u8] = b"\xff~lsn";

const OP_ENQUEUE: u8 = 1;
const OP_REMOVE: u8 = 2;
const OP_DROP: u8 = 3;

fn backend_err(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

fn segment_name(id: u64) -> String {
    format!("seg-{id:016x}")
}

fn segment_id(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn put_u32(out: &mut Vec<u8>, n: usize) -> Result<(), StoreError> {
    let n = u32::try_from(n).map_err(|_| StoreError::Backend("record too large".into()))?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

/// Encodes one batch at the end of `out`; returns, for each enqueue, the position of its body
/// within `out`.
fn encode_batch(
    lsn: u64,
    batch: &Batch,
    ops: &[LogOp<'_>],
    out: &mut Vec<u8>,
) -> Result<Vec<(usize, u32)>, StoreError> {
    out.extend_from_slice(&lsn.to_be_bytes());
    put_u32(out, batch.len())?;
    for (k, v) in batch {
        put_u32(out, k.len())?;
        out.extend_from_slice(k);
        match v {
            Some(v) => {
                out.push(1);
                put_u32(out, v.len())?;
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
    }
    put_u32(out, ops.len())?;
    let mut bodies = Vec::new();
    for op in ops {
        match op {
            LogOp::Enqueue {
                recv_id,
                seq,
                envelope_id,
                expires_at,
                ciphertext,
            } => {
                out.push(OP_ENQUEUE);
                out.extend_from_slice(recv_id);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(envelope_id);
                out.extend_from_slice(&expires_at.to_be_bytes());
                put_u32(out, ciphertext.len())?;
                bodies.push((out.len(), ciphertext.len() as u32));
                out.extend_from_slice(ciphertext);
            }
            LogOp::Remove { recv_id, seq } => {
                out.push(OP_REMOVE);
                out.extend_from_slice(recv_id);
                out.extend_from_slice(&seq.to_be_bytes());
            }
            LogOp::DropMailbox { recv_id } => {
                out.push(OP_DROP);
                out.extend_from_slice(recv_id);
            }
        }
    }
    Ok(bodies)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self.pos.checked_add(n).ok_or(StoreError::Corrupt)?;
        let out = self.buf.get(self.pos..end).ok_or(StoreError::Corrupt)?;
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<usize, StoreError> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| StoreError::Corrupt)?;
        Ok(u32::from_be_bytes(b) as usize)
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| StoreError::Corrupt)?;
        Ok(u64::from_be_bytes(b))
    }

    fn id(&mut self) -> Result<Id, StoreError> {
        self.take(16)?.try_into().map_err(|_| StoreError::Corrupt)
    }
}

/// One decoded batch: LSN, keyspace writes, envelope records.
type Decoded = (u64, Batch, Vec<Recovered>);

/// Decodes the batches of one record payload that starts at byte `at` of `segment`.
fn decode_batches(payload: &[u8], segment: u64, at: u64) -> Result<Vec<Decoded>, StoreError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let mut out = Vec::new();
    while r.pos < payload.len() {
        let lsn = r.u64()?;
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
        let n = r.u32()?;
        let mut ops = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let op = match r.take(1)?[0] {
                OP_ENQUEUE => {
                    let recv_id = r.id()?;
                    let seq = r.u64()?;
                    let envelope_id = r.id()?;
                    let expires_at = r.u64()?;
                    let len = r.u32()?;
                    let offset = at + r.pos as u64;
                    r.take(len)?;
                    Recovered::Enqueue {
                        recv_id,
                        seq,
                        envelope_id,
                        expires_at,
                        body: BodyRef {
                            segment,
                            offset,
                            len: len as u32,
                        },
                    }
                }
                OP_REMOVE => Recovered::Remove {
                    recv_id: r.id()?,
                    seq: r.u64()?,
                },
                OP_DROP => Recovered::DropMailbox { recv_id: r.id()? },
                _ => return Err(StoreError::Corrupt),
            };
            ops.push(op);
        }
        out.push((lsn, batch, ops));
    }
    Ok(out)
}

/// One key-value pair read from sled.
type KeyValue = (Vec<u8>, Vec<u8>);

/// Writes of one or more batches in apply order; the last write of a key wins.
type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A group record being written.
struct Inflight {
    segment: u64,
    start: u64,
    record: Arc<Vec<u8>>,
}

impl Inflight {
    fn body(&self, body: &BodyRef) -> Option<Vec<u8>> {
        slice_at(&self.record, self.segment, self.start, body)
    }
}

/// The bytes of `body` if it lies in a record (header included) written at (`segment`,
/// `start`).
fn slice_at(record: &[u8], segment: u64, start: u64, body: &BodyRef) -> Option<Vec<u8>> {
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
const SPARE_RECORD_BYTES: usize = 1 << 20;

/// An empty record buffer: room for the header, which [`Pending::freeze`] fills in.
fn new_record(mut buf: Vec<u8>) -> Vec<u8> {
    buf.clear();
    buf.resize(RECORD_HEADER_LEN as usize, 0);
    buf
}

/// Everything between `apply_logged` and the disk, under one lock.
struct Pending {
    /// The record of the group being collected: a header left blank until the group is
    /// frozen, then the payload. Built in place, so the log write copies nothing.
    bytes: Vec<u8>,
    /// CRC-32 of the payload so far (the header's CRC covers `len | segment | payload`).
    payload_crc: crc32fast::Hasher,
    /// An emptied record buffer from the last write, reused for the next group so that a
    /// busy relay does not grow a new buffer (and fault in its pages) for every group.
    spare: Vec<u8>,
    /// Where that group's record will be written.
    segment: u64,
    start: u64,
    next_lsn: u64,
    /// Keyspace writes of the group being collected.
    active: Overlay,
    /// The group being written, until its `pwrite` has returned.
    inflight: Option<Inflight>,
    /// Keyspace writes of groups taken by `sync` (oldest first, with the LSN of each group's
    /// last batch), until sled holds them; reads still see them here.
    frozen: VecDeque<(u64, Arc<Overlay>)>,
    /// Set by a failed write, sync or sled apply; see the module docs.
    failed: bool,
    segment_size: u64,
}

/// A frozen group, ready to be written.
struct Group {
    segment: u64,
    start: u64,
    /// The whole record, header included.
    record: Arc<Vec<u8>>,
    last_lsn: u64,
    has_writes: bool,
}

impl Pending {
    /// The newest unapplied write of `key`, if any: `Some(None)` is a pending delete.
    fn lookup(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if let Some(v) = self.active.get(key) {
            return Some(v.clone());
        }
        self.frozen
            .iter()
            .rev()
            .find_map(|(_, group)| group.get(key).cloned())
    }

    /// The unapplied writes with `start <= key < end`, newest write per key.
    fn range(&self, start: &[u8], end: &[u8]) -> Overlay {
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
    fn freeze(&mut self) -> Result<Option<Group>, StoreError> {
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
    fn written(&mut self, record: Arc<Vec<u8>>) {
        self.inflight = None;
        if let Ok(buf) = Arc::try_unwrap(record)
            && buf.capacity() <= SPARE_RECORD_BYTES
        {
            self.spare = buf;
        }
    }
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
    /// Makes everything applied to sled so far durable, recording `lsn` as covered.
    fn checkpoint(&mut self, db: &sled::Db, lsn: u64) -> Result<(), StoreError> {
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

fn read_lsn(db: &sled::Db) -> Result<u64, StoreError> {
    Ok(match db.get(LSN_KEY).map_err(backend_err)? {
        Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt)?),
        None => 0,
    })
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

fn sync_dir_entries(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(backend_err)
}

/// `fdatasync`s new regular files in `dir` and `fsync`s `dir` if its entries changed.
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
    sync_dir_entries(dir)?;
    *known = now;
    Ok(())
}

/// The log files of the previous store format (envelopes in sled).
const OLD_WAL_FILES: [&str; 2] = ["wal-0", "wal-1"];
/// Magic of an old log file header (magic, epoch, crc32; records from byte 4096, each
/// `crc32 | len | epoch | payload`).
const OLD_WAL_MAGIC: &[u8; 8] = b"HOVRWAL1";
/// Tables of the previous format that held envelopes: queue entries, envelope-id index, and
/// the envelope kind of the expiry index.
const OLD_T_QUEUE: u8 = b'Q';
const OLD_T_ENV: u8 = b'E';
const OLD_T_EXPIRY: u8 = b'X';
const OLD_X_ENVELOPE: u8 = 1;
/// Envelopes moved per migration step.
const OLD_MIGRATE_STEP: usize = 1_000;

/// A queue entry of the previous format.
#[derive(Clone, PartialEq, prost::Message)]
struct OldQueuedRec {
    #[prost(bytes = "vec", tag = "1")]
    envelope_id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    expires_at: u64,
    #[prost(bytes = "vec", tag = "3")]
    ciphertext: Vec<u8>,
}

/// Checks that the old log files hold no record of their current generation, i.e. that the
/// previous version shut down cleanly (its shutdown checkpoint put everything into sled).
fn old_format_is_clean(dir: &Path) -> Result<(), StoreError> {
    for name in OLD_WAL_FILES {
        let file = match File::open(dir.join(name)) {
            Ok(f) => f,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(backend_err(err)),
        };
        let size = file.metadata().map_err(backend_err)?.len();
        let mut h = [0u8; 20];
        file.read_exact_at(&mut h, 0).map_err(backend_err)?;
        if &h[..8] != OLD_WAL_MAGIC || crc32(&[&h[..16]]).to_be_bytes() != h[16..20] {
            return Err(StoreError::Backend(
                "the old-format log header is damaged; refusing to start (see \
                 docs/OPERATIONS.md, \"Upgrading the store format\")"
                    .into(),
            ));
        }
        let epoch = &h[8..16];
        let mut head = [0u8; RECORD_HEADER_LEN as usize];
        if size < 4096 + RECORD_HEADER_LEN {
            continue;
        }
        file.read_exact_at(&mut head, 4096).map_err(backend_err)?;
        let len = u64::from(u32::from_be_bytes([head[4], head[5], head[6], head[7]]));
        if len == 0 || &head[8..16] != epoch || 4096 + RECORD_HEADER_LEN + len > size {
            continue;
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact_at(&mut payload, 4096 + RECORD_HEADER_LEN)
            .map_err(backend_err)?;
        if crc32(&[&head[4..], &payload]).to_be_bytes() == head[..4] {
            return Err(StoreError::Backend(
                "this store was written by the previous relay version and not shut down \
                 cleanly; start that version once and stop it with SIGTERM, then start this \
                 one (see docs/OPERATIONS.md, \"Upgrading the store format\")"
                    .into(),
            ));
        }
    }
    Ok(())
}

fn segment_header(id: u64) -> Vec<u8> {
    let mut h = SEG_MAGIC.to_vec();
    h.extend_from_slice(&id.to_be_bytes());
    let crc = crc32(&[&h]);
    h.extend_from_slice(&crc.to_be_bytes());
    h
}

/// Creates segment `id` at its full size (`set_len`: a sparse file whose unwritten part reads
/// as zeros), durably: temporary name, sync, rename, directory sync. Its size is fixed, so a
/// log `fdatasync` never commits a size change; it does commit the allocation of the blocks
/// the group wrote. Filling the segment with zeros instead (no allocation at sync time) was
/// measured slower at the tail: writing 64 MiB of zeros every few seconds at high rates
/// disturbed the foreground syncs on the same disk (docs/PERFORMANCE.md, "Segment
/// creation").
fn create_segment(dir: &Path, id: u64, size: u64) -> Result<File, StoreError> {
    let tmp = dir.join(format!("{}.tmp", segment_name(id)));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(backend_err)?;
    file.set_len(size).map_err(backend_err)?;
    file.write_all_at(&segment_header(id), 0)
        .map_err(backend_err)?;
    file.sync_all().map_err(backend_err)?;
    std::fs::rename(&tmp, dir.join(segment_name(id))).map_err(backend_err)?;
    sync_dir_entries(dir)?;
    Ok(file)
}

/// Checks a segment's header.
fn check_header(file: &File, id: u64) -> Result<(), StoreError> {
    let mut h = [0u8; SEG_HEADER_BYTES];
    file.read_exact_at(&mut h, 0).map_err(backend_err)?;
    if h[..] != segment_header(id)[..] {
        return Err(StoreError::Backend(
            "a log segment header is damaged; refusing to start (see docs/OPERATIONS.md)".into(),
        ));
    }
    Ok(())
}

/// A record read back: offset of its payload in the segment, payload.
type Record = (u64, Vec<u8>);

/// How reading a segment ended.
#[derive(Debug, PartialEq, Eq)]
enum SegmentEnd {
    /// Zeros (never written) or the end of the file.
    Clean,
    /// A record at this offset is torn or damaged.
    Torn(u64),
}

/// The records of one segment, in order, as (payload offset, payload), up to the first torn
/// or damaged one.
fn read_segment(file: &File, id: u64) -> Result<(Vec<Record>, SegmentEnd), StoreError> {
    let size = file.metadata().map_err(backend_err)?.len();
    let mut out = Vec::new();
    let mut at = SEG_HEADER_LEN;
    let mut head = [0u8; RECORD_HEADER_LEN as usize];
    while at + RECORD_HEADER_LEN <= size {
        file.read_exact_at(&mut head, at).map_err(backend_err)?;
        let crc = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let len = u64::from(u32::from_be_bytes([head[4], head[5], head[6], head[7]]));
        if head.iter().all(|b| *b == 0) {
            return Ok((out, SegmentEnd::Clean));
        }
        let seg: [u8; 8] = head[8..16].try_into().map_err(|_| StoreError::Corrupt)?;
        let end = at + RECORD_HEADER_LEN + len;
        if u64::from_be_bytes(seg) != id || len == 0 || end > size {
            return Ok((out, SegmentEnd::Torn(at)));
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact_at(&mut payload, at + RECORD_HEADER_LEN)
            .map_err(backend_err)?;
        if crc32(&[&head[4..], &payload]) != crc {
            return Ok((out, SegmentEnd::Torn(at)));
        }
        out.push((at + RECORD_HEADER_LEN, payload));
        at = end;
    }
    Ok((out, SegmentEnd::Clean))
}

/// The writer's side of the log, under the log lock (which orders group writes).
struct Wal {
    dir: PathBuf,
    segment_size: u64,
    /// The segment being written.
    active: (u64, Arc<File>),
    /// The next segment, being created.
    spare: Option<JoinHandle<Result<(u64, File), StoreError>>>,
    /// The running background checkpoint and the segment number below which it covers.
    running: Option<(u64, JoinHandle<Result<(), StoreError>>)>,
    sled_files: Arc<Mutex<SledFiles>>,
    /// LSN of the last group written.
    last_written: u64,
    /// Offset below which the active segment's pages were handed back to the kernel.
    uncached_below: u64,
    /// The segment before the active one, and the offset below which its pages were handed
    /// back, until the active segment has a window's worth of groups.
    previous: Option<(Arc<File>, u64)>,
}

impl Wal {
    fn spawn_spare(&mut self, id: u64) {
        let dir = self.dir.clone();
        let size = self.segment_size;
        let spawned = std::thread::Builder::new()
            .name("handover-segment".into())
            .spawn(move || create_segment(&dir, id, size).map(|f| (id, f)));
        // Without a thread the next rotation creates the segment itself.
        self.spare = spawned.ok();
    }

    /// Makes segment `id` the active one.
    fn rotate(
        &mut self,
        id: u64,
        files: &RwLock<BTreeMap<u64, Arc<File>>>,
    ) -> Result<(), StoreError> {
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
            None => create_segment(&self.dir, id, self.segment_size)?,
        };
        let file = Arc::new(file);
        files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, file.clone());
        let left = std::mem::replace(&mut self.active, (id, file));
        if let Some((older, from)) = self.previous.replace((left.1, self.uncached_below)) {
            drop_cached(&older, from, None);
        }
        self.uncached_below = 0;
        self.spawn_spare(id + 1);
        Ok(())
    }

    /// Starts a background checkpoint covering every segment below `below` (all their groups
    /// are applied to sled).
    fn start_checkpoint(
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

    fn join_checkpoint(&mut self, done: &AtomicU64) -> Result<(), StoreError> {
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

    /// Writes one group record at its place and syncs it.
    fn write(&mut self, group: &Group) -> Result<(), StoreError> {
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
    fn uncache(&mut self, end: u64) {
        let below = end.saturating_sub(LOG_CACHE_WINDOW);
        if below >= self.uncached_below + LOG_UNCACHE_STEP {
            drop_cached(
                &self.active.1,
                self.uncached_below,
                Some(below - self.uncached_below),
            );
            self.uncached_below = below;
        }
        if end >= LOG_CACHE_WINDOW
            && let Some((older, from)) = self.previous.take()
        {
            drop_cached(&older, from, None);
        }
    }
}

/// Advises the kernel that `len` bytes of `file` from `offset` (to the end if `None`) will
/// not be read soon, so that it drops their clean pages from the page cache. Advice only:
/// a failure changes nothing that matters and is ignored.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn drop_cached(file: &File, offset: u64, len: Option<u64>) {
    // `None` is "to the end" for fadvise too; a length of zero would mean the same.
    let len = match len {
        Some(0) => return,
        Some(n) => std::num::NonZeroU64::new(n),
        None => None,
    };
    let _ = rustix::fs::fadvise(file, offset, len, rustix::fs::Advice::DontNeed);
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn drop_cached(_file: &File, _offset: u64, _len: Option<u64>) {}

/// The on-disk [`KvBackend`]: sled plus the segment log.
pub struct SledBackend {
    db: sled::Db,
    pending: Mutex<Pending>,
    wal: Mutex<Wal>,
    /// Open segments, for reading bodies.
    files: RwLock<BTreeMap<u64, Arc<File>>>,
    /// Segments below this number have their keyspace writes checkpointed into sled.
    checkpointed_below: Arc<AtomicU64>,
    /// The segment being written.
    active_segment: AtomicU64,
    recovered: Mutex<Vec<Recovered>>,
    seq_floor: u64,
    segment_size: u64,
}

impl std::fmt::Debug for SledBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledBackend").finish_non_exhaustive()
    }
}

fn apply_to_sled(db: &sled::Db, lsn: u64, writes: &Overlay) -> Result<(), StoreError> {
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

impl SledBackend {
    /// Opens (or creates) the store in `dir` with the default segment size.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_log_size(dir, DEFAULT_WAL_SIZE)
    }

    /// Opens (or creates) the store in `dir`: recovers sled and the log (see the module docs)
    /// and starts a fresh segment of `segment_size` bytes.
    pub fn open_with_log_size(dir: &Path, segment_size: u64) -> Result<Self, StoreError> {
        let segment_size = segment_size.max(MIN_WAL_SIZE);
        std::fs::create_dir_all(dir).map_err(backend_err)?;
        let old_format = dir.join(OLD_WAL_FILES[0]).exists();
        if old_format {
            old_format_is_clean(dir)?;
        }
        let db = sled::Config::new()
            .path(dir)
            .segment_size(SLED_SEGMENT_SIZE)
            // Durability comes from the log; sled's own periodic flush would only add
            // write-back work.
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(backend_err)?;
        let sled_lsn = read_lsn(&db)?;

        let mut ids = Vec::new();
        for name in listing(dir)? {
            if name.starts_with("seg-") && name.ends_with(".tmp") {
                // A segment whose creation did not finish: never used.
                std::fs::remove_file(dir.join(&name)).map_err(backend_err)?;
            } else if let Some(id) = segment_id(&name) {
                ids.push(id);
            }
        }
        ids.sort_unstable();

        let mut files = BTreeMap::new();
        let mut recovered = Vec::new();
        let mut max_lsn = sled_lsn;
        let mut replayed = 0u64;
        let mut torn_in: Option<u64> = None;
        // The last segment if it holds no record: the spare of the previous run, reused.
        let mut empty_last = None;
        for &id in &ids {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.join(segment_name(id)))
                .map_err(backend_err)?;
            check_header(&file, id)?;
            let (records, end) = read_segment(&file, id)?;
            if !records.is_empty() && torn_in.is_some() {
                return Err(StoreError::Backend(
                    "a log segment is damaged before its end; refusing to start (see \
                     docs/OPERATIONS.md)"
                        .into(),
                ));
            }
            if let SegmentEnd::Torn(at) = end {
                // Never acknowledged. Zero its header so that this segment ends cleanly and
                // records written after this start do not look like damage on the next one.
                torn_in = Some(id);
                file.write_all_at(&[0u8; RECORD_HEADER_LEN as usize], at)
                    .and_then(|()| file.sync_data())
                    .map_err(backend_err)?;
                tracing::info!(
                    segment = id,
                    "log ended in a torn record (never acknowledged)"
                );
            }
            empty_last = (records.is_empty() && torn_in.is_none()).then_some(id);
            for (at, payload) in records {
                for (lsn, batch, ops) in decode_batches(&payload, id, at)? {
                    if lsn > sled_lsn && !batch.is_empty() {
                        apply_to_sled(&db, lsn, &batch.into_iter().collect())?;
                        replayed += 1;
                    }
                    max_lsn = max_lsn.max(lsn);
                    recovered.extend(ops);
                }
            }
            files.insert(id, Arc::new(file));
        }
        if replayed > 0 {
            tracing::info!(batches = replayed, "replayed log into sled");
        }

        let log = File::open(dir.join("db")).map_err(backend_err)?;
        let mut sled_files = SledFiles {
            dir: dir.to_path_buf(),
            log,
            synced: SyncedFiles::default(),
        };
        sled_files.checkpoint(&db, max_lsn)?;
        let (active_id, active) = match empty_last.and_then(|id| files.get(&id).map(|f| (id, f))) {
            Some((id, f)) => (id, f.clone()),
            None => {
                let id = ids.last().map_or(1, |id| id + 1);
                let f = Arc::new(create_segment(dir, id, segment_size)?);
                files.insert(id, f.clone());
                (id, f)
            }
        };
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir_entries(parent)?;
        }
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segment_size,
            active: (active_id, active),
            spare: None,
            running: None,
            sled_files: Arc::new(Mutex::new(sled_files)),
            last_written: max_lsn,
            uncached_below: 0,
            previous: None,
        };
        wal.spawn_spare(active_id + 1);
        let backend = Self {
            db,
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
        };
        if old_format {
            backend.migrate_old_format(dir)?;
        }
        Ok(backend)
    }

    /// Moves the envelopes of a store written by the previous format (queue entries in sled,
    /// two log files `wal-0`/`wal-1`, shut down cleanly) into the log, then deletes the old
    /// log files. Each step is one atomic log batch (enqueue records plus the deletion of the
    /// old keys), synced before the next, so a crash midway is resumed on the next start.
    fn migrate_old_format(&self, dir: &Path) -> Result<(), StoreError> {
        let mut moved = 0u64;
        loop {
            let mut ops_data = Vec::new();
            for entry in self.db.scan_prefix([OLD_T_QUEUE]).take(OLD_MIGRATE_STEP) {
                let (k, v) = entry.map_err(backend_err)?;
                let recv_id: Id = k
                    .get(1..17)
                    .ok_or(StoreError::Corrupt)?
                    .try_into()
                    .map_err(|_| StoreError::Corrupt)?;
                let seq: [u8; 8] = k
                    .get(17..25)
                    .ok_or(StoreError::Corrupt)?
                    .try_into()
                    .map_err(|_| StoreError::Corrupt)?;
                let rec = <OldQueuedRec as prost::Message>::decode(v.as_ref())
                    .map_err(|_| StoreError::Corrupt)?;
                let envelope_id: Id = rec
                    .envelope_id
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt)?;
                ops_data.push((
                    recv_id,
                    u64::from_be_bytes(seq),
                    envelope_id,
                    rec.expires_at,
                    rec.ciphertext,
                ));
            }
            if ops_data.is_empty() {
                break;
            }
            let mut batch = Batch::new();
            let mut ops = Vec::with_capacity(ops_data.len());
            for (recv_id, seq, envelope_id, expires_at, ciphertext) in &ops_data {
                let seq_be = seq.to_be_bytes();
                batch.push(([&[OLD_T_QUEUE][..], recv_id, &seq_be].concat(), None));
                batch.push(([&[OLD_T_ENV][..], recv_id, envelope_id].concat(), None));
                batch.push((
                    [
                        &[OLD_T_EXPIRY][..],
                        &expires_at.to_be_bytes(),
                        &[OLD_X_ENVELOPE],
                        recv_id,
                        &seq_be,
                    ]
                    .concat(),
                    None,
                ));
                ops.push(LogOp::Enqueue {
                    recv_id: *recv_id,
                    seq: *seq,
                    envelope_id: *envelope_id,
                    expires_at: *expires_at,
                    ciphertext,
                });
            }
            let refs = self.apply_logged(batch, &ops)?;
            self.sync(None)?;
            let mut recovered = self.recovered.lock().unwrap_or_else(|e| e.into_inner());
            for ((recv_id, seq, envelope_id, expires_at, _), body) in ops_data.iter().zip(refs) {
                recovered.push(Recovered::Enqueue {
                    recv_id: *recv_id,
                    seq: *seq,
                    envelope_id: *envelope_id,
                    expires_at: *expires_at,
                    body,
                });
            }
            moved += ops_data.len() as u64;
        }
        for name in OLD_WAL_FILES {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(backend_err(err)),
            }
        }
        sync_dir_entries(dir)?;
        tracing::info!(
            envelopes = moved,
            "store migrated from the two-file log format"
        );
        Ok(())
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
        tracing::error!(error = %err, "log write failed; the store refuses further writes until restarted");
        self.lock_pending().failed = true;
        err
    }

    /// Writes and syncs the collected group, then applies its keyspace writes to sled.
    fn commit(&self, wal: &mut Wal) -> Result<(), StoreError> {
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
                apply_to_sled(&self.db, lsn, &writes).map_err(|e| self.fail(e))?;
                self.lock_pending().frozen.pop_front();
            }
        }
        Ok(())
    }

    /// Deletes segments older than every queued envelope, the checkpoint and the active one.
    fn reclaim(&self, wal: &mut Wal, oldest_live: Option<u64>) -> Result<(), StoreError> {
        if let Some((_, handle)) = &wal.running
            && handle.is_finished()
        {
            wal.join_checkpoint(&self.checkpointed_below)?;
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
        for id in doomed {
            // Not synced: a segment whose deletion is lost in a crash is read again on open,
            // and everything in it is either superseded or already in sled.
            std::fs::remove_file(wal.dir.join(segment_name(id))).map_err(backend_err)?;
            self.files
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
        Ok(())
    }
}

impl Drop for SledBackend {
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

impl KvBackend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        // If the overlay misses, the key's newest write is in sled: a group leaves the overlay
        // only after sled holds it.
        if let Some(v) = self.lock_pending().lookup(key) {
            return Ok(v);
        }
        Ok(self.db.get(key).map_err(backend_err)?.map(|v| v.to_vec()))
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        // Snapshot of the unapplied writes first: a group applied to sled after this point is
        // also in the snapshot (with the same values), and the snapshot takes precedence.
        let overlay = self.lock_pending().range(start, end);
        let mut disk = self.db.range(start..end);
        let mut next_disk = || -> Result<Option<KeyValue>, StoreError> {
            disk.next()
                .transpose()
                .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .map_err(backend_err)
        };
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
        wal.join_checkpoint(&self.checkpointed_below)?;
        let lsn = wal.last_written;
        wal.sled_files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .checkpoint(&self.db, lsn)?;
        self.checkpointed_below
            .fetch_max(wal.active.0, Ordering::SeqCst);
        self.reclaim(&mut wal, oldest_live)
    }

    fn compaction_candidate(&self) -> Option<Candidate> {
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reopens a store dropped a moment ago: sled's worker threads may hold its file lock for
    /// a short while after the `Db` handle is gone.
    fn reopen(dir: &Path) -> SledBackend {
        try_reopen(dir).unwrap()
    }

    fn try_reopen(dir: &Path) -> Result<SledBackend, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledBackend::open_with_log_size(dir, MIN_WAL_SIZE) {
                Err(e)
                    if e.to_string().contains("lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn put(k: &[u8], v: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
        (k.to_vec(), Some(v.to_vec()))
    }

    fn enqueue(n: u8, body: &[u8]) -> LogOp<'_> {
        LogOp::Enqueue {
            recv_id: [1; 16],
            seq: u64::from(n),
            envelope_id: [n; 16],
            expires_at: 1000,
            ciphertext: body,
        }
    }

    fn segments(dir: &Path) -> Vec<u64> {
        let mut ids: Vec<u64> = listing(dir)
            .unwrap()
            .iter()
            .filter_map(|n| segment_id(n))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Writes a store in the previous format: envelopes in sled, two log files.
    fn write_old_format(dir: &Path, unclean: bool) {
        {
            let db = sled::Config::new()
                .path(dir)
                .segment_size(SLED_SEGMENT_SIZE)
                .flush_every_ms(None)
                .mode(sled::Mode::HighThroughput)
                .open()
                .unwrap();
            let recv = [5u8; 16];
            for (seq, n) in [(3u64, 7u8), (4, 8)] {
                let rec = OldQueuedRec {
                    envelope_id: vec![n; 16],
                    expires_at: 1_000 + u64::from(n),
                    ciphertext: vec![n; 100],
                };
                let seq_be = seq.to_be_bytes();
                db.insert(
                    [&[OLD_T_QUEUE][..], &recv, &seq_be].concat(),
                    prost::Message::encode_to_vec(&rec),
                )
                .unwrap();
                db.insert([&[OLD_T_ENV][..], &recv, &[n; 16]].concat(), &seq_be)
                    .unwrap();
                db.insert(
                    [
                        &[OLD_T_EXPIRY][..],
                        &rec.expires_at.to_be_bytes(),
                        &[OLD_X_ENVELOPE],
                        &recv,
                        &seq_be,
                    ]
                    .concat(),
                    b"",
                )
                .unwrap();
            }
            db.insert(b"Mmailbox", b"kept").unwrap();
            db.insert(LSN_KEY, &50u64.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        for (i, name) in OLD_WAL_FILES.iter().enumerate() {
            let mut h = OLD_WAL_MAGIC.to_vec();
            h.extend_from_slice(&(10 + i as u64).to_be_bytes());
            let crc = crc32(&[&h]);
            h.extend_from_slice(&crc.to_be_bytes());
            h.resize(8192, 0);
            if unclean && i == 1 {
                let payload = b"some batch";
                let mut rec = Vec::new();
                rec.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                rec.extend_from_slice(&11u64.to_be_bytes());
                rec.extend_from_slice(payload);
                let crc = crc32(&[&rec]);
                h[4096..4100].copy_from_slice(&crc.to_be_bytes());
                h[4100..4100 + rec.len()].copy_from_slice(&rec);
            }
            std::fs::write(dir.join(name), &h).unwrap();
        }
    }

    #[test]
    fn old_format_is_migrated_into_the_log() {
        let dir = tempfile::tempdir().unwrap();
        write_old_format(dir.path(), false);
        let check = |backend: &SledBackend| {
            let recovered = backend.take_recovered();
            assert_eq!(recovered.len(), 2, "{recovered:?}");
            for (r, (seq, n)) in recovered.iter().zip([(3u64, 7u8), (4, 8)]) {
                let Recovered::Enqueue {
                    recv_id,
                    seq: s,
                    envelope_id,
                    expires_at,
                    body,
                } = r
                else {
                    panic!("{r:?}")
                };
                assert_eq!(
                    (*recv_id, *s, *envelope_id, *expires_at),
                    ([5; 16], seq, [n; 16], 1_000 + u64::from(n))
                );
                assert_eq!(backend.read_body(body).unwrap().unwrap(), vec![n; 100]);
            }
            // The old envelope keys are gone, the rest of the keyspace is kept.
            for table in [OLD_T_QUEUE, OLD_T_ENV, OLD_T_EXPIRY] {
                assert!(backend.scan(&[table], &[table + 1], 10).unwrap().is_empty());
            }
            assert_eq!(backend.get(b"Mmailbox").unwrap(), Some(b"kept".to_vec()));
            assert!(backend.seq_floor() > 50);
        };
        {
            let backend = reopen(dir.path());
            check(&backend);
            assert!(!dir.path().join("wal-0").exists());
            assert!(!dir.path().join("wal-1").exists());
        }
        // Once migrated, the envelopes come back from the log.
        check(&reopen(dir.path()));
    }

    #[test]
    fn old_format_not_shut_down_cleanly_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_old_format(dir.path(), true);
        let err = try_reopen(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not shut down cleanly"), "{err}");
        assert!(dir.path().join("wal-0").exists());
    }

    #[test]
    fn crc32_known_answer() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }

    proptest::proptest! {
        #[test]
        fn record_payload_decoding_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_batches(&bytes, 1, SEG_HEADER_LEN);
        }

        #[test]
        fn record_payload_round_trips(
            batches in proptest::collection::vec(
                (
                    proptest::collection::vec(
                        (
                            proptest::collection::vec(proptest::num::u8::ANY, 0..8),
                            proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..8)),
                        ),
                        0..4,
                    ),
                    proptest::collection::vec((0u8..3, proptest::num::u8::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..40)), 0..4),
                ),
                0..4,
            )
        ) {
            let mut out = Vec::new();
            let mut expected = Vec::new();
            let at = 5000;
            for (i, (kv, ops)) in batches.iter().enumerate() {
                let ops: Vec<LogOp<'_>> = ops
                    .iter()
                    .map(|(kind, n, body)| match kind {
                        0 => enqueue(*n, body),
                        1 => LogOp::Remove { recv_id: [*n; 16], seq: u64::from(*n) },
                        _ => LogOp::DropMailbox { recv_id: [*n; 16] },
                    })
                    .collect();
                let bodies = encode_batch(i as u64, kv, &ops, &mut out).unwrap();
                let mut bodies = bodies.into_iter();
                let recovered: Vec<Recovered> = ops
                    .iter()
                    .map(|op| match op {
                        LogOp::Enqueue { recv_id, seq, envelope_id, expires_at, ciphertext } => {
                            let (pos, len) = bodies.next().unwrap();
                            assert_eq!(len as usize, ciphertext.len());
                            Recovered::Enqueue {
                                recv_id: *recv_id,
                                seq: *seq,
                                envelope_id: *envelope_id,
                                expires_at: *expires_at,
                                body: BodyRef { segment: 7, offset: at + pos as u64, len },
                            }
                        }
                        LogOp::Remove { recv_id, seq } => Recovered::Remove { recv_id: *recv_id, seq: *seq },
                        LogOp::DropMailbox { recv_id } => Recovered::DropMailbox { recv_id: *recv_id },
                    })
                    .collect();
                expected.push((i as u64, kv.clone(), recovered));
            }
            let back = decode_batches(&out, 7, at).unwrap();
            proptest::prop_assert_eq!(back, expected);
        }
    }

    #[test]
    fn bodies_are_readable_before_and_after_the_write_and_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let body = vec![0x42u8; 3000];
        let (first, second);
        {
            let backend = SledBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap();
            first = backend
                .apply_logged(vec![put(b"k", b"v")], &[enqueue(1, &body)])
                .unwrap()[0];
            // Visible from the buffer before the sync.
            assert_eq!(backend.read_body(&first).unwrap().unwrap(), body);
            backend.sync(None).unwrap();
            second = backend.apply_logged(vec![], &[enqueue(2, b"xyz")]).unwrap()[0];
            assert_eq!(backend.read_body(&first).unwrap().unwrap(), body);
            assert_eq!(backend.read_body(&second).unwrap().unwrap(), b"xyz");
            backend.sync(Some(first.segment)).unwrap();
            assert_eq!(backend.read_body(&second).unwrap().unwrap(), b"xyz");
            assert_eq!(backend.get(b"k").unwrap(), Some(b"v".to_vec()));
        }
        let backend = reopen(dir.path());
        let recovered = backend.take_recovered();
        assert_eq!(recovered.len(), 2);
        assert!(matches!(recovered[0], Recovered::Enqueue { body: b, seq: 1, .. } if b == first));
        assert!(matches!(recovered[1], Recovered::Enqueue { body: b, seq: 2, .. } if b == second));
        assert_eq!(backend.read_body(&first).unwrap().unwrap(), body);
        assert_eq!(backend.get(b"k").unwrap(), Some(b"v".to_vec()));
        assert!(backend.seq_floor() > 2);
    }

    /// Whether the page holding `offset` is in the page cache: a read that must not wait
    /// for the disk (`RWF_NOWAIT`) fails with `EAGAIN` when it is not.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn cached(file: &File, offset: u64) -> bool {
        let mut byte = [0u8; 1];
        let mut bufs = [std::io::IoSliceMut::new(&mut byte)];
        match rustix::io::preadv2(file, &mut bufs, offset, rustix::io::ReadWriteFlags::NOWAIT) {
            Ok(n) => n == 1,
            Err(rustix::io::Errno::AGAIN) => false,
            Err(err) => panic!("preadv2: {err}"),
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn synced_log_behind_the_window_leaves_the_page_cache() {
        let body = vec![0x5au8; 64 * 1024];
        let groups = (LOG_CACHE_WINDOW + 2 * LOG_UNCACHE_STEP) / body.len() as u64 + 4;
        // Segments smaller than the window (the previous segment is handed back whole) and
        // larger (the active one is handed back behind the window).
        for segment_size in [MIN_WAL_SIZE, 4 * LOG_CACHE_WINDOW] {
            // On the disk: tmpfs keeps its pages whatever the advice.
            let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
            let backend = SledBackend::open_with_log_size(dir.path(), segment_size).unwrap();
            let mut bodies = Vec::new();
            for n in 0..groups {
                let op = enqueue(n as u8, &body);
                bodies.push(backend.apply_logged(vec![], &[op]).unwrap()[0]);
                // Every body stays queued, so no segment is deleted.
                backend.sync(Some(bodies[0].segment)).unwrap();
            }
            let file = |b: &BodyRef| backend.files.read().unwrap()[&b.segment].clone();
            let (first, last) = (bodies[0], bodies[bodies.len() - 1]);
            assert!(
                !cached(&file(&first), first.offset),
                "segments of {segment_size} bytes: the first body is still cached"
            );
            assert!(
                cached(&file(&last), last.offset + u64::from(last.len) - 1),
                "segments of {segment_size} bytes: the last body is not cached"
            );
            // Nothing is lost: the bodies handed back are read from the disk.
            for b in [first, last] {
                assert_eq!(backend.read_body(&b).unwrap().unwrap(), body);
            }
        }
    }

    #[test]
    fn torn_tail_is_ignored_and_later_writes_survive() {
        let dir = tempfile::tempdir().unwrap();
        {
            let backend = SledBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap();
            backend
                .apply_logged(vec![put(b"a", b"1")], &[enqueue(1, b"one")])
                .unwrap();
            backend.sync(None).unwrap();
            backend
                .apply_logged(vec![put(b"b", b"2"), (b"a".to_vec(), None)], &[])
                .unwrap();
            backend.sync(None).unwrap();
            // A torn record after the last good one: a header announcing more bytes than
            // arrived, then garbage (as if the write was cut short by a power loss).
            let wal = backend.lock_wal();
            let at = backend.lock_pending().start;
            let mut torn = Vec::new();
            torn.extend_from_slice(&0xDEAD_BEEFu32.to_be_bytes());
            torn.extend_from_slice(&200u32.to_be_bytes());
            torn.extend_from_slice(&wal.active.0.to_be_bytes());
            torn.extend_from_slice(&[0xAB; 40]);
            wal.active.1.write_all_at(&torn, at).unwrap();
        }
        {
            let backend = reopen(dir.path());
            assert_eq!(backend.get(b"a").unwrap(), None);
            assert_eq!(backend.get(b"b").unwrap(), Some(b"2".to_vec()));
            assert_eq!(backend.take_recovered().len(), 1);
            backend
                .apply_logged(vec![put(b"c", b"3")], &[enqueue(2, b"two")])
                .unwrap();
            backend.sync(Some(0)).unwrap();
        }
        // The torn record does not make the later, acknowledged ones look like damage.
        let backend = reopen(dir.path());
        assert_eq!(backend.get(b"c").unwrap(), Some(b"3".to_vec()));
        assert_eq!(backend.take_recovered().len(), 2);
    }

    #[test]
    fn damage_before_acknowledged_records_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let first_segment;
        {
            let backend = SledBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap();
            first_segment = backend.lock_wal().active.0;
            backend.apply_logged(vec![], &[enqueue(1, b"one")]).unwrap();
            backend.sync(Some(0)).unwrap();
        }
        {
            let backend = reopen(dir.path());
            backend.apply_logged(vec![], &[enqueue(2, b"two")]).unwrap();
            backend.sync(Some(0)).unwrap();
        }
        // Flip a byte in the first segment's only record.
        let path = dir.path().join(segment_name(first_segment));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, SEG_HEADER_LEN + 20).unwrap();
        file.write_all_at(&[b[0] ^ 1], SEG_HEADER_LEN + 20).unwrap();
        drop(file);
        let err = try_reopen(dir.path()).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    #[test]
    fn overlay_reads_merge_with_sled() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap();
        backend
            .apply(vec![put(b"k1", b"a"), put(b"k3", b"a"), put(b"k5", b"a")])
            .unwrap();
        backend.sync(None).unwrap();
        assert!(backend.lock_pending().active.is_empty());
        assert!(backend.lock_pending().frozen.is_empty());
        backend
            .apply(vec![
                put(b"k2", b"b"),
                (b"k3".to_vec(), None),
                put(b"k5", b"b"),
            ])
            .unwrap();
        // A frozen group not yet in sled, and newer writes on top.
        let _group = backend.lock_pending().freeze();
        backend
            .apply(vec![
                put(b"k4", b"c"),
                (b"k5".to_vec(), None),
                put(b"k2", b"c"),
            ])
            .unwrap();
        let expect: Entries = vec![
            (b"k1".to_vec(), b"a".to_vec()),
            (b"k2".to_vec(), b"c".to_vec()),
            (b"k4".to_vec(), b"c".to_vec()),
        ];
        assert_eq!(backend.scan(b"k", b"l", 10).unwrap(), expect);
        assert_eq!(backend.scan(b"k", b"l", 2).unwrap(), expect[..2].to_vec());
        assert_eq!(
            backend.scan(b"k2", b"k5", 10).unwrap(),
            expect[1..].to_vec()
        );
        assert_eq!(backend.get(b"k3").unwrap(), None);
        assert_eq!(backend.get(b"k5").unwrap(), None);
        assert_eq!(backend.get(b"k1").unwrap(), Some(b"a".to_vec()));
    }

    #[test]
    fn full_segments_rotate_and_dead_ones_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap();
        let first = backend.lock_wal().active.0;
        let body = vec![7u8; 100 * 1024];
        let mut refs = Vec::new();
        for n in 0..30u8 {
            refs.push(
                backend
                    .apply_logged(vec![put(&[n], b"v")], &[enqueue(n, &body)])
                    .unwrap()[0],
            );
            // Envelope 0 is still queued: nothing may be reclaimed.
            backend.sync(Some(first)).unwrap();
        }
        assert!(backend.lock_wal().active.0 >= first + 2, "segments rotated");
        assert_eq!(segments(dir.path())[0], first);
        for r in &refs {
            assert_eq!(backend.read_body(r).unwrap().unwrap(), body);
        }
        // Everything removed: all sealed, checkpointed segments go.
        let ops: Vec<LogOp<'_>> = (0..30u8)
            .map(|n| LogOp::Remove {
                recv_id: [1; 16],
                seq: u64::from(n),
            })
            .collect();
        backend.apply_logged(vec![], &ops).unwrap();
        backend.checkpoint(None).unwrap();
        let active = backend.lock_wal().active.0;
        assert_eq!(segments(dir.path()).first(), Some(&active));
        assert_eq!(backend.read_body(&refs[0]).unwrap(), None);
        drop(backend);
        let backend = reopen(dir.path());
        for n in 0..30u8 {
            assert_eq!(backend.get(&[n]).unwrap(), Some(b"v".to_vec()));
        }
        // Whatever records remain, replaying them leaves no envelope queued.
        let mut live = std::collections::HashSet::new();
        for r in backend.take_recovered() {
            match r {
                Recovered::Enqueue { seq, .. } => {
                    live.insert(seq);
                }
                Recovered::Remove { seq, .. } => {
                    live.remove(&seq);
                }
                Recovered::DropMailbox { .. } => live.clear(),
            }
        }
        assert!(live.is_empty(), "{live:?}");
        assert!(backend.seq_floor() > 30);
    }
}
