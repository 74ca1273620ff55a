//! Building and checking the sealed offer (docs/PROTOCOL.md §11.1).

use std::fmt;

use handover_proto::e2e::v1 as wire;
use handover_proto::limits::KEY_LEN;

use super::ReferralError;
use super::expiry::offer_ttl;
use super::seal::section_of;

/// What the sending caseworker fills in for an offer. It carries no direct identifiers of the
/// person; those belong in body sections. [`SenderReferral::prepare`](super::SenderReferral::prepare)
/// refuses a draft whose free-text fields contain a name, contact detail, location or id number
/// from the body, an e-mail address or a phone number.
#[derive(Clone, Default)]
pub struct OfferDraft {
    /// Referral, transfer or info request.
    pub kind: wire::ReferralKind,
    /// Pseudonymous case code of the sender.
    pub sender_case_ref: String,
    /// Sending organisation and worker (root key, name, worker, role, professional contact).
    pub from: wire::Party,
    /// Receiving organisation (root key, name) and optional named worker.
    pub to: wire::Party,
    /// Services requested (controlled vocabulary).
    pub services_requested: Vec<wire::Service>,
    /// Names of services when `Service::Other` is requested.
    pub other_services: Vec<String>,
    /// Priority; sets the default offer lifetime and `respond_by`.
    pub priority: wire::Priority,
    /// Plain-language statement of why the data is shared; must be one of the consent
    /// receipt's purposes.
    pub purpose: String,
    /// Languages the person speaks (BCP 47).
    pub languages: Vec<String>,
    /// Whether an interpreter is needed.
    pub interpreter_needed: bool,
    /// Preferred worker gender; empty = no preference.
    pub preferred_worker_gender: String,
    /// Age band.
    pub age_band: wire::AgeBand,
    /// Whether the person is a minor (a guardian section is then required).
    pub is_minor: bool,
    /// Whether the receiver may share onward (default false).
    pub onward_sharing_allowed: bool,
    /// The receiver must erase the body by then, Unix seconds.
    pub retain_until: u64,
    /// Retention rule in words.
    pub retention_rule: String,
    /// Offer lifetime in seconds; `None` = the default for the priority.
    pub offer_ttl_secs: Option<u64>,
}

/// The consent an offer relies on, as the sender supplies it.
#[derive(Clone, Copy)]
pub enum ConsentInput<'a> {
    /// A consent receipt (verified against the sending organisation before use).
    Receipt(&'a wire::SignedConsentReceipt),
    /// Sharing without consent: needs an ADMIN acting device, a legal basis and a
    /// justification. Recorded in the offer, the timeline and the survivor's copy.
    Override(&'a wire::ConsentOverride),
}

impl fmt::Debug for OfferDraft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Free text may hold case content: show the structured fields only.
        f.debug_struct("OfferDraft")
            .field("kind", &self.kind)
            .field("priority", &self.priority)
            .field("services_requested", &self.services_requested)
            .field("age_band", &self.age_band)
            .field("retain_until", &self.retain_until)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ConsentInput<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Receipt(_) => "ConsentInput::Receipt(..)",
            Self::Override(_) => "ConsentInput::Override(..)",
        })
    }
}

fn invalid(field: &'static str, problem: &'static str) -> ReferralError {
    ReferralError::InvalidDraft { field, problem }
}

