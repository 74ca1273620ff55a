//! Joining an organisation (the create screen's second choice) and the organisation screen:
//! its devices with role and name, enrolling a device from its request code, revoking one.
//! The steps and codes are the client core's (`handover_core::enrolment`, docs/PROTOCOL.md
//! §5.6), the same the CLI's `org join-request` / `org enroll` / `org join` use.
//!
//! The organisation screen is not an ambassador's (an ambassador's app is chats and
//! contacts): its routes answer 404 there.

use askama::Template;
use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use handover_core::client::{Client, ClientError};
use handover_core::engine::{EngineError, RelayInfo, org_fingerprint};
use handover_core::enrolment::{EnrolmentCode, EnrolmentError, JoinRequest};
use handover_core::identity::{DeviceId, Role};
use handover_core::store::{Credential, KdfParams, Passphrase, StoreError};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::cases::{failed, hide};
use crate::i18n::Tr;
use crate::pages::{
    Lang, NETWORK_WAIT, NoticeQuery, Unlocked, chrome, error_page, locked_chrome, notice_text,
    role_name, see_other,
};
use crate::state::{Desk, Shared};
use crate::views::{Chrome, page, qr_svg};

/// The routes of this module.
pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route("/join", get(join_page).post(join))
        .route("/join/pending", get(pending_page))
        .route("/join/finish", post(finish))
        .route("/organisation", get(organisation))
        .route("/organisation/revoke", post(revoke))
        .route("/organisation/enrol", post(enrol_check))
        .route("/organisation/enrol/confirm", post(enrol))
}

// ---------------------------------------------------------------------------------------------
// Joining (the new device).

/// The join form: the new device's name, relay and passphrase.
#[derive(Template)]
#[template(path = "join.html")]
struct JoinPage {
    p: Chrome,
    name: String,
    relay: String,
    pin: String,
}

/// The waiting join: the request code (text and QR), the check code, the enrolment code
/// field.
#[derive(Template)]
#[template(path = "joining.html")]
struct Joining {
    p: Chrome,
    name: String,
    request: String,
    qr_svg: String,
    check_code: String,
    code: String,
}

async fn join_page(State(shared): State<Shared>, Lang(t): Lang) -> Response {
    if shared.desk().await.is_some() {
        return Redirect::to("/").into_response();
    }
    if shared.joining().await.is_some() {
        return Redirect::to("/join/pending").into_response();
    }
    page(&JoinPage {
        p: locked_chrome(&t, "join-title"),
        name: String::new(),
        relay: String::new(),
        pin: String::new(),
    })
}

/// The join form as posted.
#[derive(Deserialize)]
struct JoinForm {
    name: String,
    relay: String,
    pin: String,
    passphrase: String,
    passphrase2: String,
}

impl Drop for JoinForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.passphrase);
        zeroize::Zeroize::zeroize(&mut self.passphrase2);
    }
}

async fn join(State(shared): State<Shared>, Lang(t): Lang, Form(form): Form<JoinForm>) -> Response {
    let again = |status: StatusCode, error: String| {
        let mut p = locked_chrome(&t, "join-title");
        p.error = Some(error);
        (
            status,
            page(&JoinPage {
                p,
                name: form.name.clone(),
                relay: form.relay.clone(),
                pin: form.pin.clone(),
            }),
        )
            .into_response()
    };
    if shared.desk().await.is_some() {
        return Redirect::to("/").into_response();
    }
    if form.name.trim().is_empty() || form.relay.trim().is_empty() || form.passphrase.is_empty() {
        return again(StatusCode::UNPROCESSABLE_ENTITY, t.t("create-empty"));
    }
    if form.passphrase != form.passphrase2 {
        return again(StatusCode::UNPROCESSABLE_ENTITY, t.t("create-mismatch"));
    }
    let pin: Option<[u8; 32]> = hex::decode(form.pin.trim())
        .ok()
        .and_then(|b| b.try_into().ok());
    let Some(pin) = pin else {
        return again(StatusCode::UNPROCESSABLE_ENTITY, t.t("create-bad-pin"));
    };
    let kdf = if shared.options.fast_kdf {
        match KdfParams::new(1024, 1, 1) {
            Ok(k) => k,
            Err(e) => {
                return again(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    t.t1("join-failed", "error", e),
                );
            }
        }
    } else {
        KdfParams::default()
    };
    let credential = Credential::from(Passphrase::from(form.passphrase.as_str()));
    let relay = RelayInfo {
        host_port: form.relay.trim().to_owned(),
        pin,
    };
    let name = Zeroizing::new(form.name.trim().to_owned());
    let dir = shared.options.profile.clone();
    // Argon2 takes a second of CPU: off the async workers.
    let requested = tokio::task::spawn_blocking(move || {
        tokio::runtime::Handle::current().block_on(Client::request_join(
            &dir,
            &credential,
            kdf,
            relay,
            &name,
        ))
    })
    .await;
    match requested {
        Ok(Ok((client, _))) => {
            shared.set_joining(client).await;
            Redirect::to("/join/pending").into_response()
        }
        Ok(Err(
            ClientError::Engine(EngineError::ProfileExists)
            | ClientError::Store(StoreError::WrongCredential),
        )) => again(StatusCode::CONFLICT, t.t("create-exists")),
        Ok(Err(ClientError::Engine(EngineError::Enrolment(EnrolmentError::BadName)))) => {
            again(StatusCode::UNPROCESSABLE_ENTITY, t.t("join-bad-name"))
        }
        Ok(Err(e)) => again(
            StatusCode::INTERNAL_SERVER_ERROR,
            t.t1("join-failed", "error", e),
        ),
        Err(_) => again(
            StatusCode::INTERNAL_SERVER_ERROR,
            t.t1("join-failed", "error", "interrupted"),
        ),
    }
}

