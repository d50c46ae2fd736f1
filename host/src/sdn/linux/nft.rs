//! nftables scripts for tenant isolation (pure builders, unit-tested) and the
//! `nft` child process that applies them. See the module docs of
//! [`super`] (the Linux backend) for the ruleset's design.
//!
//! Only values tenet derives itself reach a script: bridge names (`tb-` + hex)
//! and addresses formatted from parsed `IpAddr`/`IpNet`; tenant ids never do.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use serde_json::Value;

use crate::sdn::SdnError;

/// The tables tenet owns: `inet tenet` (forwarding, the node's gateways,
/// host-link guards) and `bridge tenet` (bridge-port guards).
pub const TABLE: &str = "tenet";

pub(crate) fn fwd_chain(bridge: &str) -> String {
    format!("fwd-{bridge}")
}
pub(crate) fn gw_chain(bridge: &str) -> String {
    format!("gw-{bridge}")
}
pub(crate) fn nat_chain(bridge: &str) -> String {
    format!("nat-{bridge}")
}
pub(crate) fn svc_chain(bridge: &str) -> String {
    format!("svc-{bridge}")
}

/// Every chain of one tenant, by its bridge.
pub(crate) fn tenant_chains(bridge: &str) -> [String; 4] {
    [
        fwd_chain(bridge),
        gw_chain(bridge),
        nat_chain(bridge),
        svc_chain(bridge),
    ]
}

/// The set of shared tenants' bridges (service endpoints every tenant may
/// reach when services are restricted to the same tenant).
pub(crate) const SVC_SHARED: &str = "svc_shared";
/// The verdict map from a host link to its tenant's service chain.
pub(crate) const SVC_FROM: &str = "svc_from";
/// The chain a host link of a pod without a tenant bridge jumps to: shared
/// tenants only.
pub(crate) const SVC_NONE: &str = "svc-none";

/// Which tenants' pods a pod may reach through a service (traffic the node
/// DNATed, as kube-proxy does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServiceScope {
    /// Endpoints in any tenant: the service layer and NetworkPolicy decide.
    #[default]
    Any,
    /// Endpoints of the client's own tenant and of the shared tenants only.
    SameTenant,
}

