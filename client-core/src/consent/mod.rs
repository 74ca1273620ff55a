//! Consent receipts, the consent state machine, the consent gate and revocation tracking.
//!
//! A consent receipt records what a person agreed to share, with whom, why and for how long,
//! with the fields of the Kantara Consent Receipt Specification v1.1 and ISO/IEC TS 27560
//! (shared/DOMAIN.md). It is signed by the caseworker's device on behalf of its organisation
//! ([`SignedReceipt`]), never edited (a change is a new receipt naming the one it supersedes),
//! exported as Kantara JSON ([`kantara_json`]) and rendered for the person in their language
//! ([`render_survivor_copy`]).
//!
//! - [`Consent`]: REQUESTED → GIVEN | REFUSED | DEFERRED; GIVEN → RENEWED | WITHDRAWN | EXPIRED |
//!   INVALIDATED, each step signing a new receipt.
//! - [`check_offer`]: the consent gate both clients run on every referral.
//! - [`ReceiptRegistry`] and [`DisclosureLedger`]: which receipts were superseded, and which
//!   organisation received which sections under which receipt, so a withdrawal reaches every
//!   recipient and the sender can see who has confirmed erasure.
//!
//! docs/PROTOCOL.md §12 is the byte-exact description.

mod gate;
mod kantara;
mod receipt;
mod registry;
mod render;
mod state;

pub use gate::{Basis, ConsentCleared, GateError, check_offer};
pub use kantara::{KANTARA_VERSION, kantara_json};
pub use receipt::{
    LABEL_CONSENT_RECEIPT, LABEL_RECEIPT_HASH, ReceiptId, SCHEMA_VERSION, ShortId, SignedReceipt,
};
pub(crate) use registry::same_principal;
pub use registry::{Disclosure, DisclosureLedger, PurgeStatus, ReceiptRegistry};
pub use render::{
    Language, OverrideNotice, PreferredTerm, SurvivorCopy, render_survivor_copy, utc_date,
};
pub use state::{Consent, ConsentEvent};

/// Errors from issuing, verifying and changing consent receipts.
///
/// Messages name at most a short receipt id and a field name; never a person's data.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsentError {
    /// The receipt bytes or structure are malformed.
    #[error("malformed consent receipt")]
    Malformed,
    /// A required field is missing or invalid.
    #[error("consent receipt field {field} is missing or invalid")]
    MissingField {
        /// The field.
        field: &'static str,
    },
    /// The signature does not verify, the signer's certificate is not valid for the sending
    /// organisation at the receipt's time, or the device was revoked.
    #[error("consent receipt {receipt} has an invalid signature")]
    BadSignature {
        /// The receipt.
        receipt: ShortId,
    },
    /// The receipt's `event_time` is later than its arrival allows (`now` plus
    /// `MAX_CLOCK_SKEW_SECS`).
    #[error("consent receipt {receipt} is dated in the future")]
    FromTheFuture {
        /// The receipt.
        receipt: ShortId,
    },
    /// A different receipt with the same organisation and id is already known: receipts are
    /// never edited, so the second one is refused and the first kept.
    #[error("a different consent receipt {receipt} is already known")]
    Conflict {
        /// The receipt.
        receipt: ShortId,
    },
    /// The receipt claims to supersede a receipt recorded for another person (principal).
    #[error("consent receipt {receipt} supersedes a receipt of another person")]
    SupersedesAnotherPrincipal {
        /// The superseding receipt.
        receipt: ShortId,
    },
    /// Ambassador devices do not record consent.
    #[error("this device's role may not record consent")]
    SignerNotPermitted,
    /// The consent state machine refused the event.
    #[error("cannot {event} consent that is {state}")]
    TransitionNotAllowed {
        /// The event.
        event: &'static str,
        /// The current state.
        state: &'static str,
    },
    /// JSON export failed.
    #[error("could not export the receipt")]
    Export,
}
