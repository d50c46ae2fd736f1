//! Host-side invariants on a plan, whatever a module returned.
//!
//! [`structure`] runs after every stage, so a malformed plan is blamed on the
//! stage that produced it. [`complete`] runs once on the final plan: it also
//! requires what apply needs (a tenant, the primary interface, addresses).
//! A module can never get past these: apply only ever sees a plan that
//! passed both.
//!
//! [`structure`] parses every address, CIDR, range, gateway, MAC and name
//! server of the plan exactly once and returns the [`ValidPlan`] built from
//! them: what comes after validation reads those values and never parses a
//! plan's string again ([`super::valid`]).
//!
//! Every check reads the strings exactly as they arrived: nothing is
//! trimmed or normalised first, so what passed is what was parsed (and
//! what the stores record of a pool's exclusions). Every string has a
//! length limit and the whole plan a size limit ([`limits`]), so nothing a plan carries can grow a
//! store beyond a bound. Addresses are checked against the operator's
//! [`AddressAuthority`]; the node's own addresses and routes are checked at
//! ADD time ([`super::node`]).

use std::collections::HashSet;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use super::authority::AddressAuthority;
use super::valid::{
    AddressSpec, Exclusion, PoolSpec, StaticAddress, ValidDns, ValidInterface, ValidPlan,
    ValidRoute, Via, family_of, family_of_ip,
};
use super::{AddressRequest, InterfaceKind, IpFamily, NextHop, Plan, Pool, Request};
use crate::netns::MacAddr;

/// Size limits that keep a plan (and the work it causes) bounded.
pub mod limits {
    /// Interfaces per pod.
    pub const INTERFACES: usize = 8;
    /// Address requests per interface.
    pub const ADDRESSES: usize = 4;
    /// Routes per pod.
    pub const ROUTES: usize = 256;
    /// Entries in each DNS list.
    pub const DNS_ENTRIES: usize = 32;
    /// Sysctls per pod.
    pub const SYSCTLS: usize = 64;
    /// Annotations per plan.
    pub const ANNOTATIONS: usize = 64;
    /// Excluded ranges per pool.
    pub const EXCLUDES: usize = 64;
    /// Length of any free-form string in a plan.
    pub const STRING_BYTES: usize = 4096;
    /// Length of an address, a CIDR or an `a-b` range as text (the longest
    /// IPv6 range is 79 bytes).
    pub const ADDRESS_TEXT_BYTES: usize = 96;
    /// All the strings of a plan together. A plan at every other limit
    /// stays well under it; it bounds what one attachment can put in a
    /// store or record, and what the host reads out of a stage at all.
    pub const PLAN_BYTES: usize = 64 * 1024;
}

/// A plan that breaks an invariant; `field` is a path such as `routes[2].dst`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PlanError {
    /// Where in the plan.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn fail<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError {
        field: field.into(),
        message: message.into(),
    })
}

/// Both checks: [`structure`], then [`complete`]; the typed plan.
pub fn validate(
    plan: &Plan,
    request: &Request,
    authority: &AddressAuthority,
) -> Result<ValidPlan, PlanError> {
    let valid = structure(plan, authority)?;
    complete(&valid, request)?;
    Ok(valid)
}

/// The end of an ADD's planning, given the final wire `plan` and `valid`,
/// what [`structure`] made of it (the pipeline keeps the last stage's, so
/// the final plan is not parsed twice): [`complete`], then the node's
/// host-link pool given to every host link
/// ([`AddressAuthority::assign_host_links`]) in the typed plan (what is
/// applied) and, as text, in the wire plan (what is shown).
pub fn finish(
    plan: &mut Plan,
    mut valid: ValidPlan,
    request: &Request,
    authority: &AddressAuthority,
) -> Result<ValidPlan, PlanError> {
    complete(&valid, request)?;
    authority.assign_host_links(&mut valid);
    // The wire plan shows what is applied: the same interfaces, in order.
    for (w, v) in plan.interfaces.iter_mut().zip(&valid.interfaces) {
        if w.kind == InterfaceKind::HostLink {
            for (wa, va) in w.addresses.iter_mut().zip(&v.addresses) {
                wa.pool = va.pool.as_ref().map(PoolSpec::to_wire);
                wa.static_address = None;
            }
        }
    }
    Ok(valid)
}

/// The bytes of every string in a plan together (what [`limits::PLAN_BYTES`]
/// bounds).
pub fn text_bytes(plan: &Plan) -> usize {
    let kv = |v: &[super::Kv]| v.iter().map(|k| k.key.len() + k.value.len()).sum::<usize>();
    let strs = |v: &[String]| v.iter().map(String::len).sum::<usize>();
    let mut n = plan.tenant.len();
    for i in &plan.interfaces {
        n += i.name.len() + i.mac.as_ref().map_or(0, String::len);
        for a in &i.addresses {
            n += a.static_address.as_ref().map_or(0, String::len);
            if let Some(p) = &a.pool {
                n += p.name.len() + p.supernet.len() + strs(&p.exclude);
            }
        }
    }
    for r in &plan.routes {
        n += r.dst.len() + r.interface.len();
        if let NextHop::Address(a) = &r.via {
            n += a.len();
        }
    }
    n += strs(&plan.dns.nameservers)
        + plan.dns.domain.as_ref().map_or(0, String::len)
        + strs(&plan.dns.search)
        + strs(&plan.dns.options);
    n + kv(&plan.sysctls) + kv(&plan.annotations)
}

