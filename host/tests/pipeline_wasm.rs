//! The policy pipeline through real Wasm components: the production guests,
//! and hostile modules kept to prove the sandbox and the failure taxonomy.

mod common;

use std::path::Path;

use tenet::cni::code;
use tenet::plan::{Command, Dns, InterfaceKind, IpFamily, Kv, NextHop, Plan, Request};
use tenet::policy::cache::{ArtifactCache, Builder, sha256_file};
use tenet::policy::{Budget, Failure, Manifest, Pipeline, PipelineOptions, PolicyError, StageRun};

fn request(ns: &str) -> Request {
    Request {
        command: Command::Add,
        container_id: "c0ffee".into(),
        ifname: "eth0".into(),
        netns: "/var/run/netns/x".into(),
        network: "k8s".into(),
        pod_namespace: Some(ns.into()),
        pod_name: Some("web-0".into()),
        pod_uid: None,
        cni_args: vec![],
        args_ips: vec![],
        runtime_ips: vec![],
        mac: None,
        runtime_dns: None,
        port_mappings: vec![],
        bandwidth: None,
        labels: vec![Kv::new("app", "web")],
        annotations: vec![],
        extra: vec![],
    }
}

fn initial(r: &Request) -> Plan {
    Plan::initial(&r.ifname, None, Dns::default())
}

struct Env {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    opts: PipelineOptions,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let opts = PipelineOptions {
        module_dirs: vec![common::modules_dir()],
        cache_dir: dir.join("cache"),
        builder: Builder::InProcess,
    };
    Env {
        _tmp: tmp,
        dir,
        opts,
    }
}

fn load(e: &Env, text: &str) -> Result<Pipeline, PolicyError> {
    let m = Manifest::parse(&e.dir.join("p.toml"), text).unwrap();
    Pipeline::load(&m, &e.opts)
}

fn run(e: &Env, text: &str) -> Result<tenet::policy::Outcome, PolicyError> {
    let r = request("team-a");
    load(e, text)?.run(&r, initial(&r))
}

/// A pipeline that gets far enough for a later stage to matter.
const BASE: &str = r#"
[[stage]]
name = "tenant"
module = "tenant-map"
[[stage]]
name = "ipam"
module = "ipam-policy"
[stage.settings]
pools = [{ name = "pods-v4", family = "ipv4", supernet = "10.64.0.0/12", subnetLen = 24 }]
"#;

#[test]
fn rainbond_pipeline_plans_tenant_addresses_routes_and_eth1() {
    let e = env();
    let m = Manifest::load(&common::rainbond()).unwrap();
    let p = Pipeline::load(&m, &e.opts).unwrap();
    let r = request("team-a");
    let out = p.run(&r, initial(&r)).unwrap();
    let plan = &out.plan;
    assert!(!plan.tenant.is_empty());
    let eth0 = plan.interface("eth0").unwrap();
    assert_eq!(eth0.kind, InterfaceKind::SdnPort);
    assert!(
        eth0.addresses
            .iter()
            .any(|a| a.family == IpFamily::Ipv4 && a.pool.is_some())
    );
    let eth1 = plan.interface("eth1").expect("rainbond-egress adds eth1");
    assert_eq!(eth1.kind, InterfaceKind::HostLink);
    // The default route stays on eth0; eth1 only carries the chosen CIDRs.
    let default = plan
        .routes
        .iter()
        .find(|r| r.dst == "0.0.0.0/0")
        .expect("default route");
    assert_eq!(default.interface, "eth0");
    assert_eq!(default.via, NextHop::SubnetGateway);
    assert!(plan.routes.iter().any(|r| r.interface == "eth1"));
    assert!(
        !plan
            .routes
            .iter()
            .any(|r| r.interface == "eth1" && r.dst == "0.0.0.0/0")
    );
    // Every stage ran, used some fuel, and its plan was kept.
    assert_eq!(out.reports.len(), m.stages.len());
    for r in &out.reports {
        match r.run {
            StageRun::Ran { fuel, .. } => {
                assert!(fuel > 0 && fuel < 10_000_000, "{}: {fuel}", r.stage)
            }
            StageRun::Skipped(ref e) => panic!("{} skipped: {e}", r.stage),
        }
    }
    // Deterministic: the same request burns the same fuel and gives the same plan.
    let again = p.run(&r, initial(&r)).unwrap();
    assert_eq!(&again.plan, plan);
    let fuel = |o: &tenet::policy::Outcome| -> Vec<u64> {
        o.reports
            .iter()
            .map(|r| match r.run {
                StageRun::Ran { fuel, .. } => fuel,
                _ => 0,
            })
            .collect()
    };
    assert_eq!(fuel(&again), fuel(&out));
}

fn expect(err: PolicyError, stage: &str, code: u32) -> Failure {
    assert_eq!(err.stage, stage, "{err}");
    assert_eq!(err.cni_code(), code, "{err}");
    let cni = err.to_cni();
    assert!(
        cni.msg.contains(stage),
        "CNI msg names the stage: {}",
        cni.msg
    );
    err.failure
}

