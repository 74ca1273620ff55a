//! The browser test: a relay (real QUIC on loopback), two `handover app` servers on their own
//! profiles, and scripts/app-browser-test.sh playing the two-organisation story in Debian's
//! headless Chromium with Playwright. The script installs Chromium and the pinned
//! playwright-core when they are missing; if it cannot, this test fails (it never skips).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use handover_app::{App, AppArgs};
use handover_relay::config::Config;
use handover_relay::server::Relay;

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
    let side = |app: &App| {
        serde_json::json!({
            "launch": app.launch_url(),
            "origin": format!("http://{}", app.local_addr()),
        })
    };
    let story = serde_json::json!({
        "relay": relay.local_addr().to_string(),
        "pin": hex::encode(relay.pin()),
        "passphrase": "correct horse battery staple",
        "a": side(&a),
        "b": side(&b),
    });
    let config_path = dir.path().join("story.json");
    std::fs::write(&config_path, serde_json::to_vec(&story).unwrap()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("scripts/app-browser-test.sh");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(script)
            .env("HANDOVER_BROWSER_CONFIG", &config_path)
            .output()
    })
    .await
    .unwrap()
    .expect("running scripts/app-browser-test.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    relay.shutdown().await;
    assert!(
        output.status.success(),
        "the browser story failed (screenshots in target/app-browser/):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
