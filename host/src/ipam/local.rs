//! The embedded default address store: files under a state directory.
//!
//! # On-disk layout
//!
//! ```text
//! <state_dir>/ipam/                       (0700)
//!   <network>/                            (0700, one per network; the name is validated)
//!     lock                                flock(LOCK_EX) held by every writer
//!     state.json                          the whole state of the network (0600)
//!     .state.json.tmp-<pid>-<nanos>       a write in progress (or left by a crash)
//! ```
//!
//! `state.json` holds the format version, a generation counter bumped on
//! every write, the pools as last requested with each tenant's subnet (its
//! next-fit cursor, addresses cooling down with their release times, and
//! when it became empty), and the attachment records: owner key, tenant,
//! claim state, the pending claimer (pid, process start time, deadline) and
//! the allocations. The records are the only statement of which address is
//! taken; the per-subnet index is rebuilt from them on load.
//!
//! # Concurrency
//!
//! Every mutation holds an exclusive `flock` on `<network>/lock` from load
//! to commit, so concurrent CNI processes (and threads: each operation opens
//! its own file description) serialise per network — never across networks.
//! The lock is polled with a bounded wait ([`LocalOptions::lock_timeout`]);
//! running out is [`IpamError::LockTimeout`], CNI code 11, so the runtime
//! retries. The kernel drops the lock when the holder dies, so a crashed
//! process cannot wedge the store.
//!
//! # Crash safety
//!
//! A write goes to a fresh temp file in the same directory and is renamed
//! over `state.json`. `rename(2)` replaces the name atomically, so at every
//! instant `state.json` is either the complete old state or the complete
//! new one, whichever step a killed process interrupts.
//!
//! Writes are not fsynced. What this store holds describes this node's
//! pods, and a power cut (or a kernel crash) takes them all with it: their
//! namespaces and veths live in memory. A cut may roll `state.json` back to
//! an earlier version, which only re-claims addresses of pods that are gone
//! (the runtime's DEL and GC free them), or, on a filesystem without
//! rename-over heuristics, leave it torn or empty. A torn file written in
//! an earlier boot is set aside as `state.json.torn-<time>` and the network
//! starts empty; the [`boot`](super::boot) marker, written durably before
//! a boot's first unsynced write, is what tells it from a file that is
//! corrupt while its pods still run (an error, below). Without a boot id
//! from the kernel every write is fsynced instead.
//! Readers only ever open `state.json`, so they need no lock and never see a
//! partial file; a temp file left by a crash is ignored by readers and
//! deleted by the next writer (which, holding the lock, knows no write is in
//! progress). Because one operation's whole effect is one rename, a
//! dual-stack reservation is all or nothing on disk too.
//!
//! The price is that each write rewrites the network's state: linear in its
//! attachments (about 200 bytes each), which is right for one machine's pods
//! but not for tens of thousands; the allocation itself stays flat as a
//! subnet fills (see `alloc`). An unparsable `state.json` of this boot is
//! never overwritten: it is reported as [`IpamError::Corrupt`] (code 138,
//! `codes::STORE_FAILURE`) for an operator to inspect.

use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::alloc::{Claim, Ctx, NetworkState};
use super::boot;
use super::{
    Allocation, AttachmentKey, ClaimState, GcReport, IpStore, IpamError, TenantSubnet,
    validate_network_name,
};
use crate::plan::AddressSpec;

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";

/// Tuning of a [`LocalStore`].
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// How long a mutation waits for the network's lock before failing with
    /// code 11 (try again later). Default 10 s.
    pub lock_timeout: Duration,
    /// How long a released address (and a tenant's emptied subnet) is held
    /// back before reuse. Default 30 s.
    pub cooldown: Duration,
    /// How long a pending claim may stay unconfirmed before it counts as
    /// stale even if its process still runs. Default 5 min.
    pub pending_timeout: Duration,
    /// The process recorded as the claimer of pending claims. `None` (the
    /// default) means this process, which is right for the CNI binary; a
    /// long-lived daemon serving CNI calls would name its caller.
    pub claimer: Option<ProcessIdentity>,
    /// The clock cooldowns and stale claims are decided on (the system's;
    /// tests step a [`ManualClock`](super::ManualClock)).
    pub clock: std::sync::Arc<dyn super::Clock>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            lock_timeout: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
            pending_timeout: Duration::from_secs(300),
            claimer: None,
            clock: super::clock::system(),
        }
    }
}

