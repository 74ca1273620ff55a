//! The hash-chained timeline both sides keep (docs/PROTOCOL.md §11.5).
//!
//! Entry 0 is the signed offer; entry *n* ≥ 1 is the *n*-th signed control message, whose
//! `sequence` is *n* and whose `prev_hash` is the hash of entry *n − 1*. The entry hash is
//!
//! ```text
//! SHA-256( "handover/1 timeline" || u64be(sequence) || prev_hash (32)
//!          || SHA-256(payload) (32) || lp(signature)
//!          || lp(signer.certificate) || lp(signer.signature) || SHA-256(summary) (32) )
//! ```
//!
//! where `lp(x) = u32be(len(x)) || x`, `payload` is the exact signed bytes
//! (`SignedReferralOffer.offer` or `SignedControl.control`), `signer` the signer's
//! `SignedDeviceCertificate` as received, `summary` the entry's content-free summary (the
//! UTF-8 JSON of docs/PROTOCOL.md §11.6, canonical per RFC 8785) and `prev_hash` of entry 0 is
//! 32 zero bytes. Hashing the payload's digest rather than the payload lets a client erase case
//! content (the offer's purpose, notes, questions) from its timeline while keeping the chain:
//! an erased entry keeps its payload digest, signature, signer and summary, all covered by the
//! hash.

use std::fmt;

use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::control::{self, Trust, action_name, side_of, transition_of};
use super::lifecycle::{ActorInfo, Lifecycle, Side};
use super::{ReferralError, ReferralId, section_name};
use crate::consent::{ReceiptId, SignedReceipt};
use crate::identity::{OrgRootPublicKey, OrgTrust, Role};

/// Hash label of a timeline entry.
pub const LABEL_TIMELINE: &[u8] = b"handover/1 timeline";

/// One signed entry: the offer (sequence 0) or a control message.
#[derive(Clone, PartialEq)]
pub struct TimelineEntry {
    pub(crate) sequence: u64,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) payload_sha256: [u8; 32],
    pub(crate) signature: Vec<u8>,
    pub(crate) signer: wire::SignedDeviceCertificate,
    pub(crate) hash: [u8; 32],
    pub(crate) summary: String,
}

impl fmt::Debug for TimelineEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            sequence,
            payload,
            payload_sha256: _,
            signature: _,
            signer: _,
            hash,
            summary: _,
        } = self;
        f.debug_struct("TimelineEntry")
            .field("sequence", sequence)
            .field("hash", &hex::encode(&hash[..4]))
            .field("erased", &payload.is_none())
            .finish_non_exhaustive()
    }
}

impl TimelineEntry {
    /// Position in the timeline.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The entry hash.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// When the step was taken (the offer's `created_at` or the control's `at`, Unix seconds),
    /// as its content-free summary records it (kept after erasure).
    pub fn at(&self) -> Option<u64> {
        serde_json::from_str::<Value>(&self.summary)
            .ok()?
            .get("at")?
            .as_u64()
    }

    /// The exact signed bytes (encoded offer or control), unless erased.
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }

    /// For tests and forensic tools: replace the signed bytes (hashes are left as they were).
    #[doc(hidden)]
    pub fn tamper_payload(&mut self, payload: Vec<u8>) {
        self.payload = Some(payload);
    }

    fn new(
        sequence: u64,
        prev_hash: &[u8; 32],
        payload: &[u8],
        signature: &[u8],
        signer: Option<&wire::SignedDeviceCertificate>,
    ) -> Self {
        let payload_sha256: [u8; 32] = Sha256::digest(payload).into();
        let signer = signer.cloned().unwrap_or_default();
        let summary = summarise(sequence, payload, &signer).to_string();
        Self {
            sequence,
            payload: Some(payload.to_vec()),
            payload_sha256,
            hash: entry_hash(
                sequence,
                prev_hash,
                &payload_sha256,
                signature,
                &signer,
                &summary,
            ),
            signature: signature.to_vec(),
            signer,
            summary,
        }
    }
}

/// Feeds `u32be(len(bytes)) || bytes` to `h` (the `lp()` of docs/PROTOCOL.md §11.5 and
/// §12.2). Lengths are bounded by the message limits, far below 2^32.
pub(crate) fn update_lp(h: &mut Sha256, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    h.update(len.to_be_bytes());
    h.update(bytes);
}

