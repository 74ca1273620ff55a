//! A deterministic two-party harness (seeded RNG, fake clock), shared by tests, benches and the
//! `ratchet_session` fuzz target. Compiled only with the `test-support` feature: the
//! deterministic RNG here must never reach production code.

use std::convert::Infallible;

use handover_proto::e2e::v1 as wire;
use rand_core::{TryCryptoRng, TryRng};
use sha2::{Digest, Sha256};

use crate::identity::{
    DeviceKeys, LABEL_KEM_PREKEY, LABEL_SIGNED_PREKEY, OrgRootKey, OrgTrust, Role,
};
use crate::pqxdh::{PrekeyBundle, PrekeyStore};
use crate::sealed::{self, MailboxSealingKey};
use crate::session::{Session, SessionError};

/// A deterministic RNG: block `i` is `SHA-256(seed || u64be(i))`. For tests and vectors only.
#[derive(Clone, Debug)]
pub struct TestRng {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl TestRng {
    /// An RNG from a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            seed,
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    /// An RNG from a small number (the seed is `SHA-256(u64be(n))`).
    pub fn seeded(n: u64) -> Self {
        Self::from_seed(Sha256::digest(n.to_be_bytes()).into())
    }

    fn refill(&mut self) {
        let mut h = Sha256::new();
        h.update(self.seed);
        h.update(self.counter.to_be_bytes());
        self.block = h.finalize().into();
        self.counter += 1;
        self.used = 0;
    }
}

impl TryRng for TestRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for byte in dst {
            if self.used == 32 {
                self.refill();
            }
            *byte = self.block[self.used];
            self.used += 1;
        }
        Ok(())
    }
}

impl TryCryptoRng for TestRng {}

/// Start of the fake clock: 2026-01-01T00:00:00Z.
pub const START_TIME: u64 = 1_767_225_600;
/// Certificate lifetime in the harness: one year.
pub const CERT_LIFETIME: u64 = 365 * 24 * 3600;
/// Envelope time to live in the harness: one week.
pub const ENVELOPE_TTL: u64 = 7 * 24 * 3600;

/// One side of the pair.
#[derive(Debug)]
pub struct Party {
    /// Organisation root.
    pub org: OrgRootKey,
    /// Device keys.
    pub keys: DeviceKeys,
    /// Device certificate.
    pub certificate: wire::SignedDeviceCertificate,
    /// Prekey secrets.
    pub prekeys: PrekeyStore,
    /// Published prekeys.
    pub published: wire::PublishedPrekeys,
    /// One-time prekeys not yet handed out.
    pub one_time: Vec<wire::OneTimePrekey>,
    /// Mailbox sealing key.
    pub mailbox: MailboxSealingKey,
    /// Trust in the other side's organisation.
    pub peer_trust: OrgTrust,
    /// The session with the other side, once there is one.
    pub session: Option<Session>,
}

/// Which party.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    /// The initiator.
    Alice,
    /// The responder.
    Bob,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Alice => 0,
            Side::Bob => 1,
        }
    }

    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Alice => Side::Bob,
            Side::Bob => Side::Alice,
        }
    }
}

/// An envelope as the relay would carry it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TestEnvelope {
    /// Envelope id.
    pub id: [u8; 16],
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// `enc || ct`.
    pub ciphertext: Vec<u8>,
}

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// From the session.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// From sealing or opening.
    #[error(transparent)]
    Seal(#[from] sealed::SealError),
    /// Receiving a ratchet message without a session.
    #[error("no session")]
    NoSession,
}

/// Two parties in two organisations, a seeded RNG and a fake clock.
#[derive(Debug)]
pub struct Pair {
    parties: [Party; 2],
    /// The RNG every operation draws from.
    pub rng: TestRng,
    /// The fake clock, Unix seconds.
    pub now: u64,
}

