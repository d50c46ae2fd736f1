//! A recording [`Sdn`] for unit tests of the apply engine: an in-memory model
//! of tenants and their ports, every call recorded, the Nth call failing on
//! request.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;

use ipnet::IpNet;

use super::{
    PortGuard, PortSpec, Sdn, SdnError, TenantNet, bridge_name, check_tenant_id, gateways,
};
use crate::ipam::AttachmentKey;

/// One recorded call, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdnCall {
    /// [`Sdn::ensure_tenant`].
    EnsureTenant {
        /// Tenant id.
        tenant: String,
        /// (subnet, gateway) pairs.
        subnets: Vec<(IpNet, IpAddr)>,
    },
    /// [`Sdn::attach`].
    Attach {
        /// Tenant id.
        tenant: String,
        /// Host end.
        host_ifname: String,
        /// The plan annotations the backend was given.
        annotations: Vec<crate::plan::Kv>,
    },
    /// [`Sdn::detach`] (the host end).
    Detach(String),
    /// [`Sdn::check_port`] (the host end).
    CheckPort(String),
    /// [`Sdn::remove_tenant_if_unused`].
    RemoveTenantIfUnused(String),
    /// [`Sdn::check_tenant`].
    CheckTenant(String),
    /// [`Sdn::status`].
    Status,
    /// [`Sdn::guard_port`] (the host end).
    Guard(String),
    /// [`Sdn::unguard_port`] (the host end).
    Unguard(String),
    /// [`Sdn::check_guard`] (the host end).
    CheckGuard(String),
}

impl SdnCall {
    /// The trait method's name.
    pub fn name(&self) -> &'static str {
        match self {
            SdnCall::EnsureTenant { .. } => "ensure_tenant",
            SdnCall::Attach { .. } => "attach",
            SdnCall::Detach(_) => "detach",
            SdnCall::CheckPort(_) => "check_port",
            SdnCall::RemoveTenantIfUnused(_) => "remove_tenant_if_unused",
            SdnCall::CheckTenant(_) => "check_tenant",
            SdnCall::Status => "status",
            SdnCall::Guard(_) => "guard_port",
            SdnCall::Unguard(_) => "unguard_port",
            SdnCall::CheckGuard(_) => "check_guard",
        }
    }
}

#[derive(Default)]
struct Inner {
    calls: Vec<SdnCall>,
    fail_at: Option<usize>,
    /// tenant -> gateways.
    tenants: BTreeMap<String, BTreeSet<IpNet>>,
    /// host_ifname -> tenant.
    ports: BTreeMap<String, String>,
    /// host_ifname -> its guard.
    guards: BTreeMap<String, PortGuard>,
}

/// The recording fake.
#[derive(Default)]
pub struct FakeSdn {
    inner: Mutex<Inner>,
    failpoints: Mutex<crate::apply::Failpoints>,
}

impl FakeSdn {
    /// An empty fake.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the `n`th call from now on (1-based, every method counts) fail
    /// with [`SdnError::Injected`] and change nothing.
    pub fn fail_call(&self, n: usize) {
        let mut g = self.lock();
        g.fail_at = Some(g.calls.len() + n);
    }

    /// Every call so far, failed ones included.
    pub fn calls(&self) -> Vec<SdnCall> {
        self.lock().calls.clone()
    }

    /// The names of the calls so far.
    pub fn call_names(&self) -> Vec<&'static str> {
        self.lock().calls.iter().map(SdnCall::name).collect()
    }

    /// Tenants that currently have a bridge.
    pub fn tenants(&self) -> Vec<String> {
        self.lock().tenants.keys().cloned().collect()
    }

    /// Ports attached to `tenant`'s bridge.
    pub fn ports(&self, tenant: &str) -> Vec<String> {
        self.lock()
            .ports
            .iter()
            .filter(|(_, t)| *t == tenant)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Ports that have a guard.
    pub fn guarded(&self) -> Vec<String> {
        self.lock().guards.keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, call: SdnCall) -> Result<std::sync::MutexGuard<'_, Inner>, SdnError> {
        let mut g = self.lock();
        let name = call.name();
        g.calls.push(call);
        if g.fail_at == Some(g.calls.len()) {
            return Err(SdnError::Injected(name.into()));
        }
        Ok(g)
    }
}

impl Sdn for FakeSdn {
    fn ensure_tenant(
        &self,
        tenant: &str,
        subnets: &[(IpNet, IpAddr)],
    ) -> Result<TenantNet, SdnError> {
        let mut g = self.record(SdnCall::EnsureTenant {
            tenant: tenant.to_owned(),
            subnets: subnets.to_vec(),
        })?;
        check_tenant_id(tenant)?;
        let gws = gateways(subnets)?;
        // The same points as the Linux backend's, in the same order.
        let fp = self
            .failpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        g.tenants.entry(tenant.to_owned()).or_default();
        for point in [
            "ensure-tenant:bridge",
            "ensure-tenant:rules",
            "ensure-tenant:gateway",
        ] {
            fp.after(point).map_err(|msg| SdnError::Failpoint {
                step: point.to_owned(),
                msg,
            })?;
        }
        g.tenants
            .entry(tenant.to_owned())
            .or_default()
            .extend(gws.iter().copied());
        Ok(TenantNet {
            bridge: bridge_name(tenant),
            ifindex: Some(1000 + g.tenants.keys().position(|t| t == tenant).unwrap_or(0) as u32),
            gateways: gws,
        })
    }

