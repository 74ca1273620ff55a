//! End-to-end sessions: PQXDH setup ([`Session::initiate`], [`Session::respond`]) and the
//! Double Ratchet ([`Session::encrypt`], [`Session::decrypt`]).
//!
//! A session is a state machine: the initiator starts in [`SessionPhase::AwaitingReply`] and
//! sends every message as a [`wire::PrekeyMessage`] (so the responder can set up the session
//! from whichever arrives first) until the first reply decrypts, then moves to
//! [`SessionPhase::Established`]. The responder starts established.
//!
//! Every decryption is transactional: on error the session is exactly as before.

use std::fmt;

use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use handover_proto::limits::KEY_LEN;
use handover_proto::validate::Validate;
use prost::Message;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::encoding::{Reader, Writer};
use crate::identity::{
    CertificateError, DeviceCertificate, DeviceId, DeviceKeys, LABEL_KEM_PREKEY,
    LABEL_SIGNED_PREKEY, OrgTrust, verify_labelled,
};
use crate::pqxdh::{PrekeyBundle, PrekeyStore, dh, kdf, kem_encapsulate};
use crate::ratchet::{Header, RatchetError, RatchetState};

/// Length of the session associated data
/// `AD = IK_A || IK_B || CH(cert_A) || CH(cert_B)` (docs/PROTOCOL.md §6.1).
pub const SESSION_AD_LEN: usize = 4 * KEY_LEN;

/// Length of the associated data `IK_A || IK_B` of sessions stored in format 1 (set up before
/// certificates were bound into the AD); such sessions keep it.
pub const LEGACY_SESSION_AD_LEN: usize = 2 * KEY_LEN;

/// Domain-separation label of a certificate hash in the session associated data:
/// `CH(cert) = SHA-256(LABEL_AD_CERTIFICATE || SignedDeviceCertificate.certificate)`.
pub const LABEL_AD_CERTIFICATE: &[u8] = b"handover/1 ad-certificate";

/// Errors from session setup and messaging.
///
/// Everything that happens while decrypting is [`SessionError::CouldNotDecrypt`], whatever
/// check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The message could not be decrypted or authenticated.
    #[error("could not decrypt")]
    CouldNotDecrypt,
    /// The peer's certificate failed a check (initiating, or verifying a sender).
    #[error("peer certificate rejected: {0}")]
    Certificate(#[from] CertificateError),
    /// A prekey signature in the bundle does not verify with the certified signing key.
    #[error("bad prekey signature")]
    BadPrekeySignature,
    /// The prekey bundle is malformed or has an invalid key.
    #[error("malformed prekey bundle")]
    MalformedBundle,
    /// The session cannot send: the sending chain is exhausted.
    #[error("cannot send on this session")]
    CannotSend,
    /// Stored session state could not be read.
    #[error("malformed session state")]
    MalformedState,
    /// The local certificate passed in does not certify the local identity key.
    #[error("local certificate does not match the local identity key")]
    LocalCertificateMismatch,
}

impl From<RatchetError> for SessionError {
    fn from(err: RatchetError) -> Self {
        match err {
            RatchetError::ChainExhausted => SessionError::CannotSend,
            RatchetError::MalformedState => SessionError::MalformedState,
            _ => SessionError::CouldNotDecrypt,
        }
    }
}

/// The PQXDH values the initiator repeats in every message until the first reply.
#[derive(Clone, PartialEq, Eq, Debug)]
struct PendingPrekey {
    ephemeral_key: [u8; 32],
    signed_prekey_id: u32,
    kem_prekey_id: u32,
    kem_ciphertext: Vec<u8>,
    one_time_prekey_id: Option<u32>,
}

/// Where a session is in its lifecycle.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum SessionPhase {
    /// Initiator, no reply yet: messages carry the PQXDH initial message.
    AwaitingReply,
    /// Both sides have the session.
    Established,
}

#[derive(Clone)]
enum Phase {
    AwaitingReply(PendingPrekey),
    Established,
}

