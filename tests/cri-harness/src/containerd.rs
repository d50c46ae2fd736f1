//! The real containerd (Debian's 1.6), started by a test as a Kubernetes
//! node would run it, but private to the test:
//!
//! - in a network namespace the harness creates (`ip netns add`), the
//!   "node": the CNI plugin containerd runs inherits it, so tenet's bridges,
//!   veth host ends and nftables tables land there, never on the machine;
//! - in a mount namespace of its own (`unshare --mount --propagation
//!   slave`), so the overlay, shm and netns mounts containerd and its shims
//!   make die with them instead of piling up on the machine;
//! - with its own root, state, sockets, config and CNI directories in a temp
//!   dir, and a sandbox (pause) image built locally with podman from
//!   busybox-static (no registry is reachable here).
//!
//! [`Containerd::restart`] and [`Containerd::wipe_state`] are the runtime
//! faults: a restart keeps the sandboxes; a wipe is a node crash plus a lost
//! `/var/lib/containerd`: every sandbox process dies and no CNI DEL is ever
//! called. Dropping a [`Containerd`] (also on panic) kills containerd, its
//! shims and their sandboxes, unmounts anything left under its directory,
//! removes its cgroups and deletes the network namespace.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::client::CriClient;
use crate::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata,
};

/// The sandbox image every pod runs: `/bin/busybox sleep infinity`.
pub const PAUSE_IMAGE: &str = "localhost/tenet-pause:e2e";
/// The containerd namespace of the CRI plugin.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// How long containerd gets to answer its first `Version`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Every CRI call's deadline (a RunPodSandbox includes the CNI ADD).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What the machine must have; a missing item is a panic naming it and its
/// Debian package (tests never pass without their prerequisites).
pub const NEEDS: &[(&str, &str)] = &[
    ("/usr/bin/containerd", "containerd"),
    ("/usr/bin/containerd-shim-runc-v2", "containerd"),
    ("/usr/bin/ctr", "containerd"),
    ("/usr/sbin/runc", "runc"),
    ("/usr/bin/podman", "podman"),
    ("/bin/busybox", "busybox-static"),
    ("/usr/bin/nsenter", "util-linux"),
    ("/usr/bin/unshare", "util-linux"),
    ("/usr/sbin/nft", "nftables"),
    ("/usr/lib/cni/loopback", "containernetworking-plugins"),
];

/// Panics naming everything missing (root, binaries and their packages).
pub fn preflight() {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (containerd and network namespaces)".to_string());
    }
    for (path, package) in NEEDS {
        if !Path::new(path).exists() {
            missing.push(format!("{path} (Debian package {package})"));
        }
    }
    assert!(
        missing.is_empty(),
        "needs {} (run as root after `make deps`)",
        missing.join(", ")
    );
}

/// Runs a command with a deadline; the child is killed when it passes.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap_or_else(|e| panic!("wait {what}: {e}")),
        Err(_) => {
            // SAFETY: our own child, not reaped yet (the waiter blocks on it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{what} did not finish within {timeout:?}");
        }
    }
}

