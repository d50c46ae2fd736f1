//! End-to-end through containerd's CRI, the kubelet's path (issue 14): the
//! real containerd 1.6 from Debian, started by each test in a network
//! namespace of its own (the "node", see tests/cri-harness), runs the
//! release `tenet` that `tenetctl install` put into a temp CNI bin dir, with
//! the rainbond pipeline. The test is the kubelet: a minimal CRI client
//! (`cri_harness::CriClient`) sends RunPodSandbox / PodSandboxStatus /
//! StopPodSandbox / RemovePodSandbox / ListPodSandbox over containerd's
//! socket, with pod metadata and annotations as the kubelet sends them.
//!
//! - the pod annotation `tenet.io/ip` reaches the pipeline through
//!   containerd's `io.kubernetes.cri.pod-annotations` capability and is the
//!   pod's address; the tenant is the pipeline's choice;
//! - with a kubeconfig pointing at the Kubernetes API emulator, the tenant
//!   comes from the namespace's label (and a pod label wins over it);
//! - the node agent frees the address and links of a sandbox the runtime
//!   forgot without a DEL (its state wiped), and serves Prometheus metrics.
//!
//! Needs root and the packages `containerd runc podman busybox-static
//! nftables python3-prometheus-client` (`make deps`), and `make build
//! guests`; so the tests are `#[ignore]`d, and `make test` runs them as root
//! with `--include-ignored`. A missing prerequisite is a panic naming it.
//!
//! Run: `make build guests && cargo test -p tenet --test cri_e2e -- --include-ignored`

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::install::{Installed, assert_clean, node_links, tenant_chains};
use cri_harness::containerd::ok;
use cri_harness::v1::PodSandboxState;
use cri_harness::{Containerd, CriClient, Options, SandboxInfo};
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use tenet::netns::host_ifname;

/// The network name `tenetctl install` writes into the conflist.
const NETWORK: &str = "cri-e2e";

/// A node: tenet installed into temp dirs, and a containerd whose CRI
/// plugin uses them; the calling thread is moved into the node's network
/// namespace (its `ip`/`nft` and listeners are the node's).
struct Node {
    // Dropped first: containerd (and its sandboxes) before the install.
    ctd: Containerd,
    inst: Installed,
    cri: CriClient,
}

impl Node {
    /// `tenet_config` reaches every `tenet` exec as `TENET_CONFIG` (libcni
    /// passes containerd's environment on to plugins).
    fn start(inst: Installed, tenet_config: &Path) -> Self {
        // containerd's CRI runs the `loopback` plugin for every sandbox from
        // its single bin_dir (1.6 has no bin_dir list): an operator copies it
        // there beside tenet, as this node does.
        std::fs::copy("/usr/lib/cni/loopback", inst.path("bin/loopback"))
            .expect("/usr/lib/cni/loopback (Debian package containernetworking-plugins)");
        let ctd = Containerd::start(Options {
            cni_bin_dir: inst.path("bin"),
            cni_conf_dir: inst.path("net.d"),
            env: vec![(OsString::from("TENET_CONFIG"), tenet_config.into())],
        });
        ctd.netns().enter();
        let mut cri = ctd.client();
        let v = cri.version().expect("CRI Version");
        assert_eq!(v.runtime_name, "containerd", "{v:?}");
        assert_eq!(v.runtime_api_version, "v1", "{v:?}");
        Node { ctd, inst, cri }
    }

    /// RunPodSandbox; a failure panics with containerd's log.
    fn run_pod(&mut self, ns: &str, name: &str, uid: &str, annotations: &[(&str, &str)]) -> String {
        let cfg = self.ctd.pod(ns, name, uid, annotations);
        let started = Instant::now();
        let id = self.cri.run_pod_sandbox(cfg).unwrap_or_else(|e| {
            panic!(
                "RunPodSandbox {ns}/{name}: {e}\ncontainerd log:\n{}",
                self.ctd.log_tail()
            )
        });
        eprintln!("RunPodSandbox {ns}/{name}: {:?}", started.elapsed());
        id
    }

