//! DEL: frees what ADD made, from the attachment's record.

use super::{attachment_key, load_config};
use crate::apply::{Backends, Failpoints};
use crate::cni::{CniError, Invocation};

/// DEL: tears down what ADD made; succeeds on partial or missing state.
/// Does not run the pipeline: nothing a module decides can keep a pod's
/// resources from being freed.
pub(super) fn del(
    env: &[(String, String)],
    inv: &Invocation,
    on_cut_off: Option<&(dyn Fn() + Sync)>,
) -> Result<String, CniError> {
    let (cfg, _span) = load_config(env, inv)?;
    let backends = Backends::open(&cfg)?;
    let mut engine = backends
        .engine(&cfg)
        .with_failpoints(Failpoints::from_env(env));
    if let Some(f) = on_cut_off {
        engine = engine.with_cut_off(f);
    }
    engine
        .del(&attachment_key(inv), inv.env.netns.as_deref())
        .map_err(|e| e.to_cni("DEL"))?;
    Ok(String::new())
}
