//! The encrypted on-disk store: sled underneath, every record encrypted and its name hashed.

use core::fmt;
use std::collections::BTreeSet;
use std::fs;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use rand_core::CryptoRng;
use zeroize::Zeroize;

use super::StoreError;
use super::files::{
    DB_DIR, DB_NEW, DB_OLD, HEADER_FILE, HEADER_PENDING, overwrite_in_place, read_small,
    remove_dir_if_exists, remove_file_if_exists, shred, sync_dir, sync_tree, write_header,
};
use super::header::{Header, SLOT_COUNT, SLOT_DURESS, SLOT_PRIMARY, SLOT_SECONDARY};
use super::keys::{Credential, KdfParams, Passphrase, SecretKey, derive_root};
use super::record::{ID_LEN, RecordCipher};
use super::traits::{BatchOp, Entry, KvStore, Namespace, Value, WriteBatch, check_key};

/// The sled key of the database binding tag. Record ids are 32 bytes, so it cannot collide.
const BINDING_KEY: &[u8] = b"";

/// `ns id ‖ record name`, the in-memory index entry; zeroized on drop.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct IndexKey(Vec<u8>);

impl IndexKey {
    fn new(ns: Namespace, name: &[u8]) -> Self {
        let mut v = Vec::with_capacity(1 + name.len());
        v.push(ns.id());
        v.extend_from_slice(name);
        IndexKey(v)
    }

    fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// The namespace and record name of this entry.
    fn parts(&self) -> Result<(Namespace, &[u8]), StoreError> {
        let (&ns, name) = self.0.split_first().ok_or(StoreError::CorruptRecord)?;
        Ok((
            Namespace::from_id(ns).ok_or(StoreError::CorruptRecord)?,
            name,
        ))
    }
}

impl core::borrow::Borrow<[u8]> for IndexKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for IndexKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The encrypted local store on sled.
///
/// A store is a directory holding a 344-byte `header` file (Argon2id parameters, salt and four
/// key slots wrapping the random master key) and a sled database `db/` whose keys are
/// HMAC-SHA256 record ids and whose values are XChaCha20-Poly1305 ciphertexts. The layout,
/// constructions and what remains visible on disk are described in docs/STORAGE.md.
///
/// The store keeps an in-memory index of record names (decrypted at open) for ordered prefix
/// scans. All randomness (master key, salt, nonces) comes from the `R` given at open or
/// create, so tests can be deterministic.
pub struct SledStore<R: CryptoRng> {
    dir: PathBuf,
    db: sled::Db,
    header: Header,
    slot: usize,
    master: SecretKey,
    cipher: RecordCipher,
    index: BTreeSet<IndexKey>,
    rng: R,
}

impl<R: CryptoRng> fmt::Debug for SledStore<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SledStore { index, .. } = self;
        f.debug_struct("SledStore")
            .field("records", &index.len())
            .finish_non_exhaustive()
    }
}

/// How often [`open_db`] retries while sled's file lock is still held by a closing instance.
const LOCK_RETRIES: u32 = 300;
/// Pause between those retries.
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Whether `e` is sled's "could not acquire lock" (sled 0.34 reports it only as text).
fn is_lock_contention(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::Other
        && io.to_string().contains("could not acquire lock"))
}

