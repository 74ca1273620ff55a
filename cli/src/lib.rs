//! `handover`: the command-line client for caseworkers and organisation admins, and the
//! end-to-end demo.
//!
//! The CLI is a thin shell over `handover-core`'s async [`Client`](handover_core::client::Client);
//! it never implements protocol logic itself. Only its `demo` command also starts a relay,
//! in-process, to show the whole system on one machine.
//!
//! Every message the CLI prints for a person says what happened and, when something failed,
//! what to do next: the people using it are caseworkers, not engineers.

mod demo;
mod profile;
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
    /// List your contacts.
    Contacts,
    /// Show your organisation's fingerprint (compare it in person before trusting).
    Whoami,
    /// Panic wipe: destroy this profile's keys at once and delete its files. No passphrase
    /// needed. Cannot be undone.
    Wipe(profile::WipeArgs),
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
            Command::Contacts => profile::contacts(cli.profile).await,
            Command::Whoami => profile::whoami(cli.profile).await,
            Command::Wipe(args) => profile::wipe(cli.profile, args),
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
