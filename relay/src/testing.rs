//! A model-checked driver of the request handler, for the fuzz target `relay_requests` and the
//! property test below (feature `test-support`).
//!
//! [`drive_requests`] reads bytes (after an 8-byte seed) as operations, each an operation byte
//! (`op % 16` selects it, `op >> 4` is a count) and an argument byte, against one [`Handler`]
//! over the in-memory store, with two authenticated connections, a third that never authenticates, an
//! injected clock and a seeded generator: create a mailbox, authenticate it, send to it with
//! the right or a wrong capability, fetch, acknowledge, advance the clock, sweep, and hand the
//! handler arbitrary bytes decoded as a request. Every mailbox is authenticated on connection 0
//! when created; connection 1 only when an operation says so. Beside it runs a model of every mailbox's
//! queue. It panics (a fuzzer finding) if the handler panics or if an answer contradicts the
//! model:
//! - a fetch returns exactly the oldest unexpired, unacknowledged envelopes the model holds, in
//!   the order sent, with the bytes sent, and says whether more are queued;
//! - an acknowledged envelope never comes back, and an accepted one is never lost;
//! - fetch and acknowledge without authentication on that connection, and sends with a wrong
//!   capability, are refused with their typed error and change nothing.

// A model checker reports a finding by panicking. This module is compiled only for the relay's
// tests and with the `test-support` feature (the fuzz crate), never into the relay binary.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};
use handover_proto::decode;
use handover_proto::relay::v1 as wire;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};
use wire::ErrorCode;
use wire::request::Kind;
use wire::response::Kind as R;

use crate::handler::{
    Action, Handler, KeyingMaterial, Limits, MAILBOX_AUTH_EXPORTER_LABEL, MAILBOX_AUTH_PREFIX,
    Session,
};
use crate::store::{Id, MemoryBackend, MemoryStore, Store};

/// The clock's start, seconds since the Unix epoch.
const START: u64 = 1_800_000_000;

/// What a run reached, so that tests can check that an input exercised what it meant to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reached {
    /// Mailboxes created.
    pub mailboxes: usize,
    /// Sends answered `SendAccepted` (retries included).
    pub accepted: usize,
    /// Envelopes returned by fetches and checked against the model.
    pub fetched: usize,
    /// Envelopes acknowledged.
    pub acked: usize,
    /// Operations refused as they had to be (no authentication, wrong capability).
    pub refused: usize,
    /// Arbitrary inputs that decoded as a request and were handled.
    pub raw: usize,
}

/// A stand-in for the TLS exporter: distinct per connection (also used by the handler's tests).
pub(crate) struct Exporter(pub(crate) u8);

impl KeyingMaterial for Exporter {
    fn export(&self, label: &[u8], context: &[u8]) -> Option<[u8; 32]> {
        let mut h = Sha256::new();
        h.update([self.0]);
        h.update(label);
        h.update(context);
        Some(h.finalize().into())
    }
}

/// One mailbox as the model sees it.
struct Model {
    key: SigningKey,
    recv: Id,
    send: Id,
    capability: [u8; 32],
    /// Accepted, not acknowledged: (envelope id, expires at, ciphertext), in the order sent.
    queued: Vec<([u8; 16], u64, Vec<u8>)>,
    /// Acknowledged envelope ids; never sent again by the driver.
    acked: Vec<[u8; 16]>,
}

struct Driver {
    handler: Handler,
    sessions: [Session; 3],
    rng: StdRng,
    now: u64,
    mailboxes: Vec<Model>,
    next_id: u64,
    reached: Reached,
}

/// A protocol-version-1 request.
pub(crate) fn request(kind: Kind) -> wire::Request {
    wire::Request {
        protocol_version: 1,
        kind: Some(kind),
    }
}

