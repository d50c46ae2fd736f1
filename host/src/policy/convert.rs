//! Conversions between [`crate::plan`] types and the WIT types.
//!
//! Into a stage: the generated bindings' types, one-to-one with the plan
//! types. Out of a stage: the answer is **not** lifted into host memory by
//! the bindings. It is lifted as [`RawAnswer`], whose strings and lists are
//! [`WasmStr`]/[`WasmList`] views of the guest's memory (bounds-checked,
//! nothing copied), and [`read_plan`] copies it field by field while it
//! checks list lengths against the plan limits, the bytes of each element
//! (through the store's hostcall fuel) and the plan's total text
//! (`plan::validate::limits::PLAN_BYTES`). So the host never allocates more
//! for a stage's answer than a valid plan takes, and a module's message is
//! clipped in place ([`MODULE_TEXT_BYTES`](super::MODULE_TEXT_BYTES)), never
//! copied whole.

use wasmtime::component::{ComponentType, Lift, WasmList, WasmStr};
use wasmtime::{AsContextMut, Store};

use super::bindings::types as w;
use crate::plan as p;
use crate::plan::validate::{PlanError, limits};

fn kv_to(v: &[p::Kv]) -> Vec<w::Kv> {
    v.iter()
        .map(|k| w::Kv {
            key: k.key.clone(),
            value: k.value.clone(),
        })
        .collect()
}

fn dns_to(d: &p::Dns) -> w::Dns {
    w::Dns {
        nameservers: d.nameservers.clone(),
        domain: d.domain.clone(),
        search: d.search.clone(),
        options: d.options.clone(),
    }
}

/// The request record a stage receives.
pub fn request_to_wit(r: &p::Request) -> w::Request {
    w::Request {
        command: match r.command {
            p::Command::Add => w::Command::Add,
            p::Command::Check => w::Command::Check,
            p::Command::Del => w::Command::Del,
        },
        container_id: r.container_id.clone(),
        ifname: r.ifname.clone(),
        netns: r.netns.clone(),
        network: r.network.clone(),
        pod_namespace: r.pod_namespace.clone(),
        pod_name: r.pod_name.clone(),
        pod_uid: r.pod_uid.clone(),
        cni_args: kv_to(&r.cni_args),
        args_ips: r.args_ips.clone(),
        runtime_ips: r.runtime_ips.clone(),
        mac: r.mac.clone(),
        runtime_dns: r.runtime_dns.as_ref().map(dns_to),
        port_mappings: r
            .port_mappings
            .iter()
            .map(|m| w::PortMapping {
                host_port: m.host_port,
                container_port: m.container_port,
                protocol: m.protocol.clone(),
                host_ip: m.host_ip.clone(),
            })
            .collect(),
        bandwidth: r.bandwidth.as_ref().map(|b| w::Bandwidth {
            ingress_rate: b.ingress_rate,
            ingress_burst: b.ingress_burst,
            egress_rate: b.egress_rate,
            egress_burst: b.egress_burst,
        }),
        labels: kv_to(&r.labels),
        annotations: kv_to(&r.annotations),
        extra: kv_to(&r.extra),
    }
}

fn family_to(f: p::IpFamily) -> w::IpFamily {
    match f {
        p::IpFamily::Ipv4 => w::IpFamily::Ipv4,
        p::IpFamily::Ipv6 => w::IpFamily::Ipv6,
    }
}

fn family_from(f: w::IpFamily) -> p::IpFamily {
    match f {
        w::IpFamily::Ipv4 => p::IpFamily::Ipv4,
        w::IpFamily::Ipv6 => p::IpFamily::Ipv6,
    }
}

