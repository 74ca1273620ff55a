//! The sending organisation as a team (docs/PROTOCOL.md §11.9): team steps (release claims
//! and reassignments) signed by the device that took them, and the shared sender record
//! ([`wire::SenderCase`]) a colleague device rebuilds and verifies.

use std::fmt;

use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use prost::Message;
use subtle::ConstantTimeEq;

use super::control::{self, Trust};
use super::lifecycle::{Lifecycle, ReferralState};
use super::seal::{self, SealedSection, SectionKey};
use super::sender::SenderReferral;
use super::shared::{Core, Meta};
use super::{Actor, ReferralError, ReferralId, Side, Timeline};
use crate::consent::SignedReceipt;
use crate::identity::{DeviceId, OrgTrust, Role};

/// Signature label of a team step.
pub const LABEL_TEAM_STEP: &[u8] = b"handover/1 team-step";

/// What a team step did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TeamAction {
    /// The signing device released the body to the receiving organisation.
    Released,
    /// The case was handed to this device.
    Reassigned {
        /// The device that holds the case from now on.
        assignee: DeviceId,
    },
}

/// A verified team step.
#[derive(Clone, PartialEq, Eq)]
pub struct TeamStep {
    /// The referral.
    pub referral: ReferralId,
    /// The acting device's clock, Unix seconds.
    pub at: u64,
    /// What was done.
    pub action: TeamAction,
    /// The device that signed it.
    pub device: DeviceId,
    /// Its role.
    pub role: Role,
    /// Its name in its certificate.
    pub label: String,
    pub(crate) signed: wire::SignedTeamStep,
}

impl fmt::Debug for TeamStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeamStep")
            .field("referral", &self.referral)
            .field("at", &self.at)
            .field("action", &self.action)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl TeamStep {
    /// The signed step as sent.
    pub fn signed(&self) -> &wire::SignedTeamStep {
        &self.signed
    }

    /// Signs a team step with `actor` (a caseworker or admin device).
    pub fn sign(
        referral: &ReferralId,
        action: TeamAction,
        actor: &Actor<'_>,
        now: u64,
    ) -> Result<Self, ReferralError> {
        if actor.role() == Role::Ambassador {
            return Err(ReferralError::AmbassadorCannotReceiveCase);
        }
        let step = wire::TeamStep {
            referral_id: referral.as_bytes().to_vec(),
            at: now,
            step: Some(match action {
                TeamAction::Released => wire::team_step::Step::Released(wire::BodyReleased {}),
                TeamAction::Reassigned { assignee } => {
                    wire::team_step::Step::Reassigned(wire::Reassigned {
                        assignee_device_id: assignee.0.to_vec(),
                    })
                }
            }),
        }
        .encode_to_vec();
        let signature = actor.sign(LABEL_TEAM_STEP, &step);
        let cert = actor.certificate();
        Ok(Self {
            referral: *referral,
            at: now,
            action,
            device: cert.device_id(),
            role: cert.role(),
            label: cert.label().to_owned(),
            signed: wire::SignedTeamStep {
                step,
                signer: Some(cert.signed().clone()),
                signature: signature.to_vec(),
            },
        })
    }

    /// Verifies a team step for `referral`: structure, a signer of `own_org` that is not an
    /// ambassador, and the signature over `LABEL_TEAM_STEP || step`. `now` is `Some` for a step
    /// arriving live (the signer must be valid and unrevoked on the current device list);
    /// `None` for a step kept in a shared record (the certificate must have been valid at the
    /// step's time, as for timeline entries).
    pub fn verify(
        signed: &wire::SignedTeamStep,
        referral: &ReferralId,
        own_org: &OrgTrust,
        now: Option<u64>,
    ) -> Result<Self, ReferralError> {
        let what = "team step";
        let step = decode::signed_team_step(&signed.encode_to_vec())
            .ok()
            .and_then(|s| decode::team_step(&s.step).ok())
            .ok_or(ReferralError::Malformed { what })?;
        if !bool::from(step.referral_id.ct_eq(referral.as_bytes())) {
            return Err(ReferralError::WrongReferral);
        }
        let root = own_org.root();
        let trust = match now {
            Some(now) => Trust::Live { org: own_org, now },
            None => Trust::Archive {
                root: &root,
                at: step.at,
            },
        };
        let cert = control::verify_signed(
            what,
            signed.signer.as_ref(),
            LABEL_TEAM_STEP,
            &signed.step,
            &signed.signature,
            trust,
        )?;
        if cert.role() == Role::Ambassador {
            return Err(ReferralError::UntrustedSigner { what });
        }
        if let Some(now) = now
            && step.at > now.saturating_add(super::MAX_CLOCK_SKEW_SECS)
        {
            return Err(ReferralError::FromTheFuture);
        }
        let action = match step.step {
            Some(wire::team_step::Step::Released(_)) => TeamAction::Released,
            Some(wire::team_step::Step::Reassigned(r)) => TeamAction::Reassigned {
                assignee: DeviceId(
                    r.assignee_device_id
                        .as_slice()
                        .try_into()
                        .map_err(|_| ReferralError::Malformed { what })?,
                ),
            },
            None => return Err(ReferralError::Malformed { what }),
        };
        Ok(Self {
            referral: *referral,
            at: step.at,
            action,
            device: cert.device_id(),
            role: cert.role(),
            label: cert.label().to_owned(),
            signed: signed.clone(),
        })
    }
}

