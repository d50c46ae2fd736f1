//! The node's kubeconfig for the `tenet` CNI exec, written from a pod's
//! in-cluster settings (`--write-kubeconfig`, docs/kubernetes.md).
//!
//! `tenet` is exec'd by the runtime on the host, outside any pod: it never
//! sees the service-account token and CA that kubelet mounts into the
//! DaemonSet's containers, nor `KUBERNETES_SERVICE_HOST`/`_PORT`. So the
//! DaemonSet (its init container through `tenetctl install`, then the agent
//! periodically) writes them into a kubeconfig on a host path
//! (`/etc/tenet/kubeconfig`), which `[kubernetes] kubeconfig` names. This is
//! what Calico's and Multus' node pods do.
//!
//! - The token is written inline (`users[].user.token`): one file, replaced
//!   as a whole, so an exec reads a server, CA and token that belong
//!   together. Projected tokens rotate (kubelet renews them at 80 % of their
//!   lifetime, an hour by default): the agent re-reads them every
//!   `--kubeconfig-interval` and rewrites the file when they changed.
//! - The file is mode 0600 (it holds a credential), written to a temporary
//!   name, fsynced and renamed into place, and only when its bytes differ.
//! - Everything is checked before anything is written: missing or empty
//!   service-account files, a token with whitespace or control characters
//!   inside, a CA file without a PEM certificate, missing or malformed
//!   service variables are errors naming the file or variable, and the
//!   existing kubeconfig stays as it was.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::CtlError;
use super::install::{Change, install_bytes};
use crate::kube::kubeconfig::{self, Auth};

/// The largest service-account token accepted (real ones are about 1 KiB).
const MAX_TOKEN: usize = 64 * 1024;
/// The largest CA bundle accepted.
const MAX_CA: usize = 1024 * 1024;

/// Flags of `tenetctl install` and `tenetctl agent` that write the node's
/// kubeconfig.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeconfigArgs {
    /// Write a kubeconfig for the `tenet` CNI exec to FILE (mode 0600) from
    /// this pod's in-cluster settings: KUBERNETES_SERVICE_HOST/PORT and the
    /// service account's token and CA (e.g. /etc/tenet/kubeconfig, which
    /// `[kubernetes] kubeconfig` in tenet.toml names).
    #[arg(long, value_name = "FILE")]
    pub write_kubeconfig: Option<PathBuf>,
    /// The service-account directory the token and CA are read from.
    #[arg(
        long,
        value_name = "DIR",
        default_value = kubeconfig::SERVICE_ACCOUNT_DIR,
        requires = "write_kubeconfig"
    )]
    pub service_account_dir: PathBuf,
}

#[derive(Serialize)]
struct File<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    clusters: [Named<'a, ClusterItem<'a>>; 1],
    users: [Named<'a, UserItem<'a>>; 1],
    contexts: [Named<'a, ContextItem<'a>>; 1],
    #[serde(rename = "current-context")]
    current_context: &'a str,
}

#[derive(Serialize)]
struct Named<'a, T> {
    name: &'a str,
    #[serde(flatten)]
    item: T,
}

#[derive(Serialize)]
struct ClusterItem<'a> {
    cluster: Cluster<'a>,
}

#[derive(Serialize)]
struct Cluster<'a> {
    server: &'a str,
    #[serde(rename = "certificate-authority-data")]
    certificate_authority_data: String,
}

#[derive(Serialize)]
struct UserItem<'a> {
    user: User<'a>,
}

#[derive(Serialize)]
struct User<'a> {
    token: &'a str,
}

#[derive(Serialize)]
struct ContextItem<'a> {
    context: Context<'a>,
}

#[derive(Serialize)]
struct Context<'a> {
    cluster: &'a str,
    user: &'a str,
}

const HEADER: &str = "# Written by tenetctl (--write-kubeconfig) from the tenet DaemonSet's\n\
# service account, for the tenet CNI plugin exec'd on this node. Rewritten\n\
# when the token rotates; do not edit (docs/kubernetes.md).\n";

