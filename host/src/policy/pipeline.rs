//! Loading a manifest into runnable stages, and running them in order.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Func, HasSelf, Instance, Linker};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};

use super::bindings::{self, Level, Stage};
#[cfg(feature = "compiler")]
use super::cache::sha256_hex;
use super::cache::{ArtifactCache, Builder, sha256_file};
use super::manifest::{FailurePolicy, Manifest, ModuleRef, StageSpec};
use super::{ALLOWED_IMPORTS, Budget, Failure, PolicyError, bundle, convert, engine};
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
    /// The process exits right after one run (the CNI binary): stores,
    /// instances and artifacts are then left for the kernel to reclaim at
    /// exit instead of being unmapped and unregistered one by one, which
    /// only delays the answer to the runtime.
    pub one_shot: bool,
}

/// A stage ready to run, or the reason it cannot (only kept for `ignore`).
struct LoadedStage {
    spec: StageSpec,
    /// How the module was identified (`None` when it could not be).
    resolved: Option<Resolved>,
    /// The stage's own component: loaded at once without a bundle; with
    /// one, only if the bundle cannot serve this stage (see `run`).
    component: OnceCell<Result<Component, PolicyError>>,
}

/// A loaded pipeline.
pub struct Pipeline {
    engine: Engine,
    linker: Linker<HostState>,
    stages: Vec<LoadedStage>,
    /// Every stage in one component (`bundle.rs`), when the cache has it.
    bundle: Option<Component>,
    cache: ArtifactCache,
    opts: PipelineOptions,
}

