//! A small Kubernetes API client: GET one object's metadata.
//!
//! It asks for `PartialObjectMetadata` (as `kubectl get` and client-go's
//! metadata client do: `Accept: application/json;as=PartialObjectMetadata;
//! g=meta.k8s.io;v=v1, application/json`), so a pod's spec and status never
//! cross the wire, and reads `metadata` from whichever of the two the
//! server sent. Errors are typed by the API's `Status` reply (401, 403, 404,
//! …) and by transport failures (connect, TLS, timeout).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::kubeconfig::{Auth, Connection};

/// The Accept header of a metadata GET, most preferred first.
pub const ACCEPT_METADATA: &str =
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json";

/// The largest reply read (a pod with 256 KiB of annotations fits).
const MAX_BODY: usize = 1 << 20;

/// What a failed request means.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeError {
    /// 401: no or bad credentials.
    #[error("unauthorized (401): {0}")]
    Unauthorized(String),
    /// 403: the credentials may not do this (RBAC).
    #[error("forbidden (403): {0}")]
    Forbidden(String),
    /// 404: the object does not exist.
    #[error("not found (404): {0}")]
    NotFound(String),
    /// Any other non-2xx reply.
    #[error("HTTP {code}: {message}")]
    Status {
        /// The HTTP status.
        code: u16,
        /// The Status message, or the body.
        message: String,
    },
    /// No reply within the deadline.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// Connect, TLS or protocol failure.
    #[error("transport: {0}")]
    Transport(String),
    /// A 2xx reply that is not an object with metadata.
    #[error("unexpected reply: {0}")]
    Decode(String),
    /// The client could not be set up (CA, client key, token file).
    #[error("{0}")]
    Setup(String),
}

/// `metadata` of an object, the fields tenet uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ObjectMeta {
    /// `metadata.name`.
    #[serde(default)]
    pub name: String,
    /// `metadata.namespace` (empty for cluster-scoped objects).
    #[serde(default)]
    pub namespace: String,
    /// `metadata.uid`.
    #[serde(default)]
    pub uid: String,
    /// `metadata.labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Object {
    #[serde(default)]
    kind: String,
    metadata: Option<ObjectMeta>,
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    message: String,
}

/// A client for one connection, driven on the caller's tokio runtime.
pub struct Client {
    http: reqwest::Client,
    conn: Connection,
}

fn tls_config(conn: &Connection) -> Result<rustls::ClientConfig, KubeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let setup = |m: String| KubeError::Setup(format!("{}: {m}", conn.source));
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &conn.ca_pem {
        for cert in CertificateDer::pem_slice_iter(ca) {
            let cert = cert.map_err(|e| setup(format!("certificate authority: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| setup(format!("certificate authority: {e}")))?;
        }
        if roots.is_empty() {
            return Err(setup("certificate authority: no PEM certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(e.to_string()))?
        .with_root_certificates(roots);
    let mut cfg = match &conn.auth {
        Auth::ClientCert { cert, key } => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<_, _>>()
                .map_err(|e| setup(format!("client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| setup(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| setup(format!("client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

impl Client {
    /// A client for `conn`, each request bounded by `timeout`.
    pub fn new(conn: Connection, timeout: Duration) -> Result<Self, KubeError> {
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .user_agent(concat!("tenet/", env!("CARGO_PKG_VERSION")));
        if conn.server.starts_with("https://") {
            b = b.tls_backend_preconfigured(tls_config(&conn)?);
        }
        let http = b
            .build()
            .map_err(|e| KubeError::Setup(format!("{}: {e}", conn.source)))?;
        Ok(Self { http, conn })
    }

    /// The API server's base URL.
    pub fn server(&self) -> &str {
        &self.conn.server
    }

    fn token(&self) -> Result<Option<String>, KubeError> {
        match &self.conn.auth {
            Auth::Token(t) => Ok(Some(t.clone())),
            Auth::TokenFile(p) => std::fs::read_to_string(p)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|e| KubeError::Setup(format!("token file {}: {e}", p.display()))),
            Auth::None | Auth::ClientCert { .. } => Ok(None),
        }
    }

    /// GETs `path` (`/api/v1/namespaces/<ns>`, …) and returns its
    /// metadata.
    pub async fn get_metadata(&self, path: &str) -> Result<ObjectMeta, KubeError> {
        let url = format!("{}{path}", self.conn.server);
        let mut req = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, ACCEPT_METADATA);
        if let Some(t) = self.token()? {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(transport)?;
        if body.len() > MAX_BODY {
            return Err(KubeError::Decode(format!(
                "GET {path}: reply of {} bytes",
                body.len()
            )));
        }
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<Status>(&body)
                .map(|s| s.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(match status {
                401 => KubeError::Unauthorized(message),
                403 => KubeError::Forbidden(message),
                404 => KubeError::NotFound(message),
                code => KubeError::Status { code, message },
            });
        }
        let obj: Object = serde_json::from_slice(&body)
            .map_err(|e| KubeError::Decode(format!("GET {path}: {e}")))?;
        obj.metadata
            .ok_or_else(|| KubeError::Decode(format!("GET {path}: {} without metadata", obj.kind)))
    }
}

fn transport(e: reqwest::Error) -> KubeError {
    use std::error::Error;
    if e.is_timeout() {
        return KubeError::Timeout(0);
    }
    // reqwest's own message says little ("error sending request"); the
    // cause (connection refused, certificate unknown) is what helps.
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    KubeError::Transport(msg)
}
