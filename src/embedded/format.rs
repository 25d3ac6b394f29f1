//! The store directory's guard rails: one process at a time (an exclusive `flock` on
//! `<dir>/LOCK`, which holds the owner's pid), and a format version (`<dir>/VERSION`)
//! that a newer rk migrates forward on open and an older rk refuses.
//!
//! Format history:
//! - 0: the log and snapshots of [`super::wal`], no `VERSION` file (rk before the
//!   file existed).
//! - 1: the same files, plus `VERSION`. Migrating 0 → 1 writes the file.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::storage::StorageError;

/// The format this rk writes.
pub const STORE_FORMAT: u32 = 1;

/// An exclusive hold on a store directory, released when dropped.
pub struct DirLock {
    _lock: Flock<File>,
}

impl std::fmt::Debug for DirLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirLock")
    }
}

/// Takes the store directory `dir` (created if missing) for this process, waiting up
/// to `wait` for a previous owner that is exiting.
pub fn lock(dir: &Path, wait: std::time::Duration) -> Result<DirLock, StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::Backend(format!("create {}: {e}", dir.display())))?;
    let path = dir.join("LOCK");
    let deadline = std::time::Instant::now() + wait;
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StorageError::Backend(format!("open {}: {e}", path.display())))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut f) => {
                // Who holds it, for the message another process gives.
                let _ = f.set_len(0);
                let _ = f.rewind();
                let _ = writeln!(f, "{}", std::process::id());
                return Ok(DirLock { _lock: f });
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                if std::time::Instant::now() >= deadline {
                    let mut pid = String::new();
                    let _ = file.read_to_string(&mut pid);
                    let pid = pid.trim();
                    let who = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
                    return Err(StorageError::Backend(format!(
                        "the store in {} is in use by another rk{who}; stop it first",
                        dir.display()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err((_, e)) => return Err(StorageError::Backend(format!("lock {}: {e}", path.display()))),
        }
    }
}

/// The format of the store in `dir`: its `VERSION`, or 0 for a store from before the
/// file, or None for a new (empty) store.
pub fn read_version(dir: &Path) -> Result<Option<u32>, StorageError> {
    let path = dir.join("VERSION");
    match std::fs::read_to_string(&path) {
        Ok(t) => t.trim().parse::<u32>().map(Some).map_err(|_| {
            StorageError::Backend(format!("{}: {:?} is not a store format number", path.display(), t.trim()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let log = dir.join("log");
            let has_data = std::fs::read_dir(&log).map(|mut d| d.next().is_some()).unwrap_or(false);
            Ok(has_data.then_some(0))
        }
        Err(e) => Err(StorageError::Backend(format!("read {}: {e}", path.display()))),
    }
}

/// Checks the store's format before anything is read, migrating an older one forward;
/// a newer format is refused with nothing touched.
pub fn check_and_migrate(dir: &Path) -> Result<(), StorageError> {
    match read_version(dir)? {
        Some(v) if v > STORE_FORMAT => Err(StorageError::Backend(format!(
            "the store in {} has format {v}, written by a newer rk (this rk reads formats up to {STORE_FORMAT}); \
             run the newer rk, or restore a snapshot into a fresh data dir",
            dir.display()
        ))),
        Some(v) if v == STORE_FORMAT => Ok(()),
        found => {
            // 0 → 1: the files are unchanged; recording the version is the migration.
            write_version(dir)?;
            if let Some(v) = found {
                tracing::info!(from = v, to = STORE_FORMAT, dir = %dir.display(), "migrated the store's format");
            }
            Ok(())
        }
    }
}

/// Records [`STORE_FORMAT`] in `dir` durably.
pub fn write_version(dir: &Path) -> Result<(), StorageError> {
    let err = |e: std::io::Error| StorageError::Backend(format!("write {}/VERSION: {e}", dir.display()));
    let tmp = dir.join("VERSION.tmp");
    let mut f = File::create(&tmp).map_err(err)?;
    writeln!(f, "{STORE_FORMAT}").map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, dir.join("VERSION")).map_err(err)?;
    super::wal::sync_dir(dir).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_at_a_time_and_versions_migrate_forward_only() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path(), std::time::Duration::ZERO).unwrap();
        let e = lock(dir.path(), std::time::Duration::from_millis(100)).unwrap_err().to_string();
        assert!(e.contains("in use by another rk") && e.contains(&std::process::id().to_string()), "{e}");
        drop(held);
        lock(dir.path(), std::time::Duration::ZERO).unwrap();

        // New store: no version until written; a legacy store (log, no VERSION) is 0.
        assert_eq!(read_version(dir.path()).unwrap(), None);
        std::fs::create_dir_all(dir.path().join("log")).unwrap();
        std::fs::write(dir.path().join("log").join("00000000000000000001.wal"), b"").unwrap();
        assert_eq!(read_version(dir.path()).unwrap(), Some(0));
        check_and_migrate(dir.path()).unwrap();
        assert_eq!(read_version(dir.path()).unwrap(), Some(STORE_FORMAT));

        std::fs::write(dir.path().join("VERSION"), "99\n").unwrap();
        let e = check_and_migrate(dir.path()).unwrap_err().to_string();
        assert!(e.contains("format 99, written by a newer rk"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.path().join("VERSION")).unwrap(), "99\n", "left as it was");
        std::fs::write(dir.path().join("VERSION"), "x\n").unwrap();
        assert!(check_and_migrate(dir.path()).unwrap_err().to_string().contains("not a store format number"));
    }
}
