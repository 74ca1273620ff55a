//! [`Store`] logic over an ordered key-value backend.
//!
//! One ordered keyspace; the first key byte names the table. Each `Store` method reads under a
//! mutex, builds one batch of puts and deletes and applies it atomically, so every method is
//! atomic against concurrent callers and across crashes (the backend applies batches
//! atomically). The mutex is held only for in-memory work and page-cache writes, never across a
//! disk sync.
//!
//! | table | key | value |
//! |---|---|---|
//! | `M` mailbox | recv_id | [`MailboxRec`] |
//! | `S` send index | send_id | recv_id |
//! | `Q` queue | recv_id, seq | [`QueuedRec`] |
//! | `E` envelope index | recv_id, envelope_id | seq |
//! | `X` expiry index | expires_at, kind, rest | empty |
//! | `T` tombstone | recv_id, envelope_id | until |
//! | `P` prekey bundle | recv_id | bundle |
//! | `O` one-time prekey | recv_id, kind, counter | prekey |
//! | `D` directory | org root key | [`DirRec`] |
//! | `B` blob meta | blob_id | [`BlobRec`] |
//! | `C` blob chunk | blob_id, chunk index | bytes |
//! | `G` global counters | name | u64 (total declared blob bytes) |
//!
//! Integers in keys are big-endian so that key order is numeric order.

use std::sync::{Mutex, MutexGuard};

use prost::Message;

use super::{
    BlobBegun, BlobMeta, Delivery, Enqueued, Id, Mailbox, MailboxQuota, NewEnvelope, Published,
    Queued, Store, StoreError, Swept, TakenPrekeys,
};

/// A batch of writes: `Some(value)` puts, `None` deletes.
pub type Batch = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Entries returned by [`KvBackend::scan`], in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// An ordered byte-key store that applies batches atomically.
pub trait KvBackend: Send + Sync + 'static {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` entries with `start <= key < end`, in key order.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError>;
    /// Applies all writes atomically (also across a crash), in order.
    fn apply(&self, batch: Batch) -> Result<(), StoreError>;
    /// Makes every applied batch durable (see [`Store::sync`]).
    fn sync(&self) -> Result<(), StoreError>;
    /// Makes every applied batch durable and compacts recovery data (see
    /// [`Store::checkpoint`]).
    fn checkpoint(&self) -> Result<(), StoreError> {
        self.sync()
    }
}

/// Size of stored blob chunks; uploads are re-chunked to it so reads can seek by index.
pub const BLOB_STORE_CHUNK: usize = 256 * 1024;

const T_MAILBOX: u8 = b'M';
const T_SEND: u8 = b'S';
const T_QUEUE: u8 = b'Q';
const T_ENV: u8 = b'E';
const T_EXPIRY: u8 = b'X';
const T_TOMB: u8 = b'T';
const T_BUNDLE: u8 = b'P';
const T_ONETIME: u8 = b'O';
const T_DIR: u8 = b'D';
const T_BLOB: u8 = b'B';
const T_CHUNK: u8 = b'C';
/// Key (table `G`, global counters) of the total declared size of all stored blobs, for the
/// blob-store quota.
const G_BLOB_BYTES: &[u8] = b"Gblob-bytes";

const X_ENVELOPE: u8 = 1;
const X_TOMBSTONE: u8 = 2;
const X_BLOB: u8 = 3;

const OT_X25519: u8 = 1;
const OT_KEM: u8 = 2;

#[derive(Clone, PartialEq, Message)]
struct MailboxRec {
    #[prost(bytes = "vec", tag = "1")]
    send_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    auth_key: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "3")]
    capability_hashes: Vec<Vec<u8>>,
    #[prost(uint64, tag = "4")]
    next_seq: u64,
    #[prost(uint64, tag = "5")]
    queued_count: u64,
    #[prost(uint64, tag = "6")]
    queued_bytes: u64,
    #[prost(uint64, tag = "7")]
    next_prekey: u64,
    #[prost(uint64, tag = "8")]
    one_time_count: u64,
    #[prost(uint64, tag = "9")]
    one_time_kem_count: u64,
}

