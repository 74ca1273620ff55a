//! Serialising sender and receiver records for the encrypted local store.
//!
//! The layout is a private, versioned protobuf message (never sent on the wire). Secrets in it
//! (section keys, decrypted sections) are zeroized in every intermediate buffer; the returned
//! bytes are [`Zeroizing`] and must only be written to the encrypted store.

use std::collections::BTreeMap;

use handover_proto::e2e::v1 as wire;
use prost::Message;
use zeroize::{Zeroize, Zeroizing};

use super::lifecycle::{Closed, Lifecycle, Outcome, ReferralState};
use super::receiver::{OpenedBody, ReceiverReferral};
use super::seal::{SealedSection, SectionKey};
use super::sender::SenderReferral;
use super::shared::{Core, Meta};
use super::timeline::{Timeline, TimelineEntry};
use super::{ReferralError, ReferralId, Side};
use crate::consent::SignedReceipt;
use crate::identity::{OrgRootPublicKey, OrgTrust};

/// Version of the record layout.
const RECORD_VERSION: u32 = 1;

#[derive(Clone, PartialEq, Message)]
struct MetaRecord {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
    #[prost(int32, tag = "2")]
    kind: i32,
    #[prost(bytes = "vec", tag = "3")]
    sender_root: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    receiver_root: Vec<u8>,
    #[prost(uint64, tag = "5")]
    offer_expires_at: u64,
    #[prost(uint64, tag = "6")]
    retain_until: u64,
}

#[derive(Clone, PartialEq, Message)]
struct StateRecord {
    #[prost(string, tag = "1")]
    name: String,
    /// Decline or not-successful reason code.
    #[prost(int32, tag = "2")]
    reason: i32,
    #[prost(bool, tag = "3")]
    successful: bool,
    #[prost(string, tag = "4")]
    closed: String,
    #[prost(string, tag = "5")]
    legal_basis: String,
}

#[derive(Clone, PartialEq, Message)]
struct EntryRecord {
    #[prost(uint64, tag = "1")]
    sequence: u64,
    #[prost(bytes = "vec", optional, tag = "2")]
    payload: Option<Vec<u8>>,
    #[prost(bytes = "vec", tag = "3")]
    payload_sha256: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    signature: Vec<u8>,
    #[prost(message, optional, tag = "5")]
    signer: Option<wire::SignedDeviceCertificate>,
    #[prost(bytes = "vec", tag = "6")]
    hash: Vec<u8>,
    #[prost(string, tag = "7")]
    summary: String,
}

#[derive(Clone, PartialEq, Message)]
struct SectionRecord {
    #[prost(int32, tag = "1")]
    section: i32,
    /// Ciphertext (sender) or plaintext (receiver).
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    key: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct RecordV1 {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(bool, tag = "2")]
    sender: bool,
    #[prost(message, optional, tag = "3")]
    meta: Option<MetaRecord>,
    #[prost(message, optional, tag = "4")]
    state: Option<StateRecord>,
    #[prost(message, repeated, tag = "5")]
    timeline: Vec<EntryRecord>,
    /// Sender: the encoded `SignedReferralOffer`.
    #[prost(bytes = "vec", tag = "6")]
    signed_offer: Vec<u8>,
    /// Receiver: the encoded `ReferralOffer` unless erased.
    #[prost(bytes = "vec", optional, tag = "7")]
    offer: Option<Vec<u8>>,
    #[prost(message, optional, tag = "8")]
    receipt: Option<wire::SignedConsentReceipt>,
    #[prost(message, repeated, tag = "9")]
    sections: Vec<SectionRecord>,
    #[prost(bool, tag = "10")]
    has_body: bool,
    #[prost(string, optional, tag = "11")]
    legal_hold: Option<String>,
}

impl Drop for RecordV1 {
    fn drop(&mut self) {
        for s in &mut self.sections {
            s.data.zeroize();
            s.key.zeroize();
        }
    }
}

fn malformed() -> ReferralError {
    ReferralError::Malformed {
        what: "stored record",
    }
}

fn closed_name(c: Closed) -> &'static str {
    match c {
        Closed::Expired => "EXPIRED",
        Closed::Withdrawn => "WITHDRAWN",
        Closed::ConsentRevoked => "CONSENT_REVOKED",
        Closed::Declined => "DECLINED",
        Closed::RetentionEnded => "RETENTION_ENDED",
    }
}

fn closed_from(name: &str) -> Result<Closed, ReferralError> {
    Ok(match name {
        "EXPIRED" => Closed::Expired,
        "WITHDRAWN" => Closed::Withdrawn,
        "CONSENT_REVOKED" => Closed::ConsentRevoked,
        "DECLINED" => Closed::Declined,
        "RETENTION_ENDED" => Closed::RetentionEnded,
        _ => return Err(malformed()),
    })
}

