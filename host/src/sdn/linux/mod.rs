//! The embedded SDN backend ([`LinuxSdn`]): a Linux bridge per tenant,
//! nftables isolation and per-port source guards. Submodules: `nft` (the
//! ruleset's script builders and the `nft` child process), `nftnl` (set
//! elements over netlink, ADD's fast path), `guard` (a port's guard
//! elements, pure).
//!
//! The threat model and every rule with its reason: `docs/isolation.md`.
//!
//! **Names.** A tenant's bridge is `tb-` + 12 hex digits of `sha256(tenant)`
//! ([`bridge_name`](super::bridge_name), 15 bytes, the kernel's limit):
//! tenant ids are arbitrary strings, and nothing a tenant controls ends up
//! verbatim in an interface name or an nft script. A name is never trusted
//! alone: the bridge records its tenant in its ifalias
//! (`tenet:<rules stamp>:<tenant>`, [`bridge_alias`]), a tenant's bridge is
//! the first of its candidate names ([`bridge_candidates`]) recording that
//! tenant, and a new bridge takes the first free candidate under a per-name
//! lock, so two tenants whose ids hash alike never share a bridge. The bridge gets a fixed, locally administered
//! MAC derived from the tenant, because a bridge otherwise takes the
//! smallest MAC of its ports and changes it as pods come and go, which leaves
//! stale gateway entries in pods' neighbour caches. The bridge holds the
//! tenant's gateway addresses with the subnet's prefix, so the node routes
//! for the tenant, and answers ARP only for them (`arp_ignore = 1`).
//!
//! **Rules.** tenet owns two tables, `inet tenet` and `bridge tenet`.
//! Everything tenant-specific is a per-tenant chain named after the bridge
//! plus elements of shared verdict maps that jump to it, so a tenant's rules
//! are listed and removed exactly, by name, without rule handles; everything
//! pod-specific is data in sets ([`PortGuard`]), added and deleted over
//! netlink in one batch per ADD or DEL, so no pod needs an `nft` fork:
//!
//! ```text
//! table inet tenet {
//!   map fwd_from { type ifname : verdict }     "tb-X" : jump fwd-tb-X
//!   map gw4 / gw6 { type ipv4_addr / ipv6_addr : verdict }   gateway : jump gw-tb-X
//!   map masq4 / masq6 { …; interval }          subnet : jump nat-tb-X
//!   map svc_from { type ifname : verdict }     "tn<host link>" : jump svc-tb-X
//!   set svc_shared { type ifname }             shared tenants' bridges
//!   set port_v4 / port_v6 { type ifname . ipv4_addr / ipv6_addr }   every port's sources
//!   chain prerouting (filter hook prerouting priority raw) { iifname "tn*" jump port_guard }
//!   chain port_guard { no redirects/RAs; iifname . saddr in port_v4/v6 accept; DAD; drop }
//!   chain forward (filter hook forward) {
//!     iifname vmap @fwd_from                     # a tenant's own traffic: its chain decides
//!     iifname "tb-*" drop                        # a bridge without rules forwards nothing
//!     iifname "tn*" oifname "tb-*" ct status dnat ct direction original accept  # services
//!                                                # ("same" scope: iifname vmap @svc_from)
//!     iifname "tn*" oifname { "tb-*", "tn*" } drop   # host links reach no tenant, no host link
//!     oifname "tn*" ct state established,related accept
//!     oifname "tn*" drop
//!   }
//!   chain input (filter hook input) { ip daddr vmap @gw4; ip6 daddr vmap @gw6 }
//!   chain postrouting (nat hook postrouting) { ip saddr vmap @masq4; ip6 saddr vmap @masq6 }
//!   chain fwd-tb-X { oifname "tb-X" accept
//!                    oifname { "tb-*", "tn*" } ct status dnat ct direction reply accept
//!                    oifname "tb-*" ct status dnat ct direction original accept  # or jump svc-tb-X
//!                    oifname { "tb-*", "tn*" } drop; accept }
//!   chain gw-tb-X  { iifname "tb-X" accept; iifname { "tb-*", "tn*" } drop }
//!   chain svc-tb-X { oifname "tb-X" accept; oifname @svc_shared accept }
//!   chain nat-tb-X { oifname != "tb-*" oifname != "tn*" masquerade }  # empty when off
//! }
//! table bridge tenet {
//!   set port_mac { type ifname . ether_addr }  set port_v4 / port_v6 { … }
//!   chain prerouting (filter hook prerouting priority -300) { iifname "tn*" jump port_guard }
//!   chain port_guard { ether saddr must be the port's; ARP checked field by field;
//!                      no redirects/RAs; saddr in port_v4/v6 accept; DAD; drop }
//! }
//! ```
//!
//! So a packet from tenant X is forwarded only back into X's bridge, out of
//! the node, or as part of a service flow the node DNATed; a host link
//! carries only pod ↔ node traffic and service flows; a port sends only from
//! its own MAC and addresses (fail closed: a `tn*` port without elements
//! sends nothing); and a tenant gateway address on the node answers only its
//! own bridge (and the outside). Traffic between pods of one tenant is
//! bridged and never reaches the inet hooks (unless `br_netfilter` is
//! loaded, in which case `oifname "tb-X" accept` lets it through). `tb-*` are
//! tenet's bridges and `tn*` the host ends of its veths
//! ([`crate::netns::host_ifname`]).
//!
//! Every change for one tenant is one `nft -f -` transaction: the tables,
//! sets, maps and base chains are declared (idempotent), the base chains are
//! flushed and rewritten with their fixed rules, the tenant's chains are
//! flushed and rewritten, and its map elements are added (re-adding an
//! identical element is a no-op). Two ADDs that race therefore converge to
//! the same ruleset. Removal lists the table as JSON and deletes exactly the
//! elements that jump to the tenant's chains (host links' `svc_from`
//! elements included), then the chains. The bridge is created (recording
//! its tenant) before its rules, its gateway addresses are added after them,
//! and it is deleted before its rules.
//!
//! `nft` is run as a child process (`nft -f -`, script on stdin): it is the
//! supported interface to nftables, its transactions are atomic, and no
//! netlink-nftables crate is as complete; the cost (a fork+exec of a few
//! milliseconds per ADD) is measured against the budget elsewhere.
//!
//! Forwarding (`net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding`) is the
//! node operator's choice: tenet never writes node sysctls.

