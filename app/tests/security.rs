//! The app's security checks over real HTTP on loopback, against a real relay (QUIC on
//! loopback) and a real profile on disk: no cookie, a foreign `Host` or `Origin`, a
//! cross-site fetch, the one-time launch secret, the headers on every page, wrong passphrase,
//! lock on demand and idle lock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ops::Deref;
use std::time::Duration;

use handover_app::AppArgs;
use handover_relay::server::Relay;
use hyper::{Method, StatusCode};

mod http;

use http::{Answer, Browser, PASSPHRASE, call, launch_path};

/// A relay, an app on a new profile directory, and the browser's cookie after launch.
struct Fixture {
    relay: Relay,
    browser: Browser,
    _dir: tempfile::TempDir,
}

/// The fixture is used as its browser: `f.get`, `f.post`, `f.addr`, `f.cookie`, `f.app`.
impl Deref for Fixture {
    type Target = Browser;

    fn deref(&self) -> &Browser {
        &self.browser
    }
}

impl Fixture {
    async fn start(lock_after: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let relay = http::start_relay(dir.path().join("relay")).await;
        let mut args = http::app_args();
        args.lock_after = lock_after;
        let browser = Browser::start(dir.path().join("profile"), &args).await;
        Self {
            relay,
            browser,
            _dir: dir,
        }
    }

    async fn create_profile(&self) {
        let a = self.profile("/create", "Harbour intake", &self.relay).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        assert!(self.app.is_unlocked().await);
    }

    async fn stop(self) {
        self.browser.stop().await;
        self.relay.shutdown().await;
    }
}

fn assert_hardened(a: &Answer, what: &str) {
    let csp = a
        .headers
        .get("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no CSP"))
        .to_str()
        .unwrap();
    assert_eq!(
        csp,
        handover_app::security::CONTENT_SECURITY_POLICY,
        "{what}"
    );
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(a.headers["x-frame-options"], "DENY", "{what}");
    assert_eq!(a.headers["cache-control"], "no-store", "{what}");
    assert_eq!(a.headers["x-content-type-options"], "nosniff", "{what}");
}

#[tokio::test]
async fn requests_without_the_cookie_are_refused() {
    let f = Fixture::start(600).await;
    for path in [
        "/",
        "/unlock",
        "/create",
        "/events",
        "/assets/app.js",
        "/chats",
    ] {
        let a = call(f.addr, Method::GET, path, &[], "").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
        assert_hardened(&a, path);
        let wrong = format!(
            "{}={}",
            f.cookie.split('=').next().unwrap(),
            "ab".repeat(32)
        );
        let a = call(f.addr, Method::GET, path, &[("cookie", &wrong)], "").await;
        assert_eq!(
            a.status,
            StatusCode::FORBIDDEN,
            "{path} with a wrong cookie"
        );
    }
    // The launch secret worked once (in Fixture::start): a second use without the cookie is
    // refused, and a guessed secret too.
    let a = call(
        f.addr,
        Method::GET,
        &format!("/launch?k={}", "00".repeat(32)),
        &[],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = call(f.addr, Method::GET, &launch_path(&f.app), &[], "").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.headers.get("set-cookie").is_none());
    f.stop().await;
}

#[tokio::test]
async fn a_foreign_host_or_origin_is_refused() {
    let f = Fixture::start(600).await;
    let cookie = f.cookie.clone();
    // DNS rebinding: the attacker's name resolves to 127.0.0.1, the browser sends its Host.
    let port = f.addr.port().to_string();
    let rebound = format!("attacker.example:{port}");
    for host in [rebound.as_str(), "127.0.0.1:1", "127.0.0.1"] {
        let a = call(
            f.addr,
            Method::GET,
            "/",
            &[("host", host), ("cookie", &cookie)],
            "",
        )
        .await;
        assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert_hardened(&a, host);
    }
    let localhost = format!("localhost:{port}");
    let a = call(
        f.addr,
        Method::GET,
        "/unlock",
        &[("host", &localhost), ("cookie", &cookie)],
        "",
    )
    .await;
    assert_ne!(a.status, StatusCode::MISDIRECTED_REQUEST);
    // Cross-site form posts and fetches: another origin (another port of this host counts).
    let other_port = format!("http://127.0.0.1:{}", f.addr.port().wrapping_add(1));
    for origin in ["http://attacker.example", other_port.as_str(), "null"] {
        let a = call(
            f.addr,
            Method::POST,
            "/lock",
            &[("cookie", &cookie), ("origin", origin)],
            "",
        )
        .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{origin}");
        assert_hardened(&a, origin);
    }
    // A state change without Origin is refused; a page of another site (Sec-Fetch-Site) too.
    let a = call(f.addr, Method::POST, "/lock", &[("cookie", &cookie)], "").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    for site in ["cross-site", "same-site"] {
        let a = call(
            f.addr,
            Method::GET,
            "/",
            &[("cookie", &cookie), ("sec-fetch-site", site)],
            "",
        )
        .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{site}");
    }
    let a = call(
        f.addr,
        Method::GET,
        "/unlock",
        &[("cookie", &cookie), ("sec-fetch-site", "same-origin")],
        "",
    )
    .await;
    assert!(a.status.is_success() || a.status.is_redirection());
    f.stop().await;
}

