//! Recovery on open: reading every segment back, replaying keyspace batches newer than sled's
//! checkpoint into sled, and handing the envelope records to the store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use super::super::kv::Recovered;
use super::super::{Id, StoreError};
use super::backend_err;
use super::format::{Reader, crc32, decode_batches};
use super::fs::{LogFile, LogFs};
use super::index;
use super::index::IndexFile;
use super::keyspace::Keyspace;
use super::segment::{
    RECORD_HEADER_LEN, Record, SEG_HEADER_LEN, Tail, check_header, listing, read_record,
    scan_segment, segment_id, segment_name, valid_record_at,
};

/// What recovery found in the log.
pub(super) struct RecoveredLog {
    /// Segment numbers found, in order.
    pub(super) ids: Vec<u64>,
    /// The open segments, by number.
    pub(super) files: BTreeMap<u64, Arc<dyn LogFile>>,
    /// The envelope records, in log order.
    pub(super) recovered: Vec<Recovered>,
    /// The largest LSN in sled or the log.
    pub(super) max_lsn: u64,
    /// The last segment if it holds no record: the spare of the previous run, reused.
    pub(super) empty_last: Option<u64>,
}

/// A segment read back, before anything is decided or changed.
struct Scanned {
    id: u64,
    file: Arc<dyn LogFile>,
    records: Vec<Record>,
    tail: Tail,
}

/// Where the log must be cut, if anywhere: a torn write at its very end.
struct TornTail {
    segment: usize,
    at: u64,
    end: u64,
}

/// Decides, read-only, whether the log is whole up to at most a torn tail. Damage followed
/// by any valid record (in the same segment or a later one) means acknowledged data was
/// damaged: the error names where.
fn judge(scanned: &[Scanned]) -> Result<Option<TornTail>, StoreError> {
    let mut torn: Option<TornTail> = None;
    for (i, s) in scanned.iter().enumerate() {
        if let Some(t) = &torn {
            // Anything after the torn tail's segment: valid records, or more bytes.
            if !s.records.is_empty() || s.tail != Tail::Clean {
                return Err(StoreError::Damaged {
                    segment: scanned[t.segment].id,
                    offset: t.at,
                });
            }
        }
        match s.tail {
            Tail::Clean => {}
            Tail::Damaged { at, .. } => {
                return Err(StoreError::Damaged {
                    segment: s.id,
                    offset: at,
                });
            }
            Tail::Garbage { at, end } => {
                torn = Some(TornTail {
                    segment: i,
                    at,
                    end,
                });
            }
        }
    }
    Ok(torn)
}

