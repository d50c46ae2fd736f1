//! Where the API server is and how to authenticate: a kubeconfig file (its
//! current context), or the in-cluster service account.
//!
//! Supported, as client-go reads them: `server`, `certificate-authority`
//! and `certificate-authority-data`; users with `token`, `tokenFile`, or
//! `client-certificate(-data)` + `client-key(-data)`. Refused with a message
//! naming the key: `insecure-skip-tls-verify` (give the CA instead), exec
//! and auth-provider plugins (a CNI exec cannot run a credential helper
//! within its budget), user name/password.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The service-account directory every pod gets.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How requests authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credentials (a test server, a proxy that adds them).
    None,
    /// A bearer token, given inline.
    Token(String),
    /// A bearer token read from a file at each use (rotated tokens).
    TokenFile(PathBuf),
    /// A client certificate and key (PEM).
    ClientCert {
        /// Certificate chain, PEM.
        cert: Vec<u8>,
        /// Private key, PEM.
        key: Vec<u8>,
    },
}

impl std::fmt::Debug for Auth {
    // Never print credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => write!(f, "None"),
            Auth::Token(_) => write!(f, "Token(..)"),
            Auth::TokenFile(p) => write!(f, "TokenFile({})", p.display()),
            Auth::ClientCert { .. } => write!(f, "ClientCert(..)"),
        }
    }
}

/// A resolved connection: server, trust and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `https://host:port` (or `http://` for a local proxy).
    pub server: String,
    /// CA bundle (PEM) the server's certificate must chain to; `None` for
    /// plain HTTP.
    pub ca_pem: Option<Vec<u8>>,
    /// Credentials.
    pub auth: Auth,
    /// Where this came from, for error messages.
    pub source: String,
}

/// A kubeconfig or in-cluster setup that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KubeconfigError(pub String);

#[derive(Debug, Deserialize)]
struct File {
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    /// The one other key: `cluster`, `user` or `context`.
    #[serde(flatten)]
    item: BTreeMap<String, T>,
}

#[derive(Debug, Default, Deserialize)]
struct Cluster {
    server: Option<String>,
    #[serde(rename = "certificate-authority")]
    certificate_authority: Option<PathBuf>,
    #[serde(rename = "certificate-authority-data")]
    certificate_authority_data: Option<String>,
    #[serde(rename = "insecure-skip-tls-verify", default)]
    insecure_skip_tls_verify: bool,
}

#[derive(Debug, Default, Deserialize)]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    #[serde(rename = "client-certificate")]
    client_certificate: Option<PathBuf>,
    #[serde(rename = "client-certificate-data")]
    client_certificate_data: Option<String>,
    #[serde(rename = "client-key")]
    client_key: Option<PathBuf>,
    #[serde(rename = "client-key-data")]
    client_key_data: Option<String>,
    exec: Option<serde_yaml_ng::Value>,
    #[serde(rename = "auth-provider")]
    auth_provider: Option<serde_yaml_ng::Value>,
    username: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Context {
    cluster: String,
    user: Option<String>,
}

fn base64_decode(s: &str, at: &str) -> Result<Vec<u8>, KubeconfigError> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        let v = T
            .iter()
            .position(|&t| t == c)
            .ok_or_else(|| KubeconfigError(format!("{at}: not base64")))? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

/// Relative paths in a kubeconfig are relative to the file's directory.
fn resolve(file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        file.parent().unwrap_or(Path::new("/")).join(p)
    }
}

fn read(path: &Path, at: &str) -> Result<Vec<u8>, KubeconfigError> {
    std::fs::read(path).map_err(|e| KubeconfigError(format!("{at} {}: {e}", path.display())))
}

/// Reads a kubeconfig and resolves its current context.
pub fn from_file(path: &Path) -> Result<Connection, KubeconfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| KubeconfigError(format!("kubeconfig {}: {e}", path.display())))?;
    parse(path, &text)
}

