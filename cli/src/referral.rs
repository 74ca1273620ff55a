//! `handover refer FILE.toml` and `handover referral ...`: sending a referral and taking it
//! through its lifecycle (shared/DOMAIN.md state names), through the [`Client`] only.
//!
//! Releasing the body: when the receiving organisation accepts, the sender's `handover sync`
//! sees the ACCEPTED step and releases the case details to the receiving organisation's
//! caseworker and admin devices (never to ambassadors), as the demo does: at once on the device
//! the referral is assigned to, after ten minutes (or at once if that device was revoked) on
//! its colleagues' devices; `handover referral release ID` releases them now if nobody has.
//! They are released once for the organisation (docs/PROTOCOL.md §11.9). The core keeps
//! "accepted, not yet released" durably, so a sync that was interrupted (or a crash after
//! ACCEPTED arrived) is caught up by the next `handover sync`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use handover_core::client::{Client, ClientError, TimelineCheck};
use handover_core::engine::{EngineError, OfferConsent, ReferralEvent, org_fingerprint};
use handover_core::referral::{
    Action, Outcome as ServiceOutcome, ReferralError, ReferralId, Side, TeamAction,
};
use handover_proto::e2e::v1 as wire;
use handover_proto::e2e::v1::body_section::Content;
use serde_json::Value;

use crate::consent::resolve_receipt;
use crate::forms::{self, ReferralFile};
use crate::profile::{NETWORK_WAIT, close, open, relay_hint};
use crate::ui::{Context, Outcome, Progress, fail, human_size};

/// Longest one attachment upload may take before the CLI gives up on it.
const UPLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Options of `handover refer`.
#[derive(Debug, Args)]
pub(crate) struct ReferArgs {
    /// The referral file (TOML). `cli/examples/referral.toml` shows every field; the offer
    /// fields (no names or contact details), the consent (`consent_receipt = "ID"` or a
    /// `[consent]` table), and the body sections ([identity], [safe_contact], [risk], ...).
    file: PathBuf,
    /// A file to attach to the body (repeat for several). It is encrypted on this device
    /// and uploaded to your relay; the consent must cover the "attachments" section.
    #[arg(long = "attach", value_name = "PATH")]
    attach: Vec<PathBuf>,
}

/// `handover referral` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ReferralCommand {
    /// List the referrals on this device (sent and received) with their state. A sent
    /// referral belongs to the organisation: every caseworker and admin device holds it; the
    /// HOLDER column says whether it is assigned to this device ("mine") or to a colleague.
    List(ListArgs),
    /// Show a referral: its state, the offer, and the case details once released.
    Show(ShowArgs),
    /// Receiving side: accept (acknowledges first if needed). The sender's device then
    /// releases the case details; run `handover sync` to receive them.
    Accept(IdArg),
    /// Receiving side: decline with a reason; the offer is erased here.
    Decline(DeclineArgs),
    /// Receiving side: ask the sender questions before deciding.
    RequestInfo(RequestInfoArgs),
    /// Sending side: answer the receiver's questions.
    ProvideInfo(ProvideInfoArgs),
    /// Receiving side: service has started (IN_SERVICE).
    StartService(IdArg),
    /// Receiving side: service ended (COMPLETED), successful unless --not-successful.
    Complete(CompleteArgs),
    /// Sending side: withdraw the referral; the receiver erases what it has and confirms.
    Withdraw(WithdrawArgs),
    /// Sending side: send the case details of an accepted referral to the receiving
    /// organisation now, if no device of your organisation has (`handover sync` does this on
    /// its own: at once on the device the referral is assigned to, after ten minutes on the
    /// others). They are released once.
    Release(IdArg),
    /// Sending side: hand a referral to another caseworker or admin device of your
    /// organisation (or take it: `--to me`). Signed by this device; every colleague device
    /// records it.
    Reassign(ReassignArgs),
    /// The signed, hash-chained timeline of a referral, with DOMAIN.md state names; the
    /// chain and signatures are verified every time.
    Timeline(TimelineArgs),
}

/// Options of `handover referral list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only the sent referrals assigned to this device.
    #[arg(long, conflicts_with = "org")]
    mine: bool,
    /// Only the sent referrals of your organisation assigned to other devices.
    #[arg(long)]
    org: bool,
}

/// Options of `handover referral reassign`.
#[derive(Debug, Args)]
pub(crate) struct ReassignArgs {
    /// The referral id.
    id: String,
    /// The device that takes the case: its device id as `handover org devices` shows it (or
    /// its first 8 characters), or `me`.
    #[arg(long, value_name = "DEVICE")]
    to: String,
}

/// A referral id argument.
#[derive(Debug, Args)]
pub(crate) struct IdArg {
    /// The referral id as `handover referral list` shows it (or its first 8 characters).
    id: String,
}

/// Options of `handover referral show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The referral id (or its first 8 characters).
    id: String,
    /// Download, decrypt and verify the attachments into DIR.
    #[arg(long, value_name = "DIR")]
    save_attachments: Option<PathBuf>,
}

/// Options of `handover referral decline`.
#[derive(Debug, Args)]
pub(crate) struct DeclineArgs {
    /// The referral id.
    id: String,
    /// out_of_mandate, no_capacity, service_unavailable, conflict_of_interest,
    /// insufficient_information, survivor_declined or other.
    #[arg(long, value_name = "REASON")]
    reason: String,
    /// A note for the sender.
    #[arg(long, value_name = "TEXT", default_value = "")]
    note: String,
}

/// Options of `handover referral request-info`.
#[derive(Debug, Args)]
pub(crate) struct RequestInfoArgs {
    /// The referral id.
    id: String,
    /// A question (repeat for several).
    #[arg(long = "question", value_name = "TEXT", required = true)]
    questions: Vec<String>,
}

/// Options of `handover referral provide-info`.
#[derive(Debug, Args)]
pub(crate) struct ProvideInfoArgs {
    /// The referral id.
    id: String,
    /// An answer (repeat for several).
    #[arg(long = "answer", value_name = "TEXT", required = true)]
    answers: Vec<String>,
}

