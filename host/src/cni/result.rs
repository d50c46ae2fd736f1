//! The ADD result, and its rendering in each supported version.
//!
//! One model (1.1.0's, the richest) is kept internally and rendered down:
//! 0.3.1/0.4.0 carry `ips[].version` and lack the interface and route fields
//! that 1.1.0 added (`mtu`, `socketPath`, `pciID`; route `mtu`, `advmss`,
//! `priority`, `table`, `scope`); 1.0.0 drops `ips[].version`.

use serde_json::{Map, Value, json};

use super::error::{CniError, code};
use super::version;
use crate::plan::Dns;

/// An interface in a result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultInterface {
    /// Interface name.
    pub name: String,
    /// MAC address.
    pub mac: Option<String>,
    /// MTU (1.1.0).
    pub mtu: Option<u32>,
    /// Netns path; `None` for host-side interfaces.
    pub sandbox: Option<String>,
    /// vhost-user socket path (1.1.0).
    pub socket_path: Option<String>,
    /// PCI address (1.1.0).
    pub pci_id: Option<String>,
}

/// An address in a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultIp {
    /// Address with prefix, e.g. `10.1.0.5/24`.
    pub address: ipnet::IpNet,
    /// Gateway.
    pub gateway: Option<std::net::IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

/// A route in a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultRoute {
    /// Destination.
    pub dst: ipnet::IpNet,
    /// Gateway.
    pub gw: Option<std::net::IpAddr>,
    /// MTU (1.1.0).
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    pub advmss: Option<u32>,
    /// Priority/metric (1.1.0).
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    pub table: Option<u32>,
    /// Scope (1.1.0).
    pub scope: Option<u32>,
}

/// An ADD result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    /// Interfaces created, host side included.
    pub interfaces: Vec<ResultInterface>,
    /// Addresses.
    pub ips: Vec<ResultIp>,
    /// Routes.
    pub routes: Vec<ResultRoute>,
    /// DNS.
    pub dns: Dns,
}

fn put<T: serde::Serialize>(m: &mut Map<String, Value>, k: &str, v: &Option<T>) {
    if let Some(v) = v {
        m.insert(k.into(), json!(v));
    }
}

