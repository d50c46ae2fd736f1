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
//! (default 400). Afterwards it prints a per-stage breakdown (artifact load,
//! instantiate + evaluate) from tenet's own debug log over
//! `BENCH_BREAKDOWN_RUNS` more execs (default 100; 0 skips it). Those execs
//! log, so they are not part of the comparison above.

use std::io::{Read, Write};
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
    let (d, out, _) = invoke_with(tenet, pipeline, modules, cache, None);
    (d, out)
}

/// Runs one ADD; with `log_level`, also returns tenet's log (stderr).
// The child is reaped with `wait4` (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn invoke_with(
    tenet: &Path,
    pipeline: &Path,
    modules: &Path,
    cache: &Path,
    log_level: Option<&str>,
) -> (Duration, String, String) {
    let start = Instant::now();
    let mut cmd = Command::new(tenet);
    cmd.env_clear();
    if let Some(level) = log_level {
        cmd.env("TENET_LOG_LEVEL", level);
    }
    let mut child = cmd
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
        .stderr(if log_level.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("spawn tenet");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(NETCONF.as_bytes())
        .unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr).unwrap();
    }
    // Reap with wait4 to get the child's own CPU time (user + system): on a
    // busy machine wall time mostly measures waiting for a CPU, CPU time
    // does not.
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our unreaped child; both pointers are valid.
    let r = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    assert_eq!(r, child.id() as libc::pid_t, "wait4 failed");
    let elapsed = start.elapsed();
    let tv =
        |t: libc::timeval| Duration::from_micros(t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64);
    CPU.with(|c| c.set(tv(ru.ru_utime) + tv(ru.ru_stime)));
    (elapsed, stdout, stderr)
}

std::thread_local! {
    /// CPU time of the last child reaped by `invoke_with`.
    static CPU: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

fn last_cpu() -> Duration {
    CPU.with(|c| c.get())
}

/// Parses a `Duration` as `{:?}` prints it ("155.9µs", "3.4ms", "812ns").
fn parse_debug_duration(s: &str) -> Option<f64> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "ns" => v / 1e3,
        "µs" | "us" => v,
        "ms" => v * 1e3,
        "s" => v * 1e6,
        _ => return None,
    })
}

/// The value after `key` up to the next space, comma or brace.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    Some(rest.split([' ', ',', '}']).next().unwrap_or(rest))
}

/// Per-stage phase medians from tenet's own debug log (`stage loaded
/// load_us=…` and `stage done … elapsed: …`) over `runs` execs: where the
/// pipeline's time goes, stage by stage.
fn breakdown(tenet: &Path, pipeline: &Path, modules: &Path, cache: &Path, runs: usize) {
    use std::collections::BTreeMap;
    let mut load: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut run: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for _ in 0..runs {
        let (_, _, log) = invoke_with(tenet, pipeline, modules, cache, Some("tenet=debug"));
        for line in log.lines() {
            let Some(stage) = field(line, "stage=") else {
                continue;
            };
            if line.contains("stage loaded")
                && let Some(us) = field(line, "load_us=").and_then(|v| v.parse().ok())
            {
                if !order.iter().any(|s| s == stage) {
                    order.push(stage.to_owned());
                }
                load.entry(stage.to_owned()).or_default().push(us);
            } else if line.contains("stage done")
                && let Some(us) = field(line, "elapsed: ").and_then(parse_debug_duration)
            {
                run.entry(stage.to_owned()).or_default().push(us);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!("  breakdown over {runs} execs (tenet's debug log; medians, us):");
    let (mut tl, mut tr) = (0.0, 0.0);
    for stage in &order {
        let l = median(load.entry(stage.clone()).or_default());
        let r = median(run.entry(stage.clone()).or_default());
        tl += l;
        tr += r;
        println!("    {stage:<8} load {l:6.0}  instantiate+evaluate {r:6.0}");
    }
    println!(
        "    total    load {tl:6.0}  instantiate+evaluate {tr:6.0}  (in-process sum {:.0})",
        tl + tr
    );
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
    let (mut with_cpu, mut without_cpu) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..runs {
        // Alternate, and alternate which goes first.
        let one = |p: &Path, wall: &mut Vec<Duration>, cpu: &mut Vec<Duration>| {
            wall.push(invoke(&tenet, p, &modules, &cache).0);
            cpu.push(last_cpu());
        };
        if i % 2 == 0 {
            one(&rainbond, &mut with, &mut with_cpu);
            one(&empty, &mut without, &mut without_cpu);
        } else {
            one(&empty, &mut without, &mut without_cpu);
            one(&rainbond, &mut with, &mut with_cpu);
        }
    }
    let (w50, w90, wmin) = stats(&mut with);
    let (e50, e90, emin) = stats(&mut without);
    let (wc50, wc90, wcmin) = stats(&mut with_cpu);
    let (ec50, ec90, ecmin) = stats(&mut without_cpu);
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
    println!("  CPU time of the process (user + system), same execs:");
    println!(
        "  rainbond pipeline (4 stages): median {wc50:8.0} us  p90 {wc90:8.0} us  min {wcmin:8.0} us"
    );
    println!(
        "  empty pipeline              : median {ec50:8.0} us  p90 {ec90:8.0} us  min {ecmin:8.0} us"
    );
    println!(
        "  pipeline CPU cost (median difference): {:.0} us  ratio {:.2}",
        wc50 - ec50,
        wc50 / ec50
    );
    let n: usize = std::env::var("BENCH_BREAKDOWN_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    if n > 0 {
        breakdown(&tenet, &rainbond, &modules, &cache, n);
    }
}
