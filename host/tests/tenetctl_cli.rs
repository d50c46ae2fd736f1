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
