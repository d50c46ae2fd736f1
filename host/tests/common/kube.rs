//! The Kubernetes API emulator (`tests/kube-emulator`) served over HTTPS
//! with a throwaway CA, and kubeconfig files pointing tenet at it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kube_emulator::{KubeEmulator, Tls};

/// The token tenet's kubeconfig carries (granted get/list/watch on pods and
/// namespaces, as deploy/rbac.yaml grants).
pub const TOKEN: &str = "tenet-node-token";
/// The service account behind [`TOKEN`].
pub const USER: &str = "system:serviceaccount:kube-system:tenet";

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("openssl CLI (Debian openssl package)");
    assert!(st.success(), "openssl {args:?}");
}

/// A CA (`ca.crt`) and a server certificate for 127.0.0.1 signed by it
/// (`server.crt`, `server.key`), in `dir`.
pub fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=kube-emulator-ca",
    ];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut req = vec!["req", "-subj", "/CN=kube-apiserver"];
    req.extend(ec);
    req.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &req);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
        ],
    );
}

/// An emulator over HTTPS on a loopback port of the calling thread's
/// network namespace, with [`TOKEN`] granted what tenet's ClusterRole
/// grants; its CA is `<dir>/ca.crt`.
pub fn start(dir: &Path) -> KubeEmulator {
    make_certs(dir);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let emu = KubeEmulator::start(
        listener,
        Some(Tls {
            cert: &dir.join("server.crt"),
            key: &dir.join("server.key"),
        }),
    )
    .unwrap();
    emu.add_token(
        TOKEN,
        USER,
        &["get", "list", "watch"],
        &["pods", "namespaces"],
    );
    emu
}

/// Writes a kubeconfig for `server` with the CA file and a token file
/// (`<dir>/token`, holding `token`); returns its path.
pub fn kubeconfig(dir: &Path, server: &str, token: &str) -> PathBuf {
    std::fs::write(dir.join("token"), format!("{token}\n")).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: tenet\n\
             clusters:\n- name: emu\n  cluster:\n    server: {server}\n    certificate-authority: ca.crt\n\
             contexts:\n- name: tenet\n  context:\n    cluster: emu\n    user: tenet\n\
             users:\n- name: tenet\n  user:\n    tokenFile: token\n"
        ),
    )
    .unwrap();
    path
}

/// The pipeline of the tests through `tenet` with the API: the tenant from
/// a pod label or its namespace's label, a pod's static address from an
/// annotation, a pool and a default route.
pub const PIPELINE: &str = r#"
[[stage]]
name = "tenant"
module = "tenant-map"
[stage.settings]
labels = ["tenant_id"]
namespaceLabels = ["capsule.clastix.io/tenant"]
fromNamespace = true

[[stage]]
name = "ipam"
module = "ipam-policy"
[stage.settings]
pools = [{ name = "pods-v4", family = "ipv4", supernet = "10.64.0.0/12", subnetLen = 24 }]
staticAnnotation = "tenet.io/ip"

[[stage]]
name = "routes"
module = "route-dns"
[stage.settings]
defaultRoute = true
"#;

/// Writes [`PIPELINE`] into `dir` and a `tenet.toml` at `config` running it
/// with the API at `kubeconfig`; `kubernetes` is the rest of the
/// `[kubernetes]` section (`timeout_ms = …`). State lives in `<dir>/state`.
pub fn write_config(dir: &Path, config: &Path, kubeconfig: &Path, kubernetes: &str) {
    let pipeline = super::manifest(dir, "pipeline.toml", PIPELINE);
    std::fs::write(
        config,
        format!(
            "pipeline = {:?}\nstate_dir = {:?}\ncache_dir = {:?}\nmodule_dirs = [{:?}]\n\
             [kubernetes]\nkubeconfig = {:?}\n{kubernetes}",
            pipeline,
            dir.join("state"),
            super::shared_cache(),
            super::modules_dir(),
            kubeconfig
        ),
    )
    .unwrap();
}

/// A pod, as (namespace, name, uid).
pub type PodRef<'a> = (&'a str, &'a str, &'a str);

/// An ADD by `tenet` (the binary at `tenet`) with `config`, in dry-run mode
/// (planned, not applied), for `pod` of network `kube-net`: its CNI reply.
/// `kubernetes` is the network's `kubernetes` key, `annotations` the
/// runtime's pod annotations.
pub fn dry_run_add(
    tenet: &Path,
    config: &Path,
    cni_path: &Path,
    kubernetes: serde_json::Value,
    annotations: serde_json::Value,
    pod: PodRef<'_>,
) -> serde_json::Value {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "kube-net", "type": "tenet",
        "kubernetes": kubernetes,
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": annotations},
    });
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID={}",
        pod.0, pod.1, pod.2
    );
    let out = super::run_with_stdin(
        Command::new(tenet)
            .env_clear()
            .env("TENET_CONFIG", config)
            .env("TENET_DRY_RUN", "1")
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "c1")
            .env("CNI_NETNS", "/proc/self/ns/net")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", args)
            .env("CNI_PATH", cni_path),
        &conf.to_string(),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The plan of a dry-run reply (code 110), or the reply when it is not one.
pub fn dry_run_plan(reply: &serde_json::Value) -> Result<serde_json::Value, String> {
    if reply["code"] != 110 {
        return Err(reply.to_string());
    }
    let d = reply["details"].as_str().unwrap();
    Ok(serde_json::from_str(d.strip_prefix("plan: ").unwrap()).unwrap())
}
