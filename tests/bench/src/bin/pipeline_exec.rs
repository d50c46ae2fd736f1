//! Whole-process cost of the policy pipeline.
//!
//! Runs the release `tenet` binary (runtime-only, as shipped) for CNI ADD in
//! three arms, **interleaved** in one run so machine drift hits all alike:
//! the rainbond pipeline (4 stages) from its bundle artifact (what execs
//! load after `tenetctl policy compile`), the same pipeline stage by stage
//! (the cache without the bundle), and an empty pipeline. It reports medians
//! and each pipeline arm's difference to the empty one. All arms do the same
//! work apart from the pipeline: parse, configure, load, plan, validate, and
//! answer (`TENET_DRY_RUN`: ADD stops after plan validation; the empty
//! pipeline's final validation fails instead, at the same point).
//!
//! `make bench` (or `cargo run --release -p tenet-bench --bin pipeline_exec`
//! after `make build guests`). `BENCH_RUNS` sets the number of rounds
//! (default 400). Afterwards it prints a per-stage breakdown (artifact load,
//! instantiate + evaluate) of both pipeline arms from tenet's own debug log
//! over `BENCH_BREAKDOWN_RUNS` more execs each (default 100; 0 skips it).
//! Those execs log, so they are not part of the comparison above.
//!
//! `BENCH_BASELINE_TENET=/path/to/older/tenet` adds that binary's bundled
//! and empty arms to the same interleaved rounds (same artifacts, so the
//! older build must share the engine profile) and prints both pipeline
//! costs and their ratio: a before/after measured under the same load.
//!
//! With the node daemon (on unless `BENCH_DAEMON=off`): two more arms, the
//! bundled and the empty pipeline through `tenet serve` (one daemon each,
//! started here), so the pipeline's cost with loaded pipelines is measured
//! in the same rounds. Their CPU time is the client's (wait4) plus the
//! daemon's share: its user + system time over the measured rounds
//! (`/proc/PID/stat`, clock ticks), divided by the rounds.

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

fn invoke(
    tenet: &Path,
    pipeline: &Path,
    modules: &Path,
    cache: &Path,
    socket: Option<&Path>,
) -> (Duration, String) {
    let (d, out, _) = invoke_with(tenet, pipeline, modules, cache, None, socket);
    (d, out)
}

