//! Referrals and consent on the [`Client`](crate::Client): records for drafts, sections, offers,
//! receipts and purge reports, and thin wrappers over the core client's referral methods.
//!
//! Controlled vocabularies (services, sections, priorities, reasons, ...) cross the boundary as
//! the `.proto` enum value names without their prefix: `SERVICE_SHELTER` is `"SHELTER"`,
//! `SECTION_SAFE_CONTACT` is `"SAFE_CONTACT"`, `DECLINE_REASON_NO_CAPACITY` is `"NO_CAPACITY"`
//! (case-insensitive; spaces and hyphens count as underscores). The `.proto` files are the
//! contract, so the FFI does not restate them.

use std::sync::Arc;

use handover_core::consent::{self, Language, PreferredTerm, ReceiptId, SignedReceipt};
use handover_core::engine::{self, OfferConsent};
use handover_core::referral::{self, Action, OfferDraft, ReferralId, Side};
use handover_proto::e2e::v1 as wire;

use crate::HandoverError;
use crate::client::{Attachment, Client, Role, attachments, parse_id, parse_key};

// ---------------------------------------------------------------------------------------------
// Vocabularies.

fn normalise(name: &str) -> String {
    name.trim().to_ascii_uppercase().replace([' ', '-'], "_")
}

/// Parses a vocabulary value given without its `.proto` prefix.
fn vocab<E: Into<i32> + Copy>(
    field: &str,
    prefix: &str,
    name: &str,
    parse: fn(&str) -> Option<E>,
) -> Result<E, HandoverError> {
    let value = parse(&format!("{prefix}{}", normalise(name)))
        .filter(|v| (*v).into() != 0)
        .ok_or_else(|| {
            // The value itself is not repeated: it might be free text typed by a person.
            HandoverError::invalid(format!(
                "unknown {field}: use a .proto value name without its {prefix} prefix"
            ))
        })?;
    Ok(value)
}

fn vocab_list<E: Into<i32> + Copy>(
    field: &str,
    prefix: &str,
    names: &[String],
    parse: fn(&str) -> Option<E>,
) -> Result<Vec<E>, HandoverError> {
    names
        .iter()
        .map(|n| vocab(field, prefix, n, parse))
        .collect()
}

/// The name of a vocabulary value without its prefix ("UNSPECIFIED" for unknown values).
fn name_of(prefix: &str, full: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_owned()
}

fn service(name: &str) -> Result<i32, HandoverError> {
    Ok(vocab("service", "SERVICE_", name, wire::Service::from_str_name)? as i32)
}

fn section(name: &str) -> Result<wire::Section, HandoverError> {
    vocab("section", "SECTION_", name, wire::Section::from_str_name)
}

fn service_name(value: i32) -> String {
    name_of(
        "SERVICE_",
        wire::Service::try_from(value)
            .unwrap_or_default()
            .as_str_name(),
    )
}

fn section_name(value: i32) -> String {
    name_of(
        "SECTION_",
        wire::Section::try_from(value)
            .unwrap_or_default()
            .as_str_name(),
    )
}

fn role_to_wire(role: Option<Role>) -> i32 {
    match role {
        None => wire::Role::Unspecified as i32,
        Some(Role::Admin) => wire::Role::Admin as i32,
        Some(Role::Caseworker) => wire::Role::Caseworker as i32,
        Some(Role::Ambassador) => wire::Role::Ambassador as i32,
    }
}

fn role_from_wire(value: i32) -> Option<Role> {
    match wire::Role::try_from(value) {
        Ok(wire::Role::Admin) => Some(Role::Admin),
        Ok(wire::Role::Caseworker) => Some(Role::Caseworker),
        Ok(wire::Role::Ambassador) => Some(Role::Ambassador),
        _ => None,
    }
}

/// Parses a referral id (32 hex digits).
fn referral_id(id: &str) -> Result<ReferralId, HandoverError> {
    let bytes = parse_id("a referral id", id)?;
    ReferralId::from_slice(&bytes).ok_or_else(|| HandoverError::invalid("malformed referral id"))
}

/// Parses a receipt id: a UUID ("8-4-4-4-12" hex) or 32 hex digits.
fn receipt_id(id: &str) -> Result<ReceiptId, HandoverError> {
    let bytes = parse_id("a consent receipt id", &id.replace('-', ""))?;
    ReceiptId::from_slice(&bytes)
        .ok_or_else(|| HandoverError::invalid("malformed consent receipt id"))
}

// ---------------------------------------------------------------------------------------------
// Consent.

/// A data controller named in a consent receipt.
#[derive(uniffi::Record, Clone, PartialEq, Eq)]
pub struct ConsentController {
    /// Name.
    pub name: String,
    /// Contact person or role.
    #[uniffi(default)]
    pub contact: String,
    /// Postal address.
    #[uniffi(default)]
    pub address: String,
    /// E-mail.
    #[uniffi(default)]
    pub email: String,
    /// Phone.
    #[uniffi(default)]
    pub phone: String,
}

/// A purpose the person agreed to.
#[derive(uniffi::Record, Clone, PartialEq, Eq)]
pub struct ConsentPurpose {
    /// The purpose in plain language (a referral's `purpose` must equal one of these).
    pub purpose: String,
    /// Category (Kantara purposeCategory), e.g. "referral".
    #[uniffi(default)]
    pub category: String,
    /// Whether it is the primary purpose.
    #[uniffi(default)]
    pub primary: bool,
}

/// An organisation the person agreed to share with, for which services.
#[derive(uniffi::Record, Clone, PartialEq, Eq)]
pub struct ConsentRecipient {
    /// The organisation root (hex).
    pub org_root: String,
    /// Its name.
    pub org_name: String,
    /// Services (vocabulary, e.g. "SHELTER").
    pub services: Vec<String>,
}

/// A section that must not go to someone.
#[derive(uniffi::Record, Clone, PartialEq, Eq)]
pub struct ConsentWithheld {
    /// The section (vocabulary, e.g. "LOCATION").
    pub section: String,
    /// From whom (organisation name or "all").
    pub from_whom: String,
    /// Why.
    #[uniffi(default)]
    pub reason: String,
}

