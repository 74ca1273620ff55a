//! Pairwise sessions with contacts.

use super::{CryptoRng, DeviceId, Engine, EngineError, KvStore, Namespace, PrekeyBundle, Session};

impl<S: KvStore> Engine<S> {
    /// Starts a session with a contact from the prekey bundle the driver took from the relay
    /// with the contact's address. The first message sent on it carries the PQXDH initial
    /// message.
    pub fn start_session(
        &mut self,
        contact: DeviceId,
        bundle: &PrekeyBundle,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(), EngineError> {
        let cert = self.verified_contact_cert(contact, now)?;
        let st = self.state()?;
        let root = cert.org_root_key().to_bytes();
        let org = st
            .orgs
            .get(&root)
            .ok_or(EngineError::UntrustedOrganisation)?;
        let (session, peer) = Session::initiate(&st.profile.device, &org.trust, bundle, now, rng)?;
        if peer.device_id() != contact {
            return Err(EngineError::InvalidBundle);
        }
        self.store
            .put(Namespace::Sessions, &contact.0, &session.to_secret_bytes())?;
        Ok(())
    }

    /// Whether a session exists with a contact.
    pub fn has_session(&self, contact: DeviceId) -> Result<bool, EngineError> {
        Ok(self.store.contains(Namespace::Sessions, &contact.0)?)
    }

    pub(super) fn load_session(&self, contact: DeviceId) -> Result<Option<Session>, EngineError> {
        match self.store.get(Namespace::Sessions, &contact.0)? {
            Some(b) => Ok(Some(
                Session::from_secret_bytes(&b).map_err(|_| EngineError::CorruptState)?,
            )),
            None => Ok(None),
        }
    }
}
