//! Writing a referral and recording consent: forms with every field of
//! `cli/examples/referral.toml` and `consent.toml`, word lists as choices, and each refusal
//! (a missing field, the consent gate) shown next to the field it concerns.

use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Multipart, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use handover_core::client::ClientError;
use handover_core::consent::{GateError, ReceiptId};
use handover_core::engine::{EngineError, OfferConsent, org_fingerprint};
use handover_core::referral::{OfferDraft, ReferralError};
use handover_proto::e2e::v1 as wire;
use handover_proto::e2e::v1::body_section::Content;

use crate::cases::known_receipts;
use crate::i18n::Tr;
use crate::pages::{Lang, NETWORK_WAIT, NoticeQuery, Unlocked, chrome, notice_text, see_other};
use crate::state::{Desk, Shared};
use crate::views::{Chrome, page};

/// Largest upload the compose form takes (attachments together), as the core's limit.
pub(crate) const MAX_UPLOAD: usize = 100 * 1024 * 1024 + 1024 * 1024;
const DAY: u64 = 86_400;

/// The routes of this module.
pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route(
            "/referrals/new",
            get(compose_page)
                .post(compose)
                .layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/consent/new", get(record_page).post(record))
}

/// Submitted values (repeated names for multiple choices).
#[derive(Default)]
pub(crate) struct Values(pub(crate) Vec<(String, String)>);

impl Values {
    /// The first value of `name` (empty if none).
    pub(crate) fn v(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// Whether `name` has the value `value` (a chosen option or ticked box).
    pub(crate) fn has(&self, name: &str, value: &str) -> bool {
        self.0.iter().any(|(k, v)| k == name && v == value)
    }

    pub(crate) fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }

    fn on(&self, name: &str) -> bool {
        matches!(self.v(name), "on" | "yes" | "true")
    }

