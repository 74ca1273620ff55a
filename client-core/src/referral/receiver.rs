//! The receiving organisation's record of a referral.

use std::collections::BTreeMap;
use std::fmt;

use handover_proto::e2e::v1 as wire;
use prost::Message as _;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::control::{self, Action, Trust, decode_offer};
use super::expiry::Erasure;
use super::lifecycle::{ActorInfo, Lifecycle, ReferralState, Side, Transition};
use super::seal::{self, SectionKey};
use super::shared::{Core, Meta};
use super::{Actor, ReferralError, ReferralId, Timeline, section_name};
use crate::consent::{Basis, GateError, ReceiptRegistry, SignedReceipt, check_offer};
use crate::identity::{DeviceCertificate, OrgTrust, Role};

/// What happened on the receiving side.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub enum ReceiverEvent {
    /// The lifecycle moved to this state.
    StateChanged(ReferralState),
    /// Content was erased (withdrawal, consent revoked, expiry, retention) and this signed
    /// PURGE_CONFIRMED (or RETAINED_UNDER_EXCEPTION) must go to the sender.
    Purged {
        /// What the store must delete.
        erasure: Erasure,
        /// The signed confirmation to send.
        confirmation: wire::SignedControl,
    },
    /// Erasure was requested but a legal hold is set: nothing was erased, and this signed
    /// RETAINED_UNDER_EXCEPTION (a PURGE_CONFIRMED naming the legal basis) must go to the
    /// sender.
    Retained {
        /// The signed confirmation to send.
        confirmation: wire::SignedControl,
    },
    /// The offer expired on our clock; its content was erased (no message to send).
    OfferExpired(Erasure),
}

impl fmt::Debug for ReceiverEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StateChanged(state) => write!(f, "StateChanged({})", state.name()),
            Self::Purged { erasure, .. } => write!(f, "Purged({erasure:?})"),
            Self::Retained { .. } => f.write_str("Retained"),
            Self::OfferExpired(erasure) => write!(f, "OfferExpired({erasure:?})"),
        }
    }
}

/// Decrypted body sections and their keys. Zeroized on drop.
pub(crate) struct OpenedBody {
    pub(crate) sections: BTreeMap<wire::Section, (Zeroizing<Vec<u8>>, SectionKey)>,
}

/// The receiving organisation's record of one referral.
pub struct ReceiverReferral {
    pub(crate) core: Core,
    pub(crate) offer: Option<wire::ReferralOffer>,
    pub(crate) receipt: Option<SignedReceipt>,
    pub(crate) body: Option<OpenedBody>,
    pub(crate) legal_hold: Option<String>,
}

impl fmt::Debug for ReceiverReferral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            core,
            offer,
            receipt,
            body,
            legal_hold,
        } = self;
        f.debug_struct("ReceiverReferral")
            .field("id", &core.meta.id)
            .field("state", &core.lifecycle.state().name())
            .field("offer_held", &offer.is_some())
            .field("receipt", &receipt.as_ref().map(SignedReceipt::id))
            .field(
                "body_sections",
                &body.as_ref().map_or(0, |b| b.sections.len()),
            )
            .field("legal_hold", &legal_hold.is_some())
            .finish_non_exhaustive()
    }
}

fn gate_error(err: crate::consent::ConsentError) -> ReferralError {
    match err {
        crate::consent::ConsentError::BadSignature { receipt } => {
            GateError::BadReceiptSignature { receipt }.into()
        }
        other => other.into(),
    }
}

