//! Handover client core.
//!
//! Everything a Handover client does that needs secrets lives here: device and organisation
//! keys, PQXDH session setup, the Double Ratchet, sealed-sender envelopes, attachments, referrals,
//! consent receipts, expiry and the encrypted local store. The core is sans-IO: callers pass in
//! the current time and a random number generator and get outputs back; the optional `net`
//! feature adds the quinn driver that talks to a relay.
//!
//! This crate depends on `handover-proto` (the wire contract) and never on `handover-relay`: a
//! client must be implementable from docs/PROTOCOL.md alone, without relay code.
//!
//! # Cryptography
//!
//! - [`identity`]: organisation root keys, device keys, device certificates, signed device
//!   lists with revocation ([`identity::OrgTrust`]), safety numbers (PROTOCOL.md §5).
//! - [`pqxdh`] and [`session`]: PQXDH session setup and the Double Ratchet ([`ratchet`])
//!   (§6, §7). Decryption is transactional and its errors are opaque.
//! - [`sealed`]: HPKE sealed-sender envelopes with padding buckets (§8).
//! - [`attachment`] and [`fanout`]: STREAM-encrypted files and organisation packets (§9, §10).
//!
//! # Client
//!
//! - [`engine`]: the sans-IO client engine over the local [`store`]: profile and organisation
//!   setup, invitations, contacts, sessions, exactly-once send and receive with an outbox,
//!   organisation fan-out, directory profiles.
//! - [`enrolment`]: joining an organisation: request, enrolment and check codes, the pending
//!   join (§5.6).
//! - `client` (feature `net`): the async `Client` that drives the engine against relays.
//!
//! Time is always passed in as Unix seconds (`now`); randomness as a `rand_core` 0.10
//! [`CryptoRng`](rand_core::CryptoRng).
//!
//! ```
//! use handover_core::identity::{DeviceKeys, OrgRootKey, OrgTrust, Role};
//! use handover_core::pqxdh::{PrekeyBundle, PrekeyStore};
//! use handover_core::sealed::{self, MailboxSealingKey};
//! use handover_core::session::Session;
//! use handover_proto::e2e::v1 as wire;
//!
//! let rng = &mut rand::rng();
//! let now = 1_800_000_000;
//!
//! // Two organisations, one device each.
//! let (org_a, org_b) = (OrgRootKey::generate(rng), OrgRootKey::generate(rng));
//! let (alice, bob) = (DeviceKeys::generate(rng), DeviceKeys::generate(rng));
//! let cert_a = org_a.issue_certificate(&alice.public_keys(), Role::Caseworker, now, now + 86_400, "")?;
//! let cert_b = org_b.issue_certificate(&bob.public_keys(), Role::Caseworker, now, now + 86_400, "")?;
//!
//! // Bob publishes prekeys; his mailbox has a sealing key.
//! let mut prekeys = PrekeyStore::new();
//! let published = wire::PublishedPrekeys {
//!     certificate: Some(cert_b.clone()),
//!     signed_prekey: Some(prekeys.generate_signed_prekey(&bob, 1, rng)?),
//!     last_resort_kem_prekey: Some(prekeys.generate_kem_prekey(&bob, 1, true, rng)?),
//! };
//! let otpk = prekeys.generate_one_time_prekey(1, rng)?;
//! let mailbox = MailboxSealingKey::generate(rng);
//!
//! // Alice trusts Bob's organisation root, checks the bundle and starts a session.
//! let bundle = PrekeyBundle::from_parts(published, Some(otpk), None).ok_or("bad bundle")?;
//! let (mut session_a, _bob_cert) = Session::initiate(&alice, &cert_a, &OrgTrust::new(org_b.public_key()), &bundle, now, rng)?;
//! let sealed_msg = session_a.encrypt(b"hello")?.into_sealed(cert_a);
//! let envelope = sealed::seal(&mailbox.public_key(), &sealed_msg, &[7; 16], now + 3600, rng)?;
//!
//! // Bob opens the envelope, checks the sender certificate and accepts the session.
//! let opened = sealed::open(&mailbox, &[7; 16], now + 3600, &envelope)?;
//! let sender = OrgTrust::new(org_a.public_key()).verify_certificate(opened.sender.as_ref().ok_or("no sender")?, now)?;
//! let Some(wire::sealed::Message::Prekey(initial)) = &opened.message else { return Err("expected an initial message".into()) };
//! let (_session_b, plaintext) = Session::respond(&bob, &cert_b, &mut prekeys, &sender, initial, now, rng)?;
//! assert_eq!(plaintext, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod attachment;
#[cfg(feature = "net")]
pub mod client;
pub mod consent;
pub mod engine;
pub mod enrolment;
pub mod fanout;
pub mod identity;
pub mod pqxdh;
pub mod ratchet;
pub mod referral;
pub mod sealed;
pub mod session;
#[cfg(feature = "test-support")]
pub mod testing;

mod encoding;
#[cfg(feature = "net")]
pub mod net;
pub mod store;
