//! Loaded pipelines kept between invocations (the daemon only).
//!
//! A pipeline is a pure function of its manifest, its module files (and the
//! artifacts named by their digests) and the options the host configuration
//! gives it, so one loaded pipeline can serve every invocation that would
//! load the same: the pool is keyed by the options, and each entry
//! remembers the manifest's file version and its modules'
//! ([`crate::policy::modules_version`]), re-checked on every lease: an edited
//! manifest, a replaced module or a module appearing in a search directory
//! is a new pipeline, as it is for a one-shot exec. Every run instantiates
//! fresh stores, so nothing of a guest outlives its run.
//!
//! A pipeline serves one run at a time (it is not `Sync`), so concurrent
//! invocations lease one each: up to [`MAX_IDLE`] are kept per key, more
//! are loaded when needed and dropped after.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use crate::cni::CniError;
use crate::policy::cache::ArtifactCache;
use crate::policy::{Manifest, Pipeline, PipelineOptions};

/// Idle pipelines kept per key.
pub const MAX_IDLE: usize = 4;

/// Keys (distinct pipeline configurations) kept at once; past it the pool
/// starts over.
const MAX_KEYS: usize = 16;

/// The process's pool, when warm pipelines are enabled ([`enable`]).
static WARM: OnceLock<Warm> = OnceLock::new();

/// Keeps pipelines loaded in this process from now on (`tenet serve`).
pub fn enable() {
    WARM.get_or_init(Warm::default);
}

/// The pool, when [`enable`]d.
pub fn get() -> Option<&'static Warm> {
    WARM.get()
}

/// Loaded pipelines by configuration.
#[derive(Default)]
pub struct Warm {
    pools: Mutex<HashMap<String, Pool>>,
}

/// The pipelines of one configuration, all loaded from one version of its
/// files.
struct Pool {
    manifest_version: String,
    manifest: Manifest,
    modules_version: String,
    idle: Vec<Pipeline>,
}

/// A pipeline leased for one invocation: returned to its pool when dropped
/// (or simply dropped, one-shot or stale).
pub struct Lease {
    pipeline: Option<Pipeline>,
    home: Option<(&'static Warm, String, String, String)>,
}

impl Lease {
    /// A pipeline that belongs to nobody (the one-shot exec).
    pub fn owned(pipeline: Pipeline) -> Self {
        Lease {
            pipeline: Some(pipeline),
            home: None,
        }
    }
}

impl Deref for Lease {
    type Target = Pipeline;
    fn deref(&self) -> &Pipeline {
        self.pipeline
            .as_ref()
            .expect("a lease holds its pipeline until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (Some(p), Some((warm, key, mv, modv))) = (self.pipeline.take(), self.home.take()) {
            warm.give_back(&key, &mv, &modv, p);
        }
    }
}

/// The version of the manifest file at `path` (`None`: it cannot be
/// read, and the load says why).
fn manifest_version(path: &Path) -> Option<String> {
    std::fs::metadata(path)
        .ok()
        .map(|m| crate::policy::cache::file_key(&m))
}

impl Warm {
    /// A pipeline for the manifest at `path` with `opts`: an idle one of the
    /// same files when there is one, else loaded now (and kept after).
    pub fn lease(
        &'static self,
        path: &Path,
        opts: &PipelineOptions,
        cache: ArtifactCache,
    ) -> Result<Lease, CniError> {
        let key = format!(
            "{}\n{:?}\n{}\n{:?}\n{:?}",
            path.display(),
            opts.module_dirs,
            opts.cache_dir.display(),
            opts.builder,
            opts.authority
        );
        let Some(mv) = manifest_version(path) else {
            // Unreadable: the load reports it, nothing is kept.
            let manifest = crate::commands::load_manifest(path, &cache)?;
            return load(&manifest, opts, cache).map(Lease::owned);
        };
        let mut stale = Vec::new();
        let mut manifest = None;
        {
            let mut pools = self.lock();
            if let Some(pool) = pools.get_mut(&key) {
                if pool.manifest_version == mv
                    && pool.modules_version
                        == crate::policy::modules_version(&pool.manifest, &opts.module_dirs)
                {
                    if let Some(p) = pool.idle.pop() {
                        let modv = pool.modules_version.clone();
                        return Ok(self.lease_of(p, key, mv, modv));
                    }
                    manifest = Some(pool.manifest.clone());
                } else if let Some(old) = pools.remove(&key) {
                    stale = old.idle;
                }
            }
        }
        // Dropped outside the lock: unloading unregisters artifacts.
        drop(stale);
        let manifest = match manifest {
            Some(m) => m,
            None => crate::commands::load_manifest(path, &cache)?,
        };
        // Taken before the load: a file replaced during it makes the next
        // lease see a newer version, never the other way round.
        let modv = crate::policy::modules_version(&manifest, &opts.module_dirs);
        let pipeline = load(&manifest, opts, cache)?;
        {
            let mut pools = self.lock();
            if pools.len() >= MAX_KEYS && !pools.contains_key(&key) {
                pools.clear();
            }
            let pool = pools.entry(key.clone()).or_insert_with(|| Pool {
                manifest_version: mv.clone(),
                manifest,
                modules_version: modv.clone(),
                idle: Vec::new(),
            });
            if pool.manifest_version != mv || pool.modules_version != modv {
                // Another invocation loaded other files meanwhile: this
                // pipeline serves this invocation and is then dropped.
                return Ok(Lease::owned(pipeline));
            }
        }
        Ok(self.lease_of(pipeline, key, mv, modv))
    }

    fn lease_of(&'static self, p: Pipeline, key: String, mv: String, modv: String) -> Lease {
        Lease {
            pipeline: Some(p),
            home: Some((self, key, mv, modv)),
        }
    }

    /// Puts `p` back among its pool's idle pipelines, unless its files
    /// changed meanwhile or enough are idle.
    fn give_back(&self, key: &str, mv: &str, modv: &str, p: Pipeline) {
        let mut pools = self.lock();
        if let Some(pool) = pools.get_mut(key)
            && pool.manifest_version == mv
            && pool.modules_version == modv
            && pool.idle.len() < MAX_IDLE
        {
            pool.idle.push(p);
            return;
        }
        drop(pools);
        drop(p);
    }

    /// How many pipelines are idle, over all keys (tests, logs).
    pub fn idle(&self) -> usize {
        self.lock().values().map(|p| p.idle.len()).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pool>> {
        // A panic while holding it left only a map of idle pipelines.
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn load(
    manifest: &Manifest,
    opts: &PipelineOptions,
    cache: ArtifactCache,
) -> Result<Pipeline, CniError> {
    Pipeline::load_from(manifest, opts, cache).map_err(|e| e.to_cni())
}
