//! `tenetctl agent`: the node agent (docs/kubernetes.md, "The node agent").
//!
//! Three jobs, one process:
//! - **upkeep** ([`upkeep`]): at start and every `--upkeep-interval`, the
//!   pipeline's artifacts and bundle are rebuilt when the pipeline file, a
//!   module file or tenet's version changed;
//! - **GC** ([`gc`]): every `--gc-interval`, attachments whose pod sandbox
//!   the runtime no longer lists over its CRI socket are torn down;
//! - **HTTP** ([`http`]): `/metrics` (Prometheus text format 0.0.4, from
//!   the records `tenet` appends per exec, see [`crate::metrics`], and the
//!   agent's own probes), `/readyz`, `/healthz`.
//!
//! The configuration is read as `tenet` reads it for the network
//! `--network`: the file `--config`, `TENET_*` variables, and the tenet
//! entry of that network's configuration in `--conf-dir`; it is read again
//! at every upkeep tick, so a changed pipeline path is followed.

pub mod cri;
pub mod gc;
pub mod http;
pub mod prom;
pub mod upkeep;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::CtlError;
use super::install::Change;
use crate::apply::{Backends, Records};
use crate::config::Config;
use crate::plan::InterfaceKind;

/// Arguments of `tenetctl agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The tenet configuration file.
    #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG_FILE)]
    pub config: PathBuf,
    /// Address of the HTTP endpoint (/metrics, /readyz, /healthz); port 0
    /// picks a free port, printed on stdout.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9490")]
    pub listen: SocketAddr,
    /// The container runtime's CRI socket.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub cri_socket: PathBuf,
    /// Time between GC passes (`60s`, `500ms`, `2m`).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub gc_interval: Duration,
    /// Time between artifact upkeep checks.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub upkeep_interval: Duration,
    /// Attachments younger than this are never collected (the runtime lists
    /// a sandbox only once its network is up).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub gc_min_age: Duration,
    /// Bound on one CRI call (connect and answer).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub cri_timeout: Duration,
    /// The CNI configuration directory holding the network's conflist.
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The network (conflist `name`) whose attachments this agent keeps.
    #[arg(long, value_name = "NAME", default_value = "tenet")]
    pub network: String,
    /// Run one upkeep and one GC pass (and one kubeconfig write with
    /// `--write-kubeconfig`), print what they did, and exit (status 1 if
    /// any failed).
    #[arg(long)]
    pub once: bool,
    /// `--write-kubeconfig`, `--service-account-dir`: keep the node's
    /// kubeconfig for the CNI exec current.
    #[command(flatten)]
    pub kubeconfig: super::node_kubeconfig::KubeconfigArgs,
    /// Time between rewrites of `--write-kubeconfig` (service-account tokens
    /// rotate; kubelet renews a projected one at 80 % of its lifetime).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub kubeconfig_interval: Duration,
}

/// Parses `500ms`, `60s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (500ms, 60s, 2m, 1h)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Ok(d)
}

/// The tenet entry of network `name`'s configuration in `dir`, if any.
fn network_plugin(dir: &Path, name: &str) -> Option<(PathBuf, Map<String, Value>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
        })
        .collect();
    // The runtime's order: the first file by name wins.
    files.sort();
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if v.get("name").and_then(Value::as_str) != Some(name) {
            continue;
        }
        let entries: Vec<Map<String, Value>> = match v.get("plugins") {
            Some(Value::Array(a)) => a.iter().filter_map(|p| p.as_object().cloned()).collect(),
            _ => vec![v.clone()],
        };
        if let Some(p) = entries
            .into_iter()
            .find(|p| p.get("type").and_then(Value::as_str) == Some("tenet"))
        {
            return Some((f, p));
        }
    }
    None
}

/// The agent's state, shared by its loop and its HTTP threads.
struct Agent {
    args: AgentArgs,
    env: Vec<(String, String)>,
    execs: Mutex<Execs>,
    status: Mutex<Status>,
}

struct Execs {
    consumer: Option<(PathBuf, crate::metrics::Consumer)>,
    agg: prom::ExecAggregates,
}

#[derive(Default)]
struct Status {
    config: Option<Result<Config, String>>,
    upkeep: upkeep::Upkeep,
    gc_removed: u64,
    gc_runs: BTreeMap<String, u64>,
    rebuilds: BTreeMap<String, u64>,
    /// The last kubeconfig write (None: not configured, or not run yet).
    kubeconfig: Option<Result<(), String>>,
}

