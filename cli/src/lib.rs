//! `handover`: the command-line client for caseworkers and organisation admins, and the
//! end-to-end demo.
//!
//! The CLI is a thin shell over `handover-core`'s async [`Client`](handover_core::client::Client);
//! it never implements protocol logic itself. Only its `demo` command also starts a relay,
//! in-process, to show the whole system on one machine.
//!
//! Every message the CLI prints for a person says what happened and, when something failed,
//! what to do next: the people using it are caseworkers, not engineers.

mod consent;
mod demo;
mod forms;
mod org;
mod profile;
mod referral;
mod relay;
mod ui;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Handover: end-to-end encrypted messages and referrals for victim-support networks.
///
/// Your profile (keys, contacts, messages) lives in an encrypted directory chosen with
/// `--profile DIR` or the HANDOVER_PROFILE environment variable. The passphrase comes from
/// HANDOVER_PASSPHRASE or, if that is not set, is asked for without echo (or read from the first
/// line of standard input when it is not a terminal).
#[derive(Debug, Parser)]
#[command(name = "handover", version, about, long_about)]
struct Cli {
    /// Profile directory (created by `handover init`).
    #[arg(long, global = true, env = "HANDOVER_PROFILE", value_name = "DIR")]
    profile: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole story on this machine: a relay and five devices over QUIC on loopback.
    ///
    /// A caseworker at organisation A chats with a migrant ambassador, records consent, refers a
    /// person to organisation B's two-device intake team with an attachment, B accepts and
    /// completes, consent is withdrawn and B confirms the purge. Afterwards every byte the
    /// relay stored is scanned for the plaintext. Exit code 0 means every step verified.
    Demo(demo::DemoArgs),
    /// Create a profile: a new organisation with this device as its first admin.
    Init(profile::InitArgs),
    /// Create an invitation link (and QR code) for one contact.
    Invite(profile::InviteArgs),
    /// Accept an invitation link from someone you have verified.
    Accept(profile::AcceptArgs),
    /// Send a chat message to a contact.
    Send(profile::SendArgs),
    /// Send what waits in the outbox and fetch new messages from the relay.
    Sync(profile::SyncArgs),
    /// Show stored messages.
    Inbox(profile::InboxArgs),
    /// List your contacts (and whether you verified each), or compare a safety number.
    ///
    /// `handover contacts verify CONTACT` shows the safety number of your device and the
    /// contact's, in twelve groups of five digits. Read it aloud with them, in person or by
    /// phone (they run the same command with your name): both screens show the same number.
    /// If every group matches, mark the contact verified with `--matches "NUMBER"`.
    Contacts(profile::ContactsArgs),
    /// Show your organisation's fingerprint (compare it in person before trusting) and your
    /// relay.
    Whoami,
    /// Your relay: show it, or move this device's mailbox to another relay.
    ///
    /// `handover relay move --relay HOST:PORT --relay-pin HEX` checks the new relay's pin,
    /// creates your mailbox there and sends every contact your new address; messages still
    /// sent to the old relay are collected by `handover sync` for 14 days (or until
    /// `handover relay finish`), then the old mailbox is deleted.
    Relay(relay::RelayArgs),
    /// Panic wipe: destroy this profile's keys at once and delete its files. No passphrase
    /// needed. Cannot be undone.
    Wipe(profile::WipeArgs),
    /// Your organisation: create it, enrol and revoke devices, publish it in the directory.
    ///
    /// A second device joins in three steps; no secret leaves the device it was made on:
    /// (1) on the new device `handover org join-request --relay .. --relay-pin .. --name ..`
    /// prints a request code and a check code; (2) on the device that created the
    /// organisation, `handover org enroll REQUEST --role caseworker` (compare the check code
    /// first) prints an enrolment code; (3) on the new device `handover org join CODE`. Then
    /// `handover sync` on the first device.
    #[command(subcommand)]
    Org(org::OrgCommand),
    /// Send a referral from a TOML file (offer, consent, case details), with attachments.
    ///
    /// The file format is in docs/REFERRALS.md; cli/examples/referral.toml shows every field.
    /// The consent gate runs first: if the consent receipt does not cover the receiving
    /// organisation, the purpose, a section or a service, nothing is sent and the message
    /// says what is missing. Prints the referral id.
    Refer(referral::ReferArgs),
    /// Work with referrals: list, show, accept, decline, ask for information, complete,
    /// withdraw, and the verified timeline.
    ///
    /// Case details are released only after the receiving organisation accepts: the
    /// sender's next `handover sync` sends them (or `handover referral release ID`); the
    /// receiver's next `handover sync` receives them.
    #[command(subcommand)]
    Referral(referral::ReferralCommand),
    /// Consent receipts: record, show (with the person's copy in their language), export as
    /// Kantara JSON, revoke (erasure requests to every recipient), list.
    #[command(subcommand)]
    Consent(consent::ConsentCommand),
    /// The caseworker's desk in your browser: serves this profile on a loopback address and
    /// opens the browser (or prints the address to open). docs/APP.md describes it.
    App(handover_app::AppArgs),
}

/// Runs the command line (the `handover` binary's entry point).
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!(
                "error: could not start the async runtime ({e}). Check that the system allows \
                 this program to create threads, then try again."
            );
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Init(args) => profile::init(cli.profile, args).await,
            Command::Invite(args) => profile::invite(cli.profile, args).await,
            Command::Accept(args) => profile::accept(cli.profile, args).await,
            Command::Send(args) => profile::send(cli.profile, args).await,
            Command::Sync(args) => profile::sync(cli.profile, args).await,
            Command::Inbox(args) => profile::inbox(cli.profile, args).await,
            Command::Contacts(args) => profile::contacts(cli.profile, args).await,
            Command::Whoami => profile::whoami(cli.profile).await,
            Command::Relay(args) => relay::run(cli.profile, args).await,
            Command::Wipe(args) => profile::wipe(cli.profile, args),
            Command::Org(command) => org::run(cli.profile, command).await,
            Command::Refer(args) => referral::refer(cli.profile, args).await,
            Command::Referral(command) => referral::run(cli.profile, command).await,
            Command::Consent(command) => consent::run(cli.profile, command).await,
            Command::App(args) => handover_app::run(cli.profile, args)
                .await
                .map_err(|e| ui::fail(e.to_string())),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
