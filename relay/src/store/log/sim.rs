//! A simulated disk for testing the log store against power loss and failing disks.
//!
//! [`SimDisk`] implements [`LogFs`] in memory and keeps, for every file, two images: what the
//! process reads (the page cache) and what the disk holds. A write changes only the cache and
//! marks its range dirty; `fdatasync`/`fsync` copy the dirty ranges to the disk image.
//! Directories likewise keep their current entries and the entries as of the last directory
//! `fsync`: a file created, renamed or removed is durably so only after its directory was
//! synced.
//!
//! - [`SimDisk::power_cut`] keeps the disk images and the synced directory entries. Each write
//!   not yet synced may reach the disk whole, not at all, or torn (a random subset of its
//!   512-byte sectors), as the kernel's write-back may have started on any of them. Every file
//!   handle of the process that was running fails from then on.
//! - [`SimDisk::inject`] makes a later write or sync fail with `EIO` or `ENOSPC`. A failed sync
//!   behaves like Linux's: the dirty pages are marked clean anyway (a retried sync succeeds
//!   without writing them), none of them reached the disk (the worst case), and the cache
//!   still holds the new data until the pages are dropped ([`LogFile::drop_cache`]), which a
//!   restarted process that did not lose power still reads.
//! - The keyspace (sled in production) is modelled by [`SimKeyspace`] on the same disk: batches
//!   are atomic, a checkpoint makes all of them durable, and a power cut or a process exit
//!   ([`SimDisk::process_exit`]: sled buffers writes in the process) keeps the durable ones plus
//!   any prefix of the later ones (sled recovers a prefix of its batches).
//!
//! Everything random is drawn from one seeded generator, and the log store runs its background
//! work inline under simulation, so a seed replays the same run.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::super::StoreError;
use super::commit::Overlay;
use super::fs::{LogFile, LogFs};
use super::keyspace::{KeyValue, Keyspace, LSN_KEY};

/// Sector size: the unit in which a write not yet synced can be torn.
pub const SECTOR: u64 = 512;

/// A small deterministic generator (SplitMix64): enough for choosing faults, and stable across
/// dependency versions so that a failing seed reproduces.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` if `n` is zero).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// Which operations an injected fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOp {
    /// A file write.
    Write,
    /// A file `fdatasync` or `fsync`.
    SyncFile,
    /// A directory `fsync`.
    SyncDir,
    /// A keyspace checkpoint (sled's flush and the sync of its files).
    Checkpoint,
}

/// The error an injected fault returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `EIO`.
    Io,
    /// `ENOSPC`.
    NoSpace,
}

impl Fault {
    fn error(self) -> io::Error {
        match self {
            Fault::Io => io::Error::from_raw_os_error(libc_errno::EIO),
            Fault::NoSpace => io::Error::from_raw_os_error(libc_errno::ENOSPC),
        }
    }
}

/// The two errno values used, without a dependency on libc.
mod libc_errno {
    pub(super) const EIO: i32 = 5;
    pub(super) const ENOSPC: i32 = 28;
}

#[derive(Default)]
struct Inode {
    /// What reads see.
    cache: Vec<u8>,
    /// What survives a power cut.
    disk: Vec<u8>,
    /// Ranges written since the last sync, oldest first.
    dirty: Vec<(u64, u64)>,
    /// The size changed since the last sync.
    size_dirty: bool,
}

#[derive(Default)]
struct Dir {
    current: BTreeMap<String, usize>,
    durable: BTreeMap<String, usize>,
}

#[derive(Default)]
struct KsState {
    /// What sled holds durably.
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Batches applied since, oldest first.
    since: Vec<Overlay>,
    /// What reads see.
    current: BTreeMap<Vec<u8>, Vec<u8>>,
}

struct Disk {
    rng: SimRng,
    /// Incremented by every power cut; handles of an earlier boot fail.
    boot: u64,
    inodes: Vec<Inode>,
    dirs: BTreeMap<PathBuf, Dir>,
    /// Pending injected faults: operation, how many more such operations succeed first.
    faults: Vec<(FaultOp, u64, Fault)>,
    /// Chance (per mille) that any write or sync fails by itself.
    random_faults: u64,
    keyspace: KsState,
    /// Operations that failed by injection so far.
    failed_ops: u64,
}

