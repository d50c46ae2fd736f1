//! Entering network namespaces safely.
//!
//! Namespace membership belongs to a thread, not to the process. Everything
//! here keeps the caller's thread where it is: [`run_in`] does its work on a
//! dedicated, short-lived thread that enters the target through
//! [`NetnsGuard`], which switches back when dropped, so even a panicking
//! closure cannot leave a thread of ours in a pod. [`open_in`] is for the
//! one step that only *creates* something bound to the namespace (a netlink
//! socket): it runs on the calling thread, which moves back at once or
//! aborts the process, and so costs no thread start (which on a busy node
//! is a wait for a CPU, on every pod).

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

use super::NetnsError;

/// The namespace file of the calling thread (not of the process: threads of
/// one process may sit in different namespaces, and tests rely on that).
pub const THREAD_SELF_NETNS: &str = "/proc/thread-self/ns/net";

/// Identity of a namespace: device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NsId {
    dev: u64,
    ino: u64,
}

/// An open network-namespace file, checked to be one. Holding it keeps the
/// namespace alive.
#[derive(Debug)]
pub struct NetnsFile {
    file: File,
    path: PathBuf,
    id: NsId,
}

impl NetnsFile {
    /// Opens `path` and checks that it is a namespace file (nsfs, or a
    /// `/proc/.../ns/net` link). Errors are [`NetnsError::InvalidNetns`].
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let invalid = |reason: String| NetnsError::InvalidNetns {
            path: path.to_owned(),
            reason,
        };
        if path.as_os_str().is_empty() {
            return Err(invalid("empty path".into()));
        }
        let file = File::open(path).map_err(|e| invalid(e.to_string()))?;
        let fs = fstatfs(&file).map_err(|e| invalid(e.to_string()))?;
        // Opening /proc/<pid>/ns/net follows the magic link to nsfs, and
        // /run/netns/<name> is an nsfs bind mount. Anything else (a regular
        // file, a directory, a bind target whose mount is gone) is refused.
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(invalid("not a namespace file".into()));
        }
        let md = file.metadata().map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            file,
            path: path.to_owned(),
            id: NsId {
                dev: md.dev(),
                ino: md.ino(),
            },
        })
    }

    /// The calling thread's network namespace.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open(Path::new(THREAD_SELF_NETNS)).map_err(|e| NetnsError::Namespace {
            op: format!("open {THREAD_SELF_NETNS}"),
            source: io::Error::other(e.to_string()),
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its identity.
    pub fn id(&self) -> NsId {
        self.id
    }
}

impl AsFd for NetnsFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// While alive, the current thread is in another network namespace; dropping
/// it switches back. Not `Send`: it must be dropped on the thread that made it.
#[must_use = "the thread switches back when the guard is dropped"]
pub struct NetnsGuard {
    back: File,
    _not_send: PhantomData<*const ()>,
}

impl NetnsGuard {
    /// Moves the current thread into `target`.
    pub fn enter(target: &NetnsFile) -> Result<Self, NetnsError> {
        Ok(Self {
            back: switch_into(target)?,
            _not_send: PhantomData,
        })
    }
}

/// Moves the calling thread into `target`; returns its namespace before.
fn switch_into(target: &NetnsFile) -> Result<File, NetnsError> {
    let back = File::open(THREAD_SELF_NETNS).map_err(|source| NetnsError::Namespace {
        op: format!("open {THREAD_SELF_NETNS}"),
        source,
    })?;
    setns(target, CloneFlags::CLONE_NEWNET).map_err(|e| match e {
        // setns refuses a file that is not a network namespace (for
        // instance /proc/<pid>/ns/mnt): the path is unusable, not the host.
        nix::Error::EINVAL => NetnsError::InvalidNetns {
            path: target.path.clone(),
            reason: "not a network namespace".into(),
        },
        e => NetnsError::Namespace {
            op: format!("setns into {}", target.path.display()),
            source: e.into(),
        },
    })?;
    Ok(back)
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.back, CloneFlags::CLONE_NEWNET) {
            // The thread is stuck in the pod. Guards are only used on
            // dedicated helper threads (run_in) that end right after, so the
            // damage is contained; a panic makes the helper's result an error.
            tracing::error!(error = %e, "cannot switch back to the original network namespace");
            if !std::thread::panicking() {
                panic!("cannot switch back to the original network namespace: {e}");
            }
        }
    }
}

/// Runs `open` on the calling thread moved into `ns`, then moves the thread
/// back. Only for opening something that stays bound to `ns` (a socket):
/// `open` must not act on the namespace, since unlike [`run_in`] this
/// trades the helper thread's isolation for speed. If the thread cannot
/// move back, the process aborts: going on in the pod's namespace would
/// let the next operation act on the pod as if it were the node.
pub fn open_in<T>(ns: &NetnsFile, open: impl FnOnce() -> T) -> Result<T, NetnsError> {
    struct BackOrAbort(File);
    impl Drop for BackOrAbort {
        fn drop(&mut self) {
            if let Err(e) = setns(&self.0, CloneFlags::CLONE_NEWNET) {
                tracing::error!(error = %e, "cannot switch back to the original network namespace; aborting");
                std::process::abort();
            }
        }
    }
    let back = BackOrAbort(switch_into(ns)?);
    let out = open();
    drop(back);
    Ok(out)
}

/// Runs `f` on a dedicated thread inside `ns` and returns its result. The
/// calling thread never changes namespace.
pub fn run_in<T, F>(ns: &NetnsFile, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("tenet-netns".into())
            .spawn_scoped(s, || {
                let _guard = NetnsGuard::enter(ns)?;
                Ok(f())
            })
            .map_err(|source| NetnsError::Namespace {
                op: "spawn netns helper thread".into(),
                source,
            })?;
        h.join().map_err(|_| NetnsError::Namespace {
            op: format!("netns helper thread in {}", ns.path.display()),
            source: io::Error::other("panicked"),
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_namespace_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("plain");
        std::fs::write(&f, b"x").unwrap();
        for p in [
            f.as_path(),
            dir.path(),
            Path::new("/nonexistent/netns"),
            Path::new(""),
        ] {
            let e = NetnsFile::open(p).unwrap_err();
            assert!(matches!(e, NetnsError::InvalidNetns { .. }), "{p:?}: {e}");
            assert_eq!(e.cni_code(), crate::cni::codes::INVALID_ENV);
        }
    }

    #[test]
    fn own_namespace_opens_and_has_a_stable_id() {
        let a = NetnsFile::current().unwrap();
        let b = NetnsFile::open(Path::new(THREAD_SELF_NETNS)).unwrap();
        assert_eq!(a.id(), b.id());
    }
}
