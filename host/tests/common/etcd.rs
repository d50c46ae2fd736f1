//! A real etcd for integration tests: Debian's `etcd-server` (`/usr/bin/etcd`,
//! etcd 3.4) started on free loopback ports in a temporary directory, as one
//! member or a three-member cluster.
//!
//! Use it from a test file with `mod common;` and `use common::etcd::EtcdCluster;`
//! (this file depends on the standard library only, so any test can include
//! it):
//!
//! ```ignore
//! let etcd = EtcdCluster::single();
//! let endpoints: Vec<String> = etcd.endpoints(); // http://127.0.0.1:<port>
//! ```
//!
//! - A test that starts etcd is `#[ignore = "needs etcd: ..."]`: plain
//!   `cargo test` lists it as ignored, `make test` runs it with
//!   `--include-ignored`. When it runs, a missing `/usr/bin/etcd` is a panic
//!   naming the package to install (`apt-get install etcd-server`), never a
//!   pass. A member that does not become healthy is a panic that prints the
//!   tail of its log.
//! - `kill(i)` / `kill_leader()` SIGKILL a member (a crash, not a clean
//!   stop); `restart(i)` starts it again on the same ports and data dir.
//! - `grpc_calls(i, "Txn")` counts the calls of one kind a member answered
//!   (from its metrics), so tests can assert round trips.
//! - Drop kills every member and removes the directory. A member also gets
//!   SIGKILL from the kernel when the thread that started it ends
//!   (`PR_SET_PDEATHSIG`), so a process that aborts (the benches are built
//!   with `panic = "abort"`, which skips Drop) or is killed leaves no etcd
//!   behind. Start and restart members from the thread that owns the
//!   cluster.
//! - `with_tls(TlsFiles)` serves clients over TLS (mutual when
//!   `client_ca` is set); health is always checked over a separate plain
//!   HTTP metrics listener, so the harness needs no TLS client.
//! - `three_partitionable()` (root) puts each member in a network namespace
//!   of its own, behind a bridge in the calling thread's namespace (which
//!   must be a scratch node: `tenet::netns::testing::enter_scratch_node`);
//!   `partition(i)` then drops member `i`'s peer traffic with nftables in
//!   its own namespace (clients still reach it), `heal(i)` ends that.
//!   Nothing touches the machine's own interfaces or firewall.
//! - `has_leader(i)`, `metric(i, name)`: what a member's metrics say.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// prctl(2), declared here so that this file needs the standard library only
// (libc is linked into every Rust program on Linux).
unsafe extern "C" {
    fn prctl(option: std::ffi::c_int, ...) -> std::ffi::c_int;
}
const PR_SET_PDEATHSIG: std::ffi::c_int = 1;
const SIGKILL: std::ffi::c_ulong = 9;

