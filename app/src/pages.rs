//! The routes: unlock / create, home, chats, contacts, lock, the live event stream and the
//! embedded assets. Every route sits behind [`security::guard`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream};
use handover_core::client::{Client, ClientError, RelayAccess};
use handover_core::engine::{
    self, Direction, EngineError, IdentitySetup, PeerId, RelayInfo, org_fingerprint,
};
use handover_core::identity::{DeviceId, DeviceKeys, Role};
use handover_core::store::{Credential, KdfParams, Passphrase, StoreError};
use handover_proto::e2e::v1::content::Body;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::i18n::{self, Tr};
use crate::security;
use crate::state::{Desk, Live, Shared};
use crate::views::{self, Chrome, ContactRow, page};

/// Longest a page waits for the relay before answering (what was queued stays queued).
pub(crate) const NETWORK_WAIT: Duration = Duration::from_secs(20);

/// The router with every route and the guard.
pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/launch", get(|| async { Redirect::to("/") }))
        .route("/unlock", get(unlock_page).post(unlock))
        .route("/create", get(create_page).post(create))
        .route("/lock", post(lock))
        .route("/language", post(choose_language))
        .route("/events", get(events))
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
        .route("/chats", get(chats))
        .route("/chats/{peer}", get(chat).post(send))
        .route("/contacts", get(contacts))
        .route("/contacts/invite", post(invite))
        .route("/contacts/accept", post(accept))
        .route("/contacts/trust", post(trust))
        .route("/contacts/{peer}/verify", get(verify_page).post(verify))
        .route("/contacts/{peer}/unverify", post(unverify))
        .merge(crate::compose::router())
        .merge(crate::cases::router())
        .merge(crate::directory::router())
        .merge(crate::org::router())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            security::guard,
        ))
        .with_state(shared)
}

// ---------------------------------------------------------------------------------------------
// Extractors and helpers.

/// The page's translator: the person's language choice (cookie), else `Accept-Language`.
pub(crate) struct Lang(pub(crate) Tr);

impl FromRequestParts<Shared> for Lang {
    type Rejection = Infallible;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Infallible> {
        let accept = parts
            .headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok());
        let chosen = chosen_language(&parts.headers);
        Ok(Lang(state.i18n.choose(chosen, accept)))
    }
}

/// The value of the language-choice cookie, if the request carries one.
fn chosen_language(headers: &header::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(name, value)| (name == i18n::LANG_COOKIE).then_some(value))
}

/// The unlocked desk; a locked app redirects every page to the unlock screen.
pub(crate) struct Unlocked(pub(crate) Desk);

impl FromRequestParts<Shared> for Unlocked {
    type Rejection = Redirect;
    async fn from_request_parts(_: &mut Parts, state: &Shared) -> Result<Self, Redirect> {
        state
            .desk()
            .await
            .map(Unlocked)
            .ok_or_else(|| Redirect::to("/unlock"))
    }
}

/// The chrome of an unlocked page.
pub(crate) fn chrome(t: &Tr, desk: &Desk, title: &str, here: &'static str) -> Chrome {
    Chrome {
        title: t.t(title),
        t: t.clone(),
        unlocked: true,
        cases: desk.handles_cases(),
        name: desk.name.clone(),
        online: *desk.online.lock().unwrap_or_else(|p| p.into_inner()),
        notice: None,
        error: None,
        here,
    }
}

pub(crate) fn locked_chrome(t: &Tr, title: &str) -> Chrome {
    Chrome {
        title: t.t(title),
        t: t.clone(),
        unlocked: false,
        cases: false,
        name: String::new(),
        online: false,
        notice: None,
        error: None,
        here: "",
    }
}

/// An error page with status `status` and the message `text`.
pub(crate) fn error_page(
    t: &Tr,
    desk: Option<&Desk>,
    status: StatusCode,
    text: String,
) -> Response {
    let mut p = match desk {
        Some(d) => chrome(t, d, "error-generic", ""),
        None => locked_chrome(t, "error-generic"),
    };
    p.title = t.t("nav-home");
    p.error = Some(text);
    (status, page(&views::ErrorPage { p })).into_response()
}

/// A peer id in a URL: organisation root (64 hex) then device id (32 hex).
pub(crate) fn peer_param(peer: &PeerId) -> String {
    format!(
        "{}{}",
        hex::encode(peer.org_root),
        hex::encode(peer.device_id.0)
    )
}

