//! Behaviour of the cluster address store (`EtcdStore`) against a real etcd
//! (Debian's etcd-server, started per test on loopback ports): the same
//! allocation rules as the local store, two-phase claims under leases,
//! node-affine blocks, GC per node, tenant subnets with and without
//! overlap, sticky owners, concurrency across simulated nodes, a leader
//! killed mid-run, a crashed ADD, an unreachable etcd, TLS and
//! authentication.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::etcd::{EtcdCluster, TlsFiles, scan};
use common::ipam::{fixed, pods, pool, v4, v6};
use tenet::config::{Config, SdnKind, StoreKind};
use tenet::etcd::{EtcdConn, EtcdSettings};
use tenet::ipam::{
    AttachmentKey, ClaimState, EtcdOptions, EtcdStore, IpStore, IpamError, ManualClock,
};
use tenet::plan::{AddressSpec, IpFamily, PoolSpec};
use tenet::sdn::midonet::etcd::EtcdRecords;
use tenet::sdn::midonet::records::{Cmp, Op, TopologyRecords};

const NET: &str = "net1";

fn key(c: &str) -> AttachmentKey {
    AttachmentKey::new(NET, c, "eth0")
}

fn opts(etcd: &EtcdCluster, node: &str) -> EtcdOptions {
    let mut o = EtcdOptions::new(etcd.endpoints(), node);
    o.cooldown = Duration::ZERO;
    o.timeout = Duration::from_secs(5);
    // Each simulated node keeps its reserve hints, as `tenet` does in its
    // state dir: every test exercises them.
    o.hint_dir = Some(hint_dir(etcd, node));
    o
}

fn hint_dir(etcd: &EtcdCluster, node: &str) -> std::path::PathBuf {
    etcd.dir().join("hints").join(node)
}

fn store(etcd: &EtcdCluster, node: &str) -> EtcdStore {
    EtcdStore::new(opts(etcd, node)).unwrap()
}

