//! The policy pipeline through real Wasm components: the production guests,
//! and hostile modules kept to prove the sandbox and the failure taxonomy.

mod common;

use std::path::Path;

use tenet::cni::code;
use tenet::plan::{
    AddressAuthority, Command, Dns, InterfaceKind, IpFamily, Kv, NextHop, Plan, Request,
};
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

/// Runs a CHECK (no final completeness check) for a pod of namespace `ns`.
fn check(p: &Pipeline, ns: &str) -> Result<tenet::policy::Outcome, PolicyError> {
    let r = request(ns);
    let mut req = r.clone();
    req.command = Command::Check;
    p.run(&req, initial(&r))
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
        one_shot: false,
        authority: AddressAuthority::default(),
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

/// Runs the pipeline twice: from the stages' own artifacts (the first load,
/// which also builds the pipeline bundle), then from the bundle (the second
/// load), and checks both give the same answer: the same plan after every
/// stage, the same fuel, the same error.
fn run(e: &Env, text: &str) -> Result<tenet::policy::Outcome, PolicyError> {
    let r = request("team-a");
    let mut first = load(e, text)?;
    if let Some(bundle) = first.bundle_artifact().filter(|_| first.is_bundled()) {
        // Built by an earlier run in this cache: run stage by stage again
        // (the load builds it anew).
        std::fs::remove_file(bundle).unwrap();
        first = load(e, text)?;
    }
    assert!(!first.is_bundled());
    let unbundled = first.run(&r, initial(&r));
    let second = load(e, text)?;
    let stages = second.stage_names().count();
    assert_eq!(
        second.is_bundled(),
        stages > 1,
        "the first load built the bundle of this {stages}-stage pipeline"
    );
    let bundled = second.run(&r, initial(&r));
    assert_eq!(
        summary(&bundled),
        summary(&unbundled),
        "bundled vs stage by stage"
    );
    bundled
}

/// What a run decided, stage by stage (times left out).
fn summary(o: &Result<tenet::policy::Outcome, PolicyError>) -> String {
    match o {
        Err(e) => without_deadline_ms(&format!("error {e}")),
        Ok(o) => o
            .reports
            .iter()
            .map(|r| {
                let run = match &r.run {
                    StageRun::Ran { fuel, .. } => format!("ran, fuel {fuel}"),
                    StageRun::Skipped(e) => format!("skipped: {e}"),
                };
                format!("{}: {run}: {:?}\n", r.stage, r.plan)
            })
            .collect(),
    }
}

/// `text` with the number in "wall-clock deadline of N ms" replaced by `_`:
/// under a pipeline deadline a stage gets what is left of it, which depends
/// on how long the earlier stages took, so two runs may name different
/// figures for the same failure.
fn without_deadline_ms(text: &str) -> String {
    const AT: &str = "wall-clock deadline of ";
    match text.find(AT) {
        None => text.to_owned(),
        Some(i) => {
            let (head, tail) = text.split_at(i + AT.len());
            format!(
                "{head}_{}",
                tail.trim_start_matches(|c: char| c.is_ascii_digit())
            )
        }
    }
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
    // WASI by name; an extra function under the allowed `host` interface;
    // `log` with another signature. Each refused at load (103), also with
    // failure = "ignore": a refusal is never skipped.
    for (module, needle) in [
        ("hostile-import", "wasi:"),
        ("hostile-host-extra", "exec"),
        ("hostile-log-signature", "log"),
    ] {
        for failure in ["fail", "ignore"] {
            let err = load(
                &e,
                &format!(
                    "[[stage]]\nname = \"snoop\"\nmodule = \"{module}\"\nfailure = \"{failure}\"\n"
                ),
            )
            .err()
            .unwrap_or_else(|| panic!("{module} ({failure}) was loaded"));
            match expect(err, "snoop", code::POLICY_MODULE_REFUSED) {
                Failure::ModuleRefused(m) => assert!(m.contains(needle), "{module}: {m}"),
                other => panic!("{module}: {other:?}"),
            }
        }
    }
    // Behind a good stage, in a pipeline that would be bundled, the same.
    let err = load(
        &e,
        &format!(
            "{BASE}[[stage]]\nname = \"x\"\nmodule = \"hostile-host-extra\"\nfailure = \"ignore\"\n"
        ),
    )
    .err()
    .expect("refused");
    expect(err, "x", code::POLICY_MODULE_REFUSED);
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
    assert_eq!(check(&p, "team-b").unwrap().plan.tenant, "team-b");
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
    let out = check(&p, "team-a").unwrap();
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

#[test]
fn rainbond_runs_from_one_bundle_artifact_with_the_same_plan() {
    let e = env();
    let m = Manifest::load(&common::rainbond()).unwrap();
    let first = Pipeline::load(&m, &e.opts).unwrap();
    let bundle = first
        .bundle_artifact()
        .expect("loading with a compiler builds the bundle");
    let second = Pipeline::load(&m, &e.opts).unwrap();
    assert!(second.is_bundled());
    assert_eq!(second.bundle_artifact().as_deref(), Some(bundle.as_path()));
    for ns in ["team-a", "team-b"] {
        let r = request(ns);
        let a = first.run(&r, initial(&r));
        let b = second.run(&r, initial(&r));
        assert_eq!(summary(&a), summary(&b), "{ns}");
        assert_eq!(b.unwrap().plan.tenant, ns);
    }
    // Settings are call arguments, not part of the bundle: changing them
    // keeps the bundle and changes the plan.
    let text = std::fs::read_to_string(common::rainbond())
        .unwrap()
        .replace("10.96.0.10", "10.96.0.53");
    let changed = Manifest::parse(&e.dir.join("p.toml"), &text).unwrap();
    let third = Pipeline::load(&changed, &e.opts).unwrap();
    assert!(third.is_bundled());
    let r = request("team-a");
    assert_eq!(
        third.run(&r, initial(&r)).unwrap().plan.dns.nameservers,
        ["10.96.0.53"]
    );
}

#[test]
fn a_trap_in_a_bundle_leaves_the_later_stages_running() {
    // The trap poisons the bundle's store; the stages after it run from
    // their own artifacts and still shape the plan.
    let e = env();
    let text = "[[stage]]\nname = \"boom\"\nmodule = \"hostile-trap\"\nfailure = \"ignore\"\n[[stage]]\nname = \"tenant\"\nmodule = \"tenant-map\"\n[[stage]]\nname = \"ipam\"\nmodule = \"ipam-policy\"\n[stage.settings]\npools = [{ name = \"pods-v4\", family = \"ipv4\", supernet = \"10.64.0.0/12\", subnetLen = 24 }]\n";
    let out = run(&e, text).unwrap();
    assert!(
        matches!(&out.reports[0].run, StageRun::Skipped(e) if e.cni_code() == code::POLICY_TRAP)
    );
    assert_eq!(out.plan.tenant, "team-a");
    assert!(matches!(out.reports[2].run, StageRun::Ran { .. }));
}

#[test]
fn a_pinned_pipeline_runs_from_its_bundle_without_module_files() {
    let e = env();
    let mut text = String::new();
    for (stage, module) in [("tenant", "tenant-map"), ("routes", "route-dns")] {
        let wasm = e.dir.join(format!("{module}.wasm"));
        std::fs::copy(common::modules_dir().join(format!("{module}.wasm")), &wasm).unwrap();
        let digest = sha256_file(&wasm).unwrap();
        text.push_str(&format!(
            "[[stage]]\nname = \"{stage}\"\nmodule = \"{}\"\nsha256 = \"{digest}\"\n",
            wasm.display()
        ));
    }
    assert!(load(&e, &text).unwrap().bundle_artifact().is_some());
    for module in ["tenant-map", "route-dns"] {
        std::fs::remove_file(e.dir.join(format!("{module}.wasm"))).unwrap();
    }
    let p = load(&e, &text).expect("loads by the pins alone");
    assert!(p.is_bundled());
    assert_eq!(check(&p, "team-c").unwrap().plan.tenant, "team-c");
}

#[test]
fn a_corrupt_bundle_is_ignored_and_the_stages_load_one_by_one() {
    let e = env();
    let bundle = load(&e, BASE).unwrap().bundle_artifact().unwrap();
    std::fs::remove_file(&bundle).unwrap();
    std::fs::write(&bundle, b"\x7fELF garbage").unwrap();
    let p = load(&e, BASE).unwrap();
    assert!(!p.is_bundled());
    assert_eq!(check(&p, "team-a").unwrap().plan.tenant, "team-a");
    // Without a compiler a missing bundle is not an error either.
    let mut e2 = env();
    std::fs::remove_file(load(&e2, BASE).unwrap().bundle_artifact().unwrap()).unwrap();
    e2.opts.builder = Builder::Never;
    let p = load(&e2, BASE).unwrap();
    assert!(!p.is_bundled());
    assert!(p.bundle_artifact().is_none());
    assert_eq!(check(&p, "team-a").unwrap().plan.tenant, "team-a");
}

// ---- the host boundary (issue 12) ---------------------------------------

/// A one-stage pipeline of `hostile-boundary` with these settings (TOML
/// key = value lines) and extra stage keys.
fn evil(settings: &str, keys: &str) -> String {
    format!(
        "[[stage]]\nname = \"evil\"\nmodule = \"hostile-boundary\"\n{keys}\n[stage.settings]\n{settings}\n"
    )
}

fn invalid_plan(err: PolicyError) -> tenet::plan::PlanError {
    match expect(err, "evil", code::POLICY_INVALID_PLAN) {
        Failure::InvalidPlan(p) => p,
        other => panic!("{other:?}"),
    }
}

#[test]
fn pools_outside_the_operators_ranges_and_special_ranges_are_refused() {
    let e = env();
    for (pool, len, why) in [
        ("192.0.2.0/24", 24, "outside the pools"), // the node's uplink here
        ("169.254.169.0/24", 28, "link-local"),    // the metadata service
        ("8.0.0.0/7", 24, "outside the pools"),    // 8.8.8.8 into a tenant
        ("127.0.0.0/8", 24, "loopback"),
        ("0.0.0.0/0", 24, "unspecified"),
        ("0.0.0.0/1", 24, "unspecified"),
        ("128.0.0.0/1", 24, "link-local"),
        ("224.0.0.0/4", 24, "multicast"),
        ("240.0.0.0/4", 24, "reserved"),
        ("169.254.128.0/17", 24, "link-local"), // the host-link range
    ] {
        let err = run(
            &e,
            &evil(
                &format!("mode = \"pool\"\nvalue = \"{pool}\"\nlen = {len}"),
                "",
            ),
        )
        .unwrap_err();
        let p = invalid_plan(err);
        assert_eq!(
            p.field, "interfaces[0].addresses[0].pool.supernet",
            "{pool}: {p}"
        );
        assert!(p.message.contains(why), "{pool}: {p}");
    }
    // The message names the allowed ranges.
    let p = invalid_plan(run(&e, &evil("mode = \"pool\"\nvalue = \"8.0.0.0/7\"", "")).unwrap_err());
    assert!(
        p.message
            .contains("10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16"),
        "{p}"
    );
    // Static addresses are held to the same ranges.
    for addr in [
        "192.0.2.2/24",
        "127.0.0.1/8",
        "169.254.169.254/16",
        "8.8.8.8/24",
    ] {
        let p = invalid_plan(
            run(
                &e,
                &evil(&format!("mode = \"static\"\nvalue = \"{addr}\""), ""),
            )
            .unwrap_err(),
        );
        assert_eq!(
            p.field, "interfaces[0].addresses[0].staticAddress",
            "{addr}: {p}"
        );
    }
    // Inside them, the plan passes (the node is checked at ADD).
    let ok = run(&e, &evil("mode = \"pool\"\nvalue = \"10.64.0.0/12\"", "")).unwrap();
    assert_eq!(ok.plan.tenant, "evil");
}

#[test]
fn an_operator_authority_narrows_what_plans_may_use() {
    let mut e = env();
    e.opts.authority =
        AddressAuthority::new(vec!["10.64.0.0/12".parse().unwrap()], vec![], vec![]).unwrap();
    let p =
        invalid_plan(run(&e, &evil("mode = \"pool\"\nvalue = \"10.88.0.0/16\"", "")).unwrap_err());
    assert!(p.message.contains("10.64.0.0/12"), "{p}");
    run(&e, &evil("mode = \"pool\"\nvalue = \"10.64.0.0/16\"", "")).unwrap();
    // No host-link range: no host link at all, not even rainbond's.
    let m = Manifest::load(&common::rainbond()).unwrap();
    let r = request("team-a");
    let err = Pipeline::load(&m, &e.opts)
        .unwrap()
        .run(&r, initial(&r))
        .unwrap_err();
    assert_eq!(err.stage, "egress");
    assert_eq!(err.cni_code(), code::POLICY_INVALID_PLAN);
}

#[test]
fn a_host_link_address_is_the_nodes_to_choose() {
    let e = env();
    // Any static address: the node's, another pod's, a public one, a
    // metadata service, one inside the range.
    for addr in [
        "169.254.128.1/17",
        "10.64.1.5/24",
        "8.8.8.8/32",
        "169.254.169.254/17",
        "169.254.128.77/17",
    ] {
        let p = invalid_plan(
            run(
                &e,
                &evil(&format!("mode = \"host-link\"\nvalue = \"{addr}\""), ""),
            )
            .unwrap_err(),
        );
        assert_eq!(
            p.field, "interfaces[1].addresses[0].staticAddress",
            "{addr}: {p}"
        );
        assert!(p.message.contains("cannot choose"), "{p}");
    }
    for pool in ["10.96.0.0/12", "169.254.0.0/16", "192.0.2.0/24"] {
        let p = invalid_plan(
            run(
                &e,
                &evil(
                    &format!("mode = \"host-link\"\npool = \"{pool}\"\nlen = 24"),
                    "",
                ),
            )
            .unwrap_err(),
        );
        assert_eq!(
            p.field, "interfaces[1].addresses[0].pool.supernet",
            "{pool}: {p}"
        );
        assert!(p.message.contains("169.254.128.0/17"), "{p}");
    }
    // A pool inside the range is accepted, and replaced by the node's own
    // host-link pool, which never hands out the metadata services; only the
    // plan's pool name is kept (docs/security.md: a store holding the range
    // under that name keeps working; two names over one range are refused
    // by the store as overlapping pools, never handed out twice).
    let out = run(
        &e,
        &evil(
            "mode = \"host-link\"\npool = \"169.254.200.0/24\"\nlen = 28",
            "",
        ),
    )
    .unwrap();
    let eth1 = out.plan.interface("eth1").unwrap();
    let pool = eth1.addresses[0].pool.as_ref().unwrap();
    assert_eq!(
        (pool.name.as_str(), pool.supernet.as_str(), pool.subnet_len),
        ("evil", "169.254.128.0/17", 17)
    );
    assert_eq!(pool.exclude, ["169.254.169.0/24", "169.254.170.0/24"]);
    assert_eq!(eth1.addresses[0].static_address, None);
}

#[test]
fn a_log_bomb_is_charged_and_stopped_with_its_fuel() {
    let e = env();
    // 5000 calls of 8 MiB each: the issue's 9-second ADD.
    let text = evil(
        "mode = \"log-bomb\"\nbytes = 8388608\ncalls = 5000",
        "memory_mib = 32",
    );
    let started = std::time::Instant::now();
    let err = run(&e, &text).unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        expect(err, "evil", code::POLICY_BUDGET_EXCEEDED),
        Failure::BudgetExceeded(Budget::Fuel)
    );
    // 1M empty calls: stopped by the per-call charge long before.
    let err = run(
        &e,
        &evil("mode = \"log-bomb\"\nbytes = 0\ncalls = 1000000", ""),
    )
    .unwrap_err();
    assert_eq!(
        expect(err, "evil", code::POLICY_BUDGET_EXCEEDED),
        Failure::BudgetExceeded(Budget::Fuel)
    );
    eprintln!("log bomb (8 MiB x 5000, both runs of `run`, compile included): {took:?}");
    // Within budget, lines are kept up to the caps and the stage runs: 64
    // lines of 1 KiB charge about 64 * (10 000 + 1 024) fuel.
    let out = run(
        &e,
        &evil("mode = \"log-bomb\"\nbytes = 1024\ncalls = 64", ""),
    )
    .unwrap();
    match out.reports[0].run {
        StageRun::Ran { fuel, .. } => {
            let floor = 64 * (tenet::policy::log_limits::CALL_FUEL + 1024);
            assert!(fuel >= floor, "charged {fuel}, at least {floor}");
        }
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn a_huge_denial_is_clipped_and_escaped() {
    let e = env();
    let err = run(
        &e,
        &evil(
            "mode = \"deny\"\nbytes = 50000000",
            "memory_mib = 128\nfuel = 2000000000\ntimeout_ms = 10000",
        ),
    )
    .unwrap_err();
    let cni = err.to_cni();
    match expect(err, "evil", code::POLICY_DENIED) {
        Failure::Denied(m) => {
            assert!(
                m.len() <= tenet::policy::MODULE_TEXT_BYTES + 64,
                "{} bytes",
                m.len()
            );
            assert!(m.starts_with("forged\\nlog line\\u{1b}[31m"), "{m:.80}");
            assert!(!m.contains('\n') && !m.contains('\u{1b}'));
            assert!(m.ends_with("bytes in all)"), "{}", &m[m.len() - 60..]);
        }
        other => panic!("{other:?}"),
    }
    assert!(cni.to_json("1.0.0").len() < 2048);
}

#[test]
fn padded_and_oversize_strings_are_refused_without_being_copied() {
    let e = env();
    // 64 excludes padded to 1 MiB each (64 MiB in the guest).
    let p = invalid_plan(
        run(
            &e,
            &evil(
                "mode = \"pad\"\nbytes = 1048576",
                "memory_mib = 160\nfuel = 2000000000\ntimeout_ms = 10000",
            ),
        )
        .unwrap_err(),
    );
    assert_eq!(p.field, "interfaces[0].addresses[0].pool.exclude[0]", "{p}");
    assert!(p.message.contains("16384 bytes"), "{p}");
    // Padded a little: read, then refused as stored (not trimmed).
    let p = invalid_plan(run(&e, &evil("mode = \"pad\"\nbytes = 40", "")).unwrap_err());
    assert_eq!(p.field, "interfaces[0].addresses[0].pool.exclude[0]", "{p}");
    let p = invalid_plan(run(&e, &evil("mode = \"pad\"\nbytes = 200", "")).unwrap_err());
    assert!(p.message.contains("at most 96"), "{p}");
    // Annotations of 1 MiB: refused at the first, nothing copied.
    let p = invalid_plan(
        run(
            &e,
            &evil(
                "mode = \"huge-annotation\"\nbytes = 1048576\nn = 64",
                "memory_mib = 96\nfuel = 2000000000\ntimeout_ms = 10000",
            ),
        )
        .unwrap_err(),
    );
    assert_eq!(p.field, "annotations[0]", "{p}");
    // 64 of 4 KiB: each within its limit, together over the plan's.
    let p = invalid_plan(
        run(
            &e,
            &evil("mode = \"huge-annotation\"\nbytes = 4096\nn = 64", ""),
        )
        .unwrap_err(),
    );
    assert_eq!(p.field, "plan", "{p}");
}

#[test]
fn wall_clock_deadlines_stop_a_stage_and_the_pipeline() {
    let e = env();
    // Fuel for seconds; the deadline stops it.
    let err = run(
        &e,
        &format!("{BASE}[[stage]]\nname = \"spin\"\nmodule = \"hostile-loop\"\nfuel = 2000000000\ntimeout_ms = 40\n"),
    )
    .unwrap_err();
    assert_eq!(
        expect(err, "spin", code::POLICY_BUDGET_EXCEEDED),
        Failure::BudgetExceeded(Budget::Time(40))
    );
    // The pipeline's deadline bounds every stage, whatever its own.
    let started = std::time::Instant::now();
    let err = run(
        &e,
        &format!("timeout_ms = 60\n{BASE}[[stage]]\nname = \"spin\"\nmodule = \"hostile-loop\"\nfuel = 2000000000\ntimeout_ms = 10000\n"),
    )
    .unwrap_err();
    assert!(matches!(
        expect(err, "spin", code::POLICY_BUDGET_EXCEEDED),
        Failure::BudgetExceeded(Budget::Time(ms)) if ms <= 60
    ));
    // Two loads and runs of a 60 ms pipeline, far below the stage's 10 s.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn ignore_lets_pod_input_bypass_a_denying_stage_as_documented() {
    // docs/security.md: `failure = "ignore"` skips a trap; a stage that
    // denies but can be made to trap by the pod is bypassed.
    let e = env();
    let text = format!(
        "{BASE}[[stage]]\nname = \"gate\"\nmodule = \"hostile-boundary\"\nfailure = \"ignore\"\n[stage.settings]\nmode = \"deny-or-trap\"\n"
    );
    let p = load(&e, &text).unwrap();
    let mut r = request("team-a");
    assert_eq!(
        p.run(&r, initial(&r)).unwrap_err().cni_code(),
        code::POLICY_DENIED
    );
    r.labels.push(Kv::new("bypass", "1"));
    let out = p.run(&r, initial(&r)).unwrap();
    assert!(
        matches!(&out.reports[2].run, StageRun::Skipped(e) if e.cni_code() == code::POLICY_TRAP)
    );
    // With failure = "fail" (the default), the trap fails the pod.
    let p = load(&e, &text.replace("failure = \"ignore\"\n", "")).unwrap();
    assert_eq!(
        p.run(&r, initial(&r)).unwrap_err().cni_code(),
        code::POLICY_TRAP
    );
}

/// Copies `module` to `dir` and returns its path and digest.
fn copy_module(dir: &Path, module: &str) -> (std::path::PathBuf, String) {
    let wasm = dir.join(format!("{module}.wasm"));
    std::fs::copy(common::modules_dir().join(format!("{module}.wasm")), &wasm).unwrap();
    let digest = sha256_file(&wasm).unwrap();
    (wasm, digest)
}

#[test]
fn a_swapped_artifact_never_runs_under_a_pin_even_with_ignore() {
    let e = env();
    let (tm, tm_digest) = copy_module(&e.dir, "tenant-map");
    let (_, rd_digest) = copy_module(&e.dir, "route-dns");
    let pinned = |failure: &str| {
        format!(
            "[[stage]]\nname = \"t\"\nmodule = \"{}\"\nsha256 = \"{tm_digest}\"\nfailure = \"{failure}\"\n",
            tm.display()
        )
    };
    load(&e, &pinned("fail")).unwrap();
    // Compile route-dns too, then put its artifact under tenant-map's name.
    load(&e, "[[stage]]\nname = \"r\"\nmodule = \"route-dns\"\n").unwrap();
    let cache = ArtifactCache::new(&e.opts.cache_dir);
    std::fs::rename(cache.path_for(&rd_digest), cache.path_for(&tm_digest)).unwrap();
    for failure in ["fail", "ignore"] {
        let err = load(&e, &pinned(failure)).err().expect("refused");
        match expect(err, "t", code::POLICY_MODULE_REFUSED) {
            Failure::ModuleRefused(m) => {
                assert!(m.contains(&rd_digest) && m.contains(&tm_digest), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
    // Unpinned, the artifact found for the file's digest is checked too.
    let unpinned = format!("[[stage]]\nname = \"t\"\nmodule = \"{}\"\n", tm.display());
    expect(
        load(&e, &unpinned).err().expect("refused"),
        "t",
        code::POLICY_MODULE_REFUSED,
    );
    // With no artifact and no module file left, a pin has nothing to run:
    // refused, not skipped.
    std::fs::remove_file(cache.path_for(&tm_digest)).unwrap();
    std::fs::remove_file(&tm).unwrap();
    for failure in ["fail", "ignore"] {
        let err = load(&e, &pinned(failure)).err().expect("refused");
        expect(err, "t", code::POLICY_MODULE_REFUSED);
    }
}

#[test]
fn a_swapped_bundle_is_refused() {
    let e = env();
    let first = load(&e, BASE).unwrap();
    let bundle = first.bundle_artifact().expect("bundle built");
    drop(first);
    // Another two-stage pipeline's bundle under this one's name.
    let other = "[[stage]]\nname = \"t\"\nmodule = \"tenant-map\"\n[[stage]]\nname = \"r\"\nmodule = \"route-dns\"\n";
    let theirs = load(&e, other).unwrap().bundle_artifact().unwrap();
    std::fs::rename(&theirs, &bundle).unwrap();
    let err = load(&e, BASE).err().expect("refused");
    assert_eq!(err.stage, "bundle");
    assert_eq!(err.cni_code(), code::POLICY_MODULE_REFUSED);
}