/// [`from_file`] on text already read (`path` locates relative files).
pub fn parse(path: &Path, text: &str) -> Result<Connection, KubeconfigError> {
    let src = path.display().to_string();
    let err = |m: String| KubeconfigError(format!("kubeconfig {src}: {m}"));
    let f: File = serde_yaml_ng::from_str(text).map_err(|e| err(e.to_string()))?;
    let ctx_name = match (&f.current_context, f.contexts.len()) {
        (Some(c), _) if !c.is_empty() => c.clone(),
        (_, 1) => f.contexts[0].name.clone(),
        _ => return Err(err("current-context: is not set".into())),
    };
    let ctx = f
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.item.get("context"))
        .ok_or_else(|| err(format!("contexts: no context named {ctx_name:?}")))?;
    let cluster = f
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.item.get("cluster"))
        .ok_or_else(|| err(format!("clusters: no cluster named {:?}", ctx.cluster)))?;
    let default_user = User::default();
    let user = match &ctx.user {
        Some(u) if !u.is_empty() => f
            .users
            .iter()
            .find(|x| &x.name == u)
            .and_then(|x| x.item.get("user"))
            .ok_or_else(|| err(format!("users: no user named {u:?}")))?,
        _ => &default_user,
    };
    let server = cluster
        .server
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| err(format!("clusters[{:?}].server: is required", ctx.cluster)))?;
    if cluster.insecure_skip_tls_verify {
        return Err(err(format!(
            "clusters[{:?}].insecure-skip-tls-verify: not supported; give certificate-authority",
            ctx.cluster
        )));
    }
    let ca_pem = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(d), _) => Some(base64_decode(d, "certificate-authority-data").map_err(|e| err(e.0))?),
        (None, Some(p)) => {
            Some(read(&resolve(path, p), "certificate-authority").map_err(|e| err(e.0))?)
        }
        (None, None) => None,
    };
    if server.starts_with("https://") && ca_pem.is_none() {
        return Err(err(format!(
            "clusters[{:?}]: an https server needs certificate-authority or certificate-authority-data",
            ctx.cluster
        )));
    }
    let uname = ctx.user.clone().unwrap_or_default();
    if user.exec.is_some() || user.auth_provider.is_some() {
        return Err(err(format!(
            "users[{uname:?}]: exec and auth-provider credential plugins are not supported \
             (use a token, tokenFile or client certificate)"
        )));
    }
    if user.username.is_some() {
        return Err(err(format!(
            "users[{uname:?}].username: basic authentication is not supported"
        )));
    }
    let cert = match (&user.client_certificate_data, &user.client_certificate) {
        (Some(d), _) => Some(base64_decode(d, "client-certificate-data").map_err(|e| err(e.0))?),
        (None, Some(p)) => {
            Some(read(&resolve(path, p), "client-certificate").map_err(|e| err(e.0))?)
        }
        _ => None,
    };
    let key = match (&user.client_key_data, &user.client_key) {
        (Some(d), _) => Some(base64_decode(d, "client-key-data").map_err(|e| err(e.0))?),
        (None, Some(p)) => Some(read(&resolve(path, p), "client-key").map_err(|e| err(e.0))?),
        _ => None,
    };
    let auth = match (&user.token, &user.token_file, cert, key) {
        (Some(t), _, _, _) if !t.is_empty() => Auth::Token(t.trim().to_owned()),
        (_, Some(p), _, _) => Auth::TokenFile(resolve(path, p)),
        (_, _, Some(cert), Some(key)) => Auth::ClientCert { cert, key },
        (_, _, Some(_), None) | (_, _, None, Some(_)) => {
            return Err(err(format!(
                "users[{uname:?}]: client-certificate and client-key go together"
            )));
        }
        _ => Auth::None,
    };
    Ok(Connection {
        server: server.trim_end_matches('/').to_owned(),
        ca_pem,
        auth,
        source: format!("kubeconfig {src}"),
    })
}

