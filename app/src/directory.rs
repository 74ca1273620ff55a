//! The organisation directory: search the relay's members-only directory, import a found
//! organisation's intake devices after comparing its fingerprint with the organisation, and
//! (admin devices only) publish this organisation's profile, as `handover org directory` and
//! `handover org publish` do. Not for ambassadors: the routes answer "no such page" for them.
//!
//! The relay admits organisations by their root key (`--admit-org`); a device of another
//! organisation gets `UNAUTHORISED`, which is shown in words with the key to give the relay
//! operator, never as a raw error.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use handover_core::client::ClientError;
use handover_core::engine::{EngineError, ProfileDetails, VerifiedProfile};
use handover_core::identity::Role;
use handover_core::net::NetError;
use handover_proto::e2e::v1 as wire;
use handover_proto::limits::{MAX_REPEATED, MAX_SHORT_STRING_LEN, MAX_TEXT_LEN};
use handover_proto::relay::v1 as relay;

use crate::cases::hide;
use crate::compose::{Choice, Errors, Values, choices};
use crate::i18n::Tr;
use crate::pages::{Lang, NETWORK_WAIT, NoticeQuery, Unlocked, chrome, notice_text, see_other};
use crate::state::{Desk, Live, Shared};
use crate::views::{Chrome, page};

/// The routes of this module.
pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route("/directory", get(search))
        .route("/directory/import", post(import))
        .route("/directory/publish", get(publish_page).post(publish))
}

// ---------------------------------------------------------------------------------------------
// Talking to the relay.

/// Why the directory could not be used.
enum Failure {
    /// The relay has not admitted this organisation to its directory (`UNAUTHORISED`).
    NotAdmitted,
    /// The relay did not answer within [`NETWORK_WAIT`].
    NoAnswer,
    /// Anything else the client reported.
    Client(ClientError),
}

/// Runs a directory request with the page's time limit and sorts out the relay's refusal.
async fn on_relay<T>(request: impl Future<Output = Result<T, ClientError>>) -> Result<T, Failure> {
    match tokio::time::timeout(NETWORK_WAIT, request).await {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(ClientError::Net(NetError::Relay {
            code: relay::ErrorCode::Unauthorised,
            ..
        }))) => Err(Failure::NotAdmitted),
        Ok(Err(e)) => Err(Failure::Client(e)),
        Err(_) => Err(Failure::NoAnswer),
    }
}

/// What a page shows for a failure: the text on top, and for a relay that has not admitted
/// this organisation, the organisation key to give its operator.
struct Shown {
    error: String,
    not_admitted: Option<String>,
    status: StatusCode,
}

async fn shown(t: &Tr, desk: &Desk, failure: Failure) -> Shown {
    match failure {
        Failure::NotAdmitted => Shown {
            error: t.t("dir-not-admitted"),
            not_admitted: Some(own_root(desk).await.map(hex::encode).unwrap_or_default()),
            status: StatusCode::FORBIDDEN,
        },
        Failure::NoAnswer => Shown {
            error: t.t1("dir-no-answer", "seconds", NETWORK_WAIT.as_secs()),
            not_admitted: None,
            status: StatusCode::GATEWAY_TIMEOUT,
        },
        Failure::Client(e) => Shown {
            error: t.t1("dir-failed", "error", e),
            not_admitted: None,
            status: StatusCode::BAD_GATEWAY,
        },
    }
}

async fn own_root(desk: &Desk) -> Option<[u8; 32]> {
    desk.client
        .with_engine(|e, _, _| e.org_root())
        .await
        .ok()
        .and_then(Result::ok)
}

/// This organisation's root and the (organisation, device) pairs of every contact.
async fn known(desk: &Desk) -> (Option<[u8; 32]>, BTreeSet<([u8; 32], [u8; 16])>) {
    let found = desk
        .client
        .with_engine(|e, _, _| {
            let own = e.org_root()?;
            let contacts = e
                .contacts()?
                .iter()
                .map(|c| (c.org_root, c.device_id.0))
                .collect::<BTreeSet<_>>();
            Ok::<_, EngineError>((own, contacts))
        })
        .await
        .ok()
        .and_then(Result::ok);
    match found {
        Some((own, contacts)) => (Some(own), contacts),
        None => (None, BTreeSet::new()),
    }
}

