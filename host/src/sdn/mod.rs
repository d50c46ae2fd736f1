//! Tenant networks: the [`Sdn`] trait the apply engine drives, its errors
//! and their CNI codes, the naming both backends share, and the backends:
//!
//! | module | what |
//! |---|---|
//! | `mod.rs` (here) | the [`Sdn`] trait, [`TenantNet`], [`PortSpec`], [`SdnError`] and its codes, tenant → bridge naming ([`bridge_name`], [`bridge_alias`], [`bridge_mac`]) |
//! | `linux/` | [`LinuxSdn`], the embedded default, no services: one Linux bridge per tenant, nftables rules that keep tenants apart, per-port source guards ([`PortGuard`]), optional masquerading. `linux/nft.rs` builds and applies the ruleset with `nft`, `linux/nftnl.rs` adds and lists set elements over netlink, `linux/guard.rs` computes a port's guard elements. Its design is in that module's docs |
//! | `midonet/` | [`MidonetSdn`] (module [`midonet`]): a router and bridge per tenant in MidoNet over its REST API, topology records in etcd |
//! | `fake.rs` | [`FakeSdn`], a recording double for the apply engine's unit tests |
//!
//! The apply engine calls [`Sdn::ensure_tenant`] then [`Sdn::attach`] on
//! ADD, [`Sdn::detach`] and [`Sdn::remove_tenant_if_unused`] on DEL,
//! [`Sdn::check_tenant`] and [`Sdn::check_port`] on CHECK, [`Sdn::status`]
//! on STATUS; every method is idempotent, so a retried or racing CNI call
//! converges. Records of what was wired are kept
//! by the apply engine, not by a backend. Tenant ids are arbitrary strings:
//! a backend names things after [`tenant_ident`] (a hash), never the id.
//!
//! **Errors and CNI codes** ([`SdnError::cni_code`], named in
//! [`crate::cni::codes`]): invalid input 7, netlink 123, `nft` failed (or a
//! guard batch refused) 150, a resource missing (CHECK, attach) 151, a name or
//! address taken by something else 152, `nft` missing or unusable 50 (what
//! STATUS reports), a failpoint or the fake's injected failure 149.
//! The MidoNet backend ([`midonet`]) adds: MidoNet or etcd unreachable, a
//! tenant busy on another node, or MidoNet's concurrent-modification 409s
//! persisting, 11; MidoNet rejected a call 153; a MidoNet server error 154; a
//! corrupt topology record 155; no link network left 156.

pub mod fake;
mod linux;
pub mod midonet;

use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::cni::codes;
use crate::ipam::AttachmentKey;
use crate::netns::{MacAddr, NetnsError};

pub use fake::{FakeSdn, SdnCall};
pub use linux::LinuxSdn;
pub use linux::guard::{PortGuard, link_local};
pub use linux::nft::{ServiceScope, TABLE};
pub use midonet::MidonetSdn;

/// Options of the Linux backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdnOptions {
    /// Masquerade traffic from tenant subnets that leaves through an
    /// interface that is neither a tenant bridge nor a pod host link.
    pub masquerade: bool,
    /// The `nft` binary.
    pub nft: std::path::PathBuf,
    /// Where the per-bridge-name locks live (the apply engine's
    /// `<state_dir>/locks`).
    pub lock_dir: std::path::PathBuf,
    /// Which tenants' pods a pod may reach through a service.
    pub services: ServiceScope,
    /// Tenants every pod may reach through a service whatever `services`
    /// says (cluster DNS: `kube-system`).
    pub shared_tenants: Vec<String>,
    /// Keep a tenant's network, idle, when its last port leaves
    /// ([`Sdn::keeps_idle_tenants`]).
    pub keep_idle_tenants: bool,
}

impl Default for SdnOptions {
    fn default() -> Self {
        Self {
            masquerade: false,
            nft: "nft".into(),
            lock_dir: "/run/tenet/locks".into(),
            services: ServiceScope::Any,
            shared_tenants: vec!["kube-system".into()],
            keep_idle_tenants: true,
        }
    }
}

/// What [`Sdn::ensure_tenant`] made sure of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantNet {
    /// The bridge's name.
    pub bridge: String,
    /// Its ifindex in the node namespace, for backends whose tenant network
    /// is a kernel bridge on the node (`None` for MidoNet).
    pub ifindex: Option<u32>,
    /// Gateway addresses on the bridge, with their subnet's prefix.
    pub gateways: Vec<IpNet>,
}

