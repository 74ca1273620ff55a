//! The Double Ratchet, following Signal's specification
//! (<https://signal.org/docs/specifications/doubleratchet/>), with the recommended
//! cryptographic functions (spec §5.2):
//!
//! - `KDF_RK(rk, dh_out)` = HKDF-SHA256(salt = `rk`, IKM = `dh_out`, info = [`INFO_ROOT`]),
//!   64 bytes: new root key || chain key;
//! - `KDF_CK(ck)` = (HMAC-SHA256(ck, 0x02) as the next chain key,
//!   HMAC-SHA256(ck, 0x01) as the message key);
//! - `ENCRYPT(mk, pt, ad)`: HKDF-SHA256(salt = 32 zero bytes, IKM = `mk`,
//!   info = [`INFO_MESSAGE_KEYS`]), 44 bytes = ChaCha20-Poly1305 key (32) || nonce (12), then
//!   ChaCha20-Poly1305 with associated data `session AD || header`, where the header is
//!   `ratchet_key (32) || u32be(pn) || u32be(n)` (docs/PROTOCOL.md §7).
//!
//! Decryption is transactional: it runs on a staged copy of the state and commits only when the
//! message authenticates, so a message that fails leaves the state exactly as it was.

use std::collections::VecDeque;
use std::fmt;

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::CryptoRng;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::encoding::{Reader, Writer};

/// HKDF info of `KDF_RK`.
pub const INFO_ROOT: &[u8] = b"Handover_DoubleRatchet_RootKey_v1";
/// HKDF info of the message-key expansion into a ChaCha20-Poly1305 key and nonce.
pub const INFO_MESSAGE_KEYS: &[u8] = b"Handover_DoubleRatchet_MessageKeys_v1";
/// HMAC-SHA256 input deriving a message key from a chain key (spec §5.2).
pub const MESSAGE_KEY_SEED: u8 = 0x01;
/// HMAC-SHA256 input deriving the next chain key from a chain key (spec §5.2).
pub const CHAIN_KEY_SEED: u8 = 0x02;

/// Most message keys skipped in one chain by one message (the spec's `MAX_SKIP`, §3.5): a
/// header announcing a larger jump is rejected before any key is derived.
pub const MAX_SKIP: u32 = 1000;
/// Most skipped message keys kept in total; the oldest are deleted first (spec §6.5 "deletion
/// of skipped message keys").
pub const MAX_SKIPPED_KEYS: usize = 2000;
/// Most receiving chains (distinct peer ratchet keys) whose skipped keys are kept; the keys of
/// the oldest chain are deleted first.
pub const MAX_RECEIVING_CHAINS: usize = 5;
/// Skipped message keys are deleted this long (seconds) after they were stored (spec §6.5
/// suggests deleting them after an appropriate time). 30 days: longer than a relay keeps an
/// envelope.
pub const SKIPPED_KEY_LIFETIME: u64 = 30 * 24 * 60 * 60;

/// Length of the fixed header layout authenticated as associated data.
pub const HEADER_LEN: usize = 32 + 4 + 4;

/// Errors from the ratchet. Decryption failures are deliberately opaque.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RatchetError {
    /// The message could not be decrypted (any reason: wrong key, tampering, replay, too many
    /// skipped messages, an expired or deleted key).
    #[error("could not decrypt")]
    CouldNotDecrypt,
    /// The sending chain is exhausted (2^32 - 1 messages without a reply).
    #[error("sending chain exhausted")]
    ChainExhausted,
    /// A Diffie-Hellman result was all zeros (the peer's key has small order).
    #[error("invalid peer key")]
    InvalidKey,
    /// Stored state could not be read.
    #[error("malformed ratchet state")]
    MalformedState,
}

/// A 32-byte secret that zeroizes on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct Secret32(pub(crate) [u8; 32]);

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self(_) = self;
        f.write_str("Secret32(..)")
    }
}

