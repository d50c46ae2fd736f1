//! The rtnetlink implementation of [`Netns`], and the netlink plumbing the
//! Linux SDN backend shares with it.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tracing::{debug, warn};

use super::guard::{NetnsFile, open_in, run_in};
use super::{
    HostLinkSpec, HostSideState, LinkState, MacAddr, Netns, NetnsError, NodeEntry, NodeEntryKind,
    ResolvedRoute, VethInfo, VethSpec, check_ifname, derive_mac, is_tenet_link, sysctl,
};

/// The errno of a netlink error, if the kernel sent one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// A private current-thread runtime and a netlink socket in the node
/// namespace (the namespace of the thread that built it).
pub(crate) struct Rtnl {
    // Field order matters: handles drop before the runtime that drives them.
    node: Handle,
    /// Sockets already opened in pod namespaces, by namespace identity, when
    /// `keep_pods` (see [`RtNetns::for_one_operation`]): an operation
    /// touches one pod several times (each veth, each configure), and
    /// opening a socket there costs two namespace switches. A socket keeps its
    /// namespace alive, so the identity cannot be reused meanwhile, and a
    /// dead pod's namespace lingers until the cache is dropped.
    pods: std::sync::Mutex<Vec<(super::guard::NsId, Handle)>>,
    keep_pods: bool,
    node_ns: NetnsFile,
    rt: tokio::runtime::Runtime,
}

impl Rtnl {
    /// Opens the node socket. Refuses to run inside a tokio runtime, where
    /// `block_on` would panic.
    pub(crate) fn new() -> Result<Self, NetnsError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(NetnsError::Namespace {
                op: "start the netlink runtime".into(),
                source: io::Error::other("called from inside a tokio runtime"),
            });
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| NetnsError::Namespace {
                op: "start the netlink runtime".into(),
                source,
            })?;
        let node_ns = NetnsFile::current()?;
        let (conn, node) = {
            // The socket registers with this runtime's reactor.
            let _entered = rt.enter();
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|source| NetnsError::Namespace {
                    op: "open a netlink socket".into(),
                    source,
                })?;
            (conn, handle)
        };
        rt.spawn(conn);
        Ok(Self {
            node,
            pods: std::sync::Mutex::new(Vec::new()),
            keep_pods: false,
            node_ns,
            rt,
        })
    }

    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub(crate) fn node(&self) -> &Handle {
        &self.node
    }

    /// Opens a pod's namespace, refusing the node's own: configuring "the
    /// pod" there would rename, address or delete the node's interfaces.
    pub(crate) fn open_pod(&self, path: &Path) -> Result<NetnsFile, NetnsError> {
        let ns = NetnsFile::open(path)?;
        if ns.id() == self.node_ns.id() {
            return Err(NetnsError::NodeNetns {
                path: path.to_owned(),
            });
        }
        Ok(ns)
    }

    /// A netlink handle bound to `ns`: the socket is opened inside `ns`
    /// (on this thread, which moves back at once) and stays bound there.
    pub(crate) fn handle_in(&self, ns: &NetnsFile) -> Result<Handle, NetnsError> {
        let id = ns.id();
        let cached = self
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, h)| h.clone());
        if let Some(h) = cached {
            return Ok(h);
        }
        // On this thread (`open_in`): only the socket is made there.
        let (conn, handle) = open_in(ns, || {
            let _entered = self.rt.enter();
            rtnetlink::new_connection().map(|(c, h, _)| (c, h))
        })?
        .map_err(|source| NetnsError::Namespace {
            op: format!("open a netlink socket in {}", ns.path().display()),
            source,
        })?;
        self.rt.spawn(conn);
        if self.keep_pods {
            self.pods
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((id, handle.clone()));
        }
        Ok(handle)
    }
}

// ---- link helpers -------------------------------------------------------