/// Who holds a case: the last reassignment's assignee, or else the device that signed the
/// offer.
pub(crate) fn assignee(offer_signer: DeviceId, team: &[TeamStep]) -> DeviceId {
    team.iter()
        .rev()
        .find_map(|s| match s.action {
            TeamAction::Reassigned { assignee } => Some(assignee),
            TeamAction::Released => None,
        })
        .unwrap_or(offer_signer)
}

/// Whether some device of the team released the body.
pub(crate) fn released(team: &[TeamStep]) -> bool {
    team.iter().any(|s| s.action == TeamAction::Released)
}

impl SenderReferral {
    /// The device that signed the offer.
    pub fn offer_signer(&self) -> Option<DeviceId> {
        let signer = self.signed_offer.signer.as_ref()?;
        decode::device_certificate(&signer.certificate)
            .ok()
            .and_then(|c| c.device_id.as_slice().try_into().ok())
            .map(DeviceId)
    }

    /// The consent receipts this record relies on and that superseded it, for sharing: the
    /// offer's receipt first, then every receipt carried by a CONSENT_CHANGED on the timeline.
    pub(crate) fn receipt_chain(
        &self,
        original: Option<&SignedReceipt>,
    ) -> Vec<wire::SignedConsentReceipt> {
        let mut out: Vec<wire::SignedConsentReceipt> =
            original.map(|r| r.signed().clone()).into_iter().collect();
        for entry in self.core.timeline.entries().iter().skip(1) {
            if let Some(wire::referral_control::Action::ConsentChanged(c)) = entry
                .payload()
                .and_then(|p| decode::referral_control(p).ok())
                .and_then(|c| c.action)
                && let Some(r) = c.receipt
            {
                out.push(r);
            }
        }
        out
    }

    /// The record as shared with a colleague device (docs/PROTOCOL.md §11.9). The returned
    /// message holds the section keys while the sender holds them: seal it for the device at
    /// once and drop it.
    pub fn to_shared(
        &self,
        original_receipt: Option<&SignedReceipt>,
        recipient_devices: &[DeviceId],
        confirmed_devices: &[DeviceId],
        team: &[TeamStep],
        release_pending: bool,
    ) -> wire::SenderCase {
        let controls = self
            .core
            .timeline
            .entries()
            .iter()
            .skip(1)
            .map(|e| wire::SignedControl {
                control: e.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                signer: Some(e.signer.clone()),
                signature: e.signature.clone(),
            })
            .collect();
        wire::SenderCase {
            offer: Some(self.signed_offer.clone()),
            controls,
            receipts: self.receipt_chain(original_receipt),
            sections: self
                .sealed
                .iter()
                .map(|s| wire::SealedSection {
                    section: s.section as i32,
                    ciphertext: s.ciphertext.clone(),
                })
                .collect(),
            keys: self
                .sealed
                .iter()
                .map(|s| s.key.to_wire(s.section))
                .collect(),
            recipient_devices: recipient_devices.iter().map(|d| d.0.to_vec()).collect(),
            confirmed_devices: confirmed_devices.iter().map(|d| d.0.to_vec()).collect(),
            team: team.iter().map(|s| s.signed.clone()).collect(),
            release_pending,
        }
    }

