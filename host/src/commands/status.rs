//! STATUS: is the plugin ready to serve ADD?

use super::{load_config, load_manifest, load_pipeline};
use crate::apply::Backends;
use crate::cni::{CniError, Invocation, code};
use crate::config::Config;
use crate::policy::Pipeline;
use crate::policy::cache::ArtifactCache;

/// STATUS: every stage's settings pass its module's schema and its own
/// `validate-settings` (a typo in a setting would fail every ADD with 105).
/// The verdict is cached per version of the pipeline and its modules, so
/// only the first STATUS after a change runs the modules.
fn settings_valid(cfg: &Config, pipeline: &Pipeline) -> Result<(), CniError> {
    let Some(path) = cfg.pipeline.as_deref() else {
        return Ok(());
    };
    let cache = ArtifactCache::new(&cfg.cache_dir);
    let manifest = load_manifest(path, &cache)?;
    crate::policy::metadata::status_check(
        path,
        &manifest,
        pipeline,
        &cfg.module_search_path(),
        &cache,
    )
    .map_err(|e| e.to_cni())
}

/// STATUS: ready when the pipeline and its artifacts load, every stage's
/// settings are valid, and every backend answers; code 50 otherwise.
pub(super) fn status(env: &[(String, String)], inv: &Invocation) -> Result<String, CniError> {
    let not_ready = |e: CniError| {
        CniError::new(
            code::NOT_AVAILABLE,
            "tenet is not ready",
            if e.details.is_empty() {
                e.msg
            } else {
                format!("{}: {}", e.msg, e.details)
            },
        )
    };
    let (cfg, _span) = load_config(env, inv).map_err(not_ready)?;
    let pipeline = load_pipeline(&cfg).map_err(not_ready)?;
    settings_valid(&cfg, &pipeline).map_err(not_ready)?;
    let backends = Backends::open(&cfg).map_err(not_ready)?;
    backends
        .engine(&cfg)
        .status()
        .map_err(|e| not_ready(e.to_cni("STATUS")))?;
    Ok(String::new())
}
