//! The QUIC driver: a connection to one relay (feature `net`).
//!
//! [`RelayClient`] speaks the relay protocol of docs/PROTOCOL.md §4 over quinn: one request per
//! bidirectional stream, length-delimited frames, the relay authenticated by its SPKI pin
//! ([`tls`]). It knows nothing of sessions or content: it moves opaque envelopes, prekeys,
//! profiles and blobs, and proves mailbox ownership with the connection-bound signature. The
//! sans-IO engine decides what to send; this module only carries it.

pub mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use handover_proto::limits::{
    FRAME_HEADER_LEN, ID_LEN, KEY_LEN, MAX_BLOB_CHUNK_LEN, MAX_FRAME_LEN,
};
use handover_proto::relay::v1 as relay;
use handover_proto::relay::v1::request::Kind as Req;
use handover_proto::relay::v1::response::Kind as Resp;
use handover_proto::{DecodeError, PROTOCOL_VERSION, decode, frame};

/// Label of the TLS exporter value that binds a mailbox authentication to one connection.
pub const MAILBOX_AUTH_EXPORTER_LABEL: &[u8] = b"EXPORTER-handover/1 mailbox-auth";
/// Domain-separation prefix of the mailbox authentication signature.
pub const MAILBOX_AUTH_SIGNATURE_LABEL: &[u8] = b"handover/1 mailbox-auth";
/// Label of the TLS exporter value that binds a member authentication to one connection.
pub const MEMBER_AUTH_EXPORTER_LABEL: &[u8] = b"EXPORTER-handover/1 member-auth";
/// Domain-separation prefix of the member authentication signature.
pub const MEMBER_AUTH_SIGNATURE_LABEL: &[u8] = b"handover/1 member-auth";
/// Length of the exporter values above.
pub const EXPORTER_LEN: usize = 32;

/// How long one request may take before the client gives up on it.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long establishing a connection (QUIC + TLS handshake) may take. Shorter than a request:
/// a relay that does not complete a handshake on a working network in this time is treated as
/// unreachable, and what waits is left for the background retry.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// When a relay's host name resolves to several addresses, how long one connection attempt runs
/// alone before the next address is tried alongside it (RFC 8305 §5's recommended default).
pub const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Where a relay is and how to recognise it.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayAddress {
    /// "host:port".
    pub host_port: String,
    /// SHA-256 of the relay certificate's SubjectPublicKeyInfo.
    pub pin: [u8; 32],
}

impl fmt::Debug for RelayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The address is the user's own configuration, not a secret; the pin is public too.
        write!(f, "RelayAddress({}#{})", self.host_port, hex8(&self.pin))
    }
}

fn hex8(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Why a relay operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NetError {
    /// The relay address could not be resolved.
    #[error("could not resolve the relay address; check the host name and port")]
    Resolve,
    /// The QUIC endpoint or TLS configuration could not be set up.
    #[error("could not set up the connection: {0}")]
    Setup(String),
    /// Connecting failed (unreachable relay, wrong pin, protocol mismatch).
    #[error("could not connect to the relay: {0}")]
    Connect(String),
    /// The relay answered, but its certificate's key does not have the pin this device was
    /// given for it: another server, or the relay's key was replaced. Nothing was sent to it.
    /// Retried like [`NetError::Connect`] ([`is_transient`](Self::is_transient)) where a pin
    /// is already stored; check the pin with the relay's operator.
    #[error(
        "the relay's key does not match its pin; check the pin with the relay's operator (nothing was sent)"
    )]
    WrongPin,
    /// The connection broke or a stream failed.
    #[error("the connection to the relay failed: {0}")]
    Connection(String),
    /// The relay did not answer in time.
    #[error("the relay did not answer in time; try again")]
    Timeout,
    /// The relay answered with a typed error.
    #[error("the relay refused the request ({code:?}): {message}")]
    Relay {
        /// The error code.
        code: relay::ErrorCode,
        /// The relay's explanation.
        message: String,
        /// Seconds after which a retry may succeed (0 = unknown).
        retry_after_secs: u32,
    },
    /// The relay sent bytes that are not a valid response.
    #[error("the relay sent an invalid response: {0}")]
    Decode(#[from] DecodeError),
    /// The relay answered with the wrong kind of response.
    #[error("the relay sent an unexpected response")]
    UnexpectedResponse,
    /// The relay announced, or started to send, a blob of another size than the reference
    /// that named it; the download stopped there.
    #[error("the relay announced or sent a blob of the wrong size")]
    BlobSize,
    /// A request was too large to send.
    #[error("the request is too large to send: {0}")]
    TooLarge(#[from] frame::EncodeError),
    /// Reading or writing local data (a blob source or sink) failed.
    #[error("local I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

impl NetError {
    /// The relay's error code, if the relay refused the request.
    pub fn relay_code(&self) -> Option<relay::ErrorCode> {
        match self {
            Self::Relay { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether retrying later may succeed (connection trouble, time-outs, rate limits,
    /// unavailability), as opposed to a request the relay will always refuse.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_)
            | Self::WrongPin
            | Self::Connection(_)
            | Self::Timeout
            | Self::Resolve => true,
            Self::Relay { code, .. } => matches!(
                code,
                relay::ErrorCode::RateLimited | relay::ErrorCode::Unavailable
            ),
            _ => false,
        }
    }
}

fn conn_err(err: impl fmt::Display) -> NetError {
    NetError::Connection(err.to_string())
}

/// The two ids of a new mailbox.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MailboxIds {
    /// Receive id: the owner's handle to fetch and ack.
    pub recv_id: [u8; ID_LEN],
    /// Send id: handed to senders with a capability.
    pub send_id: [u8; ID_LEN],
}

impl fmt::Debug for MailboxIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Mailbox ids are metadata worth protecting; keep them out of debug output.
        f.write_str("MailboxIds(..)")
    }
}

/// A connection to one relay.
///
/// Cloning is cheap and shares the connection; requests on clones run concurrently on separate
/// streams.
#[derive(Clone)]
pub struct RelayClient {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    timeout: Duration,
}

impl fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayClient").finish_non_exhaustive()
    }
}

