//! Sealing body sections, one random key each (docs/PROTOCOL.md §11.2).
//!
//! Every section is encrypted with ChaCha20-Poly1305 under its own fresh 32-byte key. Because a
//! key is used for exactly one encryption, the nonce is fixed at twelve zero bytes. The
//! associated data binds the ciphertext to its referral and section:
//! `"handover/1 section" || referral_id (16) || u32be(section)`. The offer commits to each
//! sealed section with a hash over the key, nonce, associated data and ciphertext (a CTX-style
//! key commitment, Chan and Rogaway 2022: ChaCha20-Poly1305 alone is not key-committing); the
//! receiver checks every released section and its key against that commitment before
//! decrypting it.

use std::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use handover_proto::e2e::v1 as wire;
use prost::Message;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{ReferralError, ReferralId, section_name};

/// Associated-data label of a sealed section.
pub const SECTION_AD_LABEL: &[u8] = b"handover/1 section";

/// Length of a section key.
pub const SECTION_KEY_LEN: usize = 32;

/// The random key of one body section. Zeroized on drop; never printed.
pub struct SectionKey(Zeroizing<[u8; SECTION_KEY_LEN]>);

impl fmt::Debug for SectionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self(_) = self;
        f.write_str("SectionKey(..)")
    }
}

impl SectionKey {
    fn random(rng: &mut impl CryptoRng) -> Self {
        let mut key = Zeroizing::new([0u8; SECTION_KEY_LEN]);
        rng.fill_bytes(&mut key[..]);
        Self(key)
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; SECTION_KEY_LEN] = bytes.try_into().ok()?;
        Some(Self(Zeroizing::new(array)))
    }

    pub(crate) fn to_wire(&self, section: wire::Section) -> wire::SectionKey {
        wire::SectionKey {
            section: section as i32,
            key: self.0.to_vec(),
        }
    }

    pub(crate) fn expose(&self) -> &[u8; SECTION_KEY_LEN] {
        &self.0
    }
}

/// The associated data of a sealed section.
pub fn section_ad(referral_id: &ReferralId, section: wire::Section) -> Vec<u8> {
    let mut ad = Vec::with_capacity(SECTION_AD_LABEL.len() + 16 + 4);
    ad.extend_from_slice(SECTION_AD_LABEL);
    ad.extend_from_slice(referral_id.as_bytes());
    // Section numbers are positive proto enum values.
    ad.extend_from_slice(&(section as i32 as u32).to_be_bytes());
    ad
}

/// Hash label of a section commitment.
pub const SECTION_COMMITMENT_LABEL: &[u8] = b"handover/1 section-commitment";

/// The commitment to a sealed section (the offer's `SectionCommitment.sealed_sha256`,
/// docs/PROTOCOL.md §11.2):
///
/// ```text
/// SHA-256( "handover/1 section-commitment" || key (32) || nonce (12 zero bytes)
///          || ad (38) || ciphertext )
/// ```
///
/// It commits to the key as well as the ciphertext (as CTX does, Chan and Rogaway 2022), so a
/// sender cannot give two recipients two keys that open one committed ciphertext to two
/// plaintexts. Every input but the ciphertext has a fixed length.
pub fn commitment(
    key: &SectionKey,
    referral_id: &ReferralId,
    section: wire::Section,
    ciphertext: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SECTION_COMMITMENT_LABEL);
    h.update(key.expose());
    h.update(Nonce::default());
    h.update(section_ad(referral_id, section));
    h.update(ciphertext);
    h.finalize().into()
}

/// Which section a body section's content is.
pub(crate) fn section_of(body: &wire::BodySection) -> Option<wire::Section> {
    use wire::body_section::Content;
    Some(match body.content.as_ref()? {
        Content::Identity(_) => wire::Section::Identity,
        Content::SafeContact(_) => wire::Section::SafeContact,
        Content::Location(_) => wire::Section::Location,
        Content::Guardian(_) => wire::Section::Guardian,
        Content::Reason(_) => wire::Section::Reason,
        Content::ServicesProvided(_) => wire::Section::ServicesProvided,
        Content::Risk(_) => wire::Section::Risk,
        Content::DoNotDisclose(_) => wire::Section::DoNotDisclose,
        Content::Appointment(_) => wire::Section::Appointment,
        Content::Attachments(_) => wire::Section::Attachments,
    })
}

/// One sealed section with its key, held by the sender until release or erasure.
pub(crate) struct SealedSection {
    pub(crate) section: wire::Section,
    pub(crate) ciphertext: Vec<u8>,
    pub(crate) key: SectionKey,
}

