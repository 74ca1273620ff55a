//! The referral lifecycle of shared/DOMAIN.md as a state machine consumed on transition.
//!
//! [`Lifecycle::apply`] takes the machine by value and returns either the new machine or the
//! unchanged one with the reason for refusal, so a refused transition can never leave a
//! half-changed state behind and an old state cannot be reused.
//!
//! ```text
//! DRAFT -(consent gate)-> READY -send-> SENT -> DELIVERED -> ACKNOWLEDGED <-> INFO_REQUESTED
//! ACKNOWLEDGED | INFO_REQUESTED -accept-> ACCEPTED -> IN_SERVICE -> COMPLETED
//! ACKNOWLEDGED | INFO_REQUESTED -decline{reason}-> DECLINED
//! SENT | DELIVERED | ACKNOWLEDGED | INFO_REQUESTED -offer_expires_at-> EXPIRED
//! any open state -withdraw-> WITHDRAWN          (not after a transfer was accepted)
//! any open or completed state -consent revoked-> CONSENT_REVOKED
//! EXPIRED | WITHDRAWN | CONSENT_REVOKED | DECLINED
//!     -receiver erased-> PURGE_CONFIRMED | RETAINED_UNDER_EXCEPTION{legal basis}
//! ACCEPTED | IN_SERVICE | COMPLETED -retain_until reached, receiver erased-> PURGE_CONFIRMED
//! ```

use std::fmt;

use handover_proto::e2e::v1 as wire;

use crate::consent::ConsentCleared;
use crate::identity::Role;

/// Which party acts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    /// The referring organisation.
    Sender,
    /// The receiving organisation.
    Receiver,
}

/// Who performs a transition: the side, and the role of the acting device.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ActorInfo {
    /// Sender or receiver.
    pub side: Side,
    /// Role in the acting device's certificate.
    pub role: Role,
}

/// The result of a completed referral.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// The service was provided.
    Successful,
    /// It was not; the reason is required.
    NotSuccessful(wire::NotSuccessfulReason),
}

/// How a referral ended before erasure (what PURGE_CONFIRMED closes).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Closed {
    /// The offer expired.
    Expired,
    /// The sender withdrew.
    Withdrawn,
    /// Consent was withdrawn, expired or invalidated.
    ConsentRevoked,
    /// The receiver declined.
    Declined,
    /// Retention ended (`retain_until`) after acceptance or completion.
    RetentionEnded,
}

/// A lifecycle state.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ReferralState {
    /// Being written; not yet cleared by the consent gate.
    Draft,
    /// Cleared by the consent gate (or an authorised override), signed, not yet sent.
    Ready,
    /// Handed to the transport.
    Sent,
    /// The receiving device has it.
    Delivered,
    /// The receiving organisation opened it.
    Acknowledged,
    /// The receiver asked for more information.
    InfoRequested,
    /// Accepted; the body may be released.
    Accepted,
    /// Service started.
    InService,
    /// Completed.
    Completed(Outcome),
    /// Declined with a reason code.
    Declined(wire::DeclineReason),
    /// The offer expired before a decision.
    Expired,
    /// The sender withdrew it.
    Withdrawn,
    /// The consent it relied on was withdrawn, expired or invalidated.
    ConsentRevoked,
    /// The receiver confirmed erasure.
    PurgeConfirmed(Closed),
    /// The receiver kept data under a legal exception (the basis is recorded).
    RetainedUnderException {
        /// What ended before the retention.
        after: Closed,
        /// The legal basis given for keeping it.
        legal_basis: String,
    },
}

impl ReferralState {
    /// The DOMAIN.md name of the state (used in the audit export).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Draft => "DRAFT",
            Self::Ready => "READY",
            Self::Sent => "SENT",
            Self::Delivered => "DELIVERED",
            Self::Acknowledged => "ACKNOWLEDGED",
            Self::InfoRequested => "INFO_REQUESTED",
            Self::Accepted => "ACCEPTED",
            Self::InService => "IN_SERVICE",
            Self::Completed(_) => "COMPLETED",
            Self::Declined(_) => "DECLINED",
            Self::Expired => "EXPIRED",
            Self::Withdrawn => "WITHDRAWN",
            Self::ConsentRevoked => "CONSENT_REVOKED",
            Self::PurgeConfirmed(_) => "PURGE_CONFIRMED",
            Self::RetainedUnderException { .. } => "RETAINED_UNDER_EXCEPTION",
        }
    }

    /// Whether the referral is still open (a decision or service is pending).
    pub fn is_open(&self) -> bool {
        matches!(
            self,
            Self::Ready
                | Self::Sent
                | Self::Delivered
                | Self::Acknowledged
                | Self::InfoRequested
                | Self::Accepted
                | Self::InService
        )
    }

    /// Whether the receiver may hold the released body in this state.
    pub fn body_allowed(&self) -> bool {
        matches!(self, Self::Accepted | Self::InService | Self::Completed(_))
    }
}

