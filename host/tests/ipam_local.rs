//! Behaviour of the embedded-default address store (`LocalStore`) on real
//! files: allocation rules, two-phase claims, GC, cooldown, locking across
//! threads and processes, and crash safety.

mod common;

use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::ipam::{fixed, pods, pool, v4, v6};
use tenet::ipam::{
    AttachmentKey, ClaimState, IpStore, IpamError, LocalOptions, LocalStore, ManualClock,
    ProcessIdentity,
};
use tenet::plan::{AddressSpec, IpFamily};

const NET: &str = "net1";

fn key(c: &str) -> AttachmentKey {
    AttachmentKey::new(NET, c, "eth0")
}

fn opts() -> LocalOptions {
    LocalOptions {
        cooldown: Duration::ZERO,
        ..LocalOptions::default()
    }
}

fn store(dir: &Path, o: LocalOptions) -> LocalStore {
    LocalStore::open(dir, o).unwrap()
}

fn addr(s: &LocalStore, c: &str, t: &str, reqs: &[AddressSpec]) -> String {
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

fn dead_process() -> ProcessIdentity {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    ProcessIdentity { pid, start_time: 1 }
}

#[test]
fn ipv4_tenants_get_their_own_subnets_and_the_layout_is_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    let a = s.reserve(&key("a"), "red", &[v4(&pods())]).unwrap();
    assert_eq!(a[0].address.to_string(), "10.0.0.2/24");
    assert_eq!(a[0].gateway.to_string(), "10.0.0.1");
    assert_eq!(a[0].subnet.to_string(), "10.0.0.0/24");
    assert_eq!((a[0].pool.as_str(), a[0].tenant.as_str()), ("pods", "red"));
    assert_eq!(addr(&s, "b", "red", &[v4(&pods())]), "10.0.0.3/24");
    assert_eq!(addr(&s, "c", "blue", &[v4(&pods())]), "10.0.1.2/24");

    let net_dir = dir.path().join("ipam").join(NET);
    assert!(net_dir.join("lock").is_file());
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(net_dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["format"], 1);
    assert_eq!(state["attachments"].as_array().unwrap().len(), 3);

    let subnets = s.tenant_subnets(Some(NET)).unwrap();
    let got: Vec<_> = subnets
        .iter()
        .map(|t| (t.tenant.as_str(), t.subnet.to_string(), t.allocated))
        .collect();
    assert_eq!(
        got,
        vec![
            ("blue", "10.0.1.0/24".into(), 1),
            ("red", "10.0.0.0/24".into(), 2)
        ]
    );
}

#[test]
fn ipv6_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    let p = pool("v6", "fd00:10::/48", 64, &[]);
    let a = s.reserve(&key("a"), "red", &[v6(&p)]).unwrap();
    assert_eq!(a[0].address.to_string(), "fd00:10::2/64");
    assert_eq!(a[0].gateway.to_string(), "fd00:10::1");
    assert_eq!(addr(&s, "b", "blue", &[v6(&p)]), "fd00:10:0:1::2/64");
    // v6 has no broadcast: the last address of a /126 is usable.
    let tiny = pool("tiny", "fd00:20::/126", 126, &[]);
    assert_eq!(addr(&s, "c", "red", &[v6(&tiny)]), "fd00:20::2/126");
    assert_eq!(addr(&s, "d", "red", &[v6(&tiny)]), "fd00:20::3/126");
    assert_eq!(code(s.reserve(&key("e"), "red", &[v6(&tiny)])).0, 130);
}

#[test]
fn network_gateway_and_broadcast_are_never_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    // A /30 has exactly one assignable address.
    let p = pool("p", "10.9.0.0/30", 30, &[]);
    assert_eq!(addr(&s, "a", "t", &[v4(&p)]), "10.9.0.2/30");
    let (c, msg) = code(s.reserve(&key("b"), "t", &[v4(&p)]));
    assert_eq!(c, 130);
    assert!(
        msg.contains("pool p") && msg.contains("tenant t") && msg.contains("10.9.0.0/30"),
        "{msg}"
    );
    for bad in ["10.9.0.0", "10.9.0.1", "10.9.0.3"] {
        let (c, msg) = code(s.reserve(&key("c"), "t", &[fixed(v4(&p), bad)]));
        assert_eq!(c, 133, "{bad}: {msg}");
    }
    // /31 subnets cannot hold network + gateway + host.
    let p31 = pool("p31", "10.8.0.0/24", 31, &[]);
    assert_eq!(code(s.reserve(&key("d"), "t", &[v4(&p31)])).0, 134);
}

