//! Test hooks: the request journal, fault injection, the leak report, and
//! the `/_emulator/*` HTTP endpoints that expose them out of process.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

use crate::api::Api;
use crate::http::{Request, Response};
use crate::model::LeakedObject;
use crate::trace::Flow;
use crate::validate::parse_uuid;

/// Prefix of the control endpoints (outside the API root, no auth).
pub const CONTROL_ROOT: &str = "/_emulator";

/// The message of [`Fault::concurrent_modification`], in the shape of ZOOM's
/// (`<type> with ID <id> was modified during the transaction.`).
pub const CONCURRENT_MODIFICATION: &str = "Object was modified during the transaction.";

/// One API call as the emulator answered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// 1-based, increasing in the order the calls completed.
    pub seq: u64,
    /// The listener that received the call (0-based).
    pub endpoint: usize,
    pub method: String,
    /// The request path (`/midonet-api/...`), without the query string.
    pub path: String,
    /// The query string, if any (`tenant_id=t1`).
    pub query: Option<String>,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    /// The status the client received.
    pub status: u16,
    /// The request body when it was JSON (else `null`).
    pub body: Option<Value>,
    /// True when an injected fault changed the status.
    pub fault: bool,
}

/// A fault to inject into matching API calls (not into `/_emulator/*`).
///
/// A call matches when `method` (if set) equals its method, `path_prefix`
/// (if set) is a prefix of its path (`/midonet-api/routers`), and
/// `endpoint` (if set) is the index of the listener that received it. Matching calls
/// are counted from the moment the fault is injected; the fault hits calls
/// number `nth`, `nth + 1`, … (`nth` null = from the first), `times` calls
/// in all (`times` null = 1 when `nth` is set, unlimited when it is not).
/// A hit first sleeps `delay_ms`, then, if `status` is set, answers that
/// status with an `Error-v1+json` body — before the call reaches the API
/// (nothing changes), or after it when `after` is true (the change is made
/// and the client still sees the error, like a lost response).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fault {
    pub method: Option<String>,
    pub path_prefix: Option<String>,
    pub nth: Option<u32>,
    pub status: Option<u16>,
    pub delay_ms: u64,
    pub times: Option<u32>,
    pub after: bool,
    /// The error message (default "injected fault").
    pub message: Option<String>,
    /// Only calls to this listener (0-based), for failover tests.
    pub endpoint: Option<usize>,
}

impl Fault {
    /// Every matching call answers `status`.
    pub fn status(status: u16) -> Self {
        Fault {
            status: Some(status),
            ..Fault::default()
        }
    }

    pub fn method(mut self, m: &str) -> Self {
        self.method = Some(m.to_string());
        self
    }

    pub fn path_prefix(mut self, p: &str) -> Self {
        self.path_prefix = Some(p.to_string());
        self
    }

    pub fn nth(mut self, n: u32) -> Self {
        self.nth = Some(n);
        self
    }

    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay_ms = d.as_millis() as u64;
        self
    }

    pub fn after(mut self) -> Self {
        self.after = true;
        self
    }

    pub fn endpoint(mut self, index: usize) -> Self {
        self.endpoint = Some(index);
        self
    }

    /// What MidoNet answers when a write's storage transaction met a
    /// concurrent modification on each of its three tries
    /// (`ConcurrentModificationException` → 409; nothing is written).
    /// Matching calls answer it before reaching the API; narrow it with
    /// `method`, `path_prefix`, `nth`, `times`.
    pub fn concurrent_modification() -> Self {
        Fault {
            status: Some(409),
            message: Some(CONCURRENT_MODIFICATION.to_string()),
            ..Fault::default()
        }
    }

    /// Checks the fault makes sense; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = self.status
            && !(100..=599).contains(&s)
        {
            return Err(format!("status: {s} is not an HTTP status"));
        }
        if self.nth == Some(0) {
            return Err("nth: is 1-based, 0 is invalid".into());
        }
        if self.times == Some(0) {
            return Err("times: must be at least 1".into());
        }
        if self.status.is_none() && self.delay_ms == 0 {
            return Err("status/delay_ms: a fault needs a status or a delay".into());
        }
        if self.after && self.status.is_none() {
            return Err("after: needs a status".into());
        }
        Ok(())
    }

    fn matches(&self, req: &Request) -> bool {
        self.endpoint.is_none_or(|e| e == req.endpoint)
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(&req.method))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| req.path.starts_with(p))
    }
}

