//! Helpers for root tests of the data plane: network namespaces that live only
//! as long as a thread (or the test), so nothing leaks when a test fails and
//! nothing ever touches the machine's own interfaces.
//!
//! The pattern: the test thread calls [`enter_scratch_node`] and becomes the
//! "node"; each pod is a [`ScratchNetns`], a parked thread in its own fresh
//! namespace whose `/proc/<pid>/task/<tid>/ns/net` path is the pod's
//! `CNI_NETNS`. Threads spawned by the test thread start in the node
//! namespace, and so do the processes it runs (`nft`, `ip`).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::thread::JoinHandle;

use nix::sched::{CloneFlags, unshare};

use super::guard::{NetnsFile, THREAD_SELF_NETNS, run_in};

/// True when running as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// For root test tiers: panics unless running as root. Those tests are
/// `#[ignore]`d (plain `cargo test` lists them as ignored); `make test` runs
/// them as root with `--include-ignored`, and one run without root fails
/// loudly here rather than passing without testing anything.
pub fn require_root(what: &str) {
    assert!(
        is_root(),
        "{what} needs root (it runs in private network namespaces): run it as root, e.g. `make test`"
    );
}

fn ns_ino(path: &str) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// Moves the calling thread into a new, empty network namespace with `lo`
/// up, and checks that it really left the namespace it was in and is not the
/// machine's (pid 1's). Call it first in every root test.
pub fn enter_scratch_node() -> io::Result<()> {
    let before = ns_ino(THREAD_SELF_NETNS)?;
    unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let after = ns_ino(THREAD_SELF_NETNS)?;
    let machine = ns_ino("/proc/1/ns/net").ok();
    if after == before || Some(after) == machine {
        return Err(io::Error::other(
            "unshare did not give this thread its own netns",
        ));
    }
    lo_up()
}

fn lo_up() -> io::Result<()> {
    let out = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip link set lo up: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// A pod-like namespace held by a parked thread. Dropping it ends the thread
/// and the namespace with it (veths inside are destroyed by the kernel).
pub struct ScratchNetns {
    path: PathBuf,
    file: Option<NetnsFile>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ScratchNetns {
    /// A fresh namespace with `lo` up.
    pub fn new() -> io::Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<PathBuf>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("scratch-netns".into())
            .spawn(move || {
                let r = (|| {
                    unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                    lo_up()?;
                    // "<pid>/task/<tid>": stable while this thread lives.
                    let me = std::fs::read_link("/proc/thread-self")?;
                    Ok(Path::new("/proc").join(me).join("ns/net"))
                })();
                let ok = r.is_ok();
                let _ = ready_tx.send(r);
                if ok {
                    // Parked until the owner drops its sender.
                    let _ = stop_rx.recv();
                }
            })?;
        let path = ready_rx
            .recv()
            .map_err(|_| io::Error::other("scratch netns thread died"))??;
        let file = NetnsFile::open(&path).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self {
            path,
            file: Some(file),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The namespace's path, usable as `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a helper thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = self.file.as_ref().expect("open until drop");
        run_in(file, f).expect("enter scratch netns")
    }

    /// Runs a program inside the namespace (through `nsenter`).
    pub fn cmd(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        let mut net = std::ffi::OsString::from("--net=");
        net.push(&self.path);
        Command::new("nsenter")
            .arg(net)
            .arg(program)
            .args(args)
            .output()
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        self.file.take();
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
