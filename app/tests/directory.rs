//! The directory screens over real HTTP against a real relay (QUIC on loopback) and real
//! profiles on disk: Riverside publishes, Harbour searches by service and by name, compares
//! the fingerprint (a wrong one imports nothing) and imports; Riverside's intake device appears
//! in Harbour's contacts and Harbour's contact card reaches Riverside. A third organisation the
//! relay has not admitted gets the relay's refusal in words, with the key for the operator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use handover_core::engine::{RelayInfo, org_fingerprint};
use handover_relay::config::Config;
use handover_relay::server::Relay;
use hyper::StatusCode;

mod http;
mod support;

use http::{Browser, enc};

/// Starts the app on the profile `dir/name`, opens its launch URL and unlocks the profile.
async fn open(dir: &Path, name: &str) -> Browser {
    let b = Browser::start(dir.join(name), &http::app_args()).await;
    b.unlock(support::PASSPHRASE).await;
    assert!(b.app.is_unlocked().await);
    b
}

fn relay_config(dir: &Path, listen: SocketAddr, admitted: Vec<[u8; 32]>) -> Config {
    let mut config = http::relay_config(dir.join("relay"));
    config.listen = listen;
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
    let first = Relay::start(relay_config(dir.path(), http::loopback(), Vec::new()))
        .await
        .unwrap();
    let (addr, pin) = (first.local_addr(), first.pin());
    let info = RelayInfo {
        host_port: addr.to_string(),
        pin,
    };
    let harbour = support::organisation(dir.path(), "harbour", &info).await;
    let riverside = support::organisation(dir.path(), "riverside", &info).await;
    let northside = support::organisation(dir.path(), "northside", &info).await;
    first.shutdown().await;
    let relay = Relay::start(relay_config(dir.path(), addr, vec![harbour, riverside]))
        .await
        .unwrap();
    assert_eq!(relay.pin(), pin, "the relay keeps its certificate");

    // Northside is not admitted: search and publish say so in words, with its key.
    let n = open(dir.path(), "northside").await;
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
    n.stop().await;

    // Riverside publishes; a missing name and a bad language tag are refused at their fields.
    let r = open(dir.path(), "riverside").await;
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
        a.location().starts_with("/directory/publish?"),
        "{}",
        a.location()
    );
    let a = r.get(a.location()).await;
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
    let h = open(dir.path(), "harbour").await;
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
    assert_eq!(a.location(), "/contacts?notice=org-imported");
    let contacts = h.get(a.location()).await;
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

    h.stop().await;
    r.stop().await;
    relay.shutdown().await;
}