pub(crate) fn parse_peer(text: &str) -> Option<PeerId> {
    let bytes = hex::decode(text).ok()?;
    if bytes.len() != 48 {
        return None;
    }
    let org_root: [u8; 32] = bytes[..32].try_into().ok()?;
    let device: [u8; 16] = bytes[32..].try_into().ok()?;
    Some(PeerId {
        org_root,
        device_id: DeviceId(device),
    })
}

pub(crate) fn role_name(t: &Tr, role: Option<Role>) -> String {
    t.t(match role {
        Some(Role::Admin) => "role-admin",
        Some(Role::Caseworker) => "role-caseworker",
        Some(Role::Ambassador) => "role-ambassador",
        _ => "role-unknown",
    })
}

/// The contacts as rows, revoked devices marked.
pub(crate) async fn contact_rows(t: &Tr, client: &Client) -> Result<Vec<ContactRow>, ClientError> {
    let rows = client
        .with_engine(|e, _, _| {
            let mut out = Vec::new();
            for c in e.contacts()? {
                let revoked = e
                    .org_trust(&c.org_root)
                    .is_ok_and(|trust| trust.is_revoked(&c.device_id));
                out.push((c, revoked));
            }
            Ok::<_, EngineError>(out)
        })
        .await??;
    Ok(rows
        .into_iter()
        .map(|(c, revoked)| ContactRow {
            id: peer_param(&c.peer()),
            name: if c.display_name.is_empty() {
                hex::encode(&c.device_id.0[..4])
            } else {
                c.display_name.clone()
            },
            org: org_fingerprint(&c.org_root),
            role: role_name(t, c.role),
            verified: c.verified,
            changed: c.identity_changed,
            revoked,
            has_address: c.has_address,
        })
        .collect())
}

async fn find_row(t: &Tr, client: &Client, peer: &str) -> Option<(PeerId, ContactRow)> {
    let id = parse_peer(peer)?;
    let rows = contact_rows(t, client).await.ok()?;
    let key = peer_param(&id);
    rows.into_iter().find(|r| r.id == key).map(|r| (id, r))
}

fn not_found_page(t: &Tr, desk: Option<&Desk>) -> Response {
    error_page(t, desk, StatusCode::NOT_FOUND, t.t("error-not-found"))
}

async fn not_found(State(shared): State<Shared>, Lang(t): Lang) -> Response {
    not_found_page(&t, shared.desk().await.as_ref())
}

/// A redirect after a POST that shows `notice` on the next page (through the query string;
/// notices name no case content).
pub(crate) fn see_other(to: &str, notice: &str) -> Response {
    let sep = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{sep}notice={notice}")).into_response()
}

/// Query of pages that show a notice after a redirect.
#[derive(Deserialize, Default)]
pub(crate) struct NoticeQuery {
    #[serde(default)]
    pub(crate) notice: Option<String>,
}

/// The translated notice for a notice id from the query (only known ids are shown).
pub(crate) fn notice_text(t: &Tr, q: &NoticeQuery) -> Option<String> {
    const KNOWN: &[&str] = &[
        "chat-sent",
        "chat-queued",
        "verify-done",
        "verify-cleared",
        "trust-done",
        "accept-done-short",
        "locked-notice",
        "referral-sent",
        "referral-acted",
        "consent-recorded",
        "consent-withdrawn",
        "settings-saved",
        "settings-relay-moved",
        "settings-relay-moved-later",
        "settings-relay-finished",
        "directory-published",
        "device-revoked",
        "org-imported",
        "org-imported-partly",
        "wiped",
        "consent-recorded-notice",
        "joined",
        "joined-unconnected",
    ];
    let id = q.notice.as_deref()?;
    KNOWN.contains(&id).then(|| t.t(id))
}

// ---------------------------------------------------------------------------------------------
// Assets and live events.

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/app.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/app.js"),
    )
        .into_response()
}

