//! Recovery on open: reading every segment back, replaying keyspace batches newer than sled's
//! checkpoint into sled, and handing the envelope records to the store.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::super::StoreError;
use super::super::kv::Recovered;
use super::backend_err;
use super::format::decode_batches;
use super::fs::{LogFile, LogFs};
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
/// The whole log is checked before anything is changed: damage followed by a valid record
/// anywhere after it refuses the start ([`StoreError::Damaged`]), on this and every later
/// start. Only a torn write at the very end of the log (bytes that hold no valid record, with
/// nothing valid after them) is cut: zeroed and synced, so that records written after this
/// start do not make it look like damage on the next one.
pub(super) fn recover_log(
    fs: &dyn LogFs,
    dir: &Path,
    db: &dyn Keyspace,
    sled_lsn: u64,
) -> Result<RecoveredLog, StoreError> {
    let ids = segment_ids(fs, dir, true)?;
    let scanned = scan_log(fs, dir, &ids)?;
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

    let mut files = BTreeMap::new();
    let mut recovered = Vec::new();
    let mut max_lsn = sled_lsn;
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
                recovered.extend(ops);
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
                        Recovered::Enqueue { .. } => plan.envelopes += 1,
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

/// Carries out `plan` (from [`plan_repair`] on the same, unchanged directory): zeroes the
/// damaged segment from the damage on (or deletes it if its header is damaged), deletes the
/// later segments, and syncs. The relay must not be running.
pub fn repair(fs: &dyn LogFs, dir: &Path, plan: &RepairPlan) -> Result<(), StoreError> {
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
        "damaged log repaired: the damaged record and everything after it dropped"
    );
    Ok(())
}
