//! `tenetctl demo`: the embedded default, end to end, on a throwaway node.
//!
//! A thread of this process moves into a fresh network namespace (the
//! "node"); pods of two tenants are further namespaces. The real `tenet`
//! binary is run for each pod through the CNI protocol with the rainbond
//! pipeline, from the node thread, so the bridges, veths and nft rules it
//! creates live in the throwaway node, never in the machine's namespace.
//! The demo prints what each pod got, proves that pods of one tenant reach
//! each other and pods of different tenants do not, deletes everything and
//! proves that nothing is left. Then it starts the node daemon (`tenet
//! serve`) in the same node and wires two more pods through it, showing
//! that the daemon served them and answered their DEL before the kernel had
//! finished deleting their veths. It exits non-zero if any of that fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::{CtlError, ModuleArgs, load_pipeline};
use crate::netns::testing::{ScratchNetns, enter_scratch_node, is_root};

/// `tenetctl demo` flags.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The pipeline to run (default: policies/rainbond.toml in a source tree).
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    /// The `tenet` binary (default: beside tenetctl).
    #[arg(long, value_name = "FILE")]
    pub tenet: Option<PathBuf>,
    #[command(flatten)]
    pub modules: ModuleArgs,
}

/// One demo pod.
struct Pod {
    name: &'static str,
    namespace: &'static str,
    ns: ScratchNetns,
    result: Value,
}

impl Pod {
    fn id(&self) -> String {
        format!("demo-{}", self.name)
    }

    fn ip(&self) -> String {
        self.result["ips"][0]["address"]
            .as_str()
            .unwrap_or("?")
            .split('/')
            .next()
            .unwrap_or("?")
            .to_owned()
    }

    fn ping(&self, ip: &str) -> bool {
        self.ns
            .cmd("ping", &["-c", "1", "-W", "1", "-q", ip])
            .is_ok_and(|o| o.status.success())
    }
}

/// Runs the demo; returns the exit code.
pub fn run(args: &DemoArgs, out: &mut dyn Write) -> Result<i32, CtlError> {
    if !is_root() {
        return Err(CtlError::msg(
            "the demo needs root: it creates network namespaces (and touches nothing else)",
        ));
    }
    let pipeline = match &args.pipeline {
        Some(p) => p.clone(),
        None => source_tree_file("policies/rainbond.toml")
            .ok_or_else(|| CtlError::msg("--pipeline: no policies/rainbond.toml found"))?,
    };
    let tenet = match &args.tenet {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(CtlError::from_err)?
            .with_file_name("tenet"),
    };
    if !tenet.is_file() {
        return Err(CtlError::Message(format!(
            "--tenet: {} does not exist (run `make build`)",
            tenet.display()
        )));
    }
    // Precompile the modules once, so every `tenet` run loads artifacts.
    let opts = args.modules.options()?;
    load_pipeline(&pipeline, &opts)?;
    let tmp = tempfile::tempdir().map_err(CtlError::from_err)?;
    let state = tmp.path().join("state");
    let ctx = Ctx {
        socket: None,
        tenet,
        pipeline,
        modules: opts.module_dirs.clone(),
        cache: opts.cache_dir.clone(),
        state: state.clone(),
    };
    // Everything below runs on one thread that has left the machine's
    // network namespace for good.
    // (`out` need not be `Send`: the thread writes to a buffer, copied out
    // when it is done, a few seconds later.)
    let (code, text) = std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = Vec::new();
            let r = demo(&ctx, &mut buf);
            (r, buf)
        })
        .join()
        .unwrap_or_else(|_| (Err(CtlError::msg("the demo thread panicked")), Vec::new()))
    });
    out.write_all(&text).map_err(CtlError::from_err)?;
    code
}

#[derive(Clone)]
struct Ctx {
    /// `TENET_SOCKET` of every exec: the node daemon's socket, if any.
    socket: Option<PathBuf>,
    tenet: PathBuf,
    pipeline: PathBuf,
    modules: Vec<PathBuf>,
    cache: PathBuf,
    state: PathBuf,
}

