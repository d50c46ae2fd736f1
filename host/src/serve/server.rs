//! `tenet serve`: the listening side. A few acceptor threads, each running
//! the connections it accepts, one invocation per connection, run by
//! [`crate::commands::run_in`].
//!
//! **DEL is answered once the pod is cut off.** Most of a DEL is the
//! kernel deleting the pod's veths (RCU grace periods: 15-20 ms here). The
//! daemon answers the runtime as soon as the attachment's port guards are
//! removed ([`crate::apply::Engine::with_cut_off`]), and deletes the
//! interfaces, releases the addresses and removes the record after. Safe
//! because: the pod can no longer send; its addresses are released only
//! once its interfaces are gone, so no other pod gets them meanwhile; any
//! other invocation for the same container and interface waits here until
//! the DEL has finished ([`Inflight`]), and an exec that runs itself
//! meanwhile finds the record and is refused (code 140) rather than
//! interleaving. If the rest fails, or the daemon dies before it ends, the
//! record remains and GC (the runtime's, or the node agent's pass) finishes
//! it, as for any attachment the runtime forgot; the failure is logged and
//! the exec record keeps its code.

use std::collections::HashSet;
use std::io::{self, BufReader, BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::wire::{self, Identity, Reply};

/// Invocations served at once; past it the daemon declines and the client
/// runs the invocation itself (a burst never queues behind the daemon).
pub const MAX_ACTIVE: usize = 64;

/// Idle acceptors kept: one always waits in `accept` while another
/// connection runs, and a sequence of pods never starts a thread.
const SPARE_ACCEPTORS: usize = 2;

/// How long a client has to send its whole request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound daemon socket.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    own: Identity,
    active: AtomicUsize,
    /// Acceptors waiting in `accept` ([`Self::acceptor`]).
    idle: AtomicUsize,
    inflight: Inflight,
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
            idle: AtomicUsize::new(0),
            inflight: Inflight::default(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until the listener fails (never, short of the process
    /// ending). The calling thread becomes one of the acceptors.
    pub fn run(&'static self) -> io::Result<()> {
        tracing::info!(socket = %self.path.display(), "tenet serve: listening");
        for _ in 1..SPARE_ACCEPTORS {
            self.spawn_acceptor();
        }
        self.acceptor(true)
    }

    /// One acceptor: accepts, greets, and runs the connection on this very
    /// thread (no hand-off to a new thread, which on a busy node is a wait
    /// for a CPU on every pod). When it takes the last idle acceptor's
    /// place it starts another first, so a connection is always being
    /// accepted and greeted while this one runs; after the connection it
    /// ends if enough others are idle, unless it is the `first` (the
    /// daemon's main thread, which returns only when the listener fails).
    /// After a burst, the surplus idle ones end one per later connection.
    fn acceptor(&'static self, first: bool) -> io::Result<()> {
        loop {
            self.idle.fetch_add(1, Ordering::AcqRel);
            let accepted = self.listener.accept();
            let idle_left = self.idle.fetch_sub(1, Ordering::AcqRel) - 1;
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => continue,
                    // Out of descriptors or memory: transient, per accept(2).
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        tracing::warn!(error = %e, "tenet serve: cannot accept; retrying");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    _ => return Err(e),
                },
            };
            // Checked and greeted first: the client waits for the greeting
            // only as long as the accept takes.
            if !self.greet(&stream) {
                continue;
            }
            if idle_left == 0 {
                self.spawn_acceptor();
            }
            self.handle(stream);
            if !first && self.idle.load(Ordering::Acquire) >= SPARE_ACCEPTORS {
                return Ok(());
            }
        }
    }

    /// Starts another acceptor. Without one, connections wait in the
    /// backlog until a running one ends (clients not greeted within 2 s run
    /// the invocation themselves).
    fn spawn_acceptor(&'static self) {
        let spawned = std::thread::Builder::new()
            .name("tenet-serve".into())
            .spawn(move || {
                if let Err(e) = self.acceptor(false) {
                    // The listener itself is broken: no acceptor can serve.
                    // Ending the daemon lets its supervisor start a new one,
                    // and meanwhile every client runs its invocation itself.
                    tracing::error!(error = %e, socket = %self.path.display(), "tenet serve: the listener failed");
                    std::process::exit(1);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "tenet serve: cannot start another acceptor");
        }
    }

    /// Checks the peer and greets it: `Ready` for a peer of the daemon's
    /// uid (true), `Declined` for another (false: its request is never
    /// read, so for that client there is no daemon and it runs the
    /// invocation itself, with its own rights).
    fn greet(&self, stream: &UnixStream) -> bool {
        let euid = nix::unistd::geteuid().as_raw();
        let reply = match getsockopt(stream, PeerCredentials) {
            Ok(c) if c.uid() == euid => Reply::Ready,
            Ok(c) => {
                tracing::warn!(
                    uid = c.uid(),
                    pid = c.pid(),
                    "tenet serve: a peer of another uid was refused"
                );
                Reply::Declined(format!("not served to uid {}", c.uid()))
            }
            Err(e) => {
                tracing::warn!(error = %e, "tenet serve: no peer credentials");
                return false;
            }
        };
        // A few bytes into a fresh socket's buffer: this never blocks.
        let greeted = wire::write_reply(&mut &*stream, &reply).is_ok();
        greeted && reply == Reply::Ready
    }

    /// One greeted connection: read the request, decline or run it.
    fn handle(&self, stream: UnixStream) {
        let req = match stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .and_then(|()| wire::read_request(&mut BufReader::new(&stream)))
        {
            Ok(r) => r,
            // A client that connected and left (a readiness probe), or one
            // cut off mid-request: nothing was run either way.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::debug!(error = %e, "tenet serve: a client left without a whole request");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "tenet serve: unreadable request");
                return;
            }
        };
        let send = |reply: &Reply| {
            let mut w = BufWriter::new(&stream);
            if let Err(e) = wire::write_reply(&mut w, reply).and_then(|()| w.flush()) {
                tracing::warn!(error = %e, "tenet serve: the client left before its answer");
            }
        };
        if let Some(why) = super::mismatch(&self.own, &req.identity) {
            tracing::debug!(why, "tenet serve: declined");
            return send(&Reply::Declined(why.to_owned()));
        }
        // Held until the invocation has ended, past an early answer.
        let _attachment = self.inflight.hold(attachment_of(&req.env));
        let Some(_slot) = Slot::take(&self.active) else {
            return send(&Reply::Declined(format!(
                "busy: {MAX_ACTIVE} invocations in progress"
            )));
        };
        let answered = AtomicBool::new(false);
        let cut_off = || {
            if !answered.swap(true, Ordering::AcqRel) {
                crate::metrics::note_answered();
                send(&Reply::Answered {
                    stdout: String::new(),
                    exit_code: 0,
                });
            }
        };
        let is_del = req
            .env
            .iter()
            .any(|(k, v)| k == "CNI_COMMAND" && v == "DEL");
        let ctx = crate::commands::Context {
            daemon: Some("served"),
            on_cut_off: if is_del { Some(&cut_off) } else { None },
        };
        let reply = crate::commands::run_in(&req.env, &req.stdin, ctx);
        if !answered.load(Ordering::Acquire) {
            send(&Reply::Answered {
                stdout: reply.stdout,
                exit_code: reply.exit_code,
            });
        } else if reply.exit_code != 0 {
            tracing::warn!(
                answer = %reply.stdout,
                "tenet serve: a DEL answered once the pod was cut off failed after; \
                 the attachment's record remains for GC to finish"
            );
        }
    }
}

