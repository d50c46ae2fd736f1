//! Every validation rule of reference/midonet-api.md §4.3 rejects with
//! MidoNet's status (and message where MidoNet has a fixed one).

mod common;

use common::*;
use midonet_emulator::{EmulatorOptions, HostSpec, Uuid};
use serde_json::json;

#[test]
fn client_ids_are_honoured_and_duplicates_conflict() {
    let f = fixture();
    let c = &f.client;
    let id = Uuid::new_v4();
    assert_eq!(c.create("/routers", ROUTER, &json!({"id": id})), id);
    let r = c.post("/routers", ROUTER, &json!({"id": id}));
    assert_eq!(r.status, 409);
    assert!(r.message().contains(&id.to_string()));
    // Per type: a bridge may reuse the id.
    assert_eq!(c.create("/bridges", BRIDGE, &json!({"id": id})), id);
    assert_eq!(c.post("/bridges", BRIDGE, &json!({"id": id})).status, 409);
    assert_eq!(c.create("/chains", CHAIN, &json!({"id": id})), id);
    assert_eq!(c.post("/chains", CHAIN, &json!({"id": id})).status, 409);
    let p = c.create(
        &format!("/bridges/{id}/ports"),
        PORT,
        &json!({"type": "Bridge", "id": Uuid::new_v4()}),
    );
    let dup = c.post(
        &format!("/routers/{id}/ports"),
        PORT,
        &json!({"type": "Router", "id": p,
        "networkAddress": "10.0.0.0", "networkLength": 24, "portAddress": "10.0.0.1"}),
    );
    assert_eq!(
        dup.status, 409,
        "port ids are shared by router and bridge ports"
    );
    // Not a canonical UUID.
    assert_eq!(
        c.post("/routers", ROUTER, &json!({"id": "1234"}))
            .violations(),
        ["id"]
    );
    // Generated ids are v4 UUIDs and appear in Location.
    let g = c.router("gen");
    assert_eq!(g.get_version_num(), 4);
    let loc = c.post("/routers", ROUTER, &json!({}));
    assert!(
        loc.header("location")
            .unwrap()
            .starts_with(&format!("{}/routers/", f.emu.url()))
    );
}

#[test]
fn bodies_must_be_json_objects_and_unknown_fields_are_ignored() {
    let f = fixture();
    let c = &f.client;
    let r = c.request(
        "POST",
        "/routers",
        &[("Content-Type", ROUTER)],
        Some(b"{not json"),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some(ERROR));
    assert_eq!(c.post("/routers", ROUTER, &json!([1, 2])).status, 400);
    let id = c.create(
        "/routers",
        ROUTER,
        &json!({"name": "x", "noSuchField": 1, "portIds": ["junk"]}),
    );
    let v = c.get_ok(&format!("/routers/{id}"), ROUTER);
    assert!(v.get("noSuchField").is_none());
    assert_eq!(v["adminStateUp"], true, "default true");
    // Wrong JSON types name the field.
    assert_eq!(
        c.post(
            "/routers",
            ROUTER,
            &json!({"name": 5, "adminStateUp": "yes"})
        )
        .violations(),
        ["name", "adminStateUp"]
    );
}

#[test]
fn names_longer_than_255_are_rejected() {
    let f = fixture();
    let c = &f.client;
    let long = "n".repeat(256);
    for (path, ct) in [
        ("/routers", ROUTER),
        ("/bridges", BRIDGE),
        ("/chains", CHAIN),
    ] {
        assert_eq!(
            c.post(path, ct, &json!({"name": long})).violations(),
            ["name"],
            "{path}"
        );
        c.create(path, ct, &json!({"name": "n".repeat(255)}));
    }
}

