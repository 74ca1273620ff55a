//! Migration from the previous store format (envelopes in sled, two log files `wal-0` and
//! `wal-1`).

use std::path::Path;

use super::super::kv::{Batch, KvBackend, LogOp, Recovered};
use super::super::{Id, StoreError};
use super::format::crc32;
use super::fs::LogFs;
use super::segment::{RECORD_HEADER_LEN, sync_dir_entries};
use super::{LogBackend, backend_err};

/// The log files of the previous store format (envelopes in sled).
pub(super) const OLD_WAL_FILES: [&str; 2] = ["wal-0", "wal-1"];
/// Magic of an old log file header (magic, epoch, crc32; records from byte 4096, each
/// `crc32 | len | epoch | payload`).
pub(super) const OLD_WAL_MAGIC: &[u8; 8] = b"HOVRWAL1";
/// Tables of the previous format that held envelopes: queue entries, envelope-id index, and
/// the envelope kind of the expiry index.
pub(super) const OLD_T_QUEUE: u8 = b'Q';
pub(super) const OLD_T_ENV: u8 = b'E';
pub(super) const OLD_T_EXPIRY: u8 = b'X';
pub(super) const OLD_X_ENVELOPE: u8 = 1;
/// Envelopes moved per migration step.
pub(super) const OLD_MIGRATE_STEP: usize = 1_000;

/// A queue entry of the previous format.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct OldQueuedRec {
    #[prost(bytes = "vec", tag = "1")]
    pub(super) envelope_id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub(super) expires_at: u64,
    #[prost(bytes = "vec", tag = "3")]
    pub(super) ciphertext: Vec<u8>,
}

/// Checks that the old log files hold no record of their current generation, i.e. that the
/// previous version shut down cleanly (its shutdown checkpoint put everything into sled).
pub(super) fn old_format_is_clean(fs: &dyn LogFs, dir: &Path) -> Result<(), StoreError> {
    for name in OLD_WAL_FILES {
        let file = match fs.open(&dir.join(name)) {
            Ok(f) => f,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(backend_err(err)),
        };
        let size = file.size().map_err(backend_err)?;
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
impl LogBackend {
    /// Moves the envelopes of a store written by the previous format (queue entries in sled,
    /// two log files `wal-0`/`wal-1`, shut down cleanly) into the log, then deletes the old
    /// log files. Each step is one atomic log batch (enqueue records plus the deletion of the
    /// old keys), synced before the next, so a crash midway is resumed on the next start.
    pub(super) fn migrate_old_format(&self, dir: &Path) -> Result<(), StoreError> {
        let mut moved = 0u64;
        loop {
            let mut ops_data = Vec::new();
            let queue = self.db.range(&[OLD_T_QUEUE], &[OLD_T_QUEUE + 1]);
            for entry in queue.take(OLD_MIGRATE_STEP) {
                let (k, v) = entry?;
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
                let rec = <OldQueuedRec as prost::Message>::decode(v.as_slice())
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
            match self.fs.remove(&dir.join(name)) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(backend_err(err)),
            }
        }
        sync_dir_entries(self.fs.as_ref(), dir)?;
        tracing::info!(
            envelopes = moved,
            "store migrated from the two-file log format"
        );
        Ok(())
    }
}
