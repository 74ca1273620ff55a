//! Joining an organisation through the app, over real HTTP on loopback against a real relay
//! and real profiles on disk: the join screen's refusals (a code that is not an enrolment
//! code, a damaged one, one made for another device), a pending join that comes back after
//! locking, the admin's enrolment with the check code, the role rules of the organisation
//! screen, and the new device reaching home.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use handover_core::enrolment::{JoinRequest, check_code};
use handover_core::identity::DeviceKeys;
use hyper::StatusCode;

mod http;

use http::{Answer, Browser, PASSPHRASE};

/// The text of the element with `id` (a textarea or code), HTML entities undone.
fn element_text(body: &str, id: &str) -> String {
    let start = body
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in:\n{body}"));
    let rest = &body[start..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest[open..].find('<').unwrap();
    rest[open..open + close]
        .replace("&#x2f;", "/")
        .replace("&#47;", "/")
        .replace("&#x3d;", "=")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
        .trim()
        .to_owned()
}

/// The admin's enrolment of `request` as `role`: the confirm page's check code and the
/// enrolment code.
async fn enrol(admin: &Browser, request: &str, role: &str) -> (String, String) {
    let a = admin
        .post_pairs("/organisation/enrol", &[("request", request)])
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let check = element_text(&a.body, "check-code");
    let a = admin
        .post_pairs(
            "/organisation/enrol/confirm",
            &[("request", request), ("role", role), ("label", "")],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    (check, element_text(&a.body, "enrolment-code"))
}

/// The new device's enrolment-code form.
async fn finish(b: &Browser, code: &str) -> Answer {
    b.post_pairs("/join/finish", &[("code", code), ("token", "")])
        .await
}

#[tokio::test]
async fn a_device_joins_through_the_app_and_wrong_codes_are_refused_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let relay = http::start_relay(dir.path().join("relay")).await;
    let args = http::app_args();

    let admin = Browser::start(dir.path().join("admin"), &args).await;
    let a = admin.profile("/create", "Riverside intake", &relay).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let a = admin.get("/organisation").await;
    assert!(a.body.contains("id=\"enrol-check\""), "{}", a.body);
    assert!(!a.body.contains("id=\"enrol-not-holder\""));

    // The new device: the create screen offers the join, which shows the request.
    let new = Browser::start(dir.path().join("new"), &args).await;
    let a = new.get("/create").await;
    assert!(a.body.contains("href=\"/join\""), "{}", a.body);
    let a = new.profile("/join", "Riverside laptop 2", &relay).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.location(), "/join/pending");
    assert!(new.app.is_joining().await && !new.app.is_unlocked().await);
    let a = new.get("/join/pending").await;
    assert_eq!(a.status, StatusCode::OK);
    let request = element_text(&a.body, "request-code");
    let shown_check = element_text(&a.body, "check-code");
    let parsed = JoinRequest::parse(&request).unwrap();
    assert_eq!(parsed.name(), "Riverside laptop 2");
    assert_eq!(shown_check, parsed.check_code());
    assert!(a.body.contains("<svg"), "the request's QR code");

    // Refusals, each in its own words, the join still waiting.
    let a = finish(&new, "hello, this is not a code").await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        a.body.contains("This is not an enrolment code"),
        "{}",
        a.body
    );
    let a = finish(&new, "handover://enrolment#AQAB").await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.body.contains("damaged or incomplete"), "{}", a.body);
    let a = finish(&new, "handover://enrolment#AQ=").await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.body.contains("damaged or incomplete"), "{}", a.body);
    // A real enrolment code, made for another device's request.
    let other = DeviceKeys::generate(&mut rand::rng());
    let other_request = JoinRequest::new(other.public_keys(), "Someone else")
        .unwrap()
        .to_code();
    let (other_check, other_code) = enrol(&admin, &other_request, "caseworker").await;
    assert_eq!(other_check, check_code(&other.public_keys()));
    let a = finish(&new, &other_code).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.body.contains("made for another device"), "{}", a.body);
    assert!(new.app.is_joining().await && !new.app.is_unlocked().await);

    // The admin refuses what is not a request, and a non-holder cannot enrol.
    let a = admin
        .post_pairs(
            "/organisation/enrol",
            &[("request", "handover://enrolment#AQ")],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.body.contains("This is not a request code"), "{}", a.body);
    let mut truncated = request.clone();
    truncated.truncate(request.len() - 40);
    let a = admin
        .post_pairs("/organisation/enrol", &[("request", &truncated)])
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.body.contains("damaged or incomplete"), "{}", a.body);

    // Locked while waiting, unlocked again: back to the same step with the same request.
    let a = new.post("/lock", "").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert!(!new.app.is_joining().await);
    let a = new
        .post_pairs("/unlock", &[("passphrase", PASSPHRASE)])
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.location(), "/join/pending");
    let a = new.get("/join/pending").await;
    assert_eq!(element_text(&a.body, "request-code"), request);

    // The admin enrols the real request; both pages show the same check code.
    let (admin_check, code) = enrol(&admin, &request, "caseworker").await;
    assert_eq!(admin_check, shown_check);
    let a = finish(&new, &code).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert!(
        a.location().starts_with("/?notice=joined"),
        "{}",
        a.location()
    );
    assert!(new.app.is_unlocked().await && !new.app.is_joining().await);
    let a = new.get("/").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("Riverside laptop 2"));

    // The admin's device list shows it with its role and name; the new device sees why it
    // cannot enrol.
    let a = admin.get("/organisation").await;
    let row = a
        .body
        .split("<tr")
        .find(|r| r.contains("Riverside laptop 2"))
        .unwrap();
    assert!(row.contains("caseworker"), "{row}");
    let a = new.get("/organisation").await;
    assert!(a.body.contains("id=\"enrol-not-holder\""), "{}", a.body);
    let a = new
        .post_pairs("/organisation/enrol", &[("request", &other_request)])
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    // An ambassador's app is chats and contacts: no organisation, referral or consent screen.
    let amb = Browser::start(dir.path().join("amb"), &args).await;
    let a = amb.profile("/join", "Outreach phone", &relay).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let a = amb.get("/join/pending").await;
    let amb_request = element_text(&a.body, "request-code");
    let (_, amb_code) = enrol(&admin, &amb_request, "ambassador").await;
    let a = amb.post_pairs("/join/finish", &[("code", &amb_code)]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let a = amb.get("/").await;
    assert!(a.body.contains("href=\"/chats\"") && a.body.contains("href=\"/contacts\""));
    assert!(!a.body.contains("href=\"/organisation\""), "{}", a.body);
    assert!(!a.body.contains("href=\"/referrals\""));
    for path in ["/organisation", "/referrals", "/consent"] {
        assert_eq!(amb.get(path).await.status, StatusCode::NOT_FOUND, "{path}");
    }

    for b in [admin, new, amb] {
        b.stop().await;
    }
    relay.shutdown().await;
}