/// A plan as a stage sees it.
pub fn plan_to_wit(plan: &p::Plan) -> w::Plan {
    w::Plan {
        tenant: plan.tenant.clone(),
        interfaces: plan
            .interfaces
            .iter()
            .map(|i| w::Interface {
                name: i.name.clone(),
                kind: match i.kind {
                    p::InterfaceKind::SdnPort => w::InterfaceKind::SdnPort,
                    p::InterfaceKind::HostLink => w::InterfaceKind::HostLink,
                },
                addresses: i
                    .addresses
                    .iter()
                    .map(|a| w::AddressRequest {
                        family: family_to(a.family),
                        pool: a.pool.as_ref().map(|p| w::Pool {
                            name: p.name.clone(),
                            supernet: p.supernet.clone(),
                            subnet_len: p.subnet_len,
                            exclude: p.exclude.clone(),
                        }),
                        static_address: a.static_address.clone(),
                    })
                    .collect(),
                mac: i.mac.clone(),
                mtu: i.mtu,
            })
            .collect(),
        routes: plan
            .routes
            .iter()
            .map(|r| w::Route {
                dst: r.dst.clone(),
                interface: r.interface.clone(),
                via: match &r.via {
                    p::NextHop::SubnetGateway => w::NextHop::SubnetGateway,
                    p::NextHop::Address(a) => w::NextHop::Address(a.clone()),
                    p::NextHop::OnLink => w::NextHop::OnLink,
                },
                metric: r.metric,
                mtu: r.mtu,
            })
            .collect(),
        dns: dns_to(&plan.dns),
        sysctls: kv_to(&plan.sysctls),
        annotations: kv_to(&plan.annotations),
    }
}

// ---- out of a stage: lazy views, read under limits -----------------------

/// `kv`, in the guest's memory.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct RawKv {
    key: WasmStr,
    value: WasmStr,
}

/// `pool`, in the guest's memory.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct RawPool {
    name: WasmStr,
    supernet: WasmStr,
    #[component(name = "subnet-len")]
    subnet_len: u8,
    exclude: WasmList<WasmStr>,
}

/// `address-request`, in the guest's memory.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct RawAddressRequest {
    family: w::IpFamily,
    pool: Option<RawPool>,
    #[component(name = "static-address")]
    static_address: Option<WasmStr>,
}

/// `interface`, in the guest's memory.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct RawInterface {
    name: WasmStr,
    kind: w::InterfaceKind,
    addresses: WasmList<RawAddressRequest>,
    mac: Option<WasmStr>,
    mtu: Option<u32>,
}

/// `next-hop`, in the guest's memory.
#[derive(ComponentType, Lift)]
#[component(variant)]
pub enum RawNextHop {
    #[component(name = "subnet-gateway")]
    SubnetGateway,
    #[component(name = "address")]
    Address(WasmStr),
    #[component(name = "on-link")]
    OnLink,
}

/// `route`, in the guest's memory.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct RawRoute {
    dst: WasmStr,
    interface: WasmStr,
    via: RawNextHop,
    metric: Option<u32>,
    mtu: Option<u32>,
}

/// `dns`, in the guest's memory.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct RawDns {
    nameservers: WasmList<WasmStr>,
    domain: Option<WasmStr>,
    search: WasmList<WasmStr>,
    options: WasmList<WasmStr>,
}

/// `plan`, in the guest's memory.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct RawPlan {
    tenant: WasmStr,
    interfaces: WasmList<RawInterface>,
    routes: WasmList<RawRoute>,
    dns: RawDns,
    sysctls: WasmList<RawKv>,
    annotations: WasmList<RawKv>,
}

/// `policy-error`, in the guest's memory.
#[derive(ComponentType, Lift)]
#[component(variant)]
pub enum RawPolicyError {
    #[component(name = "denied")]
    Denied(WasmStr),
    #[component(name = "invalid-settings")]
    InvalidSettings(WasmStr),
    #[component(name = "invalid-input")]
    InvalidInput(WasmStr),
    #[component(name = "internal")]
    Internal(WasmStr),
}

/// What `evaluate` returns, unread.
pub type RawAnswer = Result<RawPlan, RawPolicyError>;

/// Hostcall fuel (bytes the host may lift) for one element of a list in a
/// stage's answer: the largest valid element (an annotation) is under 5 KiB.
pub const ELEMENT_BYTES: usize = 16 * 1024;

