//! Delete cascades and clears (reference/midonet-api.md §1.5, §4.3 item 13).

mod common;

use common::*;
use serde_json::json;

fn ids(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].clone())
        .collect()
}

#[test]
fn deleting_a_router_removes_its_ports_and_routes_and_unlinks_peers() {
    let f = fixture();
    let c = &f.client;
    let r = c.router("tenant");
    let lp = c.router_port(r, "172.16.0.0", 24, "172.16.0.3");
    let rp = c.router_port(f.provider, "172.16.0.0", 24, "172.16.0.2");
    assert_eq!(c.link(lp, rp).status, 201);
    let b = c.bridge("b0");
    let gp = c.router_port(r, "192.168.0.0", 24, "192.168.0.254");
    let bp = c.bridge_port(b);
    assert_eq!(c.link(gp, bp).status, 201);
    let via_port = c.create(&format!("/routers/{r}/routes"), ROUTE, &json!({"srcNetworkAddr": "0.0.0.0",
        "dstNetworkAddr": "0.0.0.0", "type": "Normal", "nextHopPort": lp, "nextHopGateway": "172.16.0.2"}));
    let blackhole = c.create(
        &format!("/routers/{r}/routes"),
        ROUTE,
        &json!({"srcNetworkAddr": "0.0.0.0",
        "dstNetworkAddr": "10.0.0.0", "dstNetworkLength": 8, "type": "BlackHole"}),
    );
    let provider_route = c.create(
        &format!("/routers/{}/routes", f.provider),
        ROUTE,
        &json!({
        "srcNetworkAddr": "0.0.0.0", "dstNetworkAddr": "172.16.0.3", "dstNetworkLength": 32,
        "type": "Normal", "nextHopPort": rp}),
    );
    let before = f.emu.objects();

    assert_eq!(c.delete(&format!("/routers/{r}")).status, 204);
    assert_eq!(c.get(&format!("/routers/{r}"), ROUTER).status, 404);
    for p in [lp, gp] {
        assert_eq!(
            c.get(&format!("/ports/{p}"), PORT).status,
            404,
            "router port {p} cascaded"
        );
    }
    for route in [via_port, blackhole] {
        assert_eq!(
            c.get(&format!("/routes/{route}"), ROUTE).status,
            404,
            "route {route} cascaded"
        );
    }
    // Peers survive, unlinked.
    assert_eq!(c.port(rp)["peerId"], json!(null));
    assert_eq!(c.port(bp)["peerId"], json!(null));
    // The provider's own route through its surviving port stays.
    assert_eq!(
        c.get(&format!("/routes/{provider_route}"), ROUTE).status,
        200
    );
    let after = f.emu.objects();
    assert_eq!(before.routers.len() - 1, after.routers.len());
    // 2 ports, and 4 routes: two Local, the port route, the blackhole.
    assert_eq!(before.ports.len() - 2, after.ports.len());
    assert_eq!(before.routes.len() - 4, after.routes.len());
}

#[test]
fn deleting_a_bridge_removes_its_ports_and_their_bindings() {
    let f = fixture();
    let c = &f.client;
    let b = c.bridge("b");
    let p1 = c.bridge_port(b);
    let p2 = c.bridge_port(b);
    let r = c.router("r");
    let gp = c.router_port(r, "192.168.0.0", 24, "192.168.0.254");
    assert_eq!(c.link(gp, p2).status, 201);
    assert_eq!(c.bind(f.host, p1, "vif1").status, 201);
    assert_eq!(c.delete(&format!("/bridges/{b}")).status, 204);
    assert_eq!(c.get(&format!("/bridges/{b}"), BRIDGE).status, 404);
    assert_eq!(c.get(&format!("/ports/{p1}"), PORT).status, 404);
    assert_eq!(c.get(&format!("/ports/{p2}"), PORT).status, 404);
    assert_eq!(c.port(gp)["peerId"], json!(null));
    assert_eq!(
        c.get_ok(&format!("/hosts/{}/ports", f.host), BINDINGS),
        json!([])
    );
    // The name is free again on that host.
    let b2 = c.bridge("b2");
    let p3 = c.bridge_port(b2);
    assert_eq!(c.bind(f.host, p3, "vif1").status, 201);
    assert_eq!(
        c.delete(&format!("/bridges/{b}")).status,
        404,
        "second delete"
    );
}