    /// The sandbox's state, IP and containerd's info (pid, netns path).
    fn status(&mut self, id: &str) -> (PodSandboxState, String, SandboxInfo) {
        let r = self
            .cri
            .pod_sandbox_status(id)
            .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e}"));
        let s = r.status.expect("PodSandboxStatus without status");
        let info = SandboxInfo::from_status(&r.info)
            .unwrap_or_else(|| panic!("no pid/netns in the verbose info: {:?}", r.info));
        let state = s.state();
        let ip = s.network.map(|n| n.ip).unwrap_or_default();
        (state, ip, info)
    }

    /// Stop then remove, as the kubelet does; each must succeed.
    fn stop_and_remove(&mut self, id: &str) {
        self.cri
            .stop_pod_sandbox(id)
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", self.ctd.log_tail()));
        assert_clean(&self.inst, "after StopPodSandbox");
        self.cri
            .remove_pod_sandbox(id)
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", self.ctd.log_tail()));
        assert_clean(&self.inst, "after RemovePodSandbox");
        let left = self.cri.list_pod_sandbox().unwrap();
        assert!(left.iter().all(|s| s.id != id), "sandbox {id} still listed");
    }

    /// Stops and removes every sandbox in `ids`, then checks the node is
    /// clean.
    fn stop_and_remove_all(&mut self, ids: &[&str]) {
        for id in ids {
            self.cri.stop_pod_sandbox(id).unwrap();
            self.cri.remove_pod_sandbox(id).unwrap();
        }
        assert_clean(&self.inst, "after removing every sandbox");
        assert!(self.cri.list_pod_sandbox().unwrap().is_empty());
    }

    /// The only attachment record of `id` (its eth0), parsed.
    fn record(&self, id: &str) -> Value {
        let recs: Vec<Value> = self
            .inst
            .records()
            .into_iter()
            .filter(|r| r.to_string().contains(id))
            .collect();
        assert_eq!(recs.len(), 1, "records of {id}: {recs:#?}");
        recs.into_iter().next().unwrap()
    }
}

/// The pod's IPv4 addresses as `(ifname, addr)`, read inside the sandbox's
/// network namespace (through the pause process), loopback left out.
fn pod_addrs(pid: u32) -> Vec<(String, Ipv4Net)> {
    let out = ok(
        Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["ip", "-4", "-j", "addr", "show"]),
        Duration::from_secs(10),
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut addrs = Vec::new();
    for link in v.as_array().unwrap() {
        let name = link["ifname"].as_str().unwrap();
        if name == "lo" {
            continue;
        }
        for a in link["addr_info"].as_array().unwrap() {
            let net = format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]);
            addrs.push((name.to_owned(), net.parse().unwrap()));
        }
    }
    addrs
}

/// What the rainbond pipeline gives a pod with the static annotation
/// `ip`: exactly that address on eth0 (the tenant's /24), and no other
/// address from the pod pool anywhere in the pod.
fn assert_pod_has_exactly(pid: u32, ip: Ipv4Addr) {
    let pool: Ipv4Net = "10.64.0.0/12".parse().unwrap();
    let in_pool: Vec<_> = pod_addrs(pid)
        .into_iter()
        .filter(|(_, a)| pool.contains(&a.addr()))
        .collect();
    let want = Ipv4Net::new(ip, 24).unwrap();
    assert_eq!(in_pool, vec![("eth0".to_string(), want)], "pod addresses");
}

/// The two host ends of a sandbox's attachment (eth0, eth1).
fn host_ends(id: &str) -> BTreeSet<String> {
    [host_ifname(id, "eth0"), host_ifname(id, "eth1")].into()
}

/// The tenant's bridge of a record exists on the node and carries the
/// gateway of the tenant's subnet.
fn assert_bridge(rec: &Value, subnet: &str) {
    let bridge = rec["bridge"]
        .as_str()
        .unwrap_or_else(|| panic!("record without bridge: {rec:#}"));
    let out = ok(
        Command::new("ip").args(["-4", "-j", "addr", "show", "dev", bridge]),
        Duration::from_secs(10),
    );
    let net: Ipv4Net = subnet.parse().unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    let gw_in_subnet = v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| net.contains(&a["local"].as_str().unwrap().parse::<Ipv4Addr>().unwrap()));
    assert!(
        gw_in_subnet,
        "bridge {bridge} has no gateway in {subnet}: {out}"
    );
}

// ------------------------------------------------------------------ tests

