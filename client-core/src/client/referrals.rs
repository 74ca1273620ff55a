//! Referrals and consent over the relay: thin async wrappers of the engine's referral
//! operations (see [`crate::engine`]'s `referrals` docs). Every method persists its step and
//! envelopes in one engine batch, then sends the outbox; a transient relay failure leaves the
//! envelopes in the outbox for the background task.

use handover_proto::e2e::v1 as wire;
use handover_proto::limits::KEY_LEN;
use serde_json::Value;

use super::{Client, ClientError};
use crate::consent::{Language, PreferredTerm, ReceiptId, SignedReceipt};
use crate::engine::{EngineError, OfferConsent, PurgeReport, ReferralSummary};
use crate::identity::OrgRootPublicKey;
use crate::referral::{
    Action, OfferDraft, ReceiverReferral, ReferralError, ReferralId, ReferralState, SenderReferral,
    Side, Timeline,
};
use crate::store::{KvStore, Namespace};

/// Store keys of the engine's referral records (`engine/referrals.rs`: `PREFIX_SENT`,
/// `PREFIX_RECEIVED`); read here only to verify a stored timeline.
const RECORD_PREFIXES: [&[u8]; 2] = [b"s/", b"r/"];

/// How far [`Client::verify_referral_timeline`] could check a stored timeline.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum TimelineCheck {
    /// Every hash and link, every signature by a device of the organisation whose turn it
    /// was, and the order of steps as a legal lifecycle
    /// ([`Timeline::verify`](crate::referral::Timeline::verify)).
    Full,
    /// Case content was erased from the entries (withdrawal, consent revoked, expiry): the
    /// hash chain (hashes, links, sequence numbers) verified; signatures over the erased
    /// content can no longer be rechecked.
    ChainOnly,
}

impl Client {
    /// Records consent given now (see [`Engine::record_consent`](crate::engine::Engine::record_consent)).
    pub async fn record_consent(
        &self,
        draft: wire::ConsentReceipt,
    ) -> Result<SignedReceipt, ClientError> {
        self.engine_op(move |e, rng, now| e.record_consent(draft, now, rng))
            .await
    }

    /// Sends a referral offer to every active device of the receiving organisation
    /// (`draft.to.org_root_key`), starting sessions where needed; the consent gate runs first
    /// and nothing is sent if it refuses.
    pub async fn send_referral(
        &self,
        draft: OfferDraft,
        sections: Vec<wire::BodySection>,
        consent: OfferConsent,
    ) -> Result<ReferralId, ClientError> {
        let root: [u8; KEY_LEN] = draft.to.org_root_key.as_slice().try_into().map_err(|_| {
            crate::engine::EngineError::InvalidInput("organisation root key must be 32 bytes")
        })?;
        self.ensure_org_sessions(root).await?;
        // Colleague devices get the case too (docs/PROTOCOL.md §11.9).
        let own = self.engine_op(|e, _, _| e.org_root()).await?;
        self.ensure_org_sessions(own).await?;
        let (id, _) = self
            .engine_op(move |e, rng, now| {
                e.send_referral_offer(&draft, &sections, &consent, now, rng)
            })
            .await?;
        self.flush_after_send().await?;
        Ok(id)
    }

    /// Takes a lifecycle step on a referral (either side) and sends the signed control (see
    /// [`Engine::referral_act`](crate::engine::Engine::referral_act)). Returns the new state.
    pub async fn referral_act(
        &self,
        id: ReferralId,
        action: Action,
    ) -> Result<ReferralState, ClientError> {
        let own = self.engine_op(|e, _, _| e.org_root()).await?;
        self.ensure_org_sessions(own).await?;
        let (state, _) = self
            .engine_op(move |e, rng, now| e.referral_act(&id, action, now, rng))
            .await?;
        self.flush_after_send().await?;
        Ok(state)
    }

    /// Releases an accepted referral's body to the receiving organisation's non-ambassador
    /// devices. Returns how many devices it went to.
    pub async fn release_referral_body(&self, id: ReferralId) -> Result<usize, ClientError> {
        let own = self.engine_op(|e, _, _| e.org_root()).await?;
        self.ensure_org_sessions(own).await?;
        let released = self
            .engine_op(move |e, rng, now| {
                let items = e.release_referral_body(&id, now, rng)?;
                // The release claim to colleague devices is not a release.
                let colleagues = e.org_devices(&own, now)?;
                Ok(items
                    .iter()
                    .filter(|i| !colleagues.contains(&i.recipient))
                    .count())
            })
            .await?;
        self.flush_after_send().await?;
        Ok(released)
    }