impl RelayClient {
    /// Connects to the relay at `address`, accepting only a certificate with its pin.
    ///
    /// The host name may resolve to several addresses (several relay nodes serving one store
    /// and one certificate, docs/OPERATIONS.md): [`RelayClient::connect_any`] tries them all, so
    /// a node that is down is skipped.
    pub async fn connect(address: &RelayAddress) -> Result<Self, NetError> {
        let remotes = resolve(&address.host_port).await?;
        Self::connect_any(&remotes, address.pin).await
    }

    /// Connects to the first of `remotes` that completes a handshake with the pinned key.
    ///
    /// Attempts are staggered as in "Happy Eyeballs" (RFC 8305 §5): the addresses are tried in
    /// the given order, a new attempt starts every [`CONNECTION_ATTEMPT_DELAY`] or as soon as
    /// the previous one failed, the first connection established wins and the others are
    /// abandoned. All of it is bounded by [`CONNECT_TIMEOUT`]. When every attempt fails, the
    /// error of the last one to fail is returned ([`NetError::Timeout`] if none finished).
    pub async fn connect_any(remotes: &[SocketAddr], pin: [u8; KEY_LEN]) -> Result<Self, NetError> {
        if remotes.is_empty() {
            return Err(NetError::Resolve);
        }
        let (config, mismatch) =
            tls::client_config(pin).map_err(|e| NetError::Setup(e.to_string()))?;
        // A handshake refused because the relay's key is not the pinned one.
        let failed = |last: Option<NetError>| {
            if mismatch.load(std::sync::atomic::Ordering::Relaxed) {
                NetError::WrongPin
            } else {
                last.unwrap_or(NetError::Timeout)
            }
        };
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let mut pending = remotes.iter().copied();
        let mut attempts = tokio::task::JoinSet::new();
        let mut last_error = None;
        // Each turn starts the next attempt: the first, then one per delay that passed or
        // attempt that failed.
        loop {
            if let Some(remote) = pending.next() {
                attempts.spawn(connect_one(remote, config.clone()));
            }
            if attempts.is_empty() {
                return Err(failed(last_error));
            }
            let more = pending.len() > 0;
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    attempts.abort_all();
                    return Err(failed(last_error));
                }
                () = tokio::time::sleep(CONNECTION_ATTEMPT_DELAY), if more => {}
                Some(finished) = attempts.join_next() => match finished {
                    Ok(Ok(client)) => {
                        attempts.abort_all();
                        return Ok(client);
                    }
                    Ok(Err(err)) => last_error = Some(err),
                    Err(join) => last_error = Some(NetError::Setup(join.to_string())),
                },
            }
        }
    }

    /// Changes the per-request time-out.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Closes the connection politely and waits briefly for the relay to see it.
    pub async fn close(&self) {
        self.connection.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// Whether the connection has closed (the caller should reconnect).
    pub fn is_closed(&self) -> bool {
        self.connection.close_reason().is_some()
    }

    /// Sends one request on a new stream and returns the relay's (successful) answer.
    pub async fn call(&self, kind: Req) -> Result<Resp, NetError> {
        tokio::time::timeout(self.timeout, async {
            let (mut send, mut recv) = self.connection.open_bi().await.map_err(conn_err)?;
            write_request(&mut send, kind).await?;
            send.finish().map_err(conn_err)?;
            let response = read_response(&mut recv).await;
            read_end_now(&mut recv);
            response
        })
        .await
        .map_err(|_| NetError::Timeout)?
    }

    /// Pings the relay; returns its coarse clock (Unix seconds, minute precision).
    pub async fn ping(&self) -> Result<u64, NetError> {
        match self.call(Req::Ping(relay::Ping {})).await? {
            Resp::Pong(p) => Ok(p.now),
            _ => Err(NetError::UnexpectedResponse),
        }
    }

    /// Creates a mailbox owned by `auth_key`, accepting the capabilities with these hashes.
    /// `creation_token` is the relay's mailbox-creation token if it requires one, else empty
    /// (docs/PROTOCOL.md §4.2).
    pub async fn create_mailbox(
        &self,
        auth_key: &SigningKey,
        capability_hashes: Vec<[u8; KEY_LEN]>,
        creation_token: &[u8],
    ) -> Result<MailboxIds, NetError> {
        let request = Req::CreateMailbox(relay::CreateMailbox {
            auth_key: auth_key.verifying_key().to_bytes().to_vec(),
            capability_hashes: capability_hashes.iter().map(|h| h.to_vec()).collect(),
            creation_token: creation_token.to_vec(),
        });
        match self.call(request).await? {
            Resp::MailboxCreated(m) => Ok(MailboxIds {
                recv_id: id_array(&m.recv_id)?,
                send_id: id_array(&m.send_id)?,
            }),
            _ => Err(NetError::UnexpectedResponse),
        }
    }

    /// Proves ownership of mailbox `recv_id` on this connection (docs/PROTOCOL.md §4).
    pub async fn authenticate(
        &self,
        recv_id: &[u8; ID_LEN],
        auth_key: &SigningKey,
    ) -> Result<(), NetError> {
        let exporter = self.exporter(MAILBOX_AUTH_EXPORTER_LABEL, recv_id)?;
        let mut signed = Vec::with_capacity(MAILBOX_AUTH_SIGNATURE_LABEL.len() + 48);
        signed.extend_from_slice(MAILBOX_AUTH_SIGNATURE_LABEL);
        signed.extend_from_slice(recv_id);
        signed.extend_from_slice(&exporter);
        let signature = auth_key.sign(&signed);
        let request = Req::Authenticate(relay::Authenticate {
            recv_id: recv_id.to_vec(),
            signature: signature.to_bytes().to_vec(),
        });
        expect_ok(self.call(request).await?)
    }

    /// Proves network membership with a device certificate (encoded
    /// `SignedDeviceCertificate`) and that device's signing key.
    pub async fn member_auth(
        &self,
        device_certificate: Vec<u8>,
        device_key: &SigningKey,
    ) -> Result<(), NetError> {
        let exporter = self.exporter(MEMBER_AUTH_EXPORTER_LABEL, &[])?;
        let mut signed = Vec::with_capacity(MEMBER_AUTH_SIGNATURE_LABEL.len() + EXPORTER_LEN);
        signed.extend_from_slice(MEMBER_AUTH_SIGNATURE_LABEL);
        signed.extend_from_slice(&exporter);
        let request = Req::MemberAuth(relay::MemberAuth {
            device_certificate,
            signature: device_key.sign(&signed).to_bytes().to_vec(),
        });
        expect_ok(self.call(request).await?)
    }

    /// Replaces the capability set of an authenticated mailbox.
    pub async fn set_capabilities(
        &self,
        recv_id: &[u8; ID_LEN],
        capability_hashes: Vec<[u8; KEY_LEN]>,
    ) -> Result<(), NetError> {
        let request = Req::SetCapabilities(relay::SetCapabilities {
            recv_id: recv_id.to_vec(),
            capability_hashes: capability_hashes.iter().map(|h| h.to_vec()).collect(),
        });
        expect_ok(self.call(request).await?)
    }

    /// Deletes an authenticated mailbox and everything queued in it.
    pub async fn delete_mailbox(&self, recv_id: &[u8; ID_LEN]) -> Result<(), NetError> {
        let request = Req::DeleteMailbox(relay::DeleteMailbox {
            recv_id: recv_id.to_vec(),
        });
        expect_ok(self.call(request).await?)
    }

    /// Queues `envelope` for the mailbox `send_id`; returns once the relay holds it durably.
    pub async fn send(
        &self,
        send_id: &[u8; ID_LEN],
        capability: &[u8; KEY_LEN],
        envelope: relay::Envelope,
    ) -> Result<relay::SendAccepted, NetError> {
        let request = Req::Send(relay::Send {
            send_id: send_id.to_vec(),
            capability: capability.to_vec(),
            envelope: Some(envelope),
        });
        match self.call(request).await? {
            Resp::SendAccepted(a) => Ok(a),
            _ => Err(NetError::UnexpectedResponse),
        }
    }

    /// Reads queued envelopes of an authenticated mailbox after `after_seq`.
    pub async fn fetch(
        &self,
        recv_id: &[u8; ID_LEN],
        after_seq: u64,
        limit: u32,
    ) -> Result<relay::FetchResult, NetError> {
        let request = Req::Fetch(relay::Fetch {
            recv_id: recv_id.to_vec(),
            after_seq,
            limit,
        });
        match self.call(request).await? {
            Resp::FetchResult(r) => Ok(r),
            _ => Err(NetError::UnexpectedResponse),
        }
    }

    /// Deletes delivered envelopes from an authenticated mailbox.
    pub async fn ack(
        &self,
        recv_id: &[u8; ID_LEN],
        envelope_ids: Vec<Vec<u8>>,
    ) -> Result<(), NetError> {
        let request = Req::Ack(relay::Ack {
            recv_id: recv_id.to_vec(),
            envelope_ids,
        });
        expect_ok(self.call(request).await?)
    }

    /// Asks whether envelopes sent to `send_id` are pending or expired undelivered.
    pub async fn envelope_status(
        &self,
        send_id: &[u8; ID_LEN],
        capability: &[u8; KEY_LEN],
        envelope_ids: Vec<Vec<u8>>,
    ) -> Result<Vec<relay::DeliveryState>, NetError> {
        let asked = envelope_ids.len();
        let request = Req::EnvelopeStatus(relay::EnvelopeStatus {
            send_id: send_id.to_vec(),
            capability: capability.to_vec(),
            envelope_ids,
        });
        match self.call(request).await? {
            Resp::EnvelopeStatusResult(r) if r.states.len() == asked => Ok(r
                .states
                .iter()
                .map(|s| relay::DeliveryState::try_from(*s).unwrap_or_default())
                .collect()),
            _ => Err(NetError::UnexpectedResponse),
        }
    }

    /// Publishes the device's prekeys under its authenticated mailbox.
    pub async fn prekey_publish(&self, publish: relay::PrekeyPublish) -> Result<(), NetError> {
        expect_ok(self.call(Req::PrekeyPublish(publish)).await?)
    }

    /// Takes a prekey bundle (with at most one one-time prekey) of the device behind `send_id`.
    pub async fn prekey_take(
        &self,
        send_id: &[u8; ID_LEN],
        capability: &[u8; KEY_LEN],
    ) -> Result<relay::PrekeyBundleResult, NetError> {
        let request = Req::PrekeyTake(relay::PrekeyTake {
            send_id: send_id.to_vec(),
            capability: capability.to_vec(),
        });
        match self.call(request).await? {
            Resp::PrekeyBundle(b) => Ok(b),
            _ => Err(NetError::UnexpectedResponse),
        }
    }

    /// Publishes a signed organisation profile (needs member auth by an admin device).
    pub async fn directory_publish(&self, profile: Vec<u8>) -> Result<(), NetError> {
        expect_ok(
            self.call(Req::DirectoryPublish(relay::DirectoryPublish { profile }))
                .await?,
        )
    }

    /// Searches the directory (needs member auth); returns encoded signed profiles.
    pub async fn directory_query(
        &self,
        query: relay::DirectoryQuery,
    ) -> Result<Vec<Vec<u8>>, NetError> {
        match self.call(Req::DirectoryQuery(query)).await? {
            Resp::DirectoryResult(r) => Ok(r.profiles),
            _ => Err(NetError::UnexpectedResponse),
        }
    }

    /// Uploads `size` bytes (already encrypted) from `source` as a blob expiring at
    /// `expires_at`; `progress` is called with the bytes sent so far. Returns the blob id.
    pub async fn blob_put<R: AsyncRead + Unpin>(
        &self,
        mut source: R,
        size: u64,
        expires_at: u64,
        mut progress: impl FnMut(u64),
    ) -> Result<[u8; ID_LEN], NetError> {
        let (mut send, mut recv) = self.connection.open_bi().await.map_err(conn_err)?;
        write_request(&mut send, Req::BlobPut(relay::BlobPut { size, expires_at })).await?;
        let mut sent = 0u64;
        let mut buf = vec![0u8; MAX_BLOB_CHUNK_LEN];
        loop {
            let want = usize::try_from(size - sent)
                .unwrap_or(usize::MAX)
                .min(MAX_BLOB_CHUNK_LEN);
            let data = if want == 0 {
                Vec::new()
            } else {
                source.read_exact(&mut buf[..want]).await?;
                buf[..want].to_vec()
            };
            sent += want as u64;
            let last = sent == size;
            let chunk = relay::BlobChunk { data, last };
            tokio::time::timeout(self.timeout, send.write_all(&frame::encode(&chunk)?))
                .await
                .map_err(|_| NetError::Timeout)?
                .map_err(conn_err)?;
            progress(sent);
            if last {
                break;
            }
        }
        send.finish().map_err(conn_err)?;
        let response = tokio::time::timeout(self.timeout, read_response(&mut recv))
            .await
            .map_err(|_| NetError::Timeout)??;
        match response {
            Resp::BlobStored(b) => id_array(&b.blob_id),
            _ => Err(NetError::UnexpectedResponse),
        }
    }

    /// Downloads blob `blob_id` from `offset` into `sink`; `progress` is called with the bytes
    /// received so far (counting from `offset`). Returns the blob's header.
    ///
    /// `size` is the blob's total (ciphertext) size the caller expects, from the reference that
    /// named the blob: a header announcing another size is refused before any chunk is read,
    /// and the chunks are counted against it as they arrive ([`NetError::BlobSize`]), so a
    /// relay can make the client write no more than `size - offset` bytes.
    pub async fn blob_get<W: AsyncWrite + Unpin>(
        &self,
        blob_id: &[u8; ID_LEN],
        offset: u64,
        size: u64,
        mut sink: W,
        mut progress: impl FnMut(u64),
    ) -> Result<relay::BlobHeader, NetError> {
        let (mut send, mut recv) = self.connection.open_bi().await.map_err(conn_err)?;
        let request = Req::BlobGet(relay::BlobGet {
            blob_id: blob_id.to_vec(),
            offset,
        });
        write_request(&mut send, request).await?;
        send.finish().map_err(conn_err)?;
        let header = match tokio::time::timeout(self.timeout, read_response(&mut recv))
            .await
            .map_err(|_| NetError::Timeout)??
        {
            Resp::BlobHeader(h) => h,
            _ => return Err(NetError::UnexpectedResponse),
        };
        if header.size != size {
            return Err(NetError::BlobSize);
        }
        let expected = size.saturating_sub(offset);
        let mut received = 0u64;
        loop {
            let payload = tokio::time::timeout(self.timeout, read_frame(&mut recv))
                .await
                .map_err(|_| NetError::Timeout)??
                .ok_or(NetError::Decode(DecodeError::Truncated))?;
            let chunk = decode::blob_chunk(&payload)?;
            received = received.saturating_add(chunk.data.len() as u64);
            if received > expected {
                return Err(NetError::BlobSize);
            }
            sink.write_all(&chunk.data).await?;
            progress(received);
            if chunk.last {
                break;
            }
        }
        if received != expected {
            return Err(NetError::Decode(DecodeError::Truncated));
        }
        sink.flush().await?;
        Ok(header)
    }

    /// Subscribes to events for mailboxes authenticated on this connection.
    pub async fn subscribe(&self, recv_ids: Vec<Vec<u8>>) -> Result<Subscription, NetError> {
        let (mut send, mut recv) = self.connection.open_bi().await.map_err(conn_err)?;
        write_request(&mut send, Req::Subscribe(relay::Subscribe { recv_ids })).await?;
        send.finish().map_err(conn_err)?;
        match tokio::time::timeout(self.timeout, read_response(&mut recv))
            .await
            .map_err(|_| NetError::Timeout)??
        {
            Resp::Subscribed(_) => Ok(Subscription { recv }),
            _ => Err(NetError::UnexpectedResponse),
        }
    }

    fn exporter(&self, label: &[u8], context: &[u8]) -> Result<[u8; EXPORTER_LEN], NetError> {
        let mut out = [0u8; EXPORTER_LEN];
        self.connection
            .export_keying_material(&mut out, label, context)
            .map_err(|_| NetError::Setup("TLS exporter unavailable".into()))?;
        Ok(out)
    }
}

