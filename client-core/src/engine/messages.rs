//! Messages: sending, the outbox, receiving, the message log and its sweep.

use handover_proto::validate::Validate as _;

use super::{
    Body, ContactRecord, CryptoRng, DeviceId, Direction, Engine, EngineError, ID_LEN, KEY_CAPS,
    KEY_LEN, KEY_MSG_SEQ, KEY_PREKEYS, KvStore, Message, Namespace, OutboxItem, PREFIX_ENVELOPE,
    PREFIX_MESSAGE, PREFIX_MESSAGE_EXPIRY, PREFIX_MESSAGE_ID, PeerId, Received, RelayInfo, Session,
    WriteBatch, Zeroizing, cert_root, decode, key, random_id, records, referrals, relay, sealed,
    to_id, wire,
};

/// Which session decrypted an incoming message.
#[derive(Clone, Copy)]
enum SessionSlot {
    /// The current session.
    Current,
    /// A previous session (index, newest first), which becomes current.
    Previous(usize),
    /// A previous session that decrypted a repeated initial message: it stays previous.
    PreviousKept(usize),
    /// A new session from an initial message, which becomes current.
    New,
}

/// A copy of a session to decrypt on (the original stays as it was if decryption fails).
fn copy_session(session: &Session) -> Result<Session, EngineError> {
    Session::from_secret_bytes(&session.to_secret_bytes()).map_err(|_| EngineError::CorruptState)
}

impl<S: KvStore> Engine<S> {
    // -----------------------------------------------------------------------------------------
    // Sending.