/// The attachment an invocation is about, as far as the daemon
/// serialises them: (container id, interface name); `None` for commands
/// without one (GC, STATUS, VERSION).
fn attachment_of(env: &[(String, String)]) -> Option<(String, String)> {
    let get = |name: &str| {
        env.iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    Some((get("CNI_CONTAINERID")?, get("CNI_IFNAME")?))
}

/// The attachments with an invocation in progress in the daemon: a second
/// invocation for one of them waits for the first to end (the runtime
/// serialises them anyway; an early-answered DEL would otherwise still be
/// running).
#[derive(Default)]
struct Inflight {
    keys: Mutex<HashSet<(String, String)>>,
    done: Condvar,
}

impl Inflight {
    /// Waits until no invocation holds `key`, then holds it until the
    /// guard is dropped (`None`: nothing to hold).
    fn hold(&self, key: Option<(String, String)>) -> Option<Held<'_>> {
        let key = key?;
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        while keys.contains(&key) {
            keys = self.done.wait(keys).unwrap_or_else(|e| e.into_inner());
        }
        keys.insert(key.clone());
        Some(Held { set: self, key })
    }
}

/// An attachment held in [`Inflight`].
struct Held<'a> {
    set: &'a Inflight,
    key: (String, String),
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut keys = self.set.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.remove(&self.key);
        drop(keys);
        self.set.done.notify_all();
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
        // Loaded now (and kept) rather than by the first pod, beside the
        // accept loop: a client is greeted at once, not after the load (a
        // pod meanwhile loads its own, and both are kept).
        let warm_up = move || match crate::commands::load_pipeline(&cfg) {
            Ok(lease) => drop(lease),
            Err(e) => {
                tracing::warn!(code = e.code, msg = %e.msg, details = %e.details, "tenet serve: the configured pipeline does not load yet")
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("tenet-warm-up".into())
            .spawn(warm_up)
        {
            tracing::warn!(error = %e, "tenet serve: no warm-up thread; the first pod loads the pipeline");
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
    fn an_attachment_in_progress_makes_the_next_invocation_for_it_wait() {
        let set = Inflight::default();
        let key = || Some(("c1".to_owned(), "eth0".to_owned()));
        let first = set.hold(key()).unwrap();
        // Another attachment and keyless commands do not wait.
        let other = set.hold(Some(("c2".into(), "eth0".into())));
        assert!(other.is_some() && set.hold(None).is_none());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let _second = set.hold(key()).unwrap();
                tx.send(()).unwrap();
            });
            // Still held: the second is waiting.
            assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
            drop(first);
            rx.recv_timeout(Duration::from_secs(30))
                .expect("runs once the first ended");
        });
        assert_eq!(set.keys.lock().unwrap().len(), 1, "only c2 is left held");
    }

    /// The ids of this process's `tenet-serve` threads, sorted.
    fn acceptor_tids() -> Vec<String> {
        let mut tids: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let t = t.unwrap();
                let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                (comm.trim() == "tenet-serve").then(|| t.file_name().to_string_lossy().into())
            })
            .collect();
        tids.sort();
        tids
    }

    fn acceptor_threads() -> usize {
        acceptor_tids().len()
    }

    #[test]
    fn concurrent_clients_are_each_served_and_the_acceptors_settle() {
        use crate::serve::client::{Forwarded, forward};
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tenet.sock");
        let server: &'static Server = Box::leak(Box::new(Server::bind(&socket).unwrap()));
        std::thread::spawn(move || server.run());
        // An unknown command: answered by the daemon (an error document),
        // with nothing to set up and nothing written outside `dir`.
        let env: Vec<(String, String)> = [
            ("CNI_COMMAND", "NOPE"),
            ("TENET_CONFIG", "/dev/null"),
            (
                "TENET_STATE_DIR",
                dir.path().join("state").to_str().unwrap(),
            ),
            (crate::serve::SOCKET_ENV, socket.to_str().unwrap()),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec();
        for round in 0..3 {
            let replies: Vec<Forwarded> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..12).map(|_| s.spawn(|| forward(&env, b"{}"))).collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for r in replies {
                match r {
                    Forwarded::Answered(r) => {
                        assert_ne!(r.exit_code, 0, "round {round}");
                        assert!(r.stdout.contains("\"code\""), "round {round}: {}", r.stdout);
                    }
                    other => panic!("round {round}: not served: {other:?}"),
                }
            }
        }
        // The burst started acceptors; the ones beyond the spares end as
        // later connections come (each ends one), down to the spares: the
        // main acceptor (this test's unnamed thread) and one more.
        let peak = acceptor_threads();
        for _ in 0..(peak + 2) {
            assert!(matches!(forward(&env, b"{}"), Forwarded::Answered(_)));
        }
        // (A client has its answer a moment before its acceptor is idle
        // again or gone: wait for the state, within a generous bound.)
        let spares_only = || {
            acceptor_threads() == SPARE_ACCEPTORS - 1
                && server.idle.load(Ordering::Acquire) == SPARE_ACCEPTORS
        };
        assert!(
            settles(spares_only),
            "after a peak of {peak}: {} left",
            acceptor_threads()
        );
        // Steady: a sequence of clients starts no thread.
        let before = acceptor_tids();
        for _ in 0..5 {
            assert!(matches!(forward(&env, b"{}"), Forwarded::Answered(_)));
            assert!(settles(spares_only), "{} acceptors", acceptor_threads());
        }
        assert_eq!(acceptor_tids(), before);
    }

    /// True once `cond` holds, polled for up to 10 s.
    fn settles(cond: impl Fn() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
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