/// The table, its sets, maps and base chains, declared (idempotent in
/// `nft -f`), with `extra_chains` declared in the same block. nft 1.0.6
/// cannot add an element to an interval map that jumps to a chain created by
/// a separate `add chain` in the same batch; declaring the chain in the
/// block works.
fn declare(extra_chains: &[String], services: ServiceScope) -> String {
    let mut s = format!(
        "table inet {TABLE} {{\n\
         \tmap fwd_from {{ type ifname : verdict; }}\n\
         \tmap gw4 {{ type ipv4_addr : verdict; }}\n\
         \tmap gw6 {{ type ipv6_addr : verdict; }}\n\
         \tmap masq4 {{ type ipv4_addr : verdict; flags interval; }}\n\
         \tmap masq6 {{ type ipv6_addr : verdict; flags interval; }}\n\
         \tmap {SVC_FROM} {{ type ifname : verdict; }}\n\
         \tset {SVC_SHARED} {{ type ifname; }}\n\
         \tset port_v4 {{ type ifname . ipv4_addr; }}\n\
         \tset port_v6 {{ type ifname . ipv6_addr; }}\n\
         \tchain prerouting {{ type filter hook prerouting priority raw; policy accept; }}\n\
         \tchain port_guard {{ comment \"what a pod port may send\"; }}\n\
         \tchain {SVC_NONE} {{ comment \"services of a pod without a tenant bridge\"; }}\n\
         \tchain forward {{ type filter hook forward priority filter; policy accept; }}\n\
         \tchain input {{ type filter hook input priority filter; policy accept; }}\n\
         \tchain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
    );
    for c in extra_chains {
        let _ = writeln!(s, "\tchain {c} {{ comment \"tenet tenant rules\"; }}");
    }
    s.push_str(
        "}\n\
         table bridge tenet {\n\
         \tset port_mac { type ifname . ether_addr; }\n\
         \tset port_v4 { type ifname . ipv4_addr; }\n\
         \tset port_v6 { type ifname . ipv6_addr; }\n\
         \tchain prerouting { type filter hook prerouting priority -300; policy accept; }\n\
         \tchain port_guard { comment \"what a pod port may send onto its bridge\"; }\n\
         \tchain arp_guard { comment \"what ARP a pod port may send\"; }\n\
         }\n",
    );
    // The base chains' rules are fixed; rewriting them in every transaction
    // keeps them exactly once even when two processes race.
    let t = TABLE;
    let from_link = match services {
        ServiceScope::Any => "accept".to_owned(),
        ServiceScope::SameTenant => format!("iifname vmap @{SVC_FROM}"),
    };
    let _ = write!(
        s,
        "flush chain inet {t} prerouting\n\
         add rule inet {t} prerouting iifname \"tn*\" jump port_guard\n\
         flush chain inet {t} port_guard\n\
         add rule inet {t} port_guard icmp type redirect drop comment \"pods are not routers\"\n\
         add rule inet {t} port_guard icmpv6 type {{ nd-router-advert, nd-redirect }} drop comment \"pods are not routers\"\n\
         add rule inet {t} port_guard meta nfproto ipv4 iifname . ip saddr @port_v4 accept\n\
         add rule inet {t} port_guard meta nfproto ipv6 iifname . ip6 saddr @port_v6 accept\n\
         add rule inet {t} port_guard ip6 saddr :: icmpv6 type nd-neighbor-solicit accept comment \"duplicate address detection\"\n\
         add rule inet {t} port_guard drop comment \"a source the port does not own\"\n\
         flush chain inet {t} {SVC_NONE}\n\
         add rule inet {t} {SVC_NONE} oifname @{SVC_SHARED} accept\n\
         flush chain inet {t} forward\n\
         add rule inet {t} forward iifname vmap @fwd_from\n\
         add rule inet {t} forward iifname \"tb-*\" drop comment \"a tenant bridge without rules forwards nothing\"\n\
         add rule inet {t} forward iifname \"tn*\" oifname \"tb-*\" ct status dnat ct direction original {from_link} comment \"services (kube-proxy DNAT)\"\n\
         add rule inet {t} forward iifname \"tn*\" oifname {{ \"tb-*\", \"tn*\" }} drop comment \"a host link reaches no tenant and no other host link\"\n\
         add rule inet {t} forward oifname \"tn*\" ct state established,related accept comment \"replies to what the pod started\"\n\
         add rule inet {t} forward oifname \"tn*\" drop comment \"nothing else is forwarded into a host link\"\n\
         flush chain inet {t} input\n\
         add rule inet {t} input ip daddr vmap @gw4\n\
         add rule inet {t} input ip6 daddr vmap @gw6\n\
         flush chain inet {t} postrouting\n\
         add rule inet {t} postrouting ip saddr vmap @masq4\n\
         add rule inet {t} postrouting ip6 saddr vmap @masq6\n\
         flush chain bridge {t} prerouting\n\
         add rule bridge {t} prerouting iifname \"tn*\" jump port_guard\n\
         flush chain bridge {t} port_guard\n\
         add rule bridge {t} port_guard iifname . ether saddr != @port_mac drop comment \"a MAC the port does not own\"\n\
         add rule bridge {t} port_guard ether type arp jump arp_guard\n\
         add rule bridge {t} port_guard icmp type redirect drop comment \"pods are not routers\"\n\
         add rule bridge {t} port_guard icmpv6 type {{ nd-router-advert, nd-redirect }} drop comment \"pods are not routers\"\n\
         add rule bridge {t} port_guard ether type ip iifname . ip saddr @port_v4 accept\n\
         add rule bridge {t} port_guard ether type ip6 iifname . ip6 saddr @port_v6 accept\n\
         add rule bridge {t} port_guard ether type ip6 ip6 saddr :: icmpv6 type nd-neighbor-solicit accept comment \"duplicate address detection\"\n\
         add rule bridge {t} port_guard drop comment \"other ethertypes (VLAN tags included) and sources the port does not own\"\n\
         flush chain bridge {t} arp_guard\n\
         add rule bridge {t} arp_guard arp htype != 1 drop\n\
         add rule bridge {t} arp_guard arp ptype != ip drop\n\
         add rule bridge {t} arp_guard arp hlen != 6 drop\n\
         add rule bridge {t} arp_guard arp plen != 4 drop\n\
         add rule bridge {t} arp_guard arp operation != {{ request, reply }} drop\n\
         add rule bridge {t} arp_guard iifname . arp saddr ether != @port_mac drop\n\
         add rule bridge {t} arp_guard arp saddr ip 0.0.0.0 accept comment \"address probes\"\n\
         add rule bridge {t} arp_guard iifname . arp saddr ip @port_v4 accept\n\
         add rule bridge {t} arp_guard drop\n"
    );
    s
}

