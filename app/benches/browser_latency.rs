//! Benchmark: a message sent in one browser appears in the other through the relay (issue 21's
//! target: p50 at most 250 ms). Starts a relay and two app servers like the browser test and
//! runs app/tests/browser/bench.mjs in headless Chromium (set up by the same script as the
//! test). `HANDOVER_BENCH_MESSAGES` sets the count (default 200). Results go in
//! docs/PERFORMANCE.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use handover_app::{App, AppArgs};
use handover_relay::config::Config;
use handover_relay::server::Relay;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path().join("relay"));
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.admin = None;
        let relay = Relay::start(config).await.unwrap();
        let mut args = AppArgs::headless(SocketAddr::from(([127, 0, 0, 1], 0)));
        args.insecure_fast_kdf = true;
        let a = App::start(dir.path().join("a"), &args).await.unwrap();
        let b = App::start(dir.path().join("b"), &args).await.unwrap();
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
        let config_path = dir.path().join("bench.json");
        std::fs::write(&config_path, serde_json::to_vec(&story).unwrap()).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let script = root.join("scripts/app-browser-test.sh");
        let status = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .arg(script)
                .env("HANDOVER_BROWSER_CONFIG", &config_path)
                .env("HANDOVER_BROWSER_SCRIPT", "bench.mjs")
                .status()
        })
        .await
        .unwrap()
        .unwrap();
        a.stop().await.unwrap();
        b.stop().await.unwrap();
        relay.shutdown().await;
        assert!(status.success(), "the benchmark failed");
    });
}