#[test]
fn endless_loop_is_stopped_by_its_fuel_budget() {
    let e = env();
    let err = run(
        &e,
        &format!("{BASE}[[stage]]\nname = \"spin\"\nmodule = \"hostile-loop\"\nfuel = 2000000\n"),
    )
    .unwrap_err();
    assert_eq!(
        expect(err, "spin", code::POLICY_BUDGET_EXCEEDED),
        Failure::BudgetExceeded(Budget::Fuel)
    );
}

#[test]
fn memory_hog_is_capped() {
    let e = env();
    let err = run(&e, &format!("{BASE}[[stage]]\nname = \"hog\"\nmodule = \"hostile-memory\"\nmemory_mib = 4\nfuel = 1000000000\n")).unwrap_err();
    assert_eq!(
        expect(err, "hog", code::POLICY_BUDGET_EXCEEDED),
        Failure::BudgetExceeded(Budget::Memory)
    );
}

#[test]
fn trapping_module_is_a_trap_error() {
    let e = env();
    let err = run(
        &e,
        &format!("{BASE}[[stage]]\nname = \"boom\"\nmodule = \"hostile-trap\"\n"),
    )
    .unwrap_err();
    assert!(matches!(
        expect(err, "boom", code::POLICY_TRAP),
        Failure::Trap(_)
    ));
}

#[test]
fn every_invalid_plan_is_refused_and_blamed_on_its_stage() {
    let e = env();
    let modes = [
        ("bad-cidr", "routes"),
        ("long-ifname", "interfaces"),
        ("slash-ifname", "interfaces"),
        ("duplicate-ifname", "interfaces"),
        ("bad-tenant", "tenant"),
        ("gateway-off-subnet", "routes"),
        ("static-outside-pool", "interfaces"),
        ("oversize", "routes"),
    ];
    for (mode, field) in modes {
        let text = format!(
            "{BASE}[[stage]]\nname = \"evil\"\nmodule = \"hostile-plan\"\nfuel = 200000000\n[stage.settings]\nmode = \"{mode}\"\n"
        );
        let err = run(&e, &text).unwrap_err();
        match expect(err, "evil", code::POLICY_INVALID_PLAN) {
            Failure::InvalidPlan(p) => assert!(p.field.starts_with(field), "{mode}: {p}"),
            other => panic!("{mode}: {other:?}"),
        }
    }
}