pub(super) mod guard;
pub(super) mod nft;
mod nftnl;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use ipnet::IpNet;
use rtnetlink::packet_route::link::{InfoKind, LinkMessage};
use rtnetlink::{LinkBridge, LinkUnspec};
use tracing::{debug, info, warn};

use sha2::Digest;

use super::{
    PortSpec, Sdn, SdnError, SdnOptions, TenantNet, alias_ident, bridge_alias, bridge_candidates,
    bridge_mac, bridge_name, check_tenant_id, gateways, lock_name_of_ident, tenant_ident,
};
use crate::apply::Failpoints;
use crate::apply::lock::{FileLock, LockError, TENANT_LOCK_TIMEOUT, TenantLock};
use crate::ipam::AttachmentKey;
use crate::netns::NetnsError;
use crate::netns::rtnl::{
    Rtnl, add_addr, all_addrs, all_links, del_link, errno, link_addrs, link_by_name,
    link_controller, link_is_up, link_kind, set_up,
};
use crate::plan::authority::overlaps;
use guard::{GUARD_SETS, PortGuard};
use nft::{TenantRules, fwd_chain, gw_chain, nat_chain};

/// A link's ifalias, if set.
fn link_alias(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        rtnetlink::packet_route::link::LinkAttribute::IfAlias(s) => Some(s.as_str()),
        _ => None,
    })
}

fn is_bridge(l: &LinkMessage) -> bool {
    matches!(link_kind(l), Some(InfoKind::Bridge))
}

/// A held bridge-name lock whose file is removed on release (safe against
/// waiters, see [`FileLock`]), so no lock file outlives its use.
struct NameLock(Option<FileLock>);

impl Drop for NameLock {
    fn drop(&mut self) {
        if let Some(l) = self.0.take()
            && let Err(e) = l.remove()
        {
            warn!(error = %e, "could not remove a bridge name's lock file");
        }
    }
}

/// How long ensure waits for a bridge name another ADD is claiming.
const NAME_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The node-namespace sysctls of a tenant bridge: the node answers ARP on
/// it only for the addresses it holds (its tenant's gateways), and sources
/// its own ARP requests from them.
const BRIDGE_SYSCTLS: [(&str, &str); 2] = [("arp_ignore", "1"), ("arp_announce", "2")];

/// A bridge on the node that records a tenant, as one link dump shows it.
#[derive(Debug)]
struct TenantBridge {
    name: String,
    index: u32,
    /// The tenant ident its alias records ([`tenant_ident`]).
    ident: String,
    /// Links whose controller it is (pods' host ends).
    ports: usize,
}

/// What [`LinuxSdn::remove_idle`] found under the bridge's tenant lock.
#[derive(Debug, PartialEq, Eq)]
enum Idle {
    /// The bridge had no port (and overlapped, when asked): it and its
    /// rules are gone.
    Removed,
    /// It has ports: its tenant has pods on the node.
    InUse,
    /// It is gone, records another tenant now, or no longer overlaps.
    Changed,
}

/// The Linux bridge + nftables backend. The node namespace is the one of the
/// thread that constructs it (netlink socket) and of the threads that call it
/// (`nft` runs as a child of the calling thread, `/proc/sys/net` is read in
/// the caller's namespace).
pub struct LinuxSdn {
    rtnl: Rtnl,
    opts: SdnOptions,
    failpoints: Mutex<Failpoints>,
}

fn nl_io(op: &str, e: std::io::Error) -> SdnError {
    SdnError::Nft {
        op: op.to_owned(),
        stderr: e.to_string(),
    }
}

