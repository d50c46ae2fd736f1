//! The routing model (`Emulator::trace`, `POST /_emulator/trace`): longest
//! prefix, source match, lowest weight, and equal routes chosen by a hash
//! of the flow, as MidoNet 5.x's `RoutingTable` and `RouteBalancer` do.

mod common;

use std::net::Ipv4Addr;

use common::*;
use midonet_emulator::{End, Flow, Uuid};
use serde_json::json;

fn route(c: &Client, router: Uuid, dst: &str, len: u8, port: Uuid, weight: i64) -> Uuid {
    route_from(c, router, ("0.0.0.0", 0), (dst, len), port, weight)
}

fn route_from(
    c: &Client,
    router: Uuid,
    src: (&str, u8),
    dst: (&str, u8),
    port: Uuid,
    weight: i64,
) -> Uuid {
    c.create(
        &format!("/routers/{router}/routes"),
        ROUTE,
        &json!({
            "type": "Normal",
            "srcNetworkAddr": src.0, "srcNetworkLength": src.1,
            "dstNetworkAddr": dst.0, "dstNetworkLength": dst.1,
            "nextHopPort": port, "weight": weight,
        }),
    )
}

/// A router with two ports, each linked to its own bridge.
struct TwoWays {
    router: Uuid,
    ports: [Uuid; 2],
    bridges: [Uuid; 2],
}

fn two_ways(c: &Client) -> TwoWays {
    let router = c.router("r");
    let mut ports = [Uuid::nil(); 2];
    let mut bridges = [Uuid::nil(); 2];
    for i in 0..2 {
        ports[i] = c.router_port(router, &format!("10.0.{i}.0"), 30, &format!("10.0.{i}.1"));
        bridges[i] = c.bridge(&format!("b{i}"));
        let bp = c.bridge_port(bridges[i]);
        assert_eq!(c.link(ports[i], bp).status, 201);
    }
    TwoWays {
        router,
        ports,
        bridges,
    }
}

fn flow(src_port: u16, dst: &str) -> Flow {
    Flow::tcp(
        Ipv4Addr::new(203, 0, 113, 7),
        src_port,
        dst.parse().unwrap(),
        80,
    )
}

fn bridge_of(end: &End) -> Uuid {
    match end {
        End::Bridge { bridge, .. } => *bridge,
        other => panic!("not delivered to a bridge: {other:?}"),
    }
}

#[test]
fn equal_routes_spread_flows_by_their_hash() {
    let f = fixture();
    let c = &f.client;
    let t = two_ways(c);
    route(c, t.router, "10.9.0.0", 24, t.ports[0], 100);
    route(c, t.router, "10.9.0.0", 24, t.ports[1], 100);
    let mut counts = [0; 2];
    for p in 40000..40064 {
        let tr = f.emu.trace(t.router, &flow(p, "10.9.0.11"));
        assert_eq!(tr.hops.len(), 1);
        assert_eq!(tr.hops[0].candidates, 2);
        let b = bridge_of(&tr.end);
        counts[t.bridges.iter().position(|x| *x == b).unwrap()] += 1;
        // One flow always takes the same route.
        assert_eq!(f.emu.trace(t.router, &flow(p, "10.9.0.11")), tr);
    }
    assert!(
        counts[0] > 0 && counts[1] > 0,
        "flows split between both routes: {counts:?}"
    );
}

#[test]
fn the_longest_prefix_then_the_lowest_weight_wins() {
    let f = fixture();
    let c = &f.client;
    let t = two_ways(c);
    route(c, t.router, "10.9.0.0", 16, t.ports[0], 100);
    route(c, t.router, "10.9.0.0", 24, t.ports[1], 100);
    route(c, t.router, "10.8.0.0", 24, t.ports[0], 20);
    route(c, t.router, "10.8.0.0", 24, t.ports[1], 10);
    for p in 40000..40032 {
        let longest = f.emu.trace(t.router, &flow(p, "10.9.0.11"));
        assert_eq!(bridge_of(&longest.end), t.bridges[1]);
        assert_eq!(longest.hops[0].candidates, 1);
        let shorter = f.emu.trace(t.router, &flow(p, "10.9.7.1"));
        assert_eq!(bridge_of(&shorter.end), t.bridges[0]);
        let lighter = f.emu.trace(t.router, &flow(p, "10.8.0.1"));
        assert_eq!(bridge_of(&lighter.end), t.bridges[1]);
    }
    let none = f.emu.trace(t.router, &flow(1, "192.0.2.1"));
    assert_eq!(none.end, End::NoRoute { router: t.router });
    assert!(none.hops.is_empty());
}

