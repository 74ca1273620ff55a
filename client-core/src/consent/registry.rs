//! What a client knows about receipts (supersession) and, on the sending side, which
//! organisation received which data under which receipt (for revocation fan-out, GDPR
//! Art. 17 and 19).

use std::collections::{BTreeMap, BTreeSet};

use handover_proto::e2e::v1 as wire;

use super::{ReceiptId, SignedReceipt};
use crate::referral::ReferralId;

/// Receipts a client has verified, and which receipt supersedes which.
///
/// The consent gate asks it whether a receipt was superseded (withdrawn, expired, invalidated or
/// renewed); a receiver learns supersession from CONSENT_CHANGED control messages.
#[derive(Clone, Debug, Default)]
pub struct ReceiptRegistry {
    receipts: BTreeMap<ReceiptId, SignedReceipt>,
    superseded_by: BTreeMap<ReceiptId, ReceiptId>,
}

impl ReceiptRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a verified receipt (and what it supersedes).
    pub fn insert(&mut self, receipt: SignedReceipt) {
        if let Some(old) = receipt.supersedes() {
            self.superseded_by.insert(old, receipt.id());
        }
        self.receipts.insert(receipt.id(), receipt);
    }

    /// A known receipt.
    pub fn get(&self, id: &ReceiptId) -> Option<&SignedReceipt> {
        self.receipts.get(id)
    }

    /// The receipt that directly supersedes `id`, if known.
    pub fn superseded_by(&self, id: &ReceiptId) -> Option<&SignedReceipt> {
        self.superseded_by
            .get(id)
            .and_then(|next| self.receipts.get(next))
    }

    /// The newest receipt in the chain starting at `id` (bounded walk).
    pub fn latest(&self, id: &ReceiptId) -> Option<&SignedReceipt> {
        let mut current = self.receipts.get(id)?;
        for _ in 0..self.receipts.len() {
            match self.superseded_by(&current.id()) {
                Some(next) => current = next,
                None => break,
            }
        }
        Some(current)
    }
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