pub(crate) async fn link_by_name(
    h: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut s = h.link().get().match_name(name.to_owned()).execute();
    match s.try_next().await {
        Ok(m) => Ok(m),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) async fn all_links(h: &Handle) -> Result<Vec<LinkMessage>, rtnetlink::Error> {
    h.link().get().execute().try_collect().await
}

pub(crate) async fn set_up(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

/// Deletes a link; a link that is already gone is success.
pub(crate) async fn del_link(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    match h.link().del(index).execute().await {
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        r => r,
    }
}

/// The link's interface group (`IFLA_GROUP`).
pub(crate) fn link_group(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Group(g) => Some(*g),
        _ => None,
    })
}

/// The link's name.
pub(crate) fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub(crate) fn link_mac(m: &LinkMessage) -> Option<MacAddr> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => {
            let mut o = [0u8; 6];
            o.copy_from_slice(b);
            Some(MacAddr(o))
        }
        _ => None,
    })
}

pub(crate) fn link_mtu(m: &LinkMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(v) => Some(*v),
            _ => None,
        })
        .unwrap_or(0)
}

pub(crate) fn link_controller(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) if *i != 0 => Some(*i),
        _ => None,
    })
}

pub(crate) fn link_kind(m: &LinkMessage) -> Option<&InfoKind> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

pub(crate) fn link_is_up(m: &LinkMessage) -> bool {
    m.header.flags.contains(LinkFlags::Up)
}

// ---- address helpers ----------------------------------------------------

