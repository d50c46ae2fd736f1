//! Tenant networks on the node: one Linux bridge per tenant, nftables rules
//! that keep tenants apart, optional masquerading.
//!
//! # Design
//!
//! [`Sdn`] is the backend trait the apply engine drives; [`LinuxSdn`] is the
//! embedded implementation (bridge + nftables, no services), [`FakeSdn`] a
//! recording double. MidoNet implements the same trait elsewhere.
//!
//! **Names.** A tenant's bridge is `tb-` + the first 10 hex digits of
//! `sha256(tenant)` ([`bridge_name`], 13 bytes): tenant ids are arbitrary
//! strings, interface names are 15 bytes at most, and nothing a tenant
//! controls ends up verbatim in an interface name or an nft script. The bridge
//! gets a fixed, locally administered MAC derived from the same hash, because
//! a bridge otherwise takes the smallest MAC of its ports and changes it as
//! pods come and go, which leaves stale gateway entries in pods' neighbour
//! caches. The bridge holds the tenant's gateway addresses with the subnet's
//! prefix, so the node routes for the tenant.
//!
//! **Rules.** tenet owns one table, `inet tenet`. Everything tenant-specific is
//! a per-tenant chain named after the bridge plus elements of shared verdict
//! maps that jump to it, so a tenant's rules are listed and removed exactly,
//! by name, without rule handles:
//!
//! ```text
//! table inet tenet {
//!   map fwd_from { type ifname : verdict }     "tb-X" : jump fwd-tb-X
//!   map gw4 { type ipv4_addr : verdict }       10.1.0.1 : jump gw-tb-X
//!   map gw6 { type ipv6_addr : verdict }       fd00:1::1 : jump gw-tb-X
//!   map masq4 { ipv4_addr : verdict; interval } 10.1.0.0/24 : jump nat-tb-X
//!   map masq6 { ipv6_addr : verdict; interval } fd00:1::/64 : jump nat-tb-X
//!   chain forward (filter hook forward) {
//!     iifname vmap @fwd_from     # a tenant's own traffic: its chain decides
//!     iifname "tb-*" drop        # a bridge without rules forwards nothing
//!     oifname "tb-*" iifname "tn*" drop   # no pod host link feeds a tenant
//!   }
//!   chain input (filter hook input) { ip daddr vmap @gw4; ip6 daddr vmap @gw6 }
//!   chain postrouting (nat hook postrouting) { ip saddr vmap @masq4; ip6 saddr vmap @masq6 }
//!   chain fwd-tb-X { oifname "tb-X" accept; oifname "tb-*" drop; oifname "tn*" drop; accept }
//!   chain gw-tb-X  { iifname "tb-X" accept; iifname { "tb-*", "tn*" } drop }
//!   chain nat-tb-X { oifname != "tb-*" oifname != "tn*" masquerade }  # empty when off
//! }
//! ```
//!
//! So a packet from tenant X is forwarded only back into X's bridge or out of
//! the node, never into another tenant's bridge nor into a pod's host link;
//! and a tenant gateway address on the node answers only its own bridge (and
//! the outside). Traffic between pods of one tenant is bridged and never
//! reaches these hooks (unless `br_netfilter` is loaded, in which case
//! `oifname "tb-X" accept` lets it through). `tb-*` are tenet's bridges and
//! `tn*` the host ends of its veths ([`crate::netns::host_ifname`]).
//!
//! Every change for one tenant is one `nft -f -` transaction: the base table,
//! chains and maps are declared (idempotent), the base chains are flushed and
//! rewritten with their fixed rules, the tenant's chains are flushed and
//! rewritten, and its map elements are added (re-adding an identical element is
//! a no-op). Two ADDs that race therefore converge to the same ruleset.
//! Removal lists the table as JSON and deletes exactly the elements that jump
//! to the tenant's chains, then the chains. Rules go in before the bridge gets
//! its addresses, and out after the bridge is deleted.
//!
//! `nft` is run as a child process (`nft -f -`, script on stdin): it is the
//! supported interface to nftables, its transactions are atomic, and no
//! netlink-nftables crate is as complete; the cost (a fork+exec of a few
//! milliseconds per ADD) is measured against the budget elsewhere.
//!
//! Forwarding (`net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding`) is the
//! node operator's choice: tenet never writes node sysctls.
//!
//! **Errors and CNI codes** ([`SdnError::cni_code`]): invalid input 7,
//! netlink 120, `nft` failed 130, a resource missing (CHECK, attach) 131, a
//! name or address taken by something else 132, `nft` missing or unusable 50
//! (what STATUS reports).
//! The MidoNet backend ([`midonet`]) adds: MidoNet or etcd unreachable, a
//! tenant busy on another node, or MidoNet's concurrent-modification 409s
//! persisting, 11; MidoNet rejected a call 133; a MidoNet
//! server error 134; a corrupt topology record 135; no link network left 136.

