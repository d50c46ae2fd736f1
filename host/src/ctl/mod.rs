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

/// A CLI failure. Its `Display` is the whole message an operator reads
/// (naming the flag, file or field at fault); when another part of tenet or
/// the system failed, that error is kept as the source, so callers (the
/// agent, tests) can look at what failed instead of parsing text.
#[derive(Debug)]
pub enum CtlError {
    /// A refusal the command words itself: bad flags, files or state.
    Message(String),
    /// A failure underneath, with the command's context when it adds one.
    Failed {
        /// What the command was doing (`None`: the source says it all).
        context: Option<String>,
        /// The error that caused it.
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl CtlError {
    /// A message the command words itself.
    pub fn msg(m: impl std::fmt::Display) -> Self {
        CtlError::Message(m.to_string())
    }

    /// A failure underneath, kept as the source (`map_err(CtlError::from_err)`).
    pub fn from_err(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        CtlError::Failed {
            context: None,
            source: e.into(),
        }
    }

    /// A failure underneath, after what the command was doing.
    pub fn context(
        context: impl std::fmt::Display,
        e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        CtlError::Failed {
            context: Some(context.to_string()),
            source: e.into(),
        }
    }
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtlError::Message(m) => f.write_str(m),
            CtlError::Failed {
                context: Some(c),
                source,
            } => write!(f, "{c}: {source}"),
            CtlError::Failed {
                context: None,
                source,
            } => write!(f, "{source}"),
        }
    }
}

impl std::error::Error for CtlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CtlError::Message(_) => None,
            CtlError::Failed { source, .. } => Some(source.as_ref()),
        }
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
        let cfg = Config::load(&process_env(), None).map_err(CtlError::from_err)?;
        let mut module_dirs = self.module_dirs.clone();
        module_dirs.extend(cfg.module_search_path());
        let authority = cfg.addresses.authority().map_err(CtlError::from_err)?;
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
    let manifest = Manifest::load(path).map_err(CtlError::from_err)?;
    let pipeline =
        Pipeline::load(&manifest, opts).map_err(|e| CtlError::context(path.display(), e))?;
    Ok((manifest, pipeline))
}

#[cfg(test)]
mod tests {
    use super::CtlError;
    use std::error::Error;

    #[test]
    fn a_failure_underneath_is_kept_as_the_source() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let e = CtlError::context("/etc/tenet/tenet.toml", io);
        assert_eq!(e.to_string(), "/etc/tenet/tenet.toml: denied");
        let src = e.source().expect("source kept");
        let io = src.downcast_ref::<std::io::Error>().expect("the io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);

        let e = CtlError::from_err(std::io::Error::other("gone"));
        assert_eq!(e.to_string(), "gone");
        assert!(e.source().is_some());

        let e = CtlError::msg("--pipeline: not a file");
        assert_eq!(e.to_string(), "--pipeline: not a file");
        assert!(e.source().is_none());
    }
}