/// A process, identified robustly against pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

impl ProcessIdentity {
    /// This process.
    pub fn current() -> Self {
        let pid = std::process::id();
        // /proc is always there for ourselves on Linux; if it is not, a zero
        // start time still identifies us until the pid is reused.
        Self::of(pid).unwrap_or(ProcessIdentity { pid, start_time: 0 })
    }

    /// The running (not zombie) process `pid`, if there is one.
    pub fn of(pid: u32) -> Option<Self> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may itself contain spaces
        // or parentheses: the fields we want follow the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let state = *fields.first()?;
        if state == "Z" || state == "X" {
            return None;
        }
        // Field 22 overall is index 19 after the name (fields 3.. start at 0).
        let start_time = fields.get(19)?.parse().ok()?;
        Some(ProcessIdentity { pid, start_time })
    }

    /// True while this very process (same pid, same start time) runs.
    pub fn is_alive(&self) -> bool {
        Self::of(self.pid).is_some_and(|p| p.start_time == self.start_time)
    }
}

/// Address store in local files, one state file per network (see the
/// module documentation for the layout and the crash-safety argument).
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    options: LocalOptions,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A pending claim is stale when its deadline passed or its process is gone.
fn claim_is_stale(c: &Claim, now: u64) -> bool {
    now >= c.deadline_ms
        || !ProcessIdentity {
            pid: c.pid,
            start_time: c.start_time,
        }
        .is_alive()
}

fn create_private_dir(path: &Path) -> Result<(), IpamError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| IpamError::io(format!("creating {}", path.display()), e))
}

fn fsync_dir(dir: &Path) -> Result<(), IpamError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| IpamError::io(format!("syncing directory {}", dir.display()), e))
}

/// Replaces `dir/name` with `bytes` atomically and durably: temp file,
/// write, fsync, rename, fsync the directory.
fn atomic_write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), IpamError> {
    atomic_write_with(dir, name, bytes, Durability::Full)
}

/// How much of a write must survive a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// No fsync: a crash of the process still leaves the old or the new
    /// file (rename is atomic); a power cut may lose the write and, on a
    /// filesystem without rename-over heuristics, leave an empty file.
    None,
    /// The new file's data is fsynced before the rename, the directory is
    /// not: after a power cut `state.json` is the complete old or new
    /// version, never a torn or empty one; only the newest renames may be
    /// rolled back to an earlier complete version.
    Data,
    /// Data and the directory: the write survives a power cut.
    Full,
}

/// [`atomic_write`], with only the fsyncs `sync` asks for.
fn atomic_write_with(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    sync: Durability,
) -> Result<(), IpamError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
    let target = dir.join(name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if sync != Durability::None {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, &target)
    })();
    if let Err(e) = result {
        // Best effort: a leftover temp file is harmless, only untidy.
        let _ = fs::remove_file(&tmp);
        return Err(IpamError::io(format!("writing {}", target.display()), e));
    }
    if sync == Durability::Full {
        fsync_dir(dir)
    } else {
        Ok(())
    }
}

/// Loads a state file; a missing file is an empty state.
fn load(path: &Path) -> Result<NetworkState, IpamError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(NetworkState::new()),
        Err(e) => return Err(IpamError::io(format!("reading {}", path.display()), e)),
    };
    let corrupt = |detail: String| IpamError::Corrupt {
        path: path.display().to_string(),
        detail,
    };
    let mut st: NetworkState =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    st.rebuild_index().map_err(corrupt)?;
    Ok(st)
}

/// [`load`], except that a state written without fsync before a reboot and
/// left unparsable by it reads as empty, with `true`: the caller holding
/// the lock sets it aside (module documentation, "Crash safety").
fn load_or_torn(path: &Path, marker: boot::Marker) -> Result<(NetworkState, bool), IpamError> {
    match load(path) {
        Ok(st) => Ok((st, false)),
        Err(IpamError::Corrupt { detail, .. })
            if marker == boot::Marker::AnotherBoot && !well_formed_json(path) =>
        {
            tracing::warn!(path = %path.display(), %detail,
                "state written before a reboot is torn; its pods are gone with that boot: starting empty");
            Ok((NetworkState::new(), true))
        }
        Err(e) => Err(e),
    }
}

