//! The relay's TLS identity: a self-signed certificate generated on first start and kept in the
//! data directory, or PEM files named in the configuration; and the SPKI pin clients check.

use std::io::Write;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::RelayError;

/// File name of the generated certificate in the data directory.
pub const CERT_FILE: &str = "relay-cert.pem";
/// File name of the generated private key in the data directory.
pub const KEY_FILE: &str = "relay-key.pem";

/// A loaded TLS identity.
pub struct Identity {
    /// Certificate chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf's SubjectPublicKeyInfo.
    pub pin: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { certs, key: _, pin } = self;
        f.debug_struct("Identity")
            .field("certs", &certs.len())
            .field("pin", &hex::encode(pin))
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo (the pin clients check).
pub fn spki_pin(cert: &CertificateDer<'_>) -> Result<[u8; 32], RelayError> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| RelayError::Tls(format!("certificate does not parse: {e}")))?;
    Ok(Sha256::digest(parsed.subject_public_key_info().as_ref()).into())
}

fn write_durably(path: &Path, contents: &[u8], private: bool) -> Result<(), RelayError> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options
        .open(&tmp)
        .map_err(RelayError::io("write identity"))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(RelayError::io("write identity"))?;
    std::fs::rename(&tmp, path).map_err(RelayError::io("write identity"))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(RelayError::io("sync data directory"))?;
    }
    Ok(())
}

/// Loads the identity from `cert`/`key` PEM files if given, else from the data directory,
/// generating a self-signed one there on first start.
pub fn load_or_generate(
    data_dir: &Path,
    pem: Option<(&Path, &Path)>,
) -> Result<Identity, RelayError> {
    let (cert_path, key_path): (PathBuf, PathBuf) = match pem {
        Some((c, k)) => (c.to_path_buf(), k.to_path_buf()),
        None => {
            let c = data_dir.join(CERT_FILE);
            let k = data_dir.join(KEY_FILE);
            if !c.exists() || !k.exists() {
                std::fs::create_dir_all(data_dir).map_err(RelayError::io("create data dir"))?;
                let key = rcgen::KeyPair::generate()
                    .map_err(|e| RelayError::Tls(format!("key generation failed: {e}")))?;
                let params = rcgen::CertificateParams::new(vec!["handover-relay".to_owned()])
                    .map_err(|e| RelayError::Tls(e.to_string()))?;
                let cert = params
                    .self_signed(&key)
                    .map_err(|e| RelayError::Tls(e.to_string()))?;
                write_durably(&k, key.serialize_pem().as_bytes(), true)?;
                write_durably(&c, cert.pem().as_bytes(), false)?;
                tracing::info!("generated a new self-signed relay certificate");
            }
            (c, k)
        }
    };
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| RelayError::Tls(format!("cannot read certificate PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| RelayError::Tls(format!("cannot read private key PEM: {e}")))?;
    let leaf = certs
        .first()
        .ok_or_else(|| RelayError::Tls("certificate PEM holds no certificate".into()))?;
    let pin = spki_pin(leaf)?;
    Ok(Identity { certs, key, pin })
}
