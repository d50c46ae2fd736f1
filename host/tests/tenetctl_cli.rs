//! `tenetctl` as operators and policy authors use it: plan, policy test,
//! compile and inspect, and errors that name the file and field at fault.

mod common;

use std::path::Path;
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn tenetctl(cache: &Path, args: &[&str]) -> Run {
    let o = Command::new(common::binary("tenetctl"))
        .args(args)
        .arg("--module-dir")
        .arg(common::modules_dir())
        .arg("--cache-dir")
        .arg(cache)
        .env("TENET_CONFIG", "/dev/null")
        .output()
        .unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn plan_prints_every_stage_with_fuel_and_time() {
    let tmp = tempfile::tempdir().unwrap();
    let rainbond = common::rainbond();
    let r = tenetctl(
        tmp.path(),
        &["plan", "--pipeline", rainbond.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    for stage in ["tenant", "ipam", "routes", "egress"] {
        assert!(
            r.stdout.contains(&format!("== stage {stage} (")),
            "{stage}: {}",
            r.stdout
        );
    }
    assert!(r.stdout.contains("fuel "), "{}", r.stdout);
    assert!(r.stdout.contains("final plan: valid"), "{}", r.stdout);

    let r = tenetctl(
        tmp.path(),
        &[
            "plan",
            "--pipeline",
            rainbond.to_str().unwrap(),
            "--json",
            "--namespace",
            "shop",
            "--label",
            "tenant_id=acme",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["plan"]["tenant"], "acme");
    assert_eq!(doc["stages"].as_array().unwrap().len(), 4);
    assert!(doc["stages"][0]["fuel"].as_u64().unwrap() > 0);

    // A request file (conf/examples) works too.
    let req = common::root().join("conf/examples/pod-request.json");
    let r = tenetctl(
        tmp.path(),
        &[
            "plan",
            "--pipeline",
            rainbond.to_str().unwrap(),
            "--json",
            "--request",
            req.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        doc["plan"]["interfaces"][0]["addresses"][0]["staticAddress"],
        "10.64.9.20"
    );
}

#[test]
fn plan_failure_names_the_stage_and_code() {
    let tmp = tempfile::tempdir().unwrap();
    let rainbond = common::rainbond();
    // No namespace, no tenant label: rainbond's tenant-map denies.
    let req = tmp.path().join("req.json");
    std::fs::write(
        &req,
        r#"{"command":"ADD","containerId":"c","ifname":"eth0","network":"n"}"#,
    )
    .unwrap();
    let r = tenetctl(
        tmp.path(),
        &[
            "plan",
            "--pipeline",
            rainbond.to_str().unwrap(),
            "--request",
            req.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("policy stage \"tenant\": denied"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("CNI error code 100"), "{}", r.stdout);
}

#[test]
fn errors_name_the_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = common::manifest(
        tmp.path(),
        "bad.toml",
        "[[stage]]\nname = \"t\"\nmodule = \"tenant-map\"\nmemory_mib = 0\n",
    );
    let r = tenetctl(tmp.path(), &["plan", "--pipeline", bad.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("bad.toml") && r.stderr.contains("stage[0].memory_mib"),
        "{}",
        r.stderr
    );

    let settings = common::manifest(
        tmp.path(),
        "s.toml",
        "[[stage]]\nname = \"ipam\"\nmodule = \"ipam-policy\"\n[stage.settings]\npools = []\n",
    );
    let r = tenetctl(
        tmp.path(),
        &[
            "policy",
            "compile",
            "--pipeline",
            settings.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("s.toml") && r.stderr.contains("\"ipam\"") && r.stderr.contains("pools"),
        "{}",
        r.stderr
    );

    let req = tmp.path().join("req.json");
    std::fs::write(
        &req,
        r#"{"command":"ADD","containerId":"c","ifname":"eth0","network":"n","labelz":[]}"#,
    )
    .unwrap();
    let rainbond = common::rainbond();
    let r = tenetctl(
        tmp.path(),
        &[
            "plan",
            "--pipeline",
            rainbond.to_str().unwrap(),
            "--request",
            req.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stderr.contains("req.json"), "{}", r.stderr);
}

#[test]
fn compile_precompiles_every_stage_and_prints_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let rainbond = common::rainbond();
    let r = tenetctl(
        tmp.path(),
        &[
            "policy",
            "compile",
            "--pipeline",
            rainbond.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.matches("sha256=").count(), 4, "{}", r.stdout);
    assert!(r.stdout.contains("settings valid; 4 stages ready"));
    for line in r.stdout.lines().filter(|l| l.contains("artifact=")) {
        let path = line.split("artifact=").nth(1).unwrap();
        assert!(Path::new(path).is_file(), "{path}");
    }
}

#[test]
fn inspect_shows_world_digest_and_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tenetctl(tmp.path(), &["policy", "inspect", "tenant-map"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for needle in [
        "sha256",
        "size",
        "tenet:policy/host@0.1.0",
        "evaluate: func(",
        "validate-settings: func(",
        "verdict  acceptable",
    ] {
        assert!(r.stdout.contains(needle), "{needle}: {}", r.stdout);
    }
    let r = tenetctl(tmp.path(), &["policy", "inspect", "hostile-import"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("NOT ALLOWED")
            && r.stdout.contains("REFUSED")
            && r.stdout.contains("wasi:"),
        "{}",
        r.stdout
    );
}

#[test]
fn policy_test_runs_golden_cases_and_reports_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = common::root().join("policies/tests");
    let r = tenetctl(tmp.path(), &["policy", "test", cases.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .lines()
            .last()
            .unwrap()
            .ends_with("passed, 0 failed"),
        "{}",
        r.stdout
    );

    // A case whose expectation is wrong fails, with a diff.
    let wrong = tmp.path().join("wrong.json");
    let pipeline = common::rainbond();
    std::fs::write(
        &wrong,
        serde_json::json!({
            "pipeline": pipeline,
            "request": {"command": "ADD", "containerId": "c", "ifname": "eth0", "network": "n", "podNamespace": "team-a"},
            "expect": {"plan": {"tenant": "someone-else"}}
        })
        .to_string(),
    )
    .unwrap();
    let r = tenetctl(tmp.path(), &["policy", "test", wrong.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("FAIL")
            && r.stdout.contains("plan differs")
            && r.stdout.contains("0 passed, 1 failed"),
        "{}",
        r.stdout
    );
}

/// A pipeline of copies of `modules` in `dir` (so a test may tamper with
/// them), pinned to their digests when `pinned`.
fn copied_pipeline(dir: &Path, modules: &[&str], pinned: bool) -> std::path::PathBuf {
    let mut text = String::from("# kept by --pin\n");
    for m in modules {
        let wasm = dir.join(format!("{m}.wasm"));
        std::fs::copy(common::modules_dir().join(format!("{m}.wasm")), &wasm).unwrap();
        text.push_str(&format!(
            "[[stage]]\nname = \"{m}\"\nmodule = \"{}\"  # the module\n",
            wasm.display()
        ));
        if pinned {
            let d = tenet::policy::cache::sha256_file(&wasm).unwrap();
            text.push_str(&format!("sha256 = \"{d}\"\n"));
        }
    }
    common::manifest(dir, "pinned.toml", &text)
}

#[test]
fn compile_checks_every_pin_against_the_file_and_the_cached_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let p = copied_pipeline(tmp.path(), &["tenant-map", "route-dns"], true);
    let ps = p.to_str().unwrap();
    let r = tenetctl(&cache, &["policy", "compile", "--pipeline", ps]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.matches("(pinned)").count(), 2, "{}", r.stdout);
    let text = std::fs::read_to_string(&p).unwrap();
    let pin = |m: &str| {
        let wasm = tmp.path().join(format!("{m}.wasm"));
        tenet::policy::cache::sha256_file(&wasm).unwrap()
    };
    let (tm_pin, rd_pin) = (pin("tenant-map"), pin("route-dns"));

    // The module file changes under its pin while its artifact is cached:
    // an error naming the stage, the pin and the file's digest; nothing
    // says "ready" and nothing is re-pinned.
    std::fs::copy(
        common::modules_dir().join("ipam-policy.wasm"),
        tmp.path().join("tenant-map.wasm"),
    )
    .unwrap();
    let tampered = pin("tenant-map");
    let r = tenetctl(&cache, &["policy", "compile", "--pipeline", ps]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(!r.stdout.contains("ready"), "{}", r.stdout);
    for needle in ["\"tenant-map\"", tm_pin.as_str(), tampered.as_str()] {
        assert!(r.stderr.contains(needle), "{needle}: {}", r.stderr);
    }
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        text,
        "the pipeline is unchanged"
    );
    std::fs::copy(
        common::modules_dir().join("tenant-map.wasm"),
        tmp.path().join("tenant-map.wasm"),
    )
    .unwrap();

    // Another module's artifact swapped in under the pin: an error naming
    // what it records.
    let profile = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    std::fs::copy(
        profile.join(format!("{rd_pin}.cwasm")),
        profile.join(format!("{tm_pin}.cwasm")),
    )
    .unwrap();
    let r = tenetctl(&cache, &["policy", "compile", "--pipeline", ps]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr.contains("cached artifact") && r.stderr.contains(&rd_pin),
        "{}",
        r.stderr
    );
    // inspect says the same about that module.
    let tm = tmp.path().join("tenant-map.wasm");
    let r = tenetctl(&cache, &["policy", "inspect", tm.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains("MISMATCH") && r.stdout.contains(&rd_pin),
        "{}",
        r.stdout
    );
    // And tenet itself refuses to run it (103), even with ignore, once the
    // pipeline's bundle (which records the right modules, and would serve
    // instead) is gone.
    for e in std::fs::read_dir(&profile).unwrap() {
        let p = e.unwrap().path();
        let stem = p.file_stem().unwrap().to_str().unwrap().to_owned();
        if p.extension().is_some_and(|x| x == "cwasm") && stem != tm_pin && stem != rd_pin {
            std::fs::remove_file(p).unwrap();
        }
    }
    let ignore = text.replace("  # the module\n", "  # the module\nfailure = \"ignore\"\n");
    let pi = common::manifest(tmp.path(), "ignore.toml", &ignore);
    let r = tenetctl(&cache, &["plan", "--pipeline", pi.to_str().unwrap()]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stderr.contains("module refused"),
        "{}{}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn compile_pin_writes_the_digests_keeping_comments() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let p = copied_pipeline(tmp.path(), &["tenant-map", "route-dns"], false);
    let r = tenetctl(
        &cache,
        &[
            "policy",
            "compile",
            "--pin",
            "--pipeline",
            p.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.starts_with("# kept by --pin\n"), "{text}");
    assert_eq!(text.matches("  # the module").count(), 2, "{text}");
    let m = tenet::policy::Manifest::parse(&p, &text).unwrap();
    for s in &m.stages {
        let wasm = tmp.path().join(format!("{}.wasm", s.name));
        assert_eq!(
            s.sha256.as_deref(),
            Some(tenet::policy::cache::sha256_file(&wasm).unwrap().as_str())
        );
    }
    // Now pinned and consistent: plain compile passes.
    let r = tenetctl(
        &cache,
        &["policy", "compile", "--pipeline", p.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.matches("(pinned)").count(), 2, "{}", r.stdout);
}

#[test]
fn inspect_refuses_modules_whose_host_import_differs_from_the_wit() {
    let tmp = tempfile::tempdir().unwrap();
    for m in ["hostile-host-extra", "hostile-log-signature"] {
        let r = tenetctl(tmp.path(), &["policy", "inspect", m]);
        assert_eq!(r.code, 1, "{m}: {}", r.stdout);
        assert!(
            r.stdout.contains("REFUSED") && r.stdout.contains("do not match what tenet provides"),
            "{m}: {}",
            r.stdout
        );
    }
    let r = tenetctl(tmp.path(), &["policy", "inspect", "hostile-boundary"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
}
