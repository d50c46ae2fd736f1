//! Whole-process CNI ADD and DEL: `tenet` (embedded default: local address
//! store, Linux bridge + nftables, rtnetlink; the rainbond pipeline with its
//! `eth1` host link; artifacts precompiled) against the reference `bridge` +
//! `host-local` plugins from Debian's containernetworking-plugins.
//!
//! Everything runs in a scratch node namespace this program creates
//! (`unshare(CLONE_NEWNET)` on the main thread before any other thread
//! exists, so every child inherits it), with pod namespaces held by parked
//! threads. The machine's own interfaces, routes and firewall are never
//! touched; the namespaces vanish when the program exits.
//!
//! Each plugin keeps one resident pod attached for the whole run (a node
//! already has pods, so the tenant bridge, its rules and the reference
//! bridge exist), and the measured pod is added and deleted once per
//! iteration. The two plugins alternate within each iteration, and which goes
//! first alternates too, so machine drift hits both equally.
//!
//! `make bench-add` (root), or `cargo run --release -p tenet-bench --bin
//! add_del` after `make build guests`. `BENCH_RUNS` sets the iterations
//! (default 200); `BENCH_REFERENCE_ONLY=1` measures the reference alone.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    // tests/bench -> the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn release_bin(name: &str) -> PathBuf {
    let p = root().join("target/release").join(name);
    if !p.is_file() {
        die(&format!(
            "{} missing: run `make build guests` first",
            p.display()
        ));
    }
    p
}

fn die(msg: &str) -> ! {
    eprintln!("add_del: {msg}");
    std::process::exit(1)
}

fn ns_ino(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| die(&format!("{path}: {e}")))
        .ino()
}

fn lo_up() {
    let st = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap_or_else(|e| die(&format!("ip: {e}")));
    if !st.success() {
        die("ip link set lo up failed");
    }
}

/// Moves the calling thread (the main thread, before any other exists) into
/// a fresh network namespace, and proves it is not the machine's.
fn enter_scratch_node() {
    let before = ns_ino("/proc/thread-self/ns/net");
    // SAFETY: plain syscall with a constant flag.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        die(&format!(
            "unshare(CLONE_NEWNET): {} (run as root)",
            std::io::Error::last_os_error()
        ));
    }
    let after = ns_ino("/proc/thread-self/ns/net");
    // pid 1's namespace may be unreadable (a container): then `before` is
    // the comparison that matters.
    let machine = std::fs::metadata("/proc/1/ns/net")
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    if after == before || Some(after) == machine {
        die("unshare did not give this process its own netns");
    }
    lo_up();
}