#[test]
fn excludes_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    let p = pool(
        "p",
        "10.1.0.0/16",
        24,
        &["10.1.0.2-10.1.0.5", "10.1.0.8/30", "10.1.0.13/32"],
    );
    let got: Vec<_> = (0..5)
        .map(|i| addr(&s, &format!("c{i}"), "t", &[v4(&p)]))
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
        code(s.reserve(&key("x"), "t", &[fixed(v4(&p), "10.1.0.9")])).0,
        133
    );
    // A subnet that is excluded whole is never carved.
    let q = pool("q", "10.2.0.0/23", 24, &["10.2.0.0/24"]);
    assert_eq!(addr(&s, "y", "t", &[v4(&q)]), "10.2.1.2/24");
    // An exclusion of the other family is refused (a reversed range or a
    // malformed one cannot be built: plan validation parses them).
    let bad = pool("r", "10.3.0.0/16", 24, &["fd00::/120"]);
    assert_eq!(code(s.reserve(&key("z"), "t", &[v4(&bad)])).0, 134);
}

#[test]
fn reserve_is_idempotent_and_two_phase() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    let reqs = [v4(&pods())];
    let first = s.reserve(&key("a"), "t", &reqs).unwrap();
    assert_eq!(s.reserve(&key("a"), "t", &reqs).unwrap(), first);
    let rows = s.list(Some(NET)).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].2, ClaimState::Pending);
    s.confirm(&key("a")).unwrap();
    s.confirm(&key("a")).unwrap();
    assert_eq!(s.list(None).unwrap()[0].2, ClaimState::Confirmed);
    // ADD retried after it succeeded: same answer.
    assert_eq!(s.reserve(&key("a"), "t", &reqs).unwrap(), first);
    // The same owner asking for something else is refused, not silently changed.
    assert_eq!(code(s.reserve(&key("a"), "other", &reqs)).0, 135);
    assert_eq!(
        code(s.reserve(&key("a"), "t", &[v4(&pods()), v4(&pods())])).0,
        135
    );
    // Nothing to confirm.
    assert_eq!(code(s.confirm(&key("nobody"))).0, 136);
}

#[test]
fn dual_stack_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    let p4 = pods();
    let p6 = pool("v6", "fd00::/126", 126, &[]);
    assert_eq!(addr(&s, "x", "t", &[v6(&p6)]), "fd00::2/126");
    assert_eq!(addr(&s, "y", "t", &[v6(&p6)]), "fd00::3/126");
    let before = s.list(None).unwrap();

    let (c, _) = code(s.reserve(&key("ds"), "t", &[v4(&p4), v6(&p6)]));
    assert_eq!(c, 130);
    assert_eq!(s.list(None).unwrap(), before, "the v4 address was not kept");
    assert!(
        s.tenant_subnets(Some(NET))
            .unwrap()
            .iter()
            .all(|t| t.pool != "pods")
    );
    // The v4 address the failed call would have taken is still first in line.
    assert_eq!(addr(&s, "v4only", "t", &[v4(&p4)]), "10.0.0.2/24");

    // And the happy path returns both, in request order.
    s.release(&key("y")).unwrap();
    assert_eq!(
        addr(&s, "ds", "t", &[v6(&p6), v4(&p4)]),
        "fd00::3/126,10.0.0.3/24"
    );
}

