//! Pod metadata from the Kubernetes API (`tenet::kube`) against the strict
//! emulator (`tests/kube-emulator`) over HTTPS: the labels and namespace
//! labels ADD reads, the node cache, every failure the API can answer
//! (401, 403, 404, a slow server, an unknown CA), the per-network failure
//! policy, and the whole `tenet` binary deciding a tenant and a static
//! address from them (in dry-run mode: no root needed).
//!
//! Run: `cargo test -p tenet --test kube_api` (the binary tests use
//! `TENET_BIN`, default `target/release/tenet`, and the built modules).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tenet::config::Config;
use tenet::kube::{FailurePolicy, KubeError, NetworkSettings, lookup};
use tenet::plan::Kv;

fn config(dir: &Path, kubeconfig: &Path) -> Config {
    let mut cfg = Config {
        state_dir: dir.join("state"),
        ..Default::default()
    };
    cfg.kubernetes.kubeconfig = Some(kubeconfig.to_owned());
    cfg.kubernetes.timeout_ms = 2000;
    cfg
}

const BOTH: NetworkSettings = NetworkSettings {
    pod_labels: true,
    namespace_labels: true,
    failure: FailurePolicy::Fail,
};

#[test]
fn labels_and_namespace_labels_then_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let emu = common::kube::start(dir.path());
    emu.put_namespace("team-a", &[("capsule.clastix.io/tenant", "acme")]);
    let uid = emu.put_pod(
        "team-a",
        "web-0",
        &[("tenant_id", "team-b"), ("app", "web")],
        Some("n1"),
    );
    let kc = common::kube::kubeconfig(dir.path(), emu.url(), common::kube::TOKEN);
    let cfg = config(dir.path(), &kc);

    let m = lookup(&[], &cfg, &BOTH, "team-a", "web-0", Some(&uid)).unwrap();
    assert_eq!(
        m.labels,
        vec![Kv::new("app", "web"), Kv::new("tenant_id", "team-b")]
    );
    assert_eq!(
        m.namespace_labels,
        vec![
            Kv::new("capsule.clastix.io/tenant", "acme"),
            Kv::new("kubernetes.io/metadata.name", "team-a")
        ]
    );
    let j = emu.journal();
    let paths: Vec<_> = j.iter().map(|s| (s.path.as_str(), s.status)).collect();
    assert_eq!(
        paths,
        [
            ("/api/v1/namespaces/team-a/pods/web-0", 200),
            ("/api/v1/namespaces/team-a", 200)
        ]
    );
    for s in &j {
        assert_eq!(s.user.as_deref(), Some(common::kube::USER));
        assert_eq!(
            s.accept.as_deref(),
            Some(tenet::kube::client::ACCEPT_METADATA),
            "metadata only, as kubectl asks"
        );
    }

    // Warm cache: no request at all.
    emu.clear_journal();
    let again = lookup(&[], &cfg, &BOTH, "team-a", "web-0", Some(&uid)).unwrap();
    assert_eq!(again, m);
    assert!(emu.journal().is_empty(), "{:?}", emu.journal());

    // Another pod of the same namespace: only the pod is read.
    let uid1 = emu.put_pod("team-a", "web-1", &[], None);
    let m1 = lookup(&[], &cfg, &BOTH, "team-a", "web-1", Some(&uid1)).unwrap();
    assert!(m1.labels.is_empty());
    assert_eq!(m1.namespace_labels, m.namespace_labels);
    let paths: Vec<_> = emu.journal().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/api/v1/namespaces/team-a/pods/web-1"]);

    // A pod recreated under the same name is another pod: the cached entry
    // (other uid) is not used.
    emu.clear_journal();
    emu.delete_pod("team-a", "web-0");
    let new_uid = emu.put_pod("team-a", "web-0", &[("tenant_id", "team-c")], None);
    let m2 = lookup(&[], &cfg, &BOTH, "team-a", "web-0", Some(&new_uid)).unwrap();
    assert_eq!(m2.labels, vec![Kv::new("tenant_id", "team-c")]);
    assert_eq!(emu.journal().len(), 1);

    // The sandbox's pod is gone and another has its name: not its labels.
    let e = lookup(&[], &cfg, &BOTH, "team-a", "web-1", Some("not-the-uid"));
    // web-1 is cached under uid1, so the API is asked and the uid differs.
    let e = e.unwrap_err();
    assert!(matches!(e.error, KubeError::NotFound(_)), "{e}");
}

