//! The policy author's journey, out of tree, as docs/policy-authoring.md
//! tells it: `tenetctl policy new`, a wasm32 build of the new crate,
//! `tenetctl policy test`, `tenetctl policy compile --pin`, then real ADDs
//! through the `tenet` binary in a scratch node namespace: a pod the new
//! stage lets through (its annotation kept in the attachment record) and
//! one it denies (CNI code 100 with the module's message). Between the pin
//! and the ADDs the module goes through a real registry (Debian
//! `docker-registry` on loopback): `policy push`, `policy sign` with an
//! openssl-made key, `policy pull --verify-key`, and the pipeline names it
//! `oci://…@sha256:…`; an ADD without the pulled file fails naming the
//! pull command (the exec never fetches). The push/sign/pull wall times are
//! printed (`--nocapture`).
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
#[ignore = "needs root, the wasm32-wasip2 target, docker-registry, openssl: make test runs it"]
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

    // Shipped through a real registry: push, sign (an openssl key), pull
    // with the public key; the pipeline then names the module by digest.
    let reg = common::registry::Registry::start();
    let keys = tmp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let (key, public) = (keys.join("signing.pem"), keys.join("cosign.pub"));
    run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&key));
    run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public));
    let timed = |what: &str, cmd: &mut Command| {
        let t = std::time::Instant::now();
        let out = run(cmd);
        eprintln!("journey: {what} took {:?}", t.elapsed());
        out
    };
    let reference = timed(
        "policy push",
        tenetctl(&cache)
            .args(["policy", "push"])
            .arg(&wasm)
            .arg(format!("oci://{}/platform/quota-guard:0.1.0", reg.addr))
            .args(["--insecure-registry", &reg.addr]),
    )
    .trim()
    .to_owned();
    assert!(reference.contains("@sha256:"), "{reference}");
    timed(
        "policy sign",
        tenetctl(&cache)
            .args(["policy", "sign", "--key"])
            .arg(&key)
            .arg(&reference)
            .args(["--insecure-registry", &reg.addr]),
    );
    let pulled = tmp.path().join("pulled");
    let out = timed(
        "policy pull",
        tenetctl(&cache)
            .args(["policy", "pull", &reference, "--verify-key"])
            .arg(&public)
            .arg("--module-dir")
            .arg(&pulled)
            .args(["--insecure-registry", &reg.addr]),
    );
    assert!(out.contains("signature verified"), "{out}");
    let hex = reference.rsplit_once("@sha256:").unwrap().1;
    let pulled_file = pulled.join(format!("oci-sha256-{hex}.wasm"));
    assert_eq!(
        std::fs::read(&pulled_file).unwrap(),
        std::fs::read(&wasm).unwrap()
    );
    let text = std::fs::read_to_string(&pipeline).unwrap().replace(
        &format!("module = \"{}\"", wasm.display()),
        &format!("module = \"{reference}\""),
    );
    assert!(text.contains(&reference), "{text}");
    std::fs::write(&pipeline, text).unwrap();
    // The pin still holds (same bytes), and compile warms the cache.
    let module_dirs = std::env::join_paths([pulled.clone(), common::modules_dir()]).unwrap();
    run(tenetctl(&cache)
        .env("TENET_MODULE_DIRS", &module_dirs)
        .args(["policy", "compile", "--pipeline"])
        .arg(&pipeline));

    // A real ADD with the new stage, and a denied one.
    let pipeline_env = pipeline.to_str().unwrap();
    let dirs = module_dirs.to_str().unwrap().to_owned();
    let env_of = |pod: &Pod, cmd: &'static str, p: &str| -> Vec<(&'static str, String)> {
        let mut e: Vec<(&'static str, String)> = pod
            .env(cmd)
            .into_iter()
            .map(|(k, v)| (k, v.to_owned()))
            .collect();
        e.push(("TENET_PIPELINE", p.to_owned()));
        e.push(("TENET_MODULE_DIRS", dirs.clone()));
        e
    };
    fn refs<'a>(e: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        e.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
    let ok = Pod::new("journey-ok", "team-a");
    let added = node
        .run(&refs(&env_of(&ok, "ADD", pipeline_env)), &conf())
        .ok();
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
        .run(&refs(&env_of(&frozen, "ADD", pipeline_env)), &conf())
        .error(100);
    assert!(
        denied["details"].as_str().unwrap().contains("frozen"),
        "{denied}"
    );
    node.run(&refs(&env_of(&ok, "DEL", pipeline_env)), &conf())
        .ok();
    node.run(&refs(&env_of(&frozen, "DEL", pipeline_env)), &conf())
        .ok();

    // The exec never pulls: without the pulled file and its artifact (a
    // fresh cache), ADD fails naming the reference and the pull command.
    let fresh = tmp.path().join("fresh-cache");
    let lost = Pod::new("journey-lost", "team-a");
    let mut e = env_of(&lost, "ADD", pipeline_env);
    e.retain(|(k, _)| *k != "TENET_MODULE_DIRS");
    e.push((
        "TENET_MODULE_DIRS",
        common::modules_dir().to_str().unwrap().to_owned(),
    ));
    e.push(("TENET_CACHE_DIR", fresh.to_str().unwrap().to_owned()));
    let missing = node.run(&refs(&e), &conf()).error(103);
    let details = missing["details"].as_str().unwrap();
    assert!(
        details.contains(&reference) && details.contains("tenetctl policy pull"),
        "{missing}"
    );
    let mut e = env_of(&lost, "DEL", pipeline_env);
    e.push(("TENET_CACHE_DIR", fresh.to_str().unwrap().to_owned()));
    node.run(&refs(&e), &conf()).ok();
    node.assert_clean();
}
