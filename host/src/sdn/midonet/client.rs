//! A MidoNet REST client: media-type negotiation, token login with one
//! re-login on 401, failover across API endpoints, per-call timeouts, HTTPS
//! with a configured CA, bounded retries of 409s that MidoNet gave up on,
//! and errors typed by status.
//!
//! The client is async (reqwest) but is driven through [`Client::block_on`]
//! on the backend's private current-thread runtime, so callers stay
//! synchronous like the [`Sdn`](crate::sdn::Sdn) trait.
//!
//! **Endpoints.** Requests go to the endpoint that answered last; a transport
//! error (connect, timeout, TLS) or a 5xx moves on to the next one, in order,
//! trying each at most once per call. The configured list is never mutated
//! (seed defect B13); each base URL is used exactly as configured
//! (`http://api:8181/midonet-api`).
//!
//! **TLS.** `https://` endpoints are verified against `midonet.ca_file` only
//! (rustls with the ring provider, both already in the binary for etcd).
//!
//! **Auth.** With a user configured, the first request logs in
//! (`POST <base>/login`, Basic credentials, optional `X-Auth-Project`) and
//! keeps the token; only a 200 with a `key` counts as a login (B12). A 401
//! on any call logs in again and retries that call once; a 401 right after a
//! successful login means MidoNet knows the user but refuses it the API,
//! which is admin-only (`AdminOnlyAuthFilter` answers 401 with no message):
//! the error says so.
//!
//! **Creates.** MidoNet answers 201 with a `Location` and no body. tenet sends
//! client-generated ids, so it never needs the body; [`Client::fetch`] GETs a
//! `Location` when the object itself is wanted.
//!
//! **409.** MidoNet answers 409 both when the object exists and when its
//! storage transaction met a concurrent modification three times in a row
//! (`ConcurrentModificationException`; nothing was written). So a 409 is
//! settled by reading back what the write was to make
//! ([`Client::create_settled`]): there → success (an earlier attempt
//! landed); absent and nothing in the way → the write is sent again, at most
//! [`CONFLICT_RETRIES`] more times, then the call fails with
//! [`ApiErrorKind::Contended`] (CNI code 11, try again later); something
//! else in the way → the 409 stands.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::Value;
use tracing::{debug, trace, warn};
use uuid::Uuid;

/// How many times a write that met an unsettled 409 is sent again.
pub const CONFLICT_RETRIES: u32 = 3;

/// The pause before the first re-send after a 409; doubled each time.
const CONFLICT_PAUSE: Duration = Duration::from_millis(50);

/// Which generation of the MidoNet API the media types belong to. Only 5.x:
/// the 2015.06 API is refused at configuration (`midonet.api_profile`),
/// because it makes its own object ids (see `docs/midonet.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApiProfile {
    /// MidoNet 5.x (the cluster REST API): `Router-v3`, `Bridge-v4`, `Port-v3`.
    #[default]
    V5,
}

impl ApiProfile {
    /// The vendor media type of one object of `r` (create `Content-Type`,
    /// get `Accept`).
    pub fn media_type(self, r: Resource) -> String {
        format!("application/vnd.org.midonet.{}+json", self.versioned(r))
    }

    /// The vendor media type of a list of `r` (list `Accept`).
    pub fn collection_type(self, r: Resource) -> String {
        format!(
            "application/vnd.org.midonet.collection.{}+json",
            self.versioned(r)
        )
    }

    fn versioned(self, r: Resource) -> &'static str {
        use Resource::*;
        match (self, r) {
            (ApiProfile::V5, Router) => "Router-v3",
            (ApiProfile::V5, Bridge) => "Bridge-v4",
            (ApiProfile::V5, Port) => "Port-v3",
            (ApiProfile::V5, Host) => "Host-v3",
            (_, PortLink) => "PortLink-v1",
            (_, Route) => "Route-v1",
            (_, Chain) => "Chain-v1",
            (_, Rule) => "Rule-v2",
            (_, HostInterfacePort) => "HostInterfacePort-v1",
        }
    }
}

/// The resources tenet reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `/routers`.
    Router,
    /// `/bridges`.
    Bridge,
    /// `/ports`, `/routers/{id}/ports`, `/bridges/{id}/ports`.
    Port,
    /// `/ports/{id}/link`.
    PortLink,
    /// `/routers/{id}/routes`, `/routes/{id}`.
    Route,
    /// `/chains`.
    Chain,
    /// `/chains/{id}/rules`, `/rules/{id}`.
    Rule,
    /// `/hosts/{id}/ports` (interface bindings).
    HostInterfacePort,
    /// `/hosts/{id}`.
    Host,
}

