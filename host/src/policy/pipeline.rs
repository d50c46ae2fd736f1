//! Loading a manifest into runnable stages, and running them in order.
//!
//! Loading refuses what must never run (code 103, whatever the stage's
//! failure policy): a module whose file differs from its pin, an artifact
//! that records other modules than the one asked for (`cache.rs`), imports
//! beyond the allowlist, and imports the host's linker does not satisfy
//! exactly (an extra function under `tenet:policy/host`, `log` with another
//! signature), checked once with `instantiate_pre`.
//!
//! Running sets each stage's budgets on its store before the call: fuel,
//! memory cap, the hostcall fuel that bounds what the host lifts out of it,
//! and an epoch deadline (the stage's `timeout_ms`, or what is left of the
//! pipeline's, whichever is sooner). The answer is read out of the guest's
//! memory under the plan limits (`convert.rs`) and validated.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Func, Instance, InstancePre, Linker, WasmStr};
use wasmtime::{Engine, Store, Trap};

use super::bindings;
#[cfg(feature = "compiler")]
use super::cache::sha256_hex;
use super::cache::{ArtifactCache, Builder, LoadError, sha256_file};
use super::convert::{self, RawAnswer, StageError};
use super::host::{self, Armed, HostState, Ticker};
use super::manifest::{FailurePolicy, Manifest, ModuleRef, StageSpec};
use super::{ALLOWED_IMPORTS, Budget, Failure, PolicyError, bundle, clip_module_text, engine};
use crate::plan::{self, AddressAuthority, Command, Plan, Request};

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
    /// The ranges plans may use (tenet.toml `[addresses]`).
    pub authority: AddressAuthority,
}

/// A stage ready to run, or the reason it cannot (only kept for `ignore`).
struct LoadedStage {
    spec: StageSpec,
    /// How the module was identified (`None` when it could not be).
    resolved: Option<Resolved>,
    /// The stage's own component, its imports resolved: loaded at once
    /// without a bundle; with one, only if the bundle cannot serve this
    /// stage (see `run`).
    component: OnceCell<Result<InstancePre<HostState>, PolicyError>>,
}

/// A loaded pipeline.
pub struct Pipeline {
    engine: Engine,
    linker: Linker<HostState>,
    stages: Vec<LoadedStage>,
    /// Every stage in one component (`bundle.rs`), when the cache has it.
    bundle: Option<InstancePre<HostState>>,
    cache: ArtifactCache,
    opts: PipelineOptions,
    /// The whole run's deadline (the manifest's `timeout_ms`).
    timeout: Duration,
    /// Advances the epoch while the pipeline lives (started on first use).
    ticker: OnceCell<Result<Ticker, String>>,
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
    /// The final plan (validated), as stages wrote it.
    pub plan: Plan,
    /// For ADD, the final plan typed: what apply consumes.
    pub valid: Option<plan::ValidPlan>,
    /// A report per stage, in order.
    pub reports: Vec<StageReport>,
}

/// A bundle instantiated for one run: one store for all stages.
struct BundleRun {
    store: Store<HostState>,
    instance: Instance,
}

/// What a stage call gave back: the plan, as checked ([`plan::validate::structure`]),
/// the fuel used, the wall time.
type StageOk = (Plan, plan::ValidPlan, u64, Duration);