/// What the caseworker records when the person gives consent (shared/DOMAIN.md "Consent
/// receipt"). The device signs it; state, time and id are set by the library.
#[derive(uniffi::Record, Clone, PartialEq, Eq)]
pub struct ConsentDraft {
    /// Pseudonymous reference to the person (never a name).
    pub principal_ref: String,
    /// Who expressed consent: SURVIVOR, CAREGIVER, GUARDIAN or OTHER.
    pub expressed_by: String,
    /// How: IN_PERSON_VERBAL, SIGNED, PHONE or VIA_INTERPRETER.
    pub collection_method: String,
    /// Purposes.
    pub purposes: Vec<ConsentPurpose>,
    /// Recipients.
    pub recipients: Vec<ConsentRecipient>,
    /// Data categories: the body sections that may be shared (vocabulary, e.g. "IDENTITY").
    pub data_categories: Vec<String>,
    /// The legal basis, e.g. "GDPR Art. 6(1)(a) and Art. 9(2)(a) explicit consent".
    pub legal_basis: String,
    /// Data controllers.
    pub controllers: Vec<ConsentController>,
    /// Caseworker id of the witness.
    pub witness_caseworker_id: String,
    /// Organisation name of the witness.
    pub witness_org_name: String,
    /// How the person acknowledged: SIGNATURE, PIN or VERBAL_WITNESSED.
    pub principal_ack_method: String,
    /// How the person can withdraw, in words.
    pub withdrawal_method: String,
    /// Retention period at the recipient, seconds.
    pub retention_secs: u64,
    /// Jurisdictions (ISO 3166 codes), at least one.
    pub jurisdictions: Vec<String>,
    /// Privacy notice reference (URL or document id).
    pub notice_ref: String,
    /// Language of the notice and of the survivor's copy (BCP 47).
    pub notice_language: String,
    /// Who, when `expressed_by` is OTHER.
    #[uniffi(default)]
    pub expressed_by_other: String,
    /// Interpreter language (BCP 47) when collected via an interpreter.
    #[uniffi(default)]
    pub interpreter_language: String,
    /// Valid until, Unix seconds (0 = until withdrawn).
    #[uniffi(default)]
    pub valid_until: u64,
    /// Contains sensitive data.
    #[uniffi(default)]
    pub sensitive: bool,
    /// Special categories (GDPR Art. 9), e.g. "health".
    #[uniffi(default)]
    pub special_categories: Vec<String>,
    /// What must not go to whom.
    #[uniffi(default)]
    pub withheld: Vec<ConsentWithheld>,
    /// Whether onward sharing is allowed.
    #[uniffi(default)]
    pub onward_sharing: bool,
    /// Where the relay and stores are hosted.
    #[uniffi(default)]
    pub storage_locations: Vec<String>,
    /// Detail of the acknowledgement (e.g. the witness's note).
    #[uniffi(default)]
    pub principal_ack_detail: String,
    /// The person is under 18; a referral of a minor needs such a receipt.
    #[uniffi(default)]
    pub principal_is_minor: bool,
    /// For a minor, the child's own agreement: GIVEN, REFUSED or NOT_APPLICABLE (empty for an
    /// adult).
    #[uniffi(default)]
    pub child_assent: String,
    /// For a minor: why consent was not expressed by a caregiver or guardian, or why assent is
    /// not applicable. No names.
    #[uniffi(default)]
    pub minor_note: String,
}

impl ConsentDraft {
    fn into_wire(self) -> Result<wire::ConsentReceipt, HandoverError> {
        Ok(wire::ConsentReceipt {
            principal_ref: self.principal_ref,
            expressed_by: vocab(
                "expressed_by",
                "EXPRESSED_BY_",
                &self.expressed_by,
                wire::ExpressedBy::from_str_name,
            )? as i32,
            expressed_by_other: self.expressed_by_other,
            collection_method: vocab(
                "collection_method",
                "COLLECTION_METHOD_",
                &self.collection_method,
                wire::CollectionMethod::from_str_name,
            )? as i32,
            interpreter_language: self.interpreter_language,
            consent_type: "EXPLICIT".to_owned(),
            valid_until: self.valid_until,
            jurisdictions: self.jurisdictions,
            notice_ref: self.notice_ref,
            notice_language: self.notice_language,
            controllers: self
                .controllers
                .into_iter()
                .map(|c| wire::Controller {
                    name: c.name,
                    contact: c.contact,
                    address: c.address,
                    email: c.email,
                    phone: c.phone,
                })
                .collect(),
            legal_basis: Some(wire::LegalBasis {
                basis: self.legal_basis,
                justification: String::new(),
                is_override: false,
            }),
            purposes: self
                .purposes
                .into_iter()
                .map(|p| wire::Purpose {
                    purpose: p.purpose,
                    category: p.category,
                    primary: p.primary,
                })
                .collect(),
            recipients: self
                .recipients
                .into_iter()
                .map(|r| {
                    Ok(wire::ConsentRecipient {
                        org_root_key: parse_key("a recipient's organisation root", &r.org_root)?
                            .to_vec(),
                        org_name: r.org_name,
                        services: r
                            .services
                            .iter()
                            .map(String::as_str)
                            .map(service)
                            .collect::<Result<_, _>>()?,
                    })
                })
                .collect::<Result<_, HandoverError>>()?,
            data_categories: vocab_list(
                "section",
                "SECTION_",
                &self.data_categories,
                wire::Section::from_str_name,
            )?
            .into_iter()
            .map(|s| s as i32)
            .collect(),
            sensitive: self.sensitive,
            special_categories: self.special_categories,
            withheld: self
                .withheld
                .into_iter()
                .map(|w| {
                    Ok(wire::Withheld {
                        section: section(&w.section)? as i32,
                        from_whom: w.from_whom,
                        reason: w.reason,
                    })
                })
                .collect::<Result<_, HandoverError>>()?,
            onward_sharing: self.onward_sharing,
            retention_secs: self.retention_secs,
            storage_locations: self.storage_locations,
            withdrawal_method: self.withdrawal_method,
            witness: Some(wire::Witness {
                caseworker_id: self.witness_caseworker_id,
                org_name: self.witness_org_name,
            }),
            principal_ack: Some(wire::PrincipalAck {
                method: vocab(
                    "principal_ack_method",
                    "ACK_METHOD_",
                    &self.principal_ack_method,
                    wire::AckMethod::from_str_name,
                )? as i32,
                detail: self.principal_ack_detail,
            }),
            principal_is_minor: self.principal_is_minor,
            child_assent: if self.child_assent.trim().is_empty() {
                0
            } else {
                vocab(
                    "child_assent",
                    "CHILD_ASSENT_",
                    &self.child_assent,
                    wire::ChildAssent::from_str_name,
                )? as i32
            },
            minor_note: self.minor_note,
            ..Default::default()
        })
    }
}

/// A signed consent receipt as stored on this device (summary; export the full receipt with
/// [`Client::export_consent_kantara`]).
#[derive(uniffi::Record, Debug, Clone, PartialEq, Eq)]
pub struct ConsentRecord {
    /// The receipt id (UUID).
    pub receipt_id: String,
    /// GIVEN, WITHDRAWN, EXPIRED, INVALIDATED, RENEWED, ...
    pub state: String,
    /// The receipt this one supersedes (UUID), if any.
    pub supersedes: Option<String>,
    /// When it was recorded, Unix seconds.
    pub event_time: u64,
    /// Valid until, Unix seconds (0 = until withdrawn).
    pub valid_until: u64,
    /// The organisations it covers (hex roots).
    pub recipients: Vec<String>,
}

fn consent_record(r: &SignedReceipt) -> ConsentRecord {
    let receipt = r.receipt();
    ConsentRecord {
        receipt_id: r.id().to_uuid_string(),
        state: name_of("CONSENT_STATE_", r.state().as_str_name()),
        supersedes: r.supersedes().map(|s| s.to_uuid_string()),
        event_time: receipt.event_time,
        valid_until: receipt.valid_until,
        recipients: receipt
            .recipients
            .iter()
            .map(|x| hex::encode(&x.org_root_key))
            .collect(),
    }
}

