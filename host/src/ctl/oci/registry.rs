//! A small client for the registry HTTP API (Docker Registry v2 / OCI
//! distribution): blob upload (POST then one PUT), blob and manifest GET,
//! manifest PUT, anonymous bearer tokens from a `WWW-Authenticate`
//! challenge. Over the reqwest and rustls (ring) already in tenet, on a
//! private current-thread runtime; tenetctl only.
//!
//! Everything read is bounded (manifests 4 MiB, blobs by the caller), and
//! nothing read is trusted: callers check digests themselves.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode, header};

use crate::policy::cache::sha256_hex;

/// Media type of OCI image manifests (both artifact kinds use it).
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's schema 2 manifest, accepted on pulls.
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Upper bound on a manifest read.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The system's CA bundle (Debian), used when no `ca_file` is configured.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// `host:port`s reached over plain HTTP.
    pub insecure: Vec<String>,
    /// CA bundle for HTTPS (the system's when unset).
    pub ca_file: Option<PathBuf>,
}

/// One repository on one registry.
pub struct Registry {
    rt: tokio::runtime::Runtime,
    inner: Inner,
}

/// The client state the async code borrows (apart from the runtime that
/// drives it: a current-thread runtime only drives IO from its own
/// `block_on`).
struct Inner {
    http: reqwest::Client,
    base: reqwest::Url,
    repository: String,
    token: Option<String>,
}

/// A manifest as served.
pub struct Fetched {
    /// Its bytes, exactly as served (the digest is over these).
    pub bytes: Vec<u8>,
    /// `Content-Type`.
    pub media_type: String,
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let pem = std::fs::read(path).map_err(|e| {
        format!(
            "CA bundle {}: {e} (set [distribution] ca_file)",
            path.display()
        )
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("CA bundle {}: {e}", path.display()))?;
        // A bundle may hold certificates rustls cannot use; skip those.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!(
            "CA bundle {}: no usable certificate",
            path.display()
        ));
    }
    client_config(roots)
}

fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

impl Registry {
    /// A client for `registry` (`host[:port]`) / `repository`.
    pub fn new(transport: &Transport, registry: &str, repository: &str) -> Result<Self, String> {
        let insecure = transport.insecure.iter().any(|r| r == registry);
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .no_proxy()
            .user_agent(concat!("tenetctl/", env!("CARGO_PKG_VERSION")));
        // reqwest needs a TLS config even for plain HTTP (no default crypto
        // provider is compiled in); a plain-HTTP registry gets one that
        // trusts nothing.
        b = b.tls_backend_preconfigured(if insecure {
            client_config(rustls::RootCertStore::empty())?
        } else {
            tls_config(transport.ca_file.as_deref())?
        });
        let http = b.build().map_err(|e| e.to_string())?;
        let scheme = if insecure { "http" } else { "https" };
        let base = reqwest::Url::parse(&format!("{scheme}://{registry}/"))
            .map_err(|e| format!("registry {registry:?}: {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            rt,
            inner: Inner {
                http,
                base,
                repository: repository.to_owned(),
                token: None,
            },
        })
    }

    /// Whether the repository has blob `digest` (`sha256:…`).
    pub fn has_blob(&mut self, digest: &str) -> Result<bool, String> {
        self.rt.block_on(self.inner.has_blob(digest))
    }

    /// Uploads a blob (monolithic: POST, then PUT with the digest) unless
    /// the repository has it; returns its digest.
    pub fn push_blob(&mut self, bytes: &[u8]) -> Result<String, String> {
        self.rt.block_on(self.inner.push_blob(bytes))
    }

    /// PUTs a manifest under `reference` (a tag or its digest); returns its
    /// digest, checked against what the registry says it stored.
    pub fn put_manifest(
        &mut self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, String> {
        self.rt
            .block_on(self.inner.put_manifest(reference, media_type, bytes))
    }

    /// GETs a manifest by tag or digest; `None` when the registry has none.
    pub fn get_manifest(&mut self, reference: &str) -> Result<Option<Fetched>, String> {
        self.rt.block_on(self.inner.get_manifest(reference))
    }

    /// GETs a blob, at most `max` bytes.
    pub fn get_blob(&mut self, digest: &str, max: usize) -> Result<Vec<u8>, String> {
        self.rt.block_on(self.inner.get_blob(digest, max))
    }
}

impl Inner {
    fn url(&self, tail: &str) -> String {
        format!("{}v2/{}/{tail}", self.base, self.repository)
    }

