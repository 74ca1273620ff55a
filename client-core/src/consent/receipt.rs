//! Signed consent receipts (docs/PROTOCOL.md §12.1).

use std::fmt;

use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use handover_proto::validate::Validate;
use prost::Message;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};

use super::ConsentError;
use crate::identity::{self, DeviceCertificate, OrgRootPublicKey, OrgTrust, Role};
use crate::referral::timeline::update_lp;
use crate::referral::{Actor, MAX_CLOCK_SKEW_SECS};

/// Signature label of a consent receipt (`SignedConsentReceipt.signature`).
pub const LABEL_CONSENT_RECEIPT: &[u8] = b"handover/1 consent-receipt";

/// Hash label of the receipt hash (`ReceiptRef.receipt_sha256`, docs/PROTOCOL.md §12.2).
pub const LABEL_RECEIPT_HASH: &[u8] = b"handover/1 consent-receipt-hash";

/// `ConsentReceipt.schema_version` written by this implementation.
pub const SCHEMA_VERSION: &str = "handover-consent/1";

/// A receipt id: 16 random bytes laid out as a UUID version 4.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReceiptId([u8; 16]);

impl ReceiptId {
    /// A fresh random id (UUID v4 bit layout).
    pub fn random(rng: &mut impl CryptoRng) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        id[6] = (id[6] & 0x0f) | 0x40;
        id[8] = (id[8] & 0x3f) | 0x80;
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

    /// The first four bytes in hex: the only form of the id used in messages and errors.
    pub fn short(&self) -> ShortId {
        ShortId([self.0[0], self.0[1], self.0[2], self.0[3]])
    }

    /// The canonical UUID text form (8-4-4-4-12 lowercase hex).
    pub fn to_uuid_string(&self) -> String {
        let h = hex::encode(self.0);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for ReceiptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReceiptId({})", self.short())
    }
}

/// A short id (first four bytes of a receipt or referral id, in hex) for people and errors.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShortId(pub(crate) [u8; 4]);

impl fmt::Display for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A consent receipt whose signature, signer and fields have been checked.
///
/// Receipts are never edited: [`supersede`](Self::supersede) signs a new receipt that names
/// this one in `supersedes`.
#[derive(Clone)]
pub struct SignedReceipt {
    signed: wire::SignedConsentReceipt,
    receipt: wire::ConsentReceipt,
    id: ReceiptId,
    hash: [u8; 32],
    signer: DeviceCertificate,
}

impl fmt::Debug for SignedReceipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The receipt names recipients and purposes: show only the id and state.
        let Self {
            signed: _,
            receipt,
            id,
            hash: _,
            signer,
        } = self;
        f.debug_struct("SignedReceipt")
            .field("id", id)
            .field("state", &receipt.state().as_str_name())
            .field("signer", &signer.device_id())
            .finish_non_exhaustive()
    }
}

/// The consent states a receipt may record.
pub(crate) fn state_name(state: wire::ConsentState) -> &'static str {
    match state {
        wire::ConsentState::Unspecified => "UNSPECIFIED",
        wire::ConsentState::Requested => "REQUESTED",
        wire::ConsentState::Given => "GIVEN",
        wire::ConsentState::Refused => "REFUSED",
        wire::ConsentState::Deferred => "DEFERRED",
        wire::ConsentState::Withdrawn => "WITHDRAWN",
        wire::ConsentState::Expired => "EXPIRED",
        wire::ConsentState::Invalidated => "INVALIDATED",
        wire::ConsentState::Renewed => "RENEWED",
    }
}

fn require(ok: bool, field: &'static str) -> Result<(), ConsentError> {
    if ok {
        Ok(())
    } else {
        Err(ConsentError::MissingField { field })
    }
}

/// Whether a receipt for a minor says who consented for the child, or why no caregiver or
/// guardian did (used by the record-time check and by the consent gate).
pub(crate) fn adult_consent_documented(r: &wire::ConsentReceipt) -> bool {
    matches!(
        r.expressed_by(),
        wire::ExpressedBy::Caregiver | wire::ExpressedBy::Guardian
    ) || !r.minor_note.trim().is_empty()
}

