//! Segment files: names, headers, creation, and reading their records back.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use super::super::StoreError;
use super::backend_err;
use super::format::crc32;
use super::fs::{LogFile, LogFs};

/// Bytes reserved for a segment header; records start here.
pub(super) const SEG_HEADER_LEN: u64 = 4096;
/// Segment header magic.
pub(super) const SEG_MAGIC: &[u8; 8] = b"HOVRSEG1";
/// Encoded header: magic, segment number, crc32.
pub(super) const SEG_HEADER_BYTES: usize = 8 + 8 + 4;
/// Record header: crc32, payload length, segment number.
pub(super) const RECORD_HEADER_LEN: u64 = 4 + 4 + 8;

pub(super) fn segment_name(id: u64) -> String {
    format!("seg-{id:016x}")
}

pub(super) fn segment_id(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The names in `dir` (empty if it does not exist).
pub(super) fn listing(fs: &dyn LogFs, dir: &Path) -> Result<BTreeSet<String>, StoreError> {
    Ok(fs.list(dir).map_err(backend_err)?.into_iter().collect())
}

/// `fsync`s `dir`, making its entries durable.
pub(super) fn sync_dir_entries(fs: &dyn LogFs, dir: &Path) -> Result<(), StoreError> {
    fs.sync_dir(dir).map_err(backend_err)
}

pub(super) fn segment_header(id: u64) -> Vec<u8> {
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
pub(super) fn create_segment(
    fs: &dyn LogFs,
    dir: &Path,
    id: u64,
    size: u64,
) -> Result<Arc<dyn LogFile>, StoreError> {
    let tmp = dir.join(format!("{}.tmp", segment_name(id)));
    let file = fs.create(&tmp).map_err(backend_err)?;
    file.set_len(size).map_err(backend_err)?;
    file.write_all_at(&segment_header(id), 0)
        .map_err(backend_err)?;
    file.sync_all().map_err(backend_err)?;
    fs.rename(&tmp, &dir.join(segment_name(id)))
        .map_err(backend_err)?;
    sync_dir_entries(fs, dir)?;
    Ok(file)
}

/// Checks a segment's header.
pub(super) fn check_header(file: &dyn LogFile, id: u64) -> Result<(), StoreError> {
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
pub(super) type Record = (u64, Vec<u8>);

/// How reading a segment ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SegmentEnd {
    /// Zeros (never written) or the end of the file.
    Clean,
    /// A record at this offset is torn or damaged.
    Torn(u64),
}

/// The records of one segment, in order, as (payload offset, payload), up to the first torn
/// or damaged one.
pub(super) fn read_segment(
    file: &dyn LogFile,
    id: u64,
) -> Result<(Vec<Record>, SegmentEnd), StoreError> {
    let size = file.size().map_err(backend_err)?;
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