/// The waiting join's page, with `error` on top and `code` kept in its field.
async fn joining_page(t: &Tr, client: &Client, error: Option<String>, code: String) -> Response {
    let request = match client.pending_join().await {
        Ok(Some(r)) => r,
        Ok(None) => return Redirect::to("/unlock").into_response(),
        Err(e) => {
            return error_page(
                t,
                None,
                StatusCode::INTERNAL_SERVER_ERROR,
                t.t1("join-failed", "error", e),
            );
        }
    };
    let text = request.to_code();
    let mut p = locked_chrome(t, "joining-title");
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    p.error = error;
    (
        status,
        page(&Joining {
            p,
            name: request.name().to_owned(),
            qr_svg: qr_svg(text.as_bytes()),
            request: text,
            check_code: request.check_code(),
            code,
        }),
    )
        .into_response()
}

async fn pending_page(State(shared): State<Shared>, Lang(t): Lang) -> Response {
    if shared.desk().await.is_some() {
        return Redirect::to("/").into_response();
    }
    match shared.joining().await {
        Some(client) => joining_page(&t, &client, None, String::new()).await,
        None => Redirect::to("/unlock").into_response(),
    }
}

/// The enrolment code as posted (and a mailbox-creation token if the relay needs one).
#[derive(Deserialize)]
struct FinishForm {
    code: String,
    #[serde(default)]
    token: String,
}

impl Drop for FinishForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

/// The words for a refused enrolment code.
fn code_error(t: &Tr, e: &EnrolmentError) -> String {
    match e {
        EnrolmentError::NotAnEnrolmentCode => t.t("join-not-code"),
        EnrolmentError::UnsupportedVersion(_) => t.t("join-code-version"),
        EnrolmentError::NotForThisDevice => t.t("join-other-device"),
        EnrolmentError::NoPendingJoin => t.t("join-none-pending"),
        EnrolmentError::PendingDamaged => t.t("join-pending-damaged"),
        _ => t.t("join-code-damaged"),
    }
}