fn addr(s: &EtcdStore, c: &str, t: &str, reqs: &[AddressSpec]) -> String {
    let a = s.reserve(&key(c), t, reqs).unwrap();
    a.iter()
        .map(|a| a.address.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn code(r: Result<impl std::fmt::Debug, IpamError>) -> (u32, String) {
    let e = r.unwrap_err();
    (e.cni_code(), e.to_string())
}

/// `<block>/p/<ordinal>`.
fn is_pend_key(k: &str) -> bool {
    k.rsplit_once("/p/")
        .is_some_and(|(_, o)| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
}

/// Asserts the prefix holds no handle, no pending claim and no allocated
/// bit in any block.
fn assert_nothing_allocated(endpoints: &[String]) {
    for (k, v) in scan(endpoints, "/tenet/ipam/") {
        assert!(!k.contains("/handle/"), "handle left: {k} = {v}");
        assert!(!is_pend_key(&k), "pending claim left: {k} = {v}");
        if k.contains("/block/") {
            let b: serde_json::Value = serde_json::from_str(&v).unwrap();
            let used = b["used"].as_str().unwrap();
            assert!(
                used.chars().all(|c| c == '0'),
                "allocation left in {k}: {v}"
            );
        }
    }
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn ipv4_tenants_get_their_own_subnets_and_the_keys_are_as_documented() {
    let etcd = EtcdCluster::single();
    let s = store(&etcd, "node-a");
    let a = s.reserve(&key("a"), "red", &[v4(&pods())]).unwrap();
    assert_eq!(a[0].address.to_string(), "10.0.0.2/24");
    assert_eq!(a[0].gateway.to_string(), "10.0.0.1");
    assert_eq!(a[0].subnet.to_string(), "10.0.0.0/24");
    assert_eq!((a[0].pool.as_str(), a[0].tenant.as_str()), ("pods", "red"));
    assert_eq!(addr(&s, "b", "red", &[v4(&pods())]), "10.0.0.3/24");
    assert_eq!(addr(&s, "c", "blue", &[v4(&pods())]), "10.0.1.2/24");

    let keys: Vec<String> = scan(&etcd.endpoints(), "/tenet/ipam/")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for want in [
        "/tenet/ipam/net1/pool/pods",
        "/tenet/ipam/net1/subnet/pods/red",
        "/tenet/ipam/net1/carve/pods/10.0.0.0%2F24",
        "/tenet/ipam/net1/claim/pods/red/10.0.0.0%2F26",
        "/tenet/ipam/net1/block/pods/red/node-a/10.0.0.0%2F26",
        "/tenet/ipam/net1/block/pods/red/node-a/10.0.0.0%2F26/p/2",
        "/tenet/ipam/net1/handle/a/eth0",
    ] {
        assert!(
            keys.iter().any(|k| k == want),
            "{want} missing in {keys:#?}"
        );
    }

    let got: Vec<_> = s
        .tenant_subnets(Some(NET))
        .unwrap()
        .iter()
        .map(|t| (t.tenant.clone(), t.subnet.to_string(), t.allocated))
        .collect();
    assert_eq!(
        got,
        vec![
            ("blue".into(), "10.0.1.0/24".into(), 1),
            ("red".into(), "10.0.0.0/24".into(), 2)
        ]
    );
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn ipv6_allocation() {
    let etcd = EtcdCluster::single();
    let s = store(&etcd, "n");
    let p = pool("v6", "fd00:10::/48", 64, &[]);
    let a = s.reserve(&key("a"), "red", &[v6(&p)]).unwrap();
    assert_eq!(a[0].address.to_string(), "fd00:10::2/64");
    assert_eq!(a[0].gateway.to_string(), "fd00:10::1");
    assert_eq!(addr(&s, "b", "blue", &[v6(&p)]), "fd00:10:0:1::2/64");
    let tiny = pool("tiny", "fd00:20::/126", 126, &[]);
    assert_eq!(addr(&s, "c", "red", &[v6(&tiny)]), "fd00:20::2/126");
    assert_eq!(addr(&s, "d", "red", &[v6(&tiny)]), "fd00:20::3/126");
    assert_eq!(code(s.reserve(&key("e"), "red", &[v6(&tiny)])).0, 130);
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn reserved_addresses_excludes_and_bad_requests() {
    let etcd = EtcdCluster::single();
    let s = store(&etcd, "n");
    let p = pool("p", "10.9.0.0/30", 30, &[]);
    assert_eq!(addr(&s, "a", "t", &[v4(&p)]), "10.9.0.2/30");
    let (c, msg) = code(s.reserve(&key("b"), "t", &[v4(&p)]));
    assert_eq!(c, 130);
    assert!(msg.contains("pool p") && msg.contains("tenant t"), "{msg}");
    for bad in ["10.9.0.0", "10.9.0.1", "10.9.0.3"] {
        assert_eq!(
            code(s.reserve(&key("c"), "t", &[fixed(v4(&p), bad)])).0,
            133,
            "{bad}"
        );
    }
    let ex = pool(
        "ex",
        "10.1.0.0/16",
        24,
        &["10.1.0.2-10.1.0.5", "10.1.0.8/30", "10.1.0.13/32"],
    );
    let got: Vec<_> = (0..5)
        .map(|i| addr(&s, &format!("x{i}"), "t", &[v4(&ex)]))
        .collect();
    assert_eq!(
        got,
        [
            "10.1.0.6/24",
            "10.1.0.7/24",
            "10.1.0.12/24",
            "10.1.0.14/24",
            "10.1.0.15/24"
        ]
    );
    assert_eq!(
        code(s.reserve(&key("y"), "t", &[fixed(v4(&ex), "10.1.0.9")])).0,
        133
    );
    let whole = pool("q", "10.2.0.0/23", 24, &["10.2.0.0/24"]);
    assert_eq!(addr(&s, "z", "t", &[v4(&whole)]), "10.2.1.2/24");
    // Malformed requests and names: 134, before anything is written.
    let no_pool = AddressSpec {
        family: IpFamily::Ipv4,
        pool: None,
        static_address: None,
    };
    assert_eq!(code(s.reserve(&key("m"), "t", &[no_pool])).0, 134);
    assert_eq!(code(s.reserve(&key("m"), "", &[v4(&pods())])).0, 134);
    assert_eq!(code(s.reserve(&key("m"), "t", &[v6(&pods())])).0, 134);
    let bad_net = AttachmentKey::new("../x", "c", "eth0");
    assert_eq!(code(s.reserve(&bad_net, "t", &[v4(&pods())])).0, 134);
    // A pool cannot change shape while recorded, nor overlap another.
    s.reserve(&key("m"), "t", &[v4(&pods())]).unwrap();
    assert_eq!(
        code(s.reserve(&key("n"), "t", &[v4(&pool("pods", "10.0.0.0/16", 26, &[]))])).0,
        137
    );
    assert_eq!(
        code(s.reserve(
            &key("n"),
            "t",
            &[v4(&pool("other", "10.0.128.0/17", 24, &[]))]
        ))
        .0,
        137
    );
    assert!(
        s.list(None)
            .unwrap()
            .iter()
            .all(|(k, _, _)| k.container_id != "n")
    );
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn reserve_is_idempotent_and_two_phase() {
    let etcd = EtcdCluster::single();
    let s = store(&etcd, "n");
    let reqs = [v4(&pods())];
    let first = s.reserve(&key("a"), "t", &reqs).unwrap();
    // Retried by another process (another store instance): the same claim.
    assert_eq!(
        store(&etcd, "n").reserve(&key("a"), "t", &reqs).unwrap(),
        first
    );
    let rows = s.list(Some(NET)).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].2, ClaimState::Pending);
    s.confirm(&key("a")).unwrap();
    s.confirm(&key("a")).unwrap();
    assert_eq!(s.list(None).unwrap()[0].2, ClaimState::Confirmed);
    assert_eq!(s.reserve(&key("a"), "t", &reqs).unwrap(), first);
    assert_eq!(code(s.reserve(&key("a"), "other", &reqs)).0, 135);
    assert_eq!(
        code(s.reserve(&key("a"), "t", &[v4(&pods()), v4(&pods())])).0,
        135
    );
    assert_eq!(code(s.confirm(&key("nobody"))).0, 136);
    // The confirmed handle has no lease: it never expires.
    let handle = scan(&etcd.endpoints(), "/tenet/ipam/net1/handle/a/eth0");
    assert!(
        handle[0].1.contains("\"state\":\"confirmed\""),
        "{handle:?}"
    );
    assert!(
        !scan(&etcd.endpoints(), "/tenet/ipam/")
            .iter()
            .any(|(k, _)| is_pend_key(k)),
        "confirm removed the pending key"
    );
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn dual_stack_is_all_or_nothing() {
    let etcd = EtcdCluster::single();
    let s = store(&etcd, "n");
    let p4 = pods();
    let p6 = pool("v6", "fd00::/126", 126, &[]);
    assert_eq!(addr(&s, "x", "t", &[v6(&p6)]), "fd00::2/126");
    assert_eq!(addr(&s, "y", "t", &[v6(&p6)]), "fd00::3/126");
    let before = s.dump().unwrap();
    assert_eq!(code(s.reserve(&key("ds"), "t", &[v4(&p4), v6(&p6)])).0, 130);
    assert_eq!(
        s.dump().unwrap(),
        before,
        "nothing of the v4 half was written"
    );
    s.release(&key("y")).unwrap();
    assert_eq!(
        addr(&s, "ds", "t", &[v6(&p6), v4(&p4)]),
        "fd00::3/126,10.0.0.2/24"
    );
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn static_addresses_are_honoured_or_refused() {
    let etcd = EtcdCluster::single();
    let s = store(&etcd, "n");
    let p = pods();
    assert_eq!(
        addr(&s, "a", "red", &[fixed(v4(&p), "10.0.5.20")]),
        "10.0.5.20/24"
    );
    s.confirm(&key("a")).unwrap();
    assert_eq!(
        addr(&s, "b", "red", &[fixed(v4(&p), "10.0.5.21/24")]),
        "10.0.5.21/24"
    );
    assert_eq!(addr(&s, "c", "red", &[v4(&p)]), "10.0.5.2/24");
    // Taken: confirmed (owner found through the handles) and pending.
    let (c, msg) = code(s.reserve(&key("d"), "red", &[fixed(v4(&p), "10.0.5.20")]));
    assert_eq!(c, 132);
    assert!(msg.contains("a/eth0") && msg.contains("pool pods"), "{msg}");
    let (c, msg) = code(s.reserve(&key("d"), "red", &[fixed(v4(&p), "10.0.5.21")]));
    assert_eq!(c, 132);
    assert!(msg.contains("b/eth0"), "{msg}");
    // Another node asking for an address in this node's block is refused too.
    let other = store(&etcd, "other");
    assert_eq!(
        code(other.reserve(&key("e"), "red", &[fixed(v4(&p), "10.0.5.20")])).0,
        132
    );
    // ... and gets a free static one in it, borrowing the block.
    assert_eq!(
        addr(&other, "e", "red", &[fixed(v4(&p), "10.0.5.30")]),
        "10.0.5.30/24"
    );
    assert_eq!(
        code(s.reserve(&key("f"), "red", &[fixed(v4(&p), "10.0.6.9")])).0,
        133
    );
    s.reserve(&key("g"), "blue", &[v4(&p)]).unwrap();
    assert_eq!(
        code(s.reserve(&key("h"), "green", &[fixed(v4(&p), "10.0.0.77")])).0,
        133,
        "inside blue's subnet"
    );
    assert_eq!(
        code(s.reserve(&key("h"), "green", &[fixed(v4(&p), "192.168.0.7")])).0,
        133
    );
    assert_eq!(
        code(s.reserve(&key("h"), "red", &[fixed(v4(&p), "10.0.5.30/16")])).0,
        134
    );
    let twice = [fixed(v4(&p), "10.0.5.40"), fixed(v4(&p), "10.0.5.40")];
    assert_eq!(code(s.reserve(&key("h"), "red", &twice)).0, 134);
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn release_is_idempotent_and_cooldown_holds_addresses_back() {
    let etcd = EtcdCluster::single();
    let mut o = opts(&etcd, "n");
    // The store's clock moves only when stepped (etcd's leases keep real
    // time; only cooldowns and hints read this clock).
    let clock = ManualClock::new();
    o.cooldown = Duration::from_secs(30);
    o.clock = clock.shared();
    let s = EtcdStore::new(o).unwrap();
    let p = pool("p", "10.0.0.0/16", 29, &[]); // hosts .2 – .6
    assert_eq!(addr(&s, "a", "t", &[v4(&p)]), "10.0.0.2/29");
    s.confirm(&key("a")).unwrap();
    assert_eq!(addr(&s, "b", "t", &[v4(&p)]), "10.0.0.3/29");
    let freed = s.release(&key("a")).unwrap();
    assert_eq!(freed[0].address.to_string(), "10.0.0.2/29");
    assert!(s.release(&key("a")).unwrap().is_empty());
    assert!(
        s.release(&AttachmentKey::new("never", "c", "eth0"))
            .unwrap()
            .is_empty()
    );
    assert_eq!(addr(&s, "c", "t", &[v4(&p)]), "10.0.0.4/29");
    assert_eq!(addr(&s, "d", "t", &[v4(&p)]), "10.0.0.5/29");
    assert_eq!(addr(&s, "e", "t", &[v4(&p)]), "10.0.0.6/29");
    // Only .2 is free and it is cooling down.
    assert_eq!(code(s.reserve(&key("f"), "t", &[v4(&p)])).0, 130);
    clock.advance(Duration::from_millis(29_999));
    assert_eq!(code(s.reserve(&key("f"), "t", &[v4(&p)])).0, 130);
    clock.advance(Duration::from_millis(1));
    assert_eq!(addr(&s, "f", "t", &[v4(&p)]), "10.0.0.2/29");
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn subnets_run_out_and_tenant_overlap_follows_the_option() {
    let etcd = EtcdCluster::single();
    let p = pool("p", "10.0.0.0/23", 24, &[]);
    // Without overlap: two tenants fill the /23, a third is refused.
    let s = store(&etcd, "n");
    assert_eq!(addr(&s, "a", "t1", &[v4(&p)]), "10.0.0.2/24");
    assert_eq!(addr(&s, "b", "t2", &[v4(&p)]), "10.0.1.2/24");
    let (c, msg) = code(s.reserve(&key("c"), "t3", &[v4(&p)]));
    assert_eq!(c, 131);
    assert!(msg.contains("t3") && msg.contains("10.0.0.0/23"), "{msg}");
    assert_eq!(
        code(s.reserve(&key("c"), "t3", &[fixed(v4(&p), "10.0.0.9")])).0,
        133
    );

    // With overlap (MidoNet): every tenant has the whole supernet.
    let net2 = |c: &str| AttachmentKey::new("net2", c, "eth0");
    let mut o = opts(&etcd, "n");
    o.allow_tenant_overlap = true;
    let m = EtcdStore::new(o).unwrap();
    let got: Vec<String> = ["t1", "t2", "t3"]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            m.reserve(&net2(&format!("o{i}")), t, &[v4(&p)]).unwrap()[0]
                .address
                .to_string()
        })
        .collect();
    assert_eq!(got, ["10.0.0.2/24", "10.0.0.2/24", "10.0.0.2/24"]);
    // Still unique inside one tenant, and statics are per tenant.
    assert_eq!(
        m.reserve(&net2("o4"), "t1", &[v4(&p)]).unwrap()[0]
            .address
            .to_string(),
        "10.0.0.3/24"
    );
    assert_eq!(
        code(m.reserve(&net2("o5"), "t1", &[fixed(v4(&p), "10.0.0.2")])).0,
        132
    );
    assert_eq!(
        m.reserve(&net2("o5"), "t2", &[fixed(v4(&p), "10.0.0.3")])
            .unwrap()[0]
            .address
            .to_string(),
        "10.0.0.3/24"
    );
    // The config picks overlap from the SDN.
    let mut cfg = Config {
        store: StoreKind::Etcd,
        node_name: Some("x".into()),
        ..Config::default()
    };
    cfg.etcd.endpoints = etcd.endpoints();
    assert!(!EtcdOptions::from_config(&cfg).unwrap().allow_tenant_overlap);
    cfg.sdn = SdnKind::Midonet;
    assert!(EtcdOptions::from_config(&cfg).unwrap().allow_tenant_overlap);
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn blocks_are_node_affine_and_full_nodes_borrow() {
    let etcd = EtcdCluster::single();
    // A /25 tenant subnet: two /26 blocks.
    let p = pool("p", "10.0.0.0/16", 25, &[]);
    let a = store(&etcd, "a");
    let b = store(&etcd, "b");
    let c = store(&etcd, "c");
    assert_eq!(addr(&a, "a1", "t", &[v4(&p)]), "10.0.0.2/25");
    // Block boundaries are not subnet boundaries: .64 is an ordinary host.
    assert_eq!(addr(&b, "b1", "t", &[v4(&p)]), "10.0.0.64/25");
    assert_eq!(addr(&a, "a2", "t", &[v4(&p)]), "10.0.0.3/25");
    // Node c finds no unclaimed block and borrows from another node's.
    let got = addr(&c, "c1", "t", &[v4(&p)]);
    assert!(
        ["10.0.0.4/25", "10.0.0.67/25"].contains(&got.as_str()),
        "{got}"
    );
    for k in ["a1", "b1", "a2", "c1"] {
        a.confirm(&key(k)).unwrap();
    }
    let blocks = a.blocks(Some(NET)).unwrap();
    let mut by_node: Vec<_> = blocks
        .iter()
        .map(|b| (b.node.as_str(), b.cidr.to_string(), b.used))
        .collect();
    by_node.sort();
    assert_eq!(by_node.len(), 2, "{by_node:?}");
    assert_eq!((by_node[0].0, by_node[0].1.as_str()), ("a", "10.0.0.0/26"));
    assert_eq!((by_node[1].0, by_node[1].1.as_str()), ("b", "10.0.0.64/26"));
    assert_eq!(by_node[0].2 + by_node[1].2, 4);
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn gc_frees_only_this_nodes_unlisted_confirmed_attachments() {
    let etcd = EtcdCluster::single();
    let s = store(&etcd, "me");
    let other = store(&etcd, "other");
    for c in ["a", "b", "c", "d"] {
        s.reserve(&key(c), "t", &[v4(&pods())]).unwrap();
        s.confirm(&key(c)).unwrap();
    }
    let a1 = AttachmentKey::new(NET, "a", "net1");
    s.reserve(&a1, "t", &[v4(&pods())]).unwrap();
    s.confirm(&a1).unwrap();
    other.reserve(&key("theirs"), "t", &[v4(&pods())]).unwrap();
    other.confirm(&key("theirs")).unwrap();
    s.reserve(&key("inflight"), "t", &[v4(&pods())]).unwrap();
    let n2 = AttachmentKey::new("net2", "z", "eth0");
    s.reserve(&n2, "t", &[v4(&pods())]).unwrap();
    s.confirm(&n2).unwrap();

    let valid = vec![
        ("a".to_string(), "eth0".to_string()),
        ("c".into(), "eth0".into()),
    ];
    let report = s.gc(NET, &valid).unwrap();
    let mut freed: Vec<_> = report.released.iter().map(|k| k.to_string()).collect();
    freed.sort();
    assert_eq!(freed, ["net1/a/net1", "net1/b/eth0", "net1/d/eth0"]);
    assert_eq!(report.kept_in_flight, vec![key("inflight")]);
    assert!(report.errors.is_empty());
    let mut left: Vec<_> = s
        .list(None)
        .unwrap()
        .into_iter()
        .map(|r| r.0.to_string())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "net1/a/eth0",
            "net1/c/eth0",
            "net1/inflight/eth0",
            "net1/theirs/eth0",
            "net2/z/eth0"
        ]
    );
    assert!(s.gc(NET, &valid).unwrap().released.is_empty());
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn a_sticky_owner_gets_its_address_back() {
    let etcd = EtcdCluster::single();
    let mut o = opts(&etcd, "n");
    o.cooldown = Duration::from_secs(60);
    let s = EtcdStore::new(o).unwrap();
    let p = pods();
    let web0 = s
        .reserve_for_owner(&key("c1"), "t", &[v4(&p)], Some("ns/web-0"))
        .unwrap();
    s.confirm(&key("c1")).unwrap();
    let web1 = s
        .reserve_for_owner(&key("c2"), "t", &[v4(&p)], Some("ns/web-1"))
        .unwrap();
    s.confirm(&key("c2")).unwrap();
    s.release(&key("c1")).unwrap();
    s.release(&key("c2")).unwrap();
    // Others do not get the cooling addresses; the owners do, swapped order.
    let stranger = s.reserve(&key("c3"), "t", &[v4(&p)]).unwrap();
    assert!(stranger[0].address != web0[0].address && stranger[0].address != web1[0].address);
    let again1 = s
        .reserve_for_owner(&key("c4"), "t", &[v4(&p)], Some("ns/web-1"))
        .unwrap();
    let again0 = s
        .reserve_for_owner(&key("c5"), "t", &[v4(&p)], Some("ns/web-0"))
        .unwrap();
    assert_eq!(again0[0].address, web0[0].address);
    assert_eq!(again1[0].address, web1[0].address);
    // Without a record (a new owner), an ordinary dynamic address.
    let fresh = s
        .reserve_for_owner(&key("c6"), "t", &[v4(&p)], Some("ns/web-2"))
        .unwrap();
    assert!(![web0[0].address, web1[0].address, stranger[0].address].contains(&fresh[0].address));
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn a_pending_claim_expires_with_its_lease() {
    let etcd = EtcdCluster::single();
    let p = pool("p", "10.0.0.0/30", 30, &[]); // a single address
    let mut o = opts(&etcd, "n");
    o.claim_ttl = Duration::from_secs(2);
    {
        // An ADD that reserves and dies before confirm: its store is
        // dropped, its lease is not revoked.
        let crashed = EtcdStore::new(o.clone()).unwrap();
        crashed.reserve(&key("dead"), "t", &[v4(&p)]).unwrap();
    }
    let s = EtcdStore::new(o).unwrap();
    assert_eq!(
        code(s.reserve(&key("b"), "t", &[v4(&p)])).0,
        130,
        "a live claim is not taken"
    );
    assert_eq!(s.gc(NET, &[]).unwrap().kept_in_flight, vec![key("dead")]);
    let start = Instant::now();
    let got = loop {
        match s.reserve(&key("b"), "t", &[v4(&p)]) {
            Ok(a) => break a,
            Err(e) if e.cni_code() == 130 => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the claim never expired"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(got[0].address.to_string(), "10.0.0.2/30");
    assert_eq!(code(s.confirm(&key("dead"))).0, 136);
    assert!(
        !s.list(None)
            .unwrap()
            .iter()
            .any(|(k, _, _)| k.container_id == "dead")
    );
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn etcd_down_is_code_11_for_add_and_50_for_status_and_writes_nothing() {
    let mut etcd = EtcdCluster::single();
    let mut o = opts(&etcd, "n");
    o.timeout = Duration::from_millis(1500);
    let s = EtcdStore::new(o.clone()).unwrap();
    s.reserve(&key("a"), "t", &[v4(&pods())]).unwrap();
    s.status().unwrap();
    let before = s.dump().unwrap();
    etcd.kill(0);
    let start = Instant::now();
    let e = s.reserve(&key("b"), "t", &[v4(&pods())]).unwrap_err();
    let waited = start.elapsed();
    assert_eq!(e.cni_code(), 11, "{e}");
    assert!(
        waited < o.timeout * 3,
        "ADD took {waited:?}, bound is {:?}",
        o.timeout
    );
    assert_eq!(code(s.confirm(&key("a"))).0, 11);
    assert_eq!(code(s.release(&key("a"))).0, 11);
    let st = s.status().unwrap_err();
    assert_eq!((st.cni_code(), st.status_code()), (11, 50), "{st}");
    etcd.restart(0);
    let s = EtcdStore::new(o).unwrap();
    assert_eq!(s.dump().unwrap(), before, "nothing was written half-way");
    s.status().unwrap();
}

/// `nodes` simulated nodes, each its own store, `per_node` concurrent
/// ADDs each (claims, as ADD makes them). No retry: every claim must
/// succeed the first time. Returns who got what, and when.
fn run_nodes(
    endpoints: &[String],
    nodes: usize,
    per_node: usize,
    pool: &PoolSpec,
    done: &Arc<AtomicUsize>,
) -> Vec<(AttachmentKey, IpAddr, Instant)> {
    // One hint file per node, shared by its concurrent ADDs (they race on
    // it as tenet processes of one node do).
    let hints = tempfile::tempdir().unwrap();
    let stores: Vec<Arc<EtcdStore>> = (0..nodes)
        .map(|n| {
            let mut o = EtcdOptions::new(endpoints.to_vec(), format!("node-{n}"));
            o.cooldown = Duration::ZERO;
            o.timeout = Duration::from_secs(10);
            o.hint_dir = Some(hints.path().join(format!("node-{n}")));
            Arc::new(EtcdStore::new(o).unwrap())
        })
        .collect();
    let mut threads = Vec::new();
    for (n, s) in stores.iter().enumerate() {
        for i in 0..per_node {
            let s = Arc::clone(s);
            let p = pool.clone();
            let done = Arc::clone(done);
            threads.push(std::thread::spawn(move || {
                let k = AttachmentKey::new(NET, format!("n{n}-c{i}"), "eth0");
                match s.claim(&k, "t", &[v4(&p)]) {
                    Ok(a) => {
                        done.fetch_add(1, Ordering::SeqCst);
                        (k, a[0].address.addr(), Instant::now())
                    }
                    Err(e) => panic!("{k}: {e} (code {})", e.cni_code()),
                }
            }));
        }
    }
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn release_all(endpoints: &[String], got: &[(AttachmentKey, IpAddr, Instant)]) {
    let mut o = EtcdOptions::new(endpoints.to_vec(), "cleaner");
    o.timeout = Duration::from_secs(10);
    let s = EtcdStore::new(o).unwrap();
    for (k, _, _) in got {
        s.release(k).unwrap();
    }
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn eight_nodes_times_fifty_concurrent_adds_get_distinct_addresses() {
    let etcd = EtcdCluster::single();
    let p = pool("p", "10.0.0.0/8", 20, &[]);
    let got = run_nodes(&etcd.endpoints(), 8, 50, &p, &Arc::default());
    let distinct: HashSet<IpAddr> = got.iter().map(|g| g.1).collect();
    assert_eq!(distinct.len(), 400, "an address was handed out twice");
    let s = store(&etcd, "node-0");
    let rows = s.list(Some(NET)).unwrap();
    assert_eq!(rows.len(), 400);
    assert!(rows.iter().all(|r| r.2 == ClaimState::Confirmed));
    // Each node allocated from its own blocks.
    let blocks = s.blocks(Some(NET)).unwrap();
    let nodes: HashSet<&str> = blocks.iter().map(|b| b.node.as_str()).collect();
    assert_eq!(nodes.len(), 8, "{blocks:?}");
    release_all(&etcd.endpoints(), &got);
    assert_nothing_allocated(&etcd.endpoints());
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn a_leader_killed_mid_run_loses_no_address_and_gives_none_twice() {
    let mut etcd = EtcdCluster::three();
    let endpoints = etcd.endpoints();
    let p = pool("p", "10.0.0.0/8", 20, &[]);
    let before = etcd.leader();
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let runner = {
        let endpoints = endpoints.clone();
        let p = p.clone();
        let done = Arc::clone(&done);
        std::thread::spawn(move || run_nodes(&endpoints, 8, 50, &p, &done))
    };
    // The kill goes in as soon as the first claims are through, however
    // slowly the 400 threads start on a loaded machine (a fixed sleep
    // once landed before any claim had finished); it synchronises the
    // fault with the run, it retries nothing.
    while done.load(Ordering::SeqCst) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no claim finished in 60 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed_at = Instant::now();
    etcd.kill(before);
    let killed = before;
    // No retry anywhere: every one of the 400 claims succeeded the first
    // time (`run_nodes` panics otherwise), through the election.
    let got = runner.join().unwrap();
    let after = etcd.leader();
    assert_ne!(after, killed, "a new leader was elected");
    // The kill happened mid-run: claims finished before it and after it.
    let done_before = got.iter().filter(|g| g.2 < killed_at).count();
    let done_after = got.len() - done_before;
    eprintln!(
        "leader m{killed} killed {:?} into the run: {done_before} claims before, {done_after} \
         after (new leader m{after})",
        killed_at - start
    );
    assert!(
        done_before > 0 && done_after > 0,
        "{done_before} {done_after}"
    );
    let distinct: HashSet<IpAddr> = got.iter().map(|g| g.1).collect();
    assert_eq!(distinct.len(), 400, "an address was handed out twice");
    let live: Vec<String> = (0..3)
        .filter(|i| *i != killed)
        .map(|i| etcd.endpoint(i))
        .collect();
    let mut o = EtcdOptions::new(live.clone(), "check");
    o.timeout = Duration::from_secs(10);
    let s = EtcdStore::new(o).unwrap();
    let rows = s.list(Some(NET)).unwrap();
    assert_eq!(rows.len(), 400);
    let in_store: HashSet<IpAddr> = rows.iter().map(|r| r.1.address.addr()).collect();
    assert_eq!(in_store, distinct);
    release_all(&live, &got);
    assert_nothing_allocated(&live);
    etcd.restart(killed);
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn a_new_tenants_concurrent_first_adds_never_see_its_own_carve_as_taken() {
    // Issue 13, item 2: the first ADDs of a new tenant run concurrently and
    // the pool has no other free subnet. One of them carves the subnet; the
    // others, whose read showed no subnet for the tenant, find its carve
    // and must read again (not answer 131, "no free subnet left").
    let etcd = EtcdCluster::single();
    const ADDS: usize = 8;
    for round in 0..4 {
        // Two /24s; another tenant holds the first.
        let p = pool(&format!("p{round}"), &format!("10.{round}.0.0/23"), 24, &[]);
        store(&etcd, "filler")
            .claim(&key(&format!("f{round}")), "other", &[v4(&p)])
            .unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(ADDS));
        let threads: Vec<_> = (0..ADDS)
            .map(|i| {
                let (endpoints, p, b) = (etcd.endpoints(), p.clone(), barrier.clone());
                let hints = hint_dir(&etcd, &format!("n{i}"));
                std::thread::spawn(move || {
                    // Each its own node (and process): no hints, a full read.
                    let mut o = EtcdOptions::new(endpoints, format!("n{i}"));
                    o.hint_dir = Some(hints);
                    let s = EtcdStore::new(o).unwrap();
                    b.wait();
                    s.claim(
                        &key(&format!("c{round}-{i}")),
                        &format!("new{round}"),
                        &[v4(&p)],
                    )
                })
            })
            .collect();
        let got: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let mut addrs = HashSet::new();
        for r in got {
            let a = r.unwrap_or_else(|e| panic!("round {round}: {e} (code {})", e.cni_code()));
            assert_eq!(a[0].subnet.to_string(), format!("10.{round}.1.0/24"));
            assert!(addrs.insert(a[0].address), "{} twice", a[0].address);
        }
    }
}

const CHILD_ENDPOINTS: &str = "TENET_ETCD_TEST_ENDPOINTS";

/// Entry point of the child process of `a_crashed_add_leaks_nothing`: it
/// reserves, says so, and waits to be killed. A no-op otherwise. Ignored, so
/// that it never counts as a test; the parent runs it with `--ignored`.
#[test]
#[ignore = "child-process entry point, run by a_crashed_add_leaks_nothing"]
fn child_entry_crash_reserve() {
    let Ok(endpoints) = std::env::var(CHILD_ENDPOINTS) else {
        return;
    };
    let mut o = EtcdOptions::new(endpoints.split(',').map(str::to_owned).collect(), "n");
    o.claim_ttl = Duration::from_secs(2);
    let s = EtcdStore::new(o).unwrap();
    let a = s
        .reserve(
            &key("crashed"),
            "t",
            &[v4(&pool("p", "10.0.0.0/30", 30, &[]))],
        )
        .unwrap();
    println!("reserved {}", a[0].address);
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn a_crashed_add_leaks_nothing() {
    let etcd = EtcdCluster::single();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_entry_crash_reserve",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENDPOINTS, etcd.endpoints().join(","))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // libtest prints "test child_entry_crash_reserve ... " before the test's own
    // output, on the same line.
    while !line.contains("reserved ") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child died early");
    }
    assert!(line.trim_end().ends_with("reserved 10.0.0.2/30"), "{line}");
    child.kill().unwrap(); // SIGKILL before confirm
    child.wait().unwrap();

    let s = store(&etcd, "n");
    let p = pool("p", "10.0.0.0/30", 30, &[]);
    assert_eq!(code(s.reserve(&key("next"), "t", &[v4(&p)])).0, 130);
    let start = Instant::now();
    while !s.list(None).unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "claim leaked");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_nothing_allocated(&etcd.endpoints());
    assert_eq!(addr(&s, "next", "t", &[v4(&p)]), "10.0.0.2/30");
}

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("openssl CLI (Debian openssl package)");
    assert!(st.success(), "openssl {args:?}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=tenet-test-ca"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let mut req = vec!["req", "-subj"];
        let subj = format!("/CN=tenet-{name}");
        req.push(&subj);
        req.extend(ec);
        let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(dir, &req);
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (crt, extf) = (format!("{name}.crt"), format!("{name}.ext"));
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &extf,
            ],
        );
    }
}

#[test]
#[ignore = "needs etcd and openssl: make test runs it"]
fn mutual_tls_from_the_config_files() {
    common::etcd::require_etcd();
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let d = certs.path();
    let etcd = EtcdCluster::single_tls(TlsFiles {
        cert: d.join("server.crt"),
        key: d.join("server.key"),
        client_ca: Some(d.join("ca.crt")),
    });
    assert!(etcd.endpoint(0).starts_with("https://"));
    let mut cfg = Config {
        store: StoreKind::Etcd,
        node_name: Some("tls-node".into()),
        ..Config::default()
    };
    cfg.etcd.endpoints = etcd.endpoints();
    cfg.etcd.timeout_ms = 3000;
    cfg.etcd.ca_file = Some(d.join("ca.crt"));
    cfg.etcd.cert_file = Some(d.join("client.crt"));
    cfg.etcd.key_file = Some(d.join("client.key"));
    let s = EtcdStore::connect(&cfg).unwrap();
    s.status().unwrap();
    assert_eq!(addr(&s, "a", "t", &[v4(&pods())]), "10.0.0.2/24");
    s.confirm(&key("a")).unwrap();
    // The MidoNet records on the same connection, over the same TLS.
    let records = EtcdRecords::new(Arc::clone(s.conn()), &cfg.etcd.prefix);
    records_round_trip(&records);

    // Without a client certificate the server refuses the connection.
    let mut no_cert = cfg.clone();
    no_cert.etcd.cert_file = None;
    no_cert.etcd.key_file = None;
    let refused = EtcdStore::connect(&no_cert).and_then(|s| s.status());
    assert!(refused.is_err(), "connected without a client certificate");
    // A CA that did not sign the server's certificate: refused as well.
    let other = tempfile::tempdir().unwrap();
    make_certs(other.path());
    let mut wrong_ca = cfg.clone();
    wrong_ca.etcd.ca_file = Some(other.path().join("ca.crt"));
    assert!(
        EtcdStore::connect(&wrong_ca)
            .and_then(|s| s.status())
            .is_err()
    );
    // Half a client identity is a configuration error naming the keys.
    let mut half = cfg.clone();
    half.etcd.key_file = None;
    let e = EtcdStore::connect(&half).unwrap_err().to_string();
    assert!(
        e.contains("etcd.cert_file") && e.contains("etcd.key_file"),
        "{e}"
    );
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn authentication_with_a_user_and_password_file() {
    let etcd = EtcdCluster::single();
    // Set up users and roles as an operator would with etcdctl
    // (user add, role add, grant, auth enable), through the client API.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect(etcd.endpoints(), None)
            .await
            .unwrap();
        c.user_add("root", "root-pw", None).await.unwrap();
        let _ = c.role_add("root").await;
        c.user_grant_role("root", "root").await.unwrap();
        c.role_add("tenet").await.unwrap();
        c.role_grant_permission(
            "tenet",
            etcd_client::Permission::read_write("/tenet/").with_prefix(),
        )
        .await
        .unwrap();
        c.user_add("tenet", "s3cret", None).await.unwrap();
        c.user_grant_role("tenet", "tenet").await.unwrap();
        c.auth_enable().await.unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let mut cfg = Config {
        store: StoreKind::Etcd,
        node_name: Some("auth-node".into()),
        ..Config::default()
    };
    cfg.etcd.endpoints = etcd.endpoints();
    cfg.etcd.timeout_ms = 3000;
    cfg.etcd.username = Some("tenet".into());
    cfg.etcd.password_file = Some(pw.clone());
    // One exec's connection, as `Backends::open` makes it: the address
    // store and the MidoNet records share it, and it authenticates once.
    let auths = etcd.grpc_calls(0, "Authenticate");
    let conn = Arc::new(EtcdConn::open(&EtcdSettings::from_config(&cfg).unwrap()).unwrap());
    let s = EtcdStore::connect_shared(&cfg, Arc::clone(&conn)).unwrap();
    let records = EtcdRecords::new(Arc::clone(&conn), "/tenet");
    s.status().unwrap();
    assert_eq!(addr(&s, "a", "t", &[v4(&pods())]), "10.0.0.2/24");
    records_round_trip(&records);
    s.confirm(&key("a")).unwrap();
    assert_eq!(s.release(&key("a")).unwrap().len(), 1);
    assert_eq!(
        etcd.grpc_calls(0, "Authenticate") - auths,
        1,
        "one client, authenticated once, for both"
    );

    // A wrong password is refused on first use (connecting contacts
    // nothing), at once: no other member would accept it either.
    std::fs::write(&pw, "wrong").unwrap();
    let t0 = Instant::now();
    let e = EtcdStore::connect(&cfg)
        .unwrap()
        .reserve(&key("w"), "t", &[v4(&pods())])
        .unwrap_err();
    assert_eq!(e.cni_code(), 138, "{e}");
    assert!(e.to_string().contains("authentication failed"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(EtcdStore::connect(&cfg).unwrap().status().is_err());
    let mut anon = cfg.clone();
    anon.etcd.username = None;
    anon.etcd.password_file = None;
    let e = EtcdStore::connect(&anon)
        .and_then(|s| s.reserve(&key("b"), "t", &[v4(&pods())]))
        .unwrap_err();
    assert_ne!(e.cni_code(), 0, "{e}");
    // The tenet user cannot write outside its prefix.
    std::fs::write(&pw, "s3cret").unwrap();
    let mut outside = cfg.clone();
    outside.etcd.prefix = "/elsewhere".into();
    assert!(
        EtcdStore::connect(&outside)
            .and_then(|s| s.reserve(&key("c"), "t", &[v4(&pods())]))
            .is_err()
    );
    // A username without a password file names both keys.
    let mut half = cfg.clone();
    half.etcd.password_file = None;
    let e = EtcdStore::connect(&half).unwrap_err().to_string();
    assert!(e.contains("etcd.password_file"), "{e}");
}

/// Every operation of the MidoNet records store, once.
fn records_round_trip(r: &EtcdRecords) {
    let lease = r.grant(Duration::from_secs(10)).unwrap();
    let put = |k: &str, v: &str, lease: Option<i64>| Op::Put {
        key: k.into(),
        value: v.as_bytes().to_vec(),
        lease,
    };
    assert!(
        r.txn(
            &[Cmp::Absent("claims/x".into())],
            &[put("claims/x", "me", Some(lease))]
        )
        .unwrap()
    );
    assert!(
        !r.txn(
            &[Cmp::Absent("claims/x".into())],
            &[put("claims/x", "you", None)]
        )
        .unwrap()
    );
    assert_eq!(r.get("claims/x").unwrap().unwrap().value, b"me");
    assert_eq!(r.list("claims/").unwrap().len(), 1);
    r.keep_alive(lease).unwrap();
    r.revoke(lease).unwrap();
    assert!(
        r.get("claims/x").unwrap().is_none(),
        "the key went with its lease"
    );
    r.revoke(lease).unwrap();
}

// Hints: the node-local file that lets a reserve skip its read.

/// Txn calls (reads are transactions too) that member 0 has answered.
fn txns(etcd: &EtcdCluster) -> u64 {
    etcd.grpc_calls(0, "Txn") + etcd.grpc_calls(0, "Range")
}

fn hint_file(etcd: &EtcdCluster, node: &str) -> std::path::PathBuf {
    hint_dir(etcd, node).join(format!("%2Ftenet@{NET}.json"))
}

/// The JSON of a hint file (after its `tenet-hints <len> <fnv1a64>` line).
fn read_hints(f: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(f).unwrap();
    let (head, rest) = text.split_once('\n').unwrap();
    let len: usize = head.split(' ').nth(1).unwrap().parse().unwrap();
    serde_json::from_str(&rest[..len]).unwrap()
}

/// Writes `v` as a well-formed hint file (valid header and checksum), as
/// tenet would have.
fn write_hints(f: &Path, v: &serde_json::Value) {
    let json = v.to_string();
    let sum = json.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    std::fs::write(f, format!("tenet-hints {} {sum:016x}\n{json}", json.len())).unwrap();
}

/// Rewrites the etcd record hinted at JSON `pointer` in hint file `f` (its
/// `value` is the record's JSON, byte for byte) with `edit`.
fn edit_hinted_record(f: &Path, pointer: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut h = read_hints(f);
    let v = h.pointer_mut(pointer).expect("hinted record");
    let mut rec: serde_json::Value = serde_json::from_str(v["value"].as_str().unwrap()).unwrap();
    edit(&mut rec);
    v["value"] = rec.to_string().into();
    write_hints(f, &h);
}

/// One ADD's IPAM work as a new `tenet` process does it (a new store: only
/// the hint file carries over): a claim, with the round trips it took.
fn add_in_new_process(etcd: &EtcdCluster, node: &str, c: &str, t: &str) -> (String, u64) {
    let s = store(etcd, node);
    let t0 = txns(etcd);
    let got = s.claim(&key(c), t, &[v4(&pods())]).unwrap();
    (got[0].address.to_string(), txns(etcd) - t0)
}

/// The two-phase path in a new process: reserve, then confirm, with the
/// round trips each took.
fn reserve_in_new_process(etcd: &EtcdCluster, node: &str, c: &str, t: &str) -> (String, u64, u64) {
    let s = store(etcd, node);
    let t0 = txns(etcd);
    let got = addr(&s, c, t, &[v4(&pods())]);
    let t1 = txns(etcd);
    s.confirm(&key(c)).unwrap();
    (got, t1 - t0, txns(etcd) - t1)
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn with_hints_a_whole_claim_is_one_transaction_in_a_new_process() {
    let etcd = EtcdCluster::single();
    // The node's first ADD has no hints: read + write.
    let (a, r) = add_in_new_process(&etcd, "n", "a", "t");
    // (read, scan of the carved subnets, read of the tenant's blocks and
    // claims to claim one, write)
    assert_eq!((a.as_str(), r), ("10.0.0.2/24", 4));
    assert!(hint_file(&etcd, "n").is_file());
    for (i, id) in ["b", "c", "d"].iter().enumerate() {
        let (got, r) = add_in_new_process(&etcd, "n", id, "t");
        assert_eq!(got, format!("10.0.0.{}/24", i + 3));
        assert_eq!(r, 1, "{id}: the whole claim, one transaction");
    }
    // Confirmed at once: no pending key, no lease on the handle, the bit
    // set in the block; no node lease was even granted.
    let kvs = scan(&etcd.endpoints(), "/tenet/");
    assert!(!kvs.iter().any(|(k, _)| is_pend_key(k)), "{kvs:?}");
    assert!(
        !kvs.iter().any(|(k, _)| k.starts_with("/tenet/leases/")),
        "{kvs:?}"
    );
    let rows = store(&etcd, "n").list(Some(NET)).unwrap();
    assert!(
        rows.iter().all(|r| r.2 == ClaimState::Confirmed),
        "{rows:?}"
    );
    let block = kvs
        .iter()
        .find(|(k, _)| k.ends_with("/block/pods/t/n/10.0.0.0%2F26"))
        .unwrap();
    assert!(
        block.1.contains("\"used\":\"000000000000003c\""),
        "{block:?}"
    );
    // DEL in another process keeps the hint fresh: still one transaction.
    store(&etcd, "n").release(&key("c")).unwrap();
    let (got, r) = add_in_new_process(&etcd, "n", "e", "t");
    assert_eq!((got.as_str(), r), ("10.0.0.6/24", 1));
    // Another tenant on the same node: its first reserve reads, then hints.
    let (u1, r1) = add_in_new_process(&etcd, "n", "u1", "u");
    let (u2, r2) = add_in_new_process(&etcd, "n", "u2", "u");
    assert_eq!((u1.as_str(), u2.as_str()), ("10.0.1.2/24", "10.0.1.3/24"));
    assert!(r1 >= 2 && r2 == 1, "{r1} {r2}");
    // Another node has its own file.
    let (x, r) = add_in_new_process(&etcd, "m", "x", "t");
    assert_eq!((x.as_str(), r), ("10.0.0.64/24", 3));
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn with_hints_the_two_phase_reserve_and_confirm_are_one_transaction_each() {
    let etcd = EtcdCluster::single();
    let (a, r, c) = reserve_in_new_process(&etcd, "n", "a", "t");
    // (read, carves, claims, lease grant, write; confirm one write)
    assert_eq!((a.as_str(), r, c), ("10.0.0.2/24", 4, 1));
    for (i, id) in ["b", "c"].iter().enumerate() {
        let (got, r, c) = reserve_in_new_process(&etcd, "n", id, "t");
        assert_eq!(got, format!("10.0.0.{}/24", i + 3));
        assert_eq!((r, c), (1, 1), "{id}");
    }
    // Claims and two-phase reserves share the hints and the blocks.
    let (d, r) = add_in_new_process(&etcd, "n", "d", "t");
    assert_eq!((d.as_str(), r), ("10.0.0.5/24", 1));
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn a_stale_hint_is_replanned_from_the_returned_reads_and_never_duplicates() {
    let etcd = EtcdCluster::single();
    let (a, ..) = add_in_new_process(&etcd, "n", "a", "t");
    // A process of the same node that keeps no hints (or whose update of
    // the file was lost) confirms an address: the hinted block moved on.
    let mut o = opts(&etcd, "n");
    o.hint_dir = None;
    let blind = EtcdStore::new(o).unwrap();
    let x = addr(&blind, "x", "t", &[v4(&pods())]);
    blind.confirm(&key("x")).unwrap();
    // ... and reserves another one, left pending.
    let y = addr(&blind, "y", "t", &[v4(&pods())]);
    let mut seen: HashSet<String> = [a, x, y].into_iter().collect();
    assert_eq!(seen.len(), 3);
    let (b, r) = add_in_new_process(&etcd, "n", "b", "t");
    assert!(seen.insert(b.clone()), "{b} handed out twice");
    // The lost write brought the fresh block back: no separate read.
    assert_eq!(r, 2, "stale hint: one lost write, one that commits");
    // The pending ordinal the hint did not know is skipped too.
    let (c, ..) = add_in_new_process(&etcd, "n", "c", "t");
    assert!(seen.insert(c.clone()), "{c} handed out twice");
    // The file is fresh again.
    let (d, r) = add_in_new_process(&etcd, "n", "d", "t");
    assert!(seen.insert(d.clone()), "{d} handed out twice");
    assert_eq!(r, 1);
    let held: HashSet<String> = store(&etcd, "n")
        .list(Some(NET))
        .unwrap()
        .into_iter()
        .map(|(_, a, _)| a.address.to_string())
        .collect();
    assert_eq!(held, seen);
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn a_hint_whose_revision_matches_but_value_does_not_is_refused() {
    let etcd = EtcdCluster::single();
    let (a, ..) = add_in_new_process(&etcd, "n", "a", "t");
    // What a hint from before an etcd restore could look like: the block's
    // revision number is current, its content is not (all free again).
    edit_hinted_record(&hint_file(&etcd, "n"), "/tenants/0/blocks/0", |rec| {
        rec["used"] = "0000000000000000".into();
        rec["cursor"] = 0.into();
    });
    let (b, r) = add_in_new_process(&etcd, "n", "b", "t");
    assert_ne!(a, b, "the forged hint handed out {a} twice");
    assert_eq!(r, 2);
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn a_hint_whose_subnet_does_not_hold_its_blocks_is_ignored() {
    let etcd = EtcdCluster::single();
    let (a, ..) = add_in_new_process(&etcd, "n", "a", "t");
    assert_eq!(a, "10.0.0.2/24");
    // A hinted reserve compares only the block it takes an address in and
    // trusts the subnet record that block implies; a hint whose subnet
    // cannot hold its block (here: another /24 of the pool) is not used.
    let f = hint_file(&etcd, "n");
    edit_hinted_record(&f, "/tenants/0/subnet", |rec| {
        rec["subnet"] = "10.0.9.0/24".into();
    });
    let t0 = txns(&etcd);
    let (b, ..) = add_in_new_process(&etcd, "n", "b", "t");
    assert_eq!(b, "10.0.0.3/24", "the answer comes from etcd, not the hint");
    assert!(txns(&etcd) - t0 >= 2, "the claim read before writing");
    // Nor one whose subnet holds the block but is not of the pool's subnet
    // length (only the consistency check of the hints catches this one: the
    // block's compare passes).
    edit_hinted_record(&f, "/tenants/0/subnet", |rec| {
        rec["subnet"] = "10.0.0.0/16".into();
    });
    let (c, ..) = add_in_new_process(&etcd, "n", "c", "t");
    assert_eq!(c, "10.0.0.4/24");
    // The file was rewritten from etcd: hinted again, one transaction.
    let (d, r) = add_in_new_process(&etcd, "n", "d", "t");
    assert_eq!((d.as_str(), r), ("10.0.0.5/24", 1));
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn a_corrupt_torn_or_foreign_hint_file_is_ignored() {
    let etcd = EtcdCluster::single();
    let (a, ..) = add_in_new_process(&etcd, "n", "a", "t");
    let f = hint_file(&etcd, "n");
    let good = std::fs::read_to_string(&f).unwrap();
    let json = read_hints(&f);
    let mut seen: HashSet<String> = [a].into_iter().collect();
    let mut other_node = json.clone();
    other_node["node"] = "m".into();
    let mut other_version = json.clone();
    other_version["version"] = 99.into();
    let well_formed = |v: &serde_json::Value| {
        write_hints(&f, v);
        std::fs::read_to_string(&f).unwrap()
    };
    let bad_sum = good.replacen(' ', " 1", 1);
    for (i, junk) in [
        "garbage".to_owned(),
        good[..good.len() / 2].to_owned(),
        bad_sum,
        json.to_string(),
        well_formed(&other_node),
        well_formed(&other_version),
        well_formed(&serde_json::json!({"version": 1})),
        String::new(),
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(&f, junk).unwrap();
        let (got, r) = add_in_new_process(&etcd, "n", &format!("c{i}"), "t");
        assert!(seen.insert(got.clone()), "{got} handed out twice");
        assert_eq!(r, 2, "case {i}: read, then write");
        // Rewritten whole: the next reserve uses it.
        let (got, r) = add_in_new_process(&etcd, "n", &format!("d{i}"), "t");
        assert!(seen.insert(got.clone()), "{got} handed out twice");
        assert_eq!(r, 1, "case {i}");
    }
    // A hint directory that cannot be written costs nothing but the hint.
    let mut o = opts(&etcd, "n");
    o.hint_dir = Some("/proc/no-such-dir".into());
    let s = EtcdStore::new(o).unwrap();
    let got = addr(&s, "z", "t", &[v4(&pods())]);
    s.confirm(&key("z")).unwrap();
    assert!(seen.insert(got));
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn a_hint_of_a_reclaimed_block_and_subnet_does_no_harm() {
    let etcd = EtcdCluster::single();
    let (a, ..) = add_in_new_process(&etcd, "n", "a", "t");
    assert_eq!(a, "10.0.0.2/24");
    store(&etcd, "n").release(&key("a")).unwrap();
    // The operator reclaims the empty block and subnet; tenant u carves the
    // freed subnet and allocates in it from the same node. The file still
    // holds t's entry, pointing at records that are gone.
    assert_eq!(store(&etcd, "admin").reclaim_empty(NET).unwrap(), (1, 1));
    let (u, ..) = add_in_new_process(&etcd, "n", "u1", "u");
    assert_eq!(u, "10.0.0.2/24");
    let f = std::fs::read_to_string(hint_file(&etcd, "n")).unwrap();
    assert!(f.contains("\"tenant\":\"t\""), "{f}");
    let (t, r) = add_in_new_process(&etcd, "n", "t1", "t");
    // (after a lost race the next plan skips a few free addresses at
    // random, so no exact address here)
    assert!(
        t.starts_with("10.0.1."),
        "t gets a subnet of its own again: {t}"
    );
    assert!(r >= 3, "lost write, full read, write: {r}");
    let subnets: Vec<String> = store(&etcd, "n")
        .tenant_subnets(Some(NET))
        .unwrap()
        .iter()
        .map(|s| format!("{} {}", s.tenant, s.subnet))
        .collect();
    assert_eq!(subnets, ["t 10.0.1.0/24", "u 10.0.0.0/24"]);
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn a_hinted_lease_that_was_revoked_is_replaced() {
    let etcd = EtcdCluster::single();
    let (a, ..) = reserve_in_new_process(&etcd, "n", "a", "t");
    let lease: serde_json::Value = serde_json::from_str(
        &scan(&etcd.endpoints(), "/tenet/leases/n")
            .first()
            .expect("the node's lease record")
            .1,
    )
    .unwrap();
    let id = lease["id"].as_i64().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect(etcd.endpoints(), None)
            .await
            .unwrap();
        c.lease_revoke(id).await.unwrap();
    });
    // Revoking deleted a's handle? No: a is confirmed, it has no lease.
    assert_eq!(store(&etcd, "n").list(Some(NET)).unwrap().len(), 1);
    let (b, ..) = reserve_in_new_process(&etcd, "n", "b", "t");
    assert_ne!(a, b);
    let lease: serde_json::Value = serde_json::from_str(
        &scan(&etcd.endpoints(), "/tenet/leases/n")
            .first()
            .unwrap()
            .1,
    )
    .unwrap();
    assert_ne!(
        lease["id"].as_i64().unwrap(),
        id,
        "a new lease was published"
    );
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn store_records_match_between_instances() {
    // Two store instances (two processes' worth) see one state: what one
    // reserved the other lists, confirms and releases.
    let etcd = EtcdCluster::single();
    let a = store(&etcd, "n");
    let b = store(&etcd, "n");
    let got = a.reserve(&key("x"), "t", &[v4(&pods())]).unwrap();
    let listed: HashMap<String, String> = b
        .list(Some(NET))
        .unwrap()
        .into_iter()
        .map(|(k, a, _)| (k.container_id, a.address.to_string()))
        .collect();
    assert_eq!(listed["x"], got[0].address.to_string());
    b.confirm(&key("x")).unwrap();
    assert_eq!(b.release(&key("x")).unwrap(), got);
    assert!(a.list(None).unwrap().is_empty());
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn cni_status_reports_an_unreachable_etcd_as_code_50() {
    let mut etcd = EtcdCluster::single();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("empty.toml");
    std::fs::write(&manifest, "description = \"no stages\"\n").unwrap();
    let env = |endpoint: &str| -> Vec<(String, String)> {
        let cfg = dir.path().join("tenet.toml");
        std::fs::write(
            &cfg,
            format!(
                "store = \"etcd\"\nnode_name = \"st\"\npipeline = \"{}\"\ncache_dir = \"{}\"\n\
                 [etcd]\nendpoints = [\"{endpoint}\"]\ntimeout_ms = 1000\n",
                manifest.display(),
                dir.path().join("cache").display()
            ),
        )
        .unwrap();
        [
            ("CNI_COMMAND", "STATUS"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("TENET_CONFIG", cfg.to_str().unwrap()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    let conf = br#"{"cniVersion":"1.1.0","name":"net1","type":"tenet"}"#;
    let up = tenet::commands::run(&env(&etcd.endpoint(0)), conf);
    assert_eq!(up.exit_code, 0, "{}", up.stdout);
    etcd.kill(0);
    let down = tenet::commands::run(&env(&etcd.endpoint(0)), conf);
    assert_eq!(down.exit_code, 1);
    let v: serde_json::Value = serde_json::from_str(&down.stdout).unwrap();
    assert_eq!(v["code"], 50, "{}", down.stdout);
}

/// `tenetctl ipam ls|show|gc` against etcd, in process (the same code the
/// binary runs).
fn ctl(args: &[&str]) -> Result<String, String> {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: tenet::ctl::ipam::IpamCmd,
    }
    let cli = Cli::try_parse_from(std::iter::once("ipam").chain(args.iter().copied()))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tenet::ctl::ipam::run(&cli.cmd, &mut out).map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
#[ignore = "needs etcd: make test runs it"]
fn tenetctl_ipam_lists_shows_and_reconciles() {
    let etcd = EtcdCluster::single();
    let eps = etcd.endpoints().join(",");
    let s = store(&etcd, "ctl-node");
    for c in ["keep", "gone"] {
        s.reserve(&key(c), "red", &[v4(&pods())]).unwrap();
        s.confirm(&key(c)).unwrap();
    }
    s.reserve(&key("inflight"), "red", &[v4(&pods())]).unwrap();
    let st = ["--store", "etcd", "--endpoints", eps.as_str()];
    let ls = ctl(&[&["ls"][..], &st].concat()).unwrap();
    assert!(
        ls.contains("keep") && ls.contains("10.0.0.2/24") && ls.contains("pending"),
        "{ls}"
    );
    let show = ctl(&[&["show"][..], &st].concat()).unwrap();
    assert!(
        show.contains("10.0.0.0/24") && show.contains("ctl-node") && show.contains("10.0.0.0/26"),
        "{show}"
    );
    assert!(show.contains("3 attachments (1 pending)"), "{show}");
    let json = ctl(&[&["show", "--json"][..], &st].concat()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["blocks"][0]["used"], 2);
    assert_eq!(v["blocks"][0]["pending"], 1);

    let dir = tempfile::tempdir().unwrap();
    let valid = dir.path().join("valid");
    std::fs::write(&valid, "# live pods\nkeep eth0\n").unwrap();
    let valid = valid.to_str().unwrap();
    let gc = |extra: &[&str]| {
        let mut a = vec![
            "gc",
            "--network",
            NET,
            "--valid",
            valid,
            "--node",
            "ctl-node",
        ];
        a.extend(extra);
        a.extend(st);
        ctl(&a)
    };
    let dry = gc(&["--dry-run"]).unwrap();
    assert!(dry.contains("would release net1/gone/eth0"), "{dry}");
    assert_eq!(s.list(None).unwrap().len(), 3);
    // Another node's reconciler does not touch these.
    let mut other = vec![
        "gc",
        "--network",
        NET,
        "--valid",
        valid,
        "--node",
        "elsewhere",
    ];
    other.extend(st);
    assert!(ctl(&other).unwrap().contains("0 released"));
    let out = gc(&["--grace", "1"]).unwrap();
    assert!(
        out.contains("released net1/gone/eth0") && out.contains("1 released, 1 pending kept"),
        "{out}"
    );
    let mut left: Vec<String> = s
        .list(None)
        .unwrap()
        .into_iter()
        .map(|r| r.0.container_id)
        .collect();
    left.sort();
    assert_eq!(left, ["inflight", "keep"]);

    // Errors name the flag at fault.
    let e = ctl(&["ls", "--store", "zookeeper"]).unwrap_err();
    assert!(e.contains("--store"), "{e}");
    let e = ctl(&[
        "gc",
        "--network",
        NET,
        "--valid",
        "/nonexistent/valid",
        "--store",
        "etcd",
        "--endpoints",
        eps.as_str(),
    ])
    .unwrap_err();
    assert!(e.contains("--valid"), "{e}");
    std::fs::write(dir.path().join("bad"), "one two three\n").unwrap();
    let bad = dir.path().join("bad");
    let e = ctl(&[
        "gc",
        "--network",
        NET,
        "--valid",
        bad.to_str().unwrap(),
        "--store",
        "etcd",
        "--endpoints",
        eps.as_str(),
    ])
    .unwrap_err();
    assert!(e.contains("--valid") && e.contains("line 1"), "{e}");
}

#[test]
fn tenetctl_ipam_works_on_the_local_store_too() {
    let dir = tempfile::tempdir().unwrap();
    let local =
        tenet::ipam::LocalStore::open(dir.path(), tenet::ipam::LocalOptions::default()).unwrap();
    local.reserve(&key("a"), "t", &[v4(&pods())]).unwrap();
    local.confirm(&key("a")).unwrap();
    let sd = dir.path().to_str().unwrap();
    let ls = ctl(&["ls", "--store", "local", "--state-dir", sd]).unwrap();
    assert!(
        ls.contains("10.0.0.2/24") && ls.contains("confirmed"),
        "{ls}"
    );
    let show = ctl(&["show", "--store", "local", "--state-dir", sd]).unwrap();
    assert!(show.contains("10.0.0.0/24"), "{show}");
    let out = ctl(&[
        "gc",
        "--network",
        NET,
        "--store",
        "local",
        "--state-dir",
        sd,
    ])
    .unwrap();
    assert!(out.contains("released net1/a/eth0"), "{out}");
    assert!(local.list(None).unwrap().is_empty());
    let e = ctl(&[
        "gc",
        "--network",
        NET,
        "--store",
        "local",
        "--state-dir",
        sd,
        "--node",
        "x",
    ])
    .unwrap_err();
    assert!(e.contains("--node"), "{e}");
}