fn party(rng: &mut TestRng, one_time: u32) -> Party {
    let org = OrgRootKey::generate(rng);
    let keys = DeviceKeys::generate(rng);
    let certificate = org
        .issue_certificate(
            &keys.public_keys(),
            Role::Caseworker,
            START_TIME - 60,
            START_TIME + CERT_LIFETIME,
            "harness device",
        )
        .unwrap_or_default();
    let mut prekeys = PrekeyStore::new();
    let signed_prekey = prekeys.generate_signed_prekey(&keys, 1, rng).ok();
    let last_resort = prekeys.generate_kem_prekey(&keys, 1, true, rng).ok();
    let one_time = (1..=one_time)
        .filter_map(|id| prekeys.generate_one_time_prekey(id, rng).ok())
        .collect();
    let mailbox = MailboxSealingKey::generate(rng);
    let published = wire::PublishedPrekeys {
        certificate: Some(certificate.clone()),
        signed_prekey,
        last_resort_kem_prekey: last_resort,
    };
    Party {
        peer_trust: OrgTrust::new(org.public_key()),
        org,
        keys,
        certificate,
        prekeys,
        published,
        one_time,
        mailbox,
        session: None,
    }
}

impl Pair {
    /// Two fresh parties from `seed`; no session yet.
    pub fn new(seed: u64) -> Self {
        let mut rng = TestRng::seeded(seed);
        let mut alice = party(&mut rng, 2);
        let mut bob = party(&mut rng, 2);
        // Each trusts the other's organisation.
        std::mem::swap(&mut alice.peer_trust, &mut bob.peer_trust);
        Self {
            parties: [alice, bob],
            rng,
            now: START_TIME,
        }
    }

    /// Two parties with a session: Alice initiates, sends one message, Bob answers, Alice
    /// receives the answer.
    pub fn established(seed: u64) -> Result<Self, HarnessError> {
        let mut pair = Self::new(seed);
        pair.initiate()?;
        let env = pair.send(Side::Alice, b"hello")?;
        pair.receive(Side::Bob, &env)?;
        let env = pair.send(Side::Bob, b"hello back")?;
        pair.receive(Side::Alice, &env)?;
        Ok(pair)
    }

    /// A party.
    pub fn party(&self, side: Side) -> &Party {
        &self.parties[side.index()]
    }

    /// A party, mutably.
    pub fn party_mut(&mut self, side: Side) -> &mut Party {
        &mut self.parties[side.index()]
    }

    /// Bob's prekey bundle, taking one of his one-time prekeys if any are left.
    pub fn bob_bundle(&mut self) -> Option<PrekeyBundle> {
        let bob = &mut self.parties[1];
        let otpk = bob.one_time.pop();
        PrekeyBundle::from_parts(bob.published.clone(), otpk, None)
    }

    /// Alice starts a session with Bob.
    pub fn initiate(&mut self) -> Result<(), HarnessError> {
        let bundle = self.bob_bundle().ok_or(HarnessError::NoSession)?;
        let [alice, _] = &mut self.parties;
        let (session, _) = Session::initiate(
            &alice.keys,
            &alice.certificate,
            &alice.peer_trust,
            &bundle,
            self.now,
            &mut self.rng,
        )?;
        alice.session = Some(session);
        Ok(())
    }

    /// `from` encrypts and seals `plaintext` to the other side.
    pub fn send(&mut self, from: Side, plaintext: &[u8]) -> Result<TestEnvelope, HarnessError> {
        let recipient_key = self.parties[from.other().index()].mailbox.public_key();
        let sender = &mut self.parties[from.index()];
        let session = sender.session.as_mut().ok_or(HarnessError::NoSession)?;
        let message = session.encrypt(plaintext)?;
        let sealed_msg = message.into_sealed(sender.certificate.clone());
        let mut id = [0u8; 16];
        rand_core::Rng::fill_bytes(&mut self.rng, &mut id);
        let expires_at = self.now + ENVELOPE_TTL;
        let ciphertext = sealed::seal(&recipient_key, &sealed_msg, &id, expires_at, &mut self.rng)?;
        Ok(TestEnvelope {
            id,
            expires_at,
            ciphertext,
        })
    }

