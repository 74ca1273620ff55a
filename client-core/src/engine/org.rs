//! Organisation state: trusted roots, device lists, enrolment and revocation, fan-out to
//! an organisation's devices (docs/PROTOCOL.md §10) and the directory's signed profiles.

use ed25519_dalek::Signer as _;
use handover_proto::validate::Validate as _;
use prost::Message as _;

use super::{
    Body, CertificateError, ContactRecord, CryptoRng, DEFAULT_CERTIFICATE_VALIDITY, DeviceId,
    DevicePublicKeys, Direction, Engine, EngineError, FanoutSent, ID_LEN, KEY_CAPS, KEY_LEN,
    KvStore, LABEL_ORG_PROFILE, Message, Namespace, OrgEntry, OrgRootPublicKey, OrgTrust,
    OutboxItem, PREFIX_ORG, PeerId, PreparedPacket, ProfileDetails, Role, VerifiedProfile,
    WriteBatch, decode, fanout, key, org_fingerprint, org_fingerprint_matches, records, to_id,
    wire,
};

impl<S: KvStore> Engine<S> {
    // -----------------------------------------------------------------------------------------
    // Trusted organisations and device lists.

    /// Trusts an organisation root (after comparing its [`org_fingerprint`] in person or
    /// scanning it from a QR code shown by one of its devices). Idempotent.
    pub fn trust_organisation(&mut self, root: &[u8; KEY_LEN]) -> Result<(), EngineError> {
        let pk = OrgRootPublicKey::from_bytes(root)?;
        let st = self.state_mut()?;
        if st.orgs.contains_key(root) {
            return Ok(());
        }
        self.store.put(
            Namespace::Contacts,
            &key(PREFIX_ORG, root),
            &records::encode_org(root, &[]),
        )?;
        let st = self.state_mut()?;
        st.orgs.insert(
            *root,
            OrgEntry {
                trust: OrgTrust::new(pk),
                lists: Vec::new(),
            },
        );
        Ok(())
    }

    /// Whether an organisation root is trusted.
    pub fn trusts_organisation(&self, root: &[u8; KEY_LEN]) -> Result<bool, EngineError> {
        Ok(self.state()?.orgs.contains_key(root))
    }

    /// Applies a device list for a trusted organisation (also done automatically for lists
    /// received in messages, contact cards and profiles).
    pub fn apply_device_list(&mut self, list: &wire::SignedDeviceList) -> Result<(), EngineError> {
        let root = decode::device_list(&list.list)
            .ok()
            .and_then(|l| <[u8; KEY_LEN]>::try_from(l.org_root_key.as_slice()).ok())
            .ok_or(EngineError::Certificate(CertificateError::Malformed))?;
        let mut batch = WriteBatch::new();
        let staged = self.stage_device_list(&root, list, &mut batch)?;
        self.store.apply_batch(batch)?;
        if let Some(entry) = staged {
            self.state_mut()?.orgs.insert(root, entry);
        }
        Ok(())
    }

    /// Checks a device list against a trusted organisation and, if it is new, stages its
    /// storage in `batch`; returns the new entry to install after the batch is applied.
    fn stage_device_list(
        &self,
        root: &[u8; KEY_LEN],
        list: &wire::SignedDeviceList,
        batch: &mut WriteBatch,
    ) -> Result<Option<OrgEntry>, EngineError> {
        let st = self.state()?;
        let entry = st
            .orgs
            .get(root)
            .ok_or(EngineError::UntrustedOrganisation)?;
        let mut trust = entry.trust.clone();
        let before = trust.device_list_version();
        trust.apply_device_list(list)?;
        if before == trust.device_list_version() {
            return Ok(None); // The same list again.
        }
        let mut lists = entry.lists.clone();
        lists.push(list.clone());
        batch.put(
            Namespace::Contacts,
            &key(PREFIX_ORG, root),
            &records::encode_org(root, &lists),
        );
        Ok(Some(OrgEntry { trust, lists }))
    }

