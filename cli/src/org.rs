//! `handover org ...`: the organisation's devices and its directory entry.
//!
//! A second device joins in three steps, and no secret key ever leaves the device it was
//! made on:
//!
//! 1. the new device runs `org join-request`: it creates its encrypted profile directory,
//!    generates its keys, keeps them there (pending), and prints a request code (its public
//!    keys) and a check code;
//! 2. the device that created the organisation (the only one holding its root key) runs
//!    `org enroll REQUEST --role ROLE` after comparing the check code with the new device's
//!    screen: the organisation root key signs a certificate and a new
//!    device list, which it sends to every contact, and the admin prints an enrolment code
//!    (certificate, device list and an invitation from the admin device, all public);
//! 3. the new device runs `org join CODE`: it creates its mailbox and profile with the
//!    certificate, and accepts the admin's invitation so the two devices of the team can keep
//!    each other's referral records in step (the admin's next `handover sync` completes it).
//!
//! The codes, the check code and the pending record are `handover_core::enrolment`
//! (docs/PROTOCOL.md §5.6); the app runs the same steps through the same `Client` calls.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use handover_core::client::{Client, ClientError, Joined};
use handover_core::engine::{EngineError, ProfileDetails, RelayInfo};
use handover_core::enrolment::{EnrolmentCode, EnrolmentError, JoinRequest};
use handover_core::identity::{DeviceId, Role};
use handover_core::net::NetError;
use handover_core::store::{KdfParams, StoreError};
use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use handover_proto::relay::v1 as relay;

use crate::profile::{self, InitArgs, NETWORK_WAIT, close, open, relay_hint};
use crate::ui::{Context, Outcome, fail};

/// `handover org` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum OrgCommand {
    /// Create a new organisation with this device as its first admin. The same as
    /// `handover init` (kept under both names).
    Create(InitArgs),
    /// On a NEW device: prepare to join an existing organisation. Prints a request code to
    /// give to an admin (it holds public keys only) and a check code to compare.
    JoinRequest(JoinRequestArgs),
    /// On the device that created the organisation (it holds the root key): enrol a new
    /// device from its request code with a role; prints the enrolment code for the new
    /// device. Compare the check code with the new device's screen first.
    Enroll(EnrollArgs),
    /// On the new device: finish joining with the enrolment code from the admin.
    Join(JoinArgs),
    /// List this organisation's devices (ids, roles, names).
    Devices,
    /// On the device that created the organisation: revoke a device (lost, stolen, or a
    /// person who left). Every contact is sent the new device list; the device can no longer
    /// send or receive.
    Revoke(RevokeArgs),
    /// On an ADMIN device: publish this organisation's profile in the members-only directory
    /// of the relay, so other organisations can find its intake devices.
    Publish(PublishArgs),
    /// Search the members-only directory of the relay.
    Directory(DirectoryArgs),
}

/// Options of `handover org join-request`.
#[derive(Debug, Args)]
pub(crate) struct JoinRequestArgs {
    /// The relay's QUIC address, HOST:PORT (the same relay as your organisation's).
    #[arg(long, value_name = "HOST:PORT")]
    relay: String,
    /// The relay's certificate pin, 64 hex characters.
    #[arg(long, value_name = "HEX")]
    relay_pin: String,
    /// This device's name as colleagues and contacts will see it.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Use very cheap passphrase hashing. Only for automated tests.
    #[arg(long, hide = true)]
    insecure_fast_kdf: bool,
}

/// Options of `handover org enroll`.
#[derive(Debug, Args)]
pub(crate) struct EnrollArgs {
    /// The request code printed by `handover org join-request` on the new device.
    request: String,
    /// What the device may do: admin (publishes the profile, may share without consent
    /// under a recorded legal basis), caseworker (sends and receives referrals, records
    /// consent), ambassador (chats; never receives case details).
    #[arg(long, value_name = "ROLE")]
    role: String,
    /// Label in the certificate (default: the name the new device asked for).
    #[arg(long, value_name = "NAME")]
    label: Option<String>,
}

