//! tenet's own configuration, layered (later wins):
//!
//! 1. built-in defaults ([`Config::default`]);
//! 2. `/etc/tenet/tenet.toml`, or the file named by `TENET_CONFIG`;
//! 3. `TENET_*` environment variables (`TENET_PIPELINE`, `TENET_CACHE_DIR`,
//!    `TENET_LOG_LEVEL`, `TENET_STORE`, `TENET_SDN`, `TENET_NODE_NAME`, …;
//!    `TENET_MODULE_DIRS` is a `:`-separated list);
//! 4. the network configuration on stdin (`pipeline`, `moduleDirs`,
//!    `cacheDir`, `stateDir`, `logLevel`, `logFile`), per network.
//!
//! Secrets are never read from stdin: backends name files here instead.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Default location of the host configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/tenet/tenet.toml";

/// The host configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The pipeline manifest to run (`policies/*.toml`).
    pub pipeline: Option<PathBuf>,
    /// Directories searched for named modules, in order.
    pub module_dirs: Vec<PathBuf>,
    /// Root of the precompiled-artifact cache.
    pub cache_dir: PathBuf,
    /// Root of local state (address store, records).
    pub state_dir: PathBuf,
    /// The compiler used to rebuild a missing artifact (default: `tenetctl`
    /// beside the `tenet` binary, then on PATH).
    pub compiler: Option<PathBuf>,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a
    /// tracing-subscriber directive).
    pub log_level: String,
    /// Log file; stderr when unset. Never stdout.
    pub log_file: Option<PathBuf>,
    /// This node's name in cluster-wide records (address blocks, MidoNet
    /// host bindings); the machine's hostname when unset.
    pub node_name: Option<String>,
    /// Which address store backs the pools.
    pub store: StoreKind,
    /// Which SDN builds tenant networks.
    pub sdn: SdnKind,
    /// Linux SDN: masquerade traffic that leaves the node from tenant subnets.
    pub masquerade: bool,
    /// The etcd cluster (when `store = "etcd"`).
    pub etcd: EtcdConfig,
    /// The MidoNet API (when `sdn = "midonet"`).
    pub midonet: MidonetConfig,
    /// The Kubernetes API (pod and namespace labels, when a network's
    /// configuration asks for them).
    pub kubernetes: KubernetesConfig,
    /// The node agent (`tenetctl agent`).
    pub agent: AgentConfig,
}

/// How to reach the Kubernetes API server for pod and namespace labels.
/// Which networks use it, and what a failure does, is per network (the
/// conflist's `kubernetes` key, see `kube::NetworkSettings`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// A kubeconfig file (its current context: server, CA, token or
    /// `tokenFile`, or a client certificate). Unset: in-cluster settings
    /// (`KUBERNETES_SERVICE_HOST`/`_PORT` and the service-account token and
    /// CA), which only a process inside a pod has.
    pub kubeconfig: Option<PathBuf>,
    /// Bound on the whole lookup of one ADD (connect, TLS, both GETs), in
    /// milliseconds.
    pub timeout_ms: u64,
    /// How long labels read from the API stay in the node-local cache
    /// (`<state_dir>/kube/`), in seconds. 0 disables the cache.
    pub cache_ttl_s: u64,
    /// The failure policy of networks that do not set their own
    /// (`"fail"`: ADD fails with code 11; `"continue"`: ADD goes on without
    /// the labels, logged).
    pub failure_policy: String,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            timeout_ms: 1000,
            cache_ttl_s: 30,
            failure_policy: "fail".into(),
        }
    }
}

/// The node agent's settings (`tenetctl agent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The container runtime's CRI socket, asked for the pod sandboxes that
    /// still exist.
    pub cri_socket: PathBuf,
    /// The networks (CNI network names) whose attachments the agent
    /// garbage-collects against the runtime's sandboxes. Attachments of
    /// other networks (another runtime's, podman's) are never touched.
    pub networks: Vec<String>,
    /// Seconds between two GC passes.
    pub gc_interval_s: u64,
    /// Attachments younger than this (seconds since their record was last
    /// written) are never collected: a runtime lists a sandbox only after
    /// its ADD has returned.
    pub gc_grace_s: u64,
    /// Seconds between two checks of the pipeline, its modules and the
    /// installed binaries (artifacts and bundles are rebuilt on a change).
    pub watch_interval_s: u64,
    /// Address of the HTTP server for `/metrics`, `/readyz` and `/healthz`.
    pub listen: String,
    /// Every `tenet` exec appends one line (command, code, time, stages) to
    /// `<state_dir>/exec.log`, which the agent turns into metrics. `false`
    /// turns the log off.
    pub exec_log: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            cri_socket: PathBuf::from("/run/containerd/containerd.sock"),
            networks: vec!["tenet".into()],
            gc_interval_s: 60,
            gc_grace_s: 120,
            watch_interval_s: 10,
            listen: "127.0.0.1:9641".into(),
            exec_log: true,
        }
    }
}

