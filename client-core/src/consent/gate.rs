//! The consent gate: may this offer's data go to this recipient for this purpose?
//!
//! Both the sending client (before signing and sending, and again before releasing the body)
//! and the receiving client (on the offer and on the body) run it. Each refusal names exactly
//! what is missing, using only short receipt ids and section or service names.

use handover_proto::e2e::v1 as wire;
use subtle::ConstantTimeEq;

use super::{ReceiptId, ReceiptRegistry, ShortId, SignedReceipt};
use crate::identity::Role;
use crate::referral::section_name;

/// Proof that an offer passed the consent gate. Only the gate constructs it; the lifecycle's
/// DRAFT → READY transition requires it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConsentCleared {
    receipt: Option<ReceiptId>,
}

impl ConsentCleared {
    /// Whether the offer relies on an override instead of consent.
    pub fn is_override(&self) -> bool {
        self.receipt.is_none()
    }

    /// The receipt relied on, if any.
    pub fn receipt(&self) -> Option<ReceiptId> {
        self.receipt
    }
}

/// Why the consent gate refused a referral.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// The offer names no consent basis, or a receipt other than the one supplied.
    #[error("the offer does not reference consent receipt {receipt}")]
    ReceiptMismatch {
        /// The receipt supplied.
        receipt: ShortId,
    },
    /// The offer relies on a receipt but none was supplied.
    #[error("the offer relies on a consent receipt that was not supplied")]
    ReceiptMissing,
    /// The receipt's signature is forged or the receipt was tampered with, or it was signed by a
    /// device that may not record consent for the sending organisation.
    #[error("consent receipt {receipt} has an invalid signature")]
    BadReceiptSignature {
        /// The receipt.
        receipt: ShortId,
    },
    /// The receipt was recorded by another organisation than the sender.
    #[error("consent receipt {receipt} was recorded by another organisation")]
    WrongController {
        /// The receipt.
        receipt: ShortId,
    },
    /// The receipt does not record consent given (refused, deferred, requested).
    #[error("consent receipt {receipt} records consent {state}, not given")]
    NotGiven {
        /// The receipt.
        receipt: ShortId,
        /// Its state.
        state: &'static str,
    },
    /// Consent was withdrawn, expired or invalidated.
    #[error("consent receipt {receipt} was {state}")]
    Revoked {
        /// The receipt.
        receipt: ShortId,
        /// WITHDRAWN, EXPIRED or INVALIDATED.
        state: &'static str,
    },
    /// The receipt's validity period has ended.
    #[error("consent receipt {receipt} has expired")]
    Expired {
        /// The receipt.
        receipt: ShortId,
    },
    /// A newer receipt replaces this one.
    #[error("consent receipt {receipt} was superseded by {by}")]
    Superseded {
        /// The receipt.
        receipt: ShortId,
        /// The newer receipt.
        by: ShortId,
    },
    /// The receiving organisation is not a recipient in the receipt.
    #[error("recipient organisation not covered by consent receipt {receipt}")]
    RecipientNotCovered {
        /// The receipt.
        receipt: ShortId,
    },
    /// A requested service is not one the person agreed to for this recipient.
    #[error("service {service} not covered by consent receipt {receipt}")]
    ServiceNotCovered {
        /// The service.
        service: &'static str,
        /// The receipt.
        receipt: ShortId,
    },
    /// The offer's purpose is not one of the receipt's purposes.
    #[error("purpose not covered by consent receipt {receipt}")]
    PurposeNotCovered {
        /// The receipt.
        receipt: ShortId,
    },
    /// A body section is not among the receipt's data categories.
    #[error("section {section} not covered by consent receipt {receipt}")]
    SectionNotCovered {
        /// The section.
        section: &'static str,
        /// The receipt.
        receipt: ShortId,
    },
    /// A body section is withheld from this recipient.
    #[error("section {section} is withheld from this recipient by consent receipt {receipt}")]
    SectionWithheld {
        /// The section.
        section: &'static str,
        /// The receipt.
        receipt: ShortId,
    },
    /// The offer allows onward sharing; the receipt does not.
    #[error("onward sharing not covered by consent receipt {receipt}")]
    OnwardSharingNotCovered {
        /// The receipt.
        receipt: ShortId,
    },
    /// The offer's `retain_until` is later than the receipt's retention period allows.
    #[error("retention beyond what consent receipt {receipt} allows")]
    RetentionNotCovered {
        /// The receipt.
        receipt: ShortId,
    },
    /// The offer and the receipt disagree on whether the person is a minor.
    #[error("the offer and consent receipt {receipt} disagree on whether the person is a minor")]
    MinorMismatch {
        /// The receipt.
        receipt: ShortId,
    },
    /// A minor's receipt lacks what a child's referral needs.
    #[error("consent receipt {receipt} for a minor does not record {missing}")]
    MinorConsentIncomplete {
        /// The receipt.
        receipt: ShortId,
        /// "the child's assent" or "a caregiver's or guardian's consent, or why there is none".
        missing: &'static str,
    },
    /// The child said no to the referral.
    #[error(
        "the child did not assent (consent receipt {receipt}); a referral needs the child's \
         assent or an override"
    )]
    ChildAssentRefused {
        /// The receipt.
        receipt: ShortId,
    },
    /// An override by a device without the override permission (ADMIN role).
    #[error("sharing without consent needs the override permission (admin role)")]
    OverrideNotPermitted,
    /// An override without its legal basis or justification.
    #[error("override without a recorded {missing}")]
    OverrideIncomplete {
        /// "legal basis", "justification" or "authoriser".
        missing: &'static str,
    },
}