/// Adds `net` to link `index`; an existing identical address is success.
/// IPv6 addresses skip duplicate detection (see the module docs).
pub(crate) async fn add_addr(h: &Handle, index: u32, net: IpNet) -> Result<(), rtnetlink::Error> {
    let mut req = h.address().add(index, net.addr(), net.prefix_len());
    if net.addr().is_ipv6() {
        let m = req.message_mut();
        m.header.flags |= AddressHeaderFlags::Nodad;
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// The addresses of link `index` (IFA_LOCAL for IPv4, which differs from
/// IFA_ADDRESS only on point-to-point links).
pub(crate) async fn link_addrs(h: &Handle, index: u32) -> Result<Vec<IpNet>, rtnetlink::Error> {
    let msgs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await?;
    Ok(msgs.iter().filter_map(addr_of).collect())
}

/// Every address of the namespace with its link's index, in one dump (for
/// looking at many links: the per-link filter of [`link_addrs`] still
/// dumps them all).
pub(crate) async fn all_addrs(h: &Handle) -> Result<Vec<(u32, IpNet)>, rtnetlink::Error> {
    let msgs: Vec<_> = h.address().get().execute().try_collect().await?;
    Ok(msgs
        .iter()
        .filter_map(|m| Some((m.header.index, addr_of(m)?)))
        .collect())
}

/// An address message's address with its prefix.
fn addr_of(m: &AddressMessage) -> Option<IpNet> {
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    IpNet::new(local.or(addr)?, m.header.prefix_len).ok()
}

// ---- route helpers ------------------------------------------------------

/// The netlink message for `r` through link `index`.
pub(crate) fn route_message(index: u32, r: &ResolvedRoute) -> Result<RouteMessage, NetnsError> {
    // rtnetlink does not export its builder error type; only its text matters.
    fn bad(r: &ResolvedRoute) -> impl Fn(&dyn std::fmt::Display) -> NetnsError + '_ {
        move |e| NetnsError::InvalidInput(format!("route {}: {e}", r.dst))
    }
    let dst = r.dst.trunc();
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .map_err(|e| bad(r)(&e))?
        .output_interface(index);
    match r.gateway {
        Some(gw) => {
            if gw.is_ipv4() != dst.addr().is_ipv4() {
                return Err(NetnsError::InvalidInput(format!(
                    "route {}: gateway {gw} is of the other family",
                    r.dst
                )));
            }
            b = b.gateway(gw).map_err(|e| bad(r)(&e))?;
            if r.onlink {
                b = b.onlink();
            }
        }
        // A destination straight on the link, like `ip route add X dev D`:
        // link scope for IPv4 (IPv6 routes have no scope).
        None if dst.addr().is_ipv4() => b = b.scope(RouteScope::Link),
        None => {}
    }
    if let Some(m) = r.metric {
        b = b.priority(m);
    }
    let mut msg = b.build();
    if let Some(mtu) = r.mtu {
        msg.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    Ok(msg)
}

/// Adds route `r` (built as `msg`) through link `index` (named `ifname`),
/// never replacing one: an identical route through the same link is
/// success (a retried ADD), any other route to the destination a
/// [`NetnsError::RouteConflict`].
pub(crate) async fn add_route(
    h: &Handle,
    index: u32,
    ifname: &str,
    r: &ResolvedRoute,
    msg: RouteMessage,
) -> Result<(), NetnsError> {
    match h.route().add(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EEXIST) => {
            let mine = routes_via(h, index)
                .await
                .map_err(|e| NetnsError::netlink(format!("list routes of {ifname}"), e))?;
            if mine
                .iter()
                .any(|x| x.dst == r.dst.trunc() && x.gateway == r.gateway)
            {
                return Ok(());
            }
            Err(NetnsError::RouteConflict {
                dst: r.dst.trunc(),
                ifname: ifname.to_owned(),
                existing: "through another interface or next hop".into(),
            })
        }
        Err(e) => Err(NetnsError::netlink(
            format!("add route {} via {ifname}", r.dst),
            e,
        )),
    }
}

/// Main-table routes through link `index`, kernel-made ones excluded.
pub(crate) async fn routes_via(
    h: &Handle,
    index: u32,
) -> Result<Vec<ResolvedRoute>, rtnetlink::Error> {
    let mut out = Vec::new();
    for probe in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let msgs: Vec<RouteMessage> = h.route().get(probe).execute().try_collect().await?;
        for m in msgs {
            if m.header.table != RouteMessageBuilder::<IpAddr>::new().build().header.table
                || m.header.protocol == RouteProtocol::Kernel
            {
                continue;
            }
            let mut oif = None;
            let mut dst = None;
            let mut gateway = None;
            let mut metric = None;
            let mut mtu = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(d) => dst = route_ip(d),
                    RouteAttribute::Gateway(g) => gateway = route_ip(g),
                    RouteAttribute::Priority(p) => metric = Some(*p),
                    RouteAttribute::Metrics(ms) => {
                        mtu = ms.iter().find_map(|x| match x {
                            RouteMetric::Mtu(v) => Some(*v),
                            _ => None,
                        })
                    }
                    _ => {}
                }
            }
            if oif != Some(index) {
                continue;
            }
            let v4 = m.header.address_family == rtnetlink::packet_route::AddressFamily::Inet;
            let unspecified: IpAddr = if v4 {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            let Ok(dst) = IpNet::new(
                dst.unwrap_or(unspecified),
                m.header.destination_prefix_length,
            ) else {
                continue;
            };
            out.push(ResolvedRoute {
                dst,
                gateway,
                onlink: m.header.flags.contains(RouteFlags::Onlink),
                // The kernel reports its default IPv6 metric (1024) on every
                // route without one; report it as it is.
                metric,
                mtu,
            });
        }
    }
    Ok(out)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

// ---- the node's own addressing -------------------------------------------

