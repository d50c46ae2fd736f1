//! Whole-process CNI ADD and DEL: `tenet` (embedded default: local address
//! store, Linux bridge + nftables, rtnetlink; artifacts precompiled by
//! `tenetctl policy compile`) against the reference `bridge` + `host-local`
//! plugins from Debian's containernetworking-plugins, on both shipped
//! pipelines in the same run: **rainbond** (`policies/rainbond.toml`: eth0 on
//! the tenant bridge and an `eth1` host link) and **single-tenant**
//! (`policies/single-tenant.toml`: eth0 only).
//!
//! Everything runs in scratch network namespaces this program creates: the
//! main thread calls `unshare(CLONE_NEWNET)` before any other thread exists,
//! so every thread and child starts there; then each arm (each plugin under
//! test) gets a node namespace of its own, held by a thread that unshares
//! again and execs that arm's plugin (a child inherits the namespaces of the
//! thread that spawns it), and pod namespaces are held by parked threads. The
//! machine's own interfaces, routes and firewall are never touched; the
//! namespaces vanish when the program exits.
//!
//! Each arm keeps one resident pod attached for the whole run (a node already
//! has pods, so the tenant bridge, its rules and the reference bridge exist),
//! and its measured pod is added and deleted once per iteration. A run is
//! `BENCH_ROUNDS` rounds (default 4) of 3 warm-up and `BENCH_RUNS` measured
//! iterations (default 15); in each iteration every arm does one ADD and one
//! DEL, the arms in turn, and which arm goes first rotates from one iteration
//! to the next, so machine drift hits all of them alike. Per round it prints
//! each arm's median ADD and DEL and the ratios tenet / reference; at the end
//! the median of the per-round ratios and their range, per pipeline, and the
//! peak RSS of one ADD per arm (`ru_maxrss` from `wait4`, children included).
//!
//! Environment:
//! - `BENCH_ROUNDS` (4), `BENCH_RUNS` (15): rounds and measured iterations per
//!   round.
//! - `BENCH_LOAD=cpu`: one CPU-bound busy loop (`sh -c 'while :; do :; done'`)
//!   per online CPU for the whole run, the "busy node" figure; killed at the
//!   end, on failure, and (`PR_SET_PDEATHSIG`) if this program dies. Default:
//!   no load ("quiet"; the load average at start and end is printed either way).
//! - `BENCH_DAEMON=off`: without the arms through the node daemon. By
//!   default each pipeline also has a "tenet (daemon)" arm: `tenet serve`
//!   in that arm's node namespace, and the same execs with `TENET_SOCKET`;
//!   the ratios daemon / reference and daemon / one-shot, and the daemon's
//!   peak RSS, are printed. The daemon answers a DEL before it has ended
//!   (docs/runtimes.md), so the bench waits, untimed, for that DEL's exec
//!   record before the next ADD of the same pod.
//! - `BENCH_BASELINE_DIR=/dir`: a directory with `tenet`, `tenetctl` and
//!   `modules/` from an older build; adds a "tenet (baseline)" arm per
//!   pipeline (its own tenetctl, cache and state) and the ratios new /
//!   baseline. The pipelines are this tree's `policies/*.toml`.
//! - `BENCH_BIN_DIR` (`<workspace>/target/release`) and `TENET_TEST_MODULES`
//!   (`<workspace>/target/modules`): the `tenet`, `tenetctl` and modules under
//!   test.
//!
//! Last, it prints a shell script that reproduces the figures with public
//! tools only (`unshare`, `nsenter`, `hyperfine`, `jq`): the same netconfs,
//! environment, namespaces and alternation, each operation timed by hyperfine
//! with the other half as an untimed `--prepare`.
//!
//! `make bench-add` (root), or `cargo run --release -p tenet-bench --bin
//! add_del` after `make build guests`.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The measured pod's container id (the same in every iteration, as in the
/// hyperfine script) and the resident pod's.
const MEASURED_ID: &str = "bench";
const RESIDENT_ID: &str = "resident";
/// Untimed iterations at the start of every round (hyperfine's `--warmup`).
const WARMUP: usize = 3;
const PATH_ENV: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
const CNI_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-0";
const REFERENCE_BIN: &str = "/usr/lib/cni/bridge";

/// The shipped pipelines: (name, tag for file and function names, file).
const PIPELINES: [(&str, &str, &str); 2] = [
    ("rainbond", "rainbond", "policies/rainbond.toml"),
    ("single-tenant", "single", "policies/single-tenant.toml"),
];

/// The background load's children, killed by `stop_load` (also from `die`).
static LOAD: Mutex<Vec<Child>> = Mutex::new(Vec::new());
/// The run's temporary directory, removed by `die` too.
static TMP: Mutex<Option<PathBuf>> = Mutex::new(None);

