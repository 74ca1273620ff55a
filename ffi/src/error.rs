//! The one error type that crosses the FFI boundary.

use handover_core::client::ClientError;
use handover_core::engine::EngineError;
use handover_core::identity::CertificateError;
use handover_core::net::NetError;
use handover_core::referral::ReferralError;
use handover_core::store::StoreError;
use handover_proto::relay::v1::ErrorCode;

/// Everything that can go wrong in a Handover call, flattened from the core's error types.
///
/// Foreign code sees one exception type per variant (Kotlin `HandoverException.WrongCredential`,
/// Swift `HandoverError.WrongCredential`, Python `HandoverError.WrongCredential`) whose message
/// is the text below: written for a log or a support screen, never containing passphrases, keys,
/// record names or message content. Variants marked *transient* may succeed when retried later.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
#[non_exhaustive]
pub enum HandoverError {
    /// The passphrase or keystore key did not unlock the profile. Nothing was changed.
    #[error("could not unlock the profile: wrong passphrase or key")]
    WrongCredential,
    /// There is no profile in that directory.
    #[error("no profile exists in this directory")]
    ProfileNotFound,
    /// `create` was called where a profile already exists.
    #[error("a profile already exists in this directory")]
    ProfileExists,
    /// The profile's files are damaged or were tampered with.
    #[error("the profile is damaged: {detail}")]
    ProfileCorrupt {
        /// Which part failed (no data).
        detail: String,
    },
    /// The profile was locked ([`Profile::lock`](crate::Profile::lock)) or wiped; open it
    /// again.
    #[error("the profile is locked or wiped; open it again")]
    ProfileLocked,
    /// The duress passphrase would unlock the real profile; choose a different one.
    #[error("the duress passphrase must differ from every passphrase that unlocks the profile")]
    DuressMatchesCredential,
    /// An argument was rejected before anything was done (wrong key length, bad pin or address,
    /// value too large, parameters out of range).
    #[error("invalid argument: {detail}")]
    InvalidArgument {
        /// What was wrong.
        detail: String,
    },
    /// Local storage failed (disk full, permissions, I/O error, out of memory in key derivation).
    #[error("local storage failed: {detail}")]
    Storage {
        /// The underlying error.
        detail: String,
    },
    /// The relay could not be reached or the connection broke (*transient*).
    #[error("could not reach the relay: {detail}")]
    RelayUnreachable {
        /// The underlying error.
        detail: String,
    },
    /// The relay did not answer in time (*transient*).
    #[error("the relay did not answer in time; try again")]
    RelayTimeout,
    /// The relay is rate-limiting this client or is temporarily unavailable (*transient*).
    #[error("the relay is busy; retry in {retry_after_secs} s (0 = unknown): {detail}")]
    RelayBusy {
        /// The relay's explanation.
        detail: String,
        /// Seconds after which a retry may succeed (0 = unknown).
        retry_after_secs: u32,
    },
    /// The relay refused the request and will refuse it again.
    #[error("the relay refused the request ({code}): {detail}")]
    RelayRefused {
        /// The relay's error code name.
        code: String,
        /// The relay's explanation.
        detail: String,
    },
    /// The relay sent something that does not follow the protocol.
    #[error("protocol error: {detail}")]
    Protocol {
        /// What was wrong.
        detail: String,
    },
    /// The profile holds no identity yet (a new store, or one opened with the duress
    /// passphrase): create an organisation or enrol the device first.
    #[error("this profile has no identity yet; create an organisation or enrol this device")]
    NoIdentity,
    /// The invitation link or QR payload is malformed or has expired.
    #[error("{detail}")]
    InvalidInvitation {
        /// What was wrong (no part of the link).
        detail: String,
    },
    /// The other side's organisation is not trusted on this device yet: compare its
    /// fingerprint in person, then call `trust_organisation`.
    #[error(
        "the organisation is not trusted on this device; compare its fingerprint in person, then trust it"
    )]
    UntrustedOrganisation,
    /// The safety number given as compared is not this contact's; nothing was marked
    /// verified. Compare again; if it still differs, send the device no case details.
    #[error(
        "the safety number does not match this contact's; nothing was marked verified. Compare it again in person or by phone"
    )]
    SafetyNumberMismatch,
    /// The organisation fingerprint given as compared is not the organisation's; nothing was
    /// trusted or imported.
    #[error(
        "the fingerprint does not match this organisation's; nothing was trusted or imported. Compare it again with the organisation"
    )]
    FingerprintMismatch,
    /// The referral, consent receipt, contact or device named by an id is not known on this
    /// device.
    #[error("not found: {detail}")]
    NotFound {
        /// What was not found (a kind of thing, never the id's data).
        detail: String,
    },
    /// The contact cannot be reached yet (no reply address or no session).
    #[error("the contact cannot be reached yet: {detail}")]
    ContactNotReady {
        /// Why.
        detail: String,
    },
    /// This device may not do that (not an admin, no organisation root key, ambassador,
    /// revoked device, override without permission).
    #[error("not permitted: {detail}")]
    NotPermitted {
        /// Which rule refused.
        detail: String,
    },
    /// The consent gate refused the referral; the message names what the consent receipt does
    /// not cover (recipient, purpose, service or section) or why it is not valid. Nothing was
    /// sent.
    #[error("consent does not allow this: {detail}")]
    ConsentRefused {
        /// What is missing, with the short receipt id.
        detail: String,
    },
    /// A referral or consent step was refused (not allowed in the current state, wrong side, a
    /// reason is missing, content erased). Nothing changed.
    #[error("referral step refused: {detail}")]
    ReferralRefused {
        /// Why, with the state and a short referral id.
        detail: String,
    },
    /// Something received did not decrypt or verify, or an attachment failed its hash check.
    #[error("could not decrypt or verify: {detail}")]
    CouldNotDecrypt {
        /// What failed (never which key or byte).
        detail: String,
    },
    /// The call was cancelled (the foreign coroutine or task was cancelled).
    #[error("the operation was cancelled")]
    Cancelled,
    /// A bug or an unexpected state inside the library; please report it.
    #[error("internal error: {detail}")]
    Internal {
        /// What happened.
        detail: String,
    },
}

