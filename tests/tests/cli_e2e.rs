//! End-to-end tests of the `handover` CLI as separate processes: a relay process and several
//! CLI invocations on two profiles (invite, accept, send, sync, inbox), and the demo itself.

// Test code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// Runs the CLI with `args`, killing it after [`COMMAND_TIMEOUT`].
fn run(profile: Option<&Path>, args: &[&str]) -> CliOutput {
    run_cli(cli(), profile, args, COMMAND_TIMEOUT).unwrap()
}

fn must(profile: Option<&Path>, args: &[&str]) -> String {
    run(profile, args).expect_success(args)
}

fn organisation_key(profile: &Path) -> String {
    let out = must(Some(profile), &["whoami"]);
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("Organisation key: "))
        .unwrap();
    line.split("  (").next().unwrap().trim().to_owned()
}

fn fingerprint(profile: &Path) -> String {
    let out = must(Some(profile), &["whoami"]);
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("Organisation fingerprint: "))
        .unwrap();
    line.split("  (").next().unwrap().trim().to_owned()
}

fn init(profile: &Path, relay: &RelayProcess, name: &str) {
    init_at(profile, relay.addr, relay.pin, name);
}

fn init_at(profile: &Path, addr: std::net::SocketAddr, pin: [u8; 32], name: &str) {
    must(
        Some(profile),
        &[
            "init",
            "--relay",
            &addr.to_string(),
            "--relay-pin",
            &hex::encode(pin),
            "--name",
            name,
            "--insecure-fast-kdf",
        ],
    );
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn two_profiles_invite_accept_send_sync_inbox_over_a_relay_process() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(relay_bin(), &tmp.path().join("relay"), &[]).unwrap();
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    init(&alice, &relay, "Alice");
    init(&bob, &relay, "Bob");
    let fp_alice = fingerprint(&alice);
    let fp_bob = fingerprint(&bob);

    // Without a profile the CLI says what to do.
    let out = run(None, &["inbox"]);
    assert!(!out.ok);
    assert!(out.stderr.contains("--profile"), "{}", out.stderr);

    let invite = must(Some(&alice), &["invite"]);
    let link = invite
        .lines()
        .find(|l| l.starts_with("handover://invite#"))
        .unwrap()
        .to_owned();
    // The QR code is drawn with half blocks.
    assert!(
        invite.contains('\u{2580}') && invite.contains('\u{2584}'),
        "{invite}"
    );

    // Bob has not verified Alice's organisation yet: refused, with the fingerprint to compare.
    let out = run(Some(&bob), &["accept", &link]);
    assert!(!out.ok);
    assert!(out.stderr.contains(&fp_alice), "{}", out.stderr);
    // A wrong fingerprint is refused too.
    let out = run(Some(&bob), &["accept", &link, "--trust-org", &fp_bob]);
    assert!(!out.ok);
    assert!(out.stderr.contains("does not match"), "{}", out.stderr);
    must(Some(&bob), &["accept", &link, "--trust-org", &fp_alice]);

    // Alice sees that an untrusted organisation wrote, then trusts it after comparing.
    let out = must(Some(&alice), &["sync"]);
    assert!(out.contains(&fp_bob), "{out}");
    let out = must(Some(&alice), &["sync", "--trust-org", &fp_bob]);
    assert!(out.contains("contact card"), "{out}");
    let contacts = must(Some(&alice), &["contacts"]);
    assert!(contacts.contains("Bob"), "{contacts}");

    must(
        Some(&bob),
        &["send", "--to", "Alice", "Hello Alice, marker-31337"],
    );
    let out = must(Some(&alice), &["sync"]);
    assert!(out.contains("from Bob: Hello Alice, marker-31337"), "{out}");
    // Syncing again delivers nothing new; the inbox shows the message exactly once.
    let out = must(Some(&alice), &["sync"]);
    assert!(out.contains("0 new message(s)"), "{out}");
    let inbox = must(Some(&alice), &["inbox"]);
    assert_eq!(
        inbox.matches("Hello Alice, marker-31337").count(),
        1,
        "{inbox}"
    );

    must(Some(&alice), &["send", "--to", "Bob", "Hello Bob"]);
    let out = must(Some(&bob), &["sync"]);
    assert!(out.contains("from Alice: Hello Bob"), "{out}");

    // Unknown contacts are explained.
    let out = run(Some(&bob), &["send", "--to", "Carol", "hi"]);
    assert!(!out.ok);
    assert!(out.stderr.contains("handover contacts"), "{}", out.stderr);

    // A wrong passphrase is explained, not a crash.
    let out = Command::new(cli())
        .args(["inbox", "--profile"])
        .arg(&alice)
        .env("HANDOVER_PASSPHRASE", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("passphrase"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Panic wipe: refused without --yes, then the profile is gone (no passphrase needed).
    let out = run(Some(&bob), &["wipe"]);
    assert!(!out.ok);
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    must(Some(&bob), &["wipe", "--yes"]);
    let out = run(Some(&bob), &["inbox"]);
    assert!(!out.ok);
    assert!(out.stderr.contains("handover init"), "{}", out.stderr);

    // Nothing the people wrote is in the relay's files.
    drop(relay);
    for f in files_under(&tmp.path().join("relay")) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(12).any(|w| w == b"marker-31337"),
            "plaintext in {}",
            f.display()
        );
    }
}

