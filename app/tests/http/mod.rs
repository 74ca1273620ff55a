//! The HTTP side of the app's tests: one HTTP/1.1 client (hyper's, over a fresh loopback
//! connection per request), a browser of one app that holds the session cookie from the
//! launch URL, form encoding, and a relay on loopback for the app to use.
//!
//! Included by each HTTP test with `mod http;`. It is not part of `support/mod.rs`, which the
//! tests crate and a benchmark include by path and which must not need hyper.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

use std::net::SocketAddr;
use std::path::PathBuf;

use handover_app::{App, AppArgs};
use handover_relay::config::Config;
use handover_relay::server::Relay;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// The passphrase of the profiles the tests create through the app's forms.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// A free port on the IPv4 loopback.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// App options for a test: headless on a free loopback port, with the cheap passphrase
/// hashing for the profiles it creates.
pub fn app_args() -> AppArgs {
    let mut args = AppArgs::headless(loopback());
    args.insecure_fast_kdf = true;
    args
}

/// A relay's options for a test: data in `data`, a free loopback port, no admin endpoint and a
/// small write-ahead log.
pub fn relay_config(data: PathBuf) -> Config {
    let mut config = Config::new(data);
    config.listen = loopback();
    config.admin = None;
    config.wal_mib = 2;
    config
}

/// A relay started with [`relay_config`].
pub async fn start_relay(data: PathBuf) -> Relay {
    Relay::start(relay_config(data)).await.unwrap()
}

/// One HTTP/1.1 answer: status, headers and body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Answer {
    /// The `Location` header, empty when there is none.
    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .map(|l| l.to_str().unwrap())
            .unwrap_or_default()
    }
}

/// One HTTP/1.1 exchange over a fresh connection. `Host` is the server's address unless
/// `headers` name their own.
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder().method(method).uri(path);
    let mut has_host = false;
    for (k, v) in headers {
        has_host |= k.eq_ignore_ascii_case("host");
        request = request.header(*k, *v);
    }
    if !has_host {
        request = request.header("host", addr.to_string());
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// A form value, percent-encoded (everything but ASCII letters, digits and `-_.~`).
pub fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `application/x-www-form-urlencoded` of `pairs`.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A browser of one app: the app, its address and origin, and the session cookie from the
/// launch URL.
pub struct Browser {
    pub app: App,
    pub addr: SocketAddr,
    pub origin: String,
    pub cookie: String,
}

impl Browser {
    /// Starts the app on `profile` and opens its launch URL once. The launch answers with a
    /// redirect and an `HttpOnly`, `SameSite=Strict` session cookie.
    pub async fn start(profile: PathBuf, args: &AppArgs) -> Self {
        let app = App::start(profile, args).await.unwrap();
        let addr = app.local_addr();
        let a = call(addr, Method::GET, &launch_path(&app), &[], "").await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        let set_cookie = a.headers["set-cookie"].to_str().unwrap().to_owned();
        assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
        assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        Self {
            app,
            addr,
            origin: format!("http://{addr}"),
            cookie,
        }
    }

    /// A GET with the session cookie.
    pub async fn get(&self, path: &str) -> Answer {
        call(
            self.addr,
            Method::GET,
            path,
            &[("cookie", &self.cookie)],
            "",
        )
        .await
    }

    /// A form POST with the session cookie and the app's own `Origin`.
    pub async fn post(&self, path: &str, form: &str) -> Answer {
        call(
            self.addr,
            Method::POST,
            path,
            &[
                ("cookie", &self.cookie),
                ("origin", &self.origin),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            form,
        )
        .await
    }

    /// A form POST of `pairs`, encoded with [`form`].
    pub async fn post_pairs(&self, path: &str, pairs: &[(&str, &str)]) -> Answer {
        self.post(path, &form(pairs)).await
    }

    /// Creates a profile named `name` on `relay` with [`PASSPHRASE`] through the form at
    /// `path` (`/create` or `/join`).
    pub async fn profile(&self, path: &str, name: &str, relay: &Relay) -> Answer {
        let addr = relay.local_addr().to_string();
        let pin = hex::encode(relay.pin());
        self.post_pairs(
            path,
            &[
                ("name", name),
                ("relay", &addr),
                ("pin", &pin),
                ("token", ""),
                ("passphrase", PASSPHRASE),
                ("passphrase2", PASSPHRASE),
            ],
        )
        .await
    }

    /// Unlocks the profile with `passphrase`: the app redirects.
    pub async fn unlock(&self, passphrase: &str) {
        let a = self
            .post_pairs("/unlock", &[("passphrase", passphrase)])
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    }

    /// Stops the app.
    pub async fn stop(self) {
        self.app.stop().await.unwrap();
    }
}

/// The path and query of the app's launch URL (its one-time secret).
pub fn launch_path(app: &App) -> String {
    let addr = app.local_addr().to_string();
    let launch = app.launch_url().to_owned();
    launch.split_once(&addr).unwrap().1.to_owned()
}
