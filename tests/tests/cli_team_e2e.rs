//! The sending organisation as a team (issue 22, docs/PROTOCOL.md §11.9) through the `handover`
//! CLI as separate processes over a relay process. Organisation A has an admin (a0), two
//! caseworker devices (a1, a2) and an ambassador; organisation B two intake devices.
//!
//! 1. a1 sends R1; a2 gets the case, the ambassador nothing. With a1 and a2 both online when B
//!    accepts, a1 (the case's holder) releases the body once: a2 records a1's release and
//!    releases nothing; each B device receives the body once.
//! 2. a1 sends R2 and goes offline for good; the admin revokes it. B accepts; a2 releases (the
//!    holder was revoked), each B device receives the body once; B completes; a2 withdraws the
//!    consent; both B devices erase and a2 sees both confirmations; the timeline verifies on a2
//!    and on B.
//! 3. A caseworker device enrolled later gets the open case (R1) but not the erased one (R2);
//!    a2 hands R1 to it, and it lists R1 as its own.

// Test code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use handover_tests::cli::{CliOutput, run_cli};
use handover_tests::process::RelayProcess;

/// Longest a single CLI invocation may take before the test fails (a hang, not a timing
/// assertion: the CLI itself gives up on the relay after 20 s).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

const PURPOSE: &str = "Safe accommodation after leaving a violent home";

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

/// Runs a command that must fail with a message (and no panic); returns its stderr.
fn refused(profile: &Path, args: &[&str]) -> String {
    run(profile, args).expect_refusal(args)
}

fn line_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
        .trim()
}

fn line_starting<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"))
}

fn relay_args(relay: &RelayProcess) -> (String, String) {
    (relay.addr.to_string(), hex::encode(relay.pin))
}

