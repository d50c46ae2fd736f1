//! The CNI commands: one function per command, orchestration only.
//!
//! [`run`] is the whole `tenet` binary minus process plumbing, so tests can
//! drive it in-process with an explicit environment and stdin.

mod add;

use std::path::Path;

use crate::cni::{self, CniError, Command, Invocation, code};
use crate::config::Config;
use crate::policy::cache::Builder;
use crate::policy::{Manifest, Pipeline, PipelineOptions};

/// What the process prints on stdout and exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The CNI document for stdout (empty for silent success).
    pub stdout: String,
    /// The exit code (0 on success).
    pub exit_code: i32,
}

impl Reply {
    fn ok(stdout: String) -> Self {
        Reply {
            stdout,
            exit_code: 0,
        }
    }

    fn error(e: &CniError, version: &str) -> Self {
        Reply {
            stdout: e.to_json(version),
            exit_code: 1,
        }
    }
}

/// Handles one invocation: parses env and stdin, dispatches, and renders the
/// reply in the request's CNI version.
pub fn run(env: &[(String, String)], stdin: &[u8]) -> Reply {
    let inv = match cni::parse_invocation(env.iter().cloned(), stdin) {
        Ok(inv) => inv,
        Err(e) => return Reply::error(&e, &cni::error_version(stdin)),
    };
    let version = inv.cni_version.clone();
    let result = match inv.command {
        Command::Version => Ok(cni::version_reply(Some(&inv.cni_version))),
        Command::Add => add::add(env, &inv),
        Command::Check => check(&inv),
        Command::Del => Ok(String::new()),
        Command::Gc => Ok(String::new()),
        Command::Status => status(env, &inv),
    };
    match result {
        Ok(out) => Reply::ok(out),
        Err(e) => {
            tracing::warn!(code = e.code, msg = %e.msg, details = %e.details, "command failed");
            Reply::error(&e, &version)
        }
    }
}

/// Loads the host configuration with the network's overrides, and sets up
/// logging (stderr or a file; never stdout).
pub(crate) fn load_config(env: &[(String, String)], inv: &Invocation) -> Result<Config, CniError> {
    let cfg = Config::load(env, Some(&inv.config.plugin)).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid tenet configuration",
            e.to_string(),
        )
    })?;
    crate::logging::init(&cfg);
    Ok(cfg)
}

/// Loads the configured pipeline and its precompiled modules.
pub(crate) fn load_pipeline(cfg: &Config) -> Result<Pipeline, CniError> {
    let Some(path) = cfg.pipeline.as_deref() else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "no pipeline configured",
            "set `pipeline` in /etc/tenet/tenet.toml, TENET_PIPELINE, or the network configuration",
        ));
    };
    let manifest = Manifest::load(path).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid pipeline manifest",
            e.to_string(),
        )
    })?;
    let opts = PipelineOptions {
        module_dirs: cfg.module_search_path(),
        cache_dir: cfg.cache_dir.clone(),
        builder: Builder::default_for_build(cfg.compiler.as_deref()),
    };
    Pipeline::load(&manifest, &opts).map_err(|e| e.to_cni())
}

/// CHECK verifies what ADD created. ADD does not create anything yet, so no
/// container is ever known: code 3 (container unknown).
fn check(inv: &Invocation) -> Result<String, CniError> {
    Err(CniError::new(
        code::UNKNOWN_CONTAINER,
        "container unknown",
        format!(
            "no attachment recorded for container {} interface {} on network {}",
            inv.env.container_id.as_deref().unwrap_or(""),
            inv.env.ifname.as_deref().unwrap_or(""),
            inv.config.name
        ),
    ))
}

/// STATUS: ready when the pipeline and its artifacts load.
fn status(env: &[(String, String)], inv: &Invocation) -> Result<String, CniError> {
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
    let cfg = load_config(env, inv).map_err(not_ready)?;
    load_pipeline(&cfg).map_err(not_ready)?;
    // The cluster store must answer; unreachable etcd is code 50.
    if cfg.store == crate::config::StoreKind::Etcd {
        use crate::ipam::IpStore;
        crate::ipam::EtcdStore::connect(&cfg)
            .and_then(|s| s.status())
            .map_err(|e| {
                CniError::new(e.status_code(), "address store not ready", e.to_string())
            })?;
    }
    let _ = Path::new(&cfg.state_dir);
    Ok(String::new())
}