    /// Rebuilds a sender record shared by a colleague device of `own_org` (docs/PROTOCOL.md
    /// §11.9): the offer and every step are verified as a timeline (hash chain, signatures by
    /// devices valid at each step's time, a legal lifecycle) against `own_org` as sender and
    /// `receiver_root`; the consent receipts against `own_org` (the first must be the one the
    /// offer names, each later one must supersede the one before); each sealed section must
    /// match the offer's commitment under its key. Returns the record and the verified
    /// receipts, oldest first.
    pub fn from_shared(
        case: &wire::SenderCase,
        own_org: &OrgTrust,
        receiver_root: &crate::identity::OrgRootPublicKey,
    ) -> Result<(Self, Vec<SignedReceipt>), ReferralError> {
        let malformed = |what| ReferralError::Malformed { what };
        let signed_offer = case.offer.clone().ok_or(malformed("shared case"))?;
        let offer = control::decode_offer(&signed_offer)?;
        let meta = Meta::of(&offer)?;
        let own_root = own_org.root();
        if !bool::from(own_root.to_bytes().ct_eq(&meta.sender_root))
            || !bool::from(receiver_root.to_bytes().ct_eq(&meta.receiver_root))
        {
            return Err(ReferralError::UntrustedSigner {
                what: "shared case",
            });
        }
        let mut timeline = Timeline::start(&signed_offer);
        for signed in &case.controls {
            control::decode_control(signed)?;
            timeline.push(signed);
        }
        let state = timeline.verify_replay(&own_root, receiver_root)?;
        // Receipts: the offer's, then each superseding the one before (same organisation).
        let consent_ref = offer.consent.as_ref().and_then(|c| c.basis.as_ref());
        let mut receipts = Vec::new();
        for signed in &case.receipts {
            let r = SignedReceipt::verify_recorded(signed, own_org)?;
            match receipts.last() {
                None => {
                    let Some(wire::consent_ref::Basis::Receipt(want)) = consent_ref else {
                        return Err(malformed("shared case receipts"));
                    };
                    if r.id().as_bytes()[..] != want.receipt_id[..]
                        || !bool::from(r.hash()[..].ct_eq(&want.receipt_sha256[..]))
                    {
                        return Err(malformed("shared case receipts"));
                    }
                }
                Some(prev) => {
                    let prev: &SignedReceipt = prev;
                    if r.supersedes() != Some(prev.id())
                        || !crate::consent::same_principal(prev, &r)
                    {
                        return Err(malformed("shared case receipts"));
                    }
                }
            }
            receipts.push(r);
        }
        let is_override = matches!(consent_ref, Some(wire::consent_ref::Basis::Override(_)));
        if !is_override && receipts.is_empty() {
            return Err(malformed("shared case receipts"));
        }
        // The receipt the record relies on now: the offer's, or the newest renewal.
        let current = receipts
            .iter()
            .rev()
            .find(|r| {
                matches!(
                    r.state(),
                    wire::ConsentState::Given | wire::ConsentState::Renewed
                )
            })
            .cloned();
        let mut sealed = Vec::new();
        for s in &case.sections {
            let section =
                wire::Section::try_from(s.section).map_err(|_| malformed("shared case"))?;
            let name = super::section_name(section);
            let mut keys = case.keys.iter().filter(|k| k.section == s.section);
            let (Some(key), None) = (keys.next(), keys.next()) else {
                return Err(ReferralError::SectionKeyMissing { section: name });
            };
            let key = SectionKey::from_slice(&key.key)
                .ok_or(ReferralError::SectionKeyMissing { section: name })?;
            let committed = offer
                .section_commitments
                .iter()
                .find(|c| c.section == s.section)
                .ok_or(ReferralError::SectionNotOffered { section: name })?;
            let got = seal::commitment(&key, &meta.id, section, &s.ciphertext);
            if !bool::from(got.ct_eq(committed.sealed_sha256.as_slice())) {
                return Err(ReferralError::CommitmentMismatch { section: name });
            }
            if sealed.iter().any(|x: &SealedSection| x.section == section) {
                return Err(malformed("shared case"));
            }
            sealed.push(SealedSection {
                section,
                ciphertext: s.ciphertext.clone(),
                key,
            });
        }
        if case.keys.len() != sealed.len() {
            return Err(malformed("shared case"));
        }
        let kind = meta.kind;
        let record = Self {
            core: Core {
                meta,
                side: Side::Sender,
                lifecycle: Lifecycle::restore(kind, state),
                timeline,
            },
            signed_offer,
            offer,
            receipt: current,
            sealed,
        };
        Ok((record, receipts))
    }

    /// Whether a team step applies to this referral now: a release only from ACCEPTED or
    /// IN_SERVICE (or later, when it arrives after the receiver moved on).
    pub(crate) fn team_step_allowed(&self, step: &TeamStep) -> bool {
        match step.action {
            TeamAction::Released => !matches!(
                self.state(),
                ReferralState::Draft | ReferralState::Ready | ReferralState::Sent
            ),
            TeamAction::Reassigned { .. } => true,
        }
    }
}
