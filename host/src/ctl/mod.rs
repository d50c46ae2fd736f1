//! `tenetctl`: the operator and policy-author CLI, built on the same library
//! and engine profile as the CNI binary (so `plan` and `policy test` run
//! exactly what production runs). Each subcommand has its own module.

pub mod agent;
pub mod bench;
pub mod compile;
pub mod demo;
pub mod golden;
pub mod inspect;
pub mod install;
pub mod ipam;
pub mod midonet;
pub mod new;
pub mod node_kubeconfig;
pub mod oci;
pub mod plan;

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::policy::{Manifest, Pipeline, PipelineOptions, cache::Builder};

/// Options shared by every subcommand that loads modules.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ModuleArgs {
    /// Directory holding `<name>.wasm` modules (repeatable; searched first).
    #[arg(long = "module-dir", value_name = "DIR")]
    pub module_dirs: Vec<PathBuf>,
    /// Artifact cache root (default: from the tenet configuration).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// A CLI failure: a message naming the file and field at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CtlError(pub String);

impl CtlError {
    /// Wraps anything displayable.
    pub fn msg(m: impl std::fmt::Display) -> Self {
        CtlError(m.to_string())
    }
}

/// The process environment as pairs (what `Config::load` takes).
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect()
}

impl ModuleArgs {
    /// Pipeline options from the configuration plus these flags.
    pub fn options(&self) -> Result<PipelineOptions, CtlError> {
        let cfg = Config::load(&process_env(), None).map_err(CtlError::msg)?;
        let mut module_dirs = self.module_dirs.clone();
        module_dirs.extend(cfg.module_search_path());
        let authority = cfg.addresses.authority().map_err(CtlError::msg)?;
        Ok(PipelineOptions {
            module_dirs,
            cache_dir: self.cache_dir.clone().unwrap_or(cfg.cache_dir),
            builder: Builder::InProcess,
            one_shot: false,
            authority,
        })
    }
}

/// Loads a manifest and its modules.
pub fn load_pipeline(
    path: &Path,
    opts: &PipelineOptions,
) -> Result<(Manifest, Pipeline), CtlError> {
    let manifest = Manifest::load(path).map_err(CtlError::msg)?;
    let pipeline = Pipeline::load(&manifest, opts)
        .map_err(|e| CtlError(format!("{}: {e}", path.display())))?;
    Ok((manifest, pipeline))
}