/// How one stage went.
#[derive(Debug, Clone)]
pub enum StageRun {
    /// It ran and its plan was accepted.
    Ran {
        /// Fuel it consumed.
        fuel: u64,
        /// Wall time of the stage's call (with its instantiation when it ran
        /// from its own component; a bundle is instantiated once for all).
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

/// A bundle instantiated for one run: one store for all stages.
struct BundleRun {
    store: Store<HostState>,
    instance: Instance,
}

impl Pipeline {
    /// Loads every stage: resolves the module, finds (or rebuilds) its
    /// precompiled artifact, and refuses modules that differ from their pin or
    /// import anything but `tenet:policy/host`. A stage whose failure policy
    /// is `ignore` does not stop the load; it is skipped when run.
    ///
    /// When the cache holds the pipeline's bundle (`bundle.rs`), that one
    /// artifact replaces the stages' own; with a compiler at hand (tenetctl)
    /// a missing bundle is built for the next execs.
    pub fn load(manifest: &Manifest, opts: &PipelineOptions) -> Result<Self, PolicyError> {
        Self::load_from(manifest, opts, ArtifactCache::new(&opts.cache_dir))
    }

    /// [`Pipeline::load`] with the artifact cache of `opts.cache_dir` the
    /// caller already opened (`tenet` reads the manifest through it first:
    /// one cache, one trust check of its directory, per exec).
    pub fn load_from(
        manifest: &Manifest,
        opts: &PipelineOptions,
        cache: ArtifactCache,
    ) -> Result<Self, PolicyError> {
        let engine = engine::new_engine()
            .map_err(|e| PolicyError::new("engine", Failure::Internal(e.to_string())))?;
        let mut linker = Linker::new(&engine);
        Stage::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| PolicyError::new("engine", Failure::Internal(e.to_string())))?;
        let mut stages = Vec::with_capacity(manifest.stages.len());
        for spec in &manifest.stages {
            let resolved = resolve_stage(&cache, opts, spec);
            if let Err(e) = &resolved
                && spec.failure == FailurePolicy::Fail
            {
                return Err(e.clone());
            }
            let component = OnceCell::new();
            let resolved = match resolved {
                Ok(r) => Some(r),
                Err(e) => {
                    let _ = component.set(Err(e));
                    None
                }
            };
            stages.push(LoadedStage {
                spec: spec.clone(),
                resolved,
                component,
            });
        }
        let mut pipeline = Pipeline {
            engine,
            linker,
            stages,
            bundle: None,
            cache,
            opts: opts.clone(),
        };
        pipeline.bundle = pipeline.load_bundle();
        if pipeline.bundle.is_none() {
            for stage in &pipeline.stages {
                if let Err(e) = pipeline.component(stage)
                    && stage.spec.failure == FailurePolicy::Fail
                {
                    return Err(e.clone());
                }
            }
            #[cfg(feature = "compiler")]
            pipeline.build_bundle();
        }
        Ok(pipeline)
    }

    /// Whether the stages run from one bundle artifact.
    pub fn is_bundled(&self) -> bool {
        self.bundle.is_some()
    }

    /// The bundle key of this pipeline, when every stage's module was
    /// identified and there is more than one stage.
    fn bundle_key(&self) -> Option<String> {
        if self.stages.len() < 2 {
            return None;
        }
        let digests: Option<Vec<&str>> = self
            .stages
            .iter()
            .map(|s| s.resolved.as_ref().map(|r| r.digest.as_str()))
            .collect();
        Some(bundle::key(digests?))
    }

    fn load_bundle(&self) -> Option<Component> {
        let key = self.bundle_key()?;
        let started = Instant::now();
        let loaded = self.cache.load(&self.engine, &key).and_then(|c| {
            check_bundle(&self.engine, &c, self.stages.len())?;
            Ok(c)
        });
        match loaded {
            Ok(c) => {
                tracing::debug!(bundle = %key, load_us = started.elapsed().as_micros() as u64, "pipeline bundle loaded");
                Some(c)
            }
            Err(reason) => {
                tracing::debug!(bundle = %key, %reason, "no pipeline bundle; loading stage by stage");
                None
            }
        }
    }

    /// Composes the stages into a bundle and stores it in the cache, for
    /// later loads (tenetctl only: it needs the compiler). Best effort: a
    /// pipeline without a bundle still runs.
    #[cfg(feature = "compiler")]
    fn build_bundle(&self) {
        let Builder::InProcess = self.opts.builder else {
            return;
        };
        let Some(key) = self.bundle_key() else { return };
        if self
            .stages
            .iter()
            .any(|s| !matches!(s.component.get(), Some(Ok(_))))
        {
            return;
        }
        let result = (|| {
            let mut wasm = Vec::with_capacity(self.stages.len());
            for s in &self.stages {
                let (path, _) = resolve_module_meta(&s.spec.module, &self.opts.module_dirs)?;
                let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                // The file may have changed since it was identified.
                if let Some(r) = &s.resolved
                    && sha256_hex(&bytes) != r.digest
                {
                    return Err(format!("{} changed while loading", path.display()));
                }
                wasm.push(bytes);
            }
            let composed = bundle::compose(&wasm)?;
            let cwasm = engine::precompile(&self.engine, &composed)
                .map_err(|e| format!("compiling the bundle: {}", e.root_cause()))?;
            // SAFETY: bytes were just produced by this engine.
            let c = unsafe { Component::deserialize(&self.engine, &cwasm) }
                .map_err(|e| e.root_cause().to_string())?;
            check_bundle(&self.engine, &c, self.stages.len())?;
            Ok(cwasm)
        })();
        match result {
            Ok(cwasm) => match self.cache.store(&key, &cwasm) {
                Ok(path) => tracing::debug!(bundle = %path.display(), "pipeline bundle built"),
                // A read-only cache (an unprivileged `tenetctl plan`).
                Err(e) => {
                    tracing::debug!(cache = %self.cache.root().display(), error = %e, "pipeline bundle not stored")
                }
            },
            Err(reason) => {
                tracing::warn!(%reason, "pipeline bundle not built; stages load one by one")
            }
        }
    }

    /// The bundle artifact of this pipeline, if the cache has one.
    pub fn bundle_artifact(&self) -> Option<PathBuf> {
        let path = self.cache.path_for(&self.bundle_key()?);
        path.is_file().then_some(path)
    }

    /// The stage's own component, loading it on first use.
    fn component<'a>(&self, stage: &'a LoadedStage) -> &'a Result<Component, PolicyError> {
        stage.component.get_or_init(|| {
            let started = Instant::now();
            let r = match &stage.resolved {
                Some(r) => load_stage(&self.engine, &self.cache, &self.opts, &stage.spec, r),
                None => unreachable!("an unresolved stage has its error set"),
            };
            tracing::debug!(stage = %stage.spec.name, load_us = started.elapsed().as_micros() as u64, "stage loaded");
            if let Err(e) = &r {
                tracing::warn!(stage = %stage.spec.name, error = %e, "stage unavailable");
            }
            r
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
        let mut bundled = self.instantiate_bundle();
        let mut plan = initial;
        let mut reports = Vec::with_capacity(self.stages.len());
        for (index, stage) in self.stages.iter().enumerate() {
            let result = match bundled.as_mut() {
                Some(b) => self.run_bundled(b, index, &stage.spec, &wit_request, &plan),
                None => self
                    .component(stage)
                    .clone()
                    .and_then(|c| self.run_stage(&stage.spec, &c, &wit_request, &plan)),
            };
            if result.is_err()
                && let Some(b) = bundled.take()
            {
                // A trap leaves the store unusable for every stage in it:
                // the rest run from their own components, in their own
                // stores, as without a bundle.
                self.dispose(b);
            }
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
        if let Some(b) = bundled {
            self.dispose(b);
        }
        if request.command == Command::Add {
            plan::validate::complete(&plan, request)
                .map_err(|e| PolicyError::new("final", Failure::InvalidPlan(e)))?;
        }
        Ok(Outcome { plan, reports })
    }

    /// Instantiates the bundle for one run. Any failure (a stage whose
    /// initial memory exceeds the smallest cap, say) falls back to stage by
    /// stage, where the failure is attributed to its stage.
    fn instantiate_bundle(&self) -> Option<BundleRun> {
        let bundle = self.bundle.as_ref()?;
        let started = Instant::now();
        let specs = || self.stages.iter().map(|s| &s.spec);
        // Instantiation runs no stage's code of its own; the smallest budget
        // of any stage bounds whatever it does run.
        let fuel = specs().map(|s| s.fuel).min().unwrap_or(0);
        let cap = specs().map(|s| s.memory_bytes).min().unwrap_or(0);
        let mut store = self.new_store("pipeline bundle", fuel, cap, self.stages.len());
        match self.linker.instantiate(&mut store, bundle) {
            Ok(instance) => {
                tracing::debug!(
                    instantiate_us = started.elapsed().as_micros() as u64,
                    "pipeline bundle instantiated"
                );
                Some(BundleRun { store, instance })
            }
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "pipeline bundle not instantiable; running stage by stage");
                None
            }
        }
    }

