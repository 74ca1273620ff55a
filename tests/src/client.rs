//! A raw-protocol QUIC client for tests and the load generator.
//!
//! It speaks exactly the wire contract (one request per bidirectional stream, length-delimited
//! frames) and pins the relay's SubjectPublicKeyInfo, like real clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use handover_proto::limits::{ALPN, FRAME_HEADER_LEN, MAX_FRAME_LEN};
use handover_proto::relay::v1 as wire;
use handover_proto::{decode, frame};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::Result;

pub use wire::ErrorCode;
pub use wire::request::Kind;

/// Exporter label of mailbox authentication (relay.proto).
pub const MAILBOX_AUTH_EXPORTER_LABEL: &[u8] = b"EXPORTER-handover/1 mailbox-auth";
/// Signature prefix of mailbox authentication (relay.proto).
pub const MAILBOX_AUTH_PREFIX: &[u8] = b"handover/1 mailbox-auth";

/// How long one request may take before the helper gives up (tests never hang).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Accepts exactly the server whose SPKI hashes to the pin.
#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::General("bad certificate".into()))?;
        let pin: [u8; 32] = Sha256::digest(cert.subject_public_key_info().as_ref()).into();
        if pin == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("relay pin mismatch".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client endpoint config that pins `pin` and speaks ALPN `handover/1`.
pub fn client_config(pin: [u8; 32]) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinVerifier { pin, provider }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Duration::from_secs(30).try_into().ok());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A mailbox created through the client.
#[derive(Clone, Debug)]
pub struct MailboxKeys {
    /// Owner's auth key.
    pub key: SigningKey,
    /// Receive id.
    pub recv_id: Vec<u8>,
    /// Send id.
    pub send_id: Vec<u8>,
    /// The send capability handed to senders.
    pub capability: [u8; 32],
}

/// One QUIC connection to a relay.
#[derive(Debug, Clone)]
pub struct Client {
    /// The client endpoint (kept alive with the connection).
    pub endpoint: quinn::Endpoint,
    /// The connection.
    pub conn: quinn::Connection,
}

/// A client endpoint on loopback with the relay's default UDP buffer (so that a load test's
/// clients drop no more datagrams than the relay does).
pub fn client_endpoint() -> Result<quinn::Endpoint> {
    let (socket, _) = handover_relay::server::bind_udp(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        handover_relay::config::DEFAULT_UDP_BUFFER,
    )?;
    let runtime = quinn::default_runtime().ok_or("no async runtime for QUIC")?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        runtime,
    )?)
}

/// Builds a request.
pub fn request(kind: Kind) -> wire::Request {
    wire::Request {
        protocol_version: handover_proto::PROTOCOL_VERSION,
        kind: Some(kind),
    }
}

