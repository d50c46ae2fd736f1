//! The typed plan: what validation hands to everything after it.
//!
//! The wire [`Plan`](super::Plan) carries addresses as the WIT and JSON
//! carry them, as strings. [`super::validate`] parses each of them once,
//! refusing a bad one with its field's name, and returns a [`ValidPlan`]
//! whose addresses, prefixes, ranges, gateways, MACs and name servers are
//! `ipnet`/`std::net` values. The node check, the layout, the address
//! stores and the CNI result read those values; none of them parses a
//! string of the plan, so none of them can meet a malformed one.
//!
//! The wire plan stays what stages exchange and what `tenetctl plan`
//! prints; nothing here is serialized. Where a store records a piece of a
//! pool (its exclusions), [`Exclusion::text`] keeps the validated string,
//! so records read the same as before.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use super::{InterfaceKind, IpFamily, Kv};
use crate::netns::MacAddr;

/// The family of an address.
pub fn family_of_ip(a: IpAddr) -> IpFamily {
    match a {
        IpAddr::V4(_) => IpFamily::Ipv4,
        IpAddr::V6(_) => IpFamily::Ipv6,
    }
}

/// The family of a CIDR.
pub fn family_of(n: IpNet) -> IpFamily {
    family_of_ip(n.addr())
}

/// A range a pool never hands out: inclusive bounds of one family, and the
/// text it was written as (what the stores record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusion {
    first: IpAddr,
    last: IpAddr,
    text: String,
}

impl Exclusion {
    /// The range `[first, last]`, written `first-last`; `None` when the
    /// bounds differ in family or are reversed.
    pub fn range(first: IpAddr, last: IpAddr) -> Option<Self> {
        (family_of_ip(first) == family_of_ip(last) && first <= last).then(|| Exclusion {
            first,
            last,
            text: format!("{first}-{last}"),
        })
    }

    /// Every address of `net`, written as the CIDR.
    pub fn cidr(net: IpNet) -> Self {
        Exclusion {
            first: net.network(),
            last: net.broadcast(),
            text: net.to_string(),
        }
    }

    /// Parses an exclusion as a plan writes it: a CIDR or an inclusive
    /// `a-b` range, exactly as written (no spaces: what is stored is what
    /// was checked). The validator's parser; `None` when it is neither.
    pub fn parse(s: &str) -> Option<Self> {
        let mut x = match s.split_once('-') {
            Some((a, b)) => Self::range(IpAddr::from_str(a).ok()?, IpAddr::from_str(b).ok()?)?,
            None => Self::cidr(IpNet::from_str(s).ok()?),
        };
        s.clone_into(&mut x.text);
        Some(x)
    }

    /// The first address excluded.
    pub fn first(&self) -> IpAddr {
        self.first
    }

    /// The last address excluded.
    pub fn last(&self) -> IpAddr {
        self.last
    }

    /// The exclusion as written in the plan (or by [`Self::range`] and
    /// [`Self::cidr`]).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Its family.
    pub fn family(&self) -> IpFamily {
        family_of_ip(self.first)
    }

    /// Whether `ip` is excluded.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.first <= ip && ip <= self.last
    }
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A pool the address store carves per-tenant subnets from, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// Stable name of the pool in the address store.
    pub name: String,
    /// Supernet tenant subnets are carved from.
    pub supernet: IpNet,
    /// Prefix length of each tenant subnet.
    pub subnet_len: u8,
    /// Ranges never handed out.
    pub exclude: Vec<Exclusion>,
}

impl PoolSpec {
    /// The pool as the wire plan writes it (exclusions as written).
    pub fn to_wire(&self) -> super::Pool {
        super::Pool {
            name: self.name.clone(),
            supernet: self.supernet.to_string(),
            subnet_len: self.subnet_len,
            exclude: self.exclude.iter().map(|x| x.text.clone()).collect(),
        }
    }
}

/// A specific address to honour: the address and, when the plan gave one,
/// its prefix length (which must be the pool's subnet length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticAddress {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length written with it, if any.
    pub prefix: Option<u8>,
}

impl StaticAddress {
    /// Parses `10.1.2.3` or `10.1.2.3/24` (the validator's parser).
    pub fn parse(s: &str) -> Option<Self> {
        if s.contains('/') {
            let n = IpNet::from_str(s).ok()?;
            Some(StaticAddress {
                addr: n.addr(),
                prefix: Some(n.prefix_len()),
            })
        } else {
            Some(StaticAddress {
                addr: IpAddr::from_str(s).ok()?,
                prefix: None,
            })
        }
    }

    /// The subnet the address names (its prefix given), or the address as
    /// a host route.
    pub fn net(&self) -> IpNet {
        self.prefix
            .and_then(|p| IpNet::new(self.addr, p).ok())
            .map_or(IpNet::from(self.addr), |n| n.trunc())
    }
}

