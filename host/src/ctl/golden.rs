//! `tenetctl policy test`: golden cases run through the production engine on
//! the real Wasm modules.
//!
//! A case is a JSON file (the format is documented in
//! `docs/policy-authoring.md`):
//!
//! ```json
//! {
//!   "pipeline": "../rainbond.toml",          // relative to the case file
//!   "description": "…",
//!   "settings": { "tenant": { "denyUnknown": true } },  // merged into the stage's settings
//!   "request": { "command": "ADD", "containerId": "c1", "ifname": "eth0", "network": "k8s", … },
//!   "expect": { "plan": { … } },             // the exact final plan, and/or partial expectations:
//!   "expect": { "tenant": "acme",
//!               "interfaces": { "eth0": { "kind": "sdn-port", "families": ["ipv4", "ipv6"],
//!                                         "addresses": [ … ] } },
//!               "routes": [ { "dst": "::/0", "interface": "eth0", "via": "subnet-gateway" } ],
//!               "annotations": { "quota.example.com/tier": "gold" } },
//!   "expect": { "error": { "stage": "tenant", "kind": "denied", "contains": "…", "code": 100 } },
//!   "maxFuel": { "tenant": 200000 }          // optional per-stage fuel ceilings
//! }
//! ```
//!
//! `--update` records the actual outcome: it rewrites `expect.plan` of
//! cases that expect an exact plan, and writes `expect` (the plan or the
//! error) into cases that have none yet, so a new case is a pipeline and a
//! request. Partial expectations are never rewritten. `--filter TEXT` runs
//! the cases whose path or description contains TEXT.

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
    /// Record the actual outcome: rewrite exact expected plans, and write
    /// `expect` into cases that have none.
    #[arg(long)]
    pub update: bool,
    /// Run only the cases whose path or description contains this text.
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,
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
    #[serde(default)]
    expect: Option<Expect>,
    #[serde(default)]
    max_fuel: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expect {
    #[serde(default)]
    plan: Option<Plan>,
    #[serde(default)]
    error: Option<ExpectedError>,
    /// Partial: the tenant.
    #[serde(default)]
    tenant: Option<String>,
    /// Partial: interfaces by name.
    #[serde(default)]
    interfaces: BTreeMap<String, ExpectedInterface>,
    /// Partial: routes that must be in the plan (others may be too).
    #[serde(default)]
    routes: Vec<crate::plan::Route>,
    /// Partial: annotations that must be in the plan with these values.
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl Expect {
    fn partial(&self) -> bool {
        self.tenant.is_some()
            || !self.interfaces.is_empty()
            || !self.routes.is_empty()
            || !self.annotations.is_empty()
    }
}

/// What one interface must look like (each field optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExpectedInterface {
    #[serde(default)]
    kind: Option<crate::plan::InterfaceKind>,
    /// The address families requested, in order.
    #[serde(default)]
    families: Option<Vec<crate::plan::IpFamily>>,
    /// The address requests, exactly.
    #[serde(default)]
    addresses: Option<Vec<crate::plan::AddressRequest>>,
    /// `false`: the interface must not be planned.
    #[serde(default)]
    present: Option<bool>,
}

