//! Moving this device's mailbox to another relay (docs/PROTOCOL.md §10.4).
//!
//! The engine keeps the durable part of a move: [`Engine::switch_relay`] records the new
//! mailbox as this device's and the old one as being drained, in one atomic write;
//! [`Engine::announce_relay_move`] queues a contact card with the new address to every contact
//! with a session, in one atomic write; [`Engine::finish_relay_move`] forgets the old mailbox
//! once the driver deleted it. The driver (the async client) talks to the two relays.

use std::fmt;

use zeroize::Zeroizing;

use crate::encoding::{Reader, Writer};

use super::records::{ReaderExt as _, WriterExt as _};
use super::{
    CryptoRng, Engine, EngineError, ID_LEN, KEY_PROFILE, KEY_PUBLISHED_ACK, KvStore, Namespace,
    PeerId, RelayInfo, SigningKey, WriteBatch, records,
};

/// `Namespace::Settings` key of the move in progress.
const KEY_RELAY_MOVE: &[u8] = b"relay-move";
const FORMAT: u8 = 1;
const PHASE_SWITCHED: u8 = 1;
const PHASE_ANNOUNCED: u8 = 2;

/// How long the old mailbox is drained after a move by default: 14 days, twice the envelope
/// lifetime ([`DEFAULT_ENVELOPE_TTL`](super::DEFAULT_ENVELOPE_TTL)). A contact reads the
/// contact card with the new address within its lifetime (7 days) or never; envelopes it sealed
/// to the old address before reading it expire within 7 more days.
pub const RELAY_MOVE_DRAIN_SECS: u64 = 2 * super::DEFAULT_ENVELOPE_TTL;

/// How far a move has come (each step is durable before the next starts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayMovePhase {
    /// The new mailbox is this device's; prekeys and contact cards are still to be published
    /// and queued.
    Switched,
    /// Contact cards with the new address are in the outbox; the old mailbox is being drained.
    Announced,
}

/// A move to another relay in progress: the old mailbox, which is drained until
/// `drain_until` and then deleted.
pub struct RelayMove {
    /// How far the move has come.
    pub phase: RelayMovePhase,
    /// The relay of the old mailbox.
    pub old_relay: RelayInfo,
    /// The old mailbox's receive id.
    pub old_recv_id: [u8; ID_LEN],
    old_auth: Box<SigningKey>,
    /// Unix seconds from which the old mailbox is deleted as soon as a fetch finds it empty.
    pub drain_until: u64,
}

impl RelayMove {
    /// The key that authenticates the old mailbox.
    pub fn old_auth_key(&self) -> &SigningKey {
        &self.old_auth
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new(FORMAT);
        w.u8(match self.phase {
            RelayMovePhase::Switched => PHASE_SWITCHED,
            RelayMovePhase::Announced => PHASE_ANNOUNCED,
        });
        w.lp(self.old_relay.host_port.as_bytes());
        w.bytes(&self.old_relay.pin);
        w.bytes(&self.old_recv_id);
        w.bytes(&Zeroizing::new(self.old_auth.to_bytes())[..]);
        w.u64(self.drain_until);
        Zeroizing::new(w.finish())
    }

    fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let corrupt = || EngineError::CorruptState;
        let mut r = Reader::new(bytes);
        if r.u8() != Some(FORMAT) {
            return Err(corrupt());
        }
        let phase = match r.u8().ok_or_else(corrupt)? {
            PHASE_SWITCHED => RelayMovePhase::Switched,
            PHASE_ANNOUNCED => RelayMovePhase::Announced,
            _ => return Err(corrupt()),
        };
        let host_port = r.string()?;
        let pin = r.array().ok_or_else(corrupt)?;
        let old_recv_id = r.array().ok_or_else(corrupt)?;
        let seed = Zeroizing::new(r.array::<32>().ok_or_else(corrupt)?);
        let drain_until = r.u64().ok_or_else(corrupt)?;
        if !r.is_empty() {
            return Err(corrupt());
        }
        Ok(Self {
            phase,
            old_relay: RelayInfo { host_port, pin },
            old_recv_id,
            old_auth: Box::new(SigningKey::from_bytes(&seed)),
            drain_until,
        })
    }
}

impl fmt::Debug for RelayMove {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The auth key is secret; ids and the relay stay out of debug output.
        let Self {
            phase,
            old_relay: _,
            old_recv_id: _,
            old_auth: _,
            drain_until,
        } = self;
        f.debug_struct("RelayMove")
            .field("phase", phase)
            .field("drain_until", drain_until)
            .finish_non_exhaustive()
    }
}

impl<S: KvStore> Engine<S> {
    /// The move to another relay in progress, if any.
    pub fn relay_move(&self) -> Result<Option<RelayMove>, EngineError> {
        self.state()?;
        self.store
            .get(Namespace::Settings, KEY_RELAY_MOVE)?
            .map(|b| RelayMove::decode(&b))
            .transpose()
    }