async fn events(
    State(shared): State<Shared>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = shared.subscribe();
    let stream = stream::unfold(receiver, |mut rx| async move {
        use tokio::sync::broadcast::error::RecvError;
        let live = match rx.recv().await {
            Ok(live) => live,
            // Missed events: a refresh shows everything.
            Err(RecvError::Lagged(_)) => Live::Message,
            Err(RecvError::Closed) => return None,
        };
        // Browsers drop events whose data is empty (the SSE parsing rules): send the name.
        Some((
            Ok(Event::default().event(live.name()).data(live.name())),
            rx,
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

// ---------------------------------------------------------------------------------------------
// Unlock, create, lock.

fn profile_exists(shared: &Shared) -> bool {
    shared.options.profile.join("header").exists()
}

async fn unlock_page(
    State(shared): State<Shared>,
    Lang(t): Lang,
    axum::extract::Query(q): axum::extract::Query<NoticeQuery>,
) -> Response {
    if shared.desk().await.is_some() {
        return Redirect::to("/").into_response();
    }
    if shared.joining().await.is_some() {
        return Redirect::to("/join/pending").into_response();
    }
    if !profile_exists(&shared) {
        return Redirect::to("/create").into_response();
    }
    let mut p = locked_chrome(&t, "unlock-title");
    p.notice = notice_text(&t, &q);
    page(&views::Unlock { p })
}

/// The unlock form.
#[derive(Deserialize)]
struct UnlockForm {
    passphrase: String,
}

impl Drop for UnlockForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.passphrase);
    }
}

async fn unlock(
    State(shared): State<Shared>,
    Lang(t): Lang,
    Form(form): Form<UnlockForm>,
) -> Response {
    let credential = Credential::from(Passphrase::from(form.passphrase.as_str()));
    let dir = shared.options.profile.clone();
    // Argon2 takes a second of CPU: off the async workers.
    let opened = tokio::task::spawn_blocking(move || {
        let handle = tokio::runtime::Handle::current();
        handle.block_on(Client::open(&dir, &credential))
    })
    .await;
    let client = match opened {
        Ok(Ok(c)) => c,
        Ok(Err(ClientError::Store(StoreError::WrongCredential))) => {
            let mut p = locked_chrome(&t, "unlock-title");
            p.error = Some(t.t("unlock-wrong"));
            return (StatusCode::UNAUTHORIZED, page(&views::Unlock { p })).into_response();
        }
        Ok(Err(ClientError::Store(StoreError::NotFound))) => {
            return Redirect::to("/create").into_response();
        }
        Ok(Err(e)) => {
            let mut p = locked_chrome(&t, "unlock-title");
            p.error = Some(t.t1("unlock-failed", "error", e));
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                page(&views::Unlock { p }),
            )
                .into_response();
        }
        Err(_) => {
            let mut p = locked_chrome(&t, "unlock-title");
            p.error = Some(t.t1("unlock-failed", "error", "interrupted"));
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                page(&views::Unlock { p }),
            )
                .into_response();
        }
    };
    if !client.has_profile().await {
        // A new device waiting for its enrolment code: back to that step.
        match client.pending_join().await {
            Ok(Some(_)) => {
                shared.set_joining(client).await;
                return Redirect::to("/join/pending").into_response();
            }
            Ok(None) => {}
            Err(e) => {
                let _ = client.shutdown().await;
                let mut p = locked_chrome(&t, "unlock-title");
                p.error = Some(t.t1("unlock-failed", "error", e));
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    page(&views::Unlock { p }),
                )
                    .into_response();
            }
        }
        // A new store, or the duress passphrase (which wiped the real profile and opened an
        // empty one, indistinguishable from a new store): offer to create a profile in it.
        let _ = client.shutdown().await;
        let p = locked_chrome(&t, "create-title");
        return page(&views::Create {
            p,
            relay: String::new(),
            pin: String::new(),
            name: String::new(),
            empty_store: true,
        });
    }
    match shared.unlock(client).await {
        Ok(()) => Redirect::to("/").into_response(),
        Err(e) => {
            let mut p = locked_chrome(&t, "unlock-title");
            p.error = Some(t.t1("unlock-failed", "error", e));
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                page(&views::Unlock { p }),
            )
                .into_response()
        }
    }
}

async fn create_page(
    State(shared): State<Shared>,
    Lang(t): Lang,
    axum::extract::Query(q): axum::extract::Query<NoticeQuery>,
) -> Response {
    if shared.desk().await.is_some() {
        return Redirect::to("/").into_response();
    }
    if shared.joining().await.is_some() {
        return Redirect::to("/join/pending").into_response();
    }
    let mut p = locked_chrome(&t, "create-title");
    p.notice = notice_text(&t, &q);
    page(&views::Create {
        p,
        relay: String::new(),
        pin: String::new(),
        name: String::new(),
        empty_store: false,
    })
}