/// How a MidoNet call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// 400: validation failed (the message lists violations).
    BadRequest,
    /// 401 after a fresh login, or a login that did not yield a token.
    Unauthorized,
    /// 404.
    NotFound,
    /// 406: the media type is not one this resource speaks (wrong
    /// `api_profile`).
    NotAcceptable,
    /// 415: the `Content-Type` of a link or binding was refused.
    UnsupportedMediaType,
    /// 409: a conflict (already linked, already bound, id taken, …).
    Conflict,
    /// 409 on every attempt while what the write was to make stayed absent:
    /// MidoNet kept meeting concurrent modifications (try again later).
    Contended,
    /// 5xx from every endpoint tried.
    Server,
    /// Any other unexpected status.
    Status,
    /// No endpoint answered (connect error or timeout on each).
    Unreachable,
    /// A success without what it must carry (no `Location`, bad JSON).
    InvalidResponse,
}

/// A failed MidoNet call: what was asked, the status, and the server's
/// message (from its `{"message","code"}` error body when it sent one).
#[derive(Debug, Clone, thiserror::Error)]
#[error("MidoNet {method} {path}: {}{message}", status.map(|s| format!("{s} ")).unwrap_or_default())]
pub struct ApiError {
    /// The class of failure.
    pub kind: ApiErrorKind,
    /// HTTP method.
    pub method: String,
    /// Path below the API base.
    pub path: String,
    /// HTTP status, when one was received.
    pub status: Option<u16>,
    /// The server's message, or the transport error.
    pub message: String,
}

impl ApiError {
    /// True for 404.
    pub fn is_not_found(&self) -> bool {
        self.kind == ApiErrorKind::NotFound
    }

    /// The CNI error code: 11 ("try again later") when MidoNet could not be
    /// reached, was overloaded (503) or kept meeting concurrent
    /// modifications, 153 when it rejected the request, 154 for other
    /// server errors and answers that cannot be read.
    pub fn cni_code(&self) -> u32 {
        use crate::cni::codes;
        match self.kind {
            ApiErrorKind::Unreachable | ApiErrorKind::Contended => codes::TRY_AGAIN_LATER,
            ApiErrorKind::Server if self.status == Some(503) => codes::TRY_AGAIN_LATER,
            ApiErrorKind::Server | ApiErrorKind::InvalidResponse => codes::MIDONET_SERVER_ERROR,
            ApiErrorKind::BadRequest
            | ApiErrorKind::Unauthorized
            | ApiErrorKind::NotFound
            | ApiErrorKind::NotAcceptable
            | ApiErrorKind::UnsupportedMediaType
            | ApiErrorKind::Conflict
            | ApiErrorKind::Status => codes::MIDONET_REJECTED,
        }
    }
}

/// What a client needs to know. Built from
/// [`MidonetConfig`](crate::config::MidonetConfig) by the backend.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// API base URLs, tried in order (`http://api:8181/midonet-api`).
    pub endpoints: Vec<String>,
    /// Login user; without one, no login is made and no token is sent
    /// (MidoNet's default `MockAuthService` accepts that).
    pub username: Option<String>,
    /// Login password.
    pub password: Option<String>,
    /// `X-Auth-Project` sent at login.
    pub project: Option<String>,
    /// Bound on one HTTP exchange (connect included).
    pub timeout: Duration,
    /// Media-type generation.
    pub profile: ApiProfile,
    /// CA certificates (PEM) for `https://` endpoints: the only trust
    /// anchors used.
    pub ca_file: Option<PathBuf>,
}

/// What a 409 turned out to be, from reading back what the write was to
/// make (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The write's effect is in place: success.
    Done,
    /// Not in place and nothing in its way: send the write again.
    Retry,
    /// Something else is in the way: the 409 stands.
    Conflict,
}

/// A successful response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: u16,
    /// `Location`, on creates.
    pub location: Option<String>,
    /// The body parsed as JSON (`Null` when empty).
    pub body: Value,
}

