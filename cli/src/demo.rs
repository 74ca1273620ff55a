//! `handover demo`: a relay and five real clients over QUIC on loopback, playing one referral
//! from first contact to purge confirmation, then checking that the relay never held plaintext.
//!
//! Everything the devices do goes through [`Client`], including the referral and consent steps
//! (`record_consent`, `send_referral`, `referral_act`, `release_referral_body`,
//! `change_consent`, `purge_status`). Only two reads use [`Client::with_engine`], because the
//! Client does not wrap them: the received offer and the received body sections, which the demo
//! prints to show the decrypted text at the receivers.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use handover_core::client::Client;
use handover_core::engine::{Direction, IdentitySetup, Message, OfferConsent, PeerId, RelayInfo};
use handover_core::identity::{DeviceId, DeviceKeys, Role};
use handover_core::referral::{Action, OfferDraft, Outcome as ServiceOutcome, ReferralId};
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
    /// Run the relay on PostgreSQL (postgres://user@host/db) instead of its embedded store;
    /// every byte string in the database is scanned for the plaintexts afterwards too.
    #[arg(long, value_name = "URL")]
    store: Option<handover_relay::config::StoreUrl>,
}

/// A demo device: its client and who it is.
struct Device {
    name: &'static str,
    client: Client,
    id: DeviceId,
    org: [u8; 32],
}

impl Device {
    /// The device as its peers know it (organisation root and device id).
    fn peer(&self) -> PeerId {
        PeerId {
            org_root: self.org,
            device_id: self.id,
        }
    }
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