/// The rules for a minor's receipt (docs/PROTOCOL.md §12.1): the child's assent is recorded;
/// "not applicable" and consent not expressed by a caregiver or guardian each need the reason
/// in `minor_note`. An adult's receipt carries no assent.
fn check_minor_fields(r: &wire::ConsentReceipt) -> Result<(), ConsentError> {
    if !r.principal_is_minor {
        return require(r.child_assent == 0, "child_assent");
    }
    require(r.child_assent != 0, "child_assent")?;
    require(
        r.child_assent() != wire::ChildAssent::NotApplicable || !r.minor_note.trim().is_empty(),
        "minor_note",
    )?;
    require(adult_consent_documented(r), "minor_note")
}

/// Field rules beyond structural validation (docs/PROTOCOL.md §12.1).
fn check_fields(r: &wire::ConsentReceipt) -> Result<(), ConsentError> {
    r.validate()
        .map_err(|_| ConsentError::MissingField { field: "structure" })?;
    require(r.schema_version == SCHEMA_VERSION, "schema_version")?;
    require(r.expressed_by != 0, "expressed_by")?;
    require(
        r.expressed_by != wire::ExpressedBy::Other as i32 || !r.expressed_by_other.is_empty(),
        "expressed_by_other",
    )?;
    check_minor_fields(r)?;
    require(r.collection_method != 0, "collection_method")?;
    require(
        r.collection_method != wire::CollectionMethod::ViaInterpreter as i32
            || !r.interpreter_language.is_empty(),
        "interpreter_language",
    )?;
    require(!r.consent_type.is_empty(), "consent_type")?;
    require(r.event_time != 0, "event_time")?;
    require(r.state != 0, "state")?;
    require(
        r.valid_until == 0 || r.valid_until > r.event_time,
        "valid_until",
    )?;
    require(!r.jurisdictions.is_empty(), "jurisdictions")?;
    require(!r.notice_ref.is_empty(), "notice_ref")?;
    require(!r.notice_language.is_empty(), "notice_language")?;
    require(!r.controllers.is_empty(), "controllers")?;
    require(
        r.legal_basis.as_ref().is_some_and(|b| !b.basis.is_empty()),
        "legal_basis",
    )?;
    require(!r.principal_ref.is_empty(), "principal_ref")?;
    require(!r.withdrawal_method.trim().is_empty(), "withdrawal_method")?;
    require(
        r.witness
            .as_ref()
            .is_some_and(|w| !w.caseworker_id.is_empty()),
        "witness",
    )?;
    let gives = matches!(
        r.state(),
        wire::ConsentState::Given | wire::ConsentState::Renewed
    );
    if gives {
        require(!r.purposes.is_empty(), "purposes")?;
        require(
            r.purposes.iter().all(|p| !p.purpose.trim().is_empty()),
            "purposes",
        )?;
        require(!r.recipients.is_empty(), "recipients")?;
        require(!r.data_categories.is_empty(), "data_categories")?;
    }
    Ok(())
}

impl SignedReceipt {
    /// Signs a new receipt recorded by `actor` (a caseworker or admin device) on behalf of its
    /// organisation. The receipt id and schema version are filled in here; the draft's own
    /// values for them are ignored. Refuses drafts with missing required fields.
    pub fn issue(
        mut draft: wire::ConsentReceipt,
        actor: &Actor<'_>,
        rng: &mut impl CryptoRng,
    ) -> Result<Self, ConsentError> {
        if actor.role() == Role::Ambassador {
            return Err(ConsentError::SignerNotPermitted);
        }
        draft.schema_version = SCHEMA_VERSION.to_owned();
        draft.receipt_id = ReceiptId::random(rng).as_bytes().to_vec();
        check_fields(&draft)?;
        let bytes = draft.encode_to_vec();
        let signature = actor.sign(LABEL_CONSENT_RECEIPT, &bytes);
        let signed = wire::SignedConsentReceipt {
            receipt: bytes,
            signer: Some(actor.certificate().signed().clone()),
            signature: signature.to_vec(),
        };
        Self::from_parts(signed, draft, actor.certificate().clone())
    }

