//! Joining an organisation and enrolling a device (docs/PROTOCOL.md §5.6): the async steps the
//! CLI and the app both run, over the sans-IO [`crate::enrolment`] module.

use std::path::Path;

use crate::enrolment::{
    ENROLMENT_INVITATION_TTL, EnrolmentCode, EnrolmentError, JoinRequest, PendingJoin,
};
use crate::identity::Role;

use super::{
    Client, ClientError, Engine, EngineError, IdentitySetup, RelayAccess, RelayInfo, SledStore,
    StoreError, create_on_relay, fresh_rng,
};
use crate::store::{Credential, KdfParams};

impl From<EnrolmentError> for ClientError {
    fn from(e: EnrolmentError) -> Self {
        ClientError::Engine(e.into())
    }
}

/// A completed join ([`Client::join`]).
#[derive(Clone, Debug)]
pub struct Joined {
    /// The name this device joined under.
    pub name: String,
    /// The enrolling device's invitation link: accept it with [`Client::accept_invitation`] so
    /// the two devices can reach each other.
    pub invitation: String,
}

impl Client {
    /// Step 1 on a new device: opens the encrypted store in `dir` (creating it with `kdf` if
    /// there is none), generates the device's keys and keeps them there as a pending join for
    /// `relay` under `name`; returns the client (no profile yet, not started) and the request
    /// to show with its check code. If a join is already pending, its request is returned
    /// unchanged. Refused with [`EngineError::ProfileExists`] if the store holds a profile.
    pub async fn request_join(
        dir: &Path,
        credential: &Credential,
        kdf: KdfParams,
        relay: RelayInfo,
        name: &str,
    ) -> Result<(Self, JoinRequest), ClientError> {
        let store = match SledStore::open(dir, credential, fresh_rng()) {
            Ok(store) => store,
            Err(StoreError::NotFound) => SledStore::create(dir, credential, kdf, fresh_rng())?,
            Err(e) => return Err(e.into()),
        };
        let client = Self::from_engine(Engine::open(store)?, dir);
        let name = name.to_owned();
        match client
            .engine_op(move |e, rng, _| e.begin_join(relay, &name, rng))
            .await
        {
            Ok(request) => Ok((client, request)),
            Err(e) => {
                let _ = client.shutdown().await;
                Err(e)
            }
        }
    }

    /// The join pending in this profile, if any: a device that has asked to join and not yet
    /// received its enrolment code.
    pub async fn pending_join(&self) -> Result<Option<JoinRequest>, ClientError> {
        self.engine_op(|e, _, _| match e.pending_join()? {
            Some(p) => Ok(Some(p.request()?)),
            None => Ok(None),
        })
        .await
    }

    /// Step 2 on the device that holds the organisation root key, after the check codes were
    /// compared: certifies the requesting device with `role` and `label`, sends the new device
    /// list to every contact with a session, and makes an invitation from this device valid
    /// for [`ENROLMENT_INVITATION_TTL`]; returns the enrolment code for the new device.
    /// Idempotent for the same request ([`Engine::enrol_request`]): a lost code is made again.
    pub async fn enrol(
        &self,
        request: &JoinRequest,
        role: Role,
        label: &str,
    ) -> Result<EnrolmentCode, ClientError> {
        let request = request.clone();
        let label = label.trim().to_owned();
        let enrolled = self
            .engine_op(move |e, rng, now| {
                let enrolled = e.enrol_request(&request, role, &label, now)?;
                if enrolled.fresh {
                    for c in e.contacts()? {
                        if c.has_session && c.has_address {
                            // A contact that cannot be sent to now gets the list with the
                            // next message (it is always sent first).
                            let _ = e.send_device_list(c.peer(), now, rng);
                        }
                    }
                }
                Ok(enrolled)
            })
            .await?;
        let (_, invitation) = self.create_invitation(ENROLMENT_INVITATION_TTL).await?;
        // The device lists queued above; what cannot go now stays in the outbox.
        let _ = self.flush_outbox().await;
        Ok(EnrolmentCode {
            certificate: enrolled.certificate,
            device_list: enrolled.device_list,
            invitation,
        })
    }

    /// Step 3 on the new device (a client opened on the store of [`Client::request_join`]):
    /// checks that `code` certifies this device's pending keys, creates the mailbox on the
    /// pending relay (with `creation_token` if the relay requires one) and the profile with
    /// the certificate and device list, and forgets the pending join. Then accept
    /// [`Joined::invitation`] and [`start`](Self::start) the client.
    pub async fn join(
        &self,
        code: &EnrolmentCode,
        creation_token: Option<Vec<u8>>,
    ) -> Result<Joined, ClientError> {
        let mut guard = self.inner.engine.lock().await;
        let engine = guard.as_mut().ok_or(ClientError::Closed)?;
        if engine.has_profile() {
            return Err(EngineError::ProfileExists.into());
        }
        let pending = engine
            .pending_join()?
            .ok_or(EnrolmentError::NoPendingJoin)?;
        code.check_for(&pending.keys.public_keys())?;
        let PendingJoin { keys, relay, name } = pending;
        let host_port = relay.host_port.clone();
        let identity = IdentitySetup::Enrolled {
            certificate: code.certificate.clone(),
            device_list: code.device_list.clone(),
        };
        let access = RelayAccess::new(relay, creation_token);
        let created = create_on_relay(engine, access, keys, identity, &name).await;
        // Once the profile exists (even if publishing prekeys failed: the client retries
        // that), the secret keys live in it; the pending copy goes.
        let cleared = if engine.has_profile() {
            engine.clear_pending_join()
        } else {
            Ok(())
        };
        let connection = created?;
        cleared?;
        drop(guard);
        self.inner.relays.lock().await.insert(host_port, connection);
        Ok(Joined {
            name,
            invitation: code.invitation.clone(),
        })
    }
}