/// The in-cluster connection of a process in a pod: the
/// `KUBERNETES_SERVICE_HOST`/`_PORT` variables and the service account's
/// token (re-read at each use: kubelet rotates it) and CA.
pub fn in_cluster(env: &[(String, String)], sa_dir: &Path) -> Result<Connection, KubeconfigError> {
    let get = |k: &str| {
        env.iter()
            .find(|(n, v)| n == k && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    let (Some(host), Some(port)) = (
        get("KUBERNETES_SERVICE_HOST"),
        get("KUBERNETES_SERVICE_PORT"),
    ) else {
        return Err(KubeconfigError(
            "no Kubernetes API configured: set [kubernetes] kubeconfig in tenet.toml \
             (KUBERNETES_SERVICE_HOST/PORT are only set inside a pod)"
                .into(),
        ));
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let ca = sa_dir.join("ca.crt");
    Ok(Connection {
        server: format!("https://{host}:{port}"),
        ca_pem: Some(read(&ca, "in-cluster CA")?),
        auth: Auth::TokenFile(sa_dir.join("token")),
        source: "in-cluster service account".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_context_token_file_and_ca_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        let text = r#"
apiVersion: v1
kind: Config
current-context: tenet
clusters:
- name: other
  cluster: {server: "https://other:6443", certificate-authority-data: "QQ=="}
- name: local
  cluster:
    server: https://10.96.0.1:443/
    certificate-authority-data: LS0tLS1CRUdJTg==
contexts:
- name: tenet
  context: {cluster: local, user: tenet}
users:
- name: tenet
  user:
    tokenFile: tenet/token
"#;
        let c = parse(&path, text).unwrap();
        assert_eq!(c.server, "https://10.96.0.1:443");
        assert_eq!(c.ca_pem.as_deref(), Some(&b"-----BEGIN"[..]));
        assert_eq!(c.auth, Auth::TokenFile(dir.path().join("tenet/token")));
    }

    #[test]
    fn refusals_name_the_key() {
        let p = Path::new("/k");
        let base = |cluster: &str, user: &str| {
            format!(
                "current-context: c\nclusters:\n- name: k\n  cluster: {cluster}\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\nusers:\n- name: u\n  user: {user}\n"
            )
        };
        let cases = [
            (
                base(
                    "{server: 'https://a', insecure-skip-tls-verify: true}",
                    "{token: t}",
                ),
                "insecure-skip-tls-verify",
            ),
            (
                base("{server: 'https://a'}", "{token: t}"),
                "certificate-authority",
            ),
            (
                base("{server: 'http://a'}", "{exec: {command: aws}}"),
                "exec and auth-provider",
            ),
            (
                base("{server: 'http://a'}", "{username: a, password: b}"),
                "username",
            ),
            (
                base("{server: 'http://a'}", "{client-certificate-data: QQ==}"),
                "go together",
            ),
            (
                base("{certificate-authority-data: QQ==}", "{token: t}"),
                "server",
            ),
            (
                "current-context: nope\ncontexts: []\n".to_string(),
                "no context named",
            ),
        ];
        for (text, needle) in cases {
            let e = parse(p, &text).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle} not in {e}");
            assert!(e.starts_with("kubeconfig /k"), "{e}");
        }
        let ok = parse(p, &base("{server: 'http://a'}", "{token: ' t1 '}")).unwrap();
        assert_eq!(ok.auth, Auth::Token("t1".into()));
        assert_eq!(format!("{:?}", ok.auth), "Token(..)");
    }

    #[test]
    fn in_cluster_needs_the_service_variables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "CA").unwrap();
        let env = |h: &str| {
            vec![
                ("KUBERNETES_SERVICE_HOST".to_string(), h.to_string()),
                ("KUBERNETES_SERVICE_PORT".to_string(), "443".to_string()),
            ]
        };
        let c = in_cluster(&env("10.96.0.1"), dir.path()).unwrap();
        assert_eq!(c.server, "https://10.96.0.1:443");
        assert_eq!(c.auth, Auth::TokenFile(dir.path().join("token")));
        assert_eq!(
            in_cluster(&env("fd00::1"), dir.path()).unwrap().server,
            "https://[fd00::1]:443"
        );
        let e = in_cluster(&[], dir.path()).unwrap_err().to_string();
        assert!(e.contains("kubeconfig"), "{e}");
    }
}