// ---------------------------------------------------------------------------------------------
// Results.

/// One organisation found in the directory.
struct Entry {
    root: String,
    name: String,
    services: String,
    /// The services as published (word-list names), for the publish form.
    service_names: Vec<String>,
    languages: String,
    regions: String,
    description: String,
    fingerprint: String,
    intake: usize,
    issued: String,
    /// This organisation's own entry.
    own: bool,
    /// This device trusts the organisation (its fingerprint was compared before).
    trusted: bool,
    /// Every intake device of the entry is already a contact.
    imported: bool,
}

fn words(items: &[String]) -> String {
    items
        .iter()
        .map(|s| s.replace('_', " "))
        .collect::<Vec<_>>()
        .join(", ")
}

fn entry(
    verified: &VerifiedProfile,
    own: Option<[u8; 32]>,
    contacts: &BTreeSet<([u8; 32], [u8; 16])>,
) -> Option<Entry> {
    let p = &verified.profile;
    let root: [u8; 32] = p.org_root_key.as_slice().try_into().ok()?;
    let imported = verified.trusted
        && !p.intake.is_empty()
        && p.intake.iter().all(|a| {
            <[u8; 16]>::try_from(a.device_id.as_slice())
                .is_ok_and(|d| contacts.contains(&(root, d)))
        });
    Some(Entry {
        root: hex::encode(root),
        name: p.name.clone(),
        services: words(&p.services),
        service_names: p.services.clone(),
        languages: p.languages.join(", "),
        regions: p.regions.join(", "),
        description: p.description.clone(),
        fingerprint: verified.fingerprint.clone(),
        intake: p.intake.len(),
        issued: crate::views::utc(p.issued_at),
        own: own == Some(root),
        trusted: verified.trusted,
        imported,
    })
}

/// The service word list (the referral's `Service` names) as choices.
fn service_choices() -> Vec<Choice> {
    choices::<wire::Service>(|e| e.as_str_name(), "SERVICE_")
}

/// Whether `tag` has the shape of a BCP 47 language tag: a language of 2 to 8 letters, then
/// subtags of 1 to 8 letters or digits (`en`, `ar`, `uk-UA`, `es-419`).
fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let language = parts.next().unwrap_or("");
    (2..=8).contains(&language.len())
        && language.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

// ---------------------------------------------------------------------------------------------
// Search.

/// The directory screen: search form, results, and the relay's refusal if any.
#[derive(Template)]
#[template(path = "directory.html")]
struct DirectoryPage {
    p: Chrome,
    f: Values,
    e: Errors,
    services: Vec<Choice>,
    admin: bool,
    searched: bool,
    results: Vec<Entry>,
    not_admitted: Option<String>,
}

/// Checks the search fields; the query if they are right.
fn search_query(t: &Tr, f: &Values, e: &mut Errors) -> relay::DirectoryQuery {
    let name = f.v("name").trim();
    if name.len() > MAX_SHORT_STRING_LEN {
        e.add("name", t.t1("field-too-long", "max", MAX_SHORT_STRING_LEN));
    }
    let service = f.v("service").trim();
    if !service.is_empty() && !service_choices().iter().any(|(v, _)| v == service) {
        e.add("service", t.t("field-choose"));
    }
    let language = f.v("language").trim();
    if !language.is_empty() && !is_language_tag(language) {
        e.add("language", t.t("dir-bad-language"));
    }
    let region = f.v("region").trim();
    if region.len() > MAX_SHORT_STRING_LEN {
        e.add(
            "region",
            t.t1("field-too-long", "max", MAX_SHORT_STRING_LEN),
        );
    }
    let one = |s: &str| {
        if s.is_empty() {
            Vec::new()
        } else {
            vec![s.to_owned()]
        }
    };
    relay::DirectoryQuery {
        services: one(service),
        languages: one(language),
        regions: one(region),
        name_contains: name.to_owned(),
        limit: 0,
    }
}