impl fmt::Display for StaticAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix {
            Some(p) => write!(f, "{}/{p}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// One address an interface needs, typed: what the address stores take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressSpec {
    /// Address family.
    pub family: IpFamily,
    /// Pool to allocate from.
    pub pool: Option<PoolSpec>,
    /// A specific address to honour.
    pub static_address: Option<StaticAddress>,
}

/// An interface to create in the pod, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidInterface {
    /// Name inside the pod (a name the kernel accepts).
    pub name: String,
    /// What it attaches to.
    pub kind: InterfaceKind,
    /// Addresses it needs.
    pub addresses: Vec<AddressSpec>,
    /// Requested MAC address (unicast).
    pub mac: Option<MacAddr>,
    /// Requested MTU (68..=65535).
    pub mtu: Option<u32>,
}

/// How a route reaches its destination, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The gateway of the interface's subnet, known once allocated.
    SubnetGateway,
    /// An explicit gateway of the destination's family.
    Address(IpAddr),
    /// Directly on the link.
    OnLink,
}

/// A route inside the pod, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRoute {
    /// Destination (canonical: no host bits).
    pub dst: IpNet,
    /// Planned pod interface the route leaves through.
    pub interface: String,
    /// Next hop.
    pub via: Via,
    /// Route metric.
    pub metric: Option<u32>,
    /// Route MTU.
    pub mtu: Option<u32>,
}

/// DNS settings, typed (name servers are addresses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidDns {
    /// Name servers.
    pub nameservers: Vec<IpAddr>,
    /// Local domain.
    pub domain: Option<String>,
    /// Search domains.
    pub search: Vec<String>,
    /// Resolver options.
    pub options: Vec<String>,
}

impl ValidDns {
    /// The CNI result's form.
    pub fn to_wire(&self) -> super::Dns {
        super::Dns {
            nameservers: self.nameservers.iter().map(ToString::to_string).collect(),
            domain: self.domain.clone(),
            search: self.search.clone(),
            options: self.options.clone(),
        }
    }
}

/// A plan that passed validation, typed: what apply consumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidPlan {
    /// The tenant (a safe id once the plan is complete).
    pub tenant: String,
    /// Interfaces, the primary (CNI_IFNAME) first.
    pub interfaces: Vec<ValidInterface>,
    /// Routes inside the pod.
    pub routes: Vec<ValidRoute>,
    /// DNS settings for the result.
    pub dns: ValidDns,
    /// Pod sysctls (allowed keys only).
    pub sysctls: Vec<Kv>,
    /// Free-form hints for backends.
    pub annotations: Vec<Kv>,
}

impl ValidPlan {
    /// The interface named `name`, if planned.
    pub fn interface(&self, name: &str) -> Option<&ValidInterface> {
        self.interfaces.iter().find(|i| i.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn exclusions_keep_their_text_and_bounds() {
        let r = Exclusion::parse("10.65.0.10-10.65.0.20").unwrap();
        assert_eq!((r.first(), r.last()), (ip("10.65.0.10"), ip("10.65.0.20")));
        assert_eq!(r.text(), "10.65.0.10-10.65.0.20");
        assert!(r.contains(ip("10.65.0.15")) && !r.contains(ip("10.65.0.21")));
        let c = Exclusion::parse("fd00::/120").unwrap();
        assert_eq!((c.first(), c.last()), (ip("fd00::"), ip("fd00::ff")));
        assert_eq!(c.family(), IpFamily::Ipv6);
        for bad in [
            "banana",
            "10.0.0.9-10.0.0.1",
            "10.0.0.1-fd00::1",
            " 10.0.0.0/24",
            "10.0.0.1 - 10.0.0.2",
            "10.0.0.1",
        ] {
            assert!(Exclusion::parse(bad).is_none(), "{bad}");
        }
        assert!(Exclusion::range(ip("10.0.0.2"), ip("10.0.0.1")).is_none());
        assert_eq!(
            Exclusion::cidr("10.0.0.0/30".parse().unwrap()).text(),
            "10.0.0.0/30"
        );
    }

    #[test]
    fn static_addresses_with_and_without_prefix() {
        let s = StaticAddress::parse("10.64.1.5/24").unwrap();
        assert_eq!((s.addr, s.prefix), (ip("10.64.1.5"), Some(24)));
        assert_eq!(s.net(), "10.64.1.0/24".parse::<IpNet>().unwrap());
        assert_eq!(s.to_string(), "10.64.1.5/24");
        let h = StaticAddress::parse("fd00::5").unwrap();
        assert_eq!(h.net(), "fd00::5/128".parse::<IpNet>().unwrap());
        assert!(StaticAddress::parse("10.64.1.5/33").is_none());
        assert!(StaticAddress::parse("host").is_none());
    }
}
