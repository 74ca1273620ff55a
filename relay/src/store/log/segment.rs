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

/// The payload of a record that [`scan_segment`] found at (`offset`, `len`), read again and
/// checked again.
pub(super) fn read_record(
    file: &dyn LogFile,
    id: u64,
    (offset, len): Record,
) -> Result<Vec<u8>, StoreError> {
    let start = offset
        .checked_sub(RECORD_HEADER_LEN)
        .ok_or(StoreError::Corrupt)?;
    let mut buf = vec![0u8; (RECORD_HEADER_LEN + len) as usize];
    file.read_exact_at(&mut buf, start).map_err(backend_err)?;
    if valid_record_at(&buf, 0, id).is_none() {
        return Err(StoreError::Backend(
            "a log record changed while the log was being recovered".into(),
        ));
    }
    buf.drain(..RECORD_HEADER_LEN as usize);
    Ok(buf)
}

/// Checks a segment's header.
pub(super) fn check_header(file: &dyn LogFile, id: u64) -> Result<(), StoreError> {
    let mut h = [0u8; SEG_HEADER_BYTES];
    file.read_exact_at(&mut h, 0).map_err(backend_err)?;
    if h[..] != segment_header(id)[..] {
        // Written and synced before the segment got its name: damage.
        return Err(StoreError::Damaged {
            segment: id,
            offset: 0,
        });
    }
    Ok(())
}

/// Bytes of a segment read at once when looking past its last valid record.
const SCAN_CHUNK: usize = 1 << 20;

/// A valid record found: offset of its payload in the segment, payload length. Payloads are
/// not kept: the whole log is checked before any of it is used, and it may not fit in memory.
pub(super) type Record = (u64, u64);

/// How a segment's bytes end after its last valid record.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Tail {
    /// Zeros (never written) up to the end of the file.
    Clean,
    /// Bytes from `at` up to `end` (the last non-zero byte, exclusive) that hold no valid
    /// record: a torn write, if nothing valid follows it anywhere in the log.
    Garbage {
        /// Where the last valid record ends.
        at: u64,
        /// One past the last non-zero byte.
        end: u64,
    },
    /// Damage at `at`, and a valid record of this segment at `next`, after it.
    Damaged {
        /// Where the last valid record before the damage ends.
        at: u64,
        /// Where the first valid record after it starts.
        next: u64,
    },
}

/// Whether `buf[off..]` starts with a valid record of segment `id` (right segment number,
/// non-zero length within `buf`, matching CRC); its total length if so.
pub(super) fn valid_record_at(buf: &[u8], off: usize, id: u64) -> Option<usize> {
    let head = buf.get(off..off.checked_add(RECORD_HEADER_LEN as usize)?)?;
    if head[8..16] != id.to_be_bytes() {
        return None;
    }
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let total = (RECORD_HEADER_LEN as usize).checked_add(len)?;
    let record = buf.get(off..off.checked_add(total)?)?;
    let crc = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    (len > 0 && crc32(&[&record[4..]]) == crc).then_some(total)
}

/// The records of one segment, in order, as (payload offset, payload length), up to the first
/// position that does not hold a valid record, and what follows that position. Read-only.
pub(super) fn scan_segment(file: &dyn LogFile, id: u64) -> Result<(Vec<Record>, Tail), StoreError> {
    let size = file.size().map_err(backend_err)?;
    let mut out = Vec::new();
    let mut at = SEG_HEADER_LEN;
    let mut head = [0u8; RECORD_HEADER_LEN as usize];
    while at + RECORD_HEADER_LEN <= size {
        file.read_exact_at(&mut head, at).map_err(backend_err)?;
        let crc = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let len = u64::from(u32::from_be_bytes([head[4], head[5], head[6], head[7]]));
        let seg: [u8; 8] = head[8..16].try_into().map_err(|_| StoreError::Corrupt)?;
        let end = at + RECORD_HEADER_LEN + len;
        if u64::from_be_bytes(seg) != id || len == 0 || end > size {
            break;
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact_at(&mut payload, at + RECORD_HEADER_LEN)
            .map_err(backend_err)?;
        if crc32(&[&head[4..], &payload]) != crc {
            break;
        }
        out.push((at + RECORD_HEADER_LEN, len));
        at = end;
    }
    // What follows the last valid record: zeros up to the end of the file (a clean end), or
    // bytes, which are either a torn write or damage followed by valid records.
    let mut last_nonzero = None;
    let mut chunk = vec![0u8; SCAN_CHUNK];
    let zeros = vec![0u8; SCAN_CHUNK];
    let mut pos = at;
    while pos < size {
        let n = (size - pos).min(SCAN_CHUNK as u64) as usize;
        file.read_exact_at(&mut chunk[..n], pos)
            .map_err(backend_err)?;
        // Compared with a zero buffer first: one `memcmp` for the common all-zero chunk.
        if chunk[..n] != zeros[..n]
            && let Some(i) = chunk[..n].iter().rposition(|b| *b != 0)
        {
            last_nonzero = Some(pos + i as u64);
        }
        pos += n as u64;
    }
    let Some(last) = last_nonzero else {
        return Ok((out, Tail::Clean));
    };
    // Rare (after a power cut or damage): the rest of the segment, searched for a valid
    // record at every offset after `at`.
    let mut rest = vec![0u8; (size - at) as usize];
    file.read_exact_at(&mut rest, at).map_err(backend_err)?;
    let upto = (last - at) as usize;
    for off in 1..=upto {
        if valid_record_at(&rest, off, id).is_some() {
            return Ok((
                out,
                Tail::Damaged {
                    at,
                    next: at + off as u64,
                },
            ));
        }
    }
    if rest.len() >= RECORD_HEADER_LEN as usize
        && rest[..RECORD_HEADER_LEN as usize].iter().all(|b| *b == 0)
    {
        // A zeroed record header with bytes but no valid record after it in this segment: a
        // torn write that an earlier version cut by zeroing only its header (or one whose
        // first sector never reached the disk). A clean end, as it always was; damage that
        // valid records of this segment follow is still found above.
        return Ok((out, Tail::Clean));
    }
    Ok((out, Tail::Garbage { at, end: last + 1 }))
}
