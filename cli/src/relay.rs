//! `handover relay`: show this device's relay, move its mailbox to another relay, end the
//! collection of the old one (docs/PROTOCOL.md §10.4).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use handover_core::client::{Client, ClientError, RelayAccess};
use handover_core::consent::utc_date;
use handover_core::engine::{EngineError, RelayInfo};
use handover_core::net::NetError;
use handover_proto::relay::v1::ErrorCode;

use crate::profile::{NETWORK_WAIT, close, open, parse_pin, read_creation_token};
use crate::ui::{Context, Outcome, fail};

/// Options of `handover relay`.
#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    #[command(subcommand)]
    command: Option<RelayCommand>,
}

/// `handover relay ...`; without a subcommand, the current relay.
#[derive(Debug, Subcommand)]
pub(crate) enum RelayCommand {
    /// Move this device's mailbox to another relay (for example when your network changes
    /// relay operator). Your contacts are sent your new address; messages still sent to the
    /// old relay are collected at every `handover sync` for 14 days, then the old mailbox is
    /// deleted.
    Move(MoveArgs),
    /// Stop collecting the old relay now: fetch what waits there and delete the old mailbox.
    Finish,
}

/// Options of `handover relay move`.
#[derive(Debug, Args)]
pub(crate) struct MoveArgs {
    /// The new relay's QUIC address, HOST:PORT (the `quic=` value of its ready line).
    #[arg(long, value_name = "HOST:PORT")]
    relay: String,
    /// The new relay's certificate pin, 64 hex characters (the `pin=` value of its ready line,
    /// or from its operator).
    #[arg(long, value_name = "HEX")]
    relay_pin: String,
    /// A file holding the new relay's mailbox-creation token, if its operator requires one
    /// (the file's bytes without a final line break).
    #[arg(long, value_name = "FILE")]
    creation_token_file: Option<PathBuf>,
}

/// `handover relay`.
pub(crate) async fn run(profile: Option<PathBuf>, args: RelayArgs) -> Outcome {
    match args.command {
        None => show(profile).await,
        Some(RelayCommand::Move(args)) => move_relay(profile, args).await,
        Some(RelayCommand::Finish) => finish(profile).await,
    }
}

/// The relay lines of `handover relay` and `handover whoami`.
pub(crate) async fn print_relay(client: &Client) -> Outcome {
    let status = client
        .relay_status()
        .await
        .ctx("reading the profile", "Report this.")?;
    println!(
        "Relay: {}  (pin {})",
        status.relay.host_port,
        hex::encode(status.relay.pin)
    );
    if let Some((old, until)) = status.draining {
        println!(
            "Moved from relay {}: messages still sent there are collected at every sync; its \
             mailbox is deleted at the first sync from {} on that finds it empty \
             (`handover relay finish` does it now).",
            old.host_port,
            utc_date(until)
        );
    }
    Ok(())
}

async fn show(profile: Option<PathBuf>) -> Outcome {
    let client = open(profile).await?;
    let result = print_relay(&client).await;
    close(client, result).await
}

fn move_failure(e: &ClientError) -> String {
    match e {
        ClientError::Net(NetError::WrongPin) => "the new relay's key does not match the pin you \
             gave. Check the pin with the relay's operator (copy the `pin=` value of its ready \
             line). Nothing was changed: you are still on your current relay."
            .to_owned(),
        ClientError::Net(n) if n.relay_code() == Some(ErrorCode::Unauthorised) => {
            "the new relay refused to create a mailbox: it needs a creation token, or the one \
             given is wrong. Ask its operator for the token and pass it with \
             --creation-token-file. Nothing was changed: you are still on your current relay."
                .to_owned()
        }
        ClientError::Net(n) if n.is_transient() => format!(
            "the new relay could not be reached ({n}). Check the address and that it is \
             running, then try again. Nothing was changed: you are still on your current relay."
        ),
        ClientError::Engine(EngineError::RelayMoveInProgress) => {
            "an earlier move is still collecting messages from the old relay. Run `handover \
             relay finish` first, then move again."
                .to_owned()
        }
        ClientError::Engine(EngineError::InvalidInput(_)) => {
            "this device's mailbox is on that relay already; nothing was changed.".to_owned()
        }
        other => format!(
            "moving to the new relay failed: {other}. Run `handover relay` to see which relay \
             this device uses now."
        ),
    }
}

async fn move_relay(profile: Option<PathBuf>, args: MoveArgs) -> Outcome {
    let pin = parse_pin(&args.relay_pin)?;
    let creation_token = match &args.creation_token_file {
        Some(path) => Some(read_creation_token(path)?),
        None => None,
    };
    let access = RelayAccess::new(
        RelayInfo {
            host_port: args.relay.trim().to_owned(),
            pin,
        },
        creation_token,
    );
    let client = open(profile).await?;
    let result = async {
        let report = match tokio::time::timeout(NETWORK_WAIT * 3, client.move_relay(access)).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => return Err(fail(move_failure(&e))),
            Err(_) => {
                return Err(fail(format!(
                    "the relays did not answer in {} seconds. Run `handover relay` to see which \
                     relay this device uses now; if it is the new one, `handover sync` finishes \
                     the move.",
                    (NETWORK_WAIT * 3).as_secs()
                )));
            }
        };
        println!("Moved to relay {}.", args.relay.trim());
        match report.cards_queued {
            Some(0) => println!("No contacts to tell yet."),
            Some(1) => println!("Your new address was sent to 1 contact."),
            Some(n) => println!("Your new address was sent to {n} contacts."),
            None => println!(
                "Your new address is not sent to your contacts yet: run `handover sync` when the \
                 new relay can be reached."
            ),
        }
        println!(
            "Messages still sent to the old relay are collected at every `handover sync` until \
             {}; then the old mailbox is deleted.",
            utc_date(report.drain_until)
        );
        let admin = client
            .with_engine(|e, _, _| e.certificate().map(|c| c.role()))
            .await
            .ctx("reading the profile", "Report this.")?
            .ctx("reading the profile", "Report this.")?;
        if admin == handover_core::identity::Role::Admin {
            println!(
                "If your organisation is in a relay's directory, publish it again \
                 (`handover org publish`) so that its intake address is the new one."
            );
        }
        Ok(())
    }
    .await;
    close(client, result).await
}

async fn finish(profile: Option<PathBuf>) -> Outcome {
    let client = open(profile).await?;
    let result = async {
        if client
            .relay_status()
            .await
            .ctx("reading the profile", "Report this.")?
            .draining
            .is_none()
        {
            println!("No move in progress: nothing to finish.");
            return Ok(());
        }
        match tokio::time::timeout(NETWORK_WAIT, client.finish_relay_move()).await {
            Ok(Ok(true)) => {
                println!("The old mailbox was collected and deleted; the move is finished.");
                Ok(())
            }
            Ok(Ok(false)) => Err(fail(
                "messages from an organisation you do not trust yet still wait at the old \
                 relay. Run `handover sync` to see its fingerprint and trust it, then run \
                 `handover relay finish` again.",
            )),
            Ok(Err(e)) => Err(fail(format!(
                "collecting the old relay failed: {e}. Check that it is running, then try \
                 again; nothing was deleted."
            ))),
            Err(_) => Err(fail(format!(
                "the old relay did not answer in {} seconds; nothing was deleted. Try again \
                 later.",
                NETWORK_WAIT.as_secs()
            ))),
        }
    }
    .await;
    close(client, result).await
}
