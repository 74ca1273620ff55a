//! End-to-end test of the `handover` CLI's organisation, consent and referral commands as
//! separate processes over a relay process: organisation A (one device) refers a person to
//! organisation B, whose second device was enrolled with `handover org join-request` /
//! `org enroll` / `org join`; consent is recorded, the referral goes out with an attachment,
//! B accepts, the body is released and read on both B devices, B completes, consent is
//! withdrawn and both B devices erase and confirm. Plus the refusals a caseworker can hit.

// Test code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use handover_tests::cli::{CliOutput, run_cli};
use handover_tests::process::RelayProcess;

/// Longest a single CLI invocation may take before the test fails (a hang, not a timing
/// assertion: the CLI itself gives up on the relay after 20 s).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The text that marks every plaintext, to look for where it must and must not be.
const MARKER: &str = "marker-Zq81";

fn cli() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_handover-under-test"))
}

fn relay_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_relay-under-test"))
}

/// Runs the CLI with `args` on `profile`, killing it after [`COMMAND_TIMEOUT`].
fn run(profile: &Path, args: &[&str]) -> CliOutput {
    run_cli(cli(), Some(profile), args, COMMAND_TIMEOUT).unwrap()
}

fn must(profile: &Path, args: &[&str]) -> String {
    let out = run(profile, args);
    assert!(
        out.ok,
        "`handover {}` failed: {}",
        args.join(" "),
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    out.stdout
}

/// Runs a command that must fail with a message (and no panic); returns its stderr.
fn refused(profile: &Path, args: &[&str]) -> String {
    let out = run(profile, args);
    assert!(!out.ok, "`handover {}` should have failed", args.join(" "));
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    out.stderr
}

fn line_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
        .trim()
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

/// `inviter` invites `acceptor`, who trusts the inviter's organisation; the inviter syncs
/// (trusting the acceptor's organisation) to learn the reply address.
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

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

const PURPOSE: &str = "Safe accommodation after leaving a violent home";

fn consent_toml(recipient_fp: &str) -> String {
    format!(
        r#"
principal_ref = "P-7Q2X"
expressed_by = "survivor"
collection_method = "via_interpreter"
interpreter_language = "ar"
valid_days = 180
jurisdictions = ["BE"]
notice_ref = "https://example.org/privacy/v3"
notice_language = "ar"
purposes = ["{PURPOSE}"]
sections = ["identity", "safe_contact", "reason", "risk", "attachments"]
retention_days = 90
withdrawal_method = "Tell your caseworker, any time."
witness = "CW-12"
ack = "verbal_witnessed"

[[controllers]]
name = "Harbour Women's Centre"
contact = "Data protection officer"

[[recipients]]
org = "{recipient_fp}"
services = ["shelter"]
"#
    )
}

fn referral_toml(to: &str, consent: &str, purpose: &str, extra: &str) -> String {
    format!(
        r#"
to = "{to}"
case_ref = "HWC-0193"
worker = "Duty caseworker"
services = ["shelter"]
priority = "urgent"
purpose = "{purpose}"
languages = ["ar"]
interpreter_needed = true
age_band = "adult"
retain_days = 60
consent_receipt = "{consent}"
reason = "Left a violent partner two days ago. {MARKER}"
{extra}

[identity]
name_or_alias = "Amina {MARKER}"
preferred_term = "survivor"

[safe_contact]
safe_to_contact = true
channels = ["phone"]
code_word = "bluebird"

[risk]
level = "high"
"#
    )
}

#[test]
fn org_enrolment_consent_referral_lifecycle_and_purge_over_a_relay_process() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(relay_bin(), &tmp.path().join("relay"), &[]).unwrap();
    let a = tmp.path().join("a-caseworker");
    let b1 = tmp.path().join("b-intake-1");
    let b2 = tmp.path().join("b-intake-2");
    init(&a, &relay, "Harbour caseworker");
    init(&b1, &relay, "Riverside intake 1");

    // --- B's second device joins: request on b2, enrol on b1 (admin), join on b2.
    let (addr, pin) = relay_args(&relay);
    let out = must(
        &b2,
        &[
            "org",
            "join-request",
            "--relay",
            &addr,
            "--relay-pin",
            &pin,
            "--name",
            "Riverside intake 2",
            "--insecure-fast-kdf",
        ],
    );
    let request = out
        .lines()
        .find(|l| l.starts_with("handover://enrol-request#"))
        .unwrap()
        .to_owned();
    let check = line_after(&out, "Check code: ").to_owned();
    // A role the core does not have is refused with the list of roles.
    let err = refused(&b1, &["org", "enroll", &request, "--role", "intake"]);
    assert!(err.contains("caseworker"), "{err}");
    let out = must(&b1, &["org", "enroll", &request, "--role", "caseworker"]);
    assert!(
        out.contains(&check),
        "admin shows the same check code: {out}"
    );
    let code = out
        .lines()
        .find(|l| l.starts_with("handover://enrolment#"))
        .unwrap()
        .to_owned();
    let out = must(&b2, &["org", "join", &code]);
    assert!(out.contains("Joined the organisation"), "{out}");
    must(&b1, &["sync"]);
    let fp_b = fingerprint(&b1);
    assert_eq!(
        fingerprint(&b2),
        fp_b,
        "both devices belong to organisation B"
    );
    let devices = must(&b1, &["org", "devices"]);
    assert!(devices.contains("Riverside intake 2"), "{devices}");
    assert!(devices.contains("caseworker"), "{devices}");
    // Only the root-key holder enrols.
    let out = must(
        &tmp.path().join("spare"),
        &[
            "org",
            "join-request",
            "--relay",
            &addr,
            "--relay-pin",
            &pin,
            "--name",
            "Spare",
            "--insecure-fast-kdf",
        ],
    );
    let spare = out
        .lines()
        .find(|l| l.starts_with("handover://enrol-request#"))
        .unwrap()
        .to_owned();
    let err = refused(&b2, &["org", "enroll", &spare, "--role", "caseworker"]);
    assert!(err.contains("root key"), "{err}");

    // --- A and both B devices know each other; A also knows organisation C.
    connect(&a, &b1);
    connect(&a, &b2);
    let fp_a = fingerprint(&a);
    assert_ne!(fp_a, fp_b);
    let c = tmp.path().join("c-other");
    init(&c, &relay, "Hillside clinic");
    connect(&a, &c);
    let fp_c = fingerprint(&c);

    // --- The directory: only admins publish, and only organisations the relay operator
    // admitted (this relay admits none); the message says whom to ask with what.
    let err = refused(&b2, &["org", "publish", "--name", "Riverside Safe House"]);
    assert!(err.contains("admin"), "{err}");
    let err = refused(
        &b1,
        &[
            "org",
            "publish",
            "--name",
            "Riverside Safe House",
            "--service",
            "shelter",
        ],
    );
    assert!(
        err.contains("relay operator") && err.contains("whoami"),
        "{err}"
    );
    let key = line_after(&must(&b1, &["whoami"]), "Organisation key: ")
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(key.len(), 64, "{key}");

    // --- Consent.
    let consent_file = write(&tmp.path().join("consent.toml"), &consent_toml(&fp_b));
    let out = must(
        &a,
        &[
            "consent",
            "record",
            "--file",
            consent_file.to_str().unwrap(),
        ],
    );
    let receipt = line_after(&out, "Consent recorded: receipt ")
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let listed = must(&a, &["consent", "list"]);
    assert!(
        listed.contains(&receipt) && listed.contains("GIVEN"),
        "{listed}"
    );

    // --- Refusals before anything is sent.
    // A section the consent does not cover.
    let file = write(
        &tmp.path().join("too-much.toml"),
        &referral_toml(&fp_b, &receipt, PURPOSE, "location = \"Rue Exemple 1\""),
    );
    let err = refused(&a, &["refer", file.to_str().unwrap()]);
    assert!(err.contains("section LOCATION not covered"), "{err}");
    // A purpose the consent does not cover.
    let file = write(
        &tmp.path().join("other-purpose.toml"),
        &referral_toml(&fp_b, &receipt, "Immigration advice", ""),
    );
    let err = refused(&a, &["refer", file.to_str().unwrap()]);
    assert!(err.contains("purpose not covered"), "{err}");
    // An organisation the consent does not name.
    let file = write(
        &tmp.path().join("other-org.toml"),
        &referral_toml(&fp_c, &receipt, PURPOSE, ""),
    );
    let err = refused(&a, &["refer", file.to_str().unwrap()]);
    assert!(err.contains("recipient organisation not covered"), "{err}");
    // A recipient that is not a contact.
    let file = write(
        &tmp.path().join("nobody.toml"),
        &referral_toml("Nobody House", &receipt, PURPOSE, ""),
    );
    let err = refused(&a, &["refer", file.to_str().unwrap()]);
    assert!(
        err.contains("Nobody House") && err.contains("contacts"),
        "{err}"
    );
    // A misspelt field: the message names the field and its line.
    let file = write(
        &tmp.path().join("typo.toml"),
        "to = \"x\"\ncase_ref = \"HWC-1\"\nwroker = \"Duty\"\n",
    );
    let err = refused(&a, &["refer", file.to_str().unwrap()]);
    assert!(err.contains("line 3") && err.contains("wroker"), "{err}");
    // Broken TOML syntax.
    let file = write(&tmp.path().join("broken.toml"), "to = \"x\"\npriority = \n");
    let err = refused(&a, &["refer", file.to_str().unwrap()]);
    assert!(err.contains("line 2"), "{err}");
    // A word outside the vocabulary lists the valid ones.
    let file = write(
        &tmp.path().join("asap.toml"),
        &referral_toml(&fp_b, &receipt, PURPOSE, "").replace("\"urgent\"", "\"asap\""),
    );
    let err = refused(&a, &["refer", file.to_str().unwrap()]);
    assert!(err.contains("emergency, urgent, normal"), "{err}");
    assert!(
        must(&a, &["referral", "list"]).contains("No referrals"),
        "nothing was stored by the refused attempts"
    );

    // --- The referral, with an attachment.
    let letter =
        format!("Letter from the GP, for the safe house nurse only. {MARKER}\n").repeat(2000);
    let letter_path = write(&tmp.path().join("letter.txt"), &letter);
    let file = write(
        &tmp.path().join("referral.toml"),
        &referral_toml(&fp_b, &receipt, PURPOSE, ""),
    );
    let out = must(
        &a,
        &[
            "refer",
            file.to_str().unwrap(),
            "--attach",
            letter_path.to_str().unwrap(),
        ],
    );
    let id = line_after(&out, "Referral ID: ").to_owned();
    assert_eq!(id.len(), 32, "{out}");
    assert!(out.contains("SENT"), "{out}");

    // Both B devices see the offer, without the case details.
    for b in [&b1, &b2] {
        let out = must(b, &["sync"]);
        assert!(out.contains(&format!("New referral offer {id}")), "{out}");
        let list = must(b, &["referral", "list"]);
        assert!(list.contains(&id), "{list}");
        let show = must(b, &["referral", "show", &id[..8]]);
        assert!(show.contains(PURPOSE), "{show}");
        assert!(
            !show.contains(MARKER),
            "no case details before ACCEPTED: {show}"
        );
    }
    // Unknown and malformed ids.
    let err = refused(&b1, &["referral", "show", "0123456789abcdef"]);
    assert!(
        err.contains("no referral") && err.contains("referral list"),
        "{err}"
    );
    let err = refused(&b1, &["referral", "accept", "not-an-id"]);
    assert!(err.contains("not a referral id"), "{err}");
    // The sender cannot accept its own referral.
    let err = refused(&a, &["referral", "accept", &id]);
    assert!(err.contains("only the receiving organisation"), "{err}");

    // --- B accepts; A's sync releases the body; both B devices read it.
    let out = must(&b1, &["referral", "accept", &id]);
    assert!(out.contains("ACCEPTED"), "{out}");
    let out = must(&a, &["sync"]);
    assert!(
        out.contains("case details released to 2 device(s)"),
        "{out}"
    );
    for (b, name) in [(&b1, "b1"), (&b2, "b2")] {
        let out = must(b, &["sync"]);
        assert!(out.contains("case details received"), "{out}");
        let saved = tmp.path().join(format!("saved-{name}"));
        let show = must(
            b,
            &[
                "referral",
                "show",
                &id,
                "--save-attachments",
                saved.to_str().unwrap(),
            ],
        );
        assert!(
            show.contains(&format!("IDENTITY: Amina {MARKER}")),
            "{show}"
        );
        assert!(show.contains("code word: bluebird"), "{show}");
        assert!(show.contains("ATTACHMENT: letter.txt"), "{show}");
        assert_eq!(
            std::fs::read_to_string(saved.join("letter.txt")).unwrap(),
            letter,
            "the attachment arrives intact"
        );
        assert!(show.contains("State: ACCEPTED"), "{show}");
    }

    // --- A second referral, under consent recorded with flags: questions, then declined.
    let err = refused(
        &a,
        &[
            "consent",
            "record",
            "--recipient",
            &fp_b,
            "--section",
            "identity",
        ],
    );
    assert!(err.contains("--principal-ref"), "{err}");
    let out = must(
        &a,
        &[
            "consent",
            "record",
            "--principal-ref",
            "P-8K3M",
            "--recipient",
            &fp_b,
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
    let receipt2 = line_after(&out, "Consent recorded: receipt ")
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let file = write(
        &tmp.path().join("second.toml"),
        &referral_toml(&fp_b, &receipt2, PURPOSE, ""),
    );
    let out = must(&a, &["refer", file.to_str().unwrap()]);
    let id2 = line_after(&out, "Referral ID: ").to_owned();
    must(&b1, &["sync"]);
    let out = must(
        &b1,
        &[
            "referral",
            "request-info",
            &id2,
            "--question",
            "Does she have children?",
        ],
    );
    assert!(out.contains("INFO_REQUESTED"), "{out}");
    must(&a, &["sync"]);
    let out = must(&a, &["referral", "provide-info", &id2, "--answer", "No."]);
    assert!(out.contains("ACKNOWLEDGED"), "{out}");
    must(&b1, &["sync"]);
    let err = refused(&b1, &["referral", "decline", &id2, "--reason", "busy"]);
    assert!(
        err.contains("no_capacity"),
        "the valid reasons are listed: {err}"
    );
    let out = must(
        &b1,
        &["referral", "decline", &id2, "--reason", "no_capacity"],
    );
    assert!(out.contains("DECLINED"), "{out}");
    let out = must(&a, &["sync"]);
    assert!(out.contains(&format!("Referral {id2}: DECLINED")), "{out}");
    let timeline = must(&a, &["referral", "timeline", &id2]);
    for state in [
        "INFO_REQUESTED",
        "ACKNOWLEDGED (info provided)",
        "DECLINED (no_capacity)",
    ] {
        assert!(timeline.contains(state), "{state} in {timeline}");
    }
    must(&b2, &["sync"]);

    // --- Completion.
    let out = must(
        &b1,
        &[
            "referral",
            "complete",
            &id,
            "--note",
            "Moved to her own flat",
        ],
    );
    assert!(out.contains("COMPLETED"), "{out}");
    must(&a, &["sync"]);
    must(&b2, &["sync"]);
    for p in [&a, &b2] {
        let show = must(p, &["referral", "show", &id]);
        assert!(show.contains("State: COMPLETED"), "{show}");
    }
    let err = refused(&b1, &["referral", "accept", &id]);
    assert!(err.contains("COMPLETED"), "{err}");

    // --- Consent withdrawn: both B devices erase and confirm; A sees who confirmed.
    let out = must(&a, &["consent", "revoke", &receipt]);
    assert!(out.contains("WITHDRAWN"), "{out}");
    for b in [&b1, &b2] {
        let out = must(b, &["sync"]);
        assert!(out.contains("erased"), "{out}");
        let show = must(b, &["referral", "show", &id]);
        assert!(!show.contains(MARKER), "case details erased: {show}");
        assert!(show.contains("PURGE_CONFIRMED"), "{show}");
    }
    let out = must(&a, &["sync"]);
    assert_eq!(
        out.matches("confirmed erasure (PURGE_CONFIRMED)").count(),
        2,
        "{out}"
    );
    let show = must(&a, &["consent", "show", &receipt[..8], "--lang", "fr"]);
    assert!(show.contains("confirmed by 2 device(s)"), "{show}");
    assert!(show.contains("erasure confirmed by every device"), "{show}");
    assert!(
        show.contains("Superseded by:") && show.contains("WITHDRAWN"),
        "{show}"
    );
    let export = must(&a, &["consent", "export", &receipt]);
    let json: serde_json::Value = serde_json::from_str(&export).unwrap();
    assert_eq!(json["version"], "KI-CR-v1.1.0", "{export}");
    let err = refused(&a, &["consent", "show", &receipt, "--lang", "xx"]);
    assert!(err.contains("en, ar, uk, fr or es"), "{err}");

    // --- The caseworker's timeline: DOMAIN.md names, verified.
    let timeline = must(&a, &["referral", "timeline", &id]);
    let order = [
        "SENT",
        "DELIVERED",
        "ACKNOWLEDGED",
        "ACCEPTED",
        "COMPLETED",
        "CONSENT_REVOKED",
        "PURGE_CONFIRMED",
    ];
    let mut at = 0;
    for state in order {
        let found = timeline[at..]
            .find(&format!("-> {state}"))
            .unwrap_or_else(|| panic!("{state} missing or out of order in:\n{timeline}"));
        at += found;
    }
    assert!(timeline.contains("Timeline verified"), "{timeline}");
    let out = must(&a, &["referral", "timeline", &id, "--verify"]);
    assert!(out.contains("verified"), "{out}");
    let json = must(&a, &["referral", "timeline", &id, "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["format"], "handover-timeline/1");
    assert!(
        !json.to_string().contains(MARKER),
        "no case content in the audit export"
    );
    // The receiver's erased timeline still verifies as a hash chain.
    let out = must(&b2, &["referral", "timeline", &id]);
    assert!(out.contains("hash chain verified"), "{out}");

    // Nothing the caseworker wrote reached the relay's files in the clear.
    drop(relay);
    let mut stack = vec![tmp.path().join("relay")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let bytes = std::fs::read(e.path()).unwrap();
                assert!(
                    !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
                    "plaintext in {}",
                    e.path().display()
                );
            }
        }
    }
}