/// Opens the sled database at `path`.
///
/// Dropping a `sled::Db` does not release its exclusive file lock at once: sled's thread pool
/// may still be finishing a write that holds the file. So a database closed a moment ago (by
/// `close`, a re-key or a duress reset, or by the app re-opening after a lock screen) can
/// refuse to open; this retries for up to about three seconds before giving up.
fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    let mut attempt = 0;
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_contention(&e) && attempt < LOCK_RETRIES => {
                attempt += 1;
                std::thread::sleep(LOCK_RETRY_PAUSE);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Creates a database at `dir/db.new` holding the binding tag of `cipher` and whatever `fill`
/// writes, durably, and closes it.
fn build_new_db(
    dir: &Path,
    cipher: &RecordCipher,
    fill: impl FnOnce(&sled::Db) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let path = dir.join(DB_NEW);
    remove_dir_if_exists(&path)?;
    {
        let db = open_db(&path)?;
        db.insert(BINDING_KEY, &cipher.binding_tag()[..])?;
        fill(&db)?;
        db.flush()?;
    }
    sync_tree(&path)?;
    sync_dir(dir)?;
    Ok(())
}

/// Replaces `dir/db` with `dir/db.new` and removes the old database.
fn promote_new_db(dir: &Path) -> Result<(), StoreError> {
    let (live, new, old) = (dir.join(DB_DIR), dir.join(DB_NEW), dir.join(DB_OLD));
    remove_dir_if_exists(&old)?;
    if live.exists() {
        fs::rename(&live, &old)?;
    }
    fs::rename(&new, &live)?;
    sync_dir(dir)?;
    remove_dir_if_exists(&old)?;
    sync_dir(dir)?;
    Ok(())
}

/// The database at `path`, open, if it exists and carries `cipher`'s binding tag.
fn open_if_matching(path: &Path, cipher: &RecordCipher) -> Result<Option<sled::Db>, StoreError> {
    if !path.is_dir() {
        return Ok(None);
    }
    let db = open_db(path)?;
    let tag = db.get(BINDING_KEY)?;
    Ok(tag
        .is_some_and(|t| cipher.binding_matches(&t))
        .then_some(db))
}

/// Finds the database belonging to the unlocked master key, finishing an interrupted
/// replacement if needed, and opens it.
fn select_db(dir: &Path, cipher: &RecordCipher) -> Result<sled::Db, StoreError> {
    let (live, new, old) = (dir.join(DB_DIR), dir.join(DB_NEW), dir.join(DB_OLD));
    if let Some(db) = open_if_matching(&live, cipher)? {
        remove_dir_if_exists(&new)?;
        remove_dir_if_exists(&old)?;
        return Ok(db);
    }
    if let Some(db) = open_if_matching(&new, cipher)? {
        drop(db);
        promote_new_db(dir)?;
        return open_db(&live);
    }
    Err(StoreError::CorruptRecord)
}

fn load_index(db: &sled::Db, cipher: &RecordCipher) -> Result<BTreeSet<IndexKey>, StoreError> {
    let mut index = BTreeSet::new();
    for item in db.iter() {
        let (id, sealed) = item?;
        if id.as_ref() == BINDING_KEY {
            continue;
        }
        let (ns, name) = cipher.open_name(&id, &sealed)?;
        index.insert(IndexKey::new(ns, &name));
    }
    Ok(index)
}

/// Reads the header (and a pending header left by an interrupted update) and unlocks it.
/// Returns the header now in force, the slot and the key it wraps, and the credential's root.
/// Modifies nothing unless the credential unlocks a pending header, in which case the
/// interrupted update is completed.
fn unlock_header(
    dir: &Path,
    credential: &Credential,
) -> Result<(Header, usize, SecretKey, SecretKey), StoreError> {
    let main_bytes = read_small(&dir.join(HEADER_FILE))?;
    let pending_bytes = read_small(&dir.join(HEADER_PENDING))?;
    if main_bytes.is_none() && pending_bytes.is_none() {
        return Err(StoreError::NotFound);
    }
    let main = main_bytes
        .as_deref()
        .map(Header::decode)
        .and_then(Result::ok);
    let pending = pending_bytes
        .as_deref()
        .map(Header::decode)
        .and_then(Result::ok);
    let base = main
        .as_ref()
        .or(pending.as_ref())
        .ok_or(StoreError::CorruptHeader)?;
    let root = derive_root(credential, base.params(), base.salt())?;
    let kind = credential.kind();

    if let Some(h) = main.as_ref()
        && let Some((slot, key)) = h.unlock(&root, kind)?
    {
        if pending_bytes.is_some() {
            // A stale pending header from an update that never reached the header itself.
            remove_file_if_exists(&dir.join(HEADER_PENDING))?;
            sync_dir(dir)?;
        }
        return Ok((h.clone(), slot, key, root));
    }
    if let Some(h) = pending.as_ref()
        && main.as_ref().is_none_or(|m| m.same_kdf_input(h))
        && let Some((slot, key)) = h.unlock(&root, kind)?
    {
        // Finish the interrupted update: steps 2 and 3 of `write_header`.
        overwrite_in_place(&dir.join(HEADER_FILE), &h.encode())?;
        remove_file_if_exists(&dir.join(HEADER_PENDING))?;
        sync_dir(dir)?;
        return Ok((h.clone(), slot, key, root));
    }
    Err(StoreError::WrongCredential)
}

/// Panic wipe of the store in `dir`, usable while the store is locked (no credential needed).
///
/// 1. Overwrites the header (and any pending header) in place with zeros and fsyncs: every
///    wrapped master key is destroyed at once, so the database ciphertext is undecryptable even
///    if the deleted files are later recovered.
/// 2. Removes the databases and the header files, and syncs the directory.
///
/// Every step is attempted even if an earlier one fails; the first error is returned. Wiping a
/// directory without a store succeeds. The directory itself is left in place.
pub fn panic_wipe(dir: &Path) -> Result<(), StoreError> {
    let mut first_err: Option<std::io::Error> = None;
    let mut note = |r: std::io::Result<()>| {
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    };
    note(shred(&dir.join(HEADER_FILE)));
    note(shred(&dir.join(HEADER_PENDING)));
    remove_store_files(dir, &mut note);
    match first_err {
        Some(e) => Err(StoreError::Io(e)),
        None => Ok(()),
    }
}

fn remove_store_files(dir: &Path, note: &mut impl FnMut(std::io::Result<()>)) {
    for d in [DB_DIR, DB_NEW, DB_OLD] {
        note(remove_dir_if_exists(&dir.join(d)));
    }
    note(remove_file_if_exists(&dir.join(HEADER_FILE)));
    note(remove_file_if_exists(&dir.join(HEADER_PENDING)));
    if dir.exists() {
        note(sync_dir(dir));
    }
}

impl<R: CryptoRng> SledStore<R> {
    /// Creates a new, empty store in `dir` (created if missing) unlocked by `credential`.
    ///
    /// Fails with [`StoreError::AlreadyExists`] if `dir` already holds a store. `params` is only
    /// used for passphrases; pass [`KdfParams::default`] in production.
    pub fn create(
        dir: &Path,
        credential: &Credential,
        params: KdfParams,
        mut rng: R,
    ) -> Result<Self, StoreError> {
        if dir.join(HEADER_FILE).exists() || dir.join(HEADER_PENDING).exists() {
            return Err(StoreError::AlreadyExists);
        }
        fs::create_dir_all(dir)?;
        // Leftovers of an interrupted create or wipe: without a header they are unreadable.
        for d in [DB_DIR, DB_NEW, DB_OLD] {
            remove_dir_if_exists(&dir.join(d))?;
        }

        let mut header = Header::new_random(params, &mut rng);
        let master = SecretKey::generate(&mut rng);
        let root = derive_root(credential, header.params(), header.salt())?;
        header.seal_slot(SLOT_PRIMARY, &root, credential.kind(), &master, &mut rng)?;
        let cipher = RecordCipher::new(&master)?;

        Self::install_empty(dir, header, master, cipher, rng)
    }

    /// Opens the store in `dir` with `credential`.
    ///
    /// - A wrong credential gives [`StoreError::WrongCredential`] and touches nothing.
    /// - The duress passphrase (see [`SledStore::set_duress_passphrase`]) destroys the real
    ///   profile's keys, replaces its database with an empty one and returns that empty store,
    ///   which the duress passphrase opens from then on; the result cannot be told apart from a
    ///   normal open of an empty store. The real passphrase afterwards gives
    ///   [`StoreError::WrongCredential`].
    /// - Every record name is decrypted and authenticated to build the index; a tampered or
    ///   foreign database gives [`StoreError::CorruptRecord`].
    pub fn open(dir: &Path, credential: &Credential, rng: R) -> Result<Self, StoreError> {
        let (header, slot, key, root) = unlock_header(dir, credential)?;
        match slot {
            SLOT_DURESS => return Self::duress_reset(dir, header, credential, &root, rng),
            SLOT_PRIMARY | SLOT_SECONDARY => {}
            // The spare slot never wraps a key in format version 1.
            _ => return Err(StoreError::WrongCredential),
        }
        drop(root);
        let cipher = RecordCipher::new(&key)?;
        let db = select_db(dir, &cipher)?;
        let index = load_index(&db, &cipher)?;
        Ok(SledStore {
            dir: dir.to_path_buf(),
            db,
            header,
            slot,
            master: key,
            cipher,
            index,
            rng,
        })
    }

    /// The duress path of `open`: new master key in the primary slot under the duress
    /// passphrase, every other slot random, fresh empty database.
    fn duress_reset(
        dir: &Path,
        old_header: Header,
        credential: &Credential,
        root: &SecretKey,
        mut rng: R,
    ) -> Result<Self, StoreError> {
        let master = SecretKey::generate(&mut rng);
        let cipher = RecordCipher::new(&master)?;
        let mut header = old_header;
        header.seal_slot(SLOT_PRIMARY, root, credential.kind(), &master, &mut rng)?;
        for i in 0..SLOT_COUNT {
            if i != SLOT_PRIMARY {
                header.randomize_slot(i, &mut rng);
            }
        }
        // Order: the replacement database first, then the header (this destroys the real
        // master key), then the old database is removed. See docs/STORAGE.md for crashes.
        Self::install_empty(dir, header, master, cipher, rng)
    }

    /// Writes a fresh empty database, then `header` (whose primary slot wraps `master`), then
    /// promotes the new database; the order is what makes create and duress crash-safe
    /// (docs/STORAGE.md).
    fn install_empty(
        dir: &Path,
        header: Header,
        master: SecretKey,
        cipher: RecordCipher,
        rng: R,
    ) -> Result<Self, StoreError> {
        build_new_db(dir, &cipher, |_| Ok(()))?;
        write_header(dir, &header.encode())?;
        promote_new_db(dir)?;
        let db = open_db(&dir.join(DB_DIR))?;
        Ok(SledStore {
            dir: dir.to_path_buf(),
            db,
            header,
            slot: SLOT_PRIMARY,
            master,
            cipher,
            index: BTreeSet::new(),
            rng,
        })
    }

    fn other_normal_slot(&self) -> usize {
        if self.slot == SLOT_PRIMARY {
            SLOT_SECONDARY
        } else {
            SLOT_PRIMARY
        }
    }

    fn commit_header(&mut self, header: Header) -> Result<(), StoreError> {
        write_header(&self.dir, &header.encode())?;
        self.header = header;
        Ok(())
    }

    /// Replaces the credential this store was opened with (passphrase change, or moving to a
    /// new keystore key). Only the header is rewritten; records are not re-encrypted.
    ///
    /// If the new credential is also the duress passphrase, the duress slot is disarmed
    /// (randomized) rather than left to shadow or be shadowed by the real one.
    pub fn change_credential(&mut self, new: &Credential) -> Result<(), StoreError> {
        let slot = self.slot;
        self.write_credential_slot(slot, new)
    }

    /// Adds a second credential (for example the platform keystore key next to the
    /// passphrase). At most two credentials unlock a store; this replaces any previous second
    /// one.
    pub fn add_credential(&mut self, credential: &Credential) -> Result<(), StoreError> {
        let slot = self.other_normal_slot();
        self.write_credential_slot(slot, credential)
    }

    /// Removes the other credential (the one this store was not opened with), if any.
    pub fn remove_other_credential(&mut self) -> Result<(), StoreError> {
        let mut header = self.header.clone();
        header.randomize_slot(self.other_normal_slot(), &mut self.rng);
        self.commit_header(header)
    }

    fn write_credential_slot(
        &mut self,
        slot: usize,
        credential: &Credential,
    ) -> Result<(), StoreError> {
        let mut header = self.header.clone();
        let root = derive_root(credential, header.params(), header.salt())?;
        let kind = credential.kind();
        for (other, _) in header.matching_slots(&root, kind)? {
            if other == SLOT_DURESS {
                header.randomize_slot(other, &mut self.rng);
            }
        }
        header.seal_slot(slot, &root, kind, &self.master, &mut self.rng)?;
        self.commit_header(header)
    }

    /// Sets (or replaces) the duress passphrase. Opening the store with it later wipes the real
    /// profile and opens an empty one. Nothing in the header or the store records whether a
    /// duress passphrase is set. Same as [`SledStore::set_duress_credential`] with
    /// [`Credential::Passphrase`].
    pub fn set_duress_passphrase(&mut self, duress: &Passphrase) -> Result<(), StoreError> {
        self.set_duress_credential(&Credential::Passphrase(Passphrase::new(duress.as_bytes())))
    }

    /// Sets (or replaces) the duress credential. It must be of the kind the app builds from
    /// what the user types: an app that unlocks with
    /// [`Credential::PassphraseAndKeystore`] must set the duress passphrase in that form too,
    /// or typing it will be just a wrong passphrase. Fails with
    /// [`StoreError::DuressMatchesCredential`] if it unlocks the real profile.
    pub fn set_duress_credential(&mut self, duress: &Credential) -> Result<(), StoreError> {
        let mut header = self.header.clone();
        let root = derive_root(duress, header.params(), header.salt())?;
        let kind = duress.kind();
        if header
            .matching_slots(&root, kind)?
            .iter()
            .any(|(slot, _)| *slot != SLOT_DURESS)
        {
            return Err(StoreError::DuressMatchesCredential);
        }
        let decoy = SecretKey::generate(&mut self.rng);
        header.seal_slot(SLOT_DURESS, &root, kind, &decoy, &mut self.rng)?;
        self.commit_header(header)
    }

    /// Removes the duress passphrase, if one is set.
    pub fn clear_duress_passphrase(&mut self) -> Result<(), StoreError> {
        let mut header = self.header.clone();
        header.randomize_slot(SLOT_DURESS, &mut self.rng);
        self.commit_header(header)
    }

    /// Re-encrypts every record under a fresh master key and destroys the old one, then returns
    /// the store under the new key. `credential` must be the one this store was opened with
    /// (it is needed to re-wrap the new key; a different one gives
    /// [`StoreError::WrongCredential`] and changes nothing).
    ///
    /// This is the store's cryptographic erase: ciphertext of deleted or overwritten records
    /// that sled's log still holds, old copies of the header, and anyone who learned the old
    /// passphrase together with an old header, can no longer decrypt anything in the new
    /// database. The other (secondary) credential wrapped the old key and is removed; add it
    /// again afterwards. The duress passphrase stays armed. On error the old store may have
    /// been closed; open it again (an interrupted re-key is completed or rolled back at open).
    pub fn rekey(self, credential: &Credential) -> Result<Self, StoreError> {
        let root = derive_root(credential, self.header.params(), self.header.salt())?;
        let kind = credential.kind();
        if !self
            .header
            .matching_slots(&root, kind)?
            .iter()
            .any(|(slot, _)| *slot == self.slot)
        {
            return Err(StoreError::WrongCredential);
        }
        let other = self.other_normal_slot();
        let SledStore {
            dir,
            db,
            mut header,
            slot,
            master,
            cipher,
            index,
            mut rng,
        } = self;
        drop(master);
        let new_master = SecretKey::generate(&mut rng);
        let new_cipher = RecordCipher::new(&new_master)?;

        // 1. The new database, every record re-sealed under the new key.
        build_new_db(&dir, &new_cipher, |new_db| {
            for entry in &index {
                let (ns, name) = entry.parts()?;
                let old_id = cipher.record_id(ns, name)?;
                let sealed = db.get(old_id)?.ok_or(StoreError::CorruptRecord)?;
                let value = cipher.open_value(ns, &old_id, &sealed)?;
                let new_id = new_cipher.record_id(ns, name)?;
                new_db.insert(
                    new_id,
                    new_cipher.seal(ns, name, &new_id, &value, &mut rng)?,
                )?;
            }
            Ok(())
        })?;
        // 2. The header: this destroys the old master key on disk.
        header.seal_slot(slot, &root, kind, &new_master, &mut rng)?;
        header.randomize_slot(other, &mut rng);
        write_header(&dir, &header.encode())?;
        // 3. The old database goes.
        drop(db);
        drop(cipher);
        promote_new_db(&dir)?;
        let db = open_db(&dir.join(DB_DIR))?;
        Ok(SledStore {
            dir,
            db,
            header,
            slot,
            master: new_master,
            cipher: new_cipher,
            index,
            rng,
        })
    }

    /// Panic wipe of this open store: the header is shredded first (keys destroyed on disk),
    /// the in-memory keys and index are zeroized, sled is closed and the files are removed.
    /// See the free function [`panic_wipe`] for the locked case.
    pub fn panic_wipe(self) -> Result<(), StoreError> {
        let dir = self.dir.clone();
        let mut first_err: Option<std::io::Error> = None;
        let mut note = |r: std::io::Result<()>| {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        };
        note(shred(&dir.join(HEADER_FILE)));
        note(shred(&dir.join(HEADER_PENDING)));
        drop(self);
        remove_store_files(&dir, &mut note);
        match first_err {
            Some(e) => Err(StoreError::Io(e)),
            None => Ok(()),
        }
    }

    /// Flushes durably and closes the store (keys and index are zeroized).
    pub fn close(mut self) -> Result<(), StoreError> {
        self.flush()
    }

    fn id(&self, ns: Namespace, key: &[u8]) -> Result<[u8; ID_LEN], StoreError> {
        self.cipher.record_id(ns, key)
    }

    fn read(&self, ns: Namespace, key: &[u8]) -> Result<Option<Value>, StoreError> {
        let id = self.id(ns, key)?;
        match self.db.get(id)? {
            None => Ok(None),
            Some(sealed) => self.cipher.open_value(ns, &id, &sealed).map(Some),
        }
    }

    fn index_range<'a>(
        &'a self,
        ns: Namespace,
        prefix: &[u8],
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        let start = IndexKey::new(ns, prefix);
        let range = self
            .index
            .range::<[u8], _>((Bound::Included(start.as_slice()), Bound::Unbounded));
        range
            .map(IndexKey::as_slice)
            .take_while(move |k| k.starts_with(start.as_slice()))
            .filter_map(|k| k.get(1..))
    }
}

