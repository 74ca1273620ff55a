//! Security properties of the encrypted sled store: credentials, duress, panic wipe, data at
//! rest, tampering, interrupted header updates.

// Helpers outside #[test] functions are test code too (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use handover_core::store::{
    Credential, KdfParams, KeystoreKey, KvStore, Namespace, Passphrase, SledStore, StoreError,
    panic_wipe,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

type Store = SledStore<StdRng>;

const REAL: &str = "real passphrase for the caseworker";
const DURESS: &str = "duress passphrase 1234";
const VALUE_MARKER: &[u8] = b"SURVIVOR-ADDRESS-12-Elm-Street-MARKER";
const NAME_MARKER: &[u8] = b"conversation-with-Jane-Doe-MARKER";

fn cheap() -> KdfParams {
    KdfParams::new(8, 1, 1).unwrap()
}

fn pw(s: &str) -> Credential {
    Credential::from(Passphrase::from(s))
}

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn open(path: &Path, cred: &Credential) -> Result<Store, StoreError> {
    SledStore::open(path, cred, rng(99))
}

fn new_store(dir: &tempfile::TempDir) -> (PathBuf, Store) {
    let path = dir.path().join("store");
    let store = SledStore::create(&path, &pw(REAL), cheap(), rng(1)).unwrap();
    (path, store)
}

/// Writes the markers as values and record names in several namespaces.
fn write_markers(store: &mut Store) {
    for ns in [
        Namespace::Messages,
        Namespace::Referrals,
        Namespace::Contacts,
    ] {
        store.put(ns, NAME_MARKER, VALUE_MARKER).unwrap();
        let mut long = VALUE_MARKER.repeat(50);
        long.extend_from_slice(b"tail");
        store.put(ns, b"long", &long).unwrap();
    }
    store.flush().unwrap();
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            all_files(&entry.path(), out);
        } else {
            out.push(entry.path());
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every byte of every file under `dir` is free of every needle.
fn assert_no_plaintext(dir: &Path, needles: &[&[u8]]) {
    let mut files = Vec::new();
    all_files(dir, &mut files);
    assert!(!files.is_empty());
    for f in files {
        let bytes = fs::read(&f).unwrap();
        for n in needles {
            assert!(
                !contains(&bytes, n),
                "{} contains a plaintext marker",
                f.display()
            );
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    all_files(dir, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| (f.clone(), fs::read(f).unwrap()))
        .collect()
}

#[test]
fn files_copied_off_the_device_hold_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    write_markers(&mut store);
    store
        .set_duress_passphrase(&Passphrase::from(DURESS))
        .unwrap();
    assert_no_plaintext(
        &path,
        &[
            VALUE_MARKER,
            NAME_MARKER,
            REAL.as_bytes(),
            DURESS.as_bytes(),
        ],
    );
    store.close().unwrap();
    assert_no_plaintext(
        &path,
        &[
            VALUE_MARKER,
            NAME_MARKER,
            REAL.as_bytes(),
            DURESS.as_bytes(),
        ],
    );
    // Shorter fragments of the markers do not appear either.
    assert_no_plaintext(&path, &[b"Elm-Street", b"Jane-Doe", b"conversation"]);
    // Reopening still finds everything.
    let store = open(&path, &pw(REAL)).unwrap();
    assert_eq!(
        store
            .get(Namespace::Referrals, NAME_MARKER)
            .unwrap()
            .unwrap()
            .as_slice(),
        VALUE_MARKER
    );
}

#[test]
fn wrong_passphrase_is_a_typed_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    write_markers(&mut store);
    store.close().unwrap();
    let before = snapshot(&path);
    for wrong in [
        "",
        "real passphrase for the caseworke",
        "REAL PASSPHRASE FOR THE CASEWORKER",
    ] {
        assert!(matches!(
            open(&path, &pw(wrong)),
            Err(StoreError::WrongCredential)
        ));
    }
    let wrong_key = Credential::from(KeystoreKey::from_bytes([7; 32]));
    assert!(matches!(
        open(&path, &wrong_key),
        Err(StoreError::WrongCredential)
    ));
    assert_eq!(snapshot(&path), before, "a failed open modified the store");
    // The error text carries nothing about the attempt.
    let msg = StoreError::WrongCredential.to_string();
    assert!(!msg.contains("slot") && !msg.contains("duress"));
}

#[test]
fn missing_or_existing_store_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        open(&dir.path().join("none"), &pw(REAL)),
        Err(StoreError::NotFound)
    ));
    let (path, store) = new_store(&dir);
    drop(store);
    assert!(matches!(
        SledStore::create(&path, &pw("other"), cheap(), rng(5)),
        Err(StoreError::AlreadyExists)
    ));
    assert!(open(&path, &pw(REAL)).is_ok());
}