/// The response of an action that answers at once or after the sync.
pub(crate) fn answer(action: Action) -> wire::Response {
    match action {
        Action::Reply(r) | Action::ReplyWhenDurable { response: r, .. } => r,
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn error_code(response: &wire::Response) -> Option<ErrorCode> {
    match &response.kind {
        Some(R::Error(e)) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

impl Driver {
    fn new(seed: u64) -> Self {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(MemoryBackend::new()));
        let limits = Limits {
            max_envelope_bytes: 4096,
            mailbox_max_envelopes: 12,
            mailbox_max_bytes: 16 * 1024,
            fetch_max: 5,
            ..Limits::default()
        };
        Self {
            handler: Handler::new(store, limits, Vec::new()),
            sessions: [0, 1, 2].map(|n| Session::new(Box::new(Exporter(n)))),
            rng: StdRng::seed_from_u64(seed),
            now: START,
            mailboxes: Vec::new(),
            next_id: 0,
            reached: Reached::default(),
        }
    }

    fn call(&mut self, session: usize, kind: Kind) -> Action {
        let action = self.handler.handle(
            &self.sessions[session],
            request(kind),
            self.now,
            &mut self.rng,
        );
        if matches!(action, Action::ReplyWhenDurable { .. }) {
            self.handler.store().sync().expect("in-memory sync");
        }
        action
    }

    fn create(&mut self, seed: u8) {
        let key =
            SigningKey::from_bytes(&Sha256::digest([seed, self.mailboxes.len() as u8]).into());
        let capability: [u8; 32] = Sha256::digest([b'c', seed]).into();
        let created = answer(self.call(
            0,
            Kind::CreateMailbox(wire::CreateMailbox {
                auth_key: key.verifying_key().to_bytes().to_vec(),
                capability_hashes: vec![Sha256::digest(capability).to_vec()],
                creation_token: Vec::new(),
            }),
        ));
        let Some(R::MailboxCreated(c)) = created.kind else {
            panic!("create mailbox: {created:?}")
        };
        let recv: Id = c.recv_id.try_into().expect("16-byte receive id");
        let send: Id = c.send_id.try_into().expect("16-byte send id");
        self.mailboxes.push(Model {
            key,
            recv,
            send,
            capability,
            queued: Vec::new(),
            acked: Vec::new(),
        });
        self.reached.mailboxes += 1;
        // Connection 0 always reads its mailboxes; connection 1 only once told to.
        self.authenticate(self.mailboxes.len() - 1, 0);
    }

    fn authenticate(&mut self, m: usize, session: usize) {
        let model = &self.mailboxes[m];
        let exporter = Exporter(session as u8)
            .export(MAILBOX_AUTH_EXPORTER_LABEL, &model.recv)
            .expect("exporter");
        let mut msg = MAILBOX_AUTH_PREFIX.to_vec();
        msg.extend_from_slice(&model.recv);
        msg.extend_from_slice(&exporter);
        let signature = model.key.sign(&msg).to_bytes().to_vec();
        let recv = model.recv;
        let r = answer(self.call(
            session,
            Kind::Authenticate(wire::Authenticate {
                recv_id: recv.to_vec(),
                signature,
            }),
        ));
        assert!(error_code(&r).is_none(), "authenticate: {r:?}");
        assert!(self.sessions[session].is_authenticated(&recv));
    }

    fn send(&mut self, m: usize, arg: u8, retry: bool, wrong_capability: bool) {
        let now = self.now;
        let model = &self.mailboxes[m];
        let (id, expires_at, ciphertext) = match model.queued.first() {
            Some(first) if retry => first.clone(),
            _ => {
                self.next_id += 1;
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&self.next_id.to_be_bytes());
                let len = 1 + usize::from(arg) * 8;
                let ttl = 60 * (1 + u64::from(arg % 64));
                (id, now + ttl, vec![arg; len])
            }
        };
        let mut capability = model.capability;
        if wrong_capability {
            capability[0] ^= 1;
        }
        let send = model.send;
        let r = answer(self.call(
            1,
            Kind::Send(wire::Send {
                send_id: send.to_vec(),
                capability: capability.to_vec(),
                envelope: Some(wire::Envelope {
                    envelope_id: id.to_vec(),
                    expires_at,
                    ciphertext: ciphertext.clone(),
                }),
            }),
        ));
        let model = &mut self.mailboxes[m];
        if wrong_capability {
            assert_eq!(error_code(&r), Some(ErrorCode::Unauthorised), "{r:?}");
            self.reached.refused += 1;
            return;
        }
        match (&r.kind, error_code(&r)) {
            (Some(R::SendAccepted(_)), _) => {
                assert!(!model.acked.contains(&id));
                if !model.queued.iter().any(|(q, _, _)| *q == id) {
                    model.queued.push((id, expires_at, ciphertext));
                }
                self.reached.accepted += 1;
            }
            // Full, or a retry of an envelope that expired meanwhile: nothing changes.
            (_, Some(ErrorCode::QuotaExceeded | ErrorCode::Expired)) => {}
            _ => panic!("send: {r:?}"),
        }
    }

    fn fetch(&mut self, m: usize, session: usize) {
        let recv = self.mailboxes[m].recv;
        let authed = self.sessions[session].is_authenticated(&recv);
        let r = answer(self.call(
            session,
            Kind::Fetch(wire::Fetch {
                recv_id: recv.to_vec(),
                after_seq: 0,
                limit: 0,
            }),
        ));
        if !authed {
            assert_eq!(error_code(&r), Some(ErrorCode::Unauthorised), "{r:?}");
            self.reached.refused += 1;
            return;
        }
        let Some(R::FetchResult(page)) = r.kind else {
            panic!("fetch: {r:?}")
        };
        let now = self.now;
        let expected: Vec<_> = self.mailboxes[m]
            .queued
            .iter()
            .filter(|(_, expires_at, _)| *expires_at > now)
            .collect();
        assert!(
            page.envelopes.len() <= expected.len(),
            "fetch returned more than was sent"
        );
        let mut last_seq = 0;
        for (got, want) in page.envelopes.iter().zip(&expected) {
            assert!(got.seq > last_seq, "sequence numbers must increase");
            last_seq = got.seq;
            let envelope = got.envelope.as_ref().expect("queued envelope has a body");
            assert_eq!(
                envelope.envelope_id, want.0,
                "out of order or unknown envelope"
            );
            assert_eq!(envelope.expires_at, want.1);
            assert_eq!(envelope.ciphertext, want.2, "ciphertext changed");
        }
        assert_eq!(
            page.more,
            page.envelopes.len() < expected.len(),
            "`more` must say whether envelopes remain"
        );
        assert!(
            !page.envelopes.is_empty() || expected.is_empty(),
            "accepted envelopes lost"
        );
        self.reached.fetched += page.envelopes.len();
    }

    fn ack(&mut self, m: usize, session: usize, count: u8) {
        let recv = self.mailboxes[m].recv;
        let authed = self.sessions[session].is_authenticated(&recv);
        let n = usize::from(count % 4).min(self.mailboxes[m].queued.len());
        let mut ids: Vec<[u8; 16]> = self.mailboxes[m].queued[..n].iter().map(|q| q.0).collect();
        // An id never sent: acknowledgements of unknown ids are ignored.
        ids.push([0xee; 16]);
        let r = answer(self.call(
            session,
            Kind::Ack(wire::Ack {
                recv_id: recv.to_vec(),
                envelope_ids: ids.iter().map(|id| id.to_vec()).collect(),
            }),
        ));
        if !authed {
            assert_eq!(error_code(&r), Some(ErrorCode::Unauthorised), "{r:?}");
            self.reached.refused += 1;
            return;
        }
        assert!(error_code(&r).is_none(), "ack: {r:?}");
        let model = &mut self.mailboxes[m];
        let gone: Vec<_> = model.queued.drain(..n).map(|q| q.0).collect();
        model.acked.extend(gone);
        self.reached.acked += n;
    }

    fn raw(&mut self, bytes: &[u8]) {
        if let Ok(request) = decode::request(bytes) {
            // On the connection that never authenticates, so that nothing the model tracks
            // can change (a random id or capability matches one of ours with negligible
            // probability).
            let action = self
                .handler
                .handle(&self.sessions[2], request, self.now, &mut self.rng);
            if let Action::BlobUpload(upload) = action {
                self.handler.blob_abort(upload);
            }
            self.reached.raw += 1;
        }
    }
}

/// Runs the operations in `data` (see the module documentation); returns what was reached.
///
/// # Panics
/// When the handler panics or contradicts the model: the finding.
pub fn drive_requests(data: &[u8]) -> Reached {
    let (seed, ops) = data.split_at(data.len().min(8));
    let mut seed_bytes = [0u8; 8];
    seed_bytes[..seed.len()].copy_from_slice(seed);
    let mut d = Driver::new(u64::from_be_bytes(seed_bytes));
    let mut it = ops.iter().copied();
    while let Some(op) = it.next() {
        let arg = it.next().unwrap_or(0);
        let session = usize::from(arg & 1);
        if d.mailboxes.is_empty() || op % 16 == 0 {
            if d.mailboxes.len() < 4 {
                d.create(arg);
            }
            continue;
        }
        let m = usize::from(arg >> 1) % d.mailboxes.len();
        match op % 16 {
            1 => d.authenticate(m, session),
            2 | 3 => d.send(m, arg, false, false),
            4 => d.send(m, arg, true, false),
            5 => d.send(m, arg, false, true),
            6 => d.fetch(m, session),
            7 => d.ack(m, session, op >> 4),
            8 => d.now += u64::from(arg) * 15,
            9 => {
                d.handler
                    .sweep(d.now, usize::from(arg))
                    .expect("in-memory sweep");
            }
            10 | 11 => {
                let len = usize::from(arg % 64).min(it.len());
                let bytes: Vec<u8> = it.by_ref().take(len).collect();
                d.raw(&bytes);
            }
            12 | 13 => d.fetch(m, session),
            _ => d.ack(m, session, op >> 4),
        }
    }
    d.reached
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    /// op, arg pairs after an 8-byte seed.
    fn ops(pairs: &[(u8, u8)]) -> Vec<u8> {
        let mut data = vec![0u8; 8];
        for (op, arg) in pairs {
            data.extend([*op, *arg]);
        }
        data
    }

    #[test]
    fn a_scripted_run_reaches_every_operation() {
        let mut data = ops(&[
            (0, 7),    // create mailbox 0 (authenticated on connection 0)
            (1, 0),    // authenticate it on connection 0 again
            (2, 0),    // send: 1 byte, 60 s to live
            (3, 2),    // send: 17 bytes, 180 s to live
            (4, 0),    // send the first again: accepted, not queued twice
            (5, 0),    // a wrong capability: refused
            (6, 1),    // fetch on connection 1, where it is not authenticated: refused
            (6, 0),    // fetch: both, in order
            (0x17, 0), // acknowledge one
            (6, 0),    // fetch: the other
            (8, 255),  // 3 825 s later: expired
            (9, 10),   // sweep
            (6, 0),    // fetch: nothing
        ]);
        let ping = wire::Request {
            protocol_version: 1,
            kind: Some(Kind::Ping(wire::Ping {})),
        }
        .encode_to_vec();
        data.extend([10, ping.len() as u8 % 64]);
        data.extend(ping);
        let reached = drive_requests(&data);
        assert_eq!(
            reached,
            Reached {
                mailboxes: 1,
                accepted: 3,
                fetched: 3,
                acked: 1,
                refused: 2,
                raw: 1,
            }
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn arbitrary_operations_never_contradict_the_model(
            data in proptest::collection::vec(any::<u8>(), 64..1200)
        ) {
            drive_requests(&data);
        }
    }
}