#[tokio::test]
async fn every_page_is_hardened_and_locking_clears_it() {
    let f = Fixture::start(600).await;
    // A new directory: the create screen.
    let a = f.get("/unlock").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.headers["location"], "/create");
    let a = f
        .post(
            "/create",
            "name=x&relay=127.0.0.1:1&pin=00&passphrase=a&passphrase2=b",
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.body.contains("The two passphrases differ"), "{}", a.body);
    f.create_profile().await;
    for path in [
        "/",
        "/chats",
        "/contacts",
        "/referrals",
        "/consent",
        "/organisation",
        "/directory",
        "/settings",
        "/assets/app.css",
        "/assets/app.js",
        "/no-such-page",
    ] {
        let a = f.get(path).await;
        assert_hardened(&a, path);
        if path != "/no-such-page" {
            assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
        }
        if path.ends_with(".js") || path.ends_with(".css") {
            continue;
        }
        // No inline script anywhere: scripts only from /assets/.
        assert!(!a.body.contains("<script>"), "{path}");
        for handler in [
            " onclick=",
            " onload=",
            " onsubmit=",
            " onerror=",
            "javascript:",
        ] {
            assert!(!a.body.contains(handler), "{path}: {handler}");
        }
    }
    let home = f.get("/").await;
    assert!(home.body.contains("Harbour intake"));
    assert!(home.body.contains("Organisation fingerprint") || home.body.contains("fingerprint"));

    // Lock on demand: the client is dropped, every page is the unlock screen.
    let a = f.post("/lock", "").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert!(!f.app.is_unlocked().await);
    for path in ["/", "/chats", "/contacts", "/referrals", "/settings"] {
        let a = f.get(path).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(a.headers["location"], "/unlock", "{path}");
    }
    let a = f.get("/unlock").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        !a.body.contains("Harbour intake"),
        "the locked page shows the profile"
    );
    assert_hardened(&a, "/unlock");

    // Wrong passphrase: refused in words, still locked.
    let a = f.post("/unlock", "passphrase=wrong+horse").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.body.contains("does not open this profile"), "{}", a.body);
    assert!(!f.app.is_unlocked().await);
    let a = f
        .post(
            "/unlock",
            &format!("passphrase={}", PASSPHRASE.replace(' ', "+")),
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert!(f.app.is_unlocked().await);
    assert!(f.get("/").await.body.contains("Harbour intake"));
    f.stop().await;
}

#[tokio::test]
async fn the_app_locks_itself_when_idle() {
    let f = Fixture::start(2).await;
    f.create_profile().await;
    assert!(f.get("/").await.body.contains("Harbour intake"));
    let mut locked = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !f.app.is_unlocked().await {
            locked = true;
            break;
        }
    }
    assert!(locked, "not locked after 10 s idle with a 2 s lock time");
    let a = f.get("/").await;
    assert_eq!(a.headers["location"], "/unlock");
    f.stop().await;
}

/// An ambassador's app has chats and contacts but no referral or consent screens.
#[tokio::test]
async fn an_ambassador_sees_no_case_screens() {
    use handover_core::client::Client;
    use handover_core::engine::{IdentitySetup, RelayInfo};
    use handover_core::identity::{DeviceKeys, Role};
    use handover_core::store::{Credential, KdfParams, Passphrase};

    let f = Fixture::start(600).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayInfo {
        host_port: f.relay.local_addr().to_string(),
        pin: f.relay.pin(),
    };
    let credential = Credential::from(Passphrase::from(PASSPHRASE));
    let kdf = KdfParams::new(1024, 1, 1).unwrap();
    let admin = Client::create(
        &dir.path().join("admin"),
        &credential,
        kdf,
        relay.clone(),
        DeviceKeys::generate(&mut rand::rng()),
        IdentitySetup::NewOrganisation {
            device_label: "Admin".into(),
        },
        "Admin",
    )
    .await
    .unwrap();
    let keys = DeviceKeys::generate(&mut rand::rng());
    let (certificate, device_list) = admin
        .enrol_device(keys.public_keys(), Role::Ambassador, "Ambassador".into())
        .await
        .unwrap();
    let ambassador_dir = dir.path().join("ambassador");
    let ambassador = Client::create(
        &ambassador_dir,
        &credential,
        kdf,
        relay,
        keys,
        IdentitySetup::Enrolled {
            certificate,
            device_list,
        },
        "Community ambassador",
    )
    .await
    .unwrap();
    ambassador.shutdown().await.unwrap();
    admin.shutdown().await.unwrap();

    let b = Browser::start(ambassador_dir, &AppArgs::headless(http::loopback())).await;
    b.unlock(PASSPHRASE).await;
    let home = b.get("/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.body.contains("href=\"/chats\""));
    assert!(!home.body.contains("href=\"/referrals\""));
    assert!(!home.body.contains("href=\"/consent\""));
    assert!(!home.body.contains("href=\"/directory\""));
    assert!(!home.body.contains("href=\"/organisation\""));
    for path in [
        "/referrals",
        "/referrals/new",
        "/consent",
        "/consent/new",
        "/directory",
        "/directory/publish",
        "/organisation",
    ] {
        let a = b.get(path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
    }
    let a = b.get("/contacts").await;
    assert_eq!(a.status, StatusCode::OK);
    b.stop().await;
    f.stop().await;
}