/// Computes an entry hash (docs/PROTOCOL.md §11.5).
pub(crate) fn entry_hash(
    sequence: u64,
    prev_hash: &[u8; 32],
    payload_sha256: &[u8; 32],
    signature: &[u8],
    signer: &wire::SignedDeviceCertificate,
    summary: &str,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(LABEL_TIMELINE);
    h.update(sequence.to_be_bytes());
    h.update(prev_hash);
    h.update(payload_sha256);
    update_lp(&mut h, signature);
    update_lp(&mut h, &signer.certificate);
    update_lp(&mut h, &signer.signature);
    h.update(Sha256::digest(summary.as_bytes()));
    h.finalize().into()
}

/// The hash-chained record of a referral's signed steps.
#[derive(Clone, PartialEq, Default)]
pub struct Timeline {
    pub(crate) entries: Vec<TimelineEntry>,
}

impl fmt::Debug for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { entries } = self;
        f.debug_struct("Timeline")
            .field("entries", &entries.len())
            .field("head", &hex::encode(&self.head()[..4]))
            .finish()
    }
}

impl Timeline {
    pub(crate) fn start(signed: &wire::SignedReferralOffer) -> Self {
        Self {
            entries: vec![TimelineEntry::new(
                0,
                &[0; 32],
                &signed.offer,
                &signed.signature,
                signed.signer.as_ref(),
            )],
        }
    }

    pub(crate) fn push(&mut self, signed: &wire::SignedControl) {
        let entry = TimelineEntry::new(
            self.len(),
            &self.head(),
            &signed.control,
            &signed.signature,
            signed.signer.as_ref(),
        );
        self.entries.push(entry);
    }

    /// Appends a signed control without any check, for tests and forensic tools that need to
    /// show that [`verify`](Self::verify) catches what live checks would have refused.
    #[doc(hidden)]
    pub fn append_unverified(&mut self, signed: &wire::SignedControl) {
        self.push(signed);
    }

    /// Drops the signed bytes of every entry (case content such as the offer's purpose, notes,
    /// questions), keeping digests, signatures, signers and content-free summaries, so the
    /// chain still verifies with [`verify_chain`](Self::verify_chain).
    pub(crate) fn erase_content(&mut self) {
        for entry in &mut self.entries {
            entry.payload = None;
        }
    }

    /// Whether any entry's content was erased.
    pub fn is_erased(&self) -> bool {
        self.entries.iter().any(|e| e.payload.is_none())
    }

    /// Checks hashes, links and sequence numbers only (works after erasure): the entries are
    /// complete, in order and unmodified as far as their digests go.
    pub fn verify_chain(&self) -> Result<(), ReferralError> {
        let mut prev = [0u8; 32];
        for (index, entry) in self.entries.iter().enumerate() {
            let sequence = index as u64;
            let broken = |problem| ReferralError::TimelineBroken { sequence, problem };
            if entry.sequence != sequence {
                return Err(broken("sequence"));
            }
            if let Some(payload) = &entry.payload {
                let digest: [u8; 32] = Sha256::digest(payload).into();
                if !bool::from(digest.ct_eq(&entry.payload_sha256)) {
                    return Err(broken("hash"));
                }
                // While the content is there, the summary must be the one it yields.
                let summary = summarise(sequence, payload, &entry.signer).to_string();
                if summary != entry.summary {
                    return Err(broken("summary"));
                }
            }
            let expected = entry_hash(
                sequence,
                &prev,
                &entry.payload_sha256,
                &entry.signature,
                &entry.signer,
                &entry.summary,
            );
            if !bool::from(expected.ct_eq(&entry.hash)) {
                return Err(broken("hash"));
            }
            prev = entry.hash;
        }
        if self.entries.is_empty() {
            return Err(ReferralError::TimelineBroken {
                sequence: 0,
                problem: "empty",
            });
        }
        Ok(())
    }

    /// The hash of the last entry (the next control's `prev_hash`).
    pub fn head(&self) -> [u8; 32] {
        self.entries.last().map_or([0; 32], |e| e.hash)
    }

    /// The number of entries (the next control's `sequence`).
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[TimelineEntry] {
        &self.entries
    }

