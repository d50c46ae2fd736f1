//! Per-port source guards: what one pod port may send, as nftables set
//! elements (pure; the Linux backend adds and deletes them over netlink).
//!
//! The guard *rules* are fixed (installed with the base ruleset, see the
//! module docs of [`super`], the Linux backend); what changes per pod is data:
//!
//! | set | key | for |
//! |---|---|---|
//! | `bridge tenet port_mac` | `ifname . ether_addr` | bridge ports: the pod's MAC |
//! | `bridge tenet port_v4` / `port_v6` | `ifname . ipv4_addr` / `ipv6_addr` | bridge ports: the pod's addresses |
//! | `inet tenet port_v4` / `port_v6` | likewise | every port (host links; bridge ports too, for nodes with `br_netfilter`) |
//! | `inet tenet svc_from` | `ifname : jump svc-<bridge>` | host links: the tenant whose services scope applies |
//!
//! A `tn*` port with no element sends nothing (the rules end in `drop`), so
//! a guard that is missing fails closed.

use std::net::{IpAddr, Ipv6Addr};

use super::nft::{self, SVC_FROM, SVC_NONE};
use super::nftnl::{Elem, Family, key_ifname, key_ifname_ip, key_ifname_mac};
use crate::netns::MacAddr;

/// What one pod port may send from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGuard {
    /// The host end of the pod's veth (the port), in the node namespace.
    pub host_ifname: String,
    /// A bridge port (SDN port) rather than a routed host link.
    pub bridged: bool,
    /// The pod end's MAC.
    pub mac: MacAddr,
    /// The addresses it may send from: its own, and its IPv6 link-local
    /// when it has IPv6 ([`link_local`]).
    pub addrs: Vec<IpAddr>,
    /// Host links: the bridge of the pod's tenant, whose service chain
    /// decides which service endpoints the link reaches (`None`: the pod has
    /// no tenant bridge; shared tenants only).
    pub tenant_bridge: Option<String>,
}

/// The IPv6 link-local address tenet gives a pod interface with MAC `mac`
/// (modified EUI-64, RFC 4291 appendix A). tenet sets it itself, with the
/// kernel's own generation turned off, so the guard knows it.
pub fn link_local(mac: MacAddr) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

fn elem(family: Family, set: &str, key: Vec<u8>, jump: Option<String>) -> Elem {
    Elem {
        family,
        table: nft::TABLE.to_owned(),
        set: set.to_owned(),
        key,
        jump,
    }
}

/// Every set element of `g`, grouped by set (one netlink message per set).
pub(crate) fn elems(g: &PortGuard) -> Vec<Elem> {
    let name = g.host_ifname.as_str();
    let mut out = Vec::new();
    let by_family = |v4: bool| g.addrs.iter().filter(move |a| a.is_ipv4() == v4);
    let mut families = vec![Family::Inet];
    if g.bridged {
        families.push(Family::Bridge);
        out.push(elem(
            Family::Bridge,
            "port_mac",
            key_ifname_mac(name, g.mac),
            None,
        ));
    }
    for f in families {
        for (v4, set) in [(true, "port_v4"), (false, "port_v6")] {
            for a in by_family(v4) {
                out.push(elem(f, set, key_ifname_ip(name, *a), None));
            }
        }
    }
    if !g.bridged {
        let chain = g
            .tenant_bridge
            .as_deref()
            .map(nft::svc_chain)
            .unwrap_or_else(|| SVC_NONE.to_owned());
        out.push(elem(Family::Inet, SVC_FROM, key_ifname(name), Some(chain)));
    }
    out
}

/// The sets a guard may have elements in: where DEL and CHECK look.
pub(crate) const GUARD_SETS: [(Family, &str); 6] = [
    (Family::Bridge, "port_mac"),
    (Family::Bridge, "port_v4"),
    (Family::Bridge, "port_v6"),
    (Family::Inet, "port_v4"),
    (Family::Inet, "port_v6"),
    (Family::Inet, SVC_FROM),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_is_modified_eui64() {
        let ll = link_local(MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]));
        assert_eq!(ll, "fe80::11:22ff:fe33:4455".parse::<Ipv6Addr>().unwrap());
        let ll = link_local(MacAddr([0x00, 0x11, 0x22, 0x33, 0x44, 0x55]));
        assert_eq!(ll, "fe80::211:22ff:fe33:4455".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn bridge_ports_and_host_links_get_their_elements() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let port = PortGuard {
            host_ifname: "tn0123456789ab".into(),
            bridged: true,
            mac,
            addrs: vec![
                "10.64.1.5".parse().unwrap(),
                "fd00::5".parse().unwrap(),
                IpAddr::V6(link_local(mac)),
            ],
            tenant_bridge: Some("tb-0123456789ab".into()),
        };
        let e = elems(&port);
        let names: Vec<_> = e
            .iter()
            .map(|e| format!("{:?}/{}", e.family, e.set))
            .collect();
        assert_eq!(
            names,
            [
                "Bridge/port_mac",
                "Inet/port_v4",
                "Inet/port_v6",
                "Inet/port_v6",
                "Bridge/port_v4",
                "Bridge/port_v6",
                "Bridge/port_v6",
            ]
        );
        assert!(e.iter().all(|e| e.jump.is_none()));
        let link = PortGuard {
            bridged: false,
            addrs: vec!["169.254.128.7".parse().unwrap()],
            ..port.clone()
        };
        let e = elems(&link);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].set, "port_v4");
        assert_eq!(e[1].set, SVC_FROM);
        assert_eq!(e[1].jump.as_deref(), Some("svc-tb-0123456789ab"));
        let orphan = PortGuard {
            tenant_bridge: None,
            ..link
        };
        assert_eq!(elems(&orphan)[1].jump.as_deref(), Some(SVC_NONE));
        // Every set an element goes to is one DEL and CHECK look in.
        for x in elems(&port).iter().chain(&elems(&orphan)) {
            assert!(GUARD_SETS.contains(&(x.family, x.set.as_str())), "{x:?}");
        }
    }
}
