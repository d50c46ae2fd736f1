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

mod bindings;
pub mod bundle;
pub mod cache;
mod convert;
pub mod engine;
pub mod manifest;
pub mod metadata;
mod pipeline;

pub use manifest::{FailurePolicy, Manifest, ManifestError, ModuleRef, StageSpec};
pub use pipeline::{
    Outcome, Pipeline, PipelineOptions, StageReport, StageRun, input_limits,
    resolve_module as resolve_module_path,
};

use crate::cni::code;
use crate::plan::PlanError;

/// The imports a stage may have: the `host` interface (logging) and the
/// `types` interface, which carries type definitions only (no functions).
pub const ALLOWED_IMPORTS: &[&str] = &["tenet:policy/host@0.1.0", "tenet:policy/types@0.1.0"];

/// Which budget a stage exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// The fuel (CPU) budget.
    Fuel,
    /// The linear memory cap.
    Memory,
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
            Failure::BudgetExceeded(Budget::Fuel) => "fuel exhausted (CPU budget)".into(),
            Failure::BudgetExceeded(Budget::Memory) => "memory cap reached".into(),
            Failure::InvalidPlan(e) => e.to_string(),
        }
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
