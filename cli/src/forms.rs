//! The TOML files a caseworker writes: a referral (`handover refer FILE.toml`) and a consent
//! record (`handover consent record --file FILE.toml`, or a `[consent]` table inside a referral
//! file). This module only parses and converts them into the core's draft types; the consent
//! gate, signing and sealing happen in the core.
//!
//! The format is documented in docs/REFERRALS.md and shown in full in
//! `cli/examples/referral.toml` and `cli/examples/consent.toml`. Unknown keys are refused, so
//! a misspelt field is reported (with its line) instead of silently ignored.
//!
//! The form types hold case content (names, safe-contact details, code words), so none of them
//! implements `Debug`: they cannot end up in a log line or a panic message by accident.

use std::path::Path;

use handover_core::engine::{Contact, org_fingerprint};
use handover_core::referral::OfferDraft;
use handover_proto::e2e::v1 as wire;
use serde::Deserialize;

use crate::ui::{Outcome, fail};

/// Seconds in a day.
const DAY: u64 = 86_400;

/// A referral file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReferralFile {
    /// The receiving organisation: the name of one of its devices in `handover contacts`, or
    /// its organisation fingerprint.
    pub(crate) to: String,
    /// Name of the receiving organisation as written in the offer (default: the contact's
    /// name).
    #[serde(default)]
    to_org_name: Option<String>,
    /// A named worker at the receiving organisation (optional).
    #[serde(default)]
    to_worker: String,
    /// Your organisation's name as written in the offer (default: this device's name).
    #[serde(default)]
    from_org_name: Option<String>,
    /// referral | transfer | info_request.
    #[serde(default = "default_kind")]
    kind: String,
    /// Your pseudonymous case code (never a name).
    case_ref: String,
    /// Your name or role as the referring worker.
    worker: String,
    /// How to reach you (default: "Reply through Handover").
    #[serde(default)]
    worker_contact: Option<String>,
    /// Services requested (controlled vocabulary).
    services: Vec<String>,
    /// Services outside the vocabulary, in words.
    #[serde(default)]
    other_services: Vec<String>,
    /// emergency (24 h) | urgent (72 h) | normal (14 days).
    priority: String,
    /// Why the data is shared, in plain words; must match a purpose of the consent receipt.
    purpose: String,
    /// Languages the person speaks (BCP 47 tags).
    #[serde(default)]
    languages: Vec<String>,
    #[serde(default)]
    interpreter_needed: bool,
    #[serde(default)]
    preferred_worker_gender: String,
    /// child | adolescent | adult | older_adult.
    age_band: String,
    #[serde(default)]
    is_minor: bool,
    #[serde(default)]
    onward_sharing_allowed: bool,
    /// Days the receiver may keep the data (never longer than the consent allows).
    retain_days: u64,
    #[serde(default)]
    retention_rule: String,
    /// Hours the offer stays open (default by priority).
    #[serde(default)]
    offer_ttl_hours: Option<u64>,
    /// The id of a consent receipt recorded earlier (`handover consent record`).
    #[serde(default)]
    pub(crate) consent_receipt: Option<String>,
    /// Or: record consent now, from this table (same fields as a consent file).
    #[serde(default)]
    pub(crate) consent: Option<ConsentFile>,
    #[serde(default)]
    identity: Option<IdentityToml>,
    #[serde(default)]
    safe_contact: Option<SafeContactToml>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    guardian: Option<GuardianToml>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    services_provided: Option<Vec<String>>,
    #[serde(default)]
    risk: Option<RiskToml>,
    #[serde(default)]
    do_not_disclose: Vec<DoNotDiscloseToml>,
    #[serde(default)]
    appointment: Option<AppointmentToml>,
}