impl LinuxSdn {
    /// Opens the node's netlink socket. Must not be called from inside a
    /// tokio runtime.
    pub fn new(opts: SdnOptions) -> Result<Self, SdnError> {
        Ok(Self {
            rtnl: Rtnl::new()?,
            opts,
            failpoints: Mutex::new(Failpoints::none()),
        })
    }

    fn point(&self, step: &str) -> Result<(), SdnError> {
        let f = self
            .failpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        f.after(step).map_err(|msg| SdnError::Failpoint {
            step: step.to_owned(),
            msg,
        })
    }

    /// The lock of one bridge name, held while the name is claimed or its
    /// leftovers are removed; its file goes when it is released.
    fn name_lock(&self, bridge: &str) -> Result<NameLock, SdnError> {
        let path = self.opts.lock_dir.join(format!("name-{bridge}.lock"));
        FileLock::acquire(&path, bridge, NAME_LOCK_TIMEOUT)
            .map(|l| NameLock(Some(l)))
            .map_err(|e| match e {
                LockError::Timeout { .. } => SdnError::Busy(e.to_string()),
                LockError::Io { .. } => SdnError::Conflict(e.to_string()),
            })
    }

    async fn link(&self, name: &str) -> Result<Option<LinkMessage>, SdnError> {
        link_by_name(self.rtnl.node(), name)
            .await
            .map_err(|e| SdnError::netlink(format!("get {name}"), e))
    }

    /// `tenant`'s bridge: the first of its candidate names that is a bridge
    /// recording `tenant` in its alias. Other tenants' bridges and foreign
    /// interfaces under a candidate name are passed over.
    async fn find_bridge(&self, tenant: &str) -> Result<Option<LinkMessage>, SdnError> {
        let ident = tenant_ident(tenant);
        for name in bridge_candidates(tenant) {
            if let Some(l) = self.link(&name).await?
                && is_bridge(&l)
                && link_alias(&l).and_then(alias_ident) == Some(ident.as_str())
            {
                return Ok(Some(l));
            }
        }
        Ok(None)
    }

    /// Creates `tenant`'s bridge under the first free candidate name, with
    /// its MAC and its tenant recorded, each name claimed under its lock so
    /// two tenants never take one bridge. Returns the bridge and whether it
    /// is new.
    async fn claim_bridge(&self, tenant: &str) -> Result<(LinkMessage, bool), SdnError> {
        let ident = tenant_ident(tenant);
        let node = self.rtnl.node();
        for name in bridge_candidates(tenant) {
            let _lock = self.name_lock(&name)?;
            if let Some(l) = self.link(&name).await? {
                let owner = link_alias(&l).and_then(alias_ident);
                if is_bridge(&l) && owner == Some(ident.as_str()) {
                    // Created by a concurrent ADD of the same tenant.
                    return Ok((l, false));
                }
                let ports = self.ports(l.header.index).await?;
                if is_bridge(&l) && owner.is_none() && ports == 0 {
                    // Under the name lock a bridge with no tenant recorded
                    // is what an ADD killed between creating and recording
                    // left: nobody uses it.
                    warn!(%name, "removing a tenant bridge that records no tenant");
                    del_link(node, l.header.index)
                        .await
                        .map_err(|e| SdnError::netlink(format!("delete {name}"), e))?;
                } else {
                    warn!(%tenant, %name, owner = ?owner, "bridge name taken; trying the next");
                    continue;
                }
            }
            let msg = LinkBridge::new(&name)
                .address(bridge_mac(tenant).0.to_vec())
                .build();
            node.link()
                .add(msg)
                .execute()
                .await
                .map_err(|e| SdnError::netlink(format!("create {name}"), e))?;
            let l = self.link(&name).await?.ok_or_else(|| SdnError::Missing {
                resource: format!("bridge {name} (deleted while being created)"),
            })?;
            node.link()
                .set(
                    LinkUnspec::new_with_index(l.header.index)
                        .alias(bridge_alias(tenant, None))
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| SdnError::netlink(format!("record the tenant on {name}"), e))?;
            info!(%tenant, bridge = %name, "created tenant bridge");
            return Ok((l, true));
        }
        Err(SdnError::Conflict(format!(
            "every bridge name of tenant {tenant:?} is taken by other tenants or interfaces"
        )))
    }

    async fn ports(&self, bridge_index: u32) -> Result<usize, SdnError> {
        Ok(all_links(self.rtnl.node())
            .await
            .map_err(|e| SdnError::netlink("list links", e))?
            .iter()
            .filter(|l| link_controller(l) == Some(bridge_index))
            .count())
    }

    /// Every bridge on the node named `tb-…` that records a tenant, with its
    /// port count: one link dump.
    async fn tenant_bridges(&self) -> Result<Vec<TenantBridge>, SdnError> {
        let links = all_links(self.rtnl.node())
            .await
            .map_err(|e| SdnError::netlink("list links", e))?;
        let mut out: Vec<TenantBridge> = links
            .iter()
            .filter(|l| is_bridge(l))
            .filter_map(|l| {
                let name = Self::bridge_name_of(l);
                let ident = link_alias(l).and_then(alias_ident)?;
                name.starts_with("tb-").then(|| TenantBridge {
                    name,
                    index: l.header.index,
                    ident: ident.to_owned(),
                    ports: 0,
                })
            })
            .collect();
        for c in links.iter().filter_map(link_controller) {
            if let Some(b) = out.iter_mut().find(|b| b.index == c) {
                b.ports += 1;
            }
        }
        Ok(out)
    }

