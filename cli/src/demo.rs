//! `handover demo`: a relay and five real clients over QUIC on loopback, playing one referral
//! from first contact to purge confirmation, then checking that the relay never held plaintext.
//!
//! Everything the devices do goes through [`Client`]; the referral and consent steps use the
//! `referral` and `consent` modules through [`Client::with_engine`] (signing, the consent gate)
//! and [`Client::send_body`] / [`Client::send_to_organisation`] (transport), because the
//! Client does not wrap referrals yet. The demo keeps the referral records in memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use handover_core::client::Client;
use handover_core::consent::{Consent, ConsentEvent, DisclosureLedger, ReceiptRegistry};
use handover_core::engine::{Direction, IdentitySetup, Message, RelayInfo};
use handover_core::identity::{DeviceId, DeviceKeys, Role};
use handover_core::referral::{
    Action, ConsentInput, OfferDraft, Outcome as ServiceOutcome, ReceiverEvent, ReceiverReferral,
    ReferralState, SenderEvent, SenderReferral, fan_out_consent_change,
};
use handover_core::store::{Credential, KdfParams, Passphrase};
use handover_proto::e2e::v1 as wire;
use handover_proto::e2e::v1::content::Body;
use handover_relay::config::Config;
use handover_relay::server::Relay;

use crate::ui::{Context, Outcome, Progress, fail, human_size};

/// Options of `handover demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Put TEXT into every plaintext (chat messages, offer, body, attachment) and print the
    /// decrypted text where it arrives. The relay's files are scanned for it afterwards.
    #[arg(long, value_name = "TEXT", default_value = "CANARY-plaintext-marker")]
    marker: String,
    /// Leave the relay's data directory in DIR (created if missing; must be empty) so you can
    /// inspect what the relay stored.
    #[arg(long, value_name = "DIR")]
    keep_relay_data: Option<PathBuf>,
}

/// A demo device: its client and who it is.
struct Device {
    name: &'static str,
    client: Client,
    id: DeviceId,
    org: [u8; 32],
}

/// Prints one step line.
fn step(n: &mut u32, text: &str) {
    *n += 1;
    println!("[{:>2}] {text}", *n);
}

/// Prints a detail line under a step.
fn detail(text: &str) {
    println!("      {text}");
}

fn check(ok: bool, what: &str) -> Outcome {
    if ok {
        Ok(())
    } else {
        Err(fail(format!(
            "demo check failed: {what}. This is a bug in Handover; please report it with the \
             output above."
        )))
    }
}

const DEMO_PASSPHRASE: &str = "demo passphrase, not secret";

