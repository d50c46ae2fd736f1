//! The engine over recording fakes: every path of ADD, DEL, CHECK and GC,
//! and a rollback after every step that leaves nothing behind.

use std::path::Path;

use super::*;
use crate::ipam::FakeIpStore;
use crate::netns::FakeNetns;
use crate::plan::authority::AddressAuthority;
use crate::plan::{AddressRequest, Dns, Interface, IpFamily, NextHop, Plan, Pool, Route};
use crate::sdn::FakeSdn;

struct Rig {
    dir: tempfile::TempDir,
    store: FakeIpStore,
    link: FakeIpStore,
    sdn: FakeSdn,
    netns: FakeNetns,
}

impl Rig {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            store: FakeIpStore::new(),
            link: FakeIpStore::new(),
            sdn: FakeSdn::new(),
            netns: FakeNetns::new(),
        }
    }

    fn engine(&self) -> Engine<'_> {
        Engine::new(
            &self.store,
            &self.link,
            &self.sdn,
            &self.netns,
            self.dir.path(),
        )
    }

    /// Nothing of any attachment is left anywhere.
    fn assert_empty(&self) {
        assert!(self.store.list(None).unwrap().is_empty(), "tenant store");
        assert!(self.link.list(None).unwrap().is_empty(), "link store");
        assert!(self.sdn.tenants().is_empty(), "tenant networks");
        assert!(self.sdn.guarded().is_empty(), "port guards");
        assert!(
            self.netns.pod_link(Path::new(NETNS), "eth0").is_none(),
            "eth0"
        );
        assert!(
            self.netns.pod_link(Path::new(NETNS), "eth1").is_none(),
            "eth1"
        );
        assert!(
            self.engine().records().list(None).unwrap().is_empty(),
            "records"
        );
    }
}

const NETNS: &str = "/run/netns/pod";

fn key(cid: &str) -> AttachmentKey {
    AttachmentKey::new("net", cid, "eth0")
}

/// A Rainbond-like plan for `tenant`, typed by validation (as ADD gets it).
fn plan(tenant: &str) -> ValidPlan {
    crate::plan::validate::structure(&wire(tenant), &AddressAuthority::default()).unwrap()
}

fn wire(tenant: &str) -> Plan {
    let pool = |name: &str, net: &str, len| {
        Some(Pool {
            name: name.into(),
            supernet: net.into(),
            subnet_len: len,
            exclude: vec![],
        })
    };
    Plan {
        tenant: tenant.into(),
        interfaces: vec![
            Interface {
                name: "eth0".into(),
                kind: InterfaceKind::SdnPort,
                addresses: vec![AddressRequest {
                    family: IpFamily::Ipv4,
                    pool: pool("pods", "10.64.0.0/16", 24),
                    static_address: None,
                }],
                mac: None,
                mtu: None,
            },
            Interface {
                name: "eth1".into(),
                kind: InterfaceKind::HostLink,
                addresses: vec![AddressRequest {
                    family: IpFamily::Ipv4,
                    pool: pool("links", "169.254.128.0/17", 17),
                    static_address: None,
                }],
                mac: None,
                mtu: None,
            },
        ],
        routes: vec![
            Route {
                dst: "0.0.0.0/0".into(),
                interface: "eth0".into(),
                via: NextHop::SubnetGateway,
                metric: None,
                mtu: None,
            },
            Route {
                dst: "10.96.0.0/12".into(),
                interface: "eth1".into(),
                via: NextHop::SubnetGateway,
                metric: None,
                mtu: None,
            },
        ],
        dns: Dns::default(),
        sysctls: vec![],
        annotations: vec![],
    }
}