fn state_record(state: &ReferralState) -> StateRecord {
    let mut r = StateRecord {
        name: state.name().to_owned(),
        ..StateRecord::default()
    };
    match state {
        ReferralState::Completed(Outcome::Successful) => r.successful = true,
        ReferralState::Completed(Outcome::NotSuccessful(reason)) => r.reason = *reason as i32,
        ReferralState::Declined(reason) => r.reason = *reason as i32,
        ReferralState::PurgeConfirmed(c) => r.closed = closed_name(*c).to_owned(),
        ReferralState::RetainedUnderException { after, legal_basis } => {
            r.closed = closed_name(*after).to_owned();
            r.legal_basis = legal_basis.clone();
        }
        _ => {}
    }
    r
}

fn state_from(r: &StateRecord) -> Result<ReferralState, ReferralError> {
    Ok(match r.name.as_str() {
        "DRAFT" => ReferralState::Draft,
        "READY" => ReferralState::Ready,
        "SENT" => ReferralState::Sent,
        "DELIVERED" => ReferralState::Delivered,
        "ACKNOWLEDGED" => ReferralState::Acknowledged,
        "INFO_REQUESTED" => ReferralState::InfoRequested,
        "ACCEPTED" => ReferralState::Accepted,
        "IN_SERVICE" => ReferralState::InService,
        "COMPLETED" if r.successful => ReferralState::Completed(Outcome::Successful),
        "COMPLETED" => ReferralState::Completed(Outcome::NotSuccessful(
            wire::NotSuccessfulReason::try_from(r.reason).map_err(|_| malformed())?,
        )),
        "DECLINED" => ReferralState::Declined(
            wire::DeclineReason::try_from(r.reason).map_err(|_| malformed())?,
        ),
        "EXPIRED" => ReferralState::Expired,
        "WITHDRAWN" => ReferralState::Withdrawn,
        "CONSENT_REVOKED" => ReferralState::ConsentRevoked,
        "PURGE_CONFIRMED" => ReferralState::PurgeConfirmed(closed_from(&r.closed)?),
        "RETAINED_UNDER_EXCEPTION" => ReferralState::RetainedUnderException {
            after: closed_from(&r.closed)?,
            legal_basis: r.legal_basis.clone(),
        },
        _ => return Err(malformed()),
    })
}

/// Encodes a lifecycle state as stored records hold it (a private protobuf layout), for the
/// engine's list summaries.
pub(crate) fn encode_state(state: &ReferralState) -> Vec<u8> {
    state_record(state).encode_to_vec()
}

/// Decodes [`encode_state`].
pub(crate) fn decode_state(bytes: &[u8]) -> Result<ReferralState, ReferralError> {
    state_from(&StateRecord::decode(bytes).map_err(|_| malformed())?)
}

fn core_record(core: &Core, sender: bool) -> RecordV1 {
    let m = &core.meta;
    RecordV1 {
        version: RECORD_VERSION,
        sender,
        meta: Some(MetaRecord {
            id: m.id.as_bytes().to_vec(),
            kind: m.kind as i32,
            sender_root: m.sender_root.to_vec(),
            receiver_root: m.receiver_root.to_vec(),
            offer_expires_at: m.offer_expires_at,
            retain_until: m.retain_until,
        }),
        state: Some(state_record(core.lifecycle.state())),
        timeline: core
            .timeline
            .entries
            .iter()
            .map(|e| EntryRecord {
                sequence: e.sequence,
                payload: e.payload.clone(),
                payload_sha256: e.payload_sha256.to_vec(),
                signature: e.signature.clone(),
                signer: Some(e.signer.clone()),
                hash: e.hash.to_vec(),
                summary: e.summary.clone(),
            })
            .collect(),
        signed_offer: Vec::new(),
        offer: None,
        receipt: None,
        sections: Vec::new(),
        has_body: false,
        legal_hold: None,
    }
}

fn array32(bytes: &[u8]) -> Result<[u8; 32], ReferralError> {
    bytes.try_into().map_err(|_| malformed())
}

fn core_from(record: &RecordV1, side: Side) -> Result<Core, ReferralError> {
    let m = record.meta.as_ref().ok_or_else(malformed)?;
    let kind = wire::ReferralKind::try_from(m.kind).map_err(|_| malformed())?;
    let meta = Meta {
        id: ReferralId::from_slice(&m.id).ok_or_else(malformed)?,
        kind,
        sender_root: array32(&m.sender_root)?,
        receiver_root: array32(&m.receiver_root)?,
        offer_expires_at: m.offer_expires_at,
        retain_until: m.retain_until,
    };
    let state = state_from(record.state.as_ref().ok_or_else(malformed)?)?;
    let entries = record
        .timeline
        .iter()
        .map(|e| {
            Ok(TimelineEntry {
                sequence: e.sequence,
                payload: e.payload.clone(),
                payload_sha256: array32(&e.payload_sha256)?,
                signature: e.signature.clone(),
                signer: e.signer.clone().unwrap_or_default(),
                hash: array32(&e.hash)?,
                summary: e.summary.clone(),
            })
        })
        .collect::<Result<Vec<_>, ReferralError>>()?;
    let timeline = Timeline { entries };
    // A stored record is only trusted if its chain is intact.
    timeline.verify_chain()?;
    Ok(Core {
        meta,
        side,
        lifecycle: Lifecycle::restore(kind, state),
        timeline,
    })
}

