//! Adversarial: every abuse gets its typed error, and the relay keeps serving other clients.

// Test code: helpers outside #[test] functions may unwrap and panic too (clippy.toml allows
// it only inside test functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use handover_proto::frame;
use handover_proto::relay::v1 as wire;
use handover_tests::client::{Client, ErrorCode, Kind, error_code, request, unix_now};
use handover_tests::process::RelayProcess;
use wire::response::Kind as R;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_relay-under-test"))
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// An honest client on its own connection: it must be served after every attack.
struct Bystander {
    client: Client,
    mailbox: handover_tests::client::MailboxKeys,
    sent: u32,
}

impl Bystander {
    async fn new(relay: &RelayProcess) -> Self {
        let client = Client::connect(relay.addr, relay.pin).await.unwrap();
        let mailbox = client.create_mailbox().await.unwrap();
        assert!(error_code(&client.authenticate(&mailbox).await.unwrap()).is_none());
        Self {
            client,
            mailbox,
            sent: 0,
        }
    }

    async fn still_served(&mut self) {
        self.sent += 1;
        let mut id = [9u8; 16];
        id[..4].copy_from_slice(&self.sent.to_be_bytes());
        let r = self
            .client
            .send(
                &self.mailbox.send_id,
                &self.mailbox.capability,
                id,
                unix_now() + 600,
                vec![1; 100],
            )
            .await
            .unwrap();
        assert!(matches!(r.kind, Some(R::SendAccepted(_))), "{r:?}");
        let all = self.client.fetch_all(&self.mailbox.recv_id).await.unwrap();
        assert!(
            all.iter()
                .any(|q| q.envelope.as_ref().unwrap().envelope_id == id)
        );
        self.client
            .ack(&self.mailbox.recv_id, vec![id.to_vec()])
            .await
            .unwrap();
    }
}