#[derive(Clone, PartialEq, Message)]
struct QueuedRec {
    #[prost(bytes = "vec", tag = "1")]
    envelope_id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    expires_at: u64,
    #[prost(bytes = "vec", tag = "3")]
    ciphertext: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct DirRec {
    #[prost(uint64, tag = "1")]
    issued_at: u64,
    #[prost(bytes = "vec", tag = "2")]
    profile: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct BlobRec {
    #[prost(uint64, tag = "1")]
    size: u64,
    #[prost(uint64, tag = "2")]
    expires_at: u64,
    #[prost(uint64, tag = "3")]
    written: u64,
    #[prost(bool, tag = "4")]
    complete: bool,
}

fn key(table: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.push(table);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// The exclusive upper bound of all keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|_| StoreError::Corrupt)
}

fn id_of(bytes: &[u8]) -> Result<Id, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt)
}

fn u64_of(bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt)?;
    Ok(u64::from_be_bytes(arr))
}

fn hash_of(bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt)
}

impl MailboxRec {
    fn to_mailbox(&self) -> Result<Mailbox, StoreError> {
        Ok(Mailbox {
            send_id: id_of(&self.send_id)?,
            auth_key: hash_of(&self.auth_key)?,
            capability_hashes: self
                .capability_hashes
                .iter()
                .map(|h| hash_of(h))
                .collect::<Result<_, _>>()?,
            queued_count: self.queued_count,
            queued_bytes: self.queued_bytes,
        })
    }
}

/// [`Store`] over any [`KvBackend`]; see the module table for the layout.
pub struct KvStore<B> {
    backend: B,
    lock: Mutex<()>,
}

impl<B: KvBackend> std::fmt::Debug for KvStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore").finish_non_exhaustive()
    }
}

impl<B: KvBackend> KvStore<B> {
    /// A store over `backend`.
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            lock: Mutex::new(()),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        // The guarded state lives in the backend, whose batches are atomic: a panic while the
        // lock was held cannot have left it half-written, so a poisoned lock is safe to reuse.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mailbox_rec(&self, recv_id: &Id) -> Result<Option<MailboxRec>, StoreError> {
        self.backend
            .get(&key(T_MAILBOX, &[recv_id]))?
            .map(|v| decode(&v))
            .transpose()
    }

    fn queued_rec(&self, recv_id: &Id, seq: u64) -> Result<Option<QueuedRec>, StoreError> {
        self.backend
            .get(&key(T_QUEUE, &[recv_id, &seq.to_be_bytes()]))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Adds deletion of one queued envelope (queue entry, index, expiry entry) to `batch`.
    fn delete_queued(batch: &mut Batch, recv_id: &Id, seq: u64, rec: &QueuedRec) {
        let seq_be = seq.to_be_bytes();
        batch.push((key(T_QUEUE, &[recv_id, &seq_be]), None));
        batch.push((key(T_ENV, &[recv_id, &rec.envelope_id]), None));
        batch.push((
            key(
                T_EXPIRY,
                &[
                    &rec.expires_at.to_be_bytes(),
                    &[X_ENVELOPE],
                    recv_id,
                    &seq_be,
                ],
            ),
            None,
        ));
    }

    fn blob_rec(&self, blob_id: &Id) -> Result<Option<BlobRec>, StoreError> {
        self.backend
            .get(&key(T_BLOB, &[blob_id]))?
            .map(|v| decode(&v))
            .transpose()
    }

    fn blob_total(&self) -> Result<u64, StoreError> {
        match self.backend.get(G_BLOB_BYTES)? {
            Some(v) => u64_of(&v),
            None => Ok(0),
        }
    }

    fn delete_blob_batch(&self, batch: &mut Batch, blob_id: &Id, rec: &BlobRec) {
        batch.push((key(T_BLOB, &[blob_id]), None));
        batch.push((
            key(
                T_EXPIRY,
                &[&rec.expires_at.to_be_bytes(), &[X_BLOB], blob_id],
            ),
            None,
        ));
        let chunks = rec.written.div_ceil(BLOB_STORE_CHUNK as u64);
        for index in 0..chunks {
            batch.push((key(T_CHUNK, &[blob_id, &index.to_be_bytes()]), None));
        }
    }

    fn take_one_time(
        &self,
        batch: &mut Batch,
        recv_id: &Id,
        kind: u8,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let prefix = key(T_ONETIME, &[recv_id, &[kind]]);
        let mut found = self.backend.scan(&prefix, &prefix_end(&prefix), 1)?;
        Ok(found.pop().map(|(k, v)| {
            batch.push((k, None));
            v
        }))
    }
}