    /// Removes the idle tenant network `b` under its tenant's lock (which
    /// the caller holds already when it is named `held`; waiting up to
    /// `wait` for it, then [`SdnError::Busy`]): only if `b` is
    /// still that tenant's bridge, has no port, and, when `overlapping` is
    /// given, still holds an address in one of those subnets. The tenant
    /// lock excludes an ADD of that tenant between its ensure and attach.
    fn remove_idle(
        &self,
        b: &TenantBridge,
        overlapping: Option<&[IpNet]>,
        held: Option<&str>,
        wait: std::time::Duration,
    ) -> Result<Idle, SdnError> {
        let Some(lock_name) = lock_name_of_ident(&b.ident) else {
            // An ident tenet never writes: not a network of ours to remove.
            return Ok(Idle::Changed);
        };
        let lock = if held == Some(lock_name.as_str()) {
            None
        } else {
            let lock = TenantLock::acquire_in(&self.opts.lock_dir, &lock_name, wait).map_err(
                |e| match e {
                    LockError::Timeout { .. } => SdnError::Busy(e.to_string()),
                    LockError::Io { .. } => SdnError::Conflict(e.to_string()),
                },
            )?;
            Some(lock)
        };
        // The bridge as it is now, under the lock: still idle (and
        // overlapping, when asked) or why not.
        let checked = self.rtnl.block_on(async {
            let Some(l) = self.link(&b.name).await? else {
                return Ok::<_, SdnError>(Err(Idle::Changed));
            };
            let index = l.header.index;
            if !is_bridge(&l) || link_alias(&l).and_then(alias_ident) != Some(b.ident.as_str()) {
                return Ok(Err(Idle::Changed));
            }
            if let Some(subnets) = overlapping {
                let addrs = link_addrs(self.rtnl.node(), index)
                    .await
                    .map_err(|e| SdnError::netlink(format!("list addresses of {}", b.name), e))?;
                if !addrs
                    .iter()
                    .any(|a| subnets.iter().any(|s| overlaps(a.trunc(), *s)))
                {
                    return Ok(Err(Idle::Changed));
                }
            }
            if self.ports(index).await? > 0 {
                return Ok(Err(Idle::InUse));
            }
            Ok(Ok(l))
        })?;
        let found = match checked {
            Ok(l) => {
                self.remove_bridge_and_rules(&l)?;
                info!(bridge = %b.name, tenant = %b.ident, "removed an idle tenant network");
                Idle::Removed
            }
            Err(why) => why,
        };
        // The lock file goes with the network (and one this call created
        // for a network that was gone already); a tenant with ports keeps
        // it. Removing it under the lock is safe against waiters.
        if found != Idle::InUse
            && let Some(lock) = lock
            && let Err(e) = lock.remove()
        {
            warn!(bridge = %b.name, error = %e, "could not remove the tenant's lock file");
        }
        Ok(found)
    }

    /// Before `tenant`'s gateways go on the node: removes every idle
    /// network of another tenant holding an address in one of `subnets`
    /// (the address store gave that subnet back and carved it anew while
    /// the old tenant's network idled), and refuses while such a network
    /// has ports, since two tenants never share a subnet on one node. The
    /// caller holds `tenant`'s lock.
    fn clear_overlaps(&self, tenant: &str, subnets: &[IpNet]) -> Result<(), SdnError> {
        let ours = tenant_ident(tenant);
        let others = self.rtnl.block_on(async {
            let bridges: Vec<TenantBridge> = self
                .tenant_bridges()
                .await?
                .into_iter()
                .filter(|b| b.ident != ours)
                .collect();
            if bridges.is_empty() {
                return Ok::<_, SdnError>(Vec::new());
            }
            // One address dump for all of them.
            let addrs = all_addrs(self.rtnl.node())
                .await
                .map_err(|e| SdnError::netlink("list addresses", e))?;
            Ok(bridges
                .into_iter()
                .filter_map(|b| {
                    let a = addrs.iter().find(|(i, a)| {
                        *i == b.index && subnets.iter().any(|s| overlaps(a.trunc(), *s))
                    })?;
                    Some((b, a.1))
                })
                .collect())
        })?;
        let held = bridge_name(tenant);
        for (b, a) in others {
            let found = if b.ports > 0 {
                Idle::InUse
            } else {
                self.remove_idle(&b, Some(subnets), Some(&held), TENANT_LOCK_TIMEOUT)?
            };
            if found == Idle::InUse {
                return Err(SdnError::Conflict(format!(
                    "{a} on bridge {} of another tenant, which has pods on this node, overlaps a \
                     subnet of tenant {tenant:?}: the address store and the node disagree",
                    b.name
                )));
            }
        }
        Ok(())
    }

