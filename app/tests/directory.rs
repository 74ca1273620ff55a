//! The directory screens over real HTTP against a real relay (QUIC on loopback) and real
//! profiles on disk: Riverside publishes, Harbour searches by service and by name, compares
//! the fingerprint (a wrong one imports nothing) and imports; Riverside's intake device appears
//! in Harbour's contacts and Harbour's contact card reaches Riverside. A third organisation the
//! relay has not admitted gets the relay's refusal in words, with the key for the operator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use handover_app::{App, AppArgs};
use handover_core::client::Client;
use handover_core::engine::{IdentitySetup, RelayInfo, org_fingerprint};
use handover_core::identity::DeviceKeys;
use handover_core::store::{Credential, KdfParams, Passphrase};
use handover_relay::config::Config;
use handover_relay::server::Relay;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

mod support;

/// One HTTP/1.1 answer.
struct Answer {
    status: StatusCode,
    location: String,
    cookie: Option<String>,
    body: String,
}

/// A browser on one app: the session cookie after the launch URL.
struct Browser {
    addr: SocketAddr,
    cookie: String,
}

impl Browser {
    async fn call(&self, method: Method, path: &str, form: &str) -> Answer {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", self.addr.to_string());
        if !self.cookie.is_empty() {
            request = request.header("cookie", &self.cookie);
        }
        if method == Method::POST {
            request = request
                .header("origin", format!("http://{}", self.addr))
                .header("content-type", "application/x-www-form-urlencoded");
        }
        let request = request
            .body(Full::new(Bytes::from(form.to_owned())))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let cookie = response
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            location,
            cookie,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// Opens the app's launch URL and unlocks the profile.
    async fn open(app: &App) -> Self {
        let addr = app.local_addr();
        let mut b = Self {
            addr,
            cookie: String::new(),
        };
        let launch = app.launch_url().to_owned();
        let path = launch.split_once(&addr.to_string()).unwrap().1.to_owned();
        let a = b.call(Method::GET, &path, "").await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        b.cookie = a.cookie.expect("the launch URL sets the session cookie");
        let a = b
            .post(
                "/unlock",
                &format!("passphrase={}", support::PASSPHRASE.replace(' ', "+")),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        assert!(app.is_unlocked().await);
        b
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, "").await
    }

    async fn post(&self, path: &str, form: &str) -> Answer {
        self.call(Method::POST, path, form).await
    }
}

/// A form value, percent-encoded.
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A new organisation (this device its admin) in `dir/name`, created through the client core.
async fn organisation(dir: &Path, name: &str, relay: &RelayInfo) -> [u8; 32] {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let client = Client::create(
        &d,
        &Credential::from(Passphrase::from(support::PASSPHRASE)),
        KdfParams::new(1024, 1, 1).unwrap(),
        relay.clone(),
        DeviceKeys::generate(&mut rand::rng()),
        IdentitySetup::NewOrganisation {
            device_label: format!("{name} desk"),
        },
        &format!("{name} desk"),
    )
    .await
    .unwrap();
    let root = support::root(&client).await;
    client.shutdown().await.unwrap();
    root
}

fn relay_config(dir: &Path, listen: SocketAddr, admitted: Vec<[u8; 32]>) -> Config {
    let mut config = Config::new(dir.join("relay"));
    config.listen = listen;
    config.admin = None;
    config.wal_mib = 2;
    config.admitted_orgs = admitted;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_search_and_import_through_the_app_and_the_refusal_in_words() {
    tokio::time::timeout(Duration::from_secs(180), scenario())
        .await
        .expect("the directory scenario timed out");
}

async fn scenario() {
    let dir = tempfile::tempdir().unwrap();
    // The profiles need the relay to exist; the operator then restarts it (same data, same
    // port, same certificate) admitting Harbour and Riverside, not Northside.
    let first = Relay::start(relay_config(
        dir.path(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Vec::new(),
    ))
    .await
    .unwrap();
    let (addr, pin) = (first.local_addr(), first.pin());
    let info = RelayInfo {
        host_port: addr.to_string(),
        pin,
    };
    let harbour = organisation(dir.path(), "harbour", &info).await;
    let riverside = organisation(dir.path(), "riverside", &info).await;
    let northside = organisation(dir.path(), "northside", &info).await;
    first.shutdown().await;
    let relay = Relay::start(relay_config(dir.path(), addr, vec![harbour, riverside]))
        .await
        .unwrap();
    assert_eq!(relay.pin(), pin, "the relay keeps its certificate");

    let mut args = AppArgs::headless(SocketAddr::from(([127, 0, 0, 1], 0)));
    args.insecure_fast_kdf = true;

    // Northside is not admitted: search and publish say so in words, with its key.
    let n_app = App::start(dir.path().join("northside"), &args)
        .await
        .unwrap();
    let n = Browser::open(&n_app).await;
    let org = n.get("/organisation").await;
    assert!(org.body.contains("href=\"/directory\""), "{}", org.body);
    let a = n.get("/directory?search=1&name=&service=shelter").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(
        a.body
            .contains("The relay has not admitted your organisation"),
        "{}",
        a.body
    );
    assert!(a.body.contains(&hex::encode(northside)), "{}", a.body);
    assert!(a.body.contains("--admit-org"), "{}", a.body);
    assert!(!a.body.contains("UNAUTHORISED") && !a.body.contains("Unauthorised"));
    let a = n
        .post(
            "/directory/publish",
            "name=Northside+Refuge&services=shelter",
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(a.body.contains("has not admitted"), "{}", a.body);
    assert!(a.body.contains(&hex::encode(northside)), "{}", a.body);
    // The form keeps what was typed.
    assert!(a.body.contains("value=\"Northside Refuge\""), "{}", a.body);
    let a = n.get("/directory/publish").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.body.contains("has not admitted"), "{}", a.body);
    n_app.stop().await.unwrap();

    // Riverside publishes; a missing name and a bad language tag are refused at their fields.
    let r_app = App::start(dir.path().join("riverside"), &args)
        .await
        .unwrap();
    let r = Browser::open(&r_app).await;
    let a = r.get("/directory/publish").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(
        a.body.contains("no profile in the directory yet"),
        "{}",
        a.body
    );
    let a = r
        .post("/directory/publish", "name=&languages=english+please")
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert!(a.body.contains("id=\"err-name\""), "{}", a.body);
    assert!(a.body.contains("id=\"err-languages\""), "{}", a.body);
    // Nothing was sent; the page still says what the relay holds.
    assert!(
        a.body.contains("no profile in the directory yet"),
        "{}",
        a.body
    );
    let name = "Riverside Women's Shelter";
    let form = format!(
        "name={}&services=shelter&services=legal&languages={}&regions=Brussels&description={}",
        enc(name),
        enc("ar, fr"),
        enc("Emergency accommodation, 24 hours.")
    );
    let a = r.post("/directory/publish", &form).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert!(
        a.location.starts_with("/directory/publish?"),
        "{}",
        a.location
    );
    let a = r.get(&a.location).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains("Published in the relay"), "{}", a.body);
    let published = a.body.split("id=\"publish\"").next().unwrap().to_owned();
    for shown in [
        "Riverside Women&#39;s Shelter",
        "shelter, legal",
        "ar, fr",
        "Brussels",
        "Emergency accommodation, 24 hours.",
        &org_fingerprint(&riverside),
    ] {
        assert!(published.contains(shown), "{shown} not shown:\n{published}");
    }
    // The form shows the published values again.
    assert!(a.body.contains("value=\"shelter\" checked"), "{}", a.body);

    // Harbour searches by service (and by a service nobody offers, and by name).
    let h_app = App::start(dir.path().join("harbour"), &args).await.unwrap();
    let h = Browser::open(&h_app).await;
    let home = h.get("/").await;
    assert!(home.body.contains("href=\"/directory\""), "{}", home.body);
    let a = h
        .get("/directory?search=1&service=legal&language=xx+yy")
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert!(a.body.contains("id=\"err-language\""), "{}", a.body);
    let a = h.get("/directory?search=1&service=police_liaison").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains("No organisation in the directory matches"));
    let a = h
        .get("/directory?search=1&name=RIVER&region=brussels")
        .await;
    assert!(
        a.body.contains("Riverside Women&#39;s Shelter"),
        "{}",
        a.body
    );
    let a = h
        .get("/directory?search=1&service=shelter&language=ar")
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let fp = org_fingerprint(&riverside);
    assert!(
        a.body.contains("Riverside Women&#39;s Shelter"),
        "{}",
        a.body
    );
    assert!(a.body.contains(&fp), "{}", a.body);
    assert!(a.body.contains("Emergency accommodation"), "{}", a.body);
    assert!(
        !a.body.contains("imported: its intake devices"),
        "{}",
        a.body
    );

    // The fingerprint step: shown first, a wrong fingerprint imports nothing.
    let pick = format!("root={}&name={}", hex::encode(riverside), enc(name));
    let a = h.post("/directory/import", &pick).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains("id=\"their-fingerprint\""), "{}", a.body);
    assert!(a.body.contains(&fp), "{}", a.body);
    let wrong = format!("{pick}&fingerprint={}", enc(&org_fingerprint(&harbour)));
    let a = h.post("/directory/import", &wrong).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert!(a.body.contains("id=\"err-fingerprint\""), "{}", a.body);
    assert!(a.body.contains("Nothing was imported"), "{}", a.body);
    let contacts = h.get("/contacts").await;
    assert!(
        !contacts.body.contains("Riverside Women"),
        "{}",
        contacts.body
    );