    /// Sends a request, answering one bearer challenge with an anonymous
    /// token for this repository.
    async fn send(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, &str)],
        body: Option<&[u8]>,
    ) -> Result<reqwest::Response, String> {
        for attempt in 0..2 {
            let mut req = self.http.request(method.clone(), url);
            for (k, v) in headers {
                req = req.header(k, *v);
            }
            if let Some(b) = body {
                req = req.body(b.to_vec());
            }
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| format!("{method} {url}: {}", error_chain(&e)))?;
            if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 && self.token.is_none() {
                let challenge = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                self.token = Some(self.fetch_token(&challenge, &method).await?);
                continue;
            }
            return Ok(resp);
        }
        Err(format!("{method} {url}: still unauthorized with a token"))
    }

    async fn fetch_token(&self, challenge: &str, method: &Method) -> Result<String, String> {
        let params = challenge.strip_prefix("Bearer ").ok_or_else(|| {
            format!(
                "registry {} wants authentication ({challenge:?}); only anonymous bearer tokens are supported",
                self.base
            )
        })?;
        let field = |name: &str| {
            params.split(',').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
        };
        let realm = field("realm").ok_or("bearer challenge without realm")?;
        let action = if *method == Method::GET || *method == Method::HEAD {
            "pull"
        } else {
            "pull,push"
        };
        let scope =
            field("scope").unwrap_or_else(|| format!("repository:{}:{action}", self.repository));
        let mut url =
            reqwest::Url::parse(&realm).map_err(|e| format!("token realm {realm:?}: {e}"))?;
        url.query_pairs_mut().append_pair("scope", &scope);
        if let Some(s) = field("service") {
            url.query_pairs_mut().append_pair("service", &s);
        }
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("token from {realm}: {}", error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("token from {realm}: HTTP {}", resp.status()));
        }
        let body = read_bounded(resp, MAX_MANIFEST_BYTES, &realm).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("token from {realm}: {e}"))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("token from {realm}: no token in the answer"))
    }

    async fn has_blob(&mut self, digest: &str) -> Result<bool, String> {
        let url = self.url(&format!("blobs/{digest}"));
        let r = self.send(Method::HEAD, &url, &[], None).await?;
        Ok(r.status().is_success())
    }

    async fn push_blob(&mut self, bytes: &[u8]) -> Result<String, String> {
        let digest = format!("sha256:{}", sha256_hex(bytes));
        if self.has_blob(&digest).await? {
            return Ok(digest);
        }
        let start = self.url("blobs/uploads/");
        {
            let r = self.send(Method::POST, &start, &[], None).await?;
            let r = expect(r, &[StatusCode::ACCEPTED], "POST", &start).await?;
            let loc = r
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("POST {start}: no Location for the upload"))?;
            let mut url = self
                .base
                .join(loc)
                .map_err(|e| format!("POST {start}: Location {loc:?}: {e}"))?;
            url.query_pairs_mut().append_pair("digest", &digest);
            let url = url.to_string();
            let r = self
                .send(
                    Method::PUT,
                    &url,
                    &[(header::CONTENT_TYPE, "application/octet-stream")],
                    Some(bytes),
                )
                .await?;
            expect(r, &[StatusCode::CREATED], "PUT", &url).await?;
            Ok(digest)
        }
    }

    async fn put_manifest(
        &mut self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, String> {
        let digest = format!("sha256:{}", sha256_hex(bytes));
        let url = self.url(&format!("manifests/{reference}"));
        {
            let r = self
                .send(
                    Method::PUT,
                    &url,
                    &[(header::CONTENT_TYPE, media_type)],
                    Some(bytes),
                )
                .await?;
            let r = expect(r, &[StatusCode::CREATED], "PUT", &url).await?;
            if let Some(d) = r
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                && d != digest
            {
                return Err(format!(
                    "PUT {url}: the registry stored digest {d}, not {digest}"
                ));
            }
            Ok(digest)
        }
    }

    async fn get_manifest(&mut self, reference: &str) -> Result<Option<Fetched>, String> {
        let url = self.url(&format!("manifests/{reference}"));
        let accept = format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}");
        {
            let r = self
                .send(Method::GET, &url, &[(header::ACCEPT, &accept)], None)
                .await?;
            if r.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let r = expect(r, &[StatusCode::OK], "GET", &url).await?;
            let media_type = r
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let bytes = read_bounded(r, MAX_MANIFEST_BYTES, &url).await?;
            Ok(Some(Fetched { bytes, media_type }))
        }
    }

    async fn get_blob(&mut self, digest: &str, max: usize) -> Result<Vec<u8>, String> {
        let url = self.url(&format!("blobs/{digest}"));
        let r = self.send(Method::GET, &url, &[], None).await?;
        let r = expect(r, &[StatusCode::OK], "GET", &url).await?;
        read_bounded(r, max, &url).await
    }
}

async fn expect(
    r: reqwest::Response,
    ok: &[StatusCode],
    method: &str,
    url: &str,
) -> Result<reqwest::Response, String> {
    if ok.contains(&r.status()) {
        return Ok(r);
    }
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    Err(format!(
        "{method} {url}: HTTP {status}: {}",
        crate::policy::clip_text(body.trim(), 300)
    ))
}

async fn read_bounded(mut r: reqwest::Response, max: usize, url: &str) -> Result<Vec<u8>, String> {
    if r.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("GET {url}: larger than {max} bytes"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
        if out.len() + chunk.len() > max {
            return Err(format!("GET {url}: larger than {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// An error and its causes on one line (reqwest's Display omits them).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