/// Options of `handover org join`.
#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    /// The enrolment code printed by `handover org enroll` on the admin device.
    code: String,
    /// A file holding the relay's mailbox-creation token, if its operator requires one (the
    /// file's bytes without a final line break).
    #[arg(long, value_name = "FILE")]
    creation_token_file: Option<PathBuf>,
}

/// Options of `handover org revoke`.
#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// The device: the start of its id as `handover org devices` shows it (8 characters or
    /// more).
    device: String,
    /// Confirm: yes, revoke this device now.
    #[arg(long)]
    yes: bool,
}

/// Options of `handover org publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// The organisation's name in the directory.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// A service offered (repeat for several), for example shelter.
    #[arg(long = "service", value_name = "SERVICE")]
    services: Vec<String>,
    /// A language served, BCP 47 (repeat for several).
    #[arg(long = "language", value_name = "TAG")]
    languages: Vec<String>,
    /// A region served (repeat for several).
    #[arg(long = "region", value_name = "REGION")]
    regions: Vec<String>,
    /// A short description.
    #[arg(long, value_name = "TEXT", default_value = "")]
    description: String,
}

/// Options of `handover org directory`.
#[derive(Debug, Args)]
pub(crate) struct DirectoryArgs {
    /// Part of the organisation's name.
    #[arg(long, value_name = "TEXT", default_value = "")]
    name: String,
    /// A service (repeat for several).
    #[arg(long = "service", value_name = "SERVICE")]
    services: Vec<String>,
    /// A language, BCP 47 (repeat for several).
    #[arg(long = "language", value_name = "TAG")]
    languages: Vec<String>,
    /// A region (repeat for several).
    #[arg(long = "region", value_name = "REGION")]
    regions: Vec<String>,
    /// Add the intake devices of the organisation with this fingerprint to your contacts
    /// (after comparing the fingerprint with them in person or by phone) and send each your
    /// contact card, so you can refer to them.
    #[arg(long, value_name = "FINGERPRINT")]
    import: Option<String>,
}

/// Runs an `org` subcommand.
pub(crate) async fn run(profile: Option<PathBuf>, command: OrgCommand) -> Outcome {
    match command {
        OrgCommand::Create(args) => profile::init(profile, args).await,
        OrgCommand::JoinRequest(args) => join_request(profile, args).await,
        OrgCommand::Enroll(args) => enroll(profile, args).await,
        OrgCommand::Join(args) => join(profile, args).await,
        OrgCommand::Devices => devices(profile).await,
        OrgCommand::Revoke(args) => revoke(profile, args).await,
        OrgCommand::Publish(args) => publish(profile, args).await,
        OrgCommand::Directory(args) => directory(profile, args).await,
    }
}

fn role_of(text: &str) -> Outcome<Role> {
    match text.trim().to_ascii_lowercase().as_str() {
        "admin" => Ok(Role::Admin),
        "caseworker" => Ok(Role::Caseworker),
        "ambassador" => Ok(Role::Ambassador),
        other => Err(fail(format!(
            "--role {other:?} is not a role. Use admin, caseworker or ambassador (intake staff \
             who handle referrals are caseworkers)."
        ))),
    }
}

fn role_name(role: wire::Role) -> &'static str {
    match role {
        wire::Role::Admin => "admin",
        wire::Role::Caseworker => "caseworker",
        wire::Role::Ambassador => "ambassador",
        _ => "unknown",
    }
}

/// Explains a refused code or pending join in the CLI's words.
fn enrolment_failure(e: &EnrolmentError) -> crate::ui::Failure {
    match e {
        EnrolmentError::NotARequest => fail(
            "this is not a join request. Copy the whole code printed by `handover org \
             join-request` on the new device (it starts with handover://enrol-request#).",
        ),
        EnrolmentError::NotAnEnrolmentCode => fail(
            "this is not an enrolment code. Copy the whole code printed by `handover org \
             enroll` on the admin device (it starts with handover://enrolment#).",
        ),
        EnrolmentError::PendingDamaged => fail(
            "the pending join in this profile is damaged. Wipe it (`handover wipe --yes`) and \
             start again.",
        ),
        EnrolmentError::NotForThisDevice => fail(
            "the enrolment code is for another device or organisation (its certificate does \
             not match this device's keys). Give the admin this device's request code again \
             (`handover org join-request` shows it) and use the code they get.",
        ),
        e => fail(format!("{e}.")),
    }
}