/// The safety number `handover contacts verify` prints: the rows of digit groups.
/// Disappearing messages (`handover send --disappear-after`): shown while the timer runs,
/// never listed once it has passed (the sender's copy included), and never shown at all when
/// they arrive after it.
#[test]
fn disappearing_messages_are_not_shown_after_their_timer() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(relay_bin(), &tmp.path().join("relay"), &[]).unwrap();
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    init(&alice, &relay, "Alice");
    init(&bob, &relay, "Bob");
    let invite = must(Some(&alice), &["invite"]);
    let link = invite
        .lines()
        .find(|l| l.starts_with("handover://invite#"))
        .unwrap()
        .to_owned();
    must(
        Some(&bob),
        &["accept", &link, "--trust-org", &fingerprint(&alice)],
    );
    must(Some(&alice), &["sync", "--trust-org", &fingerprint(&bob)]);

    // Within its timer a disappearing message is delivered and listed.
    must(
        Some(&alice),
        &[
            "send",
            "--to",
            "Bob",
            "--disappear-after",
            "3600",
            "lasting marker-d1",
        ],
    );
    let out = must(Some(&bob), &["sync"]);
    assert!(out.contains("lasting marker-d1"), "{out}");
    assert!(must(Some(&bob), &["inbox"]).contains("lasting marker-d1"));

    // A one-second timer: once it has passed (the clock is read, not a fixed pause), the
    // sender no longer lists its copy, and the receiver, syncing only now, never shows it.
    must(
        Some(&alice),
        &[
            "send",
            "--to",
            "Bob",
            "--disappear-after",
            "1",
            "fleeting marker-d2",
        ],
    );
    let sent = std::time::SystemTime::now();
    while sent.elapsed().unwrap_or_default() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let inbox = must(Some(&alice), &["inbox"]);
    assert!(!inbox.contains("fleeting marker-d2"), "{inbox}");
    assert!(inbox.contains("lasting marker-d1"), "{inbox}");
    let out = must(Some(&bob), &["sync"]);
    assert!(!out.contains("fleeting marker-d2"), "{out}");
    let inbox = must(Some(&bob), &["inbox"]);
    assert!(!inbox.contains("fleeting marker-d2"), "{inbox}");
    assert!(inbox.contains("lasting marker-d1"), "{inbox}");
    // A timer of zero is refused.
    let out = run(
        Some(&alice),
        &["send", "--to", "Bob", "--disappear-after", "0", "x"],
    );
    assert!(!out.ok);
}

