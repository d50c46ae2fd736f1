//! The network plan: what the policy pipeline decides and the apply engine
//! executes. These are plain serde types, independent of wasmtime, so every
//! backend consumes them directly and `tenetctl plan` prints them as JSON.
//!
//! They mirror the `tenet:policy/types` WIT records one to one; the
//! conversions live in `policy::convert`. What a plan may contain is decided
//! by `validate` (shape and bounds), `authority` (the operator's address
//! ranges) and `node` (the node's own addresses and routes, at ADD time).
//! Validation parses the plan's strings once and hands on a typed
//! [`ValidPlan`] (`valid`): what apply, the address stores and the CNI
//! result consume.

pub mod authority;
pub mod node;
pub mod valid;
pub mod validate;

use serde::{Deserialize, Serialize};

pub use authority::AddressAuthority;
pub use valid::{
    AddressSpec, Exclusion, PoolSpec, StaticAddress, ValidDns, ValidInterface, ValidPlan,
    ValidRoute, Via,
};
pub use validate::{PlanError, validate};

/// A key/value pair (labels, annotations, sysctls, CNI_ARGS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

impl Kv {
    /// Builds a pair from anything string-like.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// The CNI command a request plans for (the pipeline runs for these only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// ADD.
    Add,
    /// CHECK.
    Check,
    /// DEL.
    Del,
}

/// A normalised runtimeConfig `portMappings` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port on the node.
    pub host_port: u16,
    /// Port in the pod.
    pub container_port: u16,
    /// "tcp", "udp" or "sctp" (lower case).
    pub protocol: String,
    /// Host address to bind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

/// runtimeConfig `bandwidth` (bits/s and bits).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    /// Ingress rate.
    pub ingress_rate: u64,
    /// Ingress burst.
    pub ingress_burst: u64,
    /// Egress rate.
    pub egress_rate: u64,
    /// Egress burst.
    pub egress_burst: u64,
}

/// What the runtime asked for, normalised: the `request` record every stage
/// receives. Built from a parsed CNI invocation or by `tenetctl plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Request {
    /// The CNI command.
    pub command: Command,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_NETNS (empty when unset).
    #[serde(default)]
    pub netns: String,
    /// Network name from the configuration.
    pub network: String,
    /// K8S_POD_NAMESPACE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// K8S_POD_NAME.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// K8S_POD_UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Every CNI_ARGS pair except IgnoreUnknown, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<Kv>,
    /// `args.cni.ips`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args_ips: Vec<String>,
    /// runtimeConfig `ips`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime_ips: Vec<String>,
    /// runtimeConfig `mac`, or CNI_ARGS `MAC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// runtimeConfig `dns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_dns: Option<Dns>,
    /// runtimeConfig `portMappings`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    /// runtimeConfig `bandwidth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
    /// Pod labels when known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<Kv>,
    /// Pod annotations when known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Kv>,
    /// Host-provided facts without a field of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<Kv>,
}

/// Address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// A range the address store carves per-tenant subnets from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    /// Stable name of the pool in the address store.
    pub name: String,
    /// Supernet (CIDR) that tenant subnets are carved from.
    pub supernet: String,
    /// Prefix length of each tenant subnet.
    pub subnet_len: u8,
    /// Excluded CIDRs or `a-b` ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// One address an interface needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressRequest {
    /// Address family.
    pub family: IpFamily,
    /// Pool to allocate from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Pool>,
    /// A specific address to honour, with or without a prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_address: Option<String>,
}

/// What an interface is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InterfaceKind {
    /// A port on the tenant's network in the SDN.
    SdnPort,
    /// A veth to the node's own namespace (Rainbond's eth1).
    HostLink,
}

/// An interface to create in the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Name inside the pod.
    pub name: String,
    /// What it attaches to.
    pub kind: InterfaceKind,
    /// Addresses it needs.
    #[serde(default)]
    pub addresses: Vec<AddressRequest>,
    /// Requested MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Requested MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// How a route reaches its destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NextHop {
    /// The gateway of the interface's subnet, known once allocated.
    SubnetGateway,
    /// An explicit gateway address.
    Address(String),
    /// Directly on the link.
    OnLink,
}

/// A route inside the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination CIDR.
    pub dst: String,
    /// Pod interface the route leaves through.
    pub interface: String,
    /// Next hop.
    pub via: NextHop,
    /// Route metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    /// Route MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// DNS settings, as in a CNI result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// The network plan that stages refine and the host applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The tenant this pod belongs to; empty until decided.
    pub tenant: String,
    /// Interfaces to create, the primary (CNI_IFNAME) first.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Routes inside the pod.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS settings for the result.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
    /// Pod sysctls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<Kv>,
    /// Free-form hints for backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Kv>,
}

impl Plan {
    /// The plan the first stage sees: one SDN-port interface named `ifname`
    /// (with the MAC the runtime asked for) and nothing else decided.
    pub fn initial(ifname: &str, mac: Option<&str>, dns: Dns) -> Self {
        Plan {
            tenant: String::new(),
            interfaces: vec![Interface {
                name: ifname.to_owned(),
                kind: InterfaceKind::SdnPort,
                addresses: Vec::new(),
                mac: mac.map(str::to_owned),
                mtu: None,
            }],
            routes: Vec::new(),
            dns,
            sysctls: Vec::new(),
            annotations: Vec::new(),
        }
    }

    /// The interface named `name`, if planned.
    pub fn interface(&self, name: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.name == name)
    }
}
