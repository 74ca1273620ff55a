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
    OutboxItem, PeerId, Role, Session, WriteBatch, key, wire,
};
use crate::consent::{
    Consent, ConsentError, ConsentEvent, DisclosureLedger, Language, OverrideNotice, PreferredTerm,
    PurgeStatus, ReceiptId, ReceiptRegistry, SignedReceipt, SurvivorCopy, kantara_json,
    render_survivor_copy,
};
use crate::identity::{DeviceCertificate, OrgTrust};
use crate::referral::{
    Action, ConsentInput, OfferDraft, ReceiverEvent, ReceiverReferral, ReferralError, ReferralId,
    ReferralState, SenderEvent, SenderReferral, Side, fan_out_consent_change,
};

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
        _ => {}
    }
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
        for (rid, signed) in controls {
            let peers = self.load_peers(&rid)?;
            let targets = self.case_peers(&peers, now)?;
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
        self.store.apply_batch(batch)?;
        Ok((new, items))
    }

    /// Erasure status of every recipient of data under receipt `id` (or any receipt it
    /// superseded): per referral, the devices that confirmed and those still pending.
    pub fn purge_status(&self, id: &ReceiptId) -> Result<Vec<PurgeReport>, EngineError> {
        let own = self.certificate()?.org_root_key();
        let registry = self.load_registry()?;
        let ledger = self.load_ledger()?;
        // Walk back to the first receipt of the chain: disclosures are recorded under the
        // receipt the offer relied on.
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
        let mut out = Vec::new();
        for rid in ids {
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
        self.store.apply_batch(batch)?;
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
        batch.put(Namespace::Consent, KEY_LEDGER, &ledger.to_bytes());
        batch.delete(Namespace::Referrals, &key(PREFIX_RELEASE, id.as_bytes()));
        self.store.apply_batch(batch)?;
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
        let (state, targets) = match &mut record {
            Record::Sent(r) => {
                let withdraw = matches!(action, Action::Withdraw { .. });
                controls.push(r.act(action, &actor, now)?);
                if withdraw {
                    let mut l = self.load_ledger()?;
                    l.mark_pending(id, now);
                    ledger = Some(l);
                }
                (r.state().clone(), self.case_peers(&peers, now)?)
            }
            Record::Received(r) => {
                if matches!(action, Action::Acknowledge) && r.state() == &ReferralState::Sent {
                    controls.push(r.act(Action::Delivered, &actor, now)?);
                }
                controls.push(r.act(action, &actor, now)?);
                let mut targets = self.case_peers(&peers, now)?;
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
        self.store.apply_batch(batch)?;
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
                let targets = self.case_peers(&peers, now)?;
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
        self.store.apply_batch(batch)?;
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

    /// One referral with its state and timeline.
    pub fn referral(&self, id: &ReferralId) -> Result<Option<ReferralSummary>, EngineError> {
        let Some(record) = self.load_record(id)? else {
            return Ok(None);
        };
        let counterpart = self.load_peers(id)?.root;
        Ok(Some(match record {
            Record::Sent(r) => ReferralSummary {
                id: *id,
                side: Side::Sender,
                state: r.state().clone(),
                counterpart,
                timeline: r.timeline().export_json(),
            },
            Record::Received(r) => ReferralSummary {
                id: *id,
                side: Side::Receiver,
                state: r.state().clone(),
                counterpart,
                timeline: r.timeline().export_json(),
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
                | Body::ReferralControl(_) => {
                    refused(None, ReferralError::AmbassadorCannotReceiveCase)
                }
                _ => Ok(Vec::new()),
            };
        }
        match body {
            Body::ConsentReceipt(signed) => {
                let receipt = match SignedReceipt::verify(signed, self.org_trust(from_root)?, now) {
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
            _ => Ok(Vec::new()),
        }
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
        let receiver_org = self.org_trust(&peers.root)?;
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
                        batch.put(
                            Namespace::Referrals,
                            &key(PREFIX_RELEASE, id.as_bytes()),
                            &[],
                        );
                        events.push(ReferralEvent::ReleaseBody { referral: id });
                    }
                    SenderEvent::PurgeConfirmed { at, retained_under } => {
                        let mut ledger = self.load_ledger()?;
                        ledger.confirm_purge(&id, at, retained_under);
                        batch.put(Namespace::Consent, KEY_LEDGER, &ledger.to_bytes());
                    }
                    _ => {}
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
            let targets = self.case_peers(&peers, now)?;
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