/// The create-profile form.
#[derive(Deserialize)]
struct CreateForm {
    name: String,
    relay: String,
    pin: String,
    #[serde(default)]
    token: String,
    passphrase: String,
    passphrase2: String,
}

impl Drop for CreateForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.passphrase);
        zeroize::Zeroize::zeroize(&mut self.passphrase2);
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

async fn create(
    State(shared): State<Shared>,
    Lang(t): Lang,
    Form(form): Form<CreateForm>,
) -> Response {
    let again = |error: String| {
        let mut p = locked_chrome(&t, "create-title");
        p.error = Some(error);
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            page(&views::Create {
                p,
                relay: form.relay.clone(),
                pin: form.pin.clone(),
                name: form.name.clone(),
                empty_store: false,
            }),
        )
            .into_response()
    };
    if shared.desk().await.is_some() {
        return Redirect::to("/").into_response();
    }
    if form.name.trim().is_empty() || form.relay.trim().is_empty() || form.passphrase.is_empty() {
        return again(t.t("create-empty"));
    }
    if form.passphrase != form.passphrase2 {
        return again(t.t("create-mismatch"));
    }
    let pin: Option<[u8; 32]> = hex::decode(form.pin.trim())
        .ok()
        .and_then(|b| b.try_into().ok());
    let Some(pin) = pin else {
        return again(t.t("create-bad-pin"));
    };
    let kdf = if shared.options.fast_kdf {
        match KdfParams::new(1024, 1, 1) {
            Ok(k) => k,
            Err(e) => return again(t.t1("create-failed", "error", e)),
        }
    } else {
        KdfParams::default()
    };
    let credential = Credential::from(Passphrase::from(form.passphrase.as_str()));
    let token = Zeroizing::new(form.token.clone().into_bytes());
    let access = RelayAccess::new(
        RelayInfo {
            host_port: form.relay.trim().to_owned(),
            pin,
        },
        (!token.is_empty()).then(|| token.to_vec()),
    );
    let name = form.name.trim().to_owned();
    let dir = shared.options.profile.clone();
    let created = tokio::task::spawn_blocking(move || {
        let handle = tokio::runtime::Handle::current();
        handle.block_on(async move {
            let device = DeviceKeys::generate(&mut rand::rng());
            let identity = IdentitySetup::NewOrganisation {
                device_label: name.clone(),
            };
            tokio::time::timeout(
                NETWORK_WAIT,
                Client::create_with_access(&dir, &credential, kdf, access, device, identity, &name),
            )
            .await
        })
    })
    .await;
    let client = match created {
        Ok(Ok(Ok(c))) => c,
        Ok(Ok(Err(ClientError::Engine(EngineError::ProfileExists)))) => {
            return again(t.t("create-exists"));
        }
        Ok(Ok(Err(e))) => return again(t.t1("create-failed", "error", e)),
        Ok(Err(_)) => return again(t.t1("create-failed", "error", "the relay did not answer")),
        Err(_) => return again(t.t1("create-failed", "error", "interrupted")),
    };
    match shared.unlock(client).await {
        Ok(()) => Redirect::to("/").into_response(),
        Err(e) => again(t.t1("create-failed", "error", e)),
    }
}

/// The language-choice form (settings and unlock screens).
#[derive(Deserialize)]
struct LanguageForm {
    /// An embedded language tag.
    lang: String,
    /// The page to return to (a path on this server).
    #[serde(default)]
    back: String,
}

/// Only a path on this server (never `//host` or a scheme) is a place to return to.
fn local_path(back: &str) -> &str {
    let local = back.starts_with('/')
        && !back.starts_with("//")
        && !back.contains('\\')
        && back.bytes().all(|b| b.is_ascii_graphic());
    if local { back } else { "/" }
}