impl Ctx {
    fn cni(&self, command: &str, pod: &Pod) -> Result<Value, CtlError> {
        let netns = pod.ns.path().to_str().unwrap_or_default().to_owned();
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
            pod.namespace, pod.name
        );
        let conf = json!({"cniVersion": "1.1.0", "name": "demo", "type": "tenet"});
        let id = pod.id();
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", args.as_str()),
        ];
        self.exec(&env, &conf, pod.name)
    }

    /// CNI GC with no valid attachment: what the runtime does when it has
    /// forgotten every pod of the network.
    fn gc(&self) -> Result<Value, CtlError> {
        let conf = json!({"cniVersion": "1.1.0", "name": "demo", "type": "tenet",
            "cni.dev/valid-attachments": []});
        self.exec(&[("CNI_COMMAND", "GC")], &conf, "the network")
    }

    fn exec(&self, env: &[(&str, &str)], conf: &Value, what: &str) -> Result<Value, CtlError> {
        let command = env
            .iter()
            .find(|(k, _)| *k == "CNI_COMMAND")
            .map_or("", |(_, v)| *v);
        let conf = conf.to_string();
        let mut child = Command::new(&self.tenet)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .env("CNI_PATH", "/opt/cni/bin")
            .env("TENET_CONFIG", "/dev/null")
            .env("TENET_PIPELINE", &self.pipeline)
            .env(
                "TENET_MODULE_DIRS",
                std::env::join_paths(&self.modules).map_err(CtlError::from_err)?,
            )
            .env("TENET_CACHE_DIR", &self.cache)
            .env("TENET_STATE_DIR", &self.state)
            .envs(self.socket.iter().map(|s| ("TENET_SOCKET", s)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CtlError::Message(format!("{}: {e}", self.tenet.display())))?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(conf.as_bytes()).map_err(CtlError::from_err)?;
        }
        let o = child.wait_with_output().map_err(CtlError::from_err)?;
        let stdout = String::from_utf8_lossy(&o.stdout);
        if !o.status.success() {
            return Err(CtlError::Message(format!(
                "tenet {command} for {what}: {}{}",
                stdout.trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        if stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(stdout.trim()).map_err(CtlError::from_err)
    }
}

fn demo(ctx: &Ctx, out: &mut dyn Write) -> Result<i32, CtlError> {
    enter_scratch_node()
        .map_err(|e| CtlError::Message(format!("creating the demo node namespace: {e}")))?;
    // Forwarding on in the throwaway node (a per-namespace sysctl; the
    // machine's own is untouched), as on a real node: otherwise "cannot
    // reach" below would prove nothing about tenet's isolation rules.
    for key in ["ipv4/ip_forward", "ipv6/conf/all/forwarding"] {
        std::fs::write(format!("/proc/sys/net/{key}"), "1")
            .map_err(|e| CtlError::Message(format!("net.{key} in the demo node: {e}")))?;
    }
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(CtlError::from_err);
    w(out, "tenet demo: a throwaway node namespace with pods of two tenants; the real `tenet` binary, rainbond pipeline\n".into())?;
    let mut pods = Vec::new();
    for (name, namespace) in [
        ("web-0", "team-a"),
        ("web-1", "team-a"),
        ("api-0", "team-b"),
    ] {
        let ns = ScratchNetns::new().map_err(CtlError::from_err)?;
        pods.push(Pod {
            name,
            namespace,
            ns,
            result: Value::Null,
        });
    }
    let mut failures = Vec::new();
    for p in pods.iter_mut() {
        p.result = ctx.cni("ADD", p)?;
    }
    w(
        out,
        format!(
            "{:<8} {:<8} {:<16} {:<12} {}",
            "POD", "TENANT", "ADDRESS", "GATEWAY", "ETH1 ROUTES"
        ),
    )?;
    for p in &pods {
        let r = &p.result;
        let eth1 = eth1_routes(r);
        w(
            out,
            format!(
                "{:<8} {:<8} {:<16} {:<12} {}",
                p.name,
                p.namespace,
                r["ips"][0]["address"].as_str().unwrap_or("?"),
                r["ips"][0]["gateway"].as_str().unwrap_or("?"),
                eth1.join(", ")
            ),
        )?;
    }
    w(out, String::new())?;
    let checks = [
        (0, 1, true, "same tenant"),
        (1, 0, true, "same tenant"),
        (0, 2, false, "different tenants"),
        (2, 0, false, "different tenants"),
    ];
    for (from, to, expect, why) in checks {
        let ok = pods[from].ping(&pods[to].ip());
        let verdict = if ok { "reaches" } else { "cannot reach" };
        let good = ok == expect;
        w(
            out,
            format!(
                "{} {} ({}) {verdict} {} ({})  [{why}: {}]",
                if good { "ok  " } else { "FAIL" },
                pods[from].name,
                pods[from].ip(),
                pods[to].name,
                pods[to].ip(),
                if expect {
                    "must reach"
                } else {
                    "must not reach"
                }
            ),
        )?;
        if !good {
            failures.push(format!("{} -> {}", pods[from].name, pods[to].name));
        }
    }
    for p in &pods {
        ctx.cni("DEL", p)?;
    }
    let left = crate::apply::leftovers(&ctx.state).map_err(CtlError::from_err)?;
    for p in &pods {
        let o =
            p.ns.cmd("ip", &["-o", "link", "show"])
                .map_err(CtlError::from_err)?;
        let links = String::from_utf8_lossy(&o.stdout);
        if links.lines().count() != 1 {
            failures.push(format!("pod {} still has interfaces: {links}", p.name));
        }
    }
    if left.is_empty() {
        w(
            out,
            "\nafter DEL: no pod links, port rules, addresses or store records left".into(),
        )?;
    } else {
        w(out, format!("\nFAIL after DEL, left behind: {left:?}"))?;
        failures.extend(left);
    }
    // The tenants' bridges stay, idle, for their next pods (the last pod's
    // DEL costs what any other does); CNI GC removes them.
    let idle = crate::apply::idle_tenant_networks().map_err(CtlError::from_err)?;
    w(
        out,
        format!(
            "idle tenant networks kept for the next pods: {}",
            idle.join(", ")
        ),
    )?;
    drop(pods);
    daemon_part(ctx, out, &mut failures)?;
    ctx.gc()?;
    let idle = crate::apply::idle_tenant_networks().map_err(CtlError::from_err)?;
    let left = crate::apply::leftovers(&ctx.state).map_err(CtlError::from_err)?;
    if idle.is_empty() && left.is_empty() {
        w(out, "after GC: no tenant network left".into())?;
    } else {
        w(
            out,
            format!("FAIL after GC, left behind: {idle:?} {left:?}"),
        )?;
        failures.extend(idle);
        failures.extend(left);
    }
    if failures.is_empty() {
        w(out, "demo passed".into())?;
        Ok(0)
    } else {
        w(out, format!("demo FAILED: {}", failures.join("; ")))?;
        Ok(1)
    }
}

/// The node daemon in the demo node: two pods of two tenants through it,
/// their exec records showing it served them, isolation between them, and
/// their DEL answered before it ended.
fn daemon_part(ctx: &Ctx, out: &mut dyn Write, failures: &mut Vec<String>) -> Result<(), CtlError> {
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(CtlError::from_err);
    let dir = ctx.state.with_file_name("serve");
    std::fs::create_dir_all(&dir).map_err(CtlError::from_err)?;
    let socket = dir.join("tenet.sock");
    // Same binary, node namespace and working directory as the execs: the
    // daemon serves nothing else.
    let mut daemon = Command::new(&ctx.tenet)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TENET_CONFIG", "/dev/null")
        .arg("serve")
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| CtlError::Message(format!("{} serve: {e}", ctx.tenet.display())))?;
    let r = daemon_pods(ctx, &socket, out, failures);
    let _ = daemon.kill();
    let _ = daemon.wait();
    r?;
    w(
        out,
        "the daemon stopped: every exec runs itself again".into(),
    )
}

fn daemon_pods(
    ctx: &Ctx,
    socket: &Path,
    out: &mut dyn Write,
    failures: &mut Vec<String>,
) -> Result<(), CtlError> {
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(CtlError::from_err);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if std::time::Instant::now() > until {
            return Err(CtlError::msg("tenet serve did not listen within 30 s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    w(
        out,
        format!(
            "\nthe node daemon (`tenet serve`, socket {}): pipelines kept loaded; each `tenet` exec forwards to it",
            socket.display()
        ),
    )?;
    let served = Ctx {
        socket: Some(socket.to_owned()),
        ..ctx.clone()
    };
    let records = || {
        let f = crate::metrics::dir(&ctx.state).join(crate::metrics::FILE_NAME);
        crate::metrics::parse(&std::fs::read(f).unwrap_or_default()).0
    };
    let mut pods = Vec::new();
    for (name, namespace) in [("web-2", "team-a"), ("api-1", "team-b")] {
        let mut p = Pod {
            name,
            namespace,
            ns: ScratchNetns::new().map_err(CtlError::from_err)?,
            result: Value::Null,
        };
        p.result = served.cni("ADD", &p)?;
        let by = records()
            .into_iter()
            .rev()
            .find(|r| r.cmd == "ADD")
            .and_then(|r| r.daemon);
        let ok = by.as_deref() == Some("served");
        w(
            out,
            format!(
                "{} ADD {:<6} {:<8} {:<16} run by: {}",
                if ok { "ok  " } else { "FAIL" },
                p.name,
                p.namespace,
                p.result["ips"][0]["address"].as_str().unwrap_or("?"),
                if ok {
                    "the daemon".to_owned()
                } else {
                    by.unwrap_or_else(|| "the exec itself".into())
                }
            ),
        )?;
        if !ok {
            failures.push(format!("ADD {} not served by the daemon", p.name));
        }
        pods.push(p);
    }
    let reach = pods[0].ping(&pods[1].ip());
    w(
        out,
        format!(
            "{} {} cannot reach {}  [different tenants: must not reach]",
            if reach { "FAIL" } else { "ok  " },
            pods[0].name,
            pods[1].name
        ),
    )?;
    if reach {
        failures.push(format!("{} -> {}", pods[0].name, pods[1].name));
    }
    let dels_before = records().iter().filter(|r| r.cmd == "DEL").count();
    for p in &pods {
        served.cni("DEL", p)?;
    }
    // The daemon answers a DEL once the pod is cut off and deletes its
    // veths after: wait for both records (a readiness wait, bounded).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let dels = loop {
        let dels: Vec<_> = records()
            .into_iter()
            .filter(|r| r.cmd == "DEL")
            .skip(dels_before)
            .collect();
        if dels.len() >= pods.len() || std::time::Instant::now() > until {
            break dels;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // (The two DELs may end in either order: they are of two pods.)
    for d in &dels {
        match d.answered_us {
            Some(a) if d.succeeded() => w(
                out,
                format!(
                    "ok   DEL answered after {:.1} ms; the daemon finished it (veths deleted, addresses released) at {:.1} ms",
                    a as f64 / 1000.0,
                    d.us as f64 / 1000.0
                ),
            )?,
            _ => {
                w(out, format!("FAIL DEL through the daemon: {d:?}"))?;
                failures.push("a DEL through the daemon".into());
            }
        }
    }
    if dels.len() < pods.len() {
        failures.push("a DEL through the daemon never ended".into());
    }
    Ok(())
}

/// The eth1 routes of a result: destinations whose gateway is eth1's.
fn eth1_routes(r: &Value) -> Vec<String> {
    let ifaces = r["interfaces"].as_array().cloned().unwrap_or_default();
    let gw = r["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|ip| {
            ip["interface"]
                .as_u64()
                .and_then(|i| ifaces.get(i as usize))
                .is_some_and(|i| i["name"] == "eth1")
        })
        .and_then(|ip| ip["gateway"].as_str().map(str::to_owned));
    let Some(gw) = gw else {
        return vec!["(no eth1)".into()];
    };
    r["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rt| rt["gw"].as_str() == Some(gw.as_str()))
        .filter_map(|rt| rt["dst"].as_str().map(|d| format!("{d} via {gw}")))
        .collect()
}

/// A file of the source tree tenetctl was built in (target/<profile>/tenetctl).
fn source_tree_file(rel: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .map(|d| d.join(rel))
        .find(|p| p.is_file())
        .or_else(|| Some(Path::new(rel).to_owned()).filter(|p| p.is_file()))
}
