//! Pure planning of the apply step: from a validated, typed plan
//! ([`ValidPlan`]) and the addresses the store handed out, everything the
//! backends will be told, and the CNI result. No side effects here, so it
//! is unit-tested exactly. Nothing here parses: the plan's addresses,
//! routes and MACs are already values.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cni::result::{CniResult, ResultInterface, ResultIp, ResultRoute};
use crate::ipam::Allocation;
use crate::netns::{self, HostLinkSpec, MacAddr, ResolvedRoute, host_ifname, host_link_pod_routes};
use crate::plan::{AddressSpec, InterfaceKind, ValidPlan, Via};

/// An error in combining the plan with its allocations (a planning bug the
/// validator should have caught, or a store that returned the wrong family).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LayoutError(pub String);

/// One pod interface, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceLayout {
    /// Name inside the pod.
    pub name: String,
    /// SDN port or host link.
    pub kind: InterfaceKind,
    /// Host end of its veth.
    pub host_ifname: String,
    /// MAC of the pod end (requested or derived).
    pub mac: MacAddr,
    /// MTU of both ends.
    pub mtu: Option<u32>,
    /// Addresses to put on the pod end (host routes for host links).
    pub addrs: Vec<IpNet>,
    /// Routes through this interface inside the pod.
    pub routes: Vec<ResolvedRoute>,
    /// For host links: the node side.
    pub host_side: Option<HostLinkSpec>,
    /// The allocations behind `addrs`, in order.
    pub allocations: Vec<Allocation>,
}

/// The whole attachment, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Interfaces, the primary first.
    pub interfaces: Vec<IfaceLayout>,
    /// (subnet, gateway) of every SDN-port allocation, for the tenant network.
    pub tenant_subnets: Vec<(IpNet, IpAddr)>,
}

/// Which store an address request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreSide {
    /// The (possibly cluster-wide) address store: tenant addresses.
    Tenant,
    /// The node-local store: host-link addresses, meaningful on this node only.
    Link,
}

/// Address requests, each with the index of its interface in the plan.
pub type IndexedRequests = Vec<(usize, AddressSpec)>;

/// The address requests of a plan, split by the store that serves them:
/// (tenant store, node-local link store).
pub fn address_requests(plan: &ValidPlan) -> (IndexedRequests, IndexedRequests) {
    let mut tenant = Vec::new();
    let mut link = Vec::new();
    for (i, iface) in plan.interfaces.iter().enumerate() {
        let side = match iface.kind {
            InterfaceKind::SdnPort => &mut tenant,
            InterfaceKind::HostLink => &mut link,
        };
        side.extend(iface.addresses.iter().cloned().map(|a| (i, a)));
    }
    (tenant, link)
}

