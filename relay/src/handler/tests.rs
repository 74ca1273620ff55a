//! Handler tests on the in-memory store with an injected clock.

use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};
use handover_proto::e2e::v1 as e2e;
use handover_proto::relay::v1 as wire;
use prost::Message;
use wire::request::Kind;

use super::*;
use crate::store::{MemoryBackend, MemoryStore};
use crate::testing::{Exporter, answer as response, request as req};

const NOW: u64 = 1_800_000_000;

fn session(n: u8) -> Session {
    Session::new(Box::new(Exporter(n)))
}

struct Fixture {
    handler: Handler,
    rng: rand::rngs::ThreadRng,
}

fn fixture(limits: Limits, orgs: Vec<[u8; 32]>) -> Fixture {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(MemoryBackend::new()));
    Fixture {
        handler: Handler::new(store, limits, orgs),
        rng: rand::rng(),
    }
}

fn code(action: Action) -> ErrorCode {
    match response(action).kind {
        Some(wire::response::Kind::Error(e)) => ErrorCode::try_from(e.code).unwrap(),
        other => panic!("expected an error, got {other:?}"),
    }
}

impl Fixture {
    fn call(&mut self, s: &Session, kind: Kind, now: u64) -> Action {
        self.handler.handle(s, req(kind), now, &mut self.rng)
    }

    /// Creates a mailbox with capability `cap` and authenticates it on `s`.
    fn mailbox(&mut self, s: &Session, cap: &[u8; 32]) -> (SigningKey, Id, Id) {
        let key = SigningKey::generate(&mut self.rng);
        let created = response(self.call(
            s,
            Kind::CreateMailbox(wire::CreateMailbox {
                auth_key: key.verifying_key().to_bytes().to_vec(),
                capability_hashes: vec![Sha256::digest(cap).to_vec()],
                creation_token: Vec::new(),
            }),
            NOW,
        ));
        let Some(wire::response::Kind::MailboxCreated(c)) = created.kind else {
            panic!("{created:?}")
        };
        let recv: Id = c.recv_id.try_into().unwrap();
        let send: Id = c.send_id.try_into().unwrap();
        assert!(matches!(self.auth(s, &key, &recv), Action::Reply(_)));
        assert!(s.is_authenticated(&recv));
        (key, recv, send)
    }

    fn auth(&mut self, s: &Session, key: &SigningKey, recv: &Id) -> Action {
        let exporter = s
            .exporter
            .export(MAILBOX_AUTH_EXPORTER_LABEL, recv)
            .unwrap();
        let mut msg = MAILBOX_AUTH_PREFIX.to_vec();
        msg.extend_from_slice(recv);
        msg.extend_from_slice(&exporter);
        let signature = key.sign(&msg).to_bytes().to_vec();
        self.call(
            s,
            Kind::Authenticate(wire::Authenticate {
                recv_id: recv.to_vec(),
                signature,
            }),
            NOW,
        )
    }

    fn send(&mut self, send: &Id, cap: &[u8; 32], n: u8, expires_at: u64, now: u64) -> Action {
        let s = session(99);
        self.call(
            &s,
            Kind::Send(wire::Send {
                send_id: send.to_vec(),
                capability: cap.to_vec(),
                envelope: Some(wire::Envelope {
                    envelope_id: vec![n; 16],
                    expires_at,
                    ciphertext: vec![n; 100],
                }),
            }),
            now,
        )
    }

    fn fetch(&mut self, s: &Session, recv: &Id, now: u64) -> Vec<u8> {
        let r = response(self.call(
            s,
            Kind::Fetch(wire::Fetch {
                recv_id: recv.to_vec(),
                after_seq: 0,
                limit: 0,
            }),
            now,
        ));
        let Some(wire::response::Kind::FetchResult(f)) = r.kind else {
            panic!("{r:?}")
        };
        f.envelopes
            .iter()
            .map(|q| q.envelope.as_ref().unwrap().envelope_id[0])
            .collect()
    }

    fn status(&mut self, send: &Id, cap: &[u8; 32], ids: &[u8], now: u64) -> Vec<i32> {
        let s = session(98);
        let r = response(self.call(
            &s,
            Kind::EnvelopeStatus(wire::EnvelopeStatus {
                send_id: send.to_vec(),
                capability: cap.to_vec(),
                envelope_ids: ids.iter().map(|n| vec![*n; 16]).collect(),
            }),
            now,
        ));
        let Some(wire::response::Kind::EnvelopeStatusResult(st)) = r.kind else {
            panic!("{r:?}")
        };
        st.states
    }
}

#[test]
fn send_fetch_ack_in_order() {
    let mut f = fixture(Limits::default(), vec![]);
    let s = session(1);
    let cap = [5u8; 32];
    let (_, recv, send) = f.mailbox(&s, &cap);
    for n in 1..=3 {
        let action = f.send(&send, &cap, n, NOW + 60, NOW);
        let Action::ReplyWhenDurable { notify, response } = action else {
            panic!()
        };
        assert_eq!(notify, Some(recv));
        let Some(wire::response::Kind::SendAccepted(a)) = response.kind else {
            panic!()
        };
        assert_eq!(a.accepted_at % 60, 0, "coarse timestamp");
    }
    assert_eq!(f.fetch(&s, &recv, NOW), vec![1, 2, 3]);
    // Fetch is at-least-once: the same envelopes again until acked.
    assert_eq!(f.fetch(&s, &recv, NOW), vec![1, 2, 3]);
    let acked = f.call(
        &s,
        Kind::Ack(wire::Ack {
            recv_id: recv.to_vec(),
            envelope_ids: vec![vec![1; 16], vec![2; 16]],
        }),
        NOW,
    );
    assert!(matches!(
        response(acked).kind,
        Some(wire::response::Kind::Ok(_))
    ));
    assert_eq!(f.fetch(&s, &recv, NOW), vec![3]);
    assert_eq!(f.status(&send, &cap, &[1, 3], NOW), vec![0, 1]);
}

