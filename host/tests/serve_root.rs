//! The node daemon (`tenet serve`) and its thin client, through the real
//! binary, as root, in scratch node namespaces (nothing of the machine's is
//! touched).
//!
//! Every invocation's exec record says who ran it (`daemon`: `served`,
//! `declined: <why>`, or absent when no daemon was reached), so each test
//! asserts the path an invocation took, not only its outcome.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::cni::{Node, Out, Pod, conf, first_ip};
use serde_json::Value;

/// A `tenet serve` child on a socket of the test's; killed when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
    /// Its stderr (its log).
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `node`'s environment and waits until it
    /// accepts connections.
    fn start(node: &Node, socket: &Path) -> Daemon {
        // Beside the socket's directory when the daemon is to create it.
        let dir = socket.ancestors().skip(1).find(|p| p.is_dir()).unwrap();
        let log = dir.join("serve.log");
        let child = node
            .command()
            .arg("serve")
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("tenet serve");
        let d = Daemon {
            child,
            socket: socket.to_owned(),
            log,
        };
        // A readiness wait, not a timing assertion: the bound is generous.
        let until = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(Instant::now() < until, "tenet serve never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// SIGKILL, as a crash would.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends `SIG<name>` (STOP, CONT) to the daemon.
    fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn env(&self) -> (&'static str, &str) {
        ("TENET_SOCKET", self.socket.to_str().unwrap())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tenet` with `pod`'s environment for `command`, plus `extra`; returns
/// once the invocation has ended (its exec record is written): a DEL the
/// daemon answered early may still be running when `tenet` exits.
fn run(node: &Node, pod: &Pod, command: &'static str, extra: &[(&str, &str)]) -> Out {
    let count = || records(node).iter().filter(|r| r.cmd == command).count();
    let before = count();
    let out = run_now(node, pod, command, extra);
    // A readiness wait, not a timing assertion: the bound is generous.
    let until = Instant::now() + Duration::from_secs(60);
    while count() == before {
        assert!(Instant::now() < until, "no {command} record appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    out
}

/// `tenet` with `pod`'s environment for `command`, plus `extra`; returns
/// when `tenet` exits.
fn run_now(node: &Node, pod: &Pod, command: &'static str, extra: &[(&str, &str)]) -> Out {
    let mut env = pod.env(command);
    env.extend_from_slice(extra);
    node.run(&env, &conf())
}

/// The exec records of `node` so far, oldest first.
fn records(node: &Node) -> Vec<tenet::metrics::ExecRecord> {
    let file = tenet::metrics::dir(&node.state).join(tenet::metrics::FILE_NAME);
    let bytes = std::fs::read(&file).unwrap_or_default();
    tenet::metrics::parse(&bytes).0
}

/// The `daemon` field of the newest record of `cmd`.
fn last_path(node: &Node, cmd: &str) -> Option<String> {
    records(node)
        .into_iter()
        .rev()
        .find(|r| r.cmd == cmd)
        .unwrap_or_else(|| panic!("no {cmd} record"))
        .daemon
}

fn served() -> Option<String> {
    Some("served".into())
}

/// Everything of a result but the addresses a pod was given.
fn shape(r: &Value) -> Value {
    let mut r = r.clone();
    for ip in r["ips"].as_array_mut().unwrap() {
        ip.as_object_mut().unwrap().remove("address");
    }
    for i in r["interfaces"].as_array_mut().unwrap() {
        let o = i.as_object_mut().unwrap();
        // Host ends (no sandbox) are named after the container.
        if o.remove("sandbox").is_none() {
            o.remove("name");
        }
        o.remove("mac");
    }
    r
}

#[test]
#[ignore = "needs root (a scratch node namespace)"]
fn the_daemon_serves_pods_and_the_binary_runs_them_itself_without_it() {
    let node = Node::new("the daemon serves pods");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run").join("tenet.sock");
    let daemon = Daemon::start(&node, &socket);
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let sock_path = socket.to_str().unwrap().to_owned();
    let sock = ("TENET_SOCKET", sock_path.as_str());

    // Two pods of one tenant and one of another, all through the daemon.
    let a1 = Pod::new("serve-a1", "team-a");
    let a2 = Pod::new("serve-a2", "team-a");
    let b1 = Pod::new("serve-b1", "team-b");
    let mut results = Vec::new();
    for p in [&a1, &a2, &b1] {
        results.push(run(&node, p, "ADD", &[sock]).ok());
        assert_eq!(last_path(&node, "ADD"), served(), "{}", p.id);
    }
    assert!(
        a1.ping(&first_ip(&results[1])),
        "same tenant through the daemon"
    );
    assert!(
        !b1.ping(&first_ip(&results[0])),
        "another tenant is not reachable"
    );

    // The same request run by the binary itself answers alike.
    let a3 = Pod::new("serve-a3", "team-a");
    let here = run(&node, &a3, "ADD", &[("TENET_SOCKET", "off")]).ok();
    assert_eq!(last_path(&node, "ADD"), None);
    assert_eq!(shape(&here), shape(&results[0]));
    assert!(a3.ping(&first_ip(&results[0])));

    run(&node, &a1, "CHECK", &[sock]).ok();
    assert_eq!(last_path(&node, "CHECK"), served());

    // A crashed daemon leaves its socket: the binary runs the next ones
    // itself.
    daemon.kill();
    assert!(socket.exists(), "the killed daemon's socket is left");
    let b2 = Pod::new("serve-b2", "team-b");
    let r = run(&node, &b2, "ADD", &[sock]).ok();
    assert_eq!(last_path(&node, "ADD"), None, "ran by the binary");
    assert!(b1.ping(&first_ip(&r)));
    run(&node, &a2, "DEL", &[sock]).ok();
    assert_eq!(last_path(&node, "DEL"), None);

    // A new daemon takes the stale socket over.
    let daemon = Daemon::start(&node, &socket);
    for p in [&a1, &a3, &b1, &b2] {
        run(&node, p, "DEL", &[daemon.env()]).ok();
        assert_eq!(last_path(&node, "DEL"), served(), "{}", p.id);
    }
    // A repeated DEL is success, through the daemon too.
    run(&node, &a1, "DEL", &[daemon.env()]).ok();
    node.gc_idle_tenants(2);
}

#[test]
#[ignore = "needs root (a scratch node namespace)"]
fn a_stopped_daemon_is_passed_by_and_never_runs_what_it_missed() {
    let node = Node::new("a stopped daemon");
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&node, &dir.path().join("tenet.sock"));
    let a1 = Pod::new("stopped-a1", "team-a");
    run(&node, &a1, "ADD", &[daemon.env()]).ok();
    assert_eq!(last_path(&node, "ADD"), served());

    // Stopped, its socket still takes connections (into the backlog): the
    // client gets no greeting, runs the ADD itself and says why.
    daemon.signal("STOP");
    let a2 = Pod::new("stopped-a2", "team-a");
    let r = run(&node, &a2, "ADD", &[daemon.env()]).ok();
    let path = last_path(&node, "ADD").unwrap_or_default();
    assert!(path.starts_with("declined: no greeting"), "{path}");
    assert!(a1.ping(&first_ip(&r)));

    // Resumed, it takes the abandoned connection first (accept is in
    // order), finds no request on it and runs nothing; then serves again.
    daemon.signal("CONT");
    run(&node, &a2, "DEL", &[daemon.env()]).ok();
    assert_eq!(last_path(&node, "DEL"), served());
    let adds = records(&node).iter().filter(|r| r.cmd == "ADD").count();
    assert_eq!(adds, 2, "the ADD the daemon missed never ran there");
    run(&node, &a1, "DEL", &[daemon.env()]).ok();
    node.gc_idle_tenants(1);
}

#[test]
#[ignore = "needs root (a scratch node namespace)"]
fn a_del_is_answered_once_the_pod_is_cut_off_and_the_next_add_waits_for_the_rest() {
    let node = Node::new("an early DEL answer");
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&node, &dir.path().join("tenet.sock"));
    let keep = Pod::new("early-keep", "team-a");
    let p = Pod::new("early-1", "team-a");
    run(&node, &keep, "ADD", &[daemon.env()]).ok();
    for round in 0..3 {
        let r = run_now(&node, &p, "ADD", &[daemon.env()]).ok();
        assert!(keep.ping(&first_ip(&r)), "round {round}");
        run_now(&node, &p, "DEL", &[daemon.env()]).ok();
        // The same attachment again at once: it waits in the daemon for the
        // DEL's interface deletion and address release, then succeeds (no
        // "already attached", no address of the old one's left claimed).
    }
    // Waits for the third DEL to end (this DEL finds no record).
    run(&node, &p, "DEL", &[daemon.env()]).ok();
    let dels: Vec<_> = records(&node)
        .into_iter()
        .filter(|r| r.cmd == "DEL")
        .take(3)
        .collect();
    assert_eq!(dels.len(), 3);
    for d in &dels {
        assert_eq!(d.code, 0);
        let answered = d.answered_us.expect("answered before the end");
        assert!(answered < d.us, "answered at {answered} µs of {} µs", d.us);
        assert_eq!(d.freed.len(), 2, "{:?}", d.freed);
    }
    assert!(
        dels.iter().all(|d| d.daemon.as_deref() == Some("served")),
        "{dels:?}"
    );
    run(&node, &keep, "DEL", &[daemon.env()]).ok();
    run(&node, &keep, "DEL", &[daemon.env()]).ok();
    node.gc_idle_tenants(1);
}

#[test]
#[ignore = "needs root (scratch node namespaces)"]
fn a_client_in_another_node_namespace_is_declined_and_wires_its_own_node() {
    let node = Node::new("the daemon declines another node");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tenet.sock");
    let daemon = Daemon::start(&node, &socket);
    let served_node = tenet::netns::guard::NetnsFile::current().unwrap().id();

    // This thread moves to another scratch node; the daemon stays.
    let other = Node::new("the client's own node");
    assert_ne!(
        tenet::netns::guard::NetnsFile::current().unwrap().id(),
        served_node
    );
    let p = Pod::new("declined-1", "team-a");
    run(&other, &p, "ADD", &[daemon.env()]).ok();
    assert_eq!(
        last_path(&other, "ADD").as_deref(),
        Some("declined: another network namespace")
    );
    // Wired here, in the client's node: its host end is on this node.
    let host_end = tenet::netns::host_ifname(&p.id, "eth0");
    assert!(
        Path::new("/sys/class/net").join(&host_end).exists() || link_exists(&host_end),
        "{host_end} not on the client's node"
    );
    run(&other, &p, "DEL", &[daemon.env()]).ok();
    other.gc_idle_tenants(1);
    drop(daemon);
}

/// `ip link show NAME` in this thread's namespace.
fn link_exists(name: &str) -> bool {
    std::process::Command::new("ip")
        .args(["link", "show", name])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
#[ignore = "needs root (a scratch node namespace)"]
fn concurrent_invocations_through_the_daemon_get_distinct_addresses() {
    let node = Node::new("concurrent invocations through the daemon");
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&node, &dir.path().join("tenet.sock"));
    let pods: Vec<Pod> = (0..8)
        .map(|i| {
            Pod::new(
                &format!("conc-{i}"),
                if i % 2 == 0 { "team-a" } else { "team-b" },
            )
        })
        .collect();
    let children: Vec<Child> = pods
        .iter()
        .map(|p| {
            let mut env = p.env("ADD");
            env.push(daemon.env());
            node.spawn(&env, &conf())
        })
        .collect();
    let mut ips = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        ips.push(first_ip(&r));
    }
    let served = records(&node)
        .iter()
        .filter(|r| r.cmd == "ADD" && r.daemon.as_deref() == Some("served"))
        .count();
    assert_eq!(served, 8, "every ADD served by the daemon");
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 8, "{ips:?}");
    for p in &pods {
        run(&node, p, "DEL", &[daemon.env()]).ok();
    }
    node.gc_idle_tenants(2);
}

#[test]
#[ignore = "needs root (a scratch node namespace)"]
fn an_edited_pipeline_takes_effect_at_the_next_invocation() {
    let node = Node::new("an edited pipeline through the daemon");
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&node, &dir.path().join("tenet.sock"));
    let text = std::fs::read_to_string(common::rainbond()).unwrap();
    let manifest = common::manifest(dir.path(), "pipeline.toml", &text);
    let pipeline = manifest.to_str().unwrap();
    let p1 = Pod::new("edit-1", "team-a");
    let r1 = run(
        &node,
        &p1,
        "ADD",
        &[daemon.env(), ("TENET_PIPELINE", pipeline)],
    )
    .ok();
    assert_eq!(r1["dns"]["nameservers"][0], "10.96.0.10");
    let edited = text.replace(
        r#"nameservers = ["10.96.0.10"]"#,
        r#"nameservers = ["10.96.0.53"]"#,
    );
    assert_ne!(edited, text);
    std::fs::write(&manifest, edited).unwrap();
    let p2 = Pod::new("edit-2", "team-a");
    let r2 = run(
        &node,
        &p2,
        "ADD",
        &[daemon.env(), ("TENET_PIPELINE", pipeline)],
    )
    .ok();
    assert_eq!(last_path(&node, "ADD"), served());
    assert_eq!(r2["dns"]["nameservers"][0], "10.96.0.53", "{r2}");
    for p in [&p1, &p2] {
        run(
            &node,
            p,
            "DEL",
            &[daemon.env(), ("TENET_PIPELINE", pipeline)],
        )
        .ok();
    }
    node.gc_idle_tenants(1);
}

#[test]
#[ignore = "needs root (a scratch node namespace, another uid)"]
fn a_peer_of_another_uid_is_declined_unread() {
    let node = Node::new("the daemon refuses other users");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("tenet.sock");
    let daemon = Daemon::start(&node, &socket);
    // Opened to everyone on purpose: the uid check must hold on its own.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let p = Pod::new("other-uid", "team-a");
    let mut cmd = node.command();
    for (k, v) in p.env("ADD") {
        cmd.env(k, v);
    }
    cmd.env("TENET_SOCKET", &socket).uid(65534).gid(65534);
    let out = common::run_with_stdin(&mut cmd, &conf());
    // It ran by itself, with nobody's rights, and failed.
    assert!(!out.status.success());
    assert!(
        daemon.log().contains("a peer of another uid was refused"),
        "{}",
        daemon.log()
    );
    assert!(
        records(&node)
            .iter()
            .all(|r| r.daemon.as_deref() != Some("served")),
        "the daemon ran nothing"
    );
    assert!(p.addrs().iter().all(|(name, _)| name == "lo"));
}
