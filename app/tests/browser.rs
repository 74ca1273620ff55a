//! The browser test: a relay (real QUIC on loopback), two `handover app` servers on their own
//! profiles, and scripts/app-browser-test.sh playing the two-organisation story in Debian's
//! headless Chromium with Playwright. The script installs Chromium and the pinned
//! playwright-core when they are missing; if it cannot, this test fails (it never skips).
//! Then the refusals (app/tests/browser/refusals.mjs) on two more apps whose profiles are built
//! through the client core: an offer that expired, the duress passphrase, the panic wipe.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use handover_app::{App, AppArgs};
use handover_core::client::{Client, ClientError};
use handover_core::engine::RelayInfo;
use handover_core::store::{Credential, Passphrase, StoreError};
use handover_relay::config::Config;
use handover_relay::server::Relay;

mod support;

/// How long the expiring offer lives (seconds): long enough for Riverside to receive it.
const OFFER_TTL: u64 = 8;

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

fn side(app: &App) -> serde_json::Value {
    serde_json::json!({
        "launch": app.launch_url(),
        "origin": format!("http://{}", app.local_addr()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_organisations_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("relay"));
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin = None;
    config.wal_mib = 2;
    let relay = Relay::start(config).await.unwrap();
    let mut args = AppArgs::headless(SocketAddr::from(([127, 0, 0, 1], 0)));
    args.insecure_fast_kdf = true;
    let a = App::start(dir.path().join("harbour"), &args).await.unwrap();
    let b = App::start(dir.path().join("riverside"), &args)
        .await
        .unwrap();
    let story = serde_json::json!({
        "relay": relay.local_addr().to_string(),
        "pin": hex::encode(relay.pin()),
        "passphrase": "correct horse battery staple",
        "a": side(&a),
        "b": side(&b),
    });
    let output = play(story, dir.path().join("story.json"), "story.mjs").await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(" passed, 0 failed"),
        "the browser story failed (screenshots in target/app-browser/):\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The refusals: Harbour sends Riverside an offer that lives OFFER_TTL seconds; Riverside
    // receives it in time; both apps are opened after it expired.
    let profiles = dir.path().join("refusals");
    let info = RelayInfo {
        host_port: relay.local_addr().to_string(),
        pin: relay.pin(),
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
    let h = App::start(profiles.join("harbour"), &args).await.unwrap();
    let r = App::start(profiles.join("riverside"), &args).await.unwrap();
    let refusals = serde_json::json!({
        "passphrase": support::PASSPHRASE,
        "referral": hex::encode(id.as_bytes()),
        "a": side(&h),
        "b": side(&r),
    });
    let output = play(refusals, dir.path().join("refusals.json"), "refusals.mjs").await;
    h.stop().await.unwrap();
    r.stop().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(" passed, 0 failed"),
        "the browser refusals failed (screenshots in target/app-browser/):\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
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
    relay.shutdown().await;
}
