//! Pairwise sessions with peers, keyed by [`PeerId`], and the previous sessions kept after a
//! replacement (docs/PROTOCOL.md §6.4).

use super::{
    CryptoRng, DeviceCertificate, Engine, EngineError, KvStore, MAX_PREVIOUS_SESSIONS, Namespace,
    PREFIX_PREVIOUS_SESSIONS, PeerId, PrekeyBundle, Session, WriteBatch, key, records,
};

impl<S: KvStore> Engine<S> {
    /// Starts a session with a contact from the prekey bundle the driver took from the relay
    /// with the contact's address. The first message sent on it carries the PQXDH initial
    /// message. The bundle's certificate must be the contact's, as listed by its organisation.
    pub fn start_session(
        &mut self,
        contact: PeerId,
        bundle: &PrekeyBundle,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(), EngineError> {
        let cert = self.listed_contact_cert(contact, now)?;
        let st = self.state()?;
        let org = st
            .orgs
            .get(&contact.org_root)
            .ok_or(EngineError::UntrustedOrganisation)?;
        let (session, peer) = Session::initiate(
            &st.profile.device,
            &st.profile.certificate,
            &org.trust,
            bundle,
            now,
            rng,
        )?;
        if PeerId::of(&peer) != contact || peer.signed() != cert.signed() {
            return Err(EngineError::InvalidBundle);
        }
        let mut batch = WriteBatch::new();
        self.stage_session_replacement(&mut batch, contact, &session)?;
        self.store.apply_batch(batch)?;
        Ok(())
    }

    /// Whether a session exists with a contact.
    pub fn has_session(&self, contact: PeerId) -> Result<bool, EngineError> {
        Ok(self
            .store
            .contains(Namespace::Sessions, &contact.storage_key())?)
    }

    pub(super) fn load_session(&self, contact: PeerId) -> Result<Option<Session>, EngineError> {
        match self
            .store
            .get(Namespace::Sessions, &contact.storage_key())?
        {
            Some(b) => Ok(Some(
                Session::from_secret_bytes(&b).map_err(|_| EngineError::CorruptState)?,
            )),
            None => Ok(None),
        }
    }

    /// Stages `session` as the current session with `peer`.
    pub(super) fn stage_session(&self, batch: &mut WriteBatch, peer: PeerId, session: &Session) {
        batch.put(
            Namespace::Sessions,
            &peer.storage_key(),
            &session.to_secret_bytes(),
        );
    }

    /// The previous sessions with `peer`, newest first.
    pub(super) fn load_previous_sessions(&self, peer: PeerId) -> Result<Vec<Session>, EngineError> {
        match self.store.get(
            Namespace::Sessions,
            &key(PREFIX_PREVIOUS_SESSIONS, &peer.storage_key()),
        )? {
            Some(b) => records::decode_sessions(&b)?
                .iter()
                .map(|s| Session::from_secret_bytes(s).map_err(|_| EngineError::CorruptState))
                .collect(),
            None => Ok(Vec::new()),
        }
    }

    /// Stages the previous sessions with `peer` (newest first, at most
    /// [`MAX_PREVIOUS_SESSIONS`]).
    pub(super) fn stage_previous_sessions(
        &self,
        batch: &mut WriteBatch,
        peer: PeerId,
        previous: &[Session],
    ) {
        let k = key(PREFIX_PREVIOUS_SESSIONS, &peer.storage_key());
        let kept = &previous[..previous.len().min(MAX_PREVIOUS_SESSIONS)];
        if kept.is_empty() {
            batch.delete(Namespace::Sessions, &k);
        } else {
            let bytes: Vec<_> = kept.iter().map(Session::to_secret_bytes).collect();
            batch.put(Namespace::Sessions, &k, &records::encode_sessions(&bytes));
        }
    }

    /// Stages `session` as the current session with `peer`; the current one, if any, becomes
    /// the newest previous session.
    pub(super) fn stage_session_replacement(
        &self,
        batch: &mut WriteBatch,
        peer: PeerId,
        session: &Session,
    ) -> Result<(), EngineError> {
        if let Some(current) = self.load_session(peer)? {
            let mut previous = self.load_previous_sessions(peer)?;
            previous.insert(0, current);
            self.stage_previous_sessions(batch, peer, &previous);
        }
        self.stage_session(batch, peer, session);
        Ok(())
    }

    /// The release check (docs/PROTOCOL.md §5.5): before anything is sealed to `peer`, its
    /// contact certificate must verify, be the certificate its organisation's current device
    /// list holds for it, and carry the identity key of `session`. Returns the certificate.
    pub(super) fn release_check(
        &self,
        peer: PeerId,
        session: &Session,
        now: u64,
    ) -> Result<DeviceCertificate, EngineError> {
        let record = self.contact_record(peer)?;
        Self::release_check_with(self.org_trust(&peer.org_root)?, peer, record, session, now)
    }
}