impl Agent {
    fn load_config(&self) -> Result<Config, String> {
        let plugin = network_plugin(&self.args.conf_dir, &self.args.network);
        if plugin.is_none() {
            tracing::debug!(conf_dir = %self.args.conf_dir.display(), network = %self.args.network, "no conflist for the network; tenet.toml alone");
        }
        Config::load(&self.env, plugin.as_ref().map(|(_, p)| p)).map_err(|e| e.to_string())
    }

    fn config(&self) -> Result<Config, String> {
        let st = self.status.lock().expect("status lock");
        match &st.config {
            Some(c) => c.clone(),
            None => Err("not loaded yet".into()),
        }
    }

    /// Reads the configuration again and runs an upkeep tick.
    fn upkeep(&self) -> Result<(), String> {
        let cfg = self.load_config();
        // The build runs outside the lock, so scrapes are answered meanwhile
        // (artifacts count as not current while they are rebuilt).
        let mut up = {
            let mut st = self.status.lock().expect("status lock");
            st.config = Some(cfg.clone());
            if cfg.is_err() {
                st.upkeep = upkeep::Upkeep::default();
            }
            std::mem::take(&mut st.upkeep)
        };
        let cfg = cfg.inspect_err(|e| tracing::warn!(error = %e, "tenet configuration"))?;
        let r = up.tick(&cfg);
        let mut st = self.status.lock().expect("status lock");
        st.upkeep = up;
        let result = match &r {
            Ok(upkeep::Tick::Unchanged) => return Ok(()),
            Ok(upkeep::Tick::Rebuilt(c)) => {
                tracing::info!(stages = c.stages, bundle = ?c.bundle, "artifacts rebuilt");
                "ok"
            }
            Err(e) => {
                tracing::warn!(error = %e, "artifact upkeep failed");
                "error"
            }
        };
        *st.rebuilds.entry(result.into()).or_default() += 1;
        r.map(drop)
    }

    /// Writes `--write-kubeconfig` again from the service account (the
    /// token may have rotated); a failure keeps the previous file.
    fn refresh_kubeconfig(&self) -> Option<Result<Change, String>> {
        let dest = self.args.kubeconfig.write_kubeconfig.as_ref()?;
        let r = super::node_kubeconfig::write(
            &self.env,
            &self.args.kubeconfig.service_account_dir,
            dest,
        )
        .map_err(|e| e.to_string());
        match &r {
            Ok(Change::Unchanged) => {
                tracing::debug!(path = %dest.display(), "kubeconfig unchanged");
            }
            Ok(c) => tracing::info!(path = %dest.display(), change = ?c, "kubeconfig written"),
            Err(e) => {
                tracing::warn!(path = %dest.display(), error = %e, "kubeconfig not written (the previous one is kept)");
            }
        }
        let mut st = self.status.lock().expect("status lock");
        st.kubeconfig = Some(r.clone().map(drop));
        Some(r)
    }

    fn gc(&self) -> Result<gc::Report, String> {
        let cfg = self.config()?;
        let r = gc::run(
            &cfg,
            &self.args.network,
            &self.args.cri_socket,
            self.args.cri_timeout,
            self.args.gc_min_age,
        );
        let mut st = self.status.lock().expect("status lock");
        let (label, report) = match &r {
            Ok(rep) => ("ok", Some(rep)),
            Err(gc::GcError::Cri(_)) => ("cri_error", None),
            Err(gc::GcError::Apply { report, .. }) => ("error", Some(&**report)),
        };
        *st.gc_runs.entry(label.into()).or_default() += 1;
        if let Some(rep) = report {
            st.gc_removed += rep.removed.len() as u64;
            for k in &rep.removed {
                tracing::info!(key = %k, "GC: sandbox gone, attachment torn down");
            }
            tracing::info!(
                runtime = %rep.runtime,
                sandboxes = rep.sandboxes,
                removed = rep.removed.len(),
                in_flight = rep.decision.in_flight.len(),
                young = rep.decision.young.len(),
                released = rep.released,
                idle_tenants_removed = rep.idle_tenants_removed.len(),
                "GC pass"
            );
        }
        r.map_err(|e| {
            tracing::warn!(error = %e, "GC pass");
            e.to_string()
        })
    }