fn safety_number(out: &str) -> String {
    let groups: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && l.split(' ')
                    .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit()))
        })
        .flat_map(|l| l.split(' '))
        .collect();
    assert_eq!(groups.len(), 12, "{out}");
    groups.join(" ")
}

#[test]
fn both_sides_see_the_same_safety_number_and_only_it_marks_a_contact_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(relay_bin(), &tmp.path().join("relay"), &[]).unwrap();
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    let carol = tmp.path().join("carol");
    init(&alice, &relay, "Alice");
    init(&bob, &relay, "Bob");
    init(&carol, &relay, "Carol");
    let (fp_alice, fp_bob, fp_carol) =
        (fingerprint(&alice), fingerprint(&bob), fingerprint(&carol));
    let invite = |profile: &Path| {
        must(Some(profile), &["invite", "--no-qr"])
            .lines()
            .find(|l| l.starts_with("handover://invite#"))
            .unwrap()
            .to_owned()
    };
    must(
        Some(&bob),
        &["accept", &invite(&alice), "--trust-org", &fp_alice],
    );
    must(
        Some(&carol),
        &["accept", &invite(&alice), "--trust-org", &fp_alice],
    );
    must(Some(&alice), &["sync", "--trust-org", &fp_bob]);
    must(Some(&alice), &["sync", "--trust-org", &fp_carol]);

    // Alice and Bob see the same number; Alice and Carol another one.
    let at_alice = safety_number(&must(Some(&alice), &["contacts", "verify", "Bob"]));
    let at_bob = safety_number(&must(Some(&bob), &["contacts", "verify", "Alice"]));
    assert_eq!(at_alice, at_bob);
    let with_carol = safety_number(&must(Some(&alice), &["contacts", "verify", "Carol"]));
    assert_ne!(with_carol, at_alice);

    // An unknown contact is explained, with what to do.
    let out = run(Some(&bob), &["contacts", "verify", "Dora"]);
    assert!(!out.ok);
    assert!(out.stderr.contains("no contact called"), "{}", out.stderr);
    assert!(out.stderr.contains("handover contacts"), "{}", out.stderr);

    // Nobody is verified yet; Carol's number does not verify Bob; Bob's number does.
    let contacts = must(Some(&alice), &["contacts"]);
    assert!(!contacts.contains("  verified"), "{contacts}");
    assert!(contacts.contains("handover contacts verify"), "{contacts}");
    let out = run(
        Some(&alice),
        &["contacts", "verify", "Bob", "--matches", &with_carol],
    );
    assert!(!out.ok);
    assert!(out.stderr.contains("does not match"), "{}", out.stderr);
    let out = run(
        Some(&alice),
        &["contacts", "verify", "Bob", "--matches", "12345"],
    );
    assert!(!out.ok);
    assert!(out.stderr.contains("60 digits"), "{}", out.stderr);
    must(
        Some(&alice),
        &["contacts", "verify", "Bob", "--matches", &at_bob],
    );
    let contacts = must(Some(&alice), &["contacts"]);
    let line = |name: &str| {
        contacts
            .lines()
            .find(|l| l.contains(name))
            .unwrap()
            .to_owned()
    };
    assert!(line("Bob").contains("  verified"), "{contacts}");
    assert!(line("Carol").contains("not verified"), "{contacts}");
    must(Some(&alice), &["contacts", "verify", "Bob", "--clear"]);
    let contacts = must(Some(&alice), &["contacts"]);
    assert!(!contacts.contains("  verified"), "{contacts}");
}

#[test]
fn demo_verifies_every_step_and_the_relay_holds_no_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let kept = tmp.path().join("relay-data");
    let marker = "MARKER-q7Zp-secret";
    let out = run(
        None,
        &[
            "demo",
            "--marker",
            marker,
            "--keep-relay-data",
            kept.to_str().unwrap(),
        ],
    );
    assert!(out.ok, "demo failed: {}", out.stderr);
    // The decrypted texts are printed at the receivers.
    assert!(
        out.stdout
            .contains(&format!("decrypted at the receiver: \"A woman from our community needs a safe place tonight. [{marker}]\"")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(&format!("Amina Haddad [{marker}]")));
    assert!(out.stdout.contains("PURGE_CONFIRMED"));
    assert!(out.stdout.contains("none found"));
    // And they are absent from every file the relay kept.
    let files = files_under(&kept);
    assert!(!files.is_empty());
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        for needle in [marker.as_bytes(), b"Amina Haddad".as_slice()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "plaintext in {}",
                f.display()
            );
        }
    }
}