#[test]
fn unauthenticated_wrong_capability_and_replayed_auth_are_refused() {
    let mut f = fixture(Limits::default(), vec![]);
    let owner = session(1);
    let cap = [5u8; 32];
    let (key, recv, send) = f.mailbox(&owner, &cap);
    let other = session(2);
    let fetch = Kind::Fetch(wire::Fetch {
        recv_id: recv.to_vec(),
        after_seq: 0,
        limit: 0,
    });
    assert_eq!(
        code(f.call(&other, fetch.clone(), NOW)),
        ErrorCode::Unauthorised
    );
    assert_eq!(
        code(f.send(&send, &[6; 32], 1, NOW + 60, NOW)),
        ErrorCode::Unauthorised
    );
    assert_eq!(
        code(f.send(&[0; 16], &cap, 1, NOW + 60, NOW)),
        ErrorCode::NotFound
    );
    // A signature made for the owner's connection is useless on another connection.
    let exporter = owner
        .exporter
        .export(MAILBOX_AUTH_EXPORTER_LABEL, &recv)
        .unwrap();
    let mut msg = MAILBOX_AUTH_PREFIX.to_vec();
    msg.extend_from_slice(&recv);
    msg.extend_from_slice(&exporter);
    let replay = Kind::Authenticate(wire::Authenticate {
        recv_id: recv.to_vec(),
        signature: key.sign(&msg).to_bytes().to_vec(),
    });
    assert_eq!(code(f.call(&other, replay, NOW)), ErrorCode::Unauthorised);
    assert_eq!(code(f.call(&other, fetch, NOW)), ErrorCode::Unauthorised);
    // Wrong version.
    let bad = wire::Request {
        protocol_version: 2,
        kind: Some(Kind::Ping(wire::Ping {})),
    };
    assert_eq!(
        code(f.handler.handle(&other, bad, NOW, &mut f.rng)),
        ErrorCode::UnsupportedVersion
    );
    // Capability revocation.
    let set = Kind::SetCapabilities(wire::SetCapabilities {
        recv_id: recv.to_vec(),
        capability_hashes: vec![Sha256::digest([7u8; 32]).to_vec()],
    });
    response(f.call(&owner, set, NOW));
    assert_eq!(
        code(f.send(&send, &cap, 1, NOW + 60, NOW)),
        ErrorCode::Unauthorised
    );
    assert!(matches!(
        f.send(&send, &[7; 32], 1, NOW + 60, NOW),
        Action::ReplyWhenDurable { .. }
    ));
}

#[test]
fn ttl_bounds_size_and_quota() {
    let limits = Limits {
        max_ttl_secs: 3600,
        max_envelope_bytes: 50,
        mailbox_max_envelopes: 2,
        ..Limits::default()
    };
    let mut f = fixture(limits.clone(), vec![]);
    let s = session(1);
    let cap = [5u8; 32];
    let (_, _, send) = f.mailbox(&s, &cap);
    assert_eq!(
        code(f.send(&send, &cap, 1, NOW + 60, NOW)),
        ErrorCode::TooLarge
    );
    f = fixture(
        Limits {
            max_envelope_bytes: 1000,
            ..limits
        },
        vec![],
    );
    let (_, _, send) = f.mailbox(&s, &cap);
    assert_eq!(code(f.send(&send, &cap, 1, NOW, NOW)), ErrorCode::Expired);
    assert_eq!(
        code(f.send(&send, &cap, 1, NOW - 5, NOW)),
        ErrorCode::Expired
    );
    assert_eq!(
        code(f.send(&send, &cap, 1, NOW + 3601, NOW)),
        ErrorCode::Expired
    );
    assert!(matches!(
        f.send(&send, &cap, 1, NOW + 3600, NOW),
        Action::ReplyWhenDurable { .. }
    ));
    assert!(matches!(
        f.send(&send, &cap, 2, NOW + 3600, NOW),
        Action::ReplyWhenDurable { .. }
    ));
    assert_eq!(
        code(f.send(&send, &cap, 3, NOW + 3600, NOW)),
        ErrorCode::QuotaExceeded
    );
    // A retried send of a queued envelope is accepted again, not counted twice.
    assert!(matches!(
        f.send(&send, &cap, 2, NOW + 3600, NOW),
        Action::ReplyWhenDurable { notify: None, .. }
    ));
}

