//! Structural validation of decoded wire messages.
//!
//! Protobuf decoding accepts any well-formed encoding; this module then enforces the rules that
//! make a message usable: exact lengths of ids, keys and signatures, bounded strings and repeated
//! fields, required fields and oneofs present, enums known where the protocol requires it.
//! Cryptographic checks (signatures, certificate chains) belong to the client core, not here.
//!
//! Errors name fields as `Message.field`; they never contain the data.

use crate::DecodeError;
use crate::e2e::v1 as e2e;
use crate::limits::{
    ID_LEN, KEY_LEN, MAX_BLOB_CHUNK_LEN, MAX_CAPABILITIES, MAX_CASE_CONTROLS,
    MAX_CREATION_TOKEN_LEN, MAX_ENVELOPE_LEN, MAX_IDS_PER_REQUEST, MAX_PREKEYS_PER_PUBLISH,
    MAX_REPEATED, MAX_SHORT_STRING_LEN, MAX_SUBSCRIPTIONS, MAX_TEXT_LEN, ML_KEM_768_CIPHERTEXT_LEN,
    ML_KEM_768_PUBLIC_KEY_LEN, SIGNATURE_LEN,
};
use crate::relay::v1 as relay;

/// A wire message that can check its own structural rules.
pub trait Validate {
    /// Checks the message; the error names the first rule broken.
    fn validate(&self) -> std::result::Result<(), DecodeError>;
}

type Result<T = ()> = std::result::Result<T, DecodeError>;

fn exact(field: &'static str, bytes: &[u8], len: usize) -> Result {
    if bytes.len() == len {
        Ok(())
    } else {
        Err(DecodeError::invalid(field, "wrong length"))
    }
}

fn exact_or_empty(field: &'static str, bytes: &[u8], len: usize) -> Result {
    if bytes.is_empty() {
        Ok(())
    } else {
        exact(field, bytes, len)
    }
}

fn at_most(field: &'static str, len: usize, max: usize) -> Result {
    if len <= max {
        Ok(())
    } else {
        Err(DecodeError::invalid(field, "too long"))
    }
}

fn short(field: &'static str, s: &str) -> Result {
    at_most(field, s.len(), MAX_SHORT_STRING_LEN)
}

fn text(field: &'static str, s: &str) -> Result {
    at_most(field, s.len(), MAX_TEXT_LEN)
}

fn shorts(field: &'static str, items: &[String]) -> Result {
    at_most(field, items.len(), MAX_REPEATED)?;
    items.iter().try_for_each(|s| short(field, s))
}

fn ids(field: &'static str, items: &[Vec<u8>], len: usize, max: usize) -> Result {
    at_most(field, items.len(), max)?;
    items.iter().try_for_each(|id| exact(field, id, len))
}

fn required<'a, T>(field: &'static str, value: &'a Option<T>) -> Result<&'a T> {
    value.as_ref().ok_or(DecodeError::invalid(field, "missing"))
}

fn each<T: Validate>(field: &'static str, items: &[T]) -> Result {
    at_most(field, items.len(), MAX_REPEATED)?;
    items.iter().try_for_each(Validate::validate)
}

fn known_enum<E: TryFrom<i32>>(field: &'static str, value: i32, allow_unspecified: bool) -> Result {
    if value == 0 && !allow_unspecified {
        return Err(DecodeError::invalid(field, "unspecified"));
    }
    E::try_from(value)
        .map(|_| ())
        .map_err(|_| DecodeError::invalid(field, "unknown value"))
}

fn known_enums<E: TryFrom<i32>>(field: &'static str, values: &[i32]) -> Result {
    at_most(field, values.len(), MAX_REPEATED)?;
    values
        .iter()
        .try_for_each(|v| known_enum::<E>(field, *v, false))
}

impl<T: Validate> Validate for Option<T> {
    fn validate(&self) -> Result {
        self.as_ref().map_or(Ok(()), Validate::validate)
    }
}

// ---------------------------------------------------------------------------------------------
// Relay protocol.