impl Disk {
    /// The keyspace after a crash: what the last checkpoint made durable plus any prefix of
    /// the batches applied since (sled recovers a prefix of its batches).
    fn keyspace_crash(&mut self) {
        let ks = std::mem::take(&mut self.keyspace);
        let keep = self.rng.below(ks.since.len() as u64 + 1) as usize;
        let mut state = ks.durable;
        for batch in ks.since.into_iter().take(keep) {
            apply_overlay(&mut state, &batch);
        }
        self.keyspace = KsState {
            durable: state.clone(),
            since: Vec::new(),
            current: state,
        };
    }

    fn fault(&mut self, op: FaultOp) -> io::Result<()> {
        let mut hit = None;
        for (i, (fop, after, fault)) in self.faults.iter_mut().enumerate() {
            if *fop == op {
                if *after == 0 {
                    hit = Some((i, *fault));
                    break;
                }
                *after -= 1;
            }
        }
        if let Some((i, fault)) = hit {
            self.faults.remove(i);
            self.failed_ops += 1;
            return Err(fault.error());
        }
        if self.random_faults > 0 && self.rng.chance(self.random_faults) {
            self.failed_ops += 1;
            let fault = if self.rng.chance(500) {
                Fault::Io
            } else {
                Fault::NoSpace
            };
            return Err(fault.error());
        }
        Ok(())
    }

    fn dir_of(&mut self, path: &Path) -> io::Result<(&mut Dir, String)> {
        let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?
            .to_string_lossy()
            .into_owned();
        let dir = self
            .dirs
            .get_mut(&parent)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok((dir, name))
    }

    /// Copies the dirty ranges of `inode` to its disk image.
    fn flush(&mut self, inode: usize) {
        let node = &mut self.inodes[inode];
        if node.size_dirty || node.disk.len() < node.cache.len() {
            node.disk.resize(node.cache.len(), 0);
        }
        for (from, to) in std::mem::take(&mut node.dirty) {
            let to = (to as usize).min(node.cache.len());
            let from = (from as usize).min(to);
            node.disk[from..to].copy_from_slice(&node.cache[from..to]);
        }
        node.size_dirty = false;
    }

    /// What of the unsynced writes of `inode` reaches its disk image at a power cut or a failed
    /// sync: each write whole, not at all, or a random subset of its sectors.
    fn settle(&mut self, inode: usize) {
        let dirty = std::mem::take(&mut self.inodes[inode].dirty);
        let size_dirty = std::mem::take(&mut self.inodes[inode].size_dirty);
        if size_dirty && self.rng.chance(500) {
            let len = self.inodes[inode].cache.len();
            self.inodes[inode].disk.resize(len, 0);
        }
        for (from, to) in dirty {
            let how = self.rng.below(3);
            let mut sector = from - from % SECTOR;
            while sector < to {
                let keep = match how {
                    0 => false,
                    1 => true,
                    _ => self.rng.chance(500),
                };
                let a = sector.max(from) as usize;
                let b = (sector + SECTOR).min(to) as usize;
                let node = &mut self.inodes[inode];
                let b = b.min(node.cache.len());
                if keep && a < b {
                    if node.disk.len() < b {
                        node.disk.resize(b, 0);
                    }
                    node.disk[a..b].copy_from_slice(&node.cache[a..b]);
                }
                sector += SECTOR;
            }
        }
    }
}

/// A simulated disk (see the module docs). Clones share the disk.
#[derive(Clone)]
pub struct SimDisk {
    inner: Arc<Mutex<Disk>>,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDisk").finish_non_exhaustive()
    }
}