/// The address store backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Files under `state_dir` (one machine, no services): the embedded default.
    #[default]
    Local,
    /// etcd v3, cluster-wide.
    Etcd,
}

/// The SDN backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdnKind {
    /// A Linux bridge per tenant with nftables isolation: the embedded default.
    #[default]
    Linux,
    /// MidoNet 5.x over its REST API.
    Midonet,
}

/// How to reach etcd. Secrets are files, never inline values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Client URLs (`http://127.0.0.1:2379`, `https://…`).
    pub endpoints: Vec<String>,
    /// Key prefix under which tenet keeps everything.
    pub prefix: String,
    /// Bound on any one etcd operation (connect included), in milliseconds;
    /// past it ADD fails with code 11.
    pub timeout_ms: u64,
    /// CA bundle to verify the server (PEM file).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM file), for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM file), for mutual TLS.
    pub key_file: Option<PathBuf>,
    /// User name for etcd authentication.
    pub username: Option<String>,
    /// File holding the password for `username`.
    pub password_file: Option<PathBuf>,
    /// TTL of the lease pending claims (reserved, not yet confirmed) are
    /// written under, in seconds: an ADD that crashes frees its addresses
    /// at most this long after it reserved them. An ADD may take half of it
    /// between reserve and confirm (the lease is shared by a node's ADDs).
    pub claim_ttl_s: u64,
    /// How long a released address is held back before reuse, in seconds.
    pub cooldown_s: u64,
    /// Prefix length of the node-affine blocks IPv4 tenant subnets are split
    /// into (a subnet smaller than a block is one block).
    pub block_len_v4: u8,
    /// Likewise for IPv6.
    pub block_len_v6: u8,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/tenet".into(),
            timeout_ms: 5000,
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            claim_ttl_s: 60,
            cooldown_s: 30,
            block_len_v4: 26,
            block_len_v6: 122,
        }
    }
}

/// How to reach the MidoNet API. Secrets are files, never inline values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MidonetConfig {
    /// API base URLs (`http://api1:8181/midonet-api`), tried in order.
    pub endpoints: Vec<String>,
    /// User for the Basic-auth login that yields an X-Auth-Token.
    pub username: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// MidoNet tenant/project id sent at login (`X-Auth-Project`), if any.
    pub project: Option<String>,
    /// The provider router that tenant routers link to (its id).
    pub provider_router: Option<String>,
    /// This node's MidoNet host id (default: read from
    /// `/etc/midonet_host_id.properties`).
    pub host_id: Option<String>,
    /// Bound on one REST call, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// `"5.x"` (default) or `"legacy"` (the 2015 API's media types).
    pub api_profile: Option<String>,
    /// File holding this node's host id when `host_id` is unset (default
    /// `/etc/midonet_host_id.properties`, then
    /// `/etc/midolman/host_uuid.properties`; `host_uuid=<id>` lines).
    pub host_id_file: Option<PathBuf>,
    /// Pool the tenant-router link networks come from (default
    /// `169.254.0.0/16`).
    pub link_pool: Option<String>,
    /// Prefix length of one link network (default 30: provider port, tenant
    /// port).
    pub link_prefix: Option<u8>,
    /// Lease of a tenant claim while one node builds or removes a tenant's
    /// topology, in milliseconds (default 30000; renewed between steps).
    pub claim_ttl_ms: Option<u64>,
    /// How long an ADD waits for another node that is building the same
    /// tenant, in milliseconds (default 60000); past it ADD fails with 11.
    pub claim_wait_ms: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pipeline: None,
            module_dirs: vec![PathBuf::from("/usr/lib/tenet/modules")],
            cache_dir: PathBuf::from("/var/lib/tenet/cache"),
            state_dir: PathBuf::from("/var/lib/tenet/state"),
            compiler: None,
            log_level: "warn".into(),
            log_file: None,
            node_name: None,
            store: StoreKind::Local,
            sdn: SdnKind::Linux,
            masquerade: false,
            etcd: EtcdConfig::default(),
            midonet: MidonetConfig::default(),
            kubernetes: KubernetesConfig::default(),
            agent: AgentConfig::default(),
        }
    }
}

/// The per-network overrides a CNI network configuration may carry: read in
/// the network configuration's camelCase, merged into [`Config`] in its
/// snake_case.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all(deserialize = "camelCase", serialize = "snake_case"))]
struct NetworkOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    module_dirs: Option<Vec<PathBuf>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_file: Option<PathBuf>,
}

