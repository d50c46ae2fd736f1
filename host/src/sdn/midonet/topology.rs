//! The MidoNet objects of a tenant, as REST calls: plans (ids chosen up
//! front), idempotent creation in a fixed order, and teardown.
//!
//! Creation is idempotent because every object carries a client-generated
//! id: re-POSTing an object that exists answers 409, which
//! [`Client::create`] confirms with a GET; a link or binding that is already
//! in place is confirmed by reading the port. So resuming a half-built
//! topology is the same code path as building it. A 409 whose read-back
//! finds nothing in place is MidoNet giving up on a concurrent modification:
//! the write is sent again, bounded ([`Client::create_settled`]).
//!
//! The provider router gets one route per tenant: the tenant's SNAT address
//! (`link.2/32`). Never a route to a tenant subnet: tenants' subnets may
//! overlap (per-tenant address spaces), and MidoNet spreads flows over equal
//! routes by a hash of the connection, so provider-side traffic to a pod
//! address would reach the wrong tenant for some flows. Pods are reached
//! from the provider side only through their tenant's SNAT (return flows),
//! as with the seed plugin.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Value, json};
use uuid::Uuid;

use super::client::{ApiError, Client, Resource, Settled};
use super::records::{BridgeRecord, Phase, PortRecord, TenantRecord};

/// A fresh plan for a tenant's router part on link network `link`.
pub fn plan_tenant(tenant: &str, link: Ipv4Net) -> TenantRecord {
    let id = Uuid::new_v4;
    TenantRecord {
        tenant: tenant.to_owned(),
        phase: Phase::Creating,
        in_chain: id(),
        out_chain: id(),
        router: id(),
        link,
        provider_port: id(),
        tenant_port: id(),
        default_route: id(),
        provider_route: id(),
        return_rule: id(),
        snat_rule: id(),
        rev_snat_rule: id(),
        bridges: Vec::new(),
    }
}

/// A fresh plan for the bridge of `subnet` with router address `gateway`.
pub fn plan_bridge(subnet: Ipv4Net, gateway: Ipv4Addr) -> BridgeRecord {
    let id = Uuid::new_v4;
    BridgeRecord {
        subnet,
        gateway,
        phase: Phase::Creating,
        bridge: id(),
        router_port: id(),
        bridge_port: id(),
        route: id(),
        provider_route: None,
    }
}

/// Object names carry this prefix, so `tenetctl midonet check` can tell
/// tenet's objects from an operator's.
pub const NAME_PREFIX: &str = "tenet:";

fn name(tenant: &str, what: &str) -> String {
    // MidoNet caps names at 255 characters; tenant ids can be longer.
    let mut n = format!("{NAME_PREFIX}{tenant}:{what}");
    if n.len() > 255 {
        let mut cut = 255 - what.len() - 1;
        while !n.is_char_boundary(cut) {
            cut -= 1;
        }
        n = format!("{}:{what}", &n[..cut]);
    }
    n
}

fn router_port(id: Uuid, net: Ipv4Net, addr: Ipv4Addr) -> Value {
    json!({
        "id": id,
        "type": "Router",
        "adminStateUp": true,
        "networkAddress": net.network().to_string(),
        "networkLength": net.prefix_len(),
        "portAddress": addr.to_string(),
    })
}

fn route(id: Uuid, router: Uuid, dst: Ipv4Net, port: Uuid, gw: Option<Ipv4Addr>) -> Value {
    let mut r = json!({
        "id": id,
        "routerId": router,
        "type": "Normal",
        "srcNetworkAddr": "0.0.0.0",
        "srcNetworkLength": 0,
        "dstNetworkAddr": dst.network().to_string(),
        "dstNetworkLength": dst.prefix_len(),
        "nextHopPort": port,
        "weight": 100,
    });
    if let Some(g) = gw {
        r["nextHopGateway"] = json!(g.to_string());
    }
    r
}

/// `POST path` of an object with id `id`, confirmed by `GET confirm/<id>`
/// on 409.
fn create(
    api: &Client,
    r: Resource,
    path: &str,
    body: &Value,
    confirm: &str,
) -> Result<(), ApiError> {
    let id = body["id"].as_str().unwrap_or_default();
    api.create(r, path, body, Some((&format!("{confirm}/{id}"), r)))
        .map(drop)
}

/// The `peerId` of a port, as MidoNet shows it.
fn peer_of(api: &Client, port: Uuid) -> Result<Option<String>, ApiError> {
    let p = api.get(Resource::Port, &format!("/ports/{port}"))?;
    Ok(p["peerId"].as_str().map(str::to_owned))
}

