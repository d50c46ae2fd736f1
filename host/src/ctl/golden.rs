//! `tenetctl policy test`: golden cases run through the production engine on
//! the real Wasm modules.
//!
//! A case is a JSON file:
//!
//! ```json
//! {
//!   "pipeline": "../rainbond.toml",          // relative to the case file
//!   "settings": { "tenant": { "denyUnknown": true } },  // optional per-stage overrides
//!   "request": { "command": "ADD", "containerId": "c1", "ifname": "eth0", "network": "k8s", … },
//!   "expect": { "plan": { … } }              // the exact final plan, or
//!   "expect": { "error": { "stage": "tenant", "kind": "denied", "contains": "…", "code": 100 } },
//!   "maxFuel": { "tenant": 200000 }          // optional per-stage fuel ceilings
//! }
//! ```
//!
//! `--update` rewrites `expect.plan` of passing-shape cases with the actual
//! plan (review the diff before committing it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::plan::initial_plan;
use super::{CtlError, ModuleArgs};
use crate::plan::{Plan, Request};
use crate::policy::{Manifest, Pipeline, StageRun};

/// Arguments of `tenetctl policy test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Case files, or directories of `*.json` cases.
    #[arg(required = true)]
    pub cases: Vec<PathBuf>,
    /// Rewrite each case's expected plan with the actual one.
    #[arg(long)]
    pub update: bool,
    #[command(flatten)]
    pub modules: ModuleArgs,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    pipeline: PathBuf,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    settings: BTreeMap<String, serde_json::Value>,
    request: Request,
    expect: Expect,
    #[serde(default)]
    max_fuel: BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expect {
    #[serde(default)]
    plan: Option<Plan>,
    #[serde(default)]
    error: Option<ExpectedError>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedError {
    stage: String,
    kind: String,
    #[serde(default)]
    contains: Option<String>,
    #[serde(default)]
    code: Option<u32>,
}

/// Case files under `paths`: files as given, directories recursively
/// (`*.json`, sorted, so runs are reproducible).
fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CtlError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| CtlError(format!("{}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for e in entries {
                if e.is_dir() {
                    out.extend(collect(&[e])?);
                } else if e.extension().is_some_and(|x| x == "json") {
                    out.push(e);
                }
            }
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Runs the cases; prints one line per case and a closing `N passed, M failed`.
pub fn run(args: &TestArgs, out: &mut dyn std::io::Write) -> Result<i32, CtlError> {
    let opts = args.modules.options()?;
    let files = collect(&args.cases)?;
    if files.is_empty() {
        return Err(CtlError("no test cases found".into()));
    }
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        let verdict = run_case(&file, &opts, args.update);
        let line = match &verdict {
            Ok(note) => {
                passed += 1;
                format!("ok   {} {note}", file.display())
            }
            Err(e) => {
                failed += 1;
                format!("FAIL {}: {e}", file.display())
            }
        };
        writeln!(out, "{line}").map_err(CtlError::msg)?;
    }
    writeln!(out, "{passed} passed, {failed} failed").map_err(CtlError::msg)?;
    Ok(if failed == 0 { 0 } else { 1 })
}

fn run_case(
    file: &Path,
    opts: &crate::policy::PipelineOptions,
    update: bool,
) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let case: Case = serde_json::from_str(&text).map_err(|e| format!("invalid case: {e}"))?;
    let _ = &case.description;
    let base = file.parent().unwrap_or(Path::new("."));
    let manifest_path = base.join(&case.pipeline);
    let mut manifest = Manifest::load(&manifest_path).map_err(|e| e.to_string())?;
    for (stage, settings) in &case.settings {
        let s = manifest
            .stages
            .iter_mut()
            .find(|s| &s.name == stage)
            .ok_or_else(|| {
                format!(
                    "settings.{stage}: no such stage in {}",
                    manifest_path.display()
                )
            })?;
        s.settings = settings.to_string();
    }
    for stage in case.max_fuel.keys() {
        if !manifest.stages.iter().any(|s| &s.name == stage) {
            return Err(format!("maxFuel.{stage}: no such stage"));
        }
    }
    let result = Pipeline::load(&manifest, opts)
        .and_then(|p| p.run(&case.request, initial_plan(&case.request)));
    match (result, &case.expect) {
        (
            Ok(outcome),
            Expect {
                plan: Some(want),
                error: None,
            },
        ) => {
            let mut fuel_note = Vec::new();
            for r in &outcome.reports {
                if let StageRun::Ran { fuel, .. } = r.run {
                    fuel_note.push(format!("{}={fuel}", r.stage));
                    if let Some(max) = case.max_fuel.get(&r.stage)
                        && fuel > *max
                    {
                        return Err(format!(
                            "stage {} used {fuel} fuel, more than maxFuel {max}",
                            r.stage
                        ));
                    }
                }
            }
            if &outcome.plan != want {
                if update {
                    rewrite_expected_plan(file, &text, &outcome.plan)?;
                    return Ok("(updated)".into());
                }
                return Err(format!(
                    "plan differs\n--- expected\n{}\n+++ actual\n{}",
                    serde_json::to_string_pretty(want).unwrap_or_default(),
                    serde_json::to_string_pretty(&outcome.plan).unwrap_or_default()
                ));
            }
            Ok(format!("(fuel {})", fuel_note.join(" ")))
        }
        (
            Err(e),
            Expect {
                error: Some(want),
                plan: None,
            },
        ) => {
            let mut problems = Vec::new();
            if e.stage != want.stage {
                problems.push(format!("stage {:?}, expected {:?}", e.stage, want.stage));
            }
            if e.failure.kind() != want.kind {
                problems.push(format!(
                    "kind {:?}, expected {:?}",
                    e.failure.kind(),
                    want.kind
                ));
            }
            if let Some(c) = &want.contains
                && !e.to_string().contains(c.as_str())
            {
                problems.push(format!(
                    "message {:?} does not contain {c:?}",
                    e.to_string()
                ));
            }
            if let Some(code) = want.code
                && e.cni_code() != code
            {
                problems.push(format!("CNI code {}, expected {code}", e.cni_code()));
            }
            if problems.is_empty() {
                Ok(format!("(error as expected: {})", e.failure.kind()))
            } else {
                Err(problems.join("; "))
            }
        }
        (
            Ok(outcome),
            Expect {
                error: Some(want), ..
            },
        ) => Err(format!(
            "expected error {} in stage {}, got a plan:\n{}",
            want.kind,
            want.stage,
            serde_json::to_string_pretty(&outcome.plan).unwrap_or_default()
        )),
        (Err(e), Expect { plan: Some(_), .. }) => Err(format!("expected a plan, got: {e}")),
        _ => Err("expect must have exactly one of plan or error".into()),
    }
}

fn rewrite_expected_plan(file: &Path, text: &str, plan: &Plan) -> Result<(), String> {
    let mut doc: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    doc["expect"]["plan"] = serde_json::to_value(plan).map_err(|e| e.to_string())?;
    let body = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())? + "\n";
    std::fs::write(file, body).map_err(|e| format!("{}: {e}", file.display()))
}