async fn search(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    if !desk.handles_cases() {
        return hide(&t, &desk);
    }
    let f = Values(pairs);
    let mut p = chrome(&t, &desk, "directory-title", "directory");
    p.notice = notice_text(
        &t,
        &NoticeQuery {
            notice: Some(f.v("notice").to_owned()).filter(|n| !n.is_empty()),
        },
    );
    let searched = f.v("search") == "1";
    let mut e = Errors::default();
    let query = search_query(&t, &f, &mut e);
    let mut status = StatusCode::OK;
    let mut results = Vec::new();
    let mut not_admitted = None;
    if searched && !e.is_empty() {
        p.error = Some(t.t("form-has-errors"));
        status = StatusCode::UNPROCESSABLE_ENTITY;
    } else if searched {
        match on_relay(desk.client.search_directory(query)).await {
            Ok(found) => {
                let (own, contacts) = known(&desk).await;
                results = found
                    .iter()
                    .filter_map(|(_, v)| entry(v, own, &contacts))
                    .collect();
            }
            Err(failure) => {
                let s = shown(&t, &desk, failure).await;
                p.error = Some(s.error);
                not_admitted = s.not_admitted;
                status = s.status;
            }
        }
    }
    let form = DirectoryPage {
        p,
        f,
        e,
        services: service_choices(),
        admin: matches!(desk.role, Role::Admin),
        searched,
        results,
        not_admitted,
    };
    (status, page(&form)).into_response()
}

// ---------------------------------------------------------------------------------------------
// Import.

/// The fingerprint step before importing an organisation found in the directory.
#[derive(Template)]
#[template(path = "directory_import.html")]
struct ImportPage {
    p: Chrome,
    e: Errors,
    entry: Entry,
    not_admitted: Option<String>,
}

/// The import form: the organisation (root and name, to find it again) and, at the second
/// step, the fingerprint as the organisation read it out.
#[derive(serde::Deserialize)]
struct ImportForm {
    root: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    fingerprint: Option<String>,
}

/// An error page for the import step (the relay's refusal in words).
async fn import_failed(t: &Tr, desk: &Desk, failure: Failure) -> Response {
    let s = shown(t, desk, failure).await;
    let mut p = chrome(t, desk, "directory-title", "directory");
    p.error = Some(s.error);
    let form = DirectoryPage {
        p,
        f: Values::default(),
        e: Errors::default(),
        services: service_choices(),
        admin: matches!(desk.role, Role::Admin),
        searched: false,
        results: Vec::new(),
        not_admitted: s.not_admitted,
    };
    (s.status, page(&form)).into_response()
}

async fn import(
    State(shared): State<Shared>,
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Form(form): Form<ImportForm>,
) -> Response {
    if !desk.handles_cases() {
        return hide(&t, &desk);
    }
    let root: Option<[u8; 32]> = hex::decode(form.root.trim())
        .ok()
        .and_then(|b| b.try_into().ok());
    let Some(root) = root else {
        return hide(&t, &desk);
    };
    // Fetch the entry again: what is imported is what the relay holds now, checked again.
    let query = relay::DirectoryQuery {
        name_contains: form.name.trim().to_owned(),
        ..Default::default()
    };
    let found = match on_relay(desk.client.search_directory(query)).await {
        Ok(found) => found,
        Err(failure) => return import_failed(&t, &desk, failure).await,
    };
    let Some((signed, verified)) = found
        .into_iter()
        .find(|(_, v)| v.profile.org_root_key.as_slice() == root.as_slice())
    else {
        return crate::pages::error_page(&t, Some(&desk), StatusCode::NOT_FOUND, t.t("dir-gone"));
    };
    let (own, contacts) = known(&desk).await;
    let Some(shown_entry) = entry(&verified, own, &contacts) else {
        return hide(&t, &desk);
    };
    if shown_entry.own {
        return hide(&t, &desk);
    }
    let imported = if verified.trusted {
        // Trusted after an earlier comparison: import (again) without asking.
        desk.client.import_profile(signed).await
    } else {
        match form.fingerprint.as_deref().map(str::trim) {
            None => {
                let p = chrome(&t, &desk, "dir-import-title", "directory");
                return page(&ImportPage {
                    p,
                    e: Errors::default(),
                    entry: shown_entry,
                    not_admitted: None,
                });
            }
            Some(fp) => {
                let mut e = Errors::default();
                if fp.is_empty() {
                    e.add("fingerprint", t.t("field-required"));
                } else {
                    match desk
                        .client
                        .trust_and_import_profile(signed, fp.to_owned())
                        .await
                    {
                        Err(ClientError::Engine(EngineError::FingerprintMismatch)) => {
                            e.add("fingerprint", t.t("dir-mismatch"));
                        }
                        other => {
                            return imported_answer(&shared, &t, &desk, root, other).await;
                        }
                    }
                }
                let mut p = chrome(&t, &desk, "dir-import-title", "directory");
                p.error = Some(t.t("form-has-errors"));
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    page(&ImportPage {
                        p,
                        e,
                        entry: shown_entry,
                        not_admitted: None,
                    }),
                )
                    .into_response();
            }
        }
    };
    imported_answer(&shared, &t, &desk, root, imported).await
}

