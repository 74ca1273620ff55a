//! A client that stopped acknowledging: graceful shutdown waits for its answers to be written
//! (the grace period) and then only briefly for their delivery, so a vanished client cannot
//! hold shutdown for the whole grace period; and a sender that never acknowledges its answer
//! does not hold up the recipient's wake-up.

// Test code: helpers outside #[test] functions may unwrap and panic too (clippy.toml allows
// it only inside test functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use handover_proto::relay::v1 as wire;
use handover_relay::config::Config;
use handover_relay::server::Relay;
use handover_tests::client::{Client, Kind, unix_now};
use tokio::net::UdpSocket;

/// A loopback UDP forwarder between one client and `relay`. Once `cut` is set it drops every
/// datagram from the relay to the client, while still forwarding the client's: to the relay
/// the client looks alive but never acknowledges anything again.
async fn forwarder(relay: SocketAddr, cut: Arc<AtomicBool>) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(relay).await.unwrap();
    let addr = front.local_addr().unwrap();
    let (client_tx, mut client_rx) = tokio::sync::watch::channel(None::<SocketAddr>);
    {
        let (front, back) = (front.clone(), back.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                client_tx.send_replace(Some(from));
                let _ = back.send(&buf[..n]).await;
            }
        });
    }
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = back.recv(&mut buf).await {
            let client = *client_rx.borrow_and_update();
            if let Some(client) = client
                && !cut.load(Ordering::SeqCst)
            {
                let _ = front.send_to(&buf[..n], client).await;
            }
        }
    });
    addr
}

/// Pings the relay has counted so far.
fn pings(relay: &Relay) -> u64 {
    relay
        .metrics()
        .encode()
        .lines()
        .find(|l| l.starts_with("handover_relay_requests_total{") && l.contains("op=\"ping\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_only_briefly_for_a_client_that_stopped_acknowledging() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("relay"));
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin = None;
    config.shutdown_grace_secs = 60;
    let relay = Relay::start(config).await.unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let front = forwarder(relay.local_addr(), cut.clone()).await;
    let client = Client::connect(front, relay.pin()).await.unwrap();

    // Through the forwarder, a request is answered.
    let r = client.call(Kind::Ping(wire::Ping {})).await.unwrap();
    assert!(
        matches!(r.kind, Some(wire::response::Kind::Pong(_))),
        "{r:?}"
    );
    assert_eq!(pings(&relay), 1);

    // From now on the relay's answers are lost: the next one is written but never
    // acknowledged.
    cut.store(true, Ordering::SeqCst);
    let lost = tokio::spawn(async move { client.call(Kind::Ping(wire::Ping {})).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while pings(&relay) < 2 {
        assert!(
            Instant::now() < deadline,
            "the relay never saw the second request"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    relay.shutdown().await;
    let took = started.elapsed();
    // It waited for the unacknowledged answer (2 s), but not for the 60 s grace period,
    // which bounds only answers not yet written. (Waiting the grace period, the test saw
    // shutdown take about 20 s: QUIC gave the connection up first.)
    assert!(
        took >= Duration::from_millis(1_500),
        "shutdown took {took:?}: it did not wait for the answer's delivery"
    );
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?}: an answer that can never be acknowledged held it"
    );
    lost.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recipient_is_woken_without_waiting_for_the_senders_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("relay"));
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin = None;
    let relay = Relay::start(config).await.unwrap();
    let recipient = Client::connect(relay.local_addr(), relay.pin())
        .await
        .unwrap();
    let mailbox = recipient.create_mailbox().await.unwrap();
    let auth = recipient.authenticate(&mailbox).await.unwrap();
    assert!(matches!(auth.kind, Some(wire::response::Kind::Ok(_))));
    let mut subscription = recipient
        .subscribe(vec![mailbox.recv_id.clone()])
        .await
        .unwrap();

    // The sender's connection loses everything the relay sends from now on: its answer to the
    // send is written but never acknowledged.
    let cut = Arc::new(AtomicBool::new(false));
    let front = forwarder(relay.local_addr(), cut.clone()).await;
    let sender = Client::connect(front, relay.pin()).await.unwrap();
    cut.store(true, Ordering::SeqCst);
    let (send_id, capability) = (mailbox.send_id.clone(), mailbox.capability);
    let send = tokio::spawn(async move {
        sender
            .send(
                &send_id,
                &capability,
                [7; 16],
                unix_now() + 3600,
                vec![7; 100],
            )
            .await
    });

    // The envelope is durable, so the recipient hears of it, whatever the sender's connection
    // does. (Woken only after the sender's answer was delivered, it heard nothing until the
    // sender's connection timed out.)
    let event = subscription
        .next(Duration::from_secs(20))
        .await
        .expect("no wake-up while the sender's answer is undelivered")
        .expect("subscription ended");
    let Some(wire::event::Kind::NewEnvelopes(new)) = event.kind else {
        panic!("{event:?}")
    };
    assert_eq!(new.recv_id, mailbox.recv_id);
    let fetched = recipient.fetch_all(&mailbox.recv_id).await.unwrap();
    assert_eq!(fetched.len(), 1);
    send.abort();
    relay.shutdown().await;
}
