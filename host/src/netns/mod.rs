//! Pod network namespaces: veth pairs, addresses, routes and sysctls.
//!
//! # Design
//!
//! One trait, [`Netns`], is everything the apply engine needs from the
//! kernel's view of a pod: create the pod's veth pair ([`Netns::create_veth`]),
//! configure it ([`Netns::configure`]), give a host-link interface its node
//! side ([`Netns::host_side`]), read it back for CHECK ([`Netns::inspect`]) and
//! remove it ([`Netns::delete`]). [`RtNetns`] is the real implementation
//! (rtnetlink), [`FakeNetns`] a recording double for unit tests.
//!
//! **Which namespace is the node.** The node namespace is the one of the thread
//! that constructs [`RtNetns`]: its netlink socket is opened there and never
//! moves. In the `tenet` binary that is the runtime's namespace (CNI §2); in
//! root tests it is a namespace the test thread unshared, so tests never touch
//! the machine's own interfaces.
//!
//! **How pod namespaces are entered.** Netns membership is per thread. Work
//! that acts in a pod by the namespace it runs in (writing
//! `/proc/sys/net/...`) runs on a short-lived dedicated thread that
//! `setns`es into the pod through [`guard::NetnsGuard`] and always switches
//! back on drop, so the caller's thread is never moved. Opening the pod's
//! netlink socket, which acts on nothing, happens on the calling thread
//! ([`guard::open_in`]): it moves in, opens the socket and moves back, or
//! the process aborts rather than go on in the pod. A socket stays bound to
//! the pod's namespace wherever it was opened, so every later request on it
//! acts in the pod. Paths that are not namespaces, and the node's own
//! namespace passed as a pod's, are refused before anything is touched.
//!
//! **Names.** Host ends are `tn` + 12 hex digits of
//! `sha256(container_id + "/" + ifname)` ([`host_ifname`]): 14 bytes, under the
//! kernel's 15, stable across retries, and keyed by the CNI attachment key, so
//! DEL finds the host end without any record. MACs, when the plan asks for
//! none, come from the same hash ([`derive_mac`]) with the locally
//! administered bit set, so a retried ADD gets the same MAC and neighbours'
//! caches stay valid.
//!
//! **IPv6.** Addresses tenet adds carry `IFA_F_NODAD`: tenet owns the
//! addresses (the store allocated them), so duplicate detection only delays
//! the pod's first packets by a second or more. The pod end's link-local
//! address is tenet's too: the kernel's generation is turned off on it
//! (`addr_gen_mode` none) and tenet adds `fe80::` + the MAC's EUI-64 when
//! the interface has IPv6 ([`VethSpec::link_local`]), so the source guard
//! of the port (see [`crate::sdn`]) knows every address it may send from.
//!
//! **Routes** are added, never replaced (`NLM_F_EXCL`): a route that is
//! there already is success only when it is the same route through the same
//! interface (a retried ADD); anything else is [`NetnsError::RouteConflict`],
//! so one attachment never takes over another's route (a second network's
//! default route needs a metric of its own).
//!
//! **Host links** (Rainbond's `eth1`). The pod end gets its addresses as
//! host routes (`/32`, `/128`); the host end gets the link's gateway address
//! (the same one, e.g. `169.254.128.1/32`, on every host-link veth: each
//! address is scoped to its own interface) and one host route per pod address
//! through the host end. Inside the pod, [`host_link_pod_routes`] yields a
//! link-scope route to the gateway and `onlink` routes through it, so no
//! subnet has to be shared between node and pod and nothing is bridged.
//!
//! **Errors and CNI codes** ([`NetnsError::cni_code`]):
//!
//! | error | code ([`crate::cni::codes`]) | why |
//! |---|---|---|
//! | `InvalidNetns` (missing, not a netns) | 4 (`INVALID_ENV`) | `CNI_NETNS` is an invalid environment variable (§5) |
//! | `NodeNetns` (the plugin's own netns) | 8 (`INVALID_NETNS`) | what the reference `skel` answers (`ErrInvalidNetNS`) |
//! | `InvalidInput` (bad MAC, sysctl key) | 7 (`INVALID_CONFIG`) | invalid network configuration |
//! | `Netlink`, `LinkNotFound` | 123 (`NETLINK`) | the kernel refused or the link is gone |
//! | `RouteConflict` | 124 (`ROUTE_CONFLICT`) | another attachment's route is there; never replaced |
//! | `Injected` (the fake's) | 149 (`INJECTED`) | a test's injected failure |
//! | `Sysctl` | 121 (`SYSCTL`) | a pod sysctl could not be written |
//! | `Namespace` (setns, threads) | 122 (`NAMESPACE`) | entering the pod failed |
//! | `IfnameExists` | 140 (`ALREADY_ATTACHED`) | CNI §2 requires an error when `CNI_IFNAME` exists |
//!
//! DEL never reports the first two: a missing or foreign netns means there is
//! nothing left in it to delete.
//!
//! **The node's own addressing** ([`Netns::node_overlaps`]): before its first
//! side effect ADD asks which of the node's addresses and routes overlap the
//! ranges a plan would hand out (`plan::node`), so that no pod is given the
//! node's address, its gateway's, or a destination the node routes elsewhere.
//! It is one address dump and one route dump per family over the node's
//! existing netlink socket; what sits on tenet's own links
//! ([`is_tenet_link`]) is left out.

