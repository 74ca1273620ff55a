//! Prekeys and send capabilities.

use prost::Message as _;
use sha2::Digest as _;

use super::{
    CryptoRng, DeviceId, Engine, EngineError, IssuedCapability, KEY_LEN, KEY_PREKEYS, KEY_PROFILE,
    KEY_PUBLISHED, KvStore, MAX_CAPABILITIES, Namespace, ONE_TIME_PREKEY_BATCH, Sha256, WriteBatch,
    Zeroizing, relay, wire,
};

impl<S: KvStore> Engine<S> {
    /// Generates prekeys (a signed prekey and a last-resort ML-KEM prekey the first time, then
    /// [`ONE_TIME_PREKEY_BATCH`] one-time prekeys of each kind), persists their secrets, and
    /// returns the `PrekeyPublish` request for the relay.
    pub fn prekey_publish(
        &mut self,
        rng: &mut impl CryptoRng,
    ) -> Result<relay::PrekeyPublish, EngineError> {
        let st = self.state()?;
        let mut prekeys = st.prekeys.clone();
        let mut next = st.profile.next_prekey_id;
        let device = &st.profile.device;
        let mut take_id = || {
            let id = next;
            next = next.wrapping_add(1).max(1);
            id
        };
        let published = match &st.published {
            Some(p) => p.clone(),
            None => wire::PublishedPrekeys {
                certificate: Some(st.profile.certificate.clone()),
                signed_prekey: Some(
                    prekeys
                        .generate_signed_prekey(device, take_id(), rng)
                        .map_err(|_| EngineError::CorruptState)?,
                ),
                last_resort_kem_prekey: Some(
                    prekeys
                        .generate_kem_prekey(device, take_id(), true, rng)
                        .map_err(|_| EngineError::CorruptState)?,
                ),
            },
        };
        let mut one_time = Vec::new();
        let mut one_time_kem = Vec::new();
        for _ in 0..ONE_TIME_PREKEY_BATCH {
            let otpk = prekeys
                .generate_one_time_prekey(take_id(), rng)
                .map_err(|_| EngineError::CorruptState)?;
            one_time.push(otpk.encode_to_vec());
            let kem = prekeys
                .generate_kem_prekey(device, take_id(), false, rng)
                .map_err(|_| EngineError::CorruptState)?;
            one_time_kem.push(kem.encode_to_vec());
        }
        let mut batch = WriteBatch::new();
        batch.put(Namespace::Prekeys, KEY_PREKEYS, &prekeys.to_secret_bytes());
        batch.put(
            Namespace::Prekeys,
            KEY_PUBLISHED,
            &published.encode_to_vec(),
        );
        // Persist the id counter with the secrets so ids are never reused.
        let st = self.state_mut()?;
        let old_next = st.profile.next_prekey_id;
        st.profile.next_prekey_id = next;
        batch.put(Namespace::Identity, KEY_PROFILE, &st.profile.encode());
        if let Err(e) = self.store.apply_batch(batch) {
            self.state_mut()?.profile.next_prekey_id = old_next;
            return Err(e.into());
        }
        let st = self.state_mut()?;
        st.prekeys = prekeys;
        st.published = Some(published.clone());
        Ok(relay::PrekeyPublish {
            recv_id: st.profile.recv_id.to_vec(),
            bundle: published.encode_to_vec(),
            one_time_prekeys: one_time,
            one_time_kem_prekeys: one_time_kem,
        })
    }

    /// One-time X25519 prekeys left on this device; publish more with
    /// [`prekey_publish`](Self::prekey_publish) when it runs low.
    pub fn one_time_prekeys_left(&self) -> Result<usize, EngineError> {
        Ok(self.state()?.prekeys.one_time_count())
    }

    /// SHA-256 hashes of the send capabilities currently issued and not expired at `now`: the
    /// set to register with `SetCapabilities` (or `CreateMailbox`).
    pub fn capability_hashes(&self, now: u64) -> Result<Vec<[u8; KEY_LEN]>, EngineError> {
        Ok(self
            .state()?
            .caps
            .iter()
            .filter(|c| c.expires_at > now)
            .map(|c| Sha256::digest(&c.capability[..]).into())
            .collect())
    }

    pub(super) fn issue_capability(
        &self,
        caps: &mut Vec<IssuedCapability>,
        expires_at: u64,
        contact: Option<DeviceId>,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<[u8; KEY_LEN], EngineError> {
        caps.retain(|c| c.expires_at > now);
        if caps.len() >= MAX_CAPABILITIES {
            return Err(EngineError::TooManyCapabilities);
        }
        let mut cap = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut cap[..]);
        let out = *cap;
        caps.push(IssuedCapability {
            capability: cap,
            expires_at,
            contact,
        });
        Ok(out)
    }

    pub(super) fn own_address(
        &self,
        capability: [u8; KEY_LEN],
    ) -> Result<wire::DeviceAddress, EngineError> {
        let st = self.state()?;
        Ok(wire::DeviceAddress {
            device_id: st.own_cert.device_id().0.to_vec(),
            relay: st.profile.relay.host_port.clone(),
            relay_pin: st.profile.relay.pin.to_vec(),
            send_id: st.profile.send_id.to_vec(),
            capability: capability.to_vec(),
            sealing_key: st.profile.sealing.public_key().to_vec(),
        })
    }
}
