//! Contacts: safety numbers and verification, invitations, contact cards, contact records.

use handover_proto::validate::Validate as _;

use super::{
    Body, Contact, ContactRecord, CryptoRng, DeviceCertificate, DeviceId, Engine, EngineError,
    IssuedCapability, KEY_CAPS, KEY_LEN, KvStore, Namespace, OutboxItem, PREFIX_DEVICE,
    PREFIX_VERIFIED, PrekeyBundle, Role, SafetyNumber, Session, State, WriteBatch, cert_root,
    decode, key, records, safety_binding, wire,
};

impl<S: KvStore> Engine<S> {
    // -----------------------------------------------------------------------------------------
    // Verification.

    /// The safety number of this device and a contact, to compare in person.
    pub fn safety_number(&self, contact: DeviceId, now: u64) -> Result<SafetyNumber, EngineError> {
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
        contact: DeviceId,
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
        contact: DeviceId,
        scanned: &[u8],
        now: u64,
    ) -> Result<(), EngineError> {
        if !self.safety_number(contact, now)?.matches_scanned(scanned) {
            return Err(EngineError::SafetyNumberMismatch);
        }
        self.store_verified(contact)
    }

    /// Forgets that a contact was verified (for example after marking the wrong one).
    pub fn clear_contact_verified(&mut self, contact: DeviceId) -> Result<(), EngineError> {
        if !self.state()?.contacts.contains_key(&contact) {
            return Err(EngineError::UnknownContact);
        }
        self.store
            .delete(Namespace::Contacts, &key(PREFIX_VERIFIED, &contact.0))?;
        self.state_mut()?.verified.remove(&contact);
        Ok(())
    }

    fn store_verified(&mut self, contact: DeviceId) -> Result<(), EngineError> {
        let st = self.state()?;
        let c = st
            .contacts
            .get(&contact)
            .ok_or(EngineError::UnknownContact)?;
        let binding = safety_binding(&c.certificate).ok_or(EngineError::CorruptState)?;
        self.store.put(
            Namespace::Contacts,
            &key(PREFIX_VERIFIED, &contact.0),
            &records::encode_verified(&binding),
        )?;
        self.state_mut()?.verified.insert(contact, binding);
        Ok(())
    }

    /// Whether a contact's safety number was compared for the keys its certificate has now, and
    /// its organisation is trusted and has not revoked it.
    fn contact_verified(st: &State, id: &DeviceId, contact: &ContactRecord) -> bool {
        let Some(stored) = st.verified.get(id) else {
            return false;
        };
        let active = cert_root(&contact.certificate)
            .and_then(|root| st.orgs.get(&root))
            .is_some_and(|org| !org.trust.is_revoked(id));
        active && safety_binding(&contact.certificate).as_ref() == Some(stored)
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
    ) -> Result<DeviceId, EngineError> {
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
        if address.device_id != cert.device_id().0 || cert.device_id() == st.own_cert.device_id() {
            return Err(EngineError::InvalidInvitation);
        }
        Ok(cert.device_id())
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
    ) -> Result<(DeviceId, OutboxItem), EngineError> {
        let inviter = self.check_invitation(invitation, now)?;
        let signed = invitation
            .certificate
            .clone()
            .ok_or(EngineError::InvalidInvitation)?;
        let root = cert_root(&signed).ok_or(EngineError::InvalidInvitation)?;
        let mut batch = WriteBatch::new();
        let staged_org =
            self.stage_carried_list(&root, invitation.device_list.as_ref(), &mut batch);
        let trust = self.trust_after(&root, staged_org.as_ref())?;
        let st = self.state()?;
        let (session, peer) = Session::initiate(&st.profile.device, trust, bundle, now, rng)?;
        if peer.device_id() != inviter {
            return Err(EngineError::InvalidBundle);
        }
        let contact = ContactRecord {
            certificate: signed,
            address: invitation.address.clone(),
            display_name: invitation.display_name.clone(),
        };
        let (item, caps) =
            self.stage_contact_card(&mut batch, inviter, &contact, session, now, rng)?;
        batch.put(
            Namespace::Contacts,
            &key(PREFIX_DEVICE, &inviter.0),
            &contact.encode(),
        );
        self.store.apply_batch(batch)?;
        let st = self.state_mut()?;
        st.caps = caps;
        st.contacts.insert(inviter, contact);
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
        to: DeviceId,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<OutboxItem, EngineError> {
        self.verified_contact_cert(to, now)?;
        let st = self.state()?;
        let contact = st.contacts.get(&to).ok_or(EngineError::UnknownContact)?;
        let session = self.load_session(to)?.ok_or(EngineError::NoSession)?;
        let mut batch = WriteBatch::new();
        let (item, caps) = self.stage_contact_card(&mut batch, to, contact, session, now, rng)?;
        self.store.apply_batch(batch)?;
        self.state_mut()?.caps = caps;
        Ok(item)
    }

    /// Stages (session, outbox entry, capability set) for a contact card to `to`.
    fn stage_contact_card(
        &self,
        batch: &mut WriteBatch,
        to: DeviceId,
        contact: &ContactRecord,
        mut session: Session,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(OutboxItem, Vec<IssuedCapability>), EngineError> {
        let mut caps = self.clone_caps()?;
        let cap = self.issue_capability(&mut caps, u64::MAX, Some(to), now, rng)?;
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
        batch.put(Namespace::Sessions, &to.0, &session.to_secret_bytes());
        batch.put(Namespace::Outbox, &self.outbox_key(&item)?, &item.encode());
        batch.put(Namespace::Settings, KEY_CAPS, &records::encode_caps(&caps));
        Ok((item, caps))
    }

    // -----------------------------------------------------------------------------------------
    // Contact records.

    /// The known contacts.
    pub fn contacts(&self) -> Result<Vec<Contact>, EngineError> {
        let st = self.state()?;
        let mut out = Vec::new();
        for (id, c) in &st.contacts {
            let cert = decode::device_certificate(&c.certificate.certificate).ok();
            out.push(Contact {
                device_id: *id,
                org_root: cert_root(&c.certificate).unwrap_or([0; KEY_LEN]),
                role: cert.and_then(|c| match c.role {
                    1 => Some(Role::Admin),
                    2 => Some(Role::Caseworker),
                    3 => Some(Role::Ambassador),
                    _ => None,
                }),
                display_name: c.display_name.clone(),
                has_address: c.address.is_some(),
                has_session: self.store.contains(Namespace::Sessions, &id.0)?,
                verified: Self::contact_verified(st, id, c),
            });
        }
        Ok(out)
    }

    /// The address of a contact (to take its prekey bundle with `PrekeyTake`).
    pub fn contact_address(&self, contact: DeviceId) -> Result<wire::DeviceAddress, EngineError> {
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
        contact: DeviceId,
        now: u64,
    ) -> Result<DeviceCertificate, EngineError> {
        let st = self.state()?;
        let c = st
            .contacts
            .get(&contact)
            .ok_or(EngineError::UnknownContact)?;
        let root = cert_root(&c.certificate).ok_or(EngineError::CorruptState)?;
        let org = st
            .orgs
            .get(&root)
            .ok_or(EngineError::UntrustedOrganisation)?;
        if org.trust.is_revoked(&contact) {
            return Err(EngineError::Revoked);
        }
        Ok(org.trust.verify_certificate(&c.certificate, now)?)
    }
}
