//! The network configuration on stdin (one plugin's configuration object
//! with the runtime's insertions: `cniVersion`, `name`, `runtimeConfig`,
//! `args`, `prevResult`, the GC attachment lists).
//!
//! Parsing is tolerant where runtimes are sloppy and strict where it
//! matters: unknown keys and libcni's stray `capabilities` are ignored,
//! containerd's Go field names (`HostPort`, `Servers`, …) are accepted next to
//! the spec's camelCase, and every rejection names the field.

use serde_json::{Map, Value};

use super::error::{CniError, code};
use crate::plan::{Bandwidth, Dns, Kv, PortMapping};

/// A GC attachment: `{containerID, ifname}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The container id.
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// runtimeConfig capabilities tenet uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// `ips`.
    pub ips: Vec<String>,
    /// `mac`.
    pub mac: Option<String>,
    /// `portMappings`, normalised.
    pub port_mappings: Vec<PortMapping>,
    /// `dns` (`servers`, `searches`, `options`).
    pub dns: Option<Dns>,
    /// `bandwidth`.
    pub bandwidth: Option<Bandwidth>,
    /// `io.kubernetes.cri.pod-annotations`: the pod's annotations, passed by
    /// containerd (>= 1.5) and CRI-O when the plugin declares the
    /// capability. Sorted by key; see [`POD_ANNOTATIONS_DROPPED`].
    pub pod_annotations: Vec<Kv>,
}

/// The runtimeConfig key (and capability) of the pod's annotations.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// Annotations never handed to policy stages: `kubectl apply` stores the
/// whole object in this one (up to 256 KiB), which no policy reads and
/// which would exceed the stages' input caps.
pub const POD_ANNOTATIONS_DROPPED: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// `args.cni` (CONVENTIONS "args in network config").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgsCni {
    /// `args.cni.ips`.
    pub ips: Vec<String>,
    /// `args.cni.labels` (`[{key, value}]`).
    pub labels: Vec<Kv>,
    /// `args.cni.annotations` (a map, or `[{key, value}]`).
    pub annotations: Vec<Kv>,
}

/// The parsed network configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: String,
    /// `name` (the network name).
    pub name: String,
    /// `type` (the plugin binary name).
    pub plugin_type: String,
    /// `dns`.
    pub dns: Option<Dns>,
    /// `runtimeConfig`.
    pub runtime_config: RuntimeConfig,
    /// `args.cni`.
    pub args: ArgsCni,
    /// `prevResult`, as given.
    pub prev_result: Option<Value>,
    /// GC: the union of `cni.dev/valid-attachments` and `cni.dev/attachments`.
    pub valid_attachments: Vec<Attachment>,
    /// Every other key (tenet's own `pipeline`, `logLevel`, …).
    pub plugin: Map<String, Value>,
}

fn invalid(field: &str, msg: impl std::fmt::Display) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        "invalid network configuration",
        format!("{field}: {msg}"),
    )
}

/// Case-insensitive lookup: containerd's go-cni structs have no JSON tags.
fn field<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.get(name)
        .or_else(|| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

fn string_list(v: &Value, at: &str) -> Result<Vec<String>, CniError> {
    match v {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(&format!("{at}[{i}]"), "must be a string"))
            })
            .collect(),
        _ => Err(invalid(at, "must be a list of strings")),
    }
}

fn opt_string(m: &Map<String, Value>, name: &str, at: &str) -> Result<Option<String>, CniError> {
    match field(m, name) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(&format!("{at}.{name}"), "must be a string")),
    }
}

fn list_field(m: &Map<String, Value>, name: &str, at: &str) -> Result<Vec<String>, CniError> {
    field(m, name)
        .map(|v| string_list(v, &format!("{at}.{name}")))
        .unwrap_or(Ok(Vec::new()))
}

fn object<'a>(v: &'a Value, at: &str) -> Result<&'a Map<String, Value>, CniError> {
    v.as_object()
        .ok_or_else(|| invalid(at, "must be an object"))
}

fn kv_list(v: &Value, at: &str) -> Result<Vec<Kv>, CniError> {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok(Kv::new(k, s)),
                other => Ok(Kv::new(k, other.to_string())),
            })
            .collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let o = object(x, &format!("{at}[{i}]"))?;
                let k = opt_string(o, "key", &format!("{at}[{i}]"))?
                    .ok_or_else(|| invalid(&format!("{at}[{i}].key"), "is required"))?;
                let v = opt_string(o, "value", &format!("{at}[{i}]"))?.unwrap_or_default();
                Ok(Kv::new(k, v))
            })
            .collect(),
        _ => Err(invalid(at, "must be a map or a list of {key, value}")),
    }
}

