//! `tenant-map`: decides the pod's tenant (`plan.tenant`).
//!
//! Rules, first match wins:
//! 1. `labels`: the first of these pod labels that is present (e.g.
//!    Rainbond's `tenant_id`);
//!    `namespaceLabels`: then the first of these labels of the pod's
//!    namespace (e.g. Capsule's `capsule.clastix.io/tenant`), which the
//!    host passes in `request.extra` as `namespace.label/<key>` when the
//!    network reads labels from the Kubernetes API;
//! 2. `map`: an explicit namespace → tenant table;
//! 3. `prefixes`: `{ prefix, tenant?, strip? }` — a namespace starting with
//!    `prefix` belongs to `tenant`, or to the namespace itself, minus the
//!    prefix when `strip` is set;
//! 4. `regexes`: `{ pattern, tenant }` — the whole namespace matches
//!    `pattern` (see `tenet_policy_sdk::pattern` for the syntax) and `tenant`
//!    may use its captures (`$1`);
//! 5. the namespace itself, when `fromNamespace` (default true);
//! 6. `defaultTenant`.
//!
//! When nothing decides, the pod is denied if `denyUnknown` is set and put
//! in tenant `default` otherwise. A decided name is normalised to a safe
//! tenant id (lower case, other characters become `-`, at most 63); one that
//! normalises to nothing is denied.
//!
//! ```toml
//! [stage.settings]
//! labels = ["tenant_id"]
//! namespaceLabels = ["capsule.clastix.io/tenant"]
//! map = { "kube-system" = "infra" }
//! prefixes = [{ prefix = "team-", strip = true }]
//! regexes = [{ pattern = "(org|biz)-([a-z0-9]+)-.*", tenant = "$2" }]
//! denyUnknown = true
//! ```
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use schemars::JsonSchema;
use serde::Deserialize;
use tenet_policy_sdk::pattern::{Pattern, expand};
use tenet_policy_sdk::{Level, Plan, PolicyError, Request, Stage, export_stage, kv_get, log};

/// Where the host puts namespace labels in `request.extra`.
pub const NAMESPACE_LABEL_PREFIX: &str = "namespace.label/";

/// A prefix rule.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrefixRule {
    /// Namespace prefix.
    pub prefix: String,
    /// Fixed tenant for matching namespaces.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Without a fixed tenant: drop the prefix from the namespace.
    #[serde(default)]
    pub strip: bool,
}

/// A regex rule.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegexRule {
    /// Pattern the whole namespace must match.
    pub pattern: String,
    /// Tenant template (`$1`… are captures).
    pub tenant: String,
}

/// Settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Settings {
    /// Label keys whose value is the tenant.
    pub labels: Vec<String>,
    /// Namespace label keys whose value is the tenant (after pod labels).
    pub namespace_labels: Vec<String>,
    /// Namespace → tenant.
    pub map: BTreeMap<String, String>,
    /// Prefix rules.
    pub prefixes: Vec<PrefixRule>,
    /// Regex rules.
    pub regexes: Vec<RegexRule>,
    /// Use the namespace itself when no rule matched.
    pub from_namespace: bool,
    /// Tenant when nothing else decides.
    pub default_tenant: Option<String>,
    /// Deny pods whose tenant cannot be determined.
    pub deny_unknown: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            labels: Vec::new(),
            namespace_labels: Vec::new(),
            map: BTreeMap::new(),
            prefixes: Vec::new(),
            regexes: Vec::new(),
            from_namespace: true,
            default_tenant: None,
            deny_unknown: false,
        }
    }
}

/// Lower-cases and replaces anything outside `[a-z0-9-]` with `-`, trims
/// dashes and cuts to 63 bytes. `None` when nothing is left.
pub fn sanitize(name: &str) -> Option<String> {
    let mapped: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut t = mapped.trim_matches('-').to_string();
    t.truncate(63);
    let t = t.trim_end_matches('-').to_string();
    (!t.is_empty()).then_some(t)
}

/// The tenant-map stage.
pub struct TenantMap;