#[test]
fn keystore_key_store_and_second_credential() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ks");
    let key = || Credential::from(KeystoreKey::try_from(&[0x5Au8; 32][..]).unwrap());
    let mut store = SledStore::create(&path, &key(), cheap(), rng(3)).unwrap();
    store.put(Namespace::Identity, b"device", b"keys").unwrap();
    store.close().unwrap();

    let mut store = open(&path, &key()).unwrap();
    assert!(store.contains(Namespace::Identity, b"device").unwrap());
    // A passphrase made of the same bytes does not open a keystore-key slot.
    let same_bytes = Credential::from(Passphrase::new(vec![0x5Au8; 32]));
    assert!(matches!(
        open(&path, &same_bytes),
        Err(StoreError::WrongCredential)
    ));

    // Add a passphrase as second credential: both open the same data.
    store.add_credential(&pw(REAL)).unwrap();
    store.close().unwrap();
    let mut store = open(&path, &pw(REAL)).unwrap();
    assert!(store.contains(Namespace::Identity, b"device").unwrap());
    // Removing the other credential (the keystore key) leaves only the passphrase.
    store.remove_other_credential().unwrap();
    store.close().unwrap();
    assert!(matches!(
        open(&path, &key()),
        Err(StoreError::WrongCredential)
    ));
    assert!(open(&path, &pw(REAL)).is_ok());
}

#[test]
fn passphrase_change_keeps_data_and_retires_the_old_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    write_markers(&mut store);
    store.close().unwrap();
    let mut records_before = Vec::new();
    with_raw_db(&path, |_, r| records_before = r);

    let mut store = open(&path, &pw(REAL)).unwrap();
    store.change_credential(&pw("new passphrase")).unwrap();
    store.close().unwrap();
    assert!(matches!(
        open(&path, &pw(REAL)),
        Err(StoreError::WrongCredential)
    ));
    let store = open(&path, &pw("new passphrase")).unwrap();
    assert_eq!(
        store
            .get(Namespace::Messages, NAME_MARKER)
            .unwrap()
            .unwrap()
            .as_slice(),
        VALUE_MARKER
    );
    drop(store);
    // Only the header changed: no record was re-encrypted.
    let mut records_after = Vec::new();
    with_raw_db(&path, |_, r| records_after = r);
    assert_eq!(records_before, records_after);
    assert!(!path.join("header.new").exists());
}

#[test]
fn duress_passphrase_opens_an_empty_profile_and_destroys_the_real_one() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    write_markers(&mut store);
    // The duress passphrase may not equal the real one.
    assert!(matches!(
        store.set_duress_passphrase(&Passphrase::from(REAL)),
        Err(StoreError::DuressMatchesCredential)
    ));
    store
        .set_duress_passphrase(&Passphrase::from(DURESS))
        .unwrap();
    store.close().unwrap();
    let header_before = fs::read(path.join("header")).unwrap();
    let before_copy = dir.path().join("before");
    copy_dir(&path, &before_copy);

    // Opening with the duress passphrase: an ordinary-looking, empty store.
    let mut decoy = open(&path, &pw(DURESS)).unwrap();
    for ns in Namespace::ALL {
        assert!(decoy.scan_prefix(ns, b"").unwrap().is_empty());
    }
    decoy.put(Namespace::Settings, b"decoy", b"1").unwrap();
    decoy.close().unwrap();

    // The header looks like any header: same length, same public prefix.
    let header_after = fs::read(path.join("header")).unwrap();
    assert_eq!(header_after.len(), header_before.len());
    assert_eq!(header_after[..56], header_before[..56]);

    // The real passphrase no longer opens anything; the duress one keeps opening the decoy.
    assert!(matches!(
        open(&path, &pw(REAL)),
        Err(StoreError::WrongCredential)
    ));
    let decoy = open(&path, &pw(DURESS)).unwrap();
    assert!(decoy.contains(Namespace::Settings, b"decoy").unwrap());
    assert!(!decoy.contains(Namespace::Messages, NAME_MARKER).unwrap());
    drop(decoy);

    // The real data is gone from the directory: no leftover databases, and the real master key
    // cannot be recovered by combining the old database with the new header.
    let mut entries: Vec<String> = fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["db", "header"]);
    let mixed = dir.path().join("mixed");
    copy_dir(&before_copy, &mixed);
    fs::copy(path.join("header"), mixed.join("header")).unwrap();
    assert!(matches!(
        open(&mixed, &pw(REAL)),
        Err(StoreError::WrongCredential)
    ));
}

