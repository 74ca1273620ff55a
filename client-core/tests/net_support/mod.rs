//! A QUIC endpoint on loopback with a fresh self-signed certificate, TLS 1.3 and the Handover
//! ALPN, for tests of the client's QUIC driver against a hand-written responder.

use std::net::SocketAddr;
use std::sync::Arc;

use handover_proto::ALPN;
use sha2::{Digest, Sha256};

/// The server endpoint, its address and its certificate's SPKI pin.
pub(crate) fn loopback_server() -> (quinn::Endpoint, SocketAddr, [u8; 32]) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["handover-relay".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let pin: [u8; 32] = Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)).into();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    (endpoint, addr, pin)
}
