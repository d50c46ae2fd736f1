//! The whole `tenet` binary on the embedded default (local store, Linux
//! bridge + nftables, rtnetlink), driven through the CNI protocol, as root,
//! inside a scratch "node" namespace per test with pods as namespaces the
//! test creates: ADD/CHECK/DEL/DEL, DEL without a netns, an existing ifname,
//! a taken static address, rollback after a failure injected at each step,
//! SIGKILL at each step followed by DEL or GC, and 50 concurrent ADDs.
//!
//! The binary is the test build (`CARGO_BIN_EXE_tenet`), which has the
//! `failpoints` feature (`TENET_FAILPOINT`); the release binary does not.

mod common;

use std::collections::HashSet;

use common::cni::{NETWORK, Node, Pod, conf, first_ip};
// Every step ADD takes for a rainbond pod: the names `TENET_FAILPOINT` takes.
use serde_json::{Value, json};
use tenet::apply::failpoint::STEPS_WITH_HOST_LINK as STEPS;

fn node() -> Node {
    Node::new("the apply root tests")
}

#[test]
#[ignore = "needs root: make test runs it"]
fn add_check_del_del_and_isolation() {
    let node = node();
    let a1 = Pod::new("a1", "team-a");
    let a2 = Pod::new("a2", "team-a");
    let b1 = Pod::new("b1", "team-b");
    let r1 = node.add(&a1).ok();
    let r2 = node.add(&a2).ok();
    let rb = node.add(&b1).ok();
    assert_eq!(r1["cniVersion"], "1.0.0");
    // eth0 with a tenant address, eth1 host link, as the rainbond plan says.
    let addrs = a1.addrs();
    let eth0 = addrs.iter().find(|(n, _)| n == "eth0").unwrap();
    assert_eq!(eth0.1, vec![r1["ips"][0]["address"].as_str().unwrap()]);
    assert!(
        addrs.iter().any(|(n, a)| n == "eth1" && !a.is_empty()),
        "{addrs:?}"
    );
    assert_ne!(first_ip(&r1), first_ip(&r2));
    // Tenants get different subnets.
    let subnet = |r: &Value| r["ips"][0]["gateway"].as_str().unwrap().to_owned();
    assert_eq!(subnet(&r1), subnet(&r2));
    assert_ne!(subnet(&r1), subnet(&rb));
    // Same tenant reaches, other tenant does not.
    assert!(
        a1.ping(&first_ip(&r2)),
        "pods of one tenant reach each other"
    );
    assert!(
        !a1.ping(&first_ip(&rb)),
        "pods of different tenants must not"
    );
    assert!(
        !b1.ping(&first_ip(&r1)),
        "pods of different tenants must not"
    );

    // CHECK, with and without prevResult.
    let mut check_conf: Value = serde_json::from_str(&conf()).unwrap();
    check_conf["prevResult"] = r1.clone();
    node.run(&a1.env("CHECK"), &check_conf.to_string()).ok();
    node.run(&a1.env("CHECK"), &conf()).ok();
    // Something changes behind tenet's back: CHECK names it.
    a1.ns.cmd("ip", &["addr", "flush", "dev", "eth0"]).unwrap();
    let j = node.run(&a1.env("CHECK"), &conf()).error(141);
    assert!(j["details"].as_str().unwrap().contains("eth0"), "{j}");

    for p in [&a1, &a2, &b1] {
        node.del(p).ok();
        node.del(p).ok();
    }
    node.assert_clean();
    // CHECK after DEL: container unknown.
    node.run(&a1.env("CHECK"), &conf()).error(3);
    // Both tenants' networks stayed, idle, for their next pods; GC takes them.
    node.gc_idle_tenants(2);
}

#[test]
#[ignore = "needs root: make test runs it"]
fn del_without_netns_and_after_the_pod_is_gone() {
    let node = node();
    let p = Pod::new("gone1", "team-a");
    node.add(&p).ok();
    let id = p.id.clone();
    drop(p);
    // containerd's DEL after the sandbox is gone: empty CNI_NETNS.
    let env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", id.as_str()),
        ("CNI_NETNS", ""),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];
    node.run(&env, &conf()).ok();
    node.run(&env, &conf()).ok();
    node.assert_clean();
}