/// Makes the kernel kill `cmd`'s process when the thread that spawned it
/// ends, so a test that panics or is killed leaves no server behind (the
/// registry helper uses it too).
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only
    // makes one async-signal-safe syscall.
    unsafe {
        cmd.pre_exec(|| {
            if prctl(PR_SET_PDEATHSIG, SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// The etcd binary from Debian's `etcd-server` package.
pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// How long a member may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Server-side TLS material (PEM files) for [`EtcdCluster::start`].
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Server certificate (must be valid for 127.0.0.1).
    pub cert: PathBuf,
    /// Server key.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

struct Member {
    name: String,
    /// The address it listens on: 127.0.0.1, or its own namespace's.
    host: String,
    /// Its network namespace (partitionable clusters only).
    netns: Option<tenet::netns::testing::ScratchNetns>,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster of one or three members (see the module docs).
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    tls: Option<TlsFiles>,
}

/// Panics unless the etcd binary is there, naming the package to install.
pub fn require_etcd() {
    assert!(
        Path::new(ETCD_BIN).is_file(),
        "{ETCD_BIN} is missing: install Debian's etcd-server (`apt-get install etcd-server`, or `make deps`)"
    );
}

/// Free loopback ports, all held open until every one is chosen so they
/// differ. (Another process could still take one before etcd binds it; the
/// start then fails loudly rather than silently.)
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A plain HTTP GET; the body, or None on any failure.
fn http_get(host: &str, port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &format!("{host}:{port}").parse().unwrap(),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_owned())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl EtcdCluster {
    /// One member.
    pub fn single() -> Self {
        Self::start(1, None)
    }

    /// Three members.
    pub fn three() -> Self {
        Self::start(3, None)
    }

    /// One member serving clients over TLS.
    pub fn single_tls(tls: TlsFiles) -> Self {
        Self::start(1, Some(tls))
    }

    /// `n` members, optionally with client TLS; waits until all are healthy.
    pub fn start(n: usize, tls: Option<TlsFiles>) -> Self {
        require_etcd();
        let dir = tempfile::Builder::new()
            .prefix("tenet-etcd-")
            .tempdir()
            .expect("temp dir for etcd");
        let ports = free_ports(3 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                host: "127.0.0.1".into(),
                netns: None,
                client_port: ports[3 * i],
                peer_port: ports[3 * i + 1],
                metrics_port: ports[3 * i + 2],
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster { dir, members, tls };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_healthy(i);
        }
        cluster
    }

    /// Three members, each in a network namespace of its own on a bridge
    /// of the caller's namespace (see the module docs), so that one can be
    /// partitioned. Root only; the caller must have entered a scratch node
    /// namespace first.
    pub fn three_partitionable() -> Self {
        require_etcd();
        let dir = tempfile::Builder::new()
            .prefix("tenet-etcd-")
            .tempdir()
            .expect("temp dir for etcd");
        run_ok("ip", &["link", "add", BRIDGE, "type", "bridge"]);
        run_ok("ip", &["addr", "add", "10.99.0.254/24", "dev", BRIDGE]);
        run_ok("ip", &["link", "set", BRIDGE, "up"]);
        let members: Vec<Member> = (0..3)
            .map(|i| {
                let ns = tenet::netns::testing::ScratchNetns::new().expect("member netns");
                let path = ns.path().to_str().unwrap().to_owned();
                let host_end = format!("tnetcd{i}");
                run_ok(
                    "ip",
                    &[
                        "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns",
                        &path,
                    ],
                );
                run_ok("ip", &["link", "set", &host_end, "master", BRIDGE, "up"]);
                let host = format!("10.99.0.{}", i + 1);
                let ns_ok = |args: &[&str]| {
                    let out = ns.cmd("ip", args).expect("nsenter ip");
                    assert!(out.status.success(), "ip {args:?}: {out:?}");
                };
                ns_ok(&["addr", "add", &format!("{host}/24"), "dev", "eth0"]);
                ns_ok(&["link", "set", "eth0", "up"]);
                Member {
                    name: format!("m{i}"),
                    host,
                    netns: Some(ns),
                    client_port: 2379,
                    peer_port: 2380,
                    metrics_port: 2381,
                    data_dir: dir.path().join(format!("m{i}.etcd")),
                    log: dir.path().join(format!("m{i}.log")),
                    child: None,
                }
            })
            .collect();
        let mut cluster = EtcdCluster {
            dir,
            members,
            tls: None,
        };
        for i in 0..3 {
            cluster.spawn(i);
        }
        for i in 0..3 {
            cluster.wait_healthy(i);
        }
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{}:{}", m.name, m.host, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn spawn(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let scheme = self.scheme();
        let tls = self.tls.clone();
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "member {i} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("etcd log file");
        let client = format!("{scheme}://{}:{}", m.host, m.client_port);
        let peer = format!("http://{}:{}", m.host, m.peer_port);
        // A member with a namespace of its own runs in it (nsenter execs
        // etcd: the parent-death signal below carries over).
        let mut cmd = match &m.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.path().display()))
                    .arg(ETCD_BIN);
                c
            }
            None => Command::new(ETCD_BIN),
        };
        cmd.env_clear()
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--listen-metrics-urls")
            .arg(format!("http://{}:{}", m.host, m.metrics_port))
            .arg("--initial-cluster")
            .arg(&initial)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg("tenet-test")
            // Fast elections so leader-kill tests recover in ~1 s.
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(t) = &tls {
            cmd.arg("--cert-file").arg(&t.cert);
            cmd.arg("--key-file").arg(&t.key);
            if let Some(ca) = &t.client_ca {
                cmd.arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(ca);
            }
        }
        die_with_parent(&mut cmd);
        m.child = Some(cmd.spawn().expect("spawn /usr/bin/etcd"));
    }

    fn wait_healthy(&mut self, i: usize) {
        let start = Instant::now();
        loop {
            let m = &mut self.members[i];
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "etcd member {} exited with {status} while starting:\n{}",
                    m.name,
                    log_tail(&m.log)
                );
            }
            if http_get(&m.host, m.metrics_port, "/health").is_some_and(|b| b.contains("\"true\""))
            {
                return;
            }
            if start.elapsed() > START_TIMEOUT {
                panic!(
                    "etcd member {} not healthy after {START_TIMEOUT:?}:\n{}",
                    m.name,
                    log_tail(&m.log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Client URLs of every member (running or not), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = self.scheme();
        self.members
            .iter()
            .map(|m| format!("{scheme}://{}:{}", m.host, m.client_port))
            .collect()
    }

    /// Client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        self.endpoints()[i].clone()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True if the cluster has no members (never, for a started cluster).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The temporary directory (data dirs and `m<i>.log` files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// True while member `i`'s process runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i]
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// The index of the current leader, from each running member's
    /// `etcd_server_is_leader` metric; waits up to 10 s for an election.
    pub fn leader(&mut self) -> usize {
        let start = Instant::now();
        loop {
            for i in 0..self.members.len() {
                if !self.is_running(i) {
                    continue;
                }
                if self.metric(i, "etcd_server_is_leader") == Some(1.0) {
                    return i;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no etcd leader elected within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many `method` calls (`Txn`, `Range`, `LeaseGrant`, …) member `i`
    /// has answered, whatever their gRPC code: the sum of its
    /// `grpc_server_handled_total` counters for that method.
    pub fn grpc_calls(&self, i: usize, method: &str) -> u64 {
        let m = &self.members[i];
        let text = http_get(&m.host, m.metrics_port, "/metrics").expect("etcd metrics");
        let want = format!("grpc_method=\"{method}\"");
        text.lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{") && l.contains(&want))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// The value of an unlabelled metric of member `i` (`None`: the member
    /// does not answer or has no such metric).
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let m = &self.members[i];
        let text = http_get(&m.host, m.metrics_port, "/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Whether member `i` knows a leader (`etcd_server_has_leader`).
    pub fn has_leader(&self, i: usize) -> Option<bool> {
        self.metric(i, "etcd_server_has_leader").map(|v| v == 1.0)
    }

    /// The member (among `among`) that says it is the leader, waiting up
    /// to `within` for one.
    pub fn leader_among(&self, among: &[usize], within: Duration) -> Option<usize> {
        let start = Instant::now();
        loop {
            if let Some(i) = among
                .iter()
                .copied()
                .find(|i| self.metric(*i, "etcd_server_is_leader") == Some(1.0))
            {
                return Some(i);
            }
            if start.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Cuts member `i` off from the other members: nftables in its own
    /// namespace drops every packet to or from a peer port (2380), both
    /// directions. Clients and metrics still reach it. Partitionable
    /// clusters only.
    pub fn partition(&self, i: usize) {
        let ns = self.members[i]
            .netns
            .as_ref()
            .expect("a partitionable cluster");
        let rules = "table inet tenet_partition {\n\
             chain in { type filter hook input priority 0; policy accept; tcp dport 2380 drop; tcp sport 2380 drop; }\n\
             chain out { type filter hook output priority 0; policy accept; tcp dport 2380 drop; tcp sport 2380 drop; }\n\
             }\n";
        let f = self.dir.path().join(format!("partition-m{i}.nft"));
        std::fs::write(&f, rules).unwrap();
        let out = ns.cmd("nft", &["-f", f.to_str().unwrap()]).expect("nft");
        assert!(out.status.success(), "nft: {out:?}");
    }

    /// Ends [`EtcdCluster::partition`] of member `i`.
    pub fn heal(&self, i: usize) {
        let ns = self.members[i]
            .netns
            .as_ref()
            .expect("a partitionable cluster");
        let out = ns
            .cmd("nft", &["delete", "table", "inet", "tenet_partition"])
            .expect("nft");
        assert!(out.status.success(), "nft: {out:?}");
    }

    /// The process id of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// SIGKILLs member `i` (a crash) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILLs the current leader; returns its index.
    pub fn kill_leader(&mut self) -> usize {
        let i = self.leader();
        self.kill(i);
        i
    }

    /// Starts member `i` again (same ports, same data dir) and waits until
    /// it is healthy (which needs a quorum).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if self.members.iter().any(|m| m.netns.is_some()) {
            // The members' namespaces go with their threads (and their
            // veth ends with them); the bridge is the node namespace's.
            for m in &mut self.members {
                m.netns.take();
            }
            let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
        }
        // The TempDir removes the data dirs and logs after this.
    }
}

/// The bridge of a partitionable cluster, in the caller's namespace.
const BRIDGE: &str = "tnetcdbr";

fn run_ok(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
}

/// Every (key, value) under `prefix`, read with etcd-client directly (not
/// through the code under test), on a private runtime.
pub fn scan(endpoints: &[String], prefix: &str) -> Vec<(String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect(endpoints, None).await.unwrap();
        let r = c
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        r.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect()
    })
}
