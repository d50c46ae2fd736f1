//! `rainbond-egress`: Rainbond's `eth1`, a veth from the pod to the node.
//!
//! Rainbond's edge load balancers and the pods' access to node-local
//! services (kube-proxy's service network) go through the node rather than
//! the tenant network. This stage adds a `host-link` interface (default
//! `eth1`) with an address from a node-local link pool, and routes the
//! configured CIDRs through it via the link's gateway (the node side). The
//! default route stays on eth0: a default CIDR is refused in settings.
//!
//! When an earlier stage already planned the link, this stage refines it:
//! it sets the IPv4 request and keeps the other families' addresses, the
//! MAC and the MTU (unless `mtu` is set here).
//!
//! ```toml
//! [stage.settings]
//! interface = "eth1"
//! cidrs = ["10.96.0.0/12"]
//! linkPool = { name = "host-link-v4", supernet = "169.254.128.0/17", subnetLen = 17 }
//! tenants = ["acme"]     # optional: only these tenants get eth1
//! mtu = 1500             # optional
//! ```
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use schemars::JsonSchema;
use serde::Deserialize;
use tenet_policy_sdk::net::Cidr;
use tenet_policy_sdk::{
    AddressRequest, Interface, InterfaceKind, IpFamily, NextHop, Plan, PolicyError, Pool, Request,
    Route, Stage, export_stage,
};

/// The node-local pool eth1 addresses come from.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LinkPool {
    /// Pool name in the address store.
    pub name: String,
    /// IPv4 supernet.
    pub supernet: String,
    /// Subnet length (normally the supernet's: one node-local subnet).
    pub subnet_len: u8,
}

impl Default for LinkPool {
    fn default() -> Self {
        LinkPool {
            name: "host-link-v4".into(),
            supernet: "169.254.128.0/17".into(),
            subnet_len: 17,
        }
    }
}

/// Settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Settings {
    /// Pod-side interface name.
    pub interface: String,
    /// CIDRs routed through the host link.
    pub cidrs: Vec<String>,
    /// Link address pool.
    pub link_pool: LinkPool,
    /// Only these tenants get the link (all when absent).
    pub tenants: Option<Vec<String>>,
    /// Link MTU.
    pub mtu: Option<u32>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interface: "eth1".into(),
            cidrs: Vec::new(),
            link_pool: LinkPool::default(),
            tenants: None,
            mtu: None,
        }
    }
}

/// The rainbond-egress stage.
pub struct RainbondEgress;

impl Stage for RainbondEgress {
    type Settings = Settings;

    fn validate(s: &Settings) -> Result<(), String> {
        let n = s.interface.as_str();
        if n.is_empty()
            || n.len() > 15
            || n == "."
            || n == ".."
            || n.chars()
                .any(|c| !c.is_ascii_graphic() || c == '/' || c == ':')
        {
            return Err(format!(
                "interface: {n:?} is not an interface name (1-15 bytes, no '/', ':' or spaces)"
            ));
        }
        if s.cidrs.is_empty() {
            return Err("cidrs: at least one CIDR is required".into());
        }
        for (i, c) in s.cidrs.iter().enumerate() {
            let cidr = Cidr::parse(c).map_err(|e| format!("cidrs[{i}]: {e}"))?;
            if !cidr.is_canonical() {
                return Err(format!("cidrs[{i}]: {c} has host bits set"));
            }
            if cidr.is_default() {
                return Err(format!(
                    "cidrs[{i}]: {c} is a default route; the default route stays on the primary interface"
                ));
            }
            if cidr.family() != IpFamily::Ipv4 {
                return Err(format!("cidrs[{i}]: {c}: the host link is IPv4"));
            }
        }
        let lp =
            Cidr::parse(&s.link_pool.supernet).map_err(|e| format!("linkPool.supernet: {e}"))?;
        if lp.family() != IpFamily::Ipv4 || !lp.is_canonical() {
            return Err(format!(
                "linkPool.supernet: {} must be a canonical IPv4 CIDR",
                s.link_pool.supernet
            ));
        }
        if s.link_pool.subnet_len < lp.len || s.link_pool.subnet_len > 30 {
            return Err(format!(
                "linkPool.subnetLen: /{} must be between /{} and /30",
                s.link_pool.subnet_len, lp.len
            ));
        }
        if let Some(m) = s.mtu
            && !(68..=65535).contains(&m)
        {
            return Err(format!("mtu: {m} is outside 68..=65535"));
        }
        Ok(())
    }

    fn evaluate(_req: &Request, s: &Settings, mut plan: Plan) -> Result<Plan, PolicyError> {
        if let Some(allowed) = &s.tenants
            && !allowed.contains(&plan.tenant)
        {
            return Ok(plan);
        }
        let link = Interface {
            name: s.interface.clone(),
            kind: InterfaceKind::HostLink,
            addresses: alloc::vec![AddressRequest {
                family: IpFamily::Ipv4,
                pool: Some(Pool {
                    name: s.link_pool.name.clone(),
                    supernet: s.link_pool.supernet.clone(),
                    subnet_len: s.link_pool.subnet_len,
                    exclude: Vec::new(),
                }),
                static_address: None,
            }],
            mac: None,
            mtu: s.mtu,
        };
        match plan.interfaces.iter_mut().find(|i| i.name == s.interface) {
            Some(existing) if existing.kind != InterfaceKind::HostLink => {
                return Err(PolicyError::InvalidInput(format!(
                    "{} is already planned as another kind of interface",
                    s.interface
                )));
            }
            // Refine, don't clobber: an earlier stage's plan for this link
            // keeps its other families' addresses, its MAC and (unless
            // set here) its MTU; the IPv4 request is this stage's.
            Some(existing) => {
                let mut merged = link;
                merged.addresses.extend(
                    existing
                        .addresses
                        .iter()
                        .filter(|a| a.family != IpFamily::Ipv4)
                        .cloned(),
                );
                merged.mac = existing.mac.take();
                merged.mtu = merged.mtu.or(existing.mtu);
                *existing = merged;
            }
            None => plan.interfaces.push(link),
        }
        for c in &s.cidrs {
            if !plan
                .routes
                .iter()
                .any(|r| r.dst == *c && r.interface == s.interface)
            {
                plan.routes.push(Route {
                    dst: c.to_string(),
                    interface: s.interface.clone(),
                    via: NextHop::SubnetGateway,
                    metric: None,
                    mtu: None,
                });
            }
        }
        Ok(plan)
    }
}