pub mod fake;
pub mod guard;
pub(crate) mod rtnl;
mod sysctl;
pub mod testing;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::cni::codes;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

pub use fake::{FakeNetns, NetnsCall};
pub use rtnl::RtNetns;

/// Kernel limit on interface names (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// True for a unicast address (the group bit is clear).
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0
    }

    /// True when the locally administered bit is set.
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = NetnsError;

    /// Parses `aa:bb:cc:dd:ee:ff` (or with `-`), case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetnsError::InvalidInput(format!("{s:?} is not a MAC address"));
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(out))
    }
}

/// What [`Netns::create_veth`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    /// CNI_CONTAINERID (only used to derive the MAC when none is requested).
    pub container_id: String,
    /// Name of the pod end inside the pod (CNI_IFNAME or an extra interface).
    pub ifname: String,
    /// Name of the host end in the node namespace, normally [`host_ifname`].
    pub host_ifname: String,
    /// The pod's network namespace (CNI_NETNS).
    pub netns: PathBuf,
    /// MTU of both ends; the kernel default (1500) when unset.
    pub mtu: Option<u32>,
    /// MAC of the pod end; [`derive_mac`] when unset.
    pub mac: Option<MacAddr>,
    /// The pod end's IPv6 link-local address. The kernel's own address
    /// generation is turned off on the pod end (`addr_gen_mode` none), so
    /// the pod end has this link-local address (set by tenet) or, when
    /// `None`, no IPv6 address at all until configured: the source guard
    /// then knows every address the port may send from.
    pub link_local: Option<std::net::Ipv6Addr>,
    /// The interface group (`IFLA_GROUP`) of the pod end: one per
    /// attachment ([`attachment_group`]), so that DEL removes all of an
    /// attachment's veths with one request ([`Netns::delete_group`]).
    /// `None` leaves the kernel's default group 0.
    pub group: Option<u32>,
}

/// What [`Netns::create_veth`] built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethInfo {
    /// MAC of the pod end.
    pub mac: MacAddr,
    /// MAC of the host end.
    pub host_mac: MacAddr,
    /// ifindex of the pod end, inside the pod.
    pub ifindex: u32,
    /// ifindex of the host end, in the node namespace.
    pub host_ifindex: u32,
}

/// A route with everything resolved: the apply engine has replaced plan
/// placeholders (subnet gateway) by addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRoute {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; `None` for a route directly on the link (scope link).
    pub gateway: Option<IpAddr>,
    /// Treat the gateway as on the link even without a covering subnet.
    pub onlink: bool,
    /// Route metric (priority).
    pub metric: Option<u32>,
    /// Route MTU.
    pub mtu: Option<u32>,
}

impl ResolvedRoute {
    /// A route through `gateway`.
    pub fn via(dst: IpNet, gateway: IpAddr) -> Self {
        Self {
            dst,
            gateway: Some(gateway),
            onlink: false,
            metric: None,
            mtu: None,
        }
    }

