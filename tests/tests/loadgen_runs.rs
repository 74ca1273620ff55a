//! The load generator runs every phase, in both runtime arrangements, and prints the figures
//! docs/PERFORMANCE.md quotes. Short phases and little load: this checks that it works, not
//! how fast anything is (timings belong to the load generator itself, never to tests).

// Test code: the helper outside the #[test] function may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn run(runtimes: &str) -> String {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_handover-loadgen"))
        .args(["--dir", dir.path().to_str().unwrap()])
        .args(["--connections", "1", "--streams", "2", "--secs", "1"])
        .args(["--warmup-secs", "0", "--wal-mib", "1"])
        .args(["--runtimes", runtimes])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{runtimes}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn every_phase_prints_its_figures_in_both_runtime_arrangements() {
    for (runtimes, named) in [
        ("separate", "servers in a separate runtime"),
        ("shared", "servers in the clients' runtime"),
    ] {
        let out = run(runtimes);
        for expected in [
            named,
            "fdatasync, 1 KiB appends:",
            "fdatasync, 1 KiB into a sparse file (the log):",
            "fdatasync, 1 KiB in place:",
            "raw quinn echo (1x2)",
            "relay durable sends (1x2)",
            "ratio to echo",
            "relay at half peak",
            "raw echo at the same rate and pacing",
            "echo behind a simulated group commit (250 us rounds, same rate)",
            "relay single sender",
            "ratio to in-place fdatasync",
            ", to the sparse file's ",
        ] {
            assert!(
                out.contains(expected),
                "{runtimes}: no {expected:?} in\n{out}"
            );
        }
        // Each fdatasync pattern says what a sync costs the CPU.
        assert_eq!(out.matches(" us per sync").count(), 3, "{out}");
        // Three group-commit phases, each with its rounds and the store's sync alone; every
        // phase made at least one durable send, so none of them reports "no syncs".
        assert_eq!(out.matches("  group commit: ").count(), 3, "{out}");
        assert_eq!(out.matches("  store sync alone: ").count(), 3, "{out}");
        assert!(!out.contains("no syncs"), "{out}");
        // The three latency phases (the relay's, the echo's, the echo's behind the simulated
        // commit) split their tail into windows.
        assert_eq!(out.matches("  windows of 100 ms: ").count(), 3, "{out}");
        // Both peak phases and the three latency phases split their CPU time between servers
        // and clients, where they run on threads of their own, and say how long each side
        // waited for a CPU.
        let split = match runtimes {
            "separate" => "  cpu by side: servers ",
            _ => " us per request (servers and clients share threads)",
        };
        assert_eq!(out.matches(split).count(), 5, "{out}");
        assert_eq!(out.matches("  waiting for a CPU: ").count(), 5, "{out}");
        // The relay's peak and latency phases name the commit thread's share; the echo's do not.
        let commit = if runtimes == "separate" { 2 } else { 0 };
        assert_eq!(
            out.matches(" (of which the commit thread ").count(),
            commit,
            "{out}"
        );
    }
}

/// `--store`: the relay on PostgreSQL in a fresh database (two nodes sharing it), then pgbench
/// running the relay's SQL per send (tests/bench/pg-send.sql) on the same database, with the
/// ratio printed; the database is dropped at the end.
#[test]
fn the_relay_on_postgresql_runs_next_to_pgbench() {
    let server = handover_relay::store::postgres::testing::server_url();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_handover-loadgen"))
        .args(["--dir", dir.path().to_str().unwrap()])
        .args(["--connections", "2", "--streams", "2", "--secs", "1"])
        .args(["--warmup-secs", "0", "--simulated-sync-us", "0"])
        .args(["--store", &server, "--store-pool-size", "2", "--nodes", "2"])
        .args(["--pgbench-clients", "1,4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "(relay on PostgreSQL, a fresh database: 2 node(s), each with 2 connections for requests)",
        "relay durable sends (2x2)",
        "pgbench, the relay's SQL per send (1 clients): ",
        "pgbench, the relay's SQL per send (4 clients): ",
        "relay at half peak",
        "relay single sender",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }
    assert_eq!(stdout.matches("relay / pgbench ").count(), 2, "{stdout}");
    // pgbench's sends all committed: none failed (a failed one would be an error in the SQL).
    assert_eq!(
        stdout
            .matches("  pgbench: number of failed transactions: 0 ")
            .count(),
        2,
        "{stdout}"
    );
}