/// Lists the segments in `dir`, in order, removing segments whose creation did not finish.
fn segment_ids(fs: &dyn LogFs, dir: &Path, clean: bool) -> Result<Vec<u64>, StoreError> {
    let mut ids = Vec::new();
    for name in listing(fs, dir)? {
        if name.starts_with("seg-") && name.ends_with(".tmp") {
            // A segment whose creation did not finish: never used.
            if clean {
                fs.remove(&dir.join(&name)).map_err(backend_err)?;
            }
        } else if let Some(id) = segment_id(&name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Reads every segment in `dir`, changing nothing.
fn scan_log(fs: &dyn LogFs, dir: &Path, ids: &[u64]) -> Result<Vec<Scanned>, StoreError> {
    let mut scanned = Vec::with_capacity(ids.len());
    for &id in ids {
        let file = fs.open(&dir.join(segment_name(id))).map_err(backend_err)?;
        // Read what the disk holds, not the page cache: after a failed `fdatasync` of an
        // earlier run the cache may hold pages the disk does not (marked clean, so the
        // advice drops them).
        file.drop_cache(0, None);
        check_header(file.as_ref(), id)?;
        let (records, tail) = scan_segment(file.as_ref(), id)?;
        scanned.push(Scanned {
            id,
            file,
            records,
            tail,
        });
    }
    Ok(scanned)
}

/// Reads the log in `dir` (see the module docs), replaying into `db` the keyspace batches newer
/// than `sled_lsn`.
///
/// With an index checkpoint (`index`, see `index.rs`) only the segments from its first segment
/// on are read and checked: the envelopes it holds come first in the recovered records (those
/// whose segment is gone are left out: they were removed), then the records of the batches
/// after its LSN. The segments before it were synced before the checkpoint was written; only
/// their headers are checked. Without one, every segment is read.
///
/// The segments read are checked before anything is changed: damage followed by a valid
/// record anywhere after it refuses the start ([`StoreError::Damaged`]), on this and every
/// later start. Only a torn write at the very end of the log (bytes that hold no valid record,
/// with nothing valid after them) is cut: zeroed and synced, so that records written after
/// this start do not make it look like damage on the next one.
pub(super) fn recover_log(
    fs: &dyn LogFs,
    dir: &Path,
    db: &dyn Keyspace,
    sled_lsn: u64,
    index: Option<IndexFile>,
) -> Result<RecoveredLog, StoreError> {
    let ids = segment_ids(fs, dir, true)?;
    let from = index.as_ref().map_or(0, |i| i.segment);
    if let Some(index) = &index {
        let present: BTreeSet<u64> = ids.iter().copied().collect();
        let oldest = ids.first().copied().unwrap_or(u64::MAX);
        // Segments are deleted only from the oldest end, once no queued envelope is left in
        // them and in every older one: an envelope whose segment is below the oldest one left
        // was removed after the checkpoint. One whose segment is missing above it is in a
        // segment lost by other means (never by the relay): refused like damage.
        if let Some(segment) = index.entries.iter().find_map(|r| match r {
            Recovered::Enqueue { body, .. }
                if body.segment >= oldest && !present.contains(&body.segment) =>
            {
                Some(body.segment)
            }
            _ => None,
        }) {
            return Err(StoreError::Damaged { segment, offset: 0 });
        }
    }
    let mut files = BTreeMap::new();
    for &id in ids.iter().filter(|id| **id < from) {
        let file = fs.open(&dir.join(segment_name(id))).map_err(backend_err)?;
        check_header(file.as_ref(), id)?;
        files.insert(id, file);
    }
    let later: Vec<u64> = ids.iter().copied().filter(|id| *id >= from).collect();
    let scanned = scan_log(fs, dir, &later)?;
    let torn = judge(&scanned)?;
    if let Some(TornTail { segment, at, end }) = &torn {
        // Never acknowledged: the sync of an acknowledged record covered it, and nothing
        // follows it.
        let file = &scanned[*segment].file;
        let zeros = vec![0u8; (end - at) as usize];
        file.write_all_at(&zeros, *at)
            .and_then(|()| file.sync_data())
            .map_err(backend_err)?;
        tracing::info!(
            segment = scanned[*segment].id,
            "log ended in a torn write (never acknowledged); cut"
        );
    }

    let mut recovered = Vec::new();
    let mut max_lsn = sled_lsn;
    // Batches up to this LSN are in the index checkpoint.
    let mut indexed = 0;
    if let Some(index) = index {
        indexed = index.lsn;
        max_lsn = max_lsn.max(index.lsn);
        let oldest = ids.first().copied().unwrap_or(u64::MAX);
        let total = index.entries.len();
        recovered = index.entries;
        recovered.retain(|r| match r {
            Recovered::Enqueue { body, .. } => body.segment >= oldest,
            _ => true,
        });
        tracing::info!(
            envelopes = recovered.len(),
            removed = total - recovered.len(),
            lsn = indexed,
            segment = from,
            "loaded the index checkpoint"
        );
    }
    let mut replayed = 0u64;
    // The last segment if it holds no record: the spare of the previous run, reused.
    let mut empty_last = None;
    for (i, s) in scanned.into_iter().enumerate() {
        let was_torn = torn.as_ref().is_some_and(|t| t.segment == i);
        empty_last = (s.records.is_empty() && !was_torn).then_some(s.id);
        for record in s.records {
            let payload = read_record(s.file.as_ref(), s.id, record)?;
            for (lsn, batch, ops) in decode_batches(&payload, s.id, record.0)? {
                if lsn > sled_lsn && !batch.is_empty() {
                    db.apply(lsn, &batch.into_iter().collect())?;
                    replayed += 1;
                }
                max_lsn = max_lsn.max(lsn);
                if lsn > indexed {
                    recovered.extend(ops);
                }
            }
        }
        files.insert(s.id, s.file);
    }
    if replayed > 0 {
        tracing::info!(batches = replayed, "replayed log into sled");
    }
    Ok(RecoveredLog {
        ids,
        files,
        recovered,
        max_lsn,
        empty_last,
    })
}

/// What [`repair`] drops from a log that recovery refused ([`StoreError::Damaged`]): the first
/// damaged record and everything after it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairPlan {
    /// The damaged segment.
    pub segment: u64,
    /// Where its valid records end (0: its header is damaged, and the whole segment goes).
    pub offset: u64,
    /// Valid log records (group commits) after the damage, all dropped.
    pub records: u64,
    /// Envelopes queued by those records: lost unless queued again.
    pub envelopes: u64,
    /// Removals (acks, expiry, mailbox deletions) in those records: undone, so the envelopes
    /// they removed may be delivered again.
    pub removals: u64,
    /// Segments after the damaged one, deleted.
    pub later_segments: Vec<u64>,
    /// Per mailbox, the highest sequence number of the envelopes those records queued: the
    /// mailbox's next number is raised above it when the relay next starts, so that no number
    /// is handed out twice (a recipient may have fetched the envelopes that had them).
    pub seq_floors: BTreeMap<Id, u64>,
}

/// Finds the first damage in the log in `dir` and what [`repair`] would drop; `None` if
/// recovery would accept the log. Changes nothing.
pub fn plan_repair(fs: &dyn LogFs, dir: &Path) -> Result<Option<RepairPlan>, StoreError> {
    let ids = segment_ids(fs, dir, false)?;
    let mut scanned = Vec::with_capacity(ids.len());
    let mut damage = None;
    for &id in &ids {
        let file = fs.open(&dir.join(segment_name(id))).map_err(backend_err)?;
        file.drop_cache(0, None);
        match check_header(file.as_ref(), id) {
            Ok(()) => {}
            Err(StoreError::Damaged { segment, offset }) => {
                damage = Some((segment, offset));
                break;
            }
            Err(err) => return Err(err),
        }
        let (records, tail) = scan_segment(file.as_ref(), id)?;
        scanned.push(Scanned {
            id,
            file,
            records,
            tail,
        });
    }
    let (segment, offset) = match damage {
        Some(d) => d,
        None => match judge(&scanned) {
            Ok(_) => return Ok(None),
            Err(StoreError::Damaged { segment, offset }) => (segment, offset),
            Err(err) => return Err(err),
        },
    };
    let mut plan = RepairPlan {
        segment,
        offset,
        records: 0,
        envelopes: 0,
        removals: 0,
        later_segments: ids.iter().copied().filter(|id| *id > segment).collect(),
        seq_floors: BTreeMap::new(),
    };
    for &id in ids.iter().filter(|id| **id >= segment) {
        let file = fs.open(&dir.join(segment_name(id))).map_err(backend_err)?;
        let from = if id == segment {
            offset.max(SEG_HEADER_LEN)
        } else {
            SEG_HEADER_LEN
        };
        let size = file.size().map_err(backend_err)?;
        if size <= from {
            continue;
        }
        let mut buf = vec![0u8; (size - from) as usize];
        file.read_exact_at(&mut buf, from).map_err(backend_err)?;
        let mut pos = 0;
        while pos < buf.len() {
            let Some(total) = valid_record_at(&buf, pos, id) else {
                pos += 1;
                continue;
            };
            plan.records += 1;
            let payload = &buf[pos + RECORD_HEADER_LEN as usize..pos + total];
            for (_, _, ops) in decode_batches(payload, id, 0).unwrap_or_default() {
                for op in ops {
                    match op {
                        Recovered::Enqueue { recv_id, seq, .. } => {
                            plan.envelopes += 1;
                            let floor = plan.seq_floors.entry(recv_id).or_default();
                            *floor = (*floor).max(seq);
                        }
                        Recovered::Remove { .. } | Recovered::DropMailbox { .. } => {
                            plan.removals += 1;
                        }
                    }
                }
            }
            pos += total;
        }
    }
    Ok(Some(plan))
}

/// Carries out `plan` (from [`plan_repair`] on the same, unchanged directory): records the
/// sequence floors of the dropped envelopes (merged with any an earlier repair left that no
/// start has applied yet) and deletes the index checkpoints (they may hold dropped envelopes),
/// durably, then zeroes the damaged segment from the damage on (or deletes it if its header
/// is damaged), deletes the later segments, and syncs. The relay must not be running.
pub fn repair(fs: &dyn LogFs, dir: &Path, plan: &RepairPlan) -> Result<(), StoreError> {
    let mut floors: BTreeMap<Id, u64> = read_seq_floors(fs, dir)?.into_iter().collect();
    for (recv_id, seq) in &plan.seq_floors {
        let floor = floors.entry(*recv_id).or_default();
        *floor = (*floor).max(*seq);
    }
    if !floors.is_empty() {
        write_seq_floors(fs, dir, &floors)?;
    }
    index::remove_all(fs, dir)?;
    fs.sync_dir(dir).map_err(backend_err)?;
    let path = dir.join(segment_name(plan.segment));
    if plan.offset == 0 {
        fs.remove(&path).map_err(backend_err)?;
    } else {
        let file = fs.open(&path).map_err(backend_err)?;
        let size = file.size().map_err(backend_err)?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = plan.offset;
        while at < size {
            let n = (size - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at).map_err(backend_err)?;
            at += n as u64;
        }
        file.sync_data().map_err(backend_err)?;
    }
    for id in &plan.later_segments {
        fs.remove(&dir.join(segment_name(*id)))
            .map_err(backend_err)?;
    }
    fs.sync_dir(dir).map_err(backend_err)?;
    tracing::warn!(
        segment = plan.segment,
        offset = plan.offset,
        records = plan.records,
        mailboxes = plan.seq_floors.len(),
        "damaged log repaired: the damaged record and everything after it dropped; the \
         sequence floors of the mailboxes whose envelopes were dropped are raised at the next start"
    );
    Ok(())
}

/// The file holding the sequence floors a repair left until a start applies them.
const SEQ_FLOORS: &str = "seq-floors";
const SEQ_FLOORS_MAGIC: &[u8; 8] = b"HOVRFLR1";

/// Writes the sequence floors file durably (temporary name, sync, rename; the caller syncs
/// the directory). Layout: magic, count (u64), then per mailbox its id and floor (u64), then
/// a CRC-32 of everything before it; integers big-endian.
fn write_seq_floors(
    fs: &dyn LogFs,
    dir: &Path,
    floors: &BTreeMap<Id, u64>,
) -> Result<(), StoreError> {
    let mut out = SEQ_FLOORS_MAGIC.to_vec();
    out.extend_from_slice(&(floors.len() as u64).to_be_bytes());
    for (recv_id, seq) in floors {
        out.extend_from_slice(recv_id);
        out.extend_from_slice(&seq.to_be_bytes());
    }
    let crc = crc32(&[&out]);
    out.extend_from_slice(&crc.to_be_bytes());
    let tmp = dir.join(format!("{SEQ_FLOORS}.tmp"));
    let file = fs.create(&tmp).map_err(backend_err)?;
    file.write_all_at(&out, 0)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs.rename(&tmp, &dir.join(SEQ_FLOORS)))
        .map_err(backend_err)
}

/// The sequence floors a repair left (empty if none). A damaged file refuses the start: the
/// floors it held would be lost.
pub(super) fn read_seq_floors(fs: &dyn LogFs, dir: &Path) -> Result<Vec<(Id, u64)>, StoreError> {
    let path = dir.join(SEQ_FLOORS);
    if !fs.exists(&path) {
        return Ok(Vec::new());
    }
    let file = fs.open(&path).map_err(backend_err)?;
    let size = file.size().map_err(backend_err)?;
    let mut buf = vec![0u8; usize::try_from(size).map_err(|_| StoreError::Corrupt)?];
    file.read_exact_at(&mut buf, 0).map_err(backend_err)?;
    let damaged = || {
        StoreError::Backend(format!(
            "{} is damaged: it holds the sequence floors of the last repair",
            path.display()
        ))
    };
    if buf.len() < 8 + 8 + 4 || buf[..8] != SEQ_FLOORS_MAGIC[..] {
        return Err(damaged());
    }
    let (body, tail) = buf.split_at(buf.len() - 4);
    if crc32(&[body]).to_be_bytes() != tail {
        return Err(damaged());
    }
    let mut r = Reader::new(&body[8..]);
    let n = r.u64().map_err(|_| damaged())?;
    let mut out = Vec::new();
    for _ in 0..n {
        let recv_id = r.id().map_err(|_| damaged())?;
        let seq = r.u64().map_err(|_| damaged())?;
        out.push((recv_id, seq));
    }
    if !r.at_end() {
        return Err(damaged());
    }
    Ok(out)
}

/// Deletes the sequence floors file (the store has made the floors durable), durably.
pub(super) fn remove_seq_floors(fs: &dyn LogFs, dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(SEQ_FLOORS);
    if fs.exists(&path) {
        fs.remove(&path).map_err(backend_err)?;
        fs.sync_dir(dir).map_err(backend_err)?;
    }
    Ok(())
}
