//! The profile commands: `init`, `invite`, `accept`, `send`, `sync`, `inbox`, `contacts`
//! (with `contacts verify`), `whoami`. Each opens the encrypted profile, does one thing through
//! the [`Client`], and closes it cleanly.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use handover_core::client::{Client, ClientError, ClientEvent, RelayAccess};
use handover_core::engine::{
    self, Direction, EngineError, IdentitySetup, Message, PeerId, ReferralEvent, RelayInfo,
    org_fingerprint,
};
use handover_core::identity::{DeviceId, DeviceKeys};
use handover_core::store::{Credential, KdfParams, Passphrase, StoreError};
use handover_proto::e2e::v1::content::Body;

use crate::ui::{Context, Outcome, fail};

/// Longest the CLI waits for the relay in one command before telling the person; whatever is
/// in the outbox stays there for the next `handover sync`.
pub(crate) const NETWORK_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Options of `handover init`.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// The relay's QUIC address, HOST:PORT (the `quic=` value of its ready line).
    #[arg(long, value_name = "HOST:PORT")]
    relay: String,
    /// The relay's certificate pin, 64 hex characters (the `pin=` value of its ready line).
    #[arg(long, value_name = "HEX")]
    relay_pin: String,
    /// Your name as your contacts will see it, for example "Intake desk, Riverside".
    #[arg(long, value_name = "NAME")]
    name: String,
    /// A file holding the relay's mailbox-creation token, if its operator requires one (the
    /// file's bytes without a final line break).
    #[arg(long, value_name = "FILE")]
    creation_token_file: Option<PathBuf>,
    /// Use very cheap passphrase hashing. Only for automated tests: a stolen profile made with
    /// this can be opened by guessing the passphrase quickly.
    #[arg(long, hide = true)]
    insecure_fast_kdf: bool,
}

/// Options of `handover invite`.
#[derive(Debug, Args)]
pub(crate) struct InviteArgs {
    /// How long the invitation stays valid, in hours.
    #[arg(long, value_name = "HOURS", default_value_t = 24)]
    valid_hours: u64,
    /// Print only the link (no QR code).
    #[arg(long)]
    no_qr: bool,
}

/// Options of `handover accept`.
#[derive(Debug, Args)]
pub(crate) struct AcceptArgs {
    /// The invitation link (starts with handover://invite#).
    link: String,
    /// Trust the inviter's organisation: its fingerprint, after comparing it in person.
    #[arg(long, value_name = "FINGERPRINT")]
    trust_org: Option<String>,
}

/// Options of `handover send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// The contact: their name (as `handover contacts` shows it) or the start of their device id.
    #[arg(long, value_name = "CONTACT")]
    to: String,
    /// The message text.
    text: String,
    /// Disappearing message: both devices delete it this many seconds after sending (it is
    /// never shown once the time has passed, and not at all if it arrives later).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    disappear_after: Option<u64>,
}

/// Options of `handover inbox`.
#[derive(Debug, Args)]
pub(crate) struct InboxArgs {
    /// Show only messages after this number (as printed in the first column).
    #[arg(long, value_name = "N", default_value_t = 0)]
    after: u64,
}

/// Options of `handover contacts`.
#[derive(Debug, Args)]
pub(crate) struct ContactsArgs {
    #[command(subcommand)]
    command: Option<ContactsCommand>,
}

/// `handover contacts ...`; without a subcommand, the list.
#[derive(Debug, Subcommand)]
pub(crate) enum ContactsCommand {
    /// Show the safety number with a contact, to compare in person or by phone; with
    /// --matches, mark the contact verified.
    Verify(VerifyArgs),
}

/// Options of `handover contacts verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The contact: their name (as `handover contacts` shows it) or the start of their device id.
    contact: String,
    /// Mark the contact verified: the safety number as the contact read it out to you (it must
    /// be the number this command shows; spaces do not matter).
    #[arg(long, value_name = "NUMBER", conflicts_with = "clear")]
    matches: Option<String>,
    /// Forget that the contact was verified (for example after marking the wrong contact).
    #[arg(long)]
    clear: bool,
}