    /// Mutable entries, for tests and forensic tools that need to show tampering is detected.
    #[doc(hidden)]
    pub fn entries_mut(&mut self) -> &mut Vec<TimelineEntry> {
        &mut self.entries
    }

    /// Verifies the whole timeline: every hash and link, every signature by a device of the
    /// organisation whose turn it is (certificate valid at the entry's time), and that the
    /// sequence of steps is a legal lifecycle. Tampering with, reordering or dropping any entry
    /// fails.
    pub fn verify(
        &self,
        sender: &OrgRootPublicKey,
        receiver: &OrgRootPublicKey,
    ) -> Result<(), ReferralError> {
        self.verify_replay(sender, receiver).map(|_| ())
    }

    /// [`verify`](Self::verify), returning the state the verified steps lead to.
    pub(crate) fn verify_replay(
        &self,
        sender: &OrgRootPublicKey,
        receiver: &OrgRootPublicKey,
    ) -> Result<super::ReferralState, ReferralError> {
        let broken = |sequence: u64, problem: &'static str| ReferralError::TimelineBroken {
            sequence,
            problem,
        };
        self.verify_chain()?;
        let first = self.entries.first().ok_or(broken(0, "empty"))?;
        let payload = |e: &TimelineEntry| {
            e.payload
                .clone()
                .ok_or(broken(e.sequence, "content erased"))
        };
        let first_payload = payload(first)?;
        let offer = decode::referral_offer(&first_payload).map_err(|_| broken(0, "malformed"))?;
        let referral_id =
            ReferralId::from_slice(&offer.referral_id).ok_or(broken(0, "malformed"))?;
        if first.sequence != 0 {
            return Err(broken(0, "sequence"));
        }
        let offer_from = offer.from.as_ref().map(|p| p.org_root_key.as_slice());
        let offer_to = offer.to.as_ref().map(|p| p.org_root_key.as_slice());
        if offer_from != Some(&sender.to_bytes()[..]) || offer_to != Some(&receiver.to_bytes()[..])
        {
            return Err(broken(0, "organisations"));
        }
        let cert = control::verify_signed(
            "offer",
            Some(&first.signer),
            control::LABEL_REFERRAL_OFFER,
            &first_payload,
            &first.signature,
            Trust::Archive {
                root: sender,
                at: offer.created_at,
            },
        )
        .map_err(|_| broken(0, "signature"))?;
        let is_override = matches!(
            offer.consent.as_ref().and_then(|c| c.basis.as_ref()),
            Some(wire::consent_ref::Basis::Override(_))
        );
        if is_override && cert.role() != Role::Admin {
            return Err(broken(0, "override without permission"));
        }
        let mut lifecycle = Lifecycle::received(offer.kind());
        let mut prev = first.hash;
        for (index, entry) in self.entries.iter().enumerate().skip(1) {
            let sequence = index as u64;
            if entry.sequence != sequence {
                return Err(broken(sequence, "sequence"));
            }
            let entry_payload = payload(entry)?;
            let control = decode::referral_control(&entry_payload)
                .map_err(|_| broken(sequence, "malformed"))?;
            if control.referral_id != referral_id.as_bytes() {
                return Err(broken(sequence, "referral id"));
            }
            if control.sequence != sequence {
                return Err(broken(sequence, "sequence"));
            }
            if !bool::from(control.prev_hash.ct_eq(&prev)) {
                return Err(broken(sequence, "link"));
            }
            let action = control
                .action
                .as_ref()
                .ok_or(broken(sequence, "malformed"))?;
            let side = side_of(action);
            let root = match side {
                Side::Sender => sender,
                Side::Receiver => receiver,
            };
            let cert = control::verify_signed(
                "control message",
                Some(&entry.signer),
                control::LABEL_REFERRAL_CONTROL,
                &entry_payload,
                &entry.signature,
                Trust::Archive {
                    root,
                    at: control.at,
                },
            )
            .map_err(|_| broken(sequence, "signature"))?;
            let consent_state = match action {
                wire::referral_control::Action::ConsentChanged(c) => {
                    let receipt = c.receipt.as_ref().ok_or(broken(sequence, "malformed"))?;
                    let verified = SignedReceipt::verify_recorded(receipt, &OrgTrust::new(*sender))
                        .map_err(|_| broken(sequence, "consent receipt"))?;
                    Some(verified.state())
                }
                _ => None,
            };
            let transition = transition_of(action, consent_state);
            lifecycle = lifecycle
                .apply(
                    transition,
                    ActorInfo {
                        side,
                        role: cert.role(),
                    },
                )
                .map_err(|_| broken(sequence, "transition not allowed"))?;
            prev = entry.hash;
        }
        Ok(lifecycle.state().clone())
    }

    /// The audit trail as JSON: states, times, acting devices and organisations, reason codes,
    /// legal bases, receipt short ids and hashes. No case content: no purpose text, notes,
    /// questions, answers, withdrawal reasons, override justifications, case references or
    /// body data (docs/PROTOCOL.md §11.6). Call [`verify`](Self::verify) first.
    pub fn export_json(&self) -> Value {
        let mut prev = [0u8; 32];
        let mut referral = Value::Null;
        let mut entries = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            let mut item: Value =
                serde_json::from_str(&entry.summary).unwrap_or_else(|_| json!({}));
            if entry.sequence == 0 {
                referral = item.get("referral_id").cloned().unwrap_or(Value::Null);
            }
            // The acting device's name from its certificate (not hashed: the certificate is).
            if let Ok(cert) = decode::device_certificate(&entry.signer.certificate)
                && let Some(actor) = item.get_mut("actor").and_then(Value::as_object_mut)
            {
                actor.insert("name".to_owned(), json!(cert.label));
            }
            set(&mut item, "sequence", json!(entry.sequence));
            set(&mut item, "hash", json!(hex::encode(entry.hash)));
            set(&mut item, "prev_hash", json!(hex::encode(prev)));
            set(&mut item, "content_erased", json!(entry.payload.is_none()));
            // Every other input of the entry hash (§11.5), so the chain can be recomputed
            // from the export alone.
            set(
                &mut item,
                "payload_sha256",
                json!(hex::encode(entry.payload_sha256)),
            );
            set(&mut item, "signature", json!(hex::encode(&entry.signature)));
            set(
                &mut item,
                "signer",
                json!({
                    "certificate": hex::encode(&entry.signer.certificate),
                    "signature": hex::encode(&entry.signer.signature),
                }),
            );
            prev = entry.hash;
            entries.push(item);
        }
        json!({
            "format": "handover-timeline/1",
            "referral_id": referral,
            "head": hex::encode(self.head()),
            "entries": entries,
        })
    }
}