#[test]
fn static_addresses_are_honoured_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    let p = pods();
    // A new tenant's subnet is carved around its static address.
    assert_eq!(
        addr(&s, "a", "red", &[fixed(v4(&p), "10.0.5.20")]),
        "10.0.5.20/24"
    );
    assert_eq!(
        addr(&s, "b", "red", &[fixed(v4(&p), "10.0.5.21/24")]),
        "10.0.5.21/24"
    );
    // Dynamic allocation in that subnet avoids the static ones.
    assert_eq!(addr(&s, "c", "red", &[v4(&p)]), "10.0.5.2/24");

    let (c, msg) = code(s.reserve(&key("d"), "red", &[fixed(v4(&p), "10.0.5.20")]));
    assert_eq!(c, 132);
    assert!(
        msg.contains("10.0.5.20") && msg.contains("a/eth0") && msg.contains("pool pods"),
        "{msg}"
    );
    // Outside the tenant's subnet, inside another tenant's, outside the pool.
    assert_eq!(
        code(s.reserve(&key("d"), "red", &[fixed(v4(&p), "10.0.6.9")])).0,
        133
    );
    s.reserve(&key("e"), "blue", &[v4(&p)]).unwrap(); // blue gets 10.0.0.0/24
    assert_eq!(
        code(s.reserve(&key("f"), "green", &[fixed(v4(&p), "10.0.0.77")])).0,
        133
    );
    assert_eq!(
        code(s.reserve(&key("g"), "green", &[fixed(v4(&p), "192.168.0.7")])).0,
        133
    );
    // Wrong prefix or family, or twice in one request: malformed.
    assert_eq!(
        code(s.reserve(&key("h"), "red", &[fixed(v4(&p), "10.0.5.30/16")])).0,
        134
    );
    assert_eq!(
        code(s.reserve(&key("h"), "red", &[fixed(v4(&p), "fd00::5")])).0,
        134
    );
    let twice = [fixed(v4(&p), "10.0.5.30"), fixed(v4(&p), "10.0.5.30")];
    assert_eq!(code(s.reserve(&key("h"), "red", &twice)).0, 134);
    assert!(
        s.list(None)
            .unwrap()
            .iter()
            .all(|(k, _, _)| k.container_id != "h")
    );
}

#[test]
fn release_is_idempotent_and_tolerates_missing_state() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    let a = s.reserve(&key("a"), "t", &[v4(&pods())]).unwrap();
    assert_eq!(s.release(&key("a")).unwrap(), a);
    assert!(s.release(&key("a")).unwrap().is_empty());
    let other = AttachmentKey::new("never-seen", "c", "eth0");
    assert!(s.release(&other).unwrap().is_empty());
    assert!(!dir.path().join("ipam/never-seen").exists());
    assert!(s.gc("never-seen", &[]).unwrap().released.is_empty());
}

#[test]
fn bad_network_names_and_pools_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    for bad in ["../escape", "a/b", ".x", ""] {
        let k = AttachmentKey::new(bad, "c", "eth0");
        assert_eq!(code(s.reserve(&k, "t", &[v4(&pods())])).0, 134, "{bad:?}");
        assert_eq!(code(s.release(&k)).0, 134);
    }
    assert!(!dir.path().join("escape").exists());
    let no_pool = AddressSpec {
        family: IpFamily::Ipv4,
        pool: None,
        static_address: None,
    };
    assert_eq!(code(s.reserve(&key("a"), "t", &[no_pool])).0, 134);
    assert_eq!(code(s.reserve(&key("a"), "t", &[v6(&pods())])).0, 134);
    assert_eq!(code(s.reserve(&key("a"), "", &[v4(&pods())])).0, 134);
    // A pool cannot change shape while used, nor overlap another.
    s.reserve(&key("a"), "t", &[v4(&pods())]).unwrap();
    assert_eq!(
        code(s.reserve(&key("b"), "t", &[v4(&pool("pods", "10.0.0.0/16", 26, &[]))])).0,
        137
    );
    assert_eq!(
        code(s.reserve(
            &key("b"),
            "t",
            &[v4(&pool("other", "10.0.128.0/17", 24, &[]))]
        ))
        .0,
        137
    );
}

#[test]
fn subnets_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    let p = pool("p", "10.0.0.0/23", 24, &[]);
    s.reserve(&key("a"), "t1", &[v4(&p)]).unwrap();
    s.reserve(&key("b"), "t2", &[v4(&p)]).unwrap();
    let (c, msg) = code(s.reserve(&key("c"), "t3", &[v4(&p)]));
    assert_eq!(c, 131);
    assert!(msg.contains("t3") && msg.contains("10.0.0.0/23"), "{msg}");
}

