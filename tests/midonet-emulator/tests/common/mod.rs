//! A minimal HTTP/1.1 client for the emulator's tests.
//!
//! Hand-written on purpose: strictness tests must control every header
//! (send no `Accept` at all, a comma list, a wrong `Content-Type`), which
//! general clients decide for you (ureq and reqwest add `Accept: */*`).
//! One request per connection (`Connection: close`), loopback only.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use midonet_emulator::{Emulator, EmulatorOptions, HostSpec, Uuid};
use serde_json::Value;

pub const VND: &str = "application/vnd.org.midonet.";
pub const ROUTER: &str = "application/vnd.org.midonet.Router-v3+json";
pub const ROUTERS: &str = "application/vnd.org.midonet.collection.Router-v3+json";
pub const BRIDGE: &str = "application/vnd.org.midonet.Bridge-v4+json";
pub const BRIDGES: &str = "application/vnd.org.midonet.collection.Bridge-v4+json";
pub const PORT: &str = "application/vnd.org.midonet.Port-v3+json";
pub const PORTS: &str = "application/vnd.org.midonet.collection.Port-v3+json";
pub const LINK: &str = "application/vnd.org.midonet.PortLink-v1+json";
pub const ROUTE: &str = "application/vnd.org.midonet.Route-v1+json";
pub const ROUTES: &str = "application/vnd.org.midonet.collection.Route-v1+json";
pub const CHAIN: &str = "application/vnd.org.midonet.Chain-v1+json";
pub const CHAINS: &str = "application/vnd.org.midonet.collection.Chain-v1+json";
pub const RULE: &str = "application/vnd.org.midonet.Rule-v2+json";
pub const RULES: &str = "application/vnd.org.midonet.collection.Rule-v2+json";
pub const BINDING: &str = "application/vnd.org.midonet.HostInterfacePort-v1+json";
pub const BINDINGS: &str = "application/vnd.org.midonet.collection.HostInterfacePort-v1+json";
pub const HOST: &str = "application/vnd.org.midonet.Host-v3+json";
pub const ERROR: &str = "application/vnd.org.midonet.Error-v1+json";
pub const TOKEN: &str = "application/vnd.org.midonet.Token-v1+json";

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The error message of a MidoNet error body (checks its shape).
    pub fn message(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some(ERROR),
            "error content type"
        );
        let v = self.json();
        assert_eq!(v["code"], self.status, "error code matches the status");
        v["message"].as_str().expect("message").to_string()
    }

    /// The properties named in a validation error.
    pub fn violations(&self) -> Vec<String> {
        assert_eq!(self.status, 400, "{}", String::from_utf8_lossy(&self.body));
        let v = self.json();
        assert_eq!(v["message"], "Validation error(s) found");
        v["violations"]
            .as_array()
            .expect("violations")
            .iter()
            .map(|x| x["property"].as_str().unwrap().to_string())
            .collect()
    }

    /// The id at the end of the Location header of a 201.
    pub fn created_id(&self) -> Uuid {
        assert_eq!(self.status, 201, "{}", String::from_utf8_lossy(&self.body));
        assert!(self.body.is_empty(), "201 has an empty body");
        let loc = self.header("location").expect("Location on 201");
        Uuid::parse_str(loc.rsplit('/').next().unwrap()).expect("Location ends in an id")
    }
}

/// Sends one request to `addr` and reads the whole answer.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect to the emulator");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    let body = body.unwrap_or(b"");
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response has a header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Resp {
        status,
        headers,
        body,
    }
}

pub fn basic(user: &str, pass: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{pass}").into_bytes();
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    format!("Basic {out}")
}

/// A client holding a token, with paths relative to `/midonet-api`.
pub struct Client {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl Client {
    pub fn new(emu: &Emulator) -> Self {
        Client {
            addr: emu.addr(),
            token: None,
        }
    }

    pub fn login(&mut self, user: &str, pass: &str) -> Resp {
        let auth = basic(user, pass);
        let r = send(
            self.addr,
            "POST",
            "/midonet-api/login",
            &[("Authorization", &auth)],
            None,
        );
        if r.status == 200 {
            self.token = Some(r.json()["key"].as_str().unwrap().to_string());
        }
        r
    }