    // The right fingerprint (as read out: spaces and case do not matter) imports.
    let right = format!("{pick}&fingerprint={}", enc(&fp.to_uppercase()));
    let a = h.post("/directory/import", &right).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.location, "/contacts?notice=org-imported");
    let contacts = h.get(&a.location).await;
    assert!(
        contacts.body.contains("sent your contact card"),
        "{}",
        contacts.body
    );
    assert!(
        contacts.body.contains("Riverside Women&#39;s Shelter"),
        "{}",
        contacts.body
    );
    assert!(contacts.body.contains(&fp), "{}", contacts.body);
    let a = h.get("/directory?search=1&service=shelter").await;
    assert!(
        a.body
            .contains("imported: its intake devices are in your contacts"),
        "{}",
        a.body
    );

    // Riverside receives Harbour's contact card: Harbour waits to be trusted there.
    let harbour_fp = org_fingerprint(&harbour);
    let start = Instant::now();
    loop {
        let a = r.get("/contacts").await;
        if a.body.contains(&harbour_fp) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Harbour's contact card did not reach Riverside:\n{}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Searching lists one's own organisation without an import button.
    let a = r.get("/directory?search=1&name=riverside").await;
    assert!(a.body.contains("your organisation"), "{}", a.body);
    assert!(
        !a.body.contains("action=\"/directory/import\""),
        "{}",
        a.body
    );

    h_app.stop().await.unwrap();
    r_app.stop().await.unwrap();
    relay.shutdown().await;
}
