//! Address authority: which addresses a plan may hand out, as the operator
//! declared them (the `[addresses]` section of `tenet.toml`).
//!
//! A policy module chooses *among* what the operator allowed; it never
//! widens it (docs/security.md). So:
//!
//! - an SDN-port pool, or a static address, must lie inside one of the
//!   configured pool supernets of its family;
//! - a host link (Rainbond's `eth1`) gets its address from the node's
//!   host-link range only: a plan may ask for a host link (and name a pool
//!   inside that range, which is checked), but never picks the address: the
//!   host replaces the request with the node's own host-link pool
//!   ([`AddressAuthority::assign_host_links`], on the typed plan), whose excluded ranges (the
//!   cloud metadata services by default) are never handed out;
//! - whatever is configured, the special ranges ([`special_range`]) are
//!   never allowed: loopback, multicast, unspecified, reserved, IPv4-mapped
//!   IPv6, and link-local outside the host-link range.
//!
//! What the configuration cannot know, the node's own addresses and routes,
//! is checked at ADD time by [`super::node`].

use std::net::IpAddr;

use ipnet::IpNet;

use super::IpFamily;
use super::valid::{Exclusion, PoolSpec, ValidPlan, family_of};

/// The pool supernets plans may use by default: the private ranges.
pub const DEFAULT_POOLS: &[&str] = &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"];
/// The host-link range by default (Rainbond's `eth1` pool).
pub const DEFAULT_HOST_LINKS: &[&str] = &["169.254.128.0/17"];
/// Never handed out to a host link by default: the cloud metadata, DNS and
/// time services at 169.254.169.x (AWS, GCP, Azure, OpenStack, …) and the
/// container metadata endpoints at 169.254.170.x (ECS, EKS pod identity). A
/// pod holding one of them would receive the node's requests to it.
pub const DEFAULT_HOST_LINK_EXCLUDE: &[&str] = &["169.254.169.0/24", "169.254.170.0/24"];

/// Ranges no plan may use, whatever the configuration says, with what they
/// are. Link-local ranges are allowed inside a configured host-link range.
const SPECIAL: &[(&str, &str, bool)] = &[
    // (range, what, link-local)
    ("0.0.0.0/8", "unspecified (\"this network\")", false),
    ("127.0.0.0/8", "loopback", false),
    ("169.254.0.0/16", "link-local", true),
    ("224.0.0.0/4", "multicast", false),
    ("240.0.0.0/4", "reserved and broadcast", false),
    ("::/128", "unspecified", false),
    ("::1/128", "loopback", false),
    ("::ffff:0:0/96", "IPv4-mapped", false),
    ("fe80::/10", "link-local", true),
    ("ff00::/8", "multicast", false),
];

/// Whether two CIDRs share any address.
pub fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The special range `net` overlaps, as "loopback (127.0.0.0/8)", if any.
/// Link-local ranges are only reported when `allow_link_local` is false.
pub fn special_range(net: IpNet, allow_link_local: bool) -> Option<String> {
    SPECIAL.iter().find_map(|(range, what, link_local)| {
        let r: IpNet = range.parse().expect("valid constant");
        (overlaps(net, r) && !(allow_link_local && *link_local)).then(|| format!("{what} ({r})"))
    })
}