/// [`Netns::node_overlaps`] over the node's socket: one address dump and one
/// route dump per family the ranges have. Interface names are only looked
/// up for what overlaps: from the IPv4 addresses' labels (which carry the
/// device name) when possible, else one link query per interface.
async fn node_overlaps(h: &Handle, ranges: &[IpNet]) -> Result<Vec<NodeEntry>, rtnetlink::Error> {
    use rtnetlink::packet_route::AddressFamily;
    use std::collections::BTreeMap;
    let hits = |n: IpNet| {
        ranges
            .iter()
            .any(|r| crate::plan::authority::overlaps(*r, n))
    };
    let v4 = ranges.iter().any(|r| r.addr().is_ipv4());
    let v6 = ranges.iter().any(|r| r.addr().is_ipv6());
    // (entry, ifindex)
    let mut found: Vec<(NodeEntry, Option<u32>)> = Vec::new();
    let mut labels: BTreeMap<u32, String> = BTreeMap::new();

    let mut req = h.address().get();
    req.message_mut().header.family = match (v4, v6) {
        (true, false) => AddressFamily::Inet,
        (false, true) => AddressFamily::Inet6,
        _ => AddressFamily::Unspec,
    };
    let addrs: Vec<_> = req.execute().try_collect().await?;
    for m in &addrs {
        let index = m.header.index;
        let mut local = None;
        let mut addr = None;
        for a in &m.attributes {
            match a {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => addr = Some(*ip),
                // "eth0" or an alias "eth0:1": the device is before the colon.
                AddressAttribute::Label(l) => {
                    let dev = l.split(':').next().unwrap_or(l);
                    labels.entry(index).or_insert_with(|| dev.to_owned());
                }
                _ => {}
            }
        }
        let Some(ip) = local.or(addr) else { continue };
        let Ok(net) = IpNet::new(ip, m.header.prefix_len) else {
            continue;
        };
        if hits(net.trunc()) {
            found.push((
                NodeEntry {
                    net,
                    kind: NodeEntryKind::Address,
                    device: None,
                },
                Some(index),
            ));
        }
    }

    let mut probes = Vec::new();
    if v4 {
        probes.push(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build());
    }
    if v6 {
        probes.push(RouteMessageBuilder::<std::net::Ipv6Addr>::new().build());
    }
    for probe in probes {
        // No table in the request: the dump covers every table.
        let routes: Vec<RouteMessage> = h.route().get(probe).execute().try_collect().await?;
        for m in routes {
            let len = m.header.destination_prefix_length;
            if len == 0 {
                continue; // a default route: not a claim on any range
            }
            let mut dst = None;
            let mut oif = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = route_ip(d),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let Some(Ok(net)) = dst.map(|d| IpNet::new(d, len)) else {
                continue;
            };
            if hits(net.trunc()) {
                found.push((
                    NodeEntry {
                        net,
                        kind: NodeEntryKind::Route,
                        device: None,
                    },
                    oif,
                ));
            }
        }
    }

    let mut out = Vec::with_capacity(found.len());
    for (mut entry, index) in found {
        if let Some(i) = index {
            let name = match labels.get(&i) {
                Some(n) => Some(n.clone()),
                None => {
                    let mut s = h.link().get().match_index(i).execute();
                    match s.try_next().await {
                        Ok(Some(l)) => l.attributes.iter().find_map(|a| match a {
                            LinkAttribute::IfName(n) => Some(n.clone()),
                            _ => None,
                        }),
                        // Gone since the dump: so is what it carried.
                        Ok(None) => continue,
                        Err(e) if errno(&e) == Some(libc::ENODEV) => continue,
                        Err(e) => return Err(e),
                    }
                }
            };
            if let Some(n) = &name {
                labels.insert(i, n.clone());
                if is_tenet_link(n) {
                    continue;
                }
            }
            entry.device = name;
        }
        out.push(entry);
    }
    Ok(out)
}

// ---- RtNetns ------------------------------------------------------------

/// The real [`Netns`]: rtnetlink in the node namespace (the constructing
/// thread's) and in pod namespaces (sockets opened there; sysctls written
/// on helper threads inside).
pub struct RtNetns {
    rtnl: Rtnl,
}

impl RtNetns {
    /// Opens the node's netlink socket in the calling thread's namespace.
    /// Must not be called from inside a tokio runtime.
    pub fn new() -> Result<Self, NetnsError> {
        Ok(Self { rtnl: Rtnl::new()? })
    }

    /// Like [`Self::new`], for one CNI operation: the netlink socket opened
    /// in a pod's namespace is kept and reused by every later call for that
    /// pod (no new socket each time) until this value is dropped. Those
    /// sockets keep their namespaces alive meanwhile, so a long-lived user
    /// that sees many pods should use [`Self::new`] instead.
    pub fn for_one_operation() -> Result<Self, NetnsError> {
        let mut rtnl = Rtnl::new()?;
        rtnl.keep_pods = true;
        Ok(Self { rtnl })
    }