export_stage!(RainbondEgress, settings_schema = "settings.schema.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_schema_is_current() {
        tenet_policy_sdk::check_settings_schema::<RainbondEgress>(
            env!("CARGO_MANIFEST_DIR"),
            "settings.schema.json",
        );
    }
    use tenet_policy_sdk::{initial_plan, parse_settings, test_request};

    fn run(settings: &str, plan: Plan) -> Result<Plan, PolicyError> {
        let s = parse_settings::<RainbondEgress>(settings).map_err(PolicyError::InvalidSettings)?;
        RainbondEgress::evaluate(&test_request(), &s, plan)
    }

    fn base() -> Plan {
        let mut p = initial_plan("eth0");
        p.tenant = "acme".into();
        p.routes.push(Route {
            dst: "0.0.0.0/0".into(),
            interface: "eth0".into(),
            via: NextHop::SubnetGateway,
            metric: None,
            mtu: None,
        });
        p
    }

    #[test]
    fn adds_eth1_and_routes_keeping_the_default_on_eth0() {
        let p = run(
            r#"{"cidrs":["10.96.0.0/12","172.20.0.0/16"],"mtu":1400}"#,
            base(),
        )
        .unwrap();
        let eth1 = p.interfaces.iter().find(|i| i.name == "eth1").unwrap();
        assert_eq!(eth1.kind, InterfaceKind::HostLink);
        assert_eq!(eth1.mtu, Some(1400));
        assert_eq!(
            eth1.addresses[0].pool.as_ref().unwrap().supernet,
            "169.254.128.0/17"
        );
        let via_eth1: Vec<&str> = p
            .routes
            .iter()
            .filter(|r| r.interface == "eth1")
            .map(|r| r.dst.as_str())
            .collect();
        assert_eq!(via_eth1, ["10.96.0.0/12", "172.20.0.0/16"]);
        assert_eq!(p.routes[0].interface, "eth0");
        // Idempotent.
        let again = run(
            r#"{"cidrs":["10.96.0.0/12","172.20.0.0/16"],"mtu":1400}"#,
            p.clone(),
        )
        .unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn an_earlier_plan_of_the_link_is_refined_not_replaced() {
        let mut p = base();
        let v6 = AddressRequest {
            family: IpFamily::Ipv6,
            pool: None,
            static_address: Some("fd00:9::2".into()),
        };
        p.interfaces.push(Interface {
            name: "eth1".into(),
            kind: InterfaceKind::HostLink,
            addresses: alloc::vec![v6.clone()],
            mac: Some("02:00:00:00:00:09".into()),
            mtu: Some(1300),
        });
        let out = run(r#"{"cidrs":["10.96.0.0/12"]}"#, p).unwrap();
        let eth1 = out.interfaces.iter().find(|i| i.name == "eth1").unwrap();
        assert_eq!(eth1.addresses.len(), 2, "{:?}", eth1.addresses);
        assert_eq!(eth1.addresses[0].family, IpFamily::Ipv4);
        assert_eq!(eth1.addresses[1], v6);
        assert_eq!(eth1.mac.as_deref(), Some("02:00:00:00:00:09"));
        assert_eq!(eth1.mtu, Some(1300));
    }

    #[test]
    fn tenant_allow_list_and_conflicts() {
        let p = run(r#"{"cidrs":["10.96.0.0/12"],"tenants":["other"]}"#, base()).unwrap();
        assert_eq!(p, base());
        let mut clash = base();
        clash.interfaces.push(Interface {
            name: "eth1".into(),
            kind: InterfaceKind::SdnPort,
            addresses: Vec::new(),
            mac: None,
            mtu: None,
        });
        assert!(matches!(
            run(r#"{"cidrs":["10.96.0.0/12"]}"#, clash),
            Err(PolicyError::InvalidInput(_))
        ));
    }

    #[test]
    fn settings_errors_name_the_field() {
        for (s, field) in [
            ("{}", "cidrs"),
            (r#"{"cidrs":["0.0.0.0/0"]}"#, "cidrs[0]"),
            (r#"{"cidrs":["10.96.0.1/12"]}"#, "cidrs[0]"),
            (r#"{"cidrs":["fd00::/8"]}"#, "cidrs[0]"),
            (
                r#"{"cidrs":["10.96.0.0/12"],"interface":"eth/1"}"#,
                "interface",
            ),
            (
                r#"{"cidrs":["10.96.0.0/12"],"linkPool":{"name":"l","supernet":"169.254.0.0/16","subnetLen":8}}"#,
                "linkPool.subnetLen",
            ),
            (r#"{"cidrs":["10.96.0.0/12"],"mtu":10}"#, "mtu"),
        ] {
            let e = parse_settings::<RainbondEgress>(s).unwrap_err();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