/// Checks that everything present is well-formed and bounded, and that every
/// address lies where the operator allows it; returns the plan typed. An
/// incomplete plan (no tenant yet, no addresses yet) passes.
pub fn structure(plan: &Plan, authority: &AddressAuthority) -> Result<ValidPlan, PlanError> {
    let bytes = text_bytes(plan);
    if bytes > limits::PLAN_BYTES {
        return fail(
            "plan",
            format!(
                "{bytes} bytes of text, at most {} allowed",
                limits::PLAN_BYTES
            ),
        );
    }
    if !plan.tenant.is_empty() && !valid_tenant(&plan.tenant) {
        return fail(
            "tenant",
            format!(
                "{:?} is not a safe tenant id (1-63 of [a-z0-9-], starting and ending with a letter or digit)",
                clip(&plan.tenant)
            ),
        );
    }
    check_len("interfaces", plan.interfaces.len(), limits::INTERFACES)?;
    check_len("routes", plan.routes.len(), limits::ROUTES)?;
    check_len("sysctls", plan.sysctls.len(), limits::SYSCTLS)?;
    check_len("annotations", plan.annotations.len(), limits::ANNOTATIONS)?;

    let mut names = HashSet::new();
    let mut interfaces = Vec::with_capacity(plan.interfaces.len());
    for (i, ifc) in plan.interfaces.iter().enumerate() {
        let at = |f: &str| format!("interfaces[{i}].{f}");
        if let Err(m) = check_ifname(&ifc.name) {
            return fail(at("name"), m);
        }
        if !names.insert(ifc.name.as_str()) {
            return fail(at("name"), format!("duplicate interface {:?}", ifc.name));
        }
        let mac = ifc
            .mac
            .as_deref()
            .map(|m| {
                parse_unicast_mac(m).ok_or_else(|| PlanError {
                    field: at("mac"),
                    message: format!("{:?} is not a unicast MAC address", clip(m)),
                })
            })
            .transpose()?;
        if let Some(mtu) = ifc.mtu
            && !(68..=65535).contains(&mtu)
        {
            return fail(at("mtu"), format!("{mtu} is outside 68..=65535"));
        }
        check_len(&at("addresses"), ifc.addresses.len(), limits::ADDRESSES)?;
        let mut addresses = Vec::with_capacity(ifc.addresses.len());
        for (j, a) in ifc.addresses.iter().enumerate() {
            addresses.push(check_address(
                &format!("interfaces[{i}].addresses[{j}]"),
                ifc.kind,
                a,
                authority,
            )?);
        }
        interfaces.push(ValidInterface {
            name: ifc.name.clone(),
            kind: ifc.kind,
            addresses,
            mac,
            mtu: ifc.mtu,
        });
    }

    let routes = plan
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| check_route(i, r, &interfaces))
        .collect::<Result<Vec<_>, _>>()?;

    check_len(
        "dns.nameservers",
        plan.dns.nameservers.len(),
        limits::DNS_ENTRIES,
    )?;
    check_len("dns.search", plan.dns.search.len(), limits::DNS_ENTRIES)?;
    check_len("dns.options", plan.dns.options.len(), limits::DNS_ENTRIES)?;
    let mut nameservers = Vec::with_capacity(plan.dns.nameservers.len());
    for (i, ns) in plan.dns.nameservers.iter().enumerate() {
        let Ok(ip) = IpAddr::from_str(ns) else {
            return fail(
                format!("dns.nameservers[{i}]"),
                format!("{:?} is not an IP address", clip(ns)),
            );
        };
        nameservers.push(ip);
    }
    for (i, d) in plan
        .dns
        .search
        .iter()
        .chain(plan.dns.domain.iter())
        .enumerate()
    {
        if !valid_domain(d) {
            return fail(
                format!("dns.search[{i}]"),
                format!("{:?} is not a domain name", clip(d)),
            );
        }
    }
    for (i, o) in plan.dns.options.iter().enumerate() {
        if o.is_empty() || o.len() > 64 || !o.bytes().all(|b| b.is_ascii_graphic()) {
            return fail(
                format!("dns.options[{i}]"),
                format!("{:?} is not a resolver option", clip(o)),
            );
        }
    }

    for (i, s) in plan.sysctls.iter().enumerate() {
        check_sysctl(plan, &s.key, &s.value).map_err(|m| PlanError {
            field: format!("sysctls[{i}]"),
            message: m,
        })?;
    }
    for (i, a) in plan.annotations.iter().enumerate() {
        if a.key.is_empty()
            || a.key.len() > 253
            || !a.key.bytes().all(|b| b.is_ascii_graphic())
            || a.value.len() > limits::STRING_BYTES
            || a.value.chars().any(char::is_control)
        {
            return fail(
                format!("annotations[{i}]"),
                format!(
                    "key must be 1-253 printable ASCII bytes and value at most {} bytes without control characters",
                    limits::STRING_BYTES
                ),
            );
        }
        if a.key.starts_with("tenet.io/") {
            check_backend_annotation(plan, i, a).map_err(|m| PlanError {
                field: format!("annotations[{i}]"),
                message: m,
            })?;
        }
    }
    Ok(ValidPlan {
        tenant: plan.tenant.clone(),
        interfaces,
        routes,
        dns: ValidDns {
            nameservers,
            domain: plan.dns.domain.clone(),
            search: plan.dns.search.clone(),
            options: plan.dns.options.clone(),
        },
        sysctls: plan.sysctls.clone(),
        annotations: plan.annotations.clone(),
    })
}