/// `tenet serve` on `socket`, in this process's namespaces and working
/// directory (the daemon serves only such clients); waits until it listens.
fn start_daemon(tenet: &Path, socket: &Path) -> std::process::Child {
    let child = Command::new(tenet)
        .env_clear()
        .env("TENET_CONFIG", "/dev/null")
        .arg("serve")
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tenet serve");
    let until = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < until, "tenet serve never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// User + system time of process `pid` so far (threads that ended
/// included), from `/proc/PID/stat` (clock ticks).
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("daemon stat");
    // Fields after the command name (which may hold spaces) start at ")".
    let rest = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
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
    socket: Option<&Path>,
) -> (Duration, String, String) {
    let start = Instant::now();
    let mut cmd = Command::new(tenet);
    cmd.env_clear();
    if let Some(s) = socket {
        cmd.env("TENET_SOCKET", s);
    }
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
        let (_, _, log) = invoke_with(tenet, pipeline, modules, cache, Some("tenet=debug"), None);
        for line in log.lines() {
            // The bundle (loaded and instantiated once for all stages) is
            // reported as a pseudo-stage "(bundle)".
            if line.contains("tenet::guest") {
                // The stages' own log lines (stage="…" quoted).
                continue;
            }
            let bundled = line.contains("pipeline bundle");
            let Some(stage) = field(line, "stage=").or(bundled.then_some("(bundle)")) else {
                continue;
            };
            if !order.iter().any(|s| s == stage) {
                order.push(stage.to_owned());
            }
            if bundled && let Some(us) = field(line, "instantiate_us=").and_then(|v| v.parse().ok())
            {
                run.entry(stage.to_owned()).or_default().push(us);
            } else if (line.contains("stage loaded") || line.contains("pipeline bundle loaded"))
                && let Some(us) = field(line, "load_us=").and_then(|v| v.parse().ok())
            {
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
    println!(
        "  {}:",
        cache.file_name().unwrap_or_default().to_string_lossy()
    );
    let (mut tl, mut tr) = (0.0, 0.0);
    // "-": no such phase (a stage the bundle served has no load of its own).
    let show = |v: f64| {
        if v.is_nan() {
            format!("{:>6}", "-")
        } else {
            format!("{v:6.0}")
        }
    };
    for stage in &order {
        let l = median(load.entry(stage.clone()).or_default());
        let r = median(run.entry(stage.clone()).or_default());
        tl += if l.is_nan() { 0.0 } else { l };
        tr += if r.is_nan() { 0.0 } else { r };
        println!(
            "    {stage:<8} load {}  instantiate+evaluate {}",
            show(l),
            show(r)
        );
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
    let bundle = compile(&tenetctl, &rainbond, &modules, &cache);

    // Sanity: both variants reach the end of planning.
    let (_, out) = invoke(&tenet, &rainbond, &modules, &cache, None);
    assert!(
        out.contains("\"code\":110"),
        "rainbond ADD did not plan: {out}"
    );
    let (_, out) = invoke(&tenet, &empty, &modules, &cache, None);
    assert!(
        out.contains("\"code\":104"),
        "empty ADD did not reach validation: {out}"
    );

    // The same pipeline without its bundle: a copy of the cache minus the
    // bundle artifact, so the stages load one by one (what an exec does
    // before `tenetctl policy compile` has built the bundle).
    let unbundled = tmp.path().join("cache-unbundled");
    copy_tree(&cache, &unbundled);
    std::fs::remove_file(unbundled.join(bundle.strip_prefix(&cache).unwrap())).unwrap();

    // BENCH_BASELINE_TENET: an older `tenet` binary, run on the same
    // artifacts (same engine profile) as two more interleaved arms, so a
    // change is measured against its base in the same run.
    let baseline = std::env::var_os("BENCH_BASELINE_TENET").map(PathBuf::from);
    let mut arms: Vec<(&str, &Path, &Path, &Path, Option<&Path>)> = vec![
        (
            "rainbond, bundled (4 stages)",
            &tenet,
            &rainbond,
            &cache,
            None,
        ),
        (
            "rainbond, stage by stage    ",
            &tenet,
            &rainbond,
            &unbundled,
            None,
        ),
        ("empty pipeline              ", &tenet, &empty, &cache, None),
    ];
    if let Some(old) = &baseline {
        assert!(
            old.is_file(),
            "BENCH_BASELINE_TENET={} is not a file",
            old.display()
        );
        arms.push(("baseline: rainbond, bundled ", old, &rainbond, &cache, None));
        arms.push(("baseline: empty pipeline    ", old, &empty, &cache, None));
    }
    let with_daemon = !matches!(
        std::env::var("BENCH_DAEMON").as_deref(),
        Ok("off") | Ok("0")
    );
    let sockets = [
        tmp.path().join("bundled.sock"),
        tmp.path().join("empty.sock"),
    ];
    let mut daemons: Vec<std::process::Child> = Vec::new();
    if with_daemon {
        daemons = sockets.iter().map(|s| start_daemon(&tenet, s)).collect();
        arms.push((
            "daemon: rainbond, bundled   ",
            &tenet,
            &rainbond,
            &cache,
            Some(&sockets[0]),
        ));
        arms.push((
            "daemon: empty pipeline      ",
            &tenet,
            &empty,
            &cache,
            Some(&sockets[1]),
        ));
        let (_, out) = invoke(&tenet, &rainbond, &modules, &cache, Some(&sockets[0]));
        assert!(
            out.contains("\"code\":110"),
            "daemon ADD did not plan: {out}"
        );
    }
    for _ in 0..20 {
        for &(_, t, p, c, s) in &arms {
            invoke(t, p, &modules, c, s);
        }
    }
    let daemon_cpu_before: Vec<Duration> = daemons.iter().map(|d| process_cpu(d.id())).collect();
    let mut wall: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); arms.len()];
    let mut cpu: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); arms.len()];
    for i in 0..runs {
        // Interleave the arms, rotating which goes first, so machine drift
        // hits them all alike.
        for k in 0..arms.len() {
            let a = (i + k) % arms.len();
            let (_, t, p, c, s) = arms[a];
            wall[a].push(invoke(t, p, &modules, c, s).0);
            cpu[a].push(last_cpu());
        }
    }
    println!(
        "pipeline_exec: whole-process CNI ADD, {runs} interleaved rounds of {} arms",
        arms.len()
    );
    for (title, samples) in [
        ("wall time", &mut wall),
        ("CPU time of the process (user + system)", &mut cpu),
    ] {
        println!("  {title}:");
        let s: Vec<(f64, f64, f64)> = samples.iter_mut().map(|v| stats(v)).collect();
        for ((name, _, _, _, _), (m, p90, min)) in arms.iter().zip(&s) {
            println!("    {name}: median {m:8.0} us  p90 {p90:8.0} us  min {min:8.0} us");
        }
        let e = s[2].0;
        println!(
            "    pipeline cost, bundled       (median difference): {:5.0} us  ratio {:.2}  (budget 1000 us)",
            s[0].0 - e,
            s[0].0 / e
        );
        println!(
            "    pipeline cost, stage by stage (median difference): {:5.0} us  ratio {:.2}",
            s[1].0 - e,
            s[1].0 / e
        );
        if baseline.is_some() {
            let (b, be) = (s[3].0, s[4].0);
            println!(
                "    baseline pipeline cost, bundled (median difference): {:5.0} us  ratio {:.2}; this build's cost / baseline's: {:.2}",
                b - be,
                b / be,
                (s[0].0 - e) / (b - be)
            );
        }
        if with_daemon {
            let (d, de) = (s[arms.len() - 2].0, s[arms.len() - 1].0);
            if title == "wall time" {
                println!(
                    "    daemon pipeline cost, bundled (median difference): {:5.0} us  ratio {:.2}",
                    d - de,
                    d / de
                );
            } else {
                // The client's median plus the daemon's mean share.
                let share: Vec<f64> = daemons
                    .iter()
                    .zip(&daemon_cpu_before)
                    .map(|(p, before)| {
                        (process_cpu(p.id()) - *before).as_secs_f64() * 1e6 / runs as f64
                    })
                    .collect();
                println!(
                    "    daemon CPU per invocation (mean over the rounds): bundled {:5.0} us, empty {:5.0} us",
                    share[0], share[1]
                );
                println!(
                    "    daemon pipeline cost, bundled (client median + daemon share, difference): {:5.0} us",
                    (d + share[0]) - (de + share[1])
                );
            }
        }
    }
    for mut d in daemons {
        let _ = d.kill();
        let _ = d.wait();
    }
    let n: usize = std::env::var("BENCH_BREAKDOWN_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    if n > 0 {
        println!("  breakdown over {n} execs each (tenet's debug log; medians, us):");
        breakdown(&tenet, &rainbond, &modules, &cache, n);
        breakdown(&tenet, &rainbond, &modules, &unbundled, n);
    }
}

/// Copies a directory tree (the artifact cache: regular files and
/// directories), keeping modes.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::metadata(from).unwrap().permissions()).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// Runs `tenetctl policy compile` into `cache`; returns the bundle artifact
/// it reported.
fn compile(tenetctl: &Path, pipeline: &Path, modules: &Path, cache: &Path) -> PathBuf {
    let out = Command::new(tenetctl)
        .args(["policy", "compile", "--pipeline"])
        .arg(pipeline)
        .arg("--module-dir")
        .arg(modules)
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "tenetctl policy compile failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("(bundle)"))
        .unwrap_or_else(|| panic!("no bundle line in: {text}"));
    PathBuf::from(field(line, "artifact=").unwrap_or_else(|| panic!("no bundle built: {line}")))
}
