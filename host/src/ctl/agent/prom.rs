//! The agent's metrics: aggregates of the exec records and the agent's own
//! observations, rendered in the Prometheus text exposition format 0.0.4.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::metrics::ExecRecord;

/// Buckets of whole CNI operations, in seconds.
const OP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of one stage call or apply step, in seconds.
const STAGE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Distinct label sets kept per metric; more are counted under `other`
/// (a stage or step name is operator-chosen, but a bound costs nothing).
const MAX_SERIES: usize = 256;

/// One histogram's counts.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative), the last for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut acc = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            acc += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {acc}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// A bounded map: past [`MAX_SERIES`] keys, new keys go to `other`.
fn slot<K: Ord + Clone, V>(
    map: &mut BTreeMap<K, V>,
    key: K,
    other: K,
    new: impl Fn() -> V,
) -> &mut V {
    let key = if map.len() >= MAX_SERIES && !map.contains_key(&key) {
        other
    } else {
        key
    };
    map.entry(key).or_insert_with(new)
}

/// Everything the exec records told so far.
#[derive(Debug, Default)]
pub struct ExecAggregates {
    ops: BTreeMap<(String, String), u64>,
    op_seconds: BTreeMap<(String, String), Histogram>,
    stage_seconds: BTreeMap<String, Histogram>,
    stage_fuel: BTreeMap<String, u64>,
    stage_skipped: BTreeMap<String, u64>,
    step_seconds: BTreeMap<String, Histogram>,
    pipeline_runs: BTreeMap<String, u64>,
    invalid: u64,
}

impl ExecAggregates {
    /// Adds records (and the count of lines that did not parse).
    pub fn add(&mut self, records: &[ExecRecord], invalid: usize) {
        self.invalid += invalid as u64;
        let other2 = || ("other".to_owned(), "other".to_owned());
        for r in records {
            let key = (r.cmd.clone(), r.code.to_string());
            *slot(&mut self.ops, key.clone(), other2(), || 0) += 1;
            slot(&mut self.op_seconds, key, other2(), || {
                Histogram::new(OP_BUCKETS)
            })
            .observe(r.us as f64 / 1e6);
            for s in &r.stages {
                if s.skipped {
                    *slot(
                        &mut self.stage_skipped,
                        s.name.clone(),
                        "other".into(),
                        || 0,
                    ) += 1;
                    continue;
                }
                slot(
                    &mut self.stage_seconds,
                    s.name.clone(),
                    "other".into(),
                    || Histogram::new(STAGE_BUCKETS),
                )
                .observe(s.us as f64 / 1e6);
                let f = slot(&mut self.stage_fuel, s.name.clone(), "other".into(), || 0);
                *f = f.saturating_add(s.fuel);
            }
            for s in &r.steps {
                // `veth:eth0` → `veth`: one series per kind of step.
                let kind = s.name.split(':').next().unwrap_or_default().to_owned();
                slot(&mut self.step_seconds, kind, "other".into(), || {
                    Histogram::new(STAGE_BUCKETS)
                })
                .observe(s.us as f64 / 1e6);
            }
            if let Some(b) = r.bundled {
                *self.pipeline_runs.entry(b.to_string()).or_default() += 1;
            }
        }
    }
}

/// What the agent observed itself, at scrape time.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AgentGauges {
    /// The address store answered its status probe (None: not probed,
    /// the configuration did not load).
    pub store_up: Option<bool>,
    /// The SDN answered its status probe.
    pub sdn_up: Option<bool>,
    /// The configuration loads.
    pub config_ok: bool,
    /// The pipeline's artifacts and bundle are built for what is on disk.
    pub artifacts_current: bool,
    /// Addresses held by this node's attachments: (tenant, pool) → count.
    pub pool_used: BTreeMap<(String, String), u64>,
    /// Attachments the agent's GC tore down, since it started.
    pub gc_removed: u64,
    /// GC passes by result (`ok`, `cri_error`, `error`).
    pub gc_runs: BTreeMap<String, u64>,
    /// Upkeep rebuilds by result (`ok`, `error`).
    pub rebuilds: BTreeMap<String, u64>,
    /// The last write of the node's kubeconfig succeeded (None: the agent
    /// does not write one).
    pub kubeconfig_ok: Option<bool>,
}