/// A pod namespace held by a parked thread; its path is the `CNI_NETNS`.
struct Pod {
    path: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pod {
    fn new() -> Pod {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: plain syscall with a constant flag, on this thread only.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
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
            .expect("pod thread")
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
struct Plugin {
    label: &'static str,
    bin: PathBuf,
    netconf: String,
    env: Vec<(String, String)>,
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
    // The child is reaped by wait4 (for its rusage), not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    fn exec(&self, command: &str, container_id: &str, netns: &Path) -> Exec {
        let start = Instant::now();
        let mut child = Command::new(&self.bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-0",
            )
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

    /// Runs and insists on success (a benchmark of failures measures nothing).
    fn must(&self, command: &str, container_id: &str, netns: &Path) -> Exec {
        let e = self.exec(command, container_id, netns);
        if !e.ok {
            die(&format!(
                "{} {command} failed:\nstdout: {}\nstderr: {}",
                self.label, e.stdout, e.stderr
            ));
        }
        e
    }
}

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
    add_rss: Vec<i64>,
}

fn pct(v: &[Duration], p: usize) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)].as_secs_f64() * 1e3
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let reference_only = std::env::var_os("BENCH_REFERENCE_ONLY").is_some_and(|v| v == "1");
    for p in ["/usr/lib/cni/bridge", "/usr/lib/cni/host-local"] {
        if !Path::new(p).is_file() {
            die(&format!(
                "{p} missing: apt-get install containernetworking-plugins"
            ));
        }
    }
    enter_scratch_node();

    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let reference = Plugin {
        label: "bridge+host-local",
        bin: PathBuf::from("/usr/lib/cni/bridge"),
        netconf: format!(
            r#"{{"cniVersion":"1.0.0","name":"refbench","type":"bridge","bridge":"refbr0","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.99.0.0/24"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}}"#,
            t.join("host-local").display()
        ),
        env: vec![],
    };
    let mut plugins = vec![reference];

    if !reference_only {
        let tenet = release_bin("tenet");
        let tenetctl = release_bin("tenetctl");
        let modules = std::env::var_os("TENET_TEST_MODULES")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target/modules"));
        let pipeline = root().join("policies/rainbond.toml");
        let cache = t.join("cache");
        // Precompile off the hot path, as `tenetctl install` does.
        let st = Command::new(&tenetctl)
            .args(["policy", "compile", "--pipeline"])
            .arg(&pipeline)
            .arg("--module-dir")
            .arg(&modules)
            .arg("--cache-dir")
            .arg(&cache)
            .env("TENET_CONFIG", "/dev/null")
            .stdout(Stdio::null())
            .status()
            .expect("run tenetctl");
        if !st.success() {
            die("tenetctl policy compile failed");
        }
        let netconf = tenet_netconf(&pipeline, &modules, &cache, &t.join("state"));
        plugins.push(Plugin {
            label: "tenet (rainbond)",
            bin: tenet,
            netconf,
            env: vec![("TENET_CONFIG".into(), "/dev/null".into())],
        });
    }

    // Resident pods keep each plugin's shared state (bridges, rules) alive.
    let resident: Vec<Pod> = plugins.iter().map(|_| Pod::new()).collect();
    let measured: Vec<Pod> = plugins.iter().map(|_| Pod::new()).collect();
    for (p, pod) in plugins.iter().zip(&resident) {
        let e = p.must("ADD", "resident", &pod.path);
        if !e.stdout.contains("\"ips\"") {
            die(&format!("{} ADD gave no addresses: {}", p.label, e.stdout));
        }
    }

    let mut samples: Vec<Samples> = plugins.iter().map(|_| Samples::default()).collect();
    let warmup = 10.min(runs);
    for i in 0..warmup + runs {
        let order: Vec<usize> = if i % 2 == 0 {
            (0..plugins.len()).collect()
        } else {
            (0..plugins.len()).rev().collect()
        };
        for k in order {
            let (p, pod) = (&plugins[k], &measured[k]);
            let cid = format!("bench{i}");
            let add = p.must("ADD", &cid, &pod.path);
            let del = p.must("DEL", &cid, &pod.path);
            if i >= warmup {
                samples[k].add.push(add.elapsed);
                samples[k].del.push(del.elapsed);
                samples[k].add_rss.push(add.maxrss_kib);
            }
        }
    }
    for (p, pod) in plugins.iter().zip(&resident) {
        p.must("DEL", "resident", &pod.path);
    }

    println!(
        "add_del: whole-process CNI ADD and DEL, {runs} alternating iterations \
         (+{warmup} warm-up), one resident pod per plugin, scratch netns"
    );
    println!(
        "  {:<20} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "plugin", "ADD p50", "ADD p90", "DEL p50", "DEL p90", "ADD max RSS"
    );
    for (p, s) in plugins.iter().zip(&samples) {
        println!(
            "  {:<20} {:>7.2} ms {:>7.2} ms {:>7.2} ms {:>7.2} ms {:>8.1} MiB",
            p.label,
            pct(&s.add, 50),
            pct(&s.add, 90),
            pct(&s.del, 50),
            pct(&s.del, 90),
            *s.add_rss.iter().max().unwrap_or(&0) as f64 / 1024.0
        );
    }
    if samples.len() == 2 {
        let (r, t) = (&samples[0], &samples[1]);
        println!(
            "  ratio tenet/reference (medians): ADD {:.2}  DEL {:.2}   (goal: ADD < 1)",
            pct(&t.add, 50) / pct(&r.add, 50),
            pct(&t.del, 50) / pct(&r.del, 50)
        );
        let rss = *t.add_rss.iter().max().unwrap_or(&0) as f64 / 1024.0;
        println!("  tenet ADD peak RSS: {rss:.1} MiB (budget 32 MiB)");
    }
}

/// tenet's network configuration: the pipeline, module dir, cache and state
/// are per-network keys, so no /etc/tenet is read (`TENET_CONFIG=/dev/null`).
fn tenet_netconf(pipeline: &Path, modules: &Path, cache: &Path, state: &Path) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"tenetbench","type":"tenet","pipeline":"{}","moduleDirs":["{}"],"cacheDir":"{}","stateDir":"{}"}}"#,
        pipeline.display(),
        modules.display(),
        cache.display(),
        state.display()
    )
}