    fn from_parts(
        signed: wire::SignedConsentReceipt,
        receipt: wire::ConsentReceipt,
        signer: DeviceCertificate,
    ) -> Result<Self, ConsentError> {
        let id = ReceiptId::from_slice(&receipt.receipt_id).ok_or(ConsentError::MissingField {
            field: "receipt_id",
        })?;
        Ok(Self {
            hash: receipt_hash(&signed),
            signed,
            receipt,
            id,
            signer,
        })
    }

    /// Signs the receipt that records a change of this one (withdrawn, expired, invalidated or
    /// renewed): a copy with a new id, `supersedes` = this id, the new state and `event_time` =
    /// `now`. `edit` may change the copied fields (for a renewal); it cannot change the id,
    /// `supersedes`, state or time.
    pub fn supersede(
        &self,
        state: wire::ConsentState,
        now: u64,
        actor: &Actor<'_>,
        rng: &mut impl CryptoRng,
        edit: impl FnOnce(&mut wire::ConsentReceipt),
    ) -> Result<Self, ConsentError> {
        let mut next = self.receipt.clone();
        edit(&mut next);
        next.supersedes = self.id.as_bytes().to_vec();
        next.state = state as i32;
        next.event_time = now;
        Self::issue(next, actor, rng)
    }

    /// Verifies a signed receipt from the organisation `org` on its arrival at `now`
    /// (docs/PROTOCOL.md §12.2): the device certificate verifies under `org` at `now` (not at
    /// the receipt's own, signer-chosen `event_time`, which could be backdated into a window in
    /// which an expired certificate was valid), is not revoked and is not an ambassador's;
    /// `event_time` is not after `now + MAX_CLOCK_SKEW_SECS`; the signature covers
    /// `LABEL_CONSENT_RECEIPT || receipt`; and the fields are complete. A receipt signed by a
    /// device of another organisation, or a tampered one, is refused.
    pub fn verify(
        signed: &wire::SignedConsentReceipt,
        org: &OrgTrust,
        now: u64,
    ) -> Result<Self, ConsentError> {
        let (receipt, short) = decode_parts(signed)?;
        let signer_wire = signed.signer.as_ref().ok_or(ConsentError::Malformed)?;
        let signer = org
            .verify_certificate(signer_wire, now)
            .map_err(|_| ConsentError::BadSignature { receipt: short })?;
        if receipt.event_time > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(ConsentError::FromTheFuture { receipt: short });
        }
        Self::finish(signed, receipt, signer, short)
    }

    /// Re-checks a receipt that was verified on arrival and kept (a stored registry or
    /// referral record, a timeline being audited): the signer certificate verifies under
    /// `org`'s root at the receipt's `event_time`, the role is not AMBASSADOR, the signature
    /// and fields are valid. Revocations and expiry since arrival do not make kept history
    /// unreadable; live decisions use [`verify`](Self::verify).
    pub(crate) fn verify_recorded(
        signed: &wire::SignedConsentReceipt,
        org: &OrgTrust,
    ) -> Result<Self, ConsentError> {
        let (receipt, short) = decode_parts(signed)?;
        let signer_wire = signed.signer.as_ref().ok_or(ConsentError::Malformed)?;
        let signer = DeviceCertificate::verify(signer_wire, &org.root(), receipt.event_time)
            .map_err(|_| ConsentError::BadSignature { receipt: short })?;
        Self::finish(signed, receipt, signer, short)
    }

    fn finish(
        signed: &wire::SignedConsentReceipt,
        receipt: wire::ConsentReceipt,
        signer: DeviceCertificate,
        short: ShortId,
    ) -> Result<Self, ConsentError> {
        if signer.role() == Role::Ambassador {
            return Err(ConsentError::BadSignature { receipt: short });
        }
        if !identity::verify_labelled(
            signer.verifying_key(),
            LABEL_CONSENT_RECEIPT,
            &signed.receipt,
            &signed.signature,
        ) {
            return Err(ConsentError::BadSignature { receipt: short });
        }
        check_fields(&receipt)?;
        Self::from_parts(signed.clone(), receipt, signer)
    }

    /// The receipt id.
    pub fn id(&self) -> ReceiptId {
        self.id
    }

    /// The receipt hash over the exact signed bytes (`ReceiptRef.receipt_sha256`,
    /// docs/PROTOCOL.md §12.2).
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The receipt's fields.
    pub fn receipt(&self) -> &wire::ConsentReceipt {
        &self.receipt
    }

    /// The signed wire form, as received or issued.
    pub fn signed(&self) -> &wire::SignedConsentReceipt {
        &self.signed
    }

    /// The certificate of the device that signed it.
    pub fn signer(&self) -> &DeviceCertificate {
        &self.signer
    }

    /// The organisation root of the signer (the controller that recorded consent).
    pub fn org(&self) -> OrgRootPublicKey {
        self.signer.org_root_key()
    }

    /// The recorded state.
    pub fn state(&self) -> wire::ConsentState {
        self.receipt.state()
    }

    /// The receipt this one supersedes, if any.
    pub fn supersedes(&self) -> Option<ReceiptId> {
        ReceiptId::from_slice(&self.receipt.supersedes)
    }

    /// A reference to this receipt for a referral offer.
    pub fn reference(&self) -> wire::ReceiptRef {
        wire::ReceiptRef {
            receipt_id: self.id.as_bytes().to_vec(),
            receipt_sha256: self.hash.to_vec(),
        }
    }
}