/// The partial expectations `plan` does not meet.
fn partial_problems(want: &Expect, plan: &Plan) -> Vec<String> {
    let mut p = Vec::new();
    if let Some(t) = &want.tenant
        && &plan.tenant != t
    {
        p.push(format!("tenant {:?}, expected {t:?}", plan.tenant));
    }
    for (name, w) in &want.interfaces {
        let got = plan.interface(name);
        match (got, w.present) {
            (Some(_), Some(false)) => p.push(format!("interface {name} is planned, expected none")),
            (None, Some(false)) => {}
            (None, _) => p.push(format!("interface {name} is not planned")),
            (Some(i), _) => {
                if let Some(k) = w.kind
                    && i.kind != k
                {
                    p.push(format!(
                        "interface {name}: kind {:?}, expected {k:?}",
                        i.kind
                    ));
                }
                let fams: Vec<_> = i.addresses.iter().map(|a| a.family).collect();
                if let Some(f) = &w.families
                    && &fams != f
                {
                    p.push(format!(
                        "interface {name}: families {fams:?}, expected {f:?}"
                    ));
                }
                if let Some(a) = &w.addresses
                    && &i.addresses != a
                {
                    p.push(format!(
                        "interface {name}: addresses {}, expected {}",
                        serde_json::to_string(&i.addresses).unwrap_or_default(),
                        serde_json::to_string(a).unwrap_or_default()
                    ));
                }
            }
        }
    }
    for r in &want.routes {
        if !plan.routes.contains(r) {
            p.push(format!(
                "route {} missing (routes: {})",
                serde_json::to_string(r).unwrap_or_default(),
                serde_json::to_string(&plan.routes).unwrap_or_default()
            ));
        }
    }
    for (k, v) in &want.annotations {
        match plan.annotations.iter().find(|kv| &kv.key == k) {
            Some(kv) if &kv.value == v => {}
            Some(kv) => p.push(format!("annotation {k} = {:?}, expected {v:?}", kv.value)),
            None => p.push(format!("annotation {k} missing")),
        }
    }
    p
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
                .map_err(|e| CtlError::Message(format!("{}: {e}", p.display())))?
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
        return Err(CtlError::Message("no test cases found".into()));
    }
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        if let Some(f) = &args.filter
            && !file.display().to_string().contains(f.as_str())
            && !case_description(&file).is_some_and(|d| d.contains(f.as_str()))
        {
            continue;
        }
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
        writeln!(out, "{line}").map_err(CtlError::from_err)?;
    }
    if passed + failed == 0 {
        return Err(CtlError::Message(format!(
            "no test case matches --filter {:?}",
            args.filter.as_deref().unwrap_or_default()
        )));
    }
    writeln!(out, "{passed} passed, {failed} failed").map_err(CtlError::from_err)?;
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
        super::plan::override_settings(&mut manifest, stage, settings)
            .map_err(|e| format!("settings.{e} in {}", manifest_path.display()))?;
    }
    for stage in case.max_fuel.keys() {
        if !manifest.stages.iter().any(|s| &s.name == stage) {
            return Err(format!("maxFuel.{stage}: no such stage"));
        }
    }
    let result = crate::policy::metadata::check_manifest(&manifest, &opts.module_dirs)
        .and_then(|()| Pipeline::load(&manifest, opts))
        .and_then(|p| p.run(&case.request, initial_plan(&case.request)));
    let Some(expect) = &case.expect else {
        if !update {
            return Err("no `expect` in the case: run with --update to record the outcome".into());
        }
        let recorded = match &result {
            Ok(o) => serde_json::json!({ "plan": o.plan }),
            Err(e) => serde_json::json!({ "error": {
                "stage": e.stage, "kind": e.failure.kind(), "code": e.cni_code() } }),
        };
        rewrite_expect(file, &text, recorded)?;
        return Ok("(expectation recorded)".into());
    };
    if let Ok(outcome) = &result
        && expect.partial()
    {
        let problems = partial_problems(expect, &outcome.plan);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        if expect.plan.is_none() && expect.error.is_none() {
            return check_fuel(&case, outcome).map(|f| format!("(partial; fuel {f})"));
        }
    }
    match (result, expect) {
        (
            Ok(outcome),
            Expect {
                plan: Some(want),
                error: None,
                ..
            },
        ) => {
            let fuel_note = check_fuel(&case, &outcome)?;
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
            Ok(format!("(fuel {fuel_note})"))
        }
        (
            Err(e),
            Expect {
                error: Some(want),
                plan: None,
                ..
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
        _ => Err("expect must have a plan, an error, or partial expectations (tenant, interfaces, routes, annotations), and not both a plan and an error".into()),
    }
}

/// The case's description, for `--filter`.
fn case_description(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("description")?.as_str().map(str::to_owned)
}

/// Checks `maxFuel`; returns the fuel note (`stage=fuel …`).
fn check_fuel(case: &Case, outcome: &crate::policy::Outcome) -> Result<String, String> {
    let mut note = Vec::new();
    for r in &outcome.reports {
        if let StageRun::Ran { fuel, .. } = r.run {
            note.push(format!("{}={fuel}", r.stage));
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
    Ok(note.join(" "))
}

/// Writes `expect` into a case file that has none.
fn rewrite_expect(file: &Path, text: &str, expect: serde_json::Value) -> Result<(), String> {
    let mut doc: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    doc["expect"] = expect;
    let body = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())? + "\n";
    std::fs::write(file, body).map_err(|e| format!("{}: {e}", file.display()))
}

fn rewrite_expected_plan(file: &Path, text: &str, plan: &Plan) -> Result<(), String> {
    let mut doc: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    doc["expect"]["plan"] = serde_json::to_value(plan).map_err(|e| e.to_string())?;
    let body = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())? + "\n";
    std::fs::write(file, body).map_err(|e| format!("{}: {e}", file.display()))
}