#[test]
fn a_route_for_other_sources_is_skipped() {
    let f = fixture();
    let c = &f.client;
    let t = two_ways(c);
    route_from(
        c,
        t.router,
        ("192.168.0.0", 16),
        ("10.9.0.0", 24),
        t.ports[0],
        0,
    );
    route(c, t.router, "10.9.0.0", 16, t.ports[1], 100);
    // From elsewhere the /24 does not apply: the /16 does.
    let tr = f.emu.trace(t.router, &flow(1, "10.9.0.11"));
    assert_eq!(bridge_of(&tr.end), t.bridges[1]);
    let mut inside = flow(1, "10.9.0.11");
    inside.src = "192.168.3.4".parse().unwrap();
    assert_eq!(bridge_of(&f.emu.trace(t.router, &inside).end), t.bridges[0]);
}

#[test]
fn flows_cross_linked_routers_to_local_addresses_and_loops_end() {
    let f = fixture();
    let c = &f.client;
    // provider P ─ RP (10.1.0.1/30) ══ LP (10.1.0.2/30) ─ tenant router T
    let p = f.provider;
    let tr = c.router("t");
    let rp = c.router_port(p, "10.1.0.0", 30, "10.1.0.1");
    let lp = c.router_port(tr, "10.1.0.0", 30, "10.1.0.2");
    assert_eq!(c.link(lp, rp).status, 201);
    route(c, p, "10.1.0.2", 32, rp, 100);
    let t = f.emu.trace(p, &flow(5, "10.1.0.2"));
    assert_eq!(t.routers(), [p, tr]);
    assert_eq!(t.hops[0].port, Some(rp));
    // The tenant router's own address: its Local port route.
    assert_eq!(t.end, End::Local { router: tr });
    assert_eq!(t.hops[1].port, None);
    // Default routes pointing at each other: a loop.
    route(c, p, "0.0.0.0", 0, rp, 100);
    route(c, tr, "0.0.0.0", 0, lp, 100);
    assert_eq!(f.emu.trace(p, &flow(5, "198.51.100.1")).end, End::Loop);
    // An unlinked, unbound port drops; a bound one leaves MidoNet.
    let out = c.router_port(tr, "10.2.0.0", 30, "10.2.0.1");
    route(c, tr, "10.2.0.0", 30, out, 100);
    assert_eq!(
        f.emu.trace(tr, &flow(5, "10.2.0.2")).end,
        End::Dropped { port: out }
    );
    assert_eq!(c.bind(f.host, out, "uplink0").status, 201);
    assert_eq!(
        f.emu.trace(tr, &flow(5, "10.2.0.2")).end,
        End::Exterior {
            port: out,
            host: Some(f.host),
            interface: Some("uplink0".into())
        }
    );
    let ghost = Uuid::new_v4();
    assert_eq!(
        f.emu.trace(ghost, &flow(5, "10.2.0.2")).end,
        End::UnknownRouter { router: ghost }
    );
}

#[test]
fn blackhole_and_reject_routes_drop() {
    let f = fixture();
    let c = &f.client;
    let r = c.router("r");
    for (dst, t) in [("10.5.0.0", "BlackHole"), ("10.6.0.0", "Reject")] {
        c.create(
            &format!("/routers/{r}/routes"),
            ROUTE,
            &json!({"type": t, "srcNetworkAddr": "0.0.0.0", "srcNetworkLength": 0,
                    "dstNetworkAddr": dst, "dstNetworkLength": 16}),
        );
    }
    assert_eq!(
        f.emu.trace(r, &flow(1, "10.5.1.1")).end,
        End::Blackhole { router: r }
    );
    assert_eq!(
        f.emu.trace(r, &flow(1, "10.6.1.1")).end,
        End::Reject { router: r }
    );
}

#[test]
fn trace_over_http() {
    let f = fixture();
    let c = &f.client;
    let t = two_ways(c);
    route(c, t.router, "10.9.0.0", 24, t.ports[0], 100);
    let r = c.control(
        "POST",
        "/trace",
        Some(&json!({"router": t.router, "flow": {"src": "203.0.113.7", "dst": "10.9.0.1", "src_port": 1, "dst_port": 80}})),
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["end"]["kind"], "bridge");
    assert_eq!(v["end"]["bridge"], t.bridges[0].to_string());
    assert_eq!(v["hops"][0]["router"], t.router.to_string());
    assert_eq!(v["hops"][0]["candidates"], 1);
    let bad = c.control(
        "POST",
        "/trace",
        Some(&json!({"router": "nope", "flow": {"src": "1.2.3.4", "dst": "1.2.3.5"}})),
    );
    assert_eq!(bad.status, 400);
    assert!(bad.message().contains("router"));
    let bad = c.control(
        "POST",
        "/trace",
        Some(&json!({"router": t.router, "flow": {"src": "1.2.3.4"}})),
    );
    assert_eq!(bad.status, 400);
    // Tracing is no API call: nothing in the journal.
    assert!(f.emu.journal().iter().all(|e| !e.path.contains("trace")));
}
