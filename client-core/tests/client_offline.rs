//! The async `Client` without a relay: opening profiles on sled, wrong credentials, duress and
//! panic wipe passed through to the store. (End-to-end tests
//! against a real relay process live in the `tests` crate.)
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use handover_core::client::{Client, ClientError};
use handover_core::engine::{Engine, IdentitySetup, MailboxKeys, RelayInfo};
use handover_core::identity::DeviceKeys;
use handover_core::store::{Credential, KdfParams, Passphrase, SledStore, StoreError};
use handover_core::testing::TestRng;

const T0: u64 = 1_800_000_000;

fn cred(p: &str) -> Credential {
    Credential::from(Passphrase::from(p))
}

/// A profile created with the engine directly (as `Client::create` does after the relay
/// created the mailbox), with one chat message queued in the outbox for a contact.
fn make_profile(dir: &Path, duress: Option<&str>) {
    let mut rng = TestRng::seeded(1);
    let mut store = SledStore::create(
        dir,
        &cred("real passphrase"),
        KdfParams::new(8, 1, 1).unwrap(),
        TestRng::seeded(2),
    )
    .unwrap();
    if let Some(d) = duress {
        store.set_duress_passphrase(&Passphrase::from(d)).unwrap();
    }
    let mut engine = Engine::open(store).unwrap();
    engine
        .create_profile(
            DeviceKeys::generate(&mut rng),
            MailboxKeys::generate(&mut rng),
            [1; 16],
            [2; 16],
            RelayInfo {
                host_port: "127.0.0.1:9".into(),
                pin: [3; 32],
            },
            IdentitySetup::NewOrganisation {
                device_label: "laptop".into(),
            },
            "Intake",
            T0,
            &mut rng,
        )
        .unwrap();
    engine.create_invitation(T0 + 60, T0, &mut rng).unwrap();
    engine.into_store().close().unwrap();
}

#[tokio::test]
async fn opens_an_existing_profile_and_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    make_profile(dir.path(), None);
    let client = Client::open(dir.path(), &cred("real passphrase"))
        .await
        .unwrap();
    assert!(client.has_profile().await);
    assert!(client.contacts().await.unwrap().is_empty());
    assert!(client.messages(0).await.unwrap().is_empty());
    let caps = client
        .with_engine(|e, _, _| e.capability_hashes(T0).unwrap().len())
        .await
        .unwrap();
    assert_eq!(caps, 1);
    client.shutdown().await.unwrap();
    assert!(matches!(client.messages(0).await, Err(ClientError::Closed)));
    // Reopens after a clean shutdown.
    let client = Client::open(dir.path(), &cred("real passphrase"))
        .await
        .unwrap();
    assert!(client.has_profile().await);
    client.shutdown().await.unwrap();
}

#[tokio::test]
async fn wrong_passphrase_is_refused_without_detail() {
    let dir = tempfile::tempdir().unwrap();
    make_profile(dir.path(), None);
    let err = Client::open(dir.path(), &cred("wrong")).await.unwrap_err();
    assert!(matches!(
        err,
        ClientError::Store(StoreError::WrongCredential)
    ));
    assert_eq!(
        err.to_string(),
        "local store: could not unlock the store: wrong passphrase or key"
    );
}

#[tokio::test]
async fn duress_passphrase_opens_an_empty_profile_and_wipes_the_real_one() {
    let dir = tempfile::tempdir().unwrap();
    make_profile(dir.path(), Some("duress words"));
    let client = Client::open(dir.path(), &cred("duress words"))
        .await
        .unwrap();
    assert!(!client.has_profile().await);
    client.shutdown().await.unwrap();
    assert!(
        Client::open(dir.path(), &cred("real passphrase"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn panic_wipe_removes_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    make_profile(dir.path(), None);
    let client = Client::open(dir.path(), &cred("real passphrase"))
        .await
        .unwrap();
    client.panic_wipe().await.unwrap();
    assert!(matches!(
        Client::open(dir.path(), &cred("real passphrase")).await,
        Err(ClientError::Store(StoreError::NotFound))
    ));
}

/// A peer's reference announcing a huge attachment is refused with a typed error before
/// anything is fetched or allocated (it used to size a buffer from it and abort the client).
#[tokio::test]
async fn oversized_attachment_references_are_refused_before_download() {
    use handover_core::attachment::{AttachmentError, MAX_ATTACHMENT_LEN};
    use handover_proto::e2e::v1 as wire;
    let dir = tempfile::tempdir().unwrap();
    make_profile(dir.path(), None);
    let client = Client::open(dir.path(), &cred("real passphrase"))
        .await
        .unwrap();
    for size in [MAX_ATTACHMENT_LEN + 1, 1 << 62, u64::MAX] {
        let attachment = wire::Attachment {
            blob: Some(wire::BlobRef {
                blob_id: vec![1; 16],
                relay: String::new(),
                key: vec![2; 32],
                plaintext_sha256: vec![3; 32],
                size,
            }),
            media_type: "application/pdf".into(),
            file_name: "huge.pdf".into(),
        };
        let err = client
            .download_attachment(&attachment, |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Attachment(AttachmentError::ExceedsLimit { size: s, limit })
                    if s == size && limit == MAX_ATTACHMENT_LEN
            ),
            "{err:?}"
        );
        let target = dir.path().join("huge.pdf");
        let err = client
            .download_attachment_to_file(&attachment, &target, |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Attachment(AttachmentError::ExceedsLimit { .. })
            ),
            "{err:?}"
        );
        assert!(!target.exists());
    }
    client.shutdown().await.unwrap();
}