/// Options of `handover wipe`.
#[derive(Debug, Args)]
pub(crate) struct WipeArgs {
    /// Confirm: yes, destroy this profile now.
    #[arg(long)]
    yes: bool,
}

/// Options of `handover sync`.
#[derive(Debug, Args)]
pub(crate) struct SyncArgs {
    /// Trust the organisation with this fingerprint (shown by an earlier `handover sync`),
    /// after comparing it with the sender in person or by phone, and fetch its waiting messages.
    #[arg(long, value_name = "FINGERPRINT")]
    trust_org: Option<String>,
}

pub(crate) fn profile_dir(profile: Option<PathBuf>) -> Outcome<PathBuf> {
    profile.ok_or_else(|| {
        fail(
            "no profile directory given. Pass --profile DIR or set HANDOVER_PROFILE to the \
             directory you chose with `handover init`.",
        )
    })
}

/// The passphrase: HANDOVER_PASSPHRASE, a prompt without echo, or the first line of stdin.
pub(crate) fn passphrase(confirm: bool) -> Outcome<Credential> {
    let text = match std::env::var("HANDOVER_PASSPHRASE") {
        Ok(p) => p,
        Err(_) if std::io::stdin().is_terminal() => {
            let p = rpassword::prompt_password("Passphrase: ").ctx(
                "reading the passphrase",
                "Type it at the prompt, or set HANDOVER_PASSPHRASE.",
            )?;
            if confirm {
                let again = rpassword::prompt_password("Repeat the passphrase: ").ctx(
                    "reading the passphrase",
                    "Type it at the prompt, or set HANDOVER_PASSPHRASE.",
                )?;
                if again != p {
                    return Err(fail(
                        "the two passphrases differ. Run the command again and type the same \
                         passphrase twice.",
                    ));
                }
            }
            p
        }
        Err(_) => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).ctx(
                "reading the passphrase from standard input",
                "Pipe it in as the first line, or set HANDOVER_PASSPHRASE.",
            )?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if text.is_empty() {
        return Err(fail(
            "the passphrase is empty. Set HANDOVER_PASSPHRASE or type it at the prompt.",
        ));
    }
    Ok(Credential::from(Passphrase::from(text.as_str())))
}

pub(crate) async fn open(profile: Option<PathBuf>) -> Outcome<Client> {
    let dir = profile_dir(profile)?;
    let credential = passphrase(false)?;
    let client = match Client::open(&dir, &credential).await {
        Ok(c) => c,
        Err(ClientError::Store(StoreError::NotFound)) => {
            return Err(fail(format!(
                "there is no profile in {}. Create one with `handover init`, or pass the right \
                 --profile.",
                dir.display()
            )));
        }
        Err(e) => {
            return Err(fail(format!(
                "could not open the profile in {}: {e}. Check the passphrase and the --profile \
                 directory; close other `handover` commands using the same profile.",
                dir.display()
            )));
        }
    };
    if !client.has_profile().await {
        let _ = client.shutdown().await;
        return Err(fail(format!(
            "the profile in {} holds no identity. Create one with `handover init`, or, if this \
             device is joining an organisation, finish with `handover org join CODE`.",
            dir.display()
        )));
    }
    Ok(client)
}

pub(crate) async fn close(client: Client, result: Outcome) -> Outcome {
    let closed = client.shutdown().await.ctx(
        "closing the profile",
        "Your data is safe up to the last completed step; run the command again if needed.",
    );
    result.and(closed)
}

pub(crate) fn relay_hint() -> &'static str {
    "Check that the relay is running and reachable, and that the relay address and pin given to \
     `handover init` are right; then try again (messages being sent stay in the outbox)"
}

pub(crate) fn parse_pin(hex_pin: &str) -> Outcome<[u8; 32]> {
    let bytes = hex::decode(hex_pin.trim()).ok();
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            fail(
                "the relay pin must be 64 hex characters. Copy the `pin=` value from the relay's \
                 ready line (or ask the relay operator for it).",
            )
        })
}