impl TenantMap {
    /// Applies the rules; `Ok(None)` when nothing decides.
    pub fn decide(req: &Request, s: &Settings) -> Result<Option<(String, &'static str)>, String> {
        for key in &s.labels {
            if let Some(v) = kv_get(&req.labels, key).filter(|v| !v.is_empty()) {
                return Ok(Some((v.to_string(), "label")));
            }
        }
        for key in &s.namespace_labels {
            let extra_key = format!("{NAMESPACE_LABEL_PREFIX}{key}");
            if let Some(v) = kv_get(&req.extra, &extra_key).filter(|v| !v.is_empty()) {
                return Ok(Some((v.to_string(), "namespace label")));
            }
        }
        if let Some(ns) = req.pod_namespace.as_deref().filter(|n| !n.is_empty()) {
            if let Some(t) = s.map.get(ns) {
                return Ok(Some((t.clone(), "map")));
            }
            for p in &s.prefixes {
                if let Some(rest) = ns.strip_prefix(p.prefix.as_str()) {
                    let t = match (&p.tenant, p.strip) {
                        (Some(t), _) => t.clone(),
                        (None, true) => rest.to_string(),
                        (None, false) => ns.to_string(),
                    };
                    return Ok(Some((t, "prefix")));
                }
            }
            for r in &s.regexes {
                let pat = Pattern::new(&r.pattern)?;
                if let Some(caps) = pat.captures(ns)? {
                    return Ok(Some((expand(&r.tenant, &caps), "regex")));
                }
            }
            if s.from_namespace {
                return Ok(Some((ns.to_string(), "namespace")));
            }
        }
        Ok(s.default_tenant.clone().map(|t| (t, "default")))
    }
}

impl Stage for TenantMap {
    type Settings = Settings;

    fn validate(s: &Settings) -> Result<(), String> {
        for (i, r) in s.regexes.iter().enumerate() {
            Pattern::new(&r.pattern).map_err(|e| format!("regexes[{i}].pattern: {e}"))?;
        }
        for (i, p) in s.prefixes.iter().enumerate() {
            if p.prefix.is_empty() {
                return Err(format!("prefixes[{i}].prefix: must not be empty"));
            }
        }
        for (i, l) in s.labels.iter().enumerate() {
            if l.is_empty() {
                return Err(format!("labels[{i}]: must not be empty"));
            }
        }
        for (i, l) in s.namespace_labels.iter().enumerate() {
            if l.is_empty() {
                return Err(format!("namespaceLabels[{i}]: must not be empty"));
            }
        }
        if let Some(t) = &s.default_tenant
            && sanitize(t).as_deref() != Some(t.as_str())
        {
            return Err(format!(
                "defaultTenant: {t:?} is not a tenant id ([a-z0-9-], 1-63)"
            ));
        }
        Ok(())
    }

    fn evaluate(req: &Request, s: &Settings, mut plan: Plan) -> Result<Plan, PolicyError> {
        let who = || {
            format!(
                "pod {}/{}",
                req.pod_namespace.as_deref().unwrap_or("-"),
                req.pod_name.as_deref().unwrap_or(&req.container_id)
            )
        };
        let decided = TenantMap::decide(req, s).map_err(PolicyError::InvalidSettings)?;
        let (raw, how) = match decided {
            Some(d) => d,
            None if s.deny_unknown => {
                return Err(PolicyError::Denied(format!(
                    "no tenant for {}: no tenant label, no namespace rule, and no default tenant",
                    who()
                )));
            }
            None => ("default".to_string(), "fallback"),
        };
        let tenant = sanitize(&raw).ok_or_else(|| {
            PolicyError::Denied(format!(
                "{}: {raw:?} ({how}) is not usable as a tenant id",
                who()
            ))
        })?;
        log(Level::Debug, &format!("tenant {tenant} from {how}"));
        plan.tenant = tenant;
        Ok(plan)
    }
}

