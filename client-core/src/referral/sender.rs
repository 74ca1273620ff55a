//! The sending organisation's record of a referral.

use std::collections::BTreeMap;
use std::fmt;

use handover_proto::e2e::v1 as wire;
use prost::Message;
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;

use super::control::{Action, LABEL_REFERRAL_OFFER};
use super::lifecycle::{ActorInfo, Lifecycle, Outcome, ReferralState, Side, Transition};
use super::offer::{ConsentInput, OfferDraft, check_draft, check_no_identifiers, offer_from_draft};
use super::seal::{self, SealedSection};
use super::shared::{Core, Meta};
use super::{Actor, ReferralError, ReferralId, Timeline};
use crate::consent::{Basis, DisclosureLedger, ReceiptRegistry, SignedReceipt, check_offer};
use crate::identity::{DeviceCertificate, OrgTrust, Role};

/// What the sender learns from a peer's control message or from its clock.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub enum SenderEvent {
    /// The lifecycle moved to this state.
    StateChanged(ReferralState),
    /// The receiver accepted: release the body to each of its non-ambassador devices with
    /// [`SenderReferral::release_body`].
    ReleaseBody,
    /// The receiver confirmed erasure (or retention under a legal exception).
    PurgeConfirmed {
        /// The receiver's time of erasure, Unix seconds.
        at: u64,
        /// Legal basis for what was kept, if anything.
        retained_under: Option<String>,
    },
    /// The offer expired before the receiving device ever got it; tell the receiver anyway
    /// with this signed EXPIRED control.
    ExpiredUndelivered(wire::SignedControl),
    /// The offer expired after delivery but before a decision; send this signed EXPIRED
    /// control.
    ExpiredUnanswered(wire::SignedControl),
}

impl fmt::Debug for SenderEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StateChanged(state) => write!(f, "StateChanged({})", state.name()),
            Self::ReleaseBody => f.write_str("ReleaseBody"),
            Self::PurgeConfirmed { at, retained_under } => f
                .debug_struct("PurgeConfirmed")
                .field("at", at)
                .field("retained", &retained_under.is_some())
                .finish(),
            Self::ExpiredUndelivered(_) => f.write_str("ExpiredUndelivered(..)"),
            Self::ExpiredUnanswered(_) => f.write_str("ExpiredUnanswered(..)"),
        }
    }
}

/// The sending organisation's record of one referral: the signed offer, the sealed body
/// sections with their keys (until released, expired or erased), the lifecycle and the
/// timeline.
pub struct SenderReferral {
    pub(crate) core: Core,
    pub(crate) signed_offer: wire::SignedReferralOffer,
    pub(crate) offer: wire::ReferralOffer,
    pub(crate) receipt: Option<SignedReceipt>,
    pub(crate) sealed: Vec<SealedSection>,
}

impl fmt::Debug for SenderReferral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            core,
            signed_offer: _,
            offer: _,
            receipt,
            sealed,
        } = self;
        f.debug_struct("SenderReferral")
            .field("id", &core.meta.id)
            .field("state", &core.lifecycle.state().name())
            .field("receipt", &receipt.as_ref().map(SignedReceipt::id))
            .field("sealed_sections", &sealed.len())
            .finish_non_exhaustive()
    }
}

