//! End-to-end tests with real CNI callers (tier 4): podman 4.3 with its CNI
//! backend, and `cniclient` (tests/cniclient/main.go), a cnitool-style
//! driver built here from Debian's libcni, the library podman and containerd
//! embed. Both drive the release `tenet`, installed by `tenetctl install`
//! into a temp dir, on the embedded default (local store, Linux bridge +
//! nftables) with the rainbond pipeline (eth0 on the tenant bridge, eth1 to
//! the node).
//!
//! Network safety: each test first moves its thread into a fresh network
//! namespace (the "node"); podman, cniclient, tenet, portmap, `nft` and `ip`
//! are its children and inherit it, so the tenant bridge, the veths' host
//! ends, the `inet tenet` table and portmap's iptables rules all land there.
//! Pods are namespaces created by podman (for its container) or held by a
//! parked thread. podman's storage, run dir, CNI config dir, plugin dir and
//! containers.conf are private to the test; so are libcni's result cache and
//! tenet's state, cache and configuration.
//!
//! Needs root and the packages `podman runc busybox-static golang-go
//! golang-github-appc-cni-dev containernetworking-plugins iptables nftables`
//! (`make deps`), so the tests are `#[ignore]`d: plain `cargo test` lists them
//! as ignored, and `make test` runs them as root with `--include-ignored`.
//! When one runs and something is missing, it panics naming what (and the
//! package to install).
//!
//! Run: `make build guests && cargo test -p tenet --test runtimes_e2e -- --include-ignored`

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::install::{
    Installed, assert_clean, assert_rainbond_address, node_links, ok, run, tenant_chains, text,
};
use ipnet::Ipv4Net;
use serde_json::Value;
use tenet::netns::host_ifname;
use tenet::netns::testing::{ScratchNetns, enter_scratch_node, is_root};

/// Everything a test needs from the machine; a missing item is a panic
/// naming it.
fn preflight(needs: &[(&str, &str)]) {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (the tests create network namespaces)".to_string());
    }
    for (path, package) in needs {
        if !Path::new(path).exists() {
            missing.push(format!("{path} (Debian package {package})"));
        }
    }
    assert!(
        missing.is_empty(),
        "needs {} (run as root after `make deps`, or `apt-get install` the packages named)",
        missing.join(", ")
    );
}

const CLIENT_NEEDS: &[(&str, &str)] = &[
    ("/usr/bin/go", "golang-go"),
    (
        "/usr/share/gocode/src/github.com/containernetworking/cni/libcni",
        "golang-github-appc-cni-dev",
    ),
    ("/usr/lib/cni/portmap", "containernetworking-plugins"),
    ("/usr/sbin/iptables-save", "iptables"),
    ("/usr/sbin/nft", "nftables"),
];

const PODMAN_NEEDS: &[(&str, &str)] = &[
    ("/usr/bin/podman", "podman"),
    ("/usr/sbin/runc", "runc"),
    ("/usr/bin/conmon", "conmon"),
    ("/bin/busybox", "busybox-static"),
    ("/usr/sbin/nft", "nftables"),
];

// ---------------------------------------------------------------- libcni

/// Builds tests/cniclient offline in GOPATH mode against Debian's libcni.
fn build_cniclient(dir: &Path) -> PathBuf {
    let out_bin = dir.join("cniclient");
    let src = common::root().join("tests/cniclient/main.go");
    let gocache = common::root().join("target/go-cache");
    let out = run(
        Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&out_bin)
            .arg(&src)
            .current_dir(src.parent().unwrap())
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOFLAGS", "")
            .env("GOCACHE", &gocache)
            .env("HOME", dir),
        Duration::from_secs(110),
    );
    ok(out, "go build tests/cniclient");
    out_bin
}

/// cniclient with the environment of one attachment.
struct Client {
    bin: PathBuf,
    env: Vec<(String, String)>,
    network: String,
}

impl Client {
    fn new(dir: &Path, inst: &Installed, network: &str, container_id: &str) -> Self {
        let path = format!("{}:/usr/lib/cni", inst.path("bin").display());
        Client {
            bin: build_cniclient(dir),
            env: vec![
                (
                    "NETCONFPATH".into(),
                    inst.path("net.d").display().to_string(),
                ),
                ("CNI_PATH".into(), path),
                (
                    "CNI_CACHEDIR".into(),
                    inst.path("cni-cache").display().to_string(),
                ),
                ("CNI_CONTAINERID".into(), container_id.into()),
                (
                    "CNI_ARGS".into(),
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-0".into(),
                ),
                // No /etc/tenet/tenet.toml of the machine: the conflist says all.
                ("TENET_CONFIG".into(), "/dev/null".into()),
            ],
            network: network.into(),
        }
    }