/// Options of `handover referral complete`.
#[derive(Debug, Args)]
pub(crate) struct CompleteArgs {
    /// The referral id.
    id: String,
    /// The service did not succeed, with a reason: client_refused, lack_of_capacity,
    /// no_longer_needed, unable_to_contact_client, unable_to_contact_organisation or other.
    #[arg(long, value_name = "REASON")]
    not_successful: Option<String>,
    /// A note for the sender.
    #[arg(long, value_name = "TEXT", default_value = "")]
    note: String,
}

/// Options of `handover referral withdraw`.
#[derive(Debug, Args)]
pub(crate) struct WithdrawArgs {
    /// The referral id.
    id: String,
    /// Why, in words (sent to the receiver; not kept in the timeline).
    #[arg(long, value_name = "TEXT")]
    reason: String,
}

/// Options of `handover referral timeline`.
#[derive(Debug, Args)]
pub(crate) struct TimelineArgs {
    /// The referral id.
    id: String,
    /// Only verify: print the result of the check, not the entries (exit code 0 only if it
    /// verified).
    #[arg(long)]
    verify: bool,
    /// Print the audit export as JSON (no case content) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs a `referral` subcommand.
pub(crate) async fn run(profile: Option<PathBuf>, command: ReferralCommand) -> Outcome {
    let client = open(profile).await?;
    let result = run_with(&client, command).await;
    close(client, result).await
}

async fn run_with(client: &Client, command: ReferralCommand) -> Outcome {
    match command {
        ReferralCommand::List(a) => list(client, &a).await,
        ReferralCommand::Show(a) => show(client, &a).await,
        ReferralCommand::Accept(a) => decide(client, &a.id, Action::Accept).await,
        ReferralCommand::Decline(a) => {
            let reason = forms::decline_reason("--reason", &a.reason)?;
            let action = Action::Decline {
                reason,
                note: a.note.clone(),
            };
            decide(client, &a.id, action).await
        }
        ReferralCommand::RequestInfo(a) => {
            let action = Action::RequestInfo {
                questions: a.questions.clone(),
            };
            decide(client, &a.id, action).await
        }
        ReferralCommand::ProvideInfo(a) => {
            let action = Action::ProvideInfo {
                answers: a.answers.clone(),
            };
            act(client, &a.id, action).await
        }
        ReferralCommand::StartService(a) => act(client, &a.id, Action::StartService).await,
        ReferralCommand::Complete(a) => {
            let outcome = match &a.not_successful {
                None => ServiceOutcome::Successful,
                Some(r) => ServiceOutcome::NotSuccessful(forms::not_successful_reason(
                    "--not-successful",
                    r,
                )?),
            };
            let action = Action::Complete {
                outcome,
                note: a.note.clone(),
            };
            act(client, &a.id, action).await
        }
        ReferralCommand::Withdraw(a) => {
            if a.reason.trim().is_empty() {
                Err(fail(
                    "--reason is empty. Say why the referral is withdrawn.",
                ))
            } else {
                let action = Action::Withdraw {
                    reason: a.reason.clone(),
                };
                act(client, &a.id, action).await
            }
        }
        ReferralCommand::Release(a) => release(client, &a.id).await,
        ReferralCommand::Reassign(a) => reassign(client, &a).await,
        ReferralCommand::Timeline(a) => timeline(client, &a).await,
    }
}

/// The referral a full id or id prefix names.
pub(crate) async fn resolve(client: &Client, text: &str) -> Outcome<ReferralId> {
    let wanted: String = text.trim().to_ascii_lowercase().replace('-', "");
    if wanted.len() < 8 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(fail(format!(
            "{text:?} is not a referral id. Give the id as `handover referral list` shows it \
             (32 hex characters, or at least the first 8)."
        )));
    }
    let all = client
        .referrals()
        .await
        .ctx("reading referrals", "Report this.")?;
    let found: Vec<ReferralId> = all
        .iter()
        .map(|s| s.id)
        .filter(|id| hex::encode(id.as_bytes()).starts_with(&wanted))
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(fail(format!(
            "there is no referral {wanted} on this device. Run `handover referral list` to \
             see the referrals here (run `handover sync` first to fetch new offers)."
        ))),
        _ => Err(fail(
            "several referrals start with these characters. Give more of the id.",
        )),
    }
}

async fn org_names(client: &Client) -> Outcome<Vec<([u8; 32], String)>> {
    let contacts = crate::profile::contacts_active_first(client).await?;
    let mut out: Vec<([u8; 32], String)> = Vec::new();
    for c in contacts {
        if !out.iter().any(|(r, _)| *r == c.org_root) {
            out.push((c.org_root, c.display_name));
        }
    }
    Ok(out)
}

fn org_label(names: &[([u8; 32], String)], root: &[u8; 32]) -> String {
    match names.iter().find(|(r, _)| r == root) {
        Some((_, n)) => format!("{n} ({})", short_fp(root)),
        None => format!("organisation {}", short_fp(root)),
    }
}

