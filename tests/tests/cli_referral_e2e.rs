//! End-to-end test of the `handover` CLI's organisation, consent and referral commands as
//! separate processes over a relay process: organisation A (one device) refers a person to
//! organisation B, whose second device was enrolled with `handover org join-request` /
//! `org enroll` / `org join`; consent is recorded, the referral goes out with an attachment,
//! B accepts, the body is released once (by `sync`; `referral release` is then refused) and
//! read on both B devices, B starts the service and completes, a third referral is withdrawn,
//! consent is withdrawn and both B devices erase and confirm, and the receipts are exported to
//! files.
//! A second test revokes B's second device (`org revoke`) and checks that nothing reaches it
//! afterwards. Plus the refusals a caseworker can hit.

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
    run(profile, args).expect_success(args)
}

/// Runs a command that must fail with a message (and no panic); returns its stderr.
fn refused(profile: &Path, args: &[&str]) -> String {
    run(profile, args).expect_refusal(args)
}

/// The first line of `out` that starts with `prefix`.
fn line_starting<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"))
}

/// `org join-request` for a new device `name` in `profile`: the whole output and the request.
fn join_request(profile: &Path, relay: &RelayProcess, name: &str) -> (String, String) {
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
    (out, request)
}

/// `consent record` on `profile` for `principal`: the shelter service and purpose, to
/// organisation `recipient`, for the identity, safe-contact, reason and risk sections; returns
/// the receipt id.
fn record_shelter_consent(profile: &Path, recipient: &str, principal: &str) -> String {
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

/// How many entries the referral's timeline has on `profile` (from the JSON audit export).
fn timeline_len(profile: &Path, id: &str) -> usize {
    let json = must(profile, &["referral", "timeline", id, "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    json["entries"].as_array().unwrap().len()
}

/// A relay process in `dir`, organisation A's caseworker and organisation B's first device
/// initialised, and the profile path of B's second device (not yet created).
fn harbour_and_riverside(dir: &Path) -> (RelayProcess, PathBuf, PathBuf, PathBuf) {
    let relay = RelayProcess::start(relay_bin(), &dir.join("relay"), &[]).unwrap();
    let (a, b1, b2) = (
        dir.join("a-caseworker"),
        dir.join("b-intake-1"),
        dir.join("b-intake-2"),
    );
    init(&a, &relay, "Harbour caseworker");
    init(&b1, &relay, "Riverside intake 1");
    (relay, a, b1, b2)
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
    let (relay, a, b1, b2) = harbour_and_riverside(tmp.path());

    // --- B's second device joins: request on b2, enrol on b1 (admin), join on b2.
    let (out, request) = join_request(&b2, &relay, "Riverside intake 2");
    let check = line_after(&out, "Check code: ").to_owned();
    // A role the core does not have is refused with the list of roles.
    let err = refused(&b1, &["org", "enroll", &request, "--role", "intake"]);
    assert!(err.contains("caseworker"), "{err}");
    let out = must(&b1, &["org", "enroll", &request, "--role", "caseworker"]);
    assert!(
        out.contains(&check),
        "admin shows the same check code: {out}"
    );
    let code = line_starting(&out, "handover://enrolment#").to_owned();
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
    let (_, spare) = join_request(&tmp.path().join("spare"), &relay, "Spare");
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

    // --- `referral release`: the sync above released the body, once for the organisation
    // (docs/PROTOCOL.md §11.9): nothing is pending now, a further sync releases nothing, and
    // `referral release` is refused; the receiving devices hold the case details once.
    let entries_before = timeline_len(&a, &id);
    let out = must(&a, &["sync"]);
    assert!(!out.contains("released"), "nothing left to release: {out}");
    let err = refused(&a, &["referral", "release", &id[..8]]);
    assert!(err.contains("already released"), "{err}");
    for b in [&b1, &b2] {
        let out = must(b, &["sync"]);
        assert!(!out.contains("case details received"), "{out}");
        let show = must(b, &["referral", "show", &id]);
        assert!(
            show.contains(&format!("IDENTITY: Amina {MARKER}")),
            "{show}"
        );
        assert!(show.contains("State: ACCEPTED"), "{show}");
    }
    assert_eq!(
        timeline_len(&a, &id),
        entries_before,
        "a release is not a lifecycle step"
    );
    // Only the sender releases.
    let err = refused(&b1, &["referral", "release", &id]);
    assert!(err.contains("cannot be released"), "{err}");

    // --- `referral start-service`: IN_SERVICE on the receiving team and the sender.
    let err = refused(&a, &["referral", "start-service", &id]);
    assert!(
        err.contains("not possible") && err.contains("Receiver side"),
        "the sender cannot: {err}"
    );
    let out = must(&b1, &["referral", "start-service", &id]);
    assert!(out.contains(&format!("Referral {id}: IN_SERVICE")), "{out}");
    for p in [&a, &b2] {
        let out = must(p, &["sync"]);
        assert!(out.contains(&format!("Referral {id}: IN_SERVICE")), "{out}");
    }
    for p in [&a, &b1, &b2] {
        let show = must(p, &["referral", "show", &id]);
        assert!(show.contains("State: IN_SERVICE"), "{show}");
        let timeline = must(p, &["referral", "timeline", &id]);
        assert!(timeline.contains("(now IN_SERVICE)"), "{timeline}");
        assert!(timeline.contains("-> IN_SERVICE"), "{timeline}");
        let out = must(p, &["referral", "timeline", &id, "--verify"]);
        assert!(out.contains("verified: every hash"), "{out}");
    }
    // Twice is refused, naming the state.
    let err = refused(&b1, &["referral", "start-service", &id]);
    assert!(err.contains("IN_SERVICE"), "{err}");

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
    let receipt2 = record_shelter_consent(&a, &fp_b, "P-8K3M");
    let file = write(
        &tmp.path().join("second.toml"),
        &referral_toml(&fp_b, &receipt2, PURPOSE, ""),
    );
    let out = must(&a, &["refer", file.to_str().unwrap()]);
    let id2 = line_after(&out, "Referral ID: ").to_owned();
    // Nothing to release before the receiver accepts: refused, naming the state.
    let err = refused(&a, &["referral", "release", &id2]);
    assert!(
        err.contains("cannot be released") && err.contains("SENT"),
        "{err}"
    );
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

    // --- A third referral, withdrawn by A before B decides: both B devices erase it and
    // confirm, and B can no longer accept it.
    let file = write(
        &tmp.path().join("third.toml"),
        &referral_toml(&fp_b, &receipt2, PURPOSE, ""),
    );
    let out = must(&a, &["refer", file.to_str().unwrap()]);
    let id3 = line_after(&out, "Referral ID: ").to_owned();
    for b in [&b1, &b2] {
        let out = must(b, &["sync"]);
        assert!(out.contains(&format!("New referral offer {id3}")), "{out}");
    }
    let err = refused(&a, &["referral", "withdraw", &id3, "--reason", " "]);
    assert!(err.contains("--reason is empty"), "{err}");
    let err = refused(
        &b1,
        &[
            "referral",
            "withdraw",
            &id3,
            "--reason",
            "Not ours to withdraw",
        ],
    );
    assert!(
        err.contains("not possible") && err.contains("Sender side"),
        "only the sender withdraws: {err}"
    );
    let out = must(
        &a,
        &[
            "referral",
            "withdraw",
            &id3[..8],
            "--reason",
            "She found a place with family",
        ],
    );
    assert!(out.contains(&format!("Referral {id3}: WITHDRAWN")), "{out}");
    for b in [&b1, &b2] {
        let out = must(b, &["sync"]);
        assert!(
            out.contains(&format!(
                "Referral {id3}: the sender withdrew it (WITHDRAWN); its case content was \
                 erased on this device."
            )),
            "B is told why: {out}"
        );
        let timeline = must(b, &["referral", "timeline", &id3]);
        assert!(timeline.contains("-> WITHDRAWN"), "{timeline}");
        assert!(timeline.contains("hash chain verified"), "{timeline}");
        let show = must(b, &["referral", "show", &id3]);
        assert!(show.contains("The offer was erased"), "{show}");
        assert!(!show.contains(PURPOSE), "offer erased: {show}");
        let err = refused(b, &["referral", "accept", &id3]);
        assert!(
            err.contains("not possible") && err.contains("because the sender withdrew it"),
            "{err}"
        );
    }
    let out = must(&a, &["sync"]);
    let confirmed = out
        .lines()
        .filter(|l| {
            l.starts_with(&format!("Referral {id3}: device"))
                && l.ends_with("confirmed erasure (PURGE_CONFIRMED).")
        })
        .count();
    assert_eq!(confirmed, 2, "both B devices confirm erasure: {out}");
    let timeline = must(&a, &["referral", "timeline", &id3]);
    assert!(timeline.contains("-> WITHDRAWN"), "{timeline}");
    assert!(timeline.contains("-> PURGE_CONFIRMED"), "{timeline}");
    assert!(timeline.contains("Timeline verified"), "{timeline}");
    let err = refused(&a, &["referral", "withdraw", &id3, "--reason", "again"]);
    assert!(err.contains("not possible"), "{err}");

    // --- Revoking the consent of the declined and the withdrawn referral: neither holds
    // anything more to erase, and the CLI says so instead of counting them as requested
    // (issue 18, found by an independent implementation).
    let out = must(&a, &["consent", "revoke", &receipt2]);
    assert!(
        out.contains("Erasure requested from 0 referral(s); 0 device(s) still to confirm."),
        "{out}"
    );
    assert!(
        out.contains("2 other referral(s) under this consent"),
        "{out}"
    );
    let show = must(&a, &["consent", "show", &receipt2]);
    assert!(
        show.contains(
            "nothing to erase: the referral was declined and the receiver erased the offer"
        ),
        "{show}"
    );
    assert!(!show.contains("consent still in force"), "{show}");

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
    let withdrawal = line_after(&out, "Consent WITHDRAWN: new receipt ")
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
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

    // --- `consent export --out FILE`: the same Kantara JSON, in the file.
    let exported = tmp.path().join("receipt.json");
    let out = must(
        &a,
        &[
            "consent",
            "export",
            &receipt[..8],
            "--out",
            exported.to_str().unwrap(),
        ],
    );
    assert!(out.contains("written to"), "{out}");
    assert!(
        !out.contains("KI-CR-v1.1.0"),
        "the JSON goes to the file: {out}"
    );
    let text = std::fs::read_to_string(&exported).unwrap();
    assert_eq!(text, export, "the file holds what standard output shows");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["version"], "KI-CR-v1.1.0", "{text}");
    assert_eq!(json["consentReceiptID"], receipt.as_str(), "{text}");
    assert_eq!(json["piiPrincipalId"], "P-7Q2X", "{text}");
    assert_eq!(json["jurisdiction"], "BE", "{text}");
    assert_eq!(
        json["policyUrl"], "https://example.org/privacy/v3",
        "{text}"
    );
    assert_eq!(json["collectionMethod"], "via interpreter (ar)", "{text}");
    assert_eq!(
        json["piiControllers"][0]["piiController"], "Harbour Women's Centre",
        "{text}"
    );
    let services = json["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "one recipient organisation: {text}");
    let purposes = services[0]["purposes"].as_array().unwrap();
    assert_eq!(purposes.len(), 1, "{text}");
    assert_eq!(purposes[0]["purpose"], PURPOSE, "{text}");
    assert_eq!(
        purposes[0]["termination"],
        "Tell your caseworker, any time."
    );
    assert_eq!(purposes[0]["thirdPartyDisclosure"], true, "{text}");
    let categories: Vec<&str> = purposes[0]["piiCategory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        categories,
        ["IDENTITY", "SAFE_CONTACT", "REASON", "RISK", "ATTACHMENTS"],
        "{text}"
    );
    assert_eq!(json["handover"]["state"], "GIVEN", "{text}");
    // The withdrawal receipt supersedes it.
    let second = tmp.path().join("withdrawal.json");
    must(
        &a,
        &[
            "consent",
            "export",
            &withdrawal,
            "--out",
            second.to_str().unwrap(),
        ],
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&second).unwrap()).unwrap();
    assert_eq!(json["consentReceiptID"], withdrawal.as_str(), "{json}");
    assert_eq!(json["handover"]["state"], "WITHDRAWN", "{json}");
    assert_eq!(json["handover"]["supersedes"], receipt.as_str(), "{json}");
    // An existing file is never overwritten: refused, and the file is unchanged.
    let err = refused(
        &a,
        &[
            "consent",
            "export",
            &withdrawal,
            "--out",
            exported.to_str().unwrap(),
        ],
    );
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&exported).unwrap(), export);
    // A path that cannot be written: a missing directory, or a directory.
    let missing = tmp.path().join("no-such-dir").join("receipt.json");
    let err = refused(
        &a,
        &[
            "consent",
            "export",
            &receipt,
            "--out",
            missing.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("could not write") && err.contains("no-such-dir"),
        "{err}"
    );
    assert!(!missing.exists());
    let err = refused(
        &a,
        &[
            "consent",
            "export",
            &receipt,
            "--out",
            tmp.path().to_str().unwrap(),
        ],
    );
    assert!(err.contains("already exists"), "{err}");
    // An unknown receipt.
    let err = refused(&a, &["consent", "export", "0123abcd"]);
    assert!(err.contains("no consent receipt"), "{err}");
    let err = refused(&a, &["consent", "show", &receipt, "--lang", "xx"]);
    assert!(err.contains("en, ar, uk, fr or es"), "{err}");

    // --- The caseworker's timeline: DOMAIN.md names, verified.
    let timeline = must(&a, &["referral", "timeline", &id]);
    let order = [
        "SENT",
        "DELIVERED",
        "ACKNOWLEDGED",
        "ACCEPTED",
        "IN_SERVICE",
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

/// `org revoke`: only the root-key device revokes, an unknown id and a missing `--yes` are
/// refused; once B revokes its second device and A has synced (and so holds B's new device
/// list), A's new referral reaches B's remaining device only, and the revoked device can no
/// longer send to A.
#[test]
fn org_revoke_stops_delivery_to_the_revoked_device() {
    let tmp = tempfile::tempdir().unwrap();
    let (relay, a, b1, b2) = harbour_and_riverside(tmp.path());
    let (_, request) = join_request(&b2, &relay, "Riverside intake 2");
    let out = must(&b1, &["org", "enroll", &request, "--role", "caseworker"]);
    let code = line_starting(&out, "handover://enrolment#").to_owned();
    must(&b2, &["org", "join", &code]);
    must(&b1, &["sync"]);
    connect(&a, &b1);
    connect(&a, &b2);
    let fp_b = fingerprint(&b1);
    let id_b1 = device_id(&b1, "(this device)");
    let id_b2 = device_id(&b1, "Riverside intake 2");
    assert_eq!(device_id(&b2, "(this device)"), id_b2);

    // Refusals: not the root-key device, an unknown or too short id, no --yes, itself.
    let err = refused(&b2, &["org", "revoke", &id_b1, "--yes"]);
    assert!(err.contains("root key"), "{err}");
    let err = refused(&b1, &["org", "revoke", "00000000", "--yes"]);
    assert!(
        err.contains("no active device") && err.contains("org devices"),
        "{err}"
    );
    let err = refused(&b1, &["org", "revoke", "12ab", "--yes"]);
    assert!(err.contains("first 8 characters"), "{err}");
    let err = refused(&b1, &["org", "revoke", &id_b2]);
    assert!(
        err.contains("--yes") && err.contains("Riverside intake 2"),
        "{err}"
    );
    let err = refused(&b1, &["org", "revoke", &id_b1, "--yes"]);
    assert!(err.contains("itself"), "{err}");
    let devices = must(&b1, &["org", "devices"]);
    assert!(
        devices.contains("Riverside intake 2") && !devices.contains("revoked"),
        "nothing changed: {devices}"
    );

    // The revocation.
    let out = must(&b1, &["org", "revoke", &id_b2[..8], "--yes"]);
    assert!(out.contains("Revoked \"Riverside intake 2\""), "{out}");
    let devices = must(&b1, &["org", "devices"]);
    assert!(!devices.contains(&id_b2), "{devices}");
    assert!(devices.contains("1 device(s) revoked"), "{devices}");
    let err = refused(&b1, &["org", "revoke", &id_b2, "--yes"]);
    assert!(err.contains("no active device"), "revoked already: {err}");
    let out = must(&a, &["sync"]);
    assert!(out.contains("device list was updated"), "{out}");
    let contacts = must(&a, &["contacts"]);
    let line = contacts
        .lines()
        .find(|l| l.contains("Riverside intake 2"))
        .unwrap();
    assert!(line.contains("revoked"), "{contacts}");
    assert!(
        !contacts
            .lines()
            .find(|l| l.contains("Riverside intake 1"))
            .unwrap()
            .contains("revoked"),
        "{contacts}"
    );
    // Nothing goes to the revoked device, and A is told why (not to check the relay).
    let err = refused(&a, &["send", "--to", "Riverside intake 2", "Hello?"]);
    assert!(
        err.contains("revoked by its organisation") && !err.contains("relay"),
        "{err}"
    );

    // A new referral from A goes to B's remaining device only.
    let receipt = record_shelter_consent(&a, &fp_b, "P-4R7T");
    let file = write(
        &tmp.path().join("referral.toml"),
        &referral_toml(&fp_b, &receipt, PURPOSE, ""),
    );
    let out = must(&a, &["refer", file.to_str().unwrap()]);
    let id = line_after(&out, "Referral ID: ").to_owned();
    assert!(
        out.contains("every reachable device of \"Riverside intake 1\""),
        "B is named after a device it still has: {out}"
    );
    let out = must(&b1, &["sync"]);
    assert!(out.contains(&format!("New referral offer {id}")), "{out}");
    let out = must(&b2, &["sync"]);
    assert!(
        !out.contains(&id),
        "the revoked device gets no offer: {out}"
    );
    let err = refused(&b2, &["referral", "show", &id]);
    assert!(err.contains("no referral"), "{err}");
    must(&b1, &["referral", "accept", &id]);
    let out = must(&a, &["sync"]);
    assert!(
        out.contains(&format!(
            "Referral {id}: accepted; case details released to 1 device(s)"
        )),
        "only the remaining device gets the case details: {out}"
    );
    let out = must(&b1, &["sync"]);
    assert!(out.contains("case details received"), "{out}");

    // The revoked device does not know it was revoked and still sends, but A drops what it
    // sends and says so.
    let text = format!("Still here? {MARKER}");
    let out = must(&b2, &["send", "--to", "Harbour caseworker", &text]);
    assert!(out.contains("Sent"), "{out}");
    let out = run(&a, &["sync"]);
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("0 new message(s)"), "{}", out.stdout);
    assert!(out.stderr.contains("revoked device"), "{}", out.stderr);
    assert!(!must(&a, &["inbox"]).contains(&text));
}