#[test]
fn the_demo_runs_on_a_relay_on_postgres_and_the_database_holds_no_plaintext() {
    let db = handover_relay::store::postgres::testing::TestDatabase::create()
        .expect("a PostgreSQL server for the tests (run scripts/ensure-postgres.sh)");
    let marker = "MARKER-pg-4kTq";
    let out = run(None, &["demo", "--marker", marker, "--store", &db.url]);
    assert!(out.ok, "demo failed: {}", out.stderr);
    assert!(out.stdout.contains("store on PostgreSQL"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("Amina Haddad [{marker}]")));
    assert!(out.stdout.contains("PURGE_CONFIRMED"));
    // The scan covered the database's values, and found none of the plaintexts.
    assert!(
        out.stdout.contains(" database values for "),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("none found"), "{}", out.stdout);
}

/// A relay process on a fixed loopback port (so a restarted relay has the address the profiles
/// know). Killed on drop.
struct FixedRelay {
    child: std::process::Child,
}

impl FixedRelay {
    fn start(addr: std::net::SocketAddr, data_dir: &Path) -> (Self, [u8; 32]) {
        Self::start_with(addr, data_dir, &[])
    }

    fn start_with(addr: std::net::SocketAddr, data_dir: &Path, extra: &[&str]) -> (Self, [u8; 32]) {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(relay_bin())
            .args(extra)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--admin")
            .arg("off")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--wal-mib")
            .arg("2")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.starts_with("handover-relay ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(COMMAND_TIMEOUT)
            .expect("relay did not start");
        let pin = line
            .split_whitespace()
            .find_map(|p| p.strip_prefix("pin="))
            .unwrap();
        let pin: [u8; 32] = hex::decode(pin).unwrap().try_into().unwrap();
        (Self { child }, pin)
    }
}

impl Drop for FixedRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

#[test]
fn relay_killed_before_send_and_client_killed_mid_sync_deliver_each_message_once() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = free_udp_port();
    let relay_dir = tmp.path().join("relay");
    let (relay, pin) = FixedRelay::start(addr, &relay_dir);
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    for (p, name) in [(&alice, "Alice"), (&bob, "Bob")] {
        init_at(p, addr, pin, name);
    }
    let (fp_alice, fp_bob) = (fingerprint(&alice), fingerprint(&bob));
    let invite = must(Some(&alice), &["invite", "--no-qr"]);
    let link = invite
        .lines()
        .find(|l| l.starts_with("handover://invite#"))
        .unwrap()
        .to_owned();
    must(Some(&bob), &["accept", &link, "--trust-org", &fp_alice]);
    must(Some(&alice), &["sync", "--trust-org", &fp_bob]);

    // The relay crashes (SIGKILL); Bob sends anyway: the message waits in his outbox.
    drop(relay);
    let out = must(
        Some(&bob),
        &["send", "--to", "Alice", "while the relay was down"],
    );
    assert!(out.contains("outbox"), "{out}");
    // The relay comes back on the same address with the same data (and certificate).
    let (_relay, pin2) = FixedRelay::start(addr, &relay_dir);
    assert_eq!(pin, pin2);
    let out = must(Some(&bob), &["sync"]);
    assert!(out.contains("Sent 1 waiting message"), "{out}");

