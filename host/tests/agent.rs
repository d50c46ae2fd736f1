//! `tenetctl agent` against real `tenet` execs: ADDs and DELs in a scratch
//! node namespace (as root), then the agent's `/metrics` parsed with a
//! Prometheus text parser (the counts are the execs'), `/readyz`, and the
//! upkeep rebuilding the bundle after a module file is replaced (the next
//! exec runs from a bundle). GC over CRI is tested end to end against
//! containerd elsewhere; here the agent's CRI socket does not exist, and
//! its GC must remove nothing. Without root: the node's kubeconfig the
//! agent writes from a (fake) service account for the Kubernetes API
//! emulator, followed through a token rotation and kept when the service
//! account breaks; `--once` reporting each failed pass.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cni::{NETWORK, Node, Pod};

/// The agent process, killed on drop.
struct Agent {
    child: Child,
    addr: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(node: &Node, env: &[(&str, &Path)], config: &Path, conf_dir: &Path) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenetctl"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TENET_STATE_DIR", &node.state)
            .env("TENET_PIPELINE", common::rainbond());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(["--log", "info", "agent", "--listen", "127.0.0.1:0"])
            .arg("--config")
            .arg(config)
            .arg("--conf-dir")
            .arg(conf_dir)
            .args(["--cri-socket", "/nonexistent/tenet-test-cri.sock"])
            .args(["--network", NETWORK])
            .args(["--upkeep-interval", "300ms", "--gc-interval", "1s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        Self::spawn(cmd)
    }

    /// Spawns `cmd` (a `tenetctl agent --listen 127.0.0.1:0 …` with stdout
    /// piped) and reads the address it serves on.
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().expect("tenetctl agent starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("first stdout line: {line:?}"))
            .to_owned();
        Agent { child, addr }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    /// Polls `path` until `ok` holds on its answer, for up to 5 minutes
    /// (the first build compiles every module).
    fn wait_for(&self, path: &str, what: &str, ok: impl Fn(u16, &str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(300);
        loop {
            let (st, body) = self.get(path);
            if ok(st, &body) {
                return body;
            }
            assert!(
                Instant::now() < end,
                "{what}: last {path} answer {st}: {body}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn scrape(body: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("unparsable exposition ({e}):\n{body}"))
}

/// The value of the sample `name` with these labels (0 when absent).
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|c| c.count).fold(0.0, f64::max),
            other => panic!("{name}: {other:?}"),
        })
        .sum()
}

#[test]
#[ignore = "needs root: make test runs it"]
fn agent_counts_real_execs_and_rebuilds_the_bundle_after_a_module_change() {
    let node = Node::new("agent (it runs ADD for real)");
    let tmp = tempfile::tempdir().unwrap();
    // A private module directory: the test replaces a module in it.
    let modules = tmp.path().join("modules");
    std::fs::create_dir(&modules).unwrap();
    for e in std::fs::read_dir(common::modules_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "wasm") {
            std::fs::copy(&p, modules.join(p.file_name().unwrap())).unwrap();
        }
    }
    let config = tmp.path().join("tenet.toml");
    std::fs::write(&config, "").unwrap();
    let conf_dir = tmp.path().join("net.d");
    std::fs::create_dir(&conf_dir).unwrap();
    let cache = common::shared_cache();
    let env: [(&str, &Path); 2] = [("TENET_MODULE_DIRS", &modules), ("TENET_CACHE_DIR", &cache)];
    let agent = Agent::start(&node, &env, &config, &conf_dir);
    assert_eq!(agent.get("/healthz").0, 200);
    agent.wait_for("/readyz", "agent ready", |st, _| st == 200);

    // Execs with the agent's module directory.
    let tenet_env = |pod: &Pod, cmd: &'static str| {
        let mut e: Vec<(&str, String)> = pod
            .env(cmd)
            .into_iter()
            .map(|(k, v)| (k, v.to_owned()))
            .collect();
        e.push(("TENET_MODULE_DIRS", modules.to_str().unwrap().to_owned()));
        e
    };
    let run = |pod: &Pod, cmd: &'static str| {
        let e = tenet_env(pod, cmd);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        node.run(&e, &common::cni::conf())
    };
    let a = Pod::new("agent-a", "team-a");
    let b = Pod::new("agent-b", "team-a");
    let c = Pod::new("agent-c", "team-b");
    run(&a, "ADD").ok();
    run(&b, "ADD").ok();
    run(&a, "DEL").ok();
    // CHECK of a container never added: code 3 (unknown container).
    run(&a, "CHECK").error(3);

    let s = scrape(&agent.get("/metrics").1);
    let ops = |cmd: &str, code: &str| {
        value(
            &s,
            "tenet_cni_operations_total",
            &[("command", cmd), ("code", code)],
        )
    };
    assert_eq!(ops("ADD", "0"), 2.0);
    assert_eq!(ops("DEL", "0"), 1.0);
    assert_eq!(ops("CHECK", "3"), 1.0);
    assert_eq!(
        value(
            &s,
            "tenet_cni_duration_seconds",
            &[("command", "ADD"), ("code", "0")]
        ),
        2.0,
        "one latency observation per ADD"
    );
    assert!(
        value(&s, "tenet_stage_fuel_total", &[]) > 0.0,
        "stages burn fuel"
    );
    assert_eq!(
        value(&s, "tenet_stage_duration_seconds", &[("stage", "tenant")]),
        2.0
    );
    assert_eq!(
        value(&s, "tenet_pipeline_runs_total", &[("bundled", "true")]),
        2.0,
        "the agent built the bundle before the first ADD"
    );
    assert_eq!(value(&s, "tenet_store_up", &[]), 1.0);
    assert_eq!(value(&s, "tenet_artifacts_current", &[]), 1.0);
    assert_eq!(
        value(&s, "tenet_pool_addresses_used", &[("tenant", "team-a")]),
        1.0,
        "pod b's address (a was deleted)"
    );
    // The CRI socket does not exist: GC passes fail and remove nothing.
    assert_eq!(value(&s, "tenet_agent_gc_removed_total", &[]), 0.0);
    // A second scrape counts nothing twice.
    let again = scrape(&agent.get("/metrics").1);
    assert_eq!(
        value(
            &again,
            "tenet_cni_operations_total",
            &[("command", "ADD"), ("code", "0")]
        ),
        2.0
    );

    // Replace a module by a different build (a custom section appended:
    // a new digest, the same behaviour).
    let rebuilds = value(&again, "tenet_agent_rebuilds_total", &[("result", "ok")]);
    let m = modules.join("tenant-map.wasm");
    let mut bytes = std::fs::read(&m).unwrap();
    bytes.extend_from_slice(&[0x00, 0x05, 0x04, b't', b'e', b's', b't']);
    let fresh = tmp.path().join("tenant-map.wasm.new");
    std::fs::write(&fresh, &bytes).unwrap();
    std::fs::rename(&fresh, &m).unwrap();
    agent.wait_for(
        "/metrics",
        "a rebuild after the module change",
        |_, body| {
            value(
                &scrape(body),
                "tenet_agent_rebuilds_total",
                &[("result", "ok")],
            ) > rebuilds
        },
    );
    agent.wait_for("/readyz", "ready after the rebuild", |st, _| st == 200);
    run(&c, "ADD").ok();
    let s = scrape(&agent.get("/metrics").1);
    assert_eq!(
        value(&s, "tenet_pipeline_runs_total", &[("bundled", "true")]),
        3.0,
        "the ADD after the module change ran from a fresh bundle"
    );
    assert_eq!(
        value(&s, "tenet_pipeline_runs_total", &[("bundled", "false")]),
        0.0
    );
    run(&b, "DEL").ok();
    run(&c, "DEL").ok();
}