#[test]
fn add_check_del_del() {
    let r = Rig::new();
    let e = r.engine();
    let res = e.add(&key("c1"), NETNS, &plan("acme")).unwrap();
    assert_eq!(res.ips.len(), 2);
    assert!(
        res.ips[0].address.to_string().starts_with("10.64."),
        "{res:?}"
    );
    assert_eq!(res.ips[1].address.prefix_len(), 32);
    assert_eq!(r.sdn.ports("acme").len(), 1);
    let rec = e.records().load(&key("c1")).unwrap().unwrap();
    assert_eq!(rec.phase, Phase::Ready);
    assert!(rec.result.is_some());
    e.check(&key("c1"), NETNS, Some(&res)).unwrap();
    // A second ADD of the same attachment is an error and changes nothing.
    let err = e.add(&key("c1"), NETNS, &plan("acme")).unwrap_err();
    assert_eq!(err.code, codes::ALREADY_ATTACHED);
    e.check(&key("c1"), NETNS, None).unwrap();
    e.del(&key("c1"), Some(NETNS)).unwrap();
    r.assert_empty();
    e.del(&key("c1"), Some(NETNS)).unwrap();
    e.del(&key("c1"), None).unwrap();
    let err = e.check(&key("c1"), NETNS, None).unwrap_err();
    assert_eq!(err.code, code::UNKNOWN_CONTAINER);
}

#[test]
fn check_names_what_changed() {
    let r = Rig::new();
    let e = r.engine();
    let res = e.add(&key("c1"), NETNS, &plan("acme")).unwrap();
    let mut other = res.clone();
    other.ips.remove(0);
    let err = e.check(&key("c1"), NETNS, Some(&other)).unwrap_err();
    assert_eq!(err.code, codes::CHECK_FAILED);
    assert!(err.details.contains("prevResult"), "{err:?}");
    // The tenant's port disappears behind tenet's back.
    r.sdn
        .detach("acme", &key("c1"), &crate::netns::host_ifname("c1", "eth0"))
        .unwrap();
    let err = e.check(&key("c1"), NETNS, None).unwrap_err();
    assert_eq!(err.code, codes::CHECK_FAILED);
    assert!(err.details.contains("port"), "{err:?}");
}

#[test]
fn check_keeps_the_code_of_a_failure_to_look() {
    // CHECK's SDN calls (guard, tenant, port) each fail in turn: the
    // backend could not answer, which is not "the attachment is broken"
    // (issue 16: MidoNet unreachable, 11, came out as 141).
    for n in 1..=3 {
        let r = Rig::new();
        let e = r.engine();
        e.add(&key("c1"), NETNS, &plan("acme")).unwrap();
        r.sdn.fail_call(n);
        let err = e.check(&key("c1"), NETNS, None).unwrap_err();
        assert_eq!(err.code, codes::INJECTED, "call {n}: {err:?}");
        assert_ne!(err.code, codes::CHECK_FAILED);
        // The cause is kept, not only its text.
        let source = std::error::Error::source(&err).expect("a source");
        assert!(source.to_string().contains("injected"), "{source}");
    }
}

#[test]
fn a_failure_after_every_step_rolls_everything_back() {
    for step in super::failpoint::STEPS_WITH_HOST_LINK {
        let r = Rig::new();
        let e = r
            .engine()
            .with_failpoints(Failpoints::parse(&format!("{step}:error")));
        let err = e.add(&key("c1"), NETNS, &plan("acme")).unwrap_err();
        assert_eq!(err.code, codes::INJECTED, "{step}: {err:?}");
        assert_eq!(err.step, step);
        assert!(!err.details.contains("rollback"), "{step}: {err:?}");
        r.assert_empty();
        // And the same attachment can then be added for real.
        r.engine().add(&key("c1"), NETNS, &plan("acme")).unwrap();
    }
}