    async fn create_pair(
        &self,
        spec: &VethSpec,
        ns: &NetnsFile,
        mac: MacAddr,
    ) -> Result<(), NetnsError> {
        use std::os::fd::{AsFd, AsRawFd};
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.ifname.clone())
            .address(mac.0.to_vec())
            // The fd is only read while the request is built and sent below,
            // and `ns` outlives this call.
            .setns_by_fd(ns.as_fd().as_raw_fd());
        if let Some(g) = spec.group {
            // Only the pod end: the node namespace is the host's, and a
            // deletion by group never runs there.
            peer = peer.append_extra_attribute(LinkAttribute::Group(g));
        }
        // The host end comes up with its creation (one request fewer); the
        // pod end only once its IPv6 address generation is off.
        let mut host = LinkVeth::new(&spec.host_ifname, &spec.ifname).up();
        if let Some(mtu) = spec.mtu {
            peer = peer.mtu(mtu);
            host = host.mtu(mtu);
        }
        let msg = host
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        self.rtnl
            .node()
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| match errno(&e) {
                // The pod side was checked just before; EEXIST now means a
                // concurrent creator won (the runtime never runs two ADDs of
                // one attachment at once, so this is someone else's link).
                Some(libc::EEXIST) => NetnsError::IfnameExists {
                    ifname: spec.ifname.clone(),
                    netns: spec.netns.clone(),
                },
                _ => NetnsError::netlink(
                    format!("create veth {} / {}", spec.host_ifname, spec.ifname),
                    e,
                ),
            })
    }

    async fn finish_veth(&self, spec: &VethSpec, pod: &Handle) -> Result<VethInfo, NetnsError> {
        let nl = |op: &str| {
            let op = op.to_owned();
            move |e| NetnsError::netlink(op, e)
        };
        let pod_link = link_by_name(pod, &spec.ifname)
            .await
            .map_err(nl("get pod link"))?
            .ok_or_else(|| NetnsError::LinkNotFound {
                ifname: spec.ifname.clone(),
                netns: spec.netns.display().to_string(),
            })?;
        let host_link = link_by_name(self.rtnl.node(), &spec.host_ifname)
            .await
            .map_err(nl("get host link"))?
            .ok_or_else(|| NetnsError::LinkNotFound {
                ifname: spec.host_ifname.clone(),
                netns: "the node".into(),
            })?;
        // Before the pod end comes up: no kernel-made IPv6 address, only
        // the link-local one tenet chose (see the module docs).
        let gen_none = LinkUnspec::new_with_index(pod_link.header.index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]))
            .build();
        match pod.link().set(gen_none).execute().await {
            Ok(()) => {}
            // A kernel without IPv6: there is no IPv6 to guard.
            Err(e)
                if spec.link_local.is_none()
                    && matches!(errno(&e), Some(libc::EAFNOSUPPORT | libc::EOPNOTSUPP)) =>
            {
                debug!(ifname = %spec.ifname, "no IPv6 in the pod");
            }
            Err(e) => return Err(NetnsError::netlink("turn off IPv6 address generation", e)),
        }
        if let Some(ll) = spec.link_local {
            add_addr(
                pod,
                pod_link.header.index,
                IpNet::new(ll.into(), 64).expect("/64"),
            )
            .await
            .map_err(nl("add the link-local address"))?;
        }
        set_up(pod, pod_link.header.index)
            .await
            .map_err(nl("set pod link up"))?;
        Ok(VethInfo {
            mac: link_mac(&pod_link).ok_or_else(|| {
                NetnsError::InvalidInput(format!("{} has no MAC address", spec.ifname))
            })?,
            host_mac: link_mac(&host_link).unwrap_or(MacAddr([0; 6])),
            ifindex: pod_link.header.index,
            host_ifindex: host_link.header.index,
        })
    }
}

impl Netns for RtNetns {
    fn check_pod_netns(&self, netns: &Path) -> Result<(), NetnsError> {
        self.rtnl.open_pod(netns).map(drop)
    }

