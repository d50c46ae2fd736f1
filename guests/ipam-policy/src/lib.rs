//! `ipam-policy`: decides where the primary interface's addresses come from.
//!
//! For the interface named CNI_IFNAME it sets one address request per pool:
//! the address store carves a subnet of `subnetLen` per tenant out of the
//! pool's `supernet` (cluster-wide, without overlap inside a tenant) and
//! allocates from it. Dual stack is two pools.
//!
//! A **static address** is taken, first found wins per family, from
//! runtimeConfig `ips`, `args.cni.ips`, CNI_ARGS `IP`, then the annotation
//! named by `staticAnnotation`. A prefix on a static address is ignored: the
//! tenant subnet decides it. Statics must lie in the pool's supernet and
//! outside its excluded ranges, or the pod is refused (`invalid-input`);
//! with `allowStatic = false` any static request is `denied`.
//!
//! ```toml
//! [stage.settings]
//! pools = [
//!   { name = "pods-v4", family = "ipv4", supernet = "10.64.0.0/12", subnetLen = 24, exclude = ["10.64.0.0/24"] },
//!   { name = "pods-v6", family = "ipv6", supernet = "fd00:64::/48", subnetLen = 64 },
//! ]
//! staticAnnotation = "tenet.io/ip"
//! allowStatic = true
//! tenants = { "legacy" = ["pods-v4"] }   # optional: pools per tenant
//! ```
//!
//! **Refines, doesn't clobber**: only the families it has pools for (for
//! the pod's tenant) are replaced on the primary interface; address
//! requests an earlier stage planned for other families are kept, after
//! this stage's.
//!
//! Bounds: `subnetLen` from the supernet's length to /30 (IPv4) or /126
//! (IPv6), so every subnet has a network address, a gateway and a pod.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::IpAddr;

use schemars::JsonSchema;
use serde::Deserialize;
use tenet_policy_sdk::net::{Cidr, family, in_range, parse_address, parse_range};
use tenet_policy_sdk::{
    AddressRequest, IpFamily, Plan, PolicyError, Pool, Request, Stage, export_stage, interface_mut,
    kv_get,
};

/// Address family in settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// A pool.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PoolSpec {
    /// Name in the address store.
    pub name: String,
    /// Family.
    pub family: Family,
    /// Supernet tenant subnets are carved from.
    pub supernet: String,
    /// Tenant subnet prefix length.
    pub subnet_len: u8,
    /// Excluded CIDRs or `a-b` ranges.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// Settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Settings {
    /// Pools, at least one.
    pub pools: Vec<PoolSpec>,
    /// Annotation holding a static address.
    pub static_annotation: String,
    /// Whether static addresses may be requested at all.
    pub allow_static: bool,
    /// Pools per tenant (names); other tenants use every pool.
    pub tenants: BTreeMap<String, Vec<String>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pools: Vec::new(),
            static_annotation: "tenet.io/ip".to_string(),
            allow_static: true,
            tenants: BTreeMap::new(),
        }
    }
}

fn wit_family(f: Family) -> IpFamily {
    match f {
        Family::Ipv4 => IpFamily::Ipv4,
        Family::Ipv6 => IpFamily::Ipv6,
    }
}

/// The ipam-policy stage.
pub struct IpamPolicy;

/// Static address candidates in precedence order, with where each came from.
fn static_candidates<'a>(req: &'a Request, s: &Settings) -> Vec<(&'a str, &'static str)> {
    let mut out: Vec<(&str, &'static str)> = Vec::new();
    out.extend(
        req.runtime_ips
            .iter()
            .map(|a| (a.as_str(), "runtimeConfig.ips")),
    );
    out.extend(req.args_ips.iter().map(|a| (a.as_str(), "args.cni.ips")));
    if let Some(ip) = kv_get(&req.cni_args, "IP") {
        out.extend(
            ip.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| (a, "CNI_ARGS IP")),
        );
    }
    if let Some(a) = kv_get(&req.annotations, &s.static_annotation) {
        out.extend(
            a.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| (a, "annotation")),
        );
    }
    out
}

impl Stage for IpamPolicy {
    type Settings = Settings;

