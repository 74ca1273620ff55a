//! Contacts: safety numbers and verification, invitations, contact cards, contact records.

use handover_proto::validate::Validate as _;

use super::{
    Body, Contact, ContactRecord, CryptoRng, DeviceCertificate, DeviceId, Engine, EngineError,
    IssuedCapability, KEY_CAPS, KvStore, Namespace, OrgTrust, OutboxItem, PREFIX_DEVICE,
    PREFIX_IDENTITY_CHANGED, PREFIX_VERIFIED, PeerId, PrekeyBundle, Role, SafetyNumber, Session,
    State, WriteBatch, cert_root, decode, key, records, safety_binding, wire,
};

/// The identity key a signed certificate names (`None` if it does not decode).
fn identity_of(signed: &wire::SignedDeviceCertificate) -> Option<Vec<u8>> {
    decode::device_certificate(&signed.certificate)
        .ok()
        .map(|c| c.identity_key)
}

impl<S: KvStore> Engine<S> {
    // -----------------------------------------------------------------------------------------
    // Verification.

    /// The safety number of this device and a contact, to compare in person.
    pub fn safety_number(&self, contact: PeerId, now: u64) -> Result<SafetyNumber, EngineError> {
        let st = self.state()?;
        let cert = self.verified_contact_cert(contact, now)?;
        Ok(SafetyNumber::new(&st.own_cert, &cert))
    }

    /// Records that the user compared the safety number with `contact` (in person or by phone)
    /// and it matched. `compared` is the number as read from the contact's screen (only its
    /// digits count); if it is not the contact's current safety number nothing is recorded
    /// ([`EngineError::SafetyNumberMismatch`]). The record holds the contact's keys: should they
    /// change, [`Contact::verified`] turns false again.
    pub fn mark_contact_verified(
        &mut self,
        contact: PeerId,
        compared: &str,
        now: u64,
    ) -> Result<(), EngineError> {
        if !self.safety_number(contact, now)?.matches_digits(compared) {
            return Err(EngineError::SafetyNumberMismatch);
        }
        self.store_verified(contact)
    }

    /// Like [`mark_contact_verified`](Self::mark_contact_verified) with the QR payload scanned
    /// from the contact's screen ([`SafetyNumber::qr_payload`] on their side).
    pub fn mark_contact_verified_scanned(
        &mut self,
        contact: PeerId,
        scanned: &[u8],
        now: u64,
    ) -> Result<(), EngineError> {
        if !self.safety_number(contact, now)?.matches_scanned(scanned) {
            return Err(EngineError::SafetyNumberMismatch);
        }
        self.store_verified(contact)
    }

    /// Forgets that a contact was verified (for example after marking the wrong one).
    pub fn clear_contact_verified(&mut self, contact: PeerId) -> Result<(), EngineError> {
        if !self.state()?.contacts.contains_key(&contact) {
            return Err(EngineError::UnknownContact);
        }
        self.store.delete(
            Namespace::Contacts,
            &key(PREFIX_VERIFIED, &contact.storage_key()),
        )?;
        self.state_mut()?.verified.remove(&contact);
        Ok(())
    }

    /// Acknowledges that a contact's identity key changed ([`Contact::identity_changed`])
    /// without verifying the new safety number: the warning is cleared, the contact stays
    /// unverified. Marking it verified clears the warning too.
    pub fn acknowledge_identity_change(&mut self, contact: PeerId) -> Result<(), EngineError> {
        if !self.state()?.contacts.contains_key(&contact) {
            return Err(EngineError::UnknownContact);
        }
        self.store.delete(
            Namespace::Contacts,
            &key(PREFIX_IDENTITY_CHANGED, &contact.storage_key()),
        )?;
        self.state_mut()?.identity_changed.remove(&contact);
        Ok(())
    }