fn short_fp(root: &[u8; 32]) -> String {
    org_fingerprint(root)
        .split(' ')
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn id_hex(id: &ReferralId) -> String {
    hex::encode(id.as_bytes())
}

/// "2026-11-21 12:00 UTC" from Unix seconds.
pub(crate) fn when(secs: u64) -> String {
    let rem = secs % 86_400;
    format!(
        "{} {:02}:{:02} UTC",
        handover_core::consent::utc_date(secs),
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// `handover refer`.
pub(crate) async fn refer(profile: Option<PathBuf>, args: ReferArgs) -> Outcome {
    let file: ReferralFile = forms::read_toml(&args.file, "referral")?;
    match (&file.consent_receipt, &file.consent) {
        (Some(_), Some(_)) => {
            return Err(fail(
                "the referral file has both consent_receipt and a [consent] table. Keep one: \
                 the id of a receipt you recorded, or the [consent] table to record it now.",
            ));
        }
        (None, None) => {
            return Err(fail(
                "the referral file names no consent. Add consent_receipt = \"ID\" (from \
                 `handover consent record`) or a [consent] table; sharing without consent is \
                 not possible from the command line.",
            ));
        }
        _ => {}
    }
    let mut files = Vec::new();
    for path in &args.attach {
        // Checked before anything is sent; the file itself is streamed at upload.
        let size = std::fs::File::open(path)
            .and_then(|f| f.metadata())
            .map_err(|e| {
                fail(format!(
                    "could not read the attachment {}: {e}. Check the path.",
                    path.display()
                ))
            })?
            .len();
        files.push((path.clone(), size));
    }
    let client = open(profile).await?;
    let result = refer_with(&client, &file, files).await;
    close(client, result).await
}

fn media_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "odt" => "application/vnd.oasis.opendocument.text",
        _ => "application/octet-stream",
    }
}

async fn refer_with(client: &Client, file: &ReferralFile, files: Vec<(PathBuf, u64)>) -> Outcome {
    let contacts = crate::profile::contacts_active_first(client).await?;
    let (own_root, own_name, now) = client
        .with_engine(|e, _, now| {
            Ok::<_, EngineError>((e.org_root()?, e.certificate()?.label().to_owned(), now))
        })
        .await
        .ctx("reading the profile", "Report this.")?
        .ctx("reading the profile", "Report this.")?;
    let (draft, mut sections) = file.to_draft(&contacts, own_root, &own_name, now)?;
    let to_name = draft.to.org_name.clone();

    // Consent: an existing receipt, or record the [consent] table now.
    let receipt = match (&file.consent_receipt, &file.consent) {
        (Some(id), _) => resolve_receipt(client, id).await?,
        (None, Some(table)) => {
            let draft = table.to_draft(&contacts, &own_name, now)?;
            let receipt = client.record_consent(draft).await.map_err(|e| {
                fail(format!(
                    "recording the consent failed: {e}. Check the [consent] table."
                ))
            })?;
            println!(
                "Consent recorded: receipt {} (GIVEN).",
                receipt.id().to_uuid_string()
            );
            receipt.id()
        }
        (None, None) => return Err(fail("the referral file names no consent.")),
    };

    // Attachments: encrypted here, uploaded with a progress bar.
    let mut attachments = Vec::new();
    for (path, size) in &files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("attachment")
            .to_owned();
        let mut bar = Progress::new(
            &format!("uploading {name} (encrypted)"),
            handover_core::attachment::ciphertext_len(*size),
        );
        let uploaded = tokio::time::timeout(
            UPLOAD_WAIT,
            client.upload_attachment_file(path, media_type(path), &name, |done| bar.update(done)),
        )
        .await;
        bar.finish();
        match uploaded {
            Ok(Ok(a)) => attachments.push(a),
            Ok(Err(e)) => {
                return Err(fail(format!(
                    "uploading {name} failed: {e}. {}. Nothing was sent.",
                    relay_hint()
                )));
            }
            Err(_) => {
                return Err(fail(format!(
                    "uploading {name} did not finish in {} seconds. {}. Nothing was sent.",
                    UPLOAD_WAIT.as_secs(),
                    relay_hint()
                )));
            }
        }
    }
    if !attachments.is_empty() {
        sections.push(wire::BodySection {
            content: Some(Content::Attachments(wire::AttachmentsSection {
                attachments,
            })),
        });
    }

    let before: Vec<ReferralId> = client
        .referrals()
        .await
        .ctx("reading referrals", "Report this.")?
        .into_iter()
        .map(|s| s.id)
        .collect();
    let sent = tokio::time::timeout(
        NETWORK_WAIT,
        client.send_referral(draft, sections, OfferConsent::Receipt(receipt)),
    )
    .await;
    let id = match sent {
        Ok(Ok(id)) => id,
        Ok(Err(ClientError::Engine(EngineError::NoSession))) => {
            return Err(fail(format!(
                "no device of {to_name:?} can be reached from here yet: nothing was sent. \
                 Exchange an invitation with the receiving organisation's devices (`handover \
                 invite` / `handover accept`, then `handover sync`), or import them from the \
                 directory (`handover org directory --import FINGERPRINT`)."
            )));
        }
        Ok(Err(ClientError::Engine(e))) => {
            return Err(fail(format!(
                "the referral was refused and nothing was sent: {e}. Fix the referral file or \
                 record a consent that covers it (`handover consent record`), then run \
                 `handover refer` again."
            )));
        }
        Ok(Err(e)) => {
            return Err(fail(format!(
                "sending the referral failed: {e}. {}.",
                relay_hint()
            )));
        }
        Err(_) => {
            let after = client
                .referrals()
                .await
                .ctx("reading referrals", "Report this.")?;
            return match after.iter().find(|s| !before.contains(&s.id)) {
                Some(s) => {
                    println!("Referral ID: {}", id_hex(&s.id));
                    println!(
                        "The relay did not answer in {} seconds: the referral is saved and its \
                         offer waits in the outbox. Run `handover sync` later to send it.",
                        NETWORK_WAIT.as_secs()
                    );
                    Ok(())
                }
                None => Err(fail(format!(
                    "the relay did not answer in {} seconds and nothing was sent. {}.",
                    NETWORK_WAIT.as_secs(),
                    relay_hint()
                ))),
            };
        }
    };
    let state = client
        .referral(id)
        .await
        .ctx("reading the referral", "Report this.")?
        .map(|s| s.state.name())
        .unwrap_or("?");
    println!("Referral ID: {}", id_hex(&id));
    println!(
        "Consent check passed (receipt {}); the signed offer went to every reachable device of \
         {to_name:?}: {state}. The case details stay here until they accept.",
        receipt.short()
    );
    Ok(())
}

