//! Typed address requests for the address-store tests (what the stores
//! take: plan validation parsed them; here they are built from constants).
#![allow(dead_code)]

use tenet::plan::{AddressSpec, Exclusion, IpFamily, PoolSpec, StaticAddress};

/// A pool: its supernet a CIDR, each exclusion a CIDR or an `a-b` range.
pub fn pool(name: &str, supernet: &str, len: u8, exclude: &[&str]) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        supernet: supernet.parse().unwrap(),
        subnet_len: len,
        exclude: exclude
            .iter()
            .map(|s| Exclusion::parse(s).unwrap())
            .collect(),
    }
}

/// An IPv4 address from `p`.
pub fn v4(p: &PoolSpec) -> AddressSpec {
    AddressSpec {
        family: IpFamily::Ipv4,
        pool: Some(p.clone()),
        static_address: None,
    }
}

/// An IPv6 address from `p`.
pub fn v6(p: &PoolSpec) -> AddressSpec {
    AddressSpec {
        family: IpFamily::Ipv6,
        pool: Some(p.clone()),
        static_address: None,
    }
}

/// `r` for the static address `addr` (`10.0.5.20` or `10.0.5.20/24`).
pub fn fixed(mut r: AddressSpec, addr: &str) -> AddressSpec {
    r.static_address = Some(StaticAddress::parse(addr).unwrap());
    r
}

/// The pool most tests use: 10.0.0.0/16 in /24 tenant subnets.
pub fn pods() -> PoolSpec {
    pool("pods", "10.0.0.0/16", 24, &[])
}