impl SenderReferral {
    /// DRAFT → READY: checks the draft's required fields and that its free text carries no
    /// direct identifiers, runs the consent gate, seals every body section under its own key,
    /// and signs the offer with `actor`. On any refusal nothing is created and the caller keeps
    /// the draft.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare(
        draft: &OfferDraft,
        sections: &[wire::BodySection],
        consent: ConsentInput<'_>,
        own_org: &OrgTrust,
        registry: &ReceiptRegistry,
        actor: &Actor<'_>,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Self, ReferralError> {
        check_draft(draft, sections, now)?;
        check_no_identifiers(draft, sections)?;
        let own_root = own_org.root().to_bytes();
        let actor_root = actor.certificate().org_root_key().to_bytes();
        if !bool::from(actor_root.ct_eq(&own_root) & draft.from.org_root_key.ct_eq(&own_root)) {
            return Err(ReferralError::UntrustedSigner {
                what: "acting device",
            });
        }
        if actor.role() == Role::Ambassador && matches!(consent, ConsentInput::Override(_)) {
            return Err(crate::consent::GateError::OverrideNotPermitted.into());
        }
        let referral_id = ReferralId::random(rng);
        let (consent_ref, receipt) = match consent {
            ConsentInput::Receipt(signed) => {
                let receipt = SignedReceipt::verify(signed, own_org, now).map_err(|e| match e {
                    crate::consent::ConsentError::BadSignature { receipt } => {
                        ReferralError::Consent(crate::consent::GateError::BadReceiptSignature {
                            receipt,
                        })
                    }
                    other => other.into(),
                })?;
                let reference = wire::consent_ref::Basis::Receipt(receipt.reference());
                (reference, Some(receipt))
            }
            ConsentInput::Override(o) => (wire::consent_ref::Basis::Override(o.clone()), None),
        };
        let mut included: Vec<wire::Section> =
            sections.iter().filter_map(seal::section_of).collect();
        included.sort();
        let mut offer = offer_from_draft(
            draft,
            referral_id.as_bytes(),
            included.iter().map(|s| *s as i32).collect(),
            wire::ConsentRef {
                basis: Some(consent_ref),
            },
            Vec::new(),
            now,
        );
        let basis = match &receipt {
            Some(r) => Basis::Receipt(r),
            None => Basis::Override {
                authoriser: actor.role(),
            },
        };
        let cleared = check_offer(&offer, basis, registry, now)?;
        let mut lifecycle = Lifecycle::draft(draft.kind);
        lifecycle = lifecycle
            .apply(
                Transition::Ready(cleared),
                ActorInfo {
                    side: Side::Sender,
                    role: actor.role(),
                },
            )
            .map_err(|(_, e)| ReferralError::from(e))?;
        let mut sealed = Vec::with_capacity(sections.len());
        for body in sections {
            sealed.push(seal::seal(rng, &referral_id, body)?);
        }
        sealed.sort_by_key(|s| s.section);
        offer.section_commitments = sealed
            .iter()
            .map(|s| wire::SectionCommitment {
                section: s.section as i32,
                sealed_sha256: seal::commitment(&s.key, &referral_id, s.section, &s.ciphertext)
                    .to_vec(),
            })
            .collect();
        let offer_bytes = offer.encode_to_vec();
        let signature = actor.sign(LABEL_REFERRAL_OFFER, &offer_bytes);
        let signed_offer = wire::SignedReferralOffer {
            offer: offer_bytes,
            signer: Some(actor.certificate().signed().clone()),
            signature: signature.to_vec(),
        };
        let core = Core {
            meta: Meta::of(&offer)?,
            side: Side::Sender,
            lifecycle,
            timeline: Timeline::start(&signed_offer),
        };
        Ok(Self {
            core,
            signed_offer,
            offer,
            receipt,
            sealed,
        })
    }

    /// READY → SENT: records the disclosure in `ledger` (for revocation) and returns what to
    /// send to every device of the receiving organisation: the signed offer, and the consent
    /// receipt (for `Content.consent_receipt`) when the offer relies on one.
    pub fn mark_sent(
        &mut self,
        actor: &Actor<'_>,
        ledger: &mut DisclosureLedger,
    ) -> Result<
        (
            wire::SignedReferralOffer,
            Option<wire::SignedConsentReceipt>,
        ),
        ReferralError,
    > {
        let info = self.core.check_actor(actor)?;
        self.core.transition(Transition::Send, info)?;
        if let Some(receipt) = &self.receipt {
            ledger.record_offer(
                receipt.id(),
                self.id(),
                self.core.meta.receiver_root,
                self.offer.created_at,
            );
        }
        Ok((
            self.signed_offer.clone(),
            self.receipt.as_ref().map(|r| r.signed().clone()),
        ))
    }

    /// The referral id.
    pub fn id(&self) -> ReferralId {
        self.core.meta.id
    }

    /// The current lifecycle state.
    pub fn state(&self) -> &ReferralState {
        self.core.lifecycle.state()
    }

    /// The timeline.
    pub fn timeline(&self) -> &Timeline {
        &self.core.timeline
    }

    /// The offer as sent.
    pub fn offer(&self) -> &wire::ReferralOffer {
        &self.offer
    }

    /// The receipt relied on, if any (`None` under an override).
    pub fn receipt(&self) -> Option<&SignedReceipt> {
        self.receipt.as_ref()
    }

    /// How many sealed sections (and keys) the sender still holds.
    pub fn held_sections(&self) -> usize {
        self.sealed.len()
    }

    /// Takes a sender-side step (withdraw, provide information) and returns the signed control
    /// message to send. Receiver-side actions are refused.
    pub fn act(
        &mut self,
        action: Action,
        actor: &Actor<'_>,
        now: u64,
    ) -> Result<wire::SignedControl, ReferralError> {
        let wire_action = action.to_wire();
        let transition = super::control::transition_of(&wire_action, None);
        let signed = self.core.act(wire_action, transition, actor, now)?;
        if matches!(
            self.state(),
            ReferralState::Withdrawn | ReferralState::Expired
        ) {
            self.erase_sealed();
        }
        Ok(signed)
    }

    /// Releases the body to one device of the receiving organisation after ACCEPT: every
    /// sealed section with its key and the full consent receipt, and records the released
    /// sections in `ledger`. Refuses ambassador devices, devices of other organisations, and
    /// referrals whose consent no longer covers the offer (checked again now: withdrawn,
    /// expired or superseded receipts).
    ///
    /// The returned body holds the section keys: encrypt it for the device (pairwise session)
    /// at once and drop it.
    pub fn release_body(
        &self,
        device: &DeviceCertificate,
        registry: &ReceiptRegistry,
        ledger: &mut DisclosureLedger,
        now: u64,
    ) -> Result<wire::ReferralBody, ReferralError> {
        let state = self.state();
        if !matches!(state, ReferralState::Accepted | ReferralState::InService) {
            return Err(ReferralError::BodyNotAllowed {
                referral: self.id().short(),
                state: state.name(),
            });
        }
        if !bool::from(
            device
                .org_root_key()
                .to_bytes()
                .ct_eq(&self.core.meta.receiver_root),
        ) {
            return Err(ReferralError::NotAddressedToUs {
                referral: self.id().short(),
            });
        }
        if device.role() == Role::Ambassador {
            return Err(ReferralError::AmbassadorCannotReceiveBody);
        }
        if let Some(receipt) = &self.receipt {
            check_offer(&self.offer, Basis::Receipt(receipt), registry, now)?;
        }
        if self.sealed.is_empty() && !self.offer.sections_included.is_empty() {
            return Err(ReferralError::Erased {
                referral: self.id().short(),
            });
        }
        ledger.record_sections(&self.id(), self.sealed.iter().map(|s| s.section));
        Ok(wire::ReferralBody {
            referral_id: self.id().as_bytes().to_vec(),
            sections: self
                .sealed
                .iter()
                .map(|s| wire::SealedSection {
                    section: s.section as i32,
                    ciphertext: s.ciphertext.clone(),
                })
                .collect(),
            keys: self
                .sealed
                .iter()
                .map(|s| s.key.to_wire(s.section))
                .collect(),
            consent_receipt: self.receipt.as_ref().map(|r| r.signed().clone()),
        })
    }

    /// Records a CONSENT_CHANGED: `new_receipt` supersedes the receipt this referral relies
    /// on. A withdrawn, expired or invalidated consent moves the referral to CONSENT_REVOKED
    /// and erases the sealed sections; a renewal keeps the state and relies on the new
    /// receipt. Returns the signed control to send to the receiver.
    pub fn consent_changed(
        &mut self,
        new_receipt: &SignedReceipt,
        actor: &Actor<'_>,
        now: u64,
    ) -> Result<wire::SignedControl, ReferralError> {
        let current = self
            .receipt
            .as_ref()
            .ok_or(crate::consent::GateError::ReceiptMissing)?;
        if new_receipt.supersedes() != Some(current.id()) {
            return Err(crate::consent::GateError::ReceiptMismatch {
                receipt: new_receipt.id().short(),
            }
            .into());
        }
        let action = wire::referral_control::Action::ConsentChanged(wire::ConsentChanged {
            receipt: Some(new_receipt.signed().clone()),
        });
        let transition = super::control::transition_of(&action, Some(new_receipt.state()));
        let renewed = transition == Transition::ConsentRenewed;
        let signed = self.core.act(action, transition, actor, now)?;
        if renewed {
            self.receipt = Some(new_receipt.clone());
        } else {
            self.erase_sealed();
        }
        Ok(signed)
    }

    /// Verifies and applies a control message from the receiving organisation (or another
    /// device of ours). Nothing changes if it is refused.
    pub fn receive_control(
        &mut self,
        signed: &wire::SignedControl,
        own_org: &OrgTrust,
        receiver_org: &OrgTrust,
        now: u64,
    ) -> Result<SenderEvent, ReferralError> {
        let incoming = self.core.receive(
            signed,
            own_org,
            receiver_org,
            self.receipt.as_ref(),
            None,
            now,
        )?;
        // A colleague's consent change.
        if let Some(new_receipt) = incoming.consent
            && new_receipt.state() == wire::ConsentState::Renewed
        {
            self.receipt = Some(new_receipt);
        }
        use wire::referral_control::Action as A;
        Ok(match incoming.control.action {
            Some(A::Accept(_)) => SenderEvent::ReleaseBody,
            Some(A::PurgeConfirmed(p)) => SenderEvent::PurgeConfirmed {
                at: p.purged_at,
                retained_under: (!p.retained_under_exception.is_empty())
                    .then_some(p.retained_under_exception),
            },
            _ => {
                if matches!(
                    self.state(),
                    ReferralState::Withdrawn
                        | ReferralState::Expired
                        | ReferralState::ConsentRevoked
                ) {
                    self.erase_sealed();
                }
                SenderEvent::StateChanged(self.state().clone())
            }
        })
    }

    /// Runs expiry at `now`: an offer past `offer_expires_at` without a decision moves to
    /// EXPIRED, its sealed sections are erased and keys zeroized, and the signed EXPIRED
    /// control is returned in the event ("expired undelivered" when the receiving device never
    /// confirmed delivery).
    pub fn tick(
        &mut self,
        actor: &Actor<'_>,
        now: u64,
    ) -> Result<Option<SenderEvent>, ReferralError> {
        let undelivered = matches!(self.state(), ReferralState::Sent);
        let due = matches!(
            self.state(),
            ReferralState::Sent
                | ReferralState::Delivered
                | ReferralState::Acknowledged
                | ReferralState::InfoRequested
        ) && now >= self.core.meta.offer_expires_at;
        if !due {
            return Ok(None);
        }
        let signed = self.act(Action::Expired, actor, now)?;
        self.erase_sealed();
        Ok(Some(if undelivered {
            SenderEvent::ExpiredUndelivered(signed)
        } else {
            SenderEvent::ExpiredUnanswered(signed)
        }))
    }

    /// The relay reported the offer's envelope expired undelivered (`EnvelopeStatus`):
    /// expire now even if the local clock has not reached `offer_expires_at`.
    pub fn envelope_expired(
        &mut self,
        actor: &Actor<'_>,
        now: u64,
    ) -> Result<SenderEvent, ReferralError> {
        if !matches!(self.state(), ReferralState::Sent) {
            return Ok(SenderEvent::StateChanged(self.state().clone()));
        }
        let signed = self.act(Action::Expired, actor, now)?;
        self.erase_sealed();
        Ok(SenderEvent::ExpiredUndelivered(signed))
    }

    /// Verifies a PURGE_CONFIRMED (or RETAINED_UNDER_EXCEPTION) signed by a device of the
    /// receiving organisation for the erasure step the timeline already records. Every
    /// receiving device erases and confirms, but the hash chain holds only the first
    /// confirmation; the others answer the same step (same sequence, same previous hash) and
    /// are checked here without changing anything. Returns the confirming device, its signed
    /// time and the legal basis of anything retained.
    pub fn verify_purge_confirmation(
        &self,
        signed: &wire::SignedControl,
        receiver_org: &OrgTrust,
        now: u64,
    ) -> Result<(crate::identity::DeviceId, u64, Option<String>), ReferralError> {
        if !bool::from(
            receiver_org
                .root()
                .to_bytes()
                .ct_eq(&self.core.meta.receiver_root),
        ) {
            return Err(ReferralError::UntrustedSigner {
                what: "control message",
            });
        }
        let control = super::control::decode_control(signed)?;
        if !bool::from(control.referral_id.ct_eq(self.id().as_bytes())) {
            return Err(ReferralError::WrongReferral);
        }
        let Some(wire::referral_control::Action::PurgeConfirmed(p)) = &control.action else {
            return Err(ReferralError::Malformed {
                what: "purge confirmation",
            });
        };
        let signer = super::control::verify_signed(
            "control message",
            signed.signer.as_ref(),
            super::control::LABEL_REFERRAL_CONTROL,
            &signed.control,
            &signed.signature,
            super::control::Trust::Live {
                org: receiver_org,
                now,
            },
        )?;
        let entries = self.core.timeline.entries();
        let confirmed = matches!(
            self.state(),
            ReferralState::PurgeConfirmed(_) | ReferralState::RetainedUnderException { .. }
        );
        let position = entries.len().checked_sub(2).and_then(|i| entries.get(i));
        match position {
            Some(prev)
                if confirmed
                    && control.sequence == prev.sequence() + 1
                    && bool::from(control.prev_hash.ct_eq(prev.hash())) => {}
            _ => {
                return Err(ReferralError::OutOfOrder {
                    expected: self.core.timeline.len(),
                });
            }
        }
        let retained =
            (!p.retained_under_exception.is_empty()).then(|| p.retained_under_exception.clone());
        Ok((signer.device_id(), p.purged_at, retained))
    }

    fn erase_sealed(&mut self) {
        // Dropping zeroizes every section key.
        self.sealed.clear();
    }

    /// Whether case ownership has moved to the receiver (an accepted transfer).
    pub fn ownership_transferred(&self) -> bool {
        self.core.meta.kind == wire::ReferralKind::Transfer
            && matches!(
                self.state(),
                ReferralState::Accepted | ReferralState::InService | ReferralState::Completed(_)
            )
    }

    /// The outcome once the referral is completed.
    pub fn outcome(&self) -> Option<Outcome> {
        match self.state() {
            ReferralState::Completed(o) => Some(*o),
            _ => None,
        }
    }
}

