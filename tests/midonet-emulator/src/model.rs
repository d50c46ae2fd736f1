//! The emulated NSDB: every object by type, the cascades MidoNet's storage
//! layer (ZOOM) runs on delete, and the JSON representations served on GET.
//!
//! Back-references (a router's ports, a chain's jump rules, a host's bound
//! ports) are computed from the forward references rather than stored, so
//! they can never disagree with them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;

use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Router {
    pub seq: u64,
    pub id: Uuid,
    pub tenant_id: Option<String>,
    pub name: Option<String>,
    pub admin_state_up: bool,
    pub inbound_filter_id: Option<Uuid>,
    pub outbound_filter_id: Option<Uuid>,
    pub as_number: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Bridge {
    pub seq: u64,
    pub id: Uuid,
    pub tenant_id: Option<String>,
    pub name: Option<String>,
    pub admin_state_up: bool,
    pub inbound_filter_id: Option<Uuid>,
    pub outbound_filter_id: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub enum PortKind {
    Router {
        network_address: Ipv4Addr,
        network_length: u8,
        port_address: Ipv4Addr,
        port_subnet: Vec<(Ipv4Addr, u8)>,
        port_mac: String,
        rtr_port_vni: Option<i64>,
    },
    Bridge {
        vlan_id: i64,
    },
}

#[derive(Debug, Clone)]
pub struct Port {
    pub seq: u64,
    pub id: Uuid,
    /// The router or bridge the port belongs to.
    pub device_id: Uuid,
    pub kind: PortKind,
    pub admin_state_up: bool,
    pub inbound_filter_id: Option<Uuid>,
    pub outbound_filter_id: Option<Uuid>,
    pub tunnel_key: u64,
    pub vif_id: Option<Uuid>,
    pub host_id: Option<Uuid>,
    pub interface_name: Option<String>,
    pub previous_host_id: Option<Uuid>,
    pub peer_id: Option<Uuid>,
}

impl Port {
    pub fn is_router_port(&self) -> bool {
        matches!(self.kind, PortKind::Router { .. })
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub seq: u64,
    pub id: Uuid,
    /// Set only when the route has no next-hop port (MidoNet stores a route
    /// either on its router or on its next-hop port).
    pub router_id: Option<Uuid>,
    pub next_hop_port: Option<Uuid>,
    pub attributes: Option<String>,
    pub dst: (Ipv4Addr, u8),
    pub src: (Ipv4Addr, u8),
    pub next_hop_gateway: Option<Ipv4Addr>,
    pub route_type: String,
    pub weight: i64,
    pub learned: bool,
}

#[derive(Debug, Clone)]
pub struct Chain {
    pub seq: u64,
    pub id: Uuid,
    pub tenant_id: Option<String>,
    pub name: Option<String>,
    /// Rules in evaluation order; positions are 1-based indexes into this.
    pub rule_ids: Vec<Uuid>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub seq: u64,
    pub id: Uuid,
    pub chain_id: Uuid,
    pub rule_type: String,
    pub jump_chain_id: Option<Uuid>,
    /// The validated, known fields of the rule as created (unknown
    /// properties dropped, defaults filled), without id/chainId/position.
    pub body: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub struct Host {
    pub seq: u64,
    pub id: Uuid,
    pub name: String,
    pub in_tunnel_zone: bool,
    pub alive: bool,
}

/// Every object of the emulated deployment.
#[derive(Debug, Default)]
pub struct Store {
    seq: u64,
    tunnel_key: u64,
    pub routers: BTreeMap<Uuid, Router>,
    pub bridges: BTreeMap<Uuid, Bridge>,
    pub ports: BTreeMap<Uuid, Port>,
    pub routes: BTreeMap<Uuid, Route>,
    pub chains: BTreeMap<Uuid, Chain>,
    pub rules: BTreeMap<Uuid, Rule>,
    pub hosts: BTreeMap<Uuid, Host>,
}

/// Sorts objects by creation order (MidoNet lists follow the id lists of
/// the parent, which grow in creation order).
fn ordered<'a, T: 'a>(items: impl Iterator<Item = &'a T>, seq: impl Fn(&T) -> u64) -> Vec<&'a T> {
    let mut v: Vec<&T> = items.collect();
    v.sort_by_key(|t| seq(t));
    v
}

impl Store {
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Tunnel keys are server-assigned, unique, never reused.
    pub fn next_tunnel_key(&mut self) -> u64 {
        self.tunnel_key += 1;
        self.tunnel_key
    }

    pub fn ports_of(&self, device: Uuid) -> Vec<&Port> {
        ordered(self.ports.values().filter(|p| p.device_id == device), |p| {
            p.seq
        })
    }

    /// Ports of other devices linked to `device`'s ports.
    pub fn peer_ports_of(&self, device: Uuid) -> Vec<&Port> {
        let peers: BTreeSet<Uuid> = self
            .ports_of(device)
            .iter()
            .filter_map(|p| p.peer_id)
            .collect();
        ordered(self.ports.values().filter(|p| peers.contains(&p.id)), |p| {
            p.seq
        })
    }

    /// The router a route belongs to: its own `router_id`, else the device
    /// of its next-hop port.
    pub fn route_router(&self, r: &Route) -> Option<Uuid> {
        r.router_id.or_else(|| {
            r.next_hop_port
                .and_then(|p| self.ports.get(&p))
                .map(|p| p.device_id)
        })
    }

    pub fn routes_of(&self, router: Uuid) -> Vec<&Route> {
        ordered(
            self.routes
                .values()
                .filter(|r| self.route_router(r) == Some(router)),
            |r| r.seq,
        )
    }

    pub fn bound_ports_of(&self, host: Uuid) -> Vec<&Port> {
        ordered(
            self.ports
                .values()
                .filter(|p| p.host_id == Some(host) && p.interface_name.is_some()),
            |p| p.seq,
        )
    }

    pub fn jump_rules_to(&self, chain: Uuid) -> Vec<Uuid> {
        ordered(
            self.rules
                .values()
                .filter(|r| r.jump_chain_id == Some(chain)),
            |r| r.seq,
        )
        .into_iter()
        .map(|r| r.id)
        .collect()
    }

    // ---- cascading deletes (reference/midonet-api.md §1.5) ----

    /// Deletes a router, its ports (with their cascades) and its routes.
    pub fn delete_router(&mut self, id: Uuid) {
        let ports: Vec<Uuid> = self.ports_of(id).iter().map(|p| p.id).collect();
        for p in ports {
            self.delete_port(p);
        }
        self.routes.retain(|_, r| r.router_id != Some(id));
        self.routers.remove(&id);
    }

    /// Deletes a bridge and its ports.
    pub fn delete_bridge(&mut self, id: Uuid) {
        let ports: Vec<Uuid> = self.ports_of(id).iter().map(|p| p.id).collect();
        for p in ports {
            self.delete_port(p);
        }
        self.bridges.remove(&id);
    }

    /// Deletes a port: routes through it go with it, its peer is unlinked,
    /// its host binding disappears with the record.
    pub fn delete_port(&mut self, id: Uuid) {
        let Some(port) = self.ports.remove(&id) else {
            return;
        };
        if let Some(peer) = port.peer_id.and_then(|p| self.ports.get_mut(&p)) {
            peer.peer_id = None;
        }
        self.routes.retain(|_, r| r.next_hop_port != Some(id));
    }

    /// Deletes a chain, its rules and every jump rule targeting it; clears
    /// filter references to it on routers, bridges and ports.
    pub fn delete_chain(&mut self, id: Uuid) {
        let Some(chain) = self.chains.remove(&id) else {
            return;
        };
        for r in chain.rule_ids {
            self.rules.remove(&r);
        }
        for r in self.jump_rules_to(id) {
            self.delete_rule(r);
        }
        let clear = |f: &mut Option<Uuid>| {
            if *f == Some(id) {
                *f = None;
            }
        };
        for r in self.routers.values_mut() {
            clear(&mut r.inbound_filter_id);
            clear(&mut r.outbound_filter_id);
        }
        for b in self.bridges.values_mut() {
            clear(&mut b.inbound_filter_id);
            clear(&mut b.outbound_filter_id);
        }
        for p in self.ports.values_mut() {
            clear(&mut p.inbound_filter_id);
            clear(&mut p.outbound_filter_id);
        }
    }

    pub fn delete_rule(&mut self, id: Uuid) {
        let Some(rule) = self.rules.remove(&id) else {
            return;
        };
        if let Some(chain) = self.chains.get_mut(&rule.chain_id) {
            chain.rule_ids.retain(|r| *r != id);
        }
    }

    /// Removes a host; its ports lose their binding.
    pub fn delete_host(&mut self, id: Uuid) {
        if self.hosts.remove(&id).is_none() {
            return;
        }
        for p in self.ports.values_mut() {
            if p.host_id == Some(id) {
                p.host_id = None;
                p.interface_name = None;
                p.previous_host_id = Some(id);
            }
        }
    }

    // ---- JSON representations ----

    pub fn render_router(&self, r: &Router, base: &str) -> Value {
        let uri = format!("{base}/routers/{}", r.id);
        json!({
            "id": r.id,
            "tenantId": r.tenant_id,
            "name": r.name,
            "adminStateUp": r.admin_state_up,
            "inboundFilterId": r.inbound_filter_id,
            "outboundFilterId": r.outbound_filter_id,
            "loadBalancerId": null,
            "asNumber": r.as_number.unwrap_or(0),
            "inboundMirrorIds": [],
            "outboundMirrorIds": [],
            "localRedirectChainId": null,
            "forwardChainId": null,
            "uri": uri,
            "inboundFilter": r.inbound_filter_id.map(|c| format!("{base}/chains/{c}")),
            "outboundFilter": r.outbound_filter_id.map(|c| format!("{base}/chains/{c}")),
            "ports": format!("{uri}/ports"),
            "peerPorts": format!("{uri}/peer_ports"),
            "routes": format!("{uri}/routes"),
            "loadBalancer": null,
            "bgpNetworks": format!("{uri}/bgp_networks"),
            "bgpPeers": format!("{uri}/bgp_peers"),
            "localRedirectChain": null,
            "forwardChain": null,
        })
    }

    pub fn render_bridge(&self, b: &Bridge, base: &str) -> Value {
        let uri = format!("{base}/bridges/{}", b.id);
        json!({
            "id": b.id,
            "tenantId": b.tenant_id,
            "name": b.name,
            "adminStateUp": b.admin_state_up,
            "inboundFilterId": b.inbound_filter_id,
            "outboundFilterId": b.outbound_filter_id,
            "vxlanPortIds": null,
            "inboundMirrorIds": [],
            "outboundMirrorIds": [],
            "qosPolicyId": null,
            "uri": uri,
            "inboundFilter": b.inbound_filter_id.map(|c| format!("{base}/chains/{c}")),
            "outboundFilter": b.outbound_filter_id.map(|c| format!("{base}/chains/{c}")),
            "ports": format!("{uri}/ports"),
            "peerPorts": format!("{uri}/peer_ports"),
            "vxLanPorts": format!("{uri}/vxlan_ports"),
            "macTable": format!("{uri}/mac_table"),
            "arpTable": format!("{uri}/arp_table"),
            "dhcpSubnets": format!("{uri}/dhcp"),
            "dhcpSubnet6s": format!("{uri}/dhcpV6"),
        })
    }

    pub fn render_port(&self, p: &Port, base: &str) -> Value {
        let uri = format!("{base}/ports/{}", p.id);
        let device_coll = if p.is_router_port() {
            "routers"
        } else {
            "bridges"
        };
        let mut v = json!({
            "id": p.id,
            "deviceId": p.device_id,
            "adminStateUp": p.admin_state_up,
            "inboundFilterId": p.inbound_filter_id,
            "outboundFilterId": p.outbound_filter_id,
            "tunnelKey": p.tunnel_key,
            "vifId": p.vif_id,
            "hostId": p.host_id,
            "interfaceName": p.interface_name,
            "previousHostId": p.previous_host_id,
            "peerId": p.peer_id,
            "inboundMirrorIds": [],
            "outboundMirrorIds": [],
            "postInFilterMirrorIds": [],
            "preOutFilterMirrorIds": [],
            "insertionIds": [],
            "qosPolicyId": null,
            // The emulator has no agents: no port is ever active.
            "active": false,
            "uri": uri,
            "device": format!("{base}/{device_coll}/{}", p.device_id),
            "host": p.host_id.map(|h| format!("{base}/hosts/{h}")),
            "peer": p.peer_id.map(|q| format!("{base}/ports/{q}")),
            "link": p.peer_id.map(|_| format!("{uri}/link")),
            "portGroups": format!("{uri}/port_groups"),
            "hostInterfacePort": p
                .host_id
                .filter(|_| p.interface_name.is_some())
                .map(|h| format!("{base}/hosts/{h}/ports/{}", p.id)),
            "inboundFilter": p.inbound_filter_id.map(|c| format!("{base}/chains/{c}")),
            "outboundFilter": p.outbound_filter_id.map(|c| format!("{base}/chains/{c}")),
        });
        let obj = v.as_object_mut().expect("object");
        match &p.kind {
            PortKind::Router {
                network_address,
                network_length,
                port_address,
                port_subnet,
                port_mac,
                rtr_port_vni,
            } => {
                obj.insert("type".into(), json!("Router"));
                obj.insert("networkAddress".into(), json!(network_address.to_string()));
                obj.insert("networkLength".into(), json!(network_length));
                obj.insert("portAddress".into(), json!(port_address.to_string()));
                obj.insert(
                    "portSubnet".into(),
                    json!(
                        port_subnet
                            .iter()
                            .map(|(a, l)| format!("{a}/{l}"))
                            .collect::<Vec<_>>()
                    ),
                );
                obj.insert("portMac".into(), json!(port_mac));
                obj.insert("rtrPortVni".into(), json!(rtr_port_vni.unwrap_or(0)));
                obj.insert("offRampVxlan".into(), json!(false));
                obj.insert("serviceContainerId".into(), Value::Null);
            }
            PortKind::Bridge { vlan_id } => {
                obj.insert("type".into(), json!("Bridge"));
                obj.insert("vlanId".into(), json!(vlan_id));
            }
        }
        v
    }

    pub fn render_route(&self, r: &Route, base: &str) -> Value {
        json!({
            "id": r.id,
            "routerId": self.route_router(r),
            "nextHopPort": r.next_hop_port,
            "attributes": r.attributes,
            "dstNetworkAddr": r.dst.0.to_string(),
            "dstNetworkLength": r.dst.1,
            "srcNetworkAddr": r.src.0.to_string(),
            "srcNetworkLength": r.src.1,
            "nextHopGateway": r.next_hop_gateway.map(|g| g.to_string()),
            "learned": r.learned,
            "type": r.route_type,
            "weight": r.weight,
            "uri": format!("{base}/routes/{}", r.id),
        })
    }

    pub fn render_chain(&self, c: &Chain, base: &str) -> Value {
        let uri = format!("{base}/chains/{}", c.id);
        json!({
            "id": c.id,
            "tenantId": c.tenant_id,
            "name": c.name,
            "uri": uri,
            "rules": format!("{uri}/rules"),
        })
    }

    pub fn render_rule(&self, r: &Rule, base: &str) -> Value {
        let mut obj = r.body.clone();
        let position = self
            .chains
            .get(&r.chain_id)
            .and_then(|c| c.rule_ids.iter().position(|x| *x == r.id))
            .map(|i| i + 1)
            .unwrap_or(0);
        obj.insert("id".into(), json!(r.id));
        obj.insert("chainId".into(), json!(r.chain_id));
        obj.insert("type".into(), json!(r.rule_type));
        obj.insert("position".into(), json!(position));
        obj.insert("uri".into(), json!(format!("{base}/rules/{}", r.id)));
        Value::Object(obj)
    }

    pub fn render_host(&self, h: &Host, base: &str) -> Value {
        let uri = format!("{base}/hosts/{}", h.id);
        json!({
            "id": h.id,
            "name": h.name,
            "addresses": [],
            "hostInterfaces": [],
            "alive": h.alive,
            "floodingProxyWeight": 1,
            "containerWeight": 1,
            "containerLimit": -1,
            "enforceContainerLimit": false,
            "uri": uri,
            "ports": format!("{uri}/ports"),
            "interfaces": format!("{uri}/interfaces"),
        })
    }

    /// A host-interface-port binding (only for bound ports).
    pub fn render_binding(&self, p: &Port, base: &str) -> Value {
        let host = p.host_id.expect("bound port has a host");
        json!({
            "hostId": host,
            "portId": p.id,
            "interfaceName": p.interface_name,
            "uri": format!("{base}/hosts/{host}/ports/{}", p.id),
            "host": format!("{base}/hosts/{host}"),
            "port": format!("{base}/ports/{}", p.id),
        })
    }

    /// Every object in its GET representation, by type.
    pub fn snapshot(&self, base: &str) -> Snapshot {
        Snapshot {
            routers: ordered(self.routers.values(), |x| x.seq)
                .into_iter()
                .map(|x| self.render_router(x, base))
                .collect(),
            bridges: ordered(self.bridges.values(), |x| x.seq)
                .into_iter()
                .map(|x| self.render_bridge(x, base))
                .collect(),
            ports: ordered(self.ports.values(), |x| x.seq)
                .into_iter()
                .map(|x| self.render_port(x, base))
                .collect(),
            routes: ordered(self.routes.values(), |x| x.seq)
                .into_iter()
                .map(|x| self.render_route(x, base))
                .collect(),
            chains: ordered(self.chains.values(), |x| x.seq)
                .into_iter()
                .map(|x| self.render_chain(x, base))
                .collect(),
            rules: ordered(self.rules.values(), |x| x.seq)
                .into_iter()
                .map(|x| self.render_rule(x, base))
                .collect(),
            hosts: ordered(self.hosts.values(), |x| x.seq)
                .into_iter()
                .map(|x| self.render_host(x, base))
                .collect(),
        }
    }

    // ---- leak report ----

    /// Objects not reachable from `roots` (any object ids) by following
    /// router → ports/routes/filters, port → device/peer/routes/filters/host,
    /// bridge → ports/filters, chain → rules, rule → jump chain,
    /// host → bound ports, route → next-hop port.
    pub fn leaks(&self, roots: &[Uuid]) -> Vec<LeakedObject> {
        let mut seen: BTreeSet<Uuid> = BTreeSet::new();
        let mut queue: VecDeque<Uuid> = roots.iter().copied().collect();
        while let Some(id) = queue.pop_front() {
            if !seen.insert(id) {
                continue;
            }
            let mut next: Vec<Uuid> = Vec::new();
            if let Some(r) = self.routers.get(&id) {
                next.extend(self.ports_of(id).iter().map(|p| p.id));
                next.extend(self.routes_of(id).iter().map(|r| r.id));
                next.extend(r.inbound_filter_id);
                next.extend(r.outbound_filter_id);
            }
            if let Some(b) = self.bridges.get(&id) {
                next.extend(self.ports_of(id).iter().map(|p| p.id));
                next.extend(b.inbound_filter_id);
                next.extend(b.outbound_filter_id);
            }
            if let Some(p) = self.ports.get(&id) {
                next.push(p.device_id);
                next.extend(p.peer_id);
                next.extend(p.inbound_filter_id);
                next.extend(p.outbound_filter_id);
                next.extend(p.host_id);
                next.extend(
                    self.routes
                        .values()
                        .filter(|r| r.next_hop_port == Some(id))
                        .map(|r| r.id),
                );
            }
            if let Some(c) = self.chains.get(&id) {
                next.extend(c.rule_ids.iter().copied());
            }
            if let Some(r) = self.rules.get(&id) {
                next.extend(r.jump_chain_id);
            }
            if self.hosts.contains_key(&id) {
                next.extend(self.bound_ports_of(id).iter().map(|p| p.id));
            }
            if let Some(r) = self.routes.get(&id) {
                next.extend(r.next_hop_port);
            }
            queue.extend(next.into_iter().filter(|n| !seen.contains(n)));
        }
        let mut out = Vec::new();
        let mut add = |kind: &'static str, id: Uuid, seq: u64, name: Option<String>| {
            if !seen.contains(&id) {
                out.push((
                    seq,
                    LeakedObject {
                        kind: kind.to_string(),
                        id,
                        name,
                    },
                ));
            }
        };
        for r in self.routers.values() {
            add("router", r.id, r.seq, r.name.clone());
        }
        for b in self.bridges.values() {
            add("bridge", b.id, b.seq, b.name.clone());
        }
        for p in self.ports.values() {
            add("port", p.id, p.seq, None);
        }
        for r in self.routes.values() {
            add("route", r.id, r.seq, None);
        }
        for c in self.chains.values() {
            add("chain", c.id, c.seq, c.name.clone());
        }
        for r in self.rules.values() {
            add("rule", r.id, r.seq, None);
        }
        out.sort_by_key(|(seq, _)| *seq);
        out.into_iter().map(|(_, l)| l).collect()
    }
}

/// Every object of the emulator, each in the JSON form `GET` serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub routers: Vec<Value>,
    pub bridges: Vec<Value>,
    pub ports: Vec<Value>,
    pub routes: Vec<Value>,
    pub chains: Vec<Value>,
    pub rules: Vec<Value>,
    pub hosts: Vec<Value>,
}

impl Snapshot {
    /// Number of objects of every type except hosts.
    pub fn count(&self) -> usize {
        self.routers.len()
            + self.bridges.len()
            + self.ports.len()
            + self.routes.len()
            + self.chains.len()
            + self.rules.len()
    }
}

/// An object no root reaches (see [`crate::Emulator::leaks`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LeakedObject {
    /// `router`, `bridge`, `port`, `route`, `chain` or `rule`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Uuid,
    /// The object's name, when it has one.
    pub name: Option<String>,
}
