//! This device's profile: creating it and reading its identity, keys and relay.

use super::{
    BTreeMap, CertificateError, CryptoRng, DEFAULT_CERTIFICATE_VALIDITY, DeviceCertificate,
    DeviceId, DeviceKeys, DevicePublicKeys, Engine, EngineError, ID_LEN, IdentitySetup, KEY_LEN,
    KEY_PROFILE, KvStore, MailboxKeys, Namespace, OrgEntry, OrgRootKey, OrgRootPublicKey, OrgTrust,
    PREFIX_ORG, PeerId, PrekeyStore, ProfileRecord, RelayInfo, Role, SigningKey, State, WriteBatch,
    cert_root, key, records, wire,
};

impl<S: KvStore> Engine<S> {
    /// Creates this device's profile once its mailbox exists at the relay.
    ///
    /// `device` are this device's keys (for [`IdentitySetup::Enrolled`], the keys the admin
    /// certified); `recv_id` and `send_id` come from the relay's `MailboxCreated`.
    #[allow(clippy::too_many_arguments)]
    pub fn create_profile(
        &mut self,
        device: DeviceKeys,
        mailbox: MailboxKeys,
        recv_id: [u8; ID_LEN],
        send_id: [u8; ID_LEN],
        relay: RelayInfo,
        identity: IdentitySetup,
        display_name: &str,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(), EngineError> {
        if self.state.is_some() || self.store.contains(Namespace::Identity, KEY_PROFILE)? {
            return Err(EngineError::ProfileExists);
        }
        if display_name.len() > handover_proto::limits::MAX_SHORT_STRING_LEN {
            return Err(EngineError::InvalidInput("display name too long"));
        }
        let (certificate, org_key, list) = match identity {
            IdentitySetup::NewOrganisation { device_label } => {
                let org = OrgRootKey::generate(rng);
                let cert = org.issue_certificate(
                    &device.public_keys(),
                    Role::Admin,
                    now,
                    now.saturating_add(DEFAULT_CERTIFICATE_VALIDITY),
                    &device_label,
                )?;
                let list = org.sign_device_list(1, now, vec![cert.clone()], &[]);
                (cert, Some(org), list)
            }
            IdentitySetup::Enrolled {
                certificate,
                device_list,
            } => (certificate, None, device_list),
        };
        let root =
            cert_root(&certificate).ok_or(EngineError::Certificate(CertificateError::Malformed))?;
        let root_key = OrgRootPublicKey::from_bytes(&root)?;
        let mut trust = OrgTrust::new(root_key);
        trust.apply_device_list(&list)?;
        let own_cert = trust.verify_certificate(&certificate, now)?;
        // All three: a certificate naming another signing key would make every signature of
        // this device fail to verify at its peers.
        let own_keys = device.public_keys();
        if own_cert.identity_key() != own_keys.identity_key
            || own_cert.signing_key() != own_keys.signing_key
            || own_cert.device_id() != own_keys.device_id
        {
            return Err(EngineError::Certificate(CertificateError::Malformed));
        }
        let profile = ProfileRecord {
            device,
            certificate,
            org_key,
            relay,
            recv_id,
            send_id,
            auth: mailbox.auth,
            sealing: mailbox.sealing,
            display_name: display_name.to_owned(),
            next_prekey_id: 1,
        };
        let lists = vec![list];
        let mut batch = WriteBatch::new();
        batch.put(Namespace::Identity, KEY_PROFILE, &profile.encode());
        batch.put(
            Namespace::Contacts,
            &key(PREFIX_ORG, &root),
            &records::encode_org(&root, &lists),
        );
        self.store.apply_batch(batch)?;
        self.store.flush()?;
        let mut orgs = BTreeMap::new();
        orgs.insert(root, OrgEntry { trust, lists });
        self.state = Some(Box::new(State {
            profile,
            own_cert,
            orgs,
            contacts: BTreeMap::new(),
            verified: BTreeMap::new(),
            identity_changed: std::collections::BTreeSet::new(),
            prekeys: PrekeyStore::new(),
            published: None,
            caps: Vec::new(),
            next_seq: 1,
            next_outbox: std::cell::Cell::new(1),
        }));
        Ok(())
    }

    /// This device's id.
    pub fn device_id(&self) -> Result<DeviceId, EngineError> {
        Ok(self.state()?.own_cert.device_id())
    }

    /// This device's peer id (organisation root and device id), as other devices know it.
    pub fn peer_id(&self) -> Result<PeerId, EngineError> {
        Ok(PeerId::of(&self.state()?.own_cert))
    }

    /// This device's verified certificate.
    pub fn certificate(&self) -> Result<&DeviceCertificate, EngineError> {
        Ok(&self.state()?.own_cert)
    }

    /// This device's organisation root.
    pub fn org_root(&self) -> Result<[u8; KEY_LEN], EngineError> {
        Ok(self.state()?.own_cert.org_root_key().to_bytes())
    }

    /// Whether this device holds its organisation's root key.
    pub fn holds_org_key(&self) -> Result<bool, EngineError> {
        Ok(self.state()?.profile.org_key.is_some())
    }

    /// The mailbox receive id (for `Authenticate`, `Fetch`, `Ack`, `Subscribe`).
    pub fn recv_id(&self) -> Result<[u8; ID_LEN], EngineError> {
        Ok(self.state()?.profile.recv_id)
    }

    /// The mailbox authentication key.
    pub fn mailbox_auth_key(&self) -> Result<&SigningKey, EngineError> {
        Ok(&self.state()?.profile.auth)
    }

    /// The device signing key (for `MemberAuth`).
    pub fn device_signing_key(&self) -> Result<&SigningKey, EngineError> {
        Ok(self.state()?.profile.device.signing_key())
    }

    /// This device's relay.
    pub fn relay(&self) -> Result<&RelayInfo, EngineError> {
        Ok(&self.state()?.profile.relay)
    }

    /// This device's public keys (what an admin certifies when enrolling it).
    pub fn device_public_keys(&self) -> Result<DevicePublicKeys, EngineError> {
        Ok(self.state()?.profile.device.public_keys())
    }

    /// The newest accepted device list of this device's organisation.
    pub fn own_device_list(&self) -> Result<Option<wire::SignedDeviceList>, EngineError> {
        let st = self.state()?;
        let root = st.own_cert.org_root_key().to_bytes();
        Ok(st.orgs.get(&root).and_then(|o| o.lists.last().cloned()))
    }

    /// The acting device for the [`referral`](crate::referral) and
    /// [`consent`](crate::consent) APIs (signs offers, controls and receipts).
    pub fn actor(&self) -> Result<crate::referral::Actor<'_>, EngineError> {
        let st = self.state()?;
        crate::referral::Actor::new(&st.profile.device, st.own_cert.clone())
            .ok_or(EngineError::CorruptState)
    }
}
