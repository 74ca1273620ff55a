//! `handover consent ...`: consent receipts through the [`Client`]: record, the survivor's
//! copy in their language, the Kantara export, withdrawal with its fan-out, and who has
//! confirmed erasure.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use handover_core::client::Client;
use handover_core::consent::{Language, PreferredTerm, ReceiptId, SignedReceipt};
use handover_core::engine::{EngineError, PurgeReport, org_fingerprint};
use handover_core::referral::{Closed, ReferralState};
use handover_proto::e2e::v1 as wire;

use crate::forms::{self, ConsentFile};
use crate::profile::{NETWORK_WAIT, close, open, relay_hint};
use crate::referral::when;
use crate::ui::{Context, Outcome, fail};

/// `handover consent` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ConsentCommand {
    /// Record consent the person gave now: from a file (`--file consent.toml`, see
    /// cli/examples/consent.toml) or from flags. This device signs the receipt; prints its id.
    Record(Box<RecordArgs>),
    /// Show a receipt: what it covers, its state, who has confirmed erasure, and the
    /// person's copy in their language.
    Show(ShowArgs),
    /// Export a receipt as Kantara Consent Receipt v1.1 JSON.
    Export(ExportArgs),
    /// The person withdrew consent (or it expired or was invalid): records a new receipt
    /// and tells every organisation that received data under it to erase it.
    Revoke(RevokeArgs),
    /// List the receipts recorded on this device and their current state.
    List,
}

/// Options of `handover consent record`.
#[derive(Debug, Args)]
pub(crate) struct RecordArgs {
    /// A consent file (TOML); the flags below are then not used.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["principal_ref", "recipient", "purpose", "section"])]
    file: Option<PathBuf>,
    /// Pseudonymous reference of the person (never a name).
    #[arg(long, value_name = "REF")]
    principal_ref: Option<String>,
    /// An organisation the person agreed to share with: a name from `handover contacts` or
    /// its fingerprint (repeat for several).
    #[arg(long, value_name = "ORG")]
    recipient: Vec<String>,
    /// A service the recipients may provide (repeat), for example shelter.
    #[arg(long, value_name = "SERVICE")]
    service: Vec<String>,
    /// The purpose, in plain words (a referral's purpose must be the same text).
    #[arg(long, value_name = "TEXT")]
    purpose: Option<String>,
    /// A body section that may be shared (repeat): identity, safe_contact, location,
    /// guardian, reason, services_provided, risk, do_not_disclose, appointment, attachments.
    #[arg(long, value_name = "SECTION")]
    section: Vec<String>,
    /// survivor, caregiver, guardian or other.
    #[arg(long, value_name = "WHO", default_value = "survivor")]
    expressed_by: String,
    /// in_person_verbal, signed, phone or via_interpreter.
    #[arg(long, value_name = "HOW", default_value = "in_person_verbal")]
    method: String,
    /// Language of the interpreter, when --method via_interpreter.
    #[arg(long, value_name = "TAG", default_value = "")]
    interpreter_language: String,
    /// Where the consent is given, ISO 3166 code (repeat for several).
    #[arg(long, value_name = "CODE")]
    jurisdiction: Vec<String>,
    /// The data controller: your organisation's name.
    #[arg(long, value_name = "NAME")]
    controller: Option<String>,
    /// How to reach the controller's data protection contact.
    #[arg(long, value_name = "TEXT", default_value = "")]
    controller_contact: String,
    /// The privacy notice shown to the person.
    #[arg(long, value_name = "REF")]
    notice_ref: Option<String>,
    /// Language of the notice (BCP 47).
    #[arg(long, value_name = "TAG", default_value = "en")]
    notice_language: String,
    /// Days the consent is valid.
    #[arg(long, value_name = "DAYS", default_value_t = 180)]
    valid_days: u64,
    /// Days a recipient may keep the data.
    #[arg(long, value_name = "DAYS", default_value_t = 90)]
    retention_days: u64,
    /// How the person can withdraw, in words.
    #[arg(long, value_name = "TEXT")]
    withdrawal_method: Option<String>,
    /// Your caseworker id (the witness).
    #[arg(long, value_name = "ID")]
    witness: Option<String>,
    /// signature, pin or verbal_witnessed.
    #[arg(long, value_name = "HOW", default_value = "verbal_witnessed")]
    ack: String,
}