impl Validate for relay::Request {
    fn validate(&self) -> Result {
        use relay::request::Kind;
        match required("Request.kind", &self.kind)? {
            Kind::CreateMailbox(m) => {
                exact("CreateMailbox.auth_key", &m.auth_key, KEY_LEN)?;
                at_most(
                    "CreateMailbox.creation_token",
                    m.creation_token.len(),
                    MAX_CREATION_TOKEN_LEN,
                )?;
                ids(
                    "CreateMailbox.capability_hashes",
                    &m.capability_hashes,
                    KEY_LEN,
                    MAX_CAPABILITIES,
                )
            }
            Kind::DeleteMailbox(m) => exact("DeleteMailbox.recv_id", &m.recv_id, ID_LEN),
            Kind::Authenticate(m) => {
                exact("Authenticate.recv_id", &m.recv_id, ID_LEN)?;
                exact("Authenticate.signature", &m.signature, SIGNATURE_LEN)
            }
            Kind::SetCapabilities(m) => {
                exact("SetCapabilities.recv_id", &m.recv_id, ID_LEN)?;
                ids(
                    "SetCapabilities.capability_hashes",
                    &m.capability_hashes,
                    KEY_LEN,
                    MAX_CAPABILITIES,
                )
            }
            Kind::Send(m) => {
                exact("Send.send_id", &m.send_id, ID_LEN)?;
                exact("Send.capability", &m.capability, KEY_LEN)?;
                required("Send.envelope", &m.envelope)?.validate()
            }
            Kind::Fetch(m) => exact("Fetch.recv_id", &m.recv_id, ID_LEN),
            Kind::Ack(m) => {
                exact("Ack.recv_id", &m.recv_id, ID_LEN)?;
                ids(
                    "Ack.envelope_ids",
                    &m.envelope_ids,
                    ID_LEN,
                    MAX_IDS_PER_REQUEST,
                )
            }
            Kind::Subscribe(m) => ids("Subscribe.recv_ids", &m.recv_ids, ID_LEN, MAX_SUBSCRIPTIONS),
            Kind::EnvelopeStatus(m) => {
                exact("EnvelopeStatus.send_id", &m.send_id, ID_LEN)?;
                exact("EnvelopeStatus.capability", &m.capability, KEY_LEN)?;
                ids(
                    "EnvelopeStatus.envelope_ids",
                    &m.envelope_ids,
                    ID_LEN,
                    MAX_IDS_PER_REQUEST,
                )
            }
            Kind::PrekeyPublish(m) => {
                exact("PrekeyPublish.recv_id", &m.recv_id, ID_LEN)?;
                at_most("PrekeyPublish.bundle", m.bundle.len(), MAX_ENVELOPE_LEN)?;
                at_most(
                    "PrekeyPublish.one_time_prekeys",
                    m.one_time_prekeys.len(),
                    MAX_PREKEYS_PER_PUBLISH,
                )?;
                at_most(
                    "PrekeyPublish.one_time_kem_prekeys",
                    m.one_time_kem_prekeys.len(),
                    MAX_PREKEYS_PER_PUBLISH,
                )?;
                let small = 2 * KEY_LEN;
                m.one_time_prekeys
                    .iter()
                    .try_for_each(|k| at_most("PrekeyPublish.one_time_prekeys", k.len(), small))?;
                let large = ML_KEM_768_PUBLIC_KEY_LEN + SIGNATURE_LEN + 16;
                m.one_time_kem_prekeys
                    .iter()
                    .try_for_each(|k| at_most("PrekeyPublish.one_time_kem_prekeys", k.len(), large))
            }
            Kind::PrekeyTake(m) => {
                exact("PrekeyTake.send_id", &m.send_id, ID_LEN)?;
                exact("PrekeyTake.capability", &m.capability, KEY_LEN)
            }
            Kind::MemberAuth(m) => {
                at_most(
                    "MemberAuth.device_certificate",
                    m.device_certificate.len(),
                    MAX_SHORT_STRING_LEN * 4,
                )?;
                exact("MemberAuth.signature", &m.signature, SIGNATURE_LEN)
            }
            Kind::DirectoryPublish(m) => at_most(
                "DirectoryPublish.profile",
                m.profile.len(),
                MAX_ENVELOPE_LEN,
            ),
            Kind::DirectoryQuery(m) => {
                shorts("DirectoryQuery.services", &m.services)?;
                shorts("DirectoryQuery.languages", &m.languages)?;
                shorts("DirectoryQuery.regions", &m.regions)?;
                short("DirectoryQuery.name_contains", &m.name_contains)
            }
            Kind::BlobPut(_) | Kind::Ping(_) => Ok(()),
            Kind::BlobGet(m) => exact("BlobGet.blob_id", &m.blob_id, ID_LEN),
        }
    }
}

impl Validate for relay::Envelope {
    fn validate(&self) -> Result {
        exact("Envelope.envelope_id", &self.envelope_id, ID_LEN)?;
        if self.ciphertext.is_empty() {
            return Err(DecodeError::invalid("Envelope.ciphertext", "empty"));
        }
        at_most(
            "Envelope.ciphertext",
            self.ciphertext.len(),
            MAX_ENVELOPE_LEN,
        )
    }
}

