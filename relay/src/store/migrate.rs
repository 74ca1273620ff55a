//! `handover-relay migrate`: moves an embedded store's mailboxes (with their queues,
//! tombstones and prekeys), directory and complete blobs into PostgreSQL.
//!
//! Resumable: each mailbox moves in one transaction and is skipped when already there, the
//! directory is written with the usual "newer wins" rule, and a blob already complete in the
//! database is skipped (an incomplete one, from an interrupted run, is written again). Run it
//! with the relay stopped (the embedded store's lock makes sure of that), as often as needed.
//!
//! Verified: after moving, every mailbox is read back from the database and its digest
//! ([`MailboxExport::digest`]) compared with the embedded store's; the directory is compared
//! entry by entry and every blob by SHA-256. The counts and the combined digests are in the
//! [`Report`].

use sha2::{Digest, Sha256};

use super::{DiskStore, Id, PgStore, Store, StoreError};

/// Mailboxes read from the embedded store at a time.
const PAGE: usize = 256;
/// Bytes of a blob moved per call.
const BLOB_PIECE: usize = 256 * 1024;

/// What a migration moved and verified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Mailboxes in the embedded store.
    pub mailboxes: u64,
    /// Of which already in the database (moved by an earlier run).
    pub already_there: u64,
    /// Envelopes queued in them.
    pub envelopes: u64,
    /// Tombstones.
    pub tombstones: u64,
    /// One-time prekeys of both kinds.
    pub one_time_prekeys: u64,
    /// Directory entries.
    pub directory: u64,
    /// Complete blobs.
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// SHA-256 over every mailbox digest (in receive id order), directory entry and blob, as
    /// read from the embedded store.
    pub source_digest: [u8; 32],
    /// The same, as read back from the database.
    pub copy_digest: [u8; 32],
}

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A store failed; what was moved so far stays, the next run resumes.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// What the database holds differs from the embedded store (changed since an earlier
    /// run, or written by something else).
    #[error("verification failed: {0} differs in the database")]
    Differs(&'static str),
}

/// Moves everything from `from` into `to`, then verifies it. `progress` is told of each
/// page of mailboxes and each phase.
pub fn migrate(
    from: &DiskStore,
    to: &PgStore,
    progress: &mut dyn FnMut(&str),
) -> Result<Report, MigrateError> {
    let mut report = Report::default();
    let mut source = Sha256::new();
    let mut copy = Sha256::new();
    let mut after: Option<Id> = None;
    loop {
        let page = from.export_mailboxes(after.as_ref(), PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.recv_id);
        for m in &page {
            report.mailboxes += 1;
            report.envelopes += m.envelopes.len() as u64;
            report.tombstones += m.tombstones.len() as u64;
            report.one_time_prekeys += (m.one_time.len() + m.one_time_kem.len()) as u64;
            if !to.import_mailbox(m)? {
                report.already_there += 1;
            }
            let back = to
                .export_mailbox(&m.recv_id)?
                .ok_or(MigrateError::Differs("a mailbox"))?;
            let (a, b) = (m.digest(), back.digest());
            if a != b {
                return Err(MigrateError::Differs("a mailbox"));
            }
            source.update(a);
            copy.update(b);
        }
        progress(&format!("{} mailboxes moved", report.mailboxes));
    }
    for (org, issued_at, profile) in from.export_directory()? {
        to.directory_put(&org, issued_at, &profile)?;
        report.directory += 1;
        let entry = [org.as_slice(), &issued_at.to_be_bytes(), &profile].concat();
        source.update(Sha256::digest(&entry));
    }
    let mut directory = from.export_directory()?;
    directory.sort_by_key(|d| d.0);
    let profiles: Vec<Vec<u8>> = directory.iter().map(|d| d.2.clone()).collect();
    if to.directory_all()? != profiles {
        return Err(MigrateError::Differs("the directory"));
    }
    for (org, issued_at, profile) in &directory {
        let entry = [org.as_slice(), &issued_at.to_be_bytes(), profile].concat();
        copy.update(Sha256::digest(&entry));
    }
    progress(&format!("{} directory entries moved", report.directory));
    for blob_id in from.export_blob_ids()? {
        let Some(meta) = from.blob_meta(&blob_id)? else {
            continue;
        };
        match to.blob_meta(&blob_id)? {
            Some(there) if there.complete && there.size == meta.size => {}
            there => {
                if there.is_some() {
                    to.blob_delete(&blob_id)?;
                }
                to.blob_begin(&blob_id, meta.size, meta.expires_at, u64::MAX)?;
                let mut offset = 0;
                while offset < meta.size {
                    let piece = from.blob_read(&blob_id, offset, BLOB_PIECE)?;
                    if piece.is_empty() {
                        return Err(MigrateError::Store(StoreError::Corrupt));
                    }
                    to.blob_append(&blob_id, &piece, u64::MAX)?;
                    offset += piece.len() as u64;
                }
                if !to.blob_complete(&blob_id)? {
                    return Err(MigrateError::Differs("a blob"));
                }
            }
        }
        let (a, b) = (
            blob_digest(from, &blob_id, meta.size)?,
            blob_digest(to, &blob_id, meta.size)?,
        );
        if a != b {
            return Err(MigrateError::Differs("a blob"));
        }
        source.update(a);
        copy.update(b);
        report.blobs += 1;
        report.blob_bytes += meta.size;
    }
    progress(&format!("{} blobs moved", report.blobs));
    report.source_digest = source.finalize().into();
    report.copy_digest = copy.finalize().into();
    Ok(report)
}