/// An injected fault with its counters (serialised flat: the fault's
/// fields plus `seen` and `fired`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultState {
    #[serde(flatten)]
    pub fault: Fault,
    /// Matching calls since injection.
    pub seen: u32,
    /// Calls the fault hit.
    pub fired: u32,
}

type ActiveFault = FaultState;

/// What the injected faults do to one call.
#[derive(Debug, Default)]
pub struct FaultAction {
    pub delay: Duration,
    pub status: Option<(u16, String)>,
    pub after: bool,
}

/// Everything behind the emulator's mutex.
pub struct Shared {
    pub api: Api,
    pub provider_router: Option<Uuid>,
    /// One per listener: `true` closes it.
    pub stops: Vec<watch::Sender<bool>>,
    journal: Vec<JournalEntry>,
    journal_seq: u64,
    faults: Vec<ActiveFault>,
}

impl Shared {
    pub fn new(api: Api, provider_router: Option<Uuid>, stops: Vec<watch::Sender<bool>>) -> Self {
        Shared {
            api,
            provider_router,
            stops,
            journal: Vec::new(),
            journal_seq: 0,
            faults: Vec::new(),
        }
    }

    pub fn journal(&self) -> Vec<JournalEntry> {
        self.journal.clone()
    }

    pub fn clear_journal(&mut self) {
        self.journal.clear();
    }

    pub fn inject(&mut self, fault: Fault) -> Result<(), String> {
        fault.validate()?;
        self.faults.push(ActiveFault {
            fault,
            seen: 0,
            fired: 0,
        });
        Ok(())
    }

    pub fn faults(&self) -> Vec<FaultState> {
        self.faults.clone()
    }

    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// Counts the call against every fault and combines those that hit:
    /// delays add up, the first fault with a status decides the status.
    pub fn fault_for(&mut self, req: &Request) -> FaultAction {
        let mut action = FaultAction::default();
        for af in &mut self.faults {
            if !af.fault.matches(req) {
                continue;
            }
            af.seen += 1;
            let start = af.fault.nth.unwrap_or(1);
            let limit = af.fault.times.or(if af.fault.nth.is_some() {
                Some(1)
            } else {
                None
            });
            let hit = af.seen >= start && limit.is_none_or(|t| af.fired < t);
            if !hit {
                continue;
            }
            af.fired += 1;
            action.delay += Duration::from_millis(af.fault.delay_ms);
            if action.status.is_none()
                && let Some(s) = af.fault.status
            {
                let msg = af
                    .fault
                    .message
                    .clone()
                    .unwrap_or_else(|| "injected fault".into());
                action.status = Some((s, msg));
                action.after = af.fault.after;
            }
        }
        action
    }

    pub fn record(&mut self, req: &Request, status: u16, fault: bool) {
        self.journal_seq += 1;
        self.journal.push(JournalEntry {
            seq: self.journal_seq,
            endpoint: req.endpoint,
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            content_type: req.header("content-type").map(str::to_string),
            accept: req.header("accept").map(str::to_string),
            status,
            body: serde_json::from_slice(&req.body).ok(),
            fault,
        });
    }

    /// Closes listener `index` for good (connections refused from now on).
    pub fn stop_endpoint(&self, index: usize) -> Result<(), String> {
        let tx = self
            .stops
            .get(index)
            .ok_or_else(|| format!("endpoint {index}: there are {} endpoints", self.stops.len()))?;
        tx.send_replace(true);
        Ok(())
    }

