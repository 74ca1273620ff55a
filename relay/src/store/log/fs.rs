//! The file layer under the log: every file and directory operation the log store makes goes
//! through [`LogFs`], so that the simulated disk of [`super::sim`] can stand in for the real
//! file system ([`StdFs`]) in tests.
//!
//! sled opens and writes its own files; they are not behind this trait. In the simulation the
//! whole keyspace is replaced by a model of sled's contract instead
//! ([`Keyspace`](super::keyspace::Keyspace)).

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// An open file of the log store.
pub trait LogFile: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Sets the file's size (growing reads as zeros).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's size.
    fn size(&self) -> io::Result<u64>;
    /// `fdatasync`: makes the data written so far (and a size change) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`: makes the data and all metadata durable.
    fn sync_all(&self) -> io::Result<()>;
    /// Advises that `len` bytes from `offset` (to the end if `None`) will not be read soon, so
    /// that their clean cached pages are dropped and later reads go to the disk. Advice: a
    /// failure is ignored.
    fn drop_cache(&self, offset: u64, len: Option<u64>);
}

/// The file and directory operations of the log store.
pub trait LogFs: Send + Sync + fmt::Debug {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of `dir` (empty if it does not exist).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>>;
    /// Creates (or truncates) a file for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn LogFile>>;
    /// Renames `from` to `to` (replacing `to`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// `fsync`s a directory: makes its entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

struct StdFile(File);

impl LogFile for StdFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn drop_cache(&self, offset: u64, len: Option<u64>) {
        // `None` is "to the end" for fadvise too; a length of zero would mean the same.
        let len = match len {
            Some(0) => return,
            Some(n) => std::num::NonZeroU64::new(n),
            None => None,
        };
        let _ = rustix::fs::fadvise(&self.0, offset, len, rustix::fs::Advice::DontNeed);
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn drop_cache(&self, _offset: u64, _len: Option<u64>) {}
}

impl LogFs for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    names.push(entry?.file_name().to_string_lossy().into_owned());
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Arc::new(StdFile(f)))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Arc::new(StdFile(f)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}
