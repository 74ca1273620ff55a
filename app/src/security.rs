//! The guard in front of every request (the Syncthing / Jupyter model of a local web app).
//!
//! - The server listens on a loopback address only ([`check_listen`]).
//! - `handover app` prints (and opens) `http://HOST:PORT/launch?k=SECRET`. The launch secret is
//!   random per start and works once: it is exchanged for a session cookie (HttpOnly,
//!   SameSite=Strict, random, compared in constant time) and the browser is redirected to a
//!   URL without it.
//! - Every request must name this server in `Host` (a DNS-rebinding page's requests carry the
//!   attacker's host name), must carry the session cookie, and, when the browser says where
//!   it comes from (`Origin`, `Sec-Fetch-Site`), must come from this origin. State-changing
//!   requests must carry `Origin`.
//! - Every response, refusals included, carries a strict Content-Security-Policy (scripts,
//!   styles and everything else only from this origin, no inline script, no framing),
//!   `X-Frame-Options: DENY`, `Cache-Control: no-store`, `Referrer-Policy: same-origin` (with
//!   `no-referrer`, browsers send `Origin: null` on same-origin form posts, which the Origin
//!   check must refuse).
//!
//! Refusals name no case content and are never logged.

use std::net::SocketAddr;
use std::sync::Mutex;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::state::Shared;

/// Length of the launch secret and of the session cookie, in bytes (hex in the URL/cookie).
pub(crate) const SECRET_LEN: usize = 32;

/// The Content-Security-Policy of every response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// A refused request: why, in words for the person at the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `Host` does not name this server (DNS rebinding or a proxy).
    Host,
    /// `Origin` or `Sec-Fetch-Site` names another site (cross-site request).
    Origin,
    /// No valid session cookie.
    Cookie,
}

impl Refusal {
    fn text(self) -> &'static str {
        match self {
            Refusal::Host => {
                "Refused: this request does not name the Handover app's address. Open the \
                 address that `handover app` printed."
            }
            Refusal::Origin => {
                "Refused: this request came from another site. Use the Handover app's own \
                 pages."
            }
            Refusal::Cookie => {
                "Refused: this browser has not been let in. Open the address that `handover \
                 app` printed when it started (it works once), or restart `handover app` for \
                 a new one."
            }
        }
    }
}

/// The per-launch secrets and the addresses this server answers to.
pub(crate) struct Guard {
    /// The launch secret until it has been used.
    launch: Mutex<Option<Zeroizing<[u8; SECRET_LEN]>>>,
    /// The session cookie's value.
    session: Zeroizing<[u8; SECRET_LEN]>,
    /// The cookie's name (includes the port: cookies are shared across ports of one host).
    cookie_name: String,
    /// Accepted `Host` values.
    hosts: Vec<String>,
    /// Accepted `Origin` values.
    origins: Vec<String>,
}

impl Guard {
    /// Fresh secrets for a server on `addr`.
    pub(crate) fn new(addr: SocketAddr, rng: &mut impl rand::CryptoRng) -> (Self, String) {
        let mut launch = Zeroizing::new([0u8; SECRET_LEN]);
        rng.fill_bytes(&mut launch[..]);
        let mut session = Zeroizing::new([0u8; SECRET_LEN]);
        rng.fill_bytes(&mut session[..]);
        let port = addr.port();
        let mut hosts = vec![addr.to_string()];
        if addr.ip().is_loopback() {
            hosts.push(format!("localhost:{port}"));
        }
        let origins = hosts.iter().map(|h| format!("http://{h}")).collect();
        let launch_hex = hex::encode(&launch[..]);
        let url = format!("http://{addr}/launch?k={launch_hex}");
        (
            Self {
                launch: Mutex::new(Some(launch)),
                session,
                cookie_name: format!("handover_{port}"),
                hosts,
                origins,
            },
            url,
        )
    }

