//! `route-dns`: routes and DNS inside the pod.
//!
//! * `defaultRoute` (default true): a default route per family the primary
//!   interface has addresses for, via its subnet gateway.
//! * `routes`: extra routes, `{ dst, via = "gateway" | "on-link" | "<ip>",
//!   interface (default: the primary), metric }`.
//! * `dns`: `{ nameservers, domain, search, options }`.
//! * `tenants`: per tenant, `routes` appended and `dns` replacing the default.
//!
//! runtimeConfig `dns`, when the runtime sends it, wins over the settings:
//! the runtime knows the pod's DNS policy (Kubernetes `dnsPolicy`). A route
//! already planned (same destination and interface) is not added twice.
//!
//! ```toml
//! [stage.settings]
//! routes = [{ dst = "172.16.0.0/12", via = "gateway", metric = 100 }]
//! [stage.settings.dns]
//! nameservers = ["10.96.0.10"]
//! search = ["svc.cluster.local"]
//! [stage.settings.tenants.acme.dns]
//! nameservers = ["10.96.0.53"]
//! ```
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::IpAddr;
use core::str::FromStr;

use schemars::JsonSchema;
use serde::Deserialize;
use tenet_policy_sdk::net::Cidr;
use tenet_policy_sdk::{
    Dns, IpFamily, NextHop, Plan, PolicyError, Request, Route, Stage, export_stage,
};

/// A route in settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteSpec {
    /// Destination CIDR.
    pub dst: String,
    /// "gateway", "on-link" or an address.
    #[serde(default = "gateway")]
    pub via: String,
    /// Interface (default: CNI_IFNAME).
    #[serde(default)]
    pub interface: Option<String>,
    /// Metric.
    #[serde(default)]
    pub metric: Option<u32>,
}

fn gateway() -> String {
    "gateway".into()
}

/// DNS in settings.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct DnsSpec {
    /// Name servers.
    pub nameservers: Vec<String>,
    /// Domain.
    pub domain: Option<String>,
    /// Search list.
    pub search: Vec<String>,
    /// Options.
    pub options: Vec<String>,
}

/// Per-tenant additions.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TenantSpec {
    /// Routes appended for this tenant.
    pub routes: Vec<RouteSpec>,
    /// DNS replacing the default for this tenant.
    pub dns: Option<DnsSpec>,
}

/// Settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Settings {
    /// Add default routes.
    pub default_route: bool,
    /// Extra routes.
    pub routes: Vec<RouteSpec>,
    /// DNS.
    pub dns: Option<DnsSpec>,
    /// Per-tenant settings.
    pub tenants: BTreeMap<String, TenantSpec>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_route: true,
            routes: Vec::new(),
            dns: None,
            tenants: BTreeMap::new(),
        }
    }
}

fn check_route(at: &str, r: &RouteSpec) -> Result<(), String> {
    let c = Cidr::parse(&r.dst).map_err(|e| format!("{at}.dst: {e}"))?;
    if !c.is_canonical() {
        return Err(format!("{at}.dst: {} has host bits set", r.dst));
    }
    match r.via.as_str() {
        "gateway" | "on-link" => {}
        ip => {
            let a = IpAddr::from_str(ip).map_err(|_| {
                format!("{at}.via: {ip:?} is not \"gateway\", \"on-link\" or an address")
            })?;
            if a.is_ipv4() != c.addr.is_ipv4() {
                return Err(format!("{at}.via: {ip} and {} differ in family", r.dst));
            }
        }
    }
    Ok(())
}

fn check_dns(at: &str, d: &DnsSpec) -> Result<(), String> {
    for (i, n) in d.nameservers.iter().enumerate() {
        IpAddr::from_str(n)
            .map_err(|_| format!("{at}.nameservers[{i}]: {n:?} is not an address"))?;
    }
    Ok(())
}

fn to_dns(d: &DnsSpec) -> Dns {
    Dns {
        nameservers: d.nameservers.clone(),
        domain: d.domain.clone(),
        search: d.search.clone(),
        options: d.options.clone(),
    }
}

/// The route-dns stage.
pub struct RouteDns;

fn push_route(plan: &mut Plan, route: Route) {
    if !plan
        .routes
        .iter()
        .any(|r| r.dst == route.dst && r.interface == route.interface)
    {
        plan.routes.push(route);
    }
}

fn route_from(spec: &RouteSpec, primary: &str) -> Route {
    Route {
        dst: spec.dst.clone(),
        interface: spec
            .interface
            .clone()
            .unwrap_or_else(|| primary.to_string()),
        via: match spec.via.as_str() {
            "gateway" => NextHop::SubnetGateway,
            "on-link" => NextHop::OnLink,
            ip => NextHop::Address(ip.to_string()),
        },
        metric: spec.metric,
        mtu: None,
    }
}

impl Stage for RouteDns {
    type Settings = Settings;

    fn validate(s: &Settings) -> Result<(), String> {
        for (i, r) in s.routes.iter().enumerate() {
            check_route(&format!("routes[{i}]"), r)?;
        }
        if let Some(d) = &s.dns {
            check_dns("dns", d)?;
        }
        for (t, spec) in &s.tenants {
            for (i, r) in spec.routes.iter().enumerate() {
                check_route(&format!("tenants.{t}.routes[{i}]"), r)?;
            }
            if let Some(d) = &spec.dns {
                check_dns(&format!("tenants.{t}.dns"), d)?;
            }
        }
        Ok(())
    }