    fn attach(&self, tenant: &str, port: &PortSpec) -> Result<(), SdnError> {
        let host_ifname = port.host_ifname.as_str();
        let mut g = self.record(SdnCall::Attach {
            tenant: tenant.to_owned(),
            host_ifname: host_ifname.to_owned(),
            annotations: port.annotations.clone(),
        })?;
        if !g.tenants.contains_key(tenant) {
            return Err(SdnError::Missing {
                resource: format!("bridge {} of tenant {tenant:?}", bridge_name(tenant)),
            });
        }
        g.ports.insert(host_ifname.to_owned(), tenant.to_owned());
        Ok(())
    }

    fn detach(
        &self,
        _tenant: &str,
        _key: &AttachmentKey,
        host_ifname: &str,
    ) -> Result<(), SdnError> {
        let mut g = self.record(SdnCall::Detach(host_ifname.to_owned()))?;
        g.ports.remove(host_ifname);
        Ok(())
    }

    fn remove_tenant_if_unused(&self, tenant: &str) -> Result<bool, SdnError> {
        let mut g = self.record(SdnCall::RemoveTenantIfUnused(tenant.to_owned()))?;
        if g.ports.values().any(|t| t == tenant) {
            return Ok(false);
        }
        g.tenants.remove(tenant);
        Ok(true)
    }

    fn check_tenant(&self, tenant: &str, subnets: &[(IpNet, IpAddr)]) -> Result<(), SdnError> {
        let g = self.record(SdnCall::CheckTenant(tenant.to_owned()))?;
        let have = g.tenants.get(tenant).ok_or_else(|| SdnError::Missing {
            resource: format!("bridge {} of tenant {tenant:?}", bridge_name(tenant)),
        })?;
        for gw in gateways(subnets)? {
            if !have.contains(&gw) {
                return Err(SdnError::Missing {
                    resource: format!("gateway address {gw} on bridge {}", bridge_name(tenant)),
                });
            }
        }
        Ok(())
    }

    fn check_port(&self, tenant: &str, port: &PortSpec) -> Result<(), SdnError> {
        let g = self.record(SdnCall::CheckPort(port.host_ifname.clone()))?;
        if g.ports.get(&port.host_ifname).map(String::as_str) != Some(tenant) {
            return Err(SdnError::Missing {
                resource: format!(
                    "port {} on bridge {}",
                    port.host_ifname,
                    bridge_name(tenant)
                ),
            });
        }
        Ok(())
    }

    fn status(&self) -> Result<(), SdnError> {
        self.record(SdnCall::Status).map(drop)
    }

    fn guard_port(&self, guard: &PortGuard) -> Result<(), SdnError> {
        let mut g = self.record(SdnCall::Guard(guard.host_ifname.clone()))?;
        g.guards.insert(guard.host_ifname.clone(), guard.clone());
        Ok(())
    }

    fn unguard_port(&self, host_ifname: &str) -> Result<(), SdnError> {
        let mut g = self.record(SdnCall::Unguard(host_ifname.to_owned()))?;
        g.guards.remove(host_ifname);
        Ok(())
    }

    fn set_failpoints(&self, failpoints: &crate::apply::Failpoints) {
        *self.failpoints.lock().unwrap_or_else(|e| e.into_inner()) = failpoints.clone();
    }

    fn check_guard(&self, guard: &PortGuard) -> Result<(), SdnError> {
        let g = self.record(SdnCall::CheckGuard(guard.host_ifname.clone()))?;
        if g.guards.get(&guard.host_ifname) != Some(guard) {
            return Err(SdnError::Missing {
                resource: format!("the guard of {}", guard.host_ifname),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(host: &str) -> PortSpec {
        PortSpec {
            key: AttachmentKey::new("net", host, "eth0"),
            host_ifname: host.into(),
            mac: None,
            addresses: Vec::new(),
            annotations: Vec::new(),
        }
    }

    fn det(f: &FakeSdn, host: &str) -> Result<(), SdnError> {
        f.detach("acme", &port(host).key, host)
    }

    fn subnet() -> Vec<(IpNet, IpAddr)> {
        vec![("10.1.0.0/24".parse().unwrap(), "10.1.0.1".parse().unwrap())]
    }

    #[test]
    fn models_tenant_lifecycle() {
        let f = FakeSdn::new();
        let t = f.ensure_tenant("acme", &subnet()).unwrap();
        assert_eq!(t.bridge, bridge_name("acme"));
        f.attach("acme", &port("tn1")).unwrap();
        f.attach("acme", &port("tn2")).unwrap();
        f.check_tenant("acme", &subnet()).unwrap();
        assert!(f.attach("other", &port("tn3")).is_err());
        det(&f, "tn1").unwrap();
        assert!(!f.remove_tenant_if_unused("acme").unwrap());
        det(&f, "tn2").unwrap();
        det(&f, "tn2").unwrap();
        assert!(f.remove_tenant_if_unused("acme").unwrap());
        assert!(f.tenants().is_empty());
        let e = f.check_tenant("acme", &subnet()).unwrap_err();
        assert!(e.to_string().contains(&bridge_name("acme")), "{e}");
        assert_eq!(
            f.calls()[0],
            SdnCall::EnsureTenant {
                tenant: "acme".into(),
                subnets: subnet()
            }
        );
        assert_eq!(f.call_names().len(), 11);
    }

    #[test]
    fn fails_the_nth_call_and_changes_nothing() {
        let f = FakeSdn::new();
        f.ensure_tenant("acme", &subnet()).unwrap();
        f.fail_call(2);
        f.status().unwrap();
        let e = f.attach("acme", &port("tn1")).unwrap_err();
        assert!(matches!(e, SdnError::Injected(ref m) if m == "attach"));
        assert!(f.ports("acme").is_empty());
        f.attach("acme", &port("tn1")).unwrap();
        assert_eq!(f.ports("acme"), ["tn1"]);
    }
}
