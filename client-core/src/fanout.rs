//! Organisation fan-out (docs/PROTOCOL.md §10): a packet for a whole organisation is encrypted
//! once, as an attachment-style blob of an encoded `Content` under a fresh random content key;
//! a [`wire::FanoutKey`] (a `BlobRef` with key, plaintext hash and size) then travels through
//! the pairwise session with each active device of the organisation, which fetches the blob,
//! decrypts it and checks the hash and size.

use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use handover_proto::limits::ID_LEN;
use prost::Message;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::attachment::{self, AttachmentError, EncryptedFile};

/// Largest encoded packet (16 MiB); documents travel as separate attachments.
pub const MAX_PACKET_LEN: u64 = 16 * 1024 * 1024;

/// Errors from fan-out packets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FanoutError {
    /// The packet could not be decrypted, its hash or size is wrong, or it does not decode as a
    /// valid `Content`.
    #[error("could not decrypt")]
    CouldNotDecrypt,
    /// The packet is larger than [`MAX_PACKET_LEN`].
    #[error("packet too large")]
    TooLarge,
    /// The `FanoutKey` is malformed.
    #[error("malformed fan-out key")]
    MalformedKey,
    /// The packet carries a referral or consent step (an offer, body, control message or
    /// consent receipt) or another fan-out key. Those travel pairwise, never in an organisation
    /// packet (docs/PROTOCOL.md §10).
    #[error(
        "referral and consent steps are sent to each device pairwise, never in an organisation \
         packet"
    )]
    NotAllowedInPacket,
}

/// Whether `content` may travel in an organisation packet (docs/PROTOCOL.md §10): not a
/// referral or consent step (those are applied exactly once with the pairwise message that
/// carries them, only on non-ambassador devices where required, and recorded per device for
/// erasure), and not another fan-out key.
fn allowed_in_packet(content: &wire::Content) -> bool {
    use wire::content::Body;
    !matches!(
        content.body,
        Some(
            Body::ReferralOffer(_)
                | Body::SignedReferralOffer(_)
                | Body::ReferralBody(_)
                | Body::ReferralControl(_)
                | Body::ConsentReceipt(_)
                | Body::FanoutKey(_)
        )
    )
}

/// A packet encrypted once for an organisation.
#[derive(Debug)]
pub struct FanoutPacket {
    /// The blob to upload to the relay.
    pub ciphertext: Vec<u8>,
    /// Key, hash and size of the packet.
    pub file: EncryptedFile,
}

impl FanoutPacket {
    /// The key message to send to each device once the relay stored the blob as `blob_id`.
    pub fn fanout_key(&self, blob_id: [u8; ID_LEN], relay: String) -> wire::FanoutKey {
        wire::FanoutKey {
            packet: Some(self.file.blob_ref(blob_id, relay)),
        }
    }
}

/// Encrypts `content` once under a fresh content key. Refuses referral and consent steps
/// ([`FanoutError::NotAllowedInPacket`]).
pub fn encrypt_packet(
    content: &wire::Content,
    rng: &mut impl CryptoRng,
) -> Result<FanoutPacket, FanoutError> {
    if !allowed_in_packet(content) {
        return Err(FanoutError::NotAllowedInPacket);
    }
    let encoded = Zeroizing::new(content.encode_to_vec());
    if encoded.len() as u64 > MAX_PACKET_LEN {
        return Err(FanoutError::TooLarge);
    }
    let mut ciphertext =
        Vec::with_capacity(attachment::ciphertext_len(encoded.len() as u64) as usize);
    let file = attachment::encrypt(rng, &mut &encoded[..], &mut ciphertext, |_| {})
        .map_err(|_| FanoutError::TooLarge)?;
    Ok(FanoutPacket { ciphertext, file })
}

/// Decrypts a packet fetched for `key` and decodes its `Content`. A packet carrying a referral
/// or consent step is refused ([`FanoutError::NotAllowedInPacket`]) and nothing of it is
/// returned.
pub fn decrypt_packet(
    key: &wire::FanoutKey,
    ciphertext: &[u8],
) -> Result<wire::Content, FanoutError> {
    let blob = key.packet.as_ref().ok_or(FanoutError::MalformedKey)?;
    if blob.size > MAX_PACKET_LEN {
        return Err(FanoutError::TooLarge);
    }
    if ciphertext.len() as u64 != attachment::ciphertext_len(blob.size) {
        return Err(FanoutError::CouldNotDecrypt);
    }
    let mut plaintext = Zeroizing::new(Vec::with_capacity(blob.size as usize));
    attachment::decrypt(blob, &mut &ciphertext[..], &mut *plaintext, |_| {}).map_err(|err| {
        match err {
            AttachmentError::MalformedReference => FanoutError::MalformedKey,
            _ => FanoutError::CouldNotDecrypt,
        }
    })?;
    let content = decode::content(&plaintext).map_err(|_| FanoutError::CouldNotDecrypt)?;
    if !allowed_in_packet(&content) {
        return Err(FanoutError::NotAllowedInPacket);
    }
    Ok(content)
}