#[test]
fn router_filters_must_exist_and_bridge_vxlan_ports_must_be_absent() {
    let f = fixture();
    let c = &f.client;
    let r = c.post(
        "/routers",
        ROUTER,
        &json!({"inboundFilterId": Uuid::new_v4()}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        c.post(
            "/routers",
            ROUTER,
            &json!({"loadBalancerId": Uuid::new_v4()})
        )
        .status,
        404
    );
    let chain = c.create("/chains", CHAIN, &json!({"name": "in"}));
    c.create(
        "/routers",
        ROUTER,
        &json!({"inboundFilterId": chain, "outboundFilterId": chain}),
    );
    assert_eq!(
        c.post("/bridges", BRIDGE, &json!({"vxlanPortIds": []}))
            .violations(),
        ["vxlanPortIds"]
    );
    assert_eq!(
        c.post(
            "/bridges",
            BRIDGE,
            &json!({"outboundFilterId": Uuid::new_v4()})
        )
        .status,
        404
    );
    c.create(
        "/bridges",
        BRIDGE,
        &json!({"vxlanPortIds": null, "inboundFilterId": chain}),
    );
}

#[test]
fn router_port_rules() {
    let f = fixture();
    let c = &f.client;
    let r = c.router("r");
    let path = format!("/routers/{r}/ports");
    let good = json!({"type": "Router", "networkAddress": "10.1.0.0", "networkLength": 24, "portAddress": "10.1.0.1"});
    // Discriminator.
    let mut b = good.clone();
    b.as_object_mut().unwrap().remove("type");
    assert_eq!(c.post(&path, PORT, &b).status, 400);
    b["type"] = json!("Nonsense");
    assert_eq!(c.post(&path, PORT, &b).status, 400);
    b["type"] = json!("Bridge");
    let r400 = c.post(&path, PORT, &b);
    assert_eq!(r400.status, 400);
    assert_eq!(r400.message(), "Not a router port.");
    // Addresses: strict dotted quad, lengths 0..32, required.
    for (field, bad) in [
        ("networkAddress", json!("10.1.0")),
        ("portAddress", json!("10.1.0.01")),
        ("portAddress", json!("300.1.0.1")),
        ("networkLength", json!(33)),
        ("networkLength", json!(-1)),
        ("portMac", json!("zz:00:00:00:00:00")),
        ("portSubnet", json!(["10.1.0.1/40"])),
        ("rtrPortVni", json!(0x1000000)),
    ] {
        let mut b = good.clone();
        b[field] = bad.clone();
        let v = c.post(&path, PORT, &b).violations();
        assert!(v[0].starts_with(field), "{field}={bad}: {v:?}");
    }
    for missing in ["networkAddress", "portAddress"] {
        let mut b = good.clone();
        b.as_object_mut().unwrap().remove(missing);
        assert_eq!(c.post(&path, PORT, &b).violations(), [missing]);
    }
    // Binding/linking through the create body is refused.
    let mut b = good.clone();
    b["peerId"] = json!(Uuid::new_v4());
    assert_eq!(c.post(&path, PORT, &b).violations(), ["peerId"]);
    // Router must exist.
    let r404 = c.post(&format!("/routers/{}/ports", Uuid::new_v4()), PORT, &good);
    assert_eq!(r404.status, 404);
    assert_eq!(c.post("/routers/not-a-uuid/ports", PORT, &good).status, 404);
    // Success: server-assigned fields, derived subnet, Local route.
    let p = c.create(&path, PORT, &good);
    let v = c.port(p);
    assert_eq!(v["type"], "Router");
    assert_eq!(v["deviceId"], json!(r));
    assert_eq!(v["portSubnet"], json!(["10.1.0.1/24"]));
    assert!(v["tunnelKey"].as_u64().unwrap() > 0);
    assert_eq!(v["portMac"].as_str().unwrap().len(), 17);
    let routes = c.get_ok(&format!("/routers/{r}/routes"), ROUTES);
    assert_eq!(routes.as_array().unwrap().len(), 1);
    let local = &routes[0];
    assert_eq!(
        (
            &local["type"],
            &local["dstNetworkAddr"],
            &local["dstNetworkLength"],
            &local["nextHopPort"],
            &local["srcNetworkAddr"]
        ),
        (
            &json!("Local"),
            &json!("10.1.0.1"),
            &json!(32),
            &json!(p),
            &json!("0.0.0.0")
        )
    );
    let p2 = c.create(
        &path,
        PORT,
        &json!({"type": "Router", "networkAddress": "10.2.0.0", "networkLength": 24,
        "portAddress": "10.2.0.1", "portMac": "02:00:00:00:00:01"}),
    );
    assert_eq!(c.port(p2)["portMac"], "02:00:00:00:00:01");
    assert_ne!(c.port(p2)["tunnelKey"], v["tunnelKey"]);
}

#[test]
fn bridge_port_rules() {
    let f = fixture();
    let c = &f.client;
    let b = c.bridge("b");
    let path = format!("/bridges/{b}/ports");
    let r = c.post(&path, PORT, &json!({"type": "Router"}));
    assert_eq!(r.status, 400);
    assert_eq!(r.message(), "Not a bridge port.");
    assert_eq!(c.post(&path, PORT, &json!({})).status, 400, "missing type");
    assert_eq!(
        c.post(&path, PORT, &json!({"type": "Bridge", "vlanId": 5000}))
            .violations(),
        ["vlanId"]
    );
    assert_eq!(
        c.post(
            &format!("/bridges/{}/ports", Uuid::new_v4()),
            PORT,
            &json!({"type": "Bridge"})
        )
        .status,
        404
    );
    let p = c.create(&path, PORT, &json!({"type": "Bridge", "vlanId": null}));
    let v = c.port(p);
    assert_eq!(v["vlanId"], 0);
    assert_eq!(v["deviceId"], json!(b));
    assert!(
        v.get("bridgeId").is_none(),
        "bridgeId is hidden in MidoNet's JSON"
    );
    assert_eq!(
        c.get_ok(&format!("/bridges/{b}/ports"), PORTS)[0]["id"],
        json!(p)
    );
}

#[test]
fn link_rules() {
    let f = fixture();
    let c = &f.client;
    let r = c.router("r");
    let a = c.router_port(r, "10.0.0.0", 24, "10.0.0.1");
    let b = c.router_port(f.provider, "10.0.0.0", 24, "10.0.0.2");
    let x = c.router_port(f.provider, "10.9.0.0", 24, "10.9.0.2");
    // Unknown ports.
    assert_eq!(c.link(a, Uuid::new_v4()).status, 404);
    assert_eq!(c.link(Uuid::new_v4(), a).status, 404);
    // portId in the body: MidoNet fails with 500 and links nothing.
    let r500 = c.post(
        &format!("/ports/{a}/link"),
        LINK,
        &json!({"portId": a, "peerId": b}),
    );
    assert_eq!(r500.status, 500);
    assert_eq!(c.port(a)["peerId"], json!(null));
    assert_eq!(
        c.post(&format!("/ports/{a}/link"), LINK, &json!({}))
            .violations(),
        ["peerId"]
    );
    // Self link.
    let r409 = c.link(a, a);
    assert_eq!(r409.status, 409);
    let ok = c.link(a, b);
    assert_eq!(ok.status, 201);
    assert!(ok.header("location").is_none());
    assert_eq!(c.port(a)["peerId"], json!(b));
    assert_eq!(c.port(b)["peerId"], json!(a));
    // Already linked, either side.
    for (p, q) in [(a, x), (x, b), (a, b)] {
        let r = c.link(p, q);
        assert_eq!(r.status, 409);
        assert_eq!(r.message(), "Ports are not linkable.");
    }
    // Unlink clears both sides; idempotent; unknown port 404.
    assert_eq!(c.delete(&format!("/ports/{b}/link")).status, 204);
    assert_eq!(c.port(a)["peerId"], json!(null));
    assert_eq!(c.port(b)["peerId"], json!(null));
    assert_eq!(c.delete(&format!("/ports/{b}/link")).status, 204);
    assert_eq!(
        c.delete(&format!("/ports/{}/link", Uuid::new_v4())).status,
        404
    );
    assert_eq!(c.link(a, x).status, 201);
}

#[test]
fn route_rules() {
    let f = fixture();
    let c = &f.client;
    let r = c.router("r");
    let other = c.router("other");
    let p = c.router_port(r, "10.0.0.0", 24, "10.0.0.1");
    let q = c.router_port(other, "10.0.0.0", 24, "10.0.0.2");
    let path = format!("/routers/{r}/routes");
    let good = json!({"srcNetworkAddr": "0.0.0.0", "srcNetworkLength": 0, "dstNetworkAddr": "10.5.0.0",
        "dstNetworkLength": 16, "type": "Normal", "nextHopPort": p, "weight": 100});
    for missing in ["dstNetworkAddr", "srcNetworkAddr", "type"] {
        let mut b = good.clone();
        b.as_object_mut().unwrap().remove(missing);
        assert_eq!(c.post(&path, ROUTE, &b).violations(), [missing]);
    }
    for (field, bad) in [
        ("type", json!("Sideways")),
        ("dstNetworkAddr", json!("10.5.0.0/16")),
        ("dstNetworkLength", json!(33)),
        ("srcNetworkLength", json!(-1)),
        ("nextHopGateway", json!("10.0.0")),
        ("weight", json!(-1)),
    ] {
        let mut b = good.clone();
        b[field] = bad.clone();
        assert_eq!(
            c.post(&path, ROUTE, &b).violations(),
            [field],
            "{field}={bad}"
        );
    }
    let msg = "This type of route requires a next hop port that is a port on the same router.";
    for hop in [json!(null), json!(q), json!(Uuid::new_v4())] {
        let mut b = good.clone();
        b["nextHopPort"] = hop.clone();
        let resp = c.post(&path, ROUTE, &b);
        assert_eq!(resp.status, 400, "nextHopPort {hop}");
        assert_eq!(resp.message(), msg);
    }
    // Router must exist.
    assert_eq!(
        c.post(&format!("/routers/{}/routes", Uuid::new_v4()), ROUTE, &good)
            .status,
        404
    );
    // BlackHole needs no port and keeps its router; an unknown port is 404.
    let bh = c.create(
        &path,
        ROUTE,
        &json!({"srcNetworkAddr": "0.0.0.0", "dstNetworkAddr": "10.66.0.0",
        "dstNetworkLength": 16, "type": "BlackHole"}),
    );
    assert_eq!(
        c.get_ok(&format!("/routes/{bh}"), ROUTE)["routerId"],
        json!(r)
    );
    let mut b = good.clone();
    b["type"] = json!("Reject");
    b["nextHopPort"] = json!(Uuid::new_v4());
    assert_eq!(c.post(&path, ROUTE, &b).status, 404);
    let n = c.create(&path, ROUTE, &good);
    let v = c.get_ok(&format!("/routes/{n}"), ROUTE);
    assert_eq!(
        (
            v["routerId"].clone(),
            v["weight"].clone(),
            v["learned"].clone()
        ),
        (json!(r), json!(100), json!(false))
    );
    // Deletes are 204 even for unknown ids (both paths).
    assert_eq!(c.delete(&format!("/routes/{}", Uuid::new_v4())).status, 204);
    assert_eq!(
        c.delete(&format!("/routers/{}/routes/{n}", Uuid::new_v4()))
            .status,
        204
    );
    assert_eq!(c.get(&format!("/routes/{n}"), ROUTE).status, 404);
}

#[test]
fn rule_rules() {
    let f = fixture();
    let c = &f.client;
    let ch = c.create("/chains", CHAIN, &json!({"name": "c"}));
    let path = format!("/chains/{ch}/rules");
    assert_eq!(
        c.post(&path, RULE, &json!({"position": 1})).status,
        400,
        "missing type"
    );
    assert_eq!(
        c.post(&path, RULE, &json!({"type": "continue"})).status,
        400,
        "not a rule type"
    );
    assert_eq!(
        c.post(
            &format!("/chains/{}/rules", Uuid::new_v4()),
            RULE,
            &json!({"type": "accept"})
        )
        .status,
        404
    );
    // Position 1..len+1.
    let pos = c.post(&path, RULE, &json!({"type": "accept", "position": 2}));
    assert_eq!(pos.status, 400);
    assert_eq!(pos.message(), "Position exceeds number of rules in chain");
    assert_eq!(
        c.post(&path, RULE, &json!({"type": "accept", "position": 0}))
            .violations(),
        ["position"]
    );
    let first = c.create(
        &path,
        RULE,
        &json!({"type": "accept", "matchReturnFlow": true}),
    );
    let second = c.create(&path, RULE, &json!({"type": "drop", "position": 1}));
    let list = c.get_ok(&path, RULES);
    assert_eq!(
        (list[0]["id"].clone(), list[1]["id"].clone()),
        (json!(second), json!(first))
    );
    assert_eq!(
        (list[0]["position"].clone(), list[1]["position"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(list[1]["fragmentPolicy"], "any", "default without tp*");
    // Conditions.
    for (field, bad) in [
        ("nwSrcAddress", json!("1.2.3")),
        ("nwDstLength", json!(40)),
        ("dlType", json!(0x0100)),
        ("dlSrc", json!("00:11")),
        ("fragmentPolicy", json!("some")),
        ("inPorts", json!(["nope"])),
    ] {
        let v = c
            .post(&path, RULE, &json!({"type": "accept", field: bad}))
            .violations();
        assert!(v[0].starts_with(field), "{field}={bad}: {v:?}");
    }
    assert_eq!(
        c.post(
            &path,
            RULE,
            &json!({"type": "accept", "tpDst": {"start": 0, "end": 80}})
        )
        .violations(),
        ["tpDst.start"]
    );
    assert_eq!(
        c.post(
            &path,
            RULE,
            &json!({"type": "accept", "tpDst": {"start": 80, "end": 80}, "fragmentPolicy": "any"})
        )
        .violations(),
        ["fragmentPolicy"]
    );
    let tp = c.create(
        &path,
        RULE,
        &json!({"type": "accept", "tpDst": {"start": 80, "end": 80}}),
    );
    assert_eq!(
        c.get_ok(&format!("/rules/{tp}"), RULE)["fragmentPolicy"],
        "header"
    );
    // NAT.
    assert_eq!(
        c.post(&path, RULE, &json!({"type": "rev_snat"}))
            .violations(),
        ["flowAction"]
    );
    assert_eq!(
        c.post(
            &path,
            RULE,
            &json!({"type": "rev_snat", "flowAction": "jump"})
        )
        .violations(),
        ["flowAction"]
    );
    c.create(
        &path,
        RULE,
        &json!({"type": "rev_snat", "flowAction": "continue"}),
    );
    let snat = |targets: serde_json::Value, fp: serde_json::Value| json!({"type": "snat", "flowAction": "accept", "natTargets": targets, "fragmentPolicy": fp});
    let range = json!([{"addressFrom": "172.16.0.3", "addressTo": "172.16.0.3", "portFrom": 1024, "portTo": 65535}]);
    assert_eq!(
        c.post(&path, RULE, &snat(json!([]), json!("unfragmented")))
            .violations(),
        ["natTargets"]
    );
    assert_eq!(
        c.post(&path, RULE, &snat(json!(null), json!("unfragmented")))
            .violations(),
        ["natTargets"]
    );
    assert_eq!(
        c.post(
            &path,
            RULE,
            &snat(json!([{"addressFrom": "1.2.3.4"}]), json!("unfragmented"))
        )
        .violations(),
        ["natTargets[0].addressTo"]
    );
    assert_eq!(
        c.post(&path, RULE, &snat(range.clone(), json!("any")))
            .violations(),
        ["fragmentPolicy"]
    );
    let s = c.create(&path, RULE, &snat(range.clone(), json!(null)));
    assert_eq!(
        c.get_ok(&format!("/rules/{s}"), RULE)["fragmentPolicy"],
        "unfragmented"
    );
    // A floating IP may keep "any".
    let fip =
        json!([{"addressFrom": "1.2.3.4", "addressTo": "1.2.3.4", "portFrom": 0, "portTo": 0}]);
    c.create(&path, RULE, &snat(fip, json!("any")));
    // Jump.
    let j = c.post(&path, RULE, &json!({"type": "jump"}));
    assert_eq!(j.status, 400);
    assert_eq!(j.message(), "Jump rule missing chain identifier");
    assert_eq!(
        c.post(
            &path,
            RULE,
            &json!({"type": "jump", "jumpChainId": Uuid::new_v4()})
        )
        .status,
        404
    );
    let target = c.create("/chains", CHAIN, &json!({"name": "t"}));
    let jr = c.create(&path, RULE, &json!({"type": "jump", "jumpChainId": target}));
    assert_eq!(
        c.get_ok(&format!("/rules/{jr}"), RULE)["jumpChainId"],
        json!(target)
    );
    // Rule deletes are 404 when unknown.
    assert_eq!(c.delete(&format!("/rules/{}", Uuid::new_v4())).status, 404);
    let before = c.get_ok(&path, RULES).as_array().unwrap().len();
    assert_eq!(c.delete(&format!("/rules/{first}")).status, 204);
    let after = c.get_ok(&path, RULES);
    let after = after.as_array().unwrap();
    assert_eq!(after.len(), before - 1);
    assert!(after.iter().all(|r| r["id"] != json!(first)));
    // Rules without a position went to the front; positions stay 1..n.
    assert_eq!(after[0]["id"], json!(jr));
    assert_eq!(after.last().unwrap()["id"], json!(second));
    assert!(
        after
            .iter()
            .enumerate()
            .all(|(i, r)| r["position"] == json!(i + 1))
    );
}

#[test]
fn binding_checks_run_in_midonet_order() {
    let lonely = Uuid::new_v4();
    let f = fixture_with(
        EmulatorOptions::default().host(HostSpec::outside_tunnel_zone(lonely, "no-tz")),
    );
    let c = &f.client;
    let b = c.bridge("b");
    let p = c.bridge_port(b);
    let q = c.bridge_port(b);
    // Body first: required fields and interface-name rules.
    let path = format!("/hosts/{}/ports", f.host);
    assert_eq!(
        c.post(&path, BINDING, &json!({"interfaceName": "vif1"}))
            .violations(),
        ["portId"]
    );
    assert_eq!(
        c.post(&path, BINDING, &json!({"portId": p})).violations(),
        ["interfaceName"]
    );
    for bad in ["", "sixteen-chars-xx", "a/b", "a b", "..", "eth0:1"] {
        assert_eq!(
            c.bind(f.host, p, bad).violations(),
            ["interfaceName"],
            "{bad:?}"
        );
    }
    // Host → tunnel zone → port → already bound → name in use.
    let unknown_host = c.bind(Uuid::new_v4(), Uuid::new_v4(), "vif1");
    assert_eq!(unknown_host.status, 404, "host checked before the port");
    let tz = c.bind(lonely, Uuid::new_v4(), "vif1");
    assert_eq!(tz.status, 409);
    assert_eq!(
        tz.message(),
        "The specified host is not in any tunnel zone."
    );
    assert_eq!(c.bind(f.host, Uuid::new_v4(), "vif1").status, 404);
    assert_eq!(c.bind(f.host, p, "vif1").status, 201);
    let again = c.bind(f.host, p, "vif2");
    assert_eq!(again.status, 409);
    assert_eq!(
        again.message(),
        format!("Port {p} is already bound to an interface")
    );
    let name = c.bind(f.host, q, "vif1");
    assert_eq!(name.status, 409);
    assert_eq!(name.message(), "Interface vif1 is already bound to a port.");
    // The same name on another host is fine.
    let other = Uuid::new_v4();
    f.emu.add_host(HostSpec::new(other, "node-2"));
    assert_eq!(c.bind(other, q, "vif1").status, 201);
    // A linked (interior) port is refused by default.
    let r = c.router("r");
    let rp = c.router_port(r, "10.0.0.0", 24, "10.0.0.1");
    let bp = c.bridge_port(b);
    assert_eq!(c.link(rp, bp).status, 201);
    assert_eq!(c.bind(f.host, bp, "vif3").status, 409);
    // Binding shows on the port and on the host.
    let v = c.port(p);
    assert_eq!(
        (v["hostId"].clone(), v["interfaceName"].clone()),
        (json!(f.host), json!("vif1"))
    );
    let one = c.get_ok(&format!("/hosts/{}/ports/{p}", f.host), BINDING);
    assert_eq!(one["portId"], json!(p));
    assert_eq!(
        c.get(&format!("/hosts/{other}/ports/{p}"), BINDING).status,
        404
    );
    assert_eq!(
        c.get(&format!("/hosts/{}/ports", Uuid::new_v4()), BINDINGS)
            .status,
        404
    );
    // Unbind: port must exist, host is not checked.
    assert_eq!(
        c.delete(&format!("/hosts/{}/ports/{}", f.host, Uuid::new_v4()))
            .status,
        404
    );
    assert_eq!(
        c.delete(&format!("/hosts/{}/ports/{p}", Uuid::new_v4()))
            .status,
        204
    );
    let v = c.port(p);
    assert_eq!(
        (v["hostId"].clone(), v["interfaceName"].clone()),
        (json!(null), json!(null))
    );
    assert_eq!(v["previousHostId"], json!(f.host));
    assert_eq!(
        c.bind(f.host, p, "vif1").status,
        201,
        "rebinding after unbind"
    );
}

#[test]
fn linked_port_binding_is_allowed_when_configured_like_5x() {
    let f = fixture_with(EmulatorOptions::default().reject_linked_port_binding(false));
    let c = &f.client;
    let r = c.router("r");
    let rp = c.router_port(r, "10.0.0.0", 24, "10.0.0.1");
    let b = c.bridge("b");
    let bp = c.bridge_port(b);
    assert_eq!(c.link(rp, bp).status, 201);
    assert_eq!(c.bind(f.host, bp, "vif3").status, 201);
}

#[test]
fn deletes_404_or_204_as_midonet_does() {
    let f = fixture();
    let c = &f.client;
    let u = Uuid::new_v4();
    for (path, status) in [
        (format!("/routers/{u}"), 204),
        (format!("/routes/{u}"), 204),
        (format!("/bridges/{u}"), 404),
        (format!("/chains/{u}"), 404),
        (format!("/rules/{u}"), 404),
        (format!("/ports/{u}"), 404),
        (format!("/hosts/{u}"), 404),
    ] {
        let r = c.delete(&path);
        assert_eq!(r.status, status, "DELETE {path}");
        if status == 404 {
            r.message();
        }
    }
    for path in [
        format!("/routers/{u}"),
        format!("/bridges/{u}"),
        format!("/chains/{u}"),
    ] {
        let accept = if path.starts_with("/routers") {
            ROUTER
        } else if path.starts_with("/bridges") {
            BRIDGE
        } else {
            CHAIN
        };
        assert_eq!(c.get(&path, accept).status, 404, "GET {path}");
    }
}

#[test]
fn lists_filter_by_tenant_and_tenants_are_read_only() {
    let f = fixture();
    let c = &f.client;
    c.create("/routers", ROUTER, &json!({"tenantId": "a"}));
    c.create("/routers", ROUTER, &json!({"tenantId": "b"}));
    c.create("/bridges", BRIDGE, &json!({"tenantId": "a"}));
    c.create("/chains", CHAIN, &json!({"tenantId": "c"}));
    assert_eq!(
        c.get_ok("/routers?tenant_id=a", ROUTERS)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        c.get_ok("/routers", ROUTERS).as_array().unwrap().len(),
        3,
        "with the provider router"
    );
    assert_eq!(
        c.get_ok("/bridges?tenant_id=b", BRIDGES)
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        c.get_ok("/chains?tenant_id=c", CHAINS)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let tenants = c.get_ok(
        "/tenants",
        "application/vnd.org.midonet.collection.Tenant-v2+json",
    );
    let ids: Vec<_> = tenants
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    assert_eq!(ids, [json!("a"), json!("b"), json!("c")]);
    assert_eq!(
        c.get("/tenants/a", "application/vnd.org.midonet.Tenant-v2+json")
            .status,
        200
    );
    assert_eq!(
        c.get("/tenants/zz", "application/vnd.org.midonet.Tenant-v2+json")
            .status,
        404
    );
    let r = c.post("/tenants", "application/json", &json!({"id": "x"}));
    assert_eq!(r.status, 405);
    assert_eq!(
        r.message(),
        "Tenants cannot be created, updated or deleted via the REST API."
    );
    assert_eq!(c.delete("/tenants/a").status, 405);
    // Hosts.
    let hosts = c.get_ok(
        "/hosts",
        "application/vnd.org.midonet.collection.Host-v3+json",
    );
    assert_eq!(hosts[0]["id"], json!(f.host));
    assert_eq!(
        c.get_ok(&format!("/hosts/{}", f.host), HOST)["name"],
        "node-1"
    );
    // Unknown paths and methods.
    assert_eq!(c.get("/nothing", "application/json").status, 404);
    assert_eq!(c.request("PUT", "/routers", &[], None).status, 405);
}