fn u64_field(m: &Map<String, Value>, name: &str, at: &str) -> Result<u64, CniError> {
    match field(m, name) {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| invalid(&format!("{at}.{name}"), "must be a non-negative integer")),
    }
}

fn port(m: &Map<String, Value>, name: &str, at: &str) -> Result<u16, CniError> {
    let v = field(m, name).ok_or_else(|| invalid(&format!("{at}.{name}"), "is required"))?;
    v.as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            invalid(
                &format!("{at}.{name}"),
                format!("{v} is not a port (1-65535)"),
            )
        })
}

fn dns(m: &Map<String, Value>, at: &str, servers: &str, searches: &str) -> Result<Dns, CniError> {
    Ok(Dns {
        nameservers: list_field(m, servers, at)?,
        domain: opt_string(m, "domain", at)?,
        search: list_field(m, searches, at)?,
        options: list_field(m, "options", at)?,
    })
}

fn runtime_config(v: &Value) -> Result<RuntimeConfig, CniError> {
    let m = object(v, "runtimeConfig")?;
    let mut rc = RuntimeConfig::default();
    if let Some(v) = field(m, "ips") {
        rc.ips = string_list(v, "runtimeConfig.ips")?;
    }
    rc.mac = opt_string(m, "mac", "runtimeConfig")?;
    if let Some(v) = field(m, "portMappings") {
        let Value::Array(a) = v else {
            return Err(invalid("runtimeConfig.portMappings", "must be a list"));
        };
        for (i, pm) in a.iter().enumerate() {
            let at = format!("runtimeConfig.portMappings[{i}]");
            let o = object(pm, &at)?;
            let protocol = opt_string(o, "protocol", &at)?
                .unwrap_or_else(|| "tcp".into())
                .to_ascii_lowercase();
            if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
                return Err(invalid(
                    &format!("{at}.protocol"),
                    format!("{protocol:?} is not tcp, udp or sctp"),
                ));
            }
            rc.port_mappings.push(PortMapping {
                host_port: port(o, "hostPort", &at)?,
                container_port: port(o, "containerPort", &at)?,
                protocol,
                host_ip: opt_string(o, "hostIP", &at)?,
            });
        }
    }
    if let Some(v) = field(m, "dns") {
        rc.dns = Some(dns(
            object(v, "runtimeConfig.dns")?,
            "runtimeConfig.dns",
            "servers",
            "searches",
        )?);
    }
    if let Some(v) = m.get(POD_ANNOTATIONS_CAPABILITY).filter(|v| !v.is_null()) {
        let at = format!("runtimeConfig[{POD_ANNOTATIONS_CAPABILITY:?}]");
        let Value::Object(o) = v else {
            return Err(invalid(&at, "must be a map of strings"));
        };
        for (k, v) in o {
            let Value::String(v) = v else {
                return Err(invalid(&format!("{at}[{k:?}]"), "must be a string"));
            };
            if !POD_ANNOTATIONS_DROPPED.contains(&k.as_str()) {
                rc.pod_annotations.push(Kv::new(k, v));
            }
        }
        rc.pod_annotations.sort_by(|a, b| a.key.cmp(&b.key));
    }
    if let Some(v) = field(m, "bandwidth") {
        let at = "runtimeConfig.bandwidth";
        let o = object(v, at)?;
        rc.bandwidth = Some(Bandwidth {
            ingress_rate: u64_field(o, "ingressRate", at)?,
            ingress_burst: u64_field(o, "ingressBurst", at)?,
            egress_rate: u64_field(o, "egressRate", at)?,
            egress_burst: u64_field(o, "egressBurst", at)?,
        });
    }
    Ok(rc)
}

fn args_cni(v: &Value) -> Result<ArgsCni, CniError> {
    let m = object(v, "args")?;
    let Some(cni) = m.get("cni") else {
        return Ok(ArgsCni::default());
    };
    let c = object(cni, "args.cni")?;
    Ok(ArgsCni {
        ips: list_field(c, "ips", "args.cni")?,
        labels: c
            .get("labels")
            .map(|v| kv_list(v, "args.cni.labels"))
            .unwrap_or(Ok(Vec::new()))?,
        annotations: c
            .get("annotations")
            .map(|v| kv_list(v, "args.cni.annotations"))
            .unwrap_or(Ok(Vec::new()))?,
    })
}

