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
    RECORD_HEADER_LEN, SegmentEnd, check_header, listing, read_segment, segment_id, segment_name,
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

/// Reads the log in `dir` (see the module docs), replaying into `db` the keyspace batches newer
/// than `sled_lsn`.
pub(super) fn recover_log(
    fs: &dyn LogFs,
    dir: &Path,
    db: &dyn Keyspace,
    sled_lsn: u64,
) -> Result<RecoveredLog, StoreError> {
    let mut ids = Vec::new();
    for name in listing(fs, dir)? {
        if name.starts_with("seg-") && name.ends_with(".tmp") {
            // A segment whose creation did not finish: never used.
            fs.remove(&dir.join(&name)).map_err(backend_err)?;
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
        let file = fs.open(&dir.join(segment_name(id))).map_err(backend_err)?;
        check_header(file.as_ref(), id)?;
        let (records, end) = read_segment(file.as_ref(), id)?;
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
                    db.apply(lsn, &batch.into_iter().collect())?;
                    replayed += 1;
                }
                max_lsn = max_lsn.max(lsn);
                recovered.extend(ops);
            }
        }
        files.insert(id, file);
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
