//! The settings page's move to another relay over real HTTP on loopback, with two real relays
//! (QUIC on loopback) and a real profile on disk: a wrong pin is refused in words and changes
//! nothing; a right one moves the mailbox, and the page then names the new relay and the
//! previous one still collected; stopping the collection deletes the old mailbox.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use handover_app::{App, AppArgs};
use handover_relay::config::Config;
use handover_relay::server::Relay;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

const PASSPHRASE: &str = "correct horse battery staple";

/// One HTTP/1.1 exchange over a fresh connection: status, headers and body.
async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, hyper::HeaderMap, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = sender
        .send_request(
            request
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn location(headers: &hyper::HeaderMap) -> &str {
    headers
        .get("location")
        .map(|l| l.to_str().unwrap())
        .unwrap_or_default()
}

async fn relay(dir: &std::path::Path) -> Relay {
    let mut config = Config::new(dir.to_path_buf());
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin = None;
    config.wal_mib = 2;
    Relay::start(config).await.unwrap()
}

/// HTML-escaped text as askama writes it (apostrophes and quotes).
fn escaped(text: &str) -> String {
    text.replace('&', "&#38;")
        .replace('\'', "&#39;")
        .replace('"', "&#34;")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_move_to_another_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay1 = relay(&dir.path().join("relay1")).await;
    let relay2 = relay(&dir.path().join("relay2")).await;
    let mut args = AppArgs::headless(SocketAddr::from(([127, 0, 0, 1], 0)));
    args.insecure_fast_kdf = true;
    let app = App::start(dir.path().join("profile"), &args).await.unwrap();
    let addr = app.local_addr();
    let launch = app.launch_url().to_owned();
    let path = launch.split_once(&addr.to_string()).unwrap().1.to_owned();
    let (status, headers, _) = call(addr, Method::GET, &path, &[], "").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let origin = format!("http://{addr}");
    let post = |path: &'static str, form: String| {
        let (cookie, origin) = (cookie.clone(), origin.clone());
        async move {
            call(
                addr,
                Method::POST,
                path,
                &[
                    ("cookie", &cookie),
                    ("origin", &origin),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                &form,
            )
            .await
        }
    };
    let get = |path: &'static str| {
        let cookie = cookie.clone();
        async move { call(addr, Method::GET, path, &[("cookie", &cookie)], "").await }
    };

    let form = format!(
        "name=Harbour+intake&relay={}&pin={}&token=&passphrase={p}&passphrase2={p}",
        relay1.local_addr(),
        hex::encode(relay1.pin()),
        p = PASSPHRASE.replace(' ', "+"),
    );
    let (status, _, body) = post("/create", form).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let (status, _, page) = get("/settings").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&relay1.local_addr().to_string()));
    assert!(page.contains("action=\"/settings/relay\""), "{page}");

    // A wrong pin: refused in words, nothing changed.
    let mut wrong = relay2.pin();
    wrong[0] ^= 1;
    let (status, _, body) = post(
        "/settings/relay",
        format!(
            "relay={}&pin={}&token=",
            relay2.local_addr(),
            hex::encode(wrong)
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.contains(&escaped(
            "The new relay's key does not match this pin. Nothing was changed: you are still on \
             your current relay."
        )),
        "{body}"
    );
    let (_, _, page) = get("/settings").await;
    assert!(page.contains(&relay1.local_addr().to_string()));
    assert!(!page.contains(&relay2.local_addr().to_string()));

    // The right pin: moved, said in words; the page shows both relays.
    let (status, headers, body) = post(
        "/settings/relay",
        format!(
            "relay={}&pin={}&token=",
            relay2.local_addr(),
            hex::encode(relay2.pin())
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(location(&headers), "/settings?notice=settings-relay-moved");
    let (_, _, page) = get("/settings?notice=settings-relay-moved").await;
    assert!(
        page.contains(&escaped(
            "Moved to the new relay. Your contacts are being sent your new address."
        )),
        "{page}"
    );
    let new_at = page.find(&relay2.local_addr().to_string()).unwrap();
    let old_at = page.find(&relay1.local_addr().to_string()).unwrap();
    assert!(new_at < old_at, "the current relay comes first");
    assert!(page.contains("Previous relay (still collected)"));
    assert!(page.contains("action=\"/settings/relay/finish\""));

    // Stopping the collection deletes the old mailbox; the page names only the new relay.
    let (status, headers, body) = post("/settings/relay/finish", String::new()).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(
        location(&headers),
        "/settings?notice=settings-relay-finished"
    );
    let (_, _, page) = get("/settings").await;
    assert!(page.contains(&relay2.local_addr().to_string()));
    assert!(!page.contains(&relay1.local_addr().to_string()));
    drop(app);
}