    /// Makes a mailbox on another relay this device's, once the driver created it there
    /// (`CreateMailbox` with `auth`'s public key and the current
    /// [`capability_hashes`](Self::capability_hashes)) and the relay answered with
    /// `recv_id` and `send_id`. The mailbox sealing key stays the same, so envelopes sealed to
    /// the old address still open. In one atomic, flushed write: the profile names the new
    /// relay, ids and auth key; the old mailbox is recorded as a [`RelayMove`] to drain until
    /// `drain_until`; the record of which prekey bundle the relay holds is dropped (the new
    /// relay holds none yet).
    ///
    /// Refused with [`EngineError::RelayMoveInProgress`] while an earlier move still drains
    /// its old mailbox, and with [`EngineError::InvalidInput`] when `relay` is this device's
    /// relay already (same address and pin). Nothing changes when it fails.
    pub fn switch_relay(
        &mut self,
        relay: RelayInfo,
        auth: SigningKey,
        recv_id: [u8; ID_LEN],
        send_id: [u8; ID_LEN],
        drain_until: u64,
    ) -> Result<(), EngineError> {
        if self.relay_move()?.is_some() {
            return Err(EngineError::RelayMoveInProgress);
        }
        let st = self.state_mut()?;
        if st.profile.relay == relay {
            return Err(EngineError::InvalidInput(
                "this device's mailbox is on that relay already",
            ));
        }
        let old_relay = std::mem::replace(&mut st.profile.relay, relay);
        let old_recv_id = std::mem::replace(&mut st.profile.recv_id, recv_id);
        let old_send_id = std::mem::replace(&mut st.profile.send_id, send_id);
        let old_auth = std::mem::replace(&mut st.profile.auth, Box::new(auth));
        let record = RelayMove {
            phase: RelayMovePhase::Switched,
            old_relay,
            old_recv_id,
            old_auth,
            drain_until,
        };
        let mut batch = WriteBatch::new();
        batch.put(Namespace::Identity, KEY_PROFILE, &st.profile.encode());
        batch.put(Namespace::Settings, KEY_RELAY_MOVE, &record.encode());
        batch.delete(Namespace::Prekeys, KEY_PUBLISHED_ACK);
        let written = self
            .store
            .apply_batch(batch)
            .and_then(|()| self.store.flush());
        if let Err(e) = written {
            // Nothing of the move is this device's until the write succeeded.
            let st = self.state_mut()?;
            let RelayMove {
                old_relay,
                old_recv_id,
                old_auth,
                ..
            } = record;
            st.profile.relay = old_relay;
            st.profile.recv_id = old_recv_id;
            st.profile.send_id = old_send_id;
            st.profile.auth = old_auth;
            return Err(e.into());
        }
        Ok(())
    }

    /// Queues this device's contact card, with its new address and a fresh capability for each
    /// recipient (docs/PROTOCOL.md §10.2), to every contact it has a session with and an
    /// address for (colleagues of its own organisation included), and marks the move
    /// [`RelayMovePhase::Announced`], all in one atomic write. A contact the card cannot be
    /// released to (revoked, not on its organisation's current device list) is left out.
    /// Returns the contacts the card was queued for. Register the new
    /// [`capability_hashes`](Self::capability_hashes) with the new relay, then flush the
    /// outbox. Does nothing (and returns no contacts) unless the move is
    /// [`RelayMovePhase::Switched`].
    pub fn announce_relay_move(
        &mut self,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<PeerId>, EngineError> {
        let Some(mut record) = self.relay_move()? else {
            return Ok(Vec::new());
        };
        if record.phase != RelayMovePhase::Switched {
            return Ok(Vec::new());
        }
        let mut batch = WriteBatch::new();
        let mut caps = self.clone_caps()?;
        let mut announced = Vec::new();
        let st = self.state()?;
        for (peer, contact) in &st.contacts {
            if contact.address.is_none() {
                continue;
            }
            let Some(session) = self.load_session(*peer)? else {
                continue;
            };
            let Ok(trust) = self.org_trust(&peer.org_root) else {
                continue;
            };
            let mut staged = self.clone_caps_of(&caps);
            let mut card = WriteBatch::new();
            match self.stage_contact_card(
                &mut card,
                *peer,
                contact,
                trust,
                session,
                &mut staged,
                now,
                rng,
            ) {
                Ok(_) => {
                    batch.append(card);
                    caps = staged;
                    announced.push(*peer);
                }
                Err(EngineError::Store(e)) => return Err(e.into()),
                // This contact cannot be written to now; the others still are.
                Err(_) => {}
            }
        }
        record.phase = RelayMovePhase::Announced;
        batch.put(Namespace::Settings, KEY_RELAY_MOVE, &record.encode());
        self.store.apply_batch(batch)?;
        self.state_mut()?.caps = caps;
        Ok(announced)
    }

    /// Forgets the old mailbox of the move in progress (after the driver deleted it at the old
    /// relay, or gave up on an old relay that cannot be reached after the drain period).
    pub fn finish_relay_move(&mut self) -> Result<(), EngineError> {
        self.state()?;
        let mut batch = WriteBatch::new();
        batch.delete(Namespace::Settings, KEY_RELAY_MOVE);
        self.store.apply_batch(batch)?;
        self.store.flush()?;
        Ok(())
    }

    fn clone_caps_of(&self, caps: &[records::IssuedCapability]) -> Vec<records::IssuedCapability> {
        caps.iter()
            .map(|c| records::IssuedCapability {
                capability: c.capability.clone(),
                expires_at: c.expires_at,
                contact: c.contact,
            })
            .collect()
    }
}
