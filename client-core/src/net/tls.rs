//! TLS for relay connections: the relay's certificate is authenticated by its SPKI pin.
//!
//! Relays use self-signed certificates; clients learn a relay's pin (SHA-256 of the DER
//! `SubjectPublicKeyInfo` of its certificate) from an invitation, a directory entry or the
//! operator, and accept a connection only if the end-entity certificate's SPKI hashes to it.
//! The TLS 1.3 handshake signature is still verified with the certified key, so a peer that
//! merely replays the certificate cannot complete the handshake. No CA is consulted and no
//! host name is checked: the pin is the identity.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use handover_proto::ALPN;

/// SHA-256 of a certificate's DER `SubjectPublicKeyInfo`: how clients pin a relay.
pub fn spki_pin(certificate_der: &[u8]) -> Result<[u8; 32], rustls::Error> {
    let der = CertificateDer::from(certificate_der);
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    Ok(Sha256::digest(cert.subject_public_key_info().as_ref()).into())
}

/// Accepts exactly the server whose certificate has the pinned SPKI.
#[derive(Debug)]
struct PinnedServer {
    pin: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
    /// Set when a server presented a key other than the pinned one.
    mismatch: Arc<AtomicBool>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = spki_pin(end_entity)?;
        if bool::from(seen.ct_eq(&self.pin)) {
            Ok(ServerCertVerified::assertion())
        } else {
            self.mismatch.store(true, Ordering::Relaxed);
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC requires TLS 1.3; a TLS 1.2 handshake is never valid here.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A QUIC client configuration that trusts only the relay with `pin` and speaks `handover/1`,
/// and a flag set when a handshake with it met a server whose key does not have that pin.
pub(crate) fn client_config(
    pin: [u8; 32],
) -> Result<(quinn::ClientConfig, Arc<AtomicBool>), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mismatch = Arc::new(AtomicBool::new(false));
    let verifier = PinnedServer {
        pin,
        algorithms: provider.signature_verification_algorithms,
        mismatch: mismatch.clone(),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|_| rustls::Error::General("no TLS 1.3 cipher suite for QUIC".into()))?;
    Ok((quinn::ClientConfig::new(Arc::new(quic)), mismatch))
}
