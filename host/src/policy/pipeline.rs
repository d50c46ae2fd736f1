//! Loading a manifest into runnable stages, and running them in order.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};

use super::bindings::{self, Level, Stage};
use super::cache::{ArtifactCache, Builder, sha256_file};
use super::manifest::{FailurePolicy, Manifest, ModuleRef, StageSpec};
use super::{ALLOWED_IMPORTS, Budget, Failure, PolicyError, convert, engine};
use crate::plan::{self, Command, Plan, Request};

/// Caps on what the host lowers into a guest, checked before any stage runs.
pub mod input_limits {
    /// Labels, annotations, CNI_ARGS pairs or extra facts, each.
    pub const LIST_ENTRIES: usize = 256;
    /// One key.
    pub const KEY_BYTES: usize = 317;
    /// One value (Kubernetes allows 256 KiB of annotations in total).
    pub const VALUE_BYTES: usize = 64 * 1024;
    /// Everything in the request together.
    pub const TOTAL_BYTES: usize = 512 * 1024;
}

/// Log lines one stage may write per call; more are dropped.
const MAX_LOG_LINES: u32 = 64;
/// Bytes kept of one log line.
const MAX_LOG_BYTES: usize = 1024;

/// Where modules and artifacts are found.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Directories searched for named modules (`<dir>/<name>.wasm`), in order.
    pub module_dirs: Vec<PathBuf>,
    /// The artifact cache root.
    pub cache_dir: PathBuf,
    /// How to rebuild a missing artifact.
    pub builder: Builder,
}

/// A stage ready to run, or the reason it cannot (only kept for `ignore`).
struct LoadedStage {
    spec: StageSpec,
    component: Result<Component, PolicyError>,
}

/// A loaded pipeline.
pub struct Pipeline {
    engine: Engine,
    linker: Linker<HostState>,
    stages: Vec<LoadedStage>,
}

/// How one stage went.
#[derive(Debug, Clone)]
pub enum StageRun {
    /// It ran and its plan was accepted.
    Ran {
        /// Fuel it consumed.
        fuel: u64,
        /// Wall time of instantiate + validate-settings + evaluate.
        elapsed: Duration,
    },
    /// It failed and its failure policy is `ignore`: the plan is unchanged.
    Skipped(PolicyError),
}

/// One stage's report, with the plan after it.
#[derive(Debug, Clone)]
pub struct StageReport {
    /// Stage name.
    pub stage: String,
    /// What happened.
    pub run: StageRun,
    /// The plan after this stage.
    pub plan: Plan,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The final plan (validated).
    pub plan: Plan,
    /// A report per stage, in order.
    pub reports: Vec<StageReport>,
}