/// Remembers the person's language in the [`i18n::LANG_COOKIE`] cookie (which overrides the
/// browser's `Accept-Language`) and returns to the page the choice was made on. Works locked
/// and unlocked: the unlock screen is where a person may need it first.
async fn choose_language(
    State(shared): State<Shared>,
    Lang(t): Lang,
    Form(form): Form<LanguageForm>,
) -> Response {
    if !shared.i18n.has(&form.lang) {
        let desk = shared.desk().await;
        return error_page(
            &t,
            desk.as_ref(),
            StatusCode::BAD_REQUEST,
            t.t("language-unknown"),
        );
    }
    let cookie = format!(
        "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict",
        i18n::LANG_COOKIE,
        form.lang,
        i18n::LANG_COOKIE_MAX_AGE_SECS
    );
    let mut response = Redirect::to(local_path(&form.back)).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn lock(State(shared): State<Shared>) -> Response {
    shared.lock().await;
    see_other("/unlock", "locked-notice")
}

// ---------------------------------------------------------------------------------------------
// Home.

async fn home(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    axum::extract::Query(q): axum::extract::Query<NoticeQuery>,
) -> Response {
    let mut p = chrome(&t, &desk, "home-title", "home");
    p.notice = notice_text(&t, &q);
    let mut todo = Vec::new();
    let untrusted = desk
        .untrusted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    if untrusted > 0 {
        todo.push(views::Todo {
            text: t.t("todo-untrusted"),
            href: "/contacts".to_owned(),
        });
    }
    if desk.handles_cases() {
        todo.extend(crate::cases::home_todo(&t, &desk).await);
    }
    let rows = contact_rows(&t, &desk.client).await.unwrap_or_default();
    let unverified = rows.iter().filter(|r| !r.verified && !r.revoked).count();
    if unverified > 0 {
        todo.push(views::Todo {
            text: t.t1("todo-unverified", "count", unverified),
            href: "/contacts".to_owned(),
        });
    }
    let fingerprint = desk
        .client
        .with_engine(|e, _, _| e.org_root())
        .await
        .ok()
        .and_then(Result::ok)
        .map(|r| org_fingerprint(&r))
        .unwrap_or_default();
    page(&views::Home {
        p,
        todo,
        fingerprint,
    })
}

// ---------------------------------------------------------------------------------------------
// Chats.

async fn chats(Lang(t): Lang, Unlocked(desk): Unlocked) -> Response {
    let p = chrome(&t, &desk, "chats-title", "chats");
    let contacts = contact_rows(&t, &desk.client).await.unwrap_or_default();
    page(&views::Chats { p, contacts })
}

async fn chat(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Path(peer): Path<String>,
    axum::extract::Query(q): axum::extract::Query<NoticeQuery>,
) -> Response {
    let Some((id, contact)) = find_row(&t, &desk.client, &peer).await else {
        return not_found_page(&t, Some(&desk));
    };
    let mut p = chrome(&t, &desk, "chats-title", "chats");
    p.title = contact.name.clone();
    p.notice = notice_text(&t, &q);
    let messages = desk.client.messages(0).await.unwrap_or_default();
    let lines = messages
        .into_iter()
        .filter(|m| m.peer == id.device_id)
        .filter_map(|m| match &m.content.body {
            Some(Body::Chat(c)) => Some(views::ChatLine {
                seq: m.seq,
                outgoing: m.direction == Direction::Outgoing,
                text: c.text.clone(),
                when: views::utc(m.sent_at),
                expires_at: m.content.expires_at,
            }),
            _ => None,
        })
        .collect();
    page(&views::Chat { p, contact, lines })
}

/// The send form.
#[derive(Deserialize)]
struct SendForm {
    text: String,
    #[serde(default)]
    disappear: u64,
}

async fn send(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Path(peer): Path<String>,
    Form(form): Form<SendForm>,
) -> Response {
    let Some(to) = parse_peer(&peer) else {
        return not_found_page(&t, Some(&desk));
    };
    let back = format!("/chats/{peer}");
    if form.text.trim().is_empty() {
        return error_page(
            &t,
            Some(&desk),
            StatusCode::UNPROCESSABLE_ENTITY,
            t.t("chat-empty"),
        );
    }
    let client = desk.client.clone();
    let sending = async {
        if form.disappear > 0 {
            client
                .send_text_disappearing(to, &form.text, form.disappear)
                .await
        } else {
            client.send_text(to, &form.text, Vec::new()).await
        }
    };
    match tokio::time::timeout(NETWORK_WAIT, sending).await {
        Ok(Ok(_)) => {
            let waiting = client
                .with_engine(|e, _, _| e.outbox().map(|o| o.len()))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            if waiting == 0 {
                Redirect::to(&back).into_response()
            } else {
                see_other(&back, "chat-queued")
            }
        }
        Ok(Err(ClientError::Engine(EngineError::Revoked))) => {
            error_page(&t, Some(&desk), StatusCode::CONFLICT, t.t("chat-revoked"))
        }
        Ok(Err(e)) => error_page(
            &t,
            Some(&desk),
            StatusCode::BAD_GATEWAY,
            t.t1("chat-failed", "error", e),
        ),
        Err(_) => see_other(&back, "chat-queued"),
    }
}

// ---------------------------------------------------------------------------------------------
// Contacts.

async fn contacts(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    axum::extract::Query(q): axum::extract::Query<NoticeQuery>,
) -> Response {
    let mut p = chrome(&t, &desk, "contacts-title", "contacts");
    p.notice = notice_text(&t, &q);
    let contacts = contact_rows(&t, &desk.client).await.unwrap_or_default();
    let pending = desk
        .untrusted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|root| views::PendingOrg {
            root: hex::encode(root),
            fingerprint: org_fingerprint(root),
        })
        .collect();
    page(&views::Contacts {
        p,
        contacts,
        pending,
    })
}