    fn validate(s: &Settings) -> Result<(), String> {
        if s.pools.is_empty() {
            return Err("pools: at least one pool is required".into());
        }
        for (i, p) in s.pools.iter().enumerate() {
            let at = |f: &str| format!("pools[{i}].{f}");
            if p.name.is_empty()
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(format!("{}: {:?} is not a pool name", at("name"), p.name));
            }
            if s.pools[..i].iter().any(|q| q.name == p.name) {
                return Err(format!("{}: duplicate pool {:?}", at("name"), p.name));
            }
            let net = Cidr::parse(&p.supernet).map_err(|e| format!("{}: {e}", at("supernet")))?;
            if !net.is_canonical() {
                return Err(format!(
                    "{}: {} has host bits set",
                    at("supernet"),
                    p.supernet
                ));
            }
            if net.family() != wit_family(p.family) {
                return Err(format!(
                    "{}: {} is not {:?}",
                    at("supernet"),
                    p.supernet,
                    p.family
                ));
            }
            let max = if p.family == Family::Ipv4 { 30 } else { 126 };
            if p.subnet_len < net.len || p.subnet_len > max {
                return Err(format!(
                    "{}: /{} must be between /{} and /{max}",
                    at("subnetLen"),
                    p.subnet_len,
                    net.len
                ));
            }
            for (k, x) in p.exclude.iter().enumerate() {
                let r = parse_range(x).map_err(|e| format!("{}[{k}]: {e}", at("exclude")))?;
                if family(r.0) != net.family() {
                    return Err(format!(
                        "{}[{k}]: {x} is not in the pool's family",
                        at("exclude")
                    ));
                }
            }
        }
        for (t, names) in &s.tenants {
            for n in names {
                if !s.pools.iter().any(|p| &p.name == n) {
                    return Err(format!("tenants.{t}: no pool named {n:?}"));
                }
            }
        }
        if s.static_annotation.is_empty() {
            return Err("staticAnnotation: must not be empty".into());
        }
        Ok(())
    }

    fn evaluate(req: &Request, s: &Settings, mut plan: Plan) -> Result<Plan, PolicyError> {
        if plan.tenant.is_empty() {
            return Err(PolicyError::InvalidInput(
                "no tenant decided yet: put tenant-map before ipam-policy".into(),
            ));
        }
        let pools: Vec<&PoolSpec> = match s.tenants.get(&plan.tenant) {
            Some(names) => s.pools.iter().filter(|p| names.contains(&p.name)).collect(),
            None => s.pools.iter().collect(),
        };
        let candidates = static_candidates(req, s);
        if !candidates.is_empty() && !s.allow_static {
            return Err(PolicyError::Denied(format!(
                "static address {} ({}) requested, but static addresses are not allowed",
                candidates[0].0, candidates[0].1
            )));
        }
        let mut statics: Vec<(IpAddr, &str)> = Vec::new();
        for (text, source) in &candidates {
            let (ip, _prefix) = parse_address(text)
                .map_err(|e| PolicyError::InvalidInput(format!("{source}: {e}")))?;
            if !pools.iter().any(|p| wit_family(p.family) == family(ip)) {
                return Err(PolicyError::InvalidInput(format!(
                    "{source}: {text} has no {:?} pool for tenant {}",
                    family(ip),
                    plan.tenant
                )));
            }
            if !statics.iter().any(|(a, _)| family(*a) == family(ip)) {
                statics.push((ip, source));
            }
        }
        let mut requests = Vec::new();
        for p in &pools {
            let fam = wit_family(p.family);
            let static_address = match statics.iter().find(|(a, _)| family(*a) == fam) {
                Some((ip, source)) => {
                    let net = Cidr::parse(&p.supernet).map_err(PolicyError::InvalidSettings)?;
                    if !net.contains(*ip) {
                        return Err(PolicyError::InvalidInput(format!(
                            "{source}: {ip} is outside pool {} ({})",
                            p.name, p.supernet
                        )));
                    }
                    for x in &p.exclude {
                        let r = parse_range(x).map_err(PolicyError::InvalidSettings)?;
                        if in_range(r, *ip) {
                            return Err(PolicyError::InvalidInput(format!(
                                "{source}: {ip} is in the excluded range {x} of pool {}",
                                p.name
                            )));
                        }
                    }
                    Some(ip.to_string())
                }
                None => None,
            };
            requests.push(AddressRequest {
                family: fam,
                pool: Some(Pool {
                    name: p.name.clone(),
                    supernet: p.supernet.clone(),
                    subnet_len: p.subnet_len,
                    exclude: p.exclude.clone(),
                }),
                static_address,
            });
        }
        let ifname = req.ifname.clone();
        let primary = interface_mut(&mut plan, &ifname).ok_or_else(|| {
            PolicyError::InvalidInput(format!("the plan has no interface {ifname:?}"))
        })?;
        // Refine, don't clobber: this stage manages the families it has
        // pools for (for this tenant); requests an earlier stage planned for
        // other families (an IPv6 address on a v4-only pipeline, say) stay.
        let managed: Vec<IpFamily> = requests.iter().map(|r| r.family).collect();
        let kept: Vec<AddressRequest> = core::mem::take(&mut primary.addresses)
            .into_iter()
            .filter(|a| !managed.contains(&a.family))
            .collect();
        primary.addresses = requests;
        primary.addresses.extend(kept);
        Ok(plan)
    }
}

