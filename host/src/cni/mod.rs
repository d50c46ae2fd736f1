//! The CNI protocol (versions 0.3.1, 0.4.0, 1.0.0, 1.1.0): the environment,
//! CNI_ARGS, the network configuration, results in each version, and errors.
//! `reference/cni-spec.md` is the checklist this follows, including what
//! real runtimes send rather than what the spec says they send.

pub mod args;
pub mod codes;
pub mod config;
pub mod env;
pub mod error;
pub mod result;
pub mod version;

use std::io::Read;

pub use args::CniArgs;
pub use config::{Attachment, NetConf};
pub use env::{Command, Env};
pub use error::{CniError, code};
pub use result::CniResult;
pub use version::version_reply;

use crate::plan;

/// A parsed, validated invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The command.
    pub command: Command,
    /// The environment.
    pub env: Env,
    /// The network configuration (default for VERSION).
    pub config: NetConf,
    /// The version to answer in.
    pub cni_version: String,
}

/// Parses and validates the environment and stdin.
pub fn parse_invocation<I: IntoIterator<Item = (String, String)>>(
    vars: I,
    stdin: &[u8],
) -> Result<Invocation, CniError> {
    let env = Env::parse(vars)?;
    if env.command == Command::Version {
        // VERSION tolerates an empty, `{}` or unparseable stdin: it answers
        // in the stdin's version when supported, like an error would.
        let v = error_version(stdin);
        return Ok(Invocation {
            command: env.command,
            env,
            config: NetConf::default(),
            cni_version: v,
        });
    }
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            format!(
                "stdin is empty; CNI_COMMAND={} needs the network configuration",
                env.command.as_str()
            ),
        ));
    }
    let config = NetConf::parse(stdin)?;
    let v = config.cni_version.clone();
    if v.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            "cniVersion: is required",
        ));
    }
    if !version::is_supported(&v) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            format!(
                "config is {v:?}, tenet supports {}",
                version::SUPPORTED.join(", ")
            ),
        ));
    }
    let min = match env.command {
        Command::Check => Some("0.4.0"),
        Command::Status | Command::Gc => Some("1.1.0"),
        _ => None,
    };
    if let Some(min) = min
        && !version::at_least(&v, min)
    {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            format!(
                "{} needs a configuration of version {min} or later, got {v}",
                env.command.as_str()
            ),
        ));
    }
    Ok(Invocation {
        command: env.command,
        env,
        config,
        cni_version: v,
    })
}

/// The version to answer an error in: the configuration's when it is
/// readable and supported, else the latest.
pub fn error_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(str::to_owned)
        })
        .filter(|v| version::is_supported(v))
        .unwrap_or_else(|| version::LATEST.to_owned())
}

/// Reads stdin up to `max` bytes (I/O failure: code 5; too large: code 7).
pub fn read_stdin(mut reader: impl Read, max: usize) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    reader
        .by_ref()
        .take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                "failed to read the network configuration from stdin",
                e.to_string(),
            )
        })?;
    if buf.len() > max {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            format!("stdin exceeds {max} bytes"),
        ));
    }
    Ok(buf)
}

impl Invocation {
    /// The request every policy stage receives (ADD, CHECK and DEL only).
    pub fn to_request(&self) -> Option<plan::Request> {
        let command = match self.command {
            Command::Add => plan::Command::Add,
            Command::Check => plan::Command::Check,
            Command::Del => plan::Command::Del,
            _ => return None,
        };
        let a = &self.env.args;
        let rc = &self.config.runtime_config;
        Some(plan::Request {
            command,
            container_id: self.env.container_id.clone().unwrap_or_default(),
            ifname: self.env.ifname.clone().unwrap_or_default(),
            netns: self.env.netns.clone().unwrap_or_default(),
            network: self.config.name.clone(),
            pod_namespace: a.pod_namespace().map(str::to_owned),
            pod_name: a.pod_name().map(str::to_owned),
            pod_uid: a.pod_uid().map(str::to_owned),
            cni_args: a.pairs.clone(),
            args_ips: self.config.args.ips.clone(),
            runtime_ips: rc.ips.clone(),
            mac: rc.mac.clone().or_else(|| a.mac().map(str::to_owned)),
            runtime_dns: rc.dns.clone(),
            port_mappings: rc.port_mappings.clone(),
            bandwidth: rc.bandwidth.clone(),
            labels: self.config.args.labels.clone(),
            annotations: self.annotations(),
            extra: Vec::new(),
        })
    }