/// Combines the plan with the allocations (`tenant` and `link` in the order
/// of [`address_requests`]) into the layout.
pub fn resolve(
    plan: &ValidPlan,
    container_id: &str,
    tenant: &[Allocation],
    link: &[Allocation],
) -> Result<Layout, LayoutError> {
    let (treq, lreq) = address_requests(plan);
    if treq.len() != tenant.len() || lreq.len() != link.len() {
        return Err(LayoutError(format!(
            "the store returned {} + {} addresses for {} + {} requests",
            tenant.len(),
            link.len(),
            treq.len(),
            lreq.len()
        )));
    }
    let mut per_iface: Vec<Vec<Allocation>> = vec![Vec::new(); plan.interfaces.len()];
    for ((i, _), a) in treq.iter().zip(tenant).chain(lreq.iter().zip(link)) {
        per_iface[*i].push(a.clone());
    }
    let mut interfaces = Vec::new();
    let mut tenant_subnets: Vec<(IpNet, IpAddr)> = Vec::new();
    for (iface, allocs) in plan.interfaces.iter().zip(per_iface) {
        let mac = iface
            .mac
            .unwrap_or_else(|| netns::derive_mac(container_id, &iface.name));
        let host = host_ifname(container_id, &iface.name);
        let gateway_for = |v4: bool| {
            allocs
                .iter()
                .find(|a| a.gateway.is_ipv4() == v4)
                .map(|a| a.gateway)
        };
        let plan_routes: Vec<_> = plan
            .routes
            .iter()
            .filter(|r| r.interface == iface.name)
            .collect();
        let mut routes = Vec::new();
        let (addrs, host_side) = match iface.kind {
            InterfaceKind::SdnPort => {
                for a in &allocs {
                    let s = (a.subnet, a.gateway);
                    if !tenant_subnets.contains(&s) {
                        tenant_subnets.push(s);
                    }
                }
                for r in &plan_routes {
                    let dst = r.dst;
                    let gateway = match r.via {
                        Via::SubnetGateway => Some(
                            gateway_for(dst.addr().is_ipv4())
                                .ok_or_else(|| no_gateway(&iface.name, dst))?,
                        ),
                        Via::Address(a) => Some(a),
                        Via::OnLink => None,
                    };
                    routes.push(ResolvedRoute {
                        dst: dst.trunc(),
                        gateway,
                        onlink: false,
                        metric: r.metric,
                        mtu: r.mtu,
                    });
                }
                (allocs.iter().map(|a| a.address).collect::<Vec<_>>(), None)
            }
            InterfaceKind::HostLink => {
                // The pod end holds its addresses as host routes and reaches
                // the node through the link's gateway, on-link (see netns).
                let addrs: Vec<IpNet> = allocs
                    .iter()
                    .map(|a| IpNet::from(a.address.addr()))
                    .collect();
                let mut gws: Vec<IpNet> = Vec::new();
                for v4 in [true, false] {
                    let Some(gw) = gateway_for(v4) else { continue };
                    gws.push(IpNet::from(gw));
                    let dsts: Vec<IpNet> = plan_routes
                        .iter()
                        .filter(|r| r.via == Via::SubnetGateway)
                        .map(|r| r.dst)
                        .filter(|d| d.addr().is_ipv4() == v4)
                        .collect();
                    routes.extend(host_link_pod_routes(gw, &dsts));
                }
                for r in &plan_routes {
                    let dst = r.dst;
                    match r.via {
                        Via::SubnetGateway => {
                            if gateway_for(dst.addr().is_ipv4()).is_none() {
                                return Err(no_gateway(&iface.name, dst));
                            }
                        }
                        Via::Address(a) => routes.push(ResolvedRoute {
                            onlink: true,
                            metric: r.metric,
                            mtu: r.mtu,
                            ..ResolvedRoute::via(dst.trunc(), a)
                        }),
                        Via::OnLink => routes.push(ResolvedRoute {
                            metric: r.metric,
                            mtu: r.mtu,
                            ..ResolvedRoute::link(dst.trunc())
                        }),
                    }
                }
                let spec = HostLinkSpec {
                    host_ifname: host.clone(),
                    gateways: gws,
                    pod_addrs: addrs.iter().map(IpNet::addr).collect(),
                };
                (addrs, Some(spec))
            }
        };
        interfaces.push(IfaceLayout {
            name: iface.name.clone(),
            kind: iface.kind,
            host_ifname: host,
            mac,
            mtu: iface.mtu,
            addrs,
            routes,
            host_side,
            allocations: allocs,
        });
    }
    Ok(Layout {
        interfaces,
        tenant_subnets,
    })
}

fn no_gateway(iface: &str, dst: IpNet) -> LayoutError {
    LayoutError(format!(
        "route to {dst} on {iface} goes via the subnet gateway, but {iface} has no address of that family"
    ))
}

/// Gives SDN-port interfaces the SDN backend's port MTU (`max`, e.g.
/// `midonet.mtu`: what its overlay carries) when the plan names none, and
/// refuses a plan MTU above it (the overlay would drop the larger frames).
pub fn limit_sdn_mtu(layout: &mut Layout, max: Option<u32>) -> Result<(), LayoutError> {
    let Some(max) = max else { return Ok(()) };
    for i in layout
        .interfaces
        .iter_mut()
        .filter(|i| i.kind == InterfaceKind::SdnPort)
    {
        match i.mtu {
            Some(m) if m > max => {
                return Err(LayoutError(format!(
                    "interface {}: mtu {m} is more than the {max} the SDN carries on its ports \
                     (its tunnel overhead; midonet.mtu)",
                    i.name
                )));
            }
            Some(_) => {}
            None => i.mtu = Some(max),
        }
    }
    Ok(())
}

