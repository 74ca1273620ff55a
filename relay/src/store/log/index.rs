//! The checkpointed index: the envelope queues (every queued envelope with its body's place in
//! the log) as of one log position, written to a file of its own so that opening the store
//! replays only the log after that position instead of the whole log.
//!
//! An index checkpoint `index-<LSN, 16 hex digits>` holds the queues after every batch up to
//! that LSN, and the first segment recovery must read (see [`IndexFile`]). It is written under
//! a temporary name, `fsync`ed, renamed and the directory `fsync`ed, so a power cut leaves the
//! previous checkpoints as they were; the newest [`KEEP`] are kept. Opening loads the newest
//! one whose magic, version, length and CRC-32 check; a damaged, unknown or missing one falls
//! back to an older one, then to reading the whole log (layout in docs/STORAGE.md).
//!
//! An older checkpoint stays valid as the log moves on because segments are deleted only when
//! no queued envelope is left in them and every older segment: the removal records a
//! checkpoint's envelopes need are in the log after its position, and an envelope whose
//! segment is gone was removed (recovery drops it from the checkpoint).

use std::path::Path;

use super::super::StoreError;
use super::super::kv::{BodyRef, Recovered};
use super::backend_err;
use super::format::{Reader, crc32};
use super::fs::LogFs;

/// Magic at the start of an index checkpoint.
pub(super) const INDEX_MAGIC: &[u8; 8] = b"HOVRIDX1";
/// Format version written, and the only one read.
pub(super) const INDEX_VERSION: u32 = 1;
/// Header: magic, version, LSN, first segment to replay, mailboxes.
pub(super) const INDEX_HEADER_LEN: usize = 8 + 4 + 8 + 8 + 8;
/// One envelope: sequence number, envelope id, expiry, body segment, body offset, body length.
pub(super) const INDEX_ENTRY_LEN: usize = 8 + 16 + 8 + 8 + 8 + 4;
/// Index checkpoints kept: the newest, and the one before it in case the newest is damaged.
pub(super) const KEEP: usize = 2;
/// Segments written between two index checkpoints, at least (see [`next_due`]).
pub(super) const INDEX_EVERY_SEGMENTS: u64 = 2;

const PREFIX: &str = "index-";
const TMP_SUFFIX: &str = ".tmp";

/// The file name of the index checkpoint at `lsn`.
pub(super) fn index_name(lsn: u64) -> String {
    format!("{PREFIX}{lsn:016x}")
}

/// The LSN of an index checkpoint's file name.
fn index_lsn(name: &str) -> Option<u64> {
    let hex = name.strip_prefix(PREFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// An index checkpoint read back.
pub(super) struct IndexFile {
    /// Every batch up to this LSN is reflected in `entries`, and none after it.
    pub(super) lsn: u64,
    /// Every batch after `lsn` is in this segment or a later one, and every keyspace write in
    /// an earlier segment was durable in the keyspace when the checkpoint was written.
    pub(super) segment: u64,
    /// The queued envelopes, as [`Recovered::Enqueue`], grouped by mailbox.
    pub(super) entries: Vec<Recovered>,
    /// Size of the file, bytes.
    pub(super) bytes: u64,
}

/// Encodes an index checkpoint: `entries` are [`Recovered::Enqueue`] records grouped by mailbox
/// (any other record is skipped).
pub(super) fn encode(lsn: u64, segment: u64, entries: &[Recovered]) -> Vec<u8> {
    let mut mailboxes = 0u64;
    let mut last = None;
    for e in entries {
        if let Recovered::Enqueue { recv_id, .. } = e
            && last != Some(recv_id)
        {
            mailboxes += 1;
            last = Some(recv_id);
        }
    }
    let mut out = Vec::with_capacity(
        INDEX_HEADER_LEN + entries.len() * INDEX_ENTRY_LEN + mailboxes as usize * 20 + 4,
    );
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&INDEX_VERSION.to_be_bytes());
    out.extend_from_slice(&lsn.to_be_bytes());
    out.extend_from_slice(&segment.to_be_bytes());
    out.extend_from_slice(&mailboxes.to_be_bytes());
    let mut i = 0;
    while i < entries.len() {
        let Recovered::Enqueue { recv_id: first, .. } = &entries[i] else {
            i += 1;
            continue;
        };
        let run = entries[i..]
            .iter()
            .take_while(|e| matches!(e, Recovered::Enqueue { recv_id, .. } if recv_id == first))
            .count();
        out.extend_from_slice(first);
        // A mailbox holds far fewer than 2^32 envelopes (its quota). Were it not so, the run
        // would be split, the mailbox count would not match and the checkpoint would not be
        // used (the log is then replayed instead).
        let run = run.min(u32::MAX as usize);
        out.extend_from_slice(&(run as u32).to_be_bytes());
        for e in &entries[i..i + run] {
            if let Recovered::Enqueue {
                seq,
                envelope_id,
                expires_at,
                body,
                ..
            } = e
            {
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(envelope_id);
                out.extend_from_slice(&expires_at.to_be_bytes());
                out.extend_from_slice(&body.segment.to_be_bytes());
                out.extend_from_slice(&body.offset.to_be_bytes());
                out.extend_from_slice(&body.len.to_be_bytes());
            }
        }
        i += run;
    }
    let crc = crc32(&[&out]);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Why an index checkpoint was not used.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Invalid {
    /// Shorter than a header and a CRC, or the CRC does not match.
    Checksum,
    /// Not an index checkpoint.
    Magic,
    /// A format version this relay does not read.
    Version(u32),
    /// The counts do not match the length, or a field is out of range.
    Layout,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Checksum => f.write_str("checksum mismatch (torn or damaged)"),
            Self::Magic => f.write_str("not an index checkpoint"),
            Self::Version(v) => write!(f, "unknown format version {v}"),
            Self::Layout => f.write_str("malformed"),
        }
    }
}

