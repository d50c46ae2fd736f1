//! The policy author's journey, out of tree, as docs/policy-authoring.md
//! tells it: `tenetctl policy new`, a wasm32 build of the new crate,
//! `tenetctl policy test`, `tenetctl policy compile --pin`, then real ADDs
//! through the `tenet` binary in a scratch node namespace: a pod the new
//! stage lets through (its annotation kept in the attachment record) and
//! one it denies (CNI code 100 with the module's message).
//!
//! The crate's first build is the slow part (~1 minute): it shares
//! `target/journey` as its cargo target dir, and builds offline from the
//! local registry cache the workspace's own build filled.

mod common;

use std::path::Path;
use std::process::Command;

use common::cni::{Node, Pod, conf};

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{cmd:?} failed\nstdout: {out}\nstderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn tenetctl(cache: &Path) -> Command {
    let mut c = Command::new(common::binary("tenetctl"));
    c.env("TENET_CONFIG", "/dev/null")
        .env("TENET_MODULE_DIRS", common::modules_dir())
        .env("TENET_CACHE_DIR", cache);
    c
}

#[test]
#[ignore = "needs root and the wasm32-wasip2 target: make test runs it"]
fn new_build_test_pin_and_add_out_of_tree() {
    let node = Node::new("policy journey");
    let tmp = tempfile::tempdir().unwrap();
    let cache = common::shared_cache();
    let krate = tmp.path().join("quota-guard");
    run(tenetctl(&cache)
        .args(["policy", "new", "quota-guard", "--dir"])
        .arg(&krate));

    // Build the component as the docs say, with a shared target dir.
    let target = common::root().join("target/journey");
    run(Command::new("cargo")
        .args([
            "build",
            "--offline",
            "--release",
            "--target",
            "wasm32-wasip2",
        ])
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", &target));
    let wasm = target.join("wasm32-wasip2/release/quota_guard.wasm");
    assert!(wasm.is_file(), "{} was not built", wasm.display());
    // The generated pipeline names the crate's own target dir.
    let pipeline = krate.join("pipeline.toml");
    let text = std::fs::read_to_string(&pipeline).unwrap().replace(
        "target/wasm32-wasip2/release/quota_guard.wasm",
        wasm.to_str().unwrap(),
    );
    std::fs::write(&pipeline, text).unwrap();

    // Its metadata is in the component.
    let inspect = run(tenetctl(&cache).args(["policy", "inspect"]).arg(&wasm));
    assert!(inspect.contains("name     quota-guard 0.1.0"), "{inspect}");
    assert!(inspect.contains("denyNamespaces"), "{inspect}");

    // Golden cases pass as generated.
    let golden = run(tenetctl(&cache)
        .args(["policy", "test"])
        .arg(krate.join("tests/golden")));
    assert!(golden.contains("2 passed, 0 failed"), "{golden}");

    // Pins written into the pipeline.
    run(tenetctl(&cache)
        .args(["policy", "compile", "--pin", "--pipeline"])
        .arg(&pipeline));
    let pinned = std::fs::read_to_string(&pipeline).unwrap();
    assert_eq!(pinned.matches("sha256 = ").count(), 3, "{pinned}");

    // A real ADD with the new stage, and a denied one.
    let pipeline_env = pipeline.to_str().unwrap();
    fn env_of<'a>(pod: &'a Pod, cmd: &'static str, p: &'a str) -> Vec<(&'static str, &'a str)> {
        let mut e = pod.env(cmd);
        e.push(("TENET_PIPELINE", p));
        e
    }
    let ok = Pod::new("journey-ok", "team-a");
    let added = node.run(&env_of(&ok, "ADD", pipeline_env), &conf()).ok();
    assert!(
        common::cni::first_ip(&added).starts_with("10.64."),
        "{added}"
    );
    let rec = tenet::apply::Records::new(&node.state)
        .list(None)
        .unwrap()
        .pop()
        .unwrap();
    assert!(
        rec.annotations
            .iter()
            .any(|kv| kv.key == "example.com/checked-by" && kv.value == "quota-guard"),
        "{:?}",
        rec.annotations
    );
    let frozen = Pod::new("journey-no", "frozen");
    let denied = node
        .run(&env_of(&frozen, "ADD", pipeline_env), &conf())
        .error(100);
    assert!(
        denied["details"].as_str().unwrap().contains("frozen"),
        "{denied}"
    );
    node.run(&env_of(&ok, "DEL", pipeline_env), &conf()).ok();
    node.run(&env_of(&frozen, "DEL", pipeline_env), &conf())
        .ok();
    node.assert_clean();
}
