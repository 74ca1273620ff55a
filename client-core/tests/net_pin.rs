//! The QUIC driver authenticates relays by SPKI pin: over real QUIC on loopback, the right pin
//! connects and a request round-trips; a wrong pin is refused during the handshake.

#![cfg(feature = "net")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod net_support;

use std::net::SocketAddr;

use handover_core::net::{NetError, RelayAddress, RelayClient, tls::spki_pin};
use handover_proto::relay::v1 as relay;
use handover_proto::{decode, frame};
use sha2::{Digest, Sha256};

/// A minimal QUIC responder that answers every request with `Pong { now: 42 }`.
fn pong_server() -> (SocketAddr, [u8; 32], quinn::Endpoint) {
    let (endpoint, addr, pin) = net_support::loopback_server();

    let server = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let bytes = recv.read_to_end(1 << 16).await.unwrap();
                    let (payload, _) = frame::split(&bytes, 1 << 16).unwrap();
                    decode::request(payload).unwrap();
                    let pong = relay::Response {
                        kind: Some(relay::response::Kind::Pong(relay::Pong { now: 42 })),
                    };
                    send.write_all(&frame::encode(&pong).unwrap())
                        .await
                        .unwrap();
                    send.finish().unwrap();
                }
            });
        }
    });
    (addr, pin, endpoint)
}

#[test]
fn pin_is_sha256_of_the_certificate_spki() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["x".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let expected: [u8; 32] =
        Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)).into();
    assert_eq!(spki_pin(cert.der()).unwrap(), expected);
    assert!(spki_pin(b"not a certificate").is_err());
}

#[tokio::test]
async fn right_pin_connects_and_wrong_pin_is_refused() {
    let (addr, pin, _server) = pong_server();
    let good = RelayAddress {
        host_port: addr.to_string(),
        pin,
    };
    let client = RelayClient::connect(&good).await.unwrap();
    assert_eq!(client.ping().await.unwrap(), 42);
    client.close().await;

    let mut wrong = pin;
    wrong[0] ^= 1;
    let bad = RelayAddress {
        host_port: addr.to_string(),
        pin: wrong,
    };
    match RelayClient::connect(&bad).await {
        Err(NetError::WrongPin) => {}
        other => panic!("a wrong pin must be refused as such, got {other:?}"),
    }
}

#[tokio::test]
async fn an_address_that_does_not_answer_is_skipped() {
    let (addr, pin, _server) = pong_server();
    // A relay node that is down: its address swallows every packet.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap();

    let client = RelayClient::connect_any(&[dead, addr], pin).await.unwrap();
    // Only the live node answers requests.
    assert_eq!(client.ping().await.unwrap(), 42);
    client.close().await;

    // Order does not matter either.
    let client = RelayClient::connect_any(&[addr, dead], pin).await.unwrap();
    assert_eq!(client.ping().await.unwrap(), 42);
    client.close().await;

    match RelayClient::connect_any(&[], pin).await {
        Err(NetError::Resolve) => {}
        other => panic!("no address must be a resolution error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_host_name_is_tried_at_every_address_it_resolves_to() {
    let (addr, pin, _server) = pong_server();
    // "localhost" resolves to the loopback addresses the machine has (127.0.0.1, and ::1 where
    // IPv6 is up); the server listens on 127.0.0.1 only, so whichever comes first, the client
    // reaches it.
    let address = RelayAddress {
        host_port: format!("localhost:{}", addr.port()),
        pin,
    };
    let client = RelayClient::connect(&address).await.unwrap();
    assert_eq!(client.ping().await.unwrap(), 42);
    client.close().await;
}