#[test]
fn change_to_the_duress_passphrase_disarms_duress() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    write_markers(&mut store);
    store
        .set_duress_passphrase(&Passphrase::from(DURESS))
        .unwrap();
    store.change_credential(&pw(DURESS)).unwrap();
    store.close().unwrap();
    // Now the former duress passphrase is the real one and opens the real data.
    let store = open(&path, &pw(DURESS)).unwrap();
    assert!(store.contains(Namespace::Messages, NAME_MARKER).unwrap());
}

#[test]
fn cleared_duress_passphrase_is_just_a_wrong_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    write_markers(&mut store);
    store
        .set_duress_passphrase(&Passphrase::from(DURESS))
        .unwrap();
    store.clear_duress_passphrase().unwrap();
    store.close().unwrap();
    assert!(matches!(
        open(&path, &pw(DURESS)),
        Err(StoreError::WrongCredential)
    ));
    assert!(
        open(&path, &pw(REAL))
            .unwrap()
            .contains(Namespace::Messages, NAME_MARKER)
            .unwrap()
    );
}

#[test]
fn panic_wipe_of_an_open_store_leaves_nothing_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    write_markers(&mut store);
    let copy = dir.path().join("copy-before-wipe");
    copy_dir(&path, &copy);

    store.panic_wipe().unwrap();
    assert_eq!(
        fs::read_dir(&path).unwrap().count(),
        0,
        "store files remain"
    );
    assert!(matches!(open(&path, &pw(REAL)), Err(StoreError::NotFound)));

    // A copy taken before the wipe is still only ciphertext, useless without the passphrase.
    assert_no_plaintext(&copy, &[VALUE_MARKER, NAME_MARKER]);
    assert!(matches!(
        open(&copy, &pw("guess")),
        Err(StoreError::WrongCredential)
    ));
    // The copy's database with the wiped (shredded) header: the key is gone.
    fs::write(copy.join("header"), vec![0u8; 344]).unwrap();
    assert!(matches!(
        open(&copy, &pw(REAL)),
        Err(StoreError::CorruptHeader)
    ));
}

#[test]
fn panic_wipe_works_while_locked_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    write_markers(&mut store);
    store.close().unwrap();
    panic_wipe(&path).unwrap();
    assert_eq!(fs::read_dir(&path).unwrap().count(), 0);
    panic_wipe(&path).unwrap();
    panic_wipe(&dir.path().join("never-existed")).unwrap();
    // A new store can be created in the same place afterwards.
    let store = SledStore::create(&path, &pw("fresh"), cheap(), rng(8)).unwrap();
    assert!(
        store
            .scan_prefix(Namespace::Messages, b"")
            .unwrap()
            .is_empty()
    );
}