/// Links `port` to `peer`; an existing link between exactly these two is
/// success. A 409 with both ports unlinked is a concurrent modification:
/// sent again (bounded); a port linked elsewhere is a conflict.
fn link(api: &Client, port: Uuid, peer: Uuid) -> Result<(), ApiError> {
    let body = json!({ "peerId": peer });
    api.create_settled(
        Resource::PortLink,
        &format!("/ports/{port}/link"),
        &body,
        || match peer_of(api, port)? {
            Some(p) if p == peer.to_string() => Ok(Settled::Done),
            Some(_) => Ok(Settled::Conflict),
            None if peer_of(api, peer)?.is_some() => Ok(Settled::Conflict),
            None => Ok(Settled::Retry),
        },
    )
    .map(drop)
}

/// Creates (or completes) the router part of a tenant: 12 calls on a fresh
/// tenant, in this order.
pub fn create_base(api: &Client, provider: Uuid, t: &TenantRecord) -> Result<(), ApiError> {
    let (p_addr, t_addr) = t.link_addrs();
    let chain = |id: Uuid, what: &str| json!({ "id": id, "name": name(&t.tenant, what), "tenantId": t.tenant });
    create(
        api,
        Resource::Chain,
        "/chains",
        &chain(t.in_chain, "in"),
        "/chains",
    )?;
    create(
        api,
        Resource::Chain,
        "/chains",
        &chain(t.out_chain, "out"),
        "/chains",
    )?;
    let router = json!({
        "id": t.router,
        "name": name(&t.tenant, "router"),
        "tenantId": t.tenant,
        "adminStateUp": true,
        "inboundFilterId": t.in_chain,
        "outboundFilterId": t.out_chain,
    });
    create(api, Resource::Router, "/routers", &router, "/routers")?;
    create(
        api,
        Resource::Port,
        &format!("/routers/{provider}/ports"),
        &router_port(t.provider_port, t.link, p_addr),
        "/ports",
    )?;
    create(
        api,
        Resource::Port,
        &format!("/routers/{}/ports", t.router),
        &router_port(t.tenant_port, t.link, t_addr),
        "/ports",
    )?;
    link(api, t.tenant_port, t.provider_port)?;
    let any: Ipv4Net = Ipv4Net::default();
    create(
        api,
        Resource::Route,
        &format!("/routers/{}/routes", t.router),
        &route(t.default_route, t.router, any, t.tenant_port, Some(p_addr)),
        "/routes",
    )?;
    create(
        api,
        Resource::Route,
        &format!("/routers/{provider}/routes"),
        &route(
            t.provider_route,
            provider,
            Ipv4Net::new(t_addr, 32).expect("/32"),
            t.provider_port,
            Some(t_addr),
        ),
        "/routes",
    )?;
    let return_rule = json!({
        "id": t.return_rule, "type": "accept", "matchReturnFlow": true, "position": 1,
    });
    create(
        api,
        Resource::Rule,
        &format!("/chains/{}/rules", t.out_chain),
        &return_rule,
        "/rules",
    )?;
    let snat = json!({
        "id": t.snat_rule,
        "type": "snat",
        "flowAction": "accept",
        "outPorts": [t.tenant_port],
        "fragmentPolicy": "unfragmented",
        "natTargets": [{
            "addressFrom": t_addr.to_string(), "addressTo": t_addr.to_string(),
            "portFrom": 1024, "portTo": 65535,
        }],
        "position": 2,
    });
    create(
        api,
        Resource::Rule,
        &format!("/chains/{}/rules", t.out_chain),
        &snat,
        "/rules",
    )?;
    let rev_snat = json!({
        "id": t.rev_snat_rule,
        "type": "rev_snat",
        "flowAction": "continue",
        "inPorts": [t.tenant_port],
        "position": 1,
    });
    create(
        api,
        Resource::Rule,
        &format!("/chains/{}/rules", t.in_chain),
        &rev_snat,
        "/rules",
    )
}

/// Creates (or completes) one subnet's bridge and its link to the tenant
/// router: 5 calls. Nothing on the provider router (see the module docs).
pub fn create_bridge(api: &Client, t: &TenantRecord, b: &BridgeRecord) -> Result<(), ApiError> {
    let bridge = json!({
        "id": b.bridge,
        "name": name(&t.tenant, &format!("bridge {}", b.subnet)),
        "tenantId": t.tenant,
        "adminStateUp": true,
    });
    create(api, Resource::Bridge, "/bridges", &bridge, "/bridges")?;
    create(
        api,
        Resource::Port,
        &format!("/routers/{}/ports", t.router),
        &router_port(b.router_port, b.subnet, b.gateway),
        "/ports",
    )?;
    let bport = json!({ "id": b.bridge_port, "type": "Bridge", "adminStateUp": true });
    create(
        api,
        Resource::Port,
        &format!("/bridges/{}/ports", b.bridge),
        &bport,
        "/ports",
    )?;
    link(api, b.router_port, b.bridge_port)?;
    create(
        api,
        Resource::Route,
        &format!("/routers/{}/routes", t.router),
        &route(b.route, t.router, b.subnet, b.router_port, None),
        "/routes",
    )
}