/// A change to recorded consent.
#[derive(uniffi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentChange {
    /// The person withdrew consent: every recipient erases and confirms.
    Withdrawn,
    /// The consent's validity ended.
    Expired,
    /// The consent turned out not to be valid.
    Invalidated,
    /// The person renewed it (a new receipt supersedes the old).
    Renewed,
}

/// Where one recipient of data under a receipt stands with erasure.
#[derive(uniffi::Enum, Debug, Clone, PartialEq, Eq)]
pub enum PurgeState {
    /// No erasure requested.
    NotRequested,
    /// Erasure requested at `since`; no confirmation yet.
    Pending {
        /// Unix seconds.
        since: u64,
    },
    /// The recipient confirmed erasure (signed).
    Confirmed {
        /// Unix seconds (the recipient's signed time).
        at: u64,
        /// The legal basis under which something was kept, if any.
        retained_under: Option<String>,
    },
}

/// Erasure status of one referral's recipient.
#[derive(uniffi::Record, Debug, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    /// The referral the data went out in (hex).
    pub referral_id: String,
    /// The recipient organisation (hex root).
    pub recipient_org: String,
    /// The status per the signed timeline.
    pub status: PurgeState,
    /// Devices that confirmed erasure (hex ids).
    pub confirmed: Vec<String>,
    /// Devices that have not confirmed yet (hex ids).
    pub pending: Vec<String>,
}

fn purge_report(r: engine::PurgeReport) -> PurgeReport {
    PurgeReport {
        referral_id: hex::encode(r.referral.as_bytes()),
        recipient_org: hex::encode(r.recipient),
        status: match r.status {
            consent::PurgeStatus::NotRequested => PurgeState::NotRequested,
            consent::PurgeStatus::Pending { since } => PurgeState::Pending { since },
            consent::PurgeStatus::Confirmed { at, retained_under } => {
                PurgeState::Confirmed { at, retained_under }
            }
        },
        confirmed: r.confirmed.iter().map(|d| hex::encode(d.0)).collect(),
        pending: r.pending.iter().map(|d| hex::encode(d.0)).collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Referral drafts and sections.

/// An organisation and worker on a referral.
#[derive(uniffi::Record, Clone, PartialEq, Eq)]
pub struct Party {
    /// The organisation root (hex).
    pub org_root: String,
    /// The organisation's name.
    pub org_name: String,
    /// Worker name (required for the sender; an optional named worker for the receiver).
    #[uniffi(default)]
    pub worker_name: String,
    /// The worker's role (required for the sender).
    #[uniffi(default)]
    pub role: Option<Role>,
    /// Professional contact (never the person's).
    #[uniffi(default)]
    pub contact: String,
}

impl Party {
    fn into_wire(self) -> Result<wire::Party, HandoverError> {
        Ok(wire::Party {
            org_root_key: parse_key("an organisation root", &self.org_root)?.to_vec(),
            org_name: self.org_name,
            worker_name: self.worker_name,
            role: role_to_wire(self.role),
            contact: self.contact,
        })
    }

    fn from_wire(p: &wire::Party) -> Self {
        Self {
            org_root: hex::encode(&p.org_root_key),
            org_name: p.org_name.clone(),
            worker_name: p.worker_name.clone(),
            role: role_from_wire(p.role),
            contact: p.contact.clone(),
        }
    }
}

/// What the caseworker fills in for a referral offer (no direct identifiers of the person;
/// those go in body sections).
#[derive(uniffi::Record, Clone, PartialEq, Eq)]
pub struct ReferralDraft {
    /// REFERRAL, TRANSFER or INFO_REQUEST.
    pub kind: String,
    /// Pseudonymous case code of the sender.
    pub sender_case_ref: String,
    /// Sending organisation and worker.
    pub from_party: Party,
    /// Receiving organisation.
    pub to_party: Party,
    /// Services requested (vocabulary, e.g. "SHELTER").
    pub services_requested: Vec<String>,
    /// EMERGENCY, URGENT or NORMAL (sets the default offer lifetime).
    pub priority: String,
    /// Why the data is shared; must be one of the consent's purposes.
    pub purpose: String,
    /// CHILD, ADOLESCENT, ADULT or OLDER_ADULT.
    pub age_band: String,
    /// The receiver must erase the body by then, Unix seconds.
    pub retain_until: u64,
    /// Retention rule in words.
    pub retention_rule: String,
    /// Languages the person speaks (BCP 47), at least one.
    pub languages: Vec<String>,
    /// Names of services when OTHER is requested.
    #[uniffi(default)]
    pub other_services: Vec<String>,
    /// Whether an interpreter is needed.
    #[uniffi(default)]
    pub interpreter_needed: bool,
    /// Preferred worker gender; empty = no preference.
    #[uniffi(default)]
    pub preferred_worker_gender: String,
    /// Whether the person is a minor (a GUARDIAN section is then required).
    #[uniffi(default)]
    pub is_minor: bool,
    /// Whether the receiver may share onward.
    #[uniffi(default)]
    pub onward_sharing_allowed: bool,
    /// Offer lifetime in seconds; `None` = the default for the priority.
    #[uniffi(default)]
    pub offer_ttl_secs: Option<u64>,
}

impl ReferralDraft {
    fn into_core(self) -> Result<OfferDraft, HandoverError> {
        Ok(OfferDraft {
            kind: vocab(
                "kind",
                "REFERRAL_KIND_",
                &self.kind,
                wire::ReferralKind::from_str_name,
            )?,
            sender_case_ref: self.sender_case_ref,
            from: self.from_party.into_wire()?,
            to: self.to_party.into_wire()?,
            services_requested: vocab_list(
                "service",
                "SERVICE_",
                &self.services_requested,
                wire::Service::from_str_name,
            )?,
            other_services: self.other_services,
            priority: vocab(
                "priority",
                "PRIORITY_",
                &self.priority,
                wire::Priority::from_str_name,
            )?,
            purpose: self.purpose,
            languages: self.languages,
            interpreter_needed: self.interpreter_needed,
            preferred_worker_gender: self.preferred_worker_gender,
            age_band: vocab(
                "age_band",
                "AGE_BAND_",
                &self.age_band,
                wire::AgeBand::from_str_name,
            )?,
            is_minor: self.is_minor,
            onward_sharing_allowed: self.onward_sharing_allowed,
            retain_until: self.retain_until,
            retention_rule: self.retention_rule,
            offer_ttl_secs: self.offer_ttl_secs,
        })
    }
}

/// The consent a referral relies on.
#[derive(uniffi::Enum, Clone, PartialEq, Eq)]
pub enum ReferralConsent {
    /// A receipt recorded on this device ([`Client::record_consent`]).
    Receipt {
        /// Its id (UUID).
        receipt_id: String,
    },
    /// Sharing without consent (admin devices only); visible to the person later.
    Override {
        /// The legal basis, e.g. "GDPR Art. 9(2)(c) vital interests".
        legal_basis: String,
        /// Why consent could not be obtained and sharing is necessary.
        justification: String,
        /// Who authorised it.
        authorised_by: String,
    },
}

impl std::fmt::Debug for ReferralConsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Receipt { .. } => "ReferralConsent::Receipt(..)",
            Self::Override { .. } => "ReferralConsent::Override(..)",
        })
    }
}