    let store = args.store.as_ref().map(|url| url.0.clone());
    let mut story = Story::new(
        args.marker.clone(),
        relay_dir.clone(),
        store.clone(),
        work.path(),
    )
    .await?;
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
    let mut rows = 0;
    if let Some(url) = store {
        let stored = tokio::task::spawn_blocking(move || {
            handover_relay::store::PgStore::connect(&url, 1)?.stored_bytes()
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .ctx(
            "reading the relay's database for the plaintext scan",
            "Check that the PostgreSQL server given with --store is still reachable.",
        )?;
        rows = stored.len();
        for (table, bytes) in &stored {
            for needle in &needles {
                if contains(bytes, needle.as_bytes()) {
                    found.push(format!("{needle:?} in table {table}"));
                }
            }
        }
        detail(&format!(
            "relay database: {rows} stored byte strings (bodies, prekeys, profiles, blob chunks, \
             mailbox keys)"
        ));
    }
    step(
        &mut n,
        &format!(
            "Scanned every byte of {} relay files{} for {} known plaintexts (the marker {:?}, \
             names, messages, the attachment text): {}",
            files.len(),
            if rows > 0 {
                format!(" and {rows} database values")
            } else {
                String::new()
            },
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
    async fn new(
        marker: String,
        relay_dir: PathBuf,
        store: Option<String>,
        work: &Path,
    ) -> Outcome<Self> {
        let mut config = Config::new(relay_dir);
        let on_postgres = store.is_some();
        if let Some(url) = store {
            config.store = handover_relay::config::StoreLocation::parse(&url).ctx(
                "reading --store",
                "Give a postgres:// URL, e.g. postgres://postgres@127.0.0.1:5432/test.",
            )?;
        }
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
                "Relay started in-process on {} (QUIC, {})",
                info.host_port,
                if on_postgres {
                    "store on PostgreSQL"
                } else {
                    "embedded store in a temporary directory"
                }
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
            peer == self.devices[inviter].peer(),
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
            .any(|c| c.peer() == self.devices[acceptor].peer() && c.has_address);
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
        let to_id = self.devices[to].peer();
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
        let cw = self.devices[CASEWORKER].client.clone();
        let receipt = cw
            .record_consent(receipt_draft(b_root, &sections, &m))
            .await
            .ctx("recording consent", "Check the consent fields.")?;
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
        let attachment = cw
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
        let id = cw
            .send_referral(
                offer_draft(a_root, b_root, &m),
                body_sections(&m, attachment.clone()),
                OfferConsent::Receipt(receipt.id()),
            )
            .await
            .ctx(
                "sending the referral",
                "Check the referral's fields and that consent covers it.",
            )?;
        let state = self.state(CASEWORKER, id).await?;
        check(state == "SENT", "the caseworker's record is SENT")?;
        self.step(&format!(
            "Referral {} READY (consent gate passed: recipient, purpose, sections), offer signed \
             and sent with the receipt to every device of B; caseworker's record: {state}",
            id.short()
        ));

        // --- Both intake devices see the offer.
        for who in [INTAKE_1, INTAKE_2] {
            self.sync(who).await?;
            let offer = self.devices[who]
                .client
                .with_engine(move |e, _, _| e.received_offer(&id))
                .await
                .ctx("reading the offer", "Report this.")?
                .ctx("reading the offer", "Report this.")?;
            let purpose = offer.map(|o| o.purpose).unwrap_or_default();
            check(
                purpose.contains(&self.marker),
                "the offer's purpose decrypts at the receiver",
            )?;
            let body = self.section(who, id, wire::Section::Identity).await?;
            check(
                body.is_none(),
                "no body section is readable before ACCEPTED",
            )?;
            let state = self.state(who, id).await?;
            self.step(&format!(
                "{} sees the offer (signature and consent checked, no body yet; {state}): \
                 purpose {:?}",
                self.devices[who].name, purpose
            ));
        }

        // --- Intake 1 acknowledges and accepts; the caseworker and intake 2 follow.
        for action in [Action::Acknowledge, Action::Accept] {
            self.act(id, action).await?;
        }
        check(
            self.state(CASEWORKER, id).await? == "ACCEPTED"
                && self.state(INTAKE_2, id).await? == "ACCEPTED",
            "the caseworker's and intake 2's records are ACCEPTED",
        )?;
        self.step(&format!(
            "{} ACCEPTED; the caseworker's record and {}'s follow: ACCEPTED / ACCEPTED",
            self.devices[INTAKE_1].name, self.devices[INTAKE_2].name
        ));

        // --- Body released to every non-ambassador device of B.
        let released = cw
            .release_referral_body(id)
            .await
            .ctx("releasing the body", "Check the consent.")?;
        check(released == 2, "the body goes to both intake devices")?;
        for who in [INTAKE_1, INTAKE_2] {
            self.receive_body(who, id).await?;
        }

        // --- Service and completion.
        self.act(id, Action::StartService).await?;
        self.act(
            id,
            Action::Complete {
                outcome: ServiceOutcome::Successful,
                note: format!("Stayed four weeks; moved to her own flat. [{m}]"),
            },
        )
        .await?;
        let (cs, b2s) = (
            self.state(CASEWORKER, id).await?,
            self.state(INTAKE_2, id).await?,
        );
        check(
            cs == "COMPLETED" && b2s == "COMPLETED",
            "the caseworker's and intake 2's records are COMPLETED",
        )?;
        self.step(&format!(
            "{} IN_SERVICE, then COMPLETED (successful); caseworker's record: {cs}, {}'s: {b2s}",
            self.devices[INTAKE_1].name, self.devices[INTAKE_2].name
        ));

        // --- Consent withdrawn: fan-out, erasure, purge confirmations.
        let new_receipt = cw
            .change_consent(receipt.id(), wire::ConsentState::Withdrawn)
            .await
            .ctx("withdrawing consent", "Check that the relay is running.")?;
        let state = self.state(CASEWORKER, id).await?;
        check(
            state == "CONSENT_REVOKED",
            "the caseworker's record is CONSENT_REVOKED",
        )?;
        self.step(&format!(
            "The survivor withdrew consent: receipt {} (WITHDRAWN, supersedes {}); referral {}: \
             {state}; CONSENT_CHANGED sent to both intake devices",
            new_receipt.id().short(),
            receipt.id().short(),
            id.short()
        ));
        for who in [INTAKE_1, INTAKE_2] {
            self.sync(who).await?;
            let state = self.state(who, id).await?;
            let left = self.section(who, id, wire::Section::Identity).await?;
            check(
                left.is_none() && state == "PURGE_CONFIRMED",
                "the intake device erased the body and confirmed",
            )?;
            self.step(&format!(
                "{} received CONSENT_REVOKED, erased the offer and body, and sent a signed \
                 PURGE_CONFIRMED ({state})",
                self.devices[who].name
            ));
        }
        self.sync(CASEWORKER).await?;
        let report = cw
            .purge_status(receipt.id())
            .await
            .ctx("reading the purge status", "Report this.")?;
        check(
            report.len() == 1 && report[0].confirmed.len() == 2 && report[0].pending.is_empty(),
            "both intake devices confirmed the purge and nobody is pending",
        )?;
        let state = self.state(CASEWORKER, id).await?;
        check(
            state == "PURGE_CONFIRMED",
            "the caseworker's record is PURGE_CONFIRMED",
        )?;
        self.step(&format!(
            "Caseworker verified both signed PURGE_CONFIRMED; referral {}: {state}; nobody \
             pending for the withdrawn consent",
            id.short()
        ));

        // --- The caseworker's timeline.
        let summary = cw
            .referral(id)
            .await
            .ctx("reading the referral", "Report this.")?
            .ok_or_else(|| fail("the caseworker's referral record is missing. Report this."))?;
        let json = summary.timeline;
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

    /// The DOMAIN.md state name of referral `id` on device `who`.
    async fn state(&self, who: usize, id: ReferralId) -> Outcome<&'static str> {
        let summary = self.devices[who]
            .client
            .referral(id)
            .await
            .ctx("reading the referral", "Report this.")?;
        Ok(summary.map(|s| s.state.name()).unwrap_or("NONE"))
    }

    async fn section(
        &self,
        who: usize,
        id: ReferralId,
        section: wire::Section,
    ) -> Outcome<Option<wire::BodySection>> {
        self.devices[who]
            .client
            .with_engine(move |e, _, _| e.received_section(&id, section))
            .await
            .ctx("reading the body", "Report this.")?
            .ctx("reading the body", "Report this.")
    }

    /// Intake 1 takes `action`; the caseworker and intake 2 fetch the signed control.
    async fn act(&self, id: ReferralId, action: Action) -> Outcome {
        let state = self.devices[INTAKE_1]
            .client
            .referral_act(id, action)
            .await
            .ctx("acting on the referral", "Check the referral's state.")?;
        self.sync(CASEWORKER).await?;
        self.sync(INTAKE_2).await?;
        detail(&format!(
            "{} -> {} (signed control to the caseworker and {}); caseworker's record: {}, {}'s: {}",
            self.devices[INTAKE_1].name,
            state.name(),
            self.devices[INTAKE_2].name,
            self.state(CASEWORKER, id).await?,
            self.devices[INTAKE_2].name,
            self.state(INTAKE_2, id).await?,
        ));
        Ok(())
    }

    async fn receive_body(&mut self, who: usize, id: ReferralId) -> Outcome {
        self.sync(who).await?;
        let name = match self.section(who, id, wire::Section::Identity).await? {
            Some(wire::BodySection {
                content: Some(wire::body_section::Content::Identity(i)),
            }) => i.name_or_alias,
            _ => String::new(),
        };
        check(name.contains(&self.marker), "the identity section decrypts")?;
        let attachment = match self.section(who, id, wire::Section::Attachments).await? {
            Some(wire::BodySection {
                content: Some(wire::body_section::Content::Attachments(a)),
            }) => a.attachments.into_iter().next(),
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
            "{} received the body (name {:?}) and the attachment ({}, hash verified): {:?}",
            self.devices[who].name,
            name,
            human_size(file.len() as u64),
            first_line
        ));
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