    /// `to` opens an envelope and decrypts it (setting up the session from an initial message
    /// if it has none).
    pub fn receive(&mut self, to: Side, envelope: &TestEnvelope) -> Result<Vec<u8>, HarnessError> {
        let now = self.now;
        let party = &mut self.parties[to.index()];
        let sealed_msg = sealed::open(
            &party.mailbox,
            &envelope.id,
            envelope.expires_at,
            &envelope.ciphertext,
        )?;
        let sender = sealed_msg
            .sender
            .as_ref()
            .ok_or(SessionError::CouldNotDecrypt)?;
        match sealed_msg.message.as_ref() {
            Some(wire::sealed::Message::Prekey(prekey)) => {
                if let Some(session) = party
                    .session
                    .as_mut()
                    .filter(|s| s.matches_prekey_message(prekey))
                {
                    session.check_sender(&party.peer_trust, sender, now)?;
                    let inner = prekey
                        .message
                        .as_ref()
                        .ok_or(SessionError::CouldNotDecrypt)?;
                    return Ok(session.decrypt(inner, now, &mut self.rng)?);
                }
                let cert = party
                    .peer_trust
                    .verify_certificate(sender, now)
                    .map_err(|_| SessionError::CouldNotDecrypt)?;
                let (session, plaintext) = Session::respond(
                    &party.keys,
                    &party.certificate,
                    &mut party.prekeys,
                    &cert,
                    prekey,
                    now,
                    &mut self.rng,
                )?;
                party.session = Some(session);
                Ok(plaintext)
            }
            Some(wire::sealed::Message::Ratchet(message)) => {
                let session = party.session.as_mut().ok_or(HarnessError::NoSession)?;
                session.check_sender(&party.peer_trust, sender, now)?;
                Ok(session.decrypt(message, now, &mut self.rng)?)
            }
            None => Err(SessionError::CouldNotDecrypt.into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Known-answer vectors of Handover's own constructions.

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn secret(rng: &mut TestRng) -> x25519_dalek::StaticSecret {
    let mut b = [0u8; 32];
    rand_core::Rng::fill_bytes(rng, &mut b);
    x25519_dalek::StaticSecret::from(b)
}

fn public(s: &x25519_dalek::StaticSecret) -> [u8; 32] {
    x25519_dalek::PublicKey::from(s).to_bytes()
}

/// Computes the known-answer vectors of docs/PROTOCOL.md's constructions (PQXDH derivation,
/// ratchet KDF chain and message encryption, sealed envelope, STREAM segments) from fixed
/// seeds, as `(name, lowercase hex)` pairs. `client-core/tests/data/handover_vectors.json`
/// holds the expected values and `tests/vectors.rs` compares.
pub fn known_answer_vectors() -> Vec<(&'static str, String)> {
    use crate::pqxdh::{dh, kdf, kem_encapsulate};
    use crate::ratchet::{Header, kdf_ck, kdf_rk, message_key_material, seal_with_message_key};
    use ml_kem::kem::Decapsulate as _;
    use ml_kem::{DecapsulationKey, KeyExport as _, MlKem768, Seed};

    let mut v: Vec<(&'static str, String)> = Vec::new();
    let mut rng = TestRng::seeded(0x4841_4e44_4f56_4552); // "HANDOVER"

    // PQXDH.
    let ik_a = secret(&mut rng);
    let ek_a = secret(&mut rng);
    let ik_b = secret(&mut rng);
    let spk_b = secret(&mut rng);
    let opk_b = secret(&mut rng);
    let mut kem_seed = [0u8; 64];
    rand_core::Rng::fill_bytes(&mut rng, &mut kem_seed);
    let dk = DecapsulationKey::<MlKem768>::from_seed(Seed::from(kem_seed));
    let kem_public = dk.encapsulation_key().to_bytes().to_vec();
    let mut encaps_rng = rng.clone();
    let mut kem_m = [0u8; 32];
    rand_core::Rng::fill_bytes(&mut encaps_rng, &mut kem_m);
    let Some((kem_ct, ss)) = kem_encapsulate(&kem_public, &mut rng) else {
        return v;
    };
    let ct_arr = ml_kem::Ciphertext::<MlKem768>::try_from(kem_ct.as_slice());
    let ss_bob = ct_arr
        .map(|ct| dk.decapsulate(&ct).to_vec())
        .unwrap_or_default();
    let zero = zeroize::Zeroizing::new([0u8; 32]);
    let dh1 = dh(&ik_a, &public(&spk_b)).unwrap_or(zero.clone());
    let dh2 = dh(&ek_a, &public(&ik_b)).unwrap_or(zero.clone());
    let dh3 = dh(&ek_a, &public(&spk_b)).unwrap_or(zero.clone());
    let dh4 = dh(&ek_a, &public(&opk_b)).unwrap_or(zero.clone());
    let sk = kdf(&dh1, &dh2, &dh3, Some(&dh4), &ss[..]);
    let sk_no_opk = kdf(&dh1, &dh2, &dh3, None, &ss[..]);
    // Certificates (§5.2) of two devices of two organisations, certifying IK_A and IK_B, from
    // their own RNG so the other vectors keep theirs.
    let mut cert_rng = TestRng::seeded(0x4345_5254_4946_4943); // "CERTIFIC"
    let org_a = OrgRootKey::generate(&mut cert_rng);
    let keys_a = DeviceKeys::generate(&mut cert_rng);
    let org_b = OrgRootKey::generate(&mut cert_rng);
    let keys_b = DeviceKeys::generate(&mut cert_rng);
    let issue = |org: &OrgRootKey, keys: &DeviceKeys, ik: [u8; 32], label: &str| {
        let mut device = keys.public_keys();
        device.identity_key = ik;
        org.issue_certificate(
            &device,
            Role::Caseworker,
            START_TIME,
            START_TIME + CERT_LIFETIME,
            label,
        )
        .unwrap_or_default()
    };
    let signed_a = issue(&org_a, &keys_a, public(&ik_a), "device a");
    let signed_b = issue(&org_b, &keys_b, public(&ik_b), "device b");
    // The session's own associated data (Alice initiated), so the vectors follow the code.
    let ad =
        crate::session::session_ad(&public(&ik_a), &public(&ik_b), &signed_a, &signed_b).to_vec();
    v.push(("pqxdh.ik_a_secret", hex(ik_a.as_bytes())));
    v.push(("pqxdh.ik_a", hex(&public(&ik_a))));
    v.push(("pqxdh.ek_a_secret", hex(ek_a.as_bytes())));
    v.push(("pqxdh.ek_a", hex(&public(&ek_a))));
    v.push(("pqxdh.ik_b_secret", hex(ik_b.as_bytes())));
    v.push(("pqxdh.ik_b", hex(&public(&ik_b))));
    v.push(("pqxdh.spk_b_secret", hex(spk_b.as_bytes())));
    v.push(("pqxdh.spk_b", hex(&public(&spk_b))));
    v.push(("pqxdh.opk_b_secret", hex(opk_b.as_bytes())));
    v.push(("pqxdh.opk_b", hex(&public(&opk_b))));
    v.push(("pqxdh.kem_seed", hex(&kem_seed)));
    v.push(("pqxdh.kem_public_key", hex(&kem_public)));
    v.push(("pqxdh.kem_encaps_m", hex(&kem_m)));
    v.push(("pqxdh.kem_ciphertext", hex(&kem_ct)));
    v.push(("pqxdh.kem_shared_secret", hex(&ss[..])));
    v.push(("pqxdh.kem_shared_secret_bob", hex(&ss_bob)));
    v.push(("pqxdh.dh1", hex(&dh1[..])));
    v.push(("pqxdh.dh2", hex(&dh2[..])));
    v.push(("pqxdh.dh3", hex(&dh3[..])));
    v.push(("pqxdh.dh4", hex(&dh4[..])));
    v.push(("pqxdh.sk", hex(&sk.0)));
    v.push(("pqxdh.sk_without_opk", hex(&sk_no_opk.0)));
    v.push((
        "pqxdh.cert_hash_a",
        hex(&crate::session::certificate_ad_hash(&signed_a)),
    ));
    v.push((
        "pqxdh.cert_hash_b",
        hex(&crate::session::certificate_ad_hash(&signed_b)),
    ));
    v.push(("pqxdh.ad", hex(&ad)));

    // Double Ratchet: Alice's first sending chain from SK and Bob's signed prekey.
    let ratchet_a = secret(&mut rng);
    let dh_out = dh(&ratchet_a, &public(&spk_b)).unwrap_or(zero.clone());
    let (rk1, ck0) = kdf_rk(&sk.0, &dh_out);
    let (ck1, mk0) = kdf_ck(&ck0.0);
    let (ck2, mk1) = kdf_ck(&ck1.0);
    let (aead_key0, nonce0) = message_key_material(&mk0.0);
    let header0 = Header {
        ratchet_key: public(&ratchet_a),
        previous_chain_length: 0,
        message_number: 0,
    };
    let header1 = Header {
        message_number: 1,
        ..header0
    };
    let pt0 = b"Referral for Ms. A: please call back.";
    let pt1 = b"";
    let ct0 = seal_with_message_key(&mk0.0, pt0, &ad, &header0);
    let ct1 = seal_with_message_key(&mk1.0, pt1, &ad, &header1);
    v.push(("ratchet.alice_ratchet_secret", hex(ratchet_a.as_bytes())));
    v.push(("ratchet.alice_ratchet_key", hex(&public(&ratchet_a))));
    v.push(("ratchet.dh_out", hex(&dh_out[..])));
    v.push(("ratchet.root_key_1", hex(&rk1.0)));
    v.push(("ratchet.chain_key_0", hex(&ck0.0)));
    v.push(("ratchet.message_key_0", hex(&mk0.0)));
    v.push(("ratchet.chain_key_1", hex(&ck1.0)));
    v.push(("ratchet.message_key_1", hex(&mk1.0)));
    v.push(("ratchet.chain_key_2", hex(&ck2.0)));
    v.push(("ratchet.aead_key_0", hex(&aead_key0[..])));
    v.push(("ratchet.aead_nonce_0", hex(&nonce0)));
    v.push(("ratchet.header_0", hex(&header0.to_bytes())));
    v.push(("ratchet.plaintext_0", hex(pt0)));
    v.push(("ratchet.ciphertext_0", hex(&ct0)));
    v.push(("ratchet.header_1", hex(&header1.to_bytes())));
    v.push(("ratchet.ciphertext_1", hex(&ct1)));

    // Sealed envelope.
    let recipient = MailboxSealingKey::from_secret_bytes(&{
        let mut b = [0u8; 32];
        rand_core::Rng::fill_bytes(&mut rng, &mut b);
        b
    });
    let mut envelope_id = [0u8; 16];
    rand_core::Rng::fill_bytes(&mut rng, &mut envelope_id);
    let expires_at: u64 = START_TIME + ENVELOPE_TTL;
    let sealed_msg = wire::Sealed {
        sender: Some(wire::SignedDeviceCertificate {
            certificate: vec![0x0a, 0x20],
            signature: vec![0x5a; 64],
        }),
        message: Some(wire::sealed::Message::Ratchet(wire::RatchetMessage {
            ratchet_key: public(&ratchet_a).to_vec(),
            previous_chain_length: 0,
            message_number: 0,
            ciphertext: ct0.clone(),
        })),
    };
    let encoded = prost::Message::encode_to_vec(&sealed_msg);
    let mut ikm_rng = rng.clone();
    let mut ikm_e = [0u8; 32];
    rand_core::Rng::fill_bytes(&mut ikm_rng, &mut ikm_e);
    let envelope = sealed::seal(
        &recipient.public_key(),
        &sealed_msg,
        &envelope_id,
        expires_at,
        &mut rng,
    )
    .unwrap_or_default();
    v.push((
        "sealed.recipient_secret",
        hex(&recipient.to_secret_bytes()[..]),
    ));
    v.push(("sealed.recipient_public", hex(&recipient.public_key())));
    v.push(("sealed.envelope_id", hex(&envelope_id)));
    v.push(("sealed.expires_at_be", hex(&expires_at.to_be_bytes())));
    v.push((
        "sealed.aad",
        hex(&sealed::envelope_aad(&envelope_id, expires_at)),
    ));
    v.push(("sealed.info", hex(sealed::HPKE_INFO)));
    v.push(("sealed.encoded_sealed", hex(&encoded)));
    v.push(("sealed.ikm_e", hex(&ikm_e)));
    v.push(("sealed.envelope_ciphertext", hex(&envelope)));

    // STREAM: two full segments and a short last one.
    let mut key = [0u8; 32];
    rand_core::Rng::fill_bytes(&mut rng, &mut key);
    let plaintext: Vec<u8> = (0..(2 * crate::attachment::SEGMENT_LEN + 100))
        .map(|i| (i % 251) as u8)
        .collect();
    let mut ct = Vec::new();
    let file = crate::attachment::FileKey::from_bytes(&key).and_then(|k| {
        crate::attachment::encrypt_with_key(k, &mut &plaintext[..], &mut ct, |_| {}).ok()
    });
    let seg = crate::attachment::SEGMENT_LEN + crate::attachment::TAG_LEN;
    let nonce = |i: u32, last: bool| {
        let mut n = [0u8; 12];
        n[7..11].copy_from_slice(&i.to_be_bytes());
        n[11] = u8::from(last);
        n
    };
    v.push(("stream.key", hex(&key)));
    v.push((
        "stream.plaintext_len_be",
        hex(&(plaintext.len() as u64).to_be_bytes()),
    ));
    v.push(("stream.plaintext_sha256", hex(&Sha256::digest(&plaintext))));
    v.push((
        "stream.blobref_sha256",
        hex(&file.map(|f| f.plaintext_sha256).unwrap_or_default()),
    ));
    v.push(("stream.nonce_0", hex(&nonce(0, false))));
    v.push(("stream.nonce_1", hex(&nonce(1, false))));
    v.push(("stream.nonce_2_last", hex(&nonce(2, true))));
    v.push((
        "stream.ciphertext_len_be",
        hex(&(ct.len() as u64).to_be_bytes()),
    ));
    v.push(("stream.ciphertext_sha256", hex(&Sha256::digest(&ct))));
    v.push((
        "stream.segment_0_tag",
        hex(ct.get(seg - 16..seg).unwrap_or_default()),
    ));
    v.push((
        "stream.segment_1_tag",
        hex(ct.get(2 * seg - 16..2 * seg).unwrap_or_default()),
    ));
    v.push((
        "stream.segment_2",
        hex(ct.get(2 * seg..).unwrap_or_default()),
    ));

    // Double Ratchet, Bob's reply: a DH ratchet step on receiving Alice's ratchet key
    // (previous sending chain length 0: Bob had sent nothing).
    let ratchet_b = secret(&mut rng);
    let dh_b = dh(&ratchet_b, &public(&ratchet_a)).unwrap_or(zero.clone());
    let (rk2, ck_b0) = kdf_rk(&rk1.0, &dh_b);
    let (ck_b1, mk_b0) = kdf_ck(&ck_b0.0);
    let header_b0 = Header {
        ratchet_key: public(&ratchet_b),
        previous_chain_length: 0,
        message_number: 0,
    };
    let pt_b0 = b"Received, thank you.";
    let ct_b0 = seal_with_message_key(&mk_b0.0, pt_b0, &ad, &header_b0);
    v.push(("ratchet.bob_ratchet_secret", hex(ratchet_b.as_bytes())));
    v.push(("ratchet.bob_ratchet_key", hex(&public(&ratchet_b))));
    v.push(("ratchet.bob_dh_out", hex(&dh_b[..])));
    v.push(("ratchet.root_key_2", hex(&rk2.0)));
    v.push(("ratchet.bob_chain_key_0", hex(&ck_b0.0)));
    v.push(("ratchet.bob_message_key_0", hex(&mk_b0.0)));
    v.push(("ratchet.bob_chain_key_1", hex(&ck_b1.0)));
    v.push(("ratchet.bob_header_0", hex(&header_b0.to_bytes())));
    v.push(("ratchet.bob_plaintext_0", hex(pt_b0)));
    v.push(("ratchet.bob_ciphertext_0", hex(&ct_b0)));

    // The certificates (made with the PQXDH inputs above), prekey signatures (§5.1) and the
    // safety number (§5.4) of the two devices.
    let mut spk_msg = 7u32.to_be_bytes().to_vec();
    spk_msg.extend_from_slice(&public(&spk_b));
    let spk_sig =
        crate::identity::sign_labelled(keys_b.signing_key(), LABEL_SIGNED_PREKEY, &spk_msg);
    let mut kem_msg = 8u32.to_be_bytes().to_vec();
    kem_msg.extend_from_slice(&kem_public);
    let kem_sig = crate::identity::sign_labelled(keys_b.signing_key(), LABEL_KEM_PREKEY, &kem_msg);
    for (prefix, org, keys, ik, signed) in [
        ("cert.a", &org_a, &keys_a, &ik_a, &signed_a),
        ("cert.b", &org_b, &keys_b, &ik_b, &signed_b),
    ] {
        let field = |f: &str| -> &'static str {
            match (prefix, f) {
                ("cert.a", "root") => "cert.a.org_root_key",
                ("cert.a", "id") => "cert.a.device_id",
                ("cert.a", "sk") => "cert.a.signing_key",
                ("cert.a", "ik") => "cert.a.identity_key",
                ("cert.a", "bytes") => "cert.a.certificate",
                ("cert.a", _) => "cert.a.signature",
                (_, "root") => "cert.b.org_root_key",
                (_, "id") => "cert.b.device_id",
                (_, "sk") => "cert.b.signing_key",
                (_, "ik") => "cert.b.identity_key",
                (_, "bytes") => "cert.b.certificate",
                _ => "cert.b.signature",
            }
        };
        let pk = keys.public_keys();
        v.push((field("root"), hex(&org.public_key().to_bytes())));
        v.push((field("id"), hex(&pk.device_id.0)));
        v.push((field("sk"), hex(&pk.signing_key)));
        v.push((field("ik"), hex(&public(ik))));
        v.push((field("bytes"), hex(&signed.certificate)));
        v.push((field("sig"), hex(&signed.signature)));
    }
    v.push(("prekey_sig.signed_prekey_id", hex(&7u32.to_be_bytes())));
    v.push(("prekey_sig.signed_prekey_signature", hex(&spk_sig)));
    v.push(("prekey_sig.kem_prekey_id", hex(&8u32.to_be_bytes())));
    v.push(("prekey_sig.kem_prekey_signature", hex(&kem_sig)));
    let verified = |org: &OrgRootKey, signed: &wire::SignedDeviceCertificate| {
        crate::identity::DeviceCertificate::verify(signed, &org.public_key(), START_TIME).ok()
    };
    if let (Some(a), Some(b)) = (verified(&org_a, &signed_a), verified(&org_b, &signed_b)) {
        let number = crate::identity::SafetyNumber::new(&a, &b);
        v.push(("safety.digits", hex(number.digits().as_bytes())));
        v.push(("safety.qr_payload_a", hex(&number.qr_payload())));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Fuzzing driver.

struct Flight {
    envelope: TestEnvelope,
    plaintext: Vec<u8>,
    delivered: bool,
}

/// Drives Alice and Bob through the events encoded in `data` and asserts the session
/// invariants; the `ratchet_session` fuzz target calls this.
///
/// `data[..8]` seeds the pair; each following byte is an event (`byte % 8`): Alice sends,
/// Bob sends, deliver to Bob, deliver to Alice, redeliver an already delivered message,
/// deliver a copy with one bit flipped, drop a message, advance the clock. Events that need
/// a parameter take the next byte; a clock step also persists and restores both sessions.
/// Invariants: a message delivered for the first time
/// decrypts to exactly what was sent or fails cleanly; a redelivered or tampered message never
/// decrypts.
pub fn drive_events(data: &[u8]) {
    let (seed, events) = data.split_at(data.len().min(8));
    let mut seed_bytes = [0u8; 8];
    seed_bytes[..seed.len()].copy_from_slice(seed);
    let mut pair = Pair::new(u64::from_be_bytes(seed_bytes));
    if pair.initiate().is_err() {
        return;
    }
    let mut queues: [Vec<Flight>; 2] = [Vec::new(), Vec::new()];
    let mut delivered: Vec<(Side, TestEnvelope)> = Vec::new();
    let mut counter = 0u32;
    let mut it = events.iter().copied();
    while let Some(op) = it.next() {
        match op % 8 {
            0 | 1 => {
                let from = if op % 8 == 0 { Side::Alice } else { Side::Bob };
                counter += 1;
                let plaintext = counter.to_be_bytes().repeat(usize::from(op / 8) + 1);
                if let Ok(envelope) = pair.send(from, &plaintext) {
                    queues[from.other().index()].push(Flight {
                        envelope,
                        plaintext,
                        delivered: false,
                    });
                }
            }
            2 | 3 => {
                let to = if op % 8 == 2 { Side::Bob } else { Side::Alice };
                let pick = usize::from(it.next().unwrap_or(0));
                let q = &mut queues[to.index()];
                if q.is_empty() {
                    continue;
                }
                let flight = q.remove(pick % q.len());
                let result = pair.receive(to, &flight.envelope);
                if let Ok(plaintext) = &result {
                    assert!(!flight.delivered);
                    assert_eq!(plaintext, &flight.plaintext);
                }
                delivered.push((to, flight.envelope));
            }
            4 => {
                let pick = usize::from(it.next().unwrap_or(0));
                if delivered.is_empty() {
                    continue;
                }
                let (to, envelope) = delivered[pick % delivered.len()].clone();
                assert!(pair.receive(to, &envelope).is_err(), "replay decrypted");
            }
            5 => {
                let pick = usize::from(it.next().unwrap_or(0));
                let bit = usize::from(it.next().unwrap_or(0));
                let to = if pick % 2 == 0 {
                    Side::Bob
                } else {
                    Side::Alice
                };
                let q = &queues[to.index()];
                if q.is_empty() {
                    continue;
                }
                let mut envelope = q[pick % q.len()].envelope.clone();
                let len = envelope.ciphertext.len();
                let at = (pick * 251 + bit) % len;
                envelope.ciphertext[at] ^= 1 << (bit % 8);
                assert!(pair.receive(to, &envelope).is_err(), "tampered decrypted");
            }
            6 => {
                let pick = usize::from(it.next().unwrap_or(0));
                let q = &mut queues[pick % 2];
                if !q.is_empty() {
                    let i = pick % q.len();
                    q.remove(i);
                }
            }
            _ => {
                pair.now += u64::from(it.next().unwrap_or(0)) * 3600;
                // Persist and restore both sessions, as the local store would.
                for side in [Side::Alice, Side::Bob] {
                    let party = pair.party_mut(side);
                    if let Some(session) = party.session.take() {
                        let bytes = session.to_secret_bytes();
                        let restored = Session::from_secret_bytes(&bytes);
                        assert!(restored.is_ok(), "session state did not round-trip");
                        party.session = restored.ok();
                    }
                }
            }
        }
    }
}
