//! Attachments: the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár, "Online
//! Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", 2015) over
//! ChaCha20-Poly1305 in [`SEGMENT_LEN`] plaintext segments (docs/PROTOCOL.md §9).
//!
//! - A fresh random 32-byte key per file; nothing else is ever encrypted under it.
//! - Segment `i` (from 0) is sealed with nonce `0x00^7 || u32be(i) || flag`, where `flag` is
//!   `0x01` for the last segment and `0x00` otherwise (the `aead-stream` `StreamBE32`
//!   layout), and empty associated data.
//! - Every segment but the last holds exactly [`SEGMENT_LEN`] plaintext bytes; the last holds
//!   0..=[`SEGMENT_LEN`] (0 only for an empty file). The ciphertext is the concatenation of the
//!   sealed segments (each plaintext plus a 16-byte tag).
//! - The reader knows a segment is the last when no ciphertext follows it; the flag in the
//!   nonce makes truncation at a segment boundary, reordering and extension fail to decrypt.
//! - The `BlobRef` carries the key, the plaintext SHA-256 and size, checked after decryption.
//!
//! Encryption and decryption stream over `std::io::Read` / `Write`, a chunk of
//! `CHUNK_SEGMENTS` segments (256 KiB) at a time: segments are sealed and opened out of place
//! from one reused input buffer into one reused output buffer (no per-segment allocation or
//! copy), and each chunk is one read and one write. The plaintext SHA-256 is computed on the
//! calling thread or, on request and for files above [`BACKGROUND_HASH_MIN`], on a second
//! thread that receives plaintext chunks in order over a bounded channel ([`Hashing`]); either
//! way the hash is over exactly the same bytes and the receiver always checks it.

use std::fmt;
use std::io::{self, Read, Write};

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use handover_proto::e2e::v1 as wire;
use handover_proto::limits::{ID_LEN, KEY_LEN};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Plaintext bytes per segment (64 KiB).
pub const SEGMENT_LEN: usize = 64 * 1024;
/// Tag bytes per segment.
pub const TAG_LEN: usize = 16;
/// Length of the 7-byte nonce prefix (all zero: each key encrypts one file).
pub const NONCE_PREFIX: [u8; 7] = [0; 7];

/// Errors from attachment encryption and decryption.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// Reading the input or writing the output failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The ciphertext did not decrypt, or the plaintext's hash or size differs from the
    /// reference (any reason; output written so far must be discarded).
    #[error("could not decrypt")]
    CouldNotDecrypt,
    /// The file has more segments than the 32-bit counter allows.
    #[error("file too large")]
    TooLarge,
    /// The blob reference is malformed.
    #[error("malformed blob reference")]
    MalformedReference,
    /// The reference announces a file larger than this client downloads
    /// ([`MAX_ATTACHMENT_LEN`]); nothing was fetched.
    #[error("the attachment is {size} bytes, more than the {limit} bytes this client accepts")]
    ExceedsLimit {
        /// Plaintext size the reference announces.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
}

/// A 32-byte file key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct FileKey(Box<[u8; KEY_LEN]>);

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self(_) = self;
        f.write_str("FileKey(..)")
    }
}

impl FileKey {
    /// A fresh random key.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut key = Box::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut key[..]);
        Self(key)
    }

    /// A key from its bytes (for example from a `BlobRef`).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(Self(Box::new(arr)))
    }

    /// The key bytes (secret).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&(*self.0).into())
    }
}

/// The result of encrypting a file: what goes into its `BlobRef`.
#[derive(Clone, Debug)]
pub struct EncryptedFile {
    /// The file key.
    pub key: FileKey,
    /// SHA-256 of the plaintext.
    pub plaintext_sha256: [u8; 32],
    /// Plaintext size in bytes.
    pub size: u64,
}

impl EncryptedFile {
    /// The `BlobRef` for this file once the relay has stored it under `blob_id`.
    pub fn blob_ref(&self, blob_id: [u8; ID_LEN], relay: String) -> wire::BlobRef {
        wire::BlobRef {
            blob_id: blob_id.to_vec(),
            relay,
            key: self.key.as_bytes().to_vec(),
            plaintext_sha256: self.plaintext_sha256.to_vec(),
            size: self.size,
        }
    }
}