#[test]
fn expiry_sweeper_and_tombstones_follow_the_injected_clock() {
    let limits = Limits {
        tombstone_secs: 600,
        ..Limits::default()
    };
    let mut f = fixture(limits, vec![]);
    let s = session(1);
    let cap = [5u8; 32];
    let (_, recv, send) = f.mailbox(&s, &cap);
    f.send(&send, &cap, 1, NOW + 100, NOW);
    f.send(&send, &cap, 2, NOW + 1000, NOW);
    assert_eq!(f.fetch(&s, &recv, NOW + 99), vec![1, 2]);
    // Expired items are never returned, swept or not.
    assert_eq!(f.fetch(&s, &recv, NOW + 100), vec![2]);
    assert_eq!(f.status(&send, &cap, &[1, 2], NOW + 100), vec![2, 1]);
    let swept = f.handler.sweep(NOW + 100, 100).unwrap();
    assert_eq!(swept.envelopes, 1);
    assert_eq!(f.status(&send, &cap, &[1], NOW + 200), vec![2]);
    // The tombstone is short-lived.
    let swept = f.handler.sweep(NOW + 700, 100).unwrap();
    assert_eq!(swept.tombstones, 1);
    assert_eq!(f.status(&send, &cap, &[1], NOW + 700), vec![0]);
    assert_eq!(f.fetch(&s, &recv, NOW + 700), vec![2]);
    let swept = f.handler.sweep(NOW + 1000, 100).unwrap();
    assert_eq!(swept.envelopes, 1);
    assert!(f.fetch(&s, &recv, NOW + 1000).is_empty());
}

#[test]
fn one_time_prekeys_are_handed_out_once() {
    let mut f = fixture(Limits::default(), vec![]);
    let s = session(1);
    let cap = [5u8; 32];
    let (_, recv, send) = f.mailbox(&s, &cap);
    let take = Kind::PrekeyTake(wire::PrekeyTake {
        send_id: send.to_vec(),
        capability: cap.to_vec(),
    });
    assert_eq!(code(f.call(&s, take.clone(), NOW)), ErrorCode::NotFound);
    let publish = Kind::PrekeyPublish(wire::PrekeyPublish {
        recv_id: recv.to_vec(),
        bundle: b"bundle".to_vec(),
        one_time_prekeys: vec![vec![1; 32], vec![2; 32]],
        one_time_kem_prekeys: vec![],
    });
    assert_eq!(
        code(f.call(&session(2), publish.clone(), NOW)),
        ErrorCode::Unauthorised
    );
    response(f.call(&s, publish, NOW));
    let mut got = Vec::new();
    for _ in 0..3 {
        let r = response(f.call(&s, take.clone(), NOW));
        let Some(wire::response::Kind::PrekeyBundle(b)) = r.kind else {
            panic!()
        };
        assert_eq!(b.bundle, b"bundle");
        got.push(b.one_time_prekey);
    }
    assert_eq!(got, vec![vec![1; 32], vec![2; 32], vec![]]);
}

struct Org {
    root: SigningKey,
}

impl Org {
    fn cert(&self, device: &SigningKey, role: e2e::Role, not_after: u64) -> Vec<u8> {
        let cert = e2e::DeviceCertificate {
            org_root_key: self.root.verifying_key().to_bytes().to_vec(),
            device_id: vec![3; 16],
            signing_key: device.verifying_key().to_bytes().to_vec(),
            identity_key: vec![4; 32],
            role: role as i32,
            not_before: NOW - 10,
            not_after,
            label: String::new(),
        }
        .encode_to_vec();
        let mut msg = DEVICE_CERT_PREFIX.to_vec();
        msg.extend_from_slice(&cert);
        e2e::SignedDeviceCertificate {
            certificate: cert,
            signature: self.root.sign(&msg).to_bytes().to_vec(),
        }
        .encode_to_vec()
    }
}

fn member_auth(f: &mut Fixture, s: &Session, device: &SigningKey, cert: Vec<u8>) -> Action {
    let exporter = s.exporter.export(MEMBER_AUTH_EXPORTER_LABEL, &[]).unwrap();
    let mut msg = MEMBER_AUTH_PREFIX.to_vec();
    msg.extend_from_slice(&exporter);
    f.call(
        s,
        Kind::MemberAuth(wire::MemberAuth {
            device_certificate: cert,
            signature: device.sign(&msg).to_bytes().to_vec(),
        }),
        NOW,
    )
}