/// Rewrites the raw sled records of a closed store through `f` (test-only layout knowledge:
/// the database is `db/`, records in sled's default tree, the binding tag under the empty key).
fn with_raw_db(path: &Path, f: impl FnOnce(&sled::Db, Vec<(Vec<u8>, Vec<u8>)>)) {
    // sled releases its file lock shortly after a close, not at once; wait for it (bounded).
    let mut attempts = 0;
    let db = loop {
        match sled::open(path.join("db")) {
            Ok(db) => break db,
            Err(e) if attempts < 300 => {
                attempts += 1;
                assert!(e.to_string().contains("lock"), "{e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let records: Vec<(Vec<u8>, Vec<u8>)> = db
        .iter()
        .map(|r| r.unwrap())
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    f(&db, records);
    db.flush().unwrap();
}

#[test]
fn record_names_on_disk_are_keyed_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    write_markers(&mut store);
    store.close().unwrap();
    with_raw_db(&path, |_, records| {
        assert_eq!(records.len(), 6);
        for (k, v) in &records {
            assert_eq!(k.len(), 32);
            assert!(!contains(v, NAME_MARKER) && !contains(v, VALUE_MARKER));
        }
    });
}

#[test]
fn a_flipped_byte_in_a_value_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    store
        .put(Namespace::Messages, b"m", b"the message")
        .unwrap();
    store.close().unwrap();
    with_raw_db(&path, |db, records| {
        let (k, mut v) = records.into_iter().next().unwrap();
        let last = v.len() - 1;
        v[last] ^= 0x01; // in the value's tag
        db.insert(k, v).unwrap();
    });
    let store = open(&path, &pw(REAL)).unwrap(); // names still authenticate
    assert!(matches!(
        store.get(Namespace::Messages, b"m"),
        Err(StoreError::CorruptRecord)
    ));
    assert!(matches!(
        store.scan_prefix(Namespace::Messages, b""),
        Err(StoreError::CorruptRecord)
    ));
    drop(store);

    // A flip in the encrypted name is caught when the index is built.
    with_raw_db(&path, |db, records| {
        let (k, mut v) = records.into_iter().next().unwrap();
        v[30] ^= 0x80;
        db.insert(k, v).unwrap();
    });
    assert!(matches!(
        open(&path, &pw(REAL)),
        Err(StoreError::CorruptRecord)
    ));
}

#[test]
fn values_swapped_between_records_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    store.put(Namespace::Referrals, b"r1", b"accept").unwrap();
    store.put(Namespace::Referrals, b"r2", b"decline").unwrap();
    store.close().unwrap();
    with_raw_db(&path, |db, records| {
        let (k1, v1) = records[0].clone();
        let (k2, v2) = records[1].clone();
        db.insert(k1, v2).unwrap();
        db.insert(k2, v1).unwrap();
    });
    assert!(matches!(
        open(&path, &pw(REAL)),
        Err(StoreError::CorruptRecord)
    ));

    // Moving a record under another id (a copy) is detected too.
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    store.put(Namespace::Referrals, b"r1", b"accept").unwrap();
    store.close().unwrap();
    with_raw_db(&path, |db, records| {
        db.insert(vec![0xAB; 32], records[0].1.clone()).unwrap();
    });
    assert!(matches!(
        open(&path, &pw(REAL)),
        Err(StoreError::CorruptRecord)
    ));
}

#[test]
fn a_database_from_another_store_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    write_markers(&mut store);
    store.close().unwrap();
    let other = dir.path().join("other");
    SledStore::create(&other, &pw(REAL), cheap(), rng(77))
        .unwrap()
        .close()
        .unwrap();
    fs::remove_dir_all(path.join("db")).unwrap();
    copy_dir(&other.join("db"), &path.join("db"));
    assert!(matches!(
        open(&path, &pw(REAL)),
        Err(StoreError::CorruptRecord)
    ));
}

#[test]
fn corrupt_headers_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = new_store(&dir);
    store.close().unwrap();
    let good = fs::read(path.join("header")).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "empty"),
        (good[..100].to_vec(), "truncated"),
        ([good.clone(), vec![0; 10]].concat(), "extended"),
        (vec![0xFF; 5000], "huge garbage"),
    ];
    for (bytes, what) in cases {
        fs::write(path.join("header"), &bytes).unwrap();
        assert!(
            matches!(open(&path, &pw(REAL)), Err(StoreError::CorruptHeader)),
            "{what}"
        );
    }
    // A flipped byte in a slot or the salt is indistinguishable from a wrong passphrase.
    for at in [30usize, 60, 100, 127] {
        let mut b = good.clone();
        b[at] ^= 0x01;
        fs::write(path.join("header"), &b).unwrap();
        assert!(
            matches!(open(&path, &pw(REAL)), Err(StoreError::WrongCredential)),
            "byte {at}"
        );
    }
    // The spare slot (bytes 272..344) is unused random filler: flipping it changes nothing.
    let mut b = good.clone();
    b[343] ^= 0x01;
    fs::write(path.join("header"), &b).unwrap();
    assert!(open(&path, &pw(REAL)).is_ok());
    fs::write(path.join("header"), &good).unwrap();
    assert!(open(&path, &pw(REAL)).is_ok());
}

