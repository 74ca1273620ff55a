//! Protocol constants and named limits.
//!
//! Every limit here is part of the wire contract: a peer that exceeds one gets a
//! [`DecodeError`](crate::DecodeError) (or, from the relay, a typed error response). Relays may
//! configure *lower* operational limits (see docs/OPERATIONS.md) but never higher ones.

/// Protocol version carried in every relay request.
pub const PROTOCOL_VERSION: u32 = 1;

/// QUIC ALPN identifier of protocol version 1.
pub const ALPN: &[u8] = b"handover/1";

/// Length of a frame header: a big-endian `u32` payload length.
pub const FRAME_HEADER_LEN: usize = 4;

/// Largest frame payload any peer may send (4 MiB). Decoders refuse larger frames before
/// buffering them.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Largest sealed envelope ciphertext (256 KiB). Larger content goes into attachments (blobs).
pub const MAX_ENVELOPE_LEN: usize = 256 * 1024;

/// Largest blob chunk carried by one [`BlobChunk`](crate::relay::v1::BlobChunk) frame (256 KiB).
pub const MAX_BLOB_CHUNK_LEN: usize = 256 * 1024;

/// Length of mailbox receive ids, send ids, envelope ids, blob ids, device ids, message ids,
/// referral ids and receipt ids.
pub const ID_LEN: usize = 16;

/// Length of X25519 and Ed25519 public keys, symmetric keys, capabilities and SHA-256 digests.
pub const KEY_LEN: usize = 32;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Length of an ML-KEM-768 encapsulation (public) key (FIPS 203).
pub const ML_KEM_768_PUBLIC_KEY_LEN: usize = 1184;

/// Length of an ML-KEM-768 ciphertext (FIPS 203).
pub const ML_KEM_768_CIPHERTEXT_LEN: usize = 1088;

/// Most capability hashes one mailbox accepts.
pub const MAX_CAPABILITIES: usize = 256;

/// Longest `CreateMailbox.creation_token`, bytes.
pub const MAX_CREATION_TOKEN_LEN: usize = 256;

/// Most envelope ids in one `Ack` or `EnvelopeStatus`.
pub const MAX_IDS_PER_REQUEST: usize = 1024;

/// Most mailboxes in one `Subscribe`.
pub const MAX_SUBSCRIPTIONS: usize = 64;

/// Most one-time prekeys (of each kind) in one `PrekeyPublish`.
pub const MAX_PREKEYS_PER_PUBLISH: usize = 200;

/// Longest short string field (names, labels, codes, tags), in bytes.
pub const MAX_SHORT_STRING_LEN: usize = 1024;

/// Longest free-text field (notes, narratives, chat text), in bytes.
pub const MAX_TEXT_LEN: usize = 64 * 1024;

/// Most entries in any repeated field not limited more tightly above.
pub const MAX_REPEATED: usize = 256;

/// Most signed control messages in one `SenderCase` (a referral timeline holds at most this
/// many entries after the offer).
pub const MAX_CASE_CONTROLS: usize = 1024;
