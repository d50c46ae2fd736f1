//! A strict emulator of the few Kubernetes API paths tenet uses, a test
//! double for tenet's kube client (no kube-apiserver runs on these
//! machines). It speaks what the real API server speaks on these paths:
//!
//! - `GET /api/v1/namespaces/{ns}/pods/{name}` and
//!   `GET /api/v1/namespaces/{name}`; collections (`GET /api/v1/pods`,
//!   `/api/v1/namespaces`, `/api/v1/namespaces/{ns}/pods`) as `List`s;
//! - HTTPS only when given a certificate (the real server has no plain
//!   port); bearer-token authentication: a missing or unknown token is
//!   `401 Unauthorized`;
//! - authorization per token like RBAC (verbs `get`, `list`, `watch`,
//!   `create`, `update`, `patch`, `delete` on `pods` and `namespaces`):
//!   anything else is `403 Forbidden` with the real message
//!   (`pods "web-0" is forbidden: User "…" cannot get resource "pods" in API
//!   group "" in the namespace "team-a"`);
//! - errors are `Status` objects (`kind`, `apiVersion`, `status: Failure`,
//!   `message`, `reason`, `details`, `code`); unknown paths are 404
//!   `NotFound` "the server could not find the requested resource";
//! - content negotiation: `application/json` (full object) and
//!   `application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1` (only
//!   metadata, `kind: PartialObjectMetadata`, `apiVersion: meta.k8s.io/v1`),
//!   first acceptable type wins; nothing acceptable is `406 NotAcceptable`;
//! - namespaces carry the `kubernetes.io/metadata.name` label the API
//!   server adds to every namespace; objects have a uid, a
//!   `resourceVersion` and a `creationTimestamp`.
//!
//! Faults: a delay before every answer, a status forced for paths with a
//! prefix (`fail_path`), and a journal of every request (method, path,
//! Accept, authenticated user, status).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The Partial Object Metadata media type, as clients send it.
pub const PARTIAL_METADATA: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// One request as the emulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The Accept header, if any.
    pub accept: Option<String>,
    /// The authenticated user (`None`: not authenticated).
    pub user: Option<String>,
    /// The status answered.
    pub status: u16,
}

/// An identity behind a bearer token, with what RBAC grants it.
#[derive(Debug, Clone)]
struct Identity {
    user: String,
    /// (verb, resource) pairs.
    grants: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct Object {
    uid: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    resource_version: u64,
    node: Option<String>,
}

#[derive(Default)]
struct State {
    tokens: BTreeMap<String, Identity>,
    namespaces: BTreeMap<String, Object>,
    pods: BTreeMap<(String, String), Object>,
    next_rv: u64,
    delay: Option<Duration>,
    failures: Vec<(String, u16)>,
    journal: Vec<Seen>,
}

impl State {
    fn rv(&mut self) -> u64 {
        self.next_rv += 1;
        self.next_rv
    }
}

/// A running emulator. Dropping it stops the server.
pub struct KubeEmulator {
    state: Arc<Mutex<State>>,
    url: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// PEM files for HTTPS.
#[derive(Debug, Clone)]
pub struct Tls<'a> {
    /// Server certificate chain.
    pub cert: &'a Path,
    /// Its private key.
    pub key: &'a Path,
}

fn status(code: u16, reason: &str, message: String, details: Option<Value>) -> (u16, Value) {
    let mut v = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        v["details"] = d;
    }
    (code, v)
}