/// One route: a canonical destination, a planned interface, a next hop
/// that interface can reach (a gateway on one of its connected subnets).
fn check_route(
    i: usize,
    r: &super::Route,
    interfaces: &[ValidInterface],
) -> Result<ValidRoute, PlanError> {
    let at = |f: &str| format!("routes[{i}].{f}");
    let dst = parse_cidr(&r.dst).map_err(|m| PlanError {
        field: at("dst"),
        message: m,
    })?;
    let Some(ifc) = interfaces.iter().find(|v| v.name == r.interface) else {
        return fail(
            at("interface"),
            format!("{:?} is not a planned interface", clip(&r.interface)),
        );
    };
    let via = match &r.via {
        NextHop::OnLink => Via::OnLink,
        NextHop::SubnetGateway => {
            if !ifc.addresses.iter().any(|a| family_of(dst) == a.family) {
                return fail(
                    at("via"),
                    format!(
                        "{} has no {} address, so it has no subnet gateway",
                        ifc.name,
                        family_name(family_of(dst))
                    ),
                );
            }
            Via::SubnetGateway
        }
        NextHop::Address(gw) => {
            let Ok(gw_ip) = IpAddr::from_str(gw) else {
                return fail(at("via"), format!("{:?} is not an IP address", clip(gw)));
            };
            if family_of_ip(gw_ip) != family_of(dst) {
                return fail(
                    at("via"),
                    format!("gateway {gw} and destination {} differ in family", r.dst),
                );
            }
            if !connected_subnets(&ifc.addresses).any(|n| n.contains(&gw_ip)) {
                return fail(
                    at("via"),
                    format!("gateway {gw} is not on a subnet connected to {}", ifc.name),
                );
            }
            Via::Address(gw_ip)
        }
    };
    if let Some(mtu) = r.mtu
        && !(68..=65535).contains(&mtu)
    {
        return fail(at("mtu"), format!("{mtu} is outside 68..=65535"));
    }
    Ok(ValidRoute {
        dst,
        interface: r.interface.clone(),
        via,
        metric: r.metric,
        mtu: r.mtu,
    })
}

/// `tenet.io/` annotation keys are the backends' (documented in
/// docs/policy-authoring.md): only known keys, each once, with a value the
/// backend can use. A typo fails the plan instead of being ignored.
fn check_backend_annotation(plan: &Plan, i: usize, a: &crate::plan::Kv) -> Result<(), String> {
    use crate::sdn::{BACKEND_ANNOTATIONS, HOST_ALIAS, HOST_ALIAS_MAX};
    if !BACKEND_ANNOTATIONS.contains(&a.key.as_str()) {
        return Err(format!(
            "{:?} is not a tenet.io annotation a backend knows (known: {})",
            clip(&a.key),
            BACKEND_ANNOTATIONS.join(", ")
        ));
    }
    if plan.annotations[..i].iter().any(|b| b.key == a.key) {
        return Err(format!("{} is set twice", a.key));
    }
    if a.key == HOST_ALIAS
        && (a.value.is_empty()
            || a.value.len() > HOST_ALIAS_MAX
            || !a.value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()))
    {
        return Err(format!(
            "{HOST_ALIAS} must be 1-{HOST_ALIAS_MAX} printable ASCII bytes, got {:?}",
            clip(&a.value)
        ));
    }
    Ok(())
}

/// Checks what apply needs on the final (typed) plan: a tenant, the primary
/// interface (CNI_IFNAME) as an SDN port, and an address for every
/// interface.
pub fn complete(plan: &ValidPlan, request: &Request) -> Result<(), PlanError> {
    if plan.tenant.is_empty() {
        return fail("tenant", "no stage decided the tenant");
    }
    match plan.interface(&request.ifname) {
        None => {
            return fail(
                "interfaces",
                format!(
                    "the primary interface {:?} (CNI_IFNAME) is not planned",
                    request.ifname
                ),
            );
        }
        Some(i) if i.kind != super::InterfaceKind::SdnPort => {
            return fail(
                "interfaces",
                format!(
                    "the primary interface {:?} must be an sdn-port",
                    request.ifname
                ),
            );
        }
        Some(_) => {}
    }
    for (i, ifc) in plan.interfaces.iter().enumerate() {
        if ifc.addresses.is_empty() {
            return fail(
                format!("interfaces[{i}].addresses"),
                format!("{} has no address", ifc.name),
            );
        }
        for (j, a) in ifc.addresses.iter().enumerate() {
            // A host link's address always comes from the node's host-link
            // pool (`AddressAuthority::assign_host_links`).
            if ifc.kind == InterfaceKind::SdnPort
                && a.pool.is_none()
                && a.static_address.is_none_or(|s| s.prefix.is_none())
            {
                return fail(
                    format!("interfaces[{i}].addresses[{j}]"),
                    "needs a pool, or a static address with a prefix length",
                );
            }
        }
    }
    Ok(())
}

fn check_len(field: &str, n: usize, max: usize) -> Result<(), PlanError> {
    if n > max {
        return fail(field, format!("{n} entries, at most {max} allowed"));
    }
    Ok(())
}

/// Interface names the kernel accepts (dev_valid_name) and that are safe in
/// paths and nft rules.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("{:?} must be 1-15 bytes", clip(name)));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || *c == '/' || *c == ':')
    {
        return Err(format!("{name:?} contains {c:?}"));
    }
    Ok(())
}