#[test]
fn every_failure_is_typed() {
    let dir = tempfile::tempdir().unwrap();
    let emu = common::kube::start(dir.path());
    emu.put_namespace("team-a", &[]);
    emu.put_pod("team-a", "web-0", &[], None);
    emu.add_token(
        "pods-only",
        "system:serviceaccount:kube-system:narrow",
        &["get"],
        &["pods"],
    );
    let no_cache = |kc: &Path| {
        let mut c = config(dir.path(), kc);
        c.kubernetes.cache_ttl_s = 0;
        c
    };

    // 401: a token the server does not know.
    let cfg = no_cache(&common::kube::kubeconfig(dir.path(), emu.url(), "wrong"));
    let e = lookup(&[], &cfg, &BOTH, "team-a", "web-0", None).unwrap_err();
    assert!(matches!(e.error, KubeError::Unauthorized(_)), "{e}");
    assert_eq!(emu.journal().last().unwrap().status, 401);

    // 403: the namespace GET is not granted; the message is the server's.
    let cfg = no_cache(&common::kube::kubeconfig(
        dir.path(),
        emu.url(),
        "pods-only",
    ));
    let e = lookup(&[], &cfg, &BOTH, "team-a", "web-0", None).unwrap_err();
    match &e.error {
        KubeError::Forbidden(m) => assert!(m.contains("cannot get resource \"namespaces\""), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.what, "namespace team-a");

    // 404: no such pod.
    let cfg = no_cache(&common::kube::kubeconfig(
        dir.path(),
        emu.url(),
        common::kube::TOKEN,
    ));
    let e = lookup(&[], &cfg, &BOTH, "team-a", "nope", None).unwrap_err();
    assert!(
        matches!(&e.error, KubeError::NotFound(m) if m == "pods \"nope\" not found"),
        "{e}"
    );

    // 500 injected on the namespace path.
    emu.fail_path("/api/v1/namespaces/team-a", 500);
    let e = lookup(&[], &cfg, &BOTH, "team-a", "web-0", None).unwrap_err();
    assert!(
        matches!(e.error, KubeError::Status { code: 500, .. }),
        "{e}"
    );
    emu.clear_failures();

    // A server slower than the timeout: the lookup gives up in time.
    let mut slow = cfg.clone();
    slow.kubernetes.timeout_ms = 300;
    emu.set_delay(Some(Duration::from_secs(3)));
    let started = std::time::Instant::now();
    let e = lookup(&[], &slow, &BOTH, "team-a", "web-0", None).unwrap_err();
    assert_eq!(e.error, KubeError::Timeout(300), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited for the server"
    );
    emu.set_delay(None);

    // A server whose certificate the configured CA did not sign.
    let other = tempfile::tempdir().unwrap();
    common::kube::make_certs(other.path());
    std::fs::copy(other.path().join("ca.crt"), dir.path().join("ca.crt")).unwrap();
    let e = lookup(&[], &cfg, &BOTH, "team-a", "web-0", None).unwrap_err();
    match &e.error {
        KubeError::Transport(m) => assert!(m.to_lowercase().contains("certificate"), "{m}"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Through the `tenet` binary (dry run: the plan, not applied).

struct Bin {
    dir: PathBuf,
    config: PathBuf,
}

impl Bin {
    fn new(dir: &Path, kubeconfig: &Path, extra: &str) -> Self {
        let config = dir.join("tenet.toml");
        common::kube::write_config(
            dir,
            &config,
            kubeconfig,
            &format!("timeout_ms = 1500\n{extra}"),
        );
        Bin {
            dir: dir.to_owned(),
            config,
        }
    }

    /// ADD in dry-run mode: the reply.
    fn add(&self, kubernetes: Value, annotations: Value, pod: (&str, &str, &str)) -> Value {
        common::kube::dry_run_add(
            &common::binary("tenet"),
            &self.config,
            &self.dir,
            kubernetes,
            annotations,
            pod,
        )
    }
}

/// The plan of a dry-run reply (code 110).
fn plan(reply: &Value) -> Value {
    common::kube::dry_run_plan(reply).unwrap_or_else(|r| panic!("not a dry run: {r}"))
}

#[test]
fn the_binary_takes_tenant_and_static_address_from_the_pod() {
    let dir = tempfile::tempdir().unwrap();
    let emu = common::kube::start(dir.path());
    emu.put_namespace("team-a", &[("capsule.clastix.io/tenant", "acme")]);
    emu.put_namespace("team-z", &[]);
    let u0 = emu.put_pod("team-a", "web-0", &[], None);
    let u1 = emu.put_pod("team-a", "web-1", &[("tenant_id", "team-b")], None);
    let u2 = emu.put_pod("team-z", "web-2", &[], None);
    let kc = common::kube::kubeconfig(dir.path(), emu.url(), common::kube::TOKEN);
    let bin = Bin::new(dir.path(), &kc, "");

    // Namespace label → tenant; the pod annotation → its static address.
    let p = plan(&bin.add(
        json!({}),
        json!({"tenet.io/ip": "10.64.7.9"}),
        ("team-a", "web-0", &u0),
    ));
    assert_eq!(p["tenant"], "acme");
    let addrs = p["interfaces"][0]["addresses"].to_string();
    assert!(addrs.contains("10.64.7.9"), "{addrs}");
    // A pod label wins over the namespace label (rainbond's tenant_id).
    let p = plan(&bin.add(json!({}), json!({}), ("team-a", "web-1", &u1)));
    assert_eq!(p["tenant"], "team-b");
    // No tenant label anywhere: the namespace.
    let p = plan(&bin.add(json!({}), json!({}), ("team-z", "web-2", &u2)));
    assert_eq!(p["tenant"], "team-z");
    // Without the network's `kubernetes` key nothing is read from the API.
    emu.clear_journal();
    let p = plan(&bin.add(Value::Null, json!({}), ("team-a", "web-1", &u1)));
    assert_eq!(p["tenant"], "team-a");
    assert!(emu.journal().is_empty());
}

#[test]
fn the_failure_policy_decides_when_the_api_fails() {
    let dir = tempfile::tempdir().unwrap();
    let emu = common::kube::start(dir.path());
    emu.put_namespace("team-a", &[("capsule.clastix.io/tenant", "acme")]);
    let u = emu.put_pod("team-a", "web-0", &[], None);
    let kc = common::kube::kubeconfig(dir.path(), emu.url(), common::kube::TOKEN);
    let bin = Bin::new(dir.path(), &kc, "cache_ttl_s = 0\n");
    emu.fail_path("/api/v1/namespaces/team-a", 403);

    // fail (the default): code 11, the cause in details.
    let r = bin.add(json!({}), json!({}), ("team-a", "web-0", &u));
    assert_eq!(r["code"], 11, "{r}");
    let d = r["details"].as_str().unwrap();
    assert!(
        d.contains("forbidden (403)") && d.contains("failurePolicy = fail"),
        "{d}"
    );
    // continue: ADD goes on without labels (the namespace decides).
    let p = plan(&bin.add(
        json!({"failurePolicy": "continue"}),
        json!({}),
        ("team-a", "web-0", &u),
    ));
    assert_eq!(p["tenant"], "team-a");
    // A mistyped policy is a configuration error naming the field.
    let r = bin.add(
        json!({"failurePolicy": "ignore"}),
        json!({}),
        ("team-a", "web-0", &u),
    );
    assert_eq!(r["code"], 7, "{r}");
    assert!(
        r["details"]
            .as_str()
            .unwrap()
            .contains("kubernetes.failurePolicy"),
        "{r}"
    );
    // The API answered every time it was asked, and was asked by tenet.
    assert!(
        emu.journal()
            .iter()
            .all(|s| s.status == 403 && s.user.is_some())
    );
    assert_eq!(emu.journal().len(), 2);
}
