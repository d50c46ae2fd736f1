//! `tenet serve`: the listening side. One thread per connection, one
//! invocation per connection, run by [`crate::commands::run_noting`].

use std::io::{self, BufReader, BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::wire::{self, Identity, Reply};

/// Invocations served at once; past it the daemon declines and the client
/// runs the invocation itself (a burst never queues behind the daemon).
pub const MAX_ACTIVE: usize = 64;

/// How long a client has to send its whole request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound daemon socket.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    own: Identity,
    active: AtomicUsize,
}

impl Server {
    /// Binds `path` (mode 0600; its directory created 0755 when missing).
    /// A socket left by a daemon that is gone is replaced; one a live
    /// daemon answers on, or a path that is not a socket, is an error.
    pub fn bind(path: &Path) -> io::Result<Server> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_socket() => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Ok(_) => {
                if UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("another tenet daemon serves {}", path.display()),
                    ));
                }
                std::fs::remove_file(path)?;
            }
            Err(_) => {}
        }
        // Created 0600 from the start (no window where another user could
        // connect); the daemon's umask is restored for what it writes later.
        // SAFETY: umask has no preconditions; the daemon is single-threaded
        // here.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        unsafe { libc::umask(old) };
        let listener = bound?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Server {
            listener,
            path: path.to_owned(),
            own: super::identity(),
            active: AtomicUsize::new(0),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until the listener fails (never, short of the process
    /// ending).
    pub fn run(&'static self) -> io::Result<()> {
        tracing::info!(socket = %self.path.display(), "tenet serve: listening");
        loop {
            let (stream, _) = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let spare = stream.try_clone();
            let spawned = std::thread::Builder::new()
                .name("tenet-serve".into())
                .spawn(move || self.handle(stream));
            if let Err(e) = spawned {
                // Nothing was read, so nothing ran: the client runs it.
                tracing::warn!(error = %e, "tenet serve: cannot start a thread");
                if let Ok(mut s) = spare {
                    let _ = wire::write_reply(&mut s, &Reply::Declined(format!("no thread: {e}")));
                }
            }
        }
    }

    /// One connection: check the peer, read the request, decline or run it.
    fn handle(&self, stream: UnixStream) {
        let euid = nix::unistd::geteuid().as_raw();
        match getsockopt(&stream, PeerCredentials) {
            Ok(c) if c.uid() == euid => {}
            Ok(c) => {
                // Not read, so not run: for that client there is no daemon
                // (it runs the invocation itself, with its own rights).
                tracing::warn!(
                    uid = c.uid(),
                    pid = c.pid(),
                    "tenet serve: a peer of another uid was refused"
                );
                let _ = wire::write_reply(
                    &mut &stream,
                    &Reply::Declined(format!("not served to uid {}", c.uid())),
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "tenet serve: no peer credentials");
                return;
            }
        }
        let req = match stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .and_then(|()| wire::read_request(&mut BufReader::new(&stream)))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "tenet serve: unreadable request");
                return;
            }
        };
        let reply = self.answer(&req);
        let mut w = BufWriter::new(&stream);
        if let Err(e) = wire::write_reply(&mut w, &reply).and_then(|()| w.flush()) {
            tracing::warn!(error = %e, "tenet serve: the client left before its answer");
        }
    }

    /// Runs `req` here, or says why the client must.
    fn answer(&self, req: &wire::Request) -> Reply {
        if let Some(why) = super::mismatch(&self.own, &req.identity) {
            tracing::debug!(why, "tenet serve: declined");
            return Reply::Declined(why.to_owned());
        }
        let _slot = match Slot::take(&self.active) {
            Some(s) => s,
            None => return Reply::Declined(format!("busy: {MAX_ACTIVE} invocations in progress")),
        };
        let reply = crate::commands::run_noting(&req.env, &req.stdin, Some("served"));
        Reply::Answered {
            stdout: reply.stdout,
            exit_code: reply.exit_code,
        }
    }
}

/// `tenet serve`: the daemon's configuration (its own environment and
/// `tenet.toml`) sets up logging and names the pipeline loaded before the
/// first invocation; then it serves `path` until the process ends.
pub fn start(path: &Path) -> Result<(), String> {
    let env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let cfg = crate::config::Config::load(&env, None).map_err(|e| e.to_string())?;
    crate::logging::init(&cfg);
    super::warm::enable();
    let server = Server::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // Lives as long as the process: every connection thread borrows it.
    let server: &'static Server = Box::leak(Box::new(server));
    if cfg.pipeline.is_some() {
        // Loaded once now (and kept) rather than by the first pod.
        match crate::commands::load_pipeline(&cfg) {
            Ok(lease) => drop(lease),
            Err(e) => {
                tracing::warn!(code = e.code, msg = %e.msg, details = %e.details, "tenet serve: the configured pipeline does not load yet")
            }
        }
    }
    server.run().map_err(|e| format!("{}: {e}", path.display()))
}

/// One of [`MAX_ACTIVE`] places, given back when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    fn take(active: &'a AtomicUsize) -> Option<Self> {
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_ACTIVE {
            active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(active))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let active = AtomicUsize::new(0);
        let held: Vec<_> = (0..MAX_ACTIVE)
            .map(|_| Slot::take(&active).unwrap())
            .collect();
        assert!(Slot::take(&active).is_none());
        assert_eq!(active.load(Ordering::Acquire), MAX_ACTIVE);
        drop(held);
        assert_eq!(active.load(Ordering::Acquire), 0);
        assert!(Slot::take(&active).is_some());
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tenet.sock");
        std::fs::write(&file, "keep").unwrap();
        let e = Server::bind(&file).err().expect("refused");
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("tenet.sock");
        let first = Server::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A live listener: a second daemon must not steal its socket.
        let e = Server::bind(&path).err().expect("in use");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        // Gone (its socket file left behind): replaced.
        drop(first);
        assert!(path.exists());
        Server::bind(&path).unwrap();
    }
}