/// Options of `handover consent show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The receipt id (UUID, or its first 8 characters).
    id: String,
    /// Language of the person's copy: en, ar, uk, fr or es.
    #[arg(long, value_name = "LANG", default_value = "en")]
    lang: String,
    /// The person's preferred name, used in their copy.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The word the person chose: victim, survivor or none.
    #[arg(long, value_name = "TERM", default_value = "none")]
    term: String,
}

/// Options of `handover consent export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The receipt id.
    id: String,
    /// Write the JSON to FILE instead of standard output. FILE must not exist yet: an
    /// existing file is never overwritten.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Options of `handover consent revoke`.
#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// The receipt id.
    id: String,
    /// What happened: withdrawn (the person changed their mind), expired or invalidated.
    #[arg(long, value_name = "STATE", default_value = "withdrawn")]
    state: String,
}

/// Runs a `consent` subcommand.
pub(crate) async fn run(profile: Option<PathBuf>, command: ConsentCommand) -> Outcome {
    // Parse files before asking for the passphrase.
    let file = match &command {
        ConsentCommand::Record(a) => match &a.file {
            Some(path) => Some(forms::read_toml::<ConsentFile>(path, "consent")?),
            None => None,
        },
        _ => None,
    };
    let client = open(profile).await?;
    let result = match command {
        ConsentCommand::Record(a) => record(&client, *a, file).await,
        ConsentCommand::Show(a) => show(&client, &a).await,
        ConsentCommand::Export(a) => export(&client, &a).await,
        ConsentCommand::Revoke(a) => revoke(&client, &a).await,
        ConsentCommand::List => list(&client).await,
    };
    close(client, result).await
}

/// The receipts of this organisation held on this device (recorded here or shared by a
/// colleague device), oldest first.
async fn known_receipts(client: &Client) -> Outcome<Vec<SignedReceipt>> {
    let mut all = client
        .consent_receipts()
        .await
        .ctx("reading the consent receipts", "Report this.")?;
    all.sort_by_key(|r| (r.receipt().event_time, *r.id().as_bytes()));
    Ok(all)
}

async fn receipt(client: &Client, id: ReceiptId) -> Outcome<Option<SignedReceipt>> {
    client
        .with_engine(move |e, _, _| e.consent_receipt(&id))
        .await
        .ctx("reading the receipt", "Report this.")?
        .ctx("reading the receipt", "Report this.")
}

/// The receipt a full id (UUID or 32 hex) or a prefix of one recorded here names.
pub(crate) async fn resolve_receipt(client: &Client, text: &str) -> Outcome<ReceiptId> {
    let wanted: String = text.trim().to_ascii_lowercase().replace('-', "");
    if wanted.len() < 8 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(fail(format!(
            "{text:?} is not a consent receipt id. Give the id `handover consent record` printed \
             (or `handover consent list` shows), or at least its first 8 characters."
        )));
    }
    if wanted.len() == 32
        && let Some(id) = hex::decode(&wanted)
            .ok()
            .and_then(|b| ReceiptId::from_slice(&b))
        && receipt(client, id).await?.is_some()
    {
        return Ok(id);
    }
    let found: Vec<ReceiptId> = known_receipts(client)
        .await?
        .into_iter()
        .map(|r| r.id())
        .filter(|id| hex::encode(id.as_bytes()).starts_with(&wanted))
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(fail(format!(
            "there is no consent receipt {wanted} on this device. Run `handover consent list` \
             to see the receipts recorded here, or record one with `handover consent record`."
        ))),
        _ => Err(fail(
            "several receipts start with these characters. Give more of the id.",
        )),
    }
}