/// The content-free summary of an entry (computed when it is appended).
fn summarise(sequence: u64, payload: &[u8], signer: &wire::SignedDeviceCertificate) -> Value {
    let actor = decode::device_certificate(&signer.certificate)
        .map(|c| {
            json!({
                "org_root_key": hex::encode(&c.org_root_key),
                "device_id": hex::encode(&c.device_id),
                "role": c.role().as_str_name().trim_start_matches("ROLE_"),
            })
        })
        .unwrap_or(Value::Null);
    let mut item = json!({ "actor": actor });
    if sequence == 0 {
        if let Ok(offer) = decode::referral_offer(payload) {
            set(
                &mut item,
                "referral_id",
                json!(hex::encode(&offer.referral_id)),
            );
            offer_details(&mut item, &offer);
        }
    } else if let Ok(control) = decode::referral_control(payload) {
        control_details(&mut item, &control);
    }
    item
}

fn set(item: &mut Value, key: &str, value: Value) {
    if let Some(map) = item.as_object_mut() {
        map.insert(key.to_owned(), value);
    }
}

fn offer_details(item: &mut Value, offer: &wire::ReferralOffer) {
    set(item, "action", json!("OFFER"));
    set(item, "at", json!(offer.created_at));
    set(
        item,
        "kind",
        json!(
            offer
                .kind()
                .as_str_name()
                .trim_start_matches("REFERRAL_KIND_")
        ),
    );
    set(
        item,
        "priority",
        json!(
            offer
                .priority()
                .as_str_name()
                .trim_start_matches("PRIORITY_")
        ),
    );
    let services: Vec<&str> = offer
        .services_requested()
        .map(|s| s.as_str_name().trim_start_matches("SERVICE_"))
        .collect();
    set(item, "services", json!(services));
    let sections: Vec<&str> = offer.sections_included().map(section_name).collect();
    set(item, "sections", json!(sections));
    set(item, "offer_expires_at", json!(offer.offer_expires_at));
    set(item, "retain_until", json!(offer.retain_until));
    let consent = match offer.consent.as_ref().and_then(|c| c.basis.as_ref()) {
        Some(wire::consent_ref::Basis::Receipt(r)) => json!({
            "receipt": ReceiptId::from_slice(&r.receipt_id).map(|id| id.short().to_string()),
            "receipt_sha256": hex::encode(&r.receipt_sha256),
        }),
        Some(wire::consent_ref::Basis::Override(o)) => json!({
            "override": true,
            "legal_basis": o.legal_basis,
        }),
        None => Value::Null,
    };
    set(item, "consent", consent);
}

