//! File-system helpers: durable writes, directory syncs, in-place overwrites, removal.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Header file name.
pub(crate) const HEADER_FILE: &str = "header";
/// The next header, written completely before the header is overwritten in place (a one-entry
/// journal; see [`write_header`]).
pub(crate) const HEADER_PENDING: &str = "header.new";
/// The live sled database directory.
pub(crate) const DB_DIR: &str = "db";
/// A replacement database being prepared (create, duress).
pub(crate) const DB_NEW: &str = "db.new";
/// A replaced database being removed.
pub(crate) const DB_OLD: &str = "db.old";

/// Largest header-like file read (anything larger is corrupt; bounds memory on crafted input).
const MAX_HEADER_READ: u64 = 4096;

/// Syncs a directory so that renames and removals in it are durable (no-op off Unix, where a
/// directory cannot be opened as a file).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
    }
    Ok(())
}

/// Reads a small file, or `None` if it does not exist.
pub(crate) fn read_small(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match File::open(path) {
        Ok(f) => {
            let mut buf = Vec::new();
            f.take(MAX_HEADER_READ).read_to_end(&mut buf)?;
            Ok(Some(buf))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` over the start of `path` in place (no new inode, so on file systems that
/// update in place the old bytes are physically overwritten), truncates to its length and
/// fsyncs.
pub(crate) fn overwrite_in_place(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(bytes)?;
    f.set_len(u64::try_from(bytes.len()).map_err(io::Error::other)?)?;
    f.sync_all()
}

/// Overwrites an existing file's whole length with zeros and fsyncs (used by the panic wipe).
pub(crate) fn shred(path: &Path) -> io::Result<()> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = usize::try_from(len.min(MAX_HEADER_READ)).map_err(io::Error::other)?;
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(&vec![0u8; len])?;
    f.sync_all()
}

/// Replaces the header durably and in place:
///
/// 1. write the complete new header to `header.new`, fsync it and the directory;
/// 2. overwrite `header` in place with it and fsync;
/// 3. remove `header.new` and fsync the directory.
///
/// A crash before step 2 completes leaves `header` intact (old) and a complete or partial
/// `header.new`; a crash during step 2 leaves a complete `header.new`. Opening tries `header`
/// first and `header.new` second and finishes step 2–3 if `header.new` is the one that unlocks.
pub(crate) fn write_header(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let pending = dir.join(HEADER_PENDING);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&pending)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    sync_dir(dir)?;
    overwrite_in_place(&dir.join(HEADER_FILE), bytes)?;
    fs::remove_file(&pending)?;
    sync_dir(dir)
}

/// Removes a directory tree if it exists.
pub(crate) fn remove_dir_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes a file if it exists.
pub(crate) fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// fsyncs every regular file under `dir` (recursively) and then every directory, bottom-up.
/// sled's own flush on Linux uses `sync_file_range`, which neither flushes the drive's write
/// cache nor file metadata; this gives the flush fsync semantics.
pub(crate) fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            sync_tree(&entry.path())?;
        } else if ty.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}