async fn record(client: &Client, args: RecordArgs, file: Option<ConsentFile>) -> Outcome {
    let contacts = crate::profile::contacts_active_first(client).await?;
    let (own_name, now) = client
        .with_engine(|e, _, now| Ok::<_, EngineError>((e.certificate()?.label().to_owned(), now)))
        .await
        .ctx("reading the profile", "Report this.")?
        .ctx("reading the profile", "Report this.")?;
    let file = match file {
        Some(f) => f,
        None => {
            let need = |name: &str, v: &Option<String>| {
                v.clone().ok_or_else(|| {
                    fail(format!(
                        "--{name} is missing. Give it, or write a consent file and use --file \
                         (see cli/examples/consent.toml)."
                    ))
                })
            };
            if args.recipient.is_empty() || args.section.is_empty() {
                return Err(fail(
                    "give at least one --recipient and one --section (what may be shared with \
                     whom), or use --file (see cli/examples/consent.toml).",
                ));
            }
            ConsentFile::from_flags(forms::ConsentFlags {
                principal_ref: need("principal-ref", &args.principal_ref)?,
                expressed_by: args.expressed_by,
                collection_method: args.method,
                interpreter_language: args.interpreter_language,
                valid_days: args.valid_days,
                jurisdictions: args.jurisdiction,
                controller: need("controller", &args.controller)?,
                controller_contact: args.controller_contact,
                notice_ref: need("notice-ref", &args.notice_ref)?,
                notice_language: args.notice_language,
                purpose: need("purpose", &args.purpose)?,
                recipients: args.recipient,
                services: args.service,
                sections: args.section,
                retention_days: args.retention_days,
                withdrawal_method: need("withdrawal-method", &args.withdrawal_method)?,
                witness: need("witness", &args.witness)?,
                ack: args.ack,
            })
        }
    };
    let draft = file.to_draft(&contacts, &own_name, now)?;
    let signed = client.record_consent(draft).await.map_err(|e| {
        fail(format!(
            "recording the consent failed: {e}. Check the fields."
        ))
    })?;
    println!(
        "Consent recorded: receipt {} (GIVEN).",
        signed.id().to_uuid_string()
    );
    println!(
        "Refer with consent_receipt = \"{}\" in the referral file; give the person their copy \
         with `handover consent show {} --lang LANG`.",
        signed.id().to_uuid_string(),
        signed.id().short()
    );
    Ok(())
}

fn state_name(state: wire::ConsentState) -> &'static str {
    state.as_str_name().trim_start_matches("CONSENT_STATE_")
}

async fn org_name(client: &Client, root: &[u8; 32]) -> Outcome<String> {
    let contacts = crate::profile::contacts_active_first(client).await?;
    Ok(contacts
        .iter()
        .find(|c| c.org_root == *root)
        .map(|c| c.display_name.clone())
        .unwrap_or_else(|| format!("organisation {}", org_fingerprint(root))))
}