/// One pod attachment's port on its tenant's network: what
/// [`Sdn::attach`] binds and [`Sdn::check_port`] verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// The CNI attachment that owns the port (network, container id, ifname).
    pub key: AttachmentKey,
    /// The host end of the pod's veth, in the node namespace.
    pub host_ifname: String,
    /// The pod end's MAC (backends that learn statically use it).
    pub mac: Option<MacAddr>,
    /// The pod's addresses on this port, with their subnet's prefix.
    pub addresses: Vec<IpNet>,
    /// The plan's annotations (already validated). A backend acts on the
    /// keys it documents ([`HOST_ALIAS`]) and ignores the rest.
    pub annotations: Vec<crate::plan::Kv>,
}

/// Plan annotation a stage sets to label the pod's host-side interfaces:
/// the Linux backend writes it as the ifalias of each SDN port's host end
/// (`ip link` shows it beside the `tn…` name), so an operator can tell whose
/// interface it is without reading records. Validated in
/// `plan::validate` (printable, at most [`HOST_ALIAS_MAX`] bytes).
pub const HOST_ALIAS: &str = "tenet.io/host-alias";

/// Longest [`HOST_ALIAS`] value (the kernel allows 255; `ip link` output
/// stays readable).
pub const HOST_ALIAS_MAX: usize = 128;

/// Annotation keys under `tenet.io/` that some backend acts on. Any other
/// `tenet.io/` key in a plan is refused, so a misspelt key fails loudly
/// instead of being silently ignored.
pub const BACKEND_ANNOTATIONS: &[&str] = &[HOST_ALIAS];

impl PortSpec {
    /// The value of a plan annotation, if the plan set it.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|a| a.key == key)
            .map(|a| a.value.as_str())
    }
}