/// True when `path` holds well-formed JSON: then it is not torn, only not
/// what this version reads (a newer format, say), and stays an error.
fn well_formed_json(path: &Path) -> bool {
    fs::read(path).is_ok_and(|b| serde_json::from_slice::<serde::de::IgnoredAny>(&b).is_ok())
}

/// Moves a torn state out of the way, keeping it for an operator to look
/// at: `state.json.torn-<unix seconds>`.
fn set_aside(path: &Path) -> Result<(), IpamError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let kept = path.with_extension(format!("json.torn-{secs}"));
    fs::rename(path, &kept)
        .map_err(|e| IpamError::io(format!("setting {} aside", path.display()), e))?;
    tracing::warn!(path = %kept.display(), "torn state kept");
    Ok(())
}

/// Holds a network's lock until dropped (closing the file releases flock).
struct LockGuard {
    _file: File,
}

impl LocalStore {
    /// Opens (creating if needed) the store under `<state_dir>/ipam`.
    pub fn open(state_dir: impl AsRef<Path>, options: LocalOptions) -> Result<Self, IpamError> {
        let root = state_dir.as_ref().join("ipam");
        create_private_dir(&root)?;
        Ok(LocalStore { root, options })
    }

    /// The directory holding one network's state.
    pub fn network_dir(&self, network: &str) -> Result<PathBuf, IpamError> {
        validate_network_name(network)?;
        Ok(self.root.join(network))
    }