    fn with(mut self, k: &str, v: &str) -> Self {
        self.env.retain(|(n, _)| n != k);
        self.env.push((k.into(), v.into()));
        self
    }

    fn call(&self, op: &str, netns: &str) -> Output {
        self.raw(&[op, &self.network, netns])
    }

    fn raw(&self, args: &[&str]) -> Output {
        run(
            Command::new(&self.bin)
                .args(args)
                .envs(self.env.iter().map(|(k, v)| (k, v))),
            Duration::from_secs(60),
        )
    }
}

fn ns_str(pod: &ScratchNetns) -> String {
    pod.path().display().to_string()
}

/// The first IPv4 address and gateway of an ADD result, and the interface
/// names it lists.
fn parse_result(out: &str) -> (Ipv4Net, Ipv4Addr, Vec<(String, String)>) {
    let v: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["cniVersion"], "1.0.0", "{out}");
    let ip = &v["ips"][0];
    let addr: Ipv4Net = ip["address"].as_str().unwrap().parse().unwrap();
    let gw: Ipv4Addr = ip["gateway"].as_str().unwrap().parse().unwrap();
    let ifaces = v["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                i["sandbox"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    (addr, gw, ifaces)
}

fn pod_out(pod: &ScratchNetns, args: &[&str]) -> String {
    ok(
        pod.cmd("ip", args).unwrap(),
        &format!("ip {args:?} in the pod"),
    )
}

