//! SIGKILL of the whole `tenet` binary at each step of ADD with
//! `store = "etcd"` (a real etcd from the harness, on the scratch node's
//! loopback; Linux bridge + nftables; the rainbond pipeline), as root: after
//! DEL, GC or the claim lease's expiry nothing is left for the pod, neither
//! in etcd (handle, pending key, block bit, sticky address, claim of a block
//! that is gone) nor on the node (veth, bridge, nft rule, attachment
//! record, local address record).
//!
//! Helpers shared with `apply_root.rs`: `common/cni.rs`.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::cni::{Node, Pod, first_ip};
// Every step ADD takes for a rainbond pod: the names `TENET_FAILPOINT` takes.
use common::etcd::{EtcdCluster, scan};
use tenet::apply::failpoint::STEPS_WITH_HOST_LINK as STEPS;

const PREFIX: &str = "/tenet-crash";
/// Short, so that expiry happens inside the test; long enough that the ADDs
/// that must confirm do so within half of it (the bound on one ADD).
const TTL_S: u64 = 4;

/// A scratch node whose `tenet` uses a fresh etcd (started inside the node's
/// namespace, killed when dropped).
fn setup() -> Option<(Node, EtcdCluster)> {
    let mut node = Node::new("the etcd crash tests")?;
    let etcd = EtcdCluster::single()?;
    node.set_config(&format!(
        r#"store = "etcd"
node_name = "crash-node"
[etcd]
endpoints = {endpoints:?}
prefix = "{PREFIX}"
timeout_ms = 10000
claim_ttl_s = {TTL_S}
cooldown_s = 0
"#,
        endpoints = etcd.endpoints(),
    ));
    Some((node, etcd))
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

/// Polls until etcd holds nothing for pods (the leases expired), at most
/// three TTLs; returns how long it took.
fn wait_for_expiry(etcd: &EtcdCluster) -> Duration {
    let start = Instant::now();
    loop {
        let left = etcd_leftovers(etcd);
        if left.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(3 * TTL_S),
            "claims outlived their lease by far: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigkill_at_each_step_then_del_or_gc_leaves_nothing_in_etcd_or_on_the_node() {
    let Some((node, etcd)) = setup() else { return };
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

#[test]
fn a_kill_between_reserve_and_confirm_is_undone_by_lease_expiry_alone() {
    let Some((node, etcd)) = setup() else { return };
    let from = STEPS.iter().position(|s| *s == "reserve").unwrap();
    let to = STEPS.iter().position(|s| *s == "confirm").unwrap();
    let pods: Vec<Pod> = (from..to)
        .map(|n| Pod::new(&format!("exp{n}"), "team-a"))
        .collect();
    for (p, step) in pods.iter().zip(&STEPS[from..to]) {
        node.add_killed_at(p, step);
    }
    // Every killed ADD left its pending claim in etcd...
    let left = etcd_leftovers(&etcd);
    let pending = left.iter().filter(|l| l.contains("/handle/")).count();
    assert_eq!(pending, to - from, "{left:#?}");
    // ... which etcd removes by itself when the node's lease expires: no
    // DEL, no GC, nothing of tenet runs.
    let took = wait_for_expiry(&etcd);
    eprintln!(
        "pending claims of {} killed ADDs expired after {took:?}",
        to - from
    );
    // The node side needs the runtime's DEL or GC (its records name it);
    // GC then finds no claim left to free, and leaves nothing anywhere.
    node.gc_all().ok();
    let left = etcd_leftovers(&etcd);
    assert!(left.is_empty(), "left in etcd: {left:#?}");
    node.assert_clean();
    // The expired addresses are handed out again.
    let q = Pod::new("after", "team-a");
    node.add(&q).ok();
    node.del(&q).ok();
    assert!(etcd_leftovers(&etcd).is_empty());
    node.assert_clean();
}