/// A stage's error, its message clipped in place.
pub enum StageError {
    /// `denied`.
    Denied(String),
    /// `invalid-settings`.
    InvalidSettings(String),
    /// `invalid-input`.
    InvalidInput(String),
    /// `internal`.
    Internal(String),
}

/// Reads a module's message: validated where it lies, then at most
/// [`super::MODULE_TEXT_BYTES`] of it copied (control characters escaped).
pub fn read_message<T: 'static>(store: &Store<T>, s: &WasmStr) -> String {
    match s.to_str(store) {
        Ok(text) => super::clip_module_text(&text),
        Err(_) => "(the stage's message is not valid UTF-8)".into(),
    }
}

/// Reads a stage's error.
pub fn read_error<T: 'static>(store: &Store<T>, e: &RawPolicyError) -> StageError {
    match e {
        RawPolicyError::Denied(m) => StageError::Denied(read_message(store, m)),
        RawPolicyError::InvalidSettings(m) => StageError::InvalidSettings(read_message(store, m)),
        RawPolicyError::InvalidInput(m) => StageError::InvalidInput(read_message(store, m)),
        RawPolicyError::Internal(m) => StageError::Internal(read_message(store, m)),
    }
}

/// Copies a stage's plan out of its memory under the plan limits; the
/// first limit it breaks is the error, named by field. Sets the store's
/// hostcall fuel to [`ELEMENT_BYTES`] for the element reads.
pub fn read_plan<T: 'static>(store: &mut Store<T>, raw: &RawPlan) -> Result<p::Plan, PlanError> {
    store.set_hostcall_fuel(ELEMENT_BYTES);
    let mut r = Reader {
        store,
        left: limits::PLAN_BYTES,
    };
    let tenant = r.str(&raw.tenant, "tenant")?;
    let mut interfaces = Vec::new();
    for (i, ri) in r
        .list(&raw.interfaces, "interfaces", limits::INTERFACES)?
        .into_iter()
        .enumerate()
    {
        let at = |f: &str| format!("interfaces[{i}].{f}");
        let mut addresses = Vec::new();
        for (j, ra) in r
            .list(&ri.addresses, &at("addresses"), limits::ADDRESSES)?
            .into_iter()
            .enumerate()
        {
            let at = |f: &str| format!("interfaces[{i}].addresses[{j}].{f}");
            let pool = match &ra.pool {
                None => None,
                Some(rp) => Some(p::Pool {
                    name: r.str(&rp.name, &at("pool.name"))?,
                    supernet: r.str(&rp.supernet, &at("pool.supernet"))?,
                    subnet_len: rp.subnet_len,
                    exclude: r.strs(&rp.exclude, &at("pool.exclude"), limits::EXCLUDES)?,
                }),
            };
            addresses.push(p::AddressRequest {
                family: family_from(ra.family),
                pool,
                static_address: r.opt(&ra.static_address, &at("staticAddress"))?,
            });
        }
        interfaces.push(p::Interface {
            name: r.str(&ri.name, &at("name"))?,
            kind: match ri.kind {
                w::InterfaceKind::SdnPort => p::InterfaceKind::SdnPort,
                w::InterfaceKind::HostLink => p::InterfaceKind::HostLink,
            },
            addresses,
            mac: r.opt(&ri.mac, &at("mac"))?,
            mtu: ri.mtu,
        });
    }
    let mut routes = Vec::new();
    for (i, rr) in r
        .list(&raw.routes, "routes", limits::ROUTES)?
        .into_iter()
        .enumerate()
    {
        let at = |f: &str| format!("routes[{i}].{f}");
        routes.push(p::Route {
            dst: r.str(&rr.dst, &at("dst"))?,
            interface: r.str(&rr.interface, &at("interface"))?,
            via: match &rr.via {
                RawNextHop::SubnetGateway => p::NextHop::SubnetGateway,
                RawNextHop::Address(a) => p::NextHop::Address(r.str(a, &at("via"))?),
                RawNextHop::OnLink => p::NextHop::OnLink,
            },
            metric: rr.metric,
            mtu: rr.mtu,
        });
    }
    let dns = p::Dns {
        nameservers: r.strs(&raw.dns.nameservers, "dns.nameservers", limits::DNS_ENTRIES)?,
        domain: r.opt(&raw.dns.domain, "dns.domain")?,
        search: r.strs(&raw.dns.search, "dns.search", limits::DNS_ENTRIES)?,
        options: r.strs(&raw.dns.options, "dns.options", limits::DNS_ENTRIES)?,
    };
    let sysctls = r.kvs(&raw.sysctls, "sysctls", limits::SYSCTLS)?;
    let annotations = r.kvs(&raw.annotations, "annotations", limits::ANNOTATIONS)?;
    Ok(p::Plan {
        tenant,
        interfaces,
        routes,
        dns,
        sysctls,
        annotations,
    })
}