    fn lock(&self, network: &str, dir: &Path) -> Result<LockGuard, IpamError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| IpamError::io(format!("opening {}", path.display()), e))?;
        let start = Instant::now();
        let mut backoff = Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(LockGuard { _file: file }),
                Err(TryLockError::WouldBlock) => {
                    let waited = start.elapsed();
                    if waited >= self.options.lock_timeout {
                        return Err(IpamError::LockTimeout {
                            network: network.to_owned(),
                            waited,
                        });
                    }
                    // Polling with a short capped backoff: a blocking flock
                    // cannot be given a timeout without signals.
                    std::thread::sleep(backoff.min(self.options.lock_timeout - waited));
                    backoff = (backoff * 2).min(Duration::from_millis(20));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(IpamError::io(format!("locking {}", path.display()), e));
                }
            }
        }
    }

    /// Runs `f` on the network's state under its lock and commits the state
    /// if `f` says it changed. Nothing is written when `f` fails.
    fn mutate<T>(
        &self,
        network: &str,
        f: impl FnOnce(&mut NetworkState, Ctx<'_>) -> Result<(T, bool), IpamError>,
    ) -> Result<T, IpamError> {
        let dir = self.network_dir(network)?;
        if !dir.is_dir() {
            create_private_dir(&dir)?;
            fsync_dir(&self.root)?;
        }
        let _guard = self.lock(network, &dir)?;
        remove_stray_temp_files(&dir);
        let path = dir.join(STATE_FILE);
        let marker = boot::marker(&dir);
        let (mut st, torn) = load_or_torn(&path, marker)?;
        if torn {
            set_aside(&path)?;
        }
        let ctx = Ctx {
            network,
            now_ms: self.options.clock.now_ms(),
            cooldown_ms: millis(self.options.cooldown),
            is_stale: &claim_is_stale,
        };
        let housekept = st.housekeep(ctx.now_ms, ctx.cooldown_ms);
        let (out, changed) = f(&mut st, ctx)?;
        if changed || housekept {
            st.generation += 1;
            let bytes = serde_json::to_vec(&st).map_err(|e| IpamError::Corrupt {
                path: path.display().to_string(),
                detail: format!("cannot serialise state: {e}"),
            })?;
            // This boot's first write here marks the directory durably
            // first; from then on a torn state.json can only be an earlier
            // boot's (module documentation, `boot`).
            let sync = match (marker, boot::this_boot()) {
                (boot::Marker::ThisBoot, _) => Durability::None,
                (_, Some(id)) => {
                    atomic_write_with(&dir, boot::MARKER, id.as_bytes(), Durability::Full)?;
                    Durability::None
                }
                (_, None) => Durability::Data,
            };
            atomic_write_with(&dir, STATE_FILE, &bytes, sync)?;
            tracing::debug!(network, generation = st.generation, "ipam state written");
        }
        Ok(out)
    }

    /// Reads a network's state without the lock (renames are atomic, so this
    /// is always a complete version). A state torn before a reboot reads as
    /// empty, as the next writer will find it.
    fn read(&self, network: &str) -> Result<NetworkState, IpamError> {
        let dir = self.network_dir(network)?;
        load_or_torn(&dir.join(STATE_FILE), boot::marker(&dir)).map(|(st, _)| st)
    }

    /// Network names that have state, sorted.
    fn networks(&self) -> Result<Vec<String>, IpamError> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(IpamError::io(format!("listing {}", self.root.display()), e)),
        };
        for entry in rd {
            let entry =
                entry.map_err(|e| IpamError::io(format!("listing {}", self.root.display()), e))?;
            if let Some(name) = entry.file_name().to_str()
                && validate_network_name(name).is_ok()
                && entry.path().is_dir()
            {
                out.push(name.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    fn claim(&self, now: u64) -> Claim {
        let who = self
            .options
            .claimer
            .unwrap_or_else(ProcessIdentity::current);
        Claim {
            pid: who.pid,
            start_time: who.start_time,
            deadline_ms: now.saturating_add(millis(self.options.pending_timeout)),
        }
    }

    fn selected(&self, network: Option<&str>) -> Result<Vec<String>, IpamError> {
        match network {
            Some(n) => {
                validate_network_name(n)?;
                Ok(vec![n.to_owned()])
            }
            None => self.networks(),
        }
    }
}

/// Deletes temp files left by crashed writers. Called with the lock held,
/// when no write can be in progress. Failures are only logged: a stray temp
/// file is never read.
fn remove_stray_temp_files(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for entry in rd.flatten() {
        let name = entry.file_name();
        // `.state.json.tmp-…` and `.boot.tmp-…` (`atomic_write_with`).
        if name
            .to_str()
            .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"))
        {
            match fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(path = %entry.path().display(), "removed stray temp file"),
                Err(e) => tracing::warn!(path = %entry.path().display(), error = %e,
                    "cannot remove stray temp file"),
            }
        }
    }
}

impl LocalStore {
    /// Reserve (and, when `confirm`, confirm in the same write) under one
    /// lock: `IpStore::reserve` and `IpStore::claim`.
    fn reserve_and(
        &self,
        key: &AttachmentKey,
        tenant: &str,
        requests: &[AddressSpec],
        confirm: bool,
    ) -> Result<Vec<Allocation>, IpamError> {
        key.validate()?;
        let out = self.mutate(&key.network, |st, ctx| {
            let claim = self.claim(ctx.now_ms);
            let (out, reserved) = st.reserve(ctx, key, tenant, requests, claim)?;
            let confirmed = confirm && st.confirm(key)?;
            Ok((out, reserved || confirmed))
        })?;
        tracing::debug!(%key, tenant, confirm, addresses = ?out.iter().map(|a| a.address).collect::<Vec<_>>(),
            "reserved");
        Ok(out)
    }
}

impl IpStore for LocalStore {
    fn reserve(
        &self,
        key: &AttachmentKey,
        tenant: &str,
        requests: &[AddressSpec],
    ) -> Result<Vec<Allocation>, IpamError> {
        self.reserve_and(key, tenant, requests, false)
    }

    fn confirm(&self, key: &AttachmentKey) -> Result<(), IpamError> {
        key.validate()?;
        self.mutate(&key.network, |st, _| st.confirm(key).map(|c| ((), c)))
    }

    /// Reserve and confirm under one lock with one write: the same end
    /// state as the two steps, for one load, one rename and one set of
    /// fsyncs instead of two. No pending claim reaches the disk; a crash
    /// before the rename leaves nothing, after it a confirmed claim that the
    /// attachment record (written before) lets DEL and GC free.
    fn claim(
        &self,
        key: &AttachmentKey,
        tenant: &str,
        requests: &[AddressSpec],
    ) -> Result<Vec<Allocation>, IpamError> {
        self.reserve_and(key, tenant, requests, true)
    }

    fn release(&self, key: &AttachmentKey) -> Result<Vec<Allocation>, IpamError> {
        key.validate()?;
        // DEL of a network we never saw must not create its directory.
        if !self.network_dir(&key.network)?.is_dir() {
            return Ok(Vec::new());
        }
        let out = self.mutate(&key.network, |st, ctx| {
            let freed = st.release(key, ctx.now_ms);
            let changed = !freed.is_empty();
            Ok((freed, changed))
        })?;
        if !out.is_empty() {
            tracing::debug!(%key, count = out.len(), "released");
        }
        Ok(out)
    }

    fn gc(&self, network: &str, valid: &[(String, String)]) -> Result<GcReport, IpamError> {
        if !self.network_dir(network)?.is_dir() {
            return Ok(GcReport::default());
        }
        let report = self.mutate(network, |st, ctx| {
            let r = st.gc(ctx, valid);
            let changed = !r.released.is_empty();
            Ok((r, changed))
        })?;
        if !report.released.is_empty() {
            tracing::info!(network, released = ?report.released, "gc freed attachments");
        }
        Ok(report)
    }

    fn list(
        &self,
        network: Option<&str>,
    ) -> Result<Vec<(AttachmentKey, Allocation, ClaimState)>, IpamError> {
        let mut out = Vec::new();
        for n in self.selected(network)? {
            out.extend(self.read(&n)?.rows(&n));
        }
        Ok(out)
    }

    fn tenant_subnets(&self, network: Option<&str>) -> Result<Vec<TenantSubnet>, IpamError> {
        let mut out = Vec::new();
        for n in self.selected(network)? {
            out.extend(self.read(&n)?.subnets(&n));
        }
        Ok(out)
    }

    fn status(&self) -> Result<(), IpamError> {
        create_private_dir(&self.root)?;
        // Prove the directory takes a durable write the way commits do.
        let name = format!(".status-probe-{}", std::process::id());
        let probe = self.root.join(&name);
        atomic_write(&self.root, &name, b"ok")?;
        fs::remove_file(&probe)
            .map_err(|e| IpamError::io(format!("removing {}", probe.display()), e))?;
        for n in self.networks()? {
            self.read(&n)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_identity_tells_live_from_dead() {
        let me = ProcessIdentity::current();
        assert!(me.start_time > 0);
        assert!(me.is_alive());
        let recycled = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!recycled.is_alive(), "a reused pid is not the claimer");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(ProcessIdentity::of(pid).is_none());
    }

    #[test]
    fn a_claim_is_one_confirmed_write_and_idempotent() {
        use crate::plan::{IpFamily, PoolSpec};
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), LocalOptions::default()).unwrap();
        let key = AttachmentKey::new("net", "c1", "eth0");
        let req = AddressSpec {
            family: IpFamily::Ipv4,
            pool: Some(PoolSpec {
                name: "pods".into(),
                supernet: "10.9.0.0/16".parse().unwrap(),
                subnet_len: 24,
                exclude: vec![],
            }),
            static_address: None,
        };
        let got = IpStore::claim(&store, &key, "t", std::slice::from_ref(&req)).unwrap();
        assert_eq!(got.len(), 1);
        let st = store.read("net").unwrap();
        assert_eq!(st.generation, 1, "reserve and confirm in one write");
        let rows = store.list(Some("net")).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].2, ClaimState::Confirmed);
        // Again: the same address, nothing written.
        let again = IpStore::claim(&store, &key, "t", &[req]).unwrap();
        assert_eq!(again, got);
        assert_eq!(store.read("net").unwrap().generation, 1);
        // A release is one more write and frees it.
        assert_eq!(store.release(&key).unwrap().len(), 1);
        assert_eq!(store.read("net").unwrap().generation, 2);
        assert!(store.list(Some("net")).unwrap().is_empty());
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        atomic_write(dir.path(), "f", b"one").unwrap();
        atomic_write(dir.path(), "f", b"two").unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    }
}