/// The largest attachment, in plaintext bytes, a client uploads or downloads: 100 MiB, the
/// relay's default `max_blob_bytes` (docs/PROTOCOL.md §9). A received `BlobRef` that announces
/// more is refused before anything is fetched, and no buffer is ever sized from a peer's
/// `size` above it.
pub const MAX_ATTACHMENT_LEN: u64 = 100 * 1024 * 1024;

/// Checks a received blob reference before its download: its plaintext `size` must be at most
/// `limit`. Returns the ciphertext length the relay must announce (`BlobHeader.size`) and
/// deliver, exactly.
pub fn download_len(blob: &wire::BlobRef, limit: u64) -> Result<u64, AttachmentError> {
    if blob.size > limit {
        return Err(AttachmentError::ExceedsLimit {
            size: blob.size,
            limit,
        });
    }
    Ok(ciphertext_len(blob.size))
}

/// Ciphertext length of a `size`-byte plaintext.
pub fn ciphertext_len(size: u64) -> u64 {
    let seg = SEGMENT_LEN as u64;
    let segments = size.div_ceil(seg).max(1);
    size + segments * TAG_LEN as u64
}

/// Plaintext segments processed per read/write (256 KiB of plaintext): one read fills a
/// chunk, one write emits its sealed segments.
const CHUNK_SEGMENTS: usize = 4;
/// Plaintext bytes per chunk.
const PT_CHUNK: usize = CHUNK_SEGMENTS * SEGMENT_LEN;
/// Ciphertext bytes per full segment.
const CT_SEGMENT: usize = SEGMENT_LEN + TAG_LEN;
/// Ciphertext bytes per chunk of full segments.
const CT_CHUNK: usize = CHUNK_SEGMENTS * CT_SEGMENT;
/// Plaintext hashed on the calling thread before [`Hashing::Background`] moves the SHA-256
/// to a second thread (1 MiB): below this, starting a thread costs more than it saves.
pub const BACKGROUND_HASH_MIN: u64 = 1024 * 1024;
/// Plaintext chunk buffers in use at once when hashing in the background (one being filled,
/// the rest queued for or being hashed): bounds memory to about 1 MiB.
const MAX_HASH_BUFFERS: usize = 4;

/// Where the plaintext SHA-256 (`BlobRef.plaintext_sha256`) is computed. The hash is over the
/// same bytes either way, and the receiver always checks it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hashing {
    /// On the calling thread (the default): one thread does everything.
    #[default]
    CallingThread,
    /// On a second thread, overlapping with encryption or decryption, once more than
    /// [`BACKGROUND_HASH_MIN`] bytes were processed and the machine has more than one CPU
    /// (otherwise, and if the thread cannot be started, on the calling thread). Worth it only
    /// when a core is idle: on a saturated machine it gains nothing and can be slower
    /// (docs/PERFORMANCE.md).
    Background,
}