#[test]
fn directory_needs_member_auth_and_admin_signatures() {
    let mut rng = rand::rng();
    let org = Org {
        root: SigningKey::generate(&mut rng),
    };
    let stranger = Org {
        root: SigningKey::generate(&mut rng),
    };
    let mut f = fixture(Limits::default(), vec![org.root.verifying_key().to_bytes()]);
    let admin = SigningKey::generate(&mut rng);
    let s = session(1);
    let query = Kind::DirectoryQuery(wire::DirectoryQuery::default());
    assert_eq!(
        code(f.call(&s, query.clone(), NOW)),
        ErrorCode::Unauthorised
    );
    // Not admitted, expired, or signed by the wrong key.
    let c = stranger.cert(&admin, e2e::Role::Admin, NOW + 100);
    assert_eq!(
        code(member_auth(&mut f, &s, &admin, c)),
        ErrorCode::Unauthorised
    );
    let c = org.cert(&admin, e2e::Role::Admin, NOW);
    assert_eq!(
        code(member_auth(&mut f, &s, &admin, c)),
        ErrorCode::Unauthorised
    );
    let c = org.cert(&admin, e2e::Role::Admin, NOW + 100);
    let other = SigningKey::generate(&mut rng);
    assert_eq!(
        code(member_auth(&mut f, &s, &other, c.clone())),
        ErrorCode::Unauthorised
    );
    // A signature for another connection does not transfer.
    let s2 = session(2);
    let exporter = s2.exporter.export(MEMBER_AUTH_EXPORTER_LABEL, &[]).unwrap();
    let mut msg = MEMBER_AUTH_PREFIX.to_vec();
    msg.extend_from_slice(&exporter);
    let replay = Kind::MemberAuth(wire::MemberAuth {
        device_certificate: c.clone(),
        signature: admin.sign(&msg).to_bytes().to_vec(),
    });
    assert_eq!(code(f.call(&s, replay, NOW)), ErrorCode::Unauthorised);
    assert!(matches!(
        member_auth(&mut f, &s, &admin, c.clone()),
        Action::Reply(_)
    ));
    let c_admin = c.clone();

    let profile = e2e::OrgProfile {
        org_root_key: org.root.verifying_key().to_bytes().to_vec(),
        name: "Safe Harbour".into(),
        services: vec!["housing".into()],
        languages: vec!["en".into(), "uk".into()],
        device_list: Some(e2e::SignedDeviceList {
            list: b"list".to_vec(),
            signature: org
                .root
                .sign(&[DEVICE_LIST_PREFIX, b"list"].concat())
                .to_bytes()
                .to_vec(),
        }),
        issued_at: NOW,
        ..Default::default()
    }
    .encode_to_vec();
    let signed = e2e::SignedOrgProfile {
        signature: admin
            .sign(&[ORG_PROFILE_PREFIX, &profile].concat())
            .to_bytes()
            .to_vec(),
        profile,
        signer: Some(decode::signed_device_certificate(&c).unwrap()),
    }
    .encode_to_vec();
    let publish = Kind::DirectoryPublish(wire::DirectoryPublish { profile: signed });
    assert!(matches!(
        f.call(&s, publish.clone(), NOW),
        Action::ReplyWhenDurable { .. }
    ));
    assert_eq!(
        code(f.call(&s, publish, NOW)),
        ErrorCode::BadRequest,
        "stale"
    );
    let found = |f: &mut Fixture, q: wire::DirectoryQuery| {
        let r = response(f.call(&s, Kind::DirectoryQuery(q), NOW));
        let Some(wire::response::Kind::DirectoryResult(d)) = r.kind else {
            panic!()
        };
        d.profiles.len()
    };
    assert_eq!(found(&mut f, wire::DirectoryQuery::default()), 1);
    let q = wire::DirectoryQuery {
        languages: vec!["UK".into()],
        name_contains: "harb".into(),
        ..Default::default()
    };
    assert_eq!(found(&mut f, q), 1);
    let q = wire::DirectoryQuery {
        services: vec!["legal".into()],
        ..Default::default()
    };
    assert_eq!(found(&mut f, q), 0);
    // A caseworker is a member but cannot publish. (Checked before the revocation below.)
    let worker = SigningKey::generate(&mut rng);
    let s3 = session(3);
    let c = org.cert(&worker, e2e::Role::Caseworker, NOW + 100);
    member_auth(&mut f, &s3, &worker, c);
    assert_eq!(found_s(&mut f, &s3), 1);
    let publish = Kind::DirectoryPublish(wire::DirectoryPublish { profile: vec![] });
    assert_eq!(code(f.call(&s3, publish, NOW)), ErrorCode::Unauthorised);

    // The organisation revokes the device (id [3; 16], see `Org::cert`) in a newer profile:
    // member authentication with its certificate fails from then on.
    let list = e2e::DeviceList {
        org_root_key: org.root.verifying_key().to_bytes().to_vec(),
        version: 2,
        issued_at: NOW,
        devices: vec![],
        revoked_device_ids: vec![vec![3; 16]],
    }
    .encode_to_vec();
    let profile = e2e::OrgProfile {
        org_root_key: org.root.verifying_key().to_bytes().to_vec(),
        name: "Safe Harbour".into(),
        device_list: Some(e2e::SignedDeviceList {
            signature: org
                .root
                .sign(&[DEVICE_LIST_PREFIX, &list].concat())
                .to_bytes()
                .to_vec(),
            list,
        }),
        issued_at: NOW + 1,
        ..Default::default()
    }
    .encode_to_vec();
    let signed = e2e::SignedOrgProfile {
        signature: admin
            .sign(&[ORG_PROFILE_PREFIX, &profile].concat())
            .to_bytes()
            .to_vec(),
        profile,
        signer: Some(decode::signed_device_certificate(&c_admin).unwrap()),
    }
    .encode_to_vec();
    let publish = Kind::DirectoryPublish(wire::DirectoryPublish { profile: signed });
    assert!(matches!(
        f.call(&s, publish, NOW),
        Action::ReplyWhenDurable { .. }
    ));
    let s4 = session(4);
    let c = org.cert(&worker, e2e::Role::Caseworker, NOW + 100);
    assert_eq!(
        code(member_auth(&mut f, &s4, &worker, c)),
        ErrorCode::Unauthorised
    );
}

fn found_s(f: &mut Fixture, s: &Session) -> usize {
    let r = response(f.call(
        s,
        Kind::DirectoryQuery(wire::DirectoryQuery::default()),
        NOW,
    ));
    let Some(wire::response::Kind::DirectoryResult(d)) = r.kind else {
        panic!()
    };
    d.profiles.len()
}