    // Alice's sync is killed at once, several times, wherever it happens to be; a final sync
    // completes. The message reaches her exactly once.
    must(Some(&bob), &["send", "--to", "Alice", "second message"]);
    for _ in 0..3 {
        let mut child = Command::new(cli())
            .args(["sync", "--profile"])
            .arg(&alice)
            .env("HANDOVER_PASSPHRASE", "correct horse battery staple")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let _ = child.kill();
        let _ = child.wait();
    }
    must(Some(&alice), &["sync"]);
    must(Some(&alice), &["sync"]);
    let inbox = must(Some(&alice), &["inbox"]);
    assert_eq!(
        inbox.matches("while the relay was down").count(),
        1,
        "{inbox}"
    );
    assert_eq!(inbox.matches("second message").count(), 1, "{inbox}");
}

#[test]
fn directory_publish_search_import_and_message_once_the_relay_admits_both_organisations() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = free_udp_port();
    let relay_dir = tmp.path().join("relay");
    let (relay, pin) = FixedRelay::start(addr, &relay_dir);
    let harbour = tmp.path().join("harbour");
    let riverside = tmp.path().join("riverside");
    for (p, name) in [(&harbour, "Harbour intake"), (&riverside, "Riverside desk")] {
        init_at(p, addr, pin, name);
    }

    // Before the operator admits them, the directory refuses and says what to do.
    let out = run(
        Some(&harbour),
        &["org", "publish", "--name", "Harbour Women's Centre"],
    );
    assert!(!out.ok);
    assert!(out.stderr.contains("relay operator"), "{}", out.stderr);

    // The operator restarts the relay with both organisations admitted (same data, same port).
    drop(relay);
    let (key_h, key_r) = (organisation_key(&harbour), organisation_key(&riverside));
    let (_relay, pin2) = FixedRelay::start_with(
        addr,
        &relay_dir,
        &["--admit-org", &key_h, "--admit-org", &key_r],
    );
    assert_eq!(pin2, pin, "the relay keeps its certificate across restarts");

    let out = must(
        Some(&harbour),
        &[
            "org",
            "publish",
            "--name",
            "Harbour Women's Centre",
            "--service",
            "shelter",
            "--language",
            "ar",
            "--region",
            "Brussels",
        ],
    );
    assert!(out.contains("Published"), "{out}");

    // Riverside finds Harbour by name and by service, and not by a service it lacks.
    let fp_h = fingerprint(&harbour);
    let found = must(Some(&riverside), &["org", "directory", "--name", "harbour"]);
    assert!(found.contains("Harbour Women's Centre"), "{found}");
    assert!(found.contains(&fp_h), "{found}");
    let by_service = must(
        Some(&riverside),
        &["org", "directory", "--service", "shelter"],
    );
    assert!(
        by_service.contains("Harbour Women's Centre"),
        "{by_service}"
    );
    let none = must(
        Some(&riverside),
        &["org", "directory", "--service", "legal"],
    );
    assert!(none.contains("No organisation"), "{none}");

    // A wrong fingerprint imports nothing.
    let out = run(
        Some(&riverside),
        &[
            "org",
            "directory",
            "--name",
            "harbour",
            "--import",
            &fingerprint(&riverside),
        ],
    );
    assert!(!out.ok, "{}", out.stdout);

    // Import after verifying the fingerprint: Harbour's intake device becomes a contact, which
    // Riverside can message without an invitation.
    let out = must(
        Some(&riverside),
        &["org", "directory", "--name", "harbour", "--import", &fp_h],
    );
    assert!(out.contains("imported: 1 intake device"), "{out}");
    let contacts = must(Some(&riverside), &["contacts"]);
    assert!(contacts.contains("Harbour Women's Centre"), "{contacts}");
    must(
        Some(&riverside),
        &[
            "send",
            "--to",
            "Harbour Women's Centre",
            "found you in the directory",
        ],
    );
    must(
        Some(&harbour),
        &["sync", "--trust-org", &fingerprint(&riverside)],
    );
    let inbox = must(Some(&harbour), &["inbox"]);
    assert_eq!(
        inbox.matches("found you in the directory").count(),
        1,
        "{inbox}"
    );
}