    /// A request with the token (if any) and the given extra headers.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        if let Some(t) = &self.token {
            h.push(("X-Auth-Token", t));
        }
        send(self.addr, method, &format!("/midonet-api{path}"), &h, body)
    }

    pub fn post(&self, path: &str, content_type: &str, body: &Value) -> Resp {
        let b = serde_json::to_vec(body).unwrap();
        self.request("POST", path, &[("Content-Type", content_type)], Some(&b))
    }

    pub fn get(&self, path: &str, accept: &str) -> Resp {
        self.request("GET", path, &[("Accept", accept)], None)
    }

    pub fn delete(&self, path: &str) -> Resp {
        self.request("DELETE", path, &[], None)
    }

    /// GET that must succeed; returns the JSON.
    pub fn get_ok(&self, path: &str, accept: &str) -> Value {
        let r = self.get(path, accept);
        assert_eq!(
            r.status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()
    }

    /// POST that must answer 201; returns the created id.
    pub fn create(&self, path: &str, content_type: &str, body: &Value) -> Uuid {
        let r = self.post(path, content_type, body);
        assert_eq!(
            r.status,
            201,
            "POST {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.created_id()
    }

    /// Control endpoint call (no token, outside the API root).
    pub fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let b = body.map(|v| serde_json::to_vec(v).unwrap());
        let h: &[(&str, &str)] = if b.is_some() {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        send(
            self.addr,
            method,
            &format!("/_emulator{path}"),
            h,
            b.as_deref(),
        )
    }

    // ---- topology helpers ----

    pub fn router(&self, name: &str) -> Uuid {
        self.create(
            "/routers",
            ROUTER,
            &serde_json::json!({"name": name, "tenantId": "t1"}),
        )
    }

    pub fn bridge(&self, name: &str) -> Uuid {
        self.create(
            "/bridges",
            BRIDGE,
            &serde_json::json!({"name": name, "tenantId": "t1"}),
        )
    }

    pub fn router_port(&self, router: Uuid, net: &str, len: u8, addr: &str) -> Uuid {
        self.create(
            &format!("/routers/{router}/ports"),
            PORT,
            &serde_json::json!({"type": "Router", "networkAddress": net, "networkLength": len, "portAddress": addr}),
        )
    }

    pub fn bridge_port(&self, bridge: Uuid) -> Uuid {
        self.create(
            &format!("/bridges/{bridge}/ports"),
            PORT,
            &serde_json::json!({"type": "Bridge", "vlanId": null}),
        )
    }

    pub fn link(&self, a: Uuid, b: Uuid) -> Resp {
        self.post(
            &format!("/ports/{a}/link"),
            LINK,
            &serde_json::json!({"peerId": b}),
        )
    }

    pub fn bind(&self, host: Uuid, port: Uuid, ifname: &str) -> Resp {
        self.post(
            &format!("/hosts/{host}/ports"),
            BINDING,
            &serde_json::json!({"hostId": host, "portId": port, "interfaceName": ifname}),
        )
    }

    pub fn port(&self, id: Uuid) -> Value {
        self.get_ok(&format!("/ports/{id}"), PORT)
    }
}

/// A running emulator with user admin:secret, one host in a tunnel zone,
/// a provider router, and a logged-in client.
pub struct Fixture {
    pub emu: Emulator,
    pub client: Client,
    pub host: Uuid,
    pub provider: Uuid,
}

pub fn fixture_with(opts: EmulatorOptions) -> Fixture {
    let host = Uuid::new_v4();
    let provider = Uuid::new_v4();
    let emu = Emulator::start(
        opts.user("admin", "secret")
            .host(HostSpec::new(host, "node-1"))
            .provider_router(provider, "provider"),
    )
    .expect("start the emulator");
    let mut client = Client::new(&emu);
    assert_eq!(client.login("admin", "secret").status, 200);
    Fixture {
        emu,
        client,
        host,
        provider,
    }
}

pub fn fixture() -> Fixture {
    fixture_with(EmulatorOptions::default())
}