/// Decodes an index checkpoint, checking its magic, version, CRC and layout.
pub(super) fn decode(bytes: &[u8]) -> Result<IndexFile, Invalid> {
    if bytes.len() < INDEX_HEADER_LEN + 4 {
        return Err(Invalid::Checksum);
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if bytes[..8] != INDEX_MAGIC[..] {
        return Err(Invalid::Magic);
    }
    if crc32(&[body]) != crc {
        return Err(Invalid::Checksum);
    }
    let mut r = Reader::new(body);
    let layout = |_| Invalid::Layout;
    r.take(8).map_err(layout)?;
    let version = r.u32().map_err(layout)? as u32;
    if version != INDEX_VERSION {
        return Err(Invalid::Version(version));
    }
    let lsn = r.u64().map_err(layout)?;
    let segment = r.u64().map_err(layout)?;
    let mailboxes = r.u64().map_err(layout)?;
    let room = (body.len() - INDEX_HEADER_LEN) / INDEX_ENTRY_LEN;
    let mut entries = Vec::with_capacity(room);
    for _ in 0..mailboxes {
        let recv_id = r.id().map_err(layout)?;
        let n = r.u32().map_err(layout)?;
        for _ in 0..n {
            let seq = r.u64().map_err(layout)?;
            let envelope_id = r.id().map_err(layout)?;
            let expires_at = r.u64().map_err(layout)?;
            let segment = r.u64().map_err(layout)?;
            let offset = r.u64().map_err(layout)?;
            let len = u32::try_from(r.u32().map_err(layout)?).map_err(|_| Invalid::Layout)?;
            entries.push(Recovered::Enqueue {
                recv_id,
                seq,
                envelope_id,
                expires_at,
                body: BodyRef {
                    segment,
                    offset,
                    len,
                },
            });
        }
    }
    if !r.at_end() {
        return Err(Invalid::Layout);
    }
    Ok(IndexFile {
        lsn,
        segment,
        entries,
        bytes: bytes.len() as u64,
    })
}

/// The LSNs of the index checkpoints in `dir`, newest first; removes unfinished ones (temporary
/// names) if `clean`.
fn list(fs: &dyn LogFs, dir: &Path, clean: bool) -> Result<Vec<u64>, StoreError> {
    let mut lsns = Vec::new();
    for name in fs.list(dir).map_err(backend_err)? {
        if name.starts_with(PREFIX) && name.ends_with(TMP_SUFFIX) {
            if clean {
                fs.remove(&dir.join(&name)).map_err(backend_err)?;
            }
        } else if let Some(lsn) = index_lsn(&name) {
            lsns.push(lsn);
        }
    }
    lsns.sort_unstable_by(|a, b| b.cmp(a));
    Ok(lsns)
}

/// The newest valid index checkpoint in `dir`, if any. A damaged or unreadable one is reported
/// and skipped (the log after an older one, or the whole log, still holds everything).
pub(super) fn load_newest(fs: &dyn LogFs, dir: &Path) -> Result<Option<IndexFile>, StoreError> {
    for lsn in list(fs, dir, true)? {
        let path = dir.join(index_name(lsn));
        let read = fs.open(&path).and_then(|f| {
            f.drop_cache(0, None);
            let size = f.size()?;
            let mut buf = vec![0u8; usize::try_from(size).unwrap_or(usize::MAX).min(1 << 40)];
            f.read_exact_at(&mut buf, 0)?;
            Ok(buf)
        });
        let bytes = match read {
            Ok(b) => b,
            Err(err) => {
                tracing::warn!(file = %index_name(lsn), error = %err, "index checkpoint unreadable; using an older one or the whole log");
                continue;
            }
        };
        match decode(&bytes) {
            Ok(index) if index.lsn == lsn => return Ok(Some(index)),
            Ok(_) => {
                tracing::warn!(file = %index_name(lsn), "index checkpoint names another LSN; using an older one or the whole log");
            }
            Err(why) => {
                tracing::warn!(file = %index_name(lsn), %why, "index checkpoint not used; using an older one or the whole log");
            }
        }
    }
    Ok(None)
}

/// A failed index checkpoint write.
pub(super) enum WriteError {
    /// Before the rename: the checkpoint was not written, the older ones stand.
    NotWritten(StoreError),
    /// The rename or the directory sync failed: the directory's state on disk is unknown.
    Directory(StoreError),
}

/// Writes `bytes` as the index checkpoint at `lsn`, durably (temporary name, `fsync`, rename,
/// directory `fsync`), then deletes all but the newest [`KEEP`].
pub(super) fn write(fs: &dyn LogFs, dir: &Path, lsn: u64, bytes: &[u8]) -> Result<(), WriteError> {
    let tmp = dir.join(format!("{}{TMP_SUFFIX}", index_name(lsn)));
    let written = fs.create(&tmp).and_then(|f| {
        f.write_all_at(bytes, 0)?;
        f.sync_all()?;
        // Written once and read only at the next start.
        f.drop_cache(0, None);
        Ok(())
    });
    if let Err(err) = written {
        let _ = fs.remove(&tmp);
        return Err(WriteError::NotWritten(backend_err(err)));
    }
    fs.rename(&tmp, &dir.join(index_name(lsn)))
        .and_then(|()| fs.sync_dir(dir))
        .map_err(|e| WriteError::Directory(backend_err(e)))?;
    // Older ones are valid too (see the module docs): deleting them needs no directory sync.
    if let Ok(lsns) = list(fs, dir, false) {
        for old in lsns.into_iter().skip(KEEP) {
            let _ = fs.remove(&dir.join(index_name(old)));
        }
    }
    Ok(())
}

/// Deletes every index checkpoint in `dir` (a repair that drops log records makes them
/// wrong); the caller syncs the directory.
pub(super) fn remove_all(fs: &dyn LogFs, dir: &Path) -> Result<(), StoreError> {
    for lsn in list(fs, dir, true)? {
        fs.remove(&dir.join(index_name(lsn))).map_err(backend_err)?;
    }
    Ok(())
}

/// The segment from which the next index checkpoint is due, after one of `bytes` written
/// when segment `segment` was the first to replay: at least [`INDEX_EVERY_SEGMENTS`] segments
/// later, and at least the checkpoint's own size of log later, so that writing checkpoints
/// costs at most about one byte per byte of log.
pub(super) fn next_due(segment: u64, bytes: u64, segment_size: u64) -> u64 {
    let by_size = bytes.div_ceil(segment_size.max(1));
    segment.saturating_add(by_size.max(INDEX_EVERY_SEGMENTS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(recv: u8, seq: u64) -> Recovered {
        Recovered::Enqueue {
            recv_id: [recv; 16],
            seq,
            envelope_id: [seq as u8; 16],
            expires_at: 1000 + seq,
            body: BodyRef {
                segment: 3,
                offset: 4096 + seq,
                len: 10,
            },
        }
    }

    #[test]
    fn index_round_trips_and_rejects_any_flipped_byte() {
        let entries = vec![env(1, 1), env(1, 2), env(2, 7)];
        let bytes = encode(42, 3, &entries);
        assert_eq!(
            bytes.len(),
            INDEX_HEADER_LEN + 2 * 20 + 3 * INDEX_ENTRY_LEN + 4
        );
        let back = decode(&bytes).unwrap();
        assert_eq!((back.lsn, back.segment), (42, 3));
        assert_eq!(back.entries, entries);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad).is_err(), "byte {i}");
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "length {n}");
        }
    }

    #[test]
    fn unknown_version_is_not_read() {
        let mut bytes = encode(1, 1, &[]);
        bytes[8..12].copy_from_slice(&2u32.to_be_bytes());
        let n = bytes.len() - 4;
        let crc = crc32(&[&bytes[..n]]);
        bytes[n..].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(decode(&bytes).err(), Some(Invalid::Version(2)));
    }

    #[test]
    fn due_after_two_segments_or_the_checkpoint_size() {
        assert_eq!(next_due(5, 10, 1 << 20), 7);
        assert_eq!(next_due(5, 5 << 20, 1 << 20), 10);
    }
}