/// Tenant ids: DNS-label-like, so they are safe in keys, names and rules.
pub fn valid_tenant(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A unicast, non-zero MAC written `aa:bb:cc:dd:ee:ff` (colons only).
fn parse_unicast_mac(mac: &str) -> Option<MacAddr> {
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for o in &mut out {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    (parts.next().is_none() && out[0] & 1 == 0 && out != [0; 6]).then_some(MacAddr(out))
}

fn valid_domain(d: &str) -> bool {
    let d = d.strip_suffix('.').unwrap_or(d);
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Canonical CIDR: parses, and has no host bits set (the kernel refuses
/// routes like 10.0.0.1/8).
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    check_address_text(s)?;
    let n = IpNet::from_str(s).map_err(|_| format!("{:?} is not a CIDR", clip(s)))?;
    if n.trunc() != n {
        return Err(format!(
            "{s} has host bits set (did you mean {}?)",
            n.trunc()
        ));
    }
    Ok(n)
}

fn family_name(f: IpFamily) -> &'static str {
    match f {
        IpFamily::Ipv4 => "IPv4",
        IpFamily::Ipv6 => "IPv6",
    }
}

/// Addresses, CIDRs and ranges are short; a longer one (padding, say) is
/// refused before it is parsed.
fn check_address_text(s: &str) -> Result<(), String> {
    if s.len() > limits::ADDRESS_TEXT_BYTES {
        return Err(format!(
            "{:?} is {} bytes, at most {} for an address",
            clip(s),
            s.len(),
            limits::ADDRESS_TEXT_BYTES
        ));
    }
    Ok(())
}

/// Parses "10.1.2.3" or "10.1.2.3/24".
fn parse_static(s: &str) -> Result<StaticAddress, String> {
    check_address_text(s)?;
    StaticAddress::parse(s).ok_or_else(|| format!("{:?} is not an address", clip(s)))
}

/// Subnets a gateway may sit on before allocation: each static address's
/// subnet and each pool's supernet (the tenant subnet is inside it; apply
/// checks again once the subnet is carved).
fn connected_subnets(addrs: &[AddressSpec]) -> impl Iterator<Item = IpNet> + '_ {
    addrs.iter().flat_map(|a| {
        let stat = a
            .static_address
            .filter(|s| s.prefix.is_some())
            .map(|s| s.net());
        stat.into_iter().chain(a.pool.as_ref().map(|p| p.supernet))
    })
}

fn check_address(
    at: &str,
    kind: InterfaceKind,
    a: &AddressRequest,
    authority: &AddressAuthority,
) -> Result<AddressSpec, PlanError> {
    let mut pool = None;
    if let Some(p) = &a.pool {
        let spec = check_pool(&format!("{at}.pool"), a.family, p)?;
        let allowed = match kind {
            InterfaceKind::SdnPort => authority.check_tenant_range(spec.supernet),
            InterfaceKind::HostLink => authority.check_host_link_range(spec.supernet),
        };
        allowed.map_err(|m| PlanError {
            field: format!("{at}.pool.supernet"),
            message: m,
        })?;
        pool = Some(spec);
    }
    if kind == InterfaceKind::HostLink {
        if a.static_address.is_some() {
            return fail(
                format!("{at}.staticAddress"),
                "a host link's address is allocated by the node from its host-link range; a plan cannot choose it",
            );
        }
        if a.pool.is_none() && authority.host_link(a.family).is_none() {
            return fail(
                format!("{at}.family"),
                format!(
                    "no {} host-link range is configured on this node (tenet.toml [addresses] host_links)",
                    family_name(a.family)
                ),
            );
        }
        return Ok(AddressSpec {
            family: a.family,
            pool,
            static_address: None,
        });
    }
    let mut static_address = None;
    if let Some(s) = &a.static_address {
        let stat = parse_static(s).map_err(|m| PlanError {
            field: format!("{at}.staticAddress"),
            message: m,
        })?;
        let ip = stat.addr;
        if family_of_ip(ip) != a.family {
            return fail(
                format!("{at}.staticAddress"),
                format!("{s} is not {}", family_name(a.family)),
            );
        }
        authority
            .check_tenant_range(stat.net())
            .map_err(|m| PlanError {
                field: format!("{at}.staticAddress"),
                message: m,
            })?;
        if let Some(p) = &pool {
            if !p.supernet.contains(&ip) {
                return fail(
                    format!("{at}.staticAddress"),
                    format!("{s} is outside pool {} ({})", p.name, p.supernet),
                );
            }
            if p.exclude.iter().any(|x| x.contains(ip)) {
                return fail(
                    format!("{at}.staticAddress"),
                    format!("{s} is in an excluded range of pool {}", p.name),
                );
            }
            if let Some(len) = stat.prefix
                && len != p.subnet_len
            {
                return fail(
                    format!("{at}.staticAddress"),
                    format!(
                        "{s} has prefix /{len} but pool {} hands out /{} subnets",
                        p.name, p.subnet_len
                    ),
                );
            }
        }
        static_address = Some(stat);
    }
    Ok(AddressSpec {
        family: a.family,
        pool,
        static_address,
    })
}

fn check_pool(at: &str, family: IpFamily, p: &Pool) -> Result<PoolSpec, PlanError> {
    if p.name.is_empty()
        || p.name.len() > 63
        || !p
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return fail(
            format!("{at}.name"),
            format!(
                "{:?} is not a pool name (1-63 of [A-Za-z0-9._-])",
                clip(&p.name)
            ),
        );
    }
    let net = parse_cidr(&p.supernet).map_err(|m| PlanError {
        field: format!("{at}.supernet"),
        message: m,
    })?;
    if family_of(net) != family {
        return fail(
            format!("{at}.supernet"),
            format!("{} is not {}", p.supernet, family_name(family)),
        );
    }
    // A subnet needs a network address, a gateway and at least one pod.
    let max_len = if family == IpFamily::Ipv4 { 30 } else { 126 };
    if p.subnet_len < net.prefix_len() || p.subnet_len > max_len {
        return fail(
            format!("{at}.subnetLen"),
            format!(
                "/{} must be between /{} (the supernet) and /{max_len}",
                p.subnet_len,
                net.prefix_len()
            ),
        );
    }
    check_len(&format!("{at}.exclude"), p.exclude.len(), limits::EXCLUDES)?;
    let mut exclude = Vec::with_capacity(p.exclude.len());
    for (k, x) in p.exclude.iter().enumerate() {
        if let Err(m) = check_address_text(x) {
            return fail(format!("{at}.exclude[{k}]"), m);
        }
        match Exclusion::parse(x) {
            Some(e) if e.family() == family => exclude.push(e),
            _ => {
                return fail(
                    format!("{at}.exclude[{k}]"),
                    format!(
                        "{:?} is not a {} CIDR or a-b range",
                        clip(x),
                        family_name(family)
                    ),
                );
            }
        }
    }
    Ok(PoolSpec {
        name: p.name.clone(),
        supernet: net,
        subnet_len: p.subnet_len,
        exclude,
    })
}