/// One do-not-disclose rule.
#[derive(uniffi::Record, Clone, PartialEq, Eq)]
pub struct DoNotDiscloseRule {
    /// What must not be disclosed.
    pub what: String,
    /// To whom.
    pub to_whom: String,
    /// Why.
    #[uniffi(default)]
    pub why: String,
}

/// One section of a referral body (shared/DOMAIN.md "Body"): sealed under its own key and
/// released to the receiving organisation only after it accepts.
#[derive(uniffi::Enum, Clone)]
pub enum BodySection {
    /// Who the person is. `name_or_alias` is required; every id is optional.
    Identity {
        /// Name or alias.
        name_or_alias: String,
        /// Preferred name.
        #[uniffi(default)]
        preferred_name: String,
        /// "victim", "survivor" or empty (none).
        #[uniffi(default)]
        preferred_term: String,
        /// Pronouns.
        #[uniffi(default)]
        pronouns: String,
        /// Age or birth date.
        #[uniffi(default)]
        age_or_birth_date: String,
        /// Gender, self-described.
        #[uniffi(default)]
        gender: String,
        /// Disability or access needs.
        #[uniffi(default)]
        disability: String,
        /// Nationality.
        #[uniffi(default)]
        nationality: String,
        /// Identity document numbers.
        #[uniffi(default)]
        id_numbers: Vec<String>,
    },
    /// How to contact the person safely.
    SafeContact {
        /// Whether it is safe to contact the person at all.
        safe_to_contact: bool,
        /// Safe channels.
        #[uniffi(default)]
        channels: Vec<String>,
        /// Safe times.
        #[uniffi(default)]
        safe_times: String,
        /// Code word.
        #[uniffi(default)]
        code_word: String,
        /// Whether a voicemail may be left.
        #[uniffi(default)]
        voicemail_ok: bool,
        /// Whether someone else may answer.
        #[uniffi(default)]
        others_may_answer: bool,
        /// Phone, address or other details.
        #[uniffi(default)]
        details: String,
    },
    /// Where the person is (only if the service needs it).
    Location {
        /// As precise as needed.
        location: String,
    },
    /// The guardian of a minor.
    Guardian {
        /// Caregiver name.
        caregiver: String,
        /// Relationship to the child.
        #[uniffi(default)]
        relationship: String,
        /// Caregiver contact.
        #[uniffi(default)]
        contact: String,
        /// Unaccompanied or separated child.
        #[uniffi(default)]
        unaccompanied: bool,
        /// Whether the caregiver was informed.
        #[uniffi(default)]
        caregiver_informed: bool,
        /// Why not.
        #[uniffi(default)]
        not_informed_reason: String,
    },
    /// Why the person is referred (minimal narrative).
    Reason {
        /// The reason.
        reason: String,
    },
    /// Services already provided.
    ServicesProvided {
        /// Services.
        services: Vec<String>,
    },
    /// Risk assessment.
    Risk {
        /// LOW, MEDIUM or HIGH.
        level: String,
        /// Immediate concerns.
        #[uniffi(default)]
        immediate_concerns: String,
        /// A safety plan exists.
        #[uniffi(default)]
        safety_plan_exists: bool,
        /// An escape plan exists.
        #[uniffi(default)]
        escape_plan_exists: bool,
        /// The perpetrator knows the person's location.
        #[uniffi(default)]
        perpetrator_knows_location: bool,
    },
    /// What must not reach whom.
    DoNotDisclose {
        /// Rules.
        rules: Vec<DoNotDiscloseRule>,
    },
    /// An appointment.
    Appointment {
        /// When, Unix seconds.
        at: u64,
        /// Where.
        #[uniffi(default)]
        place: String,
        /// Notes.
        #[uniffi(default)]
        notes: String,
    },
    /// Documents ([`Client::upload_attachment`]).
    Attachments {
        /// The files.
        attachments: Vec<Arc<Attachment>>,
    },
}

impl std::fmt::Debug for BodySection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Case content: name the section only.
        write!(f, "BodySection::{}", self.section_name())
    }
}