impl HandoverError {
    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        Self::InvalidArgument {
            detail: detail.into(),
        }
    }
}

impl From<StoreError> for HandoverError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongCredential => Self::WrongCredential,
            StoreError::NotFound => Self::ProfileNotFound,
            StoreError::AlreadyExists => Self::ProfileExists,
            StoreError::CorruptHeader | StoreError::CorruptRecord => Self::ProfileCorrupt {
                detail: e.to_string(),
            },
            StoreError::DuressMatchesCredential => Self::DuressMatchesCredential,
            StoreError::InvalidKdfParams
            | StoreError::InvalidKeyLength
            | StoreError::TooLarge { .. } => Self::invalid(e.to_string()),
            StoreError::Io(ref io) => Self::Storage {
                detail: format!("{e}: {io}"),
            },
            other => Self::Storage {
                detail: other.to_string(),
            },
        }
    }
}

impl From<NetError> for HandoverError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Resolve
            | NetError::Connect(_)
            | NetError::WrongPin
            | NetError::Connection(_) => Self::RelayUnreachable {
                detail: e.to_string(),
            },
            NetError::Setup(_) => Self::Internal {
                detail: e.to_string(),
            },
            NetError::Timeout => Self::RelayTimeout,
            NetError::Relay {
                code,
                message,
                retry_after_secs,
            } => match code {
                ErrorCode::RateLimited | ErrorCode::Unavailable => Self::RelayBusy {
                    detail: message,
                    retry_after_secs,
                },
                other => Self::RelayRefused {
                    code: other.as_str_name().to_owned(),
                    detail: message,
                },
            },
            NetError::TooLarge(_) => Self::invalid(e.to_string()),
            NetError::Io(_) => Self::Storage {
                detail: e.to_string(),
            },
            other => Self::Protocol {
                detail: other.to_string(),
            },
        }
    }
}

impl From<ClientError> for HandoverError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Engine(e) => e.into(),
            ClientError::Net(e) => e.into(),
            ClientError::Store(e) => e.into(),
            ClientError::Attachment(a) => match a {
                handover_core::attachment::AttachmentError::Io(_) => Self::Storage {
                    detail: format!("attachment: {a}"),
                },
                handover_core::attachment::AttachmentError::TooLarge
                | handover_core::attachment::AttachmentError::ExceedsLimit { .. } => {
                    Self::invalid(format!("attachment: {a}"))
                }
                other => Self::CouldNotDecrypt {
                    detail: format!("attachment: {other}"),
                },
            },
            ClientError::UnknownRelay => Self::ContactNotReady {
                detail: e.to_string(),
            },
            ClientError::Closed => Self::ProfileLocked,
            other => Self::Internal {
                detail: other.to_string(),
            },
        }
    }
}