/// The error code of a response, if it is an error.
pub fn error_code(response: &wire::Response) -> Option<ErrorCode> {
    match &response.kind {
        Some(wire::response::Kind::Error(e)) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

/// Reads one frame (at most `max` bytes) from a stream; `None` at a clean end.
pub async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Option<Vec<u8>>> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = frame::header_len(header);
    if len > max {
        return Err("frame too large".into());
    }
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await?;
    Ok(Some(payload))
}

impl Client {
    /// Connects to `addr` (loopback) pinning `pin`.
    pub async fn connect(addr: SocketAddr, pin: [u8; 32]) -> Result<Self> {
        let mut endpoint = client_endpoint()?;
        endpoint.set_default_client_config(client_config(pin)?);
        let conn = tokio::time::timeout(REQUEST_TIMEOUT, endpoint.connect(addr, "handover-relay")?)
            .await??;
        Ok(Self { endpoint, conn })
    }

    /// Sends raw bytes on a new stream, finishes it, and reads one response frame.
    pub async fn raw(&self, bytes: &[u8]) -> Result<wire::Response> {
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let (mut send, mut recv) = self.conn.open_bi().await?;
            send.write_all(bytes).await?;
            let _ = send.finish();
            let payload = read_frame(&mut recv, MAX_FRAME_LEN)
                .await?
                .ok_or("stream ended without a response")?;
            // The relay ends the stream after its answer; reading the end spares a STOP_SENDING.
            handover_relay::server::recv_ended_now(&mut recv);
            Ok(decode::response(&payload)?)
        })
        .await?
    }

    /// Sends one request and reads its response.
    pub async fn call(&self, kind: Kind) -> Result<wire::Response> {
        self.raw(&frame::encode(&request(kind))?).await
    }

    /// The TLS exporter value of this connection.
    pub fn exporter(&self, label: &[u8], context: &[u8]) -> Result<[u8; 32]> {
        let mut out = [0u8; 32];
        self.conn
            .export_keying_material(&mut out, label, context)
            .map_err(|_| "exporter failed")?;
        Ok(out)
    }

    /// Creates a mailbox with one fresh capability (not yet authenticated).
    pub async fn create_mailbox(&self) -> Result<MailboxKeys> {
        let mut rng = rand::rng();
        let key = SigningKey::generate(&mut rng);
        let mut capability = [0u8; 32];
        rand::Rng::fill_bytes(&mut rng, &mut capability);
        let response = self
            .call(Kind::CreateMailbox(wire::CreateMailbox {
                auth_key: key.verifying_key().to_bytes().to_vec(),
                capability_hashes: vec![Sha256::digest(capability).to_vec()],
                creation_token: Vec::new(),
            }))
            .await?;
        match response.kind {
            Some(wire::response::Kind::MailboxCreated(c)) => Ok(MailboxKeys {
                key,
                recv_id: c.recv_id,
                send_id: c.send_id,
                capability,
            }),
            other => Err(format!("unexpected {other:?}").into()),
        }
    }

    /// The mailbox-auth signature for this connection.
    pub fn auth_signature(&self, mailbox: &MailboxKeys) -> Result<Vec<u8>> {
        let exporter = self.exporter(MAILBOX_AUTH_EXPORTER_LABEL, &mailbox.recv_id)?;
        let mut msg = MAILBOX_AUTH_PREFIX.to_vec();
        msg.extend_from_slice(&mailbox.recv_id);
        msg.extend_from_slice(&exporter);
        Ok(mailbox.key.sign(&msg).to_bytes().to_vec())
    }

    /// Authenticates a mailbox on this connection.
    pub async fn authenticate(&self, mailbox: &MailboxKeys) -> Result<wire::Response> {
        let signature = self.auth_signature(mailbox)?;
        self.call(Kind::Authenticate(wire::Authenticate {
            recv_id: mailbox.recv_id.clone(),
            signature,
        }))
        .await
    }

    /// Sends an envelope.
    pub async fn send(
        &self,
        send_id: &[u8],
        capability: &[u8],
        envelope_id: [u8; 16],
        expires_at: u64,
        ciphertext: Vec<u8>,
    ) -> Result<wire::Response> {
        self.call(Kind::Send(wire::Send {
            send_id: send_id.to_vec(),
            capability: capability.to_vec(),
            envelope: Some(wire::Envelope {
                envelope_id: envelope_id.to_vec(),
                expires_at,
                ciphertext,
            }),
        }))
        .await
    }

    /// Fetches every queued envelope (all pages).
    pub async fn fetch_all(&self, recv_id: &[u8]) -> Result<Vec<wire::QueuedEnvelope>> {
        let mut out: Vec<wire::QueuedEnvelope> = Vec::new();
        loop {
            let after_seq = out.last().map_or(0, |q| q.seq);
            let response = self
                .call(Kind::Fetch(wire::Fetch {
                    recv_id: recv_id.to_vec(),
                    after_seq,
                    limit: 0,
                }))
                .await?;
            let Some(wire::response::Kind::FetchResult(page)) = response.kind else {
                return Err(format!("unexpected {response:?}").into());
            };
            out.extend(page.envelopes);
            if !page.more {
                return Ok(out);
            }
        }
    }

    /// Acknowledges envelopes.
    pub async fn ack(&self, recv_id: &[u8], ids: Vec<Vec<u8>>) -> Result<wire::Response> {
        self.call(Kind::Ack(wire::Ack {
            recv_id: recv_id.to_vec(),
            envelope_ids: ids,
        }))
        .await
    }

    /// Opens a subscription stream; returns it after the `Subscribed` answer (or the error).
    pub async fn subscribe(&self, recv_ids: Vec<Vec<u8>>) -> Result<Subscription> {
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let (mut send, mut recv) = self.conn.open_bi().await?;
            let bytes = frame::encode(&request(Kind::Subscribe(wire::Subscribe { recv_ids })))?;
            send.write_all(&bytes).await?;
            let _ = send.finish();
            let payload = read_frame(&mut recv, MAX_FRAME_LEN)
                .await?
                .ok_or("stream ended without a response")?;
            let response = decode::response(&payload)?;
            Ok(Subscription {
                response,
                recv,
                _send: send,
            })
        })
        .await?
    }
}

/// An open subscription stream.
#[derive(Debug)]
pub struct Subscription {
    /// The relay's answer (`Subscribed` or an error).
    pub response: wire::Response,
    recv: quinn::RecvStream,
    _send: quinn::SendStream,
}

impl Subscription {
    /// The next event, `None` when the relay ended the stream.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<wire::Event>> {
        match tokio::time::timeout(timeout, read_frame(&mut self.recv, MAX_FRAME_LEN)).await? {
            Ok(Some(payload)) => Ok(Some(decode::event(&payload)?)),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Current Unix time.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A bare quinn server configuration with the relay's TLS setup (its certificate from `dir`,
/// generated on first use; TLS 1.3 with ring; the Handover ALPN) and quinn's default
/// transport, for peers measured next to the relay. Returns it with the certificate pin.
pub fn bare_server_config(dir: &std::path::Path) -> Result<(quinn::ServerConfig, [u8; 32])> {
    let identity = handover_relay::tls::load_or_generate(dir, None)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.certs, identity.key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    Ok((
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        identity.pin,
    ))
}