fn list(nets: impl IntoIterator<Item = IpNet>) -> String {
    let v: Vec<String> = nets.into_iter().map(|n| n.to_string()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The operator's address authority, checked: build it with
/// [`AddressAuthority::new`] (from `tenet.toml`) or take the
/// [`Default`] (the built-in defaults above).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressAuthority {
    pools: Vec<IpNet>,
    host_links: Vec<IpNet>,
    host_link_exclude: Vec<IpNet>,
}

impl Default for AddressAuthority {
    fn default() -> Self {
        let parse = |v: &[&str]| {
            v.iter()
                .map(|s| s.parse().expect("valid constant"))
                .collect()
        };
        Self::new(
            parse(DEFAULT_POOLS),
            parse(DEFAULT_HOST_LINKS),
            parse(DEFAULT_HOST_LINK_EXCLUDE),
        )
        .expect("the defaults are valid")
    }
}

impl AddressAuthority {
    /// Checks a configuration: every range canonical (no host bits), pools
    /// clear of the special ranges, host-link ranges clear of them but for
    /// link-local, at most one host-link range per family, no pool
    /// overlapping a host-link range, and every exclusion inside a host-link
    /// range. Errors name the key (`addresses.pools[2]`, …).
    pub fn new(
        pools: Vec<IpNet>,
        host_links: Vec<IpNet>,
        host_link_exclude: Vec<IpNet>,
    ) -> Result<Self, String> {
        let canonical = |key: &str, i: usize, n: &IpNet| {
            if n.trunc() != *n {
                Err(format!(
                    "addresses.{key}[{i}]: {n} has host bits set (did you mean {}?)",
                    n.trunc()
                ))
            } else {
                Ok(())
            }
        };
        for (i, p) in pools.iter().enumerate() {
            canonical("pools", i, p)?;
            if let Some(s) = special_range(*p, false) {
                return Err(format!(
                    "addresses.pools[{i}]: {p} overlaps the {s} range, which no pool may use"
                ));
            }
        }
        for (i, h) in host_links.iter().enumerate() {
            canonical("host_links", i, h)?;
            if let Some(s) = special_range(*h, true) {
                return Err(format!(
                    "addresses.host_links[{i}]: {h} overlaps the {s} range, which no host link may use"
                ));
            }
            if host_links[..i]
                .iter()
                .any(|o| family_of(*o) == family_of(*h))
            {
                return Err(format!(
                    "addresses.host_links[{i}]: {h}: at most one host-link range per address family"
                ));
            }
            if let Some(p) = pools.iter().find(|p| overlaps(**p, *h)) {
                return Err(format!(
                    "addresses.host_links[{i}]: {h} overlaps the pool supernet {p}: host links and pod pools must be apart"
                ));
            }
        }
        for (i, x) in host_link_exclude.iter().enumerate() {
            canonical("host_link_exclude", i, x)?;
            if !host_links.iter().any(|h| overlaps(*h, *x)) {
                return Err(format!(
                    "addresses.host_link_exclude[{i}]: {x} is not inside a host-link range ({})",
                    list(host_links.iter().copied())
                ));
            }
        }
        Ok(Self {
            pools,
            host_links,
            host_link_exclude,
        })
    }

    /// The pool supernets of `family`.
    pub fn pools(&self, family: IpFamily) -> impl Iterator<Item = IpNet> + '_ {
        self.pools
            .iter()
            .copied()
            .filter(move |p| family_of(*p) == family)
    }

    /// The host-link range of `family`, if one is configured.
    pub fn host_link(&self, family: IpFamily) -> Option<IpNet> {
        self.host_links
            .iter()
            .copied()
            .find(|h| family_of(*h) == family)
    }

    /// Checks the range an SDN-port address may come from (a pool's
    /// supernet, or a static address as a host route or with its prefix):
    /// inside one configured pool supernet of its family and clear of the
    /// special ranges. The message names the allowed ranges.
    pub fn check_tenant_range(&self, net: IpNet) -> Result<(), String> {
        if let Some(s) = special_range(net, false) {
            return Err(format!(
                "{net} overlaps the {s} range, which no plan may use"
            ));
        }
        let family = family_of(net);
        if !self.pools(family).any(|p| p.contains(&net)) {
            return Err(format!(
                "{net} is outside the pools this node allows ({}; tenet.toml [addresses] pools)",
                list(self.pools(family))
            ));
        }
        Ok(())
    }

    /// Checks a host link's requested pool supernet: inside the host-link
    /// range of its family.
    pub fn check_host_link_range(&self, net: IpNet) -> Result<(), String> {
        let family = family_of(net);
        match self.host_link(family) {
            Some(h) if h.contains(&net) => Ok(()),
            Some(h) => Err(format!(
                "{net} is outside the host-link range {h} (tenet.toml [addresses] host_links)"
            )),
            None => Err(format!(
                "no {} host-link range is configured on this node (tenet.toml [addresses] host_links)",
                match family {
                    IpFamily::Ipv4 => "IPv4",
                    IpFamily::Ipv6 => "IPv6",
                }
            )),
        }
    }

    /// The node's host-link pool of `family`, typed: the whole host-link
    /// range as one node-local subnet, its exclusions excluded.
    pub fn host_link_spec(&self, family: IpFamily) -> Option<PoolSpec> {
        let range = self.host_link(family)?;
        Some(PoolSpec {
            name: match family {
                IpFamily::Ipv4 => "host-link-v4",
                IpFamily::Ipv6 => "host-link-v6",
            }
            .into(),
            supernet: range,
            subnet_len: range.prefix_len(),
            exclude: self
                .host_link_exclude
                .iter()
                .filter(|x| overlaps(range, **x))
                .map(|x| Exclusion::cidr(*x))
                .collect(),
        })
    }

    /// Replaces every host-link address request of a validated plan by the
    /// node's host-link pool of its family (keeping the pool's name, if the
    /// plan named one): the plan asks for a host link, the node decides
    /// where its address comes from. Requests whose family
    /// has no range were refused by validation already.
    pub fn assign_host_links(&self, plan: &mut ValidPlan) {
        for ifc in plan
            .interfaces
            .iter_mut()
            .filter(|i| i.kind == super::InterfaceKind::HostLink)
        {
            for a in &mut ifc.addresses {
                // The pool's name is kept when the plan gave one (a
                // validated name): a node whose link store already holds
                // the range under that name keeps working after an upgrade.
                // Only the range, its geometry and exclusions are the node's.
                let name = a.pool.take().map(|p| p.name);
                a.pool = self.host_link_spec(a.family).map(|mut p| {
                    if let Some(n) = name {
                        p.name = n;
                    }
                    p
                });
                a.static_address = None;
            }
        }
    }

    /// Whether `ip` is one of the addresses no host link is given.
    pub fn host_link_excluded(&self, ip: IpAddr) -> bool {
        self.host_link_exclude.iter().any(|x| x.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| net(s)).collect()
    }

    #[test]
    fn the_defaults_allow_the_private_ranges_only() {
        let a = AddressAuthority::default();
        for ok in [
            "10.64.0.0/12",
            "172.20.0.0/16",
            "192.168.1.0/24",
            "fd00:64::/48",
            "10.64.9.20/32",
        ] {
            a.check_tenant_range(net(ok)).unwrap();
        }
        for (bad, why) in [
            ("8.0.0.0/7", "outside the pools"),
            ("0.0.0.0/0", "unspecified"),
            ("0.0.0.0/1", "unspecified"),
            ("128.0.0.0/1", "link-local"),
            ("240.0.0.0/8", "reserved"),
            ("127.0.0.0/8", "loopback"),
            ("169.254.169.0/24", "link-local"),
            ("224.0.0.0/24", "multicast"),
            ("10.0.0.0/7", "outside the pools"),
            ("::/0", "unspecified"),
            ("::1/128", "loopback"),
            ("fe80::/64", "link-local"),
            ("ff02::/16", "multicast"),
            ("::ffff:10.0.0.0/104", "IPv4-mapped"),
            ("2001:db8::/32", "outside the pools"),
        ] {
            let e = a.check_tenant_range(net(bad)).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = a.check_tenant_range(net("8.8.8.0/24")).unwrap_err();
        assert!(
            e.contains("10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16"),
            "{e}"
        );
    }

    #[test]
    fn host_links_come_from_the_host_link_range_and_skip_the_metadata_services() {
        let a = AddressAuthority::default();
        a.check_host_link_range(net("169.254.128.0/17")).unwrap();
        a.check_host_link_range(net("169.254.200.0/24")).unwrap();
        for bad in ["169.254.0.0/16", "10.96.0.0/12", "169.254.1.0/24"] {
            let e = a.check_host_link_range(net(bad)).unwrap_err();
            assert!(e.contains("169.254.128.0/17"), "{e}");
        }
        let e = a.check_host_link_range(net("fd00::/64")).unwrap_err();
        assert!(e.contains("no IPv6 host-link range"), "{e}");
        let p = a.host_link_spec(IpFamily::Ipv4).unwrap().to_wire();
        assert_eq!(
            (p.name.as_str(), p.supernet.as_str(), p.subnet_len),
            ("host-link-v4", "169.254.128.0/17", 17)
        );
        assert_eq!(p.exclude, ["169.254.169.0/24", "169.254.170.0/24"]);
        assert!(a.host_link_excluded("169.254.169.254".parse().unwrap()));
        assert!(a.host_link_spec(IpFamily::Ipv6).is_none());
    }

    #[test]
    fn configurations_that_widen_the_boundary_are_refused() {
        let ok = || nets(DEFAULT_POOLS);
        for (pools, links, excl, key) in [
            (nets(&["127.0.0.0/8"]), vec![], vec![], "addresses.pools[0]"),
            (nets(&["0.0.0.0/0"]), vec![], vec![], "addresses.pools[0]"),
            (
                nets(&["169.254.0.0/16"]),
                vec![],
                vec![],
                "addresses.pools[0]",
            ),
            (nets(&["10.0.0.1/8"]), vec![], vec![], "host bits"),
            (
                ok(),
                nets(&["127.0.0.0/24"]),
                vec![],
                "addresses.host_links[0]",
            ),
            (
                ok(),
                nets(&["10.200.0.0/16"]),
                vec![],
                "overlaps the pool supernet",
            ),
            (
                ok(),
                nets(&["169.254.128.0/17", "169.254.0.0/24"]),
                vec![],
                "one host-link range per address family",
            ),
            (
                ok(),
                nets(&["169.254.128.0/17"]),
                nets(&["10.0.0.0/24"]),
                "addresses.host_link_exclude[0]",
            ),
        ] {
            let e = AddressAuthority::new(pools, links, excl).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        }
        // Narrowing is fine, and so is no host link at all.
        let a = AddressAuthority::new(nets(&["10.64.0.0/12"]), vec![], vec![]).unwrap();
        assert!(a.check_tenant_range(net("10.88.0.0/16")).is_err());
        assert!(a.check_host_link_range(net("169.254.128.0/17")).is_err());
    }
}
