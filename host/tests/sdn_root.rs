//! Root tests of the Linux SDN backend: tenant bridges and nftables isolation
//! (tier 3).
//!
//! Each test's thread unshares a fresh "node" namespace first; pods are
//! namespaces held by parked threads; nft rules and forwarding sysctls are
//! only ever set inside those namespaces. They need root, so they are
//! `#[ignore]`d: plain `cargo test` lists them as ignored, and `make test`
//! runs them as root with `--include-ignored`.
//!
//! Run: `cargo test -p tenet --no-default-features --test sdn_root -- --include-ignored`

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;
use tenet::ipam::AttachmentKey;
use tenet::netns::testing::{ScratchNetns, enter_scratch_node, require_root};
use tenet::netns::{Netns, ResolvedRoute, RtNetns, VethSpec, derive_mac, host_ifname};
use tenet::sdn::{
    LinuxSdn, PortGuard, PortSpec, Sdn, SdnError, SdnOptions, bridge_name, link_local,
};

/// The port of a host end, keyed by the host end's own name (the tests
/// drive the backend directly, without the apply engine).
fn port(host: &str) -> PortSpec {
    PortSpec {
        key: AttachmentKey::new("net", host, "eth0"),
        host_ifname: host.to_owned(),
        mac: None,
        addresses: Vec::new(),
        annotations: Vec::new(),
    }
}

/// A veth for container `cid` with its eth0 in `pod`; the host end's name.
fn pod_veth(n: &RtNetns, pod: &ScratchNetns, cid: &str) -> String {
    let host = host_ifname(cid, "eth0");
    n.create_veth(&VethSpec {
        container_id: cid.into(),
        ifname: "eth0".into(),
        host_ifname: host.clone(),
        netns: pod.path().to_owned(),
        mtu: None,
        mac: None,
        link_local: None,
        group: None,
    })
    .unwrap();
    host
}

const POD_PORT: u16 = 8080;
const NODE_PORT: u16 = 9090;

/// Enters a scratch node namespace; panics when not root.
fn node() {
    require_root("this root test");
    enter_scratch_node().expect("scratch node netns");
}

/// Turns forwarding on in the test's node namespace (enter_scratch_node has
/// checked that this thread is not in the machine's namespace).
fn forwarding_on() {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
    std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").unwrap();
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap()
}

fn ruleset() -> Value {
    serde_json::from_str(&ok(run("nft", &["-j", "list", "ruleset"]))).unwrap()
}

/// Every chain name and map element (as JSON text) in the node's ruleset.
fn ruleset_mentions(needle: &str) -> Vec<String> {
    ruleset()["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .map(Value::to_string)
        .filter(|s| s.contains(needle))
        .collect()
}

fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", name]).status.success()
}

struct Tenant {
    id: &'static str,
    net4: IpNet,
    gw4: IpAddr,
    net6: IpNet,
    gw6: IpAddr,
}

impl Tenant {
    fn new(id: &'static str, n: u8) -> Self {
        Self {
            id,
            net4: format!("10.41.{n}.0/24").parse().unwrap(),
            gw4: format!("10.41.{n}.1").parse().unwrap(),
            net6: format!("fd41:{n}::/64").parse().unwrap(),
            gw6: format!("fd41:{n}::1").parse().unwrap(),
        }
    }
    fn subnets(&self) -> Vec<(IpNet, IpAddr)> {
        vec![(self.net4, self.gw4), (self.net6, self.gw6)]
    }
    fn addr4(&self, host: u8) -> IpAddr {
        let IpNet::V4(n) = self.net4 else {
            unreachable!()
        };
        let o = n.addr().octets();
        IpAddr::from([o[0], o[1], o[2], host])
    }
    fn addr6(&self, host: u8) -> IpAddr {
        let IpNet::V6(n) = self.net6 else {
            unreachable!()
        };
        let mut s = n.addr().segments();
        s[7] = host.into();
        IpAddr::from(s)
    }
}

struct Pod {
    ns: ScratchNetns,
    host: String,
    v4: IpAddr,
    v6: IpAddr,
    _listener: TcpListener,
}