fn tls_acceptor(tls: &Tls<'_>) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(tls.cert)
        .map_err(|e| format!("{}: {e}", tls.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", tls.cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(tls.key).map_err(|e| format!("{}: {e}", tls.key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

impl KubeEmulator {
    /// Serves on `listener` (bound by the caller, e.g. inside a test's
    /// network namespace), over TLS when `tls` is given.
    pub fn start(listener: std::net::TcpListener, tls: Option<Tls<'_>>) -> Result<Self, String> {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let acceptor = tls.as_ref().map(tls_acceptor).transpose()?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        let state = Arc::new(Mutex::new(State::default()));
        let (stop_tx, stop_rx) = oneshot::channel();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("kube-emulator".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(serve(listener, acceptor, st, stop_rx));
            })
            .map_err(|e| e.to_string())?;
        Ok(Self {
            state,
            url,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Adds a bearer token for `user` granted `verbs` on `resources`.
    pub fn add_token(&self, token: &str, user: &str, verbs: &[&str], resources: &[&str]) {
        let grants = verbs
            .iter()
            .flat_map(|v| {
                resources
                    .iter()
                    .map(move |r| (v.to_string(), r.to_string()))
            })
            .collect();
        self.state.lock().unwrap().tokens.insert(
            token.into(),
            Identity {
                user: user.into(),
                grants,
            },
        );
    }

    /// Revokes a bearer token (as when a bound service-account token's pod
    /// is deleted): requests carrying it get 401.
    pub fn remove_token(&self, token: &str) -> bool {
        self.state.lock().unwrap().tokens.remove(token).is_some()
    }

    /// Creates or replaces a namespace with `labels` (plus the
    /// `kubernetes.io/metadata.name` label the API server adds).
    pub fn put_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let mut s = self.state.lock().unwrap();
        let rv = s.rv();
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.insert("kubernetes.io/metadata.name".into(), name.into());
        let uid = s
            .namespaces
            .get(name)
            .map(|o| o.uid.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        s.namespaces.insert(
            name.into(),
            Object {
                uid,
                labels: l,
                annotations: BTreeMap::new(),
                resource_version: rv,
                node: None,
            },
        );
    }

    /// Creates or replaces a pod (its namespace must exist, as in the real
    /// API); returns its uid (kept when replaced, new when created).
    pub fn put_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        node: Option<&str>,
    ) -> String {
        let mut s = self.state.lock().unwrap();
        assert!(
            s.namespaces.contains_key(namespace),
            "namespace {namespace} must exist before its pods"
        );
        let rv = s.rv();
        let key = (namespace.to_string(), name.to_string());
        let uid = s
            .pods
            .get(&key)
            .map(|o| o.uid.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        s.pods.insert(
            key,
            Object {
                uid: uid.clone(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                annotations: BTreeMap::new(),
                resource_version: rv,
                node: node.map(str::to_owned),
            },
        );
        uid
    }

    /// Deletes a pod; true when it existed.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        let mut s = self.state.lock().unwrap();
        s.pods
            .remove(&(namespace.to_string(), name.to_string()))
            .is_some()
    }

    /// Every answer waits `delay` first (None: no delay).
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Requests whose path starts with `prefix` get `status` (a Status
    /// body with the matching reason) until [`KubeEmulator::clear_failures`].
    pub fn fail_path(&self, prefix: &str, status: u16) {
        self.state
            .lock()
            .unwrap()
            .failures
            .push((prefix.into(), status));
    }

    /// Removes every injected failure.
    pub fn clear_failures(&self) {
        self.state.lock().unwrap().failures.clear();
    }

    /// Every request so far.
    pub fn journal(&self) -> Vec<Seen> {
        self.state.lock().unwrap().journal.clone()
    }

    /// Forgets the journal.
    pub fn clear_journal(&self) {
        self.state.lock().unwrap().journal.clear();
    }
}

impl Drop for KubeEmulator {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<Mutex<State>>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(state.clone(), req));
                    match acceptor {
                        Some(a) => {
                            // A client that rejects the certificate ends here.
                            let Ok(tls) = a.accept(stream).await else { return };
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(tls), svc)
                                .await;
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
            }
        }
    }
}

/// The media type to answer in, from an Accept header: `Some(true)` for
/// PartialObjectMetadata, `Some(false)` for the full object, `None` when
/// nothing offered is served.
fn negotiate(accept: Option<&str>) -> Option<bool> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some(false);
    };
    for offer in accept.split(',') {
        let mut parts = offer.split(';').map(str::trim);
        let mt = parts.next().unwrap_or("").to_ascii_lowercase();
        let params: BTreeMap<String, String> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        if !matches!(mt.as_str(), "application/json" | "*/*" | "application/*") {
            continue;
        }
        match (
            params.get("as").map(String::as_str),
            params.get("g").map(String::as_str),
            params.get("v").map(String::as_str),
        ) {
            (None, _, _) => return Some(false),
            (Some("PartialObjectMetadata"), Some("meta.k8s.io"), Some("v1")) => return Some(true),
            // Table, other groups or versions: not served here.
            _ => continue,
        }
    }
    None
}

fn verb_of(method: &str, collection: bool, watch: bool) -> &'static str {
    match (method, collection) {
        ("GET", true) if watch => "watch",
        ("GET", true) => "list",
        ("GET", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        _ => "unknown",
    }
}

fn reason_of(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        406 => "NotAcceptable",
        409 => "Conflict",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

/// Parsed API paths: (resource, namespace, name).
fn route(path: &str) -> Option<(&'static str, Option<&str>, Option<&str>)> {
    let rest = path.strip_prefix("/api/v1/")?;
    let segs: Vec<&str> = rest.split('/').collect();
    match segs.as_slice() {
        ["pods"] => Some(("pods", None, None)),
        ["namespaces"] => Some(("namespaces", None, None)),
        ["namespaces", ns] if !ns.is_empty() => Some(("namespaces", None, Some(ns))),
        ["namespaces", ns, "pods"] if !ns.is_empty() => Some(("pods", Some(ns), None)),
        ["namespaces", ns, "pods", name] if !ns.is_empty() && !name.is_empty() => {
            Some(("pods", Some(ns), Some(name)))
        }
        _ => None,
    }
}

fn object_json(
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    o: &Object,
    partial: bool,
) -> Value {
    let mut meta = json!({
        "name": name,
        "uid": o.uid,
        "resourceVersion": o.resource_version.to_string(),
        "creationTimestamp": "2026-12-01T00:00:00Z",
    });
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    if !o.labels.is_empty() {
        meta["labels"] = json!(o.labels);
    }
    if !o.annotations.is_empty() {
        meta["annotations"] = json!(o.annotations);
    }
    if partial {
        return json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta});
    }
    match kind {
        "Namespace" => json!({
            "kind": "Namespace", "apiVersion": "v1", "metadata": meta,
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"},
        }),
        _ => {
            let mut spec = json!({"containers": [{"name": "main", "image": "busybox"}]});
            if let Some(n) = &o.node {
                spec["nodeName"] = json!(n);
            }
            json!({"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": {"phase": "Pending"}})
        }
    }
}

