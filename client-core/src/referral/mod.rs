//! Referrals: two-phase packets, the lifecycle, signed control messages and the hash-chained
//! timeline.
//!
//! A referral travels in two phases (shared/DOMAIN.md, docs/PROTOCOL.md §11):
//!
//! 1. a signed **offer** ([`SenderReferral::prepare`]) the receiving organisation triages: no
//!    direct identifiers of the person, the services requested, priority, purpose, which body
//!    sections exist, the consent relied on, and a SHA-256 commitment to each sealed section;
//! 2. the **body**, released by the sender only after the receiver accepts
//!    ([`SenderReferral::release_body`]): each section sealed under its own random key, so only
//!    the sections the consent covers ever travel. Ambassador devices never receive bodies.
//!
//! Every step after the offer is a [`ReferralControl`](handover_proto::e2e::v1::ReferralControl)
//! signed by the acting device; both sides append offer and controls to a hash-chained
//! [`Timeline`] that verifies end to end and exports as a JSON audit trail without case content.
//!
//! Both clients run the consent gate ([`crate::consent::check_offer`]) on every offer and body.
//! The core is sans-IO: callers pass `now` (Unix seconds), an RNG, and the acting device
//! ([`Actor`]); records are serialisable ([`SenderReferral::to_bytes`],
//! [`ReceiverReferral::to_bytes`]) and report what to erase ([`Erasure`]).
//!
//! The lifecycle is a value consumed by each transition; a refused transition hands the
//! unchanged value back with the reason:
//!
//! ```
//! use handover_core::identity::Role;
//! use handover_core::referral::{ActorInfo, Lifecycle, ReferralState, Side, Transition};
//! use handover_proto::e2e::v1::{DeclineReason, ReferralKind};
//!
//! let intake = ActorInfo { side: Side::Receiver, role: Role::Caseworker };
//! let lifecycle = Lifecycle::received(ReferralKind::Referral)
//!     .apply(Transition::Delivered, intake)
//!     .map_err(|(_, err)| err)?;
//! // Declining before the offer was acknowledged is refused; nothing changes.
//! let Err((lifecycle, err)) =
//!     lifecycle.apply(Transition::Decline(DeclineReason::NoCapacity), intake)
//! else {
//!     unreachable!()
//! };
//! assert_eq!(err.to_string(), "cannot decline a referral in state DELIVERED");
//! assert_eq!(lifecycle.state(), &ReferralState::Delivered);
//! # Ok::<(), handover_core::referral::LifecycleError>(())
//! ```

mod actor;
mod control;
mod expiry;
mod lifecycle;
mod offer;
mod receiver;
mod record;
mod seal;
mod sender;
mod shared;
mod team;
pub(crate) mod timeline;

use std::fmt;

use handover_proto::e2e::v1 as wire;
use rand_core::CryptoRng;

pub use actor::Actor;
pub use control::{
    Action, LABEL_REFERRAL_CONTROL, LABEL_REFERRAL_OFFER, MAX_CLOCK_SKEW_SECS, MAX_TIMELINE_ENTRIES,
};
pub use expiry::{
    EMERGENCY_OFFER_TTL_SECS, Erasure, NORMAL_OFFER_TTL_SECS, TimedContent, URGENT_OFFER_TTL_SECS,
    offer_ttl,
};
pub use lifecycle::{
    ActorInfo, Closed, Lifecycle, LifecycleError, Outcome, ReferralState, Side, Transition,
};
pub use offer::{ConsentInput, OfferDraft};
pub use receiver::{ReceiverEvent, ReceiverReferral};
pub(crate) use record::{decode_state, encode_state};
pub use seal::{
    SECTION_AD_LABEL, SECTION_COMMITMENT_LABEL, SECTION_KEY_LEN, SectionKey, commitment, section_ad,
};
pub use sender::{SenderEvent, SenderReferral, fan_out_consent_change};
pub use team::{LABEL_TEAM_STEP, TeamAction, TeamStep};
pub(crate) use team::{assignee, released};
pub use timeline::{LABEL_TIMELINE, Timeline, TimelineEntry};

use crate::consent::{ConsentError, GateError, ShortId};

/// A random 128-bit referral id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReferralId([u8; 16]);

impl ReferralId {
    /// A fresh random id.
    pub fn random(rng: &mut impl CryptoRng) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        Self(id)
    }

    /// From 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The first four bytes in hex, for people and error messages.
    pub fn short(&self) -> ShortId {
        ShortId([self.0[0], self.0[1], self.0[2], self.0[3]])
    }
}

impl fmt::Debug for ReferralId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReferralId({})", self.short())
    }
}