/// The bytes of a creation-token file without a final line break (`\n` or `\r\n`).
pub(crate) fn read_creation_token(path: &Path) -> Outcome<Vec<u8>> {
    let mut bytes = std::fs::read(path).map_err(|e| {
        fail(format!(
            "could not read the creation token file {}: {e}. Check the path given with \
             --creation-token-file.",
            path.display()
        ))
    })?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(bytes)
}

/// `handover init`.
pub(crate) async fn init(profile: Option<PathBuf>, args: InitArgs) -> Outcome {
    let dir = profile_dir(profile)?;
    let pin = parse_pin(&args.relay_pin)?;
    if args.name.trim().is_empty() {
        return Err(fail(
            "the name is empty. Pass --name with the name your contacts should see.",
        ));
    }
    let credential = passphrase(true)?;
    let kdf = if args.insecure_fast_kdf {
        KdfParams::new(1024, 1, 1).ctx("choosing test key derivation costs", "Report this.")?
    } else {
        KdfParams::default()
    };
    let relay = RelayInfo {
        host_port: args.relay.clone(),
        pin,
    };
    let creation_token = match &args.creation_token_file {
        Some(path) => Some(read_creation_token(path)?),
        None => None,
    };
    let access = RelayAccess::new(relay, creation_token);
    let device = DeviceKeys::generate(&mut rand::rng());
    let identity = IdentitySetup::NewOrganisation {
        device_label: args.name.clone(),
    };
    let client = match Client::create_with_access(
        &dir,
        &credential,
        kdf,
        access,
        device,
        identity,
        &args.name,
    )
    .await
    {
        Ok(c) => c,
        Err(ClientError::Engine(EngineError::ProfileExists)) => {
            return Err(fail(format!(
                "{} already holds a profile. Use it as it is, or choose another --profile \
                 directory.",
                dir.display()
            )));
        }
        Err(e) => {
            return Err(fail(format!(
                "creating the profile failed: {e}. {}.",
                relay_hint()
            )));
        }
    };
    let result = whoami_of(&client).await;
    if result.is_ok() {
        println!("Profile created in {}.", dir.display());
    }
    close(client, result).await
}

pub(crate) async fn whoami_of(client: &Client) -> Outcome {
    let (name, device, root) = client
        .with_engine(|e, _, _| {
            Ok::<_, EngineError>((
                e.certificate()?.label().to_owned(),
                e.device_id()?,
                e.org_root()?,
            ))
        })
        .await
        .ctx("reading the profile", "Report this.")?
        .ctx("reading the profile", "Report this.")?;
    println!("Name: {name}");
    println!("Device: {}", hex::encode(device.0));
    println!(
        "Organisation fingerprint: {}  (read it out to contacts so they can verify you)",
        org_fingerprint(&root)
    );
    println!(
        "Organisation key: {}  (for relay operators: admits your organisation to a relay's \
         directory)",
        hex::encode(root)
    );
    Ok(())
}

/// `handover whoami`.
pub(crate) async fn whoami(profile: Option<PathBuf>) -> Outcome {
    let client = open(profile).await?;
    let result = match whoami_of(&client).await {
        Ok(()) => crate::relay::print_relay(&client).await,
        Err(e) => Err(e),
    };
    close(client, result).await
}

/// `handover invite`.
pub(crate) async fn invite(profile: Option<PathBuf>, args: InviteArgs) -> Outcome {
    let client = open(profile).await?;
    let result = async {
        let ttl = args.valid_hours.clamp(1, 24 * 30) * 3600;
        let (_, link) = client.create_invitation(ttl).await.map_err(|e| {
            fail(format!(
                "creating the invitation failed: {e}. {}.",
                relay_hint()
            ))
        })?;
        println!(
            "Invitation (valid {} hours; give it to one person):",
            ttl / 3600
        );
        println!("{link}");
        if !args.no_qr {
            crate::ui::print_qr(&link)?;
        }
        println!(
            "The other person runs `handover accept LINK`. Then run `handover sync` here to \
             receive their reply address."
        );
        Ok(())
    }
    .await;
    close(client, result).await
}

pub(crate) fn parse_trust(fingerprint: &str, root: &[u8; 32]) -> Outcome<bool> {
    Ok(engine::org_fingerprint_matches(root, fingerprint))
}