    /// A route directly on the link.
    pub fn link(dst: IpNet) -> Self {
        Self {
            dst,
            gateway: None,
            onlink: false,
            metric: None,
            mtu: None,
        }
    }
}

/// The node side of a host-link interface; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLinkSpec {
    /// The host end of the veth (in the node namespace).
    pub host_ifname: String,
    /// Gateway addresses put on the host end, e.g. `169.254.128.1/32`.
    pub gateways: Vec<IpNet>,
    /// The pod end's addresses: each gets a host route via the host end.
    pub pod_addrs: Vec<IpAddr>,
}

/// The node side of a host link as the kernel reports it (for CHECK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSideState {
    /// Addresses on the host end.
    pub addrs: Vec<IpNet>,
    /// Main-table routes through the host end, kernel-made ones excluded.
    pub routes: Vec<ResolvedRoute>,
}

/// One of the node's own addresses or routes, as [`Netns::node_overlaps`]
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// The address with its prefix (`192.0.2.2/24`), or the route's
    /// destination.
    pub net: IpNet,
    /// An address of the node, or a route.
    pub kind: NodeEntryKind,
    /// The interface it is on (the route's output device), when it has one.
    pub device: Option<String>,
}

/// What a [`NodeEntry`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEntryKind {
    /// An address the node holds.
    Address,
    /// A route of the node (any table; default routes are not reported).
    Route,
}

impl NodeEntry {
    /// The range it claims: the address's subnet, or the route's
    /// destination.
    pub fn range(&self) -> IpNet {
        self.net.trunc()
    }
}

impl fmt::Display for NodeEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            NodeEntryKind::Address => "address",
            NodeEntryKind::Route => "route",
        };
        write!(f, "the node's {what} {}", self.net)?;
        if let Some(d) = &self.device {
            write!(f, " on {d}")?;
        }
        Ok(())
    }
}

/// Whether `name` is one of tenet's own links in the node namespace: a
/// tenant bridge (`tb-` + 12 hex digits, `sdn::bridge_name`; 10 on nodes
/// set up by earlier releases) or a pod's host
/// end (`tn` + 12 hex digits, [`host_ifname`]). Their addresses and routes
/// are tenet's (tenant gateways, host-link gateways and host routes), which
/// the address stores already keep apart.
pub fn is_tenet_link(name: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    name.strip_prefix("tb-")
        .is_some_and(|h| hex(h, 12) || hex(h, 10))
        || name.strip_prefix("tn").is_some_and(|h| hex(h, 12))
}

/// A pod interface as the kernel reports it (for CHECK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// ifindex inside the pod.
    pub ifindex: u32,
    /// MAC address.
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Addresses, IPv6 link-local ones (made by the kernel) excluded.
    pub addrs: Vec<IpNet>,
    /// Main-table routes through the interface, kernel-made ones excluded.
    pub routes: Vec<ResolvedRoute>,
}

/// Errors of the netns backend.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The netns path does not exist or is not a network namespace.
    #[error("CNI_NETNS {path:?} is not usable: {reason}")]
    InvalidNetns {
        /// The path given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The netns path is the plugin's (node's) own namespace.
    #[error("CNI_NETNS {path:?} is the plugin's own network namespace")]
    NodeNetns {
        /// The path given.
        path: PathBuf,
    },
    /// `ifname` already exists in the pod (CNI §2: must be an error).
    #[error("interface {ifname:?} already exists in {netns:?}")]
    IfnameExists {
        /// The interface name.
        ifname: String,
        /// The pod namespace.
        netns: PathBuf,
    },
    /// A link tenet expected is missing.
    #[error("link {ifname:?} not found in {netns}")]
    LinkNotFound {
        /// The interface name.
        ifname: String,
        /// Where it was looked up ("the node" or a path).
        netns: String,
    },
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
    /// A sysctl inside the pod could not be written.
    #[error("sysctl {key}: {source}")]
    Sysctl {
        /// The key.
        key: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Entering a namespace or running the helper thread failed.
    #[error("{op}: {source}")]
    Namespace {
        /// What was attempted.
        op: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A failure injected by [`FakeNetns`].
    #[error("injected failure in {0}")]
    Injected(String),
    /// A route tenet is to add exists already through another interface or
    /// with another next hop (another attachment's): never replaced.
    #[error(
        "route to {dst} on {ifname} conflicts with an existing route to {dst} ({existing}); give one of them a metric"
    )]
    RouteConflict {
        /// The destination.
        dst: IpNet,
        /// The interface tenet was adding it to.
        ifname: String,
        /// The route that is there.
        existing: String,
    },
}