/// Checks the required fields of DOMAIN.md.
pub(crate) fn check_draft(
    draft: &OfferDraft,
    sections: &[wire::BodySection],
    now: u64,
) -> Result<(), ReferralError> {
    if draft.kind == wire::ReferralKind::Unspecified {
        return Err(invalid("kind", "required"));
    }
    if draft.sender_case_ref.trim().is_empty() {
        return Err(invalid("sender_case_ref", "required"));
    }
    let from = &draft.from;
    if from.org_root_key.len() != KEY_LEN || from.org_name.trim().is_empty() {
        return Err(invalid("from", "organisation required"));
    }
    if from.worker_name.trim().is_empty() || from.contact.trim().is_empty() || from.role == 0 {
        return Err(invalid("from", "worker name, role and contact required"));
    }
    if draft.to.org_root_key.len() != KEY_LEN || draft.to.org_name.trim().is_empty() {
        return Err(invalid("to", "organisation required"));
    }
    if draft.services_requested.is_empty()
        || draft
            .services_requested
            .contains(&wire::Service::Unspecified)
    {
        return Err(invalid(
            "services_requested",
            "at least one service required",
        ));
    }
    if draft.services_requested.contains(&wire::Service::Other) && draft.other_services.is_empty() {
        return Err(invalid("other_services", "name the other service"));
    }
    if draft.priority == wire::Priority::Unspecified {
        return Err(invalid("priority", "required"));
    }
    if draft.purpose.trim().is_empty() {
        return Err(invalid("purpose", "required"));
    }
    if draft.languages.is_empty() {
        return Err(invalid("languages", "at least one language required"));
    }
    if draft.age_band == wire::AgeBand::Unspecified {
        return Err(invalid("age_band", "required"));
    }
    if draft.retain_until <= now {
        return Err(invalid("retain_until", "must be in the future"));
    }
    if draft.retention_rule.trim().is_empty() {
        return Err(invalid("retention_rule", "required"));
    }
    if draft.offer_ttl_secs == Some(0) {
        return Err(invalid("offer_ttl_secs", "must be positive"));
    }
    // Body: one of each section at most; required sections for referrals and transfers.
    let mut seen = Vec::new();
    for s in sections {
        let section = section_of(s).ok_or(invalid("sections", "a section has no content"))?;
        if seen.contains(&section) {
            return Err(invalid("sections", "a section appears twice"));
        }
        seen.push(section);
    }
    if draft.kind != wire::ReferralKind::InfoRequest {
        for (section, field) in [
            (wire::Section::Identity, "identity"),
            (wire::Section::SafeContact, "safe_contact"),
            (wire::Section::Reason, "reason"),
            (wire::Section::Risk, "risk"),
        ] {
            if !seen.contains(&section) {
                return Err(invalid(field, "required section"));
            }
        }
    }
    if draft.is_minor && !seen.contains(&wire::Section::Guardian) {
        return Err(invalid("guardian", "required for a minor"));
    }
    use wire::body_section::Content;
    for s in sections {
        match &s.content {
            Some(Content::Identity(i)) if i.name_or_alias.trim().is_empty() => {
                return Err(invalid("identity", "name or alias required"));
            }
            Some(Content::Risk(r)) if r.level == 0 => {
                return Err(invalid("risk", "risk level required"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Identifying values from the body that must not appear in the offer.
fn identifiers(sections: &[wire::BodySection]) -> Vec<String> {
    use wire::body_section::Content;
    let mut out: Vec<String> = Vec::new();
    for s in sections {
        match &s.content {
            Some(Content::Identity(i)) => {
                out.push(i.name_or_alias.clone());
                out.push(i.preferred_name.clone());
                out.push(i.age_or_birth_date.clone());
                out.extend(i.id_numbers.iter().cloned());
            }
            Some(Content::SafeContact(c)) => {
                out.push(c.details.clone());
                out.push(c.code_word.clone());
            }
            Some(Content::Location(l)) => out.push(l.location.clone()),
            Some(Content::Guardian(g)) => {
                out.push(g.caregiver.clone());
                out.push(g.contact.clone());
            }
            _ => {}
        }
    }
    out.into_iter()
        .map(|s| s.trim().to_lowercase())
        // Very short values ("F", "12") would match everywhere; the patterns below cover
        // numbers.
        .filter(|s| s.chars().count() >= 3)
        .collect()
}

fn looks_like_email(text: &str) -> bool {
    text.split_whitespace().any(|word| {
        word.split_once('@')
            .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'))
    })
}

fn looks_like_phone_or_id(text: &str) -> bool {
    // Seven or more digits in a run that may contain spaces, dashes, dots, slashes or
    // parentheses: phone numbers, passport and registration numbers.
    let mut digits = 0;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits += 1;
            if digits >= 7 {
                return true;
            }
        } else if !matches!(c, ' ' | '-' | '.' | '/' | '(' | ')' | '+') {
            digits = 0;
        }
    }
    false
}

/// Refuses offers whose free text carries direct identifiers.
pub(crate) fn check_no_identifiers(
    draft: &OfferDraft,
    sections: &[wire::BodySection],
) -> Result<(), ReferralError> {
    let ids = identifiers(sections);
    let contains_id = |text: &str| {
        let lower = text.to_lowercase();
        ids.iter().any(|id| lower.contains(id.as_str()))
    };
    let mut fields: Vec<(&'static str, &str)> = vec![
        ("sender_case_ref", &draft.sender_case_ref),
        ("purpose", &draft.purpose),
        ("retention_rule", &draft.retention_rule),
        ("preferred_worker_gender", &draft.preferred_worker_gender),
    ];
    fields.extend(
        draft
            .other_services
            .iter()
            .map(|s| ("other_services", s.as_str())),
    );
    fields.extend(draft.languages.iter().map(|s| ("languages", s.as_str())));
    for (field, text) in &fields {
        if contains_id(text) {
            return Err(ReferralError::IdentifierInOffer { field });
        }
    }
    // Patterns only on prose fields (case references are codes and may contain digits).
    for (field, text) in fields.iter().filter(|(f, _)| *f != "sender_case_ref") {
        if looks_like_email(text) || looks_like_phone_or_id(text) {
            return Err(ReferralError::IdentifierInOffer { field });
        }
    }
    // The named receiving worker is a professional; the sender's contact is professional too.
    Ok(())
}

/// The wire offer for a checked draft (commitments and consent filled in by the caller).
pub(crate) fn offer_from_draft(
    draft: &OfferDraft,
    referral_id: &[u8; 16],
    sections_included: Vec<i32>,
    consent: wire::ConsentRef,
    commitments: Vec<wire::SectionCommitment>,
    now: u64,
) -> wire::ReferralOffer {
    let ttl = draft
        .offer_ttl_secs
        .unwrap_or_else(|| offer_ttl(draft.priority));
    let expires = now.saturating_add(ttl);
    wire::ReferralOffer {
        referral_id: referral_id.to_vec(),
        kind: draft.kind as i32,
        sender_case_ref: draft.sender_case_ref.clone(),
        from: Some(draft.from.clone()),
        to: Some(draft.to.clone()),
        services_requested: draft.services_requested.iter().map(|s| *s as i32).collect(),
        other_services: draft.other_services.clone(),
        priority: draft.priority as i32,
        respond_by: expires,
        purpose: draft.purpose.clone(),
        sections_included,
        consent: Some(consent),
        languages: draft.languages.clone(),
        interpreter_needed: draft.interpreter_needed,
        preferred_worker_gender: draft.preferred_worker_gender.clone(),
        age_band: draft.age_band as i32,
        is_minor: draft.is_minor,
        onward_sharing_allowed: draft.onward_sharing_allowed,
        retain_until: draft.retain_until,
        retention_rule: draft.retention_rule.clone(),
        offer_expires_at: expires,
        created_at: now,
        section_commitments: commitments,
    }
}