    /// Folds in the exec records appended since the last call.
    fn take_execs(&self, cfg: &Config) {
        let mut ex = self.execs.lock().expect("execs lock");
        let ex = &mut *ex;
        if ex
            .consumer
            .as_ref()
            .is_none_or(|(d, _)| *d != cfg.state_dir)
        {
            ex.consumer = Some((
                cfg.state_dir.clone(),
                crate::metrics::Consumer::new(&cfg.state_dir),
            ));
        }
        let (_, c) = ex.consumer.as_mut().expect("set above");
        match c.take() {
            Ok((recs, bad)) => ex.agg.add(&recs, bad),
            Err(e) => tracing::warn!(error = %e, "reading the exec records"),
        }
    }

    fn probe(cfg: &Config) -> (Option<bool>, Option<bool>, Vec<String>) {
        let mut why = Vec::new();
        match Backends::open(cfg) {
            Ok(b) => {
                let store = b.store.status().map_err(|e| e.to_string());
                let sdn = b.sdn.status().map_err(|e| e.to_string());
                if let Err(e) = &store {
                    why.push(format!("address store: {e}"));
                }
                if let Err(e) = &sdn {
                    why.push(format!("sdn: {e}"));
                }
                (Some(store.is_ok()), Some(sdn.is_ok()), why)
            }
            Err(e) => {
                why.push(format!("backends: {}: {}", e.msg, e.details));
                (Some(false), Some(false), why)
            }
        }
    }

    fn pool_used(cfg: &Config) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        let recs = match Records::new(&cfg.state_dir).list(None) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "listing attachment records");
                return out;
            }
        };
        for r in recs {
            for i in r
                .interfaces
                .iter()
                .filter(|i| i.kind == InterfaceKind::SdnPort)
            {
                for a in &i.addrs {
                    let pool = r
                        .subnets
                        .iter()
                        .find(|(s, _)| s.contains(&a.addr()))
                        .map_or_else(|| a.trunc().to_string(), |(s, _)| s.to_string());
                    *out.entry((r.tenant.clone(), pool)).or_default() += 1;
                }
            }
        }
        out
    }

    fn metrics(&self) -> http::Response {
        let cfg = self.config();
        let mut g = prom::AgentGauges::default();
        if let Ok(cfg) = &cfg {
            self.take_execs(cfg);
            let (store, sdn, _) = Self::probe(cfg);
            g.store_up = store;
            g.sdn_up = sdn;
            g.pool_used = Self::pool_used(cfg);
        }
        {
            let st = self.status.lock().expect("status lock");
            g.config_ok = cfg.is_ok();
            g.artifacts_current = st.upkeep.current();
            g.gc_removed = st.gc_removed;
            g.gc_runs = st.gc_runs.clone();
            g.rebuilds = st.rebuilds.clone();
            g.kubeconfig_ok = st.kubeconfig.as_ref().map(Result::is_ok);
        }
        let ex = self.execs.lock().expect("execs lock");
        http::Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: prom::render(&ex.agg, &g),
        }
    }

    fn readyz(&self) -> http::Response {
        let mut why = Vec::new();
        if let Some(Err(e)) = &self.status.lock().expect("status lock").kubeconfig {
            why.push(format!("kubeconfig: {e}"));
        }
        match self.config() {
            Err(e) => why.push(format!("configuration: {e}")),
            Ok(cfg) => {
                {
                    let st = self.status.lock().expect("status lock");
                    if !st.upkeep.current() {
                        why.push(format!(
                            "artifacts: {}",
                            st.upkeep.reason().unwrap_or("not built yet")
                        ));
                    }
                }
                let (store, _, mut probe_why) = Self::probe(&cfg);
                if store != Some(true) {
                    why.append(&mut probe_why);
                }
            }
        }
        if why.is_empty() {
            http::Response::text(200, "ok\n")
        } else {
            http::Response::text(503, format!("not ready:\n{}\n", why.join("\n")))
        }
    }

    fn route(&self, path: &str) -> http::Response {
        match path {
            "/metrics" => self.metrics(),
            "/readyz" => self.readyz(),
            "/healthz" => http::Response::text(200, "ok\n"),
            _ => http::Response::text(404, "not found: /metrics, /readyz, /healthz\n"),
        }
    }
}