/// What the apply engine does for one pod: veth, tenant, guard, attach,
/// addresses and default routes via the tenant's gateways. A TCP listener in
/// the pod (dual stack) answers reachability probes without accept().
fn add_pod(n: &RtNetns, sdn: &LinuxSdn, t: &Tenant, cid: &str, host: u8) -> Pod {
    let ns = ScratchNetns::new().unwrap();
    let mac = derive_mac(cid, "eth0");
    let spec = VethSpec {
        container_id: cid.into(),
        ifname: "eth0".into(),
        host_ifname: host_ifname(cid, "eth0"),
        netns: ns.path().to_owned(),
        mtu: None,
        mac: None,
        group: None,
        link_local: Some(link_local(mac)),
    };
    n.create_veth(&spec).unwrap();
    let net = sdn.ensure_tenant(t.id, &t.subnets()).unwrap();
    let (v4, v6) = (t.addr4(host), t.addr6(host));
    let guard = PortGuard {
        host_ifname: spec.host_ifname.clone(),
        bridged: true,
        mac,
        addrs: vec![v4, v6, link_local(mac).into()],
        tenant_bridge: Some(net.bridge),
    };
    sdn.guard_port(&guard).unwrap();
    sdn.check_guard(&guard).unwrap();
    sdn.attach(t.id, &port(&spec.host_ifname)).unwrap();
    sdn.check_port(t.id, &port(&spec.host_ifname)).unwrap();
    n.configure(
        ns.path(),
        "eth0",
        &[
            IpNet::new(v4, t.net4.prefix_len()).unwrap(),
            IpNet::new(v6, t.net6.prefix_len()).unwrap(),
        ],
        &[
            ResolvedRoute::via("0.0.0.0/0".parse().unwrap(), t.gw4),
            ResolvedRoute::via("::/0".parse().unwrap(), t.gw6),
        ],
        &[],
    )
    .unwrap();
    let listener = ns.run(|| TcpListener::bind(("::", POD_PORT)).unwrap());
    Pod {
        ns,
        host: spec.host_ifname,
        v4,
        v6,
        _listener: listener,
    }
}

fn remove_pod(n: &RtNetns, sdn: &LinuxSdn, p: &Pod) {
    sdn.detach("", &port(&p.host).key, &p.host).unwrap();
    n.delete(Some(p.ns.path()), "eth0", &p.host).unwrap();
    sdn.unguard_port(&p.host).unwrap();
}

/// A TCP handshake from `from` to `ip:port`. Dropped SYNs time out.
fn reach(from: &ScratchNetns, ip: IpAddr, port: u16, wait: Duration) -> bool {
    let to = SocketAddr::new(ip, port);
    from.run(|| TcpStream::connect_timeout(&to, wait).is_ok())
}

const YES: Duration = Duration::from_secs(3);
const NO: Duration = Duration::from_millis(800);