/// Copies strings out of a guest's memory against the plan's byte budget.
struct Reader<'a, T: 'static> {
    store: &'a mut Store<T>,
    /// Bytes of text the plan may still hold.
    left: usize,
}

impl<T: 'static> Reader<'_, T> {
    fn str(&mut self, s: &WasmStr, field: &str) -> Result<String, PlanError> {
        let err = |message: String| PlanError {
            field: field.to_owned(),
            message,
        };
        // Validated in place; copied only once it is known to fit.
        let text = s
            .to_str(&*self.store)
            .map_err(|_| err("is not valid UTF-8".into()))?;
        if text.len() > limits::STRING_BYTES {
            return Err(err(format!(
                "{} bytes, at most {} for any string of a plan",
                text.len(),
                limits::STRING_BYTES
            )));
        }
        self.left = self.left.checked_sub(text.len()).ok_or_else(|| PlanError {
            field: "plan".into(),
            message: format!(
                "more than {} bytes of text (at {field})",
                limits::PLAN_BYTES
            ),
        })?;
        Ok(text.into_owned())
    }

    fn opt(&mut self, s: &Option<WasmStr>, field: &str) -> Result<Option<String>, PlanError> {
        s.as_ref().map(|s| self.str(s, field)).transpose()
    }

    /// The elements of a list, each lifted with at most [`ELEMENT_BYTES`]
    /// of hostcall fuel, once its length is within `max`.
    fn list<E: Lift>(
        &mut self,
        l: &WasmList<E>,
        field: &str,
        max: usize,
    ) -> Result<Vec<E>, PlanError> {
        if l.len() > max {
            return Err(PlanError {
                field: field.to_owned(),
                message: format!("{} entries, at most {max} allowed", l.len()),
            });
        }
        (0..l.len())
            .map(|i| match l.get(self.store.as_context_mut(), i) {
                Some(Ok(e)) => Ok(e),
                Some(Err(e)) => Err(PlanError {
                    field: format!("{field}[{i}]"),
                    message: format!(
                        "cannot be read within {ELEMENT_BYTES} bytes: {}",
                        e.root_cause()
                    ),
                }),
                None => unreachable!("index below the list's length"),
            })
            .collect()
    }

    fn strs(
        &mut self,
        l: &WasmList<WasmStr>,
        field: &str,
        max: usize,
    ) -> Result<Vec<String>, PlanError> {
        let items = self.list(l, field, max)?;
        items
            .iter()
            .enumerate()
            .map(|(i, s)| self.str(s, &format!("{field}[{i}]")))
            .collect()
    }

    fn kvs(
        &mut self,
        l: &WasmList<RawKv>,
        field: &str,
        max: usize,
    ) -> Result<Vec<p::Kv>, PlanError> {
        let items = self.list(l, field, max)?;
        items
            .iter()
            .enumerate()
            .map(|(i, kv)| {
                Ok(p::Kv {
                    key: self.str(&kv.key, &format!("{field}[{i}].key"))?,
                    value: self.str(&kv.value, &format!("{field}[{i}].value"))?,
                })
            })
            .collect()
    }
}
