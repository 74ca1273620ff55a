//! Referrals and consent through the engine (docs/PROTOCOL.md §10.3, docs/STORAGE.md).
//!
//! The [`referral`](crate::referral) and [`consent`](crate::consent) modules hold the protocol
//! logic; this module persists their records in the store and moves their messages through the
//! sessions and the outbox:
//!
//! - consent receipts, the [`ReceiptRegistry`] and the [`DisclosureLedger`] live in
//!   [`Namespace::Consent`];
//! - sender and receiver referral records ([`SenderReferral`], [`ReceiverReferral`]), the
//!   devices each referral went to (or came from) and the purge confirmations per device live
//!   in [`Namespace::Referrals`];
//! - the content-free JSON export of each referral's hash-chained timeline lives in
//!   [`Namespace::Timeline`] (rewritten with every step, for audit without opening records).
//!
//! Every operation stages its record changes and the envelopes it sends in one
//! [`WriteBatch`]; incoming referral content is applied inside [`Engine::receive`]'s batch, so a
//! referral step is applied exactly once together with the message and its dedupe markers.

use std::collections::{BTreeMap, BTreeSet};

use handover_proto::decode;
use serde_json::Value;

use super::{
    Body, CryptoRng, DeviceId, Engine, EngineError, ID_LEN, KEY_LEN, KvStore, Namespace,
    OutboxItem, PeerId, Role, Session, WriteBatch, key, records, wire,
};
use crate::consent::{
    Consent, ConsentError, ConsentEvent, DisclosureLedger, Language, OverrideNotice, PreferredTerm,
    PurgeStatus, ReceiptId, ReceiptRegistry, SignedReceipt, SurvivorCopy, kantara_json,
    render_survivor_copy,
};
use crate::identity::{DeviceCertificate, OrgTrust};
use crate::referral::{
    Action, ConsentInput, OfferDraft, ReceiverEvent, ReceiverReferral, ReferralError, ReferralId,
    ReferralState, SenderEvent, SenderReferral, Side, TeamAction, TeamStep, assignee,
    fan_out_consent_change, released,
};
use crate::store::Value as Stored;

/// Consent: the receipt registry (own receipts and receipts received from senders).
const KEY_REGISTRY: &[u8] = b"registry";
/// Consent: the disclosure ledger (who received what under which receipt).
const KEY_LEDGER: &[u8] = b"ledger";
/// Referrals: a sender record, by referral id.
const PREFIX_SENT: &[u8] = b"s/";
/// Referrals: a receiver record, by referral id.
const PREFIX_RECEIVED: &[u8] = b"r/";
/// Referrals: the counterpart organisation root and devices, by referral id.
const PREFIX_PEERS: &[u8] = b"p/";
/// Referrals: the devices that confirmed erasure, by referral id.
const PREFIX_CONFIRMED: &[u8] = b"c/";
/// Referrals: a sent referral whose receiver accepted and whose body is not yet released, by
/// referral id (empty value). Written in the batch that applies ACCEPTED, deleted in the batch
/// that stages the body, so a crash in between never loses the release.
const PREFIX_RELEASE: &[u8] = b"b/";
/// Referrals: the team steps (release claims, reassignments) of a sent referral, by referral
/// id: each `u32be(len) || SignedTeamStep`.
const PREFIX_TEAM: &[u8] = b"g/";
/// Referrals: `t/` || referral id || device id (empty value): the sent referral was shared
/// with that colleague device.
const PREFIX_SHARED: &[u8] = b"t/";
/// Referrals: the list summary of a referral, by referral id (`records::encode_list_entry`):
/// what a list shows, derived from the `s/` or `r/`, `p/`, `g/` and `b/` records and restaged
/// in every batch that changes one of them ([`Engine::commit_referrals`]); rebuilt by
/// [`Engine::referral_list`] when missing or unreadable.
const PREFIX_LIST: &[u8] = b"l/";
/// The records a list summary is derived from.
const SUMMARISED: [&[u8]; 5] = [
    PREFIX_SENT,
    PREFIX_RECEIVED,
    PREFIX_PEERS,
    PREFIX_TEAM,
    PREFIX_RELEASE,
];
/// Consent: `t/` || receipt id || device id (empty value): the receipt was shared with that
/// colleague device.
const PREFIX_RECEIPT_SHARED: &[u8] = b"t/";

/// How long after ACCEPTED arrived a device of the sending organisation that does not hold
/// the case releases the body itself when nobody has (docs/PROTOCOL.md §11.9): the device the
/// case is assigned to releases at once; any other caseworker or admin device waits this
/// long, unless the assignee is no longer an active device of the organisation.
pub const RELEASE_HANDOFF_SECS: u64 = 600;

/// A referral step the engine applied or refused, for the application to show. Drained with
/// [`Engine::take_referral_events`]; the records themselves are the source of truth
/// ([`Engine::referrals`]).
#[derive(Clone, PartialEq, Debug)]
#[non_exhaustive]
pub enum ReferralEvent {
    /// An offer arrived, passed the signature and consent checks and was stored (state SENT
    /// on this side until acknowledged).
    OfferReceived {
        /// The referral.
        referral: ReferralId,
    },
    /// The lifecycle moved to a new state.
    StateChanged {
        /// The referral.
        referral: ReferralId,
        /// The state's shared/DOMAIN.md name ("ACCEPTED", "CONSENT_REVOKED", ...).
        state: &'static str,
    },
    /// The receiving organisation accepted: release the body with
    /// [`Engine::release_referral_body`].
    ReleaseBody {
        /// The referral.
        referral: ReferralId,
    },
    /// The released body arrived, matched the offer's commitments and was stored.
    BodyReceived {
        /// The referral.
        referral: ReferralId,
    },
    /// Content of a referral was erased on this device (withdrawal, consent revoked, expiry,
    /// retention).
    Erased {
        /// The referral.
        referral: ReferralId,
    },
    /// A device of the receiving organisation confirmed erasure (or retention under a legal
    /// exception).
    PurgeConfirmed {
        /// The referral.
        referral: ReferralId,
        /// The confirming device.
        device: DeviceId,
        /// Whether something was kept under a legal exception.
        retained: bool,
    },
    /// The consent a referral relies on changed (renewed, withdrawn, expired, invalidated).
    ConsentChanged {
        /// The referral.
        referral: ReferralId,
    },
    /// A signed consent receipt from a trusted organisation was stored.
    ConsentReceiptReceived {
        /// The receipt.
        receipt: ReceiptId,
    },
    /// A colleague device of this organisation shared a sent referral: this device now
    /// follows it and can take every sender step on it.
    CaseShared {
        /// The referral.
        referral: ReferralId,
    },
    /// A colleague device of this organisation released the body or reassigned the case.
    TeamStep {
        /// The referral.
        referral: ReferralId,
        /// The colleague device that signed the step.
        device: DeviceId,
        /// What it did.
        action: TeamAction,
    },
    /// Incoming referral content was refused; nothing changed in the referral records (the
    /// message itself is stored and the envelope may be acked).
    Refused {
        /// The referral, when known.
        referral: Option<ReferralId>,
        /// Why.
        error: ReferralError,
    },
}

/// The consent an outgoing offer relies on.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum OfferConsent {
    /// A receipt recorded on this device ([`Engine::record_consent`]).
    Receipt(ReceiptId),
    /// Sharing without consent (ADMIN devices only; needs a legal basis and justification).
    Override(wire::ConsentOverride),
}

/// Which side of a referral this device is on, its state and its audit trail.
#[derive(Clone, Debug)]
pub struct ReferralSummary {
    /// The referral.
    pub id: ReferralId,
    /// Sender or receiver.
    pub side: Side,
    /// The current state.
    pub state: ReferralState,
    /// The counterpart organisation's root key.
    pub counterpart: [u8; KEY_LEN],
    /// The timeline's JSON export (no case content).
    pub timeline: Value,
    /// Sender side: the device of this organisation that holds the case (the device that
    /// signed the offer until the case is reassigned).
    pub assignee: Option<DeviceId>,
    /// Sender side: whether this device holds the case.
    pub mine: bool,
    /// Sender side: the team steps (release claims, reassignments), oldest first.
    pub team: Vec<TeamStep>,
}

/// A referral as a list shows it ([`Engine::referral_list`]), read from one small summary
/// record per referral without opening the referral record, its timeline or its team steps.
#[derive(Clone, PartialEq, Debug)]
#[non_exhaustive]
pub struct ReferralListEntry {
    /// The referral.
    pub id: ReferralId,
    /// Sender or receiver.
    pub side: Side,
    /// The current state.
    pub state: ReferralState,
    /// The counterpart organisation's root key.
    pub counterpart: [u8; KEY_LEN],
    /// Sender side: the device of this organisation that holds the case.
    pub assignee: Option<DeviceId>,
    /// Sender side: whether this device holds the case.
    pub mine: bool,
    /// Sender side: the receiver accepted and nobody of this organisation has released the
    /// body yet (the referral is among [`Engine::pending_releases`]).
    pub awaiting_release: bool,
    /// When the offer was created (Unix seconds; 0 if unknown).
    pub created_at: u64,
    /// When the latest step of the timeline was taken (Unix seconds; 0 if unknown).
    pub updated_at: u64,
    /// What the list shows of the offer; `None` once the receiver's copy was erased.
    pub offer: Option<OfferGlance>,
}

/// The fields of an offer a referral list shows.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct OfferGlance {
    /// Referral, transfer or information request.
    pub kind: wire::ReferralKind,
    /// Priority.
    pub priority: wire::Priority,
    /// Respond by, Unix seconds.
    pub respond_by: u64,
    /// Services requested.
    pub services: Vec<wire::Service>,
    /// Names of other services.
    pub other_services: Vec<String>,
    /// The sender's pseudonymous case code.
    pub case_ref: String,
}

impl OfferGlance {
    fn of(o: &wire::ReferralOffer) -> Self {
        Self {
            kind: o.kind(),
            priority: o.priority(),
            respond_by: o.respond_by,
            services: o.services_requested().collect(),
            other_services: o.other_services.clone(),
            case_ref: o.sender_case_ref.clone(),
        }
    }
}