async fn show(client: &Client, args: &ShowArgs) -> Outcome {
    let language = Language::from_tag(&args.lang).ok_or_else(|| {
        fail(format!(
            "--lang {:?} is not available. Use en, ar, uk, fr or es.",
            args.lang
        ))
    })?;
    let term = match args.term.trim().to_ascii_lowercase().as_str() {
        "victim" | "survivor" | "none" => PreferredTerm::from_text(&args.term),
        other => {
            return Err(fail(format!(
                "--term {other:?} is not one of victim, survivor, none. Use the word the person \
                 chose."
            )));
        }
    };
    let id = resolve_receipt(client, &args.id).await?;
    let r = receipt(client, id)
        .await?
        .ok_or_else(|| fail("the receipt disappeared while reading it. Run the command again."))?;
    let latest = client
        .with_engine(move |e, _, _| e.latest_consent_receipt(&id))
        .await
        .ctx("reading the receipt", "Report this.")?
        .ctx("reading the receipt", "Report this.")?;
    let w = r.receipt();
    println!("Consent receipt {}", id.to_uuid_string());
    println!("State: {}", state_name(r.state()));
    if let Some(prev) = r.supersedes() {
        println!("Supersedes: {}", prev.to_uuid_string());
    }
    if let Some(l) = &latest
        && l.id() != id
    {
        println!(
            "Superseded by: {} ({})",
            l.id().to_uuid_string(),
            state_name(l.state())
        );
    }
    println!(
        "Given: {}   Valid until: {}   Recipients keep data: {} days",
        when(w.event_time),
        when(w.valid_until),
        w.retention_secs / 86_400
    );
    let recipients: Vec<String> = w.recipients.iter().map(|r| r.org_name.clone()).collect();
    println!("Recipients: {}", recipients.join(", "));
    let sections: Vec<&str> = w
        .data_categories()
        .map(handover_core::referral::section_name)
        .collect();
    println!("Sections: {}", sections.join(", "));
    let purposes: Vec<&str> = w.purposes.iter().map(|p| p.purpose.as_str()).collect();
    println!("Purposes: {}", purposes.join("; "));

    // Who received data under it and who has confirmed erasure.
    let report = client
        .purge_status(id)
        .await
        .ctx("reading the erasure status", "Report this.")?;
    if report.is_empty() {
        println!("Erasure: no organisation received data under this consent.");
    }
    for p in &report {
        let who = org_name(client, &p.recipient).await?;
        let confirmed: Vec<String> = p.confirmed.iter().map(|d| hex::encode(&d.0[..4])).collect();
        let pending: Vec<String> = p.pending.iter().map(|d| hex::encode(&d.0[..4])).collect();
        let state = referral_state(client, p).await?;
        let status = erasure_status(p, state.as_ref());
        println!(
            "Erasure at {who}, referral {}: {status}; confirmed by {} device(s){}{}",
            hex::encode(p.referral.as_bytes()),
            confirmed.len(),
            if confirmed.is_empty() {
                String::new()
            } else {
                format!(" [{}]", confirmed.join(", "))
            },
            if pending.is_empty() {
                String::new()
            } else {
                format!("; pending: [{}]", pending.join(", "))
            }
        );
    }

    let copy = client
        .survivor_copy(id, language, args.name.clone(), term, None)
        .await
        .ctx("rendering the person's copy", "Report this.")?;
    println!();
    println!("--- The person's copy ({}) ---", language.tag());
    println!("{copy}");
    Ok(())
}

async fn export(client: &Client, args: &ExportArgs) -> Outcome {
    let id = resolve_receipt(client, &args.id).await?;
    let json = client
        .kantara_export(id)
        .await
        .ctx("exporting the receipt", "Report this.")?;
    let text = serde_json::to_string_pretty(&json).ctx("writing the JSON", "Report this.")?;
    match &args.out {
        Some(path) => {
            write_new(path, format!("{text}\n").as_bytes())?;
            println!(
                "Kantara Consent Receipt v1.1 JSON written to {}.",
                path.display()
            );
        }
        None => println!("{text}"),
    }
    Ok(())
}

/// Writes `bytes` to a file that must not exist yet (a receipt export never replaces another
/// file); a file left half-written by a failed write is removed.
fn write_new(path: &std::path::Path, bytes: &[u8]) -> Outcome {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                fail(format!(
                    "{} already exists; nothing was written. Choose a new file name, or move \
                     the old file away first.",
                    path.display()
                ))
            } else {
                fail(format!(
                    "could not write {}: {e}. Choose a file you can write to.",
                    path.display()
                ))
            }
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            let _ = std::fs::remove_file(path);
            fail(format!(
                "could not write {}: {e}. Choose a file you can write to.",
                path.display()
            ))
        })
}