impl<B: KvBackend> Store for KvStore<B> {
    fn create_mailbox(&self, recv_id: &Id, mailbox: &Mailbox) -> Result<bool, StoreError> {
        let _g = self.guard();
        let send_key = key(T_SEND, &[&mailbox.send_id]);
        let mailbox_key = key(T_MAILBOX, &[recv_id]);
        if self.backend.get(&mailbox_key)?.is_some() || self.backend.get(&send_key)?.is_some() {
            return Ok(false);
        }
        let rec = MailboxRec {
            send_id: mailbox.send_id.to_vec(),
            auth_key: mailbox.auth_key.to_vec(),
            capability_hashes: mailbox
                .capability_hashes
                .iter()
                .map(|h| h.to_vec())
                .collect(),
            next_seq: 1,
            ..MailboxRec::default()
        };
        self.backend.apply(vec![
            (mailbox_key, Some(rec.encode_to_vec())),
            (send_key, Some(recv_id.to_vec())),
        ])?;
        Ok(true)
    }

    fn mailbox(&self, recv_id: &Id) -> Result<Option<Mailbox>, StoreError> {
        self.mailbox_rec(recv_id)?
            .map(|r| r.to_mailbox())
            .transpose()
    }

    fn mailbox_by_send_id(&self, send_id: &Id) -> Result<Option<(Id, Mailbox)>, StoreError> {
        let Some(recv) = self.backend.get(&key(T_SEND, &[send_id]))? else {
            return Ok(None);
        };
        let recv_id = id_of(&recv)?;
        Ok(self.mailbox(&recv_id)?.map(|m| (recv_id, m)))
    }

    fn set_capabilities(&self, recv_id: &Id, hashes: &[[u8; 32]]) -> Result<bool, StoreError> {
        let _g = self.guard();
        let Some(mut rec) = self.mailbox_rec(recv_id)? else {
            return Ok(false);
        };
        rec.capability_hashes = hashes.iter().map(|h| h.to_vec()).collect();
        self.backend.apply(vec![(
            key(T_MAILBOX, &[recv_id]),
            Some(rec.encode_to_vec()),
        )])?;
        Ok(true)
    }

    fn delete_mailbox(&self, recv_id: &Id) -> Result<bool, StoreError> {
        let _g = self.guard();
        let Some(rec) = self.mailbox_rec(recv_id)? else {
            return Ok(false);
        };
        let mut batch: Batch = vec![
            (key(T_MAILBOX, &[recv_id]), None),
            (key(T_SEND, &[&rec.send_id]), None),
            (key(T_BUNDLE, &[recv_id]), None),
        ];
        let q = key(T_QUEUE, &[recv_id]);
        for (k, v) in self.backend.scan(&q, &prefix_end(&q), usize::MAX)? {
            let seq = u64_of(k.get(1 + 16..).ok_or(StoreError::Corrupt)?)?;
            Self::delete_queued(&mut batch, recv_id, seq, &decode(&v)?);
        }
        for table in [T_TOMB, T_ONETIME] {
            let p = key(table, &[recv_id]);
            for (k, v) in self.backend.scan(&p, &prefix_end(&p), usize::MAX)? {
                if table == T_TOMB {
                    let until = u64_of(&v)?;
                    let env = k.get(1 + 16..).ok_or(StoreError::Corrupt)?;
                    batch.push((
                        key(
                            T_EXPIRY,
                            &[&until.to_be_bytes(), &[X_TOMBSTONE], recv_id, env],
                        ),
                        None,
                    ));
                }
                batch.push((k, None));
            }
        }
        self.backend.apply(batch)?;
        Ok(true)
    }