    /// The leak report: objects reachable from neither the provider router,
    /// nor any host, nor `roots`.
    pub fn leaks(&self, roots: &[Uuid]) -> Vec<LeakedObject> {
        let mut all: Vec<Uuid> = roots.to_vec();
        all.extend(self.provider_router);
        all.extend(self.api.store.hosts.keys().copied());
        self.api.store.leaks(&all)
    }

    /// Answers a `/_emulator/*` request.
    pub fn control(&mut self, req: &Request, base: &str) -> Response {
        let sub = req.path.strip_prefix(CONTROL_ROOT).unwrap_or("");
        let sub = sub.strip_suffix('/').unwrap_or(sub);
        let json_ok = |status: u16, v: &Value| Response::json(status, "application/json", v);
        let bad = |msg: String| Response::error(400, msg);
        match (req.method.as_str(), sub) {
            ("GET", "/journal") => json_ok(200, &json!(self.journal)),
            ("DELETE", "/journal") => {
                self.clear_journal();
                Response::no_content()
            }
            ("GET", "/faults") => json_ok(200, &json!(self.faults())),
            ("POST", "/faults") => match serde_json::from_slice::<Fault>(&req.body) {
                Ok(f) => match self.inject(f) {
                    Ok(()) => Response::new(201),
                    Err(e) => bad(e),
                },
                Err(e) => bad(format!("fault body: {e}")),
            },
            ("DELETE", "/faults") => {
                self.clear_faults();
                Response::no_content()
            }
            ("GET", "/objects") => json_ok(200, &json!(self.api.store.snapshot(base))),
            ("POST", "/leaks") => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Roots {
                    #[serde(default)]
                    roots: Vec<String>,
                }
                let roots = match serde_json::from_slice::<Roots>(&req.body) {
                    Ok(r) => r.roots,
                    Err(e) => return bad(format!("leaks body: {e}")),
                };
                let mut ids = Vec::new();
                for (i, r) in roots.iter().enumerate() {
                    match parse_uuid(r) {
                        Some(u) => ids.push(u),
                        None => return bad(format!("roots[{i}]: {r:?} is not a UUID")),
                    }
                }
                json_ok(200, &json!(self.leaks(&ids)))
            }
            ("POST", "/hosts") => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct NewHost {
                    id: String,
                    name: String,
                    #[serde(default = "yes")]
                    in_tunnel_zone: bool,
                }
                fn yes() -> bool {
                    true
                }
                let h = match serde_json::from_slice::<NewHost>(&req.body) {
                    Ok(h) => h,
                    Err(e) => return bad(format!("host body: {e}")),
                };
                let Some(id) = parse_uuid(&h.id) else {
                    return bad(format!("id: {:?} is not a UUID", h.id));
                };
                self.api.add_host(id, &h.name, h.in_tunnel_zone);
                Response::new(201)
            }
            ("POST", p) if p.starts_with("/endpoints/") && p.ends_with("/stop") => {
                let idx = &p["/endpoints/".len()..p.len() - "/stop".len()];
                match idx
                    .parse::<usize>()
                    .map_err(|e| e.to_string())
                    .and_then(|i| self.stop_endpoint(i))
                {
                    Ok(()) => Response::no_content(),
                    Err(e) => Response::error(404, e),
                }
            }
            ("POST", "/trace") => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct TraceRequest {
                    router: String,
                    flow: Flow,
                }
                let t = match serde_json::from_slice::<TraceRequest>(&req.body) {
                    Ok(t) => t,
                    Err(e) => return bad(format!("trace body: {e}")),
                };
                let Some(router) = parse_uuid(&t.router) else {
                    return bad(format!("router: {:?} is not a UUID", t.router));
                };
                json_ok(200, &json!(self.api.store.trace(router, &t.flow)))
            }
            ("DELETE", "/tokens") => {
                self.api.expire_tokens();
                Response::no_content()
            }
            _ => Response::error(
                404,
                format!("no control endpoint {} {}", req.method, req.path),
            ),
        }
    }
}
