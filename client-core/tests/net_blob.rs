//! Blob downloads are held to the size the reference announced: over real QUIC on loopback, a
//! relay that announces another size, or sends more bytes than it announced, is refused with
//! `NetError::BlobSize` before the client writes more than the expected bytes.

#![cfg(feature = "net")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod net_support;

use handover_core::net::{NetError, RelayAddress, RelayClient};
use handover_proto::relay::v1 as relay;
use handover_proto::{decode, frame};

const CHUNK: usize = 1000;

/// A QUIC responder that answers every `BlobGet` with a header announcing `announced` bytes,
/// then sends `chunks` chunks of [`CHUNK`] bytes (the last one flagged).
fn blob_server(announced: u64, chunks: usize) -> (RelayAddress, quinn::Endpoint) {
    let (endpoint, addr, pin) = net_support::loopback_server();

    let server = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let bytes = recv.read_to_end(1 << 16).await.unwrap();
                    let (payload, _) = frame::split(&bytes, 1 << 16).unwrap();
                    let request = decode::request(payload).unwrap();
                    assert!(matches!(
                        request.kind,
                        Some(relay::request::Kind::BlobGet(_))
                    ));
                    let header = relay::Response {
                        kind: Some(relay::response::Kind::BlobHeader(relay::BlobHeader {
                            size: announced,
                            expires_at: 1_900_000_000,
                        })),
                    };
                    // The client may close the stream early: ignore write errors from here.
                    let _ = send.write_all(&frame::encode(&header).unwrap()).await;
                    for i in 0..chunks {
                        let chunk = relay::BlobChunk {
                            data: vec![7; CHUNK],
                            last: i + 1 == chunks,
                        };
                        if send
                            .write_all(&frame::encode(&chunk).unwrap())
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    let _ = send.finish();
                }
            });
        }
    });
    (
        RelayAddress {
            host_port: addr.to_string(),
            pin,
        },
        endpoint,
    )
}

async fn download(announced: u64, chunks: usize, expected: u64) -> (Result<u64, NetError>, usize) {
    let (address, _server) = blob_server(announced, chunks);
    let client = RelayClient::connect(&address).await.unwrap();
    let mut sink = Vec::new();
    let result = client
        .blob_get(&[1; 16], 0, expected, &mut sink, |_| {})
        .await
        .map(|h| h.size);
    client.close().await;
    (result, sink.len())
}

#[tokio::test]
async fn the_announced_size_must_match_the_reference() {
    // The right size downloads.
    let (result, written) = download(3 * CHUNK as u64, 3, 3 * CHUNK as u64).await;
    assert_eq!(result.unwrap(), 3 * CHUNK as u64);
    assert_eq!(written, 3 * CHUNK);
    // A relay announcing a huge blob for a small reference: refused before any chunk is read.
    let (result, written) = download(1 << 40, 3, 3 * CHUNK as u64).await;
    assert!(matches!(result, Err(NetError::BlobSize)), "{result:?}");
    assert_eq!(written, 0);
}

#[tokio::test]
async fn bytes_beyond_the_announced_size_stop_the_download() {
    // The header matches, but the relay keeps sending: at most the expected bytes are written.
    let (result, written) = download(2 * CHUNK as u64 + 10, 5, 2 * CHUNK as u64 + 10).await;
    assert!(matches!(result, Err(NetError::BlobSize)), "{result:?}");
    assert!(written <= 2 * CHUNK + 10, "{written}");
}