impl Validate for relay::Response {
    fn validate(&self) -> Result {
        use relay::response::Kind;
        match required("Response.kind", &self.kind)? {
            Kind::Error(e) => {
                known_enum::<relay::ErrorCode>("Error.code", e.code, false)?;
                short("Error.message", &e.message)
            }
            Kind::MailboxCreated(m) => {
                exact("MailboxCreated.recv_id", &m.recv_id, ID_LEN)?;
                exact("MailboxCreated.send_id", &m.send_id, ID_LEN)
            }
            Kind::FetchResult(m) => m
                .envelopes
                .iter()
                .try_for_each(|q| required("QueuedEnvelope.envelope", &q.envelope)?.validate()),
            Kind::EnvelopeStatusResult(m) => {
                at_most(
                    "EnvelopeStatusResult.states",
                    m.states.len(),
                    MAX_IDS_PER_REQUEST,
                )?;
                m.states.iter().try_for_each(|s| {
                    known_enum::<relay::DeliveryState>("EnvelopeStatusResult.states", *s, true)
                })
            }
            Kind::PrekeyBundle(m) => at_most(
                "PrekeyBundleResult.bundle",
                m.bundle.len(),
                MAX_ENVELOPE_LEN,
            ),
            Kind::DirectoryResult(m) => {
                at_most("DirectoryResult.profiles", m.profiles.len(), MAX_REPEATED)
            }
            Kind::BlobStored(m) => exact("BlobStored.blob_id", &m.blob_id, ID_LEN),
            Kind::Ok(_)
            | Kind::SendAccepted(_)
            | Kind::Subscribed(_)
            | Kind::BlobHeader(_)
            | Kind::Pong(_) => Ok(()),
        }
    }
}

impl Validate for relay::Event {
    fn validate(&self) -> Result {
        use relay::event::Kind;
        match required("Event.kind", &self.kind)? {
            Kind::NewEnvelopes(m) => exact("NewEnvelopes.recv_id", &m.recv_id, ID_LEN),
            Kind::GoingAway(_) => Ok(()),
        }
    }
}

impl Validate for relay::BlobChunk {
    fn validate(&self) -> Result {
        at_most("BlobChunk.data", self.data.len(), MAX_BLOB_CHUNK_LEN)
    }
}

// ---------------------------------------------------------------------------------------------
// Identities, certificates, prekeys, addresses.

impl Validate for e2e::DeviceCertificate {
    fn validate(&self) -> Result {
        exact(
            "DeviceCertificate.org_root_key",
            &self.org_root_key,
            KEY_LEN,
        )?;
        exact("DeviceCertificate.device_id", &self.device_id, ID_LEN)?;
        exact("DeviceCertificate.signing_key", &self.signing_key, KEY_LEN)?;
        exact(
            "DeviceCertificate.identity_key",
            &self.identity_key,
            KEY_LEN,
        )?;
        known_enum::<e2e::Role>("DeviceCertificate.role", self.role, false)?;
        if self.not_after <= self.not_before {
            return Err(DecodeError::invalid(
                "DeviceCertificate.not_after",
                "not after not_before",
            ));
        }
        short("DeviceCertificate.label", &self.label)
    }
}

impl Validate for e2e::SignedDeviceCertificate {
    fn validate(&self) -> Result {
        at_most(
            "SignedDeviceCertificate.certificate",
            self.certificate.len(),
            MAX_SHORT_STRING_LEN * 2,
        )?;
        exact(
            "SignedDeviceCertificate.signature",
            &self.signature,
            SIGNATURE_LEN,
        )
    }
}

impl Validate for e2e::DeviceList {
    fn validate(&self) -> Result {
        exact("DeviceList.org_root_key", &self.org_root_key, KEY_LEN)?;
        each("DeviceList.devices", &self.devices)?;
        ids(
            "DeviceList.revoked_device_ids",
            &self.revoked_device_ids,
            ID_LEN,
            MAX_IDS_PER_REQUEST,
        )
    }
}

impl Validate for e2e::SignedDeviceList {
    fn validate(&self) -> Result {
        at_most("SignedDeviceList.list", self.list.len(), MAX_ENVELOPE_LEN)?;
        exact("SignedDeviceList.signature", &self.signature, SIGNATURE_LEN)
    }
}

