//! Root tests of the rtnetlink netns backend (tier 3).
//!
//! Every test first moves its own thread into a fresh network namespace (the
//! "node", see `tenet::netns::testing`) and makes pods as namespaces held by
//! parked threads, so nothing here touches the machine's interfaces and
//! everything vanishes with the test, pass or fail. They need root, so they
//! are `#[ignore]`d: plain `cargo test` lists them as ignored, and `make test`
//! runs them as root with `--include-ignored`.
//!
//! Run: `cargo test -p tenet --no-default-features --test netns_root -- --include-ignored`

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ipnet::IpNet;
use serde_json::Value;
use tenet::netns::testing::{ScratchNetns, enter_scratch_node, require_root};
use tenet::netns::{
    HostLinkSpec, MacAddr, Netns, NetnsError, ResolvedRoute, RtNetns, VethSpec, attachment_group,
    derive_mac, host_ifname, host_link_pod_routes,
};

/// Enters a scratch node namespace; panics when not root.
fn node() {
    require_root("this root test");
    enter_scratch_node().expect("scratch node netns");
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip` in the node (the test thread's namespace).
fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().unwrap()
}

fn ip_json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(ip(args))).unwrap()
}

fn pod_json(pod: &ScratchNetns, args: &[&str]) -> Value {
    serde_json::from_str(&ok(pod.cmd("ip", args).unwrap())).unwrap()
}

fn spec(pod: &ScratchNetns, cid: &str, ifname: &str) -> VethSpec {
    VethSpec {
        container_id: cid.into(),
        ifname: ifname.into(),
        host_ifname: host_ifname(cid, ifname),
        netns: pod.path().to_owned(),
        mtu: None,
        mac: None,
        link_local: None,
        group: None,
    }
}

fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

/// The test thread's own namespace path (the node's).
fn node_path() -> PathBuf {
    Path::new("/proc")
        .join(std::fs::read_link("/proc/thread-self").unwrap())
        .join("ns/net")
}

fn ping(args: &[&str]) -> bool {
    Command::new("ping")
        .args(args)
        .output()
        .expect("ping (iputils-ping) is installed")
        .status
        .success()
}

fn pod_ping(pod: &ScratchNetns, args: &[&str]) -> bool {
    pod.cmd("ping", args).unwrap().status.success()
}

#[test]
#[ignore = "needs root: make test runs it"]
fn veth_has_mtu_mac_and_both_ends_up() {
    node();
    let pod = ScratchNetns::new().unwrap();
    let n = RtNetns::new().unwrap();
    let s = VethSpec {
        mtu: Some(1400),
        ..spec(&pod, "c-veth", "eth0")
    };
    let info = n.create_veth(&s).unwrap();
    assert_eq!(info.mac, derive_mac("c-veth", "eth0"));

    let l = &pod_json(&pod, &["-j", "link", "show", "eth0"])[0];
    assert_eq!(l["mtu"], 1400);
    assert_eq!(l["address"], info.mac.to_string());
    assert_eq!(l["ifindex"], info.ifindex);
    assert!(has_flag(l, "UP"), "{l}");
    let h = &ip_json(&["-j", "link", "show", &s.host_ifname])[0];
    assert_eq!(h["mtu"], 1400);
    assert_eq!(h["ifindex"], info.host_ifindex);
    assert_eq!(h["address"], info.host_mac.to_string());
    assert!(has_flag(h, "UP"), "{h}");
    // The pod end is not in the node, the host end not in the pod.
    assert!(!ip(&["link", "show", "eth0"]).status.success());
    assert!(
        !pod.cmd("ip", &["link", "show", &s.host_ifname])
            .unwrap()
            .status
            .success()
    );

    // A requested MAC is honoured.
    let mac: MacAddr = "0a:58:0a:14:00:07".parse().unwrap();
    let s2 = VethSpec {
        mac: Some(mac),
        ..spec(&pod, "c-veth", "eth1")
    };
    assert_eq!(n.create_veth(&s2).unwrap().mac, mac);
    assert_eq!(
        pod_json(&pod, &["-j", "link", "show", "eth1"])[0]["address"],
        mac.to_string()
    );
    assert!(n.host_link_exists(&s2.host_ifname).unwrap());
    assert!(!n.host_link_exists("tn000000000000").unwrap());
}

#[test]
#[ignore = "needs root: make test runs it"]
fn retried_add_gets_the_same_mac_and_replaces_a_stale_host_end() {
    node();
    let n = RtNetns::new().unwrap();
    let first = {
        let pod = ScratchNetns::new().unwrap();
        n.create_veth(&spec(&pod, "c-retry", "eth0")).unwrap().mac
    };
    // A leftover host end of the same attachment whose peer never reached
    // the pod (an ADD interrupted between the two steps).
    let host = host_ifname("c-retry", "eth0");
    // The kernel tears a dead namespace down asynchronously; wait for the
    // old pair to go before faking the leftover.
    for _ in 0..100 {
        if !n.host_link_exists(&host).unwrap() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ok(ip(&[
        "link", "add", &host, "type", "veth", "peer", "name", "leftover",
    ]));
    let pod = ScratchNetns::new().unwrap();
    let again = n.create_veth(&spec(&pod, "c-retry", "eth0")).unwrap();
    assert_eq!(again.mac, first);
    assert!(
        !ip(&["link", "show", "leftover"]).status.success(),
        "stale pair not replaced"
    );
    assert!(
        pod.cmd("ip", &["link", "show", "eth0"])
            .unwrap()
            .status
            .success()
    );
}

#[test]
#[ignore = "needs root: make test runs it"]
fn existing_ifname_is_a_distinct_error() {
    node();
    let pod = ScratchNetns::new().unwrap();
    let n = RtNetns::new().unwrap();
    n.create_veth(&spec(&pod, "c-exists", "eth0")).unwrap();
    let e = n.create_veth(&spec(&pod, "c-other", "eth0")).unwrap_err();
    assert!(matches!(e, NetnsError::IfnameExists { .. }), "{e}");
    assert_eq!(e.cni_code(), 140);
    // Nothing of the refused attachment is left on the node.
    assert!(!n.host_link_exists(&host_ifname("c-other", "eth0")).unwrap());

    // Same when the name is taken by something tenet did not make.
    ok(pod
        .cmd(
            "ip",
            &[
                "link", "add", "net1", "type", "veth", "peer", "name", "net1p",
            ],
        )
        .unwrap());
    let e = n.create_veth(&spec(&pod, "c-exists", "net1")).unwrap_err();
    assert!(matches!(e, NetnsError::IfnameExists { .. }), "{e}");
}

#[test]
#[ignore = "needs root: make test runs it"]
fn unusable_and_node_namespaces_are_refused() {
    node();
    let n = RtNetns::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("not-a-netns");
    std::fs::write(&plain, b"").unwrap();
    for (path, code) in [
        (PathBuf::from("/nonexistent/netns"), 4),
        (plain.clone(), 4),
        (PathBuf::from("/proc/self/ns/mnt"), 4),
        (node_path(), 8),
    ] {
        let s = VethSpec {
            netns: path.clone(),
            ..VethSpec {
                container_id: "c-bad".into(),
                ifname: "eth9".into(),
                host_ifname: host_ifname("c-bad", "eth9"),
                netns: PathBuf::new(),
                mtu: None,
                mac: None,
                link_local: None,
                group: None,
            }
        };
        let e = n.create_veth(&s).unwrap_err();
        assert_eq!(e.cni_code(), code, "{path:?}: {e}");
        let e = n.configure(&path, "eth9", &[], &[], &[]).unwrap_err();
        assert_eq!(e.cni_code(), code, "{path:?}: {e}");
    }
    assert!(!n.host_link_exists(&host_ifname("c-bad", "eth9")).unwrap());
    assert!(!ip(&["link", "show", "eth9"]).status.success());

    // DEL given the node's own namespace must not delete the node's link of
    // that name (it is not the pod's).
    ok(ip(&[
        "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p",
    ]));
    n.delete(Some(&node_path()), "eth9", &host_ifname("c-bad", "eth9"))
        .unwrap();
    assert!(
        ip(&["link", "show", "eth9"]).status.success(),
        "node link deleted"
    );
}

#[test]
#[ignore = "needs root: make test runs it"]
fn configure_sets_addresses_routes_and_pod_sysctls() {
    node();
    let pod = ScratchNetns::new().unwrap();
    let n = RtNetns::new().unwrap();
    n.create_veth(&spec(&pod, "c-cfg", "eth0")).unwrap();
    let addrs: Vec<IpNet> = vec![
        "10.20.0.5/24".parse().unwrap(),
        "fd20::5/64".parse().unwrap(),
    ];
    let gw4: IpAddr = "10.20.0.1".parse().unwrap();
    let gw6: IpAddr = "fd20::1".parse().unwrap();
    let routes = vec![
        ResolvedRoute::via("0.0.0.0/0".parse().unwrap(), gw4),
        ResolvedRoute::via("::/0".parse().unwrap(), gw6),
        ResolvedRoute {
            onlink: true,
            metric: Some(50),
            ..ResolvedRoute::via(
                "192.168.77.0/24".parse().unwrap(),
                "10.99.0.1".parse().unwrap(),
            )
        },
        ResolvedRoute {
            mtu: Some(1300),
            ..ResolvedRoute::link("10.30.0.0/16".parse().unwrap())
        },
    ];
    let sysctls = vec![
        ("net.ipv4.ip_forward".to_owned(), "1".to_owned()),
        ("net.ipv6.conf.eth0.accept_ra".to_owned(), "0".to_owned()),
    ];
    n.configure(pod.path(), "eth0", &addrs, &routes, &sysctls)
        .unwrap();
    // Idempotent: a retried step changes nothing and does not fail.
    n.configure(pod.path(), "eth0", &addrs, &routes, &sysctls)
        .unwrap();

    let a = &pod_json(&pod, &["-j", "addr", "show", "eth0"])[0]["addr_info"];
    let have: Vec<String> = a
        .as_array()
        .unwrap()
        .iter()
        .map(|x| format!("{}/{}", x["local"].as_str().unwrap(), x["prefixlen"]))
        .collect();
    assert!(have.contains(&"10.20.0.5/24".to_owned()), "{have:?}");
    assert!(have.contains(&"fd20::5/64".to_owned()), "{have:?}");
    // Usable at once: no DAD, so never tentative.
    let v6 = a
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["local"] == "fd20::5")
        .unwrap();
    assert!(
        v6.get("tentative").is_none() && v6.get("nodad").is_some(),
        "{v6}"
    );

    let r4 = pod_json(&pod, &["-j", "-4", "route", "show"]);
    let find = |rs: &Value, dst: &str| {
        rs.as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == dst)
            .cloned()
            .unwrap_or_else(|| panic!("no route to {dst} in {rs}"))
    };
    assert_eq!(find(&r4, "default")["gateway"], "10.20.0.1");
    let onlink = find(&r4, "192.168.77.0/24");
    assert_eq!(onlink["gateway"], "10.99.0.1");
    assert_eq!(onlink["metric"], 50);
    assert!(has_flag(&onlink, "onlink"), "{onlink}");
    let link = find(&r4, "10.30.0.0/16");
    assert_eq!(link["scope"], "link");
    assert!(link.get("gateway").is_none());
    let r6 = pod_json(&pod, &["-j", "-6", "route", "show"]);
    assert_eq!(find(&r6, "default")["gateway"], "fd20::1");

    // The sysctls are the pod's, and only the pod's.
    let read = |p: &'static str| move || std::fs::read_to_string(p).unwrap().trim().to_owned();
    assert_eq!(pod.run(read("/proc/sys/net/ipv4/ip_forward")), "1");
    assert_eq!(pod.run(read("/proc/sys/net/ipv6/conf/eth0/accept_ra")), "0");
    assert_eq!(
        read("/proc/sys/net/ipv4/ip_forward")(),
        "0",
        "node sysctl written"
    );

    // CHECK's view matches.
    let st = n.inspect(pod.path(), "eth0").unwrap().unwrap();
    assert!(st.up);
    assert_eq!(st.mac, Some(derive_mac("c-cfg", "eth0")));
    for a in &addrs {
        assert!(st.addrs.contains(a), "{:?}", st.addrs);
    }
    assert!(st.addrs.iter().all(|a| !a.to_string().starts_with("fe80")));
    let r = st
        .routes
        .iter()
        .find(|r| r.dst == "192.168.77.0/24".parse::<IpNet>().unwrap())
        .unwrap();
    assert!(r.onlink && r.metric == Some(50), "{r:?}");
    let r = st
        .routes
        .iter()
        .find(|r| r.dst == "10.30.0.0/16".parse::<IpNet>().unwrap())
        .unwrap();
    assert_eq!(r.mtu, Some(1300));
    assert!(
        st.routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(gw6))
    );
    assert!(n.inspect(pod.path(), "eth7").unwrap().is_none());

    // A key outside net.* is refused before anything is written.
    let e = n
        .configure(
            pod.path(),
            "eth0",
            &[],
            &[],
            &[("kernel.panic".into(), "1".into())],
        )
        .unwrap_err();
    assert_eq!(e.cni_code(), 7);
    // A missing link is an error, not a silent success.
    assert!(matches!(
        n.configure(pod.path(), "eth7", &addrs, &[], &[]),
        Err(NetnsError::LinkNotFound { .. })
    ));
}

#[test]
#[ignore = "needs root: make test runs it"]
fn a_group_is_deleted_in_one_request_only_when_it_holds_exactly_our_veths() {
    node();
    let n = RtNetns::new().unwrap();
    let pod = ScratchNetns::new().unwrap();
    let alive = |name: &str| {
        pod.cmd("ip", &["link", "show", name])
            .unwrap()
            .status
            .success()
    };
    let make = |cid: &str, ifname: &str, g: u32| {
        n.create_veth(&VethSpec {
            group: Some(g),
            ..spec(&pod, cid, ifname)
        })
        .unwrap();
        let l = &pod_json(&pod, &["-j", "link", "show", ifname])[0];
        // iproute2 prints a group it has no name for as a signed number.
        assert_eq!(l["group"], (g as i32).to_string(), "{l}");
    };

    // An attachment's group (above what iproute2 can even set, 0-255).
    let g = attachment_group("c-grp", "eth0");
    assert!(!n.group_in_use(pod.path(), g).unwrap());
    make("c-grp", "eth0", g);
    make("c-grp", "eth1", g);
    assert!(n.group_in_use(pod.path(), g).unwrap());
    // The host ends stay in the default group: nothing is ever deleted by
    // group in the node.
    let h = &ip_json(&["-j", "link", "show", &host_ifname("c-grp", "eth0")])[0];
    assert_eq!(h["group"], "default", "{h}");
    // Group 0 is everyone's: refused.
    assert!(!n.delete_group(pod.path(), 0, &["eth0", "eth1"]).unwrap());
    // One of ours missing from the request: nothing deleted.
    assert!(!n.delete_group(pod.path(), g, &["eth0"]).unwrap());
    assert!(alive("eth0") && alive("eth1"));
    // Exactly ours: both pairs go, pod and host ends, with one request.
    assert!(n.delete_group(pod.path(), g, &["eth1", "eth0"]).unwrap());
    assert!(!alive("eth0") && !alive("eth1"));
    for ifname in ["eth0", "eth1"] {
        assert!(!n.host_link_exists(&host_ifname("c-grp", ifname)).unwrap());
    }
    // Nothing left in the group: nothing to do, and no error.
    assert!(!n.delete_group(pod.path(), g, &["eth0", "eth1"]).unwrap());

    // Foreign members, in a group iproute2 can set.
    let g = 200;
    make("c-grp2", "eth0", g);
    make("c-grp2", "eth1", g);
    ok(pod
        .cmd(
            "ip",
            &["link", "add", "other0", "group", "200", "type", "bridge"],
        )
        .unwrap());
    assert!(!n.delete_group(pod.path(), g, &["eth0", "eth1"]).unwrap());
    assert!(alive("eth0") && alive("eth1") && alive("other0"));
    // Ours, but one of our names is no longer a veth: nothing deleted.
    ok(pod
        .cmd("ip", &["link", "set", "other0", "group", "default"])
        .unwrap());
    ok(pod
        .cmd("ip", &["link", "set", "eth1", "name", "spare1"])
        .unwrap());
    ok(pod
        .cmd(
            "ip",
            &["link", "add", "eth1", "group", "200", "type", "bridge"],
        )
        .unwrap());
    assert!(!n.delete_group(pod.path(), g, &["eth0", "eth1"]).unwrap());
    assert!(alive("eth0") && alive("eth1") && alive("spare1"));
    ok(pod.cmd("ip", &["link", "del", "eth1"]).unwrap());
    ok(pod
        .cmd("ip", &["link", "set", "spare1", "name", "eth1"])
        .unwrap());
    assert!(n.delete_group(pod.path(), g, &["eth0", "eth1"]).unwrap());
    assert!(!alive("eth0") && !alive("eth1"));
    assert!(alive("other0"), "a link outside the group stays");

    // A pod namespace that is gone, or the node's own: nothing deleted.
    assert!(
        !n.delete_group(Path::new("/nonexistent/netns"), g, &["eth0"])
            .unwrap()
    );
    assert!(!n.delete_group(&node_path(), g, &["eth0"]).unwrap());
}

#[test]
#[ignore = "needs root: make test runs it"]
fn delete_is_idempotent() {
    node();
    let n = RtNetns::new().unwrap();
    let pod = ScratchNetns::new().unwrap();
    let s = spec(&pod, "c-del", "eth0");
    n.create_veth(&s).unwrap();
    n.delete(Some(pod.path()), "eth0", &s.host_ifname).unwrap();
    assert!(
        !pod.cmd("ip", &["link", "show", "eth0"])
            .unwrap()
            .status
            .success()
    );
    assert!(!n.host_link_exists(&s.host_ifname).unwrap());
    // Again, and with every kind of missing or useless netns.
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("f");
    std::fs::write(&plain, b"").unwrap();
    n.delete(Some(pod.path()), "eth0", &s.host_ifname).unwrap();
    n.delete(None, "eth0", &s.host_ifname).unwrap();
    n.delete(Some(Path::new("")), "eth0", &s.host_ifname)
        .unwrap();
    n.delete(
        Some(Path::new("/nonexistent/netns")),
        "eth0",
        &s.host_ifname,
    )
    .unwrap();
    n.delete(Some(&plain), "eth0", &s.host_ifname).unwrap();

    // The pod is gone (its thread ended): DEL with its stale path still works.
    let gone = {
        let pod2 = ScratchNetns::new().unwrap();
        n.create_veth(&spec(&pod2, "c-del2", "eth0")).unwrap();
        pod2.path().to_owned()
    };
    n.delete(Some(&gone), "eth0", &host_ifname("c-del2", "eth0"))
        .unwrap();
    assert!(!n.host_link_exists(&host_ifname("c-del2", "eth0")).unwrap());

    // Only the host end is left (its peer never reached the pod): DEL by
    // host end removes the pair.
    let host = host_ifname("c-del3", "eth0");
    ok(ip(&[
        "link", "add", &host, "type", "veth", "peer", "name", "halfpeer",
    ]));
    n.delete(Some(Path::new("/nonexistent/netns")), "eth0", &host)
        .unwrap();
    assert!(!n.host_link_exists(&host).unwrap());
    assert!(!ip(&["link", "show", "halfpeer"]).status.success());
    n.delete(None, "eth0", &host).unwrap();
}

#[test]
#[ignore = "needs root: make test runs it"]
fn host_link_reaches_the_node_through_its_gateway() {
    node();
    let n = RtNetns::new().unwrap();
    let pod = ScratchNetns::new().unwrap();
    let s = spec(&pod, "c-hostlink", "eth1");
    n.create_veth(&s).unwrap();
    let gw4: IpAddr = "169.254.128.1".parse().unwrap();
    let gw6: IpAddr = "fd00:169:254::1".parse().unwrap();
    let pod4: IpAddr = "172.20.0.5".parse().unwrap();
    let pod6: IpAddr = "fd00:172:20::5".parse().unwrap();
    // Something on the node behind the gateway, reached by an onlink route.
    ok(ip(&["addr", "add", "10.77.0.1/32", "dev", "lo"]));
    let mut routes = host_link_pod_routes(gw4, &["10.77.0.0/16".parse().unwrap()]);
    routes.extend(host_link_pod_routes(gw6, &[]));
    n.configure(
        pod.path(),
        "eth1",
        &[IpNet::from(pod4), IpNet::from(pod6)],
        &routes,
        &[],
    )
    .unwrap();

    // Without the node side the pod reaches nothing.
    assert!(!pod_ping(&pod, &["-c1", "-W1", "169.254.128.1"]));

    let hs = HostLinkSpec {
        host_ifname: s.host_ifname.clone(),
        gateways: vec![
            "169.254.128.1/32".parse().unwrap(),
            "fd00:169:254::1/128".parse().unwrap(),
        ],
        pod_addrs: vec![pod4, pod6],
    };
    n.host_side(&hs).unwrap();
    n.host_side(&hs).unwrap(); // idempotent

    assert!(
        pod_ping(&pod, &["-c1", "-W2", "169.254.128.1"]),
        "pod -> v4 gateway"
    );
    assert!(
        pod_ping(&pod, &["-6", "-c1", "-W2", "fd00:169:254::1"]),
        "pod -> v6 gateway"
    );
    assert!(
        pod_ping(&pod, &["-c1", "-W2", "10.77.0.1"]),
        "pod -> node via onlink route"
    );
    assert!(ping(&["-c1", "-W2", "172.20.0.5"]), "node -> pod eth1");
    assert!(
        ping(&["-6", "-c1", "-W2", "fd00:172:20::5"]),
        "node -> pod eth1 (v6)"
    );

    let h = &ip_json(&["-j", "addr", "show", &s.host_ifname])[0]["addr_info"];
    assert!(
        h.as_array()
            .unwrap()
            .iter()
            .any(|a| a["local"] == "169.254.128.1" && a["prefixlen"] == 32)
    );
}

#[test]
#[ignore = "needs root: make test runs it"]
fn open_in_binds_what_it_opens_to_the_pod_and_returns_the_thread() {
    use tenet::netns::guard::{NetnsFile, THREAD_SELF_NETNS, open_in};
    node();
    let pod = ScratchNetns::new().unwrap();
    let pod_ns = NetnsFile::open(pod.path()).unwrap();
    let here = NetnsFile::open(Path::new(THREAD_SELF_NETNS)).unwrap().id();
    assert_ne!(here, pod_ns.id());
    // What is opened inside sees the pod: its namespace file is the pod's.
    let inside = open_in(&pod_ns, || {
        NetnsFile::open(Path::new(THREAD_SELF_NETNS)).unwrap().id()
    })
    .unwrap();
    assert_eq!(inside, pod_ns.id());
    // ...and the calling thread is back in the node at once.
    let after = NetnsFile::open(Path::new(THREAD_SELF_NETNS)).unwrap().id();
    assert_eq!(after, here);
    // Another kind of namespace: refused, nothing run, the thread stays.
    let mnt = NetnsFile::open(Path::new("/proc/thread-self/ns/mnt")).unwrap();
    let mut ran = false;
    assert!(
        open_in(&mnt, || ran = true).is_err(),
        "a mount namespace is not entered"
    );
    assert!(!ran);
    let still = NetnsFile::open(Path::new(THREAD_SELF_NETNS)).unwrap().id();
    assert_eq!(still, here);
}