impl From<EngineError> for HandoverError {
    fn from(e: EngineError) -> Self {
        let detail = e.to_string();
        match e {
            EngineError::NoProfile => Self::NoIdentity,
            EngineError::ProfileExists => Self::ProfileExists,
            EngineError::Store(s) => s.into(),
            EngineError::CorruptState => Self::ProfileCorrupt { detail },
            EngineError::CouldNotDecrypt => Self::CouldNotDecrypt { detail },
            EngineError::UntrustedOrganisation => Self::UntrustedOrganisation,
            EngineError::SafetyNumberMismatch => Self::SafetyNumberMismatch,
            EngineError::FingerprintMismatch => Self::FingerprintMismatch,
            EngineError::UnknownContact => Self::NotFound { detail },
            EngineError::NoSession | EngineError::NoAddress => Self::ContactNotReady { detail },
            EngineError::Revoked
            | EngineError::NotListed
            | EngineError::NotOrgKeyHolder
            | EngineError::NotAdmin => Self::NotPermitted { detail },
            EngineError::InvalidInvitation | EngineError::InvitationExpired => {
                Self::InvalidInvitation { detail }
            }
            EngineError::InvalidInput(what) if what.starts_with("no such") => Self::NotFound {
                detail: what.trim_start_matches("no such ").to_owned(),
            },
            EngineError::InvalidInput(_)
            | EngineError::TooLarge
            | EngineError::TooManyCapabilities
            | EngineError::Enrolment(_) => Self::InvalidArgument { detail },
            EngineError::Referral(r) => r.into(),
            EngineError::Certificate(c) => c.into(),
            _ => Self::Protocol { detail },
        }
    }
}

impl From<CertificateError> for HandoverError {
    /// A device that is revoked or whose certificate is outside its validity may not take
    /// part; a certificate of another organisation is one not trusted; parameters the caller
    /// chose are its to fix. The rest (malformed, a bad signature, a device list rolled back
    /// or forked) is a peer breaking the protocol.
    fn from(e: CertificateError) -> Self {
        let detail = e.to_string();
        match e {
            CertificateError::Revoked
            | CertificateError::Expired
            | CertificateError::NotYetValid
            | CertificateError::NotListed => Self::NotPermitted { detail },
            CertificateError::WrongOrganisation => Self::UntrustedOrganisation,
            CertificateError::InvalidParameters => Self::InvalidArgument { detail },
            _ => Self::Protocol { detail },
        }
    }
}

impl From<ReferralError> for HandoverError {
    fn from(e: ReferralError) -> Self {
        let detail = e.to_string();
        match e {
            ReferralError::Consent(handover_core::consent::GateError::OverrideNotPermitted)
            | ReferralError::Receipt(handover_core::consent::ConsentError::SignerNotPermitted)
            | ReferralError::AmbassadorCannotReceiveBody
            | ReferralError::AmbassadorCannotReceiveCase => Self::NotPermitted { detail },
            ReferralError::Receipt(handover_core::consent::ConsentError::MissingField {
                ..
            }) => Self::InvalidArgument { detail },
            ReferralError::Consent(_) => Self::ConsentRefused { detail },
            ReferralError::InvalidDraft { .. } | ReferralError::IdentifierInOffer { .. } => {
                Self::InvalidArgument { detail }
            }
            ReferralError::Malformed { .. }
            | ReferralError::BadSignature { .. }
            | ReferralError::UntrustedSigner { .. }
            | ReferralError::CouldNotDecrypt { .. }
            | ReferralError::CommitmentMismatch { .. } => Self::CouldNotDecrypt { detail },
            _ => Self::ReferralRefused { detail },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(e: CertificateError) -> HandoverError {
        EngineError::Certificate(e).into()
    }

    #[test]
    fn certificate_errors_reach_apps_typed() {
        for e in [
            CertificateError::Revoked,
            CertificateError::Expired,
            CertificateError::NotYetValid,
            CertificateError::NotListed,
        ] {
            let expected = e.to_string();
            assert!(
                matches!(mapped(e), HandoverError::NotPermitted { ref detail } if *detail == expected)
            );
        }
        assert!(matches!(
            mapped(CertificateError::WrongOrganisation),
            HandoverError::UntrustedOrganisation
        ));
        assert!(matches!(
            mapped(CertificateError::InvalidParameters),
            HandoverError::InvalidArgument { .. }
        ));
        for e in [CertificateError::Malformed, CertificateError::BadSignature] {
            assert!(matches!(mapped(e), HandoverError::Protocol { .. }));
        }
    }
}