#[test]
fn blobs_upload_download_limits_and_expiry() {
    let limits = Limits {
        max_blob_bytes: 1000,
        blob_store_max_bytes: 1500,
        ..Limits::default()
    };
    let mut f = fixture(limits, vec![]);
    let s = session(1);
    let put = |size, expires_at| Kind::BlobPut(wire::BlobPut { size, expires_at });
    assert_eq!(
        code(f.call(&s, put(1001, NOW + 60), NOW)),
        ErrorCode::TooLarge
    );
    assert_eq!(code(f.call(&s, put(10, NOW), NOW)), ErrorCode::Expired);
    let Action::BlobUpload(mut up) = f.call(&s, put(700, NOW + 60), NOW) else {
        panic!()
    };
    let chunk = |n: u8, len: usize, last| wire::BlobChunk {
        data: vec![n; len],
        last,
    };
    assert!(matches!(
        f.handler.blob_chunk(&mut up, chunk(1, 400, false), NOW),
        Ok(ChunkOutcome::More)
    ));
    let Ok(ChunkOutcome::Complete(r)) = f.handler.blob_chunk(&mut up, chunk(2, 300, true), NOW)
    else {
        panic!()
    };
    let Some(wire::response::Kind::BlobStored(stored)) = r.kind else {
        panic!()
    };
    let get = Kind::BlobGet(wire::BlobGet {
        blob_id: stored.blob_id.clone(),
        offset: 350,
    });
    let Action::BlobDownload(mut down) = f.call(&s, get.clone(), NOW) else {
        panic!()
    };
    let c = f.handler.blob_read(&mut down).unwrap();
    assert!(c.last);
    assert_eq!(c.data.len(), 350);
    assert_eq!(&c.data[..50], &[1; 50]);
    // The blob store as a whole has a quota (700 of 1500 bytes are taken).
    assert_eq!(
        code(f.call(&s, put(900, NOW + 60), NOW)),
        ErrorCode::QuotaExceeded
    );
    // Overlong uploads are refused.
    let Action::BlobUpload(mut up) = f.call(&s, put(10, NOW + 60), NOW) else {
        panic!()
    };
    assert!(
        f.handler
            .blob_chunk(&mut up, chunk(1, 11, true), NOW)
            .is_err()
    );
    f.handler.blob_abort(up);
    // Expired blobs are gone.
    assert_eq!(code(f.call(&s, get.clone(), NOW + 60)), ErrorCode::NotFound);
    assert_eq!(f.handler.sweep(NOW + 60, 100).unwrap().blobs, 1);
}

#[test]
fn fetch_pages_stay_within_one_frame() {
    let limits = Limits {
        mailbox_max_bytes: u64::MAX,
        ..Limits::default()
    };
    let mut f = fixture(limits, vec![]);
    let s = session(1);
    let cap = [5u8; 32];
    let (_, recv, send) = f.mailbox(&s, &cap);
    let big = MAX_ENVELOPE_LEN;
    for n in 1..=20u8 {
        let action = f.call(
            &session(9),
            Kind::Send(wire::Send {
                send_id: send.to_vec(),
                capability: cap.to_vec(),
                envelope: Some(wire::Envelope {
                    envelope_id: vec![n; 16],
                    expires_at: NOW + 60,
                    ciphertext: vec![n; big],
                }),
            }),
            NOW,
        );
        assert!(matches!(action, Action::ReplyWhenDurable { .. }));
    }
    let r = response(f.call(
        &s,
        Kind::Fetch(wire::Fetch {
            recv_id: recv.to_vec(),
            after_seq: 0,
            limit: 0,
        }),
        NOW,
    ));
    let Some(wire::response::Kind::FetchResult(page)) = &r.kind else {
        panic!()
    };
    assert!(page.more);
    assert!(!page.envelopes.is_empty() && page.envelopes.len() < 20);
    assert!(handover_proto::frame::encode(&r).is_ok());
}

#[test]
fn tiny_blob_chunks_are_buffered_into_store_chunks() {
    let mut f = fixture(Limits::default(), vec![]);
    let s = session(1);
    let size = 300_000u64;
    let Action::BlobUpload(mut up) = f.call(
        &s,
        Kind::BlobPut(wire::BlobPut {
            size,
            expires_at: NOW + 60,
        }),
        NOW,
    ) else {
        panic!()
    };
    let data: Vec<u8> = (0..size).map(|n| (n % 7) as u8).collect();
    for (i, piece) in data.chunks(1000).enumerate() {
        let last = (i + 1) * 1000 >= data.len();
        let out = f
            .handler
            .blob_chunk(
                &mut up,
                wire::BlobChunk {
                    data: piece.to_vec(),
                    last,
                },
                NOW,
            )
            .unwrap();
        assert_eq!(matches!(out, ChunkOutcome::Complete(_)), last);
    }
    let meta = f.handler.store().blob_meta(&up.blob_id).unwrap().unwrap();
    assert!(meta.complete);
    assert_eq!(
        f.handler
            .store()
            .blob_read(&up.blob_id, 0, 1 << 20)
            .unwrap(),
        data
    );
}