impl BodySection {
    fn section_name(&self) -> &'static str {
        match self {
            Self::Identity { .. } => "Identity",
            Self::SafeContact { .. } => "SafeContact",
            Self::Location { .. } => "Location",
            Self::Guardian { .. } => "Guardian",
            Self::Reason { .. } => "Reason",
            Self::ServicesProvided { .. } => "ServicesProvided",
            Self::Risk { .. } => "Risk",
            Self::DoNotDisclose { .. } => "DoNotDisclose",
            Self::Appointment { .. } => "Appointment",
            Self::Attachments { .. } => "Attachments",
        }
    }

    fn into_wire(self) -> Result<wire::BodySection, HandoverError> {
        use wire::body_section::Content as C;
        let content = match self {
            Self::Identity {
                name_or_alias,
                preferred_name,
                preferred_term,
                pronouns,
                age_or_birth_date,
                gender,
                disability,
                nationality,
                id_numbers,
            } => C::Identity(wire::IdentitySection {
                name_or_alias,
                preferred_name,
                preferred_term,
                pronouns,
                age_or_birth_date,
                gender,
                disability,
                nationality,
                id_numbers,
            }),
            Self::SafeContact {
                safe_to_contact,
                channels,
                safe_times,
                code_word,
                voicemail_ok,
                others_may_answer,
                details,
            } => C::SafeContact(wire::SafeContactSection {
                safe_to_contact,
                channels,
                safe_times,
                code_word,
                voicemail_ok,
                others_may_answer,
                details,
            }),
            Self::Location { location } => C::Location(wire::LocationSection { location }),
            Self::Guardian {
                caregiver,
                relationship,
                contact,
                unaccompanied,
                caregiver_informed,
                not_informed_reason,
            } => C::Guardian(wire::GuardianSection {
                caregiver,
                relationship,
                contact,
                unaccompanied,
                caregiver_informed,
                not_informed_reason,
            }),
            Self::Reason { reason } => C::Reason(wire::ReasonSection { reason }),
            Self::ServicesProvided { services } => {
                C::ServicesProvided(wire::ServicesProvidedSection { services })
            }
            Self::Risk {
                level,
                immediate_concerns,
                safety_plan_exists,
                escape_plan_exists,
                perpetrator_knows_location,
            } => C::Risk(wire::RiskSection {
                level: vocab(
                    "risk level",
                    "RISK_LEVEL_",
                    &level,
                    wire::RiskLevel::from_str_name,
                )? as i32,
                immediate_concerns,
                safety_plan_exists,
                escape_plan_exists,
                perpetrator_knows_location,
            }),
            Self::DoNotDisclose { rules } => C::DoNotDisclose(wire::DoNotDiscloseSection {
                rules: rules
                    .into_iter()
                    .map(|r| wire::DoNotDisclose {
                        what: r.what,
                        to_whom: r.to_whom,
                        why: r.why,
                    })
                    .collect(),
            }),
            Self::Appointment { at, place, notes } => {
                C::Appointment(wire::AppointmentSection { at, place, notes })
            }
            Self::Attachments { attachments } => C::Attachments(wire::AttachmentsSection {
                attachments: attachments.iter().map(|a| a.inner.clone()).collect(),
            }),
        };
        Ok(wire::BodySection {
            content: Some(content),
        })
    }

    fn from_wire(section: wire::BodySection) -> Option<Self> {
        use wire::body_section::Content as C;
        Some(match section.content? {
            C::Identity(s) => Self::Identity {
                name_or_alias: s.name_or_alias,
                preferred_name: s.preferred_name,
                preferred_term: s.preferred_term,
                pronouns: s.pronouns,
                age_or_birth_date: s.age_or_birth_date,
                gender: s.gender,
                disability: s.disability,
                nationality: s.nationality,
                id_numbers: s.id_numbers,
            },
            C::SafeContact(s) => Self::SafeContact {
                safe_to_contact: s.safe_to_contact,
                channels: s.channels,
                safe_times: s.safe_times,
                code_word: s.code_word,
                voicemail_ok: s.voicemail_ok,
                others_may_answer: s.others_may_answer,
                details: s.details,
            },
            C::Location(s) => Self::Location {
                location: s.location,
            },
            C::Guardian(s) => Self::Guardian {
                caregiver: s.caregiver,
                relationship: s.relationship,
                contact: s.contact,
                unaccompanied: s.unaccompanied,
                caregiver_informed: s.caregiver_informed,
                not_informed_reason: s.not_informed_reason,
            },
            C::Reason(s) => Self::Reason { reason: s.reason },
            C::ServicesProvided(s) => Self::ServicesProvided {
                services: s.services,
            },
            C::Risk(s) => Self::Risk {
                level: name_of(
                    "RISK_LEVEL_",
                    wire::RiskLevel::try_from(s.level)
                        .unwrap_or_default()
                        .as_str_name(),
                ),
                immediate_concerns: s.immediate_concerns,
                safety_plan_exists: s.safety_plan_exists,
                escape_plan_exists: s.escape_plan_exists,
                perpetrator_knows_location: s.perpetrator_knows_location,
            },
            C::DoNotDisclose(s) => Self::DoNotDisclose {
                rules: s
                    .rules
                    .into_iter()
                    .map(|r| DoNotDiscloseRule {
                        what: r.what,
                        to_whom: r.to_whom,
                        why: r.why,
                    })
                    .collect(),
            },
            C::Appointment(s) => Self::Appointment {
                at: s.at,
                place: s.place,
                notes: s.notes,
            },
            C::Attachments(s) => Self::Attachments {
                attachments: attachments(&s.attachments),
            },
        })
    }
}

/// Every section kind, in `.proto` order.
const SECTIONS: [wire::Section; 10] = [
    wire::Section::Identity,
    wire::Section::SafeContact,
    wire::Section::Location,
    wire::Section::Guardian,
    wire::Section::Reason,
    wire::Section::ServicesProvided,
    wire::Section::Risk,
    wire::Section::DoNotDisclose,
    wire::Section::Appointment,
    wire::Section::Attachments,
];

// ---------------------------------------------------------------------------------------------
// Referral views and steps.

/// A referral offer as the receiver triages it (no direct identifiers).
#[derive(uniffi::Record, Clone, PartialEq, Eq)]
pub struct ReferralOffer {
    /// REFERRAL, TRANSFER or INFO_REQUEST.
    pub kind: String,
    /// The sender's pseudonymous case code.
    pub sender_case_ref: String,
    /// Sending organisation and worker.
    pub from_party: Party,
    /// Receiving organisation.
    pub to_party: Party,
    /// Services requested.
    pub services_requested: Vec<String>,
    /// Priority.
    pub priority: String,
    /// Respond by, Unix seconds.
    pub respond_by: u64,
    /// Why the data is shared.
    pub purpose: String,
    /// Which body sections are included.
    pub sections_included: Vec<String>,
    /// The consent receipt relied on (UUID), if any.
    pub consent_receipt_id: Option<String>,
    /// The legal basis of an override, if the referral relies on one.
    pub override_legal_basis: Option<String>,
    /// Languages.
    pub languages: Vec<String>,
    /// Interpreter needed.
    pub interpreter_needed: bool,
    /// Preferred worker gender.
    pub preferred_worker_gender: String,
    /// Age band.
    pub age_band: String,
    /// Whether the person is a minor.
    pub is_minor: bool,
    /// Whether onward sharing is allowed.
    pub onward_sharing_allowed: bool,
    /// Erase the body by then, Unix seconds.
    pub retain_until: u64,
    /// The offer expires at, Unix seconds.
    pub offer_expires_at: u64,
}

fn offer(o: &wire::ReferralOffer) -> ReferralOffer {
    let (receipt, override_basis) = match o.consent.as_ref().and_then(|c| c.basis.as_ref()) {
        Some(wire::consent_ref::Basis::Receipt(r)) => (
            ReceiptId::from_slice(&r.receipt_id).map(|id| id.to_uuid_string()),
            None,
        ),
        Some(wire::consent_ref::Basis::Override(x)) => (None, Some(x.legal_basis.clone())),
        None => (None, None),
    };
    let enum_name = |prefix: &str, full: &str| name_of(prefix, full);
    ReferralOffer {
        kind: enum_name(
            "REFERRAL_KIND_",
            wire::ReferralKind::try_from(o.kind)
                .unwrap_or_default()
                .as_str_name(),
        ),
        sender_case_ref: o.sender_case_ref.clone(),
        from_party: o
            .from
            .as_ref()
            .map(Party::from_wire)
            .unwrap_or_else(empty_party),
        to_party: o
            .to
            .as_ref()
            .map(Party::from_wire)
            .unwrap_or_else(empty_party),
        services_requested: o
            .services_requested
            .iter()
            .map(|s| service_name(*s))
            .collect(),
        priority: enum_name(
            "PRIORITY_",
            wire::Priority::try_from(o.priority)
                .unwrap_or_default()
                .as_str_name(),
        ),
        respond_by: o.respond_by,
        purpose: o.purpose.clone(),
        sections_included: o
            .sections_included
            .iter()
            .map(|s| section_name(*s))
            .collect(),
        consent_receipt_id: receipt,
        override_legal_basis: override_basis,
        languages: o.languages.clone(),
        interpreter_needed: o.interpreter_needed,
        preferred_worker_gender: o.preferred_worker_gender.clone(),
        age_band: enum_name(
            "AGE_BAND_",
            wire::AgeBand::try_from(o.age_band)
                .unwrap_or_default()
                .as_str_name(),
        ),
        is_minor: o.is_minor,
        onward_sharing_allowed: o.onward_sharing_allowed,
        retain_until: o.retain_until,
        offer_expires_at: o.offer_expires_at,
    }
}

fn empty_party() -> Party {
    Party {
        org_root: String::new(),
        org_name: String::new(),
        worker_name: String::new(),
        role: None,
        contact: String::new(),
    }
}