fn read_capped(path: &Path, what: &str, cap: usize) -> Result<Vec<u8>, CtlError> {
    let bytes = std::fs::read(path).map_err(|e| {
        CtlError::Message(format!("service-account {what} {}: {e}", path.display()))
    })?;
    if bytes.len() > cap {
        return Err(CtlError::Message(format!(
            "service-account {what} {}: {} bytes, more than {cap}",
            path.display(),
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// The API server's URL from `KUBERNETES_SERVICE_HOST`/`_PORT`.
fn server(env: &[(String, String)]) -> Result<String, CtlError> {
    let get = |k: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                CtlError::Message(format!(
                    "{k} is not set: --write-kubeconfig reads the in-cluster settings, \
                     which only a process in a pod has"
                ))
            })
    };
    let host = get("KUBERNETES_SERVICE_HOST")?;
    let port = get("KUBERNETES_SERVICE_PORT")?;
    let host_ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
    if !host_ok {
        return Err(CtlError::Message(format!(
            "KUBERNETES_SERVICE_HOST {host:?} is not a host name or address"
        )));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => {
            return Err(CtlError::Message(format!(
                "KUBERNETES_SERVICE_PORT {port:?} is not a port number"
            )));
        }
    }
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok(format!("https://{host}:{port}"))
}

/// The kubeconfig for this pod's in-cluster settings (`env` holds
/// `KUBERNETES_SERVICE_HOST`/`_PORT`; `sa_dir` the service account's `token`
/// and `ca.crt`). Deterministic: the same settings give the same bytes.
pub fn render(env: &[(String, String)], sa_dir: &Path) -> Result<String, CtlError> {
    let server = server(env)?;
    let token_path = sa_dir.join("token");
    let token = read_capped(&token_path, "token", MAX_TOKEN)?;
    let token = std::str::from_utf8(&token)
        .map_err(|_| {
            CtlError::Message(format!(
                "service-account token {}: not text",
                token_path.display()
            ))
        })?
        .trim();
    if token.is_empty() {
        return Err(CtlError::Message(format!(
            "service-account token {}: empty",
            token_path.display()
        )));
    }
    // A bearer token is one HTTP header value: no spaces, no control
    // characters (a JWT is base64url and dots).
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CtlError::Message(format!(
            "service-account token {}: holds spaces or control characters",
            token_path.display()
        )));
    }
    let ca_path = sa_dir.join("ca.crt");
    let ca = read_capped(&ca_path, "CA", MAX_CA)?;
    check_ca(&ca)
        .map_err(|m| CtlError::Message(format!("service-account CA {}: {m}", ca_path.display())))?;
    use base64::Engine as _;
    let file = File {
        api_version: "v1",
        kind: "Config",
        clusters: [Named {
            name: "kubernetes",
            item: ClusterItem {
                cluster: Cluster {
                    server: &server,
                    certificate_authority_data: base64::engine::general_purpose::STANDARD
                        .encode(&ca),
                },
            },
        }],
        users: [Named {
            name: "tenet",
            item: UserItem {
                user: User { token },
            },
        }],
        contexts: [Named {
            name: "tenet",
            item: ContextItem {
                context: Context {
                    cluster: "kubernetes",
                    user: "tenet",
                },
            },
        }],
        current_context: "tenet",
    };
    let yaml = serde_yaml_ng::to_string(&file).map_err(CtlError::from_err)?;
    let text = format!("{HEADER}{yaml}");
    // What tenet will read back must be what was meant.
    let back = kubeconfig::parse(Path::new("/kubeconfig"), &text).map_err(|e| {
        CtlError::Message(format!(
            "internal error: the kubeconfig written does not read back: {e}"
        ))
    })?;
    if back.server != server
        || back.ca_pem.as_deref() != Some(&ca[..])
        || back.auth != Auth::Token(token.to_owned())
    {
        return Err(CtlError::Message(
            "internal error: the kubeconfig written reads back differently".into(),
        ));
    }
    Ok(text)
}

/// At least one PEM certificate, and every one of them parses.
fn check_ca(pem: &[u8]) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem) {
        c.map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("no PEM certificate".into());
    }
    Ok(())
}

/// What [`write`] did.
pub type Written = Change;

/// Renders the kubeconfig and writes it to `dest` (mode 0600, atomically,
/// only when it differs). On any error `dest` is left as it was.
pub fn write(env: &[(String, String)], sa_dir: &Path, dest: &Path) -> Result<Written, CtlError> {
    let text = render(env, sa_dir)?;
    write_text(&text, dest)
}