#[tokio::test]
async fn the_language_follows_the_browser_unless_the_person_chose_one() {
    let f = Fixture::start(600).await;
    f.create_profile().await;
    let get = |cookie: String, accept: &'static str| {
        let addr = f.addr;
        async move {
            call(
                addr,
                Method::GET,
                "/settings",
                &[("cookie", &cookie), ("accept-language", accept)],
                "",
            )
            .await
        }
    };
    // The browser's language: Arabic, right to left, with the choice in every language's own
    // name.
    let a = get(f.cookie.clone(), "ar, en;q=0.5").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.body.contains(r#"<html lang="ar" dir="rtl">"#),
        "{}",
        a.body
    );
    assert!(a.body.contains("<h1>الإعدادات</h1>"), "{}", a.body);
    assert!(a.body.contains(r#"action="/language""#));
    for name in ["العربية", "Українська", "Français", "Español", "English"] {
        assert!(a.body.contains(&format!(">{name}</option>")), "{name}");
    }
    let a = get(f.cookie.clone(), "uk-UA").await;
    assert!(a.body.contains(r#"<html lang="uk" dir="ltr">"#));
    assert!(a.body.contains("<h1>Налаштування</h1>"));

    // The person chooses French: a plain cookie (not a secret, no case content) that
    // overrides the browser's Arabic.
    let a = f.post("/language", "lang=fr&back=%2Fsettings").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.headers["location"], "/settings");
    let set = a.headers["set-cookie"].to_str().unwrap();
    assert!(set.starts_with("handover_lang=fr;"), "{set}");
    assert!(
        set.contains("SameSite=Strict") && set.contains("Path=/"),
        "{set}"
    );
    let chosen = format!("{}; handover_lang=fr", f.cookie);
    let a = get(chosen.clone(), "ar, en;q=0.5").await;
    assert!(
        a.body.contains(r#"<html lang="fr" dir="ltr">"#),
        "{}",
        a.body
    );
    assert!(a.body.contains("<h1>Réglages</h1>"));
    assert!(
        a.body
            .contains(r#"<option value="fr" lang="fr" dir="ltr" selected>"#)
    );
    // An unknown language in the cookie falls back to the browser's.
    let a = get(format!("{}; handover_lang=xx", f.cookie), "es").await;
    assert!(a.body.contains(r#"<html lang="es" dir="ltr">"#));

    // The choice is a state change: the usual guard applies (session cookie, own Origin).
    let form = "lang=ar&back=%2Fsettings";
    let plain = [("content-type", "application/x-www-form-urlencoded")];
    let no_origin = [plain[0], ("cookie", f.cookie.as_str())];
    let a = call(f.addr, Method::POST, "/language", &no_origin, form).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let foreign = [
        no_origin[0],
        no_origin[1],
        ("origin", "http://evil.example"),
    ];
    let a = call(f.addr, Method::POST, "/language", &foreign, form).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let no_session = [plain[0], ("origin", f.origin.as_str())];
    let a = call(f.addr, Method::POST, "/language", &no_session, form).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(!a.headers.contains_key("set-cookie"));
    // Unknown languages are refused; the way back stays on this server.
    let a = f.post("/language", "lang=xx&back=%2Fsettings").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(!a.headers.contains_key("set-cookie"));
    for back in [
        "%2F%2Fevil.example",
        "https%3A%2F%2Fevil.example",
        "%2F%5Cevil",
    ] {
        let a = f.post("/language", &format!("lang=es&back={back}")).await;
        assert_eq!(a.headers["location"], "/", "{back}");
    }

    // Locked: the unlock screen offers the choice and follows it.
    let a = f.post("/lock", "").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let a = call(
        f.addr,
        Method::GET,
        "/unlock",
        &[("cookie", &f.cookie), ("accept-language", "ar")],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains(r#"<html lang="ar" dir="rtl">"#));
    assert!(a.body.contains("فتح قفل ملفك الشخصي"));
    assert!(a.body.contains(r#"name="back" value="/unlock""#));
    let a = f.post("/language", "lang=uk&back=%2Funlock").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.headers["location"], "/unlock");
    let a = call(
        f.addr,
        Method::GET,
        "/unlock",
        &[
            ("cookie", &format!("{}; handover_lang=uk", f.cookie)),
            ("accept-language", "ar"),
        ],
        "",
    )
    .await;
    assert!(a.body.contains(r#"<html lang="uk" dir="ltr">"#));
    assert!(a.body.contains("Розблокуйте свій профіль"));
    f.stop().await;
}
