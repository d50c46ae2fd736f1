//! SIGKILL of the whole `tenet` binary at each step of ADD with
//! `store = "etcd"` (a real etcd from the harness, on the scratch node's
//! loopback; Linux bridge + nftables; the rainbond pipeline), as root: after
//! DEL, GC or the claim lease's expiry nothing is left for the pod, neither
//! in etcd (handle, pending key, block bit, sticky address, claim of a block
//! that is gone) nor on the node (veth, bridge, nft rule, attachment
//! record, local address record).
//!
//! Claims are permanent from the `reserve` step on, before anything is
//! configured in the pod (issue 13, item 3): an ADD killed at any later step
//! keeps its addresses past the claim TTL, and a second pod on the same
//! tenant bridge never gets one of them. An ADD whose claim and rollback
//! both get no answer (etcd stopped) keeps its record, so that GC finds the
//! claim that may have been made (item 4).
//!
//! Helpers shared with `apply_root.rs`: `common/cni.rs`.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::cni::{Node, Out, Pod, conf, first_ip};
// Every step ADD takes for a rainbond pod: the names `TENET_FAILPOINT` takes.
use common::etcd::{EtcdCluster, scan};
use tenet::apply::failpoint::STEPS_WITH_HOST_LINK as STEPS;

const PREFIX: &str = "/tenet-crash";
/// Short, so that expiry happens inside the test; long enough that the ADDs
/// that must confirm do so within half of it (the bound on one ADD).
const TTL_S: u64 = 4;

/// A scratch node whose `tenet` uses a fresh etcd (started inside the node's
/// namespace, killed when dropped).
fn setup() -> (Node, EtcdCluster) {
    setup_with(TTL_S, 10_000)
}

fn setup_with(ttl_s: u64, timeout_ms: u64) -> (Node, EtcdCluster) {
    let mut node = Node::new("the etcd crash tests");
    let etcd = EtcdCluster::single();
    node.set_config(&format!(
        r#"store = "etcd"
node_name = "crash-node"
[etcd]
endpoints = {endpoints:?}
prefix = "{PREFIX}"
timeout_ms = {timeout_ms}
claim_ttl_s = {ttl_s}
cooldown_s = 0
"#,
        endpoints = etcd.endpoints(),
    ));
    (node, etcd)
}