/// What consent an offer relies on, as supplied to the gate.
#[derive(Clone, Copy, Debug)]
pub enum Basis<'a> {
    /// A verified receipt (see [`SignedReceipt::verify`]).
    Receipt(&'a SignedReceipt),
    /// The offer carries an override; `authoriser` is the role of the device that signed the
    /// offer.
    Override {
        /// Role of the device that signed the offer.
        authoriser: Role,
    },
}

fn service_name(service: i32) -> &'static str {
    wire::Service::try_from(service)
        .map(|s| s.as_str_name().trim_start_matches("SERVICE_"))
        .unwrap_or("UNKNOWN")
}

/// Checks an offer against the consent it relies on at time `now`.
pub fn check_offer(
    offer: &wire::ReferralOffer,
    basis: Basis<'_>,
    registry: &ReceiptRegistry,
    now: u64,
) -> Result<ConsentCleared, GateError> {
    let consent = offer.consent.as_ref().and_then(|c| c.basis.as_ref());
    match basis {
        Basis::Override { authoriser } => {
            let Some(wire::consent_ref::Basis::Override(o)) = consent else {
                return Err(GateError::ReceiptMissing);
            };
            if authoriser != Role::Admin {
                return Err(GateError::OverrideNotPermitted);
            }
            if o.legal_basis.trim().is_empty() {
                return Err(GateError::OverrideIncomplete {
                    missing: "legal basis",
                });
            }
            if o.justification.trim().is_empty() {
                return Err(GateError::OverrideIncomplete {
                    missing: "justification",
                });
            }
            if o.authorised_by.trim().is_empty() {
                return Err(GateError::OverrideIncomplete {
                    missing: "authoriser",
                });
            }
            Ok(ConsentCleared { receipt: None })
        }
        Basis::Receipt(receipt) => check_receipt(offer, consent, receipt, registry, now),
    }
}