/// A configuration that cannot be used; the message names the source and key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Loads layers 1-3 from the process environment, plus the network
    /// configuration's tenet keys (layer 4) when given.
    pub fn load(
        env: &[(String, String)],
        network: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Self, ConfigError> {
        let get = |k: &str| {
            env.iter()
                .find(|(n, v)| n == k && !v.is_empty())
                .map(|(_, v)| v.as_str())
        };
        let file = get("TENET_CONFIG").unwrap_or(DEFAULT_CONFIG_FILE);
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if Path::new(file).exists() {
            fig = fig.merge(Toml::file(file));
        } else if get("TENET_CONFIG").is_some() {
            return Err(ConfigError(format!("TENET_CONFIG: {file} does not exist")));
        }
        // Only the variables we know, from the list we are given (tests pass
        // their own); other TENET_* names belong to other tools and are ignored.
        for key in [
            "pipeline",
            "cache_dir",
            "state_dir",
            "compiler",
            "log_level",
            "log_file",
            "node_name",
            "store",
            "sdn",
        ] {
            if let Some(v) = get(&format!("TENET_{}", key.to_ascii_uppercase())) {
                fig = fig.merge(Serialized::global(key, v));
            }
        }
        if let Some(dirs) = get("TENET_MODULE_DIRS") {
            let dirs: Vec<PathBuf> = std::env::split_paths(dirs).collect();
            fig = fig.merge(Serialized::global("module_dirs", dirs));
        }
        if let Some(map) = network {
            let o: NetworkOverrides = serde_json::from_value(serde_json::Value::Object(
                map.iter()
                    .filter(|(k, _)| {
                        matches!(
                            k.as_str(),
                            "pipeline"
                                | "moduleDirs"
                                | "cacheDir"
                                | "stateDir"
                                | "logLevel"
                                | "logFile"
                        )
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ))
            .map_err(|e| ConfigError(format!("network configuration: {e}")))?;
            fig = fig.merge(Serialized::globals(o));
        }
        let cfg: Config = fig.extract().map_err(|e| {
            let source = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            ConfigError(format!("tenet configuration ({source}): {e}"))
        })?;
        Ok(cfg)
    }

    /// Module directories to search: the configured ones, then `modules/`
    /// next to the executable's directory (a development tree:
    /// `target/release/tenetctl` finds `target/modules`).
    pub fn module_search_path(&self) -> Vec<PathBuf> {
        let mut dirs = self.module_dirs.clone();
        if let Some(dev) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent()?.parent().map(|p| p.join("modules")))
            && !dirs.contains(&dev)
        {
            dirs.push(dev);
        }
        dirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tenet.toml");
        std::fs::write(
            &file,
            "pipeline = \"/from/file.toml\"\ncache_dir = \"/file/cache\"\nlog_level = \"info\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();

        let c = Config::load(&env(&[("TENET_CONFIG", f)]), None).unwrap();
        assert_eq!(c.pipeline.as_deref(), Some(Path::new("/from/file.toml")));
        assert_eq!(c.state_dir, Config::default().state_dir);

        let c = Config::load(
            &env(&[
                ("TENET_CONFIG", f),
                ("TENET_CACHE_DIR", "/env/cache"),
                ("TENET_MODULE_DIRS", "/a:/b"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(c.cache_dir, Path::new("/env/cache"));
        assert_eq!(
            c.module_dirs,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(c.log_level, "info");

        let net: serde_json::Map<_, _> = serde_json::from_str(
            r#"{"pipeline":"/net.toml","logLevel":"debug","bridge":"ignored"}"#,
        )
        .unwrap();
        let c = Config::load(
            &env(&[("TENET_CONFIG", f), ("TENET_PIPELINE", "/env.toml")]),
            Some(&net),
        )
        .unwrap();
        assert_eq!(c.pipeline.as_deref(), Some(Path::new("/net.toml")));
        assert_eq!(c.log_level, "debug");
    }

    #[test]
    fn errors_name_the_source_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tenet.toml");
        std::fs::write(&file, "cache_dri = \"/x\"\n").unwrap();
        let e = Config::load(&env(&[("TENET_CONFIG", file.to_str().unwrap())]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cache_dri"), "{e}");
        let e = Config::load(&env(&[("TENET_CONFIG", "/nonexistent/tenet.toml")]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("TENET_CONFIG"), "{e}");
        let net: serde_json::Map<_, _> =
            serde_json::from_str(r#"{"moduleDirs":"not-a-list"}"#).unwrap();
        let e = Config::load(&env(&[]), Some(&net)).unwrap_err().to_string();
        assert!(e.contains("network configuration"), "{e}");
    }
}
