//! Attachments as files: streaming upload and download that never hold a whole file in memory
//! (the in-memory variants are [`Client::upload_attachment`] and
//! [`Client::download_attachment`]).
//!
//! Upload encrypts the plaintext file in STREAM segments (docs/PROTOCOL.md §9) into an
//! anonymous temporary file in the profile directory (ciphertext only; the OS removes it when
//! it is closed, also after a crash), then streams that to the relay. Download streams the
//! ciphertext into such a temporary file, then decrypts it segment by segment into
//! `<destination>.partial`, which is renamed to the destination only once every segment, the
//! final segment flag, the size and the plaintext hash have verified; on any failure the
//! partial file is removed, so unauthenticated plaintext never appears under the final name.
//! Encryption and decryption run on tokio's blocking pool, not under the engine lock.

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use handover_proto::e2e::v1 as wire;
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::{BLOB_TTL, Client, ClientError, id16, now};
use crate::attachment::{self, EncryptedFile, FileKey};
use crate::engine::EngineError;

/// A blocking task that panicked or was cancelled: reported as an I/O failure.
fn joined<T>(
    result: Result<Result<T, ClientError>, tokio::task::JoinError>,
) -> Result<T, ClientError> {
    result.map_err(|_| {
        ClientError::Attachment(attachment::AttachmentError::Io(std::io::Error::other(
            "the file task stopped",
        )))
    })?
}

/// Removes the file on drop unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Client {
    /// Encrypts the file at `path` and uploads it to this device's relay, streaming (see the
    /// module docs). `progress` gets the number of ciphertext bytes uploaded so far.
    pub async fn upload_attachment_file(
        &self,
        path: &Path,
        media_type: &str,
        file_name: &str,
        progress: impl FnMut(u64) + Send,
    ) -> Result<wire::Attachment, ClientError> {
        let key = self.with_engine(|_, rng, _| FileKey::generate(rng)).await?;
        let path = path.to_owned();
        let dir = self.inner.dir.clone();
        let (file, staged) = joined(
            tokio::task::spawn_blocking(move || -> Result<_, ClientError> {
                let mut plaintext =
                    BufReader::new(File::open(&path).map_err(attachment::AttachmentError::Io)?);
                let mut staged =
                    tempfile::tempfile_in(&dir).map_err(attachment::AttachmentError::Io)?;
                let mut out = BufWriter::new(&mut staged);
                let file = attachment::encrypt_with_key(key, &mut plaintext, &mut out, |_| {})?;
                out.flush().map_err(attachment::AttachmentError::Io)?;
                drop(out);
                staged
                    .seek(SeekFrom::Start(0))
                    .map_err(attachment::AttachmentError::Io)?;
                Ok((file, staged))
            })
            .await,
        )?;
        self.put_encrypted(
            file,
            tokio::fs::File::from_std(staged),
            media_type,
            file_name,
            progress,
        )
        .await
    }

    /// Uploads the ciphertext of `file` from `source` to this device's relay and returns the
    /// attachment that references it.
    pub(super) async fn put_encrypted(
        &self,
        file: EncryptedFile,
        source: impl AsyncRead + Unpin,
        media_type: &str,
        file_name: &str,
        progress: impl FnMut(u64) + Send,
    ) -> Result<wire::Attachment, ClientError> {
        // Peers refuse to download more (attachment::download_len).
        if file.size > attachment::MAX_ATTACHMENT_LEN {
            return Err(attachment::AttachmentError::ExceedsLimit {
                size: file.size,
                limit: attachment::MAX_ATTACHMENT_LEN,
            }
            .into());
        }
        let own = self.engine_op(|e, _, _| Ok(e.relay()?.clone())).await?;
        let blob_id = self
            .own_relay()
            .await?
            .blob_put(
                source,
                attachment::ciphertext_len(file.size),
                now().saturating_add(BLOB_TTL),
                progress,
            )
            .await?;
        Ok(wire::Attachment {
            blob: Some(file.blob_ref(blob_id, own.host_port)),
            media_type: media_type.to_owned(),
            file_name: file_name.to_owned(),
        })
    }

    /// Downloads an attachment and decrypts it into the file `destination` (created or
    /// replaced), streaming (see the module docs). `progress` gets the number of plaintext
    /// bytes verified and written so far.
    pub async fn download_attachment_to_file(
        &self,
        attachment: &wire::Attachment,
        destination: &Path,
        progress: impl FnMut(u64) + Send + 'static,
    ) -> Result<u64, ClientError> {
        let blob = attachment
            .blob
            .clone()
            .ok_or(EngineError::InvalidInput("missing blob reference"))?;
        let blob_id = id16(&blob.blob_id)?;
        let size = attachment::download_len(&blob, attachment::MAX_ATTACHMENT_LEN)?;
        let relay = self.blob_relay(&blob.relay).await?;
        let staged =
            tempfile::tempfile_in(&self.inner.dir).map_err(attachment::AttachmentError::Io)?;
        let mut sink = tokio::fs::File::from_std(staged);
        self.relay_for(&relay)
            .await?
            .blob_get(&blob_id, 0, size, &mut sink, |_| {})
            .await?;
        sink.flush()
            .await
            .map_err(attachment::AttachmentError::Io)?;
        let mut staged = sink.into_std().await;
        let destination = destination.to_owned();
        joined(
            tokio::task::spawn_blocking(move || -> Result<u64, ClientError> {
                staged
                    .seek(SeekFrom::Start(0))
                    .map_err(attachment::AttachmentError::Io)?;
                let mut partial_name = destination.clone().into_os_string();
                partial_name.push(".partial");
                let partial = PathBuf::from(partial_name);
                let mut guard = RemoveOnDrop(Some(partial.clone()));
                let mut out = BufWriter::new(
                    File::create(&partial).map_err(attachment::AttachmentError::Io)?,
                );
                attachment::decrypt(&blob, &mut BufReader::new(staged), &mut out, progress)?;
                let file = out
                    .into_inner()
                    .map_err(|e| attachment::AttachmentError::Io(e.into_error()))?;
                file.sync_all().map_err(attachment::AttachmentError::Io)?;
                std::fs::rename(&partial, &destination).map_err(attachment::AttachmentError::Io)?;
                guard.0 = None;
                Ok(blob.size)
            })
            .await,
        )
    }
}