pub mod fake;
mod linux;
pub mod midonet;
mod nft;
mod nftnl;

use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::ipam::AttachmentKey;
use crate::netns::{MacAddr, NetnsError};

pub use fake::{FakeSdn, SdnCall};
pub use linux::LinuxSdn;
pub use midonet::MidonetSdn;
pub use nft::TABLE;

/// Options of the Linux backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdnOptions {
    /// Masquerade traffic from tenant subnets that leaves through an
    /// interface that is neither a tenant bridge nor a pod host link.
    pub masquerade: bool,
    /// The `nft` binary.
    pub nft: std::path::PathBuf,
}

impl Default for SdnOptions {
    fn default() -> Self {
        Self {
            masquerade: false,
            nft: "nft".into(),
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
    /// A failure injected by [`FakeSdn`].
    #[error("injected failure in {0}")]
    Injected(String),
    /// A MidoNet REST call failed (code 11 when unreachable, 133 rejected,
    /// 134 server error).
    #[error(transparent)]
    Midonet(#[from] midonet::client::ApiError),
    /// The MidoNet topology records (etcd) failed (11 unreachable, 135
    /// corrupt).
    #[error(transparent)]
    Records(#[from] midonet::records::RecordsError),
    /// Another node holds the tenant's topology for too long, or our claim
    /// was lost (code 11).
    #[error("{0}")]
    Busy(String),
    /// No link network left for a new tenant router (code 136).
    #[error("{0}")]
    LinkPoolExhausted(String),
}

impl SdnError {
    /// The CNI error code this maps to (see the module docs).
    pub fn cni_code(&self) -> u32 {
        match self {
            SdnError::InvalidInput(_) => 7,
            SdnError::Netlink { .. } => 120,
            SdnError::NftUnavailable(_) => 50,
            SdnError::Nft { .. } | SdnError::Injected(_) => 130,
            SdnError::Missing { .. } => 131,
            SdnError::Conflict(_) => 132,
            SdnError::Runtime(e) => e.cni_code(),
            SdnError::Midonet(e) => e.cni_code(),
            SdnError::Records(midonet::records::RecordsError::Unavailable(_)) => 11,
            SdnError::Records(midonet::records::RecordsError::Corrupt { .. }) => 135,
            SdnError::Busy(_) => 11,
            SdnError::LinkPoolExhausted(_) => 136,
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
    /// disk: the apply engine records.
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
}

/// The bridge of `tenant`: `tb-` + 10 hex digits of `sha256(tenant)`.
pub fn bridge_name(tenant: &str) -> String {
    let d = Sha256::digest(tenant.as_bytes());
    format!("tb-{}", &hex::encode(&d[..5]))
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
        assert_eq!(a.len(), 13);
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
            assert_eq!(b.len(), 13);
            assert!(b.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'));
        }
        let d = Sha256::digest(b"acme");
        assert_eq!(a, format!("tb-{}", &hex::encode(d)[..10]));
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
        assert_eq!(e.cni_code(), 7);
    }

    #[test]
    fn error_codes() {
        assert_eq!(SdnError::NftUnavailable("x".into()).cni_code(), 50);
        assert_eq!(
            SdnError::Missing {
                resource: "x".into()
            }
            .cni_code(),
            131
        );
        assert_eq!(SdnError::Conflict("x".into()).cni_code(), 132);
        assert_eq!(
            SdnError::Nft {
                op: "x".into(),
                stderr: "y".into()
            }
            .cni_code(),
            130
        );
    }
}