fn root() -> PathBuf {
    // tests/bench -> the workspace root.
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

fn die(msg: &str) -> ! {
    eprintln!("add_del: {msg}");
    stop_load();
    if let Some(t) = TMP.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = std::fs::remove_dir_all(t);
    }
    std::process::exit(1)
}

fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(s) if s.is_empty() => default,
        Ok(s) => match s.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => die(&format!("{name}={s}: expected a positive integer")),
        },
    }
}

fn env_path(name: &str, default: PathBuf) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => {
            let p = PathBuf::from(v);
            p.canonicalize().unwrap_or(p)
        }
        _ => default,
    }
}

fn must_file(p: PathBuf, hint: &str) -> PathBuf {
    if !p.is_file() {
        die(&format!("{} missing: {hint}", p.display()));
    }
    p
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unreadable ({e})"))
}

fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 1 { 1 } else { n as usize }
}

/// Starts one CPU-bound child per online CPU. Each dies with this process's
/// main thread (`PR_SET_PDEATHSIG`) even if `stop_load` never runs.
fn start_load(n: usize) {
    let mut children = Vec::with_capacity(n);
    for _ in 0..n {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                LOAD.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(children);
                die(&format!("spawn the load: {e}"));
            }
        }
    }
    LOAD.lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(children);
}

fn stop_load() {
    let children = std::mem::take(&mut *LOAD.lock().unwrap_or_else(|p| p.into_inner()));
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn ns_ino(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| die(&format!("{path}: {e}")))
        .ino()
}

/// `ip link set lo up` in the calling thread's network namespace.
fn lo_up() {
    let st = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap_or_else(|e| die(&format!("ip: {e}")));
    if !st.success() {
        die("ip link set lo up failed");
    }
}

/// Network namespaces no scratch namespace may be: the one this program
/// started in and pid 1's (unreadable in some containers).
#[derive(Clone, Copy)]
struct Forbidden {
    start: u64,
    pid1: Option<u64>,
}

impl Forbidden {
    /// Unshares the calling thread's network namespace and proves the new
    /// one is neither the machine's nor any in `also`.
    fn unshare_here(self, also: &[u64]) -> Result<u64, String> {
        // SAFETY: plain syscall with a constant flag, on this thread only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNET): {} (run as root)",
                std::io::Error::last_os_error()
            ));
        }
        let ino = ns_ino("/proc/thread-self/ns/net");
        if ino == self.start || Some(ino) == self.pid1 || also.contains(&ino) {
            return Err("unshare did not give this thread its own netns".into());
        }
        Ok(ino)
    }
}

/// Moves the calling thread (the main thread, before any other exists) into
/// a fresh network namespace, and proves it is not the machine's.
fn enter_scratch() -> (Forbidden, u64) {
    let forbidden = Forbidden {
        start: ns_ino("/proc/thread-self/ns/net"),
        pid1: std::fs::metadata("/proc/1/ns/net")
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m)),
    };
    let scratch = forbidden.unshare_here(&[]).unwrap_or_else(|e| die(&e));
    lo_up();
    (forbidden, scratch)
}

/// A pod namespace held by a parked thread; its path is the `CNI_NETNS`.
struct Pod {
    path: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pod {
    fn new(forbidden: Forbidden, scratch: u64) -> Pod {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(e) = forbidden.unshare_here(&[scratch]) {
                let _ = ready_tx.send(Err(e));
                return;
            }
            lo_up();
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let path = PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id()));
            let _ = ready_tx.send(Ok(path));
            let _ = stop_rx.recv();
        });
        let path = ready_rx
            .recv()
            .unwrap_or_else(|_| die("pod thread died"))
            .unwrap_or_else(|e| die(&format!("pod netns: {e}")));
        Pod {
            path,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One plugin under test: the binary, its stdin, its extra environment.
#[derive(Clone)]
struct Plugin {
    bin: PathBuf,
    netconf: String,
    env: Vec<(String, String)>,
    /// tenet with its node daemon: `tenet serve` on this socket runs in the
    /// arm's node namespace (same binary, environment and working
    /// directory as the execs, which its identity check requires).
    serve: Option<PathBuf>,
    /// The arm's exec records (daemon arms): the daemon answers a DEL once
    /// the pod is cut off and finishes it after, so before the next ADD of
    /// the same pod the bench waits, untimed, for the DEL's record (a
    /// runtime never re-adds a sandbox id right away).
    records: Option<PathBuf>,
}

/// One exec: wall time, exit status, stdout, peak RSS (KiB, from wait4).
struct Exec {
    elapsed: Duration,
    ok: bool,
    stdout: String,
    stderr: String,
    maxrss_kib: i64,
}

impl Plugin {
    fn exec(&self, command: &str, container_id: &str, netns: &Path) -> Exec {
        let lines = |p: &Path| {
            std::fs::read(p)
                .map(|b| b.iter().filter(|c| **c == b'\n').count())
                .unwrap_or(0)
        };
        let before = self.records.as_deref().map(lines);
        let e = self.exec_once(command, container_id, netns);
        if let (Some(path), Some(n)) = (self.records.as_deref(), before) {
            let until = Instant::now() + Duration::from_secs(30);
            while lines(path) <= n && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        e
    }

    // The child is reaped by wait4 (for its rusage), not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    fn exec_once(&self, command: &str, container_id: &str, netns: &Path) -> Exec {
        let start = Instant::now();
        let mut child = Command::new(&self.bin)
            .env_clear()
            .env("PATH", PATH_ENV)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env("CNI_ARGS", CNI_ARGS)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| die(&format!("spawn {}: {e}", self.bin.display())));
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(self.netconf.as_bytes())
            .expect("write stdin");
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut stdout)
            .expect("read stdout");
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("piped")
            .read_to_string(&mut stderr)
            .expect("read stderr");
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value; wait4 fills it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child; the pointers are valid.
        let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
        let elapsed = start.elapsed();
        if pid < 0 {
            die(&format!("wait4: {}", std::io::Error::last_os_error()));
        }
        Exec {
            elapsed,
            ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            stdout,
            stderr,
            maxrss_kib: ru.ru_maxrss,
        }
    }
}