#[test]
fn cooldown_holds_released_addresses_back() {
    let dir = tempfile::tempdir().unwrap();
    // The store's clock moves only when stepped: however long the fsynced
    // writes take, .2 is still cooling until the test says otherwise.
    let clock = ManualClock::new();
    let o = LocalOptions {
        cooldown: Duration::from_secs(30),
        clock: clock.shared(),
        ..LocalOptions::default()
    };
    let s = store(dir.path(), o);
    let p = pool("p", "10.0.0.0/16", 29, &[]); // hosts .2 – .6
    assert_eq!(addr(&s, "a", "t", &[v4(&p)]), "10.0.0.2/29");
    assert_eq!(addr(&s, "b", "t", &[v4(&p)]), "10.0.0.3/29");
    s.release(&key("a")).unwrap();
    // Next-fit moves on rather than reusing .2.
    assert_eq!(addr(&s, "c", "t", &[v4(&p)]), "10.0.0.4/29");
    assert_eq!(addr(&s, "d", "t", &[v4(&p)]), "10.0.0.5/29");
    assert_eq!(addr(&s, "e", "t", &[v4(&p)]), "10.0.0.6/29");
    // Only .2 is free and it is cooling down.
    assert_eq!(code(s.reserve(&key("f"), "t", &[v4(&p)])).0, 130);
    // A millisecond short of the cooldown: still held back.
    clock.advance(Duration::from_millis(29_999));
    assert_eq!(code(s.reserve(&key("f"), "t", &[v4(&p)])).0, 130);
    clock.advance(Duration::from_millis(1));
    assert_eq!(addr(&s, "f", "t", &[v4(&p)]), "10.0.0.2/29");
}

#[test]
fn a_tenant_keeps_its_subnet_through_the_cooldown() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let o = LocalOptions {
        cooldown: Duration::from_secs(30),
        clock: clock.shared(),
        ..LocalOptions::default()
    };
    let s = store(dir.path(), o);
    let p = pool("p", "10.0.0.0/16", 24, &[]);
    assert_eq!(addr(&s, "a", "red", &[v4(&p)]), "10.0.0.2/24");
    s.release(&key("a")).unwrap();
    let t = s.tenant_subnets(None).unwrap();
    assert_eq!((t.len(), t[0].allocated), (1, 0));
    assert!(t[0].empty_since_ms.is_some());
    // Another tenant cannot have it yet; the flapping owner gets it back.
    assert_eq!(addr(&s, "b", "blue", &[v4(&p)]), "10.0.1.2/24");
    assert_eq!(addr(&s, "c", "red", &[v4(&p)]), "10.0.0.3/24");
    s.release(&key("c")).unwrap();
    clock.advance(Duration::from_secs(30));
    // After the cooldown the subnet goes back to the pool, first free again.
    assert_eq!(addr(&s, "d", "green", &[v4(&p)]), "10.0.0.2/24");
    let tenants: Vec<_> = s
        .tenant_subnets(None)
        .unwrap()
        .into_iter()
        .map(|t| (t.tenant, t.subnet.to_string()))
        .collect();
    assert_eq!(
        tenants,
        [
            ("blue".into(), "10.0.1.0/24".into()),
            ("green".into(), "10.0.0.0/24".into())
        ]
    );
}

#[test]
fn stale_pending_claims_are_reclaimed_live_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let p = pods();
    let dead = store(
        dir.path(),
        LocalOptions {
            claimer: Some(dead_process()),
            ..opts()
        },
    );
    let recycled_pid = store(
        dir.path(),
        LocalOptions {
            claimer: Some(ProcessIdentity {
                start_time: ProcessIdentity::current().start_time + 1,
                ..ProcessIdentity::current()
            }),
            ..opts()
        },
    );
    let expired = store(
        dir.path(),
        LocalOptions {
            pending_timeout: Duration::ZERO,
            ..opts()
        },
    );
    let live = store(dir.path(), opts());
    dead.reserve(&key("dead"), "t", &[v4(&p)]).unwrap();
    recycled_pid
        .reserve(&key("recycled"), "t", &[v4(&p)])
        .unwrap();
    expired.reserve(&key("expired"), "t", &[v4(&p)]).unwrap();
    live.reserve(&key("live"), "t", &[v4(&p)]).unwrap();

    let report = live.gc(NET, &[]).unwrap();
    let mut released: Vec<_> = report
        .released
        .iter()
        .map(|k| k.container_id.as_str())
        .collect();
    released.sort();
    assert_eq!(released, ["dead", "expired", "recycled"]);
    assert_eq!(report.kept_in_flight, vec![key("live")]);
    let left: Vec<_> = live
        .list(None)
        .unwrap()
        .into_iter()
        .map(|r| r.0.container_id)
        .collect();
    assert_eq!(left, ["live"]);
}

