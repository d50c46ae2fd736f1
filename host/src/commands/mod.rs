//! The CNI commands: one module per command, orchestration only (`add`,
//! `del`, `check`, `gc`, `status`; VERSION is answered here from
//! [`cni::version_reply`]). This module holds the dispatch ([`run`]) and what
//! the commands share: loading the configuration and the pipeline, the
//! invocation's log span, the attachment key.
//!
//! [`run`] is the whole `tenet` binary minus process plumbing, so tests can
//! drive it in-process with an explicit environment and stdin.

mod add;
mod check;
mod del;
mod gc;
mod status;

use crate::cni::{self, CniError, Command, Invocation, code};
use crate::config::Config;
use crate::ipam::AttachmentKey;
use crate::policy::cache::{ArtifactCache, Builder};
use crate::policy::{Manifest, Pipeline, PipelineOptions};
use crate::serve::warm::Lease;

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

/// How an invocation is run, beyond its environment and stdin.
#[derive(Default, Clone, Copy)]
pub struct Context<'a> {
    /// For the exec record ([`crate::metrics::ExecRecord::daemon`]): what
    /// the node daemon had to do with it (`served` when the daemon runs it,
    /// `declined: <why>` when it declined and the client runs it).
    pub daemon: Option<&'a str>,
    /// DEL: called once the pod is cut off, before the kernel deletes its
    /// interfaces ([`crate::apply::Engine::with_cut_off`]); the daemon
    /// answers the runtime then.
    pub on_cut_off: Option<&'a (dyn Fn() + Sync)>,
}

/// Handles one invocation: parses env and stdin, dispatches, and renders the
/// reply in the request's CNI version.
pub fn run(env: &[(String, String)], stdin: &[u8]) -> Reply {
    run_in(env, stdin, Context::default())
}

/// [`run`] in a [`Context`].
pub fn run_in(env: &[(String, String)], stdin: &[u8], ctx: Context<'_>) -> Reply {
    let inv = match cni::parse_invocation(env.iter().cloned(), stdin) {
        Ok(inv) => inv,
        Err(e) => return Reply::error(&e, &cni::error_version(stdin)),
    };
    let version = inv.cni_version.clone();
    // VERSION is the runtime probing, not an operation: no record.
    if inv.command != Command::Version {
        crate::metrics::begin(inv.command.as_str());
        crate::metrics::note(|r| {
            r.network = inv.config.name.clone();
            r.daemon = ctx.daemon.map(str::to_owned);
        });
    }
    let result = match inv.command {
        Command::Version => Ok(cni::version_reply(Some(&inv.cni_version))),
        Command::Add => add::add(env, &inv),
        Command::Check => check::check(env, &inv),
        Command::Del => del::del(env, &inv, ctx.on_cut_off),
        Command::Gc => gc::gc(env, &inv),
        Command::Status => status::status(env, &inv),
    };
    crate::metrics::finish(result.as_ref().map_or_else(|e| e.code, |_| 0));
    match result {
        Ok(out) => Reply::ok(out),
        Err(e) => {
            let _span = invocation_span(&inv).entered();
            tracing::warn!(code = e.code, msg = %e.msg, details = %e.details, "command failed");
            Reply::error(&e, &version)
        }
    }
}

/// The span every line of one exec is logged in, so that lines of
/// concurrent execs in one log file can be told apart: the command and the
/// attachment it is about.
fn invocation_span(inv: &Invocation) -> tracing::Span {
    tracing::info_span!(
        "cni",
        command = inv.command.as_str(),
        container = inv.env.container_id.as_deref().unwrap_or(""),
        ifname = inv.env.ifname.as_deref().unwrap_or(""),
        netns = inv.env.netns.as_deref().unwrap_or(""),
        network = %inv.config.name,
    )
}

/// Loads the host configuration with the network's overrides, sets up
/// logging (stderr or a file; never stdout) and enters the invocation's span,
/// which the caller keeps for the rest of the command.
pub(crate) fn load_config(
    env: &[(String, String)],
    inv: &Invocation,
) -> Result<(Config, tracing::span::EnteredSpan), CniError> {
    let cfg = Config::load(env, Some(&inv.config.plugin))
        .map_err(|e| CniError::new(e.cni_code(), "invalid tenet configuration", e.to_string()))?;
    crate::logging::init(&cfg);
    crate::metrics::set_state_dir(&cfg.state_dir);
    Ok((cfg, invocation_span(inv).entered()))
}

/// Loads the configured pipeline and its precompiled modules.
/// The pipeline manifest at `path`, parsed once per version of the file
/// (ADD and STATUS).
pub(crate) fn load_manifest(
    path: &std::path::Path,
    cache: &ArtifactCache,
) -> Result<Manifest, CniError> {
    Manifest::load_cached(path, cache).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid pipeline manifest",
            e.to_string(),
        )
    })
}

pub(crate) fn load_pipeline(cfg: &Config) -> Result<Lease, CniError> {
    let Some(path) = cfg.pipeline.as_deref() else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "no pipeline configured",
            "set `pipeline` in /etc/tenet/tenet.toml, TENET_PIPELINE, or the network configuration",
        ));
    };
    let authority = cfg
        .addresses
        .authority()
        .map_err(|e| CniError::new(e.cni_code(), "invalid tenet configuration", e.to_string()))?;
    let cache = ArtifactCache::new(&cfg.cache_dir);
    let warm = crate::serve::warm::get();
    let opts = PipelineOptions {
        module_dirs: cfg.module_search_path(),
        cache_dir: cfg.cache_dir.clone(),
        builder: Builder::default_for_build(cfg.compiler.as_deref()),
        // One CNI operation per process, unless this is the daemon.
        one_shot: warm.is_none(),
        authority,
    };
    if let Some(warm) = warm {
        return warm.lease(path, &opts, cache);
    }
    let manifest = load_manifest(path, &cache)?;
    Pipeline::load_from(&manifest, &opts, cache)
        .map(Lease::owned)
        .map_err(|e| e.to_cni())
}

/// The attachment an invocation is about: (network, container id, ifname).
pub(crate) fn attachment_key(inv: &Invocation) -> AttachmentKey {
    AttachmentKey::new(
        inv.config.name.clone(),
        inv.env.container_id.clone().unwrap_or_default(),
        inv.env.ifname.clone().unwrap_or_default(),
    )
}