/// `handover referral list`.
async fn list(client: &Client, args: &ListArgs) -> Outcome {
    let mut all = client
        .referrals()
        .await
        .ctx("reading referrals", "Report this.")?;
    if args.mine || args.org {
        all.retain(|s| s.side == Side::Sender && s.mine == args.mine);
    }
    if all.is_empty() {
        println!(
            "No referrals on this device. Send one with `handover refer FILE.toml`; run \
             `handover sync` to fetch offers sent to you."
        );
        return Ok(());
    }
    let names = org_names(client).await?;
    for s in all {
        let offer = client
            .with_engine(move |e, _, _| e.received_offer(&s.id))
            .await
            .ctx("reading the offer", "Report this.")?
            .ctx("reading the offer", "Report this.")?;
        let what = offer
            .map(|o| {
                format!(
                    "{} {} {}",
                    o.priority().as_str_name().trim_start_matches("PRIORITY_"),
                    o.services_requested()
                        .map(|v| v.as_str_name().trim_start_matches("SERVICE_"))
                        .collect::<Vec<_>>()
                        .join(","),
                    o.sender_case_ref
                )
            })
            .unwrap_or_else(|| "(offer erased)".to_owned());
        let (dir, who) = match s.side {
            Side::Sender => ("to  ", org_label(&names, &s.counterpart)),
            Side::Receiver => ("from", org_label(&names, &s.counterpart)),
        };
        let holder = match (s.side, s.mine, s.assignee) {
            (Side::Receiver, _, _) => "team".to_owned(),
            (Side::Sender, true, _) => "mine".to_owned(),
            (Side::Sender, false, Some(d)) => format!("org:{}", hex::encode(&d.0[..4])),
            (Side::Sender, false, None) => "org".to_owned(),
        };
        println!(
            "{}  {:<16} {holder:<12} {dir} {who}  {what}",
            id_hex(&s.id),
            s.state.name()
        );
    }
    Ok(())
}

/// `handover referral show`.
async fn show(client: &Client, args: &ShowArgs) -> Outcome {
    let id = resolve(client, &args.id).await?;
    let summary = client
        .referral(id)
        .await
        .ctx("reading the referral", "Report this.")?
        .ok_or_else(|| fail("the referral disappeared while reading it. Run the command again."))?;
    let names = org_names(client).await?;
    println!("Referral {}", id_hex(&id));
    println!("State: {}", summary.state.name());
    match summary.side {
        Side::Sender => println!("You sent it to {}", org_label(&names, &summary.counterpart)),
        Side::Receiver => println!("Received from {}", org_label(&names, &summary.counterpart)),
    }
    let offer = client
        .with_engine(move |e, _, _| e.received_offer(&id))
        .await
        .ctx("reading the offer", "Report this.")?
        .ctx("reading the offer", "Report this.")?;
    match &offer {
        Some(o) => print_offer(o),
        None => println!("The offer was erased on this device."),
    }
    if summary.side == Side::Receiver {
        let mut any = false;
        let mut attachments = Vec::new();
        for section in (1..=10).filter_map(|i| wire::Section::try_from(i).ok()) {
            let got = client
                .with_engine(move |e, _, _| e.received_section(&id, section))
                .await
                .ctx("reading the case details", "Report this.")?
                .ctx("reading the case details", "Report this.")?;
            if let Some(s) = got {
                if !any {
                    println!("Case details (released by the sender):");
                    any = true;
                }
                if let Some(Content::Attachments(a)) = &s.content {
                    attachments.extend(a.attachments.iter().cloned());
                }
                print_section(&s);
            }
        }
        if !any {
            if offer.is_none() {
                println!("Case details: none (erased on this device).");
            } else if summary.state.body_allowed() {
                println!("Case details: not here yet; run `handover sync` to receive them.");
            } else if summary.state.is_open() {
                println!(
                    "Case details: released only after you accept (`handover referral accept \
                     ID`)."
                );
            } else {
                println!("Case details: none ({}).", summary.state.name());
            }
        }
        if let Some(dir) = &args.save_attachments {
            save_attachments(client, &attachments, dir).await?;
        }
    } else if args.save_attachments.is_some() {
        println!("(Attachments are saved on the receiving side; you hold the originals.)");
    }
    Ok(())
}

fn print_offer(o: &wire::ReferralOffer) {
    let list = |v: Vec<&str>| v.join(", ");
    println!(
        "Kind: {}   Priority: {}   Respond by: {}",
        o.kind().as_str_name().trim_start_matches("REFERRAL_KIND_"),
        o.priority().as_str_name().trim_start_matches("PRIORITY_"),
        when(o.respond_by)
    );
    let from = o.from.clone().unwrap_or_default();
    let to = o.to.clone().unwrap_or_default();
    println!(
        "From: {} ({}; {})   To: {}",
        from.org_name, from.worker_name, from.contact, to.org_name
    );
    println!("Case reference: {}", o.sender_case_ref);
    let mut services: Vec<&str> = o
        .services_requested()
        .map(|s| s.as_str_name().trim_start_matches("SERVICE_"))
        .collect();
    services.extend(o.other_services.iter().map(String::as_str));
    println!("Services: {}", list(services));
    println!("Purpose: {}", o.purpose);
    println!(
        "Sections: {}",
        list(
            o.sections_included()
                .map(handover_core::referral::section_name)
                .collect()
        )
    );
    let consent = match o.consent.as_ref().and_then(|c| c.basis.as_ref()) {
        Some(wire::consent_ref::Basis::Receipt(r)) => {
            format!(
                "receipt {}",
                hex::encode(r.receipt_id.get(..4).unwrap_or(&[]))
            )
        }
        Some(wire::consent_ref::Basis::Override(ov)) => {
            format!("OVERRIDE (legal basis: {})", ov.legal_basis)
        }
        None => "none".to_owned(),
    };
    println!("Consent: {consent}");
    println!(
        "Languages: {}   Interpreter needed: {}   Age band: {}{}",
        o.languages.join(", "),
        if o.interpreter_needed { "yes" } else { "no" },
        o.age_band().as_str_name().trim_start_matches("AGE_BAND_"),
        if o.is_minor { " (minor)" } else { "" }
    );
    println!(
        "Keep until: {}   Offer expires: {}   Onward sharing: {}",
        when(o.retain_until),
        when(o.offer_expires_at),
        if o.onward_sharing_allowed {
            "allowed"
        } else {
            "not allowed"
        }
    );
}

