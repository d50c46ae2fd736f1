//! A strict emulator of the MidoNet 5.x REST API, the test double for
//! tenet's MidoNet backend (MidoNet itself cannot run on the test machines).
//!
//! Strict means it rejects what MidoNet rejects: wrong vendor media types,
//! missing fields, bad addresses, unknown ids, double links, bad bindings —
//! with MidoNet's status codes and error bodies. The rules come from
//! `shared/reference/midonet-api.md` (§1 resources, §4.3 rules); this page
//! lists them all, with the few places where the emulator is stricter.
//!
//! # Running it
//!
//! In process: [`Emulator::start`] binds `127.0.0.1:0` (loopback only), runs
//! the server on a background thread with its own tokio runtime, and stops
//! it on drop. [`Emulator::url`] is the API base,
//! `http://127.0.0.1:PORT/midonet-api`.
//!
//! ```no_run
//! use midonet_emulator::{Emulator, EmulatorOptions, HostSpec, Uuid};
//! let provider = Uuid::new_v4();
//! let host = Uuid::new_v4();
//! let emu = Emulator::start(
//!     EmulatorOptions::default()
//!         .user("admin", "secret")
//!         .host(HostSpec::new(host, "node-1"))
//!         .provider_router(provider, "provider"),
//! )
//! .unwrap();
//! println!("{}", emu.url());
//! ```
//!
//! Out of process: `midonet-emulator --listen 127.0.0.1:0 [--user admin:secret]...
//! [--host ID=NAME]... [--host-outside-tunnel-zone ID=NAME]...
//! [--user-without-admin NAME:PASSWORD]... [--provider-router ID]
//! [--token-lifetime-secs N] [--mock-auth] [--allow-linked-port-binding]
//! [--endpoints N] [--tls-cert FILE --tls-key FILE]` prints
//! `listening on http://127.0.0.1:PORT/midonet-api` (`https://` with TLS)
//! as its first stdout line (one such line per endpoint, in index order)
//! and serves until killed. Non-loopback listen addresses are refused.
//! Without `--user` the only user is `admin:admin`.
//!
//! With [`EmulatorOptions::tls`] every endpoint serves HTTPS (rustls) with
//! the given certificate chain and key; [`TlsIdentity::generate_with_openssl`]
//! makes a throwaway CA and a certificate for `127.0.0.1` for tests.
//!
//! # The API (paths under `/midonet-api`)
//!
//! ## Authentication
//! * `POST /login` with `Authorization: Basic base64(user:password)` →
//!   200, `Content-Type: application/vnd.org.midonet.Token-v1+json`, body
//!   `{"key": "<token>", "expires": "EEE, dd-MM-yyyy HH:mm:ss GMT" | null}`,
//!   `Set-Cookie: sessionId=<token>[; Expires=...]`. Missing header → 401
//!   "Authorization header is not set."; not `Basic`, bad base64, or
//!   credentials that do not split on `:` into exactly two parts (Java
//!   `split`, trailing empties dropped: `"user:"` is one part) → 401
//!   "Authorization header is not valid"; unknown user/password → 401.
//!   `X-Auth-Project` is accepted and ignored. Other methods → 405.
//! * Every other API call needs `X-Auth-Token: <key>` ([`AuthMode::Strict`],
//!   the default): missing/blank → 401 "No token was passed in.", unknown
//!   → 401, expired (see [`EmulatorOptions::token_lifetime`]) → 401 and
//!   the token is forgotten. The auth check comes before routing, so even
//!   an unknown path answers 401 without a token. A user added with
//!   [`EmulatorOptions::user_without_admin_role`] logs in (200, a token)
//!   and then gets 401 `{"message": null, "code": 401}` without
//!   `WWW-Authenticate` on every call: MidoNet's `AdminOnlyAuthFilter` (the
//!   API is for admins only). [`AuthMode::Mock`] accepts every call
//!   (MidoNet's default `MockAuthService`, whose identities are all admins).
//!
//! ## Media types (§1.2)
//! Creates check `Content-Type`; GETs check `Accept`. Parameters
//! (`; charset=UTF-8`) are ignored; wildcards (`*/*`, `application/*`) are
//! compatible (JAX-RS `isCompatible`) and get the preferred vendor type
//! back. A missing header, an unparsable one, or a comma list → **406**
//! (except the application root, where no `Accept` means `*/*`). The link
//! and binding creates are plain `@Consumes`: a mismatch there is **415**.
//! DELETEs check nothing. All `V` below are `application/vnd.org.midonet.`.
//!
//! | resource | create `Content-Type` / get `Accept` | list `Accept` |
//! |---|---|---|
//! | router | `V Router-v3+json`, `application/json` | `V collection.Router-v3+json`, `application/json` |
//! | bridge | `V Bridge-v4+json`, `V Bridge-v5+json`, `application/json` | `V collection.Bridge-v4+json`, `-v5`, `application/json` |
//! | port | `V Port-v3+json`, `V Port-v4+json`, `application/json` | `V collection.Port-v3+json`, `-v4`, `application/json` |
//! | port link | `V PortLink-v1+json`, `application/json` (415) | – |
//! | route | `V Route-v1+json`, `application/json` | `V collection.Route-v1+json`, `application/json` |
//! | chain | `V Chain-v1+json`, `application/json` | `V collection.Chain-v1+json`, `application/json` |
//! | rule | `V Rule-v2+json`, `application/json` | `V collection.Rule-v2+json`, `application/json` |
//! | host | `V Host-v3+json`, `application/json` | `V collection.Host-v3+json`, `application/json` |
//! | binding | `V HostInterfacePort-v1+json`, `application/json` (415 on create) | **only** `V collection.HostInterfacePort-v1+json` |
//! | tenant | `V Tenant-v2+json` | `V collection.Tenant-v2+json` |
//! | root | `application/json`, `V Application-v5+json` | – |
//!
//! The 2015.06 types (`Router-v2`, `Bridge-v1`, `Port-v2`) are refused
//! (406), as by every 5.x release. Errors are `Content-Type: V Error-v1+json`, body `{"message", "code"}`;
//! validation failures are 400 `{"message": "Validation error(s) found",
//! "code": 400, "violations": [{"property", "message"}]}`.
//!
//! ## Bodies
//! JSON objects; unknown properties are ignored; a non-object or malformed
//! body → 400; a field of the wrong JSON type → 400 violation naming it.
//! A client-supplied `id` is used (canonical hyphenated UUID); an id already
//! taken by an object of the same type → **409**; no `id` → a v4 UUID.
//! Creates answer **201**, empty body, `Location: <base>/<collection>/<id>`
//! (`<base>` is `http://<Host header>/midonet-api`).
//! Ids in paths that are not canonical UUIDs name nothing (404).
//! Unknown paths → 404; a known path with another method → 405.
//!
//! ## Endpoints and rules
//! * `GET /` → the application object (`uri`, `version: "v5.0"`,
//!   `routers`, `routerTemplate`, … `routeTemplate`, `ruleTemplate`).
//! * `POST /routers` {`id`, `tenantId`, `name` (≤255, else 400),
//!   `adminStateUp` (default true), `inboundFilterId`, `outboundFilterId`
//!   (chains that must exist, else 404), `asNumber`}; `loadBalancerId`,
//!   mirror ids → 404 (no such objects exist here). `GET /routers[?tenant_id=T]`,
//!   `GET /routers/{id}`. `DELETE /routers/{id}` → 204 **even if unknown**;
//!   cascades: its ports (each as `DELETE /ports/{id}`) and its routes.
//! * `GET /routers/{id}/ports`, `GET /routers/{id}/peer_ports` (ports linked
//!   to its ports) → 404 if the router is unknown.
//! * `POST /routers/{id}/ports` {`type`: **"Router"** (missing/unknown → 400;
//!   another port type → 400 "Not a router port."), `id`, `networkAddress`
//!   (required IPv4), `networkLength` (0..32, default 0), `portAddress`
//!   (required IPv4), `portSubnet` (CIDR list; default `[portAddress/networkLength]`),
//!   `portMac` (default random), `rtrPortVni` (0..0xFFFFFF), `adminStateUp`,
//!   filter ids (must exist, 404), `vifId`}. IPv4 is strict dotted quad
//!   (no leading zeros). Router must exist (404, checked after body
//!   validation). `tunnelKey` is assigned; `deviceId` comes from the URL.
//!   Side effect: one route `{src 0.0.0.0/0, dst <subnet address>/32,
//!   type Local, nextHopPort <port>}` per `portSubnet` entry.
//! * `POST /bridges` {`id`, `tenantId`, `name` (≤255), `adminStateUp`, filter
//!   ids; `vxlanPortIds` must be absent/null (400)}. `GET /bridges[?tenant_id=T]`,
//!   `GET /bridges/{id}`, `DELETE /bridges/{id}` (404 if unknown; cascades
//!   its ports). `GET /bridges/{id}/ports`, `/bridges/{id}/peer_ports`.
//! * `POST /bridges/{id}/ports` {`type`: **"Bridge"** (another port type →
//!   400 "Not a bridge port."), `id`, `vlanId` (0..4095, null → 0),
//!   `adminStateUp`, filter ids, `vifId`}; bridge must exist (404).
//! * Stricter than MidoNet: a port create body with `hostId`,
//!   `interfaceName` or `peerId` → 400 (bind and link through their endpoints).
//! * `GET /ports`, `GET /ports/{id}` (the owner is `deviceId`; like
//!   MidoNet, no `routerId`/`bridgeId` is shown). `DELETE /ports/{id}` → 404 if unknown;
//!   deletes the routes whose `nextHopPort` it is, unlinks its peer, and
//!   its binding goes with it.
//! * `POST /ports/{id}/link` {`peerId`} → 201, **no Location**. Both ports
//!   must exist (404); both must be unlinked and distinct, else **409**
//!   "Ports are not linkable."; a non-null `portId` in the body → **500**
//!   and nothing is linked (what MidoNet does). Sets `peerId` on both.
//!   `DELETE /ports/{id}/link` → 404 if the port is unknown; 204, clears
//!   both sides, also when not linked.
//! * `POST /routers/{id}/routes` {`id`, `dstNetworkAddr`, `srcNetworkAddr`
//!   (required IPv4), `dstNetworkLength`, `srcNetworkLength` (0..32),
//!   `nextHopGateway` (IPv4), `nextHopPort`, `type` (required: `Normal`,
//!   `BlackHole`, `Reject`, `Local`, `Fip64`), `weight` (≥0), `attributes`}.
//!   Body validation (400) → router exists (404) → for `Normal` the
//!   `nextHopPort` must be a port of this router, else **400** "This type of
//!   route requires a next hop port that is a port on the same router.";
//!   for other types a `nextHopPort` must exist (404). A route with a
//!   next-hop port belongs to that port (deleted with it); `routerId` is
//!   shown from the port. `GET /routers/{id}/routes` lists the router's
//!   routes including the Local port routes; `GET /routes/{id}`;
//!   `DELETE /routes/{id}` and `DELETE /routers/{rid}/routes/{id}` → 204
//!   **even if unknown** (`rid` not checked).
//! * `POST /chains` {`id`, `tenantId`, `name` (≤255)}; `GET /chains[?tenant_id=T]`,
//!   `GET /chains/{id}`; `DELETE /chains/{id}` (404 if unknown) deletes its
//!   rules and every jump rule targeting it, and clears router/bridge/port
//!   filter ids pointing at it.
//! * `POST /chains/{id}/rules` {`type` (required: `accept`, `drop`,
//!   `reject`, `return`, `jump`, `snat`, `dnat`, `rev_snat`, `rev_dnat`,
//!   `trace`, `l2_transform`; missing/unknown → 400), `id`, `position`
//!   (≥1, default 1; > rules+1 → 400 "Position exceeds number of rules in
//!   chain"), condition fields (typed; IPv4 strict, lengths 0..32, `dlType`
//!   0x0600..0xFFFF, MACs, `tpSrc`/`tpDst` `{start, end}` in 1..65535),
//!   `fragmentPolicy` (`any|nonheader|header|unfragmented`; default
//!   `header` with tp* set, else `any`; tp* with `any`/`nonheader` → 400)}.
//!   NAT (`snat|dnat|rev_snat|rev_dnat`): `flowAction` required,
//!   `accept|continue|return` (400). `snat|dnat`: `natTargets` ≥1 with
//!   required IPv4 `addressFrom`/`addressTo`, ports 0..65535 (400); unless
//!   it is a floating IP (one target, from == to, ports 0/0, no tp*), the
//!   fragment policy must be `unfragmented` (null → `unfragmented`), else
//!   400. `jump`: no `jumpChainId` → 400 "Jump rule missing chain
//!   identifier"; unknown target → 404. Chain must exist (404).
//!   `GET /chains/{id}/rules` (positions 1..n), `GET /rules/{id}`,
//!   `DELETE /rules/{id}` (404 if unknown).
//! * `GET /hosts`, `GET /hosts/{id}`, `DELETE /hosts/{id}` → 200 (its ports
//!   lose their bindings). Hosts are pre-registered (agents register them).
//! * `POST /hosts/{hostId}/ports` {`portId` (required), `interfaceName`
//!   (required; Linux rules: 1..15 bytes, no `/`, `:`, whitespace; not `.`/`..`
//!   → 400), `hostId` ignored}. Then in order: host exists (404) → host in a
//!   tunnel zone (409 "The specified host is not in any tunnel zone.") →
//!   port exists (404) → port not bound (409 "Port `<id>` is already bound to
//!   an interface") → name free on that host (409 "Interface `<name>` is
//!   already bound to a port.") → stricter than 5.x, on by default: port not
//!   linked (409; `reject_linked_port_binding`). 201, `Location:
//!   <base>/hosts/{h}/ports/{p}`. `GET /hosts/{id}/ports` (host must exist),
//!   `GET /hosts/{h}/ports/{p}` (404 unless bound to that host),
//!   `DELETE /hosts/{h}/ports/{p}` → 404 if the *port* is unknown, host not
//!   checked; clears `hostId`/`interfaceName`, sets `previousHostId`; 204.
//! * `GET /tenants`, `GET /tenants/{id}`: the distinct `tenantId`s of
//!   routers, bridges and chains; `POST/PUT/DELETE` → 405 "Tenants cannot be
//!   created, updated or deleted via the REST API."
//!
//! # Control endpoints (no auth, not journaled, not faulted)
//!
//! | request | answer |
//! |---|---|
//! | `GET /_emulator/journal` | 200, JSON array of [`JournalEntry`]: `{seq, endpoint, method, path, query, content_type, accept, status, body, fault}` |
//! | `DELETE /_emulator/journal` | 204 |
//! | `POST /_emulator/faults` with a [`Fault`]: `{"method": "POST"\|null, "path_prefix": "/midonet-api/routers"\|null, "nth": N\|null, "status": 500\|null, "delay_ms": 0, "times": 1\|null, "after": false, "message": null, "endpoint": null}` (all optional; unknown keys → 400) | 201; 400 naming the bad field |
//! | `GET /_emulator/faults` | 200, the injected faults as [`FaultState`]: each fault's fields plus `seen` (matching calls) and `fired` (calls hit) |
//! | `DELETE /_emulator/faults` | 204 |
//! | `GET /_emulator/objects` | 200, [`Snapshot`]: `{"routers": [...], "bridges", "ports", "routes", "chains", "rules", "hosts"}`, each object as its GET shows it |
//! | `POST /_emulator/leaks` with `{"roots": ["<uuid>", ...]}` | 200, JSON array of [`LeakedObject`] `{"type": "bridge", "id", "name"}`; 400 if a root is not a UUID |
//! | `POST /_emulator/hosts` with `{"id", "name", "in_tunnel_zone": true}` | 201 (registers a host) |
//! | `DELETE /_emulator/tokens` | 204 (every issued token becomes invalid: next call 401) |
//! | `POST /_emulator/trace` with `{"router": "<uuid>", "flow": {"src", "dst", "protocol": 6, "src_port": 0, "dst_port": 0}}` | 200, [`Trace`]: `{"hops": [{"router", "route", "candidates", "port"}], "end": {"kind": "bridge"\|"local"\|"exterior"\|"no_route"\|"blackhole"\|"reject"\|"unsupported"\|"dropped"\|"loop"\|"unknown_router", …}}`; 400 naming the bad field |
//! | `POST /_emulator/endpoints/{i}/stop` | 204 (endpoint `i` closes for good: connection refused); 404 if no such endpoint |
//!
//! Several endpoints ([`EmulatorOptions::endpoints`], `--endpoints N`)
//! serve one shared state, like MidoNet API servers over one NSDB; a fault
//! with `endpoint` hits only that listener, and stopping an endpoint makes
//! it refuse connections — the two failover cases (5xx, unreachable).
//!
//! Not emulated (405 or 404): updates (`PUT`), `POST /hosts` (hosts come
//! from the options or `/_emulator/hosts`), DHCP, ARP/MAC tables, port
//! groups, BGP, load balancers, mirrors, VTEPs, tunnel-zone resources.
//!
//! Fault semantics are on [`Fault`]; [`Fault::concurrent_modification`] is
//! MidoNet's 409 for a write whose storage transaction kept meeting
//! concurrent changes (nothing written). The journal records every API call
//! (including `/login` and rejected calls) in completion order.
//!
//! # Routing
//!
//! [`Emulator::trace`] (and `POST /_emulator/trace`) routes a flow from a
//! router as MidoNet's agent would: longest destination prefix, matching
//! source, lowest weight, and among equal routes one chosen by a hash of
//! the flow's connection — so two equal routes to one subnet send some
//! flows each way. It follows links from router to router and ends at a
//! bridge, a router's own address, a bound port, or a drop. Rule chains
//! (filters, NAT) are not simulated. Details: `src/trace.rs`.
//!
//! The leak report lists routers, bridges, ports, routes, chains and rules
//! that are not reachable from the provider router, any host, or the given
//! roots, following: router → its ports, routes, filter chains; port → its
//! device, peer, routes through it, filter chains, bound host; bridge → its
//! ports, filter chains; chain → its rules; rule → its jump chain; host →
//! its bound ports; route → its next-hop port. (A tenant router linked to
//! the provider router is therefore reachable; an unlinked bridge with no
//! bound port is a leak.)