/// A message header: the fields authenticated in the fixed layout.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Header {
    /// The sender's current ratchet public key.
    pub ratchet_key: [u8; 32],
    /// Number of messages in the sender's previous sending chain (PN).
    pub previous_chain_length: u32,
    /// Message number in the current sending chain (N).
    pub message_number: u32,
}

impl Header {
    /// `ratchet_key (32) || u32be(pn) || u32be(n)`.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..32].copy_from_slice(&self.ratchet_key);
        out[32..36].copy_from_slice(&self.previous_chain_length.to_be_bytes());
        out[36..].copy_from_slice(&self.message_number.to_be_bytes());
        out
    }
}

/// `KDF_RK`: returns (root key, chain key).
pub(crate) fn kdf_rk(root_key: &[u8; 32], dh_out: &[u8; 32]) -> (Secret32, Secret32) {
    let hk = Hkdf::<Sha256>::new(Some(root_key), dh_out);
    let mut okm = Zeroizing::new([0u8; 64]);
    // 64 bytes is far below HKDF-SHA256's 8160-byte limit.
    let _ = hk.expand(INFO_ROOT, &mut okm[..]);
    let mut rk = [0u8; 32];
    let mut ck = [0u8; 32];
    rk.copy_from_slice(&okm[..32]);
    ck.copy_from_slice(&okm[32..]);
    (Secret32(rk), Secret32(ck))
}

fn hmac(key: &[u8; 32], input: u8) -> [u8; 32] {
    // HMAC accepts keys of any length; 32 bytes cannot fail.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        return [0u8; 32];
    };
    mac.update(&[input]);
    mac.finalize().into_bytes().into()
}

/// `KDF_CK`: returns (next chain key, message key).
pub(crate) fn kdf_ck(chain_key: &[u8; 32]) -> (Secret32, Secret32) {
    (
        Secret32(hmac(chain_key, CHAIN_KEY_SEED)),
        Secret32(hmac(chain_key, MESSAGE_KEY_SEED)),
    )
}

/// Expands a message key into a ChaCha20-Poly1305 key and nonce.
pub(crate) fn message_key_material(mk: &[u8; 32]) -> (Zeroizing<[u8; 32]>, [u8; 12]) {
    let hk = Hkdf::<Sha256>::new(Some(&[0u8; 32]), mk);
    let mut okm = Zeroizing::new([0u8; 44]);
    let _ = hk.expand(INFO_MESSAGE_KEYS, &mut okm[..]);
    let mut key = Zeroizing::new([0u8; 32]);
    let mut nonce = [0u8; 12];
    key.copy_from_slice(&okm[..32]);
    nonce.copy_from_slice(&okm[32..]);
    (key, nonce)
}

fn aead_ad(session_ad: &[u8], header: &Header) -> Vec<u8> {
    let mut ad = Vec::with_capacity(session_ad.len() + HEADER_LEN);
    ad.extend_from_slice(session_ad);
    ad.extend_from_slice(&header.to_bytes());
    ad
}

pub(crate) fn seal_with_message_key(
    mk: &[u8; 32],
    plaintext: &[u8],
    session_ad: &[u8],
    header: &Header,
) -> Vec<u8> {
    let (key, nonce) = message_key_material(mk);
    let cipher = ChaCha20Poly1305::new(&(*key).into());
    let ad = aead_ad(session_ad, header);
    // ChaCha20-Poly1305 encryption fails only beyond 256 GiB of plaintext; callers bound
    // messages far below that. An empty result would fail to decrypt rather than leak.
    cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: plaintext,
                aad: &ad,
            },
        )
        .unwrap_or_default()
}

fn open_with_message_key(
    mk: &[u8; 32],
    ciphertext: &[u8],
    session_ad: &[u8],
    header: &Header,
) -> Result<Vec<u8>, RatchetError> {
    let (key, nonce) = message_key_material(mk);
    let cipher = ChaCha20Poly1305::new(&(*key).into());
    let ad = aead_ad(session_ad, header);
    cipher
        .decrypt(
            &nonce.into(),
            Payload {
                msg: ciphertext,
                aad: &ad,
            },
        )
        .map_err(|_| RatchetError::CouldNotDecrypt)
}

fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, RatchetError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(RatchetError::InvalidKey);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

#[derive(Clone)]
struct Chain {
    key: Secret32,
    index: u32,
}

#[derive(Clone)]
struct SkippedKey {
    ratchet_key: [u8; 32],
    index: u32,
    key: Secret32,
    stored_at: u64,
}

/// The Double Ratchet state of one session (spec §3.2 "State variables").
#[derive(Clone)]
pub(crate) struct RatchetState {
    /// RK.
    root_key: Secret32,
    /// DHs (our current ratchet key pair).
    self_secret: StaticSecret,
    self_public: [u8; 32],
    /// DHr.
    remote: Option<[u8; 32]>,
    /// CKs, Ns.
    sending: Option<Chain>,
    /// CKr, Nr.
    receiving: Option<Chain>,
    /// PN.
    previous_sending_len: u32,
    /// MKSKIPPED, oldest first.
    skipped: VecDeque<SkippedKey>,
}

impl fmt::Debug for RatchetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            root_key: _,
            self_secret: _,
            self_public: _,
            remote: _,
            sending,
            receiving,
            previous_sending_len,
            skipped,
        } = self;
        f.debug_struct("RatchetState")
            .field("sending_index", &sending.as_ref().map(|c| c.index))
            .field("receiving_index", &receiving.as_ref().map(|c| c.index))
            .field("previous_sending_len", previous_sending_len)
            .field("skipped_keys", &skipped.len())
            .finish_non_exhaustive()
    }
}

impl RatchetState {
    /// `RatchetInitAlice(SK, bob_dh_public_key)` (spec §3.3).
    pub(crate) fn init_alice(
        shared_key: &Secret32,
        bob_ratchet_key: &[u8; 32],
        rng: &mut impl CryptoRng,
    ) -> Result<Self, RatchetError> {
        let self_secret = StaticSecret::random_from_rng(rng);
        let self_public = PublicKey::from(&self_secret).to_bytes();
        let dh_out = dh(&self_secret, bob_ratchet_key)?;
        let (root_key, chain_key) = kdf_rk(&shared_key.0, &dh_out);
        Ok(Self {
            root_key,
            self_secret,
            self_public,
            remote: Some(*bob_ratchet_key),
            sending: Some(Chain {
                key: chain_key,
                index: 0,
            }),
            receiving: None,
            previous_sending_len: 0,
            skipped: VecDeque::new(),
        })
    }

    /// `RatchetInitBob(SK, bob_dh_key_pair)` (spec §3.3).
    pub(crate) fn init_bob(shared_key: &Secret32, bob_ratchet_secret: StaticSecret) -> Self {
        let self_public = PublicKey::from(&bob_ratchet_secret).to_bytes();
        Self {
            root_key: shared_key.clone(),
            self_secret: bob_ratchet_secret,
            self_public,
            remote: None,
            sending: None,
            receiving: None,
            previous_sending_len: 0,
            skipped: VecDeque::new(),
        }
    }

    /// Whether a sending chain exists (Bob has none until the first message arrives).
    pub(crate) fn can_send(&self) -> bool {
        self.sending.is_some()
    }

    /// `RatchetEncrypt` (spec §3.4).
    pub(crate) fn encrypt(
        &mut self,
        plaintext: &[u8],
        session_ad: &[u8],
    ) -> Result<(Header, Vec<u8>), RatchetError> {
        let Some(chain) = self.sending.as_mut() else {
            return Err(RatchetError::ChainExhausted);
        };
        if chain.index == u32::MAX {
            return Err(RatchetError::ChainExhausted);
        }
        let (next, mk) = kdf_ck(&chain.key.0);
        let header = Header {
            ratchet_key: self.self_public,
            previous_chain_length: self.previous_sending_len,
            message_number: chain.index,
        };
        chain.key = next;
        chain.index += 1;
        let ciphertext = seal_with_message_key(&mk.0, plaintext, session_ad, &header);
        Ok((header, ciphertext))
    }