#[test]
fn deleting_a_port_removes_its_routes_link_and_binding() {
    let f = fixture();
    let c = &f.client;
    let r = c.router("r");
    let p = c.router_port(r, "10.0.0.0", 24, "10.0.0.1");
    let q = c.router_port(f.provider, "10.0.0.0", 24, "10.0.0.2");
    assert_eq!(c.link(p, q).status, 201);
    let route = c.create(
        &format!("/routers/{r}/routes"),
        ROUTE,
        &json!({"srcNetworkAddr": "0.0.0.0",
        "dstNetworkAddr": "10.9.0.0", "dstNetworkLength": 16, "type": "Normal", "nextHopPort": p}),
    );
    assert_eq!(
        c.get_ok(&format!("/routers/{r}/routes"), ROUTES)
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(c.delete(&format!("/ports/{p}")).status, 204);
    assert_eq!(c.get(&format!("/routes/{route}"), ROUTE).status, 404);
    assert_eq!(
        c.get_ok(&format!("/routers/{r}/routes"), ROUTES),
        json!([]),
        "Local route went too"
    );
    assert_eq!(c.port(q)["peerId"], json!(null));
    assert_eq!(c.get_ok(&format!("/routers/{r}/ports"), PORTS), json!([]));
    // A bound bridge port: the binding goes with it.
    let b = c.bridge("b");
    let bp = c.bridge_port(b);
    assert_eq!(c.bind(f.host, bp, "vif9").status, 201);
    assert_eq!(c.delete(&format!("/ports/{bp}")).status, 204);
    assert_eq!(
        c.get(&format!("/hosts/{}/ports/{bp}", f.host), BINDING)
            .status,
        404
    );
    assert_eq!(c.delete(&format!("/ports/{bp}")).status, 404);
}

#[test]
fn deleting_a_chain_removes_rules_jump_rules_and_filter_references() {
    let f = fixture();
    let c = &f.client;
    let target = c.create("/chains", CHAIN, &json!({"name": "target"}));
    let other = c.create("/chains", CHAIN, &json!({"name": "other"}));
    let own = c.create(
        &format!("/chains/{target}/rules"),
        RULE,
        &json!({"type": "accept"}),
    );
    let keep = c.create(
        &format!("/chains/{other}/rules"),
        RULE,
        &json!({"type": "drop"}),
    );
    let jump = c.create(
        &format!("/chains/{other}/rules"),
        RULE,
        &json!({"type": "jump", "jumpChainId": target, "position": 2}),
    );
    let r = c.create(
        "/routers",
        ROUTER,
        &json!({"inboundFilterId": target, "outboundFilterId": other}),
    );
    let b = c.create("/bridges", BRIDGE, &json!({"inboundFilterId": target}));
    let p = c.create(
        &format!("/bridges/{b}/ports"),
        PORT,
        &json!({"type": "Bridge", "outboundFilterId": target}),
    );
    assert_eq!(c.delete(&format!("/chains/{target}")).status, 204);
    assert_eq!(c.get(&format!("/rules/{own}"), RULE).status, 404);
    assert_eq!(
        c.get(&format!("/rules/{jump}"), RULE).status,
        404,
        "jump rule into the chain"
    );
    assert_eq!(
        ids(&c.get_ok(&format!("/chains/{other}/rules"), RULES)),
        [json!(keep)]
    );
    let rv = c.get_ok(&format!("/routers/{r}"), ROUTER);
    assert_eq!(
        (
            rv["inboundFilterId"].clone(),
            rv["outboundFilterId"].clone()
        ),
        (json!(null), json!(other))
    );
    assert_eq!(
        c.get_ok(&format!("/bridges/{b}"), BRIDGE)["inboundFilterId"],
        json!(null)
    );
    assert_eq!(c.port(p)["outboundFilterId"], json!(null));
    assert_eq!(c.delete(&format!("/chains/{target}")).status, 404);
}

#[test]
fn deleting_a_host_unbinds_its_ports() {
    let f = fixture();
    let c = &f.client;
    let b = c.bridge("b");
    let p = c.bridge_port(b);
    assert_eq!(c.bind(f.host, p, "vif1").status, 201);
    let r = c.delete(&format!("/hosts/{}", f.host));
    assert_eq!(r.status, 200);
    let v = c.port(p);
    assert_eq!(
        (v["hostId"].clone(), v["interfaceName"].clone()),
        (json!(null), json!(null))
    );
    assert_eq!(c.get(&format!("/hosts/{}", f.host), HOST).status, 404);
    assert_eq!(c.bind(f.host, p, "vif1").status, 404);
}