/// The MidoNet REST client.
pub struct Client {
    http: reqwest::Client,
    rt: std::sync::Arc<tokio::runtime::Runtime>,
    opts: ClientOptions,
    /// Index of the endpoint that answered last.
    active: AtomicUsize,
    token: Mutex<Option<String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No password, no token.
        f.debug_struct("Client")
            .field("endpoints", &self.opts.endpoints)
            .field("profile", &self.opts.profile)
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

enum Attempt {
    Done(reqwest::Response),
    /// Transport error or 5xx: try the next endpoint.
    Next(ApiError),
}

impl Client {
    /// A client; no request is made yet. `rt` drives every call.
    pub fn new(
        opts: ClientOptions,
        rt: std::sync::Arc<tokio::runtime::Runtime>,
    ) -> Result<Self, String> {
        if opts.endpoints.is_empty() {
            return Err("midonet.endpoints: no MidoNet API endpoint configured".into());
        }
        for e in &opts.endpoints {
            let u = reqwest::Url::parse(e)
                .map_err(|err| format!("midonet.endpoints: {e:?} is not a URL: {err}"))?;
            if u.scheme() != "http" && u.scheme() != "https" {
                return Err(format!("midonet.endpoints: {e:?} is not an http(s) URL"));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout)
            // The API is reached directly: an HTTP_PROXY meant for other
            // traffic must not capture it.
            .no_proxy()
            // Always our own rustls configuration: reqwest would otherwise
            // look for a process-wide crypto provider (and trust the
            // system's roots).
            .tls_backend_preconfigured(tls_config(opts.ca_file.as_deref())?)
            .build()
            .map_err(|e| format!("midonet: HTTP client: {e}"))?;
        Ok(Self {
            http,
            rt,
            opts,
            active: AtomicUsize::new(0),
            token: Mutex::new(None),
        })
    }

    /// The profile in use.
    pub fn profile(&self) -> ApiProfile {
        self.opts.profile
    }

    /// Runs a future on the backend's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// `POST path` with `body` as `Content-Type: <r>`; returns the new
    /// object's `Location` (None when the server sent none, as on links).
    /// With `confirm` (the GET path of the object `body` names by id), a 409
    /// is settled by that GET: the object is there → success; it is not →
    /// sent again (see [`Client::create_settled`]). Without, a 409 is an
    /// error.
    pub fn create(
        &self,
        r: Resource,
        path: &str,
        body: &Value,
        confirm: Option<(&str, Resource)>,
    ) -> Result<Option<String>, ApiError> {
        let Some((get, gr)) = confirm else {
            return self.post(r, path, body).map(|rep| rep.location);
        };
        self.create_settled(r, path, body, || match self.get(gr, get) {
            Ok(_) => Ok(Settled::Done),
            Err(e) if e.is_not_found() => Ok(Settled::Retry),
            Err(e) => Err(e),
        })
    }

    /// `POST path`; a 409 is settled by `settle` (which reads back what the
    /// write was to make): [`Settled::Done`] is success, [`Settled::Retry`]
    /// sends the write again after a pause (at most [`CONFLICT_RETRIES`]
    /// times, then [`ApiErrorKind::Contended`]), [`Settled::Conflict`]
    /// returns the 409.
    pub fn create_settled(
        &self,
        r: Resource,
        path: &str,
        body: &Value,
        mut settle: impl FnMut() -> Result<Settled, ApiError>,
    ) -> Result<Option<String>, ApiError> {
        let mut pause = CONFLICT_PAUSE;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let e = match self.post(r, path, body) {
                Ok(rep) => return Ok(rep.location),
                Err(e) if e.kind == ApiErrorKind::Conflict => e,
                Err(e) => return Err(e),
            };
            match settle()? {
                Settled::Done => {
                    debug!(%path, "409, and what it creates is there: done");
                    return Ok(None);
                }
                Settled::Conflict => return Err(e),
                Settled::Retry if attempt <= CONFLICT_RETRIES => {
                    debug!(%path, attempt, message = %e.message, "409 with nothing in place (concurrent modification): sending again");
                    std::thread::sleep(pause);
                    pause *= 2;
                }
                Settled::Retry => {
                    return Err(ApiError {
                        kind: ApiErrorKind::Contended,
                        message: format!(
                            "{} (409 on {attempt} attempts while what it creates stayed absent: \
                             MidoNet kept meeting concurrent modifications; try again later)",
                            e.message
                        ),
                        ..e
                    });
                }
            }
        }
    }

    fn post(&self, r: Resource, path: &str, body: &Value) -> Result<Reply, ApiError> {
        let ct = self.opts.profile.media_type(r);
        self.call(Method::POST, path, Some((&ct, body)), None)
    }

    /// `GET path` with `Accept: <r>`.
    pub fn get(&self, r: Resource, path: &str) -> Result<Value, ApiError> {
        let accept = self.opts.profile.media_type(r);
        self.call(Method::GET, path, None, Some(&accept))
            .map(|r| r.body)
    }

    /// `GET path` of a collection with `Accept: collection.<r>`.
    pub fn list(&self, r: Resource, path: &str) -> Result<Vec<Value>, ApiError> {
        let accept = self.opts.profile.collection_type(r);
        let rep = self.call(Method::GET, path, None, Some(&accept))?;
        match rep.body {
            Value::Array(v) => Ok(v),
            Value::Null => Ok(Vec::new()),
            other => Err(self.invalid("GET", path, format!("expected a JSON list, got {other}"))),
        }
    }

    /// GETs a `Location` returned by [`Client::create`] (an absolute URL
    /// under one of the endpoints, or a path).
    pub fn fetch(&self, r: Resource, location: &str) -> Result<Value, ApiError> {
        // The server builds Locations from its own idea of its URL (which a
        // proxy or failover may change): keep only the part below the API
        // root and ask the endpoint in use.
        let path = match reqwest::Url::parse(location) {
            Ok(u) => u.path().to_owned(),
            Err(_) => location.to_owned(),
        };
        let path = self
            .opts
            .endpoints
            .iter()
            .filter_map(|b| reqwest::Url::parse(b).ok())
            .find_map(|b| {
                let root = b.path().trim_end_matches('/').to_owned();
                path.strip_prefix(&root).map(str::to_owned)
            })
            .unwrap_or(path);
        self.get(r, &path)
    }

