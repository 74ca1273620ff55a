//! The deterministic engine harness shared by the engine tests: in-memory stores, seeded RNGs,
//! a fake clock and a tiny in-memory relay (mailboxes, capabilities, prekeys, blobs).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unreachable_pub,
    missing_docs
)]

use std::collections::HashMap;

use handover_core::engine::{
    self, Engine, IdentitySetup, MailboxKeys, Message, OutboxItem, PeerId, Received, RelayInfo,
};
use handover_core::identity::{DeviceId, DeviceKeys, Role};
use handover_core::store::{InMemoryStore, KvStore, Namespace};
use handover_core::testing::TestRng;
use handover_proto::e2e::v1 as wire;
use handover_proto::relay::v1 as relay;
use sha2::{Digest, Sha256};

pub const T0: u64 = 1_800_000_000;

#[derive(Default)]
pub struct Mailbox {
    pub caps: Vec<[u8; 32]>,
    pub queue: Vec<relay::QueuedEnvelope>,
    pub bundle: Vec<u8>,
    pub otpks: Vec<Vec<u8>>,
    pub kems: Vec<Vec<u8>>,
}

/// A tiny in-memory relay: at-least-once queues until ack, capability checks, prekeys handed out
/// once, blobs. No deduplication of envelope ids (the clients must cope).
#[derive(Default)]
pub struct SimRelay {
    pub by_send: HashMap<[u8; 16], Mailbox>,
    pub by_recv: HashMap<[u8; 16], [u8; 16]>,
    pub blobs: HashMap<[u8; 16], Vec<u8>>,
    pub counter: u64,
}

impl SimRelay {
    pub fn id(&mut self) -> [u8; 16] {
        self.counter += 1;
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&self.counter.to_be_bytes());
        id[0] = 0xAA;
        id
    }

    pub fn create_mailbox(&mut self) -> ([u8; 16], [u8; 16]) {
        let (recv, send) = (self.id(), self.id());
        self.by_recv.insert(recv, send);
        self.by_send.insert(send, Mailbox::default());
        (recv, send)
    }

    pub fn mailbox(&mut self, recv: [u8; 16]) -> &mut Mailbox {
        let send = self.by_recv[&recv];
        self.by_send.get_mut(&send).unwrap()
    }

    pub fn set_caps(&mut self, recv: [u8; 16], caps: Vec<[u8; 32]>) {
        self.mailbox(recv).caps = caps;
    }

    pub fn authorised(&self, send_id: &[u8; 16], capability: &[u8; 32]) -> Option<&Mailbox> {
        let mb = self.by_send.get(send_id)?;
        let digest: [u8; 32] = Sha256::digest(capability).into();
        mb.caps.contains(&digest).then_some(mb)
    }

    pub fn send(&mut self, item: &OutboxItem) -> Result<(), &'static str> {
        self.authorised(&item.send_id, item.capability())
            .ok_or("unauthorised")?;
        self.counter += 1;
        let seq = self.counter;
        let mb = self.by_send.get_mut(&item.send_id).unwrap();
        mb.queue.push(relay::QueuedEnvelope {
            seq,
            envelope: Some(item.envelope.clone()),
        });
        Ok(())
    }

    pub fn fetch(&mut self, recv: [u8; 16]) -> Vec<relay::QueuedEnvelope> {
        self.mailbox(recv).queue.clone()
    }

    pub fn ack(&mut self, recv: [u8; 16], ids: &[Vec<u8>]) {
        self.mailbox(recv)
            .queue
            .retain(|q| !ids.contains(&q.envelope.as_ref().unwrap().envelope_id));
    }

    pub fn publish(&mut self, p: relay::PrekeyPublish) {
        let recv: [u8; 16] = p.recv_id.as_slice().try_into().unwrap();
        let mb = self.mailbox(recv);
        mb.bundle = p.bundle;
        mb.otpks.extend(p.one_time_prekeys);
        mb.kems.extend(p.one_time_kem_prekeys);
    }

    pub fn take(&mut self, address: &wire::DeviceAddress) -> relay::PrekeyBundleResult {
        let send: [u8; 16] = address.send_id.as_slice().try_into().unwrap();
        let cap: [u8; 32] = address.capability.as_slice().try_into().unwrap();
        assert!(
            self.authorised(&send, &cap).is_some(),
            "prekey take refused"
        );
        let mb = self.by_send.get_mut(&send).unwrap();
        relay::PrekeyBundleResult {
            bundle: mb.bundle.clone(),
            one_time_prekey: mb.otpks.pop().unwrap_or_default(),
            one_time_kem_prekey: mb.kems.pop().unwrap_or_default(),
            one_time_remaining: mb.otpks.len() as u32,
        }
    }

    pub fn blob_put(&mut self, data: &[u8]) -> [u8; 16] {
        let id = self.id();
        self.blobs.insert(id, data.to_vec());
        id
    }
}