fn code(r: &wire::Response) -> ErrorCode {
    error_code(r).unwrap_or_else(|| panic!("expected an error, got {r:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_gets_typed_errors_and_others_keep_being_served() {
    // Bounded: a hung relay fails the test instead of hanging the suite.
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        abuse_gets_typed_errors_and_others_keep_being_served_scenario(),
    )
    .await
    .expect("test timed out");
}

async fn abuse_gets_typed_errors_and_others_keep_being_served_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(
        bin(),
        dir.path(),
        &[
            "--max-envelope-bytes",
            "4096",
            "--max-request-frame",
            "8192",
            "--max-blob-bytes",
            "100000",
            "--max-ttl-secs",
            "3600",
            "--max-streams",
            "4",
            "--mailbox-max-envelopes",
            "3",
        ],
    )
    .unwrap();
    let mut good = Bystander::new(&relay).await;
    let attacker = Client::connect(relay.addr, relay.pin).await.unwrap();
    let owner = Client::connect(relay.addr, relay.pin).await.unwrap();
    let victim = owner.create_mailbox().await.unwrap();
    owner.authenticate(&victim).await.unwrap();
    let fetch = || {
        Kind::Fetch(wire::Fetch {
            recv_id: victim.recv_id.clone(),
            after_seq: 0,
            limit: 0,
        })
    };

    // Unauthenticated fetch.
    let r = attacker.call(fetch()).await.unwrap();
    assert_eq!(code(&r), ErrorCode::Unauthorised);
    good.still_served().await;

    // Wrong capability.
    let r = attacker
        .send(
            &victim.send_id,
            &[0; 32],
            [1; 16],
            unix_now() + 60,
            vec![1; 10],
        )
        .await
        .unwrap();
    assert_eq!(code(&r), ErrorCode::Unauthorised);
    good.still_served().await;

    // Replayed authentication: the owner's signature, bound to the owner's connection.
    let signature = owner.auth_signature(&victim).unwrap();
    let r = attacker
        .call(Kind::Authenticate(wire::Authenticate {
            recv_id: victim.recv_id.clone(),
            signature,
        }))
        .await
        .unwrap();
    assert_eq!(code(&r), ErrorCode::Unauthorised);
    assert_eq!(
        code(&attacker.call(fetch()).await.unwrap()),
        ErrorCode::Unauthorised
    );
    good.still_served().await;

    // Malformed frames.
    let mut garbage = 6u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 6]);
    assert_eq!(
        code(&attacker.raw(&garbage).await.unwrap()),
        ErrorCode::BadRequest
    );
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[0; 10]);
    assert_eq!(
        code(&attacker.raw(&truncated).await.unwrap()),
        ErrorCode::BadRequest
    );
    let empty = frame::encode(&wire::Request {
        protocol_version: 1,
        kind: None,
    })
    .unwrap();
    assert_eq!(
        code(&attacker.raw(&empty).await.unwrap()),
        ErrorCode::BadRequest
    );
    let short_id = request(Kind::Fetch(wire::Fetch {
        recv_id: vec![1; 3],
        after_seq: 0,
        limit: 0,
    }));
    assert_eq!(
        code(
            &attacker
                .raw(&frame::encode(&short_id).unwrap())
                .await
                .unwrap()
        ),
        ErrorCode::BadRequest
    );
    let v2 = wire::Request {
        protocol_version: 2,
        kind: Some(Kind::Ping(wire::Ping {})),
    };
    assert_eq!(
        code(&attacker.raw(&frame::encode(&v2).unwrap()).await.unwrap()),
        ErrorCode::UnsupportedVersion
    );
    good.still_served().await;

    // Oversized frame (refused from the header, before buffering) and oversized envelope.
    let mut huge = 10_000_000u32.to_be_bytes().to_vec();
    huge.extend_from_slice(&[0; 1000]);
    assert_eq!(
        code(&attacker.raw(&huge).await.unwrap()),
        ErrorCode::TooLarge
    );
    let r = owner
        .send(
            &victim.send_id,
            &victim.capability,
            [2; 16],
            unix_now() + 60,
            vec![1; 5000],
        )
        .await
        .unwrap();
    assert_eq!(code(&r), ErrorCode::TooLarge);
    good.still_served().await;

    // Expired and over-long time to live.
    for expires_at in [unix_now() - 1, unix_now() + 7200] {
        let r = owner
            .send(
                &victim.send_id,
                &victim.capability,
                [3; 16],
                expires_at,
                vec![1; 10],
            )
            .await
            .unwrap();
        assert_eq!(code(&r), ErrorCode::Expired);
    }
    good.still_served().await;

    // Mailbox quota.
    for n in 0..3u8 {
        let r = owner
            .send(
                &victim.send_id,
                &victim.capability,
                [10 + n; 16],
                unix_now() + 60,
                vec![1; 10],
            )
            .await
            .unwrap();
        assert!(matches!(r.kind, Some(R::SendAccepted(_))), "{r:?}");
    }
    let r = owner
        .send(
            &victim.send_id,
            &victim.capability,
            [20; 16],
            unix_now() + 60,
            vec![1; 10],
        )
        .await
        .unwrap();
    assert_eq!(code(&r), ErrorCode::QuotaExceeded);
    good.still_served().await;

    // Blob over the limit.
    let r = attacker
        .call(Kind::BlobPut(wire::BlobPut {
            size: 100_001,
            expires_at: unix_now() + 60,
        }))
        .await
        .unwrap();
    assert_eq!(code(&r), ErrorCode::TooLarge);
    // A blob whose chunks exceed its declared size.
    let (mut send, mut recv) = attacker.conn.open_bi().await.unwrap();
    let put = request(Kind::BlobPut(wire::BlobPut {
        size: 10,
        expires_at: unix_now() + 60,
    }));
    send.write_all(&frame::encode(&put).unwrap()).await.unwrap();
    let chunk = wire::BlobChunk {
        data: vec![0; 20],
        last: true,
    };
    send.write_all(&frame::encode(&chunk).unwrap())
        .await
        .unwrap();
    let _ = send.finish();
    let payload = handover_tests::client::read_frame(&mut recv, 1 << 16)
        .await
        .unwrap()
        .unwrap();
    let r = handover_proto::decode::response(&payload).unwrap();
    assert_eq!(code(&r), ErrorCode::BadRequest);
    good.still_served().await;

    // Too many streams: with four streams being served (subscriptions), a fifth one is
    // answered at once with a typed error that names the limit; the connection stays usable.
    let mut subs = Vec::new();
    for _ in 0..4 {
        let s = owner.subscribe(vec![victim.recv_id.clone()]).await.unwrap();
        assert!(matches!(s.response.kind, Some(R::Subscribed(_))));
        subs.push(s);
    }
    for _ in 0..3 {
        let r = owner.call(Kind::Ping(wire::Ping {})).await.unwrap();
        let Some(R::Error(e)) = &r.kind else {
            panic!("a fifth concurrent stream was served: {r:?}")
        };
        assert_eq!(e.code, ErrorCode::RateLimited as i32);
        assert!(e.retry_after_secs > 0);
        assert!(
            e.message.contains("too many concurrent streams") && e.message.contains("at most 4"),
            "{}",
            e.message
        );
    }
    good.still_served().await;
    // Once a stream is done, requests are served again on the same connection (the relay
    // notices the closed subscription asynchronously; bounded by the test's timeout).
    drop(subs.pop());
    loop {
        let r = owner.call(Kind::Ping(wire::Ping {})).await.unwrap();
        match &r.kind {
            Some(R::Pong(_)) => break,
            Some(R::Error(e)) if e.code == ErrorCode::RateLimited as i32 => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => panic!("unexpected answer {r:?}"),
        }
    }
    drop(subs);

    good.still_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rate_is_limited_per_connection() {
    // Bounded: a hung relay fails the test instead of hanging the suite.
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        request_rate_is_limited_per_connection_scenario(),
    )
    .await
    .expect("test timed out");
}

