//! Whole-process cost of the policy pipeline.
//!
//! Runs the release `tenet` binary (runtime-only, as shipped) for CNI ADD
//! with the rainbond pipeline (4 precompiled stages) and with an empty
//! pipeline, **alternating** the two in one run so machine drift hits both
//! equally, and reports medians and the difference. Both variants do the same
//! work apart from the pipeline: parse, configure, load, plan, validate, and
//! answer (ADD stops after plan validation until the apply engine lands; the
//! empty pipeline's final validation fails instead, at the same point).
//!
//! `make bench` (or `cargo run --release -p tenet-bench --bin pipeline_exec`
//! after `make build guests`). `BENCH_RUNS` sets the number of pairs
//! (default 400).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    // tests/bench -> the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bin(name: &str) -> PathBuf {
    let p = root().join("target/release").join(name);
    assert!(
        p.is_file(),
        "{} missing: run `make build guests` first",
        p.display()
    );
    p
}

const NETCONF: &str = r#"{"cniVersion":"1.0.0","name":"bench","type":"tenet"}"#;

fn invoke(tenet: &Path, pipeline: &Path, modules: &Path, cache: &Path) -> (Duration, String) {
    let start = Instant::now();
    let mut child = Command::new(tenet)
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "bench0123456789")
        .env("CNI_NETNS", "/var/run/netns/bench")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-0",
        )
        .env("TENET_CONFIG", "/dev/null")
        // Plan only (code 110, plan in details): this measures the policy
        // pipeline, not the data plane (bench add_del does that).
        .env("TENET_DRY_RUN", "1")
        .env("TENET_PIPELINE", pipeline)
        .env("TENET_MODULE_DIRS", modules)
        .env("TENET_CACHE_DIR", cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tenet");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(NETCONF.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        start.elapsed(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn stats(v: &mut [Duration]) -> (f64, f64, f64) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (us(v[v.len() / 2]), us(v[v.len() * 9 / 10]), us(v[0]))
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let tenet = bin("tenet");
    let tenetctl = bin("tenetctl");
    let modules = std::env::var_os("TENET_TEST_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/modules"));
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let rainbond = root().join("policies/rainbond.toml");
    let empty = tmp.path().join("empty.toml");
    std::fs::write(&empty, "description = \"no stages\"\n").unwrap();

    // Precompile off the hot path, as an installer or node agent does.
    let st = Command::new(&tenetctl)
        .args(["policy", "compile", "--pipeline"])
        .arg(&rainbond)
        .arg("--module-dir")
        .arg(&modules)
        .arg("--cache-dir")
        .arg(&cache)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "tenetctl policy compile failed");

    // Sanity: both variants reach the end of planning.
    let (_, out) = invoke(&tenet, &rainbond, &modules, &cache);
    assert!(
        out.contains("\"code\":110"),
        "rainbond ADD did not plan: {out}"
    );
    let (_, out) = invoke(&tenet, &empty, &modules, &cache);
    assert!(
        out.contains("\"code\":104"),
        "empty ADD did not reach validation: {out}"
    );

    for _ in 0..20 {
        invoke(&tenet, &rainbond, &modules, &cache);
        invoke(&tenet, &empty, &modules, &cache);
    }
    let (mut with, mut without) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..runs {
        // Alternate, and alternate which goes first.
        if i % 2 == 0 {
            with.push(invoke(&tenet, &rainbond, &modules, &cache).0);
            without.push(invoke(&tenet, &empty, &modules, &cache).0);
        } else {
            without.push(invoke(&tenet, &empty, &modules, &cache).0);
            with.push(invoke(&tenet, &rainbond, &modules, &cache).0);
        }
    }
    let (w50, w90, wmin) = stats(&mut with);
    let (e50, e90, emin) = stats(&mut without);
    println!("pipeline_exec: whole-process CNI ADD, {runs} alternating pairs");
    println!(
        "  rainbond pipeline (4 stages): median {w50:8.0} us  p90 {w90:8.0} us  min {wmin:8.0} us"
    );
    println!(
        "  empty pipeline              : median {e50:8.0} us  p90 {e90:8.0} us  min {emin:8.0} us"
    );
    println!(
        "  pipeline cost (median difference): {:.0} us  (budget 1000 us)  ratio {:.2}",
        w50 - e50,
        w50 / e50
    );
}
