//! Pod metadata from the Kubernetes API server, as Calico and Multus read
//! it: the runtime passes only the pod's namespace, name and uid (CNI_ARGS)
//! and, with the `io.kubernetes.cri.pod-annotations` capability, its
//! annotations; labels and namespace labels exist only in the API.
//!
//! A network opts in with its configuration's `kubernetes` key:
//!
//! ```json
//! "kubernetes": { "podLabels": true, "namespaceLabels": true, "failurePolicy": "fail" }
//! ```
//!
//! Then ADD (and only ADD) GETs the pod and its namespace ([`client`]),
//! through a node-local cache with a TTL ([`cache`]), the whole lookup
//! bounded by `[kubernetes] timeout_ms`. Pod labels become
//! `request.labels`; namespace labels reach stages in `request.extra` as
//! `namespace.label/<key>` (until the WIT grows a field). Labels the
//! network configuration itself gives (`args.cni.labels`, the operator's)
//! win over the pod's. When the lookup fails, `failurePolicy` decides:
//! `fail` ends ADD with code 11 (try again later), `continue` goes on
//! without the labels and logs a warning.

pub mod cache;
pub mod client;
pub mod kubeconfig;

use std::time::Duration;

use serde_json::{Map, Value};

use crate::cni::{CniError, code};
use crate::config::{Config, KubernetesConfig};
use crate::plan::{Kv, Request};
use crate::policy::input_limits;

pub use client::{Client, KubeError, ObjectMeta};

/// The prefix of namespace labels in `request.extra`.
pub const NAMESPACE_LABEL_PREFIX: &str = "namespace.label/";

/// What ADD does when the lookup fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// ADD fails with code 11 (try again later).
    Fail,
    /// ADD goes on without the labels (logged).
    Continue,
}

impl FailurePolicy {
    fn parse(s: &str, at: &str) -> Result<Self, String> {
        match s {
            "fail" => Ok(Self::Fail),
            "continue" => Ok(Self::Continue),
            other => Err(format!("{at}: {other:?} is not \"fail\" or \"continue\"")),
        }
    }
}

/// A network's use of the API (its configuration's `kubernetes` key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// GET the pod for its labels.
    pub pod_labels: bool,
    /// GET the namespace for its labels.
    pub namespace_labels: bool,
    /// What a failed lookup does.
    pub failure: FailurePolicy,
}

fn invalid(msg: impl std::fmt::Display) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        "invalid network configuration",
        msg.to_string(),
    )
}

impl NetworkSettings {
    /// The network's settings; `None` when it does not use the API.
    /// Unknown keys and wrong types are refused, naming the field.
    pub fn from_network(
        plugin: &Map<String, Value>,
        defaults: &KubernetesConfig,
    ) -> Result<Option<Self>, CniError> {
        let Some(v) = plugin.get("kubernetes").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let Value::Object(m) = v else {
            return Err(invalid("kubernetes: must be an object"));
        };
        let mut s = NetworkSettings {
            pod_labels: true,
            namespace_labels: true,
            failure: FailurePolicy::parse(
                &defaults.failure_policy,
                "tenet.toml [kubernetes] failure_policy",
            )
            .map_err(invalid)?,
        };
        for (k, v) in m {
            match (k.as_str(), v) {
                ("podLabels", Value::Bool(b)) => s.pod_labels = *b,
                ("namespaceLabels", Value::Bool(b)) => s.namespace_labels = *b,
                ("failurePolicy", Value::String(p)) => {
                    s.failure =
                        FailurePolicy::parse(p, "kubernetes.failurePolicy").map_err(invalid)?
                }
                ("podLabels" | "namespaceLabels", _) => {
                    return Err(invalid(format!("kubernetes.{k}: must be true or false")));
                }
                ("failurePolicy", _) => {
                    return Err(invalid("kubernetes.failurePolicy: must be a string"));
                }
                _ => {
                    return Err(invalid(format!(
                        "kubernetes.{k}: unknown key (podLabels, namespaceLabels, failurePolicy)"
                    )));
                }
            }
        }
        Ok((s.pod_labels || s.namespace_labels).then_some(s))
    }
}

/// What the API said about a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMetadata {
    /// The pod's labels.
    pub labels: Vec<Kv>,
    /// Its namespace's labels.
    pub namespace_labels: Vec<Kv>,
}

/// A lookup that did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {error}")]
pub struct LookupError {
    /// What was being read (`pod team-a/web-0`, `namespace team-a`).
    pub what: String,
    /// Why it failed.
    pub error: KubeError,
}

/// DNS-1123 label: what a namespace name must be.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 subdomain: what a pod name must be.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn to_kv(m: &std::collections::BTreeMap<String, String>) -> Vec<Kv> {
    m.iter().map(|(k, v)| Kv::new(k, v)).collect()
}

