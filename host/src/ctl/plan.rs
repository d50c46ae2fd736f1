//! `tenetctl plan`: run a pipeline on a request and show the plan after each
//! stage, with the fuel and time each used. Nothing is applied.

use std::path::PathBuf;

use serde_json::json;

use super::{CtlError, ModuleArgs};
use crate::plan::{Command, Dns, Kv, Plan, Request};
use crate::policy::{Manifest, Pipeline, StageRun};

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
    /// Override a stage's settings for this run, STAGE=JSON (repeatable). A
    /// JSON object is merged into the stage's settings (keys given here
    /// win, `null` removes a key); anything else replaces them.
    #[arg(long = "settings", value_name = "STAGE=JSON")]
    pub settings: Vec<String>,
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
                    .map_err(|e| CtlError::Message(format!("{}: {e}", p.display())))?;
                serde_json::from_str(&text)
                    .map_err(|e| CtlError::Message(format!("{}: {e}", p.display())))?
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
    let mut manifest = Manifest::load(&args.pipeline).map_err(CtlError::from_err)?;
    for o in &args.settings {
        let (stage, json) = o
            .split_once('=')
            .ok_or_else(|| CtlError::Message(format!("--settings {o:?}: expected STAGE=JSON")))?;
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| CtlError::Message(format!("--settings {stage}: not JSON: {e}")))?;
        override_settings(&mut manifest, stage, &value)
            .map_err(|e| CtlError::Message(format!("--settings {e}")))?;
    }
    let w =
        |out: &mut dyn std::io::Write, s: String| writeln!(out, "{s}").map_err(CtlError::from_err);
    // Settings against each module's schema before any module runs.
    if let Err(e) = crate::policy::metadata::check_manifest(&manifest, &opts.module_dirs) {
        let cni = e.to_cni();
        w(
            out,
            format!("plan failed: {e}\nCNI error code {}: {}", cni.code, cni.msg),
        )?;
        return Ok(1);
    }
    let pipeline = Pipeline::load(&manifest, &opts)
        .map_err(|e| CtlError::Message(format!("{}: {e}", args.pipeline.display())))?;
    let result = pipeline.run(&request, initial_plan(&request));
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
                    serde_json::to_string_pretty(&doc).map_err(CtlError::from_err)?,
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
                let mut before = initial_plan(&request);
                let mut warnings = 0;
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
                        serde_json::to_string_pretty(&r.plan).map_err(CtlError::from_err)?,
                    )?;
                    for d in dropped(&before, &r.plan) {
                        warnings += 1;
                        w(out, format!("WARNING: stage {} dropped {d}", r.stage))?;
                    }
                    before = r.plan.clone();
                }
                if warnings == 0 {
                    w(out, "\nfinal plan: valid".into())?;
                } else {
                    w(
                        out,
                        format!(
                            "\nfinal plan: valid, with {warnings} warning(s): a later stage replaced \
                             what an earlier one planned (stage order decides; see docs/policy-authoring.md)"
                        ),
                    )?;
                }
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

/// Overrides a stage's settings in a loaded manifest: a JSON object is
/// merged into the stage's settings object (given keys win, `null` removes
/// a key, nested objects merge), anything else replaces them whole.
pub fn override_settings(
    manifest: &mut Manifest,
    stage: &str,
    value: &serde_json::Value,
) -> Result<(), String> {
    let names: Vec<String> = manifest.stages.iter().map(|s| s.name.clone()).collect();
    let s = manifest
        .stages
        .iter_mut()
        .find(|s| s.name == stage)
        .ok_or_else(|| format!("{stage}: no such stage (stages: {})", names.join(", ")))?;
    let mut current: serde_json::Value = if s.settings.trim().is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        serde_json::from_str(&s.settings).map_err(|e| format!("{stage}: {e}"))?
    };
    merge(&mut current, value);
    s.settings = current.to_string();
    Ok(())
}

/// JSON merge patch (RFC 7386) of `patch` into `target`.
fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// What `after` no longer has of `before`: interfaces, address requests of
/// an interface, routes, DNS servers, sysctls and annotations an earlier
/// stage planned (a stage that replaces rather than refines).
pub fn dropped(before: &Plan, after: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for i in &before.interfaces {
        match after.interface(&i.name) {
            None => out.push(format!("interface {}", i.name)),
            Some(a) => {
                for r in &i.addresses {
                    if !a.addresses.contains(r) {
                        out.push(format!(
                            "an address request of {} ({}): {}",
                            i.name,
                            match r.family {
                                crate::plan::IpFamily::Ipv4 => "IPv4",
                                crate::plan::IpFamily::Ipv6 => "IPv6",
                            },
                            serde_json::to_string(r).unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    for r in &before.routes {
        if !after.routes.contains(r) {
            out.push(format!("route {} via {}", r.dst, r.interface));
        }
    }
    for n in &before.dns.nameservers {
        if !after.dns.nameservers.contains(n) {
            out.push(format!("nameserver {n}"));
        }
    }
    for (what, b, a) in [
        ("sysctl", &before.sysctls, &after.sysctls),
        ("annotation", &before.annotations, &after.annotations),
    ] {
        for kv in b {
            if !a.iter().any(|x| x.key == kv.key) {
                out.push(format!("{what} {}", kv.key));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{AddressRequest, IpFamily};

    #[test]
    fn settings_overrides_merge_objects() {
        let mut m = Manifest::parse(
            std::path::Path::new("/p.toml"),
            "[[stage]]\nname = \"a\"\nmodule = \"m\"\n[stage.settings]\nx = 1\ny = { z = 2, w = 3 }\n",
        )
        .unwrap();
        override_settings(
            &mut m,
            "a",
            &serde_json::json!({"y": {"z": 9, "w": null}, "n": true}),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&m.stages[0].settings).unwrap();
        assert_eq!(v, serde_json::json!({"x": 1, "y": {"z": 9}, "n": true}));
        assert!(
            override_settings(&mut m, "b", &serde_json::json!({}))
                .unwrap_err()
                .contains("no such stage")
        );
    }

    #[test]
    fn a_replaced_address_request_is_reported() {
        let mut before = Plan::initial("eth0", None, Dns::default());
        before.interfaces[0].addresses.push(AddressRequest {
            family: IpFamily::Ipv6,
            pool: None,
            static_address: Some("fd00::5".into()),
        });
        let mut after = before.clone();
        assert!(dropped(&before, &after).is_empty());
        after.interfaces[0].addresses[0].family = IpFamily::Ipv4;
        let d = dropped(&before, &after);
        assert_eq!(d.len(), 1);
        assert!(d[0].contains("eth0 (IPv6)"), "{d:?}");
    }
}