    pub(crate) fn list(&self, name: &str) -> Vec<String> {
        self.v(name)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn days(&self, name: &str) -> Option<u64> {
        self.v(name).trim().parse().ok().filter(|d| *d > 0)
    }
}

/// Field errors: (field name, text).
#[derive(Default)]
pub(crate) struct Errors(Vec<(String, String)>);

impl Errors {
    /// The error at `field`, if any.
    pub(crate) fn at(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, e)| e.as_str())
    }

    pub(crate) fn add(&mut self, field: &str, text: String) {
        self.0.push((field.to_owned(), text));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A choice: (wire name, shown word).
pub(crate) type Choice = (String, String);

pub(crate) fn choices<E: TryFrom<i32>>(
    name: impl Fn(&E) -> &'static str,
    prefix: &str,
) -> Vec<Choice> {
    (1..=64)
        .filter_map(|i| E::try_from(i).ok())
        .map(|e| {
            let n = name(&e).strip_prefix(prefix).unwrap_or(name(&e));
            (
                n.to_ascii_lowercase(),
                n.to_ascii_lowercase().replace('_', " "),
            )
        })
        .collect()
}

fn pick<E>(from_name: impl Fn(&str) -> Option<E>, prefix: &str, text: &str) -> Option<E> {
    if text.is_empty() {
        return None;
    }
    from_name(&format!("{prefix}{}", text.to_ascii_uppercase()))
}

/// The organisations of the contacts: (root hex, "name (fingerprint)").
async fn organisations(desk: &Desk) -> Vec<Choice> {
    let mut out: Vec<Choice> = Vec::new();
    let own = desk
        .client
        .with_engine(|e, _, _| e.org_root())
        .await
        .ok()
        .and_then(Result::ok);
    for c in desk.client.contacts().await.unwrap_or_default() {
        let root = hex::encode(c.org_root);
        if Some(c.org_root) == own || out.iter().any(|(r, _)| *r == root) {
            continue;
        }
        out.push((
            root,
            format!("{} ({})", c.display_name, org_fingerprint(&c.org_root)),
        ));
    }
    out
}

fn parse_root(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

// ---------------------------------------------------------------------------------------------
// Consent record.

/// The consent record form.
#[derive(Template)]
#[template(path = "consent_new.html")]
struct RecordPage {
    p: Chrome,
    f: Values,
    e: Errors,
    orgs: Vec<Choice>,
    services: Vec<Choice>,
    sections: Vec<Choice>,
    expressed_by: Vec<Choice>,
    methods: Vec<Choice>,
    acks: Vec<Choice>,
}

async fn record_form(t: &Tr, desk: &Desk, f: Values, e: Errors) -> RecordPage {
    let mut p = chrome(t, desk, "consent-new-title", "consent");
    if !e.is_empty() {
        p.error = Some(t.t("form-has-errors"));
    }
    RecordPage {
        p,
        f,
        e,
        orgs: organisations(desk).await,
        services: choices::<wire::Service>(|e| e.as_str_name(), "SERVICE_"),
        sections: choices::<wire::Section>(|e| e.as_str_name(), "SECTION_"),
        expressed_by: choices::<wire::ExpressedBy>(|e| e.as_str_name(), "EXPRESSED_BY_"),
        methods: choices::<wire::CollectionMethod>(|e| e.as_str_name(), "COLLECTION_METHOD_"),
        acks: choices::<wire::AckMethod>(|e| e.as_str_name(), "ACK_METHOD_"),
    }
}

async fn record_page(Lang(t): Lang, Unlocked(desk): Unlocked) -> Response {
    if !desk.handles_cases() {
        return crate::cases::hide(&t, &desk);
    }
    let defaults = Values(
        [
            ("expressed_by", "survivor"),
            ("collection_method", "in_person_verbal"),
            ("valid_days", "90"),
            ("retention_days", "60"),
            ("ack", "verbal_witnessed"),
            ("notice_language", "en"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect(),
    );
    page(&record_form(&t, &desk, defaults, Errors::default()).await)
}

async fn record(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    if !desk.handles_cases() {
        return crate::cases::hide(&t, &desk);
    }
    let f = Values(pairs);
    let mut e = Errors::default();
    let required = |e: &mut Errors, name: &str| {
        if f.v(name).trim().is_empty() {
            e.add(name, t.t("field-required"));
        }
    };
    for name in [
        "principal_ref",
        "notice_ref",
        "notice_language",
        "controller",
        "purpose",
        "withdrawal_method",
        "witness",
        "jurisdictions",
    ] {
        required(&mut e, name);
    }
    let expressed_by = pick(
        wire::ExpressedBy::from_str_name,
        "EXPRESSED_BY_",
        f.v("expressed_by"),
    );
    let method = pick(
        wire::CollectionMethod::from_str_name,
        "COLLECTION_METHOD_",
        f.v("collection_method"),
    );
    let ack = pick(wire::AckMethod::from_str_name, "ACK_METHOD_", f.v("ack"));
    for (name, ok) in [
        ("expressed_by", expressed_by.is_some()),
        ("collection_method", method.is_some()),
        ("ack", ack.is_some()),
    ] {
        if !ok {
            e.add(name, t.t("field-choose"));
        }
    }
    let recipients = f.all("recipient");
    if recipients.is_empty() {
        e.add("recipient", t.t("field-choose"));
    }
    let services: Vec<i32> = f
        .all("services")
        .iter()
        .filter_map(|s| pick(wire::Service::from_str_name, "SERVICE_", s))
        .map(|s| s as i32)
        .collect();
    if services.is_empty() {
        e.add("services", t.t("field-choose"));
    }
    let sections: Vec<i32> = f
        .all("sections")
        .iter()
        .filter_map(|s| pick(wire::Section::from_str_name, "SECTION_", s))
        .map(|s| s as i32)
        .collect();
    if sections.is_empty() {
        e.add("sections", t.t("field-choose"));
    }
    let (valid, retention) = (f.days("valid_days"), f.days("retention_days"));
    if valid.is_none() {
        e.add("valid_days", t.t("field-days"));
    }
    if retention.is_none() {
        e.add("retention_days", t.t("field-days"));
    }
    if !e.is_empty() {
        let form = record_form(&t, &desk, f, e).await;
        return (StatusCode::UNPROCESSABLE_ENTITY, page(&form)).into_response();
    }
    let names = organisations(&desk).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let draft = wire::ConsentReceipt {
        principal_ref: f.v("principal_ref").trim().to_owned(),
        expressed_by: expressed_by.map(|x| x as i32).unwrap_or(0),
        collection_method: method.map(|x| x as i32).unwrap_or(0),
        interpreter_language: f.v("interpreter_language").trim().to_owned(),
        consent_type: "EXPLICIT".to_owned(),
        event_time: now,
        valid_until: now.saturating_add(valid.unwrap_or(1).saturating_mul(DAY)),
        jurisdictions: f.list("jurisdictions"),
        notice_ref: f.v("notice_ref").trim().to_owned(),
        notice_language: f.v("notice_language").trim().to_owned(),
        controllers: vec![wire::Controller {
            name: f.v("controller").trim().to_owned(),
            contact: f.v("controller_contact").trim().to_owned(),
            ..Default::default()
        }],
        legal_basis: Some(wire::LegalBasis {
            basis: "GDPR Art. 6(1)(a) and Art. 9(2)(a) explicit consent".to_owned(),
            justification: String::new(),
            is_override: false,
        }),
        purposes: vec![wire::Purpose {
            purpose: f.v("purpose").trim().to_owned(),
            category: "referral".to_owned(),
            primary: true,
        }],
        recipients: recipients
            .iter()
            .filter_map(|r| {
                let root = parse_root(r)?;
                let name = names
                    .iter()
                    .find(|(k, _)| k == r)
                    .map(|(_, n)| n.split(" (").next().unwrap_or("").to_owned())
                    .unwrap_or_default();
                Some(wire::ConsentRecipient {
                    org_root_key: root.to_vec(),
                    org_name: name,
                    services: services.clone(),
                })
            })
            .collect(),
        data_categories: sections,
        sensitive: true,
        onward_sharing: f.on("onward_sharing"),
        retention_secs: retention.unwrap_or(1).saturating_mul(DAY),
        withdrawal_method: f.v("withdrawal_method").trim().to_owned(),
        witness: Some(wire::Witness {
            caseworker_id: f.v("witness").trim().to_owned(),
            org_name: desk.name.clone(),
        }),
        principal_ack: Some(wire::PrincipalAck {
            method: ack.map(|x| x as i32).unwrap_or(0),
            detail: String::new(),
        }),
        principal_is_minor: f.on("minor"),
        ..Default::default()
    };
    match desk.client.record_consent(draft).await {
        Ok(receipt) => see_other(
            &format!("/consent/{}", hex::encode(receipt.id().as_bytes())),
            "consent-recorded-notice",
        ),
        Err(err) => {
            let mut e = Errors::default();
            e.add("principal_ref", t.t1("consent-refused", "error", err));
            let form = record_form(&t, &desk, f, e).await;
            (StatusCode::UNPROCESSABLE_ENTITY, page(&form)).into_response()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Compose.

/// The compose form.
#[derive(Template)]
#[template(path = "compose.html")]
struct ComposePage {
    p: Chrome,
    f: Values,
    e: Errors,
    orgs: Vec<Choice>,
    receipts: Vec<Choice>,
    services: Vec<Choice>,
    kinds: Vec<Choice>,
    priorities: Vec<Choice>,
    age_bands: Vec<Choice>,
    risk_levels: Vec<Choice>,
    terms: Vec<Choice>,
}

async fn compose_form(t: &Tr, desk: &Desk, f: Values, e: Errors) -> ComposePage {
    let mut p = chrome(t, desk, "compose-title", "referrals");
    if !e.is_empty() {
        p.error = Some(t.t("form-has-errors"));
    }
    let ids = known_receipts(desk).await;
    let receipts = desk
        .client
        .with_engine(move |e, _, _| {
            ids.iter()
                .filter_map(|id| e.consent_receipt(id).ok().flatten())
                .filter(|r| r.state() == wire::ConsentState::Given)
                .map(|r| {
                    let w = r.receipt();
                    let purpose = w
                        .purposes
                        .first()
                        .map(|p| p.purpose.clone())
                        .unwrap_or_default();
                    (
                        hex::encode(r.id().as_bytes()),
                        format!(
                            "{} · {} · {}",
                            r.id().to_uuid_string(),
                            w.principal_ref,
                            purpose
                        ),
                    )
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
    ComposePage {
        p,
        f,
        e,
        orgs: organisations(desk).await,
        receipts,
        services: choices::<wire::Service>(|e| e.as_str_name(), "SERVICE_"),
        kinds: choices::<wire::ReferralKind>(|e| e.as_str_name(), "REFERRAL_KIND_"),
        priorities: choices::<wire::Priority>(|e| e.as_str_name(), "PRIORITY_"),
        age_bands: choices::<wire::AgeBand>(|e| e.as_str_name(), "AGE_BAND_"),
        risk_levels: choices::<wire::RiskLevel>(|e| e.as_str_name(), "RISK_LEVEL_"),
        terms: ["survivor", "victim", "none"]
            .iter()
            .map(|s| ((*s).to_owned(), (*s).to_owned()))
            .collect(),
    }
}

async fn compose_page(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Query(q): Query<NoticeQuery>,
) -> Response {
    if !desk.handles_cases() {
        return crate::cases::hide(&t, &desk);
    }
    let defaults = Values(
        [
            ("kind", "referral"),
            ("priority", "normal"),
            ("age_band", "adult"),
            ("retain_days", "60"),
            ("worker", desk.name.as_str()),
            ("risk_level", "medium"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect(),
    );
    let mut form = compose_form(&t, &desk, defaults, Errors::default()).await;
    form.p.notice = notice_text(&t, &q);
    page(&form)
}

/// An uploaded file.
struct Upload {
    name: String,
    media_type: String,
    bytes: Vec<u8>,
}

async fn read_multipart(mut m: Multipart) -> Result<(Values, Vec<Upload>), String> {
    let mut values = Vec::new();
    let mut files = Vec::new();
    while let Some(field) = m.next_field().await.map_err(|e| e.to_string())? {
        let name = field.name().unwrap_or("").to_owned();
        if name == "attachments" {
            let file_name = field.file_name().unwrap_or("").to_owned();
            let media_type = field
                .content_type()
                .unwrap_or("application/octet-stream")
                .to_owned();
            let bytes = field.bytes().await.map_err(|e| e.to_string())?;
            if !file_name.is_empty() && !bytes.is_empty() {
                files.push(Upload {
                    name: file_name,
                    media_type,
                    bytes: bytes.to_vec(),
                });
            }
        } else {
            values.push((name, field.text().await.map_err(|e| e.to_string())?));
        }
    }
    Ok((Values(values), files))
}

/// Which form field a consent-gate refusal concerns.
fn gate_field(e: &GateError) -> &'static str {
    match e {
        GateError::RecipientNotCovered { .. } => "to",
        GateError::ServiceNotCovered { .. } => "services",
        GateError::PurposeNotCovered { .. } => "purpose",
        GateError::SectionNotCovered { .. } | GateError::SectionWithheld { .. } => "sections",
        GateError::OnwardSharingNotCovered { .. } => "onward_sharing_allowed",
        GateError::RetentionNotCovered { .. } => "retain_days",
        GateError::MinorMismatch { .. }
        | GateError::MinorConsentIncomplete { .. }
        | GateError::ChildAssentRefused { .. } => "is_minor",
        _ => "consent",
    }
}

/// The form field of a draft field the core names in [`ReferralError::InvalidDraft`].
fn draft_field(field: &str) -> &'static str {
    const FIELDS: &[&str] = &[
        "kind",
        "case_ref",
        "worker",
        "services",
        "priority",
        "purpose",
        "languages",
        "age_band",
        "retain_days",
        "to",
    ];
    let last = field.rsplit(['.', ' ']).next().unwrap_or(field);
    // Required body sections: at their first field.
    match last {
        "identity" | "name_or_alias" => return "name_or_alias",
        "safe_contact" => return "safe_to_contact",
        "reason" => return "reason",
        "risk" | "level" => return "risk_level",
        _ => {}
    }
    FIELDS
        .iter()
        .find(|f| last == **f || last.starts_with(*f) || f.starts_with(last))
        .copied()
        .unwrap_or("sections")
}

/// Unix seconds of an `<input type="datetime-local">` value (`YYYY-MM-DDTHH:MM`), read as UTC.
fn parse_local_time(text: &str) -> Option<u64> {
    let (date, time) = text.trim().split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|x| x.parse::<i64>().ok());
    let (h, min) = (t.next()??, t.next()??);
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || !(0..24).contains(&h)
        || !(0..60).contains(&min)
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + min * 60).ok()
}

fn yes(f: &Values, name: &str) -> bool {
    f.v(name) == "yes"
}

fn sections_of(f: &Values) -> Vec<wire::BodySection> {
    let mut out = Vec::new();
    let mut push = |c: Content| out.push(wire::BodySection { content: Some(c) });
    let text = |n: &str| f.v(n).trim().to_owned();
    if !text("name_or_alias").is_empty() {
        push(Content::Identity(wire::IdentitySection {
            name_or_alias: text("name_or_alias"),
            preferred_name: text("preferred_name"),
            preferred_term: text("preferred_term"),
            pronouns: text("pronouns"),
            age_or_birth_date: text("age_or_birth_date"),
            gender: text("gender"),
            disability: text("disability"),
            nationality: text("nationality"),
            id_numbers: f.list("id_numbers"),
        }));
    }
    if !f.v("safe_to_contact").is_empty() {
        push(Content::SafeContact(wire::SafeContactSection {
            safe_to_contact: yes(f, "safe_to_contact"),
            channels: f.list("channels"),
            safe_times: text("safe_times"),
            code_word: text("code_word"),
            voicemail_ok: yes(f, "voicemail_ok"),
            others_may_answer: yes(f, "others_may_answer"),
            details: text("contact_details"),
        }));
    }
    if !text("location").is_empty() {
        push(Content::Location(wire::LocationSection {
            location: text("location"),
        }));
    }
    if !text("caregiver").is_empty() {
        push(Content::Guardian(wire::GuardianSection {
            caregiver: text("caregiver"),
            relationship: text("relationship"),
            contact: text("guardian_contact"),
            unaccompanied: yes(f, "unaccompanied"),
            caregiver_informed: yes(f, "caregiver_informed"),
            not_informed_reason: text("not_informed_reason"),
        }));
    }
    if !text("do_not_disclose_what").is_empty() {
        push(Content::DoNotDisclose(wire::DoNotDiscloseSection {
            rules: vec![wire::DoNotDisclose {
                what: text("do_not_disclose_what"),
                to_whom: text("do_not_disclose_to"),
                why: text("do_not_disclose_why"),
            }],
        }));
    }
    if let Some(at) = parse_local_time(f.v("appointment_at")) {
        push(Content::Appointment(wire::AppointmentSection {
            at,
            place: text("appointment_place"),
            notes: text("appointment_notes"),
        }));
    }
    if !text("reason").is_empty() {
        push(Content::Reason(wire::ReasonSection {
            reason: text("reason"),
        }));
    }
    if !f.list("services_provided").is_empty() {
        push(Content::ServicesProvided(wire::ServicesProvidedSection {
            services: f.list("services_provided"),
        }));
    }
    if let Some(level) = pick(
        wire::RiskLevel::from_str_name,
        "RISK_LEVEL_",
        f.v("risk_level"),
    ) && f.v("include_risk") == "yes"
    {
        push(Content::Risk(wire::RiskSection {
            level: level as i32,
            immediate_concerns: text("immediate_concerns"),
            safety_plan_exists: yes(f, "safety_plan_exists"),
            escape_plan_exists: yes(f, "escape_plan_exists"),
            perpetrator_knows_location: yes(f, "perpetrator_knows_location"),
        }));
    }
    out
}

async fn compose(Lang(t): Lang, Unlocked(desk): Unlocked, multipart: Multipart) -> Response {
    if !desk.handles_cases() {
        return crate::cases::hide(&t, &desk);
    }
    let (f, files) = match read_multipart(multipart).await {
        Ok(x) => x,
        Err(err) => {
            let mut e = Errors::default();
            e.add("attachments", t.t1("upload-failed", "error", err));
            let form = compose_form(&t, &desk, Values::default(), e).await;
            return (StatusCode::UNPROCESSABLE_ENTITY, page(&form)).into_response();
        }
    };
    let mut e = Errors::default();
    for name in ["case_ref", "worker", "purpose"] {
        if f.v(name).trim().is_empty() {
            e.add(name, t.t("field-required"));
        }
    }
    let to = parse_root(f.v("to"));
    if to.is_none() {
        e.add("to", t.t("field-choose"));
    }
    let services: Vec<wire::Service> = f
        .all("services")
        .iter()
        .filter_map(|s| pick(wire::Service::from_str_name, "SERVICE_", s))
        .collect();
    if services.is_empty() && f.list("other_services").is_empty() {
        e.add("services", t.t("field-choose"));
    }
    let kind = pick(
        wire::ReferralKind::from_str_name,
        "REFERRAL_KIND_",
        f.v("kind"),
    );
    let priority = pick(wire::Priority::from_str_name, "PRIORITY_", f.v("priority"));
    let age_band = pick(wire::AgeBand::from_str_name, "AGE_BAND_", f.v("age_band"));
    for (name, ok) in [
        ("kind", kind.is_some()),
        ("priority", priority.is_some()),
        ("age_band", age_band.is_some()),
    ] {
        if !ok {
            e.add(name, t.t("field-choose"));
        }
    }
    let retain = f.days("retain_days");
    if retain.is_none() {
        e.add("retain_days", t.t("field-days"));
    }
    let receipt = hex::decode(f.v("consent"))
        .ok()
        .and_then(|b| ReceiptId::from_slice(&b));
    if receipt.is_none() {
        e.add("consent", t.t("compose-need-consent"));
    }
    let body = sections_of(&f);
    if body.is_empty() && files.is_empty() {
        e.add("sections", t.t("compose-need-section"));
    }
    let (Some(to), Some(kind), Some(priority), Some(age_band), Some(retain), Some(receipt)) =
        (to, kind, priority, age_band, retain, receipt)
    else {
        let form = compose_form(&t, &desk, f, e).await;
        return (StatusCode::UNPROCESSABLE_ENTITY, page(&form)).into_response();
    };
    if !e.is_empty() {
        let form = compose_form(&t, &desk, f, e).await;
        return (StatusCode::UNPROCESSABLE_ENTITY, page(&form)).into_response();
    }
    let (own_root, now) = match desk
        .client
        .with_engine(|e, _, now| e.org_root().map(|r| (r, now)))
        .await
    {
        Ok(Ok(x)) => x,
        _ => return crate::cases::failed(&t, &desk, "the profile could not be read"),
    };
    let to_name = organisations(&desk)
        .await
        .into_iter()
        .find(|(r, _)| *r == hex::encode(to))
        .map(|(_, n)| n.split(" (").next().unwrap_or("").to_owned())
        .unwrap_or_default();
    let draft = OfferDraft {
        kind,
        sender_case_ref: f.v("case_ref").trim().to_owned(),
        from: wire::Party {
            org_root_key: own_root.to_vec(),
            org_name: desk.name.clone(),
            worker_name: f.v("worker").trim().to_owned(),
            role: wire::Role::Caseworker as i32,
            contact: if f.v("worker_contact").trim().is_empty() {
                "Reply through Handover".to_owned()
            } else {
                f.v("worker_contact").trim().to_owned()
            },
        },
        to: wire::Party {
            org_root_key: to.to_vec(),
            org_name: to_name,
            worker_name: f.v("to_worker").trim().to_owned(),
            ..Default::default()
        },
        services_requested: services,
        other_services: f.list("other_services"),
        priority,
        purpose: f.v("purpose").trim().to_owned(),
        languages: f.list("languages"),
        interpreter_needed: f.on("interpreter_needed"),
        preferred_worker_gender: f.v("preferred_worker_gender").trim().to_owned(),
        age_band,
        is_minor: f.on("is_minor"),
        onward_sharing_allowed: f.on("onward_sharing_allowed"),
        retain_until: now.saturating_add(retain.saturating_mul(DAY)),
        retention_rule: format!("Erase {retain} days after the offer"),
        offer_ttl_secs: f
            .v("offer_ttl_hours")
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|h| *h > 0)
            .map(|h| h.saturating_mul(3600)),
    };
    let mut sections = body;
    // Attachments: encrypted here and uploaded before the offer goes out.
    let mut attachments = Vec::new();
    for file in &files {
        let uploaded = tokio::time::timeout(
            Duration::from_secs(300),
            desk.client
                .upload_attachment(&file.bytes, &file.media_type, &file.name, |_| {}),
        )
        .await;
        match uploaded {
            Ok(Ok(a)) => attachments.push(a),
            Ok(Err(err)) => {
                let mut e = Errors::default();
                e.add("attachments", t.t1("upload-failed", "error", err));
                let form = compose_form(&t, &desk, f, e).await;
                return (StatusCode::BAD_GATEWAY, page(&form)).into_response();
            }
            Err(_) => {
                let mut e = Errors::default();
                e.add("attachments", t.t1("upload-failed", "error", "timed out"));
                let form = compose_form(&t, &desk, f, e).await;
                return (StatusCode::GATEWAY_TIMEOUT, page(&form)).into_response();
            }
        }
    }
    if !attachments.is_empty() {
        sections.push(wire::BodySection {
            content: Some(Content::Attachments(wire::AttachmentsSection {
                attachments,
            })),
        });
    }
    let sent = tokio::time::timeout(
        NETWORK_WAIT,
        desk.client
            .send_referral(draft, sections, OfferConsent::Receipt(receipt)),
    )
    .await;
    match sent {
        Ok(Ok(id)) => see_other(
            &format!("/referrals/{}", hex::encode(id.as_bytes())),
            "referral-sent",
        ),
        Ok(Err(err)) => {
            let mut e = Errors::default();
            match &err {
                ClientError::Engine(EngineError::Referral(ReferralError::Consent(g))) => {
                    e.add(gate_field(g), t.t1("compose-gate", "error", g));
                }
                // A field the core refuses: shown at that field when the form has it.
                ClientError::Engine(EngineError::Referral(ReferralError::InvalidDraft {
                    field,
                    ..
                })) => {
                    let at = draft_field(field);
                    e.add(at, t.t1("compose-refused", "error", &err));
                }
                ClientError::Engine(EngineError::NoSession) => {
                    e.add("to", t.t("compose-unreachable"));
                }
                other => e.add("consent", t.t1("compose-refused", "error", other)),
            }
            let form = compose_form(&t, &desk, f, e).await;
            (StatusCode::UNPROCESSABLE_ENTITY, page(&form)).into_response()
        }
        Err(_) => see_other("/referrals", "chat-queued"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appointment_times_are_read_as_utc() {
        assert_eq!(parse_local_time("1970-01-01T00:00"), Some(0));
        assert_eq!(parse_local_time("2000-02-29T12:30"), Some(951_827_400));
        assert_eq!(parse_local_time("2026-12-06T12:00"), Some(1_796_558_400));
        assert_eq!(parse_local_time("2026-13-06T12:00"), None);
        assert_eq!(parse_local_time(""), None);
    }
}