    /// Calls the stage's `validate-settings` only (used by `tenetctl policy
    /// compile` to check a pipeline's settings once at install).
    pub fn validate_settings(&self) -> Result<(), PolicyError> {
        for stage in &self.stages {
            let Ok(component) = self.component(stage) else {
                continue;
            };
            let spec = &stage.spec;
            let mut store = self.new_store(&spec.name, spec.fuel, spec.memory_bytes, 1);
            let name = &spec.name;
            let inst = Stage::instantiate(&mut store, component, &self.linker)
                .map_err(|e| classify(name, &store, e))?;
            inst.call_validate_settings(&mut store, &spec.settings)
                .map_err(|e| classify(name, &store, e))?
                .map_err(|m| PolicyError::new(name, Failure::InvalidSettings(m)))?;
        }
        Ok(())
    }

    /// A store for `stages` stages' instances, limited as `stage` (the
    /// limits move to each stage as it is called, see `run_bundled`).
    fn new_store(
        &self,
        stage: &str,
        fuel: u64,
        memory_cap: usize,
        stages: usize,
    ) -> Store<HostState> {
        let mut store = Store::new(
            &self.engine,
            HostState {
                stage: stage.to_owned(),
                memory_cap,
                memory_exceeded: false,
                log_lines: 0,
                stages,
            },
        );
        store.limiter(|s| s);
        // Fuel is always enabled by the engine profile, so this cannot fail.
        let _ = store.set_fuel(fuel);
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
        let mut store = self.new_store(name, spec.fuel, spec.memory_bytes, 1);
        let inst = Stage::instantiate(&mut store, component, &self.linker)
            .map_err(|e| classify(name, &store, e))?;
        // Fuel is reported for the call alone, as from a bundle (whose
        // instantiation serves every stage); instantiation still draws on
        // the stage's budget here.
        let before = store.get_fuel().unwrap_or(0);
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
        let fuel = before - store.get_fuel().unwrap_or(0);
        self.dispose(store);
        Ok((stage_result(name, out)?, fuel, start.elapsed()))
    }

