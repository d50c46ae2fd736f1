//! A node-local lock per tenant, and the removable file lock under it.
//!
//! ADD's `ensure_tenant` … `attach` and DEL's `remove_tenant_if_unused` must
//! not interleave: a DEL of a tenant's last pod could otherwise delete the
//! bridge between another ADD's ensure and attach. The lock is an `flock` on
//! `<state_dir>/locks/<bridge name>.lock`, so it is per tenant (pods of other
//! tenants never wait), and the kernel drops it when a holder dies. The file
//! is removed with the tenant's network; [`FileLock`] says why that is safe
//! against a waiter. The Linux SDN locks bridge names the same way.

use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sdn::bridge_name;

/// How long to wait for a tenant lock before giving up (code 11).
pub const TENANT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// A held tenant lock; dropping it unlocks.
#[derive(Debug)]
pub struct TenantLock {
    lock: FileLock,
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process held it for longer than the timeout.
    #[error("tenant {tenant:?} is busy: lock not acquired within {waited:?}")]
    Timeout {
        /// The tenant (or the locked name).
        tenant: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The lock file could not be opened.
    #[error("tenant lock {path}: {source}")]
    Io {
        /// The lock file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive `flock` on a file that may be removed by its holder
/// ([`FileLock::remove`]), so lock files do not pile up for tenants long
/// gone. Whoever locks a file then finds its path gone or naming another
/// file has locked a removed file: it lets go and starts over, so at most
/// one process holds the lock of a path at a time.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Locks `path` (creating it and its directory), polling up to
    /// `timeout`; `what` names it in a timeout error.
    pub fn acquire(path: &Path, what: &str, timeout: Duration) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let start = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            loop {
                match file.try_lock() {
                    Ok(()) => break,
                    Err(TryLockError::WouldBlock) => {}
                    Err(TryLockError::Error(e)) => return Err(io(e)),
                }
                if start.elapsed() >= timeout {
                    return Err(LockError::Timeout {
                        tenant: what.to_owned(),
                        waited: start.elapsed(),
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            // The holder before us may have removed the file after we opened
            // it: then our lock is on a file nobody else will ever open.
            let held = file.metadata().map_err(io)?;
            match std::fs::metadata(path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Self {
                        file,
                        path: path.to_owned(),
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
    }

    /// Removes the lock file while holding it, then unlocks. Waiters that
    /// already opened it notice and start over on a new file.
    pub fn remove(self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => {
                drop(self.file);
                Ok(())
            }
        }
    }
}

impl TenantLock {
    /// The lock file of `tenant` under `state_dir`.
    pub fn path(state_dir: &Path, tenant: &str) -> PathBuf {
        Self::path_in(&state_dir.join("locks"), &bridge_name(tenant))
    }

    /// The lock file named `lock_name` (a tenant's [`bridge_name`]) in the
    /// lock directory `lock_dir` (`<state_dir>/locks`).
    pub fn path_in(lock_dir: &Path, lock_name: &str) -> PathBuf {
        lock_dir.join(format!("{lock_name}.lock"))
    }

    /// Takes the tenant lock named `lock_name` in `lock_dir`: how a backend
    /// that knows a tenant only by the ident its bridge records
    /// ([`crate::sdn::lock_name_of_ident`]) locks it.
    pub fn acquire_in(
        lock_dir: &Path,
        lock_name: &str,
        timeout: Duration,
    ) -> Result<Self, LockError> {
        Ok(Self {
            lock: FileLock::acquire(&Self::path_in(lock_dir, lock_name), lock_name, timeout)?,
        })
    }

    /// Takes `tenant`'s lock, polling up to `timeout`.
    pub fn acquire(state_dir: &Path, tenant: &str, timeout: Duration) -> Result<Self, LockError> {
        Ok(Self {
            lock: FileLock::acquire(&Self::path(state_dir, tenant), tenant, timeout)?,
        })
    }

    /// Removes the lock file and unlocks: the tenant's network is gone.
    pub fn remove(self) -> std::io::Result<()> {
        self.lock.remove()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_per_tenant_and_times_out() {
        let d = tempfile::tempdir().unwrap();
        let a = TenantLock::acquire(d.path(), "acme", TENANT_LOCK_TIMEOUT).unwrap();
        // Another tenant is independent.
        let _b = TenantLock::acquire(d.path(), "other", Duration::from_millis(10)).unwrap();
        let e = TenantLock::acquire(d.path(), "acme", Duration::from_millis(30)).unwrap_err();
        assert!(matches!(e, LockError::Timeout { .. }), "{e}");
        drop(a);
        TenantLock::acquire(d.path(), "acme", Duration::from_millis(30)).unwrap();
    }

    #[test]
    fn a_removed_lock_file_is_not_left_locked_twice() {
        let d = tempfile::tempdir().unwrap();
        let path = TenantLock::path(d.path(), "acme");
        let a = TenantLock::acquire(d.path(), "acme", TENANT_LOCK_TIMEOUT).unwrap();
        // A waiter opens the file and blocks on it while the holder removes it.
        let dir = d.path().to_owned();
        let waiter = std::thread::spawn(move || {
            let l = TenantLock::acquire(&dir, "acme", TENANT_LOCK_TIMEOUT).unwrap();
            let ino = std::fs::metadata(TenantLock::path(&dir, "acme"))
                .unwrap()
                .ino();
            (l, ino)
        });
        std::thread::sleep(Duration::from_millis(50));
        a.remove().unwrap();
        let (held, ino) = waiter.join().unwrap();
        // The waiter holds the lock of the file the path names now, so a
        // third process is excluded.
        assert!(path.exists());
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
        let e = TenantLock::acquire(d.path(), "acme", Duration::from_millis(30)).unwrap_err();
        assert!(matches!(e, LockError::Timeout { .. }), "{e}");
        held.remove().unwrap();
        assert!(!path.exists());
    }
}