/// `handover accept`.
pub(crate) async fn accept(profile: Option<PathBuf>, args: AcceptArgs) -> Outcome {
    let invitation = engine::parse_invitation_link(args.link.trim()).map_err(|_| {
        fail(
            "this is not a valid invitation link. Copy the whole link (it starts with \
             handover://invite#) or scan the QR code again.",
        )
    })?;
    let root = engine::invitation_org_root(&invitation)
        .map_err(|_| fail("the invitation is damaged. Ask the person for a new one."))?;
    let client = open(profile).await?;
    let result =
        async {
            let trusted = client
                .with_engine(move |e, _, _| e.trusts_organisation(&root))
                .await
                .ctx("reading trusted organisations", "Report this.")?
                .ctx("reading trusted organisations", "Report this.")?;
            if !trusted {
                match &args.trust_org {
                    Some(fp) if parse_trust(fp, &root)? => {
                        client
                            .trust_organisation(root)
                            .await
                            .ctx("trusting the organisation", "Report this.")?;
                        println!("Organisation {} is now trusted.", org_fingerprint(&root));
                    }
                    Some(_) => {
                        return Err(fail(format!(
                            "the fingerprint you gave does not match the invitation's organisation \
                         ({}). Do not accept: ask the person, in person or by phone, to read \
                         their fingerprint again.",
                            org_fingerprint(&root)
                        )));
                    }
                    None => {
                        return Err(fail(format!(
                            "this invitation comes from an organisation you do not trust yet, with \
                         fingerprint {}. Compare it with the fingerprint the inviter reads to \
                         you (`handover whoami` on their side), in person or by phone; if it \
                         matches, run again with --trust-org \"{}\".",
                            org_fingerprint(&root),
                            org_fingerprint(&root)
                        )));
                    }
                }
            }
            let peer = client.accept_invitation(args.link.trim()).await.map_err(|e| {
            fail(format!(
                "accepting the invitation failed: {e}. If it expired or was already used, ask \
                 for a new one; otherwise: {}.",
                relay_hint()
            ))
        })?;
            println!(
                "Invitation from {:?} accepted. You can now send messages: handover send --to {} \
             \"...\"",
                invitation.display_name,
                short(&peer.device_id)
            );
            Ok(())
        }
        .await;
    close(client, result).await
}

pub(crate) fn short(id: &DeviceId) -> String {
    hex::encode(&id.0[..4])
}

pub(crate) async fn find_contact(client: &Client, who: &str) -> Outcome<PeerId> {
    let contacts = client
        .contacts()
        .await
        .ctx("reading contacts", "Report this.")?;
    let who_l = who.to_lowercase();
    let matches: Vec<_> = contacts
        .iter()
        .filter(|c| {
            c.display_name.to_lowercase() == who_l
                || (who.len() >= 4 && hex::encode(c.device_id.0).starts_with(&who_l))
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.peer()),
        [] => Err(fail(format!(
            "no contact called {who:?}. Run `handover contacts` to see their names and ids; \
             if they are missing, exchange an invitation first (`handover invite`)."
        ))),
        _ => Err(fail(format!(
            "{who:?} matches several contacts. Use more characters of the device id shown by \
             `handover contacts`."
        ))),
    }
}