    fn store_verified(&mut self, contact: PeerId) -> Result<(), EngineError> {
        let st = self.state()?;
        let c = st
            .contacts
            .get(&contact)
            .ok_or(EngineError::UnknownContact)?;
        let binding = safety_binding(&c.certificate).ok_or(EngineError::CorruptState)?;
        let mut batch = WriteBatch::new();
        batch.put(
            Namespace::Contacts,
            &key(PREFIX_VERIFIED, &contact.storage_key()),
            &records::encode_verified(&binding),
        );
        batch.delete(
            Namespace::Contacts,
            &key(PREFIX_IDENTITY_CHANGED, &contact.storage_key()),
        );
        self.store.apply_batch(batch)?;
        let st = self.state_mut()?;
        st.verified.insert(contact, binding);
        st.identity_changed.remove(&contact);
        Ok(())
    }

    /// Whether a contact's safety number was compared for the keys its certificate has now, and
    /// its organisation is trusted and has not revoked it.
    fn contact_verified(st: &State, peer: &PeerId, contact: &ContactRecord) -> bool {
        let Some(stored) = st.verified.get(peer) else {
            return false;
        };
        let active = st
            .orgs
            .get(&peer.org_root)
            .is_some_and(|org| !org.trust.is_revoked(&peer.device_id));
        active && safety_binding(&contact.certificate).as_ref() == Some(stored)
    }

    /// Stages `record` as the contact record of `peer` (whose organisation root and device id
    /// the caller took from the record's verified certificate). If the peer is known with
    /// another identity key, the change is recorded ([`Contact::identity_changed`]) and its
    /// verified mark deleted. Returns whether the identity key changed; install the record
    /// with [`install_contact`](Self::install_contact) after the batch is applied.
    pub(super) fn stage_contact(
        &self,
        batch: &mut WriteBatch,
        peer: PeerId,
        record: &ContactRecord,
    ) -> Result<bool, EngineError> {
        let st = self.state()?;
        let changed = st
            .contacts
            .get(&peer)
            .is_some_and(|old| identity_of(&old.certificate) != identity_of(&record.certificate));
        batch.put(
            Namespace::Contacts,
            &key(PREFIX_DEVICE, &peer.storage_key()),
            &record.encode(),
        );
        if changed {
            batch.put(
                Namespace::Contacts,
                &key(PREFIX_IDENTITY_CHANGED, &peer.storage_key()),
                b"",
            );
            batch.delete(
                Namespace::Contacts,
                &key(PREFIX_VERIFIED, &peer.storage_key()),
            );
        }
        Ok(changed)
    }