/// Runs the demo.
pub(crate) async fn run(args: DemoArgs) -> Outcome {
    let started = Instant::now();
    if args.marker.trim().len() < 4 {
        return Err(fail(
            "the marker must be at least 4 characters so the scan of the relay's files means \
             something. Choose a longer --marker.",
        ));
    }
    let work = tempfile::tempdir().ctx(
        "creating a temporary directory",
        "Check that the temporary directory (TMPDIR) is writable.",
    )?;
    let relay_dir = match &args.keep_relay_data {
        Some(dir) => {
            std::fs::create_dir_all(dir).ctx(
                "creating the --keep-relay-data directory",
                "Choose a directory you can write to.",
            )?;
            let empty = std::fs::read_dir(dir)
                .ctx(
                    "reading the --keep-relay-data directory",
                    "Choose a directory you can read.",
                )?
                .next()
                .is_none();
            if !empty {
                return Err(fail(format!(
                    "the --keep-relay-data directory {} is not empty. Choose a new or empty \
                     directory so the demo does not mix with other data.",
                    dir.display()
                )));
            }
            dir.clone()
        }
        None => work.path().join("relay"),
    };

    let mut story = Story::new(args.marker.clone(), relay_dir.clone(), work.path()).await?;
    let played = story.play().await;
    // Whatever happened, stop the clients and the relay so the store is checkpointed.
    story.shutdown().await;
    played?;

    let mut n = story.n;
    step(
        &mut n,
        "Relay stopped. What it held during the run (ciphertext only, addressed by random ids):",
    );
    for (what, size) in &story.relay_saw {
        detail(&format!("{what}: {}", human_size(*size)));
    }
    let files = list_files(&relay_dir)?;
    let total: u64 = files.iter().map(|(_, s)| *s).sum();
    detail(&format!(
        "relay data directory now: {} files, {} in total",
        files.len(),
        human_size(total)
    ));
    for (path, size) in &files {
        let shown = path.strip_prefix(&relay_dir).unwrap_or(path);
        detail(&format!("  {} ({})", shown.display(), human_size(*size)));
    }

    let needles = story.known_plaintexts();
    let mut found = Vec::new();
    for (path, _) in &files {
        let bytes = std::fs::read(path).ctx(
            "reading the relay's files for the plaintext scan",
            "Check the permissions of the relay's data directory.",
        )?;
        for needle in &needles {
            if contains(&bytes, needle.as_bytes()) {
                found.push(format!("{needle:?} in {}", path.display()));
            }
        }
    }
    step(
        &mut n,
        &format!(
            "Scanned every byte of {} relay files for {} known plaintexts (the marker {:?}, \
             names, messages, the attachment text): {}",
            files.len(),
            needles.len(),
            args.marker,
            if found.is_empty() {
                "none found".to_owned()
            } else {
                format!("FOUND {}", found.len())
            }
        ),
    );
    if !found.is_empty() {
        for f in &found {
            detail(f);
        }
        return Err(fail(
            "the relay's store contains plaintext. This must never happen; do not use this \
             build, and report it with the output above.",
        ));
    }
    if let Some(dir) = &args.keep_relay_data {
        detail(&format!("relay data kept in {}", dir.display()));
    }
    println!(
        "Demo complete: every step verified in {:.1} s.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn list_files(dir: &Path) -> Outcome<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).ctx(
            "listing the relay's data directory",
            "Check the permissions of the relay's data directory.",
        )?;
        for entry in entries {
            let entry = entry.ctx(
                "listing the relay's data directory",
                "Check the permissions of the relay's data directory.",
            )?;
            let meta = entry.metadata().ctx(
                "reading file sizes in the relay's data directory",
                "Check the permissions of the relay's data directory.",
            )?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), meta.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The running demo: relay, devices, and what was sent.
struct Story {
    n: u32,
    marker: String,
    relay: Option<Relay>,
    info: RelayInfo,
    work: PathBuf,
    kdf: KdfParams,
    devices: Vec<Device>,
    /// What the relay was handed, for the summary (ids and sizes only).
    relay_saw: Vec<(String, u64)>,
    /// Plaintexts the relay must never hold.
    plaintexts: Vec<String>,
}

// Device indices.
const ADMIN_A: usize = 0;
const CASEWORKER: usize = 1;
const AMBASSADOR: usize = 2;
const INTAKE_1: usize = 3;
const INTAKE_2: usize = 4;

const ORG_A: &str = "Harbour Women's Centre";
const ORG_B: &str = "Riverside Safe House";
const PERSON: &str = "Amina Haddad";
const CODE_WORD: &str = "bluebird";

impl Story {
    async fn new(marker: String, relay_dir: PathBuf, work: &Path) -> Outcome<Self> {
        let mut config = Config::new(relay_dir);
        config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.admin = None;
        config.wal_mib = 2;
        let relay = Relay::start(config).await.ctx(
            "starting the in-process relay",
            "Check that loopback UDP is available and the data directory is writable.",
        )?;
        let info = RelayInfo {
            host_port: relay.local_addr().to_string(),
            pin: relay.pin(),
        };
        // The demo's profiles are thrown away at the end: cheap Argon2 costs keep it fast.
        // Real profiles (`handover init`) use the production costs.
        let kdf =
            KdfParams::new(1024, 1, 1).ctx("choosing key derivation costs", "Report this.")?;
        let mut n = 0;
        step(
            &mut n,
            &format!(
                "Relay started in-process on {} (QUIC, embedded store in a temporary directory)",
                info.host_port
            ),
        );
        Ok(Self {
            n,
            marker,
            relay: Some(relay),
            info,
            work: work.to_owned(),
            kdf,
            devices: Vec::new(),
            relay_saw: Vec::new(),
            plaintexts: Vec::new(),
        })
    }

    fn step(&mut self, text: &str) {
        step(&mut self.n, text);
    }

    fn known_plaintexts(&self) -> Vec<String> {
        let mut v = vec![
            self.marker.clone(),
            PERSON.to_owned(),
            CODE_WORD.to_owned(),
            ORG_B.to_owned(),
        ];
        v.extend(self.plaintexts.iter().cloned());
        v
    }

    fn credential() -> Credential {
        Credential::from(Passphrase::from(DEMO_PASSPHRASE))
    }

    async fn create(
        &self,
        name: &'static str,
        keys: DeviceKeys,
        setup: IdentitySetup,
    ) -> Outcome<Device> {
        let dir = self.work.join(name.replace(' ', "-"));
        let client = Client::create(
            &dir,
            &Self::credential(),
            self.kdf,
            self.info.clone(),
            keys,
            setup,
            name,
        )
        .await
        .ctx(
            &format!("creating the profile of {name}"),
            "Check that the relay started and the temporary directory is writable.",
        )?;
        let (id, org) = client
            .with_engine(|e, _, _| {
                Ok::<_, handover_core::engine::EngineError>((e.device_id()?, e.org_root()?))
            })
            .await
            .ctx("reading the new profile", "Report this.")?
            .ctx("reading the new profile", "Report this.")?;
        Ok(Device {
            name,
            client,
            id,
            org,
        })
    }

    async fn enrol(&self, admin: usize, name: &'static str, role: Role) -> Outcome<Device> {
        let keys = DeviceKeys::generate(&mut rand::rng());
        let (certificate, device_list) = self.devices[admin]
            .client
            .enrol_device(keys.public_keys(), role, name.to_owned())
            .await
            .ctx(&format!("enrolling {name}"), "Report this.")?;
        self.create(
            name,
            keys,
            IdentitySetup::Enrolled {
                certificate,
                device_list,
            },
        )
        .await
    }

    async fn sync(&self, who: usize) -> Outcome<Vec<Message>> {
        let d = &self.devices[who];
        let got = d.client.sync().await.ctx(
            &format!("{} fetching messages", d.name),
            "Check that the relay is running.",
        )?;
        Ok(got
            .into_iter()
            .filter(|m| m.direction == Direction::Incoming)
            .collect())
    }

    async fn invite_and_accept(&mut self, inviter: usize, acceptor: usize) -> Outcome {
        let (_, link) = self.devices[inviter]
            .client
            .create_invitation(3600)
            .await
            .ctx("creating an invitation", "Report this.")?;
        let peer = self.devices[acceptor]
            .client
            .accept_invitation(&link)
            .await
            .ctx("accepting the invitation", "Report this.")?;
        check(
            peer == self.devices[inviter].id,
            "the invitation leads to the inviting device",
        )?;
        // The inviter learns the acceptor's reply address from the first message.
        self.sync(inviter).await?;
        let known = self.devices[inviter]
            .client
            .contacts()
            .await
            .ctx("listing contacts", "Report this.")?
            .iter()
            .any(|c| c.device_id == self.devices[acceptor].id && c.has_address);
        check(known, "the inviter knows the acceptor's reply address")?;
        self.step(&format!(
            "{} invited {} (link {} chars, also shown as a QR code by `handover invite`); \
             accepted, session established",
            self.devices[inviter].name,
            self.devices[acceptor].name,
            link.len()
        ));
        Ok(())
    }

    async fn send_text(&mut self, from: usize, to: usize, text: &str) -> Outcome {
        let to_id = self.devices[to].id;
        self.devices[from]
            .client
            .send_text(to_id, text, Vec::new())
            .await
            .ctx("sending a message", "Check that the relay is running.")?;
        self.plaintexts.push(text.to_owned());
        let got = self.sync(to).await?;
        let texts: Vec<String> = got
            .iter()
            .filter_map(|m| match &m.content.body {
                Some(Body::Chat(c)) => Some(c.text.clone()),
                _ => None,
            })
            .collect();
        check(
            texts.len() == 1 && texts[0] == text,
            "the message arrives exactly once, intact",
        )?;
        self.step(&format!(
            "{} -> {}: DELIVERED; decrypted at the receiver: {:?}",
            self.devices[from].name, self.devices[to].name, texts[0]
        ));
        Ok(())
    }

    async fn shutdown(&mut self) {
        for d in self.devices.drain(..) {
            let _ = d.client.shutdown().await;
        }
        if let Some(relay) = self.relay.take() {
            relay.shutdown().await;
        }
    }

    /// Sends a signed control from `from` to each device in `to` (one message each).
    async fn send_control(
        &self,
        from: usize,
        to: &[usize],
        control: &wire::SignedControl,
    ) -> Outcome {
        for &t in to {
            self.devices[from]
                .client
                .send_body(self.devices[t].id, Body::ReferralControl(control.clone()))
                .await
                .ctx(
                    "sending a referral control message",
                    "Check that the relay is running.",
                )?;
        }
        Ok(())
    }

    async fn play(&mut self) -> Outcome {
        // --- Organisations and devices.
        let admin = self
            .create(
                "A admin",
                DeviceKeys::generate(&mut rand::rng()),
                IdentitySetup::NewOrganisation {
                    device_label: "A admin".into(),
                },
            )
            .await?;
        self.devices.push(admin);
        let caseworker = self
            .enrol(ADMIN_A, "A caseworker", Role::Caseworker)
            .await?;
        self.devices.push(caseworker);
        let ambassador = self
            .enrol(ADMIN_A, "A ambassador", Role::Ambassador)
            .await?;
        self.devices.push(ambassador);
        self.step(&format!(
            "Organisation A ({ORG_A}) created; its admin enrolled a caseworker and a migrant \
             ambassador (role AMBASSADOR: never receives case bodies)"
        ));
        let intake1 = self
            .create(
                "B intake 1",
                DeviceKeys::generate(&mut rand::rng()),
                IdentitySetup::NewOrganisation {
                    device_label: "B intake 1".into(),
                },
            )
            .await?;
        self.devices.push(intake1);
        let intake2 = self.enrol(INTAKE_1, "B intake 2", Role::Caseworker).await?;
        self.devices.push(intake2);
        let a_root = self.devices[CASEWORKER].org;
        let b_root = self.devices[INTAKE_1].org;
        check(
            self.devices[INTAKE_2].org == b_root && self.devices[AMBASSADOR].org == a_root,
            "enrolled devices belong to their organisation",
        )?;
        self.step(&format!(
            "Organisation B ({ORG_B}) created with a two-device intake team"
        ));
        // In person, each side compares the other's organisation fingerprint, then trusts it.
        for (who, root) in [(CASEWORKER, b_root), (INTAKE_1, a_root), (INTAKE_2, a_root)] {
            self.devices[who]
                .client
                .trust_organisation(root)
                .await
                .ctx("trusting an organisation", "Report this.")?;
        }
        self.step(&format!(
            "Fingerprints compared in person: A trusts B ({}), B trusts A ({})",
            handover_core::engine::org_fingerprint(&b_root),
            handover_core::engine::org_fingerprint(&a_root)
        ));

        // --- Ambassador and caseworker.
        self.invite_and_accept(CASEWORKER, AMBASSADOR).await?;
        let m = self.marker.clone();
        self.send_text(
            AMBASSADOR,
            CASEWORKER,
            &format!("A woman from our community needs a safe place tonight. [{m}]"),
        )
        .await?;
        self.send_text(
            CASEWORKER,
            AMBASSADOR,
            &format!("Thank you. I will meet her at 3 pm and ask for her consent. [{m}]"),
        )
        .await?;

        // --- The intake team's devices become the caseworker's contacts; B's devices know each
        // other so the acting device can keep its colleague's record in step.
        self.invite_and_accept(CASEWORKER, INTAKE_1).await?;
        self.invite_and_accept(CASEWORKER, INTAKE_2).await?;
        self.invite_and_accept(INTAKE_1, INTAKE_2).await?;

        // --- Consent.
        let sections = [
            wire::Section::Identity,
            wire::Section::SafeContact,
            wire::Section::Reason,
            wire::Section::Risk,
            wire::Section::Attachments,
        ];
        let draft = receipt_draft(b_root, &sections, &m);
        let consent = self.devices[CASEWORKER]
            .client
            .with_engine(move |e, rng, now| {
                let actor = e.actor().map_err(|e| e.to_string())?;
                Consent::Requested
                    .apply(ConsentEvent::Give(Box::new(draft)), &actor, now, rng)
                    .map_err(|(_, e)| e.to_string())
            })
            .await
            .ctx("recording consent", "Report this.")?
            .ctx("recording consent", "Check the consent fields.")?;
        let receipt = consent
            .current()
            .ok_or_else(|| fail("recording consent failed: no receipt. Report this."))?
            .clone();
        let mut registry = ReceiptRegistry::new();
        registry.insert(receipt.clone());
        self.step(&format!(
            "Consent GIVEN (via interpreter, Arabic): receipt {} signed by the caseworker's \
             device, covering {ORG_B}, 5 sections, purpose: safe accommodation",
            receipt.id().short()
        ));

        // --- Attachment.
        let attachment_text =
            format!("Letter from the GP about injuries, for the safe house nurse only. [{m}]\n");
        self.plaintexts.push(attachment_text.trim_end().to_owned());
        let mut document = attachment_text.clone().into_bytes();
        while document.len() < 512 * 1024 {
            document.extend_from_slice(attachment_text.as_bytes());
        }
        let mut bar = Progress::new("uploading letter.txt (encrypted)", document.len() as u64);
        let attachment = self.devices[CASEWORKER]
            .client
            .upload_attachment(&document, "text/plain", "letter.txt", |done| {
                bar.update(done)
            })
            .await
            .ctx(
                "uploading the attachment",
                "Check that the relay is running.",
            )?;
        bar.finish();
        let blob = attachment.blob.clone().ok_or_else(|| {
            fail("uploading the attachment failed: no blob reference. Report this.")
        })?;
        self.relay_saw.push((
            format!("attachment blob {}", hex::encode(&blob.blob_id)),
            handover_core::attachment::ciphertext_len(blob.size),
        ));
        self.step(&format!(
            "Attachment encrypted on the caseworker's device (STREAM, fresh key) and uploaded: \
             {} plaintext, hash committed in the body",
            human_size(blob.size)
        ));

        // --- The referral: offer to the whole intake team.
        let body = body_sections(&m, attachment.clone());
        let offer_draft = offer_draft(a_root, b_root, &m);
        let signed_receipt = receipt.signed().clone();
        let reg = registry.clone();
        let prepared = self.devices[CASEWORKER]
            .client
            .with_engine(move |e, rng, now| {
                let actor = e.actor().map_err(|e| e.to_string())?;
                let own = e.org_trust(&a_root).map_err(|e| e.to_string())?;
                let mut ledger = DisclosureLedger::new();
                let mut referral = SenderReferral::prepare(
                    &offer_draft,
                    &body,
                    ConsentInput::Receipt(&signed_receipt),
                    own,
                    &reg,
                    &actor,
                    now,
                    rng,
                )
                .map_err(|e| e.to_string())?;
                let (offer, receipt) = referral
                    .mark_sent(&actor, &mut ledger)
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((referral, ledger, offer, receipt))
            })
            .await
            .ctx("preparing the referral", "Report this.")?
            .ctx(
                "preparing the referral",
                "Check the referral's fields and consent.",
            )?;
        let (mut sender, mut ledger, offer, offer_receipt) = prepared;
        let offer_receipt = offer_receipt.ok_or_else(|| {
            fail("preparing the referral failed: no receipt to send. Report this.")
        })?;
        self.step(&format!(
            "Referral {} READY (consent gate passed: recipient, purpose and sections covered), \
             offer signed; state {}",
            sender.id().short(),
            sender.state().name()
        ));
        let sent_receipt = self.devices[CASEWORKER]
            .client
            .send_to_organisation(b_root, Body::ConsentReceipt(offer_receipt))
            .await
            .ctx(
                "sending the consent receipt to B",
                "Check that the relay is running.",
            )?;
        let sent_offer = self.devices[CASEWORKER]
            .client
            .send_to_organisation(b_root, Body::SignedReferralOffer(offer))
            .await
            .ctx("sending the offer to B", "Check that the relay is running.")?;
        check(
            sent_offer.items.len() == 2 && sent_offer.unreached.is_empty(),
            "the offer reaches both devices of B's intake team",
        )?;
        check(
            sent_receipt.items.len() == 2,
            "the consent receipt reaches both devices of B's intake team",
        )?;
        for (what, sent) in [("consent receipt", &sent_receipt), ("offer", &sent_offer)] {
            for item in &sent.items {
                self.relay_saw.push((
                    format!(
                        "envelope {} ({what} packet key for one B device, sealed, padded)",
                        hex::encode(item.envelope_id)
                    ),
                    item.envelope.ciphertext.len() as u64,
                ));
            }
        }
        self.step(&format!(
            "Offer and consent receipt sent to organisation B: encrypted once, uploaded once, \
             keys to {} devices; state SENT",
            sent_offer.items.len()
        ));

        // --- Both intake devices see the offer.
        let mut receivers: BTreeMap<usize, ReceiverReferral> = BTreeMap::new();
        for who in [INTAKE_1, INTAKE_2] {
            let got = self.sync(who).await?;
            let receipt = got.iter().find_map(|m| match &m.content.body {
                Some(Body::ConsentReceipt(r)) => Some(r.clone()),
                _ => None,
            });
            let offer = got.iter().find_map(|m| match &m.content.body {
                Some(Body::SignedReferralOffer(o)) => Some(o.clone()),
                _ => None,
            });
            let (Some(receipt), Some(offer)) = (receipt, offer) else {
                return Err(fail(format!(
                    "demo check failed: {} did not receive the offer and receipt. Report this.",
                    self.devices[who].name
                )));
            };
            let referral = self.devices[who]
                .client
                .with_engine(move |e, _, now| {
                    let sender_org = e.org_trust(&a_root).map_err(|e| e.to_string())?;
                    let cert = e.certificate().map_err(|e| e.to_string())?;
                    ReceiverReferral::receive_offer(
                        &offer,
                        Some(&receipt),
                        sender_org,
                        cert,
                        &ReceiptRegistry::new(),
                        now,
                    )
                    .map_err(|e| e.to_string())
                })
                .await
                .ctx("opening the offer", "Report this.")?
                .ctx(
                    "checking the offer",
                    "Ask the sender to check the referral.",
                )?;
            let purpose = referral
                .offer()
                .map(|o| o.purpose.clone())
                .unwrap_or_default();
            check(
                purpose.contains(&self.marker),
                "the offer's purpose decrypts at the receiver",
            )?;
            check(
                referral.held_sections() == 0,
                "no body section is readable before ACCEPTED",
            )?;
            self.step(&format!(
                "{} sees the offer (signature and consent checked, no body yet): purpose {:?}",
                self.devices[who].name, purpose
            ));
            receivers.insert(who, referral);
        }

        // --- Intake 1 acts; the caseworker and intake 2 follow.
        let b1 = INTAKE_1;
        for action in [Action::Delivered, Action::Acknowledge, Action::Accept] {
            self.receiver_act(&mut receivers, b1, action).await?;
        }
        let events = self
            .sender_follow(&mut sender, a_root, b_root, &mut receivers)
            .await?;
        check(
            matches!(sender.state(), ReferralState::Accepted),
            "the caseworker's record is ACCEPTED",
        )?;
        check(
            events.contains(&SenderEvent::ReleaseBody),
            "ACCEPT asks the caseworker to release the body",
        )?;
        self.step(&format!(
            "{} ACCEPTED; the caseworker's record and {}'s follow: {} / {}",
            self.devices[b1].name,
            self.devices[INTAKE_2].name,
            sender.state().name(),
            receivers
                .get(&INTAKE_2)
                .map(|r| r.state().name())
                .unwrap_or("?")
        ));

        // --- Body released to every non-ambassador device of B.
        let reg = registry.clone();
        let bodies = self.devices[CASEWORKER]
            .client
            .with_engine(move |e, _, now| {
                let trust = e.org_trust(&b_root).map_err(|e| e.to_string())?;
                let mut out = Vec::new();
                for cert in trust.active_devices(now) {
                    if cert.role() == Role::Ambassador {
                        continue;
                    }
                    let body = sender
                        .release_body(&cert, &reg, &mut ledger, now)
                        .map_err(|e| e.to_string())?;
                    out.push((cert.device_id(), body));
                }
                Ok::<_, String>((out, sender, ledger))
            })
            .await
            .ctx("releasing the body", "Report this.")?
            .ctx("releasing the body", "Check the consent.")?;
        let (bodies, sender_back, ledger_back) = bodies;
        let mut sender = sender_back;
        let mut ledger = ledger_back;
        check(bodies.len() == 2, "the body goes to both intake devices")?;
        for (device, body) in bodies {
            self.devices[CASEWORKER]
                .client
                .send_body(device, Body::ReferralBody(body))
                .await
                .ctx("sending the body", "Check that the relay is running.")?;
        }
        for who in [INTAKE_1, INTAKE_2] {
            self.receive_body(&mut receivers, who, a_root, &registry)
                .await?;
        }

        // --- Service and completion.
        self.receiver_act(&mut receivers, b1, Action::StartService)
            .await?;
        self.receiver_act(
            &mut receivers,
            b1,
            Action::Complete {
                outcome: ServiceOutcome::Successful,
                note: format!("Stayed four weeks; moved to her own flat. [{m}]"),
            },
        )
        .await?;
        self.sender_follow(&mut sender, a_root, b_root, &mut receivers)
            .await?;
        check(
            matches!(sender.state(), ReferralState::Completed(_)),
            "the caseworker's record is COMPLETED",
        )?;
        self.step(&format!(
            "{} IN_SERVICE, then COMPLETED (successful); caseworker's record: {}, {}'s: {}",
            self.devices[b1].name,
            sender.state().name(),
            self.devices[INTAKE_2].name,
            receivers
                .get(&INTAKE_2)
                .map(|r| r.state().name())
                .unwrap_or("?")
        ));

        // --- Consent withdrawn: fan-out, erasure, purge confirmations.
        let id = sender.id();
        let withdrawn = self.devices[CASEWORKER]
            .client
            .with_engine(move |e, rng, now| {
                let actor = e.actor().map_err(|e| e.to_string())?;
                let consent = consent
                    .apply(ConsentEvent::Withdraw, &actor, now, rng)
                    .map_err(|(_, e)| e.to_string())?;
                let new = consent
                    .current()
                    .cloned()
                    .ok_or_else(|| "no receipt".to_owned())?;
                let mut referrals = BTreeMap::new();
                referrals.insert(id, sender);
                let controls =
                    fan_out_consent_change(&new, &mut ledger, &mut referrals, &actor, now)
                        .map_err(|e| e.to_string())?;
                Ok::<_, String>((new, controls, referrals, ledger))
            })
            .await
            .ctx("withdrawing consent", "Report this.")?
            .ctx("withdrawing consent", "Report this.")?;
        let (new_receipt, controls, mut referrals, mut ledger) = withdrawn;
        let mut sender = referrals
            .remove(&id)
            .ok_or_else(|| fail("withdrawing consent lost the referral record. Report this."))?;
        check(
            controls.len() == 1 && matches!(sender.state(), ReferralState::ConsentRevoked),
            "withdrawal reaches the one referral made under this consent",
        )?;
        self.step(&format!(
            "The survivor withdrew consent: receipt {} (WITHDRAWN, supersedes {}); referral {}: {}; \
             CONSENT_CHANGED sent to both intake devices",
            new_receipt.id().short(),
            receipt.id().short(),
            id.short(),
            sender.state().name()
        ));
        for (_, control) in &controls {
            self.send_control(CASEWORKER, &[INTAKE_1, INTAKE_2], control)
                .await?;
        }
        let mut confirmations = Vec::new();
        for who in [INTAKE_1, INTAKE_2] {
            let got = self.sync(who).await?;
            for msg in got {
                let Some(Body::ReferralControl(control)) = msg.content.body else {
                    continue;
                };
                let mut record = receivers
                    .remove(&who)
                    .ok_or_else(|| fail("lost a receiver record. Report this."))?;
                let (event, record) = self.devices[who]
                    .client
                    .with_engine(move |e, _, now| {
                        let actor = e.actor().map_err(|e| e.to_string())?;
                        let a = e.org_trust(&a_root).map_err(|e| e.to_string())?;
                        let b = e.org_trust(&b_root).map_err(|e| e.to_string())?;
                        let event = record
                            .receive_control(
                                &control,
                                a,
                                b,
                                &mut ReceiptRegistry::new(),
                                &actor,
                                now,
                            )
                            .map_err(|e| e.to_string())?;
                        Ok::<_, String>((event, record))
                    })
                    .await
                    .ctx("applying the consent change", "Report this.")?
                    .ctx("applying the consent change", "Report this.")?;
                let ReceiverEvent::Purged { confirmation, .. } = event else {
                    return Err(fail(format!(
                        "demo check failed: {} did not erase after the consent change. Report this.",
                        self.devices[who].name
                    )));
                };
                check(
                    record.held_sections() == 0,
                    "the intake device erased every body section",
                )?;
                self.step(&format!(
                    "{} received CONSENT_REVOKED, erased the body ({} sections left) and sent a \
                     signed PURGE_CONFIRMED",
                    self.devices[who].name,
                    record.held_sections()
                ));
                self.send_control(who, &[CASEWORKER], &confirmation).await?;
                confirmations.push(who);
                receivers.insert(who, record);
            }
        }
        check(confirmations.len() == 2, "both intake devices confirm")?;
        // The caseworker checks each confirmation against its record; the first moves the
        // record to PURGE_CONFIRMED, the second (same position in the chain, from the other
        // device of the team) is verified against the record as it was before.
        let got = self.sync(CASEWORKER).await?;
        let before = sender.to_bytes();
        let mut confirmed = 0;
        for msg in got {
            let Some(Body::ReferralControl(control)) = msg.content.body else {
                continue;
            };
            let mut target =
                SenderReferral::from_bytes(&before).ctx("restoring a record", "Report this.")?;
            let (event, target) = self.devices[CASEWORKER]
                .client
                .with_engine(move |e, _, now| {
                    let a = e.org_trust(&a_root).map_err(|e| e.to_string())?;
                    let b = e.org_trust(&b_root).map_err(|e| e.to_string())?;
                    let event = target
                        .receive_control(&control, a, b, now)
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((event, target))
                })
                .await
                .ctx("checking a purge confirmation", "Report this.")?
                .ctx("checking a purge confirmation", "Report this.")?;
            let SenderEvent::PurgeConfirmed { at, retained_under } = event else {
                return Err(fail(
                    "demo check failed: expected a purge confirmation. Report this.",
                ));
            };
            check(retained_under.is_none(), "nothing retained under exception")?;
            if confirmed == 0 {
                ledger.confirm_purge(&id, at, None);
                sender = target;
            } else {
                drop(target);
            }
            confirmed += 1;
        }
        check(
            confirmed == 2,
            "the caseworker verified both purge confirmations",
        )?;
        check(
            matches!(sender.state(), ReferralState::PurgeConfirmed(_)),
            "the caseworker's record is PURGE_CONFIRMED",
        )?;
        check(
            ledger.pending(&receipt.id()).is_empty(),
            "no recipient of data under the withdrawn consent is left pending",
        )?;
        self.step(&format!(
            "Caseworker verified both signed PURGE_CONFIRMED; referral {}: {}; nobody pending \
             for the withdrawn consent",
            id.short(),
            sender.state().name()
        ));

        // --- The caseworker's timeline.
        let timeline = sender.timeline();
        check(
            timeline.verify_chain().is_ok(),
            "the timeline's hash chain verifies",
        )?;
        let json = timeline.export_json();
        self.step("Timeline at the caseworker (hash-chained, signed entries, no case content):");
        if let Some(entries) = json.get("entries").and_then(|e| e.as_array()) {
            for entry in entries {
                let action = entry.get("action").and_then(|a| a.as_str()).unwrap_or("?");
                let role = entry
                    .get("actor")
                    .and_then(|a| a.get("role"))
                    .and_then(|r| r.as_str())
                    .unwrap_or("?");
                let seq = entry.get("sequence").and_then(|s| s.as_u64()).unwrap_or(0);
                let hash = entry.get("hash").and_then(|h| h.as_str()).unwrap_or("");
                detail(&format!(
                    "#{seq:<2} {action:<16} by {:<8} ({}) hash {}",
                    role,
                    if entry
                        .get("actor")
                        .and_then(|a| a.get("org_root_key"))
                        .and_then(|k| k.as_str())
                        == Some(hex::encode(a_root).as_str())
                    {
                        "A"
                    } else {
                        "B"
                    },
                    hash.get(..12).unwrap_or(hash)
                ));
            }
        }
        Ok(())
    }

    /// `who` (an intake device) takes `action`, sends the signed control to the caseworker and
    /// its colleague, and the colleague applies it.
    async fn receiver_act(
        &mut self,
        receivers: &mut BTreeMap<usize, ReceiverReferral>,
        who: usize,
        action: Action,
    ) -> Outcome {
        let mut record = receivers
            .remove(&who)
            .ok_or_else(|| fail("lost a receiver record. Report this."))?;
        let (control, record) = self.devices[who]
            .client
            .with_engine(move |e, _, now| {
                let actor = e.actor().map_err(|e| e.to_string())?;
                let control = record.act(action, &actor, now).map_err(|e| e.to_string())?;
                Ok::<_, String>((control, record))
            })
            .await
            .ctx("acting on the referral", "Report this.")?
            .ctx("acting on the referral", "Check the referral's state.")?;
        let state = record.state().name();
        receivers.insert(who, record);
        let colleague = if who == INTAKE_1 { INTAKE_2 } else { INTAKE_1 };
        self.send_control(who, &[CASEWORKER, colleague], &control)
            .await?;
        // The colleague's device applies it too.
        let a_root = self.devices[CASEWORKER].org;
        let b_root = self.devices[INTAKE_1].org;
        let got = self.sync(colleague).await?;
        for msg in got {
            let Some(Body::ReferralControl(control)) = msg.content.body else {
                continue;
            };
            let mut record = receivers
                .remove(&colleague)
                .ok_or_else(|| fail("lost a receiver record. Report this."))?;
            let record = self.devices[colleague]
                .client
                .with_engine(move |e, _, now| {
                    let actor = e.actor().map_err(|e| e.to_string())?;
                    let a = e.org_trust(&a_root).map_err(|e| e.to_string())?;
                    let b = e.org_trust(&b_root).map_err(|e| e.to_string())?;
                    record
                        .receive_control(&control, a, b, &mut ReceiptRegistry::new(), &actor, now)
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(record)
                })
                .await
                .ctx("applying a colleague's control", "Report this.")?
                .ctx("applying a colleague's control", "Report this.")?;
            check(
                record.state().name() == state,
                "the colleague's record follows",
            )?;
            receivers.insert(colleague, record);
        }
        detail(&format!(
            "{} -> {state} (signed control to the caseworker and {})",
            self.devices[who].name, self.devices[colleague].name
        ));
        Ok(())
    }

    /// The caseworker fetches and applies every control waiting for it.
    async fn sender_follow(
        &mut self,
        sender: &mut SenderReferral,
        a_root: [u8; 32],
        b_root: [u8; 32],
        _receivers: &mut BTreeMap<usize, ReceiverReferral>,
    ) -> Outcome<Vec<SenderEvent>> {
        let got = self.sync(CASEWORKER).await?;
        let mut events = Vec::new();
        for msg in got {
            let Some(Body::ReferralControl(control)) = msg.content.body else {
                continue;
            };
            let bytes = sender.to_bytes();
            let mut record =
                SenderReferral::from_bytes(&bytes).ctx("reading a record", "Report this.")?;
            let (event, record) = self.devices[CASEWORKER]
                .client
                .with_engine(move |e, _, now| {
                    let a = e.org_trust(&a_root).map_err(|e| e.to_string())?;
                    let b = e.org_trust(&b_root).map_err(|e| e.to_string())?;
                    let event = record
                        .receive_control(&control, a, b, now)
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((event, record))
                })
                .await
                .ctx("applying a control", "Report this.")?
                .ctx("applying a control", "Report this.")?;
            *sender = record;
            detail(&format!("caseworker's record -> {}", sender.state().name()));
            events.push(event);
        }
        Ok(events)
    }

    async fn receive_body(
        &mut self,
        receivers: &mut BTreeMap<usize, ReceiverReferral>,
        who: usize,
        a_root: [u8; 32],
        registry: &ReceiptRegistry,
    ) -> Outcome {
        let got = self.sync(who).await?;
        let body = got
            .into_iter()
            .find_map(|m| match m.content.body {
                Some(Body::ReferralBody(b)) => Some(b),
                _ => None,
            })
            .ok_or_else(|| {
                fail(format!(
                    "demo check failed: {} did not receive the body. Report this.",
                    self.devices[who].name
                ))
            })?;
        let mut record = receivers
            .remove(&who)
            .ok_or_else(|| fail("lost a receiver record. Report this."))?;
        let reg = registry.clone();
        let record = self.devices[who]
            .client
            .with_engine(move |e, _, now| {
                let a = e.org_trust(&a_root).map_err(|e| e.to_string())?;
                let cert = e.certificate().map_err(|e| e.to_string())?;
                record
                    .receive_body(&body, cert, a, &reg, now)
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(record)
            })
            .await
            .ctx("opening the body", "Report this.")?
            .ctx("checking the body", "Ask the sender to release it again.")?;
        let name = match record.section(wire::Section::Identity) {
            Some(Ok(wire::BodySection {
                content: Some(wire::body_section::Content::Identity(i)),
            })) => i.name_or_alias,
            _ => String::new(),
        };
        check(name.contains(&self.marker), "the identity section decrypts")?;
        let attachment = match record.section(wire::Section::Attachments) {
            Some(Ok(wire::BodySection {
                content: Some(wire::body_section::Content::Attachments(a)),
            })) => a.attachments.into_iter().next(),
            _ => None,
        }
        .ok_or_else(|| fail("demo check failed: the body has no attachment. Report this."))?;
        let total = attachment.blob.as_ref().map(|b| b.size).unwrap_or(0);
        let mut bar = Progress::new("downloading letter.txt (decrypting)", total);
        let file = self.devices[who]
            .client
            .download_attachment(&attachment, |done| bar.update(done))
            .await
            .ctx(
                "downloading the attachment",
                "Check that the relay is running.",
            )?;
        bar.finish();
        let first_line = String::from_utf8_lossy(&file)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        check(
            first_line.contains(&self.marker),
            "the attachment decrypts and verifies",
        )?;
        self.step(&format!(
            "{} received the body ({} sections; name {:?}) and the attachment ({}, hash \
             verified): {:?}",
            self.devices[who].name,
            record.held_sections(),
            name,
            human_size(file.len() as u64),
            first_line
        ));
        receivers.insert(who, record);
        Ok(())
    }
}

fn party(root: [u8; 32], org: &str, worker: &str, role: wire::Role) -> wire::Party {
    wire::Party {
        org_root_key: root.to_vec(),
        org_name: org.to_owned(),
        worker_name: worker.to_owned(),
        role: role as i32,
        contact: "Reply through Handover".to_owned(),
    }
}

fn receipt_draft(b: [u8; 32], sections: &[wire::Section], marker: &str) -> wire::ConsentReceipt {
    let now = handover_relay::server::unix_now();
    wire::ConsentReceipt {
        principal_ref: "P-7Q2X".to_owned(),
        expressed_by: wire::ExpressedBy::Survivor as i32,
        collection_method: wire::CollectionMethod::ViaInterpreter as i32,
        interpreter_language: "ar".to_owned(),
        consent_type: "EXPLICIT".to_owned(),
        event_time: now,
        valid_until: now + 180 * 86_400,
        jurisdictions: vec!["BE".to_owned()],
        notice_ref: "https://example.org/privacy/v3".to_owned(),
        notice_language: "ar".to_owned(),
        controllers: vec![wire::Controller {
            name: ORG_A.to_owned(),
            contact: "Data protection officer".to_owned(),
            address: "1 Rue Exemple, 1000 Bruxelles".to_owned(),
            email: "dpo@example.org".to_owned(),
            phone: "+32 2 000 00 00".to_owned(),
        }],
        legal_basis: Some(wire::LegalBasis {
            basis: "GDPR Art. 6(1)(a) and Art. 9(2)(a) explicit consent".to_owned(),
            justification: String::new(),
            is_override: false,
        }),
        purposes: vec![wire::Purpose {
            purpose: purpose(marker),
            category: "referral".to_owned(),
            primary: true,
        }],
        recipients: vec![wire::ConsentRecipient {
            org_root_key: b.to_vec(),
            org_name: ORG_B.to_owned(),
            services: vec![wire::Service::Shelter as i32],
        }],
        data_categories: sections.iter().map(|s| *s as i32).collect(),
        sensitive: true,
        special_categories: vec!["health".to_owned()],
        withheld: vec![],
        onward_sharing: false,
        retention_secs: 90 * 86_400,
        storage_locations: vec!["EU (Belgium)".to_owned()],
        withdrawal_method: "Tell your caseworker at Harbour Women's Centre, any time.".to_owned(),
        witness: Some(wire::Witness {
            caseworker_id: "CW-12".to_owned(),
            org_name: ORG_A.to_owned(),
        }),
        principal_ack: Some(wire::PrincipalAck {
            method: wire::AckMethod::VerbalWitnessed as i32,
            detail: String::new(),
        }),
        ..Default::default()
    }
}

fn offer_draft(a: [u8; 32], b: [u8; 32], marker: &str) -> OfferDraft {
    let now = handover_relay::server::unix_now();
    OfferDraft {
        kind: wire::ReferralKind::Referral,
        sender_case_ref: "HWC-0193".to_owned(),
        from: party(a, ORG_A, "Duty caseworker", wire::Role::Caseworker),
        to: wire::Party {
            org_root_key: b.to_vec(),
            org_name: ORG_B.to_owned(),
            ..Default::default()
        },
        services_requested: vec![wire::Service::Shelter],
        other_services: vec![],
        priority: wire::Priority::Urgent,
        purpose: purpose(marker),
        languages: vec!["ar".to_owned()],
        interpreter_needed: true,
        preferred_worker_gender: "female".to_owned(),
        age_band: wire::AgeBand::Adult,
        is_minor: false,
        onward_sharing_allowed: false,
        retain_until: now + 60 * 86_400,
        retention_rule: "Erase 60 days after the offer".to_owned(),
        offer_ttl_secs: None,
    }
}

fn body_sections(marker: &str, attachment: wire::Attachment) -> Vec<wire::BodySection> {
    use wire::body_section::Content;
    vec![
        wire::BodySection {
            content: Some(Content::Identity(wire::IdentitySection {
                name_or_alias: format!("{PERSON} [{marker}]"),
                preferred_name: "Amina".to_owned(),
                preferred_term: "survivor".to_owned(),
                pronouns: "she/her".to_owned(),
                ..Default::default()
            })),
        },
        wire::BodySection {
            content: Some(Content::SafeContact(wire::SafeContactSection {
                safe_to_contact: true,
                channels: vec!["phone".to_owned()],
                safe_times: "weekdays 10-12".to_owned(),
                code_word: CODE_WORD.to_owned(),
                voicemail_ok: false,
                others_may_answer: false,
                details: format!("+32 470 12 34 56 [{marker}]"),
            })),
        },
        wire::BodySection {
            content: Some(Content::Reason(wire::ReasonSection {
                reason: format!("Left a violent partner two days ago. [{marker}]"),
            })),
        },
        wire::BodySection {
            content: Some(Content::Risk(wire::RiskSection {
                level: wire::RiskLevel::High as i32,
                immediate_concerns: format!("Partner is searching for her. [{marker}]"),
                safety_plan_exists: true,
                escape_plan_exists: false,
                perpetrator_knows_location: false,
            })),
        },
        wire::BodySection {
            content: Some(Content::Attachments(wire::AttachmentsSection {
                attachments: vec![attachment],
            })),
        },
    ]
}

/// The purpose the consent covers and the offer states (the gate compares them).
fn purpose(marker: &str) -> String {
    format!("Safe accommodation after leaving a violent home [{marker}]")
}
