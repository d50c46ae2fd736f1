//! The seed plugin's whole ADD call sequence (reference/midonet-api.md §2.3,
//! with `version: 5` media types) runs against the emulator and builds the
//! §3.3 topology; the journal records it and the leak report is clean.

mod common;

use common::*;
use midonet_emulator::Uuid;
use serde_json::json;

#[test]
fn seed_plugin_add_sequence_builds_the_tenant_topology() {
    let f = fixture();
    let c = &f.client;
    let t = "tenant-a";
    let (inc, outc, r) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    c.create(
        "/chains",
        CHAIN,
        &json!({"id": inc, "name": format!("{t} upstream_in"), "tenantId": t}),
    );
    c.create(
        "/chains",
        CHAIN,
        &json!({"id": outc, "name": format!("{t} upstream_out"), "tenantId": t}),
    );
    c.create(
        "/routers",
        ROUTER,
        &json!({"id": r, "name": format!("{t} default router"), "tenantId": t,
                "inboundFilterId": inc, "outboundFilterId": outc}),
    );
    let rp = c.create(
        &format!("/routers/{}/ports", f.provider),
        PORT,
        &json!({"id": Uuid::new_v4(), "type": "Router", "deviceId": f.provider,
                "networkAddress": "172.16.0.0", "networkLength": 24, "portAddress": "172.16.0.2"}),
    );
    let lp = c.create(
        &format!("/routers/{r}/ports"),
        PORT,
        &json!({"id": Uuid::new_v4(), "type": "Router", "deviceId": r,
                "networkAddress": "172.16.0.0", "networkLength": 24, "portAddress": "172.16.0.3"}),
    );
    assert_eq!(c.link(lp, rp).status, 201);
    c.create(
        &format!("/routers/{r}/routes"),
        ROUTE,
        &json!({"id": Uuid::new_v4(), "srcNetworkAddr": "0.0.0.0", "srcNetworkLength": 0,
                "dstNetworkAddr": "0.0.0.0", "dstNetworkLength": 0, "type": "Normal",
                "nextHopPort": lp, "nextHopGateway": "172.16.0.2", "routerId": r, "weight": 0}),
    );
    let provider_route = c.create(
        &format!("/routers/{}/routes", f.provider),
        ROUTE,
        &json!({"srcNetworkAddr": "0.0.0.0", "srcNetworkLength": 0, "dstNetworkAddr": "172.16.0.3",
                "dstNetworkLength": 32, "type": "Normal", "nextHopPort": rp, "routerId": f.provider}),
    );
    c.create(
        &format!("/chains/{outc}/rules"),
        RULE,
        &json!({"type": "accept", "matchReturnFlow": true, "fragmentPolicy": "any", "position": 1, "natTargets": null}),
    );
    c.create(
        &format!("/chains/{outc}/rules"),
        RULE,
        &json!({"type": "snat", "flowAction": "accept", "fragmentPolicy": "unfragmented", "outPorts": [lp],
                "natTargets": [{"addressFrom": "172.16.0.3", "addressTo": "172.16.0.3", "portFrom": 1024, "portTo": 65535}],
                "position": 2}),
    );
    c.create(
        &format!("/chains/{inc}/rules"),
        RULE,
        &json!({"type": "rev_snat", "flowAction": "continue", "fragmentPolicy": "any", "inPorts": [lp], "position": 1}),
    );
    let b0 = c.create(
        "/bridges",
        BRIDGE,
        &json!({"id": Uuid::new_v4(), "name": format!("{t} bridge0"), "tenantId": t}),
    );
    let gp = c.router_port(r, "192.168.0.0", 24, "192.168.0.254");
    let bp = c.create(
        &format!("/bridges/{b0}/ports"),
        PORT,
        &json!({"type": "Bridge", "deviceId": b0, "vlanId": null}),
    );
    assert_eq!(c.link(gp, bp).status, 201);
    c.create(
        &format!("/routers/{r}/routes"),
        ROUTE,
        &json!({"srcNetworkAddr": "0.0.0.0", "srcNetworkLength": 0, "dstNetworkAddr": "192.168.0.0",
                "dstNetworkLength": 24, "type": "Normal", "nextHopPort": gp, "routerId": r}),
    );
    // The pod's port and binding.
    let pp = c.bridge_port(b0);
    let bind = c.bind(f.host, pp, "vif0123456789ab");
    assert_eq!(bind.status, 201);
    assert_eq!(
        bind.header("location").unwrap(),
        format!("{}/hosts/{}/ports/{pp}", f.emu.url(), f.host)
    );

    // The topology as GETs show it.
    let routes = c.get_ok(&format!("/routers/{r}/routes"), ROUTES);
    // Two Local /32 (LP, GP) + default + bridge block.
    assert_eq!(routes.as_array().unwrap().len(), 4, "{routes}");
    let locals: Vec<_> = routes
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["type"] == "Local")
        .map(|x| x["dstNetworkAddr"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(locals, ["172.16.0.3", "192.168.0.254"]);
    let peers = c.get_ok(&format!("/routers/{r}/peer_ports"), PORTS);
    let peer_ids: Vec<_> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].clone())
        .collect();
    assert_eq!(peer_ids, [json!(rp), json!(bp)]);
    let rules = c.get_ok(&format!("/chains/{outc}/rules"), RULES);
    let types: Vec<_> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["type"].clone(), x["position"].clone()))
        .collect();
    assert_eq!(
        types,
        [(json!("accept"), json!(1)), (json!("snat"), json!(2))]
    );
    let routers = c.get_ok(&format!("/routers?tenant_id={t}"), ROUTERS);
    assert_eq!(routers.as_array().unwrap().len(), 1);
    assert_eq!(routers[0]["inboundFilterId"], json!(inc));
    let bound = c.get_ok(&format!("/hosts/{}/ports", f.host), BINDINGS);
    assert_eq!(bound[0]["interfaceName"], "vif0123456789ab");
    let route = c.get_ok(&format!("/routes/{provider_route}"), ROUTE);
    assert_eq!(
        route["routerId"],
        json!(f.provider),
        "routerId shown from the next-hop port"
    );

    // Everything hangs off the provider router: no leaks.
    assert_eq!(f.emu.leaks::<Uuid>(&[]), vec![]);

    // The journal has every call, login first, in order, with media types.
    let j = f.emu.journal();
    assert_eq!(j[0].path, "/midonet-api/login");
    assert!(
        j.iter().all(|e| e.status == 200 || e.status == 201),
        "{j:#?}"
    );
    let creates: Vec<_> = j
        .iter()
        .filter(|e| e.method == "POST")
        .map(|e| e.path.clone())
        .collect();
    assert_eq!(
        creates[1..4],
        [
            "/midonet-api/chains",
            "/midonet-api/chains",
            "/midonet-api/routers"
        ]
    );
    assert_eq!(j[3].content_type.as_deref(), Some(ROUTER));
    assert_eq!(
        j[3].body.as_ref().unwrap()["name"],
        "tenant-a default router"
    );
    assert!(j.windows(2).all(|w| w[0].seq < w[1].seq));

    // DEL: unbind and delete the pod port; deleting the tenant router
    // cascades its ports, routes, and unlinks the provider port.
    assert_eq!(
        c.delete(&format!("/hosts/{}/ports/{pp}", f.host)).status,
        204
    );
    assert_eq!(c.delete(&format!("/ports/{pp}")).status, 204);
    assert_eq!(c.delete(&format!("/routers/{r}")).status, 204);
    assert_eq!(c.port(rp)["peerId"], json!(null));
    assert_eq!(c.get(&format!("/ports/{lp}"), PORT).status, 404);
    // Left behind: B0 and its port (GP went with the router), the chains
    // and their rules — the leak report names them.
    let leaks = f.emu.leaks::<Uuid>(&[]);
    let kinds: Vec<_> = leaks.iter().map(|l| (l.kind.as_str(), l.id)).collect();
    assert!(kinds.contains(&("bridge", b0)), "{leaks:?}");
    assert!(kinds.contains(&("port", bp)), "{leaks:?}");
    assert!(
        kinds.contains(&("chain", inc)) && kinds.contains(&("chain", outc)),
        "{leaks:?}"
    );
    assert_eq!(leaks.iter().filter(|l| l.kind == "rule").count(), 3);
    // The provider's route through RP stays (RP still exists): reachable.
    assert!(!kinds.contains(&("route", provider_route)));
}