async fn request_rate_is_limited_per_connection_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(
        bin(),
        dir.path(),
        &["--requests-per-sec", "1", "--request-burst", "5"],
    )
    .unwrap();
    let flood = Client::connect(relay.addr, relay.pin).await.unwrap();
    let mut limited = 0;
    for _ in 0..12 {
        let r = flood.call(Kind::Ping(wire::Ping {})).await.unwrap();
        if let Some(R::Error(e)) = &r.kind {
            assert_eq!(e.code, ErrorCode::RateLimited as i32);
            assert!(e.retry_after_secs > 0);
            limited += 1;
        }
    }
    assert!(limited >= 1, "no request was rate limited");
    // Another connection has its own budget.
    let other = Client::connect(relay.addr, relay.pin).await.unwrap();
    let r = other.call(Kind::Ping(wire::Ping {})).await.unwrap();
    assert!(matches!(r.kind, Some(R::Pong(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_get_no_datagrams_and_a_retry_under_handshake_load() {
    let dir = tempfile::tempdir().unwrap();
    // Threshold 0: every client must prove its address with a QUIC Retry first.
    let relay = RelayProcess::start(bin(), dir.path(), &["--retry-above-handshakes", "0"]).unwrap();
    let client = Client::connect(relay.addr, relay.pin).await.unwrap();
    // The relay offers no QUIC datagrams (nothing could fill a buffer it never reads).
    assert_eq!(client.conn.max_datagram_size(), None);
    let r = client.call(Kind::Ping(wire::Ping {})).await.unwrap();
    assert!(matches!(r.kind, Some(R::Pong(_))), "{r:?}");
    let admin = relay.admin.unwrap();
    let metrics = tokio::task::spawn_blocking(move || http_get(admin, "/metrics"))
        .await
        .unwrap();
    assert!(
        metrics.contains("handover_relay_quic_retries_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("handover_relay_handshakes 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_watermark_sends_are_refused_and_acks_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start(bin(), dir.path(), &[]).unwrap();
    let owner = Client::connect(relay.addr, relay.pin).await.unwrap();
    let mailbox = owner.create_mailbox().await.unwrap();
    let expires = unix_now() + 600;
    let r = owner
        .send(
            &mailbox.send_id,
            &mailbox.capability,
            [1; 16],
            expires,
            vec![1; 100],
        )
        .await
        .unwrap();
    assert!(matches!(r.kind, Some(R::SendAccepted(_))), "{r:?}");
    drop(owner);
    relay.terminate().unwrap();
    assert!(relay.wait_exit(Duration::from_secs(30)).unwrap().success());
    drop(relay);

    // No file system has this much free space: the relay is below its watermark at once.
    let relay = RelayProcess::start(
        bin(),
        dir.path(),
        &["--min-free-bytes", "18446744073709551615"],
    )
    .unwrap();
    let owner = Client::connect(relay.addr, relay.pin).await.unwrap();
    assert!(error_code(&owner.authenticate(&mailbox).await.unwrap()).is_none());
    // New data is refused with a typed, retryable error...
    let r = owner
        .send(
            &mailbox.send_id,
            &mailbox.capability,
            [2; 16],
            expires,
            vec![2; 100],
        )
        .await
        .unwrap();
    assert_eq!(code(&r), ErrorCode::Unavailable);
    let Some(R::Error(e)) = &r.kind else { panic!() };
    assert!(e.retry_after_secs > 0);
    let create = Kind::CreateMailbox(wire::CreateMailbox {
        auth_key: ed25519_dalek::SigningKey::from_bytes(&[7; 32])
            .verifying_key()
            .to_bytes()
            .to_vec(),
        capability_hashes: Vec::new(),
        creation_token: Vec::new(),
    });
    assert_eq!(
        code(&owner.call(create).await.unwrap()),
        ErrorCode::Unavailable
    );
    // ...while what frees space goes on: fetch, ack, delete.
    let queued = owner.fetch_all(&mailbox.recv_id).await.unwrap();
    assert_eq!(queued.len(), 1);
    let r = owner
        .ack(&mailbox.recv_id, vec![[1u8; 16].to_vec()])
        .await
        .unwrap();
    assert!(matches!(r.kind, Some(R::Ok(_))), "{r:?}");
    assert!(owner.fetch_all(&mailbox.recv_id).await.unwrap().is_empty());
    let r = owner
        .call(Kind::DeleteMailbox(wire::DeleteMailbox {
            recv_id: mailbox.recv_id.clone(),
        }))
        .await
        .unwrap();
    assert!(matches!(r.kind, Some(R::Ok(_))), "{r:?}");
    let admin = relay.admin.unwrap();
    let metrics = tokio::task::spawn_blocking(move || http_get(admin, "/metrics"))
        .await
        .unwrap();
    assert!(
        metrics.contains("handover_relay_storage_low 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_a_creation_token_creates_mailboxes_only_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("creation-token");
    std::fs::write(&token_file, "network password\n").unwrap();
    let relay = RelayProcess::start(
        bin(),
        &dir.path().join("relay"),
        &["--creation-token-file", token_file.to_str().unwrap()],
    )
    .unwrap();
    let client = Client::connect(relay.addr, relay.pin).await.unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let create = |token: &[u8]| {
        Kind::CreateMailbox(wire::CreateMailbox {
            auth_key: key.verifying_key().to_bytes().to_vec(),
            capability_hashes: Vec::new(),
            creation_token: token.to_vec(),
        })
    };
    for wrong in [&b""[..], b"network passwor", b"network password\n"] {
        let r = client.call(create(wrong)).await.unwrap();
        assert_eq!(code(&r), ErrorCode::Unauthorised);
    }
    let r = client.call(create(b"network password")).await.unwrap();
    assert!(matches!(r.kind, Some(R::MailboxCreated(_))), "{r:?}");
    // A token longer than the protocol allows is malformed.
    let r = client.call(create(&[1; 257])).await.unwrap();
    assert_eq!(code(&r), ErrorCode::BadRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_address_share_its_request_and_creation_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(
        bin(),
        dir.path(),
        &[
            "--address-requests-per-sec",
            "1",
            "--address-request-burst",
            "6",
            "--address-creations-per-min",
            "1",
            "--address-creation-burst",
            "2",
        ],
    )
    .unwrap();
    // Two connections from one address: each alone is within its own budget (200/s).
    let first = Client::connect(relay.addr, relay.pin).await.unwrap();
    let second = Client::connect(relay.addr, relay.pin).await.unwrap();
    assert!(first.create_mailbox().await.is_ok());
    assert!(second.create_mailbox().await.is_ok());
    // The address's third creation within the minute is refused, on either connection.
    let key = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
    let create = Kind::CreateMailbox(wire::CreateMailbox {
        auth_key: key.verifying_key().to_bytes().to_vec(),
        capability_hashes: Vec::new(),
        creation_token: Vec::new(),
    });
    let r = second.call(create).await.unwrap();
    assert_eq!(code(&r), ErrorCode::RateLimited);
    let Some(R::Error(e)) = &r.kind else { panic!() };
    assert!(e.retry_after_secs >= 1);
    // Requests: the two connections drew from one bucket of 6.
    let mut limited = 0;
    for n in 0..20 {
        let client = if n % 2 == 0 { &first } else { &second };
        let r = client.call(Kind::Ping(wire::Ping {})).await.unwrap();
        if let Some(R::Error(e)) = &r.kind {
            assert_eq!(e.code, ErrorCode::RateLimited as i32);
            limited += 1;
        }
    }
    assert!(limited >= 1, "the address's request budget was not shared");
}
