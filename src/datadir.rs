//! The data directory: who owns it, and who may read it.
//!
//! - [`DataDirLock`]: one `serve` per data directory. Two servers on one directory would each
//!   "recover" the other's running jobs and run two jobs on one source connection, so the
//!   second one refuses to start. The lock is the OS's (`flock`), held on an open file for
//!   the server's life: it dies with the process, so a crash never leaves a stale lock behind
//!   (the file stays; only the lock on it matters). The file holds the holder's pid, for the
//!   refusal's message. The debugging and `keys` commands take no lock: they are meant to run
//!   beside a server (the store's own concurrency control covers their appends).
//! - [`private_files`]: the directory and everything in it holds the whole log and the key
//!   hashes, so the process creates files for its owner only (0600, directories 0700), as
//!   PostgreSQL does for its data directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "serve.lock";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data directory {dir} is in use by another syncjobs server ({holder}); stop that \
         server first, or give this one another data directory (--data-dir / SYNCJOBS_DATA_DIR)"
    )]
    InUse { dir: String, holder: String },
    #[error("data directory {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
    #[error(
        "no event store in {dir} ({file} does not exist): point SYNCJOBS_DATA_DIR at the \
         server's data directory, or read a running server with --server"
    )]
    NoStore { dir: String, file: String },
}

/// Held for as long as a server runs on the directory; dropping it (or the process dying)
/// releases it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    dir: PathBuf,
}

impl DataDirLock {
    /// Creates the directory if needed (0700) and takes its lock, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, DataDirError> {
        let io = |source| DataDirError::Io {
            dir: dir.display().to_string(),
            source,
        };
        create_private_dir(dir).map_err(io)?;
        let mut file = private_options()
            .read(true)
            .write(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                // The holder writes its pid right after locking; it may not have yet.
                let _ = file.read_to_string(&mut pid);
                let holder = match pid.trim() {
                    "" => "its pid is not known yet".to_owned(),
                    pid => format!("pid {pid}"),
                };
                return Err(DataDirError::InUse {
                    dir: dir.display().to_string(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        tracing::debug!(dir = %dir.display(), "data directory locked");
        Ok(DataDirLock {
            _file: file,
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Files this process creates are its owner's alone (0600; directories 0700): the log holds
/// every organization's data and the key hashes. Called first thing in `main`, so SQLite's
/// databases and their WAL files, the relay's cursor and snapshots all follow it.
pub fn private_files() {
    #[cfg(unix)]
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// `create_dir_all` with mode 0700 for every directory it creates.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Options that create a file with mode 0600 (whatever the umask).
pub fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// The read-only commands' check: the store must already be there (they never create one).
pub fn require_store(dir: &Path, file: &str) -> Result<(), DataDirError> {
    let path = dir.join(file);
    if path.is_file() {
        Ok(())
    } else {
        Err(DataDirError::NoStore {
            dir: dir.display().to_string(),
            file: path.display().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_names_the_holder_and_a_released_one_is_free() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let first = DataDirLock::acquire(&dir).unwrap();
        let err = DataDirLock::acquire(&dir).unwrap_err().to_string();
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        // The file stays behind, as after a crash: it does not block the next owner.
        assert!(dir.join(LOCK_FILE).exists());
        DataDirLock::acquire(&dir).expect("a released lock can be taken again");
    }

    #[cfg(unix)]
    #[test]
    fn created_directories_and_files_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let _lock = DataDirLock::acquire(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&dir.join(LOCK_FILE)), 0o600);
    }
}