impl NetnsError {
    /// The CNI error code this maps to (see the module docs for the table).
    pub fn cni_code(&self) -> u32 {
        match self {
            NetnsError::InvalidNetns { .. } => codes::INVALID_ENV,
            NetnsError::NodeNetns { .. } => codes::INVALID_NETNS,
            NetnsError::InvalidInput(_) => codes::INVALID_CONFIG,
            NetnsError::Netlink { .. } | NetnsError::LinkNotFound { .. } => codes::NETLINK,
            NetnsError::RouteConflict { .. } => codes::ROUTE_CONFLICT,
            NetnsError::Injected(_) => codes::INJECTED,
            NetnsError::Sysctl { .. } => codes::SYSCTL,
            NetnsError::Namespace { .. } => codes::NAMESPACE,
            NetnsError::IfnameExists { .. } => codes::ALREADY_ATTACHED,
        }
    }

    pub(crate) fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        NetnsError::Netlink {
            op: op.into(),
            source,
        }
    }
}

/// The pod-network operations the apply engine needs. Synchronous: the real
/// implementation owns a current-thread tokio runtime and must not be called
/// from inside another tokio runtime.
pub trait Netns {
    /// Creates a veth pair: the pod end named `spec.ifname` in `spec.netns`,
    /// the host end `spec.host_ifname` in the node namespace, both up.
    /// Fails with [`NetnsError::IfnameExists`] when the pod already has
    /// `spec.ifname`. A stale host end of the same name (a half-done earlier
    /// ADD of the same attachment) is replaced.
    fn create_veth(&self, spec: &VethSpec) -> Result<VethInfo, NetnsError>;

    /// Configures `ifname` inside `netns`: sysctls first (they may change how
    /// addresses behave), then addresses, then routes. Idempotent: what
    /// already exists is kept.
    fn configure(
        &self,
        netns: &Path,
        ifname: &str,
        addrs: &[IpNet],
        routes: &[ResolvedRoute],
        sysctls: &[(String, String)],
    ) -> Result<(), NetnsError>;

    /// Gives a host-link interface its node side: gateway addresses on the
    /// host end and a host route to each pod address through it. Idempotent.
    fn host_side(&self, spec: &HostLinkSpec) -> Result<(), NetnsError>;

    /// Removes the pair. Succeeds when `netns` is `None`, empty, missing or
    /// not a namespace, when the link is already gone, and when only the host
    /// end is left (deleting either end removes both).
    fn delete(
        &self,
        netns: Option<&Path>,
        ifname: &str,
        host_ifname: &str,
    ) -> Result<(), NetnsError>;

    /// True when a link in `netns` already belongs to interface group
    /// `group`: ADD then leaves its veths out of any group rather than share
    /// one with links that are not its own. The default (no group support)
    /// says yes, so nothing is grouped.
    fn group_in_use(&self, netns: &Path, group: u32) -> Result<bool, NetnsError> {
        let _ = (netns, group);
        Ok(true)
    }

    /// Deletes the pod ends in `netns` (and with them their host ends) of
    /// interface group `group` with one request, so the kernel unregisters
    /// them in one batch (one RCU wait instead of one per veth). Only when
    /// the group holds exactly the veths named `ifnames` and nothing else:
    /// otherwise nothing is deleted and the answer is `false`, and the
    /// caller deletes link by link ([`Self::delete`]). `true` when they
    /// were deleted. The default (no group support) is `false`.
    fn delete_group(&self, netns: &Path, group: u32, ifnames: &[&str]) -> Result<bool, NetnsError> {
        let _ = (netns, group, ifnames);
        Ok(false)
    }

    /// Reads `ifname` in `netns` back; `None` when it does not exist.
    fn inspect(&self, netns: &Path, ifname: &str) -> Result<Option<LinkState>, NetnsError>;

