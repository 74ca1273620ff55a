//! Sealed-sender envelopes (docs/PROTOCOL.md §8).
//!
//! What the relay stores is `Envelope.ciphertext = enc (32) || ct`, an HPKE (RFC 9180)
//! Base-mode single-shot encryption with suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
//! ChaCha20Poly1305 to the recipient mailbox's X25519 sealing key, with
//!
//! - `info` = [`HPKE_INFO`];
//! - `aad` = `envelope_id (16) || u64be(expires_at)`, so the relay cannot change either;
//! - plaintext = the encoded [`wire::Sealed`] padded ISO/IEC 7816-4 style (`0x80` then zero
//!   bytes) to the smallest bucket in [`PADDING_BUCKETS`] that holds it plus the `0x80`.
//!
//! The `hpke` crate does the HPKE; nothing here re-implements it.

use std::fmt;

use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use handover_proto::limits::{ID_LEN, MAX_ENVELOPE_LEN};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use prost::Message;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

/// HPKE `info` of sealed-sender envelopes.
pub const HPKE_INFO: &[u8] = b"handover/1 sealed-sender";
/// Length of the HPKE encapsulated key (`enc`) at the start of an envelope ciphertext.
pub const ENC_LEN: usize = 32;
/// Length of the ChaCha20Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Largest padded plaintext: what fits in `MAX_ENVELOPE_LEN` after `enc` and the tag.
pub const MAX_PADDED_LEN: usize = MAX_ENVELOPE_LEN - ENC_LEN - TAG_LEN;
/// Padded plaintext sizes: powers of two from 1 KiB to 128 KiB, then [`MAX_PADDED_LEN`].
pub const PADDING_BUCKETS: [usize; 9] = [
    1024,
    2048,
    4096,
    8192,
    16384,
    32768,
    65536,
    131072,
    MAX_PADDED_LEN,
];

type SuiteKem = X25519HkdfSha256;

/// Errors from sealing and opening envelopes. Opening failures are opaque.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The envelope could not be opened (any reason).
    #[error("could not decrypt")]
    CouldNotDecrypt,
    /// The encoded message does not fit in the largest bucket.
    #[error("message too large for an envelope")]
    TooLarge,
    /// The recipient sealing key is invalid.
    #[error("invalid sealing key")]
    InvalidKey,
}

/// A mailbox's X25519 sealing key pair: envelopes to the mailbox are sealed to its public half
/// (published as `DeviceAddress.sealing_key`).
pub struct MailboxSealingKey {
    secret: Box<<SuiteKem as Kem>::PrivateKey>,
}

impl fmt::Debug for MailboxSealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { secret: _ } = self;
        f.debug_struct("MailboxSealingKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl MailboxSealingKey {
    /// A fresh random key.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let (secret, _) = SuiteKem::gen_keypair_with_rng(rng);
        Self {
            secret: Box::new(secret),
        }
    }

    /// Restores a key from its 32 secret bytes (clamped as RFC 9180 requires).
    pub fn from_secret_bytes(bytes: &[u8; 32]) -> Self {
        // 32 bytes always deserialise; fall back to a derived key to stay panic-free.
        let secret = <SuiteKem as Kem>::PrivateKey::from_bytes(bytes)
            .unwrap_or_else(|_| SuiteKem::derive_keypair(bytes).0);
        Self {
            secret: Box::new(secret),
        }
    }

    /// The 32 secret bytes, for the encrypted local store.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&self.secret.to_bytes());
        out
    }

    /// The public sealing key (32 bytes).
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&SuiteKem::sk_to_pk(&self.secret).to_bytes());
        out
    }
}

/// `envelope_id || u64be(expires_at)`.
pub fn envelope_aad(envelope_id: &[u8; ID_LEN], expires_at: u64) -> [u8; ID_LEN + 8] {
    let mut aad = [0u8; ID_LEN + 8];
    aad[..ID_LEN].copy_from_slice(envelope_id);
    aad[ID_LEN..].copy_from_slice(&expires_at.to_be_bytes());
    aad
}