/// Escapes a label value (backslash, double quote, newline).
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn bool_gauge(out: &mut String, name: &str, help: &str, v: Option<bool>) {
    if let Some(v) = v {
        head(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {}", u8::from(v));
    }
}

/// The whole exposition.
pub fn render(agg: &ExecAggregates, g: &AgentGauges) -> String {
    let mut o = String::new();
    head(
        &mut o,
        "tenet_cni_operations_total",
        "counter",
        "CNI operations run by tenet on this node, by command and result code (0 = success).",
    );
    for ((cmd, code), n) in &agg.ops {
        let _ = writeln!(
            o,
            "tenet_cni_operations_total{{command=\"{}\",code=\"{}\"}} {n}",
            escape(cmd),
            escape(code)
        );
    }
    head(
        &mut o,
        "tenet_cni_duration_seconds",
        "histogram",
        "Wall time of CNI operations inside tenet, by command and result code.",
    );
    for ((cmd, code), h) in &agg.op_seconds {
        let labels = format!("command=\"{}\",code=\"{}\"", escape(cmd), escape(code));
        h.render(&mut o, "tenet_cni_duration_seconds", &labels);
    }
    head(
        &mut o,
        "tenet_stage_duration_seconds",
        "histogram",
        "Wall time of one policy stage's call, by stage.",
    );
    for (stage, h) in &agg.stage_seconds {
        h.render(
            &mut o,
            "tenet_stage_duration_seconds",
            &format!("stage=\"{}\"", escape(stage)),
        );
    }
    head(
        &mut o,
        "tenet_stage_fuel_total",
        "counter",
        "Wasm fuel consumed by a policy stage, by stage.",
    );
    for (stage, n) in &agg.stage_fuel {
        let _ = writeln!(
            o,
            "tenet_stage_fuel_total{{stage=\"{}\"}} {n}",
            escape(stage)
        );
    }
    head(
        &mut o,
        "tenet_stage_skipped_total",
        "counter",
        "Stage runs that failed and were skipped (failure = \"ignore\"), by stage.",
    );
    for (stage, n) in &agg.stage_skipped {
        let _ = writeln!(
            o,
            "tenet_stage_skipped_total{{stage=\"{}\"}} {n}",
            escape(stage)
        );
    }
    head(
        &mut o,
        "tenet_apply_step_duration_seconds",
        "histogram",
        "Wall time of an ADD's apply steps, by kind of step.",
    );
    for (step, h) in &agg.step_seconds {
        h.render(
            &mut o,
            "tenet_apply_step_duration_seconds",
            &format!("step=\"{}\"", escape(step)),
        );
    }
    head(
        &mut o,
        "tenet_pipeline_runs_total",
        "counter",
        "Pipeline runs, by whether they ran from the bundle artifact (false: stage by stage).",
    );
    for (b, n) in &agg.pipeline_runs {
        let _ = writeln!(o, "tenet_pipeline_runs_total{{bundled=\"{b}\"}} {n}");
    }
    head(
        &mut o,
        "tenet_agent_exec_records_invalid_total",
        "counter",
        "Exec record lines the agent could not parse.",
    );
    let _ = writeln!(o, "tenet_agent_exec_records_invalid_total {}", agg.invalid);
    bool_gauge(
        &mut o,
        "tenet_config_ok",
        "1 when the tenet configuration loads.",
        Some(g.config_ok),
    );
    bool_gauge(
        &mut o,
        "tenet_store_up",
        "1 when the address store answers its status probe.",
        g.store_up,
    );
    bool_gauge(
        &mut o,
        "tenet_sdn_up",
        "1 when the SDN backend answers its status probe.",
        g.sdn_up,
    );
    bool_gauge(
        &mut o,
        "tenet_artifacts_current",
        "1 when the pipeline's artifacts and bundle are built for the files on disk.",
        Some(g.artifacts_current),
    );
    bool_gauge(
        &mut o,
        "tenet_agent_kubeconfig_ok",
        "1 when the last refresh of the node's kubeconfig (--write-kubeconfig) succeeded.",
        g.kubeconfig_ok,
    );
    head(
        &mut o,
        "tenet_pool_addresses_used",
        "gauge",
        "Addresses held by this node's attachments, by tenant and pool (the tenant subnet).",
    );
    for ((tenant, pool), n) in &g.pool_used {
        let _ = writeln!(
            o,
            "tenet_pool_addresses_used{{tenant=\"{}\",pool=\"{}\"}} {n}",
            escape(tenant),
            escape(pool)
        );
    }
    head(
        &mut o,
        "tenet_agent_gc_removed_total",
        "counter",
        "Attachments whose sandbox was gone that the agent's GC tore down.",
    );
    let _ = writeln!(o, "tenet_agent_gc_removed_total {}", g.gc_removed);
    head(
        &mut o,
        "tenet_agent_gc_runs_total",
        "counter",
        "Agent GC passes, by result (ok, cri_error: the sandbox list failed and nothing was removed, error).",
    );
    for (r, n) in &g.gc_runs {
        let _ = writeln!(
            o,
            "tenet_agent_gc_runs_total{{result=\"{}\"}} {n}",
            escape(r)
        );
    }
    head(
        &mut o,
        "tenet_agent_rebuilds_total",
        "counter",
        "Artifact and bundle rebuilds by the agent's upkeep, by result.",
    );
    for (r, n) in &g.rebuilds {
        let _ = writeln!(
            o,
            "tenet_agent_rebuilds_total{{result=\"{}\"}} {n}",
            escape(r)
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{StageSample, StepSample};

    fn rec(cmd: &str, code: u32, us: u64) -> ExecRecord {
        ExecRecord {
            cmd: cmd.into(),
            code,
            us,
            bundled: Some(true),
            stages: vec![
                StageSample {
                    name: "tenant".into(),
                    us: 300,
                    fuel: 1000,
                    skipped: false,
                },
                StageSample {
                    name: "opt".into(),
                    us: 0,
                    fuel: 0,
                    skipped: true,
                },
            ],
            steps: vec![StepSample {
                name: "veth:eth0".into(),
                us: 2000,
            }],
            ..ExecRecord::default()
        }
    }

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
    }

    fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        let hit = s
            .samples
            .iter()
            .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?}"));
        match &hit.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|c| c.count).fold(0.0, f64::max),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_exposition_parses_back_with_the_counts_recorded() {
        let mut agg = ExecAggregates::default();
        agg.add(
            &[
                rec("ADD", 0, 20_000),
                rec("ADD", 0, 40_000),
                rec("ADD", 11, 3_000_000),
                rec("DEL", 0, 1_000),
            ],
            2,
        );
        let mut g = AgentGauges {
            store_up: Some(true),
            sdn_up: Some(false),
            config_ok: true,
            artifacts_current: true,
            gc_removed: 3,
            ..AgentGauges::default()
        };
        g.pool_used
            .insert(("team-a".into(), "10.1.0.0/24".into()), 7);
        let text = render(&agg, &g);
        let s = parse(&text);
        let ops = [("command", "ADD"), ("code", "0")];
        assert_eq!(value(&s, "tenet_cni_operations_total", &ops), 2.0);
        assert_eq!(
            value(
                &s,
                "tenet_cni_operations_total",
                &[("command", "ADD"), ("code", "11")]
            ),
            1.0
        );
        assert_eq!(value(&s, "tenet_cni_duration_seconds", &ops), 2.0);
        assert_eq!(
            value(&s, "tenet_stage_fuel_total", &[("stage", "tenant")]),
            4000.0
        );
        assert_eq!(
            value(&s, "tenet_stage_skipped_total", &[("stage", "opt")]),
            4.0
        );
        assert_eq!(
            value(&s, "tenet_apply_step_duration_seconds", &[("step", "veth")]),
            4.0
        );
        assert_eq!(value(&s, "tenet_sdn_up", &[]), 0.0);
        assert_eq!(value(&s, "tenet_store_up", &[]), 1.0);
        assert_eq!(
            value(&s, "tenet_pool_addresses_used", &[("tenant", "team-a")]),
            7.0
        );
        assert_eq!(value(&s, "tenet_agent_gc_removed_total", &[]), 3.0);
        assert_eq!(
            value(&s, "tenet_agent_exec_records_invalid_total", &[]),
            2.0
        );
        // The histogram's buckets are cumulative: 20 ms and 40 ms ADDs are
        // both under 50 ms, neither under 10 ms.
        assert!(text.contains(
            "tenet_cni_duration_seconds_bucket{command=\"ADD\",code=\"0\",le=\"0.05\"} 2"
        ));
        assert!(text.contains(
            "tenet_cni_duration_seconds_bucket{command=\"ADD\",code=\"0\",le=\"0.01\"} 0"
        ));
    }

    #[test]
    fn hostile_label_values_are_escaped_and_series_are_bounded() {
        let mut agg = ExecAggregates::default();
        let many: Vec<ExecRecord> = (0..MAX_SERIES + 50)
            .map(|i| ExecRecord {
                cmd: format!("X{i}\"\n\\"),
                ..ExecRecord::default()
            })
            .collect();
        agg.add(&many, 0);
        let text = render(&agg, &AgentGauges::default());
        let s = parse(&text);
        let ops: Vec<_> = s
            .samples
            .iter()
            .filter(|x| x.metric == "tenet_cni_operations_total")
            .collect();
        assert_eq!(ops.len(), MAX_SERIES + 1, "bounded, plus `other`");
        assert_eq!(
            value(&s, "tenet_cni_operations_total", &[("command", "other")]),
            50.0
        );
        assert!(
            !text.lines().any(|l| l.starts_with('\\')),
            "no raw newline in a label"
        );
        assert_eq!(escape("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }
}