/// A live subscription: events pushed by the relay.
pub struct Subscription {
    recv: quinn::RecvStream,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscription(..)")
    }
}

impl Subscription {
    /// Waits for the next event; `Ok(None)` when the relay ended the subscription.
    pub async fn next(&mut self) -> Result<Option<relay::event::Kind>, NetError> {
        match read_frame(&mut self.recv).await? {
            None => Ok(None),
            Some(payload) => Ok(decode::event(&payload)?.kind),
        }
    }
}

/// Every address `host_port` resolves to, in the resolver's order, without duplicates.
async fn resolve(host_port: &str) -> Result<Vec<SocketAddr>, NetError> {
    let mut remotes: Vec<SocketAddr> = Vec::new();
    for remote in tokio::net::lookup_host(host_port)
        .await
        .map_err(|_| NetError::Resolve)?
    {
        if !remotes.contains(&remote) {
            remotes.push(remote);
        }
    }
    if remotes.is_empty() {
        return Err(NetError::Resolve);
    }
    Ok(remotes)
}

/// One connection attempt to one address, on its own endpoint.
async fn connect_one(
    remote: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<RelayClient, NetError> {
    let bind: SocketAddr = if remote.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| NetError::Setup(e.to_string()))?;
    endpoint.set_default_client_config(config);
    // The pin, not the name, authenticates the relay; a fixed server name keeps host names
    // out of the handshake.
    let connection = endpoint
        .connect(remote, "handover-relay")
        .map_err(|e| NetError::Connect(e.to_string()))?
        .await
        .map_err(|e| NetError::Connect(e.to_string()))?;
    Ok(RelayClient {
        endpoint,
        connection,
        timeout: DEFAULT_REQUEST_TIMEOUT,
    })
}