/// The DOMAIN.md name of a body section ("IDENTITY", "RISK", ...).
pub fn section_name(section: wire::Section) -> &'static str {
    match section {
        wire::Section::Unspecified => "UNSPECIFIED",
        wire::Section::Identity => "IDENTITY",
        wire::Section::SafeContact => "SAFE_CONTACT",
        wire::Section::Location => "LOCATION",
        wire::Section::Guardian => "GUARDIAN",
        wire::Section::Reason => "REASON",
        wire::Section::ServicesProvided => "SERVICES_PROVIDED",
        wire::Section::Risk => "RISK",
        wire::Section::DoNotDisclose => "DO_NOT_DISCLOSE",
        wire::Section::Appointment => "APPOINTMENT",
        wire::Section::Attachments => "ATTACHMENTS",
    }
}

/// Errors from building, sending, receiving and recording referrals.
///
/// Messages name at most a short referral or receipt id, a field or section name, or a state;
/// never a person's data.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReferralError {
    /// A required offer or body field is missing or invalid.
    #[error("referral field {field}: {problem}")]
    InvalidDraft {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
    /// An offer field contains what looks like a direct identifier of the person (a name,
    /// contact detail, location or id number from the body, an e-mail address or a phone
    /// number). Offers must carry none.
    #[error("offer field {field} contains a direct identifier; move it to the body")]
    IdentifierInOffer {
        /// The offer field.
        field: &'static str,
    },
    /// The consent gate refused.
    #[error(transparent)]
    Consent(#[from] GateError),
    /// A consent receipt could not be verified or issued.
    #[error(transparent)]
    Receipt(#[from] ConsentError),
    /// The lifecycle refused the transition.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// Bytes from a peer or the store are malformed.
    #[error("malformed {what}")]
    Malformed {
        /// Which structure.
        what: &'static str,
    },
    /// A signature does not verify.
    #[error("bad signature on {what}")]
    BadSignature {
        /// Which structure.
        what: &'static str,
    },
    /// The signing device's certificate is not valid for the organisation that must sign this
    /// step (wrong organisation, expired, revoked).
    #[error("{what} is not signed by a valid device of the expected organisation")]
    UntrustedSigner {
        /// Which structure.
        what: &'static str,
    },
    /// A control message for another referral.
    #[error("control message for another referral")]
    WrongReferral,
    /// The referral is addressed to another organisation.
    #[error("referral {referral} is addressed to another organisation")]
    NotAddressedToUs {
        /// The referral.
        referral: ShortId,
    },
    /// A control message does not extend the timeline head (stale, replayed, reordered or
    /// concurrent); the sender must re-sign it on top of the current head.
    #[error("control message does not extend the timeline at sequence {expected}")]
    OutOfOrder {
        /// The sequence expected next.
        expected: u64,
    },
    /// A control message or offer dated too far in the future.
    #[error("control message or offer dated in the future")]
    FromTheFuture,
    /// The timeline holds `MAX_TIMELINE_ENTRIES` entries; nothing more is accepted.
    #[error("timeline is full")]
    TimelineFull,
    /// The stored timeline does not verify.
    #[error("timeline entry {sequence} does not verify: {problem}")]
    TimelineBroken {
        /// The entry.
        sequence: u64,
        /// What failed.
        problem: &'static str,
    },
    /// Bodies are never released to, or accepted by, an ambassador device.
    #[error("ambassador devices never receive referral bodies")]
    AmbassadorCannotReceiveBody,
    /// Referral and consent content (offers, receipts, controls with their questions, answers
    /// and notes) never goes to, and is never applied on, an ambassador device.
    #[error("ambassador devices never receive referral or consent content")]
    AmbassadorCannotReceiveCase,
    /// The body may not be released or accepted in this state.
    #[error("referral {referral} is {state}: no body can be released or accepted")]
    BodyNotAllowed {
        /// The referral.
        referral: ShortId,
        /// The current state.
        state: &'static str,
    },
    /// A released section was not in the offer.
    #[error("section {section} was not offered")]
    SectionNotOffered {
        /// The section.
        section: &'static str,
    },
    /// A released section does not match the offer's commitment.
    #[error("section {section} does not match the offer's commitment")]
    CommitmentMismatch {
        /// The section.
        section: &'static str,
    },
    /// A released section has no key, or two.
    #[error("section {section} has no unique key")]
    SectionKeyMissing {
        /// The section.
        section: &'static str,
    },
    /// A released section could not be decrypted.
    #[error("could not decrypt section {section}")]
    CouldNotDecrypt {
        /// The section.
        section: &'static str,
    },
    /// The offer has expired.
    #[error("referral {referral} offer has expired")]
    OfferExpired {
        /// The referral.
        referral: ShortId,
    },
    /// The content was already erased.
    #[error("referral {referral} content was erased")]
    Erased {
        /// The referral.
        referral: ShortId,
    },
    /// Another device of the sending organisation already released the body (or this one
    /// did): it is released once.
    #[error("referral {referral} body was already released by a device of this organisation")]
    AlreadyReleased {
        /// The referral.
        referral: ShortId,
    },
    /// Sealing failed (never expected; reported instead of panicking).
    #[error("could not seal a section")]
    Crypto,
}
