//! What a client knows about receipts (supersession) and, on the sending side, which
//! organisation received which data under which receipt (for revocation fan-out, GDPR
//! Art. 17 and 19).

use std::collections::{BTreeMap, BTreeSet};

use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use prost::Message;
use subtle::ConstantTimeEq;

use super::{ConsentError, ReceiptId, SignedReceipt};
use crate::identity::{OrgRootPublicKey, OrgTrust};
use crate::referral::ReferralId;

/// A receipt's key in the registry: the organisation root of its signer (the controller that
/// recorded consent) and its id. Receipt ids are chosen by the signer, so an id alone names
/// nothing: two organisations may use the same id, by accident or to attack each other.
type ReceiptKey = ([u8; 32], ReceiptId);

fn key_of(receipt: &SignedReceipt) -> ReceiptKey {
    (receipt.org().to_bytes(), receipt.id())
}

fn revokes(state: wire::ConsentState) -> bool {
    matches!(
        state,
        wire::ConsentState::Withdrawn
            | wire::ConsentState::Expired
            | wire::ConsentState::Invalidated
    )
}

/// Receipts a client has verified, and which receipt supersedes which.
///
/// Receipts are keyed by (signer's organisation root, receipt id), so a receipt signed by one
/// trusted organisation can neither replace nor supersede another organisation's receipt
/// (docs/PROTOCOL.md §12.2). The consent gate asks it whether a receipt was superseded
/// (withdrawn, expired, invalidated or renewed); a receiver learns supersession from
/// CONSENT_CHANGED control messages.
#[derive(Clone, Debug, Default)]
pub struct ReceiptRegistry {
    receipts: BTreeMap<ReceiptKey, SignedReceipt>,
    superseded_by: BTreeMap<ReceiptKey, ReceiptId>,
}

impl ReceiptRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether [`insert`](Self::insert) would accept `receipt`, without changing anything.
    pub fn check_insert(&self, receipt: &SignedReceipt) -> Result<(), ConsentError> {
        let key = key_of(receipt);
        if let Some(known) = self.receipts.get(&key)
            && !bool::from(known.hash().ct_eq(receipt.hash()))
        {
            return Err(ConsentError::Conflict {
                receipt: receipt.id().short(),
            });
        }
        if let Some(old) = receipt.supersedes()
            && let Some(previous) = self.receipts.get(&(key.0, old))
            && !same_principal(previous, receipt)
        {
            return Err(ConsentError::SupersedesAnotherPrincipal {
                receipt: receipt.id().short(),
            });
        }
        Ok(())
    }

    /// Records a verified receipt and what it supersedes (docs/PROTOCOL.md §12.2, "Receipt
    /// registry"). The same receipt again is a no-op. Refused, changing nothing: a different
    /// receipt under a known (organisation, id) ([`ConsentError::Conflict`]), and a receipt
    /// superseding a known receipt of the same organisation recorded for another principal
    /// ([`ConsentError::SupersedesAnotherPrincipal`]). A receipt can only supersede receipts of
    /// its own organisation. If a receipt already has a successor, a second one replaces it
    /// only if it revokes consent and the first did not (a withdrawal is never hidden by a
    /// renewal).
    pub fn insert(&mut self, receipt: SignedReceipt) -> Result<(), ConsentError> {
        self.check_insert(&receipt)?;
        let key = key_of(&receipt);
        if let Some(old) = receipt.supersedes() {
            let old_key = (key.0, old);
            let replace = match self.superseded_by.get(&old_key) {
                None => true,
                Some(next) => {
                    *next != receipt.id()
                        && revokes(receipt.state())
                        && !self
                            .receipts
                            .get(&(key.0, *next))
                            .is_some_and(|n| revokes(n.state()))
                }
            };
            if replace {
                self.superseded_by.insert(old_key, receipt.id());
            }
        }
        self.receipts.entry(key).or_insert(receipt);
        Ok(())
    }

    /// A known receipt recorded by the organisation `org`.
    pub fn get(&self, org: &OrgRootPublicKey, id: &ReceiptId) -> Option<&SignedReceipt> {
        self.receipts.get(&(org.to_bytes(), *id))
    }

    /// The known receipt that directly supersedes `receipt`: one signed by the same
    /// organisation, for the same principal.
    pub fn superseded_by(&self, receipt: &SignedReceipt) -> Option<&SignedReceipt> {
        let key = key_of(receipt);
        self.superseded_by
            .get(&key)
            .and_then(|next| self.receipts.get(&(key.0, *next)))
            .filter(|next| same_principal(receipt, next))
    }

    /// The newest receipt in the chain starting at (`org`, `id`) (bounded walk).
    pub fn latest(&self, org: &OrgRootPublicKey, id: &ReceiptId) -> Option<&SignedReceipt> {
        let mut current = self.get(org, id)?;
        for _ in 0..self.receipts.len() {
            match self.superseded_by(current) {
                Some(next) => current = next,
                None => break,
            }
        }
        Some(current)
    }

    /// Every known receipt, ordered by organisation root and id.
    pub fn iter(&self) -> impl Iterator<Item = &SignedReceipt> {
        self.receipts.values()
    }
}