    fn create_veth(&self, spec: &VethSpec) -> Result<VethInfo, NetnsError> {
        check_ifname(&spec.ifname)?;
        check_ifname(&spec.host_ifname)?;
        let mac = spec
            .mac
            .unwrap_or_else(|| derive_mac(&spec.container_id, &spec.ifname));
        if !mac.is_unicast() {
            return Err(NetnsError::InvalidInput(format!(
                "MAC {mac} is a multicast address"
            )));
        }
        let ns = self.rtnl.open_pod(&spec.netns)?;
        let pod = self.rtnl.handle_in(&ns)?;
        debug!(ifname = %spec.ifname, host = %spec.host_ifname, %mac, "create veth");
        self.rtnl.block_on(async {
            if link_by_name(&pod, &spec.ifname)
                .await
                .map_err(|e| NetnsError::netlink("get pod link", e))?
                .is_some()
            {
                return Err(NetnsError::IfnameExists {
                    ifname: spec.ifname.clone(),
                    netns: spec.netns.clone(),
                });
            }
            // The host name is derived from this attachment's key, so a link
            // of that name is a leftover of an earlier, interrupted ADD of
            // the same attachment whose pod end is gone: replace it.
            if let Some(stale) = link_by_name(self.rtnl.node(), &spec.host_ifname)
                .await
                .map_err(|e| NetnsError::netlink("get host link", e))?
            {
                warn!(host = %spec.host_ifname, "replacing a stale host end");
                del_link(self.rtnl.node(), stale.header.index)
                    .await
                    .map_err(|e| NetnsError::netlink("delete stale host end", e))?;
            }
            self.create_pair(spec, &ns, mac).await?;
            match self.finish_veth(spec, &pod).await {
                Ok(info) => Ok(info),
                Err(e) => {
                    // Do not leave a half-made pair behind: deleting the host
                    // end removes both.
                    if let Ok(Some(l)) = link_by_name(self.rtnl.node(), &spec.host_ifname).await {
                        let _ = del_link(self.rtnl.node(), l.header.index).await;
                    }
                    Err(e)
                }
            }
        })
    }

    fn configure(
        &self,
        netns: &Path,
        ifname: &str,
        addrs: &[IpNet],
        routes: &[ResolvedRoute],
        sysctls: &[(String, String)],
    ) -> Result<(), NetnsError> {
        check_ifname(ifname)?;
        let items = sysctl::paths(sysctls)?;
        let ns = self.rtnl.open_pod(netns)?;
        let pod = self.rtnl.handle_in(&ns)?;
        let index = self.rtnl.block_on(async {
            link_by_name(&pod, ifname)
                .await
                .map_err(|e| NetnsError::netlink("get pod link", e))
        })?;
        let index = index
            .ok_or_else(|| NetnsError::LinkNotFound {
                ifname: ifname.to_owned(),
                netns: netns.display().to_string(),
            })?
            .header
            .index;
        // Build every route message first so bad input fails before any
        // change is made.
        let msgs = routes
            .iter()
            .map(|r| route_message(index, r).map(|m| (r, m)))
            .collect::<Result<Vec<_>, _>>()?;
        if !items.is_empty() {
            run_in(&ns, || sysctl::write_here(&items))??;
        }
        self.rtnl.block_on(async {
            for a in addrs {
                debug!(%ifname, addr = %a, "pod address");
                add_addr(&pod, index, *a)
                    .await
                    .map_err(|e| NetnsError::netlink(format!("add address {a} to {ifname}"), e))?;
            }
            for (r, m) in msgs {
                debug!(%ifname, dst = %r.dst, gw = ?r.gateway, onlink = r.onlink, "pod route");
                add_route(&pod, index, ifname, r, m).await?;
            }
            Ok(())
        })
    }

