//! The payload of a log record: one or more batches, each its LSN, its keyspace writes and its
//! envelope records (layout in docs/STORAGE.md).

use super::super::kv::{Batch, BodyRef, LogOp, Recovered};
use super::super::{Id, StoreError};

pub(super) const OP_ENQUEUE: u8 = 1;
pub(super) const OP_REMOVE: u8 = 2;
pub(super) const OP_DROP: u8 = 3;

pub(super) fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

pub(super) fn put_u32(out: &mut Vec<u8>, n: usize) -> Result<(), StoreError> {
    let n = u32::try_from(n).map_err(|_| StoreError::Backend("record too large".into()))?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

/// Encodes one batch at the end of `out`; returns, for each enqueue, the position of its body
/// within `out`.
pub(super) fn encode_batch(
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

pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Whether every byte was read.
    pub(super) fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self.pos.checked_add(n).ok_or(StoreError::Corrupt)?;
        let out = self.buf.get(self.pos..end).ok_or(StoreError::Corrupt)?;
        self.pos = end;
        Ok(out)
    }

    pub(super) fn u32(&mut self) -> Result<usize, StoreError> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| StoreError::Corrupt)?;
        Ok(u32::from_be_bytes(b) as usize)
    }

    pub(super) fn u64(&mut self) -> Result<u64, StoreError> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| StoreError::Corrupt)?;
        Ok(u64::from_be_bytes(b))
    }

    pub(super) fn id(&mut self) -> Result<Id, StoreError> {
        self.take(16)?.try_into().map_err(|_| StoreError::Corrupt)
    }
}

/// One decoded batch: LSN, keyspace writes, envelope records.
pub(super) type Decoded = (u64, Batch, Vec<Recovered>);

/// Decodes the batches of one record payload that starts at byte `at` of `segment`.
pub(super) fn decode_batches(
    payload: &[u8],
    segment: u64,
    at: u64,
) -> Result<Vec<Decoded>, StoreError> {
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