/// `handover org join-request`.
async fn join_request(profile: Option<PathBuf>, args: JoinRequestArgs) -> Outcome {
    let dir = profile::profile_dir(profile)?;
    let pin = profile::parse_pin(&args.relay_pin)?;
    if args.name.trim().is_empty() {
        return Err(fail(
            "the name is empty. Pass --name with the name colleagues should see.",
        ));
    }
    let credential = profile::passphrase(true)?;
    let kdf = if args.insecure_fast_kdf {
        KdfParams::new(1024, 1, 1).ctx("choosing test key derivation costs", "Report this.")?
    } else {
        KdfParams::default()
    };
    let relay = RelayInfo {
        host_port: args.relay.clone(),
        pin,
    };
    let (client, request) =
        match Client::request_join(&dir, &credential, kdf, relay, &args.name).await {
            Ok(found) => found,
            Err(ClientError::Engine(EngineError::ProfileExists)) => {
                return Err(fail(format!(
                    "{} already holds a complete profile. A device that already belongs to an \
                     organisation cannot join another; use a new --profile directory.",
                    dir.display()
                )));
            }
            Err(ClientError::Engine(EngineError::Enrolment(e))) => {
                return Err(enrolment_failure(&e));
            }
            Err(e) => {
                return Err(fail(format!(
                    "could not open or create the profile in {}: {e}. Check the passphrase, or \
                     choose a new --profile directory for the new device.",
                    dir.display()
                )));
            }
        };
    println!(
        "Join request for {:?} (give it to an admin of your organisation):",
        request.name()
    );
    println!("{}", request.to_code());
    println!("Check code: {}", request.check_code());
    println!(
        "The admin runs `handover org enroll REQUEST --role caseworker` (or admin, \
         ambassador) and must see the same check code. Then run `handover org join CODE` \
         here with the enrolment code the admin gets."
    );
    close(client, Ok(())).await
}

/// `handover org enroll`.
async fn enroll(profile: Option<PathBuf>, args: EnrollArgs) -> Outcome {
    let role = role_of(&args.role)?;
    let request = JoinRequest::parse(&args.request).map_err(|e| match e {
        EnrolmentError::NotARequest => enrolment_failure(&e),
        e => fail(format!(
            "the join request is damaged ({e}). Ask for it again, or copy it completely."
        )),
    })?;
    let label = args.label.unwrap_or_else(|| request.name().to_owned());
    let client = open(profile).await?;
    let result = async {
        let code =
            match tokio::time::timeout(NETWORK_WAIT, client.enrol(&request, role, &label)).await {
                Ok(Ok(code)) => code,
                Ok(Err(ClientError::Engine(EngineError::NotOrgKeyHolder))) => {
                    return Err(fail(
                        "this device does not hold the organisation's root key, so it cannot \
                     enrol devices. Run `handover org enroll` on the device that created the \
                     organisation (`handover init` / `org create`).",
                    ));
                }
                Ok(Err(ClientError::Engine(EngineError::Enrolment(e)))) => {
                    return Err(fail(format!("enrolling the device was refused: {e}.")));
                }
                Ok(Err(e)) => {
                    return Err(fail(format!(
                        "enrolling the device failed: {e}. {}; then run this command again (the \
                     device gets the same certificate).",
                        relay_hint()
                    )));
                }
                Err(_) => {
                    return Err(fail(format!(
                        "the relay did not answer in {} seconds. {}; then run this command again \
                     (the device gets the same certificate).",
                        NETWORK_WAIT.as_secs(),
                        relay_hint()
                    )));
                }
            };
        let text = code.to_code().map_err(|e| enrolment_failure(&e))?;
        let enrolled_role = code
            .role()
            .map(|r| match r {
                Role::Admin => "admin",
                Role::Caseworker => "caseworker",
                Role::Ambassador => "ambassador",
            })
            .unwrap_or("unknown");
        println!(
            "Enrolled {:?} as {enrolled_role} (check code {}); your contacts are sent the \
             new device list.",
            code.label(),
            request.check_code()
        );
        println!("Enrolment code (give it to the new device; it holds no secrets):");
        println!("{text}");
        println!(
            "On the new device run `handover org join CODE`; then run `handover sync` here so \
             the two devices can reach each other."
        );
        Ok(())
    }
    .await;
    close(client, result).await
}

