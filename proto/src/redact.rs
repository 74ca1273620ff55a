//! Hand-written `Debug` for the wire types that carry a secret: a file or section key, a send
//! capability, or the relay's mailbox-creation token. `build.rs` tells prost not to derive
//! `Debug` for them (`REDACTED_DEBUG`), so a `{:?}` of a request, a contact card or a released
//! body (in a log line, a test failure or a panic message) never prints the secret. Each implementation destructures `Self`, so a field
//! added to the `.proto` fails to compile here until someone decides whether it is secret.

use std::fmt;

use crate::e2e::v1 as e2e;
use crate::relay::v1 as relay;

/// Stands in for a secret field: shows only its length.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0)
    }
}

impl fmt::Debug for e2e::BlobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            blob_id,
            relay,
            key,
            plaintext_sha256,
            size,
        } = self;
        f.debug_struct("BlobRef")
            .field("blob_id", blob_id)
            .field("relay", relay)
            .field("key", &Redacted(key.len()))
            .field("plaintext_sha256", plaintext_sha256)
            .field("size", size)
            .finish()
    }
}

impl fmt::Debug for e2e::DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            device_id,
            relay,
            relay_pin,
            send_id,
            capability,
            sealing_key,
        } = self;
        f.debug_struct("DeviceAddress")
            .field("device_id", device_id)
            .field("relay", relay)
            .field("relay_pin", relay_pin)
            .field("send_id", send_id)
            .field("capability", &Redacted(capability.len()))
            .field("sealing_key", sealing_key)
            .finish()
    }
}

impl fmt::Debug for e2e::SectionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { section, key } = self;
        f.debug_struct("SectionKey")
            .field("section", section)
            .field("key", &Redacted(key.len()))
            .finish()
    }
}

impl fmt::Debug for relay::Send {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            send_id,
            capability,
            envelope,
        } = self;
        f.debug_struct("Send")
            .field("send_id", send_id)
            .field("capability", &Redacted(capability.len()))
            .field("envelope", envelope)
            .finish()
    }
}

impl fmt::Debug for relay::EnvelopeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            send_id,
            capability,
            envelope_ids,
        } = self;
        f.debug_struct("EnvelopeStatus")
            .field("send_id", send_id)
            .field("capability", &Redacted(capability.len()))
            .field("envelope_ids", envelope_ids)
            .finish()
    }
}

impl fmt::Debug for relay::PrekeyTake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            send_id,
            capability,
        } = self;
        f.debug_struct("PrekeyTake")
            .field("send_id", send_id)
            .field("capability", &Redacted(capability.len()))
            .finish()
    }
}

impl fmt::Debug for relay::CreateMailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            auth_key,
            capability_hashes,
            creation_token,
        } = self;
        f.debug_struct("CreateMailbox")
            .field("auth_key", auth_key)
            .field("capability_hashes", capability_hashes)
            .field("creation_token", &Redacted(creation_token.len()))
            .finish()
    }
}