impl CniResult {
    /// Renders the result in `cni_version` (which must be supported).
    pub fn render(&self, cni_version: &str) -> Value {
        let v11 = version::at_least(cni_version, "1.1.0");
        let v10 = version::at_least(cni_version, "1.0.0");
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut m = Map::new();
                m.insert("name".into(), json!(i.name));
                put(&mut m, "mac", &i.mac);
                put(&mut m, "sandbox", &i.sandbox);
                if v11 {
                    put(&mut m, "mtu", &i.mtu);
                    put(&mut m, "socketPath", &i.socket_path);
                    put(&mut m, "pciID", &i.pci_id);
                }
                Value::Object(m)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut m = Map::new();
                if !v10 {
                    m.insert(
                        "version".into(),
                        json!(if ip.address.addr().is_ipv4() {
                            "4"
                        } else {
                            "6"
                        }),
                    );
                }
                m.insert("address".into(), json!(ip.address.to_string()));
                put(&mut m, "gateway", &ip.gateway.map(|g| g.to_string()));
                put(&mut m, "interface", &ip.interface);
                Value::Object(m)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("dst".into(), json!(r.dst.to_string()));
                put(&mut m, "gw", &r.gw.map(|g| g.to_string()));
                if v11 {
                    put(&mut m, "mtu", &r.mtu);
                    put(&mut m, "advmss", &r.advmss);
                    put(&mut m, "priority", &r.priority);
                    put(&mut m, "table", &r.table);
                    put(&mut m, "scope", &r.scope);
                }
                Value::Object(m)
            })
            .collect();
        let mut doc = Map::new();
        doc.insert("cniVersion".into(), json!(cni_version));
        if !interfaces.is_empty() {
            doc.insert("interfaces".into(), Value::Array(interfaces));
        }
        if !ips.is_empty() {
            doc.insert("ips".into(), Value::Array(ips));
        }
        if !routes.is_empty() {
            doc.insert("routes".into(), Value::Array(routes));
        }
        if !self.dns.is_empty() {
            doc.insert(
                "dns".into(),
                serde_json::to_value(&self.dns).unwrap_or(Value::Null),
            );
        }
        Value::Object(doc)
    }

    /// Parses a result (e.g. `prevResult`) of any supported version.
    pub fn parse(v: &Value) -> Result<Self, CniError> {
        let bad = |m: String| CniError::new(code::DECODE_FAILURE, "failed to decode prevResult", m);
        let o = v.as_object().ok_or_else(|| bad("not an object".into()))?;
        let arr = |k: &str| -> Result<&[Value], CniError> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(&[]),
                Some(Value::Array(a)) => Ok(a.as_slice()),
                Some(_) => Err(bad(format!("{k} must be a list"))),
            }
        };
        let s = |m: &Value, k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
        let n = |m: &Value, k: &str| {
            m.get(k)
                .and_then(Value::as_u64)
                .and_then(|x| u32::try_from(x).ok())
        };
        let mut r = CniResult::default();
        for (i, x) in arr("interfaces")?.iter().enumerate() {
            r.interfaces.push(ResultInterface {
                name: s(x, "name")
                    .ok_or_else(|| bad(format!("interfaces[{i}].name is required")))?,
                mac: s(x, "mac"),
                mtu: n(x, "mtu"),
                sandbox: s(x, "sandbox").filter(|s| !s.is_empty()),
                socket_path: s(x, "socketPath"),
                pci_id: s(x, "pciID"),
            });
        }
        for (i, x) in arr("ips")?.iter().enumerate() {
            let addr =
                s(x, "address").ok_or_else(|| bad(format!("ips[{i}].address is required")))?;
            r.ips.push(ResultIp {
                address: addr
                    .parse()
                    .map_err(|_| bad(format!("ips[{i}].address {addr:?} is not a CIDR")))?,
                gateway: match s(x, "gateway") {
                    Some(g) => {
                        Some(g.parse().map_err(|_| {
                            bad(format!("ips[{i}].gateway {g:?} is not an address"))
                        })?)
                    }
                    None => None,
                },
                interface: x
                    .get("interface")
                    .and_then(Value::as_u64)
                    .map(|i| i as usize),
            });
        }
        for (i, x) in arr("routes")?.iter().enumerate() {
            let dst = s(x, "dst").ok_or_else(|| bad(format!("routes[{i}].dst is required")))?;
            r.routes.push(ResultRoute {
                dst: dst
                    .parse()
                    .map_err(|_| bad(format!("routes[{i}].dst {dst:?} is not a CIDR")))?,
                gw: match s(x, "gw") {
                    Some(g) => Some(
                        g.parse()
                            .map_err(|_| bad(format!("routes[{i}].gw {g:?} is not an address")))?,
                    ),
                    None => None,
                },
                mtu: n(x, "mtu"),
                advmss: n(x, "advmss"),
                priority: n(x, "priority"),
                table: n(x, "table"),
                scope: n(x, "scope"),
            });
        }
        if let Some(d) = o.get("dns").filter(|d| !d.is_null()) {
            r.dns = serde_json::from_value(d.clone()).map_err(|e| bad(format!("dns: {e}")))?;
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                ResultInterface {
                    name: "tn0123".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1450),
                    ..Default::default()
                },
                ResultInterface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    mtu: Some(1450),
                    sandbox: Some("/var/run/netns/x".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                ResultIp {
                    address: "10.64.1.5/24".parse().unwrap(),
                    gateway: Some("10.64.1.1".parse().unwrap()),
                    interface: Some(1),
                },
                ResultIp {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
            ],
            routes: vec![ResultRoute {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.64.1.1".parse().unwrap()),
                mtu: Some(1400),
                advmss: None,
                priority: Some(10),
                table: None,
                scope: None,
            }],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn renders_each_version_schema() {
        let r = sample();
        let old = r.render("0.3.1");
        assert_eq!(old["cniVersion"], "0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert!(old["interfaces"][0].get("mtu").is_none());
        assert!(old["routes"][0].get("priority").is_none());
        assert_eq!(r.render("0.4.0")["ips"][0]["version"], "4");
        let v10 = r.render("1.0.0");
        assert!(v10["ips"][0].get("version").is_none());
        assert!(v10["interfaces"][1].get("mtu").is_none());
        assert_eq!(v10["interfaces"][1]["sandbox"], "/var/run/netns/x");
        assert!(v10["interfaces"][0].get("sandbox").is_none());
        let v11 = r.render("1.1.0");
        assert_eq!(v11["interfaces"][1]["mtu"], 1450);
        assert_eq!(v11["routes"][0]["priority"], 10);
        assert_eq!(v11["routes"][0]["mtu"], 1400);
        assert_eq!(v11["dns"]["nameservers"][0], "10.96.0.10");
    }

    #[test]
    fn round_trips_through_every_version() {
        let r = sample();
        for v in version::SUPPORTED {
            let back = CniResult::parse(&r.render(v)).unwrap();
            assert_eq!(back.ips, r.ips, "{v}");
            assert_eq!(back.interfaces.len(), 2);
            assert_eq!(back.routes[0].dst, r.routes[0].dst);
        }
        assert_eq!(CniResult::parse(&r.render("1.1.0")).unwrap(), r);
    }

    #[test]
    fn malformed_prev_results_are_decode_errors() {
        for bad in [
            json!([]),
            json!({"ips":[{"address":"nope"}]}),
            json!({"interfaces":[{}]}),
            json!({"routes":"x"}),
        ] {
            assert_eq!(
                CniResult::parse(&bad).unwrap_err().code,
                code::DECODE_FAILURE,
                "{bad}"
            );
        }
    }
}