fn attachments(v: &Value, key: &str) -> Result<Vec<Attachment>, CniError> {
    let Value::Array(a) = v else {
        return Err(invalid(key, "must be a list"));
    };
    a.iter()
        .enumerate()
        .map(|(i, x)| {
            let at = format!("{key}[{i}]");
            let o = object(x, &at)?;
            Ok(Attachment {
                container_id: opt_string(o, "containerID", &at)?
                    .ok_or_else(|| invalid(&format!("{at}.containerID"), "is required"))?,
                ifname: opt_string(o, "ifname", &at)?
                    .ok_or_else(|| invalid(&format!("{at}.ifname"), "is required"))?,
            })
        })
        .collect()
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (network names appear in paths and keys).
pub fn valid_network_name(s: &str) -> bool {
    super::env::valid_container_id(s)
}

impl NetConf {
    /// Parses and validates a configuration document. The version itself is
    /// checked by the caller, which knows the command.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let v: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                "failed to decode the network configuration",
                e.to_string(),
            )
        })?;
        let Value::Object(mut m) = v else {
            return Err(CniError::new(
                code::DECODE_FAILURE,
                "failed to decode the network configuration",
                "not a JSON object",
            ));
        };
        let mut take_str = |k: &str| -> Result<String, CniError> {
            match m.remove(k) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s),
                Some(_) => Err(invalid(k, "must be a string")),
            }
        };
        let cni_version = take_str("cniVersion")?;
        let name = take_str("name")?;
        let plugin_type = take_str("type")?;
        if name.is_empty() {
            return Err(invalid("name", "is required"));
        }
        if !valid_network_name(&name) {
            return Err(invalid(
                "name",
                format!("{name:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"),
            ));
        }
        if plugin_type.is_empty() {
            return Err(invalid("type", "is required"));
        }
        if let Some(ipam) = m.remove("ipam").filter(|v| !v.is_null()) {
            let t = ipam
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned();
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!("unsupported field ipam (type {t:?})"),
                format!(
                    "ipam = {ipam}: tenet allocates addresses itself, as its policy pipeline decides; remove the ipam key"
                ),
            ));
        }
        // libcni passes `capabilities` through although the spec says it must
        // not; it carries nothing tenet needs.
        m.remove("capabilities");
        let dns = match m.remove("dns").filter(|v| !v.is_null()) {
            Some(v) => Some(dns(object(&v, "dns")?, "dns", "nameservers", "search")?),
            None => None,
        };
        let runtime_config = match m.remove("runtimeConfig").filter(|v| !v.is_null()) {
            Some(v) => runtime_config(&v)?,
            None => RuntimeConfig::default(),
        };
        let args = match m.remove("args").filter(|v| !v.is_null()) {
            Some(v) => args_cni(&v)?,
            None => ArgsCni::default(),
        };
        let prev_result = m.remove("prevResult").filter(|v| !v.is_null());
        let mut valid_attachments = Vec::new();
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            if let Some(v) = m.remove(key).filter(|v| !v.is_null()) {
                for a in attachments(&v, key)? {
                    if !valid_attachments.contains(&a) {
                        valid_attachments.push(a);
                    }
                }
            }
        }
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            dns,
            runtime_config,
            args,
            prev_result,
            valid_attachments,
            plugin: m,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(j: serde_json::Value) -> Result<NetConf, CniError> {
        NetConf::parse(j.to_string().as_bytes())
    }

    #[test]
    fn containerd_go_field_names_and_podman_camel_case_agree() {
        let go = parse(serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"tenet",
            "runtimeConfig": {
                "portMappings":[{"HostPort":18081,"ContainerPort":80,"Protocol":"TCP","HostIP":"127.0.0.1"}],
                "dns":{"Servers":["10.0.0.10"],"Searches":["a.local"],"Options":["ndots:2"]},
                "bandwidth":{"IngressRate":1000,"IngressBurst":10,"EgressRate":2000,"EgressBurst":20}}}))
        .unwrap();
        let camel = parse(serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"tenet",
            "runtimeConfig": {
                "portMappings":[{"hostPort":18081,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"}],
                "dns":{"servers":["10.0.0.10"],"searches":["a.local"],"options":["ndots:2"]},
                "bandwidth":{"ingressRate":1000,"ingressBurst":10,"egressRate":2000,"egressBurst":20}}}))
        .unwrap();
        assert_eq!(go.runtime_config, camel.runtime_config);
        let pm = &go.runtime_config.port_mappings[0];
        assert_eq!(
            (
                pm.host_port,
                pm.container_port,
                pm.protocol.as_str(),
                pm.host_ip.as_deref()
            ),
            (18081, 80, "tcp", Some("127.0.0.1"))
        );
        assert_eq!(
            go.runtime_config.dns.as_ref().unwrap().nameservers,
            ["10.0.0.10"]
        );
        assert_eq!(
            go.runtime_config.bandwidth.as_ref().unwrap().egress_burst,
            20
        );
    }

    #[test]
    fn pod_annotations_capability() {
        let c = parse(
            serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"tenet",
            "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {
                "tenet.io/ip": "10.64.1.9",
                "kubectl.kubernetes.io/last-applied-configuration": "{\"huge\":1}",
                "a": "1"}}}),
        )
        .unwrap();
        assert_eq!(
            c.runtime_config.pod_annotations,
            vec![Kv::new("a", "1"), Kv::new("tenet.io/ip", "10.64.1.9")]
        );
        for bad in [serde_json::json!(["x"]), serde_json::json!({"k": 1})] {
            let e = parse(
                serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"t",
                "runtimeConfig": {"io.kubernetes.cri.pod-annotations": bad}}),
            )
            .unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG);
            assert!(
                e.details.contains("io.kubernetes.cri.pod-annotations"),
                "{e}"
            );
        }
    }

    #[test]
    fn stray_and_unknown_keys_are_tolerated_and_plugin_keys_kept() {
        let c = parse(serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"tenet",
            "capabilities":{"portMappings":true},"somethingNew":{"a":1},"pipeline":"/etc/tenet/p.toml",
            "runtimeConfig":{"aliases":["x"],"cgroupPath":"/kubepods"}}))
        .unwrap();
        assert!(c.plugin.contains_key("somethingNew"));
        assert_eq!(c.plugin["pipeline"], "/etc/tenet/p.toml");
        assert!(!c.plugin.contains_key("capabilities"));
    }

    #[test]
    fn args_cni_and_gc_lists() {
        let c = parse(serde_json::json!({"cniVersion":"1.1.0","name":"n","type":"tenet",
            "args":{"cni":{"ips":["10.2.2.42/24"],"labels":[{"key":"app","value":"web"}],"annotations":{"tenet.io/ip":"10.1.1.1"}}},
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"b","ifname":"eth0"}],
            "cni.dev/attachments":[{"containerID":"b","ifname":"eth0"},{"containerID":"c","ifname":"net1"}]}))
        .unwrap();
        assert_eq!(c.args.ips, ["10.2.2.42/24"]);
        assert_eq!(c.args.labels, vec![Kv::new("app", "web")]);
        assert_eq!(c.args.annotations, vec![Kv::new("tenet.io/ip", "10.1.1.1")]);
        let ids: Vec<_> = c
            .valid_attachments
            .iter()
            .map(|a| a.container_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            (
                serde_json::json!({"cniVersion":"1.0.0","type":"tenet"}),
                code::INVALID_CONFIG,
                "name",
            ),
            (
                serde_json::json!({"cniVersion":"1.0.0","name":"a/b","type":"tenet"}),
                code::INVALID_CONFIG,
                "name",
            ),
            (
                serde_json::json!({"cniVersion":"1.0.0","name":"n"}),
                code::INVALID_CONFIG,
                "type",
            ),
            (
                serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"host-local"}}),
                code::UNSUPPORTED_FIELD,
                "host-local",
            ),
            (
                serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}}),
                code::INVALID_CONFIG,
                "portMappings[0].hostPort",
            ),
            (
                serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":80,"protocol":"icmp"}]}}),
                code::INVALID_CONFIG,
                "protocol",
            ),
            (
                serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":{"ips":"10.0.0.1"}}),
                code::INVALID_CONFIG,
                "runtimeConfig.ips",
            ),
            (
                serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"t","args":{"cni":{"labels":[{"value":"x"}]}}}),
                code::INVALID_CONFIG,
                "args.cni.labels[0].key",
            ),
            (
                serde_json::json!({"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/valid-attachments":[{"ifname":"eth0"}]}),
                code::INVALID_CONFIG,
                "containerID",
            ),
            (serde_json::json!([1, 2]), code::DECODE_FAILURE, "object"),
        ];
        for (j, c, needle) in cases {
            let e = parse(j.clone()).unwrap_err();
            assert_eq!(e.code, c, "{j}: {e}");
            assert!(e.to_string().contains(needle), "{needle} not in {e}");
        }
        let e = NetConf::parse(b"{\"cniVersion\": ").unwrap_err();
        assert_eq!(e.code, code::DECODE_FAILURE);
        assert!(e.details.contains("line 1"), "{e}");
    }
}