/// Fans a consent change out to every referral that sent data under the superseded receipt:
/// signs a CONSENT_CHANGED for each one whose lifecycle allows it, marks its recipient as
/// pending erasure in `ledger` (for withdrawal, expiry and invalidation), and returns the
/// controls to send. Referrals already closed and purged are skipped.
pub fn fan_out_consent_change(
    new_receipt: &SignedReceipt,
    ledger: &mut DisclosureLedger,
    referrals: &mut BTreeMap<ReferralId, SenderReferral>,
    actor: &Actor<'_>,
    now: u64,
) -> Result<Vec<(ReferralId, wire::SignedControl)>, ReferralError> {
    let Some(old) = new_receipt.supersedes() else {
        return Ok(Vec::new());
    };
    let revoking = !matches!(
        new_receipt.state(),
        wire::ConsentState::Renewed | wire::ConsentState::Given
    );
    let targets: Vec<ReferralId> = ledger
        .disclosures(&old)
        .iter()
        .map(|d| d.referral_id)
        .collect();
    let mut out = Vec::new();
    for id in targets {
        let Some(referral) = referrals.get_mut(&id) else {
            continue;
        };
        let transition = if revoking {
            Transition::ConsentRevoked
        } else {
            Transition::ConsentRenewed
        };
        let info = ActorInfo {
            side: Side::Sender,
            role: actor.role(),
        };
        if referral.core.lifecycle.check(&transition, info).is_err() {
            continue;
        }
        let signed = referral.consent_changed(new_receipt, actor, now)?;
        if revoking {
            ledger.mark_pending(&id, now);
        }
        out.push((id, signed));
    }
    Ok(out)
}