#[test]
fn interrupted_header_updates_recover() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    write_markers(&mut store);
    let old = fs::read(path.join("header")).unwrap();
    store.change_credential(&pw("second")).unwrap();
    store.close().unwrap();
    let new = fs::read(path.join("header")).unwrap();

    // Crash during the in-place overwrite: torn header, complete header.new.
    let mut torn = new[..200].to_vec();
    torn.extend_from_slice(&old[200..]);
    fs::write(path.join("header"), &torn).unwrap();
    fs::write(path.join("header.new"), &new).unwrap();
    let store = open(&path, &pw("second")).unwrap();
    assert!(store.contains(Namespace::Messages, NAME_MARKER).unwrap());
    drop(store);
    assert_eq!(fs::read(path.join("header")).unwrap(), new);
    assert!(!path.join("header.new").exists());

    // Crash before the overwrite: old header intact, header.new complete. The old passphrase
    // still works (the change never happened) and the pending header is discarded.
    fs::write(path.join("header"), &old).unwrap();
    fs::write(path.join("header.new"), &new).unwrap();
    assert!(open(&path, &pw(REAL)).is_ok());
    assert!(!path.join("header.new").exists());
    assert_eq!(fs::read(path.join("header")).unwrap(), old);

    // Crash while writing header.new: a partial pending header is ignored.
    fs::write(path.join("header.new"), &new[..77]).unwrap();
    assert!(matches!(
        open(&path, &pw("second")),
        Err(StoreError::WrongCredential)
    ));
    assert!(open(&path, &pw(REAL)).is_ok());
}

#[test]
fn random_corruption_of_database_files_never_panics_or_lies() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    for i in 0u32..50 {
        store
            .put(Namespace::Messages, &i.to_be_bytes(), &[i as u8; 40])
            .unwrap();
    }
    store.close().unwrap();
    let pristine = dir.path().join("pristine");
    copy_dir(&path, &pristine);
    let mut files = Vec::new();
    all_files(&pristine.join("db"), &mut files);
    let db_file = files
        .iter()
        .find(|f| f.file_name().unwrap() == "db")
        .unwrap()
        .clone();
    let len = fs::metadata(&db_file).unwrap().len() as usize;
    for (n, frac) in [0.05f64, 0.2, 0.4, 0.6, 0.8].iter().enumerate() {
        let work = dir.path().join(format!("work{n}"));
        copy_dir(&pristine, &work);
        let target = work.join("db").join("db");
        let mut bytes = fs::read(&target).unwrap();
        let at = ((len as f64) * frac) as usize;
        for b in bytes.iter_mut().skip(at).take(16) {
            *b ^= 0xA5;
        }
        fs::write(&target, &bytes).unwrap();
        // Any outcome but a panic or a wrong value is acceptable.
        if let Ok(store) = open(&work, &pw(REAL)) {
            for i in 0u32..50 {
                // Ok(None) and Err(_) are fine; a wrong value is not.
                if let Ok(Some(v)) = store.get(Namespace::Messages, &i.to_be_bytes()) {
                    assert_eq!(v.as_slice(), &[i as u8; 40]);
                }
            }
        }
    }
}

#[test]
fn debug_output_holds_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (_path, mut store) = new_store(&dir);
    write_markers(&mut store);
    let s = format!("{store:?} {:?} {:?}", pw(REAL), cheap());
    assert!(!s.contains("MARKER") && !s.contains("caseworker"));
}

