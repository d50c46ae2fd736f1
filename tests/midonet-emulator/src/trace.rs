//! Where MidoNet would route a flow: the routing decisions of its agent's
//! simulation, over the emulated topology, so a test can see what a set of
//! routes does to traffic (for example, that two equal routes to one subnet
//! split flows between two tenants).
//!
//! Per router, as MidoNet 5.x (`RoutingTable.lookup`, `RouteBalancer`):
//! the routes whose destination prefix holds the flow's destination, the
//! longest such prefix first; of those, the ones whose source prefix holds
//! the flow's source; of those, the ones of the lowest weight. One left:
//! taken. Several (equal routes): one is chosen by a hash of the flow's
//! connection (addresses, protocol, ports), so one flow always takes the
//! same route and different flows spread over all of them. The hash is not
//! MidoNet's `FlowMatch.connectionHash` bit for bit; the property is the
//! same.
//!
//! A `Normal` route leaves through its next-hop port: linked to a router
//! port, the flow enters that router; linked to a bridge port, it is
//! delivered to the bridge (the trace ends: L2 is not simulated); bound to a
//! host interface, it leaves MidoNet there; neither, it is dropped. `Local`
//! routes (a router port's own address) deliver to the router itself;
//! `BlackHole` and `Reject` drop. Not simulated: rule chains (filters,
//! NAT), admin state, ARP, TTL (a path through more than
//! [`MAX_ROUTERS`] routers ends as a loop).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{Route, Store};

/// Routers a trace crosses at most before it is called a loop.
pub const MAX_ROUTERS: usize = 16;

/// A flow: what the route choice looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IP protocol (default 6, TCP).
    #[serde(default = "tcp")]
    pub protocol: u8,
    #[serde(default)]
    pub src_port: u16,
    #[serde(default)]
    pub dst_port: u16,
}

fn tcp() -> u8 {
    6
}

impl Flow {
    /// A TCP flow.
    pub fn tcp(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16) -> Self {
        Flow {
            src,
            dst,
            protocol: 6,
            src_port,
            dst_port,
        }
    }

    /// FNV-1a over the connection's fields: stable per flow, spread across
    /// flows.
    fn connection_hash(&self) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        let bytes = self
            .src
            .octets()
            .into_iter()
            .chain(self.dst.octets())
            .chain([self.protocol])
            .chain(self.src_port.to_be_bytes())
            .chain(self.dst_port.to_be_bytes());
        for b in bytes {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h
    }
}

/// One router's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    pub router: Uuid,
    /// The route taken.
    pub route: Uuid,
    /// How many equal routes the flow hash chose among (1: no choice).
    pub candidates: usize,
    /// The port the flow leaves through (`None` for Local, BlackHole,
    /// Reject routes).
    pub port: Option<Uuid>,
}

/// Where a trace ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum End {
    /// Delivered to a bridge, entering through its port `port`.
    Bridge { bridge: Uuid, port: Uuid },
    /// Addressed to the router itself (a `Local` route).
    Local { router: Uuid },
    /// Out of MidoNet through a port bound to a host interface.
    Exterior {
        port: Uuid,
        host: Option<Uuid>,
        interface: Option<String>,
    },
    /// No route on `router` holds the destination.
    NoRoute { router: Uuid },
    /// A `BlackHole` route.
    Blackhole { router: Uuid },
    /// A `Reject` route.
    Reject { router: Uuid },
    /// A route of a type not simulated (`Fip64`).
    Unsupported { router: Uuid, route_type: String },
    /// The next-hop port is neither linked nor bound (or is gone).
    Dropped { port: Uuid },
    /// More than [`MAX_ROUTERS`] routers.
    Loop,
    /// The router the trace starts at does not exist.
    UnknownRouter { router: Uuid },
}

/// A flow's path: each router's decision, then where it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    pub hops: Vec<Hop>,
    pub end: End,
}

impl Trace {
    /// The routers the flow crossed, in order.
    pub fn routers(&self) -> Vec<Uuid> {
        self.hops.iter().map(|h| h.router).collect()
    }
}