async fn revoke(client: &Client, args: &RevokeArgs) -> Outcome {
    let state = match args.state.trim().to_ascii_lowercase().as_str() {
        "withdrawn" => wire::ConsentState::Withdrawn,
        "expired" => wire::ConsentState::Expired,
        "invalidated" => wire::ConsentState::Invalidated,
        other => {
            return Err(fail(format!(
                "--state {other:?} is not one of withdrawn, expired, invalidated."
            )));
        }
    };
    let id = resolve_receipt(client, &args.id).await?;
    let changed = tokio::time::timeout(NETWORK_WAIT, client.change_consent(id, state)).await;
    let new = match changed {
        Ok(Ok(new)) => new,
        Ok(Err(e)) => {
            return Err(fail(format!(
                "recording the change failed: {e}. If the consent was already withdrawn, see \
                 `handover consent show {}`.",
                id.short()
            )));
        }
        Err(_) => {
            // The change is recorded first, then sent: find out which happened.
            let latest = client
                .with_engine(move |e, _, _| e.latest_consent_receipt(&id))
                .await
                .ctx("reading the receipt", "Report this.")?
                .ctx("reading the receipt", "Report this.")?;
            return match latest {
                Some(l) if l.id() != id => {
                    println!(
                        "Consent {}: new receipt {}. The relay did not answer in {} seconds: \
                         the erasure requests wait in the outbox; run `handover sync` later.",
                        state_name(l.state()),
                        l.id().to_uuid_string(),
                        NETWORK_WAIT.as_secs()
                    );
                    Ok(())
                }
                _ => Err(fail(format!(
                    "the relay did not answer in {} seconds and nothing changed. {}.",
                    NETWORK_WAIT.as_secs(),
                    relay_hint()
                ))),
            };
        }
    };
    let report = client
        .purge_status(id)
        .await
        .ctx("reading the erasure status", "Report this.")?;
    let mut states = Vec::with_capacity(report.len());
    for p in &report {
        states.push(referral_state(client, p).await?);
    }
    println!(
        "Consent {}: new receipt {} (supersedes {}).",
        state_name(new.state()),
        new.id().to_uuid_string(),
        id.to_uuid_string()
    );
    println!("{}", revoke_summary(&report, &states, id));
    Ok(())
}

/// The sending side's state of the referral a report is about (`None` if its record is gone).
async fn referral_state(client: &Client, p: &PurgeReport) -> Outcome<Option<ReferralState>> {
    Ok(client
        .referral(p.referral)
        .await
        .ctx("reading the referral", "Report this.")?
        .map(|r| r.state))
}

/// Whether consent revocation moved this referral (it was open or completed, so the receiver
/// holds data and was asked to erase it).
fn revoked_here(state: Option<&ReferralState>) -> bool {
    matches!(
        state,
        Some(
            ReferralState::ConsentRevoked
                | ReferralState::PurgeConfirmed(Closed::ConsentRevoked)
                | ReferralState::RetainedUnderException {
                    after: Closed::ConsentRevoked,
                    ..
                }
        )
    )
}

/// What `consent revoke` reports: erasure is requested only where the referral still held
/// data; a referral declined, expired or withdrawn before holds nothing to erase (its offer was
/// already erased, or erasure was requested with the withdrawal).
fn revoke_summary(
    report: &[PurgeReport],
    states: &[Option<ReferralState>],
    id: ReceiptId,
) -> String {
    let mut requested = 0;
    let mut pending = 0;
    for (p, state) in report.iter().zip(states) {
        if revoked_here(state.as_ref()) {
            requested += 1;
            pending += p.pending.len();
        }
    }
    let others = report.len() - requested;
    let mut out = format!(
        "Erasure requested from {requested} referral(s); {pending} device(s) still to confirm."
    );
    if others > 0 {
        out.push_str(&format!(
            " {others} other referral(s) under this consent were declined, expired or withdrawn \
             before and hold nothing more to erase."
        ));
    }
    out.push_str(&format!(
        " Run `handover sync`, then `handover consent show {}` to see who has confirmed.",
        id.short()
    ));
    out
}