#[test]
fn a_stale_claim_survives_for_its_retry_and_yields_to_need() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool("p", "10.0.0.0/30", 30, &[]); // a single address
    let crashed = store(
        dir.path(),
        LocalOptions {
            claimer: Some(dead_process()),
            ..opts()
        },
    );
    let s = store(dir.path(), opts());
    let a = crashed.reserve(&key("a"), "t", &[v4(&p)]).unwrap();
    // The retried ADD (a new process) gets the same claim back and owns it.
    assert_eq!(s.reserve(&key("a"), "t", &[v4(&p)]).unwrap(), a);
    assert_eq!(
        code(s.reserve(&key("b"), "t", &[v4(&p)])).0,
        130,
        "a live claim is not taken"
    );

    // Crash again; this time another ADD needs the space and takes it.
    s.release(&key("a")).unwrap();
    crashed.reserve(&key("a2"), "t", &[v4(&p)]).unwrap();
    assert_eq!(addr(&s, "b", "t", &[v4(&p)]), "10.0.0.2/30");
    let owners: Vec<_> = s
        .list(None)
        .unwrap()
        .into_iter()
        .map(|r| r.0.container_id)
        .collect();
    assert!(!owners.contains(&"a2".to_string()), "{owners:?}");
    // Confirming the reclaimed claim fails, so its ADD cannot use the address.
    assert_eq!(code(s.confirm(&key("a2"))).0, 136);
}

#[test]
fn gc_frees_exactly_the_attachments_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    for c in ["a", "b", "c", "d"] {
        s.reserve(&key(c), "t", &[v4(&pods())]).unwrap();
        s.confirm(&key(c)).unwrap();
    }
    let other = AttachmentKey::new("net2", "z", "eth0");
    s.reserve(&other, "t", &[v4(&pods())]).unwrap();
    s.confirm(&other).unwrap();
    // A second interface of a valid container is not valid by association.
    let a1 = AttachmentKey::new(NET, "a", "net1");
    s.reserve(&a1, "t", &[v4(&pods())]).unwrap();
    s.confirm(&a1).unwrap();

    let valid = vec![
        ("a".to_string(), "eth0".to_string()),
        ("c".into(), "eth0".into()),
    ];
    let report = s.gc(NET, &valid).unwrap();
    let mut freed: Vec<_> = report.released.iter().map(|k| k.to_string()).collect();
    freed.sort();
    assert_eq!(freed, ["net1/a/net1", "net1/b/eth0", "net1/d/eth0"]);
    assert!(report.errors.is_empty());
    let mut left: Vec<_> = s
        .list(None)
        .unwrap()
        .into_iter()
        .map(|r| r.0.to_string())
        .collect();
    left.sort();
    assert_eq!(left, ["net1/a/eth0", "net1/c/eth0", "net2/z/eth0"]);
    // Again: nothing more to do.
    assert!(s.gc(NET, &valid).unwrap().released.is_empty());
}

#[test]
fn a_held_lock_times_out_with_code_11() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(
        dir.path(),
        LocalOptions {
            lock_timeout: Duration::from_millis(200),
            ..opts()
        },
    );
    s.reserve(&key("a"), "t", &[v4(&pods())]).unwrap();
    let lock = fs::File::open(dir.path().join("ipam").join(NET).join("lock")).unwrap();
    lock.lock().unwrap();
    let (c, msg) = code(s.reserve(&key("b"), "t", &[v4(&pods())]));
    assert_eq!(c, 11, "{msg}");
    assert_eq!(code(s.release(&key("a"))).0, 11);
    // Reads do not need the lock.
    assert_eq!(s.list(None).unwrap().len(), 1);
    drop(lock);
    s.reserve(&key("b"), "t", &[v4(&pods())]).unwrap();
}

fn assert_distinct(s: &LocalStore, expect: usize) {
    let rows = s.list(Some(NET)).unwrap();
    assert_eq!(rows.len(), expect);
    let addrs: HashSet<IpAddr> = rows.iter().map(|r| r.1.address.addr()).collect();
    assert_eq!(addrs.len(), expect, "duplicate addresses handed out");
}

#[test]
fn fifty_threads_with_their_own_stores_get_distinct_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let path = Arc::new(dir.path().to_path_buf());
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let path = Arc::clone(&path);
            std::thread::spawn(move || {
                let s = store(&path, opts());
                s.reserve(&key(&format!("thread-{i}")), "t", &[v4(&pods())])
                    .unwrap()
            })
        })
        .collect();
    let got: HashSet<_> = threads
        .into_iter()
        .map(|t| t.join().unwrap()[0].address)
        .collect();
    assert_eq!(got.len(), 50);
    assert_distinct(&store(dir.path(), opts()), 50);
}