/// The STREAM nonce of segment `index`: `NONCE_PREFIX || u32be(index) || flag`.
/// `None` past the 2^32 − 1 segments a file may have.
fn stream_nonce(index: u64, last: bool) -> Option<Nonce> {
    let index = u32::try_from(index).ok().filter(|i| *i != u32::MAX)?;
    let mut nonce = [0u8; 12];
    nonce[..7].copy_from_slice(&NONCE_PREFIX);
    nonce[7..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    Some(nonce.into())
}

/// Initial size of a buffer; buffers grow (doubling, up to a chunk) only as far as the data
/// needs, so a small file costs no more than its size in buffer set-up and zeroization.
const INITIAL_BUF: usize = 16 * 1024;

/// Reads into `buf[filled..limit]` until it is full or the input ends and returns the new
/// fill level. `buf.len()` is the initialized part (it only grows, doubling up to `limit`,
/// zero-filled once when it grows), so a reused buffer is never cleared again.
fn fill(
    reader: &mut impl Read,
    buf: &mut Vec<u8>,
    mut filled: usize,
    limit: usize,
) -> io::Result<usize> {
    while filled < limit {
        if filled == buf.len() {
            let grow = buf.len().max(INITIAL_BUF).min(limit - buf.len());
            ensure_len(buf, buf.len() + grow);
        }
        let end = buf.len().min(limit);
        match reader.read(&mut buf[filled..end]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Makes `buf` at least `len` bytes long (exact allocation, zero-filled new part).
fn ensure_len(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.reserve_exact(len - buf.len());
        buf.resize(len, 0);
    }
}

fn hash_worker_failed() -> io::Error {
    io::Error::other("attachment hashing thread failed")
}

/// A plaintext chunk queued for hashing.
struct HashJob {
    buf: Zeroizing<Vec<u8>>,
    len: usize,
}

/// The background hashing thread: it receives plaintext chunks in order over a bounded
/// channel and hands the buffers back for reuse.
struct HashWorker {
    jobs: SyncSender<HashJob>,
    returned: Receiver<Zeroizing<Vec<u8>>>,
    handle: JoinHandle<Sha256>,
}

enum HashState {
    CallingThread(Sha256),
    Background(HashWorker),
}

/// SHA-256 of the plaintext, in order, plus the pool of (zeroized on drop) plaintext chunk
/// buffers it hashes from.
struct PlaintextHasher {
    state: HashState,
    may_move: bool,
    hashed: u64,
    free: Vec<Zeroizing<Vec<u8>>>,
    allocated: usize,
}

impl PlaintextHasher {
    fn new(hashing: Hashing) -> Self {
        Self {
            state: HashState::CallingThread(Sha256::new()),
            may_move: hashing == Hashing::Background,
            hashed: 0,
            free: Vec::new(),
            allocated: 0,
        }
    }

    /// A free plaintext chunk buffer (empty, or holding stale plaintext).
    fn buffer(&mut self) -> io::Result<Zeroizing<Vec<u8>>> {
        if let HashState::Background(worker) = &self.state {
            self.free.extend(worker.returned.try_iter());
            if self.free.is_empty() && self.allocated >= MAX_HASH_BUFFERS {
                return worker.returned.recv().map_err(|_| hash_worker_failed());
            }
        }
        if let Some(buf) = self.free.pop() {
            return Ok(buf);
        }
        self.allocated += 1;
        Ok(Zeroizing::new(Vec::new()))
    }

    /// Hashes `buf[..len]` (the next plaintext bytes) and recycles the buffer.
    fn update(&mut self, buf: Zeroizing<Vec<u8>>, len: usize) -> io::Result<()> {
        self.hashed += len as u64;
        match &mut self.state {
            HashState::CallingThread(hasher) => {
                hasher.update(&buf[..len]);
                self.free.push(buf);
                if self.may_move && self.hashed >= BACKGROUND_HASH_MIN {
                    self.may_move = false;
                    self.move_to_background();
                }
                Ok(())
            }
            HashState::Background(worker) => worker
                .jobs
                .send(HashJob { buf, len })
                .map_err(|_| hash_worker_failed()),
        }
    }

    /// Continues the hash on a second thread if the machine has more than one CPU and a
    /// thread can be started; otherwise stays on the calling thread.
    fn move_to_background(&mut self) {
        let HashState::CallingThread(hasher) = &self.state else {
            return;
        };
        if std::thread::available_parallelism().map_or(true, |n| n.get() < 2) {
            return;
        }
        let mut hasher = hasher.clone();
        let (jobs, job_rx) = mpsc::sync_channel::<HashJob>(MAX_HASH_BUFFERS - 2);
        let (return_tx, returned) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("handover-attachment-sha256".into())
            .spawn(move || {
                for job in job_rx {
                    hasher.update(&job.buf[..job.len]);
                    // The caller may have stopped (an error): the buffer is then dropped,
                    // and zeroized, here.
                    let _ = return_tx.send(job.buf);
                }
                hasher
            });
        if let Ok(handle) = spawned {
            self.state = HashState::Background(HashWorker {
                jobs,
                returned,
                handle,
            });
        }
    }

    /// The SHA-256 of everything passed to [`update`](Self::update).
    fn finish(self) -> io::Result<[u8; 32]> {
        let hasher = match self.state {
            HashState::CallingThread(hasher) => hasher,
            HashState::Background(HashWorker {
                jobs,
                returned,
                handle,
            }) => {
                drop(jobs);
                drop(returned);
                handle.join().map_err(|_| hash_worker_failed())?
            }
        };
        Ok(hasher.finalize().into())
    }
}

/// Encrypts everything `plaintext` yields to `ciphertext` under a fresh key, calling
/// `progress` with the plaintext bytes done after each segment.
pub fn encrypt(
    rng: &mut impl CryptoRng,
    plaintext: &mut impl Read,
    ciphertext: &mut impl Write,
    progress: impl FnMut(u64),
) -> Result<EncryptedFile, AttachmentError> {
    let key = FileKey::generate(rng);
    encrypt_with_key(key, plaintext, ciphertext, progress)
}

/// [`encrypt`] under a given key (which must never have been used before).
pub fn encrypt_with_key(
    key: FileKey,
    plaintext: &mut impl Read,
    ciphertext: &mut impl Write,
    progress: impl FnMut(u64),
) -> Result<EncryptedFile, AttachmentError> {
    encrypt_with_options(key, Hashing::default(), plaintext, ciphertext, progress)
}

/// [`encrypt_with_key`], choosing where the plaintext hash is computed.
pub fn encrypt_with_options(
    key: FileKey,
    hashing: Hashing,
    plaintext: &mut impl Read,
    ciphertext: &mut impl Write,
    mut progress: impl FnMut(u64),
) -> Result<EncryptedFile, AttachmentError> {
    let cipher = key.cipher();
    let mut hasher = PlaintextHasher::new(hashing);
    // Sealed segments of one chunk (ciphertext only, so not zeroized).
    let mut sealed = Vec::new();
    let mut segment_ends = [0u64; CHUNK_SEGMENTS];
    let mut index: u64 = 0;
    let mut size: u64 = 0;
    // A chunk and one byte of look-ahead: the chunk's last segment is the file's last
    // exactly when nothing follows it.
    let mut chunk = hasher.buffer()?;
    let mut filled = 0;
    loop {
        filled = fill(plaintext, &mut chunk, filled, PT_CHUNK + 1)?;
        let last_chunk = filled <= PT_CHUNK;
        let body = filled.min(PT_CHUNK);
        let segments = body.div_ceil(SEGMENT_LEN).max(1);
        ensure_len(&mut sealed, body + segments * TAG_LEN);
        let (mut pos, mut out, mut count) = (0, 0, 0);
        loop {
            let len = (body - pos).min(SEGMENT_LEN);
            let last = last_chunk && pos + len == body;
            // A segment that is not the last needs a successor index.
            let nonce = stream_nonce(index, last)
                .filter(|_| last || index + 1 < u64::from(u32::MAX))
                .ok_or(AttachmentError::TooLarge)?;
            let buffer = InOutBuf::new(&chunk[pos..pos + len], &mut sealed[out..out + len])
                .map_err(|_| AttachmentError::TooLarge)?;
            let tag = cipher
                .encrypt_inout_detached(&nonce, &[], buffer)
                .map_err(|_| AttachmentError::TooLarge)?;
            sealed[out + len..out + len + TAG_LEN].copy_from_slice(&tag);
            pos += len;
            out += len + TAG_LEN;
            index += 1;
            size += len as u64;
            segment_ends[count] = size;
            count += 1;
            if pos == body {
                break;
            }
        }
        ciphertext.write_all(&sealed[..out])?;
        segment_ends[..count]
            .iter()
            .for_each(|&done| progress(done));
        if last_chunk {
            hasher.update(chunk, body)?;
            break;
        }
        let mut next = hasher.buffer()?;
        ensure_len(&mut next, 1);
        next[0] = chunk[PT_CHUNK];
        hasher.update(chunk, PT_CHUNK)?;
        chunk = next;
        filled = 1;
    }
    Ok(EncryptedFile {
        key,
        plaintext_sha256: hasher.finish()?,
        size,
    })
}

/// Decrypts a file described by `blob` (key, plaintext SHA-256 and size) from `ciphertext`
/// to `plaintext`, calling `progress` with the plaintext bytes done after each segment.
///
/// Only authenticated segments are written, but the whole file is verified (final segment,
/// size, hash) only when this returns `Ok`: on error, discard everything written.
pub fn decrypt(
    blob: &wire::BlobRef,
    ciphertext: &mut impl Read,
    plaintext: &mut impl Write,
    progress: impl FnMut(u64),
) -> Result<(), AttachmentError> {
    decrypt_with_options(blob, Hashing::default(), ciphertext, plaintext, progress)
}

/// [`decrypt`], choosing where the plaintext hash is computed.
pub fn decrypt_with_options(
    blob: &wire::BlobRef,
    hashing: Hashing,
    ciphertext: &mut impl Read,
    plaintext: &mut impl Write,
    mut progress: impl FnMut(u64),
) -> Result<(), AttachmentError> {
    let key = FileKey::from_bytes(&blob.key).ok_or(AttachmentError::MalformedReference)?;
    let expected_hash: [u8; 32] = blob
        .plaintext_sha256
        .as_slice()
        .try_into()
        .map_err(|_| AttachmentError::MalformedReference)?;
    let cipher = key.cipher();
    let mut hasher = PlaintextHasher::new(hashing);
    // A chunk of ciphertext segments and one byte of look-ahead.
    let mut sealed = Vec::new();
    let mut segment_ends = [0u64; CHUNK_SEGMENTS];
    let mut index: u64 = 0;
    let mut size: u64 = 0;
    let mut filled = 0;
    loop {
        filled = fill(ciphertext, &mut sealed, filled, CT_CHUNK + 1)?;
        let last_chunk = filled <= CT_CHUNK;
        let body = filled.min(CT_CHUNK);
        let mut chunk = hasher.buffer()?;
        ensure_len(&mut chunk, body);
        let (mut pos, mut out, mut count) = (0, 0, 0);
        loop {
            let len = (body - pos).min(CT_SEGMENT);
            // Also refuses an empty ciphertext (a file has at least one segment).
            let Some(msg_len) = len.checked_sub(TAG_LEN) else {
                return Err(AttachmentError::CouldNotDecrypt);
            };
            let last = last_chunk && pos + len == body;
            let nonce = stream_nonce(index, last).ok_or(AttachmentError::CouldNotDecrypt)?;
            let (segment, tag) = sealed[pos..pos + len].split_at(msg_len);
            let tag = Tag::try_from(tag).map_err(|_| AttachmentError::CouldNotDecrypt)?;
            let buffer = InOutBuf::new(segment, &mut chunk[out..out + msg_len])
                .map_err(|_| AttachmentError::CouldNotDecrypt)?;
            cipher
                .decrypt_inout_detached(&nonce, &[], buffer, &tag)
                .map_err(|_| AttachmentError::CouldNotDecrypt)?;
            pos += len;
            out += msg_len;
            index += 1;
            size += msg_len as u64;
            if size > blob.size {
                return Err(AttachmentError::CouldNotDecrypt);
            }
            segment_ends[count] = size;
            count += 1;
            if pos == body {
                break;
            }
        }
        plaintext.write_all(&chunk[..out])?;
        segment_ends[..count]
            .iter()
            .for_each(|&done| progress(done));
        hasher.update(chunk, out)?;
        if last_chunk {
            break;
        }
        sealed[0] = sealed[CT_CHUNK];
        filled = 1;
    }
    let hash = hasher.finish()?;
    if size != blob.size || !bool::from(hash.ct_eq(&expected_hash)) {
        return Err(AttachmentError::CouldNotDecrypt);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use aead_stream::{DecryptorBE32, EncryptorBE32};

    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    /// The STREAM ciphertext as `aead-stream`'s `StreamBE32` produces it (the reference).
    fn reference_seal(key: &FileKey, pt: &[u8]) -> Vec<u8> {
        let mut enc = EncryptorBE32::from_aead(key.cipher(), &NONCE_PREFIX.into());
        let mut out = Vec::new();
        let segments: Vec<&[u8]> = if pt.is_empty() {
            vec![&[][..]]
        } else {
            pt.chunks(SEGMENT_LEN).collect()
        };
        let (last, rest) = segments.split_last().unwrap();
        for seg in rest {
            let mut buf = seg.to_vec();
            enc.encrypt_next_in_place(&[], &mut buf).unwrap();
            out.extend(buf);
        }
        let mut buf = last.to_vec();
        enc.encrypt_last_in_place(&[], &mut buf).unwrap();
        out.extend(buf);
        out
    }

    fn reference_open(key: &FileKey, ct: &[u8]) -> Vec<u8> {
        let mut dec = DecryptorBE32::from_aead(key.cipher(), &NONCE_PREFIX.into());
        let mut out = Vec::new();
        let segments: Vec<&[u8]> = ct.chunks(CT_SEGMENT).collect();
        let (last, rest) = segments.split_last().unwrap();
        for seg in rest {
            let mut buf = seg.to_vec();
            dec.decrypt_next_in_place(&[], &mut buf).unwrap();
            out.extend(buf);
        }
        let mut buf = last.to_vec();
        dec.decrypt_last_in_place(&[], &mut buf).unwrap();
        out.extend(buf);
        out
    }

    const MODES: [Hashing; 2] = [Hashing::CallingThread, Hashing::Background];

    /// Reads at most 7000 bytes per call.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(7000);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn matches_the_reference_stream_at_chunk_boundaries() {
        let big = BACKGROUND_HASH_MIN as usize;
        for len in [
            0,
            1,
            SEGMENT_LEN,
            PT_CHUNK - 1,
            PT_CHUNK,
            PT_CHUNK + 1,
            PT_CHUNK + SEGMENT_LEN,
            2 * PT_CHUNK,
            big,
            big + 1,
            big + PT_CHUNK + 3,
        ] {
            let pt = data(len);
            for mode in MODES {
                let key = FileKey::from_bytes(&[len as u8; 32]).unwrap();
                let mut ct = Vec::new();
                let file =
                    encrypt_with_options(key.clone(), mode, &mut Trickle(&pt), &mut ct, |_| {})
                        .unwrap();
                assert_eq!(ct, reference_seal(&key, &pt), "len {len} {mode:?}");
                assert_eq!(ct.len() as u64, ciphertext_len(len as u64));
                assert_eq!(reference_open(&key, &ct), pt);
                assert_eq!(file.plaintext_sha256, <[u8; 32]>::from(Sha256::digest(&pt)));
                assert_eq!(file.size, len as u64);
                let blob = file.blob_ref([0; ID_LEN], String::new());
                for open_mode in MODES {
                    let mut out = Vec::new();
                    let mut seen = Vec::new();
                    decrypt_with_options(&blob, open_mode, &mut Trickle(&ct), &mut out, |n| {
                        seen.push(n)
                    })
                    .unwrap();
                    assert_eq!(out, pt, "len {len} {mode:?} {open_mode:?}");
                    let expected: Vec<u64> = (1..=len.div_ceil(SEGMENT_LEN).max(1))
                        .map(|i| (i * SEGMENT_LEN).min(len) as u64)
                        .collect();
                    assert_eq!(seen, expected);
                }
            }
        }
    }

    #[test]
    fn large_files_detect_tampering_truncation_and_hash_mismatch() {
        let len = 2 * BACKGROUND_HASH_MIN as usize + 5;
        let pt = data(len);
        let mut ct = Vec::new();
        let file = encrypt_with_options(
            FileKey::from_bytes(&[9; 32]).unwrap(),
            Hashing::Background,
            &mut &pt[..],
            &mut ct,
            |_| {},
        )
        .unwrap();
        let blob = file.blob_ref([0; ID_LEN], String::new());
        let open = |blob: &wire::BlobRef, ct: &[u8], mode| {
            decrypt_with_options(blob, mode, &mut &ct[..], &mut Vec::new(), |_| {})
        };
        for mode in MODES {
            assert!(open(&blob, &ct, mode).is_ok());
            // A flipped byte late in the file (after hashing moved to the second thread).
            let mut bad = ct.clone();
            bad[len - 100] ^= 1;
            assert!(matches!(
                open(&blob, &bad, mode),
                Err(AttachmentError::CouldNotDecrypt)
            ));
            // Truncated at a segment boundary, and by one byte.
            let cut = 20 * CT_SEGMENT;
            assert!(open(&blob, &ct[..cut], mode).is_err());
            assert!(open(&blob, &ct[..ct.len() - 1], mode).is_err());
            // Extended.
            let mut long = ct.clone();
            long.push(0);
            assert!(open(&blob, &long, mode).is_err());
            // Wrong hash or size in the reference.
            let mut wrong = blob.clone();
            wrong.plaintext_sha256[31] ^= 1;
            assert!(open(&wrong, &ct, mode).is_err());
            let mut wrong = blob.clone();
            wrong.size -= 1;
            assert!(open(&wrong, &ct, mode).is_err());
            let mut wrong = blob.clone();
            wrong.size += 1;
            assert!(open(&wrong, &ct, mode).is_err());
        }
        // An empty ciphertext is not a file.
        assert!(open(&blob, &[], Hashing::CallingThread).is_err());
    }

    #[test]
    fn nonces_follow_stream_be32() {
        let n = stream_nonce(0x0102_0304, true).unwrap();
        assert_eq!(&n[..], &[0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 1]);
        assert!(stream_nonce(u64::from(u32::MAX) - 1, false).is_some());
        assert!(stream_nonce(u64::from(u32::MAX), true).is_none());
    }
}