export_stage!(TenantMap, settings_schema = "settings.schema.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_schema_is_current() {
        tenet_policy_sdk::check_settings_schema::<TenantMap>(
            env!("CARGO_MANIFEST_DIR"),
            "settings.schema.json",
        );
    }
    use tenet_policy_sdk::{Kv, initial_plan, parse_settings, test_request};

    fn run(settings: &str, f: impl FnOnce(&mut Request)) -> Result<String, PolicyError> {
        let s = parse_settings::<TenantMap>(settings).map_err(PolicyError::InvalidSettings)?;
        let mut r = test_request();
        f(&mut r);
        TenantMap::evaluate(&r, &s, initial_plan("eth0")).map(|p| p.tenant)
    }

    fn ns(n: &str) -> impl FnOnce(&mut Request) + '_ {
        move |r: &mut Request| r.pod_namespace = Some(n.into())
    }

    #[test]
    fn namespace_by_default() {
        assert_eq!(run("", ns("team-a")).unwrap(), "team-a");
        assert_eq!(run("", ns("Team_A.prod")).unwrap(), "team-a-prod");
        assert_eq!(run("", |_| {}).unwrap(), "default");
    }

    #[test]
    fn precedence_label_map_prefix_regex_namespace_default() {
        let s = r#"{"labels":["tenant_id"],"map":{"team-x":"mapped"},"prefixes":[{"prefix":"team-","strip":true},{"prefix":"ops-","tenant":"operations"}],
                    "regexes":[{"pattern":"(org|biz)-([a-z0-9]+)-.*","tenant":"$2"}],"defaultTenant":"fallback"}"#;
        assert_eq!(
            run(s, |r| {
                r.pod_namespace = Some("team-x".into());
                r.labels.push(Kv {
                    key: "tenant_id".into(),
                    value: "acme".into(),
                });
            })
            .unwrap(),
            "acme"
        );
        assert_eq!(run(s, ns("team-x")).unwrap(), "mapped");
        assert_eq!(run(s, ns("team-y")).unwrap(), "y");
        assert_eq!(run(s, ns("ops-1")).unwrap(), "operations");
        assert_eq!(run(s, ns("biz-shop-prod")).unwrap(), "shop");
        assert_eq!(run(s, ns("other")).unwrap(), "other");
        assert_eq!(run(s, |_| {}).unwrap(), "fallback");
    }

    #[test]
    fn namespace_labels_come_after_pod_labels_and_before_rules() {
        let s = r#"{"labels":["tenant_id"],"namespaceLabels":["capsule.clastix.io/tenant"],"map":{"team-a":"mapped"}}"#;
        fn with(pod: Option<&'static str>, nsl: Option<&'static str>) -> impl FnOnce(&mut Request) {
            move |r: &mut Request| {
                r.pod_namespace = Some("team-a".into());
                if let Some(v) = pod {
                    r.labels.push(Kv {
                        key: "tenant_id".into(),
                        value: v.into(),
                    });
                }
                if let Some(v) = nsl {
                    r.extra.push(Kv {
                        key: "namespace.label/capsule.clastix.io/tenant".into(),
                        value: v.into(),
                    });
                }
            }
        }
        assert_eq!(
            run(s, with(Some("team-b"), Some("acme"))).unwrap(),
            "team-b"
        );
        assert_eq!(run(s, with(None, Some("acme"))).unwrap(), "acme");
        assert_eq!(run(s, with(None, None)).unwrap(), "mapped");
        // A pod label of that name is not a namespace label.
        assert_eq!(
            run(s, |r| {
                r.pod_namespace = Some("x".into());
                r.labels.push(Kv {
                    key: "capsule.clastix.io/tenant".into(),
                    value: "forged".into(),
                });
            })
            .unwrap(),
            "x"
        );
        let e = parse_settings::<TenantMap>(r#"{"namespaceLabels":[""]}"#).unwrap_err();
        assert!(e.contains("namespaceLabels[0]"), "{e}");
    }

    #[test]
    fn deny_unknown() {
        let s = r#"{"fromNamespace":false,"denyUnknown":true}"#;
        match run(s, ns("team-a")) {
            Err(PolicyError::Denied(m)) => {
                assert!(m.contains("no tenant") && m.contains("team-a"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            run(r#"{"denyUnknown":true}"#, ns("team-a")).unwrap(),
            "team-a"
        );
        assert!(matches!(
            run(r#"{"denyUnknown":true}"#, |_| {}),
            Err(PolicyError::Denied(_))
        ));
        // A label value that sanitises to nothing is denied, not defaulted.
        let bad = run(r#"{"labels":["t"]}"#, |r| {
            r.labels.push(Kv {
                key: "t".into(),
                value: "!!!".into(),
            })
        });
        assert!(matches!(bad, Err(PolicyError::Denied(_))));
    }

    #[test]
    fn settings_errors_name_the_field() {
        for (s, field) in [
            (r#"{"denyUnknwn":true}"#, "denyUnknwn"),
            (
                r#"{"regexes":[{"pattern":"(a","tenant":"x"}]}"#,
                "regexes[0].pattern",
            ),
            (r#"{"prefixes":[{"prefix":""}]}"#, "prefixes[0].prefix"),
            (r#"{"defaultTenant":"Not Valid"}"#, "defaultTenant"),
            (r#"{"labels":"tenant"}"#, "settings"),
        ] {
            let e = parse_settings::<TenantMap>(s).unwrap_err();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn sanitize_is_safe() {
        assert_eq!(sanitize("--A b--").as_deref(), Some("a-b"));
        assert_eq!(sanitize(&"x".repeat(80)).map(|s| s.len()), Some(63));
        assert_eq!(sanitize("../.."), None);
        assert_eq!(sanitize(""), None);
    }
}
