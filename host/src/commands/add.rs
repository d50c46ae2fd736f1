//! ADD: request → pipeline → validated plan → (apply).

use super::{load_config, load_pipeline};
use crate::cni::{CniError, Invocation, code};
use crate::plan::{Dns, Plan};

/// Plans the attachment. Applying the plan (address store, SDN, netns) is
/// not built yet, so ADD stops after validation with a clear error that
/// carries the plan.
pub(super) fn add(env: &[(String, String)], inv: &Invocation) -> Result<String, CniError> {
    let cfg = load_config(env, inv)?;
    let request = inv
        .to_request()
        .ok_or_else(|| CniError::new(code::INTERNAL, "internal error", "ADD without a request"))?;
    let pipeline = load_pipeline(&cfg)?;
    let dns = network_dns(inv);
    let initial = Plan::initial(&request.ifname, request.mac.as_deref(), dns);
    let outcome = pipeline.run(&request, initial).map_err(|e| e.to_cni())?;
    let plan = serde_json::to_string(&outcome.plan).unwrap_or_default();
    Err(CniError::new(
        code::NOT_IMPLEMENTED,
        "plan is valid, but applying plans is not implemented yet",
        format!("plan: {plan}"),
    ))
}

/// The network configuration's `dns` key, as the plan's starting DNS.
fn network_dns(inv: &Invocation) -> Dns {
    inv.config.dns.clone().unwrap_or_default()
}