/// `handover org join`.
async fn join(profile: Option<PathBuf>, args: JoinArgs) -> Outcome {
    let code = EnrolmentCode::parse(&args.code).map_err(|e| match e {
        EnrolmentError::NotAnEnrolmentCode => enrolment_failure(&e),
        e => fail(format!(
            "the enrolment code is damaged ({e}). Ask the admin for it again, or copy it \
             completely."
        )),
    })?;
    let dir = profile::profile_dir(profile)?;
    let credential = profile::passphrase(false)?;
    let client = match Client::open(&dir, &credential).await {
        Ok(c) => c,
        Err(ClientError::Store(StoreError::NotFound)) => {
            return Err(fail(format!(
                "there is no pending join in {}. Run `handover org join-request` there first \
                 and give the request code to an admin.",
                dir.display()
            )));
        }
        Err(e) => {
            return Err(fail(format!(
                "could not open {}: {e}. Check the passphrase and the --profile directory.",
                dir.display()
            )));
        }
    };
    let creation_token = match &args.creation_token_file {
        Some(path) => match profile::read_creation_token(path) {
            Ok(t) => Some(t),
            Err(e) => return close(client, Err(e)).await,
        },
        None => None,
    };
    let joined = tokio::time::timeout(NETWORK_WAIT, client.join(&code, creation_token)).await;
    let result = match joined {
        Ok(Ok(joined)) => connect_to_admin(&client, &joined).await,
        Ok(Err(ClientError::Engine(EngineError::ProfileExists))) => Err(fail(format!(
            "{} has already joined its organisation (an earlier `handover org join` got \
             that far). Run `handover whoami` there; if something is missing, run \
             `handover sync`.",
            dir.display()
        ))),
        Ok(Err(ClientError::Engine(EngineError::Enrolment(EnrolmentError::NoPendingJoin)))) => {
            Err(fail(format!(
                "there is no pending join in {}: it was completed already, or never started. \
                 Run `handover whoami` to see whether this device has joined; otherwise run \
                 `handover org join-request`.",
                dir.display()
            )))
        }
        Ok(Err(ClientError::Engine(EngineError::Enrolment(e)))) => Err(enrolment_failure(&e)),
        Ok(Err(ClientError::Engine(EngineError::Certificate(_)))) => {
            Err(enrolment_failure(&EnrolmentError::NotForThisDevice))
        }
        Ok(Err(e)) => Err(fail(format!(
            "joining failed: {e}. {}; the keys stay pending, so run `handover org join` \
             again.",
            relay_hint()
        ))),
        Err(_) => Err(fail(format!(
            "the relay did not answer in {} seconds. {}; the keys stay pending, so run \
             `handover org join` again.",
            NETWORK_WAIT.as_secs(),
            relay_hint()
        ))),
    };
    close(client, result).await
}

/// After `org join`: accepts the admin device's invitation and shows who this device is.
async fn connect_to_admin(client: &Client, joined: &Joined) -> Outcome {
    println!("Joined the organisation as {:?}.", joined.name);
    match tokio::time::timeout(NETWORK_WAIT, client.accept_invitation(&joined.invitation)).await {
        Ok(Ok(_)) => println!(
            "Connected to the admin device; it completes the connection with its next \
             `handover sync`."
        ),
        Ok(Err(e)) => println!(
            "Could not connect to the admin device ({e}); ask the admin for an invitation \
             (`handover invite`) later."
        ),
        Err(_) => println!(
            "The relay did not answer while connecting to the admin device; ask the admin \
             for an invitation (`handover invite`) later."
        ),
    }
    crate::profile::whoami_of(client).await
}

