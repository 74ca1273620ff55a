//! Prekeys and send capabilities.

use prost::Message as _;
use sha2::Digest as _;

use crate::identity::DeviceKeys;
use crate::pqxdh::PrekeyStore;

use super::{
    CryptoRng, DeviceId, Engine, EngineError, IssuedCapability, KEY_LEN, KEY_PREKEYS, KEY_PROFILE,
    KEY_PUBLISHED, KEY_PUBLISHED_ACK, KvStore, MAX_CAPABILITIES, Namespace, ONE_TIME_PREKEY_BATCH,
    Sha256, WriteBatch, Zeroizing, relay, wire,
};

impl<S: KvStore> Engine<S> {
    /// Generates prekeys (a signed prekey and a last-resort ML-KEM prekey the first time, then
    /// [`ONE_TIME_PREKEY_BATCH`] one-time prekeys of each kind) at `now`, persists their
    /// secrets, and returns the `PrekeyPublish` request for the relay (after the relay accepted
    /// it, call [`prekey_bundle_published`](Self::prekey_bundle_published)).
    pub fn prekey_publish(
        &mut self,
        now: u64,
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
            None => new_bundle(
                &mut prekeys,
                device,
                &st.profile.certificate,
                &mut take_id,
                now,
                rng,
            )?,
        };
        let mut one_time = Vec::new();
        let mut one_time_kem = Vec::new();
        for _ in 0..ONE_TIME_PREKEY_BATCH {
            let otpk = prekeys
                .generate_one_time_prekey(take_id(), rng)
                .map_err(|_| EngineError::CorruptState)?;
            one_time.push(otpk.encode_to_vec());
            let kem = prekeys
                .generate_kem_prekey_at(device, take_id(), false, now, rng)
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

    /// Prekey rotation at `now` (docs/PROTOCOL.md §6.3), run by the driver after every sync:
    ///
    /// - deletes and zeroizes retired prekeys older than
    ///   [`RETIRED_PREKEY_LIFETIME_SECS`](crate::pqxdh::RETIRED_PREKEY_LIFETIME_SECS) past their
    ///   retirement, with their seen base keys;
    /// - once the signed prekey or last-resort ML-KEM prekey is
    ///   [`PREKEY_ROTATION_SECS`](crate::pqxdh::PREKEY_ROTATION_SECS) old, retires both and
    ///   makes a new pair (fresh ids from the device's prekey id counter).
    ///
    /// Returns the `PrekeyPublish` (the new bundle, no one-time prekeys) to send when the
    /// relay does not hold the current bundle yet: after a rotation, or when an earlier
    /// publish was never confirmed with [`prekey_bundle_published`](Self::prekey_bundle_published).
    /// Does nothing before the first [`prekey_publish`](Self::prekey_publish).
    pub fn rotate_prekeys(
        &mut self,
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Option<relay::PrekeyPublish>, EngineError> {
        let st = self.state()?;
        let Some(current) = st.published.clone() else {
            return Ok(None);
        };
        let mut prekeys = st.prekeys.clone();
        let deleted = prekeys.delete_expired(now);
        let mut next = st.profile.next_prekey_id;
        let mut take_id = || {
            let id = next;
            next = next.wrapping_add(1).max(1);
            id
        };
        let rotated = if prekeys.rotation_due(now) {
            prekeys.retire_current(now);
            Some(new_bundle(
                &mut prekeys,
                &st.profile.device,
                &st.profile.certificate,
                &mut take_id,
                now,
                rng,
            )?)
        } else {
            None
        };
        if deleted > 0 || rotated.is_some() {
            let mut batch = WriteBatch::new();
            batch.put(Namespace::Prekeys, KEY_PREKEYS, &prekeys.to_secret_bytes());
            let st = self.state_mut()?;
            let old_next = st.profile.next_prekey_id;
            if let Some(p) = &rotated {
                batch.put(Namespace::Prekeys, KEY_PUBLISHED, &p.encode_to_vec());
                // The id counter is persisted with the secrets so ids are never reused.
                st.profile.next_prekey_id = next;
                batch.put(Namespace::Identity, KEY_PROFILE, &st.profile.encode());
            }
            if let Err(e) = self.store.apply_batch(batch) {
                self.state_mut()?.profile.next_prekey_id = old_next;
                return Err(e.into());
            }
            let st = self.state_mut()?;
            st.prekeys = prekeys;
            if let Some(p) = &rotated {
                st.published = Some(p.clone());
            }
        }
        let bundle = rotated.unwrap_or(current).encode_to_vec();
        let acked = self.store.get(Namespace::Prekeys, KEY_PUBLISHED_ACK)?;
        let hash: [u8; 32] = Sha256::digest(&bundle).into();
        if acked.as_deref().map(|a| &a[..]) == Some(&hash[..]) {
            return Ok(None);
        }
        Ok(Some(relay::PrekeyPublish {
            recv_id: self.state()?.profile.recv_id.to_vec(),
            bundle,
            one_time_prekeys: Vec::new(),
            one_time_kem_prekeys: Vec::new(),
        }))
    }

    /// Records that the relay accepted `publish` (its bundle is the one peers now fetch), so
    /// [`rotate_prekeys`](Self::rotate_prekeys) does not ask to publish it again.
    pub fn prekey_bundle_published(
        &mut self,
        publish: &relay::PrekeyPublish,
    ) -> Result<(), EngineError> {
        let hash: [u8; 32] = Sha256::digest(&publish.bundle).into();
        let mut batch = WriteBatch::new();
        batch.put(Namespace::Prekeys, KEY_PUBLISHED_ACK, &hash);
        self.store.apply_batch(batch)?;
        Ok(())
    }

    /// The current signed prekey id and last-resort ML-KEM prekey id this device publishes.
    pub fn current_prekey_ids(&self) -> Result<Option<(u32, u32)>, EngineError> {
        Ok(self.state()?.published.as_ref().and_then(|p| {
            Some((
                p.signed_prekey.as_ref()?.id,
                p.last_resort_kem_prekey.as_ref()?.id,
            ))
        }))
    }

    /// Ids of the replaced prekeys this device still keeps (until their retention ends).
    pub fn retired_prekey_ids(&self) -> Result<Vec<u32>, EngineError> {
        Ok(self.state()?.prekeys.retired_ids())
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

/// A new published bundle: this device's certificate, a fresh signed prekey and a fresh
/// last-resort ML-KEM prekey (their secrets kept in `prekeys`), ids taken from `take_id`.
fn new_bundle(
    prekeys: &mut PrekeyStore,
    device: &DeviceKeys,
    certificate: &wire::SignedDeviceCertificate,
    take_id: &mut impl FnMut() -> u32,
    now: u64,
    rng: &mut impl CryptoRng,
) -> Result<wire::PublishedPrekeys, EngineError> {
    Ok(wire::PublishedPrekeys {
        certificate: Some(certificate.clone()),
        signed_prekey: Some(
            prekeys
                .generate_signed_prekey_at(device, take_id(), now, rng)
                .map_err(|_| EngineError::CorruptState)?,
        ),
        last_resort_kem_prekey: Some(
            prekeys
                .generate_kem_prekey_at(device, take_id(), true, now, rng)
                .map_err(|_| EngineError::CorruptState)?,
        ),
    })
}