    /// `DELETE path`; true when something was deleted, false on 404
    /// (already gone is success for a delete).
    pub fn delete(&self, path: &str) -> Result<bool, ApiError> {
        match self.call(Method::DELETE, path, None, None) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One call with re-login on 401 (once) and endpoint failover.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, &Value)>,
        accept: Option<&str>,
    ) -> Result<Reply, ApiError> {
        self.rt
            .block_on(self.call_async(method, path, body, accept))
    }

    async fn call_async(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, &Value)>,
        accept: Option<&str>,
    ) -> Result<Reply, ApiError> {
        let mut relogged = false;
        loop {
            let resp = self.send_failover(&method, path, body, accept).await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && self.opts.username.is_some() && !relogged {
                debug!(%path, "401: logging in again");
                relogged = true;
                self.set_token(None);
                continue;
            }
            let mut r = self.finish(&method, path, resp).await;
            if let Err(e) = &mut r
                && e.kind == ApiErrorKind::Unauthorized
            {
                e.message = self.unauthorized_hint(&e.message);
            }
            return r;
        }
    }

    /// Names the probable cause of a 401 on an API call (not on `/login`).
    fn unauthorized_hint(&self, server: &str) -> String {
        let said = if server.is_empty() {
            "no message".to_owned()
        } else {
            format!("{server:?}")
        };
        match &self.opts.username {
            // We just logged in again, and the fresh token is refused too.
            Some(u) => format!(
                "MidoNet accepted the login of {u:?} (midonet.username) but refuses it this \
                 call ({said}): the user probably lacks MidoNet's admin role (the REST API is \
                 admin-only)"
            ),
            None => format!(
                "MidoNet requires a login ({said}); set midonet.username and \
                 midonet.password_file"
            ),
        }
    }

    /// Sends to the active endpoint, then the following ones, until one
    /// answers with a status below 500.
    async fn send_failover(
        &self,
        method: &Method,
        path: &str,
        body: Option<(&str, &Value)>,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, ApiError> {
        let n = self.opts.endpoints.len();
        let start = self.active.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            match self.attempt(idx, method, path, body, accept).await {
                Attempt::Done(resp) => {
                    self.active.store(idx, Ordering::Relaxed);
                    return Ok(resp);
                }
                Attempt::Next(e) => {
                    warn!(endpoint = %self.opts.endpoints[idx], error = %e, "MidoNet endpoint failed");
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one endpoint"))
    }

    async fn attempt(
        &self,
        idx: usize,
        method: &Method,
        path: &str,
        body: Option<(&str, &Value)>,
        accept: Option<&str>,
    ) -> Attempt {
        let base = self.opts.endpoints[idx].trim_end_matches('/');
        // A login that fails moves on too: the next endpoint may accept it
        // (when none does, the last error is the call's).
        let token = match self.token_for(idx).await {
            Ok(t) => t,
            Err(e) => return Attempt::Next(e),
        };
        let url = format!("{base}{path}");
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = &token {
            req = req.header("X-Auth-Token", t);
        }
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        if let Some((ct, b)) = body {
            let bytes = serde_json::to_vec(b).unwrap_or_default();
            trace!(%method, %url, body = %String::from_utf8_lossy(&bytes), "MidoNet request");
            req = req.header(header::CONTENT_TYPE, ct).body(bytes);
        } else {
            trace!(%method, %url, "MidoNet request");
        }
        match req.send().await {
            Ok(resp) if resp.status().is_server_error() => {
                let status = resp.status().as_u16();
                let message = error_message(resp).await;
                Attempt::Next(ApiError {
                    kind: ApiErrorKind::Server,
                    method: method.to_string(),
                    path: path.into(),
                    status: Some(status),
                    message,
                })
            }
            Ok(resp) => Attempt::Done(resp),
            Err(e) => Attempt::Next(ApiError {
                kind: ApiErrorKind::Unreachable,
                method: method.to_string(),
                path: path.into(),
                status: None,
                message: format!("{base}: {}", transport_message(&e)),
            }),
        }
    }

    /// The token to send to endpoint `idx`, logging in when there is none.
    async fn token_for(&self, idx: usize) -> Result<Option<String>, ApiError> {
        let Some(user) = &self.opts.username else {
            return Ok(None);
        };
        if let Some(t) = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(Some(t));
        }
        let base = self.opts.endpoints[idx].trim_end_matches('/');
        let mut req = self
            .http
            .post(format!("{base}/login"))
            .basic_auth(user, self.opts.password.as_deref());
        if let Some(p) = &self.opts.project {
            req = req.header("X-Auth-Project", p);
        }
        let err = |kind, status, message| ApiError {
            kind,
            method: "POST".into(),
            path: "/login".into(),
            status,
            message,
        };
        let resp = req.send().await.map_err(|e| {
            err(
                ApiErrorKind::Unreachable,
                None,
                format!("{base}: {}", transport_message(&e)),
            )
        })?;
        let status = resp.status();
        if status != StatusCode::OK {
            let server = error_message(resp).await;
            if status.is_server_error() {
                return Err(err(ApiErrorKind::Server, Some(status.as_u16()), server));
            }
            return Err(err(
                ApiErrorKind::Unauthorized,
                Some(status.as_u16()),
                format!(
                    "login as {user:?} refused ({server:?}); check midonet.username and \
                     midonet.password_file"
                ),
            ));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| err(ApiErrorKind::InvalidResponse, Some(200), e.to_string()))?;
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| err(ApiErrorKind::InvalidResponse, Some(200), e.to_string()))?;
        let key = body
            .get("key")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                err(
                    ApiErrorKind::Unauthorized,
                    Some(200),
                    "login answered without a token key".into(),
                )
            })?
            .to_owned();
        debug!(endpoint = %base, "logged in to MidoNet");
        self.set_token(Some(key.clone()));
        Ok(Some(key))
    }

    fn set_token(&self, t: Option<String>) {
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    async fn finish(
        &self,
        method: &Method,
        path: &str,
        resp: reqwest::Response,
    ) -> Result<Reply, ApiError> {
        let status = resp.status();
        if status.is_success() {
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = resp.bytes().await.map_err(|e| {
                self.invalid(method.as_str(), path, format!("reading the body: {e}"))
            })?;
            let body = if bytes.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(|e| {
                    self.invalid(method.as_str(), path, format!("body is not JSON: {e}"))
                })?
            };
            trace!(%method, %path, status = status.as_u16(), ?location, "MidoNet reply");
            return Ok(Reply {
                status: status.as_u16(),
                location,
                body,
            });
        }
        let kind = match status.as_u16() {
            400 => ApiErrorKind::BadRequest,
            401 | 403 => ApiErrorKind::Unauthorized,
            404 => ApiErrorKind::NotFound,
            406 => ApiErrorKind::NotAcceptable,
            409 => ApiErrorKind::Conflict,
            415 => ApiErrorKind::UnsupportedMediaType,
            _ => ApiErrorKind::Status,
        };
        Err(ApiError {
            kind,
            method: method.to_string(),
            path: path.into(),
            status: Some(status.as_u16()),
            message: error_message(resp).await,
        })
    }

    fn invalid(&self, method: &str, path: &str, message: String) -> ApiError {
        ApiError {
            kind: ApiErrorKind::InvalidResponse,
            method: method.into(),
            path: path.into(),
            status: None,
            message,
        }
    }
}

