//! The settings page's move to another relay over real HTTP on loopback, with two real relays
//! (QUIC on loopback) and a real profile on disk: a wrong pin is refused in words and changes
//! nothing; a right one moves the mailbox, and the page then names the new relay and the
//! previous one still collected; stopping the collection deletes the old mailbox.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hyper::StatusCode;

mod http;

use http::Browser;

/// HTML-escaped text as askama writes it (apostrophes and quotes).
fn escaped(text: &str) -> String {
    text.replace('&', "&#38;")
        .replace('\'', "&#39;")
        .replace('"', "&#34;")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_move_to_another_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay1 = http::start_relay(dir.path().join("relay1")).await;
    let relay2 = http::start_relay(dir.path().join("relay2")).await;
    let b = Browser::start(dir.path().join("profile"), &http::app_args()).await;

    let a = b.profile("/create", "Harbour intake", &relay1).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let a = b.get("/settings").await;
    assert_eq!(a.status, StatusCode::OK);
    let page = a.body;
    assert!(page.contains(&relay1.local_addr().to_string()));
    assert!(page.contains("action=\"/settings/relay\""), "{page}");

    // A wrong pin: refused in words, nothing changed.
    let mut wrong = relay2.pin();
    wrong[0] ^= 1;
    let form = format!(
        "relay={}&pin={}&token=",
        relay2.local_addr(),
        hex::encode(wrong)
    );
    let a = b.post("/settings/relay", &form).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert!(
        a.body.contains(&escaped(
            "The new relay's key does not match this pin. Nothing was changed: you are still on \
             your current relay."
        )),
        "{}",
        a.body
    );
    let page = b.get("/settings").await.body;
    assert!(page.contains(&relay1.local_addr().to_string()));
    assert!(!page.contains(&relay2.local_addr().to_string()));

    // The right pin: moved, said in words; the page shows both relays.
    let form = format!(
        "relay={}&pin={}&token=",
        relay2.local_addr(),
        hex::encode(relay2.pin())
    );
    let a = b.post("/settings/relay", &form).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.location(), "/settings?notice=settings-relay-moved");
    let page = b.get("/settings?notice=settings-relay-moved").await.body;
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
    let a = b.post("/settings/relay/finish", "").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.location(), "/settings?notice=settings-relay-finished");
    let page = b.get("/settings").await.body;
    assert!(page.contains(&relay2.local_addr().to_string()));
    assert!(!page.contains(&relay1.local_addr().to_string()));
    drop(b);
}