    fn enqueue(
        &self,
        recv_id: &Id,
        envelope: &NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<Enqueued, StoreError> {
        let _g = self.guard();
        let Some(mut rec) = self.mailbox_rec(recv_id)? else {
            return Ok(Enqueued::NoMailbox);
        };
        let env_key = key(T_ENV, &[recv_id, &envelope.envelope_id]);
        if self.backend.get(&env_key)?.is_some() {
            return Ok(Enqueued::Duplicate);
        }
        let len = envelope.ciphertext.len() as u64;
        if rec.queued_count >= quota.max_envelopes
            || rec.queued_bytes.saturating_add(len) > quota.max_bytes
        {
            return Ok(Enqueued::QuotaExceeded);
        }
        let seq = rec.next_seq.max(1);
        rec.next_seq = seq + 1;
        rec.queued_count += 1;
        rec.queued_bytes += len;
        let seq_be = seq.to_be_bytes();
        let queued = QueuedRec {
            envelope_id: envelope.envelope_id.to_vec(),
            expires_at: envelope.expires_at,
            ciphertext: envelope.ciphertext.clone(),
        };
        self.backend.apply(vec![
            (
                key(T_QUEUE, &[recv_id, &seq_be]),
                Some(queued.encode_to_vec()),
            ),
            (env_key, Some(seq_be.to_vec())),
            (
                key(
                    T_EXPIRY,
                    &[
                        &envelope.expires_at.to_be_bytes(),
                        &[X_ENVELOPE],
                        recv_id,
                        &seq_be,
                    ],
                ),
                Some(Vec::new()),
            ),
            (key(T_MAILBOX, &[recv_id]), Some(rec.encode_to_vec())),
        ])?;
        Ok(Enqueued::Queued(seq))
    }

    fn fetch(
        &self,
        recv_id: &Id,
        after_seq: u64,
        limit: usize,
        now: u64,
    ) -> Result<(Vec<Queued>, bool), StoreError> {
        let start = key(
            T_QUEUE,
            &[recv_id, &after_seq.saturating_add(1).to_be_bytes()],
        );
        let end = prefix_end(&key(T_QUEUE, &[recv_id]));
        let mut out = Vec::new();
        let mut cursor = start;
        // Expired entries not yet swept are skipped; scan in pages until `limit + 1` live ones.
        loop {
            let page = self.backend.scan(&cursor, &end, limit.saturating_add(1))?;
            let exhausted = page.len() <= limit;
            for (k, v) in &page {
                let seq = u64_of(k.get(1 + 16..).ok_or(StoreError::Corrupt)?)?;
                let rec: QueuedRec = decode(v)?;
                if rec.expires_at <= now {
                    continue;
                }
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(Queued {
                    seq,
                    envelope: NewEnvelope {
                        envelope_id: id_of(&rec.envelope_id)?,
                        expires_at: rec.expires_at,
                        ciphertext: rec.ciphertext,
                    },
                });
            }
            match page.last() {
                Some((last, _)) if !exhausted => {
                    cursor = last.clone();
                    cursor.push(0);
                }
                _ => return Ok((out, false)),
            }
        }
    }

    fn ack(&self, recv_id: &Id, envelope_ids: &[Id]) -> Result<u64, StoreError> {
        let _g = self.guard();
        let Some(mut rec) = self.mailbox_rec(recv_id)? else {
            return Ok(0);
        };
        let mut batch = Batch::new();
        let mut deleted = 0;
        let mut seen = std::collections::HashSet::new();
        for id in envelope_ids {
            if !seen.insert(*id) {
                continue;
            }
            let Some(seq) = self.backend.get(&key(T_ENV, &[recv_id, id]))? else {
                continue;
            };
            let seq = u64_of(&seq)?;
            let Some(queued) = self.queued_rec(recv_id, seq)? else {
                continue;
            };
            Self::delete_queued(&mut batch, recv_id, seq, &queued);
            rec.queued_count = rec.queued_count.saturating_sub(1);
            rec.queued_bytes = rec
                .queued_bytes
                .saturating_sub(queued.ciphertext.len() as u64);
            deleted += 1;
        }
        if deleted > 0 {
            batch.push((key(T_MAILBOX, &[recv_id]), Some(rec.encode_to_vec())));
            self.backend.apply(batch)?;
        }
        Ok(deleted)
    }

    fn envelope_states(
        &self,
        recv_id: &Id,
        envelope_ids: &[Id],
        now: u64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut out = Vec::with_capacity(envelope_ids.len());
        for id in envelope_ids {
            let state = match self.backend.get(&key(T_ENV, &[recv_id, id]))? {
                Some(seq) => match self.queued_rec(recv_id, u64_of(&seq)?)? {
                    Some(q) if q.expires_at <= now => Delivery::ExpiredUndelivered,
                    Some(_) => Delivery::Pending,
                    None => Delivery::Unknown,
                },
                None => match self.backend.get(&key(T_TOMB, &[recv_id, id]))? {
                    Some(until) if u64_of(&until)? > now => Delivery::ExpiredUndelivered,
                    _ => Delivery::Unknown,
                },
            };
            out.push(state);
        }
        Ok(out)
    }

    fn prekey_publish(
        &self,
        recv_id: &Id,
        bundle: &[u8],
        one_time: &[Vec<u8>],
        one_time_kem: &[Vec<u8>],
        max_stored: u64,
    ) -> Result<Published, StoreError> {
        let _g = self.guard();
        let Some(mut rec) = self.mailbox_rec(recv_id)? else {
            return Ok(Published::NoMailbox);
        };
        if rec.one_time_count + one_time.len() as u64 > max_stored
            || rec.one_time_kem_count + one_time_kem.len() as u64 > max_stored
        {
            return Ok(Published::QuotaExceeded);
        }
        let mut batch: Batch = vec![(key(T_BUNDLE, &[recv_id]), Some(bundle.to_vec()))];
        for (kind, keys) in [(OT_X25519, one_time), (OT_KEM, one_time_kem)] {
            for k in keys {
                let n = rec.next_prekey;
                rec.next_prekey += 1;
                batch.push((
                    key(T_ONETIME, &[recv_id, &[kind], &n.to_be_bytes()]),
                    Some(k.clone()),
                ));
            }
        }
        rec.one_time_count += one_time.len() as u64;
        rec.one_time_kem_count += one_time_kem.len() as u64;
        batch.push((key(T_MAILBOX, &[recv_id]), Some(rec.encode_to_vec())));
        self.backend.apply(batch)?;
        Ok(Published::Stored)
    }

    fn prekey_take(&self, recv_id: &Id) -> Result<Option<TakenPrekeys>, StoreError> {
        let _g = self.guard();
        let Some(mut rec) = self.mailbox_rec(recv_id)? else {
            return Ok(None);
        };
        let Some(bundle) = self.backend.get(&key(T_BUNDLE, &[recv_id]))? else {
            return Ok(None);
        };
        let mut batch = Batch::new();
        let one_time = self.take_one_time(&mut batch, recv_id, OT_X25519)?;
        let one_time_kem = self.take_one_time(&mut batch, recv_id, OT_KEM)?;
        if one_time.is_some() {
            rec.one_time_count = rec.one_time_count.saturating_sub(1);
        }
        if one_time_kem.is_some() {
            rec.one_time_kem_count = rec.one_time_kem_count.saturating_sub(1);
        }
        if !batch.is_empty() {
            batch.push((key(T_MAILBOX, &[recv_id]), Some(rec.encode_to_vec())));
            self.backend.apply(batch)?;
        }
        Ok(Some(TakenPrekeys {
            bundle,
            one_time,
            one_time_kem,
            remaining: rec.one_time_count,
        }))
    }

    fn directory_put(
        &self,
        org_root_key: &[u8; 32],
        issued_at: u64,
        profile: &[u8],
    ) -> Result<bool, StoreError> {
        let _g = self.guard();
        let k = key(T_DIR, &[org_root_key]);
        if let Some(old) = self.backend.get(&k)? {
            let old: DirRec = decode(&old)?;
            if old.issued_at >= issued_at {
                return Ok(false);
            }
        }
        let rec = DirRec {
            issued_at,
            profile: profile.to_vec(),
        };
        self.backend.apply(vec![(k, Some(rec.encode_to_vec()))])?;
        Ok(true)
    }

    fn directory_all(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let p = [T_DIR];
        self.backend
            .scan(&p, &prefix_end(&p), usize::MAX)?
            .into_iter()
            .map(|(_, v)| decode::<DirRec>(&v).map(|r| r.profile))
            .collect()
    }

    fn blob_begin(
        &self,
        blob_id: &Id,
        size: u64,
        expires_at: u64,
        max_total: u64,
    ) -> Result<BlobBegun, StoreError> {
        let _g = self.guard();
        let k = key(T_BLOB, &[blob_id]);
        if self.backend.get(&k)?.is_some() {
            return Ok(BlobBegun::IdTaken);
        }
        let total = self.blob_total()?;
        if total.saturating_add(size) > max_total {
            return Ok(BlobBegun::QuotaExceeded);
        }
        let rec = BlobRec {
            size,
            expires_at,
            written: 0,
            complete: false,
        };
        self.backend.apply(vec![
            (k, Some(rec.encode_to_vec())),
            (
                key(T_EXPIRY, &[&expires_at.to_be_bytes(), &[X_BLOB], blob_id]),
                Some(Vec::new()),
            ),
            (
                G_BLOB_BYTES.to_vec(),
                Some((total + size).to_be_bytes().to_vec()),
            ),
        ])?;
        Ok(BlobBegun::Started)
    }

    fn blob_append(&self, blob_id: &Id, data: &[u8]) -> Result<bool, StoreError> {
        let _g = self.guard();
        let Some(mut rec) = self.blob_rec(blob_id)? else {
            return Ok(false);
        };
        if rec.complete || rec.written.saturating_add(data.len() as u64) > rec.size {
            return Ok(false);
        }
        let chunk_len = BLOB_STORE_CHUNK as u64;
        let mut batch = Batch::new();
        let mut rest = data;
        while !rest.is_empty() {
            let index = rec.written / chunk_len;
            let within = (rec.written % chunk_len) as usize;
            let take = rest.len().min(BLOB_STORE_CHUNK - within);
            let chunk_key = key(T_CHUNK, &[blob_id, &index.to_be_bytes()]);
            let mut chunk = if within == 0 {
                Vec::new()
            } else {
                match batch.iter().rev().find(|(k, _)| *k == chunk_key) {
                    Some((_, Some(v))) => v.clone(),
                    _ => self.backend.get(&chunk_key)?.ok_or(StoreError::Corrupt)?,
                }
            };
            chunk.extend_from_slice(&rest[..take]);
            batch.push((chunk_key, Some(chunk)));
            rec.written += take as u64;
            rest = &rest[take..];
        }
        batch.push((key(T_BLOB, &[blob_id]), Some(rec.encode_to_vec())));
        self.backend.apply(batch)?;
        Ok(true)
    }

    fn blob_complete(&self, blob_id: &Id) -> Result<bool, StoreError> {
        let _g = self.guard();
        let Some(mut rec) = self.blob_rec(blob_id)? else {
            return Ok(false);
        };
        if rec.written != rec.size {
            return Ok(false);
        }
        rec.complete = true;
        self.backend
            .apply(vec![(key(T_BLOB, &[blob_id]), Some(rec.encode_to_vec()))])?;
        Ok(true)
    }

    fn blob_meta(&self, blob_id: &Id) -> Result<Option<BlobMeta>, StoreError> {
        Ok(self.blob_rec(blob_id)?.map(|r| BlobMeta {
            size: r.size,
            expires_at: r.expires_at,
            written: r.written,
            complete: r.complete,
        }))
    }

    fn blob_read(&self, blob_id: &Id, offset: u64, max: usize) -> Result<Vec<u8>, StoreError> {
        let Some(rec) = self.blob_rec(blob_id)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut pos = offset;
        let chunk_len = BLOB_STORE_CHUNK as u64;
        while out.len() < max && pos < rec.written {
            let index = pos / chunk_len;
            let within = (pos % chunk_len) as usize;
            let chunk = self
                .backend
                .get(&key(T_CHUNK, &[blob_id, &index.to_be_bytes()]))?
                .ok_or(StoreError::Corrupt)?;
            let avail = chunk.get(within..).ok_or(StoreError::Corrupt)?;
            let take = avail.len().min(max - out.len());
            if take == 0 {
                return Err(StoreError::Corrupt);
            }
            out.extend_from_slice(&avail[..take]);
            pos += take as u64;
        }
        Ok(out)
    }

    fn blob_delete(&self, blob_id: &Id) -> Result<(), StoreError> {
        let _g = self.guard();
        if let Some(rec) = self.blob_rec(blob_id)? {
            let mut batch = Batch::new();
            self.delete_blob_batch(&mut batch, blob_id, &rec);
            let total = self.blob_total()?.saturating_sub(rec.size);
            batch.push((G_BLOB_BYTES.to_vec(), Some(total.to_be_bytes().to_vec())));
            self.backend.apply(batch)?;
        }
        Ok(())
    }

    fn sweep(&self, now: u64, budget: usize, tombstone_secs: u64) -> Result<Swept, StoreError> {
        let _g = self.guard();
        let start = [T_EXPIRY];
        let end = key(T_EXPIRY, &[&now.saturating_add(1).to_be_bytes()]);
        let mut swept = Swept::default();
        let mut batch = Batch::new();
        let mut mailboxes: std::collections::HashMap<Id, MailboxRec> = Default::default();
        let mut blob_bytes_freed = 0u64;
        for (k, _) in self.backend.scan(&start, &end, budget)? {
            batch.push((k.clone(), None));
            let kind = *k.get(9).ok_or(StoreError::Corrupt)?;
            let rest = k.get(10..).ok_or(StoreError::Corrupt)?;
            match kind {
                X_ENVELOPE => {
                    let recv_id = id_of(rest.get(..16).ok_or(StoreError::Corrupt)?)?;
                    let seq = u64_of(rest.get(16..).ok_or(StoreError::Corrupt)?)?;
                    let Some(queued) = self.queued_rec(&recv_id, seq)? else {
                        continue;
                    };
                    Self::delete_queued(&mut batch, &recv_id, seq, &queued);
                    let rec = match mailboxes.entry(recv_id) {
                        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::hash_map::Entry::Vacant(v) => {
                            match self.mailbox_rec(&recv_id)? {
                                Some(r) => v.insert(r),
                                None => continue,
                            }
                        }
                    };
                    rec.queued_count = rec.queued_count.saturating_sub(1);
                    rec.queued_bytes = rec
                        .queued_bytes
                        .saturating_sub(queued.ciphertext.len() as u64);
                    let until = now.saturating_add(tombstone_secs);
                    batch.push((
                        key(T_TOMB, &[&recv_id, &queued.envelope_id]),
                        Some(until.to_be_bytes().to_vec()),
                    ));
                    batch.push((
                        key(
                            T_EXPIRY,
                            &[
                                &until.to_be_bytes(),
                                &[X_TOMBSTONE],
                                &recv_id,
                                &queued.envelope_id,
                            ],
                        ),
                        Some(Vec::new()),
                    ));
                    swept.envelopes += 1;
                }
                X_TOMBSTONE => {
                    let tomb = key(T_TOMB, &[rest]);
                    // Only delete the tombstone this index entry belongs to.
                    if let Some(until) = self.backend.get(&tomb)?
                        && until.as_slice() == k.get(1..9).unwrap_or_default()
                    {
                        batch.push((tomb, None));
                        swept.tombstones += 1;
                    }
                }
                X_BLOB => {
                    let blob_id = id_of(rest)?;
                    if let Some(rec) = self.blob_rec(&blob_id)? {
                        self.delete_blob_batch(&mut batch, &blob_id, &rec);
                        blob_bytes_freed += rec.size;
                        swept.blobs += 1;
                    }
                }
                _ => return Err(StoreError::Corrupt),
            }
        }
        if blob_bytes_freed > 0 {
            let total = self.blob_total()?.saturating_sub(blob_bytes_freed);
            batch.push((G_BLOB_BYTES.to_vec(), Some(total.to_be_bytes().to_vec())));
        }
        for (recv_id, rec) in mailboxes {
            batch.push((key(T_MAILBOX, &[&recv_id]), Some(rec.encode_to_vec())));
        }
        if !batch.is_empty() {
            self.backend.apply(batch)?;
        }
        Ok(swept)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.backend.sync()
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        self.backend.checkpoint()
    }
}