/// The invite form.
#[derive(Deserialize)]
struct InviteForm {
    #[serde(default = "default_hours")]
    hours: u64,
}

fn default_hours() -> u64 {
    24
}

async fn invite(Lang(t): Lang, Unlocked(desk): Unlocked, Form(form): Form<InviteForm>) -> Response {
    let hours = form.hours.clamp(1, 24 * 30);
    match tokio::time::timeout(NETWORK_WAIT, desk.client.create_invitation(hours * 3600)).await {
        Ok(Ok((_, link))) => {
            let p = chrome(&t, &desk, "invite-title", "contacts");
            let qr_svg = views::qr_svg(link.as_bytes());
            page(&views::Invite {
                p,
                link,
                qr_svg,
                hours,
            })
        }
        Ok(Err(e)) => error_page(
            &t,
            Some(&desk),
            StatusCode::BAD_GATEWAY,
            t.t1("invite-failed", "error", e),
        ),
        Err(_) => error_page(
            &t,
            Some(&desk),
            StatusCode::GATEWAY_TIMEOUT,
            t.t1("invite-failed", "error", "the relay did not answer"),
        ),
    }
}

/// The accept form (and the fingerprint step's resubmission).
#[derive(Deserialize)]
struct AcceptForm {
    link: String,
    #[serde(default)]
    fingerprint: Option<String>,
}

async fn accept(Lang(t): Lang, Unlocked(desk): Unlocked, Form(form): Form<AcceptForm>) -> Response {
    let link = form.link.trim().to_owned();
    let bad = || {
        error_page(
            &t,
            Some(&desk),
            StatusCode::UNPROCESSABLE_ENTITY,
            t.t("accept-bad-link"),
        )
    };
    let Ok(invitation) = engine::parse_invitation_link(&link) else {
        return bad();
    };
    let Ok(root) = engine::invitation_org_root(&invitation) else {
        return bad();
    };
    let client = desk.client.clone();
    let trusted = client
        .with_engine(move |e, _, _| e.trusts_organisation(&root))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false);
    if !trusted {
        match form.fingerprint.as_deref().map(str::trim) {
            Some(fp) if !fp.is_empty() && engine::org_fingerprint_matches(&root, fp) => {
                if let Err(e) = client.trust_organisation(root).await {
                    return error_page(
                        &t,
                        Some(&desk),
                        StatusCode::INTERNAL_SERVER_ERROR,
                        t.t1("error-generic", "error", e),
                    );
                }
            }
            given => {
                let mut p = chrome(&t, &desk, "trust-title", "contacts");
                if given.is_some_and(|g| !g.is_empty()) {
                    p.error = Some(t.t("trust-mismatch"));
                }
                return page(&views::Trust {
                    p,
                    link,
                    fingerprint: org_fingerprint(&root),
                });
            }
        }
    }
    match tokio::time::timeout(NETWORK_WAIT, client.accept_invitation(&link)).await {
        Ok(Ok(peer)) => {
            let _ = invitation;
            Redirect::to(&format!("/chats/{}", peer_param(&peer))).into_response()
        }
        Ok(Err(e)) => error_page(
            &t,
            Some(&desk),
            StatusCode::BAD_GATEWAY,
            t.t1("accept-failed", "error", e),
        ),
        Err(_) => error_page(
            &t,
            Some(&desk),
            StatusCode::GATEWAY_TIMEOUT,
            t.t1("accept-failed", "error", "the relay did not answer"),
        ),
    }
}

/// Trusting an organisation whose messages wait at the relay.
#[derive(Deserialize)]
struct TrustForm {
    root: String,
    fingerprint: String,
}