impl<R: CryptoRng> KvStore for SledStore<R> {
    fn get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Value>, StoreError> {
        check_key(key)?;
        self.read(ns, key)
    }

    fn contains(&self, ns: Namespace, key: &[u8]) -> Result<bool, StoreError> {
        check_key(key)?;
        Ok(self.index.contains(IndexKey::new(ns, key).as_slice()))
    }

    fn scan_prefix(&self, ns: Namespace, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        check_key(prefix)?;
        let mut out = Vec::new();
        for name in self.index_range(ns, prefix) {
            let value = self.read(ns, name)?.ok_or(StoreError::CorruptRecord)?;
            out.push((name.to_vec(), value));
        }
        Ok(out)
    }

    fn keys_with_prefix(&self, ns: Namespace, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        check_key(prefix)?;
        Ok(self.index_range(ns, prefix).map(<[u8]>::to_vec).collect())
    }

    fn apply_batch(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        batch.validate()?;
        let mut sled_batch = sled::Batch::default();
        for op in batch.ops() {
            match op {
                BatchOp::Put { ns, key, value } => {
                    let id = self.id(*ns, key)?;
                    let sealed = self.cipher.seal(*ns, key, &id, value, &mut self.rng)?;
                    sled_batch.insert(&id[..], sealed);
                }
                BatchOp::Delete { ns, key } => {
                    let id = self.id(*ns, key)?;
                    sled_batch.remove(&id[..]);
                }
            }
        }
        self.db.apply_batch(sled_batch)?;
        for op in batch.ops() {
            match op {
                BatchOp::Put { ns, key, .. } => {
                    self.index.insert(IndexKey::new(*ns, key));
                }
                BatchOp::Delete { ns, key } => {
                    self.index.remove(IndexKey::new(*ns, key).as_slice());
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.db.flush()?;
        sync_tree(&self.dir.join(DB_DIR))?;
        Ok(())
    }
}