    /// Stages a device list that came with an invitation, profile or contact card: a bad or
    /// old list is ignored (it changes no trust), a new one is staged in `batch`.
    pub(super) fn stage_carried_list(
        &self,
        root: &[u8; KEY_LEN],
        list: Option<&wire::SignedDeviceList>,
        batch: &mut WriteBatch,
    ) -> Option<OrgEntry> {
        list.and_then(|list| self.stage_device_list(root, list, batch).ok().flatten())
    }

    /// The organisation's trust as it will be once `staged` (if any) is installed.
    pub(super) fn trust_after<'a>(
        &'a self,
        root: &[u8; KEY_LEN],
        staged: Option<&'a OrgEntry>,
    ) -> Result<&'a OrgTrust, EngineError> {
        let st = self.state()?;
        staged
            .map(|o| &o.trust)
            .or_else(|| st.orgs.get(root).map(|o| &o.trust))
            .ok_or(EngineError::UntrustedOrganisation)
    }

    /// Issues a certificate for a new device of this organisation (this device must hold the
    /// root key) and signs a new device list that includes it. Distribute the list to contacts
    /// with [`send_device_list`](Self::send_device_list).
    pub fn enrol_device(
        &mut self,
        device: &DevicePublicKeys,
        role: Role,
        label: &str,
        now: u64,
    ) -> Result<(wire::SignedDeviceCertificate, wire::SignedDeviceList), EngineError> {
        let st = self.state()?;
        let org = st
            .profile
            .org_key
            .as_ref()
            .ok_or(EngineError::NotOrgKeyHolder)?;
        let cert = org.issue_certificate(
            device,
            role,
            now,
            now.saturating_add(DEFAULT_CERTIFICATE_VALIDITY),
            label,
        )?;
        let list = self.next_device_list(now, Some(cert.clone()), None)?;
        self.apply_device_list(&list)?;
        Ok((cert, list))
    }

    /// Revokes a device of this organisation (this device must hold the root key): signs a new
    /// device list without it and with its id revoked. Returns the list to distribute.
    pub fn revoke_device(
        &mut self,
        device_id: DeviceId,
        now: u64,
    ) -> Result<wire::SignedDeviceList, EngineError> {
        if device_id == self.device_id()? {
            return Err(EngineError::InvalidInput("a device cannot revoke itself"));
        }
        let list = self.next_device_list(now, None, Some(device_id))?;
        self.apply_device_list(&list)?;
        Ok(list)
    }

    fn next_device_list(
        &self,
        now: u64,
        add: Option<wire::SignedDeviceCertificate>,
        revoke: Option<DeviceId>,
    ) -> Result<wire::SignedDeviceList, EngineError> {
        let st = self.state()?;
        let org = st
            .profile
            .org_key
            .as_ref()
            .ok_or(EngineError::NotOrgKeyHolder)?;
        let root = st.own_cert.org_root_key().to_bytes();
        let entry = st.orgs.get(&root).ok_or(EngineError::CorruptState)?;
        let mut revoked: Vec<DeviceId> = Vec::new();
        for list in &entry.lists {
            let decoded = decode::device_list(&list.list).map_err(|_| EngineError::CorruptState)?;
            for id in decoded.revoked_device_ids {
                let id = DeviceId(to_id(&id).ok_or(EngineError::CorruptState)?);
                if !revoked.contains(&id) {
                    revoked.push(id);
                }
            }
        }
        if let Some(id) = revoke
            && !revoked.contains(&id)
        {
            revoked.push(id);
        }
        let mut devices: Vec<wire::SignedDeviceCertificate> = entry
            .trust
            .active_devices(now)
            .into_iter()
            .filter(|c| Some(c.device_id()) != revoke)
            // Re-certifying a device (new keys or role) replaces its listed certificate.
            .filter(|c| {
                add.as_ref()
                    .and_then(|a| decode::device_certificate(&a.certificate).ok())
                    .is_none_or(|a| a.device_id != c.device_id().0)
            })
            .map(|c| c.signed().clone())
            .collect();
        devices.extend(add);
        let version = entry.trust.device_list_version().unwrap_or(0) + 1;
        Ok(org.sign_device_list(version, now, devices, &revoked))
    }

    /// Sends this organisation's newest device list to a contact (a `Content.device_list`).
    pub fn send_device_list(
        &mut self,
        to: PeerId,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<OutboxItem, EngineError> {
        let list = self.own_device_list()?.ok_or(EngineError::CorruptState)?;
        let (_, item) = self.send_inner(to, Body::DeviceList(list), false, now, rng)?;
        Ok(item)
    }

    /// What this device knows about a trusted organisation (its root, newest device list and
    /// revocations), for the referral and consent APIs.
    pub fn org_trust(&self, root: &[u8; KEY_LEN]) -> Result<&OrgTrust, EngineError> {
        self.state()?
            .orgs
            .get(root)
            .map(|o| &o.trust)
            .ok_or(EngineError::UntrustedOrganisation)
    }

    // -----------------------------------------------------------------------------------------
    // Organisation fan-out.

    /// Active devices of a trusted organisation at `now` (revoked and expired devices never
    /// appear), excluding this device.
    pub fn org_devices(
        &self,
        org_root: &[u8; KEY_LEN],
        now: u64,
    ) -> Result<Vec<DeviceId>, EngineError> {
        let st = self.state()?;
        let org = st
            .orgs
            .get(org_root)
            .ok_or(EngineError::UntrustedOrganisation)?;
        let own = st.own_cert.device_id();
        Ok(org
            .trust
            .active_devices(now)
            .into_iter()
            .map(|c| c.device_id())
            .filter(|id| *id != own)
            .collect())
    }

    /// Encrypts a packet for an organisation once (docs/PROTOCOL.md §10). Upload
    /// [`PreparedPacket::ciphertext`] as a blob, then call
    /// [`send_fanout_keys`](Self::send_fanout_keys).
    pub fn prepare_org_packet(
        &self,
        org_root: &[u8; KEY_LEN],
        body: Body,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<PreparedPacket, EngineError> {
        let st = self.state()?;
        if !st.orgs.contains_key(org_root) {
            return Err(EngineError::UntrustedOrganisation);
        }
        let content = self.new_content(body, now, rng);
        content
            .validate()
            .map_err(|_| EngineError::InvalidInput("the packet is malformed or too long"))?;
        let packet = fanout::encrypt_packet(&content, rng)?;
        Ok(PreparedPacket {
            packet,
            content,
            org_root: *org_root,
        })
    }

    /// Sends the packet's `FanoutKey` through the pairwise session with every active device of
    /// the organisation that has an address and a session, and stores this device's copy; all
    /// in one batch. Revoked devices receive nothing.
    pub fn send_fanout_keys(
        &mut self,
        packet: &PreparedPacket,
        blob_id: [u8; ID_LEN],
        blob_relay: &str,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<FanoutSent, EngineError> {
        let devices = self.org_devices(&packet.org_root, now)?;
        let key_body = Body::FanoutKey(packet.packet.fanout_key(blob_id, blob_relay.to_owned()));
        let mut batch = WriteBatch::new();
        let mut items = Vec::new();
        let mut unreached = Vec::new();
        for device in devices {
            let peer = PeerId {
                org_root: packet.org_root,
                device_id: device,
            };
            let reachable = self
                .state()?
                .contacts
                .get(&peer)
                .is_some_and(|c| c.address.is_some())
                && self.has_session(peer)?;
            if !reachable {
                unreached.push(device);
                continue;
            }
            let content = self.new_content(key_body.clone(), now, rng);
            items.push(self.stage_send(&mut batch, peer, &content, now, rng)?);
        }
        let first = items
            .first()
            .map(|i| i.recipient)
            .unwrap_or(DeviceId([0; ID_LEN]));
        let message = self.stage_message(
            &mut batch,
            Direction::Outgoing,
            first,
            packet.content.clone(),
            now,
        )?;
        self.store.apply_batch(batch)?;
        self.state_mut()?.next_seq += 1;
        Ok(FanoutSent {
            message,
            items,
            unreached,
        })
    }

    /// Opens the organisation packet a delivered `FanoutKey` message points to, given the blob
    /// the driver downloaded, and replaces the stored message's content with the packet's.
    pub fn open_org_packet(&mut self, seq: u64, ciphertext: &[u8]) -> Result<Message, EngineError> {
        let mut message = self
            .message(seq)?
            .ok_or(EngineError::InvalidInput("no such message"))?;
        let Some(Body::FanoutKey(fk)) = &message.content.body else {
            return Err(EngineError::InvalidInput(
                "the message is not an organisation packet key",
            ));
        };
        let content = fanout::decrypt_packet(fk, ciphertext)?;
        // The packet's own id is the same on every device of the team.
        message.message_id = to_id(&content.message_id).ok_or(EngineError::CouldNotDecrypt)?;
        message.sent_at = content.sent_at;
        message.content = content;
        let mut batch = WriteBatch::new();
        super::messages::stage_message_record(&mut batch, &message);
        self.store.apply_batch(batch)?;
        Ok(message)
    }

    // -----------------------------------------------------------------------------------------
    // Directory.

    /// Signs this organisation's profile for the directory (admin devices only). The intake
    /// address is this device's, with a long-lived capability; register the new capability
    /// hashes with the relay before publishing.
    pub fn signed_org_profile(
        &mut self,
        details: ProfileDetails,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<wire::SignedOrgProfile, EngineError> {
        let st = self.state()?;
        if st.own_cert.role() != Role::Admin {
            return Err(EngineError::NotAdmin);
        }
        let mut caps = self.clone_caps()?;
        let cap = self.issue_capability(&mut caps, u64::MAX, None, now, rng)?;
        // Intake: this device, plus the other active admin and caseworker devices of the
        // organisation whose addresses this device holds (from their contact cards).
        let root = st.own_cert.org_root_key().to_bytes();
        let mut intake = vec![self.own_address(cap)?];
        if let Some(org) = st.orgs.get(&root) {
            for cert in org.trust.active_devices(now) {
                if cert.role() == Role::Ambassador {
                    continue;
                }
                if let Some(address) = st
                    .contacts
                    .get(&PeerId::of(&cert))
                    .and_then(|c| c.address.clone())
                {
                    intake.push(address);
                }
            }
        }
        let profile = wire::OrgProfile {
            org_root_key: st.own_cert.org_root_key().to_bytes().to_vec(),
            name: details.name,
            services: details.services,
            languages: details.languages,
            regions: details.regions,
            description: details.description,
            device_list: self.own_device_list()?,
            intake,
            issued_at: now,
        };
        profile
            .validate()
            .map_err(|_| EngineError::InvalidInput("the profile is malformed or too long"))?;
        let bytes = profile.encode_to_vec();
        let mut msg = Vec::with_capacity(LABEL_ORG_PROFILE.len() + bytes.len());
        msg.extend_from_slice(LABEL_ORG_PROFILE);
        msg.extend_from_slice(&bytes);
        let signature = st.profile.device.signing_key().sign(&msg);
        let signed = wire::SignedOrgProfile {
            profile: bytes,
            signer: Some(st.profile.certificate.clone()),
            signature: signature.to_bytes().to_vec(),
        };
        self.store
            .put(Namespace::Settings, KEY_CAPS, &records::encode_caps(&caps))?;
        self.state_mut()?.caps = caps;
        Ok(signed)
    }

    /// Checks a signed organisation profile (from the directory): an admin device certified by
    /// the profile's own root signed it. Says whether this device trusts that root.
    pub fn verify_org_profile(
        &self,
        signed: &wire::SignedOrgProfile,
        now: u64,
    ) -> Result<VerifiedProfile, EngineError> {
        signed.validate().map_err(|_| EngineError::InvalidProfile)?;
        let profile =
            decode::org_profile(&signed.profile).map_err(|_| EngineError::InvalidProfile)?;
        let root: [u8; KEY_LEN] = profile
            .org_root_key
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::InvalidProfile)?;
        let root_key =
            OrgRootPublicKey::from_bytes(&root).map_err(|_| EngineError::InvalidProfile)?;
        let st = self.state()?;
        let mut trust = st
            .orgs
            .get(&root)
            .map(|o| o.trust.clone())
            .unwrap_or_else(|| OrgTrust::new(root_key));
        if let Some(list) = &profile.device_list {
            let _ = trust.apply_device_list(list);
        }
        let signer_signed = signed.signer.as_ref().ok_or(EngineError::InvalidProfile)?;
        let signer = trust
            .verify_certificate(signer_signed, now)
            .map_err(|_| EngineError::InvalidProfile)?;
        if signer.role() != Role::Admin {
            return Err(EngineError::InvalidProfile);
        }
        let mut msg = Vec::with_capacity(LABEL_ORG_PROFILE.len() + signed.profile.len());
        msg.extend_from_slice(LABEL_ORG_PROFILE);
        msg.extend_from_slice(&signed.profile);
        let signature = ed25519_dalek::Signature::from_slice(&signed.signature)
            .map_err(|_| EngineError::InvalidProfile)?;
        signer
            .verifying_key()
            .verify_strict(&msg, &signature)
            .map_err(|_| EngineError::InvalidProfile)?;
        Ok(VerifiedProfile {
            trusted: st.orgs.contains_key(&root),
            fingerprint: org_fingerprint(&root),
            profile,
        })
    }

    /// Imports a profile of a trusted organisation: applies its device list and stores its
    /// intake devices as contacts (targets of [`send_fanout_keys`](Self::send_fanout_keys)).
    pub fn import_org_profile(
        &mut self,
        signed: &wire::SignedOrgProfile,
        now: u64,
    ) -> Result<Vec<PeerId>, EngineError> {
        let verified = self.verify_org_profile(signed, now)?;
        if !verified.trusted {
            return Err(EngineError::UntrustedOrganisation);
        }
        let profile = verified.profile;
        let root: [u8; KEY_LEN] = profile
            .org_root_key
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::InvalidProfile)?;
        let mut batch = WriteBatch::new();
        let staged = self.stage_carried_list(&root, profile.device_list.as_ref(), &mut batch);
        let trust = self.trust_after(&root, staged.as_ref())?;
        let active = trust.active_devices(now);
        let mut added = Vec::new();
        let mut new_contacts = Vec::new();
        for address in &profile.intake {
            let Some(cert) = active
                .iter()
                .find(|c| c.device_id().0[..] == address.device_id[..])
            else {
                continue;
            };
            let record = ContactRecord {
                certificate: cert.signed().clone(),
                address: Some(address.clone()),
                display_name: profile.name.clone(),
            };
            // Keyed by this organisation's root: a profile never touches another
            // organisation's contact that happens to have the same device id.
            let peer = PeerId::of(cert);
            let changed = self.stage_contact(&mut batch, peer, &record)?;
            added.push(peer);
            new_contacts.push((peer, record, changed));
        }
        self.store.apply_batch(batch)?;
        let st = self.state_mut()?;
        if let Some(entry) = staged {
            st.orgs.insert(root, entry);
        }
        for (peer, record, changed) in new_contacts {
            self.install_contact(peer, record, changed)?;
        }
        Ok(added)
    }

    /// Trusts the organisation of a directory profile after the user compared its fingerprint
    /// with the organisation in person or by phone (`compared`, as read out; see
    /// [`org_fingerprint_matches`]), then imports the profile as
    /// [`import_org_profile`](Self::import_org_profile) does. A fingerprint that does not match
    /// trusts and imports nothing ([`EngineError::FingerprintMismatch`]).
    pub fn trust_and_import_org_profile(
        &mut self,
        signed: &wire::SignedOrgProfile,
        compared: &str,
        now: u64,
    ) -> Result<Vec<PeerId>, EngineError> {
        let verified = self.verify_org_profile(signed, now)?;
        let root: [u8; KEY_LEN] = verified
            .profile
            .org_root_key
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::InvalidProfile)?;
        if !org_fingerprint_matches(&root, compared) {
            return Err(EngineError::FingerprintMismatch);
        }
        self.trust_organisation(&root)?;
        self.import_org_profile(signed, now)
    }
}
