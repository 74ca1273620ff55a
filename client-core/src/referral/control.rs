//! Signed control messages (docs/PROTOCOL.md §11.4).

use std::fmt;

use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use handover_proto::limits::SIGNATURE_LEN;
use handover_proto::validate::Validate;
use prost::Message;

use super::lifecycle::{Outcome, Side, Transition};
use super::{Actor, ReferralError};
use crate::identity::{self, DeviceCertificate, OrgRootPublicKey, OrgTrust};

/// Signature label of a control message (`SignedControl.signature`).
pub const LABEL_REFERRAL_CONTROL: &[u8] = b"handover/1 referral-control";
/// Signature label of an offer (`SignedReferralOffer.signature`).
pub const LABEL_REFERRAL_OFFER: &[u8] = b"handover/1 referral-offer";
/// How far in the future a peer's `ReferralControl.at` (or an offer's `created_at`) may be, in
/// seconds.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// Most entries a referral's timeline may hold (offer included). A real referral has a few
/// dozen; the cap bounds what a faulty or hostile peer can make a client store.
pub const MAX_TIMELINE_ENTRIES: u64 = 1024;

/// A lifecycle step a party takes (the content of a `ReferralControl`).
///
/// Free text (`note`, `questions`, `answers`, the withdrawal reason) is case content: it travels
/// end-to-end encrypted and is kept on both sides, but never appears in the audit export.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// DELIVERED (receiver).
    Delivered,
    /// ACKNOWLEDGED (receiver).
    Acknowledge,
    /// ACCEPT (receiver).
    Accept,
    /// DECLINE (receiver); the reason code is required.
    Decline {
        /// Reason code.
        reason: wire::DeclineReason,
        /// Free-text note.
        note: String,
    },
    /// REQUEST_INFO (receiver).
    RequestInfo {
        /// Questions.
        questions: Vec<String>,
    },
    /// PROVIDE_INFO (sender).
    ProvideInfo {
        /// Answers.
        answers: Vec<String>,
    },
    /// IN_SERVICE (receiver).
    StartService,
    /// UPDATE (receiver).
    Update(wire::Update),
    /// COMPLETE (receiver).
    Complete {
        /// Outcome; not-successful needs a reason.
        outcome: Outcome,
        /// Free-text note.
        note: String,
    },
    /// WITHDRAW (sender).
    Withdraw {
        /// Why, in words.
        reason: String,
    },
    /// EXPIRED (sender).
    Expired,
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Free text is case content: print the step and reason codes only.
        match self {
            Self::Decline { reason, note: _ } => write!(f, "Decline({reason:?})"),
            Self::Complete { outcome, note: _ } => write!(f, "Complete({outcome:?})"),
            other => f.write_str(action_name(&other.to_wire())),
        }
    }
}

impl Action {
    pub(crate) fn to_wire(&self) -> wire::referral_control::Action {
        use wire::referral_control::Action as A;
        match self {
            Self::Delivered => A::Delivered(wire::Delivered {}),
            Self::Acknowledge => A::Acknowledged(wire::Acknowledged {}),
            Self::Accept => A::Accept(wire::Accept {}),
            Self::Decline { reason, note } => A::Decline(wire::Decline {
                reason: *reason as i32,
                note: note.clone(),
            }),
            Self::RequestInfo { questions } => A::RequestInfo(wire::RequestInfo {
                questions: questions.clone(),
            }),
            Self::ProvideInfo { answers } => A::ProvideInfo(wire::ProvideInfo {
                answers: answers.clone(),
            }),
            Self::StartService => A::StartService(wire::StartService {}),
            Self::Update(u) => A::Update(u.clone()),
            Self::Complete { outcome, note } => A::Complete(match outcome {
                Outcome::Successful => wire::Complete {
                    successful: true,
                    reason: 0,
                    note: note.clone(),
                },
                Outcome::NotSuccessful(reason) => wire::Complete {
                    successful: false,
                    reason: *reason as i32,
                    note: note.clone(),
                },
            }),
            Self::Withdraw { reason } => A::Withdraw(wire::Withdraw {
                reason: reason.clone(),
            }),
            Self::Expired => A::Expired(wire::Expired {}),
        }
    }
}

/// Which side signs a wire action.
pub(crate) fn side_of(action: &wire::referral_control::Action) -> Side {
    use wire::referral_control::Action as A;
    match action {
        A::ProvideInfo(_) | A::Withdraw(_) | A::ConsentChanged(_) | A::Expired(_) => Side::Sender,
        A::Delivered(_)
        | A::Acknowledged(_)
        | A::Accept(_)
        | A::Decline(_)
        | A::RequestInfo(_)
        | A::Update(_)
        | A::StartService(_)
        | A::Complete(_)
        | A::PurgeConfirmed(_) => Side::Receiver,
    }
}