    /// True when `host_ifname` exists in the node namespace.
    fn host_link_exists(&self, host_ifname: &str) -> Result<bool, NetnsError>;

    /// Reads a host link's node side back (its host end's addresses and
    /// routes); `None` when the host end does not exist.
    fn inspect_host_side(&self, host_ifname: &str) -> Result<Option<HostSideState>, NetnsError>;

    /// Checks, changing nothing, that `netns` is a network namespace and not
    /// the node's own: ADD calls it before its first side effect.
    fn check_pod_netns(&self, netns: &Path) -> Result<(), NetnsError>;

    /// The node's own addresses, and its routes other than default routes
    /// (in any table), that overlap any of `ranges`; those on tenet's own
    /// links ([`is_tenet_link`]) are left out. Changes nothing: ADD calls it
    /// before its first side effect (`plan::node`).
    fn node_overlaps(&self, ranges: &[IpNet]) -> Result<Vec<NodeEntry>, NetnsError>;
}

fn digest(container_id: &str, ifname: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update(b"/");
    h.update(ifname.as_bytes());
    h.finalize().into()
}

/// The host end's name for the attachment `(container_id, ifname)`:
/// `tn` + 12 hex digits of `sha256(container_id + "/" + ifname)` (14 bytes).
/// 48 bits make a collision among the pods of one node vanishingly unlikely.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let d = digest(container_id, ifname);
    format!("tn{}", hex::encode(&d[..6]))
}

/// The interface group of attachment `(container_id, ifname)`'s pod ends:
/// 31 bits of a hash distinct from [`host_ifname`]'s, with the top bit set
/// so that it is never 0 (the default group every link starts in) nor one
/// of the small numbers an operator would pick by hand.
pub fn attachment_group(container_id: &str, ifname: &str) -> u32 {
    let mut h = Sha256::new();
    h.update(b"tenet-group/");
    h.update(container_id.as_bytes());
    h.update(b"/");
    h.update(ifname.as_bytes());
    let d: [u8; 32] = h.finalize().into();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) | 0x8000_0000
}

/// The MAC for an attachment that asked for none: six bytes of the same hash
/// as [`host_ifname`] (from the other end of the digest), unicast and locally
/// administered.
pub fn derive_mac(container_id: &str, ifname: &str) -> MacAddr {
    let d = digest(container_id, ifname);
    let mut m = [0u8; 6];
    m.copy_from_slice(&d[26..32]);
    m[0] = (m[0] & 0xfc) | 0x02;
    MacAddr(m)
}

/// Routes for a host-link interface inside the pod: a link-scope host route
/// to `gateway`, then one `onlink` route via `gateway` per destination (the
/// gateway is not in any subnet the pod has, hence `onlink`).
pub fn host_link_pod_routes(gateway: IpAddr, dsts: &[IpNet]) -> Vec<ResolvedRoute> {
    let host = IpNet::from(gateway);
    let mut out = vec![ResolvedRoute::link(host)];
    out.extend(dsts.iter().map(|d| ResolvedRoute {
        onlink: true,
        ..ResolvedRoute::via(d.trunc(), gateway)
    }));
    out
}

