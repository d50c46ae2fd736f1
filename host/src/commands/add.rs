//! ADD: request → pipeline → validated plan → apply → result.

use super::{load_config, load_pipeline};
use crate::apply::{Backends, Failpoints};
use crate::cni::{CniError, Invocation, code};
use crate::plan::{Dns, Plan};

/// Plans the attachment with the pipeline, applies the plan, and renders the
/// result in the request's version.
pub(super) fn add(env: &[(String, String)], inv: &Invocation) -> Result<String, CniError> {
    let (cfg, _span) = load_config(env, inv)?;
    let mut request = inv
        .to_request()
        .ok_or_else(|| CniError::new(code::INTERNAL, "internal error", "ADD without a request"))?;
    // Pod and namespace labels from the API server, when the network asks
    // for them (before the pipeline: stages decide with them).
    crate::kube::enrich_for_add(env, &cfg, &inv.config.plugin, &mut request)?;
    let pipeline = load_pipeline(&cfg)?;
    let dns = network_dns(inv);
    let initial = Plan::initial(&request.ifname, request.mac.as_deref(), dns);
    let outcome = pipeline.run(&request, initial).map_err(|e| e.to_cni())?;
    note_pipeline(&pipeline, &outcome);
    // Back to the daemon's pool before the apply: a concurrent ADD can run
    // it meanwhile instead of loading another.
    drop(pipeline);
    if dry_run(env) {
        // Never a success: a runtime must not take a dry run for a pod
        // with a network.
        let plan = serde_json::to_string(&outcome.plan).unwrap_or_default();
        return Err(CniError::new(
            code::DRY_RUN,
            "dry run (TENET_DRY_RUN): the plan is valid and was not applied",
            format!("plan: {plan}"),
        ));
    }
    let valid = outcome.valid.as_ref().ok_or_else(|| {
        CniError::new(
            code::INTERNAL,
            "internal error",
            "ADD planned without a typed plan",
        )
    })?;
    let backends = Backends::open(&cfg)?;
    let engine = backends
        .engine(&cfg)
        .with_failpoints(Failpoints::from_env(env));
    let key = super::attachment_key(inv);
    let result = engine
        .add(&key, &request.netns, valid)
        .map_err(|e| e.to_cni("ADD"))?;
    Ok(result.render(&inv.cni_version).to_string())
}

/// The stages' time and fuel, and whether they ran from the bundle, for
/// the exec record (`crate::metrics`).
fn note_pipeline(pipeline: &crate::policy::Pipeline, outcome: &crate::policy::Outcome) {
    use crate::metrics::StageSample;
    use crate::policy::StageRun;
    crate::metrics::note(|r| {
        r.tenant = outcome.plan.tenant.clone();
        if !outcome.reports.is_empty() {
            r.bundled = Some(pipeline.is_bundled());
        }
        r.stages = outcome
            .reports
            .iter()
            .map(|s| match &s.run {
                StageRun::Ran { fuel, elapsed } => StageSample {
                    name: s.stage.clone(),
                    us: elapsed.as_micros() as u64,
                    fuel: *fuel,
                    skipped: false,
                },
                StageRun::Skipped(_) => StageSample {
                    name: s.stage.clone(),
                    us: 0,
                    fuel: 0,
                    skipped: true,
                },
            })
            .collect();
    });
}

/// `TENET_DRY_RUN` set (and not `0`): ADD stops after planning with code
/// 110 and the plan in `details` (operators' dry run; the pipeline
/// benchmark).
fn dry_run(env: &[(String, String)]) -> bool {
    env.iter()
        .any(|(k, v)| k == "TENET_DRY_RUN" && !v.is_empty() && v != "0")
}

/// The network configuration's `dns` key, as the plan's starting DNS.
fn network_dns(inv: &Invocation) -> Dns {
    inv.config.dns.clone().unwrap_or_default()
}