fn yn(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn print_section(s: &wire::BodySection) {
    let Some(content) = &s.content else { return };
    match content {
        Content::Identity(i) => {
            println!(
                "  IDENTITY: {} (preferred name {:?}, term {:?}, pronouns {:?})",
                i.name_or_alias, i.preferred_name, i.preferred_term, i.pronouns
            );
            for (k, v) in [
                ("age or birth date", &i.age_or_birth_date),
                ("gender", &i.gender),
                ("disability", &i.disability),
                ("nationality", &i.nationality),
            ] {
                if !v.is_empty() {
                    println!("    {k}: {v}");
                }
            }
            if !i.id_numbers.is_empty() {
                println!("    id numbers: {}", i.id_numbers.join(", "));
            }
        }
        Content::SafeContact(c) => {
            println!(
                "  SAFE_CONTACT: safe to contact: {}; channels: {}; safe times: {}; code word: \
                 {}; voicemail ok: {}; others may answer: {}",
                yn(c.safe_to_contact),
                c.channels.join(", "),
                c.safe_times,
                c.code_word,
                yn(c.voicemail_ok),
                yn(c.others_may_answer)
            );
            if !c.details.is_empty() {
                println!("    details: {}", c.details);
            }
        }
        Content::Location(l) => println!("  LOCATION: {}", l.location),
        Content::Guardian(g) => println!(
            "  GUARDIAN: {} ({}), contact {}; unaccompanied: {}; caregiver informed: {}{}",
            g.caregiver,
            g.relationship,
            g.contact,
            yn(g.unaccompanied),
            yn(g.caregiver_informed),
            if g.not_informed_reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", g.not_informed_reason)
            }
        ),
        Content::Reason(r) => println!("  REASON: {}", r.reason),
        Content::ServicesProvided(s) => {
            println!("  SERVICES_PROVIDED: {}", s.services.join(", "))
        }
        Content::Risk(r) => println!(
            "  RISK: {}; concerns: {}; safety plan: {}; escape plan: {}; perpetrator knows \
             location: {}",
            r.level().as_str_name().trim_start_matches("RISK_LEVEL_"),
            r.immediate_concerns,
            yn(r.safety_plan_exists),
            yn(r.escape_plan_exists),
            yn(r.perpetrator_knows_location)
        ),
        Content::DoNotDisclose(d) => {
            for rule in &d.rules {
                println!(
                    "  DO_NOT_DISCLOSE: {} to {} ({})",
                    rule.what, rule.to_whom, rule.why
                );
            }
        }
        Content::Appointment(a) => {
            println!("  APPOINTMENT: {} at {}; {}", when(a.at), a.place, a.notes)
        }
        Content::Attachments(a) => {
            for f in &a.attachments {
                println!(
                    "  ATTACHMENT: {} ({}, {})",
                    f.file_name,
                    f.media_type,
                    human_size(f.blob.as_ref().map(|b| b.size).unwrap_or(0))
                );
            }
        }
    }
}

async fn save_attachments(client: &Client, list: &[wire::Attachment], dir: &Path) -> Outcome {
    if list.is_empty() {
        println!("No attachments to save.");
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        fail(format!(
            "could not create {}: {e}. Choose a directory you can write to.",
            dir.display()
        ))
    })?;
    for a in list {
        // Only the file name: never let a sender choose where the file goes.
        let name = Path::new(&a.file_name)
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .unwrap_or("attachment")
            .to_owned();
        let total = a.blob.as_ref().map(|b| b.size).unwrap_or(0);
        let mut bar = Progress::new(&format!("downloading {name} (decrypting)"), total);
        let got = tokio::time::timeout(
            UPLOAD_WAIT,
            client.download_attachment(a, |done| bar.update(done)),
        )
        .await;
        bar.finish();
        let data = match got {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                return Err(fail(format!(
                    "downloading {name} failed: {e}. If it says the file does not verify, do \
                     not use it and tell the sender; otherwise {}.",
                    relay_hint()
                )));
            }
            Err(_) => {
                return Err(fail(format!(
                    "downloading {name} did not finish in {} seconds. {}.",
                    UPLOAD_WAIT.as_secs(),
                    relay_hint()
                )));
            }
        };
        let path = dir.join(&name);
        std::fs::write(&path, &data).map_err(|e| {
            fail(format!(
                "could not write {}: {e}. Choose a directory you can write to.",
                path.display()
            ))
        })?;
        println!(
            "Saved {} ({}, size and hash verified).",
            path.display(),
            human_size(data.len() as u64)
        );
    }
    Ok(())
}

/// Takes one lifecycle step, bounded by [`NETWORK_WAIT`].
async fn act(client: &Client, text: &str, action: Action) -> Outcome {
    let id = resolve(client, text).await?;
    let state = step(client, id, action).await?;
    println!("Referral {}: {state}.", id_hex(&id));
    if state == "WITHDRAWN" {
        println!(
            "The receiving organisation erases what it has and confirms; `handover sync` \
             shows the confirmations."
        );
    }
    Ok(())
}

async fn step(client: &Client, id: ReferralId, action: Action) -> Outcome<&'static str> {
    let before = client
        .referral(id)
        .await
        .ctx("reading the referral", "Report this.")?
        .map(|s| s.timeline["entries"].as_array().map_or(0, Vec::len));
    match tokio::time::timeout(NETWORK_WAIT, client.referral_act(id, action)).await {
        Ok(Ok(state)) => Ok(state.name()),
        Ok(Err(ClientError::Engine(e))) => {
            let now = client
                .referral(id)
                .await
                .ctx("reading the referral", "Report this.")?;
            let state = now.as_ref().map(|s| s.state.name()).unwrap_or("?");
            let id = hex::encode(id.as_bytes());
            match now.and_then(|s| ended_because(state, &s.timeline)) {
                // Ended: catching up changes nothing; say why it ended.
                Some(cause) => Err(fail(format!(
                    "this step is not possible: {e}. The referral is {state} here because \
                     {cause}; see `handover referral timeline {id}`."
                ))),
                None => Err(fail(format!(
                    "this step is not possible: {e} (the referral is {state} here). Run \
                     `handover sync` to catch up, and see `handover referral show {id}`."
                ))),
            }
        }
        Ok(Err(e)) => Err(fail(format!(
            "sending the step failed: {e}. {}.",
            relay_hint()
        ))),
        Err(_) => {
            let after = client
                .referral(id)
                .await
                .ctx("reading the referral", "Report this.")?;
            let moved = after
                .as_ref()
                .map(|s| s.timeline["entries"].as_array().map_or(0, Vec::len))
                != before;
            if moved {
                let state = after.map(|s| s.state.name()).unwrap_or("?");
                println!(
                    "The relay did not answer in {} seconds: the step is recorded here \
                     ({state}) and waits in the outbox. Run `handover sync` later to send it.",
                    NETWORK_WAIT.as_secs()
                );
                Ok(state)
            } else {
                Err(fail(format!(
                    "the relay did not answer in {} seconds and nothing changed. {}.",
                    NETWORK_WAIT.as_secs(),
                    relay_hint()
                )))
            }
        }
    }
}

