//! `tenetctl plan`: run a pipeline on a request and show the plan after each
//! stage, with the fuel and time each used. Nothing is applied.

use std::path::PathBuf;

use serde_json::json;

use super::{CtlError, ModuleArgs, load_pipeline};
use crate::plan::{Command, Dns, Kv, Plan, Request};
use crate::policy::StageRun;

/// Arguments of `tenetctl plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The pipeline manifest.
    #[arg(long, value_name = "FILE")]
    pub pipeline: PathBuf,
    /// A request as JSON (the `request` record; see conf/examples/). Flags
    /// below override its fields.
    #[arg(long, value_name = "FILE")]
    pub request: Option<PathBuf>,
    /// K8S_POD_NAMESPACE.
    #[arg(long)]
    pub namespace: Option<String>,
    /// K8S_POD_NAME.
    #[arg(long)]
    pub pod: Option<String>,
    /// CNI_CONTAINERID.
    #[arg(long)]
    pub container_id: Option<String>,
    /// CNI_IFNAME.
    #[arg(long)]
    pub ifname: Option<String>,
    /// Network name.
    #[arg(long)]
    pub network: Option<String>,
    /// A pod label, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub labels: Vec<Kv>,
    /// A pod annotation, KEY=VALUE (repeatable).
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub annotations: Vec<Kv>,
    /// A CNI_ARGS pair, KEY=VALUE (repeatable).
    #[arg(long = "cni-arg", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub cni_args: Vec<Kv>,
    /// A runtimeConfig `ips` entry (repeatable).
    #[arg(long = "ip")]
    pub ips: Vec<String>,
    /// Print one JSON document instead of the per-stage listing.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub modules: ModuleArgs,
}

/// Parses KEY=VALUE.
pub fn parse_kv(s: &str) -> Result<Kv, String> {
    s.split_once('=')
        .map(|(k, v)| Kv::new(k, v))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// A sample pod, so `tenetctl plan --pipeline X` works with no other flag.
pub fn sample_request() -> Request {
    Request {
        command: Command::Add,
        container_id: "0123456789abcdef".into(),
        ifname: "eth0".into(),
        netns: "/var/run/netns/sample".into(),
        network: "tenet".into(),
        pod_namespace: Some("team-a".into()),
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

impl PlanArgs {
    fn request(&self) -> Result<Request, CtlError> {
        let mut r = match &self.request {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| CtlError(format!("{}: {e}", p.display())))?;
                serde_json::from_str(&text)
                    .map_err(|e| CtlError(format!("{}: {e}", p.display())))?
            }
            None => sample_request(),
        };
        if let Some(v) = &self.namespace {
            r.pod_namespace = Some(v.clone());
        }
        if let Some(v) = &self.pod {
            r.pod_name = Some(v.clone());
        }
        if let Some(v) = &self.container_id {
            r.container_id = v.clone();
        }
        if let Some(v) = &self.ifname {
            r.ifname = v.clone();
        }
        if let Some(v) = &self.network {
            r.network = v.clone();
        }
        r.labels.extend(self.labels.iter().cloned());
        r.annotations.extend(self.annotations.iter().cloned());
        r.cni_args.extend(self.cni_args.iter().cloned());
        r.runtime_ips.extend(self.ips.iter().cloned());
        Ok(r)
    }
}

/// The plan a pipeline starts from for a request.
pub fn initial_plan(r: &Request) -> Plan {
    Plan::initial(&r.ifname, r.mac.as_deref(), Dns::default())
}

/// Runs `tenetctl plan`; returns the process exit code.
pub fn run(args: &PlanArgs, out: &mut dyn std::io::Write) -> Result<i32, CtlError> {
    let request = args.request()?;
    let opts = args.modules.options()?;
    let (manifest, pipeline) = load_pipeline(&args.pipeline, &opts)?;
    let result = pipeline.run(&request, initial_plan(&request));
    let w = |out: &mut dyn std::io::Write, s: String| writeln!(out, "{s}").map_err(CtlError::msg);
    match result {
        Ok(outcome) => {
            if args.json {
                let stages: Vec<_> = outcome
                    .reports
                    .iter()
                    .map(|r| match &r.run {
                        StageRun::Ran { fuel, elapsed } => json!({
                            "stage": r.stage, "status": "ran", "fuel": fuel,
                            "elapsedUs": elapsed.as_micros() as u64, "plan": r.plan,
                        }),
                        StageRun::Skipped(e) => json!({
                            "stage": r.stage, "status": "skipped", "error": e.to_string(), "plan": r.plan,
                        }),
                    })
                    .collect();
                let doc = json!({ "pipeline": manifest.path, "request": request, "stages": stages, "plan": outcome.plan });
                w(
                    out,
                    serde_json::to_string_pretty(&doc).map_err(CtlError::msg)?,
                )?;
            } else {
                w(
                    out,
                    format!(
                        "pipeline {} ({} stages)",
                        manifest.path.display(),
                        outcome.reports.len()
                    ),
                )?;
                for (spec, r) in manifest.stages.iter().zip(&outcome.reports) {
                    let status = match &r.run {
                        StageRun::Ran { fuel, elapsed } => {
                            format!("ran, fuel {fuel}, {:.3} ms", elapsed.as_secs_f64() * 1e3)
                        }
                        StageRun::Skipped(e) => format!("SKIPPED ({e})"),
                    };
                    w(
                        out,
                        format!("\n== stage {} ({}): {status}", r.stage, spec.module),
                    )?;
                    w(
                        out,
                        serde_json::to_string_pretty(&r.plan).map_err(CtlError::msg)?,
                    )?;
                }
                w(out, "\nfinal plan: valid".into())?;
            }
            Ok(0)
        }
        Err(e) => {
            let cni = e.to_cni();
            w(
                out,
                format!("plan failed: {e}\nCNI error code {}: {}", cni.code, cni.msg),
            )?;
            Ok(1)
        }
    }
}