    fn host_side(&self, spec: &HostLinkSpec) -> Result<(), NetnsError> {
        check_ifname(&spec.host_ifname)?;
        let node = self.rtnl.node();
        self.rtnl.block_on(async {
            let link = link_by_name(node, &spec.host_ifname)
                .await
                .map_err(|e| NetnsError::netlink("get host link", e))?
                .ok_or_else(|| NetnsError::LinkNotFound {
                    ifname: spec.host_ifname.clone(),
                    netns: "the node".into(),
                })?;
            let index = link.header.index;
            for g in &spec.gateways {
                add_addr(node, index, *g).await.map_err(|e| {
                    NetnsError::netlink(format!("add gateway {g} to {}", spec.host_ifname), e)
                })?;
            }
            for ip in &spec.pod_addrs {
                let r = ResolvedRoute::link(IpNet::from(*ip));
                let msg = route_message(index, &r)?;
                add_route(node, index, &spec.host_ifname, &r, msg).await?;
            }
            Ok(())
        })
    }

    fn delete(
        &self,
        netns: Option<&Path>,
        ifname: &str,
        host_ifname: &str,
    ) -> Result<(), NetnsError> {
        check_ifname(ifname)?;
        check_ifname(host_ifname)?;
        let is_veth = |m: &LinkMessage| matches!(link_kind(m), Some(InfoKind::Veth));
        // The pod end first: with the pod gone the host end vanishes too.
        if let Some(path) = netns.filter(|p| !p.as_os_str().is_empty()) {
            match self.rtnl.open_pod(path) {
                Ok(ns) => {
                    let pod = self.rtnl.handle_in(&ns)?;
                    self.rtnl.block_on(async {
                        match link_by_name(&pod, ifname).await {
                            Ok(Some(l)) if is_veth(&l) => del_link(&pod, l.header.index)
                                .await
                                .map_err(|e| NetnsError::netlink(format!("delete {ifname}"), e)),
                            Ok(Some(_)) => {
                                // Not a veth: not something tenet made.
                                warn!(%ifname, "pod interface is not a veth; leaving it");
                                Ok(())
                            }
                            Ok(None) => Ok(()),
                            Err(e) => Err(NetnsError::netlink(format!("get {ifname}"), e)),
                        }
                    })?;
                }
                Err(e @ (NetnsError::InvalidNetns { .. } | NetnsError::NodeNetns { .. })) => {
                    debug!(error = %e, "no pod namespace to clean");
                }
                Err(e) => return Err(e),
            }
        }
        let node = self.rtnl.node();
        self.rtnl.block_on(async {
            match link_by_name(node, host_ifname).await {
                Ok(Some(l)) if is_veth(&l) => del_link(node, l.header.index)
                    .await
                    .map_err(|e| NetnsError::netlink(format!("delete {host_ifname}"), e)),
                Ok(Some(_)) => {
                    warn!(%host_ifname, "host interface is not a veth; leaving it");
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) => Err(NetnsError::netlink(format!("get {host_ifname}"), e)),
            }
        })
    }

    fn group_in_use(&self, netns: &Path, group: u32) -> Result<bool, NetnsError> {
        let ns = self.rtnl.open_pod(netns)?;
        let pod = self.rtnl.handle_in(&ns)?;
        let links = self
            .rtnl
            .block_on(all_links(&pod))
            .map_err(|e| NetnsError::netlink("list pod links", e))?;
        Ok(links.iter().any(|l| link_group(l) == Some(group)))
    }