    /// The accepted referrals this device should release now (see
    /// [`Engine::due_releases`](crate::engine::Engine::due_releases)): those it holds, and any
    /// other nobody of the organisation has released within
    /// [`RELEASE_HANDOFF_SECS`](crate::engine::RELEASE_HANDOFF_SECS).
    pub async fn due_releases(&self) -> Result<Vec<ReferralId>, ClientError> {
        self.engine_op(|e, _, now| e.due_releases(now)).await
    }

    /// Hands a sent referral to another caseworker or admin device of this organisation (see
    /// [`Engine::reassign_referral`](crate::engine::Engine::reassign_referral)).
    pub async fn reassign_referral(
        &self,
        id: ReferralId,
        to: crate::identity::DeviceId,
    ) -> Result<(), ClientError> {
        let own = self.engine_op(|e, _, _| e.org_root()).await?;
        self.ensure_org_sessions(own).await?;
        self.engine_op(move |e, rng, now| e.reassign_referral(&id, to, now, rng))
            .await?;
        self.flush_after_send().await?;
        Ok(())
    }

    /// Shares the organisation's open sent referrals and consent receipts with colleague
    /// devices that do not have them yet (see
    /// [`Engine::share_cases`](crate::engine::Engine::share_cases)). [`Client::sync`] calls
    /// this after every fetch. Returns how many envelopes it queued.
    pub async fn share_cases(&self) -> Result<usize, ClientError> {
        let own = self.engine_op(|e, _, _| e.org_root()).await?;
        self.ensure_org_sessions(own).await?;
        let items = self
            .engine_op(|e, rng, now| e.share_cases(now, rng))
            .await?;
        if !items.is_empty() {
            self.flush_after_send().await?;
        }
        Ok(items.len())
    }

    /// Every consent receipt of this organisation held on this device (see
    /// [`Engine::consent_receipts`](crate::engine::Engine::consent_receipts)).
    pub async fn consent_receipts(&self) -> Result<Vec<SignedReceipt>, ClientError> {
        self.engine_op(|e, _, _| e.consent_receipts()).await
    }

    /// Sent referrals accepted by the receiver whose body is not released yet (see
    /// [`Engine::pending_releases`](crate::engine::Engine::pending_releases)); durable across
    /// restarts, unlike the [`ClientEvent`](super::ClientEvent) that announced them.
    pub async fn pending_releases(&self) -> Result<Vec<ReferralId>, ClientError> {
        self.engine_op(|e, _, _| e.pending_releases()).await
    }

    /// Changes consent (withdrawn, expired, invalidated, renewed) and sends CONSENT_CHANGED to
    /// every organisation that received data under it. Returns the new receipt.
    pub async fn change_consent(
        &self,
        receipt: ReceiptId,
        state: wire::ConsentState,
    ) -> Result<SignedReceipt, ClientError> {
        let (new, _) = self
            .engine_op(move |e, rng, now| e.change_consent(&receipt, state, now, rng))
            .await?;
        self.flush_after_send().await?;
        Ok(new)
    }

    /// Erasure confirmations and pending devices per recipient of data under a receipt.
    pub async fn purge_status(&self, receipt: ReceiptId) -> Result<Vec<PurgeReport>, ClientError> {
        self.engine_op(move |e, _, _| e.purge_status(&receipt))
            .await
    }

    /// Every referral on this device with its current state and timeline.
    pub async fn referrals(&self) -> Result<Vec<ReferralSummary>, ClientError> {
        self.engine_op(|e, _, _| e.referrals()).await
    }

    /// One referral with its current state and timeline.
    pub async fn referral(&self, id: ReferralId) -> Result<Option<ReferralSummary>, ClientError> {
        self.engine_op(move |e, _, _| e.referral(&id)).await
    }