/// Errors of the SDN backends.
#[derive(Debug, thiserror::Error)]
pub enum SdnError {
    /// Input the plan should not have let through.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The kernel refused a netlink request.
    #[error("netlink {op}: {source}")]
    Netlink {
        /// What was attempted.
        op: String,
        /// The error.
        #[source]
        source: rtnetlink::Error,
    },
    /// `nft` is missing or cannot talk to the kernel.
    #[error("nftables unavailable: {0}")]
    NftUnavailable(String),
    /// `nft` refused a script.
    #[error("nft {op}: {stderr}")]
    Nft {
        /// What was attempted.
        op: String,
        /// What nft said.
        stderr: String,
    },
    /// A resource that should exist does not (CHECK, or attach before ensure).
    #[error("{resource} is missing")]
    Missing {
        /// The resource, by name.
        resource: String,
    },
    /// A name or address tenet needs is taken by something else.
    #[error("{0}")]
    Conflict(String),
    /// Setting up the netlink runtime failed.
    #[error(transparent)]
    Runtime(#[from] NetnsError),
    /// A failure injected by [`FakeSdn`] (code 149).
    #[error("injected failure in {0}")]
    Injected(String),
    /// A failure injected by a failpoint (`TENET_FAILPOINT`, test builds;
    /// code 149 like the apply engine's).
    #[error("{msg}")]
    Failpoint {
        /// The point (`ensure-tenant:bridge`, …).
        step: String,
        /// What it says.
        msg: String,
    },
    /// A MidoNet REST call failed (code 11 when unreachable, 153 rejected,
    /// 154 server error).
    #[error(transparent)]
    Midonet(#[from] midonet::client::ApiError),
    /// The MidoNet topology records (etcd) failed (11 unreachable, 155
    /// corrupt).
    #[error(transparent)]
    Records(#[from] midonet::records::RecordsError),
    /// Another node holds the tenant's topology for too long, or our claim
    /// was lost (code 11).
    #[error("{0}")]
    Busy(String),
    /// No link network left for a new tenant router (code 156).
    #[error("{0}")]
    LinkPoolExhausted(String),
}

impl SdnError {
    /// The CNI error code this maps to (see the module docs).
    pub fn cni_code(&self) -> u32 {
        match self {
            SdnError::InvalidInput(_) => codes::INVALID_CONFIG,
            SdnError::Netlink { .. } => codes::NETLINK,
            SdnError::NftUnavailable(_) => codes::NOT_AVAILABLE,
            SdnError::Nft { .. } => codes::NFT_FAILED,
            SdnError::Injected(_) | SdnError::Failpoint { .. } => codes::INJECTED,
            SdnError::Missing { .. } => codes::SDN_MISSING,
            SdnError::Conflict(_) => codes::SDN_CONFLICT,
            SdnError::Runtime(e) => e.cni_code(),
            SdnError::Midonet(e) => e.cni_code(),
            SdnError::Records(e) => e.cni_code(),
            SdnError::Busy(_) => codes::TRY_AGAIN_LATER,
            SdnError::LinkPoolExhausted(_) => codes::LINK_POOL_EXHAUSTED,
        }
    }

    pub(crate) fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        SdnError::Netlink {
            op: op.into(),
            source,
        }
    }
}

/// A tenant's network on the node. Synchronous: the real implementation owns
/// a current-thread tokio runtime and must not be called from inside another
/// tokio runtime.
pub trait Sdn {
    /// Makes sure the tenant's bridge exists, is up, holds each subnet's
    /// gateway (with the subnet's prefix), and that its isolation rules are
    /// installed. Idempotent and safe when two ADDs race. Records nothing on
    /// disk: the apply engine records. The caller holds the tenant's lock
    /// (`apply::lock`): a backend that keeps idle networks
    /// ([`Sdn::keeps_idle_tenants`]) replaces an idle network of this tenant
    /// whose rules or gateways differ, and first removes another tenant's
    /// idle network on an overlapping subnet (under that tenant's lock),
    /// refusing (code 152) while such a network has ports.
    fn ensure_tenant(
        &self,
        tenant: &str,
        subnets: &[(IpNet, IpAddr)],
    ) -> Result<TenantNet, SdnError>;

    /// Connects a pod's host veth end to the tenant's network (Linux: enslaves
    /// it to the tenant's bridge; MidoNet: a bridge port bound to this host's
    /// interface). Idempotent: a retried ADD of the same attachment reuses
    /// what is there.
    fn attach(&self, tenant: &str, port: &PortSpec) -> Result<(), SdnError>;

    /// Disconnects an attachment's port; a port or link that is already gone
    /// is success.
    fn detach(&self, tenant: &str, key: &AttachmentKey, host_ifname: &str) -> Result<(), SdnError>;

    /// For CHECK: the attachment's port exists and is connected to the
    /// tenant's network. Errors name what is wrong.
    fn check_port(&self, tenant: &str, port: &PortSpec) -> Result<(), SdnError>;

    /// When the tenant's bridge has no ports left, deletes it and the
    /// tenant's rules and returns true; returns false while ports remain.
    /// True as well when nothing was left to delete.
    fn remove_tenant_if_unused(&self, tenant: &str) -> Result<bool, SdnError>;

    /// Whether DEL leaves a tenant network that has no port left in place,
    /// idle, for the tenant's next pod (whose ADD then finds it ready),
    /// instead of calling [`Sdn::remove_tenant_if_unused`]. A backend that
    /// keeps idle networks removes them in [`Sdn::reap_idle_tenants`], and
    /// its `ensure_tenant` removes an idle network of another tenant whose
    /// subnets overlap the new one's before installing anything. Default:
    /// false.
    fn keeps_idle_tenants(&self) -> bool {
        false
    }

    /// GC: removes every idle tenant network on the node, each under its
    /// tenant's lock and only if it still has no port there; returns the
    /// bridges removed.
    fn reap_idle_tenants(&self) -> Result<Vec<String>, SdnError> {
        Ok(Vec::new())
    }

    /// For CHECK: the bridge exists, is up and holds these subnets' gateways,
    /// and the tenant's rules are installed. Errors name what is wrong.
    fn check_tenant(&self, tenant: &str, subnets: &[(IpNet, IpAddr)]) -> Result<(), SdnError>;

    /// The largest MTU the backend's tenant networks carry on a pod's SDN
    /// port: the apply engine gives it to the pod's interface (both veth
    /// ends) when the plan names none, and refuses a plan that names more.
    /// `None` (the default): no limit of the backend's own.
    fn port_mtu(&self) -> Option<u32> {
        None
    }

    /// For STATUS: can the backend serve ADD? (`nft` present and usable.)
    fn status(&self) -> Result<(), SdnError>;

    /// Lets the pod port `guard.host_ifname` send from its own MAC and
    /// addresses only (see [`PortGuard`]). A `tn*` port without a guard
    /// sends nothing. Idempotent. Backends without a node dataplane of
    /// their own (MidoNet) do nothing.
    fn guard_port(&self, guard: &PortGuard) -> Result<(), SdnError> {
        let _ = guard;
        Ok(())
    }

    /// Removes every guard element of `host_ifname`; none left is success.
    fn unguard_port(&self, host_ifname: &str) -> Result<(), SdnError> {
        let _ = host_ifname;
        Ok(())
    }

    /// For CHECK: the port's guard is exactly `guard`. Errors name what is
    /// missing or extra.
    fn check_guard(&self, guard: &PortGuard) -> Result<(), SdnError> {
        let _ = guard;
        Ok(())
    }

    /// Hands the backend the invocation's failpoints (test builds): the
    /// Linux backend fails or dies inside `ensure_tenant` at
    /// `ensure-tenant:bridge`, `ensure-tenant:rules` and
    /// `ensure-tenant:gateway`.
    fn set_failpoints(&self, failpoints: &crate::apply::Failpoints) {
        let _ = failpoints;
    }
}

/// How many names a tenant's bridge may take ([`bridge_candidates`]).
pub const BRIDGE_CANDIDATES: usize = 8;

/// The first-choice bridge of `tenant`: `tb-` + 12 hex digits of
/// `sha256(tenant)` (15 bytes, the kernel's limit). The tenant lock is
/// named after it.
pub fn bridge_name(tenant: &str) -> String {
    let d = Sha256::digest(tenant.as_bytes());
    format!("tb-{}", &hex::encode(&d[..6]))
}

/// Every name `tenant`'s bridge may have, in the order they are tried:
/// [`bridge_name`], then `tb-` + 12 hex digits of `sha256(tenant + "#" + n)`
/// for n = 1, 2, …. A name whose bridge records another tenant is skipped,
/// so a hash collision never merges two tenants (see [`LinuxSdn`]).
pub fn bridge_candidates(tenant: &str) -> Vec<String> {
    let mut out = vec![bridge_name(tenant)];
    for n in 1..BRIDGE_CANDIDATES {
        let d = Sha256::digest(format!("{tenant}#{n}").as_bytes());
        out.push(format!("tb-{}", &hex::encode(&d[..6])));
    }
    out
}

/// How a bridge records its tenant in its ifalias: the tenant id itself
/// when it is short and plain, else `sha256:` + its full digest (an alias
/// is at most 255 bytes and tenant ids are arbitrary strings).
pub fn tenant_ident(tenant: &str) -> String {
    let plain = !tenant.is_empty()
        && tenant.len() <= 200
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain {
        tenant.to_owned()
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(tenant.as_bytes())))
    }
}