impl Validate for e2e::DeviceAddress {
    fn validate(&self) -> Result {
        exact("DeviceAddress.device_id", &self.device_id, ID_LEN)?;
        if self.relay.is_empty() {
            return Err(DecodeError::invalid("DeviceAddress.relay", "missing"));
        }
        short("DeviceAddress.relay", &self.relay)?;
        exact("DeviceAddress.relay_pin", &self.relay_pin, KEY_LEN)?;
        exact("DeviceAddress.send_id", &self.send_id, ID_LEN)?;
        exact("DeviceAddress.capability", &self.capability, KEY_LEN)?;
        exact("DeviceAddress.sealing_key", &self.sealing_key, KEY_LEN)
    }
}

impl Validate for e2e::OrgProfile {
    fn validate(&self) -> Result {
        exact("OrgProfile.org_root_key", &self.org_root_key, KEY_LEN)?;
        if self.name.is_empty() {
            return Err(DecodeError::invalid("OrgProfile.name", "missing"));
        }
        short("OrgProfile.name", &self.name)?;
        shorts("OrgProfile.services", &self.services)?;
        shorts("OrgProfile.languages", &self.languages)?;
        shorts("OrgProfile.regions", &self.regions)?;
        text("OrgProfile.description", &self.description)?;
        required("OrgProfile.device_list", &self.device_list)?.validate()?;
        each("OrgProfile.intake", &self.intake)
    }
}

impl Validate for e2e::SignedOrgProfile {
    fn validate(&self) -> Result {
        at_most(
            "SignedOrgProfile.profile",
            self.profile.len(),
            MAX_ENVELOPE_LEN,
        )?;
        required("SignedOrgProfile.signer", &self.signer)?.validate()?;
        exact("SignedOrgProfile.signature", &self.signature, SIGNATURE_LEN)
    }
}

impl Validate for e2e::Invitation {
    fn validate(&self) -> Result {
        required("Invitation.address", &self.address)?.validate()?;
        required("Invitation.certificate", &self.certificate)?.validate()?;
        self.device_list.validate()?;
        short("Invitation.display_name", &self.display_name)
    }
}

impl Validate for e2e::ContactCard {
    fn validate(&self) -> Result {
        required("ContactCard.address", &self.address)?.validate()?;
        required("ContactCard.certificate", &self.certificate)?.validate()?;
        self.device_list.validate()?;
        short("ContactCard.display_name", &self.display_name)
    }
}

impl Validate for e2e::SignedPrekey {
    fn validate(&self) -> Result {
        exact("SignedPrekey.public_key", &self.public_key, KEY_LEN)?;
        exact("SignedPrekey.signature", &self.signature, SIGNATURE_LEN)
    }
}

impl Validate for e2e::SignedKemPrekey {
    fn validate(&self) -> Result {
        exact(
            "SignedKemPrekey.public_key",
            &self.public_key,
            ML_KEM_768_PUBLIC_KEY_LEN,
        )?;
        exact("SignedKemPrekey.signature", &self.signature, SIGNATURE_LEN)
    }
}

impl Validate for e2e::OneTimePrekey {
    fn validate(&self) -> Result {
        exact("OneTimePrekey.public_key", &self.public_key, KEY_LEN)
    }
}

impl Validate for e2e::PublishedPrekeys {
    fn validate(&self) -> Result {
        required("PublishedPrekeys.certificate", &self.certificate)?.validate()?;
        required("PublishedPrekeys.signed_prekey", &self.signed_prekey)?.validate()?;
        required(
            "PublishedPrekeys.last_resort_kem_prekey",
            &self.last_resort_kem_prekey,
        )?
        .validate()
    }
}

impl Validate for e2e::BlobRef {
    fn validate(&self) -> Result {
        exact("BlobRef.blob_id", &self.blob_id, ID_LEN)?;
        short("BlobRef.relay", &self.relay)?;
        exact("BlobRef.key", &self.key, KEY_LEN)?;
        exact("BlobRef.plaintext_sha256", &self.plaintext_sha256, KEY_LEN)
    }
}

impl Validate for e2e::Attachment {
    fn validate(&self) -> Result {
        required("Attachment.blob", &self.blob)?.validate()?;
        short("Attachment.media_type", &self.media_type)?;
        short("Attachment.file_name", &self.file_name)
    }
}

// ---------------------------------------------------------------------------------------------
// Sealed messages and content.

impl Validate for e2e::RatchetMessage {
    fn validate(&self) -> Result {
        exact("RatchetMessage.ratchet_key", &self.ratchet_key, KEY_LEN)?;
        // A ChaCha20-Poly1305 ciphertext is at least its 16-byte tag.
        if self.ciphertext.len() < 16 {
            return Err(DecodeError::invalid(
                "RatchetMessage.ciphertext",
                "too short",
            ));
        }
        at_most(
            "RatchetMessage.ciphertext",
            self.ciphertext.len(),
            MAX_ENVELOPE_LEN,
        )
    }
}

