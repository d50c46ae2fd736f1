//! Artifact upkeep: whenever the pipeline file, a module file or tenet's
//! version changes, the agent precompiles the artifacts and the bundle
//! exactly as `tenetctl policy compile` does ([`compile_pipeline`]), so no
//! exec after an upgrade runs stage by stage. The cache publishes each
//! artifact by rename, so an exec sees the old or the new one, whole.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::ctl::compile::{Compiled, compile_pipeline};
use crate::policy::cache::{ArtifactCache, Builder};
use crate::policy::{Manifest, PipelineOptions};

/// What the artifacts were built from: each file's identity (device,
/// inode, size, modification and change times) and tenet's version. A
/// replaced or rewritten file changes it; reading it hashes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<String>);

fn file_id(what: &str, p: &Path) -> String {
    match std::fs::metadata(p) {
        Ok(m) => format!(
            "{what} {} {}:{}:{}:{}.{}:{}.{}",
            p.display(),
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ),
        Err(e) => format!("{what} {} missing ({})", p.display(), e.kind()),
    }
}

/// The fingerprint of what `cfg`'s pipeline would run now.
pub fn fingerprint(cfg: &Config) -> Result<Fingerprint, String> {
    let path = cfg
        .pipeline
        .as_deref()
        .ok_or("no pipeline configured (`pipeline` in tenet.toml or the network configuration)")?;
    let mut ids = vec![
        format!("tenet {}", env!("CARGO_PKG_VERSION")),
        format!("cache {}", cfg.cache_dir.display()),
        file_id("pipeline", path),
    ];
    let manifest = Manifest::load(path).map_err(|e| e.to_string())?;
    let dirs = cfg.module_search_path();
    for s in &manifest.stages {
        match crate::policy::resolve_module_path(&s.module, &dirs) {
            Ok(p) => ids.push(file_id(&format!("stage {}", s.name), &p)),
            Err(m) => ids.push(format!("stage {} unresolved: {m}", s.name)),
        }
    }
    Ok(Fingerprint(ids))
}

/// What a tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// Nothing changed since the last build.
    Unchanged,
    /// Rebuilt (or checked) everything.
    Rebuilt(Compiled),
}

/// The upkeep's state between ticks.
#[derive(Debug, Default)]
pub struct Upkeep {
    built_from: Option<Fingerprint>,
    bundle: Option<PathBuf>,
    current: bool,
    reason: Option<String>,
}

impl Upkeep {
    /// True when the last tick left artifacts and bundle built for the
    /// files on disk then.
    pub fn current(&self) -> bool {
        self.current
    }

    /// Why the artifacts are not current.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Checks for changes and rebuilds when there are (or when the last
    /// build failed, or its bundle vanished from the cache).
    pub fn tick(&mut self, cfg: &Config) -> Result<Tick, String> {
        let r = self.tick_inner(cfg);
        if let Err(e) = &r {
            self.current = false;
            self.built_from = None;
            self.reason = Some(e.clone());
        }
        r
    }

    fn tick_inner(&mut self, cfg: &Config) -> Result<Tick, String> {
        let fp = fingerprint(cfg)?;
        let bundle_gone = self.bundle.as_ref().is_some_and(|b| !b.is_file());
        if self.built_from.as_ref() == Some(&fp) && !bundle_gone {
            return Ok(Tick::Unchanged);
        }
        let path = cfg.pipeline.as_deref().expect("fingerprint checked it");
        let opts = PipelineOptions {
            module_dirs: cfg.module_search_path(),
            cache_dir: cfg.cache_dir.clone(),
            builder: Builder::InProcess,
            one_shot: false,
            authority: cfg.addresses.authority().map_err(|e| e.to_string())?,
        };
        let mut sink = Vec::new();
        // `oci://` modules are pulled with the agent's own configuration
        // (`--config`), not whatever TENET_CONFIG the process has.
        let compiled = compile_pipeline(path, false, &opts, Some(&cfg.distribution), &mut sink)
            .map_err(|e| e.to_string())?;
        // As `tenetctl install` does: the digest index lets `tenet` find the
        // artifact of an unpinned module without hashing it on each exec.
        let cache = ArtifactCache::new(&cfg.cache_dir);
        for (m, d) in &compiled.modules {
            if let Err(e) = cache.remember_digest(m, d) {
                tracing::warn!(module = %m.display(), error = %e, "digest index not updated");
            }
        }
        self.bundle = compiled.bundle.clone();
        self.current = compiled.stages <= 1 || compiled.bundle.is_some();
        self.reason = (!self.current).then(|| {
            "the stages did not compose into a bundle: execs run stage by stage (see the agent log)"
                .to_owned()
        });
        self.built_from = Some(fp);
        Ok(Tick::Rebuilt(compiled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A missing `oci://` module is pulled with the agent's configuration's
    /// `[distribution]`, not the process's TENET_CONFIG: the key the error
    /// names is the one this configuration gives.
    #[test]
    fn oci_modules_are_pulled_with_the_agents_distribution_settings() {
        let d = tempfile::tempdir().unwrap();
        let pipeline = d.path().join("p.toml");
        std::fs::write(
            &pipeline,
            format!(
                "[[stage]]\nname = \"tenant\"\nmodule = \"oci://127.0.0.1:9/tenet/tenant-map@sha256:{}\"\n",
                "a".repeat(64)
            ),
        )
        .unwrap();
        let modules = d.path().join("modules");
        std::fs::create_dir(&modules).unwrap();
        let key = d.path().join("agent-only.pub");
        let mut cfg = Config {
            pipeline: Some(pipeline),
            module_dirs: vec![modules],
            cache_dir: d.path().join("cache"),
            state_dir: d.path().join("state"),
            ..Default::default()
        };
        cfg.distribution.verify_key = Some(key.clone());
        let e = Upkeep::default().tick(&cfg).unwrap_err();
        assert!(
            e.contains("[distribution] verify_key") && e.contains(&key.display().to_string()),
            "{e}"
        );
    }
}
