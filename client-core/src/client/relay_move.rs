//! Moving this device's mailbox to another relay (docs/PROTOCOL.md §10.4): the driver half of
//! [`Engine::switch_relay`](crate::engine::Engine::switch_relay) and friends.

use ed25519_dalek::SigningKey;

use std::time::Instant;

use super::{
    Client, ClientError, DRAIN_RETRY_INTERVAL, EngineError, ID_LEN, Message, NetError, RelayAccess,
    RelayClient, RelayInfo, address_of, now, relay,
};
use crate::engine::{RELAY_MOVE_DRAIN_SECS, RelayMove, RelayMovePhase};

/// What [`Client::move_relay`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayMoveReport {
    /// Contacts a contact card with the new address was queued for (it is sent at once, or by
    /// the background task if their relay cannot be reached now). `None` if the new mailbox is
    /// this device's but publishing its prekeys or queuing the cards could not finish now: the
    /// next [`Client::sync`] does it.
    pub cards_queued: Option<usize>,
    /// Unix seconds from which the old mailbox is deleted at the first sync that finds it
    /// empty (until then every sync also collects it).
    pub drain_until: u64,
}

/// This device's relay, and the old relay still being collected after a move.
#[derive(Clone, Debug)]
pub struct RelayStatus {
    /// The relay of this device's mailbox: the address its contacts write to.
    pub relay: RelayInfo,
    /// After a move: the old relay and the Unix time from which its mailbox is deleted once
    /// empty.
    pub draining: Option<(RelayInfo, u64)>,
}

impl Client {
    /// This device's relay and, during a move, the old one being drained.
    pub async fn relay_status(&self) -> Result<RelayStatus, ClientError> {
        self.engine_op(|e, _, _| {
            Ok(RelayStatus {
                relay: e.relay()?.clone(),
                draining: e.relay_move()?.map(|m| (m.old_relay, m.drain_until)),
            })
        })
        .await
    }

    /// Moves this device's mailbox to another relay, draining the old one for
    /// [`RELAY_MOVE_DRAIN_SECS`] (docs/PROTOCOL.md §10.4).
    ///
    /// First the new relay is reached and its key checked against `access.relay.pin`: if it
    /// cannot be reached ([`NetError::Connect`], [`NetError::Resolve`], [`NetError::Timeout`]),
    /// its key is not the pinned one ([`NetError::WrongPin`]) or it refuses the mailbox (a
    /// missing or wrong creation token: [`NetError::Relay`] with `UNAUTHORISED`), nothing on
    /// this device changes. Then, in order: the mailbox is created there with the current
    /// capabilities; the new relay, ids and auth key become this device's in one durable
    /// write; prekeys are published there; a contact card with the new address is queued to
    /// every contact with a session (colleagues included) and the capabilities registered;
    /// the outbox is flushed. Each later [`sync`](Self::sync) collects the old mailbox too and
    /// deletes it once the drain period has passed and it is empty. A crash at any point is
    /// resumed by the next sync.
    pub async fn move_relay(&self, access: RelayAccess) -> Result<RelayMoveReport, ClientError> {
        self.move_relay_draining(access, RELAY_MOVE_DRAIN_SECS)
            .await
    }