/// Sysctls a pod may set: per-interface keys of its own planned interfaces,
/// and a few namespaced net keys. Anything else could reach node-wide state.
fn check_sysctl(plan: &Plan, key: &str, value: &str) -> Result<(), String> {
    const NAMESPACED: &[&str] = &[
        "net.ipv4.ip_forward",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ping_group_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv6.conf.all.disable_ipv6",
        "net.ipv6.conf.default.disable_ipv6",
    ];
    if value.is_empty()
        || value.len() > 256
        || !value
            .bytes()
            .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
    {
        return Err(format!("value of {key:?} must be 1-256 printable bytes"));
    }
    if NAMESPACED.contains(&key) {
        return Ok(());
    }
    for fam in [
        "net.ipv4.conf.",
        "net.ipv6.conf.",
        "net.ipv4.neigh.",
        "net.ipv6.neigh.",
    ] {
        if let Some(rest) = key.strip_prefix(fam)
            && let Some((ifname, leaf)) = rest.split_once('.')
            && plan.interface(ifname).is_some()
            && !leaf.is_empty()
            && leaf
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Ok(());
        }
    }
    Err(format!(
        "{:?} is not allowed (only net.ipv4/ipv6 conf and neigh keys of planned interfaces, and namespaced keys such as net.ipv4.ip_local_port_range)",
        clip(key)
    ))
}