#[derive(Clone)]
struct SessionInner {
    /// [`SESSION_AD_LEN`] bytes, or [`LEGACY_SESSION_AD_LEN`] for a session restored from
    /// format 1.
    ad: Vec<u8>,
    local_identity: [u8; 32],
    remote_identity: [u8; 32],
    remote_device: DeviceId,
    /// The initiator's ephemeral key (both sides), to recognise repeated initial messages.
    base_key: [u8; 32],
    phase: Phase,
    ratchet: RatchetState,
}

/// An end-to-end session with one remote device.
pub struct Session {
    inner: Box<SessionInner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { inner } = self;
        f.debug_struct("Session")
            .field("phase", &inner.phase())
            .field("ratchet", &inner.ratchet)
            .finish_non_exhaustive()
    }
}

impl SessionInner {
    fn phase(&self) -> SessionPhase {
        match self.phase {
            Phase::AwaitingReply(_) => SessionPhase::AwaitingReply,
            Phase::Established => SessionPhase::Established,
        }
    }
}

/// A message to send: the initial message while the session awaits a reply, then ratchet
/// messages.
#[derive(Clone, PartialEq, Debug)]
pub enum OutgoingMessage {
    /// A PQXDH initial message carrying the ratchet message.
    Prekey(wire::PrekeyMessage),
    /// A ratchet message.
    Ratchet(wire::RatchetMessage),
}

impl OutgoingMessage {
    /// Wraps the message with the sender's certificate into the sealed-sender plaintext.
    pub fn into_sealed(self, sender: wire::SignedDeviceCertificate) -> wire::Sealed {
        let message = match self {
            OutgoingMessage::Prekey(m) => wire::sealed::Message::Prekey(m),
            OutgoingMessage::Ratchet(m) => wire::sealed::Message::Ratchet(m),
        };
        wire::Sealed {
            sender: Some(sender),
            message: Some(message),
        }
    }
}

/// `CH(cert) = SHA-256(LABEL_AD_CERTIFICATE || cert.certificate)`: the hash of a signed
/// device certificate's `certificate` bytes exactly as they travel (the bytes the root's
/// signature covers).
pub fn certificate_ad_hash(cert: &wire::SignedDeviceCertificate) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(LABEL_AD_CERTIFICATE);
    h.update(&cert.certificate);
    h.finalize().into()
}

/// The session associated data (docs/PROTOCOL.md §6.1):
/// `IK_A || IK_B || CH(cert_A) || CH(cert_B)`, where A is the initiator, `cert_A` the
/// certificate it presents in sealed sender and `cert_B` the responder's certificate from the
/// prekey bundle.
pub fn session_ad(
    initiator_identity: &[u8; 32],
    responder_identity: &[u8; 32],
    initiator_certificate: &wire::SignedDeviceCertificate,
    responder_certificate: &wire::SignedDeviceCertificate,
) -> [u8; SESSION_AD_LEN] {
    let mut ad = [0u8; SESSION_AD_LEN];
    ad[..32].copy_from_slice(initiator_identity);
    ad[32..64].copy_from_slice(responder_identity);
    ad[64..96].copy_from_slice(&certificate_ad_hash(initiator_certificate));
    ad[96..].copy_from_slice(&certificate_ad_hash(responder_certificate));
    ad
}

/// Whether `cert` (the local device's own, not verified here) names `identity` as its identity
/// key.
fn certifies(cert: &wire::SignedDeviceCertificate, identity: &[u8; 32]) -> bool {
    decode::device_certificate(&cert.certificate)
        .is_ok_and(|c| bool::from(c.identity_key.as_slice().ct_eq(identity.as_slice())))
}

