//! End-to-end tests of the `handover` CLI as separate processes: a relay process and several
//! CLI invocations on two profiles (invite, accept, send, sync, inbox), and the demo itself.

// Test code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use handover_tests::process::RelayProcess;

/// Longest a single CLI invocation may take before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

fn cli() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_handover-under-test"))
}

fn relay_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_relay-under-test"))
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs the CLI with `args`, killing it after [`COMMAND_TIMEOUT`].
fn run(profile: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(cli());
    cmd.args(args)
        .env("HANDOVER_PASSPHRASE", "correct horse battery staple")
        .env_remove("HANDOVER_PROFILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = profile {
        cmd.arg("--profile").arg(p);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`handover {}` did not finish in time", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = Output {
        ok: status.success(),
        stdout: reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    };
    eprintln!(
        "$ handover {}\n{}{}",
        args.join(" "),
        output.stdout,
        output.stderr
    );
    output
}

fn must(profile: Option<&Path>, args: &[&str]) -> String {
    let out = run(profile, args);
    assert!(
        out.ok,
        "`handover {}` failed: {}",
        args.join(" "),
        out.stderr
    );
    out.stdout
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
    let addr = relay.addr.to_string();
    let pin = hex::encode(relay.pin);
    must(
        Some(profile),
        &[
            "init",
            "--relay",
            &addr,
            "--relay-pin",
            &pin,
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

    let invite = must(Some(&alice), &["invite", "--no-qr"]);
    let link = invite
        .lines()
        .find(|l| l.starts_with("handover://invite#"))
        .unwrap()
        .to_owned();

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