    fn delete_group(&self, netns: &Path, group: u32, ifnames: &[&str]) -> Result<bool, NetnsError> {
        for n in ifnames {
            check_ifname(n)?;
        }
        if group == 0 {
            // Every link starts in group 0: never delete by it.
            return Ok(false);
        }
        let ns = match self.rtnl.open_pod(netns) {
            Ok(ns) => ns,
            Err(e @ (NetnsError::InvalidNetns { .. } | NetnsError::NodeNetns { .. })) => {
                debug!(error = %e, "no pod namespace to delete a group in");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let pod = self.rtnl.handle_in(&ns)?;
        self.rtnl.block_on(async {
            let links = all_links(&pod)
                .await
                .map_err(|e| NetnsError::netlink("list pod links", e))?;
            let members: Vec<&LinkMessage> = links
                .iter()
                .filter(|l| link_group(l) == Some(group))
                .collect();
            // Exactly this attachment's veths, each once: anything else in
            // the group (a link someone else put there, a name that is not
            // ours, one of ours missing or no longer a veth) and nothing is
            // deleted by group.
            let mut names: Vec<&str> = members.iter().filter_map(|l| link_name(l)).collect();
            names.sort_unstable();
            let mut want: Vec<&str> = ifnames.to_vec();
            want.sort_unstable();
            want.dedup();
            let exact = names == want
                && members.len() == want.len()
                && members
                    .iter()
                    .all(|l| matches!(link_kind(l), Some(InfoKind::Veth)));
            if !exact {
                if !members.is_empty() {
                    warn!(group, ?names, ?want, "interface group is not exactly this attachment's veths; deleting link by link");
                }
                return Ok(false);
            }
            let mut req = pod.link().del(0);
            req.message_mut()
                .attributes
                .push(LinkAttribute::Group(group));
            match req.execute().await {
                Ok(()) => Ok(true),
                // Already gone between the listing and now.
                Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(true),
                Err(e) => Err(NetnsError::netlink(
                    format!("delete interface group {group}"),
                    e,
                )),
            }
        })
    }

    fn inspect(&self, netns: &Path, ifname: &str) -> Result<Option<LinkState>, NetnsError> {
        check_ifname(ifname)?;
        let ns = self.rtnl.open_pod(netns)?;
        let pod = self.rtnl.handle_in(&ns)?;
        self.rtnl.block_on(async {
            let nl = |op: &'static str| move |e| NetnsError::netlink(op, e);
            let Some(l) = link_by_name(&pod, ifname)
                .await
                .map_err(nl("get pod link"))?
            else {
                return Ok(None);
            };
            let index = l.header.index;
            let addrs = link_addrs(&pod, index)
                .await
                .map_err(nl("list addresses"))?
                .into_iter()
                // The kernel adds an fe80:: address to every link; tenet
                // never does, so it is not part of what CHECK compares.
                .filter(|a| !matches!(a, IpNet::V6(n) if n.addr().is_unicast_link_local()))
                .collect();
            let routes = routes_via(&pod, index).await.map_err(nl("list routes"))?;
            Ok(Some(LinkState {
                ifindex: index,
                mac: link_mac(&l),
                mtu: link_mtu(&l),
                up: link_is_up(&l),
                addrs,
                routes,
            }))
        })
    }

    fn inspect_host_side(&self, host_ifname: &str) -> Result<Option<HostSideState>, NetnsError> {
        check_ifname(host_ifname)?;
        let node = self.rtnl.node();
        self.rtnl.block_on(async {
            let nl = |op: &'static str| move |e| NetnsError::netlink(op, e);
            let Some(l) = link_by_name(node, host_ifname)
                .await
                .map_err(nl("get host link"))?
            else {
                return Ok(None);
            };
            let index = l.header.index;
            let addrs = link_addrs(node, index)
                .await
                .map_err(nl("list host-end addresses"))?
                .into_iter()
                .filter(|a| !matches!(a, IpNet::V6(n) if n.addr().is_unicast_link_local()))
                .collect();
            let routes = routes_via(node, index)
                .await
                .map_err(nl("list host-end routes"))?;
            Ok(Some(HostSideState { addrs, routes }))
        })
    }

    fn node_overlaps(&self, ranges: &[IpNet]) -> Result<Vec<NodeEntry>, NetnsError> {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let nl = |op: &'static str| move |e| NetnsError::netlink(op, e);
        let node = self.rtnl.node();
        self.rtnl
            .block_on(node_overlaps(node, ranges))
            .map_err(nl("read the node's addresses and routes"))
    }

    fn host_link_exists(&self, host_ifname: &str) -> Result<bool, NetnsError> {
        check_ifname(host_ifname)?;
        self.rtnl.block_on(async {
            link_by_name(self.rtnl.node(), host_ifname)
                .await
                .map(|l| l.is_some())
                .map_err(|e| NetnsError::netlink("get host link", e))
        })
    }
}