#[test]
fn only_sends_to_cached_send_ids_are_handled_without_blocking() {
    let mut f = fixture(Limits::default(), vec![]);
    let s = session(1);
    let cap = [5u8; 32];
    let (_, recv, send) = f.mailbox(&s, &cap);
    let send_request = |n: u8| {
        req(Kind::Send(wire::Send {
            send_id: send.to_vec(),
            capability: cap.to_vec(),
            envelope: Some(wire::Envelope {
                envelope_id: vec![n; 16],
                expires_at: NOW + 60,
                ciphertext: vec![n; 100],
            }),
        }))
    };
    // A send id the store has not cached would need a keyspace read: given back unchanged.
    let back = f
        .handler
        .handle_nonblocking(send_request(1), NOW)
        .unwrap_err();
    assert_eq!(back, send_request(1));
    assert!(f.fetch(&s, &recv, NOW).is_empty());
    // Handled on the blocking path, which caches it; then the next send needs no I/O.
    assert!(matches!(
        f.handler.handle(&s, back, NOW, &mut f.rng),
        Action::ReplyWhenDurable { .. }
    ));
    assert!(matches!(
        f.handler.handle_nonblocking(send_request(2), NOW),
        Ok(Action::ReplyWhenDurable { .. })
    ));
    assert_eq!(f.fetch(&s, &recv, NOW), vec![1, 2]);
    // Pings need nothing; everything else goes to the blocking path.
    assert!(
        f.handler
            .handle_nonblocking(req(Kind::Ping(wire::Ping {})), NOW)
            .is_ok()
    );
    let fetch = req(Kind::Fetch(wire::Fetch {
        recv_id: recv.to_vec(),
        after_seq: 0,
        limit: 0,
    }));
    assert_eq!(
        f.handler
            .handle_nonblocking(fetch.clone(), NOW)
            .unwrap_err(),
        fetch
    );
}

#[test]
fn blob_uploads_are_bounded_per_connection_in_time_and_reserve_only_what_arrived() {
    let limits = Limits {
        max_blob_bytes: 1000,
        blob_store_max_bytes: 1500,
        ..Limits::default()
    };
    let mut f = fixture(limits, vec![]);
    let (s, other) = (session(1), session(2));
    let put = |size| {
        Kind::BlobPut(wire::BlobPut {
            size,
            expires_at: NOW + 600,
        })
    };
    let chunk = |len: usize, last| wire::BlobChunk {
        data: vec![7; len],
        last,
    };
    // Declared sizes are not reserved: two uploads of 1000 bytes start against 1500 bytes.
    let Action::BlobUpload(mut a) = f.call(&s, put(1000), NOW) else {
        panic!("first upload refused")
    };
    let Action::BlobUpload(mut b) = f.call(&s, put(1000), NOW) else {
        panic!("second upload refused: its declared size was reserved")
    };
    // One connection has at most MAX_UPLOADS_PER_CONNECTION uploads at once.
    assert_eq!(MAX_UPLOADS_PER_CONNECTION, 2);
    assert_eq!(code(f.call(&s, put(10), NOW)), ErrorCode::RateLimited);
    // Bytes count as they arrive: the store fills at 1500 written bytes.
    assert!(matches!(
        f.handler.blob_chunk(&mut a, chunk(1000, true), NOW),
        Ok(ChunkOutcome::Complete(_))
    ));
    let Err(full) = f.handler.blob_chunk(&mut b, chunk(600, true), NOW) else {
        panic!("over the blob store's limit")
    };
    let Some(wire::response::Kind::Error(e)) = full.kind else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::QuotaExceeded as i32);
    f.handler.blob_abort(b);
    // A finished or aborted upload gives its place back.
    drop(a);
    let Action::BlobUpload(mut c) = f.call(&s, put(400), NOW) else {
        panic!("places not given back")
    };
    // Every upload has an overall deadline, however steadily its chunks arrive.
    let deadline = NOW + BLOB_UPLOAD_BASE_SECS + 400 / BLOB_UPLOAD_MIN_RATE;
    assert_eq!(c.deadline, deadline);
    assert!(matches!(
        f.handler.blob_chunk(&mut c, chunk(10, false), deadline - 1),
        Ok(ChunkOutcome::More)
    ));
    assert!(
        f.handler
            .blob_chunk(&mut c, chunk(10, false), deadline)
            .is_err()
    );
    f.handler.blob_abort(c);
    // The limit is per connection.
    assert!(matches!(
        f.call(&other, put(10), NOW),
        Action::BlobUpload(_)
    ));
}

#[test]
fn mailbox_creation_needs_the_relays_token_when_it_has_one() {
    let mut f = fixture(Limits::default(), Vec::new());
    f.handler = Handler::new(f.handler.store().clone(), Limits::default(), Vec::new())
        .with_creation_token(Some(CreationToken::new(b"network password")));
    let s = session(1);
    let key = SigningKey::generate(&mut f.rng);
    let create = |token: &[u8]| {
        Kind::CreateMailbox(wire::CreateMailbox {
            auth_key: key.verifying_key().to_bytes().to_vec(),
            capability_hashes: Vec::new(),
            creation_token: token.to_vec(),
        })
    };
    for wrong in [&b""[..], b"network passwore", b"network password\n"] {
        assert_eq!(
            code(f.call(&s, create(wrong), NOW)),
            ErrorCode::Unauthorised
        );
    }
    let created = response(f.call(&s, create(b"network password"), NOW));
    assert!(
        matches!(created.kind, Some(wire::response::Kind::MailboxCreated(_))),
        "{created:?}"
    );
    // Without a token configured, any token (or none) is accepted.
    let mut open = fixture(Limits::default(), Vec::new());
    let created = response(open.call(&s, create(b"anything"), NOW));
    assert!(matches!(
        created.kind,
        Some(wire::response::Kind::MailboxCreated(_))
    ));
    assert_eq!(
        format!("{:?}", CreationToken::new(b"network password")),
        "CreationToken(..)"
    );
}