async fn trust(
    State(shared): State<Shared>,
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Form(form): Form<TrustForm>,
) -> Response {
    let root: Option<[u8; 32]> = hex::decode(&form.root).ok().and_then(|b| b.try_into().ok());
    let Some(root) = root else {
        return not_found_page(&t, Some(&desk));
    };
    if !engine::org_fingerprint_matches(&root, &form.fingerprint) {
        let mut p = chrome(&t, &desk, "contacts-title", "contacts");
        p.error = Some(t.t("trust-mismatch"));
        let contacts = contact_rows(&t, &desk.client).await.unwrap_or_default();
        let pending = vec![views::PendingOrg {
            root: hex::encode(root),
            fingerprint: org_fingerprint(&root),
        }];
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            page(&views::Contacts {
                p,
                contacts,
                pending,
            }),
        )
            .into_response();
    }
    if let Err(e) = desk.client.trust_organisation(root).await {
        return error_page(
            &t,
            Some(&desk),
            StatusCode::INTERNAL_SERVER_ERROR,
            t.t1("error-generic", "error", e),
        );
    }
    desk.untrusted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|r| r != &root);
    let client = desk.client.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(NETWORK_WAIT, client.sync()).await;
        shared.notify(Live::Contacts);
    });
    see_other("/contacts", "trust-done")
}

fn safety_error(t: &Tr, e: &ClientError) -> String {
    match e {
        ClientError::Engine(EngineError::UntrustedOrganisation) => t.t("verify-untrusted"),
        ClientError::Engine(EngineError::SafetyNumberMismatch) => t.t("verify-mismatch"),
        ClientError::Engine(EngineError::Revoked) => t.t("chat-revoked"),
        e => t.t1("verify-failed", "error", e),
    }
}

async fn verify_page(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Path(peer): Path<String>,
    axum::extract::Query(q): axum::extract::Query<NoticeQuery>,
) -> Response {
    let Some((id, contact)) = find_row(&t, &desk.client, &peer).await else {
        return not_found_page(&t, Some(&desk));
    };
    let number = match desk.client.safety_number(id).await {
        Ok(n) => n,
        Err(e) => {
            return error_page(&t, Some(&desk), StatusCode::CONFLICT, safety_error(&t, &e));
        }
    };
    let mut p = chrome(&t, &desk, "verify-link", "contacts");
    p.notice = notice_text(&t, &q);
    let groups = number.grouped().split(' ').map(str::to_owned).collect();
    let qr_svg = views::qr_svg(&number.qr_payload());
    page(&views::Verify {
        p,
        contact,
        groups,
        qr_svg,
    })
}

/// The safety number as typed.
#[derive(Deserialize)]
struct VerifyForm {
    number: String,
}

async fn verify(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Path(peer): Path<String>,
    Form(form): Form<VerifyForm>,
) -> Response {
    let Some((id, contact)) = find_row(&t, &desk.client, &peer).await else {
        return not_found_page(&t, Some(&desk));
    };
    match desk.client.mark_contact_verified(id, form.number).await {
        Ok(()) => see_other(&format!("/contacts/{}/verify", contact.id), "verify-done"),
        Err(e) => {
            let text = safety_error(&t, &e);
            match desk.client.safety_number(id).await {
                Ok(number) => {
                    let mut p = chrome(&t, &desk, "verify-link", "contacts");
                    p.error = Some(text);
                    let groups = number.grouped().split(' ').map(str::to_owned).collect();
                    let qr_svg = views::qr_svg(&number.qr_payload());
                    (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        page(&views::Verify {
                            p,
                            contact,
                            groups,
                            qr_svg,
                        }),
                    )
                        .into_response()
                }
                Err(_) => error_page(&t, Some(&desk), StatusCode::CONFLICT, text),
            }
        }
    }
}

async fn unverify(Lang(t): Lang, Unlocked(desk): Unlocked, Path(peer): Path<String>) -> Response {
    let Some(id) = parse_peer(&peer) else {
        return not_found_page(&t, Some(&desk));
    };
    match desk.client.clear_contact_verified(id).await {
        Ok(()) => see_other(&format!("/contacts/{peer}/verify"), "verify-cleared"),
        Err(e) => error_page(
            &t,
            Some(&desk),
            StatusCode::INTERNAL_SERVER_ERROR,
            t.t1("error-generic", "error", e),
        ),
    }
}