#[test]
#[ignore = "needs root: make test runs it"]
fn tenants_are_isolated_and_cleaned_up() {
    node();
    forwarding_on();
    let n = RtNetns::new().unwrap();
    let sdn = LinuxSdn::new(SdnOptions::default()).unwrap();
    let (ta, tb) = (Tenant::new("tenant-a", 1), Tenant::new("tenant-b", 2));
    let a1 = add_pod(&n, &sdn, &ta, "a1", 11);
    let a2 = add_pod(&n, &sdn, &ta, "a2", 12);
    let b1 = add_pod(&n, &sdn, &tb, "b1", 21);
    let b2 = add_pod(&n, &sdn, &tb, "b2", 22);
    // The node listens on every address it has, the gateways included.
    let _node_listener = TcpListener::bind(("::", NODE_PORT)).unwrap();
    sdn.check_tenant(ta.id, &ta.subnets()).unwrap();
    sdn.check_tenant(tb.id, &tb.subnets()).unwrap();

    // Within a tenant, over the bridge, both families.
    assert!(reach(&a1.ns, a2.v4, POD_PORT, YES), "a1 -> a2 v4");
    assert!(reach(&a1.ns, a2.v6, POD_PORT, YES), "a1 -> a2 v6");
    assert!(reach(&b2.ns, b1.v4, POD_PORT, YES), "b2 -> b1 v4");
    assert!(reach(&b2.ns, b1.v6, POD_PORT, YES), "b2 -> b1 v6");
    // A pod reaches its own gateway; the node reaches its gateways and pods.
    assert!(reach(&a1.ns, ta.gw4, NODE_PORT, YES), "a1 -> gw a v4");
    assert!(reach(&a1.ns, ta.gw6, NODE_PORT, YES), "a1 -> gw a v6");
    for ip in [ta.gw4, ta.gw6, tb.gw4, tb.gw6] {
        assert!(
            TcpStream::connect_timeout(&SocketAddr::new(ip, NODE_PORT), YES).is_ok(),
            "node -> {ip}"
        );
    }
    assert!(
        TcpStream::connect_timeout(&SocketAddr::new(b1.v4, POD_PORT), YES).is_ok(),
        "node -> b1"
    );

    // Across tenants: nothing, neither routed nor to the other gateway.
    let blocked = |from: &Pod, ip: IpAddr, port: u16, what: &str| {
        assert!(!reach(&from.ns, ip, port, NO), "{what} must be blocked");
    };
    let check_blocked = || {
        blocked(&a1, b1.v4, POD_PORT, "a1 -> b1 v4");
        blocked(&a1, b1.v6, POD_PORT, "a1 -> b1 v6");
        blocked(&b2, a2.v4, POD_PORT, "b2 -> a2 v4");
        blocked(&a1, tb.gw4, NODE_PORT, "a1 -> gw b v4");
        blocked(&a1, tb.gw6, NODE_PORT, "a1 -> gw b v6");
        blocked(&b1, ta.gw4, NODE_PORT, "b1 -> gw a v4");
    };
    check_blocked();

    // Control: without tenet's table the same packets get through, so it is
    // the rules (not missing routes) that block them.
    ok(run("nft", &["delete", "table", "inet", "tenet"]));
    assert!(
        reach(&a1.ns, b1.v4, POD_PORT, YES),
        "control: a1 -> b1 without rules"
    );
    assert!(
        reach(&a1.ns, tb.gw4, NODE_PORT, YES),
        "control: a1 -> gw b without rules"
    );
    assert!(matches!(
        sdn.check_tenant(ta.id, &ta.subnets()),
        Err(SdnError::Missing { .. })
    ));
    sdn.ensure_tenant(ta.id, &ta.subnets()).unwrap();
    sdn.ensure_tenant(tb.id, &tb.subnets()).unwrap();
    check_blocked();

    // The last pod of a tenant takes its bridge and rules with it.
    let (bra, brb) = (bridge_name(ta.id), bridge_name(tb.id));
    remove_pod(&n, &sdn, &a1);
    assert!(
        !sdn.remove_tenant_if_unused(ta.id).unwrap(),
        "a2 still uses it"
    );
    assert!(link_exists(&bra));
    assert!(!ruleset_mentions(&bra).is_empty());
    remove_pod(&n, &sdn, &a2);
    assert!(sdn.remove_tenant_if_unused(ta.id).unwrap());
    assert!(!link_exists(&bra), "bridge {bra} left behind");
    assert_eq!(
        ruleset_mentions(&bra),
        Vec::<String>::new(),
        "rules of {bra} left behind"
    );
    let gw = ta.gw4.to_string();
    assert!(
        ruleset_mentions(&format!("\"{gw}\"")).is_empty(),
        "gateway element {gw} left behind"
    );
    assert!(sdn.remove_tenant_if_unused(ta.id).unwrap(), "idempotent");
    // Tenant B is untouched and still works and is still checked.
    assert!(link_exists(&brb));
    assert!(!ruleset_mentions(&format!("fwd-{brb}")).is_empty());
    sdn.check_tenant(tb.id, &tb.subnets()).unwrap();
    assert!(reach(&b1.ns, b2.v4, POD_PORT, YES));
}