/// The erasure line of `consent show` for one referral under the receipt.
fn erasure_status(p: &PurgeReport, state: Option<&ReferralState>) -> &'static str {
    if !p.pending.is_empty() {
        return "erasure requested, waiting for confirmations";
    }
    if !p.confirmed.is_empty() {
        return "erasure confirmed by every device";
    }
    match state {
        Some(ReferralState::Declined(_) | ReferralState::PurgeConfirmed(Closed::Declined)) => {
            "nothing to erase: the referral was declined and the receiver erased the offer"
        }
        Some(ReferralState::Expired | ReferralState::PurgeConfirmed(Closed::Expired)) => {
            "nothing to erase: the offer expired and the receiver erased it"
        }
        Some(ReferralState::PurgeConfirmed(Closed::RetentionEnded)) => {
            "erased by the receiver when the retention period ended"
        }
        Some(ReferralState::Withdrawn | ReferralState::PurgeConfirmed(Closed::Withdrawn)) => {
            "the referral was withdrawn; erasure was requested then"
        }
        Some(s) if revoked_here(Some(s)) => "erasure requested, waiting for confirmations",
        None => "the referral's record is no longer on this device",
        Some(_) => "erasure not requested (consent still in force)",
    }
}

async fn list(client: &Client) -> Outcome {
    let all = known_receipts(client).await?;
    if all.is_empty() {
        println!(
            "No consent receipts on this device. Record one with `handover consent record`; \
             receipts your colleagues record arrive with `handover sync`."
        );
    }
    for r in all {
        let id = r.id();
        let w = r.receipt();
        let recipients: Vec<&str> = w.recipients.iter().map(|r| r.org_name.as_str()).collect();
        println!(
            "{}  {:<12} {}  {}  to {}",
            id.to_uuid_string(),
            state_name(r.state()),
            when(w.event_time),
            w.principal_ref,
            recipients.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use handover_core::consent::PurgeStatus;
    use handover_core::identity::DeviceId;
    use handover_core::referral::ReferralId;

    use super::*;

    fn report(n: u8, status: PurgeStatus, confirmed: usize, pending: usize) -> PurgeReport {
        PurgeReport {
            referral: ReferralId::from_slice(&[n; 16]).unwrap(),
            recipient: [9; 32],
            status,
            confirmed: (0..confirmed).map(|i| DeviceId([i as u8; 16])).collect(),
            pending: (0..pending)
                .map(|i| DeviceId([100 + i as u8; 16]))
                .collect(),
        }
    }

    /// Independent-implementation finding: after `consent revoke` with one open and one
    /// declined referral under the receipt, the CLI said "erasure requested from 2
    /// referral(s)" though the change went to one, and `consent show` called the declined
    /// referral's consent "still in force".
    #[test]
    fn revoke_counts_only_referrals_that_held_data() {
        let id = ReceiptId::from_slice(&[7; 16]).unwrap();
        let reports = [
            report(1, PurgeStatus::Pending { since: 5 }, 0, 2),
            report(2, PurgeStatus::NotRequested, 0, 0),
        ];
        let states = [
            Some(ReferralState::ConsentRevoked),
            Some(ReferralState::Declined(wire::DeclineReason::NoCapacity)),
        ];
        let text = revoke_summary(&reports, &states, id);
        assert!(
            text.starts_with("Erasure requested from 1 referral(s); 2 device(s) still to confirm."),
            "{text}"
        );
        assert!(text.contains("1 other referral(s)"), "{text}");
        assert_eq!(
            erasure_status(&reports[1], states[1].as_ref()),
            "nothing to erase: the referral was declined and the receiver erased the offer"
        );
        assert_eq!(
            erasure_status(&reports[0], states[0].as_ref()),
            "erasure requested, waiting for confirmations"
        );
        // An open referral under consent that is still given.
        assert_eq!(
            erasure_status(&reports[1], Some(&ReferralState::Acknowledged)),
            "erasure not requested (consent still in force)"
        );
        let done = report(
            3,
            PurgeStatus::Confirmed {
                at: 9,
                retained_under: None,
            },
            2,
            0,
        );
        assert_eq!(
            erasure_status(
                &done,
                Some(&ReferralState::PurgeConfirmed(Closed::ConsentRevoked))
            ),
            "erasure confirmed by every device"
        );
    }
}