    /// `RatchetDecrypt` (spec §3.5), transactional: on error `self` is unchanged.
    pub(crate) fn decrypt(
        &mut self,
        header: &Header,
        ciphertext: &[u8],
        session_ad: &[u8],
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<u8>, RatchetError> {
        let mut staged = self.clone();
        let plaintext = staged
            .decrypt_staged(header, ciphertext, session_ad, now, rng)
            .map_err(|_| RatchetError::CouldNotDecrypt)?;
        *self = staged;
        Ok(plaintext)
    }

    fn decrypt_staged(
        &mut self,
        header: &Header,
        ciphertext: &[u8],
        session_ad: &[u8],
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<u8>, RatchetError> {
        self.expire_skipped(now);
        // TrySkippedMessageKeys: a used key is removed, so it never decrypts twice.
        if let Some(pos) = self
            .skipped
            .iter()
            .position(|k| k.ratchet_key == header.ratchet_key && k.index == header.message_number)
        {
            let Some(entry) = self.skipped.remove(pos) else {
                return Err(RatchetError::CouldNotDecrypt);
            };
            return open_with_message_key(&entry.key.0, ciphertext, session_ad, header);
        }
        if self.remote != Some(header.ratchet_key) {
            self.skip_message_keys(header.previous_chain_length, now)?;
            self.dh_ratchet(header, rng)?;
        }
        self.skip_message_keys(header.message_number, now)?;
        let Some(chain) = self.receiving.as_mut() else {
            return Err(RatchetError::CouldNotDecrypt);
        };
        if header.message_number < chain.index {
            // Already received (and its key deleted): a replay.
            return Err(RatchetError::CouldNotDecrypt);
        }
        let (next, mk) = kdf_ck(&chain.key.0);
        chain.key = next;
        chain.index = chain
            .index
            .checked_add(1)
            .ok_or(RatchetError::CouldNotDecrypt)?;
        open_with_message_key(&mk.0, ciphertext, session_ad, header)
    }

    /// `SkipMessageKeys(state, until)` with the named limits.
    fn skip_message_keys(&mut self, until: u32, now: u64) -> Result<(), RatchetError> {
        let Some(remote) = self.remote else {
            return Ok(());
        };
        let Some(chain) = self.receiving.as_mut() else {
            return Ok(());
        };
        if u64::from(until) > u64::from(chain.index) + u64::from(MAX_SKIP) {
            return Err(RatchetError::CouldNotDecrypt);
        }
        while chain.index < until {
            let (next, mk) = kdf_ck(&chain.key.0);
            self.skipped.push_back(SkippedKey {
                ratchet_key: remote,
                index: chain.index,
                key: mk,
                stored_at: now,
            });
            chain.key = next;
            chain.index += 1;
        }
        self.enforce_skipped_limits();
        Ok(())
    }

    fn enforce_skipped_limits(&mut self) {
        while self.skipped.len() > MAX_SKIPPED_KEYS {
            self.skipped.pop_front();
        }
        loop {
            let mut chains: Vec<[u8; 32]> = Vec::new();
            for k in &self.skipped {
                if !chains.contains(&k.ratchet_key) {
                    chains.push(k.ratchet_key);
                }
            }
            if chains.len() <= MAX_RECEIVING_CHAINS {
                break;
            }
            let oldest = chains[0];
            self.skipped.retain(|k| k.ratchet_key != oldest);
        }
    }

    /// Deletes skipped keys stored more than [`SKIPPED_KEY_LIFETIME`] before `now`.
    pub(crate) fn expire_skipped(&mut self, now: u64) {
        self.skipped
            .retain(|k| now.saturating_sub(k.stored_at) < SKIPPED_KEY_LIFETIME);
    }

    /// `DHRatchet(state, header)` (spec §3.5).
    fn dh_ratchet(
        &mut self,
        header: &Header,
        rng: &mut impl CryptoRng,
    ) -> Result<(), RatchetError> {
        self.previous_sending_len = self.sending.as_ref().map_or(0, |c| c.index);
        self.remote = Some(header.ratchet_key);
        let dh_recv = dh(&self.self_secret, &header.ratchet_key)?;
        let (root_key, receiving_key) = kdf_rk(&self.root_key.0, &dh_recv);
        self.receiving = Some(Chain {
            key: receiving_key,
            index: 0,
        });
        self.self_secret = StaticSecret::random_from_rng(rng);
        self.self_public = PublicKey::from(&self.self_secret).to_bytes();
        let dh_send = dh(&self.self_secret, &header.ratchet_key)?;
        let (root_key, sending_key) = kdf_rk(&root_key.0, &dh_send);
        self.root_key = root_key;
        self.sending = Some(Chain {
            key: sending_key,
            index: 0,
        });
        Ok(())
    }

    /// Number of skipped message keys held (for tests and diagnostics).
    pub(crate) fn skipped_len(&self) -> usize {
        self.skipped.len()
    }

    /// Serialises the state (private layout, see `session.rs`).
    pub(crate) fn write(&self, w: &mut Writer) {
        w.bytes(&self.root_key.0);
        w.bytes(self.self_secret.as_bytes());
        match &self.remote {
            Some(r) => {
                w.u8(1);
                w.bytes(r);
            }
            None => w.u8(0),
        }
        for chain in [&self.sending, &self.receiving] {
            match chain {
                Some(c) => {
                    w.u8(1);
                    w.bytes(&c.key.0);
                    w.u32(c.index);
                }
                None => w.u8(0),
            }
        }
        w.u32(self.previous_sending_len);
        // Bounded by MAX_SKIPPED_KEYS.
        w.u32(u32::try_from(self.skipped.len()).unwrap_or(u32::MAX));
        for k in &self.skipped {
            w.bytes(&k.ratchet_key);
            w.u32(k.index);
            w.bytes(&k.key.0);
            w.u64(k.stored_at);
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, RatchetError> {
        let e = RatchetError::MalformedState;
        let root_key = Secret32(r.array().ok_or(e.clone())?);
        let self_secret = StaticSecret::from(*Zeroizing::new(r.array::<32>().ok_or(e.clone())?));
        let self_public = PublicKey::from(&self_secret).to_bytes();
        let remote = match r.u8().ok_or(e.clone())? {
            0 => None,
            1 => Some(r.array().ok_or(e.clone())?),
            _ => return Err(e),
        };
        let mut chains = [None, None];
        for slot in &mut chains {
            *slot = match r.u8().ok_or(e.clone())? {
                0 => None,
                1 => Some(Chain {
                    key: Secret32(r.array().ok_or(e.clone())?),
                    index: r.u32().ok_or(e.clone())?,
                }),
                _ => return Err(e),
            };
        }
        let [sending, receiving] = chains;
        let previous_sending_len = r.u32().ok_or(e.clone())?;
        let count = r.u32().ok_or(e.clone())? as usize;
        if count > MAX_SKIPPED_KEYS {
            return Err(e);
        }
        let mut skipped = VecDeque::with_capacity(count);
        for _ in 0..count {
            skipped.push_back(SkippedKey {
                ratchet_key: r.array().ok_or(e.clone())?,
                index: r.u32().ok_or(e.clone())?,
                key: Secret32(r.array().ok_or(e.clone())?),
                stored_at: r.u64().ok_or(e.clone())?,
            });
        }
        Ok(Self {
            root_key,
            self_secret,
            self_public,
            remote,
            sending,
            receiving,
            previous_sending_len,
            skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_fixed() {
        let h = Header {
            ratchet_key: [7; 32],
            previous_chain_length: 0x01020304,
            message_number: 0x0a0b0c0d,
        };
        let b = h.to_bytes();
        assert_eq!(&b[..32], &[7; 32]);
        assert_eq!(&b[32..], &[1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d]);
    }

    #[test]
    fn chain_and_message_keys_differ() {
        let (ck, mk) = kdf_ck(&[1; 32]);
        assert_ne!(ck.0, mk.0);
        assert_ne!(ck.0, [1; 32]);
    }
}
