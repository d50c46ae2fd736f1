//! Address helpers for stages (no_std: `core::net` only).

use alloc::format;
use alloc::string::String;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::str::FromStr;

use crate::IpFamily;

/// An address with a prefix length, e.g. `10.64.0.0/12`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address part.
    pub addr: IpAddr,
    /// The prefix length.
    pub len: u8,
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn from_bits(v: u128, width: u8) -> IpAddr {
    if width == 32 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// The family of an address.
pub fn family(ip: IpAddr) -> IpFamily {
    if ip.is_ipv4() {
        IpFamily::Ipv4
    } else {
        IpFamily::Ipv6
    }
}

impl Cidr {
    /// Parses `addr/len`; the message names the input.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (missing /prefix)"))?;
        let addr = IpAddr::from_str(a).map_err(|_| format!("{s:?} is not a CIDR"))?;
        let len: u8 = l.parse().map_err(|_| format!("{s:?} is not a CIDR"))?;
        if len > bits(addr).1 {
            return Err(format!("{s:?}: prefix /{len} is too long"));
        }
        Ok(Cidr { addr, len })
    }

    /// The address family.
    pub fn family(&self) -> IpFamily {
        family(self.addr)
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        let (v, w) = bits(self.addr);
        let mask = if self.len == 0 {
            0
        } else {
            (!0u128) << (128 - u32::from(self.len)) >> (128 - u32::from(w))
        };
        from_bits(v & mask, w)
    }

    /// True when no host bits are set.
    pub fn is_canonical(&self) -> bool {
        self.network() == self.addr
    }

    /// True when `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if family(ip) != self.family() {
            return false;
        }
        let (v, w) = bits(ip);
        let shift = u32::from(w - self.len);
        let (n, _) = bits(self.network());
        shift >= 128 || (v >> shift) == (n >> shift)
    }

    /// True when `other` lies entirely inside.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// True for a default route (`/0`).
    pub fn is_default(&self) -> bool {
        self.len == 0
    }
}

impl core::fmt::Display for Cidr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Parses `addr` or `addr/len`, returning the address and the prefix if any.
pub fn parse_address(s: &str) -> Result<(IpAddr, Option<u8>), String> {
    if s.contains('/') {
        let c = Cidr::parse(s)?;
        Ok((c.addr, Some(c.len)))
    } else {
        IpAddr::from_str(s)
            .map(|a| (a, None))
            .map_err(|_| format!("{s:?} is not an IP address"))
    }
}

/// An inclusive range from a CIDR (`10.0.0.0/30`) or `a-b` form.
pub fn parse_range(s: &str) -> Result<(IpAddr, IpAddr), String> {
    if let Some((a, b)) = s.split_once('-') {
        let a = IpAddr::from_str(a.trim()).map_err(|_| format!("{s:?} is not a range"))?;
        let b = IpAddr::from_str(b.trim()).map_err(|_| format!("{s:?} is not a range"))?;
        if family(a) != family(b) || a > b {
            return Err(format!("{s:?} is not a range (a-b, same family, a <= b)"));
        }
        return Ok((a, b));
    }
    let c = Cidr::parse(s)?;
    let (n, w) = bits(c.network());
    let host = if c.len == w {
        0
    } else {
        (!0u128) >> (128 - u32::from(w - c.len))
    };
    Ok((c.network(), from_bits(n | host, w)))
}

/// True when `ip` lies in the inclusive range.
pub fn in_range(range: (IpAddr, IpAddr), ip: IpAddr) -> bool {
    family(ip) == family(range.0) && range.0 <= ip && ip <= range.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_basics() {
        let c = Cidr::parse("10.64.0.0/12").unwrap();
        assert!(c.is_canonical());
        assert!(c.contains("10.79.255.255".parse().unwrap()));
        assert!(!c.contains("10.80.0.0".parse().unwrap()));
        assert!(!c.contains("fd00::1".parse().unwrap()));
        assert!(!Cidr::parse("10.64.0.1/12").unwrap().is_canonical());
        assert_eq!(
            Cidr::parse("10.64.0.1/12").unwrap().network().to_string(),
            "10.64.0.0"
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0.0").is_err());
        let v6 = Cidr::parse("fd00:10::/64").unwrap();
        assert!(v6.contains("fd00:10::5".parse().unwrap()));
        assert!(!v6.contains("fd00:11::5".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(c.contains_cidr(&Cidr::parse("10.65.0.0/24").unwrap()));
        assert!(!Cidr::parse("10.65.0.0/24").unwrap().contains_cidr(&c));
    }

    #[test]
    fn ranges() {
        let r = parse_range("10.0.0.0/30").unwrap();
        assert_eq!(
            (r.0.to_string(), r.1.to_string()),
            ("10.0.0.0".into(), "10.0.0.3".into())
        );
        let r = parse_range("10.0.0.10-10.0.0.20").unwrap();
        assert!(in_range(r, "10.0.0.15".parse().unwrap()));
        assert!(!in_range(r, "10.0.0.21".parse().unwrap()));
        assert!(parse_range("10.0.0.20-10.0.0.10").is_err());
        assert!(parse_range("10.0.0.1-fd00::1").is_err());
        assert_eq!(parse_address("10.1.2.3/24").unwrap().1, Some(24));
        assert!(parse_address("banana").is_err());
    }
}
