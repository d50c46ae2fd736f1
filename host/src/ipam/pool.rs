//! Pool geometry, shared by both address stores and free of state: address
//! ↔ integer arithmetic, a pool checked from a typed request
//! ([`ParsedPool`]: supernet, tenant subnet length, merged exclusions), one
//! tenant subnet's layout ([`Geom`]: network, gateway, first and last
//! assignable host), static addresses checked against a pool
//! ([`check_static`]) and the check that a retried reserve asks for what its
//! record holds ([`check_same_request`]). The local allocator
//! ([`super::alloc`]) and the etcd store ([`super::etcd`]) both build on it;
//! neither imports the other.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::{Allocation, AttachmentKey, IpamError};
use crate::plan::{AddressSpec, IpFamily, StaticAddress};

/// An address as an integer (IPv4 in the low 32 bits), for block math.
pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of integer `v` in the family `v4` says.
pub(crate) fn to_ip(v: u128, v4: bool) -> IpAddr {
    if v4 {
        // Callers only pass values inside a v4 subnet.
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// A pool's exclusions, sorted and merged.
#[derive(Debug, Clone, Default)]
pub(crate) struct Excludes(Vec<(u128, u128)>);

impl Excludes {
    pub(crate) fn covering(&self, x: u128) -> Option<u128> {
        let i = self.0.partition_point(|(s, _)| *s <= x);
        if i == 0 {
            return None;
        }
        let (_, e) = self.0[i - 1];
        (e >= x).then_some(e)
    }

    /// True when every address of `[a, b]` is excluded.
    pub(crate) fn covers_all(&self, a: u128, b: u128) -> bool {
        self.covering(a).is_some_and(|e| e >= b)
    }
}

/// Geometry of one tenant subnet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geom {
    pub net: u128,
    pub last: u128,
    pub v4: bool,
    pub prefix: u8,
}

impl Geom {
    pub(crate) fn of(subnet: IpNet) -> Self {
        Geom {
            net: to_u128(subnet.network()),
            last: to_u128(subnet.broadcast()),
            v4: matches!(subnet, IpNet::V4(_)),
            prefix: subnet.prefix_len(),
        }
    }
    pub(crate) fn gateway(&self) -> u128 {
        self.net + 1
    }
    pub(crate) fn first_host(&self) -> u128 {
        self.net + 2
    }
    /// Last assignable address: v4 keeps its broadcast back.
    pub(crate) fn last_host(&self) -> u128 {
        if self.v4 { self.last - 1 } else { self.last }
    }
    pub(crate) fn subnet(&self) -> IpNet {
        IpNet::new(to_ip(self.net, self.v4), self.prefix).expect("prefix checked")
    }
    pub(crate) fn contains(&self, x: u128) -> bool {
        self.net <= x && x <= self.last
    }
}

/// A pool from a typed request, checked, its exclusions merged.
#[derive(Debug, Clone)]
pub(crate) struct ParsedPool {
    pub name: String,
    pub supernet: IpNet,
    pub subnet_len: u8,
    pub exclude_src: Vec<String>,
    pub excludes: Excludes,
    pub v4: bool,
}

impl ParsedPool {
    /// Refuses this pool when it is recorded with another geometry (both
    /// stores: a pool's geometry may not change while it holds subnets).
    pub(crate) fn check_geometry(&self, supernet: IpNet, subnet_len: u8) -> Result<(), IpamError> {
        if supernet == self.supernet && subnet_len == self.subnet_len {
            return Ok(());
        }
        Err(IpamError::PoolConflict {
            pool: self.name.clone(),
            detail: format!(
                "recorded as {supernet} with /{subnet_len} subnets, now requested as {} with /{}; \
                 release its tenants' addresses first",
                self.supernet, self.subnet_len
            ),
        })
    }

    /// The pool of a typed request, checked against what the stores need
    /// (a pool, a name, its family, a subnet length with room for a
    /// gateway and a pod) and its exclusions merged. Nothing is parsed
    /// here: the request's values were parsed by plan validation.
    pub(crate) fn of(req: &AddressSpec) -> Result<Self, IpamError> {
        let invalid = |reason: String| IpamError::InvalidRequest { reason };
        let pool = req
            .pool
            .as_ref()
            .ok_or_else(|| invalid("address request has no pool".into()))?;
        if pool.name.is_empty() {
            return Err(invalid("pool has an empty name".into()));
        }
        let supernet = pool.supernet.trunc();
        let v4 = matches!(supernet, IpNet::V4(_));
        let want_v4 = req.family == IpFamily::Ipv4;
        if v4 != want_v4 {
            return Err(invalid(format!(
                "pool {}: supernet {supernet} does not match the requested family {:?}",
                pool.name, req.family
            )));
        }
        // A v4 subnet needs room for network, gateway, broadcast and one
        // host (/30); a v6 one for subnet-router anycast, gateway and a host.
        let max_len = if v4 { 30 } else { 126 };
        let min_len = supernet.prefix_len().max(if v4 { 0 } else { 1 });
        if pool.subnet_len < min_len || pool.subnet_len > max_len {
            return Err(invalid(format!(
                "pool {}: subnet length /{} must lie between the supernet's /{} and /{max_len}",
                pool.name,
                pool.subnet_len,
                supernet.prefix_len()
            )));
        }
        let mut ranges = Vec::with_capacity(pool.exclude.len());
        for x in &pool.exclude {
            if x.first().is_ipv4() != v4 {
                return Err(invalid(format!(
                    "pool {}: exclude {x} is not of the pool's family",
                    pool.name
                )));
            }
            ranges.push((to_u128(x.first()), to_u128(x.last())));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match merged.last_mut() {
                Some((_, le)) if s <= le.saturating_add(1) => *le = (*le).max(e),
                _ => merged.push((s, e)),
            }
        }
        Ok(ParsedPool {
            name: pool.name.clone(),
            supernet,
            subnet_len: pool.subnet_len,
            exclude_src: pool.exclude.iter().map(|x| x.text().to_owned()).collect(),
            excludes: Excludes(merged),
            v4,
        })
    }

    pub(crate) fn same_geometry(&self, other: &ParsedPool) -> bool {
        self.supernet == other.supernet && self.subnet_len == other.subnet_len
    }

    pub(crate) fn subnet_size(&self) -> u128 {
        let bits = if self.v4 { 32 } else { 128 };
        // `parse` keeps a v6 subnet_len ≥ 1, so the shift stays below 128.
        1u128 << (bits - u32::from(self.subnet_len))
    }
}

/// A static address against its pool: the address as an integer.
pub(crate) fn check_static(
    pool: &ParsedPool,
    tenant: &str,
    s: &StaticAddress,
) -> Result<u128, IpamError> {
    let ip = s.addr;
    if ip.is_ipv4() != pool.v4 {
        return Err(IpamError::InvalidRequest {
            reason: format!("static address {s} is not of pool {}'s family", pool.name),
        });
    }
    if let Some(p) = s.prefix
        && p != pool.subnet_len
    {
        return Err(IpamError::InvalidRequest {
            reason: format!(
                "static address {s} has prefix /{p} but pool {}'s tenant subnets are /{}",
                pool.name, pool.subnet_len
            ),
        });
    }
    if !pool.supernet.contains(&ip) {
        return Err(IpamError::StaticOutOfRange {
            address: ip,
            pool: pool.name.clone(),
            tenant: tenant.to_owned(),
            reason: format!("it is outside the pool's supernet {}", pool.supernet),
        });
    }
    Ok(to_u128(ip))
}

/// A retried reserve must ask for what the record holds: the record's
/// tenant (`rec_tenant`) and addresses (`held`) against the request.
pub(crate) fn check_same_request(
    key: &AttachmentKey,
    rec_tenant: &str,
    held: &[Allocation],
    tenant: &str,
    requests: &[AddressSpec],
) -> Result<(), IpamError> {
    let conflict = |detail: String| IpamError::AttachmentConflict {
        key: key.clone(),
        detail,
    };
    if rec_tenant != tenant {
        return Err(conflict(format!(
            "it belongs to tenant {rec_tenant}, not {tenant}"
        )));
    }
    if held.len() != requests.len() {
        return Err(conflict(format!(
            "it holds {} addresses, {} requested",
            held.len(),
            requests.len()
        )));
    }
    for (a, r) in held.iter().zip(requests) {
        let pool = r.pool.as_ref().map(|p| p.name.as_str()).unwrap_or("");
        let fam_ok = a.address.addr().is_ipv4() == (r.family == IpFamily::Ipv4);
        let static_ok = r.static_address.is_none_or(|s| s.addr == a.address.addr());
        if a.pool != pool || !fam_ok || !static_ok {
            return Err(conflict(format!(
                "it holds {} from pool {}, which does not match the request",
                a.address, a.pool
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Exclusion, PoolSpec};

    fn req(family: IpFamily, supernet: &str, len: u8, exclude: &[&str]) -> AddressSpec {
        AddressSpec {
            family,
            pool: Some(PoolSpec {
                name: "p".into(),
                supernet: supernet.parse().unwrap(),
                subnet_len: len,
                exclude: exclude
                    .iter()
                    .map(|s| Exclusion::parse(s).unwrap())
                    .collect(),
            }),
            static_address: None,
        }
    }

    fn stat(s: &str) -> StaticAddress {
        StaticAddress::parse(s).unwrap()
    }

    fn ip(s: &str) -> u128 {
        to_u128(s.parse().unwrap())
    }

    #[test]
    fn a_pool_merges_its_exclusions_and_truncates_its_supernet() {
        let p = ParsedPool::of(&req(
            IpFamily::Ipv4,
            "10.1.2.3/16",
            24,
            &["10.1.0.0/24", "10.1.1.0-10.1.1.255", "10.1.5.7/32"],
        ))
        .unwrap();
        assert_eq!(p.supernet, "10.1.0.0/16".parse::<IpNet>().unwrap());
        assert_eq!(p.subnet_size(), 256);
        // The /24 and the adjacent range merge into one interval.
        assert!(p.excludes.covers_all(ip("10.1.0.0"), ip("10.1.1.255")));
        assert!(!p.excludes.covers_all(ip("10.1.0.0"), ip("10.1.2.0")));
        assert_eq!(p.excludes.covering(ip("10.1.5.7")), Some(ip("10.1.5.7")));
        assert_eq!(p.excludes.covering(ip("10.1.5.8")), None);
    }

    #[test]
    fn a_pool_is_refused_for_the_wrong_family_a_bad_length_or_exclude() {
        for (r, what) in [
            (req(IpFamily::Ipv6, "10.0.0.0/8", 24, &[]), "family"),
            (req(IpFamily::Ipv4, "10.0.0.0/8", 31, &[]), "/31"),
            (req(IpFamily::Ipv4, "10.0.0.0/16", 8, &[]), "/8"),
            (req(IpFamily::Ipv6, "fd00::/64", 127, &[]), "/127"),
            (
                req(IpFamily::Ipv4, "10.0.0.0/8", 24, &["fd00::1/128"]),
                "exclude",
            ),
            // A supernet that is not a CIDR, or a reversed range, cannot
            // reach a store: neither can be built as a typed request.
        ] {
            let e = ParsedPool::of(&r).unwrap_err();
            assert!(
                matches!(e, IpamError::InvalidRequest { .. }),
                "{what}: {e:?}"
            );
        }
    }

    #[test]
    fn a_subnet_keeps_network_gateway_and_v4_broadcast_back() {
        let g = Geom::of("10.0.0.0/30".parse().unwrap());
        assert_eq!(
            to_ip(g.gateway(), g.v4),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(g.first_host(), ip("10.0.0.2"));
        assert_eq!(g.last_host(), ip("10.0.0.2"));
        assert_eq!(g.subnet(), "10.0.0.0/30".parse::<IpNet>().unwrap());
        let g6 = Geom::of("fd00::/126".parse().unwrap());
        assert_eq!(g6.last_host(), ip("fd00::3"));
        assert!(g6.contains(ip("fd00::3")) && !g6.contains(ip("fd00::4")));
    }

    #[test]
    fn a_static_address_must_fit_the_pool() {
        let p = ParsedPool::of(&req(IpFamily::Ipv4, "10.0.0.0/16", 24, &[])).unwrap();
        assert_eq!(
            check_static(&p, "t", &stat("10.0.3.4")).unwrap(),
            ip("10.0.3.4")
        );
        assert_eq!(
            check_static(&p, "t", &stat("10.0.3.4/24")).unwrap(),
            ip("10.0.3.4")
        );
        assert!(matches!(
            check_static(&p, "t", &stat("10.0.3.4/25")),
            Err(IpamError::InvalidRequest { .. })
        ));
        assert!(matches!(
            check_static(&p, "t", &stat("fd00::1")),
            Err(IpamError::InvalidRequest { .. })
        ));
        assert!(matches!(
            check_static(&p, "t", &stat("10.1.0.1")),
            Err(IpamError::StaticOutOfRange { .. })
        ));
    }

    #[test]
    fn a_retry_must_ask_for_what_the_record_holds() {
        let key = AttachmentKey::new("n", "c", "eth0");
        let held = [Allocation {
            address: "10.0.0.2/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            subnet: "10.0.0.0/24".parse().unwrap(),
            pool: "p".into(),
            tenant: "t".into(),
        }];
        let mut r = req(IpFamily::Ipv4, "10.0.0.0/16", 24, &[]);
        check_same_request(&key, "t", &held, "t", std::slice::from_ref(&r)).unwrap();
        let conflict =
            |res: Result<(), IpamError>| matches!(res, Err(IpamError::AttachmentConflict { .. }));
        assert!(conflict(check_same_request(
            &key,
            "t",
            &held,
            "u",
            std::slice::from_ref(&r)
        )));
        assert!(conflict(check_same_request(&key, "t", &held, "t", &[])));
        r.static_address = Some(stat("10.0.0.3"));
        assert!(conflict(check_same_request(
            &key,
            "t",
            &held,
            "t",
            std::slice::from_ref(&r)
        )));
        r.static_address = Some(stat("10.0.0.2/24"));
        check_same_request(&key, "t", &held, "t", &[r]).unwrap();
    }
}