/// A receiving-side decision (accept, decline, request info): acknowledges first when the
/// offer was not opened yet (DOMAIN.md: decisions are taken from ACKNOWLEDGED).
async fn decide(client: &Client, text: &str, action: Action) -> Outcome {
    let id = resolve(client, text).await?;
    let state = client
        .referral(id)
        .await
        .ctx("reading the referral", "Report this.")?
        .map(|s| (s.side, s.state.name()));
    if let Some((Side::Sender, _)) = state {
        return Err(fail(
            "you sent this referral; only the receiving organisation can accept, decline or \
             ask for information.",
        ));
    }
    if let Some((_, "SENT" | "DELIVERED")) = state {
        let s = step(client, id, Action::Acknowledge).await?;
        println!("Referral {}: {s}.", id_hex(&id));
    }
    let accepted = matches!(action, Action::Accept);
    let declined = matches!(action, Action::Decline { .. });
    let s = step(client, id, action).await?;
    println!("Referral {}: {s}.", id_hex(&id));
    if accepted {
        println!(
            "The sender's device releases the case details when it next syncs; run `handover \
             sync` here to receive them."
        );
    } else if declined {
        println!("The offer was erased on this device; the sender is told the reason.");
    }
    Ok(())
}

/// `handover referral release`.
async fn release(client: &Client, text: &str) -> Outcome {
    let id = resolve(client, text).await?;
    match tokio::time::timeout(NETWORK_WAIT, client.release_referral_body(id)).await {
        Ok(Ok(n)) => {
            println!(
                "Referral {}: case details sent to {n} device(s) of the receiving \
                 organisation (caseworkers and admins only).",
                id_hex(&id)
            );
            Ok(())
        }
        Ok(Err(ClientError::Engine(EngineError::Referral(
            e @ ReferralError::AlreadyReleased { .. },
        )))) => Err(fail(format!(
            "the case details cannot be released: {e}; they go out once. `handover referral \
             timeline {}` shows which device released them.",
            id_hex(&id)
        ))),
        Ok(Err(ClientError::Engine(e))) => Err(fail(format!(
            "the case details cannot be released: {e}. They go out only for a referral you \
             sent that is ACCEPTED or IN_SERVICE, under consent that is still valid."
        ))),
        Ok(Err(e)) => Err(fail(format!("releasing failed: {e}. {}.", relay_hint()))),
        Err(_) => Err(fail(format!(
            "the relay did not answer in {} seconds; the case details wait in the outbox. Run \
             `handover sync` later.",
            NETWORK_WAIT.as_secs()
        ))),
    }
}

/// `handover referral reassign`.
async fn reassign(client: &Client, args: &ReassignArgs) -> Outcome {
    let id = resolve(client, &args.id).await?;
    let (me, colleagues) = client
        .with_engine(|e, _, now| {
            let own = e.org_root()?;
            Ok::<_, EngineError>((e.device_id()?, e.org_devices(&own, now)?))
        })
        .await
        .ctx("reading the organisation's devices", "Report this.")?
        .ctx("reading the organisation's devices", "Report this.")?;
    let wanted = args.to.trim().to_ascii_lowercase();
    let to = if wanted == "me" {
        me
    } else {
        if wanted.len() < 8 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(fail(format!(
                "{:?} is not a device id. Give the id `handover org devices` shows (or its \
                 first 8 characters), or `me`.",
                args.to
            )));
        }
        let found: Vec<_> = colleagues
            .iter()
            .chain(std::iter::once(&me))
            .filter(|d| hex::encode(d.0).starts_with(&wanted))
            .copied()
            .collect();
        match found.as_slice() {
            [one] => *one,
            [] => {
                return Err(fail(format!(
                    "no active device of your organisation has the id {wanted}. Run \
                     `handover org devices` to see them."
                )));
            }
            _ => {
                return Err(fail(
                    "several devices start with these characters. Give more of the id.",
                ));
            }
        }
    };
    match tokio::time::timeout(NETWORK_WAIT, client.reassign_referral(id, to)).await {
        Ok(Ok(())) => {
            println!(
                "Referral {}: now assigned to {}.",
                id_hex(&id),
                if to == me {
                    "this device".to_owned()
                } else {
                    format!("device {}", hex::encode(&to.0[..4]))
                }
            );
            Ok(())
        }
        Ok(Err(ClientError::Engine(e))) => Err(fail(format!(
            "the referral cannot be reassigned: {e}. Only a referral your organisation sent can \
             be, to an active caseworker or admin device."
        ))),
        Ok(Err(e)) => Err(fail(format!("reassigning failed: {e}. {}.", relay_hint()))),
        Err(_) => Err(fail(format!(
            "the relay did not answer in {} seconds; the step waits in the outbox. Run \
             `handover sync` later.",
            NETWORK_WAIT.as_secs()
        ))),
    }
}

/// The DOMAIN.md state an entry of the timeline moves the referral to.
fn state_after(entry: &Value) -> String {
    let action = entry["action"].as_str().unwrap_or("?");
    match action {
        "OFFER" => "SENT".to_owned(),
        "ACCEPT" => "ACCEPTED".to_owned(),
        "DECLINE" => format!(
            "DECLINED ({})",
            entry["reason"].as_str().unwrap_or("?").to_ascii_lowercase()
        ),
        "REQUEST_INFO" => "INFO_REQUESTED".to_owned(),
        "PROVIDE_INFO" => "ACKNOWLEDGED (info provided)".to_owned(),
        "UPDATE" => format!("(update: {})", entry["update"].as_str().unwrap_or("?")),
        "START_SERVICE" => "IN_SERVICE".to_owned(),
        "COMPLETE" => {
            if entry["successful"].as_bool() == Some(true) {
                "COMPLETED (successful)".to_owned()
            } else {
                format!(
                    "COMPLETED (not successful: {})",
                    entry["reason"].as_str().unwrap_or("?").to_ascii_lowercase()
                )
            }
        }
        "WITHDRAW" => "WITHDRAWN".to_owned(),
        "CONSENT_CHANGED" => match entry["consent_state"].as_str() {
            Some("RENEWED") => "(consent renewed)".to_owned(),
            Some(s) => format!("CONSENT_REVOKED (consent {})", s.to_ascii_lowercase()),
            None => "CONSENT_REVOKED".to_owned(),
        },
        "PURGE_CONFIRMED" => match entry["retained_under_exception"].as_str() {
            Some(basis) => format!("RETAINED_UNDER_EXCEPTION ({basis})"),
            None => "PURGE_CONFIRMED".to_owned(),
        },
        other => other.to_owned(),
    }
}