async fn write_request(send: &mut quinn::SendStream, kind: Req) -> Result<(), NetError> {
    let request = relay::Request {
        protocol_version: PROTOCOL_VERSION,
        kind: Some(kind),
    };
    send.write_all(&frame::encode(&request)?)
        .await
        .map_err(conn_err)
}

/// Reads one frame; `Ok(None)` if the stream ended cleanly before a frame began.
async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, NetError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(NetError::Decode(DecodeError::Truncated));
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(conn_err(e)),
    }
    let len = frame::header_len(header);
    if len > MAX_FRAME_LEN {
        return Err(NetError::Decode(DecodeError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        }));
    }
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => NetError::Decode(DecodeError::Truncated),
        quinn::ReadExactError::ReadError(e) => conn_err(e),
    })?;
    Ok(Some(payload))
}

/// Reads the end of a stream whose answer was read, if it has arrived (the relay ends the stream
/// right after a final answer), without waiting. A stream dropped before its end is read makes
/// quinn send the relay a STOP_SENDING frame: a datagram and an acknowledgement per request.
fn read_end_now(recv: &mut quinn::RecvStream) {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let _ = std::pin::pin!(recv.read(&mut [0u8; 1])).poll(&mut cx);
}

async fn read_response(recv: &mut quinn::RecvStream) -> Result<Resp, NetError> {
    let payload = read_frame(recv)
        .await?
        .ok_or(NetError::Decode(DecodeError::Truncated))?;
    match decode::response(&payload)?.kind {
        Some(Resp::Error(e)) => Err(NetError::Relay {
            code: relay::ErrorCode::try_from(e.code).unwrap_or(relay::ErrorCode::Unspecified),
            message: e.message,
            retry_after_secs: e.retry_after_secs,
        }),
        Some(kind) => Ok(kind),
        None => Err(NetError::UnexpectedResponse),
    }
}

fn expect_ok(response: Resp) -> Result<(), NetError> {
    match response {
        Resp::Ok(_) => Ok(()),
        _ => Err(NetError::UnexpectedResponse),
    }
}

fn id_array(bytes: &[u8]) -> Result<[u8; ID_LEN], NetError> {
    bytes.try_into().map_err(|_| NetError::UnexpectedResponse)
}
