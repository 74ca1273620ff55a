//! `handover relay` as separate processes against two relay processes: the current relay is
//! shown; a move with a wrong pin is refused in words and changes nothing; a move with the
//! right pin tells the contact, what the contact sent to the old relay before is still
//! collected by `handover sync`, and `handover relay finish` ends the collection.

// Test code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use handover_tests::cli::{CliOutput, run_cli};
use handover_tests::process::RelayProcess;

/// Longest a single CLI invocation may take before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

fn cli() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_handover-under-test"))
}

fn relay_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_relay-under-test"))
}

fn run(profile: &Path, args: &[&str]) -> CliOutput {
    run_cli(cli(), Some(profile), args, COMMAND_TIMEOUT).unwrap()
}

fn must(profile: &Path, args: &[&str]) -> String {
    run(profile, args).expect_success(args)
}

fn fingerprint(profile: &Path) -> String {
    let out = must(profile, &["whoami"]);
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("Organisation fingerprint: "))
        .unwrap();
    line.split("  (").next().unwrap().trim().to_owned()
}

fn init(profile: &Path, relay: &RelayProcess, name: &str) {
    must(
        profile,
        &[
            "init",
            "--relay",
            &relay.addr.to_string(),
            "--relay-pin",
            &hex::encode(relay.pin),
            "--name",
            name,
            "--insecure-fast-kdf",
        ],
    );
}

#[test]
fn relay_move_by_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let r1 = RelayProcess::start(relay_bin(), &tmp.path().join("relay1"), &[]).unwrap();
    let r2 = RelayProcess::start(relay_bin(), &tmp.path().join("relay2"), &[]).unwrap();
    let (addr1, addr2) = (r1.addr.to_string(), r2.addr.to_string());
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    init(&alice, &r1, "Alice");
    init(&bob, &r1, "Bob");
    let invite = must(&alice, &["invite", "--no-qr"]);
    let link = invite
        .lines()
        .find(|l| l.starts_with("handover://invite#"))
        .unwrap()
        .to_owned();
    must(
        &bob,
        &["accept", &link, "--trust-org", &fingerprint(&alice)],
    );
    must(&alice, &["sync", "--trust-org", &fingerprint(&bob)]);

    let out = must(&alice, &["relay"]);
    assert!(out.contains(&format!("Relay: {addr1}")), "{out}");

    // A wrong pin: refused in words, still on relay 1.
    let mut wrong = r2.pin;
    wrong[0] ^= 1;
    let args = [
        "relay",
        "move",
        "--relay",
        &addr2,
        "--relay-pin",
        &hex::encode(wrong),
    ];
    let err = run(&alice, &args).expect_refusal(&args);
    assert!(err.contains("does not match the pin"), "{err}");
    assert!(err.contains("Nothing was changed"), "{err}");
    assert!(must(&alice, &["relay"]).contains(&format!("Relay: {addr1}")));

    // The move.
    let pin2 = hex::encode(r2.pin);
    let out = must(
        &alice,
        &["relay", "move", "--relay", &addr2, "--relay-pin", &pin2],
    );
    assert!(out.contains(&format!("Moved to relay {addr2}.")), "{out}");
    assert!(
        out.contains("Your new address was sent to 1 contact."),
        "{out}"
    );
    let out = must(&alice, &["whoami"]);
    assert!(out.contains(&format!("Relay: {addr2}")), "{out}");
    assert!(out.contains(&format!("Moved from relay {addr1}")), "{out}");

    // Bob has not synced: his message goes to the old address and is collected there.
    must(&bob, &["send", "--to", "Alice", "old address marker-m1"]);
    let out = must(&alice, &["sync"]);
    assert!(out.contains("old address marker-m1"), "{out}");
    // Bob reads the card; what he sends now goes to relay 2.
    must(&bob, &["sync"]);
    must(&bob, &["send", "--to", "Alice", "new address marker-m2"]);
    let out = must(&alice, &["sync"]);
    assert!(out.contains("new address marker-m2"), "{out}");

    let out = must(&alice, &["relay", "finish"]);
    assert!(out.contains("the move is finished"), "{out}");
    let out = must(&alice, &["relay"]);
    assert!(out.contains(&format!("Relay: {addr2}")), "{out}");
    assert!(!out.contains("Moved from"), "{out}");
    let out = must(&alice, &["relay", "finish"]);
    assert!(out.contains("No move in progress"), "{out}");
}