/// After an import: each intake device is sent this device's contact card (so it can reply),
/// then the contacts page says how it went.
async fn imported_answer(
    shared: &Shared,
    t: &Tr,
    desk: &Desk,
    root: [u8; 32],
    imported: Result<Vec<handover_core::engine::PeerId>, ClientError>,
) -> Response {
    let devices = match imported {
        Ok(devices) => devices,
        Err(e) => {
            return crate::pages::error_page(
                t,
                Some(desk),
                StatusCode::CONFLICT,
                t.t1("dir-import-failed", "error", e),
            );
        }
    };
    let mut carded = 0;
    for d in &devices {
        if let Ok(Ok(())) =
            tokio::time::timeout(NETWORK_WAIT, desk.client.send_contact_card(*d)).await
        {
            carded += 1;
        }
    }
    // Messages this organisation sent before it was trusted wait at the relay: fetch them.
    let waiting = {
        let mut list = desk.untrusted.lock().unwrap_or_else(|p| p.into_inner());
        let before = list.len();
        list.retain(|r| r != &root);
        list.len() != before
    };
    if waiting {
        let client = desk.client.clone();
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(NETWORK_WAIT, client.sync()).await;
            shared.notify(Live::Contacts);
        });
    }
    shared.notify(Live::Contacts);
    if carded == devices.len() {
        see_other("/contacts", "org-imported")
    } else {
        see_other("/contacts", "org-imported-partly")
    }
}

// ---------------------------------------------------------------------------------------------
// Publish.

/// The publish screen (admin devices).
#[derive(Template)]
#[template(path = "directory_publish.html")]
struct PublishPage {
    p: Chrome,
    f: Values,
    e: Errors,
    services: Vec<Choice>,
    /// What the relay holds for this organisation now (read back from the directory).
    published: Option<Entry>,
    /// The directory was read (so `published: None` means "not published").
    read: bool,
    not_admitted: Option<String>,
}

/// This organisation's entry in the directory, looked up with `name` as the name filter
/// (empty: every entry the relay returns in one answer).
async fn own_entry(desk: &Desk, name: &str) -> Result<Option<Entry>, Failure> {
    let query = relay::DirectoryQuery {
        name_contains: name.to_owned(),
        ..Default::default()
    };
    let found = on_relay(desk.client.search_directory(query)).await?;
    let (own, contacts) = known(desk).await;
    Ok(found
        .iter()
        .filter_map(|(_, v)| entry(v, own, &contacts))
        .find(|e| e.own))
}

/// The form's values from a published entry.
fn values_of(entry: &Entry) -> Values {
    let mut pairs = vec![
        ("name".to_owned(), entry.name.clone()),
        ("languages".to_owned(), entry.languages.clone()),
        ("regions".to_owned(), entry.regions.clone()),
        ("description".to_owned(), entry.description.clone()),
    ];
    for s in &entry.service_names {
        pairs.push(("services".to_owned(), s.to_ascii_lowercase()));
    }
    Values(pairs)
}

async fn publish_page(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    if !matches!(desk.role, Role::Admin) {
        return hide(&t, &desk);
    }
    let q = Values(pairs);
    let mut p = chrome(&t, &desk, "dir-publish-title", "directory");
    p.notice = notice_text(
        &t,
        &NoticeQuery {
            notice: Some(q.v("notice").to_owned()).filter(|n| !n.is_empty()),
        },
    );
    let mut status = StatusCode::OK;
    let (published, read, not_admitted) = match own_entry(&desk, q.v("name").trim()).await {
        Ok(entry) => (entry, true, None),
        Err(failure) => {
            let s = shown(&t, &desk, failure).await;
            p.error = Some(s.error);
            status = s.status;
            (None, false, s.not_admitted)
        }
    };
    let f = published.as_ref().map(values_of).unwrap_or_default();
    let form = PublishPage {
        p,
        f,
        e: Errors::default(),
        services: service_choices(),
        published,
        read,
        not_admitted,
    };
    (status, page(&form)).into_response()
}

