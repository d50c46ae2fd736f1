//! CHECK: compares what is wired with what ADD recorded.

use super::{attachment_key, load_config};
use crate::apply::Backends;
use crate::cni::result::CniResult;
use crate::cni::{CniError, Invocation};

/// CHECK verifies what ADD created, naming the first difference.
pub(super) fn check(env: &[(String, String)], inv: &Invocation) -> Result<String, CniError> {
    let (cfg, _span) = load_config(env, inv)?;
    let prev = inv
        .config
        .prev_result
        .as_ref()
        .map(CniResult::parse)
        .transpose()?;
    let backends = Backends::open(&cfg)?;
    let engine = backends.engine(&cfg);
    engine
        .check(
            &attachment_key(inv),
            inv.env.netns.as_deref().unwrap_or_default(),
            prev.as_ref(),
        )
        .map_err(|e| e.to_cni("CHECK"))?;
    Ok(String::new())
}