/// The `message` of a MidoNet error body (plus any violations), or the raw
/// body when it is not one.
async fn error_message(resp: reqwest::Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v.get("message").is_some() => {
            let mut m = v["message"].as_str().unwrap_or_default().to_owned();
            if let Some(vs) = v.get("violations").and_then(Value::as_array) {
                for x in vs {
                    m.push_str(&format!(
                        "; {}: {}",
                        x.get("property").and_then(Value::as_str).unwrap_or("?"),
                        x.get("message").and_then(Value::as_str).unwrap_or("?")
                    ));
                }
            }
            m
        }
        _ => text.chars().take(500).collect(),
    }
}

fn transport_message(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut m = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        m.push_str(&format!(": {s}"));
        src = s.source();
    }
    if m.contains("certificate") {
        m.push_str(
            " (is the API's certificate signed by a CA in midonet.ca_file, for this host name?)",
        );
    }
    m
}

/// The rustls configuration of every client: the ring provider and, as the
/// only trust anchors, the certificates in `ca_file` (none without one:
/// configuration refuses `https://` endpoints without a `ca_file`).
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(f) = ca_file {
        let at = |m: String| format!("midonet.ca_file {}: {m}", f.display());
        let certs = CertificateDer::pem_file_iter(f)
            .map_err(|e| at(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| at(e.to_string()))?;
        if certs.is_empty() {
            return Err(at("no PEM certificate in it".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| at(e.to_string()))?;
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("midonet: TLS: {e}"))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// The last path segment of a `Location`, as a UUID.
pub fn location_id(location: &str) -> Option<Uuid> {
    location
        .trim_end_matches('/')
        .rsplit('/')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;

    /// One request as the scripted server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Seen {
        fn header(&self, n: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
        }
    }

    type Script = dyn Fn(&Seen, usize) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync;

    /// A scripted HTTP/1.1 server on loopback: answers each request with
    /// `script(request, index)` and records it.
    struct Server {
        url: String,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    fn serve(script: Arc<Script>) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/midonet-api", l.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_owned();
                let path = parts.next().unwrap_or_default().to_owned();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap();
                    headers.push((k.trim().to_owned(), v.trim().to_owned()));
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse().unwrap())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let req = Seen {
                    method,
                    path,
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                let idx = {
                    let mut g = s2.lock().unwrap();
                    g.push(req.clone());
                    g.len() - 1
                };
                let (status, extra, body) = script(&req, idx);
                let mut resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in extra {
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                resp.push_str("\r\n");
                resp.push_str(&body);
                let _ = c.write_all(resp.as_bytes());
            }
        });
        Server { url, seen }
    }

    fn client(endpoints: Vec<String>, user: bool) -> Client {
        let rt = Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        );
        Client::new(
            ClientOptions {
                endpoints,
                username: user.then(|| "admin".into()),
                password: user.then(|| "secret".into()),
                project: user.then(|| "admin-project".into()),
                timeout: Duration::from_millis(500),
                profile: ApiProfile::V5,
                ca_file: None,
            },
            rt,
        )
        .unwrap()
    }

    fn token(key: &str) -> (u16, Vec<(&'static str, String)>, String) {
        (
            200,
            vec![(
                "Content-Type",
                "application/vnd.org.midonet.Token-v1+json".into(),
            )],
            format!(r#"{{"key":"{key}","expires":null}}"#),
        )
    }

    fn err(status: u16, msg: &str) -> (u16, Vec<(&'static str, String)>, String) {
        (
            status,
            vec![(
                "Content-Type",
                "application/vnd.org.midonet.Error-v1+json".into(),
            )],
            format!(r#"{{"message":"{msg}","code":{status}}}"#),
        )
    }

    #[test]
    fn media_types_per_profile() {
        assert_eq!(
            ApiProfile::V5.media_type(Resource::Router),
            "application/vnd.org.midonet.Router-v3+json"
        );
        assert_eq!(
            ApiProfile::V5.media_type(Resource::Bridge),
            "application/vnd.org.midonet.Bridge-v4+json"
        );
        assert_eq!(
            ApiProfile::V5.collection_type(Resource::Port),
            "application/vnd.org.midonet.collection.Port-v3+json"
        );
    }

    #[test]
    fn logs_in_again_on_401_and_retries_once() {
        let s = serve(Arc::new(|r: &Seen, _| {
            let logins = r.path.ends_with("/login");
            match (logins, r.header("x-auth-token")) {
                (true, _) => {
                    // The first login yields a token the server then
                    // forgets (expired), the second a good one.
                    if r.header("x-auth-project") == Some("admin-project") {
                        token(if LOGINS.fetch_add(1, Ordering::SeqCst) == 0 {
                            "old"
                        } else {
                            "new"
                        })
                    } else {
                        err(401, "no project")
                    }
                }
                (false, Some("new")) => (200, vec![], r#"{"id":"x"}"#.into()),
                (false, _) => err(401, "Token expired"),
            }
        }));
        static LOGINS: AtomicUsize = AtomicUsize::new(0);
        let c = client(vec![s.url.clone()], true);
        let v = c.get(Resource::Router, "/routers/x").unwrap();
        assert_eq!(v["id"], "x");
        let seen = s.seen.lock().unwrap().clone();
        let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/midonet-api/login",
                "/midonet-api/routers/x",
                "/midonet-api/login",
                "/midonet-api/routers/x"
            ]
        );
        assert!(
            seen[0]
                .header("authorization")
                .unwrap()
                .starts_with("Basic ")
        );
        // GETs negotiate with Accept, never Content-Type (B13).
        assert_eq!(
            seen[3].header("accept"),
            Some("application/vnd.org.midonet.Router-v3+json")
        );
        assert!(seen[3].header("content-type").is_none());
    }

    #[test]
    fn a_second_401_is_a_typed_error() {
        let s = serve(Arc::new(|r: &Seen, _| {
            if r.path.ends_with("/login") {
                token("t")
            } else {
                err(401, "Authorization failed")
            }
        }));
        let c = client(vec![s.url.clone()], true);
        let e = c.get(Resource::Router, "/routers/x").unwrap_err();
        assert_eq!(e.kind, ApiErrorKind::Unauthorized);
        assert!(e.message.contains("\"Authorization failed\""), "{e}");
        assert_eq!(s.seen.lock().unwrap().len(), 4);
    }

    #[test]
    fn a_401_after_a_good_login_names_the_admin_role() {
        // MidoNet's AdminOnlyAuthFilter: the login works, every call then
        // answers 401 with a null message.
        let s = serve(Arc::new(|r: &Seen, _| {
            if r.path.ends_with("/login") {
                token("t")
            } else {
                (
                    401,
                    vec![(
                        "Content-Type",
                        "application/vnd.org.midonet.Error-v1+json".into(),
                    )],
                    r#"{"message":null,"code":401}"#.into(),
                )
            }
        }));
        let c = client(vec![s.url.clone()], true);
        let e = c.get(Resource::Router, "/routers/x").unwrap_err();
        assert_eq!(e.kind, ApiErrorKind::Unauthorized);
        assert!(e.message.contains("admin role"), "{e}");
        assert!(e.message.contains("\"admin\""), "names the user: {e}");
        assert!(e.message.contains("midonet.username"), "{e}");
        // Without a user, a 401 says a login is needed.
        let c = client(vec![s.url.clone()], false);
        let e = c.get(Resource::Router, "/routers/x").unwrap_err();
        assert!(e.message.contains("midonet.password_file"), "{e}");
    }

    #[test]
    fn a_login_without_200_is_refused() {
        // B12: the seed treated any answer without a transport error as a login.
        let s = serve(Arc::new(|_: &Seen, _| {
            err(401, "Authorization header is not valid")
        }));
        let c = client(vec![s.url.clone()], true);
        let e = c.get(Resource::Router, "/routers/x").unwrap_err();
        assert_eq!(e.kind, ApiErrorKind::Unauthorized);
        assert_eq!(e.path, "/login");
        assert!(e.to_string().contains("not valid"), "{e}");
    }

    #[test]
    fn fails_over_on_connect_errors_and_5xx() {
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/midonet-api", l.local_addr().unwrap())
        };
        let busy = serve(Arc::new(|_: &Seen, _| err(503, "read timeout")));
        let good = serve(Arc::new(|r: &Seen, _| {
            (200, vec![], format!(r#"{{"path":"{}"}}"#, r.path))
        }));
        let c = client(vec![dead, busy.url.clone(), good.url.clone()], false);
        let v = c.get(Resource::Bridge, "/bridges/b").unwrap();
        assert_eq!(v["path"], "/midonet-api/bridges/b");
        assert_eq!(busy.seen.lock().unwrap().len(), 1);
        // The endpoint that answered stays in use.
        c.get(Resource::Bridge, "/bridges/c").unwrap();
        assert_eq!(busy.seen.lock().unwrap().len(), 1);
        assert_eq!(good.seen.lock().unwrap().len(), 2);
        // No user: no login, no token.
        assert!(
            good.seen.lock().unwrap()[0]
                .header("x-auth-token")
                .is_none()
        );
    }

    #[test]
    fn all_endpoints_down_is_unreachable_code_11() {
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/midonet-api", l.local_addr().unwrap())
        };
        let c = client(vec![dead], false);
        let e = c.delete("/ports/p").unwrap_err();
        assert_eq!(e.kind, ApiErrorKind::Unreachable);
        assert_eq!(e.cni_code(), crate::cni::codes::TRY_AGAIN_LATER);
    }

    #[test]
    fn slow_answers_time_out() {
        let slow = serve(Arc::new(|_: &Seen, _| {
            std::thread::sleep(Duration::from_millis(1500));
            (200, vec![], "{}".into())
        }));
        let c = client(vec![slow.url.clone()], false);
        let e = c.get(Resource::Chain, "/chains/x").unwrap_err();
        assert_eq!(e.kind, ApiErrorKind::Unreachable);
        assert!(e.message.contains("timed out"), "{e}");
    }

    #[test]
    fn statuses_are_typed_with_the_server_message() {
        let s = serve(Arc::new(|r: &Seen, _| {
            match r.path.as_str() {
            "/midonet-api/routers" => err(406, "Not acceptable media type"),
            "/midonet-api/ports/p/link" => err(409, "Ports are not linkable."),
            "/midonet-api/bridges/b" => err(404, "Bridge b does not exist"),
            _ => (
                400,
                vec![],
                r#"{"message":"Validation error(s) found","code":400,"violations":[{"property":"portAddress","message":"is not a valid IPv4"}]}"#.into(),
            ),
        }
        }));
        let c = client(vec![s.url.clone()], false);
        let e = c
            .create(
                Resource::Router,
                "/routers",
                &serde_json::json!({"id": "r"}),
                None,
            )
            .unwrap_err();
        assert_eq!(e.kind, ApiErrorKind::NotAcceptable);
        assert_eq!(e.status, Some(406));
        assert_eq!(e.message, "Not acceptable media type");
        assert_eq!(e.cni_code(), crate::cni::codes::MIDONET_REJECTED);
        assert_eq!(
            s.seen.lock().unwrap()[0].header("content-type"),
            Some("application/vnd.org.midonet.Router-v3+json")
        );
        let e = c
            .create(
                Resource::PortLink,
                "/ports/p/link",
                &serde_json::json!({"peerId": "q"}),
                None,
            )
            .unwrap_err();
        assert_eq!(e.kind, ApiErrorKind::Conflict);
        // 404 on delete is success; on get it is typed.
        assert!(!c.delete("/bridges/b").unwrap());
        assert!(
            c.get(Resource::Bridge, "/bridges/b")
                .unwrap_err()
                .is_not_found()
        );
        let e = c
            .create(
                Resource::Port,
                "/routers/r/ports",
                &serde_json::json!({}),
                None,
            )
            .unwrap_err();
        assert_eq!(e.kind, ApiErrorKind::BadRequest);
        assert!(
            e.message.contains("portAddress: is not a valid IPv4"),
            "{e}"
        );
    }

    #[test]
    fn created_objects_come_back_by_location() {
        let s = serve(Arc::new(|r: &Seen, _| match r.method.as_str() {
            "POST" => (
                201,
                vec![(
                    "Location",
                    "http://ignored.example/midonet-api/chains/0b0b0b0b-0000-4000-8000-000000000001"
                        .into(),
                )],
                String::new(),
            ),
            _ => (200, vec![], format!(r#"{{"uri":"{}"}}"#, r.path)),
        }));
        let c = client(vec![s.url.clone()], false);
        let loc = c
            .create(
                Resource::Chain,
                "/chains",
                &serde_json::json!({"id": "x"}),
                None,
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            location_id(&loc).unwrap().to_string(),
            "0b0b0b0b-0000-4000-8000-000000000001"
        );
        // A Location under a configured endpoint is fetched there; one from
        // elsewhere as its path under the active endpoint.
        let own = format!("{}/chains/abc", s.url);
        assert_eq!(
            c.fetch(Resource::Chain, &own).unwrap()["uri"],
            "/midonet-api/chains/abc"
        );
        assert_eq!(
            c.fetch(Resource::Chain, &loc).unwrap()["uri"],
            "/midonet-api/chains/0b0b0b0b-0000-4000-8000-000000000001"
        );
        assert_eq!(s.seen.lock().unwrap()[0].body, r#"{"id":"x"}"#);
    }

    #[test]
    fn a_409_on_our_own_id_is_confirmed_by_get() {
        let s = serve(Arc::new(|r: &Seen, _| match r.method.as_str() {
            "POST" => err(409, "Object exists"),
            _ if r.path.ends_with("/chains/mine") => (200, vec![], "{}".into()),
            _ => err(404, "no"),
        }));
        let c = client(vec![s.url.clone()], false);
        let body = serde_json::json!({"id": "mine"});
        c.create(
            Resource::Chain,
            "/chains",
            &body,
            Some(("/chains/mine", Resource::Chain)),
        )
        .unwrap();
        assert_eq!(s.seen.lock().unwrap().len(), 2, "one POST, one GET");
    }

    #[test]
    fn a_409_with_nothing_created_is_sent_again_then_try_again_later() {
        // MidoNet's answer to a transaction that met concurrent
        // modifications three times: 409, nothing written.
        let cm = "Port with ID 1 was modified during the transaction.";
        let s = serve(Arc::new(move |r: &Seen, i| match r.method.as_str() {
            // The third POST goes through.
            "POST" if i < 4 => err(409, cm),
            "POST" => (201, vec![("Location", "/x".into())], String::new()),
            _ => err(404, "no such chain"),
        }));
        let c = client(vec![s.url.clone()], false);
        let body = serde_json::json!({"id": "mine"});
        let loc = c
            .create(
                Resource::Chain,
                "/chains",
                &body,
                Some(("/chains/mine", Resource::Chain)),
            )
            .unwrap();
        assert_eq!(loc.as_deref(), Some("/x"));
        let methods: Vec<String> = s
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.method.clone())
            .collect();
        assert_eq!(methods, ["POST", "GET", "POST", "GET", "POST"]);

        // Never settling: bounded, then code 11 with the server's message.
        let s = serve(Arc::new(move |r: &Seen, _| match r.method.as_str() {
            "POST" => err(409, cm),
            _ => err(404, "no such chain"),
        }));
        let c = client(vec![s.url.clone()], false);
        let e = c
            .create(
                Resource::Chain,
                "/chains",
                &body,
                Some(("/chains/mine", Resource::Chain)),
            )
            .unwrap_err();
        assert_eq!(e.kind, ApiErrorKind::Contended, "{e}");
        assert_eq!(e.cni_code(), crate::cni::codes::TRY_AGAIN_LATER);
        assert_eq!(e.status, Some(409));
        assert!(e.message.contains(cm), "{e}");
        let posts = s
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == "POST")
            .count();
        assert_eq!(posts, 1 + CONFLICT_RETRIES as usize);

        // Something else in the way: the 409 stands at once.
        let e = c
            .create_settled(Resource::PortLink, "/ports/p/link", &body, || {
                Ok(Settled::Conflict)
            })
            .unwrap_err();
        assert_eq!(e.kind, ApiErrorKind::Conflict);
        assert_eq!(e.cni_code(), crate::cni::codes::MIDONET_REJECTED);
    }

    #[test]
    fn endpoints_must_be_urls() {
        let rt = Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        );
        let opts = |e: &str| ClientOptions {
            endpoints: vec![e.into()],
            username: None,
            password: None,
            project: None,
            timeout: Duration::from_secs(1),
            profile: ApiProfile::V5,
            ca_file: None,
        };
        assert!(
            Client::new(opts("not a url"), rt.clone())
                .unwrap_err()
                .contains("midonet.endpoints")
        );
        assert!(Client::new(opts("ftp://x/"), rt.clone()).is_err());
        let mut o = opts("http://x/");
        o.endpoints.clear();
        assert!(Client::new(o, rt.clone()).is_err());
        // A CA file that cannot be used is named.
        let d = tempfile::tempdir().unwrap();
        let mut o = opts("https://x/");
        o.ca_file = Some(d.path().join("absent.pem"));
        let e = Client::new(o.clone(), rt.clone()).unwrap_err();
        assert!(
            e.contains("midonet.ca_file") && e.contains("absent.pem"),
            "{e}"
        );
        std::fs::write(d.path().join("empty.pem"), "not a certificate\n").unwrap();
        o.ca_file = Some(d.path().join("empty.pem"));
        let e = Client::new(o, rt).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