#[test]
fn backend_failures_roll_back_too() {
    // Fail each SDN call in turn (ensure, guard ×2, attach) and each netns
    // call.
    for (n, step) in [
        (1, "ensure-tenant"),
        (2, "guard:eth0"),
        (3, "guard:eth1"),
        (4, "attach:eth0"),
    ] {
        let r = Rig::new();
        r.sdn.fail_call(n);
        let err = r
            .engine()
            .add(&key("c1"), NETNS, &plan("acme"))
            .unwrap_err();
        assert_eq!(err.step, step, "{err:?}");
        r.assert_empty();
    }
    // create_veth ×2, host_side, configure ×2.
    for n in 1..=5 {
        let r = Rig::new();
        r.netns.fail_call(n);
        let err = r
            .engine()
            .add(&key("c1"), NETNS, &plan("acme"))
            .unwrap_err();
        assert_eq!(err.code, codes::INJECTED, "{err:?}");
        r.assert_empty();
    }
}

#[test]
fn an_interrupted_add_is_finished_by_the_next_and_keeps_its_address() {
    let r = Rig::new();
    let e = r.engine();
    let first = e.add(&key("c1"), NETNS, &plan("acme")).unwrap();
    // Make it look like a process died after configuring: the record is
    // back to `applying`.
    let mut rec = e.records().load(&key("c1")).unwrap().unwrap();
    rec.phase = Phase::Applying;
    e.records().store(&rec).unwrap();
    let again = e.add(&key("c1"), NETNS, &plan("acme")).unwrap();
    assert_eq!(first.ips, again.ips);
    e.del(&key("c1"), Some(NETNS)).unwrap();
    r.assert_empty();
}

#[test]
fn gc_tears_down_what_is_not_valid_and_keeps_the_rest() {
    let r = Rig::new();
    let e = r.engine();
    e.add(&key("keep"), NETNS, &plan("acme")).unwrap();
    e.add(
        &AttachmentKey::new("net", "gone", "eth0"),
        "/run/netns/other",
        &plan("acme"),
    )
    .unwrap();
    let s = e.gc("net", &[("keep".into(), "eth0".into())]).unwrap();
    assert_eq!(s.torn_down, vec![key("gone")]);
    assert_eq!(e.records().list(None).unwrap().len(), 1);
    e.check(&key("keep"), NETNS, None).unwrap();
    e.gc("net", &[]).unwrap();
    r.assert_empty();
}

#[test]
fn the_tenant_network_goes_with_its_last_pod() {
    let r = Rig::new();
    let e = r.engine();
    e.add(&key("a"), "/run/netns/a", &plan("acme")).unwrap();
    e.add(&key("b"), "/run/netns/b", &plan("acme")).unwrap();
    e.add(&key("c"), "/run/netns/c", &plan("other")).unwrap();
    e.del(&key("a"), Some("/run/netns/a")).unwrap();
    assert_eq!(r.sdn.tenants(), ["acme", "other"]);
    e.del(&key("b"), Some("/run/netns/b")).unwrap();
    assert_eq!(r.sdn.tenants(), ["other"]);
    e.del(&key("c"), None).unwrap();
    assert!(r.sdn.tenants().is_empty());
}

#[test]
fn status_asks_every_backend() {
    let r = Rig::new();
    r.engine().status().unwrap();
    r.sdn.fail_call(1);
    let err = r.engine().status().unwrap_err();
    assert_eq!(err.code, code::NOT_AVAILABLE);
    assert_eq!(err.step, "sdn");
}

fn unavailable() -> crate::ipam::IpamError {
    crate::ipam::IpamError::Unavailable {
        detail: "etcd: no answer within 5s".into(),
    }
}

#[test]
fn claims_are_permanent_before_the_pod_is_configured() {
    let r = Rig::new();
    let e = r
        .engine()
        .with_failpoints(Failpoints::parse("configure:eth0:error"));
    // The claim (reserve + confirm here) comes before anything is
    // configured: after the first configure step it is confirmed.
    let calls_before = r.store.calls().len();
    e.add(&key("c1"), NETNS, &plan("acme")).unwrap_err();
    let calls = &r.store.calls()[calls_before..];
    let confirm = calls
        .iter()
        .position(|c| matches!(c, crate::ipam::IpStoreCall::Confirm(_)))
        .expect("confirmed");
    let release = calls
        .iter()
        .position(|c| matches!(c, crate::ipam::IpStoreCall::Release(_)))
        .expect("released by the rollback");
    assert!(confirm < release, "{calls:?}");
    r.assert_empty();
}