/// A tenant bridge's ifalias: `tenet:<stamp>:<tenant ident>`, where the
/// stamp names the rules last installed for it (`-` before the first).
pub fn bridge_alias(tenant: &str, stamp: Option<&str>) -> String {
    format!("tenet:{}:{}", stamp.unwrap_or("-"), tenant_ident(tenant))
}

/// The tenant ident an alias records, if it is one of tenet's.
pub fn alias_ident(alias: &str) -> Option<&str> {
    let mut it = alias.splitn(3, ':');
    match (it.next(), it.next(), it.next()) {
        (Some("tenet"), Some(_stamp), Some(ident)) if !ident.is_empty() => Some(ident),
        _ => None,
    }
}

/// The name of the tenant lock ([`bridge_name`] of the tenant) of a bridge
/// whose alias records `ident` ([`tenant_ident`]): computed from the
/// tenant id, or from the digest an ident of a long tenant id carries.
/// `None` for an ident tenet never writes.
pub fn lock_name_of_ident(ident: &str) -> Option<String> {
    match ident.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(format!("tb-{}", &hex[..12]))
        }
        Some(_) => None,
        None => (tenant_ident(ident) == ident).then(|| bridge_name(ident)),
    }
}

/// The fixed MAC of the tenant's bridge (locally administered, unicast).
pub fn bridge_mac(tenant: &str) -> MacAddr {
    let d = Sha256::digest(tenant.as_bytes());
    let mut m = [0u8; 6];
    m.copy_from_slice(&d[26..32]);
    m[0] = (m[0] & 0xfc) | 0x02;
    MacAddr(m)
}

/// Checks `(subnet, gateway)` pairs and returns the gateway addresses with
/// their subnet's prefix.
pub(crate) fn gateways(subnets: &[(IpNet, IpAddr)]) -> Result<Vec<IpNet>, SdnError> {
    subnets
        .iter()
        .map(|(net, gw)| {
            if !net.contains(gw) {
                return Err(SdnError::InvalidInput(format!(
                    "gateway {gw} is not in subnet {net}"
                )));
            }
            IpNet::new(*gw, net.prefix_len())
                .map_err(|e| SdnError::InvalidInput(format!("gateway {gw}: {e}")))
        })
        .collect()
}