/// Where one recipient of data under a receipt stands with erasure.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PurgeReport {
    /// The referral the data went out in.
    pub referral: ReferralId,
    /// The recipient organisation's root key.
    pub recipient: [u8; KEY_LEN],
    /// The status per the hash-chained timeline (first confirmation).
    pub status: PurgeStatus,
    /// Devices of the recipient that confirmed erasure.
    pub confirmed: Vec<DeviceId>,
    /// Devices the referral went to that have not confirmed yet (empty until erasure was
    /// requested).
    pub pending: Vec<DeviceId>,
}

/// Strips case content from a received referral or consent message before it is logged: the
/// referral record, its timeline and the receipt registry hold what was applied, erasure
/// (decline, withdrawal, consent revoked, expiry, retention) must not leave a copy in the
/// message log, and an ambassador device keeps none of it (docs/PROTOCOL.md §10.3). The body
/// keeps its referral id, the offer its signer and signature, a control only its referral id,
/// sequence and time (no action, so no question, answer, note or reason), a receipt its signer;
/// signatures stay (they reveal nothing of the removed bytes and keep the stored form valid).
pub(super) fn redact(content: &mut wire::Content) {
    match &mut content.body {
        Some(Body::ReferralBody(body)) => {
            body.sections.clear();
            body.keys.clear();
            body.consent_receipt = None;
        }
        Some(Body::SignedReferralOffer(offer)) => {
            offer.offer.clear();
        }
        Some(Body::ReferralControl(signed)) => {
            let kept = decode::referral_control(&signed.control)
                .map(|c| wire::ReferralControl {
                    referral_id: c.referral_id,
                    sequence: c.sequence,
                    at: c.at,
                    ..Default::default()
                })
                .unwrap_or_default();
            signed.control = prost::Message::encode_to_vec(&kept);
        }
        Some(Body::ConsentReceipt(receipt)) => {
            receipt.receipt.clear();
        }
        Some(Body::SenderCase(case)) => {
            // The record keeps it; the log keeps no offer, steps, receipts or keys.
            *case = wire::SenderCase::default();
        }
        _ => {}
    }
}

fn receipt_shared_key(id: &ReceiptId, device: DeviceId) -> Vec<u8> {
    let mut k = key(PREFIX_RECEIPT_SHARED, id.as_bytes());
    k.extend_from_slice(&device.0);
    k
}