mod api;
mod control;
mod http;
mod media;
mod model;
mod server;
mod trace;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

pub use api::AuthMode;
pub use control::{Fault, FaultState, JournalEntry};
pub use model::{LeakedObject, Snapshot};
pub use trace::{End, Flow, Hop, Trace};
pub use uuid::Uuid;

use api::{Api, ApiConfig};
use control::Shared;

/// A host the emulated deployment knows (registered by its agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub id: Uuid,
    pub name: String,
    /// Bindings on a host outside every tunnel zone are refused (409).
    pub in_tunnel_zone: bool,
}

impl HostSpec {
    /// A host in a tunnel zone (ready for bindings).
    pub fn new(id: Uuid, name: &str) -> Self {
        HostSpec {
            id,
            name: name.to_string(),
            in_tunnel_zone: true,
        }
    }

    /// A host in no tunnel zone.
    pub fn outside_tunnel_zone(id: Uuid, name: &str) -> Self {
        HostSpec {
            in_tunnel_zone: false,
            ..HostSpec::new(id, name)
        }
    }
}

/// How to start an [`Emulator`].
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Where to listen; must be a loopback address (default `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// `(name, password)` pairs `/login` accepts, as admins (default: none).
    pub users: Vec<(String, String)>,
    /// `(name, password)` pairs `/login` accepts whose identity lacks the
    /// admin role: with [`AuthMode::Strict`] every other call of theirs
    /// answers 401 with a null message (MidoNet's `AdminOnlyAuthFilter`).
    pub non_admin_users: Vec<(String, String)>,
    /// Hosts to pre-register.
    pub hosts: Vec<HostSpec>,
    /// The provider router to pre-create: `(id, name)`.
    pub provider_router: Option<(Uuid, String)>,
    /// How long a token lives (default: forever, `expires: null`).
    pub token_lifetime: Option<Duration>,
    pub auth: AuthMode,
    /// Refuse to bind a linked (interior) port (409). MidoNet 5.x allows
    /// it; tenet never does it on purpose, so the default catches the bug.
    pub reject_linked_port_binding: bool,
    /// How many API endpoints (listeners) serve the same state, like
    /// several MidoNet API servers over one NSDB (default 1). The first
    /// binds `listen`, the others the same IP with port 0.
    pub endpoints: usize,
    /// Serve HTTPS with this identity instead of HTTP (every endpoint).
    pub tls: Option<TlsIdentity>,
}

/// A server certificate chain and its private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    /// The certificate chain, leaf first (PEM `CERTIFICATE` blocks).
    pub cert_chain_pem: Vec<u8>,
    /// The leaf's private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl TlsIdentity {
    /// Reads both PEM files.
    pub fn from_files(cert: &std::path::Path, key: &std::path::Path) -> std::io::Result<Self> {
        Ok(TlsIdentity {
            cert_chain_pem: std::fs::read(cert)?,
            key_pem: std::fs::read(key)?,
        })
    }

    /// For tests: a throwaway CA and a server certificate it signs for
    /// `127.0.0.1` and `localhost`, made with the `openssl` command (Debian's
    /// `openssl` package) in `dir`. Returns the identity and the CA
    /// certificate's path (what a client trusts).
    pub fn generate_with_openssl(dir: &std::path::Path) -> Result<(Self, PathBuf), String> {
        let run = |args: &[&str]| -> Result<(), String> {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .map_err(|e| format!("openssl (Debian package `openssl`): {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "openssl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=emulator test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        run(&ca)?;
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        run(&csr)?;
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .map_err(|e| e.to_string())?;
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ])?;
        let id = Self::from_files(&dir.join("server.pem"), &dir.join("server.key"))
            .map_err(|e| e.to_string())?;
        Ok((id, dir.join("ca.pem")))
    }

    fn server_config(&self) -> Result<tokio_rustls::rustls::ServerConfig, String> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls;
        let certs = CertificateDer::pem_slice_iter(&self.cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate chain: {e}"))?;
        if certs.is_empty() {
            return Err("certificate chain: no PEM certificate".into());
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| format!("private key: {e}"))?;
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key: {e}"))
    }
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            users: Vec::new(),
            non_admin_users: Vec::new(),
            hosts: Vec::new(),
            provider_router: None,
            token_lifetime: None,
            auth: AuthMode::Strict,
            reject_linked_port_binding: true,
            endpoints: 1,
            tls: None,
        }
    }
}

impl EmulatorOptions {
    /// Adds a user `/login` accepts.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_string(), password.to_string()));
        self
    }

    pub fn host(mut self, host: HostSpec) -> Self {
        self.hosts.push(host);
        self
    }

    pub fn provider_router(mut self, id: Uuid, name: &str) -> Self {
        self.provider_router = Some((id, name.to_string()));
        self
    }

    pub fn token_lifetime(mut self, d: Duration) -> Self {
        self.token_lifetime = Some(d);
        self
    }

    pub fn auth(mut self, mode: AuthMode) -> Self {
        self.auth = mode;
        self
    }

    /// Adds a user `/login` accepts but who lacks the admin role (see
    /// [`EmulatorOptions::non_admin_users`]).
    pub fn user_without_admin_role(mut self, name: &str, password: &str) -> Self {
        self.non_admin_users
            .push((name.to_string(), password.to_string()));
        self
    }

    /// Serves HTTPS with `identity` (see [`EmulatorOptions::tls`]).
    pub fn tls(mut self, identity: TlsIdentity) -> Self {
        self.tls = Some(identity);
        self
    }

    /// See [`EmulatorOptions::reject_linked_port_binding`].
    pub fn reject_linked_port_binding(mut self, reject: bool) -> Self {
        self.reject_linked_port_binding = reject;
        self
    }

    /// See [`EmulatorOptions::endpoints`].
    pub fn endpoints(mut self, n: usize) -> Self {
        self.endpoints = n;
        self
    }

    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }
}

/// Why the emulator could not start.
#[derive(Debug)]
pub enum StartError {
    /// The listen address is not loopback.
    NotLoopback(SocketAddr),
    Io(std::io::Error),
    /// The TLS identity is unusable.
    Tls(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::NotLoopback(a) => {
                write!(
                    f,
                    "listen address {a} is not a loopback address (the emulator serves only this machine)"
                )
            }
            StartError::Io(e) => write!(f, "cannot start the emulator: {e}"),
            StartError::Tls(e) => write!(f, "cannot serve TLS: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Io(e)
    }
}

/// An object id given as a leak-report root: a [`Uuid`] or its string.
pub trait LeakRoot {
    /// The id; panics on a string that is not a canonical UUID.
    fn root_id(&self) -> Uuid;
}

impl LeakRoot for Uuid {
    fn root_id(&self) -> Uuid {
        *self
    }
}

impl LeakRoot for &Uuid {
    fn root_id(&self) -> Uuid {
        **self
    }
}

impl LeakRoot for str {
    fn root_id(&self) -> Uuid {
        validate::parse_uuid(self).unwrap_or_else(|| panic!("leak root {self:?} is not a UUID"))
    }
}

impl LeakRoot for &str {
    fn root_id(&self) -> Uuid {
        (**self).root_id()
    }
}

impl LeakRoot for String {
    fn root_id(&self) -> Uuid {
        self.as_str().root_id()
    }
}

/// A running emulator; dropping it stops the server.
pub struct Emulator {
    addrs: Vec<SocketAddr>,
    /// `http` or `https`.
    scheme: &'static str,
    shared: Arc<Mutex<Shared>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Binds `opts.listen` and serves on a background thread.
    pub fn start(opts: EmulatorOptions) -> Result<Emulator, StartError> {
        if !opts.listen.ip().is_loopback() {
            return Err(StartError::NotLoopback(opts.listen));
        }
        let tls = match &opts.tls {
            Some(id) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                id.server_config().map_err(StartError::Tls)?,
            ))),
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut listeners = Vec::new();
        for i in 0..opts.endpoints.max(1) {
            let at = if i == 0 {
                opts.listen
            } else {
                SocketAddr::new(opts.listen.ip(), 0)
            };
            let l = std::net::TcpListener::bind(at)?;
            l.set_nonblocking(true)?;
            listeners.push(l);
        }
        let addrs = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<Vec<_>, _>>()?;
        let mut api = Api::new(ApiConfig {
            users: opts.users,
            non_admin_users: opts.non_admin_users,
            auth: opts.auth,
            token_lifetime: opts.token_lifetime,
            reject_linked_port_binding: opts.reject_linked_port_binding,
        });
        for h in &opts.hosts {
            api.add_host(h.id, &h.name, h.in_tunnel_zone);
        }
        if let Some((id, name)) = &opts.provider_router {
            api.add_router(*id, name);
        }
        let (stop_tx, stop_rx): (Vec<_>, Vec<_>) =
            addrs.iter().map(|_| watch::channel(false)).unzip();
        let shared = Arc::new(Mutex::new(Shared::new(
            api,
            opts.provider_router.as_ref().map(|(id, _)| *id),
            stop_tx,
        )));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = oneshot::channel();
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("midonet-emulator-{}", addrs[0].port()))
            .spawn(move || runtime.block_on(server::serve(listeners, stop_rx, state, tls, rx)))?;
        Ok(Emulator {
            addrs,
            scheme,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The API base URL of the first endpoint,
    /// `http://127.0.0.1:PORT/midonet-api` (`https://` with TLS).
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.addrs[0], api::ROOT)
    }

    /// The API base URLs of every endpoint, in index order.
    pub fn urls(&self) -> Vec<String> {
        self.addrs
            .iter()
            .map(|a| format!("{}://{a}{}", self.scheme, api::ROOT))
            .collect()
    }

    /// The socket address of the first endpoint.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The socket addresses of every endpoint.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Closes endpoint `index` for good: its connections are dropped and
    /// new ones refused (a dead API server, for failover tests). Panics on
    /// an index out of range.
    pub fn stop_endpoint(&self, index: usize) {
        if let Err(e) = server::lock(&self.shared).stop_endpoint(index) {
            panic!("{e}");
        }
    }

    /// Every API call so far, in completion order.
    pub fn journal(&self) -> Vec<JournalEntry> {
        server::lock(&self.shared).journal()
    }

    pub fn clear_journal(&self) {
        server::lock(&self.shared).clear_journal();
    }

    /// Injects a fault (see [`Fault`]). Panics on a fault that makes no
    /// sense (zero `nth`, no status and no delay…): that is a test bug.
    pub fn inject(&self, fault: Fault) {
        if let Err(e) = server::lock(&self.shared).inject(fault) {
            panic!("invalid fault: {e}");
        }
    }

    /// The injected faults with how many calls each has seen and hit.
    pub fn faults(&self) -> Vec<FaultState> {
        server::lock(&self.shared).faults()
    }

    pub fn clear_faults(&self) {
        server::lock(&self.shared).clear_faults();
    }

    /// Every object, each in its GET representation.
    pub fn objects(&self) -> Snapshot {
        server::lock(&self.shared).api.store.snapshot(&self.url())
    }

    /// Objects reachable from neither the provider router, nor a host, nor
    /// `roots` (object ids as [`Uuid`]s or strings; `leaks::<Uuid>(&[])`
    /// for none). Panics if a string root is not a UUID (a test bug).
    pub fn leaks<R: LeakRoot>(&self, roots: &[R]) -> Vec<LeakedObject> {
        let ids: Vec<Uuid> = roots.iter().map(LeakRoot::root_id).collect();
        server::lock(&self.shared).leaks(&ids)
    }

    /// Registers another host.
    pub fn add_host(&self, host: HostSpec) {
        server::lock(&self.shared)
            .api
            .add_host(host.id, &host.name, host.in_tunnel_zone);
    }

    /// Invalidates every issued token (the next call answers 401).
    pub fn expire_tokens(&self) {
        server::lock(&self.shared).api.expire_tokens();
    }

    /// Where MidoNet would route `flow` entering router `router`: each
    /// router's route choice and where the packet ends (see [`Trace`]).
    pub fn trace(&self, router: Uuid, flow: &Flow) -> Trace {
        server::lock(&self.shared).api.store.trace(router, flow)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
