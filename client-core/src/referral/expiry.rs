//! Expiry: offer lifetimes by priority, body retention, message timers, and the erasures a
//! store must apply (docs/PROTOCOL.md §11.7).

use std::fmt;

use handover_proto::e2e::v1 as wire;
use zeroize::Zeroizing;

use super::ReferralId;

/// Default offer lifetime for `Priority::Emergency`: 24 hours.
pub const EMERGENCY_OFFER_TTL_SECS: u64 = 24 * 60 * 60;
/// Default offer lifetime for `Priority::Urgent`: 72 hours.
pub const URGENT_OFFER_TTL_SECS: u64 = 72 * 60 * 60;
/// Default offer lifetime for `Priority::Normal` (and anything unspecified): 14 days.
pub const NORMAL_OFFER_TTL_SECS: u64 = 14 * 24 * 60 * 60;

/// The default offer lifetime for a priority.
pub fn offer_ttl(priority: wire::Priority) -> u64 {
    match priority {
        wire::Priority::Emergency => EMERGENCY_OFFER_TTL_SECS,
        wire::Priority::Urgent => URGENT_OFFER_TTL_SECS,
        wire::Priority::Normal | wire::Priority::Unspecified => NORMAL_OFFER_TTL_SECS,
    }
}

/// Something a store must delete now. The in-memory record has already dropped the plaintext
/// and zeroized the keys; the store deletes its persisted copy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Erasure {
    /// The offer's content (the record keeps only its lifecycle state and timeline).
    Offer(ReferralId),
    /// Body sections and their keys.
    Body(ReferralId),
    /// A message's content.
    Message([u8; 16]),
}

/// A message with a disappearing timer (`Content.expires_at`): its plaintext is held until the
/// timer fires and then zeroized.
pub struct TimedContent {
    message_id: [u8; 16],
    expires_at: u64,
    plaintext: Option<Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for TimedContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            message_id: _,
            expires_at,
            plaintext,
        } = self;
        f.debug_struct("TimedContent")
            .field("expires_at", expires_at)
            .field("erased", &plaintext.is_none())
            .finish_non_exhaustive()
    }
}

impl TimedContent {
    /// Holds `plaintext` (an encoded `Content`) until `expires_at` (0 = no timer).
    pub fn new(message_id: [u8; 16], expires_at: u64, plaintext: Vec<u8>) -> Self {
        Self {
            message_id,
            expires_at,
            plaintext: Some(Zeroizing::new(plaintext)),
        }
    }

    /// The plaintext, if not yet expired at `now`.
    pub fn read(&self, now: u64) -> Option<&[u8]> {
        if self.is_due(now) {
            return None;
        }
        self.plaintext.as_ref().map(|p| p.as_slice())
    }

    fn is_due(&self, now: u64) -> bool {
        self.expires_at != 0 && now >= self.expires_at
    }

    /// Whether the content is gone.
    pub fn is_erased(&self) -> bool {
        self.plaintext.is_none()
    }

    /// Erases the content if its timer has fired; returns what the store must delete.
    pub fn tick(&mut self, now: u64) -> Option<Erasure> {
        if self.is_due(now) && self.plaintext.take().is_some() {
            return Some(Erasure::Message(self.message_id));
        }
        None
    }
}