pub struct Device<S: KvStore = InMemoryStore> {
    pub engine: Engine<S>,
    pub rng: TestRng,
}

pub fn relay_info() -> RelayInfo {
    RelayInfo {
        host_port: "relay.test:4433".into(),
        pin: [7; 32],
    }
}

impl Device {
    pub fn create(
        relay: &mut SimRelay,
        keys: DeviceKeys,
        identity: IdentitySetup,
        name: &str,
        rng: TestRng,
    ) -> Self {
        Self::create_in(InMemoryStore::new(), relay, keys, identity, name, rng)
    }

    /// Simulates a crash: drops everything in memory and reopens the store.
    pub fn restart(self) -> Self {
        let store = self.engine.into_store();
        Self {
            engine: Engine::open(store).unwrap(),
            rng: self.rng,
        }
    }

    pub fn new_org(relay: &mut SimRelay, seed: u64, name: &str) -> Self {
        Self::new_org_in(InMemoryStore::new(), relay, seed, name)
    }

    /// Enrols a new device of `admin`'s organisation.
    pub fn enrol(
        relay: &mut SimRelay,
        admin: &mut Device,
        seed: u64,
        role: Role,
        name: &str,
    ) -> Self {
        let mut rng = TestRng::seeded(seed);
        let keys = DeviceKeys::generate(&mut rng);
        let (certificate, device_list) = admin
            .engine
            .enrol_device(&keys.public_keys(), role, name, T0)
            .unwrap();
        let identity = IdentitySetup::Enrolled {
            certificate,
            device_list,
        };
        Self::create(relay, keys, identity, name, rng)
    }
}

impl<S: KvStore> Device<S> {
    pub fn create_in(
        store: S,
        relay: &mut SimRelay,
        keys: DeviceKeys,
        identity: IdentitySetup,
        name: &str,
        mut rng: TestRng,
    ) -> Self {
        let mut engine = Engine::open(store).unwrap();
        let mailbox = MailboxKeys::generate(&mut rng);
        let (recv, send) = relay.create_mailbox();
        engine
            .create_profile(
                keys,
                mailbox,
                recv,
                send,
                relay_info(),
                identity,
                name,
                T0,
                &mut rng,
            )
            .unwrap();
        let mut dev = Self { engine, rng };
        let publish = dev.engine.prekey_publish(T0, &mut dev.rng).unwrap();
        dev.engine.prekey_bundle_published(&publish).unwrap();
        relay.publish(publish);
        dev
    }

    pub fn new_org_in(store: S, relay: &mut SimRelay, seed: u64, name: &str) -> Self {
        let mut rng = TestRng::seeded(seed);
        let keys = DeviceKeys::generate(&mut rng);
        let identity = IdentitySetup::NewOrganisation {
            device_label: format!("{name} laptop"),
        };
        Self::create_in(store, relay, keys, identity, name, rng)
    }

    pub fn id(&self) -> DeviceId {
        self.engine.device_id().unwrap()
    }

    pub fn peer(&self) -> PeerId {
        self.engine.peer_id().unwrap()
    }

    pub fn root(&self) -> [u8; 32] {
        self.engine.org_root().unwrap()
    }

    pub fn sync_caps(&self, relay: &mut SimRelay, now: u64) {
        relay.set_caps(
            self.engine.recv_id().unwrap(),
            self.engine.capability_hashes(now).unwrap(),
        );
    }

    /// Sends every outbox entry and removes those the relay accepted.
    pub fn flush(&mut self, relay: &mut SimRelay) -> usize {
        let mut sent = 0;
        for item in self.engine.outbox().unwrap() {
            relay.send(&item).unwrap();
            self.engine.outbox_accepted(&item.envelope_id).unwrap();
            sent += 1;
        }
        sent
    }

