//! What both sides' records share: the referral's identity, its lifecycle and its timeline,
//! and the rules for signing and accepting control messages.

use handover_proto::e2e::v1 as wire;
use subtle::ConstantTimeEq;

use super::control::{self, Trust, decode_control, side_of, sign_control, transition_of};
use super::lifecycle::{ActorInfo, Lifecycle, Side, Transition};
use super::{
    Actor, MAX_CLOCK_SKEW_SECS, MAX_TIMELINE_ENTRIES, ReferralError, ReferralId, Timeline,
};
use crate::consent::{ConsentError, GateError, ReceiptRegistry, SignedReceipt};
use crate::identity::OrgTrust;

/// Offer facts a record keeps even after the offer's content is erased.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Meta {
    pub(crate) id: ReferralId,
    pub(crate) kind: wire::ReferralKind,
    pub(crate) sender_root: [u8; 32],
    pub(crate) receiver_root: [u8; 32],
    pub(crate) offer_expires_at: u64,
    pub(crate) retain_until: u64,
}

impl Meta {
    pub(crate) fn of(offer: &wire::ReferralOffer) -> Result<Self, ReferralError> {
        let malformed = ReferralError::Malformed { what: "offer" };
        let root = |p: &Option<wire::Party>| -> Result<[u8; 32], ReferralError> {
            p.as_ref()
                .and_then(|p| p.org_root_key.as_slice().try_into().ok())
                .ok_or(ReferralError::Malformed { what: "offer" })
        };
        Ok(Self {
            id: ReferralId::from_slice(&offer.referral_id).ok_or(malformed)?,
            kind: offer.kind(),
            sender_root: root(&offer.from)?,
            receiver_root: root(&offer.to)?,
            offer_expires_at: offer.offer_expires_at,
            retain_until: offer.retain_until,
        })
    }

    pub(crate) fn root_of(&self, side: Side) -> &[u8; 32] {
        match side {
            Side::Sender => &self.sender_root,
            Side::Receiver => &self.receiver_root,
        }
    }
}

/// Lifecycle plus timeline, for one side.
#[derive(Clone, Debug)]
pub(crate) struct Core {
    pub(crate) meta: Meta,
    pub(crate) side: Side,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) timeline: Timeline,
}

/// A verified incoming control message.
pub(crate) struct Incoming {
    pub(crate) control: wire::ReferralControl,
    pub(crate) consent: Option<SignedReceipt>,
}

impl Core {
    /// Applies a transition to the lifecycle; on refusal the lifecycle is unchanged.
    pub(crate) fn transition(
        &mut self,
        transition: Transition,
        actor: ActorInfo,
    ) -> Result<(), ReferralError> {
        let current = std::mem::replace(&mut self.lifecycle, Lifecycle::draft(self.meta.kind));
        match current.apply(transition, actor) {
            Ok(next) => {
                self.lifecycle = next;
                Ok(())
            }
            Err((unchanged, err)) => {
                self.lifecycle = unchanged;
                Err(err.into())
            }
        }
    }

    /// Checks that `actor` belongs to this side's organisation.
    pub(crate) fn check_actor(&self, actor: &Actor<'_>) -> Result<ActorInfo, ReferralError> {
        let ours = self.meta.root_of(self.side);
        if !bool::from(actor.certificate().org_root_key().to_bytes().ct_eq(ours)) {
            return Err(ReferralError::UntrustedSigner {
                what: "acting device",
            });
        }
        Ok(ActorInfo {
            side: self.side,
            role: actor.role(),
        })
    }

    /// Signs a control message for a transition of ours and appends it.
    pub(crate) fn act(
        &mut self,
        action: wire::referral_control::Action,
        transition: Transition,
        actor: &Actor<'_>,
        now: u64,
    ) -> Result<wire::SignedControl, ReferralError> {
        let info = self.check_actor(actor)?;
        if side_of(&action) != self.side {
            return Err(super::LifecycleError::WrongSide {
                transition: transition.name(),
                expected: side_of(&action),
            }
            .into());
        }
        self.lifecycle.check(&transition, info)?;
        if self.timeline.len() >= MAX_TIMELINE_ENTRIES {
            return Err(ReferralError::TimelineFull);
        }
        let control = wire::ReferralControl {
            referral_id: self.meta.id.as_bytes().to_vec(),
            sequence: self.timeline.len(),
            prev_hash: self.timeline.head().to_vec(),
            at: now,
            action: Some(action),
        };
        let signed = sign_control(actor, &control);
        self.transition(transition, info)?;
        self.timeline.push(&signed);
        Ok(signed)
    }

    /// Verifies a peer's (or a colleague device's) control message, applies it and appends it.
    /// Nothing changes unless every check passes.
    pub(crate) fn receive(
        &mut self,
        signed: &wire::SignedControl,
        sender_org: &OrgTrust,
        receiver_org: &OrgTrust,
        current_receipt: Option<&SignedReceipt>,
        known: Option<&ReceiptRegistry>,
        now: u64,
    ) -> Result<Incoming, ReferralError> {
        let control = decode_control(signed)?;
        if !bool::from(control.referral_id.ct_eq(self.meta.id.as_bytes())) {
            return Err(ReferralError::WrongReferral);
        }
        let action = control.action.as_ref().ok_or(ReferralError::Malformed {
            what: "control message",
        })?;
        let side = side_of(action);
        let org = match side {
            Side::Sender => sender_org,
            Side::Receiver => receiver_org,
        };
        if !bool::from(org.root().to_bytes().ct_eq(self.meta.root_of(side))) {
            return Err(ReferralError::UntrustedSigner {
                what: "control message",
            });
        }
        let signer = control::verify_signed(
            "control message",
            signed.signer.as_ref(),
            control::LABEL_REFERRAL_CONTROL,
            &signed.control,
            &signed.signature,
            Trust::Live { org, now },
        )?;
        if control.at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(ReferralError::FromTheFuture);
        }
        let expected = self.timeline.len();
        if expected >= MAX_TIMELINE_ENTRIES {
            return Err(ReferralError::TimelineFull);
        }
        if control.sequence != expected
            || !bool::from(control.prev_hash.ct_eq(&self.timeline.head()))
        {
            return Err(ReferralError::OutOfOrder { expected });
        }
        let consent = match action {
            wire::referral_control::Action::ConsentChanged(c) => {
                let receipt = c.receipt.as_ref().ok_or(ReferralError::Malformed {
                    what: "control message",
                })?;
                let new = SignedReceipt::verify(receipt, sender_org, now)?;
                // A change must supersede the receipt this referral relies on, for the same
                // person.
                let Some(current) = current_receipt.filter(|c| new.supersedes() == Some(c.id()))
                else {
                    return Err(GateError::ReceiptMismatch {
                        receipt: new.id().short(),
                    }
                    .into());
                };
                if !crate::consent::same_principal(current, &new) {
                    return Err(ConsentError::SupersedesAnotherPrincipal {
                        receipt: new.id().short(),
                    }
                    .into());
                }
                if let Some(known) = known {
                    known.check_insert(&new)?;
                }
                Some(new)
            }
            _ => None,
        };
        let transition = transition_of(action, consent.as_ref().map(SignedReceipt::state));
        self.transition(
            transition,
            ActorInfo {
                side,
                role: signer.role(),
            },
        )?;
        self.timeline.push(signed);
        Ok(Incoming { control, consent })
    }
}