/// `handover send`.
pub(crate) async fn send(profile: Option<PathBuf>, args: SendArgs) -> Outcome {
    if args.text.trim().is_empty() {
        return Err(fail(
            "the message is empty. Write the text after the contact.",
        ));
    }
    let client = open(profile).await?;
    let result = async {
        let to = find_contact(&client, &args.to).await?;
        let before = outbox_len(&client).await?;
        let sending = async {
            match args.disappear_after {
                Some(secs) => client.send_text_disappearing(to, &args.text, secs).await,
                None => client.send_text(to, &args.text, Vec::new()).await,
            }
        };
        let finished = tokio::time::timeout(NETWORK_WAIT, sending).await;
        match finished {
            Ok(Err(ClientError::Engine(EngineError::Revoked))) => {
                return Err(fail(format!(
                    "{} was revoked by its organisation, so nothing is sent to it (nothing \
                     was sent). Write to another device of that organisation (`handover \
                     contacts`).",
                    args.to
                )));
            }
            Ok(Err(e)) => return Err(fail(format!("sending failed: {e}. {}.", relay_hint()))),
            _ => {}
        }
        let waiting = outbox_len(&client).await?;
        if finished.is_err() && waiting <= before {
            return Err(fail(format!(
                "the relay did not answer in {} seconds and nothing was sent. {}.",
                NETWORK_WAIT.as_secs(),
                relay_hint()
            )));
        }
        if waiting == 0 {
            println!("Sent: the relay stored it for {}.", args.to);
        } else {
            println!(
                "Saved in the outbox ({waiting} waiting): the relay could not be reached. Run \
                 `handover sync` later to send it."
            );
        }
        Ok(())
    }
    .await;
    close(client, result).await
}

async fn outbox_len(client: &Client) -> Outcome<usize> {
    client
        .with_engine(|e, _, _| e.outbox().map(|o| o.len()))
        .await
        .ctx("reading the outbox", "Report this.")?
        .ctx("reading the outbox", "Report this.")
}

fn describe(message: &Message, names: &dyn Fn(&DeviceId) -> String) -> String {
    let who = names(&message.peer);
    let arrow = match message.direction {
        Direction::Incoming => format!("from {who}"),
        Direction::Outgoing => format!("to {who}"),
    };
    let what = match &message.content.body {
        Some(Body::Chat(c)) => {
            let files = if c.attachments.is_empty() {
                String::new()
            } else {
                format!(" (+{} attachments)", c.attachments.len())
            };
            format!("{}{files}", c.text)
        }
        Some(Body::ContactCard(_)) => "(contact card: reply address received)".to_owned(),
        Some(Body::DeviceList(_)) => "(their organisation's device list was updated)".to_owned(),
        Some(Body::SignedReferralOffer(_)) => "(a referral offer)".to_owned(),
        Some(Body::ReferralControl(_)) => "(a referral status update)".to_owned(),
        Some(Body::ReferralBody(_)) => "(a referral body)".to_owned(),
        Some(Body::ConsentReceipt(_)) => "(a consent receipt)".to_owned(),
        Some(Body::FanoutKey(_)) => "(an organisation packet that could not be opened)".to_owned(),
        Some(Body::DeliveryReceipt(r)) => match r.message_ids.len() {
            1 => "(delivery receipt: 1 message arrived)".to_owned(),
            n => format!("(delivery receipt: {n} messages arrived)"),
        },
        _ => "(a message this version cannot show)".to_owned(),
    };
    format!("#{:<4} {arrow}: {what}", message.seq)
}

pub(crate) async fn names(client: &Client) -> Outcome<Vec<(DeviceId, String)>> {
    Ok(client
        .contacts()
        .await
        .ctx("reading contacts", "Report this.")?
        .into_iter()
        .map(|c| {
            // Wherever a message from a peer whose identity key changed is shown, say so.
            let name = if c.identity_changed {
                format!("{} [safety number changed]", c.display_name)
            } else {
                c.display_name
            };
            (c.device_id, name)
        })
        .collect())
}

pub(crate) fn namer(list: Vec<(DeviceId, String)>) -> impl Fn(&DeviceId) -> String {
    move |id| {
        list.iter()
            .find(|(d, _)| d == id)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| format!("device {}", short(id)))
    }
}