impl Pipeline {
    /// Loads every stage: resolves the module, finds (or rebuilds) its
    /// precompiled artifact, and refuses modules that differ from their pin,
    /// artifacts that record another module, and modules whose imports are
    /// not exactly what the host provides. A stage whose failure policy is
    /// `ignore` does not stop the load when its artifact is unavailable (it
    /// is skipped when run); a refusal always does.
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
        let internal =
            |e: wasmtime::Error| PolicyError::new("engine", Failure::Internal(e.to_string()));
        let engine = engine::new_engine().map_err(internal)?;
        let linker = host::linker(&engine).map_err(internal)?;
        let mut stages = Vec::with_capacity(manifest.stages.len());
        for spec in &manifest.stages {
            let resolved = resolve_stage(&cache, opts, spec);
            if let Err(e) = &resolved
                && (spec.failure == FailurePolicy::Fail || !e.failure.is_ignorable())
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
            timeout: Duration::from_millis(manifest.timeout_ms),
            ticker: OnceCell::new(),
        };
        if !pipeline.stages.is_empty() {
            // Started now, a thread comes up while the artifacts load (an
            // error is reported by the first run).
            let _ = pipeline.ticker();
        }
        pipeline.bundle = pipeline.load_bundle()?;
        if pipeline.bundle.is_none() {
            for stage in &pipeline.stages {
                if let Err(e) = pipeline.component(stage)
                    && (stage.spec.failure == FailurePolicy::Fail || !e.failure.is_ignorable())
                {
                    return Err(e.clone());
                }
            }
            #[cfg(feature = "compiler")]
            pipeline.build_bundle();
        }
        Ok(pipeline)
    }

    /// The ticker, started once (`host::Ticker`: an interval timer in a
    /// one-shot process, else a thread).
    fn ticker(&self) -> Result<&Ticker, PolicyError> {
        match self.ticker.get_or_init(|| {
            Ticker::start(&self.engine, self.opts.one_shot).map_err(|e| e.to_string())
        }) {
            Ok(t) => Ok(t),
            // Without it no deadline holds: fail closed.
            Err(e) => Err(PolicyError::new(
                "engine",
                Failure::Internal(format!("cannot start the deadline ticker: {e}")),
            )),
        }
    }

    /// The epoch advancing until the guard is dropped (held for a whole
    /// run: guest code runs only then).
    fn ticking(&self) -> Result<Armed, PolicyError> {
        self.ticker()?.arm().map_err(|e| {
            PolicyError::new(
                "engine",
                Failure::Internal(format!("cannot start the deadline ticker: {e}")),
            )
        })
    }

    /// Whether the stages run from one bundle artifact.
    pub fn is_bundled(&self) -> bool {
        self.bundle.is_some()
    }

    /// The module digests of every stage, in order, when all were
    /// identified.
    fn stage_digests(&self) -> Option<Vec<&str>> {
        self.stages
            .iter()
            .map(|s| s.resolved.as_ref().map(|r| r.digest.as_str()))
            .collect()
    }

    /// The bundle key of this pipeline, when every stage's module was
    /// identified and there is more than one stage.
    fn bundle_key(&self) -> Option<String> {
        if self.stages.len() < 2 {
            return None;
        }
        Some(bundle::key(self.stage_digests()?))
    }

    /// The bundle, if the cache has one for exactly these stages. A bundle
    /// recording other modules is refused (103); any other problem only
    /// means loading stage by stage.
    fn load_bundle(&self) -> Result<Option<InstancePre<HostState>>, PolicyError> {
        let Some(key) = self.bundle_key() else {
            return Ok(None);
        };
        let digests = self.stage_digests().unwrap_or_default();
        let started = Instant::now();
        let loaded = match self.cache.load(&self.engine, &key, &digests) {
            Ok(c) => check_bundle(&self.engine, &self.linker, &c, self.stages.len()),
            Err(LoadError::Mismatch(m)) => {
                return Err(PolicyError::new(
                    "bundle",
                    Failure::ModuleRefused(format!("the pipeline bundle {m}")),
                ));
            }
            Err(LoadError::Miss(m)) => Err(m),
        };
        match loaded {
            Ok(pre) => {
                tracing::debug!(bundle = %key, load_us = started.elapsed().as_micros() as u64, "pipeline bundle loaded");
                Ok(Some(pre))
            }
            Err(reason) => {
                tracing::debug!(bundle = %key, %reason, "no pipeline bundle; loading stage by stage");
                Ok(None)
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
        let digests = self.stage_digests().unwrap_or_default();
        let result = (|| {
            let mut wasm = Vec::with_capacity(self.stages.len());
            for (s, digest) in self.stages.iter().zip(&digests) {
                let (path, _) = resolve_module_meta(&s.spec.module, &self.opts.module_dirs)?;
                let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                // The file may have changed since it was identified.
                if sha256_hex(&bytes) != *digest {
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
            check_bundle(&self.engine, &self.linker, &c, self.stages.len())?;
            Ok(cwasm)
        })();
        match result {
            Ok(cwasm) => match self.cache.store(&key, &cwasm, &digests) {
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
    fn component<'a>(
        &self,
        stage: &'a LoadedStage,
    ) -> &'a Result<InstancePre<HostState>, PolicyError> {
        stage.component.get_or_init(|| {
            let started = Instant::now();
            let r = match &stage.resolved {
                Some(r) => load_stage(
                    &self.engine,
                    &self.linker,
                    &self.cache,
                    &self.opts,
                    &stage.spec,
                    r,
                ),
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
    /// checked after each stage, and for ADD checked complete at the end,
    /// its host links then given the node's host-link pool.
    pub fn run(&self, request: &Request, initial: Plan) -> Result<Outcome, PolicyError> {
        let end = Instant::now() + self.timeout;
        let authority = &self.opts.authority;
        check_input(request)?;
        // The typed form of the current plan: each stage's answer replaces
        // it, and the final one is what ADD applies.
        let mut valid = plan::validate::structure(&initial, authority)
            .map_err(|e| PolicyError::new("input", Failure::InvalidPlan(e)))?;
        let _ticking = if self.stages.is_empty() {
            None
        } else {
            Some(self.ticking()?)
        };
        let wit_request = convert::request_to_wit(request);
        let mut bundled = self.instantiate_bundle(end);
        let mut plan = initial;
        let mut reports = Vec::with_capacity(self.stages.len());
        for (index, stage) in self.stages.iter().enumerate() {
            let result = match bundled.as_mut() {
                Some(b) => self.run_bundled(b, index, &stage.spec, &wit_request, &plan, end),
                None => self
                    .component(stage)
                    .clone()
                    .and_then(|c| self.run_stage(&stage.spec, &c, &wit_request, &plan, end)),
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
                Ok((next, next_valid, fuel, elapsed)) => {
                    plan = next;
                    valid = next_valid;
                    StageRun::Ran { fuel, elapsed }
                }
                // A denial is a decision and a refusal an integrity check:
                // neither is ever skipped.
                Err(e)
                    if stage.spec.failure == FailurePolicy::Ignore && e.failure.is_ignorable() =>
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
        let valid = if request.command == Command::Add {
            let valid = plan::validate::finish(&mut plan, valid, request, authority)
                .map_err(|e| PolicyError::new("final", Failure::InvalidPlan(e)))?;
            Some(valid)
        } else {
            None
        };
        Ok(Outcome {
            plan,
            valid,
            reports,
        })
    }

    /// The deadline of a call of `spec` in a run ending at `end`: its own
    /// `timeout_ms`, or what is left of the run, whichever is sooner.
    fn deadline_ms(&self, spec: &StageSpec, end: Instant) -> Result<u64, PolicyError> {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(PolicyError::new(
                &spec.name,
                Failure::BudgetExceeded(Budget::Time(self.timeout.as_millis() as u64)),
            ));
        }
        Ok(spec.timeout_ms.min(left.as_millis().max(1) as u64))
    }

    /// Sets the budgets of a call of `spec` on `store`: its fuel, memory
    /// cap and log allowance, the hostcall fuel bounding what the host
    /// lifts during the call (a string the stage hands over cannot exceed
    /// its memory; longer lists are refused), and its epoch deadline.
    fn arm(
        &self,
        store: &mut Store<HostState>,
        spec: &StageSpec,
        end: Instant,
    ) -> Result<(), PolicyError> {
        let ms = self.deadline_ms(spec, end)?;
        store.data_mut().enter(&spec.name, spec.memory_bytes, ms);
        // Fuel is always enabled by the engine profile, so this cannot fail.
        let _ = store.set_fuel(spec.fuel);
        store.set_hostcall_fuel(spec.memory_bytes.max(convert::ELEMENT_BYTES));
        store.set_epoch_deadline(host::ticks(ms));
        Ok(())
    }

    /// Instantiates the bundle for one run. Any failure (a stage whose
    /// initial memory exceeds the smallest cap, say) falls back to stage by
    /// stage, where the failure is attributed to its stage.
    fn instantiate_bundle(&self, end: Instant) -> Option<BundleRun> {
        let bundle = self.bundle.as_ref()?;
        let started = Instant::now();
        let specs = || self.stages.iter().map(|s| &s.spec);
        // Instantiation runs no stage's code of its own; the smallest budget
        // of any stage bounds whatever it does run.
        let tightest = StageSpec {
            name: "pipeline bundle".into(),
            fuel: specs().map(|s| s.fuel).min().unwrap_or(0),
            memory_bytes: specs().map(|s| s.memory_bytes).min().unwrap_or(0),
            timeout_ms: specs().map(|s| s.timeout_ms).min().unwrap_or(1),
            ..self.stages.first()?.spec.clone()
        };
        let mut store = self.new_store(self.stages.len());
        self.arm(&mut store, &tightest, end).ok()?;
        match bundle.instantiate(&mut store) {
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

    /// Calls the stages' `validate-settings` only (used by `tenetctl policy
    /// compile` to check a pipeline's settings once at install).
    pub fn validate_settings(&self) -> Result<(), PolicyError> {
        let end = Instant::now() + self.timeout;
        let _ticking = if self.stages.is_empty() {
            None
        } else {
            Some(self.ticking()?)
        };
        for stage in &self.stages {
            let Ok(pre) = self.component(stage) else {
                continue;
            };
            let spec = &stage.spec;
            let name = spec.name.as_str();
            let mut store = self.new_store(1);
            self.arm(&mut store, spec, end)?;
            let inst = pre
                .instantiate(&mut store)
                .map_err(|e| classify(name, &store, e))?;
            let func = inst
                .get_func(&mut store, "validate-settings")
                .ok_or_else(|| {
                    PolicyError::new(name, Failure::Internal("no validate-settings".into()))
                })?;
            let out = func
                .typed::<(&str,), (Result<(), WasmStr>,)>(&store)
                .and_then(|f| f.call(&mut store, (spec.settings.as_str(),)))
                .map_err(|e| classify(name, &store, e))?
                .0;
            if let Err(m) = out {
                return Err(PolicyError::new(
                    name,
                    Failure::InvalidSettings(convert::read_message(&store, &m)),
                ));
            }
        }
        Ok(())
    }

    /// A store for `stages` stages' instances; [`Self::arm`] sets the
    /// limits of each call.
    fn new_store(&self, stages: usize) -> Store<HostState> {
        let mut store = Store::new(&self.engine, HostState::new("", 0, stages));
        store.limiter(|s| s);
        store
    }

    fn run_stage(
        &self,
        spec: &StageSpec,
        pre: &InstancePre<HostState>,
        request: &bindings::types::Request,
        plan: &Plan,
        end: Instant,
    ) -> Result<StageOk, PolicyError> {
        let start = Instant::now();
        let name = spec.name.as_str();
        let mut store = self.new_store(1);
        self.arm(&mut store, spec, end)?;
        let inst = pre
            .instantiate(&mut store)
            .map_err(|e| classify(name, &store, e))?;
        // Fuel is reported for the call alone, as from a bundle (whose
        // instantiation serves every stage); instantiation still draws on
        // the stage's budget here.
        let before = store.get_fuel().unwrap_or(0);
        let func = inst.get_func(&mut store, "evaluate").ok_or_else(|| {
            PolicyError::new(name, Failure::Internal("no evaluate export".into()))
        })?;
        // No validate-settings call here: `evaluate` must refuse bad settings
        // itself (the SDK does), and `tenetctl policy compile` validates them
        // once at install. That keeps a guest call off every exec.
        let out = call_evaluate(&mut store, func, request, &spec.settings, plan)
            .map_err(|e| classify(name, &store, e))?;
        let fuel = before - store.get_fuel().unwrap_or(0);
        let answer = self.stage_answer(name, &mut store, out);
        self.dispose(store);
        let (next, valid) = answer?;
        Ok((next, valid, fuel, start.elapsed()))
    }

    /// Drops a store, or in a one-shot process leaves it to the exit.
    fn dispose<T>(&self, value: T) {
        if self.opts.one_shot {
            std::mem::forget(value);
        }
    }

    /// [`Self::run_stage`] for the stage at `index` of an instantiated
    /// bundle: the stage's budgets are set on the shared store before its
    /// call. Its memory can only grow during its own call (stages share no
    /// memory), so the cap applies to it alone.
    fn run_bundled(
        &self,
        b: &mut BundleRun,
        index: usize,
        spec: &StageSpec,
        request: &bindings::types::Request,
        plan: &Plan,
        end: Instant,
    ) -> Result<StageOk, PolicyError> {
        let start = Instant::now();
        let name = spec.name.as_str();
        self.arm(&mut b.store, spec, end)?;
        let export = bundle::export_name(index, "evaluate");
        let func = b.instance.get_func(&mut b.store, &export).ok_or_else(|| {
            PolicyError::new(name, Failure::Internal(format!("bundle has no {export:?}")))
        })?;
        let out = call_evaluate(&mut b.store, func, request, &spec.settings, plan)
            .map_err(|e| classify(name, &b.store, e))?;
        let fuel = spec.fuel - b.store.get_fuel().unwrap_or(0);
        let (next, valid) = self.stage_answer(name, &mut b.store, out)?;
        Ok((next, valid, fuel, start.elapsed()))
    }

    /// A stage's answer, read out of its memory under the plan limits, as
    /// the next plan and its checked, typed form, or its error with the
    /// message clipped.
    fn stage_answer(
        &self,
        name: &str,
        store: &mut Store<HostState>,
        out: RawAnswer,
    ) -> Result<(Plan, plan::ValidPlan), PolicyError> {
        let next = match out {
            Ok(raw) => convert::read_plan(store, &raw)
                .map_err(|e| PolicyError::new(name, Failure::InvalidPlan(e)))?,
            Err(e) => {
                let f = match convert::read_error(store, &e) {
                    StageError::Denied(m) => Failure::Denied(m),
                    StageError::InvalidSettings(m) => Failure::InvalidSettings(m),
                    StageError::InvalidInput(m) => Failure::InvalidInput(m),
                    StageError::Internal(m) => Failure::Internal(m),
                };
                return Err(PolicyError::new(name, f));
            }
        };
        let valid = plan::validate::structure(&next, &self.opts.authority)
            .map_err(|e| PolicyError::new(name, Failure::InvalidPlan(e)))?;
        Ok((next, valid))
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if self.opts.one_shot {
            // The engine, the linker and every component: their teardown
            // (unmapping artifacts, unregistering code and types) is work
            // the exit does anyway, all at once. A ticker thread goes with
            // the process (an interval timer was stopped after the run).
            std::mem::forget(std::mem::take(&mut self.stages));
            std::mem::forget(self.bundle.take());
            std::mem::forget(self.ticker.take());
            let engine = self.engine.clone();
            std::mem::forget(engine);
        }
    }
}

/// Maps a wasmtime error to the failure taxonomy.
fn classify(stage: &str, store: &Store<HostState>, e: wasmtime::Error) -> PolicyError {
    let st = store.data();
    let failure = if st.memory_exceeded {
        Failure::BudgetExceeded(Budget::Memory)
    } else {
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => Failure::BudgetExceeded(Budget::Fuel),
            Some(Trap::Interrupt) => Failure::BudgetExceeded(Budget::Time(st.deadline_ms)),
            _ if format!("{e:#}").contains("too much data is being copied") => {
                Failure::BudgetExceeded(Budget::Output)
            }
            _ => Failure::Trap(clip_module_text(&format!("{:#}", e.root_cause()))),
        }
    };
    PolicyError::new(stage, failure)
}

/// Calls an `evaluate` export (type-checked against the WIT world's, its
/// answer left in the guest's memory).
fn call_evaluate(
    store: &mut Store<HostState>,
    func: Func,
    request: &bindings::types::Request,
    settings: &str,
    plan: &Plan,
) -> wasmtime::Result<RawAnswer> {
    let f = func.typed::<(&bindings::types::Request, &str, &bindings::types::Plan), (RawAnswer,)>(
        &*store,
    )?;
    let (out,) = f.call(
        &mut *store,
        (request, settings, &convert::plan_to_wit(plan)),
    )?;
    Ok(out)
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

/// The version of every module file `manifest` would resolve in `dirs`:
/// for each stage its file's identity and change times, or why it is not
/// found. Equal versions mean a load now would find the same files
/// (a pinned stage's file counts too: its artifact is found by the pin,
/// but a rebuild would read the file).
pub fn modules_version(manifest: &Manifest, dirs: &[PathBuf]) -> String {
    let mut v = String::new();
    for spec in &manifest.stages {
        match resolve_module_meta(&spec.module, dirs) {
            Ok((path, meta)) => {
                v.push_str(&path.to_string_lossy());
                v.push('=');
                v.push_str(&super::cache::file_key(&meta));
            }
            Err(e) => v.push_str(&e),
        }
        v.push('\n');
    }
    v
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

/// Loads a resolved stage's artifact, rebuilding it when it is missing, and
/// resolves its imports against the host's linker.
fn load_stage(
    engine: &Engine,
    linker: &Linker<HostState>,
    cache: &ArtifactCache,
    opts: &PipelineOptions,
    spec: &StageSpec,
    resolved: &Resolved,
) -> Result<InstancePre<HostState>, PolicyError> {
    let refused = |m: String| PolicyError::new(&spec.name, Failure::ModuleRefused(m));
    let component = match cache.load(engine, &resolved.digest, &[&resolved.digest]) {
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
        // Another module's artifact under this one's name.
        Err(LoadError::Mismatch(m)) => return Err(refused(m)),
        Err(LoadError::Miss(miss)) => {
            tracing::debug!(stage = %spec.name, reason = %miss, "artifact miss");
            // A pinned stage's file is only looked at now, and must match.
            let file = match &resolved.wasm {
                Some(_) => resolved.clone(),
                None => resolve_file(cache, opts, spec).map_err(|e| match e.failure {
                    // Nothing the pin vouches for is left to run.
                    Failure::ArtifactUnavailable(m) => refused(format!(
                        "no artifact matches its pin {} ({miss}) and no module file to rebuild it from: {m}",
                        resolved.digest
                    )),
                    _ => e,
                })?,
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
    check_component(engine, linker, &component).map_err(refused)
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
        ModuleRef::Named(n) => find_in_dirs(dirs, &format!("{n}.wasm"))
            .ok_or_else(|| format!("module {n:?} not found in {}", list_dirs(dirs))),
        // Never fetched here (the CNI exec has no business on the network):
        // a pull by tenetctl put it in a module dir, or it is missing.
        ModuleRef::Oci(r) => {
            let name = r
                .file_name()
                .ok_or_else(|| format!("{r}: a pipeline names OCI modules by digest only"))?;
            find_in_dirs(dirs, &name).ok_or_else(|| {
                format!(
                    "module {r} has not been pulled: no {name} in {}; pull it with \
                     `tenetctl policy pull {r} --verify-key KEY.pub --module-dir DIR` \
                     (or `tenetctl policy compile`/`install` with [distribution] verify_key); \
                     the CNI plugin never fetches modules",
                    list_dirs(dirs)
                )
            })
        }
    }
}

/// The first `<dir>/<name>` that is a file, with its metadata.
fn find_in_dirs(dirs: &[PathBuf], name: &str) -> Option<(PathBuf, std::fs::Metadata)> {
    dirs.iter().map(|d| d.join(name)).find_map(|p| {
        std::fs::metadata(&p)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| (p, m))
    })
}

fn list_dirs(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The imports and exports a loaded component must have, its imports
/// resolved against the host's linker.
fn check_component(
    engine: &Engine,
    linker: &Linker<HostState>,
    component: &Component,
) -> Result<InstancePre<HostState>, String> {
    check_imports(engine, component)?;
    for export in STAGE_EXPORTS {
        if component.get_export_index(None, export).is_none() {
            return Err(format!(
                "does not export {export:?}: not a tenet:policy/stage@0.1.0 component"
            ));
        }
    }
    pre_instantiate(linker, component)
}

/// Whether tenet would accept this component as a stage: the checks of
/// every load (imports allowlist, exports, imports resolved against the
/// host's linker). For `tenetctl policy inspect`.
pub fn check_module(engine: &Engine, component: &Component) -> Result<(), String> {
    let linker = host::linker(engine).map_err(|e| e.to_string())?;
    check_component(engine, &linker, component).map(drop)
}

/// [`check_component`] for a pipeline bundle of `stages` stages: the same
/// import checks, and both functions of every stage.
fn check_bundle(
    engine: &Engine,
    linker: &Linker<HostState>,
    component: &Component,
    stages: usize,
) -> Result<InstancePre<HostState>, String> {
    check_imports(engine, component)?;
    for i in 0..stages {
        for func in STAGE_EXPORTS {
            let export = bundle::export_name(i, func);
            if component.get_export_index(None, export.as_str()).is_none() {
                return Err(format!("the pipeline bundle does not export {export:?}"));
            }
        }
    }
    pre_instantiate(linker, component)
}

/// Resolves a component's imports against the host's linker: an import
/// under an allowed name whose type differs from what the host provides
/// (an extra function, another signature, a resource) fails here, at load,
/// not as a trap at run time.
fn pre_instantiate(
    linker: &Linker<HostState>,
    component: &Component,
) -> Result<InstancePre<HostState>, String> {
    linker.instantiate_pre(component).map_err(|e| {
        format!(
            "its imports do not match what tenet provides (tenet:policy/host@0.1.0 with exactly `log: func(level: level, message: string)`, and the type-only tenet:policy/types@0.1.0): {}",
            clip_module_text(&format!("{e:#}"))
        )
    })
}

/// The functions of the `stage` world.
const STAGE_EXPORTS: [&str; 2] = ["validate-settings", "evaluate"];

fn check_imports(engine: &Engine, component: &Component) -> Result<(), String> {
    let bad: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|n| !ALLOWED_IMPORTS.contains(n))
        .map(clip_module_text)
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
