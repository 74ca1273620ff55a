//! The app in a real browser: a relay process, `handover app` processes on profiles of their
//! own, and scripts/app-browser-test.sh playing the scripts of app/tests/browser/ in Debian's
//! headless Chromium with Playwright. The script installs Chromium and the pinned
//! playwright-core when they are missing; if it cannot, this test fails (it never skips).
//!
//! - story.mjs: the two-organisation story on two apps whose profiles are created in the
//!   browser.
//! - org.mjs: a third app joins Riverside through the join screen and Riverside's admin
//!   enrols it after comparing the check codes.
//! - refusals.mjs: two more apps whose profiles are built through the client core (an offer that
//!   expired, the duress passphrase, the panic wipe).
//! - directory.mjs: two organisations built through the client core on a relay restarted to
//!   admit both to its directory: one publishes, the other searches, compares and imports.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use handover_core::client::{Client, ClientError};
use handover_core::engine::{RelayInfo, org_fingerprint};
use handover_core::store::{Credential, Passphrase, StoreError};
use handover_tests::app::AppProcess;
use handover_tests::process::RelayProcess;

// Profiles built through the client core, shared with the app crate's benchmarks.
#[path = "../../app/tests/support/mod.rs"]
mod support;

/// How long the expiring offer lives (seconds): long enough for Riverside to receive it.
const OFFER_TTL: u64 = 8;

/// How long an app may take to lock and exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The CLI binary, whose `app` subcommand is `handover app`.
fn handover() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_handover-under-test"))
}

/// Starts `handover app` on `profile` with cheap passphrase hashing for profiles it creates.
fn app(profile: &Path) -> AppProcess {
    AppProcess::start(handover(), profile, &["--insecure-fast-kdf"]).unwrap()
}

/// Stops an app as Ctrl-C does and checks that it exited cleanly.
fn stop(app: AppProcess) {
    let status = app.interrupt(STOP_TIMEOUT).unwrap();
    assert!(status.success(), "handover app exited with {status}");
}

/// Runs scripts/app-browser-test.sh with `config` and the browser script `script`.
async fn play(config: serde_json::Value, path: PathBuf, script: &'static str) -> Output {
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let runner = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/app-browser-test.sh");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(runner)
            .env("HANDOVER_BROWSER_CONFIG", &path)
            .env("HANDOVER_BROWSER_SCRIPT", script)
            .output()
    })
    .await
    .unwrap()
    .expect("running scripts/app-browser-test.sh");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Fails the test unless the browser script passed every step.
fn assert_passed(output: &Output, what: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(" passed, 0 failed"),
        "the browser {what} failed (screenshots in target/app-browser/):\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn side(app: &AppProcess) -> serde_json::Value {
    serde_json::json!({ "launch": app.launch_url, "origin": app.origin })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_organisations_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(
        Path::new(env!("CARGO_BIN_EXE_relay-under-test")),
        &dir.path().join("relay"),
        &[],
    )
    .unwrap();
    let a = app(&dir.path().join("harbour"));
    let b = app(&dir.path().join("riverside"));
    let story = serde_json::json!({
        "relay": relay.addr.to_string(),
        "pin": hex::encode(relay.pin),
        "passphrase": "correct horse battery staple",
        "a": side(&a),
        "b": side(&b),
    });
    let output = play(story, dir.path().join("story.json"), "story.mjs").await;
    stop(a);
    stop(b);
    assert_passed(&output, "story");

    // A third device joins Riverside: a new profile joins through the join screen, and the
    // story's Riverside app, opened again, enrols it.
    let admin = app(&dir.path().join("riverside"));
    let new = app(&dir.path().join("riverside-laptop"));
    let join = serde_json::json!({
        "relay": relay.addr.to_string(),
        "pin": hex::encode(relay.pin),
        "passphrase": "correct horse battery staple",
        "admin": side(&admin),
        "new": side(&new),
    });
    let output = play(join, dir.path().join("org.json"), "org.mjs").await;
    stop(admin);
    stop(new);
    assert_passed(&output, "join");

    // The refusals: Harbour sends Riverside an offer that lives OFFER_TTL seconds; Riverside
    // receives it in time; both apps are opened after it expired.
    let profiles = dir.path().join("refusals");
    let info = RelayInfo {
        host_port: relay.addr.to_string(),
        pin: relay.pin,
    };
    let pair = support::Pair::create(&profiles, info).await;
    let sent = Instant::now();
    let id = pair.offer(0, support::unix_now(), Some(OFFER_TTL)).await;
    while pair.harbour.flush_outbox().await.unwrap() > 0 {}
    loop {
        pair.riverside.sync().await.unwrap();
        if pair.riverside.referral(id).await.unwrap().is_some() {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(OFFER_TTL),
            "Riverside did not receive the offer before it expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pair.shutdown().await;
    tokio::time::sleep_until((sent + Duration::from_secs(OFFER_TTL + 1)).into()).await;
    let h = app(&profiles.join("harbour"));
    let r = app(&profiles.join("riverside"));
    let refusals = serde_json::json!({
        "passphrase": support::PASSPHRASE,
        "referral": hex::encode(id.as_bytes()),
        "a": side(&h),
        "b": side(&r),
    });
    let output = play(refusals, dir.path().join("refusals.json"), "refusals.mjs").await;
    stop(h);
    stop(r);
    assert_passed(&output, "refusals");
    // After the panic wipe nothing of Harbour's profile opens; after the duress passphrase
    // Riverside's real passphrase opens nothing either.
    let real = Credential::from(Passphrase::from(support::PASSPHRASE));
    assert!(matches!(
        Client::open(&profiles.join("harbour"), &real).await,
        Err(ClientError::Store(StoreError::NotFound))
    ));
    assert!(matches!(
        Client::open(&profiles.join("riverside"), &real).await,
        Err(ClientError::Store(StoreError::WrongCredential))
    ));
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_relay-under-test"));
    let data = dir.path().join("relay");
    // The organisations exist before the operator can admit them: create them, then restart
    // the relay on the same data and address with both root keys admitted.
    let mut first = RelayProcess::start(bin, &data, &[]).unwrap();
    let info = RelayInfo {
        host_port: first.addr.to_string(),
        pin: first.pin,
    };
    let harbour = support::organisation(dir.path(), "harbour", &info).await;
    let riverside = support::organisation(dir.path(), "riverside", &info).await;
    first.terminate().unwrap();
    first.wait_exit(STOP_TIMEOUT).unwrap();
    let (h_key, r_key) = (hex::encode(harbour), hex::encode(riverside));
    let relay = RelayProcess::start_at(
        bin,
        &data,
        first.addr,
        &["--admit-org", &h_key, "--admit-org", &r_key],
    )
    .unwrap();
    drop(first);
    assert_eq!(relay.pin, info.pin, "the relay keeps its certificate");
    let h = app(&dir.path().join("harbour"));
    let r = app(&dir.path().join("riverside"));
    let config = serde_json::json!({
        "passphrase": support::PASSPHRASE,
        "harbour_fingerprint": org_fingerprint(&harbour),
        "a": side(&h),
        "b": side(&r),
    });
    let output = play(config, dir.path().join("directory.json"), "directory.mjs").await;
    stop(h);
    stop(r);
    assert_passed(&output, "directory");
    drop(relay);
}
