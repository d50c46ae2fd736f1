//! GC: frees the network's attachments the runtime no longer knows.

use super::load_config;
use crate::apply::Backends;
use crate::cni::{CniError, Invocation};

/// GC: frees every attachment of the network not in
/// `cni.dev/valid-attachments`.
pub(super) fn gc(env: &[(String, String)], inv: &Invocation) -> Result<String, CniError> {
    let (cfg, _span) = load_config(env, inv)?;
    let backends = Backends::open(&cfg)?;
    let engine = backends.engine(&cfg);
    let valid: Vec<(String, String)> = inv
        .config
        .valid_attachments
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let summary = engine
        .gc(&inv.config.name, &valid)
        .map_err(|e| e.to_cni("GC"))?;
    tracing::info!(
        torn_down = summary.torn_down.len(),
        in_flight = summary.in_flight.len(),
        released = summary.released.len(),
        idle_tenants_removed = summary.idle_tenants_removed.len(),
        "GC done"
    );
    Ok(String::new())
}
