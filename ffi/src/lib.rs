//! Handover FFI: thin UniFFI wrappers over the `handover-core` client API for Kotlin, Swift and
//! Python apps.
//!
//! This crate is not an API of its own: each export is a one- or two-line wrapper, objects release
//! their resources on drop, errors are one flattened enum ([`HandoverError`]), and the tokio
//! runtime stays inside Rust. It depends only on `handover-core` and must never depend on the relay.
//!
//! What is exported (docs/FFI.md has the app developer's view):
//!
//! - [`Profile`]: the encrypted local profile (store) on disk, unlocked by a [`Credential`]
//!   (passphrase, 32-byte platform-keystore key, or both); duress passphrase; panic wipe
//!   ([`Profile::panic_wipe`], [`panic_wipe_profile`]); encrypted app settings.
//! - [`Relay`]: a QUIC connection to a relay authenticated by its SPKI pin; ping and a latency
//!   check that reports progress through a foreign [`ProgressListener`].
//! - [`Client`]: the messaging client over a profile and its relay (enrolment, invitations,
//!   contacts and their [`SafetyNumber`]s, the members-only directory, chat with a foreign
//!   [`MessageListener`], referrals and consent, attachments with [`ProgressListener`]
//!   progress, panic wipe and duress).
//! - [`version`].
//!
//! Every slow call (key derivation, disk, network) is `async` on the foreign side and runs on a
//! tokio runtime owned by this library ([`runtime`]), never on the caller's thread.
//!
//! # Unsafe code
//!
//! The crate denies `unsafe_code` (the workspace forbids it; `forbid` cannot be lifted locally).
//! The only allowance is on the [`uniffi::setup_scaffolding!`] invocation and the uniffi derive
//! and export macros, whose generated `extern "C"` functions carry `#[no_mangle]` and convert raw
//! FFI buffers. That code is uniffi's, generated from the safe signatures below; this crate
//! contains no hand-written `unsafe` block.

// UniFFI's scaffolding: exported `extern "C"` symbols (`#[no_mangle]`) and the metadata that
// uniffi-bindgen reads from the compiled library. Generated code, see "Unsafe code" above.
#![allow(unsafe_code)]

mod client;
mod error;
mod profile;
mod referrals;
mod relay;
mod runtime;

pub use client::{
    Attachment, Client, ClientEvent, Contact, DevicePublicKeys, DirectoryEntry, DirectoryProfile,
    DirectoryQuery, Enrolment, Identity, Invitation, InvitationInfo, Message, MessageDirection,
    MessageKind, MessageListener, OrgProfileDetails, PendingDevice, QrCode, Role, SafetyNumber,
    invitation_info, org_fingerprint, qr_code,
};
pub use error::HandoverError;
pub use profile::{Credential, KdfSettings, Profile, default_kdf_settings, panic_wipe_profile};
pub use referrals::{
    BodySection, ConsentChange, ConsentController, ConsentDraft, ConsentPurpose, ConsentRecipient,
    ConsentRecord, ConsentWithheld, DoNotDiscloseRule, Party, PurgeReport, PurgeState, Referral,
    ReferralAction, ReferralConsent, ReferralDraft, ReferralEvent, ReferralOffer, ReferralSide,
};
pub use relay::{LatencyReport, ProgressListener, Relay};

uniffi::setup_scaffolding!();

/// The library's version and the Handover protocol version it speaks, e.g. "0.1.0 (protocol 1)".
#[uniffi::export]
pub fn version() -> String {
    format!(
        "{} (protocol {})",
        env!("CARGO_PKG_VERSION"),
        handover_proto::PROTOCOL_VERSION
    )
}