    /// Installs a contact record staged with [`stage_contact`](Self::stage_contact).
    pub(super) fn install_contact(
        &mut self,
        peer: PeerId,
        record: ContactRecord,
        identity_changed: bool,
    ) -> Result<(), EngineError> {
        let st = self.state_mut()?;
        st.contacts.insert(peer, record);
        if identity_changed {
            st.identity_changed.insert(peer);
            st.verified.remove(&peer);
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Invitations.

    /// Creates an invitation with a fresh send capability valid until `expires_at` for the
    /// first contact, plus the contact's reply. Register the new
    /// [`capability_hashes`](Self::capability_hashes) with the relay (`SetCapabilities`) before
    /// sharing it, then share [`invitation_link`] as a link or QR code.
    pub fn create_invitation(
        &mut self,
        expires_at: u64,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<wire::Invitation, EngineError> {
        if expires_at <= now {
            return Err(EngineError::InvalidInput(
                "invitation expiry must be in the future",
            ));
        }
        let mut caps = self.clone_caps()?;
        // The capability outlives the invitation: the acceptor's first message may still be in
        // flight when the invitation expires; it is replaced once the contact card arrives.
        let cap = self.issue_capability(
            &mut caps,
            expires_at.saturating_add(self.envelope_ttl),
            None,
            now,
            rng,
        )?;
        let address = self.own_address(cap)?;
        self.store
            .put(Namespace::Settings, KEY_CAPS, &records::encode_caps(&caps))?;
        let st = self.state_mut()?;
        st.caps = caps;
        let st = self.state()?;
        Ok(wire::Invitation {
            address: Some(address),
            certificate: Some(st.profile.certificate.clone()),
            device_list: self.own_device_list()?,
            display_name: st.profile.display_name.clone(),
            expires_at,
        })
    }

    pub(super) fn clone_caps(&self) -> Result<Vec<IssuedCapability>, EngineError> {
        Ok(self
            .state()?
            .caps
            .iter()
            .map(|c| IssuedCapability {
                capability: c.capability.clone(),
                expires_at: c.expires_at,
                contact: c.contact,
            })
            .collect())
    }

    /// The device and organisation an invitation comes from, checked against the trusted
    /// organisations: returns the inviter's device id, or
    /// [`EngineError::UntrustedOrganisation`] with the root the user must verify first
    /// (see [`invitation_org_root`]).
    pub fn check_invitation(
        &self,
        invitation: &wire::Invitation,
        now: u64,
    ) -> Result<PeerId, EngineError> {
        invitation
            .validate()
            .map_err(|_| EngineError::InvalidInvitation)?;
        if invitation.expires_at <= now {
            return Err(EngineError::InvitationExpired);
        }
        let signed = invitation
            .certificate
            .as_ref()
            .ok_or(EngineError::InvalidInvitation)?;
        let root = cert_root(signed).ok_or(EngineError::InvalidInvitation)?;
        let st = self.state()?;
        let org = st
            .orgs
            .get(&root)
            .ok_or(EngineError::UntrustedOrganisation)?;
        let mut trust = org.trust.clone();
        if let Some(list) = &invitation.device_list {
            // A newer list may revoke devices; an older or foreign one is ignored.
            let _ = trust.apply_device_list(list);
        }
        let cert = trust.verify_certificate(signed, now)?;
        let address = invitation
            .address
            .as_ref()
            .ok_or(EngineError::InvalidInvitation)?;
        if address.device_id != cert.device_id().0 || PeerId::of(&cert) == PeerId::of(&st.own_cert)
        {
            return Err(EngineError::InvalidInvitation);
        }
        Ok(PeerId::of(&cert))
    }

    /// Accepts an invitation: stores the inviter as a contact, starts a session from the
    /// prekey bundle the driver took with the invitation's address (`PrekeyTake` with its send
    /// id and capability), and queues a first message carrying this device's
    /// [`ContactCard`](wire::ContactCard) with a fresh capability for the inviter. Register the
    /// new capability hashes with the relay before sending the returned outbox entry.
    pub fn accept_invitation(
        &mut self,
        invitation: &wire::Invitation,
        bundle: &PrekeyBundle,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(PeerId, OutboxItem), EngineError> {
        let inviter = self.check_invitation(invitation, now)?;
        let signed = invitation
            .certificate
            .clone()
            .ok_or(EngineError::InvalidInvitation)?;
        let root = inviter.org_root;
        let mut batch = WriteBatch::new();
        let staged_org =
            self.stage_carried_list(&root, invitation.device_list.as_ref(), &mut batch);
        let trust = self.trust_after(&root, staged_org.as_ref())?;
        let st = self.state()?;
        let (session, peer) = Session::initiate(
            &st.profile.device,
            &st.profile.certificate,
            trust,
            bundle,
            now,
            rng,
        )?;
        if PeerId::of(&peer) != inviter || peer.signed() != &signed {
            return Err(EngineError::InvalidBundle);
        }
        let contact = ContactRecord {
            certificate: signed,
            address: invitation.address.clone(),
            display_name: invitation.display_name.clone(),
        };
        self.stage_session_replacement(&mut batch, inviter, &session)?;
        let mut caps = self.clone_caps()?;
        let item = self.stage_contact_card(
            &mut batch, inviter, &contact, trust, session, &mut caps, now, rng,
        )?;
        let changed = self.stage_contact(&mut batch, inviter, &contact)?;
        self.store.apply_batch(batch)?;
        self.install_contact(inviter, contact, changed)?;
        let st = self.state_mut()?;
        st.caps = caps;
        if let Some(entry) = staged_org {
            st.orgs.insert(root, entry);
        }
        Ok((inviter, item))
    }

    /// Sends this device's [`ContactCard`](wire::ContactCard) (reply address with a fresh
    /// capability, certificate, device list, display name) to a contact it already has a
    /// session with, for example an intake device found in the directory, so it can answer.
    /// Register the new capability hashes with the relay before sending the entry.
    pub fn send_contact_card(
        &mut self,
        to: PeerId,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<OutboxItem, EngineError> {
        let st = self.state()?;
        let contact = st.contacts.get(&to).ok_or(EngineError::UnknownContact)?;
        let session = self.load_session(to)?.ok_or(EngineError::NoSession)?;
        let mut batch = WriteBatch::new();
        let trust = self.org_trust(&to.org_root)?;
        let mut caps = self.clone_caps()?;
        let item =
            self.stage_contact_card(&mut batch, to, contact, trust, session, &mut caps, now, rng)?;
        self.store.apply_batch(batch)?;
        self.state_mut()?.caps = caps;
        Ok(item)
    }

    /// Stages (session, outbox entry, capability set) for a contact card to `to`: the new
    /// capability is added to `caps`, and `caps` as it then is goes into the batch (a later
    /// card staged in the same batch writes the set again, with its own capability added).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stage_contact_card(
        &self,
        batch: &mut WriteBatch,
        to: PeerId,
        contact: &ContactRecord,
        trust: &OrgTrust,
        mut session: Session,
        caps: &mut Vec<IssuedCapability>,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<OutboxItem, EngineError> {
        Self::release_check_with(trust, to, contact, &session, now)?;
        let cap = self.issue_capability(caps, u64::MAX, Some(to.device_id), now, rng)?;
        let st = self.state()?;
        let card = wire::ContactCard {
            address: Some(self.own_address(cap)?),
            certificate: Some(st.profile.certificate.clone()),
            device_list: self.own_device_list()?,
            display_name: st.profile.display_name.clone(),
        };
        let content = self.new_content(Body::ContactCard(card), now, rng);
        let address = contact.address.as_ref().ok_or(EngineError::NoAddress)?;
        let item = self.seal_to(&mut session, address, to, &content, now, rng)?;
        self.stage_session(batch, to, &session);
        batch.put(Namespace::Outbox, &self.outbox_key(&item)?, &item.encode());
        batch.put(Namespace::Settings, KEY_CAPS, &records::encode_caps(caps));
        Ok(item)
    }

    // -----------------------------------------------------------------------------------------
    // Contact records.

    /// The known contacts.
    pub fn contacts(&self) -> Result<Vec<Contact>, EngineError> {
        let st = self.state()?;
        let mut out = Vec::new();
        for (peer, c) in &st.contacts {
            let cert = decode::device_certificate(&c.certificate.certificate).ok();
            out.push(Contact {
                device_id: peer.device_id,
                org_root: peer.org_root,
                role: cert.and_then(|c| match c.role {
                    1 => Some(Role::Admin),
                    2 => Some(Role::Caseworker),
                    3 => Some(Role::Ambassador),
                    _ => None,
                }),
                display_name: c.display_name.clone(),
                has_address: c.address.is_some(),
                has_session: self.has_session(*peer)?,
                verified: Self::contact_verified(st, peer, c),
                identity_changed: st.identity_changed.contains(peer),
            });
        }
        Ok(out)
    }

    /// The one contact with device id `device` (for user interfaces that name a contact by its
    /// device id). [`EngineError::UnknownContact`] if there is none; if several organisations'
    /// devices share the id, an [`EngineError::InvalidInput`] asking for the peer id.
    pub fn peer_by_device_id(&self, device: DeviceId) -> Result<PeerId, EngineError> {
        let mut found = self
            .state()?
            .contacts
            .keys()
            .filter(|p| p.device_id == device);
        let first = *found.next().ok_or(EngineError::UnknownContact)?;
        if found.next().is_some() {
            return Err(EngineError::InvalidInput(
                "several contacts of different organisations share this device id; name the contact by its organisation root and device id",
            ));
        }
        Ok(first)
    }

    /// The address of a contact (to take its prekey bundle with `PrekeyTake`).
    pub fn contact_address(&self, contact: PeerId) -> Result<wire::DeviceAddress, EngineError> {
        let st = self.state()?;
        st.contacts
            .get(&contact)
            .ok_or(EngineError::UnknownContact)?
            .address
            .clone()
            .ok_or(EngineError::NoAddress)
    }

    pub(super) fn verified_contact_cert(
        &self,
        contact: PeerId,
        now: u64,
    ) -> Result<DeviceCertificate, EngineError> {
        self.checked_cert(contact, self.contact_record(contact)?, now)
    }

    /// The stored record of a contact ([`EngineError::UnknownContact`] if there is none).
    pub(super) fn contact_record(&self, contact: PeerId) -> Result<&ContactRecord, EngineError> {
        self.state()?
            .contacts
            .get(&contact)
            .ok_or(EngineError::UnknownContact)
    }

    /// The contact's certificate, verified by its organisation (not revoked) and issued to
    /// `contact`.
    fn checked_cert(
        &self,
        contact: PeerId,
        record: &ContactRecord,
        now: u64,
    ) -> Result<DeviceCertificate, EngineError> {
        let st = self.state()?;
        let org = st
            .orgs
            .get(&contact.org_root)
            .ok_or(EngineError::UntrustedOrganisation)?;
        if org.trust.is_revoked(&contact.device_id) {
            return Err(EngineError::Revoked);
        }
        let cert = org.trust.verify_certificate(&record.certificate, now)?;
        if PeerId::of(&cert) != contact {
            return Err(EngineError::CorruptState);
        }
        Ok(cert)
    }

    /// The contact's certificate, checked as by
    /// [`verified_contact_cert`](Self::verified_contact_cert) and also the certificate its
    /// organisation's current device list holds for it ([`EngineError::NotListed`] otherwise,
    /// or when no list of that organisation is known).
    pub(super) fn listed_contact_cert(
        &self,
        contact: PeerId,
        now: u64,
    ) -> Result<DeviceCertificate, EngineError> {
        self.listed_cert(contact, self.contact_record(contact)?, now)
    }

    fn listed_cert(
        &self,
        contact: PeerId,
        record: &ContactRecord,
        now: u64,
    ) -> Result<DeviceCertificate, EngineError> {
        let trust = self.org_trust(&contact.org_root)?;
        Self::listed_cert_in(trust, contact, record, now)
    }

    /// [`listed_cert`](Self::listed_cert) against `trust` (possibly staged, not installed).
    fn listed_cert_in(
        trust: &OrgTrust,
        contact: PeerId,
        record: &ContactRecord,
        now: u64,
    ) -> Result<DeviceCertificate, EngineError> {
        if trust.root().to_bytes() != contact.org_root {
            return Err(EngineError::NotListed);
        }
        if trust.is_revoked(&contact.device_id) {
            return Err(EngineError::Revoked);
        }
        let cert = trust.verify_certificate(&record.certificate, now)?;
        if PeerId::of(&cert) != contact
            || trust.listed_certificate(&contact.device_id) != Some(&record.certificate)
        {
            return Err(EngineError::NotListed);
        }
        Ok(cert)
    }

    /// The release check of [`release_check`](Self::release_check) for a contact record that
    /// may not be installed yet (a contact card staged with a new session).
    pub(super) fn release_check_with(
        trust: &OrgTrust,
        peer: PeerId,
        record: &ContactRecord,
        session: &Session,
        now: u64,
    ) -> Result<DeviceCertificate, EngineError> {
        let cert = Self::listed_cert_in(trust, peer, record, now)?;
        if session.remote_identity_key() != cert.identity_key()
            || session.remote_device_id() != peer.device_id
        {
            return Err(EngineError::NotListed);
        }
        Ok(cert)
    }
}