#[test]
#[ignore = "needs root, containerd, runc, podman, busybox-static, nftables: make test runs it"]
fn static_address_from_the_pod_annotation_and_tenant_from_the_pipeline() {
    let t0 = Instant::now();
    let inst = Installed::new(&["--network", NETWORK]);
    let mut node = Node::start(inst, Path::new("/dev/null"));
    eprintln!("node up: {:?}", t0.elapsed());

    let ip: Ipv4Addr = "10.64.7.9".parse().unwrap();
    let id = node.run_pod(
        "team-a",
        "web-0",
        "0b5c1c52-3f0e-4d6a-9d1e-1f6f4a0c0001",
        &[("tenet.io/ip", "10.64.7.9"), ("other", "kept-out")],
    );
    let (state, status_ip, info) = node.status(&id);
    assert_eq!(state, PodSandboxState::SandboxReady);
    assert_eq!(status_ip, ip.to_string(), "PodSandboxStatus network.ip");
    assert_pod_has_exactly(info.pid, ip);

    // The tenant is the pipeline's: rainbond's tenant-map falls back to the
    // pod's namespace (the kubelet path passes no labels without the API).
    let rec = node.record(&id);
    assert_eq!(rec["tenant"], "team-a", "{rec:#}");
    assert_eq!(rec["netns"], info.netns_path.as_str(), "CNI_NETNS");
    assert_bridge(&rec, "10.64.7.0/24");
    assert_eq!(node_links("tn"), host_ends(&id));
    assert!(!tenant_chains().is_empty(), "no tenant chains after ADD");

    // A containerd restart (kill, start on the same state) keeps the pod
    // and its address; the later DELs still find everything.
    node.ctd.restart();
    node.cri = node.ctd.client();
    // (containerd 1.6.20 reports an empty network.ip for it after the
    // restart; the pod's own view is what counts here.)
    let (state, _, again) = node.status(&id);
    assert_eq!(state, PodSandboxState::SandboxReady, "after a restart");
    assert_pod_has_exactly(again.pid, ip);
    assert_eq!(again.pid, info.pid, "the sandbox process survived");
    assert_eq!(node_links("tn"), host_ends(&id));

    node.stop_and_remove(&id);

    // The address went back: another pod asking for it gets it.
    let id2 = node.run_pod(
        "team-a",
        "web-1",
        "0b5c1c52-3f0e-4d6a-9d1e-1f6f4a0c0002",
        &[("tenet.io/ip", "10.64.7.9")],
    );
    let (_, status_ip, info) = node.status(&id2);
    assert_eq!(status_ip, ip.to_string());
    assert_pod_has_exactly(info.pid, ip);
    node.stop_and_remove(&id2);
    assert!(node.cri.list_pod_sandbox().unwrap().is_empty());
    eprintln!("total: {:?}", t0.elapsed());
}

/// The rainbond pipeline, plus tenant-map's `namespaceLabels` (Capsule's
/// tenant label on the namespace).
fn rainbond_with_namespace_labels(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(common::rainbond()).unwrap();
    let needle = "labels = [\"tenant_id\"]\n";
    assert!(text.contains(needle), "policies/rainbond.toml changed");
    let text = text.replacen(
        needle,
        &format!("{needle}namespaceLabels = [\"capsule.clastix.io/tenant\"]\n"),
        1,
    );
    common::manifest(dir, "rainbond-capsule.toml", &text)
}

/// Turns on the API lookups for the installed network (the conflist's
/// `kubernetes` key on the tenet plugin).
fn enable_kubernetes(inst: &Installed) {
    let path = inst.path("net.d/10-tenet.conflist");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let tenet = v["plugins"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["type"] == "tenet")
        .expect("tenet in the conflist");
    tenet["kubernetes"] =
        json!({"podLabels": true, "namespaceLabels": true, "failurePolicy": "fail"});
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
#[ignore = "needs root, containerd, runc, podman, busybox-static, nftables: make test runs it"]
fn tenant_from_the_namespace_label_through_the_api() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = rainbond_with_namespace_labels(dir.path());
    let inst = Installed::with_pipeline(&pipeline, &["--network", NETWORK]);
    enable_kubernetes(&inst);
    // tenet reads it per exec: written below, once the API is up.
    let tenet_toml = dir.path().join("tenet.toml");
    let mut node = Node::start(inst, &tenet_toml);

    // The API emulator listens on the node's loopback (this thread is in
    // the node's namespace now), where tenet's execs reach it.
    let emu = common::kube::start(dir.path());
    emu.put_namespace("team-a", &[("capsule.clastix.io/tenant", "acme")]);
    let uid0 = emu.put_pod("team-a", "web-0", &[("app", "web")], Some("n1"));
    let uid1 = emu.put_pod("team-a", "web-1", &[("tenant_id", "team-b")], Some("n1"));
    let kc = common::kube::kubeconfig(dir.path(), emu.url(), common::kube::TOKEN);
    std::fs::write(
        &tenet_toml,
        format!("[kubernetes]\nkubeconfig = {kc:?}\ntimeout_ms = 3000\n"),
    )
    .unwrap();
    eprintln!("node and API up: {:?}", t0.elapsed());

    let id = node.run_pod("team-a", "web-0", &uid0, &[]);
    let (state, status_ip, _) = node.status(&id);
    assert_eq!(state, PodSandboxState::SandboxReady);
    let rec = node.record(&id);
    assert_eq!(rec["tenant"], "acme", "the namespace's label: {rec:#}");
    assert!(!status_ip.is_empty(), "no IP in the sandbox status");
    let paths: Vec<(String, Option<String>)> = emu
        .journal()
        .into_iter()
        .map(|s| (s.path, s.user))
        .collect();
    let user = Some(common::kube::USER.to_string());
    assert_eq!(
        paths,
        [
            (
                "/api/v1/namespaces/team-a/pods/web-0".to_string(),
                user.clone()
            ),
            ("/api/v1/namespaces/team-a".to_string(), user),
        ],
        "tenet read the pod and its namespace with its token"
    );

    // A pod label (rainbond's tenant_id) wins over the namespace's; both
    // pods are up at once, in their own tenants.
    let id1 = node.run_pod("team-a", "web-1", &uid1, &[]);
    let rec1 = node.record(&id1);
    assert_eq!(rec1["tenant"], "team-b", "the pod's label: {rec1:#}");
    assert_ne!(rec["bridge"], rec1["bridge"], "one bridge per tenant");

    node.stop_and_remove_all(&[&id1, &id]);
    eprintln!("total: {:?}", t0.elapsed());
}