impl Pipeline {
    /// Loads every stage: resolves the module, finds (or rebuilds) its
    /// precompiled artifact, and refuses modules that differ from their pin or
    /// import anything but `tenet:policy/host`. A stage whose failure policy
    /// is `ignore` does not stop the load; it is skipped when run.
    pub fn load(manifest: &Manifest, opts: &PipelineOptions) -> Result<Self, PolicyError> {
        let engine = engine::new_engine()
            .map_err(|e| PolicyError::new("engine", Failure::Internal(e.to_string())))?;
        let mut linker = Linker::new(&engine);
        Stage::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| PolicyError::new("engine", Failure::Internal(e.to_string())))?;
        let cache = ArtifactCache::new(&opts.cache_dir);
        let mut stages = Vec::with_capacity(manifest.stages.len());
        for spec in &manifest.stages {
            let started = Instant::now();
            let component = load_stage(&engine, &cache, opts, spec);
            tracing::debug!(stage = %spec.name, load_us = started.elapsed().as_micros() as u64, "stage loaded");
            if let Err(e) = &component {
                if spec.failure == FailurePolicy::Fail {
                    return Err(e.clone());
                }
                tracing::warn!(stage = %spec.name, error = %e, "stage unavailable; it will be skipped (failure = \"ignore\")");
            }
            stages.push(LoadedStage {
                spec: spec.clone(),
                component,
            });
        }
        Ok(Pipeline {
            engine,
            linker,
            stages,
        })
    }

    /// Stage names, in order.
    pub fn stage_names(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(|s| s.spec.name.as_str())
    }

    /// Runs every stage on `request`, starting from `initial`. The plan is
    /// checked after each stage, and for ADD checked complete at the end.
    pub fn run(&self, request: &Request, initial: Plan) -> Result<Outcome, PolicyError> {
        check_input(request)?;
        plan::validate::structure(&initial)
            .map_err(|e| PolicyError::new("input", Failure::InvalidPlan(e)))?;
        let wit_request = convert::request_to_wit(request);
        let mut plan = initial;
        let mut reports = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            let result = stage
                .component
                .clone()
                .and_then(|c| self.run_stage(&stage.spec, &c, &wit_request, &plan));
            let run = match result {
                Ok((next, fuel, elapsed)) => {
                    plan = next;
                    StageRun::Ran { fuel, elapsed }
                }
                // A denial is a decision, never skipped.
                Err(e)
                    if stage.spec.failure == FailurePolicy::Ignore
                        && !matches!(e.failure, Failure::Denied(_)) =>
                {
                    tracing::warn!(stage = %stage.spec.name, error = %e, "stage failed; skipped (failure = \"ignore\")");
                    StageRun::Skipped(e)
                }
                Err(e) => return Err(e),
            };
            tracing::debug!(stage = %stage.spec.name, ?run, "stage done");
            reports.push(StageReport {
                stage: stage.spec.name.clone(),
                run,
                plan: plan.clone(),
            });
        }
        if request.command == Command::Add {
            plan::validate::complete(&plan, request)
                .map_err(|e| PolicyError::new("final", Failure::InvalidPlan(e)))?;
        }
        Ok(Outcome { plan, reports })
    }

    /// Calls the stage's `validate-settings` only (used by `tenetctl policy
    /// compile` to check a pipeline's settings once at install).
    pub fn validate_settings(&self) -> Result<(), PolicyError> {
        for stage in &self.stages {
            let Ok(component) = &stage.component else {
                continue;
            };
            let mut store = self.new_store(&stage.spec);
            let name = &stage.spec.name;
            let inst = Stage::instantiate(&mut store, component, &self.linker)
                .map_err(|e| classify(name, &store, e))?;
            inst.call_validate_settings(&mut store, &stage.spec.settings)
                .map_err(|e| classify(name, &store, e))?
                .map_err(|m| PolicyError::new(name, Failure::InvalidSettings(m)))?;
        }
        Ok(())
    }

    fn new_store(&self, spec: &StageSpec) -> Store<HostState> {
        let mut store = Store::new(
            &self.engine,
            HostState {
                stage: spec.name.clone(),
                memory_cap: spec.memory_bytes,
                memory_exceeded: false,
                log_lines: 0,
            },
        );
        store.limiter(|s| s);
        // Fuel is always enabled by the engine profile, so this cannot fail.
        let _ = store.set_fuel(spec.fuel);
        store
    }

    fn run_stage(
        &self,
        spec: &StageSpec,
        component: &Component,
        request: &bindings::types::Request,
        plan: &Plan,
    ) -> Result<(Plan, u64, Duration), PolicyError> {
        let start = Instant::now();
        let name = spec.name.as_str();
        let mut store = self.new_store(spec);
        let inst = Stage::instantiate(&mut store, component, &self.linker)
            .map_err(|e| classify(name, &store, e))?;
        // No validate-settings call here: `evaluate` must refuse bad settings
        // itself (the SDK does), and `tenetctl policy compile` validates them
        // once at install. That keeps a guest call off every exec.
        let out = inst
            .call_evaluate(
                &mut store,
                request,
                &spec.settings,
                &convert::plan_to_wit(plan),
            )
            .map_err(|e| classify(name, &store, e))?;
        let fuel = spec.fuel - store.get_fuel().unwrap_or(0);
        let next = match out {
            Ok(p) => convert::plan_from_wit(p),
            Err(e) => {
                use bindings::types::PolicyError as W;
                let f = match e {
                    W::Denied(m) => Failure::Denied(m),
                    W::InvalidSettings(m) => Failure::InvalidSettings(m),
                    W::InvalidInput(m) => Failure::InvalidInput(m),
                    W::Internal(m) => Failure::Internal(m),
                };
                return Err(PolicyError::new(name, f));
            }
        };
        plan::validate::structure(&next)
            .map_err(|e| PolicyError::new(name, Failure::InvalidPlan(e)))?;
        Ok((next, fuel, start.elapsed()))
    }
}

