//! The scale benchmark runs every phase at tiny sizes and prints the figures
//! docs/PERFORMANCE.md quotes. This checks that it works, not how fast anything is or how much
//! memory it takes (figures belong to the benchmark itself, never to tests).

// Test code: unwrap and panic are the assertions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn every_phase_prints_its_figures() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_handover-scale"))
        .args(["--relay-bin", env!("CARGO_BIN_EXE_relay-under-test")])
        .args(["--dir", dir.path().to_str().unwrap()])
        .args([
            "--connections",
            "50",
            "--envelopes",
            "1000",
            "--fetches",
            "20",
        ])
        .args(["--segments", "2", "--wal-mib", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "idle connections, relay: 50 open in ",
        "idle connections, bare quinn: 50 open in ",
        "idle connections: relay / bare quinn per connection ",
        "pending envelopes: 1000 of 256 B sent in ",
        " B per pending envelope",
        "fetch of 10 envelopes, 20 times: empty store p50 / p99 ",
        "at 1000 pending ",
        "p99 ratio ",
        "restart after SIGKILL with 1000 pending: ready in ",
        "restart with 1000 pending: ready in ",
        "log size: ",
        "2 of them 30-day ones",
        "log / live ",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }
    // Both servers report their memory growth per connection.
    assert_eq!(stdout.matches(" B per connection").count(), 2, "{stdout}");
}