/// Checks an interface name the kernel would accept.
pub(crate) fn check_ifname(name: &str) -> Result<(), NetnsError> {
    let ok = !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(NetnsError::InvalidInput(format!(
            "{name:?} is not a valid interface name"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_short_stable_and_distinct() {
        let a = host_ifname("c0ffee", "eth0");
        assert_eq!(a, host_ifname("c0ffee", "eth0"));
        assert_eq!(a.len(), 14);
        assert!(a.len() <= IFNAME_MAX);
        assert!(a.starts_with("tn"));
        assert!(a[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, host_ifname("c0ffee", "eth1"));
        assert_ne!(a, host_ifname("c0ffef", "eth0"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(host_ifname("ab", "c"), host_ifname("a", "bc"));
        check_ifname(&a).unwrap();
    }

    #[test]
    fn host_ifname_known_value() {
        // sha256("abc/eth0") starts with these bytes; pinning the value keeps
        // DEL of pods created by an older build working after a refactor.
        let d = Sha256::digest(b"abc/eth0");
        assert_eq!(
            host_ifname("abc", "eth0"),
            format!("tn{}", hex::encode(&d[..6]))
        );
    }

    #[test]
    fn attachment_groups_are_high_stable_and_distinct() {
        let g = attachment_group("abc", "eth0");
        assert_eq!(g, attachment_group("abc", "eth0"));
        assert!(
            g & 0x8000_0000 != 0,
            "never 0 nor a small hand-picked group"
        );
        assert_ne!(g, attachment_group("abc", "net1"));
        assert_ne!(g, attachment_group("abd", "eth0"));
        // Not the host end's hash bits: the group says nothing about the name.
        let d = Sha256::digest(b"abc/eth0");
        assert_ne!(
            g,
            u32::from_be_bytes([d[0], d[1], d[2], d[3]]) | 0x8000_0000
        );
    }

    #[test]
    fn derived_mac_is_local_unicast_and_stable() {
        let m = derive_mac("c0ffee", "eth0");
        assert_eq!(m, derive_mac("c0ffee", "eth0"));
        assert!(m.is_unicast());
        assert!(m.is_local());
        assert_ne!(m, derive_mac("c0ffee", "eth1"));
        for i in 0..64 {
            let m = derive_mac(&format!("id{i}"), "eth0");
            assert!(m.is_unicast() && m.is_local(), "{m}");
        }
    }

    #[test]
    fn mac_parses_and_prints() {
        let m: MacAddr = "0A:58:0a:01:00:05".parse().unwrap();
        assert_eq!(m.0, [0x0a, 0x58, 0x0a, 0x01, 0x00, 0x05]);
        assert_eq!(m.to_string(), "0a:58:0a:01:00:05");
        assert_eq!("0a-58-0a-01-00-05".parse::<MacAddr>().unwrap(), m);
        for bad in [
            "",
            "0a:58:0a:01:00",
            "0a:58:0a:01:00:05:06",
            "0a:58:0a:01:00:zz",
            "a:58:0a:01:00:05",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert_eq!(e.cni_code(), codes::INVALID_CONFIG, "{bad}");
        }
    }

    #[test]
    fn host_link_routes_put_gateway_first_and_onlink() {
        let gw: IpAddr = "169.254.128.1".parse().unwrap();
        let r = host_link_pod_routes(
            gw,
            &["10.0.0.0/8".parse().unwrap(), "0.0.0.0/0".parse().unwrap()],
        );
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].dst, "169.254.128.1/32".parse::<IpNet>().unwrap());
        assert_eq!(r[0].gateway, None);
        assert!(r[1..].iter().all(|x| x.onlink && x.gateway == Some(gw)));
    }

    #[test]
    fn error_codes() {
        let p = PathBuf::from("/x");
        assert_eq!(
            NetnsError::InvalidNetns {
                path: p.clone(),
                reason: "gone".into()
            }
            .cni_code(),
            codes::INVALID_ENV
        );
        assert_eq!(
            NetnsError::NodeNetns { path: p.clone() }.cni_code(),
            codes::INVALID_NETNS
        );
        assert_eq!(
            NetnsError::IfnameExists {
                ifname: "eth0".into(),
                netns: p
            }
            .cni_code(),
            codes::ALREADY_ATTACHED
        );
        assert_eq!(
            NetnsError::netlink("add", rtnetlink::Error::RequestFailed).cni_code(),
            codes::NETLINK
        );
        assert_eq!(NetnsError::Injected("x".into()).cni_code(), codes::INJECTED);
    }

    #[test]
    fn tenet_links_are_recognised_by_their_exact_names() {
        assert!(is_tenet_link(&host_ifname("c1", "eth0")));
        assert!(is_tenet_link(&crate::sdn::bridge_name("acme")));
        for other in [
            "eth0",
            "tb-",
            "tb-0123456789a",
            "tn0123",
            "tunl0",
            "tb-zzzzzzzzzz",
            "docker0",
        ] {
            assert!(!is_tenet_link(other), "{other}");
        }
    }

    #[test]
    fn ifname_checks() {
        for ok in ["eth0", "eth0.100", "tn0123456789ab", "a"] {
            check_ifname(ok).unwrap();
        }
        for bad in ["", "a/b", "a b", "x:1", "..", "sixteen-chars-xx"] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
    }
}