/// The skeleton alone: what STATUS checks with `nft -c`.
pub(crate) fn base_script(services: ServiceScope) -> String {
    declare(&[], services)
}

/// What one tenant's rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TenantRules<'a> {
    /// The tenant's bridge.
    pub bridge: &'a str,
    /// Gateway addresses on the bridge.
    pub gateways: &'a [IpAddr],
    /// The tenant's subnets.
    pub subnets: &'a [IpNet],
    /// Masquerade what leaves the node.
    pub masquerade: bool,
    /// Which service endpoints pods may reach.
    pub services: ServiceScope,
    /// The tenant is one every tenant's pods may reach through a service.
    pub shared: bool,
}

/// One transaction installing (or refreshing) a tenant's rules.
pub(crate) fn ensure_script(r: &TenantRules<'_>) -> String {
    let bridge = r.bridge;
    let [fwd, gw, nat, svc] = tenant_chains(bridge);
    let t = TABLE;
    let mut s = declare(
        &[fwd.clone(), gw.clone(), nat.clone(), svc.clone()],
        r.services,
    );
    let to_other = match r.services {
        ServiceScope::Any => "accept".to_owned(),
        ServiceScope::SameTenant => format!("jump {svc}"),
    };
    let _ = write!(
        s,
        "flush chain inet {t} {fwd}\n\
         add rule inet {t} {fwd} oifname \"{bridge}\" accept\n\
         add rule inet {t} {fwd} oifname {{ \"tb-*\", \"tn*\" }} ct status dnat ct direction reply accept comment \"service replies\"\n\
         add rule inet {t} {fwd} oifname \"tb-*\" ct status dnat ct direction original {to_other} comment \"services (kube-proxy DNAT)\"\n\
         add rule inet {t} {fwd} oifname {{ \"tb-*\", \"tn*\" }} drop\n\
         add rule inet {t} {fwd} accept\n\
         flush chain inet {t} {gw}\n\
         add rule inet {t} {gw} iifname \"{bridge}\" accept\n\
         add rule inet {t} {gw} iifname {{ \"tb-*\", \"tn*\" }} drop\n\
         flush chain inet {t} {svc}\n\
         add rule inet {t} {svc} oifname \"{bridge}\" accept\n\
         add rule inet {t} {svc} oifname @{SVC_SHARED} accept\n\
         flush chain inet {t} {nat}\n"
    );
    if r.masquerade {
        let _ = writeln!(
            s,
            "add rule inet {t} {nat} oifname != \"tb-*\" oifname != \"tn*\" masquerade"
        );
    }
    let _ = writeln!(
        s,
        "add element inet {t} fwd_from {{ \"{bridge}\" : jump {fwd} }}"
    );
    if r.shared {
        let _ = writeln!(s, "add element inet {t} {SVC_SHARED} {{ \"{bridge}\" }}");
    }
    for g in r.gateways {
        let map = if g.is_ipv4() { "gw4" } else { "gw6" };
        let _ = writeln!(s, "add element inet {t} {map} {{ {g} : jump {gw} }}");
    }
    for n in r.subnets {
        let map = if n.addr().is_ipv4() { "masq4" } else { "masq6" };
        let _ = writeln!(
            s,
            "add element inet {t} {map} {{ {} : jump {nat} }}",
            n.trunc()
        );
    }
    s
}