// ------------------------------------------------------------ node agent

/// `tenetctl agent` on the node, killed on drop.
struct Agent {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Agent {
    /// Starts the agent against the node's containerd, in the calling
    /// thread's (the node's) network namespace, GC every `interval`.
    fn start(inst: &Installed, ctd: &Containerd, interval: Duration, dir: &Path) -> Self {
        // A free loopback port of the node (released just before the agent
        // binds it; nothing else runs in this namespace).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let log = dir.join("agent.log");
        let child = Command::new(common::binary("tenetctl"))
            .arg("agent")
            .arg("--config")
            .arg(inst.path("etc/tenet.toml"))
            .args(["--listen", &addr])
            .arg("--cri-socket")
            .arg(ctd.socket())
            .args(["--gc-interval", &format!("{}s", interval.as_secs())])
            // The forgotten attachment is seconds old: collect it anyway
            // (the default minimum age guards ADDs the runtime has not
            // listed yet; the live pod here is listed).
            .args(["--gc-min-age", "1s"])
            .arg("--conf-dir")
            .arg(inst.path("net.d"))
            .args(["--network", NETWORK])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn tenetctl agent");
        Agent { child, addr, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An HTTP GET, the connection closed after the reply: (status, body).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        let (head, body) = reply.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of a parsed exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: serde_json::Map<String, Value>,
    value: f64,
}

/// Parses a Prometheus text exposition with the Prometheus project's own
/// Python client parser (Debian python3-prometheus-client): the families'
/// (name, type) and every sample. A malformed exposition is a panic.
fn parse_exposition(text: &str) -> (Vec<(String, String)>, Vec<Sample>) {
    const SCRIPT: &str = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "samples": [
        {"name": s.name, "labels": s.labels,
         "value": s.value if math.isfinite(s.value) else str(s.value)}
        for s in f.samples]})
print(json.dumps(out))
"#;
    assert!(
        Path::new("/usr/lib/python3/dist-packages/prometheus_client").is_dir(),
        "needs the Prometheus text parser (Debian package python3-prometheus-client)"
    );
    let out = common::run_with_stdin(Command::new("/usr/bin/python3").args(["-c", SCRIPT]), text);
    assert!(
        out.status.success(),
        "the exposition does not parse: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut families = Vec::new();
    let mut samples = Vec::new();
    for f in v.as_array().unwrap() {
        families.push((
            f["name"].as_str().unwrap().to_owned(),
            f["type"].as_str().unwrap().to_owned(),
        ));
        for s in f["samples"].as_array().unwrap() {
            samples.push(Sample {
                name: s["name"].as_str().unwrap().to_owned(),
                labels: s["labels"].as_object().unwrap().clone(),
                value: s["value"].as_f64().unwrap_or(f64::NAN),
            });
        }
    }
    (families, samples)
}

/// Polls `cond` every 200 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root, containerd, runc, podman, busybox-static, nftables, python3-prometheus-client: make test runs it"]
fn the_agent_frees_what_a_wiped_runtime_forgot() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let inst = Installed::new(&["--network", NETWORK]);
    let mut node = Node::start(inst, Path::new("/dev/null"));