/// [`run`], panicking with both outputs unless it succeeded; the stdout.
pub fn ok(cmd: &mut Command, timeout: Duration) -> String {
    let what = format!("{cmd:?}");
    let out = run(cmd, timeout);
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct NodeNetns {
    name: String,
}

impl NodeNetns {
    /// `ip netns add <name>` with loopback up (the test's API emulator and
    /// the node agent listen there).
    pub fn new(name: &str) -> Self {
        ok(
            Command::new("ip").args(["netns", "add", name]),
            Duration::from_secs(10),
        );
        let ns = NodeNetns { name: name.into() };
        ok(
            Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]),
            Duration::from_secs(10),
        );
        ns
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its path, for `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Moves the calling thread into it: commands the thread spawns (`ip`,
    /// `nft`, the node agent) and sockets it opens are then the node's.
    pub fn enter(&self) {
        let f = std::fs::File::open(self.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path().display()));
        // SAFETY: setns on a valid namespace fd we own; affects only the
        // calling thread's network namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns into {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for NodeNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// What containerd is configured with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The CNI plugin directory (containerd 1.6 takes a single one).
    pub cni_bin_dir: PathBuf,
    /// The CNI configuration directory (the first conflist is used).
    pub cni_conf_dir: PathBuf,
    /// Extra environment for containerd; the CNI plugins it runs inherit it
    /// (libcni passes its own environment on), e.g. `TENET_CONFIG`.
    pub env: Vec<(OsString, OsString)>,
}

/// A containerd private to one test; see the module documentation.
#[derive(Debug)]
pub struct Containerd {
    // Dropped last (fields drop in order): the directory everything is in.
    opts: Options,
    name: String,
    child: Option<Child>,
    netns: NodeNetns,
    dir: tempfile::TempDir,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Containerd {
    /// Creates the node namespace, builds the pause image, starts
    /// containerd and imports the image; returns once the CRI answers.
    pub fn start(opts: Options) -> Self {
        preflight();
        let name = format!(
            "tenet-cri-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("tenet-cri-")
            .tempdir()
            .unwrap();
        let netns = NodeNetns::new(&name);
        let mut c = Containerd {
            opts,
            name,
            child: None,
            netns,
            dir,
        };
        build_pause_image(&c.dir.path().join("image"));
        c.write_config();
        c.spawn();
        c.import_pause_image();
        c
    }

    /// The node's network namespace.
    pub fn netns(&self) -> &NodeNetns {
        &self.netns
    }

    /// containerd's gRPC socket (the CRI endpoint, as the kubelet's
    /// `--container-runtime-endpoint`).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// containerd's `--root` (what a state wipe removes, with the state dir).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// containerd's `--state`.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// containerd's log so far (stderr at level info).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The cgroup parent every sandbox of this test goes under (removed on
    /// drop), cgroupfs style.
    pub fn cgroup_parent(&self) -> String {
        format!("/{}", self.name)
    }

    /// A CRI client on [`Self::socket`].
    pub fn client(&self) -> CriClient {
        CriClient::connect(&self.socket(), CALL_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\ncontainerd log:\n{}", self.log_tail()))
    }

    /// A sandbox config as the kubelet sends it for a pod: metadata,
    /// annotations, pod network (not the node's), the test's cgroup parent.
    pub fn pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        annotations: &[(&str, &str)],
    ) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod.into(),
                        pid: NamespaceMode::Container.into(),
                        ipc: NamespaceMode::Pod.into(),
                        target_id: String::new(),
                    }),
                    privileged: false,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn write_config(&self) {
        let d = self.dir.path();
        let q = |p: &Path| toml_str(&p.display().to_string());
        let config = format!(
            r#"version = 2
root = {root}
state = {state}
# Snapshotters that cannot work here (or are not needed) stay off, so
# startup is quick and the log clean.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = {sock}
[ttrpc]
  address = {ttrpc}
[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # The pod netns mounts go under --state (default: /var/run/netns of the
  # machine), so they stay inside this test's directory and mount namespace.
  netns_mounts_under_state_dir = true
  # The kernel here has no AppArmor; say so rather than rely on detection.
  disable_apparmor = true
  # No CAP_SYS_RESOURCE on this machine: the sandbox's oom_score_adj
  # (-998) cannot go below containerd's own, so runc would fail ("can't get
  # final child's PID from pipe"); clamp it instead.
  restrict_oom_score_adj = true
  # Streaming (exec/attach) on the node's loopback only.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # cgroupfs: the sandboxes' cgroups go under the test's parent.
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {bin}
    conf_dir = {conf}
    max_conf_num = 1
"#,
            root = q(&self.root()),
            state = q(&self.state()),
            sock = q(&self.socket()),
            ttrpc = q(&d.join("containerd.sock.ttrpc")),
            opt = q(&d.join("opt")),
            bin = q(&self.opts.cni_bin_dir),
            conf = q(&self.opts.cni_conf_dir),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
    }

    /// Starts containerd in the node netns and a private mount namespace,
    /// then waits until its CRI answers `Version`.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "containerd already running");
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("containerd.log"))
            .unwrap();
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.path().display()))
            .args(["--", "unshare", "--mount", "--propagation", "slave", "--"])
            .arg("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd (Debian package containerd)");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("containerd exited ({st}):\n{}", self.log_tail());
            }
            if self.socket().exists()
                && let Ok(mut c) = CriClient::connect(&self.socket(), Duration::from_secs(5))
                && c.version().is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "containerd's CRI did not answer within {START_TIMEOUT:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn import_pause_image(&self) {
        ok(
            Command::new("ctr")
                .arg("--address")
                .arg(self.socket())
                .args(["--namespace", K8S_NAMESPACE])
                .args(["images", "import", "--snapshotter", "overlayfs"])
                .arg(self.dir.path().join("image/pause.tar")),
            Duration::from_secs(60),
        );
    }

    /// SIGKILLs containerd and waits for it (its shims and sandboxes go on,
    /// as after a crash of the daemon alone).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills containerd and starts it again on the same state: the
    /// sandboxes survive (their shims reconnect).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The "runtime state wiped, no DEL" fault: every sandbox process and
    /// shim dies (a node crash), containerd's root and state directories are
    /// removed, and containerd starts again empty (the pause image
    /// re-imported). No CNI DEL is called for any sandbox.
    pub fn wipe_state(&mut self) {
        self.kill();
        self.kill_sandboxes();
        self.unmount_leftovers();
        for d in [self.root(), self.state()] {
            if d.exists() {
                std::fs::remove_dir_all(&d)
                    .unwrap_or_else(|e| panic!("remove {}: {e}", d.display()));
            }
        }
        self.spawn();
        self.import_pause_image();
    }

    /// The shims serving this containerd (found by the socket path on their
    /// command line) and the sandbox processes containerd recorded.
    fn our_processes(&self) -> Vec<libc::pid_t> {
        let mut pids = Vec::new();
        let sock = self.socket().display().to_string();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<libc::pid_t>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
            if is_shim && args.contains(&sock.as_bytes()) {
                pids.push(pid);
            }
        }
        let tasks = self.state().join("io.containerd.runtime.v2.task");
        for ns in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            for t in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                if let Ok(p) = std::fs::read_to_string(t.path().join("init.pid"))
                    && let Ok(pid) = p.trim().parse()
                {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// SIGKILLs the sandboxes and shims of this containerd.
    fn kill_sandboxes(&self) {
        let pids = self.our_processes();
        for pid in &pids {
            // SAFETY: a pid containerd recorded or a shim bound to our
            // socket; kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        // Wait until they are gone (a killed process can take a moment).
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(*p))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Lazily unmounts whatever is still mounted under the test's directory
    /// in the machine's mount namespace (nothing, normally: containerd's
    /// mounts live in its own namespace).
    fn unmount_leftovers(&self) {
        let base = self.dir.path().display().to_string();
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&base))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount")
                .args(["-R", "-l", p])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Removes the test's cgroup parent in every hierarchy (children first;
    /// a cgroup directory goes once it has no processes).
    fn remove_cgroups(&self) {
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for h in hierarchies.flatten() {
            let top = h.path().join(&self.name);
            if top.is_dir() {
                rmdir_tree(&top);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill();
        self.kill_sandboxes();
        self.unmount_leftovers();
        self.remove_cgroups();
        // The netns goes with `self.netns`, the directory with `self.dir`.
    }
}

fn is_zombie(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

fn rmdir_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            rmdir_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Builds [`PAUSE_IMAGE`] with podman from scratch (a rootfs holding only
/// `/bin/busybox` from busybox-static, `sleep infinity` as its entrypoint)
/// and saves it as a docker archive, `<dir>/pause.tar`, for `ctr import`.
/// podman's storage, run dir and configuration are private to `dir`.
pub fn build_pause_image(dir: &Path) {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("/bin/busybox (Debian package busybox-static)");
    let conf = dir.join("containers.conf");
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             events_logfile_path = {}\ntmp_dir = {}\n",
            toml_str(&dir.join("events.log").display().to_string()),
            toml_str(&dir.join("tmp").display().to_string()),
        ),
    )
    .unwrap();
    let podman = || {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(dir.join("storage"))
            .arg("--runroot")
            .arg(dir.join("run"))
            // vfs: no mounts to leak from a build that runs nothing.
            .args(["--storage-driver", "vfs"])
            .env("CONTAINERS_CONF", &conf);
        c
    };
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-c", "."])
        .output()
        .expect("tar");
    assert!(tar.status.success(), "tar the pause rootfs");
    let mut import = podman()
        .args([
            "import",
            "--change",
            r#"ENTRYPOINT ["/bin/busybox", "sleep", "infinity"]"#,
            "-",
            PAUSE_IMAGE,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn podman (Debian package podman)");
    import.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    let out = import.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "podman import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(
        podman()
            .args(["save", "--format", "docker-archive", "-o"])
            .arg(dir.join("pause.tar"))
            .arg(PAUSE_IMAGE),
        Duration::from_secs(60),
    );
    // The archive is all containerd needs; podman's copy goes now.
    let _ = std::fs::remove_dir_all(dir.join("storage"));
    let _ = std::fs::remove_dir_all(&rootfs);
}