#[test]
#[ignore = "needs root: make test runs it"]
fn ensure_tenant_concurrently_converges() {
    node();
    let t = Tenant::new("racer", 3);
    let subnets = t.subnets();
    const N: usize = 4;
    let barrier = Arc::new(Barrier::new(N));
    // Threads spawned here start in this test's node namespace; each is a
    // separate "process" with its own backend, as two CNI ADDs would be.
    let results: Vec<Result<_, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..N)
            .map(|_| {
                let barrier = barrier.clone();
                let subnets = subnets.clone();
                s.spawn(move || {
                    let sdn = LinuxSdn::new(SdnOptions::default()).unwrap();
                    barrier.wait();
                    sdn.ensure_tenant("racer", &subnets)
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let br = bridge_name("racer");
    let l =
        &serde_json::from_str::<Value>(&ok(run("ip", &["-j", "addr", "show", &br]))).unwrap()[0];
    let addrs: Vec<&str> = l["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["local"].as_str())
        .filter(|a| !a.starts_with("fe80"))
        .collect();
    assert_eq!(addrs, ["10.41.3.1", "fd41:3::1"]);
    // Exactly one copy of everything.
    let rs = ruleset();
    let items = rs["nftables"].as_array().unwrap();
    let forward_rules = items
        .iter()
        .filter(|i| i["rule"]["chain"] == "forward")
        .count();
    assert_eq!(forward_rules, 6, "base rules duplicated");
    let chains = items
        .iter()
        .filter(|i| {
            i["chain"]["name"]
                .as_str()
                .is_some_and(|c| c.ends_with(&br))
        })
        .count();
    assert_eq!(chains, 4);
    let fwd_from = items
        .iter()
        .find(|i| i["map"]["name"] == "fwd_from")
        .unwrap();
    assert_eq!(fwd_from["map"]["elem"].as_array().unwrap().len(), 1);
    let sdn = LinuxSdn::new(SdnOptions::default()).unwrap();
    sdn.check_tenant("racer", &subnets).unwrap();
}

#[test]
#[ignore = "needs root: make test runs it"]
fn masquerade_is_per_option_and_hides_tenant_addresses() {
    node();
    forwarding_on();
    let n = RtNetns::new().unwrap();
    let masq = LinuxSdn::new(SdnOptions {
        masquerade: true,
        ..SdnOptions::default()
    })
    .unwrap();
    let plain = LinuxSdn::new(SdnOptions::default()).unwrap();
    // "Outside": a namespace behind an uplink veth, with no route back to
    // any tenant subnet: only masquerading lets replies come back.
    let out = ScratchNetns::new().unwrap();
    n.create_veth(&VethSpec {
        container_id: "uplink".into(),
        ifname: "uplink".into(),
        host_ifname: "upl0".into(),
        netns: out.path().to_owned(),
        mtu: None,
        mac: None,
        link_local: None,
        group: None,
    })
    .unwrap();
    n.configure(
        out.path(),
        "uplink",
        &["192.0.2.2/24".parse().unwrap()],
        &[],
        &[],
    )
    .unwrap();
    ok(run("ip", &["addr", "add", "192.0.2.1/24", "dev", "upl0"]));
    let listener = out.run(|| TcpListener::bind(("192.0.2.2", 7070)).unwrap());
    let dst: IpAddr = "192.0.2.2".parse().unwrap();

    let tm = Tenant::new("masq", 4);
    let tp = Tenant::new("plain", 5);
    let pm = add_pod(&n, &masq, &tm, "pm", 11);
    let pp = add_pod(&n, &plain, &tp, "pp", 11);
    masq.check_tenant(tm.id, &tm.subnets()).unwrap();
    plain.check_tenant(tp.id, &tp.subnets()).unwrap();
    // The option is part of what CHECK verifies.
    assert!(plain.check_tenant(tm.id, &tm.subnets()).is_err());

    assert!(
        reach(&pm.ns, dst, 7070, YES),
        "masqueraded tenant reaches the outside"
    );
    let (_, peer) = listener.accept().unwrap();
    assert_eq!(
        peer.ip(),
        "192.0.2.1".parse::<IpAddr>().unwrap(),
        "source not masqueraded"
    );
    assert!(
        !reach(&pp.ns, dst, 7070, NO),
        "unmasqueraded tenant has no way back"
    );
    let _ = (pm.v6, pp.v6);
}

#[test]
#[ignore = "needs root: make test runs it"]
fn check_tenant_names_what_is_missing() {
    node();
    let sdn = LinuxSdn::new(SdnOptions::default()).unwrap();
    let t = Tenant::new("checked", 6);
    let br = bridge_name(t.id);
    sdn.ensure_tenant(t.id, &t.subnets()).unwrap();
    sdn.check_tenant(t.id, &t.subnets()).unwrap();

    let expect_missing = |what: &str| {
        let e = sdn.check_tenant(t.id, &t.subnets()).unwrap_err();
        assert_eq!(e.cni_code(), 151, "{e}");
        assert!(e.to_string().contains(what), "{e} should name {what}");
    };
    ok(run("ip", &["addr", "del", "10.41.6.1/24", "dev", &br]));
    expect_missing("10.41.6.1/24");
    sdn.ensure_tenant(t.id, &t.subnets()).unwrap();
    sdn.check_tenant(t.id, &t.subnets()).unwrap();

    ok(run(
        "nft",
        &[
            "delete",
            "element",
            "inet",
            "tenet",
            "gw6",
            "{",
            "fd41:6::1",
            "}",
        ],
    ));
    expect_missing("gw6[fd41:6::1]");
    sdn.ensure_tenant(t.id, &t.subnets()).unwrap();

    ok(run(
        "nft",
        &["flush", "chain", "inet", "tenet", &format!("fwd-{br}")],
    ));
    ok(run(
        "nft",
        &[
            "delete",
            "element",
            "inet",
            "tenet",
            "fwd_from",
            "{",
            &format!("\"{br}\""),
            "}",
        ],
    ));
    expect_missing(&format!("fwd_from[{br}]"));
    // The tenant's chain survived, so the stamp on the bridge still says
    // "rules current" and ADD's fast path would not look closer: a
    // different stamp makes ensure_tenant reinstall everything.
    ok(run(
        "ip",
        &["link", "set", "dev", &br, "alias", "reinstall"],
    ));
    sdn.ensure_tenant(t.id, &t.subnets()).unwrap();
    sdn.check_tenant(t.id, &t.subnets()).unwrap();

    ok(run("ip", &["link", "set", &br, "down"]));
    expect_missing(&br);
    ok(run("ip", &["link", "del", &br]));
    expect_missing(&format!("bridge {br}"));
}

#[test]
#[ignore = "needs root: make test runs it"]
fn attach_and_detach_are_idempotent() {
    node();
    let n = RtNetns::new().unwrap();
    let sdn = LinuxSdn::new(SdnOptions::default()).unwrap();
    let t = Tenant::new("ports", 7);
    let pod = ScratchNetns::new().unwrap();
    let host = pod_veth(&n, &pod, "p1");
    let e = sdn.attach(t.id, &port(&host)).unwrap_err();
    assert_eq!(e.cni_code(), 151, "attach before ensure: {e}");
    let net = sdn.ensure_tenant(t.id, &t.subnets()).unwrap();
    sdn.attach(t.id, &port(&host)).unwrap();
    sdn.attach(t.id, &port(&host)).unwrap();
    let master = |h: &str| {
        serde_json::from_str::<Value>(&ok(run("ip", &["-j", "link", "show", h]))).unwrap()[0]["master"].clone()
    };
    assert_eq!(master(&host), net.bridge.as_str());
    sdn.check_port(t.id, &port(&host)).unwrap();
    assert!(!sdn.remove_tenant_if_unused(t.id).unwrap());
    sdn.detach(t.id, &port(&host).key, &host).unwrap();
    sdn.detach(t.id, &port(&host).key, &host).unwrap();
    assert_eq!(master(&host), Value::Null);
    let e = sdn.check_port(t.id, &port(&host)).unwrap_err();
    assert!(e.to_string().contains(&host), "{e}");
    sdn.detach(t.id, &port("tn000000000000").key, "tn000000000000")
        .unwrap();
    assert!(sdn.remove_tenant_if_unused(t.id).unwrap());
    let e = sdn.attach(t.id, &port("tn000000000000")).unwrap_err();
    assert_eq!(e.cni_code(), 151);
}

#[test]
#[ignore = "needs root: make test runs it"]
fn status_reports_nft_problems_as_code_50() {
    node();
    LinuxSdn::new(SdnOptions::default())
        .unwrap()
        .status()
        .unwrap();
    // The dry run changed nothing.
    assert!(ruleset()["nftables"].as_array().unwrap().len() <= 1);
    for bad in ["/nonexistent/nft", "/bin/false"] {
        let sdn = LinuxSdn::new(SdnOptions {
            nft: bad.into(),
            ..SdnOptions::default()
        })
        .unwrap();
        let e = sdn.status().unwrap_err();
        assert_eq!(e.cni_code(), 50, "{bad}: {e}");
    }
}

#[test]
#[ignore = "needs root: make test runs it"]
fn a_pod_host_link_cannot_reach_tenants() {
    node();
    forwarding_on();
    let n = RtNetns::new().unwrap();
    let sdn = LinuxSdn::new(SdnOptions::default()).unwrap();
    let t = Tenant::new("behind", 8);
    let a1 = add_pod(&n, &sdn, &t, "hl-a1", 11);
    let _node_listener = TcpListener::bind(("::", NODE_PORT)).unwrap();
    // Another pod with only a host link (Rainbond's eth1) towards the node.
    let h = ScratchNetns::new().unwrap();
    let hhost = host_ifname("hl-h", "eth1");
    n.create_veth(&VethSpec {
        container_id: "hl-h".into(),
        ifname: "eth1".into(),
        host_ifname: hhost.clone(),
        netns: h.path().to_owned(),
        mtu: None,
        mac: None,
        link_local: None,
        group: None,
    })
    .unwrap();
    let gw: IpAddr = "169.254.128.1".parse().unwrap();
    n.configure(
        h.path(),
        "eth1",
        &["172.20.0.5/32".parse().unwrap()],
        &tenet::netns::host_link_pod_routes(gw, &["10.41.0.0/16".parse().unwrap()]),
        &[],
    )
    .unwrap();
    sdn.guard_port(&PortGuard {
        host_ifname: hhost.clone(),
        bridged: false,
        mac: derive_mac("hl-h", "eth1"),
        addrs: vec!["172.20.0.5".parse().unwrap()],
        tenant_bridge: None,
    })
    .unwrap();
    n.host_side(&tenet::netns::HostLinkSpec {
        host_ifname: hhost,
        gateways: vec!["169.254.128.1/32".parse().unwrap()],
        pod_addrs: vec!["172.20.0.5".parse().unwrap()],
    })
    .unwrap();
    assert!(reach(&h, gw, NODE_PORT, YES), "host link reaches the node");
    assert!(
        !reach(&h, a1.v4, POD_PORT, NO),
        "host link -> tenant pod must be blocked"
    );
    assert!(
        !reach(&h, t.gw4, NODE_PORT, NO),
        "host link -> tenant gateway must be blocked"
    );
    // Control: the path exists; the rules are what close it.
    ok(run("nft", &["delete", "table", "inet", "tenet"]));
    assert!(
        reach(&h, a1.v4, POD_PORT, YES),
        "control: host link -> pod without rules"
    );
}

#[test]
#[ignore = "needs root: make test runs it"]
fn a_later_ensure_skips_nft_only_while_the_rules_are_in_place() {
    node();
    let t = Tenant::new("fastpath", 9);
    LinuxSdn::new(SdnOptions::default())
        .unwrap()
        .ensure_tenant(t.id, &t.subnets())
        .unwrap();
    // A backend whose `nft` cannot run: it can only succeed on the fast path.
    let no_nft = LinuxSdn::new(SdnOptions {
        nft: "/nonexistent/nft".into(),
        ..SdnOptions::default()
    })
    .unwrap();
    no_nft.ensure_tenant(t.id, &t.subnets()).unwrap();
    // Other gateways: the stamp differs, nft must run.
    let other = [(t.net4, "10.41.9.2".parse::<IpAddr>().unwrap())];
    assert!(no_nft.ensure_tenant(t.id, &other).is_err());
    // The table flushed behind tenet's back: nft must run again, and does.
    ok(run("nft", &["delete", "table", "inet", "tenet"]));
    assert!(no_nft.ensure_tenant(t.id, &t.subnets()).is_err());
    let sdn = LinuxSdn::new(SdnOptions::default()).unwrap();
    sdn.ensure_tenant(t.id, &t.subnets()).unwrap();
    sdn.check_tenant(t.id, &t.subnets()).unwrap();
    assert!(sdn.remove_tenant_if_unused(t.id).unwrap());
}

#[test]
#[ignore = "needs root: make test runs it"]
fn the_host_alias_annotation_labels_the_host_end() {
    use tenet::plan::Kv;
    use tenet::sdn::HOST_ALIAS;
    node();
    let n = RtNetns::new().unwrap();
    let sdn = LinuxSdn::new(SdnOptions::default()).unwrap();
    let t = Tenant::new("alias", 8);
    let pod = ScratchNetns::new().unwrap();
    let host = pod_veth(&n, &pod, "a1");
    sdn.ensure_tenant(t.id, &t.subnets()).unwrap();
    let with = |alias: &str| PortSpec {
        annotations: vec![
            Kv::new("quota.example.com/tier", "gold"),
            Kv::new(HOST_ALIAS, alias),
        ],
        ..port(&host)
    };
    let ifalias = |h: &str| {
        serde_json::from_str::<Value>(&ok(run("ip", &["-j", "link", "show", h]))).unwrap()[0]
            ["ifalias"]
            .clone()
    };
    sdn.attach(t.id, &with("team-a/web-1")).unwrap();
    assert_eq!(ifalias(&host), "team-a/web-1");
    sdn.check_port(t.id, &with("team-a/web-1")).unwrap();
    // CHECK compares with the record's annotation: a changed alias is named.
    let e = sdn.check_port(t.id, &with("team-b/db")).unwrap_err();
    assert!(e.to_string().contains("team-b/db"), "{e}");
    // A repeated ADD with another alias converges on it (one request).
    sdn.attach(t.id, &with("team-a/web-2")).unwrap();
    assert_eq!(ifalias(&host), "team-a/web-2");
    // Without the annotation the backend neither needs nor touches an alias.
    sdn.check_port(t.id, &port(&host)).unwrap();
    sdn.detach(t.id, &port(&host).key, &host).unwrap();
    assert!(sdn.remove_tenant_if_unused(t.id).unwrap());
}

/// The backend with its tenant locks in `dir` (the apply engine's
/// `<state_dir>/locks`).
fn sdn_with_locks(dir: &std::path::Path) -> LinuxSdn {
    LinuxSdn::new(SdnOptions {
        lock_dir: dir.to_owned(),
        ..SdnOptions::default()
    })
    .unwrap()
}

fn ifindex(name: &str) -> u64 {
    let v: Value = serde_json::from_str(&ok(run("ip", &["-j", "link", "show", name]))).unwrap();
    v[0]["ifindex"].as_u64().unwrap()
}

/// The addresses on `name`, as `ip` prints them (`10.41.1.1/24`).
fn link_addresses(name: &str) -> Vec<String> {
    let v: Value =
        serde_json::from_str(&ok(run("ip", &["-j", "addr", "show", "dev", name]))).unwrap();
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The links in the node namespace holding the address `ip`.
fn holders_of(ip: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(&ok(run("ip", &["-j", "addr", "show"]))).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            l["addr_info"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["local"] == ip))
        })
        .map(|l| l["ifname"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
#[ignore = "needs root: make test runs it"]
fn an_idle_tenant_network_is_reused_replaced_and_reaped() {
    node();
    forwarding_on();
    let locks = tempfile::tempdir().unwrap();
    let n = RtNetns::new().unwrap();
    let sdn = sdn_with_locks(locks.path());
    assert!(sdn.keeps_idle_tenants(), "the default");
    let _node_listener = TcpListener::bind(("::", NODE_PORT)).unwrap();
    let (ta, tb) = (Tenant::new("tenant-a", 1), Tenant::new("tenant-b", 2));
    let (bra, brb) = (bridge_name(ta.id), bridge_name(tb.id));
    let a1 = add_pod(&n, &sdn, &ta, "a1", 11);
    let b1 = add_pod(&n, &sdn, &tb, "b1", 21);

    // A's last pod leaves: its network stays, idle, and nothing reaps a
    // network with a port.
    remove_pod(&n, &sdn, &a1);
    let index = ifindex(&bra);
    // The tenant's next pod finds it as it was: the same bridge.
    let a2 = add_pod(&n, &sdn, &ta, "a2", 12);
    assert_eq!(ifindex(&bra), index, "the idle bridge was not reused");
    assert!(reach(&a2.ns, ta.gw4, NODE_PORT, YES), "a2 -> its gateway");
    remove_pod(&n, &sdn, &a2);

    // Idle, then asked for with another subnet (the store gave the old one
    // back and carved anew): a new network, nothing of the old subnet left.
    let moved = Tenant::new("tenant-a", 3);
    let a3 = add_pod(&n, &sdn, &moved, "a3", 13);
    sdn.check_tenant(moved.id, &moved.subnets()).unwrap();
    let addrs = link_addresses(&bra);
    assert!(
        addrs.contains(&"10.41.3.1/24".to_owned())
            && !addrs.iter().any(|a| a.starts_with("10.41.1.")),
        "{addrs:?}"
    );
    assert!(
        ruleset_mentions("10.41.1.").is_empty(),
        "elements of the old subnet left: {:?}",
        ruleset_mentions("10.41.1.")
    );
    assert!(
        reach(&a3.ns, moved.gw4, NODE_PORT, YES),
        "a3 -> its gateway"
    );
    remove_pod(&n, &sdn, &a3);

    // GC: the idle network goes with its rules and its lock file; B, whose
    // pod is still there, stays and works.
    assert_eq!(sdn.reap_idle_tenants().unwrap(), vec![bra.clone()]);
    assert!(!link_exists(&bra), "bridge {bra} left behind");
    assert_eq!(ruleset_mentions(&bra), Vec::<String>::new());
    assert!(
        !locks.path().join(format!("{bra}.lock")).exists(),
        "lock file of {bra} left"
    );
    assert!(link_exists(&brb));
    sdn.check_tenant(tb.id, &tb.subnets()).unwrap();
    assert!(reach(&b1.ns, tb.gw4, NODE_PORT, YES), "b1 -> its gateway");
    assert_eq!(sdn.reap_idle_tenants().unwrap(), Vec::<String>::new());
    // While its tenant's lock is held (an ADD between ensure and attach),
    // an idle network is left alone.
    remove_pod(&n, &sdn, &b1);
    let held = tenet::apply::lock::TenantLock::acquire_in(
        locks.path(),
        &brb,
        std::time::Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(sdn.reap_idle_tenants().unwrap(), Vec::<String>::new());
    assert!(link_exists(&brb));
    drop(held);
    assert_eq!(sdn.reap_idle_tenants().unwrap(), vec![brb.clone()]);
    assert!(!link_exists(&brb));
}

#[test]
#[ignore = "needs root: make test runs it"]
fn a_subnet_changes_tenant_only_once_the_old_tenants_network_is_gone() {
    node();
    forwarding_on();
    let locks = tempfile::tempdir().unwrap();
    let n = RtNetns::new().unwrap();
    let sdn = sdn_with_locks(locks.path());
    let _node_listener = TcpListener::bind(("::", NODE_PORT)).unwrap();
    // Three tenants the store gives the same subnet in turn, as it does
    // once a subnet's cooldown is over.
    let same = |id| Tenant {
        id,
        ..Tenant::new("", 5)
    };
    let (ta, tb, tc) = (same("tenant-a"), same("tenant-b"), same("tenant-c"));
    let (bra, brb, brc) = (bridge_name(ta.id), bridge_name(tb.id), bridge_name(tc.id));
    let a1 = add_pod(&n, &sdn, &ta, "a1", 11);
    remove_pod(&n, &sdn, &a1);
    assert!(link_exists(&bra), "A's network idles");

    // B gets the subnet: A's idle network goes first, whole. Were A's
    // gateway element left, B's pod could not reach its own gateway (A's
    // gateway chain drops what comes from another bridge).
    let b1 = add_pod(&n, &sdn, &tb, "b1", 21);
    assert!(!link_exists(&bra), "A's idle bridge kept B's subnet");
    assert_eq!(ruleset_mentions(&bra), Vec::<String>::new());
    sdn.check_tenant(tb.id, &tb.subnets()).unwrap();
    assert!(
        reach(&b1.ns, tb.gw4, NODE_PORT, YES),
        "b1 -> its gateway v4"
    );
    assert!(
        reach(&b1.ns, tb.gw6, NODE_PORT, YES),
        "b1 -> its gateway v6"
    );

    // A network with pods is never taken: C is refused, naming B's bridge,
    // and C's gateway never goes on the node.
    let e = sdn.ensure_tenant(tc.id, &tc.subnets()).unwrap_err();
    assert!(matches!(e, SdnError::Conflict(_)), "{e}");
    assert!(e.to_string().contains(&brb), "{e}");
    assert_eq!(
        holders_of("10.41.5.1"),
        vec![brb.clone()],
        "C's gateway on the node"
    );
    assert!(
        sdn.remove_tenant_if_unused(tc.id).unwrap(),
        "what rollback does"
    );
    assert!(!link_exists(&brc));
    // B untouched.
    sdn.check_tenant(tb.id, &tb.subnets()).unwrap();
    assert!(
        reach(&b1.ns, tb.gw4, NODE_PORT, YES),
        "b1 -> its gateway after C"
    );
    remove_pod(&n, &sdn, &b1);
    assert_eq!(sdn.reap_idle_tenants().unwrap(), vec![brb]);
}