impl fmt::Debug for SealedSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            section,
            ciphertext,
            key: _,
        } = self;
        f.debug_struct("SealedSection")
            .field("section", section)
            .field("ciphertext_len", &ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Seals one section under a fresh key.
pub(crate) fn seal(
    rng: &mut impl CryptoRng,
    referral_id: &ReferralId,
    body: &wire::BodySection,
) -> Result<SealedSection, ReferralError> {
    let section = section_of(body).ok_or(ReferralError::InvalidDraft {
        field: "sections",
        problem: "a body section has no content",
    })?;
    seal_with_key(SectionKey::random(rng), referral_id, section, body)
}

/// Seals one section under `key` (which must never be used again).
fn seal_with_key(
    key: SectionKey,
    referral_id: &ReferralId,
    section: wire::Section,
    body: &wire::BodySection,
) -> Result<SealedSection, ReferralError> {
    let plaintext = Zeroizing::new(body.encode_to_vec());
    let cipher =
        ChaCha20Poly1305::new_from_slice(key.expose()).map_err(|_| ReferralError::Crypto)?;
    let ad = section_ad(referral_id, section);
    let ciphertext = cipher
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: &plaintext,
                aad: &ad,
            },
        )
        .map_err(|_| ReferralError::Crypto)?;
    Ok(SealedSection {
        section,
        ciphertext,
        key,
    })
}

/// Checks a released section against its commitment, decrypts it and checks that its content is
/// the section it claims to be. Returns the encoded `BodySection` plaintext.
pub(crate) fn open(
    referral_id: &ReferralId,
    section: wire::Section,
    ciphertext: &[u8],
    committed: &[u8],
    key: &SectionKey,
) -> Result<Zeroizing<Vec<u8>>, ReferralError> {
    let name = section_name(section);
    if !bool::from(commitment(key, referral_id, section, ciphertext)[..].ct_eq(committed)) {
        return Err(ReferralError::CommitmentMismatch { section: name });
    }
    let cipher =
        ChaCha20Poly1305::new_from_slice(key.expose()).map_err(|_| ReferralError::Crypto)?;
    let ad = section_ad(referral_id, section);
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(
                &Nonce::default(),
                Payload {
                    msg: ciphertext,
                    aad: &ad,
                },
            )
            .map_err(|_| ReferralError::CouldNotDecrypt { section: name })?,
    );
    let decoded = handover_proto::decode::body_section(&plaintext)
        .map_err(|_| ReferralError::CouldNotDecrypt { section: name })?;
    if section_of(&decoded) != Some(section) {
        return Err(ReferralError::CouldNotDecrypt { section: name });
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vector, computed independently by `tests/data/referral_vectors.py`.
    #[test]
    fn section_sealing_known_answer() {
        let id = ReferralId::from_slice(&(0u8..16).collect::<Vec<_>>()).unwrap();
        let body = wire::BodySection {
            content: Some(wire::body_section::Content::Risk(wire::RiskSection {
                level: wire::RiskLevel::High as i32,
                ..Default::default()
            })),
        };
        assert_eq!(body.encode_to_vec(), [0x3a, 0x02, 0x08, 0x03]);
        assert_eq!(
            hex::encode(section_ad(&id, wire::Section::Risk)),
            "68616e646f7665722f312073656374696f6e000102030405060708090a0b0c0d0e0f00000007"
        );
        let key = SectionKey::from_slice(&[0x42; 32]).unwrap();
        let sealed = seal_with_key(key, &id, wire::Section::Risk, &body).unwrap();
        assert_eq!(
            hex::encode(&sealed.ciphertext),
            "6364ec2816c35b38e94834bfdf7ef2340e7056d6"
        );
        let committed = commitment(&sealed.key, &id, wire::Section::Risk, &sealed.ciphertext);
        assert_eq!(
            hex::encode(committed),
            "febe2d7fa8b685e16fc99dba9f363a5ae0ceb48bb5b6f92eee618cb1074fbef2"
        );
        // Another key does not match the commitment, even before decryption is tried.
        let other = SectionKey::from_slice(&[0x43; 32]).unwrap();
        assert!(matches!(
            open(
                &id,
                wire::Section::Risk,
                &sealed.ciphertext,
                &committed,
                &other
            ),
            Err(ReferralError::CommitmentMismatch { .. })
        ));
        let opened = open(
            &id,
            wire::Section::Risk,
            &sealed.ciphertext,
            &committed,
            &sealed.key,
        )
        .unwrap();
        assert_eq!(opened.as_slice(), [0x3a, 0x02, 0x08, 0x03]);
        // Under another section's associated data it does not open.
        assert!(
            open(
                &id,
                wire::Section::Reason,
                &sealed.ciphertext,
                &committed,
                &sealed.key
            )
            .is_err()
        );
    }
}