    fn host_ok(&self, headers: &HeaderMap) -> bool {
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    fn origin_ok(&self, method: &Method, headers: &HeaderMap) -> bool {
        match headers.get(header::ORIGIN).map(|o| o.to_str()) {
            Some(Ok(origin)) if !self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) => {
                return false;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => return false,
            // Browsers send Origin with every POST; a state change without one is refused.
            None if !matches!(*method, Method::GET | Method::HEAD) => return false,
            None => {}
        }
        match headers.get("sec-fetch-site").map(|v| v.to_str()) {
            // "none": typed in the address bar or a bookmark.
            Some(Ok("same-origin" | "none")) | None => true,
            _ => false,
        }
    }

    fn cookie_ok(&self, headers: &HeaderMap) -> bool {
        let mut ok = subtle::Choice::from(0);
        for value in headers.get_all(header::COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            for pair in value.split(';') {
                let Some((name, v)) = pair.trim().split_once('=') else {
                    continue;
                };
                if name != self.cookie_name {
                    continue;
                }
                let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
                if hex::decode_to_slice(v, &mut bytes[..]).is_ok() {
                    ok |= bytes[..].ct_eq(&self.session[..]);
                }
            }
        }
        ok.into()
    }

    /// Takes the launch secret if `given` is it (once).
    fn redeem(&self, given: &str) -> bool {
        let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
        if hex::decode_to_slice(given, &mut bytes[..]).is_err() {
            return false;
        }
        let mut launch = self.launch.lock().unwrap_or_else(|p| p.into_inner());
        let matches = launch
            .as_ref()
            .is_some_and(|l| bool::from(l[..].ct_eq(&bytes[..])));
        if matches {
            *launch = None;
        }
        matches
    }

    fn set_cookie(&self) -> String {
        format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict",
            self.cookie_name,
            hex::encode(&self.session[..])
        )
    }
}

/// Refuses non-loopback listen addresses.
pub(crate) fn check_listen(addr: SocketAddr) -> Result<(), crate::AppError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(crate::AppError::NotLoopback(addr))
    }
}

fn refuse(why: Refusal) -> Response {
    let status = match why {
        Refusal::Host => StatusCode::MISDIRECTED_REQUEST,
        Refusal::Origin | Refusal::Cookie => StatusCode::FORBIDDEN,
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        why.text(),
    )
        .into_response()
}

/// Adds the security headers to a response.
fn harden(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
}

/// The middleware: checks `Host`, `Origin`, the cookie (or redeems the launch secret), records
/// activity for the idle lock, and hardens every response.
pub(crate) async fn guard(
    State(shared): State<Shared>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let mut response = check(&shared, request, next).await;
    harden(&mut response);
    response
}

async fn check(shared: &Shared, request: Request<Body>, next: Next) -> Response {
    let guard = &shared.guard;
    let headers = request.headers();
    if !guard.host_ok(headers) {
        return refuse(Refusal::Host);
    }
    if !guard.origin_ok(request.method(), headers) {
        return refuse(Refusal::Origin);
    }
    if request.uri().path() == "/launch" && request.method() == Method::GET {
        let given = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("k="))
            .unwrap_or("");
        if guard.redeem(given) {
            let mut response = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&guard.set_cookie()) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            return response;
        }
        // Used already: a browser that holds the cookie goes on; others are refused.
        if guard.cookie_ok(headers) {
            return Redirect::to("/").into_response();
        }
        return refuse(Refusal::Cookie);
    }
    if !guard.cookie_ok(headers) {
        return refuse(Refusal::Cookie);
    }
    let path = request.uri().path();
    // The live stream and assets are not a person's activity.
    if path != "/events" && !path.starts_with("/assets/") {
        shared.touch();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> (Guard, String) {
        Guard::new(SocketAddr::from(([127, 0, 0, 1], 4321)), &mut rand::rng())
    }

    #[test]
    fn the_launch_secret_works_once() {
        let (g, url) = guard();
        let k = url.split("k=").nth(1).unwrap().to_owned();
        assert!(!g.redeem(&"00".repeat(SECRET_LEN)));
        assert!(g.redeem(&k));
        assert!(!g.redeem(&k));
    }

    #[test]
    fn host_origin_and_cookie_are_checked() {
        let (g, _) = guard();
        let mut h = HeaderMap::new();
        assert!(!g.host_ok(&h));
        h.insert(header::HOST, HeaderValue::from_static("evil.example:4321"));
        assert!(!g.host_ok(&h));
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:4321"));
        assert!(g.host_ok(&h));
        h.insert(header::HOST, HeaderValue::from_static("localhost:4321"));
        assert!(g.host_ok(&h));
        assert!(g.origin_ok(&Method::GET, &h));
        assert!(!g.origin_ok(&Method::POST, &h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:4321"),
        );
        assert!(g.origin_ok(&Method::POST, &h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9999"),
        );
        assert!(!g.origin_ok(&Method::POST, &h));
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(!g.origin_ok(&Method::GET, &h));
        assert!(!g.cookie_ok(&h));
        let cookie = g.set_cookie();
        let pair = cookie.split(';').next().unwrap().to_owned();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {pair}")).unwrap(),
        );
        assert!(g.cookie_ok(&h));
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("handover_4321={}", "ab".repeat(SECRET_LEN))).unwrap(),
        );
        assert!(!g.cookie_ok(&h));
    }
}
