//! A deterministic two-party harness (seeded RNG, fake clock), shared by tests, benches and the
//! `ratchet_session` fuzz target. Compiled only with the `test-support` feature: the
//! deterministic RNG here must never reach production code.

use std::convert::Infallible;

use handover_proto::e2e::v1 as wire;
use rand_core::{TryCryptoRng, TryRng};
use sha2::{Digest, Sha256};

use crate::identity::{DeviceKeys, OrgRootKey, OrgTrust, Role};
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