/// Why a referral ended, in words with the DOMAIN.md state name, from the last step of its
/// timeline that is not an erasure confirmation: the receiver learns from this that the
/// sender withdrew it, that consent was withdrawn, or that the offer expired. `None` while the
/// referral is open, and after a completion or a consent renewal.
fn ended_because(state: &str, timeline: &Value) -> Option<String> {
    let entries = timeline["entries"].as_array()?;
    let last = entries
        .iter()
        .rev()
        .find(|e| e["action"].as_str() != Some("PURGE_CONFIRMED"))?;
    match last["action"].as_str()? {
        "WITHDRAW" => Some("the sender withdrew it (WITHDRAWN)".to_owned()),
        "CONSENT_CHANGED" => match last["consent_state"].as_str() {
            Some("RENEWED") | None => None,
            Some(s) => Some(format!(
                "the consent it relied on was {} (CONSENT_REVOKED)",
                s.to_ascii_lowercase()
            )),
        },
        "EXPIRED" => Some("the offer expired (EXPIRED)".to_owned()),
        "DECLINE" => Some("it was declined (DECLINED)".to_owned()),
        // A receiver's offer expires locally, without a step in the timeline.
        _ if state == "EXPIRED" => Some("the offer expired (EXPIRED)".to_owned()),
        _ => None,
    }
}

/// `handover referral timeline`.
async fn timeline(client: &Client, args: &TimelineArgs) -> Outcome {
    let id = resolve(client, &args.id).await?;
    let summary = client
        .referral(id)
        .await
        .ctx("reading the referral", "Report this.")?
        .ok_or_else(|| fail("the referral disappeared while reading it. Run the command again."))?;
    let checked = client.verify_referral_timeline(id).await;
    let verdict = match &checked {
        Ok(Some(TimelineCheck::Full)) => Ok(
            "verified: every hash and link, every signature by a device of the organisation \
             whose turn it was, and the order of steps"
                .to_owned(),
        ),
        Ok(Some(_)) => Ok(
            "hash chain verified (hashes, links, order); the case content was erased, so the \
             signatures over it can no longer be rechecked"
                .to_owned(),
        ),
        Ok(None) => Err(fail("the referral disappeared while reading it.")),
        Err(e) => Err(fail(format!(
            "the timeline of referral {} DOES NOT VERIFY: {e}. Do not rely on this record; \
             keep this device as it is and report it to your organisation's admin.",
            id_hex(&id)
        ))),
    };
    if args.verify {
        let v = verdict?;
        println!("Timeline of referral {}: {v}.", id_hex(&id));
        return Ok(());
    }
    if args.json {
        let text = serde_json::to_string_pretty(&summary.timeline)
            .ctx("writing the timeline as JSON", "Report this.")?;
        println!("{text}");
        let v = verdict?;
        eprintln!("Timeline {v}.");
        return Ok(());
    }
    let names = org_names(client).await?;
    let own_root = client
        .with_engine(|e, _, _| e.org_root())
        .await
        .ctx("reading the profile", "Report this.")?
        .ctx("reading the profile", "Report this.")?;
    println!(
        "Timeline of referral {} (now {}):",
        id_hex(&id),
        summary.state.name()
    );
    let entries = summary.timeline["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for entry in &entries {
        let seq = entry["sequence"].as_u64().unwrap_or(0);
        let action = entry["action"].as_str().unwrap_or("?");
        let role = entry["actor"]["role"]
            .as_str()
            .unwrap_or("?")
            .to_ascii_lowercase();
        let org_hex = entry["actor"]["org_root_key"].as_str().unwrap_or("");
        let org = match hex::decode(org_hex)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        {
            Some(root) if root == own_root => "your organisation".to_owned(),
            Some(root) => org_label(&names, &root),
            None => "?".to_owned(),
        };
        let device = entry["actor"]["device_id"].as_str().unwrap_or("");
        let name = match entry["actor"]["name"].as_str() {
            Some(n) if !n.is_empty() => format!(" \"{n}\""),
            _ => String::new(),
        };
        let hash = entry["hash"].as_str().unwrap_or("");
        println!(
            "  #{seq:<2} {:<16} {action:<16} -> {:<28} by {role} {}{name} of {org}   hash {}",
            when(entry["at"].as_u64().unwrap_or(0)),
            state_after(entry),
            device.get(..8).unwrap_or(device),
            hash.get(..12).unwrap_or(hash)
        );
    }
    if summary.side == Side::Sender {
        // Steps among this organisation's own devices (never sent to the receiver).
        for step in &summary.team {
            let what = match step.action {
                TeamAction::Released => "released the case details".to_owned(),
                TeamAction::Reassigned { assignee } => {
                    format!(
                        "assigned the case to device {}",
                        hex::encode(&assignee.0[..4])
                    )
                }
            };
            println!(
                "  team {:<16} {} \"{}\" ({}) {what}",
                when(step.at),
                hex::encode(&step.device.0[..4]),
                step.label,
                format!("{:?}", step.role).to_ascii_lowercase()
            );
        }
        if let Some(holder) = summary.assignee {
            println!(
                "Assigned to {}.",
                if summary.mine {
                    "this device".to_owned()
                } else {
                    format!("device {}", hex::encode(&holder.0[..4]))
                }
            );
        }
    }
    let v = verdict?;
    println!("Timeline {v}.");
    Ok(())
}