/// Reads the pod's and/or its namespace's labels: from the cache when
/// fresh, else from the API server, the whole lookup bounded by the
/// configured timeout.
pub fn lookup(
    env: &[(String, String)],
    cfg: &Config,
    settings: &NetworkSettings,
    namespace: &str,
    pod: &str,
    uid: Option<&str>,
) -> Result<PodMetadata, LookupError> {
    let k = &cfg.kubernetes;
    let pod_what = format!("pod {namespace}/{pod}");
    let bad = |what: &str, m: String| LookupError {
        what: what.to_string(),
        error: KubeError::Setup(m),
    };
    if !is_dns_label(namespace) {
        return Err(bad(
            &pod_what,
            format!("K8S_POD_NAMESPACE {namespace:?} is not a namespace name"),
        ));
    }
    if !is_dns_subdomain(pod) {
        return Err(bad(
            &pod_what,
            format!("K8S_POD_NAME {pod:?} is not a pod name"),
        ));
    }
    let cache = cache::Cache::new(&cfg.state_dir, Duration::from_secs(k.cache_ttl_s));
    let pod_key = format!("{namespace}/{pod}");
    let mut out = PodMetadata::default();
    let pod_cached = settings
        .pod_labels
        .then(|| cache.get(cache::Kind::Pod, &pod_key, uid))
        .flatten();
    let ns_cached = settings
        .namespace_labels
        .then(|| cache.get(cache::Kind::Namespace, namespace, None))
        .flatten();
    let need_pod = settings.pod_labels && pod_cached.is_none();
    let need_ns = settings.namespace_labels && ns_cached.is_none();
    if let Some(e) = &pod_cached {
        out.labels = to_kv(&e.labels);
    }
    if let Some(e) = &ns_cached {
        out.namespace_labels = to_kv(&e.labels);
    }
    if !need_pod && !need_ns {
        tracing::debug!(pod = %pod_key, "pod metadata from the node cache");
        return Ok(out);
    }
    let conn = match &k.kubeconfig {
        Some(p) => kubeconfig::from_file(p),
        None => kubeconfig::in_cluster(env, std::path::Path::new(kubeconfig::SERVICE_ACCOUNT_DIR)),
    }
    .map_err(|e| bad("Kubernetes API", e.0))?;
    let timeout = Duration::from_millis(k.timeout_ms.max(1));
    let client = Client::new(conn, timeout).map_err(|error| LookupError {
        what: "Kubernetes API".into(),
        error,
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| bad("Kubernetes API", format!("tokio runtime: {e}")))?;
    let started = std::time::Instant::now();
    let fetched = rt.block_on(async {
        let work = async {
            let mut p = None;
            let mut n = None;
            if need_pod {
                let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}");
                let m = client
                    .get_metadata(&path)
                    .await
                    .map_err(|error| LookupError {
                        what: pod_what.clone(),
                        error,
                    })?;
                if let Some(u) = uid.filter(|u| !u.is_empty())
                    && m.uid != u
                {
                    // The pod of that name is another one: the sandbox's
                    // pod was deleted (and maybe created again).
                    return Err(LookupError {
                        what: pod_what.clone(),
                        error: KubeError::NotFound(format!(
                            "uid is {:?}, the runtime's pod has {u:?}",
                            m.uid
                        )),
                    });
                }
                p = Some(m);
            }
            if need_ns {
                let path = format!("/api/v1/namespaces/{namespace}");
                let m = client
                    .get_metadata(&path)
                    .await
                    .map_err(|error| LookupError {
                        what: format!("namespace {namespace}"),
                        error,
                    })?;
                n = Some(m);
            }
            Ok((p, n))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(LookupError {
                what: pod_what.clone(),
                error: KubeError::Timeout(timeout.as_millis() as u64),
            }),
        }
    });
    let (p, n) = fetched.map_err(|mut e| {
        if e.error == KubeError::Timeout(0) {
            e.error = KubeError::Timeout(timeout.as_millis() as u64);
        }
        e
    })?;
    tracing::debug!(pod = %pod_key, us = started.elapsed().as_micros() as u64, "pod metadata from the API server");
    let now = cache::now_ms();
    if let Some(m) = p {
        out.labels = to_kv(&m.labels);
        cache.put(
            cache::Kind::Pod,
            &cache::Entry {
                key: pod_key,
                uid: m.uid,
                labels: m.labels,
                fetched_ms: now,
            },
        );
    }
    if let Some(m) = n {
        out.namespace_labels = to_kv(&m.labels);
        cache.put(
            cache::Kind::Namespace,
            &cache::Entry {
                key: namespace.to_owned(),
                uid: m.uid,
                labels: m.labels,
                fetched_ms: now,
            },
        );
    }
    Ok(out)
}

/// Adds `meta` to the request: pod labels whose key the network
/// configuration did not already give, namespace labels as
/// `namespace.label/<key>` in `extra` (keys that would exceed the input
/// caps are left out, logged).
pub fn merge(request: &mut Request, meta: PodMetadata) {
    for kv in meta.labels {
        if !request.labels.iter().any(|l| l.key == kv.key) {
            request.labels.push(kv);
        }
    }
    for kv in meta.namespace_labels {
        let key = format!("{NAMESPACE_LABEL_PREFIX}{}", kv.key);
        if key.len() > input_limits::KEY_BYTES {
            tracing::warn!(%key, "namespace label key too long for request.extra; left out");
            continue;
        }
        request.extra.retain(|e| e.key != key);
        request.extra.push(Kv::new(key, kv.value));
    }
}