/// Starts `tenet serve` on `socket` with the execs' environment, in the
/// calling thread's (the node's) namespace, and waits until it listens.
fn start_daemon(plugin: &Plugin, socket: &Path) -> std::process::Child {
    let child = Command::new(&plugin.bin)
        .env_clear()
        .env("PATH", PATH_ENV)
        .envs(plugin.env.iter().map(|(k, v)| (k, v)))
        .arg("serve")
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| die(&format!("spawn {} serve: {e}", plugin.bin.display())));
    let until = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if Instant::now() > until {
            die(&format!(
                "{} serve never listened on {}",
                plugin.bin.display(),
                socket.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// A request to a node thread: one exec of its plugin.
struct Req {
    command: &'static str,
    container_id: &'static str,
    netns: PathBuf,
    reply: mpsc::Sender<Exec>,
}

/// An arm's node namespace, held by a thread that execs the arm's plugin
/// there (its children inherit the thread's namespace).
struct Node {
    tx: Option<mpsc::Sender<Req>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The pid of the arm's `tenet serve`, if it has one.
    daemon: Option<u32>,
}

impl Node {
    fn new(plugin: Plugin, forbidden: Forbidden, scratch: u64) -> Node {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (tx, rx) = mpsc::channel::<Req>();
        let thread = std::thread::spawn(move || {
            if let Err(e) = forbidden.unshare_here(&[scratch]) {
                let _ = ready_tx.send(Err(e));
                return;
            }
            lo_up();
            let mut daemon = plugin.serve.as_deref().map(|s| start_daemon(&plugin, s));
            let _ = ready_tx.send(Ok(daemon.as_ref().map(|c| c.id())));
            for req in rx {
                let e = plugin.exec(req.command, req.container_id, &req.netns);
                let _ = req.reply.send(e);
            }
            if let Some(c) = daemon.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        });
        let daemon = ready_rx
            .recv()
            .unwrap_or_else(|_| die("node thread died"))
            .unwrap_or_else(|e| die(&format!("node netns: {e}")));
        Node {
            tx: Some(tx),
            thread: Some(thread),
            daemon,
        }
    }

    /// The daemon's peak resident memory so far (VmHWM), in KiB.
    fn daemon_hwm_kib(&self) -> Option<i64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.daemon?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    fn exec(&self, command: &'static str, container_id: &'static str, netns: &Path) -> Exec {
        let (reply, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .expect("node running")
            .send(Req {
                command,
                container_id,
                netns: netns.to_path_buf(),
                reply,
            })
            .unwrap_or_else(|_| die("node thread gone"));
        rx.recv().unwrap_or_else(|_| die("node thread gone"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Reference,
    /// Index into `PIPELINES`; baseline build or not; through the node
    /// daemon or one-shot.
    Tenet {
        pipeline: usize,
        baseline: bool,
        daemon: bool,
    },
}

/// One arm: a plugin in its own node namespace with a resident and a
/// measured pod.
struct Arm {
    label: String,
    /// Directory and function name in the hyperfine script.
    tag: String,
    kind: Kind,
    plugin: Plugin,
    /// For the script: how this arm's artifacts are compiled (tenetctl,
    /// pipeline file, module dir).
    compile: Option<(PathBuf, PathBuf, PathBuf)>,
    node: Node,
    resident: Pod,
    measured: Pod,
    add_rss_kib: i64,
}

impl Arm {
    /// Runs and insists on success (a benchmark of failures measures nothing).
    fn must(&self, command: &'static str, container_id: &'static str, resident: bool) -> Exec {
        let pod = if resident {
            &self.resident
        } else {
            &self.measured
        };
        let e = self.node.exec(command, container_id, &pod.path);
        if !e.ok {
            die(&format!(
                "{} {command} failed:\nstdout: {}\nstderr: {}",
                self.label, e.stdout, e.stderr
            ));
        }
        e
    }
}

/// tenet's network configuration: the pipeline, module dir, cache and state
/// are per-network keys, so no /etc/tenet is read (`TENET_CONFIG=/dev/null`).
fn tenet_netconf(pipeline: &str, modules: &str, cache: &str, state: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"tenetbench","type":"tenet","pipeline":"{pipeline}","moduleDirs":["{modules}"],"cacheDir":"{cache}","stateDir":"{state}"}}"#
    )
}

fn reference_netconf(data_dir: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"refbench","type":"bridge","bridge":"refbr0","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","dataDir":"{data_dir}","ranges":[[{{"subnet":"10.99.0.0/24"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}}"#
    )
}

/// Precompiles a pipeline off the hot path, as `tenetctl install` does.
fn compile(tenetctl: &Path, pipeline: &Path, modules: &Path, cache: &Path, what: &str) {
    let out = Command::new(tenetctl)
        .args(["policy", "compile", "--pipeline"])
        .arg(pipeline)
        .arg("--module-dir")
        .arg(modules)
        .arg("--cache-dir")
        .arg(cache)
        .env("TENET_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| die(&format!("run {}: {e}", tenetctl.display())));
    if !out.status.success() {
        die(&format!(
            "{what}: `{} policy compile --pipeline {} --module-dir {} --cache-dir {}` \
             rejected the pipeline ({}):\n{}{}",
            tenetctl.display(),
            pipeline.display(),
            modules.display(),
            cache.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ms(v: &[Duration]) -> Vec<f64> {
    v.iter().map(|d| d.as_secs_f64() * 1e3).collect()
}

/// "median (min–max)" of per-round ratios.
fn summarize(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2} ({lo:.2}–{hi:.2})", median(v))
}

/// Per-round medians of one arm, ms.
#[derive(Clone, Copy)]
struct RoundMedian {
    add: f64,
    del: f64,
}

/// A ratio series: which arm over which, per round.
struct Pair {
    label: String,
    num: usize,
    den: usize,
}

fn main() {
    let rounds = env_count("BENCH_ROUNDS", 4);
    let runs = env_count("BENCH_RUNS", 15);
    let load_cpu = match std::env::var("BENCH_LOAD").as_deref() {
        Err(_) | Ok("") | Ok("none") | Ok("quiet") => false,
        Ok("cpu") => true,
        Ok(other) => die(&format!(
            "BENCH_LOAD={other}: expected `cpu` (or unset for none)"
        )),
    };
    let bin_dir = env_path("BENCH_BIN_DIR", root().join("target/release"));
    let modules = env_path("TENET_TEST_MODULES", root().join("target/modules"));
    let with_daemon = match std::env::var("BENCH_DAEMON").as_deref() {
        Err(_) | Ok("") | Ok("1") | Ok("on") => true,
        Ok("0") | Ok("off") => false,
        Ok(other) => die(&format!(
            "BENCH_DAEMON={other}: expected `off` (or unset for on)"
        )),
    };
    let baseline_dir = std::env::var_os("BENCH_BASELINE_DIR")
        .filter(|v| !v.is_empty())
        .map(|v| env_path("BENCH_BASELINE_DIR", PathBuf::from(v)));

    for p in [REFERENCE_BIN, "/usr/lib/cni/host-local"] {
        if !Path::new(p).is_file() {
            die(&format!(
                "{p} missing: apt-get install containernetworking-plugins"
            ));
        }
    }
    let build_hint = "run `make build guests` first (or set BENCH_BIN_DIR / TENET_TEST_MODULES)";
    let tenet = must_file(bin_dir.join("tenet"), build_hint);
    let tenetctl = must_file(bin_dir.join("tenetctl"), build_hint);
    if !modules.is_dir() {
        die(&format!("{} missing: {build_hint}", modules.display()));
    }
    let baseline = baseline_dir.map(|d| {
        let hint = "BENCH_BASELINE_DIR must hold tenet, tenetctl and modules/ of the older build";
        let m = d.join("modules");
        if !m.is_dir() {
            die(&format!("{} missing: {hint}", m.display()));
        }
        (
            must_file(d.join("tenet"), hint),
            must_file(d.join("tenetctl"), hint),
            m,
            d,
        )
    });

    // Before any other thread (and before any child, so the load runs in
    // the scratch namespace too).
    let (forbidden, scratch) = enter_scratch();
    let load_at_start = loadavg();
    let cpus = online_cpus();
    if load_cpu {
        start_load(cpus);
    }

    let tmp = tempfile::tempdir().unwrap_or_else(|e| die(&format!("tempdir: {e}")));
    let t = tmp.path();
    *TMP.lock().unwrap_or_else(|p| p.into_inner()) = Some(t.to_path_buf());
    let mut arms: Vec<Arm> = Vec::new();
    let mut add_arm = |label: String,
                       tag: String,
                       kind: Kind,
                       plugin: Plugin,
                       compile: Option<(PathBuf, PathBuf, PathBuf)>| {
        arms.push(Arm {
            label,
            tag,
            kind,
            node: Node::new(plugin.clone(), forbidden, scratch),
            resident: Pod::new(forbidden, scratch),
            measured: Pod::new(forbidden, scratch),
            plugin,
            compile,
            add_rss_kib: 0,
        });
    };

    add_arm(
        "bridge+host-local".into(),
        "ref".into(),
        Kind::Reference,
        Plugin {
            bin: PathBuf::from(REFERENCE_BIN),
            netconf: reference_netconf(&t.join("ref/host-local").display().to_string()),
            env: vec![],
            serve: None,
            records: None,
        },
        None,
    );
    let tenet_arm =
        |tag: &str, bin: &Path, ctl: &Path, mods: &Path, pipeline: &Path, daemon: bool| {
            let dir = t.join(tag);
            let cache = dir.join("cache");
            let what = if tag.starts_with("base_") {
                format!(
                    "the baseline tenetctl (BENCH_BASELINE_DIR) rejects this tree's {} (an older \
                 build may not read this pipeline file, or its modules/ lack a stage); \
                 the baseline arms need a build that compiles it",
                    pipeline.display()
                )
            } else {
                format!("tenetctl under test on {}", pipeline.display())
            };
            compile(ctl, pipeline, mods, &cache, &what);
            let mut env = vec![("TENET_CONFIG".into(), "/dev/null".into())];
            let serve = daemon.then(|| dir.join("tenet.sock"));
            if let Some(s) = &serve {
                env.push(("TENET_SOCKET".into(), s.display().to_string()));
            }
            Plugin {
                bin: bin.to_path_buf(),
                netconf: tenet_netconf(
                    &pipeline.display().to_string(),
                    &mods.display().to_string(),
                    &cache.display().to_string(),
                    &dir.join("state").display().to_string(),
                ),
                env,
                records: serve
                    .as_ref()
                    .map(|_| dir.join("state/metrics/execs.jsonl")),
                serve,
            }
        };
    for (i, (name, tag, file)) in PIPELINES.iter().enumerate() {
        let pipeline = root().join(file);
        let plugin = tenet_arm(tag, &tenet, &tenetctl, &modules, &pipeline, false);
        add_arm(
            format!("tenet {name}"),
            tag.to_string(),
            Kind::Tenet {
                pipeline: i,
                baseline: false,
                daemon: false,
            },
            plugin,
            Some((tenetctl.clone(), pipeline.clone(), modules.clone())),
        );
        if with_daemon {
            let dtag = format!("d_{tag}");
            let plugin = tenet_arm(&dtag, &tenet, &tenetctl, &modules, &pipeline, true);
            add_arm(
                format!("tenet {name} (daemon)"),
                dtag,
                Kind::Tenet {
                    pipeline: i,
                    baseline: false,
                    daemon: true,
                },
                plugin,
                Some((tenetctl.clone(), pipeline.clone(), modules.clone())),
            );
        }
        if let Some((bt, bctl, bmods, _)) = &baseline {
            let btag = format!("base_{tag}");
            let plugin = tenet_arm(&btag, bt, bctl, bmods, &pipeline, false);
            add_arm(
                format!("tenet {name} (baseline)"),
                btag,
                Kind::Tenet {
                    pipeline: i,
                    baseline: true,
                    daemon: false,
                },
                plugin,
                Some((bctl.clone(), pipeline.clone(), bmods.clone())),
            );
        }
    }

    // The ratio series: each tenet arm over the reference, new over baseline.
    let mut pairs: Vec<Pair> = Vec::new();
    for (i, (name, _, _)) in PIPELINES.iter().enumerate() {
        let find = |baseline, daemon| {
            arms.iter().position(|a| {
                a.kind
                    == Kind::Tenet {
                        pipeline: i,
                        baseline,
                        daemon,
                    }
            })
        };
        let new = find(false, false).expect("tenet arm");
        pairs.push(Pair {
            label: format!("{name}: tenet / reference"),
            num: new,
            den: 0,
        });
        if let Some(d) = find(false, true) {
            pairs.push(Pair {
                label: format!("{name}: daemon / reference"),
                num: d,
                den: 0,
            });
            pairs.push(Pair {
                label: format!("{name}: daemon / one-shot"),
                num: d,
                den: new,
            });
        }
        if let Some(base) = find(true, false) {
            pairs.push(Pair {
                label: format!("{name}: baseline / reference"),
                num: base,
                den: 0,
            });
            pairs.push(Pair {
                label: format!("{name}: tenet / baseline"),
                num: new,
                den: base,
            });
        }
    }

    // Resident pods keep each plugin's shared state (bridges, rules) alive.
    for a in &arms {
        let e = a.must("ADD", RESIDENT_ID, true);
        if !e.stdout.contains("\"ips\"") {
            die(&format!("{} ADD gave no addresses: {}", a.label, e.stdout));
        }
    }

    println!("add_del: whole-process CNI ADD and DEL, tenet against bridge + host-local");
    println!(
        "  {rounds} rounds of {runs} iterations (+{WARMUP} warm-up each); each iteration one ADD \
         and one DEL per arm, the first arm rotating; one node netns and one resident pod per arm"
    );
    println!(
        "  machine: {cpus} online CPUs, {}; load average at start {load_at_start}",
        if load_cpu {
            format!("BUSY: {cpus} CPU-bound busy loops running (BENCH_LOAD=cpu)")
        } else {
            "quiet: no load started (BENCH_LOAD unset)".into()
        }
    );
    println!(
        "  tenet {} / tenetctl {} / modules {}",
        tenet.display(),
        tenetctl.display(),
        modules.display()
    );
    if let Some((_, _, _, d)) = &baseline {
        println!("  baseline: {}", d.display());
    }

    let n = arms.len();
    let mut per_round: Vec<Vec<RoundMedian>> = Vec::new();
    let mut counter = 0usize;
    for r in 0..rounds {
        let mut add: Vec<Vec<Duration>> = vec![Vec::new(); n];
        let mut del: Vec<Vec<Duration>> = vec![Vec::new(); n];
        for i in 0..WARMUP + runs {
            let first = counter % n;
            counter += 1;
            for k in (first..n).chain(0..first) {
                let a = &mut arms[k];
                let e_add = a.must("ADD", MEASURED_ID, false);
                let e_del = a.must("DEL", MEASURED_ID, false);
                if i >= WARMUP {
                    add[k].push(e_add.elapsed);
                    del[k].push(e_del.elapsed);
                    a.add_rss_kib = a.add_rss_kib.max(e_add.maxrss_kib);
                }
            }
        }
        let meds: Vec<RoundMedian> = (0..n)
            .map(|k| RoundMedian {
                add: median(&ms(&add[k])),
                del: median(&ms(&del[k])),
            })
            .collect();
        println!();
        println!(
            "round {} of {rounds} (medians of {runs}; load average {})",
            r + 1,
            loadavg()
        );
        println!("  {:<36} {:>10} {:>10}", "arm", "ADD", "DEL");
        for (a, m) in arms.iter().zip(&meds) {
            println!("  {:<36} {:>7.2} ms {:>7.2} ms", a.label, m.add, m.del);
        }
        for p in &pairs {
            println!(
                "  {:<36} {:>10.2} {:>10.2}",
                p.label,
                meds[p.num].add / meds[p.den].add,
                meds[p.num].del / meds[p.den].del
            );
        }
        per_round.push(meds);
    }
    for a in &arms {
        a.must("DEL", RESIDENT_ID, true);
    }
    stop_load();

    println!();
    println!(
        "summary ({}): median of the {rounds} per-round ratios (range)",
        if load_cpu { "busy" } else { "quiet" }
    );
    println!("  {:<36} {:>18} {:>18}", "ratio", "ADD", "DEL");
    for p in &pairs {
        let ratios = |f: fn(&RoundMedian) -> f64| -> Vec<f64> {
            per_round
                .iter()
                .map(|m| f(&m[p.num]) / f(&m[p.den]))
                .collect()
        };
        println!(
            "  {:<36} {:>18} {:>18}",
            p.label,
            summarize(&ratios(|m| m.add)),
            summarize(&ratios(|m| m.del))
        );
    }
    println!("  peak RSS of one ADD (ru_maxrss, children included; with a daemon, the client's):");
    for a in &arms {
        println!(
            "    {:<34} {:>6.1} MiB",
            a.label,
            a.add_rss_kib as f64 / 1024.0
        );
    }
    for a in &arms {
        if let Some(hwm) = a.node.daemon_hwm_kib() {
            println!(
                "    {:<34} {:>6.1} MiB peak resident (VmHWM of the daemon, once per node)",
                format!("{} daemon", a.label),
                hwm as f64 / 1024.0
            );
        }
    }
    println!("  load average at end {}", loadavg());

    println!();
    print!("{}", hyperfine_script(&arms, rounds, runs, load_cpu));
}

/// Script lines running `command` for every arm's resident pod, inside the
/// arm's node namespace.
fn resident_pods(s: &mut String, arms: &[Arm], command: &str) {
    for a in arms {
        let _ = writeln!(
            s,
            "nsenter --net=\"$D/{}/node\" sh -c {}",
            a.tag,
            sq(&script_exec(a, command, RESIDENT_ID, "resident"))
        );
    }
}

/// Single-quotes `s` for sh.
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `s` as one sh word: as it is when it has nothing sh would interpret.
fn word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:=,@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        sq(s)
    }
}

/// The command line of one exec as the hyperfine script runs it (under sh,
/// with `$D` exported): the exact environment of `Plugin::exec`.
fn script_exec(a: &Arm, command: &str, container_id: &str, pod: &str) -> String {
    let mut s = format!(
        "CNI_COMMAND={command} CNI_CONTAINERID={container_id} CNI_NETNS=\"$D/{tag}/{pod}\" \
         CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni CNI_ARGS=\"{CNI_ARGS}\"",
        tag = a.tag
    );
    for (k, v) in &a.plugin.env {
        if k == "TENET_SOCKET" {
            let _ = write!(s, " {k}=\"$D/{}/tenet.sock\"", a.tag);
        } else {
            let _ = write!(s, " {k}={}", word(v));
        }
    }
    let _ = write!(
        s,
        " {} < \"$D/{}/netconf.json\" > /dev/null",
        word(&a.plugin.bin.display().to_string()),
        a.tag
    );
    s
}

/// A shell script reproducing the run with public tools only.
fn hyperfine_script(arms: &[Arm], rounds: usize, runs: usize, load_cpu: bool) -> String {
    let mut s = String::new();
    let tags: Vec<&str> = arms.iter().map(|a| a.tag.as_str()).collect();
    s.push_str(
        "# Reproduce without this binary (root; needs util-linux, iproute2, hyperfine, jq).\n\
         # Save the lines between the scissors as bench.sh and run it in a throwaway network\n\
         # and mount namespace with a clean environment, naming a directory of your choice\n\
         # for netconfs, state, caches and namespace files:\n\
         #   env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin unshare --net --mount bash bench.sh /tmp/tenet-hyperfine\n\
         # ---- 8< ---- bench.sh\n\
         set -eu\n\
         export D=\"$1\"\n\
         # Never the machine's namespace: refuse to run outside a fresh one.\n\
         [ \"$(readlink /proc/self/ns/net)\" != \"$(readlink /proc/1/ns/net)\" ] || { echo 'run under unshare --net --mount' >&2; exit 1; }\n\
         ip link set lo up\n",
    );
    let _ = writeln!(
        s,
        "LOAD={}   # cpu: one busy loop per online CPU (the busy figure); empty: quiet",
        if load_cpu { "cpu" } else { "" }
    );
    s.push_str(
        "if [ \"$LOAD\" = cpu ]; then\n\
         \x20 for _ in $(seq \"$(nproc)\"); do sh -c 'while :; do :; done' & done\n\
         \x20 trap 'kill $(jobs -p) 2>/dev/null' EXIT\n\
         fi\n\
         # One node namespace per plugin, with a resident and a measured pod namespace\n\
         # (files bind-mounted in this mount namespace only; they go when it exits).\n",
    );
    let _ = writeln!(s, "for a in {}; do", tags.join(" "));
    s.push_str(
        "  mkdir -p \"$D/$a\"\n\
         \x20 for n in node resident pod; do\n\
         \x20   touch \"$D/$a/$n\" && unshare --net=\"$D/$a/$n\" true\n\
         \x20   nsenter --net=\"$D/$a/$n\" ip link set lo up\n\
         \x20 done\n\
         done\n\
         # Netconfs (stdin of every exec); tenet's artifacts precompiled off the hot path.\n",
    );
    for a in arms {
        let d = format!("$D/{}", a.tag);
        let netconf = match a.kind {
            Kind::Reference => reference_netconf(&format!("{d}/host-local")),
            Kind::Tenet { .. } => {
                let (_, pipeline, modules) = a.compile.as_ref().expect("tenet arm");
                tenet_netconf(
                    &pipeline.display().to_string(),
                    &modules.display().to_string(),
                    &format!("{d}/cache"),
                    &format!("{d}/state"),
                )
            }
        };
        let _ = writeln!(s, "cat > \"{d}/netconf.json\" <<EOF\n{netconf}\nEOF");
        if let Some((ctl, pipeline, modules)) = &a.compile {
            let _ = writeln!(
                s,
                "TENET_CONFIG=/dev/null {} policy compile --pipeline {} --module-dir {} --cache-dir \"{d}/cache\" > /dev/null",
                word(&ctl.display().to_string()),
                word(&pipeline.display().to_string()),
                word(&modules.display().to_string())
            );
        }
    }
    s.push_str(
        "# The node daemons of the daemon arms, each in its arm's node namespace, with the\n\
         # execs' environment and working directory (it serves only such clients).\n\
         DAEMONS=\n",
    );
    for a in arms.iter().filter(|a| a.plugin.serve.is_some()) {
        let mut env = String::new();
        for (k, v) in a.plugin.env.iter().filter(|(k, _)| k != "TENET_SOCKET") {
            let _ = write!(env, "{k}={} ", word(v));
        }
        let _ = writeln!(
            s,
            "nsenter --net=\"$D/{t}/node\" env {env}{bin} serve --socket \"$D/{t}/tenet.sock\" 2> \"$D/{t}/serve.log\" &\n\
             DAEMONS=\"$DAEMONS $!\"\n\
             while [ ! -S \"$D/{t}/tenet.sock\" ]; do sleep 0.1; done",
            t = a.tag,
            bin = word(&a.plugin.bin.display().to_string())
        );
    }
    s.push_str("# The resident pods.\n");
    resident_pods(&mut s, arms, "ADD");
    let _ = writeln!(
        s,
        "# Per plugin and round: ADD timed with DEL as the untimed --prepare, then DEL\n\
         # timed with ADD as --prepare, {runs} runs after 3 warm-ups, inside the plugin's node namespace."
    );
    for a in arms {
        let add = script_exec(a, "ADD", MEASURED_ID, "pod");
        let del = script_exec(a, "DEL", MEASURED_ID, "pod");
        let mut del_prepare = del.clone();
        if a.plugin.serve.is_some() {
            // The daemon finishes a DEL after answering: untimed, let it end
            // before the next ADD of the same pod (see Plugin::records).
            del_prepare.push_str("; sleep 0.1");
        }
        let _ = writeln!(s, "bench_{}() {{  # {}", a.tag, a.label);
        let _ = writeln!(
            s,
            "  nsenter --net=\"$D/{t}/node\" hyperfine --warmup {WARMUP} --runs {runs} --export-json \"$D/{t}/add-$1.json\" \\\n\
             \x20   --prepare {del} \\\n\
             \x20   --cleanup {del} \\\n\
             \x20   {add}",
            t = a.tag,
            del = sq(&del_prepare),
            add = sq(&add)
        );
        let _ = writeln!(
            s,
            "  nsenter --net=\"$D/{t}/node\" hyperfine --warmup {WARMUP} --runs {runs} --export-json \"$D/{t}/del-$1.json\" \\\n\
             \x20   --prepare {add} \\\n\
             \x20   {del}\n}}",
            t = a.tag,
            del = sq(&del),
            add = sq(&add)
        );
    }
    let forward: Vec<String> = tags.iter().map(|t| format!("bench_{t} $r")).collect();
    let backward: Vec<String> = tags.iter().rev().map(|t| format!("bench_{t} $r")).collect();
    let _ = writeln!(
        s,
        "# Rounds, alternating which plugin goes first.\n\
         for r in $(seq {rounds}); do\n\
         \x20 if [ $((r % 2)) = 1 ]; then {}; else {}; fi\n\
         done",
        forward.join("; "),
        backward.join("; ")
    );
    s.push_str("# Tear down the resident pods, then the daemons.\n");
    resident_pods(&mut s, arms, "DEL");
    s.push_str("[ -z \"$DAEMONS\" ] || kill $DAEMONS\n");
    s.push_str(
        "# Ratios of the medians per round, then their median and range.\n\
         ratio() {  # numerator arm, denominator arm, op (add|del)\n\
         \x20 for r in $(seq \"$ROUNDS\"); do\n\
         \x20   jq -n --slurpfile a \"$D/$1/$3-$r.json\" --slurpfile b \"$D/$2/$3-$r.json\" '$a[0].results[0].median / $b[0].results[0].median'\n\
         \x20 done | jq -s -r --arg l \"$1 / $2 $3\" 'sort as $s | ($s | length) as $n\n\
         \x20   | (if $n % 2 == 1 then $s[($n - 1) / 2] else ($s[$n / 2 - 1] + $s[$n / 2]) / 2 end) as $m\n\
         \x20   | \"\\($l): \\($m * 100 | round / 100) (\\($s[0] * 100 | round / 100)-\\($s[-1] * 100 | round / 100)) per round: \\(map(. * 100 | round / 100))\"'\n\
         }\n",
    );
    let _ = writeln!(s, "ROUNDS={rounds}");
    for a in arms {
        let Kind::Tenet {
            pipeline,
            baseline,
            daemon,
        } = a.kind
        else {
            continue;
        };
        for op in ["add", "del"] {
            let _ = writeln!(s, "ratio {} ref {op}", a.tag);
            if daemon {
                let one_shot = Kind::Tenet {
                    pipeline,
                    baseline: false,
                    daemon: false,
                };
                if let Some(b) = arms.iter().find(|b| b.kind == one_shot) {
                    let _ = writeln!(s, "ratio {} {} {op}", a.tag, b.tag);
                }
                continue;
            }
            let base = Kind::Tenet {
                pipeline,
                baseline: true,
                daemon: false,
            };
            if !baseline && let Some(b) = arms.iter().find(|b| b.kind == base) {
                let _ = writeln!(s, "ratio {} {} {op}", a.tag, b.tag);
            }
        }
    }
    s.push_str("# ---- 8< ----\n");
    s
}