/// One element of a verdict map in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Elem {
    pub map: String,
    /// As nft prints it: `"tb-x"` (quoted ifname), `10.1.0.1`, `10.1.0.0/24`.
    pub key: String,
    /// The chain it jumps to or goes to.
    pub target: Option<String>,
}

/// What `nft -j list table inet tenet` shows, reduced to what tenet needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    pub chains: BTreeSet<String>,
    pub elems: Vec<Elem>,
    /// Chains holding a masquerade rule (for CHECK).
    pub masquerading: BTreeSet<String>,
}

impl Listing {
    /// The chains that belong to `bridge`.
    pub fn tenant_chains(&self, bridge: &str) -> Vec<String> {
        tenant_chains(bridge)
            .into_iter()
            .filter(|c| self.chains.contains(c))
            .collect()
    }

    /// Elements that jump to one of `bridge`'s chains (host links' service
    /// elements included), and `bridge` in the shared tenants' set.
    pub fn tenant_elems(&self, bridge: &str) -> Vec<&Elem> {
        let mine = tenant_chains(bridge);
        let quoted = format!("\"{bridge}\"");
        self.elems
            .iter()
            .filter(|e| {
                e.target.as_ref().is_some_and(|t| mine.contains(t))
                    || (e.map == SVC_SHARED && e.key == quoted)
            })
            .collect()
    }

    /// True when `set` holds `key` (a plain set: no target).
    pub fn has_key(&self, set: &str, key: &str) -> bool {
        self.elems.iter().any(|e| e.map == set && e.key == key)
    }

    /// True when `map` has `key` jumping to `target`.
    pub fn has_elem(&self, map: &str, key: &str, target: &str) -> bool {
        self.elems
            .iter()
            .any(|e| e.map == map && e.key == key && e.target.as_deref() == Some(target))
    }
}

fn elem_key(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                Some(format!(
                    "{}/{}",
                    p.get("addr")?.as_str()?,
                    p.get("len")?.as_u64()?
                ))
            } else if let Some(r) = o.get("range") {
                let r = r.as_array()?;
                Some(format!("{}-{}", r.first()?.as_str()?, r.get(1)?.as_str()?))
            } else {
                None
            }
        }
        _ => None,
    }
}

fn elem_target(v: &Value) -> Option<String> {
    let o = v.as_object()?;
    o.get("jump")
        .or_else(|| o.get("goto"))?
        .get("target")?
        .as_str()
        .map(str::to_owned)
}

/// Parses a JSON listing of the table.
pub(crate) fn parse_listing(json: &str) -> Result<Listing, SdnError> {
    let v: Value = serde_json::from_str(json).map_err(|e| SdnError::Nft {
        op: "parse listing".into(),
        stderr: e.to_string(),
    })?;
    let mut out = Listing::default();
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for item in items {
        if let Some(c) = item.get("chain") {
            if c.get("table").and_then(Value::as_str) == Some(TABLE)
                && let Some(n) = c.get("name").and_then(Value::as_str)
            {
                out.chains.insert(n.to_owned());
            }
        } else if let Some(m) = item.get("map").or_else(|| item.get("set")) {
            // Only the inet table's maps and sets: the bridge table's guard
            // sets are read over netlink (see `nftnl`).
            if m.get("family")
                .and_then(Value::as_str)
                .is_some_and(|f| f != "inet")
            {
                continue;
            }
            let Some(name) = m.get("name").and_then(Value::as_str) else {
                continue;
            };
            let is_map = item.get("map").is_some();
            let quoted = m.get("type").and_then(Value::as_str) == Some("ifname");
            for e in m
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                // A map element is [key, value]; a set element is the key.
                let (k, val) = match e.as_array() {
                    Some(pair) if is_map => match (pair.first(), pair.get(1)) {
                        (Some(k), Some(v)) => (k, Some(v)),
                        _ => continue,
                    },
                    _ if is_map => continue,
                    _ => (e, None),
                };
                // Elements with a comment or timeout are wrapped in {"elem": {"val": ..}}.
                let k = k.get("elem").and_then(|x| x.get("val")).unwrap_or(k);
                let Some(key) = elem_key(k) else { continue };
                out.elems.push(Elem {
                    map: name.to_owned(),
                    key: if quoted { format!("\"{key}\"") } else { key },
                    target: val.and_then(elem_target),
                });
            }
        } else if let Some(r) = item.get("rule") {
            let chain = r.get("chain").and_then(Value::as_str).unwrap_or_default();
            let masq = r
                .get("expr")
                .and_then(Value::as_array)
                .is_some_and(|es| es.iter().any(|e| e.get("masquerade").is_some()));
            if masq {
                out.masquerading.insert(chain.to_owned());
            }
        }
    }
    Ok(out)
}