/// The organisation's current device list, decoded: (id, role, label).
async fn own_devices(client: &Client) -> Outcome<(Vec<(DeviceId, wire::Role, String)>, usize)> {
    let list = client
        .with_engine(|e, _, _| e.own_device_list())
        .await
        .ctx("reading the device list", "Report this.")?
        .ctx("reading the device list", "Report this.")?
        .ok_or_else(|| fail("this profile has no device list. Report this."))?;
    let decoded = decode::device_list(&list.list)
        .map_err(|_| fail("the stored device list is damaged. Report this."))?;
    let mut out = Vec::new();
    for signed in &decoded.devices {
        let Ok(cert) = decode::device_certificate(&signed.certificate) else {
            continue;
        };
        let Ok(id) = <[u8; 16]>::try_from(cert.device_id.as_slice()) else {
            continue;
        };
        out.push((DeviceId(id), cert.role(), cert.label.clone()));
    }
    Ok((out, decoded.revoked_device_ids.len()))
}

/// Explains a directory failure: a relay that has not admitted the organisation says so.
fn directory_failure(doing: &str, e: &ClientError) -> crate::ui::Failure {
    match e {
        ClientError::Net(NetError::Relay {
            code: relay::ErrorCode::Unauthorised,
            ..
        }) => fail(format!(
            "{doing} failed: the relay has not admitted your organisation to its members-only \
             directory. Give the relay operator your organisation key (`handover whoami` shows \
             it) to add to admitted_orgs (--admit-org); then try again."
        )),
        e => fail(format!("{doing} failed: {e}. {}.", relay_hint())),
    }
}

/// `handover org devices`.
async fn devices(profile: Option<PathBuf>) -> Outcome {
    let client = open(profile).await?;
    let result = async {
        let me = client
            .with_engine(|e, _, _| e.device_id())
            .await
            .ctx("reading the profile", "Report this.")?
            .ctx("reading the profile", "Report this.")?;
        let (list, revoked) = own_devices(&client).await?;
        for (id, role, label) in list {
            println!(
                "{}  {:<10} {}{}",
                hex::encode(id.0),
                role_name(role),
                label,
                if id == me { "  (this device)" } else { "" }
            );
        }
        if revoked > 0 {
            println!("{revoked} device(s) revoked.");
        }
        Ok(())
    }
    .await;
    close(client, result).await
}

/// `handover org revoke`.
async fn revoke(profile: Option<PathBuf>, args: RevokeArgs) -> Outcome {
    let wanted = args.device.trim().to_ascii_lowercase();
    if wanted.len() < 8 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(fail(
            "give at least the first 8 characters of the device id, as `handover org devices` \
             shows it.",
        ));
    }
    let client = open(profile).await?;
    let result = async {
        let (list, _) = own_devices(&client).await?;
        let found: Vec<_> = list
            .iter()
            .filter(|(id, _, _)| hex::encode(id.0).starts_with(&wanted))
            .collect();
        let (id, _, label) = match found.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(fail(format!(
                    "no active device of this organisation has an id starting with {wanted}. \
                     Run `handover org devices` to see them."
                )));
            }
            _ => {
                return Err(fail(
                    "several devices match. Give more characters of the id.".to_owned(),
                ));
            }
        };
        if !args.yes {
            return Err(fail(format!(
                "this revokes {label:?} for good: it can no longer send or receive for the \
                 organisation. If that is what you want, run again with --yes."
            )));
        }
        match tokio::time::timeout(NETWORK_WAIT, client.revoke_device(id)).await {
            Ok(Ok(_)) => {}
            Ok(Err(ClientError::Engine(EngineError::NotOrgKeyHolder))) => {
                return Err(fail(
                    "this device does not hold the organisation's root key. Revoke from the \
                     device that created the organisation.",
                ));
            }
            Ok(Err(e)) => return Err(fail(format!("revoking failed: {e}. Check the device id."))),
            Err(_) => {
                return Err(fail(format!(
                    "the device was revoked here, but the relay did not answer in {} seconds \
                     while telling your contacts. {}; then run `handover sync`.",
                    NETWORK_WAIT.as_secs(),
                    relay_hint()
                )));
            }
        }
        println!("Revoked {label:?}; every contact was sent the new device list.");
        Ok(())
    }
    .await;
    close(client, result).await
}

