//! Benchmark: the referral list with 5 000 referrals (issue 21's target: rendered in at most
//! 200 ms). Builds a real profile on disk with `HANDOVER_BENCH_REFERRALS` sent referrals
//! (default 5 000) through the client core's engine over a real relay (two organisations that
//! trust each other, one consent receipt, then one offer after another without waiting for the
//! relay, the outbox flushed once at the end), stops that client, starts `handover app` on the
//! profile and runs app/tests/browser/referral_list.mjs in headless Chromium (set up by
//! scripts/app-browser-test.sh): unlock, then `HANDOVER_BENCH_LOADS` (default 30) navigations
//! to `/referrals` (the first page of 100, newest first) and as many to a filtered, ordered
//! page, each timed from the navigation's start to its load event. Before the app starts it
//! times, through the client core on the same profile, the parts the server's answer is made
//! of: the list summaries (`Engine::referral_list`, also rebuilt from scratch once), and the
//! full records the list read before summaries existed (`Engine::referrals` plus
//! `Engine::received_offer` per referral, and `Engine::pending_releases`). Results go in
//! docs/PERFORMANCE.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use handover_app::{App, AppArgs};
use handover_core::client::Client;
use handover_core::engine::RelayInfo;
use handover_core::store::{KvStore, Namespace, WriteBatch};
use handover_relay::config::Config;
use handover_relay::server::Relay;

#[path = "../tests/support/mod.rs"]
mod support;

fn main() {
    let count: usize = std::env::var("HANDOVER_BENCH_REFERRALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
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
        // Every offer waits at the relay for Riverside, which is never opened again.
        config.limits.mailbox_max_envelopes = 1_000_000;
        config.limits.mailbox_max_bytes = 1 << 34;
        config.limits.relay_max_envelopes = 1_000_000;
        config.limits.relay_max_bytes = 1 << 34;
        let relay = Relay::start(config).await.unwrap();
        let info = RelayInfo {
            host_port: relay.local_addr().to_string(),
            pin: relay.pin(),
        };
        let pair = support::Pair::create(dir.path(), info).await;
        let now = support::unix_now();
        let started = Instant::now();
        for n in 0..count {
            pair.offer(n, now, None).await;
        }
        let built = started.elapsed();
        while pair.harbour.flush_outbox().await.unwrap() > 0 {}
        let listed = pair.harbour.referrals().await.unwrap().len();
        assert_eq!(listed, count, "the profile lists {listed} referrals");
        println!(
            "profile with {count} sent referrals built in {:.1} s (outbox flushed in {:.1} s more)",
            built.as_secs_f64(),
            (started.elapsed() - built).as_secs_f64()
        );
        core_split(&pair.harbour).await;
        pair.shutdown().await;

        let args = AppArgs::headless(SocketAddr::from(([127, 0, 0, 1], 0)));
        let app = App::start(dir.path().join("harbour"), &args).await.unwrap();
        let bench = serde_json::json!({
            "passphrase": support::PASSPHRASE,
            "count": count,
            "launch": app.launch_url(),
            "origin": format!("http://{}", app.local_addr()),
        });
        let config_path = dir.path().join("bench.json");
        std::fs::write(&config_path, serde_json::to_vec(&bench).unwrap()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/app-browser-test.sh");
        let status = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .arg(script)
                .env("HANDOVER_BROWSER_CONFIG", &config_path)
                .env("HANDOVER_BROWSER_SCRIPT", "referral_list.mjs")
                .status()
        })
        .await
        .unwrap()
        .unwrap();
        app.stop().await.unwrap();
        relay.shutdown().await;
        assert!(status.success(), "the benchmark failed");
    });
}

/// Times the client core's reads behind the referral list on `client`'s profile (3 rounds).
async fn core_split(client: &Client) {
    client
        .with_engine(|e, _, _| {
            let keys = e
                .store()
                .keys_with_prefix(Namespace::Referrals, b"l/")
                .unwrap();
            let mut batch = WriteBatch::new();
            for k in &keys {
                batch.delete(Namespace::Referrals, k);
            }
            e.store_mut().apply_batch(batch).unwrap();
            let started = Instant::now();
            let rebuilt = e.referral_list().unwrap().len();
            println!(
                "core: {rebuilt} list summaries rebuilt from the records in {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
            for round in 1..=3 {
                let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
                let t = Instant::now();
                let listed = e.referral_list().unwrap().len();
                let list = ms(t);
                let t = Instant::now();
                let all = e.referrals().unwrap();
                let records = ms(t);
                let t = Instant::now();
                for s in &all {
                    e.received_offer(&s.id).unwrap();
                }
                let offers = ms(t);
                let t = Instant::now();
                e.pending_releases().unwrap();
                let pending = ms(t);
                println!(
                    "core round {round}: referral_list ({listed}) {list:.1} ms; before summaries: \
                     referrals() {records:.1} ms + received_offer per row {offers:.1} ms + \
                     pending_releases() {pending:.1} ms"
                );
            }
        })
        .await
        .unwrap();
}