#[test]
#[ignore = "needs root, go, libcni, portmap, iptables, nftables: make test runs it"]
fn libcni_add_check_del_del() {
    preflight(CLIENT_NEEDS);
    enter_scratch_node().expect("scratch node netns");
    let inst = Installed::new(&["--network", "e2e"]);
    let tmp = tempfile::tempdir().unwrap();
    let cid = "e2e-libcni-1";
    let client = Client::new(tmp.path(), &inst, "e2e", cid);
    let versions = ok(client.raw(&["version", "tenet"]), "cniclient version tenet");
    assert!(versions.contains("1.0.0"), "{versions}");

    let pod = ScratchNetns::new().unwrap();
    let ns = ns_str(&pod);
    let out = ok(client.call("add", &ns), "cniclient add");
    let (addr, gw, ifaces) = parse_result(&out);
    assert_rainbond_address(addr, gw);
    assert!(
        ifaces.contains(&("eth0".into(), ns.clone())),
        "eth0 in the pod: {ifaces:?}"
    );
    assert!(
        ifaces.iter().any(|(n, s)| n == "eth1" && *s == ns),
        "eth1 in the pod: {ifaces:?}"
    );

    // Inside the pod: the address, the default route via the gateway, eth1
    // and the service network through it.
    let a = pod_out(&pod, &["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(a.contains(&addr.to_string()), "{a}");
    let r = pod_out(&pod, &["-4", "route", "show"]);
    assert!(r.contains(&format!("default via {gw} dev eth0")), "{r}");
    assert!(r.contains("10.96.0.0/12") && r.contains("dev eth1"), "{r}");
    // On the node: exactly this attachment's two host ends, the tenant's rules.
    let ends: BTreeSet<String> = [host_ifname(cid, "eth0"), host_ifname(cid, "eth1")].into();
    assert_eq!(node_links("tn"), ends);
    assert!(!tenant_chains().is_empty(), "no tenant chains after ADD");
    assert!(!inst.records_left().is_empty(), "no records after ADD");

    // CHECK (libcni passes the cached result as prevResult) passes, and
    // fails once something ADD made is gone.
    ok(client.call("check", &ns), "cniclient check");
    pod_out(&pod, &["link", "del", "eth1"]);
    let out = client.call("check", &ns);
    assert!(!out.status.success(), "CHECK passed without eth1");
    let err = text(&out.stderr) + &text(&out.stdout);
    assert!(
        err.contains("eth1"),
        "CHECK error does not name eth1: {err}"
    );

    ok(client.call("del", &ns), "cniclient del");
    assert_clean(&inst, "after DEL");
    let links = pod_out(&pod, &["-o", "link", "show"]);
    assert!(!links.contains("eth0"), "eth0 left in the pod: {links}");
    ok(client.call("del", &ns), "second cniclient del");
    assert_clean(&inst, "after the second DEL");
}

#[test]
#[ignore = "needs root, go, libcni, portmap, iptables, nftables: make test runs it"]
fn libcni_del_with_empty_netns_after_the_pod_is_gone() {
    preflight(CLIENT_NEEDS);
    enter_scratch_node().expect("scratch node netns");
    let inst = Installed::new(&["--network", "e2e"]);
    let tmp = tempfile::tempdir().unwrap();
    let client = Client::new(tmp.path(), &inst, "e2e", "e2e-libcni-gone");

    let pod = ScratchNetns::new().unwrap();
    let ns = ns_str(&pod);
    ok(client.call("add", &ns), "cniclient add");
    assert_eq!(node_links("tn").len(), 2);
    // The pod's namespace goes away first (the kernel destroys its veths),
    // then the runtime deletes with an empty CNI_NETNS, twice (containerd's
    // StopPodSandbox then RemovePodSandbox).
    drop(pod);
    ok(client.call("del", ""), "cniclient del with empty netns");
    assert_clean(&inst, "after DEL with empty netns");
    ok(client.call("del", ""), "second DEL with empty netns");
    assert_clean(&inst, "after the second DEL with empty netns");

    // The address went back to the pool: a new pod gets an address again.
    let pod = ScratchNetns::new().unwrap();
    let ns = ns_str(&pod);
    let client = client.with("CNI_CONTAINERID", "e2e-libcni-again");
    let (addr, gw, _) = parse_result(&ok(client.call("add", &ns), "add again"));
    assert_rainbond_address(addr, gw);
    ok(client.call("del", &ns), "del");
    assert_clean(&inst, "after the last DEL");
}

#[test]
#[ignore = "needs root, go, libcni, portmap, iptables, nftables: make test runs it"]
fn libcni_chain_with_portmap() {
    preflight(CLIENT_NEEDS);
    enter_scratch_node().expect("scratch node netns");
    let inst = Installed::new(&["--network", "e2e-pm", "--chain-portmap"]);
    let tmp = tempfile::tempdir().unwrap();
    let cap = r#"{"portMappings":[{"hostPort":18091,"containerPort":80,"protocol":"tcp"}]}"#;
    let client = Client::new(tmp.path(), &inst, "e2e-pm", "e2e-libcni-pm").with("CAP_ARGS", cap);
    let nat = || {
        ok(
            run(
                Command::new("iptables-save").args(["-t", "nat"]),
                Duration::from_secs(10),
            ),
            "iptables-save",
        )
    };

    let pod = ScratchNetns::new().unwrap();
    let ns = ns_str(&pod);
    let out = ok(client.call("add", &ns), "cniclient add (tenet + portmap)");
    let (addr, gw, _) = parse_result(&out);
    assert_rainbond_address(addr, gw);
    // portmap got tenet's result and wrote its DNAT to the pod's address,
    // in the scratch node's tables.
    let rules = nat();
    assert!(
        rules.contains("--dport 18091") && rules.contains(&format!("{}:80", addr.addr())),
        "no DNAT for 18091 -> {}:80 in:\n{rules}",
        addr.addr()
    );
    // (CHECK is not run here: the reference portmap 1.1.1 fails CHECK on an
    // IPv4-only attachment, looking for its IPv6 chain; real-clients.md B4.)

    // DEL runs portmap then tenet (reverse order), with the same CAP_ARGS.
    ok(client.call("del", &ns), "cniclient del (portmap + tenet)");
    let rules = nat();
    assert!(!rules.contains("--dport 18091"), "DNAT left:\n{rules}");
    assert_clean(&inst, "after DEL");
    ok(client.call("del", ""), "DEL with empty netns");
    assert_clean(&inst, "after DEL with empty netns");
}

// ---------------------------------------------------------------- podman

/// podman with everything private to the test: storage, run dir, tmp dir,
/// events log, CNI config and plugin dirs, containers.conf.
struct Podman {
    dir: PathBuf,
    conf: PathBuf,
    containers: Vec<String>,
}

impl Podman {
    fn new(dir: &Path, inst: &Installed) -> Self {
        let conf = dir.join("containers.conf");
        let q = |p: PathBuf| toml_str(&p.display().to_string());
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        std::fs::write(
            &conf,
            format!(
                "[containers]\n\
                 # no CAP_SYS_RESOURCE here: podman's default rlimits make runc fail\n\
                 default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [network]\n\
                 network_backend = \"cni\"\n\
                 cni_plugin_dirs = [{}, \"/usr/lib/cni\"]\n\
                 network_config_dir = {}\n\
                 [engine]\n\
                 # crun rejects this host's hybrid cgroup layout; runc works\n\
                 runtime = \"runc\"\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 events_logfile_path = {}\n\
                 tmp_dir = {}\n",
                q(inst.path("bin")),
                q(inst.path("net.d")),
                q(dir.join("events.log")),
                q(dir.join("tmp")),
            ),
        )
        .unwrap();
        Podman {
            dir: dir.to_owned(),
            conf,
            containers: Vec::new(),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .env("CONTAINERS_CONF", &self.conf)
            // Reaches tenet through libcni (plugins inherit the environment).
            .env("TENET_CONFIG", "/dev/null");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        run(self.cmd().args(args), Duration::from_secs(60))
    }

    /// A busybox image from busybox-static (no registry is reachable).
    fn import_busybox(&self) {
        let rootfs = self.dir.join("rootfs");
        for d in ["bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        ok(
            run(
                Command::new("chroot")
                    .arg(&rootfs)
                    .args(["/bin/busybox", "--install", "-s"]),
                Duration::from_secs(30),
            ),
            "busybox --install",
        );
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let mut import = self
            .cmd()
            .args([
                "import",
                "--change",
                "CMD [\"/bin/sh\"]",
                "-",
                "localhost/busybox:latest",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .output()
            .unwrap();
        assert!(tar.status.success(), "tar: {}", text(&tar.stderr));
        import.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
        ok(import.wait_with_output().unwrap(), "podman import");
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Even when the test failed: no container (nor its conmon) survives.
        for c in &self.containers {
            let _ = self.run(&["rm", "-f", "-t", "0", c]);
        }
    }
}

fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `inet A.B.C.D/N` from busybox `ip -4 addr show eth0`.
fn parse_inet(out: &str) -> Ipv4Net {
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no inet in {out}"))
        .parse()
        .unwrap()
}

#[test]
#[ignore = "needs root, podman, runc, busybox, nftables: make test runs it"]
fn podman_runs_a_container_on_a_tenet_network() {
    preflight(PODMAN_NEEDS);
    enter_scratch_node().expect("scratch node netns");
    // podman selects a network by name and sends no pod namespace, so the
    // network carries the Rainbond tenant label for all its containers.
    let inst = Installed::new(&["--network", "tenet-e2e", "--label", "tenant_id=acme"]);
    let tmp = tempfile::tempdir().unwrap();
    let mut podman = Podman::new(tmp.path(), &inst);
    podman.import_busybox();

    let name = "tenet-e2e-ctr";
    podman.containers.push(name.into());
    let out = podman.run(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "tenet-e2e",
        "localhost/busybox",
        "sleep",
        "600",
    ]);
    let id = ok(out, "podman run").trim().to_owned();
    assert_eq!(id.len(), 64, "container id: {id}");

    let exec = |script: &str| ok(podman.run(&["exec", name, "sh", "-c", script]), script);
    let addr = parse_inet(&exec("ip -4 addr show eth0"));
    let routes = exec("ip -4 route show");
    let gw: Ipv4Addr = routes
        .lines()
        .find(|l| l.starts_with("default via ") && l.contains(" dev eth0"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("no default route via eth0: {routes}"))
        .parse()
        .unwrap();
    assert_rainbond_address(addr, gw);
    assert!(
        routes.contains("10.96.0.0/12") && routes.contains("dev eth1"),
        "{routes}"
    );
    exec("ip link show eth1");

    // The host side landed in the scratch node: podman's CNI_CONTAINERID is
    // the container id, so the host ends have known names.
    let ends: BTreeSet<String> = [host_ifname(&id, "eth0"), host_ifname(&id, "eth1")].into();
    assert_eq!(node_links("tn"), ends);
    assert!(!tenant_chains().is_empty(), "no tenant chains");

    ok(podman.run(&["rm", "-f", "-t", "0", name]), "podman rm -f");
    podman.containers.clear();
    assert_clean(&inst, "after podman rm -f");
    let ps = ok(podman.run(&["ps", "-a", "-q"]), "podman ps");
    assert_eq!(ps.trim(), "", "containers left");
}