fn to_array(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

fn header_of(msg: &wire::RatchetMessage) -> Option<Header> {
    Some(Header {
        ratchet_key: to_array(&msg.ratchet_key)?,
        previous_chain_length: msg.previous_chain_length,
        message_number: msg.message_number,
    })
}

impl Session {
    /// Starts a session with the device that published `bundle` (PQXDH §3.3, "Sending the
    /// initial message").
    ///
    /// Checks the bundle's certificate with `trust` at `now` (signature by the organisation
    /// root, validity, not revoked) and both prekey signatures with the certified signing key;
    /// returns the session and the peer's verified certificate. The first [`encrypt`]
    /// produces the initial message.
    ///
    /// `local_certificate` is the certificate this device presents in sealed sender on this
    /// session; it is bound into the associated data with the bundle's, so the responder must
    /// see the same one. It must certify `local`'s identity key
    /// ([`SessionError::LocalCertificateMismatch`] otherwise).
    ///
    /// [`encrypt`]: Session::encrypt
    pub fn initiate(
        local: &DeviceKeys,
        local_certificate: &wire::SignedDeviceCertificate,
        trust: &OrgTrust,
        bundle: &PrekeyBundle,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(Self, DeviceCertificate), SessionError> {
        if !certifies(local_certificate, &local.identity_public()) {
            return Err(SessionError::LocalCertificateMismatch);
        }
        let peer = trust.verify_certificate(&bundle.certificate, now)?;
        bundle
            .signed_prekey
            .validate()
            .map_err(|_| SessionError::MalformedBundle)?;
        bundle
            .kem_prekey
            .validate()
            .map_err(|_| SessionError::MalformedBundle)?;
        let spk = &bundle.signed_prekey;
        let mut signed = spk.id.to_be_bytes().to_vec();
        signed.extend_from_slice(&spk.public_key);
        if !verify_labelled(
            peer.verifying_key(),
            LABEL_SIGNED_PREKEY,
            &signed,
            &spk.signature,
        ) {
            return Err(SessionError::BadPrekeySignature);
        }
        let kpk = &bundle.kem_prekey;
        let mut signed = kpk.id.to_be_bytes().to_vec();
        signed.extend_from_slice(&kpk.public_key);
        if !verify_labelled(
            peer.verifying_key(),
            LABEL_KEM_PREKEY,
            &signed,
            &kpk.signature,
        ) {
            return Err(SessionError::BadPrekeySignature);
        }
        let spk_public = to_array(&spk.public_key).ok_or(SessionError::MalformedBundle)?;
        let opk = match &bundle.one_time_prekey {
            Some(o) => {
                o.validate().map_err(|_| SessionError::MalformedBundle)?;
                Some((
                    o.id,
                    to_array(&o.public_key).ok_or(SessionError::MalformedBundle)?,
                ))
            }
            None => None,
        };
        let remote_identity = peer.identity_key();
        let local_identity = local.identity_public();

        let ephemeral = StaticSecret::random_from_rng(rng);
        let ephemeral_key = PublicKey::from(&ephemeral).to_bytes();
        let bad = SessionError::MalformedBundle;
        let dh1 = dh(local.identity_secret(), &spk_public).ok_or(bad.clone())?;
        let dh2 = dh(&ephemeral, &remote_identity).ok_or(bad.clone())?;
        let dh3 = dh(&ephemeral, &spk_public).ok_or(bad.clone())?;
        let dh4 = match &opk {
            Some((_, key)) => Some(dh(&ephemeral, key).ok_or(bad.clone())?),
            None => None,
        };
        drop(ephemeral);
        let (kem_ciphertext, ss) = kem_encapsulate(&kpk.public_key, rng).ok_or(bad)?;
        let sk = kdf(&dh1, &dh2, &dh3, dh4.as_deref(), &ss[..]);
        let ratchet = RatchetState::init_alice(&sk, &spk_public, rng)?;
        let inner = SessionInner {
            ad: session_ad(
                &local_identity,
                &remote_identity,
                local_certificate,
                &bundle.certificate,
            )
            .to_vec(),
            local_identity,
            remote_identity,
            remote_device: peer.device_id(),
            base_key: ephemeral_key,
            phase: Phase::AwaitingReply(PendingPrekey {
                ephemeral_key,
                signed_prekey_id: spk.id,
                kem_prekey_id: kpk.id,
                kem_ciphertext,
                one_time_prekey_id: opk.map(|(id, _)| id),
            }),
            ratchet,
        };
        Ok((
            Self {
                inner: Box::new(inner),
            },
            peer,
        ))
    }

    /// Accepts an initial message (PQXDH §3.4, "Receiving the initial message") from `sender`,
    /// whose certificate the caller verified with [`OrgTrust::verify_certificate`] (the
    /// sealed-sender certificate). Checks that the certificate's identity key is the message's,
    /// runs PQXDH with our prekeys, decrypts the first message, and only then deletes the used
    /// one-time prekeys. Returns the session and the plaintext.
    ///
    /// `local_certificate` is this device's certificate as published in its prekey bundle;
    /// the associated data binds it and `sender`'s signed certificate.
    ///
    /// Any failure is [`SessionError::CouldNotDecrypt`] and changes nothing, except a
    /// `local_certificate` that does not certify `local`'s identity key
    /// ([`SessionError::LocalCertificateMismatch`]).
    pub fn respond(
        local: &DeviceKeys,
        local_certificate: &wire::SignedDeviceCertificate,
        prekeys: &mut PrekeyStore,
        sender: &DeviceCertificate,
        message: &wire::PrekeyMessage,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(Self, Vec<u8>), SessionError> {
        if !certifies(local_certificate, &local.identity_public()) {
            return Err(SessionError::LocalCertificateMismatch);
        }
        let fail = SessionError::CouldNotDecrypt;
        message.validate().map_err(|_| fail.clone())?;
        let remote_identity = to_array(&message.identity_key).ok_or(fail.clone())?;
        if !bool::from(remote_identity.ct_eq(&sender.identity_key())) {
            return Err(fail);
        }
        let ephemeral_key = to_array(&message.ephemeral_key).ok_or(fail.clone())?;
        if prekeys.base_key_refused(message.signed_prekey_id, &ephemeral_key) {
            return Err(fail);
        }
        let spk = prekeys
            .signed_prekey(message.signed_prekey_id)
            .ok_or(fail.clone())?
            .clone();
        let dh1 = dh(&spk, &remote_identity).ok_or(fail.clone())?;
        let dh2 = dh(local.identity_secret(), &ephemeral_key).ok_or(fail.clone())?;
        let dh3 = dh(&spk, &ephemeral_key).ok_or(fail.clone())?;
        let dh4 = match message.one_time_prekey_id {
            Some(id) => {
                let opk = prekeys.one_time_prekey(id).ok_or(fail.clone())?;
                Some(dh(opk, &ephemeral_key).ok_or(fail.clone())?)
            }
            None => None,
        };
        let ss = prekeys
            .kem_decapsulate(message.kem_prekey_id, &message.kem_ciphertext)
            .ok_or(fail.clone())?;
        let sk = kdf(&dh1, &dh2, &dh3, dh4.as_deref(), &ss[..]);
        let local_identity = local.identity_public();
        let ratchet = RatchetState::init_bob(&sk, spk);
        let mut session = Self {
            inner: Box::new(SessionInner {
                ad: session_ad(
                    &remote_identity,
                    &local_identity,
                    sender.signed(),
                    local_certificate,
                )
                .to_vec(),
                local_identity,
                remote_identity,
                remote_device: sender.device_id(),
                base_key: ephemeral_key,
                phase: Phase::Established,
                ratchet,
            }),
        };
        let first = message.message.as_ref().ok_or(fail.clone())?;
        let plaintext = session.decrypt_ratchet(first, now, rng)?;
        prekeys.consume(message, ephemeral_key);
        Ok((session, plaintext))
    }

    /// Whether an initial message belongs to this session (the initiator repeats it until it
    /// gets a reply); if so, decrypt its inner message with [`decrypt`](Self::decrypt).
    pub fn matches_prekey_message(&self, message: &wire::PrekeyMessage) -> bool {
        message.ephemeral_key == self.inner.base_key
            && message.identity_key == self.inner.remote_identity
    }

    /// The session's phase.
    pub fn phase(&self) -> SessionPhase {
        self.inner.phase()
    }

    /// The remote device's X25519 identity key.
    pub fn remote_identity_key(&self) -> [u8; 32] {
        self.inner.remote_identity
    }

    /// The remote device id (from its certificate at setup).
    pub fn remote_device_id(&self) -> DeviceId {
        self.inner.remote_device
    }

    /// The session associated data: [`session_ad`] ([`SESSION_AD_LEN`] bytes), or
    /// `IK_initiator || IK_responder` ([`LEGACY_SESSION_AD_LEN`] bytes) for a session set up
    /// before certificates were bound and restored from format 1.
    pub fn associated_data(&self) -> &[u8] {
        &self.inner.ad
    }

    /// Encrypts `plaintext` (normally an encoded `Content`).
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<OutgoingMessage, SessionError> {
        let inner = &mut *self.inner;
        let (header, ciphertext) = inner.ratchet.encrypt(plaintext, &inner.ad)?;
        let message = wire::RatchetMessage {
            ratchet_key: header.ratchet_key.to_vec(),
            previous_chain_length: header.previous_chain_length,
            message_number: header.message_number,
            ciphertext,
        };
        Ok(match &inner.phase {
            Phase::AwaitingReply(p) => OutgoingMessage::Prekey(wire::PrekeyMessage {
                identity_key: inner.local_identity.to_vec(),
                ephemeral_key: p.ephemeral_key.to_vec(),
                signed_prekey_id: p.signed_prekey_id,
                kem_prekey_id: p.kem_prekey_id,
                kem_ciphertext: p.kem_ciphertext.clone(),
                one_time_prekey_id: p.one_time_prekey_id,
                message: Some(message),
            }),
            Phase::Established => OutgoingMessage::Ratchet(message),
        })
    }

    /// Encrypts a `Content`.
    pub fn encrypt_content(
        &mut self,
        content: &wire::Content,
    ) -> Result<OutgoingMessage, SessionError> {
        let bytes = Zeroizing::new(content.encode_to_vec());
        self.encrypt(&bytes)
    }

    /// Decrypts a ratchet message. On any error the session is unchanged and the error is
    /// [`SessionError::CouldNotDecrypt`].
    pub fn decrypt(
        &mut self,
        message: &wire::RatchetMessage,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<u8>, SessionError> {
        message
            .validate()
            .map_err(|_| SessionError::CouldNotDecrypt)?;
        self.decrypt_ratchet(message, now, rng)
    }

    fn decrypt_ratchet(
        &mut self,
        message: &wire::RatchetMessage,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<u8>, SessionError> {
        let header = header_of(message).ok_or(SessionError::CouldNotDecrypt)?;
        let inner = &mut *self.inner;
        let plaintext = inner
            .ratchet
            .decrypt(&header, &message.ciphertext, &inner.ad, now, rng)
            .map_err(|_| SessionError::CouldNotDecrypt)?;
        // A decrypted message from the responder proves it has the session.
        inner.phase = Phase::Established;
        Ok(plaintext)
    }

    /// Decrypts a ratchet message and decodes its `Content`.
    pub fn decrypt_content(
        &mut self,
        message: &wire::RatchetMessage,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<wire::Content, SessionError> {
        let mut staged = self.clone_session();
        let plaintext = Zeroizing::new(staged.decrypt(message, now, rng)?);
        let content = decode::content(&plaintext).map_err(|_| SessionError::CouldNotDecrypt)?;
        *self = staged;
        Ok(content)
    }

    /// Checks a sealed-sender certificate against this session: verified by `trust` at `now`
    /// (organisation signature, validity, not revoked) and carrying the session's remote
    /// identity key. Any failure is [`SessionError::CouldNotDecrypt`].
    pub fn check_sender(
        &self,
        trust: &OrgTrust,
        sender: &wire::SignedDeviceCertificate,
        now: u64,
    ) -> Result<DeviceCertificate, SessionError> {
        let cert = trust
            .verify_certificate(sender, now)
            .map_err(|_| SessionError::CouldNotDecrypt)?;
        if !bool::from(cert.identity_key().ct_eq(&self.inner.remote_identity)) {
            return Err(SessionError::CouldNotDecrypt);
        }
        Ok(cert)
    }

    /// Deletes skipped message keys older than the lifetime (also done on every decryption).
    pub fn expire_skipped_keys(&mut self, now: u64) {
        self.inner.ratchet.expire_skipped(now);
    }

    /// Number of skipped message keys held.
    pub fn skipped_key_count(&self) -> usize {
        self.inner.ratchet.skipped_len()
    }

    /// Whether the session can send now (always, except after 2^32 - 1 messages unanswered).
    pub fn can_send(&self) -> bool {
        self.inner.ratchet.can_send()
    }

    fn clone_session(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }

    /// Serialises the session for the encrypted local store (private layout; see the module
    /// source): version 2, or version 1 for a session that keeps the legacy associated data.
    /// The bytes contain secrets.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let i = &*self.inner;
        let format = if i.ad.len() == LEGACY_SESSION_AD_LEN {
            SESSION_FORMAT_LEGACY_AD
        } else {
            SESSION_FORMAT
        };
        let mut w = Writer::new(format);
        w.bytes(&i.ad);
        w.bytes(&i.local_identity);
        w.bytes(&i.remote_identity);
        w.bytes(&i.remote_device.0);
        w.bytes(&i.base_key);
        match &i.phase {
            Phase::Established => w.u8(0),
            Phase::AwaitingReply(p) => {
                w.u8(1);
                w.bytes(&p.ephemeral_key);
                w.u32(p.signed_prekey_id);
                w.u32(p.kem_prekey_id);
                w.bytes(&p.kem_ciphertext);
                match p.one_time_prekey_id {
                    Some(id) => {
                        w.u8(1);
                        w.u32(id);
                    }
                    None => w.u8(0),
                }
            }
        }
        i.ratchet.write(&mut w);
        Zeroizing::new(w.finish())
    }

    /// Restores a session written by [`to_secret_bytes`](Self::to_secret_bytes).
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, SessionError> {
        use handover_proto::limits::ML_KEM_768_CIPHERTEXT_LEN;
        let e = SessionError::MalformedState;
        let mut r = Reader::new(bytes);
        let ad_len = match r.u8() {
            Some(SESSION_FORMAT) => SESSION_AD_LEN,
            Some(SESSION_FORMAT_LEGACY_AD) => LEGACY_SESSION_AD_LEN,
            _ => return Err(e),
        };
        let ad = r.take(ad_len).ok_or(e.clone())?.to_vec();
        let local_identity = r.array().ok_or(e.clone())?;
        let remote_identity = r.array().ok_or(e.clone())?;
        let remote_device = DeviceId(r.array().ok_or(e.clone())?);
        let base_key = r.array().ok_or(e.clone())?;
        let phase = match r.u8().ok_or(e.clone())? {
            0 => Phase::Established,
            1 => Phase::AwaitingReply(PendingPrekey {
                ephemeral_key: r.array().ok_or(e.clone())?,
                signed_prekey_id: r.u32().ok_or(e.clone())?,
                kem_prekey_id: r.u32().ok_or(e.clone())?,
                kem_ciphertext: r.take(ML_KEM_768_CIPHERTEXT_LEN).ok_or(e.clone())?.to_vec(),
                one_time_prekey_id: match r.u8().ok_or(e.clone())? {
                    0 => None,
                    1 => Some(r.u32().ok_or(e.clone())?),
                    _ => return Err(e),
                },
            }),
            _ => return Err(e),
        };
        let ratchet = RatchetState::read(&mut r).map_err(|_| e.clone())?;
        if !r.is_empty() {
            return Err(e);
        }
        Ok(Self {
            inner: Box::new(SessionInner {
                ad,
                local_identity,
                remote_identity,
                remote_device,
                base_key,
                phase,
                ratchet,
            }),
        })
    }
}

/// Version byte of the session state layout: the associated data binds both certificates
/// ([`SESSION_AD_LEN`] bytes).
const SESSION_FORMAT: u8 = 2;

/// Version byte of the same layout with the [`LEGACY_SESSION_AD_LEN`]-byte associated data
/// `IK_A || IK_B`, written before certificates were bound. Such sessions are still read,
/// used and written back in this format; new sessions never get it.
const SESSION_FORMAT_LEGACY_AD: u8 = 1;

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::testing::{Pair, Side};

    fn session(pair: &Pair, side: Side) -> &Session {
        pair.party(side).session.as_ref().unwrap()
    }

    #[test]
    fn associated_data_binds_both_identity_keys_and_certificates() {
        let pair = Pair::established(7).unwrap();
        let alice = pair.party(Side::Alice);
        let bob = pair.party(Side::Bob);
        let hash = |c: &wire::SignedDeviceCertificate| {
            let mut input = b"handover/1 ad-certificate".to_vec();
            input.extend_from_slice(&c.certificate);
            Sha256::digest(&input).to_vec()
        };
        let mut expected = alice.keys.identity_public().to_vec();
        expected.extend_from_slice(&bob.keys.identity_public());
        expected.extend_from_slice(&hash(&alice.certificate));
        expected.extend_from_slice(&hash(&bob.certificate));
        assert_eq!(expected.len(), SESSION_AD_LEN);
        assert_eq!(session(&pair, Side::Alice).associated_data(), &expected[..]);
        assert_eq!(session(&pair, Side::Bob).associated_data(), &expected[..]);
        // The hash covers the certificate bytes the root signed, not the signature field.
        assert_ne!(hash(&alice.certificate), hash(&bob.certificate));
        assert_eq!(
            certificate_ad_hash(&alice.certificate).to_vec(),
            hash(&alice.certificate)
        );
    }

    #[test]
    fn local_certificate_must_certify_the_local_identity_key() {
        let mut pair = Pair::new(8);
        let bundle = pair.bob_bundle().unwrap();
        let now = pair.now;
        let alice = pair.party(Side::Alice);
        let bob_cert = pair.party(Side::Bob).certificate.clone();
        let mut rng = pair.rng.clone();
        let r = Session::initiate(
            &alice.keys,
            &bob_cert,
            &alice.peer_trust,
            &bundle,
            now,
            &mut rng,
        );
        assert!(matches!(r, Err(SessionError::LocalCertificateMismatch)));
    }

    #[test]
    fn sessions_stored_with_the_legacy_associated_data_load_and_keep_working() {
        let mut pair = Pair::established(9).unwrap();
        // A format-1 session (AD = IK_A || IK_B) on both sides, as written before certificates
        // were bound.
        for side in [Side::Alice, Side::Bob] {
            let s = pair.party_mut(side).session.as_mut().unwrap();
            s.inner.ad.truncate(LEGACY_SESSION_AD_LEN);
            let bytes = s.to_secret_bytes();
            assert_eq!(bytes[0], SESSION_FORMAT_LEGACY_AD);
            let restored = Session::from_secret_bytes(&bytes).unwrap();
            assert_eq!(restored.associated_data().len(), LEGACY_SESSION_AD_LEN);
            assert_eq!(&restored.to_secret_bytes()[..], &bytes[..]);
            pair.party_mut(side).session = Some(restored);
        }
        let env = pair.send(Side::Alice, b"after upgrade").unwrap();
        assert_eq!(pair.receive(Side::Bob, &env).unwrap(), b"after upgrade");
        let env = pair.send(Side::Bob, b"reply").unwrap();
        assert_eq!(pair.receive(Side::Alice, &env).unwrap(), b"reply");
        // A current session is written in format 2 and does not read as format 1.
        let fresh = Pair::established(10).unwrap();
        let mut bytes = session(&fresh, Side::Alice).to_secret_bytes().to_vec();
        assert_eq!(bytes[0], SESSION_FORMAT);
        bytes[0] = SESSION_FORMAT_LEGACY_AD;
        assert!(matches!(
            Session::from_secret_bytes(&bytes),
            Err(SessionError::MalformedState)
        ));
    }
}