/// Maps a wasmtime error to the failure taxonomy.
fn classify(stage: &str, store: &Store<HostState>, e: wasmtime::Error) -> PolicyError {
    let failure = if store.data().memory_exceeded {
        Failure::BudgetExceeded(Budget::Memory)
    } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::OutOfFuel)) {
        Failure::BudgetExceeded(Budget::Fuel)
    } else {
        Failure::Trap(format!("{:#}", e.root_cause()))
    };
    PolicyError::new(stage, failure)
}

fn load_stage(
    engine: &Engine,
    cache: &ArtifactCache,
    opts: &PipelineOptions,
    spec: &StageSpec,
) -> Result<Component, PolicyError> {
    let unavailable = |m: String| PolicyError::new(&spec.name, Failure::ArtifactUnavailable(m));
    let refused = |m: String| PolicyError::new(&spec.name, Failure::ModuleRefused(m));
    // With a pin, the artifact is found without touching the .wasm at all:
    // the hot path never hashes modules.
    let pinned = spec.sha256.as_deref();
    let cached = pinned.map(|d| cache.load(engine, d));
    let component = match cached {
        Some(Ok(c)) => c,
        other => {
            let (wasm, meta) =
                resolve_module_meta(&spec.module, &opts.module_dirs).map_err(unavailable)?;
            // An unpinned module: the digest index (written when the
            // artifact was built) saves hashing the file on every exec.
            let (digest, hashed) = match cache.known_digest_of(&meta) {
                Some(d) => (d, false),
                None => (
                    sha256_file(&wasm)
                        .map_err(|e| unavailable(format!("{}: {e}", wasm.display())))?,
                    true,
                ),
            };
            if let Some(pin) = pinned
                && pin != digest
            {
                return Err(refused(format!(
                    "{} has sha256 {digest}, but the pipeline pins {pin}",
                    wasm.display()
                )));
            }
            let miss = match other {
                Some(Err(m)) => Some(m),
                _ => None,
            };
            match (miss, cache.load(engine, &digest)) {
                (None, Ok(c)) => {
                    if hashed {
                        // The artifact exists but the index did not know this
                        // file (e.g. written by an older tenet): record it so
                        // the next exec need not hash the module again.
                        let _ = cache.remember_digest(&wasm, &digest);
                    }
                    c
                }
                (miss, _) => {
                    if let Some(m) = miss {
                        tracing::debug!(stage = %spec.name, reason = %m, "artifact miss");
                    }
                    opts.builder
                        .build(engine, cache, &wasm, &digest)
                        .map_err(|m| {
                            unavailable(format!("no usable artifact for {}: {m}", wasm.display()))
                        })?
                }
            }
        }
    };
    check_component(engine, &component).map_err(refused)?;
    Ok(component)
}

/// Finds a module's `.wasm` file.
pub fn resolve_module(module: &ModuleRef, dirs: &[PathBuf]) -> Result<PathBuf, String> {
    resolve_module_meta(module, dirs).map(|(p, _)| p)
}