#[test]
fn rekey_makes_old_headers_and_deleted_records_undecryptable() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    write_markers(&mut store);
    store
        .put(Namespace::Messages, b"deleted", b"erase me")
        .unwrap();
    store.delete(Namespace::Messages, b"deleted").unwrap();
    store
        .add_credential(&Credential::from(KeystoreKey::from_bytes([9; 32])))
        .unwrap();
    store
        .set_duress_passphrase(&Passphrase::from(DURESS))
        .unwrap();
    store.flush().unwrap();
    let old_header = fs::read(path.join("header")).unwrap();
    let before = dir.path().join("before-rekey");
    copy_dir(&path, &before);

    // Only the credential the store was opened with can re-key.
    let store = match store.rekey(&pw("not it")) {
        Err(StoreError::WrongCredential) => open(&path, &pw(REAL)).unwrap(),
        other => panic!("unexpected: {other:?}"),
    };
    let store = store.rekey(&pw(REAL)).unwrap();
    assert_eq!(
        store
            .get(Namespace::Messages, NAME_MARKER)
            .unwrap()
            .unwrap()
            .as_slice(),
        VALUE_MARKER
    );
    assert!(!store.contains(Namespace::Messages, b"deleted").unwrap());
    store.close().unwrap();

    // Same data under the passphrase; the secondary credential was removed.
    let store = open(&path, &pw(REAL)).unwrap();
    assert_eq!(
        store.scan_prefix(Namespace::Contacts, b"").unwrap().len(),
        2
    );
    drop(store);
    let ks = Credential::from(KeystoreKey::from_bytes([9; 32]));
    assert!(matches!(open(&path, &ks), Err(StoreError::WrongCredential)));

    // An old header copy plus the passphrase does not open the new database.
    let mixed = dir.path().join("old-header-new-db");
    copy_dir(&path, &mixed);
    fs::write(mixed.join("header"), &old_header).unwrap();
    assert!(matches!(
        open(&mixed, &pw(REAL)),
        Err(StoreError::CorruptRecord)
    ));
    // The new header does not open the old database (with the deleted record's residue).
    let mixed = dir.path().join("new-header-old-db");
    copy_dir(&before, &mixed);
    fs::copy(path.join("header"), mixed.join("header")).unwrap();
    assert!(matches!(
        open(&mixed, &pw(REAL)),
        Err(StoreError::CorruptRecord)
    ));

    // The duress passphrase is still armed.
    let decoy = open(&path, &pw(DURESS)).unwrap();
    assert!(
        decoy
            .scan_prefix(Namespace::Messages, b"")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn interrupted_database_replacement_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = new_store(&dir);
    write_markers(&mut store);
    store.close().unwrap();
    let before = dir.path().join("before");
    copy_dir(&path, &before);
    let store = open(&path, &pw(REAL)).unwrap().rekey(&pw(REAL)).unwrap();
    store.close().unwrap();

    let entries = |p: &Path| {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let marker_ok = |p: &Path| {
        let s = open(p, &pw(REAL)).unwrap();
        assert_eq!(
            s.get(Namespace::Messages, NAME_MARKER)
                .unwrap()
                .unwrap()
                .as_slice(),
            VALUE_MARKER
        );
    };

    // Crash after the new header was written, before the databases were swapped.
    let a = dir.path().join("a");
    copy_dir(&before, &a);
    fs::copy(path.join("header"), a.join("header")).unwrap();
    copy_dir(&path.join("db"), &a.join("db.new"));
    marker_ok(&a);
    assert_eq!(entries(&a), ["db", "header"]);
    marker_ok(&a);

    // Crash before the new header was written: the old key and database stay in force.
    let b = dir.path().join("b");
    copy_dir(&before, &b);
    copy_dir(&path.join("db"), &b.join("db.new"));
    marker_ok(&b);
    assert_eq!(entries(&b), ["db", "header"]);
    assert_eq!(
        fs::read(b.join("header")).unwrap(),
        fs::read(before.join("header")).unwrap()
    );
}

#[test]
fn passphrase_and_keystore_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("both");
    let both = |p: &str, k: u8| {
        Credential::PassphraseAndKeystore(Passphrase::from(p), KeystoreKey::from_bytes([k; 32]))
    };
    let mut store = SledStore::create(&path, &both(REAL, 1), cheap(), rng(4)).unwrap();
    store
        .put(Namespace::Consent, b"receipt", b"signed")
        .unwrap();
    // The duress passphrase, in the same combined form the app builds from the UI.
    store.set_duress_credential(&both(DURESS, 1)).unwrap();
    assert!(matches!(
        store.set_duress_credential(&both(REAL, 1)),
        Err(StoreError::DuressMatchesCredential)
    ));
    store.close().unwrap();

    // Neither half alone, nor the passphrase with another device's key, opens it.
    assert!(matches!(
        open(&path, &pw(REAL)),
        Err(StoreError::WrongCredential)
    ));
    let key_only = Credential::from(KeystoreKey::from_bytes([1; 32]));
    assert!(matches!(
        open(&path, &key_only),
        Err(StoreError::WrongCredential)
    ));
    assert!(matches!(
        open(&path, &both(REAL, 2)),
        Err(StoreError::WrongCredential)
    ));
    assert!(matches!(
        open(&path, &pw(DURESS)),
        Err(StoreError::WrongCredential)
    ));
    assert!(
        open(&path, &both(REAL, 1))
            .unwrap()
            .contains(Namespace::Consent, b"receipt")
            .unwrap()
    );

    let decoy = open(&path, &both(DURESS, 1)).unwrap();
    assert!(!decoy.contains(Namespace::Consent, b"receipt").unwrap());
    drop(decoy);
    assert!(matches!(
        open(&path, &both(REAL, 1)),
        Err(StoreError::WrongCredential)
    ));
}