/// Pads `message` to its bucket: `message || 0x80 || 0x00...`.
pub fn pad(message: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let bucket = PADDING_BUCKETS
        .iter()
        .copied()
        .find(|b| *b > message.len())
        .ok_or(SealError::TooLarge)?;
    let mut out = Zeroizing::new(Vec::with_capacity(bucket));
    out.extend_from_slice(message);
    out.push(0x80);
    out.resize(bucket, 0);
    Ok(out)
}

/// Removes the padding; the length must be a bucket size.
pub fn unpad(padded: &[u8]) -> Option<&[u8]> {
    if !PADDING_BUCKETS.contains(&padded.len()) {
        return None;
    }
    let end = padded.iter().rposition(|b| *b != 0)?;
    (padded[end] == 0x80).then(|| &padded[..end])
}

/// Seals a `Sealed` message to a recipient mailbox. Returns `Envelope.ciphertext`.
pub fn seal(
    recipient_sealing_key: &[u8; 32],
    sealed: &wire::Sealed,
    envelope_id: &[u8; ID_LEN],
    expires_at: u64,
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, SealError> {
    let encoded = Zeroizing::new(sealed.encode_to_vec());
    let padded = pad(&encoded)?;
    seal_padded(recipient_sealing_key, &padded, envelope_id, expires_at, rng)
}

fn seal_padded(
    recipient_sealing_key: &[u8; 32],
    padded: &[u8],
    envelope_id: &[u8; ID_LEN],
    expires_at: u64,
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, SealError> {
    let pk = <SuiteKem as Kem>::PublicKey::from_bytes(recipient_sealing_key)
        .map_err(|_| SealError::InvalidKey)?;
    let aad = envelope_aad(envelope_id, expires_at);
    let (enc, ct) = hpke::single_shot_seal_with_rng::<ChaCha20Poly1305, HkdfSha256, SuiteKem>(
        &OpModeS::Base,
        &pk,
        HPKE_INFO,
        padded,
        &aad,
        rng,
    )
    .map_err(|_| SealError::InvalidKey)?;
    let mut out = Vec::with_capacity(ENC_LEN + ct.len());
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens an envelope sealed to `key` and decodes (and structurally validates) the `Sealed`
/// inside. The caller must then check the sender certificate against its session
/// ([`Session::check_sender`](crate::session::Session::check_sender)) before trusting anything.
pub fn open(
    key: &MailboxSealingKey,
    envelope_id: &[u8; ID_LEN],
    expires_at: u64,
    ciphertext: &[u8],
) -> Result<wire::Sealed, SealError> {
    let fail = SealError::CouldNotDecrypt;
    if ciphertext.len() < ENC_LEN + TAG_LEN || ciphertext.len() > MAX_ENVELOPE_LEN {
        return Err(fail);
    }
    let (enc, ct) = ciphertext.split_at(ENC_LEN);
    let enc = <SuiteKem as Kem>::EncappedKey::from_bytes(enc).map_err(|_| fail.clone())?;
    let aad = envelope_aad(envelope_id, expires_at);
    let padded = Zeroizing::new(
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, SuiteKem>(
            &OpModeR::Base,
            &key.secret,
            &enc,
            HPKE_INFO,
            ct,
            &aad,
        )
        .map_err(|_| fail.clone())?,
    );
    let message = unpad(&padded).ok_or(fail.clone())?;
    decode::sealed(message).map_err(|_| fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_round_trips_and_hits_buckets() {
        for len in [
            0usize,
            1,
            1023,
            1024,
            5000,
            131071,
            131072,
            MAX_PADDED_LEN - 1,
        ] {
            let msg = vec![0xAB; len];
            let padded = pad(&msg).unwrap();
            assert!(PADDING_BUCKETS.contains(&padded.len()));
            assert_eq!(unpad(&padded).unwrap(), &msg[..]);
        }
        assert_eq!(pad(&vec![0; MAX_PADDED_LEN]), Err(SealError::TooLarge));
    }

    #[test]
    fn unpad_rejects_bad_padding() {
        assert!(unpad(&[0u8; 1024]).is_none());
        let mut p = vec![0u8; 1024];
        p[10] = 0x81;
        assert!(unpad(&p).is_none());
        assert!(unpad(&[0x80; 1000]).is_none());
    }
}