    /// Verifies a referral's stored timeline on this device: the full check
    /// ([`Timeline::verify`](crate::referral::Timeline::verify)) against the two organisation
    /// roots, or, once case content was erased, the hash chain only. `Ok(None)` if there is
    /// no such referral; an error names the first entry that does not verify.
    pub async fn verify_referral_timeline(
        &self,
        id: ReferralId,
    ) -> Result<Option<TimelineCheck>, ClientError> {
        self.engine_op(move |e, _, _| {
            let Some(summary) = e.referral(&id)? else {
                return Ok(None);
            };
            let own = e.org_root()?;
            let (sender, receiver) = match summary.side {
                Side::Sender => (own, summary.counterpart),
                Side::Receiver => (summary.counterpart, own),
            };
            let timeline = stored_timeline(e.store(), &id)?.ok_or(EngineError::CorruptState)?;
            let check = |e: ReferralError| EngineError::from(e);
            if timeline.is_erased() {
                timeline.verify_chain().map_err(check)?;
                return Ok(Some(TimelineCheck::ChainOnly));
            }
            let sender = OrgRootPublicKey::from_bytes(&sender)?;
            let receiver = OrgRootPublicKey::from_bytes(&receiver)?;
            timeline.verify(&sender, &receiver).map_err(check)?;
            Ok(Some(TimelineCheck::Full))
        })
        .await
    }

    /// The Kantara Consent Receipt v1.1 JSON of a stored receipt.
    pub async fn kantara_export(&self, receipt: ReceiptId) -> Result<Value, ClientError> {
        self.engine_op(move |e, _, _| e.kantara_export(&receipt))
            .await
    }

    /// The survivor's copy of a stored receipt (see
    /// [`Engine::survivor_copy`](crate::engine::Engine::survivor_copy)).
    pub async fn survivor_copy(
        &self,
        receipt: ReceiptId,
        language: Language,
        preferred_name: Option<String>,
        preferred_term: PreferredTerm,
        case_ref: Option<String>,
    ) -> Result<String, ClientError> {
        self.engine_op(move |e, _, _| {
            e.survivor_copy(
                &receipt,
                language,
                preferred_name.as_deref(),
                preferred_term,
                case_ref.as_deref(),
            )
        })
        .await
    }

    /// Applies referral expiry now and sends what it produces (EXPIRED, PURGE_CONFIRMED).
    /// [`Client::sync`] calls this after every fetch.
    pub async fn sweep_referrals(&self) -> Result<(), ClientError> {
        let (events, items) = self
            .engine_op(|e, rng, now| e.sweep_referrals(now, rng))
            .await?;
        for event in events {
            let _ = self.inner.events.send(super::ClientEvent::Referral(event));
        }
        // The engine queued them for take_referral_events too; drop those duplicates.
        self.with_engine(|e, _, _| e.take_referral_events()).await?;
        if !items.is_empty() {
            self.flush_after_send().await?;
        }
        Ok(())
    }

    /// Starts sessions with every active device of an organisation that has an address
    /// (devices without a bundle are skipped; the engine sends only where a session exists).
    async fn ensure_org_sessions(&self, root: [u8; KEY_LEN]) -> Result<(), ClientError> {
        let devices = self
            .engine_op(move |e, _, now| e.org_devices(&root, now))
            .await?;
        for device in devices {
            let peer = crate::engine::PeerId {
                org_root: root,
                device_id: device,
            };
            let _ = self.ensure_session(peer).await;
        }
        Ok(())
    }
}

/// The timeline of the stored sender or receiver record of `id`.
fn stored_timeline(store: &impl KvStore, id: &ReferralId) -> Result<Option<Timeline>, EngineError> {
    for (index, prefix) in RECORD_PREFIXES.iter().enumerate() {
        let mut key = prefix.to_vec();
        key.extend_from_slice(id.as_bytes());
        let Some(bytes) = store.get(Namespace::Referrals, &key)? else {
            continue;
        };
        let timeline = if index == 0 {
            SenderReferral::from_bytes(&bytes)
                .map_err(|_| EngineError::CorruptState)?
                .timeline()
                .clone()
        } else {
            ReceiverReferral::from_bytes(&bytes)
                .map_err(|_| EngineError::CorruptState)?
                .timeline()
                .clone()
        };
        return Ok(Some(timeline));
    }
    Ok(None)
}