fn init(profile: &Path, relay: &RelayProcess, name: &str) {
    let (addr, pin) = relay_args(relay);
    must(
        profile,
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

/// Enrols a new device `name` with `role` into `admin`'s organisation.
fn join(admin: &Path, profile: &Path, relay: &RelayProcess, name: &str, role: &str) {
    let (addr, pin) = relay_args(relay);
    let out = must(
        profile,
        &[
            "org",
            "join-request",
            "--relay",
            &addr,
            "--relay-pin",
            &pin,
            "--name",
            name,
            "--insecure-fast-kdf",
        ],
    );
    let request = line_starting(&out, "handover://enrol-request#").to_owned();
    let out = must(admin, &["org", "enroll", &request, "--role", role]);
    let code = line_starting(&out, "handover://enrolment#").to_owned();
    must(profile, &["org", "join", &code]);
}

fn fingerprint(profile: &Path) -> String {
    let out = must(profile, &["whoami"]);
    line_after(&out, "Organisation fingerprint: ")
        .split("  (")
        .next()
        .unwrap()
        .trim()
        .to_owned()
}

/// `inviter` invites `acceptor`; the inviter syncs to learn the reply address.
fn connect(inviter: &Path, acceptor: &Path) {
    let out = must(inviter, &["invite", "--no-qr"]);
    let link = out
        .lines()
        .find(|l| l.starts_with("handover://invite#"))
        .unwrap()
        .to_owned();
    let fp_inviter = fingerprint(inviter);
    let fp_acceptor = fingerprint(acceptor);
    must(acceptor, &["accept", &link, "--trust-org", &fp_inviter]);
    must(inviter, &["sync", "--trust-org", &fp_acceptor]);
}

/// The id `handover org devices` on `profile` shows for the device named `label`.
fn device_id(profile: &Path, label: &str) -> String {
    let devices = must(profile, &["org", "devices"]);
    devices
        .lines()
        .find(|l| l.contains(label))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no device {label:?} in:\n{devices}"))
        .to_owned()
}

fn record_consent(profile: &Path, recipient: &str, principal: &str) -> String {
    let out = must(
        profile,
        &[
            "consent",
            "record",
            "--principal-ref",
            principal,
            "--recipient",
            recipient,
            "--service",
            "shelter",
            "--purpose",
            PURPOSE,
            "--section",
            "identity",
            "--section",
            "safe_contact",
            "--section",
            "reason",
            "--section",
            "risk",
            "--jurisdiction",
            "BE",
            "--controller",
            "Harbour Women's Centre",
            "--notice-ref",
            "paper notice v3",
            "--withdrawal-method",
            "Tell your caseworker.",
            "--witness",
            "CW-12",
        ],
    );
    line_after(&out, "Consent recorded: receipt ")
        .split(' ')
        .next()
        .unwrap()
        .to_owned()
}

fn refer(profile: &Path, dir: &Path, to: &str, consent: &str, case_ref: &str) -> String {
    let file = dir.join(format!("{case_ref}.toml"));
    std::fs::write(
        &file,
        format!(
            r#"
to = "{to}"
case_ref = "{case_ref}"
worker = "Duty caseworker"
services = ["shelter"]
priority = "urgent"
purpose = "{PURPOSE}"
languages = ["ar"]
age_band = "adult"
retain_days = 60
consent_receipt = "{consent}"
reason = "Left a violent partner two days ago."

[identity]
name_or_alias = "Amina"

[safe_contact]
safe_to_contact = true
channels = ["phone"]

[risk]
level = "high"
"#
        ),
    )
    .unwrap();
    let out = must(profile, &["refer", file.to_str().unwrap()]);
    line_after(&out, "Referral ID: ").to_owned()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

struct Team {
    _tmp: tempfile::TempDir,
    relay: RelayProcess,
    dir: PathBuf,
    a0: PathBuf,
    a1: PathBuf,
    a2: PathBuf,
    amb: PathBuf,
    b1: PathBuf,
    b2: PathBuf,
}

fn setup() -> Team {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let relay = RelayProcess::start(relay_bin(), &dir.join("relay"), &[]).unwrap();
    let p = |n: &str| dir.join(n);
    let (a0, a1, a2, amb, b1, b2) = (p("a0"), p("a1"), p("a2"), p("amb"), p("b1"), p("b2"));
    init(&a0, &relay, "Harbour admin");
    join(&a0, &a1, &relay, "Ana", "caseworker");
    join(&a0, &a2, &relay, "Ben", "caseworker");
    join(&a0, &amb, &relay, "Outreach", "ambassador");
    init(&b1, &relay, "Riverside intake 1");
    join(&b1, &b2, &relay, "Riverside intake 2", "caseworker");
    must(&b1, &["sync"]);
    // A's devices reach each other (the admin too, to hand out its device lists), and B.
    for (inviter, acceptor) in [
        (&a0, &a1),
        (&a0, &a2),
        (&a0, &amb),
        (&a1, &a2),
        (&a1, &amb),
        (&a2, &amb),
        (&a0, &b1),
        (&a0, &b2),
        (&a1, &b1),
        (&a1, &b2),
        (&a2, &b1),
        (&a2, &b2),
    ] {
        connect(inviter, acceptor);
    }
    for d in [&a0, &a1, &a2, &amb, &b1, &b2] {
        must(d, &["sync"]);
    }
    Team {
        _tmp: tmp,
        relay,
        dir,
        a0,
        a1,
        a2,
        amb,
        b1,
        b2,
    }
}

#[test]
fn the_sending_team_shares_cases_releases_once_and_carries_on_after_a_revocation() {
    let t = setup();
    let fp_b = fingerprint(&t.b1);

    // --- 1. R1: a1 sends; a2 holds it too, the ambassador nothing.
    let c1 = record_consent(&t.a1, &fp_b, "P-1");
    let r1 = refer(&t.a1, &t.dir, &fp_b, &c1, "HWC-1");
    let out = must(&t.a2, &["sync"]);
    assert!(
        out.contains(&format!("Referral {r1} sent by a colleague")),
        "{out}"
    );
    let listed = must(&t.a2, &["referral", "list"]);
    assert!(listed.contains(&r1) && listed.contains("org:"), "{listed}");
    assert!(must(&t.a2, &["consent", "list"]).contains(&c1));
    let out = must(&t.amb, &["sync"]);
    assert!(!out.contains(&r1), "{out}");
    assert!(must(&t.amb, &["referral", "list"]).contains("No referrals"));
    assert!(!must(&t.amb, &["consent", "list"]).contains(&c1));

    // Both a1 and a2 online when B accepts: a1 (the holder) releases, a2 does not.
    must(&t.b1, &["sync"]);
    must(&t.b2, &["sync"]);
    must(&t.b1, &["referral", "accept", &r1]);
    let out = must(&t.a1, &["sync"]);
    assert!(
        out.contains(&format!(
            "Referral {r1}: accepted; case details released to 2 device(s)"
        )),
        "{out}"
    );
    let out = must(&t.a2, &["sync"]);
    assert!(!out.contains("case details released"), "{out}");
    assert!(
        out.contains(&format!("Referral {r1}: colleague device"))
            && out.contains("released the case details"),
        "{out}"
    );
    let err = refused(&t.a2, &["referral", "release", &r1]);
    assert!(err.contains("already released"), "{err}");
    for b in [&t.b1, &t.b2] {
        let out = must(b, &["sync"]);
        assert_eq!(count(&out, "case details received"), 1, "{out}");
        let out = must(b, &["sync"]);
        assert_eq!(count(&out, "case details received"), 0, "{out}");
    }

    // --- 2. R2: a1 sends, then goes offline for good and is revoked.
    let c2 = record_consent(&t.a1, &fp_b, "P-2");
    let r2 = refer(&t.a1, &t.dir, &fp_b, &c2, "HWC-2");
    must(&t.a2, &["sync"]);
    must(&t.b1, &["sync"]);
    must(&t.b2, &["sync"]);
    let a1_id = device_id(&t.a0, "Ana");
    let out = must(&t.a0, &["org", "revoke", &a1_id, "--yes"]);
    assert!(out.contains("Revoked \"Ana\""), "{out}");
    for d in [&t.a2, &t.b1, &t.b2] {
        must(d, &["sync"]);
    }
    let listed = must(&t.a2, &["referral", "list"]);
    assert!(listed.contains(&r2), "{listed}");

    must(&t.b1, &["referral", "accept", &r2]);
    must(&t.b2, &["sync"]);
    let out = must(&t.a2, &["sync"]);
    assert!(
        out.contains(&format!(
            "Referral {r2}: accepted; case details released to 2 device(s)"
        )),
        "a2 releases for revoked a1: {out}"
    );
    for b in [&t.b1, &t.b2] {
        let out = must(b, &["sync"]);
        assert_eq!(count(&out, "case details received"), 1, "{out}");
        let shown = must(b, &["referral", "show", &r2]);
        assert!(shown.contains("Amina"), "{shown}");
    }
    must(&t.b1, &["referral", "complete", &r2]);
    must(&t.b2, &["sync"]);
    let out = must(&t.a2, &["sync"]);
    assert!(out.contains(&format!("Referral {r2}: COMPLETED")), "{out}");

    // a2 withdraws the consent a1 recorded; both B devices erase and confirm to a2.
    must(&t.a2, &["consent", "revoke", &c2]);
    for b in [&t.b1, &t.b2] {
        let out = must(b, &["sync"]);
        assert!(out.contains("erased on this device"), "{out}");
    }
    let out = must(&t.a2, &["sync"]);
    assert_eq!(
        count(&out, "confirmed erasure (PURGE_CONFIRMED)"),
        2,
        "both B devices confirm to a2: {out}"
    );
    let out = must(&t.a2, &["referral", "timeline", &r2, "--verify"]);
    assert!(out.contains("verified"), "{out}");
    for b in [&t.b1, &t.b2] {
        let out = must(b, &["referral", "timeline", &r2, "--verify"]);
        assert!(out.contains("verified"), "{out}");
    }
    let out = must(&t.a2, &["referral", "timeline", &r2]);
    assert!(out.contains("\"Ben\""), "the timeline names a2: {out}");
    assert!(out.contains("released the case details"), "{out}");

    // --- 3. A caseworker device enrolled later: R1 (open) but not R2 (erased).
    let a3 = t.dir.join("a3");
    join(&t.a0, &a3, &t.relay, "Cleo", "caseworker");
    connect(&t.a2, &a3);
    must(&t.a2, &["sync"]);
    let out = must(&a3, &["sync"]);
    assert!(
        out.contains(&format!("Referral {r1} sent by a colleague")),
        "{out}"
    );
    let listed = must(&a3, &["referral", "list"]);
    assert!(listed.contains(&r1) && !listed.contains(&r2), "{listed}");

    // a2 hands R1 to a3.
    let a3_id = device_id(&a3, "(this device)");
    let out = must(&t.a2, &["referral", "reassign", &r1, "--to", &a3_id[..8]]);
    assert!(out.contains("now assigned to device"), "{out}");
    let out = must(&a3, &["sync"]);
    assert!(out.contains("assigned it to device"), "{out}");
    let mine = must(&a3, &["referral", "list", "--mine"]);
    assert!(mine.contains(&r1) && mine.contains("mine"), "{mine}");
    let theirs = must(&t.a2, &["referral", "list", "--org"]);
    assert!(theirs.contains(&r1), "{theirs}");
}
