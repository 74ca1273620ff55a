//! Referral, consent, organisation and settings screens. Referral and consent screens exist
//! only for roles that handle cases (not ambassadors): their routes answer 404 otherwise.

use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use handover_core::client::{ClientError, RelayAccess};
use handover_core::consent::{Language, PreferredTerm, ReceiptId, SignedReceipt};
use handover_core::engine::{
    EngineError, PurgeReport, ReferralListEntry, RelayInfo, org_fingerprint,
};
use handover_core::identity::Role;
use handover_core::net::NetError;
use handover_core::referral::{Action, Outcome, ReferralId, ReferralState, Side};
use handover_core::store::Passphrase;
use handover_proto::e2e::v1 as wire;
use handover_proto::e2e::v1::body_section::Content;
use handover_proto::relay::v1::ErrorCode;
use serde::Deserialize;

use crate::i18n::{Tr, is_rtl};
use crate::pages::{
    Lang, NETWORK_WAIT, NoticeQuery, Unlocked, chrome, error_page, notice_text, see_other,
};
use crate::state::{Desk, Shared};
use crate::views::{Chrome, Todo, page, utc};

/// The routes of this module.
pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route("/referrals", get(referrals))
        .route("/referrals/{id}", get(referral))
        .route("/referrals/{id}/act", post(act))
        .route("/referrals/{id}/attachments/{n}", get(attachment))
        .route("/consent", get(consents))
        .route("/consent/{id}", get(consent))
        .route("/consent/{id}/kantara.json", get(kantara))
        .route("/consent/{id}/withdraw", post(withdraw))
        .route("/settings", get(settings))
        .route("/settings/lock", post(set_lock))
        .route("/settings/duress", post(set_duress))
        .route("/settings/wipe", post(wipe))
        .route("/settings/relay", post(move_relay))
        .route("/settings/relay/finish", post(finish_relay_move))
}

pub(crate) fn hide(t: &Tr, desk: &Desk) -> Response {
    error_page(t, Some(desk), StatusCode::NOT_FOUND, t.t("error-not-found"))
}

pub(crate) fn failed(t: &Tr, desk: &Desk, e: impl std::fmt::Display) -> Response {
    error_page(
        t,
        Some(desk),
        StatusCode::INTERNAL_SERVER_ERROR,
        t.t1("error-generic", "error", e),
    )
}

fn trim_enum<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

fn word(name: &str, prefix: &str) -> String {
    trim_enum(name, prefix)
        .to_ascii_lowercase()
        .replace('_', " ")
}

fn parse_referral(text: &str) -> Option<ReferralId> {
    ReferralId::from_slice(&hex::decode(text).ok()?)
}

fn parse_receipt(text: &str) -> Option<ReceiptId> {
    ReceiptId::from_slice(&hex::decode(text).ok()?)
}

// ---------------------------------------------------------------------------------------------
// Home.

