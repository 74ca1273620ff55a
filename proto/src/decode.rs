//! Decoding with validation: the only way bytes from a peer should become wire messages.
//!
//! [`message`] decodes any validated message type; the named functions below are the top-level
//! decoders (each has a fuzz target in `fuzz/`). Every failure is a [`DecodeError`] value: no
//! input panics, and no input makes the decoder allocate more than the input's own length (plus
//! prost's bounded per-field overhead), because frames are size-checked before decoding.

use prost::{Message, Name};

use crate::DecodeError;
use crate::e2e::v1 as e2e;
use crate::relay::v1 as relay;
use crate::validate::Validate;

/// Decodes and validates one message of type `M` from exactly `bytes`.
pub fn message<M: Message + Default + Name + Validate>(bytes: &[u8]) -> Result<M, DecodeError> {
    let decoded = M::decode(bytes).map_err(|err| DecodeError::Malformed {
        message: M::NAME,
        reason: err.to_string(),
    })?;
    decoded.validate()?;
    Ok(decoded)
}

/// `Request` with only its first field: every version of the relay protocol keeps
/// `protocol_version` as field 1 of the request, so it can be read before the rest of the request
/// is held to one version's schema.
#[derive(Clone, PartialEq, Message)]
struct VersionOnly {
    #[prost(uint32, tag = "1")]
    protocol_version: u32,
}

/// Reads only `protocol_version` (field 1) of an encoded relay request, of any version: every
/// other field is skipped unparsed, whatever its wire type. A relay calls this before
/// [`request`], so that a client speaking another version gets `ERROR_CODE_UNSUPPORTED_VERSION`
/// rather than a schema error.
pub fn request_version(bytes: &[u8]) -> Result<u32, DecodeError> {
    let decoded = VersionOnly::decode(bytes).map_err(|err| DecodeError::Malformed {
        message: <relay::Request as Name>::NAME,
        reason: err.to_string(),
    })?;
    Ok(decoded.protocol_version)
}

macro_rules! decoders {
    ($($(#[$doc:meta])* $name:ident => $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(bytes: &[u8]) -> Result<$ty, DecodeError> {
                message::<$ty>(bytes)
            }
        )*
    };
}

decoders! {
    /// A relay request (first frame of a client stream).
    request => relay::Request;
    /// A relay response (first frame the relay sends on a stream).
    response => relay::Response;
    /// A subscription event.
    event => relay::Event;
    /// A blob chunk.
    blob_chunk => relay::BlobChunk;
    /// The sealed-sender plaintext (after HPKE open and unpadding).
    sealed => e2e::Sealed;
    /// The plaintext of a ratchet message.
    content => e2e::Content;
    /// An invitation (from a link or QR code).
    invitation => e2e::Invitation;
    /// A signed device certificate.
    signed_device_certificate => e2e::SignedDeviceCertificate;
    /// The inner device certificate.
    device_certificate => e2e::DeviceCertificate;
    /// A signed device list.
    signed_device_list => e2e::SignedDeviceList;
    /// The inner device list.
    device_list => e2e::DeviceList;
    /// A signed organisation profile.
    signed_org_profile => e2e::SignedOrgProfile;
    /// The inner organisation profile.
    org_profile => e2e::OrgProfile;
    /// A device's long-lived prekeys.
    published_prekeys => e2e::PublishedPrekeys;
    /// A one-time X25519 prekey.
    one_time_prekey => e2e::OneTimePrekey;
    /// A signed ML-KEM prekey.
    signed_kem_prekey => e2e::SignedKemPrekey;
    /// A signed lifecycle control message.
    signed_control => e2e::SignedControl;
    /// The inner control message.
    referral_control => e2e::ReferralControl;
    /// A signed consent receipt.
    signed_consent_receipt => e2e::SignedConsentReceipt;
    /// The inner consent receipt.
    consent_receipt => e2e::ConsentReceipt;
    /// A referral offer.
    referral_offer => e2e::ReferralOffer;
    /// A referral offer with the sending device's signature.
    signed_referral_offer => e2e::SignedReferralOffer;
    /// A released referral body.
    referral_body => e2e::ReferralBody;
    /// A sent referral shared among the sending organisation's devices.
    sender_case => e2e::SenderCase;
    /// A signed team step (release claim, reassignment).
    signed_team_step => e2e::SignedTeamStep;
    /// The inner team step.
    team_step => e2e::TeamStep;
    /// The plaintext of one sealed body section.
    body_section => e2e::BodySection;
}