fn blob_digest(store: &dyn Store, blob_id: &Id, size: u64) -> Result<[u8; 32], StoreError> {
    let mut h = Sha256::new();
    h.update(blob_id);
    let mut offset = 0;
    while offset < size {
        let piece = store.blob_read(blob_id, offset, BLOB_PIECE)?;
        if piece.is_empty() {
            break;
        }
        h.update(&piece);
        offset += piece.len() as u64;
    }
    h.update(offset.to_be_bytes());
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::testing::TestDatabase;
    use crate::store::{
        BlobBegun, Enqueued, LogBackend, MIN_WAL_SIZE, Mailbox, MailboxQuota, NewEnvelope,
    };

    fn id(n: u8) -> Id {
        [n; 16]
    }

    #[test]
    fn an_embedded_store_moves_into_postgres_resumably_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let from =
            DiskStore::new(LogBackend::open_with_log_size(dir.path(), MIN_WAL_SIZE).unwrap());
        let quota = MailboxQuota {
            max_envelopes: 100,
            max_bytes: 1 << 20,
        };
        for n in 1..=3u8 {
            let mailbox = Mailbox {
                send_id: id(100 + n),
                auth_key: [n; 32],
                capability_hashes: vec![[n; 32], [9; 32]],
                queued_count: 0,
                queued_bytes: 0,
            };
            assert!(from.create_mailbox(&id(n), &mailbox).unwrap());
            for e in 0..5u8 {
                let envelope = NewEnvelope {
                    envelope_id: [e; 16],
                    expires_at: if e == 0 { 50 } else { 4_000_000_000 },
                    ciphertext: vec![n ^ e; 100 + usize::from(e)],
                };
                assert!(matches!(
                    from.enqueue(&id(n), &envelope, quota).unwrap(),
                    Enqueued::Queued(_)
                ));
            }
            from.ack(&id(n), &[[4; 16]]).unwrap();
            let keys: Vec<Vec<u8>> = (0..3).map(|k| vec![n, k]).collect();
            from.prekey_publish(&id(n), b"bundle", &keys, &keys[..1], 10)
                .unwrap();
        }
        // Envelope 0 expires and leaves a tombstone in each mailbox.
        from.sweep(60, 1_000, 3_600).unwrap();
        from.directory_put(&[1; 32], 5, b"org one").unwrap();
        from.directory_put(&[2; 32], 6, b"org two").unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|n| (n % 251) as u8).collect();
        assert_eq!(
            from.blob_begin(&id(50), data.len() as u64, 4_000_000_000, u64::MAX)
                .unwrap(),
            BlobBegun::Started
        );
        from.blob_append(&id(50), &data, u64::MAX).unwrap();
        assert!(from.blob_complete(&id(50)).unwrap());
        // An upload in progress does not move.
        from.blob_begin(&id(51), 10, 4_000_000_000, u64::MAX)
            .unwrap();
        from.sync().unwrap();

        let db = TestDatabase::create().unwrap();
        let to = PgStore::connect(&db.url, 2).unwrap();
        // An earlier run that stopped after the first mailbox.
        let first = from.export_mailboxes(None, 1).unwrap();
        assert!(to.import_mailbox(&first[0]).unwrap());

        let report = migrate(&from, &to, &mut |_| {}).unwrap();
        assert_eq!(
            (
                report.mailboxes,
                report.already_there,
                report.envelopes,
                report.tombstones
            ),
            (3, 1, 9, 3)
        );
        assert_eq!((report.one_time_prekeys, report.directory), (12, 2));
        assert_eq!((report.blobs, report.blob_bytes), (1, 300_000));
        assert_eq!(report.source_digest, report.copy_digest);
        // Run again: nothing moves twice, and it verifies the same.
        let again = migrate(&from, &to, &mut |_| {}).unwrap();
        assert_eq!(again.already_there, 3);
        assert_eq!(again.copy_digest, report.copy_digest);

        // The relay on PostgreSQL carries on where the embedded store stopped.
        let (queued, _) = to.fetch(&id(2), 0, 10, 100).unwrap();
        assert_eq!(
            queued.iter().map(|q| q.seq).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        let next = NewEnvelope {
            envelope_id: [7; 16],
            expires_at: 4_000_000_000,
            ciphertext: vec![7],
        };
        assert_eq!(
            to.enqueue(&id(2), &next, quota).unwrap(),
            Enqueued::Queued(6)
        );
        let taken = to.prekey_take(&id(2)).unwrap().unwrap();
        assert_eq!(taken.one_time, Some(vec![2, 0]));
        assert_eq!(taken.remaining, 2);
        assert_eq!(
            to.envelope_states(&id(2), &[[0; 16]], 100).unwrap(),
            vec![crate::store::Delivery::ExpiredUndelivered]
        );
        assert_eq!(to.blob_read(&id(50), 0, 1 << 20).unwrap(), data);
        assert!(to.blob_meta(&id(51)).unwrap().is_none());
        assert_eq!(to.usage().mailboxes, 3);
    }
}