/// Error messages quote module output; keep them short.
fn clip(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_owned();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Command, Dns, Interface, Kv, Route};

    fn validate(p: &Plan, r: &Request) -> Result<ValidPlan, PlanError> {
        super::validate(p, r, &AddressAuthority::default())
    }

    fn structure(p: &Plan) -> Result<ValidPlan, PlanError> {
        super::structure(p, &AddressAuthority::default())
    }

    fn complete(p: &Plan, r: &Request) -> Result<(), PlanError> {
        super::complete(&structure(p)?, r)
    }

    fn request() -> Request {
        Request {
            command: Command::Add,
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            network: "net".into(),
            pod_namespace: Some("team-a".into()),
            pod_name: None,
            pod_uid: None,
            cni_args: vec![],
            args_ips: vec![],
            runtime_ips: vec![],
            mac: None,
            runtime_dns: None,
            port_mappings: vec![],
            bandwidth: None,
            labels: vec![],
            annotations: vec![],
            extra: vec![],
        }
    }

    fn pool() -> Pool {
        Pool {
            name: "pods-v4".into(),
            supernet: "10.64.0.0/12".into(),
            subnet_len: 24,
            exclude: vec!["10.64.0.0/24".into(), "10.65.0.10-10.65.0.20".into()],
        }
    }

    fn good() -> Plan {
        let mut p = Plan::initial("eth0", None, Dns::default());
        p.tenant = "acme".into();
        p.interfaces[0].addresses.push(AddressRequest {
            family: IpFamily::Ipv4,
            pool: Some(pool()),
            static_address: None,
        });
        p.interfaces.push(Interface {
            name: "eth1".into(),
            kind: InterfaceKind::HostLink,
            addresses: vec![AddressRequest {
                family: IpFamily::Ipv4,
                pool: Some(Pool {
                    name: "host-link-v4".into(),
                    supernet: "169.254.128.0/17".into(),
                    subnet_len: 17,
                    exclude: vec![],
                }),
                static_address: None,
            }],
            mac: Some("02:00:00:00:00:01".into()),
            mtu: Some(1450),
        });
        p.routes.push(Route {
            dst: "0.0.0.0/0".into(),
            interface: "eth0".into(),
            via: NextHop::SubnetGateway,
            metric: None,
            mtu: None,
        });
        p.routes.push(Route {
            dst: "10.43.0.0/16".into(),
            interface: "eth1".into(),
            via: NextHop::Address("169.254.128.1".into()),
            metric: Some(10),
            mtu: None,
        });
        p.dns.nameservers.push("10.96.0.10".into());
        p.dns.search.push("svc.cluster.local".into());
        p.sysctls.push(Kv::new("net.ipv4.conf.eth0.rp_filter", "2"));
        p
    }

    #[test]
    fn a_good_plan_passes() {
        validate(&good(), &request()).unwrap();
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn validation_returns_the_plan_typed() {
        let mut wire = good();
        wire.interfaces[0].mac = Some("02:AA:bb:00:00:05".into());
        wire.interfaces[0].addresses.push(AddressRequest {
            family: IpFamily::Ipv6,
            pool: Some(Pool {
                name: "pods-v6".into(),
                supernet: "fd00:64::/48".into(),
                subnet_len: 64,
                exclude: vec!["fd00:64::/64".into()],
            }),
            static_address: Some("fd00:64:0:7::9/64".into()),
        });
        wire.routes.push(Route {
            dst: "10.50.0.0/16".into(),
            interface: "eth0".into(),
            via: NextHop::OnLink,
            metric: None,
            mtu: Some(1400),
        });
        let v = validate(&wire, &request()).unwrap();
        assert_eq!(v.tenant, "acme");
        let eth0 = &v.interfaces[0];
        assert_eq!(
            (eth0.name.as_str(), eth0.kind),
            ("eth0", InterfaceKind::SdnPort)
        );
        assert_eq!(eth0.mac, Some(MacAddr([2, 0xaa, 0xbb, 0, 0, 5])));
        let p4 = eth0.addresses[0].pool.as_ref().unwrap();
        assert_eq!(
            (p4.name.as_str(), p4.supernet, p4.subnet_len),
            ("pods-v4", net("10.64.0.0/12"), 24)
        );
        let x: Vec<_> = p4
            .exclude
            .iter()
            .map(|x| (x.first(), x.last(), x.text()))
            .collect();
        assert_eq!(
            x,
            [
                (ip("10.64.0.0"), ip("10.64.0.255"), "10.64.0.0/24"),
                (ip("10.65.0.10"), ip("10.65.0.20"), "10.65.0.10-10.65.0.20"),
            ]
        );
        let a6 = &eth0.addresses[1];
        assert_eq!(a6.family, IpFamily::Ipv6);
        assert_eq!(
            a6.static_address,
            Some(StaticAddress {
                addr: ip("fd00:64:0:7::9"),
                prefix: Some(64)
            })
        );
        let eth1 = &v.interfaces[1];
        assert_eq!(eth1.kind, InterfaceKind::HostLink);
        assert_eq!(eth1.mtu, Some(1450));
        assert_eq!(
            v.routes,
            [
                ValidRoute {
                    dst: net("0.0.0.0/0"),
                    interface: "eth0".into(),
                    via: Via::SubnetGateway,
                    metric: None,
                    mtu: None,
                },
                ValidRoute {
                    dst: net("10.43.0.0/16"),
                    interface: "eth1".into(),
                    via: Via::Address(ip("169.254.128.1")),
                    metric: Some(10),
                    mtu: None,
                },
                ValidRoute {
                    dst: net("10.50.0.0/16"),
                    interface: "eth0".into(),
                    via: Via::OnLink,
                    metric: None,
                    mtu: Some(1400),
                },
            ]
        );
        assert_eq!(v.dns.nameservers, [ip("10.96.0.10")]);
        assert_eq!(v.dns.search, ["svc.cluster.local"]);
        assert_eq!(v.sysctls, wire.sysctls);
    }

    #[test]
    fn finishing_gives_host_links_the_nodes_pool_in_both_forms() {
        let a = AddressAuthority::default();
        let mut wire = good();
        let checked = super::structure(&wire, &a).unwrap();
        let v = super::finish(&mut wire, checked, &request(), &a).unwrap();
        let typed = v.interfaces[1].addresses[0].pool.as_ref().unwrap();
        let shown = wire.interfaces[1].addresses[0].pool.as_ref().unwrap();
        // The plan's pool name is kept; range and exclusions are the node's.
        assert_eq!(
            (typed.name.as_str(), shown.name.as_str()),
            ("host-link-v4", "host-link-v4")
        );
        assert_eq!(typed.supernet.to_string(), shown.supernet);
        assert_eq!(typed.subnet_len, shown.subnet_len);
        let texts: Vec<&str> = typed.exclude.iter().map(Exclusion::text).collect();
        assert_eq!(texts, shown.exclude);
        assert_eq!(texts, ["169.254.169.0/24", "169.254.170.0/24"]);
        // The SDN port's pool is untouched.
        assert_eq!(
            v.interfaces[0].addresses[0].pool.as_ref().unwrap().name,
            "pods-v4"
        );
    }

    fn rejects(f: impl FnOnce(&mut Plan), field: &str) {
        let mut p = good();
        f(&mut p);
        let e = validate(&p, &request()).unwrap_err();
        assert!(e.field.starts_with(field), "expected {field}, got {e}");
    }

    #[test]
    fn invalid_cidrs_are_refused() {
        rejects(|p| p.routes[0].dst = "10.0.0.0/33".into(), "routes[0].dst");
        rejects(|p| p.routes[0].dst = "10.0.0.1/8".into(), "routes[0].dst");
        rejects(
            |p| p.interfaces[0].addresses[0].pool.as_mut().unwrap().supernet = "10.64.0.0".into(),
            "interfaces[0].addresses[0].pool.supernet",
        );
        rejects(
            |p| {
                p.interfaces[0].addresses[0]
                    .pool
                    .as_mut()
                    .unwrap()
                    .exclude
                    .push("banana".into())
            },
            "interfaces[0].addresses[0].pool.exclude[2]",
        );
        rejects(
            |p| {
                p.interfaces[0].addresses[0]
                    .pool
                    .as_mut()
                    .unwrap()
                    .subnet_len = 31
            },
            "interfaces[0].addresses[0].pool.subnetLen",
        );
        rejects(
            |p| {
                p.interfaces[0].addresses[0]
                    .pool
                    .as_mut()
                    .unwrap()
                    .subnet_len = 8
            },
            "interfaces[0].addresses[0].pool.subnetLen",
        );
    }

    #[test]
    fn addresses_outside_their_pool_are_refused() {
        rejects(
            |p| p.interfaces[0].addresses[0].static_address = Some("10.200.0.5".into()),
            "interfaces[0].addresses[0].staticAddress",
        );
        rejects(
            |p| p.interfaces[0].addresses[0].static_address = Some("10.65.0.15".into()),
            "interfaces[0].addresses[0].staticAddress",
        );
        rejects(
            |p| p.interfaces[0].addresses[0].static_address = Some("fd00::5".into()),
            "interfaces[0].addresses[0].staticAddress",
        );
        rejects(
            |p| p.interfaces[0].addresses[0].static_address = Some("10.66.0.5/16".into()),
            "interfaces[0].addresses[0].staticAddress",
        );
        let mut p = good();
        p.interfaces[0].addresses[0].static_address = Some("10.66.0.5".into());
        validate(&p, &request()).unwrap();
    }

    #[test]
    fn interface_names_the_kernel_refuses_are_refused() {
        rejects(
            |p| p.interfaces[1].name = "a-very-long-name0".into(),
            "interfaces[1].name",
        );
        rejects(
            |p| p.interfaces[1].name = "eth/1".into(),
            "interfaces[1].name",
        );
        rejects(
            |p| p.interfaces[1].name = "eth 1".into(),
            "interfaces[1].name",
        );
        rejects(|p| p.interfaces[1].name = "..".into(), "interfaces[1].name");
        rejects(|p| p.interfaces[1].name = "".into(), "interfaces[1].name");
        rejects(
            |p| p.interfaces[1].name = "eth0".into(),
            "interfaces[1].name",
        );
        // 15 bytes is the kernel's limit, and fine.
        let mut p = good();
        p.interfaces[1].name = "abcdefghijklmno".into();
        p.routes[1].interface = "abcdefghijklmno".into();
        validate(&p, &request()).unwrap();
    }

    #[test]
    fn gateways_must_be_on_a_connected_subnet() {
        rejects(
            |p| p.routes[1].via = NextHop::Address("192.168.9.1".into()),
            "routes[1].via",
        );
        rejects(
            |p| p.routes[1].via = NextHop::Address("fd00::1".into()),
            "routes[1].via",
        );
        rejects(
            |p| p.routes[1].via = NextHop::Address("gateway".into()),
            "routes[1].via",
        );
        rejects(|p| p.routes[0].dst = "::/0".into(), "routes[0].via");
        rejects(
            |p| p.routes[0].interface = "eth9".into(),
            "routes[0].interface",
        );
        // Inside the pool supernet is connected as far as the plan can tell.
        let mut p = good();
        p.routes[0].via = NextHop::Address("10.64.5.1".into());
        validate(&p, &request()).unwrap();
    }

    #[test]
    fn unsafe_tenant_ids_are_refused() {
        for t in [
            "Tenant A/../x",
            "acme-",
            "-acme",
            "ACME",
            "a_b",
            &"a".repeat(64),
        ] {
            rejects(|p| p.tenant = t.into(), "tenant");
        }
        rejects(|p| p.tenant.clear(), "tenant");
    }

    #[test]
    fn oversize_plans_are_refused() {
        rejects(
            |p| {
                let r = p.routes[0].clone();
                p.routes = vec![r; limits::ROUTES + 1];
            },
            "routes",
        );
        rejects(
            |p| p.dns.nameservers = vec!["10.0.0.1".into(); limits::DNS_ENTRIES + 1],
            "dns.nameservers",
        );
        rejects(
            |p| {
                p.annotations
                    .push(Kv::new("k", "v".repeat(limits::STRING_BYTES + 1)))
            },
            "annotations[0]",
        );
    }

    #[test]
    fn other_fields_are_checked() {
        rejects(
            |p| p.interfaces[1].mac = Some("01:00:00:00:00:01".into()),
            "interfaces[1].mac",
        );
        rejects(
            |p| p.interfaces[1].mac = Some("zz:00:00:00:00:01".into()),
            "interfaces[1].mac",
        );
        rejects(|p| p.interfaces[1].mtu = Some(20), "interfaces[1].mtu");
        rejects(
            |p| p.dns.nameservers.push("dns.example".into()),
            "dns.nameservers[1]",
        );
        rejects(|p| p.dns.search.push("bad domain".into()), "dns.search[1]");
        rejects(
            |p| p.sysctls.push(Kv::new("kernel.panic", "1")),
            "sysctls[1]",
        );
        rejects(
            |p| p.sysctls.push(Kv::new("net.ipv4.conf.eth9.rp_filter", "1")),
            "sysctls[1]",
        );
        rejects(
            |p| {
                p.sysctls
                    .push(Kv::new("net.ipv4.conf.eth0.rp_filter", "1\n"))
            },
            "sysctls[1]",
        );
    }

    #[test]
    fn completeness_is_required_at_the_end_only() {
        let mut p = Plan::initial("eth0", None, Dns::default());
        structure(&p).unwrap();
        assert_eq!(complete(&p, &request()).unwrap_err().field, "tenant");
        p.tenant = "acme".into();
        assert_eq!(
            complete(&p, &request()).unwrap_err().field,
            "interfaces[0].addresses"
        );
        let mut r = request();
        r.ifname = "net1".into();
        assert_eq!(complete(&good(), &r).unwrap_err().field, "interfaces");
        rejects(
            |p| p.interfaces[0].kind = InterfaceKind::HostLink,
            "interfaces",
        );
        // A host link needs no pool: the node assigns it.
        let mut p = good();
        p.interfaces[1].addresses[0].pool = None;
        p.routes[1].via = NextHop::OnLink;
        validate(&p, &request()).unwrap();
        rejects(
            |p| {
                p.interfaces[0].addresses[0].pool = None;
                p.interfaces[0].addresses[0].static_address = Some("10.64.1.2".into());
            },
            "interfaces[0].addresses[0]",
        );
    }

    #[test]
    fn addresses_outside_the_operators_ranges_are_refused() {
        let sup = |p: &mut Plan, net: &str| {
            p.interfaces[0].addresses[0].pool.as_mut().unwrap().supernet = net.into();
            p.interfaces[0].addresses[0]
                .pool
                .as_mut()
                .unwrap()
                .exclude
                .clear();
        };
        for (net, len) in [
            ("192.0.2.0/24", 24),
            ("169.254.169.0/24", 24),
            ("8.0.0.0/7", 24),
            ("127.0.0.0/8", 24),
            ("0.0.0.0/0", 24),
            ("0.0.0.0/1", 24),
            ("224.0.0.0/4", 24),
            ("169.254.128.0/17", 24),
        ] {
            let mut p = good();
            sup(&mut p, net);
            p.interfaces[0].addresses[0]
                .pool
                .as_mut()
                .unwrap()
                .subnet_len = len;
            let e = validate(&p, &request()).unwrap_err();
            assert_eq!(
                e.field, "interfaces[0].addresses[0].pool.supernet",
                "{net}: {e}"
            );
        }
        // Static addresses too, with or without a prefix.
        for s in ["192.0.2.2", "127.0.0.1", "169.254.169.254", "8.8.8.8/24"] {
            let mut p = good();
            p.interfaces[0].addresses[0].pool = None;
            p.interfaces[0].addresses[0].static_address = Some(s.into());
            let e = validate(&p, &request()).unwrap_err();
            assert_eq!(
                e.field, "interfaces[0].addresses[0].staticAddress",
                "{s}: {e}"
            );
        }
        // A host link may not pick its address, nor a pool outside the range.
        for s in ["169.254.128.9/17", "10.64.1.7/24", "169.254.169.254/17"] {
            rejects(
                |p| p.interfaces[1].addresses[0].static_address = Some(s.into()),
                "interfaces[1].addresses[0].staticAddress",
            );
        }
        rejects(
            |p| {
                p.interfaces[1].addresses[0].pool.as_mut().unwrap().supernet = "10.96.0.0/12".into()
            },
            "interfaces[1].addresses[0].pool.supernet",
        );
        rejects(
            |p| {
                let a = &mut p.interfaces[1].addresses[0];
                a.family = IpFamily::Ipv6;
                a.pool = None;
                p.routes.truncate(1);
            },
            "interfaces[1].addresses[0].family",
        );
        // A narrower authority narrows the plans.
        let narrow =
            AddressAuthority::new(vec!["10.64.0.0/16".parse().unwrap()], vec![], vec![]).unwrap();
        let e = super::validate(&good(), &request(), &narrow).unwrap_err();
        assert_eq!(e.field, "interfaces[0].addresses[0].pool.supernet", "{e}");
    }

    #[test]
    fn strings_are_checked_as_stored_and_the_plan_is_bounded() {
        // Padding is not trimmed away: it is refused.
        for x in [" 10.64.0.0/24", "10.65.0.10 - 10.65.0.20", "10.64.0.0/24 "] {
            rejects(
                |p| p.interfaces[0].addresses[0].pool.as_mut().unwrap().exclude[0] = x.into(),
                "interfaces[0].addresses[0].pool.exclude[0]",
            );
        }
        let padded = format!("10.64.0.0/24{}", " ".repeat(1 << 20));
        let mut p = good();
        p.interfaces[0].addresses[0].pool.as_mut().unwrap().exclude[0] = padded;
        let e = validate(&p, &request()).unwrap_err();
        assert_eq!(e.field, "plan", "{e}");
        let mut p = good();
        p.interfaces[0].addresses[0].pool.as_mut().unwrap().exclude[0] =
            format!("10.64.0.0/24{}", " ".repeat(200));
        let e = validate(&p, &request()).unwrap_err();
        assert_eq!(e.field, "interfaces[0].addresses[0].pool.exclude[0]", "{e}");
        assert!(e.message.len() < 200, "{e}");
        // 64 annotations of 4 KiB are each fine, together too much.
        let mut p = good();
        p.annotations = (0..64)
            .map(|i| Kv::new(format!("k{i}"), "v".repeat(limits::STRING_BYTES)))
            .collect();
        assert!(text_bytes(&p) > limits::PLAN_BYTES);
        assert_eq!(validate(&p, &request()).unwrap_err().field, "plan");
        rejects(
            |p| p.annotations.push(Kv::new("k", "line\nforged")),
            "annotations[0]",
        );
        rejects(
            |p| p.annotations.push(Kv::new("k y", "v")),
            "annotations[0]",
        );
    }

    #[test]
    fn backend_annotations_are_known_keys_with_usable_values() {
        use crate::sdn::HOST_ALIAS;
        let mut p = good();
        p.annotations = vec![
            Kv::new("quota.example.com/tier", "gold"),
            Kv::new(HOST_ALIAS, "team-a/web-1 gold"),
        ];
        validate(&p, &request()).unwrap();
        // A misspelt tenet.io key fails instead of being ignored.
        rejects(
            |p| p.annotations.push(Kv::new("tenet.io/host-alais", "x")),
            "annotations[0]",
        );
        for bad in ["", "tab\there", "é", &"x".repeat(129)] {
            rejects(
                |p| p.annotations.push(Kv::new(HOST_ALIAS, bad)),
                "annotations[0]",
            );
        }
        rejects(
            |p| {
                p.annotations.push(Kv::new(HOST_ALIAS, "a"));
                p.annotations.push(Kv::new(HOST_ALIAS, "b"));
            },
            "annotations[1]",
        );
    }
}