/// Writes a kubeconfig [`render`] made to `dest` (mode 0600, atomically,
/// only when it differs).
pub fn write_text(text: &str, dest: &Path) -> Result<Written, CtlError> {
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(d) = dir
        && !d.is_dir()
    {
        std::fs::create_dir_all(d)
            .map_err(|e| CtlError::Message(format!("--write-kubeconfig {}: {e}", d.display())))?;
    }
    install_bytes(text.as_bytes(), dest, 0o600)
        .map_err(|e| CtlError::Message(format!("--write-kubeconfig: {e}")))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A real certificate (any will do: only its PEM form is checked).
    fn ca_pem() -> String {
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=test-ca",
                "-keyout",
            ])
            .arg(dir.path().join("k"))
            .arg("-out")
            .arg(dir.path().join("c"))
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl CLI (Debian openssl package)");
        assert!(st.success());
        std::fs::read_to_string(dir.path().join("c")).unwrap()
    }

    fn env(host: &str, port: &str) -> Vec<(String, String)> {
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), host.into()),
            ("KUBERNETES_SERVICE_PORT".into(), port.into()),
        ]
    }

    fn sa(dir: &Path, token: &str, ca: &str) -> PathBuf {
        let sa = dir.join("sa");
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::write(sa.join("token"), token).unwrap();
        std::fs::write(sa.join("ca.crt"), ca).unwrap();
        sa
    }

    #[test]
    fn written_once_read_back_by_tenet_and_rewritten_on_rotation() {
        let d = tempfile::tempdir().unwrap();
        let ca = ca_pem();
        let sa = sa(d.path(), "eyJhbGciOi.one.sig\n", &ca);
        let dest = d.path().join("etc/kubeconfig");
        let e = env("10.96.0.1", "443");
        assert_eq!(write(&e, &sa, &dest).unwrap(), Change::Created);
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let c = kubeconfig::from_file(&dest).unwrap();
        assert_eq!(c.server, "https://10.96.0.1:443");
        assert_eq!(c.ca_pem.as_deref(), Some(ca.as_bytes()));
        assert_eq!(c.auth, Auth::Token("eyJhbGciOi.one.sig".into()));
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dest).unwrap());
        assert_eq!(write(&e, &sa, &dest).unwrap(), Change::Unchanged);
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dest).unwrap()),
            ino,
            "unchanged content: not rewritten"
        );
        std::fs::write(sa.join("token"), "eyJhbGciOi.two.sig").unwrap();
        assert_eq!(write(&e, &sa, &dest).unwrap(), Change::Updated);
        let c = kubeconfig::from_file(&dest).unwrap();
        assert_eq!(c.auth, Auth::Token("eyJhbGciOi.two.sig".into()));
        // IPv6 service addresses are bracketed.
        let text = render(&env("fd00:10:96::1", "443"), &sa).unwrap();
        let c = kubeconfig::parse(Path::new("/k"), &text).unwrap();
        assert_eq!(c.server, "https://[fd00:10:96::1]:443");
        // Only the kubeconfig is in its directory (no temporary file left).
        let names: Vec<_> = std::fs::read_dir(d.path().join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["kubeconfig"]);
    }

    #[test]
    fn bad_settings_name_the_file_and_keep_the_old_kubeconfig() {
        let d = tempfile::tempdir().unwrap();
        let ca = ca_pem();
        let good = sa(d.path(), "tok", &ca);
        let dest = d.path().join("kubeconfig");
        let e = env("10.96.0.1", "443");
        write(&e, &good, &dest).unwrap();
        let before = std::fs::read(&dest).unwrap();
        let bad_sa = |token: Option<&str>, ca: Option<&str>| {
            let s = tempfile::tempdir().unwrap();
            if let Some(t) = token {
                std::fs::write(s.path().join("token"), t).unwrap();
            }
            if let Some(c) = ca {
                std::fs::write(s.path().join("ca.crt"), c).unwrap();
            }
            s
        };
        type Env = Vec<(String, String)>;
        let cases: Vec<(tempfile::TempDir, Env, &str)> = vec![
            (bad_sa(None, Some(&ca)), e.clone(), "token"),
            (bad_sa(Some(" \n"), Some(&ca)), e.clone(), "token"),
            (bad_sa(Some("a b"), Some(&ca)), e.clone(), "token"),
            (bad_sa(Some("t"), None), e.clone(), "ca.crt"),
            (bad_sa(Some("t"), Some("not a cert\n")), e.clone(), "ca.crt"),
            (
                bad_sa(
                    Some("t"),
                    Some("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
                ),
                e.clone(),
                "ca.crt",
            ),
            (
                bad_sa(Some("t"), Some(&ca)),
                vec![],
                "KUBERNETES_SERVICE_HOST",
            ),
            (
                bad_sa(Some("t"), Some(&ca)),
                env("10.96.0.1", "https"),
                "KUBERNETES_SERVICE_PORT",
            ),
            (
                bad_sa(Some("t"), Some(&ca)),
                env("evil/path", "443"),
                "KUBERNETES_SERVICE_HOST",
            ),
        ];
        for (s, env, needle) in cases {
            let err = write(&env, s.path(), &dest).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle} not in {err}");
            if needle.ends_with("token") || needle.ends_with("crt") {
                assert!(
                    err.contains(&s.path().display().to_string()),
                    "the file is named: {err}"
                );
            }
            assert_eq!(std::fs::read(&dest).unwrap(), before, "kept after {err}");
        }
    }
}
