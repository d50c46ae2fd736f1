//! The embedded SDN: a Linux bridge per tenant and nftables isolation.

use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::packet_route::link::InfoKind;
use rtnetlink::{LinkBridge, LinkUnspec};
use tracing::{debug, info, warn};

use super::nft::{self, gw_chain, nat_chain};
use super::{
    PortSpec, Sdn, SdnError, SdnOptions, TenantNet, bridge_mac, bridge_name, check_tenant_id,
    gateways,
};
use crate::ipam::AttachmentKey;
use crate::netns::rtnl::{
    Rtnl, add_addr, all_links, del_link, errno, link_addrs, link_by_name, link_controller,
    link_is_up, link_kind, set_up,
};

/// The Linux bridge + nftables backend. The node namespace is the one of the
/// thread that constructs it (netlink socket) and of the threads that call it
/// (`nft` runs as a child of the calling thread).
pub struct LinuxSdn {
    rtnl: Rtnl,
    opts: SdnOptions,
}

impl LinuxSdn {
    /// Opens the node's netlink socket. Must not be called from inside a
    /// tokio runtime.
    pub fn new(opts: SdnOptions) -> Result<Self, SdnError> {
        Ok(Self {
            rtnl: Rtnl::new()?,
            opts,
        })
    }

    /// The bridge of `tenant`, checked to be a bridge.
    async fn bridge(
        &self,
        bridge: &str,
    ) -> Result<Option<rtnetlink::packet_route::link::LinkMessage>, SdnError> {
        let l = link_by_name(self.rtnl.node(), bridge)
            .await
            .map_err(|e| SdnError::netlink(format!("get {bridge}"), e))?;
        if let Some(l) = &l
            && !matches!(link_kind(l), Some(InfoKind::Bridge))
        {
            return Err(SdnError::Conflict(format!(
                "{bridge} exists and is not a bridge"
            )));
        }
        Ok(l)
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
        let bridge = bridge_name(tenant);
        debug!(%tenant, %bridge, "ensure tenant");
        // Rules before addresses: from the moment the node answers on a
        // gateway, the isolation rules are in place.
        let script = nft::ensure_script(
            &bridge,
            &gws.iter().map(IpNet::addr).collect::<Vec<_>>(),
            &subnets.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            self.opts.masquerade,
        );
        nft::run(
            &self.opts.nft,
            &["-f", "-"],
            Some(&script),
            "ensure tenant rules",
        )?;
        let node = self.rtnl.node();
        self.rtnl.block_on(async {
            let link = match self.bridge(&bridge).await? {
                Some(l) => l,
                None => {
                    let msg = LinkBridge::new(&bridge)
                        .address(bridge_mac(tenant).0.to_vec())
                        .build();
                    match node.link().add(msg).execute().await {
                        Ok(()) => info!(%tenant, %bridge, "created tenant bridge"),
                        // A concurrent ADD of the same tenant made it first.
                        Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                        Err(e) => return Err(SdnError::netlink(format!("create {bridge}"), e)),
                    }
                    self.bridge(&bridge)
                        .await?
                        .ok_or_else(|| SdnError::Missing {
                            resource: format!("bridge {bridge} (deleted while being created)"),
                        })?
                }
            };
            let index = link.header.index;
            set_up(node, index)
                .await
                .map_err(|e| SdnError::netlink(format!("set {bridge} up"), e))?;
            for g in &gws {
                add_addr(node, index, *g)
                    .await
                    .map_err(|e| SdnError::netlink(format!("add gateway {g} to {bridge}"), e))?;
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
        let bridge = bridge_name(tenant);
        let node = self.rtnl.node();
        self.rtnl.block_on(async {
            let b = self
                .bridge(&bridge)
                .await?
                .ok_or_else(|| SdnError::Missing {
                    resource: format!("bridge {bridge} of tenant {tenant:?}"),
                })?;
            let port = link_by_name(node, host_ifname)
                .await
                .map_err(|e| SdnError::netlink(format!("get {host_ifname}"), e))?
                .ok_or_else(|| SdnError::Missing {
                    resource: format!("host interface {host_ifname}"),
                })?;
            let bidx = b.header.index;
            match link_controller(&port) {
                Some(c) if c == bidx => {}
                other => {
                    if other.is_some() {
                        warn!(%host_ifname, %bridge, "moving a port from another bridge");
                    }
                    node.link()
                        .set(
                            LinkUnspec::new_with_index(port.header.index)
                                .controller(bidx)
                                .build(),
                        )
                        .execute()
                        .await
                        .map_err(|e| {
                            SdnError::netlink(format!("attach {host_ifname} to {bridge}"), e)
                        })?;
                }
            }
            set_up(node, port.header.index)
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
        let bridge = bridge_name(tenant);
        let node = self.rtnl.node();
        let removed: bool = self.rtnl.block_on(async {
            let Some(b) = self.bridge(&bridge).await? else {
                return Ok(true);
            };
            let idx = b.header.index;
            let ports = all_links(node)
                .await
                .map_err(|e| SdnError::netlink("list links", e))?
                .iter()
                .filter(|l| link_controller(l) == Some(idx))
                .count();
            if ports > 0 {
                debug!(%tenant, %bridge, ports, "tenant still in use");
                return Ok(false);
            }
            del_link(node, idx)
                .await
                .map_err(|e| SdnError::netlink(format!("delete {bridge}"), e))?;
            info!(%tenant, %bridge, "deleted tenant bridge");
            Ok::<bool, SdnError>(true)
        })?;
        if !removed {
            return Ok(false);
        }
        // Rules after the bridge: a bridge never exists without them.
        let listing = nft::list(&self.opts.nft)?;
        if let Some(script) = nft::remove_script(&listing, &bridge) {
            nft::run(
                &self.opts.nft,
                &["-f", "-"],
                Some(&script),
                "remove tenant rules",
            )?;
        }
        Ok(true)
    }

    fn check_tenant(&self, tenant: &str, subnets: &[(IpNet, IpAddr)]) -> Result<(), SdnError> {
        check_tenant_id(tenant)?;
        let gws = gateways(subnets)?;
        let bridge = bridge_name(tenant);
        let missing = |resource: String| SdnError::Missing { resource };
        self.rtnl.block_on(async {
            let b = self
                .bridge(&bridge)
                .await?
                .ok_or_else(|| missing(format!("bridge {bridge} of tenant {tenant:?}")))?;
            if !link_is_up(&b) {
                return Err(SdnError::Missing {
                    resource: format!("bridge {bridge} is down; the bridge up state"),
                });
            }
            let have = link_addrs(self.rtnl.node(), b.header.index)
                .await
                .map_err(|e| SdnError::netlink(format!("list addresses of {bridge}"), e))?;
            for g in &gws {
                if !have.contains(g) {
                    return Err(missing(format!("gateway address {g} on bridge {bridge}")));
                }
            }
            Ok(())
        })?;
        let l = nft::list(&self.opts.nft)?;
        for c in [
            nft::fwd_chain(&bridge),
            gw_chain(&bridge),
            nat_chain(&bridge),
        ] {
            if !l.chains.contains(&c) {
                return Err(missing(format!("nft chain inet {} {c}", nft::TABLE)));
            }
        }
        if !l.has_elem(
            "fwd_from",
            &format!("\"{bridge}\""),
            &nft::fwd_chain(&bridge),
        ) {
            return Err(missing(format!("nft element fwd_from[{bridge}]")));
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
        let bridge = bridge_name(tenant);
        let host_ifname = port.host_ifname.as_str();
        self.rtnl.block_on(async {
            let b = self
                .bridge(&bridge)
                .await?
                .ok_or_else(|| SdnError::Missing {
                    resource: format!("bridge {bridge} of tenant {tenant:?}"),
                })?;
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
            Ok(())
        })
    }

    fn status(&self) -> Result<(), SdnError> {
        // A dry run of the skeleton: nft is there, speaks to the kernel, and
        // the kernel has the hooks and expressions the ruleset needs.
        nft::run(
            &self.opts.nft,
            &["-c", "-f", "-"],
            Some(&nft::base_script()),
            "check",
        )
        .map(drop)
        .map_err(|e| match e {
            SdnError::Nft { stderr, .. } => SdnError::NftUnavailable(stderr),
            e => e,
        })
    }
}