/// A requested transition.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Transition {
    /// DRAFT → READY; only the consent gate can produce the proof.
    Ready(ConsentCleared),
    /// READY → SENT (local to the sender).
    Send,
    /// DELIVERED (receiver).
    Delivered,
    /// ACKNOWLEDGED (receiver).
    Acknowledge,
    /// ACCEPTED (receiver).
    Accept,
    /// DECLINED (receiver).
    Decline(wire::DeclineReason),
    /// INFO_REQUESTED (receiver).
    RequestInfo,
    /// Back to ACKNOWLEDGED (sender).
    ProvideInfo,
    /// IN_SERVICE (receiver).
    StartService,
    /// A service update, no state change (receiver).
    Update,
    /// COMPLETED (receiver).
    Complete(Outcome),
    /// WITHDRAWN (sender).
    Withdraw,
    /// CONSENT_REVOKED (sender).
    ConsentRevoked,
    /// The consent was renewed; no state change (sender).
    ConsentRenewed,
    /// EXPIRED (signed by the sender; the receiver also applies it locally on its own clock).
    Expire,
    /// PURGE_CONFIRMED, or RETAINED_UNDER_EXCEPTION when a legal basis is given (receiver).
    PurgeConfirmed {
        /// Legal basis for keeping data; `None` when everything was erased.
        retained_under: Option<String>,
    },
}

impl Transition {
    /// A short name for errors and the audit trail.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ready(_) => "ready",
            Self::Send => "send",
            Self::Delivered => "delivered",
            Self::Acknowledge => "acknowledge",
            Self::Accept => "accept",
            Self::Decline(_) => "decline",
            Self::RequestInfo => "request_info",
            Self::ProvideInfo => "provide_info",
            Self::StartService => "start_service",
            Self::Update => "update",
            Self::Complete(_) => "complete",
            Self::Withdraw => "withdraw",
            Self::ConsentRevoked => "consent_revoked",
            Self::ConsentRenewed => "consent_renewed",
            Self::Expire => "expire",
            Self::PurgeConfirmed { .. } => "purge_confirmed",
        }
    }

    /// Which side may perform it (`None`: either), and whether the ambassador role may.
    fn permitted(&self) -> (Option<Side>, bool) {
        let (side, ambassador_ok) = match self {
            // Expiry follows the clock: the sender signs EXPIRED, and a receiver applies it
            // locally on its own clock too.
            Self::Expire => return (None, true),
            Self::Ready(_) | Self::Send | Self::Withdraw | Self::ProvideInfo => {
                (Side::Sender, true)
            }
            // Consent is recorded by caseworkers.
            Self::ConsentRevoked | Self::ConsentRenewed => (Side::Sender, false),
            // Any device of the receiving organisation can see an offer arrive and must erase.
            Self::Delivered | Self::Acknowledge | Self::PurgeConfirmed { .. } => {
                (Side::Receiver, true)
            }
            // Decisions and service: never an ambassador (they never see bodies).
            Self::Accept
            | Self::Decline(_)
            | Self::RequestInfo
            | Self::StartService
            | Self::Update
            | Self::Complete(_) => (Side::Receiver, false),
        };
        (Some(side), ambassador_ok)
    }
}

/// Why a transition was refused.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// The transition is not allowed from the current state.
    #[error("cannot {transition} a referral in state {state}")]
    NotAllowed {
        /// The transition.
        transition: &'static str,
        /// The current state.
        state: &'static str,
    },
    /// The other party performs this transition.
    #[error("{transition} is for the {expected:?} side")]
    WrongSide {
        /// The transition.
        transition: &'static str,
        /// Who may perform it.
        expected: Side,
    },
    /// The acting device's role may not perform it.
    #[error("a device with role {role:?} may not {transition}")]
    RoleNotPermitted {
        /// The transition.
        transition: &'static str,
        /// The role.
        role: Role,
    },
    /// A decline or a not-successful completion without a reason, or a retention without a
    /// legal basis.
    #[error("{transition} needs a reason")]
    ReasonRequired {
        /// The transition.
        transition: &'static str,
    },
    /// Ownership moved to the receiver with an accepted transfer; the sender cannot withdraw.
    #[error("a transfer was accepted: the case belongs to the receiver now")]
    Transferred,
}

/// The lifecycle of one referral: its kind and its state.
#[derive(Clone, PartialEq, Eq)]
pub struct Lifecycle {
    kind: wire::ReferralKind,
    state: ReferralState,
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { kind, state } = self;
        f.debug_struct("Lifecycle")
            .field("kind", kind)
            .field("state", &state.name())
            .finish()
    }
}

impl Lifecycle {
    /// A new draft.
    pub fn draft(kind: wire::ReferralKind) -> Self {
        Self {
            kind,
            state: ReferralState::Draft,
        }
    }