/// One transaction removing `bridge`'s elements and chains, or `None` when
/// nothing of it is left.
///
/// Host links' `svc_from` elements are left out: their pods' DELs delete them
/// concurrently (not under the tenant lock), so the caller deletes them
/// first, tolerating those already gone (see [`svc_from_hosts`]).
pub(crate) fn remove_script(listing: &Listing, bridge: &str) -> Option<String> {
    let elems: Vec<&Elem> = listing
        .tenant_elems(bridge)
        .into_iter()
        .filter(|e| e.map != SVC_FROM)
        .collect();
    let chains = listing.tenant_chains(bridge);
    if elems.is_empty() && chains.is_empty() {
        return None;
    }
    let mut s = String::new();
    // Elements first: a chain that a map element jumps to cannot be deleted.
    for e in elems {
        let _ = writeln!(s, "delete element inet {TABLE} {} {{ {} }}", e.map, e.key);
    }
    for c in chains {
        let _ = writeln!(s, "delete chain inet {TABLE} {c}");
    }
    Some(s)
}

/// The host links whose `svc_from` element jumps to `bridge`'s service
/// chain (their names, unquoted).
pub(crate) fn svc_from_hosts(listing: &Listing, bridge: &str) -> Vec<String> {
    let chain = svc_chain(bridge);
    listing
        .elems
        .iter()
        .filter(|e| e.map == SVC_FROM && e.target.as_deref() == Some(chain.as_str()))
        .map(|e| e.key.trim_matches('"').to_owned())
        .collect()
}