/// Runs the agent (forever, unless `--once`).
pub fn run(args: &AgentArgs, out: &mut dyn std::io::Write) -> Result<i32, CtlError> {
    if !args.config.is_file() {
        return Err(CtlError::Message(format!(
            "--config {}: no such file",
            args.config.display()
        )));
    }
    if args.gc_interval.is_zero()
        || args.upkeep_interval.is_zero()
        || args.kubeconfig_interval.is_zero()
    {
        return Err(CtlError::Message(
            "--gc-interval, --upkeep-interval and --kubeconfig-interval must be more than 0".into(),
        ));
    }
    let mut env = super::process_env();
    env.retain(|(k, _)| k != "TENET_CONFIG");
    env.push((
        "TENET_CONFIG".into(),
        args.config.to_string_lossy().into_owned(),
    ));
    let agent = Arc::new(Agent {
        args: args.clone(),
        env,
        execs: Mutex::new(Execs {
            consumer: None,
            agg: prom::ExecAggregates::default(),
        }),
        status: Mutex::new(Status::default()),
    });
    if args.once {
        let kc = agent.refresh_kubeconfig();
        let up = agent.upkeep();
        let gc = agent.gc();
        if let (Some(r), Some(dest)) = (&kc, &args.kubeconfig.write_kubeconfig) {
            match r {
                Ok(c) => writeln!(
                    out,
                    "kubeconfig: {} {}",
                    format!("{c:?}").to_lowercase(),
                    dest.display()
                ),
                Err(e) => writeln!(out, "kubeconfig: failed: {e}"),
            }
            .map_err(CtlError::from_err)?;
        }
        writeln!(
            out,
            "upkeep: {}",
            match &up {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("failed: {e}"),
            }
        )
        .map_err(CtlError::from_err)?;
        match &gc {
            Ok(r) => writeln!(
                out,
                "gc: runtime {:?}, {} sandboxes, removed {}, in flight {}, too young {}, claims released {}",
                r.runtime,
                r.sandboxes,
                r.removed.len(),
                r.decision.in_flight.len(),
                r.decision.young.len(),
                r.released
            ),
            Err(e) => writeln!(out, "gc: failed: {e}"),
        }
        .map_err(CtlError::from_err)?;
        let kc_failed = kc.is_some_and(|r| r.is_err());
        return Ok(i32::from(up.is_err() || gc.is_err() || kc_failed));
    }
    let (listener, addr) = http::bind(args.listen)
        .map_err(|e| CtlError::Message(format!("--listen {}: {e}", args.listen)))?;
    // Tests and scripts bind port 0 and read the address from here.
    writeln!(out, "listening on http://{addr}").map_err(CtlError::from_err)?;
    out.flush().map_err(CtlError::from_err)?;
    // The kubeconfig first: it takes milliseconds, the upkeep may compile.
    agent.refresh_kubeconfig();
    let _ = agent.upkeep();
    let a = Arc::clone(&agent);
    let handler: Arc<http::Handler> = Arc::new(move |p: &str| a.route(p));
    std::thread::Builder::new()
        .name("agent-http".into())
        .spawn(move || http::serve(listener, handler))
        .map_err(CtlError::from_err)?;
    let mut next_upkeep = Instant::now() + args.upkeep_interval;
    // The first GC after one period: a node that just booted lets the
    // runtime restore its sandboxes first.
    let mut next_gc = Instant::now() + args.gc_interval;
    let mut next_kubeconfig = Instant::now() + args.kubeconfig_interval;
    loop {
        let now = Instant::now();
        if now >= next_kubeconfig {
            agent.refresh_kubeconfig();
            next_kubeconfig = Instant::now() + args.kubeconfig_interval;
        }
        if now >= next_upkeep {
            let _ = agent.upkeep();
            next_upkeep = Instant::now() + args.upkeep_interval;
        }
        if now >= next_gc {
            let _ = agent.gc();
            next_gc = Instant::now() + args.gc_interval;
        }
        // Keeps the records file short even when nobody scrapes.
        if let Ok(cfg) = agent.config() {
            agent.take_execs(&cfg);
        }
        let wake = next_upkeep.min(next_gc).min(next_kubeconfig);
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        for bad in ["", "s", "1.5s", "10x", "-1s", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_network_entry_is_found_in_the_conf_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("00-other.conflist"),
            r#"{"name":"other","plugins":[{"type":"tenet","pipeline":"/x"}]}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("10-broken.conflist"), "{").unwrap();
        std::fs::write(
            d.path().join("20-tenet.conflist"),
            r#"{"name":"tenet","plugins":[{"type":"bridge"},{"type":"tenet","pipeline":"/p.toml"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        let (f, p) = network_plugin(d.path(), "tenet").unwrap();
        assert!(f.ends_with("20-tenet.conflist"));
        assert_eq!(p["pipeline"], "/p.toml");
        assert!(network_plugin(d.path(), "absent").is_none());
        assert!(network_plugin(&d.path().join("nope"), "tenet").is_none());
    }
}