/// Shows the referral steps a `handover sync` brought, and releases the body of referrals
/// the receiver accepted (the sender side's part of ACCEPTED, see the module docs).
pub(crate) async fn after_sync(client: &Client, events: Vec<ReferralEvent>) -> Outcome {
    for event in events {
        match event {
            ReferralEvent::OfferReceived { referral } => println!(
                "New referral offer {}: see `handover referral show {}`.",
                id_hex(&referral),
                id_hex(&referral)
            ),
            ReferralEvent::StateChanged { referral, state } => {
                println!("Referral {}: {state}.", id_hex(&referral))
            }
            // Released below, together with any release an earlier run did not finish.
            ReferralEvent::ReleaseBody { .. } => {}
            ReferralEvent::BodyReceived { referral } => println!(
                "Referral {}: case details received; see `handover referral show {}`.",
                id_hex(&referral),
                id_hex(&referral)
            ),
            ReferralEvent::Erased { referral } => {
                let cause = client
                    .referral(referral)
                    .await
                    .ctx("reading the referral", "Report this.")?
                    .and_then(|s| ended_because(s.state.name(), &s.timeline))
                    .map(|c| format!("{c}; "))
                    .unwrap_or_default();
                println!(
                    "Referral {}: {cause}its case content was erased on this device.",
                    id_hex(&referral)
                )
            }
            ReferralEvent::PurgeConfirmed {
                referral,
                device,
                retained,
            } => println!(
                "Referral {}: device {} of the receiving organisation {}.",
                id_hex(&referral),
                hex::encode(&device.0[..4]),
                if retained {
                    "kept data under a legal exception (RETAINED_UNDER_EXCEPTION)"
                } else {
                    "confirmed erasure (PURGE_CONFIRMED)"
                }
            ),
            ReferralEvent::ConsentChanged { referral } => println!(
                "Referral {}: the consent it relies on changed.",
                id_hex(&referral)
            ),
            ReferralEvent::ConsentReceiptReceived { receipt } => {
                println!("Consent receipt {} received.", receipt.short())
            }
            ReferralEvent::CaseShared { referral } => println!(
                "Referral {} sent by a colleague is now on this device too: see `handover \
                 referral show {}`.",
                id_hex(&referral),
                id_hex(&referral)
            ),
            ReferralEvent::TeamStep {
                referral,
                device,
                action,
            } => match action {
                TeamAction::Released => println!(
                    "Referral {}: colleague device {} released the case details.",
                    id_hex(&referral),
                    hex::encode(&device.0[..4])
                ),
                TeamAction::Reassigned { assignee } => println!(
                    "Referral {}: colleague device {} assigned it to device {}.",
                    id_hex(&referral),
                    hex::encode(&device.0[..4]),
                    hex::encode(&assignee.0[..4])
                ),
            },
            ReferralEvent::Refused { referral, error } => eprintln!(
                "warning: a referral step{} was refused and nothing changed: {error}.",
                referral
                    .map(|r| format!(" for referral {}", id_hex(&r)))
                    .unwrap_or_default()
            ),
            _ => {}
        }
    }
    release_pending(client).await
}

/// Releases the case details of every sent referral the receiver accepted and whose details
/// have not gone out yet (kept durably by the core, so a sync that was interrupted, or a crash
/// after ACCEPTED arrived, is caught up by the next `handover sync`). Of the organisation's
/// devices, the one the case is assigned to releases at once; another releases only when
/// nobody has for ten minutes, or the assigned device was revoked (the core's due releases).
async fn release_pending(client: &Client) -> Outcome {
    let pending = client
        .due_releases()
        .await
        .ctx("listing accepted referrals", "Report this.")?;
    for referral in pending {
        match tokio::time::timeout(NETWORK_WAIT, client.release_referral_body(referral)).await {
            Ok(Ok(n)) => println!(
                "Referral {}: accepted; case details released to {n} device(s) of the \
                 receiving organisation.",
                id_hex(&referral)
            ),
            Ok(Err(e)) => eprintln!(
                "warning: referral {} was accepted but its case details could not be \
                 released: {e}. Check the consent (`handover consent show`), then run \
                 `handover sync` again (or `handover referral release {}`).",
                id_hex(&referral),
                id_hex(&referral)
            ),
            Err(_) => eprintln!(
                "warning: referral {} was accepted; the relay did not answer while \
                 releasing its case details. Run `handover sync` later.",
                id_hex(&referral)
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn timeline(actions: &[Value]) -> Value {
        json!({ "entries": actions })
    }

    #[test]
    fn an_ended_referral_names_the_step_that_ended_it() {
        let withdrawn = timeline(&[
            json!({ "action": "OFFER" }),
            json!({ "action": "WITHDRAW" }),
            json!({ "action": "PURGE_CONFIRMED" }),
            json!({ "action": "PURGE_CONFIRMED" }),
        ]);
        assert_eq!(
            ended_because("PURGE_CONFIRMED", &withdrawn).as_deref(),
            Some("the sender withdrew it (WITHDRAWN)")
        );
        let revoked = timeline(&[
            json!({ "action": "OFFER" }),
            json!({ "action": "CONSENT_CHANGED", "consent_state": "EXPIRED" }),
        ]);
        assert_eq!(
            ended_because("CONSENT_REVOKED", &revoked).as_deref(),
            Some("the consent it relied on was expired (CONSENT_REVOKED)")
        );
        let expired_here = timeline(&[json!({ "action": "OFFER" })]);
        assert_eq!(
            ended_because("EXPIRED", &expired_here).as_deref(),
            Some("the offer expired (EXPIRED)")
        );
    }

    #[test]
    fn an_open_or_completed_referral_has_no_cause() {
        let renewed = timeline(&[
            json!({ "action": "OFFER" }),
            json!({ "action": "CONSENT_CHANGED", "consent_state": "RENEWED" }),
        ]);
        assert_eq!(ended_because("SENT", &renewed), None);
        let completed = timeline(&[
            json!({ "action": "OFFER" }),
            json!({ "action": "ACCEPT" }),
            json!({ "action": "COMPLETE", "successful": true }),
        ]);
        assert_eq!(ended_because("COMPLETED", &completed), None);
        assert_eq!(ended_because("SENT", &json!({})), None);
    }
}