fn decode_record(bytes: &[u8], sender: bool) -> Result<RecordV1, ReferralError> {
    let record = RecordV1::decode(bytes).map_err(|_| malformed())?;
    if record.version != RECORD_VERSION || record.sender != sender {
        return Err(malformed());
    }
    Ok(record)
}

fn stored_receipt(
    receipt: Option<&wire::SignedConsentReceipt>,
    sender_root: &[u8; 32],
) -> Result<Option<SignedReceipt>, ReferralError> {
    let Some(signed) = receipt else {
        return Ok(None);
    };
    let root = OrgRootPublicKey::from_bytes(sender_root).map_err(|_| malformed())?;
    // Re-verified against the root at the receipt's own time (revocations since then do not
    // make a stored record unreadable).
    Ok(Some(
        SignedReceipt::verify_recorded(signed, &OrgTrust::new(root)).map_err(|_| malformed())?,
    ))
}

impl SenderReferral {
    /// Serialises the record (sealed sections and their keys included) for the encrypted store.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut record = core_record(&self.core, true);
        record.signed_offer = self.signed_offer.encode_to_vec();
        record.receipt = self.receipt.as_ref().map(|r| r.signed().clone());
        record.sections = self
            .sealed
            .iter()
            .map(|s| SectionRecord {
                section: s.section as i32,
                data: s.ciphertext.clone(),
                key: s.key.expose().to_vec(),
            })
            .collect();
        Zeroizing::new(record.encode_to_vec())
    }

    /// Restores a record written by [`to_bytes`](Self::to_bytes); checks the timeline chain
    /// and the receipt signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReferralError> {
        let record = decode_record(bytes, true)?;
        let core = core_from(&record, Side::Sender)?;
        let signed_offer = wire::SignedReferralOffer::decode(record.signed_offer.as_slice())
            .map_err(|_| malformed())?;
        let offer = super::control::decode_offer(&signed_offer)?;
        let receipt = stored_receipt(record.receipt.as_ref(), &core.meta.sender_root)?;
        let mut sealed = Vec::with_capacity(record.sections.len());
        for s in &record.sections {
            sealed.push(SealedSection {
                section: wire::Section::try_from(s.section).map_err(|_| malformed())?,
                ciphertext: s.data.clone(),
                key: SectionKey::from_slice(&s.key).ok_or_else(malformed)?,
            });
        }
        Ok(Self {
            core,
            signed_offer,
            offer,
            receipt,
            sealed,
        })
    }
}

impl ReceiverReferral {
    /// Serialises the record (decrypted sections and keys included) for the encrypted store.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut record = core_record(&self.core, false);
        record.offer = self.offer.as_ref().map(Message::encode_to_vec);
        record.receipt = self.receipt.as_ref().map(|r| r.signed().clone());
        record.legal_hold = self.legal_hold.clone();
        if let Some(body) = &self.body {
            record.has_body = true;
            record.sections = body
                .sections
                .iter()
                .map(|(section, (plaintext, key))| SectionRecord {
                    section: *section as i32,
                    data: plaintext.to_vec(),
                    key: key.expose().to_vec(),
                })
                .collect();
        }
        Zeroizing::new(record.encode_to_vec())
    }

    /// Restores a record written by [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReferralError> {
        let record = decode_record(bytes, false)?;
        let core = core_from(&record, Side::Receiver)?;
        let offer = match &record.offer {
            Some(b) => Some(handover_proto::decode::referral_offer(b).map_err(|_| malformed())?),
            None => None,
        };
        let receipt = stored_receipt(record.receipt.as_ref(), &core.meta.sender_root)?;
        let body = if record.has_body {
            let mut sections = BTreeMap::new();
            for s in &record.sections {
                sections.insert(
                    wire::Section::try_from(s.section).map_err(|_| malformed())?,
                    (
                        Zeroizing::new(s.data.clone()),
                        SectionKey::from_slice(&s.key).ok_or_else(malformed)?,
                    ),
                );
            }
            Some(OpenedBody { sections })
        } else {
            None
        };
        Ok(Self {
            core,
            offer,
            receipt,
            body,
            legal_hold: record.legal_hold.clone(),
        })
    }
}
