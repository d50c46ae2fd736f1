//! The MidoNet REST API itself: login, auth, routing by path segments,
//! media-type checks, body validation and the create/get/delete handlers.
//!
//! Every rule cites reference/midonet-api.md (§1 resources, §4.3 rules).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::http::{Request, Response};
use crate::media::{self, Negotiated, Resource};
use crate::model::{Bridge, Chain, Host, Port, PortKind, Route, Router, Rule, Store};
use crate::validate::{Fields, interface_name_problem, parse_cidr_strict, parse_uuid};

/// Where the API lives under the server root.
pub const ROOT: &str = "/midonet-api";

/// How requests other than `/login` are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Require an unexpired `X-Auth-Token` issued by `/login` (like the
    /// Keystone provider): missing → 401 "No token was passed in.",
    /// unknown or expired → 401.
    #[default]
    Strict,
    /// Accept any request, token or not (MidoNet's default `MockAuthService`).
    /// `/login` still checks the Basic header's shape and the credentials.
    Mock,
}

/// Settings of the emulated API (see [`crate::EmulatorOptions`]).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub users: Vec<(String, String)>,
    pub non_admin_users: Vec<(String, String)>,
    pub auth: AuthMode,
    pub token_lifetime: Option<Duration>,
    pub reject_linked_port_binding: bool,
}

/// The API state: objects and issued tokens.
pub struct Api {
    pub config: ApiConfig,
    pub store: Store,
    /// token → its expiry (`None`: never expires) and whether its user has
    /// the admin role.
    tokens: HashMap<String, Token>,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    expiry: Option<Instant>,
    admin: bool,
}

type Handled = Result<Response, Response>;

fn not_found(kind: &str, id: impl std::fmt::Display) -> Response {
    Response::error(404, format!("{kind} {id} does not exist"))
}

fn exists(kind: &str, id: Uuid) -> Response {
    Response::error(409, format!("{kind} {id} already exists"))
}

fn method_not_allowed() -> Response {
    Response::error(405, "Method not allowed")
}

/// A path id: anything that is not a canonical UUID cannot name an object.
fn path_id(kind: &str, s: &str) -> Result<Uuid, Response> {
    parse_uuid(s).ok_or_else(|| not_found(kind, s))
}

/// `Content-Type` check of generic creates: mismatch → 406 (§1.1).
fn check_create_type(req: &Request, allowed: &[String]) -> Result<(), Response> {
    match media::negotiate(req.header("content-type"), allowed) {
        Negotiated::Ok(_) => Ok(()),
        Negotiated::Rejected => Err(Response::error(
            406,
            format!(
                "Content-Type {} is not acceptable; expected one of {}",
                req.header("content-type").unwrap_or("(none)"),
                allowed.join(", ")
            ),
        )),
    }
}

/// `Content-Type` check of plain JAX-RS `@Consumes` endpoints (link,
/// binding): mismatch → 415 (§1.1).
fn check_consumes(req: &Request, allowed: &[String]) -> Result<(), Response> {
    match media::negotiate(req.header("content-type"), allowed) {
        Negotiated::Ok(_) => Ok(()),
        Negotiated::Rejected => Err(Response::error(
            415,
            format!(
                "Unsupported Media Type {}; expected one of {}",
                req.header("content-type").unwrap_or("(none)"),
                allowed.join(", ")
            ),
        )),
    }
}

/// `Accept` check of validated GETs: missing, unparsable or incompatible →
/// 406. Returns the content type to answer with.
fn check_accept(req: &Request, allowed: &[String]) -> Result<String, Response> {
    match media::negotiate(req.header("accept"), allowed) {
        Negotiated::Ok(t) => Ok(t),
        Negotiated::Rejected => Err(Response::error(
            406,
            format!(
                "Accept {} is not acceptable; expected one of {}",
                req.header("accept").unwrap_or("(none)"),
                allowed.join(", ")
            ),
        )),
    }
}

/// The body as a JSON object; anything else is a 400 (Jackson's mapping error).
fn body_object(req: &Request) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Response::error(
            400,
            "The request body must be a JSON object",
        )),
        Err(e) => Err(Response::error(400, format!("Malformed JSON body: {e}"))),
    }
}

fn finish(f: Fields<'_>) -> Result<(), Response> {
    if f.violations.is_empty() {
        Ok(())
    } else {
        Err(Response::validation(&f.violations))
    }
}

/// Java `String.split(":")`: trailing empty strings are dropped.
fn java_split_colon(s: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = s.split(':').collect();
    while parts.last() == Some(&"") {
        parts.pop();
    }
    parts
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    for (ci, chunk) in bytes.chunks(4).enumerate() {
        let last = ci == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|b| **b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = if i >= 4 - pad { 0 } else { val(*c)? };
            n = (n << 6) | v;
        }
        out.push((n >> 16) as u8);
        if pad < 2 {
            out.push((n >> 8) as u8);
        }
        if pad < 1 {
            out.push(n as u8);
        }
    }
    Some(out)
}