    /// Deletes the tenant bridge `link`, then its rules (a bridge never
    /// exists without them). The caller checked it has no port, under its
    /// tenant's lock.
    fn remove_bridge_and_rules(&self, link: &LinkMessage) -> Result<(), SdnError> {
        let bridge = Self::bridge_name_of(link);
        self.rtnl.block_on(async {
            del_link(self.rtnl.node(), link.header.index)
                .await
                .map_err(|e| SdnError::netlink(format!("delete {bridge}"), e))
        })?;
        self.remove_rules(&bridge)
    }

    fn bridge_name_of(l: &LinkMessage) -> String {
        l.attributes
            .iter()
            .find_map(|a| match a {
                rtnetlink::packet_route::link::LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    fn the_bridge(&self, tenant: &str) -> Result<(String, LinkMessage), SdnError> {
        self.rtnl
            .block_on(self.find_bridge(tenant))?
            .map(|l| (Self::bridge_name_of(&l), l))
            .ok_or_else(|| SdnError::Missing {
                resource: format!(
                    "bridge {} (or a fallback name) of tenant {tenant:?}",
                    super::bridge_name(tenant)
                ),
            })
    }

    /// Removes `bridge`'s chains and map elements, if any.
    fn remove_rules(&self, bridge: &str) -> Result<(), SdnError> {
        let listing = nft::list(&self.opts.nft)?;
        // Host links still pointing at the tenant's service chain (pods whose
        // DEL is under way), tolerating their own DEL deleting them first.
        let svc: Vec<nftnl::Elem> = nft::svc_from_hosts(&listing, bridge)
            .iter()
            .map(|h| nftnl::Elem {
                family: nftnl::Family::Inet,
                table: nft::TABLE.to_owned(),
                set: nft::SVC_FROM.to_owned(),
                key: nftnl::key_ifname(h),
                jump: None,
            })
            .collect();
        nftnl::delete_elems(&svc).map_err(|e| nl_io("delete service elements", e))?;
        if let Some(script) = nft::remove_script(&listing, bridge) {
            nft::run(
                &self.opts.nft,
                &["-f", "-"],
                Some(&script),
                "remove tenant rules",
            )?;
        }
        Ok(())
    }

    fn sysctl_path(bridge: &str, key: &str) -> PathBuf {
        PathBuf::from(format!("/proc/sys/net/ipv4/conf/{bridge}/{key}"))
    }

    fn set_bridge_sysctls(bridge: &str) -> Result<(), SdnError> {
        for (k, v) in BRIDGE_SYSCTLS {
            let p = Self::sysctl_path(bridge, k);
            std::fs::write(&p, v).map_err(|source| {
                SdnError::Runtime(NetnsError::Sysctl {
                    key: p.display().to_string(),
                    source,
                })
            })?;
        }
        Ok(())
    }

    fn rules(
        &self,
        tenant: &str,
        bridge: &str,
        gws: &[IpNet],
        subnets: &[(IpNet, IpAddr)],
    ) -> String {
        nft::ensure_script(&TenantRules {
            bridge,
            gateways: &gws.iter().map(IpNet::addr).collect::<Vec<_>>(),
            subnets: &subnets.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            masquerade: self.opts.masquerade,
            services: self.opts.services,
            shared: self.opts.shared_tenants.iter().any(|t| t == tenant),
        })
    }

    /// Every guard element of `host_ifname` now in the kernel, per set.
    fn guard_elems_of(&self, host_ifname: &str) -> Result<Vec<nftnl::Elem>, SdnError> {
        let mut out = Vec::new();
        for (family, set) in GUARD_SETS {
            for key in nftnl::dump_elems(family, nft::TABLE, set)
                .map_err(|e| nl_io(&format!("list set {set}"), e))?
            {
                if nftnl::key_ifname_of(&key) == Some(host_ifname) {
                    out.push(nftnl::Elem {
                        family,
                        table: nft::TABLE.to_owned(),
                        set: set.to_owned(),
                        key,
                        jump: None,
                    });
                }
            }
        }
        Ok(out)
    }
}

impl Sdn for LinuxSdn {
    fn ensure_tenant(
        &self,
        tenant: &str,
        subnets: &[(IpNet, IpAddr)],
    ) -> Result<TenantNet, SdnError> {
        check_tenant_id(tenant)?;
        let gws = gateways(subnets)?;
        debug!(%tenant, "ensure tenant");
        // The bridge first (its name depends on which names are free), then
        // its rules, then its gateway addresses: from the moment the node
        // answers on a gateway, the isolation rules are in place.
        let (mut link, fresh) = self.rtnl.block_on(async {
            match self.find_bridge(tenant).await? {
                Some(l) => Ok((l, false)),
                None => self.claim_bridge(tenant).await,
            }
        })?;
        let mut bridge = Self::bridge_name_of(&link);
        let mut script = self.rules(tenant, &bridge, &gws, subnets);
        // The bridge's alias carries a stamp of the script that last
        // installed its rules. When the stamp matches and the tenant's chain
        // is in the kernel, the rules are in place and the `nft` fork+exec
        // (milliseconds, the most expensive step of a later pod's ADD) is
        // skipped. Anything else, a new tenant, other gateways, another
        // setting, a flushed table, takes the full path. Damage inside a
        // surviving chain (a deleted map element) is what CHECK reports;
        // changing the bridge's alias forces a reinstall.
        let stamp =
            |script: &str| hex::encode(sha2::Sha256::digest(script.as_bytes()))[..24].to_owned();
        let mut alias = bridge_alias(tenant, Some(&stamp(&script)));
        let current = !fresh
            && link_alias(&link) == Some(alias.as_str())
            && nftnl::chain_exists(nft::TABLE, &fwd_chain(&bridge)).unwrap_or(false);
        // Rules were installed once (a stamp, not the `-` of a bridge being
        // created: a concurrent ensure of the same tenant may be there).
        let stamped = link_alias(&link)
            .and_then(|a| a.split(':').nth(1))
            .is_some_and(|s| s != "-");
        if !current && stamped && self.rtnl.block_on(self.ports(link.header.index))? == 0 {
            // An idle network (kept when its last pod left) whose rules or
            // gateways are not these: its subnet was given back and carved
            // anew, or a setting changed. Start afresh rather than rewrite
            // it, so no map element of its old gateways or subnets stays.
            // The caller's tenant lock keeps an ADD of this tenant from
            // being between its ensure and attach meanwhile.
            info!(%tenant, %bridge, "replacing an idle tenant network with other settings");
            self.remove_bridge_and_rules(&link)?;
            (link, _) = self.rtnl.block_on(self.claim_bridge(tenant))?;
            bridge = Self::bridge_name_of(&link);
            script = self.rules(tenant, &bridge, &gws, subnets);
            alias = bridge_alias(tenant, Some(&stamp(&script)));
        }
        let index = link.header.index;
        self.point("ensure-tenant:bridge")?;
        if current {
            debug!(%bridge, "tenant rules current; nft skipped");
        } else {
            // Another tenant's idle network on an overlapping subnet goes
            // first: its gateway and map elements would clash with ours.
            let nets: Vec<IpNet> = subnets.iter().map(|(n, _)| *n).collect();
            self.clear_overlaps(tenant, &nets)?;
            nft::run(
                &self.opts.nft,
                &["-f", "-"],
                Some(&script),
                "ensure tenant rules",
            )?;
            Self::set_bridge_sysctls(&bridge)?;
        }
        self.point("ensure-tenant:rules")?;
        let node = self.rtnl.node();
        self.rtnl.block_on(async {
            set_up(node, index)
                .await
                .map_err(|e| SdnError::netlink(format!("set {bridge} up"), e))?;
            self.point("ensure-tenant:gateway")?;
            for g in &gws {
                add_addr(node, index, *g)
                    .await
                    .map_err(|e| SdnError::netlink(format!("add gateway {g} to {bridge}"), e))?;
            }
            if !current {
                node.link()
                    .set(
                        LinkUnspec::new_with_index(index)
                            .alias(alias.clone())
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(|e| SdnError::netlink(format!("stamp {bridge}"), e))?;
            }
            Ok(TenantNet {
                bridge: bridge.clone(),
                ifindex: Some(index),
                gateways: gws.clone(),
            })
        })
    }

    fn attach(&self, tenant: &str, port: &PortSpec) -> Result<(), SdnError> {
        check_tenant_id(tenant)?;
        let host_ifname = port.host_ifname.as_str();
        let alias = port.annotation(super::HOST_ALIAS);
        let (bridge, b) = self.the_bridge(tenant)?;
        let node = self.rtnl.node();
        self.rtnl.block_on(async {
            let link = link_by_name(node, host_ifname)
                .await
                .map_err(|e| SdnError::netlink(format!("get {host_ifname}"), e))?
                .ok_or_else(|| SdnError::Missing {
                    resource: format!("host interface {host_ifname}"),
                })?;
            let bidx = b.header.index;
            let controller = link_controller(&link);
            let alias_stale = alias.is_some_and(|a| link_alias(&link) != Some(a));
            if controller != Some(bidx) || alias_stale {
                if controller.is_some_and(|c| c != bidx) {
                    warn!(%host_ifname, %bridge, "moving a port from another bridge");
                }
                // One request: the controller and the operator-visible
                // alias (a plan annotation) together.
                let mut set = LinkUnspec::new_with_index(link.header.index).controller(bidx);
                if let Some(a) = alias {
                    set = set.alias(a.to_string());
                }
                node.link().set(set.build()).execute().await.map_err(|e| {
                    SdnError::netlink(format!("attach {host_ifname} to {bridge}"), e)
                })?;
            }
            set_up(node, link.header.index)
                .await
                .map_err(|e| SdnError::netlink(format!("set {host_ifname} up"), e))
        })
    }

    fn detach(
        &self,
        _tenant: &str,
        _key: &AttachmentKey,
        host_ifname: &str,
    ) -> Result<(), SdnError> {
        let node = self.rtnl.node();
        self.rtnl.block_on(async {
            let Some(port) = link_by_name(node, host_ifname)
                .await
                .map_err(|e| SdnError::netlink(format!("get {host_ifname}"), e))?
            else {
                return Ok(());
            };
            if link_controller(&port).is_none() {
                return Ok(());
            }
            match node
                .link()
                .set(
                    LinkUnspec::new_with_index(port.header.index)
                        .nocontroller()
                        .build(),
                )
                .execute()
                .await
            {
                Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
                r => r.map_err(|e| SdnError::netlink(format!("detach {host_ifname}"), e)),
            }
        })
    }

    fn remove_tenant_if_unused(&self, tenant: &str) -> Result<bool, SdnError> {
        check_tenant_id(tenant)?;
        let found = self.rtnl.block_on(self.find_bridge(tenant))?;
        if let Some(b) = found {
            let bridge = Self::bridge_name_of(&b);
            let ports = self.rtnl.block_on(self.ports(b.header.index))?;
            if ports > 0 {
                debug!(%tenant, %bridge, ports, "tenant still in use");
                return Ok(false);
            }
            self.remove_bridge_and_rules(&b)?;
            info!(%tenant, %bridge, "deleted tenant bridge");
            return Ok(true);
        }
        // No bridge: rules a removal killed between the bridge and its rules
        // left, under a name of this tenant whose bridge is gone. Checked
        // under the name lock, so a tenant creating that bridge right now
        // is not robbed of the rules it is about to install.
        for name in bridge_candidates(tenant) {
            if !nftnl::chain_exists(nft::TABLE, &fwd_chain(&name)).unwrap_or(true) {
                continue;
            }
            let _lock = self.name_lock(&name)?;
            if self.rtnl.block_on(self.link(&name))?.is_none() {
                info!(%tenant, bridge = %name, "removing the rules of a bridge that is gone");
                self.remove_rules(&name)?;
            }
        }
        Ok(true)
    }

    fn keeps_idle_tenants(&self) -> bool {
        self.opts.keep_idle_tenants
    }

    fn reap_idle_tenants(&self) -> Result<Vec<String>, SdnError> {
        let idle = self.rtnl.block_on(self.tenant_bridges())?;
        let mut removed = Vec::new();
        let mut first_err = None;
        for b in idle.into_iter().filter(|b| b.ports == 0) {
            // A held tenant lock is an ADD or DEL of that tenant under way:
            // its network is about to be used, so it is not waited for.
            match self.remove_idle(&b, None, None, std::time::Duration::ZERO) {
                Ok(Idle::Removed) => removed.push(b.name),
                Ok(_) => {}
                Err(SdnError::Busy(_)) => {
                    debug!(bridge = %b.name, "tenant busy; idle network kept")
                }
                Err(e) => {
                    warn!(bridge = %b.name, error = %e, "could not remove an idle tenant network");
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    fn check_tenant(&self, tenant: &str, subnets: &[(IpNet, IpAddr)]) -> Result<(), SdnError> {
        check_tenant_id(tenant)?;
        let gws = gateways(subnets)?;
        let missing = |resource: String| SdnError::Missing { resource };
        let (bridge, b) = self.the_bridge(tenant)?;
        if !link_is_up(&b) {
            return Err(SdnError::Missing {
                resource: format!("bridge {bridge} is down; the bridge up state"),
            });
        }
        let have = self.rtnl.block_on(async {
            link_addrs(self.rtnl.node(), b.header.index)
                .await
                .map_err(|e| SdnError::netlink(format!("list addresses of {bridge}"), e))
        })?;
        for g in &gws {
            if !have.contains(g) {
                return Err(missing(format!("gateway address {g} on bridge {bridge}")));
            }
        }
        for (k, v) in BRIDGE_SYSCTLS {
            let p = Self::sysctl_path(&bridge, k);
            let now = std::fs::read_to_string(&p).unwrap_or_default();
            if now.trim() != v {
                return Err(missing(format!(
                    "{k} = {v} on bridge {bridge} (it is {:?})",
                    now.trim()
                )));
            }
        }
        let l = nft::list(&self.opts.nft)?;
        for c in nft::tenant_chains(&bridge) {
            if !l.chains.contains(&c) {
                return Err(missing(format!("nft chain inet {} {c}", nft::TABLE)));
            }
        }
        if !l.has_elem("fwd_from", &format!("\"{bridge}\""), &fwd_chain(&bridge)) {
            return Err(missing(format!("nft element fwd_from[{bridge}]")));
        }
        let shared = self.opts.shared_tenants.iter().any(|t| t == tenant);
        if shared && !l.has_key(nft::SVC_SHARED, &format!("\"{bridge}\"")) {
            return Err(missing(format!(
                "nft element {}[{bridge}]",
                nft::SVC_SHARED
            )));
        }
        for g in &gws {
            let map = if g.addr().is_ipv4() { "gw4" } else { "gw6" };
            if !l.has_elem(map, &g.addr().to_string(), &gw_chain(&bridge)) {
                return Err(missing(format!("nft element {map}[{}]", g.addr())));
            }
        }
        for (n, _) in subnets {
            let map = if n.addr().is_ipv4() { "masq4" } else { "masq6" };
            let key = n.trunc();
            // nft prints a single-address interval without a prefix.
            let keys = [key.to_string(), key.addr().to_string()];
            if !keys.iter().any(|k| l.has_elem(map, k, &nat_chain(&bridge))) {
                return Err(missing(format!("nft element {map}[{key}]")));
            }
        }
        if self.opts.masquerade != l.masquerading.contains(&nat_chain(&bridge)) {
            return Err(missing(format!(
                "nft chain {} in the expected state (masquerade {})",
                nat_chain(&bridge),
                if self.opts.masquerade { "on" } else { "off" }
            )));
        }
        Ok(())
    }

    fn check_port(&self, tenant: &str, port: &PortSpec) -> Result<(), SdnError> {
        check_tenant_id(tenant)?;
        let host_ifname = port.host_ifname.as_str();
        let (bridge, b) = self.the_bridge(tenant)?;
        self.rtnl.block_on(async {
            let l = link_by_name(self.rtnl.node(), host_ifname)
                .await
                .map_err(|e| SdnError::netlink(format!("get {host_ifname}"), e))?
                .ok_or_else(|| SdnError::Missing {
                    resource: format!("host interface {host_ifname} of {}", port.key),
                })?;
            if link_controller(&l) != Some(b.header.index) {
                return Err(SdnError::Missing {
                    resource: format!("port {host_ifname} on bridge {bridge}"),
                });
            }
            if !link_is_up(&l) {
                return Err(SdnError::Missing {
                    resource: format!("host interface {host_ifname} is down; its up state"),
                });
            }
            if let Some(a) = port.annotation(super::HOST_ALIAS)
                && link_alias(&l) != Some(a)
            {
                return Err(SdnError::Missing {
                    resource: format!(
                        "alias {a:?} of host interface {host_ifname} (plan annotation {})",
                        super::HOST_ALIAS
                    ),
                });
            }
            Ok(())
        })
    }

    fn status(&self) -> Result<(), SdnError> {
        // A dry run of the skeleton: nft is there, speaks to the kernel, and
        // the kernel has the hooks and expressions the ruleset needs.
        nft::run(
            &self.opts.nft,
            &["-c", "-f", "-"],
            Some(&nft::base_script(self.opts.services)),
            "check",
        )
        .map(drop)
        .map_err(|e| match e {
            SdnError::Nft { stderr, .. } => SdnError::NftUnavailable(stderr),
            e => e,
        })
    }

    fn guard_port(&self, g: &PortGuard) -> Result<(), SdnError> {
        let elems = guard::elems(g);
        debug!(port = %g.host_ifname, n = elems.len(), "guard port");
        match nftnl::apply_elems(&elems, true) {
            // A node whose tables do not exist yet (its first pod has only
            // a host link): install the base ruleset, then the elements.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                nft::run(
                    &self.opts.nft,
                    &["-f", "-"],
                    Some(&nft::base_script(self.opts.services)),
                    "install the base rules",
                )?;
                nftnl::apply_elems(&elems, true).map_err(|e| nl_io("add guard elements", e))
            }
            r => r.map_err(|e| nl_io("add guard elements", e)),
        }
    }

    fn unguard_port(&self, host_ifname: &str) -> Result<(), SdnError> {
        let elems = self.guard_elems_of(host_ifname)?;
        if !elems.is_empty() {
            debug!(port = %host_ifname, n = elems.len(), "unguard port");
        }
        nftnl::delete_elems(&elems).map_err(|e| nl_io("delete guard elements", e))
    }

    fn check_guard(&self, g: &PortGuard) -> Result<(), SdnError> {
        let have = self.guard_elems_of(&g.host_ifname)?;
        let want = guard::elems(g);
        let describe = |e: &nftnl::Elem| {
            format!(
                "guard element {} {} {} of {}",
                match e.family {
                    nftnl::Family::Inet => "inet",
                    nftnl::Family::Bridge => "bridge",
                },
                e.table,
                e.set,
                g.host_ifname
            )
        };
        for w in &want {
            if !have
                .iter()
                .any(|h| h.family == w.family && h.set == w.set && h.key == w.key)
            {
                return Err(SdnError::Missing {
                    resource: describe(w),
                });
            }
        }
        if let Some(extra) = have.iter().find(|h| {
            !want
                .iter()
                .any(|w| h.family == w.family && h.set == w.set && h.key == w.key)
        }) {
            return Err(SdnError::Conflict(format!(
                "an extra {} lets the port send from a source its attachment does not own",
                describe(extra)
            )));
        }
        Ok(())
    }

    fn set_failpoints(&self, failpoints: &Failpoints) {
        *self.failpoints.lock().unwrap_or_else(|e| e.into_inner()) = failpoints.clone();
    }
}
