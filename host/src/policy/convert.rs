//! Conversions between [`crate::plan`] types and the generated WIT types.
//! One-to-one by construction: the WIT records mirror the plan types.

use super::bindings::types as w;
use crate::plan as p;

fn kv_to(v: &[p::Kv]) -> Vec<w::Kv> {
    v.iter()
        .map(|k| w::Kv {
            key: k.key.clone(),
            value: k.value.clone(),
        })
        .collect()
}

fn kv_from(v: Vec<w::Kv>) -> Vec<p::Kv> {
    v.into_iter()
        .map(|k| p::Kv {
            key: k.key,
            value: k.value,
        })
        .collect()
}

fn dns_to(d: &p::Dns) -> w::Dns {
    w::Dns {
        nameservers: d.nameservers.clone(),
        domain: d.domain.clone(),
        search: d.search.clone(),
        options: d.options.clone(),
    }
}

fn dns_from(d: w::Dns) -> p::Dns {
    p::Dns {
        nameservers: d.nameservers,
        domain: d.domain,
        search: d.search,
        options: d.options,
    }
}

/// The request record a stage receives.
pub fn request_to_wit(r: &p::Request) -> w::Request {
    w::Request {
        command: match r.command {
            p::Command::Add => w::Command::Add,
            p::Command::Check => w::Command::Check,
            p::Command::Del => w::Command::Del,
        },
        container_id: r.container_id.clone(),
        ifname: r.ifname.clone(),
        netns: r.netns.clone(),
        network: r.network.clone(),
        pod_namespace: r.pod_namespace.clone(),
        pod_name: r.pod_name.clone(),
        pod_uid: r.pod_uid.clone(),
        cni_args: kv_to(&r.cni_args),
        args_ips: r.args_ips.clone(),
        runtime_ips: r.runtime_ips.clone(),
        mac: r.mac.clone(),
        runtime_dns: r.runtime_dns.as_ref().map(dns_to),
        port_mappings: r
            .port_mappings
            .iter()
            .map(|m| w::PortMapping {
                host_port: m.host_port,
                container_port: m.container_port,
                protocol: m.protocol.clone(),
                host_ip: m.host_ip.clone(),
            })
            .collect(),
        bandwidth: r.bandwidth.as_ref().map(|b| w::Bandwidth {
            ingress_rate: b.ingress_rate,
            ingress_burst: b.ingress_burst,
            egress_rate: b.egress_rate,
            egress_burst: b.egress_burst,
        }),
        labels: kv_to(&r.labels),
        annotations: kv_to(&r.annotations),
        extra: kv_to(&r.extra),
    }
}

fn family_to(f: p::IpFamily) -> w::IpFamily {
    match f {
        p::IpFamily::Ipv4 => w::IpFamily::Ipv4,
        p::IpFamily::Ipv6 => w::IpFamily::Ipv6,
    }
}

fn family_from(f: w::IpFamily) -> p::IpFamily {
    match f {
        w::IpFamily::Ipv4 => p::IpFamily::Ipv4,
        w::IpFamily::Ipv6 => p::IpFamily::Ipv6,
    }
}

/// A plan as a stage sees it.
pub fn plan_to_wit(plan: &p::Plan) -> w::Plan {
    w::Plan {
        tenant: plan.tenant.clone(),
        interfaces: plan
            .interfaces
            .iter()
            .map(|i| w::Interface {
                name: i.name.clone(),
                kind: match i.kind {
                    p::InterfaceKind::SdnPort => w::InterfaceKind::SdnPort,
                    p::InterfaceKind::HostLink => w::InterfaceKind::HostLink,
                },
                addresses: i
                    .addresses
                    .iter()
                    .map(|a| w::AddressRequest {
                        family: family_to(a.family),
                        pool: a.pool.as_ref().map(|p| w::Pool {
                            name: p.name.clone(),
                            supernet: p.supernet.clone(),
                            subnet_len: p.subnet_len,
                            exclude: p.exclude.clone(),
                        }),
                        static_address: a.static_address.clone(),
                    })
                    .collect(),
                mac: i.mac.clone(),
                mtu: i.mtu,
            })
            .collect(),
        routes: plan
            .routes
            .iter()
            .map(|r| w::Route {
                dst: r.dst.clone(),
                interface: r.interface.clone(),
                via: match &r.via {
                    p::NextHop::SubnetGateway => w::NextHop::SubnetGateway,
                    p::NextHop::Address(a) => w::NextHop::Address(a.clone()),
                    p::NextHop::OnLink => w::NextHop::OnLink,
                },
                metric: r.metric,
                mtu: r.mtu,
            })
            .collect(),
        dns: dns_to(&plan.dns),
        sysctls: kv_to(&plan.sysctls),
        annotations: kv_to(&plan.annotations),
    }
}

/// A plan as a stage returned it.
pub fn plan_from_wit(plan: w::Plan) -> p::Plan {
    p::Plan {
        tenant: plan.tenant,
        interfaces: plan
            .interfaces
            .into_iter()
            .map(|i| p::Interface {
                name: i.name,
                kind: match i.kind {
                    w::InterfaceKind::SdnPort => p::InterfaceKind::SdnPort,
                    w::InterfaceKind::HostLink => p::InterfaceKind::HostLink,
                },
                addresses: i
                    .addresses
                    .into_iter()
                    .map(|a| p::AddressRequest {
                        family: family_from(a.family),
                        pool: a.pool.map(|p| p::Pool {
                            name: p.name,
                            supernet: p.supernet,
                            subnet_len: p.subnet_len,
                            exclude: p.exclude,
                        }),
                        static_address: a.static_address,
                    })
                    .collect(),
                mac: i.mac,
                mtu: i.mtu,
            })
            .collect(),
        routes: plan
            .routes
            .into_iter()
            .map(|r| p::Route {
                dst: r.dst,
                interface: r.interface,
                via: match r.via {
                    w::NextHop::SubnetGateway => p::NextHop::SubnetGateway,
                    w::NextHop::Address(a) => p::NextHop::Address(a),
                    w::NextHop::OnLink => p::NextHop::OnLink,
                },
                metric: r.metric,
                mtu: r.mtu,
            })
            .collect(),
        dns: dns_from(plan.dns),
        sysctls: kv_from(plan.sysctls),
        annotations: kv_from(plan.annotations),
    }
}