#[test]
#[ignore = "needs root: make test runs it"]
fn an_existing_ifname_is_an_error_and_leaves_nothing() {
    let node = node();
    let p = Pod::new("dup1", "team-a");
    let out =
        p.ns.cmd(
            "ip",
            &["link", "add", "eth0", "type", "veth", "peer", "name", "x0"],
        )
        .unwrap();
    assert!(out.status.success());
    let j = node.add(&p).error(140);
    assert!(j["details"].as_str().unwrap().contains("eth0"), "{j}");
    node.assert_clean();
    // The pod's own eth0 is untouched.
    assert!(p.addrs().iter().any(|(n, _)| n == "eth0"));
}

#[test]
#[ignore = "needs root: make test runs it"]
fn a_static_address_already_taken_is_refused() {
    let node = node();
    let mut p1 = Pod::new("st1", "team-a");
    p1.extra_args = ";IP=10.64.1.50".into();
    let r = node.add(&p1).ok();
    assert_eq!(first_ip(&r), "10.64.1.50");
    let mut p2 = Pod::new("st2", "team-a");
    p2.extra_args = ";IP=10.64.1.50".into();
    let j = node.add(&p2).error(132);
    assert!(j["details"].as_str().unwrap().contains("10.64.1.50"), "{j}");
    assert!(!p2.addrs().iter().any(|(n, _)| n == "eth0"));
    node.del(&p1).ok();
    node.assert_clean();
}

#[test]
#[ignore = "needs root: make test runs it"]
fn a_failure_injected_after_each_step_rolls_back_everything() {
    let node = node();
    for step in STEPS {
        let p = Pod::new("rb1", "team-a");
        let fp = format!("{step}:error");
        let mut env = p.env("ADD");
        env.push(("TENET_FAILPOINT", &fp));
        let j = node.run(&env, &conf()).error(149);
        assert!(j["msg"].as_str().unwrap().contains(step), "{step}: {j}");
        node.assert_clean();
        assert_eq!(
            p.addrs()
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["lo"],
            "{step}: pod interfaces left"
        );
    }
}

#[test]
#[ignore = "needs root: make test runs it"]
fn sigkill_at_each_step_then_del_or_gc_leaves_nothing() {
    let node = node();
    node.kill_at_each_step_then_del_or_gc(&STEPS, "team-a", |_, _| node.assert_clean());
}

#[test]
#[ignore = "needs root: make test runs it"]
fn fifty_concurrent_adds_get_fifty_distinct_addresses() {
    let node = node();
    let pods: Vec<Pod> = (0..50)
        .map(|i| {
            Pod::new(
                &format!("c{i:02}"),
                if i % 2 == 0 { "team-a" } else { "team-b" },
            )
        })
        .collect();
    let children: Vec<_> = pods
        .iter()
        .map(|p| node.spawn(&p.env("ADD"), &conf()))
        .collect();
    let mut ips = HashSet::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert!(
            ips.insert(first_ip(&v)),
            "duplicate address {}",
            first_ip(&v)
        );
    }
    assert_eq!(ips.len(), 50);
    let children: Vec<_> = pods
        .iter()
        .map(|p| node.spawn(&p.env("DEL"), &conf()))
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    node.assert_clean();
}

#[test]
#[ignore = "needs root: make test runs it"]
fn status_reports_a_broken_store_as_not_ready() {
    let node = node();
    let st = [("CNI_COMMAND", "STATUS")];
    let conf11 = json!({"cniVersion": "1.1.0", "name": NETWORK, "type": "tenet"}).to_string();
    node.run(&st, &conf11).ok();
    // The state directory becomes a file: the store is unusable.
    let _ = std::fs::remove_dir_all(&node.state);
    std::fs::write(&node.state, b"not a directory").unwrap();
    let j = node.run(&st, &conf11).error(50);
    let details = j["details"].as_str().unwrap();
    assert!(details.contains(node.state.to_str().unwrap()), "{j}");
}