    /// [`move_relay`](Self::move_relay) with a drain period of `drain_secs` (0: the first sync
    /// that finds the old mailbox empty deletes it).
    pub async fn move_relay_draining(
        &self,
        access: RelayAccess,
        drain_secs: u64,
    ) -> Result<RelayMoveReport, ClientError> {
        let RelayAccess {
            relay: target,
            creation_token,
        } = access;
        let (current, pending) = self
            .engine_op(|e, _, _| Ok((e.relay()?.clone(), e.relay_move()?.is_some())))
            .await?;
        if pending {
            return Err(EngineError::RelayMoveInProgress.into());
        }
        if current == target {
            return Err(EngineError::InvalidInput(
                "this device's mailbox is on that relay already",
            )
            .into());
        }
        // The new relay, by its pin. Nothing is changed until its mailbox exists.
        let connection = RelayClient::connect(&address_of(&target)).await?;
        let auth = self
            .with_engine(|_, rng, _| SigningKey::generate(rng))
            .await?;
        let hashes = self.engine_op(|e, _, now| e.capability_hashes(now)).await?;
        let created = async {
            let ids = connection
                .create_mailbox(&auth, hashes, &creation_token)
                .await?;
            connection.authenticate(&ids.recv_id, &auth).await?;
            Ok::<_, NetError>(ids)
        }
        .await;
        drop(creation_token);
        let ids = match created {
            Ok(ids) => ids,
            Err(e) => {
                connection.close().await;
                return Err(e.into());
            }
        };
        let drain_until = now().saturating_add(drain_secs);
        let new = target.clone();
        self.engine_op(move |e, _, _| {
            e.switch_relay(new, auth, ids.recv_id, ids.send_id, drain_until)
        })
        .await?;
        {
            // The old mailbox's connection (and the background task's subscription on it)
            // ends; the task reconnects to the new relay.
            let mut relays = self.inner.relays.lock().await;
            for host_port in [&current.host_port, &target.host_port] {
                if let Some(old) = relays.remove(host_port) {
                    old.close().await;
                }
            }
            relays.insert(target.host_port.clone(), connection);
        }
        let cards_queued = match self.complete_relay_switch().await {
            Ok(n) => Some(n),
            // Resumed by the next sync.
            Err(ClientError::Net(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(RelayMoveReport {
            cards_queued,
            drain_until,
        })
    }

    /// Ends a move's drain now: collects the old mailbox and deletes it if nothing is left
    /// there. Returns `true` if the move is finished (or none was in progress), `false` if
    /// envelopes from an organisation this device does not trust yet still wait there (trust
    /// it and call again, or let them expire). An old relay that cannot be reached is an error
    /// and changes nothing.
    pub async fn finish_relay_move(&self) -> Result<bool, ClientError> {
        let mut delivered = Vec::new();
        let mut referral_steps = 0;
        let done = self
            .continue_relay_move(true, &mut delivered, &mut referral_steps)
            .await?;
        self.after_fetch(delivered, referral_steps).await?;
        Ok(done)
    }

    /// Publishes prekeys at the new relay, queues the contact cards and registers their
    /// capabilities, if the move is [`RelayMovePhase::Switched`]. Returns the cards queued.
    async fn complete_relay_switch(&self) -> Result<usize, ClientError> {
        let phase = self
            .engine_op(|e, _, _| Ok(e.relay_move()?.map(|m| m.phase)))
            .await?;
        if phase != Some(RelayMovePhase::Switched) {
            return Ok(0);
        }
        // The bundle is at the new relay before any contact learns the address.
        self.replenish_prekeys().await?;
        let announced = self
            .engine_op(|e, rng, now| e.announce_relay_move(now, rng))
            .await?;
        self.sync_capabilities().await?;
        self.flush_after_send().await?;
        Ok(announced.len())
    }

    /// One step of a move in progress: finishes its switch, registers the capabilities, and
    /// collects the old mailbox; deletes it (and forgets the move) once it is empty and the
    /// drain period has passed, or at once if `force`. After the drain period an old relay
    /// that cannot be reached is given up. Returns whether no move is in progress any more.
    pub(super) async fn continue_relay_move(
        &self,
        force: bool,
        delivered: &mut Vec<Message>,
        referral_steps: &mut usize,
    ) -> Result<bool, ClientError> {
        let Some(step) = self.engine_op(|e, _, _| e.relay_move()).await? else {
            return Ok(true);
        };
        if step.phase == RelayMovePhase::Switched {
            self.complete_relay_switch().await?;
        } else {
            // The cards' capabilities, in case a crash came between queuing and registering
            // them (idempotent).
            self.sync_capabilities().await?;
        }
        let due = force || now() >= step.drain_until;
        if !force && self.drain_recently_failed() {
            return Ok(false);
        }
        let connection = match self.drain_connection(&step).await {
            Ok(c) => c,
            Err(ClientError::Net(e)) if e.relay_code() == Some(relay::ErrorCode::Unauthorised) => {
                // The old mailbox is gone already (deleted before a crash, or by its relay).
                self.engine_op(|e, _, _| e.finish_relay_move()).await?;
                return Ok(true);
            }
            Err(ClientError::Net(e)) if due && !force && e.is_transient() => {
                // The drain period is over and the old relay cannot be reached: given up.
                self.engine_op(|e, _, _| e.finish_relay_move()).await?;
                return Ok(true);
            }
            Err(e) => {
                if matches!(&e, ClientError::Net(n) if n.is_transient()) {
                    *self
                        .inner
                        .drain_failed_at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                }
                return Err(e);
            }
        };
        let left = match self
            .fetch_mailbox(&connection, &step.old_recv_id, delivered, referral_steps)
            .await
        {
            Ok(left) => left,
            Err(e) => {
                self.drop_drain_connection().await;
                return Err(e);
            }
        };
        if !due || left > 0 {
            return Ok(false);
        }
        if let Err(e) = connection.delete_mailbox(&step.old_recv_id).await {
            self.drop_drain_connection().await;
            return Err(e.into());
        }
        self.engine_op(|e, _, _| e.finish_relay_move()).await?;
        self.drop_drain_connection().await;
        Ok(true)
    }

    /// The connection to the old relay, authenticated for the old mailbox (reused across
    /// syncs while it is open).
    async fn drain_connection(&self, step: &RelayMove) -> Result<RelayClient, ClientError> {
        let mut slot = self.inner.drain.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let connection = RelayClient::connect(&address_of(&step.old_relay)).await?;
        let recv_id: [u8; ID_LEN] = step.old_recv_id;
        if let Err(e) = connection.authenticate(&recv_id, step.old_auth_key()).await {
            connection.close().await;
            return Err(e.into());
        }
        *slot = Some(connection.clone());
        Ok(connection)
    }

    fn drain_recently_failed(&self) -> bool {
        self.inner
            .drain_failed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < DRAIN_RETRY_INTERVAL)
    }

    async fn drop_drain_connection(&self) {
        if let Some(c) = self.inner.drain.lock().await.take() {
            c.close().await;
        }
    }
}