fn control_details(item: &mut Value, control: &wire::ReferralControl) {
    use wire::referral_control::Action as A;
    set(item, "at", json!(control.at));
    let Some(action) = control.action.as_ref() else {
        return;
    };
    set(item, "action", json!(action_name(action)));
    match action {
        A::Decline(d) => set(
            item,
            "reason",
            json!(
                d.reason()
                    .as_str_name()
                    .trim_start_matches("DECLINE_REASON_")
            ),
        ),
        A::Complete(c) => {
            set(item, "successful", json!(c.successful));
            if !c.successful {
                set(
                    item,
                    "reason",
                    json!(
                        c.reason()
                            .as_str_name()
                            .trim_start_matches("NOT_SUCCESSFUL_REASON_")
                    ),
                );
            }
        }
        A::RequestInfo(r) => set(item, "questions", json!(r.questions.len())),
        A::ProvideInfo(p) => set(item, "answers", json!(p.answers.len())),
        A::Update(u) => {
            let kind = match &u.update {
                Some(wire::update::Update::Appointment(_)) => "appointment",
                Some(wire::update::Update::ContactMadeAt(_)) => "contact_made",
                None => "none",
            };
            set(item, "update", json!(kind));
        }
        A::ConsentChanged(c) => {
            let receipt = c
                .receipt
                .as_ref()
                .and_then(|r| decode::consent_receipt(&r.receipt).ok());
            if let Some(r) = receipt {
                set(
                    item,
                    "receipt",
                    json!(ReceiptId::from_slice(&r.receipt_id).map(|id| id.short().to_string())),
                );
                set(
                    item,
                    "supersedes",
                    json!(ReceiptId::from_slice(&r.supersedes).map(|id| id.short().to_string())),
                );
                set(
                    item,
                    "consent_state",
                    json!(r.state().as_str_name().trim_start_matches("CONSENT_STATE_")),
                );
            }
        }
        A::PurgeConfirmed(p) => {
            set(item, "scope", json!(p.scope));
            set(item, "purged_at", json!(p.purged_at));
            if !p.retained_under_exception.is_empty() {
                set(
                    item,
                    "retained_under_exception",
                    json!(p.retained_under_exception),
                );
            }
        }
        A::Delivered(_)
        | A::Acknowledged(_)
        | A::Accept(_)
        | A::StartService(_)
        | A::Withdraw(_)
        | A::Expired(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vector, computed independently by `tests/data/referral_vectors.py`.
    #[test]
    fn entry_hash_known_answer() {
        let digest: [u8; 32] = Sha256::digest(b"payload").into();
        let signer = wire::SignedDeviceCertificate {
            certificate: b"certificate".to_vec(),
            signature: vec![0x33; 64],
        };
        let summary = r#"{"action":"ACCEPT","actor":null,"at":1795251600}"#;
        let hash = entry_hash(1, &[0x11; 32], &digest, &[0x22; 64], &signer, summary);
        assert_eq!(
            hex::encode(hash),
            "3e42c273b1d754a824704fe1d64d6dc4157acf666f52ab1159bdbd740a0daf42"
        );
        // Each of the signer and the summary is covered.
        let other_signer = wire::SignedDeviceCertificate {
            certificate: b"certificatf".to_vec(),
            ..signer.clone()
        };
        assert_ne!(
            entry_hash(1, &[0x11; 32], &digest, &[0x22; 64], &other_signer, summary),
            hash
        );
        let other_summary = r#"{"action":"DECLINE","actor":null,"at":1795251600}"#;
        assert_ne!(
            entry_hash(1, &[0x11; 32], &digest, &[0x22; 64], &signer, other_summary),
            hash
        );
    }
}