impl SimDisk {
    /// An empty disk whose random choices follow `seed`.
    pub fn new(seed: u64) -> Self {
        let mut dirs = BTreeMap::new();
        dirs.insert(PathBuf::new(), Dir::default());
        Self {
            inner: Arc::new(Mutex::new(Disk {
                rng: SimRng::new(seed),
                boot: 0,
                inodes: Vec::new(),
                dirs,
                faults: Vec::new(),
                random_faults: 0,
                keyspace: KsState::default(),
                failed_ops: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the operation of kind `op` after the next `after` ones fail with `fault`.
    pub fn inject(&self, op: FaultOp, after: u64, fault: Fault) {
        self.lock().faults.push((op, after, fault));
    }

    /// Makes every write, sync and checkpoint fail with probability `per_mille / 1000`.
    pub fn set_random_faults(&self, per_mille: u64) {
        self.lock().random_faults = per_mille;
    }

    /// Removes every pending injected fault and stops random ones.
    pub fn clear_faults(&self) {
        let mut d = self.lock();
        d.faults.clear();
        d.random_faults = 0;
    }

    /// How many operations failed by injection so far.
    pub fn failed_ops(&self) -> u64 {
        self.lock().failed_ops
    }

    /// Cuts the power: keeps what syncs covered, settles unsynced writes at random (see the
    /// module docs) and invalidates every open file.
    pub fn power_cut(&self) {
        let mut d = self.lock();
        d.boot += 1;
        for inode in 0..d.inodes.len() {
            d.settle(inode);
            let node = &mut d.inodes[inode];
            node.cache = node.disk.clone();
        }
        for dir in d.dirs.values_mut() {
            dir.current = dir.durable.clone();
        }
        d.keyspace_crash();
    }

    /// Simulates the process ending without a power cut: the page cache (and every write the
    /// process made) stays, open files of the process fail from now on. The keyspace keeps a
    /// prefix of its batches since the last checkpoint, as after a power cut: sled buffers
    /// writes in the process before they reach its files.
    pub fn process_exit(&self) {
        let mut d = self.lock();
        d.boot += 1;
        d.keyspace_crash();
    }

    /// The bytes the disk holds for `path` (its durable image), if the file exists.
    pub fn disk_image(&self, path: &Path) -> Option<Vec<u8>> {
        let mut d = self.lock();
        let (dir, name) = d.dir_of(path).ok()?;
        let inode = *dir.current.get(&name)?;
        Some(d.inodes[inode].disk.clone())
    }

    /// Overwrites bytes of `path` on the disk and in the cache, as damage would (durable at
    /// once).
    pub fn corrupt(&self, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut d = self.lock();
        let (dir, name) = d.dir_of(path)?;
        let inode = *dir
            .current
            .get(&name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let node = &mut d.inodes[inode];
        let end = offset as usize + bytes.len();
        for img in [&mut node.cache, &mut node.disk] {
            if img.len() < end {
                img.resize(end, 0);
            }
            img[offset as usize..end].copy_from_slice(bytes);
        }
        Ok(())
    }

    /// The keyspace stored on this disk.
    pub fn keyspace(&self) -> SimKeyspace {
        SimKeyspace {
            disk: self.clone(),
            boot: self.lock().boot,
        }
    }

    /// A draw from the disk's generator, for tests that share its seed.
    pub fn random(&self, n: u64) -> u64 {
        self.lock().rng.below(n)
    }
}

fn apply_overlay(state: &mut BTreeMap<Vec<u8>, Vec<u8>>, batch: &Overlay) {
    for (k, v) in batch {
        match v {
            Some(v) => {
                state.insert(k.clone(), v.clone());
            }
            None => {
                state.remove(k);
            }
        }
    }
}

fn powered_off() -> io::Error {
    io::Error::other("simulated process ended")
}

struct SimFile {
    disk: SimDisk,
    inode: usize,
    boot: u64,
}

impl SimFile {
    fn lock(&self) -> io::Result<MutexGuard<'_, Disk>> {
        let d = self.disk.lock();
        if d.boot != self.boot {
            return Err(powered_off());
        }
        Ok(d)
    }

    fn sync(&self) -> io::Result<()> {
        let mut d = self.lock()?;
        if let Err(err) = d.fault(FaultOp::SyncFile) {
            // Linux: the pages are marked clean, so a retried sync succeeds without writing
            // them, and the cache keeps the new data. Here none of it reached the disk (the
            // worst case, and a deterministic one).
            let node = &mut d.inodes[self.inode];
            node.dirty.clear();
            node.size_dirty = false;
            return Err(err);
        }
        d.flush(self.inode);
        Ok(())
    }
}

impl LogFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.lock()?;
        let cache = &d.inodes[self.inode].cache;
        let end = offset as usize + buf.len();
        let src = cache
            .get(offset as usize..end)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.lock()?;
        d.fault(FaultOp::Write)?;
        let node = &mut d.inodes[self.inode];
        let end = offset as usize + buf.len();
        if node.cache.len() < end {
            node.cache.resize(end, 0);
            node.size_dirty = true;
        }
        node.cache[offset as usize..end].copy_from_slice(buf);
        node.dirty.push((offset, end as u64));
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut d = self.lock()?;
        let node = &mut d.inodes[self.inode];
        node.cache.resize(len as usize, 0);
        node.size_dirty = true;
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.lock()?.inodes[self.inode].cache.len() as u64)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }

    fn drop_cache(&self, offset: u64, len: Option<u64>) {
        let Ok(mut d) = self.lock() else { return };
        let node = &mut d.inodes[self.inode];
        let end = len.map_or(node.cache.len() as u64, |l| offset.saturating_add(l));
        let end = end.min(node.cache.len() as u64);
        let mut page = offset - offset % 4096;
        while page < end {
            let (a, b) = (page.max(offset), (page + 4096).min(end));
            if !node.dirty.iter().any(|(f, t)| *f < b && *t > a) {
                let (a, b) = (a as usize, b as usize);
                let on_disk = node.disk.len().clamp(a, b);
                node.cache[a..on_disk].copy_from_slice(&node.disk[a..on_disk]);
                node.cache[on_disk..b].fill(0);
            }
            page += 4096;
        }
    }
}

impl LogFs for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut d = self.lock();
        let mut p = dir.to_path_buf();
        loop {
            d.dirs.entry(p.clone()).or_default();
            match p.parent() {
                Some(parent) => p = parent.to_path_buf(),
                None => break,
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let d = self.lock();
        Ok(d.dirs
            .get(dir)
            .map(|dir| dir.current.keys().cloned().collect())
            .unwrap_or_default())
    }

    fn exists(&self, path: &Path) -> bool {
        let mut d = self.lock();
        d.dir_of(path)
            .map(|(dir, name)| dir.current.contains_key(&name))
            .unwrap_or(false)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let mut d = self.lock();
        let boot = d.boot;
        let (dir, name) = d.dir_of(path)?;
        let inode = *dir
            .current
            .get(&name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            inode,
            boot,
        }))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let mut d = self.lock();
        let boot = d.boot;
        let inode = d.inodes.len();
        d.inodes.push(Inode::default());
        let (dir, name) = d.dir_of(path)?;
        dir.current.insert(name, inode);
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            inode,
            boot,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut d = self.lock();
        let (dir, name) = d.dir_of(from)?;
        let inode = dir
            .current
            .remove(&name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let (dir, name) = d.dir_of(to)?;
        dir.current.insert(name, inode);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut d = self.lock();
        let (dir, name) = d.dir_of(path)?;
        dir.current
            .remove(&name)
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut d = self.lock();
        d.fault(FaultOp::SyncDir)?;
        if let Some(dir) = d.dirs.get_mut(dir) {
            dir.durable = dir.current.clone();
        }
        Ok(())
    }
}

/// The keyspace on a [`SimDisk`] (see the module docs).
pub struct SimKeyspace {
    disk: SimDisk,
    boot: u64,
}

impl SimKeyspace {
    fn lock(&self) -> Result<MutexGuard<'_, Disk>, StoreError> {
        let d = self.disk.lock();
        if d.boot != self.boot {
            return Err(StoreError::Backend(powered_off().to_string()));
        }
        Ok(d)
    }
}

impl Keyspace for SimKeyspace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.keyspace.current.get(key).cloned())
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> Box<dyn Iterator<Item = Result<KeyValue, StoreError>> + '_> {
        match self.lock() {
            Ok(d) => {
                let items: Vec<_> = d
                    .keyspace
                    .current
                    .range(start.to_vec()..end.to_vec())
                    .map(|(k, v)| Ok((k.clone(), v.clone())))
                    .collect();
                Box::new(items.into_iter())
            }
            Err(err) => Box::new(std::iter::once(Err(err))),
        }
    }

    fn apply(&self, lsn: u64, writes: &Overlay) -> Result<(), StoreError> {
        let mut d = self.lock()?;
        let mut batch = writes.clone();
        batch.insert(LSN_KEY.to_vec(), Some(lsn.to_be_bytes().to_vec()));
        apply_overlay(&mut d.keyspace.current, &batch);
        d.keyspace.since.push(batch);
        Ok(())
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        let mut d = self.lock()?;
        d.fault(FaultOp::Checkpoint)
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let ks = &mut d.keyspace;
        ks.durable = ks.current.clone();
        ks.since.clear();
        Ok(())
    }
}