/// The CNI result of a layout: for each interface its host end and pod end
/// (in that order), the addresses on the pod ends, every route, the DNS.
pub fn result(layout: &Layout, plan: &ValidPlan, netns: &str, host_macs: &[MacAddr]) -> CniResult {
    let mut out = CniResult {
        dns: plan.dns.to_wire(),
        ..CniResult::default()
    };
    for (n, i) in layout.interfaces.iter().enumerate() {
        out.interfaces.push(ResultInterface {
            name: i.host_ifname.clone(),
            mac: host_macs.get(n).map(ToString::to_string),
            mtu: i.mtu,
            ..ResultInterface::default()
        });
        let pod = out.interfaces.len();
        out.interfaces.push(ResultInterface {
            name: i.name.clone(),
            mac: Some(i.mac.to_string()),
            mtu: i.mtu,
            sandbox: Some(netns.to_owned()),
            ..ResultInterface::default()
        });
        for (addr, a) in i.addrs.iter().zip(&i.allocations) {
            out.ips.push(ResultIp {
                address: *addr,
                gateway: Some(a.gateway),
                interface: Some(pod),
            });
        }
        for r in &i.routes {
            out.routes.push(ResultRoute {
                dst: r.dst,
                gw: r.gateway,
                mtu: r.mtu,
                advmss: None,
                priority: r.metric,
                table: None,
                scope: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::authority::AddressAuthority;
    use crate::plan::{AddressRequest, Dns, Interface, IpFamily, NextHop, Plan, Pool, Route};

    fn pool(name: &str, supernet: &str, len: u8) -> Option<Pool> {
        Some(Pool {
            name: name.into(),
            supernet: supernet.into(),
            subnet_len: len,
            exclude: vec![],
        })
    }

    /// The Rainbond sample, typed by validation (as the pipeline hands it
    /// to apply).
    fn rainbond_plan() -> ValidPlan {
        crate::plan::validate::structure(&rainbond_wire(), &AddressAuthority::default()).unwrap()
    }

    fn rainbond_wire() -> Plan {
        Plan {
            tenant: "team-a".into(),
            interfaces: vec![
                Interface {
                    name: "eth0".into(),
                    kind: InterfaceKind::SdnPort,
                    addresses: vec![AddressRequest {
                        family: IpFamily::Ipv4,
                        pool: pool("pods-v4", "10.64.0.0/12", 24),
                        static_address: None,
                    }],
                    mac: None,
                    mtu: Some(1450),
                },
                Interface {
                    name: "eth1".into(),
                    kind: InterfaceKind::HostLink,
                    addresses: vec![AddressRequest {
                        family: IpFamily::Ipv4,
                        pool: pool("host-link-v4", "169.254.128.0/17", 17),
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
                    metric: Some(10),
                    mtu: None,
                },
            ],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                ..Dns::default()
            },
            sysctls: vec![],
            annotations: vec![],
        }
    }

    fn alloc(addr: &str, gw: &str, subnet: &str, pool: &str) -> Allocation {
        Allocation {
            address: addr.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            subnet: subnet.parse().unwrap(),
            pool: pool.into(),
            tenant: "t".into(),
        }
    }

    /// The SDN port's address in these tests.
    fn pods_alloc() -> Allocation {
        alloc("10.64.1.5/24", "10.64.1.1", "10.64.1.0/24", "pods-v4")
    }

    /// The host link's address in these tests.
    fn link_alloc() -> Allocation {
        alloc(
            "169.254.128.7/17",
            "169.254.128.1",
            "169.254.128.0/17",
            "host-link-v4",
        )
    }

    #[test]
    fn requests_are_split_by_store() {
        let (t, l) = address_requests(&rainbond_plan());
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0, 0);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].0, 1);
    }

    #[test]
    fn rainbond_layout_resolves_gateways_and_host_link() {
        let plan = rainbond_plan();
        let l = resolve(&plan, "c1", &[pods_alloc()], &[link_alloc()]).unwrap();
        assert_eq!(
            l.tenant_subnets,
            vec![(
                "10.64.1.0/24".parse().unwrap(),
                "10.64.1.1".parse().unwrap()
            )]
        );
        let eth0 = &l.interfaces[0];
        assert_eq!(eth0.host_ifname, host_ifname("c1", "eth0"));
        assert_eq!(eth0.mac, netns::derive_mac("c1", "eth0"));
        assert_eq!(eth0.addrs, vec!["10.64.1.5/24".parse::<IpNet>().unwrap()]);
        assert_eq!(
            eth0.routes,
            vec![ResolvedRoute::via(
                "0.0.0.0/0".parse().unwrap(),
                "10.64.1.1".parse().unwrap()
            )]
        );
        assert!(eth0.host_side.is_none());
        let eth1 = &l.interfaces[1];
        assert_eq!(
            eth1.addrs,
            vec!["169.254.128.7/32".parse::<IpNet>().unwrap()]
        );
        // Link route to the gateway, then the service CIDR on-link through it.
        assert_eq!(eth1.routes.len(), 2);
        assert_eq!(
            eth1.routes[0].dst,
            "169.254.128.1/32".parse::<IpNet>().unwrap()
        );
        assert!(eth1.routes[1].onlink);
        assert_eq!(
            eth1.routes[1].gateway,
            Some("169.254.128.1".parse().unwrap())
        );
        let hs = eth1.host_side.as_ref().unwrap();
        assert_eq!(
            hs.gateways,
            vec!["169.254.128.1/32".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            hs.pod_addrs,
            vec!["169.254.128.7".parse::<IpAddr>().unwrap()]
        );

        let r = result(&l, &plan, "/run/netns/p", &[MacAddr([2, 0, 0, 0, 0, 1]); 2]);
        assert_eq!(r.interfaces.len(), 4);
        assert_eq!(r.interfaces[1].sandbox.as_deref(), Some("/run/netns/p"));
        assert_eq!(r.interfaces[0].sandbox, None);
        assert_eq!(r.ips[0].interface, Some(1));
        assert_eq!(r.ips[1].interface, Some(3));
        assert_eq!(r.routes.len(), 3);
        assert_eq!(r.dns.nameservers, ["10.96.0.10"]);
    }

    #[test]
    fn a_store_answer_that_does_not_fit_is_refused() {
        let e = resolve(&rainbond_plan(), "c1", &[], &[]).unwrap_err();
        assert!(e.0.contains("requests"), "{e}");
        let mut plan = rainbond_plan();
        plan.routes[0].dst = "fd00::/8".parse().unwrap();
        let e = resolve(&plan, "c1", &[pods_alloc()], &[link_alloc()]).unwrap_err();
        assert!(e.0.contains("no address of that family"), "{e}");
    }

    /// By construction: a typed plan built from values alone (no
    /// validation, no text) resolves, and nothing in it can be malformed:
    /// the route's destination is an `IpNet`, its gateway an `IpAddr`, the
    /// MAC a `MacAddr`. The layout's former "is not a CIDR", "is not an IP
    /// address" and bad-MAC errors have no input left that reaches them.
    #[test]
    fn a_typed_plan_resolves_without_parsing() {
        use crate::plan::{PoolSpec, ValidInterface, ValidRoute};
        let gw: IpAddr = "10.64.1.254".parse().unwrap();
        let plan = ValidPlan {
            tenant: "acme".into(),
            interfaces: vec![ValidInterface {
                name: "eth0".into(),
                kind: InterfaceKind::SdnPort,
                addresses: vec![AddressSpec {
                    family: IpFamily::Ipv4,
                    pool: Some(PoolSpec {
                        name: "pods-v4".into(),
                        supernet: "10.64.0.0/12".parse().unwrap(),
                        subnet_len: 24,
                        exclude: vec![],
                    }),
                    static_address: None,
                }],
                mac: Some(MacAddr([2, 0, 0, 0, 0, 9])),
                mtu: None,
            }],
            routes: vec![ValidRoute {
                dst: "10.50.0.0/16".parse().unwrap(),
                interface: "eth0".into(),
                via: Via::Address(gw),
                metric: Some(5),
                mtu: None,
            }],
            ..ValidPlan::default()
        };
        let l = resolve(&plan, "c1", &[pods_alloc()], &[]).unwrap();
        let eth0 = &l.interfaces[0];
        assert_eq!(eth0.mac, MacAddr([2, 0, 0, 0, 0, 9]));
        assert_eq!(
            eth0.routes,
            vec![ResolvedRoute {
                metric: Some(5),
                ..ResolvedRoute::via("10.50.0.0/16".parse().unwrap(), gw)
            }]
        );
    }

    #[test]
    fn requested_mac_is_used() {
        let mut plan = rainbond_plan();
        plan.interfaces[0].mac = Some(MacAddr([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]));
        let l = resolve(&plan, "c1", &[pods_alloc()], &[link_alloc()]).unwrap();
        assert_eq!(l.interfaces[0].mac.to_string(), "02:aa:bb:cc:dd:ee");
    }

    #[test]
    fn sdn_ports_get_the_backend_mtu_and_never_more() {
        let mut plan = rainbond_plan();
        plan.interfaces[0].mtu = None;
        let layout =
            |plan: &ValidPlan| resolve(plan, "c1", &[pods_alloc()], &[link_alloc()]).unwrap();
        // No limit (the Linux bridge): nothing changes.
        let mut l = layout(&plan);
        limit_sdn_mtu(&mut l, None).unwrap();
        assert_eq!(l.interfaces[0].mtu, None);
        // The SDN's MTU for its port; the host link keeps its own.
        limit_sdn_mtu(&mut l, Some(1450)).unwrap();
        assert_eq!(l.interfaces[0].mtu, Some(1450));
        assert_eq!(l.interfaces[1].mtu, None);
        let r = result(&l, &plan, "/ns", &[]);
        assert_eq!(
            r.interfaces[1].mtu,
            Some(1450),
            "the pod's eth0 in the result"
        );
        // A plan may ask for less, not for more.
        plan.interfaces[0].mtu = Some(1400);
        let mut l = layout(&plan);
        limit_sdn_mtu(&mut l, Some(1450)).unwrap();
        assert_eq!(l.interfaces[0].mtu, Some(1400));
        plan.interfaces[0].mtu = Some(1500);
        let mut l = layout(&plan);
        let e = limit_sdn_mtu(&mut l, Some(1450)).unwrap_err();
        assert!(
            e.0.contains("eth0") && e.0.contains("1500") && e.0.contains("1450"),
            "{e}"
        );
    }
}
