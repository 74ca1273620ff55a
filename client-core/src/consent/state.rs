//! The consent state machine: REQUESTED → GIVEN | REFUSED | DEFERRED; DEFERRED → GIVEN |
//! REFUSED; GIVEN → RENEWED (still given, new receipt) | WITHDRAWN | EXPIRED | INVALIDATED.
//!
//! Every transition signs a new receipt; a change after GIVEN supersedes the previous receipt
//! (`supersedes`), which is never edited. Transitions consume the machine and give it back
//! unchanged on refusal.

use std::fmt;

use handover_proto::e2e::v1 as wire;
use rand_core::CryptoRng;

use super::{ConsentError, SignedReceipt};
use crate::referral::Actor;

/// What happens to a person's consent.
#[derive(Clone)]
#[non_exhaustive]
pub enum ConsentEvent {
    /// The person gave consent; the draft holds the receipt fields (state is set here).
    Give(Box<wire::ConsentReceipt>),
    /// The person refused; the draft records what was asked.
    Refuse(Box<wire::ConsentReceipt>),
    /// The person wants to decide later.
    Defer(Box<wire::ConsentReceipt>),
    /// Consent renewed, possibly with changed fields (for example a longer validity).
    Renew(Box<wire::ConsentReceipt>),
    /// The person withdrew consent.
    Withdraw,
    /// The validity period ended.
    Expire,
    /// The consent was not valid (for example given by someone without authority).
    Invalidate,
}

impl fmt::Debug for ConsentEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConsentEvent::{}", self.name())
    }
}

impl ConsentEvent {
    fn name(&self) -> &'static str {
        match self {
            Self::Give(_) => "give",
            Self::Refuse(_) => "refuse",
            Self::Defer(_) => "defer",
            Self::Renew(_) => "renew",
            Self::Withdraw => "withdraw",
            Self::Expire => "expire",
            Self::Invalidate => "invalidate",
        }
    }
}

/// A person's consent for one purpose set, with the receipt that records its current state.
#[derive(Clone)]
#[non_exhaustive]
pub enum Consent {
    /// Asked; no answer yet.
    Requested,
    /// Given (the receipt's state is GIVEN or RENEWED).
    Given(Box<SignedReceipt>),
    /// Refused.
    Refused(Box<SignedReceipt>),
    /// Deferred.
    Deferred(Box<SignedReceipt>),
    /// Withdrawn; the receipt supersedes the last given one.
    Withdrawn(Box<SignedReceipt>),
    /// Expired; the receipt supersedes the last given one.
    Expired(Box<SignedReceipt>),
    /// Invalidated; the receipt supersedes the last given one.
    Invalidated(Box<SignedReceipt>),
}

impl fmt::Debug for Consent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.current() {
            Some(receipt) => write!(f, "Consent::{}({:?})", self.name(), receipt.id()),
            None => write!(f, "Consent::{}", self.name()),
        }
    }
}

impl Consent {
    /// The state name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Requested => "REQUESTED",
            Self::Given(_) => "GIVEN",
            Self::Refused(_) => "REFUSED",
            Self::Deferred(_) => "DEFERRED",
            Self::Withdrawn(_) => "WITHDRAWN",
            Self::Expired(_) => "EXPIRED",
            Self::Invalidated(_) => "INVALIDATED",
        }
    }

    /// The receipt recording the current state, if any.
    pub fn current(&self) -> Option<&SignedReceipt> {
        match self {
            Self::Requested => None,
            Self::Given(r)
            | Self::Refused(r)
            | Self::Deferred(r)
            | Self::Withdrawn(r)
            | Self::Expired(r)
            | Self::Invalidated(r) => Some(r),
        }
    }

    /// Whether a given consent has reached its `valid_until` at `now`: the caller should apply
    /// [`ConsentEvent::Expire`] and fan the change out to every recipient.
    pub fn expiry_due(&self, now: u64) -> bool {
        match self {
            Self::Given(r) => {
                let until = r.receipt().valid_until;
                until != 0 && now >= until
            }
            _ => false,
        }
    }

    /// Applies `event` at `now`, signing the new receipt with `actor`. On refusal the machine
    /// comes back unchanged with the error.
    pub fn apply(
        self,
        event: ConsentEvent,
        actor: &Actor<'_>,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Self, (Self, ConsentError)> {
        match self.next(event, actor, now, rng) {
            Ok(next) => Ok(next),
            Err(err) => Err((self, err)),
        }
    }

    fn next(
        &self,
        event: ConsentEvent,
        actor: &Actor<'_>,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Self, ConsentError> {
        use wire::ConsentState as St;
        let fresh = |draft: Box<wire::ConsentReceipt>, state: St| -> wire::ConsentReceipt {
            let mut r = *draft;
            r.state = state as i32;
            r.event_time = now;
            r.supersedes.clear();
            r
        };
        let refuse = ConsentError::TransitionNotAllowed {
            event: event.name(),
            state: self.name(),
        };
        Ok(match (self, event) {
            (Self::Requested | Self::Deferred(_), ConsentEvent::Give(draft)) => {
                let mut r = fresh(draft, St::Given);
                if let Self::Deferred(prev) = self {
                    r.supersedes = prev.id().as_bytes().to_vec();
                }
                Self::Given(Box::new(SignedReceipt::issue(r, actor, rng)?))
            }
            (Self::Requested | Self::Deferred(_), ConsentEvent::Refuse(draft)) => {
                let mut r = fresh(draft, St::Refused);
                if let Self::Deferred(prev) = self {
                    r.supersedes = prev.id().as_bytes().to_vec();
                }
                Self::Refused(Box::new(SignedReceipt::issue(r, actor, rng)?))
            }
            (Self::Requested, ConsentEvent::Defer(draft)) => {
                let r = fresh(draft, St::Deferred);
                Self::Deferred(Box::new(SignedReceipt::issue(r, actor, rng)?))
            }
            (Self::Given(prev), ConsentEvent::Renew(draft)) => {
                let next = prev.supersede(St::Renewed, now, actor, rng, |r| {
                    let keep_id = std::mem::take(&mut r.receipt_id);
                    *r = *draft;
                    r.receipt_id = keep_id;
                })?;
                Self::Given(Box::new(next))
            }
            (Self::Given(prev), ConsentEvent::Withdraw) => Self::Withdrawn(Box::new(
                prev.supersede(St::Withdrawn, now, actor, rng, |_| {})?,
            )),
            (Self::Given(prev), ConsentEvent::Expire) => Self::Expired(Box::new(prev.supersede(
                St::Expired,
                now,
                actor,
                rng,
                |_| {},
            )?)),
            (Self::Given(prev), ConsentEvent::Invalidate) => Self::Invalidated(Box::new(
                prev.supersede(St::Invalidated, now, actor, rng, |_| {})?,
            )),
            _ => return Err(refuse),
        })
    }
}