/// ADD's metadata step: when the network asks for it and the runtime named
/// the pod, looks the labels up and merges them into `request`, applying
/// the network's failure policy.
pub fn enrich_for_add(
    env: &[(String, String)],
    cfg: &Config,
    plugin: &Map<String, Value>,
    request: &mut Request,
) -> Result<(), CniError> {
    let Some(settings) = NetworkSettings::from_network(plugin, &cfg.kubernetes)? else {
        return Ok(());
    };
    let (Some(ns), Some(name)) = (request.pod_namespace.clone(), request.pod_name.clone()) else {
        tracing::debug!("no K8S_POD_NAMESPACE/K8S_POD_NAME: no pod metadata to look up");
        return Ok(());
    };
    match lookup(env, cfg, &settings, &ns, &name, request.pod_uid.as_deref()) {
        Ok(meta) => {
            merge(request, meta);
            Ok(())
        }
        Err(e) if settings.failure == FailurePolicy::Continue => {
            tracing::warn!(error = %e, "pod metadata unavailable; going on without labels (failurePolicy = continue)");
            Ok(())
        }
        Err(e) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            "pod metadata unavailable from the Kubernetes API",
            format!("{e} (failurePolicy = fail)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(v: Value) -> Map<String, Value> {
        let Value::Object(m) = serde_json::json!({ "kubernetes": v }) else {
            unreachable!()
        };
        m
    }

    #[test]
    fn network_settings_default_and_refuse_with_the_field() {
        let d = KubernetesConfig::default();
        assert_eq!(
            NetworkSettings::from_network(&Map::new(), &d).unwrap(),
            None
        );
        let s = NetworkSettings::from_network(&plugin(serde_json::json!({})), &d)
            .unwrap()
            .unwrap();
        assert!(s.pod_labels && s.namespace_labels);
        assert_eq!(s.failure, FailurePolicy::Fail);
        let s = NetworkSettings::from_network(
            &plugin(serde_json::json!({"podLabels": false, "failurePolicy": "continue"})),
            &d,
        )
        .unwrap()
        .unwrap();
        assert!(!s.pod_labels && s.namespace_labels);
        assert_eq!(s.failure, FailurePolicy::Continue);
        assert_eq!(
            NetworkSettings::from_network(
                &plugin(serde_json::json!({"podLabels": false, "namespaceLabels": false})),
                &d
            )
            .unwrap(),
            None
        );
        for (v, needle) in [
            (serde_json::json!(true), "kubernetes: must be an object"),
            (
                serde_json::json!({"podLabels": "yes"}),
                "kubernetes.podLabels",
            ),
            (
                serde_json::json!({"failurePolicy": "retry"}),
                "kubernetes.failurePolicy",
            ),
            (
                serde_json::json!({"labels": true}),
                "kubernetes.labels: unknown key",
            ),
        ] {
            let e = NetworkSettings::from_network(&plugin(v), &d).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG);
            assert!(e.details.contains(needle), "{needle} not in {e}");
        }
        let bad_default = KubernetesConfig {
            failure_policy: "maybe".into(),
            ..d
        };
        let e = NetworkSettings::from_network(&plugin(serde_json::json!({})), &bad_default)
            .unwrap_err();
        assert!(e.details.contains("failure_policy"), "{e}");
    }

    #[test]
    fn names_are_checked_before_any_request() {
        assert!(is_dns_label("team-a"));
        assert!(!is_dns_label("Team"));
        assert!(!is_dns_label("a/b"));
        assert!(!is_dns_label("-a"));
        assert!(is_dns_subdomain("web-0.x"));
        assert!(!is_dns_subdomain("web?x=1"));
        assert!(!is_dns_subdomain("a..b"));
        let cfg = Config::default();
        let s = NetworkSettings {
            pod_labels: true,
            namespace_labels: true,
            failure: FailurePolicy::Fail,
        };
        let e = lookup(&[], &cfg, &s, "ns", "../../x", None).unwrap_err();
        assert!(e.to_string().contains("K8S_POD_NAME"), "{e}");
    }

    #[test]
    fn merge_keeps_the_operators_labels_and_prefixes_namespace_labels() {
        let mut r: Request = serde_json::from_value(serde_json::json!({
            "command": "ADD", "containerId": "c", "ifname": "eth0", "network": "n",
            "labels": [{"key": "tenant_id", "value": "from-conf"}]
        }))
        .unwrap();
        merge(
            &mut r,
            PodMetadata {
                labels: vec![Kv::new("tenant_id", "from-pod"), Kv::new("app", "web")],
                namespace_labels: vec![
                    Kv::new("capsule.clastix.io/tenant", "acme"),
                    Kv::new(format!("{}/k", "x".repeat(310)), "v"),
                ],
            },
        );
        assert_eq!(
            r.labels,
            vec![Kv::new("tenant_id", "from-conf"), Kv::new("app", "web")]
        );
        assert_eq!(
            r.extra,
            vec![Kv::new("namespace.label/capsule.clastix.io/tenant", "acme")]
        );
    }
}