const CHILD_DIR: &str = "TENET_IPAM_TEST_CHILD_DIR";
const CHILD_ID: &str = "TENET_IPAM_TEST_CHILD_ID";

/// Entry point of the child processes spawned by
/// `separate_processes_get_distinct_addresses`; a no-op otherwise. Ignored,
/// so that it never counts as a test; the parent runs it with `--ignored`.
#[test]
#[ignore = "child-process entry point, run by separate_processes_get_distinct_addresses"]
fn child_entry_ipam_reserve() {
    let (Ok(dir), Ok(id)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_ID)) else {
        return;
    };
    let s = store(Path::new(&dir), opts());
    for j in 0..3 {
        s.reserve(&key(&format!("proc-{id}-{j}")), "t", &[v4(&pods())])
            .unwrap();
    }
}

#[test]
fn separate_processes_get_distinct_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..20)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "child_entry_ipam_reserve",
                    "--ignored",
                    "--test-threads=1",
                    "--quiet",
                ])
                .env(CHILD_DIR, dir.path())
                .env(CHILD_ID, i.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a child failed to reserve");
    }
    assert_distinct(&store(dir.path(), opts()), 60);
}

#[test]
fn stray_and_partial_temp_files_do_not_corrupt_state() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    let a = s.reserve(&key("a"), "t", &[v4(&pods())]).unwrap();
    let net_dir = dir.path().join("ipam").join(NET);
    // What a writer that crashed before its rename leaves: a half-written temp.
    let good = fs::read(net_dir.join("state.json")).unwrap();
    let stray = net_dir.join(".state.json.tmp-4242-17");
    fs::write(&stray, &good[..good.len() / 2]).unwrap();
    fs::write(net_dir.join(".state.json.tmp-4243-18"), b"").unwrap();

    // Readers ignore it.
    assert_eq!(s.list(None).unwrap().len(), 1);
    s.status().unwrap();
    // Writers carry on from the committed state and sweep the debris.
    assert_eq!(s.reserve(&key("a"), "t", &[v4(&pods())]).unwrap(), a);
    assert_eq!(addr(&s, "b", "t", &[v4(&pods())]), "10.0.0.3/24");
    let mut names: Vec<_> = fs::read_dir(&net_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["boot", "lock", "state.json"]);
}

#[test]
fn readers_never_see_a_half_written_state() {
    let dir = tempfile::tempdir().unwrap();
    let writer = store(dir.path(), opts());
    writer.reserve(&key("seed"), "t", &[v4(&pods())]).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let state_file = dir.path().join("ipam").join(NET).join("state.json");
    let reader = {
        let done = Arc::clone(&done);
        let dir = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let s = store(&dir, opts());
            let (mut reads, mut last_gen, mut last_len) = (0u64, 0u64, 0usize);
            while !done.load(Ordering::Relaxed) || reads < 50 {
                // Raw bytes: every version on disk is complete JSON...
                let v: serde_json::Value =
                    serde_json::from_slice(&fs::read(&state_file).unwrap()).unwrap();
                let generation = v["generation"].as_u64().unwrap();
                assert!(generation >= last_gen, "generation went backwards");
                last_gen = generation;
                // ...and a consistent state through the API.
                let n = s.list(Some(NET)).unwrap().len();
                assert!(n >= last_len, "allocations went backwards");
                last_len = n;
                reads += 1;
            }
            reads
        })
    };
    for i in 0..150 {
        writer
            .reserve(
                &key(&format!("w{i}")),
                "t",
                &[v4(&pool("p", "10.7.0.0/16", 16, &[]))],
            )
            .unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads >= 50);
    assert_eq!(writer.list(None).unwrap().len(), 151);
}