#[test]
fn below_the_free_space_watermark_only_new_data_is_refused() {
    let mut f = fixture(Limits::default(), Vec::new());
    let s = session(1);
    let cap = [5u8; 32];
    let (_key, recv, send) = f.mailbox(&s, &cap);
    assert!(matches!(
        response(f.send(&send, &cap, 1, NOW + 60, NOW)).kind,
        Some(wire::response::Kind::SendAccepted(_))
    ));
    f.handler.set_storage_low(true);
    let refused = response(f.send(&send, &cap, 2, NOW + 60, NOW));
    let Some(wire::response::Kind::Error(e)) = &refused.kind else {
        panic!("{refused:?}")
    };
    assert_eq!(e.code, ErrorCode::Unavailable as i32);
    assert_eq!(e.retry_after_secs, STORAGE_LOW_RETRY_SECS);
    let key = SigningKey::generate(&mut f.rng);
    let create = Kind::CreateMailbox(wire::CreateMailbox {
        auth_key: key.verifying_key().to_bytes().to_vec(),
        capability_hashes: Vec::new(),
        creation_token: Vec::new(),
    });
    assert_eq!(code(f.call(&s, create, NOW)), ErrorCode::Unavailable);
    let publish = Kind::PrekeyPublish(wire::PrekeyPublish {
        recv_id: recv.to_vec(),
        bundle: vec![1; 10],
        ..Default::default()
    });
    assert_eq!(code(f.call(&s, publish, NOW)), ErrorCode::Unavailable);
    let blob = Kind::BlobPut(wire::BlobPut {
        size: 10,
        expires_at: NOW + 60,
    });
    assert_eq!(code(f.call(&s, blob, NOW)), ErrorCode::Unavailable);
    // What frees space goes on.
    assert_eq!(f.fetch(&s, &recv, NOW), vec![1]);
    let ack = Kind::Ack(wire::Ack {
        recv_id: recv.to_vec(),
        envelope_ids: vec![vec![1; 16]],
    });
    assert!(matches!(
        response(f.call(&s, ack, NOW)).kind,
        Some(wire::response::Kind::Ok(_))
    ));
    assert!(f.fetch(&s, &recv, NOW).is_empty());
    f.handler.set_storage_low(false);
    assert!(matches!(
        response(f.send(&send, &cap, 3, NOW + 60, NOW)).kind,
        Some(wire::response::Kind::SendAccepted(_))
    ));
}