    fn evaluate(req: &Request, s: &Settings, mut plan: Plan) -> Result<Plan, PolicyError> {
        let primary = req.ifname.as_str();
        if s.default_route {
            let families: Vec<IpFamily> = plan
                .interfaces
                .iter()
                .find(|i| i.name == primary)
                .map(|i| i.addresses.iter().map(|a| a.family).collect())
                .unwrap_or_default();
            for (fam, dst) in [(IpFamily::Ipv4, "0.0.0.0/0"), (IpFamily::Ipv6, "::/0")] {
                if families.contains(&fam) {
                    push_route(
                        &mut plan,
                        Route {
                            dst: dst.into(),
                            interface: primary.into(),
                            via: NextHop::SubnetGateway,
                            metric: None,
                            mtu: None,
                        },
                    );
                }
            }
        }
        let tenant = s.tenants.get(&plan.tenant);
        for spec in s
            .routes
            .iter()
            .chain(tenant.map(|t| t.routes.as_slice()).unwrap_or(&[]))
        {
            push_route(&mut plan, route_from(spec, primary));
        }
        let runtime = req
            .runtime_dns
            .as_ref()
            .filter(|d| !d.nameservers.is_empty() || !d.search.is_empty());
        if let Some(d) = runtime {
            plan.dns = d.clone();
        } else if let Some(d) = tenant.and_then(|t| t.dns.as_ref()).or(s.dns.as_ref()) {
            plan.dns = to_dns(d);
        }
        Ok(plan)
    }
}

export_stage!(RouteDns, settings_schema = "settings.schema.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_schema_is_current() {
        tenet_policy_sdk::check_settings_schema::<RouteDns>(
            env!("CARGO_MANIFEST_DIR"),
            "settings.schema.json",
        );
    }
    use tenet_policy_sdk::{AddressRequest, initial_plan, parse_settings, test_request};

    fn plan_with(families: &[IpFamily]) -> Plan {
        let mut p = initial_plan("eth0");
        p.tenant = "acme".into();
        for f in families {
            p.interfaces[0].addresses.push(AddressRequest {
                family: *f,
                pool: None,
                static_address: None,
            });
        }
        p
    }

    fn run(settings: &str, plan: Plan, f: impl FnOnce(&mut Request)) -> Plan {
        let s = parse_settings::<RouteDns>(settings).unwrap();
        let mut r = test_request();
        f(&mut r);
        RouteDns::evaluate(&r, &s, plan).unwrap()
    }

    #[test]
    fn default_routes_per_family() {
        let p = run("", plan_with(&[IpFamily::Ipv4, IpFamily::Ipv6]), |_| {});
        let dsts: Vec<&str> = p.routes.iter().map(|r| r.dst.as_str()).collect();
        assert_eq!(dsts, ["0.0.0.0/0", "::/0"]);
        assert!(
            p.routes
                .iter()
                .all(|r| r.via == NextHop::SubnetGateway && r.interface == "eth0")
        );
        assert!(run("", plan_with(&[]), |_| {}).routes.is_empty());
        assert!(
            run(
                r#"{"defaultRoute":false}"#,
                plan_with(&[IpFamily::Ipv4]),
                |_| {}
            )
            .routes
            .is_empty()
        );
    }

    #[test]
    fn extra_and_tenant_routes_without_duplicates() {
        let s = r#"{"routes":[{"dst":"172.16.0.0/12","metric":5},{"dst":"0.0.0.0/0"}],
                    "tenants":{"acme":{"routes":[{"dst":"192.168.0.0/16","via":"on-link"},{"dst":"10.200.0.0/16","via":"10.64.1.254"}]}}}"#;
        let p = run(s, plan_with(&[IpFamily::Ipv4]), |_| {});
        assert_eq!(p.routes.len(), 4, "{:?}", p.routes);
        assert_eq!(p.routes[1].metric, Some(5));
        assert_eq!(p.routes[2].via, NextHop::OnLink);
        assert_eq!(p.routes[3].via, NextHop::Address("10.64.1.254".into()));
    }

    #[test]
    fn dns_precedence_runtime_tenant_default() {
        let s = r#"{"dns":{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]},"tenants":{"acme":{"dns":{"nameservers":["10.96.0.53"]}}}}"#;
        let p = run(s, plan_with(&[]), |_| {});
        assert_eq!(p.dns.nameservers, ["10.96.0.53"]);
        let mut other = plan_with(&[]);
        other.tenant = "other".into();
        assert_eq!(run(s, other, |_| {}).dns.search, ["svc.cluster.local"]);
        let p = run(s, plan_with(&[]), |r| {
            r.runtime_dns = Some(Dns {
                nameservers: alloc::vec!["1.1.1.1".into()],
                domain: None,
                search: Vec::new(),
                options: Vec::new(),
            })
        });
        assert_eq!(p.dns.nameservers, ["1.1.1.1"]);
    }

    #[test]
    fn settings_errors_name_the_field() {
        for (s, field) in [
            (r#"{"routes":[{"dst":"10.0.0.1/8"}]}"#, "routes[0].dst"),
            (
                r#"{"routes":[{"dst":"10.0.0.0/8","via":"router"}]}"#,
                "routes[0].via",
            ),
            (
                r#"{"routes":[{"dst":"10.0.0.0/8","via":"fd00::1"}]}"#,
                "routes[0].via",
            ),
            (r#"{"dns":{"nameservers":["dns"]}}"#, "dns.nameservers[0]"),
            (
                r#"{"tenants":{"t":{"routes":[{"dst":"x"}]}}}"#,
                "tenants.t.routes[0].dst",
            ),
            (r#"{"dnss":{}}"#, "dnss"),
        ] {
            let e = parse_settings::<RouteDns>(s).unwrap_err();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