/// Checks the publish form; the profile details if every field is right.
fn details(t: &Tr, f: &Values, e: &mut Errors) -> ProfileDetails {
    let name = f.v("name").trim().to_owned();
    if name.is_empty() {
        e.add("name", t.t("field-required"));
    } else if name.len() > MAX_SHORT_STRING_LEN {
        e.add("name", t.t1("field-too-long", "max", MAX_SHORT_STRING_LEN));
    }
    let known = service_choices();
    let services = f.all("services");
    if services.iter().any(|s| !known.iter().any(|(v, _)| v == s)) {
        e.add("services", t.t("field-choose"));
    }
    let languages = f.list("languages");
    if languages.iter().any(|l| !is_language_tag(l)) {
        e.add("languages", t.t("dir-bad-language"));
    } else if languages.len() > MAX_REPEATED {
        e.add("languages", t.t1("field-too-many", "max", MAX_REPEATED));
    }
    let regions = f.list("regions");
    if regions.iter().any(|r| r.len() > MAX_SHORT_STRING_LEN) {
        e.add(
            "regions",
            t.t1("field-too-long", "max", MAX_SHORT_STRING_LEN),
        );
    } else if regions.len() > MAX_REPEATED {
        e.add("regions", t.t1("field-too-many", "max", MAX_REPEATED));
    }
    let description = f.v("description").trim().to_owned();
    if description.len() > MAX_TEXT_LEN {
        e.add("description", t.t1("field-too-long", "max", MAX_TEXT_LEN));
    }
    ProfileDetails {
        name,
        services,
        languages,
        regions,
        description,
    }
}

async fn publish(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    if !matches!(desk.role, Role::Admin) {
        return hide(&t, &desk);
    }
    let f = Values(pairs);
    let mut e = Errors::default();
    let details = details(&t, &f, &mut e);
    if !e.is_empty() {
        let mut p = chrome(&t, &desk, "dir-publish-title", "directory");
        p.error = Some(t.t("form-has-errors"));
        // Still show what is published (nothing was sent).
        let (published, read, not_admitted) = match own_entry(&desk, "").await {
            Ok(entry) => (entry, true, None),
            Err(failure) => (None, false, shown(&t, &desk, failure).await.not_admitted),
        };
        let form = PublishPage {
            p,
            f,
            e,
            services: service_choices(),
            published,
            read,
            not_admitted,
        };
        return (StatusCode::UNPROCESSABLE_ENTITY, page(&form)).into_response();
    }
    let name = details.name.clone();
    match on_relay(desk.client.publish_profile(details)).await {
        Ok(()) => see_other(
            &format!("/directory/publish?name={}", query_escape(&name)),
            "directory-published",
        ),
        Err(Failure::Client(ClientError::Engine(EngineError::NotAdmin))) => hide(&t, &desk),
        Err(failure) => {
            let s = shown(&t, &desk, failure).await;
            let mut p = chrome(&t, &desk, "dir-publish-title", "directory");
            p.error = Some(s.error);
            let form = PublishPage {
                p,
                f,
                e,
                services: service_choices(),
                published: None,
                read: false,
                not_admitted: s.not_admitted,
            };
            (s.status, page(&form)).into_response()
        }
    }
}

/// Percent-encodes `text` for a URL query value (everything but unreserved characters).
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_tags() {
        for good in ["en", "ar", "uk-UA", "es-419", "zh-Hant-TW"] {
            assert!(is_language_tag(good), "{good}");
        }
        for bad in [
            "",
            "e",
            "english language",
            "en_GB",
            "en-",
            "-en",
            "1a",
            "fr-toolongsubtag",
        ] {
            assert!(!is_language_tag(bad), "{bad}");
        }
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(
            query_escape("Harbour Women's Centre"),
            "Harbour%20Women%27s%20Centre"
        );
        assert_eq!(query_escape("a&b=c"), "a%26b%3Dc");
        assert_eq!(query_escape("é"), "%C3%A9");
    }
}