/// Structural validation and bounded decoding; nothing decoded is trusted before the signature
/// check.
fn decode_parts(
    signed: &wire::SignedConsentReceipt,
) -> Result<(wire::ConsentReceipt, ShortId), ConsentError> {
    signed.validate().map_err(|_| ConsentError::Malformed)?;
    let receipt = decode::consent_receipt(&signed.receipt).map_err(|_| ConsentError::Malformed)?;
    let short = ReceiptId::from_slice(&receipt.receipt_id)
        .map(|id| id.short())
        .ok_or(ConsentError::Malformed)?;
    Ok((receipt, short))
}

/// The receipt hash (docs/PROTOCOL.md §12.2): SHA-256 over a label and the exact signed bytes,
/// each length-prefixed, so that it never depends on how a protobuf encoder re-encodes the
/// message (unknown fields, field order):
///
/// ```text
/// SHA-256( "handover/1 consent-receipt-hash" || lp(receipt)
///          || lp(signer.certificate) || lp(signer.signature) || lp(signature) )
/// ```
pub(crate) fn receipt_hash(signed: &wire::SignedConsentReceipt) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(LABEL_RECEIPT_HASH);
    update_lp(&mut h, &signed.receipt);
    let (certificate, root_signature) = signed.signer.as_ref().map_or((&[][..], &[][..]), |s| {
        (&s.certificate[..], &s.signature[..])
    });
    update_lp(&mut h, certificate);
    update_lp(&mut h, root_signature);
    update_lp(&mut h, &signed.signature);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vector, computed independently by `tests/data/referral_vectors.py`.
    #[test]
    fn receipt_hash_known_answer() {
        let signed = wire::SignedConsentReceipt {
            receipt: b"receipt".to_vec(),
            signer: Some(wire::SignedDeviceCertificate {
                certificate: b"certificate".to_vec(),
                signature: vec![0x33; 64],
            }),
            signature: vec![0x44; 64],
        };
        assert_eq!(
            hex::encode(receipt_hash(&signed)),
            "a9022d6537219defa7ea48b7f032b3a9156907da30a93c37a700f131c36321a6"
        );
    }
}