    /// `args.cni.annotations` (the network configuration's, the operator's)
    /// and then the pod's own annotations from the runtime
    /// (`io.kubernetes.cri.pod-annotations`) whose key the former do not
    /// already give.
    fn annotations(&self) -> Vec<plan::Kv> {
        let mut out = self.config.args.annotations.clone();
        for kv in &self.config.runtime_config.pod_annotations {
            if !out.iter().any(|a| a.key == kv.key) {
                out.push(kv.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(pairs: &[(&str, &str)], stdin: &str) -> Result<Invocation, CniError> {
        parse_invocation(
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            stdin.as_bytes(),
        )
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn every_command_in_every_version() {
        let env_for = |cmd: &'static str| -> Vec<(&'static str, &'static str)> {
            match cmd {
                "ADD" | "CHECK" => vec![
                    ("CNI_COMMAND", cmd),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_NETNS", "/run/netns/x"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "DEL" => vec![
                    ("CNI_COMMAND", cmd),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_IFNAME", "eth0"),
                ],
                _ => vec![("CNI_COMMAND", cmd)],
            }
        };
        for v in version::SUPPORTED {
            let conf = format!("{{\"cniVersion\":\"{v}\",\"name\":\"n\",\"type\":\"tenet\"}}");
            for cmd in ["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"] {
                let r = inv(&env_for(cmd), &conf);
                let ok = match cmd {
                    "CHECK" => version::at_least(v, "0.4.0"),
                    "STATUS" | "GC" => version::at_least(v, "1.1.0"),
                    _ => true,
                };
                match r {
                    Ok(i) => {
                        assert!(ok, "{cmd} {v} should be refused");
                        assert_eq!(i.cni_version, *v);
                    }
                    Err(e) => {
                        assert!(!ok, "{cmd} {v}: {e}");
                        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
                    }
                }
            }
        }
    }

    #[test]
    fn version_and_empty_stdin() {
        assert_eq!(
            inv(&[("CNI_COMMAND", "VERSION")], "").unwrap().cni_version,
            version::LATEST
        );
        assert_eq!(
            inv(&[("CNI_COMMAND", "VERSION")], "{\"cniVersion\":\"0.4.0\"}")
                .unwrap()
                .cni_version,
            "0.4.0"
        );
        assert_eq!(inv(ADD, "  ").unwrap_err().code, code::INVALID_CONFIG);
        let e = inv(
            ADD,
            "{\"cniVersion\":\"0.2.0\",\"name\":\"n\",\"type\":\"t\"}",
        )
        .unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(e.details.contains("1.1.0"));
        assert_eq!(
            inv(ADD, "{\"name\":\"n\",\"type\":\"t\"}")
                .unwrap_err()
                .code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn request_carries_everything_stages_need() {
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u;MAC=02:00:00:00:00:09;IP=10.0.0.9",
            ),
        ];
        let conf = serde_json::json!({"cniVersion":"1.0.0","name":"net","type":"tenet",
            "runtimeConfig":{"ips":["10.0.0.5/24"],"dns":{"servers":["1.1.1.1"]},"portMappings":[{"hostPort":80,"containerPort":8080}]},
            "args":{"cni":{"ips":["10.0.0.6"],"labels":[{"key":"app","value":"web"}]}}});
        let r = inv(&env, &conf.to_string()).unwrap().to_request().unwrap();
        assert_eq!(r.command, plan::Command::Add);
        assert_eq!(
            (
                r.container_id.as_str(),
                r.ifname.as_str(),
                r.netns.as_str(),
                r.network.as_str()
            ),
            ("c1", "eth0", "/run/netns/x", "net")
        );
        assert_eq!(
            (
                r.pod_namespace.as_deref(),
                r.pod_name.as_deref(),
                r.pod_uid.as_deref()
            ),
            (Some("ns"), Some("p"), Some("u"))
        );
        assert_eq!(r.mac.as_deref(), Some("02:00:00:00:00:09"));
        assert_eq!(r.runtime_ips, ["10.0.0.5/24"]);
        assert_eq!(r.args_ips, ["10.0.0.6"]);
        assert!(
            r.cni_args
                .iter()
                .any(|kv| kv.key == "IP" && kv.value == "10.0.0.9")
        );
        assert_eq!(r.runtime_dns.unwrap().nameservers, ["1.1.1.1"]);
        assert_eq!(r.port_mappings[0].container_port, 8080);
        assert_eq!(r.labels[0].value, "web");
        let conf = serde_json::json!({"cniVersion":"1.0.0","name":"net","type":"tenet",
            "runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"tenet.io/ip":"10.0.0.7","b":"pod"}},
            "args":{"cni":{"annotations":{"b":"conf"}}}});
        let r = inv(&env, &conf.to_string()).unwrap().to_request().unwrap();
        assert_eq!(
            r.annotations,
            vec![
                plan::Kv::new("b", "conf"),
                plan::Kv::new("tenet.io/ip", "10.0.0.7")
            ]
        );
        assert!(
            inv(
                &[("CNI_COMMAND", "GC")],
                "{\"cniVersion\":\"1.1.0\",\"name\":\"n\",\"type\":\"t\"}"
            )
            .unwrap()
            .to_request()
            .is_none()
        );
    }

    #[test]
    fn stdin_limits_and_errors() {
        assert_eq!(read_stdin(&b"abc"[..], 3).unwrap(), b"abc");
        assert_eq!(
            read_stdin(&b"abcd"[..], 3).unwrap_err().code,
            code::INVALID_CONFIG
        );
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("boom"))
            }
        }
        assert_eq!(read_stdin(Broken, 10).unwrap_err().code, code::IO_FAILURE);
        assert_eq!(error_version(b"{\"cniVersion\":\"0.4.0\"}"), "0.4.0");
        assert_eq!(error_version(b"garbage"), version::LATEST);
    }
}