/// The lifecycle transition of a wire action. `consent_state` is the state of the verified
/// receipt in a CONSENT_CHANGED.
pub(crate) fn transition_of(
    action: &wire::referral_control::Action,
    consent_state: Option<wire::ConsentState>,
) -> Transition {
    use wire::referral_control::Action as A;
    match action {
        A::Delivered(_) => Transition::Delivered,
        A::Acknowledged(_) => Transition::Acknowledge,
        A::Accept(_) => Transition::Accept,
        A::Decline(d) => Transition::Decline(d.reason()),
        A::RequestInfo(_) => Transition::RequestInfo,
        A::ProvideInfo(_) => Transition::ProvideInfo,
        A::Update(_) => Transition::Update,
        A::StartService(_) => Transition::StartService,
        A::Complete(c) if c.successful => Transition::Complete(Outcome::Successful),
        A::Complete(c) => Transition::Complete(Outcome::NotSuccessful(c.reason())),
        A::Withdraw(_) => Transition::Withdraw,
        A::ConsentChanged(_) => match consent_state {
            Some(wire::ConsentState::Renewed | wire::ConsentState::Given) => {
                Transition::ConsentRenewed
            }
            _ => Transition::ConsentRevoked,
        },
        A::PurgeConfirmed(p) => Transition::PurgeConfirmed {
            retained_under: (!p.retained_under_exception.is_empty())
                .then(|| p.retained_under_exception.clone()),
        },
        A::Expired(_) => Transition::Expire,
    }
}

/// The action's name in the audit trail.
pub(crate) fn action_name(action: &wire::referral_control::Action) -> &'static str {
    use wire::referral_control::Action as A;
    match action {
        A::Delivered(_) => "DELIVERED",
        A::Acknowledged(_) => "ACKNOWLEDGED",
        A::Accept(_) => "ACCEPT",
        A::Decline(_) => "DECLINE",
        A::RequestInfo(_) => "REQUEST_INFO",
        A::ProvideInfo(_) => "PROVIDE_INFO",
        A::Update(_) => "UPDATE",
        A::StartService(_) => "START_SERVICE",
        A::Complete(_) => "COMPLETE",
        A::Withdraw(_) => "WITHDRAW",
        A::ConsentChanged(_) => "CONSENT_CHANGED",
        A::PurgeConfirmed(_) => "PURGE_CONFIRMED",
        A::Expired(_) => "EXPIRED",
    }
}

/// Encodes and signs a control message.
pub(crate) fn sign_control(
    actor: &Actor<'_>,
    control: &wire::ReferralControl,
) -> wire::SignedControl {
    let bytes = control.encode_to_vec();
    let signature = actor.sign(LABEL_REFERRAL_CONTROL, &bytes);
    wire::SignedControl {
        control: bytes,
        signer: Some(actor.certificate().signed().clone()),
        signature: signature.to_vec(),
    }
}

/// How to check a signer's certificate.
pub(crate) enum Trust<'a> {
    /// Live: valid at `now` and not revoked, per the organisation's current device list.
    Live {
        /// The organisation.
        org: &'a OrgTrust,
        /// Now, Unix seconds.
        now: u64,
    },
    /// Archive: signed by the root and valid at the time the entry claims (a device revoked
    /// later still verifies its earlier entries).
    Archive {
        /// The organisation root.
        root: &'a OrgRootPublicKey,
        /// The entry's time.
        at: u64,
    },
}

/// Verifies a signer certificate and a labelled signature over `payload`.
pub(crate) fn verify_signed(
    what: &'static str,
    signer: Option<&wire::SignedDeviceCertificate>,
    label: &[u8],
    payload: &[u8],
    signature: &[u8],
    trust: Trust<'_>,
) -> Result<DeviceCertificate, ReferralError> {
    let signer = signer.ok_or(ReferralError::Malformed { what })?;
    if signature.len() != SIGNATURE_LEN {
        return Err(ReferralError::Malformed { what });
    }
    let cert = match trust {
        Trust::Live { org, now } => org.verify_certificate(signer, now),
        Trust::Archive { root, at } => DeviceCertificate::verify(signer, root, at),
    }
    .map_err(|_| ReferralError::UntrustedSigner { what })?;
    if !identity::verify_labelled(cert.verifying_key(), label, payload, signature) {
        return Err(ReferralError::BadSignature { what });
    }
    Ok(cert)
}

/// Structural checks and decoding of a signed control (signature checked separately).
pub(crate) fn decode_control(
    signed: &wire::SignedControl,
) -> Result<wire::ReferralControl, ReferralError> {
    signed.validate().map_err(|_| ReferralError::Malformed {
        what: "control message",
    })?;
    decode::referral_control(&signed.control).map_err(|_| ReferralError::Malformed {
        what: "control message",
    })
}

/// Structural checks and decoding of a signed offer (signature checked separately).
pub(crate) fn decode_offer(
    signed: &wire::SignedReferralOffer,
) -> Result<wire::ReferralOffer, ReferralError> {
    let what = "offer";
    signed
        .validate()
        .map_err(|_| ReferralError::Malformed { what })?;
    decode::referral_offer(&signed.offer).map_err(|_| ReferralError::Malformed { what })
}