/// `handover sync`.
pub(crate) async fn sync(profile: Option<PathBuf>, args: SyncArgs) -> Outcome {
    let client = open(profile).await?;
    let result = async {
        let mut events = client.events();
        let sent = match tokio::time::timeout(NETWORK_WAIT, client.flush_outbox()).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                return Err(fail(format!(
                    "sending the outbox failed: {e}. {}.",
                    relay_hint()
                )));
            }
            Err(_) => {
                return Err(fail(format!(
                    "the relay did not answer in {} seconds; waiting messages stay in the \
                     outbox. {}.",
                    NETWORK_WAIT.as_secs(),
                    relay_hint()
                )));
            }
        };
        let mut got = match tokio::time::timeout(NETWORK_WAIT, client.sync()).await {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => {
                return Err(fail(format!(
                    "fetching messages failed: {e}. {}.",
                    relay_hint()
                )));
            }
            Err(_) => {
                return Err(fail(format!(
                    "the relay did not answer in {} seconds. {}.",
                    NETWORK_WAIT.as_secs(),
                    relay_hint()
                )));
            }
        };
        let mut untrusted = Vec::new();
        let mut referral_events = Vec::new();
        drain_events(&mut events, &mut untrusted, &mut referral_events);
        let mut still = Vec::new();
        for root in untrusted {
            match &args.trust_org {
                Some(fp) if parse_trust(fp, &root)? => {
                    client
                        .trust_organisation(root)
                        .await
                        .ctx("trusting the organisation", "Report this.")?;
                    println!("Organisation {} is now trusted.", org_fingerprint(&root));
                    let more = client.sync().await.map_err(|e| {
                        fail(format!("fetching messages failed: {e}. {}.", relay_hint()))
                    })?;
                    got.extend(more);
                }
                _ => still.push(root),
            }
        }
        drain_events(&mut events, &mut Vec::new(), &mut referral_events);
        let list = namer(names(&client).await?);
        let received: Vec<_> = got
            .iter()
            .filter(|m| m.direction == Direction::Incoming)
            .collect();
        if sent > 0 {
            println!("Sent {sent} waiting message(s) from the outbox.");
        }
        println!("{} new message(s).", received.len());
        for m in received {
            println!("{}", describe(m, &list));
        }
        crate::referral::after_sync(&client, referral_events).await?;
        for root in still {
            println!(
                "Messages from an organisation you do not trust yet are waiting at the relay \
                 (fingerprint {}). Compare it with the sender in person or by phone; if it \
                 matches, run `handover sync --trust-org \"{}\"`.",
                org_fingerprint(&root),
                org_fingerprint(&root)
            );
        }
        Ok(())
    }
    .await;
    close(client, result).await
}

/// Takes the events a sync produced: organisations waiting for trust, refused envelopes
/// (warned about here) and referral steps.
fn drain_events(
    events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
    untrusted: &mut Vec<[u8; 32]>,
    referral: &mut Vec<ReferralEvent>,
) {
    use tokio::sync::broadcast::error::TryRecvError;
    loop {
        match events.try_recv() {
            Ok(ClientEvent::UntrustedOrganisation(root)) => {
                if !untrusted.contains(&root) {
                    untrusted.push(root);
                }
            }
            Ok(ClientEvent::Refused) => eprintln!(
                "warning: a message could not be opened (damaged, or from a revoked device) and \
                 was dropped."
            ),
            Ok(ClientEvent::Referral(event)) => referral.push(event),
            Ok(_) => {}
            Err(TryRecvError::Lagged(_)) => eprintln!(
                "warning: some updates were too many to show; run `handover referral list` to \
                 see every referral's state."
            ),
            Err(_) => break,
        }
    }
}

/// `handover inbox`.
pub(crate) async fn inbox(profile: Option<PathBuf>, args: InboxArgs) -> Outcome {
    let client = open(profile).await?;
    let result = async {
        let messages = client
            .messages(if args.after == 0 {
                0
            } else {
                args.after.saturating_add(1)
            })
            .await
            .ctx("reading messages", "Report this.")?;
        let list = namer(names(&client).await?);
        if messages.is_empty() {
            println!("No messages. Run `handover sync` to fetch new ones.");
        }
        for m in &messages {
            println!("{}", describe(m, &list));
        }
        Ok(())
    }
    .await;
    close(client, result).await
}

/// The contacts whose organisation has revoked them (in the newest device list this device
/// accepted from that organisation).
pub(crate) async fn revoked_contacts(client: &Client) -> Outcome<Vec<PeerId>> {
    client
        .with_engine(|e, _, _| {
            let mut out = Vec::new();
            for c in e.contacts()? {
                // An organisation not trusted yet has no device list here.
                if e.org_trust(&c.org_root)
                    .is_ok_and(|t| t.is_revoked(&c.device_id))
                {
                    out.push(c.peer());
                }
            }
            Ok::<_, EngineError>(out)
        })
        .await
        .ctx("reading contacts", "Report this.")?
        .ctx("reading contacts", "Report this.")
}