/// Whether two receipts were recorded for the same principal (`principal_ref`, constant time).
pub(crate) fn same_principal(a: &SignedReceipt, b: &SignedReceipt) -> bool {
    let a = a.receipt().principal_ref.as_bytes();
    let b = b.receipt().principal_ref.as_bytes();
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Where a recipient stands with erasure after a revocation.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PurgeStatus {
    /// No erasure requested.
    NotRequested,
    /// CONSENT_CHANGED (or WITHDRAW) sent at this time; no confirmation yet.
    Pending {
        /// When the request went out, Unix seconds.
        since: u64,
    },
    /// The recipient confirmed erasure.
    Confirmed {
        /// When, Unix seconds (the recipient's signed time).
        at: u64,
        /// Legal basis under which something was kept, if any.
        retained_under: Option<String>,
    },
}

/// One organisation that received data under a receipt.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Disclosure {
    /// The referral it came in.
    pub referral_id: ReferralId,
    /// The recipient organisation root key.
    pub recipient: [u8; 32],
    /// Which body sections were released (empty: the offer only).
    pub sections: BTreeSet<wire::Section>,
    /// When the offer was sent, Unix seconds.
    pub offered_at: u64,
    /// Erasure status.
    pub purge: PurgeStatus,
}

/// Per receipt: which referrals and recipients got which sections, and who has confirmed
/// erasure. Kept by the sending client.
#[derive(Clone, Debug, Default)]
pub struct DisclosureLedger {
    by_receipt: BTreeMap<ReceiptId, Vec<Disclosure>>,
}

impl DisclosureLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that an offer relying on `receipt` went to `recipient`.
    pub fn record_offer(
        &mut self,
        receipt: ReceiptId,
        referral_id: ReferralId,
        recipient: [u8; 32],
        at: u64,
    ) {
        let list = self.by_receipt.entry(receipt).or_default();
        if !list.iter().any(|d| d.referral_id == referral_id) {
            list.push(Disclosure {
                referral_id,
                recipient,
                sections: BTreeSet::new(),
                offered_at: at,
                purge: PurgeStatus::NotRequested,
            });
        }
    }

    /// Records that body sections were released in `referral_id`.
    pub fn record_sections(
        &mut self,
        referral_id: &ReferralId,
        sections: impl IntoIterator<Item = wire::Section>,
    ) {
        if let Some(d) = self.find_mut(referral_id) {
            d.sections.extend(sections);
        }
    }

    /// Every disclosure under `receipt`.
    pub fn disclosures(&self, receipt: &ReceiptId) -> &[Disclosure] {
        self.by_receipt.get(receipt).map_or(&[], Vec::as_slice)
    }

    /// Marks one referral's recipient as waiting for erasure (CONSENT_CHANGED or WITHDRAW
    /// sent at `now`).
    pub fn mark_pending(&mut self, referral_id: &ReferralId, now: u64) {
        if let Some(d) = self.find_mut(referral_id)
            && !matches!(d.purge, PurgeStatus::Confirmed { .. })
        {
            d.purge = PurgeStatus::Pending { since: now };
        }
    }

    /// Marks one referral's recipient as having confirmed erasure.
    pub fn confirm_purge(
        &mut self,
        referral_id: &ReferralId,
        at: u64,
        retained_under: Option<String>,
    ) {
        if let Some(d) = self.find_mut(referral_id) {
            d.purge = PurgeStatus::Confirmed { at, retained_under };
        }
    }

    /// Recipients under `receipt` that have not confirmed erasure yet.
    pub fn pending(&self, receipt: &ReceiptId) -> Vec<&Disclosure> {
        self.disclosures(receipt)
            .iter()
            .filter(|d| matches!(d.purge, PurgeStatus::Pending { .. }))
            .collect()
    }

    fn find_mut(&mut self, referral_id: &ReferralId) -> Option<&mut Disclosure> {
        self.by_receipt
            .values_mut()
            .flatten()
            .find(|d| &d.referral_id == referral_id)
    }
}

// ---------------------------------------------------------------------------------------------
// Local store layouts (private, versioned; never sent on the wire).

const STORE_VERSION: u32 = 1;

#[derive(Clone, PartialEq, Message)]
struct RegistryRecord {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(message, repeated, tag = "2")]
    receipts: Vec<wire::SignedConsentReceipt>,
}