    /// Drops a store, or in a one-shot process leaves it to the exit.
    fn dispose<T>(&self, value: T) {
        if self.opts.one_shot {
            std::mem::forget(value);
        }
    }

    /// [`Self::run_stage`] for the stage at `index` of an instantiated
    /// bundle: the stage's fuel, memory cap and log allowance are set on the
    /// shared store before its call. Its memory can only grow during its own
    /// call (stages share no memory), so the cap applies to it alone.
    fn run_bundled(
        &self,
        b: &mut BundleRun,
        index: usize,
        spec: &StageSpec,
        request: &bindings::types::Request,
        plan: &Plan,
    ) -> Result<(Plan, u64, Duration), PolicyError> {
        let start = Instant::now();
        let name = spec.name.as_str();
        let state = b.store.data_mut();
        state.stage.clone_from(&spec.name);
        state.memory_cap = spec.memory_bytes;
        state.memory_exceeded = false;
        state.log_lines = 0;
        let _ = b.store.set_fuel(spec.fuel);
        let export = bundle::export_name(index, "evaluate");
        let func = b.instance.get_func(&mut b.store, &export).ok_or_else(|| {
            PolicyError::new(name, Failure::Internal(format!("bundle has no {export:?}")))
        })?;
        let out = call_evaluate(
            &mut b.store,
            func,
            request,
            &spec.settings,
            &convert::plan_to_wit(plan),
        )
        .map_err(|e| classify(name, &b.store, e))?;
        let fuel = spec.fuel - b.store.get_fuel().unwrap_or(0);
        Ok((stage_result(name, out)?, fuel, start.elapsed()))
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if self.opts.one_shot {
            // The engine, the linker and every component: their teardown
            // (unmapping artifacts, unregistering code and types) is work
            // the exit does anyway, all at once.
            std::mem::forget(std::mem::take(&mut self.stages));
            std::mem::forget(self.bundle.take());
            let engine = self.engine.clone();
            std::mem::forget(engine);
        }
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

/// Calls a bundle's `stage<i>-evaluate` (type-checked against the WIT
/// world's `evaluate`).
fn call_evaluate(
    store: &mut Store<HostState>,
    func: Func,
    request: &bindings::types::Request,
    settings: &str,
    plan: &bindings::types::Plan,
) -> wasmtime::Result<Result<bindings::types::Plan, bindings::types::PolicyError>> {
    let f = func.typed::<
        (&bindings::types::Request, &str, &bindings::types::Plan),
        (Result<bindings::types::Plan, bindings::types::PolicyError>,),
    >(&*store)?;
    let (out,) = f.call(&mut *store, (request, settings, plan))?;
    Ok(out)
}

/// A stage's answer as the next plan, checked.
fn stage_result(
    name: &str,
    out: Result<bindings::types::Plan, bindings::types::PolicyError>,
) -> Result<Plan, PolicyError> {
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
    Ok(next)
}

/// How a stage's module was identified.
#[derive(Debug, Clone)]
struct Resolved {
    /// The module's sha256: its pin, or the file's (from the digest index
    /// or hashed now).
    digest: String,
    /// The module file, when it was looked at (not for a pinned stage).
    wasm: Option<PathBuf>,
    /// The file was hashed in this exec: record it once its artifact loads.
    hashed: bool,
}

/// Identifies a stage's module. With a pin this touches nothing: the hot
/// path never hashes modules or even looks them up.
fn resolve_stage(
    cache: &ArtifactCache,
    opts: &PipelineOptions,
    spec: &StageSpec,
) -> Result<Resolved, PolicyError> {
    if let Some(pin) = &spec.sha256 {
        return Ok(Resolved {
            digest: pin.clone(),
            wasm: None,
            hashed: false,
        });
    }
    resolve_file(cache, opts, spec)
}

/// Finds a stage's module file and its digest.
fn resolve_file(
    cache: &ArtifactCache,
    opts: &PipelineOptions,
    spec: &StageSpec,
) -> Result<Resolved, PolicyError> {
    let unavailable = |m: String| PolicyError::new(&spec.name, Failure::ArtifactUnavailable(m));
    let (wasm, meta) = resolve_module_meta(&spec.module, &opts.module_dirs).map_err(unavailable)?;
    // The digest index (written when the artifact was built) saves hashing
    // the file on every exec.
    let (digest, hashed) = match cache.known_digest_of(&meta) {
        Some(d) => (d, false),
        None => (
            sha256_file(&wasm).map_err(|e| unavailable(format!("{}: {e}", wasm.display())))?,
            true,
        ),
    };
    if let Some(pin) = &spec.sha256
        && *pin != digest
    {
        return Err(PolicyError::new(
            &spec.name,
            Failure::ModuleRefused(format!(
                "{} has sha256 {digest}, but the pipeline pins {pin}",
                wasm.display()
            )),
        ));
    }
    Ok(Resolved {
        digest,
        wasm: Some(wasm),
        hashed,
    })
}

/// Loads a resolved stage's artifact, rebuilding it when it is missing.
fn load_stage(
    engine: &Engine,
    cache: &ArtifactCache,
    opts: &PipelineOptions,
    spec: &StageSpec,
    resolved: &Resolved,
) -> Result<Component, PolicyError> {
    let component = match cache.load(engine, &resolved.digest) {
        Ok(c) => {
            if resolved.hashed
                && let Some(wasm) = &resolved.wasm
            {
                // The artifact exists but the index did not know this file
                // (e.g. written by an older tenet): record it so the next
                // exec need not hash the module again.
                let _ = cache.remember_digest(wasm, &resolved.digest);
            }
            c
        }
        Err(miss) => {
            tracing::debug!(stage = %spec.name, reason = %miss, "artifact miss");
            // A pinned stage's file is only looked at now, and must match.
            let file = match &resolved.wasm {
                Some(_) => resolved.clone(),
                None => resolve_file(cache, opts, spec)?,
            };
            let wasm = file.wasm.as_deref().unwrap_or(Path::new(""));
            opts.builder
                .build(engine, cache, wasm, &file.digest)
                .map_err(|m| {
                    PolicyError::new(
                        &spec.name,
                        Failure::ArtifactUnavailable(format!(
                            "no usable artifact for {}: {m}",
                            wasm.display()
                        )),
                    )
                })?
        }
    };
    check_component(engine, &component)
        .map_err(|m| PolicyError::new(&spec.name, Failure::ModuleRefused(m)))?;
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
    check_imports(engine, component)?;
    for export in STAGE_EXPORTS {
        if component.get_export_index(None, export).is_none() {
            return Err(format!(
                "does not export {export:?}: not a tenet:policy/stage@0.1.0 component"
            ));
        }
    }
    Ok(())
}

/// [`check_component`] for a pipeline bundle of `stages` stages: the same
/// import allowlist, and both functions of every stage.
fn check_bundle(engine: &Engine, component: &Component, stages: usize) -> Result<(), String> {
    check_imports(engine, component)?;
    for i in 0..stages {
        for func in STAGE_EXPORTS {
            let export = bundle::export_name(i, func);
            if component.get_export_index(None, export.as_str()).is_none() {
                return Err(format!("the pipeline bundle does not export {export:?}"));
            }
        }
    }
    Ok(())
}

/// The functions of the `stage` world.
const STAGE_EXPORTS: [&str; 2] = ["validate-settings", "evaluate"];

fn check_imports(engine: &Engine, component: &Component) -> Result<(), String> {
    let bad: Vec<String> = component
        .component_type()
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
    /// The stage being called (its name is in log lines and errors).
    stage: String,
    memory_cap: usize,
    memory_exceeded: bool,
    log_lines: u32,
    /// Stages whose instances live in this store (a bundle holds them all):
    /// the per-store counts below are per stage.
    stages: usize,
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
        16 * self.stages
    }

    fn tables(&self) -> usize {
        16 * self.stages
    }

    fn memories(&self) -> usize {
        4 * self.stages
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