#[test]
fn corrupt_state_is_reported_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    s.reserve(&key("a"), "t", &[v4(&pods())]).unwrap();
    let file = dir.path().join("ipam").join(NET).join("state.json");
    fs::write(&file, b"{\"format\":1,\"generation\":3,\"attachm").unwrap();
    assert_eq!(code(s.reserve(&key("b"), "t", &[v4(&pods())])).0, 138);
    assert_eq!(code(s.release(&key("a"))).0, 138);
    assert_eq!(code(s.list(None)).0, 138);
    assert_eq!(code(s.status()).0, 138);
    assert_eq!(
        fs::read(&file).unwrap(),
        b"{\"format\":1,\"generation\":3,\"attachm"
    );
    // A newer format is not guessed at either.
    fs::write(&file, br#"{"format":99,"generation":1}"#).unwrap();
    assert_eq!(code(s.list(None)).0, 138);
    // Not even after a reboot: it is well-formed, so not torn.
    let marker = dir.path().join("ipam").join(NET).join("boot");
    fs::write(&marker, ANOTHER_BOOT).unwrap();
    assert_eq!(code(s.reserve(&key("b"), "t", &[v4(&pods())])).0, 138);
    assert_eq!(fs::read(&file).unwrap(), br#"{"format":99,"generation":1}"#);
    // Torn with no marker at all: only ever written with fsync (an earlier
    // version of tenet), so the tear is not a reboot's and stays an error.
    fs::remove_file(&marker).unwrap();
    fs::write(&file, b"{\"format\":1,\"gen").unwrap();
    assert_eq!(code(s.reserve(&key("b"), "t", &[v4(&pods())])).0, 138);
    assert_eq!(code(s.status()).0, 138);
}

/// A boot id that is not this one's.
const ANOTHER_BOOT: &str = "00000000-0000-4000-8000-000000000000";

fn this_boot() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn the_first_write_of_a_boot_marks_the_directory_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    let marker = dir.path().join("ipam").join(NET).join("boot");
    s.reserve(&key("a"), "t", &[v4(&pods())]).unwrap();
    assert_eq!(fs::read_to_string(&marker).unwrap(), this_boot());
    // Later writes of the boot leave it alone (the same file, not
    // rewritten: one durable write per boot and directory).
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let first = inode(&marker);
    s.reserve(&key("b"), "t", &[v4(&pods())]).unwrap();
    s.release(&key("a")).unwrap();
    assert_eq!(inode(&marker), first);
    // After a reboot (another id on disk) the next write marks it again.
    fs::write(&marker, ANOTHER_BOOT).unwrap();
    s.release(&key("b")).unwrap();
    assert_eq!(fs::read_to_string(&marker).unwrap(), this_boot());
}

#[test]
fn a_state_torn_before_a_reboot_is_set_aside_and_the_network_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    let net_dir = dir.path().join("ipam").join(NET);
    let file = net_dir.join("state.json");
    assert_eq!(addr(&s, "a", "t", &[v4(&pods())]), "10.0.0.2/24");
    // What a power cut may leave on a filesystem without rename-over
    // heuristics: the unsynced state empty or cut short, and the marker of
    // the boot that wrote it.
    for torn in [
        &b""[..],
        b"{\"format\":1,\"generation\":3,\"attachm",
        &[0u8; 64],
    ] {
        fs::write(&file, torn).unwrap();
        fs::write(net_dir.join("boot"), ANOTHER_BOOT).unwrap();
        // Readers (STATUS, listings) see what the next writer will: nothing.
        s.status().unwrap();
        assert!(s.list(None).unwrap().is_empty());
        // The writer sets it aside, keeps it, and starts over.
        assert_eq!(addr(&s, "b", "t", &[v4(&pods())]), "10.0.0.2/24");
        assert_eq!(s.list(None).unwrap().len(), 1);
        let kept: Vec<_> = fs::read_dir(&net_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("state.json.torn-"))
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(fs::read(&kept[0]).unwrap(), torn);
        fs::remove_file(&kept[0]).unwrap();
        s.release(&key("b")).unwrap();
    }
    // Torn within this boot (not by a cut: tenet's writes are atomic) is an
    // error, never a reset under running pods.
    fs::write(&file, b"{\"format\":1,\"gen").unwrap();
    assert_eq!(code(s.reserve(&key("c"), "t", &[v4(&pods())])).0, 138);
    assert_eq!(code(s.list(None)).0, 138);
    assert_eq!(fs::read(&file).unwrap(), b"{\"format\":1,\"gen");
}

#[test]
fn status_checks_the_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), opts());
    s.status().unwrap();
    s.reserve(&key("a"), "t", &[v4(&pods())]).unwrap();
    s.status().unwrap();
    // The state dir replaced by a file: not usable.
    let root = dir.path().join("ipam");
    fs::remove_dir_all(&root).unwrap();
    fs::write(&root, b"not a directory").unwrap();
    assert_eq!(code(s.status()).0, 138);
}