    /// Fetches, processes and acks; returns the delivered messages and the number of
    /// duplicates.
    pub fn sync(&mut self, relay: &mut SimRelay, now: u64) -> (Vec<Message>, usize) {
        let recv = self.engine.recv_id().unwrap();
        let mut delivered = Vec::new();
        let mut duplicates = 0;
        let mut acks = Vec::new();
        for queued in relay.fetch(recv) {
            match self.engine.receive(&queued, now, &mut self.rng) {
                Ok(Received::Delivered(m)) => delivered.push(*m),
                Ok(Received::Duplicate) => duplicates += 1,
                Ok(_) => {}
                Err(e) => panic!("unexpected refusal: {e}"),
            }
            acks.push(queued.envelope.unwrap().envelope_id);
        }
        relay.ack(recv, &acks);
        (delivered, duplicates)
    }

    pub fn invite(&mut self, relay: &mut SimRelay, now: u64) -> String {
        let inv = self
            .engine
            .create_invitation(now + 3600, now, &mut self.rng)
            .unwrap();
        self.sync_caps(relay, now);
        engine::invitation_link(&inv)
    }

    pub fn accept(&mut self, relay: &mut SimRelay, link: &str, now: u64) -> PeerId {
        let inv = engine::parse_invitation_link(link).unwrap();
        let bundle = relay.take(inv.address.as_ref().unwrap());
        let bundle = engine::bundle_from_result(&bundle).unwrap();
        let (peer, _item) = self
            .engine
            .accept_invitation(&inv, &bundle, now, &mut self.rng)
            .unwrap();
        self.sync_caps(relay, now);
        self.flush(relay);
        peer
    }

    pub fn chat(&mut self, to: PeerId, text: &str, now: u64) -> Message {
        let (m, _) = self
            .engine
            .send_chat(to, text, vec![], now, &mut self.rng)
            .unwrap();
        m
    }

    /// The stored referral list summaries (`l/` + referral id in the Referrals namespace).
    pub fn list_summaries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.engine
            .store()
            .scan_prefix(Namespace::Referrals, b"l/")
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect()
    }

    /// Checks that every referral has a stored list summary, that `referral_list` reads them
    /// without rewriting any, and that each entry says what the referral records say
    /// (`referrals`, `received_offer`, `pending_releases`).
    pub fn assert_referral_list(&mut self) {
        let full = self.engine.referrals().unwrap();
        let stored = self.list_summaries();
        let mut ids: Vec<Vec<u8>> = full.iter().map(|s| s.id.as_bytes().to_vec()).collect();
        ids.sort();
        let stored_ids: Vec<Vec<u8>> = stored.iter().map(|(k, _)| k[2..].to_vec()).collect();
        assert_eq!(stored_ids, ids, "one stored summary per referral");
        let list = self.engine.referral_list().unwrap();
        assert_eq!(
            self.list_summaries(),
            stored,
            "the list rewrote its summaries"
        );
        let pending = self.engine.pending_releases().unwrap();
        assert_eq!(list.len(), full.len());
        for s in &full {
            let e = list.iter().find(|e| e.id == s.id).unwrap();
            assert_eq!(e.side, s.side);
            assert_eq!(e.state, s.state);
            assert_eq!(e.counterpart, s.counterpart);
            assert_eq!(e.assignee, s.assignee);
            assert_eq!(e.mine, s.mine);
            assert_eq!(e.awaiting_release, pending.contains(&s.id));
            let offer = self.engine.received_offer(&s.id).unwrap();
            assert_eq!(e.offer.is_some(), offer.is_some());
            if let (Some(g), Some(o)) = (&e.offer, &offer) {
                assert_eq!(g.case_ref, o.sender_case_ref);
                assert_eq!(g.priority, o.priority());
                assert_eq!(g.respond_by, o.respond_by);
                assert_eq!(g.services, o.services_requested().collect::<Vec<_>>());
                assert_eq!(g.other_services, o.other_services);
            }
            let entries = s.timeline["entries"].as_array().unwrap();
            assert_eq!(e.created_at, entries[0]["at"].as_u64().unwrap());
            assert_eq!(
                e.updated_at,
                entries.last().unwrap()["at"].as_u64().unwrap()
            );
        }
    }

    /// Every record in the store, for "nothing changed" checks.
    pub fn snapshot(&self) -> Vec<(Namespace, Vec<u8>, Vec<u8>)> {
        let mut all = Vec::new();
        for ns in Namespace::ALL {
            for (k, v) in self.engine.store().scan_prefix(ns, b"").unwrap() {
                all.push((ns, k, v.to_vec()));
            }
        }
        all
    }
}