#[test]
fn module_importing_what_is_not_allowed_is_refused_at_load() {
    let e = env();
    let err = load(
        &e,
        "[[stage]]\nname = \"snoop\"\nmodule = \"hostile-import\"\n",
    )
    .err()
    .expect("refused");
    match expect(err, "snoop", code::POLICY_MODULE_REFUSED) {
        Failure::ModuleRefused(m) => assert!(m.contains("wasi:"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Even with failure = "ignore" it never runs.
    let p = load(
        &e,
        "[[stage]]\nname = \"snoop\"\nmodule = \"hostile-import\"\nfailure = \"ignore\"\n",
    )
    .unwrap();
    let r = request("team-a");
    let mut req = r.clone();
    req.command = Command::Check;
    let out = p.run(&req, initial(&r)).unwrap();
    assert!(matches!(out.reports[0].run, StageRun::Skipped(_)));
}

#[test]
fn pinned_digest_mismatch_is_refused() {
    let e = env();
    let wrong = "0".repeat(64);
    let err = load(
        &e,
        &format!("[[stage]]\nname = \"t\"\nmodule = \"tenant-map\"\nsha256 = \"{wrong}\"\n"),
    )
    .err()
    .expect("refused");
    match expect(err, "t", code::POLICY_MODULE_REFUSED) {
        Failure::ModuleRefused(m) => assert!(m.contains(&wrong), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn pinned_module_runs_from_cache_without_its_wasm_file() {
    let e = env();
    // Copy the module somewhere we can delete it.
    let wasm = e.dir.join("tm.wasm");
    std::fs::copy(common::modules_dir().join("tenant-map.wasm"), &wasm).unwrap();
    let digest = sha256_file(&wasm).unwrap();
    let text = format!(
        "[[stage]]\nname = \"t\"\nmodule = \"{}\"\nsha256 = \"{digest}\"\n",
        wasm.display()
    );
    load(&e, &text).unwrap();
    let artifact = ArtifactCache::new(&e.opts.cache_dir).path_for(&digest);
    assert!(artifact.is_file(), "the miss was compiled into the cache");
    std::fs::remove_file(&wasm).unwrap();
    let p = load(&e, &text).expect("loads from the cache by its pin alone");
    let r = request("team-b");
    let mut req = r.clone();
    req.command = Command::Check;
    assert_eq!(p.run(&req, initial(&r)).unwrap().plan.tenant, "team-b");
}

#[test]
fn corrupt_or_foreign_artifact_is_a_miss_and_is_rebuilt() {
    let e = env();
    let text = "[[stage]]\nname = \"t\"\nmodule = \"tenant-map\"\n";
    load(&e, text).unwrap();
    let digest = sha256_file(&common::modules_dir().join("tenant-map.wasm")).unwrap();
    let artifact = ArtifactCache::new(&e.opts.cache_dir).path_for(&digest);
    // Replace (never rewrite in place) with garbage, as a different engine
    // version or a truncated copy would look.
    std::fs::remove_file(&artifact).unwrap();
    std::fs::write(&artifact, b"\x7fELF garbage").unwrap();
    load(&e, text).expect("rebuilt");
    assert!(
        std::fs::read(&artifact).unwrap().len() > 1000,
        "artifact was rebuilt"
    );
}

#[test]
fn missing_artifact_without_compiler_is_unavailable_and_ignorable() {
    let mut e = env();
    e.opts.builder = Builder::Never;
    let err = load(&e, "[[stage]]\nname = \"t\"\nmodule = \"tenant-map\"\n")
        .err()
        .expect("unavailable");
    assert!(matches!(
        expect(err, "t", code::TRY_AGAIN_LATER),
        Failure::ArtifactUnavailable(_)
    ));
    let err = load(&e, "[[stage]]\nname = \"t\"\nmodule = \"no-such-module\"\n")
        .err()
        .expect("unavailable");
    match expect(err, "t", code::TRY_AGAIN_LATER) {
        Failure::ArtifactUnavailable(m) => assert!(m.contains("no-such-module"), "{m}"),
        other => panic!("{other:?}"),
    }
    let p = load(
        &e,
        "[[stage]]\nname = \"t\"\nmodule = \"tenant-map\"\nfailure = \"ignore\"\n",
    )
    .unwrap();
    let r = request("team-a");
    let mut req = r.clone();
    req.command = Command::Check;
    let out = p.run(&req, initial(&r)).unwrap();
    assert!(
        matches!(&out.reports[0].run, StageRun::Skipped(e) if e.cni_code() == code::TRY_AGAIN_LATER)
    );
    assert_eq!(out.plan.tenant, "", "skipped stage left the plan unchanged");
}

#[test]
fn ignore_skips_failures_but_never_a_denial() {
    let e = env();
    let text = format!(
        "{BASE}[[stage]]\nname = \"boom\"\nmodule = \"hostile-trap\"\nfailure = \"ignore\"\n"
    );
    let out = run(&e, &text).unwrap();
    let last = out.reports.last().unwrap();
    assert!(matches!(&last.run, StageRun::Skipped(e) if e.cni_code() == code::POLICY_TRAP));
    assert_eq!(last.plan, out.reports[1].plan);

    let deny = "[[stage]]\nname = \"t\"\nmodule = \"tenant-map\"\nfailure = \"ignore\"\n[stage.settings]\nfromNamespace = false\ndenyUnknown = true\n";
    let err = run(&e, deny).unwrap_err();
    assert!(matches!(
        expect(err, "t", code::POLICY_DENIED),
        Failure::Denied(_)
    ));
}

#[test]
fn invalid_settings_name_the_field() {
    let e = env();
    let err = run(
        &e,
        "[[stage]]\nname = \"t\"\nmodule = \"tenant-map\"\n[stage.settings]\ndenyUnknwn = true\n",
    )
    .unwrap_err();
    match expect(err, "t", code::POLICY_INVALID_SETTINGS) {
        Failure::InvalidSettings(m) => assert!(m.contains("denyUnknwn"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn final_plan_must_be_complete() {
    let e = env();
    // tenant-map alone decides the tenant but no stage plans addresses.
    let err = run(&e, "[[stage]]\nname = \"t\"\nmodule = \"tenant-map\"\n").unwrap_err();
    match expect(err, "final", code::POLICY_INVALID_PLAN) {
        Failure::InvalidPlan(p) => assert_eq!(p.field, "interfaces[0].addresses"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn oversize_input_is_refused_before_any_stage() {
    let e = env();
    let p = load(&e, BASE).unwrap();
    let mut r = request("team-a");
    r.labels = (0..300).map(|i| Kv::new(format!("k{i}"), "v")).collect();
    let err = p.run(&r, initial(&r)).unwrap_err();
    assert_eq!(err.stage, "input");
    assert_eq!(err.cni_code(), code::POLICY_INVALID_INPUT);
    r.labels = vec![Kv::new("big", "x".repeat(70 * 1024))];
    assert_eq!(p.run(&r, initial(&r)).unwrap_err().stage, "input");
}

#[test]
fn cached_artifacts_are_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let e = env();
    load(&e, BASE).unwrap();
    let cache = ArtifactCache::new(&e.opts.cache_dir);
    let digest = sha256_file(&common::modules_dir().join("tenant-map.wasm")).unwrap();
    let mode = std::fs::metadata(cache.path_for(&digest))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    let _ = Path::new("/");
}