    pub(super) fn new_content(
        &self,
        body: Body,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> wire::Content {
        wire::Content {
            message_id: random_id(rng).to_vec(),
            sent_at: now,
            expires_at: 0,
            body: Some(body),
        }
    }

    pub(super) fn seal_to(
        &self,
        session: &mut Session,
        address: &wire::DeviceAddress,
        to: PeerId,
        content: &wire::Content,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<OutboxItem, EngineError> {
        let st = self.state()?;
        let sealing_key: [u8; KEY_LEN] = address
            .sealing_key
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::CorruptState)?;
        let send_id = to_id(&address.send_id).ok_or(EngineError::CorruptState)?;
        let capability: [u8; KEY_LEN] = address
            .capability
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::CorruptState)?;
        let pin: [u8; KEY_LEN] = address
            .relay_pin
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::CorruptState)?;
        let outgoing = session.encrypt_content(content)?;
        let sealed_msg = outgoing.into_sealed(st.profile.certificate.clone());
        let envelope_id = random_id(rng);
        let expires_at = now.saturating_add(self.envelope_ttl);
        let ciphertext = sealed::seal(&sealing_key, &sealed_msg, &envelope_id, expires_at, rng)
            .map_err(|e| match e {
                sealed::SealError::TooLarge => EngineError::TooLarge,
                _ => EngineError::InvalidInput("the contact's sealing key is invalid"),
            })?;
        Ok(OutboxItem {
            envelope_id,
            relay: RelayInfo {
                host_port: address.relay.clone(),
                pin,
            },
            send_id,
            capability: Zeroizing::new(capability),
            message_id: to_id(&content.message_id).ok_or(EngineError::CorruptState)?,
            recipient: to.device_id,
            envelope: relay::Envelope {
                envelope_id: envelope_id.to_vec(),
                expires_at,
                ciphertext,
            },
        })
    }

    /// Sends a `Content` body to a contact: encrypts it, and stores the advanced session, the
    /// outbox entry and this device's copy of the message in one batch. Returns the stored
    /// message and the outbox entry for the driver to send.
    pub fn send(
        &mut self,
        to: PeerId,
        body: Body,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(Message, OutboxItem), EngineError> {
        let (message, item) = self.send_inner(to, body, true, now, rng)?;
        message.map(|m| (m, item)).ok_or(EngineError::CorruptState)
    }

    /// Sends a body with a disappearing timer: both devices delete the message at
    /// `expires_at` (Unix seconds, after `now`; `Content.expires_at`, docs/PROTOCOL.md §11.7).
    pub fn send_disappearing(
        &mut self,
        to: PeerId,
        body: Body,
        expires_at: u64,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(Message, OutboxItem), EngineError> {
        if expires_at <= now {
            return Err(EngineError::InvalidInput(
                "a disappearing timer must lie in the future",
            ));
        }
        let mut content = self.new_content(body, now, rng);
        content.expires_at = expires_at;
        let (message, item) = self.send_content(to, content, true, now, rng)?;
        message.map(|m| (m, item)).ok_or(EngineError::CorruptState)
    }

    /// Sends a chat message (text and attachments) to a contact.
    pub fn send_chat(
        &mut self,
        to: PeerId,
        text: &str,
        attachments: Vec<wire::Attachment>,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(Message, OutboxItem), EngineError> {
        let body = Body::Chat(wire::ChatMessage {
            text: text.to_owned(),
            attachments,
        });
        self.send(to, body, now, rng)
    }

    pub(super) fn send_inner(
        &mut self,
        to: PeerId,
        body: Body,
        keep_copy: bool,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(Option<Message>, OutboxItem), EngineError> {
        let content = self.new_content(body, now, rng);
        self.send_content(to, content, keep_copy, now, rng)
    }

    fn send_content(
        &mut self,
        to: PeerId,
        content: wire::Content,
        keep_copy: bool,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(Option<Message>, OutboxItem), EngineError> {
        content
            .validate()
            .map_err(|_| EngineError::InvalidInput("the message is malformed or too long"))?;
        let mut batch = WriteBatch::new();
        let item = self.stage_send(&mut batch, to, &content, now, rng)?;
        let message = if keep_copy {
            Some(self.stage_message(&mut batch, Direction::Outgoing, to.device_id, content, now)?)
        } else {
            None
        };
        self.store.apply_batch(batch)?;
        if message.is_some() {
            self.state_mut()?.next_seq += 1;
        }
        Ok((message, item))
    }

    pub(super) fn stage_send(
        &self,
        batch: &mut WriteBatch,
        to: PeerId,
        content: &wire::Content,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<OutboxItem, EngineError> {
        let address = self.contact_address(to)?;
        let mut session = self.load_session(to)?.ok_or(EngineError::NoSession)?;
        self.release_check(to, &session, now)?;
        let item = self.seal_to(&mut session, &address, to, content, now, rng)?;
        self.stage_session(batch, to, &session);
        batch.put(Namespace::Outbox, &self.outbox_key(&item)?, &item.encode());
        Ok(item)
    }

    /// Stages a message record (and its id marker and the sequence counter); the caller bumps
    /// `next_seq` after applying the batch.
    pub(super) fn stage_message(
        &self,
        batch: &mut WriteBatch,
        direction: Direction,
        peer: DeviceId,
        content: wire::Content,
        now: u64,
    ) -> Result<Message, EngineError> {
        let st = self.state()?;
        let seq = st.next_seq;
        let message_id = to_id(&content.message_id).ok_or(EngineError::CouldNotDecrypt)?;
        let message = Message {
            seq,
            direction,
            peer,
            message_id,
            sent_at: content.sent_at,
            stored_at: now,
            content,
        };
        stage_message_record(batch, &message);
        batch.put(Namespace::Settings, KEY_MSG_SEQ, &(seq + 1).to_be_bytes());
        Ok(message)
    }

    pub(super) fn outbox_key(&self, item: &OutboxItem) -> Result<Vec<u8>, EngineError> {
        let st = self.state()?;
        let n = st.next_outbox.get();
        st.next_outbox.set(n + 1);
        Ok(key(&n.to_be_bytes(), &item.envelope_id))
    }

    /// The outbox: envelopes persisted but not yet accepted by a relay, in the order they
    /// were queued.
    pub fn outbox(&self) -> Result<Vec<OutboxItem>, EngineError> {
        self.store
            .scan_prefix(Namespace::Outbox, b"")?
            .iter()
            .map(|(_, v)| OutboxItem::decode(v))
            .collect()
    }

    /// Removes an outbox entry after the relay's `SendAccepted` (or after the relay refused it
    /// for good, for example because the envelope expired).
    pub fn outbox_accepted(&mut self, envelope_id: &[u8; ID_LEN]) -> Result<(), EngineError> {
        for k in self.store.keys_with_prefix(Namespace::Outbox, b"")? {
            if k.len() == 8 + ID_LEN && k[8..] == envelope_id[..] {
                self.store.delete(Namespace::Outbox, &k)?;
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Receiving.

    /// Processes one envelope fetched from this device's mailbox (see the module docs for the
    /// exactly-once rules). On `Ok` the driver acks the envelope; on
    /// [`EngineError::CouldNotDecrypt`] or [`EngineError::UntrustedOrganisation`] nothing
    /// changed and the envelope can never be processed (ack it to drop it); on
    /// [`EngineError::Store`] do not ack (retry later).
    pub fn receive(
        &mut self,
        queued: &relay::QueuedEnvelope,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Received, EngineError> {
        let envelope = queued
            .envelope
            .as_ref()
            .ok_or(EngineError::CouldNotDecrypt)?;
        let envelope_id = to_id(&envelope.envelope_id).ok_or(EngineError::CouldNotDecrypt)?;
        // The relay never returns an expired envelope, and `expires_at` is bound into the
        // sealed-sender AAD; one that is expired here is refused unread. (Its dedupe marker
        // may already have been swept, so this also stops a replay after the sweep.)
        if envelope.expires_at <= now {
            return Err(EngineError::EnvelopeExpired);
        }
        let env_key = key(PREFIX_ENVELOPE, &envelope_id);
        if self.store.contains(Namespace::Messages, &env_key)? {
            return Ok(Received::Duplicate);
        }
        let st = self.state()?;
        let opened = sealed::open(
            &st.profile.sealing,
            &envelope_id,
            envelope.expires_at,
            &envelope.ciphertext,
        )
        .map_err(|_| EngineError::CouldNotDecrypt)?;
        let sender_signed = opened.sender.as_ref().ok_or(EngineError::CouldNotDecrypt)?;
        let root = cert_root(sender_signed).ok_or(EngineError::CouldNotDecrypt)?;
        let org = st
            .orgs
            .get(&root)
            .ok_or(EngineError::UntrustedOrganisation)?;
        let sender = org
            .trust
            .verify_certificate(sender_signed, now)
            .map_err(|_| EngineError::CouldNotDecrypt)?;
        let sender_id = sender.device_id();
        // The sender is the pair (organisation root, device id): a device id alone is chosen
        // by whoever signed the certificate (docs/PROTOCOL.md §5.5).
        let peer = PeerId::of(&sender);
        if peer == PeerId::of(&st.own_cert) {
            return Err(EngineError::CouldNotDecrypt);
        }
        let current = self.load_session(peer)?;
        let previous = self.load_previous_sessions(peer)?;
        let mut new_prekeys = None;
        // Which session decrypted: the current one, a previous one (by index), or a new one.
        let (session, content, slot) = match opened.message.as_ref() {
            Some(wire::sealed::Message::Ratchet(m)) => {
                // Current session first, then the previous ones, newest first (§6.4).
                let mut found = None;
                for (slot, candidate) in current.iter().map(|s| (SessionSlot::Current, s)).chain(
                    previous
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (SessionSlot::Previous(i), s)),
                ) {
                    let mut session = copy_session(candidate)?;
                    if session
                        .check_sender(&org.trust, sender_signed, now)
                        .is_err()
                    {
                        continue;
                    }
                    if let Ok(content) = session.decrypt_content(m, now, rng) {
                        found = Some((session, content, slot));
                        break;
                    }
                }
                found.ok_or(EngineError::CouldNotDecrypt)?
            }
            Some(wire::sealed::Message::Prekey(m)) => {
                let matching = current
                    .iter()
                    .map(|s| (SessionSlot::Current, s))
                    .chain(
                        previous
                            .iter()
                            .enumerate()
                            .map(|(i, s)| (SessionSlot::Previous(i), s)),
                    )
                    .find(|(_, s)| s.matches_prekey_message(m));
                match matching {
                    Some((slot, candidate)) => {
                        let mut session = copy_session(candidate)?;
                        session
                            .check_sender(&org.trust, sender_signed, now)
                            .map_err(|_| EngineError::CouldNotDecrypt)?;
                        let inner = m.message.as_ref().ok_or(EngineError::CouldNotDecrypt)?;
                        let content = session
                            .decrypt_content(inner, now, rng)
                            .map_err(|_| EngineError::CouldNotDecrypt)?;
                        // A repeated initial message of a previous session decrypts there but
                        // does not make it current: the peer may have moved on.
                        let slot = match slot {
                            SessionSlot::Previous(i) => SessionSlot::PreviousKept(i),
                            other => other,
                        };
                        (session, content, slot)
                    }
                    None => {
                        let mut prekeys = st.prekeys.clone();
                        let (session, plaintext) = Session::respond(
                            &st.profile.device,
                            &st.profile.certificate,
                            &mut prekeys,
                            &sender,
                            m,
                            now,
                            rng,
                        )
                        .map_err(|_| EngineError::CouldNotDecrypt)?;
                        let plaintext = Zeroizing::new(plaintext);
                        let content = decode::content(&plaintext)
                            .map_err(|_| EngineError::CouldNotDecrypt)?;
                        new_prekeys = Some(prekeys);
                        (session, content, SessionSlot::New)
                    }
                }
            }
            None => return Err(EngineError::CouldNotDecrypt),
        };
        let message_id = to_id(&content.message_id).ok_or(EngineError::CouldNotDecrypt)?;

        let mut batch = WriteBatch::new();
        match slot {
            SessionSlot::Current => self.stage_session(&mut batch, peer, &session),
            SessionSlot::PreviousKept(i) => {
                let mut kept = previous;
                if let Some(s) = kept.get_mut(i) {
                    *s = copy_session(&session)?;
                }
                self.stage_previous_sessions(&mut batch, peer, &kept);
            }
            SessionSlot::Previous(i) => {
                // The peer uses this session: it becomes current, the current one previous.
                let mut kept: Vec<Session> = current.into_iter().collect();
                kept.extend(
                    previous
                        .into_iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, s)| s),
                );
                self.stage_previous_sessions(&mut batch, peer, &kept);
                self.stage_session(&mut batch, peer, &session);
            }
            SessionSlot::New => {
                let mut kept: Vec<Session> = current.into_iter().collect();
                kept.extend(previous);
                self.stage_previous_sessions(&mut batch, peer, &kept);
                self.stage_session(&mut batch, peer, &session);
            }
        }
        if let Some(p) = &new_prekeys {
            batch.put(Namespace::Prekeys, KEY_PREKEYS, &p.to_secret_bytes());
        }
        batch.put(
            Namespace::Messages,
            &env_key,
            &envelope.expires_at.to_be_bytes(),
        );
        let duplicate = self
            .store
            .contains(Namespace::Messages, &key(PREFIX_MESSAGE_ID, &message_id))?;
        // Content whose disappearing timer has already fired is never stored or acted on.
        let expired = content_expired(&content, now);

        // Side effects of control content, staged in the same batch.
        let mut staged_org = None;
        let mut referral_events = Vec::new();
        let mut contact = st.contacts.get(&peer).map(|c| ContactRecord {
            certificate: sender_signed.clone(),
            address: c.address.clone(),
            display_name: c.display_name.clone(),
        });
        if !duplicate && !expired {
            match &content.body {
                Some(Body::ContactCard(card)) => {
                    let same_cert = card.certificate.as_ref() == Some(sender_signed);
                    let address = card.address.as_ref();
                    if !same_cert
                        || address.map(|a| a.device_id.as_slice()) != Some(&sender_id.0[..])
                    {
                        return Err(EngineError::CouldNotDecrypt);
                    }
                    if card.device_list.is_some() {
                        staged_org =
                            self.stage_carried_list(&root, card.device_list.as_ref(), &mut batch);
                    }
                    contact = Some(ContactRecord {
                        certificate: sender_signed.clone(),
                        address: card.address.clone(),
                        display_name: card.display_name.clone(),
                    });
                }
                Some(Body::DeviceList(list)) => {
                    // Only a list of the sender's own organisation; a bad or old one is kept
                    // as a message but changes no trust.
                    staged_org = self.stage_carried_list(&root, Some(list), &mut batch);
                }
                Some(
                    body @ (Body::SignedReferralOffer(_)
                    | Body::ReferralBody(_)
                    | Body::ReferralControl(_)
                    | Body::ConsentReceipt(_)
                    | Body::SenderCase(_)
                    | Body::TeamStep(_)),
                ) => {
                    // Referral and consent steps apply in this batch (docs/PROTOCOL.md §10.3):
                    // exactly once, together with the message and its markers.
                    referral_events = self.stage_referral_content(
                        body, sender_id, &root, &mut batch, &session, now, rng,
                    )?;
                }
                _ => {}
            }
        }
        let contact = contact.unwrap_or(ContactRecord {
            certificate: sender_signed.clone(),
            address: None,
            display_name: String::new(),
        });
        let identity_changed = self.stage_contact(&mut batch, peer, &contact)?;
        let message = if duplicate || expired {
            None
        } else {
            // The referral record holds the offer and body (and erases them); the message log
            // keeps only a redacted copy.
            let mut content = content;
            referrals::redact(&mut content);
            Some(self.stage_message(&mut batch, Direction::Incoming, sender_id, content, now)?)
        };
        self.commit_referrals(batch)?;
        self.referral_events.extend(referral_events);

        let st = self.state_mut()?;
        if let Some(p) = new_prekeys {
            st.prekeys = p;
        }
        if let Some(entry) = staged_org {
            st.orgs.insert(root, entry);
        }
        self.install_contact(peer, contact, identity_changed)?;
        let st = self.state_mut()?;
        match message {
            Some(m) => {
                st.next_seq += 1;
                Ok(Received::Delivered(Box::new(m)))
            }
            None if expired && !duplicate => Ok(Received::Expired),
            None => Ok(Received::Duplicate),
        }
    }

    /// The organisation root named by the sender certificate of an envelope sealed to this
    /// device (after [`receive`](Self::receive) answered
    /// [`EngineError::UntrustedOrganisation`]), so the application can show that
    /// organisation's [`org_fingerprint`] and ask the user to verify it. Nothing is verified
    /// or stored.
    pub fn envelope_sender_org(
        &self,
        queued: &relay::QueuedEnvelope,
    ) -> Result<[u8; KEY_LEN], EngineError> {
        let envelope = queued
            .envelope
            .as_ref()
            .ok_or(EngineError::CouldNotDecrypt)?;
        let envelope_id = to_id(&envelope.envelope_id).ok_or(EngineError::CouldNotDecrypt)?;
        let opened = sealed::open(
            &self.state()?.profile.sealing,
            &envelope_id,
            envelope.expires_at,
            &envelope.ciphertext,
        )
        .map_err(|_| EngineError::CouldNotDecrypt)?;
        opened
            .sender
            .as_ref()
            .and_then(cert_root)
            .ok_or(EngineError::CouldNotDecrypt)
    }

    // -----------------------------------------------------------------------------------------
    // The message log.

    /// Messages stored on this device with a sequence number of at least `from_seq`, in order.
    /// A message whose disappearing timer (`Content.expires_at`) has fired at `now` is never
    /// returned, even before [`sweep`](Self::sweep) deletes it.
    pub fn messages(&self, from_seq: u64, now: u64) -> Result<Vec<Message>, EngineError> {
        let mut out = Vec::new();
        for (k, v) in self
            .store
            .scan_prefix(Namespace::Messages, PREFIX_MESSAGE)?
        {
            let seq_bytes: [u8; 8] = k[PREFIX_MESSAGE.len()..]
                .try_into()
                .map_err(|_| EngineError::CorruptState)?;
            if u64::from_be_bytes(seq_bytes) >= from_seq {
                let message = Message::decode(&v)?;
                if !content_expired(&message.content, now) {
                    out.push(message);
                }
            }
        }
        out.sort_by_key(|m| m.seq);
        Ok(out)
    }

    /// One stored message by sequence number.
    pub fn message(&self, seq: u64) -> Result<Option<Message>, EngineError> {
        match self.store.get(
            Namespace::Messages,
            &key(PREFIX_MESSAGE, &seq.to_be_bytes()),
        )? {
            Some(v) => Ok(Some(Message::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Deletes messages whose disappearing timer (`Content.expires_at`) has fired, envelope
    /// dedupe markers whose envelopes expired (the relay never returns an expired envelope,
    /// and [`receive`](Self::receive) refuses one) and capabilities past their expiry. Returns
    /// the envelope markers deleted.
    pub fn sweep(&mut self, now: u64) -> Result<usize, EngineError> {
        let mut batch = WriteBatch::new();
        // Disappearing messages: the record goes (its message-id marker stays, so a
        // redelivery is a duplicate and never shows the message again).
        for k in self
            .store
            .keys_with_prefix(Namespace::Messages, PREFIX_MESSAGE_EXPIRY)?
        {
            let rest = &k[PREFIX_MESSAGE_EXPIRY.len()..];
            let (Some(exp), Some(seq)) = (
                rest.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()),
                rest.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()),
            ) else {
                return Err(EngineError::CorruptState);
            };
            if u64::from_be_bytes(exp) <= now {
                batch.delete(Namespace::Messages, &key(PREFIX_MESSAGE, &seq));
                batch.delete(Namespace::Messages, &k);
            }
        }
        let deleted_messages = batch.len();
        for (k, v) in self
            .store
            .scan_prefix(Namespace::Messages, PREFIX_ENVELOPE)?
        {
            let exp = <[u8; 8]>::try_from(v.as_slice()).map(u64::from_be_bytes);
            if exp.map(|e| e < now).unwrap_or(true) {
                batch.delete(Namespace::Messages, &k);
            }
        }
        let swept = batch.len() - deleted_messages;
        let mut caps = self.clone_caps()?;
        let before = caps.len();
        caps.retain(|c| c.expires_at > now);
        if caps.len() != before {
            batch.put(Namespace::Settings, KEY_CAPS, &records::encode_caps(&caps));
        }
        self.store.apply_batch(batch)?;
        self.state_mut()?.caps = caps;
        Ok(swept)
    }
}

/// Whether `content` carries a disappearing timer that has fired at `now`.
fn content_expired(content: &wire::Content, now: u64) -> bool {
    content.expires_at != 0 && content.expires_at <= now
}

/// Stages a message's record, its id marker and its disappearing-timer entry.
pub(super) fn stage_message_record(batch: &mut WriteBatch, message: &Message) {
    batch.put(
        Namespace::Messages,
        &key(PREFIX_MESSAGE, &message.seq.to_be_bytes()),
        &message.encode(),
    );
    batch.put(
        Namespace::Messages,
        &key(PREFIX_MESSAGE_ID, &message.message_id),
        &message.seq.to_be_bytes(),
    );
    stage_expiry(batch, message);
}

/// Indexes a message with a disappearing timer for [`Engine::sweep`].
pub(super) fn stage_expiry(batch: &mut WriteBatch, message: &Message) {
    if message.content.expires_at != 0 {
        let mut k = PREFIX_MESSAGE_EXPIRY.to_vec();
        k.extend_from_slice(&message.content.expires_at.to_be_bytes());
        k.extend_from_slice(&message.seq.to_be_bytes());
        batch.put(Namespace::Messages, &k, &[]);
    }
}