/// Answers one request (pure, under the state lock).
fn answer(
    s: &mut State,
    method: &str,
    path: &str,
    query: &str,
    auth: Option<&str>,
    accept: Option<&str>,
) -> (Option<String>, u16, Value, bool) {
    // Authentication first, as the real server's filter chain.
    let token = auth.and_then(|a| a.strip_prefix("Bearer ")).map(str::trim);
    let Some(id) = token.and_then(|t| s.tokens.get(t)).cloned() else {
        let (c, v) = status(401, "Unauthorized", "Unauthorized".into(), None);
        return (None, c, v, false);
    };
    let user = Some(id.user.clone());
    for (prefix, code) in &s.failures {
        if path.starts_with(prefix.as_str()) {
            let (c, v) = status(
                *code,
                reason_of(*code),
                format!("injected failure for {path}"),
                None,
            );
            return (user, c, v, false);
        }
    }
    let Some((resource, ns, name)) = route(path) else {
        let (c, v) = status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            None,
        );
        return (user, c, v, false);
    };
    let watch = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let verb = verb_of(method, name.is_none(), watch);
    if !id.grants.iter().any(|(v, r)| v == verb && r == resource) {
        let scope = match ns {
            Some(ns) => format!(" in the namespace \"{ns}\""),
            None => " at the cluster scope".into(),
        };
        let subject = match name {
            Some(n) => format!("{resource} \"{n}\" is forbidden"),
            None => format!("{resource} is forbidden"),
        };
        let (c, v) = status(
            403,
            "Forbidden",
            format!(
                "{subject}: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"\"{scope}",
                id.user
            ),
            Some(json!({"name": name.unwrap_or(""), "kind": resource})),
        );
        return (user, c, v, false);
    }
    if method != "GET" {
        let (c, v) = status(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported by this emulator"),
            None,
        );
        return (user, c, v, false);
    }
    let Some(partial) = negotiate(accept) else {
        let (c, v) = status(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, {PARTIAL_METADATA}"
            ),
            None,
        );
        return (user, c, v, false);
    };
    let not_found = |what: &str, n: &str| {
        status(
            404,
            "NotFound",
            format!("{what} \"{n}\" not found"),
            Some(json!({"name": n, "kind": what})),
        )
    };
    let body = match (resource, ns, name) {
        ("namespaces", _, Some(n)) => match s.namespaces.get(n) {
            Some(o) => object_json("Namespace", None, n, o, partial),
            None => {
                let (c, v) = not_found("namespaces", n);
                return (user, c, v, false);
            }
        },
        ("pods", Some(ns), Some(n)) => match s.pods.get(&(ns.to_string(), n.to_string())) {
            Some(o) => object_json("Pod", Some(ns), n, o, partial),
            None => {
                let (c, v) = not_found("pods", n);
                return (user, c, v, false);
            }
        },
        ("namespaces", _, None) => {
            let items: Vec<Value> = s
                .namespaces
                .iter()
                .map(|(n, o)| object_json("Namespace", None, n, o, partial))
                .collect();
            list("NamespaceList", items, partial, s.next_rv)
        }
        ("pods", ns, None) => {
            let items: Vec<Value> = s
                .pods
                .iter()
                .filter(|((pns, _), _)| ns.is_none_or(|n| n == pns))
                .map(|((pns, n), o)| object_json("Pod", Some(pns), n, o, partial))
                .collect();
            list("PodList", items, partial, s.next_rv)
        }
        _ => {
            let (c, v) = status(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
                None,
            );
            return (user, c, v, false);
        }
    };
    (user, 200, body, partial)
}