fn holds(net: (Ipv4Addr, u8), addr: Ipv4Addr) -> bool {
    let mask = if net.1 == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(net.1))
    };
    u32::from(net.0) & mask == u32::from(addr) & mask
}

impl Store {
    /// The routes of `router` MidoNet would choose among for `flow`: the
    /// longest matching destination prefix whose routes match the source,
    /// those of the lowest weight, in creation order.
    pub fn matching_routes(&self, router: Uuid, flow: &Flow) -> Vec<&Route> {
        let routes = self.routes_of(router);
        for len in (0..=32u8).rev() {
            let mut best: Vec<&Route> = Vec::new();
            let mut min = i64::MAX;
            for r in routes
                .iter()
                .filter(|r| r.dst.1 == len && holds(r.dst, flow.dst) && holds(r.src, flow.src))
            {
                if r.weight < min {
                    best.clear();
                    min = r.weight;
                }
                if r.weight == min {
                    best.push(r);
                }
            }
            if !best.is_empty() {
                return best;
            }
        }
        Vec::new()
    }

    /// Routes `flow` from `router` (see the module docs).
    pub fn trace(&self, router: Uuid, flow: &Flow) -> Trace {
        let mut hops = Vec::new();
        let mut at = router;
        if !self.routers.contains_key(&at) {
            return Trace {
                hops,
                end: End::UnknownRouter { router },
            };
        }
        loop {
            if hops.len() == MAX_ROUTERS {
                return Trace {
                    hops,
                    end: End::Loop,
                };
            }
            let candidates = self.matching_routes(at, flow);
            if candidates.is_empty() {
                return Trace {
                    hops,
                    end: End::NoRoute { router: at },
                };
            }
            let pick = candidates[flow.connection_hash() as usize % candidates.len()];
            let normal = pick.route_type == "Normal";
            hops.push(Hop {
                router: at,
                route: pick.id,
                candidates: candidates.len(),
                port: pick.next_hop_port.filter(|_| normal),
            });
            let end = match pick.route_type.as_str() {
                "Normal" => None,
                "Local" => Some(End::Local { router: at }),
                "BlackHole" => Some(End::Blackhole { router: at }),
                "Reject" => Some(End::Reject { router: at }),
                other => Some(End::Unsupported {
                    router: at,
                    route_type: other.to_string(),
                }),
            };
            if let Some(end) = end {
                return Trace { hops, end };
            }
            // Normal routes always have a next-hop port (checked on create).
            let out = pick.next_hop_port.expect("Normal route has a next hop");
            let Some(port) = self.ports.get(&out) else {
                return Trace {
                    hops,
                    end: End::Dropped { port: out },
                };
            };
            match port.peer_id.and_then(|p| self.ports.get(&p)) {
                Some(peer) if peer.is_router_port() => at = peer.device_id,
                Some(peer) => {
                    return Trace {
                        hops,
                        end: End::Bridge {
                            bridge: peer.device_id,
                            port: peer.id,
                        },
                    };
                }
                None if port.interface_name.is_some() => {
                    return Trace {
                        hops,
                        end: End::Exterior {
                            port: out,
                            host: port.host_id,
                            interface: port.interface_name.clone(),
                        },
                    };
                }
                None => {
                    return Trace {
                        hops,
                        end: End::Dropped { port: out },
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_hold_addresses() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(holds((a("10.1.0.0"), 24), a("10.1.0.77")));
        assert!(!holds((a("10.1.0.0"), 24), a("10.1.1.1")));
        assert!(holds((a("0.0.0.0"), 0), a("203.0.113.9")));
        assert!(holds((a("10.1.0.7"), 32), a("10.1.0.7")));
        assert!(!holds((a("10.1.0.7"), 32), a("10.1.0.8")));
    }

    #[test]
    fn the_hash_is_stable_and_spreads() {
        let f = |p| Flow::tcp([203, 0, 113, 7].into(), p, [10, 1, 0, 11].into(), 80);
        assert_eq!(f(40000).connection_hash(), f(40000).connection_hash());
        let even = (40000..40064)
            .filter(|p| f(*p).connection_hash() % 2 == 0)
            .count();
        assert!((16..=48).contains(&even), "{even} of 64 even");
    }
}