impl ReceiverReferral {
    /// Accepts an incoming offer: checks its signature by a current device of the sending
    /// organisation, that it is addressed to our organisation (`own_device`'s), that it has not
    /// expired, that every included section has one commitment, and runs the consent gate with
    /// the receipt the sender sent along (or the override, which needs an ADMIN signer).
    pub fn receive_offer(
        signed: &wire::SignedReferralOffer,
        receipt: Option<&wire::SignedConsentReceipt>,
        sender_org: &OrgTrust,
        own_device: &DeviceCertificate,
        registry: &ReceiptRegistry,
        now: u64,
    ) -> Result<Self, ReferralError> {
        let offer = decode_offer(signed)?;
        let meta = Meta::of(&offer)?;
        if !bool::from(sender_org.root().to_bytes().ct_eq(&meta.sender_root)) {
            return Err(ReferralError::UntrustedSigner { what: "offer" });
        }
        let signer = control::verify_signed(
            "offer",
            signed.signer.as_ref(),
            control::LABEL_REFERRAL_OFFER,
            &signed.offer,
            &signed.signature,
            Trust::Live {
                org: sender_org,
                now,
            },
        )?;
        if !bool::from(
            own_device
                .org_root_key()
                .to_bytes()
                .ct_eq(&meta.receiver_root),
        ) {
            return Err(ReferralError::NotAddressedToUs {
                referral: meta.id.short(),
            });
        }
        if offer.created_at > now.saturating_add(super::MAX_CLOCK_SKEW_SECS) {
            return Err(ReferralError::FromTheFuture);
        }
        if offer.retain_until <= offer.created_at {
            return Err(ReferralError::Malformed { what: "offer" });
        }
        if now >= offer.offer_expires_at {
            return Err(ReferralError::OfferExpired {
                referral: meta.id.short(),
            });
        }
        for s in &offer.sections_included {
            let n = offer
                .section_commitments
                .iter()
                .filter(|c| c.section == *s)
                .count();
            if n != 1 {
                return Err(ReferralError::Malformed {
                    what: "offer commitments",
                });
            }
        }
        if offer.section_commitments.len() != offer.sections_included.len() {
            return Err(ReferralError::Malformed {
                what: "offer commitments",
            });
        }
        let is_override = matches!(
            offer.consent.as_ref().and_then(|c| c.basis.as_ref()),
            Some(wire::consent_ref::Basis::Override(_))
        );
        let verified = match (is_override, receipt) {
            (true, _) => None,
            (false, Some(r)) => {
                Some(SignedReceipt::verify(r, sender_org, now).map_err(gate_error)?)
            }
            (false, None) => return Err(GateError::ReceiptMissing.into()),
        };
        let basis = match &verified {
            Some(r) => Basis::Receipt(r),
            None => Basis::Override {
                authoriser: signer.role(),
            },
        };
        check_offer(&offer, basis, registry, now)?;
        Ok(Self {
            core: Core {
                meta,
                side: Side::Receiver,
                lifecycle: Lifecycle::received(offer.kind()),
                timeline: Timeline::start(signed),
            },
            offer: Some(offer),
            receipt: verified,
            body: None,
            legal_hold: None,
        })
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

    /// The offer, unless erased.
    pub fn offer(&self) -> Option<&wire::ReferralOffer> {
        self.offer.as_ref()
    }

    /// Whether the offer relies on an override rather than consent.
    pub fn is_override(&self) -> bool {
        self.receipt.is_none()
    }

    /// Whether the released body was received (and not erased since).
    pub fn has_body(&self) -> bool {
        self.body.is_some()
    }

    /// How many body sections (with their keys) are held.
    pub fn held_sections(&self) -> usize {
        self.body.as_ref().map_or(0, |b| b.sections.len())
    }

    /// A decrypted body section, if held.
    pub fn section(
        &self,
        section: wire::Section,
    ) -> Option<Result<wire::BodySection, ReferralError>> {
        let (plaintext, _) = self.body.as_ref()?.sections.get(&section)?;
        Some(
            handover_proto::decode::body_section(plaintext).map_err(|_| ReferralError::Malformed {
                what: "body section",
            }),
        )
    }

    /// Places (or lifts) a legal hold: while set, erasure requests are answered with
    /// RETAINED_UNDER_EXCEPTION and this legal basis instead of erasing.
    pub fn set_legal_hold(&mut self, legal_basis: Option<String>) {
        self.legal_hold = legal_basis.filter(|b| !b.trim().is_empty());
    }

    /// Takes a receiver-side step (delivered, acknowledge, accept, decline, request
    /// information, start service, update, complete) and returns the signed control to send.
    /// Declining erases the offer's content.
    pub fn act(
        &mut self,
        action: Action,
        actor: &Actor<'_>,
        now: u64,
    ) -> Result<wire::SignedControl, ReferralError> {
        let wire_action = action.to_wire();
        let transition = control::transition_of(&wire_action, None);
        let signed = self.core.act(wire_action, transition, actor, now)?;
        if matches!(self.state(), ReferralState::Declined(_)) {
            self.erase_offer();
        }
        Ok(signed)
    }

    /// Accepts the released body on this device: refused on an ambassador device and before
    /// ACCEPTED; every section must have been offered, match its commitment, have exactly one
    /// key and decrypt to the section it claims; the consent receipt must be the one the offer
    /// references and pass the consent gate again.
    pub fn receive_body(
        &mut self,
        body: &wire::ReferralBody,
        own_device: &DeviceCertificate,
        sender_org: &OrgTrust,
        registry: &ReceiptRegistry,
        now: u64,
    ) -> Result<(), ReferralError> {
        if own_device.role() == Role::Ambassador {
            return Err(ReferralError::AmbassadorCannotReceiveBody);
        }
        let state = self.state();
        if !matches!(state, ReferralState::Accepted | ReferralState::InService) {
            return Err(ReferralError::BodyNotAllowed {
                referral: self.id().short(),
                state: state.name(),
            });
        }
        let offer = self.offer.as_ref().ok_or(ReferralError::Erased {
            referral: self.id().short(),
        })?;
        if !bool::from(body.referral_id.ct_eq(self.core.meta.id.as_bytes())) {
            return Err(ReferralError::WrongReferral);
        }
        if offer
            .consent
            .as_ref()
            .and_then(|c| c.basis.as_ref())
            .is_some_and(|b| matches!(b, wire::consent_ref::Basis::Receipt(_)))
        {
            let receipt = body
                .consent_receipt
                .as_ref()
                .ok_or(GateError::ReceiptMissing)?;
            // The receipt verified with the offer is kept history: its signer may have been
            // revoked since (any device of the sending organisation may release the body,
            // docs/PROTOCOL.md §11.9), so it is re-checked as recorded. Any other receipt is
            // checked live. The consent gate below runs at `now` either way.
            let known = self
                .receipt
                .as_ref()
                .filter(|r| r.signed().encode_to_vec() == receipt.encode_to_vec());
            let verified = match known {
                Some(_) => SignedReceipt::verify_recorded(receipt, sender_org),
                None => SignedReceipt::verify(receipt, sender_org, now),
            }
            .map_err(gate_error)?;
            check_offer(offer, Basis::Receipt(&verified), registry, now)?;
        }
        let mut sections = BTreeMap::new();
        for sealed in &body.sections {
            let section = wire::Section::try_from(sealed.section)
                .map_err(|_| ReferralError::Malformed { what: "body" })?;
            let name = section_name(section);
            let committed = offer
                .section_commitments
                .iter()
                .find(|c| c.section == sealed.section)
                .ok_or(ReferralError::SectionNotOffered { section: name })?;
            let mut keys = body.keys.iter().filter(|k| k.section == sealed.section);
            let (Some(key), None) = (keys.next(), keys.next()) else {
                return Err(ReferralError::SectionKeyMissing { section: name });
            };
            let key = SectionKey::from_slice(&key.key)
                .ok_or(ReferralError::SectionKeyMissing { section: name })?;
            let plaintext = seal::open(
                &self.core.meta.id,
                section,
                &sealed.ciphertext,
                &committed.sealed_sha256,
                &key,
            )?;
            if sections.insert(section, (plaintext, key)).is_some() {
                return Err(ReferralError::Malformed { what: "body" });
            }
        }
        self.body = Some(OpenedBody { sections });
        Ok(())
    }

    /// Verifies and applies a control from the sender (or another device of ours). A
    /// withdrawal or a revoked consent erases the offer and body at once (unless a legal hold
    /// is set) and returns the signed PURGE_CONFIRMED to send; an EXPIRED erases the offer. A
    /// CONSENT_CHANGED must supersede the receipt this referral relies on; the new receipt is
    /// added to `registry` so later offers under the old receipt are refused. A device that
    /// was offline processes the same message later with the same result.
    pub fn receive_control(
        &mut self,
        signed: &wire::SignedControl,
        sender_org: &OrgTrust,
        own_org: &OrgTrust,
        registry: &mut ReceiptRegistry,
        actor: &Actor<'_>,
        now: u64,
    ) -> Result<ReceiverEvent, ReferralError> {
        let before = self.state().clone();
        let incoming = self.core.receive(
            signed,
            sender_org,
            own_org,
            self.receipt.as_ref(),
            Some(registry),
            now,
        )?;
        if let Some(new_receipt) = incoming.consent {
            // Checked by `receive` before anything changed.
            registry.insert(new_receipt.clone())?;
            if new_receipt.state() == wire::ConsentState::Renewed {
                self.receipt = Some(new_receipt);
            }
        }
        match self.state() {
            ReferralState::Withdrawn | ReferralState::ConsentRevoked => {
                // Answered by this device; a colleague's PURGE_CONFIRMED may come instead.
                self.purge(actor, now, "all")
            }
            ReferralState::Expired if before != ReferralState::Expired => {
                self.erase_offer();
                Ok(ReceiverEvent::OfferExpired(Erasure::Offer(self.id())))
            }
            state => Ok(ReceiverEvent::StateChanged(state.clone())),
        }
    }

    /// Confirms erasure after a decline or an expiry (the offer content is already gone) with a
    /// signed PURGE_CONFIRMED, or RETAINED_UNDER_EXCEPTION under a legal hold.
    pub fn confirm_purge(
        &mut self,
        actor: &Actor<'_>,
        now: u64,
    ) -> Result<ReceiverEvent, ReferralError> {
        self.purge(actor, now, "offer")
    }

    /// Runs expiry at `now`: an undecided offer past `offer_expires_at` is erased locally
    /// (the sender's signed EXPIRED may follow); a body past `retain_until` is erased and a
    /// signed PURGE_CONFIRMED returned.
    pub fn tick(
        &mut self,
        actor: &Actor<'_>,
        now: u64,
    ) -> Result<Option<ReceiverEvent>, ReferralError> {
        let state = self.state().clone();
        if matches!(
            state,
            ReferralState::Sent
                | ReferralState::Delivered
                | ReferralState::Acknowledged
                | ReferralState::InfoRequested
        ) && now >= self.core.meta.offer_expires_at
        {
            // A local transition on our own clock: no control message, nothing to sign.
            self.core.transition(
                Transition::Expire,
                ActorInfo {
                    side: Side::Receiver,
                    role: actor.role(),
                },
            )?;
            self.erase_offer();
            return Ok(Some(ReceiverEvent::OfferExpired(Erasure::Offer(self.id()))));
        }
        if state.body_allowed() && now >= self.core.meta.retain_until {
            return self.purge(actor, now, "body").map(Some);
        }
        Ok(None)
    }

    /// Erases (unless under a legal hold) and signs PURGE_CONFIRMED, or
    /// RETAINED_UNDER_EXCEPTION with the hold's legal basis.
    fn purge(
        &mut self,
        actor: &Actor<'_>,
        now: u64,
        scope: &str,
    ) -> Result<ReceiverEvent, ReferralError> {
        let retained = self.legal_hold.clone();
        let action = wire::referral_control::Action::PurgeConfirmed(wire::PurgeConfirmed {
            scope: scope.to_owned(),
            purged_at: now,
            retained_under_exception: retained.clone().unwrap_or_default(),
        });
        let confirmation = self.core.act(
            action,
            Transition::PurgeConfirmed {
                retained_under: retained.clone(),
            },
            actor,
            now,
        )?;
        if retained.is_some() {
            return Ok(ReceiverEvent::Retained { confirmation });
        }
        self.erase_offer();
        Ok(ReceiverEvent::Purged {
            erasure: Erasure::Body(self.id()),
            confirmation,
        })
    }

    /// Erases offer content, body sections and keys, and the content of the timeline entries
    /// (the chain, signatures and content-free summaries stay).
    fn erase_offer(&mut self) {
        self.body = None;
        self.offer = None;
        self.core.timeline.erase_content();
    }
}