fn list(kind: &str, items: Vec<Value>, partial: bool, rv: u64) -> Value {
    let (kind, api) = if partial {
        ("PartialObjectMetadataList", "meta.k8s.io/v1")
    } else {
        (kind, "v1")
    };
    json!({"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let accept = header("accept");
    let auth = header("authorization");
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let delay = state.lock().unwrap().delay;
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let (code, body, partial) = {
        let mut s = state.lock().unwrap();
        let (user, code, body, partial) = answer(
            &mut s,
            &method,
            &path,
            &query,
            auth.as_deref(),
            accept.as_deref(),
        );
        s.journal.push(Seen {
            method: method.clone(),
            path: path.clone(),
            accept: accept.clone(),
            user,
            status: code,
        });
        (code, body, partial)
    };
    let ct = if partial {
        PARTIAL_METADATA
    } else {
        "application/json"
    };
    let mut resp = hyper::Response::builder()
        .status(code)
        .header("Content-Type", ct)
        .header("Cache-Control", "no-cache, private");
    if code == 401 {
        resp = resp.header("WWW-Authenticate", "Bearer realm=\"kubernetes\"");
    }
    Ok(resp
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&body).expect("JSON serialises"),
        )))
        .expect("valid response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_offer_order() {
        assert_eq!(negotiate(None), Some(false));
        assert_eq!(negotiate(Some("*/*")), Some(false));
        assert_eq!(negotiate(Some(PARTIAL_METADATA)), Some(true));
        assert_eq!(
            negotiate(Some(&format!("{PARTIAL_METADATA}, application/json"))),
            Some(true)
        );
        assert_eq!(
            negotiate(Some(
                "application/json;as=Table;v=v1;g=meta.k8s.io, application/json"
            )),
            Some(false)
        );
        assert_eq!(negotiate(Some("application/vnd.kubernetes.protobuf")), None);
        assert_eq!(
            negotiate(Some(
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1beta1"
            )),
            None
        );
    }

    #[test]
    fn routes_and_verbs() {
        assert_eq!(
            route("/api/v1/namespaces/a/pods/b"),
            Some(("pods", Some("a"), Some("b")))
        );
        assert_eq!(
            route("/api/v1/namespaces/a"),
            Some(("namespaces", None, Some("a")))
        );
        assert_eq!(route("/api/v1/nodes"), None);
        assert_eq!(route("/apis/apps/v1/deployments"), None);
        assert_eq!(verb_of("GET", true, true), "watch");
        assert_eq!(verb_of("DELETE", false, false), "delete");
    }

    #[test]
    fn authn_then_authz_then_lookup() {
        let mut s = State::default();
        s.tokens.insert(
            "t".into(),
            Identity {
                user: "system:serviceaccount:kube-system:tenet".into(),
                grants: vec![("get".into(), "pods".into())],
            },
        );
        let (u, c, v, _) = answer(&mut s, "GET", "/api/v1/namespaces/a/pods/b", "", None, None);
        assert_eq!(
            (u, c, v["reason"].as_str()),
            (None, 401, Some("Unauthorized"))
        );
        let (_, c, v, _) = answer(
            &mut s,
            "GET",
            "/api/v1/namespaces/a",
            "",
            Some("Bearer t"),
            None,
        );
        assert_eq!(c, 403);
        assert_eq!(
            v["message"],
            "namespaces \"a\" is forbidden: User \"system:serviceaccount:kube-system:tenet\" cannot get resource \"namespaces\" in API group \"\" at the cluster scope"
        );
        let (_, c, v, _) = answer(
            &mut s,
            "GET",
            "/api/v1/namespaces/a/pods/b",
            "",
            Some("Bearer t"),
            None,
        );
        assert_eq!(
            (c, v["message"].as_str()),
            (404, Some("pods \"b\" not found"))
        );
        let (_, c, _, _) = answer(
            &mut s,
            "DELETE",
            "/api/v1/namespaces/a/pods/b",
            "",
            Some("Bearer t"),
            None,
        );
        assert_eq!(c, 403);
    }
}
