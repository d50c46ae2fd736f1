//! The ADD-time check of a plan against the node itself: no range a plan
//! hands out may overlap the node's own addresses or the destinations of
//! its routes (any table, default routes aside), except on tenet's own
//! links (tenant bridges and pods' host ends, which the address stores keep
//! apart). A pod given the node's address, its gateway's, its DNS server's,
//! or an address the node routes elsewhere would take the node's traffic.
//!
//! This cannot be decided from the configuration (the node's addressing
//! changes), so the apply engine calls [`check`] in the node namespace
//! before its first side effect. It costs one address dump and one route
//! dump per family over the node's netlink socket ([`Netns::node_overlaps`]).
//!
//! A host link's pool may overlap the node only where the pool excludes the
//! overlap: the node's host-link pool excludes the cloud metadata services
//! (`authority::DEFAULT_HOST_LINK_EXCLUDE`), which some clouds route
//! explicitly, so those routes do not stop host links; nothing there is
//! ever handed out.

use std::net::IpAddr;

use ipnet::IpNet;

use super::validate::PlanError;
use super::{InterfaceKind, ValidPlan};
use crate::cni::code;
use crate::netns::{Netns, NetnsError};

/// Why [`check`] refused.
#[derive(Debug, thiserror::Error)]
pub enum NodeCheckError {
    /// A range of the plan overlaps the node (code 104).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The node's addresses or routes could not be read (code 123).
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

impl NodeCheckError {
    /// The CNI error code.
    pub fn cni_code(&self) -> u32 {
        match self {
            NodeCheckError::Plan(_) => code::POLICY_INVALID_PLAN,
            NodeCheckError::Netns(e) => e.cni_code(),
        }
    }
}

/// A range the plan would hand out, and where in the plan it is.
struct Claim {
    field: String,
    net: IpNet,
    /// What the pool never hands out (only honoured for host links).
    exclude: Vec<(u128, u128)>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

fn span(n: IpNet) -> (u128, u128) {
    (to_u128(n.network()), to_u128(n.broadcast()))
}

/// Whether every address of `[lo, hi]` is in one of `ranges`.
fn covered(mut lo: u128, hi: u128, ranges: &[(u128, u128)]) -> bool {
    let mut r = ranges.to_vec();
    r.sort_unstable();
    for (a, b) in r {
        if a > lo {
            return false;
        }
        if b >= lo {
            if b >= hi {
                return true;
            }
            lo = b + 1;
        }
    }
    false
}

/// The ranges of a validated plan: each SDN-port pool's supernet and
/// static address, each host link's pool.
fn claims(plan: &ValidPlan) -> Vec<Claim> {
    let mut out = Vec::new();
    for (i, ifc) in plan.interfaces.iter().enumerate() {
        for (j, a) in ifc.addresses.iter().enumerate() {
            let at = format!("interfaces[{i}].addresses[{j}]");
            if let Some(p) = &a.pool {
                let exclude = match ifc.kind {
                    InterfaceKind::HostLink => p
                        .exclude
                        .iter()
                        .map(|x| (to_u128(x.first()), to_u128(x.last())))
                        .collect(),
                    InterfaceKind::SdnPort => Vec::new(),
                };
                out.push(Claim {
                    field: format!("{at}.pool.supernet"),
                    net: p.supernet,
                    exclude,
                });
            }
            if let Some(s) = &a.static_address {
                out.push(Claim {
                    field: format!("{at}.staticAddress"),
                    net: s.net(),
                    exclude: Vec::new(),
                });
            }
        }
    }
    out
}

/// Refuses a plan that would hand out any part of the node's own addresses
/// or routed destinations (see the module docs). Reads only.
pub fn check(plan: &ValidPlan, netns: &dyn Netns) -> Result<(), NodeCheckError> {
    let claims = claims(plan);
    if claims.is_empty() {
        return Ok(());
    }
    let ranges: Vec<IpNet> = claims.iter().map(|c| c.net).collect();
    let node = netns.node_overlaps(&ranges)?;
    for c in &claims {
        for e in &node {
            let theirs = e.range();
            if !super::authority::overlaps(c.net, theirs) {
                continue;
            }
            // CIDRs nest: the overlap is the smaller of the two.
            let (lo, hi) = if c.net.contains(&theirs) {
                span(theirs)
            } else {
                span(c.net)
            };
            if covered(lo, hi, &c.exclude) {
                continue;
            }
            return Err(PlanError {
                field: c.field.clone(),
                message: format!(
                    "{} overlaps {e}: a pod there would take the node's traffic (choose a range clear of the node's addresses and routes)",
                    c.net
                ),
            }
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::{FakeNetns, NodeEntry, NodeEntryKind};
    use crate::plan::authority::AddressAuthority;
    use crate::plan::{AddressSpec, IpFamily, PoolSpec, StaticAddress, ValidInterface};

    fn entry(net: &str, kind: NodeEntryKind, dev: &str) -> NodeEntry {
        NodeEntry {
            net: net.parse().unwrap(),
            kind,
            device: Some(dev.into()),
        }
    }

    /// Built typed, not validated: the node check must hold for any typed
    /// plan (a static address outside its pool included).
    fn plan(supernet: &str, static_address: Option<&str>) -> ValidPlan {
        let mut p = ValidPlan {
            tenant: "acme".into(),
            ..ValidPlan::default()
        };
        p.interfaces.push(ValidInterface {
            name: "eth0".into(),
            kind: InterfaceKind::SdnPort,
            addresses: vec![AddressSpec {
                family: IpFamily::Ipv4,
                pool: Some(PoolSpec {
                    name: "p".into(),
                    supernet: supernet.parse().unwrap(),
                    subnet_len: 24,
                    exclude: vec![],
                }),
                static_address: static_address.map(|s| StaticAddress::parse(s).unwrap()),
            }],
            mac: None,
            mtu: None,
        });
        p.interfaces.push(ValidInterface {
            name: "eth1".into(),
            kind: InterfaceKind::HostLink,
            addresses: vec![AddressSpec {
                family: IpFamily::Ipv4,
                pool: None,
                static_address: None,
            }],
            mac: None,
            mtu: None,
        });
        AddressAuthority::default().assign_host_links(&mut p);
        p
    }

    fn node() -> FakeNetns {
        use NodeEntryKind::*;
        let f = FakeNetns::new();
        f.set_node_entries(vec![
            entry("10.1.2.3/24", Address, "eth0"),
            entry("10.1.2.0/24", Route, "eth0"),
            entry("10.50.0.0/16", Route, "eth0"),
            entry("10.53.0.10/32", Address, "kube-ipvs0"),
            entry("169.254.169.254/32", Route, "eth0"),
            // tenet's own: a tenant bridge and a host end.
            entry("10.64.1.1/24", Address, &crate::sdn::bridge_name("acme")),
            entry("10.64.1.0/24", Route, &crate::sdn::bridge_name("acme")),
            entry(
                "169.254.128.9/32",
                Route,
                &crate::netns::host_ifname("c", "eth1"),
            ),
        ]);
        f
    }

    #[test]
    fn ranges_clear_of_the_node_pass_and_tenets_own_links_do_not_count() {
        check(&plan("10.64.0.0/12", None), &node()).unwrap();
        check(&plan("10.64.0.0/12", Some("10.64.1.5")), &node()).unwrap();
    }

    #[test]
    fn the_nodes_addresses_and_routes_are_refused_with_the_field() {
        for (net, stat, field, what) in [
            ("10.1.0.0/16", None, "pool.supernet", "10.1.2.3/24 on eth0"),
            ("10.0.0.0/8", None, "pool.supernet", "eth0"),
            ("10.50.4.0/24", None, "pool.supernet", "route 10.50.0.0/16"),
            ("10.53.0.0/16", None, "pool.supernet", "kube-ipvs0"),
            (
                "10.64.0.0/12",
                Some("10.1.2.0/24"),
                "staticAddress",
                "10.1.2",
            ),
        ] {
            let e = check(&plan(net, stat), &node()).unwrap_err();
            assert_eq!(e.cni_code(), crate::cni::codes::POLICY_INVALID_PLAN);
            let NodeCheckError::Plan(p) = e else { panic!() };
            assert!(p.field.ends_with(field), "{net}: {p}");
            assert!(p.message.contains(what), "{net}: {p}");
        }
    }

    #[test]
    fn host_links_may_overlap_only_what_their_pool_excludes() {
        // The metadata route is inside the excluded 169.254.169.0/24.
        check(&plan("10.64.0.0/12", None), &node()).unwrap();
        let f = node();
        let mut entries = vec![entry("169.254.200.0/24", NodeEntryKind::Route, "eth0")];
        entries.push(entry("169.254.169.0/23", NodeEntryKind::Route, "eth0"));
        f.set_node_entries(entries);
        let e = check(&plan("10.64.0.0/12", None), &f).unwrap_err();
        let NodeCheckError::Plan(p) = e else { panic!() };
        assert_eq!(p.field, "interfaces[1].addresses[0].pool.supernet");
        // Partly excluded is not excluded.
        f.set_node_entries(vec![entry(
            "169.254.168.0/22",
            NodeEntryKind::Route,
            "eth0",
        )]);
        assert!(check(&plan("10.64.0.0/12", None), &f).is_err());
    }

    #[test]
    fn coverage_is_exact() {
        assert!(covered(5, 10, &[(0, 7), (8, 10)]));
        assert!(covered(5, 10, &[(8, 12), (0, 7)]));
        assert!(!covered(5, 10, &[(0, 7), (9, 10)]));
        assert!(!covered(5, 10, &[]));
        assert!(covered(5, 5, &[(5, 5)]));
    }
}