#[derive(Clone, PartialEq, Message)]
struct DisclosureRecord {
    #[prost(bytes = "vec", tag = "1")]
    receipt_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    referral_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    recipient: Vec<u8>,
    #[prost(int32, repeated, tag = "4")]
    sections: Vec<i32>,
    #[prost(uint64, tag = "5")]
    offered_at: u64,
    /// 0 = not requested, 1 = pending, 2 = confirmed.
    #[prost(uint32, tag = "6")]
    purge: u32,
    /// `since` (pending) or `at` (confirmed).
    #[prost(uint64, tag = "7")]
    purge_time: u64,
    #[prost(string, optional, tag = "8")]
    retained_under: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct LedgerRecord {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(message, repeated, tag = "2")]
    disclosures: Vec<DisclosureRecord>,
}

impl ReceiptRegistry {
    /// Serialises the known receipts for the local store.
    pub fn to_bytes(&self) -> Vec<u8> {
        RegistryRecord {
            version: STORE_VERSION,
            receipts: self.receipts.values().map(|r| r.signed().clone()).collect(),
        }
        .encode_to_vec()
    }

    /// Restores a registry written by [`to_bytes`](Self::to_bytes). Every receipt's signature
    /// is checked again under the organisation root its signer certificate names, at the
    /// receipt's own time (trust in that root, and the certificate's validity at arrival, were
    /// established when the receipt was first verified and inserted).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConsentError> {
        let record = RegistryRecord::decode(bytes).map_err(|_| ConsentError::Malformed)?;
        if record.version != STORE_VERSION {
            return Err(ConsentError::Malformed);
        }
        let mut registry = Self::new();
        for signed in &record.receipts {
            let signer = signed.signer.as_ref().ok_or(ConsentError::Malformed)?;
            let cert = decode::device_certificate(&signer.certificate)
                .map_err(|_| ConsentError::Malformed)?;
            let root = OrgRootPublicKey::from_bytes(&cert.org_root_key)
                .map_err(|_| ConsentError::Malformed)?;
            registry.insert(SignedReceipt::verify_recorded(
                signed,
                &OrgTrust::new(root),
            )?)?;
        }
        Ok(registry)
    }
}

impl DisclosureLedger {
    /// Serialises the ledger for the local store.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut disclosures = Vec::new();
        for (receipt, list) in &self.by_receipt {
            for d in list {
                let (purge, purge_time, retained_under) = match &d.purge {
                    PurgeStatus::NotRequested => (0, 0, None),
                    PurgeStatus::Pending { since } => (1, *since, None),
                    PurgeStatus::Confirmed { at, retained_under } => {
                        (2, *at, retained_under.clone())
                    }
                };
                disclosures.push(DisclosureRecord {
                    receipt_id: receipt.as_bytes().to_vec(),
                    referral_id: d.referral_id.as_bytes().to_vec(),
                    recipient: d.recipient.to_vec(),
                    sections: d.sections.iter().map(|s| *s as i32).collect(),
                    offered_at: d.offered_at,
                    purge,
                    purge_time,
                    retained_under,
                });
            }
        }
        LedgerRecord {
            version: STORE_VERSION,
            disclosures,
        }
        .encode_to_vec()
    }

    /// Restores a ledger written by [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConsentError> {
        let record = LedgerRecord::decode(bytes).map_err(|_| ConsentError::Malformed)?;
        if record.version != STORE_VERSION {
            return Err(ConsentError::Malformed);
        }
        let mut ledger = Self::new();
        for d in record.disclosures {
            let receipt = ReceiptId::from_slice(&d.receipt_id).ok_or(ConsentError::Malformed)?;
            let purge = match d.purge {
                0 => PurgeStatus::NotRequested,
                1 => PurgeStatus::Pending {
                    since: d.purge_time,
                },
                2 => PurgeStatus::Confirmed {
                    at: d.purge_time,
                    retained_under: d.retained_under,
                },
                _ => return Err(ConsentError::Malformed),
            };
            let sections = d
                .sections
                .iter()
                .map(|s| wire::Section::try_from(*s).map_err(|_| ConsentError::Malformed))
                .collect::<Result<_, _>>()?;
            ledger
                .by_receipt
                .entry(receipt)
                .or_default()
                .push(Disclosure {
                    referral_id: ReferralId::from_slice(&d.referral_id)
                        .ok_or(ConsentError::Malformed)?,
                    recipient: d
                        .recipient
                        .as_slice()
                        .try_into()
                        .map_err(|_| ConsentError::Malformed)?,
                    sections,
                    offered_at: d.offered_at,
                    purge,
                });
        }
        Ok(ledger)
    }
}