/// The contacts, revoked devices last: an organisation named by its fingerprint then takes the
/// name of a device it still has, not of one it revoked.
pub(crate) async fn contacts_active_first(client: &Client) -> Outcome<Vec<engine::Contact>> {
    let mut contacts = client
        .contacts()
        .await
        .ctx("reading contacts", "Report this.")?;
    let revoked = revoked_contacts(client).await?;
    contacts.sort_by_key(|c| revoked.contains(&c.peer()));
    Ok(contacts)
}

/// `handover contacts` and `handover contacts verify`.
pub(crate) async fn contacts(profile: Option<PathBuf>, args: ContactsArgs) -> Outcome {
    match args.command {
        None => list_contacts(profile).await,
        Some(ContactsCommand::Verify(args)) => verify(profile, args).await,
    }
}

/// `handover contacts`.
async fn list_contacts(profile: Option<PathBuf>) -> Outcome {
    let client = open(profile).await?;
    let result = async {
        let contacts = client
            .contacts()
            .await
            .ctx("reading contacts", "Report this.")?;
        if contacts.is_empty() {
            println!(
                "No contacts yet. Exchange an invitation: `handover invite` / `handover accept`."
            );
        }
        let revoked = revoked_contacts(&client).await?;
        let unverified = contacts.iter().filter(|c| !c.verified).count();
        let changed = contacts.iter().filter(|c| c.identity_changed).count();
        for c in contacts {
            println!(
                "{}  {:<30} {:<13} org {}{}",
                short(&c.device_id),
                c.display_name,
                if c.verified {
                    "verified"
                } else {
                    "not verified"
                },
                org_fingerprint(&c.org_root),
                if c.identity_changed {
                    "  (SAFETY NUMBER CHANGED: this device has a new identity key; verify it \
                     again before sending case details)"
                } else if revoked.contains(&c.peer()) {
                    "  (revoked by its organisation: nothing is sent to it)"
                } else if c.has_address {
                    ""
                } else {
                    "  (no reply address yet: run `handover sync`)"
                }
            );
        }
        if changed > 0 {
            println!(
                "A contact's safety number changed: the device was re-installed or someone else \
                 holds its name. Compare the new safety number in person or by phone: \
                 `handover contacts verify CONTACT`."
            );
        }
        if unverified > 0 {
            println!(
                "Compare the safety number with a contact in person or by phone before sending \
                 case details: `handover contacts verify CONTACT`."
            );
        }
        Ok(())
    }
    .await;
    close(client, result).await
}

/// Explains why a contact has no safety number (or it could not be marked).
fn safety_failure(who: &str, e: ClientError) -> crate::ui::Failure {
    match e {
        ClientError::Engine(EngineError::UntrustedOrganisation) => fail(format!(
            "{who:?} belongs to an organisation you do not trust on this device, so there is no \
             safety number to compare. Compare the organisation's fingerprint with them first \
             (`handover sync --trust-org`), then try again."
        )),
        ClientError::Engine(EngineError::Revoked) => fail(format!(
            "{who:?} is a device its organisation has revoked: do not verify it or send it \
             anything. Ask the organisation which device to use instead."
        )),
        ClientError::Engine(EngineError::Certificate(_)) => fail(format!(
            "the certificate of {who:?} is not valid now (expired or not yet valid). Ask its \
             organisation to renew it, run `handover sync`, then try again."
        )),
        ClientError::Engine(EngineError::SafetyNumberMismatch) => fail(format!(
            "the number you gave does not match the safety number with {who:?}; nothing was \
             marked. Run `handover contacts verify {who:?}` and compare again group by group; \
             if the numbers still differ, send no case details to this contact and tell their \
             organisation."
        )),
        e => fail(format!(
            "reading the safety number failed: {e}. Run `handover contacts` to check the \
             contact, then try again."
        )),
    }
}