async fn finish(
    State(shared): State<Shared>,
    Lang(t): Lang,
    Form(form): Form<FinishForm>,
) -> Response {
    if shared.desk().await.is_some() {
        return Redirect::to("/").into_response();
    }
    let Some(client) = shared.joining().await else {
        return Redirect::to("/unlock").into_response();
    };
    shared.touch();
    let typed = form.code.trim().to_owned();
    let code = match EnrolmentCode::parse(&typed) {
        Ok(code) => code,
        Err(e) => return joining_page(&t, &client, Some(code_error(&t, &e)), typed).await,
    };
    let token = (!form.token.is_empty()).then(|| form.token.clone().into_bytes());
    let joined = match tokio::time::timeout(NETWORK_WAIT, client.join(&code, token)).await {
        Ok(Ok(joined)) => joined,
        Ok(Err(ClientError::Engine(EngineError::Enrolment(e)))) => {
            return joining_page(&t, &client, Some(code_error(&t, &e)), typed).await;
        }
        Ok(Err(ClientError::Engine(EngineError::Certificate(e)))) => {
            let text = t.t1("join-code-refused", "error", e);
            return joining_page(&t, &client, Some(text), typed).await;
        }
        Ok(Err(ClientError::Engine(EngineError::ProfileExists))) => {
            // Joined already (another submission got there first): open it.
            return Redirect::to("/unlock").into_response();
        }
        Ok(Err(e)) => {
            let text = t.t1("join-relay-failed", "error", e);
            return joining_page(&t, &client, Some(text), typed).await;
        }
        Err(_) => {
            let text = t.t1("join-relay-failed", "error", "the relay did not answer");
            return joining_page(&t, &client, Some(text), typed).await;
        }
    };
    let _ = shared.take_joining().await;
    let connected = matches!(
        tokio::time::timeout(NETWORK_WAIT, client.accept_invitation(&joined.invitation)).await,
        Ok(Ok(_))
    );
    match shared.unlock(client).await {
        Ok(()) if connected => see_other("/", "joined"),
        Ok(()) => see_other("/", "joined-unconnected"),
        Err(e) => error_page(
            &t,
            None,
            StatusCode::INTERNAL_SERVER_ERROR,
            t.t1("join-failed", "error", e),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The organisation screen.

/// A device of this organisation.
struct DeviceRow {
    id: String,
    short: String,
    label: String,
    role: String,
    this: bool,
}

/// The organisation screen.
#[derive(Template)]
#[template(path = "organisation.html")]
struct Organisation {
    p: Chrome,
    fingerprint: String,
    org_key: String,
    role: String,
    /// This device holds the organisation root key: it enrols and revokes.
    holds_key: bool,
    /// This device is an admin: it may publish the directory entry.
    admin: bool,
    devices: Vec<DeviceRow>,
    revoked: usize,
    request: String,
}

async fn organisation_page(
    t: &Tr,
    desk: &Desk,
    notice: Option<String>,
    error: Option<(StatusCode, String)>,
    request: String,
) -> Response {
    let info = desk
        .client
        .with_engine(|e, _, now| {
            let root = e.org_root()?;
            let me = e.device_id()?;
            let holds = e.holds_org_key()?;
            let trust = e.org_trust(&root)?;
            let devices: Vec<(DeviceId, Role, String)> = trust
                .active_devices(now)
                .iter()
                .map(|c| (c.device_id(), c.role(), c.label().to_owned()))
                .collect();
            let revoked = e
                .own_device_list()?
                .and_then(|l| handover_proto::decode::device_list(&l.list).ok())
                .map_or(0, |l| l.revoked_device_ids.len());
            Ok::<_, EngineError>((root, me, holds, devices, revoked))
        })
        .await;
    let (root, me, holds_key, devices, revoked) = match info {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return failed(t, desk, e),
        Err(e) => return failed(t, desk, e),
    };
    let mut p = chrome(t, desk, "organisation-title", "organisation");
    p.notice = notice;
    let status = match error {
        Some((status, text)) => {
            p.error = Some(text);
            status
        }
        None => StatusCode::OK,
    };
    (
        status,
        page(&Organisation {
            p,
            fingerprint: org_fingerprint(&root),
            org_key: hex::encode(root),
            role: role_name(t, Some(desk.role)),
            holds_key,
            admin: matches!(desk.role, Role::Admin),
            devices: devices
                .into_iter()
                .map(|(id, role, label)| DeviceRow {
                    id: hex::encode(id.0),
                    short: hex::encode(&id.0[..4]),
                    label,
                    role: role_name(t, Some(role)),
                    this: id == me,
                })
                .collect(),
            revoked,
            request,
        }),
    )
        .into_response()
}

async fn organisation(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Query(q): Query<NoticeQuery>,
) -> Response {
    if !desk.handles_cases() {
        return hide(&t, &desk);
    }
    organisation_page(&t, &desk, notice_text(&t, &q), None, String::new()).await
}

/// Revoking a device.
#[derive(Deserialize)]
struct RevokeForm {
    device: String,
}

async fn revoke(Lang(t): Lang, Unlocked(desk): Unlocked, Form(f): Form<RevokeForm>) -> Response {
    if !desk.handles_cases() {
        return hide(&t, &desk);
    }
    let id: Option<[u8; 16]> = hex::decode(&f.device).ok().and_then(|b| b.try_into().ok());
    let Some(id) = id else {
        return hide(&t, &desk);
    };
    match tokio::time::timeout(NETWORK_WAIT, desk.client.revoke_device(DeviceId(id))).await {
        Ok(Ok(_)) => see_other("/organisation", "device-revoked"),
        Ok(Err(ClientError::Engine(EngineError::NotOrgKeyHolder))) => error_page(
            &t,
            Some(&desk),
            StatusCode::FORBIDDEN,
            t.t("org-not-holder"),
        ),
        Ok(Err(e)) => error_page(
            &t,
            Some(&desk),
            StatusCode::CONFLICT,
            t.t1("act-refused", "error", e),
        ),
        // Revoked here; the contacts get the list from the outbox.
        Err(_) => see_other("/organisation", "device-revoked"),
    }
}

/// The words for a refused request code.
fn request_error(t: &Tr, e: &EnrolmentError) -> String {
    match e {
        EnrolmentError::NotARequest => t.t("enrol-not-request"),
        EnrolmentError::UnsupportedVersion(_) => t.t("join-code-version"),
        EnrolmentError::BadName => t.t("enrol-bad-name"),
        EnrolmentError::DeviceIdInUse => t.t("enrol-in-use"),
        _ => t.t("enrol-damaged"),
    }
}

/// The request code as pasted.
#[derive(Deserialize)]
struct RequestForm {
    request: String,
}

/// The confirm step: compare the check code, choose role and label.
#[derive(Template)]
#[template(path = "enrol_confirm.html")]
struct EnrolConfirm {
    p: Chrome,
    request: String,
    name: String,
    check_code: String,
}

/// The enrolment code for the new device.
#[derive(Template)]
#[template(path = "enrolled.html")]
struct Enrolled {
    p: Chrome,
    label: String,
    role: String,
    check_code: String,
    code: String,
    qr_svg: String,
}

/// Whether this device holds the root key (false if that cannot be read).
async fn holds_key(desk: &Desk) -> bool {
    desk.client
        .with_engine(|e, _, _| e.holds_org_key())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false)
}

async fn enrol_check(
    Lang(t): Lang,
    Unlocked(desk): Unlocked,
    Form(f): Form<RequestForm>,
) -> Response {
    if !desk.handles_cases() {
        return hide(&t, &desk);
    }
    let typed = f.request.trim().to_owned();
    if !holds_key(&desk).await {
        let error = (StatusCode::FORBIDDEN, t.t("org-not-holder"));
        return organisation_page(&t, &desk, None, Some(error), typed).await;
    }
    let request = match JoinRequest::parse(&typed) {
        Ok(r) => r,
        Err(e) => {
            let error = (StatusCode::UNPROCESSABLE_ENTITY, request_error(&t, &e));
            return organisation_page(&t, &desk, None, Some(error), typed).await;
        }
    };
    let p = chrome(&t, &desk, "enrol-confirm-title", "organisation");
    page(&EnrolConfirm {
        p,
        name: request.name().to_owned(),
        check_code: request.check_code(),
        request: typed,
    })
}

/// The confirmed enrolment.
#[derive(Deserialize)]
struct EnrolForm {
    request: String,
    role: String,
    #[serde(default)]
    label: String,
}

async fn enrol(Lang(t): Lang, Unlocked(desk): Unlocked, Form(f): Form<EnrolForm>) -> Response {
    if !desk.handles_cases() {
        return hide(&t, &desk);
    }
    let role = match f.role.as_str() {
        "admin" => Role::Admin,
        "caseworker" => Role::Caseworker,
        "ambassador" => Role::Ambassador,
        _ => {
            let error = (StatusCode::UNPROCESSABLE_ENTITY, t.t("enrol-bad-role"));
            return organisation_page(&t, &desk, None, Some(error), f.request.clone()).await;
        }
    };
    let request = match JoinRequest::parse(&f.request) {
        Ok(r) => r,
        Err(e) => {
            let error = (StatusCode::UNPROCESSABLE_ENTITY, request_error(&t, &e));
            return organisation_page(&t, &desk, None, Some(error), f.request.clone()).await;
        }
    };
    let label = if f.label.trim().is_empty() {
        request.name().to_owned()
    } else {
        f.label.trim().to_owned()
    };
    let refused = |status: StatusCode, text: String| {
        let request = f.request.clone();
        let desk = desk.clone();
        let t = t.clone();
        async move { organisation_page(&t, &desk, None, Some((status, text)), request).await }
    };
    let code =
        match tokio::time::timeout(NETWORK_WAIT, desk.client.enrol(&request, role, &label)).await {
            Ok(Ok(code)) => code,
            Ok(Err(ClientError::Engine(EngineError::NotOrgKeyHolder))) => {
                return refused(StatusCode::FORBIDDEN, t.t("org-not-holder")).await;
            }
            Ok(Err(ClientError::Engine(EngineError::Enrolment(e)))) => {
                return refused(StatusCode::CONFLICT, request_error(&t, &e)).await;
            }
            Ok(Err(e)) => {
                return refused(StatusCode::BAD_GATEWAY, t.t1("enrol-failed", "error", e)).await;
            }
            Err(_) => {
                let text = t.t1("enrol-failed", "error", "the relay did not answer");
                return refused(StatusCode::GATEWAY_TIMEOUT, text).await;
            }
        };
    let text = match code.to_code() {
        Ok(text) => text,
        Err(e) => return refused(StatusCode::UNPROCESSABLE_ENTITY, request_error(&t, &e)).await,
    };
    let p = chrome(&t, &desk, "enrolled-title", "organisation");
    page(&Enrolled {
        p,
        label: code.label(),
        role: role_name(&t, code.role()),
        check_code: request.check_code(),
        qr_svg: qr_svg(text.as_bytes()),
        code: text,
    })
}