/// `handover org publish`.
async fn publish(profile: Option<PathBuf>, args: PublishArgs) -> Outcome {
    if args.name.trim().is_empty() {
        return Err(fail("--name is empty. Give the organisation's name."));
    }
    let client = open(profile).await?;
    let result = async {
        let details = ProfileDetails {
            name: args.name.clone(),
            services: args.services.clone(),
            languages: args.languages.clone(),
            regions: args.regions.clone(),
            description: args.description.clone(),
        };
        match tokio::time::timeout(NETWORK_WAIT, client.publish_profile(details)).await {
            Ok(Ok(())) => {}
            Ok(Err(ClientError::Engine(EngineError::NotAdmin))) => {
                return Err(fail(
                    "only admin devices can publish the organisation's profile. Run this on an \
                     admin device.",
                ));
            }
            Ok(Err(e)) => return Err(directory_failure("publishing", &e)),
            Err(_) => {
                return Err(fail(format!(
                    "the relay did not answer in {} seconds. {}.",
                    NETWORK_WAIT.as_secs(),
                    relay_hint()
                )));
            }
        }
        println!(
            "Published {:?} in the relay's members-only directory (this device and the \
             colleagues it has addresses for are listed as intake).",
            args.name
        );
        Ok(())
    }
    .await;
    close(client, result).await
}

/// `handover org directory`.
async fn directory(profile: Option<PathBuf>, args: DirectoryArgs) -> Outcome {
    let client = open(profile).await?;
    let result = async {
        let query = relay::DirectoryQuery {
            services: args.services.clone(),
            languages: args.languages.clone(),
            regions: args.regions.clone(),
            name_contains: args.name.clone(),
            limit: 0,
        };
        let found = match tokio::time::timeout(NETWORK_WAIT, client.search_directory(query)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => return Err(directory_failure("searching the directory", &e)),
            Err(_) => {
                return Err(fail(format!(
                    "the relay did not answer in {} seconds. {}.",
                    NETWORK_WAIT.as_secs(),
                    relay_hint()
                )));
            }
        };
        if found.is_empty() {
            println!("No organisation in the directory matches.");
        }
        let mut imported = false;
        for (signed, verified) in &found {
            let p = &verified.profile;
            println!(
                "{:<30} fingerprint {}{}",
                p.name,
                verified.fingerprint,
                if verified.trusted { "  (trusted)" } else { "" }
            );
            if !p.services.is_empty() || !p.languages.is_empty() || !p.regions.is_empty() {
                println!(
                    "    services: {}; languages: {}; regions: {}",
                    p.services.join(", "),
                    p.languages.join(", "),
                    p.regions.join(", ")
                );
            }
            if !p.description.is_empty() {
                println!("    {}", p.description);
            }
            let Some(fp) = &args.import else { continue };
            let Ok(root) = <[u8; 32]>::try_from(p.org_root_key.as_slice()) else {
                continue;
            };
            if !profile::parse_trust(fp, &root)? {
                continue;
            }
            client
                .trust_organisation(root)
                .await
                .ctx("trusting the organisation", "Report this.")?;
            let devices = client.import_profile(signed.clone()).await.ctx(
                "importing the organisation's profile",
                "Search again and retry.",
            )?;
            let mut carded = 0;
            for d in &devices {
                if let Ok(Ok(())) =
                    tokio::time::timeout(NETWORK_WAIT, client.send_contact_card(*d)).await
                {
                    carded += 1;
                }
            }
            println!(
                "    imported: {} intake device(s) added to your contacts; {carded} sent your \
                 contact card.",
                devices.len()
            );
            imported = true;
        }
        if let (Some(fp), false) = (&args.import, imported) {
            return Err(fail(format!(
                "no organisation in these results has the fingerprint {fp:?}. Search again \
                 and copy the fingerprint exactly, after comparing it with the organisation \
                 in person or by phone."
            )));
        }
        Ok(())
    }
    .await;
    close(client, result).await
}