/// `handover contacts verify`.
async fn verify(profile: Option<PathBuf>, args: VerifyArgs) -> Outcome {
    if let Some(number) = &args.matches
        && number.bytes().filter(u8::is_ascii_digit).count() != 60
    {
        return Err(fail(
            "--matches needs the whole safety number: 60 digits (twelve groups of five), as \
             the contact reads it out to you.",
        ));
    }
    let client = open(profile).await?;
    let result = async {
        let who = find_contact(&client, &args.contact).await?;
        let name = client
            .contacts()
            .await
            .ctx("reading contacts", "Report this.")?
            .into_iter()
            .find(|c| c.peer() == who)
            .map(|c| c.display_name)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| short(&who.device_id));
        if args.clear {
            client
                .clear_contact_verified(who)
                .await
                .ctx("forgetting the verification", "Report this.")?;
            println!(
                "{name} is no longer marked verified. Compare the safety number again with \
                 `handover contacts verify {}`.",
                short(&who.device_id)
            );
            return Ok(());
        }
        if let Some(number) = &args.matches {
            client
                .mark_contact_verified(who, number.clone())
                .await
                .map_err(|e| safety_failure(&name, e))?;
            println!(
                "{name} is now marked verified. `handover contacts` shows it until their \
                 device's keys change."
            );
            return Ok(());
        }
        let number = client
            .safety_number(who)
            .await
            .map_err(|e| safety_failure(&name, e))?;
        let grouped = number.grouped();
        let groups: Vec<&str> = grouped.split(' ').collect();
        println!(
            "Safety number with {name} (device {}):",
            short(&who.device_id)
        );
        println!();
        for row in groups.chunks(4) {
            println!("    {}", row.join(" "));
        }
        println!();
        println!(
            "Read it aloud with {name}, in person or by phone (they run `handover contacts \
             verify` with your name): both of you must see the same twelve groups. If every \
             group matches, type the number as they read it out: `handover contacts verify {} \
             --matches \"THEIR NUMBER\"`. If they differ, send no case details to this \
             contact and tell their organisation.",
            short(&who.device_id)
        );
        Ok(())
    }
    .await;
    close(client, result).await
}

/// `handover wipe`: shreds the store's key header first, then removes the files; works on a
/// locked profile (no passphrase), as a panic wipe must.
pub(crate) fn wipe(profile: Option<PathBuf>, args: WipeArgs) -> Outcome {
    let dir = profile_dir(profile)?;
    if !args.yes {
        return Err(fail(format!(
            "this destroys the profile in {} for good (keys, contacts, messages). If that is \
             what you want, run again with --yes.",
            dir.display()
        )));
    }
    handover_core::store::panic_wipe(&dir).map_err(|e| {
        fail(format!(
            "the wipe could not remove everything: {e}. The keys were destroyed first if the \
             header could be overwritten; delete the directory {} by hand as well.",
            dir.display()
        ))
    })?;
    println!(
        "Profile in {} wiped: its keys were destroyed and its files removed.",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use handover_proto::e2e::v1 as wire;

    use super::*;

    fn message(body: Body) -> Message {
        Message {
            seq: 7,
            direction: Direction::Incoming,
            peer: DeviceId([1; 16]),
            message_id: [2; 16],
            sent_at: 0,
            stored_at: 0,
            content: wire::Content {
                body: Some(body),
                ..Default::default()
            },
        }
    }

    /// Independent-implementation finding: delivery receipts showed as "a message this version
    /// cannot show".
    #[test]
    fn a_delivery_receipt_is_shown_as_one() {
        let names = |_: &DeviceId| "Shelter B intake".to_owned();
        let one = message(Body::DeliveryReceipt(wire::DeliveryReceipt {
            message_ids: vec![vec![3; 16]],
        }));
        assert_eq!(
            describe(&one, &names),
            "#7    from Shelter B intake: (delivery receipt: 1 message arrived)"
        );
        let two = message(Body::DeliveryReceipt(wire::DeliveryReceipt {
            message_ids: vec![vec![3; 16], vec![4; 16]],
        }));
        assert!(describe(&two, &names).ends_with("(delivery receipt: 2 messages arrived)"));
    }
}