export_stage!(IpamPolicy, settings_schema = "settings.schema.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_schema_is_current() {
        tenet_policy_sdk::check_settings_schema::<IpamPolicy>(
            env!("CARGO_MANIFEST_DIR"),
            "settings.schema.json",
        );
    }
    use tenet_policy_sdk::{Kv, initial_plan, parse_settings, test_request};

    const DUAL: &str = r#"{"pools":[
        {"name":"v4","family":"ipv4","supernet":"10.64.0.0/12","subnetLen":24,"exclude":["10.64.0.0/24","10.70.0.10-10.70.0.20"]},
        {"name":"v6","family":"ipv6","supernet":"fd00:64::/48","subnetLen":64}]}"#;

    fn run(
        settings: &str,
        f: impl FnOnce(&mut Request),
    ) -> Result<Vec<AddressRequest>, PolicyError> {
        let s = parse_settings::<IpamPolicy>(settings).map_err(PolicyError::InvalidSettings)?;
        let mut r = test_request();
        f(&mut r);
        let mut p = initial_plan("eth0");
        p.tenant = "acme".into();
        IpamPolicy::evaluate(&r, &s, p).map(|p| p.interfaces[0].addresses.clone())
    }

    #[test]
    fn one_request_per_pool() {
        let a = run(DUAL, |_| {}).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].family, IpFamily::Ipv4);
        assert_eq!(a[0].pool.as_ref().unwrap().subnet_len, 24);
        assert_eq!(a[1].pool.as_ref().unwrap().supernet, "fd00:64::/48");
        assert!(a.iter().all(|r| r.static_address.is_none()));
    }

    #[test]
    fn static_precedence_per_family() {
        let a = run(DUAL, |r| {
            r.runtime_ips = alloc::vec!["10.65.0.5/24".into()];
            r.args_ips = alloc::vec!["10.66.0.6".into(), "fd00:64:0:1::6".into()];
            r.cni_args.push(Kv {
                key: "IP".into(),
                value: "10.67.0.7".into(),
            });
        })
        .unwrap();
        assert_eq!(a[0].static_address.as_deref(), Some("10.65.0.5"));
        assert_eq!(a[1].static_address.as_deref(), Some("fd00:64:0:1::6"));
        let a = run(DUAL, |r| {
            r.cni_args.push(Kv {
                key: "IP".into(),
                value: "10.67.0.7".into(),
            })
        })
        .unwrap();
        assert_eq!(a[0].static_address.as_deref(), Some("10.67.0.7"));
        let a = run(DUAL, |r| {
            r.annotations.push(Kv {
                key: "tenet.io/ip".into(),
                value: "10.68.0.8".into(),
            })
        })
        .unwrap();
        assert_eq!(a[0].static_address.as_deref(), Some("10.68.0.8"));
    }

    #[test]
    fn bad_statics_are_refused_naming_the_address() {
        for (ip, needle) in [
            ("192.168.1.5", "outside pool"),
            ("10.64.0.7", "excluded"),
            ("10.70.0.15", "excluded"),
            ("banana", "banana"),
        ] {
            match run(DUAL, |r| r.runtime_ips = alloc::vec![ip.into()]) {
                Err(PolicyError::InvalidInput(m)) => assert!(
                    m.contains(needle) && m.contains("runtimeConfig.ips"),
                    "{ip}: {m}"
                ),
                other => panic!("{ip}: {other:?}"),
            }
        }
        let v4only =
            r#"{"pools":[{"name":"v4","family":"ipv4","supernet":"10.64.0.0/12","subnetLen":24}]}"#;
        assert!(matches!(
            run(v4only, |r| r.args_ips = alloc::vec!["fd00::1".into()]),
            Err(PolicyError::InvalidInput(_))
        ));
        let no_static = r#"{"allowStatic":false,"pools":[{"name":"v4","family":"ipv4","supernet":"10.64.0.0/12","subnetLen":24}]}"#;
        assert!(matches!(
            run(no_static, |r| r.args_ips = alloc::vec!["10.64.1.1".into()]),
            Err(PolicyError::Denied(_))
        ));
    }

    #[test]
    fn needs_a_tenant_and_the_primary_interface() {
        let s = parse_settings::<IpamPolicy>(DUAL).unwrap();
        let r = test_request();
        assert!(
            matches!(IpamPolicy::evaluate(&r, &s, initial_plan("eth0")), Err(PolicyError::InvalidInput(m)) if m.contains("tenant-map"))
        );
        let mut p = initial_plan("net1");
        p.tenant = "acme".into();
        assert!(matches!(
            IpamPolicy::evaluate(&r, &s, p),
            Err(PolicyError::InvalidInput(_))
        ));
    }

    #[test]
    fn earlier_requests_of_other_families_are_kept() {
        let v4only =
            r#"{"pools":[{"name":"v4","family":"ipv4","supernet":"10.64.0.0/12","subnetLen":24}]}"#;
        let s = parse_settings::<IpamPolicy>(v4only).unwrap();
        let mut p = initial_plan("eth0");
        p.tenant = "acme".into();
        let v6 = AddressRequest {
            family: IpFamily::Ipv6,
            pool: None,
            static_address: Some("fd00:1::5".into()),
        };
        let stale_v4 = AddressRequest {
            family: IpFamily::Ipv4,
            pool: None,
            static_address: Some("192.0.2.1".into()),
        };
        p.interfaces[0].addresses = alloc::vec![v6.clone(), stale_v4];
        let out = IpamPolicy::evaluate(&test_request(), &s, p).unwrap();
        let a = &out.interfaces[0].addresses;
        assert_eq!(a.len(), 2, "{a:?}");
        // Its own family replaced (the pool request), the other one kept.
        assert_eq!(a[0].pool.as_ref().unwrap().name, "v4");
        assert_eq!(a[0].static_address, None);
        assert_eq!(a[1], v6);
    }

    #[test]
    fn per_tenant_pools() {
        let s = r#"{"pools":[{"name":"a","family":"ipv4","supernet":"10.64.0.0/12","subnetLen":24},{"name":"b","family":"ipv4","supernet":"10.80.0.0/12","subnetLen":24}],"tenants":{"acme":["b"]}}"#;
        let a = run(s, |_| {}).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].pool.as_ref().unwrap().name, "b");
    }

    #[test]
    fn settings_errors_name_the_field() {
        for (s, field) in [
            ("{}", "pools"),
            (
                r#"{"pools":[{"name":"x","family":"ipv4","supernet":"10.64.0.1/12","subnetLen":24}]}"#,
                "pools[0].supernet",
            ),
            (
                r#"{"pools":[{"name":"x","family":"ipv6","supernet":"10.64.0.0/12","subnetLen":24}]}"#,
                "pools[0].supernet",
            ),
            (
                r#"{"pools":[{"name":"x","family":"ipv4","supernet":"10.64.0.0/12","subnetLen":31}]}"#,
                "pools[0].subnetLen",
            ),
            (
                r#"{"pools":[{"name":"x","family":"ipv4","supernet":"10.64.0.0/12","subnetLen":8}]}"#,
                "pools[0].subnetLen",
            ),
            (
                r#"{"pools":[{"name":"x","family":"ipv4","supernet":"10.64.0.0/12","subnetLen":24,"exclude":["nope"]}]}"#,
                "pools[0].exclude[0]",
            ),
            (
                r#"{"pools":[{"name":"x","family":"ipv4","supernet":"10.64.0.0/12","subnetLen":24}],"tenants":{"t":["y"]}}"#,
                "tenants.t",
            ),
            (r#"{"pool":[]}"#, "pool"),
        ] {
            let e = parse_settings::<IpamPolicy>(s).unwrap_err();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