    let ip = "10.64.9.9";
    let gone = node.run_pod("team-a", "web-0", "7d0e-gone", &[("tenet.io/ip", ip)]);
    let (_, _, info) = node.status(&gone);
    // The pod's netns outlives the crash while this handle is open, as a
    // namespace pinned elsewhere would: its veths stay for the agent to
    // remove (otherwise the kernel would take them with the namespace).
    let _pin = std::fs::File::open(format!("/proc/{}/ns/net", info.pid)).unwrap();

    // The fault: the node crashes and containerd's state is wiped; no DEL.
    node.ctd.wipe_state();
    node.cri = node.ctd.client();
    assert!(
        node.cri.list_pod_sandbox().unwrap().is_empty(),
        "the runtime still knows a sandbox after the wipe"
    );
    assert_eq!(
        node_links("tn"),
        host_ends(&gone),
        "host ends after the wipe"
    );
    assert_eq!(node.record(&gone)["tenant"], "team-a");

    // A live pod the agent must leave alone.
    let live = node.run_pod("team-b", "api-0", "7d0e-live", &[]);
    let live_rec = node.record(&live);

    let interval = Duration::from_secs(2);
    let agent = Agent::start(&node.inst, &node.ctd, interval, dir.path());
    let ready = wait_for(Duration::from_secs(30), || {
        agent.get("/readyz").is_some_and(|(s, _)| s == 200)
    });
    assert!(ready, "/readyz never 200:\n{}", agent.log());
    let started = Instant::now();
    let freed = wait_for(interval * 3, || {
        node.inst
            .records()
            .iter()
            .all(|r| !r.to_string().contains(&gone))
            && node_links("tn").is_disjoint(&host_ends(&gone))
    });
    assert!(
        freed,
        "the agent did not tear down {gone} within 3 GC periods:\nlinks {:?}\nrecords {:#?}\nagent log:\n{}",
        node_links("tn"),
        node.inst.records(),
        agent.log()
    );
    eprintln!(
        "GC freed the forgotten sandbox after {:?}",
        started.elapsed()
    );
    // The live pod is untouched, after another full period too.
    std::thread::sleep(interval + Duration::from_millis(500));
    assert_eq!(
        node.record(&live),
        live_rec,
        "the live pod's record changed"
    );
    assert_eq!(
        node_links("tn"),
        host_ends(&live),
        "host ends of the live pod"
    );
    // The forgotten pod's address is free: a new pod gets it.
    let again = node.run_pod("team-a", "web-0", "7d0e-again", &[("tenet.io/ip", ip)]);
    assert_eq!(node.status(&again).1, ip);

    // /metrics parses and says what happened.
    let (status, body) = agent.get("/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    let (families, samples) = parse_exposition(&body);
    for (name, typ) in &families {
        assert_ne!(typ, "unknown", "{name} has no TYPE");
    }
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v))
            })
            .map(|s| s.value)
    };
    let adds = value(
        "tenet_cni_operations_total",
        &[("command", "ADD"), ("code", "0")],
    );
    assert!(adds.is_some_and(|n| n >= 3.0), "ADDs: {adds:?}\n{body}");
    let removed = value("tenet_agent_gc_removed_total", &[]);
    assert!(
        removed.is_some_and(|n| n >= 1.0),
        "GC removed: {removed:?}\n{body}"
    );
    // Histograms are consistent: the +Inf bucket is the count.
    for (name, typ) in families.iter().filter(|(_, t)| t == "histogram") {
        for s in samples.iter().filter(|s| s.name == format!("{name}_count")) {
            let mut labels: Vec<(&str, &str)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
                .collect();
            labels.push(("le", "+Inf"));
            let inf = value(&format!("{name}_bucket"), &labels);
            assert_eq!(inf, Some(s.value), "{name} ({typ}) {labels:?}");
        }
    }

    drop(agent);

    // `tenetctl agent --once` against the same containerd: one upkeep and
    // one GC pass, exit 0; both live sandboxes listed, nothing removed.
    let out = Command::new(common::binary("tenetctl"))
        .args(["agent", "--once", "--config"])
        .arg(node.inst.path("etc/tenet.toml"))
        .arg("--cri-socket")
        .arg(node.ctd.socket())
        .arg("--conf-dir")
        .arg(node.inst.path("net.d"))
        .args(["--network", NETWORK])
        .stdin(Stdio::null())
        .output()
        .expect("tenetctl agent --once");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("upkeep: ok"), "{stdout}");
    assert!(
        stdout.contains("gc: runtime") && stdout.contains("2 sandboxes, removed 0"),
        "{stdout}"
    );
    assert_eq!(
        node.record(&live),
        live_rec,
        "--once left the live pod alone"
    );

    node.stop_and_remove_all(&[&live, &again]);
    eprintln!("total: {:?}", t0.elapsed());
}