#[test]
fn relay_wide_caps_bound_mailboxes_and_queued_envelopes() {
    let limits = Limits {
        relay_max_mailboxes: 2,
        relay_max_envelopes: 3,
        relay_max_bytes: 250,
        ..Limits::default()
    };
    let mut f = fixture(limits, Vec::new());
    let s = session(1);
    let (a, b) = ([1u8; 32], [2u8; 32]);
    let (_, recv_a, send_a) = f.mailbox(&s, &a);
    let (_, recv_b, send_b) = f.mailbox(&s, &b);
    let key = SigningKey::generate(&mut f.rng);
    let create = Kind::CreateMailbox(wire::CreateMailbox {
        auth_key: key.verifying_key().to_bytes().to_vec(),
        capability_hashes: Vec::new(),
        creation_token: Vec::new(),
    });
    assert_eq!(
        code(f.call(&s, create.clone(), NOW)),
        ErrorCode::QuotaExceeded
    );
    // Envelopes of 100 bytes: two fit in 250 relay-wide bytes, whichever mailbox they are in.
    let accepted = |action: Action| {
        matches!(
            response(action).kind,
            Some(wire::response::Kind::SendAccepted(_))
        )
    };
    assert!(accepted(f.send(&send_a, &a, 1, NOW + 60, NOW)));
    assert!(accepted(f.send(&send_b, &b, 2, NOW + 60, NOW)));
    assert_eq!(
        code(f.send(&send_a, &a, 3, NOW + 60, NOW)),
        ErrorCode::QuotaExceeded
    );
    // An ack frees room.
    let ack = Kind::Ack(wire::Ack {
        recv_id: recv_b.to_vec(),
        envelope_ids: vec![vec![2; 16]],
    });
    response(f.call(&s, ack, NOW));
    assert!(accepted(f.send(&send_a, &a, 3, NOW + 60, NOW)));
    // Deleting a mailbox makes room for another.
    let delete = Kind::DeleteMailbox(wire::DeleteMailbox {
        recv_id: recv_b.to_vec(),
    });
    response(f.call(&s, delete, NOW));
    assert!(matches!(
        response(f.call(&s, create, NOW)).kind,
        Some(wire::response::Kind::MailboxCreated(_))
    ));
    // The envelope count is capped too.
    let mut f = fixture(
        Limits {
            relay_max_envelopes: 2,
            ..Limits::default()
        },
        Vec::new(),
    );
    let (_, _, send_a) = f.mailbox(&s, &a);
    assert!(accepted(f.send(&send_a, &a, 1, NOW + 60, NOW)));
    assert!(accepted(f.send(&send_a, &a, 2, NOW + 60, NOW)));
    assert_eq!(
        code(f.send(&send_a, &a, 3, NOW + 60, NOW)),
        ErrorCode::QuotaExceeded
    );
    let _ = recv_a;
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Whatever bytes arrive, decoding either fails with a typed error or the handler answers:
    /// no input panics it.
    #[test]
    fn arbitrary_request_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
        let mut f = fixture(Limits::default(), vec![[1; 32]]);
        let s = session(1);
        if let Ok(request) = handover_proto::decode::request(&bytes) {
            let _ = f.handler.handle(&s, request, NOW, &mut f.rng);
        }
    }

    /// Structurally valid requests with arbitrary field contents never panic the handler.
    #[test]
    fn arbitrary_valid_requests_never_panic(
        id in proptest::collection::vec(proptest::num::u8::ANY, 16..=16),
        key in proptest::collection::vec(proptest::num::u8::ANY, 32..=32),
        sig in proptest::collection::vec(proptest::num::u8::ANY, 64..=64),
        blob in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        n in proptest::num::u64::ANY,
        which in 0u8..10,
    ) {
        let mut f = fixture(Limits::default(), vec![[1; 32]]);
        let s = session(1);
        let kind = match which {
            0 => Kind::CreateMailbox(wire::CreateMailbox { auth_key: key.clone(), capability_hashes: vec![key.clone()], creation_token: Vec::new() }),
            1 => Kind::Authenticate(wire::Authenticate { recv_id: id.clone(), signature: sig.clone() }),
            2 => Kind::Send(wire::Send { send_id: id.clone(), capability: key.clone(), envelope: Some(wire::Envelope { envelope_id: id.clone(), expires_at: n, ciphertext: blob.clone() }) }),
            3 => Kind::Fetch(wire::Fetch { recv_id: id.clone(), after_seq: n, limit: n as u32 }),
            4 => Kind::MemberAuth(wire::MemberAuth { device_certificate: blob.clone(), signature: sig.clone() }),
            5 => Kind::DirectoryPublish(wire::DirectoryPublish { profile: blob.clone() }),
            6 => Kind::BlobPut(wire::BlobPut { size: n, expires_at: n }),
            7 => Kind::BlobGet(wire::BlobGet { blob_id: id.clone(), offset: n }),
            8 => Kind::EnvelopeStatus(wire::EnvelopeStatus { send_id: id.clone(), capability: key.clone(), envelope_ids: vec![id.clone()] }),
            _ => Kind::PrekeyTake(wire::PrekeyTake { send_id: id.clone(), capability: key.clone() }),
        };
        let _ = f.handler.handle(&s, req(kind), n, &mut f.rng);
    }
}

#[test]
fn version_is_checked_before_the_v1_schema() {
    fn code_of(result: Result<wire::Request, wire::Response>) -> ErrorCode {
        match result {
            Err(wire::Response {
                kind: Some(wire::response::Kind::Error(e)),
            }) => ErrorCode::try_from(e.code).unwrap(),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    // A version-2 request that breaks the v1 rules (no operation, a field of the wrong length).
    let no_kind = wire::Request {
        protocol_version: 2,
        kind: None,
    };
    assert_eq!(
        code_of(decode_request(&no_kind.encode_to_vec())),
        ErrorCode::UnsupportedVersion
    );
    let short_id = req(Kind::PrekeyTake(wire::PrekeyTake {
        send_id: vec![1; 3],
        capability: vec![2; 32],
    }));
    let v2 = wire::Request {
        protocol_version: 2,
        ..short_id.clone()
    };
    assert_eq!(
        code_of(decode_request(&v2.encode_to_vec())),
        ErrorCode::UnsupportedVersion
    );
    // A version-2 request whose field 10 has a wire type v1 cannot parse (a varint where v1 has
    // a message): not even valid v1 protobuf.
    let mut v2_bytes = vec![0x08, 0x02]; // field 1 (varint) = 2
    v2_bytes.extend_from_slice(&[0x50, 0x07]); // field 10 (varint) = 7
    assert!(handover_proto::decode::request(&v2_bytes).is_err());
    assert_eq!(
        code_of(decode_request(&v2_bytes)),
        ErrorCode::UnsupportedVersion
    );
    // A request without a version is not version 1.
    let mut unversioned = req(Kind::Ping(wire::Ping {}));
    unversioned.protocol_version = 0;
    assert_eq!(
        code_of(decode_request(&unversioned.encode_to_vec())),
        ErrorCode::UnsupportedVersion
    );
    // Version 1 still gets the schema rules, and garbage is a bad request.
    assert_eq!(
        code_of(decode_request(&short_id.encode_to_vec())),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code_of(decode_request(&[0x0a, 0x7f, 0x01])),
        ErrorCode::BadRequest
    );
    let ping = req(Kind::Ping(wire::Ping {}));
    assert_eq!(decode_request(&ping.encode_to_vec()).unwrap(), ping);
}