/// What the case screens add to the home screen's "needs you now".
pub(crate) async fn home_todo(t: &Tr, desk: &Desk) -> Vec<Todo> {
    let mut out = Vec::new();
    let Ok(rows) = rows(desk).await else {
        return out;
    };
    for r in &rows {
        let href = format!("/referrals/{}", r.id);
        let text = match (r.side_sender, r.state.as_str()) {
            (false, "SENT" | "DELIVERED" | "ACKNOWLEDGED") => {
                t.t1("todo-offer", "respond_by", &r.respond_by)
            }
            (true, "INFO_REQUESTED") => t.t("todo-info-requested"),
            (true, "ACCEPTED") if !r.released => t.t("todo-release"),
            _ => continue,
        };
        // A colleague's case needs this device only if the colleague does not act.
        let text = if r.side_sender && !r.mine {
            t.t1("todo-colleague", "text", &text)
        } else {
            text
        };
        out.push(Todo { text, href });
    }
    for id in known_receipts(desk).await {
        if let Ok(Ok(true)) = desk
            .client
            .with_engine(move |e, _, _| e.erasure_pending(&id))
            .await
        {
            out.push(Todo {
                text: t.t("todo-erasure"),
                href: format!("/consent/{}", hex::encode(id.as_bytes())),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Referral list.

/// One referral as the list shows it.
pub(crate) struct Row {
    id: String,
    state: String,
    side_sender: bool,
    counterpart: String,
    priority: String,
    respond_by: String,
    services: String,
    case_ref: String,
    released: bool,
    /// A sent case this device holds (issue 22: the organisation shares its cases; one
    /// caseworker holds each).
    mine: bool,
    /// Who of the organisation holds it: empty for mine and for received referrals (the
    /// receiving team's), else the first bytes of the holding device's id.
    holder: String,
    /// When the offer was created (Unix seconds), for "newest first".
    created_at: u64,
    /// Respond by (Unix seconds; 0 if unknown), for "most urgent first".
    respond_by_at: u64,
    /// 0 emergency, 1 urgent, 2 normal, 3 unknown, for "most urgent first".
    urgency: u8,
}

/// Every referral of this device as the list shows it, from the client core's list summaries
/// (one short read per referral, the referral records themselves are not opened).
async fn rows(desk: &Desk) -> Result<Vec<Row>, handover_core::client::ClientError> {
    let entries = desk
        .client
        .with_engine(|e, _, _| e.referral_list())
        .await??;
    let mut fingerprints = std::collections::BTreeMap::new();
    Ok(entries
        .iter()
        .map(|e| {
            let counterpart = fingerprints
                .entry(e.counterpart)
                .or_insert_with(|| org_fingerprint(&e.counterpart))
                .clone();
            row(e, counterpart)
        })
        .collect())
}

fn row(s: &ReferralListEntry, counterpart: String) -> Row {
    let offer = s.offer.as_ref();
    Row {
        id: hex::encode(s.id.as_bytes()),
        state: s.state.name().to_owned(),
        side_sender: s.side == Side::Sender,
        counterpart,
        priority: offer
            .map(|o| word(o.priority.as_str_name(), "PRIORITY_"))
            .unwrap_or_default(),
        respond_by: offer.map(|o| utc(o.respond_by)).unwrap_or_default(),
        services: offer
            .map(|o| {
                o.services
                    .iter()
                    .map(|v| word(v.as_str_name(), "SERVICE_"))
                    .chain(o.other_services.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        case_ref: offer.map(|o| o.case_ref.clone()).unwrap_or_default(),
        released: !s.awaiting_release,
        mine: s.side == Side::Sender && s.mine,
        holder: match (s.side, s.mine, s.assignee) {
            (Side::Sender, false, Some(d)) => hex::encode(&d.0[..4]),
            _ => String::new(),
        },
        created_at: s.created_at,
        respond_by_at: offer.map_or(0, |o| o.respond_by),
        urgency: match offer.map(|o| o.priority) {
            Some(wire::Priority::Emergency) => 0,
            Some(wire::Priority::Urgent) => 1,
            Some(wire::Priority::Normal) => 2,
            _ => 3,
        },
    }
}

/// Rows per page of the referral list.
const PAGE_ROWS: usize = 100;

/// Referral list filters, order and page.
#[derive(Deserialize, Default)]
struct ListQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    side: String,
    #[serde(default)]
    q: String,
    /// "mine": the sent cases this device holds; "org": every case of the organisation.
    #[serde(default)]
    whose: String,
    /// "urgent": by priority, then respond-by; otherwise newest first.
    #[serde(default)]
    sort: String,
    /// 1-based; out of range shows the nearest page.
    #[serde(default)]
    page: Option<usize>,
}

impl ListQuery {
    /// The list's address with these filters and order at `page`.
    fn href(&self, page: usize) -> String {
        let mut out = String::from("/referrals?");
        for (name, value) in [
            ("state", &self.state),
            ("side", &self.side),
            ("whose", &self.whose),
            ("q", &self.q),
            ("sort", &self.sort),
        ] {
            if !value.is_empty() {
                out.push_str(name);
                out.push('=');
                out.push_str(&form_encode(value));
                out.push('&');
            }
        }
        out.push_str(&format!("page={page}"));
        out
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One page of the filtered, ordered referral list.
struct Listing {
    rows: Vec<Row>,
    /// Referrals on this device.
    total: usize,
    /// Referrals the filters let through.
    matching: usize,
    /// 1-based positions of the first and last row shown (0 when none).
    first: usize,
    last: usize,
    page: usize,
    pages: usize,
    prev: Option<String>,
    next: Option<String>,
}

/// Filters `all` by state, side, whose and text, orders the rest (newest first, or most
/// urgent first) and keeps the asked page of [`PAGE_ROWS`].
fn select(all: Vec<Row>, f: &ListQuery) -> Listing {
    let total = all.len();
    let q = f.q.trim().to_lowercase();
    let mut rows: Vec<Row> = all
        .into_iter()
        .filter(|r| f.state.is_empty() || r.state == f.state)
        .filter(|r| match f.side.as_str() {
            "sent" => r.side_sender,
            "received" => !r.side_sender,
            _ => true,
        })
        .filter(|r| f.whose != "mine" || r.mine)
        .filter(|r| {
            q.is_empty()
                || r.case_ref.to_lowercase().contains(&q)
                || r.services.contains(&q)
                || r.counterpart.to_lowercase().contains(&q)
        })
        .collect();
    if f.sort == "urgent" {
        rows.sort_by(|a, b| {
            let due = |r: &Row| {
                if r.respond_by_at == 0 {
                    u64::MAX
                } else {
                    r.respond_by_at
                }
            };
            (a.urgency, due(a), std::cmp::Reverse(a.created_at), &a.id).cmp(&(
                b.urgency,
                due(b),
                std::cmp::Reverse(b.created_at),
                &b.id,
            ))
        });
    } else {
        rows.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    }
    let matching = rows.len();
    let pages = matching.div_ceil(PAGE_ROWS).max(1);
    let page = f.page.unwrap_or(1).clamp(1, pages);
    let skip = (page - 1) * PAGE_ROWS;
    let rows: Vec<Row> = rows.into_iter().skip(skip).take(PAGE_ROWS).collect();
    Listing {
        first: if rows.is_empty() { 0 } else { skip + 1 },
        last: skip + rows.len(),
        prev: (page > 1).then(|| f.href(page - 1)),
        next: (page < pages).then(|| f.href(page + 1)),
        rows,
        total,
        matching,
        page,
        pages,
    }
}

/// The referral list.
#[derive(Template)]
#[template(path = "referrals.html")]
struct Referrals {
    p: Chrome,
    list: Listing,
    /// Each state with whether it is the chosen filter.
    states: Vec<(&'static str, bool)>,
    side: String,
    q: String,
    whose: String,
    sort: String,
    /// Which rows are shown of how many, in words.
    count: String,
    /// "Page n of m".
    page_of: String,
}

const STATES: &[&str] = &[
    "SENT",
    "DELIVERED",
    "ACKNOWLEDGED",
    "INFO_REQUESTED",
    "ACCEPTED",
    "IN_SERVICE",
    "COMPLETED",
    "DECLINED",
    "EXPIRED",
    "WITHDRAWN",
    "CONSENT_REVOKED",
    "PURGE_CONFIRMED",
];

async fn referrals(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Query(f): Query<ListQuery>,
) -> Response {
    if !desk.handles_cases() {
        return hide(&t, &desk);
    }
    let all = match rows(&desk).await {
        Ok(r) => r,
        Err(e) => return failed(&t, &desk, e),
    };
    let list = select(all, &f);
    let count = if list.rows.is_empty() {
        t.t1("referrals-none-match", "total", list.total)
    } else {
        t.tn(
            "referrals-count",
            &[
                ("first", &list.first),
                ("last", &list.last),
                ("matching", &list.matching),
                ("total", &list.total),
            ],
        )
    };
    let page_of = t.tn("page-of", &[("page", &list.page), ("pages", &list.pages)]);
    let p = chrome(&t, &desk, "referrals-title", "referrals");
    page(&Referrals {
        p,
        list,
        count,
        page_of,
        states: STATES.iter().map(|s| (*s, *s == f.state)).collect(),
        side: f.side,
        q: f.q,
        whose: f.whose,
        sort: f.sort,
    })
}

// ---------------------------------------------------------------------------------------------
// Referral detail and actions.

/// A label and a value.
struct Field {
    label: String,
    value: String,
}

/// One body section as shown.
struct SectionView {
    title: String,
    fields: Vec<Field>,
}

/// An attachment link.
struct AttachmentView {
    n: usize,
    name: String,
    size: u64,
}

/// The referral detail page.
#[derive(Template)]
#[template(path = "referral.html")]
struct Detail {
    p: Chrome,
    id: String,
    state: String,
    sender: bool,
    counterpart: String,
    offer: Vec<Field>,
    sections: Vec<SectionView>,
    attachments: Vec<AttachmentView>,
    body_note: String,
    actions: Vec<&'static str>,
    decline_reasons: Vec<(i32, String)>,
    not_successful: Vec<(i32, String)>,
    timeline: String,
    timeline_check: String,
}

/// The actions this side may take in this state (the lifecycle refuses others anyway).
fn allowed(side: Side, state: &ReferralState, role: Role) -> Vec<&'static str> {
    if matches!(role, Role::Ambassador) {
        return Vec::new();
    }
    let name = state.name();
    match side {
        Side::Receiver => match name {
            "SENT" | "DELIVERED" | "ACKNOWLEDGED" => vec!["accept", "decline", "request_info"],
            "INFO_REQUESTED" => vec!["accept", "decline"],
            "ACCEPTED" => vec!["start_service", "complete"],
            "IN_SERVICE" => vec!["complete"],
            _ => Vec::new(),
        },
        Side::Sender => match name {
            "INFO_REQUESTED" => vec!["provide_info", "withdraw"],
            "SENT" | "DELIVERED" | "ACKNOWLEDGED" | "ACCEPTED" | "IN_SERVICE" => {
                vec!["withdraw"]
            }
            _ => Vec::new(),
        },
    }
}

fn yn(t: &Tr, b: bool) -> String {
    t.t(if b { "yes" } else { "no" })
}

fn offer_fields(t: &Tr, o: &wire::ReferralOffer) -> Vec<Field> {
    let f = |label: &str, value: String| Field {
        label: t.t(label),
        value,
    };
    let from = o.from.clone().unwrap_or_default();
    let to = o.to.clone().unwrap_or_default();
    let consent = match o.consent.as_ref().and_then(|c| c.basis.as_ref()) {
        Some(wire::consent_ref::Basis::Receipt(r)) => {
            format!(
                "receipt {}",
                hex::encode(r.receipt_id.get(..4).unwrap_or(&[]))
            )
        }
        Some(wire::consent_ref::Basis::Override(ov)) => format!("override: {}", ov.legal_basis),
        None => String::new(),
    };
    vec![
        f("f-kind", word(o.kind().as_str_name(), "REFERRAL_KIND_")),
        f("f-priority", word(o.priority().as_str_name(), "PRIORITY_")),
        f("f-respond-by", utc(o.respond_by)),
        f(
            "f-from",
            format!("{} ({}; {})", from.org_name, from.worker_name, from.contact),
        ),
        f("f-to", to.org_name),
        f("f-case-ref", o.sender_case_ref.clone()),
        f(
            "f-services",
            o.services_requested()
                .map(|v| word(v.as_str_name(), "SERVICE_"))
                .chain(o.other_services.iter().cloned())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        f("f-purpose", o.purpose.clone()),
        f(
            "f-sections",
            o.sections_included()
                .map(handover_core::referral::section_name)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        f("f-consent", consent),
        f("f-languages", o.languages.join(", ")),
        f("f-interpreter", yn(t, o.interpreter_needed)),
        f("f-age-band", word(o.age_band().as_str_name(), "AGE_BAND_")),
        f("f-minor", yn(t, o.is_minor)),
        f("f-onward", yn(t, o.onward_sharing_allowed)),
        f("f-retain-until", utc(o.retain_until)),
        f("f-offer-expires", utc(o.offer_expires_at)),
    ]
}

fn section_view(t: &Tr, s: &wire::BodySection) -> Option<SectionView> {
    let f = |label: &str, value: String| Field {
        label: label.to_owned(),
        value,
    };
    let (title, fields) = match s.content.as_ref()? {
        Content::Identity(i) => (
            "identity",
            vec![
                f("name or alias", i.name_or_alias.clone()),
                f("preferred name", i.preferred_name.clone()),
                f("preferred term", i.preferred_term.clone()),
                f("pronouns", i.pronouns.clone()),
                f("age or birth date", i.age_or_birth_date.clone()),
                f("gender", i.gender.clone()),
                f("disability", i.disability.clone()),
                f("nationality", i.nationality.clone()),
                f("id numbers", i.id_numbers.join(", ")),
            ],
        ),
        Content::SafeContact(c) => (
            "safe contact",
            vec![
                f("safe to contact", yn(t, c.safe_to_contact)),
                f("channels", c.channels.join(", ")),
                f("safe times", c.safe_times.clone()),
                f("code word", c.code_word.clone()),
                f("voicemail ok", yn(t, c.voicemail_ok)),
                f("others may answer", yn(t, c.others_may_answer)),
                f("details", c.details.clone()),
            ],
        ),
        Content::Location(l) => ("location", vec![f("location", l.location.clone())]),
        Content::Guardian(g) => (
            "guardian",
            vec![
                f("caregiver", g.caregiver.clone()),
                f("relationship", g.relationship.clone()),
                f("contact", g.contact.clone()),
                f("unaccompanied", yn(t, g.unaccompanied)),
                f("caregiver informed", yn(t, g.caregiver_informed)),
                f("why not informed", g.not_informed_reason.clone()),
            ],
        ),
        Content::Reason(r) => ("reason for referral", vec![f("reason", r.reason.clone())]),
        Content::ServicesProvided(s) => (
            "services already provided",
            vec![f("services", s.services.join(", "))],
        ),
        Content::Risk(r) => (
            "risk",
            vec![
                f("level", word(r.level().as_str_name(), "RISK_LEVEL_")),
                f("immediate concerns", r.immediate_concerns.clone()),
                f("safety plan exists", yn(t, r.safety_plan_exists)),
                f("escape plan exists", yn(t, r.escape_plan_exists)),
                f(
                    "perpetrator knows location",
                    yn(t, r.perpetrator_knows_location),
                ),
            ],
        ),
        Content::DoNotDisclose(d) => (
            "do not disclose",
            d.rules
                .iter()
                .map(|r| f(&r.what, format!("{} ({})", r.to_whom, r.why)))
                .collect(),
        ),
        Content::Appointment(a) => (
            "appointment",
            vec![
                f("at", utc(a.at)),
                f("place", a.place.clone()),
                f("notes", a.notes.clone()),
            ],
        ),
        Content::Attachments(_) => return None,
    };
    Some(SectionView {
        title: title.to_owned(),
        fields: fields.into_iter().filter(|f| !f.value.is_empty()).collect(),
    })
}

/// The received body's sections and attachments.
async fn body(
    desk: &Desk,
    id: ReferralId,
) -> Result<Vec<wire::BodySection>, handover_core::client::ClientError> {
    desk.client
        .with_engine(move |e, _, _| {
            let mut out = Vec::new();
            for section in (1..=16).filter_map(|i| wire::Section::try_from(i).ok()) {
                if let Some(s) = e.received_section(&id, section)? {
                    out.push(s);
                }
            }
            Ok::<_, EngineError>(out)
        })
        .await?
        .map_err(Into::into)
}

fn attachments_of(sections: &[wire::BodySection]) -> Vec<wire::Attachment> {
    sections
        .iter()
        .filter_map(|s| match &s.content {
            Some(Content::Attachments(a)) => Some(a.attachments.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn enum_choices<E: TryFrom<i32>>(
    name: impl Fn(&E) -> &'static str,
    prefix: &str,
) -> Vec<(i32, String)> {
    (1..=32)
        .filter_map(|i| E::try_from(i).ok().map(|e| (i, word(name(&e), prefix))))
        .collect()
}

async fn referral(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Path(id): Path<String>,
    Query(q): Query<NoticeQuery>,
) -> Response {
    if !desk.handles_cases() {
        return hide(&t, &desk);
    }
    let Some(rid) = parse_referral(&id) else {
        return hide(&t, &desk);
    };
    let summary = match desk.client.referral(rid).await {
        Ok(Some(s)) => s,
        Ok(None) => return hide(&t, &desk),
        Err(e) => return failed(&t, &desk, e),
    };
    let offer = desk
        .client
        .with_engine(move |e, _, _| e.received_offer(&rid))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let sections = if summary.side == Side::Receiver {
        body(&desk, rid).await.unwrap_or_default()
    } else {
        Vec::new()
    };
    let body_note = if summary.side == Side::Sender {
        t.t("body-sender")
    } else if !sections.is_empty() {
        String::new()
    } else if offer.is_none() {
        t.t("body-erased")
    } else if summary.state.body_allowed() {
        t.t("body-coming")
    } else if summary.state.is_open() {
        t.t("body-after-accept")
    } else {
        t.t("body-none")
    };
    let attachments = attachments_of(&sections)
        .iter()
        .enumerate()
        .map(|(n, a)| AttachmentView {
            n,
            name: a.file_name.clone(),
            size: a.blob.as_ref().map(|b| b.size).unwrap_or(0),
        })
        .collect();
    let timeline_check = match desk.client.verify_referral_timeline(rid).await {
        Ok(Some(handover_core::client::TimelineCheck::Full)) => t.t("timeline-full"),
        Ok(Some(_)) => t.t("timeline-chain"),
        Ok(None) => String::new(),
        Err(e) => t.t1("timeline-bad", "error", e),
    };
    let mut p = chrome(&t, &desk, "referral-title", "referrals");
    p.notice = notice_text(&t, &q);
    page(&Detail {
        p,
        id,
        state: summary.state.name().to_owned(),
        sender: summary.side == Side::Sender,
        counterpart: org_fingerprint(&summary.counterpart),
        offer: offer
            .as_ref()
            .map(|o| offer_fields(&t, o))
            .unwrap_or_default(),
        sections: sections
            .iter()
            .filter_map(|s| section_view(&t, s))
            .collect(),
        attachments,
        body_note,
        actions: allowed(summary.side, &summary.state, desk.role),
        decline_reasons: enum_choices::<wire::DeclineReason>(
            |e| e.as_str_name(),
            "DECLINE_REASON_",
        ),
        not_successful: enum_choices::<wire::NotSuccessfulReason>(
            |e| e.as_str_name(),
            "NOT_SUCCESSFUL_REASON_",
        ),
        timeline: serde_json::to_string_pretty(&summary.timeline).unwrap_or_default(),
        timeline_check,
    })
}

/// A lifecycle step from the detail page.
#[derive(Deserialize)]
struct ActForm {
    action: String,
    #[serde(default)]
    reason: i32,
    #[serde(default)]
    note: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    successful: String,
}

async fn act(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Path(id): Path<String>,
    Form(f): Form<ActForm>,
) -> Response {
    if !desk.handles_cases() {
        return hide(&t, &desk);
    }
    let Some(rid) = parse_referral(&id) else {
        return hide(&t, &desk);
    };
    let lines = |s: &str| -> Vec<String> {
        s.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let invalid =
        |key: &str| error_page(&t, Some(&desk), StatusCode::UNPROCESSABLE_ENTITY, t.t(key));
    let action = match f.action.as_str() {
        "accept" => Action::Accept,
        "decline" => match wire::DeclineReason::try_from(f.reason) {
            Ok(reason) if f.reason != 0 => Action::Decline {
                reason,
                note: f.note.clone(),
            },
            _ => return invalid("act-need-reason"),
        },
        "request_info" if !lines(&f.text).is_empty() => Action::RequestInfo {
            questions: lines(&f.text),
        },
        "provide_info" if !lines(&f.text).is_empty() => Action::ProvideInfo {
            answers: lines(&f.text),
        },
        "request_info" | "provide_info" => return invalid("act-need-text"),
        "start_service" => Action::StartService,
        "complete" => {
            let outcome = if f.successful == "yes" {
                Outcome::Successful
            } else {
                match wire::NotSuccessfulReason::try_from(f.reason) {
                    Ok(r) if f.reason != 0 => Outcome::NotSuccessful(r),
                    _ => return invalid("act-need-reason"),
                }
            };
            Action::Complete {
                outcome,
                note: f.note.clone(),
            }
        }
        "withdraw" if !f.note.trim().is_empty() => Action::Withdraw {
            reason: f.note.clone(),
        },
        "withdraw" => return invalid("act-need-text"),
        _ => return hide(&t, &desk),
    };
    // Accepting, declining or asking first acknowledges an offer not opened yet.
    if matches!(
        action,
        Action::Accept | Action::Decline { .. } | Action::RequestInfo { .. }
    ) && let Ok(Some(s)) = desk.client.referral(rid).await
        && matches!(s.state.name(), "SENT" | "DELIVERED")
        && let Err(e) = desk.client.referral_act(rid, Action::Acknowledge).await
    {
        return error_page(
            &t,
            Some(&desk),
            StatusCode::CONFLICT,
            t.t1("act-refused", "error", e),
        );
    }
    match tokio::time::timeout(NETWORK_WAIT, desk.client.referral_act(rid, action)).await {
        Ok(Ok(_)) => see_other(&format!("/referrals/{id}"), "referral-acted"),
        Ok(Err(e)) => error_page(
            &t,
            Some(&desk),
            StatusCode::CONFLICT,
            t.t1("act-refused", "error", e),
        ),
        Err(_) => see_other(&format!("/referrals/{id}"), "chat-queued"),
    }
}

async fn attachment(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Path((id, n)): Path<(String, usize)>,
) -> Response {
    if !desk.handles_cases() {
        return hide(&t, &desk);
    }
    let Some(rid) = parse_referral(&id) else {
        return hide(&t, &desk);
    };
    let sections = body(&desk, rid).await.unwrap_or_default();
    let Some(a) = attachments_of(&sections).into_iter().nth(n) else {
        return hide(&t, &desk);
    };
    match tokio::time::timeout(
        Duration::from_secs(120),
        desk.client.download_attachment(&a, |_| {}),
    )
    .await
    {
        Ok(Ok(bytes)) => {
            let name: String = a
                .file_name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                ],
                bytes,
            )
                .into_response()
        }
        Ok(Err(e)) => failed(&t, &desk, e),
        Err(_) => failed(&t, &desk, "the relay did not answer"),
    }
}

// ---------------------------------------------------------------------------------------------
// Consent.

/// Every consent receipt the organisation recorded that this device holds (the core's listing,
/// shared with colleague devices and the CLI), oldest first.
pub(crate) async fn known_receipts(desk: &Desk) -> Vec<ReceiptId> {
    let mut all = desk.client.consent_receipts().await.unwrap_or_default();
    all.sort_by_key(|r| (r.receipt().event_time, *r.id().as_bytes()));
    all.iter().map(SignedReceipt::id).collect()
}

/// A receipt as the list shows it.
struct ReceiptRow {
    id: String,
    short: String,
    principal: String,
    state: String,
    recorded: String,
    purposes: String,
}

fn receipt_row(r: &SignedReceipt) -> ReceiptRow {
    let w = r.receipt();
    ReceiptRow {
        id: hex::encode(r.id().as_bytes()),
        short: r.id().to_uuid_string(),
        principal: w.principal_ref.clone(),
        state: word(r.state().as_str_name(), "CONSENT_STATE_"),
        recorded: utc(w.event_time),
        purposes: w
            .purposes
            .iter()
            .map(|p| p.purpose.clone())
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// The consent list.
#[derive(Template)]
#[template(path = "consents.html")]
struct Consents {
    p: Chrome,
    rows: Vec<ReceiptRow>,
}

async fn consents(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Query(q): Query<NoticeQuery>,
) -> Response {
    if !desk.handles_cases() {
        return hide(&t, &desk);
    }
    let ids = known_receipts(&desk).await;
    let receipts = desk
        .client
        .with_engine(move |e, _, _| {
            ids.iter()
                .filter_map(|id| e.consent_receipt(id).ok().flatten())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
    let mut p = chrome(&t, &desk, "consent-title", "consent");
    p.notice = notice_text(&t, &q);
    page(&Consents {
        p,
        rows: receipts.iter().map(receipt_row).collect(),
    })
}

/// One recipient's erasure status.
struct PurgeRow {
    org: String,
    status: String,
    confirmed: usize,
    pending: usize,
}

/// A receipt: the person's copy in a language, erasure status, actions.
#[derive(Template)]
#[template(path = "consent.html")]
struct ConsentPage {
    p: Chrome,
    row: ReceiptRow,
    copy: String,
    copy_lang: &'static str,
    copy_dir: &'static str,
    languages: Vec<(&'static str, &'static str)>,
    purge: Vec<PurgeRow>,
    given: bool,
}

/// The receipt page's language choice.
#[derive(Deserialize, Default)]
struct CopyQuery {
    #[serde(default)]
    lang: String,
    #[serde(default)]
    notice: Option<String>,
}

fn language_label(l: Language) -> &'static str {
    match l {
        Language::English => "English",
        Language::Arabic => "العربية",
        Language::Ukrainian => "Українська",
        Language::French => "Français",
        Language::Spanish => "Español",
        _ => "?",
    }
}

fn purge_row(p: &PurgeReport) -> PurgeRow {
    PurgeRow {
        org: org_fingerprint(&p.recipient),
        status: format!("{:?}", p.status)
            .split([' ', '{'])
            .next()
            .unwrap_or("")
            .to_owned(),
        confirmed: p.confirmed.len(),
        pending: p.pending.len(),
    }
}

async fn consent(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Path(id): Path<String>,
    Query(q): Query<CopyQuery>,
) -> Response {
    if !desk.handles_cases() {
        return hide(&t, &desk);
    }
    let Some(rid) = parse_receipt(&id) else {
        return hide(&t, &desk);
    };
    let receipt = match desk
        .client
        .with_engine(move |e, _, _| e.consent_receipt(&rid))
        .await
    {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return hide(&t, &desk),
        Ok(Err(e)) => return failed(&t, &desk, e),
        Err(e) => return failed(&t, &desk, e),
    };
    let language = Language::from_tag(&q.lang).unwrap_or(Language::English);
    let copy = match desk
        .client
        .survivor_copy(rid, language, None, PreferredTerm::from_text(""), None)
        .await
    {
        Ok(c) => c,
        Err(e) => return failed(&t, &desk, e),
    };
    let purge = desk
        .client
        .purge_status(rid)
        .await
        .unwrap_or_default()
        .iter()
        .map(purge_row)
        .collect();
    let mut p = chrome(&t, &desk, "consent-title", "consent");
    p.notice = notice_text(
        &t,
        &NoticeQuery {
            notice: q.notice.clone(),
        },
    );
    page(&ConsentPage {
        p,
        given: receipt.state() == wire::ConsentState::Given,
        row: receipt_row(&receipt),
        copy,
        copy_lang: language.tag(),
        copy_dir: if is_rtl(language.tag()) { "rtl" } else { "ltr" },
        languages: Language::ALL
            .iter()
            .map(|l| (l.tag(), language_label(*l)))
            .collect(),
        purge,
    })
}

async fn kantara(Lang(t): Lang, Unlocked(desk): Unlocked, Path(id): Path<String>) -> Response {
    if !desk.handles_cases() {
        return hide(&t, &desk);
    }
    let Some(rid) = parse_receipt(&id) else {
        return hide(&t, &desk);
    };
    match desk.client.kantara_export(rid).await {
        Ok(json) => (
            [
                (header::CONTENT_TYPE, "application/json".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"consent-{id}.json\""),
                ),
            ],
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => failed(&t, &desk, e),
    }
}

async fn withdraw(Lang(t): Lang, Unlocked(desk): Unlocked, Path(id): Path<String>) -> Response {
    if !desk.handles_cases() {
        return hide(&t, &desk);
    }
    let Some(rid) = parse_receipt(&id) else {
        return hide(&t, &desk);
    };
    match tokio::time::timeout(
        NETWORK_WAIT,
        desk.client
            .change_consent(rid, wire::ConsentState::Withdrawn),
    )
    .await
    {
        Ok(Ok(new)) => see_other(
            &format!("/consent/{}", hex::encode(new.id().as_bytes())),
            "consent-withdrawn",
        ),
        Ok(Err(e)) => error_page(
            &t,
            Some(&desk),
            StatusCode::CONFLICT,
            t.t1("act-refused", "error", e),
        ),
        Err(_) => see_other(&format!("/consent/{id}"), "chat-queued"),
    }
}

// ---------------------------------------------------------------------------------------------
// Settings.

/// The settings screen.
#[derive(Template)]
#[template(path = "settings.html")]
struct Settings {
    p: Chrome,
    relay: String,
    /// During a move to another relay: the old relay, still collected.
    old_relay: Option<String>,
    /// When the old mailbox is deleted once empty.
    drain_until: String,
    lock_minutes: u64,
}

async fn settings(
    State(shared): State<Shared>,
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let status = desk.client.relay_status().await.ok();
    let relay = status
        .as_ref()
        .map(|s| s.relay.host_port.clone())
        .unwrap_or_default();
    let draining = status.and_then(|s| s.draining);
    let mut p = chrome(&t, &desk, "settings-title", "settings");
    p.notice = notice_text(&t, &q);
    page(&Settings {
        p,
        relay,
        drain_until: draining
            .as_ref()
            .map(|(_, until)| utc(*until))
            .unwrap_or_default(),
        old_relay: draining.map(|(old, _)| old.host_port),
        lock_minutes: shared.lock_after().as_secs() / 60,
    })
}

/// The form that moves this device's mailbox to another relay.
#[derive(Deserialize)]
struct RelayForm {
    relay: String,
    pin: String,
    #[serde(default)]
    token: String,
}

impl Drop for RelayForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

/// The words for a move that failed: what happened, and that nothing changed when so.
fn relay_move_refusal(t: &Tr, e: &ClientError) -> (StatusCode, String) {
    match e {
        ClientError::Net(NetError::WrongPin) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            t.t("settings-relay-wrong-pin"),
        ),
        ClientError::Net(n) if n.relay_code() == Some(ErrorCode::Unauthorised) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            t.t("settings-relay-token"),
        ),
        ClientError::Net(n) if n.is_transient() => (
            StatusCode::BAD_GATEWAY,
            t.t1("settings-relay-unreachable", "error", n),
        ),
        ClientError::Engine(EngineError::RelayMoveInProgress) => {
            (StatusCode::CONFLICT, t.t("settings-relay-in-progress"))
        }
        ClientError::Engine(EngineError::InvalidInput(_)) => {
            (StatusCode::UNPROCESSABLE_ENTITY, t.t("settings-relay-same"))
        }
        other => (
            StatusCode::INTERNAL_SERVER_ERROR,
            t.t1("settings-relay-failed", "error", other),
        ),
    }
}

async fn move_relay(Lang(t): Lang, Unlocked(desk): Unlocked, Form(f): Form<RelayForm>) -> Response {
    let refuse = |status, text| error_page(&t, Some(&desk), status, text);
    if f.relay.trim().is_empty() {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            t.t("settings-relay-empty"),
        );
    }
    let pin: Option<[u8; 32]> = hex::decode(f.pin.trim())
        .ok()
        .and_then(|b| b.try_into().ok());
    let Some(pin) = pin else {
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, t.t("create-bad-pin"));
    };
    let token = zeroize::Zeroizing::new(f.token.clone().into_bytes());
    let access = RelayAccess::new(
        RelayInfo {
            host_port: f.relay.trim().to_owned(),
            pin,
        },
        (!token.is_empty()).then(|| token.to_vec()),
    );
    drop(token);
    match tokio::time::timeout(NETWORK_WAIT * 3, desk.client.move_relay(access)).await {
        Ok(Ok(report)) if report.cards_queued.is_some() => {
            see_other("/settings", "settings-relay-moved")
        }
        Ok(Ok(_)) => see_other("/settings", "settings-relay-moved-later"),
        Ok(Err(e)) => {
            let (status, text) = relay_move_refusal(&t, &e);
            refuse(status, text)
        }
        Err(_) => refuse(StatusCode::GATEWAY_TIMEOUT, t.t("settings-relay-timeout")),
    }
}

async fn finish_relay_move(Lang(t): Lang, Unlocked(desk): Unlocked) -> Response {
    match tokio::time::timeout(NETWORK_WAIT, desk.client.finish_relay_move()).await {
        Ok(Ok(true)) => see_other("/settings", "settings-relay-finished"),
        Ok(Ok(false)) => error_page(
            &t,
            Some(&desk),
            StatusCode::CONFLICT,
            t.t("settings-relay-finish-waiting"),
        ),
        Ok(Err(e)) => error_page(
            &t,
            Some(&desk),
            StatusCode::BAD_GATEWAY,
            t.t1("settings-relay-finish-failed", "error", e),
        ),
        Err(_) => error_page(
            &t,
            Some(&desk),
            StatusCode::GATEWAY_TIMEOUT,
            t.t("settings-relay-timeout"),
        ),
    }
}

/// The lock-time form.
#[derive(Deserialize)]
struct LockForm {
    minutes: u64,
}

async fn set_lock(
    State(shared): State<Shared>,
    Unlocked(_): Unlocked,
    Form(f): Form<LockForm>,
) -> Response {
    shared.set_lock_after(Duration::from_secs(f.minutes.clamp(1, 24 * 60) * 60));
    see_other("/settings", "settings-saved")
}

/// The duress passphrase form.
#[derive(Deserialize)]
struct DuressForm {
    duress: String,
    duress2: String,
}

impl Drop for DuressForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.duress);
        zeroize::Zeroize::zeroize(&mut self.duress2);
    }
}

async fn set_duress(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Form(f): Form<DuressForm>,
) -> Response {
    if f.duress.is_empty() || f.duress != f.duress2 {
        return error_page(
            &t,
            Some(&desk),
            StatusCode::UNPROCESSABLE_ENTITY,
            t.t("create-mismatch"),
        );
    }
    let pass = Passphrase::from(f.duress.as_str());
    let client = desk.client.clone();
    let done = tokio::task::spawn_blocking(move || {
        tokio::runtime::Handle::current()
            .block_on(client.with_engine(move |e, _, _| e.store_mut().set_duress_passphrase(&pass)))
    })
    .await;
    match done {
        Ok(Ok(Ok(()))) => see_other("/settings", "settings-saved"),
        Ok(Ok(Err(e))) => failed(&t, &desk, e),
        Ok(Err(e)) => failed(&t, &desk, e),
        Err(e) => failed(&t, &desk, e),
    }
}

/// The panic wipe's confirmation.
#[derive(Deserialize)]
struct WipeForm {
    confirm: String,
}

async fn wipe(
    State(shared): State<Shared>,
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Form(f): Form<WipeForm>,
) -> Response {
    if f.confirm.trim() != t.t("wipe-word") {
        return error_page(
            &t,
            Some(&desk),
            StatusCode::UNPROCESSABLE_ENTITY,
            t.t("wipe-not-confirmed"),
        );
    }
    let result = desk.client.panic_wipe().await;
    shared.lock().await;
    match result {
        Ok(()) => see_other("/create", "wiped"),
        Err(e) => failed(&t, &desk, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_sees_only_the_steps_its_state_allows() {
        let r = |s: ReferralState| allowed(Side::Receiver, &s, Role::Caseworker);
        let s = |st: ReferralState| allowed(Side::Sender, &st, Role::Caseworker);
        assert_eq!(
            r(ReferralState::Acknowledged),
            ["accept", "decline", "request_info"]
        );
        assert_eq!(r(ReferralState::InfoRequested), ["accept", "decline"]);
        assert_eq!(r(ReferralState::Accepted), ["start_service", "complete"]);
        assert_eq!(r(ReferralState::InService), ["complete"]);
        assert!(r(ReferralState::Withdrawn).is_empty());
        assert!(r(ReferralState::Completed(Outcome::Successful)).is_empty());
        assert_eq!(
            s(ReferralState::InfoRequested),
            ["provide_info", "withdraw"]
        );
        assert_eq!(s(ReferralState::Sent), ["withdraw"]);
        assert!(s(ReferralState::Expired).is_empty());
        assert!(s(ReferralState::ConsentRevoked).is_empty());
    }

    #[test]
    fn an_ambassador_takes_no_referral_steps() {
        for side in [Side::Sender, Side::Receiver] {
            assert!(allowed(side, &ReferralState::Acknowledged, Role::Ambassador).is_empty());
            assert!(allowed(side, &ReferralState::InfoRequested, Role::Ambassador).is_empty());
        }
    }

    /// A synthetic row: `n` orders creation, every other one received, every third held by
    /// a colleague.
    fn sample(n: usize) -> Row {
        let sender = n.is_multiple_of(2);
        Row {
            id: format!("{n:032x}"),
            state: if n.is_multiple_of(5) {
                "ACCEPTED"
            } else {
                "SENT"
            }
            .into(),
            side_sender: sender,
            counterpart: if n % 4 < 2 {
                "11111 22222"
            } else {
                "33333 44444"
            }
            .into(),
            priority: String::new(),
            respond_by: String::new(),
            services: if n.is_multiple_of(7) {
                "legal advice"
            } else {
                "shelter"
            }
            .into(),
            case_ref: format!("Case-{n:04}"),
            released: true,
            mine: sender && !n.is_multiple_of(3),
            holder: String::new(),
            created_at: 1_000 + n as u64,
            respond_by_at: if n.is_multiple_of(10) {
                0
            } else {
                5_000 - n as u64
            },
            urgency: (n % 3) as u8,
        }
    }

    fn query(q: &str) -> ListQuery {
        let mut f = ListQuery::default();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap();
            let v = v.to_owned();
            match k {
                "state" => f.state = v,
                "side" => f.side = v,
                "q" => f.q = v,
                "whose" => f.whose = v,
                "sort" => f.sort = v,
                "page" => f.page = v.parse().ok(),
                _ => panic!("{k}"),
            }
        }
        f
    }

    fn ids(l: &Listing) -> Vec<usize> {
        l.rows
            .iter()
            .map(|r| usize::from_str_radix(&r.id, 16).unwrap())
            .collect()
    }

    fn list(q: &str, n: usize) -> Listing {
        select((0..n).map(sample).collect(), &query(q))
    }

    #[test]
    fn the_list_pages_newest_first_with_counts_and_links() {
        let l = list("", 250);
        assert_eq!((l.total, l.matching, l.page, l.pages), (250, 250, 1, 3));
        assert_eq!((l.first, l.last), (1, 100));
        assert_eq!(ids(&l), (150..250).rev().collect::<Vec<_>>());
        assert_eq!(l.prev, None);
        assert_eq!(l.next.as_deref(), Some("/referrals?page=2"));
        let l = list("page=3", 250);
        assert_eq!((l.first, l.last), (201, 250));
        assert_eq!(ids(&l), (0..50).rev().collect::<Vec<_>>());
        assert_eq!(l.prev.as_deref(), Some("/referrals?page=2"));
        assert_eq!(l.next, None);
        // Out of range: the nearest page.
        assert_eq!(list("page=0", 250).page, 1);
        assert_eq!(list("page=40", 250).page, 3);
        // Exactly one page, and none at all.
        let l = list("", 100);
        assert_eq!(
            (l.pages, l.prev.is_none(), l.next.is_none()),
            (1, true, true)
        );
        let l = list("", 0);
        assert_eq!((l.first, l.last, l.pages, l.rows.len()), (0, 0, 1, 0));
    }

    #[test]
    fn every_filter_applies_and_the_links_keep_them() {
        let all: Vec<Row> = (0..300).map(sample).collect();
        let want = |p: &dyn Fn(&Row) -> bool| all.iter().filter(|r| p(r)).count();
        let l = list("state=ACCEPTED", 300);
        assert_eq!(l.matching, want(&|r| r.state == "ACCEPTED"));
        assert!(l.rows.iter().all(|r| r.state == "ACCEPTED"));
        assert_eq!(list("side=sent", 300).matching, want(&|r| r.side_sender));
        assert_eq!(
            list("side=received", 300).matching,
            want(&|r| !r.side_sender)
        );
        assert_eq!(list("whose=mine", 300).matching, want(&|r| r.mine));
        assert_eq!(list("whose=org", 300).matching, 300);
        assert_eq!(
            list("q=LEGAL", 300).matching,
            want(&|r| r.services == "legal advice")
        );
        assert_eq!(list("q=case-012", 300).matching, 10);
        assert_eq!(
            list("q=33333", 300).matching,
            want(&|r| r.counterpart.starts_with("33333"))
        );
        let l = list("side=sent&whose=mine&state=SENT&q=shelter", 1000);
        let expected = (0..1000)
            .map(sample)
            .filter(|r| r.side_sender && r.mine && r.state == "SENT" && r.services == "shelter")
            .count();
        assert_eq!(l.matching, expected);
        assert!(expected > PAGE_ROWS);
        assert_eq!(
            l.next.as_deref(),
            Some("/referrals?state=SENT&side=sent&whose=mine&q=shelter&page=2")
        );
        let f = ListQuery {
            q: "a b&c/é".into(),
            sort: "urgent".into(),
            page: Some(2),
            ..ListQuery::default()
        };
        assert_eq!(select(all, &f).matching, 0);
        assert_eq!(
            f.href(2),
            "/referrals?q=a+b%26c%2F%C3%A9&sort=urgent&page=2"
        );
    }

    #[test]
    fn most_urgent_first_orders_by_priority_then_respond_by() {
        let l = list("sort=urgent", 60);
        let keys: Vec<(u8, u64)> = l
            .rows
            .iter()
            .map(|r| {
                (
                    r.urgency,
                    if r.respond_by_at == 0 {
                        u64::MAX
                    } else {
                        r.respond_by_at
                    },
                )
            })
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(l.rows[0].urgency, 0);
        assert_eq!(l.rows.last().unwrap().urgency, 2);
        // Unknown respond-by comes last within its priority.
        let zeros: Vec<usize> = ids(&l)
            .into_iter()
            .filter(|n| n.is_multiple_of(3))
            .collect();
        assert_eq!(
            zeros
                .iter()
                .rev()
                .take_while(|n| n.is_multiple_of(10))
                .count(),
            2
        );
    }
}