fn encode_team(team: &[TeamStep]) -> Vec<u8> {
    let mut out = Vec::new();
    for step in team {
        let bytes = prost::Message::encode_to_vec(step.signed());
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// Whether a sent referral is still shared with colleague devices: not ended and erased, and
/// before its retention ends.
fn shareable(r: &SenderReferral, now: u64) -> bool {
    !matches!(
        r.state(),
        ReferralState::Declined(_)
            | ReferralState::Expired
            | ReferralState::Withdrawn
            | ReferralState::ConsentRevoked
            | ReferralState::PurgeConfirmed(_)
            | ReferralState::RetainedUnderException { .. }
    ) && now < r.core.meta.retain_until
}

/// The counterpart of a referral: its organisation and the devices involved (for a sender
/// record: every receiving device the offer went to; for a receiver record: the device that
/// sent the offer).
struct Peers {
    root: [u8; KEY_LEN],
    devices: Vec<DeviceId>,
}

impl Peers {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(KEY_LEN + ID_LEN * self.devices.len());
        out.extend_from_slice(&self.root);
        for d in &self.devices {
            out.extend_from_slice(&d.0);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let (root, rest) = bytes
            .split_at_checked(KEY_LEN)
            .ok_or(EngineError::CorruptState)?;
        Ok(Self {
            root: root.try_into().map_err(|_| EngineError::CorruptState)?,
            devices: decode_ids(rest)?,
        })
    }
}

fn encode_ids(ids: &BTreeSet<DeviceId>) -> Vec<u8> {
    ids.iter().flat_map(|d| d.0).collect()
}

fn decode_ids(bytes: &[u8]) -> Result<Vec<DeviceId>, EngineError> {
    if !bytes.len().is_multiple_of(ID_LEN) {
        return Err(EngineError::CorruptState);
    }
    bytes
        .chunks_exact(ID_LEN)
        .map(|c| {
            c.try_into()
                .map(DeviceId)
                .map_err(|_| EngineError::CorruptState)
        })
        .collect()
}

fn root_of(bytes: &[u8]) -> Result<[u8; KEY_LEN], EngineError> {
    bytes
        .try_into()
        .map_err(|_| EngineError::InvalidInput("organisation root key must be 32 bytes"))
}

/// A referral record of either side, as loaded for one step.
enum Record {
    Sent(Box<SenderReferral>),
    Received(Box<ReceiverReferral>),
}

/// Sessions advanced within one batch, so that several envelopes to the same device in one
/// batch each use the state the previous one left (the store still holds the old state until
/// the batch is applied).
#[derive(Default)]
struct Sessions(BTreeMap<PeerId, Session>);

fn copy_session(session: &Session) -> Result<Session, EngineError> {
    Session::from_secret_bytes(&session.to_secret_bytes()).map_err(|_| EngineError::CorruptState)
}

impl<S: KvStore> Engine<S> {
    // -----------------------------------------------------------------------------------------
    // Records.

    fn load_registry(&self) -> Result<ReceiptRegistry, EngineError> {
        match self.store.get(Namespace::Consent, KEY_REGISTRY)? {
            Some(b) => ReceiptRegistry::from_bytes(&b).map_err(|_| EngineError::CorruptState),
            None => Ok(ReceiptRegistry::new()),
        }
    }

    fn load_ledger(&self) -> Result<DisclosureLedger, EngineError> {
        match self.store.get(Namespace::Consent, KEY_LEDGER)? {
            Some(b) => DisclosureLedger::from_bytes(&b).map_err(|_| EngineError::CorruptState),
            None => Ok(DisclosureLedger::new()),
        }
    }

    fn load_record(&self, id: &ReferralId) -> Result<Option<Record>, EngineError> {
        if let Some(b) = self
            .store
            .get(Namespace::Referrals, &key(PREFIX_SENT, id.as_bytes()))?
        {
            let r = SenderReferral::from_bytes(&b).map_err(|_| EngineError::CorruptState)?;
            return Ok(Some(Record::Sent(Box::new(r))));
        }
        if let Some(b) = self
            .store
            .get(Namespace::Referrals, &key(PREFIX_RECEIVED, id.as_bytes()))?
        {
            let r = ReceiverReferral::from_bytes(&b).map_err(|_| EngineError::CorruptState)?;
            return Ok(Some(Record::Received(Box::new(r))));
        }
        Ok(None)
    }

    fn load_peers(&self, id: &ReferralId) -> Result<Peers, EngineError> {
        let b = self
            .store
            .get(Namespace::Referrals, &key(PREFIX_PEERS, id.as_bytes()))?
            .ok_or(EngineError::CorruptState)?;
        Peers::decode(&b)
    }

    fn load_confirmed(&self, id: &ReferralId) -> Result<BTreeSet<DeviceId>, EngineError> {
        match self
            .store
            .get(Namespace::Referrals, &key(PREFIX_CONFIRMED, id.as_bytes()))?
        {
            Some(b) => Ok(decode_ids(&b)?.into_iter().collect()),
            None => Ok(BTreeSet::new()),
        }
    }

    /// The team steps of a sent referral (each re-verified as kept history).
    fn load_team(&self, id: &ReferralId) -> Result<Vec<TeamStep>, EngineError> {
        match self
            .store
            .get(Namespace::Referrals, &key(PREFIX_TEAM, id.as_bytes()))?
        {
            Some(bytes) => self.decode_team(id, &bytes),
            None => Ok(Vec::new()),
        }
    }

    /// Decodes and re-verifies stored team steps (`g/`).
    fn decode_team(&self, id: &ReferralId, bytes: &[u8]) -> Result<Vec<TeamStep>, EngineError> {
        let trust = self.own_trust()?;
        let mut rest = bytes;
        let mut out = Vec::new();
        while !rest.is_empty() {
            let (len, tail) = rest.split_at_checked(4).ok_or(EngineError::CorruptState)?;
            let len = u32::from_be_bytes(len.try_into().map_err(|_| EngineError::CorruptState)?);
            let (item, tail) = tail
                .split_at_checked(len as usize)
                .ok_or(EngineError::CorruptState)?;
            let signed = decode::signed_team_step(item).map_err(|_| EngineError::CorruptState)?;
            out.push(
                TeamStep::verify(&signed, id, trust, None)
                    .map_err(|_| EngineError::CorruptState)?,
            );
            rest = tail;
        }
        Ok(out)
    }

    fn stage_team(&self, batch: &mut WriteBatch, id: &ReferralId, team: &[TeamStep]) {
        batch.put(
            Namespace::Referrals,
            &key(PREFIX_TEAM, id.as_bytes()),
            &encode_team(team),
        );
    }

    /// `ns`/`k` as it will be once `batch` is applied.
    fn get_staged(
        &self,
        batch: &WriteBatch,
        ns: Namespace,
        k: &[u8],
    ) -> Result<Option<Stored>, EngineError> {
        Ok(match batch.staged(ns, k) {
            Some(v) => v.map(|b| Stored::new(b.to_vec())),
            None => self.store.get(ns, k)?,
        })
    }

    /// A referral's list entry derived from its records as they will be once `batch` is
    /// applied (`None` if there is no record).
    fn derive_list_entry(
        &self,
        id: &ReferralId,
        batch: &WriteBatch,
    ) -> Result<Option<ReferralListEntry>, EngineError> {
        let get = |prefix: &[u8]| {
            self.get_staged(batch, Namespace::Referrals, &key(prefix, id.as_bytes()))
        };
        let corrupt = |_| EngineError::CorruptState;
        let record = if let Some(b) = get(PREFIX_SENT)? {
            Record::Sent(Box::new(SenderReferral::from_bytes(&b).map_err(corrupt)?))
        } else if let Some(b) = get(PREFIX_RECEIVED)? {
            Record::Received(Box::new(ReceiverReferral::from_bytes(&b).map_err(corrupt)?))
        } else {
            return Ok(None);
        };
        let counterpart =
            Peers::decode(&get(PREFIX_PEERS)?.ok_or(EngineError::CorruptState)?)?.root;
        let timeline = match &record {
            Record::Sent(r) => r.timeline(),
            Record::Received(r) => r.timeline(),
        };
        let created_at = timeline.entries().first().and_then(|e| e.at()).unwrap_or(0);
        let updated_at = timeline.entries().last().and_then(|e| e.at()).unwrap_or(0);
        Ok(Some(match &record {
            Record::Sent(r) => {
                let team = match get(PREFIX_TEAM)? {
                    Some(b) => self.decode_team(id, &b)?,
                    None => Vec::new(),
                };
                let holder = r.offer_signer().map(|signer| assignee(signer, &team));
                ReferralListEntry {
                    id: *id,
                    side: Side::Sender,
                    state: r.state().clone(),
                    counterpart,
                    assignee: holder,
                    mine: holder == Some(self.device_id()?),
                    awaiting_release: get(PREFIX_RELEASE)?.is_some()
                        && matches!(
                            r.state(),
                            ReferralState::Accepted | ReferralState::InService
                        )
                        && !released(&team),
                    created_at,
                    updated_at,
                    offer: Some(OfferGlance::of(r.offer())),
                }
            }
            Record::Received(r) => ReferralListEntry {
                id: *id,
                side: Side::Receiver,
                state: r.state().clone(),
                counterpart,
                assignee: None,
                mine: false,
                awaiting_release: false,
                created_at,
                updated_at,
                offer: r.offer().map(OfferGlance::of),
            },
        }))
    }

    /// Restages the list summary of every referral whose records `batch` changes, so that
    /// the summary is applied atomically with what it summarises.
    fn stage_list_entries(&self, batch: &mut WriteBatch) -> Result<(), EngineError> {
        let ids: BTreeSet<ReferralId> = batch
            .touched(Namespace::Referrals)
            .filter_map(|k| {
                SUMMARISED
                    .iter()
                    .find_map(|p| k.strip_prefix(*p).and_then(ReferralId::from_slice))
            })
            .collect();
        for id in ids {
            let k = key(PREFIX_LIST, id.as_bytes());
            match self.derive_list_entry(&id, batch)? {
                Some(entry) => batch.put(
                    Namespace::Referrals,
                    &k,
                    &records::encode_list_entry(&entry),
                ),
                None => batch.delete(Namespace::Referrals, &k),
            };
        }
        Ok(())
    }

    /// Applies a batch that may change referral records, together with the list summaries
    /// derived from them.
    pub(super) fn commit_referrals(&mut self, mut batch: WriteBatch) -> Result<(), EngineError> {
        self.stage_list_entries(&mut batch)?;
        self.store.apply_batch(batch)?;
        Ok(())
    }

    /// The receipt a sent referral's offer names (in this organisation's registry).
    fn original_receipt(
        &self,
        registry: &ReceiptRegistry,
        r: &SenderReferral,
    ) -> Result<Option<SignedReceipt>, EngineError> {
        let own = self.certificate()?.org_root_key();
        Ok(r.offer()
            .consent
            .as_ref()
            .and_then(|c| match &c.basis {
                Some(wire::consent_ref::Basis::Receipt(rr)) => {
                    ReceiptId::from_slice(&rr.receipt_id)
                }
                _ => None,
            })
            .and_then(|rid| registry.get(&own, &rid).cloned()))
    }

    /// Whether it is this device's turn to take the sending organisation's automatic steps on
    /// a sent referral (release after ACCEPTED, expiry): this device holds the case, or the
    /// device that holds it is no longer an active caseworker or admin device of the
    /// organisation (docs/PROTOCOL.md §11.9).
    fn holds_turn(
        &self,
        r: &SenderReferral,
        team: &[TeamStep],
        now: u64,
    ) -> Result<bool, EngineError> {
        let Some(signer) = r.offer_signer() else {
            return Ok(true);
        };
        let holder = assignee(signer, team);
        if holder == self.device_id()? {
            return Ok(true);
        }
        Ok(self
            .case_devices(&self.org_root()?, &[holder], now)?
            .is_empty())
    }

    /// The sent referral as shared with colleague devices.
    fn shared_case(&self, r: &SenderReferral) -> Result<wire::SenderCase, EngineError> {
        let id = r.id();
        let registry = self.load_registry()?;
        let peers = self.load_peers(&id)?;
        let confirmed: Vec<DeviceId> = self.load_confirmed(&id)?.into_iter().collect();
        let team = self.load_team(&id)?;
        let pending = self
            .store
            .get(Namespace::Referrals, &key(PREFIX_RELEASE, id.as_bytes()))?
            .is_some()
            && !released(&team);
        Ok(r.to_shared(
            self.original_receipt(&registry, r)?.as_ref(),
            &peers.devices,
            &confirmed,
            &team,
            pending,
        ))
    }

    fn shared_key(id: &ReferralId, device: DeviceId) -> Vec<u8> {
        let mut k = key(PREFIX_SHARED, id.as_bytes());
        k.extend_from_slice(&device.0);
        k
    }

    fn stage_record(&self, batch: &mut WriteBatch, record: &Record) {
        let (prefix, id, bytes, timeline) = match record {
            Record::Sent(r) => (
                PREFIX_SENT,
                r.id(),
                r.to_bytes(),
                r.timeline().export_json(),
            ),
            Record::Received(r) => (
                PREFIX_RECEIVED,
                r.id(),
                r.to_bytes(),
                r.timeline().export_json(),
            ),
        };
        batch.put(Namespace::Referrals, &key(prefix, id.as_bytes()), &bytes);
        batch.put(
            Namespace::Timeline,
            id.as_bytes(),
            timeline.to_string().as_bytes(),
        );
    }

    fn own_trust(&self) -> Result<&OrgTrust, EngineError> {
        self.org_trust(&self.org_root()?)
    }

    /// Whether this device can send to `device` now (address and session known).
    fn reachable(&self, device: PeerId) -> Result<bool, EngineError> {
        Ok(self
            .state()?
            .contacts
            .get(&device)
            .is_some_and(|c| c.address.is_some())
            && self.has_session(device)?)
    }

    /// Seals `body` to `to`, using (and updating) the session already advanced in this batch
    /// if there is one.
    fn stage_body(
        &self,
        batch: &mut WriteBatch,
        sessions: &mut Sessions,
        to: PeerId,
        body: Body,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<OutboxItem, EngineError> {
        let address = self.contact_address(to)?;
        let mut session = match sessions.0.remove(&to) {
            Some(s) => s,
            None => self.load_session(to)?.ok_or(EngineError::NoSession)?,
        };
        // Nothing is released unless the session and contact are the device its organisation
        // lists (docs/PROTOCOL.md §5.5).
        self.release_check(to, &session, now)?;
        let content = self.new_content(body, now, rng);
        let item = self.seal_to(&mut session, &address, to, &content, now, rng)?;
        self.stage_session(batch, to, &session);
        batch.put(Namespace::Outbox, &self.outbox_key(&item)?, &item.encode());
        sessions.0.insert(to, session);
        Ok(item)
    }

    /// Stages `body` to every device in `to` this device can reach; returns the outbox items.
    fn stage_to_all(
        &self,
        batch: &mut WriteBatch,
        sessions: &mut Sessions,
        to: &[PeerId],
        body: &Body,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<OutboxItem>, EngineError> {
        let mut items = Vec::new();
        for device in to {
            if self.reachable(*device)? {
                items.push(self.stage_body(batch, sessions, *device, body.clone(), now, rng)?);
            }
        }
        Ok(items)
    }

    /// Active devices of this device's own organisation other than itself that it can reach
    /// (colleagues who keep a copy of each received referral's timeline).
    fn colleagues(&self, now: u64) -> Result<Vec<PeerId>, EngineError> {
        let root = self.org_root()?;
        let mut out = Vec::new();
        for d in self.case_devices(&root, &self.org_devices(&root, now)?, now)? {
            let d = PeerId {
                org_root: root,
                device_id: d,
            };
            if self.reachable(d)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The devices among `devices` that may receive case content (docs/PROTOCOL.md §10.3):
    /// active on organisation `root`'s current device list with a role other than AMBASSADOR.
    /// A device whose role cannot be established that way receives nothing.
    fn case_devices(
        &self,
        root: &[u8; KEY_LEN],
        devices: &[DeviceId],
        now: u64,
    ) -> Result<Vec<DeviceId>, EngineError> {
        let allowed: BTreeSet<DeviceId> = self
            .org_trust(root)?
            .active_devices(now)
            .into_iter()
            .filter(|c| c.role() != Role::Ambassador)
            .map(|c| c.device_id())
            .collect();
        Ok(devices
            .iter()
            .copied()
            .filter(|d| allowed.contains(d))
            .collect())
    }

    /// [`case_devices`](Self::case_devices) of a counterpart's recorded devices, as peers.
    fn case_peers(&self, peers: &Peers, now: u64) -> Result<Vec<PeerId>, EngineError> {
        Ok(self
            .case_devices(&peers.root, &peers.devices, now)?
            .into_iter()
            .map(|device_id| PeerId {
                org_root: peers.root,
                device_id,
            })
            .collect())
    }

    /// The sending organisation's devices that follow a received referral: every active
    /// caseworker and admin device of it (and the device that sent the offer, while active).
    fn sender_team(&self, peers: &Peers, now: u64) -> Result<Vec<PeerId>, EngineError> {
        let mut devices: BTreeSet<DeviceId> = peers.devices.iter().copied().collect();
        devices.extend(self.org_devices(&peers.root, now)?);
        let devices: Vec<DeviceId> = devices.into_iter().collect();
        Ok(self
            .case_devices(&peers.root, &devices, now)?
            .into_iter()
            .map(|device_id| PeerId {
                org_root: peers.root,
                device_id,
            })
            .collect())
    }

    // -----------------------------------------------------------------------------------------
    // Consent.

    /// Records consent given now (REQUESTED → GIVEN): signs the draft receipt with this
    /// device (caseworker or admin; `state`, `event_time` and `supersedes` are set here) and
    /// stores it in the receipt registry. Returns the signed receipt.
    pub fn record_consent(
        &mut self,
        draft: wire::ConsentReceipt,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<SignedReceipt, EngineError> {
        let given = Consent::Requested
            .apply(
                ConsentEvent::Give(Box::new(draft)),
                &self.actor()?,
                now,
                rng,
            )
            .map_err(|(_, e)| e)?;
        let receipt = given.current().cloned().ok_or(EngineError::CorruptState)?;
        let mut registry = self.load_registry()?;
        registry.insert(receipt.clone())?;
        self.store
            .put(Namespace::Consent, KEY_REGISTRY, &registry.to_bytes())?;
        Ok(receipt)
    }

    /// A consent receipt this organisation recorded (receipts are known by organisation and
    /// id, docs/PROTOCOL.md §12.2).
    pub fn consent_receipt(&self, id: &ReceiptId) -> Result<Option<SignedReceipt>, EngineError> {
        let own = self.certificate()?.org_root_key();
        Ok(self.load_registry()?.get(&own, id).cloned())
    }

    /// Every consent receipt this organisation recorded that this device holds (its own and
    /// those shared by colleague devices), ordered by receipt id; superseded receipts are
    /// listed too (each names what it supersedes).
    pub fn consent_receipts(&self) -> Result<Vec<SignedReceipt>, EngineError> {
        let own = self.certificate()?.org_root_key().to_bytes();
        Ok(self
            .load_registry()?
            .iter()
            .filter(|r| r.signer().org_root_key().to_bytes() == own)
            .cloned()
            .collect())
    }

    /// The newest receipt in the chain that starts at `id` (after renewals or a withdrawal).
    pub fn latest_consent_receipt(
        &self,
        id: &ReceiptId,
    ) -> Result<Option<SignedReceipt>, EngineError> {
        let own = self.certificate()?.org_root_key();
        Ok(self.load_registry()?.latest(&own, id).cloned())
    }

    /// The Kantara Consent Receipt v1.1 JSON export of a stored receipt.
    pub fn kantara_export(&self, id: &ReceiptId) -> Result<Value, EngineError> {
        let own = self.certificate()?.org_root_key();
        let registry = self.load_registry()?;
        let receipt = registry
            .get(&own, id)
            .ok_or(EngineError::InvalidInput("no such consent receipt"))?;
        Ok(kantara_json(receipt))
    }

    /// The survivor's copy of a stored receipt in `language` (docs/PROTOCOL.md §12.6), with
    /// the person's preferred name and term. If `case_ref` is given, every referral sent from
    /// this device under that case reference without consent (an override) is listed too, so
    /// the person learns of it.
    pub fn survivor_copy(
        &self,
        id: &ReceiptId,
        language: Language,
        preferred_name: Option<&str>,
        preferred_term: PreferredTerm,
        case_ref: Option<&str>,
    ) -> Result<String, EngineError> {
        let own = self.certificate()?.org_root_key();
        let registry = self.load_registry()?;
        let receipt = registry
            .get(&own, id)
            .ok_or(EngineError::InvalidInput("no such consent receipt"))?;
        let mut overrides = Vec::new();
        if let Some(case_ref) = case_ref {
            for k in self
                .store
                .keys_with_prefix(Namespace::Referrals, PREFIX_SENT)?
            {
                let Some(rid) = k.get(PREFIX_SENT.len()..).and_then(ReferralId::from_slice) else {
                    continue;
                };
                if let Some(Record::Sent(r)) = self.load_record(&rid)?
                    && r.offer().sender_case_ref == case_ref
                    && let Some(notice) = OverrideNotice::from_offer(r.offer())
                {
                    overrides.push(notice);
                }
            }
        }
        Ok(render_survivor_copy(&SurvivorCopy {
            receipt,
            language,
            preferred_name,
            preferred_term,
            overrides: &overrides,
        }))
    }

    /// Changes consent (`state`: withdrawn, expired, invalidated or renewed): signs the
    /// superseding receipt, and sends CONSENT_CHANGED for every referral in the disclosure
    /// ledger that relied on the old receipt to every device it went to; on a revocation each
    /// recipient is marked pending until it confirms erasure ([`Engine::purge_status`]).
    /// Returns the new receipt and the outbox items.
    pub fn change_consent(
        &mut self,
        id: &ReceiptId,
        state: wire::ConsentState,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(SignedReceipt, Vec<OutboxItem>), EngineError> {
        let own = self.certificate()?.org_root_key();
        let mut registry = self.load_registry()?;
        let old = registry
            .latest(&own, id)
            .cloned()
            .ok_or(EngineError::InvalidInput("no such consent receipt"))?;
        let actor = self.actor()?;
        let new = old.supersede(state, now, &actor, rng, |_| {})?;
        let mut ledger = self.load_ledger()?;
        let mut referrals = BTreeMap::new();
        for d in ledger.disclosures(&old.id()) {
            if let Some(Record::Sent(r)) = self.load_record(&d.referral_id)? {
                referrals.insert(d.referral_id, *r);
            }
        }
        let controls = fan_out_consent_change(&new, &mut ledger, &mut referrals, &actor, now)?;
        registry.insert(new.clone())?;
        let mut batch = WriteBatch::new();
        let mut sessions = Sessions::default();
        let mut items = Vec::new();
        // Colleague devices keep the same registry and follow the same referrals.
        let colleagues = self.colleagues(now)?;
        let body = Body::ConsentReceipt(new.signed().clone());
        items.extend(self.stage_to_all(&mut batch, &mut sessions, &colleagues, &body, now, rng)?);
        for c in &colleagues {
            batch.put(
                Namespace::Consent,
                &receipt_shared_key(&new.id(), c.device_id),
                &[],
            );
        }
        let revoking = !matches!(
            new.state(),
            wire::ConsentState::Renewed | wire::ConsentState::Given
        );
        for (rid, signed) in controls {
            if revoking {
                batch.delete(Namespace::Referrals, &key(PREFIX_RELEASE, rid.as_bytes()));
            }
            let peers = self.load_peers(&rid)?;
            let mut targets = self.case_peers(&peers, now)?;
            targets.extend(colleagues.iter().copied());
            let body = Body::ReferralControl(signed);
            items.extend(self.stage_to_all(
                &mut batch,
                &mut sessions,
                &targets,
                &body,
                now,
                rng,
            )?);
        }
        for (_, r) in referrals {
            self.stage_record(&mut batch, &Record::Sent(Box::new(r)));
        }
        batch.put(Namespace::Consent, KEY_REGISTRY, &registry.to_bytes());
        batch.put(Namespace::Consent, KEY_LEDGER, &ledger.to_bytes());
        self.commit_referrals(batch)?;
        Ok((new, items))
    }

    /// Receipt `id` and every receipt it superseded, newest first: disclosures are recorded
    /// under the receipt the offer relied on.
    fn receipt_chain(&self, id: &ReceiptId) -> Result<Vec<ReceiptId>, EngineError> {
        let own = self.certificate()?.org_root_key();
        let registry = self.load_registry()?;
        let mut ids = vec![*id];
        let mut current = registry.get(&own, id).and_then(SignedReceipt::supersedes);
        while let Some(prev) = current {
            if ids.contains(&prev) {
                break;
            }
            ids.push(prev);
            current = registry
                .get(&own, &prev)
                .and_then(SignedReceipt::supersedes);
        }
        Ok(ids)
    }

    /// Whether some device that received data under receipt `id` (or a receipt it
    /// superseded) was asked to erase it and has not confirmed: whether some
    /// [`purge_status`](Self::purge_status) report has a `pending` device, reading only the
    /// referrals whose erasure was requested.
    pub fn erasure_pending(&self, id: &ReceiptId) -> Result<bool, EngineError> {
        let ledger = self.load_ledger()?;
        for rid in self.receipt_chain(id)? {
            for d in ledger.disclosures(&rid) {
                if matches!(d.purge, PurgeStatus::NotRequested) {
                    continue;
                }
                let confirmed = self.load_confirmed(&d.referral_id)?;
                if self
                    .load_peers(&d.referral_id)?
                    .devices
                    .iter()
                    .any(|dev| !confirmed.contains(dev))
                {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Erasure status of every recipient of data under receipt `id` (or any receipt it
    /// superseded): per referral, the devices that confirmed and those still pending.
    pub fn purge_status(&self, id: &ReceiptId) -> Result<Vec<PurgeReport>, EngineError> {
        let ledger = self.load_ledger()?;
        let mut out = Vec::new();
        for rid in self.receipt_chain(id)? {
            for d in ledger.disclosures(&rid) {
                let confirmed = self.load_confirmed(&d.referral_id)?;
                let requested = !matches!(d.purge, PurgeStatus::NotRequested);
                let pending = if requested {
                    self.load_peers(&d.referral_id)?
                        .devices
                        .into_iter()
                        .filter(|dev| !confirmed.contains(dev))
                        .collect()
                } else {
                    Vec::new()
                };
                out.push(PurgeReport {
                    referral: d.referral_id,
                    recipient: d.recipient,
                    status: d.purge.clone(),
                    confirmed: confirmed.into_iter().collect(),
                    pending,
                });
            }
        }
        Ok(out)
    }

    // -----------------------------------------------------------------------------------------
    // Sending side.

    /// Prepares a referral (DRAFT → READY: required fields, no identifiers in the offer, the
    /// consent gate, one key per sealed section) and sends it (READY → SENT) to every active
    /// device of the receiving organisation (`draft.to.org_root_key`) that this device has a
    /// session with: first the consent receipt, then the signed offer. Records the disclosure
    /// in the ledger. Nothing is stored or sent on any refusal.
    pub fn send_referral_offer(
        &mut self,
        draft: &OfferDraft,
        sections: &[wire::BodySection],
        consent: &OfferConsent,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(ReferralId, Vec<OutboxItem>), EngineError> {
        let to_root = root_of(&draft.to.org_root_key)?;
        let registry = self.load_registry()?;
        let mut ledger = self.load_ledger()?;
        // Never to an ambassador device: the receipt, the offer and every later step are case
        // content (docs/PROTOCOL.md §10.3).
        let devices: Vec<DeviceId> = self
            .case_devices(&to_root, &self.org_devices(&to_root, now)?, now)?
            .into_iter()
            .filter(|d| {
                self.reachable(PeerId {
                    org_root: to_root,
                    device_id: *d,
                })
                .unwrap_or(false)
            })
            .collect();
        let targets: Vec<PeerId> = devices
            .iter()
            .map(|d| PeerId {
                org_root: to_root,
                device_id: *d,
            })
            .collect();
        if devices.is_empty() {
            return Err(EngineError::NoSession);
        }
        let actor = self.actor()?;
        let own = self.own_trust()?;
        let signed_receipt;
        let input = match consent {
            OfferConsent::Receipt(id) => {
                signed_receipt = registry
                    .latest(&actor.certificate().org_root_key(), id)
                    .ok_or(EngineError::InvalidInput("no such consent receipt"))?
                    .signed()
                    .clone();
                ConsentInput::Receipt(&signed_receipt)
            }
            OfferConsent::Override(o) => ConsentInput::Override(o),
        };
        let mut referral =
            SenderReferral::prepare(draft, sections, input, own, &registry, &actor, now, rng)?;
        let (offer, receipt) = referral.mark_sent(&actor, &mut ledger)?;
        let id = referral.id();
        let mut batch = WriteBatch::new();
        let mut sessions = Sessions::default();
        let mut items = Vec::new();
        if let Some(receipt) = receipt {
            let body = Body::ConsentReceipt(receipt);
            items.extend(self.stage_to_all(
                &mut batch,
                &mut sessions,
                &targets,
                &body,
                now,
                rng,
            )?);
        }
        let body = Body::SignedReferralOffer(offer);
        items.extend(self.stage_to_all(&mut batch, &mut sessions, &targets, &body, now, rng)?);
        // The organisation owns the case: every colleague caseworker and admin device gets the
        // record (docs/PROTOCOL.md §11.9).
        let colleagues = self.colleagues(now)?;
        if !colleagues.is_empty() {
            let shared = referral.to_shared(referral.receipt(), &devices, &[], &[], false);
            let body = Body::SenderCase(shared);
            items.extend(self.stage_to_all(
                &mut batch,
                &mut sessions,
                &colleagues,
                &body,
                now,
                rng,
            )?);
            for c in &colleagues {
                batch.put(
                    Namespace::Referrals,
                    &Self::shared_key(&id, c.device_id),
                    &[],
                );
                if let Some(r) = referral.receipt() {
                    batch.put(
                        Namespace::Consent,
                        &receipt_shared_key(&r.id(), c.device_id),
                        &[],
                    );
                }
            }
        }
        self.stage_record(&mut batch, &Record::Sent(Box::new(referral)));
        let peers = Peers {
            root: to_root,
            devices,
        };
        batch.put(
            Namespace::Referrals,
            &key(PREFIX_PEERS, id.as_bytes()),
            &peers.encode(),
        );
        batch.put(Namespace::Consent, KEY_LEDGER, &ledger.to_bytes());
        self.commit_referrals(batch)?;
        Ok((id, items))
    }

    /// Releases the body of an ACCEPTED (or IN_SERVICE) referral to every non-ambassador
    /// device of the receiving organisation the offer went to (ambassador devices never get
    /// it), after re-running the consent gate; records the released sections in the ledger.
    pub fn release_referral_body(
        &mut self,
        id: &ReferralId,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<OutboxItem>, EngineError> {
        let Some(Record::Sent(referral)) = self.load_record(id)? else {
            return Err(EngineError::InvalidInput("no such sent referral"));
        };
        let mut team = self.load_team(id)?;
        if released(&team) {
            return Err(ReferralError::AlreadyReleased {
                referral: id.short(),
            }
            .into());
        }
        let peers = self.load_peers(id)?;
        let registry = self.load_registry()?;
        let mut ledger = self.load_ledger()?;
        let certs: Vec<DeviceCertificate> = self
            .org_trust(&peers.root)?
            .active_devices(now)
            .into_iter()
            .filter(|c| peers.devices.contains(&c.device_id()) && c.role() != Role::Ambassador)
            .collect();
        let mut batch = WriteBatch::new();
        let mut sessions = Sessions::default();
        let mut items = Vec::new();
        for cert in certs {
            let device = PeerId::of(&cert);
            if !self.reachable(device)? {
                continue;
            }
            let body = referral.release_body(&cert, &registry, &mut ledger, now)?;
            items.push(self.stage_body(
                &mut batch,
                &mut sessions,
                device,
                Body::ReferralBody(body),
                now,
                rng,
            )?);
        }
        if items.is_empty() {
            return Err(EngineError::NoSession);
        }
        // The release claim: colleague devices record who released and release nothing.
        let step = TeamStep::sign(id, TeamAction::Released, &self.actor()?, now)?;
        let body = Body::TeamStep(step.signed().clone());
        team.push(step);
        self.stage_team(&mut batch, id, &team);
        let colleagues = self.colleagues(now)?;
        items.extend(self.stage_to_all(&mut batch, &mut sessions, &colleagues, &body, now, rng)?);
        batch.put(Namespace::Consent, KEY_LEDGER, &ledger.to_bytes());
        batch.delete(Namespace::Referrals, &key(PREFIX_RELEASE, id.as_bytes()));
        self.commit_referrals(batch)?;
        Ok(items)
    }

    /// Hands a sent referral to another caseworker or admin device of this organisation (or
    /// takes it, `to` = this device): signs a team step and sends it to every colleague device.
    /// The assignee releases the body at once after ACCEPTED; other devices wait
    /// [`RELEASE_HANDOFF_SECS`] ([`Engine::due_releases`]).
    pub fn reassign_referral(
        &mut self,
        id: &ReferralId,
        to: DeviceId,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<OutboxItem>, EngineError> {
        let Some(Record::Sent(referral)) = self.load_record(id)? else {
            return Err(EngineError::InvalidInput("no such sent referral"));
        };
        let own = self.org_root()?;
        if to != self.device_id()? && self.case_devices(&own, &[to], now)?.is_empty() {
            return Err(EngineError::InvalidInput(
                "the new assignee is not an active caseworker or admin device of this organisation",
            ));
        }
        let step = TeamStep::sign(
            id,
            TeamAction::Reassigned { assignee: to },
            &self.actor()?,
            now,
        )?;
        if !referral.team_step_allowed(&step) {
            return Err(EngineError::InvalidInput(
                "the referral cannot be reassigned now",
            ));
        }
        let mut team = self.load_team(id)?;
        let body = Body::TeamStep(step.signed().clone());
        team.push(step);
        let mut batch = WriteBatch::new();
        let mut sessions = Sessions::default();
        self.stage_team(&mut batch, id, &team);
        let colleagues = self.colleagues(now)?;
        let items = self.stage_to_all(&mut batch, &mut sessions, &colleagues, &body, now, rng)?;
        self.commit_referrals(batch)?;
        Ok(items)
    }

    /// Shares every open sent referral (not ended, before `retain_until`) and every consent
    /// receipt of this organisation with each reachable colleague caseworker or admin device
    /// that does not have it yet: a device enrolled later catches up on the organisation's
    /// cases (docs/PROTOCOL.md §11.9). Ambassador devices get nothing. Returns the outbox
    /// items (none when every colleague is up to date).
    pub fn share_cases(
        &mut self,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<OutboxItem>, EngineError> {
        let colleagues = self.colleagues(now)?;
        if colleagues.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = WriteBatch::new();
        let mut sessions = Sessions::default();
        let mut items = Vec::new();
        let registry = self.load_registry()?;
        let own = self.certificate()?.org_root_key().to_bytes();
        for receipt in registry.iter() {
            if receipt.signer().org_root_key().to_bytes() != own {
                continue;
            }
            for c in &colleagues {
                let k = receipt_shared_key(&receipt.id(), c.device_id);
                if self.store.get(Namespace::Consent, &k)?.is_some() {
                    continue;
                }
                let body = Body::ConsentReceipt(receipt.signed().clone());
                items.push(self.stage_body(&mut batch, &mut sessions, *c, body, now, rng)?);
                batch.put(Namespace::Consent, &k, &[]);
            }
        }
        for k in self
            .store
            .keys_with_prefix(Namespace::Referrals, PREFIX_SENT)?
        {
            let Some(rid) = k.get(PREFIX_SENT.len()..).and_then(ReferralId::from_slice) else {
                continue;
            };
            let Some(Record::Sent(r)) = self.load_record(&rid)? else {
                continue;
            };
            if !shareable(&r, now) {
                continue;
            }
            let mut shared = None;
            for c in &colleagues {
                let k = Self::shared_key(&rid, c.device_id);
                if self.store.get(Namespace::Referrals, &k)?.is_some() {
                    continue;
                }
                let case = match &shared {
                    Some(case) => Clone::clone(case),
                    None => {
                        let case = self.shared_case(&r)?;
                        shared = Some(case.clone());
                        case
                    }
                };
                items.push(self.stage_body(
                    &mut batch,
                    &mut sessions,
                    *c,
                    Body::SenderCase(case),
                    now,
                    rng,
                )?);
                batch.put(Namespace::Referrals, &k, &[]);
            }
        }
        self.commit_referrals(batch)?;
        Ok(items)
    }

    /// Sent referrals the receiver accepted whose body has not been released yet (the
    /// [`ReferralEvent::ReleaseBody`] events, kept durably: an application that crashed or
    /// was offline between ACCEPTED and the release finds them here). Release each with
    /// [`release_referral_body`](Self::release_referral_body). A referral that has left
    /// ACCEPTED / IN_SERVICE meanwhile (withdrawn, consent revoked, expired) is not listed.
    pub fn pending_releases(&self) -> Result<Vec<ReferralId>, EngineError> {
        let mut out = Vec::new();
        for k in self
            .store
            .keys_with_prefix(Namespace::Referrals, PREFIX_RELEASE)?
        {
            let Some(id) = k
                .get(PREFIX_RELEASE.len()..)
                .and_then(ReferralId::from_slice)
            else {
                continue;
            };
            if let Some(Record::Sent(r)) = self.load_record(&id)?
                && matches!(
                    r.state(),
                    ReferralState::Accepted | ReferralState::InService
                )
                && !released(&self.load_team(&id)?)
            {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// The [`pending_releases`](Self::pending_releases) this device should release now
    /// (docs/PROTOCOL.md §11.9): those whose case it holds, those whose holder is no longer an
    /// active caseworker or admin device of the organisation, and any other once
    /// [`RELEASE_HANDOFF_SECS`] have passed since ACCEPTED arrived here. A colleague's release
    /// claim removes a referral from the list; the receiving devices apply one body only.
    pub fn due_releases(&self, now: u64) -> Result<Vec<ReferralId>, EngineError> {
        let mut out = Vec::new();
        for id in self.pending_releases()? {
            let Some(Record::Sent(r)) = self.load_record(&id)? else {
                continue;
            };
            let team = self.load_team(&id)?;
            let since = self
                .store
                .get(Namespace::Referrals, &key(PREFIX_RELEASE, id.as_bytes()))?
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(0, u64::from_be_bytes);
            if self.holds_turn(&r, &team, now)? || now >= since.saturating_add(RELEASE_HANDOFF_SECS)
            {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Takes a lifecycle step on a referral of either side and sends the signed control: a
    /// sender step (provide info, withdraw) to every receiving device; a receiver step
    /// (acknowledge, accept, decline, request info, start service, update, complete) to the
    /// sending device and to this organisation's other reachable devices, which keep the same
    /// timeline. On the receiving side [`Action::Acknowledge`] from SENT first records
    /// DELIVERED (two controls). Refusals change nothing. Returns the new state and the
    /// outbox items.
    pub fn referral_act(
        &mut self,
        id: &ReferralId,
        action: Action,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(ReferralState, Vec<OutboxItem>), EngineError> {
        let mut record = self
            .load_record(id)?
            .ok_or(EngineError::InvalidInput("no such referral"))?;
        let peers = self.load_peers(id)?;
        let actor = self.actor()?;
        let mut controls = Vec::new();
        let mut ledger = None;
        let mut release_cancelled = false;
        let (state, targets) = match &mut record {
            Record::Sent(r) => {
                let withdraw = matches!(action, Action::Withdraw { .. });
                controls.push(r.act(action, &actor, now)?);
                if withdraw {
                    let mut l = self.load_ledger()?;
                    l.mark_pending(id, now);
                    ledger = Some(l);
                    release_cancelled = true;
                }
                let mut targets = self.case_peers(&peers, now)?;
                targets.extend(self.colleagues(now)?);
                (r.state().clone(), targets)
            }
            Record::Received(r) => {
                if matches!(action, Action::Acknowledge) && r.state() == &ReferralState::Sent {
                    controls.push(r.act(Action::Delivered, &actor, now)?);
                }
                controls.push(r.act(action, &actor, now)?);
                let mut targets = self.sender_team(&peers, now)?;
                targets.extend(self.colleagues(now)?);
                (r.state().clone(), targets)
            }
        };
        let mut batch = WriteBatch::new();
        let mut sessions = Sessions::default();
        let mut items = Vec::new();
        for signed in controls {
            let body = Body::ReferralControl(signed);
            items.extend(self.stage_to_all(
                &mut batch,
                &mut sessions,
                &targets,
                &body,
                now,
                rng,
            )?);
        }
        self.stage_record(&mut batch, &record);
        if let Some(l) = ledger {
            batch.put(Namespace::Consent, KEY_LEDGER, &l.to_bytes());
        }
        if release_cancelled {
            batch.delete(Namespace::Referrals, &key(PREFIX_RELEASE, id.as_bytes()));
        }
        self.commit_referrals(batch)?;
        Ok((state, items))
    }

    /// Applies referral expiry at `now` on every record: offers past `offer_expires_at` expire
    /// on both sides (the sender sends its signed EXPIRED), bodies past `retain_until` are
    /// erased on the receiving side with a PURGE_CONFIRMED to the sender; erased content and
    /// section keys leave the store in the same batch. Returns what happened (also queued for
    /// [`Engine::take_referral_events`]) and the outbox items.
    pub fn sweep_referrals(
        &mut self,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(Vec<ReferralEvent>, Vec<OutboxItem>), EngineError> {
        let mut ids = Vec::new();
        for prefix in [PREFIX_SENT, PREFIX_RECEIVED] {
            for k in self.store.keys_with_prefix(Namespace::Referrals, prefix)? {
                if let Some(id) = k.get(prefix.len()..).and_then(ReferralId::from_slice) {
                    ids.push(id);
                }
            }
        }
        let actor = self.actor()?;
        let mut batch = WriteBatch::new();
        let mut sessions = Sessions::default();
        let mut items = Vec::new();
        let mut events = Vec::new();
        for id in ids {
            let Some(mut record) = self.load_record(&id)? else {
                continue;
            };
            let peers = self.load_peers(&id)?;
            // A record shared by a colleague whose receiving organisation this device does not
            // trust yet cannot move here.
            if self.org_trust(&peers.root).is_err() {
                continue;
            }
            // On the sending side one device signs EXPIRED: the one whose turn it is (any
            // other only RELEASE_HANDOFF_SECS after the offer expired); the others apply its
            // control.
            if let Record::Sent(r) = &record
                && now
                    < r.core
                        .meta
                        .offer_expires_at
                        .saturating_add(RELEASE_HANDOFF_SECS)
                && !self.holds_turn(r, &self.load_team(&id)?, now)?
            {
                continue;
            }
            let ticked = match &mut record {
                Record::Sent(r) => r.tick(&actor, now).map(|e| match e {
                    Some(
                        SenderEvent::ExpiredUndelivered(signed)
                        | SenderEvent::ExpiredUnanswered(signed),
                    ) => (true, Some(signed)),
                    _ => (false, None),
                }),
                Record::Received(r) => r.tick(&actor, now).map(|e| match e {
                    Some(ReceiverEvent::Purged { confirmation, .. })
                    | Some(ReceiverEvent::Retained { confirmation }) => (true, Some(confirmation)),
                    Some(_) => (true, None),
                    None => (false, None),
                }),
            };
            // One record that cannot move (for example an ambassador device may not sign the
            // step) must not stop the others; it is reported and left as it was.
            let (changed, send) = match ticked {
                Ok(t) => t,
                Err(error) => {
                    events.push(ReferralEvent::Refused {
                        referral: Some(id),
                        error,
                    });
                    continue;
                }
            };
            if !changed {
                continue;
            }
            if let Some(signed) = send {
                let targets = match &record {
                    Record::Sent(_) => {
                        let mut t = self.case_peers(&peers, now)?;
                        t.extend(self.colleagues(now)?);
                        t
                    }
                    Record::Received(_) => self.sender_team(&peers, now)?,
                };
                let body = Body::ReferralControl(signed);
                items.extend(self.stage_to_all(
                    &mut batch,
                    &mut sessions,
                    &targets,
                    &body,
                    now,
                    rng,
                )?);
            }
            let state = match &record {
                Record::Sent(r) => r.state().name(),
                Record::Received(r) => r.state().name(),
            };
            self.stage_record(&mut batch, &record);
            events.push(ReferralEvent::StateChanged {
                referral: id,
                state,
            });
            events.push(ReferralEvent::Erased { referral: id });
        }
        self.commit_referrals(batch)?;
        self.referral_events.extend(events.iter().cloned());
        Ok((events, items))
    }

    // -----------------------------------------------------------------------------------------
    // Reading.

    /// Every referral on this device (sent and received) with its state and timeline.
    pub fn referrals(&self) -> Result<Vec<ReferralSummary>, EngineError> {
        let mut out = Vec::new();
        for prefix in [PREFIX_SENT, PREFIX_RECEIVED] {
            for k in self.store.keys_with_prefix(Namespace::Referrals, prefix)? {
                let Some(id) = k.get(prefix.len()..).and_then(ReferralId::from_slice) else {
                    continue;
                };
                if let Some(s) = self.referral(&id)? {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// Every referral on this device (sent and received) as a list shows it, in referral id
    /// order: one small summary record per referral, so the list costs one short read per
    /// referral whatever the size of its record and timeline. A summary that is missing or
    /// unreadable (a profile written before summaries existed) is rebuilt from the referral's
    /// records and stored.
    pub fn referral_list(&mut self) -> Result<Vec<ReferralListEntry>, EngineError> {
        let own = self.device_id()?;
        let mut out = Vec::new();
        let mut rebuilt = WriteBatch::new();
        let none = WriteBatch::new();
        for prefix in [PREFIX_SENT, PREFIX_RECEIVED] {
            for k in self.store.keys_with_prefix(Namespace::Referrals, prefix)? {
                let Some(id) = k.get(prefix.len()..).and_then(ReferralId::from_slice) else {
                    continue;
                };
                let list_key = key(PREFIX_LIST, id.as_bytes());
                let stored = self
                    .store
                    .get(Namespace::Referrals, &list_key)?
                    .and_then(|b| records::decode_list_entry(id, &b, own).ok());
                if let Some(entry) = stored {
                    out.push(entry);
                } else if let Some(entry) = self.derive_list_entry(&id, &none)? {
                    rebuilt.put(
                        Namespace::Referrals,
                        &list_key,
                        &records::encode_list_entry(&entry),
                    );
                    out.push(entry);
                }
            }
        }
        if !rebuilt.is_empty() {
            self.store.apply_batch(rebuilt)?;
        }
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    /// One referral with its state and timeline.
    pub fn referral(&self, id: &ReferralId) -> Result<Option<ReferralSummary>, EngineError> {
        let Some(record) = self.load_record(id)? else {
            return Ok(None);
        };
        let counterpart = self.load_peers(id)?.root;
        Ok(Some(match record {
            Record::Sent(r) => {
                let team = self.load_team(id)?;
                let holder = r.offer_signer().map(|signer| assignee(signer, &team));
                ReferralSummary {
                    id: *id,
                    side: Side::Sender,
                    state: r.state().clone(),
                    counterpart,
                    timeline: r.timeline().export_json(),
                    assignee: holder,
                    mine: holder == Some(self.device_id()?),
                    team,
                }
            }
            Record::Received(r) => ReferralSummary {
                id: *id,
                side: Side::Receiver,
                state: r.state().clone(),
                counterpart,
                timeline: r.timeline().export_json(),
                assignee: None,
                mine: false,
                team: Vec::new(),
            },
        }))
    }

    /// A referral's offer: the receiver's copy (until erased) or the sender's own.
    pub fn received_offer(
        &self,
        id: &ReferralId,
    ) -> Result<Option<wire::ReferralOffer>, EngineError> {
        match self.load_record(id)? {
            Some(Record::Received(r)) => Ok(r.offer().cloned()),
            Some(Record::Sent(r)) => Ok(Some(r.offer().clone())),
            None => Ok(None),
        }
    }

    /// A received body section (until erased). Never available on ambassador devices, which
    /// never receive bodies.
    pub fn received_section(
        &self,
        id: &ReferralId,
        section: wire::Section,
    ) -> Result<Option<wire::BodySection>, EngineError> {
        match self.load_record(id)? {
            Some(Record::Received(r)) => Ok(r.section(section).transpose()?),
            _ => Ok(None),
        }
    }

    /// Referral events since the last call (offers received, state changes, bodies, purge
    /// confirmations, refusals), oldest first. Held in memory only: after a restart read the
    /// records ([`Engine::referrals`]).
    pub fn take_referral_events(&mut self) -> Vec<ReferralEvent> {
        std::mem::take(&mut self.referral_events)
    }

    // -----------------------------------------------------------------------------------------
    // Receiving (called from `receive`, inside its batch).

    /// Applies referral or consent content from `from` (a verified device of the trusted
    /// organisation `from_root`) to the records, staging every change and every answer
    /// (PURGE_CONFIRMED) in `batch`. `sessions` holds the session with `from` as advanced by
    /// this very message. Refusals are events; only store errors are errors.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stage_referral_content(
        &self,
        body: &Body,
        from: DeviceId,
        from_root: &[u8; KEY_LEN],
        batch: &mut WriteBatch,
        session_with_sender: &Session,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<ReferralEvent>, EngineError> {
        let mut sessions = Sessions::default();
        sessions.0.insert(
            PeerId {
                org_root: *from_root,
                device_id: from,
            },
            copy_session(session_with_sender)?,
        );
        let refused = |referral, error| Ok(vec![ReferralEvent::Refused { referral, error }]);
        // An ambassador device takes no part in referrals: it applies none of their content
        // (the message log keeps only a redacted copy, see `redact`).
        if self.certificate()?.role() == Role::Ambassador {
            return match body {
                Body::ReferralBody(b) => refused(
                    ReferralId::from_slice(&b.referral_id),
                    ReferralError::AmbassadorCannotReceiveBody,
                ),
                Body::ConsentReceipt(_)
                | Body::SignedReferralOffer(_)
                | Body::ReferralControl(_)
                | Body::SenderCase(_)
                | Body::TeamStep(_) => refused(None, ReferralError::AmbassadorCannotReceiveCase),
                _ => Ok(Vec::new()),
            };
        }
        match body {
            Body::ConsentReceipt(signed) => {
                // A colleague device shares this organisation's kept receipts (possibly signed
                // by a device revoked since): checked as recorded history. Another
                // organisation's receipt is checked live.
                let verified = if from_root == &self.org_root()? {
                    SignedReceipt::verify_recorded(signed, self.own_trust()?)
                } else {
                    SignedReceipt::verify(signed, self.org_trust(from_root)?, now)
                };
                let receipt = match verified {
                    Ok(r) => r,
                    Err(e) => return refused(None, ReferralError::Receipt(e)),
                };
                let mut registry = self.load_registry()?;
                let id = receipt.id();
                // Keyed by (organisation, id): another organisation's receipt can neither
                // replace nor supersede this one; a conflicting receipt is refused.
                if let Err(e) = registry.insert(receipt) {
                    return refused(None, ReferralError::Receipt(e));
                }
                batch.put(Namespace::Consent, KEY_REGISTRY, &registry.to_bytes());
                if from_root == &self.org_root()? {
                    // The colleague has it: never shared back.
                    batch.put(Namespace::Consent, &receipt_shared_key(&id, from), &[]);
                }
                Ok(vec![ReferralEvent::ConsentReceiptReceived { receipt: id }])
            }
            Body::SignedReferralOffer(signed) => {
                let registry = self.load_registry()?;
                let receipt = decode::referral_offer(&signed.offer)
                    .ok()
                    .and_then(|o| o.consent)
                    .and_then(|c| match c.basis {
                        Some(wire::consent_ref::Basis::Receipt(r)) => {
                            ReceiptId::from_slice(&r.receipt_id)
                        }
                        _ => None,
                    })
                    .and_then(|id| registry.get(&self.org_trust(from_root).ok()?.root(), &id))
                    .map(|r| r.signed().clone());
                let referral = match ReceiverReferral::receive_offer(
                    signed,
                    receipt.as_ref(),
                    self.org_trust(from_root)?,
                    self.certificate()?,
                    &registry,
                    now,
                ) {
                    Ok(r) => r,
                    Err(e) => return refused(None, e),
                };
                let id = referral.id();
                if self.load_record(&id)?.is_some() {
                    return refused(
                        Some(id),
                        ReferralError::Malformed {
                            what: "offer (already received)",
                        },
                    );
                }
                self.stage_record(batch, &Record::Received(Box::new(referral)));
                let peers = Peers {
                    root: *from_root,
                    devices: vec![from],
                };
                batch.put(
                    Namespace::Referrals,
                    &key(PREFIX_PEERS, id.as_bytes()),
                    &peers.encode(),
                );
                Ok(vec![ReferralEvent::OfferReceived { referral: id }])
            }
            Body::ReferralBody(released) => {
                let Some(id) = ReferralId::from_slice(&released.referral_id) else {
                    return refused(
                        None,
                        ReferralError::Malformed {
                            what: "referral body",
                        },
                    );
                };
                let Some(Record::Received(mut referral)) = self.load_record(&id)? else {
                    return refused(Some(id), ReferralError::WrongReferral);
                };
                // Released once: a second release (two devices of the sending organisation
                // raced) changes nothing and is not reported (docs/PROTOCOL.md §11.9).
                if referral.has_body() {
                    return Ok(Vec::new());
                }
                let peers = self.load_peers(&id)?;
                if &peers.root != from_root {
                    return refused(
                        Some(id),
                        ReferralError::UntrustedSigner {
                            what: "referral body",
                        },
                    );
                }
                let registry = self.load_registry()?;
                if let Err(e) = referral.receive_body(
                    released,
                    self.certificate()?,
                    self.org_trust(from_root)?,
                    &registry,
                    now,
                ) {
                    return refused(Some(id), e);
                }
                self.stage_record(batch, &Record::Received(referral));
                Ok(vec![ReferralEvent::BodyReceived { referral: id }])
            }
            Body::ReferralControl(signed) => {
                let Some(id) = decode::referral_control(&signed.control)
                    .ok()
                    .and_then(|c| ReferralId::from_slice(&c.referral_id))
                else {
                    return refused(
                        None,
                        ReferralError::Malformed {
                            what: "control message",
                        },
                    );
                };
                match self.load_record(&id)? {
                    Some(Record::Sent(referral)) => {
                        self.stage_sender_control(*referral, signed, batch, now)
                    }
                    Some(Record::Received(referral)) => self.stage_receiver_control(
                        *referral,
                        signed,
                        batch,
                        &mut sessions,
                        now,
                        rng,
                    ),
                    None => refused(Some(id), ReferralError::WrongReferral),
                }
            }
            Body::SenderCase(case) => self.stage_shared_case(case, from, from_root, batch, now),
            Body::TeamStep(signed) => self.stage_team_step(signed, from_root, batch, now),
            _ => Ok(Vec::new()),
        }
    }

    /// Applies a sent referral shared by a colleague device (docs/PROTOCOL.md §11.9).
    fn stage_shared_case(
        &self,
        case: &wire::SenderCase,
        from: DeviceId,
        from_root: &[u8; KEY_LEN],
        batch: &mut WriteBatch,
        now: u64,
    ) -> Result<Vec<ReferralEvent>, EngineError> {
        let refused = |referral, error| Ok(vec![ReferralEvent::Refused { referral, error }]);
        let what = "shared case";
        if from_root != &self.org_root()? {
            return refused(None, ReferralError::UntrustedSigner { what });
        }
        let Some(receiver_root) = case
            .offer
            .as_ref()
            .and_then(|o| decode::referral_offer(&o.offer).ok())
            .and_then(|o| o.to)
            .and_then(|p| <[u8; KEY_LEN]>::try_from(p.org_root_key.as_slice()).ok())
        else {
            return refused(None, ReferralError::Malformed { what });
        };
        // The receiving organisation's root comes from the offer a device of this
        // organisation signed; its steps are verified under that root. This device need not
        // trust that organisation yet: its envelopes wait at the relay until it does.
        let Ok(receiver) = crate::identity::OrgRootPublicKey::from_bytes(&receiver_root) else {
            return refused(None, ReferralError::Malformed { what });
        };
        let (referral, receipts) =
            match SenderReferral::from_shared(case, self.own_trust()?, &receiver) {
                Ok(r) => r,
                Err(e) => return refused(None, e),
            };
        let id = referral.id();
        match self.load_record(&id)? {
            Some(Record::Received(_)) => {
                return refused(Some(id), ReferralError::Malformed { what });
            }
            Some(Record::Sent(existing)) => {
                // Only a record that extends ours replaces it; an older copy changes nothing.
                let (old, new) = (existing.timeline().entries(), referral.timeline().entries());
                if new.len() <= old.len() || old.iter().zip(new).any(|(a, b)| a.hash() != b.hash())
                {
                    return Ok(Vec::new());
                }
            }
            None => {}
        }
        let mut team = Vec::new();
        for signed in &case.team {
            match TeamStep::verify(signed, &id, self.own_trust()?, None) {
                Ok(step) => team.push(step),
                Err(e) => return refused(Some(id), e),
            }
        }
        let mut registry = self.load_registry()?;
        for r in &receipts {
            if let Err(e) = registry.insert(r.clone()) {
                return refused(Some(id), ReferralError::Receipt(e));
            }
        }
        let mut ledger = self.load_ledger()?;
        if let Some(first) = receipts.first() {
            ledger.record_offer(first.id(), id, receiver_root, referral.offer().created_at);
        }
        if released(&team) {
            ledger.record_sections(&id, referral.offer().sections_included());
        }
        let devices =
            decode_ids(&case.recipient_devices.concat()).map_err(|_| EngineError::CorruptState);
        let confirmed = decode_ids(&case.confirmed_devices.concat());
        let (Ok(devices), Ok(confirmed)) = (devices, confirmed) else {
            return refused(Some(id), ReferralError::Malformed { what });
        };
        let peers = Peers {
            root: receiver_root,
            devices,
        };
        batch.put(
            Namespace::Referrals,
            &key(PREFIX_PEERS, id.as_bytes()),
            &peers.encode(),
        );
        batch.put(
            Namespace::Referrals,
            &key(PREFIX_CONFIRMED, id.as_bytes()),
            &encode_ids(&confirmed.into_iter().collect()),
        );
        self.stage_team(batch, &id, &team);
        let release_key = key(PREFIX_RELEASE, id.as_bytes());
        if case.release_pending
            && !released(&team)
            && matches!(
                referral.state(),
                ReferralState::Accepted | ReferralState::InService
            )
        {
            batch.put(Namespace::Referrals, &release_key, &now.to_be_bytes());
        } else {
            batch.delete(Namespace::Referrals, &release_key);
        }
        batch.put(Namespace::Consent, KEY_REGISTRY, &registry.to_bytes());
        batch.put(Namespace::Consent, KEY_LEDGER, &ledger.to_bytes());
        batch.put(Namespace::Referrals, &Self::shared_key(&id, from), &[]);
        for r in &receipts {
            batch.put(Namespace::Consent, &receipt_shared_key(&r.id(), from), &[]);
        }
        self.stage_record(batch, &Record::Sent(Box::new(referral)));
        Ok(vec![ReferralEvent::CaseShared { referral: id }])
    }

    /// Applies a colleague's release claim or reassignment (docs/PROTOCOL.md §11.9).
    fn stage_team_step(
        &self,
        signed: &wire::SignedTeamStep,
        from_root: &[u8; KEY_LEN],
        batch: &mut WriteBatch,
        now: u64,
    ) -> Result<Vec<ReferralEvent>, EngineError> {
        let refused = |referral, error| Ok(vec![ReferralEvent::Refused { referral, error }]);
        let what = "team step";
        if from_root != &self.org_root()? {
            return refused(None, ReferralError::UntrustedSigner { what });
        }
        let Some(id) = decode::team_step(&signed.step)
            .ok()
            .and_then(|s| ReferralId::from_slice(&s.referral_id))
        else {
            return refused(None, ReferralError::Malformed { what });
        };
        let Some(Record::Sent(referral)) = self.load_record(&id)? else {
            return refused(Some(id), ReferralError::WrongReferral);
        };
        let step = match TeamStep::verify(signed, &id, self.own_trust()?, Some(now)) {
            Ok(s) => s,
            Err(e) => return refused(Some(id), e),
        };
        if !referral.team_step_allowed(&step) {
            return refused(
                Some(id),
                ReferralError::BodyNotAllowed {
                    referral: id.short(),
                    state: referral.state().name(),
                },
            );
        }
        let mut team = self.load_team(&id)?;
        if team.iter().any(|t| t.signed() == step.signed()) {
            return Ok(Vec::new());
        }
        if let TeamAction::Reassigned { assignee } = step.action
            && assignee != self.device_id()?
            && self
                .case_devices(&self.org_root()?, &[assignee], now)?
                .is_empty()
        {
            return refused(
                Some(id),
                ReferralError::UntrustedSigner {
                    what: "reassignment",
                },
            );
        }
        if step.action == TeamAction::Released {
            batch.delete(Namespace::Referrals, &key(PREFIX_RELEASE, id.as_bytes()));
            let mut ledger = self.load_ledger()?;
            ledger.record_sections(&id, referral.offer().sections_included());
            batch.put(Namespace::Consent, KEY_LEDGER, &ledger.to_bytes());
        }
        let event = ReferralEvent::TeamStep {
            referral: id,
            device: step.device,
            action: step.action,
        };
        team.push(step);
        self.stage_team(batch, &id, &team);
        Ok(vec![event])
    }

    fn stage_sender_control(
        &self,
        mut referral: SenderReferral,
        signed: &wire::SignedControl,
        batch: &mut WriteBatch,
        now: u64,
    ) -> Result<Vec<ReferralEvent>, EngineError> {
        let id = referral.id();
        let peers = self.load_peers(&id)?;
        // A colleague's sender step on a record whose receiving organisation this device does
        // not trust yet (§11.9) is checked against that organisation's root alone; the
        // receiver's own steps only arrive once it is trusted.
        let untrusted;
        let receiver_org = match self.org_trust(&peers.root) {
            Ok(trust) => trust,
            Err(_) => {
                untrusted = OrgTrust::new(
                    crate::identity::OrgRootPublicKey::from_bytes(&peers.root)
                        .map_err(|_| EngineError::CorruptState)?,
                );
                &untrusted
            }
        };
        let is_purge = decode::referral_control(&signed.control).is_ok_and(|c| {
            matches!(
                c.action,
                Some(wire::referral_control::Action::PurgeConfirmed(_))
            )
        });
        let mut events = Vec::new();
        let applied = match referral.receive_control(signed, self.own_trust()?, receiver_org, now) {
            Ok(event) => {
                let state = referral.state().name();
                events.push(ReferralEvent::StateChanged {
                    referral: id,
                    state,
                });
                match event {
                    SenderEvent::ReleaseBody => {
                        // The time ACCEPTED arrived here, for the release hand-off.
                        batch.put(
                            Namespace::Referrals,
                            &key(PREFIX_RELEASE, id.as_bytes()),
                            &now.to_be_bytes(),
                        );
                        events.push(ReferralEvent::ReleaseBody { referral: id });
                    }
                    SenderEvent::PurgeConfirmed { at, retained_under } => {
                        let mut ledger = self.load_ledger()?;
                        ledger.confirm_purge(&id, at, retained_under);
                        batch.put(Namespace::Consent, KEY_LEDGER, &ledger.to_bytes());
                    }
                    _ => self.stage_colleague_step(&id, signed, batch, now)?,
                }
                true
            }
            Err(error) if !is_purge => {
                return Ok(vec![ReferralEvent::Refused {
                    referral: Some(id),
                    error,
                }]);
            }
            // Possibly a further device's confirmation of the erasure already on the timeline.
            Err(_) => false,
        };
        if is_purge {
            match referral.verify_purge_confirmation(signed, receiver_org, now) {
                Ok((device, _, retained)) => {
                    let mut confirmed = self.load_confirmed(&id)?;
                    confirmed.insert(device);
                    batch.put(
                        Namespace::Referrals,
                        &key(PREFIX_CONFIRMED, id.as_bytes()),
                        &encode_ids(&confirmed),
                    );
                    events.push(ReferralEvent::PurgeConfirmed {
                        referral: id,
                        device,
                        retained: retained.is_some(),
                    });
                }
                Err(error) => {
                    return Ok(vec![ReferralEvent::Refused {
                        referral: Some(id),
                        error,
                    }]);
                }
            }
        }
        if applied {
            self.stage_record(batch, &Record::Sent(Box::new(referral)));
        }
        Ok(events)
    }

    /// A colleague's sender step on a sent referral: a withdrawal or a revoked consent marks
    /// the recipient pending erasure and cancels a pending release; the receipt a
    /// CONSENT_CHANGED carries joins the registry.
    fn stage_colleague_step(
        &self,
        id: &ReferralId,
        signed: &wire::SignedControl,
        batch: &mut WriteBatch,
        now: u64,
    ) -> Result<(), EngineError> {
        use wire::referral_control::Action as A;
        let Ok(control) = decode::referral_control(&signed.control) else {
            return Ok(());
        };
        let revoking =
            match &control.action {
                Some(A::Withdraw(_)) => true,
                Some(A::ConsentChanged(c)) => {
                    let mut revoking = false;
                    if let Some(receipt) = c.receipt.as_ref().and_then(|r| {
                        SignedReceipt::verify_recorded(r, self.own_trust().ok()?).ok()
                    }) {
                        revoking = !matches!(
                            receipt.state(),
                            wire::ConsentState::Renewed | wire::ConsentState::Given
                        );
                        let mut registry = self.load_registry()?;
                        if registry.insert(receipt).is_ok() {
                            batch.put(Namespace::Consent, KEY_REGISTRY, &registry.to_bytes());
                        }
                    }
                    revoking
                }
                _ => false,
            };
        if revoking {
            let mut ledger = self.load_ledger()?;
            ledger.mark_pending(id, now);
            batch.put(Namespace::Consent, KEY_LEDGER, &ledger.to_bytes());
            batch.delete(Namespace::Referrals, &key(PREFIX_RELEASE, id.as_bytes()));
        }
        Ok(())
    }

    fn stage_receiver_control(
        &self,
        mut referral: ReceiverReferral,
        signed: &wire::SignedControl,
        batch: &mut WriteBatch,
        sessions: &mut Sessions,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<ReferralEvent>, EngineError> {
        let id = referral.id();
        let peers = self.load_peers(&id)?;
        let mut registry = self.load_registry()?;
        let consent_change = decode::referral_control(&signed.control).is_ok_and(|c| {
            matches!(
                c.action,
                Some(wire::referral_control::Action::ConsentChanged(_))
            )
        });
        let event = match referral.receive_control(
            signed,
            self.org_trust(&peers.root)?,
            self.own_trust()?,
            &mut registry,
            &self.actor()?,
            now,
        ) {
            Ok(e) => e,
            Err(error) => {
                return Ok(vec![ReferralEvent::Refused {
                    referral: Some(id),
                    error,
                }]);
            }
        };
        let mut events = Vec::new();
        if consent_change {
            events.push(ReferralEvent::ConsentChanged { referral: id });
        }
        let confirmation = match event {
            ReceiverEvent::Purged { confirmation, .. } => {
                events.push(ReferralEvent::Erased { referral: id });
                Some(confirmation)
            }
            ReceiverEvent::Retained { confirmation } => Some(confirmation),
            ReceiverEvent::OfferExpired(_) => {
                events.push(ReferralEvent::Erased { referral: id });
                None
            }
            _ => None,
        };
        // Each device confirms its own erasure to the sending device.
        if let Some(signed) = confirmation {
            let targets = self.sender_team(&peers, now)?;
            let body = Body::ReferralControl(signed);
            self.stage_to_all(batch, sessions, &targets, &body, now, rng)?;
        }
        events.push(ReferralEvent::StateChanged {
            referral: id,
            state: referral.state().name(),
        });
        self.stage_record(batch, &Record::Received(Box::new(referral)));
        batch.put(Namespace::Consent, KEY_REGISTRY, &registry.to_bytes());
        Ok(events)
    }
}

impl From<ConsentError> for EngineError {
    fn from(e: ConsentError) -> Self {
        EngineError::Referral(ReferralError::Receipt(e))
    }
}
