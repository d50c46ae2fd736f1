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
