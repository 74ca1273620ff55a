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
//! Encryption and decryption stream over `std::io::Read` / `Write` with one segment buffered.

use std::fmt;
use std::io::{self, Read, Write};

use aead_stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::KeyInit;
use handover_proto::e2e::v1 as wire;
use handover_proto::limits::{ID_LEN, KEY_LEN};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

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

/// Ciphertext length of a `size`-byte plaintext.
pub fn ciphertext_len(size: u64) -> u64 {
    let seg = SEGMENT_LEN as u64;
    let segments = size.div_ceil(seg).max(1);
    size + segments * TAG_LEN as u64
}

/// Appends input to `buf` until it holds `limit` bytes or the input ends (no zero-filling).
fn fill_to(reader: &mut impl Read, buf: &mut Vec<u8>, limit: usize) -> io::Result<()> {
    let want = limit.saturating_sub(buf.len()) as u64;
    reader.by_ref().take(want).read_to_end(buf)?;
    Ok(())
}

/// Reads until `buf` is full or the input ends; returns the number of bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
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
    mut progress: impl FnMut(u64),
) -> Result<EncryptedFile, AttachmentError> {
    let mut encryptor = Some(EncryptorBE32::from_aead(key.cipher(), &NONCE_PREFIX.into()));
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    // Current segment and one byte of look-ahead to know whether it is the last.
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(SEGMENT_LEN + TAG_LEN));
    fill_to(plaintext, &mut buf, SEGMENT_LEN)?;
    let mut segments: u64 = 0;
    loop {
        let len = buf.len();
        let mut peek = [0u8; 1];
        let more = len == SEGMENT_LEN && read_full(plaintext, &mut peek)? == 1;
        hasher.update(&buf[..]);
        size += len as u64;
        segments += 1;
        if !more {
            encryptor
                .take()
                .ok_or(AttachmentError::TooLarge)?
                .encrypt_last_in_place(&[], &mut *buf)
                .map_err(|_| AttachmentError::TooLarge)?;
            ciphertext.write_all(&buf)?;
            progress(size);
            break;
        }
        if segments >= u64::from(u32::MAX) {
            return Err(AttachmentError::TooLarge);
        }
        encryptor
            .as_mut()
            .ok_or(AttachmentError::TooLarge)?
            .encrypt_next_in_place(&[], &mut *buf)
            .map_err(|_| AttachmentError::TooLarge)?;
        ciphertext.write_all(&buf)?;
        progress(size);
        buf.clear();
        buf.push(peek[0]);
        fill_to(plaintext, &mut buf, SEGMENT_LEN)?;
    }
    Ok(EncryptedFile {
        key,
        plaintext_sha256: hasher.finalize().into(),
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
    mut progress: impl FnMut(u64),
) -> Result<(), AttachmentError> {
    let key = FileKey::from_bytes(&blob.key).ok_or(AttachmentError::MalformedReference)?;
    let expected_hash: [u8; 32] = blob
        .plaintext_sha256
        .as_slice()
        .try_into()
        .map_err(|_| AttachmentError::MalformedReference)?;
    let mut decryptor = Some(DecryptorBE32::from_aead(key.cipher(), &NONCE_PREFIX.into()));
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    const CT_SEG: usize = SEGMENT_LEN + TAG_LEN;
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(CT_SEG));
    fill_to(ciphertext, &mut buf, CT_SEG)?;
    loop {
        let len = buf.len();
        let mut peek = [0u8; 1];
        let more = len == CT_SEG && read_full(ciphertext, &mut peek)? == 1;
        if more {
            decryptor
                .as_mut()
                .ok_or(AttachmentError::CouldNotDecrypt)?
                .decrypt_next_in_place(&[], &mut *buf)
                .map_err(|_| AttachmentError::CouldNotDecrypt)?;
        } else {
            decryptor
                .take()
                .ok_or(AttachmentError::CouldNotDecrypt)?
                .decrypt_last_in_place(&[], &mut *buf)
                .map_err(|_| AttachmentError::CouldNotDecrypt)?;
        }
        size += buf.len() as u64;
        if size > blob.size {
            return Err(AttachmentError::CouldNotDecrypt);
        }
        hasher.update(&buf[..]);
        plaintext.write_all(&buf)?;
        progress(size);
        if !more {
            break;
        }
        buf.clear();
        buf.push(peek[0]);
        fill_to(ciphertext, &mut buf, CT_SEG)?;
    }
    let hash: [u8; 32] = hasher.finalize().into();
    if size != blob.size || !bool::from(hash.ct_eq(&expected_hash)) {
        return Err(AttachmentError::CouldNotDecrypt);
    }
    Ok(())
}