/// Which side of a referral this device is on.
#[derive(uniffi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferralSide {
    /// The referring organisation.
    Sender,
    /// The receiving organisation.
    Receiver,
}

/// A referral on this device: side, state, audit trail and (until erased) the offer.
#[derive(uniffi::Record, Clone, PartialEq, Eq)]
pub struct Referral {
    /// The referral id (hex).
    pub id: String,
    /// Sender or receiver.
    pub side: ReferralSide,
    /// The shared/DOMAIN.md state: SENT, DELIVERED, ACKNOWLEDGED, ACCEPTED, ...,
    /// CONSENT_REVOKED, PURGE_CONFIRMED.
    pub state: String,
    /// The other organisation (hex root).
    pub counterpart_org: String,
    /// The hash-chained, signed timeline as JSON (no case content).
    pub timeline_json: String,
    /// The offer (the receiver's copy until it is erased, or the sender's own).
    pub offer: Option<ReferralOffer>,
    /// Sender side: the device of this organisation the case is assigned to (hex device id).
    pub assignee_device: Option<String>,
    /// Sender side: whether the case is assigned to this device ("mine"; otherwise it is "my
    /// organisation's").
    pub mine: bool,
    /// Sender side: steps among this organisation's devices (release claims, reassignments),
    /// oldest first.
    pub team: Vec<TeamStep>,
}

/// A step among the sending organisation's own devices (docs/PROTOCOL.md §11.9), signed by the
/// device that took it; never sent to the receiving organisation.
#[derive(uniffi::Record, Clone, PartialEq, Eq)]
pub struct TeamStep {
    /// The acting device's clock, Unix seconds.
    pub at: u64,
    /// The device that took the step (hex).
    pub device_id: String,
    /// Its name in its certificate.
    pub device_name: String,
    /// RELEASED (it released the body) or REASSIGNED.
    pub action: String,
    /// REASSIGNED: the device that holds the case from then on (hex).
    pub assignee_device: Option<String>,
}

fn team_step(step: &handover_core::referral::TeamStep) -> TeamStep {
    use handover_core::referral::TeamAction;
    let (action, assignee) = match step.action {
        TeamAction::Released => ("RELEASED", None),
        TeamAction::Reassigned { assignee } => ("REASSIGNED", Some(hex::encode(assignee.0))),
    };
    TeamStep {
        at: step.at,
        device_id: hex::encode(step.device.0),
        device_name: step.label.clone(),
        action: action.to_owned(),
        assignee_device: assignee,
    }
}

/// A lifecycle step (shared/DOMAIN.md "Lifecycle"); the library signs it and sends it to the
/// other organisation.
#[derive(uniffi::Enum, Clone, PartialEq, Eq)]
pub enum ReferralAction {
    /// Receiver: the organisation opened it (records DELIVERED first if needed).
    Acknowledge,
    /// Receiver: accept; the sender then releases the body.
    Accept,
    /// Receiver: decline with a reason (OUT_OF_MANDATE, NO_CAPACITY, SERVICE_UNAVAILABLE,
    /// CONFLICT_OF_INTEREST, INSUFFICIENT_INFORMATION, SURVIVOR_DECLINED, OTHER).
    Decline {
        /// The reason code.
        reason: String,
        /// A note.
        #[uniffi(default)]
        note: String,
    },
    /// Receiver: ask for more information.
    RequestInfo {
        /// The questions.
        questions: Vec<String>,
    },
    /// Sender: answer an information request.
    ProvideInfo {
        /// The answers.
        answers: Vec<String>,
    },
    /// Receiver: service started.
    StartService,
    /// Receiver: an appointment was made.
    UpdateAppointment {
        /// When, Unix seconds.
        at: u64,
        /// Where.
        #[uniffi(default)]
        place: String,
        /// Notes.
        #[uniffi(default)]
        notes: String,
    },
    /// Receiver: contact with the person was made.
    UpdateContactMade {
        /// When, Unix seconds.
        at: u64,
    },
    /// Receiver: completed. `not_successful_reason` (CLIENT_REFUSED, LACK_OF_CAPACITY,
    /// NO_LONGER_NEEDED, UNABLE_TO_CONTACT_CLIENT, UNABLE_TO_CONTACT_ORGANISATION, OTHER) is
    /// required when `successful` is false.
    Complete {
        /// Whether the service was provided.
        successful: bool,
        /// Why not.
        #[uniffi(default)]
        not_successful_reason: Option<String>,
        /// A note.
        #[uniffi(default)]
        note: String,
    },
    /// Sender: withdraw the referral; the receiver erases and confirms.
    Withdraw {
        /// Why, in words.
        reason: String,
    },
}

impl std::fmt::Debug for ReferralAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Notes, questions and answers are case content.
        f.write_str(match self {
            Self::Acknowledge => "Acknowledge",
            Self::Accept => "Accept",
            Self::Decline { .. } => "Decline(..)",
            Self::RequestInfo { .. } => "RequestInfo(..)",
            Self::ProvideInfo { .. } => "ProvideInfo(..)",
            Self::StartService => "StartService",
            Self::UpdateAppointment { .. } => "UpdateAppointment(..)",
            Self::UpdateContactMade { .. } => "UpdateContactMade(..)",
            Self::Complete { .. } => "Complete(..)",
            Self::Withdraw { .. } => "Withdraw(..)",
        })
    }
}

impl ReferralAction {
    fn into_core(self) -> Result<Action, HandoverError> {
        Ok(match self {
            Self::Acknowledge => Action::Acknowledge,
            Self::Accept => Action::Accept,
            Self::Decline { reason, note } => Action::Decline {
                reason: vocab(
                    "decline reason",
                    "DECLINE_REASON_",
                    &reason,
                    wire::DeclineReason::from_str_name,
                )?,
                note,
            },
            Self::RequestInfo { questions } => Action::RequestInfo { questions },
            Self::ProvideInfo { answers } => Action::ProvideInfo { answers },
            Self::StartService => Action::StartService,
            Self::UpdateAppointment { at, place, notes } => Action::Update(wire::Update {
                update: Some(wire::update::Update::Appointment(
                    wire::AppointmentSection { at, place, notes },
                )),
            }),
            Self::UpdateContactMade { at } => Action::Update(wire::Update {
                update: Some(wire::update::Update::ContactMadeAt(at)),
            }),
            Self::Complete {
                successful,
                not_successful_reason,
                note,
            } => Action::Complete {
                outcome: if successful {
                    referral::Outcome::Successful
                } else {
                    referral::Outcome::NotSuccessful(match not_successful_reason {
                        Some(r) => vocab(
                            "not-successful reason",
                            "NOT_SUCCESSFUL_REASON_",
                            &r,
                            wire::NotSuccessfulReason::from_str_name,
                        )?,
                        None => wire::NotSuccessfulReason::Unspecified,
                    })
                },
                note,
            },
            Self::Withdraw { reason } => Action::Withdraw { reason },
        })
    }
}

