//! The policy pipeline: sandboxed Wasm components that turn a request into a
//! plan.
//!
//! Each stage runs in its own instance with its own linear memory, a fuel
//! budget (CPU), a memory cap, and no imports but `tenet:policy/host.log`: no
//! filesystem, network, clock or stdout. Modules are loaded precompiled from
//! the artifact cache (`cache`), all stages of a pipeline at once from its
//! bundle when there is one (`bundle`: one artifact and one store per exec,
//! the limits still set per stage), else stage by stage, each in its own
//! `Store`. The plan is checked by `plan::validate` after every stage.
//!
//! The host boundary (docs/security.md): what a stage returns is read
//! lazily from its memory and bounded before it is copied (`convert`); every
//! string a module wrote is clipped before it reaches stdout, logs or
//! records ([`clip_module_text`]); `host.log` is charged in fuel per call and
//! per byte and capped per call and per stage; every stage and the whole
//! pipeline have a wall-clock deadline (epoch interruption); and a module
//! that is refused (imports, digest, artifact) is never skipped, whatever
//! its failure policy.

mod bindings;
pub mod bundle;
pub mod cache;
mod convert;
pub mod engine;
mod host;
pub mod manifest;
pub mod metadata;
pub mod oci;
mod pipeline;

pub use host::log_limits;
pub use manifest::{FailurePolicy, Manifest, ManifestError, ModuleRef, StageSpec};
pub use pipeline::{
    Outcome, Pipeline, PipelineOptions, StageReport, StageRun, check_module, input_limits,
    modules_version, resolve_module as resolve_module_path,
};

use crate::cni::code;
use crate::plan::PlanError;

/// The imports a stage may have: the `host` interface (logging) and the
/// `types` interface, which carries type definitions only (no functions).
pub const ALLOWED_IMPORTS: &[&str] = &["tenet:policy/host@0.1.0", "tenet:policy/types@0.1.0"];

/// Which budget a stage exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// The fuel (CPU) budget; `host.log` is charged in it too.
    Fuel,
    /// The linear memory cap.
    Memory,
    /// The wall-clock deadline of the stage, or what was left of the
    /// pipeline's (milliseconds).
    Time(u64),
    /// More data than the host copies out of a stage in one call (its
    /// answer, or a log line beyond the stage's memory).
    Output,
}

/// Bytes kept of any text a module wrote (denial and error messages, log
/// lines, settings errors) before it reaches stdout, logs or records.
pub const MODULE_TEXT_BYTES: usize = 1024;

/// Module text made safe to print: at most [`MODULE_TEXT_BYTES`] bytes
/// (cut at a character boundary, with a marker saying how long it was), and
/// control characters escaped so a message cannot forge log lines. Costs
/// O(kept bytes), not O(input).
pub fn clip_module_text(s: &str) -> String {
    clip_text(s, MODULE_TEXT_BYTES)
}

/// [`clip_module_text`] with an explicit limit.
pub fn clip_text(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 40);
    for c in s.chars() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(before);
            out.push_str(&format!("… (clipped: {} bytes in all)", s.len()));
            return out;
        }
    }
    out
}

/// What went wrong in a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The module refused the pod.
    Denied(String),
    /// The module refused its settings.
    InvalidSettings(String),
    /// The module found the request or plan unusable.
    InvalidInput(String),
    /// The module reported an internal error.
    Internal(String),
    /// The module trapped (panic, unreachable, out-of-bounds access).
    Trap(String),
    /// The module ran out of fuel or memory.
    BudgetExceeded(Budget),
    /// No loadable artifact for the module (missing, incompatible, or the
    /// rebuild failed). Transient: a node agent or retry can fix it.
    ArtifactUnavailable(String),
    /// The module is not acceptable: digest differs from the pin, or it
    /// imports something not allowed, or it does not export the world.
    ModuleRefused(String),
    /// The plan the module returned breaks a host invariant.
    InvalidPlan(PlanError),
}

/// A stage failure, named after the stage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy stage {stage:?}: {}: {}", .failure.kind(), .failure.detail())]
pub struct PolicyError {
    /// The stage's name (or "input" for host checks before any stage).
    pub stage: String,
    /// What happened.
    pub failure: Failure,
}

impl Failure {
    /// Short kind name used in messages and docs.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Denied(_) => "denied",
            Failure::InvalidSettings(_) => "invalid settings",
            Failure::InvalidInput(_) => "invalid input",
            Failure::Internal(_) => "internal error",
            Failure::Trap(_) => "trap",
            Failure::BudgetExceeded(_) => "budget exceeded",
            Failure::ArtifactUnavailable(_) => "artifact unavailable",
            Failure::ModuleRefused(_) => "module refused",
            Failure::InvalidPlan(_) => "invalid plan",
        }
    }

    /// The detail text.
    pub fn detail(&self) -> String {
        match self {
            Failure::Denied(m)
            | Failure::InvalidSettings(m)
            | Failure::InvalidInput(m)
            | Failure::Internal(m)
            | Failure::Trap(m)
            | Failure::ArtifactUnavailable(m)
            | Failure::ModuleRefused(m) => m.clone(),
            Failure::BudgetExceeded(Budget::Fuel) => {
                "fuel exhausted (CPU budget, host.log included)".into()
            }
            Failure::BudgetExceeded(Budget::Memory) => "memory cap reached".into(),
            Failure::BudgetExceeded(Budget::Time(ms)) => {
                format!("wall-clock deadline of {ms} ms exceeded")
            }
            Failure::BudgetExceeded(Budget::Output) => {
                "the stage handed the host more data than it copies in one call".into()
            }
            Failure::InvalidPlan(e) => e.to_string(),
        }
    }
}

impl Failure {
    /// Whether `failure = "ignore"` may skip it. A denial is a decision and
    /// a refusal (forbidden imports, a digest or artifact that does not
    /// match the pin) is the operator's integrity check: neither is ever
    /// skipped. Everything else (traps, budgets, an unavailable artifact,
    /// an invalid plan, the module's own errors) may be.
    pub fn is_ignorable(&self) -> bool {
        !matches!(self, Failure::Denied(_) | Failure::ModuleRefused(_))
    }
}

impl PolicyError {
    pub(crate) fn new(stage: &str, failure: Failure) -> Self {
        PolicyError {
            stage: stage.to_owned(),
            failure,
        }
    }

    /// The CNI error code for this failure (README lists them).
    pub fn cni_code(&self) -> u32 {
        match self.failure {
            Failure::Denied(_) => code::POLICY_DENIED,
            Failure::Trap(_) => code::POLICY_TRAP,
            Failure::BudgetExceeded(_) => code::POLICY_BUDGET_EXCEEDED,
            Failure::ArtifactUnavailable(_) => code::TRY_AGAIN_LATER,
            Failure::ModuleRefused(_) => code::POLICY_MODULE_REFUSED,
            Failure::InvalidPlan(_) => code::POLICY_INVALID_PLAN,
            Failure::InvalidSettings(_) => code::POLICY_INVALID_SETTINGS,
            Failure::InvalidInput(_) => code::POLICY_INVALID_INPUT,
            Failure::Internal(_) => code::POLICY_INTERNAL,
        }
    }

    /// As a CNI error: msg names the stage and the kind, details the cause.
    pub fn to_cni(&self) -> crate::cni::CniError {
        crate::cni::CniError::new(
            self.cni_code(),
            format!("policy stage {:?}: {}", self.stage, self.failure.kind()),
            self.failure.detail(),
        )
    }
}