/// Tenant ids are opaque, but an empty one is a planning bug.
pub(crate) fn check_tenant_id(tenant: &str) -> Result<(), SdnError> {
    if tenant.is_empty() {
        return Err(SdnError::InvalidInput("empty tenant id".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_are_short_stable_and_distinct() {
        let a = bridge_name("acme");
        assert_eq!(a, bridge_name("acme"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("tb-"));
        assert!(a[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, bridge_name("acme2"));
        // Hostile tenant ids still give a valid interface name.
        for t in [
            "",
            "a b",
            "x/y",
            "é",
            &"z".repeat(300),
            "tb-*\"; flush ruleset",
        ] {
            let b = bridge_name(t);
            assert_eq!(b.len(), 15);
            assert!(b.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'));
        }
        let d = Sha256::digest(b"acme");
        assert_eq!(a, format!("tb-{}", &hex::encode(d)[..12]));
        // The pair the issue found colliding in 40 bits is apart in 48.
        assert_ne!(bridge_name("t210179"), bridge_name("t1692729"));
    }

    #[test]
    fn candidates_start_with_the_name_and_are_distinct() {
        let c = bridge_candidates("acme");
        assert_eq!(c.len(), BRIDGE_CANDIDATES);
        assert_eq!(c[0], bridge_name("acme"));
        let d = Sha256::digest(b"acme#1");
        assert_eq!(c[1], format!("tb-{}", &hex::encode(d)[..12]));
        let set: std::collections::BTreeSet<_> = c.iter().collect();
        assert_eq!(set.len(), c.len());
        assert!(c.iter().all(|n| n.len() == 15));
    }

    #[test]
    fn aliases_record_the_tenant() {
        assert_eq!(bridge_alias("team-a", None), "tenet:-:team-a");
        let a = bridge_alias("team-a", Some("0123abcd"));
        assert_eq!(a, "tenet:0123abcd:team-a");
        assert_eq!(alias_ident(&a), Some("team-a"));
        // Odd tenant ids are recorded by digest, never verbatim.
        let odd = bridge_alias("a:b c", None);
        assert!(odd.starts_with("tenet:-:sha256:"), "{odd}");
        assert_eq!(alias_ident(&odd), Some(&odd[8..]));
        assert!(bridge_alias(&"x".repeat(300), Some("s")).len() < 100);
        assert_ne!(tenant_ident("a:b c"), tenant_ident("a:b d"));
        // The old stamp-only alias and foreign aliases record no tenant.
        assert_eq!(alias_ident("tenet:0123abcd"), None);
        assert_eq!(alias_ident("uplink"), None);
        assert_eq!(alias_ident(""), None);
    }

    #[test]
    fn the_lock_name_follows_from_the_ident_a_bridge_records() {
        let long = "x".repeat(300);
        for t in ["acme", "team.a-b_c", "with space", "ünïcode", long.as_str()] {
            assert_eq!(
                lock_name_of_ident(&tenant_ident(t)).as_deref(),
                Some(bridge_name(t).as_str()),
                "{t:?}"
            );
        }
        assert_eq!(lock_name_of_ident("sha256:abc"), None);
        assert_eq!(lock_name_of_ident("with space"), None);
        assert_eq!(lock_name_of_ident(""), None);
    }

    #[test]
    fn bridge_mac_is_local_unicast() {
        let m = bridge_mac("acme");
        assert!(m.is_local() && m.is_unicast());
        assert_ne!(m, bridge_mac("other"));
    }

    #[test]
    fn gateways_must_be_in_their_subnet() {
        let ok =
            gateways(&[("10.1.0.0/24".parse().unwrap(), "10.1.0.1".parse().unwrap())]).unwrap();
        assert_eq!(ok, vec!["10.1.0.1/24".parse::<IpNet>().unwrap()]);
        let e =
            gateways(&[("10.1.0.0/24".parse().unwrap(), "10.2.0.1".parse().unwrap())]).unwrap_err();
        assert_eq!(e.cni_code(), codes::INVALID_CONFIG);
    }

    #[test]
    fn error_codes() {
        assert_eq!(
            SdnError::NftUnavailable("x".into()).cni_code(),
            codes::NOT_AVAILABLE
        );
        assert_eq!(
            SdnError::Missing {
                resource: "x".into()
            }
            .cni_code(),
            codes::SDN_MISSING
        );
        assert_eq!(
            SdnError::Conflict("x".into()).cni_code(),
            codes::SDN_CONFLICT
        );
        assert_eq!(
            SdnError::Nft {
                op: "x".into(),
                stderr: "y".into()
            }
            .cni_code(),
            codes::NFT_FAILED
        );
    }
}