/// Runs `nft` with `args`, feeding `stdin`; returns stdout.
pub(crate) fn run(
    nft: &Path,
    args: &[&str],
    stdin: Option<&str>,
    op: &str,
) -> Result<String, SdnError> {
    let mut cmd = Command::new(nft);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| SdnError::NftUnavailable(format!("cannot run {}: {e}", nft.display())))?;
    if let Some(script) = stdin {
        tracing::trace!(%op, script, "nft script");
        let mut w = child.stdin.take().expect("piped");
        // A write error means nft exited early; its status and stderr say why.
        let _ = w.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| SdnError::Nft {
        op: op.into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(SdnError::Nft {
            op: op.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Lists tenet's table; an absent table is an empty listing.
pub(crate) fn list(nft: &Path) -> Result<Listing, SdnError> {
    match run(
        nft,
        &["-j", "list", "table", "inet", TABLE],
        None,
        "list table",
    ) {
        Ok(json) => parse_listing(&json),
        Err(SdnError::Nft { stderr, .. }) if stderr.contains("No such file or directory") => {
            Ok(Listing::default())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "tb-0123456789";

    fn rules<'a>(gws: &'a [IpAddr], subnets: &'a [IpNet], masquerade: bool) -> TenantRules<'a> {
        TenantRules {
            bridge: B,
            gateways: gws,
            subnets,
            masquerade,
            services: ServiceScope::Any,
            shared: false,
        }
    }

    #[test]
    fn ensure_script_declares_chains_and_jumps() {
        let gws = ["10.1.0.1".parse().unwrap(), "fd00:1::1".parse().unwrap()];
        let nets = [
            "10.1.0.5/24".parse().unwrap(),
            "fd00:1::/64".parse().unwrap(),
        ];
        let s = ensure_script(&rules(&gws, &nets, true));
        assert!(s.starts_with("table inet tenet {"));
        assert!(s.contains("\tchain fwd-tb-0123456789 {"));
        assert!(s.contains("\tchain nat-tb-0123456789 {"));
        assert!(s.contains(
            "add element inet tenet fwd_from { \"tb-0123456789\" : jump fwd-tb-0123456789 }"
        ));
        assert!(s.contains("add element inet tenet gw4 { 10.1.0.1 : jump gw-tb-0123456789 }"));
        assert!(s.contains("add element inet tenet gw6 { fd00:1::1 : jump gw-tb-0123456789 }"));
        // Host bits are dropped: interval keys must be network addresses.
        assert!(
            s.contains("add element inet tenet masq4 { 10.1.0.0/24 : jump nat-tb-0123456789 }")
        );
        assert!(s.contains("masquerade"));
        // The isolation rules.
        assert!(
            s.contains("add rule inet tenet fwd-tb-0123456789 oifname { \"tb-*\", \"tn*\" } drop")
        );
        assert!(
            s.contains("add rule inet tenet gw-tb-0123456789 iifname \"tb-0123456789\" accept")
        );
        assert!(s.contains("forward iifname \"tb-*\" drop"));
        // Host links: no forwarding between them, into bridges only DNATed.
        assert!(s.contains("forward iifname \"tn*\" oifname { \"tb-*\", \"tn*\" } drop"));
        assert!(s.contains("ct status dnat ct direction original accept"));
        assert!(s.contains(
            "add rule inet tenet fwd-tb-0123456789 oifname { \"tb-*\", \"tn*\" } ct status dnat ct direction reply accept"
        ));
        // The guards.
        assert!(
            s.contains("add rule bridge tenet port_guard iifname . ether saddr != @port_mac drop")
        );
        assert!(s.contains("add rule inet tenet prerouting iifname \"tn*\" jump port_guard"));
        assert!(!s.contains("svc_shared { \"tb-0123456789\" }"));
        let nets = ["10.1.0.0/24".parse().unwrap()];
        let off = ensure_script(&rules(&[], &nets, false));
        assert!(!off.contains("masquerade"));
        // The nat chain is still flushed, so turning the option off takes effect.
        assert!(off.contains("flush chain inet tenet nat-tb-0123456789"));
        // Restricted services: host links go through their tenant's chain,
        // bridges through their own; a shared tenant joins the set.
        let same = ensure_script(&TenantRules {
            services: ServiceScope::SameTenant,
            shared: true,
            ..rules(&[], &nets, false)
        });
        assert!(same.contains("ct status dnat ct direction original iifname vmap @svc_from"));
        assert!(same.contains("ct status dnat ct direction original jump svc-tb-0123456789"));
        assert!(same.contains("add element inet tenet svc_shared { \"tb-0123456789\" }"));
        assert!(same.contains("add rule inet tenet svc-tb-0123456789 oifname @svc_shared accept"));
    }

    const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
      {"table": {"family": "inet", "name": "tenet", "handle": 1}},
      {"map": {"family": "inet", "name": "fwd_from", "table": "tenet", "type": "ifname", "handle": 7, "map": "verdict",
        "elem": [["tb-0123456789", {"jump": {"target": "fwd-tb-0123456789"}}], ["tb-aaaaaaaaaa", {"jump": {"target": "fwd-tb-aaaaaaaaaa"}}]]}},
      {"map": {"family": "inet", "name": "gw4", "table": "tenet", "type": "ipv4_addr", "handle": 8, "map": "verdict",
        "elem": [["10.1.0.1", {"jump": {"target": "gw-tb-0123456789"}}]]}},
      {"map": {"family": "inet", "name": "masq4", "table": "tenet", "type": "ipv4_addr", "handle": 10, "map": "verdict", "flags": ["interval"],
        "elem": [[{"prefix": {"addr": "10.1.0.0", "len": 24}}, {"jump": {"target": "nat-tb-0123456789"}}]]}},
      {"chain": {"family": "inet", "table": "tenet", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
      {"chain": {"family": "inet", "table": "tenet", "name": "fwd-tb-0123456789", "handle": 4}},
      {"chain": {"family": "inet", "table": "tenet", "name": "gw-tb-0123456789", "handle": 5}},
      {"chain": {"family": "inet", "table": "tenet", "name": "nat-tb-0123456789", "handle": 6}},
      {"chain": {"family": "inet", "table": "tenet", "name": "fwd-tb-aaaaaaaaaa", "handle": 9}},
      {"chain": {"family": "inet", "table": "tenet", "name": "svc-tb-0123456789", "handle": 11}},
      {"set": {"family": "inet", "name": "svc_shared", "table": "tenet", "type": "ifname", "handle": 12,
        "elem": ["tb-0123456789", "tb-aaaaaaaaaa"]}},
      {"map": {"family": "inet", "name": "svc_from", "table": "tenet", "type": "ifname", "handle": 13, "map": "verdict",
        "elem": [["tn0123456789ab", {"jump": {"target": "svc-tb-0123456789"}}]]}},
      {"set": {"family": "bridge", "name": "port_v4", "table": "tenet", "type": ["ifname", "ipv4_addr"], "handle": 3,
        "elem": [{"concat": ["tn0123456789ab", "10.1.0.5"]}]}},
      {"rule": {"family": "inet", "table": "tenet", "chain": "nat-tb-0123456789", "handle": 20, "expr": [{"masquerade": null}]}}
    ]}"#;

    #[test]
    fn listing_is_parsed_and_removal_is_exact() {
        let l = parse_listing(LISTING).unwrap();
        assert!(l.has_elem("fwd_from", "\"tb-0123456789\"", "fwd-tb-0123456789"));
        assert!(l.has_elem("masq4", "10.1.0.0/24", "nat-tb-0123456789"));
        assert!(l.masquerading.contains("nat-tb-0123456789"));
        let s = remove_script(&l, B).unwrap();
        assert_eq!(
            s,
            "delete element inet tenet fwd_from { \"tb-0123456789\" }\n\
             delete element inet tenet gw4 { 10.1.0.1 }\n\
             delete element inet tenet masq4 { 10.1.0.0/24 }\n\
             delete element inet tenet svc_shared { \"tb-0123456789\" }\n\
             delete chain inet tenet fwd-tb-0123456789\n\
             delete chain inet tenet gw-tb-0123456789\n\
             delete chain inet tenet nat-tb-0123456789\n\
             delete chain inet tenet svc-tb-0123456789\n"
        );
        assert_eq!(svc_from_hosts(&l, B), ["tn0123456789ab"]);
        assert!(svc_from_hosts(&l, "tb-aaaaaaaaaa").is_empty());
        // The other tenant's objects are untouched.
        assert!(!s.contains("aaaaaaaaaa"));
        assert!(remove_script(&l, "tb-ffffffffff").is_none());
        assert!(remove_script(&Listing::default(), B).is_none());
    }

    #[test]
    fn garbage_listing_is_an_error() {
        assert!(parse_listing("not json").is_err());
        assert_eq!(parse_listing("{}").unwrap(), Listing::default());
    }

    #[test]
    fn missing_nft_is_unavailable() {
        let e = run(
            Path::new("/nonexistent/nft"),
            &["--version"],
            None,
            "version",
        )
        .unwrap_err();
        assert!(matches!(e, SdnError::NftUnavailable(_)));
        assert_eq!(e.cni_code(), crate::cni::codes::NOT_AVAILABLE);
    }
}