#[test]
fn a_failed_release_keeps_the_record_for_del_or_gc() {
    let r = Rig::new();
    // Calls of the tenant store: reserve (1), confirm (2), then the
    // rollback's release (3) gets no answer.
    r.store.fail_call(3, unavailable());
    let e = r
        .engine()
        .with_failpoints(Failpoints::parse("attach:eth0:error"));
    let err = e.add(&key("c1"), NETNS, &plan("acme")).unwrap_err();
    assert_eq!(err.code, codes::INJECTED);
    assert!(err.details.contains("kept for DEL or GC"), "{err:?}");
    // The claim it names may still exist, and does here: the record stays,
    // in the phase DEL and GC finish.
    let rec = e.records().load(&key("c1")).unwrap().expect("record kept");
    assert_eq!(rec.phase, Phase::Applying);
    assert_eq!(r.store.list(None).unwrap().len(), 1);
    // Everything else was undone.
    assert!(r.sdn.tenants().is_empty());
    assert!(r.netns.pod_link(Path::new(NETNS), "eth0").is_none());
    // DEL finds the claim through the record and frees both.
    e.del(&key("c1"), None).unwrap();
    r.assert_empty();
}

#[test]
fn a_claim_whose_answer_was_lost_is_released_by_the_rollback() {
    let r = Rig::new();
    // The claim fails with code 11: it may have been made all the same.
    r.store.fail_call(1, unavailable());
    let err = r
        .engine()
        .add(&key("c1"), NETNS, &plan("acme"))
        .unwrap_err();
    assert_eq!((err.code, err.step.as_str()), (11, "reserve"));
    assert!(
        r.store
            .calls()
            .iter()
            .any(|c| *c == crate::ipam::IpStoreCall::Release(key("c1"))),
        "the rollback released the claim: {:?}",
        r.store.calls()
    );
    r.assert_empty();
}

#[test]
fn gc_keeps_the_claims_of_adds_still_running() {
    let r = Rig::new();
    let e = r.engine();
    e.add(&key("done"), NETNS, &plan("acme")).unwrap();
    // An ADD of this process in flight: its claim is permanent already.
    let mut rec = e.records().load(&key("done")).unwrap().unwrap();
    rec.phase = Phase::Applying;
    e.records().store(&rec).unwrap();
    let s = e.gc("net", &[]).unwrap();
    assert_eq!(s.in_flight, vec![key("done")]);
    assert!(s.released.is_empty(), "{s:?}");
    assert_eq!(r.store.list(None).unwrap().len(), 1);
    assert!(
        r.store.calls().iter().any(|c| matches!(c,
            crate::ipam::IpStoreCall::Gc { valid, .. } if valid.contains(&("done".into(), "eth0".into())))),
        "{:?}",
        r.store.calls()
    );
}

#[test]
fn the_plans_annotations_are_kept_in_the_record() {
    let r = Rig::new();
    let e = r.engine();
    let mut p = plan("acme");
    p.annotations = vec![crate::plan::Kv::new("quota.example.com/tier", "gold")];
    e.add(&key("c1"), NETNS, &p).unwrap();
    let rec = e.records().load(&key("c1")).unwrap().unwrap();
    assert_eq!(rec.annotations, p.annotations);
    // ... and reach the backend with the port (it acts on the keys it knows).
    let given: Vec<_> = r
        .sdn
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            crate::sdn::fake::SdnCall::Attach { annotations, .. } => Some(annotations),
            _ => None,
        })
        .collect();
    assert_eq!(given, vec![p.annotations.clone()]);
    e.del(&key("c1"), Some(NETNS)).unwrap();
}