fn check_receipt(
    offer: &wire::ReferralOffer,
    consent: Option<&wire::consent_ref::Basis>,
    receipt: &SignedReceipt,
    registry: &ReceiptRegistry,
    now: u64,
) -> Result<ConsentCleared, GateError> {
    let short = receipt.id().short();
    let r = receipt.receipt();
    // The offer must reference exactly this receipt.
    let Some(wire::consent_ref::Basis::Receipt(reference)) = consent else {
        return Err(GateError::ReceiptMismatch { receipt: short });
    };
    let same_id = reference.receipt_id.ct_eq(receipt.id().as_bytes());
    let same_hash = reference.receipt_sha256.ct_eq(receipt.hash());
    if !bool::from(same_id & same_hash) {
        return Err(GateError::ReceiptMismatch { receipt: short });
    }
    // Recorded by the sending organisation.
    let from = offer.from.as_ref().map(|p| p.org_root_key.as_slice());
    if !from.is_some_and(|k| bool::from(k.ct_eq(&receipt.org().to_bytes()))) {
        return Err(GateError::WrongController { receipt: short });
    }
    // State, supersession, validity.
    match receipt.state() {
        wire::ConsentState::Given | wire::ConsentState::Renewed => {}
        state @ (wire::ConsentState::Withdrawn
        | wire::ConsentState::Expired
        | wire::ConsentState::Invalidated) => {
            return Err(GateError::Revoked {
                receipt: short,
                state: super::receipt::state_name(state),
            });
        }
        state => {
            return Err(GateError::NotGiven {
                receipt: short,
                state: super::receipt::state_name(state),
            });
        }
    }
    if let Some(next) = registry.superseded_by(receipt) {
        return Err(match next.state() {
            state @ (wire::ConsentState::Withdrawn
            | wire::ConsentState::Expired
            | wire::ConsentState::Invalidated) => GateError::Revoked {
                receipt: short,
                state: super::receipt::state_name(state),
            },
            _ => GateError::Superseded {
                receipt: short,
                by: next.id().short(),
            },
        });
    }
    if r.valid_until != 0 && now >= r.valid_until {
        return Err(GateError::Expired { receipt: short });
    }
    check_minor(offer, r, short)?;
    // Recipient and its services.
    let to = offer.to.as_ref();
    let to_key = to.map(|p| p.org_root_key.as_slice()).unwrap_or_default();
    let Some(recipient) = r
        .recipients
        .iter()
        .find(|rec| bool::from(rec.org_root_key.as_slice().ct_eq(to_key)))
    else {
        return Err(GateError::RecipientNotCovered { receipt: short });
    };
    if !recipient.services.is_empty()
        && let Some(s) = offer
            .services_requested
            .iter()
            .find(|s| !recipient.services.contains(s))
    {
        return Err(GateError::ServiceNotCovered {
            service: service_name(*s),
            receipt: short,
        });
    }
    // Purpose: the offer states one of the receipt's purposes.
    if !r
        .purposes
        .iter()
        .any(|p| p.purpose.trim() == offer.purpose.trim())
    {
        return Err(GateError::PurposeNotCovered { receipt: short });
    }
    // Sections: each included section is a consented data category and not withheld from
    // this recipient.
    let to_name = to.map(|p| p.org_name.trim()).unwrap_or_default();
    for &s in &offer.sections_included {
        let section = wire::Section::try_from(s).unwrap_or(wire::Section::Unspecified);
        if !r.data_categories.contains(&s) {
            return Err(GateError::SectionNotCovered {
                section: section_name(section),
                receipt: short,
            });
        }
        let withheld = r.withheld.iter().any(|w| {
            w.section == s
                && (w.from_whom.trim().eq_ignore_ascii_case("all")
                    || w.from_whom.trim().eq_ignore_ascii_case(to_name))
        });
        if withheld {
            return Err(GateError::SectionWithheld {
                section: section_name(section),
                receipt: short,
            });
        }
    }
    if offer.onward_sharing_allowed && !r.onward_sharing {
        return Err(GateError::OnwardSharingNotCovered { receipt: short });
    }
    if r.retention_secs != 0
        && offer.retain_until > offer.created_at.saturating_add(r.retention_secs)
    {
        return Err(GateError::RetentionNotCovered { receipt: short });
    }
    Ok(ConsentCleared {
        receipt: Some(receipt.id()),
    })
}

/// A child's referral needs a minor's receipt with the child's assent and the adult's consent
/// documented; a minor's receipt cannot cover an offer that calls the person an adult (which
/// would skip the guardian section).
fn check_minor(
    offer: &wire::ReferralOffer,
    r: &wire::ConsentReceipt,
    short: ShortId,
) -> Result<(), GateError> {
    if offer.is_minor != r.principal_is_minor {
        return Err(GateError::MinorMismatch { receipt: short });
    }
    if !offer.is_minor {
        return Ok(());
    }
    match r.child_assent() {
        wire::ChildAssent::Given => {}
        wire::ChildAssent::NotApplicable if !r.minor_note.trim().is_empty() => {}
        wire::ChildAssent::Refused => return Err(GateError::ChildAssentRefused { receipt: short }),
        wire::ChildAssent::NotApplicable | wire::ChildAssent::Unspecified => {
            return Err(GateError::MinorConsentIncomplete {
                receipt: short,
                missing: "the child's assent",
            });
        }
    }
    if !super::receipt::adult_consent_documented(r) {
        return Err(GateError::MinorConsentIncomplete {
            receipt: short,
            missing: "a caregiver's or guardian's consent, or why there is none",
        });
    }
    Ok(())
}