/// A referral or consent step the client applied or refused (delivered to the
/// [`MessageListener`](crate::MessageListener) as `ClientEvent::Referral`).
#[derive(uniffi::Enum, Debug, Clone, PartialEq, Eq)]
pub enum ReferralEvent {
    /// An offer arrived and passed the signature and consent checks.
    OfferReceived {
        /// The referral (hex).
        referral_id: String,
    },
    /// The lifecycle moved to `state`.
    StateChanged {
        /// The referral (hex).
        referral_id: String,
        /// The new state.
        state: String,
    },
    /// The receiver accepted: release the body ([`Client::release_referral_body`]).
    ReleaseBody {
        /// The referral (hex).
        referral_id: String,
    },
    /// The released body arrived and matched the offer.
    BodyReceived {
        /// The referral (hex).
        referral_id: String,
    },
    /// Referral content was erased on this device.
    Erased {
        /// The referral (hex).
        referral_id: String,
    },
    /// A device of the receiving organisation confirmed erasure.
    PurgeConfirmed {
        /// The referral (hex).
        referral_id: String,
        /// The confirming device (hex).
        device_id: String,
        /// Whether something was kept under a legal exception.
        retained: bool,
    },
    /// The consent a referral relies on changed.
    ConsentChanged {
        /// The referral (hex).
        referral_id: String,
    },
    /// A signed consent receipt from a trusted organisation was stored.
    ConsentReceiptReceived {
        /// The receipt (UUID).
        receipt_id: String,
    },
    /// A colleague device shared a referral this organisation sent: this device now follows
    /// it and can take every sender step.
    CaseShared {
        /// The referral (hex).
        referral_id: String,
    },
    /// A colleague device released the body (RELEASED) or reassigned the case (REASSIGNED).
    TeamStep {
        /// The referral (hex).
        referral_id: String,
        /// The colleague device (hex).
        device_id: String,
        /// RELEASED or REASSIGNED.
        action: String,
        /// REASSIGNED: the device that holds the case now (hex).
        assignee_device: Option<String>,
    },
    /// Incoming referral content was refused; nothing changed.
    Refused {
        /// The referral (hex), when known.
        referral_id: Option<String>,
        /// Why (no case content).
        reason: String,
    },
}

pub(crate) fn referral_event(e: engine::ReferralEvent) -> Option<ReferralEvent> {
    use engine::ReferralEvent as E;
    let id = |r: ReferralId| hex::encode(r.as_bytes());
    Some(match e {
        E::OfferReceived { referral } => ReferralEvent::OfferReceived {
            referral_id: id(referral),
        },
        E::StateChanged { referral, state } => ReferralEvent::StateChanged {
            referral_id: id(referral),
            state: state.to_owned(),
        },
        E::ReleaseBody { referral } => ReferralEvent::ReleaseBody {
            referral_id: id(referral),
        },
        E::BodyReceived { referral } => ReferralEvent::BodyReceived {
            referral_id: id(referral),
        },
        E::Erased { referral } => ReferralEvent::Erased {
            referral_id: id(referral),
        },
        E::PurgeConfirmed {
            referral,
            device,
            retained,
        } => ReferralEvent::PurgeConfirmed {
            referral_id: id(referral),
            device_id: hex::encode(device.0),
            retained,
        },
        E::ConsentChanged { referral } => ReferralEvent::ConsentChanged {
            referral_id: id(referral),
        },
        E::ConsentReceiptReceived { receipt } => ReferralEvent::ConsentReceiptReceived {
            receipt_id: receipt.to_uuid_string(),
        },
        E::CaseShared { referral } => ReferralEvent::CaseShared {
            referral_id: id(referral),
        },
        E::TeamStep {
            referral,
            device,
            action,
        } => {
            use handover_core::referral::TeamAction;
            let (action, assignee) = match action {
                TeamAction::Released => ("RELEASED", None),
                TeamAction::Reassigned { assignee } => {
                    ("REASSIGNED", Some(hex::encode(assignee.0)))
                }
            };
            ReferralEvent::TeamStep {
                referral_id: id(referral),
                device_id: hex::encode(device.0),
                action: action.to_owned(),
                assignee_device: assignee,
            }
        }
        E::Refused { referral, error } => ReferralEvent::Refused {
            referral_id: referral.map(id),
            reason: error.to_string(),
        },
        _ => return None,
    })
}

fn not_found(what: &str) -> HandoverError {
    HandoverError::NotFound {
        detail: what.to_owned(),
    }
}

#[uniffi::export]
impl Client {
    /// Records consent given now: the device signs the receipt for its organisation.
    pub async fn record_consent(
        &self,
        draft: ConsentDraft,
    ) -> Result<ConsentRecord, HandoverError> {
        let draft = draft.into_wire()?;
        self.call(|c| async move { Ok(consent_record(&c.record_consent(draft).await?)) })
            .await
    }

    /// A stored consent receipt (own or received).
    pub async fn consent_receipt(
        &self,
        receipt_id: String,
    ) -> Result<ConsentRecord, HandoverError> {
        let id = self::receipt_id(&receipt_id)?;
        self.call(|c| async move {
            c.with_engine(move |e, _, _| e.consent_receipt(&id))
                .await??
                .map(|r| consent_record(&r))
                .ok_or_else(|| not_found("consent receipt"))
        })
        .await
    }

    /// The Kantara Consent Receipt v1.1 JSON of a stored receipt.
    pub async fn export_consent_kantara(
        &self,
        receipt_id: String,
    ) -> Result<String, HandoverError> {
        let id = self::receipt_id(&receipt_id)?;
        self.call(|c| async move { Ok(c.kantara_export(id).await?.to_string()) })
            .await
    }

    /// The survivor's human-readable copy of a receipt in `language` (BCP 47: en, ar, uk, fr,
    /// es), with the person's preferred name and term ("victim", "survivor" or anything else
    /// for none). With `case_ref`, sharing without consent under that case is listed too.
    pub async fn consent_survivor_copy(
        &self,
        receipt_id: String,
        language: String,
        preferred_name: Option<String>,
        preferred_term: String,
        case_ref: Option<String>,
    ) -> Result<String, HandoverError> {
        let id = self::receipt_id(&receipt_id)?;
        let language = Language::from_tag(&language).ok_or_else(|| {
            HandoverError::invalid("unsupported language; use en, ar, uk, fr or es")
        })?;
        let term = PreferredTerm::from_text(&preferred_term);
        self.call(|c| async move {
            Ok(
                c.survivor_copy(id, language, preferred_name, term, case_ref)
                    .await?,
            )
        })
        .await
    }

    /// Changes consent and sends the change to every organisation that received data under it;
    /// when withdrawn, expired or invalidated they erase it and confirm
    /// ([`purge_status`](Client::purge_status)). Returns the new receipt.
    pub async fn change_consent(
        &self,
        receipt_id: String,
        change: ConsentChange,
    ) -> Result<ConsentRecord, HandoverError> {
        let id = self::receipt_id(&receipt_id)?;
        let state = match change {
            ConsentChange::Withdrawn => wire::ConsentState::Withdrawn,
            ConsentChange::Expired => wire::ConsentState::Expired,
            ConsentChange::Invalidated => wire::ConsentState::Invalidated,
            ConsentChange::Renewed => wire::ConsentState::Renewed,
        };
        self.call(|c| async move { Ok(consent_record(&c.change_consent(id, state).await?)) })
            .await
    }