impl Validate for e2e::PrekeyMessage {
    fn validate(&self) -> Result {
        exact("PrekeyMessage.identity_key", &self.identity_key, KEY_LEN)?;
        exact("PrekeyMessage.ephemeral_key", &self.ephemeral_key, KEY_LEN)?;
        exact(
            "PrekeyMessage.kem_ciphertext",
            &self.kem_ciphertext,
            ML_KEM_768_CIPHERTEXT_LEN,
        )?;
        required("PrekeyMessage.message", &self.message)?.validate()
    }
}

impl Validate for e2e::Sealed {
    fn validate(&self) -> Result {
        use e2e::sealed::Message;
        required("Sealed.sender", &self.sender)?.validate()?;
        match required("Sealed.message", &self.message)? {
            Message::Prekey(m) => m.validate(),
            Message::Ratchet(m) => m.validate(),
        }
    }
}

impl Validate for e2e::Content {
    fn validate(&self) -> Result {
        use e2e::content::Body;
        exact("Content.message_id", &self.message_id, ID_LEN)?;
        match required("Content.body", &self.body)? {
            Body::Chat(m) => {
                text("ChatMessage.text", &m.text)?;
                each("ChatMessage.attachments", &m.attachments)
            }
            Body::ReferralOffer(m) => m.validate(),
            Body::SignedReferralOffer(m) => m.validate(),
            Body::ReferralBody(m) => m.validate(),
            Body::ReferralControl(m) => m.validate(),
            Body::ConsentReceipt(m) => m.validate(),
            Body::FanoutKey(m) => required("FanoutKey.packet", &m.packet)?.validate(),
            Body::DeviceList(m) => m.validate(),
            Body::DeliveryReceipt(m) => ids(
                "DeliveryReceipt.message_ids",
                &m.message_ids,
                ID_LEN,
                MAX_IDS_PER_REQUEST,
            ),
            Body::ContactCard(m) => m.validate(),
            Body::SenderCase(m) => m.validate(),
            Body::TeamStep(m) => m.validate(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Referrals, control messages, consent.

impl Validate for e2e::Party {
    fn validate(&self) -> Result {
        exact("Party.org_root_key", &self.org_root_key, KEY_LEN)?;
        short("Party.org_name", &self.org_name)?;
        short("Party.worker_name", &self.worker_name)?;
        known_enum::<e2e::Role>("Party.role", self.role, true)?;
        short("Party.contact", &self.contact)
    }
}

impl Validate for e2e::ConsentRef {
    fn validate(&self) -> Result {
        use e2e::consent_ref::Basis;
        match required("ConsentRef.basis", &self.basis)? {
            Basis::Receipt(r) => {
                exact("ReceiptRef.receipt_id", &r.receipt_id, ID_LEN)?;
                exact("ReceiptRef.receipt_sha256", &r.receipt_sha256, KEY_LEN)
            }
            Basis::Override(o) => {
                if o.legal_basis.is_empty() {
                    return Err(DecodeError::invalid(
                        "ConsentOverride.legal_basis",
                        "missing",
                    ));
                }
                short("ConsentOverride.legal_basis", &o.legal_basis)?;
                text("ConsentOverride.justification", &o.justification)?;
                short("ConsentOverride.authorised_by", &o.authorised_by)
            }
        }
    }
}

impl Validate for e2e::ReferralOffer {
    fn validate(&self) -> Result {
        exact("ReferralOffer.referral_id", &self.referral_id, ID_LEN)?;
        known_enum::<e2e::ReferralKind>("ReferralOffer.kind", self.kind, false)?;
        short("ReferralOffer.sender_case_ref", &self.sender_case_ref)?;
        required("ReferralOffer.from", &self.from)?.validate()?;
        required("ReferralOffer.to", &self.to)?.validate()?;
        known_enums::<e2e::Service>("ReferralOffer.services_requested", &self.services_requested)?;
        shorts("ReferralOffer.other_services", &self.other_services)?;
        known_enum::<e2e::Priority>("ReferralOffer.priority", self.priority, false)?;
        text("ReferralOffer.purpose", &self.purpose)?;
        known_enums::<e2e::Section>("ReferralOffer.sections_included", &self.sections_included)?;
        required("ReferralOffer.consent", &self.consent)?.validate()?;
        shorts("ReferralOffer.languages", &self.languages)?;
        short(
            "ReferralOffer.preferred_worker_gender",
            &self.preferred_worker_gender,
        )?;
        known_enum::<e2e::AgeBand>("ReferralOffer.age_band", self.age_band, true)?;
        short("ReferralOffer.retention_rule", &self.retention_rule)?;
        at_most(
            "ReferralOffer.section_commitments",
            self.section_commitments.len(),
            MAX_REPEATED,
        )?;
        self.section_commitments.iter().try_for_each(|c| {
            known_enum::<e2e::Section>("SectionCommitment.section", c.section, false)?;
            exact("SectionCommitment.sealed_sha256", &c.sealed_sha256, KEY_LEN)
        })
    }
}

impl Validate for e2e::ReferralBody {
    fn validate(&self) -> Result {
        exact("ReferralBody.referral_id", &self.referral_id, ID_LEN)?;
        at_most("ReferralBody.sections", self.sections.len(), MAX_REPEATED)?;
        self.sections.iter().try_for_each(|s| {
            known_enum::<e2e::Section>("SealedSection.section", s.section, false)?;
            at_most(
                "SealedSection.ciphertext",
                s.ciphertext.len(),
                MAX_ENVELOPE_LEN,
            )
        })?;
        at_most("ReferralBody.keys", self.keys.len(), MAX_REPEATED)?;
        self.keys.iter().try_for_each(|k| {
            known_enum::<e2e::Section>("SectionKey.section", k.section, false)?;
            exact("SectionKey.key", &k.key, KEY_LEN)
        })?;
        self.consent_receipt.validate()
    }
}

impl Validate for e2e::ReferralControl {
    fn validate(&self) -> Result {
        use e2e::referral_control::Action;
        exact("ReferralControl.referral_id", &self.referral_id, ID_LEN)?;
        exact("ReferralControl.prev_hash", &self.prev_hash, KEY_LEN)?;
        match required("ReferralControl.action", &self.action)? {
            Action::Decline(d) => {
                known_enum::<e2e::DeclineReason>("Decline.reason", d.reason, false)?;
                text("Decline.note", &d.note)
            }
            Action::RequestInfo(r) => {
                at_most("RequestInfo.questions", r.questions.len(), MAX_REPEATED)?;
                r.questions
                    .iter()
                    .try_for_each(|q| text("RequestInfo.questions", q))
            }
            Action::ProvideInfo(p) => {
                at_most("ProvideInfo.answers", p.answers.len(), MAX_REPEATED)?;
                p.answers
                    .iter()
                    .try_for_each(|a| text("ProvideInfo.answers", a))
            }
            Action::Complete(c) => {
                known_enum::<e2e::NotSuccessfulReason>("Complete.reason", c.reason, true)?;
                text("Complete.note", &c.note)
            }
            Action::Withdraw(w) => text("Withdraw.reason", &w.reason),
            Action::ConsentChanged(c) => required("ConsentChanged.receipt", &c.receipt)?.validate(),
            Action::PurgeConfirmed(p) => {
                short("PurgeConfirmed.scope", &p.scope)?;
                short(
                    "PurgeConfirmed.retained_under_exception",
                    &p.retained_under_exception,
                )
            }
            Action::Update(u) => match &u.update {
                Some(e2e::update::Update::Appointment(a)) => {
                    short("AppointmentSection.place", &a.place)?;
                    text("AppointmentSection.notes", &a.notes)
                }
                Some(e2e::update::Update::ContactMadeAt(_)) => Ok(()),
                None => Err(DecodeError::invalid("Update.update", "missing")),
            },
            Action::Delivered(_)
            | Action::Acknowledged(_)
            | Action::Accept(_)
            | Action::StartService(_)
            | Action::Expired(_) => Ok(()),
        }
    }
}

impl Validate for e2e::TeamStep {
    fn validate(&self) -> Result {
        use e2e::team_step::Step;
        exact("TeamStep.referral_id", &self.referral_id, ID_LEN)?;
        match required("TeamStep.step", &self.step)? {
            Step::Released(_) => Ok(()),
            Step::Reassigned(r) => exact(
                "Reassigned.assignee_device_id",
                &r.assignee_device_id,
                ID_LEN,
            ),
        }
    }
}

impl Validate for e2e::SignedTeamStep {
    fn validate(&self) -> Result {
        at_most("SignedTeamStep.step", self.step.len(), MAX_SHORT_STRING_LEN)?;
        required("SignedTeamStep.signer", &self.signer)?.validate()?;
        exact("SignedTeamStep.signature", &self.signature, SIGNATURE_LEN)
    }
}

impl Validate for e2e::SenderCase {
    fn validate(&self) -> Result {
        required("SenderCase.offer", &self.offer)?.validate()?;
        at_most(
            "SenderCase.controls",
            self.controls.len(),
            MAX_CASE_CONTROLS,
        )?;
        self.controls.iter().try_for_each(Validate::validate)?;
        each("SenderCase.receipts", &self.receipts)?;
        at_most("SenderCase.sections", self.sections.len(), MAX_REPEATED)?;
        self.sections.iter().try_for_each(|s| {
            known_enum::<e2e::Section>("SealedSection.section", s.section, false)?;
            at_most(
                "SealedSection.ciphertext",
                s.ciphertext.len(),
                MAX_ENVELOPE_LEN,
            )
        })?;
        at_most("SenderCase.keys", self.keys.len(), MAX_REPEATED)?;
        self.keys.iter().try_for_each(|k| {
            known_enum::<e2e::Section>("SectionKey.section", k.section, false)?;
            exact("SectionKey.key", &k.key, KEY_LEN)
        })?;
        ids(
            "SenderCase.recipient_devices",
            &self.recipient_devices,
            ID_LEN,
            MAX_REPEATED,
        )?;
        ids(
            "SenderCase.confirmed_devices",
            &self.confirmed_devices,
            ID_LEN,
            MAX_REPEATED,
        )?;
        each("SenderCase.team", &self.team)
    }
}

impl Validate for e2e::SignedReferralOffer {
    fn validate(&self) -> Result {
        at_most(
            "SignedReferralOffer.offer",
            self.offer.len(),
            MAX_ENVELOPE_LEN,
        )?;
        required("SignedReferralOffer.signer", &self.signer)?.validate()?;
        exact(
            "SignedReferralOffer.signature",
            &self.signature,
            SIGNATURE_LEN,
        )
    }
}

impl Validate for e2e::SignedControl {
    fn validate(&self) -> Result {
        at_most(
            "SignedControl.control",
            self.control.len(),
            MAX_ENVELOPE_LEN,
        )?;
        required("SignedControl.signer", &self.signer)?.validate()?;
        exact("SignedControl.signature", &self.signature, SIGNATURE_LEN)
    }
}

impl Validate for e2e::ConsentReceipt {
    fn validate(&self) -> Result {
        short("ConsentReceipt.schema_version", &self.schema_version)?;
        exact("ConsentReceipt.receipt_id", &self.receipt_id, ID_LEN)?;
        exact_or_empty("ConsentReceipt.supersedes", &self.supersedes, ID_LEN)?;
        short("ConsentReceipt.principal_ref", &self.principal_ref)?;
        known_enum::<e2e::ExpressedBy>("ConsentReceipt.expressed_by", self.expressed_by, false)?;
        short(
            "ConsentReceipt.expressed_by_other",
            &self.expressed_by_other,
        )?;
        known_enum::<e2e::CollectionMethod>(
            "ConsentReceipt.collection_method",
            self.collection_method,
            false,
        )?;
        short(
            "ConsentReceipt.interpreter_language",
            &self.interpreter_language,
        )?;
        short("ConsentReceipt.consent_type", &self.consent_type)?;
        known_enum::<e2e::ConsentState>("ConsentReceipt.state", self.state, false)?;
        shorts("ConsentReceipt.jurisdictions", &self.jurisdictions)?;
        short("ConsentReceipt.notice_ref", &self.notice_ref)?;
        short("ConsentReceipt.notice_language", &self.notice_language)?;
        at_most(
            "ConsentReceipt.controllers",
            self.controllers.len(),
            MAX_REPEATED,
        )?;
        self.controllers.iter().try_for_each(|c| {
            short("Controller.name", &c.name)?;
            short("Controller.contact", &c.contact)?;
            short("Controller.address", &c.address)?;
            short("Controller.email", &c.email)?;
            short("Controller.phone", &c.phone)
        })?;
        if let Some(basis) = &self.legal_basis {
            short("LegalBasis.basis", &basis.basis)?;
            text("LegalBasis.justification", &basis.justification)?;
        }
        at_most("ConsentReceipt.purposes", self.purposes.len(), MAX_REPEATED)?;
        self.purposes.iter().try_for_each(|p| {
            text("Purpose.purpose", &p.purpose)?;
            short("Purpose.category", &p.category)
        })?;
        at_most(
            "ConsentReceipt.recipients",
            self.recipients.len(),
            MAX_REPEATED,
        )?;
        self.recipients.iter().try_for_each(|r| {
            exact("ConsentRecipient.org_root_key", &r.org_root_key, KEY_LEN)?;
            short("ConsentRecipient.org_name", &r.org_name)?;
            known_enums::<e2e::Service>("ConsentRecipient.services", &r.services)
        })?;
        known_enums::<e2e::Section>("ConsentReceipt.data_categories", &self.data_categories)?;
        shorts(
            "ConsentReceipt.special_categories",
            &self.special_categories,
        )?;
        at_most("ConsentReceipt.withheld", self.withheld.len(), MAX_REPEATED)?;
        self.withheld.iter().try_for_each(|w| {
            known_enum::<e2e::Section>("Withheld.section", w.section, false)?;
            short("Withheld.from_whom", &w.from_whom)?;
            text("Withheld.reason", &w.reason)
        })?;
        shorts("ConsentReceipt.storage_locations", &self.storage_locations)?;
        text("ConsentReceipt.withdrawal_method", &self.withdrawal_method)?;
        if let Some(w) = &self.witness {
            short("Witness.caseworker_id", &w.caseworker_id)?;
            short("Witness.org_name", &w.org_name)?;
        }
        if let Some(a) = &self.principal_ack {
            known_enum::<e2e::AckMethod>("PrincipalAck.method", a.method, true)?;
            text("PrincipalAck.detail", &a.detail)?;
        }
        known_enum::<e2e::ChildAssent>("ConsentReceipt.child_assent", self.child_assent, true)?;
        text("ConsentReceipt.minor_note", &self.minor_note)?;
        Ok(())
    }
}

impl Validate for e2e::SignedConsentReceipt {
    fn validate(&self) -> Result {
        at_most(
            "SignedConsentReceipt.receipt",
            self.receipt.len(),
            MAX_ENVELOPE_LEN,
        )?;
        required("SignedConsentReceipt.signer", &self.signer)?.validate()?;
        exact(
            "SignedConsentReceipt.signature",
            &self.signature,
            SIGNATURE_LEN,
        )
    }
}

impl Validate for e2e::BodySection {
    fn validate(&self) -> Result {
        use e2e::body_section::Content;
        match required("BodySection.content", &self.content)? {
            Content::Identity(s) => {
                if s.name_or_alias.is_empty() {
                    return Err(DecodeError::invalid(
                        "IdentitySection.name_or_alias",
                        "missing",
                    ));
                }
                short("IdentitySection.name_or_alias", &s.name_or_alias)?;
                short("IdentitySection.preferred_name", &s.preferred_name)?;
                short("IdentitySection.preferred_term", &s.preferred_term)?;
                short("IdentitySection.pronouns", &s.pronouns)?;
                short("IdentitySection.age_or_birth_date", &s.age_or_birth_date)?;
                short("IdentitySection.gender", &s.gender)?;
                text("IdentitySection.disability", &s.disability)?;
                short("IdentitySection.nationality", &s.nationality)?;
                shorts("IdentitySection.id_numbers", &s.id_numbers)
            }
            Content::SafeContact(s) => {
                shorts("SafeContactSection.channels", &s.channels)?;
                short("SafeContactSection.safe_times", &s.safe_times)?;
                short("SafeContactSection.code_word", &s.code_word)?;
                text("SafeContactSection.details", &s.details)
            }
            Content::Location(s) => text("LocationSection.location", &s.location),
            Content::Guardian(s) => {
                short("GuardianSection.caregiver", &s.caregiver)?;
                short("GuardianSection.relationship", &s.relationship)?;
                short("GuardianSection.contact", &s.contact)?;
                text(
                    "GuardianSection.not_informed_reason",
                    &s.not_informed_reason,
                )
            }
            Content::Reason(s) => text("ReasonSection.reason", &s.reason),
            Content::ServicesProvided(s) => shorts("ServicesProvidedSection.services", &s.services),
            Content::Risk(s) => {
                known_enum::<e2e::RiskLevel>("RiskSection.level", s.level, false)?;
                text("RiskSection.immediate_concerns", &s.immediate_concerns)
            }
            Content::DoNotDisclose(s) => {
                at_most("DoNotDiscloseSection.rules", s.rules.len(), MAX_REPEATED)?;
                s.rules.iter().try_for_each(|r| {
                    text("DoNotDisclose.what", &r.what)?;
                    short("DoNotDisclose.to_whom", &r.to_whom)?;
                    text("DoNotDisclose.why", &r.why)
                })
            }
            Content::Appointment(s) => {
                short("AppointmentSection.place", &s.place)?;
                text("AppointmentSection.notes", &s.notes)
            }
            Content::Attachments(s) => each("AttachmentsSection.attachments", &s.attachments),
        }
    }
}