fn default_kind() -> String {
    "referral".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityToml {
    name_or_alias: String,
    #[serde(default)]
    preferred_name: String,
    /// victim | survivor | none.
    #[serde(default)]
    preferred_term: String,
    #[serde(default)]
    pronouns: String,
    #[serde(default)]
    age_or_birth_date: String,
    #[serde(default)]
    gender: String,
    #[serde(default)]
    disability: String,
    #[serde(default)]
    nationality: String,
    #[serde(default)]
    id_numbers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SafeContactToml {
    safe_to_contact: bool,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    safe_times: String,
    #[serde(default)]
    code_word: String,
    #[serde(default)]
    voicemail_ok: bool,
    #[serde(default)]
    others_may_answer: bool,
    #[serde(default)]
    details: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardianToml {
    #[serde(default)]
    caregiver: String,
    #[serde(default)]
    relationship: String,
    #[serde(default)]
    contact: String,
    #[serde(default)]
    unaccompanied: bool,
    #[serde(default)]
    caregiver_informed: bool,
    #[serde(default)]
    not_informed_reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RiskToml {
    /// low | medium | high.
    level: String,
    #[serde(default)]
    immediate_concerns: String,
    #[serde(default)]
    safety_plan_exists: bool,
    #[serde(default)]
    escape_plan_exists: bool,
    #[serde(default)]
    perpetrator_knows_location: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DoNotDiscloseToml {
    what: String,
    to_whom: String,
    #[serde(default)]
    why: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppointmentToml {
    /// Unix time (seconds).
    #[serde(default)]
    at: u64,
    #[serde(default)]
    place: String,
    #[serde(default)]
    notes: String,
}

/// A consent record.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsentFile {
    /// Pseudonymous reference of the person (never a name).
    principal_ref: String,
    /// survivor | caregiver | guardian | other.
    expressed_by: String,
    /// Who, when expressed_by = "other".
    #[serde(default)]
    expressed_by_other: String,
    /// in_person_verbal | signed | phone | via_interpreter.
    collection_method: String,
    /// Language of the interpreter (when via_interpreter).
    #[serde(default)]
    interpreter_language: String,
    /// Days the consent is valid.
    valid_days: u64,
    /// Where the consent is given (ISO 3166 codes), at least one.
    jurisdictions: Vec<String>,
    /// The privacy notice shown to the person, and its language.
    notice_ref: String,
    notice_language: String,
    /// The data controllers (your organisation), at least one `[[controllers]]` table.
    #[serde(default)]
    controllers: Vec<ControllerToml>,
    /// Default: GDPR Art. 6(1)(a) and Art. 9(2)(a) explicit consent.
    #[serde(default)]
    legal_basis: Option<String>,
    /// Purposes, in plain words; a referral's purpose must be one of them.
    purposes: Vec<String>,
    #[serde(default = "default_purpose_category")]
    purpose_category: String,
    /// Organisations that may receive data.
    recipients: Vec<RecipientToml>,
    /// Body sections that may be shared.
    sections: Vec<String>,
    #[serde(default = "yes")]
    sensitive: bool,
    #[serde(default)]
    special_categories: Vec<String>,
    #[serde(default)]
    withheld: Vec<WithheldToml>,
    #[serde(default)]
    onward_sharing: bool,
    /// Days a recipient may keep the data.
    retention_days: u64,
    #[serde(default)]
    storage_locations: Vec<String>,
    /// How the person can withdraw.
    withdrawal_method: String,
    /// Caseworker id of the witness (you).
    witness: String,
    /// Organisation of the witness (default: this device's name).
    #[serde(default)]
    witness_org: Option<String>,
    /// signature | pin | verbal_witnessed.
    ack: String,
    #[serde(default)]
    ack_detail: String,
    /// The person is under 18 (a referral with `is_minor = true` needs such a consent).
    #[serde(default)]
    minor: bool,
    /// For a minor: given | refused | not_applicable (the child's own agreement).
    #[serde(default)]
    child_assent: String,
    /// For a minor: why consent was not expressed by a caregiver or guardian, or why assent is
    /// not applicable. No names.
    #[serde(default)]
    minor_note: String,
}

fn default_purpose_category() -> String {
    "referral".to_owned()
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ControllerToml {
    name: String,
    #[serde(default)]
    contact: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    phone: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipientToml {
    /// A contact name or organisation fingerprint.
    org: String,
    /// Name written in the receipt (default: the contact's name).
    #[serde(default)]
    name: Option<String>,
    services: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WithheldToml {
    section: String,
    from_whom: String,
    #[serde(default)]
    reason: String,
}

/// Reads and parses a TOML file; errors name the file, line, column and field.
pub(crate) fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Outcome<T> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(format!(
            "could not read the {what} file {}: {e}. Check the path and that it is a UTF-8 \
             text file.",
            path.display()
        ))
    })?;
    parse_toml(&text, path, what)
}

fn parse_toml<T: for<'de> Deserialize<'de>>(text: &str, path: &Path, what: &str) -> Outcome<T> {
    toml::from_str(text).map_err(|e| {
        let place = match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!(" at line {line}")
            }
            None => String::new(),
        };
        fail(format!(
            "the {what} file {} is not valid{place}: {}. Fix that line (docs/REFERRALS.md and \
             cli/examples/ show every field), then run the command again.",
            path.display(),
            e.message().trim_end_matches('\n')
        ))
    })
}

/// Normalises "Safe contact" / "safe-contact" / "SAFE_CONTACT" to "SAFE_CONTACT".
fn norm(text: &str) -> String {
    text.trim()
        .chars()
        .map(|c| if c == '-' || c == ' ' { '_' } else { c })
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Parses a value of a wire enum by its name without prefix; the error lists the valid ones.
macro_rules! wire_enum {
    ($fn:ident, $ty:ty, $prefix:literal) => {
        pub(crate) fn $fn(field: &str, text: &str) -> Outcome<$ty> {
            let name = format!("{}{}", $prefix, norm(text));
            match <$ty>::from_str_name(&name) {
                Some(v) if (v as i32) != 0 => Ok(v),
                _ => {
                    let valid: Vec<String> = (1..100)
                        .filter_map(|i| <$ty>::try_from(i).ok())
                        .map(|v| v.as_str_name().trim_start_matches($prefix).to_lowercase())
                        .collect();
                    Err(fail(format!(
                        "{field} = {text:?} is not one of: {}. Use one of these words.",
                        valid.join(", ")
                    )))
                }
            }
        }
    };
}

wire_enum!(service, wire::Service, "SERVICE_");
wire_enum!(section, wire::Section, "SECTION_");
wire_enum!(priority, wire::Priority, "PRIORITY_");
wire_enum!(kind, wire::ReferralKind, "REFERRAL_KIND_");
wire_enum!(age_band, wire::AgeBand, "AGE_BAND_");
wire_enum!(risk_level, wire::RiskLevel, "RISK_LEVEL_");
wire_enum!(expressed_by, wire::ExpressedBy, "EXPRESSED_BY_");
wire_enum!(child_assent, wire::ChildAssent, "CHILD_ASSENT_");
wire_enum!(
    collection_method,
    wire::CollectionMethod,
    "COLLECTION_METHOD_"
);
wire_enum!(ack_method, wire::AckMethod, "ACK_METHOD_");
wire_enum!(decline_reason, wire::DeclineReason, "DECLINE_REASON_");
wire_enum!(
    not_successful_reason,
    wire::NotSuccessfulReason,
    "NOT_SUCCESSFUL_REASON_"
);

fn required(field: &str, value: &str) -> Outcome {
    if value.trim().is_empty() {
        return Err(fail(format!(
            "{field} is empty. Fill it in (docs/REFERRALS.md explains each field)."
        )));
    }
    Ok(())
}

fn norm_fp(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_digit()).collect()
}

/// An organisation named by one of its devices' contact names or by its fingerprint.
pub(crate) fn resolve_org(
    contacts: &[Contact],
    field: &str,
    who: &str,
) -> Outcome<([u8; 32], String)> {
    let wanted = who.trim().to_lowercase();
    let mut found: Vec<([u8; 32], String)> = Vec::new();
    for c in contacts {
        let by_name = c.display_name.to_lowercase() == wanted;
        let fp = norm_fp(&org_fingerprint(&c.org_root));
        let by_fp = !norm_fp(who).is_empty() && norm_fp(who) == fp;
        if (by_name || by_fp) && !found.iter().any(|(r, _)| *r == c.org_root) {
            found.push((c.org_root, c.display_name.clone()));
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(fail(format!(
            "{field} = {who:?} is not one of your contacts. Use a name shown by `handover \
             contacts` (any device of the organisation) or the organisation's fingerprint; if \
             it is missing, exchange an invitation first (`handover invite`)."
        ))),
        _ => Err(fail(format!(
            "{field} = {who:?} names several organisations. Use the organisation fingerprint \
             shown by `handover contacts` instead."
        ))),
    }
}

/// The consent fields `handover consent record` takes as flags.
pub(crate) struct ConsentFlags {
    pub(crate) principal_ref: String,
    pub(crate) expressed_by: String,
    pub(crate) collection_method: String,
    pub(crate) interpreter_language: String,
    pub(crate) valid_days: u64,
    pub(crate) jurisdictions: Vec<String>,
    pub(crate) controller: String,
    pub(crate) controller_contact: String,
    pub(crate) notice_ref: String,
    pub(crate) notice_language: String,
    pub(crate) purpose: String,
    pub(crate) recipients: Vec<String>,
    pub(crate) services: Vec<String>,
    pub(crate) sections: Vec<String>,
    pub(crate) retention_days: u64,
    pub(crate) withdrawal_method: String,
    pub(crate) witness: String,
    pub(crate) ack: String,
}

impl ConsentFile {
    /// A consent record from flags (every recipient gets the same services).
    pub(crate) fn from_flags(f: ConsentFlags) -> Self {
        Self {
            principal_ref: f.principal_ref,
            expressed_by: f.expressed_by,
            expressed_by_other: String::new(),
            collection_method: f.collection_method,
            interpreter_language: f.interpreter_language,
            valid_days: f.valid_days,
            jurisdictions: f.jurisdictions,
            notice_ref: f.notice_ref,
            notice_language: f.notice_language,
            controllers: vec![ControllerToml {
                name: f.controller,
                contact: f.controller_contact,
                address: String::new(),
                email: String::new(),
                phone: String::new(),
            }],
            legal_basis: None,
            purposes: vec![f.purpose],
            purpose_category: default_purpose_category(),
            recipients: f
                .recipients
                .into_iter()
                .map(|org| RecipientToml {
                    org,
                    name: None,
                    services: f.services.clone(),
                })
                .collect(),
            sections: f.sections,
            sensitive: true,
            special_categories: Vec::new(),
            withheld: Vec::new(),
            onward_sharing: false,
            retention_days: f.retention_days,
            storage_locations: Vec::new(),
            withdrawal_method: f.withdrawal_method,
            witness: f.witness,
            witness_org: None,
            ack: f.ack,
            ack_detail: String::new(),
            minor: false,
            child_assent: String::new(),
            minor_note: String::new(),
        }
    }

    /// The draft receipt (the core signs it and sets state, time and id).
    pub(crate) fn to_draft(
        &self,
        contacts: &[Contact],
        own_name: &str,
        now: u64,
    ) -> Outcome<wire::ConsentReceipt> {
        required("principal_ref", &self.principal_ref)?;
        required("notice_ref", &self.notice_ref)?;
        required("notice_language", &self.notice_language)?;
        required("withdrawal_method", &self.withdrawal_method)?;
        required("witness", &self.witness)?;
        if self.purposes.iter().all(|p| p.trim().is_empty()) {
            return Err(fail(
                "purposes is empty. Write at least one purpose, in the words you will use in \
                 the referral's `purpose`.",
            ));
        }
        if self.jurisdictions.iter().all(|j| j.trim().is_empty()) {
            return Err(fail(
                "jurisdictions is empty. Write where the consent is given, for example \
                 jurisdictions = [\"BE\"].",
            ));
        }
        if self.controllers.is_empty() {
            return Err(fail(
                "no data controller. Add a [[controllers]] table with your organisation's name \
                 and how to reach its data protection contact.",
            ));
        }
        if self.recipients.is_empty() {
            return Err(fail(
                "recipients is empty. Add a [[recipients]] table for each organisation the \
                 person agreed to share with.",
            ));
        }
        if self.sections.is_empty() {
            return Err(fail(
                "sections is empty. List the body sections the person agreed to share, for \
                 example [\"identity\", \"safe_contact\", \"reason\", \"risk\"].",
            ));
        }
        if self.valid_days == 0 || self.retention_days == 0 {
            return Err(fail(
                "valid_days and retention_days must be at least 1. Write how many days the \
                 consent is valid and how long a recipient may keep the data.",
            ));
        }
        let mut recipients = Vec::new();
        for r in &self.recipients {
            let (root, name) = resolve_org(contacts, "recipients.org", &r.org)?;
            let mut services = Vec::new();
            for s in &r.services {
                services.push(service("recipients.services", s)? as i32);
            }
            recipients.push(wire::ConsentRecipient {
                org_root_key: root.to_vec(),
                org_name: r.name.clone().unwrap_or(name),
                services,
            });
        }
        let mut data_categories = Vec::new();
        for s in &self.sections {
            data_categories.push(section("sections", s)? as i32);
        }
        let mut withheld = Vec::new();
        for w in &self.withheld {
            withheld.push(wire::Withheld {
                section: section("withheld.section", &w.section)? as i32,
                from_whom: w.from_whom.clone(),
                reason: w.reason.clone(),
            });
        }
        let org = self
            .witness_org
            .clone()
            .unwrap_or_else(|| own_name.to_owned());
        Ok(wire::ConsentReceipt {
            principal_ref: self.principal_ref.clone(),
            expressed_by: expressed_by("expressed_by", &self.expressed_by)? as i32,
            expressed_by_other: self.expressed_by_other.clone(),
            collection_method: collection_method("collection_method", &self.collection_method)?
                as i32,
            interpreter_language: self.interpreter_language.clone(),
            consent_type: "EXPLICIT".to_owned(),
            event_time: now,
            valid_until: now.saturating_add(self.valid_days.saturating_mul(DAY)),
            jurisdictions: self.jurisdictions.clone(),
            notice_ref: self.notice_ref.clone(),
            notice_language: self.notice_language.clone(),
            controllers: self
                .controllers
                .iter()
                .map(|c| wire::Controller {
                    name: c.name.clone(),
                    contact: c.contact.clone(),
                    address: c.address.clone(),
                    email: c.email.clone(),
                    phone: c.phone.clone(),
                })
                .collect(),
            legal_basis: Some(wire::LegalBasis {
                basis: self.legal_basis.clone().unwrap_or_else(|| {
                    "GDPR Art. 6(1)(a) and Art. 9(2)(a) explicit consent".to_owned()
                }),
                justification: String::new(),
                is_override: false,
            }),
            purposes: self
                .purposes
                .iter()
                .enumerate()
                .map(|(i, p)| wire::Purpose {
                    purpose: p.clone(),
                    category: self.purpose_category.clone(),
                    primary: i == 0,
                })
                .collect(),
            recipients,
            data_categories,
            sensitive: self.sensitive,
            special_categories: self.special_categories.clone(),
            withheld,
            onward_sharing: self.onward_sharing,
            retention_secs: self.retention_days.saturating_mul(DAY),
            storage_locations: self.storage_locations.clone(),
            withdrawal_method: self.withdrawal_method.clone(),
            witness: Some(wire::Witness {
                caseworker_id: self.witness.clone(),
                org_name: org,
            }),
            principal_ack: Some(wire::PrincipalAck {
                method: ack_method("ack", &self.ack)? as i32,
                detail: self.ack_detail.clone(),
            }),
            principal_is_minor: self.minor,
            child_assent: if self.child_assent.trim().is_empty() {
                0
            } else {
                child_assent("child_assent", &self.child_assent)? as i32
            },
            minor_note: self.minor_note.clone(),
            ..Default::default()
        })
    }
}

impl ReferralFile {
    /// The offer draft (without attachments) and the body sections present in the file.
    pub(crate) fn to_draft(
        &self,
        contacts: &[Contact],
        own_root: [u8; 32],
        own_name: &str,
        now: u64,
    ) -> Outcome<(OfferDraft, Vec<wire::BodySection>)> {
        required("case_ref", &self.case_ref)?;
        required("worker", &self.worker)?;
        required("purpose", &self.purpose)?;
        if self.services.is_empty() && self.other_services.is_empty() {
            return Err(fail(
                "services is empty. List the services you are asking for, for example \
                 services = [\"shelter\"].",
            ));
        }
        if self.retain_days == 0 {
            return Err(fail(
                "retain_days must be at least 1: how many days the receiving organisation may \
                 keep the case details.",
            ));
        }
        let (to_root, to_name) = resolve_org(contacts, "to", &self.to)?;
        let mut services = Vec::new();
        for s in &self.services {
            services.push(service("services", s)?);
        }
        let draft = OfferDraft {
            kind: kind("kind", &self.kind)?,
            sender_case_ref: self.case_ref.clone(),
            from: wire::Party {
                org_root_key: own_root.to_vec(),
                org_name: self
                    .from_org_name
                    .clone()
                    .unwrap_or_else(|| own_name.to_owned()),
                worker_name: self.worker.clone(),
                role: wire::Role::Caseworker as i32,
                contact: self
                    .worker_contact
                    .clone()
                    .unwrap_or_else(|| "Reply through Handover".to_owned()),
            },
            to: wire::Party {
                org_root_key: to_root.to_vec(),
                org_name: self.to_org_name.clone().unwrap_or(to_name),
                worker_name: self.to_worker.clone(),
                ..Default::default()
            },
            services_requested: services,
            other_services: self.other_services.clone(),
            priority: priority("priority", &self.priority)?,
            purpose: self.purpose.clone(),
            languages: self.languages.clone(),
            interpreter_needed: self.interpreter_needed,
            preferred_worker_gender: self.preferred_worker_gender.clone(),
            age_band: age_band("age_band", &self.age_band)?,
            is_minor: self.is_minor,
            onward_sharing_allowed: self.onward_sharing_allowed,
            retain_until: now.saturating_add(self.retain_days.saturating_mul(DAY)),
            retention_rule: if self.retention_rule.is_empty() {
                format!("Erase {} days after the offer", self.retain_days)
            } else {
                self.retention_rule.clone()
            },
            offer_ttl_secs: self.offer_ttl_hours.map(|h| h.saturating_mul(3600)),
        };
        Ok((draft, self.sections()?))
    }

    fn sections(&self) -> Outcome<Vec<wire::BodySection>> {
        use wire::body_section::Content;
        let mut out = Vec::new();
        let mut push = |c: Content| {
            out.push(wire::BodySection { content: Some(c) });
        };
        if let Some(i) = &self.identity {
            required("identity.name_or_alias", &i.name_or_alias)?;
            push(Content::Identity(wire::IdentitySection {
                name_or_alias: i.name_or_alias.clone(),
                preferred_name: i.preferred_name.clone(),
                preferred_term: i.preferred_term.clone(),
                pronouns: i.pronouns.clone(),
                age_or_birth_date: i.age_or_birth_date.clone(),
                gender: i.gender.clone(),
                disability: i.disability.clone(),
                nationality: i.nationality.clone(),
                id_numbers: i.id_numbers.clone(),
            }));
        }
        if let Some(s) = &self.safe_contact {
            push(Content::SafeContact(wire::SafeContactSection {
                safe_to_contact: s.safe_to_contact,
                channels: s.channels.clone(),
                safe_times: s.safe_times.clone(),
                code_word: s.code_word.clone(),
                voicemail_ok: s.voicemail_ok,
                others_may_answer: s.others_may_answer,
                details: s.details.clone(),
            }));
        }
        if let Some(l) = &self.location {
            push(Content::Location(wire::LocationSection {
                location: l.clone(),
            }));
        }
        if let Some(g) = &self.guardian {
            push(Content::Guardian(wire::GuardianSection {
                caregiver: g.caregiver.clone(),
                relationship: g.relationship.clone(),
                contact: g.contact.clone(),
                unaccompanied: g.unaccompanied,
                caregiver_informed: g.caregiver_informed,
                not_informed_reason: g.not_informed_reason.clone(),
            }));
        }
        if let Some(r) = &self.reason {
            push(Content::Reason(wire::ReasonSection { reason: r.clone() }));
        }
        if let Some(s) = &self.services_provided {
            push(Content::ServicesProvided(wire::ServicesProvidedSection {
                services: s.clone(),
            }));
        }
        if let Some(r) = &self.risk {
            push(Content::Risk(wire::RiskSection {
                level: risk_level("risk.level", &r.level)? as i32,
                immediate_concerns: r.immediate_concerns.clone(),
                safety_plan_exists: r.safety_plan_exists,
                escape_plan_exists: r.escape_plan_exists,
                perpetrator_knows_location: r.perpetrator_knows_location,
            }));
        }
        if !self.do_not_disclose.is_empty() {
            push(Content::DoNotDisclose(wire::DoNotDiscloseSection {
                rules: self
                    .do_not_disclose
                    .iter()
                    .map(|d| wire::DoNotDisclose {
                        what: d.what.clone(),
                        to_whom: d.to_whom.clone(),
                        why: d.why.clone(),
                    })
                    .collect(),
            }));
        }
        if let Some(a) = &self.appointment {
            push(Content::Appointment(wire::AppointmentSection {
                at: a.at,
                place: a.place.clone(),
                notes: a.notes.clone(),
            }));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_field_names_the_field_and_line() {
        let text = "to = \"B\"\ncase_ref = \"X\"\nwroker = \"me\"\n";
        let err = parse_toml::<ReferralFile>(text, Path::new("r.toml"), "referral")
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("wroker"), "{err}");
    }

    #[test]
    fn enum_words_are_forgiving_and_errors_list_the_valid_ones() {
        assert_eq!(
            section("sections", "Safe contact").ok(),
            Some(wire::Section::SafeContact)
        );
        assert_eq!(
            service("services", "police-liaison").ok(),
            Some(wire::Service::PoliceLiaison)
        );
        let err = priority("priority", "asap").err().map(|e| e.0);
        let err = err.unwrap_or_default();
        assert!(err.contains("emergency, urgent, normal"), "{err}");
        assert!(section("sections", "unspecified").is_err());
    }

    #[test]
    fn the_example_files_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let r: Outcome<ReferralFile> = read_toml(&dir.join("referral.toml"), "referral");
        assert!(r.is_ok(), "{:?}", r.err());
        let c: Outcome<ConsentFile> = read_toml(&dir.join("consent.toml"), "consent");
        assert!(c.is_ok(), "{:?}", c.err());
    }

    #[test]
    fn a_childs_consent_fields_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let text = std::fs::read_to_string(dir.join("consent.toml")).unwrap_or_default();
        let text = text
            .replacen(
                "expressed_by = \"survivor\"",
                "expressed_by = \"guardian\"",
                1,
            )
            .replacen(
                "ack = \"verbal_witnessed\"\n",
                "ack = \"verbal_witnessed\"\nminor = true\nchild_assent = \"given\"\n",
                1,
            );
        let c = parse_toml::<ConsentFile>(&text, Path::new("c.toml"), "consent")
            .map_err(|e| e.0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.minor);
        assert_eq!(
            child_assent("child_assent", &c.child_assent).ok(),
            Some(wire::ChildAssent::Given)
        );
        assert_eq!(
            child_assent("child_assent", "not applicable").ok(),
            Some(wire::ChildAssent::NotApplicable)
        );
        let err = child_assent("child_assent", "maybe").err().map(|e| e.0);
        assert!(
            err.unwrap_or_default()
                .contains("given, refused, not_applicable")
        );
    }
}