#[test]
fn agent_refuses_a_missing_config_and_a_bad_duration() {
    let out = Command::new(env!("CARGO_BIN_EXE_tenetctl"))
        .args(["agent", "--config", "/nonexistent/tenet.toml", "--once"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--config /nonexistent/tenet.toml"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_tenetctl"))
        .args(["agent", "--gc-interval", "10x"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--gc-interval") && err.contains("unknown unit"),
        "{err}"
    );
}

// ------------------------------------------------- the node's kubeconfig

/// A `tenet` ADD in dry-run mode for pod team-a/web-0 of a network reading
/// labels from the API: its CNI reply.
fn dry_run_add(config: &Path, uid: &str, cni_path: &Path) -> serde_json::Value {
    common::kube::dry_run_add(
        Path::new(env!("CARGO_BIN_EXE_tenet")),
        config,
        cni_path,
        serde_json::json!({}),
        serde_json::json!({}),
        ("team-a", "web-0", uid),
    )
}

/// The tenant of a dry-run reply's plan (code 110), or the reply.
fn planned_tenant(reply: &serde_json::Value) -> Result<String, String> {
    let plan = common::kube::dry_run_plan(reply)?;
    Ok(plan["tenant"].as_str().unwrap().to_owned())
}

/// Polls `cond` every 100 ms for up to `secs` seconds.
fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < end, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kubeconfig_token(path: &Path) -> Option<String> {
    match tenet::kube::kubeconfig::from_file(path).ok()?.auth {
        tenet::kube::kubeconfig::Auth::Token(t) => Some(t),
        _ => None,
    }
}

#[test]
fn the_agent_writes_the_nodes_kubeconfig_and_follows_token_rotation() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let emu = common::kube::start(dir);
    emu.put_namespace("team-a", &[("capsule.clastix.io/tenant", "acme")]);
    let uid = emu.put_pod("team-a", "web-0", &[], None);
    let port = emu.url().rsplit(':').next().unwrap().to_owned();

    // The pod's service account, as kubelet mounts it.
    let sa = dir.join("serviceaccount");
    std::fs::create_dir(&sa).unwrap();
    std::fs::write(sa.join("token"), common::kube::TOKEN).unwrap();
    std::fs::copy(dir.join("ca.crt"), sa.join("ca.crt")).unwrap();
    // The host's /etc/tenet.
    let etc = dir.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let kc = etc.join("kubeconfig");
    let config = etc.join("tenet.toml");
    common::kube::write_config(dir, &config, &kc, "timeout_ms = 2000\ncache_ttl_s = 0\n");
    let conf_dir = dir.join("net.d");
    std::fs::create_dir(&conf_dir).unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenetctl"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", &port)
        .args(["--log", "info", "agent", "--listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(&config)
        .arg("--conf-dir")
        .arg(&conf_dir)
        .args(["--cri-socket", "/nonexistent/tenet-test-cri.sock"])
        .args(["--gc-interval", "1h", "--upkeep-interval", "1h"])
        .arg("--write-kubeconfig")
        .arg(&kc)
        .arg("--service-account-dir")
        .arg(&sa)
        .args(["--kubeconfig-interval", "200ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let agent = Agent::spawn(cmd);

    // Written from the service account, for the emulator, mode 0600.
    eventually(60, "the kubeconfig is written", || kc.is_file());
    assert_eq!(
        std::fs::metadata(&kc).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    let c = tenet::kube::kubeconfig::from_file(&kc).unwrap();
    assert_eq!(c.server, emu.url());
    assert_eq!(
        c.ca_pem.as_deref(),
        Some(&std::fs::read(dir.join("ca.crt")).unwrap()[..])
    );
    assert_eq!(kubeconfig_token(&kc).as_deref(), Some(common::kube::TOKEN));

    // The agent's upkeep has built the pipeline's artifacts.
    agent.wait_for("/readyz", "agent ready", |st, _| st == 200);
    // A tenet ADD with that kubeconfig reads the namespace's labels.
    assert_eq!(
        planned_tenant(&dry_run_add(&config, &uid, dir)).as_deref(),
        Ok("acme")
    );
    let j = emu.journal();
    assert!(
        j.iter().any(|s| s.path == "/api/v1/namespaces/team-a"
            && s.status == 200
            && s.user.as_deref() == Some(common::kube::USER)),
        "{j:?}"
    );

    // The token rotates: the API server accepts only the new one. Until the
    // service account's file changes, the node's kubeconfig holds the old
    // one and an ADD is refused with 401 (code 11, kubelet retries).
    emu.add_token(
        "rotated-token",
        common::kube::USER,
        &["get", "list", "watch"],
        &["pods", "namespaces"],
    );
    assert!(emu.remove_token(common::kube::TOKEN));
    let r = dry_run_add(&config, &uid, dir);
    assert_eq!(r["code"], 11, "{r}");
    assert!(r["details"].as_str().unwrap().contains("401"), "{r}");
    // kubelet writes the new token; within a refresh period the kubeconfig
    // has it, and the next ADD succeeds.
    let fresh = sa.join("token.new");
    std::fs::write(&fresh, "rotated-token\n").unwrap();
    std::fs::rename(&fresh, sa.join("token")).unwrap();
    eventually(60, "the rotated token reaches the kubeconfig", || {
        kubeconfig_token(&kc).as_deref() == Some("rotated-token")
    });
    assert_eq!(
        std::fs::metadata(&kc).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert_eq!(
        planned_tenant(&dry_run_add(&config, &uid, dir)).as_deref(),
        Ok("acme")
    );

    // A broken service account (a CA that is not a certificate, then no
    // token at all): the agent says so, naming the file, and the working
    // kubeconfig is kept.
    let good = std::fs::read(&kc).unwrap();
    std::fs::write(sa.join("ca.crt"), "not a certificate\n").unwrap();
    let ca_path = sa.join("ca.crt").display().to_string();
    agent.wait_for("/readyz", "readyz names the bad CA file", |st, body| {
        st == 503 && body.contains("kubeconfig:") && body.contains(&ca_path)
    });
    let s = scrape(&agent.get("/metrics").1);
    assert_eq!(value(&s, "tenet_agent_kubeconfig_ok", &[]), 0.0);
    assert_eq!(std::fs::read(&kc).unwrap(), good, "the kubeconfig was kept");
    std::fs::copy(dir.join("ca.crt"), sa.join("ca.crt")).unwrap();
    std::fs::remove_file(sa.join("token")).unwrap();
    let token_path = sa.join("token").display().to_string();
    agent.wait_for("/readyz", "readyz names the missing token", |st, body| {
        st == 503 && body.contains(&token_path)
    });
    assert_eq!(std::fs::read(&kc).unwrap(), good, "the kubeconfig was kept");
    assert_eq!(
        planned_tenant(&dry_run_add(&config, &uid, dir)).as_deref(),
        Ok("acme"),
        "ADDs go on with the kept kubeconfig"
    );
    // Repaired: the gauge is 1 again.
    std::fs::write(sa.join("token"), "rotated-token").unwrap();
    agent.wait_for("/metrics", "the kubeconfig refresh recovers", |_, body| {
        value(&scrape(body), "tenet_agent_kubeconfig_ok", &[]) == 1.0
    });
    assert_eq!(
        std::fs::read(&kc).unwrap(),
        good,
        "same content: not rewritten"
    );
}

/// `tenetctl agent --once` with every pass failing: exit 1, each failure
/// named on stdout.
#[test]
fn agent_once_reports_each_failed_pass_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tenet.toml");
    std::fs::write(
        &config,
        format!("state_dir = {:?}\n", tmp.path().join("state")),
    )
    .unwrap();
    let sa = tmp.path().join("sa");
    std::fs::create_dir(&sa).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tenetctl"))
        .env_clear()
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", "6443")
        .args(["agent", "--once", "--config"])
        .arg(&config)
        .arg("--conf-dir")
        .arg(tmp.path())
        .args(["--cri-socket", "/nonexistent/tenet-test-cri.sock"])
        .arg("--write-kubeconfig")
        .arg(tmp.path().join("kubeconfig"))
        .arg("--service-account-dir")
        .arg(&sa)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout}"))
            .to_owned()
    };
    let kc = line("kubeconfig: ");
    assert!(
        kc.contains("failed") && kc.contains(&sa.join("token").display().to_string()),
        "{kc}"
    );
    assert!(!tmp.path().join("kubeconfig").exists());
    let up = line("upkeep: ");
    assert!(up.contains("failed") && up.contains("no pipeline"), "{up}");
    let gc = line("gc: ");
    assert!(
        gc.contains("failed") && gc.contains("/nonexistent/tenet-test-cri.sock"),
        "{gc}"
    );
}