    /// The machine as a receiver first sees it (the offer was sent).
    pub fn received(kind: wire::ReferralKind) -> Self {
        Self {
            kind,
            state: ReferralState::Sent,
        }
    }

    /// A machine restored from the local store.
    pub(crate) fn restore(kind: wire::ReferralKind, state: ReferralState) -> Self {
        Self { kind, state }
    }

    /// The referral kind.
    pub fn kind(&self) -> wire::ReferralKind {
        self.kind
    }

    /// The current state.
    pub fn state(&self) -> &ReferralState {
        &self.state
    }

    /// Applies a transition by `actor`. On refusal the machine comes back unchanged.
    pub fn apply(
        self,
        transition: Transition,
        actor: ActorInfo,
    ) -> Result<Self, (Self, LifecycleError)> {
        match self.next(&transition, actor) {
            Ok(state) => Ok(Self {
                kind: self.kind,
                state,
            }),
            Err(err) => Err((self, err)),
        }
    }

    /// Whether `transition` by `actor` would be accepted, without changing anything.
    pub fn check(&self, transition: &Transition, actor: ActorInfo) -> Result<(), LifecycleError> {
        self.next(transition, actor).map(|_| ())
    }

    fn next(&self, t: &Transition, actor: ActorInfo) -> Result<ReferralState, LifecycleError> {
        use ReferralState as S;
        let transition = t.name();
        let (side, ambassador_ok) = t.permitted();
        if let Some(side) = side.filter(|side| *side != actor.side) {
            return Err(LifecycleError::WrongSide {
                transition,
                expected: side,
            });
        }
        if actor.role == Role::Ambassador && !ambassador_ok {
            return Err(LifecycleError::RoleNotPermitted {
                transition,
                role: actor.role,
            });
        }
        let refuse = || LifecycleError::NotAllowed {
            transition,
            state: self.state.name(),
        };
        let next = match (&self.state, t) {
            (S::Draft, Transition::Ready(_)) => S::Ready,
            (S::Ready, Transition::Send) => S::Sent,
            (S::Sent, Transition::Delivered) => S::Delivered,
            (S::Delivered, Transition::Acknowledge) => S::Acknowledged,
            (S::Acknowledged | S::InfoRequested, Transition::Accept) => S::Accepted,
            (S::Acknowledged | S::InfoRequested, Transition::Decline(reason)) => {
                if *reason == wire::DeclineReason::Unspecified {
                    return Err(LifecycleError::ReasonRequired { transition });
                }
                S::Declined(*reason)
            }
            (S::Acknowledged, Transition::RequestInfo) => S::InfoRequested,
            (S::InfoRequested, Transition::ProvideInfo) => S::Acknowledged,
            (S::Accepted, Transition::StartService) => S::InService,
            (S::Accepted, Transition::Update) => S::Accepted,
            (S::InService, Transition::Update) => S::InService,
            (S::Accepted | S::InService, Transition::Complete(outcome)) => {
                if *outcome == Outcome::NotSuccessful(wire::NotSuccessfulReason::Unspecified) {
                    return Err(LifecycleError::ReasonRequired { transition });
                }
                S::Completed(*outcome)
            }
            (S::Accepted | S::InService, Transition::Withdraw)
                if self.kind == wire::ReferralKind::Transfer =>
            {
                return Err(LifecycleError::Transferred);
            }
            (state, Transition::Withdraw) if state.is_open() => S::Withdrawn,
            (state, Transition::ConsentRevoked)
                if state.is_open() || matches!(state, S::Completed(_)) =>
            {
                S::ConsentRevoked
            }
            (state, Transition::ConsentRenewed) if state.is_open() => state.clone(),
            (S::Sent | S::Delivered | S::Acknowledged | S::InfoRequested, Transition::Expire) => {
                S::Expired
            }
            // The receiver expires on its own clock; the sender's signed EXPIRED may follow.
            (S::Expired, Transition::Expire) => S::Expired,
            (state, Transition::PurgeConfirmed { retained_under }) => {
                let after = match state {
                    S::Expired => Closed::Expired,
                    S::Withdrawn => Closed::Withdrawn,
                    S::ConsentRevoked => Closed::ConsentRevoked,
                    S::Declined(_) => Closed::Declined,
                    // Retention (`retain_until`) reached after acceptance.
                    S::Accepted | S::InService | S::Completed(_) => Closed::RetentionEnded,
                    _ => return Err(refuse()),
                };
                match retained_under {
                    None => S::PurgeConfirmed(after),
                    Some(basis) if basis.trim().is_empty() => {
                        return Err(LifecycleError::ReasonRequired { transition });
                    }
                    Some(basis) => S::RetainedUnderException {
                        after,
                        legal_basis: basis.clone(),
                    },
                }
            }
            _ => return Err(refuse()),
        };
        Ok(next)
    }
}
