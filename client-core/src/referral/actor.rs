//! The acting device: its secret keys and its verified certificate.

use std::fmt;

use subtle::ConstantTimeEq;

use crate::identity::{self, DeviceCertificate, DeviceKeys, Role};

/// A device acting in the referral and consent protocols: its keys (to sign control messages,
/// offers and consent receipts) and its own certificate (to tell peers who signed).
///
/// **Override permission.** Sharing without consent needs an acting device with the
/// [`Role::Admin`] role. The permission lives in the certificate the organisation root signed,
/// so a receiver can check it too; there is no locally asserted flag.
pub struct Actor<'a> {
    keys: &'a DeviceKeys,
    cert: DeviceCertificate,
}

impl fmt::Debug for Actor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { keys: _, cert } = self;
        f.debug_struct("Actor")
            .field("device_id", &cert.device_id())
            .field("role", &cert.role())
            .finish_non_exhaustive()
    }
}

impl<'a> Actor<'a> {
    /// Pairs device keys with their certificate (verified by the caller, for example with
    /// `OrgTrust::verify_certificate`). Returns `None` if the certificate does not certify these
    /// keys.
    pub fn new(keys: &'a DeviceKeys, cert: DeviceCertificate) -> Option<Self> {
        let public = keys.public_keys();
        let same_key = public.signing_key.ct_eq(&cert.signing_key());
        let same_device = public.device_id.0.ct_eq(&cert.device_id().0);
        bool::from(same_key & same_device).then_some(Self { keys, cert })
    }

    /// The acting device's certificate.
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.cert
    }

    /// The acting device's role.
    pub fn role(&self) -> Role {
        self.cert.role()
    }

    /// Whether this device may authorise sharing without consent (ADMIN role).
    pub fn may_override(&self) -> bool {
        self.cert.role() == Role::Admin
    }

    /// Ed25519 signature over `label || message`.
    pub(crate) fn sign(&self, label: &[u8], message: &[u8]) -> [u8; 64] {
        identity::sign_labelled(self.keys.signing_key(), label, message)
    }
}