    /// Erasure status per recipient of data under a receipt.
    pub async fn purge_status(
        &self,
        receipt_id: String,
    ) -> Result<Vec<PurgeReport>, HandoverError> {
        let id = self::receipt_id(&receipt_id)?;
        self.call(|c| async move {
            Ok(c.purge_status(id)
                .await?
                .into_iter()
                .map(purge_report)
                .collect())
        })
        .await
    }

    /// Sends a referral offer to every device of the receiving organisation (`draft.to`). The
    /// consent gate runs first: if the consent does not cover the recipient, purpose, services
    /// or sections, it fails with `ConsentRefused` naming what is missing and nothing is sent.
    /// Returns the referral id (hex).
    pub async fn send_referral(
        &self,
        draft: ReferralDraft,
        sections: Vec<BodySection>,
        consent: ReferralConsent,
    ) -> Result<String, HandoverError> {
        let draft = draft.into_core()?;
        let sections = sections
            .into_iter()
            .map(BodySection::into_wire)
            .collect::<Result<Vec<_>, _>>()?;
        let consent = match consent {
            ReferralConsent::Receipt { receipt_id } => {
                OfferConsent::Receipt(self::receipt_id(&receipt_id)?)
            }
            ReferralConsent::Override {
                legal_basis,
                justification,
                authorised_by,
            } => OfferConsent::Override(wire::ConsentOverride {
                legal_basis,
                justification,
                authorised_by,
            }),
        };
        self.call(|c| async move {
            let id = c.send_referral(draft, sections, consent).await?;
            Ok(hex::encode(id.as_bytes()))
        })
        .await
    }

    /// Takes a lifecycle step and sends the signed control. Returns the new state.
    pub async fn referral_act(
        &self,
        referral_id: String,
        action: ReferralAction,
    ) -> Result<String, HandoverError> {
        let id = self::referral_id(&referral_id)?;
        let action = action.into_core()?;
        self.call(|c| async move { Ok(c.referral_act(id, action).await?.name().to_owned()) })
            .await
    }

    /// Sender: releases an accepted referral's body to the receiving organisation's
    /// non-ambassador devices. Returns how many devices it went to.
    pub async fn release_referral_body(&self, referral_id: String) -> Result<u32, HandoverError> {
        let id = self::referral_id(&referral_id)?;
        self.call(|c| async move {
            let n = c.release_referral_body(id).await?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
        .await
    }

    /// Sender: ids of referrals the receiver accepted whose body is not released yet. Kept
    /// durably, unlike the `ReleaseBody` event: call it after `open` and after each `sync`,
    /// and release each with [`release_referral_body`](Self::release_referral_body).
    pub async fn pending_releases(&self) -> Result<Vec<String>, HandoverError> {
        self.call(|c| async move {
            Ok(c.pending_releases()
                .await?
                .iter()
                .map(|id| hex::encode(id.as_bytes()))
                .collect())
        })
        .await
    }

    /// Sender: the accepted referrals this device should release now: those assigned to it,
    /// those whose assigned device was revoked, and any other nobody of the organisation has
    /// released for ten minutes. Call it after each `sync` and release each; a colleague's
    /// release removes a referral from the list.
    pub async fn due_releases(&self) -> Result<Vec<String>, HandoverError> {
        self.call(|c| async move {
            Ok(c.due_releases()
                .await?
                .iter()
                .map(|id| hex::encode(id.as_bytes()))
                .collect())
        })
        .await
    }

    /// Sender: hands a referral this organisation sent to another caseworker or admin device
    /// of it (`device_id` hex, or this device's own id to take it).
    pub async fn reassign_referral(
        &self,
        referral_id: String,
        device_id: String,
    ) -> Result<(), HandoverError> {
        let id = self::referral_id(&referral_id)?;
        let to = crate::client::device_id(&device_id)?;
        self.call(|c| async move { Ok(c.reassign_referral(id, to).await?) })
            .await
    }

    /// Shares this organisation's open sent referrals and consent receipts with colleague
    /// devices that lack them (`sync` does this too). Returns how many envelopes went out.
    pub async fn share_cases(&self) -> Result<u32, HandoverError> {
        self.call(|c| async move {
            let n = c.share_cases().await?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
        .await
    }

    /// Every consent receipt of this organisation on this device (recorded here or shared by
    /// a colleague device), superseded ones included.
    pub async fn consent_receipts(&self) -> Result<Vec<ConsentRecord>, HandoverError> {
        self.call(|c| async move {
            Ok(c.consent_receipts()
                .await?
                .iter()
                .map(consent_record)
                .collect())
        })
        .await
    }

    /// Every referral on this device (sent and received).
    pub async fn referrals(&self) -> Result<Vec<Referral>, HandoverError> {
        self.call(|c| async move {
            let ids: Vec<ReferralId> = c.referrals().await?.iter().map(|s| s.id).collect();
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(load_referral(&c, id).await?);
            }
            Ok(out)
        })
        .await
    }

    /// One referral; `NotFound` if this device has no referral with that id.
    pub async fn referral(&self, referral_id: String) -> Result<Referral, HandoverError> {
        let id = self::referral_id(&referral_id)?;
        self.call(|c| async move { load_referral(&c, id).await })
            .await
    }

    /// The released body sections of a received referral (empty before ACCEPTED, after
    /// erasure, and always on ambassador devices).
    pub async fn referral_body(
        &self,
        referral_id: String,
    ) -> Result<Vec<BodySection>, HandoverError> {
        let id = self::referral_id(&referral_id)?;
        self.call(|c| async move {
            let sections = c
                .with_engine(move |e, _, _| {
                    let mut out = Vec::new();
                    for s in SECTIONS {
                        if let Some(section) = e.received_section(&id, s)? {
                            out.push(section);
                        }
                    }
                    Ok::<_, engine::EngineError>(out)
                })
                .await??;
            Ok(sections
                .into_iter()
                .filter_map(BodySection::from_wire)
                .collect())
        })
        .await
    }
}

async fn load_referral(
    c: &handover_core::client::Client,
    id: ReferralId,
) -> Result<Referral, HandoverError> {
    let summary = c.referral(id).await?.ok_or_else(|| not_found("referral"))?;
    let received = c
        .with_engine(move |e, _, _| e.received_offer(&id))
        .await??;
    Ok(Referral {
        id: hex::encode(summary.id.as_bytes()),
        side: match summary.side {
            Side::Sender => ReferralSide::Sender,
            Side::Receiver => ReferralSide::Receiver,
        },
        state: summary.state.name().to_owned(),
        counterpart_org: hex::encode(summary.counterpart),
        timeline_json: summary.timeline.to_string(),
        offer: received.as_ref().map(offer),
        assignee_device: summary.assignee.map(|d| hex::encode(d.0)),
        mine: summary.mine,
        team: summary.team.iter().map(team_step).collect(),
    })
}
