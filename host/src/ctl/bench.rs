//! `tenetctl policy bench`: time and fuel per stage over N runs of a
//! pipeline on one request, through the production engine (precompiled
//! artifacts, the pipeline's bundle when there is one). In-process: it
//! measures the stages, not the exec of the CNI binary (`make bench` does
//! that).

use std::path::PathBuf;
use std::time::Duration;

use super::{CtlError, ModuleArgs, load_pipeline};
use crate::policy::StageRun;

/// Arguments of `tenetctl policy bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The pipeline manifest.
    #[arg(long, value_name = "FILE")]
    pub pipeline: PathBuf,
    /// A request as JSON (default: the sample pod of `tenetctl plan`).
    #[arg(long, value_name = "FILE")]
    pub request: Option<PathBuf>,
    /// K8S_POD_NAMESPACE of the request.
    #[arg(long)]
    pub namespace: Option<String>,
    /// How many runs.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub requests: usize,
    #[command(flatten)]
    pub modules: ModuleArgs,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// Runs `tenetctl policy bench`.
pub fn run(args: &BenchArgs, out: &mut dyn std::io::Write) -> Result<i32, CtlError> {
    if args.requests == 0 {
        return Err(CtlError::Message("--requests: must be at least 1".into()));
    }
    let mut request = match &args.request {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| CtlError::Message(format!("{}: {e}", p.display())))?;
            serde_json::from_str(&text)
                .map_err(|e| CtlError::Message(format!("{}: {e}", p.display())))?
        }
        None => super::plan::sample_request(),
    };
    if let Some(ns) = &args.namespace {
        request.pod_namespace = Some(ns.clone());
    }
    let opts = args.modules.options()?;
    let (manifest, pipeline) = load_pipeline(&args.pipeline, &opts)?;
    let stages = manifest.stages.len();
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(args.requests); stages];
    let mut fuel: Vec<(u64, u64)> = vec![(u64::MAX, 0); stages];
    let mut totals = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let started = std::time::Instant::now();
        let outcome = pipeline
            .run(&request, super::plan::initial_plan(&request))
            .map_err(|e| CtlError::Message(format!("the pipeline failed: {e}")))?;
        totals.push(started.elapsed());
        for (i, r) in outcome.reports.iter().enumerate() {
            if let StageRun::Ran { fuel: f, elapsed } = r.run {
                times[i].push(elapsed);
                fuel[i] = (fuel[i].0.min(f), fuel[i].1.max(f));
            }
        }
    }
    let w =
        |out: &mut dyn std::io::Write, s: String| writeln!(out, "{s}").map_err(CtlError::from_err);
    w(
        out,
        format!(
            "pipeline {} ({} stages, {}), {} runs",
            manifest.path.display(),
            stages,
            if pipeline.is_bundled() {
                "bundled"
            } else {
                "stage by stage"
            },
            args.requests
        ),
    )?;
    w(
        out,
        format!(
            "{:<16} {:>10} {:>10} {:>10} {:>12}",
            "stage", "mean µs", "p50 µs", "p99 µs", "fuel"
        ),
    )?;
    let row = |out: &mut dyn std::io::Write, name: &str, t: &mut Vec<Duration>, f: String| {
        t.sort();
        let mean = t.iter().sum::<Duration>() / t.len().max(1) as u32;
        w(
            out,
            format!(
                "{name:<16} {:>10} {:>10} {:>10} {f:>12}",
                us(mean),
                us(percentile(t, 0.5)),
                us(percentile(t, 0.99))
            ),
        )
    };
    for (i, spec) in manifest.stages.iter().enumerate() {
        let f = match fuel[i] {
            (u64::MAX, _) => "skipped".to_owned(),
            (lo, hi) if lo == hi => lo.to_string(),
            (lo, hi) => format!("{lo}-{hi}"),
        };
        row(out, &spec.name, &mut times[i], f)?;
    }
    row(out, "(pipeline)", &mut totals, String::new())?;
    Ok(0)
}