/// [`resolve_module`], also returning the file's metadata (the digest index
/// needs it; one `stat` per stage instead of two).
fn resolve_module_meta(
    module: &ModuleRef,
    dirs: &[PathBuf],
) -> Result<(PathBuf, std::fs::Metadata), String> {
    let file = |p: &Path| std::fs::metadata(p).ok().filter(|m| m.is_file());
    match module {
        ModuleRef::Path(p) => match file(p) {
            Some(m) => Ok((p.clone(), m)),
            None => Err(format!("module file {} not found", p.display())),
        },
        ModuleRef::Named(n) => dirs
            .iter()
            .map(|d| d.join(format!("{n}.wasm")))
            .find_map(|p| file(&p).map(|m| (p, m)))
            .ok_or_else(|| {
                format!(
                    "module {n:?} not found in {}",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
    }
}

/// The imports and exports a loaded component must have.
fn check_component(engine: &Engine, component: &Component) -> Result<(), String> {
    let ty = component.component_type();
    let bad: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|n| !ALLOWED_IMPORTS.contains(n))
        .map(str::to_owned)
        .collect();
    if !bad.is_empty() {
        return Err(format!(
            "imports {} (only {} is allowed: stages get no filesystem, network, clock or environment)",
            bad.join(", "),
            ALLOWED_IMPORTS.join(", ")
        ));
    }
    for export in ["validate-settings", "evaluate"] {
        if ty.get_export(engine, export).is_none() {
            return Err(format!(
                "does not export {export:?}: not a tenet:policy/stage@0.1.0 component"
            ));
        }
    }
    Ok(())
}

fn check_input(r: &Request) -> Result<(), PolicyError> {
    use input_limits::*;
    let fail = |m: String| Err(PolicyError::new("input", Failure::InvalidInput(m)));
    let mut total = r.container_id.len() + r.ifname.len() + r.netns.len() + r.network.len();
    for (what, list) in [
        ("labels", &r.labels),
        ("annotations", &r.annotations),
        ("CNI_ARGS", &r.cni_args),
        ("extra", &r.extra),
    ] {
        if list.len() > LIST_ENTRIES {
            return fail(format!(
                "{what}: {} entries, at most {LIST_ENTRIES}",
                list.len()
            ));
        }
        for kv in list {
            if kv.key.len() > KEY_BYTES || kv.value.len() > VALUE_BYTES {
                return fail(format!(
                    "{what}: {:?} exceeds {KEY_BYTES} bytes of key or {VALUE_BYTES} bytes of value",
                    kv.key.chars().take(64).collect::<String>()
                ));
            }
            total += kv.key.len() + kv.value.len();
        }
    }
    for list in [&r.args_ips, &r.runtime_ips] {
        if list.len() > LIST_ENTRIES {
            return fail(format!(
                "ips: {} entries, at most {LIST_ENTRIES}",
                list.len()
            ));
        }
        total += list.iter().map(String::len).sum::<usize>();
    }
    if r.port_mappings.len() > LIST_ENTRIES {
        return fail(format!(
            "portMappings: {} entries, at most {LIST_ENTRIES}",
            r.port_mappings.len()
        ));
    }
    if total > TOTAL_BYTES {
        return fail(format!("request is {total} bytes, at most {TOTAL_BYTES}"));
    }
    Ok(())
}

/// Per-store host state: limits and log accounting for one stage call.
struct HostState {
    stage: String,
    memory_cap: usize,
    memory_exceeded: bool,
    log_lines: u32,
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            // Trap rather than fail the grow: a guest allocator that ignores
            // failure must not keep running in an undefined state.
            self.memory_exceeded = true;
            wasmtime::bail!(
                "stage {} exceeded its memory cap of {} bytes",
                self.stage,
                self.memory_cap
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000)
    }

    fn instances(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        16
    }

    fn memories(&self) -> usize {
        4
    }
}

impl bindings::types::Host for HostState {}

impl bindings::tenet::policy::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            if self.log_lines == MAX_LOG_LINES + 1 {
                tracing::warn!(stage = %self.stage, "stage log limit reached; further lines dropped");
            }
            return;
        }
        let mut msg = message;
        if msg.len() > MAX_LOG_BYTES {
            let mut end = MAX_LOG_BYTES;
            while !msg.is_char_boundary(end) {
                end -= 1;
            }
            msg.truncate(end);
        }
        let stage = self.stage.as_str();
        match level {
            Level::Trace => tracing::trace!(target: "tenet::guest", stage, "{msg}"),
            Level::Debug => tracing::debug!(target: "tenet::guest", stage, "{msg}"),
            Level::Info => tracing::info!(target: "tenet::guest", stage, "{msg}"),
            Level::Warn => tracing::warn!(target: "tenet::guest", stage, "{msg}"),
            Level::Error => tracing::error!(target: "tenet::guest", stage, "{msg}"),
        }
    }
}
