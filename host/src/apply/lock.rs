//! A node-local lock per tenant.
//!
//! ADD's `ensure_tenant` … `attach` and DEL's `remove_tenant_if_unused` must
//! not interleave: a DEL of a tenant's last pod could otherwise delete the
//! bridge between another ADD's ensure and attach. The lock is an `flock` on
//! `<state_dir>/locks/<bridge name>.lock`, so it is per tenant (pods of other
//! tenants never wait), and the kernel drops it when a holder dies.

use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::sdn::bridge_name;

/// How long to wait for a tenant lock before giving up (code 11).
pub const TENANT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// A held tenant lock; dropping it unlocks.
#[derive(Debug)]
pub struct TenantLock {
    _file: File,
}

/// Why a tenant lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process held it for longer than the timeout.
    #[error("tenant {tenant:?} is busy: lock not acquired within {waited:?}")]
    Timeout {
        /// The tenant.
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

impl TenantLock {
    /// Takes `tenant`'s lock, polling up to `timeout`.
    pub fn acquire(state_dir: &Path, tenant: &str, timeout: Duration) -> Result<Self, LockError> {
        let dir = state_dir.join("locks");
        let path = dir.join(format!("{}.lock", bridge_name(tenant)));
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let start = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { _file: file }),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
            if start.elapsed() >= timeout {
                return Err(LockError::Timeout {
                    tenant: tenant.to_owned(),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
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
}