/// `<block>/p/<ordinal>`.
fn is_pend_key(k: &str) -> bool {
    k.rsplit_once("/p/")
        .is_some_and(|(_, o)| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
}

/// What etcd still holds for pods: handles, pending claims, set bits,
/// sticky addresses, and claims of blocks that do not exist. Blocks, tenant
/// subnets, pools and the node's lease record stay by design.
fn etcd_leftovers(etcd: &EtcdCluster) -> Vec<String> {
    let kvs = scan(&etcd.endpoints(), &format!("{PREFIX}/"));
    let blocks: HashSet<String> = kvs
        .iter()
        .filter(|(k, _)| k.contains("/block/") && !is_pend_key(k))
        .map(|(k, _)| k.clone())
        .collect();
    let mut out = Vec::new();
    for (k, v) in &kvs {
        if k.contains("/handle/") || k.contains("/sticky/") || is_pend_key(k) {
            out.push(format!("{k} = {v}"));
        } else if blocks.contains(k) {
            let b: serde_json::Value = serde_json::from_str(v).unwrap();
            if !b["used"].as_str().unwrap().chars().all(|c| c == '0') {
                out.push(format!("allocated bit in {k} = {v}"));
            }
        } else if let Some((net, rest)) = k.split_once("/claim/") {
            // claim/<pool>/<tenant>/<cidr> ↔ block/<pool>/<tenant>/<node>/<cidr>
            let (pt, cidr) = rest.rsplit_once('/').unwrap();
            let head = format!("{net}/block/{pt}/");
            let tail = format!("/{cidr}");
            if !blocks
                .iter()
                .any(|b| b.starts_with(&head) && b.ends_with(&tail))
            {
                out.push(format!("claim without a block: {k}"));
            }
        }
    }
    out
}

#[test]
#[ignore = "needs root and etcd: make test runs it"]
fn sigkill_at_each_step_then_del_or_gc_leaves_nothing_in_etcd_or_on_the_node() {
    let (node, etcd) = setup();
    let mut addresses = HashSet::new();
    node.kill_at_each_step_then_del_or_gc(&STEPS, "team-a", |n, step| {
        // DEL and GC free pending claims themselves: no waiting for leases.
        let left = etcd_leftovers(&etcd);
        assert!(left.is_empty(), "{step}: left in etcd: {left:#?}");
        node.assert_clean();
        // The address is free again: a complete ADD gets one, and its DEL
        // leaves nothing either.
        let q = Pod::new(&format!("ok{n}"), "team-a");
        addresses.insert(first_ip(&node.add(&q).ok()));
        node.del(&q).ok();
        assert!(etcd_leftovers(&etcd).is_empty(), "{step}");
        node.assert_clean();
    });
    // Cooldown 0 and next-fit: freed addresses come back, so the whole run
    // stays within a few addresses.
    assert!(addresses.len() <= STEPS.len(), "{addresses:?}");
    // It was the etcd store, with its hint file in the node's state dir.
    let kvs = scan(&etcd.endpoints(), &format!("{PREFIX}/"));
    assert!(kvs.iter().any(|(k, _)| k.contains("/subnet/")), "{kvs:?}");
    let hints: Vec<_> = std::fs::read_dir(node.state.join("etcd-hints"))
        .unwrap()
        .collect();
    assert_eq!(hints.len(), 1, "{hints:?}");
}

/// Addresses a pod can get in one /27 tenant subnet: 32 less the network,
/// broadcast and gateway addresses; more than the kill points, so that the
/// killed pods leave room for second pods.
const USABLE: usize = 29;

/// The rainbond pipeline with a /27 per tenant ([`USABLE`] addresses for
/// pods), so that a test can hand out every address of the subnet.
fn small_subnets(node: &Node) -> std::path::PathBuf {
    let text = std::fs::read_to_string(common::rainbond())
        .unwrap()
        .replace("subnetLen = 24", "subnetLen = 27");
    assert!(text.contains("subnetLen = 27"));
    let p = node.state.parent().unwrap().join("small.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// ADD of `pod` with the pipeline at `pipeline`, and `extra` environment.
fn add_with(node: &Node, pod: &Pod, pipeline: &std::path::Path, extra: &[(&str, &str)]) -> Out {
    let mut env = pod.env("ADD");
    env.push(("TENET_PIPELINE", pipeline.to_str().unwrap()));
    env.extend_from_slice(extra);
    node.run(&env, &conf())
}

/// The IPv4 address of `pod`'s eth0, if it has one.
fn eth0(pod: &Pod) -> Option<String> {
    pod.addrs()
        .into_iter()
        .find(|(n, _)| n == "eth0")
        .and_then(|(_, a)| a.first().map(|a| a.split('/').next().unwrap().to_owned()))
}

#[test]
#[ignore = "needs root and etcd: make test runs it"]
fn a_killed_adds_addresses_outlive_the_claim_ttl_and_go_to_no_second_pod() {
    // Issue 13, item 3: ADDs killed after their claim had configured eth0;
    // once a claim lease would have expired, new pods on the same tenant
    // bridge got the same addresses while the killed pods still had them.
    const TTL: u64 = 2;
    let (node, etcd) = setup_with(TTL, 10_000);
    let small = small_subnets(&node);
    let from = STEPS.iter().position(|s| *s == "reserve").unwrap();
    let killed: Vec<(Pod, &str)> = STEPS[from..]
        .iter()
        .enumerate()
        .map(|(n, step)| (Pod::new(&format!("kill{n}"), "team-a"), *step))
        .collect();
    for (p, step) in &killed {
        let fp = format!("{step}:kill");
        let out = add_with(&node, p, &small, &[("TENET_FAILPOINT", &fp)]);
        assert_eq!(out.signal, Some(9), "{step}: {}", out.stderr);
    }
    // Every killed ADD holds a confirmed claim (none is pending).
    let held = |etcd: &EtcdCluster| -> Vec<String> {
        scan(&etcd.endpoints(), &format!("{PREFIX}/"))
            .into_iter()
            .filter(|(k, _)| k.contains("/handle/"))
            .map(|(_, v)| v)
            .collect()
    };
    let handles = held(&etcd);
    assert_eq!(handles.len(), killed.len(), "{handles:#?}");
    assert!(
        handles
            .iter()
            .all(|h| h.contains("\"state\":\"confirmed\"")),
        "{handles:#?}"
    );
    // Longer than any claim lease could live.
    std::thread::sleep(Duration::from_secs(2 * TTL + 1));
    assert_eq!(held(&etcd).len(), killed.len(), "a claim expired");
    let configured: HashSet<String> = killed.iter().filter_map(|(p, _)| eth0(p)).collect();
    let configure = STEPS.iter().position(|s| *s == "configure:eth0").unwrap();
    let after_configure = STEPS.len() - configure;
    assert_eq!(
        configured.len(),
        after_configure,
        "killed pods carrying eth0"
    );
    // Second pods take the rest of the /27, never an address a killed pod
    // holds, and then the subnet is full.
    let mut second = Vec::new();
    let mut got = HashSet::new();
    for n in 0..USABLE - killed.len() {
        let q = Pod::new(&format!("second{n}"), "team-a");
        let ip = first_ip(&add_with(&node, &q, &small, &[]).ok());
        assert!(!configured.contains(&ip), "{ip} is on a killed pod's eth0");
        assert!(got.insert(ip.clone()), "{ip} twice");
        second.push(q);
    }
    let last = Pod::new("one-too-many", "team-a");
    add_with(&node, &last, &small, &[]).error(130);
    // DEL of the killed pods frees their claims (their records name them),
    // then everything goes.
    for (p, _) in &killed {
        node.del(p).ok();
    }
    for q in &second {
        node.del(q).ok();
    }
    node.del(&last).ok();
    let left = etcd_leftovers(&etcd);
    assert!(left.is_empty(), "left in etcd: {left:#?}");
    node.assert_clean();
}

#[test]
#[ignore = "needs root and etcd: make test runs it"]
fn an_add_whose_claim_and_rollback_get_no_answer_keeps_its_record_for_gc() {
    // Issue 13, item 4: the claim may commit although its answer never
    // came (etcd stopped, then resumed with the request queued); the
    // rollback's release gets no answer either. The record must stay, so
    // that GC finds the claim.
    let (node, etcd) = setup_with(TTL_S, 1000);
    let pid = etcd.pid(0).unwrap() as i32;
    let p = Pod::new("stalled", "team-a");
    // SAFETY: signals to the etcd process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let out = node.add(&p);
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let j = out.error(11);
    let details = j["details"].as_str().unwrap();
    assert!(details.contains("kept for DEL or GC"), "{j}");
    // The record names the attachment whatever etcd made of the queued
    // claim: a handle, if there is one, always has its record.
    let records = tenet::apply::Records::new(&node.state);
    let rec = records
        .list(None)
        .unwrap()
        .into_iter()
        .find(|r| r.key.container_id == "stalled")
        .expect("the record was kept");
    assert_eq!(rec.phase, tenet::apply::Phase::Applying);
    std::thread::sleep(Duration::from_millis(500));
    let handles = scan(&etcd.endpoints(), &format!("{PREFIX}/"))
        .into_iter()
        .filter(|(k, _)| k.contains("/handle/"))
        .count();
    eprintln!("claim committed after the timeout: {}", handles == 1);
    // GC (the ADD's process is gone) frees the claim and everything else.
    node.gc_all().ok();
    let left = etcd_leftovers(&etcd);
    assert!(left.is_empty(), "left in etcd: {left:#?}");
    node.assert_clean();
}