/// `EEE, dd-MM-yyyy HH:mm:ss z` in GMT (MidoNet's token expiry format).
fn format_expiry(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    format!(
        "{weekday}, {day:02}-{month:02}-{year:04} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// A random locally administered unicast MAC (`portMac` default).
fn random_mac() -> String {
    let b = Uuid::new_v4().into_bytes();
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        (b[0] & 0xfe) | 0x02,
        b[1],
        b[2],
        b[3],
        b[4],
        b[5]
    )
}

const ROUTE_TYPES: [&str; 5] = ["Normal", "BlackHole", "Reject", "Local", "Fip64"];
const RULE_TYPES: [&str; 11] = [
    "accept",
    "drop",
    "reject",
    "return",
    "jump",
    "snat",
    "dnat",
    "rev_snat",
    "rev_dnat",
    "trace",
    "l2_transform",
];
const FLOW_ACTIONS: [&str; 3] = ["accept", "continue", "return"];
const FRAGMENT_POLICIES: [&str; 4] = ["any", "nonheader", "header", "unfragmented"];

/// Condition fields by JSON type (MNJ `models/Condition.java`).
const RULE_BOOLS: [&str; 20] = [
    "condInvert",
    "matchForwardFlow",
    "matchReturnFlow",
    "invInPorts",
    "invOutPorts",
    "invPortGroup",
    "invIpAddrGroupSrc",
    "invIpAddrGroupDst",
    "invTraversedDevice",
    "noVlan",
    "invDlType",
    "invDlSrc",
    "invDlDst",
    "invNwTos",
    "invNwProto",
    "invNwSrc",
    "invNwDst",
    "matchNwDstRewritten",
    "invTpSrc",
    "invTpDst",
];
const RULE_UUIDS: [&str; 6] = [
    "portGroup",
    "inPortGroup",
    "outPortGroup",
    "ipAddrGroupSrc",
    "ipAddrGroupDst",
    "traversedDevice",
];
const RULE_IPS: [&str; 4] = [
    "nwSrcAddress",
    "nwDstAddress",
    "icmpDataSrcIpAddress",
    "icmpDataDstIpAddress",
];
const RULE_LENGTHS: [&str; 4] = [
    "nwSrcLength",
    "nwDstLength",
    "icmpDataSrcIpLength",
    "icmpDataDstIpLength",
];
const RULE_MACS: [&str; 4] = ["dlSrc", "dlDst", "dlSrcMask", "dlDstMask"];

impl Api {
    pub fn new(config: ApiConfig) -> Self {
        Api {
            config,
            store: Store::default(),
            tokens: HashMap::new(),
        }
    }

    /// Pre-registers a host (hosts come from agents, not from the API).
    pub fn add_host(&mut self, id: Uuid, name: &str, in_tunnel_zone: bool) {
        let seq = self.store.next_seq();
        self.store.hosts.insert(
            id,
            Host {
                seq,
                id,
                name: name.to_string(),
                in_tunnel_zone,
                alive: true,
            },
        );
    }

    /// Pre-creates a router (the provider router).
    pub fn add_router(&mut self, id: Uuid, name: &str) {
        let seq = self.store.next_seq();
        self.store.routers.insert(
            id,
            Router {
                seq,
                id,
                tenant_id: None,
                name: Some(name.to_string()),
                admin_state_up: true,
                inbound_filter_id: None,
                outbound_filter_id: None,
                as_number: None,
            },
        );
    }

    /// Forgets every issued token: the next authenticated call gets a 401.
    pub fn expire_tokens(&mut self) {
        self.tokens.clear();
    }

    /// Answers one request under [`ROOT`]. `base` is the absolute API URL
    /// used in `Location` headers and `uri` fields.
    pub fn handle(&mut self, req: &Request, base: &str) -> Response {
        match self.route(req, base) {
            Ok(r) | Err(r) => r,
        }
    }

    fn route(&mut self, req: &Request, base: &str) -> Handled {
        let Some(rest) = req.path.strip_prefix(ROOT) else {
            return Err(Response::error(404, format!("No resource at {}", req.path)));
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            return Err(Response::error(404, format!("No resource at {}", req.path)));
        }
        let trimmed = rest.trim_start_matches('/');
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let segs: Vec<&str> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split('/').collect()
        };
        if segs == ["login"] {
            return self.login(req);
        }
        self.authenticate(req)?;
        let m = req.method.as_str();
        match segs.as_slice() {
            [] => match m {
                "GET" => self.application(req, base),
                _ => Err(method_not_allowed()),
            },
            ["routers"] => match m {
                "GET" => self.list_routers(req, base),
                "POST" => self.create_router(req, base),
                _ => Err(method_not_allowed()),
            },
            ["routers", id] => match m {
                "GET" => self.get_router(req, base, id),
                "DELETE" => {
                    // Generic delete with ignoresNeo: 204 even if unknown.
                    if let Some(id) = parse_uuid(id) {
                        self.store.delete_router(id);
                    }
                    Ok(Response::no_content())
                }
                _ => Err(method_not_allowed()),
            },
            ["routers", id, "ports"] => match m {
                "GET" => self.list_device_ports(req, base, "Router", id, false),
                "POST" => self.create_router_port(req, base, id),
                _ => Err(method_not_allowed()),
            },
            ["routers", id, "peer_ports"] => match m {
                "GET" => self.list_device_ports(req, base, "Router", id, true),
                _ => Err(method_not_allowed()),
            },
            ["routers", id, "routes"] => match m {
                "GET" => self.list_routes(req, base, id),
                "POST" => self.create_route(req, base, id),
                _ => Err(method_not_allowed()),
            },
            ["routers", _rid, "routes", id] => match m {
                // The router id is not checked; unknown route → 204.
                "DELETE" => {
                    if let Some(id) = parse_uuid(id) {
                        self.store.routes.remove(&id);
                    }
                    Ok(Response::no_content())
                }
                _ => Err(method_not_allowed()),
            },
            ["bridges"] => match m {
                "GET" => self.list_bridges(req, base),
                "POST" => self.create_bridge(req, base),
                _ => Err(method_not_allowed()),
            },
            ["bridges", id] => match m {
                "GET" => self.get_bridge(req, base, id),
                "DELETE" => {
                    let id = path_id("Bridge", id)?;
                    if !self.store.bridges.contains_key(&id) {
                        return Err(not_found("Bridge", id));
                    }
                    self.store.delete_bridge(id);
                    Ok(Response::no_content())
                }
                _ => Err(method_not_allowed()),
            },
            ["bridges", id, "ports"] => match m {
                "GET" => self.list_device_ports(req, base, "Bridge", id, false),
                "POST" => self.create_bridge_port(req, base, id),
                _ => Err(method_not_allowed()),
            },
            ["bridges", id, "peer_ports"] => match m {
                "GET" => self.list_device_ports(req, base, "Bridge", id, true),
                _ => Err(method_not_allowed()),
            },
            ["ports"] => match m {
                "GET" => {
                    let ct = check_accept(req, &Resource::Port.collection())?;
                    let mut ports: Vec<&Port> = self.store.ports.values().collect();
                    ports.sort_by_key(|p| p.seq);
                    let list: Vec<Value> = ports
                        .iter()
                        .map(|p| self.store.render_port(p, base))
                        .collect();
                    Ok(Response::json(200, &ct, &Value::Array(list)))
                }
                _ => Err(method_not_allowed()),
            },
            ["ports", id] => match m {
                "GET" => {
                    let ct = check_accept(req, &Resource::Port.single())?;
                    let id = path_id("Port", id)?;
                    let p = self
                        .store
                        .ports
                        .get(&id)
                        .ok_or_else(|| not_found("Port", id))?;
                    Ok(Response::json(200, &ct, &self.store.render_port(p, base)))
                }
                "DELETE" => {
                    let id = path_id("Port", id)?;
                    if !self.store.ports.contains_key(&id) {
                        return Err(not_found("Port", id));
                    }
                    self.store.delete_port(id);
                    Ok(Response::no_content())
                }
                _ => Err(method_not_allowed()),
            },
            ["ports", id, "link"] => match m {
                "POST" => self.link(req, id),
                "DELETE" => self.unlink(id),
                _ => Err(method_not_allowed()),
            },
            ["routes", id] => match m {
                "GET" => {
                    let ct = check_accept(req, &Resource::Route.single())?;
                    let id = path_id("Route", id)?;
                    let r = self
                        .store
                        .routes
                        .get(&id)
                        .ok_or_else(|| not_found("Route", id))?;
                    Ok(Response::json(200, &ct, &self.store.render_route(r, base)))
                }
                "DELETE" => {
                    if let Some(id) = parse_uuid(id) {
                        self.store.routes.remove(&id);
                    }
                    Ok(Response::no_content())
                }
                _ => Err(method_not_allowed()),
            },
            ["chains"] => match m {
                "GET" => self.list_chains(req, base),
                "POST" => self.create_chain(req, base),
                _ => Err(method_not_allowed()),
            },
            ["chains", id] => match m {
                "GET" => {
                    let ct = check_accept(req, &Resource::Chain.single())?;
                    let id = path_id("Chain", id)?;
                    let c = self
                        .store
                        .chains
                        .get(&id)
                        .ok_or_else(|| not_found("Chain", id))?;
                    Ok(Response::json(200, &ct, &self.store.render_chain(c, base)))
                }
                "DELETE" => {
                    let id = path_id("Chain", id)?;
                    if !self.store.chains.contains_key(&id) {
                        return Err(not_found("Chain", id));
                    }
                    self.store.delete_chain(id);
                    Ok(Response::no_content())
                }
                _ => Err(method_not_allowed()),
            },
            ["chains", id, "rules"] => match m {
                "GET" => {
                    let ct = check_accept(req, &Resource::Rule.collection())?;
                    let id = path_id("Chain", id)?;
                    let c = self
                        .store
                        .chains
                        .get(&id)
                        .ok_or_else(|| not_found("Chain", id))?;
                    let list: Vec<Value> = c
                        .rule_ids
                        .iter()
                        .filter_map(|r| self.store.rules.get(r))
                        .map(|r| self.store.render_rule(r, base))
                        .collect();
                    Ok(Response::json(200, &ct, &Value::Array(list)))
                }
                "POST" => self.create_rule(req, base, id),
                _ => Err(method_not_allowed()),
            },
            ["rules", id] => match m {
                "GET" => {
                    let ct = check_accept(req, &Resource::Rule.single())?;
                    let id = path_id("Rule", id)?;
                    let r = self
                        .store
                        .rules
                        .get(&id)
                        .ok_or_else(|| not_found("Rule", id))?;
                    Ok(Response::json(200, &ct, &self.store.render_rule(r, base)))
                }
                "DELETE" => {
                    let id = path_id("Rule", id)?;
                    if !self.store.rules.contains_key(&id) {
                        return Err(not_found("Rule", id));
                    }
                    self.store.delete_rule(id);
                    Ok(Response::no_content())
                }
                _ => Err(method_not_allowed()),
            },
            ["hosts"] => match m {
                "GET" => {
                    let ct = check_accept(req, &Resource::Host.collection())?;
                    let mut hosts: Vec<&Host> = self.store.hosts.values().collect();
                    hosts.sort_by_key(|h| h.seq);
                    let list: Vec<Value> = hosts
                        .iter()
                        .map(|h| self.store.render_host(h, base))
                        .collect();
                    Ok(Response::json(200, &ct, &Value::Array(list)))
                }
                _ => Err(method_not_allowed()),
            },
            ["hosts", id] => match m {
                "GET" => {
                    let ct = check_accept(req, &Resource::Host.single())?;
                    let id = path_id("Host", id)?;
                    let h = self
                        .store
                        .hosts
                        .get(&id)
                        .ok_or_else(|| not_found("Host", id))?;
                    Ok(Response::json(200, &ct, &self.store.render_host(h, base)))
                }
                "DELETE" => {
                    let id = path_id("Host", id)?;
                    if !self.store.hosts.contains_key(&id) {
                        return Err(not_found("Host", id));
                    }
                    self.store.delete_host(id);
                    Ok(Response::new(200))
                }
                _ => Err(method_not_allowed()),
            },
            ["hosts", id, "ports"] => match m {
                "GET" => {
                    let ct = check_accept(req, &Resource::HostInterfacePort.collection())?;
                    let id = path_id("Host", id)?;
                    if !self.store.hosts.contains_key(&id) {
                        return Err(not_found("Host", id));
                    }
                    let list: Vec<Value> = self
                        .store
                        .bound_ports_of(id)
                        .iter()
                        .map(|p| self.store.render_binding(p, base))
                        .collect();
                    Ok(Response::json(200, &ct, &Value::Array(list)))
                }
                "POST" => self.bind(req, base, id),
                _ => Err(method_not_allowed()),
            },
            ["hosts", host, "ports", port] => match m {
                "GET" => {
                    let ct = check_accept(req, &Resource::HostInterfacePort.single())?;
                    let host = path_id("Host", host)?;
                    let port = path_id("Port", port)?;
                    match self.store.ports.get(&port) {
                        Some(p) if p.host_id == Some(host) && p.interface_name.is_some() => Ok(
                            Response::json(200, &ct, &self.store.render_binding(p, base)),
                        ),
                        _ => Err(Response::error(
                            404,
                            format!("Port {port} is not bound to host {host}"),
                        )),
                    }
                }
                "DELETE" => self.unbind(port),
                _ => Err(method_not_allowed()),
            },
            ["tenants"] => match m {
                "GET" => {
                    let ct = check_accept(req, &Resource::Tenant.collection())?;
                    let list: Vec<Value> = self
                        .tenant_ids()
                        .iter()
                        .map(|t| self.render_tenant(t, base))
                        .collect();
                    Ok(Response::json(200, &ct, &Value::Array(list)))
                }
                _ => Err(Response::error(
                    405,
                    "Tenants cannot be created, updated or deleted via the REST API.",
                )),
            },
            ["tenants", id] => match m {
                "GET" => {
                    let ct = check_accept(req, &Resource::Tenant.single())?;
                    if !self.tenant_ids().contains(*id) {
                        return Err(not_found("Tenant", id));
                    }
                    Ok(Response::json(200, &ct, &self.render_tenant(id, base)))
                }
                _ => Err(Response::error(
                    405,
                    "Tenants cannot be created, updated or deleted via the REST API.",
                )),
            },
            _ => Err(Response::error(404, format!("No resource at {}", req.path))),
        }
    }

    // ---- auth ----

    fn login(&mut self, req: &Request) -> Handled {
        if req.method != "POST" {
            return Err(method_not_allowed());
        }
        let Some(auth) = req.header("authorization") else {
            return Err(Response::error(401, "Authorization header is not set."));
        };
        let (scheme, cred) = auth.split_once(' ').unwrap_or((auth, ""));
        if !scheme.eq_ignore_ascii_case("Basic") {
            return Err(Response::error(401, "Authorization header is not valid"));
        }
        let decoded = base64_decode(cred)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Response::error(401, "Authorization header is not valid"))?;
        let parts = java_split_colon(&decoded);
        if parts.len() != 2 {
            return Err(Response::error(401, "Authorization header is not valid"));
        }
        let is =
            |list: &[(String, String)]| list.iter().any(|(u, p)| u == parts[0] && p == parts[1]);
        let admin = is(&self.config.users);
        let known = admin || is(&self.config.non_admin_users);
        if !known && self.config.auth == AuthMode::Strict {
            return Err(Response::error(401, "Username or password is not valid"));
        }
        let key = Uuid::new_v4().simple().to_string();
        let expiry = self.config.token_lifetime.map(|d| Instant::now() + d);
        let expires = self
            .config
            .token_lifetime
            .map(|d| format_expiry(SystemTime::now() + d));
        self.tokens.insert(key.clone(), Token { expiry, admin });
        let cookie = match &expires {
            Some(e) => format!("sessionId={key}; Expires={e}"),
            None => format!("sessionId={key}"),
        };
        Ok(
            Response::json(200, media::TOKEN, &json!({"key": key, "expires": expires}))
                .with_header("Set-Cookie", cookie),
        )
    }

    fn authenticate(&mut self, req: &Request) -> Result<(), Response> {
        if self.config.auth == AuthMode::Mock {
            return Ok(());
        }
        let token = req.header("x-auth-token").map(str::trim).unwrap_or("");
        if token.is_empty() {
            return Err(Response::error(401, "No token was passed in."));
        }
        match self.tokens.get(token).copied() {
            None => Err(Response::error(401, "Authentication error: invalid token")),
            Some(Token {
                expiry: Some(exp), ..
            }) if Instant::now() >= exp => {
                self.tokens.remove(token);
                Err(Response::error(
                    401,
                    "Authentication error: token has expired",
                ))
            }
            // AdminOnlyAuthFilter: 401, a null message, no WWW-Authenticate.
            Some(Token { admin: false, .. }) => Err(Response::error_without_message(401)),
            Some(_) => Ok(()),
        }
    }

    // ---- application root, tenants ----

    fn application(&self, req: &Request, base: &str) -> Handled {
        // Plain JAX-RS @Produces: no Accept means */*.
        let allowed = [media::JSON.to_string(), media::APPLICATION.to_string()];
        let ct = match req.header("accept") {
            None => media::JSON.to_string(),
            Some(_) => check_accept(req, &allowed)?,
        };
        let mut app = Map::new();
        app.insert("uri".into(), json!(format!("{base}/")));
        app.insert("version".into(), json!("v5.0"));
        for coll in ["routers", "bridges", "ports", "chains", "hosts", "tenants"] {
            let singular = &coll[..coll.len() - 1];
            app.insert(coll.into(), json!(format!("{base}/{coll}")));
            app.insert(
                format!("{singular}Template"),
                json!(format!("{base}/{coll}/{{id}}")),
            );
        }
        app.insert(
            "routeTemplate".into(),
            json!(format!("{base}/routes/{{id}}")),
        );
        app.insert("ruleTemplate".into(), json!(format!("{base}/rules/{{id}}")));
        Ok(Response::json(200, &ct, &Value::Object(app)))
    }

    /// Tenants are only strings on routers, bridges and chains in 5.x; the
    /// emulator lists the distinct ones.
    fn tenant_ids(&self) -> BTreeSet<String> {
        let s = &self.store;
        s.routers
            .values()
            .filter_map(|r| r.tenant_id.clone())
            .chain(s.bridges.values().filter_map(|b| b.tenant_id.clone()))
            .chain(s.chains.values().filter_map(|c| c.tenant_id.clone()))
            .collect()
    }

    fn render_tenant(&self, id: &str, base: &str) -> Value {
        json!({
            "id": id,
            "name": id,
            "description": "",
            "enabled": true,
            "uri": format!("{base}/tenants/{id}"),
            "routers": format!("{base}/routers?tenant_id={id}"),
            "bridges": format!("{base}/bridges?tenant_id={id}"),
            "chains": format!("{base}/chains?tenant_id={id}"),
            "portGroups": format!("{base}/port_groups?tenant_id={id}"),
        })
    }

    // ---- shared reference checks ----

    fn chain_ref(&self, field: &str, id: Option<Uuid>) -> Result<(), Response> {
        match id {
            Some(c) if !self.store.chains.contains_key(&c) => Err(Response::error(
                404,
                format!("Chain {c} (referenced by {field}) does not exist"),
            )),
            _ => Ok(()),
        }
    }

    /// Reference fields to object types the emulator has none of (load
    /// balancers, mirrors, QoS policies): any value names a missing object.
    fn absent_refs(f: &Fields<'_>, fields: &[&str]) -> Result<(), Response> {
        for key in fields {
            match f.raw(key) {
                None => {}
                Some(Value::Array(a)) if a.is_empty() => {}
                Some(v) => {
                    return Err(Response::error(
                        404,
                        format!("{key}: referenced object {v} does not exist"),
                    ));
                }
            }
        }
        Ok(())
    }

    // ---- routers ----

    fn create_router(&mut self, req: &Request, base: &str) -> Handled {
        check_create_type(req, &Resource::Router.single())?;
        let body = body_object(req)?;
        let mut f = Fields::new(&body);
        let id = f.uuid("id");
        let tenant_id = f.string("tenantId");
        let name = f.name("name");
        let admin_state_up = f.bool("adminStateUp").unwrap_or(true);
        let inbound = f.uuid("inboundFilterId");
        let outbound = f.uuid("outboundFilterId");
        let as_number = f.int("asNumber");
        let redirect = f.uuid("localRedirectChainId");
        let forward = f.uuid("forwardChainId");
        f.uuid("loadBalancerId");
        f.uuid_list("inboundMirrorIds");
        f.uuid_list("outboundMirrorIds");
        let absent = Self::absent_refs(
            &f,
            &["loadBalancerId", "inboundMirrorIds", "outboundMirrorIds"],
        );
        finish(f)?;
        let id = id.unwrap_or_else(Uuid::new_v4);
        if self.store.routers.contains_key(&id) {
            return Err(exists("Router", id));
        }
        self.chain_ref("inboundFilterId", inbound)?;
        self.chain_ref("outboundFilterId", outbound)?;
        self.chain_ref("localRedirectChainId", redirect)?;
        self.chain_ref("forwardChainId", forward)?;
        absent?;
        let seq = self.store.next_seq();
        self.store.routers.insert(
            id,
            Router {
                seq,
                id,
                tenant_id,
                name,
                admin_state_up,
                inbound_filter_id: inbound,
                outbound_filter_id: outbound,
                as_number,
            },
        );
        Ok(Response::created(Some(format!("{base}/routers/{id}"))))
    }

    fn list_routers(&self, req: &Request, base: &str) -> Handled {
        let ct = check_accept(req, &Resource::Router.collection())?;
        let tenant = req.query_param("tenant_id");
        let mut v: Vec<&Router> = self
            .store
            .routers
            .values()
            .filter(|r| tenant.is_none() || r.tenant_id == tenant)
            .collect();
        v.sort_by_key(|r| r.seq);
        let list: Vec<Value> = v
            .iter()
            .map(|r| self.store.render_router(r, base))
            .collect();
        Ok(Response::json(200, &ct, &Value::Array(list)))
    }

    fn get_router(&self, req: &Request, base: &str, id: &str) -> Handled {
        let ct = check_accept(req, &Resource::Router.single())?;
        let id = path_id("Router", id)?;
        let r = self
            .store
            .routers
            .get(&id)
            .ok_or_else(|| not_found("Router", id))?;
        Ok(Response::json(200, &ct, &self.store.render_router(r, base)))
    }

    // ---- bridges ----

    fn create_bridge(&mut self, req: &Request, base: &str) -> Handled {
        check_create_type(req, &Resource::Bridge.single())?;
        let body = body_object(req)?;
        let mut f = Fields::new(&body);
        let id = f.uuid("id");
        let tenant_id = f.string("tenantId");
        let name = f.name("name");
        let admin_state_up = f.bool("adminStateUp").unwrap_or(true);
        let inbound = f.uuid("inboundFilterId");
        let outbound = f.uuid("outboundFilterId");
        if f.present("vxlanPortIds") {
            f.violate("vxlanPortIds", "must be null");
        }
        f.uuid("qosPolicyId");
        f.uuid_list("inboundMirrorIds");
        f.uuid_list("outboundMirrorIds");
        let absent = Self::absent_refs(
            &f,
            &["qosPolicyId", "inboundMirrorIds", "outboundMirrorIds"],
        );
        finish(f)?;
        let id = id.unwrap_or_else(Uuid::new_v4);
        if self.store.bridges.contains_key(&id) {
            return Err(exists("Bridge", id));
        }
        self.chain_ref("inboundFilterId", inbound)?;
        self.chain_ref("outboundFilterId", outbound)?;
        absent?;
        let seq = self.store.next_seq();
        self.store.bridges.insert(
            id,
            Bridge {
                seq,
                id,
                tenant_id,
                name,
                admin_state_up,
                inbound_filter_id: inbound,
                outbound_filter_id: outbound,
            },
        );
        Ok(Response::created(Some(format!("{base}/bridges/{id}"))))
    }

    fn list_bridges(&self, req: &Request, base: &str) -> Handled {
        let ct = check_accept(req, &Resource::Bridge.collection())?;
        let tenant = req.query_param("tenant_id");
        let mut v: Vec<&Bridge> = self
            .store
            .bridges
            .values()
            .filter(|b| tenant.is_none() || b.tenant_id == tenant)
            .collect();
        v.sort_by_key(|b| b.seq);
        let list: Vec<Value> = v
            .iter()
            .map(|b| self.store.render_bridge(b, base))
            .collect();
        Ok(Response::json(200, &ct, &Value::Array(list)))
    }

    fn get_bridge(&self, req: &Request, base: &str, id: &str) -> Handled {
        let ct = check_accept(req, &Resource::Bridge.single())?;
        let id = path_id("Bridge", id)?;
        let b = self
            .store
            .bridges
            .get(&id)
            .ok_or_else(|| not_found("Bridge", id))?;
        Ok(Response::json(200, &ct, &self.store.render_bridge(b, base)))
    }

    // ---- ports ----

    fn list_device_ports(
        &self,
        req: &Request,
        base: &str,
        kind: &str,
        id: &str,
        peers: bool,
    ) -> Handled {
        let ct = check_accept(req, &Resource::Port.collection())?;
        let id = path_id(kind, id)?;
        let known = if kind == "Router" {
            self.store.routers.contains_key(&id)
        } else {
            self.store.bridges.contains_key(&id)
        };
        if !known {
            return Err(not_found(kind, id));
        }
        let ports = if peers {
            self.store.peer_ports_of(id)
        } else {
            self.store.ports_of(id)
        };
        let list: Vec<Value> = ports
            .iter()
            .map(|p| self.store.render_port(p, base))
            .collect();
        Ok(Response::json(200, &ct, &Value::Array(list)))
    }

    /// Reads the port `type` discriminator; `expected` is "Router" or "Bridge".
    fn port_type(f: &mut Fields<'_>, expected: &str) -> Result<(), Response> {
        let Some(t) = f.raw("type") else {
            return Err(Response::error(
                400,
                "Missing type id when trying to resolve subtype of Port: property 'type' is required",
            ));
        };
        let t = t.as_str().unwrap_or("");
        let known = [
            "Router",
            "Bridge",
            "Vxlan",
            "ExteriorRouter",
            "InteriorRouter",
            "ExteriorBridge",
            "InteriorBridge",
        ];
        if !known.contains(&t) {
            return Err(Response::error(
                400,
                format!("Could not resolve type id '{t}' into a subtype of Port"),
            ));
        }
        if t != expected {
            let msg = if expected == "Bridge" {
                "Not a bridge port."
            } else {
                "Not a router port."
            };
            return Err(Response::error(400, msg));
        }
        Ok(())
    }

    /// Fields every port create shares. Binding and linking have their own
    /// endpoints; the emulator rejects them in a create body.
    fn port_common(
        f: &mut Fields<'_>,
    ) -> (Option<Uuid>, bool, Option<Uuid>, Option<Uuid>, Option<Uuid>) {
        let id = f.uuid("id");
        let admin = f.bool("adminStateUp").unwrap_or(true);
        let inbound = f.uuid("inboundFilterId");
        let outbound = f.uuid("outboundFilterId");
        let vif = f.uuid("vifId");
        for key in ["hostId", "interfaceName", "peerId"] {
            if f.present(key) {
                f.violate(
                    key,
                    "must be null on create (the emulator binds via /hosts/{id}/ports and links via /ports/{id}/link)",
                );
            }
        }
        (id, admin, inbound, outbound, vif)
    }

    fn create_router_port(&mut self, req: &Request, base: &str, router: &str) -> Handled {
        check_create_type(req, &Resource::Port.single())?;
        let router = path_id("Router", router)?;
        let body = body_object(req)?;
        let mut f = Fields::new(&body);
        Self::port_type(&mut f, "Router")?;
        let (id, admin, inbound, outbound, vif) = Self::port_common(&mut f);
        let network_address = f.required_ipv4("networkAddress");
        let network_length = f.prefix_len("networkLength");
        let port_address = f.required_ipv4("portAddress");
        let mut port_subnet = Vec::new();
        if let Some(items) = f.array("portSubnet") {
            for (i, item) in items.iter().enumerate() {
                match item.as_str().and_then(parse_cidr_strict) {
                    Some(c) => port_subnet.push(c),
                    None => f.violate(&format!("portSubnet[{i}]"), "is an invalid CIDR"),
                }
            }
        }
        let port_mac = f.mac("portMac");
        let vni = f.int_in("rtrPortVni", 0, 0xFF_FFFF);
        finish(f)?;
        let (Some(network_address), Some(port_address)) = (network_address, port_address) else {
            unreachable!("required fields were checked");
        };
        if port_subnet.is_empty() {
            port_subnet.push((port_address, network_length));
        }
        if !self.store.routers.contains_key(&router) {
            return Err(not_found("Router", router));
        }
        let id = id.unwrap_or_else(Uuid::new_v4);
        if self.store.ports.contains_key(&id) {
            return Err(exists("Port", id));
        }
        self.chain_ref("inboundFilterId", inbound)?;
        self.chain_ref("outboundFilterId", outbound)?;
        let seq = self.store.next_seq();
        let tunnel_key = self.store.next_tunnel_key();
        // Side effect of RouterPortResource: a LOCAL /32 route per subnet.
        let locals: Vec<Ipv4Addr> = port_subnet.iter().map(|(a, _)| *a).collect();
        self.store.ports.insert(
            id,
            Port {
                seq,
                id,
                device_id: router,
                kind: PortKind::Router {
                    network_address,
                    network_length,
                    port_address,
                    port_subnet,
                    port_mac: port_mac.unwrap_or_else(random_mac),
                    rtr_port_vni: vni,
                },
                admin_state_up: admin,
                inbound_filter_id: inbound,
                outbound_filter_id: outbound,
                tunnel_key,
                vif_id: vif,
                host_id: None,
                interface_name: None,
                previous_host_id: None,
                peer_id: None,
            },
        );
        for addr in locals {
            let seq = self.store.next_seq();
            let rid = Uuid::new_v4();
            self.store.routes.insert(
                rid,
                Route {
                    seq,
                    id: rid,
                    router_id: None,
                    next_hop_port: Some(id),
                    attributes: None,
                    dst: (addr, 32),
                    src: (Ipv4Addr::UNSPECIFIED, 0),
                    next_hop_gateway: None,
                    route_type: "Local".into(),
                    weight: 0,
                    learned: false,
                },
            );
        }
        Ok(Response::created(Some(format!("{base}/ports/{id}"))))
    }

    fn create_bridge_port(&mut self, req: &Request, base: &str, bridge: &str) -> Handled {
        check_create_type(req, &Resource::Port.single())?;
        let bridge = path_id("Bridge", bridge)?;
        let body = body_object(req)?;
        let mut f = Fields::new(&body);
        Self::port_type(&mut f, "Bridge")?;
        let (id, admin, inbound, outbound, vif) = Self::port_common(&mut f);
        let vlan_id = f.int_in("vlanId", 0, 4095).unwrap_or(0);
        finish(f)?;
        if !self.store.bridges.contains_key(&bridge) {
            return Err(not_found("Bridge", bridge));
        }
        let id = id.unwrap_or_else(Uuid::new_v4);
        if self.store.ports.contains_key(&id) {
            return Err(exists("Port", id));
        }
        self.chain_ref("inboundFilterId", inbound)?;
        self.chain_ref("outboundFilterId", outbound)?;
        let seq = self.store.next_seq();
        let tunnel_key = self.store.next_tunnel_key();
        self.store.ports.insert(
            id,
            Port {
                seq,
                id,
                device_id: bridge,
                kind: PortKind::Bridge { vlan_id },
                admin_state_up: admin,
                inbound_filter_id: inbound,
                outbound_filter_id: outbound,
                tunnel_key,
                vif_id: vif,
                host_id: None,
                interface_name: None,
                previous_host_id: None,
                peer_id: None,
            },
        );
        Ok(Response::created(Some(format!("{base}/ports/{id}"))))
    }

    // ---- links ----

    fn link(&mut self, req: &Request, id: &str) -> Handled {
        check_consumes(req, &Resource::PortLink.single())?;
        let port = path_id("Port", id)?;
        let body = body_object(req)?;
        // MNJ Link.getUri() with a portId in the body builds from a null
        // base URI inside the transaction: 500, nothing stored (§1.3).
        if body.get("portId").is_some_and(|v| !v.is_null()) {
            return Err(Response::error(
                500,
                "Internal server error: portId must not be sent in a link body",
            ));
        }
        let mut f = Fields::new(&body);
        if !f.present("peerId") {
            f.violate("peerId", "may not be null");
        }
        let peer = f.uuid("peerId");
        finish(f)?;
        let peer = peer.expect("checked");
        let (Some(a), Some(b)) = (self.store.ports.get(&port), self.store.ports.get(&peer)) else {
            let missing = if self.store.ports.contains_key(&port) {
                peer
            } else {
                port
            };
            return Err(not_found("Port", missing));
        };
        if port == peer || a.peer_id.is_some() || b.peer_id.is_some() {
            return Err(Response::error(409, "Ports are not linkable."));
        }
        self.store.ports.get_mut(&port).expect("exists").peer_id = Some(peer);
        self.store.ports.get_mut(&peer).expect("exists").peer_id = Some(port);
        Ok(Response::created(None))
    }

    fn unlink(&mut self, id: &str) -> Handled {
        let port = path_id("Port", id)?;
        let p = self
            .store
            .ports
            .get_mut(&port)
            .ok_or_else(|| not_found("Port", port))?;
        if let Some(peer) = p.peer_id.take()
            && let Some(q) = self.store.ports.get_mut(&peer)
        {
            q.peer_id = None;
        }
        Ok(Response::no_content())
    }

    // ---- routes ----

    fn list_routes(&self, req: &Request, base: &str, router: &str) -> Handled {
        let ct = check_accept(req, &Resource::Route.collection())?;
        let router = path_id("Router", router)?;
        if !self.store.routers.contains_key(&router) {
            return Err(not_found("Router", router));
        }
        let list: Vec<Value> = self
            .store
            .routes_of(router)
            .iter()
            .map(|r| self.store.render_route(r, base))
            .collect();
        Ok(Response::json(200, &ct, &Value::Array(list)))
    }

    fn create_route(&mut self, req: &Request, base: &str, router: &str) -> Handled {
        check_create_type(req, &Resource::Route.single())?;
        let router = path_id("Router", router)?;
        let body = body_object(req)?;
        let mut f = Fields::new(&body);
        let id = f.uuid("id");
        let attributes = f.string("attributes");
        let dst = f.required_ipv4("dstNetworkAddr");
        let dst_len = f.prefix_len("dstNetworkLength");
        let src = f.required_ipv4("srcNetworkAddr");
        let src_len = f.prefix_len("srcNetworkLength");
        let gateway = f.ipv4("nextHopGateway");
        let next_hop = f.uuid("nextHopPort");
        let weight = f.int_in("weight", 0, i64::from(i32::MAX)).unwrap_or(0);
        let route_type = f.required_string("type");
        if let Some(t) = &route_type
            && !ROUTE_TYPES.contains(&t.as_str())
        {
            f.violate("type", format!("must be one of {}", ROUTE_TYPES.join(", ")));
        }
        finish(f)?;
        let (Some(dst), Some(src), Some(route_type)) = (dst, src, route_type) else {
            unreachable!("required fields were checked");
        };
        if !self.store.routers.contains_key(&router) {
            return Err(not_found("Router", router));
        }
        if route_type == "Normal" {
            let on_router = next_hop
                .and_then(|p| self.store.ports.get(&p))
                .is_some_and(|p| p.device_id == router);
            if !on_router {
                return Err(Response::error(
                    400,
                    "This type of route requires a next hop port that is a port on the same router.",
                ));
            }
        } else if let Some(p) = next_hop
            && !self.store.ports.contains_key(&p)
        {
            return Err(not_found("Port", p));
        }
        let id = id.unwrap_or_else(Uuid::new_v4);
        if self.store.routes.contains_key(&id) {
            return Err(exists("Route", id));
        }
        let seq = self.store.next_seq();
        self.store.routes.insert(
            id,
            Route {
                seq,
                id,
                // A route with a next-hop port belongs to the port.
                router_id: if next_hop.is_some() {
                    None
                } else {
                    Some(router)
                },
                next_hop_port: next_hop,
                attributes,
                dst: (dst, dst_len),
                src: (src, src_len),
                next_hop_gateway: gateway,
                route_type,
                weight,
                learned: false,
            },
        );
        Ok(Response::created(Some(format!("{base}/routes/{id}"))))
    }

    // ---- chains and rules ----

    fn create_chain(&mut self, req: &Request, base: &str) -> Handled {
        check_create_type(req, &Resource::Chain.single())?;
        let body = body_object(req)?;
        let mut f = Fields::new(&body);
        let id = f.uuid("id");
        let tenant_id = f.string("tenantId");
        let name = f.name("name");
        finish(f)?;
        let id = id.unwrap_or_else(Uuid::new_v4);
        if self.store.chains.contains_key(&id) {
            return Err(exists("Chain", id));
        }
        let seq = self.store.next_seq();
        self.store.chains.insert(
            id,
            Chain {
                seq,
                id,
                tenant_id,
                name,
                rule_ids: Vec::new(),
            },
        );
        Ok(Response::created(Some(format!("{base}/chains/{id}"))))
    }

    fn list_chains(&self, req: &Request, base: &str) -> Handled {
        let ct = check_accept(req, &Resource::Chain.collection())?;
        let tenant = req.query_param("tenant_id");
        let mut v: Vec<&Chain> = self
            .store
            .chains
            .values()
            .filter(|c| tenant.is_none() || c.tenant_id == tenant)
            .collect();
        v.sort_by_key(|c| c.seq);
        let list: Vec<Value> = v.iter().map(|c| self.store.render_chain(c, base)).collect();
        Ok(Response::json(200, &ct, &Value::Array(list)))
    }

    /// Validates a `{start, end}` port range (tpSrc/tpDst).
    fn port_range(f: &mut Fields<'_>, key: &str) -> Option<Value> {
        let obj = f.object(key)?;
        let mut r = Fields::nested(obj, format!("{key}."));
        let start = r.int_in("start", 1, 65535);
        let end = r.int_in("end", 1, 65535);
        if let (Some(s), Some(e)) = (start, end)
            && s > e
        {
            r.violate("end", "must not be less than start");
        }
        for v in r.violations {
            f.violations.push(v);
        }
        Some(Value::Object(obj.clone()))
    }

    fn create_rule(&mut self, req: &Request, base: &str, chain: &str) -> Handled {
        check_create_type(req, &Resource::Rule.single())?;
        let chain = path_id("Chain", chain)?;
        let body = body_object(req)?;
        let mut f = Fields::new(&body);
        let Some(rule_type) = f.raw("type") else {
            return Err(Response::error(
                400,
                "Missing type id when trying to resolve subtype of Rule: property 'type' is required",
            ));
        };
        let rule_type = rule_type.as_str().unwrap_or("").to_string();
        if !RULE_TYPES.contains(&rule_type.as_str()) {
            return Err(Response::error(
                400,
                format!("Could not resolve type id '{rule_type}' into a subtype of Rule"),
            ));
        }
        let id = f.uuid("id");
        let position = f.int_in("position", 1, i64::from(i32::MAX));
        // Keep the known fields, typed-checked (unknown ones are dropped).
        let mut kept = Map::new();
        let mut keep = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                kept.insert(k.to_string(), v);
            }
        };
        if let Some(s) = f.string("meterName") {
            keep("meterName", Some(json!(s)));
        }
        for k in RULE_BOOLS {
            let v = f.bool(k).map(Value::Bool);
            keep(k, v);
        }
        for k in RULE_UUIDS {
            let v = f.uuid(k).map(|u| json!(u));
            keep(k, v);
        }
        for k in ["inPorts", "outPorts"] {
            let v = f.uuid_list(k).map(|u| json!(u));
            keep(k, v);
        }
        for k in RULE_IPS {
            let v = f.ipv4(k).map(|a| json!(a.to_string()));
            keep(k, v);
        }
        for k in RULE_LENGTHS {
            let v = f.int_in(k, 0, 32).map(|n| json!(n));
            keep(k, v);
        }
        for k in RULE_MACS {
            let v = f.mac(k).map(|m| json!(m));
            keep(k, v);
        }
        let v = f.int_in("vlan", 0, 4095).map(|n| json!(n));
        keep("vlan", v);
        let v = f.int_in("dlType", 0x0600, 0xFFFF).map(|n| json!(n));
        keep("dlType", v);
        let v = f.int_in("nwTos", 0, 255).map(|n| json!(n));
        keep("nwTos", v);
        let v = f.int_in("nwProto", 0, 255).map(|n| json!(n));
        keep("nwProto", v);
        let tp_src = Self::port_range(&mut f, "tpSrc");
        let tp_dst = Self::port_range(&mut f, "tpDst");
        let tp_set = tp_src.is_some() || tp_dst.is_some();
        keep("tpSrc", tp_src);
        keep("tpDst", tp_dst);
        let fragment = f.string("fragmentPolicy");
        if let Some(fp) = &fragment
            && !FRAGMENT_POLICIES.contains(&fp.as_str())
        {
            f.violate(
                "fragmentPolicy",
                format!("must be one of {}", FRAGMENT_POLICIES.join(", ")),
            );
        }
        let is_nat = matches!(rule_type.as_str(), "snat" | "dnat");
        let mut floating_ip = false;
        if is_nat {
            match f.array("natTargets") {
                None => f.violate("natTargets", "may not be null or empty"),
                Some(t) if t.is_empty() => f.violate("natTargets", "may not be null or empty"),
                Some(targets) => {
                    let mut clean = Vec::new();
                    let mut ends = Vec::new();
                    for (i, t) in targets.iter().enumerate() {
                        let Some(obj) = t.as_object() else {
                            f.violate(&format!("natTargets[{i}]"), "must be an object");
                            continue;
                        };
                        let mut n = Fields::nested(obj, format!("natTargets[{i}]."));
                        let from = n.required_ipv4("addressFrom");
                        let to = n.required_ipv4("addressTo");
                        let pf = n.int_in("portFrom", 0, 65535).unwrap_or(0);
                        let pt = n.int_in("portTo", 0, 65535).unwrap_or(0);
                        f.violations.extend(n.violations);
                        if let (Some(from), Some(to)) = (from, to) {
                            ends.push((from, to, pf, pt));
                            clean.push(json!({
                                "addressFrom": from.to_string(),
                                "addressTo": to.to_string(),
                                "portFrom": pf,
                                "portTo": pt,
                            }));
                        }
                    }
                    floating_ip = targets.len() == 1
                        && ends.len() == 1
                        && ends[0].0 == ends[0].1
                        && ends[0].2 == 0
                        && ends[0].3 == 0
                        && !tp_set;
                    kept.insert("natTargets".into(), Value::Array(clean));
                }
            }
        }
        // Fragment policy defaults and constraints (§1.4.6, §1.4.7).
        let effective = match (&fragment, is_nat && !floating_ip) {
            (Some(fp), _) => fp.clone(),
            (None, true) => "unfragmented".to_string(),
            (None, false) if tp_set => "header".to_string(),
            (None, false) => "any".to_string(),
        };
        if tp_set && (effective == "any" || effective == "nonheader") {
            f.violate(
                "fragmentPolicy",
                "must be header or unfragmented when tpSrc or tpDst is set",
            );
        }
        if is_nat && !floating_ip && effective != "unfragmented" {
            f.violate(
                "fragmentPolicy",
                "must be unfragmented for NAT rules other than a floating IP",
            );
        }
        kept.insert("fragmentPolicy".into(), json!(effective));
        if matches!(
            rule_type.as_str(),
            "snat" | "dnat" | "rev_snat" | "rev_dnat"
        ) {
            match f.string("flowAction") {
                None => f.violate("flowAction", "may not be null"),
                Some(a) if !FLOW_ACTIONS.contains(&a.as_str()) => f.violate(
                    "flowAction",
                    format!("must be one of {}", FLOW_ACTIONS.join(", ")),
                ),
                Some(a) => {
                    kept.insert("flowAction".into(), json!(a));
                }
            }
        }
        let mut jump_chain = None;
        if rule_type == "jump" {
            jump_chain = f.uuid("jumpChainId");
            if let Some(n) = f.string("jumpChainName") {
                kept.insert("jumpChainName".into(), json!(n));
            }
            if jump_chain.is_none() && f.violations.is_empty() {
                return Err(Response::error(400, "Jump rule missing chain identifier"));
            }
            if let Some(j) = jump_chain {
                kept.insert("jumpChainId".into(), json!(j));
            }
        }
        finish(f)?;
        let Some(c) = self.store.chains.get(&chain) else {
            return Err(not_found("Chain", chain));
        };
        let position = position.unwrap_or(1) as usize;
        if position > c.rule_ids.len() + 1 {
            return Err(Response::error(
                400,
                "Position exceeds number of rules in chain",
            ));
        }
        if let Some(j) = jump_chain
            && !self.store.chains.contains_key(&j)
        {
            return Err(not_found("Chain", j));
        }
        let id = id.unwrap_or_else(Uuid::new_v4);
        if self.store.rules.contains_key(&id) {
            return Err(exists("Rule", id));
        }
        let seq = self.store.next_seq();
        self.store.rules.insert(
            id,
            Rule {
                seq,
                id,
                chain_id: chain,
                rule_type,
                jump_chain_id: jump_chain,
                body: kept,
            },
        );
        self.store
            .chains
            .get_mut(&chain)
            .expect("checked")
            .rule_ids
            .insert(position - 1, id);
        Ok(Response::created(Some(format!("{base}/rules/{id}"))))
    }

    // ---- host bindings ----

    fn bind(&mut self, req: &Request, base: &str, host: &str) -> Handled {
        check_consumes(req, &Resource::HostInterfacePort.single())?;
        let host = path_id("Host", host)?;
        let body = body_object(req)?;
        let mut f = Fields::new(&body);
        if !f.present("portId") {
            f.violate("portId", "may not be null");
        }
        let port = f.uuid("portId");
        let name = f.required_string("interfaceName");
        if let Some(n) = &name
            && let Some(problem) = interface_name_problem(n)
        {
            f.violate("interfaceName", problem);
        }
        // `hostId` in the body is ignored: the host comes from the URL.
        f.uuid("hostId");
        finish(f)?;
        let (Some(port), Some(name)) = (port, name) else {
            unreachable!("required fields were checked");
        };
        // Checks in MidoNet's order (§1.4.9).
        let h = self
            .store
            .hosts
            .get(&host)
            .ok_or_else(|| not_found("Host", host))?;
        if !h.in_tunnel_zone {
            return Err(Response::error(
                409,
                "The specified host is not in any tunnel zone.",
            ));
        }
        let p = self
            .store
            .ports
            .get(&port)
            .ok_or_else(|| not_found("Port", port))?;
        if p.interface_name.is_some() {
            return Err(Response::error(
                409,
                format!("Port {port} is already bound to an interface"),
            ));
        }
        let taken = self
            .store
            .bound_ports_of(host)
            .iter()
            .any(|q| q.interface_name.as_deref() == Some(name.as_str()));
        if taken {
            return Err(Response::error(
                409,
                format!("Interface {name} is already bound to a port."),
            ));
        }
        if self.config.reject_linked_port_binding && p.peer_id.is_some() {
            return Err(Response::error(
                409,
                format!("Port {port} is linked (interior) and cannot be bound to an interface"),
            ));
        }
        let p = self.store.ports.get_mut(&port).expect("checked");
        p.host_id = Some(host);
        p.interface_name = Some(name);
        Ok(Response::created(Some(format!(
            "{base}/hosts/{host}/ports/{port}"
        ))))
    }

    fn unbind(&mut self, port: &str) -> Handled {
        let port = path_id("Port", port)?;
        let p = self
            .store
            .ports
            .get_mut(&port)
            .ok_or_else(|| not_found("Port", port))?;
        if p.host_id.is_some() {
            p.previous_host_id = p.host_id.take();
        }
        p.interface_name = None;
        Ok(Response::no_content())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_split() {
        assert_eq!(base64_decode("YWRtaW46c2VjcmV0").unwrap(), b"admin:secret");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("YQ=").is_none());
        assert!(base64_decode("Y===").is_none());
        assert_eq!(java_split_colon("user:"), ["user"]);
        assert_eq!(java_split_colon(":pass"), ["", "pass"]);
        assert_eq!(java_split_colon("a:b:c").len(), 3);
    }

    #[test]
    fn expiry_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_624_000); // 2025-12-01 21:20 UTC
        assert_eq!(format_expiry(t), "Mon, 01-12-2025 21:20:00 GMT");
        assert_eq!(
            format_expiry(SystemTime::UNIX_EPOCH),
            "Thu, 01-01-1970 00:00:00 GMT"
        );
    }
}