/// Deletes the provider-router route to a tenant subnet that earlier tenet
/// builds made (see the module docs), if the record names one; gone is
/// success.
pub fn delete_legacy_provider_route(api: &Client, b: &BridgeRecord) -> Result<(), ApiError> {
    match b.provider_route {
        Some(r) => api.delete(&format!("/routes/{r}")).map(drop),
        None => Ok(()),
    }
}

/// Creates (or completes) a pod's bridge port and its binding: 2 calls.
pub fn create_port(api: &Client, p: &PortRecord) -> Result<(), ApiError> {
    let body = json!({ "id": p.port, "type": "Bridge", "adminStateUp": true });
    create(
        api,
        Resource::Port,
        &format!("/bridges/{}/ports", p.bridge),
        &body,
        "/ports",
    )?;
    let binding = json!({
        "portId": p.port,
        "hostId": p.host_id,
        "interfaceName": p.interface,
    });
    api.create_settled(
        Resource::HostInterfacePort,
        &format!("/hosts/{}/ports", p.host_id),
        &binding,
        || {
            // Already bound: fine if to exactly this host and interface.
            let got = api.get(Resource::Port, &format!("/ports/{}", p.port))?;
            if got["interfaceName"].is_string() {
                let mine = got["hostId"].as_str() == Some(&p.host_id.to_string())
                    && got["interfaceName"].as_str() == Some(p.interface.as_str());
                return Ok(if mine {
                    Settled::Done
                } else {
                    Settled::Conflict
                });
            }
            // Unbound: another port holding the interface is a conflict;
            // otherwise a concurrent modification (or a host that is not
            // in a tunnel zone yet: worth trying again later too).
            let bound = api.list(
                Resource::HostInterfacePort,
                &format!("/hosts/{}/ports", p.host_id),
            )?;
            let taken = bound
                .iter()
                .any(|b| b["interfaceName"].as_str() == Some(p.interface.as_str()));
            Ok(if taken {
                Settled::Conflict
            } else {
                Settled::Retry
            })
        },
    )
    .map(drop)
}

/// Deletes a pod's port (its binding goes with it). Gone is success.
pub fn delete_port(api: &Client, p: &PortRecord) -> Result<(), ApiError> {
    api.delete(&format!("/ports/{}", p.port)).map(drop)
}

/// Deletes one subnet's objects: a legacy provider route, the router port
/// (its route and link go with it), the bridge (its ports go with it).
pub fn teardown_bridge(api: &Client, b: &BridgeRecord) -> Result<(), ApiError> {
    delete_legacy_provider_route(api, b)?;
    api.delete(&format!("/ports/{}", b.router_port))?;
    api.delete(&format!("/bridges/{}", b.bridge))?;
    Ok(())
}

/// Deletes a tenant's whole topology, relying on MidoNet's cascades: the
/// bridges (their ports), the tenant router (its ports and routes), the
/// provider-side port (the provider routes through it), the chains (their
/// rules). Gone is success, so this resumes a teardown that stopped.
pub fn teardown_base(api: &Client, t: &TenantRecord) -> Result<(), ApiError> {
    for b in &t.bridges {
        api.delete(&format!("/bridges/{}", b.bridge))?;
    }
    api.delete(&format!("/routers/{}", t.router))?;
    api.delete(&format!("/ports/{}", t.provider_port))?;
    api.delete(&format!("/chains/{}", t.in_chain))?;
    api.delete(&format!("/chains/{}", t.out_chain))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_prefixed() {
        assert_eq!(name("acme", "router"), "tenet:acme:router");
        let long = "é".repeat(300);
        let n = name(&long, "router");
        assert!(n.len() <= 255 && n.starts_with(NAME_PREFIX) && n.ends_with(":router"));
    }

    #[test]
    fn route_bodies_carry_the_required_fields() {
        let r = route(
            Uuid::nil(),
            Uuid::nil(),
            "10.1.0.0/24".parse().unwrap(),
            Uuid::nil(),
            None,
        );
        for f in ["srcNetworkAddr", "dstNetworkAddr", "type", "nextHopPort"] {
            assert!(r.get(f).is_some(), "{f}");
        }
        assert_eq!(r["dstNetworkLength"], 24);
        assert!(r.get("nextHopGateway").is_none());
    }
}
